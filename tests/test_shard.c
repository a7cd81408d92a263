/* Sharded batches for data-parallel training (nb_batches_set_shard, nb_batches_skip), without MPI:
 * the parts of N sharded batchers, side by side, are exactly the batches of one unsharded batcher;
 * skipping draws what drawing would; and nb_tensor_ensure_grad. */
#include "nbtest.h"

#include <stdlib.h>

/* rows of the next batch (a new epoch after an end when wrap), its count; -1 on error, 0 at an end */
static int64_t draw(nb_batches *b, int64_t *rows, int wrap)
{
    nb_tensor *x, *y;
    int r = nb_batches_next(b, &x, &y);
    if (r == 0 && wrap) r = nb_batches_next(b, &x, &y);
    if (r != 1) return r;
    int64_t n;
    const int64_t *idx = nb_batches_indices(b, &n);
    memcpy(rows, idx, (size_t)n * sizeof *rows);
    /* the rows drawn are the rows of x and y */
    for (int64_t k = 0; k < n; k++) /* (by-length batches cut x to the longest sequence: column 0 stays) */
        if (nb_tensor_get(x, k * nb_tensor_dim(x, 1)) != (double)idx[k] * 2 || nb_tensor_get(y, k) != (double)idx[k]) return -1;
    return n;
}

/* n samples: row i of the inputs is (2i, 2i + 1), target i */
static nb_dataset *data(int64_t n)
{
    nb_tensor *a = nb_tensor_arange(NB_F64, 0, (double)(2 * n), 1);
    nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(n, 2), nb_tensor_cdata(a));
    nb_tensor_free(a);
    return nb_dataset_new(x, nb_tensor_arange(NB_F64, 0, (double)n, 1));
}

/* N shards of a batcher over n samples (batch bs, shuffled, seeded) for epochs: concatenated, each
 * batch equals the unsharded batcher's. */
static void compare(int64_t n, int64_t bs, int nranks, int drop_last, int by_length)
{
    nb_dataset *d = data(n);
    int64_t *len = malloc((size_t)n * sizeof *len);
    for (int64_t i = 0; i < n; i++) len[i] = 1 + i % 2;
    nb_batches *one = by_length ? nb_batches_by_length(d, len, bs, 3, 1, 5) : nb_batches_new(d, bs, 1, drop_last, 5);
    nb_batches *part[4];
    for (int r = 0; r < nranks; r++) {
        part[r] = by_length ? nb_batches_by_length(d, len, bs, 3, 1, 5) : nb_batches_new(d, bs, 1, drop_last, 5);
        CHECK(nb_batches_set_shard(part[r], r, nranks) == NB_OK, "shard: %s", nb_error_message());
    }
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    int64_t *want = malloc((size_t)bs * sizeof *want), *got = malloc((size_t)bs * sizeof *got);
    int64_t batches = 0, bad = 0, sizes_bad = 0;
    for (int epoch = 0; epoch < 3; epoch++) {
        for (;;) {
            int64_t m = draw(one, want, 0), k = 0;
            CHECK(m >= 0, "unsharded draw: %s", nb_error_message());
            for (int r = 0; r < nranks; r++) {
                int64_t c = draw(part[r], got + k, 0);
                if (m == 0) {
                    CHECK(c == 0, "rank %d goes on after the epoch's end (%lld rows)", r, (long long)c);
                    continue;
                }
                CHECK(c >= 0, "shard %d: %s", r, nb_error_message());
                /* parts differ by at most one row; the global count is the whole batch's, the offset
                 * where this part starts in it */
                sizes_bad += c < m / nranks || c > m / nranks + 1 || nb_batches_global_count(part[r]) != m ||
                             nb_batches_shard_offset(part[r]) != k;
                k += c > 0 ? c : 0;
            }
            if (m == 0) break;
            batches++;
            bad += k != m || memcmp(want, got, (size_t)m * sizeof *got) != 0;
            nb_tape_reset(tape);
        }
    }
    CHECK(bad == 0 && sizes_bad == 0 && batches == 3 * nb_batches_per_epoch(one),
          "n %lld, batch %lld, %d ranks%s%s: %lld of %lld batches differ, %lld part sizes wrong", (long long)n,
          (long long)bs, nranks, drop_last ? ", drop_last" : "", by_length ? ", by length" : "", (long long)bad,
          (long long)batches, (long long)sizes_bad);
    nb_tape_end(tape);
    nb_tape_free(tape);
    for (int r = 0; r < nranks; r++) nb_batches_free(part[r]);
    nb_batches_free(one);
    nb_dataset_free(d);
    free(len);
    free(want);
    free(got);
}

