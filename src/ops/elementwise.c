/* Elementwise ops: broadcast binary arithmetic, comparisons, the scalar affine map and unary
 * functions. Each forward sits next to its backward rule; every backward is written with nabla ops. */
#include "ops.h"

/* ---- shared machinery ------------------------------------------------------------------------- */

/* nb__check_binary, with i64 inputs allowed when int_ok. */
static bool check_pair(const char *who, const nb_tensor *a, const nb_tensor *b, int *ndim, int64_t *shape,
                       bool int_ok)
{
    if (!a || !b) {
        nb__fail(NB_ERR_ARG, "%s: input %s is NULL", who, !a ? "a" : "b");
        return false;
    }
    if (!nb__live(who, a) || !nb__live(who, b)) return false;
    if (a->dtype != b->dtype) {
        nb__fail(NB_ERR_DTYPE, "%s: %s %s and %s %s: dtypes differ (use nb_cast)", who,
                 nb_dtype_name(a->dtype), NB_SHP(a), nb_dtype_name(b->dtype), NB_SHP(b));
        return false;
    }
    if (!(int_ok && a->dtype == NB_I64) && !nb__check_float(who, a)) return false;
    if (!nb__broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, ndim, shape)) {
        nb__fail(NB_ERR_SHAPE, "%s: %s and %s: shapes do not broadcast", who, NB_SHP(a), NB_SHP(b));
        return false;
    }
    return true;
}

bool nb__check_binary(const char *who, const nb_tensor *a, const nb_tensor *b, int *ndim, int64_t *shape)
{
    return check_pair(who, a, b, ndim, shape, false);
}

bool nb__broadcast_shapes(int na, const int64_t *a, int nbd, const int64_t *b, int *out_ndim, int64_t *out)
{
    int n = na > nbd ? na : nbd;
    for (int i = 0; i < n; i++) {
        int ia = i - (n - na), ib = i - (n - nbd);
        int64_t ea = ia >= 0 ? a[ia] : 1, eb = ib >= 0 ? b[ib] : 1;
        if (ea != eb && ea != 1 && eb != 1) return false;
        out[i] = ea == 1 ? eb : ea;
    }
    *out_ndim = n;
    return true;
}

static void binary_kernel(nb_binop op, nb_tensor *out, const nb_tensor *a, const nb_tensor *b)
{
    nb_bcast bc;
    if (a->numel == out->numel && b->numel == out->numel) {
        /* equal shapes (the common case): one flat loop, no plan */
        bc.ndim = 1;
        bc.numel = bc.shape[0] = out->numel;
        bc.sa[0] = bc.sb[0] = 1;
    } else if (a->numel == out->numel && b->numel == 1) {
        bc.ndim = 1;
        bc.numel = bc.shape[0] = out->numel;
        bc.sa[0] = 1;
        bc.sb[0] = 0;
    } else {
        nb__bcast_plan(&bc, out->ndim, out->shape, a, b);
    }
    if (out->dtype == NB_F32)
        nb_k_binary_f32(op, &bc, a->data, b->data, out->data);
    else if (out->dtype == NB_F64)
        nb_k_binary_f64(op, &bc, a->data, b->data, out->data);
    else
        nb_k_binary_i64(op, &bc, a->data, b->data, out->data);
}

/* Ops that also take two i64 tensors (an i64 result, never recorded: i64 inputs need no gradient). */
static bool takes_int(nb_op_id op)
{
    return op == NB_OP_ADD || op == NB_OP_SUB || op == NB_OP_MUL || op == NB_OP_CMP || op == NB_OP_MAXIMUM ||
           op == NB_OP_MINIMUM;
}

static nb_tensor *binary(const char *who, nb_op_id op, nb_tensor *a, nb_tensor *b, int kind)
{
    nb_tensor *in[2] = {a, b};
    nb_attrs at = {.i = {kind}};
    if (a && b && a->dtype == b->dtype && nb__is_float(a->dtype) && nb__same_shape(a, b))
        return nb__apply(who, op, 2, in, &at, a->dtype, a->ndim, a->shape); /* no broadcasting */
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    if (!check_pair(who, a, b, &ndim, shape, takes_int(op))) return NULL;
    return nb__apply(who, op, 2, in, &at, a->dtype, ndim, shape);
}

