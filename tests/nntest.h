/* Helpers shared by the nn tests written after test_nn.c (test_nn_bidir.c, test_nn_losses.c,
 * test_nn_init.c): f64 leaves, parameter lists for gradcheck, flattening several outputs into one,
 * and gradcheck calls that count as checks. Include after nbtest.h. */
#ifndef NNTEST_H
#define NNTEST_H

#include "nbtest.h"

#include <stdlib.h>

static const nb_layer_opts NNT_F64 = {.dtype = NB_F64};

/* A caller-owned f64 leaf ~ U(lo, hi) that requires grad. */
static inline nb_tensor *nnt_leaf_u(nb_rng *rng, double lo, double hi, int ndim, const int64_t *shape)
{
    nb_tensor *t = nb_tensor_uniform(NB_F64, ndim, shape, lo, hi, rng);
    nb_tensor_set_requires_grad(t, 1);
    return t;
}
#define NNT_LEAF(rng, lo, hi, ...) nnt_leaf_u(rng, lo, hi, NB_SHAPE(__VA_ARGS__))

/* A caller-owned f64 leaf holding data, requiring grad when grad is set. */
static inline nb_tensor *nnt_leaf_data(int ndim, const int64_t *shape, const double *data, int grad)
{
    nb_tensor *t = nb_tensor_from_data(NB_F64, ndim, shape, data);
    if (grad) nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* Overwrite a leaf (a parameter) with U(lo, hi). */
static inline void nnt_randomize(nb_tensor *t, nb_rng *rng, double lo, double hi)
{
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) nb_tensor_set(t, i, lo + (hi - lo) * nb_rng_uniform(rng));
}

/* The trainable tensors of p appended to in[*n]. */
static inline void nnt_add_params(const nb_params *p, nb_tensor **in, int *n)
{
    for (int i = 0; i < nb_params_count(p); i++)
        if (nb_params_trainable(p, i)) in[(*n)++] = nb_params_tensor(p, i);
}

/* Several outputs as one 1-D tensor (gradcheck takes one output). */
static inline nb_tensor *nnt_cat_flat(int n, nb_tensor *const *ts)
{
    nb_tensor *flat[8];
    for (int i = 0; i < n && i < 8; i++) flat[i] = nb_reshape(ts[i], NB_SHAPE(-1));
    return nb_concat(n, flat, 0);
}

/* max |a - b| over the elements; INFINITY when the shapes differ or either is NULL; NaN propagates. */
static inline double nnt_max_diff(const nb_tensor *a, const nb_tensor *b)
{
    if (!a || !b || nb_tensor_ndim(a) != nb_tensor_ndim(b) ||
        memcmp(nb_tensor_shape(a), nb_tensor_shape(b), (size_t)nb_tensor_ndim(a) * sizeof(int64_t)))
        return INFINITY;
    double m = 0;
    for (int64_t i = 0; i < nb_tensor_numel(a); i++) {
        double d = fabs(nb_tensor_get(a, i) - nb_tensor_get(b, i));
        if (!(d <= m)) m = d;
    }
    return m;
}

static inline int nnt_same_shape(const nb_tensor *t, int ndim, const int64_t *shape)
{
    return t && nb_tensor_ndim(t) == ndim && !memcmp(nb_tensor_shape(t), shape, (size_t)ndim * sizeof(int64_t));
}
#define NNT_SHAPE_IS(t, ...) nnt_same_shape(t, NB_SHAPE(__VA_ARGS__))

/* nb_gradcheck (second = 0) or nb_gradgradcheck (1) with PyTorch's default tolerances; every input
 * that requires grad must be checked. */
static inline void nnt_gradcheck(const char *what, nb_func f, void *user, int n, nb_tensor *const *in, int second)
{
    nb_gradcheck_report rep;
    nb_error_clear();
    nb_status st = second ? nb_gradgradcheck(f, user, n, in, NULL, &rep) : nb_gradcheck(f, user, n, in, NULL, &rep);
    CHECK(st == NB_OK && rep.ok && rep.completed && rep.deterministic, "%s %s: %s (%s)",
          second ? "gradgradcheck" : "gradcheck", what, rep.message, nb_error_message());
    if (st != NB_OK) nb_gradcheck_report_print(&rep, stderr);
    for (int i = 0; i < n; i++)
        if (nb_tensor_requires_grad(in[i])) CHECK(rep.input[i].checked, "%s: input %d was not checked", what, i);
    nb_error_clear();
}
#define NNT_GRADCHECK(what, f, user, n, in) nnt_gradcheck(what, f, user, n, in, 0)
#define NNT_GRADGRADCHECK(what, f, user, n, in) nnt_gradcheck(what, f, user, n, in, 1)

#endif
