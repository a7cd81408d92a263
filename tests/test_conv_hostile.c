/* The convolutional family the way hostile users break it (a review of issue 10's merge), one section
 * per bug found, each naming the symptom it had: geometry whose arithmetic overflows int64 (ops and
 * layers), im2col zeroing past its run (wrong values), stale arguments named by the op, normalisation
 * of empty batches, float32 statistics at a large mean, every kernel path on 1, 2 and 3 threads, user
 * threads and a user's OpenMP team sharing weights, BatchNorm's buffers under allocation failure. Every
 * case is a clear error naming the op, or a result checked against known values. `test_conv_hostile
 * user-threads` runs the user-thread case alone (ThreadSanitizer, .ci/run). */
#include "nbtest.h"

#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>

/* ---- geometry that overflows int64 --------------------------------------------------------------
 * Strides, paddings, dilations and kernels near INT64_MAX made the checks compute the kernel's span,
 * the padded extent and the transposed output extent with signed overflow (UBSan: "signed integer
 * overflow" in conv.c, pool.c and the plan; the errors named wrapped extents such as "the padded
 * input's -9223372036854775805"). They are refused now; large but representable ones still work. */
static void huge_geometry(void)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *x = nb_ones(NB_F32, NB_SHAPE(1, 2, 5, 5)), *w = nb_ones(NB_F32, NB_SHAPE(3, 2, 3, 3));
    nb_tensor *wt = nb_ones(NB_F32, NB_SHAPE(2, 3, 3, 3)), *w31 = nb_ones(NB_F32, NB_SHAPE(1, 1, 3, 1));
    nb_tensor *x1 = nb_ones(NB_F32, NB_SHAPE(1, 1, 5, 5));
    const int64_t big = INT64_MAX / 2, max = INT64_MAX;
    nb_conv_opts o = nb_conv_defaults();
    o.dilation[0] = big;
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &o), NB_ERR_ARG, "nb_conv2d: input [1,2,5,5]: stride (1, 1), padding (0, 0), "
                "dilation (4611686018427387903, 1): each must be at most 2^61");
    o = nb_conv_defaults();
    o.padding[0] = big;
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &o), NB_ERR_ARG, "padding (4611686018427387903, 0)");
    o = nb_conv_defaults();
    o.stride[1] = max;
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &o), NB_ERR_ARG, "stride (1, 9223372036854775807)");
    o = nb_conv_defaults();
    o.padding[0] = INT64_MAX / 4; /* representable, but the output's extent is not a BLAS integer */
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &o), NB_ERR_SHAPE, "dimensions exceed the BLAS integer range");
    o = nb_conv_defaults();
    o.stride[0] = big;
    CHECK_ERROR(!nb_conv_transpose2d(x, wt, NULL, &o), NB_ERR_ARG, "nb_conv_transpose2d: input [1,2,5,5]: stride");
    o = nb_conv_defaults();
    o.stride[0] = (int64_t)1 << 60; /* (H - 1) stride fits, the result is too large */
    o.output_padding[0] = 1;
    CHECK_ERROR(!nb_conv_transpose2d(x, wt, NULL, &o), NB_ERR_SHAPE, "nb_conv_transpose2d");
    o = nb_conv_defaults();
    o.dilation[0] = (int64_t)1 << 61; /* a span of 2^62 + 1 */
    CHECK_ERROR(!nb_conv_transpose2d(x, wt, NULL, &o), NB_ERR_SHAPE, "the extents overflow along spatial dim 0");
    o = nb_conv_defaults();
    o.output_padding[1] = max;
    o.dilation[1] = max;
    CHECK_ERROR(!nb_conv_transpose2d(x, wt, NULL, &o), NB_ERR_ARG, "each must be at most 2^61");
    CHECK_ERROR(!nb_conv2d_weight(x, nb_ones(NB_F32, NB_SHAPE(1, 3, 3, 3)), max, 3, NULL), NB_ERR_ARG,
                "nb_conv2d_weight: input [1,2,5,5]: stride (1, 1), padding (0, 0), dilation (1, 1), kernel "
                "(9223372036854775807, 3)");
    /* 'same' padding with a dilation so large that only the centre tap meets the input: the input itself
     * (the wide grid's padded plane would be 2^41 rows: the plan must not take it) */
    o = nb_conv_defaults();
    o.same_padding = 1;
    o.dilation[0] = (int64_t)1 << 40;
    nb_tensor *y = nb_conv2d(x1, w31, NULL, &o);
    CHECK(y && nb_tensor_dim(y, 2) == 5 && nb_tensor_dim(y, 3) == 5, "'same', dilation 2^40: %s", nb_error_message());
    for (int64_t i = 0; y && i < 25; i++) CHECK(nb_tensor_get(y, i) == 1, "'same', dilation 2^40: y[%lld]", (long long)i);
    /* 'same' padding of a zero extent: an empty result (the BLAS range check divided by the output's 0) */
    o = nb_conv_defaults();
    o.same_padding = 1;
    y = nb_conv2d(nb_ones(NB_F32, NB_SHAPE(1, 2, 3, 0)), w, NULL, &o);
    CHECK(y && nb_tensor_dim(y, 2) == 3 && nb_tensor_dim(y, 3) == 0, "'same' of width 0: %s", nb_error_message());
    /* pooling */
    nb_pool_opts po = nb_pool_defaults();
    po.dilation[0] = big;
    CHECK_ERROR(!nb_max_pool2d(x, 3, 3, &po), NB_ERR_ARG, "nb_max_pool2d: input [1,2,5,5]: kernel (3, 3), stride (0, 0), "
                "dilation (4611686018427387903, 0): each must be at most 2^61");
    po = nb_pool_defaults();
    po.padding[0] = big;
    CHECK_ERROR(!nb_avg_pool2d(x, max, 3, &po), NB_ERR_ARG, "nb_avg_pool2d: input [1,2,5,5]: kernel (9223372036854775807, 3)");
    po = nb_pool_defaults();
    po.dilation[0] = (int64_t)1 << 61;
    CHECK_ERROR(!nb_max_pool2d(x, 3, 3, &po), NB_ERR_ARG, "spans more than 2^61");
    po = nb_pool_defaults();
    po.stride[0] = max;
    po.ceil_mode = 1;
    CHECK_ERROR(!nb_max_pool2d(x, 2, 2, &po), NB_ERR_ARG, "stride (9223372036854775807, 0)");
    /* the largest accepted stride: one window per dim (the next would start past the input) */
    po.stride[0] = (int64_t)1 << 61;
    y = nb_avg_pool2d(x, 2, 2, &po);
    CHECK(y && nb_tensor_dim(y, 2) == 1 && nb_tensor_dim(y, 3) == 3 && nb_tensor_get(y, 0) == 1,
          "stride 2^61, ceil_mode: %s", nb_error_message());
    /* a window as large as 2^60 x 2^60 counted with its padding: the divisor leaves int64 */
    po = nb_pool_defaults();
    po.padding[0] = po.padding[1] = (int64_t)1 << 59;
    y = nb_avg_pool2d(x, (int64_t)1 << 60, (int64_t)1 << 60, &po);
    CHECK(y && nb_tensor_numel(y) == 2 && nb_tensor_get(y, 0) >= 0 && nb_tensor_get(y, 0) < 1e-30,
          "a huge window: %s", nb_error_message());
    /* layers whose weight would overflow: refused by the layer (the fans wrapped, UBSan "signed integer
     * overflow" in conv_init, and the error named nb_tensor_zeros) */
    nb_params *p = nb_params_new();
    nb_conv c;
    nb_rng rng;
    nb_rng_seed(&rng, 1);
    CHECK_ERROR(nb_conv2d_init(&c, p, "c", 1, 1, (int64_t)1 << 40, (int64_t)1 << 40, NULL, NULL, &rng) != NB_OK,
                NB_ERR_ARG, "nb_conv2d_init: c: the weight (out 1, in / groups 1, kernel 1099511627776 x 1099511627776) "
                "has too many elements");
    CHECK_ERROR(nb_conv1d_init(&c, p, "c", INT64_MAX, 2, 3, NULL, NULL, &rng) != NB_OK, NB_ERR_ARG,
                "nb_conv1d_init: c: the weight (out 2, in / groups 9223372036854775807, kernel 3 x 1)");
    CHECK(nb_params_count(p) == 0, "nothing registered by the refused layers");
    nb_params_free(p);
    /* huge zero-size inputs: the checks do not walk 2^40 windows */
    nb_tensor *z = nb_zeros(NB_F32, NB_SHAPE(0, 1, (int64_t)1 << 40, 1));
    po = nb_pool_defaults();
    po.padding[0] = 1;
    po.stride[0] = 1;
    y = nb_max_pool2d(z, 3, 1, &po);
    CHECK(y && nb_tensor_dim(y, 2) == ((int64_t)1 << 40), "zero-size, 2^40 windows: %s", nb_error_message());
    nb_error_clear();
    nb_tape_end(t);
    nb_tape_free(t);
}

