/* Lifetimes, misuse and threads (issue 9): what nabla detects, and what it documents as undetected.
 *
 *   create-graph backward recording onto the tape it walks (finding 1)
 *   results used after their tape was reset: accessors, ops, backward, grad, hooks, DOT (finding 2)
 *   a result of another tape, reset between recording and backward (finding 2)
 *   views of another tape's result (copies) and of a leaf freed before the backward (stale with it)
 *   backward after a recorded leaf was freed (finding 5); reset or free of a tape from a hook
 *   a backward on one thread after one on another; N threads sharing read-only parameters (finding 3)
 *
 * Each case asserts the documented outcome: NB_ERR_STATE with a message naming the call, or (for the
 * limits nabla.h states) the documented behaviour, never a crash. */
#include "nbtest.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

static nb_tensor *scalar_leaf(double v, int requires_grad)
{
    nb_tensor *t = nb_tensor_full(NB_F64, 0, NULL, v);
    if (requires_grad) nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* ---- finding 1: rules that record onto the tape being walked ---------------------------------- */

/* About 180 ops recorded first, so that the node array is close to growing, then nb_grad with
 * NB_CREATE_GRAPH over a 20-step tanh/sigmoid chain: every rule records onto the same tape, the node
 * array moves, and the sweep must not read the old one. The value is checked against the chain rule
 * written out by hand, and the second derivative against central differences of the first. */
static double chain_value(double x, double *d1)
{
    double y = x, d = 1;
    for (int i = 0; i < 180; i++) {
        y = 0.5 * y + 0.1;
        d *= 0.5;
    }
    for (int i = 0; i < 20; i++) {
        if (i % 2) {
            y = tanh(y);
            d *= 1 - y * y;
        } else {
            y = 1 / (1 + exp(-y));
            d *= y * (1 - y);
        }
    }
    if (d1) *d1 = d;
    return y;
}

static void test_create_graph_growth(void)
{
    nb_tensor *x = scalar_leaf(0.3, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = x;
    for (int i = 0; i < 180; i++) y = nb_affine(y, 0.5, 0.1);
    nb_tensor *z = y;
    for (int i = 0; i < 20; i++) z = i % 2 ? nb_tanh(z) : nb_sigmoid(z);
    nb_tensor *g = NULL, *gg = NULL;
    size_t before = nb_tape_node_count(t);
    CHECK(nb_grad(z, NULL, 1, &x, &g, NB_CREATE_GRAPH) == NB_OK, "create-graph grad: %s", nb_error_message());
    CHECK(nb_tape_node_count(t) > 256 && before < 256, "the backward grew the node array past 256 (%zu -> %zu)",
          before, nb_tape_node_count(t));
    double d1;
    chain_value(0.3, &d1);
    CHECK_CLOSE(nb_tensor_item(g), d1, 1e-12, 0);
    /* and once more through the recorded backward (the array grows again) */
    CHECK(nb_grad(g, NULL, 1, &x, &gg, NB_CREATE_GRAPH) == NB_OK, "second order: %s", nb_error_message());
    double h = 1e-5, dp, dm;
    chain_value(0.3 + h, &dp);
    chain_value(0.3 - h, &dm);
    CHECK_CLOSE(nb_tensor_item(gg), (dp - dm) / (2 * h), 1e-5, 1e-12);
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
}

/* Two recurrent cells over one input, every parameter an input of the check: the gradgradcheck's
 * create-graph backward records hundreds of nodes while it walks the tape. */
typedef struct two_cells {
    nb_rnn_cell a, b;
} two_cells;

static nb_tensor *two_cells_f(void *user, nb_tensor *const *in)
{
    two_cells *c = user;
    nb_rnn_cell a = c->a, b = c->b;
    a.w_ih = in[1], a.w_hh = in[2], a.b_ih = in[3], a.b_hh = in[4];
    b.w_ih = in[5], b.w_hh = in[6], b.b_ih = in[7], b.b_hh = in[8];
    /* four steps of each cell over the same input: the forward records about 150 nodes, and the
     * create-graph backward grows the node array past 256 while it walks it */
    nb_tensor *ha = nb_full(NB_F64, NB_SHAPE(2, a.hidden), 0.1), *hb = ha, *ca = ha, *cb = ha;
    for (int step = 0; step < 4; step++) {
        if (a.kind == NB_GRU) {
            ha = nb_gru_cell(&a, in[0], ha);
            hb = nb_gru_cell(&b, in[0], hb);
        } else if (nb_lstm_cell(&a, in[0], ha, ca, &ha, &ca) != NB_OK ||
                   nb_lstm_cell(&b, in[0], hb, cb, &hb, &cb) != NB_OK) {
            return NULL;
        }
    }
    nb_tensor *y = nb_sum_all(nb_mul(ha, hb));
    return a.kind == NB_GRU ? y : nb_add(y, nb_sum_all(nb_mul(ca, cb)));
}

static void test_two_cells_gradgradcheck(nb_rnn_kind kind, int64_t hidden)
{
    nb_params *p = nb_params_new();
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    nb_layer_opts o = {.dtype = NB_F64};
    two_cells c;
    nb_rnn_cell_init(&c.a, p, "a", kind, 3, hidden, &o, &rng);
    nb_rnn_cell_init(&c.b, p, "b", kind, 3, hidden, &o, &rng);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng);
    nb_tensor_set_requires_grad(x, 1);
    nb_tensor *in[9] = {x, c.a.w_ih, c.a.w_hh, c.a.b_ih, c.a.b_hh, c.b.w_ih, c.b.w_hh, c.b.b_ih, c.b.b_hh};
    CHECK_NO_ERROR();
    nb_gradcheck_report rep;
    nb_status st = nb_gradgradcheck(two_cells_f, &c, 9, in, NULL, &rep);
    CHECK(st == NB_OK && rep.ok, "gradgradcheck of two %s cells (hidden %lld): %s", kind == NB_GRU ? "GRU" : "LSTM",
          (long long)hidden, rep.message);
    nb_error_clear();
    nb_tensor_free(x);
    nb_params_free(p);
}

static void test_two_grus(void) { test_two_cells_gradgradcheck(NB_GRU, 9); }
static void test_two_lstms(void) { test_two_cells_gradgradcheck(NB_LSTM, 6); }

/* ---- finding 2: results used after their tape was reset --------------------------------------- */

static nb_tensor *identity_hook(nb_tensor *g, void *user)
{
    (void)user;
    return g;
}

static void test_stale_results(void)
{
    nb_tensor *w = scalar_leaf(2.0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_mul_scalar(w, 3.0);  /* recorded in generation 1 */
    nb_tensor *c = nb_full(NB_F64, 0, NULL, 7.0); /* a tape constant */
    CHECK(nb_tape_generation(t) == 1, "a new tape is at generation 1");
    nb_tape_reset(t);
    CHECK(nb_tape_generation(t) == 2, "a reset bumps the generation");
    /* the next step records as many results again: without the check, y and c would read them */
    nb_tensor *y2 = nb_mul_scalar(w, 5.0);
    nb_tensor *c2 = nb_full(NB_F64, 0, NULL, 11.0);
    CHECK(y2 && c2 && y2 != y && c2 != c, "the next step runs, its results elsewhere");

    double v;
    nb_error_clear();
    v = nb_tensor_item(y);
    CHECK(v != v, "nb_tensor_item of a stale result is NaN (%g)", v);
    CHECK(nb_error_code() == NB_ERR_STATE &&
          strstr(nb_error_message(), "nb_tensor_item: tensor belongs to a tape that was reset (recorded in generation 1, "
                                     "tape is at 2)"), "message: %s", nb_error_message());
    nb_error_clear();
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "nb_backward: tensor belongs to a tape that was reset");
    nb_tensor *g;
    CHECK_ERROR(nb_grad(y, NULL, 1, &w, &g, 0) != NB_OK, NB_ERR_STATE, "nb_grad: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_add(y, w) == NULL, NB_ERR_STATE, "nb_add: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_tanh(c) == NULL, NB_ERR_STATE, "nb_tanh: tensor belongs");
    CHECK_ERROR(nb_matmul(c, c) == NULL, NB_ERR_STATE, "nb_matmul: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_mul(y2, y) == NULL, NB_ERR_STATE, "nb_mul: tensor belongs to a tape that was reset");
    CHECK_ERROR(nb_reshape(y, 1, (const int64_t[]){1}) == NULL, NB_ERR_STATE, "nb_reshape: tensor belongs");
    CHECK_ERROR(nb_zeros_like(y) == NULL, NB_ERR_STATE, "nb_zeros_like: tensor belongs");
    CHECK_ERROR(nb_tensor_set_hook(y, identity_hook, NULL) != NB_OK, NB_ERR_STATE, "nb_tensor_set_hook: tensor");
    CHECK_ERROR(nb_tensor_numel(y) == 0, NB_ERR_STATE, "nb_tensor_numel: tensor belongs");
    CHECK_ERROR(nb_tensor_shape(c) == NULL, NB_ERR_STATE, "nb_tensor_shape: tensor belongs");
    CHECK_ERROR(nb_tensor_data(c) == NULL, NB_ERR_STATE, "nb_tensor_data: tensor belongs");
    CHECK_ERROR(nb_tensor_clone(c) == NULL, NB_ERR_STATE, "nb_tensor_clone: tensor belongs");
    CHECK_ERROR(nb_tensor_grad(y) == NULL, NB_ERR_STATE, "nb_tensor_grad: tensor belongs");
    nb_tensor *wrt[1] = {y};
    nb_tensor *z = nb_mul_scalar(w, 2.0);
    CHECK_ERROR(nb_grad(z, NULL, 1, wrt, &g, 0) != NB_OK, NB_ERR_STATE, "nb_grad: tensor belongs");
    FILE *devnull = fopen("/dev/null", "w");
    CHECK_ERROR(nb_tape_write_dot(t, y, devnull) != NB_OK, NB_ERR_STATE, "nb_tape_write_dot: tensor belongs");
    fclose(devnull);
    /* the current step is unaffected */
    CHECK(nb_backward(nb_add(z, y2), NULL, 0) == NB_OK && nb_tensor_item(nb_tensor_grad(w)) == 7.0,
          "the current step works: %s", nb_error_message());
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(w);
}

/* A result kept across two resets whose header slot a later result took: nabla.h documents that such
 * a pointer then reads that later result (it cannot tell them apart); it never reads other bytes. A
 * result kept across two resets whose slot was not reused is still reported. */
static void test_stale_limits(void)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *a = nb_full(NB_F64, 0, NULL, 1.0);
    nb_tensor *b = nb_full(NB_F64, 0, NULL, 2.0); /* the second slot of generation 1's region */
    nb_tape_reset(t);
    nb_tape_reset(t); /* generation 3 uses generation 1's region again */
    nb_tensor *a3 = nb_full(NB_F64, 0, NULL, 3.0); /* takes a's slot */
    CHECK(a3 == a, "the region is reused from its first slot (a3 %p, a %p)", (void *)a3, (void *)a);
    nb_error_clear();
    CHECK(nb_tensor_item(a) == 3.0 && nb_error_code() == NB_OK, "documented: a pointer whose slot was reused reads "
          "the new result");
    CHECK_ERROR(nb_tensor_item(b) != nb_tensor_item(b), NB_ERR_STATE, "recorded in generation 1, tape is at 3");
    nb_tape_end(t);
    nb_tape_free(t);
}

/* An op whose input is a result of another tape (held constant), that tape reset before the
 * backward: the backward reads the input's values (d(w c)/dw = c), so it must refuse. */
static void test_reset_other_tape(void)
{
    nb_tensor *x = scalar_leaf(3.33, 0);
    nb_tensor *w = scalar_leaf(1.5, 1);
    nb_tape *ta = nb_tape_new(), *tb = nb_tape_new();
    nb_tape_begin(ta);
    nb_tensor *c = nb_mul_scalar(x, 1.0); /* a constant of tape a */
    nb_tape_end(ta);
    nb_tape_begin(tb);
    nb_tensor *y = nb_mul(w, c);
    nb_tape_end(tb);
    nb_tape_reset(ta);
    nb_tape_begin(ta);
    nb_tensor *junk = nb_full(NB_F64, 0, NULL, 1001.2); /* what now lies where c's data was */
    nb_tape_end(ta);
    CHECK(junk != NULL, "tape a records again");
    nb_tape_begin(tb);
    CHECK_ERROR(nb_backward(y, NULL, NB_RETAIN_GRAPH) != NB_OK, NB_ERR_STATE,
                "input 1 of node 0 (mul) belongs to a tape that was reset after it was recorded");
    CHECK(nb_tensor_grad(w) == NULL, "no gradient was stored");
    nb_tape_end(tb);
    nb_tape_free(tb);
    nb_tape_free(ta);
    nb_tensor_free(x);
    nb_tensor_free(w);
}

/* A constant of tape a recorded by an op on tape b, then tape a freed: the backward on b read a's freed
 * header (heap-use-after-free in mark). Freeing a is refused while b's nodes hold its results; once b is
 * reset (or freed), a can go. */
static void test_free_held_tape(void)
{
    nb_tensor *x = nb_tensor_full(NB_F64, NB_SHAPE(16), 3.0);
    nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(16), 2.0);
    nb_tensor_set_requires_grad(w, 1);
    nb_tape *ta = nb_tape_new(), *tb = nb_tape_new();
    nb_tape_begin(ta);
    nb_tensor *c = nb_mul_scalar(x, 1.0);
    nb_tape_end(ta);
    nb_tape_begin(tb);
    nb_tensor *y = nb_sum_all(nb_mul(w, c));
    nb_tape_free(ta);
    CHECK(nb_error_code() == NB_ERR_STATE && strstr(nb_error_message(), "nb_tape_free: results of this tape are "
          "inputs of ops recorded on another tape"), "free refused: %s", nb_error_message());
    nb_error_clear();
    CHECK(nb_backward(y, NULL, NB_RETAIN_GRAPH) == NB_OK && nb_tensor_get(nb_tensor_grad(w), 3) == 3.0,
          "the backward reads c: %s", nb_error_message());
    nb_tape_reset(tb);
    nb_tape_free(ta); /* nothing holds it now */
    CHECK_NO_ERROR();
    nb_tape_end(tb);
    nb_tape_free(tb);
    nb_tensor_free(x);
    nb_tensor_free(w);
}

