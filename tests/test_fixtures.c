/* PyTorch reference tests: every case of a fixture file written by tests/gen_fixtures.py (the file
 * format is documented there) is run through nabla, and its forward output and input gradients are
 * compared with PyTorch's.
 *
 *   test_fixtures FILE...      (ops_f64.txt, and cnn_ops_f64.txt from gen_cnn_fixtures.py)
 *
 * Each case runs twice:
 *   - as stored (float64): leaves from the fixture's inputs, the op through the dispatch table below,
 *     nb_backward(out, seed, 0), then out and every gradient against PyTorch to 1e-12 relative;
 *   - with every float64 input (and the seed) cast to float32, to check that the float32 kernels agree
 *     with the float64 reference to 1e-5 relative (ops whose point is a dtype, casts, skip this).
 * A value case (no seed, no gradients: comparisons, argsort, results of i64 ops) compares the output
 * only; i64 outputs must match exactly.
 *
 * To add an op: a runner below and a row in OPS (name as in gen_fixtures.py's OPS, number of inputs,
 * whether the float32 pass applies). The test fails on a fixture op without a runner and on a runner
 * without a fixture case. */
#include "fixture.h"
#include "nbtest.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------------------------------------- */
/* Tolerances                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

/* An element passes when |got - want| <= RTOL |want| + ATOL_SCALE max|want over the tensor|.
 * float64: the relative bound holds wherever both sides round the same real result; the absolute
 * floor (1e-14 of the tensor's largest magnitude, i.e. ~100 ulps of it) only matters for elements near
 * zero, whose value is decided by rounding in sums taken in a different order (BLAS and the
 * reductions) or by cancellation; it is scaled so that a tensor of uniformly tiny values (a sigmoid
 * tail) is still checked to 1e-12 relative. float32 (inputs exact in float32, as the generator
 * makes them): 24-bit results, so 1e-5 relative, and a floor of 1e-6 of the largest magnitude for
 * values formed by cancellation (1 - y^2 of tanh near |y| = 1 carries a few float32 ulps of 1). */
#define F64_RTOL 1e-12
#define F64_ATOL_SCALE 1e-14
#define F32_RTOL 1e-5
#define F32_ATOL_SCALE 1e-6

/* ---------------------------------------------------------------------------------------------- */
/* The fixture format: roles in<i>, out, seed, grad<i> (the rest is fixture.h's)                   */
/* ---------------------------------------------------------------------------------------------- */

#define FX_MAX_IN 16

enum { ROLE_IN, ROLE_GRAD, ROLE_OUT, ROLE_SEED };

/* A case's tensors by role, NULL where absent; inputs (and gradients) are numbered 0..nin-1. */
typedef struct op_tensors {
    int nin;
    fx_tensor *in[FX_MAX_IN], *grad[FX_MAX_IN], *out, *seed;
} op_tensors;

static void op_tensors_of(fx_case *c, op_tensors *ts)
{
    memset(ts, 0, sizeof *ts);
    for (int i = 0; i < c->nt; i++) {
        fx_tensor *t = &c->t[i];
        if (t->kind == ROLE_OUT) {
            ts->out = t;
        } else if (t->kind == ROLE_SEED) {
            ts->seed = t;
        } else {
            if (t->kind == ROLE_IN)
                ts->in[t->index] = t;
            else
                ts->grad[t->index] = t;
            if (t->index >= ts->nin) ts->nin = t->index + 1;
        }
    }
}

static bool op_role(fx_parser *p, fx_tensor *t)
{
    const char *role = t->role;
    if (!strcmp(role, "out")) {
        t->kind = ROLE_OUT;
    } else if (!strcmp(role, "seed")) {
        t->kind = ROLE_SEED;
    } else if (!strncmp(role, "in", 2) || !strncmp(role, "grad", 4)) {
        bool is_in = role[0] == 'i';
        const char *num = role + (is_in ? 2 : 4);
        int64_t idx = -1;
        if (!*num || (num[0] == '0' && num[1]) || !fx_int(p, num, "input index", 0, FX_MAX_IN - 1, &idx))
            return fx_fail(p, "tensor: bad role \"%s\" (in0..in%d, out, seed, grad0..grad%d)", role,
                           FX_MAX_IN - 1, FX_MAX_IN - 1);
        t->kind = is_in ? ROLE_IN : ROLE_GRAD;
        t->index = (int)idx;
    } else {
        return fx_fail(p, "tensor: unknown role \"%s\" (in<i>, out, seed, grad<i>)", role);
    }
    return true;
}

/* The checks that need the whole case, at its `end`. */
static bool op_finish(fx_parser *p, fx_case *c)
{
    op_tensors ts;
    op_tensors_of(c, &ts);
    int last = ts.nin - 1;
    for (int i = 0; i < ts.nin; i++) {
        if (!ts.in[i])
            return fx_fail(p, "case %s: %s%d without in%d (inputs are numbered from 0 without gaps)", c->name,
                           ts.grad[i] ? "grad" : "in", last, i);
        if (!ts.grad[i]) continue;
        if (ts.in[i]->dtype == NB_I64) return fx_fail(p, "case %s: grad%d of an i64 input", c->name, i);
        if (ts.grad[i]->dtype != ts.in[i]->dtype || !fx_same_shape(ts.grad[i], ts.in[i]))
            return fx_fail(p, "case %s: grad%d (line %d) differs from in%d in dtype or shape", c->name, i,
                           ts.grad[i]->line, i);
    }
    if (!ts.out) return fx_fail(p, "case %s: no out tensor", c->name);
    bool any_grad = false;
    for (int i = 0; i < ts.nin; i++) any_grad = any_grad || ts.grad[i];
    if (!ts.seed && !any_grad) return true; /* a value case */
    if (!ts.seed) return fx_fail(p, "case %s: no seed tensor", c->name);
    if (ts.out->dtype == NB_I64) return fx_fail(p, "case %s: an i64 out has no gradient to check", c->name);
    if (ts.seed->dtype != ts.out->dtype || !fx_same_shape(ts.seed, ts.out))
        return fx_fail(p, "case %s: seed (line %d) differs from out in dtype or shape", c->name, ts.seed->line);
    return true;
}

static const fx_format OPS_FORMAT = {
    .header = "nabla-fixtures",
    .version = 1,
    .op_word = "op",
    .dtypes = 1u << NB_F32 | 1u << NB_F64 | 1u << NB_I64,
    .role = op_role,
    .finish = op_finish,
};

/* ---------------------------------------------------------------------------------------------- */
/* Attributes, as runners read them                                                                */
/* ---------------------------------------------------------------------------------------------- */

