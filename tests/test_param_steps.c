/* Per-parameter update counts: a parameter without a gradient at a step is skipped (its count lags,
 * as in PyTorch), and a checkpoint carries the counts, so that a resumed run takes exactly the steps
 * the uninterrupted one takes. */
#define _POSIX_C_SOURCE 200809L
#include "nbtest.h"

#include <stdlib.h>
#include <unistd.h>

/* loss = sum((a x)^2) (+ sum(b^2 x) when both) for fixed x: b gets a gradient only when both */
static void step(nb_params *p, nb_optim *opt, nb_tape *tape, int both)
{
    nb_tensor *a = nb_params_find(p, "a"), *b = nb_params_find(p, "b");
    nb_tape_begin(tape);
    nb_tensor *x = nb_full(NB_F64, NB_SHAPE(3), 0.5);
    nb_tensor *loss = nb_sum_all(nb_square(nb_mul(a, x)));
    if (both) loss = nb_add(loss, nb_sum_all(nb_mul(nb_square(b), x)));
    CHECK(loss && nb_backward(loss, NULL, 0) == NB_OK && nb_optim_step(opt) == NB_OK, "step: %s", nb_error_message());
    nb_optim_zero_grad(opt);
    nb_tape_end(tape);
    nb_tape_reset(tape);
}

static nb_params *model(void)
{
    nb_params *p = nb_params_new();
    nb_params_add(p, "a", nb_tensor_from_data(NB_F64, NB_SHAPE(3), (const double[]){1, -2, 3}));
    nb_params_add(p, "b", nb_tensor_from_data(NB_F64, NB_SHAPE(3), (const double[]){0.5, 1.5, -1}));
    return p;
}

int main(void)
{
    char dir[] = "/tmp/nabla-steps-XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/run.safetensors", dir);
    nb_tape *tape = nb_tape_new();

    nb_params *p = model();
    nb_optim *opt = nb_optim_new(NB_ADAM, p, NULL);
    step(p, opt, tape, 0); /* b has no gradient: skipped */
    step(p, opt, tape, 0);
    step(p, opt, tape, 1);
    CHECK(nb_optim_steps(opt) == 3 && nb_optim_param_count(opt) == 2, "steps %lld, parameters %d",
          (long long)nb_optim_steps(opt), nb_optim_param_count(opt));
    CHECK(nb_optim_param_steps(opt, 0) == 3 && nb_optim_param_steps(opt, 1) == 1, "counts %lld and %lld, expected 3 and 1",
          (long long)nb_optim_param_steps(opt, 0), (long long)nb_optim_param_steps(opt, 1));
    CHECK(nb_checkpoint_save(path, p, opt, 3) == NB_OK, "save: %s", nb_error_message());

    /* resume in a fresh model and optimizer */
    nb_params *q = model();
    nb_optim *qopt = nb_optim_new(NB_ADAM, q, NULL);
    int64_t at = -1;
    CHECK(nb_checkpoint_load(path, q, qopt, &at) == NB_OK && at == 3, "load: %s", nb_error_message());
    CHECK(nb_optim_param_steps(qopt, 0) == 3 && nb_optim_param_steps(qopt, 1) == 1, "loaded counts %lld and %lld",
          (long long)nb_optim_param_steps(qopt, 0), (long long)nb_optim_param_steps(qopt, 1));
    /* one more step on both: bit-identical (b's bias correction uses its own count, 2, not 4) */
    step(p, opt, tape, 1);
    step(q, qopt, tape, 1);
    for (int i = 0; i < 2; i++)
        CHECK(memcmp(nb_tensor_cdata(nb_params_tensor(p, i)), nb_tensor_cdata(nb_params_tensor(q, i)), 3 * sizeof(double)) == 0,
              "parameter %s differs after the resumed step", nb_params_name(p, i));

    /* a wrong count vector is refused, and nothing changes */
    nb_tensor *names_t[16];
    const char *names[16];
    int n = 0;
    for (int i = 0; i < nb_params_count(q); i++, n++) {
        names[n] = nb_params_name(q, i);
        names_t[n] = nb_params_tensor(q, i);
    }
    char sname[8][64];
    for (int j = 0; j < nb_optim_state_count(qopt); j++, n++) {
        snprintf(sname[j], sizeof sname[j], "optim.%s", nb_optim_state_name(qopt, j));
        names[n] = sname[j];
        names_t[n] = nb_optim_state_tensor(qopt, j);
    }
    nb_tensor *bad = nb_tensor_from_data(NB_I64, NB_SHAPE(3), (const int64_t[]){1, 2, 3});
    names[n] = "optim.param_steps";
    names_t[n++] = bad;
    const char *keys[] = {"format", "step", "optimizer", "optimizer_steps"}, *vals[] = {"nabla-checkpoint", "4", "adam", "4"};
    CHECK(nb_safetensors_save(path, n, names, names_t, 4, keys, vals) == NB_OK, "save: %s", nb_error_message());
    double before[3];
    memcpy(before, nb_tensor_cdata(nb_params_tensor(q, 0)), sizeof before);
    CHECK_ERROR(nb_checkpoint_load(path, q, qopt, NULL) != NB_OK, NB_ERR_SHAPE, "optim.param_steps: expected i64 [2]");
    CHECK(memcmp(before, nb_tensor_cdata(nb_params_tensor(q, 0)), sizeof before) == 0 && nb_optim_param_steps(qopt, 1) == 2,
          "a refused file changed the model");
    CHECK_ERROR(nb_optim_set_param_steps(qopt, 5, 1) != NB_OK, NB_ERR_ARG, "parameter 5 of 2");

    nb_tensor_free(bad);
    unlink(path);
    rmdir(dir);
    nb_optim_free(opt);
    nb_optim_free(qopt);
    nb_params_free(p);
    nb_params_free(q);
    nb_tape_free(tape);
    return nbt_report("param_steps");
}
