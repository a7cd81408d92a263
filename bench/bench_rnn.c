/* A recurrent layer at a realistic size: one LSTM or GRU layer (nb_rnn_forward) over x [T, B, input]
 * in float32 by default, forward and backward of sum(out), out being every step's output
 * [T, B, hidden]. Prints the median milliseconds per pass over R passes, for forward + backward and
 * for forward alone, in wall time and in this thread's CPU time. bench/rnn.py runs the same layer
 * with torch.nn.LSTM / torch.nn.GRU and compares.
 *
 * The default shape is the issue's: input 64, hidden 256, T 50, batch 32. Weights and input are not
 * random but closed forms of the flat index j that bench/rnn.py reproduces exactly, so both sides
 * compute the same function (k = 1/sqrt(hidden), PyTorch's init scale):
 *     weight_ih = k sin(0.7 j + 0.1)   weight_hh = k sin(1.3 j + 0.2)
 *     bias_ih   = k sin(0.9 j + 0.3)   bias_hh   = k sin(1.1 j + 0.4)   x = sin(0.37 j + 0.5)
 * The input does not require grad; the initial state is zeros.
 *
 * One timed pass, forward + backward:
 *     zero the parameters' gradients; nb_rnn_forward; y = sum(out); nb_backward(y); nb_tape_reset
 * forward only: the same without nb_backward (the graph is still recorded). Untimed passes come first
 * (at least --warmup of them and --warmup-ms of work).
 *
 * The GEMM floor (gemm_floor.h): the matrix products of one forward + backward pass, recorded and
 * replayed alone on the same memory, median of --repeats replays. */
#define _GNU_SOURCE

#include "bench.h"
#include "gemm_floor.h"

#include <nabla.h>

#include <math.h>
#include <stdlib.h>

#define MAX_DIM 100000L
#define MAX_REPEATS 100000L

typedef struct options {
    bench_opts c; /* --repeats, --warmup, --warmup-ms, --dtype, --json */
    nb_rnn_kind kind;
    long input, hidden, steps, batch, threads;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--kind lstm|gru] [--input I] [--hidden H] [--steps T] [--batch B] [--repeats R]\n"
            "          [--warmup W] [--warmup-ms MS] [--dtype f32|f64] [--threads N] [--json]\n"
            "  Times one recurrent layer (nb_rnn_forward) over x [T, B, I], forward + backward of\n"
            "  sum(out) and forward only, and prints the median ms per pass over R timed passes.\n"
            "  --kind K      lstm (default) or gru\n"
            "  --input I     input features (default 64)\n"
            "  --hidden H    hidden units (default 256)\n"
            "  --steps T     sequence length (default 50)\n"
            "  --batch B     sequences (default 32); each size is 1..%ld\n"
            "  --repeats R   timed passes, 1..%ld (default 20)\n"
            "  --warmup W    untimed passes first, 0..%ld (default 3), and at least\n"
            "  --warmup-ms MS  milliseconds of them, 0..%ld (default 500)\n"
            "  --dtype T     f32 (default) or f64\n"
            "  --threads N   nb_set_num_threads(N) (default: the environment's setting)\n"
            "  --json        print one JSON line instead of text\n",
            prog, MAX_DIM, MAX_REPEATS, MAX_REPEATS, BENCH_MAX_WARMUP_MS);
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    if (!strcmp(name, "--kind")) {
        *want = "lstm or gru";
        if (v && !strcmp(v, "lstm"))
            o->kind = NB_LSTM;
        else if (v && !strcmp(v, "gru"))
            o->kind = NB_GRU;
        else
            return BENCH_ARG_BAD;
        return BENCH_ARG_VALUE;
    }
    if (!strcmp(name, "--input")) return bench_long(v, 1, MAX_DIM, &o->input);
    if (!strcmp(name, "--hidden")) return bench_long(v, 1, MAX_DIM, &o->hidden);
    if (!strcmp(name, "--steps")) return bench_long(v, 1, MAX_DIM, &o->steps);
    if (!strcmp(name, "--batch")) return bench_long(v, 1, MAX_DIM, &o->batch);
    if (!strcmp(name, "--threads")) return bench_long(v, 1, 1024, &o->threads);
    return BENCH_ARG_UNKNOWN;
}