static char fx_run_err[256]; /* why a runner gave up before calling nabla */

/* A list of up to max integers (an empty list is allowed). */
static bool attr_ints(fx_case *c, const char *key, int max, int *n, int64_t *out)
{
    fx_attr *a = fx_attr_find(c, key);
    if (!a) {
        snprintf(fx_run_err, sizeof fx_run_err, "missing attribute %s", key);
        return false;
    }
    if (a->n > max) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: %d values, at most %d", key, a->n, max);
        return false;
    }
    for (int i = 0; i < a->n; i++) {
        if (a->v[i] != floor(a->v[i]) || fabs(a->v[i]) > 1e15) {
            snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: %.17g is not an integer", key, a->v[i]);
            return false;
        }
        out[i] = (int64_t)a->v[i];
    }
    *n = a->n;
    return true;
}

/* The same list as ints (axes, dims). */
static bool attr_axes(fx_case *c, const char *key, int *n, int *out)
{
    int64_t v[FX_MAX_ATTR_VALS];
    if (!attr_ints(c, key, FX_MAX_ATTR_VALS, n, v)) return false;
    for (int i = 0; i < *n; i++) out[i] = (int)v[i];
    return true;
}

/* One integer; def when absent (def INT64_MIN: required). */
static bool attr_int(fx_case *c, const char *key, int64_t def, int64_t *out)
{
    int n;
    if (!fx_attr_find(c, key) && def != INT64_MIN) {
        *out = def;
        return true;
    }
    if (!attr_ints(c, key, 1, &n, out)) return false;
    if (n != 1) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: expected one value", key);
        return false;
    }
    return true;
}

static bool attr_f64(fx_case *c, const char *key, double *out)
{
    fx_attr *a = fx_attr_find(c, key);
    if (!a || a->n != 1) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: expected one number", key);
        return false;
    }
    *out = a->v[0];
    return true;
}

/* ---------------------------------------------------------------------------------------------- */
/* Runners: op name -> a call of the public API with the case's attributes                         */
/* ---------------------------------------------------------------------------------------------- */

typedef nb_tensor *(*fx_run_fn)(fx_case *c, int nin, nb_tensor *const *in);

#define RUN(name) static nb_tensor *run_##name(fx_case *c, int nin, nb_tensor *const *in)
#define RUN_UNARY(name, fn)                                                                            \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)c, (void)nin;                                                                            \
        return fn(in[0]);                                                                              \
    }
#define RUN_BINARY(name, fn)                                                                           \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)c, (void)nin;                                                                            \
        return fn(in[0], in[1]);                                                                       \
    }
/* x op s with attribute s */
#define RUN_SCALAR(name, call)                                                                         \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)nin;                                                                                     \
        double s;                                                                                      \
        return attr_f64(c, "s", &s) ? call : NULL;                                                     \
    }

RUN_BINARY(add, nb_add)
RUN_BINARY(lstm_gates, nb_lstm_gates)
RUN(gru_gates)
{
    (void)c, (void)nin;
    return nb_gru_gates(in[0], in[1], in[2]);
}
RUN_BINARY(sub, nb_sub)
RUN_BINARY(mul, nb_mul)
RUN_BINARY(div, nb_div)
RUN_SCALAR(add_scalar, nb_add_scalar(in[0], s))
RUN_SCALAR(mul_scalar, nb_mul_scalar(in[0], s))
RUN_SCALAR(rsub_scalar, nb_rsub_scalar(s, in[0]))
RUN_SCALAR(div_scalar, nb_div_scalar(in[0], s))
RUN(affine)
{
    (void)nin;
    double a, b;
    return attr_f64(c, "a", &a) && attr_f64(c, "b", &b) ? nb_affine(in[0], a, b) : NULL;
}
RUN_UNARY(neg, nb_neg)
RUN_UNARY(exp, nb_exp)
RUN_UNARY(log, nb_log)
RUN_UNARY(tanh, nb_tanh)
RUN_UNARY(sigmoid, nb_sigmoid)
RUN_UNARY(relu, nb_relu)
RUN_UNARY(sum_all, nb_sum_all)
RUN_UNARY(mean_all, nb_mean_all)

/* trans_a / trans_b select nb_matmul_ex's flags; both 0 uses plain nb_matmul */
RUN(matmul)
{
    (void)nin;
    int64_t ta, tb;
    if (!attr_int(c, "trans_a", 0, &ta) || !attr_int(c, "trans_b", 0, &tb)) return NULL;
    unsigned flags = (ta ? NB_TRANS_A : 0u) | (tb ? NB_TRANS_B : 0u);
    return flags ? nb_matmul_ex(in[0], in[1], flags) : nb_matmul(in[0], in[1]);
}

RUN(sum)
{
    (void)nin;
    int n, axes[FX_MAX_ATTR_VALS];
    int64_t keep;
    if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "keepdim", 0, &keep)) return NULL;
    return nb_sum(in[0], n, axes, (int)keep);
}

RUN(mean)
{
    (void)nin;
    int n, axes[FX_MAX_ATTR_VALS];
    int64_t keep;
    if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "keepdim", 0, &keep)) return NULL;
    return nb_mean(in[0], n, axes, (int)keep);
}

RUN(sum_to)
{
    (void)nin;
    int n;
    int64_t shape[FX_MAX_ATTR_VALS];
    return attr_ints(c, "shape", NB_MAX_DIMS, &n, shape) ? nb_sum_to(in[0], n, shape) : NULL;
}

RUN(reshape)
{
    (void)nin;
    int n;
    int64_t shape[FX_MAX_ATTR_VALS];
    return attr_ints(c, "shape", NB_MAX_DIMS, &n, shape) ? nb_reshape(in[0], n, shape) : NULL;
}

RUN(transpose)
{
    (void)nin;
    int n, dims[FX_MAX_ATTR_VALS];
    if (!attr_axes(c, "dims", &n, dims)) return NULL;
    if (n != 2) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute dims: expected 2 values, got %d", n);
        return NULL;
    }
    return nb_transpose(in[0], dims[0], dims[1]);
}

RUN(permute)
{
    (void)nin;
    int n, perm[FX_MAX_ATTR_VALS];
    return attr_axes(c, "perm", &n, perm) ? nb_permute(in[0], n, perm) : NULL;
}

RUN(broadcast_to)
{
    (void)nin;
    int n;
    int64_t shape[FX_MAX_ATTR_VALS];
    return attr_ints(c, "shape", NB_MAX_DIMS, &n, shape) ? nb_broadcast_to(in[0], n, shape) : NULL;
}

