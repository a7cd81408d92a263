/* Per-channel normalisation, the two fused primitives batch and group normalisation are made of:
 * channel_moments (the mean and biased variance of each channel of x [N, C, ...] over every other
 * dim, in two passes with double accumulators) and channel_norm ((x - mean) / sqrt(var + eps) * w + b
 * for given statistics). Training-mode batch norm is norm(x, moments(x)); evaluation mode passes the
 * running statistics instead. Both rules are written with nabla ops (second order works), and each
 * has a fused fast path for backward without a graph. */
#include "cnn.h"

#include <math.h>
#include <string.h>

#define CNN_CALL(dt, name, ...) ((dt) == NB_F32 ? nb_k_##name##_f32(__VA_ARGS__) : nb_k_##name##_f64(__VA_ARGS__))

/* x [N, C, ...] as [a, c, d] around dim 1 */
static void around_channels(const nb_tensor *x, int64_t *a, int64_t *c, int64_t *d)
{
    *a = x->shape[0];
    *c = x->shape[1];
    *d = nb__numel(x->ndim - 2, x->shape + 2);
}

/* x's reduction axes (every dim but 1) and the broadcast shape [1, C, 1, ...] of a per-channel vector */
static int reduce_axes(const nb_tensor *x, int *axes, int64_t *bshape)
{
    int n = 0;
    for (int d = 0; d < x->ndim; d++) {
        bshape[d] = d == 1 ? x->shape[1] : 1;
        if (d != 1) axes[n++] = d;
    }
    return n;
}

/* row r of a [2, C] tensor as a [C] vector */
static nb_tensor *row(nb_tensor *t, int64_t r)
{
    return nb_reshape(nb_slice(t, 0, r, r + 1, 1), NB_SHAPE(t->shape[1]));
}

/* ---- channel_moments -------------------------------------------------------------------------- */

/* out [2, C] = mean and biased variance of each channel of x [N, C, ...] */
NB_FW(channel_moments)
{
    (void)at;
    int64_t a, c, d;
    around_channels(in[0], &a, &c, &d);
    CNN_CALL(out->dtype, moments, a, c, d, in[0]->data, out->data);
}

/* mean = sum x / M, var = sum (x - mean)^2 / M (M elements per channel; the mean's own gradient
 * term in var vanishes as sum (x - mean) = 0): dx = (dmean + 2 dvar (x - mean)) / M */
NB_BW(channel_moments)
{
    if (!NB_NEED(0)) return;
    nb_tensor *x = n->in[0];
    int axes[NB_MAX_DIMS];
    int64_t bs[NB_MAX_DIMS], a, c, d;
    reduce_axes(x, axes, bs);
    around_channels(x, &a, &c, &d);
    nb_tensor *mean = nb_reshape(row(n->out, 0), x->ndim, bs);
    nb_tensor *gm = nb_reshape(row(g, 0), x->ndim, bs), *gv = nb_reshape(row(g, 1), x->ndim, bs);
    nb_tensor *t = nb_add(gm, nb_mul(nb_mul_scalar(gv, 2.0), nb_sub(x, mean)));
    gin[0] = nb_mul_scalar(t, 1.0 / (double)(a * d));
}

bool nb__into_channel_moments(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    if (!NB_NEED(0)) return true;
    bool fresh;
    nb_tensor *dx = nb__sink_slot(sink, 0, &fresh);
    if (!dx) return true;
    int64_t a, c, d;
    around_channels(n->in[0], &a, &c, &d);
    CNN_CALL(g->dtype, moments_bw, a, c, d, n->in[0]->data, n->out->data, g->data, dx->data, !fresh);
    return true;
}

/* ---- channel_norm ----------------------------------------------------------------------------- */

/* inputs x, stats [, weight] [, bias]; i[0], i[1]: whether weight and bias are present; f[0] = eps */
static void norm_inputs(const nb_node *n, nb_tensor **w, nb_tensor **b, int *iw, int *ib)
{
    *iw = n->attrs.i[0] ? 2 : -1;
    *ib = n->attrs.i[1] ? 2 + (n->attrs.i[0] != 0) : -1;
    *w = *iw >= 0 ? n->in[*iw] : NULL;
    *b = *ib >= 0 ? n->in[*ib] : NULL;
}

