/* Private: nabla's own kernels on OpenMP threads. A kernel splits its index range [0, n) into
 * contiguous pieces, one per thread, when n reaches a grain size; below it, it runs serially with no
 * OpenMP call at all (one comparison), so small tensors pay nothing.
 *
 * Determinism: a kernel's result must not depend on how [0, n) is split. Elementwise kernels write
 * disjoint outputs; reductions sum fixed blocks whose boundaries depend on the shape only (never on
 * the thread count) and combine the partial sums in block order (nb__block_*). */
#ifndef NB_PARALLEL_H
#define NB_PARALLEL_H

#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Threads for nabla's kernels (>= 1), set by nb_set_num_threads (src/ops/threads.c). */
extern int nb__nthreads;
/* For tests: nabla's kernels on n threads, OpenBLAS left as it is (nb_set_num_threads sets both). */
void nb__set_kernel_threads(int n);

/* Grain sizes: a kernel goes parallel only with at least this much work per thread. Memory-bound
 * loops (copies, adds) need more elements than loops that compute something per element (exp, a
 * hash) to repay the wake-up of the other threads. */
#define NB_GRAIN_MEM ((int64_t)32768)
#define NB_GRAIN_MATH ((int64_t)8192)

/* The number of threads for n units of work of the given grain: 1 below the grain (the fast path). */
static inline int nb__threads_for(int64_t n, int64_t grain)
{
    if (n < 2 * grain || nb__nthreads <= 1) return 1;
    int64_t t = n / grain;
    return t < nb__nthreads ? (int)t : nb__nthreads;
}

/* This thread's piece [*lo, *hi) of [0, n) inside a parallel region; with align 16 the pieces start
 * at multiples of 16 (elements: float and double pieces then do not share cache lines), with align 1
 * anywhere (rows, blocks). */
static inline void nb__piece(int64_t n, int64_t align, int64_t *lo, int64_t *hi)
{
#ifdef _OPENMP
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    int64_t t = 0, nt = 1;
#endif
    *lo = t == 0 ? 0 : (n * t / nt) / align * align;
    *hi = t + 1 == nt ? n : (n * (t + 1) / nt) / align * align;
}

/* Run the block that follows (statements using lo and hi) once per piece [lo, hi) of [0, n), on nt
 * threads; with nt <= 1 once, on the calling thread, over all of [0, n), with no OpenMP call. The
 * block must write only outputs of its own piece. */
#ifdef _OPENMP
#define NB__PARALLEL(nt, n, align, lo, hi, ...)                                                        \
    do {                                                                                               \
        const int64_t nb_n_ = (n);                                                                     \
        const int nb_t_ = (nt);                                                                        \
        if (nb_t_ <= 1) {                                                                              \
            const int64_t lo = 0, hi = nb_n_;                                                          \
            __VA_ARGS__                                                                                \
        } else {                                                                                       \
            _Pragma("omp parallel num_threads(nb_t_)")                                                 \
            {                                                                                          \
                int64_t lo, hi;                                                                        \
                nb__piece(nb_n_, (align), &lo, &hi);                                                   \
                __VA_ARGS__                                                                            \
            }                                                                                          \
        }                                                                                              \
    } while (0)
#else
#define NB__PARALLEL(nt, n, align, lo, hi, ...)                                                        \
    do {                                                                                               \
        (void)(nt);                                                                                    \
        const int64_t lo = 0, hi = (n);                                                                \
        __VA_ARGS__                                                                                    \
    } while (0)
#endif

/* Elements [0, n) in pieces aligned to 16, on as many threads as the grain allows. Usage:
 *     NB_PARALLEL_FOR(n, NB_GRAIN_MEM, lo, hi, { for (int64_t i = lo; i < hi; i++) y[i] += x[i]; });
 */
#define NB_PARALLEL_FOR(n, grain, lo, hi, ...)                                                         \
    NB__PARALLEL(nb__threads_for((n), (grain)), (n), 16, lo, hi, __VA_ARGS__)

/* Units [0, n) (rows, blocks) in pieces on nt threads (at most n), for a thread count the caller
 * derived from the work (nb__threads_for of the element count). */
#define NB_PARALLEL_PIECES(nt, n, lo, hi, ...)                                                         \
    NB__PARALLEL((int64_t)(nt) < (int64_t)(n) ? (int)(nt) : (int)(n), (n), 1, lo, hi, __VA_ARGS__)

/* Make OpenBLAS's thread count the knob's value on the calling thread (OpenMP builds of OpenBLAS
 * follow the calling thread's OpenMP setting); before each matrix product. */
void nb__blas_threads_sync(void);
/* Set on a thread while its products must run on one OpenBLAS thread (nb__blas_single in cnn.h): then
 * nb__blas_threads_sync gives OpenBLAS 1 instead of the knob's value. */
extern _Thread_local int nb__t_blas_one;

/* Fixed blocks for reductions: n elements are summed in blocks of nb__block_len(n) elements (the last
 * one shorter), a length that depends on n only, and the blocks' partial sums are added in block
 * order. At most NB_MAX_BLOCKS blocks, so their partial sums fit on the stack. */
#define NB_BLOCK ((int64_t)16384)
#define NB_MAX_BLOCKS 256
static inline int64_t nb__block_len(int64_t n)
{
    int64_t len = NB_BLOCK;
    while (n > len * NB_MAX_BLOCKS) len *= 2;
    return len;
}

#endif
