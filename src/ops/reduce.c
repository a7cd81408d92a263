/* Reductions: sum over axes (float32 accumulates in double), and the compositions built on it. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* out = sum of x over the axes in mask i[0]; out has x's shape with those axes removed (or kept as 1
 * when i[1]). */
NB_FW(sum)
{
    const nb_tensor *x = in[0];
    nb_reduce_plan p;
    nb__reduce_plan(&p, x, (uint32_t)at->i[0]);
    if (out->dtype == NB_F64) {
        nb_k_sum_f64(&p, x->data, out->data, out->data, 1.0);
    } else if (out->dtype == NB_I64) {
        nb_k_sum_i64(&p, x->data, out->data, out->data, 1.0); /* wraps on overflow */
    } else {
        double *acc = nb__tape_alloc(out->tape, (size_t)p.out_numel * sizeof(double));
        if (!acc) {
            nb__fail(NB_ERR_NOMEM, "nb_sum: out of memory for the accumulator");
            return;
        }
        nb_k_sum_f32(&p, x->data, out->data, acc, 1.0);
    }
}

/* The shape of a reduction of x over the axes in mask: those axes dropped, or kept with extent 1. */
static int reduced_dims(const nb_tensor *x, uint32_t mask, int keepdim, int64_t *shape)
{
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (!(mask & (1u << d)))
            shape[nd++] = x->shape[d];
        else if (keepdim)
            shape[nd++] = 1;
    }
    return nd;
}

/* d sum(x) = broadcast of the output gradient back over the reduced axes */
NB_BW(sum)
{
    if (!NB_NEED(0)) return;
    const nb_tensor *x = n->in[0];
    int64_t ks[NB_MAX_DIMS];
    reduced_dims(x, (uint32_t)n->attrs.i[0], 1, ks);
    gin[0] = nb_broadcast_to(nb_reshape(g, x->ndim, ks), x->ndim, x->shape);
}

/* Validate axes into a bitmask (0 axes: all). Returns false with a message on bad input. */
bool nb__axes_mask(const char *who, const nb_tensor *x, int naxes, const int *axes, uint32_t *mask)
{
    *mask = 0;
    if (naxes < 0 || (naxes > 0 && !axes)) {
        nb__fail(NB_ERR_ARG, "%s: %d axes with axes=%p", who, naxes, (const void *)axes);
        return false;
    }
    if (naxes == 0) {
        *mask = x->ndim ? (1u << x->ndim) - 1 : 0;
        return true;
    }
    for (int i = 0; i < naxes; i++) {
        int d = nb__axis(axes[i], x->ndim);
        if (d < 0) {
            nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axes[i], NB_SHP(x));
            return false;
        }
        if (*mask & (1u << d)) {
            nb__fail(NB_ERR_ARG, "%s: axis %d repeated for %s", who, axes[i], NB_SHP(x));
            return false;
        }
        *mask |= 1u << d;
    }
    return true;
}

static nb_tensor *sum_mask(const char *who, nb_tensor *x, uint32_t mask, int keepdim)
{
    if (!x) return NULL; /* an op before it failed (out of memory, anomaly mode): its error stands */
    int64_t shape[NB_MAX_DIMS];
    int nd = reduced_dims(x, mask, keepdim, shape);
    nb_attrs at = {.i = {(int64_t)mask, keepdim ? 1 : 0}};
    return nb__apply(who, NB_OP_SUM, 1, &x, &at, x->dtype, nd, shape);
}

/* f32 and f64; i64 too when int_ok. */
static bool check_dtype(const char *who, const nb_tensor *x, bool int_ok)
{
    return (int_ok && x->dtype == NB_I64) || nb__check_float(who, x);
}

nb_tensor *nb_sum(nb_tensor *x, int naxes, const int *axes, int keepdim)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_sum: input is NULL");
    if (!nb__live("nb_sum", x)) return NULL;
    uint32_t mask;
    if (!check_dtype("nb_sum", x, true) || !nb__axes_mask("nb_sum", x, naxes, axes, &mask)) return NULL;
    return sum_mask("nb_sum", x, mask, keepdim);
}

