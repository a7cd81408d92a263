/* Datasets, seeded splits and batches. Written against nabla.h only, like user code.
 *
 * A dataset owns two leaves whose rows are the samples; a split view borrows them and holds the
 * rows it covers (an index array, no data copied). Batches shuffle a permutation of those rows
 * (Fisher-Yates on a stream seeded once) and gather each batch onto the current tape with
 * nb_index_select: the index tensor is a tape constant, so a batch costs no heap allocation. */
#include <nabla.h>

#include <math.h>
#include <string.h>

#include "sort.h"

struct nb_dataset {
    nb_tensor *inputs, *targets; /* owned by a root dataset, borrowed by a view */
    int64_t *rows;               /* a view: its samples as rows of inputs/targets [size] */
    int64_t size;
    int is_view;
};

/* ---- datasets --------------------------------------------------------------------------------- */

/* Free a leaf handed to nb_dataset_new on failure (an op result, or a leaf with an owner, is not
 * ours to free). */
static void drop_leaf(nb_tensor *t)
{
    if (t && nb_tensor_is_leaf(t) && !nb_tensor_owner(t)) nb_tensor_free(t);
}

/* Whether t can hold samples: a leaf with a row dimension that does not require grad. */
static int check_rows(const nb_tensor *t, const char *what)
{
    char buf[96];
    if (!nb_tensor_is_leaf(t)) {
        nb_error_set(NB_ERR_ARG, "nb_dataset_new: %s %s is an op result; a dataset needs leaves (a view of a "
                     "leaf made with no current tape is one: nb_reshape before nb_tape_begin)", what,
                     nb_shape_str(t, buf, sizeof buf));
        return 0;
    }
    if (nb_tensor_owner(t)) {
        nb_error_set(NB_ERR_ARG, "nb_dataset_new: %s %s belongs to another container (a dataset, a parameter "
                     "collection...); a tensor has one owner (pass a copy: nb_tensor_clone)", what,
                     nb_shape_str(t, buf, sizeof buf));
        return 0;
    }
    if (nb_tensor_ndim(t) < 1) {
        nb_error_set(NB_ERR_SHAPE, "nb_dataset_new: %s is 0-d; samples are the rows of dim 0", what);
        return 0;
    }
    if (nb_tensor_requires_grad(t)) {
        nb_error_set(NB_ERR_ARG, "nb_dataset_new: %s %s requires grad; data must not", what,
                     nb_shape_str(t, buf, sizeof buf));
        return 0;
    }
    return 1;
}

nb_dataset *nb_dataset_new(nb_tensor *inputs, nb_tensor *targets)
{
    const char *who = "nb_dataset_new";
    if (!inputs) {
        drop_leaf(targets);
        nb_error_set(NB_ERR_ARG, "%s: inputs is NULL", who);
        return NULL;
    }
    if (inputs == targets) {
        drop_leaf(inputs);
        nb_error_set(NB_ERR_ARG, "%s: inputs and targets are the same tensor", who);
        return NULL;
    }
    if (!check_rows(inputs, "inputs") || (targets && !check_rows(targets, "targets"))) goto fail;
    if (targets && nb_tensor_dim(targets, 0) != nb_tensor_dim(inputs, 0)) {
        char a[96], b[96];
        nb_error_set(NB_ERR_SHAPE, "%s: inputs %s and targets %s have different row counts", who,
                     nb_shape_str(inputs, a, sizeof a), nb_shape_str(targets, b, sizeof b));
        goto fail;
    }
    nb_dataset *d = nb_calloc(1, sizeof *d);
    if (!d) {
        nb_error_set(NB_ERR_NOMEM, "%s: out of memory", who);
        goto fail;
    }
    /* both are unowned leaves (checked above): the claims cannot fail */
    nb_tensor_claim(inputs, d);
    if (targets) nb_tensor_claim(targets, d);
    d->inputs = inputs;
    d->targets = targets;
    d->size = nb_tensor_dim(inputs, 0);
    return d;
fail:
    drop_leaf(inputs);
    drop_leaf(targets);
    return NULL;
}

void nb_dataset_free(nb_dataset *d)
{
    if (!d) return;
    if (d->is_view) {
        nb_dealloc(d->rows, (size_t)d->size * sizeof(int64_t));
    } else {
        nb_tensor_unclaim(d->inputs, d);
        nb_tensor_free(d->inputs);
        if (d->targets) nb_tensor_unclaim(d->targets, d);
        nb_tensor_free(d->targets);
    }
    nb_dealloc(d, sizeof *d);
}

