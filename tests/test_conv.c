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
    /* rows wide enough for the wide grid of stride-1 convolutions (padded copies, one copy per tap) */
    {"2d wide: pad (1, 2) dilation (1, 2)", G2(.p = {1, 2}, .d = {1, 2}), 1, 2, 2, {3, 20}, {2, 3}},
    {"2d wide: same, groups 2", G2(.same = 1, .groups = 2), 1, 4, 4, {3, 16}, {3, 3}},
    {"2d wide: no padding", G2(.s = {1, 1}), 2, 2, 3, {2, 18}, {2, 3}},
    /* K = 4 x 3 x 3 = 36 > 32 taps: the products on the wide grid (below: the sums of shifted rows) */
    {"2d wide products: pad 1", G2(.p = {1, 1}), 1, 4, 2, {3, 16}, {3, 3}},
    {"2d wide products: groups 2, dilation 2", G2(.p = {2, 1}, .d = {2, 1}, .groups = 2), 1, 8, 2, {4, 14}, {3, 3}},
    /* 1-D */
    {"1d plain", G1(.s = {1}), 3, 2, 3, {7}, {3}},
    {"1d stride 2 pad 1", G1(.s = {2}, .p = {1}, .op = {1}), 1, 2, 2, {9}, {3}},
    {"1d stride 3 pad 2 dilation 2", G1(.s = {3}, .p = {2}, .d = {2}, .op = {1}), 3, 2, 2, {11}, {3}},
    {"1d same", G1(.same = 1), 1, 3, 2, {7}, {4}},
    {"1d same dilation 2", G1(.same = 1, .d = {2}), 3, 2, 2, {8}, {3}},
    {"1d groups 2", G1(.groups = 2, .p = {2}), 3, 4, 6, {6}, {3}},
    {"1d depthwise", G1(.groups = 4, .p = {1}, .s = {2}, .op = {1}), 1, 4, 4, {9}, {3}},
    {"1d 1x1 (direct)", G1(.s = {1}), 1, 2, 3, {64}, {1}},
    {"1d wide: same", G1(.same = 1), 2, 2, 2, {24}, {3}},
};
#define N_GRID ((int)(sizeof grid / sizeof grid[0]))

/* ---- functions under gradcheck ---------------------------------------------------------------- */

