/* Table-driven float64 gradient checks of the first op set: every op's backward rule against central
 * differences (nb_gradcheck), and its double backward (nb_gradgradcheck). Linear and piecewise-linear
 * ops have a gradient that does not depend on the input, so their gradgradcheck must pass with an
 * error of exactly zero. Inputs avoid kinks (relu at 0) and poles (log, div at 0) by their ranges;
 * tolerances are never loosened, except for the rows that round through float32 on purpose.
 * A few forward values are checked against plain C as well, since a gradient check alone cannot see a
 * forward kernel that is wrong together with its rule. */
#include "gradtable.h" /* the first op set's functions, the row inputs and the check of one row */
#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>

/* ---- row arguments (axes, shapes and scalars: gradtable.h) ------------------------------------ */

typedef struct perm_arg {
    int ndim;
    int perm[4];
} perm_arg;

#define PM(...) (&(const perm_arg){__VA_ARGS__})

/* ---- the functions under test (the plain ones of the first op set: gradtable.h) --------------- */

static const unsigned k_nn = 0; /* f_matmul_ex without a transpose */

static nb_tensor *f_transpose(void *user, nb_tensor *const *in)
{
    const perm_arg *p = user;
    return nb_transpose(in[0], p->perm[0], p->perm[1]);
}
static nb_tensor *f_permute(void *user, nb_tensor *const *in)
{
    const perm_arg *p = user;
    return nb_permute(in[0], p->ndim, p->perm);
}
/* f64 -> f32 -> f64 around a float32 tanh: rounding makes float32 tolerances necessary */
static nb_tensor *f_cast_f32_tanh(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_cast(nb_tanh(nb_cast(in[0], NB_F32)), NB_F64);
}
/* f64 -> f32 -> f64 and a float32 product of the two inputs */
static nb_tensor *f_cast_f32_mul(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_cast(nb_mul(nb_cast(in[0], NB_F32), nb_cast(in[1], NB_F32)), NB_F64);
}
/* the plain round trip, for the negative control */
static nb_tensor *f_round_f32(void *user, nb_tensor *const *in)
{
    UNUSED_USER;
    return nb_cast(nb_cast(in[0], NB_F32), NB_F64);
}

/* Compositions: several rules chained, a tensor used twice, broadcasting inside a graph. */
static nb_tensor *f_mlp(void *user, nb_tensor *const *in)
{
    UNUSED_USER; /* in: x [4,3], W1 [3,5], b1 [5], W2 [5,2] */
    nb_tensor *h = nb_tanh(nb_add(nb_matmul(in[0], in[1]), in[2]));
    return nb_sigmoid(nb_matmul(h, in[3]));
}
static nb_tensor *f_first(void *user, nb_tensor *const *in)
{
    UNUSED_USER; /* examples/first.c: sum(tanh(x w) * sigmoid(x w)) */
    nb_tensor *z = nb_matmul(in[0], in[1]);
    return nb_sum_all(nb_mul(nb_tanh(z), nb_sigmoid(z)));
}
static nb_tensor *f_softmax_like(void *user, nb_tensor *const *in)
{
    UNUSED_USER; /* exp(x) / sum(exp(x), axis 1, keepdim): division by a broadcast reduction */
    nb_tensor *e = nb_exp(in[0]);
    return nb_div(e, nb_sum(e, NB_AXES(1), 1));
}
static nb_tensor *f_x_times_x_plus_x(void *user, nb_tensor *const *in)
{
    UNUSED_USER; /* a leaf used three times */
    return nb_add(nb_mul(in[0], in[0]), in[0]);
}
static nb_tensor *f_log_mean(void *user, nb_tensor *const *in)
{
    UNUSED_USER; /* log(mean(x * y, axis 0)) with y broadcast */
    return nb_log(nb_mean(nb_mul(in[0], in[1]), NB_AXES(0), 0));
}
static nb_tensor *f_permute_matmul(void *user, nb_tensor *const *in)
{
    UNUSED_USER; /* transpose feeding matmul, then reshape and relu-free nonlinearity */
    nb_tensor *t = nb_transpose(in[0], 0, 1);
    return nb_reshape(nb_exp(nb_matmul(t, in[1])), NB_SHAPE(-1));
}

/* ---- the table -------------------------------------------------------------------------------- */

typedef struct row {
    const char *name;
    nb_func f;
    const void *arg;
    int n_in;
    input_spec in[4];
    int order;                    /* CURVED: non-zero second derivative; LINEAR: gradient constant */
    const nb_gradcheck_opts *opts; /* NULL: the defaults */
} row;

