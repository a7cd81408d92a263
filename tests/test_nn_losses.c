/* Losses added with issue 13, in float64: gradcheck and gradgradcheck with respect to every float
 * input (logits, targets, class weights, pos_weight: nabla differentiates the weights too, torch
 * does not), inputs chosen away from the kinks of |d| and |d| = beta; identities that tie the
 * options together (N-D cross-entropy = the 2-D one on the permuted scores, one-hot probability
 * targets = labels, pos_weight 1 = plain BCE, Huber = delta * smooth L1, batchmean = sum / N, ...);
 * stability for large logits; and misuse. Values against PyTorch are in nn_f64.txt
 * (test_nn_fixtures). */
#include "nntest.h"

typedef enum which {
    CE, NLL, BCE, L1, SMOOTH_L1, HUBER, KL
} which;

typedef struct loss_ctx {
    which w;
    nb_ce_opts ce;          /* CE, NLL: ce.weight is set from in[2] when n_weight */
    nb_tensor *labels;      /* i64 labels (CE, NLL), or NULL: in[1] is a probability target */
    int class_weight;       /* CE, NLL: in[2] (or in[1] with labels) is the class weight */
    nb_bce_opts bce;        /* BCE: pos_weight in[2], weight in[3] when present */
    int n;
    nb_reduction red;
    double beta;
    int log_target;
} loss_ctx;

/* in[0]: scores/prediction; then the target (when differentiable) and weights, per `which` */
static nb_tensor *f_loss(void *u, nb_tensor *const *in)
{
    const loss_ctx *c = u;
    nb_ce_opts o = c->ce;
    switch (c->w) {
    case CE:
    case NLL: {
        int k = c->labels ? 1 : 2;
        if (c->class_weight) o.weight = in[k];
        nb_tensor *target = c->labels ? c->labels : in[1];
        return c->w == CE ? nb_cross_entropy(in[0], target, &o) : nb_nll_loss(in[0], target, &o);
    }
    case BCE: {
        nb_bce_opts b = c->bce;
        if (c->n > 2) b.pos_weight = in[2];
        if (c->n > 3) b.weight = in[3];
        return nb_bce_with_logits_ex(in[0], in[1], &b);
    }
    case L1: return nb_l1_loss(in[0], in[1], c->red);
    case SMOOTH_L1: return nb_smooth_l1_loss(in[0], in[1], c->beta, c->red);
    case HUBER: return nb_huber_loss(in[0], in[1], c->beta, c->red);
    case KL: return nb_kl_div_loss(in[0], in[1], c->red, c->log_target);
    }
    return NULL;
}

static const char *const RED[] = {"mean", "sum", "none", "batchmean"};

static void both_orders(const char *what, loss_ctx *c, int n, nb_tensor *const *in, int second)
{
    char w[160];
    for (int r = 0; r < 3; r++) {
        c->ce.reduction = c->bce.reduction = c->red = (nb_reduction)r;
        snprintf(w, sizeof w, "%s, %s", what, RED[r]);
        NNT_GRADCHECK(w, f_loss, c, n, in);
        if (second) NNT_GRADGRADCHECK(w, f_loss, c, n, in);
    }
}

/* A caller-owned f64 leaf of probabilities along dim 1 (rows of softmax), requiring grad. */
static nb_tensor *probs_leaf(nb_rng *rng, int ndim, const int64_t *shape)
{
    nb_tensor *z = nb_tensor_uniform(NB_F64, ndim, shape, -1.5, 1.5, rng);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *p = nb_tensor_clone(nb_softmax(z, ndim == 1 ? 0 : 1));
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(z);
    nb_tensor_set_requires_grad(p, 1);
    return p;
}

/* ---- cross-entropy and NLL -------------------------------------------------------------------- */

