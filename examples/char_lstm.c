/*
 * A character-level language model on Debian's fortunes: embedding -> 2-layer LSTM -> linear over the
 * byte vocabulary (N-N: every position predicts the next byte), trained with truncated
 * backpropagation through time, Adam, gradient-norm clipping and a cosine learning-rate schedule;
 * validation loss in bits per character after every epoch; the best model saved as safetensors;
 * then text sampled with a temperature, one byte at a time, from a prompt (1-N).
 *
 * The data: the quotes of a few fortune files (plain text, quotes separated by lines holding only
 * "%"; overstruck characters "x\bx" reduced to the last one), split by quote with a seeded shuffle
 * into training and validation (90/10), each split one stream of its quotes with "%\n" after each.
 * A stream is cut into B parallel streams of equal length; a training step takes the next T bytes of
 * all B (inputs) and the bytes one further on (targets). The LSTM state is carried from one chunk to
 * the next as plain values (nb_rnn_state_keep), so gradients stop at chunk borders.
 *
 *   char_lstm [options]                          train, validate, save, sample
 *   char_lstm --load FILE --sample-only [...]    sample from a saved model
 *   char_lstm --dump-data DIR [options]          also write the data for examples/char_lstm_torch.py
 */
#include <nabla.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define DEFAULT_FILES "fortunes,literature,science,wisdom,humorists,startrek,zippy"
#define QUOTE_END "%\n"

typedef struct options {
    const char *data_dir, *files, *out_dir, *load_path, *dump_dir, *prompt;
    int epochs, layers, threads, quiet, sample_only, samples, log_every, schedule;
    int64_t hidden, embed, batch, bptt, max_steps, length;
    double lr, clip, val_fraction, temperature;
    uint64_t seed;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: char_lstm [options]\n"
            "       char_lstm --load CHECKPOINT --sample-only [--prompt TEXT] [--temperature X] ...\n"
            "  --data DIR          folder of the fortune files (default /usr/share/games/fortunes)\n"
            "  --files A,B,...     which files (default " DEFAULT_FILES ")\n"
            "  --out DIR           where the checkpoint and metrics go (default runs)\n"
            "  --epochs N          passes over the training text (default 2)\n"
            "  --max-steps N       stop after N training steps in all (default: no limit)\n"
            "  --hidden N          LSTM hidden size (default 256)\n"
            "  --layers N          LSTM layers (default 2)\n"
            "  --embed N           embedding size (default 64)\n"
            "  --batch N           parallel streams B (default 16)\n"
            "  --bptt N            steps T per chunk of truncated backpropagation (default 32)\n"
            "  --lr X              Adam learning rate (default 5e-3)\n"
            "  --clip X            gradient-norm clipping threshold (default 1.0)\n"
            "  --schedule S        cosine (to lr/10 over the run) or constant (default cosine)\n"
            "  --val-fraction X    share of the quotes held out for validation (default 0.1)\n"
            "  --seed N            seed of initialisation, split and sampling (default 1)\n"
            "  --threads N         threads for nabla and BLAS (default: NB_NUM_THREADS, else all cores)\n"
            "  --prompt TEXT       text the samples start from (default: the start of a quote)\n"
            "  --temperature X     sampling temperature, 0 for the most likely byte (default 0.8)\n"
            "  --length N          bytes per sample (default 300)\n"
            "  --samples N         how many samples to print (default 3)\n"
            "  --load FILE         start from a saved model (sizes and vocabulary are read from it)\n"
            "  --sample-only       with --load: only sample, no training\n"
            "  --dump-data DIR     write the vocabulary, the two id streams and the initial weights to DIR\n"
            "                      for examples/char_lstm_torch.py\n"
            "  --log-every N       a progress line every N steps when not on a terminal (default 50)\n"
            "  --quiet             only the summary and the samples\n");
}

/* The options that take a value (anything else but the flags is unknown). */
static const char *const value_options[] = {"--data", "--files", "--out", "--load", "--dump-data", "--prompt",
                                            "--epochs", "--max-steps", "--hidden", "--layers", "--embed", "--batch",
                                            "--bptt", "--length", "--samples", "--log-every", "--threads", "--seed",
                                            "--lr", "--clip", "--val-fraction", "--temperature", "--schedule", NULL};

