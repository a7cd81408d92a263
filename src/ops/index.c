/* Shape and indexing ops: slice and its adjoint slice_embed, pad, concat, index_select and its adjoint
 * index_add, gather and its adjoint scatter_add; and the compositions built on them (stack, split,
 * chunk, squeeze, unsqueeze, one_hot). Copies are generic over the element size, so f32, f64 and i64
 * data all work; the adjoints add values and are float-only, accumulating in double. Indices are i64
 * and are checked against their extent before any op runs. */
#include "ops.h"
#include "parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared helpers --------------------------------------------------------------------------- */

/* Row-major element strides of a contiguous tensor of the given shape. */
static void contiguous_strides(int ndim, const int64_t *shape, int64_t *st)
{
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        st[d] = s;
        s *= shape[d];
    }
}

/* t viewed as [outer, t->shape[axis], inner]. */
static void around_axis(const nb_tensor *t, int axis, int64_t *outer, int64_t *inner)
{
    *outer = nb__numel(axis, t->shape);
    *inner = nb__numel(t->ndim - axis - 1, t->shape + axis + 1);
}

/* The scatter counterpart of nb__strided_copy: dst[sum_d i_d st[d]] = src[i] for every index i of
 * shape, src contiguous [shape], dst strided (element strides st); elements of esize bytes (4 or 8). */
static void strided_place(size_t esize, int ndim, const int64_t *shape, const int64_t *st, const void *src,
                          void *dst)
{
    nb__strided_copy2(esize, ndim, shape, NULL, src, st, dst);
}

/* Accumulator for the adds of index_add and scatter_add: out's own buffer for f64, a double scratch
 * on the tape for f32 (acc_finish rounds it into out); zeroed. NULL, with out zeroed and an error
 * recorded, when out of memory. */
static double *acc_begin(const char *who, nb_tensor *out)
{
    size_t bytes = (size_t)out->numel * sizeof(double);
    double *acc = out->dtype == NB_F64 ? out->data : nb__tape_alloc(out->tape, bytes);
    if (!acc) {
        memset(out->data, 0, (size_t)out->numel * nb_dtype_size(out->dtype));
        nb__fail(NB_ERR_NOMEM, "%s: out of memory for the accumulator of %s", who, NB_SHP(out));
        return NULL;
    }
    memset(acc, 0, bytes);
    return acc;
}

static void acc_finish(nb_tensor *out, const double *acc)
{
    if (out->dtype != NB_F32) return;
    float *o = out->data;
    NB_PARALLEL_FOR(out->numel, NB_GRAIN_MEM, lo, hi, { for (int64_t i = lo; i < hi; i++) o[i] = (float)acc[i]; });
}

/* Check that idx is an i64 tensor whose entries lie in [0, extent), extent being dim `axis` of `shape`
 * (the tensor indexed). Records a message naming `who` and the first bad index otherwise. */
static bool check_indices(const char *who, const nb_tensor *idx, int ndim, const int64_t *shape, int axis)
{
    if (!nb__live(who, idx)) return false;
    if (idx->dtype != NB_I64) {
        nb__fail(NB_ERR_DTYPE, "%s: idx is %s %s: expected i64", who, nb_dtype_name(idx->dtype), NB_SHP(idx));
        return false;
    }
    const int64_t *ix = idx->data;
    for (int64_t e = 0; e < idx->numel; e++) {
        if (ix[e] < 0 || ix[e] >= shape[axis]) {
            nb__fail(NB_ERR_ARG, "%s: index %lld out of range for extent %lld of %s along axis %d", who,
                     (long long)ix[e], (long long)shape[axis], nb__shape_str(ndim, shape), axis);
            return false;
        }
    }
    return true;
}

/* ---- slice and slice_embed -------------------------------------------------------------------- */

/* out [.., m, ..] = x [.., n, ..] at start, start + step, ... along axis (i[0], i[1], i[2]) */
NB_FW(slice)
{
    const nb_tensor *x = in[0];
    if (out->numel == 0) return;
    int axis = (int)at->i[0];
    size_t es = nb_dtype_size(x->dtype);
    int64_t st[NB_MAX_DIMS];
    contiguous_strides(x->ndim, x->shape, st);
    const char *base = (const char *)x->data + (size_t)(at->i[1] * st[axis]) * es;
    st[axis] *= at->i[2];
    nb__strided_copy(es, out->ndim, out->shape, st, base, out->data);
}

/* Zeros of shape with g placed at start, start + step, ... along axis: the adjoint of a slice. */
static nb_tensor *slice_embed(const char *who, nb_tensor *g, int ndim, const int64_t *shape, int axis,
                              int64_t start, int64_t step)
{
    if (!g) return nb__fail(NB_ERR_ARG, "%s: gradient is NULL", who);
    nb_attrs at = {.i = {axis, start, step}};
    return nb__apply(who, NB_OP_SLICE_EMBED, 1, &g, &at, g->dtype, ndim, shape);
}

