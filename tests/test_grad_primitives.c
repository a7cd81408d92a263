/* Table-driven float64 gradient checks of the full primitive set: every row runs nb_gradcheck (the
 * backward rule against central differences) and nb_gradgradcheck (the backward of the backward).
 * Rows marked LINEAR have a gradient that does not depend on the inputs (linear, piecewise-linear and
 * indexing ops), so their gradgradcheck must pass with an error of exactly zero. Kinks (abs, clamp,
 * maximum, max) and poles (sqrt, log1p, reciprocal) are avoided by the input ranges, never by loose
 * tolerances. The table also carries the first op set, so that it covers every differentiable op.
 *
 * After the table: ties of maximum/minimum (the gradient is split in halves) and of max/min (it goes
 * to the first maximal element), the values of the non-differentiable ops (sign, argmax, argmin,
 * one_hot), and softmax / log_softmax / logsumexp at inputs of +-1e4 against closed forms. */
#include "gradtable.h" /* the first op set's functions, the row inputs and the check of one row */
#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>

/* ---- row arguments (axes, shapes and scalars: gradtable.h) ------------------------------------ */

/* slice: axis, start, stop, step; split: axis and sizes; chunk: axis and n; pad: the pairs */
typedef struct int_arg {
    int axis;
    int64_t v[8];
} int_arg;

#define AXC(...) (&(const axes_arg){__VA_ARGS__}) /* with a correction */
#define IA(...) (&(const int_arg){__VA_ARGS__})
#define AXIS(k) (&(const int){k})

/* ---- the functions under test (the plain ones of the first op set: gradtable.h) --------------- */

/* first op set */
static nb_tensor *f_transpose(void *user, nb_tensor *const *in)
{
    return nb_transpose(in[0], ARG(int_arg)->axis, (int)ARG(int_arg)->v[0]);
}
static nb_tensor *f_permute(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_permute(in[0], NB_AXES(2, 0, 1));
}

/* binary ops of the full set */
static nb_tensor *f_pow(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_pow(in[0], in[1]); }
static nb_tensor *f_maximum(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_maximum(in[0], in[1]); }
static nb_tensor *f_minimum(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_minimum(in[0], in[1]); }
static nb_tensor *f_sub_scalar(void *user, nb_tensor *const *in) { return nb_sub_scalar(in[0], ARG(scalar_arg)->a); }
static nb_tensor *f_rdiv_scalar(void *user, nb_tensor *const *in) { return nb_rdiv_scalar(ARG(scalar_arg)->a, in[0]); }
static nb_tensor *f_pow_scalar(void *user, nb_tensor *const *in) { return nb_pow_scalar(in[0], ARG(scalar_arg)->a); }

/* unary functions */
static nb_tensor *f_sqrt(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_sqrt(in[0]); }
static nb_tensor *f_abs(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_abs(in[0]); }
static nb_tensor *f_sign(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_sign(in[0]); }
/* x sign(x) = |x|: the sign factor must add nothing to the gradient */
static nb_tensor *f_x_sign(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_mul(in[0], nb_sign(in[0])); }
static nb_tensor *f_sin(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_sin(in[0]); }
static nb_tensor *f_cos(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_cos(in[0]); }
static nb_tensor *f_erf(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_erf(in[0]); }
static nb_tensor *f_log1p(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_log1p(in[0]); }
static nb_tensor *f_expm1(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_expm1(in[0]); }
static nb_tensor *f_leaky_relu(void *user, nb_tensor *const *in) { return nb_leaky_relu(in[0], ARG(scalar_arg)->a); }
static nb_tensor *f_elu(void *user, nb_tensor *const *in) { return nb_elu(in[0], ARG(scalar_arg)->a); }
static nb_tensor *f_softplus(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_softplus(in[0]); }
static nb_tensor *f_gelu(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_gelu(in[0]); }
static nb_tensor *f_clamp(void *user, nb_tensor *const *in)
{
    return nb_clamp(in[0], ARG(scalar_arg)->a, ARG(scalar_arg)->b);
}
static nb_tensor *f_reciprocal(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_reciprocal(in[0]); }
static nb_tensor *f_square(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_square(in[0]); }

/* where: the condition is a comparison of the constant input c with 0 (in: a, b, c) */
static nb_tensor *f_where(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_where(nb_gt(in[2], nb_zeros(NB_F64, 0, NULL)), in[0], in[1]);
}
/* where(a > b, a^2, b): a condition that depends on the differentiated inputs themselves */
static nb_tensor *f_where_self(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_where(nb_gt(in[0], in[1]), nb_square(in[0]), in[1]);
}

/* reductions */
static nb_tensor *f_max(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_max(in[0], a->naxes, a->axes, a->keepdim);
}
static nb_tensor *f_min(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_min(in[0], a->naxes, a->axes, a->keepdim);
}
static nb_tensor *f_logsumexp(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_logsumexp(in[0], a->naxes, a->axes, a->keepdim);
}
static nb_tensor *f_var(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_var(in[0], a->naxes, a->axes, a->correction, a->keepdim);
}
static nb_tensor *f_std(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_std(in[0], a->naxes, a->axes, a->correction, a->keepdim);
}
static nb_tensor *f_softmax(void *user, nb_tensor *const *in) { return nb_softmax(in[0], *(const int *)user); }
static nb_tensor *f_log_softmax(void *user, nb_tensor *const *in) { return nb_log_softmax(in[0], *(const int *)user); }
/* argmax / argmin pick the element (no gradient of their own); gather carries the gradient to it */
static nb_tensor *f_take_argmax(void *user, nb_tensor *const *in)
{
    int axis = *(const int *)user;
    return nb_gather(in[0], axis, nb_argmax(in[0], axis, 1));
}
static nb_tensor *f_take_argmin(void *user, nb_tensor *const *in)
{
    int axis = *(const int *)user;
    return nb_gather(in[0], axis, nb_argmin(in[0], axis, 1));
}