static void test_ce_gradcheck(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 100);
    /* [N 2, C 4, 3, 2] with labels, some ignored */
    nb_tensor *x = NNT_LEAF(&rng, -2, 2, 2, 4, 3, 2), *w = NNT_LEAF(&rng, 0.3, 2, 4);
    const int64_t yv[12] = {0, 3, -100, 1, 2, 2, 3, -100, 0, 1, 1, 3};
    nb_tensor *y = nb_tensor_from_data(NB_I64, NB_SHAPE(2, 3, 2), yv);
    loss_ctx c = {.w = CE, .labels = y, .class_weight = 1,
                  .ce = {.use_ignore_index = 1, .ignore_index = -100, .label_smoothing = 0.2}};
    nb_tensor *in[3] = {x, w};
    both_orders("cross-entropy [2,4,3,2] + class weights + ignore + smoothing (w.r.t. logits, weights)", &c, 2, in, 1);
    c.ce.label_smoothing = 0;
    both_orders("cross-entropy [2,4,3,2] + class weights + ignore", &c, 2, in, 0);
    c.w = NLL;
    both_orders("nll [2,4,3,2] + class weights + ignore", &c, 2, in, 1);
    c.class_weight = 0;
    c.w = CE;
    both_orders("cross-entropy [2,4,3,2] + ignore", &c, 1, in, 0);

    /* probability targets [N 3, C 4, 2]: w.r.t. logits, targets and weights */
    nb_tensor *xs = NNT_LEAF(&rng, -2, 2, 3, 4, 2), *p = probs_leaf(&rng, NB_SHAPE(3, 4, 2));
    loss_ctx s = {.w = CE, .class_weight = 1, .ce = {.label_smoothing = 0.1}};
    nb_tensor *ins[3] = {xs, p, w};
    both_orders("cross-entropy probabilities [3,4,2] + weights + smoothing", &s, 3, ins, 1);
    s.class_weight = 0;
    both_orders("cross-entropy probabilities [3,4,2]", &s, 2, ins, 0);

    /* one sample [C] with a 0-d label */
    nb_tensor *x1 = NNT_LEAF(&rng, -2, 2, 4);
    nb_tensor *y1 = nb_tensor_from_data(NB_I64, 0, NULL, (const int64_t[]){2});
    loss_ctx one = {.w = CE, .labels = y1, .ce = {.label_smoothing = 0.3}};
    nb_tensor *in1[1] = {x1};
    both_orders("cross-entropy one sample [4]", &one, 1, in1, 1);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(y);
    nb_tensor_free(xs);
    nb_tensor_free(p);
    nb_tensor_free(x1);
    nb_tensor_free(y1);
}

static double item(nb_tensor *t) { return t ? nb_tensor_item(t) : NAN; }

static void test_ce_identities(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 101);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = nb_tensor_uniform(NB_F64, NB_SHAPE(2, 4, 3), -2, 2, &rng);
    nb_tensor *w = nb_tensor_uniform(NB_F64, NB_SHAPE(4), 0.3, 2, &rng);
    const int64_t yv[6] = {0, 3, 2, 1, -1, 3};
    nb_tensor *y = nb_tensor_from_data(NB_I64, NB_SHAPE(2, 3), yv);
    nb_ce_opts o = {.weight = w, .use_ignore_index = 1, .ignore_index = -1, .label_smoothing = 0.25};

    /* [N, C, d] = the 2-D loss of the scores permuted to [N d, C] */
    nb_tensor *x2 = nb_reshape(nb_permute(x, NB_AXES(0, 2, 1)), NB_SHAPE(6, 4));
    nb_tensor *y2 = nb_reshape(y, NB_SHAPE(6));
    for (int r = 0; r < 3; r++) {
        o.reduction = (nb_reduction)r;
        nb_tensor *a = nb_cross_entropy(x, y, &o), *b = nb_cross_entropy(x2, y2, &o);
        double d = r == 2 ? nnt_max_diff(a, nb_reshape(b, NB_SHAPE(2, 3))) : fabs(item(a) - item(b));
        CHECK(d < 1e-15, "cross-entropy [2,4,3] = [6,4] after the permute, %s (%g)", RED[r], d);
        if (r == 2) CHECK(NNT_SHAPE_IS(a, 2, 3), "reduction none has the labels' shape [2,3]");
    }
    /* the weighted mean by hand: sum_i l_i / sum_i w[y_i] over the labels that count */
    o.reduction = NB_REDUCE_NONE;
    nb_tensor *none = nb_cross_entropy(x2, y2, &o);
    double num = 0, den = 0;
    for (int i = 0; i < 6; i++) {
        num += nb_tensor_get(none, i);
        if (yv[i] != -1) den += nb_tensor_get(w, yv[i]);
    }
    o.reduction = NB_REDUCE_MEAN;
    CHECK(fabs(item(nb_cross_entropy(x2, y2, &o)) - num / den) < 1e-15, "weighted mean = sum / sum of w[y]");
    CHECK(nb_tensor_get(none, 4) == 0.0, "an ignored label's loss is 0 (%g)", nb_tensor_get(none, 4));
    /* element i by hand: -(1 - s) w[y] logp[y] - (s / C) sum_c w[c] logp[c] */
    nb_tensor *lp = nb_log_softmax(x2, 1);
    double s = 0.25, want = -(1 - s) * nb_tensor_get(w, 3) * nb_tensor_get(lp, 1 * 4 + 3);
    for (int k = 0; k < 4; k++) want -= s / 4 * nb_tensor_get(w, k) * nb_tensor_get(lp, 1 * 4 + k);
    CHECK(fabs(nb_tensor_get(none, 1) - want) < 1e-15, "element 1 by torch 1.13's formula: %.17g vs %.17g",
          nb_tensor_get(none, 1), want);
    /* unit weights = no weights */
    nb_tensor *ones = nb_ones(NB_F64, NB_SHAPE(4));
    nb_ce_opts ow = {.weight = ones, .use_ignore_index = 1, .ignore_index = -1, .label_smoothing = 0.25}, on = ow;
    on.weight = NULL;
    CHECK(fabs(item(nb_cross_entropy(x, y, &ow)) - item(nb_cross_entropy(x, y, &on))) < 1e-15, "weights of 1 = none");

    /* one-hot probability targets = labels; smoothing applies the same way */
    const int64_t lab[6] = {0, 3, 2, 1, 0, 3};
    nb_tensor *yl = nb_constant(NB_I64, NB_SHAPE(6), lab);
    nb_tensor *oh = nb_one_hot(yl, 4, NB_F64);
    nb_ce_opts so = {.weight = w, .label_smoothing = 0.1, .reduction = NB_REDUCE_SUM}, lo = so;
    CHECK(fabs(item(nb_cross_entropy(x2, oh, &so)) - item(nb_cross_entropy(x2, yl, &lo))) < 1e-14,
          "one-hot probabilities = labels (weighted, smoothed, sum)");
    /* the probability mean divides by the element count, not the weights */
    so.reduction = NB_REDUCE_MEAN;
    CHECK(fabs(item(nb_cross_entropy(x2, oh, &so)) * 6 - item(nb_cross_entropy(x2, yl, &lo))) < 1e-14,
          "probability targets: mean = sum / N");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(w);
    nb_tensor_free(y);
}

