/* Instantiates cnn_kernels_impl.h (convolution, pooling, channel normalisation) for float and double,
 * and the type-independent tiling plan of a convolution. */
#include "cnn.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* OpenBLAS's own thread control (as in threads.c) */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
int openblas_get_parallel(void); /* 0 sequential, 1 pthreads, 2 OpenMP */

int nb__cnn_threads(int64_t work) { return nb__threads_for(work, NB_CNN_GRAIN); }

int nb__cnn_tid(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int nb__blas_single(void)
{
    /* OpenBLAS's products may round differently with its thread count (float32 weight gradients did here,
     * test_conv_hostile threads_family_bits): a kernel's products run on one thread wherever they run, on
     * ours inside our parallel regions (an OpenMP OpenBLAS is single-threaded there by itself) and on the
     * calling thread in the paths that run in order */
    static int kind = -1;
    if (kind < 0) kind = openblas_get_parallel();
#ifdef _OPENMP
    if (kind == 2) { /* follows the calling thread's OpenMP setting: this thread's, kept at 1 by
                        nb__blas_threads_sync before each product while the flag is set, and given
                        back by nb__blas_restore (the caller's own OpenMP regions keep their default) */
        nb__t_blas_one = 1;
        return -omp_get_max_threads();
    }
#endif
    if (kind != 1) return 0;
    int saved = openblas_get_num_threads();
    if (saved > 1) openblas_set_num_threads(1);
    return saved > 1 ? saved : 0;
}

void nb__blas_restore(int saved)
{
    nb__t_blas_one = 0; /* the next product's nb__blas_threads_sync gives OpenBLAS the knob's value again */
#ifdef _OPENMP
    if (saved < 0 && omp_get_max_threads() != -saved) omp_set_num_threads(-saved);
#endif
    if (saved > 1) openblas_set_num_threads(saved);
}

#define NB_T float
#define NB_SFX f32
#define NB_GEMM_K nb_k_gemm_f32
#define NB_FMA(a, b, c) fmaf(a, b, c)
#include "cnn_kernels_impl.h"
#undef NB_T
#undef NB_SFX
#undef NB_GEMM_K
#undef NB_FMA

#define NB_T double
#define NB_SFX f64
#define NB_GEMM_K nb_k_gemm_f64
#define NB_FMA(a, b, c) fma(a, b, c)
#include "cnn_kernels_impl.h"
#undef NB_T
#undef NB_SFX
#undef NB_GEMM_K
#undef NB_FMA

/* Below this many output positions per image a 1x1 convolution goes through the folded product (its
 * im2col is a plain copy) rather than one small product per image. */
#define NB_CONV_DIRECT_MIN_POSITIONS 64

/* Weight-gradient chunks of the wide grid: a fixed number, so that the sums' order is the same on any
 * number of threads. */
#define NB_CONV_CHUNKS 8

void nb__conv_plan(const nb_conv_geom *g, size_t esize, nb_conv_plan *p)
{
    const int64_t P = g->hv * g->wv, K = (g->cu / g->groups) * g->kh * g->kw, ov = g->cv / g->groups;
    const int64_t rows = K + ov > 0 ? K + ov : 1, total = g->n * P;
    memset(p, 0, sizeof *p);
    p->threads = 1;
    p->tiles = p->chunks = 1;
    p->direct = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0 &&
                g->hu == g->hv && g->wu == g->wv && P >= NB_CONV_DIRECT_MIN_POSITIONS;
    if (p->direct || total == 0) return;
    const int64_t budget = NB_CONV_WS_BYTES / (int64_t)esize;
    /* the work of the tiles: output positions times taps (and the input it reads) */
    const double fwork = (double)total * (double)(g->cv + K) + (double)g->n * g->cu * g->hu * g->wu;
    const int64_t work = fwork < 0x1p62 ? (int64_t)fwork : INT64_MAX / 2;
    if (g->sh == 1 && g->sw == 1) {
        /* the padded plane holds the input at (ph, pw) and every tap of every wide position */
        int64_t hp = g->hv + (g->kh - 1) * g->dh, wp = g->wv + (g->kw - 1) * g->dw;
        if (hp < g->ph + g->hu) hp = g->ph + g->hu;
        if (wp < g->pw + g->wu) wp = g->pw + g->wu;
        /* (in double: with a large padding or dilation the products may leave int64) */
        const double fplane = (double)hp * wp + (double)(g->kw - 1) * g->dw,
                     fper = g->cu * fplane + (double)rows * g->hv * wp;
        /* worth it while the wide grid wastes little (wp against wv) and one image fits four budgets */
        if ((double)wp * 4 <= (double)g->wv * 5 && fper <= 4.0 * budget) {
            const int64_t plane = (int64_t)fplane, per_image = (int64_t)fper;
            int64_t nb = per_image <= budget ? budget / per_image : 1;
            if (nb > g->n) nb = g->n;
            p->wide = 1;
            p->nb = nb;
            p->hp = hp;
            p->wp = wp;
            p->plane = plane;
            p->q = nb * g->hv * wp;
            p->ws_elems = nb * per_image;
            p->small = K <= NB_CONV_SMALL_K; /* its backward needs less: nb planes and an [ov, hv wp] block */
            p->tiles = (g->n + nb - 1) / nb;
            p->chunks = p->tiles < NB_CONV_CHUNKS ? p->tiles : NB_CONV_CHUNKS;
            p->threads = nb__cnn_threads(work);
            if (p->threads > p->chunks) p->threads = (int)p->chunks;
            return;
        }
    }
    /* columns per tile: the col block [K, q] and the output block [ov, q] within the budget, at least
     * 64 columns (or all of them) so that the product stays efficient for very deep kernels */
    int64_t q = budget / rows;
    if (q < 64) q = 64;
    if (q > total) q = total;
    p->q = q;
    p->ws_elems = rows * q;
    p->tiles = (total + q - 1) / q;
    p->threads = nb__cnn_threads(work); /* the forward's tiles; its backward runs in order */
    if (p->threads > p->tiles) p->threads = (int)p->tiles;
}

int64_t nb__conv_ws_total(const nb_conv_plan *p, const nb_conv_geom *g, int weight)
{
    int64_t n = p->threads * p->ws_elems;
    if (weight && p->wide) n += p->chunks * g->cv * (g->cu / g->groups) * g->kh * g->kw;
    return n;
}
