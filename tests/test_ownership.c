/* Ownership of leaves by containers: a tensor added twice to a parameter collection, or to two
 * containers (collections, datasets), or a tensor a container already holds (an optimizer's state, a
 * gradient, a safetensors reader's tensor), is refused when it is added, and left with its owner:
 * freeing everything afterwards frees each tensor once (under ASan a double free would fail the
 * test). nb_tensor_free refuses a tensor a container owns. nb_params_add frees a tensor that was
 * the caller's to give when it fails, also when copying its name fails (it used to ignore that and
 * leave a stale NB_ERR_NOMEM behind), and never one it did not take. */
#define _DEFAULT_SOURCE
#include "nbtest.h"

#include "alloc_counter.h"

#include <stdlib.h>
#include <unistd.h>

static nb_tensor *vec(double v) { return nb_tensor_full(NB_F64, NB_SHAPE(3), v); }

static void test_twice_in_one_collection(void)
{
    nb_params *p = nb_params_new();
    nb_tensor *t = vec(1.0);
    CHECK(nb_params_add(p, "a", t) == t, "first add: %s", nb_error_message());
    CHECK_ERROR(nb_params_add(p, "b", t) == NULL, NB_ERR_ARG, "in this collection already (as a)");
    CHECK_ERROR(nb_params_add_buffer(p, "c", t) == NULL, NB_ERR_ARG, "in this collection already (as a)");
    CHECK(nb_params_count(p) == 1 && nb_params_find(p, "b") == NULL, "the collection is unchanged (%d tensors)",
          nb_params_count(p));
    CHECK(nb_tensor_get(t, 2) == 1.0, "the tensor is alive and untouched");
    /* under the same name: refused as a second add, not freed as a name clash */
    CHECK_ERROR(nb_params_add(p, "a", t) == NULL, NB_ERR_ARG, "in this collection already");
    CHECK(nb_tensor_get(t, 0) == 1.0, "still alive");
    nb_params_free(p); /* frees t once */
}

static void test_two_containers(void)
{
    nb_params *p = nb_params_new(), *q = nb_params_new();
    nb_tensor *t = nb_params_add(p, "w", vec(2.0));
    CHECK_ERROR(nb_params_add(q, "w", t) == NULL, NB_ERR_ARG, "belongs to another container");
    CHECK(nb_params_count(q) == 0 && nb_tensor_get(t, 1) == 2.0, "refused and left with its owner");

    /* a collection's tensor handed to a dataset, and a dataset's tensor to a collection */
    CHECK_ERROR(nb_dataset_new(t, NULL) == NULL, NB_ERR_ARG, "belongs to another container");
    CHECK(nb_tensor_get(t, 0) == 2.0, "the dataset did not free the collection's tensor");
    nb_tensor *x = nb_tensor_zeros(NB_F64, NB_SHAPE(4, 2)), *y = nb_tensor_zeros(NB_F64, NB_SHAPE(4));
    nb_dataset *d = nb_dataset_new(x, y);
    CHECK(d != NULL, "dataset: %s", nb_error_message());
    CHECK_ERROR(nb_params_add(q, "x", x) == NULL, NB_ERR_ARG, "belongs to another container");
    CHECK_ERROR(nb_dataset_new(x, NULL) == NULL, NB_ERR_ARG, "belongs to another container");
    /* an unowned target given with an owned input: the target is the caller's and is freed */
    CHECK_ERROR(nb_dataset_new(y, nb_tensor_zeros(NB_F64, NB_SHAPE(4))) == NULL, NB_ERR_ARG,
                "belongs to another container");
    CHECK(nb_dataset_size(d) == 4 && nb_tensor_get(x, 0) == 0.0, "the dataset still has its tensors");

    /* nb_tensor_free refuses an owned tensor: it is freed with its container */
    CHECK_ERROR((nb_tensor_free(t), nb_error_code() != NB_OK), NB_ERR_STATE, "belongs to a container");
    CHECK_ERROR((nb_tensor_free(x), nb_error_code() != NB_OK), NB_ERR_STATE, "belongs to a container");
    CHECK(nb_tensor_get(t, 2) == 2.0 && nb_tensor_get(x, 7) == 0.0, "both still alive");

    nb_dataset_free(d);
    nb_params_free(q);
    nb_params_free(p);
    CHECK_NO_ERROR();
}

