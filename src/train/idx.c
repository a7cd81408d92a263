/* IDX files (the MNIST format), gzip-compressed or raw: zlib's gzread reads both. Written against
 * nabla.h only.
 *
 * Layout: magic (0, 0, type, ndim), ndim big-endian uint32 extents, then the elements big-endian in
 * row-major order. Everything is checked before it is trusted: the magic, the type, the rank, each
 * extent and their product, and the length (header + data exactly: a short file or trailing bytes
 * are errors). A corrupt or truncated gzip stream is reported from zlib's own diagnosis. */
#include <nabla.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define WHO "nb_idx_read"

/* Bytes per read: a multiple of every element size, so no element straddles two reads. */
#define CHUNK ((size_t)1 << 16)

/* Deflate expands at most about 1032:1; a header asking for more data than its file could hold is
 * refused before anything is allocated. */
#define MAX_DEFLATE_RATIO 1032

typedef struct idx_type {
    unsigned char code;
    const char *name;
    size_t size;
    int is_float;
} idx_type;

static const idx_type types[] = {
    {0x08, "ubyte", 1, 0}, {0x09, "sbyte", 1, 0}, {0x0B, "i16", 2, 0},
    {0x0C, "i32", 4, 0},   {0x0D, "f32", 4, 1},   {0x0E, "f64", 8, 1},
};

static const idx_type *find_type(unsigned char code)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].code == code) return &types[i];
    return NULL;
}

/* Size of the file at path in bytes (-1 if it cannot be told); NB_ERR_IO recorded when it cannot be
 * opened at all. */
static nb_status file_size(const char *path, long long *size)
{
    *size = -1;
    errno = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        nb_error_set(NB_ERR_IO, WHO ": cannot open %s: %s", path, errno ? strerror(errno) : "fopen failed");
        return NB_ERR_IO;
    }
    if (fseek(f, 0, SEEK_END) == 0) {
        long end = ftell(f);
        if (end >= 0) *size = end;
    }
    fclose(f);
    return NB_OK;
}

/* Record the error zlib holds for f, met while reading the `what` of path (zlib decompresses ahead,
 * so a fault in a small stream may surface while the header is read). */
static nb_status gz_fail(gzFile f, const char *path, const char *what)
{
    int err = Z_OK;
    const char *msg = gzerror(f, &err);
    if (!msg) msg = "?";
    size_t plen = strlen(path); /* zlib's message is "<path>: <what went wrong>" */
    if (strncmp(msg, path, plen) == 0 && msg[plen] == ':' && msg[plen + 1] == ' ') msg += plen + 2;
    switch (err) {
    case Z_ERRNO:
        nb_error_set(NB_ERR_IO, WHO ": %s: read error in the %s: %s", path, what, msg);
        return NB_ERR_IO;
    case Z_MEM_ERROR:
        nb_error_set(NB_ERR_NOMEM, WHO ": %s: out of memory decompressing the %s", path, what);
        return NB_ERR_NOMEM;
    case Z_BUF_ERROR:
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated gzip stream (zlib: %s) reading the %s", path, msg, what);
        return NB_ERR_FORMAT;
    default:
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: corrupt gzip stream (zlib: %s) reading the %s", path, msg, what);
        return NB_ERR_FORMAT;
    }
}

/* Read up to len bytes; returns the count (short only at the end of the data), or -1 when zlib
 * reports an error (a read error, a corrupt or truncated stream). */