static void unary_kernel(nb_unop op, nb_tensor *out, const nb_tensor *x, double p0, double p1)
{
    if (out->dtype == NB_F32)
        nb_k_unary_f32(op, x->numel, x->data, out->data, p0, p1);
    else if (out->dtype == NB_F64)
        nb_k_unary_f64(op, x->numel, x->data, out->data, p0, p1);
    else
        nb_k_unary_i64(op, x->numel, x->data, out->data, p0, p1); /* neg, abs, sign (int_unary) */
}

static nb_tensor *unary_ex(const char *who, nb_op_id op, nb_tensor *x, double p0, double p1, bool int_ok)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__live(who, x)) return NULL;
    if (!(int_ok && x->dtype == NB_I64) && !nb__check_float(who, x)) return NULL;
    nb_attrs at = {.f = {p0, p1}};
    return nb__apply(who, op, 1, &x, &at, x->dtype, x->ndim, x->shape);
}

static nb_tensor *unary(const char *who, nb_op_id op, nb_tensor *x, double p0, double p1)
{
    return unary_ex(who, op, x, p0, p1, false);
}

/* The unary ops that also take an i64 tensor (an i64 result, never recorded: i64 needs no gradient). */
static nb_tensor *int_unary(const char *who, nb_op_id op, nb_tensor *x, double p0, double p1)
{
    return unary_ex(who, op, x, p0, p1, true);
}

nb_tensor *nb__scalar(nb_dtype dtype, double v) { return nb_full(dtype, 0, NULL, v); }

nb_status nb__add_inplace(nb_tensor *y, const nb_tensor *x)
{
    y->version++; /* an in-place change (nb_tensor_has_grad counts a leaf gradient's writes by it) */
    if (y->dtype == NB_F32)
        nb_k_axpy_f32(y->numel, 1.0, x->data, y->data);
    else
        nb_k_axpy_f64(y->numel, 1.0, x->data, y->data);
    return NB_OK;
}

/* Reduce a gradient to input i's shape (undoing broadcasting). */
#define TO_IN(i, t) nb__sum_to((t), n->in[i]->ndim, n->in[i]->shape)

/* ---- add, sub, mul, div ----------------------------------------------------------------------- */

NB_FW(add) { (void)at; binary_kernel(NB_B_ADD, out, in[0], in[1]); }
/* d(a+b) = da + db */
NB_BW(add)
{
    if (NB_NEED(0)) gin[0] = TO_IN(0, g);
    if (NB_NEED(1)) gin[1] = TO_IN(1, g);
}
nb_tensor *nb_add(nb_tensor *a, nb_tensor *b) { return binary("nb_add", NB_OP_ADD, a, b, 0); }

NB_FW(sub) { (void)at; binary_kernel(NB_B_SUB, out, in[0], in[1]); }
/* d(a-b) = da - db */
NB_BW(sub)
{
    if (NB_NEED(0)) gin[0] = TO_IN(0, g);
    if (NB_NEED(1)) gin[1] = TO_IN(1, nb_neg(g));
}
nb_tensor *nb_sub(nb_tensor *a, nb_tensor *b) { return binary("nb_sub", NB_OP_SUB, a, b, 0); }

NB_FW(mul) { (void)at; binary_kernel(NB_B_MUL, out, in[0], in[1]); }
/* d(ab) = b da + a db */
NB_BW(mul)
{
    if (NB_NEED(0)) gin[0] = TO_IN(0, nb_mul(g, n->in[1]));
    if (NB_NEED(1)) gin[1] = TO_IN(1, nb_mul(g, n->in[0]));
}
nb_tensor *nb_mul(nb_tensor *a, nb_tensor *b) { return binary("nb_mul", NB_OP_MUL, a, b, 0); }

NB_FW(div) { (void)at; binary_kernel(NB_B_DIV, out, in[0], in[1]); }
/* d(a/b) = da / b - (a/b) db / b */
NB_BW(div)
{
    if (NB_NEED(0)) gin[0] = TO_IN(0, nb_div(g, n->in[1]));
    if (NB_NEED(1)) gin[1] = TO_IN(1, nb_neg(nb_div(nb_mul(g, n->out), n->in[1])));
}
nb_tensor *nb_div(nb_tensor *a, nb_tensor *b) { return binary("nb_div", NB_OP_DIV, a, b, 0); }

