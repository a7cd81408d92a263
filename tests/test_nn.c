/* The nn layer (src/nn/): float64 gradient checks of every layer and loss with respect to the inputs
 * and the parameters, second-order checks, forward values against closed forms and hand-written loops,
 * recurrent masking (variable lengths), state keeping, parameter collections, initialisers, and bad
 * input. Parameters are f64 (nb_layer_opts.dtype); gradcheck callbacks close over the layer structs
 * through their user pointer, and the parameter tensors are passed as gradcheck inputs so that
 * finite differences perturb them in place. */
#include "nbtest.h"

#include <stdlib.h>

static const nb_layer_opts F64 = {.dtype = NB_F64};

/* ---------------------------------------------------------------------------------------------- */
/* Helpers                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

static double *D(nb_tensor *t) { return (double *)nb_tensor_data(t); }

/* A caller-owned f64 leaf ~ U(lo, hi) that requires grad. */
static nb_tensor *leaf_u(nb_rng *rng, double lo, double hi, int ndim, const int64_t *shape)
{
    nb_tensor *t = nb_tensor_uniform(NB_F64, ndim, shape, lo, hi, rng);
    nb_tensor_set_requires_grad(t, 1);
    return t;
}
#define LEAF(rng, lo, hi, ...) leaf_u(rng, lo, hi, NB_SHAPE(__VA_ARGS__))

/* Overwrite a leaf (a parameter) with U(lo, hi). */
static void randomize(nb_tensor *t, nb_rng *rng, double lo, double hi)
{
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) nb_tensor_set(t, i, lo + (hi - lo) * nb_rng_uniform(rng));
}

/* The trainable tensors of p appended to in[*n]. */
static void add_params(const nb_params *p, nb_tensor **in, int *n)
{
    for (int i = 0; i < nb_params_count(p); i++)
        if (nb_params_trainable(p, i)) in[(*n)++] = nb_params_tensor(p, i);
}

/* Several outputs as one 1-D tensor (gradcheck takes one output). */
static nb_tensor *cat_flat(int n, nb_tensor *const *ts)
{
    nb_tensor *flat[8];
    for (int i = 0; i < n; i++) flat[i] = nb_reshape(ts[i], NB_SHAPE(-1));
    return nb_concat(n, flat, 0);
}

/* max |a - b| over the elements; INFINITY when the shapes differ or either is NULL. */
static double max_diff(const nb_tensor *a, const nb_tensor *b)
{
    if (!a || !b || nb_tensor_ndim(a) != nb_tensor_ndim(b) ||
        memcmp(nb_tensor_shape(a), nb_tensor_shape(b), (size_t)nb_tensor_ndim(a) * sizeof(int64_t)))
        return INFINITY;
    double m = 0;
    for (int64_t i = 0; i < nb_tensor_numel(a); i++) {
        double d = fabs(nb_tensor_get(a, i) - nb_tensor_get(b, i));
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

static double max_abs(const nb_tensor *a)
{
    double m = 0;
    for (int64_t i = 0; a && i < nb_tensor_numel(a); i++) m = fmax(m, fabs(nb_tensor_get(a, i)));
    return m;
}

static int all_finite(const nb_tensor *a)
{
    for (int64_t i = 0; a && i < nb_tensor_numel(a); i++)
        if (!isfinite(nb_tensor_get(a, i))) return 0;
    return a != NULL;
}

static int gradchecks_run = 0;

/* nb_gradcheck with PyTorch's default tolerances; every input that requires grad must be checked. */
static void gradcheck_ex(const char *what, nb_func f, void *user, int n, nb_tensor *const *in, int second)
{
    nb_gradcheck_report rep;
    nb_error_clear();
    nb_status st = second ? nb_gradgradcheck(f, user, n, in, NULL, &rep) : nb_gradcheck(f, user, n, in, NULL, &rep);
    gradchecks_run++;
    CHECK(st == NB_OK && rep.ok && rep.completed && rep.deterministic, "%s %s: %s (%s)",
          second ? "gradgradcheck" : "gradcheck", what, rep.message, nb_error_message());
    if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
    for (int i = 0; i < n; i++)
        if (nb_tensor_requires_grad(in[i])) CHECK(rep.input[i].checked, "%s: input %d was not checked", what, i);
    nb_error_clear();
}
#define GRADCHECK(what, f, user, n, in) gradcheck_ex(what, f, user, n, in, 0)
#define GRADGRADCHECK(what, f, user, n, in) gradcheck_ex(what, f, user, n, in, 1)

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---------------------------------------------------------------------------------------------- */
/* Linear, MLP, Embedding, LayerNorm                                                               */
/* ---------------------------------------------------------------------------------------------- */

static nb_tensor *f_linear(void *u, nb_tensor *const *in) { return nb_linear_forward(u, in[0]); }

/* y = x W^T + b by loops, for x [rows, in] */
static void check_linear_values(const nb_linear *l, nb_tensor *x, nb_tensor *y, const char *what)
{
    int64_t rows = nb_tensor_numel(x) / l->in;
    double worst = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < l->out; o++) {
            double s = l->bias ? nb_tensor_get(l->bias, o) : 0.0;
            for (int64_t k = 0; k < l->in; k++) s += nb_tensor_get(x, r * l->in + k) * nb_tensor_get(l->weight, o * l->in + k);
            worst = fmax(worst, fabs(s - nb_tensor_get(y, r * l->out + o)));
        }
    CHECK(nb_tensor_numel(y) == rows * l->out && worst < 1e-14, "%s: linear values off by %g", what, worst);
}

static void test_linear(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 11);
    nb_params *p = nb_params_new();
    nb_linear l, nb;
    nb_layer_opts nob = F64;
    nob.no_bias = 1;
    CHECK(nb_linear_init(&l, p, "lin", 4, 3, &F64, &rng) == NB_OK, "linear init: %s", nb_error_message());
    CHECK(nb_linear_init(&nb, p, "nob", 4, 3, &nob, &rng) == NB_OK, "linear init: %s", nb_error_message());
    CHECK(nb.bias == NULL && nb_params_count(p) == 3, "no_bias: bias %p, %d params", (void *)nb.bias, nb_params_count(p));
    CHECK(nb_tensor_dtype(l.weight) == NB_F64 && nb_tensor_dim(l.weight, 0) == 3 && nb_tensor_dim(l.weight, 1) == 4,
          "weight is [out, in] f64");

    nb_tensor *x2 = LEAF(&rng, -1, 1, 5, 4), *x3 = LEAF(&rng, -1, 1, 2, 3, 4), *x1 = LEAF(&rng, -1, 1, 4);
    nb_tensor *in[4] = {x2, l.weight, l.bias};
    GRADCHECK("linear 2-D", f_linear, &l, 3, in);
    in[0] = x3;
    GRADCHECK("linear 3-D", f_linear, &l, 3, in);
    in[0] = x1;
    GRADCHECK("linear 1-D", f_linear, &l, 3, in);
    nb_tensor *in_nb[2] = {x3, nb.weight};
    GRADCHECK("linear 3-D no bias", f_linear, &nb, 2, in_nb);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y3 = nb_linear_forward(&l, x3);
    CHECK(y3 && nb_tensor_ndim(y3) == 3 && nb_tensor_dim(y3, 2) == 3, "3-D linear keeps the leading dims");
    check_linear_values(&l, x3, y3, "3-D");
    check_linear_values(&nb, x2, nb_linear_forward(&nb, x2), "2-D no bias");
    nb_tensor *y1 = nb_linear_forward(&l, x1);
    CHECK(y1 && nb_tensor_ndim(y1) == 1 && nb_tensor_dim(y1, 0) == 3, "1-D linear gives [out]");
    check_linear_values(&l, x1, y1, "1-D");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x1);
    nb_tensor_free(x2);
    nb_tensor_free(x3);
    nb_params_free(p);
}

static nb_tensor *f_mlp(void *u, nb_tensor *const *in) { return nb_mlp_forward(u, in[0]); }

static void test_mlp(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 12);
    nb_params *p = nb_params_new();
    nb_mlp m;
    CHECK(nb_mlp_init(&m, p, "mlp", 4, (const int64_t[]){4, 6, 5, 3}, NB_ACT_TANH, 0.5, &F64, &rng) == NB_OK,
          "mlp init: %s", nb_error_message());
    CHECK(nb_params_count(p) == 6 && m.n_layers == 3, "3 layers, 6 params (%d)", nb_params_count(p));
    nb_tensor *x = LEAF(&rng, -1, 1, 2, 4);

    /* eval mode: no dropout; gradients w.r.t. x and all six parameters; second order too */
    nb_params_set_training(p, 0);
    nb_tensor *in[8] = {x};
    int n = 1;
    add_params(p, in, &n);
    GRADCHECK("mlp eval", f_mlp, &m, n, in);
    GRADGRADCHECK("mlp tanh eval", f_mlp, &m, n, in);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y_eval = nb_mlp_forward(&m, x);
    /* the same composition written out */
    nb_tensor *h = nb_tanh(nb_linear_forward(&m.layer[0], x));
    h = nb_tanh(nb_linear_forward(&m.layer[1], h));
    nb_tensor *y_manual = nb_linear_forward(&m.layer[2], h);
    CHECK(max_diff(y_eval, y_manual) == 0.0, "eval MLP = linear/tanh composition (diff %g)", max_diff(y_eval, y_manual));
    /* a dropout-free copy of the MLP in training mode gives the same result */
    nb_mlp m0 = m;
    m0.dropout = 0.0;
    nb_params_set_training(p, 1);
    nb_tensor *y_nodrop = nb_mlp_forward(&m0, x);
    CHECK(max_diff(y_eval, y_nodrop) == 0.0, "eval mode = dropout-free (diff %g)", max_diff(y_eval, y_nodrop));

    /* training mode with dropout 0.5: two rngs give different outputs, one seed gives the same */
    nb_rng ra, rb, ra2;
    nb_rng_seed(&ra, 100);
    nb_rng_seed(&rb, 200);
    nb_rng_seed(&ra2, 100);
    m.rng = &ra;
    nb_tensor *ya = nb_mlp_forward(&m, x);
    m.rng = &rb;
    nb_tensor *yb = nb_mlp_forward(&m, x);
    m.rng = &ra2;
    nb_tensor *ya2 = nb_mlp_forward(&m, x);
    CHECK(ya && yb && max_diff(ya, yb) > 1e-6, "dropout with two rngs: outputs differ (diff %g)", max_diff(ya, yb));
    CHECK(max_diff(ya, ya2) == 0.0, "dropout with the same seed: same output");
    CHECK(max_diff(ya, y_eval) > 1e-6 && max_diff(yb, y_eval) > 1e-6, "training output differs from eval output");
    CHECK(all_finite(ya) && all_finite(yb), "dropout outputs finite");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_params_free(p);
}

typedef struct emb_ctx {
    nb_embedding *e;
    nb_tensor *idx;
} emb_ctx;

static nb_tensor *f_emb(void *u, nb_tensor *const *in)
{
    (void)in;
    emb_ctx *c = u;
    return nb_embedding_forward(c->e, c->idx);
}

static void test_embedding(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 13);
    nb_params *p = nb_params_new();
    nb_embedding e;
    CHECK(nb_embedding_init(&e, p, "emb", 5, 3, &F64, &rng) == NB_OK, "embedding init: %s", nb_error_message());
    /* index 1 used three times, 0, 3 and 4 once, 2 never */
    nb_tensor *idx = nb_tensor_from_data(NB_I64, NB_SHAPE(2, 3), (const int64_t[]){1, 3, 1, 0, 1, 4});
    emb_ctx ctx = {&e, idx};
    nb_tensor *in[1] = {e.weight};
    GRADCHECK("embedding weight", f_emb, &ctx, 1, in);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y = nb_embedding_forward(&e, idx);
    CHECK(y && nb_tensor_ndim(y) == 3 && nb_tensor_dim(y, 0) == 2 && nb_tensor_dim(y, 1) == 3 && nb_tensor_dim(y, 2) == 3,
          "embedding [2,3] -> [2,3,3]");
    int exact = 1;
    const int64_t *ix = nb_tensor_cdata(idx);
    for (int pos = 0; y && pos < 6; pos++)
        for (int d = 0; d < 3; d++)
            if (nb_tensor_get(y, pos * 3 + d) != nb_tensor_get(e.weight, ix[pos] * 3 + d)) exact = 0;
    CHECK(exact, "embedding rows are copies of the weight rows");
    /* the same upstream row g at every position: row r of the gradient is count(r) * g exactly */
    const double g[3] = {0.5, -1.25, 2.0};
    nb_tensor *seed = nb_tensor_zeros(NB_F64, NB_SHAPE(2, 3, 3));
    for (int pos = 0; pos < 6; pos++)
        for (int d = 0; d < 3; d++) D(seed)[pos * 3 + d] = g[d];
    CHECK(nb_backward(y, seed, 0) == NB_OK, "embedding backward: %s", nb_error_message());
    nb_tensor *gw = nb_tensor_grad(e.weight);
    const int count[5] = {1, 3, 0, 1, 1};
    int ok = gw != NULL;
    for (int r = 0; ok && r < 5; r++)
        for (int d = 0; d < 3; d++)
            if (nb_tensor_get(gw, r * 3 + d) != count[r] * g[d]) ok = 0;
    CHECK(ok, "embedding gradient rows accumulate: row 1 = 3 g, row 2 = 0 (got row 1: %g %g %g)",
          gw ? nb_tensor_get(gw, 3) : NAN, gw ? nb_tensor_get(gw, 4) : NAN, gw ? nb_tensor_get(gw, 5) : NAN);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(seed);
    nb_tensor_free(idx);
    nb_params_free(p);
}

