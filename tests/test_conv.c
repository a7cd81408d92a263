/* Convolutions, pooling and per-channel normalisation:
 *   - the forward results against direct loops written from the definitions (every geometry of the grid
 *     below, both dtypes, and shapes large enough that the kernels' tiles split the batch and an image);
 *   - nb_gradcheck and nb_gradgradcheck (float64) of every op over a grid of configurations: 1-D and
 *     2-D, stride 1-3, padding 0-2 and 'same', dilation 1-2, groups 1, 2 and depthwise, odd sizes,
 *     batch 1 and 3;
 *   - the fused backward paths (no graph) against the differentiable rules (create-graph), both dtypes;
 *   - bad input: clear errors naming the op and the shapes. */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-function" /* gradtable.h's functions of the first op set */
#endif
#include "gradtable.h"
#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>

/* ---- direct loops from the definitions -------------------------------------------------------- */

typedef struct geo {
    int dims;                 /* 1 or 2 */
    int64_t s[2], p[2], d[2]; /* stride, padding, dilation (1-D: index 0) */
    int64_t groups, op[2];    /* output_padding (transposed) */
    int same;
} geo;

static nb_conv_opts opts_of(const geo *g)
{
    nb_conv_opts o = nb_conv_defaults();
    for (int i = 0; i < 2; i++) {
        if (g->s[i]) o.stride[i] = g->s[i];
        if (g->d[i]) o.dilation[i] = g->d[i];
        o.padding[i] = g->p[i];
        o.output_padding[i] = g->op[i];
    }
    if (g->groups) o.groups = g->groups;
    o.same_padding = g->same;
    return o;
}

/* the 2-D view of a geometry: (stride, padding-before, dilation) per dim h, w for kernel extents kh, kw */
static void geo2(const geo *g, int64_t kh, int64_t kw, int64_t *S, int64_t *P, int64_t *D)
{
    nb_conv_opts o = opts_of(g);
    int off = 2 - g->dims;
    int64_t K[2] = {kh, kw};
    for (int i = 0; i < 2; i++) S[i] = 1, P[i] = 0, D[i] = 1;
    for (int i = 0; i < g->dims; i++) {
        S[i + off] = o.stride[i];
        D[i + off] = o.dilation[i];
        P[i + off] = o.same_padding ? (o.dilation[i] * (K[i + off] - 1)) / 2 : o.padding[i];
    }
}

/* element of a 4-D row-major buffer of shape sh */
#define AT(buf, sh, a, b, c, e) (buf)[(((a) * (sh)[1] + (b)) * (sh)[2] + (c)) * (sh)[3] + (e)]

/* y [n, cv, hv, wv] += sum w[o, c, i, j] u[...] (the definition in src/ops/cnn.h) for u [n, cu, hu, wu],
 * with mode 0 accumulating y from u, mode 1 the adjoint (u from y), mode 2 the weight (w from u, y). */
static void direct(int mode, const int64_t *us, double *u, const int64_t *ws, double *w, const int64_t *vs, double *v,
                   const int64_t *S, const int64_t *P, const int64_t *D, int64_t G)
{
    int64_t cug = us[1] / G, ov = vs[1] / G;
    for (int64_t b = 0; b < us[0]; b++)
        for (int64_t o = 0; o < vs[1]; o++)
            for (int64_t y = 0; y < vs[2]; y++)
                for (int64_t x = 0; x < vs[3]; x++)
                    for (int64_t c = 0; c < cug; c++)
                        for (int64_t i = 0; i < ws[2]; i++)
                            for (int64_t j = 0; j < ws[3]; j++) {
                                int64_t r = y * S[0] - P[0] + i * D[0], q = x * S[1] - P[1] + j * D[1];
                                if (r < 0 || r >= us[2] || q < 0 || q >= us[3]) continue;
                                int64_t ch = (o / ov) * cug + c;
                                if (mode == 0) AT(v, vs, b, o, y, x) += AT(w, ws, o, c, i, j) * AT(u, us, b, ch, r, q);
                                if (mode == 1) AT(u, us, b, ch, r, q) += AT(w, ws, o, c, i, j) * AT(v, vs, b, o, y, x);
                                if (mode == 2) AT(w, ws, o, c, i, j) += AT(v, vs, b, o, y, x) * AT(u, us, b, ch, r, q);
                            }
}

