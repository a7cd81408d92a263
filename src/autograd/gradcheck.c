/* Gradient checks. The analytic Jacobian comes from one backward per output element (through
 * nb_grad on a retained graph), the numeric one from central differences; a second backward pass
 * must reproduce the first bit for bit. gradgradcheck runs the same check on x -> d<f(x), v>/dx,
 * whose analytic Jacobian needs the backward of the backward (NB_CREATE_GRAPH). */
#include "internal.h"

#include <math.h>
#include <string.h>

/* Builds the outputs of the checked function on the current tape; returns their count or -1. */
typedef int (*multi_fn)(void *ctx, nb_tensor *const *inputs, nb_tensor **outs, int max_outs);

#define MAX_OUTS NB_GRADCHECK_MAX_INPUTS

typedef struct single_ctx {
    nb_func f;
    void *user;
} single_ctx;

static int single_eval(void *vctx, nb_tensor *const *inputs, nb_tensor **outs, int max_outs)
{
    (void)max_outs;
    single_ctx *c = vctx;
    outs[0] = c->f(c->user, inputs);
    return outs[0] ? 1 : -1;
}

typedef struct gg_ctx {
    nb_func f;
    void *user;
    int n_in;
    uint64_t seed;
} gg_ctx;

/* outputs: d<f(x), v>/dx_i for every input that requires grad, v ~ U(-1, 1) with a fixed seed */
static int gg_eval(void *vctx, nb_tensor *const *inputs, nb_tensor **outs, int max_outs)
{
    gg_ctx *c = vctx;
    nb_tensor *y = c->f(c->user, inputs);
    if (!y) return -1;
    nb_tensor *v = nb_zeros_like(y);
    if (!v) return -1;
    nb_rng rng;
    nb_rng_seed(&rng, c->seed);
    for (int64_t i = 0; i < v->numel; i++) nb__set(v, i, 2.0 * nb_rng_uniform(&rng) - 1.0);
    /* the gradients with respect to the inputs that require grad (nb_grad refuses the others) */
    nb_tensor *wrt[NB_GRADCHECK_MAX_INPUTS];
    int n = 0;
    for (int i = 0; i < c->n_in && n < max_outs; i++)
        if (nb__needs_grad(inputs[i])) wrt[n++] = inputs[i];
    if (nb_grad(y, v, n, wrt, outs, NB_CREATE_GRAPH) != NB_OK) return -1;
    return n;
}

static int64_t total_numel(nb_tensor **outs, int n)
{
    int64_t m = 0;
    for (int i = 0; i < n; i++) m += outs[i]->numel;
    return m;
}

/* Evaluate on tape t (reset first) and flatten the outputs into buf[m]. */
static nb_status eval_flat(const char *who, multi_fn fn, void *ctx, nb_tensor *const *inputs, nb_tape *t,
                           double *buf, int64_t m)
{
    nb_tape_reset(t);
    nb_tensor *outs[MAX_OUTS];
    int n = fn(ctx, inputs, outs, MAX_OUTS);
    if (n < 0) return nb__fail_status(NB_ERR_STATE, "%s: the function failed during finite differences", who);
    if (total_numel(outs, n) != m)
        return nb__fail_status(NB_ERR_STATE, "%s: the function's output size changed between calls", who);
    int64_t off = 0;
    for (int o = 0; o < n; o++)
        for (int64_t j = 0; j < outs[o]->numel; j++) buf[off++] = nb__get(outs[o], j);
    return NB_OK;
}

/* jac[i] is [m, numel(inputs[i])] row-major, row j = d out_j / d input; NULL for the inputs not
 * checked (those that do not require grad, whose gradient nb_grad refuses). */
static nb_status analytic(nb_tensor **outs, int n_out, int n_in, nb_tensor *const *inputs, double **jac)
{
    nb_tensor *wrt[NB_GRADCHECK_MAX_INPUTS];
    int slot[NB_GRADCHECK_MAX_INPUTS], n_wrt = 0;
    for (int i = 0; i < n_in; i++)
        if (jac[i]) slot[n_wrt] = i, wrt[n_wrt++] = inputs[i];
    int64_t row = 0;
    for (int o = 0; o < n_out; o++) {
        for (int64_t j = 0; j < outs[o]->numel; j++, row++) {
            nb_tensor *seed = nb_zeros_like(outs[o]);
            if (!seed) return nb_error_code();
            nb__set(seed, j, 1.0);
            nb_tensor *grads[NB_GRADCHECK_MAX_INPUTS];
            nb_status st = nb_grad(outs[o], seed, n_wrt, wrt, grads, NB_RETAIN_GRAPH);
            if (st != NB_OK) return st;
            for (int w = 0; w < n_wrt; w++) {
                int i = slot[w];
                int64_t ni = inputs[i]->numel;
                for (int64_t k = 0; k < ni; k++) jac[i][row * ni + k] = nb__get(grads[w], k);
            }
        }
    }
    return NB_OK;
}

