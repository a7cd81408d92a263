/* The data part of nabla/train: datasets and batches (every sample once per epoch, seeded orders,
 * contents by index, batches on the tape, no steady-state allocation), seeded splits, the IDX reader
 * (valid raw and gzip files read back exactly; malformed files each refused with a clear error;
 * Fashion-MNIST's test labels when installed) and byte vocabularies. */
#define _POSIX_C_SOURCE 200809L

#include "nbtest.h"

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

/* ---- a counting allocator (set first, for the whole program) ---------------------------------- */

static long g_allocs;

static void *count_alloc(size_t size, void *user)
{
    (void)user;
    g_allocs++;
    return malloc(size);
}

static void *count_realloc(void *ptr, size_t old_size, size_t new_size, void *user)
{
    (void)user;
    (void)old_size;
    g_allocs++;
    return realloc(ptr, new_size);
}

static void count_free(void *ptr, size_t size, void *user)
{
    (void)user;
    (void)size;
    free(ptr);
}

/* ---- datasets and batches --------------------------------------------------------------------- */

#define FEAT 3

/* inputs f64 [n, FEAT] with x[r][j] = 1000 r + j; targets i64 [n] with y[r] = 7 r + 1 */
static nb_dataset *make_dataset(int64_t n)
{
    nb_tensor *x = nb_tensor_zeros(NB_F64, NB_SHAPE(n, FEAT));
    nb_tensor *y = nb_tensor_zeros(NB_I64, NB_SHAPE(n));
    double *xd = nb_tensor_data(x);
    int64_t *yd = nb_tensor_data(y);
    for (int64_t r = 0; r < n; r++) {
        for (int j = 0; j < FEAT; j++) xd[r * FEAT + j] = 1000.0 * (double)r + j;
        yd[r] = 7 * r + 1;
    }
    return nb_dataset_new(x, y);
}

/* Whether batch x [count, FEAT] and y [count] hold the rows listed in idx (x: counts a mismatch). */
static int batch_matches(nb_tensor *x, nb_tensor *y, const int64_t *idx, int64_t count)
{
    if (!x || !y || nb_tensor_ndim(x) != 2 || nb_tensor_dim(x, 0) != count || nb_tensor_dim(x, 1) != FEAT ||
        nb_tensor_ndim(y) != 1 || nb_tensor_dim(y, 0) != count)
        return 0;
    const double *xd = nb_tensor_cdata(x);
    const int64_t *yd = nb_tensor_cdata(y);
    for (int64_t k = 0; k < count; k++) {
        for (int j = 0; j < FEAT; j++)
            if (xd[k * FEAT + j] != 1000.0 * (double)idx[k] + j) return 0;
        if (yd[k] != 7 * idx[k] + 1) return 0;
    }
    return 1;
}

/* Run one epoch over b; order receives the rows in the order seen (at most cap), *seen_n their count,
 * *n_batches the batches. Checks sizes and contents on the way. Returns 0 if a call failed. */
static int run_epoch(nb_tape *tape, nb_batches *b, int64_t bs, int drop_last, int64_t *order, int64_t cap,
                     int64_t *seen_n, int64_t *n_batches)
{
    *seen_n = 0;
    *n_batches = 0;
    int ok = 1, bad_content = 0, bad_size = 0, r;
    int64_t last_count = -1;
    nb_tensor *x, *y;
    while ((r = nb_batches_next(b, &x, &y)) == 1) {
        int64_t count;
        const int64_t *idx = nb_batches_indices(b, &count);
        if (!batch_matches(x, y, idx, count)) bad_content++;
        /* only the last batch may be short, and never with drop_last */
        if (last_count >= 0 && last_count != bs) bad_size++;
        if (count > bs || count < 1 || (drop_last && count != bs)) bad_size++;
        last_count = count;
        for (int64_t k = 0; k < count; k++) {
            if (*seen_n < cap) order[*seen_n] = idx[k];
            (*seen_n)++;
        }
        (*n_batches)++;
        nb_tape_reset(tape);
    }
    if (r != 0) ok = 0;
    CHECK(bad_content == 0, "%d batches whose contents are not the rows of their indices", bad_content);
    CHECK(bad_size == 0, "%d batches of a wrong size (bs %lld, drop_last %d)", bad_size, (long long)bs, drop_last);
    return ok;
}