typedef struct pool_config pool_config;
typedef struct fn_arg {
    const config *cf;
    nb_conv_opts opts;
    const pool_config *pc;
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
        fn_arg a = {.cf = cf, .opts = opts_of(&cf->g)};
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

/* Shapes big enough that the tiles of the folded product split the batch, and an image mid-row (the
 * workspace budget is 1 MiB: the first runs the wide grid 3 images at a time in float64, 6 in float32;
 * the second the plain im2col, 3276 columns of a 36 + 4-row block in float64, 6553 in float32, of
 * 40 x 11 x 19; the last the wide grid with the small-K backward, 11 images at a time in float64). */
static const config big[] = {
    {"tiles: 8 images of 20x20, 8 -> 8 channels", G2(.p = {1, 1}, .s = {1, 1}), 8, 8, 8, {20, 20}, {3, 3}},
    {"tiles: groups 2, stride (2, 1)", G2(.groups = 2, .s = {2, 1}, .p = {1, 1}, .op = {1, 0}), 40, 8, 8, {21, 19},
     {3, 3}},
    {"tiles: 1x1 direct", G2(.s = {1, 1}), 5, 16, 24, {9, 10}, {1, 1}},
    /* a first layer (K = 9 <= 32): the backward by dot products, several images per tile */
    {"tiles: 1 -> 8 channels, small K", G2(.p = {1, 1}), 12, 1, 8, {24, 24}, {3, 3}},
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
static void compare_paths(const char *name, loss_fn f, const fn_arg *a, int n, nb_tensor **all)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *g1[4] = {0}, *g2[4] = {0}, *in[4] = {0};
    nb_tensor *y = f(a, all);
    /* gradients of the inputs that require one (nb_grad refuses a constant, as torch.autograd.grad
     * does); a constant input is the case where the fast path must skip its gradient */
    int m = 0;
    for (int i = 0; i < n; i++)
        if (nb_tensor_requires_grad(all[i])) in[m++] = all[i];
    n = m;
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
    fn_arg a = {.cf = cf, .opts = opts_of(&cf->g)};
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

/* ---- pooling -------------------------------------------------------------------------------- */

struct pool_config {
    const char *name;
    int dims, kind;      /* kind: 0 max, 1 average, 2 adaptive average */
    int64_t n, c, sp[2]; /* batch, channels, spatial extents (1-D: index 0) */
    int64_t k[2];        /* kernel, or the adaptive output size */
    nb_pool_opts o;
};

enum { MAXP, AVGP, ADAP };
#define PO(...) {__VA_ARGS__}

static const pool_config pools[] = {
    {"max 2x2", 2, MAXP, 3, 2, {4, 6}, {2, 2}, {.ceil_mode = 0}},
    {"max 3x3 stride 2 pad 1", 2, MAXP, 1, 3, {7, 6}, {3, 3}, PO(.stride = {2, 2}, .padding = {1, 1})},
    {"max 3x2 stride (1, 2) dilation (2, 1) ceil", 2, MAXP, 3, 2, {7, 5}, {3, 2},
     PO(.stride = {1, 2}, .dilation = {2, 1}, .padding = {1, 0}, .ceil_mode = 1)},
    {"max 2x2 ceil odd", 2, MAXP, 1, 2, {5, 5}, {2, 2}, PO(.ceil_mode = 1)},
    {"max 3x3 stride 3 pad 1 dilation 2", 2, MAXP, 3, 1, {8, 9}, {3, 3},
     PO(.stride = {3, 3}, .padding = {1, 1}, .dilation = {2, 2})},
    {"max 1d 3 stride 2 pad 1", 1, MAXP, 3, 2, {9}, {3}, PO(.stride = {2}, .padding = {1})},
    {"max 1d 2 ceil dilation 2", 1, MAXP, 1, 3, {8}, {2}, PO(.dilation = {2}, .ceil_mode = 1)},
    {"avg 2x2", 2, AVGP, 3, 2, {4, 6}, {2, 2}, {.ceil_mode = 0}},
    {"avg 3x3 stride 2 pad 1", 2, AVGP, 1, 2, {7, 6}, {3, 3}, PO(.stride = {2, 2}, .padding = {1, 1})},
    {"avg 3x3 stride 2 pad 1 exclude pad", 2, AVGP, 3, 2, {7, 6}, {3, 3},
     PO(.stride = {2, 2}, .padding = {1, 1}, .exclude_pad = 1)},
    {"avg 3x2 stride 3 pad 1 ceil", 2, AVGP, 1, 2, {8, 7}, {3, 2}, PO(.stride = {3, 3}, .padding = {1, 1}, .ceil_mode = 1)},
    {"avg 3x3 stride 2 pad 1 ceil exclude pad", 2, AVGP, 3, 1, {6, 6}, {3, 3},
     PO(.stride = {2, 2}, .padding = {1, 1}, .ceil_mode = 1, .exclude_pad = 1)},
    {"avg 1d 3 stride 2 pad 1", 1, AVGP, 3, 2, {9}, {3}, PO(.stride = {2}, .padding = {1})},
    {"avg 1d 4 stride 3 ceil", 1, AVGP, 1, 2, {10}, {4}, PO(.stride = {3}, .ceil_mode = 1)},
    {"adaptive 5x7 -> 2x3", 2, ADAP, 3, 2, {5, 7}, {2, 3}, {.ceil_mode = 0}},
    {"adaptive global", 2, ADAP, 3, 3, {4, 5}, {1, 1}, {.ceil_mode = 0}},
    {"adaptive 3x3 -> 5x4 (overlapping)", 2, ADAP, 1, 2, {3, 3}, {5, 4}, {.ceil_mode = 0}},
    {"adaptive 1d 7 -> 3", 1, ADAP, 3, 2, {7}, {3}, {.ceil_mode = 0}},
};
#define N_POOLS ((int)(sizeof pools / sizeof pools[0]))

static nb_tensor *f_pool(void *user, nb_tensor *const *in)
{
    const pool_config *p = user;
    if (p->kind == MAXP) return p->dims == 2 ? nb_max_pool2d(in[0], p->k[0], p->k[1], &p->o) : nb_max_pool1d(in[0], p->k[0], &p->o);
    if (p->kind == AVGP) return p->dims == 2 ? nb_avg_pool2d(in[0], p->k[0], p->k[1], &p->o) : nb_avg_pool1d(in[0], p->k[0], &p->o);
    return p->dims == 2 ? nb_adaptive_avg_pool2d(in[0], p->k[0], p->k[1]) : nb_adaptive_avg_pool1d(in[0], p->k[0]);
}

/* Average pooling's adjoint applied to g (in[1], of the pooled shape) as the gradient of
 * sum(pool(x) g) with respect to x (in[0]): linear in g, independent of x. Records the adjoint op
 * itself, so that its rule is gradchecked (the rows of f_pool meet it only in their second order). */
static nb_tensor *f_avg_adjoint(void *user, nb_tensor *const *in)
{
    nb_tensor *x = in[0], *gx = NULL;
    nb_tensor *y = f_pool(user, &x);
    if (!y || nb_grad(nb_sum_all(nb_mul(y, in[1])), NULL, 1, &x, &gx, NB_CREATE_GRAPH) != NB_OK) return NULL;
    return gx;
}

/* The window of output o along a dim of extent n: [*s, *e) inside the input, and the divisor size
 * (PyTorch's definitions, written out again). */
static int64_t window(const pool_config *p, int64_t n, int64_t no, int64_t k, int64_t st, int64_t pad, int64_t o,
                      int64_t *s, int64_t *e)
{
    if (p->kind == ADAP) {
        *s = (int64_t)floor((double)(o * n) / (double)no);
        *e = (int64_t)ceil((double)((o + 1) * n) / (double)no);
        return *e - *s;
    }
    int64_t a = o * st - pad, z = a + k < n + pad ? a + k : n + pad;
    *s = a > 0 ? a : 0;
    *e = z < n ? z : n;
    return z - a;
}

/* forward values (and max pooling's positions) against loops, both dtypes */
static void check_pool(const pool_config *p, nb_dtype dt, uint64_t seed)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    int64_t xs[4] = {p->n, p->c, p->sp[0], p->sp[1]};
    nb_tensor *x = nb_tensor_uniform(dt, p->dims + 2, xs, -1, 1, &rng);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *idx = NULL, *y;
    if (p->kind == MAXP && p->dims == 2)
        y = nb_max_pool2d_with_indices(x, p->k[0], p->k[1], &p->o, &idx);
    else
        y = f_pool((void *)p, &x);
    CHECK(y != NULL, "pool %s: %s", p->name, nb_error_message());
    if (y) {
        int64_t H = p->dims == 2 ? p->sp[0] : 1, W = p->sp[p->dims - 1];
        int64_t Ho = p->dims == 2 ? nb_tensor_dim(y, 2) : 1, Wo = nb_tensor_dim(y, -1);
        int64_t K[2] = {p->dims == 2 ? p->k[0] : 1, p->k[p->dims - 1]}, S[2] = {1, 1}, P[2] = {0, 0}, D[2] = {1, 1};
        for (int d = 0; d < p->dims; d++) {
            int i = d + 2 - p->dims;
            S[i] = p->o.stride[d] ? p->o.stride[d] : p->k[d];
            P[i] = p->o.padding[d];
            D[i] = p->o.dilation[d] ? p->o.dilation[d] : 1;
        }
        double worst = 0;
        int bad_idx = 0;
        for (int64_t pl = 0; pl < p->n * p->c; pl++)
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int64_t ox = 0; ox < Wo; ox++) {
                    double want;
                    int64_t e = (pl * Ho + oy) * Wo + ox, at = -1;
                    if (p->kind == MAXP) {
                        want = -INFINITY;
                        for (int64_t i = 0; i < K[0]; i++)
                            for (int64_t j = 0; j < K[1]; j++) {
                                int64_t r = oy * S[0] - P[0] + i * D[0], c = ox * S[1] - P[1] + j * D[1];
                                if (r < 0 || r >= H || c < 0 || c >= W) continue;
                                double v = nb_tensor_get(x, pl * H * W + r * W + c);
                                if (v > want) want = v, at = r * W + c;
                            }
                    } else {
                        int64_t r0, r1, c0, c1;
                        int64_t sh = window(p, H, Ho, K[0], S[0], P[0], oy, &r0, &r1);
                        int64_t sw = window(p, W, Wo, K[1], S[1], P[1], ox, &c0, &c1);
                        double sum = 0;
                        for (int64_t r = r0; r < r1; r++)
                            for (int64_t c = c0; c < c1; c++) sum += nb_tensor_get(x, pl * H * W + r * W + c);
                        want = sum / (double)(p->o.exclude_pad ? (r1 - r0) * (c1 - c0) : sh * sw);
                    }
                    worst = fmax(worst, fabs(nb_tensor_get(y, e) - want));
                    if (idx && nb_tensor_get(idx, e) != (double)at) bad_idx++;
                }
        CHECK(worst <= (dt == NB_F64 ? 1e-15 : 1e-6), "pool %s %s: differs from the loops by %g", p->name,
              nb_dtype_name(dt), worst);
        CHECK(bad_idx == 0, "pool %s: %d positions differ from the loops", p->name, bad_idx);
        if (idx) CHECK(nb_tensor_dtype(idx) == NB_I64 && nb_tensor_numel(idx) == nb_tensor_numel(y), "pool %s: indices", p->name);
    }
    CHECK_NO_ERROR();
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
}

static nb_tensor *l_pool(const fn_arg *a, nb_tensor *const *in)
{
    const pool_config *p = a->pc;
    nb_tensor *x = nb_tanh(in[0]); /* a gradient that reaches the input through another op */
    nb_tensor *l = nb_add(weigh(f_pool((void *)p, &x)), weigh(f_pool((void *)p, in)));
    if (p->kind == MAXP && p->dims == 2) { /* the positions recorded by the forward, and the rule using them */
        nb_tensor *idx;
        l = nb_add(l, weigh(nb_max_pool2d_with_indices(nb_sin(in[0]), p->k[0], p->k[1], &p->o, &idx)));
    }
    return l;
}

/* NaN in a window wins (the last one, as PyTorch), in the 2x2 fast path and in the general loop alike;
 * the gradient goes to it */