/* shape and indexing */
static nb_tensor *f_slice(void *user, nb_tensor *const *in)
{
    const int_arg *a = user;
    return nb_slice(in[0], a->axis, a->v[0], a->v[1], a->v[2]);
}
static nb_tensor *f_concat(void *user, nb_tensor *const *in) { return nb_concat(3, in, *(const int *)user); }
static nb_tensor *f_concat2(void *user, nb_tensor *const *in) { return nb_concat(2, in, *(const int *)user); }
static nb_tensor *f_stack(void *user, nb_tensor *const *in) { return nb_stack(3, in, *(const int *)user); }
/* the pieces of a split (chunk), weighted 1, 2, 3, ... and joined in reverse order */
static nb_tensor *join_weighted(int n, nb_tensor **p, int axis)
{
    nb_tensor *rev[8];
    for (int i = 0; i < n; i++) rev[n - 1 - i] = nb_mul_scalar(p[i], 1.0 + i);
    return nb_concat(n, rev, axis);
}
static nb_tensor *f_split(void *user, nb_tensor *const *in)
{
    const int_arg *a = user;
    int n = 0;
    while (n < 8 && a->v[n] >= 0) n++;
    nb_tensor *p[8];
    if (nb_split(in[0], a->axis, n, a->v, p) != NB_OK) return NULL;
    return join_weighted(n, p, a->axis);
}
static nb_tensor *f_chunk(void *user, nb_tensor *const *in)
{
    const int_arg *a = user;
    nb_tensor *p[8];
    int n = nb_chunk(in[0], (int)a->v[0], a->axis, p);
    return n < 1 ? NULL : join_weighted(n, p, a->axis);
}
static nb_tensor *f_squeeze(void *user, nb_tensor *const *in) { return nb_squeeze(in[0], *(const int *)user); }
static nb_tensor *f_unsqueeze(void *user, nb_tensor *const *in) { return nb_unsqueeze(in[0], *(const int *)user); }
/* squeeze then unsqueeze again elsewhere, with a curved op between, for second order through views */
static nb_tensor *f_squeeze_tanh(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_unsqueeze(nb_tanh(nb_squeeze(in[0], 1)), 0);
}
static nb_tensor *f_pad(void *user, nb_tensor *const *in) { return nb_pad(in[0], ARG(int_arg)->v, 0.75); }
static nb_tensor *f_index_select(void *user, nb_tensor *const *in)
{
    const int_arg *a = user; /* v: 5 indices */
    return nb_index_select(in[0], a->axis, nb_constant(NB_I64, NB_SHAPE(5), a->v));
}
/* gather from x [3,4] with idx [3,2] (axis 1) or [2,4] (axis 0); repeats */
static nb_tensor *f_gather1(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_gather(in[0], 1, nb_constant(NB_I64, NB_SHAPE(3, 2), (const int64_t[]){3, 3, 0, 1, 2, 2}));
}
static nb_tensor *f_gather0(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_gather(in[0], 0, nb_constant(NB_I64, NB_SHAPE(2, 4), (const int64_t[]){2, 0, 1, 2, 2, 2, 0, 1}));
}
/* scatter_add of src [3,2] into [3,4] along axis 1, repeats accumulate */
static nb_tensor *f_scatter_add(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    nb_tensor *idx = nb_constant(NB_I64, NB_SHAPE(3, 2), (const int64_t[]){3, 3, 0, 1, 2, 0});
    return nb_scatter_add(NB_SHAPE(3, 4), 1, idx, in[0]);
}
/* a scatter_add whose result is squared: second order through the adjoint pair */
static nb_tensor *f_scatter_add_sq(void *user, nb_tensor *const *in)
{
    return nb_square(f_scatter_add(user, in));
}
/* one_hot rows pick one class per row: sum(x * one_hot(labels)) over the class axis */
static nb_tensor *f_one_hot_pick(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    nb_tensor *lab = nb_constant(NB_I64, NB_SHAPE(3), (const int64_t[]){2, 0, 2});
    return nb_sum(nb_mul(in[0], nb_one_hot(lab, 4, NB_F64)), NB_AXES(-1), 0);
}
/* dropout with a freshly seeded generator: every call draws the same mask */
static nb_tensor *f_dropout(void *user, nb_tensor *const *in)
{
    nb_rng rng;
    nb_rng_seed(&rng, 1234);
    return nb_dropout(in[0], ARG(scalar_arg)->a, &rng);
}
static nb_tensor *f_dropout_tanh(void *user, nb_tensor *const *in)
{
    return nb_tanh(f_dropout(user, in));
}

/* the fused recurrent steps: both outputs of the LSTM step, and the GRU step */
static nb_tensor *f_lstm_gates(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_lstm_gates(in[0], in[1]);
}
static nb_tensor *f_gru_gates(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_gru_gates(in[0], in[1], in[2]);
}

/* addmm: c broadcast over the product (a bias [4], a full [3,4], a column [3,1]), transposes */
static nb_tensor *f_addmm(void *user, nb_tensor *const *in) { return nb_addmm(in[0], in[1], in[2], *(const unsigned *)user); }
static const unsigned k_none = 0;
/* an addmm whose output is curved in every input */
static nb_tensor *f_addmm_tanh(void *user, nb_tensor *const *in) { return nb_tanh(f_addmm(user, in)); }

/* The fused backward ops and the adjoints that only backward rules record: each row's function is a
 * gradient taken with NB_CREATE_GRAPH, so the op is recorded by the function under test, and the
 * checks differentiate it (first order) and its rule (second order). */
static nb_tensor *grad_of(nb_tensor *y, nb_tensor *x)
{
    nb_tensor *g = NULL;
    return nb_grad(y, NULL, 1, &x, &g, NB_CREATE_GRAPH) == NB_OK ? g : NULL;
}
/* d/dx sum(w tanh(x)) = w (1 - tanh^2 x): tanh_backward(w, tanh x); in: x, w */
static nb_tensor *f_tanh_bw(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return grad_of(nb_sum_all(nb_mul(in[1], nb_tanh(in[0]))), in[0]);
}
static nb_tensor *f_sigmoid_bw(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return grad_of(nb_sum_all(nb_mul(in[1], nb_sigmoid(in[0]))), in[0]);
}
static nb_tensor *f_relu_bw(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return grad_of(nb_sum_all(nb_mul(in[1], nb_relu(in[0]))), in[0]);
}
/* d/dx sum(slice(x)^2) = slice_embed(2 slice(x)) */
static nb_tensor *f_slice_embed(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return grad_of(nb_sum_all(nb_square(nb_slice(in[0], 1, 1, 5, 2))), in[0]);
}
/* d/dx sum(index_select(x)^2) = index_add(2 index_select(x)) (repeated rows) */
static nb_tensor *f_index_add(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    nb_tensor *idx = nb_constant(NB_I64, NB_SHAPE(4), (const int64_t[]){2, 0, 2, 2});
    return grad_of(nb_sum_all(nb_square(nb_index_select(in[0], 0, idx))), in[0]);
}

/* a custom op with a composed backward: y = x^3, dy = 3 x^2 dx */
static nb_status cube_fw(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in;
    const double *x = nb_tensor_cdata(in[0]);
    double *y = nb_tensor_data(out);
    for (int64_t i = 0; i < nb_tensor_numel(out); i++) y[i] = x[i] * x[i] * x[i];
    return NB_OK;
}
static nb_status cube_bw(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout, nb_tensor **gin)
{
    (void)user, (void)n_in, (void)out;
    gin[0] = nb_mul(gout, nb_mul_scalar(nb_square(in[0]), 3.0));
    return gin[0] ? NB_OK : nb_error_code();
}
static const nb_custom_op k_cube = {"cube", cube_fw, cube_bw, NULL, NULL};
static nb_tensor *f_custom(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_custom(&k_cube, 1, in, NB_F64, nb_tensor_ndim(in[0]), nb_tensor_shape(in[0]));
}

/* ---- the table -------------------------------------------------------------------------------- */

typedef struct row {
    const char *op; /* the op under test (rows are counted by distinct op) */
    const char *name;
    nb_func f;
    const void *arg;
    int n_in;
    input_spec in[4];
    int order; /* CURVED: non-zero second derivative; LINEAR: gradient constant */
} row;

#define R1(...) IN(-1, 1, __VA_ARGS__)

