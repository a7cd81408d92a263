/* Tensor storage: leaf constructors (caller-owned, heap) and accessors shared by every tensor. */
#include "internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

size_t nb_dtype_size(nb_dtype dt)
{
    switch (dt) {
    case NB_F32: return sizeof(float);
    case NB_F64: return sizeof(double);
    case NB_I64: return sizeof(int64_t);
    default: return 0;
    }
}

const char *nb_dtype_name(nb_dtype dt)
{
    static const char *const names[] = {[NB_F32] = "f32", [NB_F64] = "f64", [NB_I64] = "i64"};
    _Static_assert(sizeof(names) / sizeof(names[0]) == NB_DTYPE_COUNT, "names every dtype");
    return (unsigned)dt < NB_DTYPE_COUNT ? names[dt] : "?";
}

int64_t nb__numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}


int nb__axis(int axis, int ndim)
{
    if (axis < 0) axis += ndim;
    return (axis < 0 || axis >= ndim) ? -1 : axis;
}

bool nb__check_float(const char *who, const nb_tensor *t)
{
    if (!nb__is_float(t->dtype)) {
        nb__fail(NB_ERR_DTYPE, "%s: %s tensor %s: expected f32 or f64", who, nb_dtype_name(t->dtype),
                 NB_SHP(t));
        return false;
    }
    return true;
}

/* Validate dtype and shape for a constructor; numel returned through n. */
static bool check_spec(const char *who, nb_dtype dt, int ndim, const int64_t *shape, int64_t *n)
{
    if ((unsigned)dt >= NB_DTYPE_COUNT) {
        nb__fail(NB_ERR_DTYPE, "%s: invalid dtype %d", who, (int)dt);
        return false;
    }
    if (ndim < 0 || ndim > NB_MAX_DIMS) {
        nb__fail(NB_ERR_SHAPE, "%s: %d dimensions: expected 0..%d", who, ndim, NB_MAX_DIMS);
        return false;
    }
    if (ndim > 0 && !shape) {
        nb__fail(NB_ERR_ARG, "%s: shape is NULL for %d dimensions", who, ndim);
        return false;
    }
    /* the product of the non-zero extents must fit too: ops on an empty tensor still multiply its
     * other extents (strides, plans) */
    int64_t total = 1;
    bool empty = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            nb__fail(NB_ERR_SHAPE, "%s: %s: extent %lld of dim %d is negative", who,
                     nb__shape_str(ndim, shape), (long long)shape[i], i);
            return false;
        }
        if (shape[i] == 0) {
            empty = true;
            continue;
        }
        if (total > (INT64_MAX / 16) / shape[i]) {
            nb__fail(NB_ERR_SHAPE, "%s: %s: too many elements", who, nb__shape_str(ndim, shape));
            return false;
        }
        total *= shape[i];
    }
    *n = empty ? 0 : total;
    return true;
}

bool nb__check_shape(const char *who, int ndim, const int64_t *shape)
{
    int64_t n;
    return check_spec(who, NB_F64, ndim, shape, &n);
}

static void init_header(nb_tensor *t, nb_dtype dt, int ndim, const int64_t *shape, int64_t n)
{
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->ndim = ndim;
    t->numel = n;
    t->vp = &t->version;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
}

/* ---- leaf headers: a type-stable pool ----------------------------------------------------------
 * A leaf's header comes from a process-wide pool and goes back to it when the leaf is freed (its data
 * is freed at once). Pool memory is released only when no leaf and no tape is live, so a node still
 * holding a freed leaf reads a header whose stamp no longer matches (the backward reports it) instead
 * of freed memory. A spin lock guards the pool: leaves are made and freed rarely, by any thread. */

typedef struct leaf_slab {
    struct leaf_slab *next;
    nb_tensor slot[64];
} leaf_slab;

