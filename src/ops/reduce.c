/* Reductions: sum over axes (float32 accumulates in double), and the compositions built on it. */
#include "ops.h"

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
    } else {
        double *acc = nb__tape_alloc(out->tape, (size_t)p.out_numel * sizeof(double));
        if (!acc) {
            nb__fail(NB_ERR_NOMEM, "nb_sum: out of memory for the accumulator");
            return;
        }
        nb_k_sum_f32(&p, x->data, out->data, acc, 1.0);
    }
}

/* The keepdim shape of a reduction of x over mask. */
static void keep_shape(const nb_tensor *x, uint32_t mask, int64_t *shape)
{
    for (int d = 0; d < x->ndim; d++) shape[d] = (mask & (1u << d)) ? 1 : x->shape[d];
}

/* d sum(x) = broadcast of the output gradient back over the reduced axes */
NB_BW(sum)
{
    if (!NB_NEED(0)) return;
    const nb_tensor *x = n->in[0];
    int64_t ks[NB_MAX_DIMS];
    keep_shape(x, (uint32_t)n->attrs.i[0], ks);
    gin[0] = nb_broadcast_to(nb_reshape(g, x->ndim, ks), x->ndim, x->shape);
}

/* Validate axes into a bitmask (0 axes: all). Returns false with a message on bad input. */
static bool axes_mask(const char *who, const nb_tensor *x, int naxes, const int *axes, uint32_t *mask)
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
    int64_t shape[NB_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (!(mask & (1u << d)))
            shape[nd++] = x->shape[d];
        else if (keepdim)
            shape[nd++] = 1;
    }
    nb_attrs at = {.i = {(int64_t)mask, keepdim ? 1 : 0}};
    return nb__apply(who, NB_OP_SUM, 1, &x, &at, x->dtype, nd, shape);
}

nb_tensor *nb_sum(nb_tensor *x, int naxes, const int *axes, int keepdim)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_sum: input is NULL");
    uint32_t mask;
    if (!nb__check_float("nb_sum", x) || !axes_mask("nb_sum", x, naxes, axes, &mask)) return NULL;
    return sum_mask("nb_sum", x, mask, keepdim);
}

nb_tensor *nb_mean(nb_tensor *x, int naxes, const int *axes, int keepdim)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_mean: input is NULL");
    uint32_t mask;
    if (!nb__check_float("nb_mean", x) || !axes_mask("nb_mean", x, naxes, axes, &mask)) return NULL;
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++)
        if (mask & (1u << d)) count *= x->shape[d];
    return nb_mul_scalar(sum_mask("nb_mean", x, mask, keepdim), 1.0 / (double)count);
}

nb_tensor *nb_sum_all(nb_tensor *x) { return nb_sum(x, 0, NULL, 0); }
nb_tensor *nb_mean_all(nb_tensor *x) { return nb_mean(x, 0, NULL, 0); }

nb_tensor *nb_sum_to(nb_tensor *x, int ndim, const int64_t *shape)
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
