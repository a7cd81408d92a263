/* Data-parallel training over MPI (nabla/dist.h). Run under mpirun (tests/mpirun.sh) with 2 and 3
 * ranks; every rank also runs the single-process reference itself, so each compares its replica
 * with the run of one process with the same global batch.
 *
 * What the bound is: after 50 steps of an MLP and 20 of an LSTM (float64, Adam), every rank holds
 * bit-identical parameters (the same bits reduced everywhere), and they equal the single-process run
 * to 1e-12 absolute. The only difference is the order of summation: one process sums the batch's
 * per-sample gradients in one pass; N ranks each sum their part, weight it by its row count and the
 * parts are summed and divided by the total (a few ulps per step, about 1e-16 relative); Adam's
 * normalised steps keep such differences at that scale (measured: printed as "max |diff|").
 *
 *   test_dist                     every check below, on each rank
 *   test_dist --resume-save DIR   25 steps, rank 0 writes DIR/resume.safetensors
 *   test_dist --resume-load DIR   load it (with another number of ranks), 25 more steps, compare with
 *                                 50 uninterrupted single-process steps
 *   test_dist --fail DIR          rank 1 fails at step 5 and ends the job (nb_dist_abort) while rank
 *                                 0 saves a checkpoint every step; tests/dist_failure.sh checks the rest
 *   test_dist --hang              rank 1 stops at step 3; rank 0 times out (2 s), reports and aborts
 *   test_dist --check-ckpt DIR    (no MPI) the checkpoint left by --fail loads and is complete
 *
 * Without MPI in the build, it checks that every function reports NB_ERR_UNSUPPORTED. */
#define _POSIX_C_SOURCE 200809L
#include "nbtest.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#ifdef NB_TEST_MPI
#include <mpi.h>
#endif

static nb_dist *D;
static int R, N;

/* ---- an allocator that counts, and checks the size each free names --------------------------- */

static long g_allocs, g_frees, g_bad_sizes;

static void *count_alloc(size_t size, void *user)
{
    g_allocs++;
    size_t *p = malloc(size + 16);
    if (!p) return NULL;
    *p = size;
    return (char *)p + 16;
}

static void count_free(void *ptr, size_t size, void *user)
{
    if (!ptr) return;
    size_t *p = (size_t *)((char *)ptr - 16);
    g_frees++;
    g_bad_sizes += *p != size;
    free(p);
}

static void *count_realloc(void *ptr, size_t old_size, size_t new_size, void *user)
{
    if (!ptr) return count_alloc(new_size, user);
    size_t *p = (size_t *)((char *)ptr - 16);
    g_allocs++;
    g_frees++;
    g_bad_sizes += *p != old_size;
    size_t *q = realloc(p, new_size + 16);
    if (!q) {
        g_allocs--;
        g_frees--;
        return NULL;
    }
    *q = new_size;
    return (char *)q + 16;
}

/* ---- models and data -------------------------------------------------------------------------- */

enum { IN = 6, CLASSES = 3, SAMPLES = 100, BATCH = 12 };

typedef struct mlp_run {
    nb_params *p;
    nb_mlp mlp;
    nb_optim *opt;
    nb_rng rng;
} mlp_run;

static void mlp_make(mlp_run *m, uint64_t seed)
{
    nb_rng_seed(&m->rng, seed);
    m->p = nb_params_new();
    nb_layer_opts lo = {.dtype = NB_F64};
    const int64_t sizes[] = {IN, 16, 12, CLASSES};
    CHECK(nb_mlp_init(&m->mlp, m->p, "mlp", 4, sizes, NB_ACT_TANH, 0.0, &lo, &m->rng) == NB_OK, "mlp: %s",
          nb_error_message());
    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.lr = 1e-2;
    m->opt = nb_optim_new(NB_ADAM, m->p, &oo);
}

static void mlp_free(mlp_run *m)
{
    nb_optim_free(m->opt);
    nb_params_free(m->p);
}

/* SAMPLES inputs [SAMPLES, IN] and class labels, the same on every rank */
static nb_dataset *mlp_data(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    nb_tensor *x = nb_tensor_normal(NB_F64, NB_SHAPE(SAMPLES, IN), 0, 1, &rng);
    nb_tensor *y = nb_tensor_zeros(NB_I64, NB_SHAPE(SAMPLES));
    for (int i = 0; i < SAMPLES; i++) ((int64_t *)nb_tensor_data(y))[i] = (int64_t)nb_rng_below(&rng, CLASSES);
    return nb_dataset_new(x, y);
}

/* Draw the next batch (a new epoch when one ends). */
static int next_batch(nb_batches *b, nb_tensor **x, nb_tensor **y)
{
    int r = nb_batches_next(b, x, y);
    if (r == 0) r = nb_batches_next(b, x, y);
    return r;
}

/* One step on the current tape: mean cross-entropy over the rows drawn, scaled by `scale`; with an
 * averager, weighted by the rows and reduced. Returns 0 on failure. */
static int mlp_step(mlp_run *m, nb_batches *b, nb_ddp *g, double scale, int do_step)
{
    nb_tensor *x, *y;
    if (next_batch(b, &x, &y) != 1) return 0;
    int64_t rows = nb_tensor_dim(x, 0);
    if (g && nb_ddp_set_samples(g, (double)rows) != NB_OK) return 0;
    if (rows > 0) {
        nb_tensor *loss = nb_mul_scalar(nb_cross_entropy(nb_mlp_forward(&m->mlp, x), y, NULL), scale);
        if (!loss || nb_backward(loss, NULL, 0) != NB_OK) return 0;
    }
    if (!do_step) return 1;
    if (g && nb_ddp_finish(g) != NB_OK) return 0;
    if (nb_optim_step(m->opt) != NB_OK) return 0;
    nb_optim_zero_grad(m->opt);
    return 1;
}