/* tolerances suited to float32 round trips: the numeric derivative of a float32 function carries
 * an error of about ulp / eps, so eps is large and the tolerances are float32-sized */
static const nb_gradcheck_opts f32_opts = {.eps = 1e-3, .atol = 1e-3, .rtol = 1e-2, .seed = 0};

static const row rows[] = {
    /* binary arithmetic, equal shapes and every broadcasting pattern */
    {"add [2,3]+[2,3]", f_add, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"add [2,3]+[3]", f_add, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3)}, LINEAR, NULL},
    {"add [3]+[2,3]", f_add, NULL, 2, {IN(-1, 1, 3), IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"add [2,1,4]+[3,1]", f_add, NULL, 2, {IN(-1, 1, 2, 1, 4), IN(-1, 1, 3, 1)}, LINEAR, NULL},
    {"add []+[2,3]", f_add, NULL, 2, {IN0(-1, 1), IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"add [2,3]+[] const", f_add, NULL, 2, {IN(-1, 1, 2, 3), INC0(-1, 1)}, LINEAR, NULL},
    {"sub [2,3]-[2,3]", f_sub, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"sub [2,3]-[3]", f_sub, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3)}, LINEAR, NULL},
    {"sub [3]-[2,3]", f_sub, NULL, 2, {IN(-1, 1, 3), IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"sub [2,1,4]-[3,1]", f_sub, NULL, 2, {IN(-1, 1, 2, 1, 4), IN(-1, 1, 3, 1)}, LINEAR, NULL},
    {"sub []-[2,3]", f_sub, NULL, 2, {IN0(-1, 1), IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"sub [2,3]-[]", f_sub, NULL, 2, {IN(-1, 1, 2, 3), IN0(-1, 1)}, LINEAR, NULL},
    {"mul [2,3]*[2,3]", f_mul, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 2, 3)}, CURVED, NULL},
    {"mul [2,3]*[3]", f_mul, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3)}, CURVED, NULL},
    {"mul [3]*[2,3]", f_mul, NULL, 2, {IN(-1, 1, 3), IN(-1, 1, 2, 3)}, CURVED, NULL},
    {"mul [2,1,4]*[3,1]", f_mul, NULL, 2, {IN(-1, 1, 2, 1, 4), IN(-1, 1, 3, 1)}, CURVED, NULL},
    {"mul []*[2,3]", f_mul, NULL, 2, {IN0(-1, 1), IN(-1, 1, 2, 3)}, CURVED, NULL},
    {"mul [2,1]*[1,3]", f_mul, NULL, 2, {IN(-1, 1, 2, 1), IN(-1, 1, 1, 3)}, CURVED, NULL},
    {"sub [1,3]-[2,1]", f_sub, NULL, 2, {IN(-1, 1, 1, 3), IN(-1, 1, 2, 1)}, LINEAR, NULL},
    {"mul [2,3]*[3] const", f_mul, NULL, 2, {IN(-1, 1, 2, 3), INC(-1, 1, 3)}, LINEAR, NULL},
    {"mul const [2,3]*[3]", f_mul, NULL, 2, {INC(-1, 1, 2, 3), IN(-1, 1, 3)}, LINEAR, NULL},
    {"div [2,3]/[2,3]", f_div, NULL, 2, {IN(-1, 1, 2, 3), INALT(0.5, 2, 2, 3)}, CURVED, NULL},
    {"div [2,3]/[3]", f_div, NULL, 2, {IN(-1, 1, 2, 3), INALT(0.5, 2, 3)}, CURVED, NULL},
    {"div [3]/[2,3]", f_div, NULL, 2, {IN(-1, 1, 3), INALT(0.5, 2, 2, 3)}, CURVED, NULL},
    {"div [2,1,4]/[3,1]", f_div, NULL, 2, {IN(-1, 1, 2, 1, 4), INALT(0.5, 2, 3, 1)}, CURVED, NULL},
    {"div []/[2,3]", f_div, NULL, 2, {IN0(-1, 1), INALT(0.5, 2, 2, 3)}, CURVED, NULL},
    {"div [2,3]/[]", f_div, NULL, 2, {IN(-1, 1, 2, 3), IN0(0.5, 2)}, CURVED, NULL},
    {"div [2,3]/[3] const", f_div, NULL, 2, {IN(-1, 1, 2, 3), INC(0.5, 2, 3)}, LINEAR, NULL},
    {"div const [2,3]/[3]", f_div, NULL, 2, {INC(-1, 1, 2, 3), IN(0.5, 2, 3)}, CURVED, NULL},

    /* scalar forms */
    {"add_scalar", f_add_scalar, SC(0.7, 0), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"mul_scalar", f_mul_scalar, SC(-1.3, 0), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"rsub_scalar", f_rsub_scalar, SC(2.5, 0), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"div_scalar", f_div_scalar, SC(-0.8, 0), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"affine", f_affine, SC(1.7, -0.4), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"affine 0-d", f_affine, SC(-0.25, 3.0), 1, {IN0(-1, 1)}, LINEAR, NULL},

    /* unary functions */
    {"neg", f_neg, NULL, 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"exp", f_exp, NULL, 1, {IN(-2, 2, 2, 3)}, CURVED, NULL},
    {"log", f_log, NULL, 1, {IN(0.2, 3, 2, 3)}, CURVED, NULL},
    {"tanh", f_tanh, NULL, 1, {IN(-2, 2, 2, 3)}, CURVED, NULL},
    {"sigmoid", f_sigmoid, NULL, 1, {IN(-4, 4, 2, 3)}, CURVED, NULL},
    {"sigmoid large |x|", f_sigmoid, NULL, 1, {INALT(8, 12, 2, 2)}, CURVED, NULL},
    {"relu", f_relu, NULL, 1, {INALT(0.1, 1.5, 3, 4)}, LINEAR, NULL},
    {"exp 0-d", f_exp, NULL, 1, {IN0(-1, 1)}, CURVED, NULL},

    /* matrix product: all four transpose combinations, with m, k, n distinct */
    {"matmul [2,3]x[3,4]", f_matmul, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3, 4)}, CURVED, NULL},
    {"matmul_ex NN", f_matmul_ex, &k_nn, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3, 4)}, CURVED, NULL},
    {"matmul_ex TN", f_matmul_ex, &k_tn, 2, {IN(-1, 1, 3, 2), IN(-1, 1, 3, 4)}, CURVED, NULL},
    {"matmul_ex NT", f_matmul_ex, &k_nt, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 4, 3)}, CURVED, NULL},
    {"matmul_ex TT", f_matmul_ex, &k_tt, 2, {IN(-1, 1, 3, 2), IN(-1, 1, 4, 3)}, CURVED, NULL},
    {"matmul [1,3]x[3,1]", f_matmul, NULL, 2, {IN(-1, 1, 1, 3), IN(-1, 1, 3, 1)}, CURVED, NULL},
    /* batch dims (broadcast) and vectors, through the same rule */
    {"matmul [2,2,3]x[3,4]", f_matmul, NULL, 2, {IN(-1, 1, 2, 2, 3), IN(-1, 1, 3, 4)}, CURVED, NULL},
    {"matmul [2,3]x[2,3,4]", f_matmul, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 2, 3, 4)}, CURVED, NULL},
    {"matmul [2,1,2,3]x[3,3,4]", f_matmul, NULL, 2, {IN(-1, 1, 2, 1, 2, 3), IN(-1, 1, 3, 3, 4)}, CURVED, NULL},
    {"matmul_ex TN [2,3,2]x[3,4]", f_matmul_ex, &k_tn, 2, {IN(-1, 1, 2, 3, 2), IN(-1, 1, 3, 4)}, CURVED, NULL},
    {"matmul_ex NT [2,2,3]x[4,3]", f_matmul_ex, &k_nt, 2, {IN(-1, 1, 2, 2, 3), IN(-1, 1, 4, 3)}, CURVED, NULL},
    {"matmul_ex TT [3,2]x[2,4,3]", f_matmul_ex, &k_tt, 2, {IN(-1, 1, 3, 2), IN(-1, 1, 2, 4, 3)}, CURVED, NULL},
    {"matmul [3]x[3,4]", f_matmul, NULL, 2, {IN(-1, 1, 3), IN(-1, 1, 3, 4)}, CURVED, NULL},
    {"matmul [2,3]x[3]", f_matmul, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3)}, CURVED, NULL},
    {"matmul [3]x[3]", f_matmul, NULL, 2, {IN(-1, 1, 3), IN(-1, 1, 3)}, CURVED, NULL},
    {"matmul [3]x[2,3,4]", f_matmul, NULL, 2, {IN(-1, 1, 3), IN(-1, 1, 2, 3, 4)}, CURVED, NULL},
    {"matmul NT const b", f_matmul_ex, &k_nt, 2, {IN(-1, 1, 2, 3), INC(-1, 1, 4, 3)}, LINEAR, NULL},
    {"matmul TT const a", f_matmul_ex, &k_tt, 2, {INC(-1, 1, 3, 2), IN(-1, 1, 4, 3)}, LINEAR, NULL},

    /* reductions over [2,3,4] */
    {"sum all", f_sum, AX(0, {0}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum all keepdim", f_sum, AX(0, {0}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum axis 1", f_sum, AX(1, {1}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum axis 1 keepdim", f_sum, AX(1, {1}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum axes 0,2", f_sum, AX(2, {0, 2}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum axes 2,0 keepdim", f_sum, AX(2, {2, 0}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum axis -1", f_sum, AX(1, {-1}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum axes -3,-1 keepdim", f_sum, AX(2, {-3, -1}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum axes 0,1,2 listed", f_sum, AX(3, {0, 1, 2}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum 0-d", f_sum, AX(0, {0}, 0), 1, {IN0(-1, 1)}, LINEAR, NULL},
    {"sum_all", f_sum_all, NULL, 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean all", f_mean, AX(0, {0}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean all keepdim", f_mean, AX(0, {0}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean axis 1", f_mean, AX(1, {1}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean axis 1 keepdim", f_mean, AX(1, {1}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean axes 0,2", f_mean, AX(2, {0, 2}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean axes 0,2 keepdim", f_mean, AX(2, {0, 2}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean axis -2", f_mean, AX(1, {-2}, 0), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean axes -1,-3 keepdim", f_mean, AX(2, {-1, -3}, 1), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"mean_all", f_mean_all, NULL, 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},

    /* sum_to, reshape, transpose, permute, broadcast_to */
    {"sum_to [2,3,4]->[3,1]", f_sum_to, SH(2, {3, 1}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum_to [2,3,4]->[1,3,4]", f_sum_to, SH(3, {1, 3, 4}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum_to [2,3,4]->[4]", f_sum_to, SH(1, {4}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum_to [2,3,4]->[2,1,1]", f_sum_to, SH(3, {2, 1, 1}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"sum_to [2,3]->[]", f_sum_to, SH(0, {0}), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"sum_to [2,3]->[2,3]", f_sum_to, SH(2, {2, 3}), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"reshape [2,3,4]->[4,-1]", f_reshape, SH(2, {4, -1}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"reshape [2,3,4]->[-1]", f_reshape, SH(1, {-1}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"reshape [2,3,4]->[3,-1,2]", f_reshape, SH(3, {3, -1, 2}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"reshape [2,3]->[3,2]", f_reshape, SH(2, {3, 2}), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"reshape [1]->[]", f_reshape, SH(0, {0}), 1, {IN(-1, 1, 1)}, LINEAR, NULL},
    {"reshape []->[1,1]", f_reshape, SH(2, {1, 1}), 1, {IN0(-1, 1)}, LINEAR, NULL},
    {"transpose [2,3] 0,1", f_transpose, PM(2, {0, 1}), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"transpose [2,3,4] 0,2", f_transpose, PM(2, {0, 2}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"transpose [2,3,4] -1,-2", f_transpose, PM(2, {-1, -2}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"transpose [2,3,4] 1,1", f_transpose, PM(2, {1, 1}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"permute [2,3,4] 2,0,1", f_permute, PM(3, {2, 0, 1}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"permute [2,3,4] 1,2,0", f_permute, PM(3, {1, 2, 0}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"permute [2,3,4,5] 3,1,0,2", f_permute, PM(4, {3, 1, 0, 2}), 1, {IN(-1, 1, 2, 3, 4, 5)}, LINEAR, NULL},
    {"permute [2,3,4] -1,0,-2", f_permute, PM(3, {-1, 0, -2}), 1, {IN(-1, 1, 2, 3, 4)}, LINEAR, NULL},
    {"broadcast_to [3,1]->[2,3,4]", f_broadcast_to, SH(3, {2, 3, 4}), 1, {IN(-1, 1, 3, 1)}, LINEAR, NULL},
    {"broadcast_to [4]->[2,3,4]", f_broadcast_to, SH(3, {2, 3, 4}), 1, {IN(-1, 1, 4)}, LINEAR, NULL},
    {"broadcast_to [2,1,4]->[2,3,4]", f_broadcast_to, SH(3, {2, 3, 4}), 1, {IN(-1, 1, 2, 1, 4)}, LINEAR, NULL},
    {"broadcast_to []->[2,3]", f_broadcast_to, SH(2, {2, 3}), 1, {IN0(-1, 1)}, LINEAR, NULL},
    {"broadcast_to [2,3]->[2,3]", f_broadcast_to, SH(2, {2, 3}), 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},

    /* casts */
    {"cast f64->f64", f_cast_f64, NULL, 1, {IN(-1, 1, 2, 3)}, LINEAR, NULL},
    {"cast f64->f32 tanh ->f64", f_cast_f32_tanh, NULL, 1, {IN(-2, 2, 2, 3)}, CURVED, &f32_opts},
    {"cast f64->f32 mul ->f64", f_cast_f32_mul, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3)}, CURVED, &f32_opts},

    /* compositions */
    {"mlp", f_mlp, NULL, 4, {IN(-1, 1, 4, 3), IN(-1, 1, 3, 5), IN(-1, 1, 5), IN(-1, 1, 5, 2)}, CURVED, NULL},
    {"first.c", f_first, NULL, 2, {IN(-1, 1, 2, 3), IN(-1, 1, 3, 2)}, CURVED, NULL},
    {"softmax by div", f_softmax_like, NULL, 1, {IN(-2, 2, 3, 4)}, CURVED, NULL},
    {"x*x+x", f_x_times_x_plus_x, NULL, 1, {IN(-1, 1, 2, 3)}, CURVED, NULL},
    {"log(mean(x*y,0))", f_log_mean, NULL, 2, {IN(0.5, 1.5, 3, 4), IN(0.5, 1.5, 4)}, CURVED, NULL},
    {"exp(x^T w) reshaped", f_permute_matmul, NULL, 2, {IN(-1, 1, 3, 2), IN(-1, 1, 3, 4)}, CURVED, NULL},
};

#define N_ROWS ((int)(sizeof rows / sizeof rows[0]))

/* ---- running one row -------------------------------------------------------------------------- */

static void run_row(int r)
{
    const row *rw = &rows[r];
    gradtable_check(rw->name, rw->f, rw->arg, rw->n_in, rw->in, rw->order, rw->opts, 1000u + (uint64_t)r);
}

/* ---- forward values against plain C ----------------------------------------------------------- */

/* flat index into t (right-aligned broadcasting) of the output multi-index idx of ndim dims */
static int64_t bcast_index(const nb_tensor *t, int ndim, const int64_t *idx)
{
    int tn = nb_tensor_ndim(t), lead = ndim - tn;
    const int64_t *ts = nb_tensor_shape(t);
    int64_t off = 0;
    for (int d = 0; d < tn; d++) off = off * ts[d] + (ts[d] == 1 ? 0 : idx[d + lead]);
    return off;
}

static void unravel(int64_t flat, int ndim, const int64_t *shape, int64_t *idx)
{
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = shape[d] ? flat % shape[d] : 0;
        flat = shape[d] ? flat / shape[d] : 0;
    }
}

typedef double (*ref_fn)(double a, double b);
static double r_add(double a, double b) { return a + b; }
static double r_sub(double a, double b) { return a - b; }
static double r_mul(double a, double b) { return a * b; }
static double r_div(double a, double b) { return a / b; }
static double r_exp(double a, double b) { (void)b; return exp(a); }
static double r_log(double a, double b) { (void)b; return log(a); }
static double r_tanh(double a, double b) { (void)b; return tanh(a); }
static double r_sigmoid(double a, double b) { (void)b; return 1.0 / (1.0 + exp(-a)); }
static double r_relu(double a, double b) { (void)b; return a > 0 ? a : 0.0; }
static double r_neg(double a, double b) { (void)b; return -a; }

static void check_elementwise(const char *name, nb_func f, ref_fn ref, int n_in, nb_tensor *const *in,
                              int ndim, const int64_t *shape)
{
    nb_tensor *out = f(NULL, in);
    CHECK(out != NULL, "%s: forward failed: %s", name, nb_error_message());
    if (!out) {
        nb_error_clear();
        return;
    }
    CHECK(nb_tensor_ndim(out) == ndim, "%s: ndim %d, expected %d", name, nb_tensor_ndim(out), ndim);
    int shape_ok = nb_tensor_ndim(out) == ndim;
    for (int d = 0; shape_ok && d < ndim; d++) shape_ok = nb_tensor_shape(out)[d] == shape[d];
    CHECK(shape_ok, "%s: wrong output shape", name);
    if (!shape_ok) return;
    int bad = 0;
    for (int64_t k = 0; k < nb_tensor_numel(out); k++) {
        int64_t idx[NB_MAX_DIMS];
        unravel(k, ndim, shape, idx);
        double a = nb_tensor_get(in[0], bcast_index(in[0], ndim, idx));
        double b = n_in > 1 ? nb_tensor_get(in[1], bcast_index(in[1], ndim, idx)) : 0.0;
        double want = ref(a, b), got = nb_tensor_get(out, k);
        if (!(fabs(got - want) <= 1e-15 + 1e-14 * fabs(want))) {
            if (!bad) fprintf(stderr, "  %s: out[%lld] = %.17g, expected %.17g\n", name, (long long)k, got, want);
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %d wrong forward values", name, bad);
}

static void forward_values(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);

    nb_tensor *a23 = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng);
    nb_tensor *b3 = nb_tensor_uniform(NB_F64, NB_SHAPE(3), 0.5, 2, &rng);
    nb_tensor *a214 = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 1, 4), -1, 1, &rng);
    nb_tensor *b31 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 1), 0.5, 2, &rng);
    nb_tensor *s0 = nb_tensor_full(NB_F64, 0, NULL, 1.75);
    nb_tensor *pos = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), 0.2, 3, &rng);

    static const struct {
        const char *name;
        nb_func f;
        ref_fn ref;
    } bin[] = {{"add", f_add, r_add}, {"sub", f_sub, r_sub}, {"mul", f_mul, r_mul}, {"div", f_div, r_div}};
    for (size_t i = 0; i < sizeof bin / sizeof bin[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s [2,3],[3]", bin[i].name);
        check_elementwise(name, bin[i].f, bin[i].ref, 2, (nb_tensor *[]){a23, b3}, NB_SHAPE(2, 3));
        snprintf(name, sizeof name, "%s [3],[2,3]", bin[i].name);
        check_elementwise(name, bin[i].f, bin[i].ref, 2, (nb_tensor *[]){b3, pos}, NB_SHAPE(2, 3));
        snprintf(name, sizeof name, "%s [2,1,4],[3,1]", bin[i].name);
        check_elementwise(name, bin[i].f, bin[i].ref, 2, (nb_tensor *[]){a214, b31}, NB_SHAPE(2, 3, 4));
        snprintf(name, sizeof name, "%s [],[2,3]", bin[i].name);
        check_elementwise(name, bin[i].f, bin[i].ref, 2, (nb_tensor *[]){s0, pos}, NB_SHAPE(2, 3));
        snprintf(name, sizeof name, "%s [2,3],[]", bin[i].name);
        check_elementwise(name, bin[i].f, bin[i].ref, 2, (nb_tensor *[]){a23, s0}, NB_SHAPE(2, 3));
    }
    check_elementwise("exp", f_exp, r_exp, 1, &a23, NB_SHAPE(2, 3));
    check_elementwise("log", f_log, r_log, 1, &pos, NB_SHAPE(2, 3));
    check_elementwise("tanh", f_tanh, r_tanh, 1, &a23, NB_SHAPE(2, 3));
    check_elementwise("sigmoid", f_sigmoid, r_sigmoid, 1, &a23, NB_SHAPE(2, 3));
    check_elementwise("relu", f_relu, r_relu, 1, &a23, NB_SHAPE(2, 3));
    check_elementwise("neg", f_neg, r_neg, 1, &a23, NB_SHAPE(2, 3));

    /* sigmoid at extreme inputs stays finite and exact at the ends */
    nb_tensor *ext = nb_tensor_from_data(NB_F64, NB_SHAPE(4), (double[]){-800, -40, 40, 800});
    nb_tensor *se = nb_sigmoid(ext);
    CHECK(se && nb_tensor_get(se, 0) == 0.0 && nb_tensor_get(se, 3) == 1.0, "sigmoid(+-800) is 0 and 1");
    CHECK(se && fabs(nb_tensor_get(se, 1) - exp(-40.0)) <= 1e-30, "sigmoid(-40) = e^-40");

    /* relu's gradient at the kink is 0 (and 1 above it, 0 below) */
    nb_tensor *kx = nb_tensor_from_data(NB_F64, NB_SHAPE(4), (double[]){-1.0, 0.0, 0.5, -0.0});
    nb_tensor_set_requires_grad(kx, 1);
    CHECK(nb_backward(nb_sum_all(nb_relu(kx)), NULL, 0) == NB_OK, "relu backward");
    nb_tensor *kg = nb_tensor_grad(kx);
    CHECK(kg && nb_tensor_get(kg, 0) == 0.0 && nb_tensor_get(kg, 1) == 0.0 && nb_tensor_get(kg, 2) == 1.0 &&
              nb_tensor_get(kg, 3) == 0.0,
          "relu gradient [0, 0, 1, 0] at [-1, 0, 0.5, -0]");

    /* scalar forms, exactly */
    nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(3), (double[]){-1.5, 0.25, 2.0});
    nb_tensor *r;
    r = nb_add_scalar(x, 0.5);
    CHECK(r && nb_tensor_get(r, 0) == -1.0 && nb_tensor_get(r, 2) == 2.5, "add_scalar values");
    r = nb_mul_scalar(x, -2.0);
    CHECK(r && nb_tensor_get(r, 0) == 3.0 && nb_tensor_get(r, 1) == -0.5, "mul_scalar values");
    r = nb_rsub_scalar(1.0, x);
    CHECK(r && nb_tensor_get(r, 0) == 2.5 && nb_tensor_get(r, 2) == -1.0, "rsub_scalar values");
    r = nb_div_scalar(x, 4.0);
    CHECK(r && nb_tensor_get(r, 0) == -0.375 && nb_tensor_get(r, 2) == 0.5, "div_scalar values");
    r = nb_affine(x, 2.0, 1.0);
    CHECK(r && nb_tensor_get(r, 0) == -2.0 && nb_tensor_get(r, 1) == 1.5 && nb_tensor_get(r, 2) == 5.0,
          "affine values");

    /* matmul, all four transposes, against a triple loop */
    nb_tensor *A = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng);  /* [m,k] */
    nb_tensor *At = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 2), -1, 1, &rng); /* [k,m] */
    nb_tensor *B = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 4), -1, 1, &rng);  /* [k,n] */
    nb_tensor *Bt = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 3), -1, 1, &rng); /* [n,k] */
    for (unsigned fl = 0; fl < 4; fl++) {
        nb_tensor *a = (fl & NB_TRANS_A) ? At : A, *b = (fl & NB_TRANS_B) ? Bt : B;
        nb_tensor *c = nb_matmul_ex(a, b, fl);
        CHECK(c && nb_tensor_dim(c, 0) == 2 && nb_tensor_dim(c, 1) == 4, "matmul_ex %u shape", fl);
        if (!c) continue;
        double maxerr = 0;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 4; j++) {
                double s = 0;
                for (int k = 0; k < 3; k++) {
                    double av = (fl & NB_TRANS_A) ? nb_tensor_get(a, k * 2 + i) : nb_tensor_get(a, i * 3 + k);
                    double bv = (fl & NB_TRANS_B) ? nb_tensor_get(b, j * 3 + k) : nb_tensor_get(b, k * 4 + j);
                    s += av * bv;
                }
                maxerr = fmax(maxerr, fabs(s - nb_tensor_get(c, i * 4 + j)));
            }
        CHECK(maxerr <= 1e-14, "matmul_ex flags %u: max error %g", fl, maxerr);
    }

    /* sum / mean over axes of [2,3,4] holding 0..23: exact small integers */
    nb_tensor *iota = nb_tensor_arange(NB_F64, 0, 24, 1);
    nb_tensor *x234 = nb_reshape(iota, NB_SHAPE(2, 3, 4));
    nb_tensor *s1 = nb_sum(x234, NB_AXES(1), 0); /* [2,4]: x[i,0,k]+x[i,1,k]+x[i,2,k] */
    CHECK(s1 && nb_tensor_ndim(s1) == 2 && nb_tensor_get(s1, 0) == 0 + 4 + 8 && nb_tensor_get(s1, 7) == 15 + 19 + 23,
          "sum axis 1 values");
    nb_tensor *s02 = nb_sum(x234, NB_AXES(0, 2), 1); /* [1,3,1]: sum over i,k of 12i+4j+k = 60+32j */
    CHECK(s02 && nb_tensor_ndim(s02) == 3 && nb_tensor_dim(s02, 1) == 3 && nb_tensor_get(s02, 0) == 60 &&
              nb_tensor_get(s02, 1) == 92 && nb_tensor_get(s02, 2) == 124,
          "sum axes 0,2 keepdim values");
    nb_tensor *m0 = nb_mean(x234, NB_AXES(-3), 0); /* [3,4]: (x[0,j,k]+x[1,j,k])/2 = 4j+k+6 */
    CHECK(m0 && nb_tensor_get(m0, 0) == 6 && nb_tensor_get(m0, 11) == 17, "mean axis -3 values");
    nb_tensor *all = nb_sum_all(x234);
    CHECK(all && nb_tensor_ndim(all) == 0 && nb_tensor_item(all) == 276, "sum_all value");
    nb_tensor *mall = nb_mean(x234, 0, NULL, 1);
    CHECK(mall && nb_tensor_ndim(mall) == 3 && nb_tensor_item(mall) == 11.5, "mean all keepdim value");
    nb_tensor *st = nb_sum_to(x234, NB_SHAPE(3, 1)); /* j -> sum over i,k */
    CHECK(st && nb_tensor_dim(st, 0) == 3 && nb_tensor_dim(st, 1) == 1 && nb_tensor_get(st, 2) == 124,
          "sum_to [3,1] values");
    /* permute and broadcast_to element mapping */
    nb_tensor *p = nb_permute(x234, NB_AXES(2, 0, 1)); /* p[k,i,j] = x[i,j,k] */
    CHECK(p && nb_tensor_dim(p, 0) == 4 && nb_tensor_get(p, 1 * 6 + 1 * 3 + 2) == 12 + 8 + 1, "permute values");
    nb_tensor *tr = nb_transpose(x234, 0, 2); /* tr[k,j,i] = x[i,j,k] */
    CHECK(tr && nb_tensor_get(tr, 3 * 6 + 1 * 2 + 1) == 12 + 4 + 3, "transpose values");
    nb_tensor *bc = nb_broadcast_to(b31, NB_SHAPE(2, 3, 4));
    CHECK(bc && nb_tensor_get(bc, 1 * 12 + 2 * 4 + 3) == nb_tensor_get(b31, 2), "broadcast_to values");
    /* cast f64 -> f64 is an exact copy; f64 -> f32 rounds */
    nb_tensor *c64 = nb_cast(a23, NB_F64);
    CHECK(c64 && nb_tensor_dtype(c64) == NB_F64 && same_values(c64, a23), "cast f64->f64 is the identity");
    nb_tensor *c32 = nb_cast(a23, NB_F32);
    CHECK(c32 && nb_tensor_dtype(c32) == NB_F32 && nb_tensor_get(c32, 4) == (double)(float)nb_tensor_get(a23, 4),
          "cast f64->f32 rounds to nearest float");
    CHECK_NO_ERROR();

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *leaves[] = {a23, b3, a214, b31, s0, pos, ext, kx, x, A, At, B, Bt, iota};
    for (size_t i = 0; i < sizeof leaves / sizeof leaves[0]; i++) nb_tensor_free(leaves[i]);
}

