/* The backward_into fast paths (used when no graph is created) must give the same gradients as the
 * differentiable rules (used under NB_CREATE_GRAPH), in both dtypes, NaN where the rule has NaN, with
 * the gradient's shape; and views must share memory only where they may. slice, index_select and the
 * c term of addmm accumulate exactly as their rules do and must match bit for bit (up to the sign of
 * zero); matmul adds its product into the existing gradient inside gemm (beta 1), which may round
 * differently from the rule's separate add when gemm splits the inner dimension, so it gets a
 * tolerance of a few ulps. */
#include "nbtest.h"

typedef nb_tensor *(*fn)(nb_tensor *const *in);

static nb_tensor *f_slice(nb_tensor *const *in) /* every step of a sequence, as a recurrent layer reads it */
{
    nb_tensor *acc = NULL;
    for (int t = 0; t < 4; t++) {
        nb_tensor *s = nb_square(nb_slice(in[0], 0, t, t + 1, 1));
        acc = acc ? nb_add(acc, nb_mul_scalar(s, t + 1)) : s;
    }
    nb_tensor *strided = nb_square(nb_slice(in[0], 2, 1, 5, 2)); /* and a strided one */
    return nb_add(nb_sum_all(acc), nb_sum_all(nb_mul_scalar(strided, 0.5)));
}
static nb_tensor *f_index(nb_tensor *const *in)
{
    nb_tensor *idx = nb_constant(NB_I64, NB_SHAPE(5), (const int64_t[]){3, 0, 3, 1, 3});
    nb_tensor *idx2 = nb_constant(NB_I64, NB_SHAPE(7), (const int64_t[]){4, 4, 0, 2, 4, 1, 4});
    /* repeated rows of the first axis and of the last, twice into one gradient */
    nb_tensor *y = nb_sum_all(nb_square(nb_index_select(in[0], 0, idx)));
    nb_tensor *z = nb_sum_all(nb_mul(nb_index_select(in[0], 2, idx2), nb_index_select(in[0], 2, idx2)));
    return nb_add(y, nb_mul_scalar(z, 0.37));
}
static nb_tensor *f_matmul(nb_tensor *const *in) /* batched against one matrix, and transposed */
{
    nb_tensor *y = nb_matmul_ex(in[0], in[1], NB_TRANS_B);           /* [4,3,5] x [6,5]^T */
    nb_tensor *z = nb_matmul_ex(nb_sum(y, NB_AXES(0), 0), in[1], 0); /* [3,6] x [6,5] */
    return nb_sum_all(nb_tanh(z));
}
static nb_tensor *f_addmm(nb_tensor *const *in)
{
    nb_tensor *y = nb_addmm(in[2], in[0], in[1], NB_TRANS_B); /* bias [6] + [4,3,5] x [6,5]^T */
    nb_tensor *w = nb_reshape(nb_slice(in[1], 0, 0, 3, 1), NB_SHAPE(3, 5));
    nb_tensor *z = nb_addmm(nb_sum(y, NB_AXES(0, 2), 0), nb_sum(in[0], NB_AXES(0), 0), w, NB_TRANS_B);
    return nb_sum_all(nb_square(nb_add(nb_sum_all(y), z)));
}

static nb_tensor *f_lstm(nb_tensor *const *in) /* two steps; h' and c' both used, c' twice */
{
    nb_tensor *c0 = nb_reshape(nb_slice(in[0], 0, 0, 1, 1), NB_SHAPE(3, 5));
    nb_tensor *hc = nb_lstm_gates(nb_reshape(nb_tanh(in[0]), NB_SHAPE(3, 20)), c0);
    nb_tensor *h1 = nb_reshape(nb_slice(hc, 0, 0, 1, 1), NB_SHAPE(3, 5));
    nb_tensor *c1 = nb_reshape(nb_slice(hc, 0, 1, 2, 1), NB_SHAPE(3, 5));
    nb_tensor *hc2 = nb_lstm_gates(nb_reshape(in[0], NB_SHAPE(3, 20)), c1);
    return nb_add(nb_add(nb_sum_all(nb_square(hc2)), nb_sum_all(nb_mul(c1, c1))), nb_sum_all(nb_mul_scalar(h1, 3)));
}
static nb_tensor *f_gru(nb_tensor *const *in) /* x and h projections from the same input, h reused */
{
    nb_tensor *x = nb_reshape(in[0], NB_SHAPE(4, 15)), *h = nb_slice(x, 1, 0, 5, 1);
    nb_tensor *h1 = nb_gru_gates(x, nb_sin(x), h);
    return nb_sum_all(nb_square(nb_gru_gates(x, x, h1)));
}

/* a [1,5] x [6,5]^T product plus a c of shape [6]: c has fewer dims than the product (finding 6) */
static nb_tensor *f_addmm_row(nb_tensor *const *in)
{
    nb_tensor *x = nb_reshape(nb_slice(nb_slice(in[0], 0, 1, 2, 1), 1, 2, 3, 1), NB_SHAPE(1, 5));
    nb_tensor *y = nb_addmm(in[2], x, in[1], NB_TRANS_B);
    nb_tensor *c1 = nb_reshape(in[2], NB_SHAPE(1, 6)); /* and a c of the product's numel and dims */
    return nb_sum_all(nb_tanh(nb_add(y, nb_addmm(c1, x, in[1], NB_TRANS_B))));
}

