/* Kernel bodies, compiled once per element type. Expects:
 *   NB_T   element type          NB_ACC  accumulator type (double for both)
 *   NB_SFX name suffix           NB_M(f) the math function of that type (expf or exp)
 *   NB_GEMM the cblas gemm of that type
 *   NB_SIGMOID(v), NB_TANH(v), NB_EXP(v)  those functions for the type (f32: fastmath.h; f64: libm)
 *   NB_UT  integer instantiations only (i64): the unsigned type of NB_T's width; see below
 * No include guard: kernels.c includes this file once per type. */

#define NB_CAT_(a, b) a##_##b
#define NB_CAT(a, b) NB_CAT_(a, b)
#define NB_K(name) NB_CAT(nb_k_##name, NB_SFX)

/* An integer instantiation defines NB_UT, the unsigned type of NB_T's width: add, sub and mul then
 * wrap on overflow (two's complement, as PyTorch's integers do), computed in NB_UT so that the wrap is
 * defined behaviour; the float-only kernels are left out, and nothing is NaN. */
#ifdef NB_UT
#define NB_WADD(x, y) ((NB_T)((NB_UT)(x) + (NB_UT)(y)))
#define NB_WSUB(x, y) ((NB_T)((NB_UT)(x) - (NB_UT)(y)))
#define NB_WMUL(x, y) ((NB_T)((NB_UT)(x) * (NB_UT)(y)))
#define NB_ISNAN(v) 0
#else
#define NB_WADD(x, y) ((x) + (y))
#define NB_WSUB(x, y) ((x) - (y))
#define NB_WMUL(x, y) ((x) * (y))
#define NB_ISNAN(v) ((v) != (v))
#endif

/* Run BODY for every output element of a broadcast plan: x and y are the a and b elements, o[k] the
 * output. The innermost dimension is specialised for the stride patterns (1,1), (1,0), (0,1). */
#define NB_BCAST_LOOP(BODY)                                                                            \
    do {                                                                                               \
        const int nd = bc->ndim;                                                                       \
        const int64_t inner = bc->shape[nd - 1], ia = bc->sa[nd - 1], ib = bc->sb[nd - 1];             \
        if (bc->numel == 0) break;                                                                     \
        const int64_t outer = bc->numel / inner;                                                       \
        int64_t idx[NB_MAX_DIMS] = {0}, offa = 0, offb = 0;                                            \
        NB_T *o = out;                                                                                 \
        for (int64_t r = 0; r < outer; r++) {                                                          \
            const NB_T *pa = a + offa, *pb = b + offb;                                                 \
            if (ia == 1 && ib == 1) {                                                                  \
                for (int64_t k = 0; k < inner; k++) { NB_T x = pa[k], y = pb[k]; BODY; }               \
            } else if (ia == 1 && ib == 0) {                                                           \
                const NB_T y = pb[0];                                                                  \
                for (int64_t k = 0; k < inner; k++) { NB_T x = pa[k]; BODY; }                          \
            } else if (ia == 0 && ib == 1) {                                                           \
                const NB_T x = pa[0];                                                                  \
                for (int64_t k = 0; k < inner; k++) { NB_T y = pb[k]; BODY; }                          \
            } else {                                                                                   \
                for (int64_t k = 0; k < inner; k++) { NB_T x = pa[k * ia], y = pb[k * ib]; BODY; }     \
            }                                                                                          \
            o += inner;                                                                                \
            for (int d = nd - 2; d >= 0; d--) {                                                        \
                offa += bc->sa[d];                                                                     \
                offb += bc->sb[d];                                                                     \
                if (++idx[d] < bc->shape[d]) break;                                                    \
                offa -= bc->sa[d] * bc->shape[d];                                                      \
                offb -= bc->sb[d] * bc->shape[d];                                                      \
                idx[d] = 0;                                                                            \
            }                                                                                          \
        }                                                                                              \
    } while (0)

