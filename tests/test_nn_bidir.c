/* Bidirectional recurrent networks (nb_rnn_opts.bidirectional): float64 gradient checks of LSTM and GRU
 * networks with per-sequence lengths (first order over every input and parameter, second order on a
 * smaller one), the reverse direction against a one-directional run over each sequence reversed,
 * padding values past each length that change nothing (NaN, inf), dropout between layers against the same network run layer by layer with the same masks, torch's
 * parameter names, order and shapes, bad states, and a training step of a bidirectional model (padded
 * embedding, lengths, dropout, weighted cross-entropy) that makes no heap allocation after the
 * first. Values against PyTorch are in nn_f64.txt (test_nn_fixtures). */
#include "nntest.h"

typedef struct rnn_ctx {
    const nb_rnn *r;
    const int64_t *lengths;
} rnn_ctx;

/* in: x, h0 (, c0 for an LSTM) -> [out, h_n (, c_n)] flattened */
static nb_tensor *f_rnn(void *u, nb_tensor *const *in)
{
    const rnn_ctx *c = u;
    nb_rnn_state init = {in[1], c->r->kind == NB_LSTM ? in[2] : NULL}, fin;
    nb_tensor *y;
    if (nb_rnn_forward(c->r, in[0], &init, c->lengths, &y, &fin) != NB_OK) return NULL;
    nb_tensor *parts[3] = {y, fin.h, fin.c};
    return nnt_cat_flat(fin.c ? 3 : 2, parts);
}

/* gradcheck (and with second, gradgradcheck) of a bidirectional network over x, the initial state
 * and every parameter, with lengths */
static void gradcheck_bidir(nb_rnn_kind kind, const char *kname, int layers, const int64_t *lengths, int second)
{
    enum { T = 4, B = 2, I = 3, H = 3 };
    char what[128];
    nb_rng rng;
    nb_rng_seed(&rng, 40 + (uint64_t)kind * 3 + (uint64_t)layers);
    nb_params *p = nb_params_new();
    nb_rnn r;
    nb_rnn_opts o = {.layer = NNT_F64, .bidirectional = 1};
    CHECK(nb_rnn_init(&r, p, "rnn", kind, I, H, layers, &o, &rng) == NB_OK, "%s init: %s", kname, nb_error_message());
    for (int i = 0; i < nb_params_count(p); i++) nnt_randomize(nb_params_tensor(p, i), &rng, -0.7, 0.7);
    int lstm = kind == NB_LSTM;
    nb_tensor *x = NNT_LEAF(&rng, -1, 1, T, B, I);
    nb_tensor *h0 = NNT_LEAF(&rng, -0.5, 0.5, 2 * layers, B, H), *c0 = NNT_LEAF(&rng, -0.5, 0.5, 2 * layers, B, H);
    nb_tensor *in[NB_GRADCHECK_MAX_INPUTS] = {x, h0};
    int n = 2;
    if (lstm) in[n++] = c0;
    nnt_add_params(p, in, &n);
    CHECK(n == (lstm ? 3 : 2) + 8 * layers, "%s: %d gradcheck inputs (x, states, 8 per layer)", kname, n);
    rnn_ctx ctx = {&r, lengths};
    snprintf(what, sizeof what, "bidirectional %s, %d layer%s, lengths {%lld, %lld}", kname, layers,
             layers > 1 ? "s" : "", (long long)lengths[0], (long long)lengths[1]);
    if (second)
        NNT_GRADGRADCHECK(what, f_rnn, &ctx, n, in);
    else
        NNT_GRADCHECK(what, f_rnn, &ctx, n, in);
    nb_tensor_free(x);
    nb_tensor_free(h0);
    nb_tensor_free(c0);
    nb_params_free(p);
}

static void test_gradcheck(void)
{
    static const int64_t len_lstm[2] = {4, 2}, len_gru[2] = {1, 3};
    gradcheck_bidir(NB_LSTM, "lstm", 2, len_lstm, 0);
    gradcheck_bidir(NB_GRU, "gru", 2, len_gru, 0);
    gradcheck_bidir(NB_GRU, "gru", 1, len_gru, 1);
    gradcheck_bidir(NB_LSTM, "lstm", 1, len_lstm, 1);
}