static void test_epochs_cover(void)
{
    const int64_t sizes[] = {1, 7, 12, 30};
    const int64_t batch_sizes[] = {1, 3, 4, 5, 12, 40};
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    int64_t order[64], seen_count[64];
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int64_t n = sizes[si];
        nb_dataset *d = make_dataset(n);
        CHECK(d && nb_dataset_size(d) == n, "dataset of %lld rows", (long long)n);
        for (size_t bi = 0; bi < sizeof batch_sizes / sizeof batch_sizes[0]; bi++)
            for (int shuffle = 0; shuffle < 2; shuffle++)
                for (int drop = 0; drop < 2; drop++) {
                    int64_t bs = batch_sizes[bi];
                    nb_batches *b = nb_batches_new(d, bs, shuffle, drop, 5);
                    int64_t want_batches = drop ? n / bs : (n + bs - 1) / bs;
                    int64_t want_seen = drop ? n / bs * bs : n;
                    CHECK(nb_batches_per_epoch(b) == want_batches, "per_epoch n %lld bs %lld drop %d: %lld",
                          (long long)n, (long long)bs, drop, (long long)nb_batches_per_epoch(b));
                    for (int epoch = 0; epoch < 3; epoch++) {
                        int64_t seen, nb;
                        int ok = run_epoch(tape, b, bs, drop, order, 64, &seen, &nb);
                        CHECK(ok, "epoch ended with an error: %s", nb_error_message());
                        CHECK(nb == want_batches && seen == want_seen,
                              "n %lld bs %lld shuffle %d drop %d epoch %d: %lld batches, %lld samples (want "
                              "%lld, %lld)", (long long)n, (long long)bs, shuffle, drop, epoch, (long long)nb,
                              (long long)seen, (long long)want_batches, (long long)want_seen);
                        memset(seen_count, 0, sizeof seen_count);
                        int dup = 0, in_order = 1;
                        for (int64_t k = 0; k < seen && k < 64; k++) {
                            if (order[k] < 0 || order[k] >= n || seen_count[order[k]]++) dup++;
                            if (order[k] != k) in_order = 0;
                        }
                        CHECK(dup == 0, "n %lld bs %lld: %d samples repeated or out of range", (long long)n,
                              (long long)bs, dup);
                        if (!drop) /* every sample exactly once */
                            for (int64_t r = 0; r < n; r++)
                                CHECK(seen_count[r] == 1, "sample %lld seen %lld times", (long long)r,
                                      (long long)seen_count[r]);
                        if (!shuffle) CHECK(in_order, "unshuffled batches follow storage order");
                    }
                    nb_batches_free(b);
                }
        nb_dataset_free(d);
    }
    nb_tape_end(tape);
    nb_tape_free(tape);
    CHECK_NO_ERROR();
}

/* The rows of `epochs` consecutive epochs of batches over d (shuffled, seed). */
static void epoch_orders(const nb_dataset *d, int64_t bs, uint64_t seed, int epochs, int64_t *out)
{
    int64_t n = nb_dataset_size(d);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_batches *b = nb_batches_new(d, bs, 1, 0, seed);
    for (int e = 0; e < epochs; e++) {
        int64_t seen, nbat;
        run_epoch(tape, b, bs, 0, out + e * n, n, &seen, &nbat);
    }
    nb_batches_free(b);
    nb_tape_end(tape);
    nb_tape_free(tape);
}

static void test_seeded_orders(void)
{
    enum { N = 50, E = 3 };
    nb_dataset *d = make_dataset(N);
    int64_t a[E * N], b[E * N], c[E * N];
    epoch_orders(d, 8, 1234, E, a);
    epoch_orders(d, 8, 1234, E, b);
    epoch_orders(d, 8, 1235, E, c);
    CHECK(memcmp(a, b, sizeof a) == 0, "the same seed gives the same epoch orders");
    CHECK(memcmp(a, c, N * sizeof(int64_t)) != 0, "another seed gives another first epoch");
    CHECK(memcmp(a, a + N, N * sizeof(int64_t)) != 0 && memcmp(a + N, a + 2 * N, N * sizeof(int64_t)) != 0,
          "each epoch has a new order");
    int identity = 1;
    for (int i = 0; i < N; i++) identity &= a[i] == i;
    CHECK(!identity, "a shuffled epoch is not in storage order");
    /* the batch size does not change the stream of orders */
    epoch_orders(d, 7, 1234, E, b);
    CHECK(memcmp(a, b, sizeof a) == 0, "orders depend on the seed, not on the batch size");
    nb_dataset_free(d);
    CHECK_NO_ERROR();
}