void NB_K(binary)(nb_binop op, const nb_bcast *bc, const NB_T *a, const NB_T *b, NB_T *out)
{
    switch (op) {
    case NB_B_ADD: NB_BCAST_LOOP(o[k] = NB_WADD(x, y)); break;
    case NB_B_SUB: NB_BCAST_LOOP(o[k] = NB_WSUB(x, y)); break;
    case NB_B_MUL: NB_BCAST_LOOP(o[k] = NB_WMUL(x, y)); break;
    case NB_B_DIV: NB_BCAST_LOOP(o[k] = x / y); break;
    /* NaN propagates, as in torch.maximum */
    case NB_B_MAX: NB_BCAST_LOOP(o[k] = (NB_ISNAN(x) || x > y) ? x : y); break;
    case NB_B_MIN: NB_BCAST_LOOP(o[k] = (NB_ISNAN(x) || x < y) ? x : y); break;
#ifndef NB_UT
    case NB_B_POW: NB_BCAST_LOOP(o[k] = NB_M(pow)(x, y)); break;
#endif
    case NB_B_EQ: NB_BCAST_LOOP(o[k] = (NB_T)(x == y)); break;
    case NB_B_NE: NB_BCAST_LOOP(o[k] = (NB_T)(x != y)); break;
    case NB_B_LT: NB_BCAST_LOOP(o[k] = (NB_T)(x < y)); break;
    case NB_B_LE: NB_BCAST_LOOP(o[k] = (NB_T)(x <= y)); break;
    case NB_B_GT: NB_BCAST_LOOP(o[k] = (NB_T)(x > y)); break;
    case NB_B_GE: NB_BCAST_LOOP(o[k] = (NB_T)(x >= y)); break;
    case NB_B_TANH_BW: NB_BCAST_LOOP(o[k] = x * ((NB_T)1 - y * y)); break;
    case NB_B_SIGMOID_BW: NB_BCAST_LOOP(o[k] = x * y * ((NB_T)1 - y)); break;
    /* zero where x <= 0: a NaN x passes the gradient on (PyTorch's threshold_backward) */
    case NB_B_RELU_BW: NB_BCAST_LOOP(o[k] = y <= 0 ? (NB_T)0 : x); break;
    default: break;
    }
}

#ifndef NB_UT /* float-only */
#define NB_MAP(EXPR)                                                                                   \
    do {                                                                                               \
        for (int64_t i = 0; i < n; i++) {                                                              \
            const NB_T v = x[i];                                                                       \
            y[i] = (EXPR);                                                                             \
        }                                                                                              \
    } while (0)

