/* Convolutional networks at CNN-typical sizes, in float32 by default:
 *
 *   --case conv  one conv2d layer (k x k kernel, padding k / 2, bias) on x [N, C, H, H]: forward and
 *                backward of sum(y), the input's gradient only when C > 1 (a first layer's input is
 *                data); and, for the same shapes, the matrix products alone (the "sgemm limit": the
 *                three products of an im2col convolution over the whole batch, [O, K] x [K, N P],
 *                [O, N P] x [N P, K] and [K, O] x [O, N P], K = C k k, P = Ho Wo, timed by themselves);
 *   --case cnn   one training step of examples/fashion_mnist's CNN (--model cnn; its defaults unless
 *                --channels, --hidden, --dropout say otherwise): conv-bn-relu-pool blocks (3x3 padding 1
 *                without bias, batch norm, ReLU, 2x2 max pooling), channel dropout p/3 after the first,
 *                dropout p on the flattened features and after fc1, fc2 to 10 classes, label smoothing
 *                0.1, AdamW lr 2e-3 weight decay 5e-4, on a batch of images [N, 1, 28, 28].
 *
 * Prints median milliseconds per pass over R passes in wall time and in this thread's CPU time.
 * bench/conv.py runs the same workloads in PyTorch and compares. Weights and inputs are closed forms
 * of the flat index j that conv.py reproduces (k = 1/sqrt(fan_in)):
 *     conv weights  k sin(0.7 j + 0.1)    biases  k sin(0.9 j + 0.3)    x  sin(0.37 j + 0.5)
 *     fc weights    k sin(1.3 j + 0.2)    labels  j mod 10
 * so that both sides compute the same function: the conv case reports sum(y) and the sums of |grad|,
 * the cnn case the loss of the first batch with dropout off (batch norm in training mode). */
#define _POSIX_C_SOURCE 200809L

#include "bench.h"

#include <nabla.h>

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#define MAX_DIM 100000L
#define MAX_REPEATS 100000L

typedef struct options {
    bench_opts c; /* --repeats, --warmup, --warmup-ms, --dtype, --json */
    int cnn;      /* --case cnn */
    long batch, in, out, size, kernel;
    long channels[3], blocks, hidden; /* cnn */
    double dropout;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--case conv|cnn] [--batch N] [--in C] [--out O] [--size H] [--kernel K]\n"
            "          [--repeats R] [--warmup W] [--warmup-ms MS] [--dtype f32|f64] [--json]\n"
            "  conv: one conv2d layer on x [N, C, H, H] (kernel K, padding K/2), forward + backward of\n"
            "        sum(y), and its three matrix products alone; cnn: one training step of\n"
            "        examples/fashion_mnist's CNN on a batch of N images. Median ms over R passes.\n"
            "  --case C      conv (default) or cnn\n"
            "  --batch N     images (default 128)\n"
            "  --in C        input channels (default 32)\n"
            "  --out O       output channels (default 64)\n"
            "  --size H      input height and width (default 14)\n"
            "  --kernel K    kernel extent, odd (default 3); each size is 1..%ld\n"
            "  --channels A,B[,C]  cnn: channels of the conv blocks (default 32,64, as fashion_mnist)\n"
            "  --hidden H    cnn: units of fc1 (default 256)\n"
            "  --dropout P   cnn: dropout (default 0.2)\n"
            "  --repeats R   timed passes, 1..%ld (default 20)\n"
            "  --warmup W    untimed passes first, 0..%ld (default 3), and at least\n"
            "  --warmup-ms MS  milliseconds of them, 0..%ld (default 500)\n"
            "  --dtype T     f32 (default) or f64\n"
            "  --json        print one JSON line instead of text\n",
            prog, MAX_DIM, MAX_REPEATS, MAX_REPEATS, BENCH_MAX_WARMUP_MS);
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    if (!strcmp(name, "--case")) {
        *want = "conv or cnn";
        if (v && !strcmp(v, "conv"))
            o->cnn = 0;
        else if (v && !strcmp(v, "cnn"))
            o->cnn = 1;
        else
            return BENCH_ARG_BAD;
        return BENCH_ARG_VALUE;
    }
    if (!strcmp(name, "--channels")) {
        *want = "two or three channel counts, A,B[,C]";
        long n = 0;
        const char *s = v;
        while (s && *s && n < 3) {
            char *end;
            errno = 0;
            long c = strtol(s, &end, 10);
            if (errno || end == s || c < 1 || c > 4096) return BENCH_ARG_BAD;
            o->channels[n++] = c;
            s = *end == ',' ? end + 1 : end;
            if (*end && *end != ',') return BENCH_ARG_BAD;
        }
        if (!s || *s || n < 2) return BENCH_ARG_BAD;
        o->blocks = n;
        return BENCH_ARG_VALUE;
    }
    if (!strcmp(name, "--hidden")) return bench_long(v, 1, MAX_DIM, &o->hidden);
    if (!strcmp(name, "--dropout")) {
        *want = "a probability in [0, 0.9]";
        char *end;
        double p = v ? strtod(v, &end) : -1;
        if (!v || *end || !(p >= 0 && p <= 0.9)) return BENCH_ARG_BAD;
        o->dropout = p;
        return BENCH_ARG_VALUE;
    }
    if (!strcmp(name, "--batch")) return bench_long(v, 1, MAX_DIM, &o->batch);
    if (!strcmp(name, "--in")) return bench_long(v, 1, MAX_DIM, &o->in);
    if (!strcmp(name, "--out")) return bench_long(v, 1, MAX_DIM, &o->out);
    if (!strcmp(name, "--size")) return bench_long(v, 1, MAX_DIM, &o->size);
    if (!strcmp(name, "--kernel")) {
        int r = bench_long(v, 1, MAX_DIM, &o->kernel);
        *want = "an odd whole number";
        return r == BENCH_ARG_VALUE && o->kernel % 2 == 0 ? BENCH_ARG_BAD : r;
    }
    return BENCH_ARG_UNKNOWN;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.c = {.repeats = 20, .warmup = 3, .warmup_ms = 500, .max_repeats = MAX_REPEATS, .dtype = NB_F32},
                   .batch = 128, .in = 32, .out = 64, .size = 14, .kernel = 3, .channels = {32, 64},
                   .blocks = 2, .hidden = 256, .dropout = 0.2};
    return bench_parse_args(argc, argv, "bench_conv", usage, &o->c, own_option, o);
}

