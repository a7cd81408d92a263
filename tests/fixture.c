/* Reference fixtures: reading and comparing (see fixture.h). */
#include "fixture.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tokens ---------------------------------------------------------------------------------- */

bool fx_fail(fx_parser *p, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(p->err, p->errsize, "%s:%d: ", p->fname, p->line);
    if (n < 0 || (size_t)n >= p->errsize) n = 0;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errsize - (size_t)n, fmt, ap);
    va_end(ap);
    return false;
}

char *fx_token(char **s)
{
    char *q = *s;
    while (*q == ' ' || *q == '\t' || *q == '\r') q++;
    if (!*q) {
        *s = q;
        return NULL;
    }
    char *start = q;
    while (*q && *q != ' ' && *q != '\t' && *q != '\r') q++;
    if (*q) *q++ = '\0';
    *s = q;
    return start;
}

char *fx_next_directive(fx_parser *p, char **text, char **rest)
{
    while (**text) {
        char *line = *text, *nl = strchr(line, '\n');
        if (nl) {
            *nl = '\0';
            *text = nl + 1;
        } else {
            *text += strlen(line);
        }
        p->line++;
        char *kw = fx_token(&line);
        if (!kw || kw[0] == '#') continue;
        *rest = line;
        return kw;
    }
    return NULL;
}

bool fx_header(fx_parser *p, const char *kw, char *rest, const char *name, int version)
{
    int64_t ver;
    if (strcmp(kw, name)) return fx_fail(p, "expected the header \"%s %d\", found \"%s\"", name, version, kw);
    if (!fx_int(p, fx_token(&rest), "format version", 0, INT32_MAX, &ver)) return false;
    if (ver != version) return fx_fail(p, "format version %lld; this test reads version %d", (long long)ver, version);
    if (fx_token(&rest)) return fx_fail(p, "unexpected text after the header");
    return true;
}

bool fx_int(fx_parser *p, const char *tok, const char *what, int64_t lo, int64_t hi, int64_t *out)
{
    if (!tok) return fx_fail(p, "missing %s", what);
    char *end;
    errno = 0;
    long long v = strtoll(tok, &end, 10);
    if (end == tok || *end || errno) return fx_fail(p, "bad %s \"%s\" (expected an integer)", what, tok);
    if (v < lo || v > hi) return fx_fail(p, "%s %lld out of range [%lld, %lld]", what, v, (long long)lo, (long long)hi);
    *out = v;
    return true;
}

bool fx_number(fx_parser *p, const char *tok, const char *what, double *out)
{
    if (!tok) return fx_fail(p, "missing %s", what);
    char *end;
    double v = strtod(tok, &end);
    if (end == tok || *end) return fx_fail(p, "bad %s \"%s\" (expected a number)", what, tok);
    if (isinf(v) && !strstr(tok, "inf") && !strstr(tok, "INF") && !strstr(tok, "Inf"))
        return fx_fail(p, "%s \"%s\" overflows a double", what, tok);
    *out = v;
    return true;
}

bool fx_finite(fx_parser *p, const char *tok, const char *what, double *out)
{
    if (!fx_number(p, tok, what, out)) return false;
    if (!isfinite(*out)) return fx_fail(p, "bad %s \"%s\" (expected a finite number)", what, tok);
    return true;
}

bool fx_name(fx_parser *p, const char *tok, const char *what, char *out)
{
    if (!tok || !*tok) return fx_fail(p, "missing %s", what);
    size_t n = strlen(tok);
    if (n >= FX_MAX_NAME) return fx_fail(p, "%s \"%.20s...\" longer than %d characters", what, tok, FX_MAX_NAME - 1);
    for (size_t i = 0; i < n; i++) {
        char ch = tok[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '.' || ch == '-'))
            return fx_fail(p, "%s \"%s\" has a character other than letters, digits, _ . -", what, tok);
    }
    memcpy(out, tok, n + 1);
    return true;
}