/* out [N, C, ...] = (x - mean) / sqrt(var + eps) * w + b per channel, stats [2, C] = (mean, var) */
NB_FW(channel_norm)
{
    int64_t a, c, d;
    around_channels(in[0], &a, &c, &d);
    const nb_tensor *w = at->i[0] ? in[2] : NULL, *b = at->i[1] ? in[2 + (at->i[0] != 0)] : NULL;
    double *coef = nb__tape_alloc(out->tape, (size_t)(2 * c > 0 ? 2 * c : 1) * sizeof(double));
    if (!coef) {
        nb__fail(NB_ERR_NOMEM, "nb_channel_norm: out of memory");
        return;
    }
    CNN_CALL(out->dtype, chnorm_fw, a, c, d, in[0]->data, in[1]->data, w ? w->data : NULL, b ? b->data : NULL,
             at->f[0], out->data, coef);
}

/* y = (x - m) r w + b with r = (v + eps)^-1/2, per channel, sums over every dim but 1:
 *   dx = g w r,   dm = -w r sum g,   dv = -w r^3 / 2 sum g (x - m),   dw = r sum g (x - m),   db = sum g */
NB_BW(channel_norm)
{
    nb_tensor *x = n->in[0], *st = n->in[1], *w, *b;
    int iw, ib;
    norm_inputs(n, &w, &b, &iw, &ib);
    int axes[NB_MAX_DIMS];
    int64_t bs[NB_MAX_DIMS];
    int na = reduce_axes(x, axes, bs);
    nb_tensor *r = nb_pow_scalar(nb_add_scalar(row(st, 1), n->attrs.f[0]), -0.5); /* [C] */
    nb_tensor *wr = w ? nb_mul(w, r) : r;
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_reshape(wr, x->ndim, bs));
    bool need_sx = NB_NEED(1) || (w && NB_NEED(iw));
    nb_tensor *sgx = NULL, *sg = NULL;
    if (need_sx) sgx = nb_sum(nb_mul(g, nb_sub(x, nb_reshape(row(st, 0), x->ndim, bs))), na, axes, 0);
    if (NB_NEED(1) || (b && NB_NEED(ib))) sg = nb_sum(g, na, axes, 0);
    if (NB_NEED(1)) {
        nb_tensor *dm = nb_neg(nb_mul(sg, wr));
        nb_tensor *dv = nb_mul(nb_mul_scalar(sgx, -0.5), nb_mul(wr, nb_square(r)));
        nb_tensor *parts[2] = {nb_reshape(dm, NB_SHAPE(1, x->shape[1])), nb_reshape(dv, NB_SHAPE(1, x->shape[1]))};
        gin[1] = nb_concat(2, parts, 0);
    }
    if (w && NB_NEED(iw)) gin[iw] = nb_mul(sgx, r);
    if (b && NB_NEED(ib)) gin[ib] = sg;
}

/* Without a graph: one pass for the per-channel sums of g and g (x - mean), one that writes dx; the
 * small gradients of the statistics, weight and bias from the sums. */
bool nb__into_channel_norm(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    const char *who = "nb_channel_norm";
    nb_tensor *x = n->in[0], *st = n->in[1], *w, *b;
    int iw, ib;
    norm_inputs(n, &w, &b, &iw, &ib);
    int64_t a, c, d;
    around_channels(x, &a, &c, &d);
    double *k = nb__tape_alloc(nb__current_tape(), (size_t)(4 * c > 0 ? 4 * c : 1) * sizeof(double));
    if (!k) {
        nb__fail(NB_ERR_NOMEM, "%s: out of memory", who);
        return true;
    }
    double *wr = k, *sg = k + c, *sgx = k + 2 * c, *r = k + 3 * c;
    for (int64_t ch = 0; ch < c; ch++) {
        r[ch] = 1.0 / sqrt(nb__get(st, c + ch) + n->attrs.f[0]);
        wr[ch] = w ? nb__get(w, ch) * r[ch] : r[ch];
    }
    bool fresh;
    if (NB_NEED(0)) {
        nb_tensor *dx = nb__sink_slot(sink, 0, &fresh);
        if (!dx) return true;
        CNN_CALL(g->dtype, chscale, a, c, d, g->data, wr, dx->data, !fresh);
    }
    if (!NB_NEED(1) && !(w && NB_NEED(iw)) && !(b && NB_NEED(ib))) return true;
    CNN_CALL(g->dtype, chnorm_sums, a, c, d, g->data, x->data, st->data, sg, sgx);
    /* add (or, into a fresh buffer, write) the per-channel values v[i] at element offset off of slot i */
#define SMALL_GRAD(i, count, off, expr)                                                                \
    do {                                                                                               \
        nb_tensor *s_ = nb__sink_slot(sink, (i), &fresh);                                              \
        if (!s_) return true;                                                                          \
        for (int64_t ch = 0; ch < (count); ch++) {                                                     \
            double v_ = (expr);                                                                        \
            nb__set(s_, (off) + ch, fresh ? v_ : nb__get(s_, (off) + ch) + v_);                        \
        }                                                                                              \
    } while (0)
    if (NB_NEED(1)) {
        nb_tensor *s = nb__sink_slot(sink, 1, &fresh);
        if (!s) return true;
        for (int64_t ch = 0; ch < c; ch++) {
            double dm = -wr[ch] * sg[ch], dv = -0.5 * wr[ch] * r[ch] * r[ch] * sgx[ch];
            nb__set(s, ch, fresh ? dm : nb__get(s, ch) + dm);
            nb__set(s, c + ch, fresh ? dv : nb__get(s, c + ch) + dv);
        }
    }
    if (w && NB_NEED(iw)) SMALL_GRAD(iw, c, 0, r[ch] * sgx[ch]);
    if (b && NB_NEED(ib)) SMALL_GRAD(ib, c, 0, sg[ch]);
#undef SMALL_GRAD
    return true;
}

