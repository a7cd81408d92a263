/* Threads: nabla's kernels give the same bits for any number of threads, and so does a short training
 * run (an MLP with dropout, an LSTM, a GRU, Adam) in float32 and float64 with 1, 2 and 3 threads; dropout's
 * counter-based stream keeps its contract (one draw from the generator, the fused op equal to x times
 * the mask, the right keep rate, independent neighbours); the thread knob and its default.
 *
 * The sizes are chosen above the kernels' grain sizes, so that 3 threads really split the work: the
 * test checks that against the grain (src/ops/parallel.h), and fails if a grain grows past them. */
#define _POSIX_C_SOURCE 200809L /* strdup */

#include "nbtest.h"

#include "../src/ops/parallel.h"

#include <stdlib.h>

enum { N_THREADS = 3 };
static const int thread_counts[N_THREADS] = {1, 2, 3};

/* ---- helpers ---------------------------------------------------------------------------------- */

static nb_tensor *leaf(nb_dtype dt, int ndim, const int64_t *shape, double lo, double hi, uint64_t seed)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    nb_tensor *t = nb_tensor_uniform(dt, ndim, shape, lo, hi, &rng);
    nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* A caller-owned copy of t's bytes (NULL for NULL). */
static void *bytes_of(const nb_tensor *t, size_t *len)
{
    *len = 0;
    if (!t) return NULL;
    *len = (size_t)nb_tensor_numel(t) * nb_dtype_size(nb_tensor_dtype(t));
    void *p = malloc(*len ? *len : 1);
    if (p) memcpy(p, nb_tensor_cdata(t), *len);
    return p;
}

/* Results of one run, kept as bytes: up to MAX_OUT tensors. */
enum { MAX_OUT = 64 };
typedef struct run {
    int n;
    void *data[MAX_OUT];
    size_t len[MAX_OUT];
    const char *what[MAX_OUT]; /* owned copies */
} run;

static void keep(run *r, const char *what, const nb_tensor *t)
{
    CHECK(t != NULL, "%s: no result (%s)", what, nb_error_message());
    if (!t || r->n >= MAX_OUT) return;
    r->what[r->n] = strdup(what);
    r->data[r->n] = bytes_of(t, &r->len[r->n]);
    r->n++;
}

static void run_free(run *r)
{
    for (int i = 0; i < r->n; i++) {
        free(r->data[i]);
        free((void *)r->what[i]);
    }
    r->n = 0;
}

/* Every result of b has the same bits as a's. */
static void same_bits(const run *a, const run *b, int threads, const char *label)
{
    CHECK(a->n == b->n && a->n > 0, "%s: %d results with 1 thread, %d with %d", label, a->n, b->n, threads);
    for (int i = 0; i < a->n && i < b->n; i++)
        CHECK(a->len[i] == b->len[i] && memcmp(a->data[i], b->data[i], a->len[i]) == 0,
              "%s: %s differs between 1 and %d threads", label, a->what[i], threads);
}

/* ---- dropout's stream --------------------------------------------------------------------------- */