/* ---- views whose data belongs to something else ----------------------------------------------- */

/* A view (reshape, slice, detach) on tape b of a result of tape a: tape a's reset pulled the data from
 * under the view, so values read through it and the gradient of w in y = sum(w * view) were those of
 * whatever tape a computed next (1000 instead of 3). Such a view is a copy: a's reset and free change
 * nothing. */
static void test_view_of_other_tape(void)
{
    nb_tensor *x = nb_tensor_full(NB_F64, NB_SHAPE(4, 4), 3.0);
    nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(16), 2.0);
    nb_tensor_set_requires_grad(w, 1);
    for (int kind = 0; kind < 3; kind++) {
        nb_tape *ta = nb_tape_new(), *tb = nb_tape_new();
        nb_tape_begin(ta);
        nb_tensor *c = nb_mul_scalar(x, 1.0); /* a result of tape a, 128 bytes: in a's arena */
        nb_tape_end(ta);
        nb_tape_begin(tb);
        nb_tensor *v = kind == 0 ? nb_reshape(c, NB_SHAPE(16))
                     : kind == 1 ? nb_reshape(nb_slice(c, 0, 0, 4, 1), NB_SHAPE(16))
                                 : nb_reshape(nb_detach(c), NB_SHAPE(16));
        nb_tensor *y = nb_sum_all(nb_mul(w, v));
        nb_tape_end(tb);
        nb_tape_reset(ta);
        nb_tape_begin(ta);
        nb_tensor *junk = nb_full(NB_F64, NB_SHAPE(4, 4), 1000.0);
        nb_tape_end(ta);
        nb_tape_free(ta); /* and its memory is gone */
        CHECK(junk != NULL, "tape a records again");
        nb_tape_begin(tb);
        CHECK(nb_tensor_get(v, 5) == 3.0, "view %d reads its own values: %g", kind, nb_tensor_get(v, 5));
        nb_tensor_zero_grad(w);
        CHECK(nb_backward(y, NULL, 0) == NB_OK, "backward: %s", nb_error_message());
        CHECK(nb_tensor_get(nb_tensor_grad(w), 7) == 3.0, "view %d: dy/dw = 3, got %g", kind,
              nb_tensor_get(nb_tensor_grad(w), 7));
        nb_tape_end(tb);
        nb_tape_free(tb);
    }
    /* a view of a result of the current tape still shares its memory */
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *c = nb_mul_scalar(x, 1.0);
    CHECK(nb_tensor_cdata(nb_reshape(c, NB_SHAPE(16))) == nb_tensor_cdata(c), "a view on its own tape shares");
    CHECK(nb_tensor_cdata(nb_reshape(x, NB_SHAPE(16))) == nb_tensor_cdata(x), "a view of a leaf shares");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    nb_tensor_free(w);
}

