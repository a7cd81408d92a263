/* A workload's GEMM floor: the time of exactly the matrix products it makes, timed alone.
 *
 * Include this in one benchmark source that links nabla statically (nabla_dep does): it defines
 * cblas_sgemm and cblas_dgemm, which the static library's calls bind to, so every product nabla asks
 * of OpenBLAS passes through here. While recording (gemm_floor_record), each call's arguments are
 * logged, pointers included; gemm_floor_time then replays the logged sequence with the real OpenBLAS
 * functions (found with dlsym(RTLD_NEXT)) on the same memory, as often as asked, and returns the
 * median time of one replay: the floor that the workload's own pass cannot beat while it makes these
 * products. Every product is replayed with beta = 1 (it adds into its output): a product with beta = 0
 * makes OpenBLAS zero its output first, a pass that a product into an existing gradient does not
 * need, so the floor counts that zeroing as overhead, not as part of the product. The replay must run
 * while the recorded buffers are alive (before the tape is reset) and overwrites the products'
 * outputs, so the pass's results are lost. Header only, for benchmarks; never part of the library. */
#ifndef GEMM_FLOOR_H
#define GEMM_FLOOR_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before any include (for RTLD_NEXT)"
#endif

#include <cblas.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef struct gemm_call {
    int dbl; /* cblas_dgemm */
    enum CBLAS_ORDER order;
    enum CBLAS_TRANSPOSE ta, tb;
    blasint m, n, k, lda, ldb, ldc;
    double alpha, beta;
    const void *a, *b;
    void *c;
} gemm_call;

#define GEMM_FLOOR_MAX_CALLS 100000

static struct {
    int recording;
    long n;
    gemm_call calls[GEMM_FLOOR_MAX_CALLS];
    void (*real_s)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint, float,
                   const float *, blasint, const float *, blasint, float, float *, blasint);
    void (*real_d)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint, double,
                   const double *, blasint, const double *, blasint, double, double *, blasint);
} gemm_floor_g;

static void gemm_floor_resolve(void)
{
    if (!gemm_floor_g.real_s) {
        *(void **)&gemm_floor_g.real_s = dlsym(RTLD_NEXT, "cblas_sgemm");
        *(void **)&gemm_floor_g.real_d = dlsym(RTLD_NEXT, "cblas_dgemm");
        if (!gemm_floor_g.real_s || !gemm_floor_g.real_d) {
            fprintf(stderr, "gemm_floor: OpenBLAS's cblas_sgemm/cblas_dgemm not found: %s\n", dlerror());
            abort();
        }
    }
}

static void gemm_floor_log(int dbl, enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m,
                           blasint n, blasint k, double alpha, const void *a, blasint lda, const void *b, blasint ldb,
                           double beta, void *c, blasint ldc)
{
    if (!gemm_floor_g.recording || gemm_floor_g.n >= GEMM_FLOOR_MAX_CALLS) return;
    gemm_floor_g.calls[gemm_floor_g.n++] = (gemm_call){dbl, o, ta, tb, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c};
}

void cblas_sgemm(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m, blasint n,
                 blasint k, float alpha, const float *a, blasint lda, const float *b, blasint ldb, float beta,
                 float *c, blasint ldc)
{
    gemm_floor_resolve();
    gemm_floor_log(0, o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    gemm_floor_g.real_s(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_dgemm(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m, blasint n,
                 blasint k, double alpha, const double *a, blasint lda, const double *b, blasint ldb, double beta,
                 double *c, blasint ldc)
{
    gemm_floor_resolve();
    gemm_floor_log(1, o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    gemm_floor_g.real_d(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Start (1) or stop (0) recording; starting forgets what was recorded before. */
static inline void gemm_floor_record(int on)
{
    if (on) gemm_floor_g.n = 0;
    gemm_floor_g.recording = on;
}

static inline long gemm_floor_calls(void) { return gemm_floor_g.n; }

/* Total floating-point operations (2 m n k per product) of the recorded sequence. */
static inline double gemm_floor_flops(void)
{
    double f = 0;
    for (long i = 0; i < gemm_floor_g.n; i++) {
        const gemm_call *c = &gemm_floor_g.calls[i];
        f += 2.0 * c->m * c->n * c->k;
    }
    return f;
}

/* Replays the recorded calls `repeats` times (after `warmup` untimed replays) on the recorded memory
 * and returns the median wall-time ns of one replay of the whole sequence (-1 when out of memory);
 * cpu_ns (may be NULL) gets the median of the thread's CPU time. */
static inline double gemm_floor_time(long warmup, long repeats, double *cpu_ns)
{
    gemm_floor_resolve();
    long n = gemm_floor_g.n;
    double *wall = malloc(((size_t)repeats + 1) * sizeof *wall), *cpu = malloc(((size_t)repeats + 1) * sizeof *cpu);
    double med = -1;
    if (wall && cpu) {
        for (long r = -warmup; r < repeats; r++) {
            double t0 = bench_now_ns(), c0 = bench_cpu_ns();
            for (long i = 0; i < n; i++) {
                const gemm_call *c = &gemm_floor_g.calls[i];
                if (c->dbl)
                    gemm_floor_g.real_d(c->order, c->ta, c->tb, c->m, c->n, c->k, c->alpha, c->a, c->lda, c->b,
                                        c->ldb, 1.0, c->c, c->ldc);
                else
                    gemm_floor_g.real_s(c->order, c->ta, c->tb, c->m, c->n, c->k, (float)c->alpha, c->a, c->lda,
                                        c->b, c->ldb, 1.0f, c->c, c->ldc);
            }
            if (r >= 0) {
                cpu[r] = bench_cpu_ns() - c0;
                wall[r] = bench_now_ns() - t0;
            }
        }
        med = bench_median(wall, repeats);
        if (cpu_ns) *cpu_ns = bench_median(cpu, repeats);
    }
    free(wall);
    free(cpu);
    return med;
}

#endif