static const row rows[] = {
    /* ---- the first op set (also in test_grad_ops.c) ---- */
    {"add", "add [2,1,4]+[3,1]", f_add, NULL, 2, {R1(2, 1, 4), R1(3, 1)}, LINEAR},
    {"sub", "sub []-[2,3]", f_sub, NULL, 2, {IN0(-1, 1), R1(2, 3)}, LINEAR},
    {"mul", "mul [2,3]*[3]", f_mul, NULL, 2, {R1(2, 3), R1(3)}, CURVED},
    {"div", "div [2,1,4]/[3,1]", f_div, NULL, 2, {R1(2, 1, 4), INALT(0.5, 2, 3, 1)}, CURVED},
    {"add_scalar", "add_scalar", f_add_scalar, SC(0.7, 0), 1, {R1(2, 3)}, LINEAR},
    {"mul_scalar", "mul_scalar", f_mul_scalar, SC(-1.3, 0), 1, {R1(2, 3)}, LINEAR},
    {"rsub_scalar", "rsub_scalar", f_rsub_scalar, SC(2.5, 0), 1, {R1(2, 3)}, LINEAR},
    {"div_scalar", "div_scalar", f_div_scalar, SC(-0.8, 0), 1, {R1(2, 3)}, LINEAR},
    {"affine", "affine", f_affine, SC(1.7, -0.4), 1, {R1(2, 3)}, LINEAR},
    {"neg", "neg", f_neg, NULL, 1, {R1(2, 3)}, LINEAR},
    {"exp", "exp", f_exp, NULL, 1, {IN(-2, 2, 2, 3)}, CURVED},
    {"log", "log", f_log, NULL, 1, {IN(0.2, 3, 2, 3)}, CURVED},
    {"tanh", "tanh", f_tanh, NULL, 1, {IN(-2, 2, 2, 3)}, CURVED},
    {"sigmoid", "sigmoid", f_sigmoid, NULL, 1, {IN(-4, 4, 2, 3)}, CURVED},
    {"relu", "relu", f_relu, NULL, 1, {INALT(0.1, 1.5, 3, 4)}, LINEAR},
    {"matmul", "matmul [2,3]x[3,4]", f_matmul, NULL, 2, {R1(2, 3), R1(3, 4)}, CURVED},
    {"sum", "sum axes 0,2 keepdim", f_sum, AX(2, {0, 2}, 1), 1, {R1(2, 3, 4)}, LINEAR},
    {"mean", "mean axis -2", f_mean, AX(1, {-2}, 0), 1, {R1(2, 3, 4)}, LINEAR},
    {"sum_all", "sum_all", f_sum_all, NULL, 1, {R1(2, 3, 4)}, LINEAR},
    {"mean_all", "mean_all", f_mean_all, NULL, 1, {R1(2, 3, 4)}, LINEAR},
    {"sum_to", "sum_to [2,3,4]->[3,1]", f_sum_to, SH(2, {3, 1}), 1, {R1(2, 3, 4)}, LINEAR},
    {"reshape", "reshape [2,3,4]->[4,-1]", f_reshape, SH(2, {4, -1}), 1, {R1(2, 3, 4)}, LINEAR},
    {"transpose", "transpose [2,3,4] 0,2", f_transpose, IA(0, {2}), 1, {R1(2, 3, 4)}, LINEAR},
    {"permute", "permute [2,3,4] 2,0,1", f_permute, NULL, 1, {R1(2, 3, 4)}, LINEAR},
    {"broadcast_to", "broadcast_to [3,1]->[2,3,4]", f_broadcast_to, SH(3, {2, 3, 4}), 1, {R1(3, 1)}, LINEAR},
    {"cast", "cast f64->f64", f_cast_f64, NULL, 1, {R1(2, 3)}, LINEAR},

    /* ---- pow, maximum, minimum: broadcasting variants ---- */
    {"pow", "pow [2,3]^[2,3]", f_pow, NULL, 2, {IN(0.5, 2, 2, 3), IN(-2, 2, 2, 3)}, CURVED},
    {"pow", "pow [2,3]^[3]", f_pow, NULL, 2, {IN(0.5, 2, 2, 3), IN(-2, 2, 3)}, CURVED},
    {"pow", "pow [2,1,4]^[3,1]", f_pow, NULL, 2, {IN(0.5, 2, 2, 1, 4), IN(-2, 2, 3, 1)}, CURVED},
    {"pow", "pow []^[2,3]", f_pow, NULL, 2, {IN0(0.5, 2), IN(-2, 2, 2, 3)}, CURVED},
    {"pow", "pow [2,3]^3 const, a < 0", f_pow, NULL, 2, {R1(2, 3), INC(3, 3, 1)}, CURVED},
    {"maximum", "maximum [2,3],[2,3]", f_maximum, NULL, 2, {R1(2, 3), R1(2, 3)}, LINEAR},
    {"maximum", "maximum [2,3],[3]", f_maximum, NULL, 2, {R1(2, 3), R1(3)}, LINEAR},
    {"maximum", "maximum [2,1,4],[3,1]", f_maximum, NULL, 2, {R1(2, 1, 4), R1(3, 1)}, LINEAR},
    {"maximum", "maximum [2,3],[]", f_maximum, NULL, 2, {R1(2, 3), IN0(-1, 1)}, LINEAR},
    {"minimum", "minimum [2,3],[2,3]", f_minimum, NULL, 2, {R1(2, 3), R1(2, 3)}, LINEAR},
    {"minimum", "minimum [3],[2,3]", f_minimum, NULL, 2, {R1(3), R1(2, 3)}, LINEAR},
    {"minimum", "minimum [2,1,4],[3,1]", f_minimum, NULL, 2, {R1(2, 1, 4), R1(3, 1)}, LINEAR},

    /* ---- scalar forms ---- */
    {"sub_scalar", "sub_scalar", f_sub_scalar, SC(1.5, 0), 1, {R1(2, 3)}, LINEAR},
    {"rdiv_scalar", "rdiv_scalar", f_rdiv_scalar, SC(-2.0, 0), 1, {INALT(0.5, 2, 2, 3)}, CURVED},
    {"pow_scalar", "pow_scalar 2.5", f_pow_scalar, SC(2.5, 0), 1, {IN(0.3, 2, 2, 3)}, CURVED},
    {"pow_scalar", "pow_scalar -1.5", f_pow_scalar, SC(-1.5, 0), 1, {IN(0.3, 2, 2, 3)}, CURVED},
    {"pow_scalar", "pow_scalar 0.5", f_pow_scalar, SC(0.5, 0), 1, {IN(0.3, 2, 2, 3)}, CURVED},
    {"pow_scalar", "pow_scalar 3", f_pow_scalar, SC(3.0, 0), 1, {R1(2, 3)}, CURVED},
    {"pow_scalar", "pow_scalar 2", f_pow_scalar, SC(2.0, 0), 1, {R1(2, 3)}, CURVED},
    {"pow_scalar", "pow_scalar 1", f_pow_scalar, SC(1.0, 0), 1, {R1(2, 3)}, LINEAR},
    {"pow_scalar", "pow_scalar 0", f_pow_scalar, SC(0.0, 0), 1, {R1(2, 3)}, LINEAR},

    /* ---- unary functions ---- */
    {"sqrt", "sqrt", f_sqrt, NULL, 1, {IN(0.2, 3, 2, 3)}, CURVED},
    {"abs", "abs", f_abs, NULL, 1, {INALT(0.1, 2, 3, 4)}, LINEAR},
    {"sign", "sign (zero gradient)", f_sign, NULL, 1, {INALT(0.1, 2, 2, 3)}, LINEAR},
    {"sign", "x * sign(x)", f_x_sign, NULL, 1, {INALT(0.1, 2, 2, 3)}, LINEAR},
    {"sin", "sin", f_sin, NULL, 1, {IN(-4, 4, 2, 3)}, CURVED},
    {"cos", "cos", f_cos, NULL, 1, {IN(-4, 4, 2, 3)}, CURVED},
    {"erf", "erf", f_erf, NULL, 1, {IN(-2, 2, 2, 3)}, CURVED},
    {"log1p", "log1p", f_log1p, NULL, 1, {IN(-0.6, 2, 2, 3)}, CURVED},
    {"expm1", "expm1", f_expm1, NULL, 1, {IN(-2, 2, 2, 3)}, CURVED},
    {"leaky_relu", "leaky_relu 0.1", f_leaky_relu, SC(0.1, 0), 1, {INALT(0.1, 1.5, 3, 4)}, LINEAR},
    {"elu", "elu 1", f_elu, SC(1.0, 0), 1, {INALT(0.1, 2, 3, 4)}, CURVED},
    {"elu", "elu 0.5", f_elu, SC(0.5, 0), 1, {INALT(0.1, 2, 3, 4)}, CURVED},
    {"softplus", "softplus", f_softplus, NULL, 1, {IN(-5, 5, 2, 3)}, CURVED},
    {"softplus", "softplus large |x|", f_softplus, NULL, 1, {INALT(15, 25, 2, 2)}, CURVED},
    {"gelu", "gelu", f_gelu, NULL, 1, {IN(-3, 3, 2, 3)}, CURVED},
    {"clamp", "clamp [-0.8, 0.9]", f_clamp, SC(-0.8, 0.9), 1, {INALT(0.05, 0.75, 3, 4)}, LINEAR},
    {"clamp", "clamp, some outside", f_clamp, SC(-0.5, 0.5), 1, {INALT(0.55, 1.5, 2, 3)}, LINEAR},
    {"reciprocal", "reciprocal", f_reciprocal, NULL, 1, {INALT(0.5, 2, 2, 3)}, CURVED},
    {"square", "square", f_square, NULL, 1, {R1(2, 3)}, CURVED},

    /* ---- where: the condition from a comparison ---- */
    {"where", "where [2,3] c>0", f_where, NULL, 3, {R1(2, 3), R1(2, 3), INCALT(0.1, 1, 2, 3)}, LINEAR},
    {"where", "where [3,1],[4] c [2,1,4]", f_where, NULL, 3, {R1(3, 1), R1(4), INCALT(0.1, 1, 2, 1, 4)}, LINEAR},
    {"where", "where [],[2,3] c [3]", f_where, NULL, 3, {IN0(-1, 1), R1(2, 3), INCALT(0.1, 1, 3)}, LINEAR},
    {"where", "where(a > b, a^2, b)", f_where_self, NULL, 2, {R1(2, 3), R1(2, 3)}, CURVED},

    /* ---- batched matmul: broadcast batches, vectors, transposes of batched operands ---- */
    {"matmul", "matmul [2,3,4]x[4,5]", f_matmul, NULL, 2, {R1(2, 3, 4), R1(4, 5)}, CURVED},
    {"matmul", "matmul [2,3,4]x[2,4,5]", f_matmul, NULL, 2, {R1(2, 3, 4), R1(2, 4, 5)}, CURVED},
    {"matmul", "matmul [2,1,3,4]x[3,4,2]", f_matmul, NULL, 2, {R1(2, 1, 3, 4), R1(3, 4, 2)}, CURVED},
    {"matmul", "matmul [3,4]x[2,4,5]", f_matmul, NULL, 2, {R1(3, 4), R1(2, 4, 5)}, CURVED},
    {"matmul", "matmul [4]x[4,5]", f_matmul, NULL, 2, {R1(4), R1(4, 5)}, CURVED},
    {"matmul", "matmul [3,4]x[4]", f_matmul, NULL, 2, {R1(3, 4), R1(4)}, CURVED},
    {"matmul", "matmul [4]x[2,4,5]", f_matmul, NULL, 2, {R1(4), R1(2, 4, 5)}, CURVED},
    {"matmul", "matmul [2,3,4]x[4]", f_matmul, NULL, 2, {R1(2, 3, 4), R1(4)}, CURVED},
    {"matmul", "matmul [4]x[4]", f_matmul, NULL, 2, {R1(4), R1(4)}, CURVED},
    {"matmul", "matmul [2,3,4] const x[4,5]", f_matmul, NULL, 2, {INC(-1, 1, 2, 3, 4), R1(4, 5)}, LINEAR},
    {"matmul", "matmul_ex TN [2,4,3]x[4,5]", f_matmul_ex, &k_tn, 2, {R1(2, 4, 3), R1(4, 5)}, CURVED},
    {"matmul", "matmul_ex NT [2,3,4]x[5,4]", f_matmul_ex, &k_nt, 2, {R1(2, 3, 4), R1(5, 4)}, CURVED},
    {"matmul", "matmul_ex NT [2,3,4]x[2,5,4]", f_matmul_ex, &k_nt, 2, {R1(2, 3, 4), R1(2, 5, 4)}, CURVED},
    {"matmul", "matmul_ex TT [2,1,4,3]x[3,5,4]", f_matmul_ex, &k_tt, 2, {R1(2, 1, 4, 3), R1(3, 5, 4)}, CURVED},

    /* ---- reductions (random inputs: no ties) ---- */
    {"max", "max axis 1", f_max, AX(1, {1}, 0), 1, {R1(2, 3, 4)}, LINEAR},
    {"max", "max axes 0,2 keepdim", f_max, AX(2, {0, 2}, 1), 1, {R1(2, 3, 4)}, LINEAR},
    {"max", "max all", f_max, AX(0, {0}, 0), 1, {R1(2, 3, 4)}, LINEAR},
    {"max", "max axes -1,-2", f_max, AX(2, {-1, -2}, 0), 1, {R1(2, 3, 4)}, LINEAR},
    {"min", "min axis -1 keepdim", f_min, AX(1, {-1}, 1), 1, {R1(2, 3, 4)}, LINEAR},
    {"min", "min axes 1,2", f_min, AX(2, {1, 2}, 0), 1, {R1(2, 3, 4)}, LINEAR},
    {"min", "min all keepdim", f_min, AX(0, {0}, 1), 1, {R1(2, 3, 4)}, LINEAR},
    {"logsumexp", "logsumexp axis 1", f_logsumexp, AX(1, {1}, 0), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"logsumexp", "logsumexp axes 0,2 keepdim", f_logsumexp, AX(2, {0, 2}, 1), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"logsumexp", "logsumexp all", f_logsumexp, AX(0, {0}, 0), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"var", "var axis 1 c1", f_var, AXC(1, {1}, 0, 1), 1, {R1(2, 3, 4)}, CURVED},
    {"var", "var axes 0,2 keepdim c0", f_var, AXC(2, {0, 2}, 1, 0), 1, {R1(2, 3, 4)}, CURVED},
    {"var", "var all c1", f_var, AXC(0, {0}, 0, 1), 1, {R1(2, 3, 4)}, CURVED},
    {"std", "std axis -1 c0", f_std, AXC(1, {-1}, 0, 0), 1, {R1(2, 3, 4)}, CURVED},
    {"std", "std axes 0,1 keepdim c1", f_std, AXC(2, {0, 1}, 1, 1), 1, {R1(2, 3, 4)}, CURVED},
    {"std", "std all c0", f_std, AXC(0, {0}, 0, 0), 1, {R1(2, 3, 4)}, CURVED},
    {"softmax", "softmax axis 0", f_softmax, AXIS(0), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"softmax", "softmax axis 1", f_softmax, AXIS(1), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"softmax", "softmax axis -1", f_softmax, AXIS(-1), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"log_softmax", "log_softmax axis 0", f_log_softmax, AXIS(0), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"log_softmax", "log_softmax axis 1", f_log_softmax, AXIS(1), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"log_softmax", "log_softmax axis -1", f_log_softmax, AXIS(-1), 1, {IN(-2, 2, 2, 3, 4)}, CURVED},
    {"argmax", "gather at argmax axis 1", f_take_argmax, AXIS(1), 1, {R1(3, 4)}, LINEAR},
    {"argmin", "gather at argmin axis 0", f_take_argmin, AXIS(0), 1, {R1(3, 4)}, LINEAR},

    /* ---- shape and indexing ---- */
    {"slice", "slice axis 1 1:5:2", f_slice, IA(1, {1, 5, 2}), 1, {R1(4, 6)}, LINEAR},
    {"slice", "slice axis 0 -3:4", f_slice, IA(0, {-3, 4, 1}), 1, {R1(4, 6)}, LINEAR},
    {"slice", "slice axis -1 0:100:3", f_slice, IA(-1, {0, 100, 3}), 1, {R1(3, 7)}, LINEAR},
    {"slice", "slice [2,5,3] axis 1 -4:-1:2", f_slice, IA(1, {-4, -1, 2}), 1, {R1(2, 5, 3)}, LINEAR},
    {"concat", "concat 3 along 1", f_concat, AXIS(1), 3, {R1(2, 1, 3), R1(2, 3, 3), R1(2, 2, 3)}, LINEAR},
    {"concat", "concat 2 along 0", f_concat2, AXIS(0), 2, {R1(1, 4), R1(3, 4)}, LINEAR},
    {"concat", "concat 3 along -1, one const", f_concat, AXIS(-1), 3, {R1(2, 2), INC(-1, 1, 2, 3), R1(2, 1)}, LINEAR},
    {"stack", "stack 3 along 0", f_stack, AXIS(0), 3, {R1(2, 3), R1(2, 3), R1(2, 3)}, LINEAR},
    {"stack", "stack 3 along -1", f_stack, AXIS(-1), 3, {R1(2, 3), R1(2, 3), R1(2, 3)}, LINEAR},
    {"split", "split [5,4] 1,3,1", f_split, IA(0, {1, 3, 1, -1}), 1, {R1(5, 4)}, LINEAR},
    {"split", "split [2,6,2] axis 1 4,0,2", f_split, IA(1, {4, 0, 2, -1}), 1, {R1(2, 6, 2)}, LINEAR},
    {"chunk", "chunk [7,2] into 3", f_chunk, IA(0, {3}), 1, {R1(7, 2)}, LINEAR},
    {"chunk", "chunk [2,6] into 4 (3 pieces)", f_chunk, IA(1, {4}), 1, {R1(2, 6)}, LINEAR},
    {"squeeze", "squeeze [2,1,3] axis 1", f_squeeze, AXIS(1), 1, {R1(2, 1, 3)}, LINEAR},
    {"squeeze", "squeeze [1,3] axis -2", f_squeeze, AXIS(-2), 1, {R1(1, 3)}, LINEAR},
    {"unsqueeze", "unsqueeze [2,3] axis 0", f_unsqueeze, AXIS(0), 1, {R1(2, 3)}, LINEAR},
    {"unsqueeze", "unsqueeze [2,3] axis -1", f_unsqueeze, AXIS(-1), 1, {R1(2, 3)}, LINEAR},
    {"unsqueeze", "unsqueeze(tanh(squeeze))", f_squeeze_tanh, NULL, 1, {R1(2, 1, 3)}, CURVED},
    {"pad", "pad [2,3] (1,0),(2,1)", f_pad, IA(0, {1, 0, 2, 1}), 1, {R1(2, 3)}, LINEAR},
    {"pad", "pad [2,3,2] (0,0),(1,1),(0,2)", f_pad, IA(0, {0, 0, 1, 1, 0, 2}), 1, {R1(2, 3, 2)}, LINEAR},
    {"index_select", "index_select axis 0 3,0,3,1,3", f_index_select, IA(0, {3, 0, 3, 1, 3}), 1, {R1(4, 3)}, LINEAR},
    {"index_select", "index_select axis -1 1,3,1,1,0", f_index_select, IA(-1, {1, 3, 1, 1, 0}), 1, {R1(2, 3, 4)}, LINEAR},
    {"gather", "gather axis 1", f_gather1, NULL, 1, {R1(3, 4)}, LINEAR},
    {"gather", "gather axis 0", f_gather0, NULL, 1, {R1(3, 4)}, LINEAR},
    {"scatter_add", "scatter_add axis 1", f_scatter_add, NULL, 1, {R1(3, 2)}, LINEAR},
    {"scatter_add", "scatter_add squared", f_scatter_add_sq, NULL, 1, {R1(3, 2)}, CURVED},
    {"one_hot", "sum(x * one_hot)", f_one_hot_pick, NULL, 1, {R1(3, 4)}, LINEAR},
    {"dropout", "dropout p=0.5 fixed mask", f_dropout, SC(0.5, 0), 1, {R1(4, 5)}, LINEAR},
    {"dropout", "tanh(dropout p=0.25)", f_dropout_tanh, SC(0.25, 0), 1, {R1(4, 5)}, CURVED},
    {"lstm_gates", "lstm_gates [3,8], [3,2]", f_lstm_gates, NULL, 2, {IN(-2, 2, 3, 8), R1(3, 2)}, CURVED},
    {"lstm_gates", "lstm_gates [2,2,12], c held", f_lstm_gates, NULL, 2, {IN(-2, 2, 2, 2, 12), INC(-1, 1, 2, 2, 3)},
     CURVED},
    {"gru_gates", "gru_gates [3,6], [3,6], [3,2]", f_gru_gates, NULL, 3, {IN(-2, 2, 3, 6), IN(-2, 2, 3, 6), R1(3, 2)},
     CURVED},
    {"gru_gates", "gru_gates [2,1,9], hg held", f_gru_gates, NULL, 3, {IN(-2, 2, 2, 1, 9), INC(-2, 2, 2, 1, 9),
                                                                      R1(2, 1, 3)}, CURVED},

    /* ---- addmm ---- */
    {"addmm", "addmm [4] + [3,2]x[2,4]", f_addmm, &k_none, 3, {R1(4), R1(3, 2), R1(2, 4)}, CURVED},
    {"addmm", "addmm [3,4] + [2,3]^T x[2,4]", f_addmm, &k_tn, 3, {R1(3, 4), R1(2, 3), R1(2, 4)}, CURVED},
    {"addmm", "addmm [3,1] + [3,2]x[4,2]^T", f_addmm, &k_nt, 3, {R1(3, 1), R1(3, 2), R1(4, 2)}, CURVED},
    {"addmm", "addmm [4] + [2,3,2]x[2,4]", f_addmm, &k_none, 3, {R1(4), R1(2, 3, 2), R1(2, 4)}, CURVED},
    {"addmm", "tanh(addmm [1,4] + [3,2]x[2,4])", f_addmm_tanh, &k_none, 3, {R1(1, 4), R1(3, 2), R1(2, 4)}, CURVED},
    {"addmm", "addmm [3] + [1,2]x[2,3] (c has fewer dims)", f_addmm, &k_none, 3, {R1(3), R1(1, 2), R1(2, 3)}, CURVED},

    /* ---- ops recorded by backward rules, as functions of their own ---- */
    {"tanh_backward", "d/dx sum(w tanh x)", f_tanh_bw, NULL, 2, {IN(-2, 2, 2, 3), R1(2, 3)}, CURVED},
    {"sigmoid_backward", "d/dx sum(w sigmoid x)", f_sigmoid_bw, NULL, 2, {IN(-3, 3, 2, 3), R1(2, 3)}, CURVED},
    {"relu_backward", "d/dx sum(w relu x)", f_relu_bw, NULL, 2, {INALT(0.1, 1.5, 2, 3), R1(2, 3)}, LINEAR},
    {"slice_embed", "d/dx sum(slice(x)^2)", f_slice_embed, NULL, 1, {R1(3, 6)}, LINEAR},
    {"index_add", "d/dx sum(index_select(x)^2)", f_index_add, NULL, 1, {R1(3, 2)}, LINEAR},
    {"custom", "custom cube (composed backward)", f_custom, NULL, 1, {R1(2, 3)}, CURVED},
};

