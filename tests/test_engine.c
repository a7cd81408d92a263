/* Semantics of the backward engine: accumulation, retained and released graphs, seeds, the functional
 * nb_grad, higher-order gradients (create-graph), Hessian-vector products, no-grad scopes and detach,
 * tape reset and nesting, in-place modification checks, float32 against float64, and the RNG. Every
 * expected value is derived by hand in the comment next to it. */
#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>

/* ---- helpers ---------------------------------------------------------------------------------- */

static nb_tensor *leaf64(int n, const double *v)
{
    nb_tensor *t = nb_tensor_from_data(NB_F64, 1, (const int64_t[]){n}, v);
    nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* every element of t equals want[i] exactly (the values are exact in binary floating point) */
static int equals(const nb_tensor *t, int n, const double *want)
{
    if (!t || nb_tensor_numel(t) != n) return 0;
    for (int i = 0; i < n; i++)
        if (nb_tensor_get(t, i) != want[i]) return 0;
    return 1;
}

static int close_to(const nb_tensor *t, int n, const double *want, double rtol, double atol)
{
    if (!t || nb_tensor_numel(t) != n) return 0;
    for (int i = 0; i < n; i++) {
        double g = nb_tensor_get(t, i);
        if (!(fabs(g - want[i]) <= atol + rtol * fabs(want[i]))) {
            fprintf(stderr, "  element %d: %.17g, expected %.17g\n", i, g, want[i]);
            return 0;
        }
    }
    return 1;
}

static nb_tensor *cube(nb_tensor *x) { return nb_mul(nb_mul(x, x), x); }

#define N4 4
static const double X4[N4] = {-1.5, 0.5, 2.0, 3.0};

/* ---- accumulation ----------------------------------------------------------------------------- */

static void test_accumulate(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = leaf64(N4, X4);
    CHECK(nb_tensor_grad(x) == NULL, "a fresh leaf has no gradient");

    /* y = sum(x*x): dy/dx = 2x */
    double g1[N4], g2[N4];
    for (int i = 0; i < N4; i++) g1[i] = 2 * X4[i], g2[i] = 4 * X4[i];
    CHECK(nb_backward(nb_sum_all(nb_mul(x, x)), NULL, 0) == NB_OK, "backward: %s", nb_error_message());
    CHECK(equals(nb_tensor_grad(x), N4, g1), "dsum(x*x)/dx = 2x");
    CHECK(nb_tensor_dtype(nb_tensor_grad(x)) == NB_F64 && nb_tensor_ndim(nb_tensor_grad(x)) == 1,
          "gradient has the leaf's dtype and shape");
    /* a second, fresh graph: accumulates */
    CHECK(nb_backward(nb_sum_all(nb_mul(x, x)), NULL, 0) == NB_OK, "second backward: %s", nb_error_message());
    CHECK(equals(nb_tensor_grad(x), N4, g2), "two backwards accumulate to 4x");
    nb_tensor_zero_grad(x);
    double zeros[N4] = {0};
    CHECK(equals(nb_tensor_grad(x), N4, zeros), "zero_grad zeroes");
    CHECK(nb_backward(nb_sum_all(nb_mul(x, x)), NULL, 0) == NB_OK, "third backward: %s", nb_error_message());
    CHECK(equals(nb_tensor_grad(x), N4, g1), "after zero_grad, 2x again");

    /* a tensor used twice gets both contributions: y = sum(x*x + x) -> 2x + 1 */
    nb_tensor_zero_grad(x);
    double w[N4];
    for (int i = 0; i < N4; i++) w[i] = 2 * X4[i] + 1;
    CHECK(nb_backward(nb_sum_all(nb_add(nb_mul(x, x), x)), NULL, 0) == NB_OK, "backward x*x+x");
    CHECK(equals(nb_tensor_grad(x), N4, w), "d sum(x*x+x)/dx = 2x+1");

    /* used four times through different paths: y = sum(x*x*x + 3x - x) -> 3x^2 + 2 */
    nb_tensor_zero_grad(x);
    for (int i = 0; i < N4; i++) w[i] = 3 * X4[i] * X4[i] + 2;
    CHECK(nb_backward(nb_sum_all(nb_sub(nb_add(cube(x), nb_mul_scalar(x, 3)), x)), NULL, 0) == NB_OK,
          "backward x^3+3x-x");
    CHECK(equals(nb_tensor_grad(x), N4, w), "d sum(x^3+3x-x)/dx = 3x^2+2");

    /* an intermediate used twice: h = 2x; y = sum(h*h) -> 8x */
    nb_tensor_zero_grad(x);
    for (int i = 0; i < N4; i++) w[i] = 8 * X4[i];
    nb_tensor *h = nb_mul_scalar(x, 2);
    CHECK(nb_backward(nb_sum_all(nb_mul(h, h)), NULL, 0) == NB_OK, "backward h*h");
    CHECK(equals(nb_tensor_grad(x), N4, w), "d sum((2x)^2)/dx = 8x");

    /* a leaf that does not require grad gets no gradient */
    nb_tensor *c = nb_tensor_from_data(NB_F64, NB_SHAPE(4), X4);
    nb_tensor_zero_grad(x);
    CHECK(nb_backward(nb_sum_all(nb_mul(x, c)), NULL, 0) == NB_OK, "backward x*c");
    CHECK(nb_tensor_grad(c) == NULL, "constant leaf has no gradient");
    CHECK(equals(nb_tensor_grad(x), N4, X4), "d sum(x*c)/dx = c");

    /* the output may be a leaf itself: d x / d x = 1 (a one-element leaf) */
    nb_tensor *s = nb_tensor_full(NB_F64, 0, NULL, 3.0);
    nb_tensor_set_requires_grad(s, 1);
    CHECK(nb_backward(s, NULL, 0) == NB_OK, "backward of a leaf: %s", nb_error_message());
    CHECK(nb_tensor_grad(s) && nb_tensor_item(nb_tensor_grad(s)) == 1.0, "d s/d s = 1");

    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(c);
    nb_tensor_free(s);
}

/* ---- retain / release, seeds ------------------------------------------------------------------ */

static void test_retain_and_seed(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = leaf64(N4, X4);
    double g1[N4], g2[N4];
    for (int i = 0; i < N4; i++) g1[i] = 3 * X4[i] * X4[i], g2[i] = 6 * X4[i] * X4[i];

    /* without NB_RETAIN_GRAPH the graph is released */
    nb_tensor *y = nb_sum_all(cube(x));
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "first backward");
    nb_error_clear();
    nb_status st = nb_backward(y, NULL, 0);
    CHECK(st == NB_ERR_STATE, "second backward without retain: %s", nb_status_name(st));
    CHECK(strstr(nb_error_message(), "released") != NULL, "message: %s", nb_error_message());
    CHECK(strstr(nb_error_message(), "nb_backward") != NULL, "message names nb_backward: %s", nb_error_message());
    CHECK(equals(nb_tensor_grad(x), N4, g1), "failed backward leaves the gradient alone");
    nb_error_clear();
    /* nb_grad over a released graph fails the same way */
    nb_tensor *gx = NULL;
    st = nb_grad(y, NULL, 1, &x, &gx, 0);
    CHECK(st == NB_ERR_STATE && gx == NULL && strstr(nb_error_message(), "released"),
          "nb_grad over a released graph: %s", nb_error_message());
    nb_error_clear();

    /* with NB_RETAIN_GRAPH the second backward works and doubles the gradient */
    nb_tensor_zero_grad(x);
    y = nb_sum_all(cube(x));
    CHECK(nb_backward(y, NULL, NB_RETAIN_GRAPH) == NB_OK, "retained backward");
    CHECK(equals(nb_tensor_grad(x), N4, g1), "3x^2 after one");
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "backward over the retained graph: %s", nb_error_message());
    CHECK(equals(nb_tensor_grad(x), N4, g2), "6x^2 after two");
    CHECK(nb_backward(y, NULL, 0) == NB_ERR_STATE, "third backward: the second released it");
    nb_error_clear();

    /* a non-scalar output needs a seed */
    nb_tensor_zero_grad(x);
    nb_tensor *v = cube(x); /* [4] */
    st = nb_backward(v, NULL, 0);
    CHECK(st == NB_ERR_SHAPE && strstr(nb_error_message(), "seed"), "non-scalar without seed: %s %s",
          nb_status_name(st), nb_error_message());
    nb_error_clear();
    /* seed-weighted: d <x^3, s> / dx = 3 x^2 s */
    const double seedv[N4] = {1.0, -2.0, 0.5, 4.0};
    nb_tensor *seed = nb_constant(NB_F64, NB_SHAPE(4), seedv);
    double gs[N4];
    for (int i = 0; i < N4; i++) gs[i] = 3 * X4[i] * X4[i] * seedv[i];
    CHECK(nb_backward(v, seed, 0) == NB_OK, "backward with seed: %s", nb_error_message());
    CHECK(equals(nb_tensor_grad(x), N4, gs), "seed-weighted gradient 3x^2 s");

    /* a seed on a one-element output scales the gradient */
    nb_tensor_zero_grad(x);
    y = nb_sum_all(cube(x));
    nb_tensor *half = nb_full(NB_F64, 0, NULL, 0.5);
    CHECK(nb_backward(y, half, 0) == NB_OK, "scalar seed");
    for (int i = 0; i < N4; i++) gs[i] = 1.5 * X4[i] * X4[i];
    CHECK(equals(nb_tensor_grad(x), N4, gs), "scalar seed 0.5 gives 1.5 x^2");

    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
}

