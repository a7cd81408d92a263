/* Convolutional-network layers: Conv1d/Conv2d, BatchNorm1d/2d with running statistics, GroupNorm,
 * channel dropout and flatten. Compositions of nabla ops only (nabla.h is the only include): no
 * backward code. Names and semantics follow torch.nn, so that a checkpoint loads into the equivalent
 * PyTorch module with load_state_dict(strict=True) and back. */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

static const nb_layer_opts default_opts = {0};

/* initialisers: none (the layer's default), zeros, ones */
static const nb_init INIT_NONE = {.kind = NB_INIT_DEFAULT}, INIT_ZEROS = {.kind = NB_INIT_ZEROS},
                     INIT_ONES = {.kind = NB_INIT_CONSTANT, .a = 1.0};

/* Leaf "prefix.suffix" of dtype and shape, initialised with init (fallback when init is DEFAULT),
 * registered in p as a parameter (or a buffer). */
static nb_tensor *new_tensor(nb_params *p, const char *prefix, const char *suffix, nb_dtype dt, int ndim,
                             const int64_t *shape, nb_init init, nb_init fallback, int64_t fan_in, int64_t fan_out,
                             nb_rng *rng, int buffer, const char *who)
{
    char name[256];
    int n = snprintf(name, sizeof name, "%s.%s", prefix ? prefix : "", suffix);
    if (n < 0 || (size_t)n >= sizeof name) {
        nb_error_set(NB_ERR_ARG, "%s: name %s.%s is too long", who, prefix ? prefix : "", suffix);
        return NULL;
    }
    nb_tensor *t = nb_tensor_zeros(dt, ndim, shape);
    if (!t) return NULL;
    if (nb_init_tensor(t, init.kind == NB_INIT_DEFAULT ? fallback : init, fan_in, fan_out, rng) != NB_OK) {
        nb_tensor_free(t);
        return NULL;
    }
    return buffer ? nb_params_add_buffer(p, name, t) : nb_params_add(p, name, t);
}

static const char *shape_of(const nb_tensor *x, char *buf, size_t size) { return nb_shape_str(x, buf, size); }

/* ---- Conv1d, Conv2d --------------------------------------------------------------------------- */

static nb_status conv_init(nb_conv *c, nb_params *p, const char *name, int dims, int64_t in, int64_t out,
                           const int64_t *kernel, const nb_conv_opts *conv, const nb_layer_opts *opts, nb_rng *rng)
{
    const char *who = dims == 2 ? "nb_conv2d_init" : "nb_conv1d_init";
    const nb_layer_opts *o = opts ? opts : &default_opts;
    nb_conv_opts co = conv ? *conv : nb_conv_defaults();
    if (!c || !p || in < 1 || out < 1 || kernel[0] < 1 || (dims == 2 && kernel[1] < 1)) {
        nb_error_set(NB_ERR_ARG, "%s: %s: need a layer, a collection, channels >= 1 and a kernel >= 1 (in %lld, "
                     "out %lld)", who, name ? name : "?", (long long)in, (long long)out);
        return NB_ERR_ARG;
    }
    if (co.groups < 1 || in % co.groups || out % co.groups) {
        nb_error_set(NB_ERR_ARG, "%s: %s: groups %lld must divide both channel counts (in %lld, out %lld)", who,
                     name ? name : "?", (long long)co.groups, (long long)in, (long long)out);
        return NB_ERR_ARG;
    }
    /* the weight's element count (and so the fans below) must fit: nb_tensor_zeros bounds it at 2^59 */
    int64_t ntaps = 0, fan = 0, count = 0;
    if (__builtin_mul_overflow(kernel[0], dims == 2 ? kernel[1] : 1, &ntaps) ||
        __builtin_mul_overflow(in / co.groups, ntaps, &fan) || __builtin_mul_overflow(out, fan, &count) ||
        count > INT64_MAX / 16) {
        nb_error_set(NB_ERR_ARG, "%s: %s: the weight (out %lld, in / groups %lld, kernel %lld x %lld) has too many "
                     "elements", who, name ? name : "?", (long long)out, (long long)(in / co.groups),
                     (long long)kernel[0], (long long)(dims == 2 ? kernel[1] : 1));
        return NB_ERR_ARG;
    }
    memset(c, 0, sizeof *c);
    c->dims = dims;
    c->in = in;
    c->out = out;
    c->kernel[0] = kernel[0];
    c->kernel[1] = dims == 2 ? kernel[1] : 1;
    c->conv = co;
    /* torch's fans: in / groups and out, times the kernel's taps; its default init is kaiming uniform
     * with a = sqrt(5), a bound of 1 / sqrt(fan_in) for the weight and the bias alike */
    const int64_t taps = c->kernel[0] * c->kernel[1], fan_in = in / co.groups * taps, fan_out = out * taps;
    const double bound = 1.0 / sqrt((double)fan_in);
    int64_t ws[4] = {out, in / co.groups, kernel[0], dims == 2 ? kernel[1] : 0};
    c->weight = new_tensor(p, name, "weight", o->dtype, dims + 2, ws, o->weight_init,
                           (nb_init){.kind = NB_INIT_KAIMING_UNIFORM, .a = sqrt(5.0)}, fan_in, fan_out, rng, 0, who);
    if (!c->weight) return nb_error_code();
    if (!o->no_bias) {
        nb_init def = {.kind = NB_INIT_UNIFORM, .a = bound};
        c->bias = new_tensor(p, name, "bias", o->dtype, 1, &out, o->bias_init, def, fan_in, fan_out, rng, 0, who);
        if (!c->bias) return nb_error_code();
    }
    return NB_OK;
}