/* d slice(x) = slice_embed(dout): each output element came from one element of x, the rest get 0 */
NB_BW(slice)
{
    if (!NB_NEED(0)) return;
    const nb_tensor *x = n->in[0];
    gin[0] = slice_embed("nb_slice (backward)", g, x->ndim, x->shape, (int)n->attrs.i[0], n->attrs.i[1],
                         n->attrs.i[2]);
}

/* out [.., n, ..] = 0 except out[.., start + k step, ..] = x [.., m, ..][.., k, ..] along axis */
/* A slice that is one contiguous block of x (nothing outside the axis varies faster, step 1, or a
 * single index) shares x's memory instead of copying. */
void *nb__view_slice(nb_tensor *const *in, const nb_attrs *at)
{
    const nb_tensor *x = in[0];
    int axis = (int)at->i[0];
    int64_t outer, inner;
    around_axis(x, axis, &outer, &inner);
    if (outer != 1 || (at->i[2] != 1 && at->i[3] > 1)) return NULL;
    return (char *)x->data + (size_t)(at->i[1] * inner) * nb_dtype_size(x->dtype);
}

/* Without a graph: add g into its region of the gradient of x (a slice of a long sequence would
 * otherwise embed every step's piece into a zero tensor of the whole sequence's size). */
bool nb__into_slice(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    nb_tensor *dst = nb__sink_slot(sink, 0, NULL);
    if (!dst || g->numel == 0) return true;
    int axis = (int)n->attrs.i[0];
    int64_t st[NB_MAX_DIMS];
    contiguous_strides(dst->ndim, dst->shape, st);
    int64_t base = n->attrs.i[1] * st[axis];
    st[axis] *= n->attrs.i[2];
    if (dst->dtype == NB_F32)
        nb_k_add_strided_f32(g->ndim, g->shape, st, g->data, (float *)dst->data + base);
    else
        nb_k_add_strided_f64(g->ndim, g->shape, st, g->data, (double *)dst->data + base);
    return true;
}

NB_FW(slice_embed)
{
    const nb_tensor *x = in[0];
    size_t es = nb_dtype_size(out->dtype);
    memset(out->data, 0, (size_t)out->numel * es);
    if (x->numel == 0) return;
    int axis = (int)at->i[0];
    int64_t st[NB_MAX_DIMS];
    contiguous_strides(out->ndim, out->shape, st);
    char *base = (char *)out->data + (size_t)(at->i[1] * st[axis]) * es;
    st[axis] *= at->i[2];
    strided_place(es, x->ndim, x->shape, st, x->data, base);
}

/* d slice_embed(x) = slice(dout) at the same positions: the adjoint of the adjoint */
NB_BW(slice_embed)
{
    if (!NB_NEED(0)) return;
    int axis = (int)n->attrs.i[0];
    int64_t start = n->attrs.i[1], step = n->attrs.i[2], m = n->in[0]->shape[axis];
    gin[0] = nb_slice(g, axis, start, m ? start + (m - 1) * step + 1 : start, step);
}

/* Python's clamping of a slice bound against extent n: negative counts from the end. */
static int64_t clamp_bound(int64_t b, int64_t n)
{
    if (b < 0) b += n;
    return b < 0 ? 0 : b > n ? n : b;
}

nb_tensor *nb_slice(nb_tensor *x, int axis, int64_t start, int64_t stop, int64_t step)
{
    const char *who = "nb_slice";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    if (step <= 0)
        return nb__fail(NB_ERR_ARG, "%s: step %lld along axis %d of %s: must be positive", who,
                        (long long)step, axis, NB_SHP(x));
    int64_t n = x->shape[ax], b = clamp_bound(start, n), e = clamp_bound(stop, n);
    int64_t m = e > b ? (e - b - 1) / step + 1 : 0;
    if (m == n) return nb__alias(who, x); /* the whole axis: a view */
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[ax] = m;
    nb_attrs at = {.i = {ax, b, step, m}};
    return nb__apply(who, NB_OP_SLICE, 1, &x, &at, x->dtype, x->ndim, shape);
}

nb_status nb_split(nb_tensor *x, int axis, int n, const int64_t *sizes, nb_tensor **outs)
{
    const char *who = "nb_split";
    if (!outs) return nb__fail_status(NB_ERR_ARG, "%s: outs is NULL", who);
    for (int i = 0; i < n; i++) outs[i] = NULL;
    if (!x) return nb__fail_status(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return nb_error_code();
    if (n < 1 || !sizes)
        return nb__fail_status(NB_ERR_ARG, "%s: %s into %d pieces with sizes=%p", who, NB_SHP(x), n,
                               (const void *)sizes);
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) return nb__fail_status(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    int64_t extent = x->shape[ax], sum = 0;
    for (int i = 0; i < n; i++) {
        if (sizes[i] < 0 || sizes[i] > extent - sum)
            return nb__fail_status(NB_ERR_SHAPE, "%s: size %lld of piece %d does not fit: the sizes must "
                                   "be >= 0 and sum to the extent %lld of %s along axis %d", who,
                                   (long long)sizes[i], i, (long long)extent, NB_SHP(x), axis);
        sum += sizes[i];
    }
    if (sum != extent)
        return nb__fail_status(NB_ERR_SHAPE, "%s: sizes sum to %lld, not to the extent %lld of %s along "
                               "axis %d", who, (long long)sum, (long long)extent, NB_SHP(x), axis);
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        outs[i] = nb_slice(x, ax, off, off + sizes[i], 1);
        if (!outs[i]) {
            for (int j = 0; j < i; j++) outs[j] = NULL;
            return nb_error_code();
        }
        off += sizes[i];
    }
    return NB_OK;
}