char *fx_read_text(const char *path, char *err, size_t errsize)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errsize, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len - 1, fp)) > 0) {
        len += n;
        if (len + 1 == cap) {
            char *grown = realloc(buf, cap * 2);
            if (!grown) free(buf);
            buf = grown;
            cap *= 2;
        }
    }
    bool read_error = ferror(fp);
    fclose(fp);
    if (!buf || read_error) {
        snprintf(err, errsize, "%s: %s", path, buf ? "read error" : "out of memory");
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        snprintf(err, errsize, "%s: contains a NUL byte (not a text fixture file)", path);
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- tensors ----------------------------------------------------------------------------------- */

bool fx_parse_array(fx_parser *p, char *s, const char *what, fx_tensor *t)
{
    int64_t ndim;
    if (!fx_int(p, fx_token(&s), "ndim", 0, NB_MAX_DIMS, &ndim)) return false;
    t->ndim = (int)ndim;
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (!fx_int(p, fx_token(&s), "extent", 0, FX_MAX_NUMEL, &t->shape[d])) return false;
        if (t->shape[d] && t->numel > FX_MAX_NUMEL / t->shape[d])
            return fx_fail(p, "tensor %s: more than %lld elements", what, (long long)FX_MAX_NUMEL);
        t->numel *= t->shape[d];
    }
    t->v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(double));
    if (!t->v) return fx_fail(p, "tensor %s: out of memory", what);
    t->line = p->line;
    for (int64_t i = 0; i < t->numel; i++) {
        char *tok = fx_token(&s);
        if (!tok)
            return fx_fail(p, "tensor %s: %lld values for %lld elements", what, (long long)i, (long long)t->numel);
        if (t->dtype == NB_I64) {
            int64_t iv;
            if (!fx_int(p, tok, "i64 value", -((int64_t)1 << 53), (int64_t)1 << 53, &iv)) return false;
            t->v[i] = (double)iv;
        } else {
            if (!fx_number(p, tok, "value", &t->v[i])) return false;
            if (t->dtype == NB_F32 && !isnan(t->v[i]) && (double)(float)t->v[i] != t->v[i])
                return fx_fail(p, "tensor %s: f32 value %s is not exactly a float32", what, tok);
        }
    }
    if (fx_token(&s)) return fx_fail(p, "tensor %s: more than %lld values", what, (long long)t->numel);
    return true;
}

bool fx_same_shape(const fx_tensor *a, const fx_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

void fx_tensor_free(fx_tensor *t)
{
    free(t->v);
    t->v = NULL;
}

nb_tensor *fx_leaf(const fx_tensor *t, nb_dtype dt)
{
    size_t es = nb_dtype_size(dt);
    void *buf = malloc((size_t)(t->numel ? t->numel : 1) * es);
    if (!buf) return NULL;
    for (int64_t i = 0; i < t->numel; i++) {
        if (dt == NB_F64)
            ((double *)buf)[i] = t->v[i];
        else if (dt == NB_F32)
            ((float *)buf)[i] = (float)t->v[i];
        else
            ((int64_t *)buf)[i] = (int64_t)t->v[i];
    }
    nb_tensor *leaf = nb_tensor_from_data(dt, t->ndim, t->shape, buf);
    free(buf);
    return leaf;
}

/* ---- case files ---------------------------------------------------------------------------------- */

static bool parse_dtype(fx_parser *p, const char *tok, unsigned allowed, nb_dtype *dt)
{
    if (!tok) return fx_fail(p, "missing dtype");
    int listed[NB_DTYPE_COUNT], n = 0;
    for (int d = 0; d < NB_DTYPE_COUNT; d++) {
        if (!(allowed >> d & 1u)) continue;
        if (!strcmp(tok, nb_dtype_name((nb_dtype)d))) {
            *dt = (nb_dtype)d;
            return true;
        }
        listed[n++] = d;
    }
    char names[64] = ""; /* "f32, f64 or i64" */
    size_t len = 0;
    for (int i = 0; i < n && len < sizeof names; i++)
        len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", !i ? "" : i == n - 1 ? " or " : ", ",
                                nb_dtype_name((nb_dtype)listed[i]));
    return fx_fail(p, "unknown dtype \"%s\" (expected %s)", tok, names);
}

/* tensor <role> <dtype> <ndim> <dims...> <values...> (the "tensor" token already read) */
static bool parse_tensor(const fx_format *fmt, fx_parser *p, fx_case *c, char *s)
{
    char *role = fx_token(&s);
    if (!role) return fx_fail(p, "tensor: missing role");
    if (strlen(role) >= FX_MAX_NAME)
        return fx_fail(p, "tensor: role \"%.20s...\" longer than %d characters", role, FX_MAX_NAME - 1);
    if (c->nt == FX_MAX_TENSORS) return fx_fail(p, "case %s: more than %d tensors", c->name, FX_MAX_TENSORS);
    fx_tensor *t = &c->t[c->nt];
    memset(t, 0, sizeof *t);
    strcpy(t->role, role);
    if (!fmt->role(p, t)) return false;
    for (int i = 0; i < c->nt; i++)
        if (!strcmp(c->t[i].role, role))
            return fx_fail(p, "tensor %s given twice (first at line %d)", role, c->t[i].line);
    if (!parse_dtype(p, fx_token(&s), fmt->dtypes, &t->dtype)) return false;
    c->nt++; /* owned by the case from here on (its values are freed with it) */
    return fx_parse_array(p, s, role, t);
}

