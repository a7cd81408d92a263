/* Convolutions: conv2d, its adjoint conv_transpose2d and its weight gradient conv2d_weight, three
 * primitives whose backward rules are each other (cnn.h has the definition they share), so gradients
 * of gradients come for free; 1-D convolutions are the 2-D ones on [N, C, 1, L] views. The kernels
 * (cnn_kernels_impl.h) fold the batch into one matrix product per group, tiled so that the im2col
 * workspace, taken from the tape's arena, stays bounded. */
#include "cnn.h"

#include <string.h>

/* ---- attributes and geometry ------------------------------------------------------------------ */

/* nb_attrs of the three ops: i[0..6] = stride h, w; padding h, w (before; the extents decide the
 * rest); dilation h, w; groups. i[7] = 1 when a bias is the third input (set by the builders). */
static nb_attrs conv_attrs(const int64_t *s, const int64_t *p, const int64_t *d, int64_t groups)
{
    return (nb_attrs){.i = {s[0], s[1], p[0], p[1], d[0], d[1], groups}};
}

/* The geometry between u [n, cu, hu, wu] and v [n, cv, hv, wv] with a kh x kw kernel. */
static nb_conv_geom geom_of(const nb_tensor *u, const nb_tensor *v, int64_t kh, int64_t kw, const nb_attrs *at)
{
    return (nb_conv_geom){.n = u->shape[0], .cu = u->shape[1], .hu = u->shape[2], .wu = u->shape[3],
                          .cv = v->shape[1], .hv = v->shape[2], .wv = v->shape[3], .kh = kh, .kw = kw,
                          .sh = at->i[0], .sw = at->i[1], .ph = at->i[2], .pw = at->i[3], .dh = at->i[4],
                          .dw = at->i[5], .groups = at->i[6]};
}

/* Workspace of a plan on the current tape (NULL with nothing needed); false when out of memory. weight:
 * the call computes a weight gradient. */
static bool workspace(const char *who, const nb_conv_plan *p, const nb_conv_geom *g, int weight, size_t esize,
                      void **ws)
{
    *ws = NULL;
    int64_t n = nb__conv_ws_total(p, g, weight);
    if (n == 0) return true;
    nb_tape *t = nb__current_tape();
    *ws = t ? nb__tape_alloc(t, (size_t)n * esize) : NULL;
    if (!*ws) nb__fail(NB_ERR_NOMEM, "%s: out of memory for a %lld-element workspace", who, (long long)n);
    return *ws != NULL;
}

/* The kernels of a plan run their tiles on p->threads threads (the forward) or, in the backward, only
 * on the wide grid; the products inside then run single-threaded. */
static void backward_threads(nb_conv_plan *p)
{
    if (!p->wide) p->threads = 1;
}

/* ---- the primitives, unchecked (their callers validated the shapes) --------------------------- */

/* conv(u, w) + b as a tensor with output extents hv, wv */
static nb_tensor *conv_raw(nb_tensor *u, nb_tensor *w, nb_tensor *b, int64_t hv, int64_t wv, const nb_attrs *attrs)
{
    nb_tensor *in[3] = {u, w, b};
    nb_attrs at = *attrs;
    at.i[7] = b != NULL;
    return nb__apply("nb_conv2d", NB_OP_CONV2D, b ? 3 : 2, in, &at, u->dtype, 4,
                     (const int64_t[]){u->shape[0], w->shape[0], hv, wv});
}

/* conv_transpose(v, w) + b with output extents hu, wu */
static nb_tensor *convt_raw(nb_tensor *v, nb_tensor *w, nb_tensor *b, int64_t hu, int64_t wu, const nb_attrs *attrs)
{
    nb_tensor *in[3] = {v, w, b};
    nb_attrs at = *attrs;
    at.i[7] = b != NULL;
    return nb__apply("nb_conv_transpose2d", NB_OP_CONV_TRANSPOSE2D, b ? 3 : 2, in, &at, v->dtype, 4,
                     (const int64_t[]){v->shape[0], w->shape[1] * at.i[6], hu, wu});
}

