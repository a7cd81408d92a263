/* Per-op overhead: a chain of N ops on 1-element tensors, recorded, differentiated and released, so
 * that what is timed is mostly nabla's bookkeeping (argument checks, arena, node recording, the
 * backward engine) rather than arithmetic. Prints the median nanoseconds per op over R passes, for
 * forward + backward and for forward alone. bench/overhead.py runs the same chain in PyTorch and
 * compares the two.
 *
 * The chain repeats sigmoid, * w, + b, tanh (op i is number i % 4) starting from x = 0.5, where x, w
 * and b are 1-element leaves that require grad (w = 4, b = -2). That cycle maps 0 to 0 with derivative
 * 1 there, so values stay in (-1, 1) and the gradient neither overflows nor underflows at any length.
 *
 * One timed pass, forward + backward:
 *     zero the leaves' gradients; y = chain(x, w, b); nb_backward(y); nb_tape_reset
 * forward only: the same without nb_backward (the graph is still recorded). Untimed passes come first,
 * for at least half a second by default: on the 2-core VM this was written on, a process starting from
 * idle often runs up to 1.7x slower for its first tens of milliseconds (and slow spells recur, which is
 * why overhead.py also takes the median over several runs). */
#define _POSIX_C_SOURCE 200809L

#include "bench.h"

#include <nabla.h>

#include <stdlib.h>

#define MAX_OPS 100000L /* the tape of one pass takes about 1 KiB per op */
#define MAX_REPEATS 1000000L

typedef struct options {
    bench_opts c; /* --repeats, --warmup, --warmup-ms, --dtype, --json */
    long ops;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--ops N] [--repeats R] [--warmup W] [--warmup-ms MS] [--dtype f32|f64] [--json]\n"
            "  Times a chain of N ops (sigmoid, *w, +b, tanh, repeated) on 1-element tensors, forward\n"
            "  + backward and forward only, and prints the median ns per op over R timed passes.\n"
            "  --ops N       ops in the chain, 1..%ld (default 1000)\n"
            "  --repeats R   timed passes, 1..%ld (default 200)\n"
            "  --warmup W    untimed passes first, 0..%ld (default 20), and at least\n"
            "  --warmup-ms MS  milliseconds of them, 0..%ld (default 500): a CPU coming from idle\n"
            "                runs slower for a while\n"
            "  --dtype T     f64 (default) or f32\n"
            "  --json        print one JSON line instead of text\n",
            prog, MAX_OPS, MAX_REPEATS, MAX_REPEATS, BENCH_MAX_WARMUP_MS);
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    (void)want;
    if (!strcmp(name, "--ops")) return bench_long(v, 1, MAX_OPS, &o->ops);
    return BENCH_ARG_UNKNOWN;
}

/* 0 on success, 1 for --help, 2 on a bad argument (after a message on stderr). */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.c = {.repeats = 200, .warmup = 20, .warmup_ms = 500, .max_repeats = MAX_REPEATS, .dtype = NB_F64},
                   .ops = 1000};
    return bench_parse_args(argc, argv, "bench_overhead", usage, &o->c, own_option, o);
}

typedef struct bench {
    nb_tape *tape;
    nb_tensor *x, *w, *b;
    long ops;
    int backward; /* what timed_pass runs */
} bench;

/* x -> sigmoid -> *w -> +b -> tanh -> sigmoid -> ...: op results on the current tape. */
static nb_tensor *chain(const bench *bn)
{
    nb_tensor *h = bn->x;
    for (long i = 0; i < bn->ops; i++) {
        switch (i % 4) {
        case 0: h = nb_sigmoid(h); break;
        case 1: h = nb_mul(h, bn->w); break;
        case 2: h = nb_add(h, bn->b); break;
        default: h = nb_tanh(h); break;
        }
    }
    return h; /* NULL after any failure: errors are sticky */
}

/* One pass; y_out (may be NULL) receives the output's value. 0 on success. */
static int pass(const bench *bn, int backward, double *y_out)
{
    nb_tensor_zero_grad(bn->x);
    nb_tensor_zero_grad(bn->w);
    nb_tensor_zero_grad(bn->b);
    nb_tensor *y = chain(bn);
    if (!y) return -1;
    if (y_out) *y_out = nb_tensor_item(y);
    if (backward && nb_backward(y, NULL, 0) != NB_OK) return -1;
    nb_tape_reset(bn->tape);
    return 0;
}

