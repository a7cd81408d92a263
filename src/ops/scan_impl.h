/* Scan and sort kernels, compiled once per element type by scan.c (as static functions). Expects:
 *   NB_T    element type
 *   NB_ACC  accumulator: double for f32 and f64; uint64_t for i64, where sums and products then wrap
 *           (two's complement, as PyTorch's int64) without undefined behaviour
 *   NB_SFX  name suffix            NB_ISNAN(v)  whether v is NaN (0 for integers)
 * Every kernel sees its tensors as [outer, n, inner] around the scanned (sorted) axis, contiguous.
 * No include guard: scan.c includes this file once per type. */

#define NB_CAT_(a, b) a##_##b
#define NB_CAT(a, b) NB_CAT_(a, b)
#define NB_K(name) NB_CAT(scan_k_##name, NB_SFX)

/* x, y [outer, n, inner]: y = running sum (product when prod) of x along n, from the end when
 * reverse; acc[inner] is scratch. Each step rounds the running total held in NB_ACC. */
static void NB_K(scan)(int64_t outer, int64_t n, int64_t inner, const NB_T *x, NB_T *y, NB_ACC *acc, int prod,
                       int reverse)
{
    for (int64_t o = 0; o < outer; o++) {
        const NB_T *xo = x + o * n * inner;
        NB_T *yo = y + o * n * inner;
        for (int64_t i = 0; i < inner; i++) acc[i] = prod ? (NB_ACC)1 : (NB_ACC)0;
        for (int64_t s = 0; s < n; s++) {
            int64_t k = reverse ? n - 1 - s : s;
            const NB_T *xr = xo + k * inner;
            NB_T *yr = yo + k * inner;
            if (prod)
                for (int64_t i = 0; i < inner; i++) yr[i] = (NB_T)(acc[i] *= (NB_ACC)xr[i]);
            else
                for (int64_t i = 0; i < inner; i++) yr[i] = (NB_T)(acc[i] += (NB_ACC)xr[i]);
        }
    }
}

#ifdef NB_SCAN_LINREC
/* a, b, h [outer, n, inner]: the linear recurrence h_k = a_k h_{k-1} + b_k along n (h_0 = b_0), or
 * from the end when reverse, h_k = a_{k+1} h_{k+1} + b_k (h_{n-1} = b_{n-1}): a_k links positions
 * k - 1 and k in both directions, and a_0 is never read. acc[inner] is scratch; each step rounds
 * a h + b in NB_ACC. */
static void NB_K(linrec)(int64_t outer, int64_t n, int64_t inner, const NB_T *a, const NB_T *b, NB_T *h,
                         NB_ACC *acc, int reverse)
{
    for (int64_t o = 0; o < outer; o++) {
        const NB_T *ao = a + o * n * inner, *bo = b + o * n * inner;
        NB_T *ho = h + o * n * inner;
        for (int64_t s = 0; s < n; s++) {
            int64_t k = reverse ? n - 1 - s : s;
            const NB_T *br = bo + k * inner;
            NB_T *hr = ho + k * inner;
            if (s == 0) {
                for (int64_t i = 0; i < inner; i++) hr[i] = (NB_T)(acc[i] = (NB_ACC)br[i]);
                continue;
            }
            const NB_T *ar = ao + (reverse ? k + 1 : k) * inner;
            for (int64_t i = 0; i < inner; i++) hr[i] = (NB_T)(acc[i] = (NB_ACC)ar[i] * acc[i] + (NB_ACC)br[i]);
        }
    }
}
#endif

/* Whether a comes strictly before b in ascending order, NaN above every number. */
#define NB_LESS(a, b) (!NB_ISNAN(a) && (NB_ISNAN(b) || (a) < (b)))

/* x [outer, n, inner]: idx [outer, n, inner] = the positions along n of the sorted elements (ascending,
 * or descending when desc); stable: equal elements keep their order in x, in both directions. A
 * bottom-up merge sort of positions; v[n] (values), a[n] and b[n] (positions) are scratch. */
static void NB_K(argsort)(int64_t outer, int64_t n, int64_t inner, const NB_T *x, int64_t *idx, NB_T *v,
                          int64_t *a, int64_t *b, int desc)
{
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            const NB_T *p = x + o * n * inner + i;
            for (int64_t k = 0; k < n; k++) {
                v[k] = p[k * inner];
                a[k] = k;
            }
            int64_t *src = a, *dst = b;
            for (int64_t w = 1; w < n; w *= 2) {
                for (int64_t lo = 0; lo < n; lo += 2 * w) {
                    int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
                    int64_t l = lo, r = mid, d = lo;
                    while (l < mid && r < hi) {
                        /* the right one goes first only when strictly before the left one */
                        NB_T vl = v[src[l]], vr = v[src[r]];
                        bool right = desc ? NB_LESS(vl, vr) : NB_LESS(vr, vl);
                        dst[d++] = right ? src[r++] : src[l++];
                    }
                    while (l < mid) dst[d++] = src[l++];
                    while (r < hi) dst[d++] = src[r++];
                }
                int64_t *t = src;
                src = dst;
                dst = t;
            }
            int64_t *q = idx + o * n * inner + i;
            for (int64_t k = 0; k < n; k++) q[k * inner] = src[k];
        }
    }
}

#undef NB_LESS
#undef NB_K
#undef NB_CAT
#undef NB_CAT_