static void dropout_contract(nb_dtype dt)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    const int64_t n = 200001; /* odd: the last element takes the low half of its pair's bits */
    nb_tensor *x = leaf(dt, NB_SHAPE(n), -2, 2, 11);
    nb_rng r1, r2, r3;
    nb_rng_seed(&r1, 99);
    r2 = r1;
    r3 = r1;
    const double p = 0.3;

    /* the fused op is x times the mask drawn from the same state, bit for bit */
    nb_tensor *y = nb_dropout(x, p, &r1);
    nb_tensor *m = nb_dropout_mask(dt, NB_SHAPE(n), p, &r2);
    nb_tensor *xm = nb_mul(x, m);
    CHECK(y && xm && memcmp(nb_tensor_cdata(y), nb_tensor_cdata(xm), (size_t)n * nb_dtype_size(dt)) == 0,
          "%s: nb_dropout(x) = x * nb_dropout_mask, bit for bit", nb_dtype_name(dt));
    /* each takes exactly one draw */
    nb_rng_u64(&r3);
    CHECK(memcmp(&r1, &r3, sizeof r1) == 0 && memcmp(&r2, &r3, sizeof r2) == 0,
          "%s: nb_dropout and nb_dropout_mask advance the generator by one draw", nb_dtype_name(dt));

    /* values 0 or 1 / (1 - p) in the dtype; the keep rate and independence of neighbours */
    double keepv = dt == NB_F32 ? (double)(float)(1.0 / (1.0 - p)) : 1.0 / (1.0 - p);
    int64_t kept = 0, bad = 0, both_even = 0, both_odd = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = nb_tensor_get(m, i);
        bad += v != 0 && v != keepv;
        kept += v != 0;
        if (i + 1 < n) {
            int pair = v != 0 && nb_tensor_get(m, i + 1) != 0;
            if (i % 2 == 0) both_even += pair; /* the two halves of one output of the stream */
            else both_odd += pair;              /* neighbours from two outputs */
        }
    }
    CHECK(bad == 0, "%s: %lld mask values are neither 0 nor 1/(1-p)", nb_dtype_name(dt), (long long)bad);
    double rate = (double)kept / (double)n, sd = sqrt(p * (1 - p) / (double)n);
    CHECK(fabs(rate - (1 - p)) < 5 * sd, "%s: keep rate %.5f, expected %.5f +- %.5f", nb_dtype_name(dt), rate, 1 - p,
          5 * sd);
    double pairs = (double)(n / 2), q = (1 - p) * (1 - p), psd = sqrt(q * (1 - q) / pairs);
    CHECK(fabs((double)both_even / pairs - q) < 5 * psd && fabs((double)both_odd / pairs - q) < 5 * psd,
          "%s: neighbours both kept %.5f / %.5f of pairs, expected %.5f (independent)", nb_dtype_name(dt),
          (double)both_even / pairs, (double)both_odd / pairs, q);

    /* the gradient of sum(dropout(x)) is the mask */
    nb_rng_seed(&r1, 5);
    r2 = r1;
    nb_tensor *g = NULL;
    nb_tensor *s = nb_sum_all(nb_dropout(x, p, &r1));
    CHECK(s && nb_grad(s, NULL, 1, &x, &g, 0) == NB_OK, "grad of sum(dropout(x))");
    nb_tensor *m2 = nb_dropout_mask(dt, NB_SHAPE(n), p, &r2);
    CHECK(g && m2 && memcmp(nb_tensor_cdata(g), nb_tensor_cdata(m2), (size_t)n * nb_dtype_size(dt)) == 0,
          "%s: d sum(dropout(x)) / dx = the mask", nb_dtype_name(dt));

    /* p = 1 drops everything; p = 0 is x itself and draws nothing */
    nb_tensor *z = nb_dropout(x, 1.0, &r1);
    double zmax = 0;
    for (int64_t i = 0; z && i < n; i++) zmax = fmax(zmax, fabs(nb_tensor_get(z, i)));
    CHECK(z && zmax == 0, "%s: p = 1 gives zeros", nb_dtype_name(dt));
    r2 = r1;
    nb_tensor *same = nb_dropout(x, 0.0, &r1);
    CHECK(same && nb_tensor_cdata(same) == nb_tensor_cdata(x) && memcmp(&r1, &r2, sizeof r1) == 0,
          "p = 0: a view of x, no draw");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
}

/* ---- kernels ---------------------------------------------------------------------------------- */

