/* Instantiates kernels_impl.h for float and double, and the type-independent plans and copies. */
#include "kernels.h"
#include "fastmath.h"
#include "parallel.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define NB_T float
#define NB_ACC double
#define NB_SFX f32
#define NB_M(fn) fn##f
#define NB_GEMM cblas_sgemm
#define NB_EXP(v) nb_fast_expf(v)
#define NB_SIGMOID(v) nb_fast_sigmoidf(v)
#define NB_TANH(v) nb_fast_tanhf(v)
#include "kernels_impl.h"
#undef NB_T
#undef NB_ACC
#undef NB_SFX
#undef NB_M
#undef NB_GEMM
#undef NB_EXP
#undef NB_SIGMOID
#undef NB_TANH

#define NB_T double
#define NB_ACC double
#define NB_SFX f64
#define NB_M(fn) fn
#define NB_GEMM cblas_dgemm
#define NB_EXP(v) exp(v)
/* never exp of a large positive number: exp(-|v|) is in (0, 1] */
#define NB_SIGMOID(v) ((v) >= 0 ? 1.0 / (1.0 + exp(-(v))) : exp(v) / (1.0 + exp(v)))
#define NB_TANH(v) tanh(v)
#include "kernels_impl.h"
#undef NB_T
#undef NB_ACC
#undef NB_SFX
#undef NB_M
#undef NB_GEMM
#undef NB_EXP
#undef NB_SIGMOID
#undef NB_TANH

/* int64 (indices, labels, counts): the kernels that make sense for integers. Arithmetic and sums wrap
 * on overflow like two's complement (as PyTorch's int64 does): they are computed in uint64_t, where
 * wrapping is defined, so the accumulator is uint64_t rather than int64_t (the same bits). */
#define NB_T int64_t
#define NB_ACC uint64_t
#define NB_UT uint64_t
#define NB_SFX i64
#include "kernels_impl.h"
#undef NB_T
#undef NB_ACC
#undef NB_UT
#undef NB_SFX

/* Row-major element strides of t as seen from an output of `ndim` dims (right-aligned), 0 where t
 * is broadcast. */
void nb__bcast_strides(const nb_tensor *t, int ndim, const int64_t *shape, int64_t *st)
{
    int lead = ndim - t->ndim;
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        int td = d - lead;
        if (td < 0) {
            st[d] = 0;
            continue;
        }
        st[d] = (t->shape[td] == 1 && shape[d] != 1) ? 0 : s;
        s *= t->shape[td];
    }
}

void nb__bcast_plan(nb_bcast *bc, int ndim, const int64_t *shape, const nb_tensor *a, const nb_tensor *b)
{
    int64_t sa[NB_MAX_DIMS], sb[NB_MAX_DIMS];
    nb__bcast_strides(a, ndim, shape, sa);
    nb__bcast_strides(b, ndim, shape, sb);
    bc->numel = nb__numel(ndim, shape);
    /* coalesce: dim d merges into the next kept dim when both strides chain contiguously */
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue; /* extent-1 dims carry no iteration */
        if (n > 0 && bc->sa[n - 1] == sa[d] * shape[d] && bc->sb[n - 1] == sb[d] * shape[d]) {
            bc->shape[n - 1] *= shape[d];
            bc->sa[n - 1] = sa[d];
            bc->sb[n - 1] = sb[d];
            continue;
        }
        bc->shape[n] = shape[d];
        bc->sa[n] = sa[d];
        bc->sb[n] = sb[d];
        n++;
    }
    if (n == 0) {
        bc->shape[0] = 1;
        bc->sa[0] = bc->sb[0] = 0;
        n = 1;
    }
    bc->ndim = n;
}

void nb__reduce_plan(nb_reduce_plan *p, const nb_tensor *x, uint32_t mask)
{
    int64_t so[NB_MAX_DIMS];
    int64_t s = 1;
    for (int d = x->ndim - 1; d >= 0; d--) {
        if (mask & (1u << d)) {
            so[d] = 0;
        } else {
            so[d] = s;
            s *= x->shape[d];
        }
    }
    p->out_numel = s;
    p->numel = x->numel;
    int n = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (x->shape[d] == 1) continue;
        if (n > 0 && p->so[n - 1] == so[d] * x->shape[d]) {
            p->shape[n - 1] *= x->shape[d];
            p->so[n - 1] = so[d];
            continue;
        }
        p->shape[n] = x->shape[d];
        p->so[n] = so[d];
        n++;
    }
    if (n == 0) {
        p->shape[0] = 1;
        p->so[0] = 0;
        n = 1;
    }
    p->ndim = n;
}

/* rows [lo, hi) of shape (rows: the last dim) from src at sst to dst at dst_st */
#define STRIDED_COPY(T)                                                                                \
    do {                                                                                               \
        const T *s = src;                                                                              \
        T *o = dst;                                                                                    \
        const int last = ndim - 1;                                                                     \
        const int64_t inner = ndim ? shape[last] : 1;                                                  \
        const int64_t si = ndim ? sst[last] : 0, di = ndim ? dst_st[last] : 0;                         \
        NB_PARALLEL_PIECES(nb__threads_for(total, NB_GRAIN_MEM), inner ? total / inner : 0, lo, hi, {  \
            int64_t idx[NB_MAX_DIMS] = {0}, so = 0, doff = 0;                                          \
            for (int64_t d = last - 1, r = lo; d >= 0 && lo; d--) {                                    \
                idx[d] = r % shape[d];                                                                 \
                r /= shape[d];                                                                         \
                so += idx[d] * sst[d];                                                                 \
                doff += idx[d] * dst_st[d];                                                            \
            }                                                                                          \
            for (int64_t r = lo; r < hi; r++) {                                                        \
                if (si == 1 && di == 1)                                                                \
                    memcpy(o + doff, s + so, (size_t)inner * sizeof(T));                               \
                else                                                                                   \
                    for (int64_t k = 0; k < inner; k++) o[doff + k * di] = s[so + k * si];             \
                for (int d = last - 1; d >= 0; d--) {                                                  \
                    so += sst[d];                                                                      \
                    doff += dst_st[d];                                                                 \
                    if (++idx[d] < shape[d]) break;                                                    \
                    so -= sst[d] * shape[d];                                                           \
                    doff -= dst_st[d] * shape[d];                                                      \
                    idx[d] = 0;                                                                        \
                }                                                                                      \
            }                                                                                          \
        });                                                                                            \
    } while (0)

void nb__strided_copy2(size_t esize, int ndim, const int64_t *shape, const int64_t *src_st, const void *src,
                       const int64_t *dst_st, void *dst)
{
    int64_t total = nb__numel(ndim, shape), sst[NB_MAX_DIMS], cst[NB_MAX_DIMS];
    if (total == 0) return;
    /* a NULL side is contiguous in shape */
    if (!src_st || !dst_st) {
        int64_t st = 1;
        for (int d = ndim - 1; d >= 0; d--) {
            cst[d] = st;
            st *= shape[d];
        }
    }
    for (int d = 0; d < ndim; d++) sst[d] = src_st ? src_st[d] : cst[d];
    if (!dst_st) dst_st = cst;
    if (esize == 4)
        STRIDED_COPY(uint32_t);
    else
        STRIDED_COPY(uint64_t);
}

void nb__strided_copy(size_t esize, int ndim, const int64_t *shape, const int64_t *st, const void *src, void *dst)
{
    nb__strided_copy2(esize, ndim, shape, st, src, NULL, dst);
}
