/* Private interface of the convolution, pooling and channel-normalisation kernels (cnn_kernels.c,
 * bodies in cnn_kernels_impl.h compiled for float and double) and the geometry they share with the
 * op files conv.c, pool.c and norm.c. */
#ifndef NB_CNN_H
#define NB_CNN_H

#include "ops.h"
#include "parallel.h"

/* ---- convolution geometry --------------------------------------------------------------------- */

/* A 2-D convolution between an input space u [n, cu, hu, wu] and an output space v [n, cv, hv, wv]
 * through a kernel w [cv, cu / groups, kh, kw]:
 *
 *   v[b, o, y, x] = sum over c, i, j of  w[o, c, i, j] u[b, g cug + c, y sh - ph + i dh, x sw - pw + j dw]
 *
 * with g = o / (cv / groups), cug = cu / groups, and u zero outside its extents. conv maps u to v,
 * conv_transpose is its adjoint (v to u), and the weight gradient is the bilinear form's derivative in
 * w. The three are defined for any pair of extents (hu, hv), so each is exactly the adjoint of the
 * others whatever sizes the public functions chose (output_padding, 'same' padding). 1-D ops are the
 * case hu = hv = kh = 1. */
typedef struct nb_conv_geom {
    int64_t n, cu, hu, wu, cv, hv, wv, kh, kw;
    int64_t sh, sw, ph, pw, dh, dw, groups;
} nb_conv_geom;

/* How the kernels cover a convolution: the batch and the output positions are folded into the
 * columns of one matrix product per group (v_g [cv/G, n hv wv] = w_g [cv/G, K] col [K, n hv wv], with
 * K = cug kh kw), cut into tiles of q columns so that the workspace stays bounded. Three ways:
 *   direct: a 1x1 convolution with stride 1 and no padding needs no im2col: the images are multiplied
 *           in place;
 *   wide:   stride 1: the tile's images are copied once into zero-padded planes of width wp, and the
 *           products run over a wide grid of hv x wp positions per image (the wp - wv extra columns are
 *           computed and dropped), so that each im2col row is one contiguous copy per image and tap;
 *   plain:  any stride: im2col position by position. */
typedef struct nb_conv_plan {
    int direct, wide;
    int threads;      /* threads that run the tiles (1: in order on the calling thread) */
    int64_t tiles;    /* wide and plain: the number of tiles */
    int64_t chunks;   /* wide: groups of consecutive tiles, each summing its own weight gradient (the sums
                         are added in chunk order: the result does not depend on the thread count) */
    int small;        /* wide with K <= NB_CONV_SMALL_K (a first layer): the backward has no product,
                         each weight's gradient a sum of dot products with shifted rows of the padded
                         planes, read in place */
    int64_t q;        /* columns per tile */
    int64_t nb;       /* wide: images per tile */
    int64_t hp, wp;   /* wide: padded plane extents */
    int64_t plane;    /* wide: elements per padded plane (hp wp and slack for the last taps) */
    int64_t ws_elems; /* workspace elements per thread */
} nb_conv_plan;

#define NB_CONV_SMALL_K 32

/* Workspace budget per tile, in bytes: half the L2 cache of the machines measured (bench/README.md),
 * so that what im2col writes is still in cache when the product packs it. */
#define NB_CONV_WS_BYTES ((int64_t)1 << 20)

void nb__conv_plan(const nb_conv_geom *g, size_t esize, nb_conv_plan *p);
/* Elements of workspace a call needs: ws_elems per thread, and with weight (a weight gradient on the
 * wide grid) chunks partial sums of [cv, cu / groups, kh, kw]. */
int64_t nb__conv_ws_total(const nb_conv_plan *p, const nb_conv_geom *g, int weight);

/* ---- threads -----------------------------------------------------------------------------------
 * The CNN kernels split channels, planes or tiles over OpenMP threads (when built with OpenMP), as many
 * as the library's thread count (nb_set_num_threads, src/ops/parallel.h) and the work allow: each output is computed by one
 * thread in a fixed order, so results do not depend on the thread count. A convolution's matrix
 * products run single-threaded (nb__blas_single), in its parallel tiles and in the paths run in order. */