/* ---- results kept across a reset -----------------------------------------------------------------
 * A stale result given to a 1-D convolution or pooling failed in the reshape to [N, C, 1, L]: the
 * error named nb_reshape, not the call the user made. Every op of the family names itself now. */
static void stale_names_the_op(void)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *x = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3, 8)), *w = nb_tensor_ones(NB_F64, NB_SHAPE(4, 3, 3));
    nb_tensor *sx = nb_mul_scalar(x, 1.0), *sw = nb_mul_scalar(w, 1.0), *sb = nb_ones(NB_F64, NB_SHAPE(4));
    nb_tensor *sx4 = nb_reshape(sx, NB_SHAPE(2, 3, 2, 4)), *st = nb_ones(NB_F64, NB_SHAPE(2, 3));
    nb_tape_reset(t); /* one reset: the headers are intact, their stamps old */
    nb_tensor *b = nb_tensor_ones(NB_F64, NB_SHAPE(4)), *wt = nb_tensor_ones(NB_F64, NB_SHAPE(3, 4, 3));
    const char *stale = "tensor belongs to a tape that was reset";
    char msg[160];
#define STALE(call, name)                                                                              \
    do {                                                                                               \
        snprintf(msg, sizeof msg, "%s: %s", name, stale);                                              \
        CHECK_ERROR(!(call), NB_ERR_STATE, msg);                                                       \
    } while (0)
    STALE(nb_conv1d(sx, w, b, NULL), "nb_conv1d");
    STALE(nb_conv1d(x, sw, b, NULL), "nb_conv1d");
    STALE(nb_conv1d(x, w, sb, NULL), "nb_conv1d");
    STALE(nb_conv_transpose1d(sx, wt, NULL, NULL), "nb_conv_transpose1d");
    STALE(nb_conv2d(sx4, nb_ones(NB_F64, NB_SHAPE(4, 3, 1, 1)), NULL, NULL), "nb_conv2d");
    STALE(nb_max_pool1d(sx, 2, NULL), "nb_max_pool1d");
    STALE(nb_avg_pool1d(sx, 2, NULL), "nb_avg_pool1d");
    STALE(nb_adaptive_avg_pool1d(sx, 3), "nb_adaptive_avg_pool1d");
    STALE(nb_max_pool2d(sx4, 2, 2, NULL), "nb_max_pool2d");
    STALE(nb_channel_moments(sx), "nb_channel_moments");
    STALE(nb_channel_norm(x, st, NULL, NULL, 1e-5), "nb_channel_norm");
    STALE(nb_batch_norm_train(nb_ones(NB_F64, NB_SHAPE(2, 4, 8)), NULL, sb, 1e-5, NULL), "nb_batch_norm_train");
#undef STALE
    nb_error_clear();
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor *all[] = {x, w, b, wt};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) nb_tensor_free(all[i]);
}

/* ---- normalisation of nothing ---------------------------------------------------------------------
 * torch's batch_norm and group_norm return an empty result for a batch of 0 (and group_norm for a zero
 * spatial extent); BatchNorm2d then counts the batch in num_batches_tracked and leaves the running
 * statistics. nabla refused them ("no values to take the statistics of"; group norm of a batch 0 failed
 * in its reshape: "nb_reshape: [0,4,3,3] to [1,0,-1]: cannot infer the -1 extent"), and a group norm
 * given the wrong dtype was named by nb_mul. */