int nb_chunk(nb_tensor *x, int n, int axis, nb_tensor **outs)
{
    const char *who = "nb_chunk";
    for (int i = 0; outs && i < n; i++) outs[i] = NULL;
    if (!x || !outs) {
        nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !x ? "input" : "outs");
        return -1;
    }
    if (!nb__live(who, x)) return -1;
    if (n < 1) {
        nb__fail(NB_ERR_ARG, "%s: %s into %d pieces: need at least 1", who, NB_SHP(x), n);
        return -1;
    }
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) {
        nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
        return -1;
    }
    int64_t extent = x->shape[ax], size = (extent + n - 1) / n;
    int pieces = size ? (int)((extent + size - 1) / size) : 1;
    for (int i = 0; i < pieces; i++) {
        int64_t b = i * size, e = b + size < extent ? b + size : extent;
        outs[i] = nb_slice(x, ax, b, e, 1);
        if (!outs[i]) {
            for (int j = 0; j < i; j++) outs[j] = NULL;
            return -1;
        }
    }
    return pieces;
}

/* ---- squeeze / unsqueeze (views) -------------------------------------------------------------- */

nb_tensor *nb_squeeze(nb_tensor *x, int axis)
{
    const char *who = "nb_squeeze";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    if (x->shape[ax] != 1)
        return nb__fail(NB_ERR_SHAPE, "%s: axis %d of %s has extent %lld, not 1", who, axis, NB_SHP(x),
                        (long long)x->shape[ax]);
    int64_t shape[NB_MAX_DIMS];
    for (int d = 0, k = 0; d < x->ndim; d++)
        if (d != ax) shape[k++] = x->shape[d];
    return nb__view(who, x, x->ndim - 1, shape);
}

nb_tensor *nb_unsqueeze(nb_tensor *x, int axis)
{
    const char *who = "nb_unsqueeze";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (x->ndim >= NB_MAX_DIMS)
        return nb__fail(NB_ERR_SHAPE, "%s: %s already has the most dimensions, %d", who, NB_SHP(x), NB_MAX_DIMS);
    int ax = nb__axis(axis, x->ndim + 1);
    if (ax < 0)
        return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for inserting into %s", who, axis, NB_SHP(x));
    int64_t shape[NB_MAX_DIMS];
    for (int d = 0, k = 0; d <= x->ndim; d++) shape[d] = d == ax ? 1 : x->shape[k++];
    return nb__view(who, x, x->ndim + 1, shape);
}

/* ---- pad -------------------------------------------------------------------------------------- */

/* out [.., before_d + n_d + after_d, ..] = f[0] except x [.., n_d, ..] placed at offsets i[d] */
NB_FW(pad)
{
    const nb_tensor *x = in[0];
    nb__fill(out, at->f[0]);
    if (x->numel == 0) return;
    size_t es = nb_dtype_size(x->dtype);
    int64_t st[NB_MAX_DIMS], off = 0;
    contiguous_strides(out->ndim, out->shape, st);
    for (int d = 0; d < out->ndim; d++) off += at->i[d] * st[d];
    strided_place(es, x->ndim, x->shape, st, x->data, (char *)out->data + (size_t)off * es);
}

/* d pad(x) = the window of dout where x was placed: one slice per dim (whole dims cost nothing) */
NB_BW(pad)
{
    if (!NB_NEED(0)) return;
    const nb_tensor *x = n->in[0];
    nb_tensor *r = g;
    for (int d = 0; d < x->ndim && r; d++) r = nb_slice(r, d, n->attrs.i[d], n->attrs.i[d] + x->shape[d], 1);
    gin[0] = r;
}

nb_tensor *nb_pad(nb_tensor *x, const int64_t *pads, double value)
{
    const char *who = "nb_pad";
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (x->ndim > 0 && !pads) return nb__fail(NB_ERR_ARG, "%s: pads is NULL for %s", who, NB_SHP(x));
    if (x->dtype == NB_I64 && !(value >= -9.2e18 && value <= 9.2e18 && value == floor(value)))
        return nb__fail(NB_ERR_ARG, "%s: value %g is not an i64 for %s", who, value, NB_SHP(x));
    nb_attrs at = {.f = {value}};
    int64_t shape[NB_MAX_DIMS];
    bool any = false;
    for (int d = 0; d < x->ndim; d++) {
        int64_t b = pads[2 * d], a = pads[2 * d + 1];
        if (b < 0 || a < 0 || b > INT64_MAX / 4 || a > INT64_MAX / 4)
            return nb__fail(NB_ERR_ARG, "%s: pads %lld, %lld of dim %d of %s: expected >= 0", who,
                            (long long)b, (long long)a, d, NB_SHP(x));
        at.i[d] = b;
        shape[d] = b + x->shape[d] + a;
        any = any || b || a;
    }
    if (!any) return nb__alias(who, x);
    if (!nb__check_shape(who, x->ndim, shape)) return NULL;
    return nb__apply(who, NB_OP_PAD, 1, &x, &at, x->dtype, x->ndim, shape);
}

