/* Fused recurrent cell steps: the pointwise part of an LSTM and of a GRU step in one op each, so that
 * a time step is one pass forward and one pass backward instead of a dozen elementwise ops and the
 * sums of their gradients. The forward does the same arithmetic in the same order as the ops it
 * replaces (bit for bit); the backward rule is written with nabla's ops (so second order works) and
 * the no-graph fast path is one fused kernel. */
#include "ops.h"

/* t as a tensor of `shape` (a view; NULL passes through) */
static nb_tensor *as_shape(nb_tensor *t, const nb_tensor *like) { return nb_reshape(t, like->ndim, like->shape); }

/* rows and width of a cell: the last dim is H (of c or h), the others are rows */
static void rows_of(const nb_tensor *c, int64_t *R, int64_t *H)
{
    *H = c->ndim ? c->shape[c->ndim - 1] : 1;
    *R = *H ? c->numel / *H : 0;
}

/* y (1 - y): the derivative of sigmoid at its value y */
static nb_tensor *dsig(nb_tensor *y) { return nb_mul(y, nb_rsub_scalar(1.0, y)); }
/* 1 - y^2: the derivative of tanh at its value y */
static nb_tensor *dtanh(nb_tensor *y) { return nb_rsub_scalar(1.0, nb_square(y)); }

/* ---- LSTM ------------------------------------------------------------------------------------- */

/* out [2, .., H]: out[0] = h' = o tanh(c'), out[1] = c' = f c + i g, from gates [.., 4H] (i, f, g, o) and
 * c [.., H]; i, f, o = sigmoid, g = tanh of their pre-activations */
NB_FW(lstm_gates)
{
    (void)at;
    int64_t R, H;
    rows_of(in[1], &R, &H);
    if (out->dtype == NB_F32)
        nb_k_lstm_cell_f32(R, H, in[0]->data, in[1]->data, out->data);
    else
        nb_k_lstm_cell_f64(R, H, in[0]->data, in[1]->data, out->data);
}

/* dc' = gc + gh o (1 - tanh(c')^2); d(o, i, g, f) = (gh tanh(c'), dc' g, dc' i, dc' c) through their
 * activations; dc = dc' f */
NB_BW(lstm_gates)
{
    nb_tensor *gates = n->in[0], *c = n->in[1], *p[4] = {0};
    int last = gates->ndim - 1;
    if (nb_chunk(gates, 4, last, p) != 4) return;
    nb_tensor *i = nb_sigmoid(p[0]), *f = nb_sigmoid(p[1]), *gg = nb_tanh(p[2]), *o = nb_sigmoid(p[3]);
    nb_tensor *th = nb_tanh(nb_add(nb_mul(f, c), nb_mul(i, gg)));
    nb_tensor *gh = as_shape(nb_slice(g, 0, 0, 1, 1), c), *gc = as_shape(nb_slice(g, 0, 1, 2, 1), c);
    nb_tensor *d = nb_add(gc, nb_mul(nb_mul(gh, o), dtanh(th)));
    if (NB_NEED(0)) {
        nb_tensor *parts[4] = {nb_mul(nb_mul(d, gg), dsig(i)), nb_mul(nb_mul(d, c), dsig(f)),
                               nb_mul(nb_mul(d, i), dtanh(gg)), nb_mul(nb_mul(gh, th), dsig(o))};
        gin[0] = nb_concat(4, parts, last);
    }
    if (NB_NEED(1)) gin[1] = nb_mul(d, f);
}

/* Without a graph: the whole backward in one pass into the engine's buffers. */
bool nb__into_lstm_gates(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    bool fg = false, fc = false;
    nb_tensor *dg = NULL, *dc = NULL;
    if (NB_NEED(0) && !(dg = nb__sink_slot(sink, 0, &fg))) return true;
    if (NB_NEED(1) && !(dc = nb__sink_slot(sink, 1, &fc))) return true;
    int64_t R, H;
    rows_of(n->in[1], &R, &H);
    if (g->dtype == NB_F32)
        nb_k_lstm_cell_bw_f32(R, H, n->in[0]->data, n->in[1]->data, n->out->data, g->data, dg ? dg->data : NULL, !fg,
                              dc ? dc->data : NULL, !fc);
    else
        nb_k_lstm_cell_bw_f64(R, H, n->in[0]->data, n->in[1]->data, n->out->data, g->data, dg ? dg->data : NULL, !fg,
                              dc ? dc->data : NULL, !fc);
    return true;
}

/* gates [.., 4H] and cells [.., H] of one float dtype with the same leading dims */
static bool check_cell(const char *who, const nb_tensor *a, const char *an, const nb_tensor *c, const char *cn,
                       int64_t k)
{
    if (a->dtype != c->dtype)
        return nb__fail(NB_ERR_DTYPE, "%s: %s %s %s and %s %s %s: dtypes differ", who, an, nb_dtype_name(a->dtype),
                        NB_SHP(a), cn, nb_dtype_name(c->dtype), NB_SHP(c)), false;
    if (!nb__check_float(who, a)) return false;
    bool fits = a->ndim == c->ndim && a->ndim >= 1 && a->shape[a->ndim - 1] == k * c->shape[c->ndim - 1];
    for (int d = 0; fits && d + 1 < a->ndim; d++) fits = a->shape[d] == c->shape[d];
    if (!fits)
        return nb__fail(NB_ERR_SHAPE, "%s: %s %s and %s %s: expected [..., %lldH] and [..., H] with the same "
                        "leading dims", who, an, NB_SHP(a), cn, NB_SHP(c), (long long)k), false;
    return true;
}

