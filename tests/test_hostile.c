/* Hostile shapes and results that must be tensors of their own (issue 9, findings 5 and 6).
 *
 *   shapes whose element count overflows, or zero-size tensors whose other extents are huge: every op
 *   either refuses them (NB_ERR_SHAPE) or fails to allocate (NB_ERR_NOMEM), never reads or writes out
 *   of bounds (run under ASan: the suite's second half)
 *   nb_grad through nb_addmm with a c of fewer dims than the product: c's gradient has c's shape
 *   ops whose result equals their input return a distinct tensor with its own node: a hook on it and
 *   nb_grad with respect to it see its own gradient, not the input's total */
#include "nbtest.h"

#include <stdint.h>

#define BIG (INT64_C(1) << 58) /* within the constructors' bound on the product of non-zero extents */

/* An op on a hostile shape: a NULL result with a shape or memory error, and nothing else. */
#define CHECK_REFUSED(expr, what)                                                                      \
    do {                                                                                               \
        nb_error_clear();                                                                              \
        nb_tensor *r_ = (expr);                                                                        \
        nb_status e_ = nb_error_code();                                                                \
        CHECK(!r_ && (e_ == NB_ERR_SHAPE || e_ == NB_ERR_NOMEM), "%s: result %p, error %s (%s)", what, \
              (void *)r_, nb_status_name(e_), nb_error_message());                                     \
        nb_error_clear();                                                                              \
    } while (0)

