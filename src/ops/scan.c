/* Scans and orderings: flip, cumsum, cumprod and argsort (the primitives), the linear recurrence that
 * cumprod's gradient is made of, and sort and topk (argsort, then gather: the gradient flows to the
 * values through gather). cumsum and cumprod accumulate in
 * double for f32; on i64 they wrap like two's complement. argsort is stable. Kernels: scan_impl.h,
 * compiled here once per element type. */
#include "ops.h"

#include <string.h>

#define NB_SCAN_LINREC /* the float types only */
#define NB_T float
#define NB_ACC double
#define NB_SFX f32
#define NB_ISNAN(v) ((v) != (v))
#include "scan_impl.h"
#undef NB_T
#undef NB_ACC
#undef NB_SFX

#define NB_T double
#define NB_ACC double
#define NB_SFX f64
#include "scan_impl.h"
#undef NB_T
#undef NB_ACC
#undef NB_SFX
#undef NB_ISNAN
#undef NB_SCAN_LINREC

#define NB_T int64_t
#define NB_ACC uint64_t
#define NB_SFX i64
#define NB_ISNAN(v) 0
#include "scan_impl.h"
#undef NB_T
#undef NB_ACC
#undef NB_SFX
#undef NB_ISNAN

/* t as [outer, t->shape[axis], inner] */
static void around_axis(const nb_tensor *t, int axis, int64_t *outer, int64_t *n, int64_t *inner)
{
    *outer = nb__numel(axis, t->shape);
    *n = t->shape[axis];
    *inner = nb__numel(t->ndim - axis - 1, t->shape + axis + 1);
}

/* The axis argument of an op on x, normalised; -1 with a message naming `who` if out of range. */
static int check_axis(const char *who, const nb_tensor *x, int axis)
{
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    return ax;
}

static bool check_dtype(const char *who, const nb_tensor *x)
{
    if ((unsigned)x->dtype < NB_DTYPE_COUNT) return true;
    nb__fail(NB_ERR_DTYPE, "%s: tensor %s has an invalid dtype", who, NB_SHP(x));
    return false;
}

/* ---- flip ------------------------------------------------------------------------------------- */

/* out = x read backwards along the axes in the mask i[0]: a copy with negative source strides */
NB_FW(flip)
{
    const nb_tensor *x = in[0];
    if (x->numel == 0) return;
    int64_t st[NB_MAX_DIMS], s = 1, off = 0;
    for (int d = x->ndim - 1; d >= 0; d--) {
        bool rev = (at->i[0] >> d) & 1;
        if (rev) off += (x->shape[d] - 1) * s;
        st[d] = rev ? -s : s;
        s *= x->shape[d];
    }
    size_t es = nb_dtype_size(x->dtype);
    nb__strided_copy(es, x->ndim, x->shape, st, (const char *)x->data + (size_t)off * es, out->data);
}

/* flip is its own adjoint: d flip(x) = flip(dout) */
NB_BW(flip)
{
    if (!NB_NEED(0)) return;
    nb_attrs at = n->attrs;
    gin[0] = nb__apply("nb_flip (backward)", NB_OP_FLIP, 1, &g, &at, g->dtype, g->ndim, g->shape);
}

nb_tensor *nb_flip(nb_tensor *x, int naxes, const int *axes)
{
    const char *who = "nb_flip";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    uint32_t mask;
    if (!check_dtype(who, x) || !nb__axes_mask(who, x, naxes, axes, &mask)) return NULL;
    for (int d = 0; d < x->ndim; d++)
        if (x->shape[d] < 2) mask &= ~(1u << d); /* reversing one element changes nothing */
    if (!mask) return nb__alias(who, x); /* a tensor of its own all the same */
    nb_attrs at = {.i = {(int64_t)mask}};
    return nb__apply(who, NB_OP_FLIP, 1, &x, &at, x->dtype, x->ndim, x->shape);
}

/* ---- cumsum and cumprod ----------------------------------------------------------------------- */

/* out [outer, n, inner] = running sum (prod) of x along the axis, from the end when reverse */
static void scan_kernel(nb_tensor *out, const nb_tensor *x, int axis, int prod, int reverse)
{
    int64_t outer, n, inner;
    around_axis(x, axis, &outer, &n, &inner);
    if (out->numel == 0) return;
    void *acc = nb__tape_alloc(out->tape, (size_t)inner * sizeof(double)); /* double and uint64_t: 8 bytes */
    if (!acc) {
        nb__fail(NB_ERR_NOMEM, "%s: out of memory for the accumulator of %s", prod ? "nb_cumprod" : "nb_cumsum",
                 NB_SHP(x));
        return;
    }
    if (x->dtype == NB_F32)
        scan_k_scan_f32(outer, n, inner, x->data, out->data, acc, prod, reverse);
    else if (x->dtype == NB_F64)
        scan_k_scan_f64(outer, n, inner, x->data, out->data, acc, prod, reverse);
    else
        scan_k_scan_i64(outer, n, inner, x->data, out->data, acc, prod, reverse);
}