nb_tensor *nb_lstm_gates(nb_tensor *gates, nb_tensor *c)
{
    const char *who = "nb_lstm_gates";
    if (!gates || !c) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !gates ? "gates" : "c");
    if (!nb__live(who, gates) || !nb__live(who, c)) return NULL;
    if (!check_cell(who, gates, "gates", c, "c", 4)) return NULL;
    if (c->ndim >= NB_MAX_DIMS)
        return nb__fail(NB_ERR_SHAPE, "%s: c %s already has the most dimensions, %d", who, NB_SHP(c), NB_MAX_DIMS);
    int64_t shape[NB_MAX_DIMS];
    shape[0] = 2;
    for (int d = 0; d < c->ndim; d++) shape[d + 1] = c->shape[d];
    nb_tensor *in[2] = {gates, c};
    return nb__apply(who, NB_OP_LSTM_GATES, 2, in, NULL, c->dtype, c->ndim + 1, shape);
}

/* ---- GRU -------------------------------------------------------------------------------------- */

/* out [.., H] = n + z (h - n) from xg, hg [.., 3H] (r, z, n parts) and h [.., H]: r = sigmoid(xr + hr),
 * z = sigmoid(xz + hz), n = tanh(xn + r hn) */
NB_FW(gru_gates)
{
    (void)at;
    int64_t R, H;
    rows_of(in[2], &R, &H);
    if (out->dtype == NB_F32)
        nb_k_gru_cell_f32(R, H, in[0]->data, in[1]->data, in[2]->data, out->data);
    else
        nb_k_gru_cell_f64(R, H, in[0]->data, in[1]->data, in[2]->data, out->data);
}

/* dn = g (1 - z) (1 - n^2), dz = g (h - n) z (1 - z), dr = dn hn r (1 - r); dxg = (dr, dz, dn),
 * dhg = (dr, dz, dn r), dh = g z */
NB_BW(gru_gates)
{
    nb_tensor *xg = n->in[0], *hg = n->in[1], *h = n->in[2], *x3[3] = {0}, *h3[3] = {0};
    int last = xg->ndim - 1;
    if (nb_chunk(xg, 3, last, x3) != 3 || nb_chunk(hg, 3, last, h3) != 3) return;
    nb_tensor *r = nb_sigmoid(nb_add(x3[0], h3[0])), *z = nb_sigmoid(nb_add(x3[1], h3[1]));
    nb_tensor *nn = nb_tanh(nb_add(x3[2], nb_mul(r, h3[2])));
    nb_tensor *dn = nb_mul(nb_mul(g, nb_rsub_scalar(1.0, z)), dtanh(nn));
    nb_tensor *dr = nb_mul(nb_mul(dn, h3[2]), dsig(r)), *dz = nb_mul(nb_mul(g, nb_sub(h, nn)), dsig(z));
    if (NB_NEED(0)) gin[0] = nb_concat(3, (nb_tensor *[]){dr, dz, dn}, last);
    if (NB_NEED(1)) gin[1] = nb_concat(3, (nb_tensor *[]){dr, dz, nb_mul(dn, r)}, last);
    if (NB_NEED(2)) gin[2] = nb_mul(g, z);
}

bool nb__into_gru_gates(const nb_node *n, nb_tensor *g, nb_grad_sink *sink)
{
    bool fx = false, fh = false, fp = false;
    nb_tensor *dx = NULL, *dhg = NULL, *dh = NULL;
    if (NB_NEED(0) && !(dx = nb__sink_slot(sink, 0, &fx))) return true;
    if (NB_NEED(1) && !(dhg = nb__sink_slot(sink, 1, &fh))) return true;
    if (NB_NEED(2) && !(dh = nb__sink_slot(sink, 2, &fp))) return true;
    int64_t R, H;
    rows_of(n->in[2], &R, &H);
    if (g->dtype == NB_F32)
        nb_k_gru_cell_bw_f32(R, H, n->in[0]->data, n->in[1]->data, n->in[2]->data, g->data, dx ? dx->data : NULL, !fx,
                             dhg ? dhg->data : NULL, !fh, dh ? dh->data : NULL, !fp);
    else
        nb_k_gru_cell_bw_f64(R, H, n->in[0]->data, n->in[1]->data, n->in[2]->data, g->data, dx ? dx->data : NULL, !fx,
                             dhg ? dhg->data : NULL, !fh, dh ? dh->data : NULL, !fp);
    return true;
}

nb_tensor *nb_gru_gates(nb_tensor *xg, nb_tensor *hg, nb_tensor *h)
{
    const char *who = "nb_gru_gates";
    if (!xg || !hg || !h) return nb__fail(NB_ERR_ARG, "%s: %s is NULL", who, !xg ? "xg" : !hg ? "hg" : "h");
    if (!nb__live(who, xg) || !nb__live(who, hg) || !nb__live(who, h)) return NULL;
    if (!check_cell(who, xg, "xg", h, "h", 3) || !check_cell(who, hg, "hg", h, "h", 3)) return NULL;
    nb_tensor *in[3] = {xg, hg, h};
    return nb__apply(who, NB_OP_GRU_GATES, 3, in, NULL, h->dtype, h->ndim, h->shape);
}
