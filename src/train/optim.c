/* Optimizers (SGD, Adam, AdamW, RMSprop, Adagrad), learning-rate schedules, gradient clipping and
 * early stopping. Written against nabla.h only; the update kernels come from optim_kernels.h, one
 * source for float and double. */
#include <nabla.h>

#include <math.h>
#include <stdio.h>
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

enum { S_MAX = 3 }; /* state tensors per parameter at most */

typedef struct slot {
    nb_tensor *param;
    nb_tensor *state[S_MAX];
    int64_t steps; /* updates applied to this parameter */
} slot;

struct nb_optim {
    nb_optim_kind kind;
    nb_optim_opts o;
    slot *s;
    int n;
    int64_t steps;
    /* flat list of state tensors for checkpoints */
    int n_state;
    nb_tensor **state;
    char **state_name;
    size_t cap; /* parameters the arrays were allocated for (s [cap + 1], state [cap * S_MAX + 1]) */
};

static const char *const kind_names[] = {"sgd", "adam", "adamw", "rmsprop", "adagrad"};
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
    default: break;
    }
    return o;
}

static int check_opts(nb_optim_kind kind, const nb_optim_opts *o)
{
    const char *bad = NULL;
    if (!(o->lr >= 0)) bad = "lr must be >= 0";
    else if (!(o->weight_decay >= 0)) bad = "weight_decay must be >= 0";
    else if (kind == NB_SGD && !(o->momentum >= 0)) bad = "momentum must be >= 0";
    else if (kind == NB_SGD && o->nesterov && (o->momentum <= 0 || o->dampening != 0))
        bad = "nesterov needs momentum > 0 and dampening 0";
    else if ((kind == NB_ADAM || kind == NB_ADAMW) && !(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1))
        bad = "betas must be in [0, 1)";
    else if (kind != NB_SGD && !(o->eps >= 0)) bad = "eps must be >= 0";
    else if (kind == NB_RMSPROP && !(o->alpha >= 0 && o->momentum >= 0)) bad = "alpha and momentum must be >= 0";
    else if (kind == NB_ADAGRAD && !(o->lr_decay >= 0 && o->initial_accumulator >= 0))
        bad = "lr_decay and initial_accumulator must be >= 0";
    if (bad) nb_error_set(NB_ERR_ARG, "nb_optim_new: %s: %s", kind_names[kind], bad);
    return bad == NULL;
}

static nb_tensor *add_state(nb_optim *opt, slot *s, int k, const char *pname, const char *what, double init)
{
    nb_tensor *p = s->param;
    nb_tensor *t = nb_tensor_full(nb_tensor_dtype(p), nb_tensor_ndim(p), nb_tensor_shape(p), init);
    if (!t) return NULL;
    size_t len = strlen(pname) + strlen(what) + 2;
    char *name = nb_alloc(len);
    if (!name) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_NOMEM, "nb_optim_new: out of memory");
        return NULL;
    }
    snprintf(name, len, "%s.%s", pname, what);
    nb_tensor_claim(t, opt); /* a new leaf: cannot fail */
    s->state[k] = t;
    opt->state[opt->n_state] = t;
    opt->state_name[opt->n_state++] = name;
    return t;
}

