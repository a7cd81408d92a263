/*
 * Fashion-MNIST with an MLP (the default) or a CNN (--model cnn: two conv-batchnorm-ReLU-maxpool
 * blocks, channel dropout, a hidden linear layer with dropout; random mirror images in training, and
 * the mean of an image's and its mirror's logits for the test): AdamW, cosine schedule with warm-up,
 * early stopping on a seeded 10% validation split (best weights restored), the best checkpoint saved
 * as safetensors, test accuracy and a confusion matrix at the end. A metrics CSV per epoch feeds
 * examples/plot_curves.gp; examples/fashion_cnn_torch_check.py loads the CNN's checkpoint into the
 * equivalent torch.nn module and compares predictions.
 *
 *   fashion_mnist [options]              train (reads Debian's dataset-fashion-mnist by default)
 *   fashion_mnist --eval FILE [options]  load a checkpoint and evaluate it on the test set
 *   mpirun -np N fashion_mnist [options] the same training on N processes (nabla/dist.h): each takes
 *                                        its part of every batch of --batch images (the global batch),
 *                                        gradients are averaged, metrics summed over the processes,
 *                                        rank 0 prints and writes the checkpoint
 * On one machine keep MPI off the network: `. tests/mpi-env.sh` first (Open MPI: OMPI_MCA_btl=self,vader
 * OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo), as README's command does.
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

#define N_CLASSES 10
static const char *const class_names[N_CLASSES] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                   "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

typedef struct options {
    const char *data_dir, *out_dir, *eval_path, *graph_path, *predictions_path;
    int cnn;             /* --model cnn */
    int64_t layers[NB_MLP_MAX_LAYERS + 1];
    int n_layers; /* hidden layers */
    int64_t channels[3], hidden; /* the CNN's conv channels (2 or 3 blocks) and hidden units */
    int blocks;
    int augment;
    int tta;             /* cnn: evaluate the mean of an image's and its mirror image's logits */
    int keep_denormals;  /* compute with denormal floats instead of flushing them to zero */
    int epochs, patience, threads, quiet;
    int64_t batch, train_limit;
    double lr, weight_decay, dropout, smoothing;
    uint64_t seed;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fashion_mnist [options]\n"
            "       fashion_mnist --eval CHECKPOINT [options]\n"
            "  --model mlp|cnn    the network (default mlp); the defaults below are mlp / cnn\n"
            "  --data DIR         folder with the IDX files (default /usr/share/datasets/fashion-mnist)\n"
            "  --out DIR          where the checkpoint and metrics go (default runs)\n"
            "  --layers A,B,...   mlp: hidden layer sizes (default 512,256)\n"
            "  --channels A,B[,C] cnn: channels of the two or three conv blocks (default 32,64)\n"
            "  --hidden N         cnn: units of the hidden linear layer (default 256)\n"
            "  --no-augment       cnn: no random horizontal flips of the training images (default: flips)\n"
            "  --no-tta           cnn: test images alone (default: the mean of the logits of an image and of its\n"
            "                     mirror image, test-time augmentation matching the flips; validation always\n"
            "                     uses the images alone)\n"
            "  --epochs N         at most N epochs (default 25 / 16)\n"
            "  --batch N          batch size (default 256 / 64)\n"
            "  --lr X             AdamW learning rate (default 2e-3)\n"
            "  --weight-decay X   AdamW decoupled weight decay (default 1e-4 / 5e-4)\n"
            "  --dropout P        dropout between layers (default 0.2; cnn: a third of it on channels after\n"
            "                     the first block)\n"
            "  --smoothing S      label smoothing of the training loss (default 0.1)\n"
            "  --patience N       early-stopping patience in epochs (default 6 / 4)\n"
            "  --seed N           seed of initialisation, split, shuffling, dropout (default 1)\n"
            "  --threads N        threads for nabla and BLAS (default: NB_NUM_THREADS, else all cores)\n"
            "  --keep-denormals   cnn: compute with denormal floats (default: flushed to zero,\n"
            "                     nb_set_flush_denormal; the mlp always keeps them)\n"
            "  --train-limit N    use only the first N training images (for a quick run)\n"
            "  --quiet            no per-epoch output\n"
            "  --eval FILE        evaluate a saved checkpoint (same --model and sizes as when trained)\n"
            "  --predictions FILE with --eval: write each test image's predicted class, one a line\n"
            "  --graph FILE       write the graph of one training step's loss as Graphviz DOT\n"
            "                     (render it with: dot -Tpng FILE -o graph.png)\n");
}

static int parse_layers(const char *s, options *o)
{
    o->n_layers = 0;
    while (*s) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || end == s || v < 1 || v > 1 << 16 || o->n_layers >= NB_MLP_MAX_LAYERS - 1) return 0;
        o->layers[o->n_layers++] = v;
        if (*end == ',') end++;
        else if (*end) return 0;
        s = end;
    }
    return o->n_layers > 0;
}

