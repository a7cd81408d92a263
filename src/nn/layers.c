/* Feed-forward layers: activations, Linear, MLP, dropout, Embedding, LayerNorm. Compositions of
 * nabla ops only (nabla.h is the only include): no backward code. */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

/* "prefix.suffix" into buf; false (error recorded) if it does not fit. */
static int join(char *buf, size_t size, const char *prefix, const char *suffix, const char *who)
{
    int n = snprintf(buf, size, "%s.%s", prefix ? prefix : "", suffix);
    if (n < 0 || (size_t)n >= size) {
        nb_error_set(NB_ERR_ARG, "%s: name %s.%s is too long", who, prefix ? prefix : "", suffix);
        return 0;
    }
    return 1;
}

static const nb_layer_opts default_opts = {0};

/* A parameter of the given shape, initialised with init (or fallback when init is DEFAULT). */
static nb_tensor *new_param(nb_params *p, const char *prefix, const char *suffix, const nb_layer_opts *o,
                            int ndim, const int64_t *shape, nb_init init, nb_init fallback, int64_t fan_in,
                            int64_t fan_out, nb_rng *rng, const char *who)
{
    char name[256];
    if (!join(name, sizeof name, prefix, suffix, who)) return NULL;
    nb_tensor *t = nb_tensor_zeros(o->dtype, ndim, shape);
    if (!t) return NULL;
    if (nb_init_tensor(t, init.kind == NB_INIT_DEFAULT ? fallback : init, fan_in, fan_out, rng) != NB_OK) {
        nb_tensor_free(t);
        return NULL;
    }
    return nb_params_add(p, name, t);
}

/* ---- activations ------------------------------------------------------------------------------ */

/* x's values as a tensor of its own (a reshape to x's shape: a view, recorded when x requires grad), so
 * that a hook or nb_grad on what a layer returns concerns that result, never its input. With no
 * current tape it fails as any op does (nb_reshape would make a leaf view, the caller's to free). */
static nb_tensor *same(const char *who, nb_tensor *x)
{
    if (!x) return NULL;
    if (!nb_tape_current()) {
        nb_error_set(NB_ERR_STATE, "%s: no current tape (call nb_tape_begin first)", who);
        return NULL;
    }
    return nb_reshape(x, nb_tensor_ndim(x), nb_tensor_shape(x));
}

nb_tensor *nb_activate(nb_tensor *x, nb_activation act)
{
    switch (act) {
    case NB_ACT_NONE: return same("nb_activate", x);
    case NB_ACT_RELU: return nb_relu(x);
    case NB_ACT_TANH: return nb_tanh(x);
    case NB_ACT_SIGMOID: return nb_sigmoid(x);
    case NB_ACT_GELU: return nb_gelu(x);
    case NB_ACT_LEAKY_RELU: return nb_leaky_relu(x, 0.01);
    case NB_ACT_ELU: return nb_elu(x, 1.0);
    case NB_ACT_SOFTPLUS: return nb_softplus(x);
    default: break;
    }
    nb_error_set(NB_ERR_ARG, "nb_activate: unknown activation %d", (int)act);
    return NULL;
}