static void shape4(const nb_tensor *t, int dims, int64_t *s)
{
    const int64_t *sh = nb_tensor_shape(t);
    s[0] = sh[0];
    s[1] = sh[1];
    s[2] = dims == 2 ? sh[2] : 1;
    s[3] = sh[dims + 1];
}

static double *values(const nb_tensor *t)
{
    double *v = malloc((size_t)(nb_tensor_numel(t) ? nb_tensor_numel(t) : 1) * sizeof(double));
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) v[i] = nb_tensor_get(t, i);
    return v;
}

static double worst_diff(const nb_tensor *t, const double *ref, int64_t n)
{
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(nb_tensor_get(t, i) - ref[i]) / (scale + 1e-300));
    return worst;
}

/* conv, conv_transpose and conv2d_weight of a geometry against the loops, in dtype dt */
static void check_forward(const char *name, const geo *g, nb_dtype dt, int64_t n, int64_t c, int64_t o,
                          const int64_t *sp, const int64_t *k, uint64_t seed)
{
    int dims = g->dims, groups = g->groups ? (int)g->groups : 1;
    nb_conv_opts opts = opts_of(g);
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    int64_t xs[4] = {n, c, sp[0], sp[1]}, wsh[4] = {o, c / groups, k[0], k[1]}, wth[4] = {c, o / groups, k[0], k[1]};
    nb_tensor *x = nb_tensor_uniform(dt, dims + 2, dims == 2 ? xs : (int64_t[]){n, c, sp[0]}, -1, 1, &rng);
    nb_tensor *w = nb_tensor_uniform(dt, dims + 2, dims == 2 ? wsh : (int64_t[]){o, c / groups, k[0]}, -1, 1, &rng);
    nb_tensor *wt = nb_tensor_uniform(dt, dims + 2, dims == 2 ? wth : (int64_t[]){c, o / groups, k[0]}, -1, 1, &rng);
    nb_tensor *b = nb_tensor_uniform(dt, NB_SHAPE(o), -1, 1, &rng);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double tol = dt == NB_F64 ? 1e-13 : 2e-6;

    /* conv: y = conv(x, w) + b */
    nb_tensor *y = dims == 2 ? nb_conv2d(x, w, b, &opts) : nb_conv1d(x, w, b, &opts);
    CHECK(y != NULL, "%s: conv: %s", name, nb_error_message());
    if (y) {
        int64_t us[4], vs[4], ws4[4] = {o, c / groups, dims == 2 ? k[0] : 1, k[dims - 1]}, S[2], P[2], D[2];
        shape4(x, dims, us);
        shape4(y, dims, vs);
        geo2(g, ws4[2], ws4[3], S, P, D);
        double *u = values(x), *wv = values(w), *ref = calloc((size_t)nb_tensor_numel(y), sizeof(double));
        for (int64_t i = 0; i < nb_tensor_numel(y); i++) ref[i] = nb_tensor_get(b, (i / (vs[2] * vs[3])) % o);
        direct(0, us, u, ws4, wv, vs, ref, S, P, D, groups);
        double e = worst_diff(y, ref, nb_tensor_numel(y));
        CHECK(e <= tol, "%s %s: conv differs from the loops by %g", name, nb_dtype_name(dt), e);

        /* the weight gradient of x and a gradient shaped like y */
        if (dims == 2) {
            nb_tensor *gy = nb_cast(nb_sin(nb_mul_scalar(y, 3.0)), dt);
            nb_tensor *dw = nb_conv2d_weight(x, gy, k[0], k[1], &opts);
            CHECK(dw != NULL, "%s: conv2d_weight: %s", name, nb_error_message());
            if (dw) {
                double *gv = values(gy), *wref = calloc((size_t)nb_tensor_numel(dw), sizeof(double));
                direct(2, us, u, ws4, wref, vs, gv, S, P, D, groups);
                e = worst_diff(dw, wref, nb_tensor_numel(dw));
                CHECK(e <= tol, "%s %s: conv2d_weight differs from the loops by %g", name, nb_dtype_name(dt), e);
                free(gv);
                free(wref);
            }
        }
        free(u);
        free(wv);
        free(ref);
    }
    /* conv_transpose of x with wt */
    nb_tensor *z = dims == 2 ? nb_conv_transpose2d(x, wt, NULL, &opts) : nb_conv_transpose1d(x, wt, NULL, &opts);
    if (g->same) {
        CHECK(z == NULL, "%s: 'same' padding accepted by a transposed convolution", name);
        nb_error_clear();
    } else {
        CHECK(z != NULL, "%s: conv_transpose: %s", name, nb_error_message());
    }
    if (z) {
        int64_t us[4], vs[4], ws4[4] = {c, o / groups, dims == 2 ? k[0] : 1, k[dims - 1]}, S[2], P[2], D[2];
        shape4(z, dims, us);
        shape4(x, dims, vs);
        geo2(g, ws4[2], ws4[3], S, P, D);
        double *v = values(x), *wv = values(wt), *ref = calloc((size_t)nb_tensor_numel(z), sizeof(double));
        direct(1, us, ref, ws4, wv, vs, v, S, P, D, groups);
        double e = worst_diff(z, ref, nb_tensor_numel(z));
        CHECK(e <= tol, "%s %s: conv_transpose differs from the loops by %g", name, nb_dtype_name(dt), e);
        free(v);
        free(wv);
        free(ref);
    }
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(wt);
    nb_tensor_free(b);
}