int64_t nb_dataset_size(const nb_dataset *d)
{
    if (!d) {
        nb_error_set(NB_ERR_ARG, "nb_dataset_size: dataset is NULL");
        return -1;
    }
    return d->size;
}

nb_tensor *nb_dataset_inputs(const nb_dataset *d)
{
    if (!d) {
        nb_error_set(NB_ERR_ARG, "nb_dataset_inputs: dataset is NULL");
        return NULL;
    }
    return d->inputs;
}

nb_tensor *nb_dataset_targets(const nb_dataset *d)
{
    if (!d) {
        nb_error_set(NB_ERR_ARG, "nb_dataset_targets: dataset is NULL");
        return NULL;
    }
    return d->targets;
}

/* Row of inputs/targets holding sample i of d. */
static int64_t row_of(const nb_dataset *d, int64_t i) { return d->rows ? d->rows[i] : i; }


/* A view of d's tensors over n rows (rows [n], taken over by the view). */
static nb_dataset *view_new(const nb_dataset *d, int64_t *rows, int64_t n)
{
    nb_dataset *v = nb_calloc(1, sizeof *v);
    if (!v) return NULL;
    v->inputs = d->inputs;
    v->targets = d->targets;
    v->rows = rows;
    v->size = n;
    v->is_view = 1;
    return v;
}

nb_status nb_dataset_split(const nb_dataset *d, double val_fraction, uint64_t seed, nb_dataset **train,
                           nb_dataset **val)
{
    const char *who = "nb_dataset_split";
    if (train) *train = NULL;
    if (val) *val = NULL;
    if (!d || !train || !val) {
        nb_error_set(NB_ERR_ARG, "%s: %s is NULL", who, !d ? "dataset" : !train ? "train" : "val");
        return NB_ERR_ARG;
    }
    if (!(val_fraction >= 0.0 && val_fraction <= 1.0)) {
        nb_error_set(NB_ERR_ARG, "%s: val_fraction %g is not in [0, 1]", who, val_fraction);
        return NB_ERR_ARG;
    }
    int64_t n = d->size, n_val = (int64_t)llround(val_fraction * (double)n);
    if (n_val > n) n_val = n;
    /* perm: a seeded permutation of d's samples; its first n_val go to val. Each view keeps its
     * samples in d's order, so an unshuffled pass over a view reads the data in storage order. */
    int64_t *perm = nb_alloc((size_t)n * sizeof(int64_t));
    unsigned char *is_val = nb_calloc((size_t)n, 1);
    int64_t *rows_train = nb_alloc((size_t)(n - n_val) * sizeof(int64_t));
    int64_t *rows_val = nb_alloc((size_t)n_val * sizeof(int64_t));
    nb_dataset *t = NULL, *v = NULL;
    if (!perm || !is_val || !rows_train || !rows_val) goto nomem;
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    nb_rng rng;
    nb_rng_seed(&rng, seed);
    nb_rng_shuffle(&rng, perm, n);
    for (int64_t i = 0; i < n_val; i++) is_val[perm[i]] = 1;
    for (int64_t i = 0, a = 0, b = 0; i < n; i++) {
        if (is_val[i])
            rows_val[b++] = row_of(d, i);
        else
            rows_train[a++] = row_of(d, i);
    }
    t = view_new(d, rows_train, n - n_val);
    if (!t) goto nomem;
    rows_train = NULL;
    v = view_new(d, rows_val, n_val);
    if (!v) goto nomem;
    nb_dealloc(perm, (size_t)n * sizeof(int64_t));
    nb_dealloc(is_val, (size_t)n);
    *train = t;
    *val = v;
    return NB_OK;
nomem:
    nb_dealloc(perm, (size_t)n * sizeof(int64_t));
    nb_dealloc(is_val, (size_t)n);
    nb_dealloc(rows_train, (size_t)(n - n_val) * sizeof(int64_t));
    nb_dealloc(rows_val, (size_t)n_val * sizeof(int64_t));
    nb_dataset_free(t);
    nb_error_set(NB_ERR_NOMEM, "%s: out of memory splitting %lld samples", who, (long long)n);
    return NB_ERR_NOMEM;
}

/* ---- batches ---------------------------------------------------------------------------------- */