/* Returns 0 on success, 2 on a usage error (message printed), 1 for --help. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.data_dir = "/usr/share/games/fortunes", .files = DEFAULT_FILES, .out_dir = "runs", .epochs = 2,
                   .layers = 2, .hidden = 256, .embed = 64, .batch = 16, .bptt = 32, .lr = 5e-3, .clip = 1.0,
                   .schedule = 1, .val_fraction = 0.1, .seed = 1, .temperature = 0.8, .length = 300, .samples = 3,
                   .log_every = 50};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n;
        int ok = 1, takes = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            takes = 0;
        } else if (!strcmp(a, "--sample-only")) {
            o->sample_only = 1;
            takes = 0;
        } else if (!is_one_of(a, value_options))
            return usage_error(usage, "char_lstm: unknown option %s\n", a);
        else if (!v)
            return usage_error(usage, "char_lstm: %s needs a value\n", a);
        else if (!strcmp(a, "--data")) o->data_dir = v;
        else if (!strcmp(a, "--files")) ok = *v != 0 && (o->files = v, 1);
        else if (!strcmp(a, "--out")) o->out_dir = v;
        else if (!strcmp(a, "--load")) o->load_path = v;
        else if (!strcmp(a, "--dump-data")) o->dump_dir = v;
        else if (!strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--epochs")) ok = parse_int(v, 1, 100000, &n) && (o->epochs = (int)n, 1);
        else if (!strcmp(a, "--max-steps")) ok = parse_int(v, 1, INT64_MAX / 2, &o->max_steps);
        else if (!strcmp(a, "--hidden")) ok = parse_int(v, 1, 8192, &o->hidden);
        else if (!strcmp(a, "--layers")) ok = parse_int(v, 1, NB_RNN_MAX_LAYERS, &n) && (o->layers = (int)n, 1);
        else if (!strcmp(a, "--embed")) ok = parse_int(v, 1, 8192, &o->embed);
        else if (!strcmp(a, "--batch")) ok = parse_int(v, 1, 4096, &o->batch);
        else if (!strcmp(a, "--bptt")) ok = parse_int(v, 1, 4096, &o->bptt);
        else if (!strcmp(a, "--length")) ok = parse_int(v, 0, 1 << 20, &o->length);
        else if (!strcmp(a, "--samples")) ok = parse_int(v, 0, 1000, &n) && (o->samples = (int)n, 1);
        else if (!strcmp(a, "--log-every")) ok = parse_int(v, 1, 1 << 30, &n) && (o->log_every = (int)n, 1);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, 1, 1024, &n) && (o->threads = (int)n, 1);
        else if (!strcmp(a, "--seed")) ok = parse_int(v, 0, INT64_MAX, &n) && (o->seed = (uint64_t)n, 1);
        else if (!strcmp(a, "--lr")) ok = parse_double(v, 1e-8, 10, &o->lr);
        else if (!strcmp(a, "--clip")) ok = parse_double(v, 1e-8, 1e8, &o->clip);
        else if (!strcmp(a, "--val-fraction")) ok = parse_double(v, 0.001, 0.5, &o->val_fraction);
        else if (!strcmp(a, "--temperature")) ok = parse_double(v, 0, 100, &o->temperature);
        else if (!strcmp(a, "--schedule")) ok = (!strcmp(v, "cosine") || !strcmp(v, "constant")) &&
                                                 (o->schedule = !strcmp(v, "cosine"), 1);
        if (!ok) return usage_error(usage, "char_lstm: bad value '%s' for %s\n", v, a);
        i += takes;
    }
    if (o->sample_only && !o->load_path)
        return usage_error(usage, "char_lstm: --sample-only needs --load CHECKPOINT\n");
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- data ------------------------------------------------------------------------------------- */

/* A growable byte buffer. */
typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static int buf_put(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 1;
}

/* The quotes of all files, back to back in text; quote i is text[start[i] .. start[i + 1]). */
typedef struct quotes {
    buf text;
    size_t *start;
    size_t n, cap;
} quotes;

static int quote_end(quotes *q)
{
    if (q->n + 2 > q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 1024;
        size_t *s = realloc(q->start, cap * sizeof *s);
        if (!s) return 0;
        q->start = s;
        q->cap = cap;
    }
    if (q->n == 0) q->start[0] = 0;
    q->start[++q->n] = q->text.n;
    return 1;
}

/* Whether b's bytes from `from` on are all white space. */
static int blank_from(const buf *b, size_t from)
{
    for (size_t i = from; i < b->n; i++)
        if (b->p[i] != ' ' && b->p[i] != '\t' && b->p[i] != '\n') return 0;
    return 1;
}

/* Add the quotes of one fortune file's text to q, each line cleaned: "\r" is dropped and a backspace
 * removes the byte before it (overstrike: "_\bA" and "A\bA" become "A"); every line ends with "\n".
 * Blank quotes are skipped. Returns 0 when out of memory. */
static int add_file_quotes(quotes *q, const char *text, size_t size)
{
    buf line = {0};
    size_t pos = 0, start, end;
    int ok = 1;
    while (ok && next_quote(text, size, &pos, &start, &end)) {
        size_t from = q->text.n;
        for (size_t i = start; i <= end && ok; i++) {
            char c = i < end ? text[i] : '\n';
            if (c == '\r') continue;
            if (c == '\b') {
                if (line.n) line.n--;
                continue;
            }
            if (c != '\n') {
                ok = buf_put(&line, &c, 1);
                continue;
            }
            if (i == end && line.n == 0) break; /* nothing after the last newline */
            ok = buf_put(&q->text, line.p ? line.p : "", line.n) && buf_put(&q->text, "\n", 1);
            line.n = 0;
        }
        if (ok && blank_from(&q->text, from)) q->text.n = from;
        else if (ok) ok = quote_end(q);
    }
    free(line.p);
    return ok;
}

