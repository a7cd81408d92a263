/* Length-grouped batches (nb_batches_by_length): every sample once per epoch, x cut to the batch's
 * longest sequence, the batch's lengths sorted, the same orders for the same seed, split views. */
#include "nbtest.h"

#include <stdlib.h>

enum { N = 103, T = 12, F = 3, BATCH = 8, WINDOW = 4 };

/* element (i, t, f) of sample i's padded sequence: i * 1000 + t * 10 + f (-1 as padding) */
static float value(int64_t i, int64_t t, int64_t f, const int64_t *len)
{
    return t < len[i] ? (float)(i * 1000 + t * 10 + f) : -1.0f;
}

static void one_epoch(nb_batches *b, const int64_t *len, const int64_t *row_to_sample, int *seen, int64_t *first_rows,
                      int64_t *spread_sum)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x, *y;
    int r, batches = 0;
    *spread_sum = 0;
    while ((r = nb_batches_next(b, &x, &y)) == 1) {
        int64_t count, lcount;
        const int64_t *rows = nb_batches_indices(b, &count);
        const int64_t *lens = nb_batches_lengths(b, &lcount);
        CHECK(lens && lcount == count, "lengths of the batch missing");
        int64_t longest = 0;
        for (int64_t k = 0; k < count; k++) {
            int64_t i = row_to_sample[rows[k]];
            seen[i]++;
            CHECK(lens[k] == len[i], "sample %lld: length %lld reported, %lld given", (long long)i, (long long)lens[k],
                  (long long)len[i]);
            if (k) CHECK(lens[k] >= lens[k - 1], "lengths within a batch are not sorted");
            if (lens[k] > longest) longest = lens[k];
        }
        *spread_sum += lens[count - 1] - lens[0];
        CHECK(nb_tensor_ndim(x) == 3 && nb_tensor_dim(x, 0) == count && nb_tensor_dim(x, 1) == longest &&
                  nb_tensor_dim(x, 2) == F, "batch %d: x is not [%lld, %lld, %d]", batches, (long long)count,
              (long long)longest, F);
        for (int64_t k = 0; k < count && nb_tensor_ndim(x) == 3; k++)
            for (int64_t t = 0; t < longest; t++)
                for (int64_t f = 0; f < F; f++) {
                    int64_t i = row_to_sample[rows[k]];
                    if (nb_tensor_get(x, (k * longest + t) * F + f) != value(rows[k], t, f, len) && i == rows[k])
                        CHECK(0, "x[%lld, %lld, %lld] is not row %lld's", (long long)k, (long long)t, (long long)f,
                              (long long)rows[k]);
                }
        CHECK(y && nb_tensor_dim(y, 0) == count, "targets follow the batch");
        if (batches == 0 && first_rows) memcpy(first_rows, rows, (size_t)count * sizeof(int64_t));
        batches++;
        nb_tape_reset(tape);
    }
    CHECK(r == 0, "the epoch ended with %d: %s", r, nb_error_message());
    CHECK(batches == (N + BATCH - 1) / BATCH, "%d batches", batches);
    nb_tape_end(tape);
    nb_tape_free(tape);
}