nb_status nb_conv2d_init(nb_conv *c, nb_params *p, const char *name, int64_t in, int64_t out, int64_t kh, int64_t kw,
                         const nb_conv_opts *conv, const nb_layer_opts *opts, nb_rng *rng)
{
    return conv_init(c, p, name, 2, in, out, (const int64_t[]){kh, kw}, conv, opts, rng);
}

nb_status nb_conv1d_init(nb_conv *c, nb_params *p, const char *name, int64_t in, int64_t out, int64_t k,
                         const nb_conv_opts *conv, const nb_layer_opts *opts, nb_rng *rng)
{
    return conv_init(c, p, name, 1, in, out, &k, conv, opts, rng);
}

nb_tensor *nb_conv_forward(const nb_conv *c, nb_tensor *x)
{
    if (!c || !c->weight) {
        nb_error_set(NB_ERR_ARG, "nb_conv_forward: layer is NULL or not initialised");
        return NULL;
    }
    return c->dims == 2 ? nb_conv2d(x, c->weight, c->bias, &c->conv) : nb_conv1d(x, c->weight, c->bias, &c->conv);
}

/* ---- BatchNorm1d, BatchNorm2d ----------------------------------------------------------------- */

static nb_status bn_init(nb_batch_norm *bn, nb_params *p, const char *name, int dims, int64_t features,
                         const nb_norm_opts *opts)
{
    const char *who = dims == 2 ? "nb_batch_norm2d_init" : "nb_batch_norm1d_init";
    nb_norm_opts o = opts ? *opts : (nb_norm_opts){0};
    if (!bn || !p || features < 1 || !(o.eps >= 0) || !(o.momentum <= 1)) {
        nb_error_set(NB_ERR_ARG, "%s: %s: need a layer, a collection, features >= 1, eps >= 0 and momentum <= 1 "
                     "(features %lld, eps %g, momentum %g)", who, name ? name : "?", (long long)features, o.eps,
                     o.momentum);
        return NB_ERR_ARG;
    }
    memset(bn, 0, sizeof *bn);
    bn->dims = dims;
    bn->features = features;
    bn->dtype = o.dtype;
    bn->eps = o.eps > 0 ? o.eps : 1e-5;
    bn->momentum = o.momentum == 0 ? 0.1 : o.momentum;
    bn->owner = p;
    if (!o.no_affine) {
        bn->weight = new_tensor(p, name, "weight", o.dtype, 1, &features, INIT_ONES, INIT_NONE, features, features,
                                NULL, 0, who);
        if (!bn->weight) return nb_error_code();
        bn->bias = new_tensor(p, name, "bias", o.dtype, 1, &features, INIT_ZEROS, INIT_NONE, features, features, NULL,
                              0, who);
        if (!bn->bias) return nb_error_code();
    }
    if (!o.no_running_stats) {
        /* torch's order: running_mean, running_var, num_batches_tracked (an i64 scalar) */
        bn->running_mean = new_tensor(p, name, "running_mean", o.dtype, 1, &features, INIT_ZEROS, INIT_NONE, features,
                                      features, NULL, 1, who);
        if (!bn->running_mean) return nb_error_code();
        bn->running_var = new_tensor(p, name, "running_var", o.dtype, 1, &features, INIT_ONES, INIT_NONE, features,
                                     features, NULL, 1, who);
        if (!bn->running_var) return nb_error_code();
        bn->num_batches_tracked =
            new_tensor(p, name, "num_batches_tracked", NB_I64, 0, NULL, INIT_ZEROS, INIT_NONE, 1, 1, NULL, 1, who);
        if (!bn->num_batches_tracked) return nb_error_code();
    }
    return NB_OK;
}