/* the weight gradient [cv, cu / groups, kh, kw] of u and v */
static nb_tensor *wgrad_raw(nb_tensor *u, nb_tensor *v, int64_t kh, int64_t kw, const nb_attrs *attrs)
{
    nb_tensor *in[2] = {u, v};
    nb_attrs at = *attrs;
    at.i[7] = 0;
    return nb__apply("nb_conv2d_weight", NB_OP_CONV2D_WEIGHT, 2, in, &at, u->dtype, 4,
                     (const int64_t[]){v->shape[1], u->shape[1] / at.i[6], kh, kw});
}


/* Call the f32 or f64 instance of a kernel of cnn.h. */
#define CNN_CALL(dt, name, ...) ((dt) == NB_F32 ? nb_k_##name##_f32(__VA_ARGS__) : nb_k_##name##_f64(__VA_ARGS__))

/* ---- conv2d ----------------------------------------------------------------------------------- */

/* out [n, cv, hv, wv] = conv(x [n, cu, hu, wu], w [cv, cu/G, kh, kw]) (+ b [cv]) */
NB_FW(conv2d)
{
    const nb_tensor *x = in[0], *w = in[1], *b = at->i[7] ? in[2] : NULL;
    nb_conv_geom g = geom_of(x, out, w->shape[2], w->shape[3], at);
    nb_conv_plan p;
    nb__conv_plan(&g, nb_dtype_size(out->dtype), &p);
    void *ws;
    if (!workspace("nb_conv2d", &p, &g, 0, nb_dtype_size(out->dtype), &ws)) return;
    int blas = nb__blas_single();
    CNN_CALL(out->dtype, conv_fw, &g, &p, x->data, w->data, b ? b->data : NULL, out->data, ws);
    nb__blas_restore(blas);
}

/* y = conv(x, w) + b, bilinear in (x, w):
 *   dx = conv_transpose(g, w)   (the adjoint in x, back to x's extents)
 *   dw = conv2d_weight(x, g)    (the derivative of <g, conv(x, w)> in w)
 *   db = sum of g over the batch and positions */
NB_BW(conv2d)
{
    nb_tensor *x = n->in[0], *w = n->in[1];
    if (NB_NEED(0)) gin[0] = convt_raw(g, w, NULL, x->shape[2], x->shape[3], &n->attrs);
    if (NB_NEED(1)) gin[1] = wgrad_raw(x, g, w->shape[2], w->shape[3], &n->attrs);
    if (n->attrs.i[7] && NB_NEED(2)) gin[2] = nb_sum(g, NB_AXES(0, 2, 3), 0);
}

/* Without a graph: dx, dw and db from one pass over the tiles (the gathered g shared by the two
 * products), added straight into the gradient buffers (dw accumulates with beta = 1, dx through
 * col2im); the values of the rule above. */
bool nb__into_conv2d(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    const char *who = "nb_conv2d";
    nb_tensor *x = n->in[0], *w = n->in[1], *dx = NULL, *dw = NULL;
    bool fx = false, fw = false, fb = false;
    if (NB_NEED(0) && !(dx = nb__sink_slot(sink, 0, &fx))) return true;
    if (NB_NEED(1) && !(dw = nb__sink_slot(sink, 1, &fw))) return true;
    if (dx || dw) {
        nb_conv_geom geo = geom_of(x, g, w->shape[2], w->shape[3], &n->attrs);
        nb_conv_plan p;
        size_t es = nb_dtype_size(g->dtype);
        nb__conv_plan(&geo, es, &p);
        void *ws;
        if (!workspace(who, &p, &geo, dw != NULL, es, &ws)) return true;
        backward_threads(&p);
        int blas = nb__blas_single();
        CNN_CALL(g->dtype, conv_bw, &geo, &p, x->data, g->data, w->data, dx ? dx->data : NULL, !fx,
                 dw ? dw->data : NULL, !fw, ws);
        nb__blas_restore(blas);
    }
    if (n->attrs.i[7] && NB_NEED(2)) {
        nb_tensor *db = nb__sink_slot(sink, 2, &fb);
        if (!db) return true;
        CNN_CALL(g->dtype, channel_sum, g->shape[0], g->shape[1], g->shape[2] * g->shape[3], g->data, db->data, !fb);
    }
    return true;
}

