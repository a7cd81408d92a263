/* Checkpoints as safetensors files. Written against nabla.h only, like user code; every allocation
 * goes through nb_alloc. The JSON header is written here and read by a strict parser of exactly the
 * header's shape (an object of tensor entries and an optional "__metadata__" object of strings), so
 * no JSON library is needed: a general one allocates behind the back of nb_set_allocator (cJSON's
 * hooks are process-global) and accepts more than the format needs.
 *
 * Layout: an 8-byte little-endian header length N; N bytes of UTF-8 JSON mapping each tensor name
 * to {"dtype": "F32"|"F64"|"I64", "shape": [...], "data_offsets": [begin, end]} (offsets into the
 * data section, which follows the header), plus an optional "__metadata__" object of strings; the
 * header is padded with spaces so that the data section starts 8-byte aligned; then the raw
 * little-endian data. The writer puts 8-byte tensors before 4-byte ones (in the caller's order within
 * each group), so every tensor lies naturally aligned in the file. Files from other writers need not
 * be aligned: the reader copies values out with memcpy.
 *
 * The header parser is strict: anything but whitespace around the object, a key twice in one
 * object, a bad escape or a lone surrogate, a string holding \u0000 or a raw control character, a
 * value of another type or nesting than the format's, a number that is not a plain integer in
 * [0, 2^53] are NB_ERR_FORMAT errors. Strings are decoded in place in the loader's copy of the header.
 *
 * Saving writes "<path>.tmp.<pid>.XXXXXX" (mkstemp), holds an exclusive flock on it while writing,
 * fsyncs it and renames it over path. A save killed midway leaves its temporary file behind; the
 * next save to the same path removes such files of that path whose lock is free and whose writer's
 * process is gone (never a file a live writer holds).
 *
 * Statuses of nb_checkpoint_load, one per kind of failure:
 *   NB_ERR_ARG     path or params NULL;
 *   NB_ERR_IO      the file cannot be opened or read (missing, a folder, a FIFO or device, a read
 *                  error, it shrank);
 *   NB_ERR_NOMEM   an allocation failed;
 *   NB_ERR_FORMAT  the file is not a valid safetensors file (sizes, JSON, entries, offsets, metadata
 *                  values), or it lacks the step metadata that was asked for;
 *   NB_ERR_SHAPE   a valid file that does not fit the model: tensors missing or extra, dtypes or
 *                  shapes that differ, no optimizer state or another optimizer's.
 */
#define _DEFAULT_SOURCE

#include <nabla.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#else
#include <dirent.h>
#endif

#include "names.h"
#include "sort.h"

#if defined(__GNUC__)
#define NB_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define NB_PRINTF(f, a)
#endif

/* safetensors' names of nabla's dtypes */
static const char *const st_dtype[] = {[NB_F32] = "F32", [NB_F64] = "F64", [NB_I64] = "I64"};
_Static_assert(sizeof st_dtype / sizeof st_dtype[0] == NB_DTYPE_COUNT, "a safetensors name per dtype");


#define META_KEY NB_CKPT_META_KEY
#define OPTIM_PREFIX NB_CKPT_OPTIM_PREFIX
/* the optimizer's per-parameter update counts (i64 [parameters]); files without it give every
 * parameter the optimizer's count */
#define PARAM_STEPS OPTIM_PREFIX "param_steps"
/* the optimizer's parameter groups: one row per group (f64 [groups, GROUP_FIELDS]: lr, weight_decay,
 * momentum, dampening, beta1, beta2, eps, frozen) and each parameter's group (i64 [parameters]);
 * files without them (saved before groups existed) leave the optimizer's groups as they are */
#define GROUPS OPTIM_PREFIX "groups"
#define PARAM_GROUPS OPTIM_PREFIX "param_groups"
#define GROUP_FIELDS 8
/* Offsets and extents are limited to 2^53, so that readers that keep JSON numbers as doubles (many
 * do) read them exactly. */
#define MAX_JSON_INT ((uint64_t)1 << 53)
/* reads and writes go in pieces of at most this many bytes */
#define IO_CHUNK ((size_t)1 << 30)

/* ---- helpers ---------------------------------------------------------------------------------- */

static int host_big_endian(void)
{
    const uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 0;
}

/* Reverse the bytes of each of n elements of `size` bytes (little- <-> big-endian). */
static void swap_bytes(unsigned char *p, size_t n, size_t size)
{
    for (size_t i = 0; i < n; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            unsigned char c = p[a];
            p[a] = p[b];
            p[b] = c;
        }
}

static int cmp_str(const void *a, const void *b) { return strcmp(a, b); }

/* The first name that occurs twice among n (NULL if none; "" when out of memory, with *nomem set). */
static const char *find_duplicate(const char *const *names, int n, int *nomem)
{
    *nomem = 0;
    if (n < 2) return NULL;
    const void **s = nb_alloc((size_t)n * sizeof *s);
    if (!s) {
        *nomem = 1;
        return "";
    }
    memcpy(s, names, (size_t)n * sizeof *s);
    nbs_sort_ptrs(s, (size_t)n, cmp_str);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (strcmp(s[i - 1], s[i]) == 0) dup = s[i];
    nb_dealloc(s, (size_t)n * sizeof *s);
    return dup;
}

/* "[10,784]" (at most NB_MAX_DIMS extents) */
static const char *fmt_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t k = 0;
    k += (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && k < size; d++)
        k += (size_t)snprintf(buf + k, size - k, "%s%" PRId64, d ? "," : "", shape[d]);
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

/* Whether s is a decimal integer (optional '-', digits only) that fits int64_t. */
static int parse_i64(const char *s, int64_t *v)
{
    if (!s) return 0;
    const char *p = s + (*s == '-');
    if (!*p) return 0;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return 0;
    errno = 0;
    char *end;
    long long x = strtoll(s, &end, 10);
    if (errno == ERANGE || *end) return 0;
    *v = (int64_t)x;
    return 1;
}

/* ---- writing ---------------------------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len < IO_CHUNK ? len : IO_CHUNK);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* A tensor's elements, little-endian. */
static int write_tensor(int fd, const nb_tensor *t)
{
    size_t es = nb_dtype_size(nb_tensor_dtype(t)), bytes = (size_t)nb_tensor_numel(t) * es;
    if (bytes == 0) return 0;
    const unsigned char *p = nb_tensor_cdata(t);
    if (!host_big_endian()) return write_all(fd, p, bytes);
    unsigned char buf[1 << 16];
    while (bytes > 0) {
        size_t c = bytes < sizeof buf ? bytes : sizeof buf;
        memcpy(buf, p, c);
        swap_bytes(buf, c / es, es);
        if (write_all(fd, buf, c) != 0) return -1;
        p += c;
        bytes -= c;
    }
    return 0;
}

/* Permission bits for the file at path: an existing file's are kept; a new file gets 0666 less the
 * umask, which Linux reports in /proc/self/status (calling umask() to read it would race with other
 * threads). -1 where neither is known: mkstemp's 0600 stays. */
static int file_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return (int)(st.st_mode & 0777);
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[4096];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && ((r = read(fd, buf + len, sizeof buf - 1 - len)) > 0 || (r < 0 && errno == EINTR)))
        if (r > 0) len += (size_t)r;
    close(fd);
    buf[len] = 0;
    const char *u = strstr(buf, "\nUmask:");
    unsigned mask;
    return u && sscanf(u + 7, "%o", &mask) == 1 ? (int)(0666 & ~mask) : -1;
}

/* The folder part of path ("." when it has none) and its last component, in buf (size bytes). */
static int split_path(const char *path, char *buf, size_t size, const char **dir, const char **base)
{
    const char *slash = strrchr(path, '/');
    size_t len = !slash ? 1 : slash == path ? 1 : (size_t)(slash - path);
    if (len + 1 > size) return 0;
    if (slash) memcpy(buf, path, len);
    else buf[0] = '.';
    buf[len] = 0;
    *dir = buf;
    *base = slash ? slash + 1 : path;
    return 1;
}