/* Read every file of the comma-separated list under dir into q. Messages are printed here. */
static int load_quotes(const char *dir, const char *files, quotes *q)
{
    const char *s = files;
    while (*s) {
        const char *comma = strchr(s, ',');
        size_t n = comma ? (size_t)(comma - s) : strlen(s);
        char name[256], path[1280];
        if (n == 0 || n >= sizeof name) {
            fprintf(stderr, "char_lstm: --files: bad file name in '%s'\n", files);
            return 0;
        }
        memcpy(name, s, n);
        name[n] = 0;
        size_t nl = strlen(name);
        if (strchr(name, '/') || (nl > 4 && !strcmp(name + nl - 4, ".dat")) ||
            (nl > 3 && !strcmp(name + nl - 3, ".u8"))) {
            fprintf(stderr, "char_lstm: --files: '%s': give the names of plain-text fortune files "
                            "(such as cookie), not paths or .dat/.u8 indexes\n", name);
            return 0;
        }
        snprintf(path, sizeof path, "%s/%s", dir, name);
        size_t len = 0;
        char *data = read_file(path, &len);
        if (!data) {
            fprintf(stderr,
                    "char_lstm: cannot read %s: %s.\n"
                    "Install the fortune files with `apt-get install fortunes`, or pass --data DIR and --files.\n",
                    path, strerror(errno));
            return 0;
        }
        size_t before = q->n;
        int ok = add_file_quotes(q, data, len);
        free(data);
        if (!ok) {
            fprintf(stderr, "char_lstm: out of memory reading %s\n", path);
            return 0;
        }
        if (q->n == before) {
            fprintf(stderr, "char_lstm: %s holds no quotes; is it a fortune file?\n", path);
            return 0;
        }
        s += n;
        if (*s == ',') s++;
    }
    return 1;
}

/* The training and validation streams as ids. */
typedef struct corpus {
    int64_t *train, *valid;
    size_t n_train, n_valid;
    size_t q_train, q_valid; /* quotes in each */
} corpus;

/* Split the quotes with a seeded shuffle: the first round(fraction * n) (at least 1) of the shuffled
 * order go to validation, the rest to training, each in the shuffled order with QUOTE_END after
 * every quote. Returns the number of validation quotes, 0 when out of memory. */
static size_t split_quotes(const quotes *q, double fraction, uint64_t seed, buf *train, buf *valid)
{
    int64_t *perm = malloc(q->n * sizeof *perm);
    if (!perm) return 0;
    for (size_t i = 0; i < q->n; i++) perm[i] = (int64_t)i;
    nb_rng rng;
    nb_rng_seed(&rng, seed ^ 0x5eed5eed5eed5eedULL); /* a stream of its own, apart from the weights' */
    nb_rng_shuffle(&rng, perm, (int64_t)q->n);
    size_t n_val = (size_t)llround(fraction * (double)q->n);
    if (n_val < 1) n_val = 1;
    int ok = 1;
    for (size_t k = 0; k < q->n && ok; k++) {
        size_t i = (size_t)perm[k];
        buf *b = k < n_val ? valid : train;
        ok = buf_put(b, q->text.p + q->start[i], q->start[i + 1] - q->start[i]) && buf_put(b, QUOTE_END, 2);
    }
    free(perm);
    return ok ? n_val : 0;
}

static int64_t *encode(const nb_vocab *v, const buf *b)
{
    int64_t *ids = malloc((b->n ? b->n : 1) * sizeof *ids);
    if (ids && nb_vocab_encode(v, b->p, b->n, ids) != NB_OK) {
        free(ids);
        return NULL;
    }
    return ids;
}

/* ---- the model -------------------------------------------------------------------------------- */

typedef struct model {
    nb_params *params;
    nb_embedding embed;
    nb_rnn lstm;
    nb_linear head;
    nb_tensor *vocab; /* buffer: the byte of each id, so that a checkpoint carries its vocabulary */
    int64_t V, E, H;
    int layers;
} model;

/* Names as in the PyTorch twin's state_dict: embed.weight, lstm.weight_ih_l0, ..., head.weight. */
static int model_init(model *m, const nb_vocab *v, int64_t E, int64_t H, int layers, nb_rng *rng)
{
    memset(m, 0, sizeof *m);
    m->V = nb_vocab_size(v);
    m->E = E;
    m->H = H;
    m->layers = layers;
    m->params = nb_params_new();
    if (!m->params) return 0;
    nb_layer_opts lo = {.dtype = NB_F32};
    nb_rnn_opts ro = {.layer = lo};
    if (nb_embedding_init(&m->embed, m->params, "embed", m->V, E, &lo, rng) != NB_OK ||
        nb_rnn_init(&m->lstm, m->params, "lstm", NB_LSTM, E, H, layers, &ro, rng) != NB_OK ||
        nb_linear_init(&m->head, m->params, "head", H, m->V, &lo, rng) != NB_OK)
        return 0;
    m->vocab = nb_params_add_buffer(m->params, "vocab", nb_tensor_zeros(NB_I64, NB_SHAPE(m->V)));
    if (!m->vocab) return 0;
    int64_t *b = nb_tensor_data(m->vocab);
    for (int i = 0; i < m->V; i++) b[i] = nb_vocab_char(v, i);
    return 1;
}

