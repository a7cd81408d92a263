/* The four sequence shapes of the lecture notes, each a tiny model trained on a synthetic task until
 * its loss falls below a stated bound, then checked on a task metric:
 *   1-1  an MLP on XOR;
 *   N-1  a GRU (nb_rnn, variable lengths) classifying "more 1s than 0s" from its final state;
 *   1-N  an LSTM cell run step by step that, from a start token for digit d, emits the times table
 *        d, 2d, 3d, ... (mod 10), trained with teacher forcing and then generated greedily;
 *   N-M  an LSTM encoder and an LSTM decoder with dot-product attention that reverse a digit string.
 * Everything is float64, seeded and deterministic; gradients flow back through time through the tape
 * with no special handling. The optimiser is a small Adam written here over nb_tensor_data (the
 * library has no optimisers yet). Each test prints its final loss, metric, step count and time. */
#define _POSIX_C_SOURCE 200809L

#include "nbtest.h"

#include <stdlib.h>
#include <time.h>

#define DT NB_F64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- a tiny Adam, with the gradient's global norm clipped to `clip` (0: no clipping) ---------------- */

typedef struct adam {
    nb_params *p;
    double lr, clip;
    long t;
    double **m, **v; /* per parameter, numel moments each (NULL for buffers) */
} adam;

static int adam_init(adam *a, nb_params *p, double lr, double clip)
{
    int n = nb_params_count(p);
    *a = (adam){.p = p, .lr = lr, .clip = clip};
    a->m = calloc((size_t)n, sizeof *a->m);
    a->v = calloc((size_t)n, sizeof *a->v);
    if (!a->m || !a->v) return 0;
    for (int i = 0; i < n; i++) {
        if (!nb_params_trainable(p, i)) continue;
        size_t k = (size_t)nb_tensor_numel(nb_params_tensor(p, i));
        a->m[i] = calloc(k ? k : 1, sizeof(double));
        a->v[i] = calloc(k ? k : 1, sizeof(double));
        if (!a->m[i] || !a->v[i]) return 0;
    }
    return 1;
}

static void adam_free(adam *a)
{
    for (int i = 0; a->m && i < nb_params_count(a->p); i++) {
        free(a->m[i]);
        free(a->v[i]);
    }
    free(a->m);
    free(a->v);
}

/* One update from the parameters' accumulated (float64) gradients, which it then zeroes. Call it
 * after the tape is reset: the parameters are written in place. */
static void adam_step(adam *a)
{
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    int n = nb_params_count(a->p);
    double sq = 0;
    for (int i = 0; i < n; i++) {
        const nb_tensor *g = a->m[i] ? nb_tensor_grad(nb_params_tensor(a->p, i)) : NULL;
        if (!g) continue;
        const double *gd = nb_tensor_cdata(g);
        for (int64_t j = 0; j < nb_tensor_numel(g); j++) sq += gd[j] * gd[j];
    }
    double scale = a->clip > 0 && sqrt(sq) > a->clip ? a->clip / sqrt(sq) : 1.0;
    a->t++;
    double c1 = 1 - pow(b1, (double)a->t), c2 = 1 - pow(b2, (double)a->t);
    for (int i = 0; i < n; i++) {
        nb_tensor *w = nb_params_tensor(a->p, i);
        const nb_tensor *g = a->m[i] ? nb_tensor_grad(w) : NULL;
        if (!g) continue;
        const double *gd = nb_tensor_cdata(g);
        double *wd = nb_tensor_data(w), *m = a->m[i], *v = a->v[i];
        for (int64_t j = 0; j < nb_tensor_numel(w); j++) {
            double gj = gd[j] * scale;
            m[j] = b1 * m[j] + (1 - b1) * gj;
            v[j] = b2 * v[j] + (1 - b2) * gj * gj;
            wd[j] -= a->lr * (m[j] / c1) / (sqrt(v[j] / c2) + eps);
        }
        nb_tensor_mark_dirty(w);
    }
    nb_params_zero_grad(a->p);
}

