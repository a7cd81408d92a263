/* Bad input to the full primitive set: shapes that do not fit, axes and indices out of range, dtypes
 * that do not match. Every case must fail with the right status and a message that names the public
 * function called and the shapes involved, and nothing may crash: the suite also runs under
 * AddressSanitizer and UndefinedBehaviorSanitizer. The cases whose failure mode was a crash or
 * undefined behaviour run in a child process, so that one of them failing that way is reported as a
 * failed check instead of ending the program. */
#define _POSIX_C_SOURCE 200809L

#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int n_cases;

/* CHECK_ERROR, counted */
#define ERR(failed, code, needle)                                                                      \
    do {                                                                                               \
        n_cases++;                                                                                     \
        CHECK_ERROR(failed, code, needle);                                                             \
    } while (0)

typedef struct fixture {
    nb_tensor *a23, *a4, *a5, *f2, *d2, *f23, *i3, *a234, *a345, *a35, *s0, *e20, *a8, *d22;
    nb_tensor *idx2, *idx_neg, *idx22, *idx33, *idx_bad;
} fixture;

static void fixture_make(fixture *x)
{
    x->a23 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3));
    x->a4 = nb_tensor_ones(NB_F64, NB_SHAPE(4));
    x->a5 = nb_tensor_ones(NB_F64, NB_SHAPE(5));
    x->f2 = nb_tensor_ones(NB_F32, NB_SHAPE(2));
    x->d2 = nb_tensor_ones(NB_F64, NB_SHAPE(2));
    x->f23 = nb_tensor_ones(NB_F32, NB_SHAPE(2, 3));
    x->i3 = nb_tensor_zeros(NB_I64, NB_SHAPE(3));
    x->a234 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3, 4));
    x->a345 = nb_tensor_ones(NB_F64, NB_SHAPE(3, 4, 5));
    x->a35 = nb_tensor_ones(NB_F64, NB_SHAPE(3, 5));
    x->s0 = nb_tensor_ones(NB_F64, 0, NULL);
    x->e20 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 0));
    x->a8 = nb_tensor_ones(NB_F64, NB_SHAPE(1, 1, 1, 1, 1, 1, 1, 1));
    x->d22 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 2));
    x->idx2 = nb_tensor_from_data(NB_I64, NB_SHAPE(2), (const int64_t[]){0, 5});
    x->idx_neg = nb_tensor_from_data(NB_I64, NB_SHAPE(2), (const int64_t[]){-1, 0});
    x->idx22 = nb_tensor_from_data(NB_I64, NB_SHAPE(2, 2), (const int64_t[]){0, 1, 1, 0});
    x->idx33 = nb_tensor_zeros(NB_I64, NB_SHAPE(3, 3));
    x->idx_bad = nb_tensor_from_data(NB_I64, NB_SHAPE(2, 2), (const int64_t[]){0, 1, 3, 0});
    CHECK_NO_ERROR();
}

static void fixture_free(fixture *x)
{
    nb_tensor **t = (nb_tensor **)x;
    for (size_t i = 0; i < sizeof *x / sizeof(nb_tensor *); i++) nb_tensor_free(t[i]);
}

/* ---- elementwise ------------------------------------------------------------------------------ */

typedef nb_tensor *(*unary_fn)(nb_tensor *);
static nb_tensor *u_leaky(nb_tensor *x) { return nb_leaky_relu(x, 0.1); }
static nb_tensor *u_elu(nb_tensor *x) { return nb_elu(x, 1.0); }
static nb_tensor *u_clamp(nb_tensor *x) { return nb_clamp(x, -1, 1); }
static nb_tensor *u_pow_scalar(nb_tensor *x) { return nb_pow_scalar(x, 2.0); }
static nb_tensor *u_sub_scalar(nb_tensor *x) { return nb_sub_scalar(x, 1.0); }

static void test_elementwise(fixture *x)
{
    /* binary: shapes that do not broadcast, dtypes that differ, i64, NULL */
    ERR(nb_pow(x->a23, x->a4) == NULL, NB_ERR_SHAPE, "nb_pow: [2,3] and [4]: shapes do not broadcast");
    ERR(nb_pow(x->f2, x->d2) == NULL, NB_ERR_DTYPE, "nb_pow: f32 [2] and f64 [2]: dtypes differ");
    ERR(nb_maximum(x->a23, x->a5) == NULL, NB_ERR_SHAPE, "nb_maximum: [2,3] and [5]: shapes do not broadcast");
    ERR(nb_maximum(x->d2, x->f2) == NULL, NB_ERR_DTYPE, "nb_maximum: f64 [2] and f32 [2]: dtypes differ");
    ERR(nb_pow(x->i3, x->i3) == NULL, NB_ERR_DTYPE, "nb_pow: i64 tensor [3]: expected f32 or f64");
    ERR(nb_minimum(NULL, x->a23) == NULL, NB_ERR_ARG, "nb_minimum: input a is NULL");

    /* unary and scalar forms: i64 input, named after the function called */
    static const struct {
        const char *name;
        unary_fn f;
    } un[] = {{"nb_sqrt", nb_sqrt},         {"nb_exp", nb_exp},       {"nb_log", nb_log},
              {"nb_sin", nb_sin},           {"nb_cos", nb_cos},       {"nb_erf", nb_erf},
              {"nb_log1p", nb_log1p},       {"nb_expm1", nb_expm1},   {"nb_softplus", nb_softplus},
              {"nb_gelu", nb_gelu},         {"nb_reciprocal", nb_reciprocal}, {"nb_square", nb_square},
              {"nb_leaky_relu", u_leaky},   {"nb_elu", u_elu},        {"nb_clamp", u_clamp},
              {"nb_pow_scalar", u_pow_scalar}, {"nb_sub_scalar", u_sub_scalar}};
    char needle[96];
    for (size_t i = 0; i < sizeof un / sizeof un[0]; i++) {
        snprintf(needle, sizeof needle, "%s: i64 tensor [3]: expected f32 or f64", un[i].name);
        ERR(un[i].f(x->i3) == NULL, NB_ERR_DTYPE, needle);
        snprintf(needle, sizeof needle, "%s: input is NULL", un[i].name);
        ERR(un[i].f(NULL) == NULL, NB_ERR_ARG, needle);
    }
    ERR(nb_clamp(x->a23, 1.0, -1.0) == NULL, NB_ERR_ARG, "nb_clamp: [2,3]: lo 1 > hi -1");
    ERR(nb_clamp(x->a23, 0.0, NAN) == NULL, NB_ERR_ARG, "nb_clamp: [2,3]: lo 0 > hi nan");

    /* where */
    ERR(nb_where(NULL, x->a23, x->a23) == NULL, NB_ERR_ARG, "nb_where: cond is NULL");
    ERR(nb_where(x->f23, x->a23, x->a23) == NULL, NB_ERR_DTYPE, "nb_where: cond f32 [2,3] and values f64");
    ERR(nb_where(x->a4, x->a23, x->a23) == NULL, NB_ERR_SHAPE, "nb_where: cond [4], a [2,3], b [2,3]: shapes do not broadcast");
    ERR(nb_where(x->a23, x->a23, x->a4) == NULL, NB_ERR_SHAPE, "nb_where: [2,3] and [4]: shapes do not broadcast");
    ERR(nb_where(x->a23, x->f23, x->a23) == NULL, NB_ERR_DTYPE, "nb_where: f32 [2,3] and f64 [2,3]: dtypes differ");
    ERR(nb_where(x->i3, x->a23, x->a23) == NULL, NB_ERR_DTYPE, "nb_where: cond i64 [3] and values f64");
}