/* ---- concat and stack ------------------------------------------------------------------------- */

/* out [.., sum_i n_i, ..] = in[0] [.., n_0, ..], ..., in[k-1] one after another along axis i[0]
 * (k = i[1]); each out row of the [outer, *] view is the inputs' rows [outer, n_i * inner] in turn */
NB_FW(concat)
{
    int axis = (int)at->i[0], k = (int)at->i[1];
    size_t es = nb_dtype_size(out->dtype);
    int64_t outer, inner;
    around_axis(out, axis, &outer, &inner);
    size_t out_row = (size_t)(out->shape[axis] * inner) * es;
    NB_PARALLEL_PIECES(nb__threads_for(out->numel, NB_GRAIN_MEM), outer, lo, hi, {
        char *o = (char *)out->data + (size_t)lo * out_row;
        for (int64_t r = lo; r < hi; r++) {
            for (int i = 0; i < k; i++) {
                size_t bytes = (size_t)(in[i]->shape[axis] * inner) * es;
                memcpy(o, (const char *)in[i]->data + (size_t)r * bytes, bytes);
                o += bytes;
            }
        }
    });
}

/* d concat(x_0, .., x_{k-1}) = concat(dx_0, ..): input i's gradient is its own block of dout */
NB_BW(concat)
{
    int axis = (int)n->attrs.i[0];
    int64_t off = 0;
    for (int i = 0; i < n->n_in; i++) {
        int64_t e = n->in[i]->shape[axis];
        if (NB_NEED(i)) gin[i] = nb_slice(g, axis, off, off + e, 1);
        off += e;
    }
}

nb_tensor *nb_concat(int n, nb_tensor *const *xs, int axis)
{
    const char *who = "nb_concat";
    if (n < 1 || !xs) return nb__fail(NB_ERR_ARG, "%s: %d inputs with xs=%p: need at least 1", who, n,
                                      (const void *)xs);
    for (int i = 0; i < n; i++)
        if (!xs[i]) return nb__fail(NB_ERR_ARG, "%s: input %d is NULL", who, i);
    for (int i = 0; i < n; i++)
        if (!nb__live(who, xs[i])) return NULL;
    const nb_tensor *x0 = xs[0];
    if (x0->ndim == 0) return nb__fail(NB_ERR_SHAPE, "%s: input 0 is 0-d: nothing to join along (use nb_stack)", who);
    int ax = nb__axis(axis, x0->ndim);
    if (ax < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x0));
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, x0->shape, sizeof shape);
    shape[ax] = 0;
    for (int i = 0; i < n; i++) {
        const nb_tensor *x = xs[i];
        if (x->dtype != x0->dtype)
            return nb__fail(NB_ERR_DTYPE, "%s: input %d is %s %s, input 0 is %s %s", who, i,
                            nb_dtype_name(x->dtype), NB_SHP(x), nb_dtype_name(x0->dtype), NB_SHP(x0));
        bool fits = x->ndim == x0->ndim;
        for (int d = 0; d < x0->ndim && fits; d++) fits = d == ax || x->shape[d] == x0->shape[d];
        if (!fits)
            return nb__fail(NB_ERR_SHAPE, "%s: input %d %s does not match %s outside axis %d", who, i,
                            NB_SHP(x), NB_SHP(x0), axis);
        if (x->shape[ax] > INT64_MAX / 16 - shape[ax])
            return nb__fail(NB_ERR_SHAPE, "%s: the extents along axis %d add up to too many", who, axis);
        shape[ax] += x->shape[ax];
    }
    if (n == 1) return nb__alias(who, xs[0]);
    nb_attrs at = {.i = {ax, n}};
    return nb__apply(who, NB_OP_CONCAT, n, xs, &at, x0->dtype, x0->ndim, shape);
}