/* ids x [T, B] -> logits [T * B, V], from the state init (NULL: zeros); the state after the last
 * step goes to *final. */
static nb_tensor *model_forward(const model *m, nb_tensor *x, const nb_rnn_state *init, nb_rnn_state *final)
{
    nb_tensor *out = NULL;
    if (nb_rnn_forward(&m->lstm, nb_embedding_forward(&m->embed, x), init, NULL, &out, final) != NB_OK) return NULL;
    return nb_reshape(nb_linear_forward(&m->head, out), NB_SHAPE(-1, m->V));
}

/* Sizes of a checkpoint's model, read from the file (embed.weight [V, E], lstm.weight_hh_l0 [4H, H],
 * lstm.weight_hh_l<k> counted), so that --load needs no size options. nb_checkpoint_load then
 * checks the whole file against the model built with them. */
static int peek_sizes(const char *path, int64_t *V, int64_t *E, int64_t *H, int *layers)
{
    nb_safetensors *f = NULL;
    if (nb_safetensors_read(path, &f) != NB_OK) {
        fprintf(stderr, "char_lstm: %s\n", nb_error_message());
        return 0;
    }
    nb_tensor *emb = nb_safetensors_find(f, "embed.weight"), *whh = nb_safetensors_find(f, "lstm.weight_hh_l0");
    int ok = emb && whh && nb_tensor_ndim(emb) == 2 && nb_tensor_ndim(whh) == 2 &&
             nb_tensor_dim(whh, 0) == 4 * nb_tensor_dim(whh, 1);
    if (ok) {
        *V = nb_tensor_dim(emb, 0);
        *E = nb_tensor_dim(emb, 1);
        *H = nb_tensor_dim(whh, 1);
        for (*layers = 0; *layers < NB_RNN_MAX_LAYERS; ++*layers) {
            char name[64];
            snprintf(name, sizeof name, "lstm.weight_hh_l%d", *layers);
            if (!nb_safetensors_find(f, name)) break;
        }
    }
    nb_safetensors_free(f);
    if (!ok)
        fprintf(stderr, "char_lstm: %s is not a char_lstm checkpoint (no embed.weight [V, E] and "
                        "lstm.weight_hh_l0 [4H, H] in it)\n", path);
    return ok;
}

/* ---- training and evaluation ------------------------------------------------------------------ */

/* B parallel streams over ids[0 .. n): stream b is ids[b L .. b L + L] with L = (n - 1) / B; the
 * chunk at offset t0 of T steps has inputs ids[b L + t0 + t] and targets one further on, laid out
 * [T, B] (time major) in x and y. */
static void fill_chunk(const int64_t *ids, int64_t L, int64_t B, int64_t t0, int64_t T, int64_t *x, int64_t *y)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t b = 0; b < B; b++) {
            x[t * B + b] = ids[b * L + t0 + t];
            y[t * B + b] = ids[b * L + t0 + t + 1];
        }
}

/* Validation bits per character: the whole of each of B streams in chunks of T (the last one
 * shorter), the state carried across chunks, in evaluation mode without recording. */
static double evaluate(const model *m, const int64_t *ids, size_t n, int64_t B, int64_t T, nb_tape *tape,
                       int64_t *xbuf, int64_t *ybuf)
{
    if ((int64_t)(n - 1) < B) B = (int64_t)(n - 1);
    int64_t L = (int64_t)(n - 1) / B;
    nb_params_set_training(m->params, 0);
    nb_rnn_state keep = {0};
    double total = 0;
    int ok = 1;
    nb_tape_begin(tape);
    nb_no_grad_begin();
    for (int64_t t0 = 0; t0 < L && ok; t0 += T) {
        int64_t len = L - t0 < T ? L - t0 : T;
        fill_chunk(ids, L, B, t0, len, xbuf, ybuf);
        nb_tensor *x = nb_constant(NB_I64, NB_SHAPE(len, B), xbuf), *y = nb_constant(NB_I64, NB_SHAPE(len * B), ybuf);
        nb_rnn_state fin;
        nb_tensor *logits = model_forward(m, x, t0 ? &keep : NULL, &fin);
        nb_tensor *loss = nb_cross_entropy(logits, y, &(nb_ce_opts){.reduction = NB_REDUCE_SUM});
        ok = loss && nb_rnn_state_keep(&fin, &keep) == NB_OK;
        if (ok) total += nb_tensor_item(loss);
        nb_tape_reset(tape);
    }
    nb_no_grad_end();
    nb_tape_end(tape);
    nb_rnn_state_free(&keep);
    nb_params_set_training(m->params, 1);
    return ok ? total / (double)(L * B) / log(2.0) : NAN;
}

