/* Optimizers (SGD, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax, Adadelta, L-BFGS) with
 * parameter groups, learning-rate schedules, gradient clipping and early stopping. Written against
 * nabla.h only; the update kernels come from optim_kernels.h, one source for float and double. */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NB_T float
#define NB_SFX f32
#define NB_M(fn) fn##f
#include "optim_kernels.h"
#undef NB_T
#undef NB_SFX
#undef NB_M

#define NB_T double
#define NB_SFX f64
#define NB_M(fn) fn
#include "optim_kernels.h"
#undef NB_T
#undef NB_SFX
#undef NB_M

/* Data pointer of an optional tensor. */
static void *dp(nb_tensor *t) { return t ? nb_tensor_data(t) : NULL; }

/* Call kernel k for t's dtype with the data pointers cast to that type. */
#define DISPATCH(t, k, ...)                                                                            \
    do {                                                                                               \
        if (nb_tensor_dtype(t) == NB_F32)                                                              \
            k##_f32(__VA_ARGS__);                                                                      \
        else                                                                                           \
            k##_f64(__VA_ARGS__);                                                                      \
    } while (0)

/* ---- optimizers ------------------------------------------------------------------------------- */

enum { S_MAX = 4 }; /* state tensors per parameter at most */

typedef struct slot {
    nb_tensor *param;
    nb_tensor *state[S_MAX];
    nb_tensor *work; /* L-BFGS: the parameter's slices of its work vectors, [LB_WORK or LB_WORK_LS, numel] */
    int group;
    int64_t steps; /* updates applied to this parameter */
} slot;

typedef struct group {
    nb_optim_opts o;
    int frozen;
} group;

struct nb_optim {
    nb_optim_kind kind;
    group *g;
    int ng;
    slot *s;
    int n;
    int64_t steps;
    /* flat list of state tensors for checkpoints */
    int n_state;
    nb_tensor **state;
    char **state_name;
    /* L-BFGS: ro [history], scalars [LB_NSC] (also in the state list), the two-loop's alphas */
    nb_tensor *lb_ro, *lb_sc;
    double *lb_al;
    /* what the arrays were allocated for (their frees name the size): parameters, groups, history */
    size_t cap, cap_g, cap_al;
};

static const char *const kind_names[] = {"sgd",   "adam",  "adamw",  "rmsprop",  "adagrad",
                                         "nadam", "radam", "adamax", "adadelta", "lbfgs"};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == NB_OPTIM_KIND_COUNT, "a name per optimizer");

const char *nb_optim_kind_name(nb_optim_kind kind)
{
    return (unsigned)kind < NB_OPTIM_KIND_COUNT ? kind_names[kind] : "?";
}

nb_optim_opts nb_optim_defaults(nb_optim_kind kind)
{
    nb_optim_opts o = {0};
    switch (kind) {
    case NB_SGD: o.lr = 1e-2; break;
    case NB_ADAM: o = (nb_optim_opts){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8}; break;
    case NB_ADAMW: o = (nb_optim_opts){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2}; break;
    case NB_RMSPROP: o = (nb_optim_opts){.lr = 1e-2, .alpha = 0.99, .eps = 1e-8}; break;
    case NB_ADAGRAD: o = (nb_optim_opts){.lr = 1e-2, .eps = 1e-10}; break;
    case NB_NADAM:
        o = (nb_optim_opts){.lr = 2e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .momentum_decay = 4e-3};
        break;
    case NB_RADAM: o = (nb_optim_opts){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8}; break;
    case NB_ADAMAX: o = (nb_optim_opts){.lr = 2e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8}; break;
    case NB_ADADELTA: o = (nb_optim_opts){.lr = 1.0, .rho = 0.9, .eps = 1e-6}; break;
    case NB_LBFGS:
        o = (nb_optim_opts){.lr = 1.0, .max_iter = 20, .max_eval = 25, .tolerance_grad = 1e-7,
                            .tolerance_change = 1e-9, .history_size = 100, .line_search = NB_LINE_SEARCH_NONE};
        break;
    default: break;
    }
    return o;
}

static int has_betas(nb_optim_kind k)
{
    return k == NB_ADAM || k == NB_ADAMW || k == NB_NADAM || k == NB_RADAM || k == NB_ADAMAX;
}

/* NULL if o suits kind, else what is wrong. */
static const char *bad_opts(nb_optim_kind kind, const nb_optim_opts *o)
{
    if (!(o->lr >= 0)) return "lr must be >= 0";
    if (!(o->weight_decay >= 0)) return "weight_decay must be >= 0";
    if (kind == NB_SGD && !(o->momentum >= 0)) return "momentum must be >= 0";
    if (kind == NB_SGD && o->nesterov && (o->momentum <= 0 || o->dampening != 0))
        return "nesterov needs momentum > 0 and dampening 0";
    if (has_betas(kind) && !(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1))
        return "betas must be in [0, 1)";
    if (kind != NB_SGD && kind != NB_LBFGS && !(o->eps >= 0)) return "eps must be >= 0";
    if (kind == NB_RMSPROP && !(o->alpha >= 0 && o->momentum >= 0)) return "alpha and momentum must be >= 0";
    if (kind == NB_ADAGRAD && !(o->lr_decay >= 0 && o->initial_accumulator >= 0))
        return "lr_decay and initial_accumulator must be >= 0";
    if (kind == NB_NADAM && !(o->momentum_decay >= 0)) return "momentum_decay must be >= 0";
    if (kind == NB_ADADELTA && !(o->rho >= 0 && o->rho <= 1)) return "rho must be in [0, 1]";
    if (kind == NB_LBFGS) {
        if (o->max_iter < 1 || o->max_eval < 1 || o->history_size < 1) return "max_iter, max_eval and history_size must be >= 1";
        if (!(o->tolerance_grad >= 0 && o->tolerance_change >= 0)) return "tolerances must be >= 0";
        if (o->line_search != NB_LINE_SEARCH_NONE && o->line_search != NB_LINE_SEARCH_STRONG_WOLFE)
            return "line_search must be NB_LINE_SEARCH_NONE or NB_LINE_SEARCH_STRONG_WOLFE";
        if (o->weight_decay != 0) return "weight_decay is not an L-BFGS option";
    }
    return NULL;
}

/* L-BFGS work vectors: rows of each slot's work tensor (the line search needs the last six) */
enum { W_G, W_Y, W_S, LB_WORK, W_X0 = LB_WORK, W_G0, W_GNEW, W_GPREV, W_B0, W_B1, LB_WORK_LS };
/* L-BFGS per-parameter state tensors */
enum { L_D, L_PREV, L_DIRS, L_STPS };
/* L-BFGS scalars */
enum { SC_T, SC_HDIAG, SC_PREV_LOSS, SC_N_ITER, SC_FUNC_EVALS, SC_HIST_N, SC_HIST_START, LB_NSC };

static nb_status oom(const char *who)
{
    nb_error_set(NB_ERR_NOMEM, "%s: out of memory", who);
    return NB_ERR_NOMEM;
}

/* A state tensor for slot s (k < 0: a global one, not in s), named "<pname>.<what>", of the parameter's
 * shape (or of ndim / shape when given) and dtype (or f64 with force_f64), filled with init. */
static nb_tensor *add_state(nb_optim *opt, slot *s, int k, const char *pname, const char *what, double init, int ndim,
                            const int64_t *shape, int force_f64)
{
    nb_tensor *p = s->param;
    nb_dtype dt = force_f64 ? NB_F64 : nb_tensor_dtype(p);
    nb_tensor *t = shape ? nb_tensor_full(dt, ndim, shape, init) : nb_tensor_full(dt, nb_tensor_ndim(p), nb_tensor_shape(p), init);
    if (!t) return NULL;
    size_t len = strlen(pname) + strlen(what) + 2;
    char *name = nb_alloc(len);
    if (!name) {
        nb_tensor_free(t);
        oom("nb_optim_new");
        return NULL;
    }
    snprintf(name, len, "%s.%s", pname, what);
    nb_tensor_claim(t, opt); /* a new leaf: cannot fail */
    if (k >= 0) s->state[k] = t;
    opt->state[opt->n_state] = t;
    opt->state_name[opt->n_state++] = name;
    return t;
}

