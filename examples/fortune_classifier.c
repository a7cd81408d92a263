/*
 * Which fortune file does a quote come from? A byte-level sequence classifier (N-1): embedding ->
 * GRU (or LSTM) over variable-length batches (padding + the `lengths` of nb_rnn_forward) -> the final
 * state and the mean of the outputs -> dropout -> linear -> one of C categories.
 *
 * Quotes come from Debian's `fortunes` package (/usr/share/games/fortunes/<category>, quotes
 * separated by lines holding only "%"), capped at --max-len bytes. The split is seeded and
 * stratified by quote (80% train / 10% validation / 10% test in every category); each split is a
 * dataset of padded byte ids, and nb_batches_by_length puts quotes of similar length in a batch so
 * that little time goes into padding. Adam with gradient-norm clipping, early stopping on validation
 * accuracy with the best weights restored; at the end the test accuracy against the majority-class
 * baseline and a per-class table.
 *
 *   fortune_classifier [options]
 */
#define _POSIX_C_SOURCE 200809L

#include <nabla.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define MAX_CLASSES 16
#define NAME_MAX_LEN 64
#define MIN_QUOTES 10 /* per category, so that every split gets some */
#define DEFAULT_CATEGORIES "definitions,songs-poems,zippy,knghtbrd,perl,startrek"

typedef struct options {
    const char *data_dir;
    char names[MAX_CLASSES][NAME_MAX_LEN];
    int n_classes;
    nb_rnn_kind cell;
    int epochs, patience, layers, threads, quiet, is_short;
    int64_t hidden, embed, batch, max_len, limit;
    double lr, clip, dropout;
    uint64_t seed;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fortune_classifier [options]\n"
            "  --data DIR          folder of the fortune files (default /usr/share/games/fortunes)\n"
            "  --categories A,B,.. 2 to %d fortune files to tell apart\n"
            "                      (default " DEFAULT_CATEGORIES ")\n"
            "  --cell gru|lstm     recurrent cell (default gru)\n"
            "  --epochs N          at most N epochs (default 30)\n"
            "  --patience N        early-stopping patience in epochs (default 5)\n"
            "  --hidden N          recurrent state size (default 128)\n"
            "  --embed N           byte embedding size (default 32)\n"
            "  --layers N          recurrent layers (default 1)\n"
            "  --batch N           batch size (default 32)\n"
            "  --lr X              Adam learning rate (default 2e-3)\n"
            "  --clip X            gradient-norm clipping threshold (default 1)\n"
            "  --dropout P         dropout before the output layer (default 0.2)\n"
            "  --max-len N         quotes are cut after N bytes, 1..1000 (default 300)\n"
            "  --limit N           at most N quotes per category (default: all)\n"
            "  --seed N            seed of the split, initialisation, shuffling, dropout (default 1)\n"
            "  --threads N         threads for nabla and BLAS (default 1: the matrices are small)\n"
            "  --quiet             only the final result\n"
            "  --short             a run of seconds for CI: 2 epochs, a small model, 40 quotes per\n"
            "                      category, 100 bytes (later options override it)\n",
            MAX_CLASSES);
}

/* A comma-separated list of distinct file names (no '/', not starting with '.'). */
static int parse_categories(const char *s, options *o)
{
    o->n_classes = 0;
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t n = comma ? (size_t)(comma - s) : strlen(s);
        if (n == 0 || n >= NAME_MAX_LEN || o->n_classes >= MAX_CLASSES || s[0] == '.' || memchr(s, '/', n))
            return 0;
        memcpy(o->names[o->n_classes], s, n);
        o->names[o->n_classes][n] = 0;
        for (int i = 0; i < o->n_classes; i++)
            if (!strcmp(o->names[i], o->names[o->n_classes])) return 0;
        o->n_classes++;
        if (!comma) break;
        s = comma + 1;
    }
    return o->n_classes >= 2;
}

