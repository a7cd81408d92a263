/* Initialisers and the embedding's padding row:
 *   - NB_INIT_ORTHOGONAL: W W^T = gain^2 I (or W^T W) to 1e-12 for wide, tall, square and 3-D
 *     weights; W is the Q of the QR of the documented normal draws (R = Q^T A upper triangular with a
 *     positive diagonal: the unique factorisation torch's sign correction gives); seeds are
 *     deterministic; layers take it as weight_init.
 *   - NB_INIT_TRUNC_NORMAL: every value in [lo, hi]; sample mean and variance within 4.5 standard
 *     errors of the truncated normal's, and a Kolmogorov-Smirnov distance below the 0.1% critical
 *     value, for a fixed seed (a wrong sampler fails: see the shifted-CDF check), also for intervals
 *     in either tail; torch's defaults; float32 bounds; seeds.
 *   - Embedding padding_idx: the row starts at zero, lookups return its values, its gradient is exactly
 *     zero while the other rows' are unchanged (also with NB_CREATE_GRAPH, in f32, with a negative
 *     index), and bad indices are refused. PyTorch values are in nn_f64.txt (test_nn_fixtures). */
#include "nntest.h"

/* ---------------------------------------------------------------------------------------------- */
/* Orthogonal                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

/* The [rows, cols] view of t (rows = dim 0) at (r, c). */
static double at(const nb_tensor *t, int64_t cols, int64_t r, int64_t c) { return nb_tensor_get(t, r * cols + c); }

static void check_orthogonal(int ndim, const int64_t *shape, double gain_arg, uint64_t seed)
{
    char s[96];
    nb_tensor *w = nb_tensor_zeros(NB_F64, ndim, shape);
    nb_shape_str(w, s, sizeof s);
    double gain = gain_arg != 0 ? gain_arg : 1.0;
    nb_rng rng, draws;
    nb_rng_seed(&rng, seed);
    draws = rng;
    CHECK(nb_init_tensor(w, (nb_init){.kind = NB_INIT_ORTHOGONAL, .a = gain_arg}, 1, 1, &rng) == NB_OK,
          "orthogonal %s: %s", s, nb_error_message());
    int64_t rows = shape[0], cols = nb_tensor_numel(w) / rows;
    int wide = rows < cols;
    /* W W^T (wide) or W^T W (tall) = gain^2 I */
    int64_t n = wide ? rows : cols, m = wide ? cols : rows;
    double worst = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double dot = 0;
            for (int64_t k = 0; k < m; k++)
                dot += wide ? at(w, cols, i, k) * at(w, cols, j, k) : at(w, cols, k, i) * at(w, cols, k, j);
            worst = fmax(worst, fabs(dot / (gain * gain) - (i == j)));
        }
    CHECK(worst < 1e-12, "orthogonal %s gain %g: %s = gain^2 I to %g", s, gain, wide ? "W W^T" : "W^T W", worst);

    /* A: the [rows, cols] draws, transposed when wide, [m, n]; Q = W / gain in the same orientation;
     * R = Q^T A must be upper triangular with a positive diagonal (QR is then unique) */
    double *a = calloc((size_t)(m * n), sizeof *a);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double z = nb_rng_normal(&draws);
            if (wide)
                a[c * n + r] = z;
            else
                a[r * n + c] = z;
        }
    double lower = 0, min_diag = INFINITY, scale = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double rij = 0;
            for (int64_t k = 0; k < m; k++) {
                double q = (wide ? at(w, cols, i, k) : at(w, cols, k, i)) / gain;
                rij += q * a[k * n + j];
            }
            scale = fmax(scale, fabs(rij));
            if (i > j) lower = fmax(lower, fabs(rij));
            if (i == j) min_diag = fmin(min_diag, rij);
        }
    free(a);
    CHECK(lower < 1e-12 * fmax(scale, 1) && min_diag > 0,
          "orthogonal %s: W is the Q of the QR of its draws (R's lower part %g, smallest diagonal %g)", s, lower, min_diag);
    CHECK(memcmp(&rng, &draws, sizeof rng) == 0, "orthogonal %s drew rows * cols normals", s);

    /* the same seed gives the same weights, another seed others */
    nb_tensor *w2 = nb_tensor_zeros(NB_F64, ndim, shape), *w3 = nb_tensor_zeros(NB_F64, ndim, shape);
    nb_rng_seed(&rng, seed);
    nb_init_tensor(w2, (nb_init){.kind = NB_INIT_ORTHOGONAL, .a = gain_arg}, 1, 1, &rng);
    nb_rng_seed(&rng, seed + 1);
    nb_init_tensor(w3, (nb_init){.kind = NB_INIT_ORTHOGONAL, .a = gain_arg}, 1, 1, &rng);
    CHECK(nnt_max_diff(w, w2) == 0.0 && nnt_max_diff(w, w3) > 1e-3, "orthogonal %s: deterministic per seed", s);
    nb_tensor_free(w);
    nb_tensor_free(w2);
    nb_tensor_free(w3);
}

