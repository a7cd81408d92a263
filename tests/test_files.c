/* Files that are not what a reader expects:
 *   - a FIFO (or another non-regular file) given to nb_idx_read is refused at once (it used to block
 *     forever in open);
 *   - a small gzip IDX file whose header claims hundreds of megabytes fails on its short data having
 *     allocated about what it holds (it used to allocate and zero the whole claim first);
 *   - safetensors files from other writers, whose tensors need not be 8-byte aligned in the data
 *     section, load with the right values (the reader used to read int64 counts through misaligned
 *     pointers: UBSan in the sanitizer build).
 */
#define _DEFAULT_SOURCE
#include "nbtest.h"

#include "alloc_counter.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

static char g_dir[64];

static const char *in_dir(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", g_dir, name);
    return buf;
}

/* ---- FIFOs ------------------------------------------------------------------------------------ */

static void blocked(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL: a reader blocked on a FIFO (no writer): killed after 10 s\n";
    if (write(2, msg, sizeof msg - 1)) {}
    _exit(1);
}

static void test_fifo(void)
{
    char fifo[256];
    in_dir(fifo, sizeof fifo, "fifo.safetensors");
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo: %s", strerror(errno));
    signal(SIGALRM, blocked);
    alarm(10);
    nb_tensor *t = NULL;
    CHECK_ERROR(nb_idx_read(fifo, NB_F32, 1.0, &t) != NB_OK, NB_ERR_IO, "not a regular file (a FIFO)");
    CHECK(t == NULL, "no tensor");
    /* a character device too */
    CHECK_ERROR(nb_idx_read("/dev/zero", NB_F32, 1.0, &t) != NB_OK, NB_ERR_IO, "not a regular file (a device)");
    alarm(0);
    unlink(fifo);
}

/* ---- a gzip IDX file that claims far more than it holds ---------------------------------------- */

static void test_idx_claims_too_much(void)
{
    /* u8 [25000000] read as f64 would be 200 MB; the file holds 30000 bytes of it (incompressible, so
     * that the file is large enough to pass the deflate-ratio bound and the reader has to look) */
    enum { HAVE = 30000 };
    unsigned char *buf = malloc(8 + HAVE);
    const uint32_t n = 25000000;
    unsigned char head[8] = {0, 0, 8, 1, (unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                             (unsigned char)n};
    memcpy(buf, head, 8);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < HAVE; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[8 + i] = (unsigned char)x;
    }
    char path[256];
    in_dir(path, sizeof path, "claims.idx.gz");
    gzFile gz = gzopen(path, "wb");
    CHECK(gz && gzwrite(gz, buf, 8 + HAVE) == 8 + HAVE, "write %s", path);
    if (gz) gzclose(gz);
    free(buf);

    ac_reset(0);
    ac_install();
    nb_tensor *t = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_ERROR(nb_idx_read(path, NB_F64, 1.0, &t) != NB_OK, NB_ERR_FORMAT, "truncated data: 30000 of 25000000 data bytes");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    nb_set_allocator(NULL);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("files: a 30 kB gzip IDX claiming 200 MB of f64: refused in %.3f ms, peak allocation %zu bytes\n", ms,
           ac.peak_bytes);
    CHECK(t == NULL, "no tensor");
    CHECK(ac.peak_bytes < ((size_t)4 << 20), "peak allocation %zu bytes for a file that holds 30000 data bytes",
          ac.peak_bytes);
    CHECK(ac.live_blocks == 0, "%ld blocks left", ac.live_blocks);
    unlink(path);
}

/* ---- tensors at offsets that are not 8-byte aligned ------------------------------------------- */

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void test_odd_offsets(void)
{
    /* as another writer may lay it out: no padding after the header, a F32 first, so that the i64
     * step counts and the F64 that follow sit at offsets 4 and 20 of the data (4 mod 8) */
    const char *json = "{\"__metadata__\":{\"format\":\"nabla-checkpoint\",\"step\":\"3\",\"optimizer\":\"sgd\","
                       "\"optimizer_steps\":\"9\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"optim.param_steps\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[4,20]},"
                       "\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[20,36]}}";
    size_t hl = strlen(json);
    unsigned char file[1024];
    put_le(file, hl, 8);
    memcpy(file + 8, json, hl);
    unsigned char *data = file + 8 + hl;
    float fa = 1.5f;
    double b0 = -2.25, b1 = 1e300;
    uint32_t ua;
    uint64_t u0, u1;
    memcpy(&ua, &fa, 4);
    memcpy(&u0, &b0, 8);
    memcpy(&u1, &b1, 8);
    put_le(data, ua, 4);
    put_le(data + 4, 7, 8);
    put_le(data + 12, 9, 8);
    put_le(data + 20, u0, 8);
    put_le(data + 28, u1, 8);
    char path[256];
    in_dir(path, sizeof path, "odd.safetensors");
    FILE *fp = fopen(path, "wb");
    CHECK(fp && fwrite(file, 1, 8 + hl + 36, fp) == 8 + hl + 36, "write %s", path);
    if (fp) fclose(fp);

    nb_params *p = nb_params_new();
    nb_tensor *a = nb_params_add(p, "a", nb_tensor_zeros(NB_F32, NB_SHAPE(1)));
    nb_tensor *b = nb_params_add(p, "b", nb_tensor_zeros(NB_F64, NB_SHAPE(2)));
    nb_optim *opt = nb_optim_new(NB_SGD, p, NULL);
    int64_t step = 0;
    CHECK(nb_checkpoint_load(path, p, opt, &step) == NB_OK, "load: %s", nb_error_message());
    CHECK(step == 3 && nb_optim_steps(opt) == 9, "step %" PRId64 ", optimizer steps %" PRId64, step, nb_optim_steps(opt));
    CHECK(nb_optim_param_steps(opt, 0) == 7 && nb_optim_param_steps(opt, 1) == 9, "per-parameter steps %" PRId64 ", %" PRId64,
          nb_optim_param_steps(opt, 0), nb_optim_param_steps(opt, 1));
    CHECK(nb_tensor_get(a, 0) == 1.5 && nb_tensor_get(b, 0) == -2.25 && nb_tensor_get(b, 1) == 1e300, "values %g %g %g",
          nb_tensor_get(a, 0), nb_tensor_get(b, 0), nb_tensor_get(b, 1));
    nb_safetensors *f = NULL;
    CHECK(nb_safetensors_read(path, &f) == NB_OK, "read: %s", nb_error_message());
    nb_tensor *steps = nb_safetensors_find(f, "optim.param_steps");
    CHECK(steps && nb_tensor_get(steps, 0) == 7 && nb_tensor_get(steps, 1) == 9 &&
              nb_tensor_get(nb_safetensors_find(f, "b"), 1) == 1e300,
          "nb_safetensors_read values");
    nb_safetensors_free(f);
    nb_optim_free(opt);
    nb_params_free(p);
    unlink(path);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/nabla-files-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_fifo();
    test_idx_claims_too_much();
    test_odd_offsets();
    CHECK_NO_ERROR();
    rmdir(g_dir);
    return nbt_report("files");
}
