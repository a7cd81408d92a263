/* The allocator contract of nb_set_allocator: every allocation the library makes goes through the
 * allocator that was set. A training-like program (tests/alloc_program.h: layers, LSTM, backward,
 * Adam, data, vocabulary, IDX, checkpoints, safetensors) runs with a checking allocator, while every
 * malloc, calloc, realloc and memalign of the whole process is counted by interposing them in this
 * binary: any call during the run, from the library itself or from the C library or zlib on its
 * behalf (fopen, qsort, opendir, gzopen...), is a bypass and fails the test. OpenBLAS is warmed up
 * first (its buffers are its own, as nabla.h says). The checking allocator also verifies that every
 * free names the right size and that nothing is left once the program has freed what it made.
 * Under AddressSanitizer (which owns malloc) the interposition is left out; the rest runs. */
#define _GNU_SOURCE /* dladdr */
#include "nbtest.h"

#include "alloc_counter.h"
#include "alloc_interpose.h"
#include "alloc_program.h"

#include <cblas.h>
#include <stdlib.h>
#include <unistd.h>

/* OpenBLAS sets up its buffers on first use: do that before anything is watched. */
static void warm_up_blas(void)
{
    static double a[4096], b[4096], c[4096];
    static float af[4096], bf[4096], cf[4096];
    for (int m = 1; m <= 8; m++)
        for (int k = 1; k <= 8; k++)
            for (int n = 1; n <= 8; n++)
                for (int t = 0; t < 4; t++) {
                    CBLAS_TRANSPOSE ta = t & 1 ? CblasTrans : CblasNoTrans, tb = t & 2 ? CblasTrans : CblasNoTrans;
                    int lda = t & 1 ? m : k, ldb = t & 2 ? k : n;
                    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a, lda, b, ldb, (double)(t & 1), c, n);
                    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, af, lda, bf, ldb, (float)(t & 1), cf, n);
                }
}

int main(void)
{
    char dir[] = "/tmp/nabla-contract-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    prog_files files;
    CHECK(prog_setup(dir, &files) == 0, "cannot write the IDX files in %s", dir);
    nb_set_num_threads(1);
    warm_up_blas();
    CHECK(interpose_init() > 0, "OpenBLAS's code not found among the loaded objects");
    printf("contract: malloc interposition %s\n", INTERPOSE ? "on" : "off (AddressSanitizer owns malloc)");
    fflush(stdout);

#if INTERPOSE
    /* the interposer sees calls from this binary and from inside the C library */
    watch(1);
    void *(*volatile direct)(size_t) = malloc;
    void *p = direct(24);
    char *s = strdup("a string the C library copies with its own malloc");
    watch(0);
    free(p);
    free(s);
    CHECK(bypass == 2, "the interposer counted %ld of 2 direct allocations", bypass);
    bypass = 0;
#endif

    ac_reset(0);
    ac_install();
    prog_out first, second;
    long bypass_total = 0;
    for (int run = 0; run < 2; run++) {
        watch(1);
        nb_status st = prog_run(&files, run ? &second : &first);
        watch(0);
        CHECK(st == NB_OK, "run %d failed at %s: %s", run + 1, prog_where, nb_error_message());
        report_bypasses(run ? "second run" : "first run");
        CHECK(bypass == 0, "run %d: %ld allocation(s) did not go through the allocator", run + 1, bypass);
        bypass_total += bypass;
        bypass = 0;
    }
    nb_set_allocator(NULL);

    printf("contract: %ld allocations, %ld reallocations, %ld frees through the allocator (peak %zu bytes); "
           "%ld bypassing it; %ld made by OpenBLAS itself\n", ac.allocs, ac.reallocs, ac.frees, ac.peak_bytes, bypass_total,
           blas_calls);
    CHECK(ac.allocs > 200, "the allocator was used (%ld allocations)", ac.allocs);
    CHECK(ac.live_blocks == 0 && ac.live_bytes == 0, "%ld blocks (%zu bytes) left after the program freed everything",
          ac.live_blocks, ac.live_bytes);
    CHECK(ac.bad_size == 0, "%ld frees or reallocations named the wrong size", ac.bad_size);
    CHECK(ac.bad_block == 0, "%ld frees of blocks the allocator never gave out", ac.bad_block);
    CHECK(memcmp(&first, &second, sizeof first) == 0, "the two runs computed the same");
    CHECK(first.step == 2 && first.vocab == 16, "step %lld, vocabulary %d", (long long)first.step, first.vocab);
    CHECK(first.loaded == first.read_back, "checkpoint load and safetensors read agree");
    CHECK_NO_ERROR();

    unlink(files.ckpt);
    unlink(files.idx_raw);
    unlink(files.idx_gz);
    rmdir(dir);
    return nbt_report("alloc_contract");
}
