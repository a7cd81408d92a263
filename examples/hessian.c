/* Newton-CG on L2-regularised logistic regression. Each Newton step solves H p = -g with conjugate
 * gradients, where every product H v is a Hessian-vector product by double backward: the gradient g
 * is recorded (NB_CREATE_GRAPH) and differentiated again as <g, v>. No Hessian is ever formed. The
 * gradient norm printed per step falls quadratically once near the optimum. */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { N = 400, D = 12, MAX_NEWTON = 12 };
static const double lambda = 1e-2;

/* L(w) = mean(BCE(X w, y)) + lambda / 2 |w|^2 */
static nb_tensor *loss_of(nb_tensor *x, nb_tensor *y, nb_tensor *w)
{
    nb_tensor *data = nb_bce_with_logits(nb_matmul(x, w), y, NB_REDUCE_MEAN);
    return nb_add(data, nb_mul_scalar(nb_sum_all(nb_square(w)), lambda / 2));
}

static double dot(const double *a, const double *b)
{
    double s = 0;
    for (int i = 0; i < D; i++) s += a[i] * b[i];
    return s;
}

/* hv = H v, through the recorded gradient gw = dL/dw */
static int hvp(nb_tensor *gw, nb_tensor *w, const double *v, double *hv)
{
    nb_tensor *h;
    nb_tensor *s = nb_sum_all(nb_mul(gw, nb_constant(NB_F64, NB_SHAPE(D), v)));
    if (!s || nb_grad(s, NULL, 1, &w, &h, NB_RETAIN_GRAPH) != NB_OK) return 0;
    memcpy(hv, nb_tensor_cdata(h), D * sizeof(double));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "usage: %s (it takes no options)\n", argv[0]);
        return 2;
    }
    nb_rng rng;
    nb_rng_seed(&rng, 2024);
    nb_tensor *x = nb_tensor_normal(NB_F64, NB_SHAPE(N, D), 0, 1, &rng);
    nb_tensor *w_true = nb_tensor_normal(NB_F64, NB_SHAPE(D), 0, 1, &rng);
    nb_tensor *y = nb_tensor_zeros(NB_F64, NB_SHAPE(N));
    for (int i = 0; i < N; i++) {
        double z = 0;
        for (int j = 0; j < D; j++) z += nb_tensor_get(x, i * D + j) * nb_tensor_get(w_true, j);
        nb_tensor_set(y, i, nb_rng_uniform(&rng) < 1 / (1 + exp(-z)) ? 1.0 : 0.0);
    }
    nb_tensor *w = nb_tensor_zeros(NB_F64, NB_SHAPE(D));
    nb_tensor_set_requires_grad(w, 1);
    nb_tape *tape = nb_tape_new();
    double gnorm = INFINITY, hv_err = 0;
    int ok = 1;

    printf("step  loss            |grad|      CG iterations\n");
    for (int step = 0; step <= MAX_NEWTON && ok; step++) {
        nb_tape_begin(tape);
        nb_tensor *loss = loss_of(x, y, w), *gw;
        ok = loss && nb_grad(loss, NULL, 1, &w, &gw, NB_CREATE_GRAPH) == NB_OK;
        double g[D], p[D] = {0}, r[D], d[D], hd[D];
        if (ok) memcpy(g, nb_tensor_cdata(gw), sizeof g);
        gnorm = ok ? sqrt(dot(g, g)) : NAN;
        if (ok && step == 0) {
            /* check one product against central differences of the gradient (a separate tape) */
            double v[D], hv[D];
            for (int i = 0; i < D; i++) v[i] = nb_rng_normal(&rng);
            ok = hvp(gw, w, v, hv);
            nb_tape *t2 = nb_tape_new();
            double *wd = nb_tensor_data(w), gp[D], gm[D], e = 1e-5;
            for (int sgn = 1; sgn >= -1 && ok; sgn -= 2) {
                for (int i = 0; i < D; i++) wd[i] += sgn * e * v[i];
                nb_tape_begin(t2);
                nb_tensor *g2;
                ok = nb_grad(loss_of(x, y, w), NULL, 1, &w, &g2, 0) == NB_OK;
                if (ok) memcpy(sgn > 0 ? gp : gm, nb_tensor_cdata(g2), sizeof gp);
                nb_tape_end(t2);
                nb_tape_reset(t2);
                for (int i = 0; i < D; i++) wd[i] -= sgn * e * v[i];
            }
            nb_tape_free(t2);
            for (int i = 0; i < D && ok; i++) hv_err = fmax(hv_err, fabs(hv[i] - (gp[i] - gm[i]) / (2 * e)) / (fabs(hv[i]) + 1e-12));
        }
        int it = 0;
        if (ok && gnorm > 1e-12) {
            /* conjugate gradients on H p = -g, from p = 0 */
            for (int i = 0; i < D; i++) r[i] = d[i] = -g[i];
            double rr = dot(r, r);
            for (it = 0; it < 2 * D && sqrt(rr) > 1e-3 * fmin(1.0, gnorm) * gnorm && ok; it++) {
                ok = hvp(gw, w, d, hd);
                double alpha = rr / dot(d, hd);
                for (int i = 0; i < D; i++) {
                    p[i] += alpha * d[i];
                    r[i] -= alpha * hd[i];
                }
                double rr2 = dot(r, r);
                for (int i = 0; i < D; i++) d[i] = r[i] + rr2 / rr * d[i];
                rr = rr2;
            }
        }
        if (ok) printf("%4d  %.12f  %.3e   %d\n", step, nb_tensor_item(loss), gnorm, it);
        nb_tape_end(tape);
        nb_tape_reset(tape);
        if (!ok || gnorm < 1e-10) break;
        double *wd = nb_tensor_data(w); /* w += p */
        for (int i = 0; i < D; i++) wd[i] += p[i];
        nb_tensor_mark_dirty(w);
    }
    if (!ok) fprintf(stderr, "hessian: %s\n", nb_error_message());
    printf("Hessian-vector product vs finite differences of the gradient: max rel err %.2e\n", hv_err);
    int pass = ok && gnorm < 1e-9 && hv_err < 1e-6;
    printf("%s: |grad| = %.2e after Newton-CG\n", pass ? "converged" : "FAILED", gnorm);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(w_true);
    nb_tensor_free(y);
    nb_tensor_free(w);
    return pass ? 0 : 1;
}