/* x[idx, b] for i64 step indices idx: [n, 1, F] */
static nb_tensor *steps_of(nb_tensor *x, int64_t b, int n, const int64_t *idx)
{
    nb_tensor *ix = nb_constant(NB_I64, NB_SHAPE(n), idx);
    return nb_index_select(nb_slice(x, 1, b, b + 1, 1), 0, ix);
}

/* A one-layer bidirectional network with lengths: its forward half is the forward cell run over each
 * sequence cut to its length, its reverse half the reverse cell run over that sequence reversed
 * (outputs reversed back), both from the sequence's initial state; zeros past each end. */
static void check_reverse(nb_rnn_kind kind, const char *kname)
{
    enum { T = 5, B = 3, I = 2, H = 4 };
    const int64_t lengths[B] = {2, 5, 4};
    nb_rng rng;
    nb_rng_seed(&rng, 50 + (uint64_t)kind);
    nb_params *p = nb_params_new();
    nb_rnn r;
    nb_rnn_opts o = {.layer = NNT_F64, .bidirectional = 1};
    CHECK(nb_rnn_init(&r, p, "rnn", kind, I, H, 1, &o, &rng) == NB_OK, "%s: %s", kname, nb_error_message());
    int lstm = kind == NB_LSTM;
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(T, B, I), -1, 1, &rng);
    nb_tensor *h0 = nb_tensor_uniform(NB_F64, NB_SHAPE(2, B, H), -0.5, 0.5, &rng);
    nb_tensor *c0 = lstm ? nb_tensor_uniform(NB_F64, NB_SHAPE(2, B, H), -0.5, 0.5, &rng) : NULL;
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_rnn_state init = {h0, c0}, fin;
    nb_tensor *y = NULL;
    CHECK(nb_rnn_forward(&r, x, &init, lengths, &y, &fin) == NB_OK, "%s: %s", kname, nb_error_message());
    CHECK(NNT_SHAPE_IS(y, T, B, 2 * H) && NNT_SHAPE_IS(fin.h, 2, B, H) && (!lstm || NNT_SHAPE_IS(fin.c, 2, B, H)) &&
              (lstm || !fin.c),
          "%s: out [T, B, 2H], final [2, B, H]", kname);
    nb_rnn one[2] = {r, r}; /* the forward and the reverse cell as one-directional networks */
    one[0].bidirectional = one[1].bidirectional = 0;
    one[1].cell[0] = r.cell_reverse[0];
    double worst = 0, pad = 0;
    int ran = 0;
    for (int64_t b = 0; y && fin.h && b < B; b++) {
        int64_t L = lengths[b], fwd[T], rev[T];
        for (int64_t t = 0; t < L; t++) fwd[t] = t, rev[t] = L - 1 - t;
        for (int d = 0; d < 2; d++) {
            nb_tensor *xs = steps_of(x, b, (int)L, d ? rev : fwd);
            nb_rnn_state s0 = {nb_slice(nb_slice(h0, 0, d, d + 1, 1), 1, b, b + 1, 1),
                               lstm ? nb_slice(nb_slice(c0, 0, d, d + 1, 1), 1, b, b + 1, 1) : NULL}, s1;
            nb_tensor *ys = NULL;
            if (nb_rnn_forward(&one[d], xs, &s0, NULL, &ys, &s1) != NB_OK) break;
            ran++;
            for (int64_t i = 0; i < L; i++) {
                int64_t t = d ? L - 1 - i : i; /* the network's step that the one-directional step i is */
                for (int64_t k = 0; k < H; k++)
                    worst = fmax(worst, fabs(nb_tensor_get(y, (t * B + b) * 2 * H + d * H + k) - nb_tensor_get(ys, i * H + k)));
            }
            for (int64_t k = 0; k < H; k++) {
                worst = fmax(worst, fabs(nb_tensor_get(fin.h, (d * B + b) * H + k) - nb_tensor_get(s1.h, k)));
                if (lstm) worst = fmax(worst, fabs(nb_tensor_get(fin.c, (d * B + b) * H + k) - nb_tensor_get(s1.c, k)));
            }
        }
        for (int64_t t = L; t < T; t++)
            for (int64_t k = 0; k < 2 * H; k++) pad = fmax(pad, fabs(nb_tensor_get(y, (t * B + b) * 2 * H + k)));
    }
    CHECK(ran == 2 * B && worst < 1e-14, "%s: bidirectional = forward run + reverse run of each cut sequence (%d runs, "
          "off by %g)", kname, ran, worst);
    CHECK(pad == 0.0, "%s: outputs past each sequence's end are zero in both halves (%g)", kname, pad);

    /* no lengths: the reverse direction of every sequence starts at step T-1 */
    nb_tensor *y_full = NULL;
    nb_rnn_state fin_full;
    CHECK(nb_rnn_forward(&r, x, &init, NULL, &y_full, &fin_full) == NB_OK, "%s: %s", kname, nb_error_message());
    int64_t rev_all[T];
    for (int t = 0; t < T; t++) rev_all[t] = T - 1 - t;
    nb_tensor *xr = nb_index_select(x, 0, nb_constant(NB_I64, NB_SHAPE(T), rev_all));
    nb_rnn_state s0 = {nb_slice(h0, 0, 1, 2, 1), lstm ? nb_slice(c0, 0, 1, 2, 1) : NULL}, s1;
    nb_tensor *yr = NULL;
    CHECK(nb_rnn_forward(&one[1], xr, &s0, NULL, &yr, &s1) == NB_OK, "%s: %s", kname, nb_error_message());
    nb_tensor *y_rev_half = nb_index_select(nb_slice(y_full, 2, H, 2 * H, 1), 0, nb_constant(NB_I64, NB_SHAPE(T), rev_all));
    double d_full = fmax(nnt_max_diff(y_rev_half, yr), nnt_max_diff(nb_slice(fin_full.h, 0, 1, 2, 1), s1.h));
    CHECK(d_full < 1e-14, "%s: without lengths the reverse half is the reverse cell over x reversed (%g)", kname, d_full);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(h0);
    nb_tensor_free(c0);
    nb_params_free(p);
}