struct nb_batches {
    const nb_dataset *d; /* borrowed */
    int64_t batch_size;
    int shuffle, drop_last;
    nb_rng rng;         /* seeded once; every epoch's shuffle continues the stream */
    int64_t n, cap;     /* d's size; min(batch_size, n) */
    int64_t *order;     /* this epoch's rows of d's tensors, in batch order [n] */
    int64_t *last;      /* rows of the last batch returned [cap] */
    int64_t last_count;
    int64_t pos;        /* next position in order */
    int in_epoch;       /* order is set up for the current epoch */
    /* by-length batches */
    int64_t *len;       /* length of each sample of d [d->size], or NULL */
    int64_t *last_len;  /* lengths of the last batch [cap] */
    int64_t window;     /* batches per sorting window */
    uint64_t *keys;     /* sorting scratch [wcap = min(window * batch_size, n)] */
    int64_t wcap;
    int64_t *tmp;       /* reordering scratch [n + n / batch_size + 2] */
    /* sharding (data-parallel training): this batcher returns part `rank` of `nranks` of each batch */
    int rank, nranks;
    int64_t global_count; /* rows of the last batch over all parts */
    int64_t shard_first;  /* where this part starts in it */
};

nb_batches *nb_batches_new(const nb_dataset *d, int64_t batch_size, int shuffle_rows, int drop_last,
                           uint64_t seed)
{
    const char *who = "nb_batches_new";
    if (!d) {
        nb_error_set(NB_ERR_ARG, "%s: dataset is NULL", who);
        return NULL;
    }
    if (batch_size < 1) {
        nb_error_set(NB_ERR_ARG, "%s: batch_size %lld must be >= 1", who, (long long)batch_size);
        return NULL;
    }
    int64_t n = d->size, cap = batch_size < n ? batch_size : n;
    nb_batches *b = nb_calloc(1, sizeof *b);
    if (b) {
        b->n = n;
        b->cap = cap;
        b->batch_size = batch_size;
        b->order = nb_alloc((size_t)n * sizeof(int64_t));
        b->last = nb_alloc((size_t)cap * sizeof(int64_t));
    }
    if (!b || !b->order || !b->last) {
        nb_batches_free(b);
        nb_error_set(NB_ERR_NOMEM, "%s: out of memory for an order of %lld samples", who, (long long)n);
        return NULL;
    }
    b->d = d;
    b->shuffle = shuffle_rows ? 1 : 0;
    b->drop_last = drop_last ? 1 : 0;
    b->nranks = 1;
    nb_rng_seed(&b->rng, seed);
    return b;
}

void nb_batches_free(nb_batches *b)
{
    if (!b) return;
    nb_dealloc(b->order, (size_t)b->n * sizeof(int64_t));
    nb_dealloc(b->last, (size_t)b->cap * sizeof(int64_t));
    nb_dealloc(b->len, (size_t)b->n * sizeof(int64_t));
    nb_dealloc(b->last_len, (size_t)b->cap * sizeof(int64_t));
    nb_dealloc(b->keys, (size_t)b->wcap * sizeof(uint64_t));
    nb_dealloc(b->tmp, (size_t)(b->n + b->n / b->batch_size + 2) * sizeof(int64_t));
    nb_dealloc(b, sizeof *b);
}

