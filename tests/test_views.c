/* Views of leaves made without a tape (issue 13): nb_reshape, nb_squeeze and nb_unsqueeze of a leaf with
 * no current tape return a leaf of their own that shares the base's data and version counter. Base
 * and views are freed in any order (the data lives until the last; ASan reports any read of freed
 * memory and LeakSanitizer any block left behind); writes through either side are seen by the other
 * and by a backward that recorded either; a view never requires grad, so a leaf that requires grad
 * gets no view without a tape and cannot be made to require grad while it has views; a dataset owns
 * a view like any leaf, a parameter collection refuses one. */
#include "nbtest.h"

#include <stdint.h>

/* [6, 4] f64 leaf holding 0, 1, ..., 23 */
static nb_tensor *base24(void) { return nb_tensor_arange(NB_F64, 0, 24, 1); }

static int holds_arange(const nb_tensor *t, int64_t n)
{
    if (nb_tensor_numel(t) != n) return 0;
    const double *d = nb_tensor_cdata(t);
    for (int64_t i = 0; i < n; i++)
        if (d[i] != (double)i) return 0;
    return 1;
}

static void test_make(void)
{
    nb_tensor *b = base24(), *x = nb_reshape(b, NB_SHAPE(6, 4));
    CHECK(x && nb_tensor_is_leaf(x) && nb_tensor_is_view(x) && !nb_tensor_is_view(b), "a leaf view: %s",
          nb_error_message());
    nb_tensor_free(b); /* x is now the only handle on the data */
    nb_tensor *v = nb_reshape(x, NB_SHAPE(2, 3, -1));
    CHECK(v && nb_tensor_is_leaf(v) && nb_tensor_is_view(v) && v != x, "view of a view: %s", nb_error_message());
    CHECK(nb_tensor_ndim(v) == 3 && nb_tensor_dim(v, 2) == 4, "shape [2,3,4]");
    CHECK(nb_tensor_data(v) == nb_tensor_data(x) && holds_arange(v, 24), "no copy");
    CHECK(!nb_tensor_requires_grad(v) && nb_tensor_grad(v) == NULL, "no gradient");
    nb_tensor *s = nb_unsqueeze(v, 1), *q = nb_squeeze(s, 1);
    CHECK(s && nb_tensor_is_view(s) && nb_tensor_ndim(s) == 4 && nb_tensor_dim(s, 1) == 1, "unsqueeze: a leaf view");
    CHECK(q && nb_tensor_is_view(q) && nb_tensor_ndim(q) == 3 && nb_tensor_data(q) == nb_tensor_data(x), "squeeze");
    /* bad arguments fail as on a tape */
    CHECK_ERROR(nb_reshape(x, NB_SHAPE(5, 5)) == NULL, NB_ERR_SHAPE, "nb_reshape: [6,4] (24 elements) to [5,5]");
    CHECK_ERROR(nb_squeeze(x, 0) == NULL, NB_ERR_SHAPE, "nb_squeeze: axis 0 of [6,4] has extent 6");
    /* an independent copy is not a view */
    nb_tensor *c = nb_tensor_clone(v);
    CHECK(c && !nb_tensor_is_view(c) && nb_tensor_data(c) != nb_tensor_data(v), "clone: a leaf of its own");
    /* an i64 leaf and an empty leaf */
    nb_tensor *i = nb_tensor_arange(NB_I64, 0, 6, 1), *e = nb_tensor_zeros(NB_F32, NB_SHAPE(0, 3));
    nb_tensor *iv = nb_reshape(i, NB_SHAPE(2, 3)), *ev = nb_unsqueeze(e, 0);
    CHECK(iv && nb_tensor_dtype(iv) == NB_I64 && nb_tensor_get(iv, 5) == 5.0, "i64 view");
    CHECK(ev && nb_tensor_numel(ev) == 0 && nb_tensor_ndim(ev) == 3, "empty view");
    nb_tensor *all[] = {i, ev, x, q, iv, c, s, e, v};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) nb_tensor_free(all[k]);
    CHECK_NO_ERROR();
    /* not a leaf: an op result needs its tape */
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *l = base24(), *r = nb_add(l, l);
    nb_tape_end(t);
    CHECK_ERROR(nb_reshape(r, NB_SHAPE(4, 6)) == NULL, NB_ERR_STATE, "nb_reshape: no current tape");
    CHECK_ERROR(nb_unsqueeze(r, 0) == NULL, NB_ERR_STATE, "nb_unsqueeze: no current tape");
    nb_tape_free(t);
    nb_tensor_free(l);
}

