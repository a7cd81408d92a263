/* Pooling: max pooling (its gradient goes to the first maximum of each window, as in PyTorch) and
 * average pooling with its adjoint, plus adaptive average pooling; 1-D forms are the 2-D ones on
 * [N, C, 1, L] views. Max pooling's backward is a scatter of the gradient to the recorded positions
 * (nb_scatter_add, whose own backward is the gather at the same positions); average pooling's is the
 * adjoint op, whose backward is average pooling again. */
#include "cnn.h"

#include <string.h>

#define CNN_CALL(dt, name, ...) ((dt) == NB_F32 ? nb_k_##name##_f32(__VA_ARGS__) : nb_k_##name##_f64(__VA_ARGS__))

/* The geometry between planes of x [N, C, h, w] and y [N, C, ho, wo]; attrs of max pooling:
 * i[0..7] = kernel h, w; stride h, w; padding h, w; dilation h, w. Average pooling: i[0..5] the same
 * without dilation; i[6] = flags (AVG_INCLUDE_PAD, AVG_ADAPTIVE). */
enum { AVG_INCLUDE_PAD = 1, AVG_ADAPTIVE = 2 };

static nb_pool_geom pool_geom(const nb_tensor *x, const nb_tensor *y, const nb_attrs *at, int maxpool)
{
    nb_pool_geom g = {.planes = x->shape[0] * x->shape[1], .h = x->shape[2], .w = x->shape[3], .ho = y->shape[2],
                      .wo = y->shape[3], .kh = at->i[0], .kw = at->i[1], .sh = at->i[2], .sw = at->i[3],
                      .ph = at->i[4], .pw = at->i[5], .dh = 1, .dw = 1};
    if (maxpool) {
        g.dh = at->i[6];
        g.dw = at->i[7];
    } else {
        g.count_include_pad = (at->i[6] & AVG_INCLUDE_PAD) != 0;
        g.adaptive = (at->i[6] & AVG_ADAPTIVE) != 0;
    }
    return g;
}

/* ---- max pooling ------------------------------------------------------------------------------ */

/* out [N, C, ho, wo] = the maximum of each window of x [N, C, h, w]; the i64 tensor p [N, C, ho, wo],
 * when the caller asked for it (else NULL), receives each maximum's flat position r w + c in its plane */
NB_FW(max_pool2d)
{
    nb_pool_geom g = pool_geom(in[0], out, at, 1);
    nb_tensor *idx = (nb_tensor *)at->p;
    CNN_CALL(out->dtype, maxpool_fw, &g, in[0]->data, out->data, idx ? idx->data : NULL);
}

/* y = x at the maxima's positions (a gather per plane): dx = the scatter-add of g to those positions
 * (found again in x when the forward did not record them), whose own backward gathers again */
NB_BW(max_pool2d)
{
    if (!NB_NEED(0)) return;
    const nb_tensor *x = n->in[0];
    nb_tensor *idx = (nb_tensor *)n->attrs.p;
    if (!idx) {
        idx = nb__tape_tensor("nb_max_pool2d", NB_I64, 4, g->shape);
        if (!idx) return;
        nb_pool_geom geo = pool_geom(x, g, &n->attrs, 1);
        CNN_CALL(x->dtype, maxpool_idx, &geo, x->data, idx->data);
    }
    const int64_t planes = x->shape[0] * x->shape[1], out_plane = g->shape[2] * g->shape[3];
    nb_tensor *s = nb_scatter_add(NB_SHAPE(planes, x->shape[2] * x->shape[3]), 1,
                                  nb_reshape(idx, NB_SHAPE(planes, out_plane)), nb_reshape(g, NB_SHAPE(planes, out_plane)));
    gin[0] = nb_reshape(s, x->ndim, x->shape);
}

/* Without a graph: the same scatter straight into the gradient buffer, each window's maximum found
 * again in x (2x2 windows of stride 2 write every element once, no zeroing pass). */
bool nb__into_max_pool2d(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    if (!NB_NEED(0)) return true;
    bool fresh;
    nb_tensor *dx = nb__sink_slot(sink, 0, &fresh);
    if (!dx) return true;
    nb_pool_geom geo = pool_geom(n->in[0], g, &n->attrs, 1);
    CNN_CALL(g->dtype, maxpool_bw, &geo, n->in[0]->data, g->data, dx->data, !fresh);
    return true;
}