nb_batches *nb_batches_by_length(const nb_dataset *d, const int64_t *lengths, int64_t batch_size, int64_t window,
                                 int shuffle_rows, uint64_t seed)
{
    const char *who = "nb_batches_by_length";
    if (d && (!lengths || window < 1 || nb_tensor_ndim(d->inputs) < 2)) {
        char s[96];
        nb_error_set(NB_ERR_ARG, "%s: need lengths, a window >= 1 (got %lld) and inputs of at least 2 dims (got %s)",
                     who, (long long)window, nb_shape_str(d->inputs, s, sizeof s));
        return NULL;
    }
    nb_batches *b = nb_batches_new(d, batch_size, shuffle_rows, 0, seed);
    if (!b) return NULL;
    int64_t n = d->size, t_max = nb_tensor_dim(d->inputs, 1), cap = batch_size < n ? batch_size : n;
    /* a window wider than the epoch sorts it all; the sort key keeps positions in 32 bits */
    if (window > ((int64_t)1 << 31) / batch_size) window = ((int64_t)1 << 31) / batch_size + 1;
    int64_t wcap = window * batch_size < n ? window * batch_size : n;
    b->window = window;
    b->wcap = wcap;
    b->len = nb_alloc((size_t)n * sizeof(int64_t));
    b->last_len = nb_alloc((size_t)cap * sizeof(int64_t));
    b->keys = nb_alloc((size_t)wcap * sizeof(uint64_t));
    b->tmp = nb_alloc((size_t)(n + n / batch_size + 2) * sizeof(int64_t));
    if (!b->len || !b->last_len || !b->keys || !b->tmp) {
        nb_batches_free(b);
        nb_error_set(NB_ERR_NOMEM, "%s: out of memory for %lld samples", who, (long long)n);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        if (lengths[i] < 1 || lengths[i] > t_max) {
            nb_error_set(NB_ERR_ARG, "%s: length %lld of sample %lld is outside 1..%lld (the padded length)", who,
                         (long long)lengths[i], (long long)i, (long long)t_max);
            nb_batches_free(b);
            return NULL;
        }
        b->len[i] = lengths[i];
    }
    return b;
}

/* order[0..n) (sample positions) sorted by length within windows of window * batch_size samples, then
 * (when shuffling) the full batches put in a shuffled order. tmp has room for n positions followed by
 * one entry per batch. */
static void group_by_length(nb_batches *b, int64_t n)
{
    const int64_t bs = b->batch_size, w = b->window * bs;
    for (int64_t start = 0; start < n; start += w) {
        int64_t m = n - start < w ? n - start : w;
        /* key: the length above, the position within the window below, so the sort is stable */
        for (int64_t k = 0; k < m; k++) b->keys[k] = (uint64_t)b->len[b->order[start + k]] << 32 | (uint64_t)k;
        nbs_sort_u64(b->keys, (size_t)m);
        for (int64_t k = 0; k < m; k++) b->tmp[k] = b->order[start + (int64_t)(b->keys[k] & 0xffffffffu)];
        memcpy(b->order + start, b->tmp, (size_t)m * sizeof(int64_t));
    }
    if (!b->shuffle) return;
    /* the full batches in a shuffled order; a shorter last one stays last, so that the epoch is cut
     * into the same batches */
    int64_t full = n / bs, *perm = b->tmp + n;
    for (int64_t k = 0; k < full; k++) perm[k] = k;
    nb_rng_shuffle(&b->rng, perm, full);
    for (int64_t k = 0; k < full; k++) memcpy(b->tmp + k * bs, b->order + perm[k] * bs, (size_t)bs * sizeof(int64_t));
    memcpy(b->order, b->tmp, (size_t)(full * bs) * sizeof(int64_t));
}

/* Start an epoch if none is under way; the size of the next batch over all shards, or 0 at the end
 * of the epoch (which then ends). */
static int64_t next_global(nb_batches *b)
{
    const nb_dataset *d = b->d;
    int64_t n = d->size;
    if (!b->in_epoch) {
        /* A new epoch: the rows in storage order, then shuffled from the stream. Starting from the
         * identity makes each epoch's order a function of the stream alone. */
        /* by-length batches order sample positions (their lengths are per position), others rows */
        for (int64_t i = 0; i < n; i++) b->order[i] = b->len ? i : row_of(d, i);
        if (b->shuffle) nb_rng_shuffle(&b->rng, b->order, n);
        if (b->len) group_by_length(b, n);
        b->pos = 0;
        b->in_epoch = 1;
    }
    int64_t left = n - b->pos;
    if (left == 0 || (b->drop_last && left < b->batch_size)) {
        b->in_epoch = 0;
        return 0;
    }
    return left < b->batch_size ? left : b->batch_size;
}

nb_status nb_batches_set_shard(nb_batches *b, int rank, int nranks)
{
    if (!b || nranks < 1 || rank < 0 || rank >= nranks) {
        nb_error_set(NB_ERR_ARG, "nb_batches_set_shard: %s (rank %d of %d)", !b ? "batches is NULL" : "bad rank", rank,
                     nranks);
        return NB_ERR_ARG;
    }
    if (b->in_epoch || b->last_count || b->global_count) {
        nb_error_set(NB_ERR_STATE, "nb_batches_set_shard: batches were drawn already; shard before the first");
        return NB_ERR_STATE;
    }
    b->rank = rank;
    b->nranks = nranks;
    return NB_OK;
}