/* 0 on success, 1 for --help, 2 on a bad argument (after a message on stderr). */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.c = {.repeats = 20, .warmup = 3, .warmup_ms = 500, .max_repeats = MAX_REPEATS, .dtype = NB_F32},
                   .kind = NB_LSTM, .input = 64, .hidden = 256, .steps = 50, .batch = 32};
    return bench_parse_args(argc, argv, "bench_rnn", usage, &o->c, own_option, o);
}

typedef struct bench {
    nb_tape *tape;
    nb_params *params;
    nb_rnn rnn;
    nb_tensor *x; /* [T, B, input], no gradient */
    int backward; /* what timed_pass runs */
    int floor;    /* record the products of the next pass and time their replay */
    long floor_repeats, calls;
    double floor_ns, floor_cpu_ns, flops;
} bench;

/* One pass; y_out (may be NULL) receives sum(out). 0 on success. */
static int pass(bench *bn, int backward, double *y_out)
{
    nb_params_zero_grad(bn->params);
    nb_tensor *out = NULL;
    if (bn->floor) gemm_floor_record(1);
    if (nb_rnn_forward(&bn->rnn, bn->x, NULL, NULL, &out, NULL) != NB_OK) return -1;
    nb_tensor *y = nb_sum_all(out);
    if (!y) return -1;
    if (y_out) *y_out = nb_tensor_item(y);
    if (backward && nb_backward(y, NULL, 0) != NB_OK) return -1;
    if (bn->floor) {
        gemm_floor_record(0);
        bn->calls = gemm_floor_calls();
        bn->flops = gemm_floor_flops();
        bn->floor_ns = gemm_floor_time(3, bn->floor_repeats, &bn->floor_cpu_ns);
        bn->floor = 0;
    }
    nb_tape_reset(bn->tape);
    return 0;
}

static int timed_pass(void *ctx)
{
    bench *bn = ctx;
    return pass(bn, bn->backward, NULL);
}

/* Median ms per pass over o->c.repeats timed passes, after untimed ones, in wall time (returned) and
 * in thread CPU time (*cpu_ms); negative on error. samples holds 2 * o->c.repeats. */
static double time_passes(bench *bn, const options *o, int backward, double *samples, double *cpu_ms)
{
    bn->backward = backward;
    double *cpu = samples + o->c.repeats;
    if (bench_time(timed_pass, bn, &o->c, samples, cpu) < 0) return -1;
    *cpu_ms = bench_median(cpu, o->c.repeats) / 1e6;
    return bench_median(samples, o->c.repeats) / 1e6;
}

/* Sum of |g| over a parameter's gradient, accumulated in double (0 without a gradient). */
static double grad_abs_sum(const nb_tensor *t)
{
    const nb_tensor *g = nb_tensor_grad(t);
    double s = 0;
    for (int64_t j = 0; g && j < nb_tensor_numel(g); j++) s += fabs(nb_tensor_get(g, j));
    return s;
}

