/* A BENCHMARK BASELINE, not library code: the same Fashion-MNIST training as bench_mnist.c written
 * by hand in plain C with OpenBLAS, the way a small C engine such as KANN does it (no autodiff: the
 * MLP's forward and backward are written out for this network only). MLP 784-256-128-10, ReLU,
 * dropout 0.2 after each hidden layer (a uniform draw per element from a xorshift generator),
 * softmax cross-entropy, Adam (lr 1e-3, betas 0.9 / 0.999, eps 1e-8), batch 128, 5 epochs over the
 * 60000 training images shuffled each epoch. Matrix products are cblas_sgemm (one thread unless
 * OPENBLAS_NUM_THREADS or --threads says otherwise); everything else is plain loops, compiled with the
 * project's flags. nabla's IDX reader loads the data (not timed); nothing else of nabla is used.
 *
 * Prints each epoch's wall time, the process's CPU time and the test accuracy (--json: one line for
 * bench/mnist.py). */
#define _POSIX_C_SOURCE 200809L

#include "bench.h"

#include <cblas.h>
#include <math.h>
#include <nabla.h>
#include <stdint.h>
#include <stdlib.h>

void openblas_set_num_threads(int num_threads);

enum { IN = 784, H1 = 256, H2 = 128, OUT = 10, NL = 3 };
static const int sizes[NL + 1] = {IN, H1, H2, OUT};

typedef struct layer {
    int in, out;
    float *w, *b;       /* [out, in], [out] */
    float *gw, *gb;     /* gradients */
    float *mw, *vw, *mb, *vb; /* Adam moments */
} layer;

typedef struct net {
    layer l[NL];
    int batch;
    float *h[NL + 1];   /* h[0] the input batch, h[l] the output of layer l after relu and dropout */
    float *z[NL];       /* pre-activations (z[NL-1]: logits, then probabilities) */
    float *mask[NL];    /* dropout factors of hidden layers: 0 or 1 / (1 - p) */
    float *dz, *dh;     /* scratch: the gradient of a pre-activation and of a layer's input */
} net;

/* xorshift64*: a plain generator, one call per random number (as KANN's kad_drand) */
static uint64_t rng_state = 88172645463325252ull;
static inline uint64_t rng_u64(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static inline double rng_uniform(void) { return (double)(rng_u64() >> 11) * (1.0 / 9007199254740992.0); }

static float *alloc(size_t n, int zero)
{
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_mnist_plain: out of memory\n");
        exit(1);
    }
    if (zero) memset(p, 0, n * sizeof *p);
    return p;
}

static void net_init(net *n, int batch)
{
    n->batch = batch;
    int widest = IN;
    for (int i = 0; i < NL; i++) {
        layer *l = &n->l[i];
        l->in = sizes[i];
        l->out = sizes[i + 1];
        size_t nw = (size_t)l->in * l->out;
        l->w = alloc(nw, 0);
        l->b = alloc(l->out, 0);
        /* PyTorch's default: uniform in +-1/sqrt(in) */
        float k = 1.0f / sqrtf((float)l->in);
        for (size_t j = 0; j < nw; j++) l->w[j] = (float)(2 * rng_uniform() - 1) * k;
        for (int j = 0; j < l->out; j++) l->b[j] = (float)(2 * rng_uniform() - 1) * k;
        l->gw = alloc(nw, 1);
        l->gb = alloc(l->out, 1);
        l->mw = alloc(nw, 1);
        l->vw = alloc(nw, 1);
        l->mb = alloc(l->out, 1);
        l->vb = alloc(l->out, 1);
        n->z[i] = alloc((size_t)batch * l->out, 0);
        n->mask[i] = alloc((size_t)batch * l->out, 0);
        n->h[i + 1] = alloc((size_t)batch * l->out, 0);
    }
    n->h[0] = alloc((size_t)batch * IN, 0);
    n->dz = alloc((size_t)batch * widest, 0);
    n->dh = alloc((size_t)batch * widest, 0);
}