RUN(cast_f32)
{
    (void)c, (void)nin;
    return nb_cast(in[0], NB_F32);
}

RUN(cast_f64)
{
    (void)c, (void)nin;
    return nb_cast(in[0], NB_F64);
}

/* ---- the full primitive set ------------------------------------------------------------------ */

RUN_BINARY(pow, nb_pow)
RUN_BINARY(maximum, nb_maximum)
RUN_BINARY(minimum, nb_minimum)
RUN_SCALAR(sub_scalar, nb_sub_scalar(in[0], s))
RUN_SCALAR(rdiv_scalar, nb_rdiv_scalar(s, in[0]))
RUN(pow_scalar)
{
    (void)nin;
    double p;
    return attr_f64(c, "p", &p) ? nb_pow_scalar(in[0], p) : NULL;
}
RUN_UNARY(sqrt, nb_sqrt)
RUN_UNARY(abs, nb_abs)
RUN_UNARY(sign, nb_sign)
RUN_UNARY(sin, nb_sin)
RUN_UNARY(cos, nb_cos)
RUN_UNARY(erf, nb_erf)
RUN_UNARY(log1p, nb_log1p)
RUN_UNARY(expm1, nb_expm1)
RUN_UNARY(softplus, nb_softplus)
RUN_UNARY(gelu, nb_gelu)
RUN_UNARY(reciprocal, nb_reciprocal)
RUN_UNARY(square, nb_square)
RUN(leaky_relu)
{
    (void)nin;
    double slope;
    return attr_f64(c, "slope", &slope) ? nb_leaky_relu(in[0], slope) : NULL;
}
RUN(elu)
{
    (void)nin;
    double alpha;
    return attr_f64(c, "alpha", &alpha) ? nb_elu(in[0], alpha) : NULL;
}
RUN(clamp)
{
    (void)nin;
    double lo, hi;
    return attr_f64(c, "lo", &lo) && attr_f64(c, "hi", &hi) ? nb_clamp(in[0], lo, hi) : NULL;
}

/* in0 is the condition's source: the mask is nb_gt(in0, 0), as torch.where(c > 0, a, b) */
RUN(where)
{
    (void)c, (void)nin;
    nb_tensor *zero = nb_zeros(nb_tensor_dtype(in[0]), 0, NULL);
    return nb_where(nb_gt(in[0], zero), in[1], in[2]);
}

/* axes (empty: all) and keepdim, as sum */
#define RUN_AXES(name, fn)                                                                             \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)nin;                                                                                     \
        int n, axes[FX_MAX_ATTR_VALS];                                                                 \
        int64_t keep;                                                                                  \
        if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "keepdim", 0, &keep)) return NULL;         \
        return fn(in[0], n, axes, (int)keep);                                                          \
    }
RUN_AXES(max, nb_max)
RUN_AXES(min, nb_min)
RUN_AXES(logsumexp, nb_logsumexp)

/* axes, correction, keepdim */
#define RUN_VAR(name, fn)                                                                              \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)nin;                                                                                     \
        int n, axes[FX_MAX_ATTR_VALS];                                                                 \
        int64_t keep, corr;                                                                            \
        if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "correction", INT64_MIN, &corr) ||          \
            !attr_int(c, "keepdim", 0, &keep))                                                         \
            return NULL;                                                                               \
        return fn(in[0], n, axes, (int)corr, (int)keep);                                               \
    }
RUN_VAR(var, nb_var)
RUN_VAR(std, nb_std)

RUN(softmax)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_softmax(in[0], (int)axis) : NULL;
}

RUN(log_softmax)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_log_softmax(in[0], (int)axis) : NULL;
}

RUN(slice)
{
    (void)nin;
    int64_t axis, start, stop, step;
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_int(c, "start", INT64_MIN, &start) ||
        !attr_int(c, "stop", INT64_MIN, &stop) || !attr_int(c, "step", INT64_MIN, &step))
        return NULL;
    return nb_slice(in[0], (int)axis, start, stop, step);
}

RUN(concat)
{
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_concat(nin, in, (int)axis) : NULL;
}

RUN(stack)
{
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_stack(nin, in, (int)axis) : NULL;
}

/* pieces joined again in reverse order, as the generator does */
static nb_tensor *concat_reversed(int n, nb_tensor **pieces, int axis)
{
    nb_tensor *rev[FX_MAX_ATTR_VALS];
    for (int i = 0; i < n; i++) rev[i] = pieces[n - 1 - i];
    return nb_concat(n, rev, axis);
}

RUN(split)
{
    (void)nin;
    int n;
    int64_t axis, sizes[FX_MAX_ATTR_VALS];
    nb_tensor *outs[FX_MAX_ATTR_VALS];
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_ints(c, "sizes", FX_MAX_ATTR_VALS, &n, sizes)) return NULL;
    if (nb_split(in[0], (int)axis, n, sizes, outs) != NB_OK) return NULL;
    return concat_reversed(n, outs, (int)axis);
}

RUN(chunk)
{
    (void)nin;
    int64_t n, axis;
    nb_tensor *outs[FX_MAX_ATTR_VALS];
    if (!attr_int(c, "n", INT64_MIN, &n) || !attr_int(c, "axis", INT64_MIN, &axis)) return NULL;
    if (n < 1 || n > FX_MAX_ATTR_VALS) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute n: %lld pieces, 1..%d supported", (long long)n,
                 FX_MAX_ATTR_VALS);
        return NULL;
    }
    int pieces = nb_chunk(in[0], (int)n, (int)axis, outs);
    return pieces < 1 ? NULL : concat_reversed(pieces, outs, (int)axis);
}

RUN(squeeze)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_squeeze(in[0], (int)axis) : NULL;
}

RUN(unsqueeze)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_unsqueeze(in[0], (int)axis) : NULL;
}

RUN(pad)
{
    (void)nin;
    int n;
    int64_t pads[FX_MAX_ATTR_VALS];
    double value;
    if (!attr_ints(c, "pads", FX_MAX_ATTR_VALS, &n, pads) || !attr_f64(c, "value", &value)) return NULL;
    if (n != 2 * nb_tensor_ndim(in[0])) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute pads: %d values for %d dims", n, nb_tensor_ndim(in[0]));
        return NULL;
    }
    return nb_pad(in[0], pads, value);
}

/* in0 x, in1 the i64 indices */
RUN(index_select)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_index_select(in[0], (int)axis, in[1]) : NULL;
}

RUN(gather)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_gather(in[0], (int)axis, in[1]) : NULL;
}

