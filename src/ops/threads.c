/* The one thread knob: nabla's kernels (OpenMP) and OpenBLAS's matrix products use the same number
 * of threads, set by nb_set_num_threads or, at start, by the environment (NB_NUM_THREADS, else
 * OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS, else every core). */
#include "parallel.h"

#include "../autograd/internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* OpenBLAS's own thread control (declared in its cblas.h on Debian; repeated here for others) */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
int openblas_get_parallel(void); /* 0 sequential, 1 pthreads, 2 OpenMP */

int nb__nthreads = 1;
static int g_default_threads = 1;
static int g_blas_threads = 1; /* what OpenBLAS was given */
static int g_blas_openmp = 0; /* OpenBLAS runs on OpenMP: it follows the calling thread's OpenMP setting */

/* The leading whole number of an environment variable (OMP_NUM_THREADS may be a list "4,2"), or 0. */
static int env_threads(const char *name)
{
    const char *s = getenv(name);
    if (!s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    return end != s && v >= 1 && v <= 4096 ? (int)v : 0;
}

static int cores(void)
{
#ifdef _OPENMP
    int n = omp_get_num_procs();
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
    return n >= 1 ? (int)n : 1;
}

static void apply(int n)
{
    nb__nthreads = n;
    g_blas_threads = n;
    openblas_set_num_threads(n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

/* At load time: the default from the environment, given to OpenBLAS as well, so that both pools
 * agree even when only NB_NUM_THREADS is set. */
__attribute__((constructor)) static void threads_init(void)
{
    int n = env_threads("NB_NUM_THREADS");
    if (!n) n = env_threads("OMP_NUM_THREADS");
    if (!n) n = env_threads("OPENBLAS_NUM_THREADS");
    if (!n) n = cores();
    g_default_threads = n;
    g_blas_openmp = openblas_get_parallel() == 2;
    apply(n);
}

void nb_set_num_threads(int n) { apply(n >= 1 ? n : g_default_threads); }

void nb__set_kernel_threads(int n) { nb__nthreads = n >= 1 ? n : 1; }

int nb_num_threads(void) { return nb__nthreads; }

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define NB_HAVE_MXCSR 1
/* MXCSR's flush-to-zero (results) and denormals-are-zero (inputs) bits */
#define NB_MXCSR_FTZ_DAZ 0x8040u
static void flush_here(int on)
{
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(on ? csr | NB_MXCSR_FTZ_DAZ : csr & ~NB_MXCSR_FTZ_DAZ);
}
#endif

int nb_set_flush_denormal(int on)
{
#ifdef NB_HAVE_MXCSR
    flush_here(on);
#ifdef _OPENMP
    /* the threads of the OpenMP pool nabla's kernels (and an OpenMP OpenBLAS) run on: each sets its own
     * register; threads made later are copies of this one's state */
    const int n = nb__nthreads;
    if (n > 1) {
#pragma omp parallel num_threads(n)
        flush_here(on);
    }
#endif
    return 1;
#else
    (void)on;
    return 0;
#endif
}

_Thread_local int nb__t_blas_one = 0;

void nb__blas_threads_sync(void)
{
#ifdef _OPENMP
    /* OpenMP OpenBLAS takes its thread count from the calling thread's OpenMP setting, which is per
     * thread: make it the knob's value on threads other than the one that called nb_set_num_threads
     * (1 while a CNN kernel runs its products single-threaded on this thread, nb__blas_single) */
    const int want = nb__t_blas_one ? 1 : g_blas_threads;
    if (g_blas_openmp && omp_get_max_threads() != want) omp_set_num_threads(want);
#endif
}