/* The state of slot s under its group's options; 0 on failure. */
static int make_state(nb_optim *opt, slot *s, const char *pn, int first)
{
    const nb_optim_opts *o = &opt->g[s->group].o;
    switch (opt->kind) {
    case NB_SGD: return o->momentum == 0 || add_state(opt, s, 0, pn, "momentum_buffer", 0, 0, NULL, 0);
    case NB_ADAM:
    case NB_ADAMW:
        return add_state(opt, s, 0, pn, "exp_avg", 0, 0, NULL, 0) && add_state(opt, s, 1, pn, "exp_avg_sq", 0, 0, NULL, 0) &&
               (!o->amsgrad || add_state(opt, s, 2, pn, "max_exp_avg_sq", 0, 0, NULL, 0));
    case NB_RMSPROP:
        return add_state(opt, s, 0, pn, "square_avg", 0, 0, NULL, 0) &&
               (!o->centered || add_state(opt, s, 1, pn, "grad_avg", 0, 0, NULL, 0)) &&
               (o->momentum == 0 || add_state(opt, s, 2, pn, "momentum_buffer", 0, 0, NULL, 0));
    case NB_ADAGRAD: return add_state(opt, s, 0, pn, "sum", o->initial_accumulator, 0, NULL, 0) != NULL;
    case NB_NADAM: /* mu_product: a float64 scalar per parameter, as torch's 0-d tensor */
        return add_state(opt, s, 0, pn, "exp_avg", 0, 0, NULL, 0) && add_state(opt, s, 1, pn, "exp_avg_sq", 0, 0, NULL, 0) &&
               add_state(opt, s, 2, pn, "mu_product", 1.0, 0, (const int64_t[1]){0}, 1);
    case NB_RADAM:
        return add_state(opt, s, 0, pn, "exp_avg", 0, 0, NULL, 0) && add_state(opt, s, 1, pn, "exp_avg_sq", 0, 0, NULL, 0);
    case NB_ADAMAX:
        return add_state(opt, s, 0, pn, "exp_avg", 0, 0, NULL, 0) && add_state(opt, s, 1, pn, "exp_inf", 0, 0, NULL, 0);
    case NB_ADADELTA:
        return add_state(opt, s, 0, pn, "square_avg", 0, 0, NULL, 0) && add_state(opt, s, 1, pn, "acc_delta", 0, 0, NULL, 0);
    case NB_LBFGS: {
        int64_t numel = nb_tensor_numel(s->param), h = o->history_size;
        int64_t rows = o->line_search == NB_LINE_SEARCH_STRONG_WOLFE ? LB_WORK_LS : LB_WORK;
        if (first && (!(opt->lb_ro = add_state(opt, s, -1, pn, "ro", 0, 1, &h, 1)) ||
                      !(opt->lb_sc = add_state(opt, s, -1, pn, "scalars", 0, 1, (const int64_t[]){LB_NSC}, 1))))
            return 0;
        s->work = nb_tensor_zeros(nb_tensor_dtype(s->param), 2, (const int64_t[]){rows, numel});
        return s->work && add_state(opt, s, L_D, pn, "d", 0, 1, &numel, 0) &&
               add_state(opt, s, L_PREV, pn, "prev_flat_grad", 0, 1, &numel, 0) &&
               add_state(opt, s, L_DIRS, pn, "old_dirs", 0, 2, (const int64_t[]){h, numel}, 0) &&
               add_state(opt, s, L_STPS, pn, "old_stps", 0, 2, (const int64_t[]){h, numel}, 0);
    }
    default: return 1;
    }
}

/* Whether parameter named name (tensor p) is selected by spec. */
static int selects(const nb_optim_group *spec, const char *name, const nb_tensor *p)
{
    if (spec->prefix && name && !strncmp(name, spec->prefix, strlen(spec->prefix))) return 1;
    for (int j = 0; j < spec->n_params; j++)
        if (spec->params[j] == p) return 1;
    return 0;
}

nb_optim *nb_optim_new_groups(nb_optim_kind kind, nb_params *params, const nb_optim_opts *opts, int n_groups,
                              const nb_optim_group *specs)
{
    const char *who = "nb_optim_new";
    if ((unsigned)kind >= NB_OPTIM_KIND_COUNT || !params || n_groups < 0 || (n_groups && !specs)) {
        nb_error_set(NB_ERR_ARG, "%s: unknown kind %d, no parameters or bad groups", who, (int)kind);
        return NULL;
    }
    if (kind == NB_LBFGS && n_groups) {
        nb_error_set(NB_ERR_ARG, "%s: lbfgs has one parameter group (as torch.optim.LBFGS)", who);
        return NULL;
    }
    nb_optim_opts o = opts ? *opts : nb_optim_defaults(kind);
    for (int k = 0; k <= n_groups; k++) {
        const char *bad = bad_opts(kind, k ? &specs[k - 1].opts : &o);
        if (bad) {
            if (k) nb_error_set(NB_ERR_ARG, "%s: %s: group %d: %s", who, kind_names[kind], k, bad);
            else nb_error_set(NB_ERR_ARG, "%s: %s: %s", who, kind_names[kind], bad);
            return NULL;
        }
        if (k && specs[k - 1].n_params && !specs[k - 1].params) {
            nb_error_set(NB_ERR_ARG, "%s: group %d: n_params %d but no params", who, k, specs[k - 1].n_params);
            return NULL;
        }
    }
    nb_optim *opt = nb_calloc(1, sizeof *opt);
    int np = nb_params_count(params);
    if (opt) {
        opt->cap = (size_t)np;
        opt->cap_g = (size_t)n_groups + 1;
        opt->cap_al = kind == NB_LBFGS ? (size_t)o.history_size : 0;
        opt->g = nb_calloc(opt->cap_g, sizeof *opt->g);
        opt->s = nb_calloc((size_t)np + 1, sizeof *opt->s);
        opt->state = nb_calloc((size_t)np * S_MAX + 3, sizeof *opt->state);
        opt->state_name = nb_calloc((size_t)np * S_MAX + 3, sizeof *opt->state_name);
        if (kind == NB_LBFGS) opt->lb_al = nb_calloc(opt->cap_al, sizeof *opt->lb_al);
    }
    if (!opt || !opt->g || !opt->s || !opt->state || !opt->state_name || (kind == NB_LBFGS && !opt->lb_al)) {
        nb_optim_free(opt);
        oom(who);
        return NULL;
    }
    opt->kind = kind;
    opt->ng = n_groups + 1;
    opt->g[0].o = o;
    for (int k = 1; k <= n_groups; k++) opt->g[k] = (group){specs[k - 1].opts, specs[k - 1].frozen != 0};
    /* which group each parameter belongs to; every listed tensor must be a parameter */
    int *used = nb_calloc((size_t)n_groups + 1, sizeof *used);
    if (!used) {
        nb_optim_free(opt);
        oom(who);
        return NULL;
    }
    const char *bad = NULL;
    int bad_group = 0;
    for (int i = 0; i < np && !bad; i++) {
        if (!nb_params_trainable(params, i)) continue;
        nb_tensor *p = nb_params_tensor(params, i);
        nb_dtype dt = nb_tensor_dtype(p);
        if (dt != NB_F32 && dt != NB_F64) continue;
        slot *s = &opt->s[opt->n++];
        s->param = p;
        for (int k = 1; k <= n_groups; k++) {
            if (!selects(&specs[k - 1], nb_params_name(params, i), p)) continue;
            if (s->group) {
                bad = "a parameter is in two groups";
                bad_group = k;
                break;
            }
            s->group = k;
            used[k]++;
        }
    }
    for (int k = 1; k <= n_groups && !bad; k++) {
        for (int j = 0; j < specs[k - 1].n_params && !bad; j++) {
            int found = 0;
            for (int i = 0; i < opt->n && !found; i++) found = opt->s[i].param == specs[k - 1].params[j];
            if (!found) bad = "a listed tensor is not a trainable f32/f64 parameter of the collection", bad_group = k;
        }
        if (!bad && !used[k]) bad = "it selects no parameter", bad_group = k;
    }
    nb_dealloc(used, ((size_t)n_groups + 1) * sizeof *used);
    if (bad) {
        nb_error_set(NB_ERR_ARG, "%s: group %d (prefix \"%s\"): %s", who, bad_group,
                     specs[bad_group - 1].prefix ? specs[bad_group - 1].prefix : "", bad);
        nb_optim_free(opt);
        return NULL;
    }
    for (int i = 0, pi = 0; i < np; i++) {
        if (pi < opt->n && nb_params_tensor(params, i) == opt->s[pi].param) {
            if (!make_state(opt, &opt->s[pi], nb_params_name(params, i), pi == 0)) {
                nb_optim_free(opt);
                return NULL;
            }
            pi++;
        }
    }
    return opt;
}