static void test_orthogonal(void)
{
    check_orthogonal(NB_SHAPE(6, 6), 0, 1);
    check_orthogonal(NB_SHAPE(3, 8), 0, 2);
    check_orthogonal(NB_SHAPE(9, 4), 2.5, 3);
    check_orthogonal(NB_SHAPE(4, 2, 3), 0, 4); /* rows 4, cols 6, as torch flattens */
    check_orthogonal(NB_SHAPE(1, 5), 0, 5);
    check_orthogonal(NB_SHAPE(5, 1), 0, 6);
    check_orthogonal(NB_SHAPE(64, 48), 0, 7);

    nb_rng rng;
    nb_rng_seed(&rng, 8);
    /* float32: orthonormal to float precision */
    nb_tensor *w32 = nb_tensor_zeros(NB_F32, NB_SHAPE(10, 16));
    CHECK(nb_init_tensor(w32, (nb_init){.kind = NB_INIT_ORTHOGONAL}, 1, 1, &rng) == NB_OK, "%s", nb_error_message());
    double worst = 0;
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 10; j++) {
            double dot = 0;
            for (int k = 0; k < 16; k++) dot += nb_tensor_get(w32, i * 16 + k) * nb_tensor_get(w32, j * 16 + k);
            worst = fmax(worst, fabs(dot - (i == j)));
        }
    CHECK(worst < 1e-6, "orthogonal f32: W W^T = I to %g", worst);
    nb_tensor_free(w32);

    /* empty tensors are left alone; 1-D and a NULL rng are refused */
    nb_tensor *e = nb_tensor_zeros(NB_F64, NB_SHAPE(3, 0)), *e0 = nb_tensor_zeros(NB_F64, NB_SHAPE(0, 3));
    CHECK(nb_init_tensor(e, (nb_init){.kind = NB_INIT_ORTHOGONAL}, 1, 1, &rng) == NB_OK &&
              nb_init_tensor(e0, (nb_init){.kind = NB_INIT_ORTHOGONAL}, 1, 1, &rng) == NB_OK,
          "orthogonal of [3,0] and [0,3]: nothing to do (%s)", nb_error_message());
    nb_tensor *v = nb_tensor_zeros(NB_F64, NB_SHAPE(4));
    CHECK_ERROR(nb_init_tensor(v, (nb_init){.kind = NB_INIT_ORTHOGONAL}, 1, 1, &rng) != NB_OK, NB_ERR_SHAPE,
                "orthogonal init needs a tensor of 2 or more dims, got [4]");
    CHECK_ERROR(nb_init_tensor(e, (nb_init){.kind = NB_INIT_ORTHOGONAL}, 1, 1, NULL) != NB_OK, NB_ERR_ARG, "rng is NULL");
    /* random kinds refuse an i64 tensor (the draws were truncated into 0 and +-1) and a non-finite a
     * (a NaN gain or bound filled the tensor with NaN); zeros and constants still fill i64 */
    nb_tensor *iw = nb_tensor_full(NB_I64, NB_SHAPE(3, 3), 7), *fw = nb_tensor_full(NB_F32, NB_SHAPE(3, 3), 7);
    const nb_init_kind random_kinds[] = {NB_INIT_UNIFORM, NB_INIT_NORMAL, NB_INIT_XAVIER_UNIFORM, NB_INIT_XAVIER_NORMAL,
                                         NB_INIT_KAIMING_UNIFORM, NB_INIT_KAIMING_NORMAL, NB_INIT_ORTHOGONAL,
                                         NB_INIT_TRUNC_NORMAL};
    for (int k = 0; k < 8; k++) {
        CHECK_ERROR(nb_init_tensor(iw, (nb_init){.kind = random_kinds[k], .a = 1}, 3, 3, &rng) != NB_OK, NB_ERR_DTYPE,
                    "needs an f32 or f64 tensor, got i64 [3,3]");
        CHECK_ERROR(nb_init_tensor(fw, (nb_init){.kind = random_kinds[k], .a = NAN}, 3, 3, &rng) != NB_OK, NB_ERR_ARG,
                    "must be finite");
        CHECK_ERROR(nb_init_tensor(fw, (nb_init){.kind = random_kinds[k], .a = -INFINITY}, 3, 3, &rng) != NB_OK,
                    NB_ERR_ARG, "must be finite");
    }
    int untouched = 1;
    for (int i = 0; i < 9; i++) untouched &= nb_tensor_get(iw, i) == 7 && nb_tensor_get(fw, i) == 7;
    CHECK(untouched, "a refused initialiser changed the tensor");
    CHECK(nb_init_tensor(iw, (nb_init){.kind = NB_INIT_CONSTANT, .a = -3}, 3, 3, NULL) == NB_OK &&
              nb_tensor_get(iw, 4) == -3 && nb_init_tensor(iw, (nb_init){.kind = NB_INIT_ZEROS}, 3, 3, NULL) == NB_OK &&
              nb_tensor_get(iw, 8) == 0,
          "zeros and constants fill an i64 tensor: %s", nb_error_message());
    nb_tensor_free(iw);
    nb_tensor_free(fw);
    nb_tensor_free(e);
    nb_tensor_free(e0);
    nb_tensor_free(v);

    /* as a layer's weight_init: a Linear [out 3, in 7] has orthonormal rows, an LSTM's weight_hh
     * [4H, H] orthonormal columns */
    nb_params *p = nb_params_new();
    nb_layer_opts o = {.dtype = NB_F64, .weight_init = {.kind = NB_INIT_ORTHOGONAL, .a = 0.5}};
    nb_linear lin;
    nb_rnn_cell cell;
    CHECK(nb_linear_init(&lin, p, "lin", 7, 3, &o, &rng) == NB_OK && nb_rnn_cell_init(&cell, p, "cell", NB_LSTM, 3, 4, &o, &rng) == NB_OK,
          "layers with orthogonal weights: %s", nb_error_message());
    double wl = 0, wc = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            double dot = 0;
            for (int k = 0; k < 7; k++) dot += nb_tensor_get(lin.weight, i * 7 + k) * nb_tensor_get(lin.weight, j * 7 + k);
            wl = fmax(wl, fabs(dot - 0.25 * (i == j)));
        }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            double dot = 0;
            for (int k = 0; k < 16; k++) dot += nb_tensor_get(cell.w_hh, k * 4 + i) * nb_tensor_get(cell.w_hh, k * 4 + j);
            wc = fmax(wc, fabs(dot - 0.25 * (i == j)));
        }
    CHECK(wl < 1e-12 && wc < 1e-12, "orthogonal weight_init with gain 0.5: linear %g, lstm w_hh %g", wl, wc);
    nb_params_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* Truncated normal                                                                                */