/* ---- nb_grad ---------------------------------------------------------------------------------- */

static void test_functional_grad(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = leaf64(N4, X4);
    nb_tensor *z = nb_tensor_from_data(NB_F64, NB_SHAPE(4), X4);
    nb_tensor_set_requires_grad(z, 1); /* requires grad, but the output does not use it */

    /* y = sum(h * h), h = 3x: dy/dx = 18x, dy/dh = 2h = 6x */
    nb_tensor *h = nb_mul_scalar(x, 3);
    nb_tensor *y = nb_sum_all(nb_mul(h, h));
    nb_tensor *wrt[3] = {x, h, z}, *g[3] = {NULL, NULL, NULL};
    CHECK(nb_grad(y, NULL, 3, wrt, g, 0) == NB_OK, "nb_grad: %s", nb_error_message());
    double gx[N4], gh[N4], zero[N4] = {0};
    for (int i = 0; i < N4; i++) gx[i] = 18 * X4[i], gh[i] = 6 * X4[i];
    CHECK(equals(g[0], N4, gx), "nb_grad wrt leaf: 18x");
    CHECK(equals(g[1], N4, gh), "nb_grad wrt intermediate h: 2h");
    CHECK(equals(g[2], N4, zero), "nb_grad wrt an unused input: zeros");
    CHECK(g[2] && nb_tensor_dtype(g[2]) == NB_F64 && nb_tensor_ndim(g[2]) == 1 && nb_tensor_dim(g[2], 0) == 4,
          "zeros have the input's shape and dtype");
    CHECK(nb_tensor_grad(x) == NULL && nb_tensor_grad(z) == NULL, "nb_grad leaves leaf gradients NULL");
    CHECK(g[0] && !nb_tensor_is_leaf(g[0]), "nb_grad results are tape tensors, not leaves");

    /* nb_grad's results are tape tensors even when the rule hands the seed straight through:
     * y = x + c with a caller-owned seed; the gradient must not be the caller's seed tensor */
    nb_tensor *c = nb_tensor_from_data(NB_F64, NB_SHAPE(4), X4);
    nb_tensor *seed = nb_tensor_from_data(NB_F64, NB_SHAPE(4), ((const double[]){1, 2, 3, 4}));
    nb_tensor *ga = NULL;
    CHECK(nb_grad(nb_add(x, c), seed, 1, &x, &ga, 0) == NB_OK, "nb_grad with a leaf seed");
    CHECK(equals(ga, N4, ((const double[]){1, 2, 3, 4})), "d <x + c, s>/dx = s");
    CHECK(ga != seed && !nb_tensor_is_leaf(ga), "nb_grad returned the caller's seed tensor itself "
                                                "(not a tensor on the output's tape)");
    nb_tensor_fill(seed, 0.0);
    CHECK(equals(ga, N4, ((const double[]){1, 2, 3, 4})), "the gradient does not change with the seed after");

    /* the same through nb_backward with NB_CREATE_GRAPH: nb_tensor_grad(x) must not be the seed */
    nb_tensor_fill(seed, 2.0);
    CHECK(nb_backward(nb_add(x, c), seed, NB_CREATE_GRAPH) == NB_OK, "create-graph backward with a leaf seed");
    CHECK(equals(nb_tensor_grad(x), N4, ((const double[]){2, 2, 2, 2})), "d <x + c, s>/dx = s");
    CHECK(nb_tensor_grad(x) != seed, "nb_tensor_grad(x) is the caller's seed tensor itself");
    nb_tensor_fill(seed, -1.0);
    CHECK(equals(nb_tensor_grad(x), N4, ((const double[]){2, 2, 2, 2})),
          "x's gradient changed when the caller refilled its seed: %g", nb_tensor_get(nb_tensor_grad(x), 0));
    nb_tape_reset(tape);
    nb_tensor_zero_grad(x);

    /* with respect to the output itself: the seed (ones) */
    nb_tensor *gy = NULL;
    y = nb_sum_all(nb_mul(x, x));
    CHECK(nb_grad(y, NULL, 1, &y, &gy, 0) == NB_OK && gy && nb_tensor_item(gy) == 1.0, "d y / d y = 1");
    nb_error_clear();

    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(z);
    nb_tensor_free(c);
    nb_tensor_free(seed);
}

/* ---- higher order ----------------------------------------------------------------------------- */