static void test_split(void)
{
    enum { N = 101 };
    nb_dataset *d = make_dataset(N), *tr = NULL, *va = NULL, *tr2 = NULL, *va2 = NULL;
    CHECK(nb_dataset_split(d, 0.2, 9, &tr, &va) == NB_OK, "split: %s", nb_error_message());
    CHECK(nb_dataset_size(va) == 20 && nb_dataset_size(tr) == 81, "split sizes %lld + %lld",
          (long long)nb_dataset_size(tr), (long long)nb_dataset_size(va));
    CHECK(nb_dataset_inputs(tr) == nb_dataset_inputs(d) && nb_dataset_targets(va) == nb_dataset_targets(d),
          "views share the parent's tensors (no copy)");

    /* the rows of each view, by iterating it unshuffled */
    int64_t rows_tr[N], rows_va[N], count[N] = {0}, seen, nb;
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_batches *btr = nb_batches_new(tr, 16, 0, 0, 0), *bva = nb_batches_new(va, 16, 0, 0, 0);
    CHECK(run_epoch(tape, btr, 16, 0, rows_tr, N, &seen, &nb) && seen == 81, "train epoch: %lld", (long long)seen);
    CHECK(run_epoch(tape, bva, 16, 0, rows_va, N, &seen, &nb) && seen == 20, "val epoch: %lld", (long long)seen);
    for (int i = 0; i < 81; i++) count[rows_tr[i]]++;
    for (int i = 0; i < 20; i++) count[rows_va[i]]++;
    int bad = 0;
    for (int i = 0; i < N; i++) bad += count[i] != 1;
    CHECK(bad == 0, "train and val are disjoint and cover every row once (%d rows off)", bad);
    int sorted = 1;
    for (int i = 1; i < 20; i++) sorted &= rows_va[i] > rows_va[i - 1];
    CHECK(sorted, "a view keeps its rows in storage order");
    int contiguous = 1;
    for (int i = 1; i < 20; i++) contiguous &= rows_va[i] == rows_va[i - 1] + 1;
    CHECK(!contiguous, "val is a random subset, not a block");
    nb_batches_free(btr);
    nb_batches_free(bva);

    /* shuffled batches over a view stay inside it and cover it once */
    nb_batches *bs = nb_batches_new(va, 6, 1, 0, 3);
    int64_t shuf[N];
    CHECK(run_epoch(tape, bs, 6, 0, shuf, N, &seen, &nb) && seen == 20 && nb == 4, "shuffled val: %lld in %lld",
          (long long)seen, (long long)nb);
    int64_t cnt2[N] = {0};
    for (int i = 0; i < 20; i++) cnt2[shuf[i]]++;
    bad = 0;
    for (int i = 0; i < 20; i++) bad += cnt2[rows_va[i]] != 1;
    CHECK(bad == 0, "a shuffled epoch over the view is a permutation of its rows");
    nb_batches_free(bs);

    /* the same seed splits the same way; another seed differently */
    CHECK(nb_dataset_split(d, 0.2, 9, &tr2, &va2) == NB_OK, "second split");
    nb_batches *b2 = nb_batches_new(va2, 32, 0, 0, 0);
    int64_t rows_va2[N];
    run_epoch(tape, b2, 32, 0, rows_va2, N, &seen, &nb);
    CHECK(seen == 20 && memcmp(rows_va, rows_va2, 20 * sizeof(int64_t)) == 0, "same seed, same split");
    nb_batches_free(b2);
    nb_dataset_free(tr2);
    nb_dataset_free(va2);
    CHECK(nb_dataset_split(d, 0.2, 10, &tr2, &va2) == NB_OK, "third split");
    b2 = nb_batches_new(va2, 32, 0, 0, 0);
    run_epoch(tape, b2, 32, 0, rows_va2, N, &seen, &nb);
    CHECK(seen == 20 && memcmp(rows_va, rows_va2, 20 * sizeof(int64_t)) != 0, "another seed, another split");
    nb_batches_free(b2);
    nb_dataset_free(tr2);
    nb_dataset_free(va2);

    /* a split of a view partitions the view's rows */
    CHECK(nb_dataset_split(tr, 0.5, 1, &tr2, &va2) == NB_OK, "split of a view");
    CHECK(nb_dataset_size(va2) == 41 && nb_dataset_size(tr2) == 40, "round(0.5 * 81) = 41 (%lld)",
          (long long)nb_dataset_size(va2));
    int64_t sub[N], in_tr[N] = {0};
    for (int i = 0; i < 81; i++) in_tr[rows_tr[i]] = 1;
    int64_t total = 0;
    nb_dataset *parts[2] = {tr2, va2};
    int64_t cnt3[N] = {0};
    for (int p = 0; p < 2; p++) {
        b2 = nb_batches_new(parts[p], 10, 1, 0, 2);
        run_epoch(tape, b2, 10, 0, sub, N, &seen, &nb);
        for (int64_t i = 0; i < seen; i++) cnt3[sub[i]]++;
        total += seen;
        nb_batches_free(b2);
    }
    bad = 0;
    for (int i = 0; i < N; i++) bad += cnt3[i] != in_tr[i];
    CHECK(total == 81 && bad == 0, "the nested split covers exactly the view's rows (%d off)", bad);
    nb_dataset_free(tr2);
    nb_dataset_free(va2);

    /* the extremes, and refused fractions */
    CHECK(nb_dataset_split(d, 0.0, 1, &tr2, &va2) == NB_OK && nb_dataset_size(va2) == 0 &&
          nb_dataset_size(tr2) == N, "fraction 0: empty val");
    b2 = nb_batches_new(va2, 4, 1, 0, 0);
    nb_tensor *x, *y;
    CHECK(nb_batches_per_epoch(b2) == 0 && nb_batches_next(b2, &x, &y) == 0 && nb_batches_next(b2, &x, &y) == 0,
          "an empty view has no batches");
    nb_batches_free(b2);
    nb_dataset_free(tr2);
    nb_dataset_free(va2);
    CHECK(nb_dataset_split(d, 1.0, 1, &tr2, &va2) == NB_OK && nb_dataset_size(va2) == N &&
          nb_dataset_size(tr2) == 0, "fraction 1: empty train");
    nb_dataset_free(tr2);
    nb_dataset_free(va2);
    CHECK_ERROR(nb_dataset_split(d, -0.1, 1, &tr2, &va2) != NB_OK, NB_ERR_ARG, "val_fraction -0.1");
    CHECK(tr2 == NULL && va2 == NULL, "a failed split sets both outputs to NULL");
    CHECK_ERROR(nb_dataset_split(d, 1.5, 1, &tr2, &va2) != NB_OK, NB_ERR_ARG, "not in [0, 1]");
    CHECK_ERROR(nb_dataset_split(d, NAN, 1, &tr2, &va2) != NB_OK, NB_ERR_ARG, "not in [0, 1]");
    CHECK_ERROR(nb_dataset_split(NULL, 0.5, 1, &tr2, &va2) != NB_OK, NB_ERR_ARG, "nb_dataset_split: dataset");
    CHECK_ERROR(nb_dataset_split(d, 0.5, 1, NULL, &va2) != NB_OK, NB_ERR_ARG, "train is NULL");

    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_dataset_free(tr);
    nb_dataset_free(va);
    nb_dataset_free(d);
    CHECK_NO_ERROR();
}