static void test_reverse(void)
{
    check_reverse(NB_LSTM, "lstm");
    check_reverse(NB_GRU, "gru");
    check_reverse(NB_RNN_TANH, "rnn tanh");
}

/* What lies past a sequence's length is padding, never read (as torch's packed sequences): x padded
 * with NaN, inf and -inf gives the same outputs, final states and gradients (parameters, initial
 * state, x) as x padded with zeros, and x's gradient is zero on the padding; f32 and f64, one and
 * two directions, two layers. (The padding's NaN used to reach the outputs and every weight's
 * gradient through the product by the 0/1 mask and through the input projection.) */
static void check_padding(nb_rnn_kind kind, const char *kname, nb_dtype dt, int bidir)
{
    enum { T = 4, B = 3, I = 2, H = 3 };
    const int64_t lengths[B] = {4, 1, 2};
    nb_rng rng;
    nb_rng_seed(&rng, 70 + (uint64_t)kind);
    nb_params *p = nb_params_new();
    nb_rnn r;
    nb_rnn_opts o = {.layer = {.dtype = dt}, .bidirectional = bidir};
    CHECK(nb_rnn_init(&r, p, "rnn", kind, I, H, 2, &o, &rng) == NB_OK, "%s: %s", kname, nb_error_message());
    const int D = bidir ? 2 : 1, lstm = kind == NB_LSTM;
    nb_tensor *x[2], *h0 = nb_tensor_uniform(dt, NB_SHAPE(2 * D, B, H), -0.5, 0.5, &rng);
    nb_tensor *c0 = lstm ? nb_tensor_uniform(dt, NB_SHAPE(2 * D, B, H), -0.5, 0.5, &rng) : NULL;
    x[0] = nb_tensor_uniform(dt, NB_SHAPE(T, B, I), -1, 1, &rng);
    x[1] = nb_tensor_clone(x[0]);
    const double pads[3] = {NAN, INFINITY, -INFINITY};
    for (int64_t t = 0; t < T; t++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t k = 0; t >= lengths[b] && k < I; k++) {
                nb_tensor_set(x[0], (t * B + b) * I + k, 0.0);
                nb_tensor_set(x[1], (t * B + b) * I + k, pads[(t + b + k) % 3]);
            }
    nb_tensor *leaves[3] = {x[0], h0, c0};
    nb_tensor *vals[2] = {0}, *grads[2][32] = {{0}};
    int ng = 0;
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    for (int v = 0; v < 2; v++) {
        leaves[0] = x[v];
        for (int i = 0; i < 3; i++)
            if (leaves[i]) nb_tensor_set_requires_grad(leaves[i], 1);
        nb_params_zero_grad(p);
        nb_rnn_state init = {h0, c0}, fin;
        nb_tensor *y = NULL;
        CHECK(nb_rnn_forward(&r, x[v], &init, lengths, &y, &fin) == NB_OK, "%s: %s", kname, nb_error_message());
        /* a loss that weighs every output and final state differently */
        nb_tensor *flat = nnt_cat_flat(lstm ? 3 : 2, (nb_tensor *[]){y, fin.h, fin.c});
        nb_tensor *w = nb_sin(nb_cumsum(nb_ones(dt, NB_SHAPE(nb_tensor_numel(flat))), 0));
        vals[v] = flat;
        nb_tensor *inputs[32];
        int n = 0;
        for (int i = 0; i < 3; i++)
            if (leaves[i]) inputs[n++] = leaves[i];
        nnt_add_params(p, inputs, &n);
        ng = n;
        CHECK(nb_grad(nb_sum_all(nb_mul(flat, w)), NULL, n, inputs, grads[v], 0) == NB_OK, "%s: %s", kname,
              nb_error_message());
    }
    int finite = 1;
    for (int64_t i = 0; vals[0] && vals[1] && i < nb_tensor_numel(vals[1]); i++) finite &= isfinite(nb_tensor_get(vals[1], i));
    CHECK(vals[0] && vals[1] && finite && nnt_max_diff(vals[0], vals[1]) == 0.0,
          "%s %s%s: outputs and final states do not depend on the padding's values", kname, nb_dtype_name(dt),
          bidir ? " bidirectional" : "");
    double worst = 0, on_pad = 0;
    for (int i = 0; i < ng && grads[0][i] && grads[1][i]; i++) {
        for (int64_t k = 0; k < nb_tensor_numel(grads[1][i]); k++)
            if (!isfinite(nb_tensor_get(grads[1][i], k))) worst = INFINITY;
        worst = fmax(worst, nnt_max_diff(grads[0][i], grads[1][i]));
    }
    for (int64_t t = 0; grads[1][0] && t < T; t++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t k = 0; t >= lengths[b] && k < I; k++) on_pad = fmax(on_pad, fabs(nb_tensor_get(grads[1][0], (t * B + b) * I + k)));
    CHECK(ng > 0 && worst == 0.0 && on_pad == 0.0,
          "%s %s%s: gradients do not depend on the padding (off by %g) and x's is 0 there (%g)", kname,
          nb_dtype_name(dt), bidir ? " bidirectional" : "", worst, on_pad);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x[0]);
    nb_tensor_free(x[1]);
    nb_tensor_free(h0);
    nb_tensor_free(c0);
    nb_params_free(p);
}