/* ---- average pooling and its adjoint ---------------------------------------------------------- */

/* out [N, C, ho, wo] = the mean of each window of x [N, C, h, w] */
NB_FW(avg_pool2d)
{
    nb_pool_geom g = pool_geom(in[0], out, at, 0);
    CNN_CALL(out->dtype, avgpool_fw, &g, in[0]->data, out->data);
}

/* out [N, C, h, w] = each element of x [N, C, ho, wo] divided by its window's divisor and spread over
 * the window (the adjoint of avg_pool2d; out's extents are the pooled input's) */
NB_FW(avg_pool2d_adj)
{
    nb_pool_geom g = pool_geom(out, in[0], at, 0);
    CNN_CALL(out->dtype, avgpool_adj, &g, in[0]->data, out->data);
}

static nb_tensor *avg_raw(nb_op_id op, nb_tensor *x, const nb_attrs *at, int64_t h, int64_t w)
{
    return nb__apply(op == NB_OP_AVG_POOL2D ? "nb_avg_pool2d" : "nb_avg_pool2d_backward", op, 1, &x, at, x->dtype,
                     4, (const int64_t[]){x->shape[0], x->shape[1], h, w});
}

/* both are linear and each other's adjoint: dx = the other applied to g */
NB_BW(avg_pool2d)
{
    if (NB_NEED(0)) gin[0] = avg_raw(NB_OP_AVG_POOL2D_ADJ, g, &n->attrs, n->in[0]->shape[2], n->in[0]->shape[3]);
}

NB_BW(avg_pool2d_adj)
{
    if (NB_NEED(0)) gin[0] = avg_raw(NB_OP_AVG_POOL2D, g, &n->attrs, n->in[0]->shape[2], n->in[0]->shape[3]);
}

/* ---- the public functions --------------------------------------------------------------------- */

nb_pool_opts nb_pool_defaults(void) { return (nb_pool_opts){0}; }

static bool pool_input(const char *who, int dims, const nb_tensor *x)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who), false;
    if (!nb__live(who, x) || !nb__check_float(who, x)) return false; /* stale: named by this call */
    if (x->ndim != dims + 2)
        return nb__fail(NB_ERR_SHAPE, "%s: input %s: expected %d dimensions %s", who, NB_SHP(x), dims + 2,
                        dims == 2 ? "[N, C, H, W]" : "[N, C, L]"), false;
    return true;
}