/* attr <key> [<number> ...] (the "attr" token already read) */
static bool parse_attr(fx_parser *p, fx_case *c, char *s)
{
    if (c->nattr == FX_MAX_ATTRS) return fx_fail(p, "case %s: more than %d attributes", c->name, FX_MAX_ATTRS);
    fx_attr *a = &c->attr[c->nattr++];
    memset(a, 0, sizeof *a);
    if (!fx_name(p, fx_token(&s), "attribute key", a->key)) return false;
    for (int i = 0; i < c->nattr - 1; i++)
        if (!strcmp(c->attr[i].key, a->key)) return fx_fail(p, "attribute %s given twice", a->key);
    for (char *tok; (tok = fx_token(&s));) {
        if (a->n == FX_MAX_ATTR_VALS) return fx_fail(p, "attribute %s: more than %d values", a->key, FX_MAX_ATTR_VALS);
        if (!fx_number(p, tok, "attribute value", &a->v[a->n++])) return false;
    }
    return true;
}

/* case <name> <op> (the "case" token already read): a new case at the end of f */
static bool parse_case(const fx_format *fmt, fx_parser *p, fx_file *f, int *cap, char *s)
{
    if (f->ncases == *cap) {
        int ncap = *cap ? 2 * *cap : 64;
        fx_case *nc = realloc(f->cases, (size_t)ncap * sizeof(*nc));
        if (!nc) return fx_fail(p, "out of memory");
        f->cases = nc;
        *cap = ncap;
    }
    fx_case *c = &f->cases[f->ncases++];
    memset(c, 0, sizeof(*c));
    c->line = p->line;
    if (!fx_name(p, fx_token(&s), "case name", c->name) || !fx_name(p, fx_token(&s), fmt->op_word, c->op))
        return false;
    if (fx_token(&s)) return fx_fail(p, "case %s: unexpected text after the %s", c->name, fmt->op_word);
    for (int i = 0; i < f->ncases - 1; i++)
        if (!strcmp(f->cases[i].name, c->name))
            return fx_fail(p, "case %s defined twice (first at line %d)", c->name, f->cases[i].line);
    return true;
}

bool fx_parse(const fx_format *fmt, char *text, const char *fname, fx_file *f, char *err, size_t errsize)
{
    fx_parser p = {fname, 0, err, errsize};
    int cap = 0;
    fx_case *c = NULL; /* the open case */
    bool header = false, ok = true;
    f->ncases = 0;
    f->cases = NULL;
    err[0] = '\0';
    char *kw, *line;
    while (ok && (kw = fx_next_directive(&p, &text, &line))) {
        if (!header) {
            ok = fx_header(&p, kw, line, fmt->header, fmt->version);
            header = true;
        } else if (!strcmp(kw, "case")) {
            if (c)
                ok = fx_fail(&p, "case inside case %s (line %d): missing end", c->name, c->line);
            else if ((ok = parse_case(fmt, &p, f, &cap, line)))
                c = &f->cases[f->ncases - 1];
        } else if (!c) {
            ok = fx_fail(&p, "\"%s\" outside a case", kw);
        } else if (!strcmp(kw, "attr")) {
            ok = parse_attr(&p, c, line);
        } else if (!strcmp(kw, "tensor")) {
            ok = parse_tensor(fmt, &p, c, line);
        } else if (!strcmp(kw, "end")) {
            ok = fx_token(&line) ? fx_fail(&p, "unexpected text after end") : fmt->finish(&p, c);
            c = NULL;
        } else {
            ok = fx_fail(&p, "unknown directive \"%s\" (case, attr, tensor, end)", kw);
        }
    }
    if (ok && !header) ok = fx_fail(&p, "empty file: no \"%s %d\" header", fmt->header, fmt->version);
    if (ok && c) ok = fx_fail(&p, "case %s (line %d) has no end", c->name, c->line);
    if (ok && f->ncases == 0) ok = fx_fail(&p, "no cases");
    if (!ok) fx_file_free(f);
    return ok;
}

