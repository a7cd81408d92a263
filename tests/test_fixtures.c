/* PyTorch reference tests: every case of a fixture file written by tests/gen_fixtures.py (the file
 * format is documented there) is run through nabla, and its forward output and input gradients are
 * compared with PyTorch's.
 *
 *   test_fixtures FILE
 *
 * Each case runs twice:
 *   - as stored (float64): leaves from the fixture's inputs, the op through the dispatch table below,
 *     nb_backward(out, seed, 0), then out and every gradient against PyTorch to 1e-12 relative;
 *   - with every float64 input (and the seed) cast to float32, to check that the float32 kernels agree
 *     with the float64 reference to 1e-5 relative (ops whose point is a dtype, casts, skip this).
 *
 * To add an op: a runner below and a row in OPS (name as in gen_fixtures.py's OPS, number of inputs,
 * whether the float32 pass applies). The test fails on a fixture op without a runner and on a runner
 * without a fixture case. */
#include "nbtest.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------------------------------------- */
/* Tolerances                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

/* An element passes when |got - want| <= RTOL |want| + ATOL_SCALE max|want over the tensor|.
 * float64: the relative bound holds wherever both sides round the same real result; the absolute
 * floor (1e-14 of the tensor's largest magnitude, i.e. ~100 ulps of it) only matters for elements near
 * zero, whose value is decided by rounding in sums taken in a different order (BLAS and the
 * reductions) or by cancellation; it is scaled so that a tensor of uniformly tiny values (a sigmoid
 * tail) is still checked to 1e-12 relative. float32 (inputs exact in float32, as the generator
 * makes them): 24-bit results, so 1e-5 relative, and a floor of 1e-6 of the largest magnitude for
 * values formed by cancellation (1 - y^2 of tanh near |y| = 1 carries a few float32 ulps of 1). */
#define F64_RTOL 1e-12
#define F64_ATOL_SCALE 1e-14
#define F32_RTOL 1e-5
#define F32_ATOL_SCALE 1e-6

/* ---------------------------------------------------------------------------------------------- */
/* Fixture data                                                                                    */
/* ---------------------------------------------------------------------------------------------- */

#define FX_VERSION 1
#define FX_MAX_IN 16
#define FX_MAX_ATTRS 16
#define FX_MAX_ATTR_VALS NB_MAX_DIMS
#define FX_MAX_NAME 64
#define FX_MAX_NUMEL ((int64_t)1 << 24)

typedef struct fx_tensor {
    bool present;
    nb_dtype dtype;
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    int64_t numel;
    double *v; /* numel values (i64 values are integers below 2^53 in magnitude) */
    int line;
} fx_tensor;

typedef struct fx_attr {
    char key[FX_MAX_NAME];
    int n;
    double v[FX_MAX_ATTR_VALS];
    bool used; /* read by the runner (an unread attribute is an error: likely a typo) */
} fx_attr;

typedef struct fx_case {
    char name[FX_MAX_NAME];
    char op[FX_MAX_NAME];
    int line;
    int nattr;
    fx_attr attr[FX_MAX_ATTRS];
    int nin;
    fx_tensor in[FX_MAX_IN];
    fx_tensor grad[FX_MAX_IN];
    fx_tensor out, seed;
} fx_case;

typedef struct fx_file {
    int ncases;
    fx_case *cases;
} fx_file;

static void fx_tensor_free(fx_tensor *t)
{
    free(t->v);
    t->v = NULL;
}

static void fx_case_free(fx_case *c)
{
    for (int i = 0; i < FX_MAX_IN; i++) {
        fx_tensor_free(&c->in[i]);
        fx_tensor_free(&c->grad[i]);
    }
    fx_tensor_free(&c->out);
    fx_tensor_free(&c->seed);
}

static void fx_file_free(fx_file *f)
{
    for (int i = 0; i < f->ncases; i++) fx_case_free(&f->cases[i]);
    free(f->cases);
    f->cases = NULL;
    f->ncases = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Parser: the whole file in memory, one line at a time, every error named with file and line      */
/* ---------------------------------------------------------------------------------------------- */

typedef struct fx_parser {
    const char *fname;
    int line;
    char *err; /* message buffer */
    size_t errsize;
} fx_parser;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static bool fx_fail(fx_parser *p, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(p->err, p->errsize, "%s:%d: ", p->fname, p->line);
    if (n < 0 || (size_t)n >= p->errsize) n = 0;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errsize - (size_t)n, fmt, ap);
    va_end(ap);
    return false;
}

/* The next whitespace-separated token of the line at *s (NUL-terminated in place), or NULL. */
static char *fx_token(char **s)
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

static bool fx_int(fx_parser *p, const char *tok, const char *what, int64_t lo, int64_t hi, int64_t *out)
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

static bool fx_number(fx_parser *p, const char *tok, const char *what, double *out)
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

static bool fx_dtype(fx_parser *p, const char *tok, nb_dtype *dt)
{
    if (!tok) return fx_fail(p, "missing dtype");
    for (int d = 0; d < NB_DTYPE_COUNT; d++)
        if (!strcmp(tok, nb_dtype_name((nb_dtype)d))) {
            *dt = (nb_dtype)d;
            return true;
        }
    return fx_fail(p, "unknown dtype \"%s\" (expected f32, f64 or i64)", tok);
}

