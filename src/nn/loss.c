/* Losses and regularisation, composed from nabla ops in their numerically stable forms (nabla.h is
 * the only include). */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

static nb_tensor *reduce(nb_tensor *l, nb_reduction r, const char *who)
{
    switch (r) {
    case NB_REDUCE_MEAN: return nb_mean_all(l);
    case NB_REDUCE_SUM: return nb_sum_all(l);
    case NB_REDUCE_NONE: return l;
    case NB_REDUCE_BATCHMEAN:
        nb_error_set(NB_ERR_ARG, "%s: reduction batchmean is for nb_kl_div_loss only", who);
        return NULL;
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

nb_tensor *nb_l1_loss(nb_tensor *pred, nb_tensor *target, nb_reduction reduction)
{
    if (!same_shape(pred, target, "nb_l1_loss")) return NULL;
    return reduce(nb_abs(nb_sub(pred, target)), reduction, "nb_l1_loss");
}

/* d = pred - target: quad d^2 / 2 where |d| < beta, else lin (|d| - beta / 2); smooth L1 has
 * quad = 1 / beta, lin = 1, Huber quad = 1, lin = delta (= beta). Both branches are evaluated; where
 * picks one, so the gradient is d quad inside and lin sign(d) outside, continuous at |d| = beta. The
 * quadratic branch squares d clamped to [-beta, beta] (the same where it is picked): the branch not
 * picked gets a zero gradient, and 0 times the square's derivative of an infinite d (or, in f32, of
 * one past 1.7e38) would make it NaN. */
static nb_tensor *smooth_abs(nb_tensor *pred, nb_tensor *target, double beta, double quad, double lin,
                             nb_reduction reduction, const char *who)
{
    if (!same_shape(pred, target, who)) return NULL;
    nb_tensor *d = nb_sub(pred, target), *ad = nb_abs(d);
    nb_tensor *inside = nb_lt(ad, nb_full(nb_tensor_dtype(pred), 0, NULL, beta));
    nb_tensor *dq = nb_clamp(d, -beta, beta);
    nb_tensor *l = nb_where(inside, nb_mul_scalar(nb_square(dq), 0.5 * quad), nb_affine(ad, lin, -0.5 * beta * lin));
    return reduce(l, reduction, who);
}

nb_tensor *nb_smooth_l1_loss(nb_tensor *pred, nb_tensor *target, double beta, nb_reduction reduction)
{
    if (!(beta >= 0) || !isfinite(beta)) {
        nb_error_set(NB_ERR_ARG, "nb_smooth_l1_loss: beta %g must be finite and >= 0", beta);
        return NULL;
    }
    if (beta == 0) { /* the quadratic part vanishes: L1, as torch */
        if (!same_shape(pred, target, "nb_smooth_l1_loss")) return NULL;
        return reduce(nb_abs(nb_sub(pred, target)), reduction, "nb_smooth_l1_loss");
    }
    return smooth_abs(pred, target, beta, 1.0 / beta, 1.0, reduction, "nb_smooth_l1_loss");
}

nb_tensor *nb_huber_loss(nb_tensor *pred, nb_tensor *target, double delta, nb_reduction reduction)
{
    if (!(delta > 0) || !isfinite(delta)) {
        nb_error_set(NB_ERR_ARG, "nb_huber_loss: delta %g must be finite and > 0", delta);
        return NULL;
    }
    return smooth_abs(pred, target, delta, 1.0, delta, reduction, "nb_huber_loss");
}

nb_tensor *nb_kl_div_loss(nb_tensor *input, nb_tensor *target, nb_reduction reduction, int log_target)
{
    const char *who = "nb_kl_div_loss";
    if (!same_shape(input, target, who)) return NULL;
    nb_tensor *l;
    if (log_target) {
        l = nb_mul(nb_exp(target), nb_sub(target, input)); /* e^t (t - x) */
    } else {
        /* t log t - t x, with 0 log 0 = 0 (torch's xlogy): log reads 1 where t = 0, so that neither the
         * value nor the gradient sees log 0 (the gradient there is -x; torch's is NaN); a negative
         * target gives NaN, as in torch */
        nb_tensor *zero = nb_eq(target, nb_zeros(nb_tensor_dtype(target), 0, NULL));
        nb_tensor *safe = nb_where(zero, nb_ones(nb_tensor_dtype(target), 0, NULL), target);
        l = nb_sub(nb_mul(target, nb_log(safe)), nb_mul(target, input));
    }
    if (reduction != NB_REDUCE_BATCHMEAN) return reduce(l, reduction, who);
    /* the sum over the batch size, dim 0 (a 0-d input: the sum) */
    nb_tensor *total = nb_sum_all(l);
    int64_t n = nb_tensor_ndim(input) ? nb_tensor_dim(input, 0) : 1;
    return nb_div_scalar(total, (double)n);
}

/* softplus(x) - x t = max(x, 0) - x t + log(1 + e^-|x|): finite for any x, with gradient
 * sigmoid(x) - t everywhere (also at x = 0, where max and |x| have kinks) */
nb_tensor *nb_bce_with_logits(nb_tensor *logits, nb_tensor *target, nb_reduction reduction)
{
    if (!same_shape(logits, target, "nb_bce_with_logits")) return NULL;
    return reduce(nb_sub(nb_softplus(logits), nb_mul(logits, target)), reduction, "nb_bce_with_logits");
}

/* Whether w (NULL: fine) broadcasts to t's shape without enlarging it, in t's dtype. */
static int broadcasts_into(nb_tensor *w, nb_tensor *t, const char *what, const char *who)
{
    if (!w) return 1;
    char sw[96], st[96];
    if (nb_tensor_dtype(w) != nb_tensor_dtype(t)) {
        nb_error_set(NB_ERR_DTYPE, "%s: %s is %s, the logits %s", who, what, nb_dtype_name(nb_tensor_dtype(w)),
                     nb_dtype_name(nb_tensor_dtype(t)));
        return 0;
    }
    int nw = nb_tensor_ndim(w), nt = nb_tensor_ndim(t), ok = nw <= nt;
    for (int i = 1; ok && i <= nw; i++) {
        int64_t a = nb_tensor_dim(w, -i), b = nb_tensor_dim(t, -i);
        ok = a == b || a == 1;
    }
    if (!ok)
        nb_error_set(NB_ERR_SHAPE, "%s: %s %s does not broadcast to the logits' shape %s", who, what,
                     nb_shape_str(w, sw, sizeof sw), nb_shape_str(t, st, sizeof st));
    return ok;
}

nb_tensor *nb_bce_with_logits_ex(nb_tensor *logits, nb_tensor *target, const nb_bce_opts *opts)
{
    const char *who = "nb_bce_with_logits_ex";
    static const nb_bce_opts defaults = {0};
    const nb_bce_opts *o = opts ? opts : &defaults;
    if (!same_shape(logits, target, who) || !broadcasts_into(o->pos_weight, logits, "pos_weight", who) ||
        !broadcasts_into(o->weight, logits, "weight", who))
        return NULL;
    nb_tensor *l;
    if (o->pos_weight) {
        /* p t softplus(-x) + (1 - t) softplus(x) = (1 - t) x + (1 + (p - 1) t) softplus(-x) */
        nb_tensor *lw = nb_add_scalar(nb_mul(nb_sub_scalar(o->pos_weight, 1.0), target), 1.0);
        l = nb_add(nb_mul(nb_rsub_scalar(1.0, target), logits), nb_mul(lw, nb_softplus(nb_neg(logits))));
    } else {
        l = nb_sub(nb_softplus(logits), nb_mul(logits, target));
    }
    if (o->weight) l = nb_mul(l, o->weight);
    return reduce(l, o->reduction, who);
}

/* The class dim moved last and the rest flattened: [N, C, d1, ...] -> [N d1 ..., C]; [N, C] and
 * [C] (one sample) -> [N, C] and [1, C]. */
static nb_tensor *classes_last(nb_tensor *x)
{
    int nd = nb_tensor_ndim(x);
    int64_t c = nb_tensor_dim(x, nd == 1 ? 0 : 1);
    if (nd > 2) {
        int perm[NB_MAX_DIMS];
        perm[0] = 0;
        for (int i = 2; i < nd; i++) perm[i - 1] = i;
        perm[nd - 1] = 1;
        x = nb_permute(x, nd, perm);
    }
    return nb_reshape(x, NB_SHAPE(nb_tensor_numel(x) / c, c));
}

/* The shape of the scores without the class dim (dim 1, or dim 0 of a single sample [C]). */
static int shape_without_classes(nb_tensor *x, int64_t *shape)
{
    int nd = nb_tensor_ndim(x), k = 0;
    for (int i = 0; i < nd; i++)
        if (i != (nd == 1 ? 0 : 1)) shape[k++] = nb_tensor_dim(x, i);
    return k;
}

static int check_ce_opts(const nb_ce_opts *o, nb_tensor *scores, const char *who)
{
    if (!(o->label_smoothing >= 0 && o->label_smoothing <= 1) || (unsigned)o->reduction >= NB_REDUCTION_COUNT ||
        o->reduction == NB_REDUCE_BATCHMEAN) {
        nb_error_set(NB_ERR_ARG, "%s: label smoothing %g (expected [0, 1]) or reduction %d is invalid", who,
                     o->label_smoothing, (int)o->reduction);
        return 0;
    }
    if (o->weight) {
        char sw[96];
        int64_t c = nb_tensor_dim(scores, nb_tensor_ndim(scores) == 1 ? 0 : 1);
        if (nb_tensor_dtype(o->weight) != nb_tensor_dtype(scores)) {
            nb_error_set(NB_ERR_DTYPE, "%s: class weights are %s, the scores %s", who,
                         nb_dtype_name(nb_tensor_dtype(o->weight)), nb_dtype_name(nb_tensor_dtype(scores)));
            return 0;
        }
        if (nb_tensor_ndim(o->weight) != 1 || nb_tensor_dim(o->weight, 0) != c) {
            nb_error_set(NB_ERR_SHAPE, "%s: class weights %s: expected [%lld] (one per class)", who,
                         nb_shape_str(o->weight, sw, sizeof sw), (long long)c);
            return 0;
        }
    }
    return 1;
}

/* The scores' checks shared by both target kinds: [C] or [N, C, ...] with C >= 1, float. */
static int check_scores(nb_tensor *scores, const char *who)
{
    char s[96];
    int nd = nb_tensor_ndim(scores);
    if (nd < 1 || nb_tensor_dim(scores, nd == 1 ? 0 : 1) < 1) {
        nb_error_set(NB_ERR_SHAPE, "%s: scores %s: expected [N, C, d1, ...] (or [C]) with C >= 1", who,
                     nb_shape_str(scores, s, sizeof s));
        return 0;
    }
    if (nb_tensor_dtype(scores) == NB_I64) {
        nb_error_set(NB_ERR_DTYPE, "%s: scores must be f32 or f64, got i64", who);
        return 0;
    }
    return 1;
}

/* Cross-entropy against class labels from log-probabilities logp [N, C, d1, ...] and i64 labels
 * [N, d1, ...]: per element -(1 - s) w[y] logp[y] - (s / C) sum_c w[c] logp[c] (w = 1 without class
 * weights), 0 where ignored; the mean divides by the sum of w[y] over the labels that count. */
static nb_tensor *nll_impl(nb_tensor *logp, nb_tensor *labels, const nb_ce_opts *opts, const char *who)
{
    static const nb_ce_opts defaults = {0};
    const nb_ce_opts *o = opts ? opts : &defaults;
    if (!logp || !labels) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: an input is NULL", who);
        return NULL;
    }
    if (!check_scores(logp, who)) return NULL;
    char sl[96], sy[96];
    if (nb_tensor_dtype(labels) != NB_I64) {
        nb_error_set(NB_ERR_DTYPE, "%s: labels must be i64, got %s", who, nb_dtype_name(nb_tensor_dtype(labels)));
        return NULL;
    }
    int64_t rest[NB_MAX_DIMS];
    int nrest = shape_without_classes(logp, rest);
    if (nb_tensor_ndim(labels) != nrest || memcmp(nb_tensor_shape(labels), rest, (size_t)nrest * sizeof *rest)) {
        nb_error_set(NB_ERR_SHAPE, "%s: scores %s and labels %s: expected [N, C, d1, ...] and [N, d1, ...]", who,
                     nb_shape_str(logp, sl, sizeof sl), nb_shape_str(labels, sy, sizeof sy));
        return NULL;
    }
    if (!check_ce_opts(o, logp, who)) return NULL;
    nb_dtype dt = nb_tensor_dtype(logp);
    nb_tensor *lp = classes_last(logp); /* [n, c] */
    if (!lp) return NULL;
    int64_t n = nb_tensor_dim(lp, 0), c = nb_tensor_dim(lp, 1);
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
    nb_tensor *picked = nb_reshape(nb_gather(lp, 1, safe), NB_SHAPE(n));
    nb_tensor *loss;
    nb_tensor *wy = NULL; /* with class weights: w[y] where counted, 0 where ignored, [n] */
    double s = o->label_smoothing;
    if (!o->weight) {
        /* per sample: -(1 - s) logp[y] - (s / C) sum_c logp[c] */
        loss = nb_neg(picked);
        if (s > 0) {
            nb_tensor *uniform = nb_mul_scalar(nb_sum(lp, NB_AXES(1), 0), -s / (double)c);
            loss = nb_add(nb_mul_scalar(loss, 1.0 - s), uniform);
        }
        loss = nb_mul(loss, w);
    } else {
        wy = nb_mul(nb_index_select(o->weight, 0, nb_reshape(safe, NB_SHAPE(n))), w);
        loss = nb_mul(nb_neg(picked), wy);
        if (s > 0) {
            /* torch's weighted smoothing term: -(s / C) sum_c w[c] logp[c], where counted */
            nb_tensor *uniform = nb_mul_scalar(nb_sum(nb_mul(lp, o->weight), NB_AXES(1), 0), -s / (double)c);
            loss = nb_add(nb_mul_scalar(loss, 1.0 - s), nb_mul(uniform, w));
        }
    }
    if (o->reduction == NB_REDUCE_NONE) return nb_reshape(loss, nrest, rest);
    nb_tensor *total = nb_sum_all(loss);
    if (o->reduction == NB_REDUCE_SUM) return total;
    /* the mean over the labels that count, weighted (NaN when none does, as in PyTorch) */
    if (wy) return nb_div(total, nb_sum_all(wy));
    return nb_mul_scalar(total, 1.0 / (double)counted);
}

/* Cross-entropy against class probabilities p of the scores' shape: per element
 * -sum_c w[c] p'[c] logp[c], p' = (1 - s) p + s / C; the mean divides by the element count. */
static nb_tensor *soft_ce(nb_tensor *logp, nb_tensor *probs, const nb_ce_opts *o, const char *who)
{
    if (o->use_ignore_index) {
        nb_error_set(NB_ERR_ARG, "%s: ignore_index applies to class labels, not to probability targets", who);
        return NULL;
    }
    if (!check_ce_opts(o, logp, who)) return NULL;
    nb_tensor *lp = classes_last(logp), *p = classes_last(probs);
    int64_t c = lp ? nb_tensor_dim(lp, 1) : 1;
    double s = o->label_smoothing;
    if (s > 0) p = nb_affine(p, 1.0 - s, s / (double)c);
    if (o->weight) p = nb_mul(p, o->weight);
    nb_tensor *loss = nb_neg(nb_sum(nb_mul(lp, p), NB_AXES(1), 0)); /* [n] */
    int64_t rest[NB_MAX_DIMS];
    int nrest = shape_without_classes(logp, rest);
    if (o->reduction == NB_REDUCE_NONE) return nb_reshape(loss, nrest, rest);
    return o->reduction == NB_REDUCE_SUM ? nb_sum_all(loss) : nb_mean_all(loss);
}

nb_tensor *nb_nll_loss(nb_tensor *log_probs, nb_tensor *labels, const nb_ce_opts *opts)
{
    return nll_impl(log_probs, labels, opts, "nb_nll_loss");
}

nb_tensor *nb_cross_entropy(nb_tensor *logits, nb_tensor *labels, const nb_ce_opts *opts)
{
    const char *who = "nb_cross_entropy";
    if (!logits || !labels) {
        if (nb_error_code() == NB_OK) nb_error_set(NB_ERR_ARG, "%s: an input is NULL", who);
        return NULL;
    }
    if (!check_scores(logits, who)) return NULL;
    nb_dtype dl = nb_tensor_dtype(labels);
    if (dl != NB_I64) {
        /* probabilities: same shape and dtype as the logits */
        static const nb_ce_opts defaults = {0};
        if (dl != nb_tensor_dtype(logits)) {
            nb_error_set(NB_ERR_DTYPE, "%s: targets are %s: expected i64 labels or %s probabilities", who,
                         nb_dtype_name(dl), nb_dtype_name(nb_tensor_dtype(logits)));
            return NULL;
        }
        int64_t rest[NB_MAX_DIMS];
        int nrest = shape_without_classes(logits, rest);
        if (nb_tensor_ndim(labels) == nrest && !memcmp(nb_tensor_shape(labels), rest, (size_t)nrest * sizeof *rest)) {
            char sl[96];
            nb_error_set(NB_ERR_DTYPE, "%s: labels must be i64, got %s (float targets are probabilities of the "
                         "logits' shape %s)", who, nb_dtype_name(dl), nb_shape_str(logits, sl, sizeof sl));
            return NULL;
        }
        if (!same_shape(logits, labels, who)) return NULL;
        return soft_ce(nb_log_softmax(logits, nb_tensor_ndim(logits) == 1 ? 0 : 1), labels, opts ? opts : &defaults, who);
    }
    return nll_impl(nb_log_softmax(logits, nb_tensor_ndim(logits) == 1 ? 0 : 1), labels, opts, who);
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