/* ---- comparisons (no gradient) ---------------------------------------------------------------- */

NB_FW(cmp) { binary_kernel((nb_binop)at->i[0], out, in[0], in[1]); }
nb_tensor *nb_eq(nb_tensor *a, nb_tensor *b) { return binary("nb_eq", NB_OP_CMP, a, b, NB_B_EQ); }
nb_tensor *nb_ne(nb_tensor *a, nb_tensor *b) { return binary("nb_ne", NB_OP_CMP, a, b, NB_B_NE); }
nb_tensor *nb_lt(nb_tensor *a, nb_tensor *b) { return binary("nb_lt", NB_OP_CMP, a, b, NB_B_LT); }
nb_tensor *nb_le(nb_tensor *a, nb_tensor *b) { return binary("nb_le", NB_OP_CMP, a, b, NB_B_LE); }
nb_tensor *nb_gt(nb_tensor *a, nb_tensor *b) { return binary("nb_gt", NB_OP_CMP, a, b, NB_B_GT); }
nb_tensor *nb_ge(nb_tensor *a, nb_tensor *b) { return binary("nb_ge", NB_OP_CMP, a, b, NB_B_GE); }

/* ---- affine: a x + b, and the scalar forms built on it ---------------------------------------- */

NB_FW(affine) { unary_kernel(NB_U_AFFINE, out, in[0], at->f[0], at->f[1]); }
/* d(a x + b) = a dx */
NB_BW(affine)
{
    if (NB_NEED(0)) gin[0] = nb_affine(g, n->attrs.f[0], 0.0);
}
nb_tensor *nb_affine(nb_tensor *x, double a, double b) { return unary("nb_affine", NB_OP_AFFINE, x, a, b); }
nb_tensor *nb_neg(nb_tensor *x) { return int_unary("nb_neg", NB_OP_AFFINE, x, -1.0, 0.0); }
nb_tensor *nb_add_scalar(nb_tensor *x, double s) { return unary("nb_add_scalar", NB_OP_AFFINE, x, 1.0, s); }
nb_tensor *nb_mul_scalar(nb_tensor *x, double s) { return unary("nb_mul_scalar", NB_OP_AFFINE, x, s, 0.0); }
nb_tensor *nb_rsub_scalar(double s, nb_tensor *x) { return unary("nb_rsub_scalar", NB_OP_AFFINE, x, -1.0, s); }

nb_tensor *nb_div_scalar(nb_tensor *x, double s)
{
    if (s == 0.0 && x) return nb__fail(NB_ERR_ARG, "nb_div_scalar: %s divided by zero", NB_SHP(x));
    return unary("nb_div_scalar", NB_OP_AFFINE, x, 1.0 / s, 0.0);
}

/* ---- unary functions -------------------------------------------------------------------------- */

NB_FW(exp) { (void)at; unary_kernel(NB_U_EXP, out, in[0], 0, 0); }
/* d exp(x) = exp(x) dx */
NB_BW(exp)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, n->out);
}
nb_tensor *nb_exp(nb_tensor *x) { return unary("nb_exp", NB_OP_EXP, x, 0, 0); }

NB_FW(log) { (void)at; unary_kernel(NB_U_LOG, out, in[0], 0, 0); }
/* d log(x) = dx / x */
NB_BW(log)
{
    if (NB_NEED(0)) gin[0] = nb_div(g, n->in[0]);
}
nb_tensor *nb_log(nb_tensor *x) { return unary("nb_log", NB_OP_LOG, x, 0, 0); }

NB_FW(tanh) { (void)at; unary_kernel(NB_U_TANH, out, in[0], 0, 0); }
/* d tanh(x) = (1 - tanh(x)^2) dx */
NB_BW(tanh)
{
    if (NB_NEED(0)) gin[0] = binary("tanh_backward", NB_OP_TANH_BW, g, n->out, 0);
}
nb_tensor *nb_tanh(nb_tensor *x) { return unary("nb_tanh", NB_OP_TANH, x, 0, 0); }