#define N_ROWS ((int)(sizeof rows / sizeof rows[0]))

/* ---- running one row (gradtable_check notes the ops its function records) ------------------- */

/* The registry (src/ops/oplist.h, private: included for the names and the Y/N of each op's backward
 * rule). Every op with a rule must be recorded by some row's function while nb_gradcheck and
 * nb_gradgradcheck run it, so that a new op without a row fails this test. */
#include "../src/ops/oplist.h"
#define REG_BW_Y 1
#define REG_BW_N 0
#define REG_ROW(ID, fn, name, n_in, fw, bw, into, view) {name, REG_BW_##bw},
static const struct {
    const char *name;
    int differentiable;
} registry[] = {NB_OP_LIST(REG_ROW)};
#undef REG_ROW
#define N_REGISTRY ((int)(sizeof registry / sizeof registry[0]))
static int rows_passed;

static void run_row(int r)
{
    const row *rw = &rows[r];
    rows_passed += gradtable_check(rw->name, rw->f, rw->arg, rw->n_in, rw->in, rw->order, NULL, 5000u + (uint64_t)r);
}

/* The ops without a backward rule are never recorded; each has its values checked by a forward test
 * of this file (test_nondiff_values, and the comparisons in the where rows). */
static const char *const forward_tested[] = {"compare", "sign", "argmax",
                                             "argsort" /* test_grad_everyday.c: test_order */};