int main(int argc, char **argv)
{
    options o;
    int st = parse_args(argc, argv, &o);
    if (st) return st == 1 ? 0 : 2;
    if (o.threads) nb_set_num_threads((int)o.threads);

    bench bn = {0};
    nb_rng rng;
    nb_rng_seed(&rng, 1);
    bn.params = nb_params_new();
    bn.tape = nb_tape_new();
    nb_rnn_opts ro = {.layer = {.dtype = o.c.dtype}};
    double *samples = malloc(2 * (size_t)o.c.repeats * sizeof *samples);
    int oom = !samples;
    double fb = -1, fw = -1, fb_cpu = 0, fw_cpu = 0, y = 0, g[4] = {0};
    if (samples && bn.params && bn.tape &&
        nb_rnn_init(&bn.rnn, bn.params, "rnn", o.kind, o.input, o.hidden, 1, &ro, &rng) == NB_OK &&
        (bn.x = nb_tensor_zeros(o.c.dtype, NB_SHAPE(o.steps, o.batch, o.input))) != NULL &&
        nb_tape_begin(bn.tape) == NB_OK) {
        const nb_rnn_cell *c = &bn.rnn.cell[0];
        double k = 1.0 / sqrt((double)o.hidden);
        bench_fill_sin(c->w_ih, k, 0.7, 0.1);
        bench_fill_sin(c->w_hh, k, 1.3, 0.2);
        bench_fill_sin(c->b_ih, k, 0.9, 0.3);
        bench_fill_sin(c->b_hh, k, 1.1, 0.4);
        bench_fill_sin(bn.x, 1.0, 0.37, 0.5);
        fb = time_passes(&bn, &o, 1, samples, &fb_cpu);
        if (fb >= 0) fw = time_passes(&bn, &o, 0, samples, &fw_cpu);
        /* one more pass for the values that rnn.py compares with PyTorch's */
        if (fw >= 0 && pass(&bn, 1, &y) == 0) {
            g[0] = grad_abs_sum(c->w_ih);
            g[1] = grad_abs_sum(c->w_hh);
            g[2] = grad_abs_sum(c->b_ih);
            g[3] = grad_abs_sum(c->b_hh);
            bn.floor = 1;
            bn.floor_repeats = o.c.repeats;
            if (pass(&bn, 1, NULL) != 0 || bn.floor_ns < 0) fb = -1;
        } else {
            fb = -1;
        }
        nb_tape_end(bn.tape);
    }
    free(samples);
    nb_tape_free(bn.tape);
    nb_tensor_free(bn.x);
    nb_params_free(bn.params);
    if (fb < 0 || nb_error_code() != NB_OK) {
        fprintf(stderr, "bench_rnn: %s: %s\n", nb_status_name(nb_error_code()),
                oom ? "out of memory" : nb_error_message());
        return 1;
    }

    const char *kind = o.kind == NB_LSTM ? "lstm" : "gru", *dt = nb_dtype_name(o.c.dtype);
    if (o.c.json) {
        bench_json_begin("rnn");
        bench_json_str("kind", kind);
        bench_json_str("dtype", dt);
        bench_json_long("input", o.input);
        bench_json_long("hidden", o.hidden);
        bench_json_long("steps", o.steps);
        bench_json_long("batch", o.batch);
        bench_json_long("repeats", o.c.repeats);
        bench_json_long("warmup", o.c.warmup);
        bench_json_long("warmup_ms", o.c.warmup_ms);
        bench_json_fixed("fwd_bwd_ms", 4, fb);
        bench_json_fixed("fwd_ms", 4, fw);
        bench_json_fixed("fwd_bwd_cpu_ms", 4, fb_cpu);
        bench_json_fixed("fwd_cpu_ms", 4, fw_cpu);
        bench_json_long("threads", nb_num_threads());
        bench_json_fixed("floor_ms", 4, bn.floor_ns / 1e6);
        bench_json_fixed("floor_cpu_ms", 4, bn.floor_cpu_ns / 1e6);
        bench_json_long("gemm_calls", bn.calls);
        bench_json_fixed("gemm_gflops", 2, bn.flops / bn.floor_ns);
        bench_json_exact("y", y);
        bench_json_exact("grad_weight_ih", g[0]);
        bench_json_exact("grad_weight_hh", g[1]);
        bench_json_exact("grad_bias_ih", g[2]);
        bench_json_exact("grad_bias_hh", g[3]);
        bench_json_end();
    } else {
        printf("nabla %s, input %ld, hidden %ld, T %ld, batch %ld, %s: median of %ld passes\n", kind, o.input,
               o.hidden, o.steps, o.batch, dt, o.c.repeats);
        printf("                        wall ms     CPU ms\n");
        printf("  forward + backward  %9.3f  %9.3f\n", fb, fb_cpu);
        printf("  forward only        %9.3f  %9.3f\n", fw, fw_cpu);
        printf("  GEMM floor          %9.3f  %9.3f  (%ld products, %.1f GFLOP/s)\n", bn.floor_ns / 1e6,
               bn.floor_cpu_ns / 1e6, bn.calls, bn.flops / bn.floor_ns);
        printf("  pass / floor        %9.3f  %9.3f\n", fb / (bn.floor_ns / 1e6), fb_cpu / (bn.floor_cpu_ns / 1e6));
        printf("  sum(out) = %.8g; sum |grad|: weight_ih %.8g, weight_hh %.8g, bias_ih %.8g, bias_hh %.8g\n", y,
               g[0], g[1], g[2], g[3]);
    }
    return 0;
}
