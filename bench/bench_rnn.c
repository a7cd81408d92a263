/* A recurrent layer at a realistic size: one LSTM or GRU layer (nb_rnn_forward) over x [T, B, input]
 * in float32 by default, forward and backward of sum(out), out being every step's output
 * [T, B, hidden]. Prints the median milliseconds per pass over R passes, for forward + backward and
 * for forward alone. bench/rnn.py runs the same layer with torch.nn.LSTM / torch.nn.GRU and compares.
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
 * (at least --warmup of them and --warmup-ms of work). */
#define _POSIX_C_SOURCE 200809L

#include <nabla.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DIM 100000L
#define MAX_REPEATS 100000L
#define MAX_WARMUP_MS 60000L

typedef struct options {
    nb_rnn_kind kind;
    long input, hidden, steps, batch, repeats, warmup, warmup_ms;
    nb_dtype dtype;
    int json;
} options;

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--kind lstm|gru] [--input I] [--hidden H] [--steps T] [--batch B] [--repeats R]\n"
            "          [--warmup W] [--warmup-ms MS] [--dtype f32|f64] [--json]\n"
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
            "  --json        print one JSON line instead of text\n",
            prog, MAX_DIM, MAX_REPEATS, MAX_REPEATS, MAX_WARMUP_MS);
}

/* A whole decimal number in [lo, hi]. */
static int parse_long(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

/* 0 on success, 1 for --help, 2 on a bad argument (after a message on stderr). */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.kind = NB_LSTM, .input = 64, .hidden = 256, .steps = 50, .batch = 32, .repeats = 20,
                   .warmup = 3, .warmup_ms = 500, .dtype = NB_F32};
    const char *prog = argc > 0 && argv[0] ? argv[0] : "bench_rnn";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char *want = "a whole number in range";
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout, prog);
            return 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        } else if (!strcmp(a, "--kind")) {
            want = "lstm or gru";
            if (v && !strcmp(v, "lstm"))
                o->kind = NB_LSTM;
            else if (v && !strcmp(v, "gru"))
                o->kind = NB_GRU;
            else
                ok = 0;
        } else if (!strcmp(a, "--input")) {
            ok = parse_long(v, 1, MAX_DIM, &o->input);
        } else if (!strcmp(a, "--hidden")) {
            ok = parse_long(v, 1, MAX_DIM, &o->hidden);
        } else if (!strcmp(a, "--steps")) {
            ok = parse_long(v, 1, MAX_DIM, &o->steps);
        } else if (!strcmp(a, "--batch")) {
            ok = parse_long(v, 1, MAX_DIM, &o->batch);
        } else if (!strcmp(a, "--repeats")) {
            ok = parse_long(v, 1, MAX_REPEATS, &o->repeats);
        } else if (!strcmp(a, "--warmup")) {
            ok = parse_long(v, 0, MAX_REPEATS, &o->warmup);
        } else if (!strcmp(a, "--warmup-ms")) {
            ok = parse_long(v, 0, MAX_WARMUP_MS, &o->warmup_ms);
        } else if (!strcmp(a, "--dtype")) {
            want = "f32 or f64";
            if (v && !strcmp(v, "f64"))
                o->dtype = NB_F64;
            else if (v && !strcmp(v, "f32"))
                o->dtype = NB_F32;
            else
                ok = 0;
        } else {
            fprintf(stderr, "%s: unknown argument '%s'\n", prog, a);
            usage(stderr, prog);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "%s: %s needs %s, got '%s'\n", prog, a, want, v ? v : "(nothing)");
            usage(stderr, prog);
            return 2;
        }
        i++; /* the option's value */
    }
    return 0;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[n]; the median. */
static double median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* t[j] = scale sin(a j + b), rounded to t's dtype. */
static void fill_sin(nb_tensor *t, double scale, double a, double b)
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

typedef struct bench {
    nb_tape *tape;
    nb_params *params;
    nb_rnn rnn;
    nb_tensor *x; /* [T, B, input], no gradient */
} bench;