/* Validate a max (maxpool 1) or average pooling and work out attrs and the 4-D output shape. */
static bool pool_check(const char *who, int dims, int maxpool, const nb_tensor *x, const int64_t *kernel,
                       const nb_pool_opts *opts, nb_attrs *at, int64_t *out4)
{
    if (!pool_input(who, dims, x)) return false;
    nb_pool_opts o = opts ? *opts : nb_pool_defaults();
    const int off = 2 - dims;
    int64_t L[2] = {1, 1}, K[2] = {1, 1}, S[2] = {1, 1}, P[2] = {0, 0}, D[2] = {1, 1}, out[2] = {1, 1};
    for (int d = 0; d < dims; d++) {
        if (kernel[d] < 1)
            return nb__fail(NB_ERR_ARG, "%s: input %s: kernel %s must be at least 1", who, NB_SHP(x),
                            nb__cnn_vals(dims, kernel)), false;
        if (o.stride[d] < 0)
            return nb__fail(NB_ERR_ARG, "%s: input %s: stride %s must not be negative (0: the kernel size)", who,
                            NB_SHP(x), nb__cnn_vals(dims, o.stride)), false;
        if (o.dilation[d] < 0 || (!maxpool && o.dilation[d] > 1))
            return nb__fail(NB_ERR_ARG, "%s: input %s: dilation %s: %s", who, NB_SHP(x), nb__cnn_vals(dims, o.dilation),
                            maxpool ? "must not be negative (0: 1)" : "average pooling has none"), false;
        if (kernel[d] > NB_GEOM_MAX || o.stride[d] > NB_GEOM_MAX || o.dilation[d] > NB_GEOM_MAX)
            return nb__fail(NB_ERR_ARG, "%s: input %s: kernel %s, stride %s, dilation %s: each must be at most 2^61",
                            who, NB_SHP(x), nb__cnn_vals(dims, kernel), nb__cnn_vals(dims, o.stride), nb__cnn_vals(dims, o.dilation)), false;
        if (o.padding[d] < 0 || o.padding[d] > kernel[d] / 2)
            return nb__fail(NB_ERR_ARG, "%s: input %s: padding %s must be between 0 and half the kernel %s", who,
                            NB_SHP(x), nb__cnn_vals(dims, o.padding), nb__cnn_vals(dims, kernel)), false;
        L[d + off] = x->shape[2 + d];
        K[d + off] = kernel[d];
        S[d + off] = o.stride[d] ? o.stride[d] : kernel[d];
        P[d + off] = o.padding[d];
        D[d + off] = o.dilation[d] ? o.dilation[d] : 1;
    }
    for (int d = off; d < 2; d++) {
        const int ud = d - off;
        int64_t span;
        if (!nb__geom_mad(D[d], K[d] - 1, 1, &span))
            return nb__fail(NB_ERR_ARG, "%s: input %s: kernel %s with dilation %s spans more than 2^61", who, NB_SHP(x),
                            nb__cnn_vals(dims, kernel), nb__cnn_vals(dims, o.dilation)), false;
        const int64_t room = L[d] + 2 * P[d] - span; /* each term within 2^61: no overflow */
        const int64_t num = room + (o.ceil_mode ? S[d] - 1 : 0);
        int64_t n = (num >= 0 ? num / S[d] : -nb__cdiv(-num, S[d])) + 1; /* floor division, as PyTorch */
        /* with ceil_mode, a last window that would start past the input's padded beginning is dropped */
        if (o.ceil_mode && n > 0 && (n - 1) * S[d] >= L[d] + P[d]) n--;
        if (n < 1)
            return nb__fail(NB_ERR_SHAPE, "%s: input %s: kernel %s (dilation %s, padding %s) is larger than the "
                            "padded input along spatial dim %d", who, NB_SHP(x), nb__cnn_vals(dims, kernel),
                            nb__cnn_vals(dims, o.dilation), nb__cnn_vals(dims, o.padding), ud), false;
        out[d] = n;
        /* every window must reach into the input (a dilated window can skip over a short one) */
        /* (only the windows that start in the padding, and the last one, can: the others start inside) */
        const int64_t in_pad = nb__cdiv(P[d], S[d]);
        for (int64_t w = 0; maxpool && w < n; w++) {
            if (w >= in_pad && w < n - 1) w = n - 1;
            const int64_t s = w * S[d] - P[d], i0 = s < 0 ? nb__cdiv(-s, D[d]) : 0;
            if (i0 >= K[d] || s + i0 * D[d] >= L[d])
                return nb__fail(NB_ERR_SHAPE, "%s: input %s: window %lld along spatial dim %d covers only padding "
                                "(kernel %s, dilation %s, padding %s)", who, NB_SHP(x), (long long)w, ud,
                                nb__cnn_vals(dims, kernel), nb__cnn_vals(dims, o.dilation), nb__cnn_vals(dims, o.padding)), false;
        }
    }
    out4[0] = x->shape[0];
    out4[1] = x->shape[1];
    out4[2] = out[0];
    out4[3] = out[1];
    if (maxpool)
        *at = (nb_attrs){.i = {K[0], K[1], S[0], S[1], P[0], P[1], D[0], D[1]}};
    else
        *at = (nb_attrs){.i = {K[0], K[1], S[0], S[1], P[0], P[1], o.exclude_pad ? 0 : AVG_INCLUDE_PAD}};
    return true;
}

static nb_tensor *as4(nb_tensor *x, int dims)
{
    return dims == 2 ? x : nb_reshape(x, NB_SHAPE(x->shape[0], x->shape[1], 1, x->shape[2]));
}

static nb_tensor *unview(nb_tensor *y, int dims)
{
    if (!y || dims == 2) return y;
    return nb_reshape(y, NB_SHAPE(y->shape[0], y->shape[1], y->shape[3]));
}