static void test_overflowing_shapes(void)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *x4 = nb_tensor_ones(NB_F64, NB_SHAPE(4));
    nb_tensor *e0 = nb_tensor_zeros(NB_F64, NB_SHAPE(0));
    /* (2^62 + 1) * 4 wraps to 4 in 64 bits */
    CHECK_REFUSED(nb_reshape(x4, NB_SHAPE((INT64_C(1) << 62) + 1, 4)), "reshape to a wrapping product");
    CHECK_REFUSED(nb_reshape(x4, NB_SHAPE(-1, (INT64_C(1) << 62) + 1, 4)), "reshape with -1 and a wrapping product");
    CHECK_REFUSED(nb_reshape(e0, NB_SHAPE(0, INT64_C(1) << 62)), "reshape of an empty tensor to [0, 2^62]");
    CHECK_REFUSED(nb_reshape(e0, NB_SHAPE(INT64_C(1) << 40, 0, INT64_C(1) << 40)), "reshape to [2^40, 0, 2^40]");
    CHECK_REFUSED(nb_broadcast_to(e0, NB_SHAPE(INT64_C(1) << 62, 0)), "broadcast_to [2^62, 0]");
    CHECK_REFUSED(nb_broadcast_to(nb_reshape(e0, NB_SHAPE(0, 1)), NB_SHAPE(0, INT64_C(1) << 62)), "broadcast_to [0, 2^62]");
    CHECK_REFUSED(nb_zeros(NB_F64, NB_SHAPE(0, INT64_C(1) << 62)), "nb_zeros [0, 2^62]");

    /* zero-size tensors with large other extents: reductions produce a large result (refused by
     * the memory it needs, or made), never a wrapped allocation */
    nb_tensor *z = nb_tensor_zeros(NB_F64, NB_SHAPE(0, BIG));
    CHECK(z != NULL, "a [0, 2^58] leaf can be made: %s", nb_error_message());
    nb_error_clear();
    CHECK(nb_tensor_numel(nb_sum(z, NB_AXES(1), 0)) == 0, "sum over the large axis: [0]");
    CHECK(nb_tensor_item(nb_sum_all(z)) == 0.0, "sum of an empty tensor is 0");
    CHECK_REFUSED(nb_sum(z, NB_AXES(0), 0), "sum over the empty axis: [2^58] doubles do not fit in memory");
    CHECK_REFUSED(nb_mean(z, NB_AXES(0), 1), "mean over the empty axis");
    CHECK(nb_tensor_numel(nb_max(z, NB_AXES(1), 0)) == 0, "max over the large axis: [0]");
    CHECK(nb_max(z, NB_AXES(0), 0) == NULL, "max over the empty axis is refused");
    nb_error_clear();
    /* 2^58 empty rows: nothing to compute, and nothing is looped over */
    nb_tensor *zt = nb_transpose(z, 0, 1);
    CHECK(nb_tensor_numel(nb_softmax(zt, 1)) == 0 && nb_tensor_numel(nb_log_softmax(zt, 1)) == 0, "softmax along "
          "the empty axis of [2^58, 0]: %s", nb_error_message());
    nb_tensor *idx = nb_constant(NB_I64, NB_SHAPE(3), (const int64_t[]){0, 0, 0});
    nb_tensor *zs = nb_reshape(z, NB_SHAPE(BIG / 4, 4, 0));
    nb_tensor *zr = nb_tensor_zeros(NB_F64, NB_SHAPE(BIG / 4, 1, 0));
    nb_tensor_set_requires_grad(zr, 1);
    CHECK(zs && nb_tensor_numel(nb_index_select(zs, 1, idx)) == 0, "index_select of [2^56, 4, 0]");
    nb_tensor *sel = nb_sum_all(nb_index_select(zr, 1, idx));
    CHECK(nb_backward(sel, NULL, 0) == NB_OK && nb_tensor_numel(nb_tensor_grad(zr)) == 0, "its backward (the fast "
          "path): %s", nb_error_message());
    nb_tensor_free(zr);
    nb_error_clear();

    /* matmul: k = 0 with m * n beyond any memory, and m * n whose byte count wraps */
    nb_tensor *a = nb_tensor_zeros(NB_F64, NB_SHAPE(INT32_MAX, 0));
    nb_tensor *b = nb_tensor_zeros(NB_F64, NB_SHAPE(0, INT32_MAX));
    CHECK_REFUSED(nb_matmul(a, b), "matmul [2^31-1, 0] x [0, 2^31-1]");
    CHECK_REFUSED(nb_matmul_ex(b, a, NB_TRANS_A | NB_TRANS_B), "matmul_ex TT");
    nb_tensor *c = nb_tensor_zeros(NB_F64, NB_SHAPE(1));
    CHECK_REFUSED(nb_addmm(c, a, b, 0), "addmm with a huge product");
    nb_tensor *a3 = nb_tensor_zeros(NB_F64, NB_SHAPE(BIG, 0, 2));
    nb_tensor *b2 = nb_tensor_zeros(NB_F64, NB_SHAPE(2, 3));
    CHECK(nb_tensor_numel(nb_matmul(a3, b2)) == 0, "an empty batch of products: [2^58, 0, 3], no element");
    nb_error_clear();
    /* broadcasting two empty shapes against each other: [0, 2^31, 1] + [0, 1, 2^31] */
    nb_tensor *u = nb_tensor_zeros(NB_F64, NB_SHAPE(0, INT64_C(1) << 31, 1));
    nb_tensor *v = nb_tensor_zeros(NB_F64, NB_SHAPE(0, 1, INT64_C(1) << 31));
    CHECK_REFUSED(nb_add(u, v), "add [0, 2^31, 1] + [0, 1, 2^31]: its non-zero extents multiply beyond the bound");
    CHECK_REFUSED(nb_where(u, u, v), "where with the same shapes");
    /* concat and pad sum extents */
    nb_tensor *big1 = nb_tensor_zeros(NB_F64, NB_SHAPE(0, BIG));
    nb_tensor *pair[2] = {big1, big1};
    CHECK_REFUSED(nb_concat(2, pair, 1), "concat of two [0, 2^58] along 1");
    CHECK_REFUSED(nb_pad(big1, (const int64_t[]){0, 0, BIG, BIG}, 0.0), "pad [0, 2^58] by 2^58 twice");
    CHECK_REFUSED(nb_one_hot(nb_zeros(NB_I64, NB_SHAPE(0, BIG)), BIG, NB_F64), "one_hot [0, 2^58] x 2^58 classes");
    nb_error_clear();

    nb_tensor *all[] = {x4, e0, z, a, b, c, a3, b2, u, v, big1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) nb_tensor_free(all[i]);
    nb_tape_end(t);
    nb_tape_free(t);
}