/* ---------------------------------------------------------------------------------------------- */

static double npdf(double x) { return exp(-0.5 * x * x) / sqrt(2 * 3.14159265358979323846); }
static double ncdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Kolmogorov-Smirnov distance of sorted v[0..n) from the CDF of N(mean, std^2) cut to [lo, hi]
 * (shift: evaluate the CDF at x + shift, to show that the test notices a small error) */
static double ks_distance(const double *v, int64_t n, double mean, double std, double lo, double hi, double shift)
{
    double a = (lo - mean) / std, b = (hi - mean) / std;
    int upper = a > 0; /* both bounds above the mean: upper tails keep the precision */
    double z = upper ? ncdf(-a) - ncdf(-b) : ncdf(b) - ncdf(a), d = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = (v[i] + shift - mean) / std;
        double f = upper ? (ncdf(-a) - ncdf(-x)) / z : (ncdf(x) - ncdf(a)) / z;
        d = fmax(d, fmax(fabs(f - (double)i / (double)n), fabs((double)(i + 1) / (double)n - f)));
    }
    return d;
}

static void check_trunc(double mean, double std_arg, double lo_arg, double hi_arg, uint64_t seed)
{
    enum { N = 100000 };
    double std = std_arg != 0 ? std_arg : 1.0, lo = lo_arg, hi = hi_arg;
    if (lo == 0 && hi == 0) lo = -2, hi = 2;
    nb_init init = {.kind = NB_INIT_TRUNC_NORMAL, .a = std_arg, .mean = mean, .lo = lo_arg, .hi = hi_arg};
    nb_tensor *t = nb_tensor_zeros(NB_F64, NB_SHAPE(N));
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    CHECK(nb_init_tensor(t, init, 1, 1, &rng) == NB_OK, "trunc normal: %s", nb_error_message());
    double *v = malloc(N * sizeof *v);
    memcpy(v, nb_tensor_cdata(t), N * sizeof *v);
    double vmin = INFINITY, vmax = -INFINITY, sum = 0;
    for (int i = 0; i < N; i++) {
        vmin = fmin(vmin, v[i]);
        vmax = fmax(vmax, v[i]);
        sum += v[i];
    }
    double m = sum / N, m2 = 0, m4 = 0;
    for (int i = 0; i < N; i++) {
        double d = v[i] - m;
        m2 += d * d;
        m4 += d * d * d * d;
    }
    m2 /= N;
    m4 /= N;
    /* the truncated normal's moments */
    double a = (lo - mean) / std, b = (hi - mean) / std;
    double z = a > 0 ? ncdf(-a) - ncdf(-b) : ncdf(b) - ncdf(a);
    double r = (npdf(a) - npdf(b)) / z;
    double want_mean = mean + std * r, want_var = std * std * (1 + (a * npdf(a) - b * npdf(b)) / z - r * r);
    double se_mean = sqrt(want_var / N), se_var = sqrt((m4 - m2 * m2) / N);
    CHECK(vmin >= lo && vmax <= hi, "trunc normal N(%g, %g^2) on [%g, %g]: values in [%.17g, %.17g]", mean, std, lo, hi,
          vmin, vmax);
    /* the sample reaches close to both bounds (nothing cut short): within 1% of the interval, where
     * the density is at least 1/10 of its peak in the interval */
    if (fabs(a - b) < 4)
        CHECK(vmin - lo < 0.01 * (hi - lo) && hi - vmax < 0.01 * (hi - lo), "trunc normal [%g, %g]: range reached "
              "[%g, %g]", lo, hi, vmin, vmax);
    CHECK(fabs(m - want_mean) < 4.5 * se_mean, "trunc normal N(%g, %g^2) on [%g, %g]: mean %.6f, expected %.6f (se %.2g)",
          mean, std, lo, hi, m, want_mean, se_mean);
    CHECK(fabs(m2 - want_var) < 4.5 * se_var, "trunc normal N(%g, %g^2) on [%g, %g]: variance %.6f, expected %.6f (se %.2g)",
          mean, std, lo, hi, m2, want_var, se_var);
    qsort(v, N, sizeof *v, cmp_double);
    /* 1.95 / sqrt(N): the KS critical value at the 0.1% level */
    double ks = ks_distance(v, N, mean, std, lo, hi, 0), crit = 1.95 / sqrt((double)N);
    CHECK(ks < crit, "trunc normal N(%g, %g^2) on [%g, %g]: KS distance %.4g >= %.4g", mean, std, lo, hi, ks, crit);
    /* the test has teeth: the same sample against the CDF shifted by 2% of a standard deviation fails */
    double ks_shift = ks_distance(v, N, mean, std, lo, hi, 0.02 * std);
    CHECK(ks_shift > crit, "trunc normal: the KS test notices a 0.02 std shift (%.4g vs %.4g)", ks_shift, crit);
    free(v);

    /* deterministic for a seed */
    nb_tensor *t2 = nb_tensor_zeros(NB_F64, NB_SHAPE(64)), *t3 = nb_tensor_zeros(NB_F64, NB_SHAPE(64));
    nb_rng_seed(&rng, seed);
    nb_init_tensor(t2, init, 1, 1, &rng);
    nb_rng_seed(&rng, seed);
    nb_init_tensor(t3, init, 1, 1, &rng);
    int same = 1;
    for (int i = 0; i < 64; i++) same &= nb_tensor_get(t2, i) == nb_tensor_get(t, i) && nb_tensor_get(t3, i) == nb_tensor_get(t, i);
    CHECK(same, "trunc normal: the same seed gives the same values");
    nb_tensor_free(t);
    nb_tensor_free(t2);
    nb_tensor_free(t3);
}

