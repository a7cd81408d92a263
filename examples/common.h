/* What the training examples share (header only): reading option values, the usage error, the clock,
 * the message of a failed step, the progress line on a terminal, and reading Debian's fortune files.
 * Each piece is small and does what its name says, so that an example reads well without this file. */
#ifndef EXAMPLES_COMMON_H
#define EXAMPLES_COMMON_H

#include <nabla.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#if defined(__GNUC__)
#define EX_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define EX_PRINTF(fmt, args)
#endif

/* ---- options ---------------------------------------------------------------------------------- */

/* A whole decimal integer in [lo, hi] into *out; 0 (and *out untouched) for anything else. */
static inline int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

/* A number in [lo, hi] (not NaN) into *out; 0 (and *out untouched) for anything else. */
static inline int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return 0;
    *out = v;
    return 1;
}

/* Whether a is one of names (a list ending with NULL). */
static inline int is_one_of(const char *a, const char *const *names)
{
    for (; *names; names++)
        if (!strcmp(a, *names)) return 1;
    return 0;
}

/* A bad command line: the message (printf-style, with its program name and newline) and the usage on
 * stderr. Returns 2, the exit status for it. */
static inline int usage_error(void (*usage)(FILE *), const char *fmt, ...) EX_PRINTF(2, 3);
static inline int usage_error(void (*usage)(FILE *), const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    usage(stderr);
    return 2;
}

/* ---- time, failures, progress ----------------------------------------------------------------- */

/* Seconds on the monotonic clock. */
static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of the whole process (every thread) so far. */
static inline double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The recorded error, or what else made a training step fail. */
static inline const char *why(void)
{
    return nb_error_code() != NB_OK ? nb_error_message()
                                    : "the gradient norm is not finite: training diverged (try a lower --lr)";
}

/* For a terminal only: redraw the progress line, "epoch  3/20 [=========>              ] " and then
 * the rest as printf writes it. The epoch's summary line later starts with "\r" to draw over it. */
static inline void progress(int epoch, int epochs, int64_t done, int64_t total, const char *fmt, ...)
    EX_PRINTF(5, 6);
static inline void progress(int epoch, int epochs, int64_t done, int64_t total, const char *fmt, ...)
{
    int width = 24, fill = (int)(width * done / (total ? total : 1));
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    bar[width] = 0;
    printf("\repoch %2d/%d [%s] ", epoch, epochs, bar);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

/* ---- fortune files ---------------------------------------------------------------------------- */

/* The whole of a regular file, NUL-terminated, in a new buffer that the caller frees; its length in
 * *size. NULL with errno set when it cannot be read. */
static inline char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        errno = EISDIR; /* or another kind of non-file */
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (ferror(f)) {
            free(buf);
            buf = NULL;
            errno = EIO;
            break;
        }
        if (feof(f)) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) free(buf);
        buf = bigger;
        cap *= 2;
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    *size = n;
    return buf;
}

/* The quotes of a fortune file (/usr/share/games/fortunes/<category>, from Debian's `fortunes`) are
 * separated by lines holding only "%" (a "\r" before the newline allowed). Start with *pos = 0; each
 * call gives the next quote's bytes as text[*start .. *end) (its line ends included; it may be blank)
 * and moves *pos past the "%" line. Returns 0 when there are no more. */
static inline int next_quote(const char *text, size_t size, size_t *pos, size_t *start, size_t *end)
{
    if (*pos > size) return 0;
    *start = *pos;
    for (size_t line = *pos;;) {
        size_t eol = line;
        while (eol < size && text[eol] != '\n') eol++;
        size_t len = eol - line - (eol > line && text[eol - 1] == '\r');
        int sep = len == 1 && text[line] == '%';
        if (sep || eol >= size) {
            *end = sep ? line : size;
            *pos = eol + 1;
            return 1;
        }
        line = eol + 1;
    }
}

#endif