/* NaN-aware equality: both NaN, or |a - b| <= tol * max(|a|, |b|) (tol 0: equal values). */
static int same_value(double a, double b, double tol)
{
    if (a != a || b != b) return a != a && b != b;
    return fabs(a - b) <= tol * fmax(fabs(a), fabs(b));
}

/* in: f64 leaves; each is converted to dtype, and element `nan_at` of input 0 is set to NaN when
 * nan_at >= 0 */
static void compare(const char *name, fn f, int n, nb_tensor **in64, nb_dtype dtype, double tol_in, int64_t nan_at)
{
    nb_tensor *in[3];
    for (int i = 0; i < n; i++) {
        nb_tape *tmp = nb_tape_new();
        nb_tape_begin(tmp);
        in[i] = nb_tensor_clone(nb_cast(in64[i], dtype));
        nb_tape_end(tmp);
        nb_tape_free(tmp);
        nb_tensor_set_requires_grad(in[i], 1);
    }
    if (nan_at >= 0) nb_tensor_set(in[0], nan_at, NAN);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *g1[3], *g2[3];
    nb_tensor *y = f(in);
    CHECK(nb_grad(y, NULL, n, in, g1, NB_RETAIN_GRAPH) == NB_OK, "%s: fast backward: %s", name, nb_error_message());
    CHECK(nb_grad(y, NULL, n, in, g2, NB_CREATE_GRAPH) == NB_OK, "%s: graph backward: %s", name, nb_error_message());
    for (int i = 0; i < n; i++) {
        double tol = i == 2 ? 0 : tol_in; /* addmm's c term (input 2) is summed exactly as the rule does */
        int ok_shape = nb_tensor_ndim(g1[i]) == nb_tensor_ndim(in[i]) && nb_tensor_dtype(g1[i]) == dtype;
        for (int d = 0; ok_shape && d < nb_tensor_ndim(in[i]); d++) ok_shape = nb_tensor_dim(g1[i], d) == nb_tensor_dim(in[i], d);
        CHECK(ok_shape, "%s %s: input %d: the fast gradient does not have the input's shape and dtype", name,
              nb_dtype_name(dtype), i);
        int64_t bad = -1, nans = 0;
        for (int64_t e = 0; e < nb_tensor_numel(in[i]) && bad < 0; e++) {
            double a = nb_tensor_get(g1[i], e), b = nb_tensor_get(g2[i], e);
            if (!same_value(a, b, tol)) bad = e;
            nans += b != b;
        }
        CHECK(bad < 0, "%s %s: input %d: fast and graph backward differ at %lld: %.17g vs %.17g", name,
              nb_dtype_name(dtype), i, (long long)bad, bad < 0 ? 0 : nb_tensor_get(g1[i], bad),
              bad < 0 ? 0 : nb_tensor_get(g2[i], bad));
        if (nan_at >= 0 && i == 0) CHECK(nans > 0, "%s: the NaN input gives NaN gradients", name);
        CHECK(nb_tensor_requires_grad(g2[i]), "%s: input %d: the graph backward is not differentiable", name, i);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < n; i++) nb_tensor_free(in[i]);
}

int main(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 11);
    nb_tensor *a = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 3, 5), -1, 1, &rng);
    nb_tensor *w = nb_tensor_uniform(NB_F64, NB_SHAPE(6, 5), -1, 1, &rng);
    nb_tensor *b = nb_tensor_uniform(NB_F64, NB_SHAPE(6), -1, 1, &rng);
    nb_tensor *in[3] = {a, w, b};
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    for (int dt = 0; dt < 2; dt++) {
        nb_dtype dtype = dt ? NB_F32 : NB_F64;
        double mm_tol = dt ? 4e-7 : 1e-15;
        for (int64_t nan_at = -1; nan_at <= 25; nan_at += 26) { /* element 25 is used by every function */
            compare("slice", f_slice, 1, in, dtype, 0, nan_at);
            compare("index_select", f_index, 1, in, dtype, 0, nan_at);
            compare("matmul", f_matmul, 2, in, dtype, mm_tol, nan_at);
            compare("addmm", f_addmm, 3, in, dtype, mm_tol, nan_at);
            compare("addmm c [6] + [1,5] x [5,6]", f_addmm_row, 3, in, dtype, mm_tol, nan_at);
            /* the fused recurrent steps: one kernel against the rule's ops, in another order */
            compare("lstm_gates", f_lstm, 1, in, dtype, dt ? 1e-5 : 1e-13, nan_at);
            compare("gru_gates", f_gru, 1, in, dtype, dt ? 1e-5 : 1e-13, nan_at);
        }
    }


    /* a time step of [T, B, F] is a view; a column slice or a strided one is a copy */
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    const double *base = nb_tensor_cdata(a);
    CHECK(nb_tensor_cdata(nb_slice(a, 0, 2, 3, 1)) == base + 2 * 15, "a leading-axis slice is not a view");
    CHECK(nb_tensor_cdata(nb_slice(a, 1, 1, 2, 1)) != base + 5, "an inner-axis slice shares memory");
    CHECK(nb_tensor_cdata(nb_slice(a, 0, 0, 4, 2)) != base, "a strided slice shares memory");
    /* a view of a leaf guards against in-place changes like the leaf itself */
    nb_tensor *y = nb_sum_all(nb_mul(nb_slice(a, 0, 1, 2, 1), nb_slice(a, 0, 1, 2, 1)));
    nb_tensor_fill(a, 0.5);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "modified in place");
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
    return nbt_report("fast_paths");
}