/* "A,B" or "A,B,C": the CNN's channel counts, one per block */
static int parse_channels(const char *s, options *o)
{
    int n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || end == s || v < 1 || v > 4096 || n == 3) return 0;
        o->channels[n++] = v;
        if (*end == ',') end++;
        else if (*end) return 0;
        s = end;
    }
    if (n < 2) return 0;
    o->blocks = n;
    return 1;
}

/* The options that take a value (anything else but the flags is unknown). */
static const char *const value_options[] = {"--data", "--out", "--eval", "--layers", "--epochs", "--batch",
                                            "--patience", "--threads", "--train-limit", "--seed", "--lr",
                                            "--weight-decay", "--dropout", "--smoothing", "--graph", "--model",
                                            "--channels", "--hidden", "--predictions", NULL};

/* Returns 0 on success, 2 on a usage error (message printed), 1 for --help. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.data_dir = "/usr/share/datasets/fashion-mnist", .out_dir = "runs", .layers = {512, 256},
                   .n_layers = 2, .epochs = 25, .patience = 6, .batch = 256, .lr = 2e-3, .weight_decay = 1e-4,
                   .dropout = 0.2, .smoothing = 0.1, .seed = 1, .channels = {32, 64}, .blocks = 2, .hidden = 256};
    /* the model first: it sets the defaults of the other options */
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--model") && !strcmp(argv[i + 1], "cnn")) {
            o->cnn = 1;
            o->augment = 1;
            o->tta = 1;
            o->epochs = 16;
            o->batch = 64;
            o->weight_decay = 5e-4;
            o->dropout = 0.2;
            o->patience = 4;
        }
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
        } else if (!strcmp(a, "--no-augment")) {
            o->augment = 0;
            takes = 0;
        } else if (!strcmp(a, "--no-tta")) {
            o->tta = 0;
            takes = 0;
        } else if (!strcmp(a, "--keep-denormals")) {
            o->keep_denormals = 1;
            takes = 0;
        } else if (!is_one_of(a, value_options))
            return usage_error(usage, "fashion_mnist: unknown option %s\n", a);
        else if (!v)
            return usage_error(usage, "fashion_mnist: %s needs a value\n", a);
        else if (!strcmp(a, "--data")) o->data_dir = v;
        else if (!strcmp(a, "--out")) o->out_dir = v;
        else if (!strcmp(a, "--eval")) o->eval_path = v;
        else if (!strcmp(a, "--graph")) o->graph_path = v;
        else if (!strcmp(a, "--layers")) ok = parse_layers(v, o);
        else if (!strcmp(a, "--model")) ok = !strcmp(v, "mlp") || !strcmp(v, "cnn");
        else if (!strcmp(a, "--channels")) ok = parse_channels(v, o);
        else if (!strcmp(a, "--hidden")) ok = parse_int(v, 1, 1 << 16, &o->hidden);
        else if (!strcmp(a, "--predictions")) o->predictions_path = v;
        else if (!strcmp(a, "--epochs")) ok = parse_int(v, 1, 100000, &n) && (o->epochs = (int)n, 1);
        else if (!strcmp(a, "--batch")) ok = parse_int(v, 1, 60000, &o->batch);
        else if (!strcmp(a, "--patience")) ok = parse_int(v, 1, 100000, &n) && (o->patience = (int)n, 1);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, 1, 1024, &n) && (o->threads = (int)n, 1);
        else if (!strcmp(a, "--train-limit")) ok = parse_int(v, 100, 60000, &o->train_limit);
        else if (!strcmp(a, "--seed")) ok = parse_int(v, 0, INT64_MAX, &n) && (o->seed = (uint64_t)n, 1);
        else if (!strcmp(a, "--lr")) ok = parse_double(v, 1e-8, 10, &o->lr);
        else if (!strcmp(a, "--weight-decay")) ok = parse_double(v, 0, 1, &o->weight_decay);
        else if (!strcmp(a, "--dropout")) ok = parse_double(v, 0, 0.95, &o->dropout);
        else if (!strcmp(a, "--smoothing")) ok = parse_double(v, 0, 0.5, &o->smoothing);
        if (!ok) return usage_error(usage, "fashion_mnist: bad value '%s' for %s\n", v, a);
        i += takes;
    }
    return 0;
}