static nb_tensor *scan_op(const char *who, nb_op_id op, nb_tensor *x, int axis, int reverse)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!check_dtype(who, x)) return NULL;
    int ax = check_axis(who, x, axis);
    if (ax < 0) return NULL;
    nb_attrs at = {.i = {ax, reverse}};
    return nb__apply(who, op, 1, &x, &at, x->dtype, x->ndim, x->shape);
}

/* y_k = sum_{j <= k} x_j along i[0] (sum_{j >= k} when i[1]) */
NB_FW(cumsum) { scan_kernel(out, in[0], (int)at->i[0], 0, (int)at->i[1]); }
/* d y_k / d x_j = [j <= k]: dx_j = sum_{k >= j} dy_k, the running sum from the other end */
NB_BW(cumsum)
{
    if (NB_NEED(0)) gin[0] = scan_op("nb_cumsum (backward)", NB_OP_CUMSUM, g, (int)n->attrs.i[0], !n->attrs.i[1]);
}

nb_tensor *nb_cumsum(nb_tensor *x, int axis) { return scan_op("nb_cumsum", NB_OP_CUMSUM, x, axis, 0); }

/* ---- the linear recurrence behind cumprod's gradient ------------------------------------------ */

/* h [outer, n, inner] = the linear recurrence of a and b along i[0]: h_k = a_k h_{k-1} + b_k, or with
 * i[1], from the end, h_k = a_{k+1} h_{k+1} + b_k (a_0 is never read) */
NB_FW(linrec)
{
    int64_t outer, n, inner;
    around_axis(out, (int)at->i[0], &outer, &n, &inner);
    double *acc = nb__tape_alloc(out->tape, (size_t)inner * sizeof(double));
    if (!acc) {
        nb__fail(NB_ERR_NOMEM, "nb_cumprod (backward): out of memory for the accumulator of %s", NB_SHP(out));
        return;
    }
    if (out->dtype == NB_F32)
        scan_k_linrec_f32(outer, n, inner, in[0]->data, in[1]->data, out->data, acc, (int)at->i[1]);
    else
        scan_k_linrec_f64(outer, n, inner, in[0]->data, in[1]->data, out->data, acc, (int)at->i[1]);
}

/* The recurrence of links a and terms b (same float dtype and shape) along axis. */
static nb_tensor *linrec(nb_tensor *a, nb_tensor *b, int axis, int reverse)
{
    if (!a || !b) return NULL;
    nb_attrs at = {.i = {axis, reverse}};
    nb_tensor *in[2] = {a, b};
    return nb__apply("nb_cumprod (backward)", NB_OP_LINREC, 2, in, &at, b->dtype, b->ndim, b->shape);
}

/* t moved one place towards the end of axis (extent > 0): fill enters at position 0, the last drops. */
static nb_tensor *shift_in(nb_tensor *t, int axis, double fill)
{
    if (!t) return NULL;
    int64_t pads[2 * NB_MAX_DIMS] = {0};
    pads[2 * axis] = 1;
    return nb_pad(nb_slice(t, axis, 0, t->shape[axis] - 1, 1), pads, fill);
}

/* With L = sum(u h), lambda = dL/db runs the recurrence the other way over the same links:
 *   forward  h_k = a_k h_{k-1} + b_k:     lambda_k = u_k + a_{k+1} lambda_{k+1},  dL/da_k = lambda_k h_{k-1};
 *   reverse  h_k = a_{k+1} h_{k+1} + b_k: lambda_k = u_k + a_k lambda_{k-1},      dL/da_k = lambda_{k-1} h_k;
 * dL/da_0 = 0 (never read). Written with itself, so every order of derivative is exact. */
NB_BW(linrec)
{
    int axis = (int)n->attrs.i[0], rev = (int)n->attrs.i[1];
    nb_tensor *h = n->out;
    if (h->shape[axis] == 0) {
        for (int i = 0; i < 2; i++)
            if (NB_NEED(i)) gin[i] = nb_zeros_like(g);
        return;
    }
    nb_tensor *lambda = linrec(n->in[0], g, axis, !rev);
    if (NB_NEED(1)) gin[1] = lambda;
    if (NB_NEED(0)) gin[0] = rev ? nb_mul(shift_in(lambda, axis, 0.0), h) : nb_mul(lambda, shift_in(h, axis, 0.0));
}