/* steps of the single-process reference: batch BATCH, unsharded */
static void mlp_reference(mlp_run *m, nb_dataset *data, nb_tape *tape, int steps)
{
    mlp_make(m, 42);
    nb_batches *b = nb_batches_new(data, BATCH, 1, 0, 9);
    for (int s = 0; s < steps; s++) {
        nb_tape_begin(tape);
        CHECK(mlp_step(m, b, NULL, 1.0, 1), "reference step %d: %s", s, nb_error_message());
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
    nb_batches_free(b);
}

/* The largest |a - b| over two collections of the same layout. */
static double max_diff(const nb_params *a, const nb_params *b)
{
    double m = 0;
    for (int i = 0; i < nb_params_count(a); i++) {
        const nb_tensor *s = nb_params_tensor(a, i), *t = nb_params_tensor(b, i);
        for (int64_t k = 0; k < nb_tensor_numel(s); k++) m = fmax(m, fabs(nb_tensor_get(s, k) - nb_tensor_get(t, k)));
    }
    return m;
}

/* Every rank holds rank 0's bits: rank 0's values broadcast into copies and compared byte for byte,
 * and the library's own check. */
static void check_identical(const nb_params *p, const char *what)
{
    int differ = 0;
    for (int i = 0; i < nb_params_count(p); i++) {
        nb_tensor *t = nb_params_tensor(p, i), *c = nb_tensor_clone(t);
        CHECK(nb_dist_broadcast(D, c, 0) == NB_OK, "%s: broadcast: %s", what, nb_error_message());
        size_t bytes = (size_t)nb_tensor_numel(t) * nb_dtype_size(nb_tensor_dtype(t));
        differ += memcmp(nb_tensor_cdata(c), nb_tensor_cdata(t), bytes) != 0;
        nb_tensor_free(c);
    }
    CHECK(differ == 0, "%s: rank %d: %d tensors differ from rank 0's", what, R, differ);
    CHECK(nb_dist_check_params(D, p) == NB_OK, "%s: %s", what, nb_error_message());
}

/* ---- the training runs ------------------------------------------------------------------------ */

/* 50 steps of the MLP, sharded over the ranks, against the single-process run. Small buckets, so
 * that several are in flight and the last batch of each epoch (4 rows) splits unevenly over 3. */
static void test_mlp(nb_dataset *data, nb_tape *tape, int64_t first_bucket, int64_t bucket, int no_overlap)
{
    mlp_run ref, m;
    mlp_reference(&ref, data, tape, 50);
    mlp_make(&m, 42);
    nb_ddp *g = nb_ddp_new(D, m.p, &(nb_ddp_opts){first_bucket, bucket, no_overlap});
    CHECK(g != NULL, "nb_ddp_new: %s", nb_error_message());
    nb_batches *b = nb_batches_new(data, BATCH, 1, 0, 9);
    CHECK(nb_batches_set_shard(b, R, N) == NB_OK, "shard: %s", nb_error_message());
    int ok = 1;
    for (int s = 0; s < 50 && ok; s++) {
        nb_tape_begin(tape);
        ok = mlp_step(&m, b, g, 1.0, 1);
        CHECK(ok, "step %d: %s", s, nb_error_message());
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
    double diff = max_diff(m.p, ref.p);
    char what[96];
    snprintf(what, sizeof what, "MLP, buckets %lld/%lld%s", (long long)first_bucket, (long long)bucket,
             no_overlap ? ", no overlap" : "");
    if (R == 0) printf("%s: %d buckets, 50 steps on %d ranks: max |diff| from one process %.3g\n", what,
                       nb_ddp_bucket_count(g), N, diff);
    CHECK(diff <= 1e-12, "%s: rank %d differs from the single-process run by %.3g", what, R, diff);
    check_identical(m.p, what);
    nb_ddp_stats st;
    nb_ddp_get_stats(g, &st);
    int nb = nb_ddp_bucket_count(g);
    CHECK(st.steps == 50 && st.buckets_in_backward + st.buckets_at_finish == 50 * nb, "%s: %lld steps, %lld + %lld buckets",
          what, (long long)st.steps, (long long)st.buckets_in_backward, (long long)st.buckets_at_finish);
    if (no_overlap) CHECK(st.buckets_in_backward == 0, "%s: %lld buckets started in backward", what, (long long)st.buckets_in_backward);
    /* every part has rows here (the 4-row batch splits 1, 1, 2 on 3 ranks): every parameter gets its
     * gradient in the backward, so every bucket starts there */
    else CHECK(st.buckets_in_backward == 50 * nb, "%s: only %lld of %lld buckets started during backward", what,
               (long long)st.buckets_in_backward, (long long)(50 * nb));
    nb_batches_free(b);
    nb_ddp_free(g);
    mlp_free(&m);
    mlp_free(&ref);
}

/* 20 steps of an LSTM regression (batch-first sequences, last hidden state -> linear head). */
enum { T = 5, LIN = 3, HID = 8, LSAMPLES = 30, LBATCH = 6 };

typedef struct lstm_run {
    nb_params *p;
    nb_rnn rnn;
    nb_linear head;
    nb_optim *opt;
    nb_rng rng;
} lstm_run;

static void lstm_make(lstm_run *m)
{
    nb_rng_seed(&m->rng, 5);
    m->p = nb_params_new();
    nb_rnn_opts ro = {.layer = {.dtype = NB_F64}, .batch_first = 1};
    CHECK(nb_rnn_init(&m->rnn, m->p, "lstm", NB_LSTM, LIN, HID, 1, &ro, &m->rng) == NB_OK, "lstm: %s", nb_error_message());
    CHECK(nb_linear_init(&m->head, m->p, "head", HID, 1, &ro.layer, &m->rng) == NB_OK, "head: %s", nb_error_message());
    nb_optim_opts oo = nb_optim_defaults(NB_ADAM);
    oo.lr = 1e-2;
    m->opt = nb_optim_new(NB_ADAM, m->p, &oo);
}

static int lstm_step(lstm_run *m, nb_batches *b, nb_ddp *g)
{
    nb_tensor *x, *y;
    if (next_batch(b, &x, &y) != 1) return 0;
    int64_t rows = nb_tensor_dim(x, 0);
    if (g && nb_ddp_set_samples(g, (double)rows) != NB_OK) return 0;
    nb_rnn_state last;
    if (nb_rnn_forward(&m->rnn, x, NULL, NULL, NULL, &last) != NB_OK) return 0;
    nb_tensor *h = nb_reshape(last.h, NB_SHAPE(rows, HID));
    nb_tensor *loss = nb_mse_loss(nb_linear_forward(&m->head, h), y, NB_REDUCE_MEAN);
    if (!loss || nb_backward(loss, NULL, 0) != NB_OK) return 0;
    if (g && nb_ddp_finish(g) != NB_OK) return 0;
    if (nb_optim_step(m->opt) != NB_OK) return 0;
    nb_optim_zero_grad(m->opt);
    return 1;
}

static void test_lstm(nb_tape *tape)
{
    nb_rng rng;
    nb_rng_seed(&rng, 11);
    nb_tensor *xs = nb_tensor_normal(NB_F64, NB_SHAPE(LSAMPLES, T, LIN), 0, 1, &rng);
    nb_tensor *ys = nb_tensor_normal(NB_F64, NB_SHAPE(LSAMPLES, 1), 0, 1, &rng);
    nb_dataset *data = nb_dataset_new(xs, ys);
    lstm_run ref, m;
    lstm_make(&ref);
    lstm_make(&m);
    nb_ddp *g = nb_ddp_new(D, m.p, NULL); /* default buckets: everything in the first */
    CHECK(g && nb_ddp_bucket_count(g) == 1, "nb_ddp_new: %s", nb_error_message());
    nb_batches *rb = nb_batches_new(data, LBATCH, 1, 0, 3), *b = nb_batches_new(data, LBATCH, 1, 0, 3);
    nb_batches_set_shard(b, R, N);
    for (int s = 0; s < 20; s++) {
        nb_tape_begin(tape);
        CHECK(lstm_step(&ref, rb, NULL), "reference step %d: %s", s, nb_error_message());
        nb_tape_reset(tape);
        CHECK(lstm_step(&m, b, g), "step %d: %s", s, nb_error_message());
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
    double diff = max_diff(m.p, ref.p);
    if (R == 0) printf("LSTM: 20 steps on %d ranks: max |diff| from one process %.3g\n", N, diff);
    CHECK(diff <= 1e-12, "LSTM: rank %d differs from the single-process run by %.3g", R, diff);
    check_identical(m.p, "LSTM");
    nb_batches_free(rb);
    nb_batches_free(b);
    nb_ddp_free(g);
    nb_optim_free(m.opt);
    nb_optim_free(ref.opt);
    nb_params_free(m.p);
    nb_params_free(ref.p);
    nb_dataset_free(data);
}

/* Gradient accumulation: two micro-steps of global batch 6 (sync off for the first) equal one
 * single-process step of batch 12, and only the last micro-step reduces. */
static void test_accumulation(nb_tape *tape)
{
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    nb_tensor *x = nb_tensor_normal(NB_F64, NB_SHAPE(96, IN), 0, 1, &rng);
    nb_tensor *y = nb_tensor_zeros(NB_I64, NB_SHAPE(96));
    for (int i = 0; i < 96; i++) ((int64_t *)nb_tensor_data(y))[i] = (int64_t)nb_rng_below(&rng, CLASSES);
    nb_dataset *data = nb_dataset_new(x, y);
    mlp_run ref, m;
    mlp_make(&ref, 42);
    mlp_make(&m, 42);
    nb_ddp *g = nb_ddp_new(D, m.p, &(nb_ddp_opts){.first_bucket_bytes = 256, .bucket_bytes = 1024});
    CHECK(g != NULL, "nb_ddp_new: %s", nb_error_message());
    nb_batches *rb = nb_batches_new(data, 12, 1, 0, 4), *b = nb_batches_new(data, 6, 1, 0, 4);
    nb_batches_set_shard(b, R, N);
    for (int s = 0; s < 10; s++) {
        nb_tape_begin(tape);
        CHECK(mlp_step(&ref, rb, NULL, 1.0, 1), "reference step %d: %s", s, nb_error_message());
        nb_tape_reset(tape);
        /* each micro-batch's mean, halved: the two add up to the mean over both */
        CHECK(nb_ddp_set_sync(g, 0) == NB_OK && mlp_step(&m, b, NULL, 0.5, 0), "micro-step 1 of step %d: %s", s,
              nb_error_message());
        nb_tape_reset(tape);
        CHECK(nb_ddp_set_sync(g, 1) == NB_OK && mlp_step(&m, b, g, 0.5, 1), "micro-step 2 of step %d: %s", s,
              nb_error_message());
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
    double diff = max_diff(m.p, ref.p);
    if (R == 0) printf("accumulation: 10 steps of 2 micro-steps on %d ranks: max |diff| from one process %.3g\n", N, diff);
    CHECK(diff <= 1e-12, "accumulation: rank %d differs from the single-process run by %.3g", R, diff);
    check_identical(m.p, "accumulation");
    nb_ddp_stats st;
    nb_ddp_get_stats(g, &st);
    int64_t nb = nb_ddp_bucket_count(g);
    CHECK(nb > 1 && st.steps == 10 && st.buckets_in_backward + st.buckets_at_finish == 10 * nb,
          "accumulation: %lld reductions of %lld buckets, expected 10 of %lld (one per step, not per micro-step)",
          (long long)st.steps, (long long)(st.buckets_in_backward + st.buckets_at_finish), (long long)(10 * nb));
    nb_ddp_free(g);
    mlp_free(&m);
    mlp_free(&ref);
    nb_batches_free(rb);
    nb_batches_free(b);
    nb_dataset_free(data);
}

/* ---- pieces ----------------------------------------------------------------------------------- */

/* Same start everywhere: parameters and optimizer state from a root. */
static void test_broadcast(nb_tape *tape)
{
    /* different seeds per rank: the replicas differ, and an averager refuses them */
    mlp_run m, want;
    mlp_make(&m, 100 + (uint64_t)R);
    mlp_make(&want, 100 + (uint64_t)(N - 1));
    CHECK_ERROR(nb_dist_check_params(D, m.p) != NB_OK, NB_ERR_STATE, "differ between the ranks, the first mlp.0.weight");
    CHECK_ERROR(nb_ddp_new(D, m.p, NULL) == NULL, NB_ERR_STATE, "replicas start from different values");
    CHECK(nb_dist_broadcast_params(D, m.p, N - 1) == NB_OK, "broadcast: %s", nb_error_message());
    CHECK(max_diff(m.p, want.p) == 0, "after the broadcast from rank %d rank %d differs from its values", N - 1, R);
    check_identical(m.p, "broadcast parameters");

    /* optimizer state: only rank 0 steps (on its own gradients), then rank 0's state goes everywhere */
    if (R == 0) {
        nb_tape_begin(tape);
        for (int s = 0; s < 3; s++) {
            nb_tensor *loss = nb_sum_all(nb_square(nb_mlp_forward(&m.mlp, nb_full(NB_F64, NB_SHAPE(2, IN), 0.3))));
            CHECK(loss && nb_backward(loss, NULL, 0) == NB_OK && nb_optim_step(m.opt) == NB_OK, "rank 0 step: %s",
                  nb_error_message());
            nb_optim_zero_grad(m.opt);
            nb_tape_reset(tape);
        }
        nb_tape_end(tape);
        nb_optim_set_lr(m.opt, 0.125);
    }
    CHECK(nb_dist_broadcast_optim(D, m.opt, 0) == NB_OK, "broadcast optim: %s", nb_error_message());
    CHECK(nb_dist_broadcast_params(D, m.p, 0) == NB_OK, "broadcast params: %s", nb_error_message());
    CHECK(nb_optim_steps(m.opt) == 3 && nb_optim_lr(m.opt) == 0.125 && nb_optim_param_steps(m.opt, 0) == 3,
          "rank %d: steps %lld, lr %g, parameter 0's steps %lld", R, (long long)nb_optim_steps(m.opt), nb_optim_lr(m.opt),
          (long long)nb_optim_param_steps(m.opt, 0));
    int differ = 0;
    for (int i = 0; i < nb_optim_state_count(m.opt); i++) {
        nb_tensor *t = nb_optim_state_tensor(m.opt, i), *c = nb_tensor_clone(t);
        nb_dist_broadcast(D, c, 0);
        differ += memcmp(nb_tensor_cdata(c), nb_tensor_cdata(t), (size_t)nb_tensor_numel(t) * sizeof(double)) != 0;
        differ += R > 0 && nb_tensor_get(t, 0) == 0 && nb_tensor_get(t, 1) == 0; /* it was zeros there */
        nb_tensor_free(c);
    }
    CHECK(differ == 0, "rank %d: %d optimizer state tensors differ from rank 0's", R, differ);
    check_identical(m.p, "parameters after rank 0's steps");

    /* a collection that differs in layout is refused on every rank (no rank waits) */
    if (R == 1) nb_params_add(m.p, "extra", nb_tensor_zeros(NB_F64, NB_SHAPE(2)));
    CHECK_ERROR(nb_dist_broadcast_params(D, m.p, 0) != NB_OK, NB_ERR_SHAPE, "differ between the ranks");
    CHECK_ERROR(nb_dist_check_params(D, m.p) != NB_OK, NB_ERR_SHAPE, "differ between the ranks");
    CHECK_ERROR(nb_ddp_new(D, m.p, NULL) == NULL, NB_ERR_SHAPE, "differ between the ranks");
    nb_tensor *t = nb_tensor_zeros(NB_F64, NB_SHAPE(R == 1 ? 3 : 2));
    CHECK_ERROR(nb_dist_broadcast(D, t, 0) != NB_OK, NB_ERR_SHAPE, "dtypes or shapes");
    CHECK_ERROR(nb_dist_broadcast(D, t, N) != NB_OK, NB_ERR_ARG, "is not a rank");
    nb_tensor_free(t);
    mlp_free(&m);
    mlp_free(&want);
}

/* loss = sum_i c_i * sum(p_i * w_i) over the parameters listed (c depends on the rank), so each
 * gradient is known: c_i * w_i. */
static nb_status linear_loss(nb_tape *tape, int n, nb_tensor **p, const double *c)
{
    nb_tape_begin(tape);
    nb_tensor *loss = NULL;
    for (int i = 0; i < n; i++) {
        nb_tensor *w = nb_full_like(p[i], 1.0);
        nb_tensor *term = nb_mul_scalar(nb_sum_all(nb_mul(nb_cast(p[i], NB_F64), nb_cast(w, NB_F64))), c[i]);
        loss = loss ? nb_add(loss, term) : term;
    }
    nb_status st = loss ? nb_backward(loss, NULL, 0) : nb_error_code();
    nb_tape_end(tape);
    nb_tape_reset(tape);
    return st;
}

/* Bucket boundaries: a bucket of one scalar, a parameter larger than a bucket, a change of dtype, a
 * buffer left out; the averages that come back. */
static void test_buckets(nb_tape *tape)
{
    nb_params *p = nb_params_new();
    nb_params_add(p, "big", nb_tensor_full(NB_F64, NB_SHAPE(300), 0.5));
    nb_params_add(p, "a", nb_tensor_full(NB_F64, NB_SHAPE(2, 5), 0.5));
    nb_params_add(p, "f", nb_tensor_full(NB_F32, NB_SHAPE(4), 0.5));
    nb_params_add(p, "b", nb_tensor_full(NB_F64, NB_SHAPE(5), 0.5));
    nb_params_add_buffer(p, "buf", nb_tensor_full(NB_F64, NB_SHAPE(3), 1.0));
    nb_params_add(p, "s", nb_tensor_full(NB_F64, 0, NULL, 0.5));
    for (int no_overlap = 0; no_overlap <= 1; no_overlap++) {
        nb_ddp *g = nb_ddp_new(D, p, &(nb_ddp_opts){.first_bucket_bytes = 8, .bucket_bytes = 200, .no_overlap = no_overlap});
        CHECK(g != NULL, "nb_ddp_new: %s", nb_error_message());
        if (!g) break;
        /* reverse order s, b, f, a, big: [s] fills the 8-byte first bucket; b (40 bytes) starts the next,
         * f (f32) one of its own, a (80 bytes) too (back to f64), big (2400 bytes > 200) its own */
        const int want[] = {4, 3, 2, 1, -1, 0}, nb = 5;
        const int64_t bytes[] = {8, 40, 16, 80, 2400};
        CHECK(nb_ddp_bucket_count(g) == nb, "%d buckets, expected %d", nb_ddp_bucket_count(g), nb);
        for (int i = 0; i < 6; i++)
            CHECK(nb_ddp_bucket_of(g, i) == want[i], "%s in bucket %d, expected %d", nb_params_name(p, i),
                  nb_ddp_bucket_of(g, i), want[i]);
        for (int k = 0; k < nb; k++)
            CHECK(nb_ddp_bucket_bytes(g, k) == bytes[k], "bucket %d: %lld bytes, expected %lld", k,
                  (long long)nb_ddp_bucket_bytes(g, k), (long long)bytes[k]);
        /* rank r's gradient of parameter i is c_i = (r + 1) (i + 1); weights r + 1 */
        nb_tensor *ps[5] = {nb_params_find(p, "big"), nb_params_find(p, "a"), nb_params_find(p, "f"),
                            nb_params_find(p, "b"), nb_params_find(p, "s")};
        double c[5];
        for (int i = 0; i < 5; i++) c[i] = (R + 1.0) * (i + 1.0);
        for (int weighted = 0; weighted <= 1; weighted++) {
            nb_params_zero_grad(p);
            CHECK(nb_ddp_set_samples(g, weighted ? R + 1.0 : 1.0) == NB_OK, "samples: %s", nb_error_message());
            CHECK(linear_loss(tape, 5, ps, c) == NB_OK && nb_ddp_finish(g) == NB_OK, "step: %s", nb_error_message());
            /* plain: mean of (r + 1) = (N + 1) / 2; weighted: sum (r + 1)^2 / sum (r + 1) = (2N + 1) / 3 */
            double scale = weighted ? (2.0 * N + 1.0) / 3.0 : (N + 1.0) / 2.0;
            for (int i = 0; i < 5; i++) {
                nb_tensor *gr = nb_tensor_grad(ps[i]);
                double worst = 0;
                for (int64_t k = 0; gr && k < nb_tensor_numel(gr); k++)
                    worst = fmax(worst, fabs(nb_tensor_get(gr, k) - scale * (i + 1.0)));
                CHECK(gr && worst <= 2e-16 * scale * (i + 1.0), "%s%s: gradient off by %g from %g", nb_tensor_name(ps[i]),
                      weighted ? " (weighted)" : "", worst, scale * (i + 1.0));
            }
            CHECK(nb_tensor_grad(nb_params_find(p, "buf")) == NULL, "a buffer got a gradient");
        }
        nb_ddp_stats st;
        nb_ddp_get_stats(g, &st);
        CHECK(st.steps == 2 && st.buckets_in_backward == (no_overlap ? 0 : 2 * nb) &&
                  st.buckets_at_finish == (no_overlap ? 2 * nb : 0),
              "overlap %d: %lld steps, %lld buckets in backward, %lld at finish", !no_overlap, (long long)st.steps,
              (long long)st.buckets_in_backward, (long long)st.buckets_at_finish);
        /* each buffer: the gradients, a flag per parameter and the weight, in the bucket's dtype */
        CHECK(st.bytes == 2 * ((1 + 2) * 8 + (5 + 2) * 8 + (4 + 2) * 4 + (10 + 2) * 8 + (300 + 2) * 8), "%lld bytes reduced",
              (long long)st.bytes);
        nb_ddp_free(g);
    }
    nb_params_free(p);
}

/* Parameters without gradients: one that no rank uses keeps none (and Adam skips it); one that only
 * rank 0 uses gets rank 0's gradient / N everywhere, also where it had none. */
static void test_unused(nb_tape *tape)
{
    nb_params *p = nb_params_new();
    nb_tensor *used = nb_params_add(p, "used", nb_tensor_full(NB_F64, NB_SHAPE(3), 1.0));
    nb_tensor *unused = nb_params_add(p, "unused", nb_tensor_full(NB_F64, NB_SHAPE(3), 1.0));
    nb_tensor *some = nb_params_add(p, "some", nb_tensor_full(NB_F64, NB_SHAPE(3), 1.0));
    nb_optim *opt = nb_optim_new(NB_ADAMW, p, NULL);
    nb_ddp *g = nb_ddp_new(D, p, &(nb_ddp_opts){.first_bucket_bytes = 8, .bucket_bytes = 24});
    CHECK(g && nb_ddp_bucket_count(g) == 3, "nb_ddp_new: %s", nb_error_message());
    /* step 0: rank 0 uses `some` (gradient 4); step 1: rank 0 uses it with gradient 0; step 2: no rank
     * does (its zeroed gradient counts as none everywhere: it keeps none and is skipped, as alone) */
    for (int step = 0; step < 3; step++) {
        nb_tensor *ps[2] = {used, some};
        double c[2] = {R + 1.0, step == 0 ? 4.0 : 0.0};
        CHECK(linear_loss(tape, R == 0 && step < 2 ? 2 : 1, ps, c) == NB_OK && nb_ddp_finish(g) == NB_OK, "step %d: %s",
              step, nb_error_message());
        CHECK(nb_tensor_grad(unused) == NULL, "step %d: rank %d: the unused parameter got a gradient", step, R);
        nb_tensor *gs = nb_tensor_grad(some), *gu = nb_tensor_grad(used);
        CHECK(nb_tensor_has_grad(some) == (step < 2), "step %d: rank %d: some has a gradient: %d", step, R,
              nb_tensor_has_grad(some));
        CHECK(step == 2 || (gs && nb_tensor_get(gs, 2) == (step == 0 ? 4.0 / N : 0.0)),
              "step %d: rank %d: gradient of some %g, expected %g", step, R, gs ? nb_tensor_get(gs, 2) : NAN,
              step == 0 ? 4.0 / N : 0.0);
        CHECK(gu && nb_tensor_get(gu, 0) == (N + 1.0) / 2.0, "step %d: gradient of used %g", step, gu ? nb_tensor_get(gu, 0) : NAN);
        CHECK(nb_optim_step(opt) == NB_OK, "optim: %s", nb_error_message());
        nb_optim_zero_grad(opt);
    }
    CHECK(nb_optim_param_steps(opt, 1) == 0 && nb_tensor_get(unused, 0) == 1.0, "the unused parameter was updated");
    CHECK(nb_optim_param_steps(opt, 0) == 3 && nb_optim_param_steps(opt, 2) == 2, "used: %lld steps, some: %lld",
          (long long)nb_optim_param_steps(opt, 0), (long long)nb_optim_param_steps(opt, 2));
    check_identical(p, "unused parameters");
    nb_ddp_stats st;
    nb_ddp_get_stats(g, &st);
    /* bucket 0 holds `some` (reverse order), bucket 1 `unused`: it never becomes ready, so it and the
     * buckets after it start at finish on every rank; rank 0 starts bucket 0 in its backward */
    CHECK(st.buckets_in_backward == (R == 0 ? 2 : 0) && st.buckets_at_finish == (R == 0 ? 7 : 9),
          "rank %d: %lld buckets started in backward, %lld at finish", R, (long long)st.buckets_in_backward,
          (long long)st.buckets_at_finish);
    CHECK(st.buckets_in_backward + st.buckets_at_finish == 9, "%lld + %lld buckets", (long long)st.buckets_in_backward,
          (long long)st.buckets_at_finish);
    nb_ddp_free(g);
    nb_optim_free(opt);
    nb_params_free(p);
}

/* Scalars for metrics and decisions; agreeing on a status; checkpoints from rank 0. */
static void test_collectives(const char *dir)
{
    double v[3] = {R + 1.0, R + 1.0, R + 1.0};
    CHECK(nb_dist_allreduce(D, v, 1, NB_DIST_SUM) == NB_OK && v[0] == N * (N + 1) / 2.0, "sum %g", v[0]);
    CHECK(nb_dist_allreduce(D, v + 1, 1, NB_DIST_MAX) == NB_OK && v[1] == N, "max %g", v[1]);
    CHECK(nb_dist_allreduce(D, v + 2, 1, NB_DIST_MIN) == NB_OK && v[2] == 1, "min %g", v[2]);
    /* values that round: the same bits everywhere, summed in rank order */
    double x = 0.1 * (R + 1) + 1e-3 / (R + 3), want = 0;
    for (int r = 0; r < N; r++) want += 0.1 * (r + 1) + 1e-3 / (r + 3);
    CHECK(nb_dist_allreduce(D, &x, 1, NB_DIST_SUM) == NB_OK && memcmp(&x, &want, sizeof x) == 0, "sum %.17g, want %.17g", x, want);
    CHECK_ERROR(nb_dist_allreduce(D, NULL, 2, NB_DIST_SUM) != NB_OK, NB_ERR_ARG, "nb_dist_allreduce");
    CHECK_ERROR(nb_dist_allreduce(D, v, 1, NB_DIST_OP_COUNT) != NB_OK, NB_ERR_ARG, "nb_dist_allreduce");

    CHECK(nb_dist_agree(D, NB_OK) == NB_OK, "agree: %s", nb_error_message());
    nb_error_clear();
    if (R == 1) nb_error_set(NB_ERR_IO, "disk full on rank 1");
    nb_status st = nb_dist_agree(D, R == 1 ? NB_ERR_IO : NB_OK);
    CHECK(st == NB_ERR_IO && strstr(nb_error_message(), R == 1 ? "disk full on rank 1" : "rank 1 failed: disk full on rank 1"),
          "agree after rank 1's error: %s, \"%s\"", nb_status_name(st), nb_error_message());
    nb_error_clear();

    char path[512];
    snprintf(path, sizeof path, "%s/collectives.safetensors", dir);
    mlp_run m;
    mlp_make(&m, 42);
    CHECK(nb_dist_checkpoint_save(D, path, m.p, m.opt, 7) == NB_OK, "save: %s", nb_error_message());
    CHECK(R != 0 || access(path, R_OK) == 0, "rank 0 did not write %s", path);
    CHECK_ERROR(nb_dist_checkpoint_save(D, "/nonexistent-folder/x.safetensors", m.p, m.opt, 7) != NB_OK, NB_ERR_IO,
                "x.safetensors");
    CHECK_ERROR(nb_dist_checkpoint_load(D, "/nonexistent-folder/x.safetensors", m.p, m.opt, NULL) != NB_OK, NB_ERR_IO,
                "x.safetensors");
    mlp_run q;
    mlp_make(&q, 1000 + (uint64_t)R); /* different everywhere, then loaded */
    int64_t step = -1;
    CHECK(nb_dist_checkpoint_load(D, path, q.p, q.opt, &step) == NB_OK && step == 7, "load: %s", nb_error_message());
    CHECK(max_diff(q.p, m.p) == 0, "rank %d: loaded parameters differ from the saved ones", R);
    mlp_free(&q);
    mlp_free(&m);
    CHECK(nb_dist_barrier(D) == NB_OK, "barrier: %s", nb_error_message());
}

/* Misuse is reported, not silently averaged wrong. */
static void test_misuse(nb_tape *tape)
{
    nb_params *p = nb_params_new();
    nb_tensor *w = nb_params_add(p, "w", nb_tensor_full(NB_F64, NB_SHAPE(4), 1.0));
    nb_ddp *g = nb_ddp_new(D, p, NULL);
    double c = 1.0;
    /* finishing with sync off: nothing was sent */
    CHECK(nb_ddp_set_sync(g, 0) == NB_OK && linear_loss(tape, 1, &w, &c) == NB_OK, "sync off: %s", nb_error_message());
    CHECK_ERROR(nb_ddp_finish(g) != NB_OK, NB_ERR_STATE, "sync is off");
    CHECK(nb_ddp_set_sync(g, 1) == NB_OK && linear_loss(tape, 1, &w, &c) == NB_OK, "sync on: %s", nb_error_message());
    /* the weight and sync are fixed once a bucket left */
    CHECK_ERROR(nb_ddp_set_samples(g, 2) != NB_OK, NB_ERR_STATE, "before the backward");
    CHECK_ERROR(nb_ddp_set_sync(g, 0) != NB_OK, NB_ERR_STATE, "finish it");
    CHECK(nb_ddp_finish(g) == NB_OK && nb_tensor_get(nb_tensor_grad(w), 0) == 2.0, "finish: %s",
          nb_error_message()); /* 1 accumulated locally, then 1 more: 2 on every rank */
    CHECK_ERROR(nb_ddp_set_samples(g, -1) != NB_OK, NB_ERR_ARG, "n >= 0");
    /* a context in use is not freed */
    CHECK_ERROR((nb_dist_free(D), nb_error_code() != NB_OK), NB_ERR_STATE, "still use this context");
    /* two reducing backward passes before a finish */
    nb_params_zero_grad(p);
    CHECK(linear_loss(tape, 1, &w, &c) == NB_OK, "first: %s", nb_error_message());
    CHECK_ERROR(linear_loss(tape, 1, &w, &c) != NB_OK, NB_ERR_STATE, "got a second gradient before nb_ddp_finish");
    CHECK_ERROR(nb_ddp_finish(g) != NB_OK, NB_ERR_STATE, "out of step");
    nb_ddp_free(g);
    /* parameters added after the averager was made */
    g = nb_ddp_new(D, p, NULL);
    nb_params_add(p, "late", nb_tensor_zeros(NB_F64, NB_SHAPE(2)));
    CHECK(linear_loss(tape, 1, &w, &c) == NB_OK, "backward: %s", nb_error_message());
    CHECK_ERROR(nb_ddp_finish(g) != NB_OK, NB_ERR_STATE, "make a new one after adding parameters");
    nb_ddp_free(g);
    /* a differentiable gradient (NB_CREATE_GRAPH) is not averaged behind its graph's back */
    nb_params *p2 = nb_params_new();
    nb_tensor *v = nb_params_add(p2, "v", nb_tensor_full(NB_F64, NB_SHAPE(2), 1.0));
    g = nb_ddp_new(D, p2, NULL);
    nb_tape_begin(tape);
    CHECK_ERROR(nb_backward(nb_sum_all(nb_square(v)), NULL, NB_CREATE_GRAPH) != NB_OK, NB_ERR_UNSUPPORTED, "NB_CREATE_GRAPH");
    nb_tape_end(tape);
    nb_tape_reset(tape);
    nb_ddp_free(g);
    CHECK_ERROR(nb_ddp_new(NULL, p2, NULL) == NULL, NB_ERR_ARG, "context is NULL");
    CHECK_ERROR(nb_ddp_new(D, NULL, NULL) == NULL, NB_ERR_ARG, "collection is NULL");
    CHECK_ERROR(nb_ddp_finish(NULL) != NB_OK, NB_ERR_ARG, "averager is NULL");
    CHECK_ERROR(nb_dist_barrier(NULL) != NB_OK, NB_ERR_ARG, "context is NULL");
    CHECK_ERROR(nb_dist_set_timeout(D, 0) != NB_OK, NB_ERR_ARG, "seconds");
    nb_params_free(p2);
    nb_params_free(p);
}

/* A thread that is not MPI's main thread tries a collective (MPI gives FUNNELED): refused, not sent. */
static void *other_thread(void *arg)
{
    nb_status *st = arg;
    *st = nb_dist_barrier(D);
    if (*st != NB_OK && !strstr(nb_error_message(), "called from a thread other than the one that started MPI"))
        *st = NB_ERR_ARG; /* the wrong reason */
    return NULL;
}

static void test_threads(void)
{
#ifdef NB_TEST_MPI
    int level = 0;
    MPI_Query_thread(&level);
    CHECK(level >= MPI_THREAD_FUNNELED, "MPI provides thread level %d", level);
    if (level >= MPI_THREAD_SERIALIZED) return; /* then any thread may call, one at a time */
    nb_status st = NB_OK;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, other_thread, &st) == 0 && pthread_join(t, NULL) == 0, "thread");
    CHECK(st == NB_ERR_STATE, "a collective from another thread: %s", nb_status_name(st));
#else
    (void)other_thread;
#endif
}

/* A second context over the program's own communicator; rank and size; NULL accessors. */
static void test_contexts(void)
{
    CHECK(nb_dist_available() == 1 && nb_dist_launched() == 1, "available %d, launched %d", nb_dist_available(),
          nb_dist_launched());
    nb_dist *e = NULL;
    CHECK(nb_dist_from_comm(nb_dist_comm(D), &e) == NB_OK && nb_dist_rank(e) == R && nb_dist_size(e) == N,
          "from_comm: %s", nb_error_message());
    double x = 1;
    CHECK(nb_dist_allreduce(e, &x, 1, NB_DIST_SUM) == NB_OK && x == N, "allreduce on the second context: %g", x);
    nb_dist_free(e);
    CHECK(nb_dist_rank(NULL) == 0 && nb_dist_size(NULL) == 1 && nb_dist_comm(NULL) == NULL && nb_dist_local_size(NULL) == 1,
          "NULL accessors");
    CHECK(nb_dist_local_size(D) == N, "%d ranks on this machine, expected all %d", nb_dist_local_size(D), N);
    CHECK_ERROR(nb_dist_from_comm(NULL, &e) != NB_OK, NB_ERR_ARG, "comm is NULL");
    CHECK(nb_dist_timeout(D) > 0 && !nb_dist_broken(D), "timeout %g, broken %d", nb_dist_timeout(D), nb_dist_broken(D));
}

/* A steady-state step of data-parallel training (forward, backward, the reduction, the update) makes
 * no allocation through nabla's allocator after the first steps, as without MPI. */
static void test_steady(nb_dataset *data, nb_tape *tape)
{
    mlp_run m;
    mlp_make(&m, 42);
    nb_ddp *g = nb_ddp_new(D, m.p, &(nb_ddp_opts){.first_bucket_bytes = 512, .bucket_bytes = 2048});
    nb_batches *b = nb_batches_new(data, BATCH, 1, 0, 9);
    nb_batches_set_shard(b, R, N);
    long before = 0;
    for (int s = 0; s < 20; s++) {
        if (s == 10) before = g_allocs; /* the tape's arena has its peak size by then */
        nb_tape_begin(tape);
        CHECK(mlp_step(&m, b, g, 1.0, 1), "step %d: %s", s, nb_error_message());
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
    CHECK(g_allocs == before, "rank %d: %ld allocations in 10 steady steps", R, g_allocs - before);
    nb_batches_free(b);
    nb_ddp_free(g);
    mlp_free(&m);
}

/* ---- resume with another number of ranks ------------------------------------------------------ */

static void train_steps(mlp_run *m, nb_batches *b, nb_ddp *g, nb_tape *tape, int steps)
{
    for (int s = 0; s < steps; s++) {
        nb_tape_begin(tape);
        CHECK(mlp_step(m, b, g, 1.0, 1), "step %d: %s", s, nb_error_message());
        nb_tape_end(tape);
        nb_tape_reset(tape);
    }
}

static void resume(const char *dir, int load, nb_dataset *data, nb_tape *tape)
{
    char path[512];
    snprintf(path, sizeof path, "%s/resume.safetensors", dir);
    mlp_run m;
    mlp_make(&m, load ? 77 + (uint64_t)R : 42); /* a resumed run starts from other values: the load replaces them */
    int64_t step = 0;
    if (load) CHECK(nb_dist_checkpoint_load(D, path, m.p, m.opt, &step) == NB_OK && step == 25, "load: %s", nb_error_message());
    nb_ddp *g = nb_ddp_new(D, m.p, &(nb_ddp_opts){.first_bucket_bytes = 512, .bucket_bytes = 2048});
    CHECK(g != NULL, "nb_ddp_new: %s", nb_error_message());
    nb_batches *b = nb_batches_new(data, BATCH, 1, 0, 9);
    nb_batches_set_shard(b, R, N);
    CHECK(nb_batches_skip(b, step) == NB_OK, "skip: %s", nb_error_message());
    train_steps(&m, b, g, tape, 25);
    if (!load) {
        CHECK(nb_dist_checkpoint_save(D, path, m.p, m.opt, 25) == NB_OK, "save: %s", nb_error_message());
        if (R == 0) printf("resume: 25 steps on %d ranks saved to %s\n", N, path);
    } else {
        mlp_run ref;
        mlp_reference(&ref, data, tape, 50);
        double diff = max_diff(m.p, ref.p);
        if (R == 0) printf("resume: 25 more steps on %d ranks: max |diff| from 50 steps of one process %.3g\n", N, diff);
        CHECK(diff <= 1e-12, "resumed run on rank %d differs from the uninterrupted one by %.3g", R, diff);
        check_identical(m.p, "resumed");
        CHECK(nb_optim_steps(m.opt) == 50, "optimizer steps %lld", (long long)nb_optim_steps(m.opt));
        mlp_free(&ref);
    }
    nb_batches_free(b);
    nb_ddp_free(g);
    mlp_free(&m);
}

/* ---- failures --------------------------------------------------------------------------------- */

/* Rank 1 fails at step 5 and ends the job, while rank 0 writes a checkpoint after every step. */
static void fail_run(const char *dir, nb_dataset *data, nb_tape *tape)
{
    char path[512];
    snprintf(path, sizeof path, "%s/fail.safetensors", dir);
    mlp_run m;
    mlp_make(&m, 42);
    nb_ddp *g = nb_ddp_new(D, m.p, NULL);
    nb_batches *b = nb_batches_new(data, BATCH, 1, 0, 9);
    nb_batches_set_shard(b, R, N);
    for (int s = 1; s <= 100; s++) {
        nb_tape_begin(tape);
        if (R == 1 && s == 5) {
            nb_error_set(NB_ERR_NUMERIC, "simulated failure at step %d", s);
            nb_dist_abort(D, nb_error_message());
        }
        int ok = mlp_step(&m, b, g, 1.0, 1);
        nb_tape_end(tape);
        nb_tape_reset(tape);
        if (!ok || nb_dist_checkpoint_save(D, path, m.p, m.opt, s) != NB_OK) nb_dist_abort(D, nb_error_message());
    }
    printf("fail: the job was not ended by rank 1\n");
}

/* Rank 1 stops calling collectives at step 3; rank 0's wait gives up after 2 s and ends the job. */
static void hang_run(nb_dataset *data, nb_tape *tape)
{
    mlp_run m;
    mlp_make(&m, 42);
    nb_ddp *g = nb_ddp_new(D, m.p, NULL);
    nb_batches *b = nb_batches_new(data, BATCH, 1, 0, 9);
    nb_batches_set_shard(b, R, N);
    nb_dist_set_timeout(D, 2.0);
    for (int s = 1; s <= 10; s++) {
        if (R == 1 && s == 3) {
            struct timespec ts = {30, 0};
            nanosleep(&ts, NULL); /* stuck; ended by rank 0's abort long before */
        }
        nb_tape_begin(tape);
        int ok = mlp_step(&m, b, g, 1.0, 1);
        nb_tape_end(tape);
        nb_tape_reset(tape);
        if (!ok) nb_dist_abort(D, nb_error_message());
    }
    printf("hang: no rank timed out\n");
}

/* The checkpoint the failed run left: it loads, and holds a whole step. */
static int check_checkpoint(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/fail.safetensors", dir);
    mlp_run m;
    mlp_make(&m, 42);
    int64_t step = -1;
    CHECK(nb_checkpoint_load(path, m.p, m.opt, &step) == NB_OK, "load %s: %s", path, nb_error_message());
    CHECK(step >= 1 && step <= 5 && nb_optim_steps(m.opt) == step, "checkpoint of step %lld with %lld optimizer steps",
          (long long)step, (long long)nb_optim_steps(m.opt));
    printf("checkpoint left by the failed run: step %lld, loads\n", (long long)step);
    mlp_free(&m);
    return nbt_report("test_dist --check-ckpt");
}

/* ---- without MPI ------------------------------------------------------------------------------ */

static int without_mpi(void)
{
    nb_dist *d = (nb_dist *)1;
    CHECK(nb_dist_available() == 0, "available");
    CHECK_ERROR(nb_dist_init(NULL, NULL, &d) != NB_OK, NB_ERR_UNSUPPORTED, "built without MPI");
    CHECK(d == NULL, "init left %p", (void *)d);
    CHECK_ERROR(nb_dist_from_comm(&d, &d) != NB_OK, NB_ERR_UNSUPPORTED, "built without MPI");
    nb_params *p = nb_params_new();
    CHECK_ERROR(nb_ddp_new(NULL, p, NULL) == NULL, NB_ERR_UNSUPPORTED, "nb_ddp_new: this nabla was built without MPI");
    CHECK_ERROR(nb_dist_broadcast_params(NULL, p, 0) != NB_OK, NB_ERR_UNSUPPORTED, "built without MPI");
    double v = 1;
    CHECK_ERROR(nb_dist_allreduce(NULL, &v, 1, NB_DIST_SUM) != NB_OK, NB_ERR_UNSUPPORTED, "built without MPI");
    CHECK_ERROR(nb_ddp_finish(NULL) != NB_OK, NB_ERR_UNSUPPORTED, "built without MPI");
    CHECK(nb_dist_rank(NULL) == 0 && nb_dist_size(NULL) == 1, "accessors");
    nb_params_free(p);
    return nbt_report("test_dist (without MPI)");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && !strcmp(argv[1], "--check-ckpt")) return check_checkpoint(argv[2]);
    if (!nb_dist_available()) return without_mpi();
    if (!nb_dist_launched()) {
        printf("test_dist: not started by mpirun (run it through tests/mpirun.sh)\n");
        return 77;
    }
    nb_set_allocator(&(nb_allocator){count_alloc, count_realloc, count_free, NULL});
    if (nb_dist_init(&argc, &argv, &D) != NB_OK) {
        fprintf(stderr, "test_dist: %s\n", nb_error_message());
        return 1;
    }
    R = nb_dist_rank(D);
    N = nb_dist_size(D);
    nb_dist_set_timeout(D, 60);
    nb_tape *tape = nb_tape_new();
    nb_dataset *data = mlp_data();
    const char *mode = argc > 1 ? argv[1] : "";
    int full = 0; /* every check: then the allocator's books must balance at the end */
    if (!strcmp(mode, "--resume-save") && argc == 3) {
        resume(argv[2], 0, data, tape);
    } else if (!strcmp(mode, "--resume-load") && argc == 3) {
        resume(argv[2], 1, data, tape);
    } else if (!strcmp(mode, "--fail") && argc == 3 && N >= 2) {
        fail_run(argv[2], data, tape);
    } else if (!strcmp(mode, "--hang") && N >= 2) {
        hang_run(data, tape);
    } else if (argc == 2 && N >= 2) {
        full = 1;
        test_contexts();
        test_threads();
        test_collectives(argv[1]);
        test_broadcast(tape);
        test_buckets(tape);
        test_unused(tape);
        test_mlp(data, tape, 512, 2048, 0);
        test_mlp(data, tape, 512, 2048, 1);
        test_mlp(data, tape, 0, 0, 0);
        test_lstm(tape);
        test_accumulation(tape);
        test_steady(data, tape);
        test_misuse(tape);
    } else {
        fprintf(stderr, "usage: test_dist SCRATCH_DIR | --resume-save DIR | --resume-load DIR | --fail DIR | --hang "
                        "(under mpirun, 2 ranks or more)\n");
        return 2;
    }
    /* one verdict for the whole job */
    double failures = nbt_failures;
    if (nb_dist_allreduce(D, &failures, 1, NB_DIST_SUM) != NB_OK) failures = 1;
    char name[64];
    snprintf(name, sizeof name, "test_dist rank %d of %d", R, N);
    int rc = nbt_report(name);
    nb_tape_free(tape);
    nb_dataset_free(data);
    nb_dist_free(D);
    /* every block nabla allocated was freed, naming its size (test_misuse keeps one context) */
    if (full) {
        if (g_bad_sizes || g_allocs != g_frees)
            fprintf(stderr, "test_dist rank %d: %ld allocations, %ld frees, %ld with the wrong size\n", R, g_allocs,
                    g_frees, g_bad_sizes);
        rc |= g_bad_sizes != 0 || g_allocs != g_frees;
    }
    return rc || failures > 0;
}