/* Whether op k of the registry was recorded by a row (of this table, or of test_grad_everyday.c's or
 * test_conv.c's, which check that themselves); a custom op's node has the custom op's own name. */
static int op_recorded(int k)
{
    const char *name = registry[k].name;
    for (int e = 0; e < GRADTABLE_N_EVERYDAY; e++)
        if (!strcmp(gradtable_everyday_ops[e], name)) return 1;
    for (int e = 0; e < GRADTABLE_N_CNN; e++)
        if (!strcmp(gradtable_cnn_ops[e], name)) return 1;
    if (strcmp(name, "custom")) return gradtable_was_seen(name);
    for (int s = 0; s < gradtable_n_seen; s++) {
        int known = 0;
        for (int q = 0; q < N_REGISTRY && !known; q++) known = !strcmp(registry[q].name, gradtable_seen[s]);
        if (!known) return 1;
    }
    return 0;
}

static void check_registry_coverage(void)
{
    int covered = 0, n_diff = 0;
    for (int k = 0; k < N_REGISTRY; k++) {
        if (registry[k].differentiable) {
            n_diff++;
            covered += op_recorded(k);
            CHECK(op_recorded(k), "op \"%s\" (src/ops/oplist.h) has a backward rule but no row of the gradcheck "
                  "table records it: add a row", registry[k].name);
        } else {
            int found = 0;
            for (size_t f = 0; f < sizeof forward_tested / sizeof forward_tested[0]; f++)
                found |= !strcmp(forward_tested[f], registry[k].name);
            CHECK(found, "op \"%s\" (src/ops/oplist.h) has no backward rule and no forward test: add one and list "
                  "it in forward_tested", registry[k].name);
        }
    }
    printf("grad_primitives: registry: %d ops, %d with a backward rule, %d of them gradchecked to first and second "
           "order\n", N_REGISTRY, n_diff, covered);
}

