/* Recurrent layers: Elman, LSTM and GRU cells written as their equations with matmul, sigmoid,
 * tanh, mul and add, and a multi-layer sequence runner. Gradients flow back through time because
 * the tape records every step. nabla.h is the only include: no backward code here. */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

static int gates_of(nb_rnn_kind kind) { return kind == NB_LSTM ? 4 : kind == NB_GRU ? 3 : 1; }

static nb_tensor *param(nb_params *p, const char *name, const char *suffix, nb_dtype dt, int ndim,
                        const int64_t *shape, nb_init init, int64_t fan_in, nb_rng *rng)
{
    char full[256];
    int n = snprintf(full, sizeof full, "%s.%s", name, suffix);
    if (n < 0 || (size_t)n >= sizeof full) {
        nb_error_set(NB_ERR_ARG, "nb_rnn_cell_init: name %s.%s is too long", name, suffix);
        return NULL;
    }
    nb_tensor *t = nb_tensor_zeros(dt, ndim, shape);
    if (!t || nb_init_tensor(t, init, fan_in, shape[0], rng) != NB_OK) {
        nb_tensor_free(t);
        return NULL;
    }
    return nb_params_add(p, full, t);
}

/* Cell parameters under explicit names (the cell API and torch.nn.RNN's "_l<k>" names share this). */
static nb_status cell_init(nb_rnn_cell *c, nb_params *p, const char *name, const char *sfx, nb_rnn_kind kind,
                           int64_t input, int64_t hidden, const nb_layer_opts *opts, nb_rng *rng)
{
    static const nb_layer_opts defaults = {0};
    const nb_layer_opts *o = opts ? opts : &defaults;
    if (!c || !p || !name || (unsigned)kind >= NB_RNN_KIND_COUNT || input < 1 || hidden < 1) {
        nb_error_set(NB_ERR_ARG, "nb_rnn_cell_init: %s: need a cell, a collection, a known kind and sizes >= 1 "
                     "(input %lld, hidden %lld)", name ? name : "?", (long long)input, (long long)hidden);
        return NB_ERR_ARG;
    }
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->input = input;
    c->hidden = hidden;
    int64_t gh = gates_of(kind) * hidden;
    nb_init def = {.kind = NB_INIT_UNIFORM, .a = 1.0 / sqrt((double)hidden)};
    nb_init wi = o->weight_init.kind == NB_INIT_DEFAULT ? def : o->weight_init;
    nb_init bi = o->bias_init.kind == NB_INIT_DEFAULT ? def : o->bias_init;
    char s[64];
    snprintf(s, sizeof s, "weight_ih%s", sfx);
    c->w_ih = param(p, name, s, o->dtype, 2, (const int64_t[]){gh, input}, wi, input, rng);
    snprintf(s, sizeof s, "weight_hh%s", sfx);
    if (c->w_ih) c->w_hh = param(p, name, s, o->dtype, 2, (const int64_t[]){gh, hidden}, wi, hidden, rng);
    if (!c->w_hh) return nb_error_code();
    if (o->no_bias) return NB_OK;
    snprintf(s, sizeof s, "bias_ih%s", sfx);
    c->b_ih = param(p, name, s, o->dtype, 1, &gh, bi, hidden, rng);
    snprintf(s, sizeof s, "bias_hh%s", sfx);
    if (c->b_ih) c->b_hh = param(p, name, s, o->dtype, 1, &gh, bi, hidden, rng);
    if (!c->b_hh) return nb_error_code();
    if (kind == NB_LSTM) {
        /* the forget gate's bias (rows hidden..2*hidden of b_ih): 1 by default, so that early in
         * training the cell keeps its state */
        nb_init fb = o->forget_bias.kind == NB_INIT_DEFAULT ? (nb_init){.kind = NB_INIT_CONSTANT, .a = 1.0} : o->forget_bias;
        nb_tensor *tmp = nb_tensor_zeros(o->dtype, 1, &hidden);
        if (!tmp || nb_init_tensor(tmp, fb, hidden, hidden, rng) != NB_OK) {
            nb_tensor_free(tmp);
            return nb_error_code();
        }
        for (int64_t j = 0; j < hidden; j++) {
            nb_tensor_set(c->b_ih, hidden + j, nb_tensor_get(tmp, j));
            if (fb.kind == NB_INIT_CONSTANT || fb.kind == NB_INIT_ZEROS) nb_tensor_set(c->b_hh, hidden + j, 0.0);
        }
        nb_tensor_free(tmp);
    }
    return NB_OK;
}