static void test_batches_on_tape(void)
{
    /* inputs f32 [10, 2, 3] (rows of several dims), no targets */
    nb_tensor *xs = nb_tensor_zeros(NB_F32, NB_SHAPE(10, 2, 3));
    float *xd = nb_tensor_data(xs);
    for (int i = 0; i < 60; i++) xd[i] = (float)i;
    nb_dataset *d = nb_dataset_new(xs, NULL);
    CHECK(d && nb_dataset_targets(d) == NULL && nb_dataset_inputs(d) == xs, "a dataset without targets");
    nb_batches *b = nb_batches_new(d, 4, 1, 0, 77);
    nb_tensor *x, *y = (nb_tensor *)d; /* must be overwritten with NULL */

    CHECK_ERROR(nb_batches_next(b, &x, &y) < 0, NB_ERR_STATE, "no current tape");

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    CHECK(nb_batches_next(b, &x, &y) == 1 && y == NULL, "a batch, no targets");
    int64_t count;
    const int64_t *idx = nb_batches_indices(b, &count);
    CHECK(count == 4 && nb_tensor_ndim(x) == 3 && nb_tensor_dim(x, 0) == 4 && nb_tensor_dim(x, 1) == 2 &&
          nb_tensor_dim(x, 2) == 3 && nb_tensor_dtype(x) == NB_F32, "batch [4,2,3] f32");
    int bad = 0;
    const float *bx = nb_tensor_cdata(x);
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 6; j++) bad += bx[k * 6 + j] != (float)(idx[k] * 6 + j);
    CHECK(bad == 0, "a batch of [2,3] rows holds the rows of its indices");
    CHECK(!nb_tensor_is_leaf(x) && !nb_tensor_requires_grad(x), "the batch is a tape constant");
    CHECK(nb_tape_node_count(tape) == 0, "gathering records no node (%zu)", nb_tape_node_count(tape));
    CHECK(nb_tape_bytes_used(tape) > 0, "the batch lives in the tape's arena");
    nb_tape_reset(tape);
    CHECK(nb_tape_bytes_used(tape) == 0, "reset releases it");

    /* under no-grad too; and with a nested tape the batch goes onto the inner one */
    nb_tape *inner = nb_tape_new();
    nb_tape_begin(inner);
    CHECK(nb_batches_next(b, &x, NULL) == 1, "y may be NULL");
    CHECK(nb_tape_bytes_used(inner) > 0 && nb_tape_bytes_used(tape) == 0, "the batch is on the current tape");
    nb_tape_end(inner);
    nb_tape_free(inner);
    nb_tape_reset(tape);

    /* a steady epoch loop allocates nothing after the first epoch */
    nb_batches *b2 = nb_batches_new(d, 3, 1, 0, 1);
    for (int e = 0; e < 2; e++)
        while (nb_batches_next(b2, &x, NULL) == 1) nb_tape_reset(tape);
    long before = g_allocs;
    int batches = 0;
    for (int e = 0; e < 5; e++)
        while (nb_batches_next(b2, &x, NULL) == 1) {
            batches++;
            nb_tape_reset(tape);
        }
    CHECK(batches == 20, "5 epochs of 4 batches (%d)", batches);
    CHECK(g_allocs == before, "%ld allocations in 5 steady epochs", g_allocs - before);
    nb_batches_free(b2);

    /* argument errors */
    CHECK_ERROR(nb_batches_next(NULL, &x, NULL) < 0, NB_ERR_ARG, "nb_batches_next: batches is NULL");
    CHECK_ERROR(nb_batches_next(b, NULL, NULL) < 0, NB_ERR_ARG, "x is NULL");
    CHECK_ERROR(nb_batches_new(d, 0, 0, 0, 0) == NULL, NB_ERR_ARG, "batch_size 0");
    CHECK_ERROR(nb_batches_new(NULL, 4, 0, 0, 0) == NULL, NB_ERR_ARG, "nb_batches_new: dataset is NULL");
    CHECK_ERROR(nb_batches_per_epoch(NULL) < 0, NB_ERR_ARG, "nb_batches_per_epoch");
    CHECK_ERROR(nb_batches_indices(NULL, &count) == NULL, NB_ERR_ARG, "nb_batches_indices");
    CHECK_ERROR(nb_dataset_size(NULL) < 0, NB_ERR_ARG, "nb_dataset_size");
    CHECK_ERROR(nb_dataset_inputs(NULL) == NULL, NB_ERR_ARG, "nb_dataset_inputs");
    nb_batches_free(b);
    nb_batches_free(NULL);
    nb_dataset_free(d);
    nb_dataset_free(NULL);

    /* dataset construction errors (the tensors are taken over and freed: the sanitizer build checks) */
    CHECK_ERROR(nb_dataset_new(NULL, nb_tensor_zeros(NB_I64, NB_SHAPE(3))) == NULL, NB_ERR_ARG, "inputs is NULL");
    CHECK_ERROR(nb_dataset_new(nb_tensor_zeros(NB_F64, NB_SHAPE(3, 2)), nb_tensor_zeros(NB_I64, NB_SHAPE(4))) == NULL,
                NB_ERR_SHAPE, "inputs [3,2] and targets [4] have different row counts");
    CHECK_ERROR(nb_dataset_new(nb_tensor_zeros(NB_F64, 0, NULL), NULL) == NULL, NB_ERR_SHAPE, "inputs is 0-d");
    nb_tensor *g = nb_tensor_zeros(NB_F64, NB_SHAPE(3, 2));
    nb_tensor_set_requires_grad(g, 1);
    CHECK_ERROR(nb_dataset_new(g, NULL) == NULL, NB_ERR_ARG, "requires grad");
    nb_tensor *s = nb_tensor_zeros(NB_F64, NB_SHAPE(3));
    CHECK_ERROR(nb_dataset_new(s, s) == NULL, NB_ERR_ARG, "the same tensor");
    nb_tensor *leaf = nb_tensor_ones(NB_F64, NB_SHAPE(3, 2));
    nb_tensor *op = nb_mul_scalar(leaf, 2.0);
    CHECK_ERROR(nb_dataset_new(op, NULL) == NULL, NB_ERR_ARG, "op result");
    nb_tensor_free(leaf);
    nb_tape_end(tape);
    nb_tape_free(tape);
    CHECK_NO_ERROR();
}