/* ---- matmul, reductions ----------------------------------------------------------------------- */

static void test_matmul_reduce(fixture *x)
{
    ERR(nb_matmul(x->a234, x->a345) == NULL, NB_ERR_SHAPE, "nb_matmul: [2,3,4] x [3,4,5]: batch dimensions do not broadcast");
    ERR(nb_matmul(x->a4, x->a35) == NULL, NB_ERR_SHAPE, "nb_matmul: [4] x [3,5]: inner dimensions 4 and 3 differ");
    ERR(nb_matmul(x->a234, x->a5) == NULL, NB_ERR_SHAPE, "nb_matmul: [2,3,4] x [5]: inner dimensions 4 and 5 differ");
    ERR(nb_matmul(x->a4, x->a5) == NULL, NB_ERR_SHAPE, "nb_matmul: [4] x [5]: inner dimensions 4 and 5 differ");
    ERR(nb_matmul(x->s0, x->a4) == NULL, NB_ERR_SHAPE, "nb_matmul: [] x [4]: scalars have no matrix product");
    ERR(nb_matmul_ex(x->a4, x->a35, 0) == NULL, NB_ERR_SHAPE, "nb_matmul: [4] x [3,5]: nb_matmul_ex needs at least 2 dims");
    ERR(nb_matmul_ex(x->a234, x->a345, NB_TRANS_A) == NULL, NB_ERR_SHAPE,
        "nb_matmul: [2,3,4]^T x [3,4,5]: inner dimensions 3 and 4 differ");

    ERR(nb_max(x->a234, NB_AXES(3), 0) == NULL, NB_ERR_ARG, "nb_max: axis 3 out of range for [2,3,4]");
    ERR(nb_max(x->a234, NB_AXES(1, -2), 0) == NULL, NB_ERR_ARG, "nb_max: axis -2 repeated for [2,3,4]");
    ERR(nb_max(x->a234, -1, NULL, 0) == NULL, NB_ERR_ARG, "nb_max: -1 axes");
    ERR(nb_min(x->e20, NB_AXES(1), 0) == NULL, NB_ERR_SHAPE, "nb_min: [2,0] is empty along axis 1");
    ERR(nb_logsumexp(x->i3, 0, NULL, 0) == NULL, NB_ERR_DTYPE, "nb_logsumexp: i64 tensor [3]");
    ERR(nb_logsumexp(x->a234, NB_AXES(-4), 0) == NULL, NB_ERR_ARG, "nb_logsumexp: axis -4 out of range for [2,3,4]");
    ERR(nb_var(x->a234, NB_AXES(0), -1, 0) == NULL, NB_ERR_ARG, "nb_var: [2,3,4]: correction -1 is negative");
    ERR(nb_var(x->a234, NB_AXES(5), 1, 0) == NULL, NB_ERR_ARG, "nb_var: axis 5 out of range for [2,3,4]");
    ERR(nb_argmax(x->a234, 3, 0) == NULL, NB_ERR_ARG, "nb_argmax: axis 3 out of range for [2,3,4]");
    ERR(nb_argmin(x->e20, 1, 0) == NULL, NB_ERR_SHAPE, "nb_argmin: [2,0] is empty along axis 1");
    ERR(nb_softmax(x->i3, 0) == NULL, NB_ERR_DTYPE, "nb_softmax: i64 tensor [3]");
    ERR(nb_softmax(x->a234, 3) == NULL, NB_ERR_ARG, "nb_softmax: axis 3 out of range for [2,3,4]");
    ERR(nb_log_softmax(x->a234, -4) == NULL, NB_ERR_ARG, "nb_log_softmax: axis -4 out of range for [2,3,4]");
    ERR(nb_softmax(x->s0, 0) == NULL, NB_ERR_ARG, "nb_softmax: axis 0 out of range for []");
    ERR(nb_log_softmax(x->i3, 0) == NULL, NB_ERR_DTYPE, "nb_log_softmax: i64 tensor [3]");
}

/* ---- shape and indexing ----------------------------------------------------------------------- */