static void test_base_freed_first(void)
{
    nb_tensor *x = base24();
    nb_tensor *v = nb_reshape(x, NB_SHAPE(6, 1, 4)), *w = nb_squeeze(v, 1);
    nb_tensor_free(x);
    CHECK_NO_ERROR();
    CHECK(holds_arange(v, 24) && holds_arange(w, 24), "the views read the data after the base is freed");
    CHECK_ERROR(nb_tensor_get(x, 0) != nb_tensor_get(x, 0), NB_ERR_STATE, "nb_tensor_get: tensor is a leaf that was freed");
    CHECK_ERROR(nb_reshape(x, NB_SHAPE(24)) == NULL, NB_ERR_STATE, "nb_reshape: tensor is a leaf that was freed");
    /* the freed base's header holds the views' version counter: no new leaf takes it */
    nb_tensor *many[200];
    int reused = 0;
    for (int k = 0; k < 200; k++) {
        many[k] = nb_tensor_zeros(NB_F64, NB_SHAPE(2));
        reused |= many[k] == x;
    }
    CHECK(!reused, "a new leaf took the header of a base whose views live");
    CHECK_ERROR(nb_tensor_numel(x) == 0, NB_ERR_STATE, "leaf that was freed");
    for (int k = 0; k < 200; k++) nb_tensor_free(many[k]);
    /* the views work on a tape */
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    CHECK_CLOSE(nb_tensor_item(nb_sum_all(nb_mul(v, v))), 4324.0, 0, 0); /* sum of i^2, i < 24 */
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(v);
    CHECK(holds_arange(w, 24), "the last view still reads it");
    nb_tensor *keep_pool = nb_tensor_zeros(NB_F64, NB_SHAPE(1)); /* the freed headers stay in the pool */
    nb_tensor_free(w);
    CHECK_NO_ERROR();
    CHECK_ERROR((nb_tensor_free(w), 1), NB_ERR_STATE, "nb_tensor_free: tensor is a leaf that was freed");
    nb_tensor_free(keep_pool);
}

static void test_view_freed_first(void)
{
    nb_tensor *x = base24();
    nb_tensor *v = nb_reshape(x, NB_SHAPE(4, 6)), *w = nb_unsqueeze(v, 0);
    nb_tensor_free(v);
    nb_tensor_free(w);
    CHECK_NO_ERROR();
    CHECK(holds_arange(x, 24) && !nb_tensor_is_view(x), "the base is whole");
    /* with its views gone it may require grad again, and trains as any leaf */
    CHECK(nb_tensor_set_requires_grad(x, 1) == NB_OK, "requires grad: %s", nb_error_message());
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    CHECK(nb_backward(nb_sum_all(nb_mul_scalar(x, 2.0)), NULL, 0) == NB_OK, "backward: %s", nb_error_message());
    CHECK(nb_tensor_get(nb_tensor_grad(x), 23) == 2.0, "x.grad");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    CHECK_NO_ERROR();
}

/* Writes through the base or a view bump the one shared counter: a backward through a node that recorded
 * the other side reports it. */
static void test_writes(void)
{
    nb_tensor *x = base24(), *v = nb_reshape(x, NB_SHAPE(6, 4));
    nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(24), 0.5);
    nb_tensor_set_requires_grad(w, 1);
    CHECK(nb_tensor_set(v, 3, -7.0) == NB_OK && nb_tensor_get(x, 3) == -7.0, "a write through the view is seen by the base");
    CHECK(nb_tensor_set(x, 4, 9.0) == NB_OK && nb_tensor_get(v, 4) == 9.0, "and the reverse");
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    /* recorded the base; written through the view */
    nb_tensor *y = nb_sum_all(nb_mul(x, w));
    CHECK(nb_backward(y, NULL, NB_RETAIN_GRAPH) == NB_OK, "unchanged: %s", nb_error_message());
    CHECK(nb_tensor_get(nb_tensor_grad(w), 3) == -7.0, "w.grad = x");
    CHECK(nb_tensor_fill(v, 1.0) == NB_OK, "fill the view");
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "input 0 [24] of node 0 (mul) was modified in place");
    nb_tape_reset(t);
    /* recorded the view (and a tape view of it); written through the base, in each in-place way */
    const double ones[24] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    for (int way = 0; way < 5; way++) {
        nb_tensor *y2 = nb_sum_all(nb_mul(nb_reshape(v, NB_SHAPE(24)), w));
        nb_tensor *y3 = nb_sum_all(nb_mul(nb_reshape(v, NB_SHAPE(24)), w));
        CHECK(nb_backward(y3, NULL, 0) == NB_OK, "way %d: unchanged: %s", way, nb_error_message());
        nb_status st = way == 0   ? nb_tensor_set(x, 0, 2.0)
                       : way == 1 ? nb_tensor_fill(x, 2.0)
                       : way == 2 ? nb_tensor_copy_from(x, ones)
                       : way == 3 ? nb_tensor_axpy(x, 1.0, x)
                                  : (nb_tensor_mark_dirty(x), NB_OK);
        CHECK(st == NB_OK, "way %d: the write: %s", way, nb_error_message());
        CHECK_ERROR(nb_backward(y2, NULL, 0) != NB_OK, NB_ERR_STATE, "was modified in place");
        nb_tape_reset(t);
    }
    /* with the base freed, the view's counter is still the one its tape views saved */
    nb_tensor_free(x);
    nb_tensor *y4 = nb_sum_all(nb_mul(nb_reshape(v, NB_SHAPE(24)), w));
    CHECK(nb_tensor_set(v, 0, 5.0) == NB_OK, "write through the view: %s", nb_error_message());
    CHECK_ERROR(nb_backward(y4, NULL, 0) != NB_OK, NB_ERR_STATE, "was modified in place");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(v);
    nb_tensor_free(w);
    CHECK_NO_ERROR();
}