/* ---- conv_transpose2d ------------------------------------------------------------------------- */

/* out [n, cu, hu, wu] = conv_transpose(x [n, cv, hv, wv], w [cv, cu/G, kh, kw]) (+ b [cu]): the
 * adjoint of conv2d in its input */
NB_FW(conv_transpose2d)
{
    const nb_tensor *x = in[0], *w = in[1], *b = at->i[7] ? in[2] : NULL;
    nb_conv_geom g = geom_of(out, x, w->shape[2], w->shape[3], at);
    nb_conv_plan p;
    nb__conv_plan(&g, nb_dtype_size(out->dtype), &p);
    void *ws;
    if (!workspace("nb_conv_transpose2d", &p, &g, 0, nb_dtype_size(out->dtype), &ws)) return;
    CNN_CALL(out->dtype, channel_fill, out->shape[0], out->shape[1], out->shape[2] * out->shape[3],
             b ? b->data : NULL, out->data);
    backward_threads(&p);
    int blas = nb__blas_single();
    CNN_CALL(out->dtype, conv_bw, &g, &p, NULL, x->data, w->data, out->data, 1, NULL, 0, ws);
    nb__blas_restore(blas);
}

/* y = conv_transpose(x, w) + b, bilinear in (x, w):
 *   dx = conv(g, w)             (the adjoint of the adjoint, back to x's extents)
 *   dw = conv2d_weight(g, x)    (<g, conv_transpose(x, w)> = <conv(g, w), x>, so the roles swap)
 *   db = sum of g over the batch and positions */
NB_BW(conv_transpose2d)
{
    nb_tensor *x = n->in[0], *w = n->in[1];
    if (NB_NEED(0)) gin[0] = conv_raw(g, w, NULL, x->shape[2], x->shape[3], &n->attrs);
    if (NB_NEED(1)) gin[1] = wgrad_raw(g, x, w->shape[2], w->shape[3], &n->attrs);
    if (n->attrs.i[7] && NB_NEED(2)) gin[2] = nb_sum(g, NB_AXES(0, 2, 3), 0);
}

/* ---- conv2d_weight ---------------------------------------------------------------------------- */

/* out [cv, cu/G, kh, kw] = the weight gradient of u [n, cu, hu, wu] and v [n, cv, hv, wv] */
NB_FW(conv2d_weight)
{
    const nb_tensor *u = in[0], *v = in[1];
    nb_conv_geom g = geom_of(u, v, out->shape[2], out->shape[3], at);
    nb_conv_plan p;
    nb__conv_plan(&g, nb_dtype_size(out->dtype), &p);
    void *ws;
    if (!workspace("nb_conv2d_weight", &p, &g, 1, nb_dtype_size(out->dtype), &ws)) return;
    backward_threads(&p);
    int blas = nb__blas_single();
    CNN_CALL(out->dtype, conv_bw, &g, &p, u->data, v->data, NULL, NULL, 0, out->data, 0, ws);
    nb__blas_restore(blas);
}

/* W = conv2d_weight(u, v) is bilinear, <G, W> = <conv(u, G), v> = <u, conv_transpose(v, G)>:
 *   du = conv_transpose(v, G),  dv = conv(u, G) */
NB_BW(conv2d_weight)
{
    nb_tensor *u = n->in[0], *v = n->in[1];
    if (NB_NEED(0)) gin[0] = convt_raw(v, g, NULL, u->shape[2], u->shape[3], &n->attrs);
    if (NB_NEED(1)) gin[1] = conv_raw(u, g, NULL, v->shape[2], v->shape[3], &n->attrs);
}

/* ---- the public functions --------------------------------------------------------------------- */

nb_conv_opts nb_conv_defaults(void)
{
    return (nb_conv_opts){.stride = {1, 1}, .dilation = {1, 1}, .groups = 1};
}