static void test_shape_index(fixture *x)
{
    nb_tensor *outs[4] = {x->a23, x->a23, x->a23, x->a23};

    ERR(nb_slice(x->a234, 3, 0, 1, 1) == NULL, NB_ERR_ARG, "nb_slice: axis 3 out of range for [2,3,4]");
    ERR(nb_slice(x->a234, 1, 0, 2, 0) == NULL, NB_ERR_ARG, "nb_slice: step 0 along axis 1 of [2,3,4]: must be positive");
    ERR(nb_slice(x->a234, -1, 3, 0, -1) == NULL, NB_ERR_ARG, "nb_slice: step -1 along axis -1 of [2,3,4]");
    ERR(nb_slice(x->s0, 0, 0, 1, 1) == NULL, NB_ERR_ARG, "nb_slice: axis 0 out of range for []");

    ERR(nb_concat(2, (nb_tensor *[]){x->a23, x->a4}, 0) == NULL, NB_ERR_SHAPE,
        "nb_concat: input 1 [4] does not match [2,3] outside axis 0");
    ERR(nb_concat(2, (nb_tensor *[]){x->a234, x->a23}, 1) == NULL, NB_ERR_SHAPE,
        "nb_concat: input 1 [2,3] does not match [2,3,4] outside axis 1");
    ERR(nb_concat(2, (nb_tensor *[]){x->a23, x->f23}, 0) == NULL, NB_ERR_DTYPE,
        "nb_concat: input 1 is f32 [2,3], input 0 is f64 [2,3]");
    ERR(nb_concat(2, (nb_tensor *[]){x->a23, x->a23}, 2) == NULL, NB_ERR_ARG, "nb_concat: axis 2 out of range for [2,3]");
    ERR(nb_concat(2, (nb_tensor *[]){x->s0, x->s0}, 0) == NULL, NB_ERR_SHAPE, "nb_concat: input 0 is 0-d");
    ERR(nb_concat(2, (nb_tensor *[]){x->a23, NULL}, 0) == NULL, NB_ERR_ARG, "nb_concat: input 1 is NULL");
    ERR(nb_concat(0, (nb_tensor *[]){x->a23}, 0) == NULL, NB_ERR_ARG, "nb_concat: 0 inputs");

    ERR(nb_stack(2, (nb_tensor *[]){x->a23, x->a4}, 0) == NULL, NB_ERR_SHAPE, "nb_stack: input 1 [4] does not match input 0 [2,3]");
    ERR(nb_stack(2, (nb_tensor *[]){x->a23, x->f23}, 0) == NULL, NB_ERR_DTYPE, "nb_stack: input 1 is f32 [2,3], input 0 is f64 [2,3]");
    ERR(nb_stack(2, (nb_tensor *[]){x->a23, x->a23}, 3) == NULL, NB_ERR_ARG, "nb_stack: axis 3 out of range for stacking [2,3]");
    ERR(nb_stack(2, (nb_tensor *[]){x->a8, x->a8}, 0) == NULL, NB_ERR_SHAPE,
        "nb_stack: inputs [1,1,1,1,1,1,1,1] already have the most dimensions, 8");

    ERR(nb_split(x->a23, 1, 2, (const int64_t[]){1, 1}, outs) != NB_OK, NB_ERR_SHAPE,
        "nb_split: sizes sum to 2, not to the extent 3 of [2,3] along axis 1");
    CHECK(outs[0] == NULL && outs[1] == NULL, "a failed nb_split sets its outputs to NULL");
    ERR(nb_split(x->a23, 1, 2, (const int64_t[]){-1, 4}, outs) != NB_OK, NB_ERR_SHAPE,
        "nb_split: size -1 of piece 0 does not fit");
    ERR(nb_split(x->a23, 2, 1, (const int64_t[]){2}, outs) != NB_OK, NB_ERR_ARG, "nb_split: axis 2 out of range for [2,3]");
    ERR(nb_split(x->a23, 0, 1, (const int64_t[]){2}, NULL) != NB_OK, NB_ERR_ARG, "nb_split: outs is NULL");
    ERR(nb_chunk(x->a23, 0, 0, outs) < 0, NB_ERR_ARG, "nb_chunk: [2,3] into 0 pieces");
    ERR(nb_chunk(x->a23, 2, 5, outs) < 0, NB_ERR_ARG, "nb_chunk: axis 5 out of range for [2,3]");

    ERR(nb_squeeze(x->a23, 0) == NULL, NB_ERR_SHAPE, "nb_squeeze: axis 0 of [2,3] has extent 2, not 1");
    ERR(nb_squeeze(x->a23, 2) == NULL, NB_ERR_ARG, "nb_squeeze: axis 2 out of range for [2,3]");
    ERR(nb_unsqueeze(x->a23, 3) == NULL, NB_ERR_ARG, "nb_unsqueeze: axis 3 out of range for inserting into [2,3]");
    ERR(nb_unsqueeze(x->a23, -4) == NULL, NB_ERR_ARG, "nb_unsqueeze: axis -4 out of range for inserting into [2,3]");
    ERR(nb_unsqueeze(x->a8, 0) == NULL, NB_ERR_SHAPE, "nb_unsqueeze: [1,1,1,1,1,1,1,1] already has the most dimensions, 8");

    ERR(nb_pad(x->a23, (const int64_t[]){1, -1, 0, 0}, 0) == NULL, NB_ERR_ARG, "nb_pad: pads 1, -1 of dim 0 of [2,3]: expected >= 0");
    ERR(nb_pad(x->a23, NULL, 0) == NULL, NB_ERR_ARG, "nb_pad: pads is NULL for [2,3]");
    ERR(nb_pad(x->i3, (const int64_t[]){1, 1}, 0.5) == NULL, NB_ERR_ARG, "nb_pad: value 0.5 is not an i64 for [3]");

    ERR(nb_index_select(x->a23, 0, x->idx22) == NULL, NB_ERR_SHAPE, "nb_index_select: idx [2,2] must be 1-D (indexing [2,3])");
    ERR(nb_index_select(x->a23, 0, x->idx2) == NULL, NB_ERR_ARG,
        "nb_index_select: index 5 out of range for extent 2 of [2,3] along axis 0");
    ERR(nb_index_select(x->a23, 1, x->idx_neg) == NULL, NB_ERR_ARG,
        "nb_index_select: index -1 out of range for extent 3 of [2,3] along axis 1");
    ERR(nb_index_select(x->a23, 0, x->d2) == NULL, NB_ERR_DTYPE, "nb_index_select: idx is f64 [2]: expected i64");
    ERR(nb_index_select(x->a23, 2, x->idx2) == NULL, NB_ERR_ARG, "nb_index_select: axis 2 out of range for [2,3]");

    ERR(nb_gather(x->a23, 1, x->idx2) == NULL, NB_ERR_SHAPE, "nb_gather: idx [2] does not fit input [2,3] outside axis 1");
    ERR(nb_gather(x->d22, 1, x->idx33) == NULL, NB_ERR_SHAPE, "nb_gather: idx [3,3] does not fit input [2,2] outside axis 1");
    ERR(nb_gather(x->a23, 1, x->idx_bad) == NULL, NB_ERR_ARG, "nb_gather: index 3 out of range for extent 3 of [2,3] along axis 1");
    ERR(nb_gather(x->a23, 0, x->idx_bad) == NULL, NB_ERR_ARG, "nb_gather: index 3 out of range for extent 2 of [2,3] along axis 0");
    ERR(nb_gather(x->a23, 1, x->d22) == NULL, NB_ERR_DTYPE, "nb_gather: idx is f64 [2,2]: expected i64");
    ERR(nb_gather(x->a23, -3, x->idx22) == NULL, NB_ERR_ARG, "nb_gather: axis -3 out of range for [2,3]");

    ERR(nb_scatter_add(NB_SHAPE(2, 3), 1, x->idx22, x->a23) == NULL, NB_ERR_SHAPE,
        "nb_scatter_add: idx [2,2] and src [2,3] differ in shape");
    ERR(nb_scatter_add(NB_SHAPE(2, 3), 1, x->idx_bad, x->d22) == NULL, NB_ERR_ARG,
        "nb_scatter_add: index 3 out of range for extent 3 of [2,3] along axis 1");
    ERR(nb_scatter_add(NB_SHAPE(2, 3), 2, x->idx22, x->d22) == NULL, NB_ERR_ARG, "nb_scatter_add: axis 2 out of range for [2,3]");
    ERR(nb_scatter_add(NB_SHAPE(2, 3), 1, x->idx22, x->idx22) == NULL, NB_ERR_DTYPE,
        "nb_scatter_add: i64 tensor [2,2]: expected f32 or f64");
    ERR(nb_scatter_add(NB_SHAPE(2, -3), 1, x->idx22, x->d22) == NULL, NB_ERR_SHAPE, "nb_scatter_add: target [2,-3] has a negative extent");
    ERR(nb_scatter_add(0, NULL, 0, x->idx22, x->d22) == NULL, NB_ERR_SHAPE, "nb_scatter_add: target of 0 dimensions");
    nb_tensor *o33 = nb_ones(NB_F64, NB_SHAPE(3, 3));
    ERR(nb_scatter_add(NB_SHAPE(2, 3), 1, x->idx33, o33) == NULL, NB_ERR_SHAPE,
        "nb_scatter_add: idx [3,3] does not fit target [2,3] outside axis 1");

    ERR(nb_one_hot(x->idx2, 3, NB_F64) == NULL, NB_ERR_ARG, "nb_one_hot: label 5 at flat position 1 of [2] out of range for 3 classes");
    ERR(nb_one_hot(x->idx_neg, 3, NB_F32) == NULL, NB_ERR_ARG, "nb_one_hot: label -1 at flat position 0 of [2]");
    ERR(nb_one_hot(x->d2, 3, NB_F64) == NULL, NB_ERR_DTYPE, "nb_one_hot: labels are f64 [2]: expected i64");
    ERR(nb_one_hot(x->idx22, 0, NB_F64) == NULL, NB_ERR_ARG, "nb_one_hot: 0 classes for labels [2,2]");
    ERR(nb_one_hot(x->idx22, INT64_MAX, NB_F64) == NULL, NB_ERR_SHAPE, "nb_one_hot: [2,2,9223372036854775807]: too many elements");

    nb_rng rng;
    nb_rng_seed(&rng, 1);
    ERR(nb_dropout_mask(NB_F64, NB_SHAPE(2, 3), 1.5, &rng) == NULL, NB_ERR_ARG, "nb_dropout_mask: p = 1.5 is not in [0, 1]");
    ERR(nb_dropout_mask(NB_F64, NB_SHAPE(2, 3), NAN, &rng) == NULL, NB_ERR_ARG, "nb_dropout_mask: p = nan is not in [0, 1]");
    ERR(nb_dropout_mask(NB_F64, NB_SHAPE(2, 3), 0.5, NULL) == NULL, NB_ERR_ARG, "nb_dropout_mask: rng is NULL");
    ERR(nb_dropout_mask(NB_I64, NB_SHAPE(2, 3), 0.5, &rng) == NULL, NB_ERR_DTYPE, "nb_dropout_mask: dtype i64 is not f32 or f64");
    ERR(nb_dropout(NULL, 0.5, &rng) == NULL, NB_ERR_ARG, "nb_dropout: input is NULL");

    /* fused recurrent steps: gates [..., 4H] (GRU: 3H) against c / h [..., H] */
    ERR(nb_lstm_gates(NULL, x->a23) == NULL, NB_ERR_ARG, "nb_lstm_gates: gates is NULL");
    ERR(nb_lstm_gates(x->a234, NULL) == NULL, NB_ERR_ARG, "nb_lstm_gates: c is NULL");
    ERR(nb_lstm_gates(x->a234, x->a23) == NULL, NB_ERR_SHAPE,
        "nb_lstm_gates: gates [2,3,4] and c [2,3]: expected [..., 4H] and [..., H] with the same leading dims");
    ERR(nb_lstm_gates(x->a23, x->d22) == NULL, NB_ERR_SHAPE, "nb_lstm_gates: gates [2,3] and c [2,2]");
    ERR(nb_lstm_gates(x->f23, x->a23) == NULL, NB_ERR_DTYPE, "nb_lstm_gates: gates f32 [2,3] and c f64 [2,3]: dtypes differ");
    ERR(nb_lstm_gates(x->i3, x->i3) == NULL, NB_ERR_DTYPE, "nb_lstm_gates: i64 tensor [3]");
    ERR(nb_lstm_gates(x->a8, x->a8) == NULL, NB_ERR_SHAPE, "nb_lstm_gates:");
    ERR(nb_gru_gates(x->a23, x->a23, NULL) == NULL, NB_ERR_ARG, "nb_gru_gates: h is NULL");
    ERR(nb_gru_gates(x->a23, x->a234, x->d2) == NULL, NB_ERR_SHAPE, "nb_gru_gates: xg [2,3] and h [2]: expected [..., 3H]");
    ERR(nb_gru_gates(x->a23, x->a35, x->a23) == NULL, NB_ERR_SHAPE, "nb_gru_gates: xg [2,3] and h [2,3]");
    nb_tensor *h21 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 1));
    ERR(nb_gru_gates(x->a23, x->f23, h21) == NULL, NB_ERR_DTYPE, "nb_gru_gates: hg f32 [2,3] and h f64 [2,1]: dtypes differ");
    nb_tensor_free(h21);
}