static long long read_full(gzFile f, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        size_t want = len - got < CHUNK ? len - got : CHUNK;
        int n = gzread(f, (unsigned char *)buf + got, (unsigned)want);
        if (n < 0) return -1;
        if (n == 0) break;
        got += (size_t)n;
    }
    if (got < len) {
        int err = Z_OK;
        gzerror(f, &err);
        if (err != Z_OK && err != Z_STREAM_END) return -1;
    }
    return (long long)got;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t be64(const unsigned char *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* Element i of big-endian src of IDX type code, as an integer (integer types only). */
static int64_t int_at(unsigned char code, const unsigned char *src, int64_t i)
{
    switch (code) {
    case 0x08: return src[i];
    case 0x09: return src[i] < 0x80 ? src[i] : (int64_t)src[i] - 0x100;
    case 0x0B: {
        uint32_t u = (uint32_t)src[2 * i] << 8 | src[2 * i + 1];
        return u < 0x8000 ? (int64_t)u : (int64_t)u - 0x10000;
    }
    default: {
        uint32_t u = be32(src + 4 * i);
        return u < 0x80000000u ? (int64_t)u : (int64_t)u - ((int64_t)1 << 32);
    }
    }
}

/* Element i of src as a double: ubyte times scale, other types as they are. */
static double real_at(unsigned char code, const unsigned char *src, int64_t i, double scale)
{
    switch (code) {
    case 0x08: return (double)src[i] * scale;
    case 0x0D: {
        uint32_t u = be32(src + 4 * i);
        float v;
        memcpy(&v, &u, sizeof v);
        return v;
    }
    case 0x0E: {
        uint64_t u = be64(src + 8 * i);
        double v;
        memcpy(&v, &u, sizeof v);
        return v;
    }
    default: return (double)int_at(code, src, i);
    }
}

/* dst[off .. off + n) = the n big-endian elements of src converted to dtype. */
static void decode(const idx_type *t, const unsigned char *src, int64_t n, nb_dtype dtype, double scale,
                   void *dst, int64_t off)
{
    if (dtype == NB_I64) {
        int64_t *o = (int64_t *)dst + off;
        for (int64_t i = 0; i < n; i++) o[i] = int_at(t->code, src, i);
    } else if (dtype == NB_F32) {
        float *o = (float *)dst + off;
        if (t->code == 0x08)
            for (int64_t i = 0; i < n; i++) o[i] = (float)((double)src[i] * scale);
        else
            for (int64_t i = 0; i < n; i++) o[i] = (float)real_at(t->code, src, i, scale);
    } else {
        double *o = (double *)dst + off;
        for (int64_t i = 0; i < n; i++) o[i] = real_at(t->code, src, i, scale);
    }
}

/* "[60000,28,28]" */
static void dims_str(char *buf, size_t size, int ndim, const int64_t *dims)
{
    size_t off = 0;
    buf[0] = 0;
    for (int i = 0; i < ndim && off + 1 < size; i++) {
        int k = snprintf(buf + off, size - off, "%s%lld", i ? "," : "[", (long long)dims[i]);
        if (k < 0) break;
        off += (size_t)k;
    }
    if (off + 1 < size) snprintf(buf + off, size - off, "]");
}

/* Everything after the open: header, checks, data. *out set on success. */
static nb_status read_idx(gzFile f, const char *path, long long fsize, nb_dtype dtype, double scale,
                          nb_tensor **out)
{
    unsigned char head[4 * (1 + NB_MAX_DIMS)];
    long long got = read_full(f, head, 4);
    if (got < 0) return gz_fail(f, path, "header");
    if (got == 0) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: empty file (no IDX header)", path);
        return NB_ERR_FORMAT;
    }
    if (got < 4) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated header: %lld of 4 magic bytes", path, got);
        return NB_ERR_FORMAT;
    }
    if (head[0] != 0 || head[1] != 0) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: bad magic %02x %02x %02x %02x: an IDX file starts with 00 00 "
                     "<type> <ndim>", path, head[0], head[1], head[2], head[3]);
        return NB_ERR_FORMAT;
    }
    const idx_type *t = find_type(head[2]);
    if (!t) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: unknown element type 0x%02x in the magic (expected 08 ubyte, "
                     "09 sbyte, 0b i16, 0c i32, 0d f32 or 0e f64)", path, head[2]);
        return NB_ERR_FORMAT;
    }
    int ndim = head[3];
    if (ndim == 0 || ndim > NB_MAX_DIMS) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: %d dimensions in the magic: expected 1 to %d", path, ndim,
                     NB_MAX_DIMS);
        return NB_ERR_FORMAT;
    }
    if (dtype == NB_I64 && t->is_float) {
        nb_error_set(NB_ERR_DTYPE, WHO ": %s: %s data cannot be read as i64 (ask for f32 or f64)", path,
                     t->name);
        return NB_ERR_DTYPE;
    }
    got = read_full(f, head + 4, 4 * (size_t)ndim);
    if (got < 0) return gz_fail(f, path, "header");
    if (got < 4 * ndim) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated header: %lld of %d dimension bytes for %d dimensions",
                     path, got, 4 * ndim, ndim);
        return NB_ERR_FORMAT;
    }
    int64_t dims[NB_MAX_DIMS], numel = 1;
    for (int i = 0; i < ndim; i++) dims[i] = be32(head + 4 + 4 * i);
    char shape[8 * 12 + 4];
    dims_str(shape, sizeof shape, ndim, dims);
    const int64_t max_bytes = (uint64_t)INT64_MAX < SIZE_MAX ? INT64_MAX : (int64_t)SIZE_MAX;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] == 0) {
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: dimension %d of %s is 0", path, i, shape);
            return NB_ERR_FORMAT;
        }
        /* numel * dims[i] * 8 must stay representable (8: the widest element, file or tensor) */
        if (numel > max_bytes / 8 / dims[i]) {
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: %s %s has too many elements to address", path, t->name, shape);
            return NB_ERR_FORMAT;
        }
        numel *= dims[i];
    }
    long long header_bytes = 4 + 4LL * ndim, data_bytes = numel * (long long)t->size;
    int direct = gzdirect(f);
    if (direct && fsize >= 0 && fsize != header_bytes + data_bytes) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: %s: file is %lld bytes, header says %s %s: %lld header + %lld data "
                     "bytes", path, fsize < header_bytes + data_bytes ? "truncated data" : "trailing bytes",
                     fsize, t->name, shape, header_bytes, data_bytes);
        return NB_ERR_FORMAT;
    }
    if (!direct && fsize >= 0 && data_bytes / MAX_DEFLATE_RATIO > fsize) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: header says %s %s (%lld data bytes), more than a gzip file of "
                     "%lld bytes can hold", path, t->name, shape, data_bytes, fsize);
        return NB_ERR_FORMAT;
    }

    nb_tensor *res = nb_tensor_empty(dtype, ndim, dims); /* every element is decoded into below */
    if (!res) return nb_error_code() != NB_OK ? nb_error_code() : NB_ERR_NOMEM;
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        nb_tensor_free(res);
        nb_error_set(NB_ERR_NOMEM, WHO ": %s: out of memory", path);
        return NB_ERR_NOMEM;
    }
    void *dst = nb_tensor_data(res);
    nb_status st = NB_OK;
    long long done = 0; /* data bytes read */
    while (done < data_bytes) {
        size_t want = data_bytes - done < (long long)CHUNK ? (size_t)(data_bytes - done) : CHUNK;
        got = read_full(f, buf, want);
        if (got < 0) {
            st = gz_fail(f, path, "data");
            break;
        }
        if ((size_t)got < want) {
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated data: %lld of %lld data bytes for %s %s", path,
                         done + got, data_bytes, t->name, shape);
            st = NB_ERR_FORMAT;
            break;
        }
        decode(t, buf, (int64_t)(want / t->size), dtype, scale, dst, (int64_t)(done / (long long)t->size));
        done += got;
    }
    if (st == NB_OK) {
        /* one more byte must not exist; the read also makes zlib check the gzip trailer (CRC, length) */
        got = read_full(f, buf, 1);
        if (got < 0) {
            st = gz_fail(f, path, "end of the data");
        } else if (got > 0) {
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: trailing bytes after the %lld header + %lld data bytes of %s %s",
                         path, header_bytes, data_bytes, t->name, shape);
            st = NB_ERR_FORMAT;
        }
    }
    free(buf);
    if (st != NB_OK) {
        nb_tensor_free(res);
        return st;
    }
    *out = res;
    return NB_OK;
}

nb_status nb_idx_read(const char *path, nb_dtype dtype, double scale, nb_tensor **out)
{
    if (out) *out = NULL;
    if (!path || !out) {
        nb_error_set(NB_ERR_ARG, WHO ": %s is NULL", !path ? "path" : "out");
        return NB_ERR_ARG;
    }
    if ((unsigned)dtype >= NB_DTYPE_COUNT) {
        nb_error_set(NB_ERR_ARG, WHO ": %s: invalid dtype %d", path, (int)dtype);
        return NB_ERR_ARG;
    }
    long long fsize;
    nb_status st = file_size(path, &fsize);
    if (st != NB_OK) return st;
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        int e = errno;
        nb_error_set(e ? NB_ERR_IO : NB_ERR_NOMEM, WHO ": cannot open %s: %s", path,
                     e ? strerror(e) : "out of memory");
        return e ? NB_ERR_IO : NB_ERR_NOMEM;
    }
    gzbuffer(f, 1u << 17);
    st = read_idx(f, path, fsize, dtype, scale, out);
    gzclose_r(f);
    return st;
}