/* One pass; y_out (may be NULL) receives sum(out). 0 on success. */
static int pass(bench *bn, int backward, double *y_out)
{
    nb_params_zero_grad(bn->params);
    nb_tensor *out = NULL;
    if (nb_rnn_forward(&bn->rnn, bn->x, NULL, NULL, &out, NULL) != NB_OK) return -1;
    nb_tensor *y = nb_sum_all(out);
    if (!y) return -1;
    if (y_out) *y_out = nb_tensor_item(y);
    if (backward && nb_backward(y, NULL, 0) != NB_OK) return -1;
    nb_tape_reset(bn->tape);
    return 0;
}

/* Median ms per pass over o->repeats timed passes, after untimed ones; negative on error. */
static double time_passes(bench *bn, const options *o, int backward, double *samples)
{
    double start = now_ns();
    for (long r = 0; r < o->warmup || now_ns() - start < 1e6 * (double)o->warmup_ms; r++)
        if (pass(bn, backward, NULL)) return -1;
    for (long r = 0; r < o->repeats; r++) {
        double t0 = now_ns();
        if (pass(bn, backward, NULL)) return -1;
        samples[r] = now_ns() - t0;
    }
    return median(samples, o->repeats) / 1e6;
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

    bench bn = {0};
    nb_rng rng;
    nb_rng_seed(&rng, 1);
    bn.params = nb_params_new();
    bn.tape = nb_tape_new();
    nb_rnn_opts ro = {.layer = {.dtype = o.dtype}};
    double *samples = malloc((size_t)o.repeats * sizeof *samples);
    int oom = !samples;
    double fb = -1, fw = -1, y = 0, g[4] = {0};
    if (samples && bn.params && bn.tape &&
        nb_rnn_init(&bn.rnn, bn.params, "rnn", o.kind, o.input, o.hidden, 1, &ro, &rng) == NB_OK &&
        (bn.x = nb_tensor_zeros(o.dtype, NB_SHAPE(o.steps, o.batch, o.input))) != NULL &&
        nb_tape_begin(bn.tape) == NB_OK) {
        const nb_rnn_cell *c = &bn.rnn.cell[0];
        double k = 1.0 / sqrt((double)o.hidden);
        fill_sin(c->w_ih, k, 0.7, 0.1);
        fill_sin(c->w_hh, k, 1.3, 0.2);
        fill_sin(c->b_ih, k, 0.9, 0.3);
        fill_sin(c->b_hh, k, 1.1, 0.4);
        fill_sin(bn.x, 1.0, 0.37, 0.5);
        fb = time_passes(&bn, &o, 1, samples);
        if (fb >= 0) fw = time_passes(&bn, &o, 0, samples);
        /* one more pass for the values that rnn.py compares with PyTorch's */
        if (fw >= 0 && pass(&bn, 1, &y) == 0) {
            g[0] = grad_abs_sum(c->w_ih);
            g[1] = grad_abs_sum(c->w_hh);
            g[2] = grad_abs_sum(c->b_ih);
            g[3] = grad_abs_sum(c->b_hh);
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

    const char *kind = o.kind == NB_LSTM ? "lstm" : "gru", *dt = nb_dtype_name(o.dtype);
    if (o.json) {
        printf("{\"bench\": \"rnn\", \"kind\": \"%s\", \"dtype\": \"%s\", \"input\": %ld, \"hidden\": %ld, "
               "\"steps\": %ld, \"batch\": %ld, \"repeats\": %ld, \"warmup\": %ld, \"warmup_ms\": %ld, "
               "\"fwd_bwd_ms\": %.4f, \"fwd_ms\": %.4f, \"y\": %.17g, \"grad_weight_ih\": %.17g, "
               "\"grad_weight_hh\": %.17g, \"grad_bias_ih\": %.17g, \"grad_bias_hh\": %.17g}\n",
               kind, dt, o.input, o.hidden, o.steps, o.batch, o.repeats, o.warmup, o.warmup_ms, fb, fw, y, g[0],
               g[1], g[2], g[3]);
    } else {
        printf("nabla %s, input %ld, hidden %ld, T %ld, batch %ld, %s: median of %ld passes\n", kind, o.input,
               o.hidden, o.steps, o.batch, dt, o.repeats);
        printf("  forward + backward  %10.3f ms\n", fb);
        printf("  forward only        %10.3f ms\n", fw);
        printf("  sum(out) = %.8g; sum |grad|: weight_ih %.8g, weight_hh %.8g, bias_ih %.8g, bias_hh %.8g\n", y,
               g[0], g[1], g[2], g[3]);
    }
    return 0;
}