nb_tensor *nb_mean(nb_tensor *x, int naxes, const int *axes, int keepdim)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_mean: input is NULL");
    if (!nb__live("nb_mean", x)) return NULL;
    if (x->dtype == NB_I64)
        return nb__fail(NB_ERR_DTYPE, "nb_mean: i64 tensor %s: the mean of integers is not an integer (nb_sum "
                        "counts; nb_cast to f64 first for a mean)", NB_SHP(x));
    uint32_t mask;
    if (!nb__check_float("nb_mean", x) || !nb__axes_mask("nb_mean", x, naxes, axes, &mask)) return NULL;
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++)
        if (mask & (1u << d)) count *= x->shape[d];
    return nb_mul_scalar(sum_mask("nb_mean", x, mask, keepdim), 1.0 / (double)count);
}

nb_tensor *nb_sum_all(nb_tensor *x) { return nb_sum(x, 0, NULL, 0); }
nb_tensor *nb_mean_all(nb_tensor *x) { return nb_mean(x, 0, NULL, 0); }

nb_tensor *nb__sum_to(nb_tensor *x, int ndim, const int64_t *shape)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_sum_to: input is NULL");
    if (ndim < 0 || ndim > x->ndim || (ndim > 0 && !shape))
        return nb__fail(NB_ERR_SHAPE, "nb_sum_to: cannot reduce %s to %d dimensions", NB_SHP(x), ndim);
    int lead = x->ndim - ndim;
    uint32_t mask = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (d < lead) {
            mask |= 1u << d;
            continue;
        }
        int64_t want = shape[d - lead];
        if (want == x->shape[d]) continue;
        if (want != 1)
            return nb__fail(NB_ERR_SHAPE, "nb_sum_to: %s cannot be reduced to %s", NB_SHP(x),
                            nb__shape_str(ndim, shape));
        mask |= 1u << d;
    }
    if (!mask) return x;
    if (!nb__check_float("nb_sum_to", x)) return NULL;
    return nb_reshape(sum_mask("nb_sum_to", x, mask, 1), ndim, shape);
}

nb_tensor *nb_sum_to(nb_tensor *x, int ndim, const int64_t *shape)
{
    if (x && !nb__live("nb_sum_to", x)) return NULL;
    nb_tensor *r = nb__sum_to(x, ndim, shape); /* (nb__sum_to, for rules, takes a fresh gradient unchecked) */
    return r && r == x ? nb__alias("nb_sum_to", x) : r;
}

/* ---- argmax / argmin -------------------------------------------------------------------------- */

/* x as [outer, n, inner] around one axis */
static void around_axis(const nb_tensor *x, int axis, int64_t *outer, int64_t *n, int64_t *inner)
{
    *outer = 1;
    *inner = 1;
    for (int d = 0; d < axis; d++) *outer *= x->shape[d];
    for (int d = axis + 1; d < x->ndim; d++) *inner *= x->shape[d];
    *n = x->shape[axis];
}

/* out[outer, inner] (i64) = first index of the max (min) along axis i[0] */
NB_FW(argmax)
{
    const nb_tensor *x = in[0];
    int64_t outer, n, inner;
    around_axis(x, (int)at->i[0], &outer, &n, &inner);
    if (x->dtype == NB_F32)
        nb_k_argmax_f32(outer, n, inner, x->data, out->data, (int)at->i[1]);
    else if (x->dtype == NB_F64)
        nb_k_argmax_f64(outer, n, inner, x->data, out->data, (int)at->i[1]);
    else
        nb_k_argmax_i64(outer, n, inner, x->data, out->data, (int)at->i[1]);
}