/* A view of a leaf that needs no gradient (a batch flattened by reshape, a slice of it), used by a
 * recorded op, then the leaf freed before the backward: the node records the view, not the leaf, so
 * the backward read the freed buffer (ASan: heap-use-after-free; without it, dL/dw from whatever took
 * the memory). The view goes with its leaf: every use of it, and the backward, fail with NB_ERR_STATE. */
static void test_view_of_freed_leaf(void)
{
    nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(16, 4), 0.5);
    nb_tensor_set_requires_grad(w, 1);
    for (int kind = 0; kind < 4; kind++) {
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        nb_tensor *x = nb_tensor_full(NB_F64, NB_SHAPE(2, 4, 4), 3.0);
        nb_tensor *xf = nb_reshape(x, NB_SHAPE(2, 16));
        nb_tensor *v = kind == 0 ? xf
                     : kind == 1 ? nb_slice(xf, 1, 0, 16, 1)                   /* a view of a view */
                     : kind == 2 ? nb_detach(xf)
                                 : nb_reshape(nb_slice(x, 0, 0, 2, 1), NB_SHAPE(2, 16)); /* slice first */
        nb_tensor *y = nb_sum_all(nb_matmul(v, w));
        nb_tensor *g[1];
        CHECK(nb_grad(y, NULL, 1, &w, g, NB_RETAIN_GRAPH) == NB_OK && nb_tensor_get(g[0], 0) == 6.0,
              "view %d: before the free, dy/dw = 6: %s", kind, nb_error_message());
        nb_tensor_free(x);
        nb_tensor *other = nb_tensor_full(NB_F64, NB_SHAPE(2, 4, 4), 1000.0); /* may take x's memory */
        CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "is a view of a leaf that was freed after it was recorded");
        CHECK(nb_tensor_grad(w) == NULL, "view %d: no gradient stored", kind);
        CHECK_ERROR(nb_grad(y, NULL, 1, &w, g, 0) != NB_OK, NB_ERR_STATE, "view of a leaf that was freed");
        CHECK_ERROR(nb_tensor_get(v, 0) != nb_tensor_get(v, 0), NB_ERR_STATE,
                    "nb_tensor_get: tensor is a view of a leaf that was freed");
        CHECK_ERROR(nb_tensor_data(v) == NULL, NB_ERR_STATE, "nb_tensor_data: tensor is a view of a leaf");
        CHECK_ERROR(nb_add(v, v) == NULL, NB_ERR_STATE, "nb_add: tensor is a view of a leaf that was freed");
        CHECK_ERROR(nb_reshape(v, NB_SHAPE(32)) == NULL, NB_ERR_STATE, "nb_reshape: tensor is a view");
        FILE *devnull = fopen("/dev/null", "w");
        CHECK_ERROR(nb_tape_write_dot(t, y, devnull) != NB_OK, NB_ERR_STATE, "nb_tape_write_dot");
        fclose(devnull);
        nb_tape_end(t);
        nb_tape_free(t);
        nb_tensor_free(other);
    }
    nb_tensor_free(w);
}

/* ---- finding 5 (engine part): a leaf freed while a live tape records it ----------------------- */

static void test_freed_leaf(void)
{
    nb_tensor *a = scalar_leaf(2.0, 1), *b = scalar_leaf(3.0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_mul(a, b);
    nb_tensor_free(b);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "input 1 of node 0 (mul) was freed after it was recorded");
    CHECK(nb_tensor_grad(a) == NULL, "nothing stored");
    /* the freed pointer itself (its header stays in the pool while a tape lives) */
    CHECK_ERROR(nb_add(b, a) == NULL, NB_ERR_STATE, "nb_add: tensor is a leaf that was freed");
    CHECK_ERROR(nb_tensor_item(b) != nb_tensor_item(b), NB_ERR_STATE, "nb_tensor_item: tensor is a leaf that was freed");
    /* a new leaf may take the freed header: a node that recorded the old one still refuses */
    nb_tensor *c = scalar_leaf(4.0, 1);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "was freed after it was recorded");
    nb_tensor *g[1];
    CHECK_ERROR(nb_grad(y, NULL, 1, &a, g, 0) != NB_OK, NB_ERR_STATE, "was freed after it was recorded");
    FILE *devnull = fopen("/dev/null", "w");
    CHECK_ERROR(nb_tape_write_dot(t, y, devnull) != NB_OK, NB_ERR_STATE, "was freed after it was recorded");
    fclose(devnull);
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(a);
    nb_tensor_free(c);
}