nb_optim *nb_optim_new(nb_optim_kind kind, nb_params *params, const nb_optim_opts *opts)
{
    return nb_optim_new_groups(kind, params, opts, 0, NULL);
}

void nb_optim_free(nb_optim *opt)
{
    if (!opt) return;
    for (int i = 0; i < opt->n_state; i++) {
        nb_tensor_unclaim(opt->state[i], opt);
        nb_tensor_free(opt->state[i]);
        nb_dealloc(opt->state_name[i], strlen(opt->state_name[i]) + 1);
    }
    for (int i = 0; opt->s && i < opt->n; i++) nb_tensor_free(opt->s[i].work);
    nb_dealloc(opt->state, (opt->cap * S_MAX + 3) * sizeof *opt->state);
    nb_dealloc(opt->state_name, (opt->cap * S_MAX + 3) * sizeof *opt->state_name);
    nb_dealloc(opt->s, (opt->cap + 1) * sizeof *opt->s);
    nb_dealloc(opt->g, opt->cap_g * sizeof *opt->g);
    nb_dealloc(opt->lb_al, opt->cap_al * sizeof *opt->lb_al);
    nb_dealloc(opt, sizeof *opt);
}

/* Whether the step updates slot s: its group is not frozen, it requires grad (not frozen by
 * nb_tensor_set_requires_grad) and a backward wrote its gradient since zero_grad. */
static int live(const nb_optim *opt, const slot *s)
{
    return !opt->g[s->group].frozen && nb_tensor_requires_grad(s->param);
}

nb_status nb_optim_step(nb_optim *opt)
{
    if (!opt) {
        nb_error_set(NB_ERR_ARG, "nb_optim_step: optimizer is NULL");
        return NB_ERR_ARG;
    }
    if (opt->kind == NB_LBFGS) {
        nb_error_set(NB_ERR_ARG, "nb_optim_step: lbfgs re-evaluates the loss: use nb_optim_step_closure");
        return NB_ERR_ARG;
    }
    for (int i = 0; i < opt->n; i++) {
        slot *s = &opt->s[i];
        nb_tensor *p = s->param, *g = nb_tensor_grad(p);
        if (!g || !live(opt, s) || !nb_tensor_has_grad(p)) continue;
        const nb_optim_opts *o = &opt->g[s->group].o;
        int64_t n = nb_tensor_numel(p);
        void *pd = nb_tensor_data(p);
        const void *gd = nb_tensor_cdata(g);
        void *s0 = dp(s->state[0]), *s1 = dp(s->state[1]), *s2 = dp(s->state[2]);
        s->steps++;
        double k = (double)s->steps;
        switch (opt->kind) {
        case NB_SGD:
            DISPATCH(p, sgd, n, pd, gd, s0, s->steps == 1, o->lr, o->weight_decay, o->momentum, o->dampening,
                     o->nesterov);
            break;
        case NB_ADAM:
        case NB_ADAMW: {
            double bc1 = 1.0 - pow(o->beta1, k), bc2 = 1.0 - pow(o->beta2, k);
            DISPATCH(p, adam, n, pd, gd, s0, s1, s2, o->lr, o->weight_decay, opt->kind == NB_ADAMW, o->beta1, o->beta2,
                     o->eps, bc1, sqrt(bc2));
            break;
        }
        case NB_RMSPROP:
            DISPATCH(p, rmsprop, n, pd, gd, s0, s1, s2, o->lr, o->weight_decay, o->alpha, o->eps, o->momentum);
            break;
        case NB_ADAGRAD: {
            double clr = o->lr / (1.0 + (k - 1.0) * o->lr_decay);
            DISPATCH(p, adagrad, n, pd, gd, s0, clr, o->weight_decay, o->eps);
            break;
        }
        case NB_NADAM: {
            /* momentum schedule mu_t = b1 (1 - 0.96^(t psi) / 2); mu_product = prod mu_1..mu_t */
            double *mp = s2, mu = o->beta1 * (1.0 - 0.5 * pow(0.96, k * o->momentum_decay));
            double mu_next = o->beta1 * (1.0 - 0.5 * pow(0.96, (k + 1.0) * o->momentum_decay));
            *mp *= mu;
            double cg = o->lr * (1.0 - mu) / (1.0 - *mp), cm = o->lr * mu_next / (1.0 - *mp * mu_next);
            DISPATCH(p, nadam, n, pd, gd, s0, s1, o->weight_decay, o->beta1, o->beta2, o->eps, 1.0 - pow(o->beta2, k),
                     cg, cm);
            break;
        }
        case NB_RADAM: {
            /* rho_t, the length of the approximated simple moving average; rectify when rho_t > 5 */
            double bc1 = 1.0 - pow(o->beta1, k), bc2 = 1.0 - pow(o->beta2, k);
            double rho_inf = 2.0 / (1.0 - o->beta2) - 1.0, rho_t = rho_inf - 2.0 * k * pow(o->beta2, k) / bc2, rect = 0;
            if (rho_t > 5.0)
                rect = sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
            DISPATCH(p, radam, n, pd, gd, s0, s1, o->lr, o->weight_decay, o->beta1, o->beta2, o->eps, bc1, sqrt(bc2),
                     rect);
            break;
        }
        case NB_ADAMAX:
            DISPATCH(p, adamax, n, pd, gd, s0, s1, o->lr / (1.0 - pow(o->beta1, k)), o->weight_decay, o->beta1,
                     o->beta2, o->eps);
            break;
        case NB_ADADELTA: DISPATCH(p, adadelta, n, pd, gd, s0, s1, o->lr, o->weight_decay, o->rho, o->eps); break;
        default: break;
        }
        nb_tensor_mark_dirty(p);
    }
    opt->steps++;
    return NB_OK;
}

/* ---- L-BFGS ----------------------------------------------------------------------------------- */

/* The flat vectors of torch.optim.LBFGS (every parameter's values end to end) are kept as one slice
 * per parameter: a vector is named by an id, and each operation below runs over all the slices. */
enum { V_D = 100, V_PREV, V_DIRS = 1000, V_STPS = 1000000 }; /* ids < 100: work rows; V_DIRS + k: row k */

static void *vec(const nb_optim *opt, const slot *s, int id)
{
    int64_t n = nb_tensor_numel(s->param);
    size_t es = nb_tensor_dtype(s->param) == NB_F32 ? sizeof(float) : sizeof(double);
    (void)opt;
    if (id < V_D) return (char *)nb_tensor_data(s->work) + (size_t)id * (size_t)n * es;
    if (id == V_D) return nb_tensor_data(s->state[L_D]);
    if (id == V_PREV) return nb_tensor_data(s->state[L_PREV]);
    if (id < V_STPS) return (char *)nb_tensor_data(s->state[L_DIRS]) + (size_t)(id - V_DIRS) * (size_t)n * es;
    return (char *)nb_tensor_data(s->state[L_STPS]) + (size_t)(id - V_STPS) * (size_t)n * es;
}

#define EACH_SLICE for (int i_ = 0; i_ < opt->n; i_++)
#define SL (&opt->s[i_])
#define NL nb_tensor_numel(SL->param)

static double lb_dot(nb_optim *opt, int a, int b)
{
    double r = 0, part = 0;
    EACH_SLICE {
        DISPATCH(SL->param, part = vdot, NL, vec(opt, SL, a), vec(opt, SL, b));
        r += part;
    }
    return r;
}

static double lb_absmax(nb_optim *opt, int a)
{
    double r = 0, part = 0;
    EACH_SLICE {
        DISPATCH(SL->param, part = vabsmax, NL, vec(opt, SL, a));
        if (part > r || part != part) r = part;
    }
    return r;
}

