/* Private kernel interface. Each kernel is written once in kernels_impl.h and compiled for float and
 * double (kernels.c includes it twice), giving plain names such as nb_k_binary_f32 / nb_k_binary_f64. */
#ifndef NB_KERNELS_H
#define NB_KERNELS_H

#include "../autograd/internal.h"

typedef enum nb_binop {
    NB_B_ADD, NB_B_SUB, NB_B_MUL, NB_B_DIV, NB_B_MAX, NB_B_MIN, NB_B_POW,
    NB_B_EQ, NB_B_NE, NB_B_LT, NB_B_LE, NB_B_GT, NB_B_GE,
    /* fused backward steps, x = the incoming gradient: x (1 - y^2), x y (1 - y), y > 0 ? x : 0 */
    NB_B_TANH_BW, NB_B_SIGMOID_BW, NB_B_RELU_BW,
    NB_BINOP_COUNT
} nb_binop;

typedef enum nb_unop {
    NB_U_AFFINE,  /* p0 * x + p1 */
    NB_U_EXP, NB_U_LOG, NB_U_TANH, NB_U_SIGMOID, NB_U_RELU,
    NB_U_SQRT, NB_U_ABS, NB_U_SIGN, NB_U_SIN, NB_U_COS,
    NB_U_LEAKY_RELU, /* slope p0 */
    NB_U_ELU,        /* alpha p0 */
    NB_U_SOFTPLUS, NB_U_GELU, NB_U_ERF,
    NB_U_CLAMP,      /* [p0, p1] */
    NB_U_RECIPROCAL, NB_U_SQUARE,
    NB_U_POWS,       /* x ^ p0 */
    NB_U_LOG1P, NB_U_EXPM1,
    NB_UNOP_COUNT
} nb_unop;

/* Iteration plan of a broadcast binary op over the output shape, adjacent dimensions coalesced. */
typedef struct nb_bcast {
    int ndim;                   /* >= 1 */
    int64_t numel;
    int64_t shape[NB_MAX_DIMS];
    int64_t sa[NB_MAX_DIMS];    /* element strides of a and b; 0 on broadcast dims */
    int64_t sb[NB_MAX_DIMS];
} nb_bcast;

/* Plan out[...] = a[...] op b[...] where out has shape (ndim, shape) and a, b broadcast to it. */
void nb__bcast_plan(nb_bcast *bc, int ndim, const int64_t *shape, const nb_tensor *a, const nb_tensor *b);

/* Plan of a sum over axes: x is iterated in memory order; `so` maps each x dim to the output (0 on
 * reduced dims). Adjacent dims of the same kind are coalesced. */
typedef struct nb_reduce_plan {
    int ndim;                   /* >= 1 */
    int64_t numel;              /* of x */
    int64_t out_numel;
    int64_t shape[NB_MAX_DIMS]; /* x extents */
    int64_t so[NB_MAX_DIMS];    /* output element strides per x dim */
} nb_reduce_plan;

void nb__reduce_plan(nb_reduce_plan *p, const nb_tensor *x, uint32_t axes_mask);