/* A gradient hook that resets (or frees) the tape the backward walks: refused, the backward goes on. */
static nb_tensor *resetting_hook(nb_tensor *g, void *user)
{
    nb_tape *t = user;
    nb_tape_reset(t);
    nb_tape_end(t);
    nb_tape_free(t);
    return g;
}

static void test_reset_from_hook(void)
{
    nb_tensor *w = scalar_leaf(2.0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_mul_scalar(w, 3.0);
    nb_tensor_set_hook(w, resetting_hook, t);
    nb_error_clear();
    nb_status st = nb_backward(y, NULL, 0);
    CHECK(st == NB_OK, "the backward itself completes (%s)", nb_status_name(st));
    CHECK(nb_error_code() == NB_ERR_STATE && strstr(nb_error_message(), "nb_tape_reset: a backward or a custom op runs on this tape"),
          "the reset from the hook was refused: %s", nb_error_message());
    nb_error_clear();
    CHECK(nb_tensor_item(nb_tensor_grad(w)) == 3.0, "gradient stored");
    nb_tensor_set_hook(w, NULL, NULL);
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(w);
}

/* ---- a custom op's forward or backward resetting or freeing the tapes it works on --------------- */

typedef struct tape_killer {
    int mode; /* 0: reset the op's tape in forward, 1: end and free it in forward, 2: reset the tape of
                 an input in forward, 3: the same in backward */
    nb_tape *own, *input;
} tape_killer;

/* out = in[0] * in[1] */
static nb_status killer_fw(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)n_in;
    tape_killer *k = user;
    if (k->mode == 0) nb_tape_reset(k->own);
    if (k->mode == 1) {
        nb_tape_end(k->own);
        nb_tape_free(k->own);
    }
    if (k->mode == 2) nb_tape_reset(k->input);
    /* then the forward writes its result from its inputs, as forwards do */
    const double *a = nb_tensor_cdata(in[0]), *b = nb_tensor_cdata(in[1]);
    double *o = nb_tensor_data(out);
    if (!a || !b || !o) return NB_ERR_STATE;
    for (int64_t i = 0; i < nb_tensor_numel(out); i++) o[i] = a[i] * b[i];
    return NB_OK;
}

static nb_status killer_bw(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout,
                           nb_tensor **gin)
{
    (void)n_in, (void)out;
    tape_killer *k = user;
    if (k->mode == 3) nb_tape_reset(k->input);
    gin[0] = nb_mul(gout, in[1]); /* reads the input of the other tape */
    return NB_OK;
}

/* The forward's reset released the result it was writing (its data in an arena chunk the reset
 * freed), its free the whole tape (heap-use-after-free), the reset of an input's tape that input.
 * Refused now (and the forward's nb_tape_end of its tape): the op (or the backward) fails with the
 * first refusal's message; every tape stays usable. */
static void test_custom_op_kills_tapes(void)
{
    for (int mode = 0; mode < 4; mode++) {
        tape_killer k = {mode, nb_tape_new(), nb_tape_new()};
        nb_custom_op op = {"killer", killer_fw, killer_bw, NULL, &k};
        nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(1 << 16), 2.0); /* 512 KiB: the arena grows */
        nb_tensor *x0 = nb_tensor_full(NB_F64, NB_SHAPE(1 << 16), 3.0);
        nb_tensor_set_requires_grad(w, 1);
        nb_tape_begin(k.input);
        nb_tensor *c = nb_mul_scalar(x0, 1.0); /* a constant of the other tape */
        nb_tape_end(k.input);
        nb_tape_begin(k.own);
        for (int i = 0; i < 3; i++) nb_add(w, w); /* more arena chunks, which a reset would free */
        nb_error_clear();
        nb_tensor *in[2] = {w, c};
        nb_tensor *y = nb_custom(&op, 2, in, NB_F64, NB_SHAPE(1 << 16));
        if (mode < 3) {
            CHECK(y == NULL && nb_error_code() == NB_ERR_STATE &&
                  strstr(nb_error_message(), "a backward or a custom op runs on this tape"),
                  "mode %d: forward: %p (%s)", mode, (void *)y, nb_error_message());
        } else {
            CHECK(y != NULL && nb_tensor_get(y, 3) == 6.0, "mode 3: forward: %s", nb_error_message());
            nb_status st = y ? nb_backward(nb_sum_all(y), NULL, 0) : NB_ERR_STATE;
            CHECK(st != NB_OK && nb_error_code() == NB_ERR_STATE &&
                  strstr(nb_error_message(), "nb_tape_reset: a backward or a custom op runs on this tape"),
                  "mode 3: backward: %s (%s)", nb_status_name(st), nb_error_message());
        }
        nb_error_clear();
        /* both tapes still work */
        CHECK(nb_tape_generation(k.own) == 1 && nb_tape_generation(k.input) == 1, "mode %d: no reset happened", mode);
        CHECK(nb_tensor_get(c, 5) == 3.0, "mode %d: the other tape's result intact: %s", mode, nb_error_message());
        if (mode == 1) CHECK(nb_tape_current() == k.own, "the forward could not end the tape either");
        CHECK(nb_tensor_get(nb_add(w, w), 7) == 4.0, "mode %d: the tape records on", mode);
        nb_tape_end(k.own);
        nb_tape_free(k.own);
        nb_tape_free(k.input);
        nb_tensor_free(w);
        nb_tensor_free(x0);
        nb_error_clear();
    }
}

/* ---- begin/end from user code ------------------------------------------------------------------ */

/* A hook that ends the tape the backward runs on (begun after tape b): the backward made it current
 * again when done, so the caller's nb_tape_end restored NULL instead of b, and b could then never be
 * ended nor freed. A hook that begins a tape and does not end it left it begun forever. The first is
 * refused; the second fails the backward, which ends the tape left begun; begin/end keep nesting, and
 * every tape can be freed. A custom op's forward the same. */
static nb_tape *ended_in_hook, *begun_in_hook;

static nb_tensor *end_hook(nb_tensor *g, void *user)
{
    (void)user;
    if (ended_in_hook) nb_tape_end(ended_in_hook);
    if (begun_in_hook) nb_tape_begin(begun_in_hook);
    return g;
}

static nb_status begin_fw(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)n_in;
    nb_tape_begin(user);
    memcpy(nb_tensor_data(out), nb_tensor_cdata(in[0]), sizeof(double));
    return NB_OK;
}