/* ---- BCE with pos_weight ---------------------------------------------------------------------- */

static void test_bce(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 102);
    nb_tensor *x = NNT_LEAF(&rng, -3, 3, 3, 4), *t = NNT_LEAF(&rng, 0, 1, 3, 4);
    nb_tensor *pw = NNT_LEAF(&rng, 0.3, 3, 4), *wt = NNT_LEAF(&rng, 0.2, 2, 3, 1);
    nb_tensor *in[4] = {x, t, pw, wt};
    loss_ctx c = {.w = BCE, .n = 4};
    both_orders("bce pos_weight [4] + weight [3,1] (w.r.t. all four)", &c, 4, in, 1);
    c.n = 3;
    both_orders("bce pos_weight [4]", &c, 3, in, 1);

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    /* pos_weight 1 = plain BCE; p t softplus(-x) + (1 - t) softplus(x) by hand */
    nb_bce_opts one = {.reduction = NB_REDUCE_NONE, .pos_weight = nb_ones(NB_F64, NB_SHAPE(4))};
    double d1 = nnt_max_diff(nb_bce_with_logits_ex(x, t, &one), nb_bce_with_logits(x, t, NB_REDUCE_NONE));
    CHECK(d1 < 1e-15, "pos_weight 1 = plain BCE (%g)", d1);
    nb_bce_opts o = {.reduction = NB_REDUCE_NONE, .pos_weight = pw, .weight = wt};
    nb_tensor *l = nb_bce_with_logits_ex(x, t, &o);
    double worst = 0;
    for (int i = 0; l && i < 12; i++) {
        double xv = nb_tensor_get(x, i), tv = nb_tensor_get(t, i), p = nb_tensor_get(pw, i % 4);
        double want = nb_tensor_get(wt, i / 4) * (p * tv * log1p(exp(-xv)) + (1 - tv) * log1p(exp(xv)));
        worst = fmax(worst, fabs(nb_tensor_get(l, i) - want));
    }
    CHECK(l && worst < 1e-14, "bce weight * (p t softplus(-x) + (1 - t) softplus(x)) (%g)", worst);
    /* large logits stay finite, with the right limits */
    nb_tensor *big = nb_constant(NB_F64, NB_SHAPE(4), (const double[]){-1e4, -800, 800, 1e4});
    nb_tensor *tb = nb_constant(NB_F64, NB_SHAPE(4), (const double[]){1, 0.5, 0.5, 0});
    nb_bce_opts ob = {.reduction = NB_REDUCE_NONE, .pos_weight = nb_full(NB_F64, NB_SHAPE(4), 3.0)};
    nb_tensor *lb = nb_bce_with_logits_ex(big, tb, &ob);
    CHECK(lb && nb_tensor_get(lb, 0) == 3e4 && nb_tensor_get(lb, 1) == 0.5 * 800 * 3 && nb_tensor_get(lb, 2) == 0.5 * 800 &&
              nb_tensor_get(lb, 3) == 1e4,
          "bce pos_weight at |x| up to 1e4: p t |x| or (1 - t) x exactly (%g %g %g %g)", lb ? nb_tensor_get(lb, 0) : NAN,
          lb ? nb_tensor_get(lb, 1) : NAN, lb ? nb_tensor_get(lb, 2) : NAN, lb ? nb_tensor_get(lb, 3) : NAN);
    /* options NULL = mean, no weights */
    CHECK(fabs(item(nb_bce_with_logits_ex(x, t, NULL)) - item(nb_bce_with_logits(x, t, NB_REDUCE_MEAN))) < 1e-16,
          "nb_bce_with_logits_ex(NULL options) = nb_bce_with_logits(mean)");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    nb_tensor_free(t);
    nb_tensor_free(pw);
    nb_tensor_free(wt);
}