/* A name token (case name, op, attribute key): 1..FX_MAX_NAME-1 characters of [A-Za-z0-9_.-]. */
static bool fx_name(fx_parser *p, const char *tok, const char *what, char *out)
{
    if (!tok) return fx_fail(p, "missing %s", what);
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

/* tensor <role> <dtype> <ndim> <dims...> <values...> (the "tensor" token already read) */
static bool fx_parse_tensor(fx_parser *p, fx_case *c, char *s)
{
    char *role = fx_token(&s);
    if (!role) return fx_fail(p, "tensor: missing role");
    fx_tensor *t = NULL;
    int64_t idx = -1;
    if (!strcmp(role, "out"))
        t = &c->out;
    else if (!strcmp(role, "seed"))
        t = &c->seed;
    else if (!strncmp(role, "in", 2) || !strncmp(role, "grad", 4)) {
        bool is_in = role[0] == 'i';
        const char *num = role + (is_in ? 2 : 4);
        if (!*num || (num[0] == '0' && num[1]) || !fx_int(p, num, "input index", 0, FX_MAX_IN - 1, &idx))
            return fx_fail(p, "tensor: bad role \"%s\" (in0..in%d, out, seed, grad0..grad%d)", role,
                           FX_MAX_IN - 1, FX_MAX_IN - 1);
        t = is_in ? &c->in[idx] : &c->grad[idx];
    } else
        return fx_fail(p, "tensor: unknown role \"%s\" (in<i>, out, seed, grad<i>)", role);
    if (t->present) return fx_fail(p, "tensor %s given twice (first at line %d)", role, t->line);

    nb_dtype dt = NB_F64;
    int64_t ndim;
    if (!fx_dtype(p, fx_token(&s), &dt)) return false;
    if (!fx_int(p, fx_token(&s), "ndim", 0, NB_MAX_DIMS, &ndim)) return false;
    t->dtype = dt;
    t->ndim = (int)ndim;
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (!fx_int(p, fx_token(&s), "extent", 0, FX_MAX_NUMEL, &t->shape[d])) return false;
        if (t->shape[d] && t->numel > FX_MAX_NUMEL / t->shape[d])
            return fx_fail(p, "tensor %s: more than %lld elements", role, (long long)FX_MAX_NUMEL);
        t->numel *= t->shape[d];
    }
    t->v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(double));
    if (!t->v) return fx_fail(p, "tensor %s: out of memory", role);
    t->present = true;
    t->line = p->line;
    for (int64_t i = 0; i < t->numel; i++) {
        char *tok = fx_token(&s);
        if (!tok)
            return fx_fail(p, "tensor %s: %lld values for %lld elements", role, (long long)i, (long long)t->numel);
        if (dt == NB_I64) {
            int64_t iv;
            if (!fx_int(p, tok, "i64 value", -((int64_t)1 << 53), (int64_t)1 << 53, &iv)) return false;
            t->v[i] = (double)iv;
        } else {
            if (!fx_number(p, tok, "value", &t->v[i])) return false;
            if (dt == NB_F32 && !isnan(t->v[i]) && (double)(float)t->v[i] != t->v[i])
                return fx_fail(p, "tensor %s: f32 value %s is not exactly a float32", role, tok);
        }
    }
    if (fx_token(&s)) return fx_fail(p, "tensor %s: more than %lld values", role, (long long)t->numel);
    return true;
}

static bool fx_same_shape(const fx_tensor *a, const fx_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

/* The checks that need the whole case, at its `end`. */
static bool fx_finish_case(fx_parser *p, fx_case *c)
{
    int last = -1;
    for (int i = 0; i < FX_MAX_IN; i++)
        if (c->in[i].present || c->grad[i].present) last = i;
    c->nin = last + 1;
    for (int i = 0; i < c->nin; i++) {
        if (!c->in[i].present)
            return fx_fail(p, "case %s: %s%d without in%d (inputs are numbered from 0 without gaps)", c->name,
                           c->grad[i].present ? "grad" : "in", last, i);
        if (!c->grad[i].present) continue;
        if (c->in[i].dtype == NB_I64) return fx_fail(p, "case %s: grad%d of an i64 input", c->name, i);
        if (c->grad[i].dtype != c->in[i].dtype || !fx_same_shape(&c->grad[i], &c->in[i]))
            return fx_fail(p, "case %s: grad%d (line %d) differs from in%d in dtype or shape", c->name, i,
                           c->grad[i].line, i);
    }
    if (!c->out.present) return fx_fail(p, "case %s: no out tensor", c->name);
    if (!c->seed.present) return fx_fail(p, "case %s: no seed tensor", c->name);
    if (c->out.dtype == NB_I64) return fx_fail(p, "case %s: an i64 out has no gradient to check", c->name);
    if (c->seed.dtype != c->out.dtype || !fx_same_shape(&c->seed, &c->out))
        return fx_fail(p, "case %s: seed (line %d) differs from out in dtype or shape", c->name, c->seed.line);
    return true;
}

/* Parse text (NUL-terminated, modified in place) into f. On failure returns false with the message
 * in err and f empty. */
static bool fx_parse(char *text, const char *fname, fx_file *f, char *err, size_t errsize)
{
    fx_parser p = {fname, 0, err, errsize};
    int cap = 0;
    fx_case *c = NULL; /* the open case */
    bool header = false, ok = true;
    f->ncases = 0;
    f->cases = NULL;
    err[0] = '\0';
    char *s = text;
    while (ok && *s) {
        char *line = s, *nl = strchr(s, '\n');
        if (nl) {
            *nl = '\0';
            s = nl + 1;
        } else
            s += strlen(s);
        p.line++;
        char *kw = fx_token(&line);
        if (!kw || kw[0] == '#') continue;
        if (!header) {
            int64_t ver;
            if (strcmp(kw, "nabla-fixtures"))
                ok = fx_fail(&p, "expected the header \"nabla-fixtures %d\", found \"%s\"", FX_VERSION, kw);
            else if (!fx_int(&p, fx_token(&line), "format version", 0, INT32_MAX, &ver))
                ok = false;
            else if (ver != FX_VERSION)
                ok = fx_fail(&p, "format version %lld; this test reads version %d", (long long)ver, FX_VERSION);
            else if (fx_token(&line))
                ok = fx_fail(&p, "unexpected text after the header");
            header = true;
            continue;
        }
        if (!strcmp(kw, "case")) {
            if (c) {
                ok = fx_fail(&p, "case inside case %s (line %d): missing end", c->name, c->line);
                break;
            }
            if (f->ncases == cap) {
                int ncap = cap ? 2 * cap : 64;
                fx_case *nc = realloc(f->cases, (size_t)ncap * sizeof(*nc));
                if (!nc) {
                    ok = fx_fail(&p, "out of memory");
                    break;
                }
                f->cases = nc;
                cap = ncap;
            }
            c = &f->cases[f->ncases++];
            memset(c, 0, sizeof(*c));
            c->line = p.line;
            ok = fx_name(&p, fx_token(&line), "case name", c->name) && fx_name(&p, fx_token(&line), "op", c->op);
            if (ok && fx_token(&line)) ok = fx_fail(&p, "case %s: unexpected text after the op", c->name);
            for (int i = 0; ok && i < f->ncases - 1; i++)
                if (!strcmp(f->cases[i].name, c->name))
                    ok = fx_fail(&p, "case %s defined twice (first at line %d)", c->name, f->cases[i].line);
        } else if (!c) {
            ok = fx_fail(&p, "\"%s\" outside a case", kw);
        } else if (!strcmp(kw, "attr")) {
            if (c->nattr == FX_MAX_ATTRS) {
                ok = fx_fail(&p, "case %s: more than %d attributes", c->name, FX_MAX_ATTRS);
                break;
            }
            fx_attr *a = &c->attr[c->nattr++];
            memset(a, 0, sizeof(*a));
            ok = fx_name(&p, fx_token(&line), "attribute key", a->key);
            for (int i = 0; ok && i < c->nattr - 1; i++)
                if (!strcmp(c->attr[i].key, a->key)) ok = fx_fail(&p, "attribute %s given twice", a->key);
            for (char *tok; ok && (tok = fx_token(&line));) {
                if (a->n == FX_MAX_ATTR_VALS)
                    ok = fx_fail(&p, "attribute %s: more than %d values", a->key, FX_MAX_ATTR_VALS);
                else
                    ok = fx_number(&p, tok, "attribute value", &a->v[a->n++]);
            }
        } else if (!strcmp(kw, "tensor")) {
            ok = fx_parse_tensor(&p, c, line);
        } else if (!strcmp(kw, "end")) {
            if (fx_token(&line))
                ok = fx_fail(&p, "unexpected text after end");
            else
                ok = fx_finish_case(&p, c);
            c = NULL;
        } else {
            ok = fx_fail(&p, "unknown directive \"%s\" (case, attr, tensor, end)", kw);
        }
    }
    if (ok && !header) ok = fx_fail(&p, "empty file: no \"nabla-fixtures %d\" header", FX_VERSION);
    if (ok && c) ok = fx_fail(&p, "case %s (line %d) has no end", c->name, c->line);
    if (ok && f->ncases == 0) ok = fx_fail(&p, "no cases");
    if (!ok) fx_file_free(f);
    return ok;
}

static bool fx_load(const char *path, fx_file *f, char *err, size_t errsize)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errsize, "%s: cannot open: %s", path, strerror(errno));
        return false;
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
        return false;
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        snprintf(err, errsize, "%s: contains a NUL byte (not a text fixture file)", path);
        free(buf);
        return false;
    }
    bool ok = fx_parse(buf, path, f, err, errsize);
    free(buf);
    return ok;
}