/* Read images (as [N, 784] f32 in [0, 1]) and labels (i64) of one split. */
static int load_split(const char *dir, const char *prefix, nb_tensor **x, nb_tensor **y)
{
    char ipath[1024], lpath[1024];
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);
    if (access(ipath, R_OK) != 0 || access(lpath, R_OK) != 0) {
        fprintf(stderr,
                "fashion_mnist: cannot read %s or %s.\n"
                "Install the data set with `apt-get install dataset-fashion-mnist`, or pass --data DIR.\n",
                ipath, lpath);
        return 0;
    }
    if (nb_idx_read(ipath, NB_F32, 1.0 / 255.0, x) != NB_OK || nb_idx_read(lpath, NB_I64, 1.0, y) != NB_OK) {
        fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
        return 0;
    }
    int64_t n = nb_tensor_dim(*x, 0);
    if (nb_tensor_ndim(*x) != 3 || nb_tensor_dim(*x, 1) != 28 || nb_tensor_dim(*x, 2) != 28 ||
        nb_tensor_dim(*y, 0) != n) {
        fprintf(stderr, "fashion_mnist: %s: expected [N, 28, 28] images with N labels\n", ipath);
        return 0;
    }
    return 1;
}

/* The network. The CNN's parameters are named as the attributes of examples/fashion_cnn_torch_check.py's
 * torch module (conv1.weight, bn1.running_mean, fc2.bias, ...), so its checkpoint loads there. */
typedef struct model {
    int cnn, tta;
    nb_mlp mlp;
    int blocks;              /* conv-bn-relu-pool blocks: 2 or 3 */
    nb_conv conv[3];         /* conv1..: 3x3, padding 1, no bias (batch norm follows) */
    nb_batch_norm bn[3];     /* bn1.. */
    nb_linear fc1, fc2;
    double dropout;
    const nb_params *params; /* whose training mode applies */
    nb_rng *rng;             /* dropout */
} model;

static nb_status model_init(model *m, nb_params *p, const options *o, nb_rng *rng)
{
    memset(m, 0, sizeof *m);
    m->cnn = o->cnn;
    m->tta = o->cnn && o->tta;
    m->dropout = o->dropout;
    m->params = p;
    m->rng = rng;
    nb_layer_opts lo = {.dtype = NB_F32, .weight_init = {NB_INIT_KAIMING_UNIFORM, 0}};
    if (!o->cnn) {
        int64_t sizes[NB_MLP_MAX_LAYERS + 1];
        sizes[0] = 784;
        for (int i = 0; i < o->n_layers; i++) sizes[i + 1] = o->layers[i];
        sizes[o->n_layers + 1] = N_CLASSES;
        return nb_mlp_init(&m->mlp, p, "mlp", o->n_layers + 2, sizes, NB_ACT_RELU, o->dropout, &lo, rng);
    }
    nb_conv_opts co = nb_conv_defaults();
    co.padding[0] = co.padding[1] = 1;
    nb_layer_opts no_bias = lo;
    no_bias.no_bias = 1;
    nb_norm_opts bo = {.dtype = NB_F32};
    m->blocks = o->blocks;
    nb_status st = NB_OK;
    int64_t in = 1, side = 28;
    for (int k = 0; k < m->blocks && st == NB_OK; k++) {
        char cn[16], bn[16];
        snprintf(cn, sizeof cn, "conv%d", k + 1);
        snprintf(bn, sizeof bn, "bn%d", k + 1);
        st = nb_conv2d_init(&m->conv[k], p, cn, in, o->channels[k], 3, 3, &co, &no_bias, rng);
        if (st == NB_OK) st = nb_batch_norm2d_init(&m->bn[k], p, bn, o->channels[k], &bo);
        in = o->channels[k];
        side /= 2; /* 28 -> 14 -> 7 -> 3 */
    }
    if (st == NB_OK) st = nb_linear_init(&m->fc1, p, "fc1", in * side * side, o->hidden, &lo, rng);
    if (st == NB_OK) st = nb_linear_init(&m->fc2, p, "fc2", o->hidden, N_CLASSES, &lo, rng);
    return st;
}

/* Dropout of x's rows with the masks drawn for a whole batch of `global` rows, of which x holds rows
 * first.. : every process draws the same masks from the same stream and uses its rows, so N processes
 * make exactly the masks one process makes (run alone: first 0, global all of x, and the same masks as
 * nb_train_dropout and nb_train_dropout2d). x [B, F], or with channels x [B, C, H, W] whose channels
 * are dropped whole (torch.nn.Dropout2d). With x NULL only draws the masks of an empty part: c is then
 * F or C. */
static nb_tensor *dropout_rows(const model *m, nb_tensor *x, double p, int channels, int64_t c, int64_t first,
                               int64_t global)
{
    if (p <= 0 || !nb_params_training(m->params)) return x;
    nb_tensor *mask = channels ? nb_dropout_mask(NB_F32, NB_SHAPE(global, c, 1, 1), p, m->rng)
                               : nb_dropout_mask(NB_F32, NB_SHAPE(global, c), p, m->rng);
    return x ? nb_mul(x, nb_slice(mask, 0, first, first + nb_tensor_dim(x, 0), 1)) : NULL;
}

/* The logits of images [B, 28, 28], standardised with the data set's mean and deviation: the MLP
 * (nb_mlp's layers) sees them flattened to [B, 784], the CNN as [B, 1, 28, 28]. first and global:
 * where the rows sit in the global batch (dropout, in training); with images NULL only draws the
 * dropout masks of such a batch (an empty part of it). */