static struct {
    atomic_flag lock;
    leaf_slab *slabs;
    nb_tensor *free; /* linked through hook_user */
    long live_leaves, live_tapes;
} g_pool = {ATOMIC_FLAG_INIT, NULL, NULL, 0, 0};
static _Atomic uint64_t g_leaf_serial = 0;

static void pool_lock(void)
{
    while (atomic_flag_test_and_set_explicit(&g_pool.lock, memory_order_acquire)) {
    }
}
static void pool_unlock(void) { atomic_flag_clear_explicit(&g_pool.lock, memory_order_release); }

/* Called with the lock held: give the slabs back once nothing can refer to a header. */
static void pool_release_if_idle(void)
{
    if (g_pool.live_leaves || g_pool.live_tapes) return;
    for (leaf_slab *s = g_pool.slabs, *next; s; s = next) {
        next = s->next;
        nb__free(s, sizeof *s);
    }
    g_pool.slabs = NULL;
    g_pool.free = NULL;
}

void nb__pool_tape_count(int delta)
{
    pool_lock();
    g_pool.live_tapes += delta;
    if (delta < 0) pool_release_if_idle();
    pool_unlock();
}

static nb_tensor *pool_take(void)
{
    pool_lock();
    if (!g_pool.free) {
        leaf_slab *s = nb__malloc(sizeof *s);
        if (!s) {
            pool_unlock();
            return NULL;
        }
        memset(s, 0, sizeof *s);
        s->next = g_pool.slabs;
        g_pool.slabs = s;
        for (int i = 63; i >= 0; i--) {
            s->slot[i].vp = &s->slot[i].version;
            s->slot[i].hook_user = g_pool.free;
            g_pool.free = &s->slot[i];
        }
    }
    nb_tensor *t = g_pool.free;
    g_pool.free = t->hook_user;
    g_pool.live_leaves++;
    pool_unlock();
    return t;
}

/* Called with the lock held: t's header back to the pool, marked freed: no leaf flag, stamp 0, no
 * data. */
static void pool_give_locked(nb_tensor *t)
{
    memset(t, 0, sizeof *t);
    t->vp = &t->version;
    t->hook_user = g_pool.free;
    g_pool.free = t;
    g_pool.live_leaves--;
}

/* ---- leaf data blocks, shared by a leaf and its views ------------------------------------------
 * A leaf's data is a heap block of its own, 64-byte aligned; just before the data sit the allocator's
 * pointer and the number of leaves that share the block: the leaf that made it and the views of it
 * made without a tape (nb__leaf_view). The block is freed with the last of them. A view's version
 * counter is its base's (vp points into the base's pool header, the root base for a view of a view),
 * so a base freed while views live keeps its header out of the pool, marked freed (stamp 0, no leaf
 * flag: its pointer is refused as a freed leaf's), until the last view goes. The pool lock guards the
 * counts. */

typedef struct leaf_block {
    int64_t refs; /* leaves sharing the block */
    void *raw;    /* what the allocator returned */
} leaf_block;

static size_t leaf_data_bytes(int64_t n, nb_dtype dt)
{
    return (size_t)n * nb_dtype_size(dt) + sizeof(leaf_block) + 64;
}
static leaf_block *block_of(const nb_tensor *t) { return (leaf_block *)t->data - 1; }
/* The leaf whose header holds a view's version counter. */
static nb_tensor *base_of(const nb_tensor *view)
{
    return (nb_tensor *)(void *)((char *)view->vp - offsetof(nb_tensor, version));
}

/* A heap leaf: a pool header and a data block of its own. */
static nb_tensor *leaf_new(const char *who, nb_dtype dt, int ndim, const int64_t *shape)
{
    int64_t n;
    if (!check_spec(who, dt, ndim, shape, &n)) return NULL;
    size_t bytes = leaf_data_bytes(n, dt);
    unsigned char *raw = nb__malloc(bytes);
    nb_tensor *t = raw ? pool_take() : NULL;
    if (!t) {
        nb__free(raw, bytes);
        return nb__fail(NB_ERR_NOMEM, "%s: out of memory for %s %s", who, nb_dtype_name(dt),
                        nb__shape_str(ndim, shape));
    }
    init_header(t, dt, ndim, shape, n);
    t->flags = NB_TF_LEAF;
    t->stamp = atomic_fetch_add_explicit(&g_leaf_serial, 1, memory_order_relaxed) + 1;
    uintptr_t d = ((uintptr_t)raw + sizeof(leaf_block) + 63) & ~(uintptr_t)63;
    t->data = (void *)d;
    *block_of(t) = (leaf_block){1, raw};
    return t;
}