/* ---- IDX -------------------------------------------------------------------------------------- */

static char g_dir[64];

static const char *tmp_path(const char *name)
{
    static char buf[4][256];
    static int which = 0;
    char *p = buf[which];
    which = (which + 1) % 4;
    snprintf(p, sizeof buf[0], "%s/%s", g_dir, name);
    return p;
}

static const char *write_raw(const char *name, const void *data, size_t len)
{
    const char *path = tmp_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len)) NBT_FAIL("cannot write %s", path);
    if (f) fclose(f);
    return path;
}

static const char *write_gz(const char *name, const void *data, size_t len)
{
    const char *path = tmp_path(name);
    gzFile f = gzopen(path, "wb");
    if (!f || (len && gzwrite(f, data, (unsigned)len) != (int)len)) NBT_FAIL("cannot write %s", path);
    if (f) gzclose(f);
    return path;
}

/* The whole of a file (malloc'ed) and its length. */
static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    *len = 0;
    if (!f) return NULL;
    unsigned char *buf = malloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

/* An IDX header: magic (0, 0, type, ndim) and the extents, big-endian; returns its length. */
static size_t idx_header(unsigned char *p, unsigned char type, int ndim, const uint32_t *dims)
{
    p[0] = 0;
    p[1] = 0;
    p[2] = type;
    p[3] = (unsigned char)ndim;
    for (int i = 0; i < ndim; i++) {
        p[4 + 4 * i] = (unsigned char)(dims[i] >> 24);
        p[5 + 4 * i] = (unsigned char)(dims[i] >> 16);
        p[6 + 4 * i] = (unsigned char)(dims[i] >> 8);
        p[7 + 4 * i] = (unsigned char)dims[i];
    }
    return 4 + 4 * (size_t)ndim;
}

static void put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
}