static nb_tensor *keep(nb_tensor *g, void *user)
{
    (void)user;
    return g;
}
static nb_status post(nb_tensor *leaf, void *user)
{
    (void)leaf;
    (void)user;
    return NB_OK;
}

/* A view is never recorded on its base, so neither side may require grad while such views exist. */
static void test_requires_grad(void)
{
    nb_tensor *x = base24();
    nb_tensor_set_name(x, "images");
    nb_tensor *v = nb_reshape(x, NB_SHAPE(4, 6));
    CHECK_ERROR(nb_tensor_set_requires_grad(v, 1), NB_ERR_STATE, "[4,6] is a view of another leaf made without a tape");
    CHECK(nb_tensor_set_requires_grad(v, 0) == NB_OK, "turning it off is fine");
    CHECK_ERROR(nb_tensor_set_requires_grad(x, 1), NB_ERR_STATE, "images [24] has 1 view made without a tape");
    nb_tensor *v2 = nb_unsqueeze(x, 0);
    CHECK_ERROR(nb_tensor_set_requires_grad(x, 1), NB_ERR_STATE, "has 2 views made without a tape");
    CHECK_ERROR(nb_tensor_set_hook(v, keep, NULL), NB_ERR_STATE, "nb_tensor_set_hook: [4,6] is a view made without a tape");
    CHECK_ERROR(nb_tensor_set_post_accumulate_hook(v, post, NULL), NB_ERR_STATE, "is a view made without a tape");
    CHECK(nb_tensor_set_hook(v, NULL, NULL) == NB_OK, "removing a hook is fine");
    nb_tensor_free(v);
    nb_tensor_free(v2);
    CHECK(nb_tensor_set_requires_grad(x, 1) == NB_OK, "no view left: %s", nb_error_message());
    /* a leaf that requires grad gets no view without a tape: its uses would not reach its gradient */
    CHECK_ERROR(nb_reshape(x, NB_SHAPE(4, 6)) == NULL, NB_ERR_STATE,
                "nb_reshape: images [24] requires grad and no tape is current");
    CHECK_ERROR(nb_unsqueeze(x, 0) == NULL, NB_ERR_STATE, "nb_unsqueeze: images [24] requires grad");
    /* on a tape it is the recorded view, and the gradient reaches x */
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *r = nb_reshape(x, NB_SHAPE(4, 6));
    CHECK(r && !nb_tensor_is_leaf(r) && !nb_tensor_is_view(r) && nb_tensor_requires_grad(r), "a tape view");
    CHECK(nb_backward(nb_sum_all(nb_mul_scalar(r, 3.0)), NULL, 0) == NB_OK && nb_tensor_get(nb_tensor_grad(x), 7) == 3.0,
          "x.grad through the tape view");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    CHECK_NO_ERROR();
}

