/* PyTorch reference tests for nabla's nn layer: every case of a fixture file written by
 * tests/gen_nn_fixtures.py (the file format and the nabla <- torch name mapping are documented there)
 * is run through nabla in float64:
 *
 *   test_nn_fixtures FILE...   (nn_f64.txt, and cnn_nn_f64.txt from gen_cnn_fixtures.py, whose buffer:
 *                               and after: roles give buffers' values before and after the run)
 *
 * For each case: a parameter collection with the layer built by its public constructor (f64), every
 * parameter overwritten with the fixture's values (nb_tensor_copy_from, so nabla's initialisers do
 * not matter; every nabla parameter must have a fixture value and every fixture parameter must be
 * used), the inputs as leaves (requiring grad where the fixture has their gradient), the forward
 * pass, then one nb_backward of L = sum over outputs o of sum(o * seed_o), the scalar the generator
 * differentiated. Outputs and the gradients of every parameter and input are compared with PyTorch.
 * The test fails on a fixture layer without a runner and on a runner without a fixture case. */
#include "fixture.h"
#include "nbtest.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------------------------------------- */
/* Tolerance                                                                                       */
/* ---------------------------------------------------------------------------------------------- */

/* An element passes when |got - want| <= RTOL |want| + ATOL_SCALE * S, S the largest magnitude of
 * any output or gradient of the case. The relative bound (1e-10) is what is being tested: the layers
 * chain tens of BLAS products and reductions, each summing in its own order, so results agree to
 * 1e-13..1e-15 relative, not bit for bit. The floor, 1e-13 of the case's scale (a few hundred ulps
 * of its largest value), only matters for values that are zero in exact arithmetic and come out as
 * rounding noise on both sides: the gradient of a key-projection bias in attention (softmax is
 * invariant to shifting all of a query's scores, so it is exactly 0 and torch reports ~1e-16), and
 * sums of terms of mixed sign that cancel. It is far below every value that carries information. */
#define RTOL 1e-10
#define ATOL_SCALE 1e-13

/* ---------------------------------------------------------------------------------------------- */
/* The fixture format: roles <kind>:<name> (the rest is fixture.h's)                               */
/* ---------------------------------------------------------------------------------------------- */

/* buffer: a non-trained tensor's value before the run (running statistics); after: its value after */
typedef enum nn_kind { FX_PARAM, FX_IN, FX_OUT, FX_SEED, FX_GRAD, FX_BUFFER, FX_AFTER, FX_KIND_COUNT } nn_kind;
static const char *const nn_kind_names[] = {"param", "in", "out", "seed", "grad", "buffer", "after"};
_Static_assert(sizeof nn_kind_names / sizeof nn_kind_names[0] == FX_KIND_COUNT, "one name per kind");

static fx_tensor *nn_find(fx_case *c, nn_kind kind, const char *name)
{
    for (int i = 0; i < c->nt; i++)
        if (c->t[i].kind == (int)kind && !strcmp(c->t[i].name, name)) return &c->t[i];
    return NULL;
}

static bool nn_role(fx_parser *p, fx_tensor *t)
{
    const char *colon = strchr(t->role, ':');
    if (!colon) return fx_fail(p, "tensor: role \"%s\" is not <kind>:<name>", t->role);
    int len = (int)(colon - t->role), kind = -1;
    for (int k = 0; k < FX_KIND_COUNT; k++)
        if ((int)strlen(nn_kind_names[k]) == len && !strncmp(t->role, nn_kind_names[k], (size_t)len)) kind = k;
    if (kind < 0)
        return fx_fail(p, "tensor: unknown kind \"%.*s\" (param, in, out, seed, grad, buffer, after)", len, t->role);
    t->kind = kind;
    return fx_name(p, colon + 1, "tensor name", t->name);
}