const char *nb_activation_name(nb_activation act)
{
    static const char *const names[] = {"none", "relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "softplus"};
    _Static_assert(sizeof names / sizeof names[0] == NB_ACT_COUNT, "one name per activation");
    return (unsigned)act < NB_ACT_COUNT ? names[act] : "?";
}

/* ---- Linear ----------------------------------------------------------------------------------- */

nb_status nb_linear_init(nb_linear *l, nb_params *p, const char *name, int64_t in, int64_t out,
                         const nb_layer_opts *opts, nb_rng *rng)
{
    const char *who = "nb_linear_init";
    const nb_layer_opts *o = opts ? opts : &default_opts;
    if (!l || !p || in < 1 || out < 1) {
        nb_error_set(NB_ERR_ARG, "nb_linear_init: %s: need a layer, a collection and sizes >= 1 (in %lld, "
                     "out %lld)", name ? name : "?", (long long)in, (long long)out);
        return NB_ERR_ARG;
    }
    memset(l, 0, sizeof *l);
    l->in = in;
    l->out = out;
    double k = 1.0 / sqrt((double)in);
    nb_init def = {.kind = NB_INIT_UNIFORM, .a = k};
    l->weight = new_param(p, name, "weight", o, 2, (const int64_t[]){out, in}, o->weight_init, def, in, out, rng, who);
    if (!l->weight) return nb_error_code();
    if (!o->no_bias) {
        l->bias = new_param(p, name, "bias", o, 1, &out, o->bias_init, def, in, out, rng, who);
        if (!l->bias) return nb_error_code();
    }
    return NB_OK;
}

nb_tensor *nb_linear_forward(const nb_linear *l, nb_tensor *x)
{
    if (!l || !l->weight) {
        nb_error_set(NB_ERR_ARG, "nb_linear_forward: layer is NULL or not initialised");
        return NULL;
    }
    if (!x) return NULL;
    if (nb_tensor_ndim(x) < 1 || nb_tensor_dim(x, -1) != l->in) {
        char s[96];
        nb_error_set(NB_ERR_SHAPE, "nb_linear_forward: input %s: expected a last dimension of %lld",
                     nb_shape_str(x, s, sizeof s), (long long)l->in);
        return NULL;
    }
    /* x W^T + b in one op (BLAS adds the product into a copy of b) */
    nb_tensor *x2 = nb_tensor_ndim(x) == 1 ? nb_reshape(x, NB_SHAPE(1, l->in)) : x;
    nb_tensor *y = l->bias ? nb_addmm(l->bias, x2, l->weight, NB_TRANS_B) : nb_matmul_ex(x2, l->weight, NB_TRANS_B);
    return nb_tensor_ndim(x) == 1 ? nb_reshape(y, NB_SHAPE(l->out)) : y;
}

/* ---- MLP, dropout ----------------------------------------------------------------------------- */

nb_status nb_mlp_init(nb_mlp *m, nb_params *p, const char *name, int n_sizes, const int64_t *sizes,
                      nb_activation act, double dropout, const nb_layer_opts *opts, nb_rng *rng)
{
    if (!m || !p || !sizes || n_sizes < 2 || n_sizes - 1 > NB_MLP_MAX_LAYERS || (unsigned)act >= NB_ACT_COUNT ||
        !(dropout >= 0 && dropout < 1)) {
        nb_error_set(NB_ERR_ARG, "nb_mlp_init: %s: need 2..%d sizes, a known activation and dropout in [0, 1) "
                     "(got %d sizes, dropout %g)", name ? name : "?", NB_MLP_MAX_LAYERS + 1, n_sizes, dropout);
        return NB_ERR_ARG;
    }
    memset(m, 0, sizeof *m);
    m->n_layers = n_sizes - 1;
    m->act = act;
    m->dropout = dropout;
    m->rng = rng;
    m->owner = p;
    for (int i = 0; i < m->n_layers; i++) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s.%d", name ? name : "mlp", i);
        nb_status st = nb_linear_init(&m->layer[i], p, sub, sizes[i], sizes[i + 1], opts, rng);
        if (st != NB_OK) return st;
    }
    return NB_OK;
}

nb_tensor *nb_mlp_forward(const nb_mlp *m, nb_tensor *x)
{
    if (!m || m->n_layers < 1) {
        nb_error_set(NB_ERR_ARG, "nb_mlp_forward: MLP is NULL or not initialised");
        return NULL;
    }
    for (int i = 0; i < m->n_layers; i++) {
        x = nb_linear_forward(&m->layer[i], x);
        if (i + 1 == m->n_layers) break;
        /* between layers nothing reaches the caller: no identity view for "none", p = 0 or evaluation */
        if (m->act != NB_ACT_NONE) x = nb_activate(x, m->act);
        if (m->dropout > 0 && (!m->owner || nb_params_training(m->owner))) x = nb_dropout(x, m->dropout, m->rng);
    }
    return x;
}

nb_tensor *nb_train_dropout(const nb_params *model, nb_tensor *x, double p, nb_rng *rng)
{
    if (!x || p == 0.0 || (model && !nb_params_training(model))) return same("nb_train_dropout", x);
    return nb_dropout(x, p, rng);
}

/* ---- Embedding -------------------------------------------------------------------------------- */

nb_status nb_embedding_init(nb_embedding *e, nb_params *p, const char *name, int64_t num, int64_t dim,
                            const nb_layer_opts *opts, nb_rng *rng)
{
    const nb_layer_opts *o = opts ? opts : &default_opts;
    if (!e || !p || num < 1 || dim < 1) {
        nb_error_set(NB_ERR_ARG, "nb_embedding_init: %s: sizes must be >= 1 (num %lld, dim %lld)",
                     name ? name : "?", (long long)num, (long long)dim);
        return NB_ERR_ARG;
    }
    if (o->use_padding_idx && (o->padding_idx < -num || o->padding_idx >= num)) {
        nb_error_set(NB_ERR_ARG, "nb_embedding_init: %s: padding_idx %lld is outside [-%lld, %lld) (num)",
                     name ? name : "?", (long long)o->padding_idx, (long long)num, (long long)num);
        return NB_ERR_ARG;
    }
    memset(e, 0, sizeof *e);
    e->num = num;
    e->dim = dim;
    e->weight = new_param(p, name, "weight", o, 2, (const int64_t[]){num, dim}, o->weight_init,
                          (nb_init){.kind = NB_INIT_NORMAL, .a = 1.0}, dim, num, rng, "nb_embedding_init");
    if (!e->weight) return nb_error_code();
    if (o->use_padding_idx) {
        e->has_padding = 1;
        e->padding_idx = o->padding_idx < 0 ? o->padding_idx + num : o->padding_idx;
        for (int64_t j = 0; j < dim; j++) nb_tensor_set(e->weight, e->padding_idx * dim + j, 0.0); /* as torch */
    }
    return NB_OK;
}