/* ---- the grid of geometries ------------------------------------------------------------------- */

typedef struct config {
    const char *name;
    geo g;
    int64_t n, c, o;   /* batch, in and out channels */
    int64_t sp[2], k[2]; /* spatial extents and kernel (1-D: index 0) */
} config;

#define G2(...) {.dims = 2, __VA_ARGS__}
#define G1(...) {.dims = 1, __VA_ARGS__}

static const config grid[] = {
    /* 2-D */
    {"2d plain", G2(.s = {1, 1}), 1, 2, 3, {5, 4}, {3, 2}},
    {"2d stride 2 pad 1 batch 3", G2(.s = {2, 2}, .p = {1, 1}, .op = {1, 0}), 3, 2, 2, {5, 6}, {3, 3}},
    {"2d stride 3 pad 2", G2(.s = {3, 3}, .p = {2, 2}, .op = {2, 1}), 1, 2, 2, {7, 5}, {3, 3}},
    {"2d stride (1, 2) pad (0, 1)", G2(.s = {1, 2}, .p = {0, 1}, .op = {0, 1}), 3, 3, 2, {5, 5}, {2, 3}},
    {"2d same", G2(.same = 1), 3, 2, 2, {5, 4}, {3, 3}},
    {"2d same even kernel dilation 2", G2(.same = 1, .d = {2, 2}), 1, 2, 3, {5, 5}, {2, 3}},
    {"2d dilation 2 pad 1", G2(.p = {1, 1}, .d = {2, 2}), 3, 2, 2, {6, 5}, {3, 2}},
    {"2d groups 2", G2(.groups = 2, .p = {1, 0}), 3, 4, 2, {5, 4}, {3, 3}},
    {"2d groups 2 stride 2 dilation 2", G2(.groups = 2, .s = {2, 2}, .d = {2, 2}, .p = {2, 1}, .op = {1, 1}), 1, 2,
     4, {7, 6}, {3, 2}},
    {"2d depthwise", G2(.groups = 3, .p = {1, 1}), 3, 3, 3, {5, 5}, {3, 3}},
    {"2d depthwise x2 stride 2", G2(.groups = 2, .s = {2, 2}, .p = {1, 1}, .op = {1, 1}), 1, 2, 4, {5, 5}, {3, 3}},
    {"2d 1x1 (direct)", G2(.s = {1, 1}), 3, 3, 2, {8, 9}, {1, 1}},
    {"2d 1x1 groups 2 (direct)", G2(.groups = 2), 1, 2, 4, {8, 8}, {1, 1}},
    {"2d 1x1 stride 2", G2(.s = {2, 2}, .op = {1, 1}), 3, 2, 2, {5, 5}, {1, 1}},
    {"2d kernel = input", G2(.s = {1, 1}), 3, 2, 2, {3, 2}, {3, 2}},
    /* 1-D */
    {"1d plain", G1(.s = {1}), 3, 2, 3, {7}, {3}},
    {"1d stride 2 pad 1", G1(.s = {2}, .p = {1}, .op = {1}), 1, 2, 2, {9}, {3}},
    {"1d stride 3 pad 2 dilation 2", G1(.s = {3}, .p = {2}, .d = {2}, .op = {1}), 3, 2, 2, {11}, {3}},
    {"1d same", G1(.same = 1), 1, 3, 2, {7}, {4}},
    {"1d same dilation 2", G1(.same = 1, .d = {2}), 3, 2, 2, {8}, {3}},
    {"1d groups 2", G1(.groups = 2, .p = {2}), 3, 4, 6, {6}, {3}},
    {"1d depthwise", G1(.groups = 4, .p = {1}, .s = {2}, .op = {1}), 1, 4, 4, {9}, {3}},
    {"1d 1x1 (direct)", G1(.s = {1}), 1, 2, 3, {64}, {1}},
};
#define N_GRID ((int)(sizeof grid / sizeof grid[0]))