static nb_tensor *arg_extreme(const char *who, nb_tensor *x, int axis, int keepdim, int is_min)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (!check_dtype(who, x, true)) return NULL;
    int d = nb__axis(axis, x->ndim);
    if (d < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    if (x->shape[d] == 0) return nb__fail(NB_ERR_SHAPE, "%s: %s is empty along axis %d", who, NB_SHP(x), axis);
    int64_t shape[NB_MAX_DIMS];
    int nd = reduced_dims(x, 1u << d, keepdim, shape);
    nb_attrs at = {.i = {d, is_min}};
    return nb__apply(who, NB_OP_ARGMAX, 1, &x, &at, NB_I64, nd, shape);
}

nb_tensor *nb_argmax(nb_tensor *x, int axis, int keepdim) { return arg_extreme("nb_argmax", x, axis, keepdim, 0); }
nb_tensor *nb_argmin(nb_tensor *x, int axis, int keepdim) { return arg_extreme("nb_argmin", x, axis, keepdim, 1); }

/* ---- max / min over axes: argmax, then gather (the gradient goes to the selected element) ------ */

/* Move the axes in mask to the end and merge them into one: [kept..., R]. */
static nb_tensor *group_axes(nb_tensor *x, uint32_t mask)
{
    int perm[NB_MAX_DIMS], np = 0;
    int64_t shape[NB_MAX_DIMS], r = 1;
    for (int d = 0; d < x->ndim; d++)
        if (!(mask & (1u << d))) {
            perm[np] = d;
            shape[np++] = x->shape[d];
        }
    int kept = np;
    for (int d = 0; d < x->ndim; d++)
        if (mask & (1u << d)) {
            perm[np++] = d;
            r *= x->shape[d];
        }
    shape[kept] = r;
    bool identity = true;
    for (int d = 0; d < x->ndim; d++) identity = identity && perm[d] == d;
    nb_tensor *p = identity ? x : nb_permute(x, x->ndim, perm);
    return nb_reshape(p, kept + 1, shape);
}

/* Reshape a reduction result [kept...] to the requested output shape. */
static nb_tensor *reduced_shape(nb_tensor *r, const nb_tensor *x, uint32_t mask, int keepdim)
{
    int64_t shape[NB_MAX_DIMS];
    int nd = reduced_dims(x, mask, keepdim, shape);
    return nb_reshape(r, nd, shape);
}

static nb_tensor *extreme(const char *who, nb_tensor *x, int naxes, const int *axes, int keepdim, int is_min)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    uint32_t mask;
    if (!check_dtype(who, x, true) || !nb__axes_mask(who, x, naxes, axes, &mask)) return NULL;
    for (int d = 0; d < x->ndim; d++)
        if ((mask & (1u << d)) && x->shape[d] == 0)
            return nb__fail(NB_ERR_SHAPE, "%s: %s is empty along axis %d", who, NB_SHP(x), d);
    nb_tensor *grouped = group_axes(x, mask);
    if (!grouped) return NULL;
    int last = grouped->ndim - 1;
    nb_tensor *idx = arg_extreme(who, grouped, last, 1, is_min);
    return reduced_shape(nb_gather(grouped, last, idx), x, mask, keepdim);
}

nb_tensor *nb_max(nb_tensor *x, int naxes, const int *axes, int keepdim) { return extreme("nb_max", x, naxes, axes, keepdim, 0); }
nb_tensor *nb_min(nb_tensor *x, int naxes, const int *axes, int keepdim) { return extreme("nb_min", x, naxes, axes, keepdim, 1); }

/* ---- logsumexp, var, std ---------------------------------------------------------------------- */

/* lse(x) = m + log(sum(exp(x - m))) with m = max(x) held constant (lse does not depend on the shift,
 * so the gradient is the same, and exp never overflows). */