static void pool_nan(void)
{
    const double nan = NAN;
    /* one plane 4x4: window (0, 0) holds two NaNs, window (1, 1) ties at 2 (the first one wins) */
    const double v[16] = {1, nan, 5, 0, nan, 3, 1, 1, 0, 0, 2, 2, 0, 0, 2, 1};
    nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(1, 1, 4, 4), v);
    nb_tensor_set_requires_grad(x, 1);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_pool_opts p3 = nb_pool_defaults();
    p3.stride[0] = p3.stride[1] = 2;
    p3.padding[0] = p3.padding[1] = 1;
    nb_tensor *i2, *i3;
    nb_tensor *y2 = nb_max_pool2d_with_indices(x, 2, 2, NULL, &i2); /* the fast path */
    nb_tensor *y3 = nb_max_pool2d_with_indices(x, 3, 3, &p3, &i3); /* the general loop */
    CHECK(y2 && y3, "pool nan: %s", nb_error_message());
    if (y2 && y3) {
        CHECK(isnan(nb_tensor_get(y2, 0)) && nb_tensor_get(i2, 0) == 4, "2x2: NaN wins, the last one (at %g)",
              nb_tensor_get(i2, 0));
        CHECK(nb_tensor_get(y2, 3) == 2 && nb_tensor_get(i2, 3) == 10, "2x2: the first of a tie (at %g)",
              nb_tensor_get(i2, 3));
        CHECK(isnan(nb_tensor_get(y3, 0)) && nb_tensor_get(i3, 0) == 4, "3x3: NaN wins, the last one (at %g)",
              nb_tensor_get(i3, 0));
        nb_tensor *gx;
        CHECK(nb_grad(nb_sum_all(nb_mul_scalar(y2, 1.0)), nb_ones(NB_F64, 0, NULL), 1, &x, &gx, 0) == NB_OK,
              "pool nan: %s", nb_error_message());
        CHECK(gx && nb_tensor_get(gx, 4) == 1 && nb_tensor_get(gx, 1) == 0 && nb_tensor_get(gx, 10) == 1 &&
                  nb_tensor_get(gx, 11) == 0,
              "the gradient goes to the recorded positions");
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    nb_error_clear();
}

/* ---- per-channel normalisation --------------------------------------------------------------- */

static nb_tensor *f_moments(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_channel_moments(in[0]); }
static nb_tensor *f_norm(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_channel_norm(in[0], in[1], in[2], in[3], 1e-3);
}
static nb_tensor *f_norm_plain(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_channel_norm(in[0], in[1], NULL, NULL, 0.0);
}
/* batch normalisation in training mode: the statistics of x itself */
static nb_tensor *f_batch_norm(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_channel_norm(in[0], nb_channel_moments(in[0]), in[1], in[2], 1e-5);
}
static nb_tensor *f_batch_norm_plain(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_channel_norm(in[0], nb_channel_moments(in[0]), NULL, NULL, 1e-5);
}

/* the fused op */
static nb_tensor *f_bn_train(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_batch_norm_train(in[0], in[1], in[2], 1e-5, NULL);
}
static nb_tensor *f_bn_train_plain(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_batch_norm_train(in[0], NULL, NULL, 1e-3, NULL);
}
static nb_tensor *f_bn_train_bias(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_batch_norm_train(in[0], NULL, in[1], 1e-5, NULL);
}

static nb_tensor *l_bn_train(const fn_arg *a, nb_tensor *const *in)
{
    (void)a;
    nb_tensor *x = nb_tanh(in[0]), *y = nb_batch_norm_train(x, in[1], in[2], 1e-5, NULL);
    return nb_add(weigh(y), weigh(nb_mul(y, x)));
}

static nb_tensor *l_batch_norm(const fn_arg *a, nb_tensor *const *in)
{
    (void)a;
    nb_tensor *x = nb_tanh(in[0]), *y = nb_channel_norm(x, nb_channel_moments(x), in[1], in[2], 1e-5);
    return nb_add(weigh(y), weigh(nb_mul(y, x))); /* x reaches the loss through the norm and besides it */
}

/* batch norm, relu and max pooling fused */
static nb_tensor *f_bnrp(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_batch_norm_relu_max_pool2d(in[0], in[1], in[2], 1e-5, 2, 2, NULL);
}
static nb_tensor *f_bnrp_3x2(void *user, nb_tensor *const *in) /* bias only, windows 3 x 2 */
{
    UNUSED_USER;
    return nb_batch_norm_relu_max_pool2d(in[0], NULL, in[1], 1e-3, 3, 2, NULL);
}
static nb_tensor *f_bnrp_plain(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_batch_norm_relu_max_pool2d(in[0], NULL, NULL, 1e-5, 2, 2, NULL);
}
static nb_tensor *l_bnrp(const fn_arg *a, nb_tensor *const *in)
{
    (void)a;
    nb_tensor *x = nb_tanh(in[0]), *y = nb_batch_norm_relu_max_pool2d(x, in[1], in[2], 1e-5, 2, 2, NULL);
    return nb_add(weigh(y), nb_sum_all(nb_affine(y, 0.5, 0.0))); /* (weigh's slope is 0 at a pooled 0) */
}
static nb_tensor *l_bnrp_3x2(const fn_arg *a, nb_tensor *const *in)
{
    (void)a;
    nb_tensor *y = nb_batch_norm_relu_max_pool2d(nb_tanh(in[0]), in[1], in[2], 1e-5, 3, 2, NULL);
    return nb_add(weigh(y), nb_sum_all(nb_affine(y, 0.5, 0.0)));
}

typedef struct norm_row {
    const char *name;
    nb_func f;
    int n_in;
    input_spec in[4];
    int order;
} norm_row;

static const norm_row norm_rows[] = {
    {"channel_moments [3,4,5]", f_moments, 1, {IN(-1, 1, 3, 4, 5)}, CURVED},
    {"channel_moments [2,3,2,3]", f_moments, 1, {IN(-1, 1, 2, 3, 2, 3)}, CURVED},
    {"channel_moments [5,3]", f_moments, 1, {IN(-1, 1, 5, 3)}, CURVED},
    {"channel_norm [2,3,2,3]", f_norm, 4, {IN(-1, 1, 2, 3, 2, 3), IN(0.5, 2, 2, 3), IN(-1, 1, 3), IN(-1, 1, 3)}, CURVED},
    {"channel_norm [4,3]", f_norm, 4, {IN(-1, 1, 4, 3), IN(0.5, 2, 2, 3), IN(-1, 1, 3), IN(-1, 1, 3)}, CURVED},
    {"channel_norm, stats constant (evaluation mode)", f_norm, 4,
     {IN(-1, 1, 3, 2, 5), INC(0.5, 2, 2, 2), IN(-1, 1, 2), IN(-1, 1, 2)}, CURVED},
    {"channel_norm, no weight and bias", f_norm_plain, 2, {IN(-1, 1, 3, 2, 5), IN(0.5, 2, 2, 2)}, CURVED},
    {"batch norm (training) [3,4,2,3]", f_batch_norm, 3, {IN(-1, 1, 3, 4, 2, 3), IN(-1, 1, 4), IN(-1, 1, 4)}, CURVED},
    {"batch norm (training) [6,3]", f_batch_norm, 3, {IN(-1, 1, 6, 3), IN(-1, 1, 3), IN(-1, 1, 3)}, CURVED},
    {"batch norm (training), no affine", f_batch_norm_plain, 1, {IN(-1, 1, 2, 3, 7)}, CURVED},
    {"batch_norm_train [3,4,2,3]", f_bn_train, 3, {IN(-1, 1, 3, 4, 2, 3), IN(-1, 1, 4), IN(-1, 1, 4)}, CURVED},
    {"batch_norm_train [6,3]", f_bn_train, 3, {IN(-1, 1, 6, 3), IN(-1, 1, 3), IN(-1, 1, 3)}, CURVED},
    {"batch_norm_train, no affine", f_bn_train_plain, 1, {IN(-1, 1, 2, 3, 7)}, CURVED},
    {"batch_norm_train, bias only", f_bn_train_bias, 2, {IN(-1, 1, 3, 2, 5), IN(-1, 1, 2)}, CURVED},
    {"batch_norm_relu_max_pool2d [3,2,4,6] 2x2", f_bnrp, 3, {IN(-1, 1, 3, 2, 4, 6), IN(0.5, 1.5, 2), IN(-0.5, 0.5, 2)}, CURVED},
    {"batch_norm_relu_max_pool2d [2,3,5,7] 2x2, a row and a column in no window", f_bnrp, 3,
     {IN(-1, 1, 2, 3, 5, 7), IN(0.5, 1.5, 3), IN(-0.5, 0.5, 3)}, CURVED},
    {"batch_norm_relu_max_pool2d, negative weight", f_bnrp, 3, {IN(-1, 1, 2, 3, 4, 4), IN(-1.5, -0.5, 3), IN(-0.5, 0.5, 3)}, CURVED},
    {"batch_norm_relu_max_pool2d 3x2, bias only [2,2,7,5]", f_bnrp_3x2, 2, {IN(-1, 1, 2, 2, 7, 5), IN(-0.5, 0.5, 2)}, CURVED},
    {"batch_norm_relu_max_pool2d, no affine", f_bnrp_plain, 1, {IN(-1, 1, 3, 2, 4, 4)}, CURVED},
};
#define N_NORM ((int)(sizeof norm_rows / sizeof norm_rows[0]))