/* ---- composed ops: the message names the function that was called ----------------------------- */

/* These ops are built from other public ops; a bad argument is caught by the inner op. The message
 * should still name the function the caller used (and the shapes). */
static void test_composed_names(fixture *x)
{
    nb_rng rng;
    nb_rng_seed(&rng, 2);
    ERR(nb_rdiv_scalar(2.0, x->i3) == NULL, NB_ERR_DTYPE, "nb_rdiv_scalar: i64 tensor [3]");
    ERR(nb_std(x->a234, NB_AXES(5), 1, 0) == NULL, NB_ERR_ARG, "nb_std: axis 5 out of range for [2,3,4]");
    ERR(nb_dropout(x->a23, 1.5, &rng) == NULL, NB_ERR_ARG, "nb_dropout:");
    ERR(nb_dropout(x->i3, 0.5, &rng) == NULL, NB_ERR_DTYPE, "nb_dropout: i64 tensor [3]");
}

/* ---- everyday ops and integer tensors --------------------------------------------------------- */

/* A call given NULL returns NULL and keeps the first message: `first` failed before it. */
#define STICKY(first, call, first_needle)                                                              \
    do {                                                                                               \
        n_cases++;                                                                                     \
        nb_error_clear();                                                                              \
        int nbt_first_failed = (first) == NULL;                                                        \
        nb_tensor *nbt_r = (call);                                                                     \
        CHECK(nbt_first_failed && nbt_r == NULL && strstr(nb_error_message(), first_needle),           \
              "%s after a failed %s: result %p, message \"%s\"", #call, #first, (void *)nbt_r,          \
              nb_error_message());                                                                     \
        nb_error_clear();                                                                              \
    } while (0)