static void empty_norms(void)
{
    nb_params *p = nb_params_new();
    nb_batch_norm bn;
    nb_group_norm gn;
    nb_norm_opts o = {.dtype = NB_F64};
    CHECK(nb_batch_norm2d_init(&bn, p, "bn", 3, &o) == NB_OK && nb_group_norm_init(&gn, p, "gn", 2, 4, &o) == NB_OK,
          "init: %s", nb_error_message());
    nb_tensor *x0 = nb_tensor_zeros(NB_F64, NB_SHAPE(0, 3, 4, 4)), *g0 = nb_tensor_zeros(NB_F64, NB_SHAPE(0, 4, 3, 3));
    nb_tensor *gh = nb_tensor_zeros(NB_F64, NB_SHAPE(2, 4, 0, 3)), *x1 = nb_tensor_ones(NB_F64, NB_SHAPE(1, 3, 1, 1));
    nb_tensor_set_requires_grad(x0, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    for (int cg = 0; cg < 2; cg++) { /* the fast path, then the rule */
        nb_tensor *st = NULL, *y = nb_batch_norm_train(x0, bn.weight, bn.bias, 1e-5, &st);
        CHECK(y && nb_tensor_numel(y) == 0 && nb_tensor_dim(y, 1) == 3, "batch_norm_train of [0,3,4,4]: %s",
              nb_error_message());
        CHECK(st && isnan(nb_tensor_get(st, 0)) && isnan(nb_tensor_get(st, 5)), "the statistics of nothing are NaN");
        nb_tensor *in[3] = {x0, bn.weight, bn.bias}, *gr[3] = {0};
        nb_tensor *loss = nb_add_scalar(nb_sum_all(nb_mul(y, y)), 1.0);
        CHECK(loss && nb_grad(loss, NULL, 3, in, gr, cg ? NB_CREATE_GRAPH : 0) == NB_OK, "grad (%d): %s", cg,
              nb_error_message());
        CHECK(gr[0] && nb_tensor_numel(gr[0]) == 0, "an empty dx");
        for (int k = 1; k < 3; k++)
            for (int64_t i = 0; gr[k] && i < 3; i++)
                CHECK(nb_tensor_get(gr[k], i) == 0, "%s gradient %lld: %g, expected 0 (create graph %d)",
                      k == 1 ? "weight" : "bias", (long long)i, nb_tensor_get(gr[k], i), cg);
    }
    /* the layer: an empty result, the batch counted, the statistics kept; one value per channel refused */
    nb_tensor *y = nb_batch_norm_forward(&bn, x0);
    CHECK(y && nb_tensor_numel(y) == 0, "BatchNorm2d of a batch 0: %s", nb_error_message());
    CHECK(nb_tensor_get(bn.num_batches_tracked, 0) == 1 && nb_tensor_get(bn.running_mean, 0) == 0 &&
              nb_tensor_get(bn.running_var, 2) == 1,
          "an empty batch counts in num_batches_tracked only");
    CHECK_ERROR(!nb_batch_norm_forward(&bn, x1), NB_ERR_SHAPE, "training needs more than one value per channel");
    nb_params_set_training(p, 0);
    y = nb_batch_norm_forward(&bn, x0);
    CHECK(y && nb_tensor_numel(y) == 0, "BatchNorm2d of a batch 0 in evaluation: %s", nb_error_message());
    y = nb_batch_norm_forward(&bn, x1);
    CHECK(y && fabs(nb_tensor_get(y, 0) - 1 / sqrt(1 + 1e-5)) < 1e-12, "one value in evaluation: %s",
          nb_error_message());
    /* group norm */
    y = nb_group_norm_forward(&gn, g0);
    CHECK(y && nb_tensor_numel(y) == 0 && nb_tensor_dim(y, 1) == 4, "GroupNorm of a batch 0: %s", nb_error_message());
    y = nb_group_norm_forward(&gn, gh);
    CHECK(y && nb_tensor_numel(y) == 0 && nb_tensor_dim(y, 0) == 2, "GroupNorm of [2,4,0,3]: %s", nb_error_message());
    CHECK_ERROR(!nb_group_norm_forward(&gn, nb_ones(NB_F32, NB_SHAPE(2, 4, 3, 3))), NB_ERR_DTYPE,
                "nb_group_norm_forward: input f32 [2,4,3,3]: the layer's tensors are f64");
    nb_error_clear();
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor *all[] = {x0, g0, gh, x1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) nb_tensor_free(all[i]);
    nb_params_free(p);
}

/* ---- threads ------------------------------------------------------------------------------------
 * test_conv's threads_same_bits runs one small CNN on 1 and 2 threads. Here every op of the family, in
 * the geometries that take the other kernel paths (strided and dilated convolutions on the plain
 * im2col path, groups, a transposed convolution with output_padding, a 1-D convolution, 3x3 max
 * pooling with padding and ceil_mode, average pooling without the padding, adaptive pooling, both
 * normalisations), forward and no-graph backward, on 1, 2 and 3 threads: the same bits. */
static double family_pass(nb_dtype dt, int threads, nb_tensor **g, int ng)
{
    nb_set_num_threads(threads);
    nb_rng rng;
    nb_rng_seed(&rng, 77);
    nb_tensor *x = nb_tensor_uniform(dt, NB_SHAPE(8, 8, 40, 40), -1, 1, &rng);
    nb_tensor *w1 = nb_tensor_uniform(dt, NB_SHAPE(8, 4, 3, 3), -0.3, 0.3, &rng); /* groups 2 */
    nb_tensor *w2 = nb_tensor_uniform(dt, NB_SHAPE(8, 8, 3, 3), -0.3, 0.3, &rng);
    nb_tensor *wt = nb_tensor_uniform(dt, NB_SHAPE(8, 6, 3, 3), -0.3, 0.3, &rng);
    nb_tensor *w1d = nb_tensor_uniform(dt, NB_SHAPE(5, 6, 5), -0.3, 0.3, &rng);
    nb_tensor *gamma = nb_tensor_uniform(dt, NB_SHAPE(8), 0.5, 1.5, &rng);
    nb_tensor *stats = nb_tensor_uniform(dt, NB_SHAPE(2, 6), 0.5, 1.5, &rng);
    nb_tensor *in[7] = {x, w1, w2, wt, w1d, gamma, stats};
    for (int i = 0; i < 6; i++) nb_tensor_set_requires_grad(in[i], 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_conv_opts og = nb_conv_defaults(), os = og, ot = og;
    og.groups = 2;
    og.dilation[0] = 2;
    og.padding[0] = og.padding[1] = 2;
    os.stride[0] = os.stride[1] = 2;
    os.padding[1] = 1;
    ot.stride[0] = ot.stride[1] = 2;
    ot.output_padding[0] = 1;
    ot.padding[0] = ot.padding[1] = 1;
    nb_pool_opts pm = nb_pool_defaults(), pa = pm;
    pm.stride[0] = pm.stride[1] = 2;
    pm.padding[0] = pm.padding[1] = 1;
    pm.ceil_mode = 1;
    pa.padding[0] = pa.padding[1] = 1;
    pa.exclude_pad = 1;
    nb_tensor *h = nb_batch_norm_train(nb_conv2d(x, w1, NULL, &og), gamma, NULL, 1e-5, NULL); /* [8,8,38,40] */
    h = nb_conv2d(nb_tanh(h), w2, NULL, &os);                                                /* [8,8,19,20] */
    nb_tensor *a = nb_max_pool2d(h, 3, 3, &pm), *b = nb_avg_pool2d(h, 3, 3, &pa);            /* [8,8,10,11], [8,8,19,20] */
    nb_tensor *c = nb_conv_transpose2d(nb_add(a, nb_adaptive_avg_pool2d(b, 10, 11)), wt, NULL, &ot); /* [8,6,20,21] */
    c = nb_channel_norm(c, stats, NULL, NULL, 1e-3);
    nb_tensor *e = nb_conv1d(nb_reshape(c, NB_SHAPE(8, 6, 420)), w1d, NULL, NULL);           /* [8,5,416] */
    nb_tensor *loss = nb_add(nb_sum_all(nb_mul(e, e)), nb_sum_all(nb_adaptive_avg_pool1d(e, 7)));
    double value = loss ? nb_tensor_item(loss) : NAN;
    nb_tensor *gr[6] = {0};
    CHECK(loss && nb_grad(loss, NULL, ng, in, gr, 0) == NB_OK, "threads %d: %s", threads, nb_error_message());
    for (int i = 0; i < ng; i++) g[i] = gr[i] ? nb_tensor_clone(gr[i]) : NULL;
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < 7; i++) nb_tensor_free(in[i]);
    nb_set_num_threads(0);
    return value;
}

static void threads_family_bits(nb_dtype dt)
{
    nb_tensor *g1[6], *gk[6];
    double l1 = family_pass(dt, 1, g1, 6);
    for (int k = 2; k <= 3; k++) {
        double lk = family_pass(dt, k, gk, 6);
        CHECK(l1 == lk && l1 == l1, "%s: loss %.17g on 1 thread, %.17g on %d", nb_dtype_name(dt), l1, lk, k);
        for (int i = 0; i < 6; i++) {
            int same = g1[i] && gk[i] && nb_tensor_numel(g1[i]) == nb_tensor_numel(gk[i]) &&
                       !memcmp(nb_tensor_cdata(g1[i]), nb_tensor_cdata(gk[i]),
                               (size_t)nb_tensor_numel(g1[i]) * nb_dtype_size(dt));
            CHECK(same, "%s: gradient %d differs between 1 and %d threads", nb_dtype_name(dt), i, k);
            nb_tensor_free(gk[i]);
        }
    }
    for (int i = 0; i < 6; i++) nb_tensor_free(g1[i]);
}

/* Two user threads, each with its own tape, run a conv + batch norm + pooling step on shared weights at
 * the same time, 20 times each: nb_grad's gradients equal the serial run's bits every time, and
 * nb_backward's concurrent additions into the shared .grad lose nothing (the total is 40 times one
 * step's gradient, to rounding). */
typedef struct shared_cnn {
    nb_tensor *w1, *w2, *gamma, *x[2];
    nb_tensor *ref[2][3]; /* the serial gradients of each thread's input */
    int bad, failed;
} shared_cnn;

static nb_tensor *shared_loss(shared_cnn *s, int k)
{
    nb_conv_opts o = nb_conv_defaults();
    o.padding[0] = o.padding[1] = 1;
    nb_conv_opts o2 = o;
    o2.stride[0] = o2.stride[1] = 2;
    nb_tensor *h = nb_relu(nb_batch_norm_train(nb_conv2d(s->x[k], s->w1, NULL, &o), s->gamma, NULL, 1e-5, NULL));
    h = nb_conv2d(nb_max_pool2d(h, 2, 2, NULL), s->w2, NULL, &o2);
    return nb_add(nb_sum_all(nb_mul(h, h)), nb_sum_all(nb_square(nb_adaptive_avg_pool2d(h, 2, 3))));
}

typedef struct worker {
    shared_cnn *s;
    int k;
} worker;

static void *shared_worker(void *arg)
{
    worker *wk = arg;
    shared_cnn *s = wk->s;
    nb_tape *t = nb_tape_new();
    nb_tensor *in[3] = {s->w1, s->w2, s->gamma};
    for (int it = 0; it < 20 && t; it++) {
        nb_tape_begin(t);
        nb_tensor *loss = shared_loss(s, wk->k), *g[3] = {0};
        if (!loss || nb_grad(loss, NULL, 3, in, g, NB_RETAIN_GRAPH) != NB_OK || nb_backward(loss, NULL, 0) != NB_OK) {
            __atomic_add_fetch(&s->failed, 1, __ATOMIC_RELAXED);
        } else {
            for (int i = 0; i < 3; i++)
                if (memcmp(nb_tensor_cdata(g[i]), nb_tensor_cdata(s->ref[wk->k][i]),
                           (size_t)nb_tensor_numel(g[i]) * sizeof(float)))
                    __atomic_add_fetch(&s->bad, 1, __ATOMIC_RELAXED);
        }
        nb_tape_end(t);
        nb_tape_reset(t);
    }
    nb_tape_free(t);
    return NULL;
}

static void user_threads_shared_weights(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 404);
    shared_cnn s = {0};
    s.w1 = nb_tensor_uniform(NB_F32, NB_SHAPE(6, 3, 3, 3), -0.4, 0.4, &rng);
    s.w2 = nb_tensor_uniform(NB_F32, NB_SHAPE(4, 6, 3, 3), -0.3, 0.3, &rng);
    s.gamma = nb_tensor_uniform(NB_F32, NB_SHAPE(6), 0.5, 1.5, &rng);
    for (int k = 0; k < 2; k++) s.x[k] = nb_tensor_uniform(NB_F32, NB_SHAPE(4, 3, 16, 16), -1, 1, &rng);
    nb_tensor *in[3] = {s.w1, s.w2, s.gamma};
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    for (int k = 0; k < 2; k++) {
        nb_tensor *g[3] = {0}, *loss = shared_loss(&s, k);
        CHECK(loss && nb_grad(loss, NULL, 3, in, g, 0) == NB_OK, "serial: %s", nb_error_message());
        for (int i = 0; i < 3; i++) s.ref[k][i] = g[i] ? nb_tensor_clone(g[i]) : nb_tensor_zeros(NB_F32, NB_SHAPE(1));
    }
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < 3; i++) nb_tensor_zero_grad(in[i]);
    pthread_t th[2];
    worker wk[2] = {{&s, 0}, {&s, 1}};
    for (int k = 0; k < 2; k++) CHECK(pthread_create(&th[k], NULL, shared_worker, &wk[k]) == 0, "pthread_create");
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    CHECK(s.failed == 0, "%d concurrent steps failed", s.failed);
    CHECK(s.bad == 0, "%d concurrent gradients differ from the serial run's bits", s.bad);
    for (int i = 0; i < 3; i++) {
        double e = 0, scale = 0;
        for (int64_t j = 0; j < nb_tensor_numel(in[i]); j++) {
            double want = 20 * (nb_tensor_get(s.ref[0][i], j) + nb_tensor_get(s.ref[1][i], j));
            e = fmax(e, fabs(nb_tensor_get(nb_tensor_grad(in[i]), j) - want));
            scale = fmax(scale, fabs(want));
        }
        CHECK(e <= 1e-4 * scale, "input %d: the shared .grad is off by %g (scale %g)", i, e, scale);
    }
    for (int k = 0; k < 2; k++) {
        nb_tensor_free(s.x[k]);
        for (int i = 0; i < 3; i++) nb_tensor_free(s.ref[k][i]);
    }
    for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
    nb_error_clear();
}