static nb_tensor *logits_of(const model *m, nb_tensor *images, int64_t first, int64_t global)
{
    const int64_t b = images ? nb_tensor_dim(images, 0) : 0;
    if (!m->cnn) {
        nb_tensor *x = images ? nb_affine(nb_reshape(images, NB_SHAPE(b, 784)), 1.0 / 0.3530, -0.2860 / 0.3530) : NULL;
        for (int i = 0; i < m->mlp.n_layers; i++) {
            if (x) x = nb_linear_forward(&m->mlp.layer[i], x);
            if (i + 1 == m->mlp.n_layers) break;
            if (x) x = nb_activate(x, m->mlp.act);
            x = dropout_rows(m, x, m->dropout, 0, m->mlp.layer[i].out, first, global);
        }
        return x;
    }
    nb_tensor *x = images ? nb_affine(nb_reshape(images, NB_SHAPE(b, 1, 28, 28)), 1.0 / 0.3530, -0.2860 / 0.3530)
                          : NULL;
    /* [B, 1, 28, 28] -> [B, c1, 14, 14] -> [B, c2, 7, 7] (-> [B, c3, 3, 3]); channel dropout after the
     * first block */
    for (int k = 0; k < m->blocks; k++) {
        if (x) x = nb_batch_norm_relu_pool_forward(&m->bn[k], nb_conv_forward(&m->conv[k], x), 2, 2);
        if (k == 0) x = dropout_rows(m, x, m->dropout / 3, 1, m->conv[0].out, first, global);
    }
    if (x) x = nb_flatten(x, 1, -1);
    x = dropout_rows(m, x, m->dropout, 0, m->fc1.in, first, global);
    if (x) x = nb_relu(nb_linear_forward(&m->fc1, x));
    x = dropout_rows(m, x, m->dropout, 0, m->fc1.out, first, global);
    return x ? nb_linear_forward(&m->fc2, x) : NULL;
}

/* A training batch with each image mirrored left-right with probability 1/2 (clothes and shoes look
 * alike both ways): a new tensor on the tape. The coins are tossed for the whole batch of `global`
 * images, of which images holds first.. (as the dropout masks); images NULL: only toss them. */
static nb_tensor *augment(nb_tensor *images, nb_rng *rng, int64_t first, int64_t global)
{
    const int64_t b = images ? nb_tensor_dim(images, 0) : 0;
    const float *src = images ? nb_tensor_cdata(images) : NULL;
    float *dst = images ? nb_scratch((size_t)b * 784 * sizeof(float)) : NULL;
    if (images && !dst) return NULL;
    for (int64_t g = 0; g < global; g++) {
        const int flip = (int)nb_rng_below(rng, 2);
        const int64_t i = g - first;
        if (i < 0 || i >= b) continue;
        const float *s = src + i * 784;
        float *d = dst + i * 784;
        for (int r = 0; r < 28; r++)
            for (int c = 0; c < 28; c++) d[r * 28 + c] = s[r * 28 + (flip ? 27 - c : c)];
    }
    return images ? nb_constant(NB_F32, NB_SHAPE(b, 28, 28), dst) : NULL;
}

/* The number of correct predictions; each is also counted in confusion and written to out (both may
 * be NULL). */
static int64_t correct_of(nb_tensor *logits, nb_tensor *labels, int64_t *confusion, FILE *out)
{
    nb_tensor *pred = nb_argmax(logits, 1, 0);
    if (!pred) return -1;
    const int64_t *p = nb_tensor_cdata(pred), *y = nb_tensor_cdata(labels);
    int64_t c = 0;
    for (int64_t i = 0; i < nb_tensor_numel(pred); i++) {
        c += p[i] == y[i];
        if (confusion) confusion[y[i] * N_CLASSES + p[i]]++;
        if (out) fprintf(out, "%lld\n", (long long)p[i]);
    }
    return c;
}

/* Sum values over the processes of a distributed run (nothing to do when run alone). */
static int sum_over_ranks(nb_dist *dist, double *v, int n)
{
    return !dist || nb_dist_allreduce(dist, v, n, NB_DIST_SUM) == NB_OK;
}

/* Loss and accuracy of the model over a data set, in evaluation mode without recording (predictions
 * written to pred unless it is NULL; only when run alone). In a distributed run each process evaluates
 * its part of every batch and the sums are added up, so that every process gets the same figures. */