static void test_everyday(fixture *x)
{
    nb_tensor *i23 = nb_tensor_zeros(NB_I64, NB_SHAPE(2, 3));
    nb_tensor *e = NULL;

    /* integers: the ops that refuse i64, and i64 mixed with floats */
    ERR(nb_div(x->i3, x->i3) == NULL, NB_ERR_DTYPE, "nb_div: i64 tensor [3]: expected f32 or f64");
    ERR(nb_mean(x->i3, 0, NULL, 0) == NULL, NB_ERR_DTYPE,
        "nb_mean: i64 tensor [3]: the mean of integers is not an integer (nb_sum counts; nb_cast to f64 first");
    ERR(nb_add(x->i3, x->d2) == NULL, NB_ERR_DTYPE, "nb_add: i64 [3] and f64 [2]: dtypes differ");
    ERR(nb_eq(x->i3, x->a4) == NULL, NB_ERR_DTYPE, "nb_eq: i64 [3] and f64 [4]: dtypes differ");
    ERR(nb_eq(x->idx2, i23) == NULL, NB_ERR_SHAPE, "nb_eq: [2] and [2,3]: shapes do not broadcast");
    ERR(nb_mul(i23, x->idx2) == NULL, NB_ERR_SHAPE, "nb_mul: [2,3] and [2]: shapes do not broadcast");
    ERR(nb_add_scalar(x->i3, 1.0) == NULL, NB_ERR_DTYPE, "nb_add_scalar: i64 tensor [3]: expected f32 or f64");
    ERR(nb_max(i23, NB_AXES(2), 0) == NULL, NB_ERR_ARG, "nb_max: axis 2 out of range for [2,3]");
    ERR(nb_argmax(i23, -3, 0) == NULL, NB_ERR_ARG, "nb_argmax: axis -3 out of range for [2,3]");
    ERR(nb_where(x->i3, x->i3, x->a4) == NULL, NB_ERR_DTYPE, "nb_where: i64 [3] and f64 [4]: dtypes differ");

    /* flip, roll, repeat, tile */
    ERR(nb_flip(x->a234, NB_AXES(3)) == NULL, NB_ERR_ARG, "nb_flip: axis 3 out of range for [2,3,4]");
    ERR(nb_flip(x->a234, NB_AXES(0, -3)) == NULL, NB_ERR_ARG, "nb_flip: axis -3 repeated for [2,3,4]");
    ERR(nb_flip(NULL, NB_AXES(0)) == NULL, NB_ERR_ARG, "nb_flip: input is NULL");
    ERR(nb_roll(x->a234, 1, 3) == NULL, NB_ERR_ARG, "nb_roll: axis 3 out of range for [2,3,4]");
    ERR(nb_roll(x->s0, 1, 0) == NULL, NB_ERR_ARG, "nb_roll: axis 0 out of range for []");
    ERR(nb_repeat(x->a23, NB_SHAPE(2)) == NULL, NB_ERR_ARG, "nb_repeat: 1 repeat counts for [2,3]: need 2..8");
    ERR(nb_repeat(x->a23, NB_SHAPE(2, -1)) == NULL, NB_ERR_ARG, "nb_repeat: [2,3]: repeat count -1 for dim 1 is negative");
    ERR(nb_repeat(x->a23, 2, NULL) == NULL, NB_ERR_ARG, "nb_repeat: 2 repeat counts for [2,3]");
    ERR(nb_repeat(x->a23, NB_SHAPE((int64_t)1 << 40, (int64_t)1 << 30)) == NULL, NB_ERR_SHAPE,
        "nb_repeat: [2199023255552,3221225472]: too many elements");
    ERR(nb_tile(x->a23, NB_SHAPE(-2)) == NULL, NB_ERR_ARG, "nb_tile: [2,3]: repeat count -2 for dim 1 is negative");
    ERR(nb_tile(x->a23, 9, (const int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}) == NULL, NB_ERR_ARG,
        "nb_tile: 9 repeat counts for [2,3]: need 0..8");

    /* cumsum, cumprod, argsort, sort, topk */
    ERR(nb_cumsum(x->a234, -4) == NULL, NB_ERR_ARG, "nb_cumsum: axis -4 out of range for [2,3,4]");
    ERR(nb_cumsum(x->s0, 0) == NULL, NB_ERR_ARG, "nb_cumsum: axis 0 out of range for []");
    ERR(nb_cumprod(x->a23, 2) == NULL, NB_ERR_ARG, "nb_cumprod: axis 2 out of range for [2,3]");
    ERR(nb_cumprod(NULL, 0) == NULL, NB_ERR_ARG, "nb_cumprod: input is NULL");
    ERR(nb_argsort(x->a23, 2, 0) == NULL, NB_ERR_ARG, "nb_argsort: axis 2 out of range for [2,3]");
    ERR(nb_sort(x->a23, -3, 1, &e) == NULL && e == NULL, NB_ERR_ARG, "nb_sort: axis -3 out of range for [2,3]");
    ERR(nb_sort(x->s0, 0, 0, NULL) == NULL, NB_ERR_ARG, "nb_sort: axis 0 out of range for []");
    ERR(nb_topk(x->a234, 5, -1, 1, &e) == NULL && e == NULL, NB_ERR_ARG,
        "nb_topk: k = 5 for [2,3,4] along axis -1 of extent 4: need 0 <= k <= 4");
    ERR(nb_topk(x->a234, -1, 0, 0, NULL) == NULL, NB_ERR_ARG,
        "nb_topk: k = -1 for [2,3,4] along axis 0 of extent 2: need 0 <= k <= 2");
    ERR(nb_topk(x->a234, 1, 3, 1, NULL) == NULL, NB_ERR_ARG, "nb_topk: axis 3 out of range for [2,3,4]");

    /* masked_fill, triu, tril */
    ERR(nb_masked_fill(x->a23, x->a4, 0.0) == NULL, NB_ERR_SHAPE,
        "nb_masked_fill: mask [4] does not broadcast to the input's shape [2,3]");
    ERR(nb_masked_fill(x->a23, x->a234, 0.0) == NULL, NB_ERR_SHAPE,
        "nb_masked_fill: mask [2,3,4] does not broadcast to the input's shape [2,3]");
    ERR(nb_masked_fill(x->i3, x->i3, 0.5) == NULL, NB_ERR_ARG, "nb_masked_fill: value 0.5 is not an i64 for [3]");
    ERR(nb_masked_fill(x->a23, NULL, 0.0) == NULL, NB_ERR_ARG, "nb_masked_fill: mask is NULL");
    ERR(nb_triu(x->a4, 0) == NULL, NB_ERR_SHAPE, "nb_triu: [4]: needs at least 2 dims");
    ERR(nb_tril(x->s0, 1) == NULL, NB_ERR_SHAPE, "nb_tril: []: needs at least 2 dims");
    ERR(nb_tril(NULL, 0) == NULL, NB_ERR_ARG, "nb_tril: input is NULL");

    /* einsum: strings it cannot read, operands that do not fit them */
    nb_tensor *ab[2] = {x->a23, x->a35}, *aa[2] = {x->a23, x->a23}, *af[2] = {x->a23, x->f23};
    nb_tensor *ai[2] = {x->i3, x->i3}, *an[2] = {x->a23, NULL};
    ERR(nb_einsum("ij,j$->i", 2, ab) == NULL, NB_ERR_ARG, "nb_einsum: \"ij,j$->i\": bad character '$' in operand 1");
    ERR(nb_einsum("ij->i", 2, ab) == NULL, NB_ERR_ARG, "nb_einsum: \"ij->i\": 1 operand subscripts for 2 operands");
    ERR(nb_einsum("i,i,i", 3, (nb_tensor *[]){x->a4, x->a4, x->a4}) == NULL, NB_ERR_ARG,
        "nb_einsum: \"i,i,i\" with 3 operands: 1 or 2 are supported");
    ERR(nb_einsum("ijk,jk->ik", 2, ab) == NULL, NB_ERR_SHAPE,
        "nb_einsum: \"ijk,jk->ik\": operand 0 [2,3] has 2 dims, its subscripts name 3");
    ERR(nb_einsum("ij,jk->ik", 2, aa) == NULL, NB_ERR_SHAPE,
        "nb_einsum: \"ij,jk->ik\": subscript 'j' has extent 3 in operand 0 [2,3] and 2 in operand 1 [2,3]");
    ERR(nb_einsum("ij,jk->iz", 2, ab) == NULL, NB_ERR_ARG, "nb_einsum: \"ij,jk->iz\": output subscript 'z' is not in any operand");
    ERR(nb_einsum("ij,jk->ii", 2, ab) == NULL, NB_ERR_ARG, "nb_einsum: \"ij,jk->ii\": output subscript 'i' repeated");
    ERR(nb_einsum("ii->i", 1, &x->d22) == NULL, NB_ERR_ARG,
        "nb_einsum: \"ii->i\": subscript 'i' repeated in operand 0 (diagonals and traces are not supported)");
    ERR(nb_einsum("ij,jk->ik->i", 2, ab) == NULL, NB_ERR_ARG, "nb_einsum: \"ij,jk->ik->i\": more than one \"->\"");
    ERR(nb_einsum("ij,jk-ik", 2, ab) == NULL, NB_ERR_ARG, "nb_einsum: \"ij,jk-ik\": a '-' or '>' that is not part of \"->\"");
    ERR(nb_einsum("ij,jk->i,k", 2, ab) == NULL, NB_ERR_ARG, "nb_einsum: \"ij,jk->i,k\": one output only");
    ERR(nb_einsum("..ij", 1, &x->a23) == NULL, NB_ERR_ARG, "nb_einsum: \"..ij\": a '.' that is not part of \"...\" in operand 0");
    ERR(nb_einsum("...i...", 1, &x->a23) == NULL, NB_ERR_ARG, "nb_einsum: \"...i...\": operand 0 has more than one \"...\"");
    ERR(nb_einsum("ij,jk->ik", 2, af) == NULL, NB_ERR_DTYPE, "nb_einsum: \"ij,jk->ik\": operand 1 is f32 [2,3], operand 0 is f64 [2,3]");
    ERR(nb_einsum("i,i->", 2, ai) == NULL, NB_ERR_DTYPE, "nb_einsum: i64 tensor [3]: expected f32 or f64");
    ERR(nb_einsum("ij,jk->ik", 2, an) == NULL, NB_ERR_ARG, "nb_einsum: \"ij,jk->ik\": operand 1 is NULL");
    ERR(nb_einsum(NULL, 1, &x->a23) == NULL, NB_ERR_ARG, "nb_einsum: subscripts is NULL");
    ERR(nb_einsum("abcdefgh,ijk->abcdefghijk", 2, (nb_tensor *[]){x->a8, x->a345}) == NULL, NB_ERR_ARG,
        "nb_einsum: \"abcdefgh,ijk->abcdefghijk\": the output has more than 8 subscripts");
    /* empty operands with long dims whose outer product would have 2^70 elements */
    nb_tensor *big[2] = {nb_tensor_zeros(NB_F64, NB_SHAPE((int64_t)1 << 40, 0)),
                         nb_tensor_zeros(NB_F64, NB_SHAPE((int64_t)1 << 30, 0))};
    ERR(nb_einsum("ij,kl->ik", 2, big) == NULL, NB_ERR_SHAPE, "nb_einsum: [1099511627776,1073741824]: too many elements");
    nb_tensor_free(big[0]);
    nb_tensor_free(big[1]);
    ERR(nb_einsum("abcdefgh,ijk", 2, (nb_tensor *[]){x->a8, x->a345}) == NULL, NB_ERR_SHAPE,
        "nb_einsum: \"abcdefgh,ijk\": the output would have more than 8 dims");

    /* NULL in, NULL out, the first message kept */
    nb_tensor *bad = x->a234;
#define FIRST nb_flip(bad, NB_AXES(7))
    STICKY(FIRST, nb_roll(NULL, 1, 0), "nb_flip: axis 7");
    STICKY(FIRST, nb_repeat(NULL, NB_SHAPE(2)), "nb_flip: axis 7");
    STICKY(FIRST, nb_tile(NULL, NB_SHAPE(2)), "nb_flip: axis 7");
    STICKY(FIRST, nb_cumsum(NULL, 0), "nb_flip: axis 7");
    STICKY(FIRST, nb_cumprod(NULL, 0), "nb_flip: axis 7");
    STICKY(FIRST, nb_argsort(NULL, 0, 0), "nb_flip: axis 7");
    STICKY(FIRST, nb_sort(NULL, 0, 0, NULL), "nb_flip: axis 7");
    STICKY(FIRST, nb_topk(NULL, 1, 0, 1, NULL), "nb_flip: axis 7");
    STICKY(FIRST, nb_masked_fill(NULL, x->a23, 0.0), "nb_flip: axis 7");
    STICKY(FIRST, nb_triu(NULL, 0), "nb_flip: axis 7");
    STICKY(FIRST, nb_einsum("ij->ji", 1, (nb_tensor *[]){NULL}), "nb_flip: axis 7");
    STICKY(nb_cumsum(bad, 9), nb_flip(NULL, 0, NULL), "nb_cumsum: axis 9");
    STICKY(nb_cumsum(bad, 9), nb_add(NULL, x->i3), "nb_cumsum: axis 9");
    STICKY(nb_cumsum(bad, 9), nb_sum_all(nb_eq(nb_argmax(NULL, 1, 0), x->i3)), "nb_cumsum: axis 9");
#undef FIRST
    nb_tensor_free(i23);
}