/* in0 src, in1 the i64 indices; attribute shape: the target */
RUN(scatter_add)
{
    (void)nin;
    int n;
    int64_t axis, shape[FX_MAX_ATTR_VALS];
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_ints(c, "shape", NB_MAX_DIMS, &n, shape)) return NULL;
    return nb_scatter_add(n, shape, (int)axis, in[1], in[0]);
}

/* the mask is drawn from a generator seeded with the attribute seed (the generator recomputes it) */
RUN(dropout)
{
    (void)nin;
    double p;
    int64_t seed;
    if (!attr_f64(c, "p", &p) || !attr_int(c, "seed", INT64_MIN, &seed)) return NULL;
    nb_rng rng;
    nb_rng_seed(&rng, (uint64_t)seed);
    return nb_dropout(in[0], p, &rng);
}

/* ---- convolutional networks (tests/gen_cnn_fixtures.py, cnn_ops_f64.txt) ---------------------- */

/* dims values of attribute key into v (all of them when dims is 0) */
static bool attr_dims(fx_case *c, const char *key, int dims, int64_t *v)
{
    int n;
    if (!attr_ints(c, key, 2, &n, v)) return false;
    if (n != dims) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: %d values for %d spatial dims", key, n, dims);
        return false;
    }
    return true;
}

/* stride, padding, dilation, groups, output_padding (transposed), same (optional) */
static bool conv_attrs(fx_case *c, int dims, int transposed, nb_conv_opts *o)
{
    int64_t same = 0;
    *o = nb_conv_defaults();
    if (!attr_dims(c, "stride", dims, o->stride) || !attr_dims(c, "padding", dims, o->padding) ||
        !attr_dims(c, "dilation", dims, o->dilation) || !attr_int(c, "groups", INT64_MIN, &o->groups) ||
        (transposed && !attr_dims(c, "output_padding", dims, o->output_padding)) || !attr_int(c, "same", 0, &same))
        return false;
    o->same_padding = (int)same;
    return true;
}

/* in0 x, in1 weight, in2 bias (optional) */
#define RUN_CONV(name, dims, transposed, fn)                                                           \
    RUN(name)                                                                                          \
    {                                                                                                  \
        nb_conv_opts o;                                                                                \
        return conv_attrs(c, dims, transposed, &o) ? fn(in[0], in[1], nin > 2 ? in[2] : NULL, &o) : NULL; \
    }
RUN_CONV(conv2d, 2, 0, nb_conv2d)
RUN_CONV(conv1d, 1, 0, nb_conv1d)
RUN_CONV(conv_transpose2d, 2, 1, nb_conv_transpose2d)
RUN_CONV(conv_transpose1d, 1, 1, nb_conv_transpose1d)

/* in0 x, in1 the output's gradient; attribute kernel */
RUN(conv2d_weight)
{
    (void)nin;
    nb_conv_opts o;
    int64_t k[2];
    if (!conv_attrs(c, 2, 0, &o) || !attr_dims(c, "kernel", 2, k)) return NULL;
    return nb_conv2d_weight(in[0], in[1], k[0], k[1], &o);
}

/* kernel, stride, padding, ceil_mode, and dilation (max) or count_include_pad (average) */
static bool pool_attrs(fx_case *c, int dims, int max, int64_t *k, nb_pool_opts *o)
{
    int64_t ceil = 0, incl = 1;
    *o = nb_pool_defaults();
    if (!attr_dims(c, "kernel", dims, k) || !attr_dims(c, "stride", dims, o->stride) ||
        !attr_dims(c, "padding", dims, o->padding) || !attr_int(c, "ceil_mode", INT64_MIN, &ceil) ||
        (max ? !attr_dims(c, "dilation", dims, o->dilation) : !attr_int(c, "count_include_pad", INT64_MIN, &incl)))
        return false;
    o->ceil_mode = (int)ceil;
    o->exclude_pad = !incl;
    return true;
}

#define RUN_POOL(name, dims, max, call)                                                                \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)nin;                                                                                     \
        int64_t k[2];                                                                                  \
        nb_pool_opts o;                                                                                \
        return pool_attrs(c, dims, max, k, &o) ? call : NULL;                                          \
    }
RUN_POOL(max_pool2d, 2, 1, nb_max_pool2d(in[0], k[0], k[1], &o))
RUN_POOL(max_pool1d, 1, 1, nb_max_pool1d(in[0], k[0], &o))
RUN_POOL(avg_pool2d, 2, 0, nb_avg_pool2d(in[0], k[0], k[1], &o))
RUN_POOL(avg_pool1d, 1, 0, nb_avg_pool1d(in[0], k[0], &o))

RUN(adaptive_avg_pool2d)
{
    (void)nin;
    int64_t size[2];
    return attr_dims(c, "size", 2, size) ? nb_adaptive_avg_pool2d(in[0], size[0], size[1]) : NULL;
}

RUN(adaptive_avg_pool1d)
{
    (void)nin;
    int64_t size[1];
    return attr_dims(c, "size", 1, size) ? nb_adaptive_avg_pool1d(in[0], size[0]) : NULL;
}

RUN_UNARY(channel_moments, nb_channel_moments)

/* in0 x, in1 stats [2, C], in2 weight, in3 bias */
RUN(channel_norm)
{
    (void)nin;
    double eps;
    return attr_f64(c, "eps", &eps) ? nb_channel_norm(in[0], in[1], in[2], in[3], eps) : NULL;
}

/* F.batch_norm in training mode: the batch's own statistics; in0 x, in1 weight, in2 bias */
RUN(batch_norm_train)
{
    (void)nin;
    double eps;
    return attr_f64(c, "eps", &eps) ? nb_batch_norm_train(in[0], in[1], in[2], eps, NULL) : NULL;
}

/* the same as the composition of the two primitives */
RUN(batch_norm_composed)
{
    (void)nin;
    double eps;
    return attr_f64(c, "eps", &eps) ? nb_channel_norm(in[0], nb_channel_moments(in[0]), in[1], in[2], eps) : NULL;
}

/* max_pool2d(relu(F.batch_norm in training mode), kernel): nabla's fused op; in0 x, in1 weight, in2 bias */
RUN(batch_norm_relu_max_pool2d)
{
    (void)nin;
    double eps;
    int64_t k[2];
    if (!attr_f64(c, "eps", &eps) || !attr_dims(c, "kernel", 2, k)) return NULL;
    return nb_batch_norm_relu_max_pool2d(in[0], in[1], in[2], eps, k[0], k[1], NULL);
}

