/* nb_tensor_print against PyTorch's printed layout, and the one-line form.
 *
 *   test_print FILE    (tests/fixtures/print.txt, written by tests/gen_print_fixtures.py)
 *
 * Every case of the file builds its tensor from the formula the generator used and compares what
 * nb_tensor_print writes, after its "label = dtype[shape]" header, with PyTorch's text byte for byte:
 * nested brackets, one row per line, aligned columns, 4 decimals / "3." / scientific notation as
 * PyTorch chooses, rows wrapped at 80 columns, summaries with "..." beyond the threshold. Then the
 * cases the file cannot hold: headers, NULL, empty tensors, NaN wider than the numbers (nabla keeps
 * the columns aligned), and nb_tensor_print_line. */
#include "fixture.h"
#include "nbtest.h"

#include <math.h>
#include <stdlib.h>

/* What nb_tensor_print (or _line) wrote for t, as a malloc'd string. */
static char *printed(const nb_tensor *t, const char *label, int64_t max_elems, int line)
{
    FILE *f = tmpfile();
    if (!f) return NULL;
    if (line)
        nb_tensor_print_line(t, label, f, max_elems);
    else
        nb_tensor_print(t, label, f, max_elems);
    long n = ftell(f);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    rewind(f);
    if (s) s[fread(s, 1, (size_t)n, f)] = '\0';
    fclose(f);
    return s;
}

static void expect(const char *what, const nb_tensor *t, const char *label, int64_t max_elems, int line,
                   const char *want)
{
    char *got = printed(t, label, max_elems, line);
    CHECK(got && !strcmp(got, want), "%s: printed\n%s\nexpected\n%s", what, got ? got : "(nothing)", want);
    free(got);
}

/* The generator's formulas (see gen_print_fixtures.py). */
static double value(const char *kind, int64_t i, double scale)
{
    double base = (double)((i * 37) % 101 - 50);
    if (!strcmp(kind, "arange")) return (double)i * scale;
    if (!strcmp(kind, "mix")) return base * scale;
    if (!strcmp(kind, "special")) {
        if (i % 11 == 1) return NAN;
        if (i % 13 == 2) return INFINITY;
        if (i % 17 == 3) return -INFINITY;
    }
    return base / 7.0 * scale;
}

static nb_tensor *build(const char *dtype, const char *kind, double scale, int ndim, const int64_t *shape)
{
    nb_dtype dt = !strcmp(dtype, "f32") ? NB_F32 : !strcmp(dtype, "i64") ? NB_I64 : NB_F64;
    nb_tensor *t = nb_tensor_zeros(dt, ndim, shape);
    for (int64_t i = 0; t && i < nb_tensor_numel(t); i++) {
        double v = value(kind, i, scale);
        if (dt == NB_I64) v = trunc(v); /* Python's int() */
        nb_tensor_set(t, i, v);
    }
    return t;
}

