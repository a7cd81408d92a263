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

/* Run BODY for output elements [lo, hi) of a broadcast plan: x and y are the a and b elements, o[k]
 * the output. The innermost dimension is specialised for the stride patterns (1,1), (1,0), (0,1). */
#define NB_BCAST_LOOP(BODY)                                                                            \
    do {                                                                                               \
        const int nd = bc->ndim;                                                                       \
        const int64_t inner = bc->shape[nd - 1], ia = bc->sa[nd - 1], ib = bc->sb[nd - 1];             \
        if (lo >= hi) break;                                                                           \
        int64_t idx[NB_MAX_DIMS] = {0}, offa = 0, offb = 0, k0 = 0, e = lo;                            \
        if (lo) { /* a piece that starts inside the range: the coordinates of element lo */           \
            int64_t r = lo / inner;                                                                    \
            k0 = lo - r * inner;                                                                       \
            for (int d = nd - 2; d >= 0; d--) {                                                        \
                idx[d] = r % bc->shape[d];                                                             \
                r /= bc->shape[d];                                                                     \
                offa += idx[d] * bc->sa[d];                                                            \
                offb += idx[d] * bc->sb[d];                                                            \
            }                                                                                          \
        }                                                                                              \
        NB_T *o = out + (lo - k0);                                                                     \
        while (e < hi) {                                                                               \
            const int64_t k1 = hi - e < inner - k0 ? k0 + (hi - e) : inner;                            \
            const NB_T *pa = a + offa, *pb = b + offb;                                                 \
            if (ia == 1 && ib == 1) {                                                                  \
                for (int64_t k = k0; k < k1; k++) { NB_T x = pa[k], y = pb[k]; BODY; }                 \
            } else if (ia == 1 && ib == 0) {                                                           \
                const NB_T y = pb[0];                                                                  \
                for (int64_t k = k0; k < k1; k++) { NB_T x = pa[k]; BODY; }                            \
            } else if (ia == 0 && ib == 1) {                                                           \
                const NB_T x = pa[0];                                                                  \
                for (int64_t k = k0; k < k1; k++) { NB_T y = pb[k]; BODY; }                            \
            } else {                                                                                   \
                for (int64_t k = k0; k < k1; k++) { NB_T x = pa[k * ia], y = pb[k * ib]; BODY; }       \
            }                                                                                          \
            e += k1 - k0;                                                                              \
            k0 = 0;                                                                                    \
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

/* out[lo..hi) of the broadcast binary op (inlined into both the serial and the threaded caller, so
 * that the serial path costs what a plain loop does) */
static inline __attribute__((always_inline)) void NB_K(binary_range)(nb_binop op, const nb_bcast *bc, const NB_T *a, const NB_T *b, NB_T *out,
                               int64_t lo, int64_t hi)
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

static __attribute__((noinline)) void NB_K(binary_par)(nb_binop op, const nb_bcast *bc, const NB_T *a,
                                                        const NB_T *b, NB_T *out, int64_t grain)
{
    NB_PARALLEL_FOR(bc->numel, grain, lo, hi, { NB_K(binary_range)(op, bc, a, b, out, lo, hi); });
}

void NB_K(binary)(nb_binop op, const nb_bcast *bc, const NB_T *a, const NB_T *b, NB_T *out)
{
    /* small tensors: straight to the loop (the per-op cost matters there) */
    const int64_t grain = op == NB_B_POW || op == NB_B_DIV ? NB_GRAIN_MATH : NB_GRAIN_MEM;
    if (nb__threads_for(bc->numel, grain) <= 1)
        NB_K(binary_range)(op, bc, a, b, out, 0, bc->numel);
    else
        NB_K(binary_par)(op, bc, a, b, out, grain);
}

#ifndef NB_UT /* float-only */
#define NB_MAP(EXPR)                                                                                   \
    do {                                                                                               \
        for (int64_t i = lo; i < hi; i++) {                                                              \
            const NB_T v = x[i];                                                                       \
            y[i] = (EXPR);                                                                             \
        }                                                                                              \
    } while (0)

/* y[lo..hi) = f(x[lo..hi)) (inlined into both callers, as binary_range) */
static inline __attribute__((always_inline)) void NB_K(unary_range)(nb_unop op, const NB_T *x, NB_T *y, double p0, double p1, int64_t lo, int64_t hi)
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

static __attribute__((noinline)) void NB_K(unary_par)(nb_unop op, int64_t n, const NB_T *x, NB_T *y, double p0,
                                                       double p1, int64_t grain)
{
    NB_PARALLEL_FOR(n, grain, lo, hi, { NB_K(unary_range)(op, x, y, p0, p1, lo, hi); });
}

void NB_K(unary)(nb_unop op, int64_t n, const NB_T *x, NB_T *y, double p0, double p1)
{
    if (n < 2 * NB_GRAIN_MATH) { /* small tensors: straight to the loop */
        NB_K(unary_range)(op, x, y, p0, p1, 0, n);
        return;
    }
    /* a cheap op per element: a memory-bound loop */
    int cheap = op == NB_U_AFFINE || op == NB_U_RELU || op == NB_U_ABS || op == NB_U_SIGN || op == NB_U_CLAMP ||
                op == NB_U_SQUARE || op == NB_U_LEAKY_RELU;
    NB_K(unary_par)(op, n, x, y, p0, p1, cheap ? NB_GRAIN_MEM : NB_GRAIN_MATH);
}

#else /* integers: the affine map with integer coefficients (nb_neg: -x), abs and sign; -x and |x| wrap
       * like two's complement (-INT64_MIN and |INT64_MIN| are INT64_MIN, as in PyTorch) */

void NB_K(unary)(nb_unop op, int64_t n, const NB_T *x, NB_T *y, double p0, double p1)
{
    const NB_T a = (NB_T)p0, b = (NB_T)p1;
    switch (op) {
    case NB_U_AFFINE:
        for (int64_t i = 0; i < n; i++) y[i] = NB_WADD(NB_WMUL(a, x[i]), b);
        break;
    case NB_U_ABS:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] < 0 ? NB_WSUB(0, x[i]) : x[i];
        break;
    case NB_U_SIGN:
        for (int64_t i = 0; i < n; i++) y[i] = (NB_T)((x[i] > 0) - (x[i] < 0));
        break;
    default: break; /* the other unary ops refuse integers (elementwise.c) */
    }
}

#endif /* float-only */

void NB_K(axpy)(int64_t n, double alpha, const NB_T *x, NB_T *y)
{
    const NB_T a = (NB_T)alpha;
    NB_PARALLEL_FOR(n, NB_GRAIN_MEM, lo, hi, {
        if (alpha == 1.0)
            for (int64_t i = lo; i < hi; i++) y[i] += x[i];
        else
            for (int64_t i = lo; i < hi; i++) y[i] += a * x[i];
    });
}

/* The sum of x[0..n) in 8 lanes (element i goes to lane i mod 8, so the loop vectorises), the lanes
 * added pairwise at the end: an order that depends on n only. */
static inline NB_ACC NB_K(sum_run)(const NB_T *x, int64_t n)
{
    NB_ACC l[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) l[j] += (NB_ACC)x[i + j];
    for (int j = 0; i < n; i++, j++) l[j] += (NB_ACC)x[i];
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* acc += the plan's sums over x, restricted to indices [lo, hi) of plan dim sd (a dim the output
 * keeps, so the pieces of different threads write different outputs, each summed in x's order). */
static void NB_K(sum_piece)(const nb_reduce_plan *p, int sd, int64_t lo, int64_t hi, const NB_T *x, NB_ACC *acc)
{
    const int nd = p->ndim;
    int64_t shape[NB_MAX_DIMS], xs[NB_MAX_DIMS], rows = 1, s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        xs[d] = s;
        s *= p->shape[d];
        shape[d] = p->shape[d];
    }
    shape[sd] = hi - lo;
    x += lo * xs[sd];
    acc += lo * p->so[sd];
    for (int d = 0; d < nd - 1; d++) rows *= shape[d];
    const int64_t inner = shape[nd - 1], sinner = p->so[nd - 1];
    int64_t idx[NB_MAX_DIMS] = {0}, off = 0, xo = 0;
    for (int64_t r = 0; r < rows; r++) {
        const NB_T *px = x + xo;
        if (sinner == 0) {
            acc[off] += NB_K(sum_run)(px, inner);
        } else {
            NB_ACC *pa = acc + off;
            for (int64_t k = 0; k < inner; k++) pa[k] += (NB_ACC)px[k];
        }
        for (int d = nd - 2; d >= 0; d--) {
            off += p->so[d];
            xo += xs[d];
            if (++idx[d] < shape[d]) break;
            off -= p->so[d] * shape[d];
            xo -= xs[d] * shape[d];
            idx[d] = 0;
        }
    }
}

void NB_K(sum)(const nb_reduce_plan *p, const NB_T *x, NB_T *out, NB_ACC *acc, double scale)
{
    const int64_t n = p->numel, no = p->out_numel;
    const int nt = nb__threads_for(n, NB_GRAIN_MEM);
    if (no == 1) {
        /* everything into one: fixed blocks (nb__block_len), partial sums added in block order */
        NB_ACC part[NB_MAX_BLOCKS], s = 0;
        const int64_t len = nb__block_len(n), nblk = (n + len - 1) / len;
        NB_PARALLEL_PIECES(nt, nblk, lo, hi, {
            for (int64_t k = lo; k < hi; k++)
                part[k] = NB_K(sum_run)(x + k * len, k + 1 < nblk ? len : n - k * len);
        });
        for (int64_t k = 0; k < nblk; k++) s += part[k];
        out[0] = (NB_T)(s * (NB_ACC)scale);
        return;
    }
    NB_PARALLEL_FOR(no, NB_GRAIN_MEM, lo, hi, { for (int64_t j = lo; j < hi; j++) acc[j] = 0; });
    if (n > 0) {
        /* split the longest dim that the output keeps */
        int sd = 0;
        for (int d = 1; d < p->ndim; d++)
            if (p->so[d] != 0 && (p->so[sd] == 0 || p->shape[d] > p->shape[sd])) sd = d;
        NB_PARALLEL_PIECES(nt, p->shape[sd], lo, hi, { NB_K(sum_piece)(p, sd, lo, hi, x, acc); });
    }
    NB_PARALLEL_FOR(no, NB_GRAIN_MEM, lo, hi, {
        for (int64_t j = lo; j < hi; j++) out[j] = (NB_T)(acc[j] * (NB_ACC)scale);
    });
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
    nb__blas_threads_sync();
    NB_GEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
            (blasint)m, (blasint)n, (blasint)k, (NB_T)1, a, (blasint)lda, b, (blasint)ldb, (NB_T)beta, c,
            (blasint)n);
}