static double lb_abssum(nb_optim *opt, int a)
{
    double r = 0, part = 0;
    EACH_SLICE {
        DISPATCH(SL->param, part = vabssum, NL, vec(opt, SL, a));
        r += part;
    }
    return r;
}

static void lb_axpy(nb_optim *opt, int y, double a, int x) { EACH_SLICE DISPATCH(SL->param, vaxpy, NL, vec(opt, SL, y), a, vec(opt, SL, x)); }
static void lb_scale(nb_optim *opt, int y, double a, int x) { EACH_SLICE DISPATCH(SL->param, vscale, NL, vec(opt, SL, y), a, vec(opt, SL, x)); }
static void lb_sub(nb_optim *opt, int z, int x, int y) { EACH_SLICE DISPATCH(SL->param, vsub, NL, vec(opt, SL, z), vec(opt, SL, x), vec(opt, SL, y)); }

static void lb_copy(nb_optim *opt, int y, int x)
{
    if (y == x) return;
    EACH_SLICE memcpy(vec(opt, SL, y), vec(opt, SL, x), (size_t)NL * (nb_tensor_dtype(SL->param) == NB_F32 ? 4 : 8));
}

/* dst = the flat gradient: zeros where a parameter has none (or is frozen) */
static void lb_gather(nb_optim *opt, int dst)
{
    EACH_SLICE {
        nb_tensor *g = nb_tensor_grad(SL->param);
        size_t bytes = (size_t)NL * (nb_tensor_dtype(SL->param) == NB_F32 ? 4 : 8);
        if (g && live(opt, SL) && nb_tensor_has_grad(SL->param))
            memcpy(vec(opt, SL, dst), nb_tensor_cdata(g), bytes);
        else
            memset(vec(opt, SL, dst), 0, bytes);
    }
}

/* p += t d for the live parameters */
static void lb_add_params(nb_optim *opt, double t, int d)
{
    EACH_SLICE {
        if (!live(opt, SL)) continue;
        DISPATCH(SL->param, vaxpy, NL, nb_tensor_data(SL->param), t, vec(opt, SL, d));
        nb_tensor_mark_dirty(SL->param);
    }
}

/* parameters to or from work row r */
static void lb_save_params(nb_optim *opt, int r)
{
    EACH_SLICE memcpy(vec(opt, SL, r), nb_tensor_cdata(SL->param), (size_t)NL * (nb_tensor_dtype(SL->param) == NB_F32 ? 4 : 8));
}

static void lb_restore_params(nb_optim *opt, int r)
{
    EACH_SLICE {
        if (!live(opt, SL)) continue;
        memcpy(nb_tensor_data(SL->param), vec(opt, SL, r), (size_t)NL * (nb_tensor_dtype(SL->param) == NB_F32 ? 4 : 8));
        nb_tensor_mark_dirty(SL->param);
    }
}

#undef EACH_SLICE
#undef SL
#undef NL

typedef struct lb_call {
    nb_optim_closure fn;
    void *user;
    int evals; /* this step's */
} lb_call;

/* f(x) and its gradient into row g */
static nb_status lb_eval(nb_optim *opt, lb_call *c, double *f, int g)
{
    nb_status st = c->fn(c->user, f);
    c->evals++;
    if (st != NB_OK) {
        if (!nb_error_code()) nb_error_set(st, "nb_optim_step_closure: the closure failed (status %d)", (int)st);
        return st;
    }
    lb_gather(opt, g);
    return NB_OK;
}

/* f and gradient (row W_GNEW) at x + t d, x saved in W_X0 and put back */
static nb_status lb_directional(nb_optim *opt, lb_call *c, double t, double *f)
{
    lb_add_params(opt, t, V_D);
    nb_status st = lb_eval(opt, c, f, W_GNEW);
    lb_restore_params(opt, W_X0);
    return st;
}

static double py_max(double a, double b) { return b > a ? b : a; } /* Python's max and min: the first on ties */
static double py_min(double a, double b) { return b < a ? b : a; }

/* The minimiser of the cubic through (x1, f1) and (x2, f2) with slopes g1 and g2, clamped to
 * [lo, hi] (bounds: by default the interval between x1 and x2); its midpoint when the cubic has no
 * minimum. */
static double cubic_min(double x1, double f1, double g1, double x2, double f2, double g2, const double *bounds)
{
    double lo = bounds ? bounds[0] : (x1 <= x2 ? x1 : x2), hi = bounds ? bounds[1] : (x1 <= x2 ? x2 : x1);
    double d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2);
    double d2_sq = d1 * d1 - g1 * g2;
    if (!(d2_sq >= 0)) return (lo + hi) / 2.0;
    double d2 = sqrt(d2_sq), m;
    if (x1 <= x2)
        m = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2));
    else
        m = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2));
    return py_min(py_max(m, lo), hi);
}

/* A step length t along d satisfying the strong Wolfe conditions (sufficient decrease c1, curvature
 * c2), found as torch.optim.LBFGS's line search does: bracket a point (extrapolating with cubic
 * interpolation), then zoom into the bracket. On entry the parameters are x (saved in W_X0), the
 * gradient at x is in row W_G, *t is the first trial and f, gtd the loss and slope at x; on return
 * *t, *f_out and row W_G hold the chosen point's step, loss and gradient (the parameters are x). */
static nb_status strong_wolfe(nb_optim *opt, lb_call *c, double *t_io, double f, double gtd, double *f_out)
{
    const double c1 = 1e-4, c2 = 0.9, tol = opt->g[0].o.tolerance_change;
    const int max_ls = 25;
    double t = *t_io, d_norm = lb_absmax(opt, V_D), f_new;
    lb_copy(opt, W_G0, W_G);
    nb_status st = lb_directional(opt, c, t, &f_new);
    if (st) return st;
    double gtd_new = lb_dot(opt, W_GNEW, V_D);
    double t_prev = 0, f_prev = f, gtd_prev = gtd;
    int g_prev = W_G0; /* the row holding g_prev */
    double br[2] = {0, 0}, bf[2] = {0, 0}, bgtd[2] = {0, 0};
    int done = 0, ls_iter = 0, bracketed = 0;
    while (ls_iter < max_ls) {
        if (f_new > f + c1 * t * gtd || (ls_iter > 1 && f_new >= f_prev) || (!(fabs(gtd_new) <= -c2 * gtd) && gtd_new >= 0)) {
            /* [t_prev, t] brackets a point that satisfies the conditions */
            br[0] = t_prev, br[1] = t, bf[0] = f_prev, bf[1] = f_new, bgtd[0] = gtd_prev, bgtd[1] = gtd_new;
            lb_copy(opt, W_B0, g_prev);
            lb_copy(opt, W_B1, W_GNEW);
            bracketed = 1;
            break;
        }
        if (fabs(gtd_new) <= -c2 * gtd) { /* t satisfies them */
            br[0] = t, bf[0] = f_new;
            lb_copy(opt, W_B0, W_GNEW);
            done = bracketed = 1;
            break;
        }
        /* extrapolate */
        double bounds[2] = {t + 0.01 * (t - t_prev), t * 10};
        double t_next = cubic_min(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds);
        t_prev = t;
        t = t_next;
        f_prev = f_new;
        lb_copy(opt, W_GPREV, W_GNEW);
        g_prev = W_GPREV;
        gtd_prev = gtd_new;
        if ((st = lb_directional(opt, c, t, &f_new))) return st;
        gtd_new = lb_dot(opt, W_GNEW, V_D);
        ls_iter++;
    }
    if (ls_iter == max_ls && !bracketed) {
        br[0] = 0, br[1] = t, bf[0] = f, bf[1] = f_new;
        lb_copy(opt, W_B0, W_G0);
        lb_copy(opt, W_B1, W_GNEW);
    }
    /* zoom: shrink the bracket around the point; low is the end with the lower loss */
    int insuf_progress = 0, low = bf[0] <= bf[done ? 0 : 1] ? 0 : 1, high = 1 - low;
    const int brow[2] = {W_B0, W_B1};
    while (!done && ls_iter < max_ls) {
        if (fabs(br[1] - br[0]) * d_norm < tol) break;
        t = cubic_min(br[0], bf[0], bgtd[0], br[1], bf[1], bgtd[1], NULL);
        /* too close to an end (or outside): move it to 0.1 of the bracket's length from the end */
        double bmax = py_max(br[0], br[1]), bmin = py_min(br[0], br[1]), eps = 0.1 * (bmax - bmin);
        if (py_min(bmax - t, t - bmin) < eps) {
            if (insuf_progress || t >= bmax || t <= bmin) {
                t = fabs(t - bmax) < fabs(t - bmin) ? bmax - eps : bmin + eps;
                insuf_progress = 0;
            } else {
                insuf_progress = 1;
            }
        } else {
            insuf_progress = 0;
        }
        if ((st = lb_directional(opt, c, t, &f_new))) return st;
        gtd_new = lb_dot(opt, W_GNEW, V_D);
        ls_iter++;
        if (f_new > f + c1 * t * gtd || f_new >= bf[low]) {
            /* no sufficient decrease, or not below the low end: t is the new high end */
            br[high] = t, bf[high] = f_new, bgtd[high] = gtd_new;
            lb_copy(opt, brow[high], W_GNEW);
            low = bf[0] <= bf[1] ? 0 : 1;
            high = 1 - low;
        } else {
            if (fabs(gtd_new) <= -c2 * gtd) {
                done = 1;
            } else if (gtd_new * (br[high] - br[low]) >= 0) { /* the old low end becomes the high end */
                br[high] = br[low], bf[high] = bf[low], bgtd[high] = bgtd[low];
                lb_copy(opt, brow[high], brow[low]);
            }
            br[low] = t, bf[low] = f_new, bgtd[low] = gtd_new;
            lb_copy(opt, brow[low], W_GNEW);
        }
    }
    *t_io = br[low];
    *f_out = bf[low];
    lb_copy(opt, W_G, brow[low]);
    return NB_OK;
}