/* ---- float32 statistics accumulate wide ----------------------------------------------------------
 * A float32 batch norm over 10^6 values per channel of mean 10^4 and variance about 1: the statistics
 * agree with float64's to 1e-7 (float sums would lose the variance entirely), the gradients to 1e-6 of
 * their scale; the normalised values to 2e-3, the rounding of x scale + shift in float32 at 10^4 (torch's
 * float32 batch_norm is 6.5e-4 off on the same kind of data). */
static void f32_wide_statistics(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 3);
    nb_tensor *x64 = nb_tensor_normal(NB_F64, NB_SHAPE(1000, 2, 1000), 1e4, 1.0, &rng);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *x32 = nb_tensor_clone(nb_cast(x64, NB_F32)), *xr = nb_tensor_clone(nb_cast(x32, NB_F64));
    nb_tape_reset(t);
    nb_tensor_set_requires_grad(x32, 1);
    nb_tensor_set_requires_grad(xr, 1);
    nb_tensor *s32, *s64, *y32 = nb_batch_norm_train(x32, NULL, NULL, 1e-5, &s32);
    nb_tensor *y64 = nb_batch_norm_train(xr, NULL, NULL, 1e-5, &s64);
    nb_tensor *m32 = nb_channel_moments(x32), *m64 = nb_channel_moments(xr);
    nb_tensor *ramp = nb_tensor_arange(NB_F64, 0, 2e6, 1), *seed = nb_sin(nb_reshape(ramp, NB_SHAPE(1000, 2, 1000)));
    nb_tensor *g32 = NULL, *g64 = NULL;
    CHECK(y32 && y64 && m32 && seed && nb_grad(y32, nb_cast(seed, NB_F32), 1, &x32, &g32, 0) == NB_OK &&
              nb_grad(y64, seed, 1, &xr, &g64, 0) == NB_OK,
          "f32 batch norm: %s", nb_error_message());
    if (g32 && g64) {
        for (int i = 0; i < 4; i++) {
            CHECK_CLOSE(nb_tensor_get(s32, i), nb_tensor_get(s64, i), 1e-7, 0);
            CHECK_CLOSE(nb_tensor_get(m32, i), nb_tensor_get(m64, i), 1e-7, 0);
        }
        double ey = 0, eg = 0, sg = 0;
        for (int64_t i = 0; i < 2000000; i += 7) {
            ey = fmax(ey, fabs(nb_tensor_get(y32, i) - nb_tensor_get(y64, i)));
            eg = fmax(eg, fabs(nb_tensor_get(g32, i) - nb_tensor_get(g64, i)));
            sg = fmax(sg, fabs(nb_tensor_get(g64, i)));
        }
        CHECK(ey < 2e-3, "f32 batch norm output off by %g", ey);
        CHECK(eg < 1e-6 * sg, "f32 batch norm gradient off by %g (scale %g)", eg, sg);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor *all[] = {x64, x32, xr, ramp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) nb_tensor_free(all[i]);
}