NB_FW(sigmoid) { (void)at; unary_kernel(NB_U_SIGMOID, out, in[0], 0, 0); }
/* d s(x) = s(x) (1 - s(x)) dx */
NB_BW(sigmoid)
{
    if (NB_NEED(0)) gin[0] = binary("sigmoid_backward", NB_OP_SIGMOID_BW, g, n->out, 0);
}
nb_tensor *nb_sigmoid(nb_tensor *x) { return unary("nb_sigmoid", NB_OP_SIGMOID, x, 0, 0); }

NB_FW(relu) { (void)at; unary_kernel(NB_U_RELU, out, in[0], 0, 0); }
/* d relu(x) = [not x <= 0] dx (0 at the kink; NaN passes dx on, as in PyTorch) */
NB_BW(relu)
{
    if (NB_NEED(0)) gin[0] = binary("relu_backward", NB_OP_RELU_BW, g, n->in[0], 0);
}
nb_tensor *nb_relu(nb_tensor *x) { return unary("nb_relu", NB_OP_RELU, x, 0, 0); }

/* ---- more binary ops -------------------------------------------------------------------------- */

NB_FW(pow) { (void)at; binary_kernel(NB_B_POW, out, in[0], in[1]); }
/* d a^b = b a^(b-1) da + a^b log(a) db, the second term taken as 0 where a = 0 (as PyTorch): log
 * reads 1 there, so neither this gradient nor its own gradient meets log(0) */
NB_BW(pow)
{
    nb_tensor *a = n->in[0], *b = n->in[1];
    if (NB_NEED(0)) gin[0] = TO_IN(0, nb_mul(g, nb_mul(b, nb_pow(a, nb_sub_scalar(b, 1.0)))));
    if (NB_NEED(1)) {
        nb_tensor *safe = nb_where(nb_eq(a, nb__scalar(a->dtype, 0.0)), nb__scalar(a->dtype, 1.0), a);
        gin[1] = TO_IN(1, nb_mul(g, nb_mul(n->out, nb_log(safe))));
    }
}
nb_tensor *nb_pow(nb_tensor *a, nb_tensor *b) { return binary("nb_pow", NB_OP_POW, a, b, 0); }

/* The share of the gradient that goes to a in max(a, b) (min: swap the comparisons), given
 * loses = [a < b]: 0 where a loses, 1/2 at ties, 1 where it wins, and also 1 where a or b is NaN (the
 * result is NaN, and PyTorch passes the gradient to both sides, so that a NaN is never hidden). */
static nb_tensor *winner_share(nb_tensor *loses, nb_tensor *a, nb_tensor *b)
{
    return nb_rsub_scalar(1.0, nb_add(loses, nb_mul_scalar(nb_eq(a, b), 0.5)));
}

NB_FW(maximum) { (void)at; binary_kernel(NB_B_MAX, out, in[0], in[1]); }
/* d max(a,b) = [a > b] da + [a < b] db, ties split evenly; with a NaN, both get the gradient */
NB_BW(maximum)
{
    nb_tensor *a = n->in[0], *b = n->in[1];
    if (NB_NEED(0)) gin[0] = TO_IN(0, nb_mul(g, winner_share(nb_lt(a, b), a, b)));
    if (NB_NEED(1)) gin[1] = TO_IN(1, nb_mul(g, winner_share(nb_gt(a, b), a, b)));
}
nb_tensor *nb_maximum(nb_tensor *a, nb_tensor *b) { return binary("nb_maximum", NB_OP_MAXIMUM, a, b, 0); }

NB_FW(minimum) { (void)at; binary_kernel(NB_B_MIN, out, in[0], in[1]); }
/* d min(a,b) = [a < b] da + [a > b] db, ties split evenly; with a NaN, both get the gradient */
NB_BW(minimum)
{
    nb_tensor *a = n->in[0], *b = n->in[1];
    if (NB_NEED(0)) gin[0] = TO_IN(0, nb_mul(g, winner_share(nb_gt(a, b), a, b)));
    if (NB_NEED(1)) gin[1] = TO_IN(1, nb_mul(g, winner_share(nb_lt(a, b), a, b)));
}
nb_tensor *nb_minimum(nb_tensor *a, nb_tensor *b) { return binary("nb_minimum", NB_OP_MINIMUM, a, b, 0); }