static nb_status begin_bw_raw(void *user, int n_in, const nb_tensor *const *in, const nb_tensor *out,
                              const nb_tensor *gout, nb_tensor *const *gin)
{
    (void)user, (void)n_in, (void)in, (void)out, (void)gout, (void)gin;
    return NB_OK;
}

static void test_begin_end_from_hooks(void)
{
    nb_tensor *w = scalar_leaf(2.0, 1);
    for (int kind = 0; kind < 3; kind++) {
        nb_tape *b = nb_tape_new(), *t = nb_tape_new(), *x = nb_tape_new();
        nb_tape_begin(b);
        nb_tape_begin(t);
        ended_in_hook = kind == 0 ? t : NULL;
        begun_in_hook = kind == 1 ? x : NULL;
        nb_status st = NB_OK;
        nb_error_clear();
        if (kind < 2) {
            nb_tensor *y = nb_tanh(nb_mul(w, w));
            nb_tensor_set_hook(y, end_hook, NULL);
            nb_tensor *g;
            st = nb_grad(y, NULL, 1, &w, &g, 0);
        } else {
            nb_custom_op op = {"begins", begin_fw, NULL, begin_bw_raw, x};
            CHECK(nb_custom(&op, 1, &w, NB_F64, 0, NULL) == NULL, "the custom op fails");
        }
        const char *want = kind == 0 ? "nb_tape_end: a backward or a custom op runs on this tape"
                                     : kind == 1 ? "nb_grad: a hook or a custom op changed the current tape"
                                                 : "nb_custom: the forward of begins changed the current tape";
        CHECK((kind != 1 || st == NB_ERR_STATE) && nb_error_code() == NB_ERR_STATE && strstr(nb_error_message(), want),
              "kind %d: %s (%s), want \"%s\"", kind, nb_status_name(st), nb_error_message(), want);
        nb_error_clear();
        CHECK(nb_tape_current() == t, "kind %d: the backward's tape is current again", kind);
        CHECK(nb_tape_end(t) == NB_OK && nb_tape_current() == b && nb_tape_end(b) == NB_OK && nb_tape_current() == NULL,
              "kind %d: t then b end, in order: %s", kind, nb_error_message());
        /* x, begun by the user code and left begun, was ended for it */
        nb_tape_free(t);
        nb_tape_free(b);
        nb_tape_free(x);
        CHECK_NO_ERROR();
    }
    ended_in_hook = begun_in_hook = NULL;
    nb_tensor_free(w);
}

/* ---- user code during a backward: what mark checked can change before a rule reads it ---------- */

/* What a hook does to the graph: free a leaf, reset another tape, switch requires_grad, step a leaf in
 * place, or something harmless. */
enum { DO_FREE_X, DO_RESET_A, DO_FREE_SELF, DO_GRAD_ON, DO_GRAD_OFF, DO_FREE_OTHER, DO_RESET_OTHER, DO_RECORD };
typedef struct meddler {
    int what;
    nb_tensor *x, *self, *other;
    nb_tape *a, *other_tape;
} meddler;

static void meddle(meddler *m)
{
    switch (m->what) {
    case DO_FREE_X: nb_tensor_free(m->x); break;
    case DO_RESET_A:
        nb_tape_reset(m->a);
        nb_tape_begin(m->a);
        nb_full(NB_F64, NB_SHAPE(8, 8), 1000.0); /* overwrite what the constant held */
        nb_tape_end(m->a);
        break;
    case DO_FREE_SELF: nb_tensor_free(m->self); break;
    case DO_GRAD_ON: nb_tensor_set_requires_grad(m->x, 1); break;
    case DO_GRAD_OFF: nb_tensor_set_requires_grad(m->self, 0); break;
    case DO_FREE_OTHER: nb_tensor_free(m->other); break;
    case DO_RESET_OTHER: nb_tape_reset(m->other_tape); break;
    default: nb_tanh(nb_full(NB_F64, NB_SHAPE(3), 0.5)); break; /* recorded nowhere: no-grad pass */
    }
}

static nb_tensor *meddling_hook(nb_tensor *g, void *user)
{
    meddle(user);
    return g;
}

static nb_status meddling_bw(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout,
                             nb_tensor **gin)
{
    (void)n_in, (void)in, (void)out;
    meddle(user);
    gin[0] = gout;
    return NB_OK;
}

static nb_status copy_fw(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in;
    memcpy(nb_tensor_data(out), nb_tensor_cdata(in[0]), (size_t)nb_tensor_numel(out) * sizeof(double));
    return NB_OK;
}

/* y = sum(tanh(hooked(w @ x))) + sum(w @ c): the hook runs before matmul's rules read x (a leaf, fast
 * path) and c (a constant of tape a). Freeing x or resetting a used to give dL/dw from freed or rewritten
 * memory; a hook that frees its own leaf or switches a leaf's requires_grad crashed or lost gradient.
 * Each now fails with NB_ERR_STATE naming what changed, and harmless hooks change nothing. The meddling
 * happens in a gradient hook on an intermediate (where = 0), on w (1, a leaf's hook), or in a custom
 * op's composed backward (2). */
static void test_hooks_meddling(void)
{
    static const char *const expect[] = {
        [DO_FREE_X] = "input 1 of node 2 (matmul) was freed during the backward",
        [DO_RESET_A] = "input 1 of node 0 (matmul) belongs to a tape that was reset during the backward",
        [DO_FREE_SELF] = "the gradient hook of a leaf freed it during the backward",
        [DO_GRAD_ON] = "its requires_grad changed during the backward",
        [DO_GRAD_OFF] = "its requires_grad changed during the backward",
    };
    for (int where = 0; where < 3; where++)
        for (int what = 0; what <= DO_RECORD; what++) {
            if (what == DO_FREE_SELF && where != 1) continue;
            nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(8, 8), 0.01);
            nb_tensor_set_requires_grad(w, 1);
            nb_tensor *x = nb_tensor_full(NB_F64, NB_SHAPE(8, 8), 3.0);
            nb_tensor *other = nb_tensor_full(NB_F64, NB_SHAPE(2), 1.0);
            nb_tape *a = nb_tape_new(), *other_tape = nb_tape_new(), *t = nb_tape_new();
            nb_tape_begin(a);
            nb_tensor *c = nb_mul_scalar(x, 2.0); /* 6 */
            nb_tape_end(a);
            meddler m = {what, x, w, other, a, other_tape};
            nb_custom_op op = {"meddle", copy_fw, meddling_bw, NULL, &m};
            nb_tape_begin(t);
            nb_tensor *r = nb_sum_all(nb_matmul(w, c)); /* node 0: its rule runs last */
            nb_tensor *p = nb_matmul(w, x);              /* node 2 */
            nb_tensor *q = where == 2 ? nb_custom(&op, 1, &p, NB_F64, NB_SHAPE(8, 8)) : p;
            nb_tensor *y = nb_add(nb_sum_all(nb_tanh(q)), r);
            if (where == 0) nb_tensor_set_hook(q, meddling_hook, &m);
            if (where == 1) nb_tensor_set_hook(w, meddling_hook, &m);
            nb_error_clear();
            nb_status st = nb_backward(y, NULL, 0);
            /* w's hook runs after every rule: only freeing w itself, and requires_grad switched on a
             * leaf no rule will look at again, come too late to matter */
            int harmless = what >= DO_FREE_OTHER || (where == 1 && what != DO_FREE_SELF);
            if (harmless) {
                /* dL/dw[0][0] = sum_j (1 - tanh^2(0.24)) 3 + 8 * 6 */
                double want = 8 * (1 - tanh(0.24) * tanh(0.24)) * 3 + 8 * 6;
                CHECK(st == NB_OK && fabs(nb_tensor_get(nb_tensor_grad(w), 0) - want) < 1e-12,
                      "where %d, what %d: harmless: %s, dL/dw %g (want %g)", where, what, nb_error_message(),
                      st == NB_OK ? nb_tensor_get(nb_tensor_grad(w), 0) : 0.0, want);
            } else {
                CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), expect[what]),
                      "where %d, what %d: %s (%s), want \"%s\"", where, what, nb_status_name(st),
                      nb_error_message(), expect[what]);
            }
            nb_error_clear();
            nb_tape_end(t);
            nb_tape_free(t);
            nb_tape_free(a);
            nb_tape_free(other_tape);
            if (what != DO_FREE_X) nb_tensor_free(x);
            if (what != DO_FREE_SELF) nb_tensor_free(w);
            if (what != DO_FREE_OTHER) nb_tensor_free(other);
        }
}