/* "(a, b)" for 2-D, "a" for 1-D, for messages: in one of four rotating thread-local buffers, so that
 * one message may hold four of them */
const char *nb__cnn_vals(int dims, const int64_t *v)
{
    static _Thread_local char buf[4][48];
    static _Thread_local int k;
    char *b = buf[k++ & 3];
    if (dims == 2)
        snprintf(b, 48, "(%lld, %lld)", (long long)v[0], (long long)v[1]);
    else
        snprintf(b, 48, "%lld", (long long)v[0]);
    return b;
}

/* The checked geometry of a convolution call, as 2-D (1-D: a height of 1). */
typedef struct conv_call {
    nb_attrs at;
    int64_t out[4];   /* the result's shape as 4-D */
    int64_t x4[4], w4[4];
} conv_call;

static bool same_dtype(const char *who, const char *an, const nb_tensor *a, const char *bn, const nb_tensor *b)
{
    if (a->dtype == b->dtype) return true;
    nb__fail(NB_ERR_DTYPE, "%s: %s %s %s and %s %s %s: dtypes differ (use nb_cast)", who, an, nb_dtype_name(a->dtype),
             NB_SHP(a), bn, nb_dtype_name(b->dtype), NB_SHP(b));
    return false;
}

/* Validate a convolution (mode 0), a transposed one (1) or a weight gradient (2, where w is the
 * gradient of the output and kernel the kernel's extents) and work out its geometry. */