static void test_padding(void)
{
    for (int bidir = 0; bidir < 2; bidir++) {
        check_padding(NB_LSTM, "lstm", NB_F64, bidir);
        check_padding(NB_GRU, "gru", NB_F32, bidir);
        check_padding(NB_RNN_RELU, "rnn relu", NB_F64, bidir);
    }
}

/* Dropout between layers: a 3-layer bidirectional GRU in training mode equals its layers run one at
 * a time with nb_dropout (same rng stream) applied to each layer's [T, B, 2H] output but the last. */
static void test_dropout(void)
{
    enum { T = 4, B = 2, I = 3, H = 5, L = 3 };
    const int64_t lengths[B] = {4, 3};
    const double pdrop = 0.4;
    nb_rng rng;
    nb_rng_seed(&rng, 61);
    nb_params *p = nb_params_new();
    nb_rnn r;
    nb_rnn_opts o = {.layer = NNT_F64, .bidirectional = 1, .dropout = pdrop};
    CHECK(nb_rnn_init(&r, p, "rnn", NB_GRU, I, H, L, &o, &rng) == NB_OK, "%s", nb_error_message());
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(T, B, I), -1, 1, &rng);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_rng ra, rb;
    nb_rng_seed(&ra, 5);
    rb = ra;
    r.rng = &ra;
    nb_tensor *y = NULL;
    nb_rnn_state fin;
    CHECK(nb_rnn_forward(&r, x, NULL, lengths, &y, &fin) == NB_OK, "%s", nb_error_message());
    nb_tensor *seq = x, *h_parts[2 * L] = {0};
    for (int l = 0; l < L && seq; l++) {
        nb_rnn one = r;
        one.layers = 1;
        one.dropout = 0;
        one.input = l ? 2 * H : I;
        one.cell[0] = r.cell[l];
        one.cell_reverse[0] = r.cell_reverse[l];
        if (l) seq = nb_dropout(seq, pdrop, &rb);
        nb_rnn_state f1;
        nb_tensor *yl = NULL;
        if (nb_rnn_forward(&one, seq, NULL, lengths, &yl, &f1) != NB_OK) {
            seq = NULL;
            break;
        }
        seq = yl;
        h_parts[2 * l] = nb_slice(f1.h, 0, 0, 1, 1);
        h_parts[2 * l + 1] = nb_slice(f1.h, 0, 1, 2, 1);
    }
    nb_tensor *h_manual = seq ? nb_concat(2 * L, h_parts, 0) : NULL;
    double d = fmax(nnt_max_diff(y, seq), nnt_max_diff(fin.h, h_manual));
    CHECK(d == 0.0, "dropout between bidirectional layers: layer-by-layer run with the same masks differs by %g", d);
    CHECK(memcmp(&ra, &rb, sizeof ra) == 0, "dropout drew %d masks from the rng, as the layer-by-layer run", L - 1);
    /* and it acts: without dropout the outputs differ; in evaluation mode they do not */
    nb_rnn r0 = r;
    r0.dropout = 0;
    nb_tensor *y0 = NULL, *ye = NULL;
    nb_rnn_forward(&r0, x, NULL, lengths, &y0, NULL);
    nb_params_set_training(p, 0);
    nb_rnn_forward(&r, x, NULL, lengths, &ye, NULL);
    CHECK(nnt_max_diff(y, y0) > 1e-6 && nnt_max_diff(ye, y0) == 0.0,
          "dropout acts in training mode only (%g, eval %g)", nnt_max_diff(y, y0), nnt_max_diff(ye, y0));
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_params_free(p);
}