/* fsync the folder holding path, so that the rename itself is durable. */
static nb_status sync_folder(const char *who, const char *path)
{
    size_t size = strlen(path) + 2;
    char *buf = nb_alloc(size);
    const char *dir = ".", *base = path;
    if (!buf) {
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    split_path(path, buf, size, &dir, &base);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err = 0;
    if (fd < 0) err = errno;
    else if (fsync(fd) != 0 && errno != EINVAL) err = errno; /* EINVAL: the file system cannot */
    if (fd >= 0) close(fd);
    if (err) nb_error_set(NB_ERR_IO, "%s: %s: written, but syncing its folder %s failed: %s", who, path, dir, strerror(err));
    nb_dealloc(buf, size);
    return err ? NB_ERR_IO : NB_OK;
}

/* ---- temporary files -------------------------------------------------------------------------- */

#define TMP_TAG ".tmp."
#define TMP_RAND 6 /* mkstemp's XXXXXX */

/* Whether name is "<base>.tmp.<pid>.XXXXXX", a temporary file of a save to base; its pid. */
static int is_our_temp(const char *name, const char *base, long *pid)
{
    size_t bl = strlen(base);
    if (strncmp(name, base, bl) != 0 || strncmp(name + bl, TMP_TAG, sizeof TMP_TAG - 1) != 0) return 0;
    const char *p = name + bl + sizeof TMP_TAG - 1, *digits = p;
    long v = 0;
    while (*p >= '0' && *p <= '9' && p - digits < 10) v = v * 10 + (*p++ - '0');
    if (p == digits || *p != '.' || v <= 0) return 0;
    p++;
    for (int k = 0; k < TMP_RAND; k++, p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) return 0;
    *pid = v;
    return *p == 0;
}

/* Remove the temporary file `name` in folder dirfd if its writer is gone: its process does not exist
 * and nobody holds its lock (a live writer keeps an exclusive flock on it until it has renamed it). */
static void remove_if_stale(int dirfd, const char *name, long pid)
{
    if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) return; /* alive (or not ours to ask) */
    int fd = openat(dirfd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat a, b;
    if (fstat(fd, &a) == 0 && S_ISREG(a.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
        fstatat(dirfd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        unlinkat(dirfd, name, 0);
    close(fd); /* releases the lock */
}

/* Remove the stale temporary files of saves to path (best effort: failures are ignored). */
static void remove_stale_temps(const char *path, char *buf, size_t size)
{
    const char *dir, *base;
    if (!split_path(path, buf, size, &dir, &base) || !*base) return;
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) return;
    long pid;
#ifdef __linux__
    /* getdents64 straight from the kernel: opendir would allocate behind nb_set_allocator's back */
    union {
        unsigned char bytes[8192];
        uint64_t align;
    } ents;
    for (;;) {
        long got = syscall(SYS_getdents64, dirfd, ents.bytes, sizeof ents.bytes);
        if (got <= 0) break;
        for (long off = 0; off < got;) {
            /* struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, char name[] */
            unsigned short reclen;
            memcpy(&reclen, ents.bytes + off + 16, sizeof reclen);
            const char *name = (const char *)ents.bytes + off + 19;
            if (reclen == 0) break;
            if (is_our_temp(name, base, &pid)) remove_if_stale(dirfd, name, pid);
            off += reclen;
        }
    }
#else
    int fd2 = dup(dirfd);
    DIR *d = fd2 >= 0 ? fdopendir(fd2) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (is_our_temp(de->d_name, base, &pid)) remove_if_stale(dirfd, de->d_name, pid);
    if (d) closedir(d);
    else if (fd2 >= 0) close(fd2);
#endif
    close(dirfd);
}

/* A new temporary file for a save to path, named into tmp ("<path>.tmp.<pid>.XXXXXX") and locked;
 * -1 with errno on failure. */
static int temp_create(const char *path, char *tmp, size_t size)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        snprintf(tmp, size, "%s" TMP_TAG "%ld.XXXXXX", path, (long)getpid());
        int fd = mkstemp(tmp);
        if (fd < 0) return -1;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        /* Locked before anything is written. Between mkstemp and the lock, a cleaner cannot take the file
         * for a dead writer's (our process is alive); if the lock or the name is gone anyway, start over. */
        struct stat a, b;
        int locked = flock(fd, LOCK_EX | LOCK_NB) == 0;
        if (!locked && errno != EWOULDBLOCK) locked = 1; /* a file system without locks: nobody can take it */
        if (locked && fstat(fd, &a) == 0 && stat(tmp, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
            return fd;
        close(fd);
    }
    errno = EEXIST;
    return -1;
}

/* head (length prefix and padded JSON) and the tensors in `order` into a temporary file next to
 * path, synced and renamed over path. On failure the temporary file is removed; stale ones of
 * killed saves to path are removed first. */
static nb_status write_atomic(const char *who, const char *path, const unsigned char *head, size_t head_len, int n,
                              nb_tensor *const *tensors, const int *order)
{
    size_t size = strlen(path) + sizeof TMP_TAG + 24 + TMP_RAND;
    char *tmp = nb_alloc(size);
    if (!tmp) {
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    remove_stale_temps(path, tmp, size);
    int mode = file_mode(path);
    int fd = temp_create(path, tmp, size);
    if (fd < 0) {
        nb_error_set(NB_ERR_IO, "%s: %s: cannot create the temporary file %s: %s", who, path, tmp, strerror(errno));
        nb_dealloc(tmp, size);
        return NB_ERR_IO;
    }
    const char *what;
    if (mode >= 0 && fchmod(fd, (mode_t)mode) != 0) {
        what = "setting the permissions of";
        goto fail;
    }
    what = "writing";
    if (write_all(fd, head, head_len) != 0) goto fail;
    for (int k = 0; k < n; k++)
        if (write_tensor(fd, tensors[order[k]]) != 0) goto fail;
    what = "syncing";
    if (fsync(fd) != 0) goto fail;
    /* renamed while still open and locked, so that no cleaner can take it for a dead writer's */
    what = "renaming";
    if (rename(tmp, path) != 0) goto fail;
    close(fd); /* the data is on disk already (fsync): a failing close loses nothing */
    nb_dealloc(tmp, size);
    return sync_folder(who, path);

fail:;
    int err = errno;
    unlink(tmp);
    close(fd);
    nb_error_set(NB_ERR_IO, "%s: %s: %s the temporary file %s: %s", who, path, what, tmp, strerror(err));
    nb_dealloc(tmp, size);
    return NB_ERR_IO;
}

/* ---- the header's JSON ------------------------------------------------------------------------ */

/* Appends to a buffer of known size; with buf NULL it only counts (the first of two passes). */
typedef struct jwriter {
    char *buf;
    size_t len;
} jwriter;

static void jw_raw(jwriter *w, const char *s, size_t n)
{
    if (w->buf) memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void jw_str(jwriter *w, const char *s) { jw_raw(w, s, strlen(s)); }

/* s as a JSON string: '"', '\\' and control characters escaped (the short forms where JSON has them,
 * \u00XX otherwise); everything else, UTF-8 included, as it is. */
static void jw_quoted(jwriter *w, const char *s)
{
    jw_raw(w, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        const char *esc = *p == '"' ? "\\\"" : *p == '\\' ? "\\\\" : *p == '\b' ? "\\b" : *p == '\f' ? "\\f"
                        : *p == '\n' ? "\\n" : *p == '\r' ? "\\r" : *p == '\t' ? "\\t" : NULL;
        char u[8];
        if (!esc && *p < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", *p);
            esc = u;
        }
        if (esc) jw_str(w, esc);
        else jw_raw(w, (const char *)p, 1);
    }
    jw_raw(w, "\"", 1);
}

static void jw_uint(jwriter *w, uint64_t v)
{
    char buf[24];
    jw_raw(w, buf, (size_t)snprintf(buf, sizeof buf, "%" PRIu64, v));
}

/* The header JSON of the tensors (in data order) and metadata, compact. */
static void header_json(jwriter *w, int n, const char *const *names, nb_tensor *const *tensors, const int *order,
                        int n_meta, const char *const *keys, const char *const *values)
{
    jw_str(w, "{");
    if (n_meta > 0) {
        jw_quoted(w, META_KEY);
        jw_str(w, ":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) jw_str(w, ",");
            jw_quoted(w, keys[i]);
            jw_str(w, ":");
            jw_quoted(w, values[i]);
        }
        jw_str(w, "}");
    }
    uint64_t offset = 0;
    for (int k = 0; k < n; k++) {
        const nb_tensor *t = tensors[order[k]];
        nb_dtype dt = nb_tensor_dtype(t);
        uint64_t bytes = (uint64_t)nb_tensor_numel(t) * nb_dtype_size(dt);
        if (k || n_meta > 0) jw_str(w, ",");
        jw_quoted(w, names[order[k]]);
        jw_str(w, ":{\"dtype\":");
        jw_quoted(w, st_dtype[dt]);
        jw_str(w, ",\"shape\":[");
        for (int d = 0; d < nb_tensor_ndim(t); d++) {
            if (d) jw_str(w, ",");
            jw_uint(w, (uint64_t)nb_tensor_dim(t, d));
        }
        jw_str(w, "],\"data_offsets\":[");
        jw_uint(w, offset);
        jw_str(w, ",");
        jw_uint(w, offset + bytes);
        jw_str(w, "]}");
        offset += bytes;
    }
    jw_str(w, "}");
}

static nb_status save(const char *who, const char *path, int n, const char *const *names, nb_tensor *const *tensors,
                      int n_meta, const char *const *keys, const char *const *values)
{
    if (!path || !*path || n < 0 || (n > 0 && (!names || !tensors)) || n_meta < 0 ||
        (n_meta > 0 && (!keys || !values))) {
        nb_error_set(NB_ERR_ARG, "%s: path, names, tensors or metadata missing", who);
        return NB_ERR_ARG;
    }
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *name = names[i];
        if (!name || !*name || strcmp(name, META_KEY) == 0 || !nbn_utf8_valid((const unsigned char *)name, strlen(name))) {
            nb_error_set(NB_ERR_ARG, "%s: %s: tensor %d: name %s%s%s is not allowed (empty, %s or not UTF-8)", who,
                         path, i, name ? "\"" : "", name ? name : "NULL", name ? "\"" : "", META_KEY);
            return NB_ERR_ARG;
        }
        if (!tensors[i] || nb_dtype_size(nb_tensor_dtype(tensors[i])) == 0) {
            nb_error_set(NB_ERR_ARG, "%s: %s: tensor %s is NULL or of no known dtype", who, path, name);
            return NB_ERR_ARG;
        }
        total += (uint64_t)nb_tensor_numel(tensors[i]) * nb_dtype_size(nb_tensor_dtype(tensors[i]));
    }
    if (total > MAX_JSON_INT) {
        nb_error_set(NB_ERR_ARG, "%s: %s: %" PRIu64 " bytes of data; at most 2^53 can be described", who, path, total);
        return NB_ERR_ARG;
    }
    for (int i = 0; i < n_meta; i++)
        if (!keys[i] || !values[i] || !nbn_utf8_valid((const unsigned char *)keys[i], strlen(keys[i])) ||
            !nbn_utf8_valid((const unsigned char *)values[i], strlen(values[i]))) {
            nb_error_set(NB_ERR_ARG, "%s: %s: metadata %d: key or value NULL or not UTF-8", who, path, i);
            return NB_ERR_ARG;
        }
    int nomem1, nomem2;
    const char *dup = find_duplicate(names, n, &nomem1), *dup_key = find_duplicate(keys, n_meta, &nomem2);
    if (nomem1 || nomem2) {
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    if (dup || dup_key) {
        nb_error_set(NB_ERR_ARG, "%s: %s: %s \"%s\" given twice", who, path, dup ? "tensor" : "metadata key",
                     dup ? dup : dup_key);
        return NB_ERR_ARG;
    }

    /* data order: 8-byte elements first, then 4-byte ones, each group in the caller's order */
    size_t order_size = (size_t)n * sizeof(int);
    int *order = nb_alloc(order_size), k = 0;
    if (!order) {
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if ((nb_dtype_size(nb_tensor_dtype(tensors[i])) == 8) == (pass == 0)) order[k++] = i;

    jwriter w = {NULL, 0};
    header_json(&w, n, names, tensors, order, n_meta, keys, values); /* measure */
    size_t len = w.len, padded = (len + 7) & ~(size_t)7;
    unsigned char *head = nb_alloc(8 + padded);
    if (!head) {
        nb_dealloc(order, order_size);
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    for (int b = 0; b < 8; b++) head[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    w = (jwriter){(char *)head + 8, 0};
    header_json(&w, n, names, tensors, order, n_meta, keys, values);
    memset(head + 8 + len, ' ', padded - len);
    nb_status st = write_atomic(who, path, head, 8 + padded, n, tensors, order);
    nb_dealloc(head, 8 + padded);
    nb_dealloc(order, order_size);
    return st;
}

nb_status nb_safetensors_save(const char *path, int n, const char *const *names, nb_tensor *const *tensors,
                              int n_meta, const char *const *meta_keys, const char *const *meta_values)
{
    return save("nb_safetensors_save", path, n, names, tensors, n_meta, meta_keys, meta_values);
}

nb_status nb_checkpoint_save(const char *path, const nb_params *params, const nb_optim *opt, int64_t step)
{
    const char *who = "nb_checkpoint_save";
    if (!path || !params) {
        nb_error_set(NB_ERR_ARG, "%s: path or params is NULL", who);
        return NB_ERR_ARG;
    }
    nb_optim_kind kind = opt ? nb_optim_get_kind(opt) : NB_SGD;
    if ((unsigned)kind >= NB_OPTIM_KIND_COUNT) {
        nb_error_set(NB_ERR_ARG, "%s: %s: unknown optimizer kind %d", who, path, (int)kind);
        return NB_ERR_ARG;
    }
    int np = nb_params_count(params), ns = opt ? nb_optim_state_count(opt) : 0, n = np + ns;
    /* each parameter's own update count, as one i64 vector */
    int64_t npar = opt ? nb_optim_param_count(opt) : 0;
    nb_tensor *psteps = npar ? nb_tensor_zeros(NB_I64, 1, &npar) : NULL;
    for (int i = 0; psteps && i < npar; i++) ((int64_t *)nb_tensor_data(psteps))[i] = nb_optim_param_steps(opt, i);
    if (npar && !psteps) return nb_error_code();
    /* the groups: their options (those a schedule or a user changes) and who is in which */
    int64_t ng = opt ? nb_optim_group_count(opt) : 0;
    nb_tensor *groups = ng ? nb_tensor_zeros(NB_F64, 2, (const int64_t[]){ng, GROUP_FIELDS}) : NULL;
    nb_tensor *pgroups = ng ? nb_tensor_zeros(NB_I64, 1, &npar) : NULL; /* with the groups, even empty */
    for (int k = 0; groups && k < ng; k++) {
        nb_optim_opts go;
        nb_optim_group_opts(opt, k, &go);
        const double row[GROUP_FIELDS] = {go.lr,    go.weight_decay, go.momentum, go.dampening,
                                          go.beta1, go.beta2,        go.eps,      nb_optim_group_frozen(opt, k)};
        memcpy((double *)nb_tensor_data(groups) + k * GROUP_FIELDS, row, sizeof row);
    }
    for (int i = 0; pgroups && i < npar; i++) ((int64_t *)nb_tensor_data(pgroups))[i] = nb_optim_param_group(opt, i);
    if (ng && (!groups || !pgroups)) {
        nb_tensor_free(psteps);
        nb_tensor_free(groups);
        nb_tensor_free(pgroups);
        return nb_error_code();
    }
    size_t nn = (size_t)n + 3; /* room for the counts and the groups */
    const char **names = nb_alloc(nn * sizeof *names);
    nb_tensor **tensors = nb_alloc(nn * sizeof *tensors);
    char **owned = nb_calloc((size_t)ns, sizeof *owned);
    nb_status st = names && tensors && owned ? NB_OK : NB_ERR_NOMEM;
    for (int i = 0; st == NB_OK && i < np; i++) {
        names[i] = nb_params_name(params, i);
        tensors[i] = nb_params_tensor(params, i);
    }
    for (int j = 0; st == NB_OK && j < ns; j++) {
        const char *s = nb_optim_state_name(opt, j);
        size_t len = s ? strlen(s) : 0;
        if (s && !(owned[j] = nb_alloc(sizeof OPTIM_PREFIX + len))) {
            st = NB_ERR_NOMEM;
            break;
        }
        if (s) {
            memcpy(owned[j], OPTIM_PREFIX, sizeof OPTIM_PREFIX - 1);
            memcpy(owned[j] + sizeof OPTIM_PREFIX - 1, s, len + 1);
        }
        names[np + j] = owned[j]; /* NULL for a nameless state: refused by save() */
        tensors[np + j] = nb_optim_state_tensor(opt, j);
    }
    if (st == NB_ERR_NOMEM) nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
    if (st == NB_OK && psteps) {
        names[n] = PARAM_STEPS;
        tensors[n++] = psteps;
    }
    if (st == NB_OK && groups) {
        names[n] = GROUPS;
        tensors[n++] = groups;
    }
    if (st == NB_OK && pgroups) {
        names[n] = PARAM_GROUPS;
        tensors[n++] = pgroups;
    }
    if (st == NB_OK) {
        char step_s[32], osteps_s[32];
        snprintf(step_s, sizeof step_s, "%" PRId64, step);
        snprintf(osteps_s, sizeof osteps_s, "%" PRId64, opt ? nb_optim_steps(opt) : 0);
        const char *keys[] = {"format", "step", "optimizer", "optimizer_steps"};
        const char *values[] = {"nabla-checkpoint", step_s, nb_optim_kind_name(kind), osteps_s};
        st = save(who, path, n, names, tensors, opt ? 4 : 2, keys, values);
    }
    for (int j = 0; owned && j < ns; j++)
        if (owned[j]) nb_dealloc(owned[j], strlen(owned[j]) + 1);
    nb_dealloc(owned, (size_t)ns * sizeof *owned);
    nb_dealloc(names, nn * sizeof *names);
    nb_dealloc(tensors, nn * sizeof *tensors);
    nb_tensor_free(psteps);
    nb_tensor_free(groups);
    nb_tensor_free(pgroups);
    return st;
}

/* ---- reading ---------------------------------------------------------------------------------- */

typedef struct entry {
    const char *name; /* decoded, in the loader's header buffer */
    nb_dtype dtype;
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    uint64_t begin, end; /* byte range in the data section */
    int used;            /* matched by a tensor of the model */
} entry;

typedef struct loader {
    const char *who, *path;
    int fd;
    uint64_t file_size, data_size;
    char *header; /* NUL-terminated copy [header_size]; its strings are decoded in place */
    size_t header_size;
    size_t pos;   /* the parser's position in header */
    entry *e;     /* [cap] */
    int n, cap;
    int has_meta;
    const char **meta; /* key, value, key, value... [2 * meta_cap] */
    int n_meta, meta_cap;
    entry **by_name;     /* sorted by name [n] */
    unsigned char *data; /* the data section [data_size] */
} loader;

static nb_status fail(const loader *L, nb_status st, const char *fmt, ...) NB_PRINTF(3, 4);
static nb_status fail(const loader *L, nb_status st, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nb_error_set(st, "%s: %s: %s", L->who, L->path, msg);
    return st;
}

static nb_status nomem(const loader *L) { return fail(L, NB_ERR_NOMEM, "out of memory"); }

/* len bytes from the file's current position; a short file is an I/O error (it changed size). */
static nb_status read_exact(const loader *L, void *buf, uint64_t len, const char *what)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = read(L->fd, p, len < IO_CHUNK ? (size_t)len : IO_CHUNK);
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail(L, NB_ERR_IO, "reading the %s: %s", what, strerror(errno));
        }
        if (r == 0) return fail(L, NB_ERR_IO, "reading the %s: the file ended early (did it change?)", what);
        p += r;
        len -= (uint64_t)r;
    }
    return NB_OK;
}

/* Opened without blocking (a FIFO would wait for a writer forever), then refused unless it is a
 * regular file; blocking reads from there on. */
static nb_status open_file(loader *L)
{
    L->fd = open(L->path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (L->fd < 0) return fail(L, NB_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(L->fd, &st) != 0) return fail(L, NB_ERR_IO, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fail(L, NB_ERR_IO, "not a regular file (%s)", S_ISDIR(st.st_mode) ? "a folder" : S_ISFIFO(st.st_mode) ?
                    "a FIFO" : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" : "a socket or another kind");
    int fl = fcntl(L->fd, F_GETFL);
    if (fl < 0 || fcntl(L->fd, F_SETFL, fl & ~O_NONBLOCK) != 0) return fail(L, NB_ERR_IO, "fcntl: %s", strerror(errno));
    L->file_size = (uint64_t)st.st_size;
    return NB_OK;
}

/* ---- the header parser: exactly the safetensors header, nothing more --------------------------- */

static void skip_ws(loader *L)
{
    const char *s = L->header;
    while (s[L->pos] == ' ' || s[L->pos] == '\t' || s[L->pos] == '\n' || s[L->pos] == '\r') L->pos++;
}

/* The next character after whitespace (0 at the end of the header). */
static char peek(loader *L)
{
    skip_ws(L);
    return L->header[L->pos];
}

/* The header is not JSON (of the format's shape): a message naming the byte. */
static nb_status syntax(const loader *L, const char *what)
{
    return fail(L, NB_ERR_FORMAT, "the header is not valid JSON (byte %zu of %zu: %s)", L->pos, L->header_size - 1,
                what);
}

/* Consume c (after whitespace), or fail naming what was expected. */
static nb_status expect(loader *L, char c, const char *what)
{
    skip_ws(L);
    if (L->header[L->pos] != c) return syntax(L, what);
    L->pos++;
    return NB_OK;
}

static int hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d == 16) return 0;
        *v = *v << 4 | d;
    }
    return 1;
}

/* A JSON string at the current position (after whitespace), decoded in place: *out points into the
 * header, NUL-terminated. Decoding never lengthens a string, so the decoded bytes overwrite only
 * what was read. */
static nb_status parse_string(loader *L, const char **out)
{
    skip_ws(L);
    char *s = L->header;
    if (s[L->pos] != '"') return syntax(L, "a string was expected");
    size_t start = ++L->pos, r = start, w = start;
    for (;;) {
        unsigned char c = (unsigned char)s[r];
        if (c == '"') break;
        if (c == 0) {
            L->pos = r;
            return syntax(L, "unterminated string");
        }
        if (c < 0x20) {
            L->pos = r;
            return syntax(L, "a control character in a string (it must be escaped)");
        }
        if (c != '\\') {
            s[w++] = s[r++];
            continue;
        }
        char e = s[r + 1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char to[] = "\"\\/\b\f\n\r\t";
            s[w++] = to[simple - "\"\\/bfnrt"];
            r += 2;
            continue;
        }
        unsigned cp, lo;
        L->pos = r;
        if (e != 'u') return syntax(L, "a bad escape in a string");
        if (!hex4(s + r + 2, &cp)) return syntax(L, "a bad \\u escape in a string");
        r += 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return syntax(L, "a lone low surrogate in a string");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s[r] != '\\' || s[r + 1] != 'u' || !hex4(s + r + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                return syntax(L, "a high surrogate without its low surrogate in a string");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            r += 6;
        }
        if (cp == 0) return syntax(L, "a string holds \\u0000");
        if (cp < 0x80) {
            s[w++] = (char)cp;
        } else if (cp < 0x800) {
            s[w++] = (char)(0xC0 | cp >> 6);
            s[w++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            s[w++] = (char)(0xE0 | cp >> 12);
            s[w++] = (char)(0x80 | (cp >> 6 & 0x3F));
            s[w++] = (char)(0x80 | (cp & 0x3F));
        } else {
            s[w++] = (char)(0xF0 | cp >> 18);
            s[w++] = (char)(0x80 | (cp >> 12 & 0x3F));
            s[w++] = (char)(0x80 | (cp >> 6 & 0x3F));
            s[w++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    L->pos = r + 1;
    s[w] = 0; /* w <= r: at most the closing quote is overwritten */
    *out = s + start;
    return NB_OK;
}

/* A JSON integer in [0, 2^53] at the current position: 1 when there is one (*v set), 0 when the
 * value there is something else (nothing consumed), -1 when it is an integer out of range. */
static int parse_uint(loader *L, uint64_t *v)
{
    skip_ws(L);
    const char *s = L->header + L->pos, *p = s;
    if (*p < '0' || *p > '9') return 0;
    if (*p == '0' && p[1] >= '0' && p[1] <= '9') return 0; /* a leading zero is not JSON */
    uint64_t x = 0;
    int big = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (x > MAX_JSON_INT) big = 1;
        else x = x * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.' || *p == 'e' || *p == 'E') return 0; /* a fraction or an exponent: not an integer */
    if (big || x > MAX_JSON_INT) return -1;
    L->pos += (size_t)(p - s);
    *v = x;
    return 1;
}

/* After a value inside an object or array: 1 at the closing bracket (consumed), 0 after a comma
 * (consumed), -1 (an error recorded) otherwise. */
static int next_item(loader *L, char close, nb_status *st)
{
    skip_ws(L);
    char c = L->header[L->pos];
    if (c == close || c == ',') {
        L->pos++;
        return c == close;
    }
    *st = syntax(L, close == '}' ? "',' or '}' was expected" : "',' or ']' was expected");
    return -1;
}

/* An array of integers in [0, 2^53]: count stored (at most max, the rest only counted) in v.
 * what names it in messages ("shape"). */
static nb_status parse_uints(loader *L, const char *name, const char *what, uint64_t *v, int max, int *count)
{
    char c = peek(L);
    if (c == 0) return syntax(L, "the header ends inside a value");
    if (c != '[')
        return fail(L, NB_ERR_FORMAT, "tensor %s: %s is not an array%s", name, what,
                    strcmp(what, "shape") == 0 ? "" : " of two integers in [0, 2^53]");
    L->pos++;
    *count = 0;
    skip_ws(L);
    if (L->header[L->pos] == ']') {
        L->pos++;
        return NB_OK;
    }
    for (;;) {
        uint64_t x;
        if (parse_uint(L, &x) != 1) {
            if (peek(L) == 0) return syntax(L, "the header ends inside an array");
            if (strcmp(what, "shape") == 0)
                return fail(L, NB_ERR_FORMAT, "tensor %s: shape entry %d is not an integer in [0, 2^53]", name, *count);
            return fail(L, NB_ERR_FORMAT, "tensor %s: %s is not an array of two integers in [0, 2^53]", name, what);
        }
        if (*count < max) v[*count] = x;
        (*count)++;
        nb_status st = NB_OK;
        int end = next_item(L, ']', &st);
        if (end < 0) return st;
        if (end) return NB_OK;
    }
}

/* One tensor entry: {"dtype": ..., "shape": [...], "data_offsets": [b, e]} in any order. */
static nb_status parse_entry(loader *L, const char *name, entry *e)
{
    memset(e, 0, sizeof *e);
    e->name = name;
    char c = peek(L);
    if (c == 0) return syntax(L, "the header ends where a value was expected");
    if (c != '{') return fail(L, NB_ERR_FORMAT, "tensor %s: the entry is not an object", name);
    L->pos++;
    int seen_dtype = 0, seen_shape = 0, seen_offs = 0, nd = 0, no = 0;
    const char *dtype = NULL;
    uint64_t shape[NB_MAX_DIMS], offs[2] = {0, 0};
    nb_status st;
    skip_ws(L);
    if (L->header[L->pos] == '}') L->pos++;
    else
        for (;;) {
            const char *key;
            if ((st = parse_string(L, &key)) || (st = expect(L, ':', "':' was expected"))) return st;
            int *seen = strcmp(key, "dtype") == 0 ? &seen_dtype : strcmp(key, "shape") == 0 ? &seen_shape
                      : strcmp(key, "data_offsets") == 0 ? &seen_offs : NULL;
            if (!seen) return fail(L, NB_ERR_FORMAT, "tensor %s: unknown key \"%s\"", name, key);
            if (*seen) return fail(L, NB_ERR_FORMAT, "tensor %s: key \"%s\" appears twice", name, key);
            *seen = 1;
            if (seen == &seen_dtype) {
                c = peek(L);
                if (c == 0) return syntax(L, "the header ends where a value was expected");
                if (c != '"') return fail(L, NB_ERR_FORMAT, "tensor %s: dtype is not a string", name);
                if ((st = parse_string(L, &dtype))) return st;
            } else if (seen == &seen_shape) {
                if ((st = parse_uints(L, name, "shape", shape, NB_MAX_DIMS, &nd))) return st;
            } else {
                if ((st = parse_uints(L, name, "data_offsets", offs, 2, &no))) return st;
            }
            int end = next_item(L, '}', &st);
            if (end < 0) return st;
            if (end) break;
        }

    if (!seen_dtype) return fail(L, NB_ERR_FORMAT, "tensor %s: no dtype", name);
    e->dtype = NB_DTYPE_COUNT;
    for (int d = 0; d < NB_DTYPE_COUNT; d++)
        if (strcmp(dtype, st_dtype[d]) == 0) e->dtype = (nb_dtype)d;
    if (e->dtype == NB_DTYPE_COUNT)
        return fail(L, NB_ERR_FORMAT, "tensor %s: dtype \"%s\" is not supported (F32, F64, I64)", name, dtype);

    if (!seen_shape) return fail(L, NB_ERR_FORMAT, "tensor %s: no shape", name);
    if (nd > NB_MAX_DIMS) return fail(L, NB_ERR_FORMAT, "tensor %s: shape has %d dims, at most %d", name, nd, NB_MAX_DIMS);
    uint64_t numel = 1, es = nb_dtype_size(e->dtype);
    e->ndim = nd;
    for (int d = 0; d < nd; d++) {
        uint64_t v = shape[d];
        if (v != 0 && numel > (uint64_t)INT64_MAX / es / v)
            return fail(L, NB_ERR_FORMAT, "tensor %s: the shape's size overflows", name);
        numel *= v;
        e->shape[d] = (int64_t)v;
    }
    char sbuf[192];
    fmt_shape(sbuf, sizeof sbuf, e->ndim, e->shape);

    if (!seen_offs) return fail(L, NB_ERR_FORMAT, "tensor %s: no data_offsets", name);
    if (no != 2) return fail(L, NB_ERR_FORMAT, "tensor %s: data_offsets is not an array of two integers in [0, 2^53]", name);
    uint64_t b = offs[0], en = offs[1];
    if (b > en) return fail(L, NB_ERR_FORMAT, "tensor %s: data_offsets [%" PRIu64 ",%" PRIu64 "] are reversed", name, b, en);
    if (en > L->data_size)
        return fail(L, NB_ERR_FORMAT, "tensor %s: data_offsets [%" PRIu64 ",%" PRIu64 "] reach past the %" PRIu64
                    " bytes of data", name, b, en, L->data_size);
    if (en - b != numel * es)
        return fail(L, NB_ERR_FORMAT, "tensor %s: data_offsets [%" PRIu64 ",%" PRIu64 "] hold %" PRIu64
                    " bytes; %s %s needs %" PRIu64, name, b, en, en - b, st_dtype[e->dtype], sbuf, numel * es);
    e->begin = b;
    e->end = en;
    return NB_OK;
}

/* The "__metadata__" object: string keys to string values. */
static nb_status parse_meta(loader *L)
{
    char c = peek(L);
    if (c == 0) return syntax(L, "the header ends where a value was expected");
    if (c != '{') return fail(L, NB_ERR_FORMAT, "%s is not an object", META_KEY);
    L->pos++;
    skip_ws(L);
    if (L->header[L->pos] == '}') {
        L->pos++;
        return NB_OK;
    }
    for (;;) {
        const char *key, *value;
        nb_status st;
        if ((st = parse_string(L, &key)) || (st = expect(L, ':', "':' was expected"))) return st;
        c = peek(L);
        if (c == 0) return syntax(L, "the header ends where a value was expected");
        if (c != '"') return fail(L, NB_ERR_FORMAT, "%s: \"%s\" is not a string", META_KEY, key);
        if ((st = parse_string(L, &value))) return st;
        if (L->n_meta == L->meta_cap) {
            int cap = L->meta_cap ? 2 * L->meta_cap : 8;
            const char **grown = nb_realloc(L->meta, 2 * (size_t)L->meta_cap * sizeof *grown, 2 * (size_t)cap * sizeof *grown);
            if (!grown) return nomem(L);
            L->meta = grown;
            L->meta_cap = cap;
        }
        L->meta[2 * L->n_meta] = key;
        L->meta[2 * L->n_meta + 1] = value;
        L->n_meta++;
        int end = next_item(L, '}', &st);
        if (end < 0) return st;
        if (end) return NB_OK;
    }
}

/* The length prefix and the header: every key parsed into entries and metadata. */
static nb_status read_header(loader *L)
{
    if (L->file_size < 8)
        return fail(L, NB_ERR_FORMAT, "%" PRIu64 " bytes, shorter than the 8-byte header length", L->file_size);
    unsigned char len8[8];
    nb_status st = read_exact(L, len8, 8, "header length");
    if (st) return st;
    uint64_t n = 0;
    for (int b = 0; b < 8; b++) n |= (uint64_t)len8[b] << (8 * b);
    if (n < 2) return fail(L, NB_ERR_FORMAT, "header length %" PRIu64 " is too small for a JSON object", n);
    if (n > L->file_size - 8)
        return fail(L, NB_ERR_FORMAT, "header length %" PRIu64 " exceeds the %" PRIu64 " bytes after it", n,
                    L->file_size - 8);
    if ((uint64_t)(size_t)(n + 1) != n + 1) return nomem(L);
    L->data_size = L->file_size - 8 - n;
    L->header = nb_alloc((size_t)n + 1);
    if (!L->header) return nomem(L);
    L->header_size = (size_t)n + 1;
    if ((st = read_exact(L, L->header, n, "header"))) return st;
    L->header[n] = 0;
    if (memchr(L->header, 0, (size_t)n)) return fail(L, NB_ERR_FORMAT, "the header contains a NUL byte");
    if (!nbn_utf8_valid((const unsigned char *)L->header, (size_t)n))
        return fail(L, NB_ERR_FORMAT, "the header is not valid UTF-8");

    skip_ws(L);
    if (L->header[L->pos] != '{') return fail(L, NB_ERR_FORMAT, "the header is not a JSON object");
    L->pos++;
    skip_ws(L);
    if (L->header[L->pos] == '}') L->pos++;
    else
        for (;;) {
            const char *key;
            if ((st = parse_string(L, &key)) || (st = expect(L, ':', "':' was expected"))) return st;
            if (strcmp(key, META_KEY) == 0) {
                if (L->has_meta) return fail(L, NB_ERR_FORMAT, "%s appears twice", META_KEY);
                L->has_meta = 1;
                if ((st = parse_meta(L))) return st;
            } else {
                if (L->n == L->cap) {
                    int cap = L->cap ? 2 * L->cap : 16;
                    entry *grown = nb_realloc(L->e, (size_t)L->cap * sizeof *grown, (size_t)cap * sizeof *grown);
                    if (!grown) return nomem(L);
                    L->e = grown;
                    L->cap = cap;
                }
                if ((st = parse_entry(L, key, &L->e[L->n]))) return st;
                L->n++;
            }
            int end = next_item(L, '}', &st);
            if (end < 0) return st;
            if (end) break;
        }
    skip_ws(L);
    if (L->header[L->pos])
        return fail(L, NB_ERR_FORMAT, "unexpected bytes after the header's JSON value (at byte %zu)", L->pos);
    L->by_name = nb_alloc((size_t)L->n * sizeof *L->by_name);
    if (!L->by_name) return nomem(L);
    for (int i = 0; i < L->n; i++) L->by_name[i] = &L->e[i];
    return NB_OK;
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static int cmp_entry_offset(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Names unique; byte ranges tile the data section exactly (no overlap, no gap, nothing after). */
static nb_status check_layout(loader *L)
{
    nbs_sort_ptrs((const void **)L->by_name, (size_t)L->n, cmp_entry_name);
    for (int i = 1; i < L->n; i++)
        if (strcmp(L->by_name[i - 1]->name, L->by_name[i]->name) == 0)
            return fail(L, NB_ERR_FORMAT, "tensor %s appears twice", L->by_name[i]->name);
    /* metadata keys unique */
    const char **keys = L->n_meta ? nb_alloc((size_t)L->n_meta * sizeof *keys) : NULL;
    if (L->n_meta && !keys) return nomem(L);
    for (int i = 0; i < L->n_meta; i++) keys[i] = L->meta[2 * i];
    int oom;
    const char *dup_key = find_duplicate(keys, L->n_meta, &oom);
    nb_dealloc(keys, (size_t)L->n_meta * sizeof *keys);
    if (oom) return nomem(L);
    if (dup_key) return fail(L, NB_ERR_FORMAT, "%s: \"%s\" appears twice", META_KEY, dup_key);

    entry **by_off = nb_alloc((size_t)L->n * sizeof *by_off);
    if (!by_off) return nomem(L);
    memcpy(by_off, L->by_name, (size_t)L->n * sizeof *by_off);
    nbs_sort_ptrs((const void **)by_off, (size_t)L->n, cmp_entry_offset);
    uint64_t pos = 0;
    const entry *prev = NULL; /* the entry ending at pos */
    nb_status st = NB_OK;
    for (int i = 0; i < L->n && !st; i++) {
        const entry *e = by_off[i];
        if (e->begin < pos)
            st = fail(L, NB_ERR_FORMAT, "tensor %s: bytes [%" PRIu64 ",%" PRIu64 ") overlap tensor %s's [%" PRIu64
                      ",%" PRIu64 ")", e->name, e->begin, e->end, prev ? prev->name : "?", prev ? prev->begin : 0, prev ? prev->end : 0);
        else if (e->begin > pos)
            st = fail(L, NB_ERR_FORMAT, "bytes [%" PRIu64 ",%" PRIu64 ") of the data belong to no tensor (a gap before %s)",
                      pos, e->begin, e->name);
        pos = e->end;
        if (e->end > e->begin) prev = e;
    }
    nb_dealloc(by_off, (size_t)L->n * sizeof *by_off);
    if (!st && pos != L->data_size)
        st = fail(L, NB_ERR_FORMAT, "bytes [%" PRIu64 ",%" PRIu64 ") after the last tensor belong to no tensor", pos,
                  L->data_size);
    return st;
}

static const char *meta_get(const loader *L, const char *key)
{
    for (int i = 0; i < L->n_meta; i++)
        if (strcmp(L->meta[2 * i], key) == 0) return L->meta[2 * i + 1];
    return NULL;
}

/* The entry named name (by_name is sorted), or NULL. */
static entry *find_entry(const loader *L, const char *name)
{
    int lo = 0, hi = L->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(L->by_name[mid]->name, name);
        if (c == 0) return L->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* Append name to a "a, b, c" list kept within size bytes (", ..." once it is full). */
static void list_add(char *list, size_t size, int *count, const char *name)
{
    size_t k = strlen(list);
    int full = k >= 3 && strcmp(list + k - 3, "...") == 0;
    if (!full && k + strlen(name) + 8 < size) snprintf(list + k, size - k, "%s%s", *count ? ", " : "", name);
    else if (!full) snprintf(list + k, size - k, "%s...", *count ? ", " : "");
    (*count)++;
}

/* Check one model tensor against its entry (NULL: missing, added to the list). */
static nb_status match(const loader *L, const char *name, const nb_tensor *t, const entry *e, char *missing,
                       size_t msize, int *n_missing)
{
    if (!e) {
        list_add(missing, msize, n_missing, name);
        return NB_OK;
    }
    if (!t || !nb_tensor_is_leaf(t)) return fail(L, NB_ERR_ARG, "tensor %s of the model is NULL or not a leaf", name);
    nb_dtype dt = nb_tensor_dtype(t);
    if (e->dtype != dt)
        return fail(L, NB_ERR_SHAPE, "tensor %s: dtype %s in the file, %s in the model", name, st_dtype[e->dtype],
                    (unsigned)dt < NB_DTYPE_COUNT ? st_dtype[dt] : "?");
    int same = e->ndim == nb_tensor_ndim(t);
    for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == nb_tensor_dim(t, d);
    if (!same) {
        char fs[192], ms[192];
        return fail(L, NB_ERR_SHAPE, "tensor %s: shape %s in the file, %s in the model", name,
                    fmt_shape(fs, sizeof fs, e->ndim, e->shape),
                    fmt_shape(ms, sizeof ms, nb_tensor_ndim(t), nb_tensor_shape(t)));
    }
    return NB_OK;
}

static void loader_free(loader *L)
{
    nb_dealloc(L->data, (size_t)L->data_size);
    nb_dealloc(L->by_name, (size_t)L->n * sizeof *L->by_name);
    nb_dealloc(L->e, (size_t)L->cap * sizeof *L->e);
    nb_dealloc(L->meta, 2 * (size_t)L->meta_cap * sizeof *L->meta);
    nb_dealloc(L->header, L->header_size);
    if (L->fd >= 0) close(L->fd);
}

/* The validated data section, in host byte order. Offsets from other writers need not be aligned:
 * values are read out of it with memcpy only. */
static nb_status read_data(loader *L)
{
    if ((uint64_t)(size_t)L->data_size == L->data_size) L->data = nb_alloc((size_t)L->data_size);
    nb_status st = L->data ? read_exact(L, L->data, L->data_size, "data") : nomem(L);
    if (!st && host_big_endian())
        for (int i = 0; i < L->n; i++)
            swap_bytes(L->data + L->e[i].begin, (size_t)(L->e[i].end - L->e[i].begin) / nb_dtype_size(L->e[i].dtype),
                       nb_dtype_size(L->e[i].dtype));
    return st;
}

nb_status nb_checkpoint_load(const char *path, nb_params *params, nb_optim *opt, int64_t *step)
{
    loader L = {.who = "nb_checkpoint_load", .path = path ? path : "(null)", .fd = -1};
    if (!path || !params || (opt && (unsigned)nb_optim_get_kind(opt) >= NB_OPTIM_KIND_COUNT)) {
        nb_error_set(NB_ERR_ARG, "nb_checkpoint_load: path or params is NULL, or the optimizer is invalid");
        return NB_ERR_ARG;
    }
    int np = nb_params_count(params), ns = opt ? nb_optim_state_count(opt) : 0;
    size_t nt = (size_t)np + (size_t)ns;
    entry **target = nb_calloc(nt, sizeof *target); /* the entry of each model tensor */
    size_t sname_size = 0;
    char *sname = NULL;
    nb_status st = target ? NB_OK : nomem(&L);
    if (!st) st = open_file(&L);
    if (!st) st = read_header(&L);
    if (!st) st = check_layout(&L);

    /* metadata: values present must be well-formed; those needed must be present */
    int64_t step_v = 0, osteps = 0;
    const char *step_s = NULL, *okind = NULL, *osteps_s = NULL;
    if (!st) {
        step_s = meta_get(&L, "step");
        okind = meta_get(&L, "optimizer");
        osteps_s = meta_get(&L, "optimizer_steps");
        int known = 0;
        for (int k = 0; okind && k < NB_OPTIM_KIND_COUNT; k++) known |= strcmp(okind, nb_optim_kind_name((nb_optim_kind)k)) == 0;
        if (step_s && !parse_i64(step_s, &step_v))
            st = fail(&L, NB_ERR_FORMAT, "metadata step \"%s\" is not an integer", step_s);
        else if (!step_s && step)
            st = fail(&L, NB_ERR_FORMAT, "no step in the metadata");
        else if (okind && !known)
            st = fail(&L, NB_ERR_FORMAT, "metadata optimizer \"%s\" is not a known optimizer", okind);
        else if (osteps_s && (!parse_i64(osteps_s, &osteps) || osteps < 0))
            st = fail(&L, NB_ERR_FORMAT, "metadata optimizer_steps \"%s\" is not a non-negative integer", osteps_s);
        else if (opt && !okind)
            st = fail(&L, NB_ERR_SHAPE, "the file has no optimizer state (saved without an optimizer)");
        else if (opt && strcmp(okind, nb_optim_kind_name(nb_optim_get_kind(opt))) != 0)
            st = fail(&L, NB_ERR_SHAPE, "optimizer %s in the file, %s given", okind, nb_optim_kind_name(nb_optim_get_kind(opt)));
        else if (opt && !osteps_s)
            st = fail(&L, NB_ERR_FORMAT, "optimizer %s but no optimizer_steps in the metadata", okind);
    }

    /* the model against the file: every tensor present with its dtype and shape, nothing extra */
    char missing[320] = "", extra[320] = "";
    int n_missing = 0, n_extra = 0;
    for (int i = 0; !st && i < np; i++) {
        const char *name = nb_params_name(params, i);
        target[i] = name ? find_entry(&L, name) : NULL;
        st = match(&L, name ? name : "(null)", nb_params_tensor(params, i), target[i], missing, sizeof missing,
                   &n_missing);
        if (target[i]) target[i]->used = 1;
    }
    for (int j = 0; !st && j < ns; j++) {
        const char *s = nb_optim_state_name(opt, j);
        size_t len = s ? strlen(s) : 0;
        char *grown = nb_realloc(sname, sname_size, sizeof OPTIM_PREFIX + len);
        if (!grown) {
            st = nomem(&L);
            break;
        }
        sname = grown;
        sname_size = sizeof OPTIM_PREFIX + len;
        snprintf(sname, sizeof OPTIM_PREFIX + len, "%s%s", OPTIM_PREFIX, s ? s : "");
        entry *e = target[np + j] = find_entry(&L, sname);
        if (e && e->used) e = target[np + j] = NULL; /* taken by a parameter of that name */
        st = match(&L, sname, nb_optim_state_tensor(opt, j), e, missing, sizeof missing, &n_missing);
        if (e) e->used = 1;
    }
    entry *psteps = opt && !st ? find_entry(&L, PARAM_STEPS) : NULL;
    if (psteps && !psteps->used) {
        int64_t npar = nb_optim_param_count(opt);
        if (psteps->dtype != NB_I64 || psteps->ndim != 1 || psteps->shape[0] != npar)
            st = fail(&L, NB_ERR_SHAPE, "tensor %s: expected i64 [%lld] (one count per optimized parameter)",
                      PARAM_STEPS, (long long)npar);
        psteps->used = 1;
    } else {
        psteps = NULL;
    }
    /* groups: both entries or neither; the same number of groups and the same parameters in each */
    entry *groups = opt && !st ? find_entry(&L, GROUPS) : NULL, *pgroups = opt && !st ? find_entry(&L, PARAM_GROUPS) : NULL;
    if (groups && groups->used) groups = NULL;
    if (pgroups && pgroups->used) pgroups = NULL;
    if (!st && (groups || pgroups)) {
        int64_t ng = nb_optim_group_count(opt), npar = nb_optim_param_count(opt);
        if (!groups || !pgroups)
            st = fail(&L, NB_ERR_FORMAT, "%s without %s", groups ? GROUPS : PARAM_GROUPS, groups ? PARAM_GROUPS : GROUPS);
        else if (groups->dtype != NB_F64 || groups->ndim != 2 || groups->shape[1] != GROUP_FIELDS)
            st = fail(&L, NB_ERR_FORMAT, "tensor %s: expected f64 [groups, %d]", GROUPS, GROUP_FIELDS);
        else if (groups->shape[0] != ng)
            st = fail(&L, NB_ERR_SHAPE, "%lld parameter groups in the file, %lld in the optimizer",
                      (long long)groups->shape[0], (long long)ng);
        else if (pgroups->dtype != NB_I64 || pgroups->ndim != 1 || pgroups->shape[0] != npar)
            st = fail(&L, NB_ERR_SHAPE, "tensor %s: expected i64 [%lld] (a group per optimized parameter)", PARAM_GROUPS,
                      (long long)npar);
        if (groups) groups->used = 1;
        if (pgroups) pgroups->used = 1;
    }
    for (int i = 0; !st && i < L.n; i++) {
        const entry *e = L.by_name[i];
        /* without an optimizer, its entries are skipped */
        if (!e->used && (opt || strncmp(e->name, OPTIM_PREFIX, sizeof OPTIM_PREFIX - 1) != 0))
            list_add(extra, sizeof extra, &n_extra, e->name);
    }
    if (!st && (n_missing || n_extra)) {
        if (n_missing && n_extra)
            st = fail(&L, NB_ERR_SHAPE, "%d tensor(s) of the model missing from the file (%s); %d tensor(s) in the "
                      "file not in the model (%s)", n_missing, missing, n_extra, extra);
        else if (n_missing)
            st = fail(&L, NB_ERR_SHAPE, "%d tensor(s) of the model missing from the file (%s)", n_missing, missing);
        else
            st = fail(&L, NB_ERR_SHAPE, "%d tensor(s) in the file not in the model (%s)", n_extra, extra);
    }

    /* everything checks out: read the data, then change the model */
    if (!st) st = read_data(&L);
    /* the counts' bytes, which another writer may have put at any offset: read with memcpy */
    const unsigned char *pcounts = !st && psteps ? L.data + psteps->begin : NULL;
    for (int64_t i = 0; pcounts && !st && i < psteps->shape[0]; i++) {
        int64_t c;
        memcpy(&c, pcounts + 8 * i, sizeof c);
        if (c < 0)
            st = fail(&L, NB_ERR_FORMAT, "tensor %s: count %lld of parameter %lld is negative", PARAM_STEPS,
                      (long long)c, (long long)i);
    }
    /* the groups' options go first: checked as nb_optim_group_set_opts checks them, and put back if
     * any group's are refused */
    if (!st && groups) {
        /* read with memcpy: another writer may have put them at any offset */
        const unsigned char *rows = L.data + groups->begin, *pg = L.data + pgroups->begin;
        for (int i = 0; !st && i < nb_optim_param_count(opt); i++) {
            int64_t gi;
            memcpy(&gi, pg + 8 * (size_t)i, sizeof gi);
            if (gi != nb_optim_param_group(opt, i))
                st = fail(&L, NB_ERR_SHAPE, "parameter %d is in group %lld in the file, %d in the optimizer", i,
                          (long long)gi, nb_optim_param_group(opt, i));
        }
        int ng = nb_optim_group_count(opt), k = 0;
        nb_optim_opts *old = !st ? nb_calloc((size_t)ng, sizeof *old) : NULL;
        int *old_frozen = !st ? nb_calloc((size_t)ng, sizeof *old_frozen) : NULL;
        if (!st && (!old || !old_frozen)) st = nomem(&L);
        for (; !st && k < ng; k++) {
            double r[GROUP_FIELDS];
            memcpy(r, rows + (size_t)k * GROUP_FIELDS * sizeof(double), sizeof r);
            nb_optim_group_opts(opt, k, &old[k]);
            old_frozen[k] = nb_optim_group_frozen(opt, k);
            nb_optim_opts go = old[k];
            go.lr = r[0], go.weight_decay = r[1], go.momentum = r[2], go.dampening = r[3];
            go.beta1 = r[4], go.beta2 = r[5], go.eps = r[6];
            if (r[7] != 0 && r[7] != 1)
                st = fail(&L, NB_ERR_FORMAT, "tensor %s: group %d: frozen is %g, not 0 or 1", GROUPS, k, r[7]);
            else if (nb_optim_group_set_opts(opt, k, &go) != NB_OK)
                st = fail(&L, NB_ERR_SHAPE, "tensor %s: group %d: %s", GROUPS, k, nb_error_message());
            else
                nb_optim_group_set_frozen(opt, k, r[7] != 0);
        }
        if (st && old && old_frozen)
            for (int j = 0; j < k; j++) { /* put back what was changed (valid before, so accepted again) */
                nb_optim_group_set_opts(opt, j, &old[j]);
                nb_optim_group_set_frozen(opt, j, old_frozen[j]);
            }
        nb_dealloc(old, (size_t)ng * sizeof *old);
        nb_dealloc(old_frozen, (size_t)ng * sizeof *old_frozen);
    }
    /* The only call below that could fail on checked input is set_steps (steps >= 0 is checked), so
     * it goes first: after it, the copies cannot fail (every target is a leaf of the right size). */
    if (!st && opt) st = nb_optim_set_steps(opt, osteps);
    for (int i = 0; pcounts && !st && i < nb_optim_param_count(opt); i++) {
        int64_t c;
        memcpy(&c, pcounts + 8 * (size_t)i, sizeof c);
        st = nb_optim_set_param_steps(opt, i, c);
    }
    for (int i = 0; !st && i < np + ns; i++) {
        nb_tensor *t = i < np ? nb_params_tensor(params, i) : nb_optim_state_tensor(opt, i - np);
        if (target[i]->end > target[i]->begin) st = nb_tensor_copy_from(t, L.data + target[i]->begin);
    }
    if (!st && step) *step = step_v;

    nb_dealloc(sname, sname_size);
    nb_dealloc(target, nt * sizeof *target);
    loader_free(&L);
    return st;
}

/* ---- reading any safetensors file ------------------------------------------------------------- */

struct nb_safetensors {
    int n, n_meta;
    char **names;        /* [n], in the file's order */
    nb_tensor **tensors; /* [n], owned (claimed) */
    char **keys, **values; /* [n_meta] */
};

void nb_safetensors_free(nb_safetensors *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) {
        if (f->names[i]) nb_dealloc(f->names[i], strlen(f->names[i]) + 1);
        if (f->tensors[i]) nb_tensor_unclaim(f->tensors[i], f);
        nb_tensor_free(f->tensors[i]);
    }
    for (int i = 0; i < f->n_meta; i++) {
        if (f->keys[i]) nb_dealloc(f->keys[i], strlen(f->keys[i]) + 1);
        if (f->values[i]) nb_dealloc(f->values[i], strlen(f->values[i]) + 1);
    }
    nb_dealloc(f->names, (size_t)f->n * sizeof *f->names);
    nb_dealloc(f->tensors, (size_t)f->n * sizeof *f->tensors);
    nb_dealloc(f->keys, (size_t)f->n_meta * sizeof *f->keys);
    nb_dealloc(f->values, (size_t)f->n_meta * sizeof *f->values);
    nb_dealloc(f, sizeof *f);
}

nb_status nb_safetensors_read(const char *path, nb_safetensors **out)
{
    loader L = {.who = "nb_safetensors_read", .path = path ? path : "(null)", .fd = -1};
    if (!path || !out) {
        nb_error_set(NB_ERR_ARG, "nb_safetensors_read: path or out is NULL");
        return NB_ERR_ARG;
    }
    *out = NULL;
    nb_status st = open_file(&L);
    if (!st) st = read_header(&L);
    if (!st) st = check_layout(&L);
    if (!st) st = read_data(&L);
    nb_safetensors *f = st ? NULL : nb_calloc(1, sizeof *f);
    if (!st && !f) st = nomem(&L);
    if (!st) {
        /* the arrays have their full size from here on (n and n_meta), entries NULL until filled */
        f->n = L.n;
        f->n_meta = L.n_meta;
        f->names = nb_calloc((size_t)L.n, sizeof *f->names);
        f->tensors = nb_calloc((size_t)L.n, sizeof *f->tensors);
        f->keys = nb_calloc((size_t)L.n_meta, sizeof *f->keys);
        f->values = nb_calloc((size_t)L.n_meta, sizeof *f->values);
        if (!f->names || !f->tensors || !f->keys || !f->values) {
            st = nomem(&L);
            nb_dealloc(f->names, (size_t)L.n * sizeof *f->names);
            nb_dealloc(f->tensors, (size_t)L.n * sizeof *f->tensors);
            nb_dealloc(f->keys, (size_t)L.n_meta * sizeof *f->keys);
            nb_dealloc(f->values, (size_t)L.n_meta * sizeof *f->values);
            *f = (nb_safetensors){0};
        }
    }
    for (int i = 0; !st && i < L.n; i++) {
        const entry *e = &L.e[i];
        if (!(f->names[i] = nb_strdup(e->name))) {
            st = nomem(&L);
            break;
        }
        /* every byte is copied in below: no need to zero it first */
        if (!(f->tensors[i] = nb_tensor_empty(e->dtype, e->ndim, e->shape))) {
            st = nb_error_code();
            break;
        }
        nb_tensor_claim(f->tensors[i], f); /* a new leaf: cannot fail */
        if (e->end > e->begin) st = nb_tensor_copy_from(f->tensors[i], L.data + e->begin);
    }
    for (int i = 0; !st && i < L.n_meta; i++)
        if (!(f->keys[i] = nb_strdup(L.meta[2 * i])) || !(f->values[i] = nb_strdup(L.meta[2 * i + 1]))) st = nomem(&L);
    loader_free(&L);
    if (st) {
        nb_safetensors_free(f);
        return st;
    }
    *out = f;
    return NB_OK;
}

int nb_safetensors_count(const nb_safetensors *f) { return f ? f->n : 0; }
const char *nb_safetensors_name(const nb_safetensors *f, int i) { return f && i >= 0 && i < f->n ? f->names[i] : NULL; }
nb_tensor *nb_safetensors_tensor(const nb_safetensors *f, int i) { return f && i >= 0 && i < f->n ? f->tensors[i] : NULL; }

nb_tensor *nb_safetensors_find(const nb_safetensors *f, const char *name)
{
    for (int i = 0; f && name && i < f->n; i++)
        if (strcmp(f->names[i], name) == 0) return f->tensors[i];
    return NULL;
}

const char *nb_safetensors_meta(const nb_safetensors *f, const char *key)
{
    for (int i = 0; f && key && i < f->n_meta; i++)
        if (strcmp(f->keys[i], key) == 0) return f->values[i];
    return NULL;
}