nb_tensor *nb_sub_scalar(nb_tensor *x, double s) { return unary("nb_sub_scalar", NB_OP_AFFINE, x, 1.0, -s); }
nb_tensor *nb_rdiv_scalar(double s, nb_tensor *x)
{
    if (!x) return nb__fail(NB_ERR_ARG, "nb_rdiv_scalar: input is NULL");
    if (!nb__live("nb_rdiv_scalar", x)) return NULL;
    if (!nb__check_float("nb_rdiv_scalar", x)) return NULL;
    return nb_mul_scalar(nb_reciprocal(x), s);
}

/* ---- where ------------------------------------------------------------------------------------ */

/* out = cond != 0 ? a : b, all three broadcast to out's shape */
NB_FW(where)
{
    (void)at;
    int64_t sc[NB_MAX_DIMS], sa[NB_MAX_DIMS], sb[NB_MAX_DIMS];
    nb__bcast_strides(in[0], out->ndim, out->shape, sc);
    nb__bcast_strides(in[1], out->ndim, out->shape, sa);
    nb__bcast_strides(in[2], out->ndim, out->shape, sb);
    if (out->dtype == NB_F32)
        nb_k_where_f32(out->ndim, out->shape, sc, sa, sb, in[0]->data, in[1]->data, in[2]->data, out->data);
    else if (out->dtype == NB_F64)
        nb_k_where_f64(out->ndim, out->shape, sc, sa, sb, in[0]->data, in[1]->data, in[2]->data, out->data);
    else
        nb_k_where_i64(out->ndim, out->shape, sc, sa, sb, in[0]->data, in[1]->data, in[2]->data, out->data);
}
/* d where(c, a, b) = where(c, 1, 0) da + where(c, 0, 1) db */
NB_BW(where)
{
    nb_tensor *c = n->in[0], *zero = nb__scalar(g->dtype, 0.0);
    if (NB_NEED(1)) gin[1] = TO_IN(1, nb_where(c, g, zero));
    if (NB_NEED(2)) gin[2] = TO_IN(2, nb_where(c, zero, g));
}

nb_tensor *nb_where(nb_tensor *cond, nb_tensor *a, nb_tensor *b)
{
    const char *who = "nb_where";
    int nd1, nd2;
    int64_t s1[NB_MAX_DIMS], s2[NB_MAX_DIMS];
    if (!cond) return nb__fail(NB_ERR_ARG, "%s: cond is NULL", who);
    if (!nb__live(who, cond)) return NULL;
    if (!check_pair(who, a, b, &nd1, s1, true)) return NULL;
    if (cond->dtype != a->dtype)
        return nb__fail(NB_ERR_DTYPE, "%s: cond %s %s and values %s: dtypes differ (masks from nb_gt etc. "
                        "have the values' dtype)", who, nb_dtype_name(cond->dtype), NB_SHP(cond),
                        nb_dtype_name(a->dtype));
    if (!nb__broadcast_shapes(cond->ndim, cond->shape, nd1, s1, &nd2, s2))
        return nb__fail(NB_ERR_SHAPE, "%s: cond %s, a %s, b %s: shapes do not broadcast", who, NB_SHP(cond),
                        NB_SHP(a), NB_SHP(b));
    nb_tensor *in[3] = {cond, a, b};
    return nb__apply(who, NB_OP_WHERE, 3, in, NULL, a->dtype, nd2, s2);
}

/* ---- more unary functions --------------------------------------------------------------------- */

#define UNARY_FW(name, KIND) \
    NB_FW(name) { unary_kernel(KIND, out, in[0], at->f[0], at->f[1]); }

UNARY_FW(sqrt, NB_U_SQRT)
/* d sqrt(x) = dx / (2 sqrt(x)) */
NB_BW(sqrt)
{
    if (NB_NEED(0)) gin[0] = nb_div(nb_mul_scalar(g, 0.5), n->out);
}
nb_tensor *nb_sqrt(nb_tensor *x) { return unary("nb_sqrt", NB_OP_SQRT, x, 0, 0); }

UNARY_FW(abs, NB_U_ABS)
/* d |x| = sign(x) dx */
NB_BW(abs)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_sign(n->in[0]));
}
nb_tensor *nb_abs(nb_tensor *x) { return int_unary("nb_abs", NB_OP_ABS, x, 0, 0); }

UNARY_FW(sign, NB_U_SIGN)
nb_tensor *nb_sign(nb_tensor *x) { return int_unary("nb_sign", NB_OP_SIGN, x, 0, 0); }