/* ---------------------------------------------------------------------------------------------- */
/* Attributes, as runners read them                                                                */
/* ---------------------------------------------------------------------------------------------- */

static char fx_run_err[256]; /* why a runner gave up before calling nabla */

static fx_attr *attr_find(fx_case *c, const char *key)
{
    for (int i = 0; i < c->nattr; i++)
        if (!strcmp(c->attr[i].key, key)) {
            c->attr[i].used = true;
            return &c->attr[i];
        }
    return NULL;
}

/* A list of up to max integers (an empty list is allowed). */
static bool attr_ints(fx_case *c, const char *key, int max, int *n, int64_t *out)
{
    fx_attr *a = attr_find(c, key);
    if (!a) {
        snprintf(fx_run_err, sizeof fx_run_err, "missing attribute %s", key);
        return false;
    }
    if (a->n > max) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: %d values, at most %d", key, a->n, max);
        return false;
    }
    for (int i = 0; i < a->n; i++) {
        if (a->v[i] != floor(a->v[i]) || fabs(a->v[i]) > 1e15) {
            snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: %.17g is not an integer", key, a->v[i]);
            return false;
        }
        out[i] = (int64_t)a->v[i];
    }
    *n = a->n;
    return true;
}

/* The same list as ints (axes, dims). */
static bool attr_axes(fx_case *c, const char *key, int *n, int *out)
{
    int64_t v[FX_MAX_ATTR_VALS];
    if (!attr_ints(c, key, FX_MAX_ATTR_VALS, n, v)) return false;
    for (int i = 0; i < *n; i++) out[i] = (int)v[i];
    return true;
}

/* One integer; def when absent (def INT64_MIN: required). */
static bool attr_int(fx_case *c, const char *key, int64_t def, int64_t *out)
{
    int n;
    if (!attr_find(c, key) && def != INT64_MIN) {
        *out = def;
        return true;
    }
    if (!attr_ints(c, key, 1, &n, out)) return false;
    if (n != 1) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: expected one value", key);
        return false;
    }
    return true;
}

static bool attr_f64(fx_case *c, const char *key, double *out)
{
    fx_attr *a = attr_find(c, key);
    if (!a || a->n != 1) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute %s: expected one number", key);
        return false;
    }
    *out = a->v[0];
    return true;
}

/* ---------------------------------------------------------------------------------------------- */
/* Runners: op name -> a call of the public API with the case's attributes                         */
/* ---------------------------------------------------------------------------------------------- */

typedef nb_tensor *(*fx_run_fn)(fx_case *c, int nin, nb_tensor *const *in);

#define RUN(name) static nb_tensor *run_##name(fx_case *c, int nin, nb_tensor *const *in)
#define RUN_UNARY(name, fn)                                                                            \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)c, (void)nin;                                                                            \
        return fn(in[0]);                                                                              \
    }
#define RUN_BINARY(name, fn)                                                                           \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)c, (void)nin;                                                                            \
        return fn(in[0], in[1]);                                                                       \
    }
/* x op s with attribute s */
#define RUN_SCALAR(name, call)                                                                         \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)nin;                                                                                     \
        double s;                                                                                      \
        return attr_f64(c, "s", &s) ? call : NULL;                                                     \
    }