static int evaluate(const model *m, nb_params *params, const nb_dataset *d, nb_tape *tape, nb_dist *dist,
                    double *loss, double *acc, int64_t *confusion, FILE *pred)
{
    nb_params_set_training(params, 0);
    /* the CNN's activations are 32x larger: batches of 50 keep the evaluation's passes over them in cache
     * (the same predictions as larger ones) */
    nb_batches *b = nb_batches_new(d, m->cnn ? 50 : 1000, 0, 0, 0);
    if (!b || nb_batches_set_shard(b, nb_dist_rank(dist), nb_dist_size(dist)) != NB_OK) {
        nb_batches_free(b);
        return 0;
    }
    double total = 0;
    int64_t correct = 0, n = 0;
    nb_tensor *x, *y;
    nb_tape_begin(tape);
    nb_no_grad_begin();
    int r;
    while ((r = nb_batches_next(b, &x, &y)) == 1) {
        if (nb_tensor_dim(x, 0) == 0) continue; /* an empty part of a short last batch */
        nb_tensor *logits = logits_of(m, x, 0, nb_tensor_dim(x, 0));
        if (m->tta && logits) /* images [B, 28, 28]: mirrored along dim 2 */
            logits = nb_mul_scalar(nb_add(logits, logits_of(m, nb_flip(x, 1, (int[]){2}), 0, nb_tensor_dim(x, 0))), 0.5);
        nb_tensor *l = nb_cross_entropy(logits, y, &(nb_ce_opts){.reduction = NB_REDUCE_SUM});
        int64_t c = correct_of(logits, y, confusion, pred);
        if (!l || c < 0) {
            r = -1;
            break;
        }
        total += nb_tensor_item(l);
        correct += c;
        n += nb_tensor_dim(x, 0);
        nb_tape_reset(tape);
    }
    nb_no_grad_end();
    nb_tape_end(tape);
    nb_tape_reset(tape);
    nb_batches_free(b);
    nb_params_set_training(params, 1);
    if (r < 0) return 0;
    double sums[3 + N_CLASSES * N_CLASSES] = {total, (double)correct, (double)n};
    for (int i = 0; confusion && i < N_CLASSES * N_CLASSES; i++) sums[3 + i] = (double)confusion[i];
    if (!sum_over_ranks(dist, sums, confusion ? 3 + N_CLASSES * N_CLASSES : 3)) return 0;
    for (int i = 0; confusion && i < N_CLASSES * N_CLASSES; i++) confusion[i] = (int64_t)sums[3 + i];
    *loss = sums[0] / sums[2];
    *acc = sums[1] / sums[2];
    return 1;
}

/* The graph of one step's loss as Graphviz DOT, with the leaves named. */
static int write_graph(const char *path, nb_tape *tape, nb_tensor *images, nb_tensor *loss)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        nb_error_set(NB_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        return 0;
    }
    nb_tensor_set_name(images, "images");
    nb_status st = nb_tape_write_dot(tape, loss, f);
    if (fclose(f) != 0 && st == NB_OK) {
        nb_error_set(NB_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        return 0;
    }
    return st == NB_OK;
}