/* The pass writes a leaf's .grad (or its post-accumulate hook steps the leaf) while a node not yet
 * processed reads it: y = u * w.grad + w^2, whose u.grad must be the w.grad recorded (3), was 7; a
 * post-accumulate hook stepping w before the rule of v * detach(w) read it gave 0.9 for 2. Both refused;
 * the same programs without the conflict run. */
static nb_status sgd_step(nb_tensor *leaf, void *user)
{
    (void)user;
    return nb_tensor_axpy(leaf, -0.1, nb_tensor_grad(leaf));
}

static void test_backward_writes_what_it_reads(void)
{
    nb_tensor *w = scalar_leaf(2.0, 1), *u = scalar_leaf(1.0, 1), *v = scalar_leaf(1.0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    CHECK(nb_backward(nb_mul_scalar(w, 3.0), NULL, 0) == NB_OK, "w.grad = 3");
    nb_tensor *uw = nb_mul(u, nb_tensor_grad(w)); /* recorded before w's last use */
    nb_tensor *y = nb_add(uw, nb_square(w));
    CHECK_ERROR(nb_backward(y, NULL, NB_RETAIN_GRAPH) != NB_OK, NB_ERR_STATE,
                "input 1 [] of node 1 (mul) was modified in place during the backward");
    CHECK(nb_tensor_grad(u) == NULL, "u got no gradient");
    /* the same value through a copy taken before: fine */
    nb_tape_reset(t);
    nb_tensor_zero_grad(w);
    CHECK(nb_backward(nb_mul_scalar(w, 3.0), NULL, 0) == NB_OK, "w.grad = 3 again");
    nb_tensor *g3 = nb_tensor_clone(nb_tensor_grad(w));
    uw = nb_mul(u, g3);
    y = nb_add(uw, nb_square(w));
    CHECK(nb_backward(y, NULL, 0) == NB_OK && nb_tensor_item(nb_tensor_grad(u)) == 3.0, "through a clone: %s",
          nb_error_message());
    nb_tape_reset(t);

    /* an optimizer step in the post-accumulate hook, while detach(w) still has a reader */
    nb_tensor_set_post_accumulate_hook(w, sgd_step, NULL);
    nb_tensor *vw = nb_mul(v, nb_detach(w));
    nb_tensor *y2 = nb_add(vw, nb_square(w));
    CHECK_ERROR(nb_backward(y2, NULL, 0) != NB_OK, NB_ERR_STATE, "was modified in place during the backward");
    CHECK(nb_tensor_grad(v) == NULL, "v got no gradient");
    nb_tape_reset(t);
    /* with w read only by the nodes before its last use, the step in the hook is fine */
    nb_tensor_zero_grad(w);
    double w0 = nb_tensor_item(w);
    nb_tensor *w2 = nb_square(w);
    y2 = nb_add(w2, nb_mul(v, w));
    CHECK(nb_backward(y2, NULL, 0) == NB_OK && nb_tensor_item(nb_tensor_grad(v)) == w0 &&
          nb_tensor_item(w) == w0 - 0.1 * (2 * w0 + 1), "the step after w's last use: %s", nb_error_message());
    nb_tensor_set_post_accumulate_hook(w, NULL, NULL);
    nb_tape_reset(t);

    /* the .grad read through a view of it, made on the tape or without one (the view's reads went
     * unchecked: u.grad was the buffer after the pass's addition) */
    for (int kind = 0; kind < 2; kind++) {
        nb_tensor_zero_grad(w);
        CHECK(nb_backward(nb_mul_scalar(w, 3.0), NULL, 0) == NB_OK, "w.grad = 3");
        nb_tensor *gv = NULL;
        if (kind == 1) {
            nb_tape_end(t);
            gv = nb_reshape(nb_tensor_grad(w), NB_SHAPE(1)); /* a leaf view (no tape) */
            nb_tape_begin(t);
        }
        nb_tensor *view = kind ? gv : nb_reshape(nb_tensor_grad(w), NB_SHAPE(1));
        nb_tensor *uv = nb_mul(u, view);
        nb_tensor *yv = nb_add(nb_sum_all(uv), nb_square(w));
        nb_tensor_zero_grad(u);
        CHECK_ERROR(nb_backward(yv, NULL, 0) != NB_OK, NB_ERR_STATE, "was modified in place during the backward");
        nb_tape_reset(t);
        nb_tensor_free(gv);
    }

    /* a create-graph backward writes the .grad buffer too, the second one on a tape as much as the
     * first: u * buffer recorded between two of them must not see the second's values (u.grad was 11,
     * the buffer's value when recorded was 7) */
    nb_tensor_zero_grad(w);
    nb_tensor_fill(w, 2.0);
    CHECK(nb_backward(nb_mul_scalar(w, 3.0), NULL, 0) == NB_OK, "w.grad = 3");
    nb_tensor *buf = nb_tensor_grad(w); /* the buffer, before a create-graph gradient replaces it */
    CHECK(nb_backward(nb_square(w), NULL, NB_CREATE_GRAPH) == NB_OK && nb_tensor_item(nb_tensor_grad(w)) == 7.0,
          "create-graph: 3 + 2w = 7");
    nb_tensor *ub = nb_mul(u, buf);
    CHECK(nb_backward(nb_square(w), NULL, NB_CREATE_GRAPH) == NB_OK && nb_tensor_item(nb_tensor_grad(w)) == 11.0,
          "again: 11");
    CHECK_ERROR(nb_backward(ub, NULL, 0) != NB_OK, NB_ERR_STATE, "was modified in place after it was recorded");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(g3);
    nb_tensor_free(w);
    nb_tensor_free(u);
    nb_tensor_free(v);
}

/* A gradient hook may return a tensor of another tape, or a leaf: nb_grad handed it back as the
 * gradient, so it lived as long as that tape (stale after its reset, NB_ERR_STATE on read) or was the
 * caller's own leaf. The gradients nb_grad returns are on the output's tape, as nabla.h says. */
typedef struct foreign_ret {
    nb_tape *other;
    nb_tensor *leaf;
    int kind;
} foreign_ret;

static nb_tensor *foreign_hook(nb_tensor *g, void *user)
{
    foreign_ret *f = user;
    if (f->kind == 1) return f->leaf;
    nb_tape_begin(f->other);
    nb_tensor *r = nb_mul_scalar(g, 5.0);
    nb_tape_end(f->other);
    return r;
}

static void test_hook_returns_foreign(void)
{
    nb_tensor *w = scalar_leaf(2.0, 1);
    for (int kind = 0; kind < 2; kind++) {
        foreign_ret f = {nb_tape_new(), scalar_leaf(7.0, 0), kind};
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        nb_tensor *y = nb_mul_scalar(w, 3.0);
        nb_tensor_set_hook(w, foreign_hook, &f);
        nb_tensor *g[1];
        CHECK(nb_grad(y, NULL, 1, &w, g, 0) == NB_OK, "kind %d: %s", kind, nb_error_message());
        nb_tape_reset(f.other);
        nb_tensor_fill(f.leaf, -1.0);
        double want = kind ? 7.0 : 15.0;
        CHECK(g[0] != f.leaf && !nb_tensor_is_leaf(g[0]) && nb_tensor_get(g[0], 0) == want,
              "kind %d: the gradient is a result of the output's tape, %g (want %g): %s", kind,
              nb_tensor_get(g[0], 0), want, nb_error_message());
        nb_error_clear();
        nb_tensor_set_hook(w, NULL, NULL);
        nb_tape_end(t);
        nb_tape_free(t);
        nb_tape_free(f.other);
        nb_tensor_free(f.leaf);
    }
    nb_tensor_free(w);
}

/* ---- finding 3: threads ------------------------------------------------------------------------ */

typedef struct handoff {
    nb_tensor *w;
    double scale;
    nb_status st;
} handoff;

static void *backward_on_own_tape(void *arg)
{
    handoff *h = arg;
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    h->st = nb_backward(nb_mul_scalar(h->w, h->scale), NULL, 0);
    nb_tape_end(t);
    nb_tape_free(t);
    return NULL;
}

/* A backward on thread A, then one on thread B (one after the other): both contributions arrive. */
static void test_thread_handoff(void)
{
    nb_tensor *w = scalar_leaf(1.0, 1);
    handoff a = {w, 2.0, NB_ERR_ARG}, b = {w, 3.0, NB_ERR_ARG};
    pthread_t th;
    pthread_create(&th, NULL, backward_on_own_tape, &a);
    pthread_join(th, NULL);
    pthread_create(&th, NULL, backward_on_own_tape, &b);
    pthread_join(th, NULL);
    CHECK(a.st == NB_OK && b.st == NB_OK, "both backwards succeed");
    CHECK(nb_tensor_item(nb_tensor_grad(w)) == 5.0, "w.grad = 2 + 3, got %g", nb_tensor_item(nb_tensor_grad(w)));
    /* and on this thread too */
    backward_on_own_tape(&(handoff){w, 4.0, NB_OK});
    CHECK(nb_tensor_item(nb_tensor_grad(w)) == 9.0, "w.grad = 9, got %g", nb_tensor_item(nb_tensor_grad(w)));
    nb_tensor_free(w);
}

/* N threads, each with its own tape, differentiate a small network with respect to parameters they
 * all share (read-only: nb_grad writes nothing into a leaf) over many steps; the gradients must equal
 * the serial run's bit for bit. */
#define N_THREADS 4
#define N_STEPS 200

typedef struct shared_net {
    nb_tensor *w1, *b1, *w2;
} shared_net;

/* the shared, read-only parameters of the thread tests, from a seeded generator */
static shared_net new_shared_net(uint64_t seed)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    shared_net n = {nb_tensor_uniform(NB_F64, NB_SHAPE(4, 6), -1, 1, &rng),
                    nb_tensor_uniform(NB_F64, NB_SHAPE(6), -1, 1, &rng),
                    nb_tensor_uniform(NB_F64, NB_SHAPE(6, 2), -1, 1, &rng)};
    nb_tensor_set_requires_grad(n.w1, 1);
    nb_tensor_set_requires_grad(n.b1, 1);
    nb_tensor_set_requires_grad(n.w2, 1);
    return n;
}