/* One step of torch.optim.LBFGS: up to max_iter iterations, each a two-loop recursion over the
 * stored curvature pairs and a fixed step (no line search: the loss evaluated again after it) or a
 * strong-Wolfe line search. */
static nb_status lbfgs_step(nb_optim *opt, lb_call *c, double *orig_loss)
{
    const nb_optim_opts *o = &opt->g[0].o;
    double loss;
    nb_status st = lb_eval(opt, c, &loss, W_G);
    if (st) return st;
    *orig_loss = loss;
    if (!opt->n) return NB_OK; /* nothing to optimise (and no state: it is made with the first parameter) */
    double *sc = nb_tensor_data(opt->lb_sc), *ro = nb_tensor_data(opt->lb_ro), *al = opt->lb_al;
    const int hs = o->history_size;
    sc[SC_FUNC_EVALS] += 1;
    int current_evals = 1;
    if (lb_absmax(opt, W_G) <= o->tolerance_grad) return NB_OK; /* already optimal */
    double t = sc[SC_T], h_diag = sc[SC_HDIAG], prev_loss = sc[SC_PREV_LOSS];
    int hist_n = (int)sc[SC_HIST_N], hist_start = (int)sc[SC_HIST_START];
    for (int n_iter = 1; n_iter <= o->max_iter; n_iter++) {
        sc[SC_N_ITER] += 1;
        /* the direction d = -H g */
        if (sc[SC_N_ITER] == 1) {
            lb_scale(opt, V_D, -1.0, W_G);
            hist_n = hist_start = 0;
            h_diag = 1;
        } else {
            lb_sub(opt, W_Y, W_G, V_PREV); /* y = g - g_prev */
            lb_scale(opt, W_S, t, V_D);    /* s = t d */
            double ys = lb_dot(opt, W_Y, W_S);
            if (ys > 1e-10) { /* a curvature pair worth keeping; the oldest goes when full */
                if (hist_n == hs) {
                    hist_start = (hist_start + 1) % hs;
                    hist_n--;
                }
                int k = (hist_start + hist_n) % hs;
                lb_copy(opt, V_DIRS + k, W_Y);
                lb_copy(opt, V_STPS + k, W_S);
                ro[k] = 1.0 / ys;
                hist_n++;
                h_diag = ys / lb_dot(opt, W_Y, W_Y);
            }
            lb_scale(opt, V_D, -1.0, W_G); /* q = -g, in d's place */
            for (int i = hist_n - 1; i >= 0; i--) {
                int k = (hist_start + i) % hs;
                al[i] = lb_dot(opt, V_STPS + k, V_D) * ro[k];
                lb_axpy(opt, V_D, -al[i], V_DIRS + k);
            }
            lb_scale(opt, V_D, h_diag, V_D);
            for (int i = 0; i < hist_n; i++) {
                int k = (hist_start + i) % hs;
                double be = lb_dot(opt, V_DIRS + k, V_D) * ro[k];
                lb_axpy(opt, V_D, al[i] - be, V_STPS + k);
            }
        }
        lb_copy(opt, V_PREV, W_G);
        prev_loss = loss;
        /* the step length: a first guess, then the line search (if any) */
        if (sc[SC_N_ITER] == 1) {
            double inv = 1.0 / lb_abssum(opt, W_G);
            t = (inv < 1.0 ? inv : 1.0) * o->lr;
        } else {
            t = o->lr;
        }
        double gtd = lb_dot(opt, W_G, V_D);
        if (gtd > -o->tolerance_change) break; /* not a descent direction any more */
        int ls_evals = 0, opt_cond = 0;
        if (o->line_search == NB_LINE_SEARCH_STRONG_WOLFE) {
            lb_save_params(opt, W_X0);
            int before = c->evals;
            st = strong_wolfe(opt, c, &t, loss, gtd, &loss);
            ls_evals = c->evals - before;
            if (st) break;
            lb_add_params(opt, t, V_D);
            opt_cond = lb_absmax(opt, W_G) <= o->tolerance_grad;
        } else {
            lb_add_params(opt, t, V_D);
            if (n_iter != o->max_iter) { /* the last iteration's loss would be the next step's first */
                if ((st = lb_eval(opt, c, &loss, W_G))) break;
                opt_cond = lb_absmax(opt, W_G) <= o->tolerance_grad;
                ls_evals = 1;
            }
        }
        current_evals += ls_evals;
        sc[SC_FUNC_EVALS] += ls_evals;
        if (n_iter == o->max_iter || current_evals >= o->max_eval || opt_cond) break;
        if (fabs(t) * lb_absmax(opt, V_D) <= o->tolerance_change) break; /* the step is too small */
        if (fabs(loss - prev_loss) < o->tolerance_change) break;          /* so is the change */
    }
    sc[SC_T] = t;
    sc[SC_HDIAG] = h_diag;
    sc[SC_PREV_LOSS] = prev_loss;
    sc[SC_HIST_N] = hist_n;
    sc[SC_HIST_START] = hist_start;
    return st;
}

nb_status nb_optim_step_closure(nb_optim *opt, nb_optim_closure closure, void *user, double *loss)
{
    if (!opt || !closure) {
        nb_error_set(NB_ERR_ARG, "nb_optim_step_closure: optimizer or closure is NULL");
        return NB_ERR_ARG;
    }
    double f = NAN;
    nb_status st;
    if (opt->kind == NB_LBFGS) {
        lb_call c = {closure, user, 0};
        st = lbfgs_step(opt, &c, &f);
        if (st == NB_OK) {
            for (int i = 0; i < opt->n; i++)
                if (live(opt, &opt->s[i])) opt->s[i].steps++;
            opt->steps++;
        }
    } else {
        st = closure(user, &f);
        if (st != NB_OK && !nb_error_code())
            nb_error_set(st, "nb_optim_step_closure: the closure failed (status %d)", (int)st);
        if (st == NB_OK) st = nb_optim_step(opt);
    }
    if (loss) *loss = f;
    return st;
}

void nb_optim_zero_grad(nb_optim *opt)
{
    for (int i = 0; opt && i < opt->n; i++) nb_tensor_zero_grad(opt->s[i].param);
}