#define NB_CNN_GRAIN NB_GRAIN_MEM
/* Threads for a loop touching work elements (nb__threads_for): 1 below 2 grains or without OpenMP. */
/* "(a, b)" for 2-D, "a" for 1-D, for error messages (four rotating thread-local buffers) */
const char *nb__cnn_vals(int dims, const int64_t *v);
int nb__cnn_threads(int64_t work);
/* The planes of h w = d elements of `size` bytes that the fused batch norm + relu + pooling backward
 * keeps per thread (its workspace: nb__bnrp_slots(...) d elements for each thread): all a of a
 * channel when they fit in 1 MiB, else as many as fit (at least one). */
static inline int64_t nb__bnrp_slots(int64_t a, int64_t d, int64_t size)
{
    const int64_t fit = (int64_t)(1 << 20) / (d * size > 0 ? d * size : 1);
    return fit >= a ? (a > 0 ? a : 1) : fit > 1 ? fit : 1;
}
/* The calling thread's number inside a parallel loop (0 outside). */
int nb__cnn_tid(void);
/* OpenBLAS's products to one thread for a kernel call (the calling thread's OpenMP setting with an OpenMP
 * OpenBLAS, the global count with a pthreads one), so that they do not round differently with the thread
 * count; the previous setting is returned for nb__blas_restore (0: no change made; negative: the calling
 * thread's OpenMP setting, given back). */
int nb__blas_single(void);
void nb__blas_restore(int saved);
#ifdef _OPENMP
#define NB_CNN_OMP_FOR _Pragma("omp parallel for num_threads(nb_nt_) schedule(static)")
/* a loop of independent iterations to vectorise (no runtime call, no reassociation) */
#define NB_OMP_SIMD _Pragma("omp simd")
#else
#define NB_CNN_OMP_FOR
#define NB_OMP_SIMD
#endif
/* for (int64_t v = 0; v < n; v++) { body } on nb_nt_ threads (a local int), statically split; with one
 * thread the loop runs with no OpenMP call at all (libgomp mallocs a team even for a parallel region
 * whose if clause is false: memory that bypassed nb_set_allocator, and when that malloc fails libgomp
 * exits the process) */
#define NB_CNN_FOR(v, n, ...)                                                                          \
    do {                                                                                               \
        if (nb_nt_ > 1) {                                                                              \
            const int nb_in_team_ = 1; /* (unused by most bodies) */                                   \
            (void)nb_in_team_;                                                                         \
            NB_CNN_OMP_FOR                                                                             \
            for (int64_t v = 0; v < (n); v++) { __VA_ARGS__ }                                          \
        } else {                                                                                       \
            const int nb_in_team_ = 0;                                                                 \
            (void)nb_in_team_;                                                                         \
            for (int64_t v = 0; v < (n); v++) { __VA_ARGS__ }                                          \
        }                                                                                              \
    } while (0)
/* Inside an NB_CNN_FOR body: the running thread's slot of a per-thread workspace, 0 in the loop run in
 * order (where omp_get_thread_num() would be the caller's number in its own OpenMP team: a kernel
 * called from a user's parallel region ran past its workspace) */
#define NB_CNN_TID (nb_in_team_ ? nb__cnn_tid() : 0)

/* ---- pooling geometry ------------------------------------------------------------------------- */

/* Pooling over planes [planes, h, w] -> [planes, ho, wo]. Window of output (y, x): rows y sh - ph + i dh
 * (i < kh), columns likewise, clipped to the plane. Average pooling divides by the window's size counted
 * with the padding (count_include_pad; a window that ceil_mode lets run past the padded end is cut
 * there) or without it. adaptive: rows floor(y h / ho) to ceil((y + 1) h / ho), columns likewise,
 * divided by the window's size (kernel, stride, padding unused). */
