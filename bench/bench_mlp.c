/* One training step of an MLP: what it costs against the matrix products it makes (its GEMM floor),
 * and, through bench/mlp.py, against PyTorch. The default network is the 784-512-256-10
 * (ReLU, float32), batch 128; cross-entropy of the logits against fixed labels.
 *
 * One timed step:
 *     zero the gradients; logits = MLP(x) (nb_mlp_forward: addmm + relu per layer, dropout between
 *     layers with --dropout); loss = cross_entropy(logits, y) (mean); nb_backward(loss);
 *     with --optim sgd|adam the optimizer's step; nb_tape_reset
 * x [B, in] does not require grad. Weights, biases and x are closed forms of the flat index j that
 * bench/mlp.py reproduces, so both sides compute the same function (k = 1/sqrt(fan_in)):
 *     layer l weight = k sin((0.7 + 0.1 l) j + 0.1), bias = k sin((0.9 + 0.1 l) j + 0.3)
 *     x = sin(0.37 j + 0.5), label of row r = (7 r) mod classes
 *
 * The GEMM floor (gemm_floor.h): one step is recorded, and its products are replayed alone on the
 * same memory; floor / step is the share of the step that its products take.
 *
 * Timing: untimed steps for --warmup steps and --warmup-ms, then --repeats timed steps, each timed
 * alone: wall time (the measure with several threads) and the process's CPU time (all threads);
 * medians. */
#define _GNU_SOURCE

#include "bench.h"
#include "gemm_floor.h"

#include <nabla.h>

#include <math.h>
#include <stdlib.h>

#define MAX_REPEATS 100000L
#define MAX_SIZE 100000L

typedef struct options {
    bench_opts c;
    int64_t sizes[NB_MLP_MAX_LAYERS + 1];
    int n_sizes;
    long batch, threads;
    double dropout;
    int optim; /* 0 none, 1 sgd, 2 adam */
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--layers 784,512,256,10] [--batch B] [--dropout P] [--optim none|sgd|adam]\n"
            "          [--threads N] [--repeats R] [--warmup W] [--warmup-ms MS] [--dtype f32|f64] [--json]\n"
            "  Times one MLP training step (forward, cross-entropy, backward, optional optimizer step)\n"
            "  and its GEMM floor (the step's matrix products replayed alone); prints medians.\n"
            "  --layers L    sizes from input to output (default 784,512,256,10)\n"
            "  --batch B     rows per step, 1..%ld (default 128)\n"
            "  --dropout P   dropout between layers, in [0, 1) (default 0)\n"
            "  --optim O     none (default), sgd (lr 0.01) or adam (torch's defaults)\n"
            "  --threads N   nb_set_num_threads(N) (default: the environment's setting)\n"
            "  --repeats R   timed steps, 1..%ld (default 50)\n"
            "  --warmup W    untimed steps first (default 5), and at least\n"
            "  --warmup-ms MS  milliseconds of them (default 500)\n"
            "  --dtype T     f32 (default) or f64\n"
            "  --json        print one JSON line instead of text\n",
            prog, MAX_SIZE, MAX_REPEATS);
}

static int parse_sizes(const char *s, options *o)
{
    o->n_sizes = 0;
    while (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > MAX_SIZE || o->n_sizes > NB_MLP_MAX_LAYERS) return 0;
        o->sizes[o->n_sizes++] = v;
        if (*end == ',') end++;
        else if (*end) return 0;
        s = end;
    }
    return o->n_sizes >= 2;
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    if (!strcmp(name, "--layers")) {
        *want = "sizes such as 784,512,256,10";
        return parse_sizes(v, o) ? BENCH_ARG_VALUE : BENCH_ARG_BAD;
    }
    if (!strcmp(name, "--batch")) return bench_long(v, 1, MAX_SIZE, &o->batch);
    if (!strcmp(name, "--threads")) return bench_long(v, 1, 1024, &o->threads);
    if (!strcmp(name, "--dropout")) {
        char *end;
        *want = "a number in [0, 1)";
        o->dropout = v ? strtod(v, &end) : -1;
        return v && *v && !*end && o->dropout >= 0 && o->dropout < 1 ? BENCH_ARG_VALUE : BENCH_ARG_BAD;
    }
    if (!strcmp(name, "--optim")) {
        *want = "none, sgd or adam";
        if (!v) return BENCH_ARG_BAD;
        o->optim = !strcmp(v, "none") ? 0 : !strcmp(v, "sgd") ? 1 : !strcmp(v, "adam") ? 2 : -1;
        return o->optim >= 0 ? BENCH_ARG_VALUE : BENCH_ARG_BAD;
    }
    return BENCH_ARG_UNKNOWN;
}