static void test_trunc_normal(void)
{
    check_trunc(0.5, 2.0, -1.0, 3.0, 11);   /* an interval around the mean */
    check_trunc(0.0, 0.0, 0.0, 0.0, 12);    /* torch's defaults: N(0, 1) on [-2, 2] */
    check_trunc(0.0, 0.02, -0.04, 0.04, 13); /* the ViT-style call trunc_normal_(w, std=.02, a=-2std, b=2std) */
    check_trunc(0.0, 1.0, 3.0, 5.0, 14);    /* the upper tail */
    check_trunc(1.0, 0.5, -2.0, -1.5, 15);  /* the lower tail, 4 to 5 std below */
    check_trunc(0.0, 1.0, -1.0, 30.0, 16);  /* one bound far out */

    nb_rng rng;
    nb_rng_seed(&rng, 17);
    /* an interval with no mass in double precision: its nearer bound */
    nb_tensor *t = nb_tensor_zeros(NB_F64, NB_SHAPE(8));
    CHECK(nb_init_tensor(t, (nb_init){.kind = NB_INIT_TRUNC_NORMAL, .a = 1, .lo = 40, .hi = 41}, 1, 1, &rng) == NB_OK &&
              nb_tensor_get(t, 0) == 40 && nb_tensor_get(t, 7) == 40,
          "trunc normal on [40, 41] std 1: the nearer bound (%g)", nb_tensor_get(t, 0));
    /* float32: inside the bounds rounded to float32 */
    nb_tensor *t32 = nb_tensor_zeros(NB_F32, NB_SHAPE(20000));
    CHECK(nb_init_tensor(t32, (nb_init){.kind = NB_INIT_TRUNC_NORMAL, .a = 1, .lo = -0.1, .hi = 0.1}, 1, 1, &rng) == NB_OK,
          "%s", nb_error_message());
    const float *f = nb_tensor_cdata(t32);
    int inside = 1;
    for (int i = 0; i < 20000; i++) inside &= f[i] >= (float)-0.1 && f[i] <= (float)0.1;
    CHECK(inside, "trunc normal f32: every value within [(float)-0.1, (float)0.1]");
    /* bad arguments */
    CHECK_ERROR(nb_init_tensor(t, (nb_init){.kind = NB_INIT_TRUNC_NORMAL, .a = -1}, 1, 1, &rng) != NB_OK, NB_ERR_ARG,
                "truncated normal needs std > 0 and lo < hi");
    CHECK_ERROR(nb_init_tensor(t, (nb_init){.kind = NB_INIT_TRUNC_NORMAL, .lo = 1, .hi = 1}, 1, 1, &rng) != NB_OK, NB_ERR_ARG,
                "[1, 1]");
    CHECK_ERROR(nb_init_tensor(t, (nb_init){.kind = NB_INIT_TRUNC_NORMAL, .lo = 2, .hi = -2}, 1, 1, &rng) != NB_OK, NB_ERR_ARG,
                "lo < hi");
    CHECK_ERROR(nb_init_tensor(t, (nb_init){.kind = NB_INIT_TRUNC_NORMAL, .lo = NAN, .hi = 1}, 1, 1, &rng) != NB_OK, NB_ERR_ARG,
                "truncated normal");
    CHECK_ERROR(nb_init_tensor(t, (nb_init){.kind = NB_INIT_TRUNC_NORMAL}, 1, 1, NULL) != NB_OK, NB_ERR_ARG, "rng is NULL");
    /* a layer's weight_init: trunc_normal_(std = 0.02) within [-2, 2] is unrestricted in practice */
    nb_params *p = nb_params_new();
    nb_linear lin;
    nb_layer_opts o = {.dtype = NB_F64, .weight_init = {.kind = NB_INIT_TRUNC_NORMAL, .a = 0.02, .lo = -0.03, .hi = 0.03}};
    CHECK(nb_linear_init(&lin, p, "lin", 50, 40, &o, &rng) == NB_OK, "%s", nb_error_message());
    double mx = 0;
    for (int64_t i = 0; i < 2000; i++) mx = fmax(mx, fabs(nb_tensor_get(lin.weight, i)));
    CHECK(mx <= 0.03 && mx > 0.029, "linear weight_init trunc normal: max |w| %g within 0.03 and reaching it", mx);
    nb_params_free(p);
    nb_tensor_free(t);
    nb_tensor_free(t32);
}