/* ---- batch_norm: channel_norm(x, channel_moments(x), w, b) fused ------------------------------ */

/* out [N, C, ...] = (x - mean) / sqrt(var + eps) * w + b with the statistics of x itself, which the
 * [2, C] tensor p receives; each channel normalised right after its statistics, while in cache */
NB_FW(batch_norm)
{
    int64_t a, c, d;
    around_channels(in[0], &a, &c, &d);
    const nb_tensor *w = at->i[0] ? in[1] : NULL, *b = at->i[1] ? in[1 + (at->i[0] != 0)] : NULL;
    CNN_CALL(out->dtype, bn_fw, a, c, d, in[0]->data, w ? w->data : NULL, b ? b->data : NULL, at->f[0], out->data,
             ((nb_tensor *)at->p)->data);
}

/* The composition's gradient, with the statistics taken again from x so that it stays differentiable
 * (m, v the moments, r = (v + eps)^-1/2, xhat = (x - m) r, means over every dim but 1):
 *   dx = w r (g - mean g - xhat mean(g xhat)),   dw = sum g xhat,   db = sum g */
NB_BW(batch_norm)
{
    nb_tensor *x = n->in[0];
    nb_tensor *w = n->attrs.i[0] ? n->in[1] : NULL;
    int iw = n->attrs.i[0] ? 1 : -1, ib = n->attrs.i[1] ? 1 + (n->attrs.i[0] != 0) : -1;
    if (x->numel == 0) { /* no values: an empty dx, and sums over nothing for the weight and bias */
        if (NB_NEED(0)) gin[0] = nb_zeros_like(x);
        for (int k = 0; k < 2; k++) {
            int i = k ? ib : iw;
            if (i >= 0 && NB_NEED(i)) gin[i] = nb_zeros_like(n->in[i]);
        }
        return;
    }
    int axes[NB_MAX_DIMS];
    int64_t bs[NB_MAX_DIMS];
    int na = reduce_axes(x, axes, bs);
    nb_tensor *st = nb_channel_moments(x);
    nb_tensor *mean = nb_reshape(row(st, 0), x->ndim, bs);
    nb_tensor *r = nb_reshape(nb_pow_scalar(nb_add_scalar(row(st, 1), n->attrs.f[0]), -0.5), x->ndim, bs);
    nb_tensor *xhat = nb_mul(nb_sub(x, mean), r);
    nb_tensor *gx = nb_mul(g, xhat);
    if (NB_NEED(0)) {
        nb_tensor *t = nb_sub(nb_sub(g, nb_mean(g, na, axes, 1)), nb_mul(xhat, nb_mean(gx, na, axes, 1)));
        gin[0] = nb_mul(t, w ? nb_mul(nb_reshape(w, x->ndim, bs), r) : r);
    }
    if (iw >= 0 && NB_NEED(iw)) gin[iw] = nb_sum(gx, na, axes, 0);
    if (ib >= 0 && NB_NEED(ib)) gin[ib] = nb_sum(g, na, axes, 0);
}

/* dw = sum g xhat and db = sum g (sums: c of sum g, then c of sum g xhat) into the gradient slots of a
 * batch norm node's weight and bias, those that want one */