RUN_BINARY(add, nb_add)
RUN_BINARY(sub, nb_sub)
RUN_BINARY(mul, nb_mul)
RUN_BINARY(div, nb_div)
RUN_SCALAR(add_scalar, nb_add_scalar(in[0], s))
RUN_SCALAR(mul_scalar, nb_mul_scalar(in[0], s))
RUN_SCALAR(rsub_scalar, nb_rsub_scalar(s, in[0]))
RUN_SCALAR(div_scalar, nb_div_scalar(in[0], s))
RUN(affine)
{
    (void)nin;
    double a, b;
    return attr_f64(c, "a", &a) && attr_f64(c, "b", &b) ? nb_affine(in[0], a, b) : NULL;
}
RUN_UNARY(neg, nb_neg)
RUN_UNARY(exp, nb_exp)
RUN_UNARY(log, nb_log)
RUN_UNARY(tanh, nb_tanh)
RUN_UNARY(sigmoid, nb_sigmoid)
RUN_UNARY(relu, nb_relu)
RUN_UNARY(sum_all, nb_sum_all)
RUN_UNARY(mean_all, nb_mean_all)

/* trans_a / trans_b select nb_matmul_ex's flags; both 0 uses plain nb_matmul */
RUN(matmul)
{
    (void)nin;
    int64_t ta, tb;
    if (!attr_int(c, "trans_a", 0, &ta) || !attr_int(c, "trans_b", 0, &tb)) return NULL;
    unsigned flags = (ta ? NB_TRANS_A : 0u) | (tb ? NB_TRANS_B : 0u);
    return flags ? nb_matmul_ex(in[0], in[1], flags) : nb_matmul(in[0], in[1]);
}

RUN(sum)
{
    (void)nin;
    int n, axes[FX_MAX_ATTR_VALS];
    int64_t keep;
    if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "keepdim", 0, &keep)) return NULL;
    return nb_sum(in[0], n, axes, (int)keep);
}

RUN(mean)
{
    (void)nin;
    int n, axes[FX_MAX_ATTR_VALS];
    int64_t keep;
    if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "keepdim", 0, &keep)) return NULL;
    return nb_mean(in[0], n, axes, (int)keep);
}

RUN(sum_to)
{
    (void)nin;
    int n;
    int64_t shape[FX_MAX_ATTR_VALS];
    return attr_ints(c, "shape", NB_MAX_DIMS, &n, shape) ? nb_sum_to(in[0], n, shape) : NULL;
}

RUN(reshape)
{
    (void)nin;
    int n;
    int64_t shape[FX_MAX_ATTR_VALS];
    return attr_ints(c, "shape", NB_MAX_DIMS, &n, shape) ? nb_reshape(in[0], n, shape) : NULL;
}

RUN(transpose)
{
    (void)nin;
    int n, dims[FX_MAX_ATTR_VALS];
    if (!attr_axes(c, "dims", &n, dims)) return NULL;
    if (n != 2) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute dims: expected 2 values, got %d", n);
        return NULL;
    }
    return nb_transpose(in[0], dims[0], dims[1]);
}

RUN(permute)
{
    (void)nin;
    int n, perm[FX_MAX_ATTR_VALS];
    return attr_axes(c, "perm", &n, perm) ? nb_permute(in[0], n, perm) : NULL;
}

RUN(broadcast_to)
{
    (void)nin;
    int n;
    int64_t shape[FX_MAX_ATTR_VALS];
    return attr_ints(c, "shape", NB_MAX_DIMS, &n, shape) ? nb_broadcast_to(in[0], n, shape) : NULL;
}

RUN(cast_f32)
{
    (void)c, (void)nin;
    return nb_cast(in[0], NB_F32);
}

RUN(cast_f64)
{
    (void)c, (void)nin;
    return nb_cast(in[0], NB_F64);
}

/* ---- the full primitive set ------------------------------------------------------------------ */

RUN_BINARY(pow, nb_pow)
RUN_BINARY(maximum, nb_maximum)
RUN_BINARY(minimum, nb_minimum)
RUN_SCALAR(sub_scalar, nb_sub_scalar(in[0], s))
RUN_SCALAR(rdiv_scalar, nb_rdiv_scalar(s, in[0]))
RUN(pow_scalar)
{
    (void)nin;
    double p;
    return attr_f64(c, "p", &p) ? nb_pow_scalar(in[0], p) : NULL;
}
RUN_UNARY(sqrt, nb_sqrt)
RUN_UNARY(abs, nb_abs)
RUN_UNARY(sin, nb_sin)
RUN_UNARY(cos, nb_cos)
RUN_UNARY(erf, nb_erf)
RUN_UNARY(log1p, nb_log1p)
RUN_UNARY(expm1, nb_expm1)
RUN_UNARY(softplus, nb_softplus)
RUN_UNARY(gelu, nb_gelu)
RUN_UNARY(reciprocal, nb_reciprocal)
RUN_UNARY(square, nb_square)
RUN(leaky_relu)
{
    (void)nin;
    double slope;
    return attr_f64(c, "slope", &slope) ? nb_leaky_relu(in[0], slope) : NULL;
}
RUN(elu)
{
    (void)nin;
    double alpha;
    return attr_f64(c, "alpha", &alpha) ? nb_elu(in[0], alpha) : NULL;
}
RUN(clamp)
{
    (void)nin;
    double lo, hi;
    return attr_f64(c, "lo", &lo) && attr_f64(c, "hi", &hi) ? nb_clamp(in[0], lo, hi) : NULL;
}

/* in0 is the condition's source: the mask is nb_gt(in0, 0), as torch.where(c > 0, a, b) */
RUN(where)
{
    (void)c, (void)nin;
    nb_tensor *zero = nb_zeros(nb_tensor_dtype(in[0]), 0, NULL);
    return nb_where(nb_gt(in[0], zero), in[1], in[2]);
}

/* axes (empty: all) and keepdim, as sum */
#define RUN_AXES(name, fn)                                                                             \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)nin;                                                                                     \
        int n, axes[FX_MAX_ATTR_VALS];                                                                 \
        int64_t keep;                                                                                  \
        if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "keepdim", 0, &keep)) return NULL;         \
        return fn(in[0], n, axes, (int)keep);                                                          \
    }
RUN_AXES(max, nb_max)
RUN_AXES(min, nb_min)
RUN_AXES(logsumexp, nb_logsumexp)