static void test_library_owned(void)
{
    /* tensors that belong to the library's own objects cannot be added either */
    nb_params *p = nb_params_new(), *q = nb_params_new();
    nb_tensor *w = nb_params_add(p, "w", vec(0.5));
    nb_optim *opt = nb_optim_new(NB_ADAM, p, NULL);
    CHECK(opt && nb_optim_state_count(opt) == 2, "Adam has 2 state tensors");
    CHECK_ERROR(nb_params_add(q, "s", nb_optim_state_tensor(opt, 0)) == NULL, NB_ERR_ARG, "belongs to another container");

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    CHECK(nb_backward(nb_sum_all(nb_square(w)), NULL, 0) == NB_OK, "%s", nb_error_message());
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor *g = nb_tensor_grad(w);
    CHECK(g && nb_tensor_owner(g) == w, "a gradient is owned by its leaf");
    CHECK_ERROR(nb_params_add(q, "g", g) == NULL, NB_ERR_ARG, "belongs to another container");
    CHECK_ERROR((nb_tensor_free(g), nb_error_code() != NB_OK), NB_ERR_STATE, "belongs to a container");

    char dir[] = "/tmp/nabla-own-XXXXXX", path[64];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    CHECK(nb_checkpoint_save(path, p, NULL, 1) == NB_OK, "%s", nb_error_message());
    nb_safetensors *f = NULL;
    CHECK(nb_safetensors_read(path, &f) == NB_OK, "%s", nb_error_message());
    CHECK_ERROR(nb_params_add(q, "w", nb_safetensors_tensor(f, 0)) == NULL, NB_ERR_ARG, "belongs to another container");
    /* a copy is the way to take it */
    CHECK(nb_params_add(q, "w", nb_tensor_clone(nb_safetensors_tensor(f, 0))) != NULL, "a clone is added: %s",
          nb_error_message());
    nb_safetensors_free(f);
    unlink(path);
    rmdir(dir);

    nb_optim_free(opt);
    nb_params_free(q);
    nb_params_free(p);
    CHECK_NO_ERROR();
}

static void test_claims(void)
{
    int a, b;
    nb_tensor *t = vec(3.0);
    CHECK(nb_tensor_owner(t) == NULL, "a new leaf has no owner");
    CHECK(nb_tensor_claim(t, &a) == NB_OK && nb_tensor_owner(t) == &a, "claimed");
    CHECK_ERROR(nb_tensor_claim(t, &b) != NB_OK, NB_ERR_STATE, "has an owner already");
    CHECK_ERROR(nb_tensor_claim(t, &a) != NB_OK, NB_ERR_STATE, "has an owner already (this one)");
    CHECK_ERROR(nb_tensor_unclaim(t, &b) != NB_OK, NB_ERR_STATE, "not held by this owner");
    CHECK(nb_tensor_unclaim(t, &a) == NB_OK && nb_tensor_owner(t) == NULL, "released");
    CHECK_ERROR(nb_tensor_claim(t, NULL) != NB_OK, NB_ERR_ARG, "owner is NULL");
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *r = nb_add(t, t);
    CHECK_ERROR(nb_tensor_claim(r, &a) != NB_OK, NB_ERR_STATE, "op result");
    CHECK(nb_tensor_owner(r) == NULL, "op results have no owner");
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(t);
    CHECK_NO_ERROR();
}

/* nb_params_add with each of its allocations failing in turn: NULL, NB_ERR_NOMEM, the tensor freed,
 * the collection unchanged; and nothing else left allocated. */
static void test_add_out_of_memory(void)
{
    ac_install();
    for (long k = 1; k <= 8; k++) {
        nb_error_clear();
        ac_reset(0);
        nb_params *p = nb_params_new();
        nb_tensor *t = vec(4.0);
        long before = ac.attempts;
        ac.fail_at = before + (k - 1) + 1; /* the k-th allocation inside nb_params_add */
        nb_tensor *got = nb_params_add(p, "layer.weight", t);
        long made = ac.attempts - before;
        if (ac.failed == 0) {
            CHECK(got == t && nb_error_code() == NB_OK, "k = %ld: no failure: added, no error (%s)", k,
                  nb_error_message());
            nb_params_free(p);
            CHECK(ac.live_blocks == 0, "k = %ld: %ld blocks left", k, ac.live_blocks);
            CHECK(k > 1 && made == k - 1, "nb_params_add makes %ld allocations", made);
            break;
        }
        CHECK(got == NULL, "k = %ld: a failed add returns NULL", k);
        CHECK(nb_error_code() == NB_ERR_NOMEM && strstr(nb_error_message(), "out of memory"),
              "k = %ld: %s \"%s\"", k, nb_status_name(nb_error_code()), nb_error_message());
        CHECK(nb_params_count(p) == 0, "k = %ld: nothing added", k);
        nb_params_free(p);
        CHECK(ac.live_blocks == 0 && ac.live_bytes == 0, "k = %ld: the tensor was freed (%ld blocks, %zu bytes left)",
              k, ac.live_blocks, ac.live_bytes);
    }
    nb_set_allocator(NULL);
    nb_error_clear();
}

int main(void)
{
    test_twice_in_one_collection();
    test_two_containers();
    test_library_owned();
    test_claims();
    test_add_out_of_memory();
    return nbt_report("ownership");
}