/* The options that take a value (anything else but the flags is unknown). */
static const char *const value_options[] = {"--data", "--categories", "--cell", "--epochs", "--patience", "--layers",
                                            "--threads", "--hidden", "--embed", "--batch", "--max-len", "--limit",
                                            "--seed", "--lr", "--clip", "--dropout", NULL};

/* Returns 0 on success, 2 on a usage error (message printed), 1 for --help. */
static int parse_args(int argc, char **argv, options *o)
{
    int is_short = 0;
    for (int i = 1; i < argc; i++) is_short |= !strcmp(argv[i], "--short");
    *o = (options){.data_dir = "/usr/share/games/fortunes", .cell = NB_GRU, .epochs = 30, .patience = 5,
                   .layers = 1, .hidden = 128, .embed = 32, .batch = 32, .max_len = 300, .lr = 2e-3, .clip = 1.0,
                   .dropout = 0.2, .seed = 1, .threads = 1, .is_short = is_short};
    if (is_short) {
        o->epochs = 2;
        o->hidden = 24;
        o->embed = 12;
        o->max_len = 100;
        o->limit = 40;
    }
    if (!parse_categories(DEFAULT_CATEGORIES, o)) return 2;
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
            return usage_error(usage, "fortune_classifier: unknown option %s\n", a);
        else if (!v)
            return usage_error(usage, "fortune_classifier: %s needs a value\n", a);
        else if (!strcmp(a, "--data")) o->data_dir = v;
        else if (!strcmp(a, "--categories")) ok = parse_categories(v, o);
        else if (!strcmp(a, "--cell")) {
            if (!strcmp(v, "gru")) o->cell = NB_GRU;
            else if (!strcmp(v, "lstm")) o->cell = NB_LSTM;
            else ok = 0;
        }
        else if (!strcmp(a, "--epochs")) ok = parse_int(v, 1, 100000, &n) && (o->epochs = (int)n, 1);
        else if (!strcmp(a, "--patience")) ok = parse_int(v, 1, 100000, &n) && (o->patience = (int)n, 1);
        else if (!strcmp(a, "--layers")) ok = parse_int(v, 1, NB_RNN_MAX_LAYERS, &n) && (o->layers = (int)n, 1);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, 1, 1024, &n) && (o->threads = (int)n, 1);
        else if (!strcmp(a, "--hidden")) ok = parse_int(v, 1, 1024, &o->hidden);
        else if (!strcmp(a, "--embed")) ok = parse_int(v, 1, 1024, &o->embed);
        else if (!strcmp(a, "--batch")) ok = parse_int(v, 1, 1024, &o->batch);
        else if (!strcmp(a, "--max-len")) ok = parse_int(v, 1, 1000, &o->max_len);
        else if (!strcmp(a, "--limit")) ok = parse_int(v, MIN_QUOTES, INT32_MAX, &o->limit);
        else if (!strcmp(a, "--seed")) ok = parse_int(v, 0, INT64_MAX, &n) && (o->seed = (uint64_t)n, 1);
        else if (!strcmp(a, "--lr")) ok = parse_double(v, 1e-8, 10, &o->lr);
        else if (!strcmp(a, "--clip")) ok = parse_double(v, 1e-6, 1e6, &o->clip);
        else if (!strcmp(a, "--dropout")) ok = parse_double(v, 0, 0.95, &o->dropout);
        if (!ok) return usage_error(usage, "fortune_classifier: bad value '%s' for %s\n", v, a);
        i += takes;
    }
    return 0;
}

/* ---- the quotes -------------------------------------------------------------------------------- */

typedef struct quote {
    const char *text; /* into the category's file buffer */
    int64_t len;      /* bytes, at most max_len */
    int label;
} quote;

typedef struct corpus {
    char *file[MAX_CLASSES]; /* each category's file contents */
    quote *q;
    int64_t n;
} corpus;