#define NB_K_DECLARE(T, ACC, SFX)                                                                      \
    /* out[bc.numel] = a op b over the broadcast plan bc */                                            \
    void nb_k_binary_##SFX(nb_binop op, const nb_bcast *bc, const T *a, const T *b, T *out);           \
    /* y[n] = f(x[n]; p0, p1) */                                                                        \
    void nb_k_unary_##SFX(nb_unop op, int64_t n, const T *x, T *y, double p0, double p1);              \
    /* y[n] += alpha * x[n] */                                                                          \
    void nb_k_axpy_##SFX(int64_t n, double alpha, const T *x, T *y);                                   \
    /* out[p.out_numel] = scale * sum of x over the plan's reduced dims; acc[p.out_numel] is scratch   \
     * (may alias out when ACC is T) */                                                                 \
    void nb_k_sum_##SFX(const nb_reduce_plan *p, const T *x, T *out, ACC *acc, double scale);          \
    /* c[m,n] = op(a) op(b), op(a) [m,k], op(b) [k,n], row-major; lda/ldb are the stored row lengths */ \
    void nb_k_gemm_##SFX(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const T *a,        \
                         int64_t lda, const T *b, int64_t ldb, T *c, double beta);                     \
    /* out[shape] = c != 0 ? a : b, with per-input element strides (0 where broadcast) */              \
    void nb_k_where_##SFX(int ndim, const int64_t *shape, const int64_t *sc, const int64_t *sa,        \
                          const int64_t *sb, const T *c, const T *a, const T *b, T *out);              \
    /* x viewed as [outer, n, inner]: out[outer, inner] = index of the first max (min) along n;        \
     * NaN counts as the maximum (and the minimum), as in PyTorch */                                  \
    void nb_k_argmax_##SFX(int64_t outer, int64_t n, int64_t inner, const T *x, int64_t *out,         \
                           int is_min);                                                                \
    /* x, y [outer, n, inner]: y = softmax of x along n (log-softmax when take_log), max-shifted */    \
    void nb_k_softmax_##SFX(int64_t outer, int64_t n, int64_t inner, const T *x, T *y, int take_log); \
    /* dst[sum_d i_d dst_st[d]] += src[i] for every index i of shape; src contiguous [shape] */         \
    void nb_k_add_strided_##SFX(int ndim, const int64_t *shape, const int64_t *dst_st, const T *src, T *dst); \
    /* out[n] = x[n] * mask[n] (x NULL: out = mask), mask[i] = keep if nb__dropout_bits of element i of   \
     * stream key >= thr, else 0 */                                                                     \
    void nb_k_dropout_##SFX(int64_t n, const T *x, T *out, uint64_t key, uint32_t thr, double keep);     \
    /* LSTM cell on R rows: gates [R, 4H] (pre-activations of the input, forget, cell, output gates),   \
     * c [R, H] -> out [2, R, H]: out[0] = h' = o tanh(c'), out[1] = c' = f c + i g */                  \
    void nb_k_lstm_cell_##SFX(int64_t R, int64_t H, const T *gates, const T *c, T *out);               \
    /* its backward from gout [2, R, H]: dgates [R, 4H] and dc [R, H] (NULL: not wanted; acc: add into \
     * them, else overwrite) */                                                                        \
    void nb_k_lstm_cell_bw_##SFX(int64_t R, int64_t H, const T *gates, const T *c, const T *out,       \
                                 const T *gout, T *dgates, int acc_g, T *dc, int acc_c);               \
    /* GRU cell on R rows: xg, hg [R, 3H] (reset, update, new parts of x W_ih^T + b_ih and             \
     * h W_hh^T + b_hh), h [R, H] -> out [R, H] = n + z (h - n), r = sigmoid(xr + hr),                 \
     * z = sigmoid(xz + hz), n = tanh(xn + r hn) */                                                     \
    void nb_k_gru_cell_##SFX(int64_t R, int64_t H, const T *xg, const T *hg, const T *h, T *out);      \
    /* its backward from gout [R, H]: dxg, dhg [R, 3H], dh [R, H] (NULL: not wanted; acc: add) */      \
    void nb_k_gru_cell_bw_##SFX(int64_t R, int64_t H, const T *xg, const T *hg, const T *h,            \
                                const T *gout, T *dxg, int acc_x, T *dhg, int acc_hg, T *dh, int acc_h);

NB_K_DECLARE(float, double, f32)
NB_K_DECLARE(double, double, f64)
/* int64: only binary (not div, pow or the fused backward steps), unary (affine, abs and sign), axpy,
 * sum, where, argmax and add_strided are defined (kernels.c); a call of another fails to link.
 * Overflow wraps. */
NB_K_DECLARE(int64_t, uint64_t, i64)

/* Dropout's random bits, a pure function of (key, element index), so that a mask does not depend on
 * how many threads make it: element i gets half i % 2 (low, then high 32 bits) of splitmix64's output
 * number i / 2 + 1 from seed key (z = key + (i / 2 + 1) * golden gamma, then the splitmix64 finaliser).
 * Fills bits[0..m) for elements c..c+m-1; c even; bits has room for m rounded up to even. */
#define NB_DROPOUT_CHUNK 64
static inline void nb__dropout_bits(uint64_t key, int64_t c, int64_t m, uint32_t *bits)
{
    const uint64_t gamma = 0x9e3779b97f4a7c15ull, base = key + ((uint64_t)c / 2 + 1) * gamma;
    for (int64_t j = 0; j < (m + 1) / 2; j++) {
        uint64_t z = base + (uint64_t)j * gamma;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        bits[2 * j] = (uint32_t)z;
        bits[2 * j + 1] = (uint32_t)(z >> 32);
    }
}

/* Element strides of t seen from an output of (ndim, shape) that t broadcasts to: 0 on broadcast
 * dims. */
void nb__bcast_strides(const nb_tensor *t, int ndim, const int64_t *shape, int64_t *st);

/* Copy with arbitrary source strides (elements) into a contiguous destination of the given shape,
 * for elements of esize bytes (4 or 8). */
void nb__strided_copy(size_t esize, int ndim, const int64_t *shape, const int64_t *src_strides,
                      const void *src, void *dst);
/* The general form: element i of shape goes from src at src_strides to dst at dst_strides (NULL:
 * contiguous in shape), so it also scatters into a strided destination. */
void nb__strided_copy2(size_t esize, int ndim, const int64_t *shape, const int64_t *src_strides, const void *src,
                       const int64_t *dst_strides, void *dst);

#endif
