/* Everyday ops composed from the primitives: roll (two slices joined), repeat and tile (a broadcast
 * between two reshapes), masked_fill, triu and tril (a where with a constant mask). None has a
 * backward rule of its own: their gradients, and gradients of gradients, come from the ops they are
 * made of. Each validates its arguments first, so that messages name it and not the inner ops. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* ---- roll ------------------------------------------------------------------------------------- */

nb_tensor *nb_roll(nb_tensor *x, int64_t shift, int axis)
{
    const char *who = "nb_roll";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    int64_t n = x->shape[ax];
    int64_t s = n ? ((shift % n) + n) % n : 0;
    if (s == 0) return nb__alias(who, x); /* a tensor of its own all the same */
    /* out[i] = x[(i - s) mod n]: the last s elements, then the first n - s */
    nb_tensor *parts[2] = {nb_slice(x, ax, n - s, n, 1), nb_slice(x, ax, 0, n - s, 1)};
    return parts[0] && parts[1] ? nb_concat(2, parts, ax) : NULL;
}

/* ---- repeat and tile -------------------------------------------------------------------------- */

/* x tiled reps[d] times along each dim d (torch.Tensor.repeat); reps has nreps >= x->ndim entries, x's
 * dims aligned to its end. Per repeated dim d: [outer, 1, rest] broadcast to [outer, r, rest]. */
static nb_tensor *repeat(const char *who, nb_tensor *x, int nreps, const int64_t *reps)
{
    int64_t shape[NB_MAX_DIMS], out[NB_MAX_DIMS];
    int lead = nreps - x->ndim;
    for (int d = 0; d < nreps; d++) {
        if (reps[d] < 0)
            return nb__fail(NB_ERR_ARG, "%s: %s: repeat count %lld for dim %d is negative", who, NB_SHP(x),
                            (long long)reps[d], d);
        shape[d] = d < lead ? 1 : x->shape[d - lead];
        out[d] = shape[d];
    }
    for (int d = 0; d < nreps; d++) {
        if (out[d] && reps[d] > (INT64_MAX / 16) / out[d])
            return nb__fail(NB_ERR_SHAPE, "%s: %s repeated: too many elements", who, NB_SHP(x));
        out[d] *= reps[d];
    }
    if (!nb__check_shape(who, nreps, out)) return NULL;
    nb_tensor *cur = nb_reshape(x, nreps, shape);
    for (int d = 0; d < nreps && cur; d++) {
        if (reps[d] == 1) continue;
        int64_t outer = nb__numel(d, shape), rest = nb__numel(nreps - d, shape + d);
        nb_tensor *b = nb_broadcast_to(nb_reshape(cur, 3, (const int64_t[]){outer, 1, rest}), 3,
                                       (const int64_t[]){outer, reps[d], rest});
        shape[d] *= reps[d];
        cur = nb_reshape(b, nreps, shape);
    }
    return cur;
}

nb_tensor *nb_repeat(nb_tensor *x, int nreps, const int64_t *reps)
{
    const char *who = "nb_repeat";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (nreps < x->ndim || nreps > NB_MAX_DIMS || (nreps > 0 && !reps))
        return nb__fail(NB_ERR_ARG, "%s: %d repeat counts for %s: need %d..%d (reps=%p)", who, nreps, NB_SHP(x),
                        x->ndim, NB_MAX_DIMS, (const void *)reps);
    return repeat(who, x, nreps, reps);
}

nb_tensor *nb_tile(nb_tensor *x, int nreps, const int64_t *reps)
{
    const char *who = "nb_tile";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (nreps < 0 || nreps > NB_MAX_DIMS || (nreps > 0 && !reps))
        return nb__fail(NB_ERR_ARG, "%s: %d repeat counts for %s: need 0..%d (reps=%p)", who, nreps, NB_SHP(x),
                        NB_MAX_DIMS, (const void *)reps);
    /* fewer counts than dims: the leading dims are repeated once */
    int64_t full[NB_MAX_DIMS];
    int n = nreps < x->ndim ? x->ndim : nreps;
    for (int d = 0; d < n; d++) full[d] = d < n - nreps ? 1 : reps[d - (n - nreps)];
    return repeat(who, x, n, full);
}

/* ---- masked_fill ------------------------------------------------------------------------------ */

/* A 0-d constant of dtype holding value, which must be exact in it for i64. */
static nb_tensor *fill_value(const char *who, const nb_tensor *x, double value)
{
    if (x->dtype == NB_I64 && !(value >= -9.2e18 && value <= 9.2e18 && value == floor(value)))
        return nb__fail(NB_ERR_ARG, "%s: value %g is not an i64 for %s", who, value, NB_SHP(x));
    return nb__scalar(x->dtype, value);
}

nb_tensor *nb_masked_fill(nb_tensor *x, nb_tensor *mask, double value)
{
    const char *who = "nb_masked_fill";
    if (!x || !mask) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !x ? "input" : "mask");
    if ((unsigned)x->dtype >= NB_DTYPE_COUNT || (unsigned)mask->dtype >= NB_DTYPE_COUNT)
        return nb__fail(NB_ERR_DTYPE, "%s: invalid dtype", who);
    int nd;
    int64_t shape[NB_MAX_DIMS];
    if (!nb__broadcast_shapes(mask->ndim, mask->shape, x->ndim, x->shape, &nd, shape) || nd != x->ndim ||
        nb__numel(nd, shape) != x->numel)
        return nb__fail(NB_ERR_SHAPE, "%s: mask %s does not broadcast to the input's shape %s", who,
                        NB_SHP(mask), NB_SHP(x));
    nb_tensor *v = fill_value(who, x, value);
    if (!v) return NULL;
    /* the mask as 0/1 in x's dtype (non-zero is true; no gradient flows into it) */
    nb_no_grad_begin();
    nb_tensor *m = nb_ne(mask, nb__scalar(mask->dtype, 0.0));
    if (m && m->dtype != x->dtype) m = nb_cast(m, x->dtype);
    nb_no_grad_end();
    return m ? nb_where(m, v, x) : NULL;
}

/* ---- triu and tril ---------------------------------------------------------------------------- */

/* x with the elements of each matrix (the last two dims) outside the band zeroed: upper keeps
 * j - i >= k, lower keeps j - i <= k. */
static nb_tensor *band(const char *who, nb_tensor *x, int64_t k, int upper)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if ((unsigned)x->dtype >= NB_DTYPE_COUNT) return nb__fail(NB_ERR_DTYPE, "%s: invalid dtype", who);
    if (x->ndim < 2) return nb__fail(NB_ERR_SHAPE, "%s: %s: needs at least 2 dims (a matrix or a batch of them)", who, NB_SHP(x));
    int64_t m = x->shape[x->ndim - 2], n = x->shape[x->ndim - 1];
    nb_tensor *mask = nb_zeros(x->dtype, 2, (const int64_t[]){m, n});
    if (!mask) return NULL;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            /* j - i cannot overflow: both are extents below 2^59 */
            bool keep = upper ? j - i >= k : j - i <= k;
            if (keep) nb__set(mask, i * n + j, 1.0);
        }
    return nb_where(mask, x, nb__scalar(x->dtype, 0.0));
}

nb_tensor *nb_triu(nb_tensor *x, int64_t diagonal) { return band("nb_triu", x, diagonal, 1); }
nb_tensor *nb_tril(nb_tensor *x, int64_t diagonal) { return band("nb_tril", x, diagonal, 0); }