static void corpus_free(corpus *c)
{
    for (int i = 0; i < MAX_CLASSES; i++) free(c->file[i]);
    free(c->q);
}

/* Append the quotes of one file to c: text between lines that hold only "%", without trailing
 * blanks, cut to max_len bytes; empty ones skipped; at most limit (0: all). Returns the count added,
 * -1 when out of memory. */
static int64_t split_quotes(corpus *c, int64_t *cap, char *text, size_t size, int label, int64_t max_len,
                            int64_t limit)
{
    int64_t added = 0;
    size_t pos = 0, start, end;
    while (!(limit && added >= limit) && next_quote(text, size, &pos, &start, &end)) {
        while (end > start && (text[end - 1] == '\n' || text[end - 1] == '\r' || text[end - 1] == ' ' ||
                               text[end - 1] == '\t'))
            end--;
        if (end == start) continue;
        if (c->n == *cap) {
            quote *more = realloc(c->q, (size_t)(*cap * 2 + 256) * sizeof *more);
            if (!more) return -1;
            c->q = more;
            *cap = *cap * 2 + 256;
        }
        int64_t len = (int64_t)(end - start) < max_len ? (int64_t)(end - start) : max_len;
        c->q[c->n++] = (quote){.text = text + start, .len = len, .label = label};
        added++;
    }
    return added;
}

/* Read every category. Returns 1, or 0 after printing why not. */
static int load_corpus(const options *o, corpus *c, int64_t *per_class)
{
    int64_t cap = 0;
    for (int k = 0; k < o->n_classes; k++) {
        char path[1024];
        size_t size = 0;
        snprintf(path, sizeof path, "%s/%s", o->data_dir, o->names[k]);
        c->file[k] = read_file(path, &size);
        if (!c->file[k]) {
            fprintf(stderr,
                    "fortune_classifier: cannot read %s: %s.\n"
                    "Install the quotes with `apt-get install fortunes`, or pass --data DIR "
                    "(and --categories to choose files there).\n",
                    path, strerror(errno));
            return 0;
        }
        per_class[k] = split_quotes(c, &cap, c->file[k], size, k, o->max_len, o->limit);
        if (per_class[k] < 0) {
            fprintf(stderr, "fortune_classifier: out of memory\n");
            return 0;
        }
        if (per_class[k] < MIN_QUOTES) {
            fprintf(stderr, "fortune_classifier: %s has %lld quotes; a category needs at least %d\n", path,
                    (long long)per_class[k], MIN_QUOTES);
            return 0;
        }
    }
    return 1;
}

/* A split: quote indices, and how many of each class; then its quotes as a dataset (make_dataset). */
typedef struct split {
    int64_t *idx, n;
    int64_t count[MAX_CLASSES];
    nb_dataset *ds; /* inputs: byte ids [n, max_len]; targets: labels [n] */
    int64_t *len;   /* the quotes' lengths [n] */
} split;

static void split_free(split *s)
{
    nb_dataset_free(s->ds);
    free(s->len);
    free(s->idx);
}

/* Stratified: in each class, a seeded shuffle; round(10%) to test, round(10%) to validation, the
 * rest to training. */
static int make_splits(const corpus *c, int n_classes, uint64_t seed, split *tr, split *va, split *te)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    int64_t *cls = malloc((size_t)c->n * sizeof *cls);
    tr->idx = malloc((size_t)c->n * sizeof *tr->idx);
    va->idx = malloc((size_t)c->n * sizeof *va->idx);
    te->idx = malloc((size_t)c->n * sizeof *te->idx);
    if (!cls || !tr->idx || !va->idx || !te->idx) {
        free(cls);
        return 0;
    }
    for (int k = 0; k < n_classes; k++) {
        int64_t m = 0;
        for (int64_t i = 0; i < c->n; i++)
            if (c->q[i].label == k) cls[m++] = i;
        nb_rng_shuffle(&rng, cls, m);
        int64_t n_test = (m + 5) / 10, n_val = (m + 5) / 10;
        for (int64_t i = 0; i < m; i++) {
            split *s = i < n_test ? te : i < n_test + n_val ? va : tr;
            s->idx[s->n++] = cls[i];
            s->count[k]++;
        }
    }
    free(cls);
    return 1;
}