nb_status nb_batch_norm2d_init(nb_batch_norm *bn, nb_params *p, const char *name, int64_t features,
                               const nb_norm_opts *opts)
{
    return bn_init(bn, p, name, 2, features, opts);
}

nb_status nb_batch_norm1d_init(nb_batch_norm *bn, nb_params *p, const char *name, int64_t features,
                               const nb_norm_opts *opts)
{
    return bn_init(bn, p, name, 1, features, opts);
}

/* (1 - f) buf + f v for a [C] leaf buffer and a [C] tensor v, on the tape */
static nb_tensor *blend(nb_tensor *buf, nb_tensor *v, double f)
{
    return nb_add(nb_mul_scalar(buf, 1.0 - f), nb_mul_scalar(v, f));
}

/* The running statistics after a training batch with statistics st [2, C] over m values per channel:
 * as torch, an exponential average with the momentum (or, with a negative momentum, the cumulative
 * average over the batches seen) of the mean and of the unbiased variance. Everything is computed
 * before anything is written: a failure (out of memory) leaves the buffers and the count as they were. */
static nb_status update_running(const nb_batch_norm *bn, nb_tensor *st, int64_t m)
{
    nb_no_grad_begin();
    nb_tensor *nbt = bn->num_batches_tracked;
    const double batches = nb_tensor_get(nbt, 0) + 1;
    const double f = bn->momentum < 0 ? 1.0 / batches : bn->momentum;
    int64_t c = bn->features;
    nb_tensor *mean = nb_reshape(nb_slice(st, 0, 0, 1, 1), NB_SHAPE(c));
    nb_tensor *var = nb_mul_scalar(nb_reshape(nb_slice(st, 0, 1, 2, 1), NB_SHAPE(c)), (double)m / (double)(m - 1));
    nb_tensor *new_mean = blend(bn->running_mean, mean, f), *new_var = blend(bn->running_var, var, f);
    nb_status s = new_mean && new_var ? NB_OK : nb_error_code() != NB_OK ? nb_error_code() : NB_ERR_NOMEM;
    if (s == NB_OK) s = nb_tensor_set(nbt, 0, batches);
    if (s == NB_OK) s = nb_tensor_copy_from(bn->running_mean, nb_tensor_cdata(new_mean));
    if (s == NB_OK) s = nb_tensor_copy_from(bn->running_var, nb_tensor_cdata(new_var));
    nb_no_grad_end();
    return s;
}

/* The layer on x, followed by relu and max pooling over kernel [kh, kw] (fused in training) when kernel
 * is not NULL. */