/* F.batch_norm in evaluation mode: in0 x, in1 running mean, in2 running variance, in3 weight, in4 bias */
RUN(batch_norm_eval)
{
    (void)nin;
    double eps;
    if (!attr_f64(c, "eps", &eps)) return NULL;
    int64_t C = nb_tensor_dim(in[1], 0);
    nb_tensor *rows[2] = {nb_reshape(in[1], NB_SHAPE(1, C)), nb_reshape(in[2], NB_SHAPE(1, C))};
    return nb_channel_norm(in[0], nb_concat(2, rows, 0), in[3], in[4], eps);
}

/* ---- everyday ops and integer tensors --------------------------------------------------------- */

RUN(flip)
{
    (void)nin;
    int n, axes[FX_MAX_ATTR_VALS];
    return attr_axes(c, "axes", &n, axes) ? nb_flip(in[0], n, axes) : NULL;
}

RUN(roll)
{
    (void)nin;
    int64_t shift, axis;
    if (!attr_int(c, "shift", INT64_MIN, &shift) || !attr_int(c, "axis", INT64_MIN, &axis)) return NULL;
    return nb_roll(in[0], shift, (int)axis);
}

RUN(repeat)
{
    (void)nin;
    int n;
    int64_t reps[FX_MAX_ATTR_VALS];
    return attr_ints(c, "reps", NB_MAX_DIMS, &n, reps) ? nb_repeat(in[0], n, reps) : NULL;
}

RUN(tile)
{
    (void)nin;
    int n;
    int64_t reps[FX_MAX_ATTR_VALS];
    return attr_ints(c, "reps", NB_MAX_DIMS, &n, reps) ? nb_tile(in[0], n, reps) : NULL;
}

RUN(cumsum)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_cumsum(in[0], (int)axis) : NULL;
}

RUN(cumprod)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_cumprod(in[0], (int)axis) : NULL;
}

RUN(sort)
{
    (void)nin;
    int64_t axis, desc;
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_int(c, "descending", INT64_MIN, &desc)) return NULL;
    return nb_sort(in[0], (int)axis, (int)desc, NULL);
}

RUN(argsort)
{
    (void)nin;
    int64_t axis, desc;
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_int(c, "descending", INT64_MIN, &desc)) return NULL;
    return nb_argsort(in[0], (int)axis, (int)desc);
}

/* the values, or (want_indices) the positions */
static nb_tensor *topk_of(fx_case *c, nb_tensor *x, bool want_indices)
{
    int64_t k, axis, largest;
    if (!attr_int(c, "k", INT64_MIN, &k) || !attr_int(c, "axis", INT64_MIN, &axis) ||
        !attr_int(c, "largest", INT64_MIN, &largest))
        return NULL;
    nb_tensor *idx;
    nb_tensor *v = nb_topk(x, k, (int)axis, (int)largest, &idx);
    return want_indices ? idx : v;
}

RUN(topk)
{
    (void)nin;
    return topk_of(c, in[0], false);
}

RUN(topk_indices)
{
    (void)nin;
    return topk_of(c, in[0], true);
}

/* in1 is the mask's source: nb_gt(in1, 0) for floats, in1 itself (non-zero is true) for i64 */
RUN(masked_fill)
{
    (void)nin;
    double value;
    if (!attr_f64(c, "value", &value)) return NULL;
    nb_tensor *m = in[1];
    if (nb_tensor_dtype(m) != NB_I64) m = nb_gt(m, nb_zeros(nb_tensor_dtype(m), 0, NULL));
    return nb_masked_fill(in[0], m, value);
}

RUN(triu)
{
    (void)nin;
    int64_t d;
    return attr_int(c, "diagonal", INT64_MIN, &d) ? nb_triu(in[0], d) : NULL;
}

RUN(tril)
{
    (void)nin;
    int64_t d;
    return attr_int(c, "diagonal", INT64_MIN, &d) ? nb_tril(in[0], d) : NULL;
}

/* gen_fixtures.py's EINSUM list, in the same order; eq_check guards against the two drifting apart */
static const char *const EINSUM[] = {
    "ij,jk->ik", "ij,kj->ik", "ji,jk->ik", "bij,bjk->bik", "bij,bkj->bik", "i,j->ij", "i,i->",
    "ij,ij->ij", "ij->ji", "ij->", "ij->j", "ij,jk", "ba,ab", "...ij,...jk->...ik", "bhqd,bhkd->bhqk",
    "ijk,jl->lki", "ij,j->i", "ij,kl->ijkl", "...i,...i->...", "ik,k->"};

RUN(einsum)
{
    int64_t eq, check;
    if (!attr_int(c, "eq", INT64_MIN, &eq) || !attr_int(c, "eq_check", INT64_MIN, &check)) return NULL;
    if (eq < 0 || eq >= (int64_t)(sizeof EINSUM / sizeof EINSUM[0])) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute eq: %lld is not an index of EINSUM", (long long)eq);
        return NULL;
    }
    int64_t sum = 0;
    for (int i = 0; EINSUM[eq][i]; i++) sum += (i + 1) * (unsigned char)EINSUM[eq][i];
    if (sum != check) {
        snprintf(fx_run_err, sizeof fx_run_err, "EINSUM[%lld] \"%s\" is not the generator's equation (check %lld, "
                 "expected %lld)", (long long)eq, EINSUM[eq], (long long)sum, (long long)check);
        return NULL;
    }
    return nb_einsum(EINSUM[eq], nin, in);
}

RUN_BINARY(eq, nb_eq)
RUN_BINARY(ne, nb_ne)
RUN_BINARY(lt, nb_lt)
RUN_BINARY(le, nb_le)
RUN_BINARY(gt, nb_gt)
RUN_BINARY(ge, nb_ge)

RUN(argmax)
{
    (void)nin;
    int64_t axis, keep;
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_int(c, "keepdim", INT64_MIN, &keep)) return NULL;
    return nb_argmax(in[0], (int)axis, (int)keep);
}

/* the number of rows whose largest logit is at the label: i64 throughout, no casts */
RUN(accuracy)
{
    (void)c, (void)nin;
    return nb_sum_all(nb_eq(nb_argmax(in[0], 1, 0), in[1]));
}

typedef struct fx_op {
    const char *name;
    int arity;    /* number of inputs; -1: any number */
    bool f32;     /* run the float32 agreement pass */
    fx_run_fn run;
} fx_op;

