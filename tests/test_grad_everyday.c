/* The everyday ops (flip, roll, repeat, tile, cumsum, cumprod, sort, argsort, topk, masked_fill, triu,
 * tril, einsum) and integer tensors.
 *
 * A table of float64 gradient checks, first and second order (gradtable.h: rows marked LINEAR have a
 * gradient that does not depend on the inputs, so their gradgradcheck error must be exactly 0), with
 * inputs away from ties (sort, topk); then cumprod with zeros in its input, checked to first and second
 * order at the zeros themselves; then values that a gradient check cannot see: the tie order of sort,
 * argsort and topk, NaN in a sort, i64 arithmetic that wraps, comparisons of integers beyond 2^53,
 * counting correct predictions without casts, i64 results never recorded, empty tensors, and einsum
 * reading a transposed operand without a copy. */
/* gradtable.h also defines the first op set's functions, which this file does not use */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "gradtable.h"
#pragma GCC diagnostic pop
#include "nbtest.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* ---- the functions under test ------------------------------------------------------------------ */

typedef struct int_arg {
    int axis;
    int64_t v[8];
} int_arg;
#define IA(...) (&(const int_arg){__VA_ARGS__})
#define AXIS_ARG(k) (&(const int){k})

static nb_tensor *f_flip(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_flip(in[0], a->naxes, a->axes);
}
/* tanh after the flip: a curved function through it, for a non-zero second derivative */
static nb_tensor *f_flip_tanh(void *user, nb_tensor *const *in) { return nb_tanh(f_flip(user, in)); }
static nb_tensor *f_roll(void *user, nb_tensor *const *in) { return nb_roll(in[0], ARG(int_arg)->v[0], ARG(int_arg)->axis); }
/* v: the counts, ended by -1 */
static int count_of(const int_arg *a)
{
    int n = 0;
    while (n < 8 && a->v[n] >= 0) n++;
    return n;
}
static nb_tensor *f_repeat(void *user, nb_tensor *const *in) { return nb_repeat(in[0], count_of(user), ARG(int_arg)->v); }
static nb_tensor *f_tile(void *user, nb_tensor *const *in) { return nb_tile(in[0], count_of(user), ARG(int_arg)->v); }
static nb_tensor *f_cumsum(void *user, nb_tensor *const *in) { return nb_cumsum(in[0], *(const int *)user); }
static nb_tensor *f_cumprod(void *user, nb_tensor *const *in) { return nb_cumprod(in[0], *(const int *)user); }
/* cumprod's create-graph gradient d/dx sum(w cumprod(x)) (in: x, w): records the linear recurrence its
 * rule is made of, whose checks here are cumprod's second and third order */
static nb_tensor *f_cumprod_grad(void *user, nb_tensor *const *in)
{
    nb_tensor *x = in[0], *g = NULL;
    nb_tensor *y = nb_sum_all(nb_mul(in[1], nb_cumprod(x, *(const int *)user)));
    return y && nb_grad(y, NULL, 1, &x, &g, NB_CREATE_GRAPH) == NB_OK ? g : NULL;
}
/* sort / topk: axis, v[0] = descending (largest), v[1] = k */
static nb_tensor *f_sort(void *user, nb_tensor *const *in)
{
    return nb_sort(in[0], ARG(int_arg)->axis, (int)ARG(int_arg)->v[0], NULL);
}
static nb_tensor *f_sort_sq(void *user, nb_tensor *const *in) { return nb_square(f_sort(user, in)); }
static nb_tensor *f_topk(void *user, nb_tensor *const *in)
{
    const int_arg *a = user;
    return nb_topk(in[0], a->v[1], a->axis, (int)a->v[0], NULL);
}
/* masked_fill(x, c > 0, -3) with the constant input c (in: x, c) */
static nb_tensor *f_masked_fill(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_masked_fill(in[0], nb_gt(in[1], nb_zeros(NB_F64, 0, NULL)), -3.0);
}
/* triu / tril: v[0] = upper, v[1] = diagonal */
static nb_tensor *f_band(void *user, nb_tensor *const *in)
{
    const int_arg *a = user;
    return a->v[0] ? nb_triu(in[0], a->v[1]) : nb_tril(in[0], a->v[1]);
}
static nb_tensor *f_einsum(void *user, nb_tensor *const *in)
{
    const char *eq = user;
    return nb_einsum(eq, strchr(eq, ',') ? 2 : 1, in);
}
/* einsum of one operand with itself: x^T x, curved in x */
static nb_tensor *f_einsum_gram(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    nb_tensor *xx[2] = {in[0], in[0]};
    return nb_einsum("ki,kj->ij", 2, xx);
}

/* ---- the table ----------------------------------------------------------------------------------- */

typedef struct row {
    const char *op;
    const char *name;
    nb_func f;
    const void *arg;
    int n_in;
    input_spec in[4];
    int order;
} row;

#define R1(...) IN(-1, 1, __VA_ARGS__)