nb_tensor *nb_stack(int n, nb_tensor *const *xs, int axis)
{
    const char *who = "nb_stack";
    if (n < 1 || !xs) return nb__fail(NB_ERR_ARG, "%s: %d inputs with xs=%p: need at least 1", who, n,
                                      (const void *)xs);
    for (int i = 0; i < n; i++)
        if (!xs[i]) return nb__fail(NB_ERR_ARG, "%s: input %d is NULL", who, i);
    for (int i = 0; i < n; i++)
        if (!nb__live(who, xs[i])) return NULL;
    const nb_tensor *x0 = xs[0];
    for (int i = 1; i < n; i++) {
        if (xs[i]->dtype != x0->dtype)
            return nb__fail(NB_ERR_DTYPE, "%s: input %d is %s %s, input 0 is %s %s", who, i,
                            nb_dtype_name(xs[i]->dtype), NB_SHP(xs[i]), nb_dtype_name(x0->dtype), NB_SHP(x0));
        if (!nb__same_shape(xs[i], x0))
            return nb__fail(NB_ERR_SHAPE, "%s: input %d %s does not match input 0 %s", who, i, NB_SHP(xs[i]),
                            NB_SHP(x0));
    }
    if (x0->ndim >= NB_MAX_DIMS)
        return nb__fail(NB_ERR_SHAPE, "%s: inputs %s already have the most dimensions, %d", who, NB_SHP(x0),
                        NB_MAX_DIMS);
    int ax = nb__axis(axis, x0->ndim + 1);
    if (ax < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for stacking %s", who, axis, NB_SHP(x0));
    nb_tape *tape = nb__current_tape();
    if (!tape) return nb__fail(NB_ERR_STATE, "%s: no current tape (call nb_tape_begin first)", who);
    nb_tensor **u = nb__tape_alloc(tape, (size_t)n * sizeof *u);
    if (!u) return nb__fail(NB_ERR_NOMEM, "%s: out of memory for %d inputs", who, n);
    int64_t shape[NB_MAX_DIMS];
    for (int d = 0, k = 0; d <= x0->ndim; d++) shape[d] = d == ax ? 1 : x0->shape[k++];
    for (int i = 0; i < n; i++)
        if (!(u[i] = nb__view(who, xs[i], x0->ndim + 1, shape))) return NULL;
    return nb_concat(n, u, ax);
}

/* ---- index_select and index_add --------------------------------------------------------------- */

/* out [outer, m, inner] row k = x [outer, n, inner] row idx[k]; idx [m] (i64), axis i[0] */
NB_FW(index_select)
{
    const nb_tensor *x = in[0], *idx = in[1];
    int axis = (int)at->i[0];
    int64_t outer, inner, n = x->shape[axis], m = idx->numel;
    around_axis(x, axis, &outer, &inner);
    size_t row = (size_t)inner * nb_dtype_size(x->dtype);
    const int64_t *ix = idx->data;
    /* output rows q = r m + k, each a copy of x's row idx[k] of block r */
    NB_PARALLEL_PIECES(nb__threads_for(out->numel, NB_GRAIN_MEM), outer * m, lo, hi, {
        for (int64_t q = lo; q < hi; q++) {
            int64_t r = q / m, k = q - r * m;
            memcpy((char *)out->data + (size_t)q * row, (const char *)x->data + (size_t)(r * n + ix[k]) * row, row);
        }
    });
}

/* Zeros of shape with src's rows added at idx along axis (repeats add up): the adjoint of
 * index_select. */
static nb_tensor *index_add(const char *who, int ndim, const int64_t *shape, int axis, nb_tensor *idx,
                            nb_tensor *src)
{
    if (!idx || !src) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !idx ? "idx" : "src");
    if (!nb__check_float(who, src) || !check_indices(who, idx, ndim, shape, axis)) return NULL;
    nb_tensor *in[2] = {idx, src};
    nb_attrs at = {.i = {axis}};
    return nb__apply(who, NB_OP_INDEX_ADD, 2, in, &at, src->dtype, ndim, shape);
}

/* d index_select(x, idx) = index_add(dout): row k of dout goes back to row idx[k] of x, repeats add */
NB_BW(index_select)
{
    if (!NB_NEED(0)) return;
    const nb_tensor *x = n->in[0];
    gin[0] = index_add("nb_index_select (backward)", x->ndim, x->shape, (int)n->attrs.i[0], n->in[1], g);
}

/* Threads split the blocks r of [outer, ., inner] when there are several, else the columns j < inner:
 * every output element gets its rows k in order, whatever the split. */
#define INDEX_ADD_ROWS(T, ACC, dst, n_ax)                                                              \
    do {                                                                                               \
        const T *s0 = src_data;                                                                        \
        const int64_t units = outer > 1 ? outer : inner;                                               \
        NB_PARALLEL_PIECES(nb__threads_for(outer * m * inner, NB_GRAIN_MEM), units, lo, hi, {          \
            const int64_t r0 = outer > 1 ? lo : 0, r1 = outer > 1 ? hi : outer;                        \
            const int64_t j0 = outer > 1 ? 0 : lo, j1 = outer > 1 ? inner : hi;                        \
            for (int64_t r = r0; r < r1; r++)                                                          \
                for (int64_t k = 0; k < m; k++) {                                                      \
                    const T *s = s0 + (r * m + k) * inner;                                             \
                    ACC *a = (dst) + (r * (n_ax) + ix[k]) * inner;                                     \
                    for (int64_t j = j0; j < j1; j++) a[j] += s[j];                                    \
                }                                                                                      \
        });                                                                                            \
    } while (0)