bool fx_load(const fx_format *fmt, const char *path, fx_file *f, char *err, size_t errsize)
{
    char *text = fx_read_text(path, err, errsize);
    if (!text) return false;
    bool ok = fx_parse(fmt, text, path, f, err, errsize);
    free(text);
    return ok;
}

void fx_file_free(fx_file *f)
{
    for (int i = 0; i < f->ncases; i++)
        for (int k = 0; k < f->cases[i].nt; k++) fx_tensor_free(&f->cases[i].t[k]);
    free(f->cases);
    f->cases = NULL;
    f->ncases = 0;
}

bool fx_snippet_ok(const fx_format *fmt, const char *text, const char *needle, char *err, size_t errsize)
{
    char *copy = malloc(strlen(text) + 1), msg[512];
    if (!copy) {
        snprintf(err, errsize, "out of memory");
        return false;
    }
    strcpy(copy, text);
    fx_file f;
    bool parsed = fx_parse(fmt, copy, "snippet", &f, msg, sizeof msg);
    free(copy);
    if (parsed) fx_file_free(&f);
    if (!needle) {
        snprintf(err, errsize, "a valid snippet was rejected: %s", msg);
        return parsed;
    }
    snprintf(err, errsize, "expected a rejection naming \"%s\", got %s", needle, parsed ? "success" : msg);
    return !parsed && strstr(msg, needle) && !strncmp(msg, "snippet:", 8);
}

/* ---- comparison ---------------------------------------------------------------------------------- */

bool fx_close(fx_err *e, double got, double want, const fx_tol *tol)
{
    e->compared++;
    if (isnan(want)) return isnan(got);
    if (isinf(want)) return got == want;
    double diff = fabs(got - want);
    if (diff > e->max_abs) e->max_abs = diff;
    double denom = fmax(fabs(want), tol->rel_floor);
    if (denom > 0) {
        double rel = diff / denom;
        if (!(rel <= e->max_rel)) e->max_rel = isnan(rel) ? INFINITY : rel;
    }
    return diff <= tol->rtol * fabs(want) + tol->atol; /* false for a NaN got */
}

/* "[1,2,0] (flat 5)" of a flat row-major index into t; "[5]" without a tensor */
static const char *index_str(const nb_tensor *t, int64_t flat, char *buf, size_t size)
{
    if (!t) {
        snprintf(buf, size, "[%lld]", (long long)flat);
        return buf;
    }
    int ndim = nb_tensor_ndim(t);
    const int64_t *shape = nb_tensor_shape(t);
    int64_t idx[NB_MAX_DIMS], rest = flat;
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = shape[d] ? rest % shape[d] : 0;
        rest = shape[d] ? rest / shape[d] : 0;
    }
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", d ? "," : "", (long long)idx[d]);
    if (n < size) snprintf(buf + n, size - n, "] (flat %lld)", (long long)flat);
    return buf;
}

/* got from the tensor t, or else from the values v */
static int64_t compare(fx_err *e, const char *ctx, const char *what, const nb_tensor *t, const double *v,
                       const double *want, int64_t n, const fx_tol *tol)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double got = t ? nb_tensor_get(t, i) : v[i];
        if (fx_close(e, got, want[i], tol)) continue;
        if (!bad) fprintf(stderr, "FAIL %s: %s differs from PyTorch:\n", ctx, what);
        if (bad < FX_MAX_ELEM_REPORTS) {
            char idx[128];
            fprintf(stderr, "    %s%s: got %.17g, expected %.17g (|diff| %.3g, tol %.3g)\n", what,
                    index_str(t, i, idx, sizeof idx), got, want[i], fabs(got - want[i]),
                    tol->rtol * fabs(want[i]) + tol->atol);
        }
        bad++;
    }
    if (bad > FX_MAX_ELEM_REPORTS)
        fprintf(stderr, "    ... %lld of %lld elements of %s differ\n", (long long)bad, (long long)n, what);
    return bad;
}

int64_t fx_compare(fx_err *e, const char *ctx, const char *what, const nb_tensor *got, const double *want,
                   int64_t n, const fx_tol *tol)
{
    return compare(e, ctx, what, got, NULL, want, n, tol);
}

int64_t fx_compare_values(fx_err *e, const char *ctx, const char *what, const double *got, const double *want,
                          int64_t n, const fx_tol *tol)
{
    return compare(e, ctx, what, NULL, got, want, n, tol);
}