/* ---- finding 6 -------------------------------------------------------------------------------- */

static void test_addmm_grad_shape(void)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *c = nb_tensor_from_data(NB_F64, NB_SHAPE(3), (const double[]){1, 2, 3});
    nb_tensor *a = nb_tensor_from_data(NB_F64, NB_SHAPE(1, 2), (const double[]){0.5, -1});
    nb_tensor *b = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 3), (const double[]){1, 2, 3, 4, 5, 6});
    nb_tensor *in[3] = {c, a, b}, *g[3];
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    nb_tensor *y = nb_sum_all(nb_square(nb_addmm(c, a, b, 0))); /* [1,3] */
    for (int pass = 0; pass < 2; pass++) {
        unsigned flags = pass ? NB_CREATE_GRAPH : NB_RETAIN_GRAPH;
        CHECK(nb_grad(y, NULL, 3, in, g, flags) == NB_OK, "nb_grad: %s", nb_error_message());
        CHECK(nb_tensor_ndim(g[0]) == 1 && nb_tensor_dim(g[0], 0) == 3, "%s: dc has c's shape [3], not %d dims",
              pass ? "graph" : "fast", nb_tensor_ndim(g[0]));
        /* y = sum (c + a b)^2: dc = 2 (c + a b); a b = [-3.5, -4, -4.5] */
        const double want[3] = {2 * (1 - 3.5), 2 * (2 - 4), 2 * (3 - 4.5)};
        for (int j = 0; j < 3; j++) CHECK(nb_tensor_get(g[0], j) == want[j], "dc[%d] = %g", j, nb_tensor_get(g[0], j));
    }
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "backward");
    CHECK(nb_tensor_ndim(nb_tensor_grad(c)) == 1 && nb_tensor_get(nb_tensor_grad(c), 2) == -3.0, "c.grad [3]");
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
}

static int hook_calls;
static nb_tensor *count_hook(nb_tensor *g, void *user)
{
    (void)user;
    hook_calls++;
    return g;
}

typedef nb_tensor *(*same_fn)(nb_tensor *x);
static nb_rng drop_rng;
static nb_params *eval_model; /* a collection in evaluation mode, for nb_train_dropout */
static nb_tensor *s_slice(nb_tensor *x) { return nb_slice(x, 0, 0, 100, 1); }
static nb_tensor *s_split(nb_tensor *x)
{
    nb_tensor *o[1];
    return nb_split(x, 1, 1, (const int64_t[]){2}, o) == NB_OK ? o[0] : NULL;
}
static nb_tensor *s_chunk(nb_tensor *x)
{
    nb_tensor *o[1];
    return nb_chunk(x, 1, 0, o) == 1 ? o[0] : NULL;
}
static nb_tensor *s_concat(nb_tensor *x) { return nb_concat(1, &x, 0); }
static nb_tensor *s_broadcast(nb_tensor *x) { return nb_broadcast_to(x, NB_SHAPE(1, 2)); }
static nb_tensor *s_pad(nb_tensor *x) { return nb_pad(x, (const int64_t[]){0, 0, 0, 0}, 0.0); }
static nb_tensor *s_dropout(nb_tensor *x) { return nb_dropout(x, 0.0, &drop_rng); }
static nb_tensor *s_sum_to(nb_tensor *x) { return nb_sum_to(x, NB_SHAPE(1, 2)); }
static nb_tensor *s_reshape(nb_tensor *x) { return nb_reshape(x, NB_SHAPE(1, 2)); }
static nb_tensor *s_stack1(nb_tensor *x) { return nb_reshape(nb_stack(1, &x, 0), NB_SHAPE(1, 2)); }
static nb_tensor *s_flip(nb_tensor *x) { return nb_flip(x, NB_AXES(0)); } /* extent 1: nothing to reverse */
static nb_tensor *s_roll0(nb_tensor *x) { return nb_roll(x, 0, 1); }
static nb_tensor *s_roll_n(nb_tensor *x) { return nb_roll(x, -2, 1); }
static nb_tensor *s_einsum(nb_tensor *x) { return nb_einsum("ij->ij", 1, &x); }
static nb_tensor *s_act_none(nb_tensor *x) { return nb_activate(x, NB_ACT_NONE); }
static nb_tensor *s_train_dropout_eval(nb_tensor *x) { return nb_train_dropout(eval_model, x, 0.5, &drop_rng); }
static nb_tensor *s_train_dropout_p0(nb_tensor *x) { return nb_train_dropout(NULL, x, 0.0, &drop_rng); }