static nb_tensor *f_ln(void *u, nb_tensor *const *in) { return nb_layer_norm_forward(u, in[0]); }

static void test_layer_norm(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 14);
    nb_params *p = nb_params_new();
    nb_layer_norm ln;
    CHECK(nb_layer_norm_init(&ln, p, "ln", 5, 1e-5, &F64) == NB_OK, "layer norm init: %s", nb_error_message());
    int init_ok = 1;
    for (int i = 0; i < 5; i++) init_ok &= nb_tensor_get(ln.weight, i) == 1.0 && nb_tensor_get(ln.bias, i) == 0.0;
    CHECK(init_ok, "layer norm starts at weight 1, bias 0");
    randomize(ln.weight, &rng, 0.5, 1.5);
    randomize(ln.bias, &rng, -0.5, 0.5);
    nb_tensor *x2 = LEAF(&rng, -2, 3, 3, 5), *x3 = LEAF(&rng, -2, 3, 2, 3, 5);
    nb_tensor *in[3] = {x2, ln.weight, ln.bias};
    GRADCHECK("layer norm 2-D", f_ln, &ln, 3, in);
    in[0] = x3;
    GRADCHECK("layer norm 3-D", f_ln, &ln, 3, in);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y = nb_layer_norm_forward(&ln, x3);
    double worst = 0;
    for (int r = 0; y && r < 6; r++) {
        double mean = 0, var = 0;
        for (int k = 0; k < 5; k++) mean += nb_tensor_get(x3, r * 5 + k) / 5;
        for (int k = 0; k < 5; k++) var += pow(nb_tensor_get(x3, r * 5 + k) - mean, 2) / 5; /* biased */
        for (int k = 0; k < 5; k++) {
            double want = (nb_tensor_get(x3, r * 5 + k) - mean) / sqrt(var + 1e-5) * nb_tensor_get(ln.weight, k) +
                          nb_tensor_get(ln.bias, k);
            worst = fmax(worst, fabs(nb_tensor_get(y, r * 5 + k) - want));
        }
    }
    CHECK(y && worst < 1e-13, "layer norm values off by %g", worst);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x2);
    nb_tensor_free(x3);
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* Recurrent cells                                                                                 */
/* ---------------------------------------------------------------------------------------------- */

/* pre[b][j] = x W_ih^T + b_ih + h W_hh^T + b_hh, for gate row j (G*H rows); split = 1 gives the
 * input part only in pre and the hidden part in hid (GRU's new gate needs them apart) */
static void gate_pre(const nb_rnn_cell *c, nb_tensor *x, nb_tensor *h, int64_t b, int64_t j, double *px, double *ph)
{
    double sx = nb_tensor_get(c->b_ih, j), sh = nb_tensor_get(c->b_hh, j);
    for (int64_t k = 0; k < c->input; k++) sx += nb_tensor_get(x, b * c->input + k) * nb_tensor_get(c->w_ih, j * c->input + k);
    for (int64_t k = 0; k < c->hidden; k++)
        sh += nb_tensor_get(h, b * c->hidden + k) * nb_tensor_get(c->w_hh, j * c->hidden + k);
    *px = sx;
    *ph = sh;
}

static nb_tensor *f_elman(void *u, nb_tensor *const *in) { return nb_elman_cell(u, in[0], in[1]); }
static nb_tensor *f_gru(void *u, nb_tensor *const *in) { return nb_gru_cell(u, in[0], in[1]); }
static nb_tensor *f_lstm(void *u, nb_tensor *const *in)
{
    nb_tensor *h2, *c2;
    if (nb_lstm_cell(u, in[0], in[1], in[2], &h2, &c2) != NB_OK) return NULL;
    nb_tensor *both[2] = {h2, c2};
    return cat_flat(2, both);
}

static void test_cells(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 15);
    nb_params *p = nb_params_new();
    nb_rnn_cell ct, cr, cl, cg;
    const int64_t I = 3, H = 4, B = 2;
    CHECK(nb_rnn_cell_init(&ct, p, "tanh", NB_RNN_TANH, I, H, &F64, &rng) == NB_OK, "%s", nb_error_message());
    CHECK(nb_rnn_cell_init(&cr, p, "relu", NB_RNN_RELU, I, H, &F64, &rng) == NB_OK, "%s", nb_error_message());
    CHECK(nb_rnn_cell_init(&cl, p, "lstm", NB_LSTM, I, H, &F64, &rng) == NB_OK, "%s", nb_error_message());
    CHECK(nb_rnn_cell_init(&cg, p, "gru", NB_GRU, I, H, &F64, &rng) == NB_OK, "%s", nb_error_message());
    CHECK(nb_params_find(p, "lstm.weight_ih") == cl.w_ih && nb_params_find(p, "gru.bias_hh") == cg.b_hh,
          "cell parameter names");
    CHECK(nb_tensor_dim(cl.w_ih, 0) == 4 * H && nb_tensor_dim(cg.w_hh, 0) == 3 * H && nb_tensor_dim(ct.b_ih, 0) == H,
          "gate rows: LSTM 4H, GRU 3H, Elman H");
    /* random biases everywhere (the LSTM forget rows start at 1 / 0) */
    randomize(cl.b_ih, &rng, -0.5, 0.5);
    randomize(cl.b_hh, &rng, -0.5, 0.5);
    nb_tensor *x = LEAF(&rng, -1, 1, B, I), *h = LEAF(&rng, -1, 1, B, H), *c = LEAF(&rng, -1, 1, B, H);

    nb_tensor *in[8] = {x, h, ct.w_ih, ct.w_hh, ct.b_ih, ct.b_hh};
    GRADCHECK("elman tanh cell", f_elman, &ct, 6, in);
    nb_tensor *in_r[6] = {x, h, cr.w_ih, cr.w_hh, cr.b_ih, cr.b_hh};
    GRADCHECK("elman relu cell", f_elman, &cr, 6, in_r);
    nb_tensor *in_l[7] = {x, h, c, cl.w_ih, cl.w_hh, cl.b_ih, cl.b_hh};
    GRADCHECK("lstm cell", f_lstm, &cl, 7, in_l);
    GRADGRADCHECK("lstm cell", f_lstm, &cl, 7, in_l);
    nb_tensor *in_g[6] = {x, h, cg.w_ih, cg.w_hh, cg.b_ih, cg.b_hh};
    GRADCHECK("gru cell", f_gru, &cg, 6, in_g);

    /* forward values against the equations written out */
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *yt = nb_elman_cell(&ct, x, h), *yr = nb_elman_cell(&cr, x, h), *yg = nb_gru_cell(&cg, x, h);
    nb_tensor *hl = NULL, *cl2 = NULL;
    CHECK(nb_lstm_cell(&cl, x, h, c, &hl, &cl2) == NB_OK, "lstm cell: %s", nb_error_message());
    double wt = 0, wr = 0, wl = 0, wg = 0;
    int relu_zero = 0, relu_pos = 0;
    for (int64_t b = 0; b < B && yt && yr && yg && hl; b++)
        for (int64_t j = 0; j < H; j++) {
            double px, ph, a[4], ah[4];
            gate_pre(&ct, x, h, b, j, &px, &ph);
            wt = fmax(wt, fabs(nb_tensor_get(yt, b * H + j) - tanh(px + ph)));
            gate_pre(&cr, x, h, b, j, &px, &ph);
            double want_r = fmax(px + ph, 0.0);
            relu_zero += want_r == 0.0;
            relu_pos += want_r > 0.0;
            wr = fmax(wr, fabs(nb_tensor_get(yr, b * H + j) - want_r));
            for (int gi = 0; gi < 4; gi++) {
                gate_pre(&cl, x, h, b, gi * H + j, &px, &ph);
                a[gi] = px + ph;
            }
            double c_new = sigm(a[1]) * nb_tensor_get(c, b * H + j) + sigm(a[0]) * tanh(a[2]);
            double h_new = sigm(a[3]) * tanh(c_new);
            wl = fmax(wl, fmax(fabs(nb_tensor_get(hl, b * H + j) - h_new), fabs(nb_tensor_get(cl2, b * H + j) - c_new)));
            for (int gi = 0; gi < 3; gi++) gate_pre(&cg, x, h, b, gi * H + j, &a[gi], &ah[gi]);
            double r = sigm(a[0] + ah[0]), z = sigm(a[1] + ah[1]), nn = tanh(a[2] + r * ah[2]);
            wg = fmax(wg, fabs(nb_tensor_get(yg, b * H + j) - ((1 - z) * nn + z * nb_tensor_get(h, b * H + j))));
        }
    CHECK(yt && wt < 1e-14, "elman tanh values off by %g", wt);
    CHECK(yr && wr < 1e-14, "elman relu values off by %g", wr);
    CHECK(relu_zero > 0 && relu_pos > 0, "the relu case has both signs (%d zero, %d positive)", relu_zero, relu_pos);
    CHECK(hl && wl < 1e-14, "lstm values off by %g", wl);
    CHECK(yg && wg < 1e-14, "gru values off by %g", wg);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(h);
    nb_tensor_free(c);
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* Sequences: nb_rnn_forward                                                                       */
/* ---------------------------------------------------------------------------------------------- */

typedef struct rnn_ctx {
    const nb_rnn *r;
    const int64_t *lengths;
} rnn_ctx;

/* in: x, h0 (, c0 for an LSTM) -> [out, h_n (, c_n)] flattened */
static nb_tensor *f_rnn(void *u, nb_tensor *const *in)
{
    const rnn_ctx *c = u;
    nb_rnn_state init = {in[1], c->r->kind == NB_LSTM ? in[2] : NULL}, fin;
    nb_tensor *y;
    if (nb_rnn_forward(c->r, in[0], &init, c->lengths, &y, &fin) != NB_OK) return NULL;
    nb_tensor *parts[3] = {y, fin.h, fin.c};
    return cat_flat(fin.c ? 3 : 2, parts);
}

/* t[..] as a caller-owned leaf: a copy of the data of an op result */
static nb_tensor *owned(nb_tensor *t) { return t ? nb_tensor_clone(t) : NULL; }