static double grad_abs_sum(const nb_tensor *t)
{
    const nb_tensor *g = nb_tensor_grad(t);
    double s = 0;
    for (int64_t j = 0; g && j < nb_tensor_numel(g); j++) s += fabs(nb_tensor_get(g, j));
    return s;
}

/* ---- the conv layer --------------------------------------------------------------------------- */

typedef struct conv_bench {
    nb_tape *tape;
    nb_tensor *x, *w, *b;
    nb_conv_opts co;
    int backward;
} conv_bench;

static int conv_pass(conv_bench *cb, int backward, double *y_out)
{
    nb_tensor_zero_grad(cb->w);
    nb_tensor_zero_grad(cb->b);
    nb_tensor_zero_grad(cb->x);
    nb_tensor *y = nb_sum_all(nb_conv2d(cb->x, cb->w, cb->b, &cb->co));
    if (!y) return -1;
    if (y_out) *y_out = nb_tensor_item(y);
    if (backward && nb_backward(y, NULL, 0) != NB_OK) return -1;
    nb_tape_reset(cb->tape);
    return 0;
}

static int conv_timed(void *ctx)
{
    conv_bench *cb = ctx;
    return conv_pass(cb, cb->backward, NULL);
}

/* The three products of the convolution over the whole batch, each timed alone (median ms). */
typedef struct gemm_bench {
    int ta, tb;
    long m, n, k;
    const void *a, *b;
    void *c;
    nb_dtype dt;
} gemm_bench;

static int gemm_timed(void *ctx)
{
    gemm_bench *g = ctx;
    int lda = g->ta ? (int)g->m : (int)g->k, ldb = g->tb ? (int)g->k : (int)g->n;
    if (g->dt == NB_F32)
        cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)g->m,
                    (int)g->n, (int)g->k, 1.0f, g->a, lda, g->b, ldb, 0.0f, g->c, (int)g->n);
    else
        cblas_dgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)g->m,
                    (int)g->n, (int)g->k, 1.0, g->a, lda, g->b, ldb, 0.0, g->c, (int)g->n);
    return 0;
}