/* ---- taps whose input columns start past an output row ---------------------------------------------
 * im2col zeroed the columns before a tap's first input column without stopping at the end of the run
 * (one output row of one image): with a narrow output (wv small) and a padding or dilation that puts a
 * tap's first input column past the row, it zeroed the next image's first columns of the next row,
 * already written. conv2d of x [2, 4, 6, 6] with weight [2, 2, 2, 4], groups 2, stride (2, 1), padding
 * (0, 2), dilation (2, 3) gave 0.513 at [0, 0, 0, 0] instead of 3.244 (found by a random comparison
 * with PyTorch: 1 of 600 geometries; with col2im's adjoint unaffected, the backward's weight gradient
 * read the same corrupted columns). Checked here against direct loops, forward and weight gradient,
 * for that geometry and others that take the plain im2col path with taps past the row. */
typedef struct tap_geo {
    int64_t n, c, o, h, w, kh, kw, g, s[2], p[2], d[2];
} tap_geo;

static void taps_past_the_run(void)
{
    const tap_geo geos[] = {
        {2, 4, 2, 6, 6, 2, 4, 2, {2, 1}, {0, 2}, {2, 3}},
        {3, 2, 3, 5, 3, 3, 3, 1, {1, 1}, {1, 3}, {1, 3}}, /* stride 1, the wide grid refused: plain */
        {2, 1, 2, 4, 2, 2, 5, 1, {2, 2}, {1, 4}, {1, 2}},
        {4, 3, 3, 3, 4, 1, 3, 3, {1, 3}, {0, 5}, {1, 4}},
    };
    for (size_t k = 0; k < sizeof geos / sizeof geos[0]; k++) {
        const tap_geo *q = &geos[k];
        const int64_t cg = q->c / q->g, og = q->o / q->g;
        nb_tensor *x = nb_tensor_zeros(NB_F64, NB_SHAPE(q->n, q->c, q->h, q->w));
        nb_tensor *w = nb_tensor_zeros(NB_F64, NB_SHAPE(q->o, cg, q->kh, q->kw));
        for (int64_t j = 0; j < nb_tensor_numel(x); j++) nb_tensor_set(x, j, sin(0.37 * (double)j));
        for (int64_t j = 0; j < nb_tensor_numel(w); j++) nb_tensor_set(w, j, cos(0.71 * (double)j));
        nb_tensor_set_requires_grad(w, 1);
        nb_conv_opts op = nb_conv_defaults();
        op.groups = q->g;
        for (int i = 0; i < 2; i++) op.stride[i] = q->s[i], op.padding[i] = q->p[i], op.dilation[i] = q->d[i];
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        nb_tensor *y = nb_conv2d(x, w, NULL, &op), *gw = NULL;
        CHECK(y && nb_grad(nb_sum_all(y), NULL, 1, &w, &gw, 0) == NB_OK, "geometry %zu: %s", k, nb_error_message());
        if (!gw) goto next;
        const int64_t ho = nb_tensor_dim(y, 2), wo = nb_tensor_dim(y, 3);
        double ey = 0, ew = 0;
        double *dw = calloc((size_t)nb_tensor_numel(w), sizeof(double));
        for (int64_t b = 0; b < q->n; b++)
            for (int64_t oc = 0; oc < q->o; oc++)
                for (int64_t yy = 0; yy < ho; yy++)
                    for (int64_t xx = 0; xx < wo; xx++) {
                        double sum = 0;
                        for (int64_t ci = 0; ci < cg; ci++)
                            for (int64_t i = 0; i < q->kh; i++)
                                for (int64_t j = 0; j < q->kw; j++) {
                                    const int64_t r = yy * q->s[0] - q->p[0] + i * q->d[0];
                                    const int64_t cc = xx * q->s[1] - q->p[1] + j * q->d[1];
                                    if (r < 0 || r >= q->h || cc < 0 || cc >= q->w) continue;
                                    const int64_t wi = ((oc * cg + ci) * q->kh + i) * q->kw + j;
                                    const int64_t xi = ((b * q->c + oc / og * cg + ci) * q->h + r) * q->w + cc;
                                    const double xv = nb_tensor_get(x, xi);
                                    sum += nb_tensor_get(w, wi) * xv;
                                    dw[wi] += xv;
                                }
                        ey = fmax(ey, fabs(nb_tensor_get(y, ((b * q->o + oc) * ho + yy) * wo + xx) - sum));
                    }
        for (int64_t j = 0; j < nb_tensor_numel(w); j++) ew = fmax(ew, fabs(nb_tensor_get(gw, j) - dw[j]));
        free(dw);
        CHECK(ey < 1e-12 && ew < 1e-12, "geometry %zu: conv2d off by %g, its weight gradient by %g", k, ey, ew);
    next:
        nb_tape_end(t);
        nb_tape_free(t);
        nb_tensor_free(x);
        nb_tensor_free(w);
    }
}