/* out [outer, n, inner] = 0, then row idx[k] += src [outer, m, inner] row k; idx [m], axis i[0] */
NB_FW(index_add)
{
    const nb_tensor *idx = in[0], *src = in[1];
    int axis = (int)at->i[0];
    int64_t outer, inner, n = out->shape[axis], m = idx->numel;
    around_axis(out, axis, &outer, &inner);
    if (out->numel == 0) return;
    double *acc = acc_begin("nb_index_select (backward)", out);
    if (!acc) return;
    const int64_t *ix = idx->data;
    const void *src_data = src->data;
    if (src->dtype == NB_F32)
        INDEX_ADD_ROWS(float, double, acc, n);
    else
        INDEX_ADD_ROWS(double, double, acc, n);
    acc_finish(out, acc);
}

/* d index_add(idx, src) = index_select(dout, idx): row k of src went to row idx[k] only */
NB_BW(index_add)
{
    if (NB_NEED(1)) gin[1] = nb_index_select(g, (int)n->attrs.i[0], n->in[0]);
}

/* Without a graph: add g [outer, m, inner] row k into the gradient of x at row idx[k] directly,
 * instead of building a zero tensor of x's shape per use (embeddings, per-step slices). The sums are
 * the rule's (index_add): the rows of g that go to one row of x are added in double, in increasing k,
 * from 0, and the total is rounded once and added to the buffer. The k are grouped by target row with
 * a stable sort of (idx[k], k). */
typedef struct idx_pos {
    int64_t row, k;
} idx_pos;

static int idx_pos_cmp(const void *pa, const void *pb)
{
    const idx_pos *a = pa, *b = pb;
    if (a->row != b->row) return a->row < b->row ? -1 : 1;
    return (a->k > b->k) - (a->k < b->k);
}

/* Threads split the columns j < inner (acc[j] is then each thread's own): every sum keeps its order. */
#define INDEX_ADD_INTO(T)                                                                              \
    do {                                                                                               \
        const T *s = g->data;                                                                          \
        T *d = dst->data;                                                                              \
        NB_PARALLEL_PIECES(nb__threads_for(outer * m * inner, NB_GRAIN_MEM), inner, j0, j1, {          \
            for (int64_t r = 0; r < outer; r++) {                                                      \
                for (int64_t a = 0; a < m;) {                                                          \
                    int64_t e = a, row = pos[a].row;                                                   \
                    while (e < m && pos[e].row == row) e++;                                            \
                    for (int64_t j = j0; j < j1; j++) acc[j] = 0;                                      \
                    for (int64_t q = a; q < e; q++) {                                                  \
                        const T *sr = s + (r * m + pos[q].k) * inner;                                  \
                        for (int64_t j = j0; j < j1; j++) acc[j] += sr[j];                             \
                    }                                                                                  \
                    T *dr = d + (r * n_ax + row) * inner;                                              \
                    for (int64_t j = j0; j < j1; j++) dr[j] += (T)acc[j];                              \
                    a = e;                                                                             \
                }                                                                                      \
            }                                                                                          \
        });                                                                                            \
    } while (0)

bool nb__into_index_select(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    nb_tensor *dst = nb__sink_slot(sink, 0, NULL);
    if (!dst || g->numel == 0) return true;
    int axis = (int)n->attrs.i[0];
    const int64_t *ix = n->in[1]->data;
    int64_t outer, inner, n_ax = dst->shape[axis], m = n->in[1]->numel;
    around_axis(dst, axis, &outer, &inner);
    nb_tape *tape = nb__current_tape(); /* the backward's tape */
    idx_pos *pos = nb__tape_alloc(tape, (size_t)m * sizeof *pos);
    double *acc = nb__tape_alloc(tape, (size_t)inner * sizeof *acc);
    if (!pos || !acc) {
        nb__fail(NB_ERR_NOMEM, "nb_index_select (backward): out of memory");
        return true;
    }
    for (int64_t k = 0; k < m; k++) pos[k] = (idx_pos){ix[k], k};
    qsort(pos, (size_t)m, sizeof *pos, idx_pos_cmp);
    if (dst->dtype == NB_F32)
        INDEX_ADD_INTO(float);
    else
        INDEX_ADD_INTO(double);
    return true;
}

nb_tensor *nb_index_select(nb_tensor *x, int axis, nb_tensor *idx)
{
    const char *who = "nb_index_select";
    if (!x || !idx) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !x ? "input" : "idx");
    if (!nb__live(who, x) || !nb__live(who, idx)) return NULL;
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    if (idx->ndim != 1)
        return nb__fail(NB_ERR_SHAPE, "%s: idx %s must be 1-D (indexing %s)", who, NB_SHP(idx), NB_SHP(x));
    if (!check_indices(who, idx, x->ndim, x->shape, ax)) return NULL;
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[ax] = idx->numel;
    nb_tensor *in[2] = {x, idx};
    nb_attrs at = {.i = {ax}};
    return nb__apply(who, NB_OP_INDEX_SELECT, 2, in, &at, x->dtype, x->ndim, shape);
}