nb_optim *nb_optim_new(nb_optim_kind kind, nb_params *params, const nb_optim_opts *opts)
{
    if ((unsigned)kind >= NB_OPTIM_KIND_COUNT || !params) {
        nb_error_set(NB_ERR_ARG, "nb_optim_new: unknown kind %d or no parameters", (int)kind);
        return NULL;
    }
    nb_optim_opts o = opts ? *opts : nb_optim_defaults(kind);
    if (!check_opts(kind, &o)) return NULL;
    nb_optim *opt = nb_calloc(1, sizeof *opt);
    int np = nb_params_count(params);
    if (opt) {
        opt->cap = (size_t)np;
        opt->s = nb_calloc((size_t)np + 1, sizeof *opt->s);
        opt->state = nb_calloc((size_t)np * S_MAX + 1, sizeof *opt->state);
        opt->state_name = nb_calloc((size_t)np * S_MAX + 1, sizeof *opt->state_name);
    }
    if (!opt || !opt->s || !opt->state || !opt->state_name) {
        nb_optim_free(opt);
        nb_error_set(NB_ERR_NOMEM, "nb_optim_new: out of memory");
        return NULL;
    }
    opt->kind = kind;
    opt->o = o;
    for (int i = 0; i < np; i++) {
        if (!nb_params_trainable(params, i)) continue;
        nb_tensor *p = nb_params_tensor(params, i);
        nb_dtype dt = nb_tensor_dtype(p);
        if (dt != NB_F32 && dt != NB_F64) continue;
        slot *s = &opt->s[opt->n++];
        s->param = p;
        const char *pn = nb_params_name(params, i);
        int ok = 1;
        switch (kind) {
        case NB_SGD:
            if (o.momentum != 0) ok = add_state(opt, s, 0, pn, "momentum_buffer", 0) != NULL;
            break;
        case NB_ADAM:
        case NB_ADAMW:
            ok = add_state(opt, s, 0, pn, "exp_avg", 0) && add_state(opt, s, 1, pn, "exp_avg_sq", 0) &&
                 (!o.amsgrad || add_state(opt, s, 2, pn, "max_exp_avg_sq", 0));
            break;
        case NB_RMSPROP:
            ok = add_state(opt, s, 0, pn, "square_avg", 0) && (!o.centered || add_state(opt, s, 1, pn, "grad_avg", 0)) &&
                 (o.momentum == 0 || add_state(opt, s, 2, pn, "momentum_buffer", 0));
            break;
        case NB_ADAGRAD: ok = add_state(opt, s, 0, pn, "sum", o.initial_accumulator) != NULL; break;
        default: break;
        }
        if (!ok) {
            nb_optim_free(opt);
            return NULL;
        }
    }
    return opt;
}

void nb_optim_free(nb_optim *opt)
{
    if (!opt) return;
    for (int i = 0; i < opt->n_state; i++) {
        nb_tensor_unclaim(opt->state[i], opt);
        nb_tensor_free(opt->state[i]);
        nb_dealloc(opt->state_name[i], strlen(opt->state_name[i]) + 1);
    }
    nb_dealloc(opt->state, (opt->cap * S_MAX + 1) * sizeof *opt->state);
    nb_dealloc(opt->state_name, (opt->cap * S_MAX + 1) * sizeof *opt->state_name);
    nb_dealloc(opt->s, (opt->cap + 1) * sizeof *opt->s);
    nb_dealloc(opt, sizeof *opt);
}

nb_status nb_optim_step(nb_optim *opt)
{
    if (!opt) {
        nb_error_set(NB_ERR_ARG, "nb_optim_step: optimizer is NULL");
        return NB_ERR_ARG;
    }
    const nb_optim_opts *o = &opt->o;
    for (int i = 0; i < opt->n; i++) {
        slot *s = &opt->s[i];
        nb_tensor *p = s->param, *g = nb_tensor_grad(p);
        if (!g) continue;
        int64_t n = nb_tensor_numel(p);
        void *pd = nb_tensor_data(p);
        const void *gd = nb_tensor_cdata(g);
        s->steps++;
        switch (opt->kind) {
        case NB_SGD:
            DISPATCH(p, sgd, n, pd, gd, dp(s->state[0]), s->steps == 1, o->lr, o->weight_decay, o->momentum,
                     o->dampening, o->nesterov);
            break;
        case NB_ADAM:
        case NB_ADAMW: {
            double bc1 = 1.0 - pow(o->beta1, (double)s->steps), bc2 = 1.0 - pow(o->beta2, (double)s->steps);
            DISPATCH(p, adam, n, pd, gd, dp(s->state[0]), dp(s->state[1]), dp(s->state[2]), o->lr, o->weight_decay,
                     opt->kind == NB_ADAMW, o->beta1, o->beta2, o->eps, bc1, sqrt(bc2));
            break;
        }
        case NB_RMSPROP:
            DISPATCH(p, rmsprop, n, pd, gd, dp(s->state[0]), dp(s->state[1]), dp(s->state[2]), o->lr, o->weight_decay,
                     o->alpha, o->eps, o->momentum);
            break;
        case NB_ADAGRAD: {
            double clr = o->lr / (1.0 + (double)(s->steps - 1) * o->lr_decay);
            DISPATCH(p, adagrad, n, pd, gd, dp(s->state[0]), clr, o->weight_decay, o->eps);
            break;
        }
        default: break;
        }
        nb_tensor_mark_dirty(p);
    }
    opt->steps++;
    return NB_OK;
}

void nb_optim_zero_grad(nb_optim *opt)
{
    for (int i = 0; opt && i < opt->n; i++) nb_tensor_zero_grad(opt->s[i].param);
}