static const row rows[] = {
    {"flip", "flip [2,3,4] axis 1", f_flip, AX(1, {1}, 0), 1, {R1(2, 3, 4)}, LINEAR},
    {"flip", "flip [2,3,4] axes 0,-1", f_flip, AX(2, {0, -1}, 0), 1, {R1(2, 3, 4)}, LINEAR},
    {"flip", "flip all", f_flip, AX(0, {0}, 0), 1, {R1(3, 4)}, LINEAR},
    {"flip", "tanh(flip)", f_flip_tanh, AX(1, {0}, 0), 1, {R1(3, 4)}, CURVED},
    {"roll", "roll [2,5] by 2 along 1", f_roll, IA(1, {2}), 1, {R1(2, 5)}, LINEAR},
    {"roll", "roll [4,3] by -5 along 0", f_roll, IA(0, {-5}), 1, {R1(4, 3)}, LINEAR},
    {"repeat", "repeat [2,3] 2,3", f_repeat, IA(0, {2, 3, -1}), 1, {R1(2, 3)}, LINEAR},
    {"repeat", "repeat [3] 2,1,2", f_repeat, IA(0, {2, 1, 2, -1}), 1, {R1(3)}, LINEAR},
    {"tile", "tile [2,2,3] 2", f_tile, IA(0, {2, -1}), 1, {R1(2, 2, 3)}, LINEAR},
    {"cumsum", "cumsum [3,4] axis 0", f_cumsum, AXIS_ARG(0), 1, {R1(3, 4)}, LINEAR},
    {"cumsum", "cumsum [2,5,3] axis 1", f_cumsum, AXIS_ARG(1), 1, {R1(2, 5, 3)}, LINEAR},
    {"cumsum", "cumsum [2,3,4] axis -1", f_cumsum, AXIS_ARG(-1), 1, {R1(2, 3, 4)}, LINEAR},
    {"cumprod", "cumprod [3,5] axis 1", f_cumprod, AXIS_ARG(1), 1, {INALT(0.5, 1.5, 3, 5)}, CURVED},
    {"cumprod", "cumprod [4,2,3] axis 0", f_cumprod, AXIS_ARG(0), 1, {INALT(0.5, 1.5, 4, 2, 3)}, CURVED},
    {"linear_recurrence", "d/dx sum(w cumprod(x)) [3,4] axis 1", f_cumprod_grad, AXIS_ARG(1), 2,
     {INALT(0.5, 1.5, 3, 4), R1(3, 4)}, CURVED},
    {"linear_recurrence", "d/dx sum(w cumprod(x)) [4,2,3] axis 0", f_cumprod_grad, AXIS_ARG(0), 2,
     {INALT(0.5, 1.5, 4, 2, 3), R1(4, 2, 3)}, CURVED},
    {"sort", "sort [3,5] axis 1", f_sort, IA(1, {0}), 1, {R1(3, 5)}, LINEAR},
    {"sort", "sort [2,3,4] axis 0 descending", f_sort, IA(0, {1}), 1, {R1(2, 3, 4)}, LINEAR},
    {"sort", "sort(x)^2 axis -1", f_sort_sq, IA(-1, {1}), 1, {R1(3, 4)}, CURVED},
    {"topk", "topk [3,6] k 2 largest", f_topk, IA(1, {1, 2}), 1, {R1(3, 6)}, LINEAR},
    {"topk", "topk [4,3,2] k 3 smallest axis 0", f_topk, IA(0, {0, 3}), 1, {R1(4, 3, 2)}, LINEAR},
    {"masked_fill", "masked_fill [3,4] mask [3,4]", f_masked_fill, NULL, 2, {R1(3, 4), INCALT(0.1, 1, 3, 4)}, LINEAR},
    {"masked_fill", "masked_fill [2,3,4] mask [3,1]", f_masked_fill, NULL, 2, {R1(2, 3, 4), INCALT(0.1, 1, 3, 1)}, LINEAR},
    {"triu", "triu [3,4] 0", f_band, IA(0, {1, 0}), 1, {R1(3, 4)}, LINEAR},
    {"triu", "triu [2,4,3] -1", f_band, IA(0, {1, -1}), 1, {R1(2, 4, 3)}, LINEAR},
    {"tril", "tril [3,4] 1", f_band, IA(0, {0, 1}), 1, {R1(3, 4)}, LINEAR},
    {"tril", "tril [4,3] -2", f_band, IA(0, {0, -2}), 1, {R1(4, 3)}, LINEAR},
    {"einsum", "einsum ij,jk->ik", f_einsum, "ij,jk->ik", 2, {R1(3, 4), R1(4, 5)}, CURVED},
    {"einsum", "einsum ij,kj->ik", f_einsum, "ij,kj->ik", 2, {R1(3, 4), R1(5, 4)}, CURVED},
    {"einsum", "einsum ji,jk->ik", f_einsum, "ji,jk->ik", 2, {R1(4, 3), R1(4, 5)}, CURVED},
    {"einsum", "einsum bij,bkj->bik", f_einsum, "bij,bkj->bik", 2, {R1(2, 3, 4), R1(2, 5, 4)}, CURVED},
    {"einsum", "einsum bhqd,bhkd->bhqk", f_einsum, "bhqd,bhkd->bhqk", 2, {R1(2, 2, 3, 4), R1(2, 2, 2, 4)}, CURVED},
    {"einsum", "einsum ijk,jl->lki", f_einsum, "ijk,jl->lki", 2, {R1(2, 3, 4), R1(3, 2)}, CURVED},
    {"einsum", "einsum i,j->ij", f_einsum, "i,j->ij", 2, {R1(3), R1(4)}, CURVED},
    {"einsum", "einsum ij,ij->", f_einsum, "ij,ij->", 2, {R1(2, 3), R1(2, 3)}, CURVED},
    {"einsum", "einsum ij,ij->ij (a multiply)", f_einsum, "ij,ij->ij", 2, {R1(2, 3), R1(2, 3)}, CURVED},
    {"einsum", "einsum bqd,bqd->bq (a dot per batch)", f_einsum, "bqd,bqd->bq", 2, {R1(2, 3, 4), R1(2, 3, 4)}, CURVED},
    {"einsum", "einsum ...ij,...jk->...ik", f_einsum, "...ij,...jk->...ik", 2, {R1(2, 1, 3, 4), R1(3, 4, 2)}, CURVED},
    {"einsum", "einsum ik,k-> (k broadcast)", f_einsum, "ik,k->", 2, {R1(3, 4), R1(1)}, CURVED},
    {"einsum", "einsum ij->ji", f_einsum, "ij->ji", 1, {R1(2, 3)}, LINEAR},
    {"einsum", "einsum ijk->kj", f_einsum, "ijk->kj", 1, {R1(2, 3, 4)}, LINEAR},
    {"einsum", "einsum ki,kj->ij (x with itself)", f_einsum_gram, NULL, 1, {R1(3, 2)}, CURVED},
};
#define N_ROWS ((int)(sizeof rows / sizeof rows[0]))