static int run_conv(const options *o, double *samples)
{
    const long N = o->batch, C = o->in, O = o->out, H = o->size, k = o->kernel;
    const long K = C * k * k, P = H * H; /* padding k / 2 keeps the extent */
    conv_bench cb = {.tape = nb_tape_new(), .co = nb_conv_defaults()};
    cb.co.padding[0] = cb.co.padding[1] = k / 2;
    cb.x = nb_tensor_zeros(o->c.dtype, NB_SHAPE(N, C, H, H));
    cb.w = nb_tensor_zeros(o->c.dtype, NB_SHAPE(O, C, k, k));
    cb.b = nb_tensor_zeros(o->c.dtype, NB_SHAPE(O));
    double fb = -1, fw = -1, fb_cpu = 0, fw_cpu = 0, y = 0, gemm[3] = {0}, *cpu = samples + o->c.repeats;
    size_t es = nb_dtype_size(o->c.dtype);
    void *ga = calloc((size_t)(O * K), es), *gb = calloc((size_t)(K * N * P), es), *gc = calloc((size_t)(O * N * P), es);
    if (cb.tape && cb.x && cb.w && cb.b && ga && gb && gc && nb_tape_begin(cb.tape) == NB_OK) {
        double kw = 1.0 / sqrt((double)K);
        bench_fill_sin(cb.w, kw, 0.7, 0.1);
        bench_fill_sin(cb.b, kw, 0.9, 0.3);
        bench_fill_sin(cb.x, 1.0, 0.37, 0.5);
        nb_tensor_set_requires_grad(cb.w, 1);
        nb_tensor_set_requires_grad(cb.b, 1);
        if (C > 1) nb_tensor_set_requires_grad(cb.x, 1);
        cb.backward = 1;
        if (bench_time(conv_timed, &cb, &o->c, samples, cpu) >= 0) {
            fb = bench_median(samples, o->c.repeats) / 1e6;
            fb_cpu = bench_median(cpu, o->c.repeats) / 1e6;
        }
        cb.backward = 0;
        if (fb >= 0 && bench_time(conv_timed, &cb, &o->c, samples, cpu) >= 0) {
            fw = bench_median(samples, o->c.repeats) / 1e6;
            fw_cpu = bench_median(cpu, o->c.repeats) / 1e6;
        }
        if (fw < 0 || conv_pass(&cb, 1, &y) != 0) fb = -1;
        nb_tape_end(cb.tape);
        /* the products alone: forward, weight gradient, input gradient (CPU time) */
        gemm_bench gs[3] = {{0, 0, O, N * P, K, ga, gb, gc, o->c.dtype}, {0, 1, O, K, N * P, gc, gb, ga, o->c.dtype},
                            {1, 0, K, N * P, O, ga, gc, gb, o->c.dtype}};
        for (int i = 0; i < 3 && fb >= 0; i++) {
            if (bench_time(gemm_timed, &gs[i], &o->c, samples, cpu) < 0) fb = -1;
            gemm[i] = bench_median(cpu, o->c.repeats) / 1e6;
        }
    }
    double gx = C > 1 ? grad_abs_sum(cb.x) : 0, gw = grad_abs_sum(cb.w), gbias = grad_abs_sum(cb.b);
    free(ga);
    free(gb);
    free(gc);
    nb_tape_free(cb.tape);
    nb_tensor_free(cb.x);
    nb_tensor_free(cb.w);
    nb_tensor_free(cb.b);
    if (fb < 0 || nb_error_code() != NB_OK) {
        fprintf(stderr, "bench_conv: %s: %s\n", nb_status_name(nb_error_code()), nb_error_message());
        return 1;
    }
    /* flops: 2 N O K P per product; backward has the input's product only when C > 1 */
    double flop = 2.0 * (double)N * (double)O * (double)K * (double)P;
    double gemm_fb = gemm[0] + gemm[1] + (C > 1 ? gemm[2] : 0), n_prod = C > 1 ? 3 : 2;
    if (o->c.json) {
        bench_json_begin("conv");
        bench_json_str("dtype", nb_dtype_name(o->c.dtype));
        bench_json_long("batch", N);
        bench_json_long("in", C);
        bench_json_long("out", O);
        bench_json_long("size", H);
        bench_json_long("kernel", k);
        bench_json_long("repeats", o->c.repeats);
        bench_json_fixed("fwd_bwd_ms", 4, fb);
        bench_json_fixed("fwd_ms", 4, fw);
        bench_json_fixed("fwd_bwd_cpu_ms", 4, fb_cpu);
        bench_json_fixed("fwd_cpu_ms", 4, fw_cpu);
        bench_json_fixed("gemm_fwd_cpu_ms", 4, gemm[0]);
        bench_json_fixed("gemm_fwd_bwd_cpu_ms", 4, gemm_fb);
        bench_json_fixed("gflop_fwd_bwd", 6, flop * n_prod * 1e-9);
        bench_json_exact("y", y);
        bench_json_exact("grad_x", gx);
        bench_json_exact("grad_weight", gw);
        bench_json_exact("grad_bias", gbias);
        bench_json_end();
    } else {
        printf("nabla conv2d %ld -> %ld, %ldx%ld kernel, x [%ld, %ld, %ld, %ld], %s: median of %ld passes\n", C, O, k,
               k, N, C, H, H, nb_dtype_name(o->c.dtype), o->c.repeats);
        printf("                        wall ms     CPU ms   GFLOP/s (CPU)   products alone (CPU ms)\n");
        printf("  forward + backward  %9.3f  %9.3f  %14.1f  %9.3f (%.0f%% of the time)\n", fb, fb_cpu,
               flop * n_prod / fb_cpu * 1e-6, gemm_fb, 100 * gemm_fb / fb_cpu);
        printf("  forward only        %9.3f  %9.3f  %14.1f  %9.3f (%.0f%%)\n", fw, fw_cpu, flop / fw_cpu * 1e-6, gemm[0],
               100 * gemm[0] / fw_cpu);
        printf("  sum(y) = %.8g; sum |grad|: x %.8g, weight %.8g, bias %.8g\n", y, gx, gw, gbias);
    }
    return 0;
}