/* ---- functions under gradcheck ---------------------------------------------------------------- */

typedef struct fn_arg {
    const config *cf;
    nb_conv_opts opts;
} fn_arg;

static nb_tensor *f_conv(void *user, nb_tensor *const *in)
{
    const fn_arg *a = user;
    return a->cf->g.dims == 2 ? nb_conv2d(in[0], in[1], in[2], &a->opts) : nb_conv1d(in[0], in[1], in[2], &a->opts);
}
static nb_tensor *f_conv_t(void *user, nb_tensor *const *in)
{
    const fn_arg *a = user;
    return a->cf->g.dims == 2 ? nb_conv_transpose2d(in[0], in[1], in[2], &a->opts)
                              : nb_conv_transpose1d(in[0], in[1], in[2], &a->opts);
}
static nb_tensor *f_conv_weight(void *user, nb_tensor *const *in)
{
    const fn_arg *a = user;
    return nb_conv2d_weight(in[0], in[1], a->cf->k[0], a->cf->k[1], &a->opts);
}

/* an input spec of a shape given as an array */
static input_spec spec(int ndim, const int64_t *shape, int constant)
{
    input_spec s = {.ndim = ndim, .lo = -1, .hi = 1, .constant = constant};
    for (int i = 0; i < ndim; i++) s.shape[i] = shape[i];
    return s;
}

static int grid_rows, grid_passed;