nb_tensor *nb__leaf_view(const char *who, nb_tensor *x, int ndim, const int64_t *shape)
{
    if (x->flags & NB_TF_REQUIRES_GRAD)
        return nb__fail(NB_ERR_STATE, "%s: %s%s%s requires grad and no tape is current: a view made without a "
                        "tape is not recorded, so its uses would not reach the leaf's gradient; make the view "
                        "on the tape (after nb_tape_begin)", who, x->name ? x->name : "", x->name ? " " : "",
                        NB_SHP(x));
    nb_tensor *v = pool_take();
    if (!v) return nb__fail(NB_ERR_NOMEM, "%s: out of memory for a view of %s", who, NB_SHP(x));
    init_header(v, x->dtype, ndim, shape, x->numel);
    v->flags = NB_TF_LEAF | NB_TF_VIEW;
    v->stamp = atomic_fetch_add_explicit(&g_leaf_serial, 1, memory_order_relaxed) + 1;
    v->data = x->data;
    v->vp = x->vp; /* the root base's counter: writes through any of them are changes of all */
    pool_lock();
    block_of(x)->refs++;
    pool_unlock();
    return v;
}

nb_tensor *nb__tape_result(nb_tape *tape, const char *who, nb_dtype dt, int ndim, const int64_t *shape)
{
    /* the element count of a shape derived from valid inputs can still be too large (a product of
     * extents from different inputs, a zero-size input's other extents): bounded as for leaves */
    int64_t n = 1;
    if (ndim == 1 && (uint64_t)shape[0] <= INT64_MAX / 16) {
        n = shape[0]; /* the common cases first */
    } else if (ndim > 0) {
        bool empty = false;
        for (int i = 0; i < ndim; i++) {
            int64_t e = shape[i];
            if (e == 0) {
                empty = true;
                continue;
            }
            if (e < 0 || __builtin_mul_overflow(n, e, &n) || n > INT64_MAX / 16)
                return nb__fail(NB_ERR_SHAPE, "%s: result %s: too many elements", who, nb__shape_str(ndim, shape));
        }
        if (empty) n = 0;
    }
    nb_tensor *t = nb__tape_header(tape);
    size_t bytes = (size_t)n * nb__esize(dt);
    unsigned char *raw = !t ? NULL : bytes <= NB_INLINE_BYTES ? ((nb_hslot *)t)->data : nb__tape_alloc(tape, bytes);
    if (!raw) return nb__fail(NB_ERR_NOMEM, "%s: out of memory for %s %s", who, nb_dtype_name(dt),
                              nb__shape_str(ndim, shape));
    /* field by field: clearing the whole header costs more than the op itself on small tensors */
    t->dtype = dt;
    t->ndim = ndim;
    t->flags = 0;
    t->version = 0;
    t->vp = &t->version;
    t->numel = n;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = raw;
    t->tape = tape;
    t->node = NULL;
    t->name = NULL;
    t->hook = NULL;
    t->hook_user = NULL;
    t->post_hook = NULL;
    t->post_hook_user = NULL;
    t->grad = t->grad_graph = NULL;
    t->stamp = tape->gen;
    return t;
}

bool nb__stale_fail(const char *who, const nb_tensor *t)
{
    if (t->tape)
        nb__fail(NB_ERR_STATE, "%s: tensor belongs to a tape that was reset (recorded in generation %llu, "
                 "tape is at %llu)", who, (unsigned long long)t->stamp, (unsigned long long)t->tape->gen);
    else
        nb__fail(NB_ERR_STATE, "%s: tensor is a leaf that was freed", who);
    return false;
}

