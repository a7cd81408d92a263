/* Files that are not what a reader expects, and saves that do not finish:
 *   - a FIFO (or another non-regular file) given to nb_checkpoint_load, nb_safetensors_read or
 *     nb_idx_read is refused at once (it used to block forever in open);
 *   - a small gzip IDX file whose header claims hundreds of megabytes fails on its short data having
 *     allocated about what it holds (it used to allocate and zero the whole claim first);
 *   - a save killed midway (fork, kill -9, many times) leaves the previous file intact, and the next
 *     save to the same path removes the killed saves' temporary files (they used to pile up), while a
 *     temporary file a live writer holds, and files not named like ours, are left alone;
 *   - safetensors files from other writers, whose tensors need not be 8-byte aligned in the data
 *     section, load with the right values (the reader used to read int64 counts through misaligned
 *     pointers: UBSan in the sanitizer build).
 */
#define _DEFAULT_SOURCE
#include "nbtest.h"

#include "alloc_counter.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
    nb_params *p = nb_params_new();
    nb_params_add(p, "w", nb_tensor_zeros(NB_F32, NB_SHAPE(2)));
    CHECK_ERROR(nb_checkpoint_load(fifo, p, NULL, NULL) != NB_OK, NB_ERR_IO, "not a regular file (a FIFO)");
    nb_safetensors *f = NULL;
    CHECK_ERROR(nb_safetensors_read(fifo, &f) != NB_OK, NB_ERR_IO, "not a regular file (a FIFO)");
    CHECK(f == NULL, "no handle");
    nb_tensor *t = NULL;
    CHECK_ERROR(nb_idx_read(fifo, NB_F32, 1.0, &t) != NB_OK, NB_ERR_IO, "not a regular file (a FIFO)");
    CHECK(t == NULL, "no tensor");
    /* a character device too */
    CHECK_ERROR(nb_idx_read("/dev/zero", NB_F32, 1.0, &t) != NB_OK, NB_ERR_IO, "not a regular file (a device)");
    CHECK_ERROR(nb_checkpoint_load("/dev/null", p, NULL, NULL) != NB_OK, NB_ERR_IO, "not a regular file (a device)");
    alarm(0);
    nb_params_free(p);
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

/* ---- saves killed midway ---------------------------------------------------------------------- */

/* Files in g_dir whose name starts with prefix. */
static int count_prefixed(const char *prefix)
{
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) n++;
    if (d) closedir(d);
    return n;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void test_killed_saves(void)
{
    char path[256];
    in_dir(path, sizeof path, "killed.safetensors");
    nb_params *p = nb_params_new();
    nb_tensor *w = nb_params_add(p, "w", nb_tensor_full(NB_F64, NB_SHAPE(512, 1024), 1.0)); /* 4 MiB */
    CHECK(nb_checkpoint_save(path, p, NULL, 0) == NB_OK, "first save: %s", nb_error_message());

    srand(12345);
    int kills = 40, left = 0, bad_loads = 0, remaining = 0;
    for (int i = 0; i < kills; i++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            for (int64_t step = 1;; step++)
                if (nb_checkpoint_save(path, p, NULL, step) != NB_OK) _exit(3);
        }
        usleep((useconds_t)(rand() % 20000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        left += count_prefixed("killed.safetensors.tmp.");
        /* whatever the kill interrupted, the file is a complete checkpoint */
        int64_t step = -1;
        if (nb_checkpoint_load(path, p, NULL, &step) != NB_OK || step < 0) bad_loads++;
        nb_error_clear();
        /* the next save removes what the killed one left */
        CHECK(nb_checkpoint_save(path, p, NULL, 1000 + i) == NB_OK, "save after kill %d: %s", i, nb_error_message());
        remaining += count_prefixed("killed.safetensors.tmp.");
    }
    printf("files: %d saves killed midway left %d temporary files; after the next save: %d\n", kills, left, remaining);
    CHECK(left > 0, "no kill landed during a save (the test did not test anything)");
    CHECK(remaining == 0, "%d temporary files of killed saves remain after the next saves", remaining);
    CHECK(bad_loads == 0, "%d loads of the target failed after a kill", bad_loads);
    CHECK(nb_tensor_get(w, 5) == 1.0, "values intact");
    nb_params_free(p);
    unlink(path);
}

/* A child that creates `name` in g_dir, holds an exclusive flock on it and waits to be killed; returns
 * its pid once the lock is held. */
static pid_t hold_locked(const char *name)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char p[256];
        int fd = open(in_dir(p, sizeof p, name), O_CREAT | O_RDWR, 0600);
        if (fd < 0 || flock(fd, LOCK_EX) != 0) _exit(2);
        if (write(fds[1], "x", 1) != 1) _exit(2);
        for (;;) pause();
    }
    char c;
    close(fds[1]);
    if (read(fds[0], &c, 1) != 1) pid = -1;
    close(fds[0]);
    return pid;
}