/* ---- a failed training forward of BatchNorm changes nothing -------------------------------------
 * The running statistics were updated one after the other (num_batches_tracked first, then the mean,
 * then the variance, each with its own allocations): an allocation failing in between left the count
 * incremented and the mean updated without the variance. Each allocation of a first training forward
 * on a fresh tape is failed in turn: the call fails with NB_ERR_NOMEM and the three buffers are as
 * before, or it succeeds and all three moved. */
typedef struct failing {
    long count, fail_at;
} failing;

static void *f_alloc(size_t size, void *user)
{
    failing *f = user;
    return ++f->count == f->fail_at ? NULL : malloc(size);
}
static void *f_realloc(void *ptr, size_t old_size, size_t new_size, void *user)
{
    (void)old_size;
    failing *f = user;
    return ++f->count == f->fail_at ? NULL : realloc(ptr, new_size);
}
static void f_free(void *ptr, size_t size, void *user)
{
    (void)size;
    (void)user;
    free(ptr);
}

static void bn_update_all_or_nothing(void)
{
    nb_params *p = nb_params_new();
    nb_batch_norm bn;
    /* many channels: each [C] result takes a chunk of the arena of its own, so the update allocates */
    const int64_t C = 1 << 17;
    CHECK(nb_batch_norm2d_init(&bn, p, "bn", C, &(nb_norm_opts){.dtype = NB_F64, .momentum = -1}) == NB_OK,
          "init: %s", nb_error_message());
    nb_rng rng;
    nb_rng_seed(&rng, 9);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(2, C, 1, 1), 1, 3, &rng);
    int failures = 0, successes = 0;
    for (long k = 1; k < 200 && successes == 0; k++) {
        double before[7], after[7];
        for (int i = 0; i < 3; i++) {
            before[i] = nb_tensor_get(bn.running_mean, 7 * i);
            before[3 + i] = nb_tensor_get(bn.running_var, 7 * i);
        }
        before[6] = nb_tensor_get(bn.num_batches_tracked, 0);
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        failing f = {0, k};
        nb_set_allocator(&(nb_allocator){f_alloc, f_realloc, f_free, &f});
        nb_error_clear();
        nb_tensor *y = nb_batch_norm_forward(&bn, x);
        nb_set_allocator(NULL);
        for (int i = 0; i < 3; i++) {
            after[i] = nb_tensor_get(bn.running_mean, 7 * i);
            after[3 + i] = nb_tensor_get(bn.running_var, 7 * i);
        }
        after[6] = nb_tensor_get(bn.num_batches_tracked, 0);
        int same = !memcmp(before, after, sizeof before);
        if (!y) {
            failures++;
            CHECK(nb_error_code() == NB_ERR_NOMEM, "k = %ld: %s", k, nb_error_message());
            CHECK(same, "k = %ld: a failed forward changed the running statistics or the count (%g -> %g batches)", k,
                  before[6], after[6]);
        } else {
            successes += f.count < k; /* no allocation was failed: the last k */
            CHECK(!same && after[6] == before[6] + 1, "k = %ld: a successful forward must update the buffers", k);
        }
        nb_error_clear();
        nb_tape_end(t);
        nb_tape_free(t);
    }
    CHECK(failures > 3 && successes == 1, "%d failed forwards, %d without a failure", failures, successes);
    nb_tensor_free(x);
    nb_params_free(p);
}

/* ---- called from the user's own OpenMP team ------------------------------------------------------
 * A kernel whose tiles run in order (one thread) took its workspace slot from omp_get_thread_num(),
 * which inside a user's parallel region is the user's thread number: threads 1..3 of the user's team
 * wrote past a one-thread workspace (ASan: heap-buffer-overflow in im2col). Each of 3 user OpenMP
 * threads, on its own tape, runs a strided convolution (the plain path, one tile thread) and gets the
 * serial result. */
static void user_openmp_team(void)
{
#ifdef _OPENMP
    nb_rng rng;
    nb_rng_seed(&rng, 31);
    nb_tensor *x = nb_tensor_uniform(NB_F32, NB_SHAPE(8, 3, 64, 64), -1, 1, &rng);
    nb_tensor *w = nb_tensor_uniform(NB_F32, NB_SHAPE(4, 3, 3, 3), -1, 1, &rng);
    nb_conv_opts o = nb_conv_defaults();
    o.stride[0] = 2;
    nb_set_num_threads(1);
    /* the caller's own OpenMP default is given back after the convolution's single-threaded products
     * (97056ff left it at 1: the user's later parallel regions ran on one thread) */
    omp_set_num_threads(3);
    nb_tape *t0 = nb_tape_new();
    nb_tape_begin(t0);
    nb_tensor *ref = nb_tensor_clone(nb_conv2d(x, w, NULL, &o));
    CHECK(omp_get_max_threads() == 3, "the caller's OpenMP default after a convolution: %d, set 3", omp_get_max_threads());
    nb_tape_end(t0);
    nb_tape_free(t0);
    int bad = 0;
#pragma omp parallel num_threads(3) reduction(+ : bad)
    {
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        for (int it = 0; it < 2; it++) {
            nb_tensor *y = nb_conv2d(x, w, NULL, &o);
            bad += !y || !ref || memcmp(nb_tensor_cdata(y), nb_tensor_cdata(ref), 4 * (size_t)nb_tensor_numel(ref));
            nb_tape_reset(t);
        }
        nb_tape_end(t);
        nb_tape_free(t);
    }
    CHECK(bad == 0, "%d convolutions in the user's OpenMP team differ from the serial one", bad);
    nb_set_num_threads(0);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(ref);
#endif
}

/* ---- a pooled zero's sign ------------------------------------------------------------------------
 * The fused forward's 2x2 windows took the maximum of the normalised values v and rectified it, the
 * composition rectifies each v and pools: with a bias of -0.0 and a mean of exactly 0, a window
 * {-1, -0, -1, -1} became max(v) = -0 -> relu -0 in the fused op, but relu: {+0, -0, +0, +0} ->
 * max pooling +0 in the composition (1 / y: -inf against +inf). The same bits now, in both dtypes, on
 * the 2x2 path and the general one (3x3 windows of the same values). */