static const fx_op OPS[] = {
    {"add", 2, true, run_add},
    {"sub", 2, true, run_sub},
    {"mul", 2, true, run_mul},
    {"div", 2, true, run_div},
    {"add_scalar", 1, true, run_add_scalar},
    {"mul_scalar", 1, true, run_mul_scalar},
    {"rsub_scalar", 1, true, run_rsub_scalar},
    {"div_scalar", 1, true, run_div_scalar},
    {"affine", 1, true, run_affine},
    {"neg", 1, true, run_neg},
    {"exp", 1, true, run_exp},
    {"log", 1, true, run_log},
    {"tanh", 1, true, run_tanh},
    {"sigmoid", 1, true, run_sigmoid},
    {"relu", 1, true, run_relu},
    {"matmul", 2, true, run_matmul},
    {"sum", 1, true, run_sum},
    {"mean", 1, true, run_mean},
    {"sum_all", 1, true, run_sum_all},
    {"mean_all", 1, true, run_mean_all},
    {"sum_to", 1, true, run_sum_to},
    {"reshape", 1, true, run_reshape},
    {"transpose", 1, true, run_transpose},
    {"permute", 1, true, run_permute},
    {"broadcast_to", 1, true, run_broadcast_to},
    /* the dtype is the point: a float32 pass would test a different conversion */
    {"cast_f32", 1, false, run_cast_f32},
    {"cast_f64", 1, false, run_cast_f64},
    /* the full primitive set */
    {"pow", 2, true, run_pow},
    {"maximum", 2, true, run_maximum},
    {"minimum", 2, true, run_minimum},
    {"sub_scalar", 1, true, run_sub_scalar},
    {"rdiv_scalar", 1, true, run_rdiv_scalar},
    {"pow_scalar", 1, true, run_pow_scalar},
    {"sqrt", 1, true, run_sqrt},
    {"abs", 1, true, run_abs},
    {"sign", 1, true, run_sign},
    {"sin", 1, true, run_sin},
    {"cos", 1, true, run_cos},
    {"erf", 1, true, run_erf},
    {"log1p", 1, true, run_log1p},
    {"expm1", 1, true, run_expm1},
    {"leaky_relu", 1, true, run_leaky_relu},
    {"elu", 1, true, run_elu},
    {"softplus", 1, true, run_softplus},
    {"gelu", 1, true, run_gelu},
    {"clamp", 1, true, run_clamp},
    {"reciprocal", 1, true, run_reciprocal},
    {"square", 1, true, run_square},
    {"where", 3, true, run_where},
    {"max", 1, true, run_max},
    {"min", 1, true, run_min},
    {"logsumexp", 1, true, run_logsumexp},
    {"var", 1, true, run_var},
    {"std", 1, true, run_std},
    {"softmax", 1, true, run_softmax},
    {"log_softmax", 1, true, run_log_softmax},
    {"slice", 1, true, run_slice},
    {"concat", -1, true, run_concat},
    {"stack", -1, true, run_stack},
    {"split", 1, true, run_split},
    {"chunk", 1, true, run_chunk},
    {"squeeze", 1, true, run_squeeze},
    {"unsqueeze", 1, true, run_unsqueeze},
    {"pad", 1, true, run_pad},
    {"index_select", 2, true, run_index_select},
    {"gather", 2, true, run_gather},
    {"scatter_add", 2, true, run_scatter_add},
    {"dropout", 1, true, run_dropout},
    {"lstm_gates", 2, true, run_lstm_gates},
    {"gru_gates", 3, true, run_gru_gates},
    /* convolutional networks (cnn_ops_f64.txt) */
    {"conv2d", -1, true, run_conv2d},
    {"conv1d", -1, true, run_conv1d},
    {"conv_transpose2d", -1, true, run_conv_transpose2d},
    {"conv_transpose1d", -1, true, run_conv_transpose1d},
    {"conv2d_weight", 2, true, run_conv2d_weight},
    {"max_pool2d", 1, true, run_max_pool2d},
    {"max_pool1d", 1, true, run_max_pool1d},
    {"avg_pool2d", 1, true, run_avg_pool2d},
    {"avg_pool1d", 1, true, run_avg_pool1d},
    {"adaptive_avg_pool2d", 1, true, run_adaptive_avg_pool2d},
    {"adaptive_avg_pool1d", 1, true, run_adaptive_avg_pool1d},
    {"channel_moments", 1, true, run_channel_moments},
    {"channel_norm", 4, true, run_channel_norm},
    {"batch_norm_train", 3, true, run_batch_norm_train},
    {"batch_norm_composed", 3, true, run_batch_norm_composed},
    {"batch_norm_relu_max_pool2d", 3, true, run_batch_norm_relu_max_pool2d},
    {"batch_norm_eval", 5, true, run_batch_norm_eval},
    /* everyday ops and integer tensors */
    {"flip", 1, true, run_flip},
    {"roll", 1, true, run_roll},
    {"repeat", 1, true, run_repeat},
    {"tile", 1, true, run_tile},
    {"cumsum", 1, true, run_cumsum},
    {"cumprod", 1, true, run_cumprod},
    {"sort", 1, true, run_sort},
    {"argsort", 1, true, run_argsort},
    {"topk", 1, true, run_topk},
    {"topk_indices", 1, true, run_topk_indices},
    {"masked_fill", 2, true, run_masked_fill},
    {"triu", 1, true, run_triu},
    {"tril", 1, true, run_tril},
    {"einsum", -1, true, run_einsum},
    {"eq", 2, true, run_eq},
    {"ne", 2, true, run_ne},
    {"lt", 2, true, run_lt},
    {"le", 2, true, run_le},
    {"gt", 2, true, run_gt},
    {"ge", 2, true, run_ge},
    {"argmax", 1, true, run_argmax},
    {"accuracy", 2, true, run_accuracy},
};
#define N_OPS ((int)(sizeof(OPS) / sizeof(OPS[0])))