/* Forward and backward through every kind of kernel on tensors large enough for 3 threads. */
static void kernels_once(nb_dtype dt, run *out)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    const int64_t R = 300, C = 400; /* 120000 elements */
    nb_tensor *a = leaf(dt, NB_SHAPE(R, C), -1, 1, 1), *b = leaf(dt, NB_SHAPE(R, C), 0.5, 2, 2);
    nb_tensor *row = leaf(dt, NB_SHAPE(C), -1, 1, 3), *col = leaf(dt, NB_SHAPE(R, 1), -1, 1, 4);
    nb_tensor *t3 = leaf(dt, NB_SHAPE(30, 80, 50), -1, 1, 5);
    int64_t idx_rows[2 * 300];
    for (int i = 0; i < 600; i++) idx_rows[i] = (i * 37) % R;
    nb_tensor *ridx = nb_tensor_from_data(NB_I64, NB_SHAPE(600), idx_rows);
    int64_t *gi = malloc((size_t)(R * 50) * sizeof *gi);
    for (int64_t i = 0; i < R * 50; i++) gi[i] = (i * 13) % C;
    nb_tensor *gidx = nb_tensor_from_data(NB_I64, NB_SHAPE(R, 50), gi);
    free(gi);
    nb_rng rng;
    nb_rng_seed(&rng, 7);

    /* elementwise and broadcasting */
    nb_tensor *e1 = nb_add(nb_mul(a, b), row);                      /* equal shapes, then [C] broadcast */
    nb_tensor *e2 = nb_div(nb_sub(e1, col), b);                     /* [R, 1] broadcast */
    nb_tensor *e3 = nb_add(nb_tanh(e2), nb_sigmoid(nb_exp(nb_mul_scalar(a, 0.5))));
    nb_tensor *e4 = nb_mul(nb_relu(e3), nb_log(b));
    nb_tensor *e5 = nb_where(nb_gt(a, col), e4, nb_pow(b, nb_abs(a)));
    nb_tensor *e6 = nb_dropout(e5, 0.25, &rng);
    /* reductions */
    int ax0 = 0, ax1 = 1, ax02[2] = {0, 2};
    nb_tensor *s_all = nb_sum_all(e6);
    nb_tensor *s0 = nb_sum(e6, 1, &ax0, 0), *s1 = nb_mean(e6, 1, &ax1, 1);
    nb_tensor *s3 = nb_sum(nb_square(t3), 2, ax02, 0), *s3b = nb_sum(t3, 1, &ax1, 0);
    /* softmax, argmax */
    nb_tensor *sm = nb_softmax(e6, 1), *lsm = nb_log_softmax(e6, 0);
    nb_tensor *am = nb_argmax(e6, 1, 0), *am0 = nb_argmax(e6, 0, 0);
    /* copies: transpose, broadcast, slice, concat, cast; index ops */
    nb_tensor *tr = nb_transpose(e6, 0, 1);
    nb_tensor *bc = nb_broadcast_to(nb_reshape(s0, NB_SHAPE(1, C)), NB_SHAPE(R, C));
    nb_tensor *sl = nb_slice(e6, 1, 1, C, 2);
    nb_tensor *cc = nb_concat(2, (nb_tensor *[]){e6, e4}, 1);
    nb_tensor *cs = nb_cast(nb_cast(e6, dt == NB_F32 ? NB_F64 : NB_F32), dt);
    nb_tensor *is = nb_index_select(e6, 0, ridx);
    nb_tensor *ga = nb_gather(e6, 1, gidx);
    /* one loss over everything, and its gradients */
    nb_tensor *loss = nb_add(nb_add(nb_add(s_all, nb_sum_all(nb_mul(sm, lsm))), nb_sum_all(nb_mul(tr, tr))),
                             nb_add(nb_add(nb_sum_all(nb_mul(bc, e6)), nb_sum_all(nb_square(sl))),
                                    nb_add(nb_add(nb_sum_all(nb_mul(cc, cc)), nb_sum_all(nb_mul(cs, e6))),
                                           nb_add(nb_sum_all(nb_square(is)), nb_sum_all(nb_square(ga))))));
    loss = nb_add(loss, nb_add(nb_sum_all(nb_square(s3)), nb_sum_all(nb_mul(s1, s1))));
    nb_tensor *wrt[5] = {a, b, row, col, t3}, *grads[5] = {0};
    CHECK(loss && nb_grad(loss, NULL, 5, wrt, grads, 0) == NB_OK, "%s: backward (%s)", nb_dtype_name(dt),
          nb_error_message());
    const char *names[] = {"add/mul/broadcast", "sub/div", "tanh/sigmoid/exp", "relu/log", "where/pow",
                           "dropout", "sum all", "sum axis 0", "mean axis 1", "sum axes 0,2", "sum axis 1 of 3-d",
                           "softmax", "log_softmax axis 0", "argmax", "argmax axis 0", "transpose",
                           "broadcast_to", "strided slice", "concat", "cast", "index_select", "gather", "loss",
                           "grad a", "grad b", "grad row", "grad col", "grad t3"};
    nb_tensor *res[] = {e1, e2, e3, e4, e5, e6, s_all, s0, s1, s3, s3b, sm, lsm, am, am0, tr, bc, sl, cc, cs, is, ga,
                        loss, grads[0], grads[1], grads[2], grads[3], grads[4]};
    for (size_t i = 0; i < sizeof res / sizeof res[0]; i++) keep(out, names[i], res[i]);
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(a);
    nb_tensor_free(b);
    nb_tensor_free(row);
    nb_tensor_free(col);
    nb_tensor_free(t3);
    nb_tensor_free(ridx);
    nb_tensor_free(gidx);
}

