/* Shape ops (reshape as a view; permute, transpose, broadcast_to as copies), casts, detach and tape
 * constants. */
#include "ops.h"
#include "parallel.h"

#include <string.h>

/* ---- tape constants --------------------------------------------------------------------------- */

static nb_tensor *constant(const char *who, nb_dtype dtype, int ndim, const int64_t *shape, double v,
                           const void *data)
{
    nb_tensor *t = nb__tape_tensor(who, dtype, ndim, shape);
    if (!t) return NULL;
    size_t es = nb_dtype_size(dtype);
    if (data)
        memcpy(t->data, data, (size_t)t->numel * es);
    else
        nb__fill(t, v);
    return t;
}

nb_tensor *nb_zeros(nb_dtype dt, int ndim, const int64_t *shape) { return constant("nb_zeros", dt, ndim, shape, 0, NULL); }
nb_tensor *nb_ones(nb_dtype dt, int ndim, const int64_t *shape) { return constant("nb_ones", dt, ndim, shape, 1, NULL); }
nb_tensor *nb_full(nb_dtype dt, int ndim, const int64_t *shape, double v) { return constant("nb_full", dt, ndim, shape, v, NULL); }

nb_tensor *nb_constant(nb_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    if (!data) return nb__fail(NB_ERR_ARG, "nb_constant: data is NULL");
    return constant("nb_constant", dt, ndim, shape, 0, data);
}

nb_tensor *nb_zeros_like(const nb_tensor *x)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_zeros_like: input is NULL");
    if (!nb__live("nb_zeros_like", x)) return NULL;
    return constant("nb_zeros_like", x->dtype, x->ndim, x->shape, 0, NULL);
}

nb_tensor *nb_full_like(const nb_tensor *x, double v)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_full_like: input is NULL");
    if (!nb__live("nb_full_like", x)) return NULL;
    return constant("nb_full_like", x->dtype, x->ndim, x->shape, v, NULL);
}

/* ---- reshape (a view) and detach -------------------------------------------------------------- */

/* d reshape(x) = reshape(dx) back to x's shape */
NB_BW(view)
{
    if (NB_NEED(0)) gin[0] = nb_reshape(g, n->in[0]->ndim, n->in[0]->shape);
}

nb_tensor *nb_reshape(nb_tensor *x, int ndim, const int64_t *shape)
{
    const char *who = "nb_reshape";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (ndim < 0 || ndim > NB_MAX_DIMS || (ndim > 0 && !shape))
        return nb__fail(NB_ERR_SHAPE, "%s: %s to %d dimensions: expected 0..%d", who, NB_SHP(x), ndim,
                        NB_MAX_DIMS);
    int64_t s[NB_MAX_DIMS], known = 1;
    int infer = -1;
    for (int d = 0; d < ndim; d++) {
        s[d] = shape[d];
        if (shape[d] == -1 && infer < 0) {
            infer = d;
            continue;
        }
        if (shape[d] < 0)
            return nb__fail(NB_ERR_SHAPE, "%s: %s to %s: bad extent %lld", who, NB_SHP(x),
                            nb__shape_str(ndim, shape), (long long)shape[d]);
        if (__builtin_mul_overflow(known, shape[d], &known))
            return nb__fail(NB_ERR_SHAPE, "%s: %s to %s: too many elements", who, NB_SHP(x),
                            nb__shape_str(ndim, shape));
    }
    if (infer >= 0) {
        if (known == 0 || x->numel % known != 0)
            return nb__fail(NB_ERR_SHAPE, "%s: %s to %s: cannot infer the -1 extent", who, NB_SHP(x),
                            nb__shape_str(ndim, shape));
        s[infer] = x->numel / known;
        known *= s[infer];
    }
    if (known != x->numel)
        return nb__fail(NB_ERR_SHAPE, "%s: %s (%lld elements) to %s (%lld elements)", who, NB_SHP(x),
                        (long long)x->numel, nb__shape_str(ndim, shape), (long long)known);
    /* an empty target's other extents are bounded as for any tensor ([0, 2^62] is refused) */
    if (!nb__check_shape(who, ndim, s)) return NULL;
    return nb__view(who, x, ndim, s);
}