/* The checks that need the whole case, at its `end`. */
static bool nn_finish(fx_parser *p, fx_case *c)
{
    int nout = 0;
    for (int i = 0; i < c->nt; i++) {
        fx_tensor *t = &c->t[i];
        fx_tensor *o;
        switch ((nn_kind)t->kind) {
        case FX_PARAM:
            if (t->dtype != NB_F64) return fx_fail(p, "case %s: param %s is not f64", c->name, t->name);
            if (!nn_find(c, FX_GRAD, t->name))
                return fx_fail(p, "case %s: param %s has no grad (every parameter is differentiated)", c->name,
                               t->name);
            break;
        case FX_IN:
        case FX_BUFFER: break;
        case FX_AFTER:
            o = nn_find(c, FX_BUFFER, t->name);
            if (!o || o->dtype != t->dtype || !fx_same_shape(t, o))
                return fx_fail(p, "case %s: after %s (line %d) without a buffer of its dtype and shape", c->name,
                               t->name, t->line);
            break;
        case FX_OUT:
            nout++;
            if (t->dtype != NB_F64) return fx_fail(p, "case %s: out %s is not f64", c->name, t->name);
            if (!nn_find(c, FX_SEED, t->name)) return fx_fail(p, "case %s: out %s has no seed", c->name, t->name);
            break;
        case FX_SEED:
            o = nn_find(c, FX_OUT, t->name);
            if (!o) return fx_fail(p, "case %s: seed %s without an out of that name", c->name, t->name);
            if (t->dtype != NB_F64 || !fx_same_shape(t, o))
                return fx_fail(p, "case %s: seed %s (line %d) differs from its out in dtype or shape", c->name,
                               t->name, t->line);
            break;
        case FX_GRAD:
            o = nn_find(c, FX_PARAM, t->name);
            if (!o) o = nn_find(c, FX_IN, t->name);
            if (!o) return fx_fail(p, "case %s: grad %s of no param or in", c->name, t->name);
            if (o->dtype != NB_F64) return fx_fail(p, "case %s: grad %s of an i64 input", c->name, t->name);
            if (t->dtype != NB_F64 || !fx_same_shape(t, o))
                return fx_fail(p, "case %s: grad %s (line %d) differs from its tensor in dtype or shape", c->name,
                               t->name, t->line);
            break;
        default: break;
        }
    }
    if (!nout) return fx_fail(p, "case %s: no out tensor", c->name);
    return true;
}

static const fx_format NN_FORMAT = {
    .header = "nabla-nn-fixtures",
    .version = 1,
    .op_word = "layer",
    .dtypes = 1u << NB_F64 | 1u << NB_I64,
    .role = nn_role,
    .finish = nn_finish,
};

/* ---------------------------------------------------------------------------------------------- */
/* Running a case                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

#define MAX_OUTS 4

typedef struct nn_run {
    fx_case *c;
    nb_params *p;
    nb_rng rng;                       /* for the constructors (values are overwritten) */
    nb_tensor *in[FX_MAX_TENSORS];    /* leaves of the case's in: tensors (indexed like c->t) */
    int nout;
    const char *out_name[MAX_OUTS];
    nb_tensor *out[MAX_OUTS];
    char err[256];                    /* why a runner gave up before or outside nabla */
} nn_run;