typedef struct bench {
    nb_tape *tape;
    nb_params *params;
    nb_mlp mlp;
    nb_optim *opt;
    nb_tensor *x, *y;
    nb_rng rng;
    int floor; /* record the products of the next step and time their replay */
    long floor_repeats;
    double floor_ns, floor_cpu_ns, flops;
    long calls;
} bench;

/* One step; loss_out (may be NULL) receives the loss. 0 on success. */
static int step(bench *bn, double *loss_out)
{
    nb_params_zero_grad(bn->params);
    if (bn->floor) gemm_floor_record(1);
    nb_tensor *loss = nb_cross_entropy(nb_mlp_forward(&bn->mlp, bn->x), bn->y, NULL);
    if (!loss || nb_backward(loss, NULL, 0) != NB_OK) return -1;
    if (bn->floor) {
        gemm_floor_record(0);
        bn->calls = gemm_floor_calls();
        bn->flops = gemm_floor_flops();
        bn->floor_ns = gemm_floor_time(3, bn->floor_repeats, &bn->floor_cpu_ns);
        bn->floor = 0;
    }
    if (loss_out) *loss_out = nb_tensor_item(loss);
    if (bn->opt && nb_optim_step(bn->opt) != NB_OK) return -1;
    nb_tape_reset(bn->tape);
    return 0;
}

static int timed_step(void *ctx) { return step(ctx, NULL); }

/* Sum of |g| over a parameter's gradient, in double. */
static double grad_abs_sum(const nb_tensor *t)
{
    const nb_tensor *g = nb_tensor_grad(t);
    double s = 0;
    for (int64_t j = 0; g && j < nb_tensor_numel(g); j++) s += fabs(nb_tensor_get(g, j));
    return s;
}