void NB_K(unary)(nb_unop op, int64_t n, const NB_T *x, NB_T *y, double p0, double p1)
{
    const NB_T a = (NB_T)p0, b = (NB_T)p1;
    switch (op) {
    case NB_U_AFFINE: NB_MAP(a * v + b); break;
    case NB_U_EXP: NB_MAP(NB_M(exp)(v)); break;
    case NB_U_LOG: NB_MAP(NB_M(log)(v)); break;
    case NB_U_TANH: NB_MAP(NB_TANH(v)); break;
    /* never exp of a large positive number: exp(-|v|) is in (0, 1] */
    case NB_U_SIGMOID: NB_MAP(NB_SIGMOID(v)); break;
    /* NaN stays NaN (and -0 stays -0), as in PyTorch, so that anomaly mode sees it */
    case NB_U_RELU: NB_MAP(v < 0 ? (NB_T)0 : v); break;
    case NB_U_SQRT: NB_MAP(NB_M(sqrt)(v)); break;
    case NB_U_ABS: NB_MAP(NB_M(fabs)(v)); break;
    case NB_U_SIGN: NB_MAP((NB_T)((v > 0) - (v < 0))); break;
    case NB_U_SIN: NB_MAP(NB_M(sin)(v)); break;
    case NB_U_COS: NB_MAP(NB_M(cos)(v)); break;
    case NB_U_LEAKY_RELU: NB_MAP(v > 0 ? v : a * v); break;
    case NB_U_ELU: NB_MAP(v > 0 ? v : a * NB_M(expm1)(v)); break;
    /* log(1 + e^v) = max(v, 0) + log1p(e^-|v|) */
    case NB_U_SOFTPLUS: NB_MAP((v > 0 ? v : (NB_T)0) + NB_M(log1p)(NB_M(exp)(-NB_M(fabs)(v)))); break;
    case NB_U_GELU: NB_MAP((NB_T)0.5 * v * ((NB_T)1 + NB_M(erf)(v * (NB_T)0.70710678118654752440))); break;
    case NB_U_ERF: NB_MAP(NB_M(erf)(v)); break;
    case NB_U_CLAMP: NB_MAP(v < a ? a : (v > b ? b : v)); break;
    case NB_U_RECIPROCAL: NB_MAP((NB_T)1 / v); break;
    case NB_U_SQUARE: NB_MAP(v * v); break;
    case NB_U_POWS: NB_MAP(NB_M(pow)(v, a)); break;
    case NB_U_LOG1P: NB_MAP(NB_M(log1p)(v)); break;
    case NB_U_EXPM1: NB_MAP(NB_M(expm1)(v)); break;
    default: break;
    }
}

#endif /* float-only */

void NB_K(axpy)(int64_t n, double alpha, const NB_T *x, NB_T *y)
{
    const NB_T a = (NB_T)alpha;
    if (alpha == 1.0)
        for (int64_t i = 0; i < n; i++) y[i] += x[i];
    else
        for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void NB_K(sum)(const nb_reduce_plan *p, const NB_T *x, NB_T *out, NB_ACC *acc, double scale)
{
    for (int64_t j = 0; j < p->out_numel; j++) acc[j] = 0;
    if (p->numel > 0) {
        const int nd = p->ndim;
        const int64_t inner = p->shape[nd - 1], sinner = p->so[nd - 1];
        const int64_t outer = p->numel / inner;
        int64_t idx[NB_MAX_DIMS] = {0}, off = 0;
        const NB_T *px = x;
        for (int64_t r = 0; r < outer; r++) {
            if (sinner == 0) {
                NB_ACC s = 0;
                for (int64_t k = 0; k < inner; k++) s += (NB_ACC)px[k];
                acc[off] += s;
            } else {
                NB_ACC *pa = acc + off;
                for (int64_t k = 0; k < inner; k++) pa[k] += (NB_ACC)px[k];
            }
            px += inner;
            for (int d = nd - 2; d >= 0; d--) {
                off += p->so[d];
                if (++idx[d] < p->shape[d]) break;
                off -= p->so[d] * p->shape[d];
                idx[d] = 0;
            }
        }
    }
    for (int64_t j = 0; j < p->out_numel; j++) out[j] = (NB_T)(acc[j] * (NB_ACC)scale);
}

#ifndef NB_UT /* float-only */
void NB_K(gemm)(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const NB_T *a, int64_t lda,
                const NB_T *b, int64_t ldb, NB_T *c, double beta)
{
    if (m == 0 || n == 0) return;
    if (k == 0) {
        for (int64_t i = 0; i < m * n; i++) c[i] = beta == 0 ? (NB_T)0 : (NB_T)beta * c[i];
        return;
    }
    NB_GEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
            (blasint)m, (blasint)n, (blasint)k, (NB_T)1, a, (blasint)lda, b, (blasint)ldb, (NB_T)beta, c,
            (blasint)n);
}

#endif /* float-only */