static void test_rnn_kind(nb_rnn_kind kind, const char *kname)
{
    enum { T = 5, B = 2, I = 3, H = 4, L = 2 };
    const int64_t lengths[B] = {5, 3};
    char what[96];
    nb_rng rng;
    nb_rng_seed(&rng, 16 + (uint64_t)kind);
    nb_params *p = nb_params_new();
    nb_rnn r;
    nb_rnn_opts o = {.layer = F64};
    CHECK(nb_rnn_init(&r, p, "rnn", kind, I, H, L, &o, &rng) == NB_OK, "%s init: %s", kname, nb_error_message());
    for (int i = 0; i < nb_params_count(p); i++) randomize(nb_params_tensor(p, i), &rng, -0.6, 0.6);
    nb_tensor *x = LEAF(&rng, -1, 1, T, B, I), *h0 = LEAF(&rng, -0.5, 0.5, L, B, H), *c0 = LEAF(&rng, -0.5, 0.5, L, B, H);
    int lstm = kind == NB_LSTM;

    /* gradients w.r.t. x, the initial state and all 8 parameters: variable lengths with an initial
     * state, full lengths, and batch first */
    nb_tensor *in[16] = {x, h0};
    int n = 2;
    if (lstm) in[n++] = c0;
    add_params(p, in, &n);
    rnn_ctx ctx = {&r, lengths};
    snprintf(what, sizeof what, "%s lengths {5,3} + initial state", kname);
    GRADCHECK(what, f_rnn, &ctx, n, in);
    rnn_ctx ctx_full = {&r, NULL};
    snprintf(what, sizeof what, "%s full lengths", kname);
    GRADCHECK(what, f_rnn, &ctx_full, n, in);

    nb_rnn rbf = r;
    rbf.batch_first = 1;
    nb_tensor *xbf = nb_tensor_zeros(NB_F64, NB_SHAPE(B, T, I));
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++)
            for (int k = 0; k < I; k++) D(xbf)[(b * T + t) * I + k] = D(x)[(t * B + b) * I + k];
    nb_tensor_set_requires_grad(xbf, 1);
    nb_tensor *in_bf[16];
    memcpy(in_bf, in, sizeof in);
    in_bf[0] = xbf;
    rnn_ctx ctx_bf = {&rbf, lengths};
    snprintf(what, sizeof what, "%s batch first, lengths", kname);
    GRADCHECK(what, f_rnn, &ctx_bf, n, in_bf);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_rnn_state init = {h0, lstm ? c0 : NULL}, fin, fin_full, fin_tr, fin_bf;
    nb_tensor *y = NULL, *y_full = NULL, *y_tr = NULL, *y_bf = NULL;
    CHECK(nb_rnn_forward(&r, x, &init, lengths, &y, &fin) == NB_OK, "%s forward: %s", kname, nb_error_message());
    CHECK(nb_rnn_forward(&r, x, &init, NULL, &y_full, &fin_full) == NB_OK, "%s forward: %s", kname, nb_error_message());
    CHECK(y && nb_tensor_dim(y, 0) == T && nb_tensor_dim(y, 1) == B && nb_tensor_dim(y, 2) == H, "%s out [T, B, H]", kname);
    CHECK(fin.h && nb_tensor_dim(fin.h, 0) == L && (lstm ? fin.c != NULL : fin.c == NULL), "%s final state", kname);
    if (!y || !fin.h || !y_full) goto out;

    /* padded outputs (sequence 1, steps 3 and 4) are exactly zero; the others are not */
    double pad = 0, live = 0;
    for (int t = 0; t < T; t++)
        for (int k = 0; k < H; k++) {
            double v = fabs(nb_tensor_get(y, (t * B + 1) * H + k));
            if (t >= 3) pad = fmax(pad, v);
            else live = fmax(live, v);
        }
    CHECK(pad == 0.0 && live > 0.0, "%s: padded outputs zero (max %g), live ones not (max %g)", kname, pad, live);

    /* sequence 1 alone, truncated to its 3 steps, without lengths: the same outputs and final state */
    nb_tensor *x_tr = nb_slice(nb_slice(x, 0, 0, 3, 1), 1, 1, 2, 1);
    nb_rnn_state init_tr = {nb_slice(h0, 1, 1, 2, 1), lstm ? nb_slice(c0, 1, 1, 2, 1) : NULL};
    CHECK(nb_rnn_forward(&r, x_tr, &init_tr, NULL, &y_tr, &fin_tr) == NB_OK, "%s truncated: %s", kname, nb_error_message());
    double d_out = 0, d_h = 0, d_c = 0, d_full = 0;
    for (int t = 0; y_tr && t < 3; t++)
        for (int k = 0; k < H; k++)
            d_out = fmax(d_out, fabs(nb_tensor_get(y, (t * B + 1) * H + k) - nb_tensor_get(y_tr, t * H + k)));
    for (int l = 0; fin_tr.h && l < L; l++)
        for (int k = 0; k < H; k++) {
            d_h = fmax(d_h, fabs(nb_tensor_get(fin.h, (l * B + 1) * H + k) - nb_tensor_get(fin_tr.h, l * H + k)));
            if (lstm) d_c = fmax(d_c, fabs(nb_tensor_get(fin.c, (l * B + 1) * H + k) - nb_tensor_get(fin_tr.c, l * H + k)));
            /* sequence 0 is full length: as in the run without lengths */
            d_full = fmax(d_full, fabs(nb_tensor_get(fin.h, (l * B + 0) * H + k) - nb_tensor_get(fin_full.h, (l * B + 0) * H + k)));
        }
    CHECK(y_tr && fin_tr.h && d_out < 1e-14 && d_h < 1e-14 && d_c < 1e-14,
          "%s: padded steps change nothing: vs truncated run, out %g, h %g, c %g", kname, d_out, d_h, d_c);
    CHECK(d_full < 1e-14, "%s: full-length sequence matches the run without lengths (%g)", kname, d_full);
    /* and the run without lengths does see the extra steps of sequence 1 */
    double d_pad_state = 0;
    for (int k = 0; k < H; k++)
        d_pad_state = fmax(d_pad_state, fabs(nb_tensor_get(fin.h, (1 * B + 1) * H + k) - nb_tensor_get(fin_full.h, (1 * B + 1) * H + k)));
    CHECK(d_pad_state > 1e-6, "%s: lengths matter (final states differ by %g without them)", kname, d_pad_state);

    /* batch first: the same numbers transposed */
    CHECK(nb_rnn_forward(&rbf, xbf, &init, lengths, &y_bf, &fin_bf) == NB_OK, "%s batch first: %s", kname, nb_error_message());
    double d_bf = INFINITY;
    if (y_bf && nb_tensor_dim(y_bf, 0) == B && nb_tensor_dim(y_bf, 1) == T) {
        d_bf = fmax(max_diff(fin_bf.h, fin.h), lstm ? max_diff(fin_bf.c, fin.c) : 0.0);
        for (int t = 0; t < T; t++)
            for (int b = 0; b < B; b++)
                for (int k = 0; k < H; k++)
                    d_bf = fmax(d_bf, fabs(nb_tensor_get(y_bf, (b * T + t) * H + k) - nb_tensor_get(y, (t * B + b) * H + k)));
    }
    CHECK(d_bf < 1e-14, "%s: batch first = transposed sequence first (%g)", kname, d_bf);

    /* no gradient reaches the input at padded steps */
    nb_tensor *parts[3] = {y, fin.h, fin.c};
    nb_tensor *total = nb_sum_all(nb_square(cat_flat(lstm ? 3 : 2, parts)));
    CHECK(nb_backward(total, NULL, 0) == NB_OK, "%s backward: %s", kname, nb_error_message());
    nb_tensor *gx = nb_tensor_grad(x);
    double g_pad = 0, g_live = 0;
    for (int t = 0; gx && t < T; t++)
        for (int k = 0; k < I; k++) {
            double v = fabs(nb_tensor_get(gx, (t * B + 1) * I + k));
            if (t >= 3) g_pad = fmax(g_pad, v);
            else g_live = fmax(g_live, v);
        }
    CHECK(gx && g_pad == 0.0 && g_live > 0.0, "%s: dL/dx at padded steps is 0 (%g), elsewhere not (%g)", kname, g_pad, g_live);
out:
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(xbf);
    nb_tensor_free(h0);
    nb_tensor_free(c0);
    nb_params_free(p);
}

/* dropout between layers acts in training mode only */
static void test_rnn_dropout(void)
{
    nb_rng rng, ra, rb;
    nb_rng_seed(&rng, 26);
    nb_params *p = nb_params_new();
    nb_rnn r;
    nb_rnn_opts o = {.layer = F64, .dropout = 0.5};
    CHECK(nb_rnn_init(&r, p, "rnn", NB_GRU, 3, 4, 2, &o, &rng) == NB_OK, "%s", nb_error_message());
    nb_rnn r0 = r;
    r0.dropout = 0;
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(5, 2, 3), -1, 1, &rng);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *ya = NULL, *yb = NULL, *y0 = NULL, *ye = NULL;
    nb_rng_seed(&ra, 1);
    nb_rng_seed(&rb, 2);
    r.rng = &ra;
    nb_rnn_forward(&r, x, NULL, NULL, &ya, NULL);
    r.rng = &rb;
    nb_rnn_forward(&r, x, NULL, NULL, &yb, NULL);
    nb_rnn_forward(&r0, x, NULL, NULL, &y0, NULL);
    nb_params_set_training(p, 0);
    nb_rnn_forward(&r, x, NULL, NULL, &ye, NULL);
    CHECK(ya && yb && max_diff(ya, yb) > 1e-6, "rnn dropout: two rngs differ (%g)", max_diff(ya, yb));
    CHECK(max_diff(ya, y0) > 1e-6, "rnn dropout acts in training mode (%g)", max_diff(ya, y0));
    CHECK(max_diff(ye, y0) == 0.0, "rnn eval mode = no dropout (%g)", max_diff(ye, y0));
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_params_free(p);
}

static void test_rnn(void)
{
    test_rnn_kind(NB_RNN_TANH, "rnn tanh");
    test_rnn_kind(NB_LSTM, "lstm");
    test_rnn_kind(NB_GRU, "gru");
    test_rnn_kind(NB_RNN_RELU, "rnn relu");
    test_rnn_dropout();
}

/* nb_rnn_state_keep: values copied into caller-owned leaves that outlive the tape; reused */
static void test_state_keep(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 17);
    nb_params *p = nb_params_new();
    nb_rnn r, g;
    nb_rnn_opts o = {.layer = F64};
    nb_rnn_init(&r, p, "lstm", NB_LSTM, 3, 4, 2, &o, &rng);
    nb_rnn_init(&g, p, "gru", NB_GRU, 3, 4, 2, &o, &rng);
    nb_tensor *x = LEAF(&rng, -1, 1, 4, 2, 3);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);

    nb_rnn_state fin, keep = {0};
    CHECK(nb_rnn_forward(&r, x, NULL, NULL, NULL, &fin) == NB_OK, "lstm forward: %s", nb_error_message());
    CHECK(nb_rnn_state_keep(&fin, &keep) == NB_OK, "keep: %s", nb_error_message());
    CHECK(keep.h && keep.c && keep.h != fin.h && nb_tensor_is_leaf(keep.h) && nb_tensor_is_leaf(keep.c) &&
              !nb_tensor_requires_grad(keep.h),
          "kept state: new leaves without grad");
    CHECK(max_diff(keep.h, fin.h) == 0.0 && max_diff(keep.c, fin.c) == 0.0, "kept values equal the state's");
    nb_tensor *h_copy = nb_tensor_clone(fin.h), *c_copy = nb_tensor_clone(fin.c);
    nb_tensor *kh = keep.h, *kc = keep.c;
    /* a name marks the objects: a free + clone could hand back the same addresses */
    nb_tensor_set_name(keep.h, "kept h");
    nb_tensor_set_name(keep.c, "kept c");

    nb_tape_reset(tape);
    CHECK(max_diff(keep.h, h_copy) == 0.0 && max_diff(keep.c, c_copy) == 0.0, "kept values survive nb_tape_reset");

    /* the next chunk starts from the kept state; gradients do not flow into it */
    nb_rnn_state fin2;
    nb_tensor *y2;
    CHECK(nb_rnn_forward(&r, x, &keep, NULL, &y2, &fin2) == NB_OK, "second chunk: %s", nb_error_message());
    CHECK(fin2.h && max_diff(fin2.h, h_copy) > 1e-6, "second chunk moves the state");
    CHECK(nb_backward(nb_sum_all(y2), NULL, 0) == NB_OK, "backward through the chunk: %s", nb_error_message());
    CHECK(nb_tensor_grad(keep.h) == NULL, "no gradient reaches the kept state");
    CHECK(nb_rnn_state_keep(&fin2, &keep) == NB_OK, "keep again: %s", nb_error_message());
    CHECK(keep.h == kh && keep.c == kc && !strcmp(nb_tensor_name(keep.h) ? nb_tensor_name(keep.h) : "", "kept h") &&
              !strcmp(nb_tensor_name(keep.c) ? nb_tensor_name(keep.c) : "", "kept c"),
          "a second keep reuses the same tensors");
    CHECK(max_diff(keep.h, fin2.h) == 0.0 && max_diff(keep.c, fin2.c) == 0.0, "second keep copies the new values");

    /* a GRU state has no c */
    nb_rnn_state gfin, gkeep = {0};
    CHECK(nb_rnn_forward(&g, x, NULL, NULL, NULL, &gfin) == NB_OK, "gru forward: %s", nb_error_message());
    CHECK(nb_rnn_state_keep(&gfin, &gkeep) == NB_OK && gkeep.h && gkeep.c == NULL, "gru keep: h only");
    nb_rnn_state_free(&gkeep);
    nb_rnn_state_free(&keep);
    CHECK(keep.h == NULL && keep.c == NULL, "nb_rnn_state_free clears the struct");
    nb_rnn_state_free(&keep); /* twice is harmless */
    nb_rnn_state_free(NULL);
    CHECK_ERROR(nb_rnn_state_keep(NULL, &keep) != NB_OK, NB_ERR_ARG, "nb_rnn_state_keep");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(h_copy);
    nb_tensor_free(c_copy);
    nb_tensor_free(x);
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* Attention                                                                                       */
/* ---------------------------------------------------------------------------------------------- */

typedef struct att_ctx {
    nb_tensor *mask;
    int causal;
} att_ctx;

static nb_tensor *f_att(void *u, nb_tensor *const *in)
{
    att_ctx *c = u;
    return nb_attention(in[0], in[1], in[2], c->mask, c->causal);
}