static void wb_grads(const nb_node *n, nb_grad_sink *sink, const double *sums, int64_t c)
{
    const int iw = n->attrs.i[0] ? 1 : -1, ib = n->attrs.i[1] ? 1 + (n->attrs.i[0] != 0) : -1;
    for (int k = 0; k < 2; k++) {
        const int i = k ? ib : iw;
        if (i < 0 || !NB_NEED(i)) continue;
        bool fresh;
        nb_tensor *s = nb__sink_slot(sink, i, &fresh);
        if (!s) return;
        const double *v = k ? sums : sums + c;
        for (int64_t ch = 0; ch < c; ch++) nb__set(s, ch, fresh ? v[ch] : nb__get(s, ch) + v[ch]);
    }
}

/* Without a graph: per channel, one pass for sum g and sum g xhat and one writing dx, both over the
 * channel's values while in cache; dw and db from the sums. */
bool nb__into_batch_norm(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    nb_tensor *x = n->in[0], *w = n->attrs.i[0] ? n->in[1] : NULL;
    int64_t a, c, d;
    around_channels(x, &a, &c, &d);
    double *sums = nb__tape_alloc(nb__current_tape(), (size_t)(2 * c > 0 ? 2 * c : 1) * sizeof(double));
    if (!sums) {
        nb__fail(NB_ERR_NOMEM, "nb_batch_norm_train: out of memory");
        return true;
    }
    bool fresh = false;
    nb_tensor *dx = NULL;
    if (NB_NEED(0) && !(dx = nb__sink_slot(sink, 0, &fresh))) return true;
    if (x->numel == 0) /* no values (the statistics are NaN): sums over nothing */
        memset(sums, 0, (size_t)(2 * c) * sizeof(double));
    else
        CNN_CALL(g->dtype, bn_bw, a, c, d, g->data, x->data, ((nb_tensor *)n->attrs.p)->data, w ? w->data : NULL,
                 n->attrs.f[0], dx ? dx->data : NULL, !fresh, sums, sums + c);
    wb_grads(n, sink, sums, c);
    return true;
}

/* ---- batch norm, ReLU and max pooling fused -------------------------------------------------- */

/* out [N, C, H / kh, W / kw] = max_pool2d(relu(batch_norm(x, w, b)), kh x kw windows of stride kh x kw):
 * the statistics, then one pass that normalises, rectifies and pools (p receives the statistics) */
NB_FW(bn_relu_pool)
{
    const nb_tensor *x = in[0];
    const nb_tensor *w = at->i[0] ? in[1] : NULL, *b = at->i[1] ? in[1 + (at->i[0] != 0)] : NULL;
    CNN_CALL(out->dtype, bnrp_fw, x->shape[0], x->shape[1], x->shape[2], x->shape[3], at->i[2], at->i[3], x->data,
             w ? w->data : NULL, b ? b->data : NULL, at->f[0], out->data, ((nb_tensor *)at->p)->data);
}

/* The composition's rules in turn: z = relu(y), y = batch_norm(x, w, b) recomputed with nabla ops; max
 * pooling's (g scattered to the maxima of z), relu's (kept where y > 0), then batch_norm's, whose rule
 * reads the same inputs and attrs as this node's */
NB_BW(bn_relu_pool)
{
    nb_tensor *x = n->in[0];
    if (x->numel == 0) {
        nb__bw_batch_norm(n, g, gin); /* zeros */
        return;
    }
    nb_tensor *w = n->attrs.i[0] ? n->in[1] : NULL, *b = n->attrs.i[1] ? n->in[1 + (n->attrs.i[0] != 0)] : NULL;
    nb_tensor *y = nb_batch_norm_train(x, w, b, n->attrs.f[0], NULL), *idx = NULL;
    if (!nb_max_pool2d_with_indices(nb_relu(y), n->attrs.i[2], n->attrs.i[3], NULL, &idx) || !idx) return;
    const int64_t planes = x->shape[0] * x->shape[1], q = g->shape[2] * g->shape[3];
    nb_tensor *gz = nb_reshape(nb_scatter_add(NB_SHAPE(planes, x->shape[2] * x->shape[3]), 1,
                                              nb_reshape(idx, NB_SHAPE(planes, q)), nb_reshape(g, NB_SHAPE(planes, q))),
                               x->ndim, x->shape);
    if (!gz) return;
    nb_tensor *gy = nb__apply("nb_batch_norm_relu_max_pool2d", NB_OP_RELU_BW, 2, (nb_tensor *[]){gz, y}, NULL,
                              x->dtype, x->ndim, x->shape);
    if (gy) nb__bw_batch_norm(n, gy, gin);
}