/* ---- custom ops, hooks, DOT export ------------------------------------------------------------ */

static nb_status fw_copy(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in;
    memcpy(nb_tensor_data(out), nb_tensor_cdata(in[0]), (size_t)nb_tensor_numel(out) * nb_dtype_size(nb_tensor_dtype(out)));
    return NB_OK;
}
static nb_status fw_fail_msg(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in, (void)in, (void)out;
    nb_error_set(NB_ERR_ARG, "myop: cannot handle %lld elements", (long long)nb_tensor_numel(out));
    return NB_ERR_ARG;
}
static nb_status fw_fail_silent(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in, (void)in, (void)out;
    return NB_ERR_UNSUPPORTED;
}
static nb_status bw_identity(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *g, nb_tensor **gin)
{
    (void)user, (void)n_in, (void)in, (void)out;
    gin[0] = g;
    return NB_OK;
}
static nb_status bw_none(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *g, nb_tensor **gin)
{
    (void)user, (void)n_in, (void)in, (void)out, (void)g, (void)gin;
    return NB_OK; /* forgets gin[0] */
}
static nb_status bw_error(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *g, nb_tensor **gin)
{
    (void)user, (void)n_in, (void)in, (void)out, (void)g, (void)gin;
    return NB_ERR_NUMERIC;
}
static nb_status bw_wrong_shape(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *g, nb_tensor **gin)
{
    (void)user, (void)n_in, (void)in, (void)out;
    gin[0] = nb_sum_all(g);
    return NB_OK;
}