static nb_tensor *bn_forward(const char *who, const nb_batch_norm *bn, nb_tensor *x, const int64_t *kernel)
{
    char s[96];
    if (!bn || bn->features < 1) {
        nb_error_set(NB_ERR_ARG, "%s: layer is NULL or not initialised", who);
        return NULL;
    }
    if (!x) return NULL;
    int nd = nb_tensor_ndim(x);
    int rank_ok = bn->dims == 2 ? nd == 4 : (nd == 2 || nd == 3);
    if (!rank_ok || nb_tensor_dim(x, 1) != bn->features || (kernel && bn->dims != 2)) {
        nb_error_set(NB_ERR_SHAPE, "%s: input %s: expected %s with C = %lld", who, shape_of(x, s, sizeof s),
                     bn->dims == 2 ? "[N, C, H, W]" : kernel ? "a BatchNorm2d layer and [N, C, H, W]" : "[N, C] or [N, C, L]",
                     (long long)bn->features);
        return NULL;
    }
    if (nb_tensor_dtype(x) != bn->dtype) {
        nb_error_set(NB_ERR_DTYPE, "%s: input %s %s: the layer's tensors are %s (use nb_cast)", who,
                     nb_dtype_name(nb_tensor_dtype(x)), shape_of(x, s, sizeof s), nb_dtype_name(bn->dtype));
        return NULL;
    }
    int training = !bn->owner || nb_params_training(bn->owner);
    if (training || !bn->running_mean) {
        int64_t m = nb_tensor_numel(x) / bn->features;
        if (training && m == 1) {
            nb_error_set(NB_ERR_SHAPE, "%s: input %s: training needs more than one value per channel", who,
                         shape_of(x, s, sizeof s));
            return NULL;
        }
        nb_tensor *st, *y = kernel ? nb_batch_norm_relu_max_pool2d(x, bn->weight, bn->bias, bn->eps, kernel[0],
                                                                   kernel[1], &st)
                                   : nb_batch_norm_train(x, bn->weight, bn->bias, bn->eps, &st);
        if (!y || !training || !bn->running_mean) return y;
        /* an empty batch (as torch) leaves the running statistics and counts the batch */
        nb_tensor *nbt = bn->num_batches_tracked;
        if (m == 0) return nb_tensor_set(nbt, 0, nb_tensor_get(nbt, 0) + 1) == NB_OK ? y : NULL;
        if (update_running(bn, st, m) != NB_OK) return NULL;
        return y;
    }
    /* evaluation: the running statistics, as a constant */
    nb_tensor *parts[2] = {nb_reshape(bn->running_mean, NB_SHAPE(1, bn->features)),
                           nb_reshape(bn->running_var, NB_SHAPE(1, bn->features))};
    nb_tensor *y = nb_channel_norm(x, nb_concat(2, parts, 0), bn->weight, bn->bias, bn->eps);
    return kernel ? nb_max_pool2d(nb_relu(y), kernel[0], kernel[1], NULL) : y;
}

nb_tensor *nb_batch_norm_forward(const nb_batch_norm *bn, nb_tensor *x)
{
    return bn_forward("nb_batch_norm_forward", bn, x, NULL);
}

nb_tensor *nb_batch_norm_relu_pool_forward(const nb_batch_norm *bn, nb_tensor *x, int64_t kh, int64_t kw)
{
    return bn_forward("nb_batch_norm_relu_pool_forward", bn, x, (const int64_t[]){kh, kw});
}

/* ---- GroupNorm -------------------------------------------------------------------------------- */

nb_status nb_group_norm_init(nb_group_norm *gn, nb_params *p, const char *name, int64_t groups, int64_t channels,
                             const nb_norm_opts *opts)
{
    const char *who = "nb_group_norm_init";
    nb_norm_opts o = opts ? *opts : (nb_norm_opts){0};
    if (!gn || !p || groups < 1 || channels < 1 || channels % groups || !(o.eps >= 0)) {
        nb_error_set(NB_ERR_ARG, "%s: %s: need groups dividing channels (groups %lld, channels %lld) and eps >= 0",
                     who, name ? name : "?", (long long)groups, (long long)channels);
        return NB_ERR_ARG;
    }
    memset(gn, 0, sizeof *gn);
    gn->groups = groups;
    gn->channels = channels;
    gn->eps = o.eps > 0 ? o.eps : 1e-5;
    gn->dtype = o.dtype;
    if (!o.no_affine) {
        gn->weight = new_tensor(p, name, "weight", o.dtype, 1, &channels, INIT_ONES, INIT_NONE, channels, channels,
                                NULL, 0, who);
        if (!gn->weight) return nb_error_code();
        gn->bias = new_tensor(p, name, "bias", o.dtype, 1, &channels, INIT_ZEROS, INIT_NONE, channels, channels, NULL,
                              0, who);
        if (!gn->bias) return nb_error_code();
    }
    return NB_OK;
}

