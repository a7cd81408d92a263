/* One Adam step on a large parameter collection: what nb_optim_step costs per step and per element.
 * bench/adam.py runs torch.optim.Adam on the same problem and compares the two.
 *
 * The collection: --tensors T float32 (or float64) leaves of about N / T elements each, N in all
 * (default one tensor of 1,000,000). Element i of the collection (counting across the tensors in
 * order) starts at p_i = ((37 i) mod 1000) / 1000 - 0.5 and gets the gradient
 * g_i = ((91 i) mod 2000) / 1000 - 1, set once by a backward of sum(p * g) (so d/dp = g exactly);
 * every step then reuses it, as an optimizer step does not touch gradients. Adam with torch's
 * defaults (lr 1e-3, betas 0.9 / 0.999, eps 1e-8, no weight decay; --amsgrad and --weight-decay
 * change that).
 *
 * Each timed step is measured in wall time and in the thread's CPU time; on a machine shared with
 * other work the CPU time is the steadier figure.
 *
 * Check: a fresh collection takes --check-steps steps (default 3) and sum(p * g) (in double) is
 * printed, for adam.py to compare with PyTorch's. Timing: untimed steps for at least
 * --warmup-ms, then --repeats timed steps, each timed alone; the median is reported. */
#define _POSIX_C_SOURCE 200809L

#include "bench.h"

#include <nabla.h>

#include <stdlib.h>

#define MAX_N 100000000L
#define MAX_TENSORS 1000L
#define MAX_REPEATS 100000L

typedef struct options {
    bench_opts c; /* --repeats, --warmup, --warmup-ms, --dtype, --json */
    long n, tensors, check_steps, threads;
    int amsgrad;
    double weight_decay;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--n N] [--tensors T] [--repeats R] [--warmup W] [--warmup-ms MS] [--check-steps S]\n"
            "          [--dtype f32|f64] [--amsgrad] [--weight-decay WD] [--threads N] [--json]\n"
            "  Times nb_optim_step of Adam over N parameters in T tensors; prints the median time of\n"
            "  R timed steps.\n"
            "  --n N            parameters in all, 1..%ld (default 1000000)\n"
            "  --tensors T      split into T tensors, 1..%ld (default 1)\n"
            "  --repeats R      timed steps, 1..%ld (default 200)\n"
            "  --warmup W       untimed steps first, 0..%ld (default 10), and at least\n"
            "  --warmup-ms MS   milliseconds of them, 0..%ld (default 300)\n"
            "  --check-steps S  steps of the check run, 1..1000 (default 3)\n"
            "  --dtype T        f32 (default) or f64\n"
            "  --amsgrad        Adam with amsgrad\n"
            "  --weight-decay WD  L2 weight decay (default 0)\n"
            "  --threads N      nb_set_num_threads(N) (default: the environment's setting)\n"
            "  --json           print one JSON line instead of text\n",
            prog, MAX_N, MAX_TENSORS, MAX_REPEATS, MAX_REPEATS, BENCH_MAX_WARMUP_MS);
}

static int own_option(void *opts, const char *name, const char *v, const char **want)
{
    options *o = opts;
    if (!strcmp(name, "--amsgrad")) {
        o->amsgrad = 1;
        return BENCH_ARG_FLAG;
    }
    if (!strcmp(name, "--n")) return bench_long(v, 1, MAX_N, &o->n);
    if (!strcmp(name, "--threads")) return bench_long(v, 1, 1024, &o->threads);
    if (!strcmp(name, "--tensors")) return bench_long(v, 1, MAX_TENSORS, &o->tensors);
    if (!strcmp(name, "--check-steps")) return bench_long(v, 1, 1000, &o->check_steps);
    if (!strcmp(name, "--weight-decay")) {
        char *end;
        *want = "a number in [0, 1)";
        errno = 0;
        o->weight_decay = v ? strtod(v, &end) : -1;
        int ok = v && !errno && *v && !*end && o->weight_decay >= 0 && o->weight_decay < 1;
        return ok ? BENCH_ARG_VALUE : BENCH_ARG_BAD;
    }
    return BENCH_ARG_UNKNOWN;
}

/* 0 on success, 1 for --help, 2 on a bad argument (after a message on stderr). */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.c = {.repeats = 200, .warmup = 10, .warmup_ms = 300, .max_repeats = MAX_REPEATS, .dtype = NB_F32},
                   .n = 1000000, .tensors = 1, .check_steps = 3};
    int st = bench_parse_args(argc, argv, "bench_adam", usage, &o->c, own_option, o);
    if (o->tensors > o->n) o->tensors = o->n;
    return st;
}

/* p_i and g_i as in the header, computed in the tensor's dtype (as adam.py does in torch). */
static void fill(nb_tensor *t, int64_t first, int grad_values)
{
    int64_t n = nb_tensor_numel(t);
    void *d = nb_tensor_data(t);
    for (int64_t k = 0; k < n; k++) {
        int64_t i = first + k;
        int64_t num = grad_values ? (91 * i) % 2000 : (37 * i) % 1000;
        double off = grad_values ? 1.0 : 0.5;
        if (nb_tensor_dtype(t) == NB_F32)
            ((float *)d)[k] = (float)num / 1000.0f - (float)off;
        else
            ((double *)d)[k] = (double)num / 1000.0 - off;
    }
    nb_tensor_mark_dirty(t);
}

typedef struct bench {
    nb_params *ps;
    nb_optim *opt;
} bench;

static void bench_free(bench *b)
{
    nb_optim_free(b->opt);
    nb_params_free(b->ps);
    *b = (bench){0};
}