UNARY_FW(sin, NB_U_SIN)
/* d sin(x) = cos(x) dx */
NB_BW(sin)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_cos(n->in[0]));
}
nb_tensor *nb_sin(nb_tensor *x) { return unary("nb_sin", NB_OP_SIN, x, 0, 0); }

UNARY_FW(cos, NB_U_COS)
/* d cos(x) = -sin(x) dx */
NB_BW(cos)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_neg(nb_sin(n->in[0])));
}
nb_tensor *nb_cos(nb_tensor *x) { return unary("nb_cos", NB_OP_COS, x, 0, 0); }

UNARY_FW(erf, NB_U_ERF)
/* d erf(x) = 2/sqrt(pi) exp(-x^2) dx */
NB_BW(erf)
{
    if (NB_NEED(0))
        gin[0] = nb_mul(g, nb_mul_scalar(nb_exp(nb_neg(nb_square(n->in[0]))), 1.12837916709551257390));
}
nb_tensor *nb_erf(nb_tensor *x) { return unary("nb_erf", NB_OP_ERF, x, 0, 0); }

UNARY_FW(log1p, NB_U_LOG1P)
/* d log(1 + x) = dx / (1 + x) */
NB_BW(log1p)
{
    if (NB_NEED(0)) gin[0] = nb_div(g, nb_add_scalar(n->in[0], 1.0));
}
nb_tensor *nb_log1p(nb_tensor *x) { return unary("nb_log1p", NB_OP_LOG1P, x, 0, 0); }

UNARY_FW(expm1, NB_U_EXPM1)
/* d (e^x - 1) = e^x dx */
NB_BW(expm1)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_add_scalar(n->out, 1.0));
}
nb_tensor *nb_expm1(nb_tensor *x) { return unary("nb_expm1", NB_OP_EXPM1, x, 0, 0); }

UNARY_FW(leaky_relu, NB_U_LEAKY_RELU)
/* d leaky(x) = ([x > 0] (1 - slope) + slope) dx */
NB_BW(leaky_relu)
{
    double s = n->attrs.f[0];
    if (NB_NEED(0))
        gin[0] = nb_mul(g, nb_affine(nb_gt(n->in[0], nb__scalar(g->dtype, 0.0)), 1.0 - s, s));
}
nb_tensor *nb_leaky_relu(nb_tensor *x, double slope) { return unary("nb_leaky_relu", NB_OP_LEAKY_RELU, x, slope, 0); }

UNARY_FW(elu, NB_U_ELU)
/* d elu(x) = (elu(x) + alpha) dx for x <= 0, dx otherwise (NaN included, as in PyTorch) */
NB_BW(elu)
{
    if (NB_NEED(0)) {
        nb_tensor *neg = nb_le(n->in[0], nb__scalar(g->dtype, 0.0));
        gin[0] = nb_mul(g, nb_where(neg, nb_add_scalar(n->out, n->attrs.f[0]), nb__scalar(g->dtype, 1.0)));
    }
}
nb_tensor *nb_elu(nb_tensor *x, double alpha) { return unary("nb_elu", NB_OP_ELU, x, alpha, 0); }

UNARY_FW(softplus, NB_U_SOFTPLUS)
/* d log(1 + e^x) = sigmoid(x) dx */
NB_BW(softplus)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_sigmoid(n->in[0]));
}
nb_tensor *nb_softplus(nb_tensor *x) { return unary("nb_softplus", NB_OP_SOFTPLUS, x, 0, 0); }

UNARY_FW(gelu, NB_U_GELU)
/* d x Phi(x) = (Phi(x) + x phi(x)) dx, Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = e^(-x^2/2) / sqrt(2 pi) */
NB_BW(gelu)
{
    if (!NB_NEED(0)) return;
    nb_tensor *x = n->in[0];
    nb_tensor *cdf = nb_affine(nb_erf(nb_mul_scalar(x, 0.70710678118654752440)), 0.5, 0.5);
    nb_tensor *pdf = nb_mul_scalar(nb_exp(nb_mul_scalar(nb_square(x), -0.5)), 0.39894228040143267794);
    gin[0] = nb_mul(g, nb_add(cdf, nb_mul(x, pdf)));
}
nb_tensor *nb_gelu(nb_tensor *x) { return unary("nb_gelu", NB_OP_GELU, x, 0, 0); }