/* A backward that recorded the base refuses once the base is freed, even while its views keep the data. */
static void test_recorded_base_freed(void)
{
    nb_tensor *x = base24(), *v = nb_reshape(x, NB_SHAPE(24));
    nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(24), 0.5);
    nb_tensor_set_requires_grad(w, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_sum_all(nb_mul(x, w)), *yv = nb_sum_all(nb_mul(v, w));
    nb_tensor_free(x);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "input 0 of node 0 (mul) was freed after it was recorded");
    CHECK(nb_backward(yv, NULL, NB_RETAIN_GRAPH) == NB_OK && nb_tensor_get(nb_tensor_grad(w), 5) == 5.0, "through the view: %s",
          nb_error_message());
    nb_tensor_free(v);
    CHECK_ERROR(nb_backward(yv, NULL, 0) != NB_OK, NB_ERR_STATE, "was freed after it was recorded");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(w);
}

/* nb_dataset_new(nb_reshape(x, ...), y): the dataset owns the view; x may be freed before or after. */
static void test_dataset(void)
{
    for (int order = 0; order < 2; order++) {
        nb_tensor *x = base24(); /* 6 samples of 4 values, as [6, 1, 2, 2] images */
        nb_tensor *y = nb_tensor_arange(NB_I64, 0, 6, 1);
        nb_dataset *d = nb_dataset_new(nb_reshape(x, NB_SHAPE(6, 1, 2, 2)), y);
        CHECK(d && nb_dataset_size(d) == 6, "order %d: dataset of a view: %s", order, nb_error_message());
        if (!d) {
            nb_tensor_free(x);
            continue;
        }
        if (order == 0) nb_tensor_free(x);
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        nb_batches *b = nb_batches_new(d, 4, 1, 0, 7);
        nb_tensor *bx, *by;
        int64_t seen = 0, ok = 1;
        while (nb_batches_next(b, &bx, &by) == 1) {
            for (int64_t r = 0; r < nb_tensor_dim(bx, 0); r++, seen++) {
                int64_t label = (int64_t)nb_tensor_get(by, r);
                for (int k = 0; k < 4; k++) ok &= nb_tensor_get(bx, r * 4 + k) == (double)(label * 4 + k);
            }
            ok &= nb_tensor_ndim(bx) == 4 && nb_tensor_dim(bx, 1) == 1;
        }
        CHECK(seen == 6 && ok, "order %d: every row read back through the view (%lld rows)", order, (long long)seen);
        nb_batches_free(b);
        nb_tape_end(t);
        nb_tape_free(t);
        nb_dataset_free(d);
        if (order == 1) {
            CHECK(holds_arange(x, 24), "x outlives its dataset");
            nb_tensor_free(x);
        }
        CHECK_NO_ERROR();
    }
    /* with a tape current the reshape is an op result: refused with the way out, x untouched */
    nb_tensor *x = base24();
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    CHECK_ERROR(nb_dataset_new(nb_reshape(x, NB_SHAPE(6, 4)), NULL) == NULL, NB_ERR_ARG,
                "nb_reshape before nb_tape_begin");
    nb_tape_end(t);
    nb_tape_free(t);
    CHECK(holds_arange(x, 24), "x untouched");
    nb_tensor_free(x);
}

static void test_params(void)
{
    nb_params *p = nb_params_new();
    nb_tensor *x = base24(), *v = nb_reshape(x, NB_SHAPE(4, 6));
    CHECK_ERROR(nb_params_add(p, "w", v) == NULL, NB_ERR_ARG, "nb_params_add: w: the tensor is a view of another leaf");
    CHECK_ERROR(nb_params_add_buffer(p, "b", nb_unsqueeze(x, 0)) == NULL, NB_ERR_ARG,
                "nb_params_add_buffer: b: the tensor is a view");
    CHECK(nb_params_count(p) == 0 && holds_arange(x, 24), "nothing added, the base whole");
    /* the base with a view alive cannot become a parameter (it could not require grad): the collection
     * takes it all the same (frees it), and the view keeps the data */
    nb_tensor *v2 = nb_reshape(x, NB_SHAPE(2, 12));
    CHECK_ERROR(nb_params_add(p, "x", x) == NULL, NB_ERR_STATE, "has 1 view made without a tape");
    CHECK(holds_arange(v2, 24), "the view outlives its base");
    nb_tensor_free(v2);
    nb_params_free(p);
    CHECK_NO_ERROR();
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*run)(void);
    } cases[] = {
        {"make", test_make},
        {"base_freed_first", test_base_freed_first},
        {"view_freed_first", test_view_freed_first},
        {"writes", test_writes},
        {"requires_grad", test_requires_grad},
        {"recorded_base_freed", test_recorded_base_freed},
        {"dataset", test_dataset},
        {"params", test_params},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int run = argc < 2;
        for (int a = 1; a < argc; a++) run |= !strcmp(argv[a], cases[c].name);
        if (run) cases[c].run();
    }
    return nbt_report("views");
}
