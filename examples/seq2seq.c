/*
 * Sequence to sequence (N-M): an encoder-decoder with attention that rewrites dates between formats.
 * The source is a date written in one of six formats, preceded by a token naming the format wanted:
 *
 *   [us] 2024-03-07      -> March 7, 2024
 *   [long] 03/07/2024    -> 7 March 2024
 *   [iso] 7 Mar 2024     -> 2024-03-07
 *
 * so the model must parse the source whatever its layout (which field is the day depends on the
 * separator), spell out or abbreviate months, drop leading zeros, and reorder fields.
 *
 * Encoder: byte embedding + nb_rnn (LSTM or GRU) over the padded source with `lengths`. Decoder: an
 * LSTM (or GRU) cell stepped one character at a time, started from the encoder's final state, fed the
 * previous character and the previous attention context; at every step dot-product attention over
 * the encoder outputs (padding masked) and a linear layer over [state, context]. Training uses
 * teacher forcing and cross-entropy with ignore_index for the positions past each target's end;
 * testing decodes greedily until the end token. Dates (1900-2099) are split three ways so that no
 * validation or test date is ever seen in training; early stopping on validation exact match.
 *
 *   seq2seq [options]
 */
#define _POSIX_C_SOURCE 200809L

#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define MAX_SRC 20 /* the format token and at most 18 characters */
#define MAX_TGT 20 /* at most 18 characters and the end token */
#define FIRST_YEAR 1900
#define LAST_YEAR 2099
#define IGNORE (-1) /* label of target positions past the end */

typedef enum date_format { F_ISO, F_LONG, F_US, F_DOTS, F_ABBR, F_SLASH, N_FORMATS } date_format;
#define N_TARGETS 3 /* the first three formats can be asked for */
static const char *const format_names[N_FORMATS] = {"iso", "long", "us", "dots", "abbr", "slash"};
static const char *const months[12] = {"January", "February", "March",     "April",   "May",      "June",
                                       "July",    "August",   "September", "October", "November", "December"};

typedef struct options {
    nb_rnn_kind cell;
    int epochs, patience, threads, quiet;
    int64_t train_size, val_size, test_size, hidden, embed, batch;
    double lr, clip;
    uint64_t seed;
} options;

static void usage(FILE *f)
{
    fprintf(f, "usage: seq2seq [options]\n"
               "  --train-size N   training examples (default 20000)\n"
               "  --val-size N     validation dates (default 500)\n"
               "  --test-size N    held-out test dates (default 1000)\n"
               "  --cell lstm|gru  encoder and decoder cells (default lstm)\n"
               "  --epochs N       at most N epochs (default 20)\n"
               "  --patience N     early-stopping patience in epochs (default 4)\n"
               "  --hidden N       state size of encoder and decoder (default 128)\n"
               "  --embed N        character embedding size (default 32)\n"
               "  --batch N        batch size (default 64)\n"
               "  --lr X           Adam learning rate (default 3e-3)\n"
               "  --clip X         gradient-norm clipping threshold (default 1)\n"
               "  --seed N         seed of data, split, initialisation, shuffling (default 1)\n"
               "  --threads N      threads for nabla and BLAS (default 1: the matrices are small)\n"
               "  --quiet          only the final result\n"
               "  --short          a run of seconds for CI: 600 examples, 2 epochs, a small model\n"
               "                   (later options override it)\n");
}

/* The options that take a value (anything else but the flags is unknown). */
static const char *const value_options[] = {"--cell", "--train-size", "--val-size", "--test-size", "--epochs",
                                            "--patience", "--threads", "--hidden", "--embed", "--batch", "--seed",
                                            "--lr", "--clip", NULL};