/* ---- helpers ------------------------------------------------------------------------------------- */

static nb_tensor *leaf(int ndim, const int64_t *shape, const double *v)
{
    nb_tensor *t = nb_tensor_from_data(NB_F64, ndim, shape, v);
    nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* every element of t (any dtype) equals want[i] exactly, and t has the given shape */
static void check_values(const char *what, const nb_tensor *t, int ndim, const int64_t *shape, const double *want)
{
    CHECK(t != NULL, "%s: no result (%s)", what, nb_error_message());
    if (!t) return;
    bool same = nb_tensor_ndim(t) == ndim;
    for (int d = 0; same && d < ndim; d++) same = nb_tensor_dim(t, d) == shape[d];
    char buf[64];
    CHECK(same, "%s: shape %s", what, nb_shape_str(t, buf, sizeof buf));
    if (!same) return;
    for (int64_t i = 0; i < nb_tensor_numel(t); i++)
        CHECK(nb_tensor_get(t, i) == want[i], "%s[%lld] = %.17g, expected %.17g", what, (long long)i,
              nb_tensor_get(t, i), want[i]);
}

/* i64 elements, exactly (beyond 2^53 too) */
static void check_i64(const char *what, const nb_tensor *t, int64_t n, const int64_t *want)
{
    CHECK(t && nb_tensor_dtype(t) == NB_I64 && nb_tensor_numel(t) == n, "%s: an i64 tensor of %lld elements (%s)",
          what, (long long)n, nb_error_message());
    if (!t || nb_tensor_dtype(t) != NB_I64 || nb_tensor_numel(t) != n) return;
    const int64_t *v = nb_tensor_cdata(t);
    for (int64_t i = 0; i < n; i++)
        CHECK(v[i] == want[i], "%s[%lld] = %lld, expected %lld", what, (long long)i, (long long)v[i], (long long)want[i]);
}

/* ---- cumprod with zeros: first and second order at the zeros ------------------------------------ */

static void test_cumprod_zeros(void)
{
    /* rows: one zero; two in a row; two apart, one first; one last; all zeros */
    static const double v[5][5] = {{0.75, 0.0, 1.5, -1.25, 0.5}, {1.5, -0.5, 0.0, 0.0, 2.0}, {0.0, 2.0, 0.5, 0.0, -1.0},
                                   {1.25, 2.0, -0.5, 1.5, 0.0}, {0.0, 0.0, 0.0, 0.0, 0.0}};
    static const int axes[2] = {1, 0};
    for (int k = 0; k < 2; k++) {
        nb_tensor *x = leaf(NB_SHAPE(5, 5), &v[0][0]);
        nb_gradcheck_report rep;
        char name[64];
        snprintf(name, sizeof name, "cumprod with zeros, axis %d", axes[k]);
        nb_status st = nb_gradcheck(f_cumprod, (void *)&axes[k], 1, &x, NULL, &rep);
        CHECK(st == NB_OK && rep.ok, "gradcheck %s: %s", name, rep.message);
        if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
        st = nb_gradgradcheck(f_cumprod, (void *)&axes[k], 1, &x, NULL, &rep);
        CHECK(st == NB_OK && rep.ok, "gradgradcheck %s: %s", name, rep.message);
        if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
        /* the create-graph gradient as a function of x and w, to first and second order: cumprod's
         * second and third derivatives at the zeros */
        nb_tensor *xw[2] = {x, leaf(NB_SHAPE(5, 5), &v[0][0])};
        for (int i = 0; i < 25; i++) nb_tensor_set(xw[1], i, 0.5 + 0.125 * (i % 7) - (i % 2));
        snprintf(name, sizeof name, "cumprod's gradient with zeros, axis %d", axes[k]);
        st = nb_gradcheck(f_cumprod_grad, (void *)&axes[k], 2, xw, NULL, &rep);
        CHECK(st == NB_OK && rep.ok, "gradcheck %s: %s", name, rep.message);
        if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
        st = nb_gradgradcheck(f_cumprod_grad, (void *)&axes[k], 2, xw, NULL, &rep);
        CHECK(st == NB_OK && rep.ok, "gradgradcheck %s: %s", name, rep.message);
        if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
        nb_tensor_free(xw[1]);
        nb_tensor_free(x);
        nb_error_clear();
    }
    /* 1-D, and the Hessian-vector product against its closed form: for f = sum(w * cumprod(x)),
     * d2f / dx_a dx_b = sum_{i >= max(a,b)} w_i prod_{j <= i, j != a, b} x_j (a != b) */
    const double xv[4] = {1.5, 0.0, -2.0, 0.0}, wv[4] = {0.5, -1.0, 2.0, 1.5}, uv[4] = {1.0, -0.5, 0.25, 2.0};
    nb_tensor *x = leaf(NB_SHAPE(4), xv);
    nb_tensor *w = nb_tensor_from_data(NB_F64, NB_SHAPE(4), wv), *u = nb_tensor_from_data(NB_F64, NB_SHAPE(4), uv);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *g[1] = {NULL}, *h[1] = {NULL};
    nb_tensor *f = nb_sum_all(nb_mul(w, nb_cumprod(x, 0)));
    CHECK(nb_grad(f, NULL, 1, &x, g, NB_CREATE_GRAPH) == NB_OK, "cumprod: create-graph grad: %s", nb_error_message());
    if (g[0]) CHECK(nb_grad(nb_sum_all(nb_mul(g[0], u)), NULL, 1, &x, h, 0) == NB_OK, "cumprod: Hv: %s", nb_error_message());
    double grad[4], hv[4];
    for (int a = 0; a < 4; a++) {
        grad[a] = 0;
        hv[a] = 0;
        for (int i = a; i < 4; i++) {
            double p = 1;
            for (int j = 0; j <= i; j++) p *= j == a ? 1 : xv[j];
            grad[a] += wv[i] * p;
        }
        for (int b = 0; b < 4; b++) {
            if (b == a) continue;
            double hab = 0;
            for (int i = a > b ? a : b; i < 4; i++) {
                double p = 1;
                for (int j = 0; j <= i; j++) p *= j == a || j == b ? 1 : xv[j];
                hab += wv[i] * p;
            }
            hv[a] += hab * uv[b];
        }
    }
    check_values("cumprod [1.5,0,-2,0]: gradient", g[0], NB_SHAPE(4), grad);
    check_values("cumprod [1.5,0,-2,0]: Hessian-vector product", h[0], NB_SHAPE(4), hv);
    CHECK(hv[1] != 0 && hv[3] != 0, "the closed form has non-zero second derivatives at the zeros");
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(u);
}

/* 10000 zeros in one slice (x = 0, 1.5, 0, 1.5, ...): the create-graph gradient and a Hessian-vector
 * product take a few tensors of the slice's size (the rule used to recurse once per zero: 537 MB of
 * arena for 2000 zeros, about 13 GB for 10000), and match the closed form of f = sum(w cumprod(x)):
 * df/dx_0 = w_0 + 1.5 w_1 and 0 elsewhere; the only non-zero second derivatives are
 * d2f/dx_0 dx_1 = w_1 and d2f/dx_0 dx_2 = 1.5 w_2 + 2.25 w_3. */
static void test_cumprod_many_zeros(void)
{
    enum { N = 20000 };
    double *xv = malloc(N * sizeof(double)), *wv = malloc(N * sizeof(double)), *uv = malloc(N * sizeof(double));
    for (int i = 0; i < N; i++) {
        xv[i] = i % 2 ? 1.5 : 0.0;
        wv[i] = 1.0 + 0.25 * (i % 3);
        uv[i] = 0.5 - 0.125 * (i % 5);
    }
    nb_tensor *x = leaf(NB_SHAPE(N), xv);
    nb_tensor *w = nb_tensor_from_data(NB_F64, NB_SHAPE(N), wv), *u = nb_tensor_from_data(NB_F64, NB_SHAPE(N), uv);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *g[1] = {NULL}, *h[1] = {NULL};
    nb_tensor *f = nb_sum_all(nb_mul(w, nb_cumprod(x, 0)));
    CHECK(nb_grad(f, NULL, 1, &x, g, NB_CREATE_GRAPH) == NB_OK, "create-graph grad: %s", nb_error_message());
    size_t first = nb_tape_bytes_used(tape);
    if (g[0]) CHECK(nb_grad(nb_sum_all(nb_mul(g[0], u)), NULL, 1, &x, h, 0) == NB_OK, "Hv: %s", nb_error_message());
    size_t both = nb_tape_bytes_used(tape), slice = N * sizeof(double);
    CHECK(first < 16 * slice && both < 40 * slice, "arena after the gradient %zu bytes, after Hv %zu: %zu and %zu "
          "slices of %zu bytes (want under 16 and 40)", first, both, first / slice, both / slice, slice);
    if (g[0] && h[0]) {
        const double *gd = nb_tensor_cdata(g[0]), *hd = nb_tensor_cdata(h[0]);
        double h01 = wv[1], h02 = 1.5 * wv[2] + 2.25 * wv[3];
        int bad = 0;
        for (int i = 3; i < N; i++) bad += gd[i] != 0 || hd[i] != 0;
        CHECK(!bad && gd[1] == 0 && gd[2] == 0, "%d gradient or Hv entries past the first zero are not 0", bad);
        CHECK_CLOSE(gd[0], wv[0] + 1.5 * wv[1], 1e-15, 0);
        CHECK_CLOSE(hd[0], h01 * uv[1] + h02 * uv[2], 1e-15, 0);
        CHECK_CLOSE(hd[1], h01 * uv[0], 1e-15, 0);
        CHECK_CLOSE(hd[2], h02 * uv[0], 1e-15, 0);
    }
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(u);
    free(xv);
    free(wv);
    free(uv);
}

/* ---- ties, NaN, stability ------------------------------------------------------------------------ */

static int cmp_ref(const void *pa, const void *pb)
{
    const double *a = pa, *b = pb; /* {value, position} */
    if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
    return a[1] < b[1] ? -1 : a[1] > b[1];
}

static void test_order(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    /* sort's gradient at ties follows the stable order: equal values keep their positions' order */
    nb_tensor *x = leaf(NB_SHAPE(4), (const double[]){1, 3, 1, 2});
    nb_tensor *seed = nb_tensor_from_data(NB_F64, NB_SHAPE(4), (const double[]){10, 20, 30, 40});
    nb_tensor *idx = NULL;
    nb_tensor *s = nb_sort(x, 0, 0, &idx);
    check_values("sort ties: values", s, NB_SHAPE(4), (const double[]){1, 1, 2, 3});
    check_i64("sort ties: indices", idx, 4, (const int64_t[]){0, 2, 3, 1});
    CHECK(nb_backward(s, seed, 0) == NB_OK, "sort ties: backward: %s", nb_error_message());
    check_values("sort ties: gradient", nb_tensor_grad(x), NB_SHAPE(4), (const double[]){10, 40, 20, 30});
    nb_tensor_zero_grad(x);
    s = nb_sort(x, -1, 1, &idx);
    check_i64("sort ties descending: indices", idx, 4, (const int64_t[]){1, 3, 0, 2});
    CHECK(nb_backward(s, seed, 0) == NB_OK, "sort ties descending: backward: %s", nb_error_message());
    check_values("sort ties descending: gradient", nb_tensor_grad(x), NB_SHAPE(4), (const double[]){30, 10, 40, 20});

    /* topk: among equal values the lower position first */
    nb_tensor *t = nb_tensor_from_data(NB_F64, NB_SHAPE(5), (const double[]){5, 1, 5, 5, 2});
    nb_tensor *tv = nb_topk(t, 2, 0, 1, &idx);
    check_values("topk ties: values", tv, NB_SHAPE(2), (const double[]){5, 5});
    check_i64("topk ties: indices", idx, 2, (const int64_t[]){0, 2});
    tv = nb_topk(t, 3, 0, 0, &idx);
    check_i64("topk smallest: indices", idx, 3, (const int64_t[]){1, 4, 0});
    tv = nb_topk(t, 0, 0, 1, &idx);
    CHECK(tv && nb_tensor_numel(tv) == 0 && idx && nb_tensor_numel(idx) == 0, "topk k = 0: empty");

    /* NaN sorts above every number: last ascending, first descending; -0 and 0 are equal (stable) */
    nb_tensor *n = nb_tensor_from_data(NB_F64, NB_SHAPE(6), (const double[]){1, NAN, -INFINITY, 0.0, NAN, -0.0});
    check_i64("argsort with NaN", nb_argsort(n, 0, 0), 6, (const int64_t[]){2, 3, 5, 0, 1, 4});
    check_i64("argsort with NaN, descending", nb_argsort(n, 0, 1), 6, (const int64_t[]){1, 4, 0, 3, 5, 2});
    nb_tensor *n32 = nb_cast(n, NB_F32);
    check_i64("argsort f32 with NaN", nb_argsort(n32, 0, 0), 6, (const int64_t[]){2, 3, 5, 0, 1, 4});

    /* stability at scale: 3000 values with many ties, along a middle axis, against qsort of
     * (value, position) */
    enum { A = 3, B = 1000, C = 2 };
    double *vals = malloc(sizeof(double) * A * B * C), *ref = malloc(sizeof(double) * 2 * B);
    nb_rng rng;
    nb_rng_seed(&rng, 77);
    for (int i = 0; i < A * B * C; i++) vals[i] = (double)nb_rng_below(&rng, 17);
    nb_tensor *big = nb_tensor_from_data(NB_F64, NB_SHAPE(A, B, C), vals);
    for (int desc = 0; desc < 2; desc++) {
        nb_tensor *bi = nb_argsort(big, 1, desc);
        const int64_t *p = bi ? nb_tensor_cdata(bi) : NULL;
        int bad = !p;
        for (int a = 0; a < A && p; a++)
            for (int c = 0; c < C; c++) {
                for (int k = 0; k < B; k++) {
                    ref[2 * k] = (desc ? -1 : 1) * vals[(a * B + k) * C + c];
                    ref[2 * k + 1] = k;
                }
                qsort(ref, B, 2 * sizeof(double), cmp_ref);
                for (int k = 0; k < B; k++) bad += p[(a * B + k) * C + c] != (int64_t)ref[2 * k + 1];
            }
        CHECK(!bad, "argsort of [3,1000,2] along 1 (descending %d): %d positions differ from a stable sort", desc, bad);
    }
    free(vals);
    free(ref);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(seed);
    nb_tensor_free(t);
    nb_tensor_free(n);
    nb_tensor_free(big);
}

/* ---- integers ------------------------------------------------------------------------------------ */

static void test_integers(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    const int64_t MAX = INT64_MAX, MIN = INT64_MIN;
    nb_tensor *a = nb_tensor_from_data(NB_I64, NB_SHAPE(4), (const int64_t[]){MAX, MIN, 3037000500, (int64_t)1 << 62});
    nb_tensor *b = nb_tensor_from_data(NB_I64, NB_SHAPE(4), (const int64_t[]){1, 1, 3037000500, 4});
    /* add, sub, mul wrap like two's complement (PyTorch's values) */
    check_i64("i64 add wraps", nb_add(a, b), 4, (const int64_t[]){MIN, MIN + 1, 6074001000, ((int64_t)1 << 62) + 4});
    check_i64("i64 sub wraps", nb_sub(b, a), 4, (const int64_t[]){MIN + 2, MIN + 1, 0, 4 - ((int64_t)1 << 62)});
    check_i64("i64 mul wraps", nb_mul(a, b), 4, (const int64_t[]){MAX, MIN, -9223372036709301616, 0});
    nb_tensor *m1 = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){MAX, 1, 5});
    check_i64("i64 sum of [MAX, 1, 5]", nb_sum_all(m1), 1, (const int64_t[]){MIN + 5});
    check_i64("i64 cumsum wraps", nb_cumsum(m1, 0), 3, (const int64_t[]){MAX, MIN, MIN + 5});
    nb_tensor *p = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){(int64_t)1 << 40, (int64_t)1 << 30, 3});
    check_i64("i64 cumprod wraps", nb_cumprod(p, 0), 3, (const int64_t[]){(int64_t)1 << 40, 0, 0});
    check_i64("i64 maximum", nb_maximum(a, b), 4, (const int64_t[]){MAX, 1, 3037000500, (int64_t)1 << 62});
    check_i64("i64 max over all", nb_max(a, 0, NULL, 0), 1, (const int64_t[]){MAX});
    check_i64("i64 min over all", nb_min(a, 0, NULL, 0), 1, (const int64_t[]){MIN});
    check_i64("i64 argmin", nb_argmin(a, 0, 0), 1, (const int64_t[]){1});
    /* neg and abs wrap at INT64_MIN (PyTorch's values); sign */
    nb_tensor *e = nb_tensor_from_data(NB_I64, NB_SHAPE(5), (const int64_t[]){MIN, MIN + 1, -3, 0, MAX});
    check_i64("i64 neg", nb_neg(e), 5, (const int64_t[]){MIN, MAX, 3, 0, MIN + 1});
    check_i64("i64 abs", nb_abs(e), 5, (const int64_t[]){MIN, MAX, 3, 0, MAX});
    check_i64("i64 sign", nb_sign(e), 5, (const int64_t[]){-1, -1, -1, 0, 1});
    /* comparisons are exact beyond 2^53 (no rounding through double) and give i64 0/1 */
    const int64_t big = (int64_t)1 << 53;
    nb_tensor *c = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){big, big + 1, MAX});
    nb_tensor *d = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){big + 1, big + 1, MAX - 1});
    check_i64("i64 eq beyond 2^53", nb_eq(c, d), 3, (const int64_t[]){0, 1, 0});
    check_i64("i64 lt beyond 2^53", nb_lt(c, d), 3, (const int64_t[]){1, 0, 0});
    check_i64("i64 ge beyond 2^53", nb_ge(c, d), 3, (const int64_t[]){0, 1, 1});

    /* accuracy without casts: the count of rows whose largest logit is at the label */
    nb_tensor *logits = nb_tensor_from_data(NB_F32, NB_SHAPE(4, 3),
                                            (const float[]){0.1f, 2.0f, -1.0f, 3.0f, 0.0f, 0.5f, 0.2f, 0.1f, 0.3f, -2.0f, -1.0f, -3.0f});
    nb_tensor_set_requires_grad(logits, 1);
    nb_tensor *labels = nb_tensor_from_data(NB_I64, NB_SHAPE(4), (const int64_t[]){1, 2, 2, 1});
    size_t nodes = nb_tape_node_count(tape);
    nb_tensor *correct = nb_sum_all(nb_eq(nb_argmax(logits, 1, 0), labels));
    CHECK(correct && nb_tensor_dtype(correct) == NB_I64 && nb_tensor_ndim(correct) == 0, "correct count: 0-d i64");
    check_i64("correct count", correct, 1, (const int64_t[]){3});
    CHECK(correct && !nb_tensor_requires_grad(correct), "the count is not on the graph");
    /* float comparisons of a recorded tensor are not recorded either */
    nb_tensor *pos = nb_gt(logits, nb_zeros(NB_F32, 0, NULL));
    CHECK(pos && !nb_tensor_requires_grad(pos), "a comparison of a recorded tensor is not recorded");
    /* the i64 ops (arithmetic, sums, scans, sorting, shapes) record no node */
    nb_tensor *k = nb_argmax(logits, 1, 0);
    nb_tensor *r = nb_add(nb_mul(k, k), nb_neg(nb_abs(nb_sign(nb_sub(k, labels)))));
    r = nb_cumsum(nb_flip(nb_roll(nb_repeat(r, NB_SHAPE(2, 1)), 1, 1), 0, NULL), 1);
    r = nb_sort(nb_masked_fill(r, nb_eq(r, nb_zeros(NB_I64, 0, NULL)), -1.0), 1, 1, NULL);
    r = nb_max(nb_tril(nb_where(nb_gt(r, labels), r, labels), 0), NB_AXES(0), 0);
    CHECK(r && !nb_tensor_requires_grad(r), "an i64 chain has no graph");
    CHECK(nb_tape_node_count(tape) == nodes, "i64 results record no node (%zu nodes, expected %zu)",
          nb_tape_node_count(tape), nodes);
    CHECK(nb_backward(correct, NULL, 0) != NB_OK, "backward from an i64 count fails");
    nb_error_clear();

    /* masked_fill, where and tril on i64 */
    nb_tensor *li = nb_tensor_from_data(NB_I64, NB_SHAPE(2, 3), (const int64_t[]){5, -3, 2, 0, 9, 1});
    check_i64("i64 masked_fill", nb_masked_fill(li, nb_lt(li, nb_zeros(NB_I64, 0, NULL)), -100.0), 6,
              (const int64_t[]){5, -100, 2, 0, 9, 1});
    check_i64("i64 triu", nb_triu(li, 1), 6, (const int64_t[]){0, -3, 2, 0, 0, 1});
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *leaves[] = {a, b, e, m1, p, c, d, logits, labels, li};
    for (size_t i = 0; i < sizeof leaves / sizeof leaves[0]; i++) nb_tensor_free(leaves[i]);
}