static void print_confusion(const int64_t *m)
{
    printf("\nconfusion matrix (rows: true class, columns: predicted)\n%13s", "");
    for (int j = 0; j < N_CLASSES; j++) printf("%6d", j);
    printf("\n");
    for (int i = 0; i < N_CLASSES; i++) {
        int64_t row = 0;
        for (int j = 0; j < N_CLASSES; j++) row += m[i * N_CLASSES + j];
        printf("%d %-11s", i, class_names[i]);
        for (int j = 0; j < N_CLASSES; j++) printf("%6lld", (long long)m[i * N_CLASSES + j]);
        printf("   %5.1f%%\n", row ? 100.0 * (double)m[i * N_CLASSES + i] / (double)row : 0.0);
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line per epoch also when piped to a file */
    options o;
    int pr = parse_args(argc, argv, &o);
    if (pr) return pr == 1 ? 0 : 2;
    /* started by mpirun: one of several processes (without, nabla/dist.h is not used at all) */
    nb_dist *dist = NULL;
    if (nb_dist_launched() && nb_dist_init(&argc, &argv, &dist) != NB_OK) {
        fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
        return 1;
    }
    int rank = nb_dist_rank(dist), nranks = nb_dist_size(dist);
    if (o.threads) nb_set_num_threads(o.threads);
    else if (nb_dist_local_size(dist) > 1) { /* share this machine's cores between its processes */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        nb_set_num_threads(cores > nb_dist_local_size(dist) ? (int)(cores / nb_dist_local_size(dist)) : 1);
    }
    /* Adam's moments of weights that stop getting gradient decay into denormal floats (half of fc1's in
     * the CNN), which the CPU computes with slowly: flush them to zero, as torch.set_flush_denormal */
    if (o.cnn && !o.keep_denormals) nb_set_flush_denormal(1);
    if (rank > 0) o.quiet = 1; /* rank 0 speaks for all */
    int tty = isatty(STDOUT_FILENO) && !o.quiet;

    nb_tensor *train_x = NULL, *train_y = NULL, *test_x = NULL, *test_y = NULL;
    if (!load_split(o.data_dir, "train", &train_x, &train_y) || !load_split(o.data_dir, "t10k", &test_x, &test_y)) {
        nb_tensor_free(train_x);
        nb_tensor_free(train_y);
        nb_tensor_free(test_x);
        nb_tensor_free(test_y);
        return 1;
    }
    if (o.train_limit && o.train_limit < nb_tensor_dim(train_x, 0)) {
        /* keep the first rows: a smaller leaf with copies of them */
        nb_tensor *sx = nb_tensor_from_data(NB_F32, NB_SHAPE(o.train_limit, 28, 28), nb_tensor_cdata(train_x));
        nb_tensor *sy = nb_tensor_from_data(NB_I64, NB_SHAPE(o.train_limit), nb_tensor_cdata(train_y));
        nb_tensor_free(train_x);
        nb_tensor_free(train_y);
        train_x = sx;
        train_y = sy;
    }
    nb_dataset *all = nb_dataset_new(train_x, train_y), *test = nb_dataset_new(test_x, test_y);
    nb_dataset *train = NULL, *val = NULL;
    if (!all || !test || nb_dataset_split(all, 0.1, o.seed, &train, &val) != NB_OK) {
        fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
        return 1;
    }

    nb_rng rng, aug_rng;
    nb_rng_seed(&rng, o.seed);
    nb_rng_seed(&aug_rng, o.seed + 2);
    nb_params *params = nb_params_new();
    model mlp;
    if (!params || model_init(&mlp, params, &o, &rng) != NB_OK) {
        fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
        return 1;
    }
    /* every process made the same initial weights from the same seed, and goes on drawing the same
     * dropout masks (mlp_forward) */
    nb_tape *tape = nb_tape_new();
    char ckpt[1024], csv_path[1024];
    const char *stem = o.cnn ? "fashion_cnn" : "fashion_mnist";
    snprintf(ckpt, sizeof ckpt, "%s/%s.safetensors", o.out_dir, stem);
    snprintf(csv_path, sizeof csv_path, "%s/%s.csv", o.out_dir, stem);
    int status = 0;

    if (o.eval_path) {
        nb_status st = dist ? nb_dist_checkpoint_load(dist, o.eval_path, params, NULL, NULL)
                            : nb_checkpoint_load(o.eval_path, params, NULL, NULL);
        if (st != NB_OK) {
            fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
            status = 1;
        } else {
            int64_t confusion[N_CLASSES * N_CLASSES] = {0};
            double loss, acc;
            FILE *pred = o.predictions_path && !dist ? fopen(o.predictions_path, "w") : NULL;
            if (o.predictions_path && dist) {
                fprintf(stderr, "fashion_mnist: --predictions needs a run alone (not under mpirun)\n");
                status = 1;
            } else if (o.predictions_path && !pred) {
                fprintf(stderr, "fashion_mnist: cannot write %s: %s\n", o.predictions_path, strerror(errno));
                status = 1;
            } else if (!evaluate(&mlp, params, test, tape, dist, &loss, &acc, confusion, pred)) {
                fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
                status = 1;
            } else if (rank == 0) {
                printf("%s: test loss %.4f, test accuracy %.2f%%\n", o.eval_path, loss, 100 * acc);
                print_confusion(confusion);
            }
            if (pred && fclose(pred) != 0 && status == 0) {
                fprintf(stderr, "fashion_mnist: cannot write %s: %s\n", o.predictions_path, strerror(errno));
                status = 1;
            }
        }
        goto done;
    }

    /* rank 0 writes the metrics and the checkpoint */
    FILE *csv = NULL;
    if (rank == 0) {
        if (mkdir(o.out_dir, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "fashion_mnist: cannot create %s: %s\n", o.out_dir, strerror(errno));
            status = 1;
        } else if (!(csv = fopen(csv_path, "w"))) {
            fprintf(stderr, "fashion_mnist: cannot write %s: %s\n", csv_path, strerror(errno));
            status = 1;
        } else {
            fprintf(csv, "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n");
        }
    }
    if (dist && nb_dist_agree(dist, status ? NB_ERR_IO : NB_OK) != NB_OK) status = 1; /* all stop together */
    if (status) goto done;

    nb_optim_opts oo = nb_optim_defaults(NB_ADAMW);
    oo.lr = o.lr;
    oo.weight_decay = o.weight_decay;
    nb_optim *opt = nb_optim_new(NB_ADAMW, params, &oo);
    nb_sched_opts so = nb_sched_defaults(NB_SCHED_COSINE);
    so.t_max = o.epochs;
    so.warmup = o.epochs > 4 ? 1 : 0;
    so.warmup_start = 0.2;
    so.eta_min = o.lr * 0.01;
    nb_sched *sched = opt ? nb_sched_new(NB_SCHED_COSINE, opt, &so) : NULL;
    nb_early_stop *es = nb_early_stop_new(params, o.patience, 0.0, 1); /* maximise the validation accuracy */
    /* every process shuffles alike and takes its part of each batch of o.batch images */
    nb_batches *batches = nb_batches_new(train, o.batch, 1, 0, o.seed + 1);
    if (batches && nb_batches_set_shard(batches, rank, nranks) != NB_OK) {
        nb_batches_free(batches);
        batches = NULL;
    }
    /* averages the gradients over the processes during backward (checks that they start alike) */
    nb_ddp *ddp = dist ? nb_ddp_new(dist, params, NULL) : NULL;
    if (!opt || !sched || !es || !batches || (dist && !ddp)) {
        fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
        status = 1;
        goto train_done;
    }
    if (!o.quiet)
        printf("Fashion-MNIST: %lld train / %lld validation / %lld test images; ", (long long)nb_dataset_size(train),
               (long long)nb_dataset_size(val), (long long)nb_dataset_size(test));
    for (int k = 0; k < o.blocks && !o.quiet && o.cnn; k++) printf("%sconv%lld-bn-relu-pool", k ? ", " : "CNN ",
                                                                    (long long)o.channels[k]);
    if (!o.quiet && o.cnn) printf(", fc%lld, fc10", (long long)o.hidden);
    if (!o.quiet && !o.cnn) printf("MLP 784-");
    for (int i = 0; i < o.n_layers && !o.quiet && !o.cnn; i++) printf("%lld-", (long long)o.layers[i]);
    if (!o.quiet && !o.cnn) printf("10");
    if (!o.quiet)
        printf(" (%lld parameters), AdamW, dropout %g%s%s\n", (long long)nb_params_numel(params), o.dropout,
               o.augment ? ", random flips" : "", o.cnn && o.tta ? ", tested with mirror images" : "");
    if (!o.quiet && dist)
        printf("%d processes (MPI), each %lld of every %lld images in a batch, %d BLAS thread%s each\n", nranks,
               (long long)(o.batch / nranks), (long long)o.batch, nb_num_threads(), nb_num_threads() > 1 ? "s" : "");

    double t_start = now(), cpu_start = cpu_seconds();
    int64_t per_epoch = nb_batches_per_epoch(batches);
    for (int epoch = 1; epoch <= o.epochs; epoch++) {
        double t0 = now(), loss_sum = 0;
        int64_t correct = 0, seen = 0, done = 0;
        nb_tensor *x, *y;
        int r;
        nb_tape_begin(tape);
        while ((r = nb_batches_next(batches, &x, &y)) == 1) {
            int64_t bsz = nb_tensor_dim(x, 0);
            /* with several processes: weight each one's mean loss by its rows, so that the average of
             * the gradients is the mean over the whole batch even when parts differ by a row */
            if (ddp && nb_ddp_set_samples(ddp, (double)bsz) != NB_OK) {
                r = -1;
                break;
            }
            nb_tensor *logits = NULL, *loss = NULL;
            const int64_t first = nb_batches_shard_offset(batches), global = nb_batches_global_count(batches);
            /* (a part is empty only when a batch has fewer images than processes: it still tosses the
             * batch's coins and draws its dropout masks, to keep the streams in step) */
            if (bsz == 0) {
                if (o.augment) augment(NULL, &aug_rng, first, global);
                logits_of(&mlp, NULL, first, global);
            }
            if (bsz > 0) {
                if (o.augment) x = augment(x, &aug_rng, first, global);
                logits = logits_of(&mlp, x, first, global);
                loss = nb_cross_entropy(logits, y, &(nb_ce_opts){.label_smoothing = o.smoothing});
                if (o.graph_path && rank == 0 && epoch == 1 && done == 0 && loss && !write_graph(o.graph_path, tape, x, loss)) {
                    r = -1;
                    break;
                }
                if (!loss || nb_backward(loss, NULL, 0) != NB_OK) {
                    r = -1;
                    break;
                }
            }
            if ((ddp && nb_ddp_finish(ddp) != NB_OK) || nb_optim_step(opt) != NB_OK) {
                r = -1;
                break;
            }
            nb_optim_zero_grad(opt);
            if (bsz > 0) {
                /* report the plain cross-entropy (the objective adds smoothing), comparable with validation */
                nb_no_grad_begin();
                nb_tensor *plain = o.smoothing > 0 ? nb_cross_entropy(logits, y, NULL) : loss;
                nb_no_grad_end();
                loss_sum += nb_tensor_item(plain) * (double)bsz;
                correct += correct_of(logits, y, NULL, NULL);
                seen += bsz;
            }
            done++;
            nb_tape_reset(tape);
            if (tty && (done % 20 == 0 || done == per_epoch)) {
                double dt = now() - t0;
                progress(epoch, o.epochs, done, per_epoch,
                         "%4lld/%lld  loss %.4f  acc %5.2f%%  %6.0f samples/s  ETA %3.0fs ", (long long)done,
                         (long long)per_epoch, loss_sum / (double)seen, 100 * ((double)correct / (double)seen),
                         (double)seen / dt, dt / (double)done * (double)(per_epoch - done));
            }
        }
        nb_tape_end(tape);
        nb_tape_reset(tape);
        /* a process that failed ends the whole job: the others would wait for it */
        if (r < 0 && dist) nb_dist_abort(dist, nb_error_message());
        if (r < 0) {
            fprintf(stderr, "\nfashion_mnist: %s\n", nb_error_message());
            status = 1;
            break;
        }
        double sums[3] = {loss_sum, (double)correct, (double)seen}; /* the training figures of all processes */
        double val_loss, val_acc;
        /* the CNN's batch-norm running statistics are each process's own: take rank 0's (as PyTorch's
         * DistributedDataParallel does with its buffers), so that all evaluate the same model */
        if (dist && o.cnn && nb_dist_broadcast_params(dist, params, 0) != NB_OK) {
            fprintf(stderr, "\nfashion_mnist: %s\n", nb_error_message());
            status = 1;
            break;
        }
        /* validation (early stopping, the best weights) with the images alone: mirror images double its
         * cost and are kept for the test */
        const int tta = mlp.tta;
        mlp.tta = 0;
        const int val_ok = sum_over_ranks(dist, sums, 3) && evaluate(&mlp, params, val, tape, dist, &val_loss, &val_acc, NULL, NULL);
        mlp.tta = tta;
        if (!val_ok) {
            fprintf(stderr, "\nfashion_mnist: %s\n", nb_error_message());
            status = 1;
            break;
        }
        double lr = nb_optim_lr(opt), secs = now() - t0;
        if (csv) {
            fprintf(csv, "%d,%.6f,%.6f,%.6f,%.6f,%.6g,%.3f\n", epoch, sums[0] / sums[2], sums[1] / sums[2], val_loss,
                    val_acc, lr, secs);
            fflush(csv);
        }
        /* the same validation figures everywhere: every process takes the same decisions */
        int stop = nb_early_stop_update(es, val_acc);
        int best = nb_early_stop_best_epoch(es) == epoch - 1;
        nb_status saved = !best ? NB_OK
                          : dist ? nb_dist_checkpoint_save(dist, ckpt, params, opt, epoch)
                                 : nb_checkpoint_save(ckpt, params, opt, epoch);
        if (saved != NB_OK) {
            fprintf(stderr, "\nfashion_mnist: %s\n", nb_error_message());
            status = 1;
            break;
        }
        if (!o.quiet)
            printf("%sepoch %2d/%d  train loss %.4f acc %5.2f%%  val loss %.4f acc %5.2f%%  lr %.2e  %.1fs%s\n",
                   tty ? "\r" : "", epoch, o.epochs, sums[0] / sums[2], 100.0 * sums[1] / sums[2],
                   val_loss, 100 * val_acc, lr, secs, best ? "  *" : "   ");
        if (stop) {
            if (!o.quiet) printf("early stop: no better validation accuracy for %d epochs\n", o.patience);
            break;
        }
        nb_sched_step(sched, val_loss);
    }
    if (status == 0) {
        nb_early_stop_restore(es);
        int64_t confusion[N_CLASSES * N_CLASSES] = {0};
        double test_loss, test_acc;
        if (!evaluate(&mlp, params, test, tape, dist, &test_loss, &test_acc, confusion, NULL)) {
            fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
            status = 1;
        } else if (rank == 0) {
            printf("best epoch %lld (validation accuracy %.2f%%); test loss %.4f, test accuracy %.2f%%; %.1fs in all "
                   "(%.1fs of CPU)\n", (long long)nb_early_stop_best_epoch(es) + 1, 100 * nb_early_stop_best(es), test_loss,
                   100 * test_acc, now() - t_start, cpu_seconds() - cpu_start);
            printf("checkpoint %s, metrics %s\n", ckpt, csv_path);
        }
        /* with mirror images the accuracy of the images alone too, for comparison */
        double plain_loss, plain_acc;
        mlp.tta = 0;
        if (status == 0 && o.cnn && o.tta &&
            !evaluate(&mlp, params, test, tape, dist, &plain_loss, &plain_acc, NULL, NULL)) {
            fprintf(stderr, "fashion_mnist: %s\n", nb_error_message());
            status = 1;
        } else if (status == 0 && o.cnn && o.tta && rank == 0)
            printf("test accuracy of the images alone (--no-tta): %.2f%%\n", 100 * plain_acc);
        if (status == 0 && rank == 0 && !o.quiet) print_confusion(confusion);
    }
train_done:
    if (csv) fclose(csv);
    nb_ddp_free(ddp);
    nb_batches_free(batches);
    nb_early_stop_free(es);
    nb_sched_free(sched);
    nb_optim_free(opt);
done:
    nb_tape_free(tape);
    nb_params_free(params);
    nb_dataset_free(val);
    nb_dataset_free(train);
    nb_dataset_free(all);
    nb_dataset_free(test);
    nb_dist_free(dist);
    return status;
}