static nb_status check(const char *who, multi_fn fn, void *ctx, int n_in, nb_tensor *const *inputs,
                       const nb_gradcheck_opts *opts, nb_gradcheck_report *rep)
{
    nb_gradcheck_opts o = {1e-6, 1e-5, 1e-3, 0};
    if (opts) {
        if (opts->eps > 0) o.eps = opts->eps;
        if (opts->atol >= 0) o.atol = opts->atol;
        if (opts->rtol >= 0) o.rtol = opts->rtol;
        o.seed = opts->seed;
    }
    memset(rep, 0, sizeof *rep);
    rep->n_inputs = n_in;
    if (!fn || n_in < 1 || n_in > NB_GRADCHECK_MAX_INPUTS || !inputs) {
        snprintf(rep->message, sizeof rep->message, "%s: need a function and 1..%d inputs", who,
                 NB_GRADCHECK_MAX_INPUTS);
        return nb__fail_status(NB_ERR_ARG, "%s", rep->message);
    }
    int n_checked = 0;
    for (int i = 0; i < n_in; i++) {
        nb_tensor *x = inputs[i];
        if (!x || !(x->flags & NB_TF_LEAF)) {
            snprintf(rep->message, sizeof rep->message, "%s: input %d is %s", who, i,
                     x ? "not a leaf" : "NULL");
            return nb__fail_status(NB_ERR_ARG, "%s", rep->message);
        }
        if (!nb__needs_grad(x)) continue;
        if (x->dtype != NB_F64) {
            snprintf(rep->message, sizeof rep->message, "%s: input %d is %s %s; finite differences need "
                     "f64", who, i, nb_dtype_name(x->dtype), NB_SHP(x));
            return nb__fail_status(NB_ERR_DTYPE, "%s", rep->message);
        }
        rep->input[i].checked = 1;
        n_checked++;
    }
    if (!n_checked) {
        snprintf(rep->message, sizeof rep->message, "%s: no input requires grad", who);
        return nb__fail_status(NB_ERR_ARG, "%s", rep->message);
    }

    nb_status st = NB_OK;
    nb_tape *ta = nb_tape_new(), *tn = nb_tape_new();
    double *ja[NB_GRADCHECK_MAX_INPUTS] = {0}, *jb[NB_GRADCHECK_MAX_INPUTS] = {0};
    size_t jbytes[NB_GRADCHECK_MAX_INPUTS] = {0};
    double *fp = NULL, *fm = NULL;
    int64_t m = 0;
    if (!ta || !tn) {
        st = nb_error_code();
        goto out;
    }

    /* analytic Jacobian, twice */
    nb_tape_begin(ta);
    nb_tensor *outs[MAX_OUTS];
    int n_out = fn(ctx, inputs, outs, MAX_OUTS);
    if (n_out < 0) {
        nb_tape_end(ta);
        snprintf(rep->message, sizeof rep->message, "%s: the function failed: %s", who, nb_error_message());
        st = nb_error_code() ? nb_error_code() : NB_ERR_STATE;
        goto out;
    }
    m = total_numel(outs, n_out);
    for (int i = 0; i < n_in; i++) {
        if (!rep->input[i].checked) continue;
        jbytes[i] = (size_t)(m * inputs[i]->numel) * sizeof(double);
        ja[i] = nb__calloc(jbytes[i]);
        jb[i] = nb__calloc(jbytes[i]);
        if (!ja[i] || !jb[i]) {
            nb_tape_end(ta);
            st = nb__fail_status(NB_ERR_NOMEM, "%s: out of memory for the Jacobians", who);
            goto out;
        }
    }
    st = analytic(outs, n_out, n_in, inputs, ja);
    if (st == NB_OK) st = analytic(outs, n_out, n_in, inputs, jb);
    nb_tape_end(ta);
    if (st != NB_OK) {
        snprintf(rep->message, sizeof rep->message, "%s: backward failed: %s", who, nb_error_message());
        goto out;
    }
    rep->deterministic = 1;
    for (int i = 0; i < n_in; i++)
        if (ja[i] && memcmp(ja[i], jb[i], jbytes[i]) != 0) rep->deterministic = 0;

    /* numeric Jacobian, column by column, into jb */
    fp = nb__malloc((size_t)m * sizeof(double) + 1);
    fm = nb__malloc((size_t)m * sizeof(double) + 1);
    if (!fp || !fm) {
        st = nb__fail_status(NB_ERR_NOMEM, "%s: out of memory", who);
        goto out;
    }
    nb_tape_begin(tn);
    for (int i = 0; i < n_in && st == NB_OK; i++) {
        if (!ja[i]) continue;
        double *x = inputs[i]->data;
        int64_t ni = inputs[i]->numel;
        for (int64_t k = 0; k < ni && st == NB_OK; k++) {
            double orig = x[k];
            x[k] = orig + o.eps;
            st = eval_flat(who, fn, ctx, inputs, tn, fp, m);
            x[k] = orig - o.eps;
            if (st == NB_OK) st = eval_flat(who, fn, ctx, inputs, tn, fm, m);
            x[k] = orig;
            for (int64_t j = 0; j < m && st == NB_OK; j++) jb[i][j * ni + k] = (fp[j] - fm[j]) / (2 * o.eps);
        }
    }
    nb_tape_reset(tn);
    nb_tape_end(tn);
    if (st != NB_OK) {
        snprintf(rep->message, sizeof rep->message, "%s", nb_error_message());
        goto out;
    }

    /* compare */
    rep->completed = 1;
    rep->ok = rep->deterministic;
    for (int i = 0; i < n_in; i++) {
        if (!ja[i]) continue;
        nb_gradcheck_input_report *r = &rep->input[i];
        int64_t ni = inputs[i]->numel;
        double worst = -1;
        r->ok = 1;
        for (int64_t j = 0; j < m; j++) {
            for (int64_t k = 0; k < ni; k++) {
                double a = ja[i][j * ni + k], nu = jb[i][j * ni + k];
                double diff = fabs(a - nu), big = fmax(fabs(a), fabs(nu));
                double rel = big > 0 ? diff / big : 0.0;
                double tol = o.atol + o.rtol * fabs(nu);
                if (!(diff <= tol)) r->ok = 0;
                if (diff > r->max_abs_err || diff != diff) r->max_abs_err = diff;
                if (rel > r->max_rel_err || rel != rel) r->max_rel_err = rel;
                double score = diff != diff ? INFINITY : diff / tol;
                if (score > worst) {
                    worst = score;
                    r->worst_index = k;
                    r->worst_output = j;
                    r->analytic = a;
                    r->numeric = nu;
                }
            }
        }
        if (!r->ok) rep->ok = 0;
    }
    if (rep->ok) {
        snprintf(rep->message, sizeof rep->message, "%s: passed (%lld output elements)", who, (long long)m);
    } else if (!rep->deterministic) {
        snprintf(rep->message, sizeof rep->message, "%s: two backward passes gave different Jacobians", who);
    } else {
        for (int i = 0; i < n_in; i++) {
            nb_gradcheck_input_report *r = &rep->input[i];
            if (!r->checked || r->ok) continue;
            snprintf(rep->message, sizeof rep->message,
                     "%s: input %d %s: d out[%lld] / d in[%lld]: analytic %.10g, numeric %.10g "
                     "(max abs err %.3g, max rel err %.3g)", who, i, NB_SHP(inputs[i]),
                     (long long)r->worst_output, (long long)r->worst_index, r->analytic, r->numeric,
                     r->max_abs_err, r->max_rel_err);
            break;
        }
    }
    st = rep->ok ? NB_OK : NB_ERR_NUMERIC;

out:
    for (int i = 0; i < n_in; i++) {
        nb__free(ja[i], jbytes[i]);
        nb__free(jb[i], jbytes[i]);
    }
    nb__free(fp, (size_t)m * sizeof(double) + 1);
    nb__free(fm, (size_t)m * sizeof(double) + 1);
    if (ta) nb_tape_reset(ta);
    nb_tape_free(ta);
    nb_tape_free(tn);
    return st;
}