nb_tensor *nb__tape_tensor(const char *who, nb_dtype dt, int ndim, const int64_t *shape)
{
    nb_tape *tape = nb__current_tape();
    if (!tape) return nb__fail(NB_ERR_STATE, "%s: no current tape (call nb_tape_begin first)", who);
    int64_t n;
    if (!check_spec(who, dt, ndim, shape, &n)) return NULL;
    return nb__tape_result(tape, who, dt, ndim, shape);
}

double nb__get(const nb_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case NB_F32: return ((const float *)t->data)[i];
    case NB_F64: return ((const double *)t->data)[i];
    case NB_I64: return (double)((const int64_t *)t->data)[i];
    default: return NAN;
    }
}

void nb__set(nb_tensor *t, int64_t i, double v)
{
    switch (t->dtype) {
    case NB_F32: ((float *)t->data)[i] = (float)v; break;
    case NB_F64: ((double *)t->data)[i] = v; break;
    case NB_I64: ((int64_t *)t->data)[i] = (int64_t)v; break;
    default: break;
    }
}

void nb__fill(nb_tensor *t, double v)
{
    size_t es = nb_dtype_size(t->dtype);
    char *p = t->data;
    if (t->numel == 0) return;
    if (v == 0.0 && !signbit(v)) {
        memset(p, 0, (size_t)t->numel * es);
        return;
    }
    /* one element converted, then doubled by copies */
    nb__set(t, 0, v);
    for (int64_t k = 1; k < t->numel; k *= 2) {
        int64_t n = k < t->numel - k ? k : t->numel - k;
        memcpy(p + (size_t)k * es, p, (size_t)n * es);
    }
}

nb_tensor *nb_tensor_zeros(nb_dtype dt, int ndim, const int64_t *shape)
{
    nb_tensor *t = leaf_new("nb_tensor_zeros", dt, ndim, shape);
    if (t) nb__fill(t, 0.0);
    return t;
}

nb_tensor *nb_tensor_empty(nb_dtype dt, int ndim, const int64_t *shape)
{
    return leaf_new("nb_tensor_empty", dt, ndim, shape);
}

nb_tensor *nb_tensor_ones(nb_dtype dt, int ndim, const int64_t *shape)
{
    nb_tensor *t = leaf_new("nb_tensor_ones", dt, ndim, shape);
    if (t) nb__fill(t, 1.0);
    return t;
}

nb_tensor *nb_tensor_full(nb_dtype dt, int ndim, const int64_t *shape, double value)
{
    nb_tensor *t = leaf_new("nb_tensor_full", dt, ndim, shape);
    if (t) nb__fill(t, value);
    return t;
}

nb_tensor *nb_tensor_from_data(nb_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    if (!data) return nb__fail(NB_ERR_ARG, "nb_tensor_from_data: data is NULL");
    nb_tensor *t = leaf_new("nb_tensor_from_data", dt, ndim, shape);
    if (t) memcpy(t->data, data, (size_t)t->numel * nb_dtype_size(dt));
    return t;
}

nb_tensor *nb_tensor_arange(nb_dtype dt, double start, double stop, double step)
{
    if (step == 0 || !isfinite(start) || !isfinite(stop) || !isfinite(step))
        return nb__fail(NB_ERR_ARG, "nb_tensor_arange: start %g, stop %g, step %g: need finite values "
                                    "and a non-zero step", start, stop, step);
    double span = ceil((stop - start) / step);
    int64_t n = span > 0 ? (int64_t)span : 0;
    nb_tensor *t = leaf_new("nb_tensor_arange", dt, 1, &n);
    if (t)
        for (int64_t i = 0; i < n; i++) nb__set(t, i, start + (double)i * step);
    return t;
}

