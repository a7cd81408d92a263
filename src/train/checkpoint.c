/* Checkpoints as safetensors files. Written against nabla.h only, like user code; the JSON header is
 * written and parsed with cJSON.
 *
 * Layout: an 8-byte little-endian header length N; N bytes of UTF-8 JSON mapping each tensor name
 * to {"dtype": "F32"|"F64"|"I64", "shape": [...], "data_offsets": [begin, end]} (offsets into the
 * data section, which follows the header), plus an optional "__metadata__" object of strings; the
 * header is padded with spaces so that the data section starts 8-byte aligned; then the raw
 * little-endian data. The writer puts 8-byte tensors before 4-byte ones (in the caller's order within
 * each group), so every tensor lies naturally aligned in the file.
 *
 * Statuses of nb_checkpoint_load, one per kind of failure:
 *   NB_ERR_ARG     path or params NULL;
 *   NB_ERR_IO      the file cannot be opened or read (missing, a folder, a read error, it shrank);
 *   NB_ERR_NOMEM   an allocation failed;
 *   NB_ERR_FORMAT  the file is not a valid safetensors file (sizes, JSON, entries, offsets, metadata
 *                  values), or it lacks the step metadata that was asked for;
 *   NB_ERR_SHAPE   a valid file that does not fit the model: tensors missing or extra, dtypes or
 *                  shapes that differ, no optimizer state or another optimizer's.
 */
#define _POSIX_C_SOURCE 200809L

#include <nabla.h>

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(__GNUC__)
#define NB_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define NB_PRINTF(f, a)
#endif

/* safetensors' names of nabla's dtypes */
static const char *const st_dtype[] = {[NB_F32] = "F32", [NB_F64] = "F64", [NB_I64] = "I64"};
_Static_assert(sizeof st_dtype / sizeof st_dtype[0] == NB_DTYPE_COUNT, "a safetensors name per dtype");


#define META_KEY "__metadata__"
#define OPTIM_PREFIX "optim."
/* the optimizer's per-parameter update counts (i64 [parameters]); files without it give every
 * parameter the optimizer's count */
#define PARAM_STEPS OPTIM_PREFIX "param_steps"
/* the optimizer's parameter groups: one row per group (f64 [groups, GROUP_FIELDS]: lr, weight_decay,
 * momentum, dampening, beta1, beta2, eps, frozen) and each parameter's group (i64 [parameters]);
 * files without them (saved before groups existed) leave the optimizer's groups as they are */
#define GROUPS OPTIM_PREFIX "groups"
#define PARAM_GROUPS OPTIM_PREFIX "param_groups"
#define GROUP_FIELDS 8
/* cJSON keeps numbers as doubles, exact up to 2^53: offsets and extents are limited to that. */
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