nb_status nb_gradcheck(nb_func f, void *user, int n_inputs, nb_tensor *const *inputs,
                       const nb_gradcheck_opts *opts, nb_gradcheck_report *report)
{
    nb_gradcheck_report local;
    single_ctx c = {f, user};
    return check("nb_gradcheck", f ? single_eval : NULL, &c, n_inputs, inputs, opts, report ? report : &local);
}

nb_status nb_gradgradcheck(nb_func f, void *user, int n_inputs, nb_tensor *const *inputs,
                           const nb_gradcheck_opts *opts, nb_gradcheck_report *report)
{
    nb_gradcheck_report local;
    gg_ctx c = {f, user, n_inputs, opts ? opts->seed : 0};
    return check("nb_gradgradcheck", f ? gg_eval : NULL, &c, n_inputs, inputs, opts, report ? report : &local);
}

void nb_gradcheck_report_print(const nb_gradcheck_report *r, FILE *f)
{
    if (!r) return;
    if (!f) f = stdout;
    fprintf(f, "%s\n", r->message);
    for (int i = 0; r->completed && i < r->n_inputs && i < NB_GRADCHECK_MAX_INPUTS; i++) {
        const nb_gradcheck_input_report *in = &r->input[i];
        if (!in->checked) {
            fprintf(f, "  input %d: constant (does not require grad)\n", i);
            continue;
        }
        fprintf(f, "  input %d: %s  max abs err %.3g  max rel err %.3g  worst at in[%lld] out[%lld]\n", i,
                in->ok ? "ok  " : "FAIL", in->max_abs_err, in->max_rel_err, (long long)in->worst_index,
                (long long)in->worst_output);
    }
}