nb_tensor *nb__view(const char *who, nb_tensor *x, int ndim, const int64_t *shape)
{
    /* no tape to record on: a leaf gets a view that is a leaf of its own */
    if (!nb__current_tape() && (x->flags & NB_TF_LEAF)) return nb__leaf_view(who, x, ndim, shape);
    return nb__apply(who, NB_OP_VIEW, 1, &x, NULL, x->dtype, ndim, shape);
}

nb_tensor *nb__alias(const char *who, nb_tensor *x)
{
    return nb__apply(who, NB_OP_VIEW, 1, &x, NULL, x->dtype, x->ndim, x->shape);
}

nb_tensor *nb_detach(nb_tensor *x)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_detach: input is NULL");
    if (!nb__live("nb_detach", x)) return NULL;
    nb_no_grad_begin();
    nb_tensor *v = nb__apply("nb_detach", NB_OP_VIEW, 1, &x, NULL, x->dtype, x->ndim, x->shape);
    nb_no_grad_end();
    return v;
}

/* ---- permute / transpose ---------------------------------------------------------------------- */

/* out[i_0..i_{n-1}] = x[j] with x's dim perm[d] indexed by i_d */
NB_FW(permute)
{
    const nb_tensor *x = in[0];
    int64_t xs[NB_MAX_DIMS], st[NB_MAX_DIMS], s = 1;
    for (int d = x->ndim - 1; d >= 0; d--) {
        xs[d] = s;
        s *= x->shape[d];
    }
    for (int d = 0; d < x->ndim; d++) st[d] = xs[at->i[d]];
    nb__strided_copy(nb_dtype_size(x->dtype), out->ndim, out->shape, st, x->data, out->data);
}

/* d permute(x, p) = permute(dx, p^-1) */
NB_BW(permute)
{
    if (!NB_NEED(0)) return;
    int inv[NB_MAX_DIMS], nd = n->in[0]->ndim;
    for (int d = 0; d < nd; d++) inv[n->attrs.i[d]] = d;
    gin[0] = nb_permute(g, nd, inv);
}

nb_tensor *nb_permute(nb_tensor *x, int ndim, const int *perm)
{
    const char *who = "nb_permute";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (ndim != x->ndim || (ndim > 0 && !perm))
        return nb__fail(NB_ERR_ARG, "%s: %s: a permutation of %d dims, got %d", who, NB_SHP(x), x->ndim, ndim);
    nb_attrs at = {.i = {0}};
    int64_t shape[NB_MAX_DIMS];
    uint32_t seen = 0;
    for (int d = 0; d < ndim; d++) {
        int p = nb__axis(perm[d], ndim);
        if (p < 0 || (seen & (1u << p)))
            return nb__fail(NB_ERR_ARG, "%s: %s: entry %d of the permutation (%d) is out of range or "
                                        "repeated", who, NB_SHP(x), d, perm[d]);
        seen |= 1u << p;
        at.i[d] = p;
        shape[d] = x->shape[p];
    }
    return nb__apply(who, NB_OP_PERMUTE, 1, &x, &at, x->dtype, ndim, shape);
}

nb_tensor *nb_transpose(nb_tensor *x, int dim0, int dim1)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_transpose: input is NULL");
    if (!nb__live("nb_transpose", x)) return NULL;
    int a = nb__axis(dim0, x->ndim), b = nb__axis(dim1, x->ndim);
    if (a < 0 || b < 0)
        return nb__fail(NB_ERR_ARG, "nb_transpose: dims %d and %d for %s: out of range", dim0, dim1, NB_SHP(x));
    int perm[NB_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) perm[d] = d;
    perm[a] = b;
    perm[b] = a;
    return nb_permute(x, x->ndim, perm);
}

/* ---- broadcast_to ----------------------------------------------------------------------------- */

/* out = x repeated along its extent-1 and missing leading dims */
NB_FW(broadcast)
{
    (void)at;
    const nb_tensor *x = in[0];
    int64_t st[NB_MAX_DIMS], s = 1;
    int lead = out->ndim - x->ndim;
    for (int d = out->ndim - 1; d >= 0; d--) {
        int xd = d - lead;
        if (xd < 0) {
            st[d] = 0;
            continue;
        }
        st[d] = (x->shape[xd] == 1 && out->shape[d] != 1) ? 0 : s;
        s *= x->shape[xd];
    }
    nb__strided_copy(nb_dtype_size(x->dtype), out->ndim, out->shape, st, x->data, out->data);
}