static void stop(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static void test_live_writers_kept(void)
{
    char path[256], a[256], b[256], c[256], d[256], e[256], f[256], g[256], name[128];
    in_dir(path, sizeof path, "shared.safetensors");
    nb_params *p = nb_params_new();
    nb_params_add(p, "w", nb_tensor_zeros(NB_F32, NB_SHAPE(4)));

    /* a pid that is surely dead: a child that has exited and been reaped */
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);

    /* a live writer's temporary file (its pid is alive, it holds the lock) */
    pid_t w1 = fork();
    if (w1 == 0) {
        for (;;) pause();
    }
    snprintf(name, sizeof name, "shared.safetensors.tmp.%ld.aB3dE9", (long)w1);
    pid_t h1 = hold_locked(name);
    in_dir(a, sizeof a, name);
    /* a writer in another pid namespace, say: a dead-looking pid, but the lock is held */
    snprintf(name, sizeof name, "shared.safetensors.tmp.%ld.Zz0099", (long)dead);
    pid_t h2 = hold_locked(name);
    in_dir(b, sizeof b, name);
    /* a killed writer's file: dead pid, no lock */
    snprintf(name, sizeof name, "shared.safetensors.tmp.%ld.qwerty", (long)dead);
    in_dir(c, sizeof c, name);
    /* files that are not our temporary files of this path */
    snprintf(name, sizeof name, "other.safetensors.tmp.%ld.qwerty", (long)dead);
    in_dir(d, sizeof d, name);
    snprintf(name, sizeof name, "shared.safetensors.tmp.%ld.qwert", (long)dead);
    in_dir(e, sizeof e, name);
    snprintf(name, sizeof name, "shared.safetensors.tmp.%ld.qwerty.bak", (long)dead);
    in_dir(f, sizeof f, name);
    in_dir(g, sizeof g, "shared.safetensors.tmp.XXXXXX");
    const char *mine[] = {c, d, e, f, g};
    for (int i = 0; i < 5; i++) {
        int fd = open(mine[i], O_CREAT | O_WRONLY, 0600);
        CHECK(fd >= 0, "create %s", mine[i]);
        if (fd >= 0) close(fd);
    }
    CHECK(h1 > 0 && h2 > 0, "lock holders started");

    CHECK(nb_checkpoint_save(path, p, NULL, 1) == NB_OK, "save: %s", nb_error_message());
    CHECK(exists(a), "a live writer's temporary file was removed");
    CHECK(exists(b), "a locked temporary file was removed");
    CHECK(!exists(c), "a killed writer's temporary file remains");
    CHECK(exists(d) && exists(e) && exists(f) && exists(g), "files not named like this path's temporary files were removed");

    /* once its writer is gone, the next save removes it */
    stop(h1);
    stop(w1);
    stop(h2);
    CHECK(nb_checkpoint_save(path, p, NULL, 2) == NB_OK, "save: %s", nb_error_message());
    CHECK(!exists(a) && !exists(b), "the dead writers' files are removed by the next save");
    CHECK(exists(d) && exists(e) && exists(f) && exists(g), "the other files are still there");
    const char *all[] = {d, e, f, g, path};
    for (int i = 0; i < 5; i++) unlink(all[i]);
    nb_params_free(p);
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
    test_killed_saves();
    test_live_writers_kept();
    test_odd_offsets();
    CHECK_NO_ERROR();
    rmdir(g_dir);
    return nbt_report("files");
}