/* Optimizer updates and clipping on 120000 parameters. */
static void optim_once(nb_dtype dt, run *out)
{
    static const nb_optim_kind kinds[] = {NB_SGD, NB_ADAM, NB_ADAMW, NB_RMSPROP, NB_ADAGRAD};
    static const char *const names[] = {"sgd", "adam", "adamw", "rmsprop", "adagrad"};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        nb_params *ps = nb_params_new();
        nb_tensor *p = nb_params_add(ps, "p", leaf(dt, NB_SHAPE(120000), -1, 1, 20));
        nb_tensor *w = leaf(dt, NB_SHAPE(120000), -2, 2, 21);
        nb_optim_opts o = nb_optim_defaults(kinds[k]);
        o.momentum = kinds[k] == NB_SGD || kinds[k] == NB_RMSPROP ? 0.9 : 0;
        o.amsgrad = kinds[k] == NB_ADAM;
        nb_optim *opt = nb_optim_new(kinds[k], ps, &o);
        nb_tape *tape = nb_tape_new();
        double norm = 0;
        for (int step = 0; step < 3; step++) {
            nb_tape_begin(tape);
            nb_tensor *l = nb_sum_all(nb_mul(nb_square(p), w));
            CHECK(l && nb_backward(l, NULL, 0) == NB_OK, "%s backward", names[k]);
            norm += nb_clip_grad_norm(ps, 50.0);
            CHECK(nb_optim_step(opt) == NB_OK, "%s step", names[k]);
            nb_optim_zero_grad(opt);
            nb_tape_end(tape);
            nb_tape_reset(tape);
        }
        keep(out, names[k], p);
        nb_tape_begin(tape);
        keep(out, "gradient norms", nb_constant(NB_F64, 0, NULL, &norm));
        nb_tape_end(tape);
        nb_tape_free(tape);
        nb_optim_free(opt);
        nb_params_free(ps);
        nb_tensor_free(w);
    }
}

/* ---- a short training run --------------------------------------------------------------------- */

/* An MLP with dropout on a batch of 256, and one-layer LSTM and GRU over 3 steps of batch 128 (the
 * fused recurrent steps), trained together by Adam for 3 steps; out gets every parameter afterwards. */