static void test_create_graph(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = leaf64(N4, X4);

    /* d/dx sum(x^3) = 3x^2; d^2 = 6x; d^3 = 6 */
    nb_tensor *y = nb_sum_all(cube(x));
    nb_tensor *g1 = NULL, *g2 = NULL, *g3 = NULL;
    CHECK(nb_grad(y, NULL, 1, &x, &g1, NB_CREATE_GRAPH) == NB_OK, "first grad: %s", nb_error_message());
    CHECK(g1 && nb_tensor_requires_grad(g1), "create-graph gradient requires grad");
    CHECK(nb_grad(nb_sum_all(g1), NULL, 1, &x, &g2, NB_CREATE_GRAPH) == NB_OK, "second grad: %s",
          nb_error_message());
    CHECK(nb_grad(nb_sum_all(g2), NULL, 1, &x, &g3, 0) == NB_OK, "third grad: %s", nb_error_message());
    double w1[N4], w2[N4], w3[N4];
    for (int i = 0; i < N4; i++) w1[i] = 3 * X4[i] * X4[i], w2[i] = 6 * X4[i], w3[i] = 6;
    CHECK(equals(g1, N4, w1), "first derivative 3x^2");
    CHECK(equals(g2, N4, w2), "second derivative 6x");
    CHECK(equals(g3, N4, w3), "third derivative 6");
    CHECK(nb_tensor_grad(x) == NULL, "nb_grad never touched x's gradient");

    /* without create-graph the gradient is a constant */
    nb_tensor *gc = NULL;
    y = nb_sum_all(cube(x));
    CHECK(nb_grad(y, NULL, 1, &x, &gc, 0) == NB_OK && gc && !nb_tensor_requires_grad(gc),
          "plain nb_grad result does not require grad");

    /* nb_backward with create-graph: nb_tensor_grad(x) is differentiable.
     * y = sum(x^3); g = 3x^2; d sum(g*g)/dx = 2 g dg/dx = 2 (3x^2)(6x) = 36 x^3 */
    y = nb_sum_all(cube(x));
    CHECK(nb_backward(y, NULL, NB_CREATE_GRAPH) == NB_OK, "create-graph backward: %s", nb_error_message());
    nb_tensor *g = nb_tensor_grad(x);
    CHECK(equals(g, N4, w1), "create-graph backward value 3x^2");
    CHECK(g && nb_tensor_requires_grad(g), "create-graph gradient is on the graph");
    nb_tensor *gg = NULL;
    CHECK(nb_grad(nb_sum_all(nb_mul(g, g)), NULL, 1, &x, &gg, NB_RETAIN_GRAPH) == NB_OK, "grad of gradient: %s",
          nb_error_message());
    double w4[N4];
    for (int i = 0; i < N4; i++) w4[i] = 2 * (3 * X4[i] * X4[i]) * (6 * X4[i]);
    CHECK(equals(gg, N4, w4), "d sum(g*g)/dx = 2 (3x^2)(6x)");
    /* a second nb_backward through the gradient accumulates d sum(g)/dx = 6x into x.grad on top of 3x^2 */
    CHECK(nb_backward(nb_sum_all(g), NULL, 0) == NB_OK, "backward through the gradient: %s", nb_error_message());
    double w5[N4];
    for (int i = 0; i < N4; i++) w5[i] = 3 * X4[i] * X4[i] + 6 * X4[i];
    CHECK(equals(nb_tensor_grad(x), N4, w5),
          "plain backward after a create-graph one accumulates into nb_tensor_grad: 3x^2 + 6x = %g, got %g",
          w5[0], nb_tensor_grad(x) ? nb_tensor_get(nb_tensor_grad(x), 0) : NAN);

    /* resetting the tape keeps the values of the gradient but drops its graph */
    nb_tape_reset(tape);
    CHECK(equals(nb_tensor_grad(x), N4, w5) && !nb_tensor_requires_grad(nb_tensor_grad(x)),
          "after reset: same values, no graph");

    /* gradients flow on into a seed that requires grad (the double-backward trick for a JVP):
     * g = nb_grad(x^3, seed v) = 3x^2 v; d sum(g * u)/dv = 3x^2 u */
    nb_tensor *v = leaf64(N4, ((const double[]){0.5, -1.0, 2.0, 0.25}));
    const double u[N4] = {1.0, 2.0, -1.0, 0.5};
    nb_tensor *gv = NULL, *jvp = NULL;
    CHECK(nb_grad(cube(x), v, 1, &x, &gv, NB_CREATE_GRAPH) == NB_OK, "grad with a differentiable seed: %s",
          nb_error_message());
    CHECK(nb_grad(nb_sum_all(nb_mul(gv, nb_constant(NB_F64, NB_SHAPE(4), u))), NULL, 1, &v, &jvp, 0) == NB_OK,
          "grad with respect to the seed: %s", nb_error_message());
    double wj[N4];
    for (int i = 0; i < N4; i++) wj[i] = 3 * X4[i] * X4[i] * u[i];
    CHECK(equals(jvp, N4, wj), "d <3x^2 v, u>/dv = 3x^2 u");
    CHECK(nb_tensor_grad(v) == NULL, "the seed's own gradient untouched by nb_grad");
    nb_tape_reset(tape);
    nb_tensor_free(v);

    /* create-graph twice in a row: contributions add, and the sum is still differentiable.
     * y1 = sum(x^3) -> 3x^2, y2 = sum(x*x) -> 2x; g = 3x^2 + 2x; d sum(g)/dx = 6x + 2 */
    nb_tensor_zero_grad(x);
    CHECK(nb_backward(nb_sum_all(cube(x)), NULL, NB_CREATE_GRAPH) == NB_OK, "create-graph 1");
    CHECK(nb_backward(nb_sum_all(nb_mul(x, x)), NULL, NB_CREATE_GRAPH) == NB_OK, "create-graph 2");
    double w6[N4], w7[N4];
    for (int i = 0; i < N4; i++) w6[i] = 3 * X4[i] * X4[i] + 2 * X4[i], w7[i] = 6 * X4[i] + 2;
    CHECK(equals(nb_tensor_grad(x), N4, w6), "two create-graph backwards: 3x^2 + 2x");
    nb_tensor *gsum = NULL;
    CHECK(nb_grad(nb_sum_all(nb_tensor_grad(x)), NULL, 1, &x, &gsum, 0) == NB_OK, "grad of summed gradient");
    CHECK(equals(gsum, N4, w7), "d sum(3x^2 + 2x)/dx = 6x + 2");

    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
}

/* Leaf gradients accumulate across create-graph backwards recorded on two different tapes (the first
 * tape not yet reset): x.grad = 2x + 2x. The first pass's differentiable gradient lives on tape A, the
 * second pass runs on tape B; the sum cannot be one graph, but accumulation must not fail. */