/* The quotes of s as a dataset: row i holds quote i's byte ids, then 0 up to max_len (padding that
 * changes nothing, as nb_rnn_forward is given the lengths); a byte not in vocab gets id V, its size,
 * and is counted in *unknown. Returns 1, or 0 when out of memory. */
static int make_dataset(const corpus *c, split *s, const nb_vocab *vocab, int64_t max_len, int64_t *unknown)
{
    int V = nb_vocab_size(vocab);
    nb_tensor *ids = nb_tensor_zeros(NB_I64, NB_SHAPE(s->n, max_len));
    nb_tensor *labels = nb_tensor_zeros(NB_I64, NB_SHAPE(s->n));
    s->len = malloc((size_t)s->n * sizeof *s->len);
    if (!ids || !labels || !s->len) {
        nb_tensor_free(ids);
        nb_tensor_free(labels);
        return 0;
    }
    int64_t *row = nb_tensor_data(ids), *label = nb_tensor_data(labels);
    for (int64_t i = 0; i < s->n; i++, row += max_len) {
        const quote *q = &c->q[s->idx[i]];
        for (int64_t j = 0; j < q->len; j++) {
            int id = nb_vocab_id(vocab, (unsigned char)q->text[j]);
            *unknown += id < 0;
            row[j] = id < 0 ? V : id;
        }
        label[i] = q->label;
        s->len[i] = q->len;
    }
    s->ds = nb_dataset_new(ids, labels);
    return s->ds != NULL;
}

/* ---- the model --------------------------------------------------------------------------------- */

typedef struct model {
    nb_embedding emb;
    nb_rnn rnn;
    nb_linear head;
    nb_params *params;
    double dropout;
    nb_rng *rng; /* dropout */
} model;

/* Logits [b, C] of a batch: byte ids [b, T] (T the longest quote of the batch) and the b lengths. */
static nb_tensor *logits_of(const model *m, nb_tensor *ids, const int64_t *lens)
{
    int64_t b = nb_tensor_dim(ids, 0), H = m->rnn.hidden, L = m->rnn.layers;
    nb_tensor *x = nb_embedding_forward(&m->emb, ids); /* [b, T, E] */
    nb_tensor *out;
    nb_rnn_state fin;
    if (nb_rnn_forward(&m->rnn, x, NULL, lens, &out, &fin) != NB_OK) return NULL;
    /* the top layer's state after each quote's last byte, and the mean of its outputs over the
     * quote (outputs past the end are zero) */
    nb_tensor *last = nb_reshape(nb_slice(fin.h, 0, L - 1, L, 1), NB_SHAPE(b, H));
    nb_tensor *len = nb_cast(nb_constant(NB_I64, NB_SHAPE(b, 1), lens), NB_F32);
    nb_tensor *mean = nb_div(nb_sum(out, NB_AXES(1), 0), len);
    nb_tensor *feats = nb_concat(2, (nb_tensor *[]){last, mean}, 1); /* [b, 2H] */
    return nb_linear_forward(&m->head, nb_train_dropout(m->params, feats, m->dropout, m->rng));
}