/* ---- the CNN step ----------------------------------------------------------------------------- */

typedef struct cnn_bench {
    nb_tape *tape;
    nb_params *p;
    nb_optim *opt;
    int blocks;
    nb_conv conv[3];
    nb_batch_norm bn[3];
    nb_linear fc1, fc2;
    nb_tensor *x, *y;
    nb_rng rng;
    double dropout;
} cnn_bench;

/* examples/fashion_mnist.c's logits_of for --model cnn (the input already standardised) */
static nb_tensor *cnn_logits(cnn_bench *m)
{
    nb_tensor *h = m->x;
    for (int k = 0; k < m->blocks; k++) {
        h = nb_batch_norm_relu_pool_forward(&m->bn[k], nb_conv_forward(&m->conv[k], h), 2, 2);
        if (k == 0) h = nb_train_dropout2d(m->p, h, m->dropout / 3, &m->rng);
    }
    h = nb_train_dropout(m->p, nb_flatten(h, 1, -1), m->dropout, &m->rng);
    h = nb_train_dropout(m->p, nb_relu(nb_linear_forward(&m->fc1, h)), m->dropout, &m->rng);
    return nb_linear_forward(&m->fc2, h);
}

static int cnn_step(void *ctx)
{
    cnn_bench *m = ctx;
    nb_tensor *loss = nb_cross_entropy(cnn_logits(m), m->y, &(nb_ce_opts){.label_smoothing = 0.1});
    if (!loss || nb_backward(loss, NULL, 0) != NB_OK || nb_optim_step(m->opt) != NB_OK) return -1;
    nb_optim_zero_grad(m->opt);
    nb_tape_reset(m->tape);
    return 0;
}