/* Whether every byte of the prompt is in the vocabulary (else a message). */
static int prompt_ok(const nb_vocab *v, const char *prompt)
{
    for (const char *p = prompt; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (nb_vocab_id(v, c) >= 0) continue;
        if (c >= 0x20 && c < 0x7f)
            fprintf(stderr, "char_lstm: the prompt's byte '%c' never occurs in the training text\n", c);
        else
            fprintf(stderr, "char_lstm: the prompt's byte 0x%02x never occurs in the training text\n", c);
        return 0;
    }
    return 1;
}

/* One sample: prime the state with QUOTE_END and the prompt, then draw `length` bytes, each from
 * softmax(logits / temperature) (the most likely byte at temperature 0), feeding it back. */
static int sample(const model *m, const nb_vocab *v, const char *prompt, int64_t length, double temperature,
                  nb_rng *rng, nb_tape *tape, FILE *out)
{
    size_t np = strlen(prompt), n0 = 2 + np;
    int64_t *ids = malloc(n0 * sizeof *ids);
    double *p = malloc((size_t)m->V * sizeof *p);
    char *prime = malloc(n0 + 1);
    int ok = ids && p && prime;
    if (ok) {
        snprintf(prime, n0 + 1, "%s%s", QUOTE_END, prompt);
        for (size_t i = 0; i < n0 && ok; i++) {
            ids[i] = nb_vocab_id(v, (unsigned char)prime[i]);
            ok = ids[i] >= 0; /* checked by prompt_ok before */
        }
    }
    if (!ok) {
        free(ids);
        free(p);
        free(prime);
        return 0;
    }
    fputs(prompt, out);
    nb_params_set_training(m->params, 0);
    nb_rnn_state keep = {0};
    nb_tape_begin(tape);
    nb_no_grad_begin();
    nb_tensor *x = nb_constant(NB_I64, NB_SHAPE((int64_t)n0, 1), ids);
    for (int64_t k = 0; k < length && ok; k++) {
        nb_rnn_state fin;
        nb_tensor *logits = model_forward(m, x, k ? &keep : NULL, &fin);
        ok = logits && nb_rnn_state_keep(&fin, &keep) == NB_OK;
        if (!ok) break;
        const float *l = (const float *)nb_tensor_cdata(logits) + (nb_tensor_dim(logits, 0) - 1) * m->V;
        int64_t next = 0;
        if (temperature == 0) {
            for (int64_t j = 1; j < m->V; j++)
                if (l[j] > l[next]) next = j;
        } else {
            double mx = l[0], sum = 0;
            for (int64_t j = 1; j < m->V; j++) mx = l[j] > mx ? l[j] : mx;
            for (int64_t j = 0; j < m->V; j++) sum += p[j] = exp(((double)l[j] - mx) / temperature);
            double u = nb_rng_uniform(rng) * sum;
            for (next = 0; next < m->V - 1 && (u -= p[next]) >= 0; next++) {}
        }
        fputc(nb_vocab_char(v, (int)next), out);
        nb_tape_reset(tape);
        x = nb_constant(NB_I64, NB_SHAPE(1, 1), &next);
    }
    nb_no_grad_end();
    nb_tape_end(tape);
    nb_tape_reset(tape);
    nb_rnn_state_free(&keep);
    nb_params_set_training(m->params, 1);
    fputc('\n', out);
    free(ids);
    free(p);
    free(prime);
    return ok;
}

static int write_file(const char *dir, const char *name, const void *data, size_t n)
{
    char path[1280];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, n, f) == n;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "char_lstm: cannot write %s: %s\n", path, strerror(errno));
    return ok;
}

/* The vocabulary (its bytes), the streams as one byte per id, and the initial weights. */
static int dump_data(const options *o, const model *m, const corpus *c)
{
    if (mkdir(o->dump_dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "char_lstm: cannot create %s: %s\n", o->dump_dir, strerror(errno));
        return 0;
    }
    size_t n = c->n_train > c->n_valid ? c->n_train : c->n_valid;
    unsigned char *b = malloc(n > 256 ? n : 256);
    if (!b) return 0;
    const int64_t *vb = nb_tensor_cdata(m->vocab);
    for (int64_t i = 0; i < m->V; i++) b[i] = (unsigned char)vb[i];
    int ok = write_file(o->dump_dir, "vocab.bin", b, (size_t)m->V);
    for (size_t i = 0; ok && i < c->n_train; i++) b[i] = (unsigned char)c->train[i];
    ok = ok && write_file(o->dump_dir, "train.bin", b, c->n_train);
    for (size_t i = 0; ok && i < c->n_valid; i++) b[i] = (unsigned char)c->valid[i];
    ok = ok && write_file(o->dump_dir, "valid.bin", b, c->n_valid);
    free(b);
    char path[1280];
    snprintf(path, sizeof path, "%s/init.safetensors", o->dump_dir);
    if (ok && nb_checkpoint_save(path, m->params, NULL, 0) != NB_OK) {
        fprintf(stderr, "char_lstm: %s\n", nb_error_message());
        ok = 0;
    }
    char steps[48] = "";
    if (o->max_steps) snprintf(steps, sizeof steps, " --max-steps %lld", (long long)o->max_steps);
    if (ok && !o->quiet)
        printf("data and initial weights written to %s; the PyTorch twin:\n"
               "  /usr/bin/python3 examples/char_lstm_torch.py --data %s --epochs %d%s --hidden %lld --layers %d "
               "--embed %lld --batch %lld --bptt %lld --lr %g --clip %g --schedule %s --threads %d\n",
               o->dump_dir, o->dump_dir, o->epochs, steps, (long long)o->hidden, o->layers, (long long)o->embed,
               (long long)o->batch, (long long)o->bptt, o->lr, o->clip, o->schedule ? "cosine" : "constant",
               o->threads ? o->threads : nb_num_threads());
    return ok;
}