static void test_create_graph_two_tapes(void)
{
    nb_tensor *x = leaf64(N4, X4);
    nb_tape *ta = nb_tape_new(), *tb = nb_tape_new();
    nb_tape_begin(ta);
    CHECK(nb_backward(nb_sum_all(nb_mul(x, x)), NULL, NB_CREATE_GRAPH) == NB_OK, "create-graph on tape A");
    nb_tape_end(ta);
    nb_tape_begin(tb);
    nb_status st = nb_backward(nb_sum_all(nb_mul(x, x)), NULL, NB_CREATE_GRAPH);
    CHECK(st == NB_OK, "create-graph on tape B while x's gradient graph is on tape A: %s (%s)", nb_status_name(st),
          nb_error_message());
    nb_error_clear();
    double w[N4];
    for (int i = 0; i < N4; i++) w[i] = 4 * X4[i];
    CHECK(equals(nb_tensor_grad(x), N4, w), "two create-graph backwards on two tapes accumulate to 4x (got %g)",
          nb_tensor_grad(x) ? nb_tensor_get(nb_tensor_grad(x), 0) : NAN);
    nb_tape_end(tb);
    nb_tape_free(ta);
    nb_tape_free(tb);
    CHECK(nb_tensor_grad(x) && !nb_tensor_requires_grad(nb_tensor_grad(x)), "freeing the tapes drops the graph");
    nb_tensor_free(x);
    nb_error_clear();
}

/* ---- Hessian-vector product of a small network ------------------------------------------------ */

typedef struct net {
    nb_tensor *x, *w1, *w2; /* x [4,3] fixed; w1 [3,5], w2 [5,1] */
} net;

/* loss = mean((tanh(x w1) w2)^2) */
static nb_tensor *net_loss(const net *n)
{
    nb_tensor *o = nb_matmul(nb_tanh(nb_matmul(n->x, n->w1)), n->w2);
    return nb_mean_all(nb_mul(o, o));
}

/* gradients of the loss at the current weights, copied out into g1 [15] and g2 [5] */
static int net_grad(nb_tape *tape, const net *n, double *g1, double *g2)
{
    nb_tape_reset(tape);
    nb_tensor *wrt[2] = {n->w1, n->w2}, *g[2];
    if (nb_grad(net_loss(n), NULL, 2, wrt, g, 0) != NB_OK) return 0;
    for (int i = 0; i < 15; i++) g1[i] = nb_tensor_get(g[0], i);
    for (int i = 0; i < 5; i++) g2[i] = nb_tensor_get(g[1], i);
    return 1;
}

static void hvp_case(const char *name, net *n, nb_tensor *v1, nb_tensor *v2)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    /* HVP by double backward: Hv = d <grad L, v> / dw */
    nb_tensor *wrt[2] = {n->w1, n->w2}, *g[2] = {0}, *hv[2] = {0};
    CHECK(nb_grad(net_loss(n), NULL, 2, wrt, g, NB_CREATE_GRAPH) == NB_OK, "%s: grad: %s", name, nb_error_message());
    nb_tensor *dot = nb_add(nb_sum_all(nb_mul(g[0], v1)), nb_sum_all(nb_mul(g[1], v2)));
    CHECK(nb_grad(dot, NULL, 2, wrt, hv, 0) == NB_OK, "%s: hvp: %s", name, nb_error_message());
    double h1[15], h2[5];
    for (int i = 0; i < 15; i++) h1[i] = hv[0] ? nb_tensor_get(hv[0], i) : NAN;
    for (int i = 0; i < 5; i++) h2[i] = hv[1] ? nb_tensor_get(hv[1], i) : NAN;
    nb_tape_end(tape);

    /* central differences of the gradient along v */
    nb_tape *ft = nb_tape_new();
    nb_tape_begin(ft);
    const double eps = 1e-4;
    double p1[15], p2[5], m1[15], m2[5];
    nb_tensor_axpy(n->w1, eps, v1);
    nb_tensor_axpy(n->w2, eps, v2);
    int ok = net_grad(ft, n, p1, p2);
    nb_tensor_axpy(n->w1, -2 * eps, v1);
    nb_tensor_axpy(n->w2, -2 * eps, v2);
    ok = ok && net_grad(ft, n, m1, m2);
    nb_tensor_axpy(n->w1, eps, v1);
    nb_tensor_axpy(n->w2, eps, v2);
    CHECK(ok, "%s: finite-difference gradients: %s", name, nb_error_message());
    nb_tape_end(ft);
    nb_tape_free(ft);

    double scale = 0, err = 0;
    for (int i = 0; i < 15; i++) scale = fmax(scale, fabs(h1[i]));
    for (int i = 0; i < 5; i++) scale = fmax(scale, fabs(h2[i]));
    for (int i = 0; i < 15; i++) err = fmax(err, fabs(h1[i] - (p1[i] - m1[i]) / (2 * eps)));
    for (int i = 0; i < 5; i++) err = fmax(err, fabs(h2[i] - (p2[i] - m2[i]) / (2 * eps)));
    CHECK(scale > 1e-3, "%s: Hv is not trivially small (%g)", name, scale);
    CHECK(err <= 1e-6 * scale, "%s: |Hv - finite differences| = %g, relative %g", name, err, err / scale);
    nb_tape_free(tape);
}

static void test_hvp(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 2024);
    net n;
    n.x = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 3), -1, 1, &rng);
    n.w1 = nb_tensor_normal(NB_F64, NB_SHAPE(3, 5), 0, 0.8, &rng);
    n.w2 = nb_tensor_normal(NB_F64, NB_SHAPE(5, 1), 0, 0.8, &rng);
    nb_tensor_set_requires_grad(n.w1, 1);
    nb_tensor_set_requires_grad(n.w2, 1);
    nb_tensor *v1 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 5), -1, 1, &rng);
    nb_tensor *v2 = nb_tensor_uniform(NB_F64, NB_SHAPE(5, 1), -1, 1, &rng);
    nb_tensor *z1 = nb_tensor_zeros(NB_F64, NB_SHAPE(3, 5));
    nb_tensor *z2 = nb_tensor_zeros(NB_F64, NB_SHAPE(5, 1));
    hvp_case("hvp w1 and w2", &n, v1, v2);
    hvp_case("hvp w1 only", &n, v1, z2);
    hvp_case("hvp w2 only", &n, z1, v2);
    CHECK_NO_ERROR();
    nb_tensor *all[] = {n.x, n.w1, n.w2, v1, v2, z1, z2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) nb_tensor_free(all[i]);
}

/* ---- no-grad, detach -------------------------------------------------------------------------- */

