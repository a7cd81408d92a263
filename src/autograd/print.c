/* Printing tensors: the multi-line form laid out as PyTorch prints (nested brackets per dimension, one
 * row per line, aligned columns, long rows wrapped at 80 columns, large tensors summarised by their
 * first and last 3 entries per dimension around "..."), and the older one-line form. */
#include "internal.h"

#include <math.h>
#include <string.h>

enum { PRINT_THRESHOLD = 1000, PRINT_EDGE = 3, PRINT_LINEWIDTH = 80, PRINT_PRECISION = 4 };

/* How the shown elements are written: one mode and one width for the whole tensor. */
typedef struct print_fmt {
    enum { FMT_INT, FMT_WHOLE, FMT_FIXED, FMT_SCI } mode; /* i64; integral floats as "3."; "%.4f"; "%.4e" */
    int width;
    bool summarize;
} print_fmt;

/* Element i of t written with fmt's mode (no padding) into buf; returns its length. */
static int format_elem(const nb_tensor *t, int64_t i, const print_fmt *fmt, char *buf, size_t size)
{
    if (t->dtype == NB_I64) return snprintf(buf, size, "%lld", (long long)((const int64_t *)t->data)[i]);
    double v = nb__get(t, i);
    if (isnan(v)) return snprintf(buf, size, "nan");
    if (isinf(v)) return snprintf(buf, size, v > 0 ? "inf" : "-inf");
    switch (fmt->mode) {
    case FMT_WHOLE: return snprintf(buf, size, "%.0f.", v);
    case FMT_SCI: return snprintf(buf, size, "%.*e", PRINT_PRECISION, v);
    default: return snprintf(buf, size, "%.*f", PRINT_PRECISION, v);
    }
}

/* Row-major element strides of t. */
static void strides_of(const nb_tensor *t, int64_t *st)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        st[d] = s;
        s *= t->shape[d];
    }
}

/* Call visit for every shown element (all of them, or the first and last PRINT_EDGE along each dim
 * that has more than twice as many when summarising), in row-major order. */
typedef void (*visit_fn)(const nb_tensor *t, int64_t i, void *ctx);
static void for_shown(const nb_tensor *t, const int64_t *st, bool summarize, int d, int64_t off, visit_fn visit,
                      void *ctx)
{
    if (d == t->ndim) {
        visit(t, off, ctx);
        return;
    }
    int64_t n = t->shape[d];
    bool cut = summarize && n > 2 * PRINT_EDGE;
    for (int64_t k = 0; k < n; k++) {
        if (cut && k == PRINT_EDGE) k = n - PRINT_EDGE;
        for_shown(t, st, summarize, d + 1, off + k * st[d], visit, ctx);
    }
}

/* The mode: i64 as integers; floats as PyTorch chooses from the finite non-zero shown values: whole
 * numbers as "3." and others with 4 decimals, switching to scientific notation when the largest is
 * above 1e8 or 1000 times the smallest (or, for non-whole numbers, the smallest is below 1e-4). */
typedef struct mode_scan {
    bool any, whole;
    double lo, hi;
} mode_scan;

static void scan_value(const nb_tensor *t, int64_t i, void *ctx)
{
    mode_scan *m = ctx;
    double v = nb__get(t, i);
    if (!isfinite(v) || v == 0) return;
    double a = fabs(v);
    if (!m->any || a < m->lo) m->lo = a;
    if (!m->any || a > m->hi) m->hi = a;
    m->any = true;
    if (v != ceil(v)) m->whole = false;
}

static void widen(const nb_tensor *t, int64_t i, void *ctx)
{
    print_fmt *fmt = ctx;
    char buf[64];
    int w = format_elem(t, i, fmt, buf, sizeof buf);
    if (w > fmt->width) fmt->width = w;
}

static void make_format(const nb_tensor *t, const int64_t *st, bool summarize, print_fmt *fmt)
{
    fmt->summarize = summarize;
    fmt->width = 1;
    if (t->dtype == NB_I64) {
        fmt->mode = FMT_INT;
    } else {
        mode_scan m = {.whole = true};
        for_shown(t, st, summarize, 0, 0, scan_value, &m);
        bool wide = m.any && (m.hi / m.lo > 1000.0 || m.hi > 1e8);
        if (m.whole)
            fmt->mode = wide ? FMT_SCI : FMT_WHOLE;
        else
            fmt->mode = wide || m.lo < 1e-4 ? FMT_SCI : FMT_FIXED;
    }
    for_shown(t, st, summarize, 0, 0, widen, fmt);
}