static nb_tensor *keep_hook(nb_tensor *g, void *user)
{
    (void)user;
    return g;
}

static void test_custom_hooks_dot(fixture *x)
{
    static const nb_custom_op ok = {"myop", fw_copy, bw_identity, NULL, NULL};
    static const nb_custom_op no_backward = {"myop", fw_copy, NULL, NULL, NULL};
    static const nb_custom_op fails = {"myop", fw_fail_msg, bw_identity, NULL, NULL};
    static const nb_custom_op fails_silent = {"myop", fw_fail_silent, bw_identity, NULL, NULL};
    static const nb_custom_op no_grad = {"myop", fw_copy, bw_none, NULL, NULL};
    static const nb_custom_op bw_fails = {"myop", fw_copy, bw_error, NULL, NULL};
    static const nb_custom_op bw_shape = {"myop", fw_copy, bw_wrong_shape, NULL, NULL};
    nb_tensor *w = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3));
    nb_tensor_set_requires_grad(w, 1);
    nb_tensor *in17[17];
    for (int i = 0; i < 17; i++) in17[i] = w;

    ERR(nb_custom(NULL, 1, &w, NB_F64, NB_SHAPE(2, 3)) == NULL, NB_ERR_ARG, "nb_custom: the op needs a forward and a backward");
    ERR(nb_custom(&no_backward, 1, &w, NB_F64, NB_SHAPE(2, 3)) == NULL, NB_ERR_ARG, "nb_custom: the op needs a forward and a backward");
    ERR(nb_custom(&ok, 17, in17, NB_F64, NB_SHAPE(2, 3)) == NULL, NB_ERR_ARG, "nb_custom: myop: 17 inputs (0..16)");
    ERR(nb_custom(&ok, 2, (nb_tensor *[]){w, NULL}, NB_F64, NB_SHAPE(2, 3)) == NULL, NB_ERR_ARG, "nb_custom: myop: input 1 is NULL");
    ERR(nb_custom(&ok, 1, &w, NB_I64, NB_SHAPE(2, 3)) == NULL, NB_ERR_DTYPE, "nb_custom: myop: result dtype i64 is not f32 or f64");
    ERR(nb_custom(&fails, 1, &w, NB_F64, NB_SHAPE(2, 3)) == NULL, NB_ERR_ARG, "myop: cannot handle 6 elements");
    ERR(nb_custom(&fails_silent, 1, &w, NB_F64, NB_SHAPE(2, 3)) == NULL, NB_ERR_UNSUPPORTED,
        "nb_custom: the forward of myop failed (NB_ERR_UNSUPPORTED)");
    ERR(nb_backward(nb_sum_all(nb_custom(&no_grad, 1, &w, NB_F64, NB_SHAPE(2, 3))), NULL, 0) != NB_OK, NB_ERR_STATE,
        "the backward of custom op myop gave no gradient for input 0");
    ERR(nb_backward(nb_sum_all(nb_custom(&bw_fails, 1, &w, NB_F64, NB_SHAPE(2, 3))), NULL, 0) != NB_OK, NB_ERR_NUMERIC,
        "the backward of custom op myop failed (NB_ERR_NUMERIC)");
    ERR(nb_backward(nb_sum_all(nb_custom(&bw_shape, 1, &w, NB_F64, NB_SHAPE(2, 3))), NULL, 0) != NB_OK, NB_ERR_STATE,
        "gave f64 [] for input 0 of f64 [2,3]");
    CHECK(nb_tensor_grad(w) == NULL, "no failed backward stored a gradient");

    ERR(nb_tensor_set_hook(x->i3, keep_hook, NULL) != NB_OK, NB_ERR_DTYPE, "nb_tensor_set_hook: i64 tensor [3] has no gradient");
    ERR(nb_tensor_set_hook(NULL, keep_hook, NULL) != NB_OK, NB_ERR_ARG, "nb_tensor_set_hook: tensor is NULL");
    ERR(nb_tape_write_dot(nb_tape_current(), x->a23, stdout) != NB_OK, NB_ERR_ARG,
        "nb_tape_write_dot: output [2,3] was not recorded on this tape");
    ERR(nb_tape_write_dot(nb_tape_current(), NULL, NULL) != NB_OK, NB_ERR_ARG, "nb_tape_write_dot: tape or file is NULL");
    nb_tensor_free(w);
}