/* Forward of a batch of B rows already in h[0]; returns the mean loss; probabilities in z[NL-1]. */
static double forward(net *n, int B, const int64_t *labels, double p, int train)
{
    float keep = (float)(1.0 / (1.0 - p));
    for (int i = 0; i < NL; i++) {
        layer *l = &n->l[i];
        float *z = n->z[i];
        /* z = h W^T + b */
        for (int r = 0; r < B; r++) memcpy(z + (size_t)r * l->out, l->b, (size_t)l->out * sizeof *z);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, l->out, l->in, 1.0f, n->h[i], l->in, l->w, l->in, 1.0f,
                    z, l->out);
        if (i + 1 < NL) {
            float *h = n->h[i + 1], *m = n->mask[i];
            for (int j = 0; j < B * l->out; j++) {
                float a = z[j] > 0 ? z[j] : 0;
                m[j] = train && p > 0 ? (rng_uniform() >= p ? keep : 0.0f) : 1.0f;
                h[j] = a * m[j];
            }
        }
    }
    /* softmax cross-entropy, row by row */
    float *z = n->z[NL - 1];
    double loss = 0;
    for (int r = 0; r < B; r++) {
        float *row = z + (size_t)r * OUT;
        float mx = row[0];
        for (int k = 1; k < OUT; k++) mx = row[k] > mx ? row[k] : mx;
        double s = 0;
        for (int k = 0; k < OUT; k++) {
            row[k] = expf(row[k] - mx);
            s += row[k];
        }
        for (int k = 0; k < OUT; k++) row[k] = (float)(row[k] / s);
        loss -= log(row[labels[r]] > 1e-30f ? row[labels[r]] : 1e-30f);
    }
    return loss / B;
}

/* Backward of the mean loss into the gradients (overwritten). */
static void backward(net *n, int B, const int64_t *labels)
{
    float *dz = n->dz, *dh = n->dh;
    /* d logits = (softmax - one hot) / B */
    const float *prob = n->z[NL - 1];
    for (int r = 0; r < B; r++)
        for (int k = 0; k < OUT; k++) dz[r * OUT + k] = (prob[r * OUT + k] - (k == labels[r])) / (float)B;
    for (int i = NL - 1; i >= 0; i--) {
        layer *l = &n->l[i];
        /* dW = dz^T h, db = column sums of dz */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, l->out, l->in, B, 1.0f, dz, l->out, n->h[i], l->in, 0.0f,
                    l->gw, l->in);
        for (int k = 0; k < l->out; k++) l->gb[k] = 0;
        for (int r = 0; r < B; r++)
            for (int k = 0; k < l->out; k++) l->gb[k] += dz[r * l->out + k];
        if (i == 0) break;
        /* dh = dz W, then through dropout and relu of the layer below */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, l->in, l->out, 1.0f, dz, l->out, l->w, l->in, 0.0f, dh,
                    l->in);
        const float *zb = n->z[i - 1], *m = n->mask[i - 1];
        for (int j = 0; j < B * l->in; j++) dz[j] = zb[j] > 0 ? dh[j] * m[j] : 0.0f;
    }
}

static void adam(float *p, const float *g, float *m, float *v, size_t n, double lr, int t)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float c1 = (float)(1 - pow(0.9, t)), c2 = (float)sqrt(1 - pow(0.999, t)), step = (float)lr / c1;
    for (size_t j = 0; j < n; j++) {
        m[j] = b1 * m[j] + (1 - b1) * g[j];
        v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
        p[j] -= step * m[j] / (sqrtf(v[j]) / c2 + eps);
    }
}

typedef struct options {
    bench_opts c;
    const char *data;
    long epochs, batch, threads;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--data DIR] [--epochs N] [--batch B] [--threads N] [--json]\n"
            "  The plain C + OpenBLAS baseline of bench_mnist (MLP 784-256-128-10, dropout 0.2, Adam).\n",
            prog);
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    if (!strcmp(name, "--data")) {
        *want = "a folder";
        if (!v) return BENCH_ARG_BAD;
        o->data = v;
        return BENCH_ARG_VALUE;
    }
    if (!strcmp(name, "--epochs")) return bench_long(v, 1, 1000, &o->epochs);
    if (!strcmp(name, "--batch")) return bench_long(v, 1, 60000, &o->batch);
    if (!strcmp(name, "--threads")) return bench_long(v, 1, 1024, &o->threads);
    return BENCH_ARG_UNKNOWN;
}

static int load(const char *dir, const char *split, nb_tensor **x, nb_tensor **y)
{
    char ip[1024], lp[1024];
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", dir, split);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    return nb_idx_read(ip, NB_F32, 1.0 / 255.0, x) == NB_OK && nb_idx_read(lp, NB_I64, 1.0, y) == NB_OK;
}

/* rows idx[0..B) of images into h (normalised), their labels into lab */
static void gather(net *n, const float *images, const int64_t *labels, const int64_t *idx, int B, int64_t *lab)
{
    for (int r = 0; r < B; r++) {
        const float *src = images + (size_t)idx[r] * IN;
        float *dst = n->h[0] + (size_t)r * IN;
        for (int j = 0; j < IN; j++) dst[j] = (src[j] - 0.2860f) / 0.3530f;
        lab[r] = labels[idx[r]];
    }
}