nb_status nb_batches_skip(nb_batches *b, int64_t n)
{
    if (!b || n < 0) {
        nb_error_set(NB_ERR_ARG, "nb_batches_skip: %s", !b ? "batches is NULL" : "n < 0");
        return NB_ERR_ARG;
    }
    if (n > 0 && nb_batches_per_epoch(b) == 0) {
        nb_error_set(NB_ERR_STATE, "nb_batches_skip: an epoch has no batches (%lld samples, batch %lld%s)",
                     (long long)b->d->size, (long long)b->batch_size, b->drop_last ? ", drop_last" : "");
        return NB_ERR_STATE;
    }
    while (n > 0) {
        int64_t global = next_global(b);
        if (global == 0) continue; /* an epoch's end is not a batch */
        b->pos += global;
        n--;
    }
    return NB_OK;
}

int64_t nb_batches_global_count(const nb_batches *b)
{
    if (!b) {
        nb_error_set(NB_ERR_ARG, "nb_batches_global_count: batches is NULL");
        return -1;
    }
    return b->global_count;
}

int64_t nb_batches_shard_offset(const nb_batches *b)
{
    if (!b) {
        nb_error_set(NB_ERR_ARG, "nb_batches_shard_offset: batches is NULL");
        return -1;
    }
    return b->shard_first;
}

int nb_batches_next(nb_batches *b, nb_tensor **x, nb_tensor **y)
{
    const char *who = "nb_batches_next";
    if (x) *x = NULL;
    if (y) *y = NULL;
    if (!b || !x) {
        nb_error_set(NB_ERR_ARG, "%s: %s is NULL", who, !b ? "batches" : "x");
        return -1;
    }
    if (!nb_tape_current()) {
        nb_error_set(NB_ERR_STATE, "%s: no current tape (batches are tape constants: call nb_tape_begin "
                     "first)", who);
        return -1;
    }
    const nb_dataset *d = b->d;
    int64_t global = next_global(b);
    if (global == 0) return 0;
    /* this shard's part of the batch: [rank * global / nranks, (rank + 1) * global / nranks) */
    int64_t first = b->rank * global / b->nranks, count = (b->rank + 1) * global / b->nranks - first;
    int64_t longest = 0;
    nb_tensor *idx = nb_zeros(NB_I64, 1, &count);
    if (!idx) return -1;
    int64_t *rows = nb_tensor_data(idx);
    for (int64_t k = 0; k < count; k++) {
        int64_t at = b->order[b->pos + first + k];
        rows[k] = b->len ? row_of(d, at) : at;
        if (b->len) {
            b->last_len[k] = b->len[at];
            if (b->len[at] > longest) longest = b->len[at];
        }
    }
    nb_tensor *bx = nb_index_select(d->inputs, 0, idx);
    if (bx && b->len) bx = nb_slice(bx, 1, 0, longest, 1); /* cut to the batch's longest sequence */
    nb_tensor *by = d->targets ? nb_index_select(d->targets, 0, idx) : NULL;
    if (!bx || (d->targets && !by)) return -1; /* nb_index_select's error stands */
    memcpy(b->last, rows, (size_t)count * sizeof(int64_t));
    b->last_count = count;
    b->global_count = global;
    b->shard_first = first;
    b->pos += global;
    *x = bx;
    if (y) *y = by;
    return 1;
}

const int64_t *nb_batches_indices(const nb_batches *b, int64_t *count)
{
    if (count) *count = 0;
    if (!b) {
        nb_error_set(NB_ERR_ARG, "nb_batches_indices: batches is NULL");
        return NULL;
    }
    if (count) *count = b->last_count;
    return b->last;
}

const int64_t *nb_batches_lengths(const nb_batches *b, int64_t *count)
{
    if (count) *count = 0;
    if (!b) {
        nb_error_set(NB_ERR_ARG, "nb_batches_lengths: batches is NULL");
        return NULL;
    }
    if (!b->len) return NULL;
    if (count) *count = b->last_count;
    return b->last_len;
}

int64_t nb_batches_per_epoch(const nb_batches *b)
{
    if (!b) {
        nb_error_set(NB_ERR_ARG, "nb_batches_per_epoch: batches is NULL");
        return -1;
    }
    int64_t n = b->d->size, bs = b->batch_size;
    return b->drop_last ? n / bs : n / bs + (n % bs != 0);
}