/* ---- L1, smooth L1, Huber --------------------------------------------------------------------- */

static void test_regression(void)
{
    /* differences d = pred - target away from 0 and from +-beta (beta 0.5 and 1.5) */
    static const double pv[8] = {0.9, -0.7, 0.2, 2.5, -1.9, 0.05, 1.2, -0.3};
    static const double tv[8] = {0.1, 0.4, 0.45, -0.2, -0.6, -0.05, 0.0, 0.7};
    nb_tensor *p = nnt_leaf_data(NB_SHAPE(2, 4), pv, 1), *t = nnt_leaf_data(NB_SHAPE(2, 4), tv, 1);
    nb_tensor *in[2] = {p, t};
    loss_ctx c = {.w = L1};
    both_orders("l1", &c, 2, in, 1);
    for (int k = 0; k < 2; k++) {
        char what[64];
        c.beta = k ? 1.5 : 0.5;
        c.w = SMOOTH_L1;
        snprintf(what, sizeof what, "smooth l1 beta %g", c.beta);
        both_orders(what, &c, 2, in, 1);
        c.w = HUBER;
        snprintf(what, sizeof what, "huber delta %g", c.beta);
        both_orders(what, &c, 2, in, 1);
    }

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double worst_s = 0, worst_h = 0, worst_rel = 0;
    nb_tensor *s = nb_smooth_l1_loss(p, t, 0.5, NB_REDUCE_NONE), *h = nb_huber_loss(p, t, 0.5, NB_REDUCE_NONE);
    for (int i = 0; s && h && i < 8; i++) {
        double d = fabs(pv[i] - tv[i]);
        worst_s = fmax(worst_s, fabs(nb_tensor_get(s, i) - (d < 0.5 ? d * d / 1.0 : d - 0.25)));
        worst_h = fmax(worst_h, fabs(nb_tensor_get(h, i) - (d < 0.5 ? 0.5 * d * d : 0.5 * (d - 0.25))));
        worst_rel = fmax(worst_rel, fabs(nb_tensor_get(h, i) - 0.5 * nb_tensor_get(s, i)));
    }
    CHECK(s && h && worst_s < 1e-15 && worst_h < 1e-15 && worst_rel < 1e-15,
          "smooth l1 / huber by hand (%g, %g), huber = delta * smooth l1 (%g)", worst_s, worst_h, worst_rel);
    CHECK(nnt_max_diff(nb_smooth_l1_loss(p, t, 0, NB_REDUCE_NONE), nb_l1_loss(p, t, NB_REDUCE_NONE)) == 0.0,
          "smooth l1 with beta 0 = l1");
    /* the gradient is continuous at |d| = beta: both sides give the same slope there */
    nb_tensor *zero = nb_zeros(NB_F64, NB_SHAPE(1));
    nb_tensor *lp = nb_tensor_from_data(NB_F64, NB_SHAPE(1), (const double[]){0.5});
    nb_tensor_set_requires_grad(lp, 1);
    nb_tensor *g = NULL;
    nb_tensor *l = nb_smooth_l1_loss(lp, zero, 0.5, NB_REDUCE_SUM);
    CHECK(l && nb_grad(l, NULL, 1, &lp, &g, 0) == NB_OK && nb_tensor_get(g, 0) == 1.0 && nb_tensor_item(l) == 0.25,
          "smooth l1 at d = beta: value beta / 2, slope 1");
    nb_tensor_free(lp);
    /* far outside the quadratic zone the slope is lin sign(d), as torch: also for an infinite d, and
     * in f32 for |d| > 1.7e38, where 2 d overflows (the branch not picked, d^2 / 2, gave 0 * inf =
     * NaN there) */
    for (int f32 = 0; f32 < 2; f32++) {
        nb_dtype dt = f32 ? NB_F32 : NB_F64;
        const double far[4] = {INFINITY, -INFINITY, f32 ? 3e38 : 1e308, f32 ? -3e38 : -1e308};
        nb_tensor *fp = nb_tensor_from_data(NB_F64, NB_SHAPE(4), far), *fz = nb_zeros(dt, NB_SHAPE(4));
        nb_tensor *fpd = nb_tensor_clone(nb_cast(fp, dt));
        nb_tensor_set_requires_grad(fpd, 1);
        for (int k = 0; k < 2; k++) {
            nb_tensor *fl = k ? nb_huber_loss(fpd, fz, 2.0, NB_REDUCE_SUM) : nb_smooth_l1_loss(fpd, fz, 2.0, NB_REDUCE_SUM);
            nb_tensor *fg = NULL;
            int ok = fl && nb_grad(fl, NULL, 1, &fpd, &fg, 0) == NB_OK;
            double want = k ? 2.0 : 1.0;
            for (int i = 0; ok && i < 4; i++) ok = nb_tensor_get(fg, i) == (i % 2 ? -want : want);
            CHECK(ok, "%s %s: slope %g sign(d) for d = +-inf, +-%g (got %g %g %g %g)", k ? "huber" : "smooth l1",
                  nb_dtype_name(dt), want, far[2], fg ? nb_tensor_get(fg, 0) : NAN, fg ? nb_tensor_get(fg, 1) : NAN,
                  fg ? nb_tensor_get(fg, 2) : NAN, fg ? nb_tensor_get(fg, 3) : NAN);
        }
        nb_tensor_free(fp);
        nb_tensor_free(fpd);
    }
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(p);
    nb_tensor_free(t);
}