int main(int argc, char **argv)
{
    options o = {.c = {.repeats = 50, .warmup = 5, .warmup_ms = 500, .max_repeats = MAX_REPEATS, .dtype = NB_F32},
                 .sizes = {784, 512, 256, 10}, .n_sizes = 4, .batch = 128};
    int st = bench_parse_args(argc, argv, "bench_mlp", usage, &o.c, own_option, &o);
    if (st) return st == 1 ? 0 : 2;
    if (o.threads) nb_set_num_threads((int)o.threads);

    bench bn = {.floor_repeats = o.c.repeats};
    nb_rng_seed(&bn.rng, 1);
    bn.params = nb_params_new();
    bn.tape = nb_tape_new();
    double *wall = malloc(2 * (size_t)o.c.repeats * sizeof *wall), *cpu = wall ? wall + o.c.repeats : NULL;
    int64_t in = o.sizes[0], classes = o.sizes[o.n_sizes - 1];
    nb_layer_opts lo = {.dtype = o.c.dtype};
    double step_ms = -1, loss = 0, gsum = 0, proc_cpu_ms = 0;
    if (wall && bn.params && bn.tape &&
        nb_mlp_init(&bn.mlp, bn.params, "mlp", o.n_sizes, o.sizes, NB_ACT_RELU, o.dropout, &lo, &bn.rng) == NB_OK &&
        (bn.x = nb_tensor_zeros(o.c.dtype, NB_SHAPE(o.batch, in))) != NULL &&
        (bn.y = nb_tensor_zeros(NB_I64, NB_SHAPE(o.batch))) != NULL) {
        for (int l = 0; l < bn.mlp.n_layers; l++) {
            double k = 1.0 / sqrt((double)o.sizes[l]);
            bench_fill_sin(bn.mlp.layer[l].weight, k, 0.7 + 0.1 * l, 0.1);
            bench_fill_sin(bn.mlp.layer[l].bias, k, 0.9 + 0.1 * l, 0.3);
        }
        bench_fill_sin(bn.x, 1.0, 0.37, 0.5);
        for (int64_t r = 0; r < o.batch; r++) nb_tensor_set(bn.y, r, (double)((7 * r) % classes));
        if (o.optim == 1) bn.opt = nb_optim_new(NB_SGD, bn.params, NULL);
        if (o.optim == 2) bn.opt = nb_optim_new(NB_ADAM, bn.params, NULL);
        if ((o.optim == 0 || bn.opt) && nb_tape_begin(bn.tape) == NB_OK) {
            /* the values mlp.py compares: the first step from the initial weights (no update yet) */
            if (step(&bn, &loss) == 0) {
                for (int l = 0; l < bn.mlp.n_layers; l++) gsum += grad_abs_sum(bn.mlp.layer[l].weight);
                long warm = bench_time_clock(timed_step, &bn, &o.c, wall, cpu, CLOCK_PROCESS_CPUTIME_ID);
                if (warm >= 0) {
                    proc_cpu_ms = bench_median(cpu, o.c.repeats) / 1e6;
                    step_ms = bench_median(wall, o.c.repeats) / 1e6;
                    bn.floor = 1;
                    if (step(&bn, NULL) != 0) step_ms = -1;
                }
            }
            nb_tape_end(bn.tape);
        }
    }
    free(wall);
    nb_optim_free(bn.opt);
    nb_tape_free(bn.tape);
    nb_tensor_free(bn.x);
    nb_tensor_free(bn.y);
    nb_params_free(bn.params);
    if (step_ms < 0 || bn.floor_ns < 0 || nb_error_code() != NB_OK) {
        fprintf(stderr, "bench_mlp: %s: %s\n", nb_status_name(nb_error_code()),
                nb_error_code() != NB_OK ? nb_error_message() : "out of memory");
        return 1;
    }
    double floor_ms = bn.floor_ns / 1e6;
    char layers[256] = "";
    for (int i = 0; i < o.n_sizes; i++)
        snprintf(layers + strlen(layers), sizeof layers - strlen(layers), "%s%lld", i ? "," : "", (long long)o.sizes[i]);
    const char *optim = o.optim == 0 ? "none" : o.optim == 1 ? "sgd" : "adam";
    if (o.c.json) {
        bench_json_begin("mlp");
        bench_json_str("layers", layers);
        bench_json_str("dtype", nb_dtype_name(o.c.dtype));
        bench_json_str("optim", optim);
        bench_json_long("batch", o.batch);
        bench_json_long("threads", nb_num_threads());
        bench_json_fixed("dropout", 3, o.dropout);
        bench_json_long("repeats", o.c.repeats);
        bench_json_fixed("step_ms", 4, step_ms);
        bench_json_fixed("step_cpu_ms", 4, proc_cpu_ms);
        bench_json_fixed("floor_ms", 4, floor_ms);
        bench_json_fixed("floor_cpu_ms", 4, bn.floor_cpu_ns / 1e6);
        bench_json_long("gemm_calls", bn.calls);
        bench_json_fixed("gemm_gflops", 2, bn.flops / bn.floor_ns);
        bench_json_exact("loss", loss);
        bench_json_exact("grad_abs_sum", gsum);
        bench_json_end();
    } else {
        printf("nabla MLP %s, batch %ld, %s, optimizer %s, dropout %g, %d thread(s): median of %ld steps\n", layers,
               o.batch, nb_dtype_name(o.c.dtype), optim, o.dropout, nb_num_threads(), o.c.repeats);
        printf("  step          %9.3f ms wall  %9.3f ms CPU (all threads)\n", step_ms, proc_cpu_ms);
        printf("  GEMM floor    %9.3f ms wall  %9.3f ms CPU (this thread)  (%ld products, %.1f GFLOP/s)\n",
               floor_ms, bn.floor_cpu_ns / 1e6, bn.calls, bn.flops / bn.floor_ns);
        printf("  floor / step  %9.3f wall\n", floor_ms / step_ms);
        printf("  loss %.10g, sum |grad W| %.10g\n", loss, gsum);
    }
    return 0;
}