static void bnrp_signed_zero(void)
{
    for (int d = 0; d < 2; d++) {
        const nb_dtype dt = d ? NB_F64 : NB_F32;
        /* one channel: a window of {-1, -0, -1, -1}, one of {3, 0, 0, 0} (3x3: eight -1 and a -0, an 8); the
         * mean is +0 */
        const double v2[8] = {-1, -0.0, 3, 0, -1, -1, 0, 0};
        const double v3[18] = {-1, -0.0, -1, 8, 0, 0, -1, -1, -1, 0, 0, 0, -1, -1, -1, 0, 0, 0};
        for (int k = 2; k <= 3; k++) {
            nb_tensor *x = nb_tensor_zeros(dt, NB_SHAPE(1, 1, k, 2 * k)), *b = nb_tensor_full(dt, NB_SHAPE(1), -0.0);
            for (int i = 0; i < 2 * k * k; i++) nb_tensor_set(x, i, k == 2 ? v2[i] : v3[i]);
            nb_tape *t = nb_tape_new();
            nb_tape_begin(t);
            nb_tensor *y1 = nb_batch_norm_relu_max_pool2d(x, NULL, b, 1e-5, k, k, NULL);
            nb_tensor *y2 = nb_max_pool2d(nb_relu(nb_batch_norm_train(x, NULL, b, 1e-5, NULL)), k, k, NULL);
            CHECK(y1 && y2, "%s %dx%d: %s", nb_dtype_name(dt), k, k, nb_error_message());
            for (int i = 0; y1 && y2 && i < 2; i++) {
                const double a = nb_tensor_get(y1, i), c = nb_tensor_get(y2, i);
                CHECK(a == c && signbit(a) == signbit(c), "%s %dx%d window %d: fused %g, composition %g",
                      nb_dtype_name(dt), k, k, i, a, c);
            }
            CHECK(y2 && nb_tensor_get(y2, 0) == 0 && !signbit(nb_tensor_get(y2, 0)),
                  "the composition's pooled zero is +0");
            nb_tape_end(t);
            nb_tape_free(t);
            nb_tensor_free(x);
            nb_tensor_free(b);
        }
    }
}

/* ---- a kernel larger than the input: one error code ---------------------------------------------
 * nb_batch_norm_relu_max_pool2d refused a kernel larger than [H, W] with NB_ERR_ARG, the composition's
 * nb_max_pool2d with NB_ERR_SHAPE: nb_batch_norm_relu_pool_forward failed with NB_ERR_ARG in training
 * and NB_ERR_SHAPE in evaluation for the same call. Now NB_ERR_SHAPE for a kernel that does not fit and
 * NB_ERR_ARG for one below 1, as nb_max_pool2d, in both modes. */
static void bnrp_kernel_errors(void)
{
    nb_params *p = nb_params_new();
    nb_batch_norm bn;
    CHECK(nb_batch_norm2d_init(&bn, p, "bn", 3, &(nb_norm_opts){.dtype = NB_F64}) == NB_OK, "init: %s",
          nb_error_message());
    nb_tensor *x = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3, 5, 4));
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    const int64_t kernels[3][2] = {{6, 2}, {2, 5}, {0, 2}};
    for (int k = 0; k < 3; k++) {
        const int64_t kh = kernels[k][0], kw = kernels[k][1];
        const nb_status want = kh < 1 ? NB_ERR_ARG : NB_ERR_SHAPE;
        char needle[64];
        snprintf(needle, sizeof needle, "kernel (%lld, %lld)", (long long)kh, (long long)kw);
        CHECK_ERROR(!nb_max_pool2d(x, kh, kw, NULL), want, needle);
        CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(x, NULL, NULL, 1e-5, kh, kw, NULL), want, needle);
        for (int training = 1; training >= 0; training--) {
            nb_params_set_training(p, training);
            CHECK_ERROR(!nb_batch_norm_relu_pool_forward(&bn, x, kh, kw), want, needle);
        }
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    nb_params_free(p);
}

/* ---- channel sums in an order fixed by the source -------------------------------------------------
 * The channel kernels' double sums (statistics, sum g and sum g (x - m) of the backward) became omp
 * simd reductions, whose order the compiler picks: the same program gave other statistics built with
 * clang than with gcc, and at -O0 (the debug and sanitizer builds) than at -O2 (f64 batch norm: means
 * and variances 1 to 4 ulp apart; before, all four builds agreed to the bit). The order is fixed again:
 * per plane, 8 partial sums (lane k takes elements t + k of each full block of 8), combined as
 * ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)), then the tail in order; planes in order. Computed here in
 * that order, the f64 statistics of nb_channel_moments, nb_batch_norm_train and the fused op, and the
 * weight and bias gradients of batch norm's fast backward, must be those bits. */
static double lanes_sum(const double *v, const double *g, double m, int64_t n, int kind)
{
    /* kind 0: sum v, 1: sum (v - m)^2, 2: sum g (v - m) */
    double p[8] = {0};
    int64_t t = 0;
    for (; t + 8 <= n; t += 8)
        for (int k = 0; k < 8; k++) {
            const double e = v[t + k] - m;
            p[k] += kind == 0 ? v[t + k] : kind == 1 ? e * e : g[t + k] * e;
        }
    double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    for (; t < n; t++) {
        const double e = v[t] - m;
        s += kind == 0 ? v[t] : kind == 1 ? e * e : g[t] * e;
    }
    return s;
}

static void channel_sums_fixed_order(void)
{
    const int64_t a = 3, c = 2, h = 5, w = 11, d = h * w; /* 55 per plane: 6 blocks of 8 and a tail of 7 */
    const double eps = 1e-5;
    nb_rng rng;
    nb_rng_seed(&rng, 43);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(a, c, h, w), 99, 101, &rng);
    nb_tensor *g = nb_tensor_uniform(NB_F64, NB_SHAPE(a, c, h, w), -1, 1, &rng);
    nb_tensor *wt = nb_tensor_uniform(NB_F64, NB_SHAPE(c), 0.5, 1.5, &rng), *b = nb_tensor_zeros(NB_F64, NB_SHAPE(c));
    nb_tensor_set_requires_grad(wt, 1);
    nb_tensor_set_requires_grad(b, 1);
    const double *xv = nb_tensor_cdata(x), *gv = nb_tensor_cdata(g);
    double want[2][2], sg[2], sgx[2]; /* mean, variance; sum g, sum g (x - mean) */
    for (int64_t k = 0; k < c; k++) {
        double s = 0, v = 0;
        for (int64_t i = 0; i < a; i++) s += lanes_sum(xv + (i * c + k) * d, NULL, 0, d, 0);
        const double mean = s / (double)(a * d);
        for (int64_t i = 0; i < a; i++) v += lanes_sum(xv + (i * c + k) * d, NULL, mean, d, 1);
        want[k][0] = mean;
        want[k][1] = v / (double)(a * d);
        sg[k] = sgx[k] = 0;
        for (int64_t i = 0; i < a; i++) {
            sg[k] += lanes_sum(gv + (i * c + k) * d, NULL, 0, d, 0);
            sgx[k] += lanes_sum(xv + (i * c + k) * d, gv + (i * c + k) * d, mean, d, 2);
        }
    }
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *st[3] = {nb_channel_moments(x), NULL, NULL};
    nb_tensor *y = nb_batch_norm_train(x, wt, b, eps, &st[1]);
    CHECK(nb_batch_norm_relu_max_pool2d(x, NULL, NULL, eps, 1, 1, &st[2]) != NULL, "fused: %s", nb_error_message());
    for (int j = 0; j < 3; j++)
        for (int64_t k = 0; st[j] && k < c; k++)
            CHECK(nb_tensor_get(st[j], k) == want[k][0] && nb_tensor_get(st[j], c + k) == want[k][1],
                  "%s: channel %lld: mean %a, variance %a; in the fixed order %a, %a",
                  j == 0 ? "channel_moments" : j == 1 ? "batch_norm_train" : "batch_norm_relu_max_pool2d",
                  (long long)k, nb_tensor_get(st[j], k), nb_tensor_get(st[j], c + k), want[k][0], want[k][1]);
    nb_tensor *in[2] = {wt, b}, *gr[2] = {0};
    CHECK(y && nb_grad(y, g, 2, in, gr, 0) == NB_OK, "batch norm backward: %s", nb_error_message());
    for (int64_t k = 0; gr[0] && gr[1] && k < c; k++) {
        const double dw = sgx[k] * (1.0 / sqrt(want[k][1] + eps)); /* sum g xhat, as the kernel forms it */
        CHECK(nb_tensor_get(gr[1], k) == sg[k] && nb_tensor_get(gr[0], k) == dw,
              "batch norm's fast backward, channel %lld: db %a, dw %a; in the fixed order %a, %a", (long long)k,
              nb_tensor_get(gr[1], k), nb_tensor_get(gr[0], k), sg[k], dw);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor *all[] = {x, g, wt, b};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) nb_tensor_free(all[i]);
}