double nb_optim_lr(const nb_optim *opt) { return opt ? opt->o.lr : NAN; }
void nb_optim_set_lr(nb_optim *opt, double lr)
{
    if (opt) opt->o.lr = lr;
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

/* ---- learning-rate schedules ------------------------------------------------------------------ */

struct nb_sched {
    nb_sched_kind kind;
    nb_sched_opts o;
    nb_optim *opt;
    double base;
    int64_t epoch;
    /* plateau */
    double best;
    int64_t bad, cooldown_left;
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
    return o;
}

static double sched_lr(const nb_sched *s, int64_t e)
{
    const nb_sched_opts *o = &s->o;
    switch (s->kind) {
    case NB_SCHED_STEP: return s->base * pow(o->gamma, (double)(e / o->step_size));
    case NB_SCHED_MULTISTEP: {
        int k = 0;
        for (int i = 0; i < o->n_milestones; i++) k += o->milestones[i] <= e;
        return s->base * pow(o->gamma, k);
    }
    case NB_SCHED_EXPONENTIAL: return s->base * pow(o->gamma, (double)e);
    case NB_SCHED_COSINE: {
        if (e < o->warmup) return s->base * (o->warmup_start + (1.0 - o->warmup_start) * (double)e / (double)o->warmup);
        int64_t span = o->t_max - o->warmup, t = e - o->warmup;
        if (t > span) t = span; /* stays at eta_min after t_max */
        return o->eta_min + (s->base - o->eta_min) * (1.0 + cos(3.14159265358979323846 * (double)t / (double)span)) / 2.0;
    }
    default: return nb_optim_lr(s->opt);
    }
}

nb_sched *nb_sched_new(nb_sched_kind kind, nb_optim *opt, const nb_sched_opts *opts)
{
    if ((unsigned)kind >= NB_SCHED_KIND_COUNT || !opt) {
        nb_error_set(NB_ERR_ARG, "nb_sched_new: unknown kind %d or no optimizer", (int)kind);
        return NULL;
    }
    nb_sched_opts o = opts ? *opts : nb_sched_defaults(kind);
    const char *bad = NULL;
    if (kind == NB_SCHED_STEP && o.step_size < 1) bad = "step_size must be >= 1";
    else if (kind == NB_SCHED_MULTISTEP && (o.n_milestones < 0 || o.n_milestones > NB_SCHED_MAX_MILESTONES))
        bad = "n_milestones out of range";
    else if (kind == NB_SCHED_COSINE && (o.warmup < 0 || o.t_max <= o.warmup || !(o.warmup_start >= 0)))
        bad = "need 0 <= warmup < t_max and warmup_start >= 0";
    else if (kind == NB_SCHED_PLATEAU && (!(o.factor > 0 && o.factor < 1) || o.patience < 0 || o.cooldown < 0))
        bad = "need 0 < factor < 1, patience >= 0, cooldown >= 0";
    if (bad) {
        nb_error_set(NB_ERR_ARG, "nb_sched_new: %s", bad);
        return NULL;
    }
    nb_sched *s = nb_calloc(1, sizeof *s);
    if (!s) {
        nb_error_set(NB_ERR_NOMEM, "nb_sched_new: out of memory");
        return NULL;
    }
    s->kind = kind;
    s->o = o;
    s->opt = opt;
    s->base = nb_optim_lr(opt);
    s->best = o.maximize ? -INFINITY : INFINITY;
    if (kind != NB_SCHED_PLATEAU) nb_optim_set_lr(opt, sched_lr(s, 0));
    return s;
}

void nb_sched_free(nb_sched *s) { nb_dealloc(s, sizeof *s); }

double nb_sched_step(nb_sched *s, double metric)
{
    if (!s) {
        nb_error_set(NB_ERR_ARG, "nb_sched_step: schedule is NULL");
        return NAN;
    }
    s->epoch++;
    if (s->kind != NB_SCHED_PLATEAU) {
        nb_optim_set_lr(s->opt, sched_lr(s, s->epoch));
        return nb_optim_lr(s->opt);
    }
    /* ReduceLROnPlateau, relative threshold */
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
        double old = nb_optim_lr(s->opt), lr = fmax(old * o->factor, o->min_lr);
        if (old - lr > 1e-8) nb_optim_set_lr(s->opt, lr);
        s->cooldown_left = o->cooldown;
        s->bad = 0;
    }
    return nb_optim_lr(s->opt);
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