/* axes, correction, keepdim */
#define RUN_VAR(name, fn)                                                                              \
    RUN(name)                                                                                          \
    {                                                                                                  \
        (void)nin;                                                                                     \
        int n, axes[FX_MAX_ATTR_VALS];                                                                 \
        int64_t keep, corr;                                                                            \
        if (!attr_axes(c, "axes", &n, axes) || !attr_int(c, "correction", INT64_MIN, &corr) ||          \
            !attr_int(c, "keepdim", 0, &keep))                                                         \
            return NULL;                                                                               \
        return fn(in[0], n, axes, (int)corr, (int)keep);                                               \
    }
RUN_VAR(var, nb_var)
RUN_VAR(std, nb_std)

RUN(softmax)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_softmax(in[0], (int)axis) : NULL;
}

RUN(log_softmax)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_log_softmax(in[0], (int)axis) : NULL;
}

RUN(slice)
{
    (void)nin;
    int64_t axis, start, stop, step;
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_int(c, "start", INT64_MIN, &start) ||
        !attr_int(c, "stop", INT64_MIN, &stop) || !attr_int(c, "step", INT64_MIN, &step))
        return NULL;
    return nb_slice(in[0], (int)axis, start, stop, step);
}

RUN(concat)
{
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_concat(nin, in, (int)axis) : NULL;
}

RUN(stack)
{
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_stack(nin, in, (int)axis) : NULL;
}

/* pieces joined again in reverse order, as the generator does */
static nb_tensor *concat_reversed(int n, nb_tensor **pieces, int axis)
{
    nb_tensor *rev[FX_MAX_ATTR_VALS];
    for (int i = 0; i < n; i++) rev[i] = pieces[n - 1 - i];
    return nb_concat(n, rev, axis);
}

RUN(split)
{
    (void)nin;
    int n;
    int64_t axis, sizes[FX_MAX_ATTR_VALS];
    nb_tensor *outs[FX_MAX_ATTR_VALS];
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_ints(c, "sizes", FX_MAX_ATTR_VALS, &n, sizes)) return NULL;
    if (nb_split(in[0], (int)axis, n, sizes, outs) != NB_OK) return NULL;
    return concat_reversed(n, outs, (int)axis);
}

RUN(chunk)
{
    (void)nin;
    int64_t n, axis;
    nb_tensor *outs[FX_MAX_ATTR_VALS];
    if (!attr_int(c, "n", INT64_MIN, &n) || !attr_int(c, "axis", INT64_MIN, &axis)) return NULL;
    if (n < 1 || n > FX_MAX_ATTR_VALS) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute n: %lld pieces, 1..%d supported", (long long)n,
                 FX_MAX_ATTR_VALS);
        return NULL;
    }
    int pieces = nb_chunk(in[0], (int)n, (int)axis, outs);
    return pieces < 1 ? NULL : concat_reversed(pieces, outs, (int)axis);
}

RUN(squeeze)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_squeeze(in[0], (int)axis) : NULL;
}

RUN(unsqueeze)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_unsqueeze(in[0], (int)axis) : NULL;
}

RUN(pad)
{
    (void)nin;
    int n;
    int64_t pads[FX_MAX_ATTR_VALS];
    double value;
    if (!attr_ints(c, "pads", FX_MAX_ATTR_VALS, &n, pads) || !attr_f64(c, "value", &value)) return NULL;
    if (n != 2 * nb_tensor_ndim(in[0])) {
        snprintf(fx_run_err, sizeof fx_run_err, "attribute pads: %d values for %d dims", n, nb_tensor_ndim(in[0]));
        return NULL;
    }
    return nb_pad(in[0], pads, value);
}

/* in0 x, in1 the i64 indices */
RUN(index_select)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_index_select(in[0], (int)axis, in[1]) : NULL;
}

RUN(gather)
{
    (void)nin;
    int64_t axis;
    return attr_int(c, "axis", INT64_MIN, &axis) ? nb_gather(in[0], (int)axis, in[1]) : NULL;
}

/* in0 src, in1 the i64 indices; attribute shape: the target */
RUN(scatter_add)
{
    (void)nin;
    int n;
    int64_t axis, shape[FX_MAX_ATTR_VALS];
    if (!attr_int(c, "axis", INT64_MIN, &axis) || !attr_ints(c, "shape", NB_MAX_DIMS, &n, shape)) return NULL;
    return nb_scatter_add(n, shape, (int)axis, in[1], in[0]);
}

/* the mask is drawn from a generator seeded with the attribute seed (the generator recomputes it) */
RUN(dropout)
{
    (void)nin;
    double p;
    int64_t seed;
    if (!attr_f64(c, "p", &p) || !attr_int(c, "seed", INT64_MIN, &seed)) return NULL;
    nb_rng rng;
    nb_rng_seed(&rng, (uint64_t)seed);
    return nb_dropout(in[0], p, &rng);
}

typedef struct fx_op {
    const char *name;
    int arity;    /* number of inputs; -1: any number */
    bool f32;     /* run the float32 agreement pass */
    fx_run_fn run;
} fx_op;