/* ---- the thread knob turned during a fused backward ----------------------------------------------
 * nb_batch_norm_relu_max_pool2d's no-graph backward sized its per-thread workspace from the thread
 * count, then its kernel asked for the thread count again: a knob turned in between (by another
 * thread, or, as here, by user code the backward calls: the allocator that gives the workspace its
 * chunk) ran two threads over a one-thread workspace (ASan: heap-buffer-overflow in bnrp_gz; without
 * ASan the second thread's planes went past the block). The allocator below keeps a guard zone after
 * each block and turns the knob from 1 to 2 on the first block of the workspace's size: the guard
 * must be intact and the gradients those of a backward on one thread. */
#define GUARD_BYTES ((size_t)3 << 20)
typedef struct knob_alloc {
    size_t arm_at;  /* the first block of at least this size turns the knob to 2 (0: done) */
    long corrupted; /* blocks whose guard zone was written */
    int n;          /* the live blocks this allocator gave */
    unsigned char *blocks[32];
    size_t sizes[32];
} knob_alloc;

/* a block's guard zone, checked (a written one counted) */
static void guard_check(knob_alloc *k, const unsigned char *p, size_t size)
{
    for (size_t i = 0; i < GUARD_BYTES; i++)
        if (p[size + i] != 0xA5) {
            k->corrupted++;
            return;
        }
}
static void *k_alloc(size_t size, void *user)
{
    knob_alloc *k = user;
    if (k->n == 32) return NULL;
    unsigned char *p = malloc(size + GUARD_BYTES);
    if (!p) return NULL;
    memset(p + size, 0xA5, GUARD_BYTES);
    k->blocks[k->n] = p;
    k->sizes[k->n++] = size;
    if (k->arm_at && size >= k->arm_at) {
        k->arm_at = 0;
        nb_set_num_threads(2);
    }
    return p;
}
static void k_free(void *ptr, size_t size, void *user)
{
    knob_alloc *k = user;
    for (int i = 0; i < k->n; i++)
        if (k->blocks[i] == ptr) {
            guard_check(k, ptr, size);
            k->blocks[i] = k->blocks[--k->n];
            k->sizes[i] = k->sizes[k->n];
        }
    free(ptr); /* (also blocks of the default allocator's, made before this one was set) */
}
static void *k_realloc(void *ptr, size_t old_size, size_t new_size, void *user)
{
    void *p = k_alloc(new_size, user);
    if (p && ptr) memcpy(p, ptr, old_size < new_size ? old_size : new_size);
    if (p) k_free(ptr, old_size, user);
    return p;
}

static void bnrp_knob_mid_backward(void)
{
#ifdef _OPENMP
    const int64_t h = 600, w = 600; /* planes of 1.4 MB: one workspace plane per thread */
    nb_rng rng;
    nb_rng_seed(&rng, 41);
    nb_tensor *in[3] = {nb_tensor_uniform(NB_F32, NB_SHAPE(1, 2, h, w), -1, 1, &rng),
                        nb_tensor_uniform(NB_F32, NB_SHAPE(2), 0.5, 1.5, &rng),
                        nb_tensor_uniform(NB_F32, NB_SHAPE(2), -0.5, 0.5, &rng)};
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    nb_tensor *ref[3] = {0}, *g[3] = {0};
    knob_alloc k = {.arm_at = (size_t)(h * w) * sizeof(float)};
    for (int run = 0; run < 2; run++) {
        nb_set_num_threads(1);
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        /* one window per plane: the forward's results are small, the workspace gets a chunk of its own */
        nb_tensor *y = nb_batch_norm_relu_max_pool2d(in[0], in[1], in[2], 1e-5, h, w, NULL);
        nb_tensor *seed = nb_tensor_from_data(NB_F32, NB_SHAPE(1, 2, 1, 1), (const float[]){0.75f, -1.25f});
        nb_tensor **out = run ? g : ref;
        if (run) nb_set_allocator(&(nb_allocator){k_alloc, k_realloc, k_free, &k});
        nb_status st = y ? nb_grad(y, seed, 3, in, out, 0) : nb_error_code();
        const int knob = nb_num_threads();
        if (run) nb_set_allocator(NULL);
        for (int i = 0; run && i < k.n; i++) guard_check(&k, k.blocks[i], k.sizes[i]); /* (freed later by free) */
        CHECK(st == NB_OK, "fused backward (run %d): %s", run, nb_error_message());
        if (run) CHECK(k.arm_at == 0 && knob == 2, "the knob was not turned during the backward (now %d)", knob);
        for (int i = 0; i < 3; i++) out[i] = out[i] ? nb_tensor_clone(out[i]) : NULL;
        nb_tape_end(t);
        nb_tape_free(t);
        nb_tensor_free(seed);
    }
    CHECK(k.corrupted == 0, "%ld blocks written past their end by the fused backward", k.corrupted);
    for (int i = 0; i < 3; i++) {
        CHECK(g[i] && ref[i] &&
                  !memcmp(nb_tensor_cdata(g[i]), nb_tensor_cdata(ref[i]), 4 * (size_t)nb_tensor_numel(ref[i])),
              "gradient %d with the knob turned mid-backward differs from the one-thread backward's", i);
        nb_tensor_free(g[i]);
        nb_tensor_free(ref[i]);
        nb_tensor_free(in[i]);
    }
    nb_set_num_threads(0);
#endif
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "user-threads")) { /* alone, for ThreadSanitizer (.ci/run) */
        user_threads_shared_weights();
        return nbt_report("conv_hostile user-threads");
    }
    huge_geometry();
    taps_past_the_run();
    stale_names_the_op();
    empty_norms();
    f32_wide_statistics();
    bn_update_all_or_nothing();
    threads_family_bits(NB_F32);
    threads_family_bits(NB_F64);
    user_threads_shared_weights();
    user_openmp_team();
    bnrp_knob_mid_backward();
    bnrp_signed_zero();
    bnrp_kernel_errors();
    channel_sums_fixed_order();
    return nbt_report("conv_hostile");
}
