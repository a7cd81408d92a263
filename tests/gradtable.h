/* Table-driven float64 gradient checks, shared by test_grad_ops.c (the first op set) and
 * test_grad_primitives.c (the full primitive set): the functions under test of the first op set, how
 * a row describes its inputs, and the check of one row (counted with nbtest.h's CHECK). */
#ifndef GRADTABLE_H
#define GRADTABLE_H

#include "nbtest.h"

#include <stdint.h>

/* ---- row arguments ---------------------------------------------------------------------------- */

typedef struct axes_arg {
    int naxes;
    int axes[3];
    int keepdim;
    int correction; /* var / std */
} axes_arg;

typedef struct shape_arg {
    int ndim;
    int64_t shape[4];
} shape_arg;

typedef struct scalar_arg {
    double a, b;
} scalar_arg;

#define AX(...) (&(const axes_arg){__VA_ARGS__, 0})
#define SH(...) (&(const shape_arg){__VA_ARGS__})
#define SC(...) (&(const scalar_arg){__VA_ARGS__})

#define UNUSED_USER (void)user
#define ARG(type) ((const type *)user)

/* ---- the first op set ------------------------------------------------------------------------- */

static nb_tensor *f_add(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_add(in[0], in[1]); }
static nb_tensor *f_sub(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_sub(in[0], in[1]); }
static nb_tensor *f_mul(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_mul(in[0], in[1]); }
static nb_tensor *f_div(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_div(in[0], in[1]); }
static nb_tensor *f_add_scalar(void *user, nb_tensor *const *in) { return nb_add_scalar(in[0], ARG(scalar_arg)->a); }
static nb_tensor *f_mul_scalar(void *user, nb_tensor *const *in) { return nb_mul_scalar(in[0], ARG(scalar_arg)->a); }
static nb_tensor *f_rsub_scalar(void *user, nb_tensor *const *in) { return nb_rsub_scalar(ARG(scalar_arg)->a, in[0]); }
static nb_tensor *f_div_scalar(void *user, nb_tensor *const *in) { return nb_div_scalar(in[0], ARG(scalar_arg)->a); }
static nb_tensor *f_affine(void *user, nb_tensor *const *in)
{
    return nb_affine(in[0], ARG(scalar_arg)->a, ARG(scalar_arg)->b);
}
static nb_tensor *f_neg(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_neg(in[0]); }
static nb_tensor *f_exp(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_exp(in[0]); }
static nb_tensor *f_log(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_log(in[0]); }
static nb_tensor *f_tanh(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_tanh(in[0]); }
static nb_tensor *f_sigmoid(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_sigmoid(in[0]); }
static nb_tensor *f_relu(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_relu(in[0]); }
static nb_tensor *f_matmul(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_matmul(in[0], in[1]); }
/* arg: the flags, one of k_tn, k_nt, k_tt */
static nb_tensor *f_matmul_ex(void *user, nb_tensor *const *in)
{
    return nb_matmul_ex(in[0], in[1], *(const unsigned *)user);
}
static const unsigned k_tn = NB_TRANS_A, k_nt = NB_TRANS_B, k_tt = NB_TRANS_A | NB_TRANS_B;
static nb_tensor *f_sum(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_sum(in[0], a->naxes, a->axes, a->keepdim);
}
static nb_tensor *f_mean(void *user, nb_tensor *const *in)
{
    const axes_arg *a = user;
    return nb_mean(in[0], a->naxes, a->axes, a->keepdim);
}
static nb_tensor *f_sum_all(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_sum_all(in[0]); }
static nb_tensor *f_mean_all(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_mean_all(in[0]); }
static nb_tensor *f_sum_to(void *user, nb_tensor *const *in)
{
    return nb_sum_to(in[0], ARG(shape_arg)->ndim, ARG(shape_arg)->shape);
}
static nb_tensor *f_reshape(void *user, nb_tensor *const *in)
{
    return nb_reshape(in[0], ARG(shape_arg)->ndim, ARG(shape_arg)->shape);
}
static nb_tensor *f_broadcast_to(void *user, nb_tensor *const *in)
{
    return nb_broadcast_to(in[0], ARG(shape_arg)->ndim, ARG(shape_arg)->shape);
}
/* f64 -> f64: an identity that still records a cast node */
static nb_tensor *f_cast_f64(void *user, nb_tensor *const *in) { UNUSED_USER; return nb_cast(in[0], NB_F64); }