typedef struct nb_pool_geom {
    int64_t planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw;
    int count_include_pad, adaptive;
} nb_pool_geom;

/* Geometry arithmetic of the public functions (conv.c, pool.c): every stride, padding, dilation,
 * output_padding and pooling kernel is at most NB_GEOM_MAX, and a kernel's span d (k - 1) + 1 is
 * computed with nb__geom_mad, so that the extents and window positions the checks and the kernels
 * derive from them (sums of a few such terms) cannot overflow int64. */
#define NB_GEOM_MAX ((int64_t)1 << 61)
/* *r = a b + c; false when that overflows or leaves [-NB_GEOM_MAX, NB_GEOM_MAX] */
static inline bool nb__geom_mad(int64_t a, int64_t b, int64_t c, int64_t *r)
{
    int64_t p;
    return !__builtin_mul_overflow(a, b, &p) && !__builtin_add_overflow(p, c, r) && *r <= NB_GEOM_MAX &&
           *r >= -NB_GEOM_MAX;
}

/* ceil(a / b) for b > 0 and any a */
static inline int64_t nb__cdiv(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

/* ---- kernels ---------------------------------------------------------------------------------- */

#define NB_CNN_DECLARE(T, SFX)                                                                         \
    /* v [n, cv, hv, wv] = conv(u [n, cu, hu, wu], w [cv, cu/G, kh, kw]) + bias [cv] (bias NULL: none);\
     * ws: p->ws_elems elements */                                                                     \
    void nb_k_conv_fw_##SFX(const nb_conv_geom *g, const nb_conv_plan *p, const T *u, const T *w,     \
                            const T *bias, T *v, T *ws);                                               \
    /* The backward products of conv for the gradient gv [n, cv, hv, wv] of v, each optional (NULL):  \
     * du [n, cu, hu, wu] += conv_transpose(gv, w) (overwritten instead when !du_acc), and             \
     * dw [cv, cu/G, kh, kw] += the weight gradient of u and gv (overwritten when !dw_acc). Shares the \
     * gathered gv between the two. u is needed only for dw, w only for du. */                         \
    void nb_k_conv_bw_##SFX(const nb_conv_geom *g, const nb_conv_plan *p, const T *u, const T *gv,     \
                            const T *w, T *du, int du_acc, T *dw, int dw_acc, T *ws);                  \
    /* out [n, c, d...] (+)= nothing but a per-channel sum: s[c] = sum over b and d of x[b, c, :],     \
     * accumulated in double; out[c] = s[c] (acc: out[c] += s[c]) */                                   \
    void nb_k_channel_sum_##SFX(int64_t n, int64_t c, int64_t d, const T *x, T *out, int acc);         \
    /* fill x [n, c, d] with bias[c] (bias NULL: zeros) */                                             \
    void nb_k_channel_fill_##SFX(int64_t n, int64_t c, int64_t d, const T *bias, T *x);               \
    /* max pooling: y [planes, ho, wo] = the first maximum of each window (NaN wins), idx (NULL: not    \
     * wanted) its flat position r w + c in the plane */                                                                \
    void nb_k_maxpool_fw_##SFX(const nb_pool_geom *g, const T *x, T *y, int64_t *idx);                \
    /* average pooling: y [planes, ho, wo] = window sums / divisors */                                 \
    void nb_k_avgpool_fw_##SFX(const nb_pool_geom *g, const T *x, T *y);                              \
    /* its adjoint: dx [planes, h, w] = each gy / divisor spread over its window (overwrites dx) */     \
    void nb_k_avgpool_adj_##SFX(const nb_pool_geom *g, const T *gy, T *dx);                           \
    /* x [a, c, d]: st [2, c] = the mean and the biased variance of each channel over a and d (two     \
     * passes, double accumulators) */                                                                 \
    void nb_k_moments_##SFX(int64_t a, int64_t c, int64_t d, const T *x, T *st);                      \
    /* y [a, c, d] = (x - mean) / sqrt(var + eps) * w + b per channel, st [2, c] holding mean and var; \
     * w, b [c] or NULL (1, 0); coef: 2c doubles of scratch */                                         \
    void nb_k_chnorm_fw_##SFX(int64_t a, int64_t c, int64_t d, const T *x, const T *st, const T *w,    \
                              const T *b, double eps, T *y, double *coef);                             \
    /* the per-channel sums of the norm's backward: sg[c] = sum g, sgx[c] = sum g (x - mean) */        \
    void nb_k_chnorm_sums_##SFX(int64_t a, int64_t c, int64_t d, const T *g, const T *x, const T *st,  \
                                double *sg, double *sgx);                                              \
    /* dx [a, c, d] (+)= g k[c] (acc: add, else overwrite) */                                          \
    void nb_k_chscale_##SFX(int64_t a, int64_t c, int64_t d, const T *g, const double *k, T *dx,       \
                            int acc);                                                                  \
    /* dx [a, c, d] (+)= (dst[0, c] + 2 dst[1, c] (x - mean[c])) / (a d): the gradient of the moments  \
     * for their gradient dst [2, c] */                                                                \
    void nb_k_moments_bw_##SFX(int64_t a, int64_t c, int64_t d, const T *x, const T *st, const T *dst, \
                               T *dx, int acc);                                                        \
    /* batch norm with the batch's statistics, channel by channel (each channel's values stay in      \
     * cache across its passes): st [2, c] = mean and biased variance, y = (x - mean) / sqrt(var + eps)\
     * w + b (w, b NULL: 1, 0) */                                                                      \
    void nb_k_bn_fw_##SFX(int64_t a, int64_t c, int64_t d, const T *x, const T *w, const T *b, double eps, \
                          T *y, T *st);                                                                \
    /* its backward for the gradient g of y: dx (+)= w r (g - mean g - xhat mean(g xhat)) with          \
     * r = (var + eps)^-1/2, xhat = (x - mean) r (dx NULL: none); sg[c] = sum g, sgx[c] = sum g xhat */ \
    void nb_k_bn_bw_##SFX(int64_t a, int64_t c, int64_t d, const T *g, const T *x, const T *st, const T *w, \
                          double eps, T *dx, int acc, double *sg, double *sgx);                        \
    /* dx [planes, h, w] (+)= gy scattered to each window's first maximum, found again in x (the      \
     * positions max pooling would record) */                                                          \
    void nb_k_maxpool_bw_##SFX(const nb_pool_geom *g, const T *x, const T *gy, T *dx, int acc);        \
    /* idx [planes, ho, wo] = the positions of the maxima alone */                                     \
    void nb_k_maxpool_idx_##SFX(const nb_pool_geom *g, const T *x, int64_t *idx);                      \
    /* y [a, c, h / kh, w / kw] = max pooling over kh x kw windows of stride kh x kw of relu(bn(x)),   \
     * x [a, c, h, w], bn as bn_fw (st [2, c] receives the statistics); one read of x for the output  \
     * after the two of the statistics, each channel's values in cache across the three */            \
    void nb_k_bnrp_fw_##SFX(int64_t a, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,         \
                            const T *x, const T *wt, const T *b, double eps, T *y, T *st);            \
    /* its backward for the gradient g [a, c, h / kh, w / kw] of y: gz = g at each window's maximum   \
     * where the norm's output is not <= 0, else 0; then dx (+)= bn_bw's dx for gz (dx NULL: none),   \
     * sg[c] = sum gz, sgx[c] = sum gz xhat; maxima and masks found again from x and st; on threads   \
     * threads (the caller's count, which sized work: nb__bnrp_slots(a, h w, sizeof(T)) h w elements  \
     * for each) */                                                                                   \
    void nb_k_bnrp_bw_##SFX(int64_t a, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,         \
                            const T *g, const T *x, const T *st, const T *wt, const T *b, double eps,  \
                            T *dx, int acc, double *sg, double *sgx, T *work, int threads);

NB_CNN_DECLARE(float, f32)
NB_CNN_DECLARE(double, f64)

#endif