/* the attention of query (b, i) by loops; mask [B, 1, Tk] (or NULL) */
static void att_ref(nb_tensor *q, nb_tensor *k, nb_tensor *v, nb_tensor *mask, int causal, int64_t b, int64_t i,
                    double *out)
{
    int64_t tq = nb_tensor_dim(q, 1), tk = nb_tensor_dim(k, 1), d = nb_tensor_dim(q, 2), dv = nb_tensor_dim(v, 2);
    double s[16], mx = -INFINITY, z = 0;
    for (int64_t j = 0; j < tk; j++) {
        int keep = (!causal || j <= i) && (!mask || nb_tensor_get(mask, b * tk + j) != 0);
        double dot = 0;
        for (int64_t e = 0; e < d; e++) dot += nb_tensor_get(q, (b * tq + i) * d + e) * nb_tensor_get(k, (b * tk + j) * d + e);
        s[j] = keep ? dot / sqrt((double)d) : -INFINITY;
        mx = fmax(mx, s[j]);
    }
    for (int64_t j = 0; j < tk; j++) z += exp(s[j] - mx);
    for (int64_t e = 0; e < dv; e++) {
        out[e] = 0;
        for (int64_t j = 0; j < tk; j++) out[e] += exp(s[j] - mx) / z * nb_tensor_get(v, (b * tk + j) * dv + e);
    }
}

static void test_attention(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 18);
    nb_tensor *q = LEAF(&rng, -1, 1, 2, 3, 4), *k = LEAF(&rng, -1, 1, 2, 5, 4), *v = LEAF(&rng, -1, 1, 2, 5, 3);
    /* batch 0: keys 3, 4 padding; batch 1: key 4 */
    nb_tensor *mask = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 1, 5), (const double[]){1, 1, 1, 0, 0, 1, 1, 1, 1, 0});
    nb_tensor *in[3] = {q, k, v};
    att_ctx none = {NULL, 0}, causal = {NULL, 1}, masked = {mask, 0}, both = {mask, 1};
    GRADCHECK("attention", f_att, &none, 3, in);
    GRADCHECK("attention causal", f_att, &causal, 3, in);
    GRADCHECK("attention padding mask", f_att, &masked, 3, in);
    GRADCHECK("attention causal + padding mask", f_att, &both, 3, in);
    /* 4-D (heads), mask [B, 1, 1, Tk] */
    nb_tensor *q4 = LEAF(&rng, -1, 1, 2, 2, 3, 4), *k4 = LEAF(&rng, -1, 1, 2, 2, 5, 4), *v4 = LEAF(&rng, -1, 1, 2, 2, 5, 3);
    nb_tensor *mask4 = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 1, 1, 5), nb_tensor_cdata(mask));
    nb_tensor *in4[3] = {q4, k4, v4};
    att_ctx both4 = {mask4, 1};
    GRADCHECK("attention 4-D causal + mask", f_att, &both4, 3, in4);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    att_ctx *cfg[4] = {&none, &causal, &masked, &both};
    for (int c = 0; c < 4; c++) {
        nb_tensor *y = nb_attention(q, k, v, cfg[c]->mask, cfg[c]->causal);
        double worst = y ? 0 : INFINITY, ref[3];
        for (int64_t b = 0; y && b < 2; b++)
            for (int64_t i = 0; i < 3; i++) {
                att_ref(q, k, v, cfg[c]->mask, cfg[c]->causal, b, i, ref);
                for (int e = 0; e < 3; e++) worst = fmax(worst, fabs(nb_tensor_get(y, (b * 3 + i) * 3 + e) - ref[e]));
            }
        CHECK(worst < 1e-14, "attention config %d: values off by %g", c, worst);
    }
    /* masked keys get no gradient: v rows 3, 4 of batch 0 and row 4 of batch 1 */
    nb_tensor *y = nb_attention(q, k, v, mask, 0);
    CHECK(nb_backward(nb_sum_all(nb_square(y)), NULL, 0) == NB_OK, "attention backward: %s", nb_error_message());
    nb_tensor *gv = nb_tensor_grad(v), *gk = nb_tensor_grad(k);
    double gmask = 0, glive = 0;
    for (int64_t b = 0; gv && gk && b < 2; b++)
        for (int64_t j = 0; j < 5; j++) {
            int masked_key = nb_tensor_get(mask, b * 5 + j) == 0;
            for (int e = 0; e < 3; e++) {
                double gvv = fabs(nb_tensor_get(gv, (b * 5 + j) * 3 + e));
                if (masked_key) gmask = fmax(gmask, gvv);
                else glive = fmax(glive, gvv);
            }
            for (int e = 0; e < 4 && masked_key; e++) gmask = fmax(gmask, fabs(nb_tensor_get(gk, (b * 5 + j) * 4 + e)));
        }
    CHECK(gv && gmask == 0.0 && glive > 0, "masked keys get zero gradient (%g; live %g)", gmask, glive);
    /* a query whose every key is masked gives NaN, as in PyTorch (documented) */
    nb_tensor *none_mask = nb_zeros(NB_F64, NB_SHAPE(2, 1, 5));
    nb_tensor *yn = nb_attention(q, k, v, none_mask, 0);
    CHECK(yn && isnan(nb_tensor_get(yn, 0)), "fully masked query gives NaN");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *frees[] = {q, k, v, mask, q4, k4, v4, mask4};
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) nb_tensor_free(frees[i]);
}

typedef struct mha_ctx {
    nb_mha *m;
    nb_tensor *pad;
    int causal;
} mha_ctx;

static nb_tensor *f_mha(void *u, nb_tensor *const *in)
{
    mha_ctx *c = u;
    return nb_mha_forward(c->m, in[0], in[1], in[2], c->pad, c->causal);
}

static void test_mha(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 19);
    nb_params *p = nb_params_new();
    nb_mha m;
    CHECK(nb_mha_init(&m, p, "att", 4, 2, &F64, &rng) == NB_OK, "mha init: %s", nb_error_message());
    CHECK(nb_params_count(p) == 8, "mha has 8 parameters (%d)", nb_params_count(p));
    for (int i = 0; i < nb_params_count(p); i++) randomize(nb_params_tensor(p, i), &rng, -0.7, 0.7);
    nb_tensor *q = LEAF(&rng, -1, 1, 2, 3, 4), *k = LEAF(&rng, -1, 1, 2, 4, 4), *v = LEAF(&rng, -1, 1, 2, 4, 4);
    nb_tensor *pad = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 4), (const double[]){1, 1, 1, 0, 1, 1, 0, 0});
    nb_tensor *in[16] = {q, k, v};
    int n = 3;
    add_params(p, in, &n);
    mha_ctx plain = {&m, NULL, 0}, kp = {&m, pad, 0}, causal = {&m, NULL, 1}, both = {&m, pad, 1};
    GRADCHECK("mha", f_mha, &plain, n, in);
    GRADCHECK("mha key padding", f_mha, &kp, n, in);
    GRADCHECK("mha causal", f_mha, &causal, n, in);
    GRADCHECK("mha key padding + causal", f_mha, &both, n, in);

    /* padded keys change nothing: perturbing k and v there leaves the output as it was */
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y0 = owned(nb_mha_forward(&m, q, k, v, pad, 1));
    for (int e = 0; e < 4; e++) {
        D(k)[(0 * 4 + 3) * 4 + e] += 0.5; /* batch 0, key 3 */
        D(v)[(1 * 4 + 2) * 4 + e] -= 0.5; /* batch 1, key 2 */
    }
    nb_tensor *y1 = nb_mha_forward(&m, q, k, v, pad, 1);
    CHECK(y0 && y1 && max_diff(y0, y1) < 1e-15, "padded keys do not affect the output (%g)", max_diff(y0, y1));
    nb_tensor *y2 = nb_mha_forward(&m, q, k, v, NULL, 0);
    CHECK(max_diff(y1, y2) > 1e-6, "without the mask they do (%g)", max_diff(y1, y2));
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(y0);
    nb_tensor_free(q);
    nb_tensor_free(k);
    nb_tensor_free(v);
    nb_tensor_free(pad);
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* Losses                                                                                          */
/* ---------------------------------------------------------------------------------------------- */

typedef struct loss_ctx {
    nb_reduction red;
    nb_tensor *labels;
    nb_ce_opts ce;
    int which; /* 0 mse, 1 bce, 2 cross-entropy, 3 nll */
} loss_ctx;

static nb_tensor *f_loss(void *u, nb_tensor *const *in)
{
    loss_ctx *c = u;
    switch (c->which) {
    case 0: return nb_mse_loss(in[0], in[1], c->red);
    case 1: return nb_bce_with_logits(in[0], in[1], c->red);
    case 2: return nb_cross_entropy(in[0], c->labels, &c->ce);
    default: return nb_nll_loss(in[0], c->labels, &c->ce);
    }
}

/* elementwise losses l[i] reduced as nabla does */
static double reduce_ref(const double *l, int n, nb_reduction red)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += l[i];
    return red == NB_REDUCE_MEAN ? s / n : s;
}

static const char *const RED_NAME[] = {"mean", "sum", "none"};

static void check_loss_value(nb_tensor *got, const double *per, int n, nb_reduction red, const char *what)
{
    if (red == NB_REDUCE_NONE) {
        double worst = got && nb_tensor_numel(got) == n ? 0 : INFINITY;
        for (int i = 0; got && i < n && worst < INFINITY; i++)
            worst = fmax(worst, fabs(nb_tensor_get(got, i) - per[i]) / fmax(1, fabs(per[i])));
        CHECK(worst < 1e-13, "%s (none): values off by %g", what, worst);
    } else {
        double want = reduce_ref(per, n, red);
        CHECK(got && nb_tensor_numel(got) == 1, "%s: a scalar", what);
        if (got) CHECK_CLOSE(nb_tensor_item(got), want, 1e-13, 1e-15);
    }
}

static void test_mse_bce(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 20);
    nb_tensor *pred = LEAF(&rng, -2, 2, 3, 4), *target = LEAF(&rng, -2, 2, 3, 4);
    nb_tensor *logits = LEAF(&rng, -4, 4, 3, 4), *prob = LEAF(&rng, 0, 1, 3, 4);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    for (int red = 0; red < 3; red++) {
        char what[64];
        loss_ctx c = {.red = (nb_reduction)red, .which = 0};
        nb_tensor *in[2] = {pred, target};
        snprintf(what, sizeof what, "mse %s", RED_NAME[red]);
        GRADCHECK(what, f_loss, &c, 2, in);
        double per[12];
        for (int i = 0; i < 12; i++) per[i] = pow(D(pred)[i] - D(target)[i], 2);
        check_loss_value(nb_mse_loss(pred, target, (nb_reduction)red), per, 12, (nb_reduction)red, what);

        c.which = 1;
        in[0] = logits;
        in[1] = prob;
        snprintf(what, sizeof what, "bce with logits %s", RED_NAME[red]);
        GRADCHECK(what, f_loss, &c, 2, in);
        for (int i = 0; i < 12; i++) {
            double x = D(logits)[i], t = D(prob)[i];
            per[i] = -(t * log(sigm(x)) + (1 - t) * log(1 - sigm(x)));
        }
        check_loss_value(nb_bce_with_logits(logits, prob, (nb_reduction)red), per, 12, (nb_reduction)red, what);
    }

    /* stability: |logits| = 1e4 gives exact, finite losses and gradients sigmoid(x) - t */
    nb_tensor *big = nb_tensor_from_data(NB_F64, NB_SHAPE(6), (const double[]){1e4, -1e4, 1e4, -1e4, 1e4, 0});
    nb_tensor *tb = nb_tensor_from_data(NB_F64, NB_SHAPE(6), (const double[]){1, 0, 0, 1, 0.25, 0.5});
    nb_tensor_set_requires_grad(big, 1);
    nb_tensor *lb = nb_bce_with_logits(big, tb, NB_REDUCE_NONE);
    const double want_l[6] = {0, 0, 1e4, 1e4, 7500, log(2.0)}, want_g[6] = {0, 0, 1, -1, 0.75, 0};
    double wl = lb ? 0 : INFINITY, wg = 0;
    for (int i = 0; lb && i < 6; i++) wl = fmax(wl, fabs(nb_tensor_get(lb, i) - want_l[i]));
    CHECK(all_finite(lb) && wl <= 1e-12, "bce with |logits| 1e4: losses finite and exact (off by %g)", wl);
    CHECK(nb_backward(nb_sum_all(lb), NULL, 0) == NB_OK, "bce backward: %s", nb_error_message());
    nb_tensor *gb = nb_tensor_grad(big);
    for (int i = 0; gb && i < 6; i++) wg = fmax(wg, fabs(nb_tensor_get(gb, i) - want_g[i]));
    CHECK(gb && all_finite(gb) && wg <= 1e-12, "bce with |logits| 1e4: gradients sigmoid(x) - t (off by %g)", wg);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *frees[] = {pred, target, logits, prob, big, tb};
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) nb_tensor_free(frees[i]);
}

