/* Instantiates cnn_kernels_impl.h (convolution, pooling, channel normalisation) for float and double,
 * and the type-independent tiling plan of a convolution. */
#include "cnn.h"

#include <math.h>
#include <string.h>

#define NB_T float
#define NB_SFX f32
#define NB_GEMM_K nb_k_gemm_f32
#include "cnn_kernels_impl.h"
#undef NB_T
#undef NB_SFX
#undef NB_GEMM_K

#define NB_T double
#define NB_SFX f64
#define NB_GEMM_K nb_k_gemm_f64
#include "cnn_kernels_impl.h"
#undef NB_T
#undef NB_SFX
#undef NB_GEMM_K

/* Below this many output positions per image a 1x1 convolution goes through the folded product (its
 * im2col is a plain copy) rather than one small product per image. */
#define NB_CONV_DIRECT_MIN_POSITIONS 64

void nb__conv_plan(const nb_conv_geom *g, size_t esize, nb_conv_plan *p)
{
    const int64_t P = g->hv * g->wv, K = (g->cu / g->groups) * g->kh * g->kw, ov = g->cv / g->groups;
    p->direct = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0 &&
                g->hu == g->hv && g->wu == g->wv && P >= NB_CONV_DIRECT_MIN_POSITIONS;
    if (p->direct) {
        p->q = 0;
        p->ws_elems = 0;
        return;
    }
    /* columns per tile: the col block [K, q] and the output block [ov, q] within the budget, at least
     * 64 columns (or all of them) so that the product stays efficient for very deep kernels */
    const int64_t total = g->n * P, rows = K + ov > 0 ? K + ov : 1;
    int64_t q = NB_CONV_WS_BYTES / ((int64_t)esize * rows);
    if (q < 64) q = 64;
    if (q > total) q = total;
    if (q < 1) q = 1;
    p->q = q;
    p->ws_elems = rows * q;
}
