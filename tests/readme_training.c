/* README.md's training code ("Layers and training", extracted by tests/readme_block.sh and included
 * as it is) runs: 3 steps on random sequences of unequal lengths, and the checkpoint it writes holds
 * the LSTM's and the head's parameters under PyTorch's names. Argument: the checkpoint's path. */
#include "readme_training_block.h"

#include "nbtest.h"

int main(int argc, char **argv)
{
    if (argc != 2) return 2;
    nb_rng rng;
    nb_rng_seed(&rng, 3);
    nb_tensor *x = nb_tensor_normal(NB_F32, NB_SHAPE(6, 4, 64), 0, 1, &rng); /* [T, B, 64] */
    nb_tensor *labels = nb_tensor_from_data(NB_I64, NB_SHAPE(4), (const int64_t[]){3, 0, 9, 5});
    const int64_t lengths[4] = {6, 2, 5, 1};
    remove(argv[1]);
    nb_status st = train(x, lengths, labels, 3, argv[1]);
    CHECK(st == NB_OK, "README's training code: %s", nb_error_message());
    nb_safetensors *f = NULL;
    CHECK(nb_safetensors_read(argv[1], &f) == NB_OK, "its checkpoint reads back: %s", nb_error_message());
    const char *names[] = {"lstm.weight_ih_l0", "lstm.weight_hh_l1", "lstm.bias_hh_l1", "head.weight", "head.bias"};
    for (int i = 0; i < 5; i++) CHECK(nb_safetensors_find(f, names[i]), "the checkpoint has %s", names[i]);
    CHECK(nb_tensor_dim(nb_safetensors_find(f, "head.weight"), 0) == 10, "head.weight is [10, 256]");
    nb_safetensors_free(f);

    /* a bad batch fails with a message and a status, and frees what it made (ASan checks) */
    nb_tensor *bad = nb_tensor_zeros(NB_F32, NB_SHAPE(6, 4, 63));
    CHECK(train(bad, lengths, labels, 3, argv[1]) == NB_ERR_SHAPE, "a [6,4,63] batch: %s", nb_error_message());
    nb_error_clear();
    nb_tensor_free(bad);
    nb_tensor_free(x);
    nb_tensor_free(labels);
    remove(argv[1]);
    return nbt_report("readme_training");
}