nb_status nb_rnn_cell_init(nb_rnn_cell *c, nb_params *p, const char *name, nb_rnn_kind kind, int64_t input,
                           int64_t hidden, const nb_layer_opts *opts, nb_rng *rng)
{
    return cell_init(c, p, name, "", kind, input, hidden, opts, rng);
}

/* c + x W^T for x [..., in], W [out, in]; c a bias [out], a pre-activation [..., out], or NULL */
static nb_tensor *affine(nb_tensor *x, nb_tensor *w, nb_tensor *c)
{
    return c ? nb_addmm(c, x, w, NB_TRANS_B) : nb_matmul_ex(x, w, NB_TRANS_B);
}

/* The bias of the input projection: for Elman and LSTM cells b_ih + b_hh, so that a step adds no
 * bias of its own (a GRU keeps b_hh in the step: its candidate multiplies (h W_hn^T + b_hn) by r). */
static nb_tensor *input_bias(const nb_rnn_cell *c)
{
    if (c->kind == NB_GRU || !c->b_hh) return c->b_ih;
    return nb_add(c->b_ih, c->b_hh);
}

/* Arguments of one cell step: a cell of a kind in `accept` (a bit per nb_rnn_kind), x [B, input],
 * h (and for an LSTM the cell state) [B, hidden]. */
static int check_step(const nb_rnn_cell *c, unsigned accept, nb_tensor *x, nb_tensor *h, nb_tensor *cell,
                      const char *who)
{
    char sx[96], sh[96];
    static const char *const kinds[] = {"an Elman", "an Elman", "an LSTM", "a GRU"};
    if (!c || !c->w_ih) {
        nb_error_set(NB_ERR_ARG, "%s: cell is NULL or not initialised", who);
        return 0;
    }
    if (!(accept & (1u << c->kind))) {
        int want = accept & (1u << NB_LSTM) ? NB_LSTM : accept & (1u << NB_GRU) ? NB_GRU : NB_RNN_TANH;
        nb_error_set(NB_ERR_ARG, "%s: the cell is not %s cell (it is %s cell)", who, kinds[want], kinds[c->kind]);
        return 0;
    }
    int lstm = c->kind == NB_LSTM;
    if (!x || !h || (lstm && !cell)) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: an input tensor is NULL", who);
        return 0;
    }
    if (nb_tensor_ndim(x) != 2 || nb_tensor_dim(x, 1) != c->input) {
        nb_error_set(NB_ERR_SHAPE, "%s: input %s: expected [B, %lld]", who, nb_shape_str(x, sx, sizeof sx),
                     (long long)c->input);
        return 0;
    }
    int64_t b = nb_tensor_dim(x, 0);
    nb_tensor *states[2] = {h, cell};
    for (int i = 0; i < 2; i++) {
        nb_tensor *s = states[i];
        if (!s || (nb_tensor_ndim(s) == 2 && nb_tensor_dim(s, 0) == b && nb_tensor_dim(s, 1) == c->hidden)) continue;
        nb_error_set(NB_ERR_SHAPE, "%s: %s %s for input %s: expected [%lld, %lld]", who, i ? "cell state" : "state",
                     nb_shape_str(s, sh, sizeof sh), nb_shape_str(x, sx, sizeof sx), (long long)b, (long long)c->hidden);
        return 0;
    }
    return 1;
}

/* One step from the input projection gx = x W_ih^T + input_bias(c) [B, G*hidden]. */
static nb_tensor *elman_step(const nb_rnn_cell *c, nb_tensor *gx, nb_tensor *h)
{
    nb_tensor *pre = affine(h, c->w_hh, gx);
    return c->kind == NB_RNN_RELU ? nb_relu(pre) : nb_tanh(pre);
}