/* ---- shapes: empty tensors, no-ops, repeat and tile, masked_fill's gradient ---------------------- */

static void test_shapes(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *e = nb_tensor_zeros(NB_F64, NB_SHAPE(0, 3));
    nb_tensor_set_requires_grad(e, 1);
    nb_tensor *e2 = nb_tensor_zeros(NB_F64, NB_SHAPE(2, 0));
    nb_tensor *outs[] = {nb_flip(e, 0, NULL), nb_roll(e, 2, 0), nb_roll(e2, 5, 1), nb_repeat(e, NB_SHAPE(2, 2)),
                         nb_cumsum(e, 0), nb_cumprod(e2, 1), nb_sort(e, 0, 0, NULL), nb_argsort(e2, 1, 1),
                         nb_topk(e2, 0, 1, 1, NULL), nb_triu(e, 0), nb_einsum("ij,jk->ik", 2, (nb_tensor *[]){e2, e}),
                         nb_masked_fill(e, e, 1.0)};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++)
        CHECK(outs[i] && nb_tensor_numel(outs[i]) == (i == 10 ? 6 : 0), "empty input, op %zu: %s", i, nb_error_message());
    check_values("einsum over an empty contraction is 0", outs[10], NB_SHAPE(2, 3), (const double[]){0, 0, 0, 0, 0, 0});
    CHECK(nb_backward(nb_sum_all(nb_cumsum(e, 1)), NULL, 0) == NB_OK, "backward through an empty cumsum: %s",
          nb_error_message());

    /* no-ops (flipping extent-1 axes, rolling by a multiple of the extent) copy nothing, but return a
     * tensor of their own (a view: test_hostile.c's distinct_results) */
    nb_tensor *x = leaf(NB_SHAPE(1, 3), (const double[]){1, 2, 3});
    nb_tensor *fx = nb_flip(x, NB_AXES(0)), *rx = nb_roll(x, 6, 1);
    CHECK(fx && fx != x && nb_tensor_cdata(fx) == nb_tensor_cdata(x), "flip of an extent-1 axis: a view of the input");
    CHECK(rx && rx != x && nb_tensor_cdata(rx) == nb_tensor_cdata(x), "roll by a multiple of the extent: a view");
    check_values("roll by -1", nb_roll(x, -1, 1), NB_SHAPE(1, 3), (const double[]){2, 3, 1});
    /* repeat vs tile: tile fills missing leading counts with 1, repeat needs them */
    check_values("tile [1,3] by 2", nb_tile(x, NB_SHAPE(2)), NB_SHAPE(1, 6), (const double[]){1, 2, 3, 1, 2, 3});
    check_values("repeat [1,3] by 2,1,1", nb_repeat(x, NB_SHAPE(2, 1, 1)), NB_SHAPE(2, 1, 3),
                 (const double[]){1, 2, 3, 1, 2, 3});
    nb_tensor *a8 = nb_tensor_ones(NB_F64, NB_SHAPE(1, 1, 1, 1, 1, 1, 1, 2));
    nb_tensor *t8 = nb_tile(a8, NB_SHAPE(2, 1, 1, 1, 1, 1, 1, 2));
    CHECK(t8 && nb_tensor_ndim(t8) == 8 && nb_tensor_numel(t8) == 8, "tile of an 8-dim tensor: %s", nb_error_message());

    /* masked_fill: the filled places get value and no gradient */
    nb_tensor *y = leaf(NB_SHAPE(2, 2), (const double[]){1, -2, 3, -4});
    nb_tensor *mask = nb_tensor_from_data(NB_I64, NB_SHAPE(2), (const int64_t[]){0, 7});
    nb_tensor *mf = nb_masked_fill(y, mask, 0.5);
    check_values("masked_fill values", mf, NB_SHAPE(2, 2), (const double[]){1, 0.5, 3, 0.5});
    CHECK(nb_backward(nb_sum_all(nb_mul(mf, mf)), NULL, 0) == NB_OK, "masked_fill backward: %s", nb_error_message());
    check_values("masked_fill gradient", nb_tensor_grad(y), NB_SHAPE(2, 2), (const double[]){2, 0, 6, 0});
    /* tril keeps 0 where it zeroes, even for infinite inputs (no inf * 0) */
    nb_tensor *inf = nb_tensor_full(NB_F64, NB_SHAPE(2, 2), INFINITY);
    check_values("tril of inf", nb_tril(inf, 0), NB_SHAPE(2, 2), (const double[]){INFINITY, 0, INFINITY, INFINITY});
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *leaves[] = {e, e2, x, a8, y, mask, inf};
    for (size_t i = 0; i < sizeof leaves / sizeof leaves[0]; i++) nb_tensor_free(leaves[i]);
}