nb_tensor *nb_tensor_uniform(nb_dtype dt, int ndim, const int64_t *shape, double low, double high,
                             nb_rng *rng)
{
    if (!rng) return nb__fail(NB_ERR_ARG, "nb_tensor_uniform: rng is NULL");
    if (!(low <= high)) return nb__fail(NB_ERR_ARG, "nb_tensor_uniform: low %g > high %g", low, high);
    nb_tensor *t = leaf_new("nb_tensor_uniform", dt, ndim, shape);
    if (t)
        for (int64_t i = 0; i < t->numel; i++) nb__set(t, i, low + (high - low) * nb_rng_uniform(rng));
    return t;
}

nb_tensor *nb_tensor_normal(nb_dtype dt, int ndim, const int64_t *shape, double mean, double std,
                            nb_rng *rng)
{
    if (!rng) return nb__fail(NB_ERR_ARG, "nb_tensor_normal: rng is NULL");
    if (!(std >= 0)) return nb__fail(NB_ERR_ARG, "nb_tensor_normal: std %g is negative", std);
    nb_tensor *t = leaf_new("nb_tensor_normal", dt, ndim, shape);
    if (t)
        for (int64_t i = 0; i < t->numel; i++) nb__set(t, i, mean + std * nb_rng_normal(rng));
    return t;
}

nb_tensor *nb_tensor_clone(const nb_tensor *src)
{
    if (!src) return NULL;
    if (!nb__live("nb_tensor_clone", src)) return NULL;
    nb_tensor *t = leaf_new("nb_tensor_clone", src->dtype, src->ndim, src->shape);
    if (t) memcpy(t->data, src->data, (size_t)t->numel * nb_dtype_size(t->dtype));
    return t;
}

void nb_tensor_free(nb_tensor *t)
{
    if (!t) return;
    if (!nb__live("nb_tensor_free", t)) return;
    if (!(t->flags & NB_TF_LEAF)) {
        nb__fail(NB_ERR_STATE, "nb_tensor_free: %s: an op result belongs to its tape; reset the tape "
                               "instead", NB_SHP(t));
        return;
    }
    if (t->owner) {
        nb__fail(NB_ERR_STATE, "nb_tensor_free: %s%s%s: the leaf belongs to a container (a parameter "
                 "collection, a dataset...); it is freed with it", t->name ? t->name : "", t->name ? " " : "",
                 NB_SHP(t));
        return;
    }
    if (nb__grad_tape(t)) nb__tape_forget_leaf(nb__grad_tape(t), t);
    if (t->grad) t->grad->owner = NULL;
    nb_tensor_free(t->grad);
    if (t->name) nb__free((void *)t->name, strlen(t->name) + 1);
    pool_lock();
    leaf_block *b = block_of(t);
    bool last = --b->refs == 0;
    if (last) nb__free(b->raw, leaf_data_bytes(t->numel, t->dtype));
    if (t->flags & NB_TF_VIEW) {
        nb_tensor *base = base_of(t);
        if (last && !(base->flags & NB_TF_LEAF)) pool_give_locked(base); /* a base freed before its views */
        pool_give_locked(t);
    } else if (last) {
        pool_give_locked(t);
    } else {
        /* views live on: keep the header (their version counter) out of the pool, marked freed */
        uint32_t version = t->version;
        memset(t, 0, sizeof *t);
        t->version = version;
        t->vp = &t->version;
    }
    pool_release_if_idle();
    pool_unlock();
}

int nb_tensor_is_view(const nb_tensor *t)
{
    return t && nb__live("nb_tensor_is_view", t) && (t->flags & NB_TF_VIEW) ? 1 : 0;
}

/* Views made without a tape that share t's data (t a leaf that is not itself such a view). */
static int64_t views_of(const nb_tensor *t)
{
    pool_lock();
    int64_t n = block_of(t)->refs - 1;
    pool_unlock();
    return n;
}