/* moments and norm against loops in both dtypes (a large batch: the float32 sums accumulate in double) */
static void check_norm(nb_dtype dt)
{
    nb_rng rng;
    nb_rng_seed(&rng, 5);
    nb_tensor *x = nb_tensor_uniform(dt, NB_SHAPE(64, 3, 17, 19), 99.0, 101.0, &rng); /* mean 100, var 1/3 */
    nb_tensor *w = nb_tensor_uniform(dt, NB_SHAPE(3), 0.5, 2, &rng), *b = nb_tensor_uniform(dt, NB_SHAPE(3), -1, 1, &rng);
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *st = nb_channel_moments(x), *y = nb_channel_norm(x, st, w, b, 1e-5);
    CHECK(st && y, "channel norm: %s", nb_error_message());
    if (st && y) {
        int64_t M = 64 * 17 * 19;
        double worst_m = 0, worst_v = 0, worst_y = 0;
        for (int64_t c = 0; c < 3; c++) {
            double s = 0, v = 0;
            for (int64_t n = 0; n < 64; n++)
                for (int64_t e = 0; e < 17 * 19; e++) s += nb_tensor_get(x, (n * 3 + c) * 17 * 19 + e);
            double mean = s / (double)M;
            for (int64_t n = 0; n < 64; n++)
                for (int64_t e = 0; e < 17 * 19; e++) {
                    double d = nb_tensor_get(x, (n * 3 + c) * 17 * 19 + e) - mean;
                    v += d * d;
                }
            v /= (double)M;
            worst_m = fmax(worst_m, fabs(nb_tensor_get(st, c) - mean) / mean);
            worst_v = fmax(worst_v, fabs(nb_tensor_get(st, 3 + c) - v) / v);
            double sc = nb_tensor_get(w, c) / sqrt(nb_tensor_get(st, 3 + c) + 1e-5);
            for (int64_t n = 0; n < 64; n++)
                for (int64_t e = 0; e < 17 * 19; e++) {
                    int64_t i = (n * 3 + c) * 17 * 19 + e;
                    double want = (nb_tensor_get(x, i) - nb_tensor_get(st, c)) * sc + nb_tensor_get(b, c);
                    worst_y = fmax(worst_y, fabs(nb_tensor_get(y, i) - want));
                }
        }
        /* float32: the inputs are exact, the sums in double: mean and variance to float32 rounding */
        double tol = dt == NB_F64 ? 1e-13 : 1e-6;
        CHECK(worst_m <= tol && worst_v <= tol, "channel_moments %s: mean off by %g, variance by %g (relative)",
              nb_dtype_name(dt), worst_m, worst_v);
        CHECK(worst_y <= (dt == NB_F64 ? 1e-11 : 2e-4), "channel_norm %s: off by %g", nb_dtype_name(dt), worst_y);
    }
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(b);
}

/* ---- threads -------------------------------------------------------------------------------- */

/* a == b, NaN equal to NaN */
static int same_value(double a, double b) { return a == b || (a != a && b != b); }

/* The fused op against max_pool2d(relu(batch_norm_train)): the same values and statistics (the same
 * arithmetic), and gradients equal to the composition's (fast paths and graph rules) to rounding, NaN
 * where it has NaN. Inputs with ties (a constant patch, as conv outputs on an image's background), a
 * NaN in channel 1 when nan is set, weights of both signs (a negative scale changes which element is
 * the maximum). */
static void bnrp_vs_composition(nb_dtype dt, int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int nan,
                                uint64_t seed)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    nb_tensor *in[3] = {nb_tensor_uniform(dt, NB_SHAPE(n, c, h, w), -1, 1, &rng),
                        nb_tensor_uniform(dt, NB_SHAPE(c), -1.5, 1.5, &rng), nb_tensor_uniform(dt, NB_SHAPE(c), -0.5, 0.5, &rng)};
    for (int64_t i = 0; i < h * w / 2; i++) nb_tensor_set(in[0], i, 0.25); /* ties in image 0, channel 0 */
    if (nan && c > 1) nb_tensor_set(in[0], h * w + 3, NAN);
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    char name[128];
    snprintf(name, sizeof name, "fused bn-relu-pool %s [%lld,%lld,%lld,%lld] %lldx%lld%s", nb_dtype_name(dt),
             (long long)n, (long long)c, (long long)h, (long long)w, (long long)kh, (long long)kw, nan ? " NaN" : "");
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *st1, *st2;
    nb_tensor *y1 = nb_batch_norm_relu_max_pool2d(in[0], in[1], in[2], 1e-5, kh, kw, &st1);
    nb_tensor *y2 = nb_max_pool2d(nb_relu(nb_batch_norm_train(in[0], in[1], in[2], 1e-5, &st2)), kh, kw, NULL);
    CHECK(y1 && y2, "%s: %s", name, nb_error_message());
    if (!y1 || !y2) goto done;
    CHECK(nb_tensor_ndim(y1) == 4 && nb_tensor_dim(y1, 2) == h / kh && nb_tensor_dim(y1, 3) == w / kw, "%s: shape", name);
    int64_t bad = 0;
    for (int64_t i = 0; i < nb_tensor_numel(y2); i++) bad += !same_value(nb_tensor_get(y1, i), nb_tensor_get(y2, i));
    for (int64_t i = 0; i < 2 * c; i++) bad += !same_value(nb_tensor_get(st1, i), nb_tensor_get(st2, i));
    CHECK(bad == 0, "%s: %lld values or statistics differ from the composition's", name, (long long)bad);
    /* (not zero where y is: a pooled 0 is where relu's mask matters) */
    nb_tensor *seedg = nb_sin(nb_affine(nb_detach(y2), 5.0, 1.0));
    for (int mode = 0; mode < 2; mode++) { /* fast paths, then the graph rules */
        const int flags = mode ? NB_CREATE_GRAPH : NB_RETAIN_GRAPH;
        nb_tensor *g1[3] = {0}, *g2[3] = {0};
        CHECK(nb_grad(y1, seedg, 3, in, g1, flags) == NB_OK && nb_grad(y2, seedg, 3, in, g2, flags) == NB_OK,
              "%s: gradients: %s", name, nb_error_message());
        for (int k = 0; k < 3 && g1[k] && g2[k]; k++) {
            double scale = 0, worst = 0;
            int64_t nan_mismatch = 0;
            for (int64_t i = 0; i < nb_tensor_numel(in[k]); i++) {
                const double a = nb_tensor_get(g1[k], i), b = nb_tensor_get(g2[k], i);
                if ((a != a) != (b != b)) nan_mismatch++;
                if (a == a && b == b) {
                    scale = fmax(scale, fabs(b));
                    worst = fmax(worst, fabs(a - b));
                }
            }
            const double tol = dt == NB_F64 ? 1e-12 : 1e-5;
            CHECK(nan_mismatch == 0 && worst <= tol * fmax(scale, 1e-300),
                  "%s: %s gradient of input %d: differs by %g (scale %g), %lld NaN mismatches", name,
                  mode ? "graph" : "fast", k, worst, scale, (long long)nan_mismatch);
        }
    }