static int shape_is(const nb_tensor *t, int ndim, const int64_t *shape)
{
    if (!t || nb_tensor_ndim(t) != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (nb_tensor_dim(t, i) != shape[i]) return 0;
    return 1;
}

static void test_idx_valid(void)
{
    unsigned char buf[512];
    nb_tensor *t = NULL;

    /* ubyte [3,2,2]: values 20 i mod 256 */
    size_t h = idx_header(buf, 0x08, 3, (const uint32_t[]){3, 2, 2});
    for (int i = 0; i < 12; i++) buf[h + i] = (unsigned char)(20 * i % 256);
    const char *paths[2] = {write_raw("u8.idx", buf, h + 12), write_gz("u8.idx.gz", buf, h + 12)};
    for (int p = 0; p < 2; p++) {
        CHECK(nb_idx_read(paths[p], NB_F32, 1.0 / 255, &t) == NB_OK, "%s: %s", paths[p], nb_error_message());
        CHECK(shape_is(t, NB_SHAPE(3, 2, 2)) && nb_tensor_dtype(t) == NB_F32, "ubyte shape [3,2,2] f32");
        int bad = 0;
        for (int i = 0; i < 12 && t; i++) bad += ((const float *)nb_tensor_cdata(t))[i] != (float)((20 * i % 256) / 255.0);
        CHECK(t && bad == 0, "%s: ubyte * 1/255 exactly (%d off)", paths[p], bad);
        nb_tensor_free(t);
        CHECK(nb_idx_read(paths[p], NB_F64, 0.5, &t) == NB_OK && nb_tensor_get(t, 11) == 220 * 0.5 &&
              nb_tensor_get(t, 1) == 10.0, "ubyte as f64 with scale 0.5");
        nb_tensor_free(t);
        CHECK(nb_idx_read(paths[p], NB_I64, 1.0 / 255, &t) == NB_OK && nb_tensor_dtype(t) == NB_I64 &&
              ((const int64_t *)nb_tensor_cdata(t))[7] == 140 && ((const int64_t *)nb_tensor_cdata(t))[12 - 1] == 220,
              "ubyte as i64 labels: integers, scale ignored");
        nb_tensor_free(t);
    }

    /* i32 [2,3] with extreme and negative values */
    const int64_t i32v[6] = {-5, 70000, INT32_MIN, INT32_MAX, 0, 1};
    h = idx_header(buf, 0x0C, 2, (const uint32_t[]){2, 3});
    for (int i = 0; i < 6; i++) put_be(buf + h + 4 * i, (uint64_t)(uint32_t)(int32_t)i32v[i], 4);
    paths[0] = write_raw("i32.idx", buf, h + 24);
    paths[1] = write_gz("i32.idx.gz", buf, h + 24);
    for (int p = 0; p < 2; p++) {
        CHECK(nb_idx_read(paths[p], NB_I64, 0.0, &t) == NB_OK && shape_is(t, NB_SHAPE(2, 3)), "%s", paths[p]);
        int bad = 0;
        for (int i = 0; i < 6 && t; i++) bad += ((const int64_t *)nb_tensor_cdata(t))[i] != i32v[i];
        CHECK(t && bad == 0, "%s: i32 as i64 exactly", paths[p]);
        nb_tensor_free(t);
        CHECK(nb_idx_read(paths[p], NB_F64, 3.0, &t) == NB_OK, "i32 as f64");
        bad = 0;
        for (int i = 0; i < 6 && t; i++) bad += nb_tensor_get(t, i) != (double)i32v[i];
        CHECK(t && bad == 0, "i32 as f64 exactly, scale not applied");
        nb_tensor_free(t);
    }

    /* f64 [2,2] */
    const double f64v[4] = {1.5, -2.25, 1e300, 3.141592653589793};
    h = idx_header(buf, 0x0E, 2, (const uint32_t[]){2, 2});
    for (int i = 0; i < 4; i++) {
        uint64_t u;
        memcpy(&u, &f64v[i], 8);
        put_be(buf + h + 8 * i, u, 8);
    }
    paths[0] = write_raw("f64.idx", buf, h + 32);
    paths[1] = write_gz("f64.idx.gz", buf, h + 32);
    for (int p = 0; p < 2; p++) {
        CHECK(nb_idx_read(paths[p], NB_F64, 2.0, &t) == NB_OK && shape_is(t, NB_SHAPE(2, 2)), "%s", paths[p]);
        int bad = 0;
        for (int i = 0; i < 4 && t; i++) bad += nb_tensor_get(t, i) != f64v[i];
        CHECK(t && bad == 0, "%s: f64 exactly", paths[p]);
        nb_tensor_free(t);
        CHECK_ERROR(nb_idx_read(paths[p], NB_I64, 1.0, &t) != NB_OK, NB_ERR_DTYPE, "f64 data cannot be read as i64");
        CHECK(t == NULL, "a failed read leaves *out NULL");
    }

    /* f32, sbyte and i16 */
    h = idx_header(buf, 0x0D, 1, (const uint32_t[]){2});
    const float f32v[2] = {0.1f, -7.75f};
    for (int i = 0; i < 2; i++) {
        uint32_t u;
        memcpy(&u, &f32v[i], 4);
        put_be(buf + h + 4 * i, u, 4);
    }
    CHECK(nb_idx_read(write_raw("f32.idx", buf, h + 8), NB_F64, 1.0, &t) == NB_OK &&
          nb_tensor_get(t, 0) == (double)0.1f && nb_tensor_get(t, 1) == -7.75, "f32 as f64 exactly");
    nb_tensor_free(t);
    h = idx_header(buf, 0x09, 1, (const uint32_t[]){3});
    buf[h] = 0x80;
    buf[h + 1] = 0xFF;
    buf[h + 2] = 0x7F;
    CHECK(nb_idx_read(write_raw("s8.idx", buf, h + 3), NB_I64, 1.0, &t) == NB_OK && nb_tensor_get(t, 0) == -128 &&
          nb_tensor_get(t, 1) == -1 && nb_tensor_get(t, 2) == 127, "sbyte -128, -1, 127");
    nb_tensor_free(t);
    h = idx_header(buf, 0x0B, 1, (const uint32_t[]){2});
    put_be(buf + h, 0x8000, 2);
    put_be(buf + h + 2, 1234, 2);
    CHECK(nb_idx_read(write_raw("i16.idx", buf, h + 4), NB_F32, 1.0, &t) == NB_OK && nb_tensor_get(t, 0) == -32768 &&
          nb_tensor_get(t, 1) == 1234, "i16 -32768, 1234");
    nb_tensor_free(t);

    /* a larger gzip file, read across several chunks: ubyte [300, 17, 29] */
    size_t n = 300 * 17 * 29;
    unsigned char *big = malloc(16 + n);
    h = idx_header(big, 0x08, 3, (const uint32_t[]){300, 17, 29});
    for (size_t i = 0; i < n; i++) big[h + i] = (unsigned char)((i * 2654435761u) >> 13);
    CHECK(nb_idx_read(write_gz("big.idx.gz", big, h + n), NB_F32, 1.0, &t) == NB_OK &&
          shape_is(t, NB_SHAPE(300, 17, 29)), "a multi-chunk gzip file: %s", nb_error_message());
    int bad = 0;
    for (size_t i = 0; i < n && t; i++) bad += ((const float *)nb_tensor_cdata(t))[i] != (float)big[h + i];
    CHECK(t && bad == 0, "every byte of a multi-chunk file (%d off)", bad);
    nb_tensor_free(t);
    free(big);
    CHECK_NO_ERROR();
}

static void test_idx_malformed(void)
{
    unsigned char buf[512];
    nb_tensor *t = NULL;
    size_t h;
#define BAD(path, code, needle)                                                                        \
    do {                                                                                               \
        CHECK_ERROR(nb_idx_read((path), NB_F32, 1.0, &t) != NB_OK, code, needle);                      \
        CHECK(t == NULL, "no tensor from a failed read");                                              \
    } while (0)

    /* a valid ubyte [2,3] to start from */
    h = idx_header(buf, 0x08, 2, (const uint32_t[]){2, 3});
    memcpy(buf + h, "\1\2\3\4\5\6", 6);
    CHECK(nb_idx_read(write_raw("ok.idx", buf, h + 6), NB_F32, 1.0, &t) == NB_OK, "the base file is valid");
    nb_tensor_free(t);
    t = NULL;

    unsigned char m[64];
    memcpy(m, buf, h + 6);
    m[0] = 0x01;
    BAD(write_raw("magic.idx", m, h + 6), NB_ERR_FORMAT, "bad magic 01 00 08 02");
    memcpy(m, buf, h + 6);
    m[2] = 0x0A;
    BAD(write_raw("type.idx", m, h + 6), NB_ERR_FORMAT, "unknown element type 0x0a");
    BAD(write_raw("ndim0.idx", (const unsigned char[]){0, 0, 8, 0, 1}, 5), NB_ERR_FORMAT,
        "0 dimensions in the magic: expected 1 to 8");
    h = idx_header(m, 0x08, 9, (const uint32_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1});
    m[h] = 7;
    BAD(write_raw("ndim9.idx", m, h + 1), NB_ERR_FORMAT, "9 dimensions in the magic");
    h = idx_header(m, 0x08, 2, (const uint32_t[]){2, 0});
    BAD(write_raw("extent0.idx", m, h), NB_ERR_FORMAT, "dimension 1 of [2,0] is 0");
    h = idx_header(m, 0x0E, 8, (const uint32_t[]){~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u});
    BAD(write_raw("overflow.idx", m, h), NB_ERR_FORMAT, "too many elements");

    h = idx_header(buf, 0x08, 2, (const uint32_t[]){2, 3});
    BAD(write_raw("short.idx", buf, h + 5), NB_ERR_FORMAT, "truncated data: file is 17 bytes");
    memcpy(m, buf, h + 6);
    m[h + 6] = 9;
    BAD(write_raw("trailing.idx", m, h + 7), NB_ERR_FORMAT, "trailing bytes: file is 19 bytes");
    BAD(write_raw("header.idx", buf, 9), NB_ERR_FORMAT, "truncated header: 5 of 8 dimension bytes");
    BAD(write_raw("magic2.idx", buf, 2), NB_ERR_FORMAT, "truncated header: 2 of 4 magic bytes");
    BAD(write_raw("empty.idx", buf, 0), NB_ERR_FORMAT, "empty file");
    BAD(write_gz("empty.idx.gz", buf, 0), NB_ERR_FORMAT, "empty file");

    /* gzip: a valid stream of a bad IDX is judged on its contents */
    BAD(write_gz("short.idx.gz", buf, h + 5), NB_ERR_FORMAT, "truncated data: 5 of 6 data bytes");
    BAD(write_gz("trailing.idx.gz", m, h + 7), NB_ERR_FORMAT, "trailing bytes after the 12 header + 6 data bytes");
    BAD(write_gz("header.idx.gz", buf, 9), NB_ERR_FORMAT, "truncated header");
    /* a header asking for far more data than the compressed file could hold */
    h = idx_header(m, 0x08, 2, (const uint32_t[]){0x7FFFFFFF, 1000});
    BAD(write_gz("huge.idx.gz", m, h + 10), NB_ERR_FORMAT, "more than a gzip file");

    /* broken gzip streams: a reserved block type, a bad CRC, cut in the data, cut in the trailer */
    size_t n = 4000;
    unsigned char *big = malloc(16 + n);
    h = idx_header(big, 0x08, 2, (const uint32_t[]){40, 100});
    for (size_t i = 0; i < n; i++) big[h + i] = (unsigned char)((i * 2654435761u) >> 11);
    const char *good = write_gz("good.idx.gz", big, h + n);
    CHECK(nb_idx_read(good, NB_F32, 1.0, &t) == NB_OK, "the base gzip file is valid");
    nb_tensor_free(t);
    t = NULL;
    size_t len;
    unsigned char *gz = slurp(good, &len);
    CHECK(gz && len > 100 && gz[0] == 0x1f && gz[1] == 0x8b && gz[3] == 0, "a gzip file with a 10-byte header");
    if (gz && len > 100) {
        unsigned char saved = gz[10];
        gz[10] |= 0x06; /* BTYPE 11: reserved */
        BAD(write_raw("blocktype.idx.gz", gz, len), NB_ERR_FORMAT, "corrupt gzip stream");
        gz[10] = saved;
        gz[len - 8] ^= 0x5A; /* CRC32 of the data */
        BAD(write_raw("crc.idx.gz", gz, len), NB_ERR_FORMAT, "corrupt gzip stream");
        gz[len - 8] ^= 0x5A;
        BAD(write_raw("cut.idx.gz", gz, len / 2), NB_ERR_FORMAT, "truncated gzip stream");
        BAD(write_raw("cut-trailer.idx.gz", gz, len - 4), NB_ERR_FORMAT, "truncated gzip stream");
        BAD(write_raw("cut-header.idx.gz", gz, 6), NB_ERR_FORMAT, "truncated gzip stream");
        CHECK(nb_idx_read(write_raw("same.idx.gz", gz, len), NB_F32, 1.0, &t) == NB_OK, "restored bytes read");
        nb_tensor_free(t);
        t = NULL;
    }
    free(gz);
    free(big);

    /* files that cannot be read, and bad arguments */
    const char *missing = tmp_path("no-such-file.idx");
    BAD(missing, NB_ERR_IO, missing);
    BAD(missing, NB_ERR_IO, "cannot open");
    BAD(g_dir, NB_ERR_IO, g_dir);
    CHECK_ERROR(nb_idx_read(NULL, NB_F32, 1.0, &t) != NB_OK, NB_ERR_ARG, "path is NULL");
    CHECK_ERROR(nb_idx_read(missing, NB_F32, 1.0, NULL) != NB_OK, NB_ERR_ARG, "out is NULL");
    CHECK_ERROR(nb_idx_read(missing, (nb_dtype)7, 1.0, &t) != NB_OK, NB_ERR_ARG, "invalid dtype 7");
#undef BAD
}

static void test_fashion_mnist_labels(void)
{
    const char *path = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("note: %s not found (install dataset-fashion-mnist); skipping the real-file check\n", path);
        return;
    }
    fclose(f);
    nb_tensor *t = NULL;
    CHECK(nb_idx_read(path, NB_I64, 1.0, &t) == NB_OK, "%s: %s", path, nb_error_message());
    CHECK(shape_is(t, NB_SHAPE(10000)), "t10k labels [10000]");
    int64_t count[10] = {0}, out_of_range = 0;
    const int64_t *y = nb_tensor_cdata(t);
    for (int64_t i = 0; t && i < nb_tensor_numel(t); i++) {
        if (y[i] < 0 || y[i] > 9)
            out_of_range++;
        else
            count[y[i]]++;
    }
    CHECK(out_of_range == 0, "%lld labels outside 0..9", (long long)out_of_range);
    for (int c = 0; c < 10; c++) CHECK(count[c] == 1000, "class %d: %lld labels", c, (long long)count[c]);
    nb_tensor_free(t);
}

