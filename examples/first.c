/* The README's first program: a function of two tensors, its gradients, and a gradient check.
 * tests/check_readme.sh checks that README.md shows this file and what it prints. */
#include <nabla.h>

/* f(x, w) = sum(tanh(x w) * sigmoid(x w)), x [2,3], w [3,2] */
static nb_tensor *f(void *user, nb_tensor *const *in)
{
    nb_tensor *z = nb_matmul(in[0], in[1]);
    return nb_sum_all(nb_mul(nb_tanh(z), nb_sigmoid(z)));
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "usage: %s (it takes no options)\n", argv[0]);
        return 2;
    }
    nb_rng rng;
    nb_rng_seed(&rng, 42);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 3), -1, 1, &rng);  /* leaves: yours to free */
    nb_tensor *w = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 2), -1, 1, &rng);
    nb_tensor_set_requires_grad(x, 1);
    nb_tensor_set_requires_grad(w, 1);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);                      /* op results now live on this tape */
    nb_tensor *in[2] = {x, w};
    nb_tensor *y = f(NULL, in);
    if (!y || nb_backward(y, NULL, 0) != NB_OK) {   /* errors are sticky: check once */
        fprintf(stderr, "error: %s\n", nb_error_message());
        return 1;
    }
    printf("f = %.6f\n", nb_tensor_item(y));
    nb_tensor_print(nb_tensor_grad(x), "df/dx", stdout, 0);
    nb_tensor_print(nb_tensor_grad(w), "df/dw", stdout, 0);
    nb_tape_end(tape);
    nb_tape_free(tape);                       /* releases every intermediate at once */

    nb_gradcheck_report rep;                  /* finite differences vs backward, float64 */
    nb_status st = nb_gradcheck(f, NULL, 2, in, NULL, &rep);
    nb_gradcheck_report_print(&rep, stdout);
    if (st == NB_OK) st = nb_gradgradcheck(f, NULL, 2, in, NULL, &rep);  /* and second order */
    nb_gradcheck_report_print(&rep, stdout);
    nb_tensor_free(x);
    nb_tensor_free(w);
    return st == NB_OK ? 0 : 1;
}