/* The model of a checkpoint: sizes from its header, then a model of those sizes loaded from it, and
 * the vocabulary from its "vocab" buffer. The sizes go to o, for the messages. */
static int load_model(options *o, model *m, nb_vocab **vocab, nb_rng *rng)
{
    int64_t V = 0;
    if (!peek_sizes(o->load_path, &V, &o->embed, &o->hidden, &o->layers)) return 0;
    if (!o->quiet)
        printf("%s: vocabulary %lld, embedding %lld, LSTM %d x %lld\n", o->load_path, (long long)V,
               (long long)o->embed, o->layers, (long long)o->hidden);
    char bytes[256];
    for (int i = 0; i < 256; i++) bytes[i] = (char)i;
    nb_vocab *placeholder = V <= 256 ? nb_vocab_build(bytes, (size_t)V) : NULL; /* V entries, replaced below */
    int ok = placeholder && model_init(m, placeholder, o->embed, o->hidden, o->layers, rng) &&
             nb_checkpoint_load(o->load_path, m->params, NULL, NULL) == NB_OK;
    nb_vocab_free(placeholder);
    if (!ok) {
        fprintf(stderr, "char_lstm: %s\n", V <= 256 ? nb_error_message() : "the checkpoint's vocabulary exceeds 256");
        return 0;
    }
    const int64_t *vb = nb_tensor_cdata(m->vocab);
    for (int64_t i = 0; i < V; i++) {
        if (vb[i] < 0 || vb[i] > 255 || (i && vb[i] <= vb[i - 1])) {
            fprintf(stderr, "char_lstm: %s: the vocabulary buffer is not a list of increasing bytes\n", o->load_path);
            return 0;
        }
        bytes[i] = (char)vb[i];
    }
    *vocab = nb_vocab_build(bytes, (size_t)V);
    return *vocab != NULL;
}

/* Read, split and encode the fortunes; *vocab is built from both streams unless given. */
static int load_corpus(const options *o, corpus *c, nb_vocab **vocab)
{
    quotes q = {0};
    buf train = {0}, valid = {0}, all = {0};
    int ok = load_quotes(o->data_dir, o->files, &q);
    if (ok && q.n < 2) {
        fprintf(stderr, "char_lstm: need at least 2 quotes, found %zu\n", q.n);
        ok = 0;
    }
    if (ok) {
        c->q_valid = split_quotes(&q, o->val_fraction, o->seed, &train, &valid);
        c->q_train = q.n - c->q_valid;
        ok = c->q_valid > 0 && (*vocab || (buf_put(&all, train.p, train.n) && buf_put(&all, valid.p, valid.n) &&
                                           (*vocab = nb_vocab_build(all.p, all.n))));
        c->train = ok ? encode(*vocab, &train) : NULL;
        c->valid = c->train ? encode(*vocab, &valid) : NULL;
        c->n_train = train.n;
        c->n_valid = valid.n;
        if (!c->valid) {
            fprintf(stderr, "char_lstm: %s\n", nb_error_message()[0] ? nb_error_message() : "out of memory");
            ok = 0;
        }
    }
    free(all.p);
    free(train.p);
    free(valid.p);
    free(q.text.p);
    free(q.start);
    return ok;
}

/* Train for o->epochs (at most o->max_steps steps), validating after each epoch and saving the best
 * model to OUT/char_lstm.safetensors. Returns 0, 1 on failure, 2 when the text is too short. */