/* Without a graph: per channel, one pass over the windows for the sums and one writing dx, the
 * maxima and relu's mask found again from x and the statistics */
bool nb__into_bn_relu_pool(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    const nb_tensor *x = n->in[0], *w = n->attrs.i[0] ? n->in[1] : NULL;
    const nb_tensor *b = n->attrs.i[1] ? n->in[1 + (n->attrs.i[0] != 0)] : NULL;
    const int64_t c = x->shape[1], d = x->shape[2] * x->shape[3];
    const int threads = nb__cnn_threads(x->numel); /* read once: the kernel runs on the threads sized for */
    const size_t work = (size_t)threads * (size_t)nb__bnrp_slots(x->shape[0], d, (int64_t)nb_dtype_size(x->dtype)) *
                        (size_t)d * nb_dtype_size(x->dtype);
    nb_tape *t = nb__current_tape();
    double *sums = nb__tape_alloc(t, (size_t)(2 * c > 0 ? 2 * c : 1) * sizeof(double));
    void *ws = x->numel ? nb__tape_alloc(t, work) : NULL;
    if (!sums || (x->numel && !ws)) {
        nb__fail(NB_ERR_NOMEM, "nb_batch_norm_relu_max_pool2d: out of memory");
        return true;
    }
    bool fresh = false;
    nb_tensor *dx = NULL;
    if (NB_NEED(0) && !(dx = nb__sink_slot(sink, 0, &fresh))) return true;
    if (x->numel == 0)
        memset(sums, 0, (size_t)(2 * c) * sizeof(double));
    else
        CNN_CALL(g->dtype, bnrp_bw, x->shape[0], c, x->shape[2], x->shape[3], n->attrs.i[2], n->attrs.i[3], g->data,
                 x->data, ((nb_tensor *)n->attrs.p)->data, w ? w->data : NULL, b ? b->data : NULL, n->attrs.f[0],
                 dx ? dx->data : NULL, !fresh, sums, sums + c, ws, threads);
    wb_grads(n, sink, sums, c);
    return true;
}

/* ---- the public functions --------------------------------------------------------------------- */

static bool channels_input(const char *who, const nb_tensor *x)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who), false;
    if (!nb__live(who, x) || !nb__check_float(who, x)) return false; /* stale: named by this call */
    if (x->ndim < 2)
        return nb__fail(NB_ERR_SHAPE, "%s: input %s: expected at least 2 dimensions [N, C, ...]", who, NB_SHP(x)), false;
    return true;
}

nb_tensor *nb_channel_moments(nb_tensor *x)
{
    const char *who = "nb_channel_moments";
    if (!channels_input(who, x)) return NULL;
    if (x->numel == 0 && x->shape[1] > 0)
        return nb__fail(NB_ERR_SHAPE, "%s: input %s: no elements to take the moments of", who, NB_SHP(x));
    return nb__apply(who, NB_OP_CHANNEL_MOMENTS, 1, &x, NULL, x->dtype, 2, (const int64_t[]){2, x->shape[1]});
}

/* A per-channel argument of x [N, C, ...]: absent (NULL, optional ones), or live, of x's dtype, and
 * [C] ("stats": [2, C]); false after recording the error. */
static bool channel_arg(const char *who, const nb_tensor *x, const nb_tensor *t, const char *name)
{
    if (!t) return true;
    if (!nb__live(who, t)) return false;
    if (t->dtype != x->dtype)
        return nb__fail(NB_ERR_DTYPE, "%s: input %s %s and %s %s %s: dtypes differ (use nb_cast)", who,
                        nb_dtype_name(x->dtype), NB_SHP(x), name, nb_dtype_name(t->dtype), NB_SHP(t)),
               false;
    const bool stats = !strcmp(name, "stats");
    const int64_t C = x->shape[1];
    if (stats ? t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == C : t->ndim == 1 && t->shape[0] == C) return true;
    return nb__fail(NB_ERR_SHAPE, "%s: input %s: %s %s, expected [%s%lld]", who, NB_SHP(x), name, NB_SHP(t),
                    stats ? "2, " : "", (long long)C),
           false;
}

