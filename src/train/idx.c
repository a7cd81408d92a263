/* IDX files (the MNIST format), gzip-compressed or raw. Written against nabla.h only: the file is
 * read with read(2) and decompressed with zlib's inflate, whose allocations go through nb_alloc (gzopen
 * would malloc behind the allocator's back).
 *
 * Layout: magic (0, 0, type, ndim), ndim big-endian uint32 extents, then the elements big-endian in
 * row-major order. Everything is checked before it is trusted: the magic, the type, the rank, each
 * extent and their product, and the length (header + data exactly: a short file or trailing bytes
 * are errors). A raw file's length is known before anything is allocated. A gzip file's is not: its
 * data is gathered in a buffer that grows (geometrically, up to the size the header declares) as the
 * stream delivers it, so a small file whose header claims gigabytes fails on its short data having
 * allocated about what it holds; the tensor is made once all the data is there. A corrupt or
 * truncated gzip stream, or bytes after it, are reported with zlib's own diagnosis where it has one.
 * The file is opened without blocking and refused unless it is a regular file (a FIFO would block). */
#define _DEFAULT_SOURCE

#include <nabla.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
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

/* Compressed bytes read from the file at a time. */
#define IN_SIZE ((size_t)1 << 16)
/* The gzip data buffer's first size. */
#define STAGE_MIN ((size_t)1 << 20)

/* zlib's allocations through nb_alloc: zfree is not told the size, so each block carries it in front
 * (16 bytes, keeping the allocator's alignment). */
static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    (void)opaque;
    if (size && items > (SIZE_MAX - 16) / size) return Z_NULL;
    size_t n = (size_t)items * size + 16;
    unsigned char *p = nb_alloc(n);
    if (!p) return Z_NULL;
    memcpy(p, &n, sizeof n);
    return p + 16;
}

static void z_free(voidpf opaque, voidpf address)
{
    (void)opaque;
    if (!address) return;
    unsigned char *p = (unsigned char *)address - 16;
    size_t n;
    memcpy(&n, p, sizeof n);
    nb_dealloc(p, n);
}

/* The file as a stream of IDX bytes: raw, or decompressed from gzip members. */
typedef struct source {
    const char *path;
    int fd;
    int gz;                  /* gzip (else raw) */
    int z_ready;             /* inflateInit2 done */
    int member_done;         /* the last gzip member ended; another may follow */
    int eof;                 /* read(2) has returned 0 */
    z_stream z;
    unsigned char *in;       /* [IN_SIZE] file bytes not yet used: in[pos .. len) */
    size_t pos, len;
} source;

static nb_status src_fail_io(const source *s, const char *what, int err)
{
    nb_error_set(NB_ERR_IO, WHO ": %s: read error in the %s: %s", s->path, what, strerror(err));
    return NB_ERR_IO;
}

/* More file bytes into in (when all of it was used); at the end of the file, eof is set. */
static nb_status src_fill(source *s, const char *what)
{
    if (s->pos < s->len || s->eof) return NB_OK;
    for (;;) {
        ssize_t r = read(s->fd, s->in, IN_SIZE);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return src_fail_io(s, what, errno);
        s->pos = 0;
        s->len = (size_t)r;
        if (r == 0) s->eof = 1;
        return NB_OK;
    }
}

/* Up to len stream bytes into buf; *got is short only at the end of the data. Errors: a read error,
 * a corrupt or truncated gzip stream, bytes after it. */
