/* Reference fixtures: reading the text files that tests/gen_*fixtures.py write (every error named by
 * file and line), and comparing nabla's results with their values. Shared by test_fixtures.c,
 * test_nn_fixtures.c and test_optim.c; each test keeps its own tolerances and checks.
 *
 * The line syntax is gen_fixtures.py's: tokens separated by spaces, `#` comments and blank lines
 * ignored, a header "<format name> <version>" first. fx_parse reads the case files of the op and nn
 * fixtures (case / attr / tensor / end); test_optim.c reads its own directives with the token
 * parsers below. */
#ifndef FIXTURE_H
#define FIXTURE_H

#include <nabla.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define FX_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define FX_PRINTF(fmt, args)
#endif

#define FX_MAX_NAME 64
#define FX_MAX_TENSORS 48
#define FX_MAX_ATTRS 16
#define FX_MAX_ATTR_VALS NB_MAX_DIMS
#define FX_MAX_NUMEL ((int64_t)1 << 24)

/* ---- tokens ---------------------------------------------------------------------------------- */

/* Where the parser is: the file's name, the current line (counted by fx_next_directive) and the
 * buffer that receives the error message. */
typedef struct fx_parser {
    const char *fname;
    int line;
    char *err;
    size_t errsize;
} fx_parser;

/* Writes "<file>:<line>: <message>" into p->err; returns false. */
bool fx_fail(fx_parser *p, const char *fmt, ...) FX_PRINTF(2, 3);

/* The next whitespace-separated token of the line at *s (NUL-terminated in place), or NULL. */
char *fx_token(char **s);

/* The first token of the next line that is neither blank nor a comment, *rest the rest of that line
 * (both NUL-terminated in place, *text advanced past it); NULL at the end of the text. */
char *fx_next_directive(fx_parser *p, char **text, char **rest);

/* The header line: kw must be `name` and rest exactly `version`. */
bool fx_header(fx_parser *p, const char *kw, char *rest, const char *name, int version);

/* Parsers of one token (tok NULL: "missing <what>"); each fails with a message naming `what`. */
bool fx_int(fx_parser *p, const char *tok, const char *what, int64_t lo, int64_t hi, int64_t *out);
bool fx_number(fx_parser *p, const char *tok, const char *what, double *out); /* inf and nan allowed */
bool fx_finite(fx_parser *p, const char *tok, const char *what, double *out);
/* A name (case, op, attribute key, state): 1..FX_MAX_NAME-1 characters of [A-Za-z0-9_.-], into out
 * (FX_MAX_NAME bytes). */
bool fx_name(fx_parser *p, const char *tok, const char *what, char *out);

/* The whole file as a NUL-terminated string (malloc'd, the caller frees it), or NULL with the reason
 * in err (also for a file holding a NUL byte). */
char *fx_read_text(const char *path, char *err, size_t errsize);

/* ---- tensors ----------------------------------------------------------------------------------- */

typedef struct fx_tensor {
    char role[FX_MAX_NAME]; /* as written: in0, out, grad1, param:rnn.weight_ih_l0, ... */
    int kind, index;        /* the role as the test's role callback reads it */
    char name[FX_MAX_NAME]; /* the role's name part, for formats whose roles have one */
    nb_dtype dtype;
    int ndim;
    int64_t shape[NB_MAX_DIMS];
    int64_t numel;
    double *v; /* numel values (i64 values are integers below 2^53 in magnitude) */
    int line;
    bool used; /* consumed by the test's run (it decides what an unused tensor means) */
} fx_tensor;

/* "<ndim> <dims...> <values...>" (the rest of a line) into t, whose dtype is set: ndim 0..NB_MAX_DIMS,
 * at most FX_MAX_NUMEL elements, exactly that many values; f32 values must be exact float32s, i64
 * values integers. t->v is allocated (also on failure: fx_tensor_free releases it). */
bool fx_parse_array(fx_parser *p, char *s, const char *what, fx_tensor *t);

bool fx_same_shape(const fx_tensor *a, const fx_tensor *b);
void fx_tensor_free(fx_tensor *t);

/* A leaf of dtype dt holding t's values; NULL with nabla's error on failure. */
nb_tensor *fx_leaf(const fx_tensor *t, nb_dtype dt);