static int run_file(const char *path)
{
    char err[512];
    char *text = fx_read_text(path, err, sizeof err);
    if (!text) {
        NBT_FAIL("cannot read %s: %s", path, err);
        return 0;
    }
    int cases = 0, lineno = 0;
    bool header = false;
    char *line = text, *want = NULL;
    size_t want_len = 0, want_cap = 0;
    char name[64] = "", dtype[8], kind[16];
    double scale = 0;
    long threshold = 0;
    int ndim = 0;
    int64_t shape[NB_MAX_DIMS];
    bool in_case = false;
    while (line && *line) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        lineno++;
        if (!header) {
            if (line[0] == '#' || !line[0]) goto advance;
            CHECK(!strcmp(line, "nabla-print 1"), "%s:%d: expected the header \"nabla-print 1\"", path, lineno);
            header = true;
        } else if (!strncmp(line, "case ", 5)) {
            int used = 0;
            CHECK(!in_case, "%s:%d: case inside a case", path, lineno);
            int k = sscanf(line + 5, "%63s %7s %15s %lf %ld %d%n", name, dtype, kind, &scale, &threshold, &ndim, &used);
            bool ok = k == 6 && ndim >= 0 && ndim <= NB_MAX_DIMS;
            char *p = line + 5 + used;
            for (int d = 0; ok && d < ndim; d++) {
                long long e;
                int u = 0;
                ok = sscanf(p, "%lld%n", &e, &u) == 1 && e >= 0;
                shape[d] = e;
                p += u;
            }
            CHECK(ok, "%s:%d: bad case line", path, lineno);
            in_case = ok;
            want_len = 0;
        } else if (line[0] == '|' && in_case) {
            const char *body = line[1] == ' ' ? line + 2 : line + 1;
            size_t n = strlen(body);
            if (want_len + n + 2 > want_cap) {
                want_cap = 2 * (want_len + n + 2);
                want = realloc(want, want_cap);
            }
            memcpy(want + want_len, body, n);
            want_len += n;
            want[want_len++] = '\n';
            want[want_len] = '\0';
        } else if (!strcmp(line, "end") && in_case) {
            /* header, then the body: on the header's line for a 0-d tensor */
            nb_tensor *t = build(dtype, kind, scale, ndim, shape);
            char full[16384], sh[128];
            if (want_len) want[want_len - 1] = '\0';
            snprintf(full, sizeof full, "x = %s%s%s%s\n", dtype, nb_shape_str(t, sh, sizeof sh), ndim ? "\n" : " ",
                     want ? want : "");
            expect(name, t, "x", threshold, 0, full);
            nb_tensor_free(t);
            cases++;
            in_case = false;
        } else if (line[0] != '#' && line[0]) {
            NBT_FAIL("%s:%d: unexpected line \"%s\"", path, lineno, line);
        }
    advance:
        line = next;
    }
    CHECK(!in_case, "%s: the last case has no end", path);
    free(want);
    free(text);
    return cases;
}

static void test_direct(void)
{
    nb_tensor *m = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 3), (const double[]){1, 2, 3, 4, 5, 6.5});
    expect("label and header", m, "df/dx", 0, 0, "df/dx = f64[2,3]\n[[1.0000, 2.0000, 3.0000],\n [4.0000, 5.0000, 6.5000]]\n");
    expect("no label", m, NULL, 0, 0, "f64[2,3]\n[[1.0000, 2.0000, 3.0000],\n [4.0000, 5.0000, 6.5000]]\n");
    expect("one line", m, "m", 0, 1, "m = f64[2,3] [ 1 2 3; 4 5 6.5 ]\n");
    expect("one line, 4 values", m, "m", 4, 1, "m = f64[2,3] [ 1 2 3; 4 ... ]\n");
    expect("NULL", NULL, "g", 0, 0, "g = (null)\n");
    nb_tensor *e = nb_tensor_zeros(NB_F32, NB_SHAPE(2, 0, 3));
    expect("empty", e, "e", 0, 0, "e = f32[2,0,3] []\n");
    /* NaN wider than the numbers: the columns stay aligned (PyTorch would write "[[1., nan]," over
     * "[2., 3.]]") */
    nb_tensor *n = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 2), (const double[]){1, NAN, 2, -INFINITY});
    expect("nan aligned", n, "n", 0, 0, "n = f64[2,2]\n[[  1.,  nan],\n [  2., -inf]]\n");
    nb_tensor *i = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){INT64_MIN, 0, 7});
    expect("i64 extremes", i, "i", 0, 0, "i = i64[3]\n[-9223372036854775808,                    0,                    7]\n");
    nb_tensor_free(m);
    nb_tensor_free(e);
    nb_tensor_free(n);
    nb_tensor_free(i);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s tests/fixtures/print.txt\n", argc ? argv[0] : "test_print");
        return 2;
    }
    int cases = run_file(argv[1]);
    printf("print: %d layouts compared with PyTorch's\n", cases);
    CHECK(cases >= 20, "%d cases read, expected at least 20", cases);
    test_direct();
    CHECK_NO_ERROR();
    return nbt_report("print");
}
