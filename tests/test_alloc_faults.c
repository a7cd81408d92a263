/* Allocation failure, everywhere: the training-like program of tests/alloc_program.h (leaves, MLP
 * and LSTM steps with backward and a create-graph gradient, Adam, schedule, early stopping, dataset
 * and batches, vocabulary, IDX raw and gzip, checkpoint save and load, safetensors read) is run once
 * to count its allocations, then once more for every k, with the k-th allocation failing. The
 * allocations are those of nb_set_allocator's allocator and, outside AddressSanitizer builds, any
 * malloc made behind its back (tests/alloc_interpose.h; there should be none: test_alloc_contract).
 * Each run must end without a crash (and, in the sanitizer build, without an ASan or UBSan report),
 * either failing with NB_ERR_NOMEM and an "out of memory" message from the call that met the
 * failure, or, where the library absorbs the failure, completing with exactly the results of the run
 * without failures and no error left recorded; and after the program has freed what it made,
 * nothing may be left allocated. */
#define _GNU_SOURCE
#include "nbtest.h"

#include "alloc_counter.h"
#include "alloc_interpose.h"
#include "alloc_program.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void)
{
    /* a folder in memory when there is one: the program fsyncs its checkpoint thousands of times */
    char dir[64];
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/nabla-faults-XXXXXX", stat("/dev/shm", &sb) == 0 && access("/dev/shm", W_OK) == 0 ?
             "/dev/shm" : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    prog_files files;
    CHECK(prog_setup(dir, &files) == 0, "cannot write the IDX files in %s", dir);
    nb_set_num_threads(1);
    interpose_init();
    ac_install();

    prog_out ref, out;
    ac_reset(0);
    watch(1);
    nb_status st = prog_run(&files, &ref);
    watch(0);
    long n = ac.attempts, n_bypass = bypass;
    report_bypasses("the program");
    CHECK(st == NB_OK, "the program without failures failed at %s: %s", prog_where, nb_error_message());
    CHECK(ac.live_blocks == 0, "the program without failures leaves %ld blocks", ac.live_blocks);
    CHECK(n > 100, "the program makes %ld allocations", n);

    long nomem = 0, absorbed = 0, unreached = 0, bad = 0;
    for (long k = 1; k <= n && nbt_failures < 20; k++) {
        nb_error_clear();
        ac_reset(k);
        watch(1);
        st = prog_run(&files, &out);
        watch(0);
        int ok_run = 1;
        if (ac.failed == 0) {
            unreached++; /* the run took another path before attempt k: the count is not deterministic */
            ok_run = 0;
            NBT_FAIL("k = %ld: the run made only %ld allocations", k, ac.attempts);
        } else if (st == NB_OK) {
            absorbed++;
            if (memcmp(&out, &ref, sizeof out) != 0) {
                ok_run = 0;
                NBT_FAIL("k = %ld: a failed allocation was absorbed but the results changed", k);
            } else if (nb_error_code() != NB_OK) {
                ok_run = 0;
                NBT_FAIL("k = %ld: the run succeeded but left an error recorded: %s: \"%s\"", k,
                         nb_status_name(nb_error_code()), nb_error_message());
            }
        } else {
            nomem++;
            if (nb_error_code() != NB_ERR_NOMEM || !strstr(nb_error_message(), "out of memory")) {
                ok_run = 0;
                NBT_FAIL("k = %ld: %s failed with %s: \"%s\" (expected NB_ERR_NOMEM, \"out of memory\")", k, prog_where,
                         nb_status_name(nb_error_code()), nb_error_message());
            }
        }
        if (ac.live_blocks != 0 || ac.live_bytes != 0) {
            ok_run = 0;
            NBT_FAIL("k = %ld (failing in %s): %ld blocks, %zu bytes left allocated", k, prog_where, ac.live_blocks,
                     ac.live_bytes);
        }
        if (ac.bad_size || ac.bad_block) {
            ok_run = 0;
            NBT_FAIL("k = %ld: %ld frees with a wrong size, %ld of foreign blocks", k, ac.bad_size, ac.bad_block);
        }
        nbt_checks++;
        bad += !ok_run;
    }
    nb_error_clear();
    nb_set_allocator(NULL);
    printf("alloc_faults: %ld injection points (every allocation of the program; %ld of them behind the allocator's "
           "back%s): %ld failed with NB_ERR_NOMEM, %ld absorbed with unchanged results, %ld bad\n", n, n_bypass,
           INTERPOSE ? "" : ", not seen under AddressSanitizer", nomem, absorbed, bad);
    CHECK(unreached == 0, "%ld injection points not reached", unreached);

    unlink(files.ckpt);
    unlink(files.idx_raw);
    unlink(files.idx_gz);
    rmdir(dir);
    return nbt_report("alloc_faults");
}