/* ---------------------------------------------------------------------------------------------- */
/* Embedding padding_idx                                                                           */
/* ---------------------------------------------------------------------------------------------- */

static void check_padding(nb_dtype dt, int64_t pad_arg, unsigned flags)
{
    enum { NUM = 6, DIM = 3, NI = 7 };
    const int64_t pad = pad_arg < 0 ? pad_arg + NUM : pad_arg;
    const int64_t idx_v[NI] = {1, pad, 4, pad, 1, 5, 0};
    nb_rng rng;
    nb_rng_seed(&rng, 90);
    nb_params *p = nb_params_new();
    nb_embedding e, plain;
    nb_layer_opts o = {.dtype = dt, .use_padding_idx = 1, .padding_idx = pad_arg}, o_plain = {.dtype = dt};
    CHECK(nb_embedding_init(&e, p, "emb", NUM, DIM, &o, &rng) == NB_OK && nb_embedding_init(&plain, p, "plain", NUM, DIM, &o_plain, &rng) == NB_OK,
          "embedding with padding_idx %lld: %s", (long long)pad_arg, nb_error_message());
    CHECK(e.has_padding && e.padding_idx == pad, "padding_idx %lld is row %lld", (long long)pad_arg, (long long)pad);
    double row = 0, others = 0;
    for (int64_t j = 0; j < NUM * DIM; j++) {
        if (j / DIM == pad) row = fmax(row, fabs(nb_tensor_get(e.weight, j)));
        else others = fmax(others, fabs(nb_tensor_get(e.weight, j)));
    }
    CHECK(row == 0.0 && others > 0.1, "the padding row starts at zero (%g), the others are N(0, 1) (%g)", row, others);
    /* give both tables the same non-zero values, the padding row too */
    for (int64_t j = 0; j < NUM * DIM; j++) {
        double v = 0.25 * (double)(j % 7) - 0.5;
        nb_tensor_set(e.weight, j, v);
        nb_tensor_set(plain.weight, j, v);
    }
    nb_tensor *idx = nb_tensor_from_data(NB_I64, NB_SHAPE(NI), idx_v);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y = nb_embedding_forward(&e, idx), *y_plain = nb_embedding_forward(&plain, idx);
    CHECK(y && nnt_max_diff(y, y_plain) == 0.0, "padding: lookups return the rows' values, the padding row's too");
    nb_tensor *seed = nb_tensor_uniform(dt, NB_SHAPE(NI, DIM), -1, 1, &rng);
    nb_tensor *wts[2] = {e.weight, plain.weight}, *g[2] = {0};
    /* sum(y * seed) + sum(y^2) / 2 for both: the gradient depends on the weights (second order) */
    nb_tensor *loss = nb_add(nb_sum_all(nb_mul(y, nb_add(seed, nb_mul_scalar(y, 0.5)))),
                             nb_sum_all(nb_mul(y_plain, nb_add(seed, nb_mul_scalar(y_plain, 0.5)))));
    CHECK(loss && nb_grad(loss, NULL, 2, wts, g, flags) == NB_OK, "padding backward: %s", nb_error_message());
    if (g[0] && g[1]) {
        double pad_g = 0, d_other = 0, plain_pad = 0;
        for (int64_t j = 0; j < NUM * DIM; j++) {
            if (j / DIM == pad) {
                pad_g = fmax(pad_g, fabs(nb_tensor_get(g[0], j)));
                plain_pad = fmax(plain_pad, fabs(nb_tensor_get(g[1], j)));
            } else {
                d_other = fmax(d_other, fabs(nb_tensor_get(g[0], j) - nb_tensor_get(g[1], j)));
            }
        }
        CHECK(pad_g == 0.0 && plain_pad > 0 && d_other == 0.0,
              "%s padding_idx %lld%s: the padding row's gradient is 0 (%g; %g without padding), the others unchanged (%g)",
              nb_dtype_name(dt), (long long)pad_arg, flags & NB_CREATE_GRAPH ? " (create graph)" : "", pad_g, plain_pad, d_other);
        if (flags & NB_CREATE_GRAPH)
            CHECK(nb_tensor_requires_grad(g[0]), "with NB_CREATE_GRAPH the gradient is on the graph");
    }
    /* with nothing recorded (no grad mode) the lookup is plain */
    nb_no_grad_begin();
    nb_tensor *y_ng = nb_embedding_forward(&e, idx);
    nb_no_grad_end();
    CHECK(nnt_max_diff(y_ng, y_plain) == 0.0, "padding in no-grad mode: the same values");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(seed);
    nb_tensor_free(idx);
    nb_params_free(p);
}