static bool run_fail(nn_run *r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static bool run_fail(nn_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    return false;
}

/* One integer attribute; def when absent (INT64_MIN: required). */
static bool attr_int(nn_run *r, const char *key, int64_t def, int64_t *out)
{
    fx_attr *a = fx_attr_find(r->c, key);
    if (!a) {
        *out = def;
        return def != INT64_MIN || run_fail(r, "missing attribute %s", key);
    }
    if (a->n != 1 || a->v[0] != floor(a->v[0]) || fabs(a->v[0]) > 1e15)
        return run_fail(r, "attribute %s: expected one integer", key);
    *out = (int64_t)a->v[0];
    return true;
}

static bool attr_f64(nn_run *r, const char *key, double def, double *out)
{
    fx_attr *a = fx_attr_find(r->c, key);
    if (!a) {
        *out = def;
        return true;
    }
    if (a->n != 1) return run_fail(r, "attribute %s: expected one number", key);
    *out = a->v[0];
    return true;
}

/* The leaf of input `name`; NULL (with r->err) if the fixture has none. */
static nb_tensor *in_leaf(nn_run *r, const char *name, bool required)
{
    for (int i = 0; i < r->c->nt; i++)
        if (r->c->t[i].kind == FX_IN && !strcmp(r->c->t[i].name, name)) {
            r->c->t[i].used = true;
            return r->in[i];
        }
    if (required) run_fail(r, "no input %s", name);
    return NULL;
}

/* Overwrite every parameter (and buffer) of r->p with the fixture's value of the same name. */
static bool load_params(nn_run *r)
{
    char s1[96];
    for (int i = 0; i < nb_params_count(r->p); i++) {
        const char *name = nb_params_name(r->p, i);
        nb_tensor *t = nb_params_tensor(r->p, i);
        int trained = nb_params_trainable(r->p, i);
        fx_tensor *ft = nn_find(r->c, trained ? FX_PARAM : FX_BUFFER, name);
        if (!ft) return run_fail(r, "nabla %s %s has no fixture value", trained ? "parameter" : "buffer", name);
        if (nb_tensor_dtype(t) != ft->dtype || nb_tensor_ndim(t) != ft->ndim ||
            memcmp(nb_tensor_shape(t), ft->shape, (size_t)ft->ndim * sizeof(int64_t)))
            return run_fail(r, "nabla parameter %s is %s %s; the fixture's differs (line %d)", name,
                            nb_dtype_name(nb_tensor_dtype(t)), nb_shape_str(t, s1, sizeof s1), ft->line);
        if (ft->dtype == NB_I64) {
            for (int64_t e = 0; e < ft->numel; e++) nb_tensor_set(t, e, ft->v[e]);
        } else if (nb_tensor_copy_from(t, ft->v) != NB_OK) {
            return run_fail(r, "copy into %s: %s", name, nb_error_message());
        }
        ft->used = true;
    }
    for (int i = 0; i < r->c->nt; i++)
        if ((r->c->t[i].kind == FX_PARAM || r->c->t[i].kind == FX_BUFFER) && !r->c->t[i].used)
            return run_fail(r, "fixture parameter %s (line %d) is not a parameter of the nabla layer", r->c->t[i].name,
                            r->c->t[i].line);
    return true;
}

static bool put_out(nn_run *r, const char *name, nb_tensor *t)
{
    if (!t) return false; /* nabla's error stands */
    if (r->nout == MAX_OUTS) return run_fail(r, "more than %d outputs", MAX_OUTS);
    r->out_name[r->nout] = name;
    r->out[r->nout++] = t;
    return true;
}

static const nb_layer_opts F64_OPTS = {.dtype = NB_F64};

/* ---- runners ---------------------------------------------------------------------------------- */

typedef bool (*nn_run_fn)(nn_run *r);

static bool run_rnn(nn_run *r, nb_rnn_kind kind)
{
    int64_t layers = 0, input = 0, hidden = 0, bf = 0, bidir = 0;
    if (!attr_int(r, "layers", INT64_MIN, &layers) || !attr_int(r, "input", INT64_MIN, &input) ||
        !attr_int(r, "hidden", INT64_MIN, &hidden) || !attr_int(r, "batch_first", 0, &bf) ||
        !attr_int(r, "bidirectional", 0, &bidir))
        return false;
    nb_rnn_opts o = {.layer = F64_OPTS, .batch_first = (int)bf, .bidirectional = (int)bidir};
    nb_rnn net;
    if (nb_rnn_init(&net, r->p, "rnn", kind, input, hidden, (int)layers, &o, &r->rng) != NB_OK) return false;
    if (!load_params(r)) return false;
    nb_tensor *x = in_leaf(r, "x", true), *h0 = in_leaf(r, "h0", true);
    nb_tensor *c0 = kind == NB_LSTM ? in_leaf(r, "c0", true) : NULL;
    if (!x || !h0 || (kind == NB_LSTM && !c0)) return false;
    int64_t lengths[FX_MAX_ATTR_VALS];
    fx_attr *la = fx_attr_find(r->c, "lengths");
    if (la) {
        if (la->n != nb_tensor_dim(x, bf ? 0 : 1)) return run_fail(r, "attribute lengths: %d values for the batch", la->n);
        for (int i = 0; i < la->n; i++) lengths[i] = (int64_t)la->v[i];
    }
    nb_rnn_state init = {h0, c0}, fin;
    nb_tensor *y;
    if (nb_rnn_forward(&net, x, &init, la ? lengths : NULL, &y, &fin) != NB_OK) return false;
    return put_out(r, "y", y) && put_out(r, "h_n", fin.h) && (kind != NB_LSTM || put_out(r, "c_n", fin.c));
}

static bool run_rnn_tanh(nn_run *r) { return run_rnn(r, NB_RNN_TANH); }
static bool run_lstm(nn_run *r) { return run_rnn(r, NB_LSTM); }
static bool run_gru(nn_run *r) { return run_rnn(r, NB_GRU); }

static bool run_mha(nn_run *r)
{
    int64_t embed = 0, heads = 0, causal = 0;
    if (!attr_int(r, "embed", INT64_MIN, &embed) || !attr_int(r, "heads", INT64_MIN, &heads) ||
        !attr_int(r, "causal", 0, &causal))
        return false;
    nb_mha m;
    if (nb_mha_init(&m, r->p, "mha", embed, heads, &F64_OPTS, &r->rng) != NB_OK) return false;
    if (!load_params(r)) return false;
    nb_tensor *q = in_leaf(r, "q", true), *k = in_leaf(r, "k", true), *v = in_leaf(r, "v", true);
    nb_tensor *kp = in_leaf(r, "key_padding", false);
    if (!q || !k || !v) return false;
    return put_out(r, "y", nb_mha_forward(&m, q, k, v, kp, (int)causal));
}

static bool run_layer_norm(nn_run *r)
{
    int64_t dim;
    double eps = 0;
    if (!attr_int(r, "dim", INT64_MIN, &dim) || !attr_f64(r, "eps", 1e-5, &eps)) return false;
    nb_layer_norm ln;
    if (nb_layer_norm_init(&ln, r->p, "ln", dim, eps, &F64_OPTS) != NB_OK) return false;
    if (!load_params(r)) return false;
    nb_tensor *x = in_leaf(r, "x", true);
    return x && put_out(r, "y", nb_layer_norm_forward(&ln, x));
}

static bool run_linear(nn_run *r)
{
    int64_t in = 0, out = 0, bias = 0;
    if (!attr_int(r, "in", INT64_MIN, &in) || !attr_int(r, "out", INT64_MIN, &out) || !attr_int(r, "bias", 1, &bias))
        return false;
    nb_layer_opts o = F64_OPTS;
    o.no_bias = !bias;
    nb_linear l;
    if (nb_linear_init(&l, r->p, "lin", in, out, &o, &r->rng) != NB_OK) return false;
    if (!load_params(r)) return false;
    nb_tensor *x = in_leaf(r, "x", true);
    return x && put_out(r, "y", nb_linear_forward(&l, x));
}

/* ---- convolutional networks (tests/gen_cnn_fixtures.py, cnn_nn_f64.txt) ---------------------- */

/* `steps` training forwards on x0, x1, ... (the last one's output is y), then y_eval in evaluation mode */
static bool run_batch_norm(nn_run *r)
{
    int64_t dims = 0, features = 0, steps = 0, affine = 1, track = 1;
    double eps = 0, momentum = 0;
    if (!attr_int(r, "dims", INT64_MIN, &dims) || !attr_int(r, "features", INT64_MIN, &features) ||
        !attr_int(r, "steps", INT64_MIN, &steps) || !attr_int(r, "affine", 1, &affine) ||
        !attr_int(r, "track", 1, &track) || !attr_f64(r, "eps", 1e-5, &eps) || !attr_f64(r, "momentum", 0.1, &momentum))
        return false;
    nb_norm_opts o = {.dtype = NB_F64, .eps = eps, .momentum = momentum, .no_affine = !affine, .no_running_stats = !track};
    nb_batch_norm bn;
    if ((dims == 2 ? nb_batch_norm2d_init : nb_batch_norm1d_init)(&bn, r->p, "bn", features, &o) != NB_OK) return false;
    if (!load_params(r)) return false;
    nb_tensor *y = NULL;
    for (int64_t k = 0; k < steps; k++) {
        char name[32];
        snprintf(name, sizeof name, "x%lld", (long long)k);
        nb_tensor *x = in_leaf(r, name, true);
        if (!x || !(y = nb_batch_norm_forward(&bn, x))) return false;
    }
    if (!put_out(r, "y", y)) return false;
    nb_params_set_training(r->p, 0);
    nb_tensor *xe = in_leaf(r, "x_eval", true);
    return xe && put_out(r, "y_eval", nb_batch_norm_forward(&bn, xe));
}

static bool run_group_norm(nn_run *r)
{
    int64_t groups = 0, channels = 0, affine = 1;
    double eps = 0;
    if (!attr_int(r, "groups", INT64_MIN, &groups) || !attr_int(r, "channels", INT64_MIN, &channels) ||
        !attr_int(r, "affine", 1, &affine) || !attr_f64(r, "eps", 1e-5, &eps))
        return false;
    nb_norm_opts o = {.dtype = NB_F64, .eps = eps, .no_affine = !affine};
    nb_group_norm gn;
    if (nb_group_norm_init(&gn, r->p, "gn", groups, channels, &o) != NB_OK || !load_params(r)) return false;
    nb_tensor *x = in_leaf(r, "x", true);
    return x && put_out(r, "y", nb_group_norm_forward(&gn, x));
}

/* dims values of an attribute */
static bool attr_dims(nn_run *r, const char *key, int64_t dims, int64_t *v)
{
    fx_attr *a = fx_attr_find(r->c, key);
    if (!a || a->n != dims) return run_fail(r, "attribute %s: expected %lld values", key, (long long)dims);
    for (int i = 0; i < a->n; i++) v[i] = (int64_t)a->v[i];
    return true;
}

static bool run_conv(nn_run *r)
{
    int64_t dims = 0, in = 0, out = 0, bias = 1, k[2];
    nb_conv_opts co = nb_conv_defaults();
    if (!attr_int(r, "dims", INT64_MIN, &dims) || !attr_int(r, "in", INT64_MIN, &in) ||
        !attr_int(r, "out", INT64_MIN, &out) || !attr_int(r, "bias", 1, &bias) ||
        !attr_int(r, "groups", 1, &co.groups) || !attr_dims(r, "kernel", dims, k) ||
        !attr_dims(r, "stride", dims, co.stride) || !attr_dims(r, "padding", dims, co.padding) ||
        !attr_dims(r, "dilation", dims, co.dilation))
        return false;
    nb_layer_opts o = F64_OPTS;
    o.no_bias = !bias;
    nb_conv conv;
    nb_status st = dims == 2 ? nb_conv2d_init(&conv, r->p, "conv", in, out, k[0], k[1], &co, &o, &r->rng)
                             : nb_conv1d_init(&conv, r->p, "conv", in, out, k[0], &co, &o, &r->rng);
    if (st != NB_OK || !load_params(r)) return false;
    nb_tensor *x = in_leaf(r, "x", true);
    return x && put_out(r, "y", nb_conv_forward(&conv, x));
}

static bool run_embedding(nn_run *r)
{
    int64_t num = 0, dim = 0, pad = INT64_MAX;
    if (!attr_int(r, "num", INT64_MIN, &num) || !attr_int(r, "dim", INT64_MIN, &dim) ||
        !attr_int(r, "padding_idx", INT64_MAX, &pad))
        return false;
    nb_layer_opts o = F64_OPTS;
    if (pad != INT64_MAX) {
        o.use_padding_idx = 1;
        o.padding_idx = pad;
    }
    nb_embedding e;
    if (nb_embedding_init(&e, r->p, "emb", num, dim, &o, &r->rng) != NB_OK) return false;
    if (!load_params(r)) return false;
    nb_tensor *idx = in_leaf(r, "idx", true);
    return idx && put_out(r, "y", nb_embedding_forward(&e, idx));
}

static bool reduction_attr(nn_run *r, nb_reduction *red)
{
    int64_t v;
    if (!attr_int(r, "reduction", INT64_MIN, &v)) return false;
    if (v < 0 || v >= NB_REDUCTION_COUNT) return run_fail(r, "reduction %lld unknown", (long long)v);
    *red = (nb_reduction)v;
    return true;
}

static bool run_mse(nn_run *r)
{
    nb_reduction red = NB_REDUCE_MEAN;
    if (!reduction_attr(r, &red)) return false;
    nb_tensor *pred = in_leaf(r, "pred", true), *target = in_leaf(r, "target", true);
    return pred && target && put_out(r, "loss", nb_mse_loss(pred, target, red));
}

static bool run_bce(nn_run *r)
{
    nb_reduction red = NB_REDUCE_MEAN;
    if (!reduction_attr(r, &red)) return false;
    nb_tensor *x = in_leaf(r, "logits", true), *t = in_leaf(r, "target", true);
    nb_bce_opts o = {.reduction = red, .pos_weight = in_leaf(r, "pos_weight", false), .weight = in_leaf(r, "weight", false)};
    if (!x || !t) return false;
    if (!o.pos_weight && !o.weight) return put_out(r, "loss", nb_bce_with_logits(x, t, red));
    return put_out(r, "loss", nb_bce_with_logits_ex(x, t, &o));
}

static bool run_l1(nn_run *r)
{
    nb_reduction red = NB_REDUCE_MEAN;
    if (!reduction_attr(r, &red)) return false;
    nb_tensor *pred = in_leaf(r, "pred", true), *target = in_leaf(r, "target", true);
    return pred && target && put_out(r, "loss", nb_l1_loss(pred, target, red));
}

static bool run_smooth_l1(nn_run *r)
{
    nb_reduction red = NB_REDUCE_MEAN;
    double beta = 0;
    if (!reduction_attr(r, &red) || !attr_f64(r, "beta", 1.0, &beta)) return false;
    nb_tensor *pred = in_leaf(r, "pred", true), *target = in_leaf(r, "target", true);
    return pred && target && put_out(r, "loss", nb_smooth_l1_loss(pred, target, beta, red));
}

static bool run_huber(nn_run *r)
{
    nb_reduction red = NB_REDUCE_MEAN;
    double delta = 0;
    if (!reduction_attr(r, &red) || !attr_f64(r, "delta", 1.0, &delta)) return false;
    nb_tensor *pred = in_leaf(r, "pred", true), *target = in_leaf(r, "target", true);
    return pred && target && put_out(r, "loss", nb_huber_loss(pred, target, delta, red));
}

static bool run_kl_div(nn_run *r)
{
    nb_reduction red = NB_REDUCE_MEAN;
    int64_t log_target = 0;
    if (!reduction_attr(r, &red) || !attr_int(r, "log_target", 0, &log_target)) return false;
    nb_tensor *x = in_leaf(r, "input", true), *t = in_leaf(r, "target", true);
    return x && t && put_out(r, "loss", nb_kl_div_loss(x, t, red, (int)log_target));
}

static bool ce_opts_attr(nn_run *r, nb_ce_opts *o)
{
    memset(o, 0, sizeof *o);
    int64_t ign = INT64_MAX;
    if (!reduction_attr(r, &o->reduction) || !attr_int(r, "ignore_index", INT64_MAX, &ign) ||
        !attr_f64(r, "label_smoothing", 0.0, &o->label_smoothing))
        return false;
    if (ign != INT64_MAX) {
        o->use_ignore_index = 1;
        o->ignore_index = ign;
    }
    o->weight = in_leaf(r, "weight", false); /* class weights, when the case has them */
    return true;
}

static bool run_cross_entropy(nn_run *r)
{
    nb_ce_opts o;
    if (!ce_opts_attr(r, &o)) return false;
    nb_tensor *x = in_leaf(r, "logits", true), *y = in_leaf(r, "labels", true);
    return x && y && put_out(r, "loss", nb_cross_entropy(x, y, &o));
}

static bool run_nll(nn_run *r)
{
    nb_ce_opts o;
    if (!ce_opts_attr(r, &o)) return false;
    nb_tensor *x = in_leaf(r, "log_probs", true), *y = in_leaf(r, "labels", true);
    return x && y && put_out(r, "loss", nb_nll_loss(x, y, &o));
}

typedef struct nn_layer {
    const char *name;
    nn_run_fn run;
} nn_layer;

static const nn_layer LAYERS[] = {
    {"rnn_tanh", run_rnn_tanh},
    {"lstm", run_lstm},
    {"gru", run_gru},
    {"mha", run_mha},
    {"layer_norm", run_layer_norm},
    {"linear", run_linear},
    {"embedding", run_embedding},
    {"mse", run_mse},
    {"bce", run_bce},
    {"cross_entropy", run_cross_entropy},
    {"nll", run_nll},
    /* convolutional networks (cnn_nn_f64.txt) */
    {"batch_norm", run_batch_norm},
    {"group_norm", run_group_norm},
    {"conv", run_conv},
    {"l1", run_l1},
    {"smooth_l1", run_smooth_l1},
    {"huber", run_huber},
    {"kl_div", run_kl_div},
};
#define N_LAYERS ((int)(sizeof(LAYERS) / sizeof(LAYERS[0])))

/* ---------------------------------------------------------------------------------------------- */
/* Comparing                                                                                       */
/* ---------------------------------------------------------------------------------------------- */

typedef struct layer_stats {
    int cases, checks, failures;
    fx_err out, grad;
} layer_stats;

static layer_stats stats[N_LAYERS];

/* A failure of the case that ctx names ("case NAME (LAYER, line N)"). */
#define FAIL_CASE(...)                                                                                 \
    do {                                                                                               \
        nbt_failures++;                                                                                \
        st->failures++;                                                                                \
        fprintf(stderr, "FAIL %s: ", ctx);                                                             \
        fprintf(stderr, __VA_ARGS__);                                                                  \
        fprintf(stderr, "\n");                                                                         \
    } while (0)

static void compare(layer_stats *st, const char *ctx, double atol, const char *what, const nb_tensor *t,
                    const fx_tensor *ref, fx_err *err)
{
    char b1[96];
    nbt_checks++;
    st->checks++;
    if (!t) {
        FAIL_CASE("%s: no tensor", what);
        return;
    }
    if (nb_tensor_dtype(t) != ref->dtype || nb_tensor_ndim(t) != ref->ndim ||
        memcmp(nb_tensor_shape(t), ref->shape, (size_t)ref->ndim * sizeof(int64_t))) {
        FAIL_CASE("%s: %s %s; the fixture's (line %d) differs", what, nb_dtype_name(nb_tensor_dtype(t)),
                  nb_shape_str(t, b1, sizeof b1), ref->line);
        return;
    }
    fx_tol tol = {RTOL, atol, atol / RTOL};
    if (fx_compare(err, ctx, what, t, ref->v, ref->numel, &tol)) {
        nbt_failures++;
        st->failures++;
    }
}

static void run_case(fx_case *c, const nn_layer *layer, layer_stats *st)
{
    nn_run r;
    memset(&r, 0, sizeof r);
    r.c = c;
    nb_rng_seed(&r.rng, 7);
    nb_tensor *seeds[MAX_OUTS] = {0};
    nb_tape *tape = nb_tape_new();
    char ctx[160];
    snprintf(ctx, sizeof ctx, "case %s (%s, line %d)", c->name, c->op, c->line);
    nb_error_clear();
    r.p = nb_params_new();
    if (!tape || !r.p || nb_tape_begin(tape) != NB_OK) {
        FAIL_CASE("cannot start: %s", nb_error_message());
        goto done;
    }
    for (int i = 0; i < c->nt; i++) {
        c->t[i].used = false;
        if (c->t[i].kind != FX_IN) continue;
        r.in[i] = fx_leaf(&c->t[i], c->t[i].dtype);
        if (!r.in[i] || (nn_find(c, FX_GRAD, c->t[i].name) && nb_tensor_set_requires_grad(r.in[i], 1) != NB_OK)) {
            FAIL_CASE("cannot make input %s: %s", c->t[i].name, nb_error_message());
            goto done;
        }
    }
    for (int i = 0; i < c->nattr; i++) c->attr[i].used = false;

    if (!layer->run(&r)) {
        nbt_checks++;
        FAIL_CASE("%s", r.err[0] ? r.err : nb_error_message());
        goto done;
    }
    for (int i = 0; i < c->nattr; i++)
        if (!c->attr[i].used) {
            nbt_checks++;
            FAIL_CASE("attribute %s is not read by the %s runner", c->attr[i].key, c->op);
            goto done;
        }
    for (int i = 0; i < c->nt; i++)
        if (c->t[i].kind == FX_IN && !c->t[i].used) {
            nbt_checks++;
            FAIL_CASE("input %s is not read by the %s runner", c->t[i].name, c->op);
            goto done;
        }

    /* the case's scale: the largest magnitude of any reference output or gradient */
    double scale = 0;
    for (int i = 0; i < c->nt; i++)
        if (c->t[i].kind == FX_OUT || c->t[i].kind == FX_GRAD)
            for (int64_t j = 0; j < c->t[i].numel; j++)
                if (isfinite(c->t[i].v[j])) scale = fmax(scale, fabs(c->t[i].v[j]));
    double atol = ATOL_SCALE * scale;

    /* outputs, and L = sum_o sum(o * seed_o) */
    nb_tensor *total = NULL;
    int nout_fx = 0;
    for (int i = 0; i < c->nt; i++) {
        if (c->t[i].kind != FX_OUT) continue;
        nout_fx++;
        int k = 0;
        while (k < r.nout && strcmp(r.out_name[k], c->t[i].name)) k++;
        if (k == r.nout) {
            nbt_checks++;
            FAIL_CASE("the runner made no output %s", c->t[i].name);
            goto done;
        }
        char what[80];
        snprintf(what, sizeof what, "out %s", c->t[i].name);
        compare(st, ctx, atol, what, r.out[k], &c->t[i], &st->out);
        const fx_tensor *seed = nn_find(c, FX_SEED, c->t[i].name);
        seeds[k] = fx_leaf(seed, seed->dtype);
        nb_tensor *term = nb_sum_all(nb_mul(r.out[k], seeds[k]));
        total = total ? nb_add(total, term) : term;
    }
    if (nout_fx != r.nout) {
        nbt_checks++;
        FAIL_CASE("the runner made %d outputs, the fixture has %d", r.nout, nout_fx);
        goto done;
    }
    if (!total || nb_backward(total, NULL, 0) != NB_OK) {
        nbt_checks++;
        FAIL_CASE("backward failed: %s", nb_error_message());
        goto done;
    }
    for (int i = 0; i < c->nt; i++) {
        if (c->t[i].kind != FX_GRAD) continue;
        const char *name = c->t[i].name;
        nb_tensor *leaf = nb_params_find(r.p, name);
        if (!leaf) leaf = in_leaf(&r, name, false);
        char what[80];
        snprintf(what, sizeof what, "grad %s", name);
        nb_tensor *g = leaf ? nb_tensor_grad(leaf) : NULL;
        if (!g) {
            nbt_checks++;
            FAIL_CASE("%s: no gradient reached %s", what, leaf ? "the tensor" : "(no such tensor)");
            continue;
        }
        compare(st, ctx, atol, what, g, &c->t[i], &st->grad);
    }
    /* the buffers' values after the run (a temporary leaf of their values: compare wants a tensor) */
    for (int i = 0; i < c->nt; i++) {
        if (c->t[i].kind != FX_AFTER) continue;
        nb_tensor *b = nb_params_find(r.p, c->t[i].name);
        char what[80];
        snprintf(what, sizeof what, "after %s", c->t[i].name);
        if (!b) {
            nbt_checks++;
            FAIL_CASE("%s: no such buffer", what);
            continue;
        }
        compare(st, ctx, atol, what, b, &c->t[i], &st->out);
    }
    nbt_checks++;
    if (nb_error_code() != NB_OK) FAIL_CASE("error left recorded: %s", nb_error_message());
done:
    nb_error_clear();
    if (tape) {
        if (nb_tape_current() == tape) nb_tape_end(tape);
        nb_tape_free(tape); /* before the leaves it recorded */
    }
    for (int k = 0; k < MAX_OUTS; k++) nb_tensor_free(seeds[k]);
    for (int i = 0; i < c->nt; i++) nb_tensor_free(r.in[i]);
    nb_params_free(r.p);
}

/* ---------------------------------------------------------------------------------------------- */
/* The parser rejects malformed files with a message (checked on built-in snippets)               */
/* ---------------------------------------------------------------------------------------------- */

#define HDR "nabla-nn-fixtures 1\n"
#define GOOD_BODY                                                                                      \
    "tensor param:l.w f64 1 2 1 2\ntensor in:x f64 0 1\ntensor out:y f64 1 2 1 2\ntensor seed:y f64 1 2 1 1\n" \
    "tensor grad:l.w f64 1 2 1 1\n"

static void parser_selftest(void)
{
    static const struct {
        const char *text, *needle; /* needle NULL: must parse */
    } t[] = {
        {HDR "# ok\ncase a linear\n" GOOD_BODY "end\n", NULL},
        {HDR "case a linear\r\n" GOOD_BODY "end", NULL},
        {"", "header"},
        {"nabla-fixtures 1\n", "expected the header"},
        {HDR "case a linear\n" GOOD_BODY, "has no end"},
        {HDR "case a linear\n" GOOD_BODY "end\ncase a linear\n", "defined twice"},
        {HDR "tensor in:x f64 0 1\n", "outside a case"},
        {HDR "case a linear\ntensor x f64 0 1\n", "not <kind>:<name>"},
        {HDR "case a linear\ntensor weight:x f64 0 1\n", "unknown kind"},
        {HDR "case a linear\ntensor in: f64 0 1\n", "missing tensor name"},
        {HDR "case a linear\ntensor in:x f32 0 1\n", "unknown dtype"},
        {HDR "case a linear\ntensor in:x f64 1 3 1 2\n", "2 values for 3 elements"},
        {HDR "case a linear\ntensor in:x f64 0 1 2\n", "more than 1 values"},
        {HDR "case a linear\ntensor in:x f64 0 1\ntensor in:x f64 0 1\n", "given twice"},
        {HDR "case a linear\ntensor in:x f64 0 1\ntensor out:y f64 0 1\nend\n", "has no seed"},
        {HDR "case a linear\ntensor in:x f64 0 1\ntensor out:y f64 0 1\ntensor seed:y f64 1 1 1\nend\n",
         "differs from its out"},
        {HDR "case a linear\ntensor param:w f64 0 1\ntensor out:y f64 0 1\ntensor seed:y f64 0 1\nend\n",
         "has no grad"},
        {HDR "case a linear\ntensor out:y f64 0 1\ntensor seed:y f64 0 1\ntensor grad:z f64 0 1\nend\n",
         "of no param or in"},
        {HDR "case a linear\ntensor in:n i64 0 1\ntensor out:y f64 0 1\ntensor seed:y f64 0 1\n"
             "tensor grad:n f64 0 1\nend\n",
         "of an i64 input"},
        {HDR "case a linear\ntensor in:x f64 0 1\nend\n", "no out"},
        {HDR "case a linear\nattr k 1\nattr k 2\n", "given twice"},
        {HDR "case a linear\ntensor buffer:n i64 0 2\ntensor out:y f64 0 1\ntensor seed:y f64 0 1\n"
             "tensor after:n i64 0 3\nend\n",
         NULL},
        {HDR "case a linear\ntensor out:y f64 0 1\ntensor seed:y f64 0 1\ntensor after:n i64 0 3\nend\n",
         "without a buffer"},
        {HDR "case a linear\ntensor buffer:n i64 0 2\ntensor out:y f64 0 1\ntensor seed:y f64 0 1\n"
             "tensor after:n f64 0 3\nend\n",
         "without a buffer of its dtype"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECK(fx_snippet_ok(&NN_FORMAT, t[i].text, t[i].needle, err, sizeof err), "parser self-test %zu: %s", i, err);
}

/* ---------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_FILE...\n", argc ? argv[0] : "test_nn_fixtures");
        return 2;
    }
    parser_selftest();

    int ncases_run = 0;
    for (int file = 1; file < argc; file++) {
        fx_file f;
        char err[512];
        if (!fx_load(&NN_FORMAT, argv[file], &f, err, sizeof err)) {
            fprintf(stderr, "FAIL: cannot read fixtures: %s\n", err);
            return 1;
        }
        for (int i = 0; i < f.ncases; i++) {
            fx_case *c = &f.cases[i];
            int k = 0;
            while (k < N_LAYERS && strcmp(LAYERS[k].name, c->op)) k++;
            nbt_checks++;
            if (k == N_LAYERS) {
                NBT_FAIL("case %s (line %d): no runner for layer \"%s\" in LAYERS", c->name, c->line, c->op);
                continue;
            }
            stats[k].cases++;
            ncases_run++;
            run_case(c, &LAYERS[k], &stats[k]);
        }
        fx_file_free(&f);
    }
    long long elements_compared = 0;
    double max_rel_all = 0;
    for (int k = 0; k < N_LAYERS; k++) {
        nbt_checks++;
        if (!stats[k].cases) NBT_FAIL("layer %s has a runner but no case in the files given", LAYERS[k].name);
        elements_compared += stats[k].out.compared + stats[k].grad.compared;
        max_rel_all = fmax(max_rel_all, fmax(stats[k].out.max_rel, stats[k].grad.max_rel));
    }

    printf("nn fixtures: %d cases over %d layers, %lld elements compared, max relative error vs PyTorch %.3g "
           "(tol %g)\n", ncases_run, N_LAYERS, elements_compared, max_rel_all, RTOL);
    printf("%-14s %6s %7s %7s %13s %13s\n", "layer", "cases", "checks", "failed", "max rel out", "max rel grad");
    for (int k = 0; k < N_LAYERS; k++)
        printf("%-14s %6d %7d %7d %13.3g %13.3g%s\n", LAYERS[k].name, stats[k].cases, stats[k].checks,
               stats[k].failures, stats[k].out.max_rel, stats[k].grad.max_rel, stats[k].failures ? "  <--" : "");
    return nbt_report("nn_fixtures");
}