/* ---- inputs of a row -------------------------------------------------------------------------- */

typedef struct input_spec {
    int ndim;
    int64_t shape[4];
    double lo, hi;
    int alternate; /* negate every other element: values in [-hi,-lo] U [lo,hi], away from 0 */
    int constant;  /* does not require grad (held constant by the check) */
} input_spec;

/* uniform in [lo, hi] with the shape given by the remaining arguments; IN0: a scalar; ALT: alternating
 * signs; C: held constant */
#define IN(lo_, hi_, ...) {.ndim = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                           .shape = {__VA_ARGS__}, .lo = (lo_), .hi = (hi_)}
#define IN0(lo_, hi_) {.ndim = 0, .lo = (lo_), .hi = (hi_)}
#define INALT(lo_, hi_, ...) {.ndim = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                              .shape = {__VA_ARGS__}, .lo = (lo_), .hi = (hi_), .alternate = 1}
#define INC0(lo_, hi_) {.ndim = 0, .lo = (lo_), .hi = (hi_), .constant = 1}
#define INC(lo_, hi_, ...) {.ndim = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                            .shape = {__VA_ARGS__}, .lo = (lo_), .hi = (hi_), .constant = 1}
#define INCALT(lo_, hi_, ...) {.ndim = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                               .shape = {__VA_ARGS__}, .lo = (lo_), .hi = (hi_), .alternate = 1, .constant = 1}

/* CURVED: non-zero second derivative; LINEAR: the gradient does not depend on the inputs */
enum { LINEAR = 0, CURVED = 1 };

static nb_tensor *make_input(const input_spec *s, nb_rng *rng)
{
    nb_tensor *t = nb_tensor_uniform(NB_F64, s->ndim, s->shape, s->lo, s->hi, rng);
    if (!t) return NULL;
    if (s->alternate)
        for (int64_t i = 1; i < nb_tensor_numel(t); i += 2) nb_tensor_set(t, i, -nb_tensor_get(t, i));
    if (!s->constant) nb_tensor_set_requires_grad(t, 1);
    return t;
}

/* the same float64 values, bit for bit */
static int same_values(const nb_tensor *a, const nb_tensor *b)
{
    if (nb_tensor_numel(a) != nb_tensor_numel(b)) return 0;
    return memcmp(nb_tensor_cdata(a), nb_tensor_cdata(b), (size_t)nb_tensor_numel(a) * sizeof(double)) == 0;
}

/* ---- the ops the rows record ------------------------------------------------------------------ */

/* Names of the ops (nb_tape_node_op) that the functions under test recorded while gradtable_check ran
 * them: the registry check (test_grad_primitives.c) requires every op with a backward rule among them. */
#define GRADTABLE_MAX_SEEN 256
static const char *gradtable_seen[GRADTABLE_MAX_SEEN];
static int gradtable_n_seen;

static int gradtable_was_seen(const char *name)
{
    for (int k = 0; k < gradtable_n_seen; k++)
        if (!strcmp(gradtable_seen[k], name)) return 1;
    return 0;
}

typedef struct gradtable_noting {
    nb_func f;
    const void *arg;
} gradtable_noting;

/* the row's function, noting the ops it records on the check's tape */
static nb_tensor *gradtable_noting_f(void *user, nb_tensor *const *in)
{
    const gradtable_noting *w = user;
    nb_tape *t = nb_tape_current();
    size_t n0 = nb_tape_node_count(t);
    nb_tensor *y = w->f((void *)w->arg, in);
    for (size_t i = n0; i < nb_tape_node_count(t); i++) {
        const char *name = nb_tape_node_op(t, i);
        if (name && !gradtable_was_seen(name) && gradtable_n_seen < GRADTABLE_MAX_SEEN)
            gradtable_seen[gradtable_n_seen++] = name; /* op names are static strings */
    }
    return y;
}