/* Cross-entropy of logits [n, C] by the definition: per-sample losses and the mean's divisor. */
static void ce_ref(const double *x, const int64_t *y, int n, int C, const nb_ce_opts *o, int logits_are_logp,
                   double *per, double *count)
{
    *count = 0;
    for (int i = 0; i < n; i++) {
        if (o->use_ignore_index && y[i] == o->ignore_index) {
            per[i] = 0;
            continue;
        }
        double mx = -INFINITY, z = 0, sum_logp = 0;
        for (int c = 0; c < C; c++) mx = fmax(mx, x[i * C + c]);
        for (int c = 0; c < C; c++) z += exp(x[i * C + c] - mx);
        double lse = logits_are_logp ? 0 : mx + log(z);
        for (int c = 0; c < C; c++) sum_logp += x[i * C + c] - lse;
        double s = o->label_smoothing;
        per[i] = -(1 - s) * (x[i * C + y[i]] - lse) - s / C * sum_logp;
        *count += 1;
    }
}

static void test_cross_entropy(void)
{
    enum { N = 4, C = 5 };
    nb_rng rng;
    nb_rng_seed(&rng, 21);
    nb_tensor *logits = LEAF(&rng, -3, 3, N, C);
    nb_tensor *logp = LEAF(&rng, -4, -0.1, N, C);
    nb_tensor *labels = nb_tensor_from_data(NB_I64, NB_SHAPE(N), (const int64_t[]){1, 0, 4, 2});
    nb_tensor *labels_ign = nb_tensor_from_data(NB_I64, NB_SHAPE(N), (const int64_t[]){1, -100, 4, 2});
    struct {
        const char *name;
        nb_tensor *labels;
        int use_ignore;
        int64_t ignore;
        double smooth;
    } cfg[] = {
        {"plain", labels, 0, 0, 0.0},
        {"ignore_index -100", labels_ign, 1, -100, 0.0},
        {"ignore_index 2 (a class)", labels, 1, 2, 0.0},
        {"label_smoothing 0.1", labels, 0, 0, 0.1},
        {"label_smoothing 0.1 + ignore_index", labels_ign, 1, -100, 0.1},
    };
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++)
        for (int red = 0; red < 3; red++) {
            char what[96];
            loss_ctx c = {.labels = cfg[k].labels, .which = 2};
            c.ce = (nb_ce_opts){.reduction = (nb_reduction)red, .ignore_index = cfg[k].ignore,
                                .use_ignore_index = cfg[k].use_ignore, .label_smoothing = cfg[k].smooth};
            nb_tensor *in[1] = {logits};
            snprintf(what, sizeof what, "cross-entropy %s, %s", cfg[k].name, RED_NAME[red]);
            GRADCHECK(what, f_loss, &c, 1, in);
            double per[N], count;
            ce_ref(D(logits), nb_tensor_cdata(cfg[k].labels), N, C, &c.ce, 0, per, &count);
            nb_tensor *got = nb_cross_entropy(logits, cfg[k].labels, &c.ce);
            if (red == NB_REDUCE_MEAN) {
                /* the mean over the labels that count */
                for (int i = 0; i < N; i++) per[i] *= N / count;
            }
            check_loss_value(got, per, N, (nb_reduction)red, what);

            if (cfg[k].smooth == 0.0) { /* nll of log-probabilities: the same without the log-softmax */
                c.which = 3;
                in[0] = logp;
                snprintf(what, sizeof what, "nll %s, %s", cfg[k].name, RED_NAME[red]);
                GRADCHECK(what, f_loss, &c, 1, in);
                ce_ref(D(logp), nb_tensor_cdata(cfg[k].labels), N, C, &c.ce, 1, per, &count);
                if (red == NB_REDUCE_MEAN)
                    for (int i = 0; i < N; i++) per[i] *= N / count;
                check_loss_value(nb_nll_loss(logp, cfg[k].labels, &c.ce), per, N, (nb_reduction)red, what);
            }
        }

    /* stability: logits of magnitude 1e4 */
    nb_tensor *big = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 3), (const double[]){1e4, 0, -1e4, -1e4, 1e4, 0});
    nb_tensor *yb = nb_tensor_from_data(NB_I64, NB_SHAPE(2), (const int64_t[]){0, 2});
    nb_tensor_set_requires_grad(big, 1);
    /* plain: losses 0 and 1e4, mean 5000; gradient (softmax - onehot) / 2 */
    nb_tensor *l = nb_cross_entropy(big, yb, NULL);
    CHECK(l && isfinite(nb_tensor_item(l)), "cross-entropy with logits 1e4 is finite");
    if (l) CHECK_CLOSE(nb_tensor_item(l), 5000.0, 1e-14, 0);
    CHECK(nb_backward(l, NULL, 0) == NB_OK, "backward: %s", nb_error_message());
    const double g_plain[6] = {0, 0, 0, 0, 0.5, -0.5};
    nb_tensor *g = nb_tensor_grad(big);
    double wg = g ? 0 : INFINITY;
    for (int i = 0; g && i < 6; i++) wg = fmax(wg, fabs(nb_tensor_get(g, i) - g_plain[i]));
    CHECK(all_finite(g) && wg <= 1e-15, "cross-entropy with logits 1e4: gradient exact (off by %g)", wg);
    /* label smoothing 0.1 (C = 3): row 0 -(0.1/3)(0 - 1e4 - 2e4) = 1000; row 1 0.9e4 + 1000; mean 5500;
     * gradient (softmax - (0.9 onehot + 0.1/3)) / 2 */
    nb_tensor_zero_grad(big);
    nb_ce_opts so = {.label_smoothing = 0.1};
    l = nb_cross_entropy(big, yb, &so);
    CHECK(l && isfinite(nb_tensor_item(l)), "smoothed cross-entropy with logits 1e4 is finite");
    if (l) CHECK_CLOSE(nb_tensor_item(l), 5500.0, 1e-13, 0);
    CHECK(nb_backward(l, NULL, 0) == NB_OK, "backward: %s", nb_error_message());
    const double u = 0.1 / 3;
    const double g_smooth[6] = {(1 - 0.9 - u) / 2, -u / 2, -u / 2, -u / 2, (1 - u) / 2, (-0.9 - u) / 2};
    g = nb_tensor_grad(big);
    wg = g ? 0 : INFINITY;
    for (int i = 0; g && i < 6; i++) wg = fmax(wg, fabs(nb_tensor_get(g, i) - g_smooth[i]));
    CHECK(all_finite(g) && wg <= 1e-15, "smoothed cross-entropy with logits 1e4: gradient exact (off by %g)", wg);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *frees[] = {logits, logp, labels, labels_ign, big, yb};
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) nb_tensor_free(frees[i]);
}

typedef struct l2_ctx {
    const nb_params *p;
    double coeff;
} l2_ctx;

static nb_tensor *f_l2(void *u, nb_tensor *const *in)
{
    (void)in;
    l2_ctx *c = u;
    return nb_l2_penalty(c->p, c->coeff, NB_F64);
}

static void test_l2(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 22);
    nb_params *p = nb_params_new();
    nb_linear l;
    nb_layer_norm ln;
    nb_linear_init(&l, p, "lin", 3, 2, &F64, &rng);
    nb_layer_norm_init(&ln, p, "ln", 2, 1e-5, &F64);
    randomize(ln.weight, &rng, 0.5, 1.5);
    /* a 2-D buffer is not trained: not penalised */
    nb_params_add_buffer(p, "stats", nb_tensor_full(NB_F64, NB_SHAPE(2, 2), 10.0));
    l2_ctx c = {p, 0.3};
    nb_tensor *in[3] = {l.weight, l.bias, ln.weight};
    GRADCHECK("l2 penalty", f_l2, &c, 3, in);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double want = 0;
    for (int i = 0; i < 6; i++) want += pow(nb_tensor_get(l.weight, i), 2);
    want *= 0.3;
    nb_tensor *pen = nb_l2_penalty(p, 0.3, NB_F64);
    CHECK(pen && nb_tensor_numel(pen) == 1 && nb_tensor_dtype(pen) == NB_F64, "l2 penalty: an f64 scalar");
    if (pen) CHECK_CLOSE(nb_tensor_item(pen), want, 1e-14, 0);
    CHECK(nb_backward(pen, NULL, 0) == NB_OK, "l2 backward: %s", nb_error_message());
    nb_tensor *gw = nb_tensor_grad(l.weight);
    double wg = gw ? 0 : INFINITY;
    for (int i = 0; gw && i < 6; i++) wg = fmax(wg, fabs(nb_tensor_get(gw, i) - 0.6 * nb_tensor_get(l.weight, i)));
    CHECK(wg < 1e-15, "l2 gradient 2 coeff W (off by %g)", wg);
    CHECK(nb_tensor_grad(l.bias) == NULL || max_abs(nb_tensor_grad(l.bias)) == 0, "biases are not penalised");
    /* f32 parameters, penalty in f64 */
    nb_params *p32 = nb_params_new();
    nb_linear l32;
    nb_linear_init(&l32, p32, "lin", 3, 2, NULL, &rng);
    double want32 = 0;
    for (int i = 0; i < 6; i++) want32 += pow(nb_tensor_get(l32.weight, i), 2);
    nb_tensor *pen32 = nb_l2_penalty(p32, 1.0, NB_F64);
    CHECK(pen32 && nb_tensor_dtype(pen32) == NB_F64, "f32 parameters give an f64 penalty");
    if (pen32) CHECK_CLOSE(nb_tensor_item(pen32), want32, 1e-15, 0);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_params_free(p32);
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* Second order beyond the MLP and the LSTM step: masking (where), softmax, softplus, normalisation */
/* ---------------------------------------------------------------------------------------------- */

static void test_second_order(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 27);
    nb_params *p = nb_params_new();
    /* a small LSTM over 3 steps with lengths {3, 2} and an initial state */
    nb_rnn r;
    nb_rnn_opts o = {.layer = F64};
    nb_rnn_init(&r, p, "rnn", NB_LSTM, 2, 2, 1, &o, &rng);
    nb_tensor *x = LEAF(&rng, -1, 1, 3, 2, 2), *h0 = LEAF(&rng, -0.5, 0.5, 1, 2, 2), *c0 = LEAF(&rng, -0.5, 0.5, 1, 2, 2);
    nb_tensor *in[16] = {x, h0, c0};
    int n = 3;
    add_params(p, in, &n);
    const int64_t lengths[2] = {3, 2};
    rnn_ctx rc = {&r, lengths};
    GRADGRADCHECK("lstm sequence with lengths", f_rnn, &rc, n, in);

    /* attention with a padding mask and causal */
    nb_tensor *q = LEAF(&rng, -1, 1, 2, 2, 3), *k = LEAF(&rng, -1, 1, 2, 3, 3), *v = LEAF(&rng, -1, 1, 2, 3, 2);
    nb_tensor *mask = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 1, 3), (const double[]){1, 1, 0, 1, 1, 1});
    att_ctx ac = {mask, 1};
    nb_tensor *ain[3] = {q, k, v};
    GRADGRADCHECK("attention causal + mask", f_att, &ac, 3, ain);

    /* MHA with key padding */
    nb_params *pm = nb_params_new();
    nb_mha m;
    nb_mha_init(&m, pm, "att", 2, 2, &F64, &rng);
    for (int i = 0; i < nb_params_count(pm); i++) randomize(nb_params_tensor(pm, i), &rng, -0.7, 0.7);
    nb_tensor *mq = LEAF(&rng, -1, 1, 1, 2, 2), *mk = LEAF(&rng, -1, 1, 1, 3, 2);
    nb_tensor *pad = nb_tensor_from_data(NB_F64, NB_SHAPE(1, 3), (const double[]){1, 1, 0});
    mha_ctx mc = {&m, pad, 0};
    nb_tensor *min[16] = {mq, mk, mk};
    int mn = 3;
    add_params(pm, min, &mn);
    GRADGRADCHECK("mha key padding", f_mha, &mc, mn, min);

    /* losses: cross-entropy with smoothing and an ignored label, bce */
    nb_tensor *logits = LEAF(&rng, -2, 2, 3, 4), *t = LEAF(&rng, 0, 1, 3, 4);
    nb_tensor *labels = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){2, -100, 0});
    loss_ctx ce = {.labels = labels, .which = 2,
                   .ce = {.reduction = NB_REDUCE_MEAN, .ignore_index = -100, .use_ignore_index = 1, .label_smoothing = 0.1}};
    nb_tensor *lin[2] = {logits, t};
    GRADGRADCHECK("cross-entropy smoothing + ignore", f_loss, &ce, 1, lin);
    loss_ctx bce = {.red = NB_REDUCE_MEAN, .which = 1};
    GRADGRADCHECK("bce with logits", f_loss, &bce, 2, lin);

    /* layer norm */
    nb_layer_norm ln;
    nb_layer_norm_init(&ln, p, "ln", 4, 1e-5, &F64);
    randomize(ln.weight, &rng, 0.5, 1.5);
    randomize(ln.bias, &rng, -0.5, 0.5);
    nb_tensor *lnx = LEAF(&rng, -2, 2, 2, 4);
    nb_tensor *lnin[3] = {lnx, ln.weight, ln.bias};
    GRADGRADCHECK("layer norm", f_ln, &ln, 3, lnin);

    nb_tensor *frees[] = {x, h0, c0, q, k, v, mask, mq, mk, pad, logits, t, labels, lnx};
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) nb_tensor_free(frees[i]);
    nb_params_free(pm);
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* float32: the layers' f32 branches (length masks, causal masks, label weights) agree with f64     */
/* ---------------------------------------------------------------------------------------------- */