/* ---- vocabularies ----------------------------------------------------------------------------- */

static void test_vocab(void)
{
    const char *text = "hello, world\n\xe9h";
    size_t len = strlen(text);
    nb_vocab *v = nb_vocab_build(text, len);
    const char *sorted = "\n ,dehlorw\xe9"; /* the distinct bytes, ascending (as unsigned) */
    int n = (int)strlen(sorted);
    CHECK(v && nb_vocab_size(v) == n, "vocab size %d, expected %d", nb_vocab_size(v), n);
    for (int i = 0; i < n; i++) {
        CHECK(nb_vocab_char(v, i) == (unsigned char)sorted[i], "id %d is byte 0x%02x (got %d)", i,
              (unsigned char)sorted[i], nb_vocab_char(v, i));
        CHECK(nb_vocab_id(v, (unsigned char)sorted[i]) == i, "byte 0x%02x has id %d", (unsigned char)sorted[i], i);
    }
    CHECK(nb_vocab_id(v, 'z') == -1 && nb_vocab_char(v, n) == -1 && nb_vocab_char(v, -1) == -1,
          "absent byte and out-of-range ids give -1");
    CHECK_NO_ERROR();

    int64_t ids[32];
    char back[32];
    CHECK(nb_vocab_encode(v, text, len, ids) == NB_OK, "encode: %s", nb_error_message());
    CHECK(ids[0] == nb_vocab_id(v, 'h') && ids[1] == nb_vocab_id(v, 'e') && ids[len - 2] == n - 1,
          "encoded ids");
    CHECK(nb_vocab_decode(v, ids, len, back) == NB_OK && memcmp(back, text, len) == 0, "decode(encode(text)) == text");

    int64_t keep[4] = {-9, -9, -9, -9};
    CHECK_ERROR(nb_vocab_encode(v, "hex!", 4, keep) != NB_OK, NB_ERR_ARG, "byte 'x' at offset 2 is not in the vocabulary");
    CHECK(keep[0] == -9, "a failed encode writes nothing");
    CHECK_ERROR(nb_vocab_encode(v, "h\x01", 2, keep) != NB_OK, NB_ERR_ARG, "byte 0x01 at offset 1");
    char out[4] = "....";
    CHECK_ERROR(nb_vocab_decode(v, (const int64_t[]){0, (int64_t)n}, 2, out) != NB_OK, NB_ERR_ARG,
                "id 11 at position 1 is out of range [0, 11)");
    CHECK_ERROR(nb_vocab_decode(v, (const int64_t[]){-1}, 1, out) != NB_OK, NB_ERR_ARG, "id -1");
    CHECK(out[0] == '.', "a failed decode writes nothing");
    CHECK_ERROR(nb_vocab_encode(NULL, "h", 1, ids) != NB_OK, NB_ERR_ARG, "vocabulary is NULL");
    CHECK_ERROR(nb_vocab_encode(v, "h", 1, NULL) != NB_OK, NB_ERR_ARG, "ids is NULL");
    CHECK_ERROR(nb_vocab_build(NULL, 3) == NULL, NB_ERR_ARG, "text is NULL");
    CHECK_ERROR(nb_vocab_size(NULL) < 0, NB_ERR_ARG, "nb_vocab_size");
    nb_vocab_free(v);
    nb_vocab_free(NULL);

    nb_vocab *e = nb_vocab_build("", 0);
    CHECK(e && nb_vocab_size(e) == 0 && nb_vocab_char(e, 0) == -1, "an empty text gives an empty vocabulary");
    nb_vocab_free(e);
    CHECK_NO_ERROR();
}