nb_tensor *nb_logsumexp(nb_tensor *x, int naxes, const int *axes, int keepdim)
{
    const char *who = "nb_logsumexp";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    uint32_t mask;
    if (!nb__check_float(who, x) || !nb__axes_mask(who, x, naxes, axes, &mask)) return NULL;
    for (int d = 0; d < x->ndim; d++)
        if ((mask & (1u << d)) && x->shape[d] == 0) /* empty groups: log(0) = -inf, as torch; the sum */
            return nb_add_scalar(sum_mask(who, x, mask, keepdim), -INFINITY); /* keeps x on the graph */
    nb_no_grad_begin(); /* the shift is a constant: record nothing for it */
    nb_tensor *m = extreme(who, x, naxes, axes, 1, 0);
    nb_no_grad_end();
    if (!m) return NULL;
    /* an all -inf (or +inf) group has no finite shift: use 0 there */
    for (int64_t i = 0; i < m->numel; i++) {
        double v = nb__get(m, i);
        if (v - v != 0) nb__set(m, i, 0.0);
    }
    nb_tensor *s = nb_log(sum_mask(who, nb_exp(nb_sub(x, m)), mask, 1));
    return reduced_shape(nb_add(s, m), x, mask, keepdim);
}

static nb_tensor *variance(const char *who, nb_tensor *x, int naxes, const int *axes, int correction, int keepdim)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    uint32_t mask;
    if (!nb__check_float(who, x) || !nb__axes_mask(who, x, naxes, axes, &mask)) return NULL;
    if (correction < 0) return nb__fail(NB_ERR_ARG, "%s: %s: correction %d is negative", who, NB_SHP(x), correction);
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++)
        if (mask & (1u << d)) count *= x->shape[d];
    nb_tensor *mean = nb_mul_scalar(sum_mask(who, x, mask, 1), 1.0 / (double)count);
    nb_tensor *d2 = nb_square(nb_sub(x, mean));
    /* divided by max(0, count - correction), as in PyTorch: count <= correction gives NaN (a sum of 0,
     * an empty axis included) or infinity, never a finite number */
    int64_t dof = count > correction ? count - correction : 0;
    return nb_mul_scalar(sum_mask(who, d2, mask, keepdim), 1.0 / (double)dof);
}

nb_tensor *nb_var(nb_tensor *x, int naxes, const int *axes, int correction, int keepdim)
{
    return variance("nb_var", x, naxes, axes, correction, keepdim);
}

nb_tensor *nb_std(nb_tensor *x, int naxes, const int *axes, int correction, int keepdim)
{
    return nb_sqrt(variance("nb_std", x, naxes, axes, correction, keepdim));
}

/* ---- softmax, log_softmax --------------------------------------------------------------------- */

static void softmax_kernel(nb_tensor *out, const nb_tensor *x, int axis, int take_log)
{
    int64_t outer, n, inner;
    around_axis(x, axis, &outer, &n, &inner);
    if (x->dtype == NB_F32)
        nb_k_softmax_f32(outer, n, inner, x->data, out->data, take_log);
    else
        nb_k_softmax_f64(outer, n, inner, x->data, out->data, take_log);
}

/* y = exp(x - max) / sum(exp(x - max)) along i[0] */
NB_FW(softmax) { softmax_kernel(out, in[0], (int)at->i[0], 0); }
/* dx = y * (g - sum(g y)) along the axis */
NB_BW(softmax)
{
    if (!NB_NEED(0)) return;
    int axis = (int)n->attrs.i[0];
    nb_tensor *y = n->out;
    gin[0] = nb_mul(y, nb_sub(g, nb_sum(nb_mul(g, y), 1, &axis, 1)));
}

/* y = x - max - log(sum(exp(x - max))) along i[0] */
NB_FW(log_softmax) { softmax_kernel(out, in[0], (int)at->i[0], 1); }
/* dx = g - exp(y) sum(g) along the axis */
NB_BW(log_softmax)
{
    if (!NB_NEED(0)) return;
    int axis = (int)n->attrs.i[0];
    gin[0] = nb_sub(g, nb_mul(nb_exp(n->out), nb_sum(g, 1, &axis, 1)));
}