/* Backward of a scalar loss, then reset the tape and take an Adam step. Returns the loss value
 * (NaN after an error, which stays recorded for CHECK_NO_ERROR). */
static double train_step(nb_tape *tape, adam *opt, nb_tensor *loss)
{
    double value = loss ? nb_tensor_item(loss) : NAN;
    if (!loss || nb_backward(loss, NULL, 0) != NB_OK) value = NAN;
    nb_tape_reset(tape);
    if (value == value) adam_step(opt);
    return value;
}

/* ---- 1-1: an MLP maps a vector to a class ------------------------------------------------------- */

/* XOR of two bits with an MLP 2 -> 8 (tanh) -> 1 and binary cross-entropy, full batch of the four
 * points. Bound: mean BCE < 0.01 within 1000 steps; metric: all four points on the right side of 0. */
static void test_one_to_one(void)
{
    double t0 = now_s();
    nb_rng rng;
    nb_rng_seed(&rng, 11);
    nb_params *p = nb_params_new();
    nb_mlp mlp;
    nb_layer_opts lo = {.dtype = DT};
    CHECK(nb_mlp_init(&mlp, p, "mlp", 3, (const int64_t[]){2, 8, 1}, NB_ACT_TANH, 0, &lo, &rng) == NB_OK,
          "nb_mlp_init: %s", nb_error_message());
    adam opt;
    CHECK(adam_init(&opt, p, 0.05, 0), "out of memory");
    const double xs[8] = {0, 0, 0, 1, 1, 0, 1, 1}, ys[4] = {0, 1, 1, 0};
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double loss = NAN;
    int steps = 0;
    while (steps < 1000 && !(loss < 0.01)) {
        nb_tensor *x = nb_constant(DT, NB_SHAPE(4, 2), xs), *y = nb_constant(DT, NB_SHAPE(4, 1), ys);
        loss = train_step(tape, &opt, nb_bce_with_logits(nb_mlp_forward(&mlp, x), y, NB_REDUCE_MEAN));
        steps++;
    }
    CHECK_NO_ERROR();
    CHECK(loss < 0.01, "1-1 XOR: loss %g after %d steps, bound 0.01", loss, steps);
    nb_tensor *logits = nb_mlp_forward(&mlp, nb_constant(DT, NB_SHAPE(4, 2), xs));
    int correct = 0;
    for (int i = 0; i < 4 && logits; i++) correct += (nb_tensor_get(logits, i) > 0) == (ys[i] > 0.5);
    CHECK(correct == 4, "1-1 XOR: %d of 4 points right", correct);
    nb_tape_end(tape);
    nb_tape_free(tape);
    adam_free(&opt);
    nb_params_free(p);
    printf("1-1 XOR (MLP 2-8-1): loss %.4f after %d steps, %d/4 right, %.2f s\n", loss, steps, correct,
           now_s() - t0);
}

/* ---- N-1: a sequence to one class --------------------------------------------------------------- */

#define MAJ_T 9      /* longest sequence */
#define MAJ_TRAIN 256
#define MAJ_TEST 256

/* n bit strings of odd lengths 1..MAJ_T (no ties), time-major one-hot [MAJ_T, n, 2] in x; the steps
 * past a string's length are random bits, which nb_rnn_forward must ignore because of lengths.
 * label: 1 when the string has more 1s than 0s. */
static void majority_data(nb_rng *rng, int n, double *x, int64_t *len, double *label)
{
    for (int b = 0; b < n; b++) {
        len[b] = 1 + 2 * (int64_t)nb_rng_below(rng, (MAJ_T + 1) / 2);
        int ones = 0;
        for (int t = 0; t < MAJ_T; t++) {
            int bit = (int)nb_rng_below(rng, 2);
            if (t < len[b]) ones += bit;
            x[(t * n + b) * 2 + 0] = bit ? 0 : 1;
            x[(t * n + b) * 2 + 1] = bit ? 1 : 0;
        }
        label[b] = 2 * ones > len[b] ? 1 : 0;
    }
}