static int train(const options *o, model *m, const corpus *c, nb_tape *tape)
{
    const int64_t B = o->batch, T = o->bptt, L = (int64_t)(c->n_train - 1) / B, per_epoch = L / T;
    if (per_epoch < 1) {
        fprintf(stderr, "char_lstm: the training text (%zu bytes) is too short for %lld streams of %lld steps; "
                        "lower --batch or --bptt\n", c->n_train, (long long)B, (long long)T);
        return 2;
    }
    int64_t total_steps = per_epoch * o->epochs;
    if (o->max_steps && o->max_steps < total_steps) total_steps = o->max_steps;
    const int epochs = (int)((total_steps + per_epoch - 1) / per_epoch), tty = isatty(STDOUT_FILENO) && !o->quiet;

    char ckpt[1280], csv_path[1280];
    snprintf(ckpt, sizeof ckpt, "%s/char_lstm.safetensors", o->out_dir);
    snprintf(csv_path, sizeof csv_path, "%s/char_lstm.csv", o->out_dir);
    if (mkdir(o->out_dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "char_lstm: cannot create %s: %s\n", o->out_dir, strerror(errno));
        return 1;
    }
    FILE *csv = fopen(csv_path, "w");
    if (!csv) {
        fprintf(stderr, "char_lstm: cannot write %s: %s\n", csv_path, strerror(errno));
        return 1;
    }
    fprintf(csv, "epoch,step,train_bpc,val_bpc,grad_norm,clipped,lr,seconds\n");

    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.lr = o->lr;
    nb_optim *opt = nb_optim_new(NB_ADAM, m->params, &oo);
    if (opt && o->load_path && nb_checkpoint_load(o->load_path, m->params, opt, NULL) != NB_OK)
        nb_error_clear(); /* no Adam state in the file (nothing was changed): start it afresh */
    /* the file's Adam state is kept, but this run's lr is --lr: the loaded one is where the saved run's
     * schedule ended (lr / 10 after a cosine), which the schedule below would take as its start */
    if (opt) nb_optim_set_lr(opt, o->lr);
    nb_sched *sched = NULL;
    if (opt && o->schedule && total_steps > 1) {
        nb_sched_opts so = nb_sched_defaults(NB_SCHED_COSINE);
        so.t_max = total_steps; /* stepped once per training step */
        so.warmup = 0;
        so.eta_min = o->lr / 10;
        sched = nb_sched_new(NB_SCHED_COSINE, opt, &so);
    }
    /* the state carried from chunk to chunk: leaves, outside any graph */
    nb_rnn_state keep = {nb_tensor_zeros(NB_F32, NB_SHAPE(m->layers, B, m->H)),
                         nb_tensor_zeros(NB_F32, NB_SHAPE(m->layers, B, m->H))};
    double *step_times = malloc((size_t)total_steps * sizeof *step_times);
    int64_t *xbuf = malloc((size_t)(B * T) * sizeof *xbuf), *ybuf = malloc((size_t)(B * T) * sizeof *ybuf);
    int ok = opt && (sched || !o->schedule || total_steps < 2) && keep.h && keep.c && step_times && xbuf && ybuf;
    if (!ok) fprintf(stderr, "char_lstm: %s\n", nb_error_message()[0] ? nb_error_message() : "out of memory");

    if (ok && !o->quiet) {
        printf("fortunes (%s): %zu quotes; %zu train bytes (%zu quotes), %zu validation bytes (%zu quotes); "
               "vocabulary %lld\n", o->files, c->q_train + c->q_valid, c->n_train, c->q_train, c->n_valid, c->q_valid,
               (long long)m->V);
        printf("model: embedding %lld, LSTM %d x %lld, linear to %lld (%lld parameters); Adam lr %g%s, clip %g; "
               "B %lld x T %lld, %lld steps per epoch, %lld steps\n", (long long)m->E, m->layers, (long long)m->H,
               (long long)m->V, (long long)nb_params_numel(m->params), o->lr, sched ? " cosine" : "", o->clip,
               (long long)B, (long long)T, (long long)per_epoch, (long long)total_steps);
        printf("before training: validation %.4f bpc\n", evaluate(m, c->valid, c->n_valid, B, T, tape, xbuf, ybuf));
        fflush(stdout);
    }

    double t_start = now(), best = INFINITY, last_val = NAN;
    int64_t step = 0;
    for (int epoch = 1; epoch <= epochs && ok; epoch++) {
        double t0 = now(), drawn = 0, loss_sum = 0, gnorm_sum = 0, gnorm = 0;
        int64_t done = 0, clipped = 0, this_epoch = total_steps - step < per_epoch ? total_steps - step : per_epoch;
        nb_tensor_fill(keep.h, 0); /* every epoch starts the streams afresh */
        nb_tensor_fill(keep.c, 0);
        for (int64_t k = 0; k < this_epoch; k++) {
            double ts = now();
            nb_tape_begin(tape);
            fill_chunk(c->train, L, B, k * T, T, xbuf, ybuf);
            nb_tensor *x = nb_constant(NB_I64, NB_SHAPE(T, B), xbuf), *y = nb_constant(NB_I64, NB_SHAPE(T * B), ybuf);
            nb_rnn_state fin;
            nb_tensor *loss = nb_cross_entropy(model_forward(m, x, &keep, &fin), y, NULL);
            /* backward first: the graph saved keep's values, so keep takes the new state only after */
            ok = loss && nb_backward(loss, NULL, 0) == NB_OK && !isnan(gnorm = nb_clip_grad_norm(m->params, o->clip)) &&
                 nb_optim_step(opt) == NB_OK && nb_rnn_state_keep(&fin, &keep) == NB_OK;
            if (ok) loss_sum += nb_tensor_item(loss);
            nb_optim_zero_grad(opt);
            nb_tape_end(tape);
            nb_tape_reset(tape);
            if (!ok) break;
            if (sched) nb_sched_step(sched, 0);
            gnorm_sum += gnorm;
            clipped += gnorm > o->clip;
            step_times[step++] = now() - ts;
            done++;
            double bpc = loss_sum / (double)done / log(2.0), per_step = (now() - t0) / (double)done;
            if (tty && (now() - drawn > 0.2 || done == this_epoch)) {
                progress(epoch, epochs, done, this_epoch,
                         "%4lld/%lld  train %.3f bpc  |g| %.2f  %.3f s/step  ETA %4.0fs ", (long long)done,
                         (long long)this_epoch, bpc, gnorm, per_step, per_step * (double)(this_epoch - done));
                drawn = now();
            }
            else if (!o->quiet && done % o->log_every == 0) {
                printf("epoch %d step %lld/%lld  train %.4f bpc  |g| %.3f  %.3f s/step\n", epoch, (long long)done,
                       (long long)this_epoch, bpc, gnorm, per_step);
                fflush(stdout);
            }
        }
        double val = ok ? evaluate(m, c->valid, c->n_valid, B, T, tape, xbuf, ybuf) : NAN, secs = now() - t0;
        int better = val < best;
        if (isnan(val) || (better && nb_checkpoint_save(ckpt, m->params, opt, step) != NB_OK)) {
            fprintf(stderr, "%schar_lstm: %s\n", tty ? "\n" : "", nb_error_message());
            ok = 0;
            break;
        }
        last_val = val;
        best = better ? val : best;
        double train_bpc = loss_sum / (double)done / log(2.0), lr = nb_optim_lr(opt);
        fprintf(csv, "%d,%lld,%.6f,%.6f,%.4f,%.4f,%.6g,%.3f\n", epoch, (long long)step, train_bpc, val,
                gnorm_sum / (double)done, (double)clipped / (double)done, lr, secs);
        fflush(csv);
        if (!o->quiet)
            printf("%sepoch %2d/%d  step %lld  train %.4f bpc  validation %.4f bpc  mean |g| %.3f (%.0f%% clipped)  "
                   "lr %.2e  %.1fs%s\n", tty ? "\r" : "", epoch, epochs, (long long)step, train_bpc, val,
                   gnorm_sum / (double)done, 100.0 * (double)clipped / (double)done, lr, secs, better ? "  *" : "");
    }
    if (ok) {
        qsort(step_times, (size_t)step, sizeof *step_times, cmp_double);
        printf("validation %.4f bpc after %lld steps (best %.4f); median %.3f s/step; %.1fs in all\n", last_val,
               (long long)step, best, step_times[step / 2], now() - t_start);
        printf("checkpoint %s, metrics %s\n", ckpt, csv_path);
    }
    fclose(csv);
    free(xbuf);
    free(ybuf);
    free(step_times);
    nb_rnn_state_free(&keep);
    nb_sched_free(sched);
    nb_optim_free(opt);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    options o;
    int status = parse_args(argc, argv, &o);
    if (status) return status == 1 ? 0 : 2;
    if (o.threads) nb_set_num_threads(o.threads);

    status = 1;
    corpus c = {0};
    nb_vocab *vocab = NULL;
    model m = {0};
    nb_tape *tape = nb_tape_new();
    nb_rng rng;
    nb_rng_seed(&rng, o.seed);
    /* with --load, the sizes and the vocabulary come from the checkpoint */
    if (!tape || (o.load_path && !load_model(&o, &m, &vocab, &rng))) goto done;
    if (!o.sample_only) {
        if (!load_corpus(&o, &c, &vocab)) goto done;
        if (!o.load_path && !model_init(&m, vocab, o.embed, o.hidden, o.layers, &rng)) {
            fprintf(stderr, "char_lstm: %s\n", nb_error_message());
            goto done;
        }
    }
    if (o.samples > 0 && o.prompt && !prompt_ok(vocab, o.prompt)) { /* before training, not after */
        status = 2;
        goto done;
    }
    if (!o.sample_only) {
        if (o.dump_dir && !dump_data(&o, &m, &c)) goto done;
        if ((status = train(&o, &m, &c, tape)) != 0) goto done;
        status = 1;
    }

    if (o.samples > 0) {
        const char *prompt = o.prompt ? o.prompt : "";
        nb_rng srng;
        nb_rng_seed(&srng, o.seed ^ 0x5a3b1e5a3b1eULL);
        printf("\nsamples (temperature %g, prompt \"%s\"):\n", o.temperature, prompt);
        for (int s = 0; s < o.samples; s++) {
            printf("---\n");
            if (!sample(&m, vocab, prompt, o.length, o.temperature, &srng, tape, stdout)) {
                fprintf(stderr, "char_lstm: %s\n", nb_error_message()[0] ? nb_error_message() : "out of memory");
                goto done;
            }
        }
        printf("---\n");
    }
    status = 0;

done:
    nb_tape_free(tape);
    nb_params_free(m.params);
    nb_vocab_free(vocab);
    free(c.train);
    free(c.valid);
    return status;
}