int main(int argc, char **argv)
{
    options o = {.c = {.repeats = 1, .max_repeats = 1, .dtype = NB_F32}, .data = "/usr/share/datasets/fashion-mnist",
                 .epochs = 5, .batch = 128};
    int st = bench_parse_args(argc, argv, "bench_mnist_plain", usage, &o.c, own_option, &o);
    if (st) return st == 1 ? 0 : 2;
    if (o.threads) openblas_set_num_threads((int)o.threads);
    nb_tensor *tx = NULL, *ty = NULL, *vx = NULL, *vy = NULL;
    if (!load(o.data, "train", &tx, &ty) || !load(o.data, "t10k", &vx, &vy)) {
        fprintf(stderr, "bench_mnist_plain: %s\n", nb_error_message());
        return 1;
    }
    const float *images = nb_tensor_cdata(tx), *test_images = nb_tensor_cdata(vx);
    const int64_t *labels = nb_tensor_cdata(ty), *test_labels = nb_tensor_cdata(vy);
    const int64_t N = nb_tensor_dim(tx, 0), NT = nb_tensor_dim(vx, 0);
    const int B = (int)o.batch;
    const double p = 0.2, lr = 1e-3;

    net n;
    net_init(&n, B > 1000 ? B : 1000);
    int64_t *order = malloc((size_t)N * sizeof *order), *lab = malloc((size_t)(B > 1000 ? B : 1000) * sizeof *lab);
    for (int64_t i = 0; i < N; i++) order[i] = i;
    double epoch_ms[1000], last_loss = 0;
    int t = 0;
    double cpu0 = bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (long e = 0; e < o.epochs; e++) {
        double te = bench_now_ns();
        for (int64_t i = N - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)(rng_u64() % (uint64_t)(i + 1)), tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        for (int64_t s = 0; s < N; s += B) {
            int b = (int)(N - s < B ? N - s : B);
            gather(&n, images, labels, order + s, b, lab);
            last_loss = forward(&n, b, lab, p, 1);
            backward(&n, b, lab);
            t++;
            for (int i = 0; i < NL; i++) {
                layer *l = &n.l[i];
                adam(l->w, l->gw, l->mw, l->vw, (size_t)l->in * l->out, lr, t);
                adam(l->b, l->gb, l->mb, l->vb, (size_t)l->out, lr, t);
            }
        }
        epoch_ms[e] = (bench_now_ns() - te) / 1e6;
    }
    double cpu_ms = (bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / 1e6;
    /* test accuracy */
    int64_t correct = 0, idx[1000];
    for (int64_t s = 0; s < NT; s += 1000) {
        int b = (int)(NT - s < 1000 ? NT - s : 1000);
        for (int r = 0; r < b; r++) idx[r] = s + r;
        gather(&n, test_images, test_labels, idx, b, lab);
        forward(&n, b, lab, p, 0);
        for (int r = 0; r < b; r++) {
            const float *row = n.z[NL - 1] + (size_t)r * OUT;
            int best = 0;
            for (int k = 1; k < OUT; k++) best = row[k] > row[best] ? k : best;
            correct += best == lab[r];
        }
    }
    double total = 0, acc = (double)correct / (double)NT;
    for (long e = 0; e < o.epochs; e++) total += epoch_ms[e];
    if (o.c.json) {
        bench_json_begin("mnist");
        bench_json_str("impl", "plain C");
        bench_json_long("threads", o.threads ? o.threads : 0);
        bench_json_long("epochs", o.epochs);
        bench_json_long("batch", o.batch);
        bench_json_fixed("train_ms", 2, total);
        bench_json_fixed("cpu_ms", 2, cpu_ms);
        printf(", \"epoch_ms\": [");
        for (long e = 0; e < o.epochs; e++) printf("%s%.2f", e ? ", " : "", epoch_ms[e]);
        printf("]");
        bench_json_exact("last_loss", last_loss);
        bench_json_exact("test_acc", acc);
        bench_json_end();
    } else {
        printf("plain C + OpenBLAS, Fashion-MNIST MLP, %ld epochs of batch %ld\n", o.epochs, o.batch);
        for (long e = 0; e < o.epochs; e++) printf("  epoch %ld  %8.1f ms\n", e + 1, epoch_ms[e]);
        printf("  training %.1f ms wall, %.1f ms CPU; last loss %.4f; test accuracy %.2f%%\n", total, cpu_ms, last_loss,
               100 * acc);
    }
    free(order);
    free(lab);
    nb_tensor_free(tx);
    nb_tensor_free(ty);
    nb_tensor_free(vx);
    nb_tensor_free(vy);
    return 0;
}