#endif /* float-only */

/* The coordinates idx[0..ndim-1) of row r of shape (rows: the last dim), and the offsets they give
 * with up to three stride sets (NULL: not wanted). */
static inline void NB_K(row_start)(int ndim, const int64_t *shape, int64_t r, int64_t *idx, const int64_t *s0,
                                   int64_t *o0, const int64_t *s1, int64_t *o1, const int64_t *s2, int64_t *o2)
{
    for (int d = ndim - 2; d >= 0; d--) {
        idx[d] = r % shape[d];
        r /= shape[d];
        if (s0) *o0 += idx[d] * s0[d];
        if (s1) *o1 += idx[d] * s1[d];
        if (s2) *o2 += idx[d] * s2[d];
    }
}

void NB_K(where)(int ndim, const int64_t *shape, const int64_t *sc, const int64_t *sa, const int64_t *sb,
                 const NB_T *c, const NB_T *a, const NB_T *b, NB_T *out)
{
    int64_t total = nb__numel(ndim, shape);
    if (total == 0) return;
    const int last = ndim - 1;
    const int64_t inner = ndim ? shape[last] : 1;
    const int64_t ic = ndim ? sc[last] : 0, ia = ndim ? sa[last] : 0, ib = ndim ? sb[last] : 0;
    NB_PARALLEL_PIECES(nb__threads_for(total, NB_GRAIN_MEM), total / inner, lo, hi, {
        int64_t idx[NB_MAX_DIMS] = {0}, oc = 0, oa = 0, ob = 0;
        if (lo) NB_K(row_start)(ndim, shape, lo, idx, sc, &oc, sa, &oa, sb, &ob);
        NB_T *po = out + lo * inner;
        for (int64_t r = lo; r < hi; r++) {
            for (int64_t k = 0; k < inner; k++) po[k] = c[oc + k * ic] != 0 ? a[oa + k * ia] : b[ob + k * ib];
            po += inner;
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
    });
}

void NB_K(argmax)(int64_t outer, int64_t n, int64_t inner, const NB_T *x, int64_t *out, int is_min)
{
    /* outputs q = o * inner + i, each its own scan along n */
    NB_PARALLEL_PIECES(nb__threads_for(outer * n * inner, NB_GRAIN_MEM), outer * inner, lo, hi, {
        for (int64_t q = lo; q < hi; q++) {
            const int64_t o = q / inner, i = q - o * inner;
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
            out[q] = best;
        }
    });
}

#ifndef NB_UT /* float-only */
void NB_K(softmax)(int64_t outer, int64_t n, int64_t inner, const NB_T *x, NB_T *y, int take_log)
{
    /* rows q = o * inner + i along n, each on its own */
    NB_PARALLEL_PIECES(nb__threads_for(outer * n * inner, NB_GRAIN_MATH), outer * inner, lo, hi, {
        for (int64_t qi = lo; qi < hi; qi++) {
            const int64_t o = qi / inner, i = qi - o * inner;
            const NB_T *p = x + o * n * inner + i;
            NB_T *q = y + o * n * inner + i;
            NB_T m = p[0];
            for (int64_t k = 1; k < n; k++)
                if (p[k * inner] > m) m = p[k * inner];
            if (!(m > -INFINITY && m < INFINITY)) m = (m == m) ? 0 : m; /* all -inf, or +inf: no shift */
            NB_ACC s = 0;
            if (take_log) {
                for (int64_t k = 0; k < n; k++) s += (NB_ACC)NB_EXP(p[k * inner] - m);
                NB_T ls = (NB_T)log(s);
                for (int64_t k = 0; k < n; k++) q[k * inner] = p[k * inner] - m - ls;
            } else {
                /* the exponentials kept in y, then scaled */
                for (int64_t k = 0; k < n; k++) {
                    NB_T e = NB_EXP(p[k * inner] - m);
                    q[k * inner] = e;
                    s += (NB_ACC)e;
                }
                NB_ACC r = 1 / s;
                for (int64_t k = 0; k < n; k++) q[k * inner] = (NB_T)(q[k * inner] * r);
            }
        }
    });
}

#endif /* float-only */

void NB_K(add_strided)(int ndim, const int64_t *shape, const int64_t *dst_st, const NB_T *src, NB_T *dst)
{
    int64_t total = nb__numel(ndim, shape);
    if (total == 0) return;
    const int last = ndim - 1;
    const int64_t inner = ndim ? shape[last] : 1, di = ndim ? dst_st[last] : 0;
    NB_PARALLEL_PIECES(nb__threads_for(total, NB_GRAIN_MEM), total / inner, lo, hi, {
        int64_t idx[NB_MAX_DIMS] = {0}, off = 0;
        if (lo) NB_K(row_start)(ndim, shape, lo, idx, dst_st, &off, NULL, NULL, NULL, NULL);
        const NB_T *ps = src + lo * inner;
        for (int64_t r = lo; r < hi; r++, ps += inner) {
            NB_T *o = dst + off;
            if (di == 1)
                for (int64_t k = 0; k < inner; k++) o[k] += ps[k];
            else
                for (int64_t k = 0; k < inner; k++) o[k * di] += ps[k];
            for (int d = last - 1; d >= 0; d--) {
                off += dst_st[d];
                if (++idx[d] < shape[d]) break;
                off -= dst_st[d] * shape[d];
                idx[d] = 0;
            }
        }
    });
}

#ifndef NB_UT /* float-only: dropout and the recurrent cells */
void NB_K(dropout)(int64_t n, const NB_T *x, NB_T *out, uint64_t key, uint32_t thr, double keep)
{
    const NB_T kv = (NB_T)keep;
    /* pieces start at multiples of 16 and chunks are even: every chunk starts at an even element */
    NB_PARALLEL_FOR(n, NB_GRAIN_MATH, lo, hi, {
        uint32_t bits[NB_DROPOUT_CHUNK];
        for (int64_t c = lo; c < hi; c += NB_DROPOUT_CHUNK) {
            const int64_t m = hi - c < NB_DROPOUT_CHUNK ? hi - c : NB_DROPOUT_CHUNK;
            nb__dropout_bits(key, c, m, bits);
            NB_T *o = out + c;
            if (x) {
                const NB_T *px = x + c;
                for (int64_t i = 0; i < m; i++) o[i] = px[i] * (bits[i] >= thr ? kv : (NB_T)0);
            } else {
                for (int64_t i = 0; i < m; i++) o[i] = bits[i] >= thr ? kv : (NB_T)0;
            }
        }
    });
}

/* ---- fused recurrent cells (the same arithmetic, in the same order, as the ops they replace) ---- */

/* the work of one element of a cell (several exponentials): rows go parallel at a quarter of the
 * elementwise grain */
#define NB_CELL_GRAIN (NB_GRAIN_MATH / 4)

/* One row of each cell, written with restrict pointers (distinct buffers) so that the loops
 * vectorise. */
static void NB_K(lstm_row)(int64_t H, const NB_T *restrict pi, const NB_T *restrict pc, NB_T *restrict h2,
                           NB_T *restrict c2)
{
    const NB_T *restrict pf = pi + H, *restrict pg = pf + H, *restrict po = pg + H;
    for (int64_t j = 0; j < H; j++) {
        const NB_T i = NB_SIGMOID(pi[j]), f = NB_SIGMOID(pf[j]), g = NB_TANH(pg[j]), o = NB_SIGMOID(po[j]);
        const NB_T cn = f * pc[j] + i * g;
        c2[j] = cn;
        h2[j] = o * NB_TANH(cn);
    }
}

void NB_K(lstm_cell)(int64_t R, int64_t H, const NB_T *gates, const NB_T *c, NB_T *out)
{
    NB_PARALLEL_PIECES(nb__threads_for(R * H, NB_CELL_GRAIN), R, lo, hi, {
        for (int64_t r = lo; r < hi; r++)
            NB_K(lstm_row)(H, gates + r * 4 * H, c + r * H, out + r * H, out + (R + r) * H);
    });
}

/* dst[0..m) = src or += src */
static inline void NB_K(put)(NB_T *restrict dst, const NB_T *restrict src, int64_t m, int acc)
{
    if (acc)
        for (int64_t k = 0; k < m; k++) dst[k] += src[k];
    else
        for (int64_t k = 0; k < m; k++) dst[k] = src[k];
}

#define NB_CELL_BLOCK 128

/* c' = f c + i g, h' = o tanh(c'): dc' = gc + gh o (1 - tanh(c')^2); do = gh tanh(c'); di = dc' g;
 * dg = dc' i; df = dc' c; dc = dc' f; then through sigmoid (y (1 - y)) and tanh (1 - y^2).
 * One row, in blocks: the derivatives go to stack buffers first (a loop without branches, which
 * vectorises), then into d [4H] and dcp [H] (NULL: not wanted; added into when acc). */
static void NB_K(lstm_row_bw)(int64_t H, const NB_T *restrict pi, const NB_T *restrict pc, const NB_T *restrict cn,
                              const NB_T *restrict gh, const NB_T *restrict gc, NB_T *d, int acc, NB_T *dcp, int acc_c)
{
    const NB_T one = 1, *restrict pf = pi + H, *restrict pg = pf + H, *restrict po = pg + H;
    NB_T bi[NB_CELL_BLOCK], bf[NB_CELL_BLOCK], bg[NB_CELL_BLOCK], bo[NB_CELL_BLOCK], bc[NB_CELL_BLOCK];
    for (int64_t j0 = 0; j0 < H; j0 += NB_CELL_BLOCK) {
        const int64_t m = H - j0 < NB_CELL_BLOCK ? H - j0 : NB_CELL_BLOCK;
        for (int64_t k = 0; k < m; k++) {
            const int64_t j = j0 + k;
            const NB_T i = NB_SIGMOID(pi[j]), f = NB_SIGMOID(pf[j]), g = NB_TANH(pg[j]), o = NB_SIGMOID(po[j]);
            const NB_T th = NB_TANH(cn[j]);
            const NB_T dc2 = gc[j] + gh[j] * o * (one - th * th);
            bi[k] = dc2 * g * (i * (one - i));
            bf[k] = dc2 * pc[j] * (f * (one - f));
            bg[k] = dc2 * i * (one - g * g);
            bo[k] = gh[j] * th * (o * (one - o));
            bc[k] = dc2 * f;
        }
        if (d) {
            NB_K(put)(d + j0, bi, m, acc);
            NB_K(put)(d + H + j0, bf, m, acc);
            NB_K(put)(d + 2 * H + j0, bg, m, acc);
            NB_K(put)(d + 3 * H + j0, bo, m, acc);
        }
        if (dcp) NB_K(put)(dcp + j0, bc, m, acc_c);
    }
}

void NB_K(lstm_cell_bw)(int64_t R, int64_t H, const NB_T *gates, const NB_T *c, const NB_T *out, const NB_T *gout,
                        NB_T *dgates, int acc_g, NB_T *dc, int acc_c)
{
    NB_PARALLEL_PIECES(nb__threads_for(R * H, NB_CELL_GRAIN), R, lo, hi, {
        for (int64_t r = lo; r < hi; r++)
            NB_K(lstm_row_bw)(H, gates + r * 4 * H, c + r * H, out + (R + r) * H, gout + r * H, gout + (R + r) * H,
                              dgates ? dgates + r * 4 * H : NULL, acc_g, dc ? dc + r * H : NULL, acc_c);
    });
}

static void NB_K(gru_row)(int64_t H, const NB_T *restrict xr, const NB_T *restrict hr, const NB_T *restrict ph,
                          NB_T *restrict o)
{
    const NB_T *restrict xz = xr + H, *restrict xn = xz + H, *restrict hz = hr + H, *restrict hn = hz + H;
    for (int64_t j = 0; j < H; j++) {
        const NB_T rg = NB_SIGMOID(xr[j] + hr[j]), z = NB_SIGMOID(xz[j] + hz[j]);
        const NB_T n = NB_TANH(xn[j] + rg * hn[j]);
        o[j] = n + z * (ph[j] - n);
    }
}

void NB_K(gru_cell)(int64_t R, int64_t H, const NB_T *xg, const NB_T *hg, const NB_T *h, NB_T *out)
{
    NB_PARALLEL_PIECES(nb__threads_for(R * H, NB_CELL_GRAIN), R, lo, hi, {
        for (int64_t r = lo; r < hi; r++) NB_K(gru_row)(H, xg + r * 3 * H, hg + r * 3 * H, h + r * H, out + r * H);
    });
}

/* h' = n + z (h - n): dn = g (1 - z), dz = g (h - n), dh = g z; n = tanh(xn + r hn): dn' = dn (1 - n^2),
 * dxn = dn', dhn = dn' r, dr = dn' hn; r, z = sigmoid(x. + h.): dr' = dr r (1 - r), dz' = dz z (1 - z).
 * One row in blocks, as lstm_row_bw: dx, dhh [3H] and dhp [H] (NULL: not wanted; added into when acc_*). */
static void NB_K(gru_row_bw)(int64_t H, const NB_T *restrict xr, const NB_T *restrict hr, const NB_T *restrict ph,
                             const NB_T *restrict g, NB_T *dx, int acc_x, NB_T *dhh, int acc_hg, NB_T *dhp, int acc_h)
{
    const NB_T one = 1, *restrict xz = xr + H, *restrict xn = xz + H, *restrict hz = hr + H, *restrict hn = hz + H;
    NB_T br[NB_CELL_BLOCK], bz[NB_CELL_BLOCK], bn[NB_CELL_BLOCK], bnr[NB_CELL_BLOCK], bh[NB_CELL_BLOCK];
    for (int64_t j0 = 0; j0 < H; j0 += NB_CELL_BLOCK) {
        const int64_t m = H - j0 < NB_CELL_BLOCK ? H - j0 : NB_CELL_BLOCK;
        for (int64_t k = 0; k < m; k++) {
            const int64_t j = j0 + k;
            const NB_T rg = NB_SIGMOID(xr[j] + hr[j]), z = NB_SIGMOID(xz[j] + hz[j]);
            const NB_T n = NB_TANH(xn[j] + rg * hn[j]);
            const NB_T dn = g[j] * (one - z) * (one - n * n);
            br[k] = dn * hn[j] * (rg * (one - rg));
            bz[k] = g[j] * (ph[j] - n) * (z * (one - z));
            bn[k] = dn;
            bnr[k] = dn * rg;
            bh[k] = g[j] * z;
        }
        if (dx) {
            NB_K(put)(dx + j0, br, m, acc_x);
            NB_K(put)(dx + H + j0, bz, m, acc_x);
            NB_K(put)(dx + 2 * H + j0, bn, m, acc_x);
        }
        if (dhh) {
            NB_K(put)(dhh + j0, br, m, acc_hg);
            NB_K(put)(dhh + H + j0, bz, m, acc_hg);
            NB_K(put)(dhh + 2 * H + j0, bnr, m, acc_hg);
        }
        if (dhp) NB_K(put)(dhp + j0, bh, m, acc_h);
    }
}

void NB_K(gru_cell_bw)(int64_t R, int64_t H, const NB_T *xg, const NB_T *hg, const NB_T *h, const NB_T *gout,
                       NB_T *dxg, int acc_x, NB_T *dhg, int acc_hg, NB_T *dh, int acc_h)
{
    NB_PARALLEL_PIECES(nb__threads_for(R * H, NB_CELL_GRAIN), R, lo, hi, {
        for (int64_t r = lo; r < hi; r++)
            NB_K(gru_row_bw)(H, xg + r * 3 * H, hg + r * 3 * H, h + r * H, gout + r * H, dxg ? dxg + r * 3 * H : NULL,
                             acc_x, dhg ? dhg + r * 3 * H : NULL, acc_hg, dh ? dh + r * H : NULL, acc_h);
    });
}

#undef NB_CELL_GRAIN
#undef NB_CELL_BLOCK

#endif /* float-only */

#undef NB_MAP
#undef NB_BCAST_LOOP
#undef NB_WADD
#undef NB_WSUB
#undef NB_WMUL
#undef NB_ISNAN
#undef NB_K
#undef NB_CAT
#undef NB_CAT_
