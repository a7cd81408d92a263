/* In-place heap sorts for src/train: no allocation at all (glibc's qsort takes a malloc'ed buffer
 * for arrays over 1 KiB, behind the back of nb_set_allocator). O(n log n) in the worst case; not
 * stable, so the callers sort keys that are all distinct or only test for equal neighbours. */
#ifndef NB_TRAIN_SORT_H
#define NB_TRAIN_SORT_H

#include <stddef.h>
#include <stdint.h>

/* a[0..n) ascending. */
static inline void nbs_sort_u64(uint64_t *a, size_t n)
{
    if (n < 2) return;
    /* sift element i down within a[0..end) */
#define NBS_SIFT(i0, end)                                                                              \
    do {                                                                                               \
        size_t r_ = (i0);                                                                              \
        uint64_t v_ = a[r_];                                                                           \
        for (;;) {                                                                                     \
            size_t c_ = 2 * r_ + 1;                                                                    \
            if (c_ >= (end)) break;                                                                    \
            if (c_ + 1 < (end) && a[c_ + 1] > a[c_]) c_++;                                             \
            if (a[c_] <= v_) break;                                                                    \
            a[r_] = a[c_];                                                                             \
            r_ = c_;                                                                                   \
        }                                                                                              \
        a[r_] = v_;                                                                                    \
    } while (0)
    for (size_t i = n / 2; i-- > 0;) NBS_SIFT(i, n);
    for (size_t end = n - 1; end > 0; end--) {
        uint64_t t = a[0];
        a[0] = a[end];
        a[end] = t;
        NBS_SIFT(0, end);
    }
#undef NBS_SIFT
}

/* The pointers a[0..n) in the order of cmp, which is given two of the pointers (not their addresses). */
static inline void nbs_sort_ptrs(const void **a, size_t n, int (*cmp)(const void *x, const void *y))
{
    if (n < 2) return;
#define NBS_SIFT(i0, end)                                                                              \
    do {                                                                                               \
        size_t r_ = (i0);                                                                              \
        const void *v_ = a[r_];                                                                        \
        for (;;) {                                                                                     \
            size_t c_ = 2 * r_ + 1;                                                                    \
            if (c_ >= (end)) break;                                                                    \
            if (c_ + 1 < (end) && cmp(a[c_ + 1], a[c_]) > 0) c_++;                                     \
            if (cmp(a[c_], v_) <= 0) break;                                                            \
            a[r_] = a[c_];                                                                             \
            r_ = c_;                                                                                   \
        }                                                                                              \
        a[r_] = v_;                                                                                    \
    } while (0)
    for (size_t i = n / 2; i-- > 0;) NBS_SIFT(i, n);
    for (size_t end = n - 1; end > 0; end--) {
        const void *t = a[0];
        a[0] = a[end];
        a[end] = t;
        NBS_SIFT(0, end);
    }
#undef NBS_SIFT
}

#endif