static int run_cnn(const options *o, double *samples)
{
    cnn_bench m = {.tape = nb_tape_new(), .p = nb_params_new(), .blocks = (int)o->blocks};
    nb_rng_seed(&m.rng, 1);
    const long N = o->batch;
    nb_layer_opts lo = {.dtype = o->c.dtype}, nob = {.dtype = o->c.dtype, .no_bias = 1};
    nb_norm_opts bo = {.dtype = o->c.dtype};
    nb_conv_opts co = nb_conv_defaults();
    co.padding[0] = co.padding[1] = 1;
    double ms = -1, cpu_ms = 0, loss0 = 0, *cpu = samples + o->c.repeats;
    int ok = m.tape && m.p;
    long in = 1, side = 28;
    for (int k = 0; k < m.blocks && ok; k++) {
        char cn[16], bn[16];
        snprintf(cn, sizeof cn, "conv%d", k + 1);
        snprintf(bn, sizeof bn, "bn%d", k + 1);
        ok = nb_conv2d_init(&m.conv[k], m.p, cn, in, o->channels[k], 3, 3, &co, &nob, &m.rng) == NB_OK &&
             nb_batch_norm2d_init(&m.bn[k], m.p, bn, o->channels[k], &bo) == NB_OK;
        if (ok) bench_fill_sin(m.conv[k].weight, 1.0 / sqrt((double)(in * 9)), 0.7, 0.1);
        in = o->channels[k];
        side /= 2;
    }
    const long flat = in * side * side;
    ok = ok && nb_linear_init(&m.fc1, m.p, "fc1", flat, o->hidden, &lo, &m.rng) == NB_OK &&
         nb_linear_init(&m.fc2, m.p, "fc2", o->hidden, 10, &lo, &m.rng) == NB_OK &&
         (m.x = nb_tensor_zeros(o->c.dtype, NB_SHAPE(N, 1, 28, 28))) != NULL &&
         (m.y = nb_tensor_zeros(NB_I64, NB_SHAPE(N))) != NULL;
    if (ok) {
        bench_fill_sin(m.fc1.weight, 1.0 / sqrt((double)flat), 1.3, 0.2);
        bench_fill_sin(m.fc1.bias, 1.0 / sqrt((double)flat), 0.9, 0.3);
        bench_fill_sin(m.fc2.weight, 1.0 / sqrt((double)o->hidden), 1.3, 0.2);
        bench_fill_sin(m.fc2.bias, 1.0 / sqrt((double)o->hidden), 0.9, 0.3);
        bench_fill_sin(m.x, 1.0, 0.37, 0.5);
        for (long j = 0; j < N; j++) nb_tensor_set(m.y, j, (double)(j % 10));
        nb_optim_opts oo = nb_optim_defaults(NB_ADAMW);
        oo.lr = 2e-3;
        oo.weight_decay = 5e-4;
        m.opt = nb_optim_new(NB_ADAMW, m.p, &oo);
        if (m.opt && nb_tape_begin(m.tape) == NB_OK) {
            /* the value both sides compare: the first batch's loss without dropout */
            m.dropout = 0;
            nb_tensor *l = nb_cross_entropy(cnn_logits(&m), m.y, &(nb_ce_opts){.label_smoothing = 0.1});
            loss0 = l ? nb_tensor_item(l) : NAN;
            nb_tape_reset(m.tape);
            m.dropout = o->dropout;
            if (l && bench_time(cnn_step, &m, &o->c, samples, cpu) >= 0) {
                ms = bench_median(samples, o->c.repeats) / 1e6;
                cpu_ms = bench_median(cpu, o->c.repeats) / 1e6;
            }
            nb_tape_end(m.tape);
        }
    }
    const int64_t n_params = nb_params_numel(m.p);
    nb_optim_free(m.opt);
    nb_tape_free(m.tape);
    nb_tensor_free(m.x);
    nb_tensor_free(m.y);
    nb_params_free(m.p);
    if (ms < 0 || nb_error_code() != NB_OK) {
        fprintf(stderr, "bench_conv: %s: %s\n", nb_status_name(nb_error_code()), nb_error_message());
        return 1;
    }
    if (o->c.json) {
        bench_json_begin("cnn");
        bench_json_str("dtype", nb_dtype_name(o->c.dtype));
        bench_json_long("batch", N);
        bench_json_long("parameters", n_params);
        bench_json_long("repeats", o->c.repeats);
        bench_json_fixed("step_ms", 4, ms);
        bench_json_fixed("step_cpu_ms", 4, cpu_ms);
        bench_json_exact("loss0", loss0);
        bench_json_end();
    } else {
        printf("nabla: one training step of the Fashion-MNIST CNN, batch %ld, %s: median of %ld steps\n", N,
               nb_dtype_name(o->c.dtype), o->c.repeats);
        printf("  %.3f ms wall, %.3f ms CPU of this thread; first batch's loss without dropout %.8g\n", ms, cpu_ms,
               loss0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    int st = parse_args(argc, argv, &o);
    if (st) return st == 1 ? 0 : 2;
    double *samples = malloc(2 * (size_t)o.c.repeats * sizeof *samples);
    if (!samples) {
        fprintf(stderr, "bench_conv: out of memory\n");
        return 1;
    }
    int r = o.cnn ? run_cnn(&o, samples) : run_conv(&o, samples);
    free(samples);
    return r;
}