/* logits [n, 1] of the classifier on h_n of a GRU 2 -> 12 */
static nb_tensor *majority_logits(const nb_rnn *gru, const nb_linear *head, const double *x, const int64_t *len,
                                  int n)
{
    nb_rnn_state fin;
    if (nb_rnn_forward(gru, nb_constant(DT, NB_SHAPE(MAJ_T, n, 2), x), NULL, len, NULL, &fin) != NB_OK) return NULL;
    return nb_linear_forward(head, nb_reshape(fin.h, NB_SHAPE(n, gru->hidden)));
}

/* Bound: mean BCE over the training set < 0.02 within 600 full-batch steps; metric: >= 97% right on
 * 256 held-out strings. */
static void test_many_to_one(void)
{
    double t0 = now_s();
    nb_rng rng;
    nb_rng_seed(&rng, 22);
    static double xtr[MAJ_T * MAJ_TRAIN * 2], ytr[MAJ_TRAIN], xte[MAJ_T * MAJ_TEST * 2], yte[MAJ_TEST];
    static int64_t ltr[MAJ_TRAIN], lte[MAJ_TEST];
    majority_data(&rng, MAJ_TRAIN, xtr, ltr, ytr);
    majority_data(&rng, MAJ_TEST, xte, lte, yte);

    nb_params *p = nb_params_new();
    nb_rnn gru;
    nb_linear head;
    nb_rnn_opts ro = {.layer = {.dtype = DT}};
    nb_layer_opts lo = {.dtype = DT};
    CHECK(nb_rnn_init(&gru, p, "gru", NB_GRU, 2, 12, 1, &ro, &rng) == NB_OK, "nb_rnn_init: %s", nb_error_message());
    CHECK(nb_linear_init(&head, p, "head", 12, 1, &lo, &rng) == NB_OK, "nb_linear_init: %s", nb_error_message());
    adam opt;
    CHECK(adam_init(&opt, p, 0.03, 5.0), "out of memory");
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double loss = NAN;
    int steps = 0;
    while (steps < 600 && !(loss < 0.02)) {
        nb_tensor *logits = majority_logits(&gru, &head, xtr, ltr, MAJ_TRAIN);
        nb_tensor *y = nb_constant(DT, NB_SHAPE(MAJ_TRAIN, 1), ytr);
        loss = train_step(tape, &opt, nb_bce_with_logits(logits, y, NB_REDUCE_MEAN));
        steps++;
    }
    CHECK_NO_ERROR();
    CHECK(loss < 0.02, "N-1 majority: loss %g after %d steps, bound 0.02", loss, steps);
    nb_no_grad_begin();
    nb_tensor *logits = majority_logits(&gru, &head, xte, lte, MAJ_TEST);
    nb_no_grad_end();
    int correct = 0;
    for (int i = 0; i < MAJ_TEST && logits; i++) correct += (nb_tensor_get(logits, i) > 0) == (yte[i] > 0.5);
    CHECK(correct >= MAJ_TEST * 97 / 100, "N-1 majority: %d of %d held-out strings right, need 97%%", correct,
          MAJ_TEST);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    adam_free(&opt);
    nb_params_free(p);
    printf("N-1 majority (GRU 2-12, lengths 1..%d): loss %.4f after %d steps, %d/%d held-out right, %.2f s\n",
           MAJ_T, loss, steps, correct, MAJ_TEST, now_s() - t0);
}

/* ---- 1-N: one input to a sequence --------------------------------------------------------------- */

#define GEN_L 6 /* emitted tokens */

/* The target: (t + 1) d mod 10 for t = 0..GEN_L-1. After 5d (0 or 5) the next token is d again, so
 * the state must carry d through the sequence: the previous token alone does not determine it. */
static int64_t times_table(int d, int t) { return (int64_t)(((t + 1) * d) % 10); }

typedef struct gen_model {
    nb_embedding emb; /* tokens 0..9: digits; 10 + d: "start the table of d" */
    nb_rnn_cell cell; /* LSTM 8 -> 24 */
    nb_linear head;   /* 24 -> 10 */
} gen_model;