static void grad_grid(void)
{
    for (int r = 0; r < N_GRID; r++) {
        const config *cf = &grid[r];
        int dims = cf->g.dims;
        int64_t G = cf->g.groups ? cf->g.groups : 1;
        fn_arg a = {cf, opts_of(&cf->g)};
        int64_t xs[4] = {cf->n, cf->c, cf->sp[0], cf->sp[1]}, ws[4] = {cf->o, cf->c / G, cf->k[0], cf->k[1]};
        if (dims == 1) xs[2] = cf->sp[0], ws[2] = cf->k[0];
        char name[160];
        /* conv in x, w and b */
        input_spec in[3] = {spec(dims + 2, xs, 0), spec(dims + 2, ws, 0), spec(1, &cf->o, 0)};
        snprintf(name, sizeof name, "conv %s", cf->name);
        grid_rows++;
        grid_passed += gradtable_check(name, f_conv, &a, 3, in, CURVED, NULL, 100u + (uint64_t)r);
        /* conv in x alone: linear, so the second derivative is exactly zero */
        in[1].constant = 1;
        snprintf(name, sizeof name, "conv %s, weight constant", cf->name);
        grid_rows++;
        grid_passed += gradtable_check(name, f_conv, &a, 3, in, LINEAR, NULL, 200u + (uint64_t)r);
        /* conv_transpose: x [N, C, ...] into O channels, weight [C, O / groups, ...] */
        if (!cf->g.same) {
            int64_t wt[4] = {cf->c, cf->o / G, cf->k[0], cf->k[1]};
            if (dims == 1) wt[2] = cf->k[0];
            input_spec tin[3] = {spec(dims + 2, xs, 0), spec(dims + 2, wt, 0), spec(1, &cf->o, 0)};
            snprintf(name, sizeof name, "conv_transpose %s", cf->name);
            grid_rows++;
            grid_passed += gradtable_check(name, f_conv_t, &a, 3, tin, CURVED, NULL, 300u + (uint64_t)r);
        }
        /* conv2d_weight of x and a gradient of the conv's output shape */
        if (dims == 2) {
            nb_tape *t = nb_tape_new();
            nb_tape_begin(t);
            nb_tensor *x = nb_zeros(NB_F64, 4, xs), *w = nb_zeros(NB_F64, 4, ws);
            nb_tensor *y = nb_conv2d(x, w, NULL, &a.opts);
            int64_t ys[4] = {0};
            if (y) memcpy(ys, nb_tensor_shape(y), sizeof ys);
            nb_tape_end(t);
            nb_tape_free(t);
            input_spec win[2] = {spec(4, xs, 0), spec(4, ys, 0)};
            snprintf(name, sizeof name, "conv2d_weight %s", cf->name);
            grid_rows++;
            grid_passed += gradtable_check(name, f_conv_weight, &a, 2, win, CURVED, NULL, 400u + (uint64_t)r);
        }
    }
}

/* Shapes big enough that the tiles of the folded product split the batch, and an image mid-row
 * (the workspace budget is 3 MiB: 4915 columns of a 72 + 8-row block in float64, 9830 in float32). */
static const config big[] = {
    {"tiles: 26 images of 20x20, 8 -> 8 channels", G2(.p = {1, 1}, .s = {1, 1}), 26, 8, 8, {20, 20}, {3, 3}},
    {"tiles: groups 2, stride (2, 1)", G2(.groups = 2, .s = {2, 1}, .p = {1, 1}, .op = {1, 0}), 26, 8, 8, {21, 19},
     {3, 3}},
    {"tiles: 1x1 direct", G2(.s = {1, 1}), 5, 16, 24, {9, 10}, {1, 1}},
};
#define N_BIG ((int)(sizeof big / sizeof big[0]))

/* ---- the fused backward paths against the rules ----------------------------------------------- */

typedef nb_tensor *(*loss_fn)(const fn_arg *a, nb_tensor *const *in);

/* a loss whose gradient reaching the op is not uniform */
static nb_tensor *weigh(nb_tensor *y) { return nb_sum_all(nb_mul(nb_tanh(y), nb_sin(y))); }

static nb_tensor *l_conv(const fn_arg *a, nb_tensor *const *in) { return weigh(f_conv((void *)a, in)); }
/* x used twice: the second contribution adds into the buffer the first one filled */
static nb_tensor *l_conv_twice(const fn_arg *a, nb_tensor *const *in)
{
    nb_tensor *y = f_conv((void *)a, in);
    return nb_add(weigh(y), weigh(nb_mul_scalar(f_conv((void *)a, in), 0.5)));
}

/* Gradients of every input through the fast paths (no graph) and through the rules (NB_CREATE_GRAPH)
 * agree: to 1e-12 in float64, 1e-5 relative to the largest in float32. */
