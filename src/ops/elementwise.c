/* Elementwise ops: broadcast binary arithmetic, comparisons, the scalar affine map and unary
 * functions. Each forward sits next to its backward rule; every backward is written with nabla ops. */
#include "ops.h"

/* ---- shared machinery ------------------------------------------------------------------------- */

bool nb__check_binary(const char *who, const nb_tensor *a, const nb_tensor *b, int *ndim, int64_t *shape)
{
    if (!a || !b) {
        nb__fail(NB_ERR_ARG, "%s: input %s is NULL", who, !a ? "a" : "b");
        return false;
    }
    if (a->dtype != b->dtype) {
        nb__fail(NB_ERR_DTYPE, "%s: %s %s and %s %s: dtypes differ (use nb_cast)", who,
                 nb_dtype_name(a->dtype), NB_SHP(a), nb_dtype_name(b->dtype), NB_SHP(b));
        return false;
    }
    if (!nb__check_float(who, a)) return false;
    if (!nb__broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, ndim, shape)) {
        nb__fail(NB_ERR_SHAPE, "%s: %s and %s: shapes do not broadcast", who, NB_SHP(a), NB_SHP(b));
        return false;
    }
    return true;
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
    nb__bcast_plan(&bc, out->ndim, out->shape, a, b);
    if (out->dtype == NB_F32)
        nb_k_binary_f32(op, &bc, a->data, b->data, out->data);
    else
        nb_k_binary_f64(op, &bc, a->data, b->data, out->data);
}

static nb_tensor *binary(const char *who, nb_op_id op, nb_tensor *a, nb_tensor *b, int kind)
{
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    if (!nb__check_binary(who, a, b, &ndim, shape)) return NULL;
    nb_tensor *in[2] = {a, b};
    nb_attrs at = {.i = {kind}};
    return nb__apply(who, op, 2, in, &at, a->dtype, ndim, shape);
}

static void unary_kernel(nb_unop op, nb_tensor *out, const nb_tensor *x, double p0, double p1)
{
    if (out->dtype == NB_F32)
        nb_k_unary_f32(op, x->numel, x->data, out->data, p0, p1);
    else
        nb_k_unary_f64(op, x->numel, x->data, out->data, p0, p1);
}

static nb_tensor *unary(const char *who, nb_op_id op, nb_tensor *x, double p0, double p1)
{
    if (!x) return nb__fail(NB_ERR_ARG, "%s: input is NULL", who);
    if (!nb__check_float(who, x)) return NULL;
    nb_attrs at = {.f = {p0, p1}};
    return nb__apply(who, op, 1, &x, &at, x->dtype, x->ndim, x->shape);
}

nb_tensor *nb__scalar(nb_dtype dtype, double v) { return nb_full(dtype, 0, NULL, v); }

nb_status nb__add_inplace(nb_tensor *y, const nb_tensor *x)
{
    if (y->dtype == NB_F32)
        nb_k_axpy_f32(y->numel, 1.0, x->data, y->data);
    else
        nb_k_axpy_f64(y->numel, 1.0, x->data, y->data);
    return NB_OK;
}

/* Reduce a gradient to input i's shape (undoing broadcasting). */
#define TO_IN(i, t) nb_sum_to((t), n->in[i]->ndim, n->in[i]->shape)

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
nb_tensor *nb_neg(nb_tensor *x) { return unary("nb_neg", NB_OP_AFFINE, x, -1.0, 0.0); }
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
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_affine(nb_mul(n->out, n->out), -1.0, 1.0));
}
nb_tensor *nb_tanh(nb_tensor *x) { return unary("nb_tanh", NB_OP_TANH, x, 0, 0); }

NB_FW(sigmoid) { (void)at; unary_kernel(NB_U_SIGMOID, out, in[0], 0, 0); }
/* d s(x) = s(x) (1 - s(x)) dx */
NB_BW(sigmoid)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_mul(n->out, nb_rsub_scalar(1.0, n->out)));
}
nb_tensor *nb_sigmoid(nb_tensor *x) { return unary("nb_sigmoid", NB_OP_SIGMOID, x, 0, 0); }

NB_FW(relu) { (void)at; unary_kernel(NB_U_RELU, out, in[0], 0, 0); }
/* d relu(x) = [x > 0] dx (0 at the kink, as in PyTorch) */
NB_BW(relu)
{
    if (NB_NEED(0)) gin[0] = nb_mul(g, nb_gt(n->in[0], nb__scalar(n->in[0]->dtype, 0.0)));
}
nb_tensor *nb_relu(nb_tensor *x) { return unary("nb_relu", NB_OP_RELU, x, 0, 0); }