/* ---- case files (op and nn fixtures) ------------------------------------------------------------
 *     case <name> <op>                  a case; <op> names the test's runner
 *     attr <key> [<number> ...]         an attribute: zero or more numbers
 *     tensor <role> <dtype> <ndim> <dim>... <value>...
 *     end                               ends the case                                                */

typedef struct fx_attr {
    char key[FX_MAX_NAME];
    int n;
    double v[FX_MAX_ATTR_VALS];
    bool used; /* read by the runner (an unread attribute is an error: likely a typo) */
} fx_attr;

typedef struct fx_case {
    char name[FX_MAX_NAME];
    char op[FX_MAX_NAME]; /* what the case runs: the op, or the layer */
    int line;
    int nattr;
    fx_attr attr[FX_MAX_ATTRS];
    int nt;
    fx_tensor t[FX_MAX_TENSORS]; /* in file order; roles are unique within a case */
} fx_case;

typedef struct fx_file {
    int ncases;
    fx_case *cases;
} fx_file;

/* What one case file format adds to the common syntax. */
typedef struct fx_format {
    const char *header; /* the header's name; then `version` */
    int version;
    const char *op_word; /* what a case names after its own name, for messages: "op", "layer" */
    unsigned dtypes;     /* the dtypes a tensor may have: bit 1u << d for nb_dtype d */
    /* Reads t->role into t->kind / t->index / t->name, or fails (before the tensor's values). */
    bool (*role)(fx_parser *p, fx_tensor *t);
    /* The checks that need the whole case, at its end. */
    bool (*finish)(fx_parser *p, fx_case *c);
} fx_format;

/* Parses text (NUL-terminated, modified in place) into f. On failure returns false with the message
 * in err and f empty. */
bool fx_parse(const fx_format *fmt, char *text, const char *fname, fx_file *f, char *err, size_t errsize);
/* fx_parse of the file at path. */
bool fx_load(const fx_format *fmt, const char *path, fx_file *f, char *err, size_t errsize);
void fx_file_free(fx_file *f);

/* The parser's self-test on one snippet of a file (named "snippet"): true when fx_parse accepts text
 * and needle is NULL, or rejects it with a message naming the snippet that contains needle; else
 * false with what happened in err. */
bool fx_snippet_ok(const fx_format *fmt, const char *text, const char *needle, char *err, size_t errsize);

/* Attribute `key` of c, marked as used; NULL when c has none. (Inline, so that the compiler can follow
 * what the tests' attribute readers built on it set.) */
static inline fx_attr *fx_attr_find(fx_case *c, const char *key)
{
    for (int i = 0; i < c->nattr; i++)
        if (!strcmp(c->attr[i].key, key)) {
            c->attr[i].used = true;
            return &c->attr[i];
        }
    return NULL;
}

/* ---- comparison ---------------------------------------------------------------------------------- */

/* A value passes when |got - want| <= rtol |want| + atol (a NaN reference wants a NaN, an infinite one
 * itself). The relative error kept in fx_err is |got - want| / max(|want|, rel_floor): atol / rtol
 * measures values below the absolute floor against it, 0 gives the plain relative error. */
typedef struct fx_tol {
    double rtol, atol, rel_floor;
} fx_tol;

/* The worst agreement seen over the finite reference values compared so far. */
typedef struct fx_err {
    long long compared; /* every value compared */
    double max_abs;     /* largest |got - want| */
    double max_rel;     /* largest relative error as fx_tol defines it (a NaN counts as infinite) */
} fx_err;

/* One value: whether it passes; e takes its error. */
bool fx_close(fx_err *e, double got, double want, const fx_tol *tol);

#define FX_MAX_ELEM_REPORTS 4

/* got[0..n) by flat index (nabla's tensor, whose shape and dtype the caller has checked) against
 * want[0..n). Returns the number of values that fail; on any, prints "FAIL <ctx>: <what> differs from
 * PyTorch:" and the first FX_MAX_ELEM_REPORTS of them to stderr. Counts no checks. */
int64_t fx_compare(fx_err *e, const char *ctx, const char *what, const nb_tensor *got, const double *want,
                   int64_t n, const fx_tol *tol);
/* The same for plain values. */
int64_t fx_compare_values(fx_err *e, const char *ctx, const char *what, const double *got, const double *want,
                          int64_t n, const fx_tol *tol);

#endif