/* i, f, g, o = gates of gx + h W_hh^T; c' = f c + i g, h' = o tanh(c') (nb_lstm_gates: one fused op) */
static void lstm_step(const nb_rnn_cell *c, nb_tensor *gx, nb_tensor *h, nb_tensor *cell, nb_tensor **h_out,
                      nb_tensor **c_out)
{
    nb_tensor *hc = nb_lstm_gates(affine(h, c->w_hh, gx), cell); /* [2, B, H]: h', c' */
    *h_out = nb_reshape(nb_slice(hc, 0, 0, 1, 1), nb_tensor_ndim(cell), nb_tensor_shape(cell));
    *c_out = nb_reshape(nb_slice(hc, 0, 1, 2, 1), nb_tensor_ndim(cell), nb_tensor_shape(cell));
}

/* r, z, n from gx and h W_hh^T + b_hh; (1 - z) n + z h (nb_gru_gates: one fused op) */
static nb_tensor *gru_step(const nb_rnn_cell *c, nb_tensor *gx, nb_tensor *h)
{
    return nb_gru_gates(gx, affine(h, c->w_hh, c->b_hh), h);
}

nb_tensor *nb_elman_cell(const nb_rnn_cell *c, nb_tensor *x, nb_tensor *h)
{
    if (!check_step(c, 1u << NB_RNN_TANH | 1u << NB_RNN_RELU, x, h, NULL, "nb_elman_cell")) return NULL;
    return elman_step(c, affine(x, c->w_ih, input_bias(c)), h);
}

nb_status nb_lstm_cell(const nb_rnn_cell *c, nb_tensor *x, nb_tensor *h, nb_tensor *cell, nb_tensor **h_out,
                       nb_tensor **c_out)
{
    if (!h_out || !c_out) {
        nb_error_set(NB_ERR_ARG, "nb_lstm_cell: h_out and c_out are required");
        return NB_ERR_ARG;
    }
    *h_out = *c_out = NULL;
    if (!check_step(c, 1u << NB_LSTM, x, h, cell, "nb_lstm_cell")) return nb_error_code();
    lstm_step(c, affine(x, c->w_ih, input_bias(c)), h, cell, h_out, c_out);
    return *h_out ? NB_OK : nb_error_code();
}

nb_tensor *nb_gru_cell(const nb_rnn_cell *c, nb_tensor *x, nb_tensor *h)
{
    if (!check_step(c, 1u << NB_GRU, x, h, NULL, "nb_gru_cell")) return NULL;
    return gru_step(c, affine(x, c->w_ih, input_bias(c)), h);
}

/* ---- multi-layer sequence runner -------------------------------------------------------------- */

static int directions(const nb_rnn *r) { return r->bidirectional ? 2 : 1; }

/* The cell of layer l in direction d (0 forward, 1 reverse). */
static const nb_rnn_cell *cell_of(const nb_rnn *r, int l, int d) { return d ? &r->cell_reverse[l] : &r->cell[l]; }

nb_status nb_rnn_init(nb_rnn *r, nb_params *p, const char *name, nb_rnn_kind kind, int64_t input, int64_t hidden,
                      int layers, const nb_rnn_opts *opts, nb_rng *rng)
{
    if (!r || !p || !name || layers < 1 || layers > NB_RNN_MAX_LAYERS ||
        (opts && !(opts->dropout >= 0 && opts->dropout < 1))) {
        nb_error_set(NB_ERR_ARG, "nb_rnn_init: %s: need 1..%d layers and dropout in [0, 1) (got %d layers)",
                     name ? name : "?", NB_RNN_MAX_LAYERS, layers);
        return NB_ERR_ARG;
    }
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->layers = layers;
    r->input = input;
    r->hidden = hidden;
    r->batch_first = opts ? opts->batch_first : 0;
    r->bidirectional = opts && opts->bidirectional ? 1 : 0;
    r->dropout = opts ? opts->dropout : 0;
    r->rng = rng;
    r->owner = p;
    /* torch.nn.RNN's order: layer by layer, the forward cell's four tensors before the reverse's */
    for (int l = 0; l < layers; l++)
        for (int d = 0; d < directions(r); d++) {
            char sfx[24];
            snprintf(sfx, sizeof sfx, "_l%d%s", l, d ? "_reverse" : "");
            nb_status st = cell_init(d ? &r->cell_reverse[l] : &r->cell[l], p, name, sfx, kind,
                                     l ? directions(r) * hidden : input, hidden, opts ? &opts->layer : NULL, rng);
            if (st != NB_OK) return st;
        }
    return NB_OK;
}