static void put_spaces(FILE *f, int n)
{
    for (int i = 0; i < n; i++) fputc(' ', f);
}

/* The sub-tensor at flat offset off whose first dim is d, its "[" at column indent. */
static void print_block(FILE *f, const nb_tensor *t, const int64_t *st, const print_fmt *fmt, int d, int64_t off,
                        int indent)
{
    int64_t n = t->shape[d];
    bool cut = fmt->summarize && n > 2 * PRINT_EDGE;
    fputc('[', f);
    if (d == t->ndim - 1) {
        /* a row: as many elements per line as fit in the line width, continuation lines under the first */
        int per_line = (PRINT_LINEWIDTH - indent) / (fmt->width + 2);
        if (per_line < 1) per_line = 1;
        int64_t shown = 0;
        for (int64_t k = 0; k < n; k++, shown++) {
            if (shown) {
                fputc(',', f);
                if (shown % per_line == 0) {
                    fputc('\n', f);
                    put_spaces(f, indent + 1);
                } else {
                    fputc(' ', f);
                }
            }
            if (cut && k == PRINT_EDGE) {
                fputs(" ...", f);
                k = n - PRINT_EDGE - 1;
                continue;
            }
            char buf[64];
            int w = format_elem(t, off + k * st[d], fmt, buf, sizeof buf);
            put_spaces(f, fmt->width - w);
            fputs(buf, f);
        }
    } else {
        /* one block per index, separated by ",", as many newlines as the blocks have dims, and indent */
        for (int64_t k = 0; k < n; k++) {
            if (k) {
                fputc(',', f);
                for (int i = d; i < t->ndim - 1; i++) fputc('\n', f);
                put_spaces(f, indent + 1);
            }
            if (cut && k == PRINT_EDGE) {
                fputs("...", f);
                k = n - PRINT_EDGE - 1;
                continue;
            }
            print_block(f, t, st, fmt, d + 1, off + k * st[d], indent + 1);
        }
    }
    fputc(']', f);
}

void nb_tensor_print(const nb_tensor *t, const char *label, FILE *f, int64_t max_elems)
{
    if (!f) f = stdout;
    if (label) fprintf(f, "%s = ", label);
    if (!t) {
        fprintf(f, "(null)\n");
        return;
    }
    if (!nb__live("nb_tensor_print", t)) {
        fprintf(f, "(stale)\n");
        return;
    }
    fprintf(f, "%s%s", nb_dtype_name(t->dtype), NB_SHP(t));
    if (t->numel == 0) {
        fprintf(f, " []\n");
        return;
    }
    int64_t st[NB_MAX_DIMS];
    strides_of(t, st);
    print_fmt fmt;
    make_format(t, st, t->numel > (max_elems > 0 ? max_elems : PRINT_THRESHOLD), &fmt);
    if (t->ndim == 0) {
        char buf[64];
        format_elem(t, 0, &fmt, buf, sizeof buf);
        fprintf(f, " %s\n", buf);
        return;
    }
    fputc('\n', f);
    print_block(f, t, st, &fmt, 0, 0, 0);
    fputc('\n', f);
}

void nb_tensor_print_line(const nb_tensor *t, const char *label, FILE *f, int64_t max_elems)
{
    if (!f) f = stdout;
    if (label) fprintf(f, "%s = ", label);
    if (!t) {
        fprintf(f, "(null)\n");
        return;
    }
    if (!nb__live("nb_tensor_print_line", t)) {
        fprintf(f, "(stale)\n");
        return;
    }
    fprintf(f, "%s%s", nb_dtype_name(t->dtype), NB_SHP(t));
    int64_t n = t->numel;
    if (max_elems > 0 && n > max_elems) n = max_elems;
    /* nested brackets for the last two dims keep small matrices readable */
    int64_t row = t->ndim ? t->shape[t->ndim - 1] : 1;
    fprintf(f, " [");
    for (int64_t i = 0; i < n; i++) {
        if (i && row > 0 && i % row == 0) fprintf(f, ";");
        if (t->dtype == NB_I64)
            fprintf(f, " %lld", (long long)((const int64_t *)t->data)[i]);
        else
            fprintf(f, " %.6g", nb__get(t, i));
    }
    fprintf(f, "%s ]\n", n < t->numel ? " ..." : "");
}
