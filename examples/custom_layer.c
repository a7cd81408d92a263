/* A new layer two ways: RMS norm, y = x / sqrt(mean(x^2) + eps) * w over the last dim, composed from
 * primitives (its gradient, and its gradient's gradient, come for free), and the same as a custom op
 * with a hand-written raw backward. Both are gradchecked; the composed one to second order. */
#include <nabla.h>
#include <math.h>

#define EPS 1e-6

static nb_tensor *rms_norm(void *user, nb_tensor *const *in) /* in: x [B, D], w [D] */
{
    (void)user;
    nb_tensor *ms = nb_mean(nb_square(in[0]), NB_AXES(-1), 1);
    return nb_mul(nb_div(in[0], nb_sqrt(nb_add_scalar(ms, EPS))), in[1]);
}

/* r = (mean(x^2) + eps)^-1/2 of row b */
static double row_r(const double *x, int64_t d)
{
    double s = 0;
    for (int64_t j = 0; j < d; j++) s += x[j] * x[j];
    return 1.0 / sqrt(s / (double)d + EPS);
}

static nb_status rms_forward(void *user, int n, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n;
    int64_t b = nb_tensor_dim(in[0], 0), d = nb_tensor_dim(in[0], 1);
    const double *x = nb_tensor_cdata(in[0]), *w = nb_tensor_cdata(in[1]);
    double *y = nb_tensor_data(out);
    for (int64_t i = 0; i < b; i++, x += d, y += d) {
        double r = row_r(x, d);
        for (int64_t j = 0; j < d; j++) y[j] = x[j] * r * w[j];
    }
    return NB_OK;
}

/* dx_j = r g_j w_j - r^3 x_j / D * sum_k g_k w_k x_k;  dw_j = sum over rows of g_j x_j r */
static nb_status rms_backward_raw(void *user, int n, const nb_tensor *const *in, const nb_tensor *out,
                                  const nb_tensor *gout, nb_tensor *const *gin)
{
    (void)user, (void)n, (void)out;
    int64_t b = nb_tensor_dim(in[0], 0), d = nb_tensor_dim(in[0], 1);
    const double *x = nb_tensor_cdata(in[0]), *w = nb_tensor_cdata(in[1]), *g = nb_tensor_cdata(gout);
    double *gx = gin[0] ? nb_tensor_data(gin[0]) : NULL, *gw = gin[1] ? nb_tensor_data(gin[1]) : NULL;
    for (int64_t i = 0; i < b; i++, x += d, g += d) {
        double r = row_r(x, d), dot = 0;
        for (int64_t j = 0; j < d; j++) dot += g[j] * w[j] * x[j];
        for (int64_t j = 0; j < d; j++) {
            if (gx) gx[i * d + j] = r * g[j] * w[j] - r * r * r * x[j] / (double)d * dot;
            if (gw) gw[j] += g[j] * x[j] * r;
        }
    }
    return NB_OK;
}

static const nb_custom_op rms_op = {.name = "rms_norm", .forward = rms_forward, .backward_raw = rms_backward_raw};

static nb_tensor *rms_norm_custom(void *user, nb_tensor *const *in)
{
    (void)user;
    return nb_custom(&rms_op, 2, in, NB_F64, 2, nb_tensor_shape(in[0]));
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "usage: %s (it takes no options)\n", argv[0]);
        return 2;
    }
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    nb_tensor *in[2] = {nb_tensor_normal(NB_F64, NB_SHAPE(3, 5), 0, 1, &rng),
                        nb_tensor_uniform(NB_F64, NB_SHAPE(5), 0.5, 1.5, &rng)};
    nb_tensor_set_requires_grad(in[0], 1);
    nb_tensor_set_requires_grad(in[1], 1);
    nb_gradcheck_report rep;
    int failures = 0;
    failures += nb_gradcheck(rms_norm, NULL, 2, in, NULL, &rep) != NB_OK;
    nb_gradcheck_report_print(&rep, stdout);
    failures += nb_gradgradcheck(rms_norm, NULL, 2, in, NULL, &rep) != NB_OK;
    nb_gradcheck_report_print(&rep, stdout);
    failures += nb_gradcheck(rms_norm_custom, NULL, 2, in, NULL, &rep) != NB_OK;
    nb_gradcheck_report_print(&rep, stdout);
    /* a raw backward cannot be differentiated again: a clear error, never a wrong answer */
    nb_status st = nb_gradgradcheck(rms_norm_custom, NULL, 2, in, NULL, &rep);
    printf("gradgradcheck through the raw backward: %s\n  %s\n", nb_status_name(st), nb_error_message());
    failures += st != NB_ERR_UNSUPPORTED;
    nb_error_clear();
    nb_tensor_free(in[0]);
    nb_tensor_free(in[1]);
    printf("%s\n", failures ? "FAILED" : "all checks passed");
    return failures != 0;
}