/* torch.nn.LSTM(bidirectional=True)'s names, shapes and order: per layer, the forward cell's four
 * tensors, then the reverse cell's; layer 1's input is 2 * hidden. */
static void test_names(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 70);
    nb_params *p = nb_params_new();
    nb_rnn r;
    nb_rnn_opts o = {.bidirectional = 1};
    CHECK(nb_rnn_init(&r, p, "lstm", NB_LSTM, 3, 5, 2, &o, &rng) == NB_OK, "%s", nb_error_message());
    static const char *const want[] = {
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0",
        "lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse", "lstm.bias_ih_l0_reverse", "lstm.bias_hh_l0_reverse",
        "lstm.weight_ih_l1", "lstm.weight_hh_l1", "lstm.bias_ih_l1", "lstm.bias_hh_l1",
        "lstm.weight_ih_l1_reverse", "lstm.weight_hh_l1_reverse", "lstm.bias_ih_l1_reverse", "lstm.bias_hh_l1_reverse",
    };
    CHECK(nb_params_count(p) == 16, "16 tensors (got %d)", nb_params_count(p));
    for (int i = 0; i < 16 && i < nb_params_count(p); i++)
        CHECK(!strcmp(nb_params_name(p, i), want[i]), "parameter %d is %s, torch's is %s", i, nb_params_name(p, i), want[i]);
    CHECK(NNT_SHAPE_IS(nb_params_find(p, "lstm.weight_ih_l1_reverse"), 20, 10), "weight_ih_l1_reverse [4H, 2H]");
    CHECK(NNT_SHAPE_IS(nb_params_find(p, "lstm.weight_ih_l0_reverse"), 20, 3), "weight_ih_l0_reverse [4H, input]");
    CHECK(nb_params_numel(p) == 2 * (20 * 3 + 20 * 5 + 40) + 2 * (20 * 10 + 20 * 5 + 40), "element count as torch's");
    /* the forget gate bias default (1) applies to both directions */
    CHECK(nb_tensor_get(r.cell_reverse[1].b_ih, 5) == 1.0 && nb_tensor_get(r.cell[1].b_ih, 5) == 1.0,
          "forget bias 1 in both directions");
    /* one direction keeps the old names and count */
    nb_params *q = nb_params_new();
    nb_rnn u;
    CHECK(nb_rnn_init(&u, q, "lstm", NB_LSTM, 3, 5, 2, NULL, &rng) == NB_OK && nb_params_count(q) == 8 &&
              !u.bidirectional && !nb_params_find(q, "lstm.weight_ih_l0_reverse") &&
              NNT_SHAPE_IS(nb_params_find(q, "lstm.weight_ih_l1"), 20, 5),
          "one direction: 8 tensors, no _reverse, layer 1 input = hidden");
    nb_params_free(q);
    nb_params_free(p);
}