/* Skipping k batches then drawing equals drawing k + 1 batches, across epoch ends. */
static void skip(int64_t n, int64_t bs, int64_t k)
{
    nb_dataset *d = data(n);
    nb_batches *a = nb_batches_new(d, bs, 1, 0, 3), *b = nb_batches_new(d, bs, 1, 0, 3);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    int64_t *ra = malloc((size_t)bs * sizeof *ra), *rb = malloc((size_t)bs * sizeof *rb);
    for (int64_t i = 0; i < k; i++) draw(a, ra, 1);
    CHECK(nb_batches_skip(b, k) == NB_OK, "skip: %s", nb_error_message());
    int same = 1;
    for (int i = 0; i < 2 * n / bs + 3; i++) {
        int64_t ca = draw(a, ra, 0), cb = draw(b, rb, 0);
        same &= ca == cb && (ca <= 0 || memcmp(ra, rb, (size_t)ca * sizeof *ra) == 0);
    }
    CHECK(same, "n %lld, batch %lld: after skipping %lld batches the draws differ", (long long)n, (long long)bs, (long long)k);
    nb_tape_end(tape);
    nb_tape_free(tape);
    free(ra);
    free(rb);
    nb_batches_free(a);
    nb_batches_free(b);
    nb_dataset_free(d);
}

int main(void)
{
    compare(100, 12, 1, 0, 0);
    compare(100, 12, 2, 0, 0);
    compare(100, 12, 3, 0, 0); /* last batch 4: parts 1, 1, 2 */
    compare(100, 12, 4, 1, 0);
    compare(10, 4, 3, 0, 0);   /* last batch 2 on 3 ranks: rank 0's part is empty */
    compare(50, 8, 3, 0, 1);   /* by length */
    skip(100, 12, 0);
    skip(100, 12, 5);
    skip(100, 12, 9);  /* exactly one epoch */
    skip(100, 12, 25); /* across two epoch ends */

    nb_dataset *d = nb_dataset_new(nb_tensor_zeros(NB_F64, NB_SHAPE(5, 1)), NULL);
    nb_batches *b = nb_batches_new(d, 2, 0, 0, 0);
    CHECK_ERROR(nb_batches_set_shard(b, 2, 2) != NB_OK, NB_ERR_ARG, "bad rank");
    CHECK_ERROR(nb_batches_set_shard(NULL, 0, 1) != NB_OK, NB_ERR_ARG, "batches is NULL");
    CHECK_ERROR(nb_batches_skip(b, -1) != NB_OK, NB_ERR_ARG, "n < 0");
    CHECK(nb_batches_global_count(b) == 0, "global count before the first batch");
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x;
    CHECK(nb_batches_next(b, &x, NULL) == 1 && nb_batches_global_count(b) == 2, "first batch");
    CHECK_ERROR(nb_batches_set_shard(b, 0, 2) != NB_OK, NB_ERR_STATE, "shard before the first");
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_batches_free(b);
    nb_batches *none = nb_batches_new(d, 8, 0, 1, 0); /* drop_last with fewer samples than a batch */
    CHECK_ERROR(nb_batches_skip(none, 1) != NB_OK, NB_ERR_STATE, "an epoch has no batches");
    nb_batches_free(none);
    nb_dataset_free(d);

    /* ensure_grad: zeros where no backward reached, the gradient itself where one did */
    nb_tensor *w = nb_tensor_ones(NB_F64, NB_SHAPE(3));
    CHECK_ERROR(nb_tensor_ensure_grad(w) == NULL, NB_ERR_STATE, "does not require grad");
    nb_tensor_set_requires_grad(w, 1);
    nb_tensor *g = nb_tensor_ensure_grad(w);
    CHECK(g && g == nb_tensor_grad(w) && nb_tensor_get(g, 2) == 0, "a zero gradient");
    nb_tensor_set(g, 1, 5.0);
    CHECK(nb_tensor_ensure_grad(w) == g && nb_tensor_get(g, 1) == 5.0, "the same gradient kept");
    CHECK_ERROR(nb_tensor_ensure_grad(NULL) == NULL, NB_ERR_ARG, "tensor is NULL");
    nb_tensor_free(w);
    return nbt_report("test_shard");
}