static int count_distinct_ops(void)
{
    int n = 0;
    for (int r = 0; r < N_ROWS; r++) {
        int seen = 0;
        for (int q = 0; q < r && !seen; q++) seen = !strcmp(rows[q].op, rows[r].op);
        n += !seen;
    }
    return n;
}

/* ---- helpers for the direct checks ------------------------------------------------------------ */

static nb_tensor *leaf(int ndim, const int64_t *shape, const double *v)
{
    nb_tensor *t = nb_tensor_from_data(NB_F64, ndim, shape, v);
    nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* every element of t equals want[i] exactly */
static void check_exact(const char *what, const nb_tensor *t, int64_t n, const double *want)
{
    CHECK(t && nb_tensor_numel(t) == n, "%s: %s (numel %lld, expected %lld)", what, t ? "wrong size" : "missing",
          t ? (long long)nb_tensor_numel(t) : -1LL, (long long)n);
    if (!t || nb_tensor_numel(t) != n) return;
    for (int64_t i = 0; i < n; i++)
        CHECK(nb_tensor_get(t, i) == want[i], "%s[%lld] = %.17g, expected %.17g", what, (long long)i,
              nb_tensor_get(t, i), want[i]);
}

/* |t[i] - want[i]| <= rtol |want[i]| + atol, and t[i] finite */
static void check_close(const char *what, const nb_tensor *t, int64_t n, const double *want, double rtol, double atol)
{
    CHECK(t && nb_tensor_numel(t) == n, "%s: %s", what, t ? "wrong size" : "missing");
    if (!t || nb_tensor_numel(t) != n) return;
    for (int64_t i = 0; i < n; i++) {
        double got = nb_tensor_get(t, i);
        CHECK(isfinite(got) && fabs(got - want[i]) <= rtol * fabs(want[i]) + atol, "%s[%lld] = %.17g, expected %.17g",
              what, (long long)i, got, want[i]);
    }
}

/* ---- ties ------------------------------------------------------------------------------------- */

static void test_ties(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);

    /* maximum / minimum: equal elements split the gradient 1/2 - 1/2 (positions 0, 2, 5) */
    const double av[6] = {1.0, 2.0, -3.0, -1.0, 0.5, 0.0}, bv[6] = {1.0, 0.0, -3.0, 2.0, -0.5, 0.0};
    const double seed_v[6] = {1, 2, 3, 4, 5, 6};
    nb_tensor *a = leaf(NB_SHAPE(6), av), *b = leaf(NB_SHAPE(6), bv);
    nb_tensor *seed = nb_tensor_from_data(NB_F64, NB_SHAPE(6), seed_v);
    nb_tensor *y = nb_maximum(a, b);
    check_exact("maximum ties: value", y, 6, (const double[]){1, 2, -3, 2, 0.5, 0});
    CHECK(nb_backward(y, seed, 0) == NB_OK, "maximum ties: backward: %s", nb_error_message());
    check_exact("maximum ties: grad a", nb_tensor_grad(a), 6, (const double[]){0.5, 2, 1.5, 0, 5, 3});
    check_exact("maximum ties: grad b", nb_tensor_grad(b), 6, (const double[]){0.5, 0, 1.5, 4, 0, 3});
    nb_tensor_zero_grad(a);
    nb_tensor_zero_grad(b);
    y = nb_minimum(a, b);
    check_exact("minimum ties: value", y, 6, (const double[]){1, 0, -3, -1, -0.5, 0});
    CHECK(nb_backward(y, seed, 0) == NB_OK, "minimum ties: backward: %s", nb_error_message());
    check_exact("minimum ties: grad a", nb_tensor_grad(a), 6, (const double[]){0.5, 0, 1.5, 4, 0, 3});
    check_exact("minimum ties: grad b", nb_tensor_grad(b), 6, (const double[]){0.5, 2, 1.5, 0, 5, 3});

    /* maximum of a tensor with itself: both halves come back to the one leaf: gradient 1 */
    nb_tensor_zero_grad(a);
    y = nb_sum_all(nb_maximum(a, a));
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "maximum(a, a): backward: %s", nb_error_message());
    check_exact("maximum(a, a): grad", nb_tensor_grad(a), 6, (const double[]){1, 1, 1, 1, 1, 1});

    /* max / min over an axis: the whole gradient goes to the first maximal (minimal) element */
    const double xv[8] = {1, 3, 3, 2, /* */ -1, -4, 0, -4};
    nb_tensor *x = leaf(NB_SHAPE(2, 4), xv);
    y = nb_max(x, NB_AXES(1), 0);
    check_exact("max ties: value", y, 2, (const double[]){3, 0});
    nb_tensor *seed2 = nb_tensor_from_data(NB_F64, NB_SHAPE(2), (const double[]){2, 5});
    nb_tensor *seed21 = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 1), (const double[]){2, 5});
    CHECK(nb_backward(y, seed2, 0) == NB_OK, "max ties: backward: %s", nb_error_message());
    check_exact("max ties: grad", nb_tensor_grad(x), 8, (const double[]){0, 2, 0, 0, 0, 0, 5, 0});
    nb_tensor_zero_grad(x);
    y = nb_min(x, NB_AXES(1), 1);
    check_exact("min ties: value", y, 2, (const double[]){1, -4});
    CHECK(y && nb_tensor_ndim(y) == 2 && nb_tensor_dim(y, 1) == 1, "min ties: keepdim shape");
    CHECK(nb_backward(y, seed21, 0) == NB_OK, "min ties: backward: %s", nb_error_message());
    check_exact("min ties: grad", nb_tensor_grad(x), 8, (const double[]){2, 0, 0, 0, 0, 5, 0, 0});
    /* over all axes: the first of the two 3s in row-major order */
    nb_tensor_zero_grad(x);
    y = nb_max(x, 0, NULL, 0);
    CHECK(y && nb_tensor_ndim(y) == 0 && nb_tensor_item(y) == 3, "max all ties: value");
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "max all ties: backward: %s", nb_error_message());
    check_exact("max all ties: grad", nb_tensor_grad(x), 8, (const double[]){0, 1, 0, 0, 0, 0, 0, 0});
    CHECK_NO_ERROR();

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *leaves[] = {a, b, seed, x, seed2, seed21};
    for (size_t i = 0; i < sizeof leaves / sizeof leaves[0]; i++) nb_tensor_free(leaves[i]);
}

