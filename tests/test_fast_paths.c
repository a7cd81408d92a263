/* The backward_into fast paths (used when no graph is created) must give the same gradients as the
 * differentiable rules (used under NB_CREATE_GRAPH), and views must share memory only where they may. */
#include "nbtest.h"

typedef nb_tensor *(*fn)(nb_tensor *const *in);

static nb_tensor *f_slice(nb_tensor *const *in) /* every step of a sequence, as a recurrent layer reads it */
{
    nb_tensor *acc = NULL;
    for (int t = 0; t < 4; t++) {
        nb_tensor *s = nb_square(nb_slice(in[0], 0, t, t + 1, 1));
        acc = acc ? nb_add(acc, nb_mul_scalar(s, t + 1)) : s;
    }
    nb_tensor *strided = nb_square(nb_slice(in[0], 2, 1, 5, 2)); /* and a strided one */
    return nb_add(nb_sum_all(acc), nb_sum_all(nb_mul_scalar(strided, 0.5)));
}
static nb_tensor *f_index(nb_tensor *const *in)
{
    nb_tensor *idx = nb_constant(NB_I64, NB_SHAPE(5), (const int64_t[]){3, 0, 3, 1, 3});
    return nb_sum_all(nb_square(nb_index_select(in[0], 0, idx)));
}
static nb_tensor *f_matmul(nb_tensor *const *in) /* batched against one matrix, and transposed */
{
    nb_tensor *y = nb_matmul_ex(in[0], in[1], NB_TRANS_B);           /* [4,3,5] x [6,5]^T */
    nb_tensor *z = nb_matmul_ex(nb_sum(y, NB_AXES(0), 0), in[1], 0); /* [3,6] x [6,5] */
    return nb_sum_all(nb_tanh(z));
}
static nb_tensor *f_addmm(nb_tensor *const *in)
{
    nb_tensor *y = nb_addmm(in[2], in[0], in[1], NB_TRANS_B); /* bias [6] + [4,3,5] x [6,5]^T */
    nb_tensor *w = nb_reshape(nb_slice(in[1], 0, 0, 3, 1), NB_SHAPE(3, 5));
    nb_tensor *z = nb_addmm(nb_sum(y, NB_AXES(0, 2), 0), nb_sum(in[0], NB_AXES(0), 0), w, NB_TRANS_B);
    return nb_sum_all(nb_square(nb_add(nb_sum_all(y), z)));
}

static nb_tensor *f_lstm(nb_tensor *const *in) /* two steps; h' and c' both used, c' twice */
{
    nb_tensor *c0 = nb_reshape(nb_slice(in[0], 0, 0, 1, 1), NB_SHAPE(3, 5));
    nb_tensor *hc = nb_lstm_gates(nb_reshape(nb_tanh(in[0]), NB_SHAPE(3, 20)), c0);
    nb_tensor *h1 = nb_reshape(nb_slice(hc, 0, 0, 1, 1), NB_SHAPE(3, 5));
    nb_tensor *c1 = nb_reshape(nb_slice(hc, 0, 1, 2, 1), NB_SHAPE(3, 5));
    nb_tensor *hc2 = nb_lstm_gates(nb_reshape(in[0], NB_SHAPE(3, 20)), c1);
    return nb_add(nb_add(nb_sum_all(nb_square(hc2)), nb_sum_all(nb_mul(c1, c1))), nb_sum_all(nb_mul_scalar(h1, 3)));
}
static nb_tensor *f_gru(nb_tensor *const *in) /* x and h projections from the same input, h reused */
{
    nb_tensor *x = nb_reshape(in[0], NB_SHAPE(4, 15)), *h = nb_slice(x, 1, 0, 5, 1);
    nb_tensor *h1 = nb_gru_gates(x, nb_sin(x), h);
    return nb_sum_all(nb_square(nb_gru_gates(x, x, h1)));
}

static void compare(const char *name, fn f, int n, nb_tensor **in)
{
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    nb_tensor *g1[3], *g2[3];
    nb_tensor *y = f(in);
    CHECK(nb_grad(y, NULL, n, in, g1, NB_RETAIN_GRAPH) == NB_OK, "%s: fast backward: %s", name, nb_error_message());
    CHECK(nb_grad(y, NULL, n, in, g2, NB_CREATE_GRAPH) == NB_OK, "%s: graph backward: %s", name, nb_error_message());
    for (int i = 0; i < n; i++) {
        double worst = 0;
        for (int64_t e = 0; e < nb_tensor_numel(in[i]); e++) {
            double a = nb_tensor_get(g1[i], e), b = nb_tensor_get(g2[i], e);
            double d = fabs(a - b) / (fabs(b) + 1e-300);
            if (d > worst) worst = d;
        }
        CHECK(worst <= 1e-13, "%s: input %d: fast and graph backward differ by %g relative", name, i, worst);
        CHECK(nb_tensor_requires_grad(g2[i]), "%s: input %d: the graph backward is not differentiable", name, i);
    }
    nb_tape_end(t);
    nb_tape_free(t);
}

int main(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 11);
    nb_tensor *a = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 3, 5), -1, 1, &rng);
    nb_tensor *w = nb_tensor_uniform(NB_F64, NB_SHAPE(6, 5), -1, 1, &rng);
    nb_tensor *b = nb_tensor_uniform(NB_F64, NB_SHAPE(6), -1, 1, &rng);
    nb_tensor *in[3] = {a, w, b};
    for (int i = 0; i < 3; i++) nb_tensor_set_requires_grad(in[i], 1);
    compare("slice", f_slice, 1, in);
    compare("index_select", f_index, 1, in);
    compare("matmul", f_matmul, 2, in);
    compare("addmm", f_addmm, 3, in);
    compare("lstm_gates", f_lstm, 1, in);
    compare("gru_gates", f_gru, 1, in);

    /* a time step of [T, B, F] is a view; a column slice or a strided one is a copy */
    nb_tape *t = nb_tape_new();
    nb_tape_begin(t);
    const double *base = nb_tensor_cdata(a);
    CHECK(nb_tensor_cdata(nb_slice(a, 0, 2, 3, 1)) == base + 2 * 15, "a leading-axis slice is not a view");
    CHECK(nb_tensor_cdata(nb_slice(a, 1, 1, 2, 1)) != base + 5, "an inner-axis slice shares memory");
    CHECK(nb_tensor_cdata(nb_slice(a, 0, 0, 4, 2)) != base, "a strided slice shares memory");
    /* a view of a leaf guards against in-place changes like the leaf itself */
    nb_tensor *y = nb_sum_all(nb_mul(nb_slice(a, 0, 1, 2, 1), nb_slice(a, 0, 1, 2, 1)));
    nb_tensor_fill(a, 0.5);
    CHECK_ERROR(nb_backward(y, NULL, 0) != NB_OK, NB_ERR_STATE, "modified in place");
    nb_tape_end(t);
    nb_tape_free(t);
    for (int i = 0; i < 3; i++) nb_tensor_free(in[i]);
    return nbt_report("fast_paths");
}