/* Whether s[0, len) is well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), as the format requires of the header. */
static int utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i], cp, min;
        size_t more;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0) {
            more = 1;
            cp = c & 0x1F;
            min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            more = 2;
            cp = c & 0x0F;
            min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            more = 3;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return 0;
        }
        if (len - i <= more) return 0;
        for (size_t k = 1; k <= more; k++) {
            unsigned cc = s[i + k];
            if ((cc & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += more + 1;
    }
    return 1;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that occurs twice among n (NULL if none; "" when out of memory, with *nomem set). */
static const char *find_duplicate(const char *const *names, int n, int *nomem)
{
    *nomem = 0;
    if (n < 2) return NULL;
    const char **s = malloc((size_t)n * sizeof *s);
    if (!s) {
        *nomem = 1;
        return "";
    }
    memcpy(s, names, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_str_ptr);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (strcmp(s[i - 1], s[i]) == 0) dup = s[i];
    free(s);
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
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    unsigned mask;
    int mode = -1;
    while (mode < 0 && fgets(line, sizeof line, f))
        if (sscanf(line, "Umask: %o", &mask) == 1) mode = (int)(0666 & ~mask);
    fclose(f);
    return mode;
}

/* fsync the folder holding path, so that the rename itself is durable. */
static nb_status sync_folder(const char *who, const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t len = !slash ? 1 : slash == path ? 1 : (size_t)(slash - path);
    char *dir = malloc(len + 1);
    if (!dir) {
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    if (slash) memcpy(dir, path, len);
    else dir[0] = '.';
    dir[len] = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err = 0;
    if (fd < 0) err = errno;
    else if (fsync(fd) != 0 && errno != EINVAL) err = errno; /* EINVAL: the file system cannot */
    if (fd >= 0) close(fd);
    if (err) nb_error_set(NB_ERR_IO, "%s: %s: written, but syncing its folder %s failed: %s", who, path, dir, strerror(err));
    free(dir);
    return err ? NB_ERR_IO : NB_OK;
}

/* head (length prefix and padded JSON) and the tensors in `order` into a temporary file next to
 * path, synced and renamed over path. On failure the temporary file is removed. */
static nb_status write_atomic(const char *who, const char *path, const unsigned char *head, size_t head_len, int n,
                              nb_tensor *const *tensors, const int *order)
{
    static const char suffix[] = ".tmp.XXXXXX";
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof suffix);
    if (!tmp) {
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);
    int mode = file_mode(path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        nb_error_set(NB_ERR_IO, "%s: %s: cannot create the temporary file %s: %s", who, path, tmp, strerror(errno));
        free(tmp);
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
    what = "closing";
    int closed = close(fd);
    fd = -1;
    if (closed != 0) goto fail;
    what = "renaming";
    if (rename(tmp, path) != 0) goto fail;
    free(tmp);
    return sync_folder(who, path);

fail:;
    int err = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    nb_error_set(NB_ERR_IO, "%s: %s: %s the temporary file %s: %s", who, path, what, tmp, strerror(err));
    free(tmp);
    return NB_ERR_IO;
}

static int add_int(cJSON *array, uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    cJSON *raw = cJSON_CreateRaw(buf); /* exact integers, never "1e+15" */
    return raw && cJSON_AddItemToArray(array, raw);
}

/* The header JSON, unpadded (free with cJSON_free); NULL when out of memory. */
static char *header_json(int n, const char *const *names, nb_tensor *const *tensors, const int *order, int n_meta,
                         const char *const *keys, const char *const *values)
{
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, META_KEY);
        ok = meta != NULL;
        for (int i = 0; ok && i < n_meta; i++) ok = cJSON_AddStringToObject(meta, keys[i], values[i]) != NULL;
    }
    uint64_t offset = 0;
    for (int k = 0; ok && k < n; k++) {
        const nb_tensor *t = tensors[order[k]];
        nb_dtype dt = nb_tensor_dtype(t);
        uint64_t bytes = (uint64_t)nb_tensor_numel(t) * nb_dtype_size(dt);
        cJSON *e = cJSON_AddObjectToObject(root, names[order[k]]);
        cJSON *shape = NULL, *offs = NULL;
        ok = e && cJSON_AddStringToObject(e, "dtype", st_dtype[dt]) && (shape = cJSON_AddArrayToObject(e, "shape"));
        for (int d = 0; ok && d < nb_tensor_ndim(t); d++) ok = add_int(shape, (uint64_t)nb_tensor_dim(t, d));
        ok = ok && (offs = cJSON_AddArrayToObject(e, "data_offsets")) && add_int(offs, offset) &&
             add_int(offs, offset + bytes);
        offset += bytes;
    }
    char *s = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
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
        if (!name || !*name || strcmp(name, META_KEY) == 0 || !utf8_valid((const unsigned char *)name, strlen(name))) {
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
        if (!keys[i] || !values[i] || !utf8_valid((const unsigned char *)keys[i], strlen(keys[i])) ||
            !utf8_valid((const unsigned char *)values[i], strlen(values[i]))) {
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
    int *order = malloc(((size_t)n + 1) * sizeof *order), k = 0;
    if (!order) {
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if ((nb_dtype_size(nb_tensor_dtype(tensors[i])) == 8) == (pass == 0)) order[k++] = i;

    char *json = header_json(n, names, tensors, order, n_meta, keys, values);
    size_t len = json ? strlen(json) : 0, padded = (len + 7) & ~(size_t)7;
    unsigned char *head = json ? malloc(8 + padded) : NULL;
    if (!head) {
        cJSON_free(json);
        free(order);
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, path);
        return NB_ERR_NOMEM;
    }
    for (int b = 0; b < 8; b++) head[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    memcpy(head + 8, json, len);
    memset(head + 8 + len, ' ', padded - len);
    cJSON_free(json);
    nb_status st = write_atomic(who, path, head, 8 + padded, n, tensors, order);
    free(head);
    free(order);
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
    nb_tensor *pgroups = npar ? nb_tensor_zeros(NB_I64, 1, &npar) : NULL;
    for (int k = 0; groups && k < ng; k++) {
        nb_optim_opts go;
        nb_optim_group_opts(opt, k, &go);
        const double row[GROUP_FIELDS] = {go.lr,    go.weight_decay, go.momentum, go.dampening,
                                          go.beta1, go.beta2,        go.eps,      nb_optim_group_frozen(opt, k)};
        memcpy((double *)nb_tensor_data(groups) + k * GROUP_FIELDS, row, sizeof row);
    }
    for (int i = 0; pgroups && i < npar; i++) ((int64_t *)nb_tensor_data(pgroups))[i] = nb_optim_param_group(opt, i);
    if ((ng && !groups) || (npar && !pgroups)) {
        nb_tensor_free(psteps);
        nb_tensor_free(groups);
        nb_tensor_free(pgroups);
        return nb_error_code();
    }
    const char **names = malloc(((size_t)n + 4) * sizeof *names);
    nb_tensor **tensors = malloc(((size_t)n + 4) * sizeof *tensors);
    char **owned = calloc((size_t)ns + 1, sizeof *owned);
    nb_status st = names && tensors && owned ? NB_OK : NB_ERR_NOMEM;
    for (int i = 0; st == NB_OK && i < np; i++) {
        names[i] = nb_params_name(params, i);
        tensors[i] = nb_params_tensor(params, i);
    }
    for (int j = 0; st == NB_OK && j < ns; j++) {
        const char *s = nb_optim_state_name(opt, j);
        size_t len = s ? strlen(s) : 0;
        if (s && !(owned[j] = malloc(sizeof OPTIM_PREFIX + len))) {
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
    for (int j = 0; owned && j < ns; j++) free(owned[j]);
    free(owned);
    free(names);
    free(tensors);
    nb_tensor_free(psteps);
    nb_tensor_free(groups);
    nb_tensor_free(pgroups);
    return st;
}

/* ---- reading ---------------------------------------------------------------------------------- */

typedef struct entry {
    const char *name; /* the cJSON key */
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
    char *header; /* NUL-terminated copy */
    cJSON *root;
    const cJSON *meta;
    entry *e;
    int n;
    entry **by_name;     /* sorted by name */
    unsigned char *data; /* the data section */
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

static nb_status open_file(loader *L)
{
    L->fd = open(L->path, O_RDONLY | O_CLOEXEC);
    if (L->fd < 0) return fail(L, NB_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(L->fd, &st) != 0) return fail(L, NB_ERR_IO, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail(L, NB_ERR_IO, "not a regular file");
    L->file_size = (uint64_t)st.st_size;
    return NB_OK;
}

/* The length prefix and the JSON header, parsed into an object. */
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
    L->header = malloc((size_t)n + 1);
    if (!L->header) return nomem(L);
    if ((st = read_exact(L, L->header, n, "header"))) return st;
    L->header[n] = 0;
    if (memchr(L->header, 0, (size_t)n)) return fail(L, NB_ERR_FORMAT, "the header contains a NUL byte");
    if (!utf8_valid((const unsigned char *)L->header, (size_t)n))
        return fail(L, NB_ERR_FORMAT, "the header is not valid UTF-8");
    const char *end = NULL;
    L->root = cJSON_ParseWithOpts(L->header, &end, 0);
    if (!L->root)
        return fail(L, NB_ERR_FORMAT, "the header is not valid JSON (error at byte %td of %" PRIu64 ")",
                    end ? end - L->header : (ptrdiff_t)0, n);
    for (const char *p = end; *p; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return fail(L, NB_ERR_FORMAT, "unexpected bytes after the header's JSON value (at byte %td)", p - L->header);
    if (!cJSON_IsObject(L->root)) return fail(L, NB_ERR_FORMAT, "the header is not a JSON object");
    return NB_OK;
}

/* A JSON number that is a whole number in [0, 2^53]. */
static int json_uint(const cJSON *j, uint64_t *v)
{
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= (double)MAX_JSON_INT) || (double)(uint64_t)d != d) return 0;
    *v = (uint64_t)d;
    return 1;
}

static nb_status parse_entry(loader *L, const cJSON *c, entry *e)
{
    const char *name = c->string;
    e->name = name;
    if (!cJSON_IsObject(c)) return fail(L, NB_ERR_FORMAT, "tensor %s: the entry is not an object", name);
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL, *k;
    cJSON_ArrayForEach(k, c)
    {
        const cJSON **slot = strcmp(k->string, "dtype") == 0 ? &dtype
                           : strcmp(k->string, "shape") == 0 ? &shape
                           : strcmp(k->string, "data_offsets") == 0 ? &offs : NULL;
        if (!slot) return fail(L, NB_ERR_FORMAT, "tensor %s: unknown key \"%s\"", name, k->string);
        if (*slot) return fail(L, NB_ERR_FORMAT, "tensor %s: key \"%s\" appears twice", name, k->string);
        *slot = k;
    }
    if (!dtype) return fail(L, NB_ERR_FORMAT, "tensor %s: no dtype", name);
    if (!cJSON_IsString(dtype)) return fail(L, NB_ERR_FORMAT, "tensor %s: dtype is not a string", name);
    e->dtype = NB_DTYPE_COUNT;
    for (int d = 0; d < NB_DTYPE_COUNT; d++)
        if (strcmp(dtype->valuestring, st_dtype[d]) == 0) e->dtype = (nb_dtype)d;
    if (e->dtype == NB_DTYPE_COUNT)
        return fail(L, NB_ERR_FORMAT, "tensor %s: dtype \"%s\" is not supported (F32, F64, I64)", name,
                    dtype->valuestring);

    if (!shape) return fail(L, NB_ERR_FORMAT, "tensor %s: no shape", name);
    if (!cJSON_IsArray(shape)) return fail(L, NB_ERR_FORMAT, "tensor %s: shape is not an array", name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > NB_MAX_DIMS) return fail(L, NB_ERR_FORMAT, "tensor %s: shape has %d dims, at most %d", name, nd, NB_MAX_DIMS);
    uint64_t numel = 1, es = nb_dtype_size(e->dtype);
    const cJSON *x;
    e->ndim = 0;
    cJSON_ArrayForEach(x, shape)
    {
        uint64_t v;
        if (!json_uint(x, &v))
            return fail(L, NB_ERR_FORMAT, "tensor %s: shape entry %d is not an integer in [0, 2^53]", name, e->ndim);
        if (v != 0 && numel > (uint64_t)INT64_MAX / es / v)
            return fail(L, NB_ERR_FORMAT, "tensor %s: the shape's size overflows", name);
        numel *= v;
        e->shape[e->ndim++] = (int64_t)v;
    }
    char sbuf[192];
    fmt_shape(sbuf, sizeof sbuf, e->ndim, e->shape);

    uint64_t b, en;
    if (!offs) return fail(L, NB_ERR_FORMAT, "tensor %s: no data_offsets", name);
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(cJSON_GetArrayItem(offs, 0), &b) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &en))
        return fail(L, NB_ERR_FORMAT, "tensor %s: data_offsets is not an array of two integers in [0, 2^53]", name);
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

/* Every key of the header: the metadata and the tensor entries. */
static nb_status parse_entries(loader *L)
{
    int count = cJSON_GetArraySize(L->root);
    L->e = calloc((size_t)count + 1, sizeof *L->e);
    L->by_name = calloc((size_t)count + 1, sizeof *L->by_name);
    if (!L->e || !L->by_name) return nomem(L);
    const cJSON *c, *m;
    cJSON_ArrayForEach(c, L->root)
    {
        if (strcmp(c->string, META_KEY) == 0) {
            if (L->meta) return fail(L, NB_ERR_FORMAT, "%s appears twice", META_KEY);
            if (!cJSON_IsObject(c)) return fail(L, NB_ERR_FORMAT, "%s is not an object", META_KEY);
            cJSON_ArrayForEach(m, c) if (!cJSON_IsString(m))
                return fail(L, NB_ERR_FORMAT, "%s: \"%s\" is not a string", META_KEY, m->string);
            L->meta = c;
            continue;
        }
        nb_status st = parse_entry(L, c, &L->e[L->n]);
        if (st) return st;
        L->by_name[L->n] = &L->e[L->n];
        L->n++;
    }
    return NB_OK;
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp((*(const entry *const *)a)->name, (*(const entry *const *)b)->name);
}

static int cmp_entry_offset(const void *a, const void *b)
{
    const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The first metadata key that occurs twice, in *dup (NULL if none). */
static nb_status meta_duplicate(const loader *L, const char **dup)
{
    int nk = 0, oom;
    const char **keys = malloc(((size_t)cJSON_GetArraySize(L->meta) + 1) * sizeof *keys);
    if (!keys) return NB_ERR_NOMEM;
    const cJSON *m;
    cJSON_ArrayForEach(m, L->meta) keys[nk++] = m->string;
    *dup = find_duplicate(keys, nk, &oom);
    free(keys);
    return oom ? NB_ERR_NOMEM : NB_OK;
}

/* Names unique; byte ranges tile the data section exactly (no overlap, no gap, nothing after). */
static nb_status check_layout(loader *L)
{
    qsort(L->by_name, (size_t)L->n, sizeof *L->by_name, cmp_entry_name);
    for (int i = 1; i < L->n; i++)
        if (strcmp(L->by_name[i - 1]->name, L->by_name[i]->name) == 0)
            return fail(L, NB_ERR_FORMAT, "tensor %s appears twice", L->by_name[i]->name);
    const char *dup_key = NULL;
    if (meta_duplicate(L, &dup_key) != NB_OK) return nomem(L);
    if (dup_key) return fail(L, NB_ERR_FORMAT, "%s: \"%s\" appears twice", META_KEY, dup_key);

    entry **by_off = malloc(((size_t)L->n + 1) * sizeof *by_off);
    if (!by_off) return nomem(L);
    memcpy(by_off, L->by_name, (size_t)L->n * sizeof *by_off);
    qsort(by_off, (size_t)L->n, sizeof *by_off, cmp_entry_offset);
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
    free(by_off);
    if (!st && pos != L->data_size)
        st = fail(L, NB_ERR_FORMAT, "bytes [%" PRIu64 ",%" PRIu64 ") after the last tensor belong to no tensor", pos,
                  L->data_size);
    return st;
}

static const char *meta_get(const loader *L, const char *key)
{
    const cJSON *m = L->meta ? cJSON_GetObjectItemCaseSensitive(L->meta, key) : NULL;
    return m ? m->valuestring : NULL;
}

static entry *find_entry(const loader *L, const char *name)
{
    entry key = {.name = name}, *pkey = &key;
    entry **hit = bsearch(&pkey, L->by_name, (size_t)L->n, sizeof *L->by_name, cmp_entry_name);
    return hit ? *hit : NULL;
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
    free(L->data);
    free(L->by_name);
    free(L->e);
    cJSON_Delete(L->root);
    free(L->header);
    if (L->fd >= 0) close(L->fd);
}

/* The validated data section, in host byte order. */
static nb_status read_data(loader *L)
{
    if ((uint64_t)(size_t)L->data_size == L->data_size) L->data = malloc(L->data_size ? (size_t)L->data_size : 1);
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
    entry **target = calloc((size_t)np + (size_t)ns + 1, sizeof *target); /* the entry of each model tensor */
    char *sname = NULL;
    nb_status st = target ? NB_OK : nomem(&L);
    if (!st) st = open_file(&L);
    if (!st) st = read_header(&L);
    if (!st) st = parse_entries(&L);
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
        char *grown = realloc(sname, sizeof OPTIM_PREFIX + len);
        if (!grown) {
            st = nomem(&L);
            break;
        }
        sname = grown;
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
        groups->used = pgroups->used = 1;
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
    const int64_t *pcounts = !st && psteps ? (const int64_t *)(L.data + psteps->begin) : NULL;
    for (int64_t i = 0; pcounts && !st && i < psteps->shape[0]; i++)
        if (pcounts[i] < 0)
            st = fail(&L, NB_ERR_FORMAT, "tensor %s: count %lld of parameter %lld is negative", PARAM_STEPS,
                      (long long)pcounts[i], (long long)i);
    /* the groups' options go first: checked as nb_optim_group_set_opts checks them, and put back if
     * any group's are refused */
    if (!st && groups) {
        const double *rows = (const double *)(L.data + groups->begin);
        const int64_t *pg = (const int64_t *)(L.data + pgroups->begin);
        for (int i = 0; !st && i < nb_optim_param_count(opt); i++)
            if (pg[i] != nb_optim_param_group(opt, i))
                st = fail(&L, NB_ERR_SHAPE, "parameter %d is in group %lld in the file, %d in the optimizer", i,
                          (long long)pg[i], nb_optim_param_group(opt, i));
        int ng = nb_optim_group_count(opt), k = 0;
        nb_optim_opts *old = !st ? calloc((size_t)ng, sizeof *old) : NULL;
        int *old_frozen = !st ? calloc((size_t)ng, sizeof *old_frozen) : NULL;
        if (!st && (!old || !old_frozen)) st = nomem(&L);
        for (; !st && k < ng; k++) {
            const double *r = rows + (size_t)k * GROUP_FIELDS;
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
        free(old);
        free(old_frozen);
    }
    /* The only call below that could fail on checked input is set_steps (steps >= 0 is checked), so
     * it goes first: after it, the copies cannot fail (every target is a leaf of the right size). */
    if (!st && opt) st = nb_optim_set_steps(opt, osteps);
    for (int i = 0; pcounts && !st && i < nb_optim_param_count(opt); i++) st = nb_optim_set_param_steps(opt, i, pcounts[i]);
    for (int i = 0; !st && i < np + ns; i++) {
        nb_tensor *t = i < np ? nb_params_tensor(params, i) : nb_optim_state_tensor(opt, i - np);
        if (target[i]->end > target[i]->begin) st = nb_tensor_copy_from(t, L.data + target[i]->begin);
    }
    if (!st && step) *step = step_v;

    free(sname);
    free(target);
    loader_free(&L);
    return st;
}

/* ---- reading any safetensors file ------------------------------------------------------------- */

struct nb_safetensors {
    int n, n_meta;
    char **names;        /* [n], in the file's order */
    nb_tensor **tensors; /* [n], owned */
    char **keys, **values;
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void nb_safetensors_free(nb_safetensors *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) {
        free(f->names[i]);
        nb_tensor_free(f->tensors[i]);
    }
    for (int i = 0; i < f->n_meta; i++) {
        free(f->keys[i]);
        free(f->values[i]);
    }
    free(f->names);
    free(f->tensors);
    free(f->keys);
    free(f->values);
    free(f);
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
    if (!st) st = parse_entries(&L);
    if (!st) st = check_layout(&L);
    if (!st) st = read_data(&L);
    nb_safetensors *f = st ? NULL : calloc(1, sizeof *f);
    if (!st && !f) st = nomem(&L);
    int n_meta = L.meta ? cJSON_GetArraySize(L.meta) : 0;
    if (!st) {
        f->names = calloc((size_t)L.n + 1, sizeof *f->names);
        f->tensors = calloc((size_t)L.n + 1, sizeof *f->tensors);
        f->keys = calloc((size_t)n_meta + 1, sizeof *f->keys);
        f->values = calloc((size_t)n_meta + 1, sizeof *f->values);
        if (!f->names || !f->tensors || !f->keys || !f->values) st = nomem(&L);
    }
    for (int i = 0; !st && i < L.n; i++) {
        const entry *e = &L.e[i];
        f->names[i] = dup_str(e->name);
        f->tensors[i] = nb_tensor_zeros(e->dtype, e->ndim, e->shape);
        f->n = i + 1;
        if (!f->names[i] || !f->tensors[i]) st = f->tensors[i] ? nomem(&L) : nb_error_code();
        else if (e->end > e->begin) st = nb_tensor_copy_from(f->tensors[i], L.data + e->begin);
    }
    const cJSON *m;
    if (!st && L.meta) cJSON_ArrayForEach(m, L.meta)
    {
        f->keys[f->n_meta] = dup_str(m->string);
        f->values[f->n_meta] = dup_str(m->valuestring);
        f->n_meta++;
        if (!f->keys[f->n_meta - 1] || !f->values[f->n_meta - 1]) {
            st = nomem(&L);
            break;
        }
    }
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