static nb_tensor *softmax_op(const char *who, nb_op_id op, nb_tensor *x, int axis)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (!nb__check_float(who, x)) return NULL;
    int d = nb__axis(axis, x->ndim);
    if (d < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    nb_attrs at = {.i = {d}};
    return nb__apply(who, op, 1, &x, &at, x->dtype, x->ndim, x->shape);
}

nb_tensor *nb_softmax(nb_tensor *x, int axis) { return softmax_op("nb_softmax", NB_OP_SOFTMAX, x, axis); }
nb_tensor *nb_log_softmax(nb_tensor *x, int axis) { return softmax_op("nb_log_softmax", NB_OP_LOG_SOFTMAX, x, axis); }

/* ---- dropout ---------------------------------------------------------------------------------- */

/* The mask's parameters for drop probability p: element i is kept (valued 1 / (1 - p)) when its 32
 * random bits (nb__dropout_bits) are >= thr, which happens with probability 1 - p (to 2^-32); p = 1
 * keeps every element with the value 0. */
static void mask_params(double p, uint32_t *thr, double *keep)
{
    if (p >= 1) {
        *thr = 0;
        *keep = 0;
        return;
    }
    double t = nearbyint(p * 4294967296.0);
    *thr = t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
    *keep = 1.0 / (1.0 - p);
}

/* out = x * mask with the mask of stream key i[0] (threshold i[1], kept value f[1]), made on the fly */
NB_FW(dropout)
{
    const nb_tensor *x = in[0];
    uint64_t key = (uint64_t)at->i[0];
    uint32_t thr = (uint32_t)at->i[1];
    if (out->dtype == NB_F32)
        nb_k_dropout_f32(x->numel, x->data, out->data, key, thr, at->f[1]);
    else
        nb_k_dropout_f64(x->numel, x->data, out->data, key, thr, at->f[1]);
}
/* d (x * mask) = mask dx: the same op, with the same mask, on the gradient */
NB_BW(dropout)
{
    if (!NB_NEED(0)) return;
    gin[0] = nb__apply("nb_dropout (backward)", NB_OP_DROPOUT, 1, &g, &n->attrs, g->dtype, g->ndim, g->shape);
}

nb_tensor *nb_dropout_mask(nb_dtype dtype, int ndim, const int64_t *shape, double p, nb_rng *rng)
{
    const char *who = "nb_dropout_mask";
    if (!rng) return nb__fail(NB_ERR_ARG, "%s: rng is NULL", who);
    if (!(p >= 0 && p <= 1)) return nb__fail(NB_ERR_ARG, "%s: p = %g is not in [0, 1]", who, p);
    if (!nb__is_float(dtype)) return nb__fail(NB_ERR_DTYPE, "%s: dtype %s is not f32 or f64", who, nb_dtype_name(dtype));
    nb_tensor *m = nb__tape_tensor(who, dtype, ndim, shape);
    if (!m) return NULL;
    uint64_t key = nb_rng_u64(rng);
    uint32_t thr;
    double keep;
    mask_params(p, &thr, &keep);
    if (dtype == NB_F32)
        nb_k_dropout_f32(m->numel, NULL, m->data, key, thr, keep);
    else
        nb_k_dropout_f64(m->numel, NULL, m->data, key, thr, keep);
    return m;
}

nb_tensor *nb_dropout(nb_tensor *x, double p, nb_rng *rng)
{
    const char *who = "nb_dropout";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (!nb__check_float(who, x)) return NULL;
    if (!(p >= 0 && p <= 1)) return nb__fail(NB_ERR_ARG, "%s: %s: p = %g is not in [0, 1]", who, NB_SHP(x), p);
    if (p == 0.0) return nb__alias(who, x);
    if (!rng) return nb__fail(NB_ERR_ARG, "%s: rng is NULL", who);
    uint32_t thr;
    double keep;
    mask_params(p, &thr, &keep);
    nb_attrs at = {.i = {(int64_t)nb_rng_u64(rng), thr}, .f = {p, keep}};
    return nb__apply(who, NB_OP_DROPOUT, 1, &x, &at, x->dtype, x->ndim, x->shape);
}