done:
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
    nb_error_clear();
}

/* The layer's fused tail against nb_batch_norm_forward + relu + max pooling: the same outputs over
 * three training steps, the same running statistics and batch count, then the same outputs in
 * evaluation mode; a BatchNorm1d refuses it. */
static void bnrp_layer(nb_dtype dt)
{
    nb_params *p1 = nb_params_new(), *p2 = nb_params_new();
    nb_batch_norm b1, b2, b1d;
    nb_norm_opts o = {.dtype = dt, .momentum = 0.3};
    CHECK(nb_batch_norm2d_init(&b1, p1, "bn", 3, &o) == NB_OK && nb_batch_norm2d_init(&b2, p2, "bn", 3, &o) == NB_OK &&
              nb_batch_norm1d_init(&b1d, p1, "bn1d", 3, &o) == NB_OK,
          "layers: %s", nb_error_message());
    nb_tensor_set(b1.weight, 1, -0.5); /* a negative scale */
    nb_tensor_set(b2.weight, 1, -0.5);
    nb_rng rng;
    nb_rng_seed(&rng, 970);
    nb_tape *t = nb_tape_new();
    int64_t bad = 0;
    for (int step = 0; step < 4; step++) {
        if (step == 3) {
            nb_params_set_training(p1, 0);
            nb_params_set_training(p2, 0);
        }
        nb_tape_begin(t);
        nb_tensor *x = nb_tensor_uniform(dt, NB_SHAPE(4, 3, 6, 7), -1 + step, 2 + step, &rng);
        nb_tensor *y1 = nb_batch_norm_relu_pool_forward(&b1, x, 2, 2);
        nb_tensor *y2 = nb_max_pool2d(nb_relu(nb_batch_norm_forward(&b2, x)), 2, 2, NULL);
        CHECK(y1 && y2 && nb_tensor_dim(y1, 2) == 3 && nb_tensor_dim(y1, 3) == 3, "layer step %d: %s", step,
              nb_error_message());
        for (int64_t i = 0; y1 && y2 && i < nb_tensor_numel(y2); i++)
            bad += !same_value(nb_tensor_get(y1, i), nb_tensor_get(y2, i));
        nb_tape_end(t);
        nb_tape_reset(t);
        nb_tensor_free(x);
    }
    for (int64_t i = 0; i < 3; i++)
        bad += !same_value(nb_tensor_get(b1.running_mean, i), nb_tensor_get(b2.running_mean, i)) +
               !same_value(nb_tensor_get(b1.running_var, i), nb_tensor_get(b2.running_var, i));
    CHECK(bad == 0, "%s: the fused layer differs from the composition in %lld values", nb_dtype_name(dt), (long long)bad);
    CHECK(nb_tensor_get(b1.num_batches_tracked, 0) == 3 && nb_tensor_get(b1.running_mean, 0) != 0,
          "three batches tracked (%g), running mean moved", nb_tensor_get(b1.num_batches_tracked, 0));
    nb_tape_begin(t);
    CHECK_ERROR(!nb_batch_norm_relu_pool_forward(&b1d, nb_ones(dt, NB_SHAPE(4, 3, 6)), 2, 2), NB_ERR_SHAPE,
                "nb_batch_norm_relu_pool_forward: input [4,3,6]: expected a BatchNorm2d layer and [N, C, H, W]");
    nb_tape_end(t);
    nb_tape_free(t);
    nb_params_free(p1);
    nb_params_free(p2);
}

/* A small CNN's forward and no-graph backward give the same bits on 1 and 2 threads (every output is
 * computed by one thread in a fixed order; weight gradients are summed in fixed chunks). Returns the
 * loss and fills g[4] with copies of the gradients (freed by the caller). */
static double cnn_pass(nb_dtype dt, int threads, nb_tensor **g)
{
    nb_set_num_threads(threads);
    nb_rng rng;
    nb_rng_seed(&rng, 21);
    nb_tensor *x = nb_tensor_uniform(dt, NB_SHAPE(24, 3, 20, 20), -1, 1, &rng);
    nb_tensor *w1 = nb_tensor_uniform(dt, NB_SHAPE(8, 3, 3, 3), -0.3, 0.3, &rng);
    nb_tensor *w2 = nb_tensor_uniform(dt, NB_SHAPE(16, 8, 3, 3), -0.2, 0.2, &rng);
    nb_tensor *gamma = nb_tensor_uniform(dt, NB_SHAPE(8), 0.5, 1.5, &rng);
    nb_tensor *in[4] = {x, w1, w2, gamma};
    for (int i = 0; i < 4; i++) nb_tensor_set_requires_grad(in[i], 1);
    nb_conv_opts o = nb_conv_defaults();
    o.padding[0] = o.padding[1] = 1;
    nb_pool_opts po = nb_pool_defaults();
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *h = nb_relu(nb_batch_norm_train(nb_conv2d(x, w1, NULL, &o), gamma, NULL, 1e-5, NULL));
    h = nb_max_pool2d(h, 2, 2, &po);
    h = nb_avg_pool2d(nb_conv2d(h, w2, NULL, &o), 2, 2, NULL);
    nb_tensor *loss = nb_sum_all(nb_mul(h, h));
    double value = loss ? nb_tensor_item(loss) : NAN;
    nb_tensor *gr[4] = {0};
    CHECK(loss && nb_grad(loss, NULL, 4, in, gr, 0) == NB_OK, "threads %d: %s", threads, nb_error_message());
    for (int i = 0; i < 4; i++) g[i] = gr[i] ? nb_tensor_clone(gr[i]) : NULL;
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < 4; i++) nb_tensor_free(in[i]);
    nb_set_num_threads(0);
    return value;
}