/* d broadcast(x) = sum of dx over the broadcast dims */
NB_BW(broadcast)
{
    if (NB_NEED(0)) gin[0] = nb__sum_to(g, n->in[0]->ndim, n->in[0]->shape);
}

nb_tensor *nb_broadcast_to(nb_tensor *x, int ndim, const int64_t *shape)
{
    const char *who = "nb_broadcast_to";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (ndim < x->ndim || ndim > NB_MAX_DIMS || (ndim > 0 && !shape))
        return nb__fail(NB_ERR_SHAPE, "%s: %s to %d dimensions", who, NB_SHP(x), ndim);
    int lead = ndim - x->ndim;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return nb__fail(NB_ERR_SHAPE, "%s: %s to %s: negative extent", who, NB_SHP(x),
                            nb__shape_str(ndim, shape));
        if (d >= lead && x->shape[d - lead] != 1 && x->shape[d - lead] != shape[d])
            return nb__fail(NB_ERR_SHAPE, "%s: %s does not broadcast to %s", who, NB_SHP(x),
                            nb__shape_str(ndim, shape));
    }
    if (!nb__check_shape(who, ndim, shape)) return NULL;
    if (ndim == x->ndim && nb__numel(ndim, shape) == x->numel) {
        bool same = true;
        for (int d = 0; d < ndim; d++) same = same && shape[d] == x->shape[d];
        if (same) return nb__alias(who, x);
    }
    return nb__apply(who, NB_OP_BROADCAST, 1, &x, NULL, x->dtype, ndim, shape);
}

/* ---- cast ------------------------------------------------------------------------------------- */

#define CAST_LOOP(TO, FROM)                                                                            \
    do {                                                                                               \
        const FROM *s = x->data;                                                                       \
        TO *o = out->data;                                                                             \
        NB_PARALLEL_FOR(x->numel, NB_GRAIN_MEM, lo, hi, { for (int64_t i = lo; i < hi; i++) o[i] = (TO)s[i]; }); \
    } while (0)

/* out = x converted element by element (float to integer truncates toward zero) */
NB_FW(cast)
{
    (void)at;
    const nb_tensor *x = in[0];
    nb_dtype f = x->dtype, t = out->dtype;
    if (f == t) memcpy(out->data, x->data, (size_t)x->numel * nb_dtype_size(f));
    else if (f == NB_F32 && t == NB_F64) CAST_LOOP(double, float);
    else if (f == NB_F64 && t == NB_F32) CAST_LOOP(float, double);
    else if (f == NB_I64 && t == NB_F32) CAST_LOOP(float, int64_t);
    else if (f == NB_I64 && t == NB_F64) CAST_LOOP(double, int64_t);
    else if (f == NB_F32 && t == NB_I64) CAST_LOOP(int64_t, float);
    else if (f == NB_F64 && t == NB_I64) CAST_LOOP(int64_t, double);
}

/* d cast(x) = cast(dx) back to x's dtype */
NB_BW(cast)
{
    if (NB_NEED(0)) gin[0] = nb_cast(g, n->in[0]->dtype);
}

nb_tensor *nb_cast(nb_tensor *x, nb_dtype dtype)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_cast: input is NULL");
    if (!nb__live("nb_cast", x)) return NULL;
    if ((unsigned)dtype >= NB_DTYPE_COUNT)
        return nb__fail(NB_ERR_DTYPE, "nb_cast: %s to invalid dtype %d", NB_SHP(x), (int)dtype);
    /* integer results are not differentiable: no node, even from an input that requires grad */
    if (!nb__is_float(dtype)) {
        nb_no_grad_begin();
        nb_tensor *r = nb__apply("nb_cast", NB_OP_CAST, 1, &x, NULL, dtype, x->ndim, x->shape);
        nb_no_grad_end();
        return r;
    }
    return nb__apply("nb_cast", NB_OP_CAST, 1, &x, NULL, dtype, x->ndim, x->shape);
}