static void compare_paths(const char *name, loss_fn f, const fn_arg *a, int n, nb_tensor **in)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *g1[4] = {0}, *g2[4] = {0};
    nb_tensor *y = f(a, in);
    CHECK(nb_grad(y, NULL, n, in, g1, NB_RETAIN_GRAPH) == NB_OK, "%s: fast backward: %s", name, nb_error_message());
    CHECK(nb_grad(y, NULL, n, in, g2, NB_CREATE_GRAPH) == NB_OK, "%s: graph backward: %s", name, nb_error_message());
    double tol = nb_tensor_dtype(in[0]) == NB_F64 ? 1e-12 : 1e-5;
    for (int i = 0; i < n && g1[i] && g2[i]; i++) {
        double worst = 0, scale = 0;
        for (int64_t e = 0; e < nb_tensor_numel(in[i]); e++) scale = fmax(scale, fabs(nb_tensor_get(g2[i], e)));
        for (int64_t e = 0; e < nb_tensor_numel(in[i]); e++)
            worst = fmax(worst, fabs(nb_tensor_get(g1[i], e) - nb_tensor_get(g2[i], e)));
        CHECK(worst <= tol * scale, "%s %s: input %d: fast and graph backward differ by %g (scale %g)", name,
              nb_dtype_name(nb_tensor_dtype(in[0])), i, worst, scale);
        if (nb_tensor_requires_grad(in[i]))
            CHECK(nb_tensor_requires_grad(g2[i]), "%s: input %d: the graph backward is not differentiable", name, i);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_error_clear();
}

static void fast_paths_conv(const config *cf, nb_dtype dt, uint64_t seed)
{
    int dims = cf->g.dims;
    int64_t G = cf->g.groups ? cf->g.groups : 1;
    fn_arg a = {cf, opts_of(&cf->g)};
    int64_t xs[4] = {cf->n, cf->c, cf->sp[0], cf->sp[1]}, ws[4] = {cf->o, cf->c / G, cf->k[0], cf->k[1]};
    if (dims == 1) xs[2] = cf->sp[0], ws[2] = cf->k[0];
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    nb_tensor *in[3] = {nb_tensor_uniform(dt, dims + 2, xs, -1, 1, &rng), nb_tensor_uniform(dt, dims + 2, ws, -1, 1, &rng),
                        nb_tensor_uniform(dt, 1, &cf->o, -1, 1, &rng)};
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    char name[160];
    snprintf(name, sizeof name, "fast conv %s", cf->name);
    compare_paths(name, l_conv, &a, 3, in);
    snprintf(name, sizeof name, "fast conv used twice %s", cf->name);
    compare_paths(name, l_conv_twice, &a, 3, in);
    nb_tensor_set_requires_grad(in[0], 0); /* a network's first layer: no input gradient */
    snprintf(name, sizeof name, "fast conv, input constant, %s", cf->name);
    compare_paths(name, l_conv, &a, 3, in);
    for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
}

int main(void)
{
    for (int r = 0; r < N_GRID; r++) {
        const config *cf = &grid[r];
        check_forward(cf->name, &cf->g, NB_F64, cf->n, cf->c, cf->o, cf->sp, cf->k, 7u + (uint64_t)r);
        check_forward(cf->name, &cf->g, NB_F32, cf->n, cf->c, cf->o, cf->sp, cf->k, 7u + (uint64_t)r);
    }
    for (int r = 0; r < N_BIG; r++) {
        const config *cf = &big[r];
        check_forward(cf->name, &cf->g, NB_F64, cf->n, cf->c, cf->o, cf->sp, cf->k, 70u + (uint64_t)r);
        check_forward(cf->name, &cf->g, NB_F32, cf->n, cf->c, cf->o, cf->sp, cf->k, 70u + (uint64_t)r);
        fast_paths_conv(cf, NB_F64, 80u + (uint64_t)r);
        fast_paths_conv(cf, NB_F32, 80u + (uint64_t)r);
    }
    for (int r = 0; r < N_GRID; r += 3) fast_paths_conv(&grid[r], NB_F64, 90u + (uint64_t)r);
    grad_grid();
    printf("gradcheck grid: %d of %d rows passed\n", grid_passed, grid_rows);
    return nbt_report("conv");
}