double nb_optim_lr(const nb_optim *opt) { return opt ? opt->g[0].o.lr : NAN; }
void nb_optim_set_lr(nb_optim *opt, double lr)
{
    if (!opt || !(lr >= 0)) { /* as nb_optim_group_set_lr: a NaN lr would poison every parameter */
        nb_error_set(NB_ERR_ARG, "nb_optim_set_lr: optimizer is NULL or lr %g is not >= 0", lr);
        return;
    }
    for (int k = 0; k < opt->ng; k++) opt->g[k].o.lr = lr;
}
int64_t nb_optim_steps(const nb_optim *opt) { return opt ? opt->steps : 0; }
nb_optim_kind nb_optim_get_kind(const nb_optim *opt) { return opt ? opt->kind : NB_OPTIM_KIND_COUNT; }
int nb_optim_state_count(const nb_optim *opt) { return opt ? opt->n_state : 0; }
nb_tensor *nb_optim_state_tensor(const nb_optim *opt, int i) { return opt && i >= 0 && i < opt->n_state ? opt->state[i] : NULL; }
const char *nb_optim_state_name(const nb_optim *opt, int i) { return opt && i >= 0 && i < opt->n_state ? opt->state_name[i] : NULL; }

nb_status nb_optim_set_steps(nb_optim *opt, int64_t steps)
{
    if (!opt || steps < 0) {
        nb_error_set(NB_ERR_ARG, "nb_optim_set_steps: optimizer is NULL or steps %lld < 0", (long long)steps);
        return NB_ERR_ARG;
    }
    opt->steps = steps;
    for (int i = 0; i < opt->n; i++) opt->s[i].steps = steps; /* every parameter updated each step */
    return NB_OK;
}

int nb_optim_param_count(const nb_optim *opt) { return opt ? opt->n : 0; }
int64_t nb_optim_param_steps(const nb_optim *opt, int i)
{
    return opt && i >= 0 && i < opt->n ? opt->s[i].steps : -1;
}

nb_status nb_optim_set_param_steps(nb_optim *opt, int i, int64_t steps)
{
    if (!opt || i < 0 || i >= opt->n || steps < 0) {
        nb_error_set(NB_ERR_ARG, "nb_optim_set_param_steps: parameter %d of %d, steps %lld", i, opt ? opt->n : 0,
                     (long long)steps);
        return NB_ERR_ARG;
    }
    opt->s[i].steps = steps;
    return NB_OK;
}

/* ---- parameter groups ------------------------------------------------------------------------- */

static int group_ok(const nb_optim *opt, int k, const char *who)
{
    if (opt && k >= 0 && k < opt->ng) return 1;
    nb_error_set(NB_ERR_ARG, "%s: optimizer is NULL or group %d out of range", who, k);
    return 0;
}

int nb_optim_group_count(const nb_optim *opt) { return opt ? opt->ng : 0; }
int nb_optim_param_group(const nb_optim *opt, int i) { return opt && i >= 0 && i < opt->n ? opt->s[i].group : -1; }
double nb_optim_group_lr(const nb_optim *opt, int k) { return opt && k >= 0 && k < opt->ng ? opt->g[k].o.lr : NAN; }
int nb_optim_group_frozen(const nb_optim *opt, int k) { return opt && k >= 0 && k < opt->ng ? opt->g[k].frozen : -1; }

nb_status nb_optim_group_set_lr(nb_optim *opt, int k, double lr)
{
    if (!group_ok(opt, k, "nb_optim_group_set_lr")) return NB_ERR_ARG;
    if (!(lr >= 0)) {
        nb_error_set(NB_ERR_ARG, "nb_optim_group_set_lr: lr %g must be >= 0", lr);
        return NB_ERR_ARG;
    }
    opt->g[k].o.lr = lr;
    return NB_OK;
}

nb_status nb_optim_group_opts(const nb_optim *opt, int k, nb_optim_opts *out)
{
    if (!group_ok(opt, k, "nb_optim_group_opts") || !out) return NB_ERR_ARG;
    *out = opt->g[k].o;
    return NB_OK;
}

nb_status nb_optim_group_set_opts(nb_optim *opt, int k, const nb_optim_opts *o)
{
    const char *who = "nb_optim_group_set_opts";
    if (!group_ok(opt, k, who)) return NB_ERR_ARG;
    const nb_optim_opts *old = &opt->g[k].o;
    const char *bad = !o ? "options are NULL" : bad_opts(opt->kind, o);
    if (!bad && (((opt->kind == NB_SGD || opt->kind == NB_RMSPROP) && (o->momentum == 0) != (old->momentum == 0)) ||
                 o->amsgrad != old->amsgrad || o->centered != old->centered ||
                 (opt->kind == NB_LBFGS && (o->history_size != old->history_size || o->line_search != old->line_search))))
        bad = "a field that decides the state (momentum zero or not, amsgrad, centered, history_size, line_search) changed";
    if (bad) {
        nb_error_set(NB_ERR_ARG, "%s: %s: group %d: %s", who, kind_names[opt->kind], k, bad);
        return NB_ERR_ARG;
    }
    opt->g[k].o = *o;
    return NB_OK;
}

nb_status nb_optim_group_set_frozen(nb_optim *opt, int k, int frozen)
{
    if (!group_ok(opt, k, "nb_optim_group_set_frozen")) return NB_ERR_ARG;
    opt->g[k].frozen = frozen != 0;
    return NB_OK;
}

/* ---- learning-rate schedules ------------------------------------------------------------------ */

struct nb_sched {
    nb_sched_kind kind;
    nb_sched_opts o;
    nb_optim *opt;
    int ng;
    double *base; /* each group's lr when the schedule was made */
    int64_t epoch;
    /* plateau */
    double best;
    int64_t bad, cooldown_left;
    /* warm restarts: position in the current period, its length */
    double t_cur, t_i;
    /* one-cycle: cycle beta1 (else momentum) */
    int use_beta1;
    double *tmp; /* [2 ng]: lrs and momenta before they are set */
};

nb_sched_opts nb_sched_defaults(nb_sched_kind kind)
{
    nb_sched_opts o = {0};
    o.gamma = 0.1;
    o.step_size = 1;
    if (kind == NB_SCHED_PLATEAU) {
        o.factor = 0.1;
        o.patience = 10;
        o.threshold = 1e-4;
    }
    if (kind == NB_SCHED_COSINE) o.warmup_start = 0.1;
    if (kind == NB_SCHED_ONECYCLE) {
        o.pct_start = 0.3;
        o.div_factor = 25;
        o.final_div_factor = 1e4;
        o.cycle_momentum = 1;
        o.base_momentum = 0.85;
        o.max_momentum = 0.95;
    }
    if (kind == NB_SCHED_WARM_RESTARTS) {
        o.t_0 = 1;
        o.t_mult = 1;
    }
    return o;
}

static const double PI = 3.14159265358979323846;

/* OneCycleLR's phases: up to end (a step number) the lr goes from base * lr0 to base * lr1 (and the
 * momentum from m0 to m1), as fractions of the peak, continuing from the previous phase's end. */
typedef struct phase {
    double end;
    int lr0, lr1, m0, m1; /* 0 initial, 1 peak, 2 minimum; momentum 0 max, 1 base */
} phase;

static double anneal(const nb_sched_opts *o, double a, double b, double pct)
{
    return o->anneal_linear ? (b - a) * pct + a : b + (a - b) / 2.0 * (cos(PI * pct) + 1);
}

/* one-cycle lr of a group with peak max_lr at step e; *mom gets the momentum */
static double onecycle(const nb_sched_opts *o, double max_lr, int64_t e, double *mom)
{
    double total = (double)o->total_steps, lrs[3], ms[2] = {o->max_momentum, o->base_momentum};
    lrs[1] = max_lr;
    lrs[0] = max_lr / o->div_factor;
    lrs[2] = lrs[0] / o->final_div_factor;
    phase three[3] = {{o->pct_start * total - 1, 0, 1, 0, 1},
                      {2 * o->pct_start * total - 2, 1, 0, 1, 0},
                      {total - 1, 0, 2, 0, 0}};
    phase two[2] = {{o->pct_start * total - 1, 0, 1, 0, 1}, {total - 1, 1, 2, 1, 0}};
    const phase *ph = o->three_phase ? three : two;
    int n = o->three_phase ? 3 : 2;
    double start = 0, x = (double)e;
    if (x > ph[n - 1].end) x = ph[n - 1].end; /* step total_steps: the final lr (torch extrapolates) */
    for (int i = 0; i < n; i++) {
        if (x <= ph[i].end || i == n - 1) {
            double pct = (x - start) / (ph[i].end - start);
            *mom = anneal(o, ms[ph[i].m0], ms[ph[i].m1], pct);
            return anneal(o, lrs[ph[i].lr0], lrs[ph[i].lr1], pct);
        }
        start = ph[i].end;
    }
    return NAN; /* not reached */
}