nb_tensor *nb_channel_norm(nb_tensor *x, nb_tensor *stats, nb_tensor *weight, nb_tensor *bias, double eps)
{
    const char *who = "nb_channel_norm";
    if (!channels_input(who, x)) return NULL;
    if (!stats) return nb__fail(NB_ERR_ARG, "%s: stats is NULL", who);
    if (!channel_arg(who, x, stats, "stats") || !channel_arg(who, x, weight, "weight") ||
        !channel_arg(who, x, bias, "bias"))
        return NULL;
    if (!(eps >= 0) || eps == INFINITY)
        return nb__fail(NB_ERR_ARG, "%s: input %s: eps %g must be finite and not negative", who, NB_SHP(x), eps);
    nb_tensor *in[4] = {x, stats, NULL, NULL};
    int k = 2;
    if (weight) in[k++] = weight;
    if (bias) in[k++] = bias;
    nb_attrs at = {.i = {weight != NULL, bias != NULL}, .f = {eps}};
    return nb__apply(who, NB_OP_CHANNEL_NORM, k, in, &at, x->dtype, x->ndim, x->shape);
}

/* batch_norm (kernel 0) or bn_relu_pool over kernel [kh, kw]: the checks, the statistics tensor and
 * the node */
static nb_tensor *bn_apply(const char *who, nb_tensor *x, nb_tensor *weight, nb_tensor *bias, double eps,
                           const int64_t *kernel, nb_tensor **stats)
{
    if (stats) *stats = NULL;
    if (!channels_input(who, x)) return NULL;
    const int64_t C = x->shape[1];
    if (!channel_arg(who, x, weight, "weight") || !channel_arg(who, x, bias, "bias")) return NULL;
    if (!(eps >= 0) || eps == INFINITY)
        return nb__fail(NB_ERR_ARG, "%s: input %s: eps %g must be finite and not negative", who, NB_SHP(x), eps);
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, x->shape, (size_t)x->ndim * sizeof(int64_t));
    if (kernel) {
        if (x->ndim != 4)
            return nb__fail(NB_ERR_SHAPE, "%s: input %s: expected 4 dimensions [N, C, H, W]", who, NB_SHP(x));
        /* the codes of nb_max_pool2d's checks, so the layer fails alike in training and evaluation */
        if (kernel[0] < 1 || kernel[1] < 1)
            return nb__fail(NB_ERR_ARG, "%s: input %s: kernel %s must be at least 1", who, NB_SHP(x),
                            nb__cnn_vals(2, kernel));
        if (kernel[0] > x->shape[2] || kernel[1] > x->shape[3])
            return nb__fail(NB_ERR_SHAPE, "%s: input %s: kernel %s does not fit in [H, W]", who, NB_SHP(x),
                            nb__cnn_vals(2, kernel));
        shape[2] = x->shape[2] / kernel[0];
        shape[3] = x->shape[3] / kernel[1];
    }
    nb_tensor *st = nb__tape_tensor(who, x->dtype, 2, (const int64_t[]){2, C});
    if (!st) return NULL;
    /* an input with no values (batch 0, a spatial extent 0): an empty result, as torch's batch_norm, and
     * the statistics of nothing, NaN (the forward kernel does not run for an empty result) */
    for (int64_t i = 0; x->numel == 0 && i < 2 * C; i++) nb__set(st, i, NAN);
    nb_tensor *in[3] = {x, NULL, NULL};
    int k = 1;
    if (weight) in[k++] = weight;
    if (bias) in[k++] = bias;
    nb_attrs at = {.i = {weight != NULL, bias != NULL, kernel ? kernel[0] : 0, kernel ? kernel[1] : 0}, .f = {eps},
                   .p = st};
    nb_tensor *y = nb__apply(who, kernel ? NB_OP_BN_RELU_POOL : NB_OP_BATCH_NORM, k, in, &at, x->dtype, x->ndim, shape);
    if (y && stats) *stats = st;
    return y;
}

nb_tensor *nb_batch_norm_train(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, double eps, nb_tensor **stats)
{
    return bn_apply("nb_batch_norm_train", x, weight, bias, eps, NULL, stats);
}

nb_tensor *nb_batch_norm_relu_max_pool2d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, double eps, int64_t kh,
                                         int64_t kw, nb_tensor **stats)
{
    return bn_apply("nb_batch_norm_relu_max_pool2d", x, weight, bias, eps, (const int64_t[]){kh, kw}, stats);
}