/* Returns 0 on success, 2 on a usage error (message printed), 1 for --help. */
static int parse_args(int argc, char **argv, options *o)
{
    int is_short = 0;
    for (int i = 1; i < argc; i++) is_short |= !strcmp(argv[i], "--short");
    *o = (options){.cell = NB_LSTM, .epochs = 20, .patience = 4, .train_size = 20000, .val_size = 500,
                   .test_size = 1000, .hidden = 128, .embed = 32, .batch = 64, .lr = 3e-3, .clip = 1.0, .seed = 1, .threads = 1};
    if (is_short) {
        o->train_size = 600;
        o->val_size = o->test_size = 100;
        o->epochs = 2;
        o->hidden = 32;
        o->embed = 16;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n;
        int ok = 1, takes = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "--short")) {
            o->quiet |= !strcmp(a, "--quiet");
            takes = 0;
        } else if (!is_one_of(a, value_options))
            return usage_error(usage, "seq2seq: unknown option %s\n", a);
        else if (!v)
            return usage_error(usage, "seq2seq: %s needs a value\n", a);
        else if (!strcmp(a, "--cell")) {
            if (!strcmp(v, "lstm")) o->cell = NB_LSTM;
            else if (!strcmp(v, "gru")) o->cell = NB_GRU;
            else ok = 0;
        }
        else if (!strcmp(a, "--train-size")) ok = parse_int(v, 1, 1000000, &o->train_size);
        else if (!strcmp(a, "--val-size")) ok = parse_int(v, 1, 20000, &o->val_size);
        else if (!strcmp(a, "--test-size")) ok = parse_int(v, 1, 20000, &o->test_size);
        else if (!strcmp(a, "--epochs")) ok = parse_int(v, 1, 100000, &n) && (o->epochs = (int)n, 1);
        else if (!strcmp(a, "--patience")) ok = parse_int(v, 1, 100000, &n) && (o->patience = (int)n, 1);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, 1, 1024, &n) && (o->threads = (int)n, 1);
        else if (!strcmp(a, "--hidden")) ok = parse_int(v, 1, 1024, &o->hidden);
        else if (!strcmp(a, "--embed")) ok = parse_int(v, 1, 1024, &o->embed);
        else if (!strcmp(a, "--batch")) ok = parse_int(v, 1, 1024, &o->batch);
        else if (!strcmp(a, "--seed")) ok = parse_int(v, 0, INT64_MAX, &n) && (o->seed = (uint64_t)n, 1);
        else if (!strcmp(a, "--lr")) ok = parse_double(v, 1e-8, 10, &o->lr);
        else if (!strcmp(a, "--clip")) ok = parse_double(v, 1e-6, 1e6, &o->clip);
        if (!ok) return usage_error(usage, "seq2seq: bad value '%s' for %s\n", v, a);
        i += takes;
    }
    return 0;
}

/* ---- the task ---------------------------------------------------------------------------------- */

typedef struct date {
    short y, m, d;
} date;