static void test_no_grad_detach(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = leaf64(N4, X4);

    CHECK(nb_grad_enabled(), "grad mode on by default");
    nb_tensor *a = nb_mul(x, x);
    size_t before = nb_tape_node_count(tape);
    CHECK(before == 1 && nb_tensor_requires_grad(a), "one recorded node for x*x");
    CHECK(nb_tape_node_op(tape, 0) && strcmp(nb_tape_node_op(tape, 0), "mul") == 0 &&
              nb_tape_node_output(tape, 0) == a && nb_tape_node_op(tape, 1) == NULL,
          "node 0 is the mul");

    nb_no_grad_begin();
    nb_no_grad_begin();
    CHECK(!nb_grad_enabled(), "grad mode off inside the scope");
    nb_tensor *b = nb_exp(nb_matmul(nb_reshape(x, NB_SHAPE(4, 1)), nb_reshape(a, NB_SHAPE(1, 4))));
    nb_no_grad_end();
    CHECK(!nb_grad_enabled(), "scopes nest");
    nb_tensor *b2 = nb_tanh(x);
    nb_no_grad_end();
    CHECK(nb_grad_enabled(), "grad mode back on");
    CHECK(b && b2 && nb_tensor_dim(b, 0) == 4 && nb_tensor_dim(b, 1) == 4, "ops still compute under no-grad");
    CHECK(b && nb_tensor_get(b, 1) == exp(X4[0] * X4[1] * X4[1]), "no-grad values are right");
    CHECK(nb_tape_node_count(tape) == before, "no nodes recorded in no-grad (%zu)", nb_tape_node_count(tape));
    CHECK(!nb_tensor_requires_grad(b) && !nb_tensor_requires_grad(b2), "no-grad results do not require grad");
    nb_status st = nb_backward(nb_sum_all(b2), NULL, 0);
    CHECK(st == NB_ERR_STATE, "backward of a no-grad result fails: %s", nb_status_name(st));
    nb_error_clear();
    nb_no_grad_end(); /* an extra end is harmless */
    CHECK(nb_grad_enabled(), "unbalanced end leaves grad mode on");

    /* detach: y = sum(x * detach(x)) -> dy/dx = x (the detached path contributes nothing) */
    nb_tensor *d = nb_detach(x);
    CHECK(d && !nb_tensor_requires_grad(d) && !nb_tensor_is_leaf(d), "detach result is a constant");
    CHECK(d && equals(d, N4, X4), "detach keeps the values");
    CHECK(nb_backward(nb_sum_all(nb_mul(x, d)), NULL, 0) == NB_OK, "backward through detach");
    CHECK(equals(nb_tensor_grad(x), N4, X4), "d sum(x * detach(x))/dx = x");
    /* a fully detached output cannot be differentiated, and nb_grad through it gives zeros */
    nb_tensor *e = nb_detach(nb_mul(x, x));
    nb_tensor *ge = NULL;
    double zero[N4] = {0};
    CHECK(nb_grad(nb_sum_all(nb_mul(e, nb_full(NB_F64, 0, NULL, 1.0))), NULL, 1, &x, &ge, 0) == NB_OK &&
              equals(ge, N4, zero),
          "nb_grad through a detached graph: zeros (%s)", nb_error_message());
    nb_error_clear();

    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
}

/* ---- tapes ------------------------------------------------------------------------------------ */

static void test_tapes(void)
{
    nb_tape *tape = nb_tape_new();
    CHECK(tape && nb_tape_node_count(tape) == 0 && nb_tape_bytes_used(tape) == 0, "new tape is empty");
    CHECK(nb_tape_current() == NULL, "no current tape at start");
    nb_tape_begin(tape);
    CHECK(nb_tape_current() == tape, "begin makes it current");
    nb_tensor *x = leaf64(N4, X4);
    nb_tensor *y = nb_sum_all(nb_tanh(nb_mul(x, x)));
    CHECK(y && nb_tape_node_count(tape) == 3, "three nodes: %zu", nb_tape_node_count(tape));
    size_t used = nb_tape_bytes_used(tape);
    CHECK(used > 0 && nb_tape_bytes_reserved(tape) >= used, "bytes used %zu, reserved %zu", used,
          nb_tape_bytes_reserved(tape));
    nb_tape_reset(tape);
    CHECK(nb_tape_node_count(tape) == 0 && nb_tape_bytes_used(tape) == 0, "reset: empty");
    CHECK(nb_tape_bytes_reserved(tape) > 0, "reset keeps the arena");
    CHECK(nb_tape_current() == tape, "reset keeps the tape current");
    /* the tape can be reused */
    y = nb_sum_all(nb_tanh(nb_mul(x, x)));
    CHECK(y && nb_tape_node_count(tape) == 3 && nb_tape_bytes_used(tape) == used, "reused identically");
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "backward after reuse: %s", nb_error_message());
    double w[N4];
    for (int i = 0; i < N4; i++) {
        double t = tanh(X4[i] * X4[i]);
        w[i] = (1 - t * t) * 2 * X4[i];
    }
    CHECK(close_to(nb_tensor_grad(x), N4, w, 1e-15, 1e-15), "d sum(tanh(x^2))/dx = (1 - tanh^2) 2x");

    /* nesting: begin(inner) inside begin(tape) and end restores tape */
    nb_tape *inner = nb_tape_new();
    CHECK(nb_tape_begin(inner) == NB_OK && nb_tape_current() == inner, "inner current");
    nb_tensor *r = nb_mul(x, x);
    CHECK(r && nb_tape_node_count(inner) == 1 && nb_tape_node_count(tape) == 3, "op recorded on inner");
    nb_status st = nb_tape_end(tape);
    CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "not the current"), "ending the outer tape first");
    nb_error_clear();
    CHECK(nb_tape_current() == inner, "failed end changed nothing");
    CHECK(nb_tape_end(inner) == NB_OK && nb_tape_current() == tape, "end restores the outer tape");
    /* an op mixing a result of inner with the outer tape is refused */
    nb_tensor *mix = nb_add(r, x);
    CHECK(mix == NULL && nb_error_code() == NB_ERR_STATE && strstr(nb_error_message(), "another tape"),
          "graph across tapes refused: %s", nb_error_message());
    nb_error_clear();
    CHECK(nb_tape_end(tape) == NB_OK && nb_tape_current() == NULL, "end restores no tape");

    /* ops with no current tape fail */
    nb_tensor *none = nb_mul(x, x);
    CHECK(none == NULL && nb_error_code() == NB_ERR_STATE && strstr(nb_error_message(), "no current tape"),
          "op without tape: %s", nb_error_message());
    nb_error_clear();
    /* a tape can be begun again after end, and freed */
    CHECK(nb_tape_begin(tape) == NB_OK && nb_tape_end(tape) == NB_OK, "begin again");
    nb_tape_free(inner);
    nb_tape_free(tape);
    nb_tape_free(NULL);
    CHECK_NO_ERROR();
    nb_tensor_free(x);
}

/* ---- in-place modification -------------------------------------------------------------------- */