/* ---- einsum: the layouts it reads without a copy, and agreement with matmul --------------------- */

static int count_nodes(const nb_tape *t, const char *op)
{
    int n = 0;
    for (size_t i = 0; i < nb_tape_node_count(t); i++) n += !strcmp(nb_tape_node_op(t, i), op);
    return n;
}

static void test_einsum_layouts(void)
{
    static const struct {
        const char *eq;
        int permutes; /* permute nodes expected */
    } cases[] = {{"ij,jk->ik", 0}, {"ij,kj->ik", 0}, {"ji,jk->ik", 0}, {"ji,kj->ik", 0}, {"bij,bkj->bik", 0},
                 {"ij,jk->ki", 1}, {"ijk,jl->lki", 2}, {"ij->ji", 1}};
    nb_rng rng;
    nb_rng_seed(&rng, 5);
    nb_tensor *a = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 3), -1, 1, &rng);
    nb_tensor *b = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 3), -1, 1, &rng);
    nb_tensor *a3 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 3, 3), -1, 1, &rng);
    nb_tensor *b3 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 3, 3), -1, 1, &rng);
    nb_tensor_set_requires_grad(a, 1); /* recorded, so that every permute shows on the tape */
    nb_tensor_set_requires_grad(b, 1);
    nb_tensor_set_requires_grad(a3, 1);
    nb_tensor_set_requires_grad(b3, 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nb_tape *tape = nb_tape_new();
        nb_tape_begin(tape);
        bool three = cases[i].eq[0] == 'b' || !strncmp(cases[i].eq, "ijk", 3);
        nb_tensor *ops[2] = {three ? a3 : a, three && cases[i].eq[0] == 'b' ? b3 : b};
        nb_tensor *y = nb_einsum(cases[i].eq, strchr(cases[i].eq, ',') ? 2 : 1, ops);
        CHECK(y != NULL, "einsum %s: %s", cases[i].eq, nb_error_message());
        CHECK(count_nodes(tape, "permute") == cases[i].permutes, "einsum %s: %d permutes recorded, expected %d",
              cases[i].eq, count_nodes(tape, "permute"), cases[i].permutes);
        nb_tape_end(tape);
        nb_tape_free(tape);
    }
    /* a^T b^T by einsum and by matmul_ex agree exactly (the same BLAS call) */
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y1 = nb_einsum("ji,kj->ik", 2, (nb_tensor *[]){a, b});
    nb_tensor *y2 = nb_matmul_ex(a, b, NB_TRANS_A | NB_TRANS_B);
    double want[9];
    for (int i = 0; i < 9; i++) want[i] = y2 ? nb_tensor_get(y2, i) : NAN;
    check_values("einsum ji,kj->ik = a^T b^T", y1, NB_SHAPE(3, 3), want);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(a);
    nb_tensor_free(b);
    nb_tensor_free(a3);
    nb_tensor_free(b3);
}

int main(void)
{
    int passed = 0;
    for (int r = 0; r < N_ROWS; r++)
        passed += gradtable_check(rows[r].name, rows[r].f, rows[r].arg, rows[r].n_in, rows[r].in, rows[r].order, NULL,
                                  9000u + (uint64_t)r);
    printf("grad_everyday: %d rows (%d passed)\n", N_ROWS, passed);
    gradtable_require(gradtable_everyday_ops, GRADTABLE_N_EVERYDAY); /* test_grad_primitives counts on it */
    test_cumprod_zeros();
    test_cumprod_many_zeros();
    test_order();
    test_integers();
    test_shapes();
    test_einsum_layouts();
    return nbt_report("grad_everyday");
}