/* lr of group k at epoch e (the closed forms; PLATEAU keeps the current one) */
static double sched_lr(const nb_sched *s, int k, int64_t e, double *mom)
{
    const nb_sched_opts *o = &s->o;
    double base = s->base[k];
    switch (s->kind) {
    case NB_SCHED_STEP: return base * pow(o->gamma, (double)(e / o->step_size));
    case NB_SCHED_MULTISTEP: {
        int c = 0;
        for (int i = 0; i < o->n_milestones; i++) c += o->milestones[i] <= e;
        return base * pow(o->gamma, c);
    }
    case NB_SCHED_EXPONENTIAL: return base * pow(o->gamma, (double)e);
    case NB_SCHED_COSINE: {
        if (e < o->warmup) return base * (o->warmup_start + (1.0 - o->warmup_start) * (double)e / (double)o->warmup);
        int64_t span = o->t_max - o->warmup, t = e - o->warmup;
        if (t > span) t = span; /* stays at eta_min after t_max */
        return o->eta_min + (base - o->eta_min) * (1.0 + cos(PI * (double)t / (double)span)) / 2.0;
    }
    case NB_SCHED_LAMBDA: return base * o->fn(e, k, o->fn_user);
    case NB_SCHED_ONECYCLE: return onecycle(o, base, e, mom);
    case NB_SCHED_WARM_RESTARTS: return o->eta_min + (base - o->eta_min) * (1.0 + cos(PI * s->t_cur / s->t_i)) / 2.0;
    default: return nb_optim_group_lr(s->opt, k);
    }
}

/* Set every group's lr (and one-cycle momentum) for epoch e; the new lr of group 0, NaN on error
 * (then nothing changes). */
static double apply(nb_sched *s, int64_t e)
{
    double *lr = s->tmp, *mom = s->tmp + s->ng;
    if (s->kind == NB_SCHED_ONECYCLE && e > s->o.total_steps) {
        nb_error_set(NB_ERR_ARG, "nb_sched_step: onecycle: step %lld past total_steps %lld", (long long)e,
                     (long long)s->o.total_steps);
        return NAN;
    }
    for (int k = 0; k < s->ng; k++) {
        mom[k] = NAN;
        lr[k] = sched_lr(s, k, e, &mom[k]);
        if (!(lr[k] >= 0) || isinf(lr[k])) {
            nb_error_set(NB_ERR_ARG, "nb_sched_step: group %d: lr %g at epoch %lld (the schedule's factor must be "
                         "finite and >= 0)", k, lr[k], (long long)e);
            return NAN;
        }
    }
    for (int k = 0; k < s->ng; k++) {
        nb_optim_group_set_lr(s->opt, k, lr[k]);
        if (s->kind == NB_SCHED_ONECYCLE && s->o.cycle_momentum) {
            nb_optim_opts go;
            nb_optim_group_opts(s->opt, k, &go);
            if (s->use_beta1) go.beta1 = mom[k];
            else go.momentum = mom[k];
            nb_optim_group_set_opts(s->opt, k, &go);
        }
    }
    s->epoch = e;
    return nb_optim_lr(s->opt);
}

nb_sched *nb_sched_new(nb_sched_kind kind, nb_optim *opt, const nb_sched_opts *opts)
{
    if ((unsigned)kind >= NB_SCHED_KIND_COUNT || !opt) {
        nb_error_set(NB_ERR_ARG, "nb_sched_new: unknown kind %d or no optimizer", (int)kind);
        return NULL;
    }
    nb_sched_opts o = opts ? *opts : nb_sched_defaults(kind);
    nb_optim_kind ok = nb_optim_get_kind(opt);
    int use_beta1 = has_betas(ok), ng = nb_optim_group_count(opt), momentum_ok = use_beta1;
    for (int k = 0; k < ng && !use_beta1; k++) {
        nb_optim_opts go;
        nb_optim_group_opts(opt, k, &go);
        momentum_ok = (ok == NB_SGD || ok == NB_RMSPROP) && go.momentum > 0 && (k == 0 || momentum_ok);
    }
    const char *bad = NULL;
    if (kind == NB_SCHED_STEP && o.step_size < 1) bad = "step_size must be >= 1";
    else if (kind == NB_SCHED_MULTISTEP && (o.n_milestones < 0 || o.n_milestones > NB_SCHED_MAX_MILESTONES))
        bad = "n_milestones out of range";
    else if (kind == NB_SCHED_COSINE && (o.warmup < 0 || o.t_max <= o.warmup || !(o.warmup_start >= 0)))
        bad = "need 0 <= warmup < t_max and warmup_start >= 0";
    else if (kind == NB_SCHED_PLATEAU && (!(o.factor > 0 && o.factor < 1) || o.patience < 0 || o.cooldown < 0))
        bad = "need 0 < factor < 1, patience >= 0, cooldown >= 0";
    else if (kind == NB_SCHED_LAMBDA && !o.fn) bad = "lambda needs fn";
    else if (kind == NB_SCHED_ONECYCLE && (o.total_steps < 1 || !(o.pct_start >= 0 && o.pct_start <= 1) ||
                                          !(o.div_factor > 0) || !(o.final_div_factor > 0)))
        bad = "onecycle needs total_steps >= 1, 0 <= pct_start <= 1, div_factor and final_div_factor > 0";
    else if (kind == NB_SCHED_ONECYCLE && o.pct_start * (double)o.total_steps == 1.0)
        /* the rising phase ends at pct_start * total_steps - 1 = 0, where it starts: step 0's position
         * in it is 0 / 0 (torch's ZeroDivisionError) */
        bad = "onecycle: pct_start * total_steps = 1 leaves the rising phase no length";
    else if (kind == NB_SCHED_ONECYCLE && o.cycle_momentum && !momentum_ok)
        bad = "cycle_momentum needs an optimizer with beta1 (adam, adamw, nadam, radam, adamax) or momentum > 0 in "
              "every group (sgd, rmsprop)";
    else if (kind == NB_SCHED_ONECYCLE && o.cycle_momentum &&
             !(use_beta1 ? o.base_momentum >= 0 && o.max_momentum >= 0 && o.base_momentum < 1 && o.max_momentum < 1
                         : o.base_momentum > 0 && o.max_momentum > 0 && isfinite(o.base_momentum) &&
                               isfinite(o.max_momentum)))
        /* sgd and rmsprop keep a momentum buffer only for a momentum > 0, fixed when the optimizer is
         * made: a cycle through 0 could not be applied (nb_optim_group_set_opts refuses it) */
        bad = "momenta must be in [0, 1) as beta1, and finite and > 0 as sgd/rmsprop momentum";
    else if (kind == NB_SCHED_WARM_RESTARTS && (o.t_0 < 1 || o.t_mult < 1)) bad = "need t_0 >= 1 and t_mult >= 1";
    if (bad) {
        nb_error_set(NB_ERR_ARG, "nb_sched_new: %s", bad);
        return NULL;
    }
    nb_sched *s = nb_calloc(1, sizeof *s);
    if (s) s->ng = ng; /* the arrays' size, for their frees */
    if (s) s->base = nb_calloc((size_t)ng, sizeof *s->base);
    if (s) s->tmp = nb_calloc(2 * (size_t)ng, sizeof *s->tmp);
    if (!s || !s->base || !s->tmp) {
        nb_sched_free(s);
        oom("nb_sched_new");
        return NULL;
    }
    s->kind = kind;
    s->o = o;
    s->opt = opt;
    s->ng = ng;
    s->use_beta1 = use_beta1;
    for (int k = 0; k < ng; k++) s->base[k] = nb_optim_group_lr(opt, k);
    s->best = o.maximize ? -INFINITY : INFINITY;
    s->t_i = (double)o.t_0;
    if (kind != NB_SCHED_PLATEAU && isnan(apply(s, 0))) {
        nb_sched_free(s);
        return NULL;
    }
    return s;
}

void nb_sched_free(nb_sched *s)
{
    if (!s) return;
    nb_dealloc(s->base, (size_t)s->ng * sizeof *s->base);
    nb_dealloc(s->tmp, 2 * (size_t)s->ng * sizeof *s->tmp);
    nb_dealloc(s, sizeof *s);
}