static void test_padding(void)
{
    check_padding(NB_F64, 0, 0);
    check_padding(NB_F64, 3, NB_CREATE_GRAPH);
    check_padding(NB_F64, -1, 0);
    check_padding(NB_F32, 2, 0);

    nb_rng rng;
    nb_rng_seed(&rng, 91);
    nb_params *p = nb_params_new();
    nb_embedding e;
    CHECK_ERROR(nb_embedding_init(&e, p, "a", 4, 2, &(nb_layer_opts){.use_padding_idx = 1, .padding_idx = 4}, &rng) != NB_OK,
                NB_ERR_ARG, "padding_idx 4 is outside [-4, 4)");
    CHECK_ERROR(nb_embedding_init(&e, p, "b", 4, 2, &(nb_layer_opts){.use_padding_idx = 1, .padding_idx = -5}, &rng) != NB_OK,
                NB_ERR_ARG, "padding_idx -5");
    CHECK(nb_embedding_init(&e, p, "c", 4, 2, &(nb_layer_opts){.use_padding_idx = 1, .padding_idx = -4}, &rng) == NB_OK &&
              e.padding_idx == 0,
          "padding_idx -4 of 4 is row 0");
    /* padding_idx without use_padding_idx means nothing: the old behaviour */
    CHECK(nb_embedding_init(&e, p, "d", 4, 2, &(nb_layer_opts){.padding_idx = 2}, &rng) == NB_OK && !e.has_padding &&
              nb_tensor_get(e.weight, 4) != 0.0,
          "padding_idx is ignored unless use_padding_idx is set");
    nb_params_free(p);
}

int main(void)
{
    test_orthogonal();
    test_trunc_normal();
    test_padding();
    return nbt_report("nn_init");
}