/* Part k of a [layers * directions, B, hidden] state, as [B, hidden]. */
static nb_tensor *layer_state(nb_tensor *s, int k, int64_t b, int64_t hidden)
{
    return nb_reshape(nb_slice(s, 0, k, k + 1, 1), NB_SHAPE(b, hidden));
}

static int check_state(const nb_rnn *r, nb_tensor *s, int64_t b, const char *what)
{
    if (!s) {
        nb_error_set(NB_ERR_ARG, "nb_rnn_forward: initial %s is NULL", what);
        return 0;
    }
    int64_t n = (int64_t)r->layers * directions(r);
    if (nb_tensor_ndim(s) != 3 || nb_tensor_dim(s, 0) != n || nb_tensor_dim(s, 1) != b ||
        nb_tensor_dim(s, 2) != r->hidden) {
        char ss[96];
        nb_error_set(NB_ERR_SHAPE, "nb_rnn_forward: initial %s %s: expected [%lld, %lld, %lld]%s", what,
                     nb_shape_str(s, ss, sizeof ss), (long long)n, (long long)b, (long long)r->hidden,
                     r->bidirectional ? " (layers * 2 directions first)" : "");
        return 0;
    }
    return 1;
}

/* One direction of one layer over every step. gx_all [T, B, G*H]: the input projection with its
 * biases; *h, *cell [B, H]: the initial state (cell NULL but for an LSTM); lens [B, 1] or NULL.
 * The forward direction runs t = 0 .. T-1, the reverse one t = T-1 .. 0; either way a step t at or
 * past a sequence's length keeps its state and outputs zeros, so the reverse direction of a sequence
 * of length L starts from the initial state at step L-1. outs[t] receives step t's output [B, H];
 * *h and *cell end as the final state. */
static nb_status run_direction(const nb_rnn_cell *c, nb_tensor *gx_all, nb_tensor *lens, int reverse, int64_t T,
                               int64_t B, nb_tensor **h, nb_tensor **cell, nb_tensor **outs)
{
    const int64_t gh = gates_of(c->kind) * c->hidden;
    const nb_dtype dt = nb_tensor_dtype(gx_all);
    nb_tensor *zero = lens ? nb_zeros(dt, 0, NULL) : NULL;
    if (lens && !zero) return nb_error_code();
    for (int64_t i = 0; i < T; i++) {
        int64_t t = reverse ? T - 1 - i : i;
        nb_tensor *gx = nb_reshape(nb_slice(gx_all, 0, t, t + 1, 1), NB_SHAPE(B, gh));
        nb_tensor *h2 = NULL, *c2 = NULL;
        if (c->kind == NB_LSTM)
            lstm_step(c, gx, *h, *cell, &h2, &c2);
        else if (c->kind == NB_GRU)
            h2 = gru_step(c, gx, *h);
        else
            h2 = elman_step(c, gx, *h);
        if (lens) {
            /* past a sequence's end its state stays and its output is zero (a where, not a product:
             * nothing of the step computed there reaches the result, whatever its values) */
            nb_tensor *m = nb_gt(lens, nb_full(dt, 0, NULL, (double)t));
            outs[t] = nb_where(m, h2, zero);
            h2 = nb_where(m, h2, *h);
            if (c2) c2 = nb_where(m, c2, *cell);
        } else {
            outs[t] = h2;
        }
        *h = h2;
        *cell = c2;
        if (!h2) return nb_error_code();
    }
    return NB_OK;
}