typedef struct worker {
    const shared_net *net;
    int id;
    double out[N_STEPS][3]; /* per step: sum of each parameter's gradient, weighted by position */
    nb_status st;
} worker;

static double weighted(const nb_tensor *g)
{
    double s = 0;
    for (int64_t i = 0; i < nb_tensor_numel(g); i++) s += (1.0 + (double)i / 7) * nb_tensor_get(g, i);
    return s;
}

static void *worker_run(void *arg)
{
    worker *wk = arg;
    const shared_net *n = wk->net;
    nb_tape *t = nb_tape_new();
    nb_rng rng;
    nb_rng_seed(&rng, 100 + (uint64_t)wk->id);
    wk->st = NB_OK;
    for (int s = 0; s < N_STEPS && wk->st == NB_OK; s++) {
        nb_tape_begin(t);
        nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(5, 4), -1, 1, &rng);
        nb_tensor *h = nb_tanh(nb_add(nb_matmul(x, n->w1), n->b1));
        nb_tensor *loss = nb_sum_all(nb_square(nb_matmul(h, n->w2)));
        /* odd threads reach the leaves in another order (b1 first), so their slot numbers differ */
        if (wk->id % 2) loss = nb_add(loss, nb_mul_scalar(nb_sum_all(n->b1), 0.5));
        nb_tensor *params[3] = {n->w1, n->b1, n->w2}, *g[3];
        wk->st = nb_grad(loss, NULL, 3, params, g, s % 3 == 2 ? NB_CREATE_GRAPH : 0);
        for (int i = 0; i < 3 && wk->st == NB_OK; i++) wk->out[s][i] = weighted(g[i]);
        nb_tape_end(t);
        nb_tape_reset(t);
        nb_tensor_free(x);
    }
    nb_tape_free(t);
    return NULL;
}

static void test_threads_shared_params(void)
{
    shared_net n = new_shared_net(5);
    static worker serial[N_THREADS], par[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        serial[i] = (worker){.net = &n, .id = i};
        worker_run(&serial[i]);
    }
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        par[i] = (worker){.net = &n, .id = i};
        pthread_create(&th[i], NULL, worker_run, &par[i]);
    }
    for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N_THREADS; i++) {
        CHECK(serial[i].st == NB_OK && par[i].st == NB_OK, "thread %d: %s / %s", i, nb_status_name(serial[i].st),
              nb_status_name(par[i].st));
        CHECK(memcmp(serial[i].out, par[i].out, sizeof serial[i].out) == 0,
              "thread %d: gradients differ from the serial run", i);
    }
    CHECK(nb_tensor_grad(n.w1) == NULL, "nb_grad wrote nothing into the shared leaves");
    nb_tensor_free(n.w1);
    nb_tensor_free(n.b1);
    nb_tensor_free(n.w2);
}