nb_status nb_tensor_claim(nb_tensor *t, const void *owner)
{
    if (!t || !owner) return nb__fail_status(NB_ERR_ARG, "nb_tensor_claim: tensor or owner is NULL");
    if (!(t->flags & NB_TF_LEAF))
        return nb__fail_status(NB_ERR_STATE, "nb_tensor_claim: %s is an op result; it belongs to its tape",
                               NB_SHP(t));
    if (t->owner)
        return nb__fail_status(NB_ERR_STATE, "nb_tensor_claim: %s%s%s has an owner already%s", t->name ? t->name : "",
                               t->name ? " " : "", NB_SHP(t), t->owner == owner ? " (this one)" : "");
    t->owner = owner;
    return NB_OK;
}

nb_status nb_tensor_unclaim(nb_tensor *t, const void *owner)
{
    if (!t || !owner) return nb__fail_status(NB_ERR_ARG, "nb_tensor_unclaim: tensor or owner is NULL");
    if (!(t->flags & NB_TF_LEAF) || t->owner != owner)
        return nb__fail_status(NB_ERR_STATE, "nb_tensor_unclaim: %s is not held by this owner", NB_SHP(t));
    t->owner = NULL;
    return NB_OK;
}

const void *nb_tensor_owner(const nb_tensor *t) { return t && (t->flags & NB_TF_LEAF) ? t->owner : NULL; }

/* ---- accessors -------------------------------------------------------------------------------- */

/* every accessor checks that its tensor is still usable (nb__live): a stale result fails with
 * NB_ERR_STATE instead of answering from memory that now belongs to something else */
nb_dtype nb_tensor_dtype(const nb_tensor *t)
{
    return t && nb__live("nb_tensor_dtype", t) ? t->dtype : NB_DTYPE_COUNT;
}
int nb_tensor_ndim(const nb_tensor *t) { return t && nb__live("nb_tensor_ndim", t) ? t->ndim : -1; }

int64_t nb_tensor_dim(const nb_tensor *t, int dim)
{
    if (!t || !nb__live("nb_tensor_dim", t)) return -1;
    int d = nb__axis(dim, t->ndim);
    if (d < 0) {
        nb__fail(NB_ERR_ARG, "nb_tensor_dim: dim %d out of range for %s", dim, NB_SHP(t));
        return -1;
    }
    return t->shape[d];
}

const int64_t *nb_tensor_shape(const nb_tensor *t)
{
    return t && nb__live("nb_tensor_shape", t) ? t->shape : NULL;
}
int64_t nb_tensor_numel(const nb_tensor *t) { return t && nb__live("nb_tensor_numel", t) ? t->numel : 0; }
void *nb_tensor_data(nb_tensor *t) { return t && nb__live("nb_tensor_data", t) ? t->data : NULL; }
const void *nb_tensor_cdata(const nb_tensor *t)
{
    return t && nb__live("nb_tensor_cdata", t) ? t->data : NULL;
}

double nb_tensor_get(const nb_tensor *t, int64_t index)
{
    if (!t || !nb__live("nb_tensor_get", t)) return NAN;
    if (index < 0 || index >= t->numel) {
        nb__fail(NB_ERR_ARG, "nb_tensor_get: index %lld out of range for %s", (long long)index, NB_SHP(t));
        return NAN;
    }
    return nb__get(t, index);
}

double nb_tensor_item(const nb_tensor *t)
{
    if (!t || !nb__live("nb_tensor_item", t)) return NAN;
    if (t->numel != 1) {
        nb__fail(NB_ERR_SHAPE, "nb_tensor_item: %s has %lld elements, expected 1", NB_SHP(t),
                 (long long)t->numel);
        return NAN;
    }
    return nb__get(t, 0);
}

static bool check_leaf(const char *who, const nb_tensor *t)
{
    if (!t) {
        nb__fail(NB_ERR_ARG, "%s: tensor is NULL", who);
        return false;
    }
    if (!nb__live(who, t)) return false;
    if (!(t->flags & NB_TF_LEAF)) {
        nb__fail(NB_ERR_STATE, "%s: %s is an op result; only leaves can be changed in place", who,
                 NB_SHP(t));
        return false;
    }
    return true;
}