static void test_in_place(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = leaf64(N4, X4);
    nb_tensor *d = nb_tensor_ones(NB_F64, NB_SHAPE(4));

    nb_tensor *y = nb_sum_all(nb_mul(x, x));
    CHECK(nb_tensor_axpy(x, 0.5, d) == NB_OK, "axpy on a leaf");
    nb_status st = nb_backward(y, NULL, 0);
    CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"), "axpy then backward: %s",
          nb_error_message());
    CHECK(nb_tensor_grad(x) == NULL, "no gradient written");
    nb_error_clear();

    y = nb_sum_all(nb_exp(x));
    nb_tensor_fill(x, 2.0);
    st = nb_backward(y, NULL, 0);
    CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"), "fill then backward: %s",
          nb_error_message());
    nb_error_clear();

    y = nb_sum_all(nb_mul(x, x));
    nb_tensor_set(x, 0, 1.0);
    CHECK(nb_backward(y, NULL, 0) == NB_ERR_STATE, "set then backward");
    nb_error_clear();

    /* a constant leaf modified in place is caught as well: y = sum(x * c), then c changes */
    nb_tensor *c = nb_tensor_from_data(NB_F64, NB_SHAPE(4), X4);
    y = nb_sum_all(nb_mul(x, c));
    nb_tensor_fill(c, 0.0);
    CHECK(nb_backward(y, NULL, 0) == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"),
          "constant modified in place: %s", nb_error_message());
    nb_error_clear();

    /* writing through nb_tensor_data and marking dirty is caught */
    y = nb_sum_all(nb_mul(x, x));
    ((double *)nb_tensor_data(x))[1] = 7.0;
    nb_tensor_mark_dirty(x);
    CHECK(nb_backward(y, NULL, 0) == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"),
          "mark_dirty then backward: %s", nb_error_message());
    nb_error_clear();

    /* a constant seen through a view (reshape) and modified in place: the saved view aliases the leaf,
     * so the backward would use the new values; it must be reported too */
    nb_tensor_fill(x, 1.0);
    nb_tensor *cv = nb_reshape(c, NB_SHAPE(2, 2));
    y = nb_sum_all(nb_mul(nb_reshape(x, NB_SHAPE(2, 2)), cv));
    nb_tensor_fill(c, 5.0);
    st = nb_backward(y, NULL, 0);
    CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"),
          "constant modified in place behind a reshape view: status %s, grad[0] = %g", nb_status_name(st),
          nb_tensor_grad(x) ? nb_tensor_get(nb_tensor_grad(x), 0) : NAN);
    nb_error_clear();

    /* modifying after the backward is fine, and the next graph sees the new values */
    nb_tensor_zero_grad(x);
    nb_tensor_fill(x, 1.0);
    y = nb_sum_all(nb_mul(x, x));
    CHECK(nb_backward(y, NULL, 0) == NB_OK, "backward before modification");
    nb_tensor_fill(x, 3.0);
    nb_tensor_zero_grad(x);
    CHECK(nb_backward(nb_sum_all(nb_mul(x, x)), NULL, 0) == NB_OK, "fresh graph after modification");
    CHECK(equals(nb_tensor_grad(x), N4, ((const double[]){6, 6, 6, 6})), "gradient at the new values");

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(d);
    nb_tensor_free(c);
    nb_error_clear();
}

/* ---- ownership -------------------------------------------------------------------------------- */

static void test_free_op_result(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = leaf64(N4, X4);
    nb_tensor *y = nb_mul(x, x);
    nb_tensor_free(y);
    CHECK(nb_error_code() == NB_ERR_STATE && strstr(nb_error_message(), "belongs to its tape"),
          "freeing an op result is refused: %s", nb_error_message());
    nb_error_clear();
    /* y is still usable */
    CHECK(nb_backward(nb_sum_all(y), NULL, 0) == NB_OK, "op result survives the refused free");
    CHECK(equals(nb_tensor_grad(x), N4, ((const double[]){-3, 1, 4, 6})), "gradient 2x");
    nb_tensor_free(NULL);
    CHECK_NO_ERROR();
    /* a gradient is owned by its leaf; a clone of an op result is a caller-owned leaf */
    nb_tensor *cl = nb_tensor_clone(y);
    CHECK(cl && nb_tensor_is_leaf(cl) && !nb_tensor_requires_grad(cl) && nb_tensor_get(cl, 3) == 9.0,
          "clone is a leaf with the values");
    nb_tensor_free(cl);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
}

/* ---- float32 against float64 ------------------------------------------------------------------ */

typedef struct mlp {
    nb_tensor *x, *w1, *b1, *w2, *t;
} mlp;

/* mean((tanh(x w1 + b1) w2 - t)^2), x [8,4], w1 [4,6], b1 [6], w2 [6,2], t [8,2] */
static nb_tensor *mlp_loss(const mlp *m)
{
    nb_tensor *h = nb_tanh(nb_add(nb_matmul(m->x, m->w1), m->b1));
    nb_tensor *e = nb_sub(nb_matmul(h, m->w2), m->t);
    return nb_mean_all(nb_mul(e, e));
}

static nb_tensor *to_f32(const nb_tensor *t, int requires_grad)
{
    int64_t n = nb_tensor_numel(t);
    float buf[64];
    for (int64_t i = 0; i < n && i < 64; i++) buf[i] = (float)nb_tensor_get(t, i);
    nb_tensor *r = nb_tensor_from_data(NB_F32, nb_tensor_ndim(t), nb_tensor_shape(t), buf);
    if (requires_grad) nb_tensor_set_requires_grad(r, 1);
    return r;
}

static void test_f32_vs_f64(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 5);
    mlp a;
    a.x = nb_tensor_uniform(NB_F64, NB_SHAPE(8, 4), -1, 1, &rng);
    a.w1 = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 6), -1, 1, &rng);
    a.b1 = nb_tensor_uniform(NB_F64, NB_SHAPE(6), -0.5, 0.5, &rng);
    a.w2 = nb_tensor_uniform(NB_F64, NB_SHAPE(6, 2), -1, 1, &rng);
    a.t = nb_tensor_uniform(NB_F64, NB_SHAPE(8, 2), -1, 1, &rng);
    /* round the f64 values to float first so both runs see identical inputs */
    nb_tensor *src[] = {a.x, a.w1, a.b1, a.w2, a.t};
    for (size_t i = 0; i < 5; i++)
        for (int64_t k = 0; k < nb_tensor_numel(src[i]); k++)
            nb_tensor_set(src[i], k, (double)(float)nb_tensor_get(src[i], k));
    mlp b = {to_f32(a.x, 0), to_f32(a.w1, 1), to_f32(a.b1, 1), to_f32(a.w2, 1), to_f32(a.t, 0)};
    nb_tensor_set_requires_grad(a.w1, 1);
    nb_tensor_set_requires_grad(a.b1, 1);
    nb_tensor_set_requires_grad(a.w2, 1);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *la = mlp_loss(&a), *lb = mlp_loss(&b);
    CHECK(la && lb && nb_tensor_dtype(lb) == NB_F32 && nb_tensor_dtype(la) == NB_F64, "losses computed");
    CHECK(nb_backward(la, NULL, 0) == NB_OK && nb_backward(lb, NULL, 0) == NB_OK, "backwards: %s",
          nb_error_message());
    CHECK_CLOSE(nb_tensor_item(lb), nb_tensor_item(la), 1e-5, 0);
    nb_tensor *pa[] = {a.w1, a.b1, a.w2}, *pb[] = {b.w1, b.b1, b.w2};
    const char *names[] = {"w1", "b1", "w2"};
    for (int p = 0; p < 3; p++) {
        nb_tensor *ga = nb_tensor_grad(pa[p]), *gb = nb_tensor_grad(pb[p]);
        CHECK(ga && gb && nb_tensor_dtype(gb) == NB_F32, "%s: gradients exist", names[p]);
        if (!ga || !gb) continue;
        double scale = 0, err = 0;
        for (int64_t k = 0; k < nb_tensor_numel(ga); k++) scale = fmax(scale, fabs(nb_tensor_get(ga, k)));
        for (int64_t k = 0; k < nb_tensor_numel(ga); k++)
            err = fmax(err, fabs(nb_tensor_get(ga, k) - nb_tensor_get(gb, k)));
        CHECK(scale > 1e-3 && err <= 1e-5 * scale, "%s: f32 vs f64 gradient: max err %g, scale %g", names[p],
              err, scale);
    }
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *all[] = {a.x, a.w1, a.b1, a.w2, a.t, b.x, b.w1, b.b1, b.w2, b.t};
    for (size_t i = 0; i < 10; i++) nb_tensor_free(all[i]);
    CHECK_NO_ERROR();
}