static nb_tensor *max_pool(const char *who, int dims, nb_tensor *x, const int64_t *kernel, const nb_pool_opts *opts,
                           nb_tensor **indices)
{
    if (indices) *indices = NULL;
    nb_attrs at;
    int64_t out4[4];
    if (!pool_check(who, dims, 1, x, kernel, opts, &at, out4)) return NULL;
    nb_tensor *idx = indices ? nb__tape_tensor(who, NB_I64, 4, out4) : NULL;
    nb_tensor *x4 = as4(x, dims);
    if ((indices && !idx) || !x4) return NULL;
    at.p = idx;
    nb_tensor *y = unview(nb__apply(who, NB_OP_MAX_POOL2D, 1, &x4, &at, x->dtype, 4, out4), dims);
    if (y && indices) *indices = unview(idx, dims);
    return y;
}

nb_tensor *nb_max_pool2d(nb_tensor *x, int64_t kh, int64_t kw, const nb_pool_opts *opts)
{
    return max_pool("nb_max_pool2d", 2, x, (const int64_t[]){kh, kw}, opts, NULL);
}

nb_tensor *nb_max_pool2d_with_indices(nb_tensor *x, int64_t kh, int64_t kw, const nb_pool_opts *opts,
                                      nb_tensor **indices)
{
    return max_pool("nb_max_pool2d_with_indices", 2, x, (const int64_t[]){kh, kw}, opts, indices);
}

nb_tensor *nb_max_pool1d(nb_tensor *x, int64_t k, const nb_pool_opts *opts)
{
    return max_pool("nb_max_pool1d", 1, x, &k, opts, NULL);
}

static nb_tensor *avg_pool(const char *who, int dims, nb_tensor *x, const int64_t *kernel, const nb_pool_opts *opts)
{
    nb_attrs at;
    int64_t out4[4];
    if (!pool_check(who, dims, 0, x, kernel, opts, &at, out4)) return NULL;
    nb_tensor *x4 = as4(x, dims);
    if (!x4) return NULL;
    return unview(nb__apply(who, NB_OP_AVG_POOL2D, 1, &x4, &at, x->dtype, 4, out4), dims);
}

nb_tensor *nb_avg_pool2d(nb_tensor *x, int64_t kh, int64_t kw, const nb_pool_opts *opts)
{
    return avg_pool("nb_avg_pool2d", 2, x, (const int64_t[]){kh, kw}, opts);
}

nb_tensor *nb_avg_pool1d(nb_tensor *x, int64_t k, const nb_pool_opts *opts)
{
    return avg_pool("nb_avg_pool1d", 1, x, &k, opts);
}

static nb_tensor *adaptive(const char *who, int dims, nb_tensor *x, const int64_t *size)
{
    if (!pool_input(who, dims, x)) return NULL;
    for (int d = 0; d < dims; d++) {
        if (size[d] < 1)
            return nb__fail(NB_ERR_ARG, "%s: input %s: output size %s must be at least 1", who, NB_SHP(x),
                            nb__cnn_vals(dims, size));
        if (x->shape[2 + d] < 1)
            return nb__fail(NB_ERR_SHAPE, "%s: input %s: spatial extents must be at least 1", who, NB_SHP(x));
    }
    const int64_t out4[4] = {x->shape[0], x->shape[1], dims == 2 ? size[0] : 1, size[dims - 1]};
    nb_attrs at = {.i = {0, 0, 1, 1, 0, 0, AVG_ADAPTIVE}};
    nb_tensor *x4 = as4(x, dims);
    if (!x4 || !nb__check_shape(who, 4, out4)) return NULL;
    return unview(nb__apply(who, NB_OP_AVG_POOL2D, 1, &x4, &at, x->dtype, 4, out4), dims);
}

nb_tensor *nb_adaptive_avg_pool2d(nb_tensor *x, int64_t oh, int64_t ow)
{
    return adaptive("nb_adaptive_avg_pool2d", 2, x, (const int64_t[]){oh, ow});
}

nb_tensor *nb_adaptive_avg_pool1d(nb_tensor *x, int64_t size)
{
    return adaptive("nb_adaptive_avg_pool1d", 1, x, &size);
}