nb_tensor *nb_group_norm_forward(const nb_group_norm *gn, nb_tensor *x)
{
    const char *who = "nb_group_norm_forward";
    char s[96];
    if (!gn || gn->groups < 1) {
        nb_error_set(NB_ERR_ARG, "%s: layer is NULL or not initialised", who);
        return NULL;
    }
    if (!x) return NULL;
    int nd = nb_tensor_ndim(x);
    if (nd < 2 || nb_tensor_dim(x, 1) != gn->channels) {
        nb_error_set(NB_ERR_SHAPE, "%s: input %s: expected [N, C, ...] with C = %lld", who, shape_of(x, s, sizeof s),
                     (long long)gn->channels);
        return NULL;
    }
    if (nb_tensor_dtype(x) != gn->dtype) {
        nb_error_set(NB_ERR_DTYPE, "%s: input %s %s: the layer's tensors are %s (use nb_cast)", who,
                     nb_dtype_name(nb_tensor_dtype(x)), shape_of(x, s, sizeof s), nb_dtype_name(gn->dtype));
        return NULL;
    }
    /* each (sample, group) is one channel of a [1, N G, C/G ...] view: its statistics normalise it (the
     * extents named: with a zero batch or extent, -1 could not be inferred) */
    int64_t n = nb_tensor_dim(x, 0), per = gn->channels / gn->groups;
    for (int d = 2; d < nd; d++) per *= nb_tensor_dim(x, d);
    nb_tensor *v = nb_reshape(x, NB_SHAPE(1, n * gn->groups, per));
    nb_tensor *y = nb_reshape(nb_batch_norm_train(v, NULL, NULL, gn->eps, NULL), nd, nb_tensor_shape(x));
    if (!gn->weight || !y) return y;
    int64_t bs[NB_MAX_DIMS];
    for (int d = 0; d < nd; d++) bs[d] = d == 1 ? gn->channels : 1;
    return nb_add(nb_mul(y, nb_reshape(gn->weight, nd, bs)), nb_reshape(gn->bias, nd, bs));
}

/* ---- channel dropout, flatten ----------------------------------------------------------------- */

nb_tensor *nb_train_dropout2d(const nb_params *model, nb_tensor *x, double p, nb_rng *rng)
{
    if (!x) return NULL;
    int nd = nb_tensor_ndim(x);
    if (p == 0.0 || (model && !nb_params_training(model))) {
        /* a view with a node of its own, never x itself (as nb_train_dropout) */
        if (!nb_tape_current()) {
            nb_error_set(NB_ERR_STATE, "nb_train_dropout2d: no current tape (call nb_tape_begin first)");
            return NULL;
        }
        return nb_reshape(x, nd, nb_tensor_shape(x));
    }
    if (nd < 3) {
        char s[96];
        nb_error_set(NB_ERR_SHAPE, "nb_train_dropout2d: input %s: expected [N, C, ...] with spatial dims",
                     shape_of(x, s, sizeof s));
        return NULL;
    }
    /* one draw per (sample, channel), broadcast over the positions */
    int64_t ms[NB_MAX_DIMS];
    for (int d = 0; d < nd; d++) ms[d] = d < 2 ? nb_tensor_dim(x, d) : 1;
    return nb_mul(x, nb_dropout_mask(nb_tensor_dtype(x), nd, ms, p, rng));
}

nb_tensor *nb_flatten(nb_tensor *x, int start_dim, int end_dim)
{
    if (!x) return NULL;
    int nd = nb_tensor_ndim(x);
    int s = start_dim < 0 ? start_dim + nd : start_dim, e = end_dim < 0 ? end_dim + nd : end_dim;
    if (nd == 0) return nb_reshape(x, NB_SHAPE(1));
    if (s < 0 || s >= nd || e < 0 || e >= nd || s > e) {
        char b[96];
        nb_error_set(NB_ERR_ARG, "nb_flatten: input %s: dims %d..%d out of range", shape_of(x, b, sizeof b), start_dim,
                     end_dim);
        return NULL;
    }
    int64_t shape[NB_MAX_DIMS];
    int k = 0;
    for (int d = 0; d < s; d++) shape[k++] = nb_tensor_dim(x, d);
    int64_t m = 1;
    for (int d = s; d <= e; d++) m *= nb_tensor_dim(x, d);
    shape[k++] = m;
    for (int d = e + 1; d < nd; d++) shape[k++] = nb_tensor_dim(x, d);
    return nb_reshape(x, k, shape);
}