static bool conv_check(const char *who, int dims, int mode, nb_tensor *x, nb_tensor *w, nb_tensor *b,
                       const int64_t *kernel, const nb_conv_opts *opts, conv_call *cc)
{
    const char *wname = mode == 2 ? "grad_out" : "weight";
    if (!x || !w) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !x ? "input" : wname), false;
    /* stale arguments named by this call, before anything (a 1-D call's reshape) could name itself */
    if (!nb__live(who, x) || !nb__live(who, w) || !nb__live_opt(who, b)) return false;
    nb_conv_opts o = opts ? *opts : nb_conv_defaults();
    if (!nb__check_float(who, x) || !same_dtype(who, "input", x, wname, w)) return false;
    if (b && !same_dtype(who, "input", x, "bias", b)) return false;
    const char *xform = dims == 2 ? "[N, C, H, W]" : "[N, C, L]";
    if (x->ndim != dims + 2)
        return nb__fail(NB_ERR_SHAPE, "%s: input %s: expected %d dimensions %s", who, NB_SHP(x), dims + 2, xform), false;
    if (w->ndim != dims + 2) {
        const char *wform = mode == 2 ? (dims == 2 ? "[N, O, Ho, Wo]" : "[N, O, Lo]")
                            : mode == 1 ? (dims == 2 ? "[in channels, out channels / groups, kh, kw]"
                                                     : "[in channels, out channels / groups, k]")
                            : (dims == 2 ? "[out channels, in channels / groups, kh, kw]"
                                         : "[out channels, in channels / groups, k]");
        return nb__fail(NB_ERR_SHAPE, "%s: %s %s: expected %d dimensions %s", who, wname, NB_SHP(w), dims + 2,
                        wform), false;
    }
    for (int d = 0; d < dims; d++) {
        if (o.stride[d] < 1)
            return nb__fail(NB_ERR_ARG, "%s: input %s: stride %s must be at least 1 (start from nb_conv_defaults())",
                            who, NB_SHP(x), nb__cnn_vals(dims, o.stride)), false;
        if (o.dilation[d] < 1)
            return nb__fail(NB_ERR_ARG, "%s: input %s: dilation %s must be at least 1 (start from "
                            "nb_conv_defaults())", who, NB_SHP(x), nb__cnn_vals(dims, o.dilation)), false;
        if (o.padding[d] < 0)
            return nb__fail(NB_ERR_ARG, "%s: input %s: padding %s must not be negative", who, NB_SHP(x),
                            nb__cnn_vals(dims, o.padding)), false;
        if (mode == 1 && o.output_padding[d] < 0)
            return nb__fail(NB_ERR_ARG, "%s: input %s: output_padding %s must not be negative", who, NB_SHP(x),
                            nb__cnn_vals(dims, o.output_padding)), false;
        if (o.stride[d] > NB_GEOM_MAX || o.dilation[d] > NB_GEOM_MAX || o.padding[d] > NB_GEOM_MAX ||
            (mode == 1 && o.output_padding[d] > NB_GEOM_MAX) || (mode == 2 && kernel[d] > NB_GEOM_MAX))
            return nb__fail(NB_ERR_ARG, "%s: input %s: stride %s, padding %s, dilation %s%s%s: each must be at most "
                            "2^61", who, NB_SHP(x), nb__cnn_vals(dims, o.stride), nb__cnn_vals(dims, o.padding),
                            nb__cnn_vals(dims, o.dilation), mode == 2 ? ", kernel " : mode == 1 ? ", output_padding " : "",
                            mode == 2 ? nb__cnn_vals(dims, kernel) : mode == 1 ? nb__cnn_vals(dims, o.output_padding) : ""), false;
    }
    if (o.groups < 1)
        return nb__fail(NB_ERR_ARG, "%s: input %s: groups %lld must be at least 1 (start from nb_conv_defaults())",
                        who, NB_SHP(x), (long long)o.groups), false;
    if (o.same_padding && mode == 1)
        return nb__fail(NB_ERR_ARG, "%s: 'same' padding is for convolutions, not transposed ones", who), false;
    if (o.same_padding)
        for (int d = 0; d < dims; d++)
            if (o.stride[d] != 1)
                return nb__fail(NB_ERR_ARG, "%s: input %s: 'same' padding needs stride 1, got stride %s", who,
                                NB_SHP(x), nb__cnn_vals(dims, o.stride)), false;

    /* channels: x [N, C, ...]; conv w [O, C/G, ...]; transposed w [C, O/G, ...]; weight grad g [N, O, ...] */
    const int64_t G = o.groups, C = x->shape[1];
    if (C % G != 0)
        return nb__fail(NB_ERR_SHAPE, "%s: input %s has %lld channels, not divisible by groups %lld", who, NB_SHP(x),
                        (long long)C, (long long)G), false;
    int64_t O;
    if (mode == 0) {
        O = w->shape[0];
        if (O % G != 0)
            return nb__fail(NB_ERR_SHAPE, "%s: weight %s has %lld output channels, not divisible by groups %lld", who,
                            NB_SHP(w), (long long)O, (long long)G), false;
        if (w->shape[1] != C / G)
            return nb__fail(NB_ERR_SHAPE, "%s: input %s and weight %s: with groups %lld the weight's dimension 1 "
                            "must be in channels / groups = %lld", who, NB_SHP(x), NB_SHP(w), (long long)G,
                            (long long)(C / G)), false;
    } else if (mode == 1) {
        if (w->shape[0] != C)
            return nb__fail(NB_ERR_SHAPE, "%s: input %s and weight %s: the weight's dimension 0 must be the %lld "
                            "input channels", who, NB_SHP(x), NB_SHP(w), (long long)C), false;
        O = w->shape[1] * G;
    } else {
        O = w->shape[1];
        if (O % G != 0)
            return nb__fail(NB_ERR_SHAPE, "%s: grad_out %s has %lld channels, not divisible by groups %lld", who,
                            NB_SHP(w), (long long)O, (long long)G), false;
        if (w->shape[0] != x->shape[0])
            return nb__fail(NB_ERR_SHAPE, "%s: input %s and grad_out %s: batch sizes differ", who, NB_SHP(x),
                            NB_SHP(w)), false;
    }
    if (b && (b->ndim != 1 || b->shape[0] != O))
        return nb__fail(NB_ERR_SHAPE, "%s: input %s, weight %s: bias %s, expected [%lld]", who, NB_SHP(x), NB_SHP(w),
                        NB_SHP(b), (long long)O), false;

    /* spatial dims as 2-D (index 0 height, 1 width); 1-D ops have a height of 1 */
    const int off = 2 - dims;
    int64_t L[2] = {1, 1}, K[2] = {1, 1}, S[2] = {1, 1}, P[2] = {0, 0}, D[2] = {1, 1}, out[2] = {1, 1};
    for (int d = 0; d < dims; d++) {
        L[d + off] = x->shape[2 + d];
        K[d + off] = mode == 2 ? kernel[d] : w->shape[2 + d];
        S[d + off] = o.stride[d];
        P[d + off] = o.padding[d];
        D[d + off] = o.dilation[d];
        if (K[d + off] < 1)
            return nb__fail(NB_ERR_SHAPE, "%s: %s %s: kernel extents must be at least 1", who,
                            mode == 2 ? "kernel" : "weight", mode == 2 ? nb__cnn_vals(dims, kernel) : NB_SHP(w)), false;
    }
    for (int d = off; d < 2; d++) {
        const int ud = d - off; /* the user's dim */
        int64_t span, lmul;
        if (!nb__geom_mad(D[d], K[d] - 1, 1, &span) || !nb__geom_mad(L[d] > 0 ? L[d] - 1 : 0, S[d], 0, &lmul))
            return nb__fail(NB_ERR_SHAPE, "%s: input %s, %s %s: the extents overflow along spatial dim %d (stride %s, "
                            "dilation %s)", who, NB_SHP(x), mode == 2 ? "kernel" : "weight",
                            mode == 2 ? nb__cnn_vals(dims, kernel) : NB_SHP(w), ud, nb__cnn_vals(dims, o.stride),
                            nb__cnn_vals(dims, o.dilation)), false;
        if (mode == 1) {
            const int64_t op = o.output_padding[ud];
            if (op >= S[d] && op >= D[d])
                return nb__fail(NB_ERR_ARG, "%s: input %s: output_padding %s must be smaller than the stride %s or "
                                "the dilation %s", who, NB_SHP(x), nb__cnn_vals(dims, o.output_padding), nb__cnn_vals(dims, o.stride),
                                nb__cnn_vals(dims, o.dilation)), false;
            out[d] = lmul - 2 * P[d] + span - 1 + op + 1; /* each term within 2^62: no overflow */
            if (L[d] < 1 || out[d] < 1)
                return nb__fail(NB_ERR_SHAPE, "%s: input %s, weight %s: the output would have extent %lld along "
                                "spatial dim %d", who, NB_SHP(x), NB_SHP(w), (long long)(L[d] < 1 ? 0 : out[d]),
                                ud), false;
            continue;
        }
        if (o.same_padding) {
            P[d] = (span - 1) / 2; /* the rest of the padding goes after, as PyTorch */
            out[d] = L[d];
            continue;
        }
        if (span > L[d] + 2 * P[d])
            return nb__fail(NB_ERR_SHAPE, "%s: input %s, %s %s: the kernel spans %lld along spatial dim %d, more "
                            "than the padded input's %lld", who, NB_SHP(x), mode == 2 ? "kernel" : "weight",
                            mode == 2 ? nb__cnn_vals(dims, kernel) : NB_SHP(w), (long long)span, ud,
                            (long long)(L[d] + 2 * P[d])), false;
        out[d] = (L[d] + 2 * P[d] - span) / S[d] + 1;
    }
    /* the 4-D shapes */
    cc->x4[0] = x->shape[0];
    cc->x4[1] = C;
    cc->x4[2] = L[0];
    cc->x4[3] = L[1];
    if (mode == 2) {
        if (w->shape[2 + dims - 1] != out[1] || (dims == 2 && w->shape[2] != out[0])) {
            int64_t o4[4] = {x->shape[0], O, out[0], out[1]};
            return nb__fail(NB_ERR_SHAPE, "%s: grad_out %s does not match the convolution's output %s for input %s "
                            "and kernel %s", who, NB_SHP(w), nb__shape_str(dims + 2, dims == 2 ? o4 : (int64_t[]){
                            o4[0], o4[1], o4[3]}), NB_SHP(x), nb__cnn_vals(dims, kernel)), false;
        }
        cc->w4[0] = w->shape[0];
        cc->w4[1] = O;
        cc->w4[2] = out[0];
        cc->w4[3] = out[1];
        cc->out[0] = O;
        cc->out[1] = C / G;
        cc->out[2] = K[0];
        cc->out[3] = K[1];
    } else {
        cc->w4[0] = w->shape[0];
        cc->w4[1] = w->shape[1];
        cc->w4[2] = K[0];
        cc->w4[3] = K[1];
        cc->out[0] = x->shape[0];
        cc->out[1] = O;
        cc->out[2] = out[0];
        cc->out[3] = out[1];
    }
    /* the products' dimensions must fit BLAS's integers */
    int64_t kdim = 0;
    if (__builtin_mul_overflow(C / G, K[0], &kdim) || __builtin_mul_overflow(kdim, K[1], &kdim) || kdim > INT32_MAX ||
        O > INT32_MAX || C > INT32_MAX || (out[1] > 0 && out[0] > INT32_MAX / out[1]) ||
        (L[1] > 0 && L[0] > INT32_MAX / L[1]))
        return nb__fail(NB_ERR_SHAPE, "%s: input %s, %s %s: dimensions exceed the BLAS integer range", who, NB_SHP(x),
                        wname, NB_SHP(w)), false;
    if (!nb__check_shape(who, 4, cc->out)) return false;
    cc->at = conv_attrs(S, P, D, G);
    return true;
}