nb_status nb_tensor_set(nb_tensor *t, int64_t index, double value)
{
    if (!check_leaf("nb_tensor_set", t)) return nb_error_code();
    if (index < 0 || index >= t->numel)
        return nb__fail_status(NB_ERR_ARG, "nb_tensor_set: index %lld out of range for %s",
                               (long long)index, NB_SHP(t));
    nb__set(t, index, value);
    (*t->vp)++; /* a view's counter is its base's */
    return NB_OK;
}

nb_status nb_tensor_copy_from(nb_tensor *t, const void *data)
{
    if (!check_leaf("nb_tensor_copy_from", t)) return nb_error_code();
    if (!data) return nb__fail_status(NB_ERR_ARG, "nb_tensor_copy_from: data is NULL");
    memcpy(t->data, data, (size_t)t->numel * nb_dtype_size(t->dtype));
    (*t->vp)++; /* a view's counter is its base's */
    return NB_OK;
}

nb_status nb_tensor_fill(nb_tensor *t, double value)
{
    if (!check_leaf("nb_tensor_fill", t)) return nb_error_code();
    nb__fill(t, value);
    (*t->vp)++; /* a view's counter is its base's */
    return NB_OK;
}

nb_status nb_tensor_axpy(nb_tensor *y, double alpha, const nb_tensor *x)
{
    if (!check_leaf("nb_tensor_axpy", y)) return nb_error_code();
    if (!x) return nb__fail_status(NB_ERR_ARG, "nb_tensor_axpy: x is NULL");
    if (!nb__live("nb_tensor_axpy", x)) return nb_error_code();
    if (x->dtype != y->dtype || !nb__same_shape(x, y))
        return nb__fail_status(NB_ERR_SHAPE, "nb_tensor_axpy: y %s %s, x %s %s: need equal shapes and "
                               "dtypes", nb_dtype_name(y->dtype), NB_SHP(y), nb_dtype_name(x->dtype),
                               NB_SHP(x));
    if (y->dtype == NB_F32) {
        float *yd = y->data, a = (float)alpha;
        const float *xd = x->data;
        for (int64_t i = 0; i < y->numel; i++) yd[i] += a * xd[i];
    } else if (y->dtype == NB_F64) {
        double *yd = y->data;
        const double *xd = x->data;
        for (int64_t i = 0; i < y->numel; i++) yd[i] += alpha * xd[i];
    } else {
        return nb__fail_status(NB_ERR_DTYPE, "nb_tensor_axpy: i64 tensors are not supported");
    }
    (*y->vp)++;
    return NB_OK;
}

void nb_tensor_mark_dirty(nb_tensor *t)
{
    if (t && nb__live("nb_tensor_mark_dirty", t)) (*t->vp)++; /* a view's counter is its base's: nodes
                                                                  that saved the base or a view see it */
}

nb_status nb_tensor_set_requires_grad(nb_tensor *t, int requires_grad)
{
    if (!check_leaf("nb_tensor_set_requires_grad", t)) return nb_error_code();
    if (requires_grad && !nb__is_float(t->dtype))
        return nb__fail_status(NB_ERR_DTYPE, "nb_tensor_set_requires_grad: %s tensor %s cannot require "
                               "grad (only f32 and f64 can)", nb_dtype_name(t->dtype), NB_SHP(t));
    /* a view made without a tape is not recorded on its base: a gradient through it would be lost */
    if (requires_grad && (t->flags & NB_TF_VIEW))
        return nb__fail_status(NB_ERR_STATE, "nb_tensor_set_requires_grad: %s is a view of another leaf made "
                               "without a tape; it cannot require grad (reshape the leaf on the tape instead, "
                               "or make a leaf of its own with nb_tensor_clone)", NB_SHP(t));
    int64_t views = requires_grad && !(t->flags & NB_TF_REQUIRES_GRAD) ? views_of(t) : 0;
    if (views)
        return nb__fail_status(NB_ERR_STATE, "nb_tensor_set_requires_grad: %s%s%s has %lld view%s made without a "
                               "tape, whose uses would not reach its gradient; free them first (views made on "
                               "the tape are recorded)", t->name ? t->name : "", t->name ? " " : "", NB_SHP(t),
                               (long long)views, views == 1 ? "" : "s");
    if (requires_grad)
        t->flags |= NB_TF_REQUIRES_GRAD;
    else
        t->flags &= ~(uint32_t)NB_TF_REQUIRES_GRAD;
    return NB_OK;
}

