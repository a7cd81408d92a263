/* Defining your own op with nb_custom: swish(x) = x * sigmoid(x), written twice.
 *
 *   - swish:     the backward is built from nabla ops, so nabla can differentiate it again
 *                (gradients of gradients, nb_gradgradcheck, Hessian-vector products);
 *   - swish_raw: the backward fills the gradient buffer with a plain C loop; simpler and faster,
 *                but a backward with NB_CREATE_GRAPH through it is refused with a clear error.
 *
 * Both forwards are plain C loops over the input buffer. The program checks both ops against finite
 * differences and prints what it finds; it returns non-zero if anything is wrong. */
#include <nabla.h>

#include <math.h>
#include <string.h>

/* forward, shared by both ops: y = x / (1 + e^-x), for f32 and f64 */
static nb_status swish_forward(void *user, int n_in, const nb_tensor *const *in, nb_tensor *out)
{
    (void)user, (void)n_in;
    int64_t n = nb_tensor_numel(out);
    if (nb_tensor_dtype(out) == NB_F64) {
        const double *x = nb_tensor_cdata(in[0]);
        double *y = nb_tensor_data(out);
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0 + exp(-x[i]));
    } else {
        const float *x = nb_tensor_cdata(in[0]);
        float *y = nb_tensor_data(out);
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
    }
    return NB_OK;
}

/* composed backward: d swish = (s + x s (1 - s)) dx with s = sigmoid(x), from nabla ops */
static nb_status swish_backward(void *user, int n_in, nb_tensor *const *in, nb_tensor *out, nb_tensor *gout,
                                nb_tensor **gin)
{
    (void)user, (void)n_in, (void)out;
    nb_tensor *x = in[0], *s = nb_sigmoid(x);
    nb_tensor *ds = nb_add(s, nb_mul(x, nb_mul(s, nb_rsub_scalar(1.0, s))));
    gin[0] = nb_mul(gout, ds);
    return gin[0] ? NB_OK : nb_error_code();
}

/* raw backward: the same derivative, written into the preallocated gin[0] (f64 inputs here) */
static nb_status swish_backward_raw(void *user, int n_in, const nb_tensor *const *in, const nb_tensor *out,
                                    const nb_tensor *gout, nb_tensor *const *gin)
{
    (void)user, (void)n_in, (void)out;
    if (!gin[0]) return NB_OK; /* the input does not need a gradient */
    if (nb_tensor_dtype(in[0]) != NB_F64) {
        nb_error_set(NB_ERR_UNSUPPORTED, "swish_raw: the raw backward handles f64 only");
        return NB_ERR_UNSUPPORTED;
    }
    const double *x = nb_tensor_cdata(in[0]), *g = nb_tensor_cdata(gout);
    double *gx = nb_tensor_data(gin[0]);
    for (int64_t i = 0; i < nb_tensor_numel(gin[0]); i++) {
        double s = 1.0 / (1.0 + exp(-x[i]));
        gx[i] = g[i] * (s + x[i] * s * (1.0 - s));
    }
    return NB_OK;
}

static const nb_custom_op swish_op = {"swish", swish_forward, swish_backward, NULL, NULL};
static const nb_custom_op swish_raw_op = {"swish_raw", swish_forward, NULL, swish_backward_raw, NULL};

/* the op as a function like any other: a result of x's shape and dtype on the current tape */
static nb_tensor *swish(const nb_custom_op *op, nb_tensor *x)
{
    if (!x) return NULL;
    return nb_custom(op, 1, &x, nb_tensor_dtype(x), nb_tensor_ndim(x), nb_tensor_shape(x));
}

/* the function checked: a small layer with the op inside, sum(swish(x w)) */
static nb_tensor *layer(void *user, nb_tensor *const *in)
{
    return nb_sum_all(swish(user, nb_matmul(in[0], in[1])));
}

static int report(const char *what, nb_status st, const nb_gradcheck_report *rep)
{
    printf("%-34s %s\n", what, st == NB_OK ? "ok" : nb_status_name(st));
    if (st != NB_OK) printf("    %s\n", rep->message);
    return st == NB_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "usage: %s (it takes no options)\n", argv[0]);
        return 2;
    }
    int failures = 0;
    nb_rng rng;
    nb_rng_seed(&rng, 7);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 4), -2, 2, &rng);
    nb_tensor *w = nb_tensor_uniform(NB_F64, NB_SHAPE(4, 2), -1, 1, &rng);
    nb_tensor_set_requires_grad(x, 1);
    nb_tensor_set_requires_grad(w, 1);
    nb_tensor *in[2] = {x, w};

    /* use it: forward, backward, and compare with nabla's own ops (x * sigmoid(x)) */
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y = swish(&swish_op, x);
    nb_tensor *ref = nb_mul(x, nb_sigmoid(x));
    double maxdiff = 0;
    for (int64_t i = 0; y && ref && i < nb_tensor_numel(y); i++)
        maxdiff = fmax(maxdiff, fabs(nb_tensor_get(y, i) - nb_tensor_get(ref, i)));
    printf("swish(x) vs x * sigmoid(x):        max difference %.3g\n", maxdiff);
    failures += !y || !ref || maxdiff > 1e-14;
    if (nb_backward(nb_sum_all(y), NULL, 0) != NB_OK) {
        printf("backward failed: %s\n", nb_error_message());
        failures++;
    }
    nb_tensor_print(nb_tensor_grad(x), "d sum(swish(x)) / dx", stdout, 0);
    nb_tensor_zero_grad(x);
    nb_tape_end(tape);
    nb_tape_free(tape);

    /* check both against finite differences */
    nb_gradcheck_report rep;
    failures += report("swish: gradcheck", nb_gradcheck(layer, (void *)&swish_op, 2, in, NULL, &rep), &rep);
    failures += report("swish: gradgradcheck", nb_gradgradcheck(layer, (void *)&swish_op, 2, in, NULL, &rep), &rep);
    failures += report("swish_raw: gradcheck", nb_gradcheck(layer, (void *)&swish_raw_op, 2, in, NULL, &rep), &rep);

    /* the raw backward cannot be differentiated again: a clear error, not a wrong answer */
    nb_error_clear();
    nb_status st = nb_gradgradcheck(layer, (void *)&swish_raw_op, 2, in, NULL, &rep);
    printf("%-34s %s (expected NB_ERR_UNSUPPORTED)\n    %s\n", "swish_raw: gradgradcheck", nb_status_name(st),
           nb_error_message());
    failures += st != NB_ERR_UNSUPPORTED || !strstr(nb_error_message(), "raw backward");
    nb_error_clear();

    nb_tensor_free(x);
    nb_tensor_free(w);
    printf("%s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