nb_status nb_rnn_forward(const nb_rnn *r, nb_tensor *x, const nb_rnn_state *init, const int64_t *lengths,
                         nb_tensor **out, nb_rnn_state *final)
{
    const char *who = "nb_rnn_forward";
    if (out) *out = NULL;
    if (final) final->h = final->c = NULL;
    if (!r || r->layers < 1 || r->layers > NB_RNN_MAX_LAYERS) {
        nb_error_set(NB_ERR_ARG, "%s: network is NULL or not initialised", who);
        return NB_ERR_ARG;
    }
    if (!x) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: input is NULL", who);
        return nb_error_code();
    }
    char sx[96];
    if (nb_tensor_ndim(x) != 3 || nb_tensor_dim(x, 2) != r->input) {
        nb_error_set(NB_ERR_SHAPE, "%s: input %s: expected [%s, %lld]", who, nb_shape_str(x, sx, sizeof sx),
                     r->batch_first ? "B, T" : "T, B", (long long)r->input);
        return NB_ERR_SHAPE;
    }
    /* every cell present and sized for its place (a struct edited by hand could say otherwise) */
    for (int l = 0; l < r->layers; l++)
        for (int d = 0; d < directions(r); d++) {
            const nb_rnn_cell *c = cell_of(r, l, d);
            int64_t in = l ? directions(r) * r->hidden : r->input;
            if (!c->w_ih || c->kind != r->kind || c->input != in || c->hidden != r->hidden) {
                nb_error_set(NB_ERR_ARG, "%s: the %s cell of layer %d is missing or does not fit (input %lld, hidden "
                             "%lld; expected %lld, %lld)", who, d ? "reverse" : "forward", l, (long long)c->input,
                             (long long)c->hidden, (long long)in, (long long)r->hidden);
                return NB_ERR_ARG;
            }
        }
    nb_dtype dt = nb_tensor_dtype(x);
    if (dt != nb_tensor_dtype(r->cell[0].w_ih)) {
        nb_error_set(NB_ERR_DTYPE, "%s: input is %s, parameters are %s", who, nb_dtype_name(dt),
                     nb_dtype_name(nb_tensor_dtype(r->cell[0].w_ih)));
        return NB_ERR_DTYPE;
    }
    if (r->batch_first) x = nb_transpose(x, 0, 1);
    const int64_t T = nb_tensor_dim(x, 0), B = nb_tensor_dim(x, 1), H = r->hidden;
    if (T < 1 || B < 1) {
        nb_error_set(NB_ERR_SHAPE, "%s: input %s has no steps or no sequences", who, nb_shape_str(x, sx, sizeof sx));
        return NB_ERR_SHAPE;
    }
    if (init && (!check_state(r, init->h, B, "h") || (r->kind == NB_LSTM && !check_state(r, init->c, B, "c"))))
        return nb_error_code();

    /* lengths as a [B, 1] tape constant; the step-t mask is lens > t */
    nb_tensor *lens = NULL;
    if (lengths) {
        lens = nb_zeros(dt, NB_SHAPE(B, 1));
        if (!lens) return nb_error_code();
        for (int64_t b = 0; b < B; b++) {
            if (lengths[b] < 1 || lengths[b] > T) {
                nb_error_set(NB_ERR_ARG, "%s: length %lld of sequence %lld is outside 1..%lld (T)", who,
                             (long long)lengths[b], (long long)b, (long long)T);
                return NB_ERR_ARG;
            }
            if (dt == NB_F32)
                ((float *)nb_tensor_data(lens))[b] = (float)lengths[b];
            else
                ((double *)nb_tensor_data(lens))[b] = (double)lengths[b];
        }
        /* x past each sequence's end is padding that torch's packed sequences never read: zeroed here
         * by a where (a NaN or an infinity there must not reach the outputs, the states or, through
         * the input projection's backward, the gradients) */
        nb_tensor *valid = nb_zeros(dt, NB_SHAPE(T, B, 1));
        if (!valid) return nb_error_code();
        for (int64_t t = 0; t < T; t++)
            for (int64_t b = 0; b < B; b++) {
                if (t >= lengths[b]) continue;
                if (dt == NB_F32)
                    ((float *)nb_tensor_data(valid))[t * B + b] = 1;
                else
                    ((double *)nb_tensor_data(valid))[t * B + b] = 1;
            }
        x = nb_where(valid, x, nb_zeros(dt, 0, NULL));
        if (!x) return nb_error_code();
    }

    /* final states in torch's order: layer 0 forward, layer 0 reverse, layer 1 forward, ... */
    const int D = directions(r);
    nb_tensor *h_last[2 * NB_RNN_MAX_LAYERS] = {0}, *c_last[2 * NB_RNN_MAX_LAYERS] = {0};
    nb_tensor *seq = x;
    for (int l = 0; l < r->layers; l++) {
        if (l > 0 && r->dropout > 0) seq = nb_train_dropout(r->owner, seq, r->dropout, r->rng); /* no identity view */
        nb_tensor *dir_out[2] = {0};
        for (int d = 0; d < D; d++) {
            const nb_rnn_cell *c = cell_of(r, l, d);
            int k = l * D + d;
            /* the input projection of every step at once, with the biases: [T, B, G*H] */
            nb_tensor *gx_all = affine(seq, c->w_ih, input_bias(c));
            nb_tensor *h = init ? layer_state(init->h, k, B, H) : nb_zeros(dt, NB_SHAPE(B, H));
            nb_tensor *cell = r->kind != NB_LSTM ? NULL : init ? layer_state(init->c, k, B, H) : nb_zeros(dt, NB_SHAPE(B, H));
            nb_tensor **outs = nb_scratch((size_t)T * sizeof *outs); /* no heap allocation per call */
            if (!outs || !gx_all) return nb_error_code();
            nb_status st = run_direction(c, gx_all, lens, d, T, B, &h, &cell, outs);
            if (st != NB_OK) return st;
            dir_out[d] = nb_stack((int)T, outs, 0);
            h_last[k] = h;
            c_last[k] = cell;
        }
        /* [T, B, H], or both directions side by side: [T, B, 2H] */
        seq = D == 1 ? dir_out[0] : nb_concat(2, dir_out, 2);
        if (!seq) return nb_error_code();
    }
    if (out) *out = r->batch_first ? nb_transpose(seq, 0, 1) : seq;
    if (final) {
        final->h = nb_stack(r->layers * D, h_last, 0);
        final->c = r->kind == NB_LSTM ? nb_stack(r->layers * D, c_last, 0) : NULL;
    }
    if ((out && !*out) || (final && !final->h)) return nb_error_code();
    return NB_OK;
}