int main(void)
{
    nb_allocator a = {count_alloc, count_realloc, count_free, NULL};
    nb_set_allocator(&a);

    test_epochs_cover();
    test_seeded_orders();
    test_split();
    test_batches_on_tape();
    test_vocab();

    snprintf(g_dir, sizeof g_dir, "/tmp/nabla-data-XXXXXX");
    if (!mkdtemp(g_dir)) {
        NBT_FAIL("mkdtemp failed");
    } else {
        test_idx_valid();
        test_idx_malformed();
        /* remove what was written */
        const char *names[] = {"u8.idx", "u8.idx.gz", "i32.idx", "i32.idx.gz", "f64.idx", "f64.idx.gz", "f32.idx",
                               "s8.idx", "i16.idx", "big.idx.gz", "ok.idx", "magic.idx", "type.idx", "ndim0.idx",
                               "ndim9.idx", "extent0.idx", "overflow.idx", "short.idx", "trailing.idx",
                               "header.idx", "magic2.idx", "empty.idx", "empty.idx.gz", "short.idx.gz",
                               "trailing.idx.gz", "header.idx.gz", "huge.idx.gz", "good.idx.gz",
                               "blocktype.idx.gz", "crc.idx.gz", "cut.idx.gz", "cut-trailer.idx.gz",
                               "cut-header.idx.gz", "same.idx.gz"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) remove(tmp_path(names[i]));
        if (rmdir(g_dir) != 0) printf("note: %s not empty after the test\n", g_dir);
    }
    test_fashion_mnist_labels();

    nb_set_allocator(NULL);
    return nbt_report("data");
}