/* Round every parameter of p64 to float32 and copy it into the same-named parameter of p32. */
static void share_params(nb_params *p64, nb_params *p32)
{
    for (int i = 0; i < nb_params_count(p64); i++) {
        nb_tensor *a = nb_params_tensor(p64, i), *b = nb_params_find(p32, nb_params_name(p64, i));
        CHECK(b && nb_tensor_numel(a) == nb_tensor_numel(b), "f32 twin of %s", nb_params_name(p64, i));
        for (int64_t j = 0; b && j < nb_tensor_numel(a); j++) {
            float v = (float)nb_tensor_get(a, j);
            nb_tensor_set(a, j, v);
            nb_tensor_set(b, j, v);
        }
    }
}

/* An f64 leaf ~ U(lo, hi) rounded to float32, and its f32 twin (both require grad). */
static void twin_leaves(nb_rng *rng, double lo, double hi, int ndim, const int64_t *shape, nb_tensor **t64,
                        nb_tensor **t32)
{
    *t64 = nb_tensor_uniform(NB_F64, ndim, shape, lo, hi, rng);
    *t32 = nb_tensor_zeros(NB_F32, ndim, shape);
    for (int64_t j = 0; j < nb_tensor_numel(*t64); j++) {
        float v = (float)nb_tensor_get(*t64, j);
        nb_tensor_set(*t64, j, v);
        nb_tensor_set(*t32, j, v);
    }
    nb_tensor_set_requires_grad(*t64, 1);
    nb_tensor_set_requires_grad(*t32, 1);
}

/* |a32 - a64| <= 1e-5 (1 + |a64|) elementwise */
static void check_f32(const nb_tensor *a32, const nb_tensor *a64, const char *what)
{
    double worst = a32 && a64 && nb_tensor_numel(a32) == nb_tensor_numel(a64) && nb_tensor_dtype(a32) == NB_F32 ? 0 : INFINITY;
    for (int64_t j = 0; worst < INFINITY && j < nb_tensor_numel(a64); j++) {
        double d = fabs(nb_tensor_get(a32, j) - nb_tensor_get(a64, j)) / (1 + fabs(nb_tensor_get(a64, j)));
        worst = d > worst || d != d ? d : worst;
    }
    CHECK(worst <= 1e-5, "%s: f32 differs from f64 by %g", what, worst);
}

static void test_f32(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 28);
    nb_params *p64 = nb_params_new(), *p32 = nb_params_new();
    nb_layer_opts o32 = {.dtype = NB_F32};
    nb_rnn r64, r32;
    nb_rnn_opts ro64 = {.layer = F64}, ro32 = {.layer = o32};
    nb_mha m64, m32;
    nb_rnn_init(&r64, p64, "rnn", NB_LSTM, 3, 4, 2, &ro64, &rng);
    nb_rnn_init(&r32, p32, "rnn", NB_LSTM, 3, 4, 2, &ro32, &rng);
    nb_mha_init(&m64, p64, "att", 4, 2, &F64, &rng);
    nb_mha_init(&m32, p32, "att", 4, 2, &o32, &rng);
    for (int i = 0; i < nb_params_count(p64); i++) randomize(nb_params_tensor(p64, i), &rng, -0.7, 0.7);
    share_params(p64, p32);
    nb_tensor *x64, *x32, *q64, *q32, *l64, *l32;
    twin_leaves(&rng, -1, 1, NB_SHAPE(5, 2, 3), &x64, &x32);
    twin_leaves(&rng, -1, 1, NB_SHAPE(2, 4, 4), &q64, &q32);
    twin_leaves(&rng, -3, 3, NB_SHAPE(4, 5), &l64, &l32);
    const int64_t lengths[2] = {2, 5};
    nb_tensor *pad64 = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 4), (const double[]){1, 1, 0, 0, 1, 1, 1, 0});
    nb_tensor *pad32 = nb_tensor_from_data(NB_F32, NB_SHAPE(2, 4), (const float[]){1, 1, 0, 0, 1, 1, 1, 0});
    nb_tensor *labels = nb_tensor_from_data(NB_I64, NB_SHAPE(4), (const int64_t[]){3, -100, 0, 4});
    nb_ce_opts ce = {.reduction = NB_REDUCE_MEAN, .ignore_index = -100, .use_ignore_index = 1, .label_smoothing = 0.1};

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y[2], *att[2], *loss[2];
    nb_rnn_state fin[2];
    nb_rnn_forward(&r64, x64, NULL, lengths, &y[0], &fin[0]);
    nb_rnn_forward(&r32, x32, NULL, lengths, &y[1], &fin[1]);
    att[0] = nb_mha_forward(&m64, q64, q64, q64, pad64, 1);
    att[1] = nb_mha_forward(&m32, q32, q32, q32, pad32, 1);
    loss[0] = nb_cross_entropy(l64, labels, &ce);
    loss[1] = nb_cross_entropy(l32, labels, &ce);
    check_f32(y[1], y[0], "lstm with lengths: out");
    check_f32(fin[1].h, fin[0].h, "lstm with lengths: h_n");
    check_f32(fin[1].c, fin[0].c, "lstm with lengths: c_n");
    check_f32(att[1], att[0], "mha causal + key padding");
    check_f32(loss[1], loss[0], "cross-entropy smoothing + ignore");
    for (int d = 0; d < 2; d++) {
        nb_tensor *parts[5] = {y[d], fin[d].h, fin[d].c, att[d], loss[d]};
        nb_tensor *total = nb_sum_all(nb_square(cat_flat(5, parts)));
        CHECK(nb_backward(total, NULL, 0) == NB_OK, "f%s backward: %s", d ? "32" : "64", nb_error_message());
    }
    check_f32(nb_tensor_grad(x32), nb_tensor_grad(x64), "grad x");
    check_f32(nb_tensor_grad(q32), nb_tensor_grad(q64), "grad q");
    check_f32(nb_tensor_grad(l32), nb_tensor_grad(l64), "grad logits");
    for (int i = 0; i < nb_params_count(p64); i++)
        check_f32(nb_tensor_grad(nb_params_find(p32, nb_params_name(p64, i))), nb_tensor_grad(nb_params_tensor(p64, i)),
                  nb_params_name(p64, i));
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *frees[] = {x64, x32, q64, q32, l64, l32, pad64, pad32, labels};
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) nb_tensor_free(frees[i]);
    nb_params_free(p64);
    nb_params_free(p32);
}

/* ---------------------------------------------------------------------------------------------- */
/* Parameter collections and initialisers                                                          */
/* ---------------------------------------------------------------------------------------------- */

static void test_params(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 23);
    nb_params *p = nb_params_new();
    CHECK(p && nb_params_count(p) == 0 && nb_params_training(p) == 1, "a new collection is empty and training");
    nb_rnn enc;
    nb_rnn_opts o = {.layer = F64};
    CHECK(nb_rnn_init(&enc, p, "enc", NB_LSTM, 3, 4, 2, &o, &rng) == NB_OK, "%s", nb_error_message());
    static const char *const names[] = {"enc.weight_ih_l0", "enc.weight_hh_l0", "enc.bias_ih_l0", "enc.bias_hh_l0",
                                        "enc.weight_ih_l1", "enc.weight_hh_l1", "enc.bias_ih_l1", "enc.bias_hh_l1"};
    CHECK(nb_params_count(p) == 8, "LSTM, 2 layers: 8 parameters (%d)", nb_params_count(p));
    for (int i = 0; i < 8; i++) {
        const char *nm = nb_params_name(p, i);
        CHECK(nm && !strcmp(nm, names[i]), "parameter %d is %s, expected %s", i, nm ? nm : "(null)", names[i]);
        CHECK(nb_params_trainable(p, i) && nb_tensor_requires_grad(nb_params_tensor(p, i)), "%s is trained", names[i]);
    }
    CHECK(nb_params_find(p, "enc.weight_ih_l0") == enc.cell[0].w_ih && nb_params_find(p, "enc.bias_hh_l1") == enc.cell[1].b_hh &&
              nb_params_find(p, "enc.weight_hh_l1") == enc.cell[1].w_hh,
          "nb_params_find returns the layer's tensors");
    CHECK(nb_tensor_dim(enc.cell[1].w_ih, 1) == 4 && nb_tensor_dim(enc.cell[0].w_ih, 1) == 3,
          "layer 1 takes the hidden size as input");
    nb_error_clear();
    CHECK(nb_params_find(p, "enc.weight_ih_l2") == NULL && nb_params_find(p, NULL) == NULL && nb_error_code() == NB_OK,
          "find of an unknown name: NULL, no error");
    CHECK(nb_params_tensor(p, 8) == NULL && nb_params_name(p, -1) == NULL, "out-of-range index gives NULL");
    /* 4H (3 + 4 + 2) per layer 0, 4H (4 + 4 + 2) for layer 1 */
    CHECK(nb_params_numel(p) == 16 * 9 + 16 * 10, "numel %lld", (long long)nb_params_numel(p));

    /* duplicates are refused, and the collection is unchanged */
    nb_rnn dup;
    CHECK_ERROR(nb_rnn_init(&dup, p, "enc", NB_LSTM, 3, 4, 2, &o, &rng) != NB_OK, NB_ERR_ARG,
                "a parameter named enc.weight_ih_l0 exists already");
    CHECK_ERROR(nb_params_add(p, "enc.bias_ih_l1", nb_tensor_zeros(NB_F64, NB_SHAPE(3))) == NULL, NB_ERR_ARG,
                "exists already");
    CHECK(nb_params_count(p) == 8, "duplicates not added (%d)", nb_params_count(p));

    /* other layers' names */
    nb_mlp m;
    nb_mha a;
    nb_embedding e;
    nb_layer_norm ln;
    nb_mlp_init(&m, p, "mlp", 3, (const int64_t[]){3, 5, 2}, NB_ACT_RELU, 0.0, &F64, &rng);
    nb_mha_init(&a, p, "att", 4, 2, &F64, &rng);
    nb_embedding_init(&e, p, "emb", 7, 4, &F64, &rng);
    nb_layer_norm_init(&ln, p, "ln", 4, 1e-5, &F64);
    static const char *const more[] = {"mlp.0.weight", "mlp.0.bias", "mlp.1.weight", "mlp.1.bias",
                                       "att.q_proj.weight", "att.q_proj.bias", "att.k_proj.weight", "att.k_proj.bias",
                                       "att.v_proj.weight", "att.v_proj.bias", "att.out_proj.weight", "att.out_proj.bias",
                                       "emb.weight", "ln.weight", "ln.bias"};
    CHECK(nb_params_count(p) == 8 + 15, "count %d", nb_params_count(p));
    for (int i = 0; i < 15; i++) {
        const char *nm = nb_params_name(p, 8 + i);
        CHECK(nm && !strcmp(nm, more[i]), "parameter %d is %s, expected %s", 8 + i, nm ? nm : "(null)", more[i]);
    }
    CHECK(nb_params_find(p, "att.k_proj.weight") == a.k_proj.weight && nb_params_find(p, "mlp.1.bias") == m.layer[1].bias,
          "find in MHA and MLP");
    int64_t numel = nb_params_numel(p);
    /* a buffer: owned, not trained, not counted */
    nb_tensor *buf = nb_params_add_buffer(p, "running", nb_tensor_zeros(NB_F64, NB_SHAPE(5)));
    CHECK(buf && nb_params_count(p) == 24 && !nb_params_trainable(p, 23) && !nb_tensor_requires_grad(buf) &&
              nb_params_numel(p) == numel,
          "buffer: registered, not trained, not in numel");
    CHECK(numel == 304 + (3 * 5 + 5 + 5 * 2 + 2) + 4 * (16 + 4) + 28 + 8, "numel %lld", (long long)numel);

    /* zero_grad: after a backward every reached gradient is nonzero, afterwards all are zero */
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 2, 3), -1, 1, &rng);
    nb_rnn_state fin;
    nb_tensor *y;
    CHECK(nb_rnn_forward(&enc, x, NULL, NULL, &y, &fin) == NB_OK, "%s", nb_error_message());
    CHECK(nb_backward(nb_add(nb_sum_all(nb_square(y)), nb_sum_all(fin.c)), NULL, 0) == NB_OK, "%s", nb_error_message());
    int reached = 1;
    for (int i = 0; i < 8; i++) reached &= nb_tensor_grad(nb_params_tensor(p, i)) != NULL && max_abs(nb_tensor_grad(nb_params_tensor(p, i))) > 0;
    CHECK(reached, "every LSTM parameter has a nonzero gradient");
    nb_params_zero_grad(p);
    int zero = 1;
    for (int i = 0; i < 8; i++) {
        nb_tensor *g = nb_tensor_grad(nb_params_tensor(p, i));
        zero &= g == NULL || max_abs(g) == 0.0;
    }
    CHECK(zero, "nb_params_zero_grad zeroes every gradient");
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);

    nb_params_set_training(p, 0);
    CHECK(nb_params_training(p) == 0, "eval mode");
    nb_params_set_training(p, 7);
    CHECK(nb_params_training(p) == 1, "training mode");
    CHECK(nb_params_training(NULL) == 0 && nb_params_count(NULL) == 0, "NULL collection");
    nb_params_free(NULL);
    CHECK_NO_ERROR();
    nb_params_free(p);
}