static const fx_op OPS[] = {
    {"add", 2, true, run_add},
    {"sub", 2, true, run_sub},
    {"mul", 2, true, run_mul},
    {"div", 2, true, run_div},
    {"add_scalar", 1, true, run_add_scalar},
    {"mul_scalar", 1, true, run_mul_scalar},
    {"rsub_scalar", 1, true, run_rsub_scalar},
    {"div_scalar", 1, true, run_div_scalar},
    {"affine", 1, true, run_affine},
    {"neg", 1, true, run_neg},
    {"exp", 1, true, run_exp},
    {"log", 1, true, run_log},
    {"tanh", 1, true, run_tanh},
    {"sigmoid", 1, true, run_sigmoid},
    {"relu", 1, true, run_relu},
    {"matmul", 2, true, run_matmul},
    {"sum", 1, true, run_sum},
    {"mean", 1, true, run_mean},
    {"sum_all", 1, true, run_sum_all},
    {"mean_all", 1, true, run_mean_all},
    {"sum_to", 1, true, run_sum_to},
    {"reshape", 1, true, run_reshape},
    {"transpose", 1, true, run_transpose},
    {"permute", 1, true, run_permute},
    {"broadcast_to", 1, true, run_broadcast_to},
    /* the dtype is the point: a float32 pass would test a different conversion */
    {"cast_f32", 1, false, run_cast_f32},
    {"cast_f64", 1, false, run_cast_f64},
    /* the full primitive set */
    {"pow", 2, true, run_pow},
    {"maximum", 2, true, run_maximum},
    {"minimum", 2, true, run_minimum},
    {"sub_scalar", 1, true, run_sub_scalar},
    {"rdiv_scalar", 1, true, run_rdiv_scalar},
    {"pow_scalar", 1, true, run_pow_scalar},
    {"sqrt", 1, true, run_sqrt},
    {"abs", 1, true, run_abs},
    {"sin", 1, true, run_sin},
    {"cos", 1, true, run_cos},
    {"erf", 1, true, run_erf},
    {"log1p", 1, true, run_log1p},
    {"expm1", 1, true, run_expm1},
    {"leaky_relu", 1, true, run_leaky_relu},
    {"elu", 1, true, run_elu},
    {"softplus", 1, true, run_softplus},
    {"gelu", 1, true, run_gelu},
    {"clamp", 1, true, run_clamp},
    {"reciprocal", 1, true, run_reciprocal},
    {"square", 1, true, run_square},
    {"where", 3, true, run_where},
    {"max", 1, true, run_max},
    {"min", 1, true, run_min},
    {"logsumexp", 1, true, run_logsumexp},
    {"var", 1, true, run_var},
    {"std", 1, true, run_std},
    {"softmax", 1, true, run_softmax},
    {"log_softmax", 1, true, run_log_softmax},
    {"slice", 1, true, run_slice},
    {"concat", -1, true, run_concat},
    {"stack", -1, true, run_stack},
    {"split", 1, true, run_split},
    {"chunk", 1, true, run_chunk},
    {"squeeze", 1, true, run_squeeze},
    {"unsqueeze", 1, true, run_unsqueeze},
    {"pad", 1, true, run_pad},
    {"index_select", 2, true, run_index_select},
    {"gather", 2, true, run_gather},
    {"scatter_add", 2, true, run_scatter_add},
    {"dropout", 1, true, run_dropout},
};
#define N_OPS ((int)(sizeof(OPS) / sizeof(OPS[0])))