/* ---- non-differentiable ops: values ----------------------------------------------------------- */

static void test_nondiff_values(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);

    /* sign: -1, 0, 1 (also -0 -> 0), and no recorded node: backward through it gives zeros */
    nb_tensor *x = leaf(NB_SHAPE(5), (const double[]){-2.5, 0.0, -0.0, 1e-300, 7.0});
    nb_tensor *s = nb_sign(x);
    check_exact("sign values", s, 5, (const double[]){-1, 0, 0, 1, 1});
    CHECK(s && !nb_tensor_requires_grad(s), "sign: result is not on the graph");
    nb_tensor *g[1];
    CHECK(nb_grad(nb_sum_all(nb_mul(x, s)), NULL, 1, &x, g, 0) == NB_OK, "x sign(x): nb_grad: %s",
          nb_error_message());
    check_exact("d(x sign x)/dx = sign x", g[0], 5, (const double[]){-1, 0, 0, 1, 1});
    CHECK(nb_grad(nb_sum_all(nb_sign(x)), NULL, 1, &x, g, 0) == NB_OK, "sum(sign(x)): nb_grad: %s",
          nb_error_message());
    check_exact("d sum(sign x)/dx = 0", g[0], 5, (const double[]){0, 0, 0, 0, 0});

    /* argmax / argmin: i64, first extreme element on ties, keepdim shapes, negative axes */
    nb_tensor *m = leaf(NB_SHAPE(2, 3, 2), (const double[]){1, 9, 5, 9, 5, 2, /* */ -1, -3, -1, -7, -2, -7});
    nb_tensor *am = nb_argmax(m, 1, 0); /* [2,2] */
    CHECK(am && nb_tensor_dtype(am) == NB_I64 && nb_tensor_ndim(am) == 2 && !nb_tensor_requires_grad(am),
          "argmax: i64 [2,2] off the graph");
    check_exact("argmax axis 1", am, 4, (const double[]){1, 0, 0, 0});
    nb_tensor *an = nb_argmin(m, -1, 1); /* [2,3,1] */
    CHECK(an && nb_tensor_ndim(an) == 3 && nb_tensor_dim(an, 2) == 1, "argmin keepdim shape");
    check_exact("argmin axis -1", an, 6, (const double[]){0, 0, 1, 1, 1, 1});
    nb_tensor *an0 = nb_argmin(m, 0, 0); /* [3,2] */
    check_exact("argmin axis 0", an0, 6, (const double[]){1, 1, 1, 1, 1, 1});
    nb_tensor *am2 = nb_argmax(m, 2, 0);
    check_exact("argmax axis 2", am2, 6, (const double[]){1, 1, 0, 0, 0, 0});

    /* one_hot: rows of the labels' shape plus a class axis, in the requested dtype */
    nb_tensor *lab = nb_tensor_from_data(NB_I64, NB_SHAPE(2, 2), (const int64_t[]){2, 0, 1, 2});
    nb_tensor *oh = nb_one_hot(lab, 3, NB_F32);
    CHECK(oh && nb_tensor_dtype(oh) == NB_F32 && nb_tensor_ndim(oh) == 3 && nb_tensor_dim(oh, 2) == 3,
          "one_hot: f32 [2,2,3]");
    check_exact("one_hot values", oh, 12, (const double[]){0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1});
    nb_tensor *oh1 = nb_one_hot(am, 2, NB_F64); /* labels straight from argmax */
    check_exact("one_hot(argmax)", oh1, 8, (const double[]){0, 1, 1, 0, 1, 0, 1, 0});
    CHECK_NO_ERROR();

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(m);
    nb_tensor_free(lab);
}

/* ---- softmax, log_softmax, logsumexp at +-1e4 ------------------------------------------------- */

/* Closed forms for one row x with max m: softmax_i = e^(x_i - m) / S, S = sum_j e^(x_j - m),
 * log_softmax_i = x_i - m - log S, logsumexp = m + log S. With a seed w, the gradients are
 *   softmax:     y_i (w_i - sum_j w_j y_j)
 *   log_softmax: w_i - y_i sum_j w_j
 *   logsumexp:   w y_i */