/* |values| <= bound, and the largest above frac * bound (so a too small bound is caught as well) */
static void check_bound(const nb_tensor *t, double bound, double frac, const char *what)
{
    double m = max_abs(t);
    CHECK(t && m <= bound && m > frac * bound, "%s: max |w| %g, bound %g", what, m, bound);
}

static double sample_std(const nb_tensor *t)
{
    int64_t n = nb_tensor_numel(t);
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++) mean += nb_tensor_get(t, i) / (double)n;
    for (int64_t i = 0; i < n; i++) var += pow(nb_tensor_get(t, i) - mean, 2) / (double)(n - 1);
    return sqrt(var);
}

static void test_init(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 24);
    /* the initialiser formulas on a [40, 30] tensor: fan_in 30, fan_out 40 */
    nb_tensor *t = nb_tensor_zeros(NB_F64, NB_SHAPE(40, 30));
    struct {
        nb_init init;
        double bound_or_std;
        int normal;
        const char *name;
    } cases[] = {
        {{.kind = NB_INIT_UNIFORM, .a = 0.3}, 0.3, 0, "uniform 0.3"},
        {{.kind = NB_INIT_XAVIER_UNIFORM, .a = 0}, sqrt(6.0 / 70), 0, "xavier uniform"},
        {{.kind = NB_INIT_XAVIER_UNIFORM, .a = 2}, 2 * sqrt(6.0 / 70), 0, "xavier uniform gain 2"},
        {{.kind = NB_INIT_KAIMING_UNIFORM, .a = 0}, sqrt(6.0 / 30), 0, "kaiming uniform"},
        {{.kind = NB_INIT_KAIMING_UNIFORM, .a = sqrt(5.0)}, 1.0 / sqrt(30.0), 0, "kaiming uniform a = sqrt 5"},
        {{.kind = NB_INIT_NORMAL, .a = 0.5}, 0.5, 1, "normal 0.5"},
        {{.kind = NB_INIT_XAVIER_NORMAL, .a = 0}, sqrt(2.0 / 70), 1, "xavier normal"},
        {{.kind = NB_INIT_KAIMING_NORMAL, .a = 0}, sqrt(2.0 / 30), 1, "kaiming normal"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(nb_init_tensor(t, cases[i].init, 30, 40, &rng) == NB_OK, "%s: %s", cases[i].name, nb_error_message());
        if (cases[i].normal) {
            double s = sample_std(t);
            CHECK(fabs(s / cases[i].bound_or_std - 1) < 0.1, "%s: sample std %g, expected %g", cases[i].name, s,
                  cases[i].bound_or_std);
        } else
            check_bound(t, cases[i].bound_or_std, 0.97, cases[i].name);
    }
    CHECK(nb_init_tensor(t, (nb_init){.kind = NB_INIT_CONSTANT, .a = 2.5}, 1, 1, NULL) == NB_OK && max_abs(t) == 2.5 &&
              nb_tensor_get(t, 0) == 2.5 && nb_tensor_get(t, 1199) == 2.5,
          "constant init (no rng needed)");
    CHECK(nb_init_tensor(t, (nb_init){.kind = NB_INIT_ZEROS, .a = 0}, 1, 1, NULL) == NB_OK && max_abs(t) == 0.0, "zeros init");
    CHECK_ERROR(nb_init_tensor(t, (nb_init){.kind = NB_INIT_DEFAULT, .a = 0}, 3, 3, &rng) != NB_OK, NB_ERR_ARG, "not a concrete initialiser");
    CHECK_ERROR(nb_init_tensor(t, (nb_init){.kind = NB_INIT_UNIFORM, .a = 1}, 3, 3, NULL) != NB_OK, NB_ERR_ARG, "rng is NULL");
    nb_tensor_free(t);

    nb_params *p = nb_params_new();
    /* layer defaults (PyTorch's) */
    nb_linear l;
    nb_linear_init(&l, p, "lin", 30, 40, &F64, &rng);
    check_bound(l.weight, 1 / sqrt(30.0), 0.97, "Linear default weight U(+-1/sqrt(in))");
    check_bound(l.bias, 1 / sqrt(30.0), 0.5, "Linear default bias");
    /* fans reach the initialiser: Kaiming uses in (10), not out (50) */
    nb_layer_opts ko = F64;
    ko.weight_init = (nb_init){.kind = NB_INIT_KAIMING_UNIFORM, .a = 0};
    nb_linear lk;
    nb_linear_init(&lk, p, "lk", 10, 50, &ko, &rng);
    check_bound(lk.weight, sqrt(6.0 / 10), 0.97, "Linear Kaiming weight uses fan_in = in");
    ko.weight_init = (nb_init){.kind = NB_INIT_XAVIER_UNIFORM, .a = 0};
    nb_linear lx;
    nb_linear_init(&lx, p, "lx", 10, 50, &ko, &rng);
    check_bound(lx.weight, sqrt(6.0 / 60), 0.97, "Linear Xavier weight");

    nb_rnn_cell c;
    const int64_t H = 20;
    nb_rnn_cell_init(&c, p, "lstm", NB_LSTM, 10, H, &F64, &rng);
    int fb = 1;
    for (int64_t j = 0; j < H; j++) fb &= nb_tensor_get(c.b_ih, H + j) == 1.0 && nb_tensor_get(c.b_hh, H + j) == 0.0;
    CHECK(fb, "LSTM forget gate: bias_ih rows H..2H are 1 (bias_hh there 0)");
    double other = 0;
    for (int64_t j = 0; j < 4 * H; j++)
        if (j < H || j >= 2 * H) other = fmax(other, fabs(nb_tensor_get(c.b_ih, j)));
    CHECK(other > 0 && other <= 1 / sqrt((double)H), "other LSTM bias rows U(+-1/sqrt(H)) (max %g)", other);
    check_bound(c.w_ih, 1 / sqrt((double)H), 0.97, "LSTM weight_ih U(+-1/sqrt(H))");
    check_bound(c.w_hh, 1 / sqrt((double)H), 0.97, "LSTM weight_hh U(+-1/sqrt(H))");
    nb_layer_opts fo = F64;
    fo.forget_bias = (nb_init){.kind = NB_INIT_CONSTANT, .a = 2.0};
    nb_rnn_cell c2;
    nb_rnn_cell_init(&c2, p, "lstm2", NB_LSTM, 10, H, &fo, &rng);
    fb = 1;
    for (int64_t j = 0; j < H; j++) fb &= nb_tensor_get(c2.b_ih, H + j) == 2.0;
    CHECK(fb, "LSTM forget bias from opts (2)");
    nb_rnn r;
    nb_rnn_opts ro = {.layer = F64};
    nb_rnn_init(&r, p, "seq", NB_LSTM, 10, H, 2, &ro, &rng);
    fb = 1;
    for (int l2 = 0; l2 < 2; l2++)
        for (int64_t j = 0; j < H; j++) fb &= nb_tensor_get(r.cell[l2].b_ih, H + j) == 1.0;
    CHECK(fb, "nb_rnn_init: forget bias 1 in every layer");
    nb_rnn_cell gc;
    nb_rnn_cell_init(&gc, p, "gru", NB_GRU, 10, H, &F64, &rng);
    CHECK(max_abs(gc.b_ih) <= 1 / sqrt((double)H), "GRU has no forget bias");

    nb_mha m;
    nb_mha_init(&m, p, "att", 16, 4, &F64, &rng);
    check_bound(m.q_proj.weight, sqrt(6.0 / (16 + 48)), 0.9, "MHA q_proj Xavier over [3E, E]");
    check_bound(m.v_proj.weight, sqrt(6.0 / (16 + 48)), 0.9, "MHA v_proj Xavier over [3E, E]");
    check_bound(m.out_proj.weight, 1 / sqrt(16.0), 0.9, "MHA out_proj as a Linear");
    CHECK(max_abs(m.q_proj.bias) == 0 && max_abs(m.k_proj.bias) == 0 && max_abs(m.v_proj.bias) == 0 &&
              max_abs(m.out_proj.bias) == 0,
          "MHA biases zero");
    nb_embedding e;
    nb_embedding_init(&e, p, "emb", 100, 8, &F64, &rng);
    CHECK(fabs(sample_std(e.weight) - 1) < 0.1, "embedding N(0, 1): std %g", sample_std(e.weight));

    /* same seed, same values; another seed, other values */
    nb_params *pa = nb_params_new(), *pb = nb_params_new(), *pc = nb_params_new();
    nb_rng ra, rb, rc;
    nb_rng_seed(&ra, 5);
    nb_rng_seed(&rb, 5);
    nb_rng_seed(&rc, 6);
    nb_rnn xa, xb, xc;
    nb_rnn_init(&xa, pa, "r", NB_GRU, 3, 4, 2, &ro, &ra);
    nb_rnn_init(&xb, pb, "r", NB_GRU, 3, 4, 2, &ro, &rb);
    nb_rnn_init(&xc, pc, "r", NB_GRU, 3, 4, 2, &ro, &rc);
    int same = nb_params_count(pa) == 8, differ = 1;
    for (int i = 0; same && i < 8; i++) {
        same &= max_diff(nb_params_tensor(pa, i), nb_params_tensor(pb, i)) == 0.0;
        differ &= max_diff(nb_params_tensor(pa, i), nb_params_tensor(pc, i)) > 0.0;
    }
    CHECK(same, "same seed gives the same parameters");
    CHECK(differ, "another seed gives other parameters");
    nb_params_free(pa);
    nb_params_free(pb);
    nb_params_free(pc);
    CHECK_NO_ERROR();
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* Bad input: errors with messages, never a crash                                                  */
/* ---------------------------------------------------------------------------------------------- */

static void test_errors(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 25);
    nb_params *p = nb_params_new();
    nb_linear l;
    nb_rnn r, rl;
    nb_rnn_cell cell_lstm, cell_tanh;
    nb_embedding e;
    nb_mha m;
    nb_layer_norm ln;
    nb_rnn_opts ro = {.layer = F64};
    nb_linear_init(&l, p, "lin", 4, 3, &F64, &rng);
    nb_rnn_init(&r, p, "gru", NB_GRU, 3, 4, 2, &ro, &rng);
    nb_rnn_init(&rl, p, "lstm", NB_LSTM, 3, 4, 2, &ro, &rng);
    nb_rnn_cell_init(&cell_lstm, p, "cl", NB_LSTM, 3, 4, &F64, &rng);
    nb_rnn_cell_init(&cell_tanh, p, "ct", NB_RNN_TANH, 3, 4, &F64, &rng);
    nb_embedding_init(&e, p, "emb", 5, 2, &F64, &rng);
    nb_mha_init(&m, p, "att", 4, 2, &F64, &rng);
    nb_layer_norm_init(&ln, p, "ln", 4, 1e-5, &F64);
    CHECK_NO_ERROR();

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x5 = nb_ones(NB_F64, NB_SHAPE(2, 5));
    nb_tensor *x32 = nb_ones(NB_F32, NB_SHAPE(2, 4));
    nb_tensor *seq = nb_ones(NB_F64, NB_SHAPE(5, 2, 3)), *seq7 = nb_ones(NB_F64, NB_SHAPE(5, 2, 7));
    nb_tensor *seq32 = nb_ones(NB_F32, NB_SHAPE(5, 2, 3));
    nb_tensor *h_bad = nb_zeros(NB_F64, NB_SHAPE(2, 3, 4)), *h_ok = nb_zeros(NB_F64, NB_SHAPE(2, 2, 4));
    nb_tensor *h32 = nb_zeros(NB_F32, NB_SHAPE(2, 2, 4));
    nb_tensor *logits = nb_zeros(NB_F64, NB_SHAPE(4, 5)), *logits3 = nb_zeros(NB_F64, NB_SHAPE(2, 2, 5));
    nb_tensor *lab_hi = nb_constant(NB_I64, NB_SHAPE(4), (const int64_t[]){0, 1, 5, 2});
    nb_tensor *lab_neg = nb_constant(NB_I64, NB_SHAPE(4), (const int64_t[]){0, -1, 3, 2});
    nb_tensor *lab_short = nb_constant(NB_I64, NB_SHAPE(3), (const int64_t[]){0, 1, 2});
    nb_tensor *lab_f64 = nb_constant(NB_F64, NB_SHAPE(4), (const double[]){0, 1, 2, 3});
    nb_tensor *lab_ok = nb_constant(NB_I64, NB_SHAPE(4), (const int64_t[]){0, 1, 2, 3});
    nb_tensor *a34 = nb_zeros(NB_F64, NB_SHAPE(3, 4)), *a43 = nb_zeros(NB_F64, NB_SHAPE(4, 3));
    nb_tensor *a34_32 = nb_zeros(NB_F32, NB_SHAPE(3, 4));
    nb_tensor *idx_hi = nb_constant(NB_I64, NB_SHAPE(3), (const int64_t[]){0, 5, 1});
    nb_tensor *idx_neg = nb_constant(NB_I64, NB_SHAPE(2), (const int64_t[]){-1, 1});
    nb_tensor *idx_f64 = nb_constant(NB_F64, NB_SHAPE(2), (const double[]){0, 1});
    nb_tensor *qkv = nb_zeros(NB_F64, NB_SHAPE(2, 3, 4)), *q5 = nb_zeros(NB_F64, NB_SHAPE(2, 3, 5));
    nb_tensor *pad_bad = nb_ones(NB_F64, NB_SHAPE(2, 4));
    nb_tensor *bx = nb_zeros(NB_F64, NB_SHAPE(2, 3)), *bh = nb_zeros(NB_F64, NB_SHAPE(2, 4)), *bh3 = nb_zeros(NB_F64, NB_SHAPE(3, 4));
    nb_tensor *att_k = nb_zeros(NB_F64, NB_SHAPE(2, 5, 3));
    CHECK_NO_ERROR();
    nb_rnn_state st_bad = {h_bad, NULL}, st_lstm_noc = {h_ok, NULL}, st32 = {h32, NULL};
    nb_rnn_state st_c_bad = {h_ok, h_bad};
    nb_tensor *y = NULL, *h2 = NULL, *c2 = NULL;

    /* shapes and feature sizes */
    CHECK_ERROR(nb_linear_forward(&l, x5) == NULL, NB_ERR_SHAPE, "expected a last dimension of 4");
    CHECK_ERROR(nb_rnn_forward(&r, seq7, NULL, NULL, &y, NULL) != NB_OK, NB_ERR_SHAPE, "input [5,2,7]: expected [T, B, 3]");
    CHECK(y == NULL, "failed forward leaves out NULL");
    CHECK_ERROR(nb_rnn_forward(&r, x5, NULL, NULL, &y, NULL) != NB_OK, NB_ERR_SHAPE, "expected [T, B, 3]");
    CHECK_ERROR(nb_rnn_forward(&r, seq, &st_bad, NULL, &y, NULL) != NB_OK, NB_ERR_SHAPE,
                "initial h [2,3,4]: expected [2, 2, 4]");
    CHECK_ERROR(nb_rnn_forward(&rl, seq, &st_lstm_noc, NULL, &y, NULL) != NB_OK, NB_ERR_ARG, "initial c is NULL");
    CHECK_ERROR(nb_rnn_forward(&rl, seq, &st_c_bad, NULL, &y, NULL) != NB_OK, NB_ERR_SHAPE, "initial c [2,3,4]");
    CHECK_ERROR(nb_rnn_forward(&r, seq, NULL, (const int64_t[]){6, 3}, &y, NULL) != NB_OK, NB_ERR_ARG,
                "length 6 of sequence 0 is outside 1..5");
    CHECK_ERROR(nb_rnn_forward(&r, seq, NULL, (const int64_t[]){5, 0}, &y, NULL) != NB_OK, NB_ERR_ARG,
                "length 0 of sequence 1 is outside 1..5");
    CHECK_ERROR(nb_rnn_forward(&r, NULL, NULL, NULL, &y, NULL) != NB_OK, NB_ERR_ARG, "input is NULL");
    CHECK_ERROR(nb_layer_norm_forward(&ln, x5) == NULL, NB_ERR_SHAPE, "expected a last dimension of 4");
    /* h [3,4] is the bad state (cell [2,4] is fine): the message must name the bad one */
    CHECK_ERROR(nb_lstm_cell(&cell_lstm, bx, bh3, bh, &h2, &c2) != NB_OK, NB_ERR_SHAPE, "state [3,4] for input [2,3]");
    CHECK(h2 == NULL && c2 == NULL, "failed lstm cell leaves outputs NULL");
    CHECK_ERROR(nb_lstm_cell(&cell_lstm, bx, bh, bh, NULL, &c2) != NB_OK, NB_ERR_ARG, "h_out and c_out are required");
    /* the wrong kind of cell (no input is NULL here) */
    CHECK_ERROR(nb_elman_cell(&cell_lstm, bx, bh) == NULL, NB_ERR_ARG, "nb_elman_cell: the cell is not an Elman cell");
    CHECK_ERROR(nb_gru_cell(&cell_lstm, bx, bh) == NULL, NB_ERR_ARG, "nb_gru_cell: the cell is not a GRU cell");
    CHECK_ERROR(nb_gru_cell(&cell_tanh, bx, bh) == NULL, NB_ERR_ARG, "nb_gru_cell: the cell is not a GRU cell");
    CHECK_ERROR(nb_lstm_cell(&cell_tanh, bx, bh, bh, &h2, &c2) != NB_OK, NB_ERR_ARG, "not an LSTM cell");
    /* messages name the function called */
    CHECK_ERROR(nb_elman_cell(&cell_tanh, a34, bh) == NULL, NB_ERR_SHAPE, "nb_elman_cell: input [3,4]: expected [B, 3]");

    /* losses */
    CHECK_ERROR(nb_cross_entropy(logits, lab_hi, NULL) == NULL, NB_ERR_ARG,
                "label 5 at position 2 is out of range for 5 classes");
    CHECK_ERROR(nb_cross_entropy(logits, lab_neg, NULL) == NULL, NB_ERR_ARG, "label -1 at position 1 is out of range");
    nb_ce_opts ign = {.use_ignore_index = 1, .ignore_index = -100};
    CHECK_ERROR(nb_cross_entropy(logits, lab_neg, &ign) == NULL, NB_ERR_ARG, "label -1");
    CHECK_ERROR(nb_nll_loss(logits, lab_hi, NULL) == NULL, NB_ERR_ARG, "out of range for 5 classes");
    CHECK_ERROR(nb_cross_entropy(logits, lab_f64, NULL) == NULL, NB_ERR_DTYPE, "labels must be i64, got f64");
    CHECK_ERROR(nb_cross_entropy(logits, lab_short, NULL) == NULL, NB_ERR_SHAPE,
                "scores [4,5] and labels [3]: expected [N, C, d1, ...] and [N, d1, ...]");
    CHECK_ERROR(nb_cross_entropy(logits3, lab_ok, NULL) == NULL, NB_ERR_SHAPE, "scores [2,2,5] and labels [4]");
    nb_ce_opts bad_smooth = {.label_smoothing = 1.5};
    CHECK_ERROR(nb_cross_entropy(logits, lab_ok, &bad_smooth) == NULL, NB_ERR_ARG, "label smoothing 1.5");
    nb_ce_opts bad_red = {.reduction = (nb_reduction)7};
    CHECK_ERROR(nb_cross_entropy(logits, lab_ok, &bad_red) == NULL, NB_ERR_ARG, "reduction 7");
    CHECK_ERROR(nb_mse_loss(a34, a43, NB_REDUCE_MEAN) == NULL, NB_ERR_SHAPE, "prediction [3,4] and target [4,3] differ in shape");
    CHECK_ERROR(nb_mse_loss(a34, a34_32, NB_REDUCE_MEAN) == NULL, NB_ERR_DTYPE, "dtypes differ");
    CHECK_ERROR(nb_mse_loss(a34, a34, (nb_reduction)9) == NULL, NB_ERR_ARG, "unknown reduction 9");
    CHECK_ERROR(nb_bce_with_logits(a34, a43, NB_REDUCE_SUM) == NULL, NB_ERR_SHAPE, "differ in shape");

    /* embedding */
    CHECK_ERROR(nb_embedding_forward(&e, idx_hi) == NULL, NB_ERR_ARG, "index 5 out of range");
    CHECK_ERROR(nb_embedding_forward(&e, idx_neg) == NULL, NB_ERR_ARG, "index -1 out of range");
    CHECK_ERROR(nb_embedding_forward(&e, idx_f64) == NULL, NB_ERR_DTYPE, "indices must be i64");

    /* attention */
    nb_mha m_bad;
    CHECK_ERROR(nb_mha_init(&m_bad, p, "bad", 6, 4, &F64, &rng) != NB_OK, NB_ERR_ARG,
                "embed 6 must be a positive multiple of heads 4");
    CHECK(nb_params_find(p, "bad.q_proj.weight") == NULL, "a refused MHA registers nothing");
    CHECK_ERROR(nb_mha_forward(&m, qkv, qkv, qkv, pad_bad, 0) == NULL, NB_ERR_SHAPE, "key padding mask [2,4]: expected [2, 3]");
    CHECK_ERROR(nb_mha_forward(&m, q5, qkv, qkv, NULL, 0) == NULL, NB_ERR_SHAPE, "q [2,3,5]");
    CHECK_ERROR(nb_attention(qkv, att_k, att_k, NULL, 0) == NULL, NB_ERR_SHAPE, "expected [..., Tq, d]");

    /* dtypes: f32 input, f64 parameters */
    CHECK_ERROR(nb_linear_forward(&l, x32) == NULL, NB_ERR_DTYPE, "dtypes differ");
    CHECK_ERROR(nb_rnn_forward(&r, seq32, NULL, NULL, &y, NULL) != NB_OK, NB_ERR_DTYPE, "input is f32, parameters are f64");
    CHECK_ERROR(nb_rnn_forward(&r, seq, &st32, NULL, &y, NULL) != NB_OK, NB_ERR_DTYPE, "dtypes differ");

    /* constructors */
    nb_mlp mlp;
    CHECK_ERROR(nb_mlp_init(&mlp, p, "m", 3, (const int64_t[]){2, 3, 1}, NB_ACT_TANH, 1.0, &F64, &rng) != NB_OK,
                NB_ERR_ARG, "dropout in [0, 1)");
    CHECK_ERROR(nb_mlp_init(&mlp, p, "m", 1, (const int64_t[]){2}, NB_ACT_TANH, 0.0, &F64, &rng) != NB_OK, NB_ERR_ARG,
                "got 1 sizes");
    nb_rnn rbad;
    CHECK_ERROR(nb_rnn_init(&rbad, p, "r0", NB_GRU, 3, 4, 0, &ro, &rng) != NB_OK, NB_ERR_ARG, "need 1..8 layers");
    CHECK_ERROR(nb_rnn_init(&rbad, p, "r9", NB_GRU, 3, 4, 9, &ro, &rng) != NB_OK, NB_ERR_ARG, "got 9 layers");
    nb_rnn_cell cbad;
    CHECK_ERROR(nb_rnn_cell_init(&cbad, p, "cb", NB_LSTM, 0, 4, &F64, &rng) != NB_OK, NB_ERR_ARG, "input 0");
    nb_linear lbad;
    CHECK_ERROR(nb_linear_init(&lbad, p, "lb", 0, 3, &F64, &rng) != NB_OK, NB_ERR_ARG, "in 0");
    CHECK_ERROR(nb_linear_init(&lbad, p, "lb", 3, 3, &F64, NULL) != NB_OK, NB_ERR_ARG, "rng is NULL");
    nb_embedding ebad;
    CHECK_ERROR(nb_embedding_init(&ebad, p, "eb", 0, 3, &F64, &rng) != NB_OK, NB_ERR_ARG, "num 0");

    /* after all that, the layers still work */
    CHECK(nb_linear_forward(&l, nb_ones(NB_F64, NB_SHAPE(2, 4))) != NULL, "linear after errors: %s", nb_error_message());
    CHECK(nb_rnn_forward(&rl, seq, NULL, (const int64_t[]){5, 1}, &y, NULL) == NB_OK, "rnn after errors: %s",
          nb_error_message());
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_params_free(p);
}

int main(void)
{
    test_linear();
    test_mlp();
    test_embedding();
    test_layer_norm();
    test_cells();
    test_rnn();
    test_state_keep();
    test_attention();
    test_mha();
    test_mse_bce();
    test_cross_entropy();
    test_l2();
    test_second_order();
    test_f32();
    test_params();
    test_init();
    test_errors();
    printf("nn: %d gradient checks\n", gradchecks_run);
    return nbt_report("nn");
}
