/* What the benchmarks share (header only): the clocks, the median, the warm-up-then-time loop, the
 * options every benchmark takes (--repeats, --warmup, --warmup-ms, --dtype, --json, --help) with the
 * parsing of the command line, and the one JSON line that the Python scripts beside them read. */
#ifndef BENCH_H
#define BENCH_H

#include <nabla.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- clocks and the median -------------------------------------------------------------------- */

static inline double bench_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* wall time */
static inline double bench_now_ns(void) { return bench_clock_ns(CLOCK_MONOTONIC); }

/* CPU time of this thread: unlike wall time, not inflated while other processes hold the CPU (the work
 * is all on this thread with OPENBLAS_NUM_THREADS=1); wall time also counts the waits, which grow
 * with the length of what is timed */
static inline double bench_cpu_ns(void) { return bench_clock_ns(CLOCK_THREAD_CPUTIME_ID); }

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[n]; the median. */
static inline double bench_median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- options ---------------------------------------------------------------------------------- */

#define BENCH_MAX_WARMUP_MS 60000L

/* The options every benchmark takes; the benchmark sets the defaults and max_repeats. */
typedef struct bench_opts {
    long repeats;     /* timed runs, 1..max_repeats */
    long warmup;      /* untimed runs first, 0..max_repeats, and at least ... */
    long warmup_ms;   /* ... this many milliseconds of them, 0..BENCH_MAX_WARMUP_MS */
    long max_repeats;
    nb_dtype dtype;   /* f32 or f64 */
    int json;         /* one JSON line instead of text */
} bench_opts;

/* What an option parser made of one argument (and of the one after it, its value). */
enum { BENCH_ARG_UNKNOWN, BENCH_ARG_FLAG, BENCH_ARG_VALUE, BENCH_ARG_BAD };

/* A benchmark's own options: reads argument `name` (and `value`, NULL when name is the last
 * argument) into opts and returns a BENCH_ARG_*; for BENCH_ARG_BAD, *want may say what the option
 * takes (the default: "a whole number in range"). */
typedef int (*bench_arg_fn)(void *opts, const char *name, const char *value, const char **want);

/* A whole decimal number in [lo, hi] into *out: BENCH_ARG_VALUE, else BENCH_ARG_BAD. */
static inline int bench_long(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s) return BENCH_ARG_BAD;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return BENCH_ARG_BAD;
    *out = v;
    return BENCH_ARG_VALUE;
}

/* Parses argv: --help / -h, the common options into *common, the others through own(opts, ...).
 * Returns 0 on success, 1 for --help (the usage printed on stdout), 2 on a bad argument (a message
 * and the usage on stderr). `name` stands for the program when argv[0] is missing. */
static inline int bench_parse_args(int argc, char **argv, const char *name, void (*usage)(FILE *f, const char *prog),
                                   bench_opts *common, bench_arg_fn own, void *opts)
{
    const char *prog = argc > 0 && argv[0] ? argv[0] : name;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char *want = "a whole number in range";
        int r;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout, prog);
            return 1;
        } else if (!strcmp(a, "--json")) {
            common->json = 1;
            r = BENCH_ARG_FLAG;
        } else if (!strcmp(a, "--repeats")) {
            r = bench_long(v, 1, common->max_repeats, &common->repeats);
        } else if (!strcmp(a, "--warmup")) {
            r = bench_long(v, 0, common->max_repeats, &common->warmup);
        } else if (!strcmp(a, "--warmup-ms")) {
            r = bench_long(v, 0, BENCH_MAX_WARMUP_MS, &common->warmup_ms);
        } else if (!strcmp(a, "--dtype")) {
            want = "f32 or f64";
            r = BENCH_ARG_VALUE;
            if (v && !strcmp(v, "f64"))
                common->dtype = NB_F64;
            else if (v && !strcmp(v, "f32"))
                common->dtype = NB_F32;
            else
                r = BENCH_ARG_BAD;
        } else {
            r = own(opts, a, v, &want);
        }
        if (r == BENCH_ARG_UNKNOWN) {
            fprintf(stderr, "%s: unknown argument '%s'\n", prog, a);
            usage(stderr, prog);
            return 2;
        }
        if (r == BENCH_ARG_BAD) {
            fprintf(stderr, "%s: %s needs %s, got '%s'\n", prog, a, want, v ? v : "(nothing)");
            usage(stderr, prog);
            return 2;
        }
        if (r == BENCH_ARG_VALUE) i++; /* the option's value */
    }
    return 0;
}

/* ---- timing ----------------------------------------------------------------------------------- */

/* Runs run(ctx) untimed until it has run at least o->warmup times and for o->warmup_ms
 * milliseconds, then o->repeats times, each timed alone: wall[r] in wall-time ns and, unless cpu is
 * NULL, cpu[r] in CPU ns of the clock cpu_clock (CLOCK_THREAD_CPUTIME_ID: this thread's;
 * CLOCK_PROCESS_CPUTIME_ID: all threads', for work on several threads). run returns non-zero on
 * failure. Returns the number of untimed runs, or -1 on a failure. */
static inline long bench_time_clock(int (*run)(void *ctx), void *ctx, const bench_opts *o, double *wall, double *cpu,
                                    clockid_t cpu_clock)
{
    long warm = 0;
    double start = bench_now_ns();
    for (; warm < o->warmup || bench_now_ns() - start < 1e6 * (double)o->warmup_ms; warm++)
        if (run(ctx)) return -1;
    for (long r = 0; r < o->repeats; r++) {
        double t0 = bench_now_ns(), c0 = cpu ? bench_clock_ns(cpu_clock) : 0;
        if (run(ctx)) return -1;
        if (cpu) cpu[r] = bench_clock_ns(cpu_clock) - c0;
        wall[r] = bench_now_ns() - t0;
    }
    return warm;
}

/* bench_time_clock with this thread's CPU time. */
static inline long bench_time(int (*run)(void *ctx), void *ctx, const bench_opts *o, double *wall, double *cpu)
{
    return bench_time_clock(run, ctx, o, wall, cpu, CLOCK_THREAD_CPUTIME_ID);
}

/* ---- the JSON line ---------------------------------------------------------------------------- */

/* {"bench": "<name>", then the fields in order, then bench_json_end() */
static inline void bench_json_begin(const char *name) { printf("{\"bench\": \"%s\"", name); }
static inline void bench_json_str(const char *key, const char *v) { printf(", \"%s\": \"%s\"", key, v); }
static inline void bench_json_long(const char *key, long v) { printf(", \"%s\": %ld", key, v); }
/* a measured figure, to `decimals` places */
static inline void bench_json_fixed(const char *key, int decimals, double v)
{
    printf(", \"%s\": %.*f", key, decimals, v);
}
/* a value the scripts compare with PyTorch's: every digit (%.17g round-trips a double) */
static inline void bench_json_exact(const char *key, double v) { printf(", \"%s\": %.17g", key, v); }
static inline void bench_json_end(void) { printf("}\n"); }

/* t[j] = scale sin(a j + b), rounded to t's dtype: the closed forms the Python side rebuilds
 * (torchbench.py's sin_form), so both compute the same function. */
static inline void bench_fill_sin(nb_tensor *t, double scale, double a, double b)
{
    void *d = nb_tensor_data(t);
    for (int64_t j = 0; j < nb_tensor_numel(t); j++) {
        double v = scale * sin(a * (double)j + b);
        if (nb_tensor_dtype(t) == NB_F32)
            ((float *)d)[j] = (float)v;
        else
            ((double *)d)[j] = v;
    }
    nb_tensor_mark_dirty(t);
}

#endif