/* The collection with its gradients set, and an Adam optimizer over it; 0 on success. */
static int bench_init(bench *b, const options *o, nb_tape *tape)
{
    *b = (bench){0};
    b->ps = nb_params_new();
    if (!b->ps) return -1;
    int64_t first = 0;
    for (long t = 0; t < o->tensors; t++) {
        int64_t len = o->n / o->tensors + (t < o->n % o->tensors);
        char name[32];
        snprintf(name, sizeof name, "p%ld", t);
        nb_tensor *p = nb_params_add(b->ps, name, nb_tensor_zeros(o->c.dtype, NB_SHAPE(len)));
        nb_tensor *g = nb_tensor_zeros(o->c.dtype, NB_SHAPE(len));
        if (!p || !g) {
            nb_tensor_free(g);
            return -1;
        }
        fill(p, first, 0);
        fill(g, first, 1);
        /* d sum(p * g) / dp = g */
        nb_tensor *l = nb_sum_all(nb_mul(p, g));
        nb_status st = l ? nb_backward(l, NULL, 0) : NB_ERR_STATE;
        nb_tape_reset(tape);
        nb_tensor_free(g);
        if (st != NB_OK) return -1;
        first += len;
    }
    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.amsgrad = o->amsgrad;
    oo.weight_decay = o->weight_decay;
    b->opt = nb_optim_new(NB_ADAM, b->ps, &oo);
    return b->opt ? 0 : -1;
}

/* sum of p_i g_i in double: the loss, which every step lowers by about lr sum |g_i| */
static double check_value(const bench *b)
{
    double s = 0;
    for (int i = 0; i < nb_params_count(b->ps); i++) {
        const nb_tensor *p = nb_params_tensor(b->ps, i), *g = nb_tensor_grad(p);
        for (int64_t k = 0; k < nb_tensor_numel(p); k++) s += nb_tensor_get(p, k) * nb_tensor_get(g, k);
    }
    return s;
}

static int timed_step(void *opt) { return nb_optim_step(opt) != NB_OK; }

int main(int argc, char **argv)
{
    options o;
    int st = parse_args(argc, argv, &o);
    if (st) return st == 1 ? 0 : 2;
    if (o.threads) nb_set_num_threads((int)o.threads);

    nb_tape *tape = nb_tape_new();
    double *samples = malloc((size_t)o.c.repeats * sizeof *samples);
    double *cpu = malloc((size_t)o.c.repeats * sizeof *cpu);
    bench b = {0};
    double check = 0, med = -1, lo = 0, hi = 0, cmed = 0, clo = 0;
    long warm = 0;
    if (tape && samples && cpu && nb_tape_begin(tape) == NB_OK) {
        /* the check run */
        int ok = bench_init(&b, &o, tape) == 0;
        for (long s = 0; ok && s < o.check_steps; s++) ok = nb_optim_step(b.opt) == NB_OK;
        if (ok) check = check_value(&b);
        bench_free(&b);
        /* the timed run, on a fresh collection */
        ok = ok && bench_init(&b, &o, tape) == 0;
        if (ok && (warm = bench_time(timed_step, b.opt, &o.c, samples, cpu)) >= 0) {
            med = bench_median(samples, o.c.repeats);
            lo = samples[0];
            hi = samples[o.c.repeats - 1];
            cmed = bench_median(cpu, o.c.repeats);
            clo = cpu[0];
        }
        bench_free(&b);
        nb_tape_end(tape);
    }
    free(samples);
    free(cpu);
    nb_tape_free(tape);
    if (med < 0 || nb_error_code() != NB_OK) {
        fprintf(stderr, "bench_adam: %s: %s\n", nb_status_name(nb_error_code()),
                nb_error_code() != NB_OK ? nb_error_message() : "out of memory");
        return 1;
    }

    /* bytes moved per element: read p, g, m, v (and vmax); write p, m, v (and vmax) */
    double bytes = (double)nb_dtype_size(o.c.dtype) * (o.amsgrad ? 9 : 7) * (double)o.n;
    if (o.c.json) {
        bench_json_begin("adam");
        bench_json_str("dtype", nb_dtype_name(o.c.dtype));
        bench_json_long("n", o.n);
        bench_json_long("tensors", o.tensors);
        bench_json_long("threads", nb_num_threads());
        bench_json_long("amsgrad", o.amsgrad);
        bench_json_exact("weight_decay", o.weight_decay);
        bench_json_long("repeats", o.c.repeats);
        bench_json_long("warmup_steps", warm);
        bench_json_fixed("median_ns", 1, med);
        bench_json_fixed("min_ns", 1, lo);
        bench_json_fixed("max_ns", 1, hi);
        bench_json_fixed("cpu_median_ns", 1, cmed);
        bench_json_fixed("cpu_min_ns", 1, clo);
        bench_json_long("check_steps", o.check_steps);
        bench_json_exact("check_sum", check);
        bench_json_end();
    } else {
        printf("nabla Adam step: %ld %s parameters in %ld tensor(s)%s, median of %ld steps\n", o.n,
               nb_dtype_name(o.c.dtype), o.tensors, o.amsgrad ? ", amsgrad" : "", o.c.repeats);
        printf("  wall %10.1f us/step (min %.1f, max %.1f), %.3f ns/element, %.1f GB/s\n", med / 1e3, lo / 1e3,
               hi / 1e3, med / (double)o.n, bytes / med);
        printf("  cpu  %10.1f us/step (min %.1f)\n", cmed / 1e3, clo / 1e3);
        printf("  sum(p * g) after %ld steps: %.10g\n", o.check_steps, check);
    }
    return 0;
}