static int leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int days_in(int y, int m)
{
    static const int n[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return n[m - 1] + (m == 2 && leap(y));
}

/* Every date of FIRST_YEAR..LAST_YEAR into *out (malloc'ed); returns the count, 0 when out of memory. */
static int64_t all_dates(date **out)
{
    int64_t n = 0;
    for (int y = FIRST_YEAR; y <= LAST_YEAR; y++) n += leap(y) ? 366 : 365;
    date *d = malloc((size_t)n * sizeof *d);
    if (!d) return 0;
    int64_t i = 0;
    for (int y = FIRST_YEAR; y <= LAST_YEAR; y++)
        for (int m = 1; m <= 12; m++)
            for (int day = 1; day <= days_in(y, m); day++) d[i++] = (date){(short)y, (short)m, (short)day};
    *out = d;
    return n;
}

/* The date written in format f; returns its length. */
static int write_date(date_format f, date t, char *s, size_t size)
{
    switch (f) {
    case F_ISO: return snprintf(s, size, "%04d-%02d-%02d", t.y, t.m, t.d);
    case F_LONG: return snprintf(s, size, "%d %s %d", t.d, months[t.m - 1], t.y);
    case F_US: return snprintf(s, size, "%s %d, %d", months[t.m - 1], t.d, t.y);
    case F_DOTS: return snprintf(s, size, "%02d.%02d.%04d", t.d, t.m, t.y);
    case F_ABBR: return snprintf(s, size, "%d %.3s %d", t.d, months[t.m - 1], t.y);
    case F_SLASH: return snprintf(s, size, "%02d/%02d/%04d", t.m, t.d, t.y);
    default: return snprintf(s, size, "?");
    }
}

/* Token ids: the characters of the vocabulary are 0..V-1, then the end token, the start token and
 * one token per target format. The output classes are the characters and the end token. */
typedef struct tokens {
    nb_vocab *vocab;
    int chars, eos, bos, tag0, count;
} tokens;

typedef struct example {
    date when;
    date_format from, to;
    int src_len, tgt_len;   /* tgt_len counts the end token */
    int64_t src[MAX_SRC], tgt[MAX_TGT];
} example;

static int make_example(const tokens *tk, date when, date_format from, date_format to, example *e)
{
    char s[32], t[32];
    int ns = write_date(from, when, s, sizeof s), nt = write_date(to, when, t, sizeof t);
    *e = (example){.when = when, .from = from, .to = to, .src_len = ns + 1, .tgt_len = nt + 1};
    e->src[0] = tk->tag0 + (int)to;
    if (nb_vocab_encode(tk->vocab, s, (size_t)ns, e->src + 1) != NB_OK ||
        nb_vocab_encode(tk->vocab, t, (size_t)nt, e->tgt) != NB_OK)
        return 0;
    e->tgt[nt] = tk->eos;
    return 1;
}

/* ---- the model --------------------------------------------------------------------------------- */

typedef struct model {
    nb_embedding src_emb, tgt_emb;
    nb_rnn enc;      /* embed -> hidden, batch first */
    nb_rnn_cell dec; /* [embed, context] -> hidden */
    nb_linear out;   /* [state, context] -> characters + end */
} model;

/* Reusable host buffers for a batch of at most `cap` examples. */
typedef struct batch_buf {
    int64_t *src, *lens, *labels, *tok;
    float *mask;
} batch_buf;

/* Runs the model over n examples. teacher: feed each target's previous character (training), over
 * as many steps as the longest target; else feed back the argmax for MAX_TGT steps, writing the
 * characters into gen[t * n + b]. Labels (time-major, IGNORE past each target's end) go into
 * buf->labels. Returns the logits of every step, [steps * n, classes] (row t * n + b). */
static nb_tensor *run(const model *m, const tokens *tk, const example *const *ex, int64_t n, int teacher,
                      int64_t *gen, batch_buf *buf, int64_t *steps_out)
{
    int64_t ts = 1, steps = teacher ? 1 : MAX_TGT, H = m->enc.hidden;
    for (int64_t b = 0; b < n; b++) {
        ts = ex[b]->src_len > ts ? ex[b]->src_len : ts;
        if (teacher) steps = ex[b]->tgt_len > steps ? ex[b]->tgt_len : steps;
    }
    for (int64_t b = 0; b < n; b++) {
        for (int64_t t = 0; t < ts; t++) {
            int real = t < ex[b]->src_len;
            buf->src[b * ts + t] = real ? ex[b]->src[t] : 0;
            buf->mask[b * ts + t] = (float)real;
        }
        buf->lens[b] = ex[b]->src_len;
        for (int64_t t = 0; t < steps; t++) buf->labels[t * n + b] = t < ex[b]->tgt_len ? ex[b]->tgt[t] : IGNORE;
        buf->tok[b] = tk->bos;
    }
    *steps_out = steps;

    /* encoder: outputs [n, ts, H] (zero past each source's end) and the state after its end */
    nb_tensor *x = nb_embedding_forward(&m->src_emb, nb_constant(NB_I64, NB_SHAPE(n, ts), buf->src));
    nb_tensor *enc_out, *mask = nb_constant(NB_F32, NB_SHAPE(n, 1, ts), buf->mask);
    nb_rnn_state fin;
    if (nb_rnn_forward(&m->enc, x, NULL, buf->lens, &enc_out, &fin) != NB_OK) return NULL;
    nb_tensor *h = nb_reshape(fin.h, NB_SHAPE(n, H));
    nb_tensor *c = fin.c ? nb_reshape(fin.c, NB_SHAPE(n, H)) : NULL;
    nb_tensor *ctx = nb_zeros(NB_F32, NB_SHAPE(n, H));
    nb_tensor **logits = nb_scratch((size_t)steps * sizeof *logits);
    if (!logits) return NULL;

    /* decoder */
    for (int64_t t = 0; t < steps; t++) {
        nb_tensor *e = nb_embedding_forward(&m->tgt_emb, nb_constant(NB_I64, NB_SHAPE(n), buf->tok));
        nb_tensor *in = nb_concat(2, (nb_tensor *[]){e, ctx}, 1); /* [n, E + H] */
        if (m->dec.kind == NB_LSTM) {
            if (nb_lstm_cell(&m->dec, in, h, c, &h, &c) != NB_OK) return NULL;
        } else {
            h = nb_gru_cell(&m->dec, in, h);
        }
        /* query h [n, 1, H] against the encoder outputs [n, ts, H] -> context [n, H] */
        ctx = nb_reshape(nb_attention(nb_reshape(h, NB_SHAPE(n, 1, H)), enc_out, enc_out, mask, 0), NB_SHAPE(n, H));
        logits[t] = nb_linear_forward(&m->out, nb_concat(2, (nb_tensor *[]){h, ctx}, 1));
        nb_tensor *am = teacher ? NULL : nb_argmax(logits[t], 1, 0);
        if (!logits[t] || (!teacher && !am)) return NULL;
        for (int64_t b = 0; b < n; b++) {
            int64_t next = teacher ? ex[b]->tgt[t < ex[b]->tgt_len ? t : ex[b]->tgt_len - 1]
                                   : ((const int64_t *)nb_tensor_cdata(am))[b];
            buf->tok[b] = next;
            if (gen) gen[t * n + b] = next;
        }
    }
    return nb_concat((int)steps, logits, 0);
}

/* Whether the greedy output column b of gen [MAX_TGT, n] is exactly the target (end token included). */
static int exact(const example *e, const int64_t *gen, int64_t n, int64_t b)
{
    for (int t = 0; t < e->tgt_len; t++)
        if (gen[t * n + b] != e->tgt[t]) return 0;
    return 1;
}

/* The greedy output of column b as text (up to the end token). */
static void gen_text(const tokens *tk, const int64_t *gen, int64_t n, int64_t b, char *s, size_t size)
{
    size_t k = 0;
    for (int t = 0; t < MAX_TGT && k + 1 < size; t++) {
        int64_t id = gen[t * n + b];
        if (id == tk->eos) break;
        int ch = id >= 0 && id < tk->chars ? nb_vocab_char(tk->vocab, (int)id) : '?';
        s[k++] = (char)ch;
    }
    s[k] = 0;
}

/* Greedy exact-match rate over examples ex[0..n), in batches; gen [MAX_TGT * n] keeps the outputs
 * (column b of batch k at gen + start * MAX_TGT, time-major within the batch). */
static int evaluate(const model *m, const tokens *tk, const example *const *ex, int64_t n, int64_t batch,
                    batch_buf *buf, nb_tape *tape, int64_t *gen, int *right, double *rate)
{
    int64_t correct = 0, steps;
    int ok = 1;
    nb_tape_begin(tape);
    nb_no_grad_begin();
    for (int64_t s = 0; s < n && ok; s += batch) {
        int64_t b = n - s < batch ? n - s : batch;
        int64_t *g = gen + s * MAX_TGT;
        if (!run(m, tk, ex + s, b, 0, g, buf, &steps)) ok = 0;
        for (int64_t i = 0; i < b && ok; i++) {
            right[s + i] = exact(ex[s + i], g, b, i);
            correct += right[s + i];
        }
        nb_tape_reset(tape);
    }
    nb_no_grad_end();
    nb_tape_end(tape);
    nb_tape_reset(tape);
    *rate = (double)correct / (double)n;
    return ok;
}

int main(int argc, char **argv)
{
    options o;
    int pr = parse_args(argc, argv, &o);
    if (pr) return pr == 1 ? 0 : 2;
    if (o.threads) nb_set_num_threads(o.threads);
    int tty = isatty(STDOUT_FILENO) && !o.quiet;
    double t_start = now();

    int status = 1;
    date *dates = NULL;
    int64_t *perm = NULL, *gen = NULL, *order = NULL;
    int *right = NULL;
    example *train = NULL, *held = NULL; /* held: validation then test */
    const example **train_p = NULL, **held_p = NULL, **batch_p = NULL;
    batch_buf buf = {0};
    tokens tk = {0};
    nb_params *params = NULL;
    nb_tape *tape = NULL;
    nb_optim *opt = NULL;
    nb_early_stop *es = NULL;
    nb_rng data_rng, init_rng, shuffle_rng;
    nb_rng_seed(&data_rng, o.seed * 4);
    nb_rng_seed(&init_rng, o.seed * 4 + 1);
    nb_rng_seed(&shuffle_rng, o.seed * 4 + 2);

    /* characters: every one a date can contain */
    char alphabet[256];
    int na = snprintf(alphabet, sizeof alphabet, "0123456789-./, ");
    for (int i = 0; i < 12; i++) na += snprintf(alphabet + na, sizeof alphabet - (size_t)na, "%s", months[i]);
    tk.vocab = nb_vocab_build(alphabet, (size_t)na);
    if (!tk.vocab) {
        fprintf(stderr, "seq2seq: %s\n", nb_error_message());
        goto done;
    }
    tk.chars = nb_vocab_size(tk.vocab);
    tk.eos = tk.chars;
    tk.bos = tk.chars + 1;
    tk.tag0 = tk.chars + 2;
    tk.count = tk.tag0 + N_TARGETS;

    /* dates split three ways: test, validation, and the rest for training */
    int64_t n_dates = all_dates(&dates);
    int64_t n_held = o.val_size + o.test_size;
    if (n_dates && n_held > n_dates / 2) {
        fprintf(stderr, "seq2seq: --val-size + --test-size must be at most %lld\n", (long long)(n_dates / 2));
        status = 2;
        goto done;
    }
    perm = malloc((size_t)n_dates * sizeof *perm);
    train = malloc((size_t)o.train_size * sizeof *train);
    held = malloc((size_t)n_held * sizeof *held);
    train_p = malloc((size_t)o.train_size * sizeof *train_p);
    held_p = malloc((size_t)n_held * sizeof *held_p);
    batch_p = malloc((size_t)o.batch * sizeof *batch_p);
    order = malloc((size_t)o.train_size * sizeof *order);
    int64_t cap = o.batch > 250 ? o.batch : 250; /* evaluation batches are 250 */
    gen = malloc((size_t)(n_held * MAX_TGT) * sizeof *gen);
    right = malloc((size_t)n_held * sizeof *right);
    buf.src = malloc((size_t)(cap * MAX_SRC) * sizeof *buf.src);
    buf.mask = malloc((size_t)(cap * MAX_SRC) * sizeof *buf.mask);
    buf.lens = malloc((size_t)cap * sizeof *buf.lens);
    buf.labels = malloc((size_t)(cap * MAX_TGT) * sizeof *buf.labels);
    buf.tok = malloc((size_t)cap * sizeof *buf.tok);
    if (!n_dates || !perm || !train || !held || !train_p || !held_p || !batch_p || !order || !gen || !right ||
        !buf.src || !buf.mask || !buf.lens || !buf.labels || !buf.tok) {
        fprintf(stderr, "seq2seq: out of memory\n");
        goto done;
    }
    for (int64_t i = 0; i < n_dates; i++) perm[i] = i;
    nb_rng_shuffle(&data_rng, perm, n_dates);
    for (int64_t i = 0; i < n_held; i++) {
        date_format from = (date_format)nb_rng_below(&data_rng, N_FORMATS);
        date_format to = (date_format)nb_rng_below(&data_rng, N_TARGETS);
        if (!make_example(&tk, dates[perm[i]], from, to, &held[i])) goto nb_failed;
        held_p[i] = &held[i];
    }
    for (int64_t i = 0; i < o.train_size; i++) {
        int64_t k = n_held + (int64_t)nb_rng_below(&data_rng, (uint64_t)(n_dates - n_held));
        date_format from = (date_format)nb_rng_below(&data_rng, N_FORMATS);
        date_format to = (date_format)nb_rng_below(&data_rng, N_TARGETS);
        if (!make_example(&tk, dates[perm[k]], from, to, &train[i])) goto nb_failed;
        train_p[i] = &train[i];
        order[i] = i;
    }
    const example **val_p = held_p, **test_p = held_p + o.val_size;

    /* the model */
    params = nb_params_new();
    model m;
    nb_rnn_opts ro = {.layer = {.dtype = NB_F32}, .batch_first = 1};
    nb_layer_opts lo = {.dtype = NB_F32};
    if (!params || nb_embedding_init(&m.src_emb, params, "src_emb", tk.count, o.embed, &lo, &init_rng) != NB_OK ||
        nb_rnn_init(&m.enc, params, "enc", o.cell, o.embed, o.hidden, 1, &ro, &init_rng) != NB_OK ||
        nb_embedding_init(&m.tgt_emb, params, "tgt_emb", tk.count, o.embed, &lo, &init_rng) != NB_OK ||
        nb_rnn_cell_init(&m.dec, params, "dec", o.cell, o.embed + o.hidden, o.hidden, &lo, &init_rng) != NB_OK ||
        nb_linear_init(&m.out, params, "out", 2 * o.hidden, tk.chars + 1, &lo, &init_rng) != NB_OK)
        goto nb_failed;
    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.lr = o.lr;
    opt = nb_optim_new(NB_ADAM, params, &oo);
    es = nb_early_stop_new(params, o.patience, 0.0, 1); /* maximise validation exact match */
    tape = nb_tape_new();
    if (!opt || !es || !tape) goto nb_failed;

    if (!o.quiet)
        printf("dates %d-%d in %d formats -> %d formats: %lld training examples (from %lld dates), %lld validation and "
               "%lld test dates never seen in training\n"
               "model: %s encoder %lld -> %lld, %s decoder cell with dot-product attention, %d characters + %d "
               "tokens: %lld parameters; Adam lr %g, clip %g, batch %lld\n",
               FIRST_YEAR, LAST_YEAR, N_FORMATS, N_TARGETS, (long long)o.train_size, (long long)(n_dates - n_held),
               (long long)o.val_size, (long long)o.test_size, o.cell == NB_LSTM ? "LSTM" : "GRU", (long long)o.embed,
               (long long)o.hidden, o.cell == NB_LSTM ? "LSTM" : "GRU", tk.chars, tk.count - tk.chars,
               (long long)nb_params_numel(params),
               o.lr, o.clip, (long long)o.batch);

    int64_t per_epoch = (o.train_size + o.batch - 1) / o.batch;
    for (int epoch = 1; epoch <= o.epochs; epoch++) {
        double t0 = now(), loss_sum = 0;
        int64_t tokens_seen = 0, steps;
        nb_rng_shuffle(&shuffle_rng, order, o.train_size);
        nb_tape_begin(tape);
        for (int64_t k = 0; k < per_epoch; k++) {
            int64_t s = k * o.batch, b = o.train_size - s < o.batch ? o.train_size - s : o.batch, n_tok = 0;
            for (int64_t i = 0; i < b; i++) {
                batch_p[i] = train_p[order[s + i]];
                n_tok += batch_p[i]->tgt_len;
            }
            nb_tensor *logits = run(&m, &tk, batch_p, b, 1, NULL, &buf, &steps);
            nb_tensor *labels = nb_constant(NB_I64, NB_SHAPE(steps * b), buf.labels);
            nb_ce_opts ce = {.use_ignore_index = 1, .ignore_index = IGNORE};
            nb_tensor *loss = nb_cross_entropy(logits, labels, &ce); /* mean over the real positions */
            if (!loss || nb_backward(loss, NULL, 0) != NB_OK || !isfinite(nb_clip_grad_norm(params, o.clip)) ||
                nb_optim_step(opt) != NB_OK) {
                nb_tape_end(tape);
                if (tty) printf("\n");
                goto nb_failed;
            }
            nb_optim_zero_grad(opt);
            loss_sum += nb_tensor_item(loss) * (double)n_tok;
            tokens_seen += n_tok;
            nb_tape_reset(tape);
            if (tty && ((k + 1) % 10 == 0 || k + 1 == per_epoch)) {
                double dt = now() - t0;
                progress(epoch, o.epochs, k + 1, per_epoch, "%4lld/%lld  loss %.4f  %6.0f examples/s  ETA %3.0fs ",
                         (long long)(k + 1), (long long)per_epoch, loss_sum / (double)tokens_seen,
                         (double)(s + b) / dt, dt / (double)(k + 1) * (double)(per_epoch - k - 1));
            }
        }
        nb_tape_end(tape);
        nb_tape_reset(tape);
        double val;
        if (!evaluate(&m, &tk, val_p, o.val_size, 250, &buf, tape, gen, right, &val)) goto nb_failed;
        int stop = nb_early_stop_update(es, val);
        int best = nb_early_stop_best_epoch(es) == epoch - 1;
        if (!o.quiet)
            printf("%sepoch %2d/%d  train loss %.4f per character  val exact match %6.2f%%  %.1fs%s%*s\n",
                   tty ? "\r" : "", epoch, o.epochs, loss_sum / (double)tokens_seen, 100 * val, now() - t0,
                   best ? "  *" : "", tty ? 30 : 0, "");
        fflush(stdout);
        if (val >= 1.0) {
            if (!o.quiet) printf("every validation date right: stopping\n");
            break;
        }
        if (stop) {
            if (!o.quiet) printf("early stop: no better validation exact match for %d epochs\n", o.patience);
            break;
        }
    }

    /* the best weights on the held-out test dates */
    double test;
    if (nb_early_stop_restore(es) != NB_OK || !evaluate(&m, &tk, test_p, o.test_size, 250, &buf, tape, gen, right, &test))
        goto nb_failed;
    if (!o.quiet) {
        /* exact match by source and target format */
        int64_t hit[N_FORMATS][N_TARGETS] = {{0}}, tot[N_FORMATS][N_TARGETS] = {{0}};
        for (int64_t i = 0; i < o.test_size; i++) {
            hit[test_p[i]->from][test_p[i]->to] += right[i];
            tot[test_p[i]->from][test_p[i]->to]++;
        }
        printf("\ntest exact match by source format (rows) and target format (columns)\n%8s", "");
        for (int j = 0; j < N_TARGETS; j++) printf("%17s", format_names[j]);
        printf("\n");
        for (int f = 0; f < N_FORMATS; f++) {
            printf("%-8s", format_names[f]);
            for (int j = 0; j < N_TARGETS; j++)
                printf("%7lld/%-4lld%4.0f%%", (long long)hit[f][j], (long long)tot[f][j],
                       tot[f][j] ? 100.0 * (double)hit[f][j] / (double)tot[f][j] : 0.0);
            printf("\n");
        }
        /* a few test examples: the first ones, and the first mistakes */
        printf("\nexamples from the test dates (input -> predicted, expected when wrong)\n");
        int shown = 0, wrong = 0;
        for (int64_t i = 0; i < o.test_size && (shown < 6 || wrong < 4); i++) {
            if (shown >= 6 && right[i]) continue;
            char src[32], want[32], got[MAX_TGT + 1];
            write_date(test_p[i]->from, test_p[i]->when, src, sizeof src);
            write_date(test_p[i]->to, test_p[i]->when, want, sizeof want);
            int64_t s = i / 250 * 250, b = o.test_size - s < 250 ? o.test_size - s : 250;
            gen_text(&tk, gen + s * MAX_TGT, b, i - s, got, sizeof got);
            char tag[16];
            snprintf(tag, sizeof tag, "[%s]", format_names[test_p[i]->to]);
            printf("  %-6s %-18s -> %-18s %s%s%s\n", tag, src, got, right[i] ? "ok" : "WRONG, expected \"",
                   right[i] ? "" : want, right[i] ? "" : "\"");
            shown++;
            wrong += !right[i];
        }
    }
    printf("%sbest epoch %lld (validation exact match %.2f%%); test exact match %.2f%% of %lld held-out dates; "
           "%.1fs in all\n",
           o.quiet ? "" : "\n", (long long)nb_early_stop_best_epoch(es) + 1, 100 * nb_early_stop_best(es), 100 * test,
           (long long)o.test_size, now() - t_start);
    status = 0;
    goto done;

nb_failed:
    fprintf(stderr, "seq2seq: %s\n", why());
done:
    nb_early_stop_free(es);
    nb_optim_free(opt);
    nb_tape_free(tape);
    nb_params_free(params);
    nb_vocab_free(tk.vocab);
    free(buf.src);
    free(buf.mask);
    free(buf.lens);
    free(buf.labels);
    free(buf.tok);
    free(right);
    free(gen);
    free(order);
    free(batch_p);
    free(held_p);
    free(train_p);
    free(held);
    free(train);
    free(perm);
    free(dates);
    return status;
}