/* Runs the cell over GEN_L steps for the 10 digits at once. teacher: feed the target tokens (training);
 * otherwise feed back each step's argmax, written into gen[t * 10 + d]. Returns the logits of every
 * step, [GEN_L * 10, 10] (row t * 10 + d). */
static nb_tensor *gen_run(const gen_model *g, int teacher, int64_t *gen)
{
    int64_t tok[10];
    for (int d = 0; d < 10; d++) tok[d] = 10 + d;
    nb_tensor *h = nb_zeros(DT, NB_SHAPE(10, g->cell.hidden)), *c = nb_zeros(DT, NB_SHAPE(10, g->cell.hidden));
    nb_tensor *logits[GEN_L];
    for (int t = 0; t < GEN_L; t++) {
        nb_tensor *x = nb_embedding_forward(&g->emb, nb_constant(NB_I64, NB_SHAPE(10), tok));
        if (nb_lstm_cell(&g->cell, x, h, c, &h, &c) != NB_OK) return NULL;
        logits[t] = nb_linear_forward(&g->head, h);
        nb_tensor *am = teacher ? NULL : nb_argmax(logits[t], 1, 0);
        if (!teacher && !am) return NULL;
        for (int d = 0; d < 10; d++) {
            tok[d] = teacher ? times_table(d, t) : ((const int64_t *)nb_tensor_cdata(am))[d];
            if (gen) gen[t * 10 + d] = tok[d];
        }
    }
    return nb_concat(GEN_L, logits, 0);
}

/* Bound: mean cross-entropy per step < 0.01 within 800 steps; metric: greedy generation reproduces
 * all ten sequences exactly. */
static void test_one_to_many(void)
{
    double t0 = now_s();
    nb_rng rng;
    nb_rng_seed(&rng, 33);
    nb_params *p = nb_params_new();
    gen_model g;
    nb_layer_opts lo = {.dtype = DT};
    CHECK(nb_embedding_init(&g.emb, p, "emb", 20, 8, &lo, &rng) == NB_OK &&
              nb_rnn_cell_init(&g.cell, p, "cell", NB_LSTM, 8, 24, &lo, &rng) == NB_OK &&
              nb_linear_init(&g.head, p, "head", 24, 10, &lo, &rng) == NB_OK,
          "init: %s", nb_error_message());
    int64_t target[GEN_L * 10];
    for (int t = 0; t < GEN_L; t++)
        for (int d = 0; d < 10; d++) target[t * 10 + d] = times_table(d, t);
    adam opt;
    CHECK(adam_init(&opt, p, 0.02, 5.0), "out of memory");
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double loss = NAN;
    int steps = 0;
    while (steps < 800 && !(loss < 0.01)) {
        nb_tensor *labels = nb_constant(NB_I64, NB_SHAPE(GEN_L * 10), target);
        loss = train_step(tape, &opt, nb_cross_entropy(gen_run(&g, 1, NULL), labels, NULL));
        steps++;
    }
    CHECK_NO_ERROR();
    CHECK(loss < 0.01, "1-N times table: loss %g after %d steps, bound 0.01", loss, steps);
    int64_t gen[GEN_L * 10];
    nb_no_grad_begin();
    nb_tensor *out = gen_run(&g, 0, gen);
    nb_no_grad_end();
    CHECK(out != NULL, "generation: %s", nb_error_message());
    int exact = 0;
    for (int d = 0; d < 10 && out; d++) {
        int same = 1;
        for (int t = 0; t < GEN_L; t++) same &= gen[t * 10 + d] == target[t * 10 + d];
        exact += same;
    }
    CHECK(exact == 10, "1-N times table: %d of 10 sequences generated exactly", exact);
    nb_tape_end(tape);
    nb_tape_free(tape);
    adam_free(&opt);
    nb_params_free(p);
    printf("1-N times table (LSTM cell 8-24, %d steps): loss %.4f after %d steps, %d/10 exact, %.2f s\n", GEN_L,
           loss, steps, exact, now_s() - t0);
}

