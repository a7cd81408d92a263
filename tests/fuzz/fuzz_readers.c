/* libFuzzer target for the readers of untrusted files: nb_safetensors_read, nb_checkpoint_load (into
 * a small model with an Adam optimizer in two groups, so that the checks of the optimizer's entries
 * run too: state, counts, groups) and nb_idx_read (raw and gzip) on arbitrary bytes. Any crash, leak
 * or sanitizer report is a bug; errors are expected. Not part of the meson suite:
 * tests/fuzz/run.sh builds it with clang and runs it. LLVMFuzzerInitialize writes that model's
 * checkpoint into ./corpus as a seed. */
#define _POSIX_C_SOURCE 200809L
#include <nabla.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static nb_params *g_model;
static nb_optim *g_opt;

/* fc.weight [2, 3] and fc.bias [2] (f32), Adam with fc.bias in a group of its own, one step taken */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    nb_rng rng;
    nb_rng_seed(&rng, 1);
    g_model = nb_params_new();
    nb_params_add(g_model, "fc.weight", nb_tensor_uniform(NB_F32, NB_SHAPE(2, 3), -1, 1, &rng));
    nb_params_add(g_model, "fc.bias", nb_tensor_uniform(NB_F32, NB_SHAPE(2), -1, 1, &rng));
    nb_optim_group g = {.prefix = "fc.bias", .opts = nb_optim_defaults(NB_ADAM)};
    g.opts.lr = 0.5;
    g_opt = nb_optim_new_groups(NB_ADAM, g_model, NULL, 1, &g);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    for (int i = 0; i < nb_params_count(g_model); i++) nb_backward(nb_sum_all(nb_square(nb_params_tensor(g_model, i))), NULL, 0);
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_optim_step(g_opt);
    nb_checkpoint_save("corpus/fuzz_checkpoint.safetensors", g_model, g_opt, 1); /* a seed, when run by run.sh */
    nb_error_clear();
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/nabla-fuzz-%d", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);

    nb_safetensors *st = NULL;
    if (nb_safetensors_read(path, &st) == NB_OK) {
        for (int i = 0; i < nb_safetensors_count(st); i++) (void)nb_tensor_numel(nb_safetensors_tensor(st, i));
        nb_safetensors_free(st);
    }
    nb_error_clear();
    int64_t step;
    nb_checkpoint_load(path, g_model, g_opt, &step);
    nb_error_clear();
    nb_tensor *t = NULL;
    if (nb_idx_read(path, NB_F32, 1.0 / 255, &t) == NB_OK) nb_tensor_free(t);
    nb_error_clear();
    /* the same bytes gzip-compressed, through the decompressing path */
    gzFile gz = gzopen(path, "wb");
    if (gz) {
        gzwrite(gz, data, (unsigned)size);
        gzclose(gz);
        t = NULL;
        if (nb_idx_read(path, NB_I64, 1.0, &t) == NB_OK) nb_tensor_free(t);
        nb_error_clear();
    }
    unlink(path);
    return 0;
}