/* ---- random numbers --------------------------------------------------------------------------- */

/* independent reference: splitmix64 seeding and xoshiro256** */
static uint64_t ref_splitmix(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}
static uint64_t ref_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t ref_next(uint64_t *s)
{
    uint64_t r = ref_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ref_rotl(s[3], 45);
    return r;
}

static void test_rng(void)
{
    nb_rng a, b;
    nb_rng_seed(&a, 0);
    /* splitmix64(0)'s first output, the published reference value */
    CHECK(a.s[0] == UINT64_C(0xe220a8397b1dcdaf), "splitmix64 seeding: s[0] = %016llx",
          (unsigned long long)a.s[0]);

    nb_rng_seed(&a, 12345);
    nb_rng_seed(&b, 12345);
    int same = 1;
    for (int i = 0; i < 1000; i++) same &= nb_rng_u64(&a) == nb_rng_u64(&b);
    CHECK(same, "the same seed gives the same stream");
    nb_rng_seed(&b, 12346);
    nb_rng_seed(&a, 12345);
    CHECK(nb_rng_u64(&a) != nb_rng_u64(&b), "different seeds give different streams");

    uint64_t sm = 777, ref[4];
    for (int i = 0; i < 4; i++) ref[i] = ref_splitmix(&sm);
    nb_rng_seed(&a, 777);
    int match = 1;
    for (int i = 0; i < 100; i++) match &= nb_rng_u64(&a) == ref_next(ref);
    CHECK(match, "xoshiro256** matches the reference implementation");

    /* a copy forks the stream */
    nb_rng_seed(&a, 9);
    b = a;
    CHECK(nb_rng_uniform(&a) == nb_rng_uniform(&b), "copied state gives the same next value");

    nb_rng_seed(&a, 42);
    int in_range = 1;
    double lo = 1, hi = 0;
    for (int i = 0; i < 100000; i++) {
        double u = nb_rng_uniform(&a);
        in_range &= u >= 0.0 && u < 1.0;
        lo = fmin(lo, u);
        hi = fmax(hi, u);
    }
    CHECK(in_range, "uniform in [0, 1)");
    CHECK(lo < 1e-3 && hi > 1 - 1e-3, "uniform covers the interval: [%g, %g]", lo, hi);

    nb_rng_seed(&a, 43);
    double s = 0, s2 = 0;
    const int n = 100000;
    int finite = 1;
    for (int i = 0; i < n; i++) {
        double z = nb_rng_normal(&a);
        finite &= isfinite(z);
        s += z;
        s2 += z * z;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    CHECK(finite, "normal draws are finite");
    CHECK(fabs(mean) < 0.015, "normal mean %g", mean);   /* 5 standard errors */
    CHECK(fabs(var - 1) < 0.025, "normal variance %g", var);

    /* nb_rng_below: in range, every value reached, roughly uniform */
    nb_rng_seed(&a, 44);
    int counts[7] = {0}, below_ok = 1;
    for (int i = 0; i < 70000; i++) {
        uint64_t k = nb_rng_below(&a, 7);
        below_ok &= k < 7;
        if (k < 7) counts[k]++;
    }
    CHECK(below_ok, "below(7) < 7");
    for (int k = 0; k < 7; k++) CHECK(abs(counts[k] - 10000) < 500, "below(7) count[%d] = %d", k, counts[k]);

    /* tensors drawn from the same seed are identical; row-major order from the stream */
    nb_rng_seed(&a, 3);
    nb_rng_seed(&b, 3);
    nb_tensor *t1 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 4), -2, 2, &a);
    nb_tensor *t2 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 4), -2, 2, &b);
    CHECK(t1 && t2 && memcmp(nb_tensor_cdata(t1), nb_tensor_cdata(t2), 12 * sizeof(double)) == 0,
          "same seed, same tensor");
    nb_rng_seed(&b, 3);
    double u0 = nb_rng_uniform(&b);
    CHECK(t1 && nb_tensor_get(t1, 0) == -2 + 4 * u0, "element 0 is low + (high - low) u");
    nb_tensor_free(t1);
    nb_tensor_free(t2);
    CHECK_NO_ERROR();
}


/* ---- post-accumulate hooks -------------------------------------------------------------------- */

typedef struct post_log {
    int n;
    nb_tensor *order[8];
    double grad_at_call[8];  /* the hooked leaf's .grad[0] when its hook ran */
    double other_at_call[8]; /* another leaf's .grad[0] at that moment */
    nb_tensor *other;
    nb_status fail_with;
} post_log;

static nb_status post_record(nb_tensor *leaf, void *user)
{
    post_log *lg = user;
    if (lg->n < 8) {
        lg->order[lg->n] = leaf;
        lg->grad_at_call[lg->n] = nb_tensor_get(nb_tensor_grad(leaf), 0);
        lg->other_at_call[lg->n] = lg->other && nb_tensor_grad(lg->other) ? nb_tensor_get(nb_tensor_grad(lg->other), 0) : 0;
    }
    lg->n++;
    if (lg->fail_with != NB_OK) nb_error_set(lg->fail_with, "post hook refuses");
    return lg->fail_with;
}