static void training_once(nb_dtype dt, run *out)
{
    nb_rng rng;
    nb_rng_seed(&rng, 42);
    nb_params *ps = nb_params_new();
    nb_layer_opts lo = {.dtype = dt};
    nb_mlp mlp;
    nb_rnn lstm, gru;
    int64_t sizes[] = {256, 512, 512, 10};
    CHECK(nb_mlp_init(&mlp, ps, "mlp", 4, sizes, NB_ACT_RELU, 0.2, &lo, &rng) == NB_OK, "mlp init");
    nb_rnn_opts ro = {.layer = lo};
    CHECK(nb_rnn_init(&lstm, ps, "lstm", NB_LSTM, 64, 256, 1, &ro, &rng) == NB_OK, "lstm init");
    CHECK(nb_rnn_init(&gru, ps, "gru", NB_GRU, 64, 128, 1, &ro, &rng) == NB_OK, "gru init");
    nb_tensor *x = nb_tensor_uniform(dt, NB_SHAPE(256, 256), -1, 1, &rng);
    nb_tensor *xs = nb_tensor_uniform(dt, NB_SHAPE(3, 128, 64), -1, 1, &rng);
    int64_t lab[256];
    for (int i = 0; i < 256; i++) lab[i] = (i * 7) % 10;
    nb_tensor *y = nb_tensor_from_data(NB_I64, NB_SHAPE(256), lab);
    nb_optim *opt = nb_optim_new(NB_ADAM, ps, NULL);
    nb_tape *tape = nb_tape_new();
    for (int step = 0; step < 3; step++) {
        nb_tape_begin(tape);
        nb_tensor *seq = NULL, *seq2 = NULL;
        nb_tensor *l1 = nb_cross_entropy(nb_mlp_forward(&mlp, x), y, NULL);
        nb_status st = nb_rnn_forward(&lstm, xs, NULL, NULL, &seq, NULL);
        if (st == NB_OK) st = nb_rnn_forward(&gru, xs, NULL, NULL, &seq2, NULL);
        nb_tensor *loss = st == NB_OK ? nb_add(nb_add(l1, nb_mean_all(nb_square(seq))), nb_mean_all(nb_square(seq2)))
                                      : NULL;
        CHECK(loss && nb_backward(loss, NULL, 0) == NB_OK, "%s training step %d (%s)", nb_dtype_name(dt), step,
              nb_error_message());
        CHECK(nb_optim_step(opt) == NB_OK, "adam step");
        nb_optim_zero_grad(opt);
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
    for (int i = 0; i < nb_params_count(ps); i++) keep(out, nb_params_name(ps, i), nb_params_tensor(ps, i));
    nb_tape_free(tape);
    nb_optim_free(opt);
    nb_params_free(ps);
    nb_tensor_free(x);
    nb_tensor_free(xs);
    nb_tensor_free(y);
}

/* Runs f with nabla's kernels on 1, 2 and 3 threads and OpenBLAS on one, and compares the bits: the
 * requirement. Then once more with the knob (OpenBLAS on 2 and 3 threads as well) and reports whether
 * OpenBLAS's own products change the bits with its thread count (not a requirement on nabla). */
static void across_threads(void (*f)(nb_dtype, run *), nb_dtype dt, const char *label)
{
    run base = {0};
    for (int i = 0; i < N_THREADS; i++) {
        nb_set_num_threads(1);
        nb__set_kernel_threads(thread_counts[i]);
        run r = {0};
        f(dt, &r);
        if (i == 0)
            base = r;
        else {
            same_bits(&base, &r, thread_counts[i], label);
            run_free(&r);
        }
    }
    for (int i = 1; i < N_THREADS; i++) {
        nb_set_num_threads(thread_counts[i]);
        CHECK(nb_num_threads() == thread_counts[i], "nb_num_threads() = %d after setting %d", nb_num_threads(),
              thread_counts[i]);
        run r = {0};
        f(dt, &r);
        int same = r.n == base.n;
        for (int j = 0; j < r.n && same; j++) same = r.len[j] == base.len[j] && !memcmp(r.data[j], base.data[j], r.len[j]);
        printf("%s with OpenBLAS on %d threads too: %s\n", label, thread_counts[i],
               same ? "the same bits" : "different bits (OpenBLAS's products depend on its thread count)");
        run_free(&r);
    }
    run_free(&base);
    nb_set_num_threads(0);
    CHECK_NO_ERROR();
}

/* nb_set_flush_denormal: a denormal in and out of an op split over 3 threads (every thread's part)
 * becomes 0 with the mode on, in both dtypes, and stays itself with it off again */
static void flush_denormal(void)
{
    nb_set_num_threads(3);
    for (int d = 0; d < 2; d++) {
        const nb_dtype dt = d ? NB_F64 : NB_F32;
        const double den = d ? 1e-310 : 1e-40; /* below DBL_MIN / FLT_MIN */
        nb_tensor *x = nb_tensor_zeros(dt, NB_SHAPE(120000));
        for (int64_t i = 0; i < 120000; i++) nb_tensor_set(x, i, den);
        CHECK(nb_tensor_get(x, 7) != 0, "%s: the denormal is stored", nb_dtype_name(dt));
        { /* the pool's threads exist before the mode is set (they do not inherit it then) */
            nb_tape *t = nb_tape_new();
            nb_tape_begin(t);
            CHECK(nb_mul_scalar(x, 1.0) != NULL, "warm-up");
            nb_tape_end(t);
            nb_tape_free(t);
        }
        for (int mode = 1; mode >= 0; mode--) {
            CHECK(nb_set_flush_denormal(mode) == 1, "flush mode available on this CPU");
            nb_tape *t = nb_tape_new();
            nb_tape_begin(t);
            nb_tensor *y = nb_mul_scalar(x, 1.0); /* in: a denormal (DAZ); out: a denormal (FTZ) */
            nb_tensor *small = nb_tensor_full(dt, 0, NULL, 1e-20), *z = nb_mul_scalar(small, 1e-20);
            /* the bits, not nb_tensor_get: with denormals-are-zero on this thread, converting one to
             * double reads 0 */
            int64_t nonzero = 0;
            const unsigned char *yb = y ? nb_tensor_cdata(y) : NULL;
            const size_t es = nb_dtype_size(dt);
            for (int64_t i = 0; yb && i < 120000; i++) {
                int any = 0;
                for (size_t b = 0; b < es; b++) any |= yb[(size_t)i * es + b];
                nonzero += any != 0;
            }
            float zf = -1;
            if (z && !d) memcpy(&zf, nb_tensor_cdata(z), sizeof zf);
            uint32_t zb = 0;
            memcpy(&zb, &zf, sizeof zb);
            const double tiny = zb ? 1 : 0; /* 1e-20 * 1e-20 in float32: a denormal, or 0 flushed */
            if (mode)
                CHECK(y && nonzero == 0 && (d || tiny == 0), "%s flushed: %lld of 120000 not zero, 1e-20 * 1e-20 not zero: %g",
                      nb_dtype_name(dt), (long long)nonzero, tiny);
            else
                CHECK(y && nonzero == 120000 && (d || tiny != 0), "%s kept: %lld of 120000 not zero, 1e-20 * 1e-20 not zero: %g",
                      nb_dtype_name(dt), (long long)nonzero, tiny);
            nb_tape_end(t);
            nb_tape_free(t);
            nb_tensor_free(small);
        }
        nb_tensor_free(x);
    }
    nb_set_num_threads(0);
    CHECK_NO_ERROR();
}

int main(void)
{
    flush_denormal();
    /* the knob: the default comes back with n < 1 */
    int def = nb_num_threads();
    CHECK(def >= 1, "default thread count %d", def);
    nb_set_num_threads(3);
    CHECK(nb_num_threads() == 3, "3 threads set");
    /* the sizes below make 3 threads really split the work (each kernel's grain) */
    CHECK(nb__threads_for(120000, NB_GRAIN_MEM) == 3 && nb__threads_for(120000, NB_GRAIN_MATH) == 3,
          "120000 elements are split over 3 threads (grains %lld, %lld)", (long long)NB_GRAIN_MEM,
          (long long)NB_GRAIN_MATH);
    CHECK(nb__threads_for(1000, NB_GRAIN_MATH) == 1, "1000 elements stay on one thread");
    nb_set_num_threads(0);
    CHECK(nb_num_threads() == def, "n < 1 restores the default %d (got %d)", def, nb_num_threads());

    for (int d = 0; d < 2; d++) {
        nb_dtype dt = d ? NB_F64 : NB_F32;
        dropout_contract(dt);
        across_threads(kernels_once, dt, d ? "kernels f64" : "kernels f32");
        across_threads(optim_once, dt, d ? "optimizers f64" : "optimizers f32");
        across_threads(training_once, dt, d ? "training f64" : "training f32");
    }
    return nbt_report("threads");
}