/* ---- N-M: encoder-decoder with attention -------------------------------------------------------- */

#define REV_T 5 /* digits per string */
#define REV_BATCH 32
#define REV_TEST 200
#define BOS 10

typedef struct seq2seq {
    nb_embedding src_emb; /* digits -> 12 */
    nb_rnn enc;           /* LSTM 12 -> 32 */
    nb_embedding tgt_emb; /* digits and BOS -> 12 */
    nb_rnn_cell dec;      /* LSTM 12 -> 32, started from the encoder's final state */
    nb_linear out;        /* [h, context] 64 -> 10 */
} seq2seq;

/* src [REV_T, n] (time-major digits); teacher: feed the reversed source (training), else the
 * decoder's own argmax, written into gen[t * n + b]. Returns the logits [REV_T * n, 10]
 * (row t * n + b). The decoder's query at step t is its state h_t [n, 1, 32]; keys and values are the
 * encoder outputs [n, REV_T, 32]. */
static nb_tensor *s2s_run(const seq2seq *m, const int64_t *src, int n, int teacher, int64_t *gen)
{
    nb_tensor *x = nb_embedding_forward(&m->src_emb, nb_constant(NB_I64, NB_SHAPE(REV_T, n), src));
    nb_tensor *enc_out = NULL;
    nb_rnn_state fin;
    if (nb_rnn_forward(&m->enc, x, NULL, NULL, &enc_out, &fin) != NB_OK) return NULL;
    nb_tensor *keys = nb_transpose(enc_out, 0, 1); /* [n, REV_T, 32] */
    int64_t hd = m->dec.hidden;
    nb_tensor *h = nb_reshape(fin.h, NB_SHAPE(n, hd)), *c = nb_reshape(fin.c, NB_SHAPE(n, hd));
    int64_t *tok = nb_scratch((size_t)n * sizeof *tok);
    nb_tensor *logits[REV_T];
    if (!tok) return NULL;
    for (int b = 0; b < n; b++) tok[b] = BOS;
    for (int t = 0; t < REV_T; t++) {
        nb_tensor *e = nb_embedding_forward(&m->tgt_emb, nb_constant(NB_I64, NB_SHAPE(n), tok));
        if (nb_lstm_cell(&m->dec, e, h, c, &h, &c) != NB_OK) return NULL;
        nb_tensor *ctx = nb_attention(nb_reshape(h, NB_SHAPE(n, 1, hd)), keys, keys, NULL, 0);
        nb_tensor *hc[2] = {h, nb_reshape(ctx, NB_SHAPE(n, hd))};
        logits[t] = nb_linear_forward(&m->out, nb_concat(2, hc, 1));
        nb_tensor *am = teacher ? NULL : nb_argmax(logits[t], 1, 0);
        if (!logits[t] || (!teacher && !am)) return NULL;
        for (int b = 0; b < n; b++) {
            tok[b] = teacher ? src[(REV_T - 1 - t) * n + b] : ((const int64_t *)nb_tensor_cdata(am))[b];
            if (gen) gen[t * n + b] = tok[b];
        }
    }
    return nb_concat(REV_T, logits, 0);
}

/* A random digit string as a number, for telling training strings from held-out ones. */
static int64_t rev_draw(nb_rng *rng)
{
    int64_t v = 0;
    for (int t = 0; t < REV_T; t++) v = v * 10 + (int64_t)nb_rng_below(rng, 10);
    return v;
}

/* the string v into column b of a time-major [REV_T, n] array */
static void rev_put(int64_t v, int64_t *src, int n, int b)
{
    for (int t = REV_T - 1; t >= 0; t--, v /= 10) src[t * n + b] = v % 10;
}

static int rev_held_out(int64_t v, const int64_t *test)
{
    for (int i = 0; i < REV_TEST; i++)
        if (test[i] == v) return 1;
    return 0;
}

/* Reverse strings of REV_T digits. Training draws fresh batches of 32 strings, never one of the 200
 * held-out strings. Bound: mean cross-entropy per token < 0.02 (averaged over the last 10 batches)
 * within 1500 steps; metric: greedy decoding reproduces >= 90% of the held-out strings exactly. */