/* Bad initial states name the expected [layers * 2, B, H]; f32 networks run too. */
static void test_misuse(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 80);
    nb_params *p = nb_params_new();
    nb_rnn r, r32;
    nb_rnn_opts o = {.layer = NNT_F64, .bidirectional = 1}, o32 = {.bidirectional = 1, .batch_first = 1};
    nb_rnn_init(&r, p, "a", NB_LSTM, 2, 3, 2, &o, &rng);
    nb_rnn_init(&r32, p, "b", NB_GRU, 2, 3, 2, &o32, &rng);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = nb_full(NB_F64, NB_SHAPE(4, 2, 2), 0.3);
    nb_rnn_state bad = {nb_zeros(NB_F64, NB_SHAPE(2, 2, 3)), nb_zeros(NB_F64, NB_SHAPE(2, 2, 3))};
    CHECK_ERROR(nb_rnn_forward(&r, x, &bad, NULL, NULL, NULL) != NB_OK, NB_ERR_SHAPE,
                "initial h [2,2,3]: expected [4, 2, 3] (layers * 2 directions first)");
    nb_rnn_state good_h = {nb_zeros(NB_F64, NB_SHAPE(4, 2, 3)), nb_zeros(NB_F64, NB_SHAPE(2, 2, 3))};
    CHECK_ERROR(nb_rnn_forward(&r, x, &good_h, NULL, NULL, NULL) != NB_OK, NB_ERR_SHAPE, "initial c [2,2,3]");
    /* a struct switched to two directions by hand, without reverse cells, is refused, not run */
    nb_rnn no_rev = r;
    no_rev.bidirectional = 0;
    nb_rnn half = no_rev;
    half.bidirectional = 1;
    memset(half.cell_reverse, 0, sizeof half.cell_reverse);
    CHECK_ERROR(nb_rnn_forward(&half, x, NULL, NULL, NULL, NULL) != NB_OK, NB_ERR_ARG,
                "the reverse cell of layer 0 is missing or does not fit");
    /* and one switched to one direction keeps layer 1's [4H, 2H] input weights: refused too */
    CHECK_ERROR(nb_rnn_forward(&no_rev, x, NULL, NULL, NULL, NULL) != NB_OK, NB_ERR_ARG,
                "the forward cell of layer 1 is missing or does not fit (input 6, hidden 3; expected 3, 3)");
    const int64_t bad_len[2] = {0, 4};
    CHECK_ERROR(nb_rnn_forward(&r, x, NULL, bad_len, NULL, NULL) != NB_OK, NB_ERR_ARG, "length 0 of sequence 0");

    nb_tensor *x32 = nb_full(NB_F32, NB_SHAPE(2, 4, 2), 0.3);
    const int64_t len[2] = {4, 1};
    nb_tensor *y = NULL;
    nb_rnn_state fin;
    CHECK(nb_rnn_forward(&r32, x32, NULL, len, &y, &fin) == NB_OK && NNT_SHAPE_IS(y, 2, 4, 6) &&
              NNT_SHAPE_IS(fin.h, 4, 2, 3) && nb_tensor_dtype(y) == NB_F32 && fin.c == NULL,
          "f32 batch-first bidirectional GRU: [B, T, 2H] and [4, B, H] (%s)", nb_error_message());
    if (y) {
        double y1_pad = 0;
        for (int64_t t = 1; t < 4; t++)
            for (int64_t k = 0; k < 6; k++) y1_pad = fmax(y1_pad, fabs(nb_tensor_get(y, (4 + t) * 6 + k)));
        CHECK(y1_pad == 0.0, "f32: steps past a length-1 sequence are zero in both halves (%g)", y1_pad);
    }
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_params_free(p);
}

/* ---- steady state: a training step of a bidirectional model allocates nothing ------------------- */

static long g_calls;

static void *count_alloc(size_t size, void *user)
{
    (void)user;
    g_calls++;
    return malloc(size);
}

static void *count_realloc(void *ptr, size_t old_size, size_t new_size, void *user)
{
    (void)user;
    (void)old_size;
    g_calls++;
    return realloc(ptr, new_size);
}

static void count_free(void *ptr, size_t size, void *user)
{
    (void)user;
    (void)size;
    g_calls++;
    free(ptr);
}

