/* A program that uses nabla from outside: built by .ci/packaging.sh against nabla as a meson
 * subproject, and against an installed nabla through pkg-config (shared and static). It prints
 * d/dx sum(tanh(x)^2) at x = 0.5 and exits 0 when it is right. */
#include <nabla.h>

#include <math.h>

int main(void)
{
    nb_tensor *x = nb_tensor_full(NB_F64, NB_SHAPE(1), 0.5);
    nb_tensor_set_requires_grad(x, 1);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *y = nb_sum_all(nb_square(nb_tanh(x)));
    if (!y || nb_backward(y, NULL, 0) != NB_OK) {
        fprintf(stderr, "consumer: %s\n", nb_error_message());
        return 1;
    }
    double t = tanh(0.5), want = 2 * t * (1 - t * t), got = nb_tensor_get(nb_tensor_grad(x), 0);
    printf("consumer: d/dx tanh(x)^2 at 0.5 = %.15f (expected %.15f), nabla %d.%d.%d\n", got, want,
           NB_VERSION_MAJOR, NB_VERSION_MINOR, NB_VERSION_PATCH);
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    return fabs(got - want) < 1e-15 ? 0 : 1;
}