static void test_large_inputs(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    /* rows: large positive, large negative, mixed signs (an entry 2e4 below the row's max) */
    const double xv[3][4] = {{1e4, 1e4 - 1, 1e4 - 2.5, 1e4}, {-1e4, -1e4 + 3, -1e4 + 0.5, -1e4 - 1},
                             {1e4, -1e4, 1e4 - 0.75, 0.0}};
    const double wv[3][4] = {{0.5, -1.0, 2.0, 0.25}, {1.5, 0.5, -0.75, 1.0}, {-1.0, 2.0, 0.5, 3.0}};
    double sm[12], lsm[12], lse[3], g_sm[12], g_lsm[12], g_lse[12];
    for (int r = 0; r < 3; r++) {
        double m = xv[r][0], S = 0, wsum = 0, wy = 0;
        for (int j = 1; j < 4; j++) m = fmax(m, xv[r][j]);
        for (int j = 0; j < 4; j++) S += exp(xv[r][j] - m);
        for (int j = 0; j < 4; j++) {
            sm[4 * r + j] = exp(xv[r][j] - m) / S;
            lsm[4 * r + j] = (xv[r][j] - m) - log(S);
            wsum += wv[r][j];
            wy += wv[r][j] * sm[4 * r + j];
        }
        lse[r] = m + log(S);
        for (int j = 0; j < 4; j++) {
            double y = sm[4 * r + j];
            g_sm[4 * r + j] = y * (wv[r][j] - wy);
            g_lsm[4 * r + j] = wv[r][j] - y * wsum;
            g_lse[4 * r + j] = wv[r][0] * y; /* logsumexp's seed: the first column of w */
        }
    }
    nb_tensor *x = leaf(NB_SHAPE(3, 4), &xv[0][0]);
    nb_tensor *w = nb_tensor_from_data(NB_F64, NB_SHAPE(3, 4), &wv[0][0]);
    nb_tensor *wcol = nb_tensor_from_data(NB_F64, NB_SHAPE(3), (const double[]){wv[0][0], wv[1][0], wv[2][0]});

    nb_tensor *y = nb_softmax(x, 1);
    check_close("softmax(+-1e4)", y, 12, sm, 1e-15, 1e-300);
    CHECK(y && nb_tensor_get(y, 9) == 0.0, "softmax: an entry 2e4 below the max is exactly 0 (underflow)");
    CHECK(nb_backward(y, w, 0) == NB_OK, "softmax(+-1e4): backward: %s", nb_error_message());
    check_close("softmax(+-1e4) grad", nb_tensor_grad(x), 12, g_sm, 1e-14, 1e-300);

    nb_tensor_zero_grad(x);
    y = nb_log_softmax(x, -1);
    /* values near -2e4 are exact to an ulp of 2e4: 1e-15 relative */
    check_close("log_softmax(+-1e4)", y, 12, lsm, 1e-15, 1e-15);
    CHECK(y && nb_tensor_get(y, 9) < -1.9e4 && isfinite(nb_tensor_get(y, 9)), "log_softmax: -2e4 stays finite");
    CHECK(nb_backward(y, w, 0) == NB_OK, "log_softmax(+-1e4): backward: %s", nb_error_message());
    check_close("log_softmax(+-1e4) grad", nb_tensor_grad(x), 12, g_lsm, 1e-14, 1e-15);

    nb_tensor_zero_grad(x);
    y = nb_logsumexp(x, NB_AXES(1), 0);
    check_close("logsumexp(+-1e4)", y, 3, lse, 1e-15, 0);
    CHECK(nb_backward(y, wcol, 0) == NB_OK, "logsumexp(+-1e4): backward: %s", nb_error_message());
    check_close("logsumexp(+-1e4) grad", nb_tensor_grad(x), 12, g_lse, 1e-14, 1e-300);

    /* logsumexp over every element: all the mass sits on the two 1e4 entries of row 0 and the one of
     * row 2: lse = 1e4 + log(2 + e^-1 + e^-2.5 + e^-0.75) (the rest underflows) */
    nb_tensor_zero_grad(x);
    y = nb_logsumexp(x, 0, NULL, 0);
    double s_all = 3 + exp(-1.0) + exp(-2.5) + exp(-0.75);
    CHECK(y && fabs(nb_tensor_item(y) - (1e4 + log(s_all))) <= 2e-12, "logsumexp all (+-1e4) = %.17g, expected %.17g",
          y ? nb_tensor_item(y) : NAN, 1e4 + log(s_all));
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "logsumexp all: backward: %s", nb_error_message());
    const nb_tensor *gx = nb_tensor_grad(x);
    CHECK(gx && fabs(nb_tensor_get(gx, 0) - 1 / s_all) <= 1e-15 && nb_tensor_get(gx, 4) == 0.0 &&
              fabs(nb_tensor_get(gx, 10) - exp(-0.75) / s_all) <= 1e-15,
          "logsumexp all: gradient e^(x - lse)");

    /* second order stays finite at this scale: the Hessian-vector product of logsumexp */
    nb_tensor_zero_grad(x);
    nb_tensor *gl[1];
    y = nb_logsumexp(x, NB_AXES(1), 0);
    CHECK(nb_grad(y, wcol, 1, &x, gl, NB_CREATE_GRAPH) == NB_OK, "logsumexp: create-graph grad: %s",
          nb_error_message());
    nb_tensor *hv = NULL;
    if (gl[0]) {
        nb_tensor *g2[1];
        if (nb_grad(nb_sum_all(nb_mul(gl[0], w)), NULL, 1, &x, g2, 0) == NB_OK) hv = g2[0];
    }
    /* d/dx_i sum_j w_j (w0 y_j) = w0 y_i (w_i - sum_j w_j y_j) = w0 * (softmax gradient with seed w) */
    double hv_want[12];
    for (int i = 0; i < 12; i++) hv_want[i] = wv[i / 4][0] * g_sm[i];
    check_close("logsumexp(+-1e4) second order", hv, 12, hv_want, 1e-13, 1e-300);
    CHECK_NO_ERROR();

    /* float32 at the same scale: finite and close */
    nb_tensor *x32 = nb_cast(x, NB_F32);
    nb_tensor *y32 = nb_softmax(x32, 1), *l32 = nb_log_softmax(x32, 1), *e32 = nb_logsumexp(x32, NB_AXES(1), 0);
    check_close("softmax f32 (+-1e4)", y32, 12, sm, 1e-6, 1e-30);
    check_close("log_softmax f32 (+-1e4)", l32, 12, lsm, 1e-6, 1e-6);
    check_close("logsumexp f32 (+-1e4)", e32, 3, lse, 1e-6, 0);
    CHECK_NO_ERROR();

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(wcol);
}

int main(void)
{
    for (int r = 0; r < N_ROWS; r++) run_row(r);
    int n_ops = count_distinct_ops();
    printf("grad_primitives: %d rows (%d passed), %d distinct ops in the gradcheck table\n", N_ROWS, rows_passed,
           n_ops);
    CHECK(n_ops >= 50, "the gradcheck table covers %d distinct ops, expected at least 50", n_ops);
    check_registry_coverage();
    test_ties();
    test_nondiff_values();
    test_large_inputs();
    return nbt_report("grad_primitives");
}