/* ---- the checker can fail --------------------------------------------------------------------- */

static void negative_control(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 99);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), 0.5, 1.5, &rng);
    nb_tensor_set_requires_grad(x, 1);

    /* Rounding to float32 and back: the analytic derivative is exactly 1, the central difference with a
     * step of 1e-6 sees float32 steps of about 1e-7 and is off by several percent. With tight
     * tolerances the checker must report the disagreement. */
    nb_gradcheck_opts tight = {.eps = 1e-6, .atol = 1e-12, .rtol = 1e-12, .seed = 0};
    nb_gradcheck_report rep;
    nb_status st = nb_gradcheck(f_round_f32, NULL, 1, &x, &tight, &rep);
    CHECK(st == NB_ERR_NUMERIC, "negative control: status %s, expected NB_ERR_NUMERIC", nb_status_name(st));
    CHECK(rep.ok == 0 && rep.input[0].checked && rep.input[0].ok == 0, "negative control: report says ok");
    CHECK(rep.deterministic == 1 && rep.completed == 1, "negative control: the comparison ran, deterministically");
    CHECK(rep.input[0].analytic == 1.0, "negative control: analytic derivative %g, expected exactly 1",
          rep.input[0].analytic);
    CHECK(rep.input[0].max_abs_err > 1e-3, "negative control: max abs err %g is too small to be float32 noise",
          rep.input[0].max_abs_err);
    CHECK(strstr(rep.message, "analytic") != NULL, "negative control: message \"%s\"", rep.message);
    CHECK(nb_error_code() == NB_OK || nb_error_code() == NB_ERR_NUMERIC, "negative control: error state %s",
          nb_status_name(nb_error_code()));
    nb_error_clear();

    /* the same function passes with float32 tolerances: the failure above is the tolerance's doing */
    st = nb_gradcheck(f_round_f32, NULL, 1, &x, &f32_opts, &rep);
    CHECK(st == NB_OK && rep.ok, "round trip with float32 tolerances: %s", rep.message);
    nb_error_clear();

    /* and a default-tolerance check of the round trip fails as well: the defaults are float64-sized */
    st = nb_gradcheck(f_round_f32, NULL, 1, &x, NULL, &rep);
    CHECK(st == NB_ERR_NUMERIC && !rep.ok, "round trip with default tolerances: %s", nb_status_name(st));
    nb_error_clear();
    nb_tensor_free(x);
}

int main(void)
{
    for (int r = 0; r < N_ROWS; r++) run_row(r);
    forward_values();
    negative_control();
    return nbt_report("grad_ops");
}