static nb_status src_read(source *s, void *buf, size_t len, const char *what, size_t *got)
{
    unsigned char *out = buf;
    nb_status st;
    *got = 0;
    while (*got < len) {
        if ((st = src_fill(s, what))) return st;
        size_t avail = s->len - s->pos;
        if (!s->gz) {
            if (avail == 0) return NB_OK; /* the end of the file */
            size_t n = avail < len - *got ? avail : len - *got;
            memcpy(out + *got, s->in + s->pos, n);
            s->pos += n;
            *got += n;
            continue;
        }
        if (s->member_done) {
            if (avail == 0) return NB_OK; /* the end of the last member and of the file */
            /* another member must start here: its magic, or the file has bytes that are not gzip */
            if (s->in[s->pos] != 0x1f || (avail > 1 && s->in[s->pos + 1] != 0x8b)) {
                nb_error_set(NB_ERR_FORMAT, WHO ": %s: bytes after the end of the gzip stream (reading the %s)", s->path,
                             what);
                return NB_ERR_FORMAT;
            }
            if (inflateReset(&s->z) != Z_OK) {
                nb_error_set(NB_ERR_FORMAT, WHO ": %s: corrupt gzip stream (zlib: cannot reset) reading the %s", s->path, what);
                return NB_ERR_FORMAT;
            }
            s->member_done = 0;
        }
        if (avail == 0) {
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated gzip stream (the file ends inside it) reading the %s",
                         s->path, what);
            return NB_ERR_FORMAT;
        }
        size_t want = len - *got;
        s->z.next_in = s->in + s->pos;
        s->z.avail_in = (uInt)avail;
        s->z.next_out = out + *got;
        s->z.avail_out = want < (size_t)UINT32_MAX ? (uInt)want : (uInt)UINT32_MAX;
        int ret = inflate(&s->z, Z_NO_FLUSH);
        int progress = s->z.avail_in != avail || (size_t)(s->z.next_out - out) != *got;
        s->pos += avail - s->z.avail_in;
        *got = (size_t)(s->z.next_out - out);
        if (ret == Z_BUF_ERROR && !progress) ret = Z_DATA_ERROR; /* cannot happen with both buffers non-empty */
        if (ret == Z_STREAM_END) {
            s->member_done = 1;
        } else if (ret == Z_MEM_ERROR) {
            nb_error_set(NB_ERR_NOMEM, WHO ": %s: out of memory decompressing the %s", s->path, what);
            return NB_ERR_NOMEM;
        } else if (ret != Z_OK && ret != Z_BUF_ERROR) { /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: corrupt gzip stream (zlib: %s) reading the %s", s->path,
                         s->z.msg ? s->z.msg : "invalid data", what);
            return NB_ERR_FORMAT;
        }
    }
    return NB_OK;
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
static nb_status read_idx(source *src, long long fsize, nb_dtype dtype, double scale, nb_tensor **out)
{
    const char *path = src->path;
    unsigned char head[4 * (1 + NB_MAX_DIMS)];
    size_t got;
    nb_status st = src_read(src, head, 4, "header", &got);
    if (st) return st;
    if (got == 0) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: empty file (no IDX header)", path);
        return NB_ERR_FORMAT;
    }
    if (got < 4) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated header: %zu of 4 magic bytes", path, got);
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
    if ((st = src_read(src, head + 4, 4 * (size_t)ndim, "header", &got))) return st;
    if (got < 4 * (size_t)ndim) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated header: %zu of %d dimension bytes for %d dimensions",
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
    if (!src->gz && fsize != header_bytes + data_bytes) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: %s: file is %lld bytes, header says %s %s: %lld header + %lld data "
                     "bytes", path, fsize < header_bytes + data_bytes ? "truncated data" : "trailing bytes",
                     fsize, t->name, shape, header_bytes, data_bytes);
        return NB_ERR_FORMAT;
    }
    if (src->gz && data_bytes / MAX_DEFLATE_RATIO > fsize) {
        nb_error_set(NB_ERR_FORMAT, WHO ": %s: header says %s %s (%lld data bytes), more than a gzip file of "
                     "%lld bytes can hold", path, t->name, shape, data_bytes, fsize);
        return NB_ERR_FORMAT;
    }

    /* The data: a raw file holds exactly what the header says (checked above), so the tensor is made
     * now and filled chunk by chunk; gzip data is first gathered in a buffer that grows as it arrives. */
    nb_tensor *res = NULL;
    unsigned char *buf = NULL;
    size_t cap = 0; /* bytes of buf */
    if (!src->gz) {
        res = nb_tensor_empty(dtype, ndim, dims); /* every element is written below */
        if (!res) return nb_error_code() != NB_OK ? nb_error_code() : NB_ERR_NOMEM;
        cap = CHUNK;
    } else {
        cap = (size_t)data_bytes < STAGE_MIN ? (size_t)data_bytes : STAGE_MIN;
    }
    buf = nb_alloc(cap);
    if (!buf) {
        nb_tensor_free(res);
        nb_error_set(NB_ERR_NOMEM, WHO ": %s: out of memory", path);
        return NB_ERR_NOMEM;
    }
    size_t done = 0; /* data bytes read */
    while (st == NB_OK && done < (size_t)data_bytes) {
        size_t want, at;
        if (!src->gz) {
            want = (size_t)data_bytes - done < CHUNK ? (size_t)data_bytes - done : CHUNK;
            at = 0;
        } else {
            if (done == cap) { /* full: twice the size, at most the declared size */
                size_t grown = cap > (size_t)data_bytes / 2 ? (size_t)data_bytes : 2 * cap;
                unsigned char *nb = nb_realloc(buf, cap, grown);
                if (!nb) {
                    nb_error_set(NB_ERR_NOMEM, WHO ": %s: out of memory for %zu bytes of data", path, grown);
                    st = NB_ERR_NOMEM;
                    break;
                }
                buf = nb;
                cap = grown;
            }
            want = cap - done;
            at = done;
        }
        if ((st = src_read(src, buf + at, want, "data", &got))) break;
        if (got < want) {
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: truncated data: %lld of %lld data bytes for %s %s", path,
                         (long long)(done + got), data_bytes, t->name, shape);
            st = NB_ERR_FORMAT;
            break;
        }
        if (!src->gz) decode(t, buf, (int64_t)(want / t->size), dtype, scale, nb_tensor_data(res), (int64_t)(done / t->size));
        done += got;
    }
    if (st == NB_OK) {
        /* one more byte must not exist; the read also makes zlib check the gzip trailer (CRC, length) */
        unsigned char extra;
        st = src_read(src, &extra, 1, "end of the data", &got);
        if (st == NB_OK && got > 0) {
            nb_error_set(NB_ERR_FORMAT, WHO ": %s: trailing bytes after the %lld header + %lld data bytes of %s %s",
                         path, header_bytes, data_bytes, t->name, shape);
            st = NB_ERR_FORMAT;
        }
    }
    if (st == NB_OK && src->gz) {
        /* all the data is there: now the tensor, without zeroing what is written next */
        res = nb_tensor_empty(dtype, ndim, dims);
        if (!res) st = nb_error_code() != NB_OK ? nb_error_code() : NB_ERR_NOMEM;
        else decode(t, buf, numel, dtype, scale, nb_tensor_data(res), 0);
    }
    nb_dealloc(buf, cap);
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
    /* opened without blocking (a FIFO would wait for a writer forever), then refused unless regular */
    source src = {.path = path, .fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)};
    if (src.fd < 0) {
        nb_error_set(NB_ERR_IO, WHO ": cannot open %s: %s", path, strerror(errno));
        return NB_ERR_IO;
    }
    struct stat sb;
    nb_status st = NB_OK;
    int fl;
    if (fstat(src.fd, &sb) != 0) {
        nb_error_set(NB_ERR_IO, WHO ": cannot stat %s: %s", path, strerror(errno));
        st = NB_ERR_IO;
    } else if (!S_ISREG(sb.st_mode)) {
        nb_error_set(NB_ERR_IO, WHO ": cannot read %s: not a regular file (%s)", path, S_ISDIR(sb.st_mode) ? "a folder"
                     : S_ISFIFO(sb.st_mode) ? "a FIFO" : S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode) ? "a device"
                     : "a socket or another kind");
        st = NB_ERR_IO;
    } else if ((fl = fcntl(src.fd, F_GETFL)) < 0 || fcntl(src.fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        nb_error_set(NB_ERR_IO, WHO ": %s: fcntl: %s", path, strerror(errno));
        st = NB_ERR_IO;
    }
    if (st == NB_OK && !(src.in = nb_alloc(IN_SIZE))) {
        nb_error_set(NB_ERR_NOMEM, WHO ": %s: out of memory", path);
        st = NB_ERR_NOMEM;
    }
    /* gzip or raw: the first two bytes tell (an IDX file starts with 00 00) */
    if (st == NB_OK) st = src_fill(&src, "header");
    if (st == NB_OK && src.len - src.pos < 2 && !src.eof) {
        /* a read returned a single byte: get one more behind it */
        ssize_t r;
        while ((r = read(src.fd, src.in + src.len, IN_SIZE - src.len)) < 0 && errno == EINTR) {}
        if (r < 0) st = src_fail_io(&src, "header", errno);
        else if (r == 0) src.eof = 1;
        else src.len += (size_t)r;
    }
    if (st == NB_OK && src.len - src.pos >= 2 && src.in[src.pos] == 0x1f && src.in[src.pos + 1] == 0x8b) {
        src.gz = 1;
        src.z.zalloc = z_alloc;
        src.z.zfree = z_free;
        int zr = inflateInit2(&src.z, 15 + 16); /* gzip wrapper only */
        if (zr == Z_OK) {
            src.z_ready = 1;
        } else {
            nb_error_set(zr == Z_MEM_ERROR ? NB_ERR_NOMEM : NB_ERR_FORMAT, WHO ": %s: %s", path,
                         zr == Z_MEM_ERROR ? "out of memory for the decompressor" : "zlib cannot start");
            st = zr == Z_MEM_ERROR ? NB_ERR_NOMEM : NB_ERR_FORMAT;
        }
    }
    if (st == NB_OK) st = read_idx(&src, (long long)sb.st_size, dtype, scale, out);
    if (src.z_ready) inflateEnd(&src.z);
    nb_dealloc(src.in, IN_SIZE);
    close(src.fd);
    return st;
}