/* Accuracy over a split (evaluation mode, nothing recorded); confusion [C, C] counts when given. */
static int evaluate(const model *m, const split *s, int64_t batch, nb_tape *tape, int n_classes, double *acc,
                    int64_t *confusion)
{
    /* not shuffled, and one window over the whole split: all its quotes sorted by length */
    nb_batches *b = nb_batches_by_length(s->ds, s->len, batch, s->n / batch + 1, 0, 0);
    if (!b) return 0;
    nb_params_set_training(m->params, 0);
    int64_t correct = 0;
    nb_tensor *x, *y;
    int r;
    nb_tape_begin(tape);
    nb_no_grad_begin();
    while ((r = nb_batches_next(b, &x, &y)) == 1) {
        nb_tensor *pred = nb_argmax(logits_of(m, x, nb_batches_lengths(b, NULL)), 1, 0);
        if (!pred) {
            r = -1;
            break;
        }
        const int64_t *pd = nb_tensor_cdata(pred), *label = nb_tensor_cdata(y);
        for (int64_t i = 0; i < nb_tensor_dim(y, 0); i++) {
            correct += pd[i] == label[i];
            if (confusion) confusion[label[i] * n_classes + pd[i]]++;
        }
        nb_tape_reset(tape);
    }
    nb_no_grad_end();
    nb_tape_end(tape);
    nb_tape_reset(tape);
    nb_params_set_training(m->params, 1);
    nb_batches_free(b);
    *acc = s->n ? (double)correct / (double)s->n : 0;
    return r == 0;
}