static void threads_same_bits(nb_dtype dt)
{
    nb_tensor *g1[4], *g2[4];
    double l1 = cnn_pass(dt, 1, g1), l2 = cnn_pass(dt, 2, g2);
    CHECK(l1 == l2, "%s: loss %.17g on 1 thread, %.17g on 2", nb_dtype_name(dt), l1, l2);
    for (int i = 0; i < 4; i++) {
        int same = g1[i] && g2[i] && nb_tensor_numel(g1[i]) == nb_tensor_numel(g2[i]) &&
                   !memcmp(nb_tensor_cdata(g1[i]), nb_tensor_cdata(g2[i]),
                           (size_t)nb_tensor_numel(g1[i]) * nb_dtype_size(dt));
        CHECK(same, "%s: gradient %d differs between 1 and 2 threads", nb_dtype_name(dt), i);
        nb_tensor_free(g1[i]);
        nb_tensor_free(g2[i]);
    }
}

/* ---- bad input --------------------------------------------------------------------------------- */

static void errors(void)
{
    nb_tensor *x = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3, 5, 5)), *x1 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3, 5));
    nb_tensor *w = nb_tensor_ones(NB_F64, NB_SHAPE(4, 3, 3, 3)), *w1 = nb_tensor_ones(NB_F64, NB_SHAPE(4, 3, 3));
    nb_tensor *w4 = nb_tensor_ones(NB_F64, NB_SHAPE(4, 4, 3, 3)), *wbig = nb_tensor_ones(NB_F64, NB_SHAPE(4, 3, 6, 3));
    nb_tensor *b3 = nb_tensor_ones(NB_F64, NB_SHAPE(3)), *b4 = nb_tensor_ones(NB_F64, NB_SHAPE(4));
    nb_tensor *xf = nb_tensor_ones(NB_F32, NB_SHAPE(2, 3, 5, 5)), *xi = nb_tensor_zeros(NB_I64, NB_SHAPE(2, 3, 5, 5));
    nb_tensor *st = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3)), *st4 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 4));
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_conv_opts o = nb_conv_defaults(), g2 = o, s0 = o, d0 = o, pn = o, same2 = o, op2 = o, zero = {0};
    g2.groups = 2;
    s0.stride[1] = 0;
    d0.dilation[0] = 0;
    pn.padding[0] = -1;
    same2.same_padding = 1;
    same2.stride[0] = 2;
    op2.stride[0] = op2.stride[1] = 2;
    op2.output_padding[0] = 2;

    /* channel counts that groups do not divide, and a weight of the wrong depth */
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &g2), NB_ERR_SHAPE, "nb_conv2d: input [2,3,5,5] has 3 channels, not divisible by groups 2");
    nb_tensor *x4 = nb_ones(NB_F64, NB_SHAPE(2, 4, 5, 5)), *w32 = nb_ones(NB_F64, NB_SHAPE(3, 2, 3, 3));
    CHECK_ERROR(!nb_conv2d(x4, w32, NULL, &g2), NB_ERR_SHAPE, "weight [3,2,3,3] has 3 output channels, not divisible by groups 2");
    CHECK_ERROR(!nb_conv2d(x, w4, NULL, NULL), NB_ERR_SHAPE,
                "nb_conv2d: input [2,3,5,5] and weight [4,4,3,3]: with groups 1 the weight's dimension 1 must be in channels / groups = 3");
    /* a kernel larger than the padded input */
    CHECK_ERROR(!nb_conv2d(x, wbig, NULL, NULL), NB_ERR_SHAPE,
                "nb_conv2d: input [2,3,5,5], weight [4,3,6,3]: the kernel spans 6 along spatial dim 0, more than the padded input's 5");
    nb_conv_opts dil = o;
    dil.dilation[1] = 3;
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &dil), NB_ERR_SHAPE, "the kernel spans 7 along spatial dim 1");
    /* strides, dilations, paddings, groups out of range; a zeroed struct */
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &s0), NB_ERR_ARG, "nb_conv2d: input [2,3,5,5]: stride (1, 0) must be at least 1");
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &zero), NB_ERR_ARG, "start from nb_conv_defaults()");
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &d0), NB_ERR_ARG, "dilation (0, 1) must be at least 1");
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &pn), NB_ERR_ARG, "padding (-1, 0) must not be negative");
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &same2), NB_ERR_ARG, "'same' padding needs stride 1, got stride (2, 1)");
    nb_conv_opts g0 = o;
    g0.groups = 0;
    CHECK_ERROR(!nb_conv2d(x, w, NULL, &g0), NB_ERR_ARG, "groups 0 must be at least 1");
    CHECK(nb_conv1d(x1, w1, NULL, &s0) != NULL, "1-D ops read index 0 only: %s", nb_error_message());
    nb_conv_opts s01 = o;
    s01.stride[0] = 0;
    CHECK_ERROR(!nb_conv1d(x1, w1, NULL, &s01), NB_ERR_ARG, "nb_conv1d: input [2,3,5]: stride 0 must be at least 1");
    /* wrong ranks */
    CHECK_ERROR(!nb_conv2d(x1, w, NULL, NULL), NB_ERR_SHAPE, "nb_conv2d: input [2,3,5]: expected 4 dimensions [N, C, H, W]");
    CHECK_ERROR(!nb_conv2d(x, w1, NULL, NULL), NB_ERR_SHAPE, "nb_conv2d: weight [4,3,3]: expected 4 dimensions");
    CHECK_ERROR(!nb_conv1d(x, w, NULL, NULL), NB_ERR_SHAPE, "nb_conv1d: input [2,3,5,5]: expected 3 dimensions [N, C, L]");
    CHECK_ERROR(!nb_conv2d(x, w, b3, NULL), NB_ERR_SHAPE, "bias [3], expected [4]");
    /* dtypes and NULL */
    CHECK_ERROR(!nb_conv2d(xf, w, NULL, NULL), NB_ERR_DTYPE, "nb_conv2d: input f32 [2,3,5,5] and weight f64 [4,3,3,3]: dtypes differ");
    CHECK_ERROR(!nb_conv2d(xi, w, NULL, NULL), NB_ERR_DTYPE, "nb_conv2d");
    CHECK_ERROR(!nb_conv2d(NULL, w, NULL, NULL), NB_ERR_ARG, "nb_conv2d: input is NULL");
    nb_error_clear();
    nb_conv2d(x, w, b3, NULL); /* the first error stays through a chain */
    CHECK(!nb_relu(nb_conv2d(nb_conv2d(x, w, b3, NULL), w, NULL, NULL)), "a NULL passed along");
    CHECK(strstr(nb_error_message(), "bias [3]") != NULL, "the first message is kept: %s", nb_error_message());
    nb_error_clear();
    /* transposed convolutions */
    CHECK_ERROR(!nb_conv_transpose2d(x, w4, NULL, NULL), NB_ERR_SHAPE,
                "nb_conv_transpose2d: input [2,3,5,5] and weight [4,4,3,3]: the weight's dimension 0 must be the 3 input channels");
    CHECK_ERROR(!nb_conv_transpose2d(x, nb_ones(NB_F64, NB_SHAPE(3, 2, 3, 3)), NULL, &op2), NB_ERR_ARG,
                "output_padding (2, 0) must be smaller than the stride (2, 2) or the dilation (1, 1)");
    CHECK_ERROR(!nb_conv_transpose2d(x, nb_ones(NB_F64, NB_SHAPE(3, 2, 3, 3)), NULL, &same2), NB_ERR_ARG,
                "'same' padding is for convolutions");
    nb_conv_opts bigpad = o;
    bigpad.padding[0] = 4;
    CHECK_ERROR(!nb_conv_transpose2d(x, nb_ones(NB_F64, NB_SHAPE(3, 2, 3, 3)), NULL, &bigpad), NB_ERR_SHAPE,
                "the output would have extent -1 along spatial dim 0");
    CHECK_ERROR(!nb_conv_transpose1d(x1, nb_ones(NB_F64, NB_SHAPE(3, 2, 3)), b3, NULL), NB_ERR_SHAPE,
                "nb_conv_transpose1d: input [2,3,5], weight [3,2,3]: bias [3], expected [2]");
    /* the weight gradient */
    CHECK_ERROR(!nb_conv2d_weight(x, nb_ones(NB_F64, NB_SHAPE(2, 4, 4, 3)), 3, 3, NULL), NB_ERR_SHAPE,
                "nb_conv2d_weight: grad_out [2,4,4,3] does not match the convolution's output [2,4,3,3] for input [2,3,5,5] and kernel (3, 3)");
    CHECK_ERROR(!nb_conv2d_weight(x, nb_ones(NB_F64, NB_SHAPE(3, 4, 3, 3)), 3, 3, NULL), NB_ERR_SHAPE, "batch sizes differ");
    CHECK_ERROR(!nb_conv2d_weight(x, nb_ones(NB_F64, NB_SHAPE(2, 4, 3, 3)), 0, 3, NULL), NB_ERR_SHAPE,
                "kernel (0, 3): kernel extents must be at least 1");

    /* pooling */
    nb_pool_opts po = nb_pool_defaults(), pbig = po, pneg = po, pdil = po, avgd = po;
    pbig.padding[0] = 2;
    pneg.stride[1] = -1;
    pdil.dilation[0] = 2; /* taps at -1 and 1 of a one-row input */
    pdil.padding[0] = 1;
    avgd.dilation[0] = 2;
    CHECK_ERROR(!nb_max_pool2d(x, 0, 2, NULL), NB_ERR_ARG, "nb_max_pool2d: input [2,3,5,5]: kernel (0, 2) must be at least 1");
    CHECK_ERROR(!nb_max_pool2d(x, 3, 3, &pbig), NB_ERR_ARG, "padding (2, 0) must be between 0 and half the kernel (3, 3)");
    CHECK_ERROR(!nb_max_pool2d(x, 2, 2, &pneg), NB_ERR_ARG, "stride (0, -1) must not be negative");
    CHECK_ERROR(!nb_max_pool2d(x, 6, 2, NULL), NB_ERR_SHAPE, "nb_max_pool2d: input [2,3,5,5]: kernel (6, 2)");
    CHECK_ERROR(!nb_avg_pool1d(x1, 2, &avgd), NB_ERR_ARG, "nb_avg_pool1d: input [2,3,5]: dilation 2: average pooling has none");
    CHECK_ERROR(!nb_max_pool1d(x, 2, NULL), NB_ERR_SHAPE, "nb_max_pool1d: input [2,3,5,5]: expected 3 dimensions [N, C, L]");
    nb_tensor *x12 = nb_ones(NB_F64, NB_SHAPE(1, 1, 1, 2));
    CHECK_ERROR(!nb_max_pool2d(x12, 2, 1, &pdil), NB_ERR_SHAPE, "window 0 along spatial dim 0 covers only padding");
    CHECK_ERROR(!nb_adaptive_avg_pool2d(x, 0, 2), NB_ERR_ARG, "nb_adaptive_avg_pool2d: input [2,3,5,5]: output size (0, 2)");
    CHECK_ERROR(!nb_avg_pool2d(xi, 2, 2, NULL), NB_ERR_DTYPE, "nb_avg_pool2d");
    CHECK_ERROR(!nb_max_pool2d(NULL, 2, 2, NULL), NB_ERR_ARG, "nb_max_pool2d: input is NULL");

    /* channel statistics and normalisation */
    CHECK_ERROR(!nb_channel_moments(b3), NB_ERR_SHAPE, "nb_channel_moments: input [3]: expected at least 2 dimensions");
    CHECK_ERROR(!nb_channel_norm(x, st4, NULL, NULL, 1e-5), NB_ERR_SHAPE, "nb_channel_norm: input [2,3,5,5]: stats [2,4], expected [2, 3]");
    CHECK_ERROR(!nb_channel_norm(x, st, b4, NULL, 1e-5), NB_ERR_SHAPE, "weight [4], expected [3]");
    CHECK_ERROR(!nb_channel_norm(x, st, NULL, b4, 1e-5), NB_ERR_SHAPE, "bias [4], expected [3]");
    CHECK_ERROR(!nb_channel_norm(xf, st, NULL, NULL, 1e-5), NB_ERR_DTYPE, "input f32 [2,3,5,5] and stats f64 [2,3]");
    CHECK_ERROR(!nb_channel_norm(x, st, NULL, NULL, -1.0), NB_ERR_ARG, "eps -1 must be finite and not negative");
    CHECK_ERROR(!nb_channel_norm(x, NULL, NULL, NULL, 1e-5), NB_ERR_ARG, "nb_channel_norm: stats is NULL");
    nb_tensor *stn = NULL;
    CHECK_ERROR(!nb_batch_norm_train(x, b4, NULL, 1e-5, &stn), NB_ERR_SHAPE,
                "nb_batch_norm_train: input [2,3,5,5]: weight [4], expected [3]");
    CHECK(stn == NULL, "no statistics from a failed call");
    CHECK_ERROR(!nb_batch_norm_train(b3, NULL, NULL, 1e-5, NULL), NB_ERR_SHAPE, "nb_batch_norm_train: input [3]");
    CHECK_ERROR(!nb_batch_norm_train(xf, NULL, b3, 1e-5, NULL), NB_ERR_DTYPE, "input f32 [2,3,5,5] and bias f64 [3]");
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(x1, NULL, NULL, 1e-5, 2, 2, NULL), NB_ERR_SHAPE,
                "nb_batch_norm_relu_max_pool2d: input [2,3,5]: expected 4 dimensions [N, C, H, W]");
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(x, NULL, NULL, 1e-5, 6, 2, &stn), NB_ERR_SHAPE,
                "nb_batch_norm_relu_max_pool2d: input [2,3,5,5]: kernel (6, 2) does not fit in [H, W]");
    CHECK(stn == NULL, "no statistics from a failed call");
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(x, NULL, NULL, 1e-5, 2, 0, NULL), NB_ERR_ARG,
                "kernel (2, 0) must be at least 1");
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(x, b4, NULL, 1e-5, 2, 2, NULL), NB_ERR_SHAPE, "weight [4], expected [3]");
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(xf, NULL, b3, 1e-5, 2, 2, NULL), NB_ERR_DTYPE,
                "input f32 [2,3,5,5] and bias f64 [3]");
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(x, NULL, NULL, NAN, 2, 2, NULL), NB_ERR_ARG, "eps nan must be finite");
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(xi, NULL, NULL, 1e-5, 2, 2, NULL), NB_ERR_DTYPE, "nb_batch_norm_relu_max_pool2d");
    /* NULL in: NULL out, the first message kept */
    CHECK_ERROR(!nb_batch_norm_relu_max_pool2d(nb_batch_norm_relu_max_pool2d(x, NULL, NULL, 1e-5, 9, 9, NULL), NULL,
                                               NULL, 1e-5, 2, 2, NULL),
                NB_ERR_SHAPE, "kernel (9, 9)");

    CHECK_NO_ERROR();
    nb_tape_end(t);
    nb_tape_free(t);
    nb_tensor *all[] = {x, x1, w, w1, w4, wbig, b3, b4, xf, xi, st, st4};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) nb_tensor_free(all[i]);
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
    for (int r = 0; r < N_POOLS; r++) {
        const pool_config *p = &pools[r];
        check_pool(p, NB_F64, 500u + (uint64_t)r);
        check_pool(p, NB_F32, 500u + (uint64_t)r);
        int64_t xs[4] = {p->n, p->c, p->sp[0], p->sp[1]};
        input_spec in[1] = {spec(p->dims + 2, xs, 0)};
        char name[160];
        snprintf(name, sizeof name, "pool %s", p->name);
        grid_rows++;
        grid_passed += gradtable_check(name, f_pool, p, 1, in, LINEAR, NULL, 600u + (uint64_t)r);
        if (p->kind != MAXP) { /* the adjoint, on its own */
            nb_tensor *x = nb_tensor_zeros(NB_F64, p->dims + 2, xs);
            nb_tape *t = nb_tape_new();
            nb_tape_begin(t);
            nb_tensor *y = f_pool((void *)p, &x);
            input_spec ain[2] = {in[0], y ? spec(nb_tensor_ndim(y), nb_tensor_shape(y), 0) : in[0]};
            nb_tape_end(t);
            nb_tape_free(t);
            nb_tensor_free(x);
            snprintf(name, sizeof name, "pool adjoint %s", p->name);
            grid_rows++;
            grid_passed += gradtable_check(name, f_avg_adjoint, p, 2, ain, LINEAR, NULL, 650u + (uint64_t)r);
        }
        for (int d = 0; d < 2; d++) {
            nb_dtype dt = d ? NB_F32 : NB_F64;
            nb_rng rng;
            nb_rng_seed(&rng, 700u + (uint64_t)r);
            nb_tensor *x = nb_tensor_uniform(dt, p->dims + 2, xs, -1, 1, &rng);
            nb_tensor_set_requires_grad(x, 1);
            fn_arg a = {.pc = p};
            snprintf(name, sizeof name, "fast pool %s", p->name);
            compare_paths(name, l_pool, &a, 1, &x);
            nb_tensor_free(x);
        }
    }
    for (int r = 0; r < N_NORM; r++) {
        grid_rows++;
        grid_passed += gradtable_check(norm_rows[r].name, norm_rows[r].f, NULL, norm_rows[r].n_in, norm_rows[r].in,
                                       norm_rows[r].order, NULL, 800u + (uint64_t)r);
    }
    gradtable_require(gradtable_cnn_ops, GRADTABLE_N_CNN); /* test_grad_primitives counts on it */
    check_norm(NB_F64);
    check_norm(NB_F32);
    pool_nan();
    for (int d = 0; d < 2; d++) {
        nb_dtype dt = d ? NB_F32 : NB_F64;
        nb_rng rng;
        nb_rng_seed(&rng, 900);
        nb_tensor *in[3] = {nb_tensor_uniform(dt, NB_SHAPE(5, 3, 4, 6), -1, 1, &rng),
                            nb_tensor_uniform(dt, NB_SHAPE(3), 0.5, 1.5, &rng), nb_tensor_uniform(dt, NB_SHAPE(3), -1, 1, &rng)};
        for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
        compare_paths("fast batch norm", l_batch_norm, NULL, 3, in);
        compare_paths("fast batch_norm_train", l_bn_train, NULL, 3, in);
        /* the fused op against the composition: values, statistics and gradients */
        nb_tape *t = nb_tape_new();
        nb_tape_begin(t);
        nb_tensor *st, *y1 = nb_batch_norm_train(in[0], in[1], in[2], 1e-5, &st);
        nb_tensor *y2 = nb_channel_norm(in[0], nb_channel_moments(in[0]), in[1], in[2], 1e-5);
        nb_tensor *g1[3], *g2[3];
        nb_tensor *seed = nb_sin(nb_mul_scalar(y2, 5.0));
        CHECK(y1 && y2 && st && nb_grad(y1, seed, 3, in, g1, 0) == NB_OK && nb_grad(y2, seed, 3, in, g2, 0) == NB_OK,
              "fused batch norm: %s", nb_error_message());
        if (y1 && y2 && st) {
            double tol = dt == NB_F64 ? 1e-12 : 1e-5, e = 0;
            nb_tensor *mo = nb_channel_moments(in[0]);
            for (int64_t i = 0; i < nb_tensor_numel(y1); i++) e = fmax(e, fabs(nb_tensor_get(y1, i) - nb_tensor_get(y2, i)));
            for (int64_t i = 0; i < 6; i++) e = fmax(e, fabs(nb_tensor_get(st, i) - nb_tensor_get(mo, i)));
            for (int k = 0; k < 3; k++)
                for (int64_t i = 0; i < nb_tensor_numel(in[k]); i++)
                    e = fmax(e, fabs(nb_tensor_get(g1[k], i) - nb_tensor_get(g2[k], i)));
            CHECK(e <= tol * 10, "fused batch norm %s differs from the composition by %g", nb_dtype_name(dt), e);
            CHECK(!nb_tensor_requires_grad(st), "the statistics are a constant");
        }
        nb_tape_end(t);
        nb_tape_free(t);
        nb_tensor_set_requires_grad(in[1], 0);
        compare_paths("fast batch norm, weight constant", l_batch_norm, NULL, 3, in);
        compare_paths("fast batch_norm_train, weight constant", l_bn_train, NULL, 3, in);
        for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
    }
    for (int d = 0; d < 2; d++) {
        nb_dtype dt = d ? NB_F32 : NB_F64;
        bnrp_vs_composition(dt, 5, 3, 8, 10, 2, 2, 0, 950);
        bnrp_vs_composition(dt, 4, 3, 7, 9, 2, 2, 0, 951);   /* a last row and column in no window */
        bnrp_vs_composition(dt, 3, 2, 9, 8, 3, 2, 0, 952);   /* the general loop */
        bnrp_vs_composition(dt, 16, 4, 28, 28, 2, 2, 0, 953); /* as the example's first block */
        bnrp_vs_composition(dt, 3, 3, 6, 6, 2, 2, 1, 954);   /* a NaN */
        bnrp_vs_composition(dt, 3, 3, 6, 6, 3, 3, 1, 955);
        nb_rng rng;
        nb_rng_seed(&rng, 960);
        nb_tensor *in[3] = {nb_tensor_uniform(dt, NB_SHAPE(4, 3, 6, 8), -1, 1, &rng),
                            nb_tensor_uniform(dt, NB_SHAPE(3), 0.5, 1.5, &rng), nb_tensor_uniform(dt, NB_SHAPE(3), -1, 1, &rng)};
        for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
        compare_paths("fast bn-relu-pool", l_bnrp, NULL, 3, in);
        compare_paths("fast bn-relu-pool 3x2", l_bnrp_3x2, NULL, 3, in);
        nb_tensor_set_requires_grad(in[1], 0);
        compare_paths("fast bn-relu-pool, weight constant", l_bnrp, NULL, 3, in);
        for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
    }
    bnrp_layer(NB_F64);
    bnrp_layer(NB_F32);
    errors();
    threads_same_bits(NB_F32);
    threads_same_bits(NB_F64);
    printf("gradcheck grid: %d of %d rows passed\n", grid_passed, grid_rows);
    return nbt_report("conv");
}