/* Ops whose rows live in the table of test_grad_everyday.c (which requires them recorded there, by
 * gradtable_require); test_grad_primitives.c counts them as covered. */
static const char *const gradtable_everyday_ops[] = {"flip", "cumsum", "cumprod", "linear_recurrence"};
#define GRADTABLE_N_EVERYDAY ((int)(sizeof gradtable_everyday_ops / sizeof gradtable_everyday_ops[0]))
/* Likewise the convolution, pooling and channel-normalisation ops, whose grid is test_conv.c's. */
static const char *const gradtable_cnn_ops[] = {"conv2d",      "conv_transpose2d",    "conv2d_weight",
                                                "max_pool2d",  "avg_pool2d",          "avg_pool2d_backward",
                                                "channel_moments", "channel_norm",    "batch_norm",
                                                "batch_norm_relu_max_pool2d"};
#define GRADTABLE_N_CNN ((int)(sizeof gradtable_cnn_ops / sizeof gradtable_cnn_ops[0]))

/* Every op in names was recorded by some row of this program's table. */
static inline void gradtable_require(const char *const *names, int n)
{
    for (int k = 0; k < n; k++)
        CHECK(gradtable_was_seen(names[k]), "op \"%s\" is listed as gradchecked by this table, but no row records "
              "it", names[k]);
}

/* ---- checking one row ------------------------------------------------------------------------- */

/* One row of a table, named `name`: n_in inputs drawn from in[] by a generator seeded with `seed`,
 * then nb_gradcheck and nb_gradgradcheck of f(arg) with opts (NULL: the defaults). Checks that both
 * pass deterministically, that exactly the inputs not held constant were checked, that a LINEAR row's
 * gradgradcheck error is exactly zero, and that the checks left the inputs as they were. Returns 1
 * when none of the row's checks failed. */
static int gradtable_check(const char *name, nb_func f, const void *arg, int n_in, const input_spec *in, int order,
                           const nb_gradcheck_opts *opts, uint64_t seed)
{
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    nb_tensor *x[4] = {0}, *saved[4] = {0};
    for (int i = 0; i < n_in; i++) {
        x[i] = make_input(&in[i], &rng);
        saved[i] = nb_tensor_clone(x[i]);
    }
    CHECK_NO_ERROR();
    int failures = nbt_failures;

    nb_gradcheck_report rep;
    gradtable_noting w = {f, arg};
    nb_status st = nb_gradcheck(gradtable_noting_f, &w, n_in, x, opts, &rep);
    CHECK(st == NB_OK && rep.ok && rep.deterministic, "gradcheck %s: %s", name, nb_status_name(st));
    if (st != NB_OK || !rep.ok) {
        fprintf(stderr, "  row \"%s\": %s\n", name, nb_error_message());
        nb_gradcheck_report_print(&rep, stderr);
    }
    for (int i = 0; i < n_in; i++)
        CHECK(rep.input[i].checked == !in[i].constant, "gradcheck %s: input %d checked=%d", name, i,
              rep.input[i].checked);
    nb_error_clear();

    st = nb_gradgradcheck(gradtable_noting_f, &w, n_in, x, opts, &rep);
    CHECK(st == NB_OK && rep.ok && rep.deterministic, "gradgradcheck %s: %s", name, nb_status_name(st));
    if (st != NB_OK || !rep.ok) {
        fprintf(stderr, "  row \"%s\": %s\n", name, nb_error_message());
        nb_gradcheck_report_print(&rep, stderr);
    }
    if (order == LINEAR && st == NB_OK) {
        /* the gradient does not depend on the inputs: both Jacobians of it are exactly zero */
        for (int i = 0; i < n_in; i++)
            if (rep.input[i].checked)
                CHECK(rep.input[i].max_abs_err == 0.0, "gradgradcheck %s: linear op, input %d has error %g", name, i,
                      rep.input[i].max_abs_err);
    }
    nb_error_clear();

    for (int i = 0; i < n_in; i++) {
        CHECK(same_values(x[i], saved[i]), "%s: input %d not restored by the checks", name, i);
        nb_tensor_free(x[i]);
        nb_tensor_free(saved[i]);
    }
    return nbt_failures == failures;
}

#endif