/* padded embedding -> 2-layer bidirectional LSTM with lengths and dropout -> linear on both
 * directions' final states -> weighted, smoothed cross-entropy; SGD by nb_tensor_axpy */
static void test_steady_state(void)
{
    enum { T = 6, B = 4, V = 10, E = 5, H = 8, C = 3 };
    nb_rng rng;
    nb_rng_seed(&rng, 120);
    nb_params *p = nb_params_new();
    nb_embedding emb;
    nb_rnn rnn;
    nb_linear head;
    nb_layer_opts eo = {.dtype = NB_F64, .use_padding_idx = 1, .padding_idx = 0};
    nb_rnn_opts ro = {.layer = NNT_F64, .bidirectional = 1, .dropout = 0.2};
    CHECK(nb_embedding_init(&emb, p, "emb", V, E, &eo, &rng) == NB_OK && nb_rnn_init(&rnn, p, "rnn", NB_LSTM, E, H, 2, &ro, &rng) == NB_OK &&
              nb_linear_init(&head, p, "head", 2 * H, C, &NNT_F64, &rng) == NB_OK,
          "model: %s", nb_error_message());
    const int64_t lengths[B] = {6, 3, 5, 1};
    int64_t ids[T * B];
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) ids[t * B + b] = t < lengths[b] ? 1 + (int64_t)nb_rng_below(&rng, V - 1) : 0;
    nb_tensor *x = nb_tensor_from_data(NB_I64, NB_SHAPE(T, B), ids);
    nb_tensor *y = nb_tensor_from_data(NB_I64, NB_SHAPE(B), (const int64_t[]){0, 2, 1, 2});
    nb_tensor *cw = nb_tensor_from_data(NB_F64, NB_SHAPE(C), (const double[]){1.0, 0.5, 2.0});
    nb_tape *tape = nb_tape_new();
    long calls[8];
    double loss[8];
    for (int it = 0; it < 8; it++) {
        long before = g_calls;
        loss[it] = NAN;
        nb_tape_begin(tape);
        nb_rnn_state fin;
        nb_ce_opts ce = {.weight = cw, .label_smoothing = 0.1};
        if (nb_rnn_forward(&rnn, nb_embedding_forward(&emb, x), NULL, lengths, NULL, &fin) == NB_OK) {
            /* the top layer's forward and reverse final states side by side: [B, 2H] */
            nb_tensor *top[2] = {nb_reshape(nb_slice(fin.h, 0, 2, 3, 1), NB_SHAPE(B, H)),
                                 nb_reshape(nb_slice(fin.h, 0, 3, 4, 1), NB_SHAPE(B, H))};
            nb_tensor *l = nb_cross_entropy(nb_linear_forward(&head, nb_concat(2, top, 1)), y, &ce);
            if (l && nb_backward(l, NULL, 0) == NB_OK) loss[it] = nb_tensor_item(l);
        }
        for (int i = 0; i < nb_params_count(p); i++) {
            nb_tensor *w = nb_params_tensor(p, i);
            if (nb_tensor_grad(w)) nb_tensor_axpy(w, -0.3, nb_tensor_grad(w));
            nb_tensor_zero_grad(w);
        }
        nb_tape_end(tape);
        nb_tape_reset(tape);
        calls[it] = g_calls - before;
    }
    CHECK(calls[0] > 0, "the first step allocated (%ld calls): the counter is in use", calls[0]);
    for (int it = 1; it < 8; it++) CHECK(calls[it] == 0, "step %d made %ld allocator calls, expected 0", it + 1, calls[it]);
    CHECK(isfinite(loss[0]) && loss[7] < 0.8 * loss[0], "the loss falls: %g -> %g", loss[0], loss[7]);
    double pad = 0;
    for (int j = 0; j < E; j++) pad = fmax(pad, fabs(nb_tensor_get(emb.weight, j)));
    CHECK(pad == 0.0, "the padding row is still zero after training (%g)", pad);
    CHECK_NO_ERROR();
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(y);
    nb_tensor_free(cw);
    nb_params_free(p);
}

int main(void)
{
    /* before any object exists: every allocation of the library goes through the counter */
    nb_allocator a = {count_alloc, count_realloc, count_free, NULL};
    nb_set_allocator(&a);
    test_steady_state();
    test_gradcheck();
    test_reverse();
    test_padding();
    test_dropout();
    test_names();
    test_misuse();
    return nbt_report("nn_bidir");
}