/* For each op (and src/nn function) that can return its input unchanged: y = op(x); L = sum(2 y + 3 x).
 * dL/dy = 2 (not 5), a hook on y sees 2 and does not run for x, and y is another tensor than x. x is
 * [1, 2], so that a flip has an axis with nothing to reverse. */
static void test_distinct_results(void)
{
    static const struct {
        const char *name;
        same_fn f;
    } ops[] = {{"slice (full range)", s_slice}, {"split into one", s_split},   {"chunk into one", s_chunk},
               {"concat of one", s_concat},     {"broadcast_to itself", s_broadcast}, {"pad by zero", s_pad},
               {"dropout p=0", s_dropout},      {"sum_to its shape", s_sum_to},       {"reshape to itself", s_reshape},
               {"stack of one", s_stack1},      {"flip of an extent-1 axis", s_flip}, {"roll by 0", s_roll0},
               {"roll by the extent", s_roll_n}, {"einsum ij->ij", s_einsum},         {"nb_activate none", s_act_none},
               {"nb_train_dropout in evaluation mode", s_train_dropout_eval},
               {"nb_train_dropout p=0", s_train_dropout_p0}};
    eval_model = nb_params_new();
    nb_params_set_training(eval_model, 0);
    nb_rng_seed(&drop_rng, 1);
    nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(1, 2), (const double[]){0.5, -1.5});
    nb_tensor_set_requires_grad(x, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        const char *name = ops[i].name;
        nb_tensor *y = ops[i].f(x);
        CHECK(y && y != x, "%s: returns a tensor of its own (%p, x %p)", name, (void *)y, (void *)x);
        if (!y || y == x) continue;
        CHECK(!nb_tensor_is_leaf(y) && nb_tensor_requires_grad(y), "%s: a recorded result", name);
        nb_tensor *loss = nb_sum_all(nb_add(nb_mul_scalar(y, 2.0), nb_mul_scalar(x, 3.0)));
        nb_tensor *wrt[2] = {y, x}, *g[2];
        CHECK(nb_grad(loss, NULL, 2, wrt, g, NB_RETAIN_GRAPH) == NB_OK, "%s: nb_grad: %s", name, nb_error_message());
        CHECK(nb_tensor_get(g[0], 0) == 2.0 && nb_tensor_get(g[1], 1) == 5.0, "%s: dL/dy = %g (want 2), dL/dx = %g "
              "(want 5)", name, nb_tensor_get(g[0], 0), nb_tensor_get(g[1], 1));
        hook_calls = 0;
        nb_tensor_set_hook(y, count_hook, NULL);
        CHECK(nb_backward(loss, NULL, 0) == NB_OK && hook_calls == 1, "%s: the hook on y ran %d times", name, hook_calls);
        CHECK(nb_tensor_get(nb_tensor_grad(x), 0) == 5.0, "%s: x.grad %g", name, nb_tensor_get(nb_tensor_grad(x), 0));
        nb_tensor_zero_grad(x);
        nb_tape_reset(t);
    }
    CHECK(nb_tensor_grad(x) && nb_tensor_get(nb_tensor_grad(x), 0) == 0.0, "x had no hook of its own");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    nb_params_free(eval_model);
}

/* Every case, or only those named on the command line. */
int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*run)(void);
    } cases[] = {
        {"overflowing_shapes", test_overflowing_shapes},
        {"addmm_grad_shape", test_addmm_grad_shape},
        {"distinct_results", test_distinct_results},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int run = argc < 2;
        for (int a = 1; a < argc; a++) run |= !strcmp(argv[a], cases[c].name);
        if (run) cases[c].run();
    }
    return nbt_report("hostile");
}