UNARY_FW(clamp, NB_U_CLAMP)
/* d clamp(x, lo, hi) = [lo <= x <= hi] dx */
NB_BW(clamp)
{
    if (!NB_NEED(0)) return;
    nb_tensor *x = n->in[0];
    nb_tensor *inside = nb_mul(nb_ge(x, nb__scalar(g->dtype, n->attrs.f[0])),
                               nb_le(x, nb__scalar(g->dtype, n->attrs.f[1])));
    gin[0] = nb_mul(g, inside);
}
nb_tensor *nb_clamp(nb_tensor *x, double lo, double hi)
{
    if (x && !(lo <= hi))
        return nb__fail(NB_ERR_ARG, "nb_clamp: %s: lo %g > hi %g", NB_SHP(x), lo, hi);
    return unary("nb_clamp", NB_OP_CLAMP, x, lo, hi);
}

UNARY_FW(reciprocal, NB_U_RECIPROCAL)
/* d (1/x) = -(1/x)^2 dx */
NB_BW(reciprocal)
{
    if (NB_NEED(0)) gin[0] = nb_neg(nb_mul(g, nb_square(n->out)));
}
nb_tensor *nb_reciprocal(nb_tensor *x) { return unary("nb_reciprocal", NB_OP_RECIPROCAL, x, 0, 0); }

UNARY_FW(square, NB_U_SQUARE)
/* d x^2 = 2 x dx */
NB_BW(square)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_mul_scalar(n->in[0], 2.0));
}
nb_tensor *nb_square(nb_tensor *x) { return unary("nb_square", NB_OP_SQUARE, x, 0, 0); }

UNARY_FW(pows, NB_U_POWS)
/* d x^p = p x^(p-1) dx (0 for p = 0) */
NB_BW(pows)
{
    if (!NB_NEED(0)) return;
    double p = n->attrs.f[0];
    if (p == 0.0)
        gin[0] = nb_zeros_like(g);
    else if (p == 1.0)
        gin[0] = g;
    else if (p == 2.0)
        gin[0] = nb_mul(g, nb_mul_scalar(n->in[0], 2.0));
    else
        gin[0] = nb_mul(g, nb_mul_scalar(nb_pow_scalar(n->in[0], p - 1.0), p));
}
nb_tensor *nb_pow_scalar(nb_tensor *x, double p) { return unary("nb_pow_scalar", NB_OP_POWS, x, p, 0); }

/* ---- fused backward steps: ops of their own, with backward rules, so create-graph goes through -- */

NB_FW(tanh_bw) { (void)at; binary_kernel(NB_B_TANH_BW, out, in[0], in[1]); }
/* out = g (1 - y^2): d out = (1 - y^2) dg - 2 g y dy */
NB_BW(tanh_bw)
{
    nb_tensor *gr = n->in[0], *y = n->in[1];
    if (NB_NEED(0)) gin[0] = binary("tanh_backward", NB_OP_TANH_BW, g, y, 0);
    if (NB_NEED(1)) gin[1] = nb_mul(g, nb_mul(gr, nb_mul_scalar(y, -2.0)));
}

NB_FW(sigmoid_bw) { (void)at; binary_kernel(NB_B_SIGMOID_BW, out, in[0], in[1]); }
/* out = g y (1 - y): d out = y (1 - y) dg + g (1 - 2y) dy */
NB_BW(sigmoid_bw)
{
    nb_tensor *gr = n->in[0], *y = n->in[1];
    if (NB_NEED(0)) gin[0] = binary("sigmoid_backward", NB_OP_SIGMOID_BW, g, y, 0);
    if (NB_NEED(1)) gin[1] = nb_mul(g, nb_mul(gr, nb_affine(y, -2.0, 1.0)));
}

NB_FW(relu_bw) { (void)at; binary_kernel(NB_B_RELU_BW, out, in[0], in[1]); }
/* out = g [not x <= 0]: d out = [not x <= 0] dg (the step has zero derivative) */
NB_BW(relu_bw)
{
    if (NB_NEED(0)) gin[0] = binary("relu_backward", NB_OP_RELU_BW, g, n->in[1], 0);
}