/* y_k = prod_{j <= k} x_j along i[0] */
NB_FW(cumprod) { scan_kernel(out, in[0], (int)at->i[0], 1, 0); }
/* dy_i / dx_k = prod_{j <= i, j != k} x_j for k <= i, so with p = cumprod(x)
 *   dx_k = sum_{i >= k} g_i prod_{j <= i, j != k} x_j = E_k F_k,
 *   E_k = prod_{j < k} x_j (p moved one place, 1 entering),  F_k = g_k + x_{k+1} F_{k+1} (the recurrence
 * from the end with links x). No division: exact with any zeros, to every order (the recurrence's rule
 * is written with itself), and the graph of each order is a fixed handful of ops whatever the zeros. */
NB_BW(cumprod)
{
    if (!NB_NEED(0)) return;
    int axis = (int)n->attrs.i[0];
    nb_tensor *x = n->in[0];
    if (x->shape[axis] == 0) {
        gin[0] = nb_zeros_like(g);
        return;
    }
    gin[0] = nb_mul(shift_in(n->out, axis, 1.0), linrec(x, g, axis, 1));
}

nb_tensor *nb_cumprod(nb_tensor *x, int axis) { return scan_op("nb_cumprod", NB_OP_CUMPROD, x, axis, 0); }

/* ---- argsort, sort, topk ---------------------------------------------------------------------- */

/* out [outer, n, inner] (i64) = positions along i[0] in sorted order, descending when i[1]; stable */
NB_FW(argsort)
{
    const nb_tensor *x = in[0];
    int64_t outer, n, inner;
    around_axis(x, (int)at->i[0], &outer, &n, &inner);
    if (out->numel == 0) return;
    size_t es = nb_dtype_size(x->dtype);
    void *v = nb__tape_alloc(out->tape, (size_t)n * es);
    int64_t *a = nb__tape_alloc(out->tape, (size_t)n * sizeof(int64_t));
    int64_t *b = nb__tape_alloc(out->tape, (size_t)n * sizeof(int64_t));
    if (!v || !a || !b) {
        nb__fail(NB_ERR_NOMEM, "nb_argsort: out of memory for the scratch of %s", NB_SHP(x));
        return;
    }
    int desc = (int)at->i[1];
    if (x->dtype == NB_F32)
        scan_k_argsort_f32(outer, n, inner, x->data, out->data, v, a, b, desc);
    else if (x->dtype == NB_F64)
        scan_k_argsort_f64(outer, n, inner, x->data, out->data, v, a, b, desc);
    else
        scan_k_argsort_i64(outer, n, inner, x->data, out->data, v, a, b, desc);
}

static nb_tensor *argsort_op(const char *who, nb_tensor *x, int ax, int descending)
{
    nb_attrs at = {.i = {ax, descending ? 1 : 0}};
    return nb__apply(who, NB_OP_ARGSORT, 1, &x, &at, NB_I64, x->ndim, x->shape);
}

nb_tensor *nb_argsort(nb_tensor *x, int axis, int descending)
{
    const char *who = "nb_argsort";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!check_dtype(who, x)) return NULL;
    int ax = check_axis(who, x, axis);
    return ax < 0 ? NULL : argsort_op(who, x, ax, descending);
}

nb_tensor *nb_sort(nb_tensor *x, int axis, int descending, nb_tensor **indices)
{
    const char *who = "nb_sort";
    if (indices) *indices = NULL;
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!check_dtype(who, x)) return NULL;
    int ax = check_axis(who, x, axis);
    if (ax < 0) return NULL;
    nb_tensor *idx = argsort_op(who, x, ax, descending);
    nb_tensor *v = idx ? nb_gather(x, ax, idx) : NULL;
    if (v && indices) *indices = idx;
    return v;
}

nb_tensor *nb_topk(nb_tensor *x, int64_t k, int axis, int largest, nb_tensor **indices)
{
    const char *who = "nb_topk";
    if (indices) *indices = NULL;
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!check_dtype(who, x)) return NULL;
    int ax = check_axis(who, x, axis);
    if (ax < 0) return NULL;
    if (k < 0 || k > x->shape[ax])
        return nb__fail(NB_ERR_ARG, "%s: k = %lld for %s along axis %d of extent %lld: need 0 <= k <= %lld", who,
                        (long long)k, NB_SHP(x), axis, (long long)x->shape[ax], (long long)x->shape[ax]);
    nb_tensor *idx = nb_slice(argsort_op(who, x, ax, largest), ax, 0, k, 1);
    nb_tensor *v = idx ? nb_gather(x, ax, idx) : NULL;
    if (v && indices) *indices = idx;
    return v;
}
