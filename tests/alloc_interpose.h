/* Interposes malloc, calloc, realloc and the memalign family in the test binary (forwarding to
 * glibc's own), to see allocations that do not go through nb_set_allocator's allocator: from the
 * library itself, or from the C library or zlib on its behalf (fopen, qsort, opendir, gzopen...).
 * While `watching`, each such call is counted as a bypass, except those OpenBLAS makes itself (its
 * small-matrix kernels malloc per call; nabla.h leaves OpenBLAS's memory to OpenBLAS). A bypass is
 * also an allocation attempt of alloc_counter.h, so fault injection reaches it too: the k-th attempt
 * fails, whichever allocator it goes to. Left out under AddressSanitizer, which owns malloc.
 * Include after alloc_counter.h; define _GNU_SOURCE first (dladdr, dl_iterate_phdr). */
#ifndef NB_ALLOC_INTERPOSE_H
#define NB_ALLOC_INTERPOSE_H

#include "alloc_counter.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define INTERPOSE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define INTERPOSE 0
#endif
#endif
#ifndef INTERPOSE
#define INTERPOSE 1
#endif

static int watching;       /* count (and maybe fail) calls to the C library's allocator */
static long bypass;        /* calls counted */
static void *bypass_at[8]; /* the callers of the first ones */
#if defined(__GNUC__)
__attribute__((unused))
#endif
static long blas_calls;    /* calls made by OpenBLAS itself */
static uintptr_t blas_lo[8], blas_hi[8]; /* OpenBLAS's loaded segments */
static int blas_segs;

static void watch(int on) { __atomic_store_n(&watching, on, __ATOMIC_SEQ_CST); }

/* The address ranges of OpenBLAS's code. */
static int find_blas(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    if (!info->dlpi_name || !strstr(info->dlpi_name, "openblas")) return 0;
    for (int i = 0; i < info->dlpi_phnum && blas_segs < 8; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD) {
            blas_lo[blas_segs] = info->dlpi_addr + info->dlpi_phdr[i].p_vaddr;
            blas_hi[blas_segs] = blas_lo[blas_segs] + info->dlpi_phdr[i].p_memsz;
            blas_segs++;
        }
    return 1;
}

/* Call once before watching; returns the number of OpenBLAS segments found. */
static int interpose_init(void)
{
    dl_iterate_phdr(find_blas, NULL);
    return blas_segs;
}

static void report_bypasses(const char *what)
{
    if (bypass == 0) return;
    fprintf(stderr, "  %s: %ld allocation(s) bypassed nb_set_allocator's allocator; first callers:\n", what, bypass);
    for (long k = 0; k < bypass && k < 8; k++) {
        Dl_info info;
        if (dladdr(bypass_at[k], &info) && info.dli_fname)
            fprintf(stderr, "    %p in %s (near %s)\n", bypass_at[k], info.dli_fname, info.dli_sname ? info.dli_sname : "?");
        else
            fprintf(stderr, "    %p\n", bypass_at[k]);
    }
}

#if INTERPOSE
/* glibc's own entry points, which the interposers forward to */
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t size);
void *memalign(size_t align, size_t size); /* (not in a standard header) */

/* Count a call from caller; 1 when it is to fail (fault injection). */
static int note(void *caller)
{
    if (!__atomic_load_n(&watching, __ATOMIC_RELAXED) || ac.in_call) return 0;
    for (int i = 0; i < blas_segs; i++)
        if ((uintptr_t)caller >= blas_lo[i] && (uintptr_t)caller < blas_hi[i]) {
            __atomic_fetch_add(&blas_calls, 1, __ATOMIC_RELAXED);
            return 0;
        }
    long k = __atomic_fetch_add(&bypass, 1, __ATOMIC_RELAXED);
    if (k < 8) bypass_at[k] = caller;
    if (ac_fail_now()) {
        errno = ENOMEM;
        return 1;
    }
    return 0;
}

void *malloc(size_t size) { return note(__builtin_return_address(0)) ? NULL : __libc_malloc(size); }
void *calloc(size_t n, size_t size) { return note(__builtin_return_address(0)) ? NULL : __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { return note(__builtin_return_address(0)) ? NULL : __libc_realloc(p, size); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t align, size_t size)
{
    return note(__builtin_return_address(0)) ? NULL : __libc_memalign(align, size);
}
void *aligned_alloc(size_t align, size_t size)
{
    return note(__builtin_return_address(0)) ? NULL : __libc_memalign(align, size);
}
int posix_memalign(void **out, size_t align, size_t size)
{
    void *p = note(__builtin_return_address(0)) ? NULL : __libc_memalign(align, size);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void *valloc(size_t size)
{
    return note(__builtin_return_address(0)) ? NULL : __libc_memalign((size_t)sysconf(_SC_PAGESIZE), size);
}
#endif

#endif