static void test_post_accumulate_hook(void)
{
    /* y = w2 * tanh(w1 * x) + w1: w1 is used first (node 0) and last (the add), w2 in between.
     * dy/dw2 = tanh(w1 x); dy/dw1 = w2 (1 - tanh^2(w1 x)) x + 1. Leaves finish in decreasing order of
     * their first use: w2 (first used by node 2) before w1 (first used by node 0), and w2's hook runs
     * while w1's gradient is still untouched. */
    nb_tensor *x = leaf64(1, (const double[]){0.5});
    nb_tensor *w1 = leaf64(1, (const double[]){0.8});
    nb_tensor *w2 = leaf64(1, (const double[]){-1.5});
    nb_tensor_set_requires_grad(x, 0);
    post_log lg = {.other = w1};
    CHECK(nb_tensor_set_post_accumulate_hook(w1, post_record, &lg) == NB_OK, "set hook w1");
    CHECK(nb_tensor_set_post_accumulate_hook(w2, post_record, &lg) == NB_OK, "set hook w2");
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *y = nb_add(nb_mul(w2, nb_tanh(nb_mul(w1, x))), w1);
    CHECK(nb_backward(nb_sum_all(y), NULL, NB_RETAIN_GRAPH) == NB_OK, "backward: %s", nb_error_message());
    double th = tanh(0.4), g2 = th, g1 = -1.5 * (1 - th * th) * 0.5 + 1;
    CHECK(lg.n == 2, "each hooked leaf once per pass, got %d calls", lg.n);
    CHECK(lg.order[0] == w2 && lg.order[1] == w1, "w2 finishes before w1");
    CHECK_CLOSE(lg.grad_at_call[0], g2, 1e-15, 0);
    CHECK(lg.other_at_call[0] == 0, "w1's gradient is not yet stored when w2's hook runs (%g)", lg.other_at_call[0]);
    CHECK_CLOSE(lg.grad_at_call[1], g1, 1e-15, 0);
    /* a second pass: the hooks see the accumulated totals */
    lg.n = 0;
    CHECK(nb_backward(nb_sum_all(y), NULL, NB_RETAIN_GRAPH) == NB_OK, "second backward");
    CHECK(lg.n == 2, "second pass: %d calls", lg.n);
    CHECK_CLOSE(lg.grad_at_call[0], 2 * g2, 1e-15, 0);
    CHECK_CLOSE(lg.grad_at_call[1], 2 * g1, 1e-15, 0);
    /* nb_grad does not call them */
    lg.n = 0;
    nb_tensor *gs[2];
    nb_tensor *wrt[2] = {w1, w2};
    CHECK(nb_grad(nb_sum_all(y), NULL, 2, wrt, gs, NB_RETAIN_GRAPH) == NB_OK && lg.n == 0, "nb_grad calls no post hook");
    /* a failing hook fails the backward with its status and message */
    lg.n = 0;
    lg.fail_with = NB_ERR_IO;
    CHECK_ERROR(nb_backward(nb_sum_all(y), NULL, NB_RETAIN_GRAPH) != NB_OK, NB_ERR_IO, "post hook refuses");
    CHECK(lg.n == 1, "the backward stops at the first failing hook (%d calls)", lg.n);
    lg.fail_with = NB_OK;
    /* op results have no post-accumulate hook; NULL removes one */
    CHECK_ERROR(nb_tensor_set_post_accumulate_hook(y, post_record, &lg) != NB_OK, NB_ERR_STATE, "op result");
    CHECK(nb_tensor_set_post_accumulate_hook(w1, NULL, NULL) == NB_OK, "remove");
    nb_tensor_zero_grad(w1);
    nb_tensor_zero_grad(w2);
    lg.n = 0;
    CHECK(nb_backward(nb_sum_all(y), NULL, 0) == NB_OK && lg.n == 1 && lg.order[0] == w2, "only w2 is hooked now");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    nb_tensor_free(w1);
    nb_tensor_free(w2);
}

/* Tape constants (the contract in nabla.h): nb_constant copies its data at call time; a constant's
 * buffer may be written before an op uses it; written after, nb_tensor_mark_dirty makes the backward
 * report it, also when it was written and marked through a view (a reshape shares the counter). */
static void test_tape_constant_writes(void)
{
    nb_tensor *x = nb_tensor_full(NB_F64, NB_SHAPE(2), 2.0);
    nb_tensor_set_requires_grad(x, 1);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);

    double src[2] = {3, 4};
    nb_tensor *c = nb_constant(NB_F64, NB_SHAPE(2), src);
    src[0] = -1; /* the constant holds its own copy */
    CHECK(c && nb_tensor_get(c, 0) == 3 && !nb_tensor_requires_grad(c) && !nb_tensor_is_leaf(c),
          "nb_constant copies at call time");
    ((double *)nb_tensor_data(c))[1] = 5; /* before any use: an ordinary initialisation */
    nb_tensor *y = nb_sum_all(nb_mul(x, c));
    CHECK(nb_backward(y, NULL, NB_RETAIN_GRAPH) == NB_OK && nb_tensor_get(nb_tensor_grad(x), 1) == 5,
          "a constant written before its use: %s", nb_error_message());
    ((double *)nb_tensor_data(c))[0] = 100;
    nb_tensor_mark_dirty(c);
    nb_status st = nb_backward(y, NULL, 0);
    CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"),
          "a constant written after its use and marked dirty: %s", nb_status_name(st));
    nb_error_clear();

    /* written and marked through a view: the view shares its base's counter */
    nb_tensor_zero_grad(x);
    nb_tensor *c2 = nb_constant(NB_F64, NB_SHAPE(2), (const double[]){3, 4});
    nb_tensor *v = nb_reshape(c2, NB_SHAPE(2, 1));
    y = nb_sum_all(nb_mul(nb_reshape(x, NB_SHAPE(2, 1)), v));
    ((double *)nb_tensor_data(v))[0] = 100;
    nb_tensor_mark_dirty(v);
    st = nb_backward(y, NULL, 0);
    CHECK(st == NB_ERR_STATE && strstr(nb_error_message(), "modified in place"),
          "a view of a constant written and marked dirty: status %s, grad[0] %g (was silently 100)",
          nb_status_name(st), nb_tensor_has_grad(x) ? nb_tensor_get(nb_tensor_grad(x), 0) : 0.0);
    nb_error_clear();

    /* a leaf marked through a view of it, after a node saved the leaf itself */
    nb_tensor *w = nb_tensor_full(NB_F64, NB_SHAPE(2), 1.0);
    y = nb_sum_all(nb_mul(x, w));
    nb_tensor_mark_dirty(nb_reshape(w, NB_SHAPE(1, 2)));
    CHECK(nb_backward(y, NULL, 0) == NB_ERR_STATE, "a leaf marked dirty through a view");
    nb_error_clear();

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(w);
    nb_tensor_free(x);
}

int main(void)
{
    test_accumulate();
    test_retain_and_seed();
    test_functional_grad();
    test_create_graph();
    test_create_graph_two_tapes();
    test_hvp();
    test_no_grad_detach();
    test_tapes();
    test_in_place();
    test_free_op_result();
    test_f32_vs_f64();
    test_rng();
    test_post_accumulate_hook();
    test_tape_constant_writes();
    return nbt_report("engine");
}