/* ---- KL divergence ---------------------------------------------------------------------------- */

static void test_kl(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 104);
    nb_tensor *lq = NNT_LEAF(&rng, -3, -0.2, 3, 4);
    nb_tensor *pt = probs_leaf(&rng, NB_SHAPE(3, 4));
    nb_tensor *lt = NNT_LEAF(&rng, -3, -0.2, 3, 4);
    nb_tensor *in[2] = {lq, pt}, *in_log[2] = {lq, lt};
    loss_ctx c = {.w = KL};
    for (int r = 0; r < 4; r++) {
        char what[64];
        c.red = (nb_reduction)r;
        c.log_target = 0;
        snprintf(what, sizeof what, "kl_div, %s", RED[r]);
        NNT_GRADCHECK(what, f_loss, &c, 2, in);
        NNT_GRADGRADCHECK(what, f_loss, &c, 2, in);
        c.log_target = 1;
        snprintf(what, sizeof what, "kl_div log_target, %s", RED[r]);
        NNT_GRADCHECK(what, f_loss, &c, 2, in_log);
        NNT_GRADGRADCHECK(what, f_loss, &c, 2, in_log);
    }

    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    /* batchmean = sum / 3, mean = sum / 12; log_target with t = log p = the same loss */
    double sum = item(nb_kl_div_loss(lq, pt, NB_REDUCE_SUM, 0));
    CHECK(fabs(item(nb_kl_div_loss(lq, pt, NB_REDUCE_BATCHMEAN, 0)) - sum / 3) < 1e-15 &&
              fabs(item(nb_kl_div_loss(lq, pt, NB_REDUCE_MEAN, 0)) - sum / 12) < 1e-15,
          "kl_div batchmean = sum / N, mean = sum / numel");
    double d_log = nnt_max_diff(nb_kl_div_loss(lq, nb_log(pt), NB_REDUCE_NONE, 1), nb_kl_div_loss(lq, pt, NB_REDUCE_NONE, 0));
    CHECK(d_log < 1e-15, "kl_div(x, log p, log_target) = kl_div(x, p) (%g)", d_log);
    /* KL(p || p) = 0 with batchmean; zero targets add 0 and their input gradient is -t = 0 */
    nb_tensor *pp = nb_constant(NB_F64, NB_SHAPE(2, 3), (const double[]){0.5, 0.25, 0.25, 0.125, 0.125, 0.75});
    nb_tensor *self = nb_kl_div_loss(nb_log(pp), pp, NB_REDUCE_BATCHMEAN, 0);
    CHECK(fabs(item(self)) < 1e-16, "kl_div(log p, p) = 0 (%g)", item(self));
    nb_tensor *pz = nb_constant(NB_F64, NB_SHAPE(2, 3), (const double[]){0.5, 0.5, 0, 0, 0.25, 0.75});
    nb_tensor *xz = nb_tensor_from_data(NB_F64, NB_SHAPE(2, 3), (const double[]){-0.5, -0.5, -1, -2, -3, -4});
    nb_tensor_set_requires_grad(xz, 1);
    nb_tensor *lz = nb_kl_div_loss(xz, pz, NB_REDUCE_SUM, 0), *gz = NULL;
    double want = 0.5 * log(0.5) * 2 + 0.25 + 0.25 + 0.25 * log(0.25) + 0.25 * 3 + 0.75 * log(0.75) + 0.75 * 4;
    CHECK(lz && fabs(item(lz) - want) < 1e-15, "kl_div with zero targets: %.17g, expected %.17g", item(lz), want);
    CHECK(nb_grad(lz, NULL, 1, &xz, &gz, 0) == NB_OK && nb_tensor_get(gz, 2) == 0.0 && nb_tensor_get(gz, 3) == 0.0 &&
              nb_tensor_get(gz, 5) == -0.75,
          "kl_div: d/dx = -t (0 at zero targets)");
    /* a 0-d input: batchmean = sum */
    nb_tensor *x0 = nb_full(NB_F64, 0, NULL, -1.0), *t0 = nb_full(NB_F64, 0, NULL, 0.5);
    CHECK(item(nb_kl_div_loss(x0, t0, NB_REDUCE_BATCHMEAN, 0)) == item(nb_kl_div_loss(x0, t0, NB_REDUCE_SUM, 0)),
          "kl_div of a 0-d input: batchmean = sum");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(xz);
    nb_tensor_free(lq);
    nb_tensor_free(pt);
    nb_tensor_free(lt);
}