int main(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 3);
    int64_t len[N], sample_of_row[N];
    float *data = malloc(sizeof(float) * N * T * F);
    for (int64_t i = 0; i < N; i++) {
        len[i] = 1 + (int64_t)nb_rng_below(&rng, T);
        sample_of_row[i] = i;
    }
    for (int64_t i = 0; i < N; i++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t f = 0; f < F; f++) data[(i * T + t) * F + f] = value(i, t, f, len);
    nb_dataset *d = nb_dataset_new(nb_tensor_from_data(NB_F32, NB_SHAPE(N, T, F), data),
                                   nb_tensor_arange(NB_I64, 0, N, 1));
    CHECK(d != NULL, "dataset: %s", nb_error_message());

    /* every sample once per epoch, sorted lengths, over three epochs; different orders each epoch */
    nb_batches *b = nb_batches_by_length(d, len, BATCH, WINDOW, 1, 42);
    int64_t first[3][BATCH], spread[3];
    for (int e = 0; e < 3; e++) {
        int seen[N] = {0};
        one_epoch(b, len, sample_of_row, seen, first[e], &spread[e]);
        int once = 1;
        for (int i = 0; i < N; i++) once = once && seen[i] == 1;
        CHECK(once, "epoch %d: not every sample exactly once", e);
    }
    CHECK(memcmp(first[0], first[1], sizeof first[0]) != 0, "two epochs began with the same batch");
    /* grouping works: lengths inside a batch spread far less than over random batches (expected about
     * 9 for 8 draws of 1..12) */
    CHECK(spread[0] < 4 * ((N + BATCH - 1) / BATCH), "mean spread of lengths in a batch %.2f", spread[0] / 13.0);
    nb_batches_free(b);

    /* the same seed, the same sequence of batches */
    nb_batches *b1 = nb_batches_by_length(d, len, BATCH, WINDOW, 1, 42);
    int seen[N] = {0};
    int64_t again[BATCH], s2;
    one_epoch(b1, len, sample_of_row, seen, again, &s2);
    CHECK(memcmp(again, first[0], sizeof again) == 0 && s2 == spread[0], "the same seed gave another epoch");
    nb_batches_free(b1);

    /* without shuffling: the first batch holds the shortest sequences of the first window */
    nb_batches *b2 = nb_batches_by_length(d, len, BATCH, WINDOW, 0, 0);
    int64_t rows0[BATCH], s3;
    memset(seen, 0, sizeof seen);
    one_epoch(b2, len, sample_of_row, seen, rows0, &s3);
    int64_t sorted[WINDOW * BATCH];
    for (int k = 0; k < WINDOW * BATCH; k++) sorted[k] = len[k];
    for (int i = 1; i < WINDOW * BATCH; i++)
        for (int j = i; j > 0 && sorted[j] < sorted[j - 1]; j--) {
            int64_t t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    for (int k = 0; k < BATCH; k++) CHECK(len[rows0[k]] == sorted[k], "unshuffled batch 0, item %d", k);
    nb_batches_free(b2);

    /* a split view: its batches map view positions to the parent's rows */
    nb_dataset *train = NULL, *val = NULL;
    CHECK(nb_dataset_split(d, 0.25, 7, &train, &val) == NB_OK, "split: %s", nb_error_message());
    if (val) {
        int64_t nv = nb_dataset_size(val), vlen[N];
        /* the view's samples: find each one's length through a first pass over its rows */
        nb_batches *plain = nb_batches_new(val, nv, 0, 0, 0);
        nb_tape *tape = nb_tape_new();
        nb_tape_begin(tape);
        nb_tensor *x, *y;
        CHECK(nb_batches_next(plain, &x, &y) == 1, "view rows");
        int64_t c;
        const int64_t *vr = nb_batches_indices(plain, &c);
        for (int64_t k = 0; k < c; k++) vlen[k] = len[vr[k]];
        nb_tape_end(tape);
        nb_tape_free(tape);
        nb_batches_free(plain);
        nb_batches *bv = nb_batches_by_length(val, vlen, 4, 2, 1, 9);
        tape = nb_tape_new();
        nb_tape_begin(tape);
        int64_t total = 0;
        while (nb_batches_next(bv, &x, &y) == 1) {
            int64_t count;
            const int64_t *rows = nb_batches_indices(bv, &count);
            const int64_t *lens = nb_batches_lengths(bv, NULL);
            for (int64_t k = 0; k < count; k++)
                CHECK(lens[k] == len[rows[k]], "view: row %lld has length %lld, reported %lld", (long long)rows[k],
                      (long long)len[rows[k]], (long long)lens[k]);
            total += count;
            nb_tape_reset(tape);
        }
        CHECK(total == nv, "view epoch covered %lld of %lld", (long long)total, (long long)nv);
        nb_tape_end(tape);
        nb_tape_free(tape);
        nb_batches_free(bv);
    }
    nb_dataset_free(train);
    nb_dataset_free(val);

    /* bad input */
    int64_t bad[N];
    memcpy(bad, len, sizeof bad);
    bad[5] = T + 1;
    CHECK_ERROR(nb_batches_by_length(d, bad, BATCH, WINDOW, 1, 0) == NULL, NB_ERR_ARG, "length 13 of sample 5");
    CHECK_ERROR(nb_batches_by_length(d, NULL, BATCH, WINDOW, 1, 0) == NULL, NB_ERR_ARG, "need lengths");
    CHECK_ERROR(nb_batches_by_length(d, len, BATCH, 0, 1, 0) == NULL, NB_ERR_ARG, "window >= 1");
    CHECK_ERROR(nb_batches_by_length(d, len, 0, WINDOW, 1, 0) == NULL, NB_ERR_ARG, "batch_size 0");
    nb_batches *plain = nb_batches_new(d, BATCH, 0, 0, 0);
    CHECK(nb_batches_lengths(plain, NULL) == NULL, "plain batches have no lengths");
    nb_batches_free(plain);
    nb_dataset_free(d);
    free(data);
    return nbt_report("batches_by_length");
}
