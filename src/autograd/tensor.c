/* Tensor storage: leaf constructors (caller-owned, heap) and accessors shared by every tensor. */
#include "internal.h"

#include <math.h>
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

bool nb__same_shape(const nb_tensor *a, const nb_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
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

/* A heap leaf; header and data in one block, data 64-byte aligned. */
static nb_tensor *leaf_new(const char *who, nb_dtype dt, int ndim, const int64_t *shape)
{
    int64_t n;
    if (!check_spec(who, dt, ndim, shape, &n)) return NULL;
    size_t head = (sizeof(nb_tensor) + 63) & ~(size_t)63;
    size_t bytes = (size_t)n * nb_dtype_size(dt);
    unsigned char *raw = nb__malloc(head + bytes + 64);
    if (!raw) return nb__fail(NB_ERR_NOMEM, "%s: out of memory for %s %s", who, nb_dtype_name(dt),
                              nb__shape_str(ndim, shape));
    nb_tensor *t = (nb_tensor *)raw;
    init_header(t, dt, ndim, shape, n);
    t->flags = NB_TF_LEAF;
    uintptr_t d = ((uintptr_t)raw + head + 63) & ~(uintptr_t)63;
    t->data = (void *)d;
    return t;
}

static size_t leaf_block_size(const nb_tensor *t)
{
    size_t head = (sizeof(nb_tensor) + 63) & ~(size_t)63;
    return head + (size_t)t->numel * nb_dtype_size(t->dtype) + 64;
}

nb_tensor *nb__tape_result(nb_tape *tape, const char *who, nb_dtype dt, int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    const size_t head = (sizeof(nb_tensor) + 63) & ~(size_t)63;
    unsigned char *raw = nb__tape_alloc(tape, head + (size_t)n * nb_dtype_size(dt));
    if (!raw) return nb__fail(NB_ERR_NOMEM, "%s: out of memory for %s %s", who, nb_dtype_name(dt),
                              nb__shape_str(ndim, shape));
    nb_tensor *t = (nb_tensor *)raw;
    /* field by field: clearing the whole header costs more than the op itself on small tensors */
    t->dtype = dt;
    t->ndim = ndim;
    t->flags = 0;
    t->version = 0;
    t->vp = &t->version;
    t->numel = n;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = raw + head;
    t->tape = tape;
    t->node = NULL;
    t->name = NULL;
    t->hook = NULL;
    t->hook_user = NULL;
    t->post_hook = NULL;
    t->post_hook_user = NULL;
    t->grad = t->grad_graph = NULL;
    t->grad_tape = NULL;
    t->bw_epoch = 0;
    t->bw_slot = 0;
    return t;
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
    nb_tensor *t = leaf_new("nb_tensor_clone", src->dtype, src->ndim, src->shape);
    if (t) memcpy(t->data, src->data, (size_t)t->numel * nb_dtype_size(t->dtype));
    return t;
}

void nb_tensor_free(nb_tensor *t)
{
    if (!t) return;
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
    if (t->grad_tape) nb__tape_forget_leaf(t->grad_tape, t);
    if (t->grad) t->grad->owner = NULL;
    nb_tensor_free(t->grad);
    if (t->name) nb__free((void *)t->name, strlen(t->name) + 1);
    nb__free(t, leaf_block_size(t));
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

nb_dtype nb_tensor_dtype(const nb_tensor *t) { return t ? t->dtype : NB_DTYPE_COUNT; }
int nb_tensor_ndim(const nb_tensor *t) { return t ? t->ndim : -1; }

int64_t nb_tensor_dim(const nb_tensor *t, int dim)
{
    if (!t) return -1;
    int d = nb__axis(dim, t->ndim);
    if (d < 0) {
        nb__fail(NB_ERR_ARG, "nb_tensor_dim: dim %d out of range for %s", dim, NB_SHP(t));
        return -1;
    }
    return t->shape[d];
}

const int64_t *nb_tensor_shape(const nb_tensor *t) { return t ? t->shape : NULL; }
int64_t nb_tensor_numel(const nb_tensor *t) { return t ? t->numel : 0; }
void *nb_tensor_data(nb_tensor *t) { return t ? t->data : NULL; }
const void *nb_tensor_cdata(const nb_tensor *t) { return t ? t->data : NULL; }

double nb_tensor_get(const nb_tensor *t, int64_t index)
{
    if (!t) return NAN;
    if (index < 0 || index >= t->numel) {
        nb__fail(NB_ERR_ARG, "nb_tensor_get: index %lld out of range for %s", (long long)index, NB_SHP(t));
        return NAN;
    }
    return nb__get(t, index);
}

double nb_tensor_item(const nb_tensor *t)
{
    if (!t) return NAN;
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
    t->version++;
    return NB_OK;
}

nb_status nb_tensor_copy_from(nb_tensor *t, const void *data)
{
    if (!check_leaf("nb_tensor_copy_from", t)) return nb_error_code();
    if (!data) return nb__fail_status(NB_ERR_ARG, "nb_tensor_copy_from: data is NULL");
    memcpy(t->data, data, (size_t)t->numel * nb_dtype_size(t->dtype));
    t->version++;
    return NB_OK;
}

nb_status nb_tensor_fill(nb_tensor *t, double value)
{
    if (!check_leaf("nb_tensor_fill", t)) return nb_error_code();
    nb__fill(t, value);
    t->version++;
    return NB_OK;
}

nb_status nb_tensor_axpy(nb_tensor *y, double alpha, const nb_tensor *x)
{
    if (!check_leaf("nb_tensor_axpy", y)) return nb_error_code();
    if (!x) return nb__fail_status(NB_ERR_ARG, "nb_tensor_axpy: x is NULL");
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
    y->version++;
    return NB_OK;
}

void nb_tensor_mark_dirty(nb_tensor *t)
{
    if (t) (*t->vp)++; /* a view's counter is its base's: nodes that saved the base or a view see it */
}

nb_status nb_tensor_set_requires_grad(nb_tensor *t, int requires_grad)
{
    if (!check_leaf("nb_tensor_set_requires_grad", t)) return nb_error_code();
    if (requires_grad && !nb__is_float(t->dtype))
        return nb__fail_status(NB_ERR_DTYPE, "nb_tensor_set_requires_grad: %s tensor %s cannot require "
                               "grad (only f32 and f64 can)", nb_dtype_name(t->dtype), NB_SHP(t));
    if (requires_grad)
        t->flags |= NB_TF_REQUIRES_GRAD;
    else
        t->flags &= ~(uint32_t)NB_TF_REQUIRES_GRAD;
    return NB_OK;
}

int nb_tensor_requires_grad(const nb_tensor *t) { return t && (t->flags & NB_TF_REQUIRES_GRAD) ? 1 : 0; }
int nb_tensor_is_leaf(const nb_tensor *t) { return t && (t->flags & NB_TF_LEAF) ? 1 : 0; }

nb_tensor *nb_tensor_grad(const nb_tensor *t)
{
    if (!t) return NULL;
    return t->grad_graph ? t->grad_graph : t->grad;
}

/* Every write of a backward into a leaf's gradient bumps the gradient's version (nb__add_inplace, or
 * nb__tape_track_leaf for a differentiable gradient); zero_grad records the version it leaves. */
void nb_tensor_zero_grad(nb_tensor *t)
{
    if (!t) return;
    if (t->grad_tape) nb__tape_forget_leaf(t->grad_tape, t);
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

const char *nb_tensor_name(const nb_tensor *t) { return t ? t->name : NULL; }

char *nb_shape_str(const nb_tensor *t, char *buf, size_t size)
{
    if (!buf || !size) return buf;
    snprintf(buf, size, "%s", t ? NB_SHP(t) : "(null)");
    return buf;
}