void NB_K(where)(int ndim, const int64_t *shape, const int64_t *sc, const int64_t *sa, const int64_t *sb,
                 const NB_T *c, const NB_T *a, const NB_T *b, NB_T *out)
{
    int64_t total = nb__numel(ndim, shape);
    if (total == 0) return;
    int64_t idx[NB_MAX_DIMS] = {0}, oc = 0, oa = 0, ob = 0;
    const int last = ndim - 1;
    const int64_t inner = ndim ? shape[last] : 1;
    const int64_t ic = ndim ? sc[last] : 0, ia = ndim ? sa[last] : 0, ib = ndim ? sb[last] : 0;
    for (int64_t r = 0; r < total / inner; r++) {
        for (int64_t k = 0; k < inner; k++) out[k] = c[oc + k * ic] != 0 ? a[oa + k * ia] : b[ob + k * ib];
        out += inner;
        for (int d = last - 1; d >= 0; d--) {
            oc += sc[d];
            oa += sa[d];
            ob += sb[d];
            if (++idx[d] < shape[d]) break;
            oc -= sc[d] * shape[d];
            oa -= sa[d] * shape[d];
            ob -= sb[d] * shape[d];
            idx[d] = 0;
        }
    }
}

void NB_K(argmax)(int64_t outer, int64_t n, int64_t inner, const NB_T *x, int64_t *out, int is_min)
{
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            const NB_T *p = x + o * n * inner + i;
            int64_t best = 0;
            NB_T bv = p[0];
            for (int64_t k = 1; k < n && !NB_ISNAN(bv); k++) {
                NB_T v = p[k * inner];
                if (NB_ISNAN(v) || (is_min ? v < bv : v > bv)) {
                    bv = v;
                    best = k;
                }
            }
            out[o * inner + i] = best;
        }
    }
}

#ifndef NB_UT /* float-only */
void NB_K(softmax)(int64_t outer, int64_t n, int64_t inner, const NB_T *x, NB_T *y, int take_log)
{
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            const NB_T *p = x + o * n * inner + i;
            NB_T *q = y + o * n * inner + i;
            NB_T m = p[0];
            for (int64_t k = 1; k < n; k++)
                if (p[k * inner] > m) m = p[k * inner];
            if (!(m > -INFINITY && m < INFINITY)) m = (m == m) ? 0 : m; /* all -inf, or +inf: no shift */
            NB_ACC s = 0;
            for (int64_t k = 0; k < n; k++) s += (NB_ACC)NB_EXP(p[k * inner] - m);
            if (take_log) {
                NB_T ls = (NB_T)log(s);
                for (int64_t k = 0; k < n; k++) q[k * inner] = p[k * inner] - m - ls;
            } else {
                NB_ACC r = 1 / s;
                for (int64_t k = 0; k < n; k++) q[k * inner] = (NB_T)(NB_EXP(p[k * inner] - m) * r);
            }
        }
    }
}

#endif /* float-only */

void NB_K(add_strided)(int ndim, const int64_t *shape, const int64_t *dst_st, const NB_T *src, NB_T *dst)
{
    int64_t total = nb__numel(ndim, shape);
    if (total == 0) return;
    const int last = ndim - 1;
    const int64_t inner = ndim ? shape[last] : 1, di = ndim ? dst_st[last] : 0;
    int64_t idx[NB_MAX_DIMS] = {0}, off = 0;
    for (int64_t r = 0; r < total / inner; r++, src += inner) {
        NB_T *o = dst + off;
        if (di == 1)
            for (int64_t k = 0; k < inner; k++) o[k] += src[k];
        else
            for (int64_t k = 0; k < inner; k++) o[k * di] += src[k];
        for (int d = last - 1; d >= 0; d--) {
            off += dst_st[d];
            if (++idx[d] < shape[d]) break;
            off -= dst_st[d] * shape[d];
            idx[d] = 0;
        }
    }
}

#undef NB_MAP
#undef NB_BCAST_LOOP
#undef NB_WADD
#undef NB_WSUB
#undef NB_WMUL
#undef NB_ISNAN
#undef NB_K
#undef NB_CAT
#undef NB_CAT_