static void print_table(const options *o, const split *tr, const split *va, const split *te,
                        const int64_t *confusion)
{
    int w = 8;
    for (int k = 0; k < o->n_classes; k++) w = (int)strlen(o->names[k]) > w ? (int)strlen(o->names[k]) : w;
    printf("\nper-class test accuracy (train / validation / test quotes; predicted classes of the test quotes)\n");
    printf("   %-*s %6s %5s %5s  %8s  ", w, "category", "train", "val", "test", "accuracy");
    for (int j = 0; j < o->n_classes; j++) printf("%5d", j);
    printf("\n");
    for (int k = 0; k < o->n_classes; k++) {
        const int64_t *row = confusion + k * o->n_classes;
        printf("%2d %-*s %6lld %5lld %5lld  %7.1f%%  ", k, w, o->names[k], (long long)tr->count[k],
               (long long)va->count[k], (long long)te->count[k],
               te->count[k] ? 100.0 * (double)row[k] / (double)te->count[k] : 0.0);
        for (int j = 0; j < o->n_classes; j++) printf("%5lld", (long long)row[j]);
        printf("\n");
    }
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
    corpus c = {0};
    split tr = {0}, va = {0}, te = {0};
    nb_vocab *vocab = NULL;
    char *train_text = NULL;
    nb_params *params = NULL;
    nb_tape *tape = NULL;
    nb_optim *opt = NULL;
    nb_early_stop *es = NULL;
    nb_batches *batches = NULL;
    int64_t per_class[MAX_CLASSES] = {0};
    nb_rng init_rng, dropout_rng;
    nb_rng_seed(&init_rng, o.seed * 4 + 1);
    nb_rng_seed(&dropout_rng, o.seed * 4 + 3);

    if (!load_corpus(&o, &c, per_class)) goto done;
    if (!make_splits(&c, o.n_classes, o.seed * 4, &tr, &va, &te)) {
        fprintf(stderr, "fortune_classifier: out of memory\n");
        goto done;
    }

    /* byte vocabulary of the training quotes; a byte seen only outside them gets id V (unknown) */
    int64_t train_bytes = 0;
    for (int64_t i = 0; i < tr.n; i++) train_bytes += c.q[tr.idx[i]].len;
    train_text = malloc((size_t)train_bytes + 1);
    if (!train_text) {
        fprintf(stderr, "fortune_classifier: out of memory\n");
        goto done;
    }
    for (int64_t i = 0, at = 0; i < tr.n; i++) {
        memcpy(train_text + at, c.q[tr.idx[i]].text, (size_t)c.q[tr.idx[i]].len);
        at += c.q[tr.idx[i]].len;
    }
    vocab = nb_vocab_build(train_text, (size_t)train_bytes);
    if (!vocab) {
        fprintf(stderr, "fortune_classifier: %s\n", nb_error_message());
        goto done;
    }
    int V = nb_vocab_size(vocab);
    int64_t unknown = 0;
    if (!make_dataset(&c, &tr, vocab, o.max_len, &unknown) || !make_dataset(&c, &va, vocab, o.max_len, &unknown) ||
        !make_dataset(&c, &te, vocab, o.max_len, &unknown)) {
        fprintf(stderr, "fortune_classifier: %s\n", nb_error_code() ? nb_error_message() : "out of memory");
        goto done;
    }

    /* the model */
    params = nb_params_new();
    model m = {.params = params, .dropout = o.dropout, .rng = &dropout_rng};
    nb_rnn_opts ro = {.layer = {.dtype = NB_F32}, .batch_first = 1};
    nb_layer_opts lo = {.dtype = NB_F32};
    if (!params || nb_embedding_init(&m.emb, params, "emb", V + 1, o.embed, &lo, &init_rng) != NB_OK ||
        nb_rnn_init(&m.rnn, params, "rnn", o.cell, o.embed, o.hidden, o.layers, &ro, &init_rng) != NB_OK ||
        nb_linear_init(&m.head, params, "head", 2 * o.hidden, o.n_classes, &lo, &init_rng) != NB_OK) {
        fprintf(stderr, "fortune_classifier: %s\n", nb_error_message());
        goto done;
    }
    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.lr = o.lr;
    opt = nb_optim_new(NB_ADAM, params, &oo);
    es = nb_early_stop_new(params, o.patience, 0.0, 1); /* maximise the validation accuracy */
    tape = nb_tape_new();
    /* shuffled, sorted by length within runs of 16 batches, the batches shuffled again */
    batches = nb_batches_by_length(tr.ds, tr.len, o.batch, 16, 1, o.seed * 4 + 2);
    if (!opt || !es || !tape || !batches) {
        fprintf(stderr, "fortune_classifier: %s\n", nb_error_code() ? nb_error_message() : "out of memory");
        goto done;
    }

    if (!o.quiet) {
        printf("fortunes: %d categories, %lld quotes (%lld train / %lld validation / %lld test), cut at %lld bytes; "
               "%d distinct bytes in training",
               o.n_classes, (long long)c.n, (long long)tr.n, (long long)va.n, (long long)te.n, (long long)o.max_len, V);
        if (unknown) printf(" (%lld bytes elsewhere unseen)", (long long)unknown);
        printf("\nmodel: embedding %d x %lld, %s %lld -> %lld (%d layer%s), final state + mean -> linear %lld -> %d: "
               "%lld parameters; Adam lr %g, clip %g, dropout %g, batch %lld\n",
               V + 1, (long long)o.embed, o.cell == NB_GRU ? "GRU" : "LSTM", (long long)o.embed, (long long)o.hidden,
               o.layers, o.layers > 1 ? "s" : "", (long long)(2 * o.hidden), o.n_classes,
               (long long)nb_params_numel(params), o.lr, o.clip, o.dropout, (long long)o.batch);
    }

    int failed = 0;
    int64_t per_epoch = nb_batches_per_epoch(batches);
    for (int epoch = 1; epoch <= o.epochs && !failed; epoch++) {
        double t0 = now(), loss_sum = 0;
        int64_t correct = 0, seen = 0, k = 0; /* k: batches done */
        nb_tensor *x, *y;
        int r;
        nb_tape_begin(tape);
        while ((r = nb_batches_next(batches, &x, &y)) == 1) {
            nb_tensor *logits = logits_of(&m, x, nb_batches_lengths(batches, NULL));
            nb_tensor *loss = nb_cross_entropy(logits, y, NULL);
            nb_tensor *pred = nb_argmax(logits, 1, 0);
            if (!loss || !pred || nb_backward(loss, NULL, 0) != NB_OK || !isfinite(nb_clip_grad_norm(params, o.clip)) ||
                nb_optim_step(opt) != NB_OK) {
                r = -1;
                break;
            }
            nb_optim_zero_grad(opt);
            int64_t b = nb_tensor_dim(y, 0);
            const int64_t *pd = nb_tensor_cdata(pred), *label = nb_tensor_cdata(y);
            for (int64_t i = 0; i < b; i++) correct += pd[i] == label[i];
            loss_sum += nb_tensor_item(loss) * (double)b;
            seen += b;
            k++;
            nb_tape_reset(tape);
            if (tty && (k % 5 == 0 || k == per_epoch)) {
                double dt = now() - t0;
                progress(epoch, o.epochs, k, per_epoch,
                         "%3lld/%lld  loss %.4f  acc %5.2f%%  %5.0f quotes/s  ETA %3.0fs ", (long long)k,
                         (long long)per_epoch, loss_sum / (double)seen, 100 * ((double)correct / (double)seen),
                         (double)seen / dt, dt / (double)k * (double)(per_epoch - k));
            }
        }
        nb_tape_end(tape);
        nb_tape_reset(tape);
        double val_acc;
        if (r < 0 || !evaluate(&m, &va, o.batch, tape, o.n_classes, &val_acc, NULL)) {
            fprintf(stderr, "%sfortune_classifier: %s\n", tty ? "\n" : "", why());
            failed = 1;
            break;
        }
        int stop = nb_early_stop_update(es, val_acc);
        int best = nb_early_stop_best_epoch(es) == epoch - 1;
        if (!o.quiet)
            printf("%sepoch %2d/%d  train loss %.4f acc %5.2f%%  val acc %5.2f%%  %.1fs%s%*s\n", tty ? "\r" : "", epoch,
                   o.epochs, loss_sum / (double)seen, 100.0 * (double)correct / (double)seen, 100 * val_acc,
                   now() - t0, best ? "  *" : "", tty ? 30 : 0, "");
        fflush(stdout);
        if (stop) {
            if (!o.quiet) printf("early stop: no better validation accuracy for %d epochs\n", o.patience);
            break;
        }
    }
    if (failed) goto done;

    /* the best weights, the test split, and the majority baseline */
    int64_t *confusion = calloc((size_t)(o.n_classes * o.n_classes), sizeof *confusion);
    double test_acc;
    if (!confusion || nb_early_stop_restore(es) != NB_OK ||
        !evaluate(&m, &te, o.batch, tape, o.n_classes, &test_acc, confusion)) {
        fprintf(stderr, "fortune_classifier: %s\n", nb_error_code() ? nb_error_message() : "out of memory");
        free(confusion);
        goto done;
    }
    int major = 0;
    for (int k = 1; k < o.n_classes; k++) major = te.count[k] > te.count[major] ? k : major;
    double baseline = (double)te.count[major] / (double)te.n;
    if (!o.quiet) print_table(&o, &tr, &va, &te, confusion);
    printf("%sbest epoch %lld (validation accuracy %.2f%%); test accuracy %.2f%% vs majority baseline %.2f%% "
           "(%s, %lld of %lld): %+.1f points; %.1fs in all\n",
           o.quiet ? "" : "\n", (long long)nb_early_stop_best_epoch(es) + 1, 100 * nb_early_stop_best(es),
           100 * test_acc, 100 * baseline, o.names[major], (long long)te.count[major], (long long)te.n,
           100 * (test_acc - baseline), now() - t_start);
    free(confusion);
    status = 0;

done:
    nb_batches_free(batches);
    nb_early_stop_free(es);
    nb_optim_free(opt);
    nb_tape_free(tape);
    nb_params_free(params);
    nb_vocab_free(vocab);
    free(train_text);
    split_free(&tr);
    split_free(&va);
    split_free(&te);
    corpus_free(&c);
    return status;
}