/* ReduceLROnPlateau, relative threshold; every group's lr reduced, down to min_lr */
static void plateau(nb_sched *s, double metric)
{
    const nb_sched_opts *o = &s->o;
    int better = o->maximize ? metric > s->best * (1.0 + o->threshold) : metric < s->best * (1.0 - o->threshold);
    if (better) {
        s->best = metric;
        s->bad = 0;
    } else {
        s->bad++;
    }
    if (s->cooldown_left > 0) {
        s->cooldown_left--;
        s->bad = 0;
    }
    if (s->bad > o->patience) {
        for (int k = 0; k < s->ng; k++) {
            double old = nb_optim_group_lr(s->opt, k), lr = fmax(old * o->factor, o->min_lr);
            if (old - lr > 1e-8) nb_optim_group_set_lr(s->opt, k, lr);
        }
        s->cooldown_left = o->cooldown;
        s->bad = 0;
    }
}

double nb_sched_step(nb_sched *s, double metric)
{
    if (!s) {
        nb_error_set(NB_ERR_ARG, "nb_sched_step: schedule is NULL");
        return NAN;
    }
    if (s->kind == NB_SCHED_PLATEAU) {
        s->epoch++;
        plateau(s, metric);
        return nb_optim_lr(s->opt);
    }
    double t_cur = s->t_cur, t_i = s->t_i;
    if (s->kind == NB_SCHED_WARM_RESTARTS) {
        s->t_cur += 1;
        if (s->t_cur >= s->t_i) {
            s->t_cur -= s->t_i;
            s->t_i *= (double)s->o.t_mult;
        }
    }
    double lr = apply(s, s->epoch + 1);
    if (isnan(lr)) s->t_cur = t_cur, s->t_i = t_i;
    return lr;
}

double nb_sched_set_epoch(nb_sched *s, double epoch)
{
    if (!s || !(epoch >= 0) || isinf(epoch) || s->kind == NB_SCHED_PLATEAU ||
        (s->kind != NB_SCHED_WARM_RESTARTS && epoch != floor(epoch))) {
        nb_error_set(NB_ERR_ARG, "nb_sched_set_epoch: no schedule, a plateau schedule, or epoch %g is not a "
                     "whole number >= 0 (fractions: warm restarts only)", epoch);
        return NAN;
    }
    double t_cur = s->t_cur, t_i = s->t_i;
    if (s->kind == NB_SCHED_WARM_RESTARTS) {
        double t0 = (double)s->o.t_0, m = (double)s->o.t_mult;
        if (epoch < t0) {
            s->t_i = t0;
            s->t_cur = epoch;
        } else if (s->o.t_mult == 1) {
            s->t_i = t0;
            s->t_cur = fmod(epoch, t0);
        } else { /* the period n that holds epoch: t0 (m^n - 1) / (m - 1) <= epoch */
            double n = floor(log(epoch / t0 * (m - 1) + 1) / log(m));
            s->t_cur = epoch - t0 * (pow(m, n) - 1) / (m - 1);
            s->t_i = t0 * pow(m, n);
        }
    }
    double lr = apply(s, (int64_t)floor(epoch));
    if (isnan(lr)) s->t_cur = t_cur, s->t_i = t_i;
    return lr;
}

/* ---- clipping --------------------------------------------------------------------------------- */

double nb_clip_grad_norm(nb_params *params, double max_norm)
{
    if (!params || !(max_norm > 0)) {
        nb_error_set(NB_ERR_ARG, "nb_clip_grad_norm: no parameters or max_norm %g <= 0", max_norm);
        return NAN;
    }
    double ss = 0;
    for (int i = 0; i < nb_params_count(params); i++) {
        nb_tensor *g = nb_tensor_grad(nb_params_tensor(params, i));
        if (!g) continue;
        double part = 0;
        DISPATCH(g, part = sumsq, nb_tensor_numel(g), nb_tensor_cdata(g));
        ss += part;
    }
    double norm = sqrt(ss), coef = max_norm / (norm + 1e-6);
    if (coef < 1.0)
        for (int i = 0; i < nb_params_count(params); i++) {
            nb_tensor *g = nb_tensor_grad(nb_params_tensor(params, i));
            if (g) DISPATCH(g, scale, nb_tensor_numel(g), nb_tensor_data(g), coef);
        }
    return norm;
}

nb_status nb_clip_grad_value(nb_params *params, double clip)
{
    if (!params || !(clip >= 0)) {
        nb_error_set(NB_ERR_ARG, "nb_clip_grad_value: no parameters or clip %g < 0", clip);
        return NB_ERR_ARG;
    }
    for (int i = 0; i < nb_params_count(params); i++) {
        nb_tensor *g = nb_tensor_grad(nb_params_tensor(params, i));
        if (g) DISPATCH(g, clampv, nb_tensor_numel(g), nb_tensor_data(g), clip);
    }
    return NB_OK;
}

/* ---- early stopping --------------------------------------------------------------------------- */

struct nb_early_stop {
    nb_params *params;
    nb_tensor **best; /* copies of the parameters at the best metric */
    int n;
    int64_t patience, bad, epoch, best_epoch;
    double min_delta, best_value;
    int maximize;
};

nb_early_stop *nb_early_stop_new(nb_params *params, int64_t patience, double min_delta, int maximize)
{
    if (!params || patience < 0 || !(min_delta >= 0)) {
        nb_error_set(NB_ERR_ARG, "nb_early_stop_new: need parameters, patience >= 0 and min_delta >= 0");
        return NULL;
    }
    nb_early_stop *es = nb_calloc(1, sizeof *es);
    int n = nb_params_count(params);
    if (es) es->best = nb_calloc((size_t)n + 1, sizeof *es->best);
    if (!es || !es->best) {
        nb_dealloc(es, sizeof *es);
        nb_error_set(NB_ERR_NOMEM, "nb_early_stop_new: out of memory");
        return NULL;
    }
    es->params = params;
    es->n = n;
    es->patience = patience;
    es->min_delta = min_delta;
    es->maximize = maximize;
    es->best_epoch = -1;
    es->best_value = maximize ? -INFINITY : INFINITY;
    for (int i = 0; i < n; i++) {
        es->best[i] = nb_tensor_clone(nb_params_tensor(params, i));
        if (!es->best[i]) {
            nb_early_stop_free(es);
            return NULL;
        }
    }
    return es;
}

void nb_early_stop_free(nb_early_stop *es)
{
    if (!es) return;
    for (int i = 0; i < es->n; i++) nb_tensor_free(es->best[i]);
    nb_dealloc(es->best, ((size_t)es->n + 1) * sizeof *es->best);
    nb_dealloc(es, sizeof *es);
}

int nb_early_stop_update(nb_early_stop *es, double metric)
{
    if (!es || metric != metric) {
        nb_error_set(NB_ERR_ARG, "nb_early_stop_update: no early stopper, or the metric is NaN");
        return -1;
    }
    int better = es->maximize ? metric > es->best_value + es->min_delta : metric < es->best_value - es->min_delta;
    if (better) {
        es->best_value = metric;
        es->best_epoch = es->epoch;
        es->bad = 0;
        for (int i = 0; i < es->n; i++)
            if (nb_tensor_copy_from(es->best[i], nb_tensor_cdata(nb_params_tensor(es->params, i))) != NB_OK) return -1;
    } else {
        es->bad++;
    }
    es->epoch++;
    return !better && es->bad >= es->patience ? 1 : 0;
}

nb_status nb_early_stop_restore(nb_early_stop *es)
{
    if (!es) {
        nb_error_set(NB_ERR_ARG, "nb_early_stop_restore: early stopper is NULL");
        return NB_ERR_ARG;
    }
    if (es->best_epoch < 0) return NB_OK; /* nothing recorded: the parameters are the initial ones */
    for (int i = 0; i < es->n; i++) {
        nb_status st = nb_tensor_copy_from(nb_params_tensor(es->params, i), nb_tensor_cdata(es->best[i]));
        if (st != NB_OK) return st;
    }
    return NB_OK;
}

double nb_early_stop_best(const nb_early_stop *es) { return es ? es->best_value : NAN; }
int64_t nb_early_stop_best_epoch(const nb_early_stop *es) { return es ? es->best_epoch : -1; }