static nb_status keep_one(nb_tensor *src, nb_tensor **dst)
{
    if (!src) {
        nb_tensor_free(*dst);
        *dst = NULL;
        return NB_OK;
    }
    if (*dst && nb_tensor_dtype(*dst) == nb_tensor_dtype(src) && nb_tensor_ndim(*dst) == nb_tensor_ndim(src) &&
        memcmp(nb_tensor_shape(*dst), nb_tensor_shape(src), (size_t)nb_tensor_ndim(src) * sizeof(int64_t)) == 0)
        return nb_tensor_copy_from(*dst, nb_tensor_cdata(src));
    nb_tensor_free(*dst);
    *dst = nb_tensor_clone(src);
    return *dst ? NB_OK : nb_error_code();
}

nb_status nb_rnn_state_keep(const nb_rnn_state *state, nb_rnn_state *keep)
{
    if (!state || !keep || !state->h) {
        nb_error_set(NB_ERR_ARG, "nb_rnn_state_keep: state and keep are required");
        return NB_ERR_ARG;
    }
    nb_status st = keep_one(state->h, &keep->h);
    return st != NB_OK ? st : keep_one(state->c, &keep->c);
}

void nb_rnn_state_free(nb_rnn_state *keep)
{
    if (!keep) return;
    nb_tensor_free(keep->h);
    nb_tensor_free(keep->c);
    keep->h = keep->c = NULL;
}