static const fx_op *op_find(const char *name)
{
    for (int i = 0; i < N_OPS; i++)
        if (!strcmp(OPS[i].name, name)) return &OPS[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* Running and comparing                                                                           */
/* ---------------------------------------------------------------------------------------------- */

typedef struct op_stats {
    int cases, checks, failures;
    double max_rel[2]; /* [0] float64 pass, [1] float32 pass */
} op_stats;

static op_stats stats[N_OPS];
static double max_rel_all[2];
static long long elements_compared;

/* Prints at most this many failing elements per tensor. */
#define MAX_ELEM_REPORTS 4

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

/* "1,2,0" of a flat row-major index */
static const char *index_str(const fx_tensor *ref, int64_t flat, char *buf, size_t size)
{
    int64_t idx[NB_MAX_DIMS];
    for (int d = ref->ndim - 1; d >= 0; d--) {
        idx[d] = ref->shape[d] ? flat % ref->shape[d] : 0;
        flat = ref->shape[d] ? flat / ref->shape[d] : 0;
    }
    size_t n = 0;
    buf[0] = '\0';
    for (int d = 0; d < ref->ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", d ? "," : "", (long long)idx[d]);
    return buf;
}

#define FAIL_CASE(c, mode, ...)                                                                        \
    do {                                                                                               \
        nbt_failures++;                                                                                \
        st->failures++;                                                                                \
        fprintf(stderr, "FAIL case %s (%s, line %d) %s: ", (c)->name, (c)->op, (c)->line,             \
                (mode) ? "f32 pass" : "f64");                                                          \
        fprintf(stderr, __VA_ARGS__);                                                                  \
        fprintf(stderr, "\n");                                                                         \
    } while (0)

/* Compare tensor t (nabla's) with the fixture's ref. mode 0: f64 tolerances and t must have ref's
 * dtype; mode 1: f32 tolerances and t must be float32 where ref is floating. */
static void compare(op_stats *st, const fx_case *c, int mode, const char *what, const nb_tensor *t,
                    const fx_tensor *ref)
{
    char b1[96], b2[96];
    nbt_checks++;
    st->checks++;
    nb_dtype want_dt = mode && ref->dtype == NB_F64 ? NB_F32 : ref->dtype;
    if (!t) {
        FAIL_CASE(c, mode, "%s: no tensor", what);
        return;
    }
    if (nb_tensor_dtype(t) != want_dt) {
        FAIL_CASE(c, mode, "%s: dtype %s, expected %s", what, nb_dtype_name(nb_tensor_dtype(t)), nb_dtype_name(want_dt));
        return;
    }
    if (nb_tensor_ndim(t) != ref->ndim ||
        memcmp(nb_tensor_shape(t), ref->shape, (size_t)ref->ndim * sizeof(int64_t))) {
        FAIL_CASE(c, mode, "%s: shape %s, expected %s", what,
                  shape_str(nb_tensor_ndim(t), nb_tensor_shape(t), b1, sizeof b1),
                  shape_str(ref->ndim, ref->shape, b2, sizeof b2));
        return;
    }
    double scale = 0;
    for (int64_t i = 0; i < ref->numel; i++)
        if (isfinite(ref->v[i]) && fabs(ref->v[i]) > scale) scale = fabs(ref->v[i]);
    double rtol = mode ? F32_RTOL : F64_RTOL;
    double atol = (mode ? F32_ATOL_SCALE : F64_ATOL_SCALE) * scale;
    int bad = 0;
    for (int64_t i = 0; i < ref->numel; i++) {
        double got = nb_tensor_get(t, i), want = ref->v[i];
        bool ok;
        if (isnan(want) || isinf(want))
            ok = isnan(want) ? isnan(got) : got == want;
        else {
            double diff = fabs(got - want);
            ok = diff <= rtol * fabs(want) + atol; /* false for a NaN got */
            /* relative error, measured against the floor's scale for values below it */
            double denom = fmax(fabs(want), atol / rtol);
            double rel = denom > 0 ? diff / denom : (diff > 0 ? INFINITY : 0);
            if (!(rel <= st->max_rel[mode])) st->max_rel[mode] = isnan(rel) ? INFINITY : rel;
            if (!(rel <= max_rel_all[mode])) max_rel_all[mode] = isnan(rel) ? INFINITY : rel;
        }
        elements_compared++;
        if (!ok) {
            if (!bad) FAIL_CASE(c, mode, "%s differs from PyTorch:", what);
            if (bad < MAX_ELEM_REPORTS)
                fprintf(stderr, "    %s[%s] (flat %lld): got %.17g, expected %.17g (|diff| %.3g, tol %.3g)\n", what,
                        index_str(ref, i, b1, sizeof b1), (long long)i, got, want, fabs(got - want),
                        rtol * fabs(want) + atol);
            bad++;
        }
    }
    if (bad > MAX_ELEM_REPORTS) fprintf(stderr, "    ... %d of %lld elements of %s differ\n", bad, (long long)ref->numel, what);
}

/* A leaf of dtype dt from a fixture tensor. */
static nb_tensor *make_leaf(const fx_tensor *ft, nb_dtype dt)
{
    size_t es = nb_dtype_size(dt);
    void *buf = malloc((size_t)(ft->numel ? ft->numel : 1) * es);
    if (!buf) return NULL;
    for (int64_t i = 0; i < ft->numel; i++) {
        if (dt == NB_F64)
            ((double *)buf)[i] = ft->v[i];
        else if (dt == NB_F32)
            ((float *)buf)[i] = (float)ft->v[i];
        else
            ((int64_t *)buf)[i] = (int64_t)ft->v[i];
    }
    nb_tensor *t = nb_tensor_from_data(dt, ft->ndim, ft->shape, buf);
    free(buf);
    return t;
}

/* One pass of one case. mode 0: as stored; mode 1: float64 inputs and seed cast to float32. */
static void run_case(fx_case *c, const fx_op *op, op_stats *st, int mode)
{
    nb_tensor *leaves[FX_MAX_IN] = {0}, *seed = NULL;
    nb_tape *tape = nb_tape_new();
    char what[32];
    nb_error_clear();
    fx_run_err[0] = '\0';
    if (!tape || nb_tape_begin(tape) != NB_OK) {
        FAIL_CASE(c, mode, "cannot start a tape: %s", nb_error_message());
        goto done;
    }
    for (int i = 0; i < c->nin; i++) {
        nb_dtype dt = mode && c->in[i].dtype == NB_F64 ? NB_F32 : c->in[i].dtype;
        leaves[i] = make_leaf(&c->in[i], dt);
        if (!leaves[i] || (c->grad[i].present && nb_tensor_set_requires_grad(leaves[i], 1) != NB_OK)) {
            FAIL_CASE(c, mode, "cannot make input in%d: %s", i, nb_error_message());
            goto done;
        }
    }
    for (int i = 0; i < c->nattr; i++) c->attr[i].used = false;
    nb_tensor *out = op->run(c, c->nin, leaves);
    for (int i = 0; i < c->nattr; i++)
        if (!c->attr[i].used) {
            FAIL_CASE(c, mode, "attribute %s is not read by the %s runner", c->attr[i].key, c->op);
            goto done;
        }
    if (!out) {
        FAIL_CASE(c, mode, "op failed: %s", fx_run_err[0] ? fx_run_err : nb_error_message());
        goto done;
    }
    compare(st, c, mode, "out", out, &c->out);
    if (nb_tensor_dtype(out) != (mode && c->out.dtype == NB_F64 ? NB_F32 : c->out.dtype)) goto done;
    seed = make_leaf(&c->seed, nb_tensor_dtype(out));
    if (!seed || nb_backward(out, seed, 0) != NB_OK) {
        FAIL_CASE(c, mode, "backward failed: %s", nb_error_message());
        goto done;
    }
    for (int i = 0; i < c->nin; i++) {
        if (!c->grad[i].present) continue;
        snprintf(what, sizeof what, "grad%d", i);
        nb_tensor *g = nb_tensor_grad(leaves[i]);
        if (!g) {
            st->checks++, nbt_checks++;
            FAIL_CASE(c, mode, "%s: no gradient reached in%d", what, i);
            continue;
        }
        compare(st, c, mode, what, g, &c->grad[i]);
    }
    if (nb_error_code() != NB_OK) FAIL_CASE(c, mode, "error left recorded: %s", nb_error_message());
done:
    nb_error_clear();
    if (tape) {
        if (nb_tape_current() == tape) nb_tape_end(tape);
        nb_tape_free(tape); /* before the leaves it recorded */
    }
    nb_tensor_free(seed);
    for (int i = 0; i < c->nin; i++) nb_tensor_free(leaves[i]);
}

/* ---------------------------------------------------------------------------------------------- */
/* The parser rejects malformed files with a message (checked on built-in snippets)               */
/* ---------------------------------------------------------------------------------------------- */

#define HDR "nabla-fixtures 1\n"
#define GOOD_BODY                                                                                      \
    "tensor in0 f64 1 2 1 2\ntensor out f64 1 2 1 2\ntensor seed f64 1 2 1 1\ntensor grad0 f64 1 2 1 1\n"

static void parser_selftest(void)
{
    static const struct {
        const char *text, *needle; /* needle NULL: must parse */
    } t[] = {
        {HDR "# ok\ncase a neg\n" GOOD_BODY "end\n", NULL},
        {HDR "case a neg\r\n" GOOD_BODY "end", NULL},
        {"", "no \"nabla-fixtures 1\" header"},
        {"# only a comment\n", "header"},
        {"case a neg\n", "expected the header"},
        {"nabla-fixtures 2\n", "format version 2"},
        {"nabla-fixtures x\n", "bad format version"},
        {HDR, "no cases"},
        {HDR "case a neg\n" GOOD_BODY, "has no end"},
        {HDR "case a neg\ncase b neg\n", "missing end"},
        {HDR "tensor in0 f64 0 1\n", "outside a case"},
        {HDR "end\n", "outside a case"},
        {HDR "case a\n", "missing op"},
        {HDR "case a neg extra\n", "unexpected text"},
        {HDR "case a/b neg\n", "has a character"},
        {HDR "case a neg\nfoo\n", "unknown directive \"foo\""},
        {HDR "case a neg\ntensor in0 f65 0 1\n", "unknown dtype"},
        {HDR "case a neg\ntensor in0 f64 9 1 1 1 1 1 1 1 1 1 1\n", "ndim 9 out of range"},
        {HDR "case a neg\ntensor in0 f64 1 -2\n", "extent -2 out of range"},
        {HDR "case a neg\ntensor in0 f64 2 16777216 16777216\n", "more than"},
        {HDR "case a neg\ntensor in0 f64 1 3 1 2\n", "2 values for 3 elements"},
        {HDR "case a neg\ntensor in0 f64 1 1 1 2\n", "more than 1 values"},
        {HDR "case a neg\ntensor in0 f64 1 1 1.5x\n", "bad value \"1.5x\""},
        {HDR "case a neg\ntensor in0 f64 1 1 1e999\n", "overflows"},
        {HDR "case a neg\ntensor in0 f32 1 1 0.1\n", "not exactly a float32"},
        {HDR "case a neg\ntensor in0 i64 1 1 0.5\n", "bad i64 value"},
        {HDR "case a neg\ntensor in0 f64\n", "missing ndim"},
        {HDR "case a neg\ntensor\n", "missing role"},
        {HDR "case a neg\ntensor foo f64 0 1\n", "unknown role"},
        {HDR "case a neg\ntensor in16 f64 0 1\n", "bad role"},
        {HDR "case a neg\ntensor in01 f64 0 1\n", "bad role"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor in0 f64 0 1\n", "given twice"},
        {HDR "case a neg\ntensor in1 f64 0 1\ntensor out f64 0 1\ntensor seed f64 0 1\nend\n", "without in0"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor seed f64 0 1\nend\n", "no out"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor out f64 0 1\nend\n", "no seed"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor out f64 0 1\ntensor seed f64 1 1 1\nend\n", "seed"},
        {HDR "case a neg\ntensor in0 f64 0 1\ntensor out f64 0 1\ntensor seed f64 0 1\ntensor grad0 f64 1 1 1\nend\n",
         "grad0"},
        {HDR "case a neg\ntensor in0 i64 0 1\ntensor out f64 0 1\ntensor seed f64 0 1\ntensor grad0 i64 0 1\nend\n",
         "grad0 of an i64 input"},
        {HDR "case a neg\nattr\n", "missing attribute key"},
        {HDR "case a neg\nattr k 1 z\n", "bad attribute value"},
        {HDR "case a neg\nattr k 1 2 3 4 5 6 7 8 9\n", "more than 8 values"},
        {HDR "case a neg\nattr k 1\nattr k 2\n", "given twice"},
        {HDR "case a neg\n" GOOD_BODY "end\ncase a neg\n", "defined twice"},
        {HDR "case a neg\n" GOOD_BODY "end now\n", "after end"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        char *text = malloc(strlen(t[i].text) + 1);
        if (!text) {
            CHECK(0, "out of memory");
            return;
        }
        strcpy(text, t[i].text);
        fx_file f;
        bool ok = fx_parse(text, "snippet", &f, err, sizeof err);
        if (!t[i].needle)
            CHECK(ok, "parser self-test %zu: a valid snippet was rejected: %s", i, err);
        else
            CHECK(!ok && strstr(err, t[i].needle) && !strncmp(err, "snippet:", 8),
                  "parser self-test %zu: expected a rejection naming \"%s\", got %s%s", i, t[i].needle,
                  ok ? "success" : "", ok ? "" : err);
        if (ok) fx_file_free(&f);
        free(text);
    }
}

/* ---------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURE_FILE\n", argc ? argv[0] : "test_fixtures");
        return 2;
    }
    parser_selftest();

    fx_file f;
    char err[512];
    if (!fx_load(argv[1], &f, err, sizeof err)) {
        fprintf(stderr, "FAIL: cannot read fixtures: %s\n", err);
        return 1;
    }

    /* Every case has a runner of the right arity; every runner has a case. */
    int ncases_run = 0, npasses = 0;
    for (int i = 0; i < f.ncases; i++) {
        fx_case *c = &f.cases[i];
        const fx_op *op = op_find(c->op);
        nbt_checks++;
        if (!op) {
            NBT_FAIL("case %s (line %d): no runner for op \"%s\" in test_fixtures.c's OPS table", c->name,
                     c->line, c->op);
            continue;
        }
        if (op->arity >= 0 && c->nin != op->arity) {
            NBT_FAIL("case %s (line %d): %d inputs, op %s takes %d", c->name, c->line, c->nin, c->op, op->arity);
            continue;
        }
        op_stats *st = &stats[op - OPS];
        st->cases++;
        ncases_run++;
        run_case(c, op, st, 0);
        npasses++;
        if (op->f32) {
            run_case(c, op, st, 1);
            npasses++;
        }
    }
    int nops = 0;
    for (int k = 0; k < N_OPS; k++) {
        nbt_checks++;
        if (stats[k].cases)
            nops++;
        else
            NBT_FAIL("op %s has a runner but no case in %s", OPS[k].name, argv[1]);
    }

    printf("fixtures: %d cases (%d passes) over %d ops, %lld elements compared\n", ncases_run, npasses, nops,
           elements_compared);
    printf("fixtures: max relative error vs PyTorch: f64 %.3g (tol %g), f32 pass %.3g (tol %g)\n", max_rel_all[0],
           F64_RTOL, max_rel_all[1], F32_RTOL);
    if (nbt_failures) {
        printf("%-14s %6s %7s %7s %11s %11s\n", "op", "cases", "checks", "failed", "max rel f64", "max rel f32");
        for (int k = 0; k < N_OPS; k++)
            printf("%-14s %6d %7d %7d %11.3g %11.3g%s\n", OPS[k].name, stats[k].cases, stats[k].checks,
                   stats[k].failures, stats[k].max_rel[0], stats[k].max_rel[1], stats[k].failures ? "  <--" : "");
    }
    fx_file_free(&f);
    return nbt_report("fixtures");
}