int nb_tensor_requires_grad(const nb_tensor *t)
{
    return t && nb__live("nb_tensor_requires_grad", t) && (t->flags & NB_TF_REQUIRES_GRAD) ? 1 : 0;
}
int nb_tensor_is_leaf(const nb_tensor *t)
{
    return t && nb__live("nb_tensor_is_leaf", t) && (t->flags & NB_TF_LEAF) ? 1 : 0;
}

nb_tensor *nb_tensor_grad(const nb_tensor *t)
{
    if (!t || !nb__live("nb_tensor_grad", t)) return NULL;
    return t->grad_graph ? t->grad_graph : t->grad;
}

nb_tensor *nb_tensor_ensure_grad(nb_tensor *t)
{
    if (!check_leaf("nb_tensor_ensure_grad", t)) return NULL;
    if (!(t->flags & NB_TF_REQUIRES_GRAD))
        return nb__fail(NB_ERR_STATE, "nb_tensor_ensure_grad: leaf %s does not require grad", NB_SHP(t));
    if (!t->grad && !(t->grad = nb_tensor_zeros(t->dtype, t->ndim, t->shape))) return NULL;
    return nb_tensor_grad(t);
}

/* Every write of a backward into a leaf's gradient bumps the gradient's version (nb__add_inplace, or
 * nb__tape_track_leaf for a differentiable gradient); zero_grad records the version it leaves. */
void nb_tensor_zero_grad(nb_tensor *t)
{
    if (!t || !nb__live("nb_tensor_zero_grad", t)) return;
    if (nb__grad_tape(t)) nb__tape_forget_leaf(nb__grad_tape(t), t);
    if (t->grad) {
        nb__fill(t->grad, 0.0);
        t->grad_zeroed = ++t->grad->version;
    }
}

int nb_tensor_has_grad(const nb_tensor *t)
{
    return t && (t->flags & NB_TF_LEAF) && (t->grad_graph || (t->grad && t->grad->version != t->grad_zeroed));
}

nb_status nb_tensor_set_name(nb_tensor *t, const char *name)
{
    if (!t) return nb__fail_status(NB_ERR_ARG, "nb_tensor_set_name: tensor is NULL");
    if (!nb__live("nb_tensor_set_name", t)) return nb_error_code();
    if (!(t->flags & NB_TF_LEAF)) {
        t->name = name;
        return NB_OK;
    }
    char *copy = NULL;
    if (name) {
        size_t n = strlen(name) + 1;
        copy = nb__malloc(n);
        if (!copy) return nb__fail_status(NB_ERR_NOMEM, "nb_tensor_set_name: out of memory");
        memcpy(copy, name, n);
    }
    if (t->name) nb__free((void *)t->name, strlen(t->name) + 1);
    t->name = copy;
    return NB_OK;
}

const char *nb_tensor_name(const nb_tensor *t) { return t && nb__live("nb_tensor_name", t) ? t->name : NULL; }

char *nb_shape_str(const nb_tensor *t, char *buf, size_t size)
{
    if (!buf || !size) return buf;
    snprintf(buf, size, "%s", !t ? "(null)" : nb__live("nb_shape_str", t) ? NB_SHP(t) : "(stale)");
    return buf;
}