/* The result of a checked call, back in the user's rank. */
static nb_tensor *unview(nb_tensor *y, int dims)
{
    if (!y || dims == 2) return y;
    return nb_reshape(y, NB_SHAPE(y->shape[0], y->shape[1], y->shape[3]));
}

static nb_tensor *as4(nb_tensor *t, int dims, const int64_t *shape4)
{
    return dims == 2 ? t : nb_reshape(t, 4, shape4);
}

static nb_tensor *conv_public(const char *who, int dims, nb_tensor *x, nb_tensor *w, nb_tensor *b,
                              const nb_conv_opts *opts)
{
    conv_call cc;
    if (!conv_check(who, dims, 0, x, w, b, NULL, opts, &cc)) return NULL;
    nb_tensor *x4 = as4(x, dims, cc.x4), *w4 = as4(w, dims, cc.w4);
    if (!x4 || !w4) return NULL;
    return unview(conv_raw(x4, w4, b, cc.out[2], cc.out[3], &cc.at), dims);
}

static nb_tensor *convt_public(const char *who, int dims, nb_tensor *x, nb_tensor *w, nb_tensor *b,
                               const nb_conv_opts *opts)
{
    conv_call cc;
    if (!conv_check(who, dims, 1, x, w, b, NULL, opts, &cc)) return NULL;
    nb_tensor *x4 = as4(x, dims, cc.x4), *w4 = as4(w, dims, cc.w4);
    if (!x4 || !w4) return NULL;
    return unview(convt_raw(x4, w4, b, cc.out[2], cc.out[3], &cc.at), dims);
}

nb_tensor *nb_conv2d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts)
{
    return conv_public("nb_conv2d", 2, x, weight, bias, opts);
}

nb_tensor *nb_conv1d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts)
{
    return conv_public("nb_conv1d", 1, x, weight, bias, opts);
}

nb_tensor *nb_conv_transpose2d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts)
{
    return convt_public("nb_conv_transpose2d", 2, x, weight, bias, opts);
}

nb_tensor *nb_conv_transpose1d(nb_tensor *x, nb_tensor *weight, nb_tensor *bias, const nb_conv_opts *opts)
{
    return convt_public("nb_conv_transpose1d", 1, x, weight, bias, opts);
}

nb_tensor *nb_conv2d_weight(nb_tensor *x, nb_tensor *grad_out, int64_t kh, int64_t kw, const nb_conv_opts *opts)
{
    conv_call cc;
    const int64_t k[2] = {kh, kw};
    if (!conv_check("nb_conv2d_weight", 2, 2, x, grad_out, NULL, k, opts, &cc)) return NULL;
    return wgrad_raw(x, grad_out, kh, kw, &cc.at);
}