static void test_many_to_many(void)
{
    double t0 = now_s();
    nb_rng rng;
    nb_rng_seed(&rng, 44);
    nb_params *p = nb_params_new();
    seq2seq m;
    nb_layer_opts lo = {.dtype = DT};
    nb_rnn_opts ro = {.layer = {.dtype = DT}};
    CHECK(nb_embedding_init(&m.src_emb, p, "src_emb", 10, 12, &lo, &rng) == NB_OK &&
              nb_rnn_init(&m.enc, p, "enc", NB_LSTM, 12, 32, 1, &ro, &rng) == NB_OK &&
              nb_embedding_init(&m.tgt_emb, p, "tgt_emb", 11, 12, &lo, &rng) == NB_OK &&
              nb_rnn_cell_init(&m.dec, p, "dec", NB_LSTM, 12, 32, &lo, &rng) == NB_OK &&
              nb_linear_init(&m.out, p, "out", 64, 10, &lo, &rng) == NB_OK,
          "init: %s", nb_error_message());
    static int64_t test_v[REV_TEST], test_src[REV_T * REV_TEST], test_gen[REV_T * REV_TEST];
    for (int i = 0; i < REV_TEST; i++) {
        test_v[i] = rev_draw(&rng);
        rev_put(test_v[i], test_src, REV_TEST, i);
    }
    adam opt;
    CHECK(adam_init(&opt, p, 0.01, 5.0), "out of memory");
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double recent[10], avg = NAN;
    int steps = 0;
    while (steps < 1500 && !(avg < 0.02)) {
        int64_t src[REV_T * REV_BATCH], tgt[REV_T * REV_BATCH];
        for (int b = 0; b < REV_BATCH; b++) {
            int64_t v;
            do v = rev_draw(&rng);
            while (rev_held_out(v, test_v));
            rev_put(v, src, REV_BATCH, b);
            for (int t = 0; t < REV_T; t++) tgt[t * REV_BATCH + b] = src[(REV_T - 1 - t) * REV_BATCH + b];
        }
        nb_tensor *labels = nb_constant(NB_I64, NB_SHAPE(REV_T * REV_BATCH), tgt);
        nb_tensor *logits = s2s_run(&m, src, REV_BATCH, 1, NULL);
        recent[steps % 10] = train_step(tape, &opt, nb_cross_entropy(logits, labels, NULL));
        steps++;
        if (steps >= 10) {
            avg = 0;
            for (int i = 0; i < 10; i++) avg += recent[i] / 10;
        }
    }
    CHECK_NO_ERROR();
    CHECK(avg < 0.02, "N-M reverse: loss %g after %d steps, bound 0.02", avg, steps);
    nb_no_grad_begin();
    nb_tensor *out = s2s_run(&m, test_src, REV_TEST, 0, test_gen);
    nb_no_grad_end();
    CHECK(out != NULL, "decoding: %s", nb_error_message());
    int exact = 0;
    for (int b = 0; b < REV_TEST && out; b++) {
        int same = 1;
        for (int t = 0; t < REV_T; t++)
            same &= test_gen[t * REV_TEST + b] == test_src[(REV_T - 1 - t) * REV_TEST + b];
        exact += same;
    }
    CHECK(exact >= REV_TEST * 9 / 10, "N-M reverse: %d of %d held-out strings exact, need 90%%", exact, REV_TEST);
    nb_tape_end(tape);
    nb_tape_free(tape);
    adam_free(&opt);
    nb_params_free(p);
    printf("N-M reverse %d digits (LSTM 12-32 encoder, LSTM decoder + attention): loss %.4f after %d steps, "
           "%d/%d held-out exact, %.2f s\n", REV_T, avg, steps, exact, REV_TEST, now_s() - t0);
}

int main(void)
{
    test_one_to_one();
    test_many_to_one();
    test_one_to_many();
    test_many_to_many();
    return nbt_report("seq_shapes");
}