/* ---- misuse ------------------------------------------------------------------------------------ */

static void test_misuse(void)
{
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x = nb_zeros(NB_F64, NB_SHAPE(4, 3)), *x32 = nb_zeros(NB_F32, NB_SHAPE(4, 3));
    nb_tensor *y = nb_constant(NB_I64, NB_SHAPE(4), (const int64_t[]){0, 1, 2, 1});
    nb_tensor *w4 = nb_ones(NB_F64, NB_SHAPE(4)), *w3_32 = nb_ones(NB_F32, NB_SHAPE(3));
    CHECK_ERROR(nb_cross_entropy(x, y, &(nb_ce_opts){.weight = w4}) == NULL, NB_ERR_SHAPE,
                "class weights [4]: expected [3] (one per class)");
    CHECK_ERROR(nb_cross_entropy(x, y, &(nb_ce_opts){.weight = w3_32}) == NULL, NB_ERR_DTYPE, "class weights are f32, the scores f64");
    CHECK_ERROR(nb_cross_entropy(x, y, &(nb_ce_opts){.reduction = NB_REDUCE_BATCHMEAN}) == NULL, NB_ERR_ARG, "reduction 3 is invalid");
    CHECK_ERROR(nb_nll_loss(x, y, &(nb_ce_opts){.reduction = NB_REDUCTION_COUNT}) == NULL, NB_ERR_ARG, "is invalid");
    /* probability targets: shape, dtype, no ignore index; nll takes labels only */
    nb_tensor *p = nb_full(NB_F64, NB_SHAPE(4, 3), 1.0 / 3), *p_bad = nb_full(NB_F64, NB_SHAPE(4, 2), 0.5);
    CHECK_ERROR(nb_cross_entropy(x, p_bad, NULL) == NULL, NB_ERR_SHAPE, "prediction [4,3] and target [4,2] differ");
    CHECK_ERROR(nb_cross_entropy(x32, p, NULL) == NULL, NB_ERR_DTYPE, "targets are f64: expected i64 labels or f32 probabilities");
    CHECK_ERROR(nb_cross_entropy(x, p, &(nb_ce_opts){.use_ignore_index = 1}) == NULL, NB_ERR_ARG,
                "ignore_index applies to class labels");
    CHECK_ERROR(nb_nll_loss(x, p, NULL) == NULL, NB_ERR_DTYPE, "labels must be i64");
    nb_tensor *f_lab = nb_zeros(NB_F64, NB_SHAPE(4));
    CHECK_ERROR(nb_cross_entropy(x, f_lab, NULL) == NULL, NB_ERR_DTYPE,
                "labels must be i64, got f64 (float targets are probabilities of the logits' shape [4,3])");
    nb_tensor *x4 = nb_zeros(NB_F64, NB_SHAPE(2, 3, 5)), *y_bad = nb_constant(NB_I64, NB_SHAPE(2, 3), (const int64_t[]){0, 0, 0, 0, 0, 0});
    CHECK_ERROR(nb_cross_entropy(x4, y_bad, NULL) == NULL, NB_ERR_SHAPE, "scores [2,3,5] and labels [2,3]");
    nb_tensor *y_hi = nb_constant(NB_I64, NB_SHAPE(2, 5), (const int64_t[]){0, 0, 0, 0, 0, 0, 0, 3, 0, 0});
    CHECK_ERROR(nb_cross_entropy(x4, y_hi, NULL) == NULL, NB_ERR_ARG, "label 3 at position 7 is out of range for 3 classes");
    nb_tensor *s0 = nb_zeros(NB_F64, 0, NULL);
    CHECK_ERROR(nb_cross_entropy(s0, y, NULL) == NULL, NB_ERR_SHAPE, "scores []: expected [N, C, d1, ...] (or [C])");
    nb_tensor *xi = nb_constant(NB_I64, NB_SHAPE(4, 3), (const int64_t[]){0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    CHECK_ERROR(nb_cross_entropy(xi, y, NULL) == NULL, NB_ERR_DTYPE, "scores must be f32 or f64");

    /* bce options */
    nb_tensor *t = nb_full(NB_F64, NB_SHAPE(4, 3), 0.5);
    CHECK_ERROR(nb_bce_with_logits_ex(x, t, &(nb_bce_opts){.pos_weight = w4}) == NULL, NB_ERR_SHAPE,
                "pos_weight [4] does not broadcast to the logits' shape [4,3]");
    nb_tensor *big_w = nb_ones(NB_F64, NB_SHAPE(2, 4, 3));
    CHECK_ERROR(nb_bce_with_logits_ex(x, t, &(nb_bce_opts){.weight = big_w}) == NULL, NB_ERR_SHAPE, "weight [2,4,3]");
    CHECK_ERROR(nb_bce_with_logits_ex(x, t, &(nb_bce_opts){.pos_weight = w3_32}) == NULL, NB_ERR_DTYPE, "pos_weight is f32");
    CHECK_ERROR(nb_bce_with_logits_ex(x, t, &(nb_bce_opts){.reduction = NB_REDUCE_BATCHMEAN}) == NULL, NB_ERR_ARG,
                "batchmean is for nb_kl_div_loss only");
    /* regression losses */
    nb_tensor *x43 = nb_zeros(NB_F64, NB_SHAPE(3, 4));
    CHECK_ERROR(nb_l1_loss(x, x43, NB_REDUCE_MEAN) == NULL, NB_ERR_SHAPE, "nb_l1_loss: prediction [4,3] and target [3,4]");
    CHECK_ERROR(nb_smooth_l1_loss(x, t, -1, NB_REDUCE_MEAN) == NULL, NB_ERR_ARG, "beta -1 must be finite and >= 0");
    CHECK_ERROR(nb_smooth_l1_loss(x, t, NAN, NB_REDUCE_MEAN) == NULL, NB_ERR_ARG, "beta nan");
    CHECK_ERROR(nb_huber_loss(x, t, 0, NB_REDUCE_MEAN) == NULL, NB_ERR_ARG, "delta 0 must be finite and > 0");
    CHECK_ERROR(nb_huber_loss(x, x43, 1, NB_REDUCE_MEAN) == NULL, NB_ERR_SHAPE, "nb_huber_loss");
    CHECK_ERROR(nb_mse_loss(x, t, NB_REDUCE_BATCHMEAN) == NULL, NB_ERR_ARG, "nb_mse_loss: reduction batchmean");
    CHECK_ERROR(nb_l1_loss(x, t, (nb_reduction)9) == NULL, NB_ERR_ARG, "unknown reduction 9");
    CHECK_ERROR(nb_kl_div_loss(x, x43, NB_REDUCE_SUM, 0) == NULL, NB_ERR_SHAPE, "nb_kl_div_loss");
    CHECK_ERROR(nb_kl_div_loss(x, x32, NB_REDUCE_SUM, 0) == NULL, NB_ERR_DTYPE, "");
    /* NULL inputs: no new message over a pending one */
    nb_error_set(NB_ERR_ARG, "first");
    CHECK(nb_l1_loss(NULL, t, NB_REDUCE_MEAN) == NULL && nb_kl_div_loss(x, NULL, NB_REDUCE_SUM, 1) == NULL &&
              nb_bce_with_logits_ex(NULL, t, NULL) == NULL && nb_cross_entropy(NULL, y, NULL) == NULL &&
              !strcmp(nb_error_message(), "first"),
          "NULL inputs keep the first message (%s)", nb_error_message());
    nb_error_clear();
    /* a negative target gives NaN in kl_div, as torch's xlogy */
    nb_tensor *tn = nb_full(NB_F64, NB_SHAPE(4, 3), -0.5);
    CHECK(isnan(item(nb_kl_div_loss(x, tn, NB_REDUCE_SUM, 0))), "kl_div with a negative target is NaN");
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
}

/* ---- float32 runs ------------------------------------------------------------------------------ */

static void test_f32(void)
{
    nb_rng rng;
    nb_rng_seed(&rng, 105);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_tensor *x64 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 4, 2), -2, 2, &rng);
    nb_tensor *w64 = nb_tensor_uniform(NB_F64, NB_SHAPE(4), 0.5, 2, &rng);
    nb_tensor *y = nb_constant(NB_I64, NB_SHAPE(3, 2), (const int64_t[]){0, 3, 2, 1, 1, 0});
    nb_tensor *x32 = nb_cast(x64, NB_F32), *w32 = nb_cast(w64, NB_F32);
    nb_ce_opts o64 = {.weight = w64, .label_smoothing = 0.1}, o32 = {.weight = w32, .label_smoothing = 0.1};
    double a = item(nb_cross_entropy(x64, y, &o64)), b = item(nb_cross_entropy(x32, y, &o32));
    CHECK(fabs(a - b) < 1e-6 * fabs(a), "f32 weighted N-D cross-entropy %.9g vs f64 %.9g", b, a);
    nb_tensor *t64 = nb_tensor_uniform(NB_F64, NB_SHAPE(3, 4, 2), -1, 1, &rng), *t32 = nb_cast(t64, NB_F32);
    a = item(nb_huber_loss(x64, t64, 0.7, NB_REDUCE_MEAN));
    b = item(nb_huber_loss(x32, t32, 0.7, NB_REDUCE_MEAN));
    CHECK(fabs(a - b) < 1e-6 * fabs(a), "f32 huber %.9g vs f64 %.9g", b, a);
    nb_bce_opts bo64 = {.pos_weight = w64}, bo32 = {.pos_weight = w32};
    nb_tensor *xb64 = nb_reshape(nb_permute(x64, NB_AXES(0, 2, 1)), NB_SHAPE(6, 4)), *xb32 = nb_cast(xb64, NB_F32);
    nb_tensor *tb64 = nb_affine(nb_reshape(nb_permute(t64, NB_AXES(0, 2, 1)), NB_SHAPE(6, 4)), 0.5, 0.5), *tb32 = nb_cast(tb64, NB_F32);
    a = item(nb_bce_with_logits_ex(xb64, tb64, &bo64));
    b = item(nb_bce_with_logits_ex(xb32, tb32, &bo32));
    CHECK(fabs(a - b) < 1e-6 * fabs(a), "f32 bce pos_weight %.9g vs f64 %.9g", b, a);
    CHECK_NO_ERROR();
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x64);
    nb_tensor_free(w64);
    nb_tensor_free(t64);
}

int main(void)
{
    test_ce_gradcheck();
    test_ce_identities();
    test_bce();
    test_regression();
    test_kl();
    test_misuse();
    test_f32();
    return nbt_report("nn_losses");
}