/* ---- sizes that overflow, shapes out of range: errors, not undefined behaviour ----------------- */

static void test_sizes(void)
{
    static const nb_custom_op ok = {"myop", fw_copy, bw_identity, NULL, NULL};
    nb_tensor *a23 = nb_tensor_ones(NB_F64, NB_SHAPE(2, 3));
    nb_tensor *i11 = nb_tensor_zeros(NB_I64, NB_SHAPE(1, 1));
    nb_tensor *s11 = nb_tensor_ones(NB_F64, NB_SHAPE(1, 1));
    const int64_t big = INT64_MAX / 4, e40 = (int64_t)1 << 40;
    ERR(nb_pad(a23, (const int64_t[]){big, 0, 0, 0}, 0) == NULL, NB_ERR_SHAPE, "nb_pad: [2305843009213693953,3]: too many elements");
    ERR(nb_scatter_add(NB_SHAPE(e40, e40), 0, i11, s11) == NULL, NB_ERR_SHAPE,
        "nb_scatter_add: [1099511627776,1099511627776]: too many elements");
    ERR(nb_scatter_add(NB_SHAPE(INT64_MAX, 2), 0, i11, s11) == NULL, NB_ERR_SHAPE, "nb_scatter_add: [9223372036854775807,2]: too many elements");
    ERR(nb_broadcast_to(a23, NB_SHAPE((int64_t)1 << 62, 2, 3)) == NULL, NB_ERR_SHAPE, "nb_broadcast_to: [4611686018427387904,2,3]: too many elements");
    ERR(nb_custom(&ok, 1, &a23, NB_F64, NB_SHAPE(2, -3)) == NULL, NB_ERR_SHAPE, "nb_custom: [2,-3]: extent -3 of dim 1 is negative");
    ERR(nb_custom(&ok, 1, &a23, NB_F64, 9, (const int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}) == NULL, NB_ERR_SHAPE,
        "nb_custom: 9 dimensions: expected 0..8");
    ERR(nb_custom(&ok, 1, &a23, NB_F64, 2, NULL) == NULL, NB_ERR_ARG, "nb_custom: shape is NULL for 2 dimensions");
    nb_tensor_free(a23);
    nb_tensor_free(i11);
    nb_tensor_free(s11);
}

/* Run fn on a fresh tape in a child process; a crash or a failed check there is a failed check here. */
static void isolated(const char *what, void (*fn)(void), int n_expected_cases)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        nb_tape *tape = nb_tape_new();
        nb_tape_begin(tape);
        fn();
        nb_tape_end(tape);
        nb_tape_free(tape);
        fflush(stdout);
        fflush(stderr);
        _exit(nbt_failures ? 1 : 0);
    }
    n_cases += n_expected_cases;
    nbt_checks++;
    if (pid < 0) {
        NBT_FAIL("%s: fork failed", what);
        return;
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) {
        NBT_FAIL("%s: waitpid failed", what);
        return;
    }
    if (WIFSIGNALED(status))
        NBT_FAIL("%s: the child process died with signal %d", what, WTERMSIG(status));
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        NBT_FAIL("%s: failed in the child process (exit status %d; see above)", what,
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

int main(void)
{
    fixture x;
    fixture_make(&x);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    test_elementwise(&x);
    test_matmul_reduce(&x);
    test_shape_index(&x);
    test_composed_names(&x);
    test_everyday(&x);
    test_custom_hooks_dot(&x);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    fixture_free(&x);

    isolated("sizes that overflow", test_sizes, 7);

    printf("errors_ops: %d error cases\n", n_cases);
    CHECK(n_cases >= 40, "%d error cases, expected at least 40", n_cases);
    return nbt_report("errors_ops");
}