static int timed_pass(void *ctx)
{
    const bench *bn = ctx;
    return pass(bn, bn->backward, NULL);
}

/* Median ns per op over o->c.repeats timed passes, after untimed ones (at least o->c.warmup of them
 * and o->c.warmup_ms of work); negative on error. */
static double time_passes(bench *bn, const options *o, int backward, double *samples)
{
    bn->backward = backward;
    if (bench_time(timed_pass, bn, &o->c, samples, NULL) < 0) return -1;
    return bench_median(samples, o->c.repeats) / (double)o->ops;
}

static double grad_of(const nb_tensor *t)
{
    const nb_tensor *g = nb_tensor_grad(t);
    return g ? nb_tensor_item(g) : 0.0;
}

int main(int argc, char **argv)
{
    options o;
    int st = parse_args(argc, argv, &o);
    if (st) return st == 1 ? 0 : 2;

    bench bn = {.ops = o.ops};
    bn.x = nb_tensor_full(o.c.dtype, NB_SHAPE(1), 0.5);
    bn.w = nb_tensor_full(o.c.dtype, NB_SHAPE(1), 4.0);
    bn.b = nb_tensor_full(o.c.dtype, NB_SHAPE(1), -2.0);
    bn.tape = nb_tape_new();
    double *samples = malloc((size_t)o.c.repeats * sizeof *samples);
    if (!samples) {
        fprintf(stderr, "bench_overhead: out of memory\n");
        return 1;
    }
    double fb = -1, fw = -1, y = 0, gx = 0, gw = 0, gb = 0;
    if (bn.x && bn.w && bn.b && bn.tape && nb_tape_begin(bn.tape) == NB_OK) {
        nb_tensor_set_requires_grad(bn.x, 1);
        nb_tensor_set_requires_grad(bn.w, 1);
        nb_tensor_set_requires_grad(bn.b, 1);
        fb = time_passes(&bn, &o, 1, samples);
        if (fb >= 0) fw = time_passes(&bn, &o, 0, samples);
        /* one more pass for the values that overhead.py compares with PyTorch's */
        if (fw >= 0 && pass(&bn, 1, &y) == 0) {
            gx = grad_of(bn.x);
            gw = grad_of(bn.w);
            gb = grad_of(bn.b);
        } else {
            fb = -1;
        }
        nb_tape_end(bn.tape);
    }
    free(samples);
    nb_tape_free(bn.tape);
    nb_tensor_free(bn.x);
    nb_tensor_free(bn.w);
    nb_tensor_free(bn.b);
    if (fb < 0 || nb_error_code() != NB_OK) {
        fprintf(stderr, "bench_overhead: %s: %s\n", nb_status_name(nb_error_code()), nb_error_message());
        return 1;
    }

    const char *dt = nb_dtype_name(o.c.dtype);
    if (o.c.json) {
        bench_json_begin("overhead");
        bench_json_str("dtype", dt);
        bench_json_long("ops", o.ops);
        bench_json_long("repeats", o.c.repeats);
        bench_json_long("warmup", o.c.warmup);
        bench_json_long("warmup_ms", o.c.warmup_ms);
        bench_json_fixed("fwd_bwd_ns_per_op", 3, fb);
        bench_json_fixed("fwd_ns_per_op", 3, fw);
        bench_json_exact("y", y);
        bench_json_exact("grad_x", gx);
        bench_json_exact("grad_w", gw);
        bench_json_exact("grad_b", gb);
        bench_json_end();
    } else {
        printf("nabla per-op overhead: chain of %ld ops on 1-element %s tensors, median of %ld passes\n",
               o.ops, dt, o.c.repeats);
        printf("  forward + backward  %10.1f ns/op\n", fb);
        printf("  forward only        %10.1f ns/op\n", fw);
        printf("  y = %.10g, dy/dx = %.10g, dy/dw = %.10g, dy/db = %.10g\n", y, gx, gw, gb);
    }
    return 0;
}