nb_tensor *nb_embedding_forward(const nb_embedding *e, nb_tensor *idx)
{
    if (!e || !e->weight) {
        nb_error_set(NB_ERR_ARG, "nb_embedding_forward: layer is NULL or not initialised");
        return NULL;
    }
    if (!idx) return NULL;
    if (nb_tensor_dtype(idx) != NB_I64) {
        nb_error_set(NB_ERR_DTYPE, "nb_embedding_forward: indices must be i64, got %s", nb_dtype_name(nb_tensor_dtype(idx)));
        return NULL;
    }
    int nd = nb_tensor_ndim(idx);
    int64_t shape[NB_MAX_DIMS];
    if (nd + 1 > NB_MAX_DIMS) {
        nb_error_set(NB_ERR_SHAPE, "nb_embedding_forward: indices have too many dims (%d)", nd);
        return NULL;
    }
    memcpy(shape, nb_tensor_shape(idx), (size_t)nd * sizeof *shape);
    shape[nd] = e->dim;
    int64_t n = nb_tensor_numel(idx);
    nb_tensor *flat = nb_reshape(idx, NB_SHAPE(n));
    nb_tensor *rows = nb_index_select(e->weight, 0, flat); /* [n, dim] */
    if (e->has_padding && rows && nb_tensor_requires_grad(rows)) {
        /* the padding row's lookups: the same values, cut off from the graph (gradient 0) */
        const int64_t *ix = nb_tensor_cdata(idx);
        int64_t pads = 0;
        for (int64_t i = 0; i < n; i++) pads += ix[i] == e->padding_idx;
        if (pads) {
            nb_dtype dt = nb_tensor_dtype(rows);
            nb_tensor *keep = nb_ones(dt, NB_SHAPE(n, 1)); /* a fresh tape constant: ours to fill */
            if (!keep) return NULL;
            for (int64_t i = 0; i < n; i++) {
                if (ix[i] != e->padding_idx) continue;
                if (dt == NB_F32)
                    ((float *)nb_tensor_data(keep))[i] = 0;
                else
                    ((double *)nb_tensor_data(keep))[i] = 0;
            }
            rows = nb_where(keep, rows, nb_detach(rows));
        }
    }
    return nb_reshape(rows, nd + 1, shape);
}

/* ---- LayerNorm -------------------------------------------------------------------------------- */

nb_status nb_layer_norm_init(nb_layer_norm *ln, nb_params *p, const char *name, int64_t dim, double eps,
                             const nb_layer_opts *opts)
{
    const nb_layer_opts *o = opts ? opts : &default_opts;
    if (!ln || !p || dim < 1 || !(eps >= 0)) {
        nb_error_set(NB_ERR_ARG, "nb_layer_norm_init: %s: dim %lld, eps %g", name ? name : "?", (long long)dim, eps);
        return NB_ERR_ARG;
    }
    memset(ln, 0, sizeof *ln);
    ln->dim = dim;
    ln->eps = eps;
    ln->weight = new_param(p, name, "weight", o, 1, &dim, o->weight_init, (nb_init){.kind = NB_INIT_CONSTANT, .a = 1.0}, dim,
                           dim, NULL, "nb_layer_norm_init");
    if (!ln->weight) return nb_error_code();
    if (!o->no_bias) {
        ln->bias = new_param(p, name, "bias", o, 1, &dim, o->bias_init, (nb_init){.kind = NB_INIT_ZEROS, .a = 0}, dim, dim, NULL,
                             "nb_layer_norm_init");
        if (!ln->bias) return nb_error_code();
    }
    return NB_OK;
}

nb_tensor *nb_layer_norm_forward(const nb_layer_norm *ln, nb_tensor *x)
{
    if (!ln || !ln->weight) {
        nb_error_set(NB_ERR_ARG, "nb_layer_norm_forward: layer is NULL or not initialised");
        return NULL;
    }
    if (!x) return NULL;
    if (nb_tensor_ndim(x) < 1 || nb_tensor_dim(x, -1) != ln->dim) {
        char s[96];
        nb_error_set(NB_ERR_SHAPE, "nb_layer_norm_forward: input %s: expected a last dimension of %lld",
                     nb_shape_str(x, s, sizeof s), (long long)ln->dim);
        return NULL;
    }
    nb_tensor *centered = nb_sub(x, nb_mean(x, NB_AXES(-1), 1));
    nb_tensor *var = nb_mean(nb_square(centered), NB_AXES(-1), 1);
    nb_tensor *y = nb_mul(nb_div(centered, nb_sqrt(nb_add_scalar(var, ln->eps))), ln->weight);
    return ln->bias ? nb_add(y, ln->bias) : y;
}
