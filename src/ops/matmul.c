/* Matrix product through BLAS gemm; transposes are passed to gemm as flags, never materialised. */
#include "ops.h"

/* out [m,n] = op(a) op(b); a stored [m,k] or [k,m] (NB_TRANS_A), b stored [k,n] or [n,k] (NB_TRANS_B) */
NB_FW(matmul)
{
    const nb_tensor *a = in[0], *b = in[1];
    int ta = (at->i[0] & NB_TRANS_A) != 0, tb = (at->i[0] & NB_TRANS_B) != 0;
    int64_t m = out->shape[0], n = out->shape[1], k = ta ? a->shape[0] : a->shape[1];
    if (out->dtype == NB_F32)
        nb_k_gemm_f32(ta, tb, m, n, k, a->data, a->shape[1], b->data, b->shape[1], out->data, 0.0);
    else
        nb_k_gemm_f64(ta, tb, m, n, k, a->data, a->shape[1], b->data, b->shape[1], out->data, 0.0);
}

/* C = op(A) op(B), G = dL/dC:
 *   dL/dop(A) = G op(B)^T,  dL/dop(B) = op(A)^T G;  transposing back where op is a transpose. */
NB_BW(matmul)
{
    nb_tensor *a = n->in[0], *b = n->in[1];
    unsigned ta = (n->attrs.i[0] & NB_TRANS_A) != 0, tb = (n->attrs.i[0] & NB_TRANS_B) != 0;
    if (NB_NEED(0)) {
        if (!ta) /* dA = G op(B)^T */
            gin[0] = nb_matmul_ex(g, b, tb ? 0u : NB_TRANS_B);
        else /* dA = (G op(B)^T)^T = op(B) G^T */
            gin[0] = nb_matmul_ex(b, g, (tb ? NB_TRANS_A : 0u) | NB_TRANS_B);
    }
    if (NB_NEED(1)) {
        if (!tb) /* dB = op(A)^T G */
            gin[1] = nb_matmul_ex(a, g, ta ? 0u : NB_TRANS_A);
        else /* dB = (op(A)^T G)^T = G^T op(A) */
            gin[1] = nb_matmul_ex(g, a, NB_TRANS_A | (ta ? NB_TRANS_B : 0u));
    }
}

nb_tensor *nb_matmul_ex(nb_tensor *a, nb_tensor *b, unsigned flags)
{
    const char *who = "nb_matmul";
    if (!a || !b) return nb__fail(NB_ERR_ARG, "%s: input %s is NULL", who, !a ? "a" : "b");
    if (flags & ~(unsigned)(NB_TRANS_A | NB_TRANS_B))
        return nb__fail(NB_ERR_ARG, "%s: unknown flags 0x%x", who, flags);
    if (a->dtype != b->dtype)
        return nb__fail(NB_ERR_DTYPE, "%s: %s %s and %s %s: dtypes differ (use nb_cast)", who,
                        nb_dtype_name(a->dtype), NB_SHP(a), nb_dtype_name(b->dtype), NB_SHP(b));
    if (!nb__check_float(who, a)) return NULL;
    if (a->ndim != 2 || b->ndim != 2)
        return nb__fail(NB_ERR_SHAPE, "%s: %s x %s: expected 2-D matrices", who, NB_SHP(a), NB_SHP(b));
    int ta = (flags & NB_TRANS_A) != 0, tb = (flags & NB_TRANS_B) != 0;
    int64_t m = ta ? a->shape[1] : a->shape[0], ka = ta ? a->shape[0] : a->shape[1];
    int64_t kb = tb ? b->shape[1] : b->shape[0], n = tb ? b->shape[0] : b->shape[1];
    if (ka != kb)
        return nb__fail(NB_ERR_SHAPE, "%s: %s%s x %s%s: inner dimensions %lld and %lld differ", who, NB_SHP(a),
                        ta ? "^T" : "", NB_SHP(b), tb ? "^T" : "", (long long)ka, (long long)kb);
    if (m > INT32_MAX || n > INT32_MAX || ka > INT32_MAX)
        return nb__fail(NB_ERR_SHAPE, "%s: %s x %s: dimensions exceed the BLAS integer range", who,
                        NB_SHP(a), NB_SHP(b));
    nb_tensor *in[2] = {a, b};
    nb_attrs at = {.i = {(int64_t)flags}};
    int64_t shape[2] = {m, n};
    return nb__apply(who, NB_OP_MATMUL, 2, in, &at, a->dtype, 2, shape);
}

nb_tensor *nb_matmul(nb_tensor *a, nb_tensor *b) { return nb_matmul_ex(a, b, 0); }
