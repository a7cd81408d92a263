/* Losses and regularisation, composed from nabla ops in their numerically stable forms (nabla.h is
 * the only include). */
#include <nabla.h>

#include <stdio.h>
#include <string.h>

static nb_tensor *reduce(nb_tensor *l, nb_reduction r, const char *who)
{
    switch (r) {
    case NB_REDUCE_MEAN: return nb_mean_all(l);
    case NB_REDUCE_SUM: return nb_sum_all(l);
    case NB_REDUCE_NONE: return l;
    default: break;
    }
    nb_error_set(NB_ERR_ARG, "%s: unknown reduction %d", who, (int)r);
    return NULL;
}

static int same_shape(nb_tensor *a, nb_tensor *b, const char *who)
{
    if (!a || !b) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: an input is NULL", who);
        return 0;
    }
    int n = nb_tensor_ndim(a);
    if (n != nb_tensor_ndim(b) || memcmp(nb_tensor_shape(a), nb_tensor_shape(b), (size_t)n * sizeof(int64_t)) != 0) {
        char sa[96], sb[96];
        nb_error_set(NB_ERR_SHAPE, "%s: prediction %s and target %s differ in shape", who, nb_shape_str(a, sa, sizeof sa),
                     nb_shape_str(b, sb, sizeof sb));
        return 0;
    }
    return 1;
}

nb_tensor *nb_mse_loss(nb_tensor *pred, nb_tensor *target, nb_reduction reduction)
{
    if (!same_shape(pred, target, "nb_mse_loss")) return NULL;
    return reduce(nb_square(nb_sub(pred, target)), reduction, "nb_mse_loss");
}

/* softplus(x) - x t = max(x, 0) - x t + log(1 + e^-|x|): finite for any x, with gradient
 * sigmoid(x) - t everywhere (also at x = 0, where max and |x| have kinks) */
nb_tensor *nb_bce_with_logits(nb_tensor *logits, nb_tensor *target, nb_reduction reduction)
{
    if (!same_shape(logits, target, "nb_bce_with_logits")) return NULL;
    return reduce(nb_sub(nb_softplus(logits), nb_mul(logits, target)), reduction, "nb_bce_with_logits");
}

/* Picked log-probabilities and the weights of the labels that count. logp [N, C], labels i64 [N]. */
static nb_tensor *nll_impl(nb_tensor *logp, nb_tensor *labels, const nb_ce_opts *opts, const char *who)
{
    static const nb_ce_opts defaults = {0};
    const nb_ce_opts *o = opts ? opts : &defaults;
    if (!logp || !labels) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: an input is NULL", who);
        return NULL;
    }
    char sl[96], sy[96];
    if (nb_tensor_ndim(logp) != 2 || nb_tensor_ndim(labels) != 1 || nb_tensor_dim(labels, 0) != nb_tensor_dim(logp, 0)) {
        nb_error_set(NB_ERR_SHAPE, "%s: scores %s and labels %s: expected [N, C] and [N]", who,
                     nb_shape_str(logp, sl, sizeof sl), nb_shape_str(labels, sy, sizeof sy));
        return NULL;
    }
    if (nb_tensor_dtype(labels) != NB_I64) {
        nb_error_set(NB_ERR_DTYPE, "%s: labels must be i64, got %s", who, nb_dtype_name(nb_tensor_dtype(labels)));
        return NULL;
    }
    if (!(o->label_smoothing >= 0 && o->label_smoothing <= 1) || (unsigned)o->reduction >= NB_REDUCTION_COUNT) {
        nb_error_set(NB_ERR_ARG, "%s: label smoothing %g (expected [0, 1]) or reduction %d is invalid", who,
                     o->label_smoothing, (int)o->reduction);
        return NULL;
    }
    nb_dtype dt = nb_tensor_dtype(logp);
    int64_t n = nb_tensor_dim(logp, 0), c = nb_tensor_dim(logp, 1);
    /* labels to gather with (ignored ones point at class 0) and 0/1 weights */
    nb_tensor *safe = nb_zeros(NB_I64, NB_SHAPE(n, 1)), *w = nb_zeros(dt, NB_SHAPE(n));
    if (!safe || !w) return NULL;
    const int64_t *y = nb_tensor_cdata(labels);
    int64_t *ys = nb_tensor_data(safe);
    int64_t counted = 0;
    for (int64_t i = 0; i < n; i++) {
        if (o->use_ignore_index && y[i] == o->ignore_index) continue;
        if (y[i] < 0 || y[i] >= c) {
            nb_error_set(NB_ERR_ARG, "%s: label %lld at position %lld is out of range for %lld classes", who,
                         (long long)y[i], (long long)i, (long long)c);
            return NULL;
        }
        ys[i] = y[i];
        counted++;
        if (dt == NB_F32)
            ((float *)nb_tensor_data(w))[i] = 1;
        else
            ((double *)nb_tensor_data(w))[i] = 1;
    }
    /* per sample: -(1 - s) logp[y] - (s / C) sum_c logp[c] */
    nb_tensor *picked = nb_reshape(nb_gather(logp, 1, safe), NB_SHAPE(n));
    nb_tensor *loss = nb_neg(picked);
    if (o->label_smoothing > 0) {
        double s = o->label_smoothing;
        nb_tensor *uniform = nb_mul_scalar(nb_sum(logp, NB_AXES(1), 0), -s / (double)c);
        loss = nb_add(nb_mul_scalar(loss, 1.0 - s), uniform);
    }
    loss = nb_mul(loss, w);
    if (o->reduction == NB_REDUCE_NONE) return loss;
    nb_tensor *total = nb_sum_all(loss);
    if (o->reduction == NB_REDUCE_SUM) return total;
    /* the mean over the labels that count (NaN when none does, as in PyTorch) */
    return nb_mul_scalar(total, 1.0 / (double)counted);
}

nb_tensor *nb_nll_loss(nb_tensor *log_probs, nb_tensor *labels, const nb_ce_opts *opts)
{
    return nll_impl(log_probs, labels, opts, "nb_nll_loss");
}

nb_tensor *nb_cross_entropy(nb_tensor *logits, nb_tensor *labels, const nb_ce_opts *opts)
{
    if (logits && nb_tensor_ndim(logits) != 2) {
        char s[96];
        nb_error_set(NB_ERR_SHAPE, "nb_cross_entropy: logits %s: expected [N, C]", nb_shape_str(logits, s, sizeof s));
        return NULL;
    }
    return nll_impl(nb_log_softmax(logits, 1), labels, opts, "nb_cross_entropy");
}

nb_tensor *nb_l2_penalty(const nb_params *p, double coeff, nb_dtype dtype)
{
    if (!p) {
        nb_error_set(NB_ERR_ARG, "nb_l2_penalty: collection is NULL");
        return NULL;
    }
    nb_tensor *total = nb_zeros(dtype, 0, NULL);
    for (int i = 0; i < nb_params_count(p) && total; i++) {
        nb_tensor *w = nb_params_tensor(p, i);
        if (!nb_params_trainable(p, i) || nb_tensor_ndim(w) < 2) continue;
        if (nb_tensor_dtype(w) != dtype) w = nb_cast(w, dtype);
        total = nb_add(total, nb_sum_all(nb_square(w)));
    }
    return nb_mul_scalar(total, coeff);
}