/* ---- gather and scatter_add ------------------------------------------------------------------- */

/* A walk over the elements of an index tensor in row-major order (element e = its flat index),
 * tracking `base`: the offset, in a contiguous target of strides st, of the element with e's
 * coordinates and the axis coordinate 0. The element torch.gather addresses is base + idx[e] * sa. */
typedef struct gather_walk {
    int ndim;
    int64_t base, sa;
    int64_t shape[NB_MAX_DIMS], st[NB_MAX_DIMS], c[NB_MAX_DIMS];
} gather_walk;

/* idx [shape] addresses a contiguous target of tshape (same ndim) along axis. */
static void walk_init(gather_walk *w, const nb_tensor *idx, const int64_t *tshape, int axis)
{
    memset(w, 0, sizeof *w);
    w->ndim = idx->ndim;
    memcpy(w->shape, idx->shape, sizeof w->shape);
    contiguous_strides(idx->ndim, tshape, w->st);
    w->sa = w->st[axis];
    w->st[axis] = 0;
}

/* Move the walk to element e (from the start). */
static void walk_seek(gather_walk *w, int64_t e)
{
    w->base = 0;
    for (int d = w->ndim - 1; d >= 0; d--) {
        w->c[d] = w->shape[d] ? e % w->shape[d] : 0;
        e = w->shape[d] ? e / w->shape[d] : 0;
        w->base += w->c[d] * w->st[d];
    }
}

static inline void walk_next(gather_walk *w)
{
    for (int d = w->ndim - 1; d >= 0; d--) {
        w->base += w->st[d];
        if (++w->c[d] < w->shape[d]) return;
        w->base -= w->st[d] * w->shape[d];
        w->c[d] = 0;
    }
}

#define GATHER(T)                                                                                      \
    do {                                                                                               \
        const T *xv = x->data;                                                                         \
        T *o = out->data;                                                                              \
        NB_PARALLEL_FOR(idx->numel, NB_GRAIN_MEM, lo, hi, {                                            \
            gather_walk w = w0;                                                                        \
            if (lo) walk_seek(&w, lo);                                                                 \
            for (int64_t e = lo; e < hi; e++, walk_next(&w)) o[e] = xv[w.base + ix[e] * w.sa];         \
        });                                                                                            \
    } while (0)

/* out [idx's shape] = x [.., n, ..] at e's coordinates with the axis one (i[0]) replaced by idx[e] */
NB_FW(gather)
{
    const nb_tensor *x = in[0], *idx = in[1];
    const int64_t *ix = idx->data;
    gather_walk w0;
    walk_init(&w0, idx, x->shape, (int)at->i[0]);
    if (nb_dtype_size(x->dtype) == 4)
        GATHER(uint32_t);
    else
        GATHER(uint64_t);
}

/* d gather(x, idx) = scatter_add(dout): each output element came from one element of x, repeats add */
NB_BW(gather)
{
    if (!NB_NEED(0)) return;
    const nb_tensor *x = n->in[0];
    gin[0] = nb_scatter_add(x->ndim, x->shape, (int)n->attrs.i[0], n->in[1], g);
}

/* Threads split idx's first dim when it is not the axis (different targets); otherwise serial. */
#define SCATTER_ADD(T)                                                                                 \
    do {                                                                                               \
        const T *s = src->data;                                                                        \
        const int64_t rows = at->i[0] != 0 && idx->ndim > 1 ? idx->shape[0] : 1;                      \
        const int64_t per = rows ? idx->numel / rows : 0;                                              \
        NB_PARALLEL_PIECES(nb__threads_for(idx->numel, NB_GRAIN_MEM), rows, lo, hi, {                  \
            gather_walk w = w0;                                                                        \
            if (lo) walk_seek(&w, lo * per);                                                           \
            for (int64_t e = lo * per; e < hi * per; e++, walk_next(&w)) acc[w.base + ix[e] * w.sa] += s[e]; \
        });                                                                                            \
    } while (0)

/* out [shape] = 0, then out at e's coordinates with the axis one (i[0]) replaced by idx[e] += src[e];
 * idx and src of one shape */
NB_FW(scatter_add)
{
    const nb_tensor *idx = in[0], *src = in[1];
    if (out->numel == 0) return;
    double *acc = acc_begin("nb_scatter_add", out);
    if (!acc) return;
    const int64_t *ix = idx->data;
    gather_walk w0;
    walk_init(&w0, idx, out->shape, (int)at->i[0]);
    if (src->dtype == NB_F32)
        SCATTER_ADD(float);
    else
        SCATTER_ADD(double);
    acc_finish(out, acc);
}

/* d scatter_add(idx, src) = gather(dout, idx): src[e] went to one element of out only */
NB_BW(scatter_add)
{
    if (NB_NEED(1)) gin[1] = nb_gather(g, (int)n->attrs.i[0], n->in[0]);
}