static const fx_op *op_find(const char *name)
{
    for (int i = 0; i < N_OPS; i++)
        if (!strcmp(OPS[i].name, name)) return &OPS[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* Running and comparing                                                                           */
/* ---------------------------------------------------------------------------------------------- */

typedef struct op_stats {
    int cases, checks, failures;
    fx_err err[2]; /* [0] float64 pass, [1] float32 pass */
} op_stats;

static op_stats stats[N_OPS];

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

/* A failure of the case whose pass ctx names ("case NAME (OP, line N) f64"). */
#define FAIL_CASE(...)                                                                                 \
    do {                                                                                               \
        nbt_failures++;                                                                                \
        st->failures++;                                                                                \
        fprintf(stderr, "FAIL %s: ", ctx);                                                             \
        fprintf(stderr, __VA_ARGS__);                                                                  \
        fprintf(stderr, "\n");                                                                         \
    } while (0)

/* Compare tensor t (nabla's) with the fixture's ref. mode 0: f64 tolerances and t must have ref's
 * dtype; mode 1: f32 tolerances and t must be float32 where ref is floating. */
static void compare(op_stats *st, const char *ctx, int mode, const char *what, const nb_tensor *t,
                    const fx_tensor *ref)
{
    char b1[96], b2[96];
    nbt_checks++;
    st->checks++;
    nb_dtype want_dt = mode && ref->dtype == NB_F64 ? NB_F32 : ref->dtype;
    if (!t) {
        FAIL_CASE("%s: no tensor", what);
        return;
    }
    if (nb_tensor_dtype(t) != want_dt) {
        FAIL_CASE("%s: dtype %s, expected %s", what, nb_dtype_name(nb_tensor_dtype(t)), nb_dtype_name(want_dt));
        return;
    }
    if (nb_tensor_ndim(t) != ref->ndim ||
        memcmp(nb_tensor_shape(t), ref->shape, (size_t)ref->ndim * sizeof(int64_t))) {
        FAIL_CASE("%s: shape %s, expected %s", what, shape_str(nb_tensor_ndim(t), nb_tensor_shape(t), b1, sizeof b1),
                  shape_str(ref->ndim, ref->shape, b2, sizeof b2));
        return;
    }
    double scale = 0;
    for (int64_t i = 0; i < ref->numel; i++)
        if (isfinite(ref->v[i]) && fabs(ref->v[i]) > scale) scale = fabs(ref->v[i]);
    double rtol = mode ? F32_RTOL : F64_RTOL;
    double atol = (mode ? F32_ATOL_SCALE : F64_ATOL_SCALE) * scale;
    if (want_dt == NB_I64) rtol = atol = 0; /* integers: exactly */
    /* relative errors are measured against the floor's scale for values below it */
    fx_tol tol = {rtol, atol, atol / rtol};
    if (fx_compare(&st->err[mode], ctx, what, t, ref->v, ref->numel, &tol)) {
        nbt_failures++;
        st->failures++;
    }
}

/* One pass of one case. mode 0: as stored; mode 1: float64 inputs and seed cast to float32. */
static void run_case(fx_case *c, const fx_op *op, op_stats *st, int mode)
{
    op_tensors ts;
    op_tensors_of(c, &ts);
    nb_tensor *leaves[FX_MAX_IN] = {0}, *seed = NULL;
    nb_tape *tape = nb_tape_new();
    char ctx[160], what[32];
    snprintf(ctx, sizeof ctx, "case %s (%s, line %d) %s", c->name, c->op, c->line, mode ? "f32 pass" : "f64");
    nb_error_clear();
    fx_run_err[0] = '\0';
    if (!tape || nb_tape_begin(tape) != NB_OK) {
        FAIL_CASE("cannot start a tape: %s", nb_error_message());
        goto done;
    }
    for (int i = 0; i < ts.nin; i++) {
        nb_dtype dt = mode && ts.in[i]->dtype == NB_F64 ? NB_F32 : ts.in[i]->dtype;
        leaves[i] = fx_leaf(ts.in[i], dt);
        if (!leaves[i] || (ts.grad[i] && nb_tensor_set_requires_grad(leaves[i], 1) != NB_OK)) {
            FAIL_CASE("cannot make input in%d: %s", i, nb_error_message());
            goto done;
        }
    }
    for (int i = 0; i < c->nattr; i++) c->attr[i].used = false;
    nb_tensor *out = op->run(c, ts.nin, leaves);
    for (int i = 0; i < c->nattr; i++)
        if (!c->attr[i].used) {
            FAIL_CASE("attribute %s is not read by the %s runner", c->attr[i].key, c->op);
            goto done;
        }
    if (!out) {
        FAIL_CASE("op failed: %s", fx_run_err[0] ? fx_run_err : nb_error_message());
        goto done;
    }
    compare(st, ctx, mode, "out", out, ts.out);
    if (nb_tensor_dtype(out) != (mode && ts.out->dtype == NB_F64 ? NB_F32 : ts.out->dtype)) goto done;
    if (!ts.seed) { /* a value case */
        if (nb_error_code() != NB_OK) FAIL_CASE("error left recorded: %s", nb_error_message());
        goto done;
    }
    seed = fx_leaf(ts.seed, nb_tensor_dtype(out));
    if (!seed || nb_backward(out, seed, 0) != NB_OK) {
        FAIL_CASE("backward failed: %s", nb_error_message());
        goto done;
    }
    for (int i = 0; i < ts.nin; i++) {
        if (!ts.grad[i]) continue;
        snprintf(what, sizeof what, "grad%d", i);
        nb_tensor *g = nb_tensor_grad(leaves[i]);
        if (!g) {
            st->checks++, nbt_checks++;
            FAIL_CASE("%s: no gradient reached in%d", what, i);
            continue;
        }
        compare(st, ctx, mode, what, g, ts.grad[i]);
    }
    if (nb_error_code() != NB_OK) FAIL_CASE("error left recorded: %s", nb_error_message());
done:
    nb_error_clear();
    if (tape) {
        if (nb_tape_current() == tape) nb_tape_end(tape);
        nb_tape_free(tape); /* before the leaves it recorded */
    }
    nb_tensor_free(seed);
    for (int i = 0; i < ts.nin; i++) nb_tensor_free(leaves[i]);
}

/* ---------------------------------------------------------------------------------------------- */
/* The parser rejects malformed files with a message (checked on built-in snippets)               */
/* ---------------------------------------------------------------------------------------------- */

#define HDR "nabla-fixtures 1\n"
#define GOOD_BODY                                                                                      \
    "tensor in0 f64 1 2 1 2\ntensor out f64 1 2 1 2\ntensor seed f64 1 2 1 1\ntensor grad0 f64 1 2 1 1\n"

static void parser_selftest(void)
{
    static const struct {
        const char *text, *needle; /* needle NULL: must parse */
    } t[] = {
        {HDR "# ok\ncase a neg\n" GOOD_BODY "end\n", NULL},
        {HDR "case a neg\r\n" GOOD_BODY "end", NULL},
        {"", "no \"nabla-fixtures 1\" header"},
        {"# only a comment\n", "header"},
        {"case a neg\n", "expected the header"},
        {"nabla-fixtures 2\n", "format version 2"},
        {"nabla-fixtures x\n", "bad format version"},
        {HDR, "no cases"},
        {HDR "case a neg\n" GOOD_BODY, "has no end"},
        {HDR "case a neg\ncase b neg\n", "missing end"},
        {HDR "tensor in0 f64 0 1\n", "outside a case"},
        {HDR "end\n", "outside a case"},
        {HDR "case a\n", "missing op"},
        {HDR "case a neg extra\n", "unexpected text"},
        {HDR "case a/b neg\n", "has a character"},
        {HDR "case a neg\nfoo\n", "unknown directive \"foo\""},
        {HDR "case a neg\ntensor in0 f65 0 1\n", "unknown dtype"},
        {HDR "case a neg\ntensor in0 f64 9 1 1 1 1 1 1 1 1 1 1\n", "ndim 9 out of range"},
        {HDR "case a neg\ntensor in0 f64 1 -2\n", "extent -2 out of range"},
        {HDR "case a neg\ntensor in0 f64 2 16777216 16777216\n", "more than"},
        {HDR "case a neg\ntensor in0 f64 1 3 1 2\n", "2 values for 3 elements"},
        {HDR "case a neg\ntensor in0 f64 1 1 1 2\n", "more than 1 values"},
        {HDR "case a neg\ntensor in0 f64 1 1 1.5x\n", "bad value \"1.5x\""},
        {HDR "case a neg\ntensor in0 f64 1 1 1e999\n", "overflows"},
        {HDR "case a neg\ntensor in0 f32 1 1 0.1\n", "not exactly a float32"},
        {HDR "case a neg\ntensor in0 i64 1 1 0.5\n", "bad i64 value"},
        {HDR "case a neg\ntensor in0 f64\n", "missing ndim"},
        {HDR "case a neg\ntensor\n", "missing role"},
        {HDR "case a neg\ntensor foo f64 0 1\n", "unknown role"},
        {HDR "case a neg\ntensor in16 f64 0 1\n", "bad role"},
        {HDR "case a neg\ntensor in01 f64 0 1\n", "bad role"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor in0 f64 0 1\n", "given twice"},
        {HDR "case a neg\ntensor in1 f64 0 1\ntensor out f64 0 1\ntensor seed f64 0 1\nend\n", "without in0"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor seed f64 0 1\nend\n", "no out"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor out f64 0 1\nend\n", NULL}, /* a value case */
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor out f64 0 1\ntensor seed f64 1 1 1\nend\n", "seed"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor out f64 0 1\ntensor seed f64 0 1\ntensor grad0 f64 1 1 1\nend\n",
         "grad0"},
        {HDR "case a neg\ntensor in0 i64 0 1\ntensor out f64 0 1\ntensor seed f64 0 1\ntensor grad0 i64 0 1\nend\n",
         "grad0 of an i64 input"},
        {HDR "case a neg\ntensor in0 i64 0 1\ntensor out i64 0 1\nend\n", NULL}, /* a value case */
        {HDR "case a neg\ntensor in0 i64 0 1\ntensor out i64 0 1\ntensor seed i64 0 1\nend\n",
         "an i64 out has no gradient"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor out f64 0 1\ntensor grad0 f64 0 1\nend\n", "no seed"},
        {HDR "case a neg\nattr\n", "missing attribute key"},
        {HDR "case a neg\nattr k 1 z\n", "bad attribute value"},
        {HDR "case a neg\nattr k 1 2 3 4 5 6 7 8 9\n", "more than 8 values"},
        {HDR "case a neg\nattr k 1\nattr k 2\n", "given twice"},
        {HDR "case a neg\n" GOOD_BODY "end\ncase a neg\n", "defined twice"},
        {HDR "case a neg\n" GOOD_BODY "end now\n", "after end"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECK(fx_snippet_ok(&OPS_FORMAT, t[i].text, t[i].needle, err, sizeof err), "parser self-test %zu: %s", i, err);
}

/* ---------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_FILE...\n", argc ? argv[0] : "test_fixtures");
        return 2;
    }
    parser_selftest();

    /* Every case of every file has a runner of the right arity; every runner has a case. */
    int ncases_run = 0, npasses = 0;
    for (int file = 1; file < argc; file++) {
        fx_file f;
        char err[512];
        if (!fx_load(&OPS_FORMAT, argv[file], &f, err, sizeof err)) {
            fprintf(stderr, "FAIL: cannot read fixtures: %s\n", err);
            return 1;
        }
        for (int i = 0; i < f.ncases; i++) {
            fx_case *c = &f.cases[i];
            const fx_op *op = op_find(c->op);
            op_tensors ts;
            op_tensors_of(c, &ts);
            nbt_checks++;
            if (!op) {
                NBT_FAIL("case %s (line %d): no runner for op \"%s\" in test_fixtures.c's OPS table", c->name,
                         c->line, c->op);
                continue;
            }
            if (op->arity >= 0 && ts.nin != op->arity) {
                NBT_FAIL("case %s (line %d): %d inputs, op %s takes %d", c->name, c->line, ts.nin, c->op, op->arity);
                continue;
            }
            op_stats *st = &stats[op - OPS];
            st->cases++;
            ncases_run++;
            run_case(c, op, st, 0);
            npasses++;
            if (op->f32) {
                run_case(c, op, st, 1);
                npasses++;
            }
        }
        fx_file_free(&f);
    }
    int nops = 0;
    long long elements_compared = 0;
    double max_rel_all[2] = {0, 0};
    for (int k = 0; k < N_OPS; k++) {
        nbt_checks++;
        if (stats[k].cases)
            nops++;
        else
            NBT_FAIL("op %s has a runner but no case in the files given", OPS[k].name);
        for (int mode = 0; mode < 2; mode++) {
            elements_compared += stats[k].err[mode].compared;
            max_rel_all[mode] = fmax(max_rel_all[mode], stats[k].err[mode].max_rel);
        }
    }

    printf("fixtures: %d cases (%d passes) over %d ops, %lld elements compared\n", ncases_run, npasses, nops,
           elements_compared);
    printf("fixtures: max relative error vs PyTorch: f64 %.3g (tol %g), f32 pass %.3g (tol %g)\n", max_rel_all[0],
           F64_RTOL, max_rel_all[1], F32_RTOL);
    if (nbt_failures) {
        printf("%-14s %6s %7s %7s %11s %11s\n", "op", "cases", "checks", "failed", "max rel f64", "max rel f32");
        for (int k = 0; k < N_OPS; k++)
            printf("%-14s %6d %7d %7d %11.3g %11.3g%s\n", OPS[k].name, stats[k].cases, stats[k].checks,
                   stats[k].failures, stats[k].err[0].max_rel, stats[k].err[1].max_rel,
                   stats[k].failures ? "  <--" : "");
    }
    return nbt_report("fixtures");
}