/* Two threads, each with its own tape, run nb_backward into one shared leaf: every pass adds 1 to each
 * element of its .grad. The additions (and the first pass's allocation of .grad) lost updates: 39 or
 * fewer where 40 were added. Each addition now holds the leaf's gradient lock. */
#define SHARED_N (1 << 19)
static void *backward_shared(void *arg)
{
    nb_tensor *w = arg;
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    for (int i = 0; i < 20; i++) {
        if (nb_backward(nb_sum_all(w), NULL, 0) != NB_OK) break;
        nb_tape_reset(t);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    return NULL;
}

static void test_threads_shared_backward(void)
{
    for (int rep = 0; rep < 3; rep++) {
        nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(SHARED_N), 0.25);
        nb_tensor_set_requires_grad(w, 1);
        pthread_t th[2];
        for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, backward_shared, w);
        for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
        const double *g = nb_tensor_cdata(nb_tensor_grad(w));
        int64_t wrong = 0;
        for (int64_t i = 0; g && i < SHARED_N; i++) wrong += g[i] != 40.0;
        CHECK(g && wrong == 0, "rep %d: %lld of %d elements of .grad are not 40 (first %g)", rep, (long long)wrong,
              SHARED_N, g ? g[0] : 0.0);
        nb_tensor_free(w);
    }
}

/* The same through a product: each pass's weight gradient goes straight into the shared .grad by gemm
 * (beta 1) under the leaf's lock. x is ones [4, 256], so every pass adds 4 to each element of w [256,
 * 256]'s .grad; some passes add into a post-accumulate hook's count. 40 passes: 160 everywhere. */
#define SHARED_K 256
static atomic_int shared_post_calls;
static nb_status count_post(nb_tensor *leaf, void *user)
{
    (void)leaf;
    (void)user;
    atomic_fetch_add(&shared_post_calls, 1);
    return NB_OK;
}
static void *matmul_shared(void *arg)
{
    nb_tensor *w = arg;
    nb_tensor *x = nb_tensor_full(NB_F64, NB_SHAPE(4, SHARED_K), 1.0);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    for (int i = 0; i < 20; i++) {
        if (nb_backward(nb_sum_all(nb_matmul(x, w)), NULL, 0) != NB_OK) break;
        nb_tape_reset(t);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    return NULL;
}

static void test_threads_shared_matmul(void)
{
    for (int rep = 0; rep < 3; rep++) {
        nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(SHARED_K, SHARED_K), 0.25);
        nb_tensor_set_requires_grad(w, 1);
        nb_tensor_set_post_accumulate_hook(w, count_post, NULL);
        atomic_store(&shared_post_calls, 0);
        pthread_t th[2];
        for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, matmul_shared, w);
        for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
        const double *g = nb_tensor_cdata(nb_tensor_grad(w));
        int64_t wrong = 0;
        for (int64_t i = 0; g && i < SHARED_K * SHARED_K; i++) wrong += g[i] != 160.0;
        CHECK(g && wrong == 0, "rep %d: %lld of %d elements of .grad are not 160 (first %g)", rep, (long long)wrong,
              SHARED_K * SHARED_K, g ? g[0] : 0.0);
        CHECK(atomic_load(&shared_post_calls) == 40, "rep %d: %d post-accumulate hooks, not 40", rep,
              atomic_load(&shared_post_calls));
        nb_tensor_free(w);
    }
}

/* Anomaly mode is process-wide: one thread switches it on and off while others run steps (a plain int
 * read by every op was a data race, which ThreadSanitizer reports: .ci/run runs this file under it).
 * Whatever the mode, the gradients of finite steps are those of the serial run. */
static atomic_int anomaly_stop;

static void *anomaly_toggler(void *arg)
{
    (void)arg;
    while (!atomic_load(&anomaly_stop)) {
        nb_set_anomaly_mode(1);
        nb_set_anomaly_mode(0);
    }
    return NULL;
}

static void test_anomaly_from_another_thread(void)
{
    shared_net n = new_shared_net(11);
    static worker serial[2], par[2];
    for (int i = 0; i < 2; i++) {
        serial[i] = (worker){.net = &n, .id = i};
        worker_run(&serial[i]);
    }
    atomic_store(&anomaly_stop, 0);
    pthread_t tog, th[2];
    pthread_create(&tog, NULL, anomaly_toggler, NULL);
    for (int i = 0; i < 2; i++) {
        par[i] = (worker){.net = &n, .id = i};
        pthread_create(&th[i], NULL, worker_run, &par[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    atomic_store(&anomaly_stop, 1);
    pthread_join(tog, NULL);
    nb_set_anomaly_mode(0);
    for (int i = 0; i < 2; i++)
        CHECK(par[i].st == NB_OK && memcmp(serial[i].out, par[i].out, sizeof serial[i].out) == 0,
              "thread %d: %s, gradients %s the serial run's", i, nb_status_name(par[i].st),
              memcmp(serial[i].out, par[i].out, sizeof serial[i].out) ? "differ from" : "equal");
    nb_tensor_free(n.w1);
    nb_tensor_free(n.b1);
    nb_tensor_free(n.w2);
}

/* Every case, or only those named on the command line (to run one at a time). */
int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*run)(void);
    } cases[] = {
        {"create_graph_growth", test_create_graph_growth},
        {"two_grus", test_two_grus},
        {"two_lstms", test_two_lstms},
        {"stale_results", test_stale_results},
        {"stale_limits", test_stale_limits},
        {"reset_other_tape", test_reset_other_tape},
        {"free_held_tape", test_free_held_tape},
        {"view_of_other_tape", test_view_of_other_tape},
        {"view_of_freed_leaf", test_view_of_freed_leaf},
        {"freed_leaf", test_freed_leaf},
        {"reset_from_hook", test_reset_from_hook},
        {"custom_op_kills_tapes", test_custom_op_kills_tapes},
        {"begin_end_from_hooks", test_begin_end_from_hooks},
        {"hooks_meddling", test_hooks_meddling},
        {"backward_writes_what_it_reads", test_backward_writes_what_it_reads},
        {"hook_returns_foreign", test_hook_returns_foreign},
        {"thread_handoff", test_thread_handoff},
        {"threads_shared_params", test_threads_shared_params},
        {"threads_shared_backward", test_threads_shared_backward},
        {"threads_shared_matmul", test_threads_shared_matmul},
        {"anomaly_from_another_thread", test_anomaly_from_another_thread},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int run = argc < 2;
        for (int a = 1; a < argc; a++) run |= !strcmp(argv[a], cases[c].name);
        if (run) cases[c].run();
    }
    return nbt_report("lifetimes");
}