/* idx (same ndim as the target tshape) fits inside tshape outside axis. */
static bool check_gather_shape(const char *who, const nb_tensor *idx, int ndim, const int64_t *tshape,
                               int axis, const char *what)
{
    bool fits = idx->ndim == ndim;
    for (int d = 0; d < ndim && fits; d++) fits = d == axis || idx->shape[d] <= tshape[d];
    if (!fits)
        nb__fail(NB_ERR_SHAPE, "%s: idx %s does not fit %s %s outside axis %d (same dims, extents at most "
                 "the %s's)", who, NB_SHP(idx), what, nb__shape_str(ndim, tshape), axis, what);
    return fits;
}

nb_tensor *nb_gather(nb_tensor *x, int axis, nb_tensor *idx)
{
    const char *who = "nb_gather";
    if (!x || !idx) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !x ? "input" : "idx");
    if (!nb__live(who, x) || !nb__live(who, idx)) return NULL;
    int ax = nb__axis(axis, x->ndim);
    if (ax < 0) return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, NB_SHP(x));
    if (!check_gather_shape(who, idx, x->ndim, x->shape, ax, "input") ||
        !check_indices(who, idx, x->ndim, x->shape, ax))
        return NULL;
    nb_tensor *in[2] = {x, idx};
    nb_attrs at = {.i = {ax}};
    return nb__apply(who, NB_OP_GATHER, 2, in, &at, x->dtype, idx->ndim, idx->shape);
}

nb_tensor *nb_scatter_add(int ndim, const int64_t *shape, int axis, nb_tensor *idx, nb_tensor *src)
{
    const char *who = "nb_scatter_add";
    if (!idx || !src) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !idx ? "idx" : "src");
    if (!nb__live(who, idx) || !nb__live(who, src)) return NULL;
    if (ndim < 1 || ndim > NB_MAX_DIMS || !shape)
        return nb__fail(NB_ERR_SHAPE, "%s: target of %d dimensions (shape=%p): expected 1..%d", who, ndim,
                        (const void *)shape, NB_MAX_DIMS);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0)
            return nb__fail(NB_ERR_SHAPE, "%s: target %s has a negative extent", who, nb__shape_str(ndim, shape));
    if (!nb__check_shape(who, ndim, shape)) return NULL;
    int ax = nb__axis(axis, ndim);
    if (ax < 0)
        return nb__fail(NB_ERR_ARG, "%s: axis %d out of range for %s", who, axis, nb__shape_str(ndim, shape));
    if (!nb__check_float(who, src)) return NULL;
    if (!nb__same_shape(idx, src))
        return nb__fail(NB_ERR_SHAPE, "%s: idx %s and src %s differ in shape", who, NB_SHP(idx), NB_SHP(src));
    if (!check_gather_shape(who, idx, ndim, shape, ax, "target") || !check_indices(who, idx, ndim, shape, ax))
        return NULL;
    nb_tensor *in[2] = {idx, src};
    nb_attrs at = {.i = {ax}};
    return nb__apply(who, NB_OP_SCATTER_ADD, 2, in, &at, src->dtype, ndim, shape);
}

/* ---- one_hot (a tape constant) ---------------------------------------------------------------- */

nb_tensor *nb_one_hot(nb_tensor *idx, int64_t num_classes, nb_dtype dtype)
{
    const char *who = "nb_one_hot";
    if (!idx) return nb__fail(NB_ERR_ARG, "%s: idx is NULL", who);
    if (!nb__live(who, idx)) return NULL;
    if (idx->dtype != NB_I64)
        return nb__fail(NB_ERR_DTYPE, "%s: labels are %s %s: expected i64", who, nb_dtype_name(idx->dtype),
                        NB_SHP(idx));
    if (num_classes < 1)
        return nb__fail(NB_ERR_ARG, "%s: %lld classes for labels %s: need at least 1", who,
                        (long long)num_classes, NB_SHP(idx));
    if (idx->ndim >= NB_MAX_DIMS)
        return nb__fail(NB_ERR_SHAPE, "%s: labels %s already have the most dimensions, %d", who, NB_SHP(idx),
                        NB_MAX_DIMS);
    const int64_t *lab = idx->data;
    for (int64_t e = 0; e < idx->numel; e++)
        if (lab[e] < 0 || lab[e] >= num_classes)
            return nb__fail(NB_ERR_ARG, "%s: label %lld at flat position %lld of %s out of range for %lld "
                            "classes", who, (long long)lab[e], (long long)e, NB_SHP(idx),
                            (long long)num_classes);
    int64_t shape[NB_MAX_DIMS];
    memcpy(shape, idx->shape, sizeof shape);
    shape[idx->ndim] = num_classes;
    nb_tensor *out = nb__tape_tensor(who, dtype, idx->ndim + 1, shape);
    if (!out) return NULL;
    nb__fill(out, 0.0);
    for (int64_t e = 0; e < idx->numel; e++) nb__set(out, e * num_classes + lab[e], 1.0);
    return out;
}
