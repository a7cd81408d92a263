/* Optimizers, learning-rate schedules, gradient clipping and early stopping.
 *
 *   test_optim FILE        FILE: tests/fixtures/optim_f64.txt (written by tests/gen_optim_fixtures.py,
 *                          which documents the format and the problem)
 *
 * Against PyTorch (torch.optim, float64): every optimizer trajectory of the fixture is replayed with
 * nb_optim_* on the same problem built from nabla ops (loss = sum((X W + b - Y)^2) / n +
 * 0.1 sum(W^4)), and the parameters at every recorded step and the optimizer's state tensors after
 * the last step are compared; every schedule is replayed with nb_sched_* and its lr compared at every
 * epoch. The same trajectories run again with a float32 model for 10 steps, compared with the float64
 * reference.
 *
 * Without PyTorch: nb_clip_grad_norm / nb_clip_grad_value against closed forms, early stopping
 * (stopping epoch, best value and epoch, restore), parameters without a gradient left alone (and
 * bias-corrected from their own first step when they get one), state names and counts, and bad
 * options rejected with a message. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* mkdtemp */

#include "fixture.h"
#include "nbtest.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------- */
/* Tolerances                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

/* A value passes when |got - want| <= RTOL |want| + ATOL.
 * float64: both sides run the same formulas in float64 and differ only in rounding (the order of the
 * sums in the loss and its gradient, a * b + c against c + a * b in the update, a closed form lr
 * against PyTorch's chained products); over 100 steps these stay near 1e-15 relative, so 1e-10 leaves
 * room for the growth of rounding through the steps and still catches any wrong formula (a misplaced
 * eps or bias correction moves values by 1e-6 or more). The absolute floor is for values that pass
 * near zero: they are differences of O(1) quantities, so their error is a few ulps of 1 (1e-16),
 * not of themselves; 1e-14 is far below any update these problems make (>= 1e-4 per step).
 * float32 model: 24-bit arithmetic in the loss, its gradient and the update, 10 steps; parameters are
 * O(1), so 1e-5 relative with a 1e-6 floor. */
#define TRAJ_RTOL 1e-10
#define TRAJ_ATOL 1e-14
#define LR_RTOL 1e-10
#define F32_RTOL 1e-5
#define F32_ATOL 1e-6
#define F32_STEPS 10

/* ---------------------------------------------------------------------------------------------- */
/* Fixture data                                                                                    */
/* ---------------------------------------------------------------------------------------------- */

#define FX_HEADER "nabla-optim-fixtures"
#define FX_VERSION 2
#define MAX_P 64       /* elements of W and b together */
#define MAX_REC 64     /* recorded steps per case */
#define MAX_STATES 8   /* state tensors per case */
#define MAX_EPOCHS 1000
#define MAX_CASES 64

typedef struct optim_case {
    char name[FX_MAX_NAME];
    int line;
    nb_optim_kind kind;
    nb_optim_opts opts;
    int nrec;
    int at[MAX_REC];
    double rec[MAX_REC][MAX_P];
    int nstate;
    char sname[MAX_STATES][FX_MAX_NAME];
    int slen[MAX_STATES];
    double sval[MAX_STATES][MAX_P];
    bool has_group;          /* b in a group of its own, with group_opts */
    nb_optim_opts group_opts;
    int freeze_from, freeze_to; /* b frozen for these steps (0: never) */
} optim_case;

#define MAX_LB_STEPS 16
typedef struct lbfgs_case {
    char name[FX_MAX_NAME];
    int line;
    int problem; /* 0 rosenbrock, 1 logreg */
    nb_optim_opts opts;
    int nrec;
    double rec[MAX_LB_STEPS][MAX_P];
    int nloss, nevals, niters;
    double loss[MAX_LB_STEPS], evals[MAX_LB_STEPS], iters[MAX_LB_STEPS];
} lbfgs_case;

#define N_GROUPS 2 /* schedule cases drive two groups */
typedef struct sched_case {
    char name[FX_MAX_NAME];
    int line;
    nb_sched_kind kind;
    nb_sched_opts opts;
    nb_optim_kind okind;
    nb_optim_opts oopts;
    double lr0[N_GROUPS];
    int nlr0, nmetric, nepochs, nlr[N_GROUPS], nmom[N_GROUPS];
    double metric[MAX_EPOCHS], epochs[MAX_EPOCHS], lr[N_GROUPS][MAX_EPOCHS + 1], mom[N_GROUPS][MAX_EPOCHS + 1];
} sched_case;

typedef struct fixture {
    fx_tensor X, Y, W0, b0;              /* float64; values NULL until given */
    fx_tensor RA0, RB0, LX, LY, LW0, LC0; /* the L-BFGS problems' */
    int n_optim, n_sched, n_lbfgs;
    optim_case *optim; /* MAX_CASES each */
    sched_case *sched;
    lbfgs_case *lbfgs;
} fixture;

static const char *const optim_kinds[] = {"sgd",   "adam",  "adamw",  "rmsprop",  "adagrad",
                                          "nadam", "radam", "adamax", "adadelta", "lbfgs"};
_Static_assert(sizeof optim_kinds / sizeof optim_kinds[0] == NB_OPTIM_KIND_COUNT, "a name per optimizer");
static const char *const sched_kinds[] = {"step",   "multistep", "exponential",  "cosine",
                                          "plateau", "lambda",   "onecycle", "warm_restarts"};
_Static_assert(sizeof sched_kinds / sizeof sched_kinds[0] == NB_SCHED_KIND_COUNT, "a name per schedule");

/* Option fields settable from the file: name, offset, type ('d' double, 'i' int, 'l' int64_t). */
typedef struct field {
    const char *name;
    size_t off;
    char type;
} field;
#define OF(f, t) {#f, offsetof(nb_optim_opts, f), t}
static const field optim_fields[] = {
    OF(lr, 'd'),    OF(weight_decay, 'd'), OF(momentum, 'd'), OF(dampening, 'd'), OF(nesterov, 'i'),
    OF(beta1, 'd'), OF(beta2, 'd'),        OF(eps, 'd'),      OF(amsgrad, 'i'),   OF(alpha, 'd'),
    OF(centered, 'i'), OF(lr_decay, 'd'), OF(initial_accumulator, 'd'), OF(momentum_decay, 'd'), OF(rho, 'd'),
    OF(max_iter, 'n'), OF(max_eval, 'n'), OF(tolerance_grad, 'd'), OF(tolerance_change, 'd'), OF(history_size, 'n'),
    OF(line_search, 'i'),
};
#undef OF
#define SF(f, t) {#f, offsetof(nb_sched_opts, f), t}
static const field sched_fields[] = {
    SF(step_size, 'l'), SF(gamma, 'd'), SF(t_max, 'l'),     SF(eta_min, 'd'),  SF(warmup, 'l'),   SF(warmup_start, 'd'),
    SF(maximize, 'i'),  SF(factor, 'd'), SF(patience, 'l'), SF(threshold, 'd'), SF(cooldown, 'l'), SF(min_lr, 'd'),
    SF(total_steps, 'l'), SF(pct_start, 'd'), SF(anneal_linear, 'i'), SF(three_phase, 'i'), SF(div_factor, 'd'),
    SF(final_div_factor, 'd'), SF(cycle_momentum, 'i'), SF(base_momentum, 'd'), SF(max_momentum, 'd'), SF(t_0, 'l'),
    SF(t_mult, 'l'),
};
#undef SF

/* Up to max finite numbers to the end of the line; *n receives the count. */
static bool parse_list(fx_parser *p, char *s, const char *what, int max, double *v, int *n)
{
    *n = 0;
    for (char *tok; (tok = fx_token(&s));) {
        if (*n == max) return fx_fail(p, "%s: more than %d values", what, max);
        if (!fx_finite(p, tok, what, &v[(*n)++])) return false;
    }
    return true;
}

static bool parse_kind(fx_parser *p, const char *tok, const char *const *names, int count, int *kind)
{
    for (int k = 0; tok && k < count; k++)
        if (!strcmp(tok, names[k])) {
            *kind = k;
            return true;
        }
    return fx_fail(p, "unknown kind \"%s\"", tok ? tok : "");
}

/* The value of option `key` (the rest of the line: one number) into the struct at base, described by
 * fields[n]. */
static bool parse_field(fx_parser *p, const char *key, char *s, void *base, const field *fields, int n)
{
    for (int i = 0; key && i < n; i++) {
        if (strcmp(key, fields[i].name)) continue;
        char *at = (char *)base + fields[i].off;
        char *tok = fx_token(&s);
        int64_t iv;
        if (fields[i].type == 'd') {
            if (!fx_finite(p, tok, key, (double *)(void *)at)) return false;
        } else if (fields[i].type == 'i') { /* the flags */
            if (!fx_int(p, tok, key, 0, 1, &iv)) return false;
            *(int *)(void *)at = (int)iv;
        } else if (fields[i].type == 'n') { /* int counts */
            if (!fx_int(p, tok, key, 1, INT32_MAX, &iv)) return false;
            *(int *)(void *)at = (int)iv;
        } else {
            if (!fx_int(p, tok, key, 0, INT32_MAX, &iv)) return false;
            *(int64_t *)(void *)at = iv;
        }
        return fx_token(&s) ? fx_fail(p, "opt %s: more than one value", key) : true;
    }
    return fx_fail(p, "unknown option \"%s\"", key ? key : "");
}

/* "<field> <value>" pairs to the end of the line, each set as parse_field does */
static bool parse_pairs(fx_parser *p, char *s, void *base, const field *fields, int n)
{
    for (char *key; (key = fx_token(&s));) {
        char *val = fx_token(&s);
        char buf[64];
        snprintf(buf, sizeof buf, "%s", val ? val : "");
        if (!parse_field(p, key, buf, base, fields, n)) return false;
    }
    return true;
}

/* data <name> <ndim> <dims...> <values...> */
static bool parse_data(fx_parser *p, fixture *f, char *s)
{
    char *name = fx_token(&s);
    fx_tensor *d = !name ? NULL
                   : !strcmp(name, "X") ? &f->X
                   : !strcmp(name, "Y") ? &f->Y
                   : !strcmp(name, "W0") ? &f->W0
                   : !strcmp(name, "b0") ? &f->b0
                   : !strcmp(name, "RA0") ? &f->RA0
                   : !strcmp(name, "RB0") ? &f->RB0
                   : !strcmp(name, "LX") ? &f->LX
                   : !strcmp(name, "LY") ? &f->LY
                   : !strcmp(name, "LW0") ? &f->LW0
                   : !strcmp(name, "LC0") ? &f->LC0
                                         : NULL;
    if (!d) return fx_fail(p, "data: unknown name \"%s\" (X, Y, W0, b0, RA0, RB0, LX, LY, LW0, LC0)", name ? name : "");
    if (d->v) return fx_fail(p, "data %s given twice", name);
    d->dtype = NB_F64;
    return fx_parse_array(p, s, name, d);
}

/* The data must describe X [n, k], Y [n, m], W0 [k, m], b0 [m], none of them empty. */
static bool check_data(fx_parser *p, const fixture *f)
{
    if (!f->X.v || !f->Y.v || !f->W0.v || !f->b0.v)
        return fx_fail(p, "data X, Y, W0 and b0 must all come before the first case");
    if (f->X.ndim != 2 || f->Y.ndim != 2 || f->W0.ndim != 2 || f->b0.ndim != 1 || f->X.shape[0] != f->Y.shape[0] ||
        f->X.shape[1] != f->W0.shape[0] || f->W0.shape[1] != f->Y.shape[1] || f->b0.shape[0] != f->Y.shape[1])
        return fx_fail(p, "data shapes do not fit X [n, k], Y [n, m], W0 [k, m], b0 [m]");
    if (!f->X.numel || !f->Y.numel || !f->W0.numel) return fx_fail(p, "empty data");
    if (f->W0.numel + f->b0.numel > MAX_P) return fx_fail(p, "more than %d parameters", MAX_P);
    if (!f->RA0.v || !f->RB0.v || !f->LX.v || !f->LY.v || !f->LW0.v || !f->LC0.v)
        return fx_fail(p, "data RA0, RB0, LX, LY, LW0 and LC0 must come before the first case");
    if (f->RA0.ndim != 1 || f->RB0.ndim != 1 || f->RA0.numel != f->RB0.numel || f->LX.ndim != 2 || f->LY.ndim != 1 ||
        f->LY.shape[0] != f->LX.shape[0] || f->LW0.ndim != 1 || f->LW0.shape[0] != f->LX.shape[1] || f->LC0.ndim != 1 ||
        f->LC0.numel != 1 || 2 * f->RA0.numel > MAX_P || f->LW0.numel + 1 > MAX_P || !f->RA0.numel || !f->LX.numel)
        return fx_fail(p, "L-BFGS data shapes do not fit RA0 [k], RB0 [k], LX [n, m], LY [n], LW0 [m], LC0 [1]");
    return true;
}

static bool parse_optim_line(fx_parser *p, const fixture *f, optim_case *c, const char *kw, char *s)
{
    int np = (int)(f->W0.numel + f->b0.numel), n;
    if (!strcmp(kw, "opt")) {
        char *key = fx_token(&s);
        return parse_field(p, key, s, &c->opts, optim_fields, (int)(sizeof optim_fields / sizeof *optim_fields));
    }
    if (!strcmp(kw, "at")) {
        int64_t step;
        if (c->nrec == MAX_REC) return fx_fail(p, "more than %d records", MAX_REC);
        if (!fx_int(p, fx_token(&s), "step", 1, 1000000, &step)) return false;
        if (c->nrec && step <= c->at[c->nrec - 1]) return fx_fail(p, "steps must increase");
        if (!parse_list(p, s, "at", MAX_P, c->rec[c->nrec], &n)) return false;
        if (n != np) return fx_fail(p, "at %lld: %d values for %d parameters", (long long)step, n, np);
        c->at[c->nrec++] = (int)step;
        return true;
    }
    if (!strcmp(kw, "state")) {
        if (c->nstate == MAX_STATES) return fx_fail(p, "more than %d states", MAX_STATES);
        if (!fx_name(p, fx_token(&s), "state name", c->sname[c->nstate])) return false;
        if (!parse_list(p, s, "state", MAX_P, c->sval[c->nstate], &c->slen[c->nstate])) return false;
        c->nstate++;
        return true;
    }
    if (!strcmp(kw, "group")) {
        if (c->has_group) return fx_fail(p, "group given twice");
        c->has_group = true;
        c->group_opts = c->opts; /* the opt lines come first */
        return parse_pairs(p, s, &c->group_opts, optim_fields, (int)(sizeof optim_fields / sizeof *optim_fields));
    }
    if (!strcmp(kw, "freeze")) {
        int64_t a, b;
        if (!fx_int(p, fx_token(&s), "first", 1, 1000000, &a) || !fx_int(p, fx_token(&s), "last", a, 1000000, &b))
            return false;
        c->freeze_from = (int)a;
        c->freeze_to = (int)b;
        return fx_token(&s) ? fx_fail(p, "freeze: more than two values") : true;
    }
    return fx_fail(p, "unexpected \"%s\" in optimizer case %s", kw, c->name);
}

static bool parse_lbfgs_line(fx_parser *p, const fixture *f, lbfgs_case *c, const char *kw, char *s)
{
    int np = c->problem == 0 ? (int)(2 * f->RA0.numel) : (int)(f->LW0.numel + 1), n;
    if (!strcmp(kw, "opt")) {
        char *key = fx_token(&s);
        return parse_field(p, key, s, &c->opts, optim_fields, (int)(sizeof optim_fields / sizeof *optim_fields));
    }
    if (!strcmp(kw, "at")) {
        int64_t step;
        if (c->nrec == MAX_LB_STEPS) return fx_fail(p, "more than %d records", MAX_LB_STEPS);
        if (!fx_int(p, fx_token(&s), "step", c->nrec + 1, c->nrec + 1, &step)) return false;
        if (!parse_list(p, s, "at", MAX_P, c->rec[c->nrec], &n)) return false;
        if (n != np) return fx_fail(p, "at %lld: %d values for %d parameters", (long long)step, n, np);
        c->nrec++;
        return true;
    }
    if (!strcmp(kw, "loss")) return parse_list(p, s, "loss", MAX_LB_STEPS, c->loss, &c->nloss);
    if (!strcmp(kw, "evals")) return parse_list(p, s, "evals", MAX_LB_STEPS, c->evals, &c->nevals);
    if (!strcmp(kw, "iters")) return parse_list(p, s, "iters", MAX_LB_STEPS, c->iters, &c->niters);
    return fx_fail(p, "unexpected \"%s\" in L-BFGS case %s", kw, c->name);
}

static bool parse_sched_line(fx_parser *p, sched_case *c, const char *kw, char *s)
{
    if (!strcmp(kw, "lr0")) return parse_list(p, s, "lr0", N_GROUPS, c->lr0, &c->nlr0);
    if (!strcmp(kw, "metric")) return parse_list(p, s, "metric", MAX_EPOCHS, c->metric, &c->nmetric);
    if (!strcmp(kw, "epochs")) return parse_list(p, s, "epochs", MAX_EPOCHS, c->epochs, &c->nepochs);
    if (!strcmp(kw, "lr") || !strcmp(kw, "mom")) {
        int64_t g;
        if (!fx_int(p, fx_token(&s), "group", 0, N_GROUPS - 1, &g)) return false;
        return kw[0] == 'l' ? parse_list(p, s, "lr", MAX_EPOCHS + 1, c->lr[g], &c->nlr[g])
                            : parse_list(p, s, "mom", MAX_EPOCHS + 1, c->mom[g], &c->nmom[g]);
    }
    if (!strcmp(kw, "optim")) {
        int kind = 0;
        if (!parse_kind(p, fx_token(&s), optim_kinds, NB_OPTIM_KIND_COUNT, &kind)) return false;
        c->okind = (nb_optim_kind)kind;
        c->oopts = nb_optim_defaults(c->okind);
        return parse_pairs(p, s, &c->oopts, optim_fields, (int)(sizeof optim_fields / sizeof *optim_fields));
    }
    if (!strcmp(kw, "opt")) {
        char *key = fx_token(&s);
        if (key && !strcmp(key, "milestones")) {
            double v[NB_SCHED_MAX_MILESTONES];
            if (!parse_list(p, s, "milestones", NB_SCHED_MAX_MILESTONES, v, &c->opts.n_milestones)) return false;
            for (int i = 0; i < c->opts.n_milestones; i++) c->opts.milestones[i] = (int64_t)v[i];
            return true;
        }
        return parse_field(p, key, s, &c->opts, sched_fields, (int)(sizeof sched_fields / sizeof *sched_fields));
    }
    return fx_fail(p, "unexpected \"%s\" in schedule case %s", kw, c->name);
}

static bool finish_case(fx_parser *p, const optim_case *oc, const sched_case *sc, const lbfgs_case *lc)
{
    if (oc && oc->nrec == 0) return fx_fail(p, "case %s: no records", oc->name);
    if (lc && (lc->nrec == 0 || lc->nloss != lc->nrec || lc->nevals != lc->nrec || lc->niters != lc->nrec))
        return fx_fail(p, "case %s: needs a record, a loss, evals and iters for every step", lc->name);
    if (sc) {
        if (sc->nlr[0] < 2 || sc->nlr[1] != sc->nlr[0]) return fx_fail(p, "case %s: no lr values for both groups", sc->name);
        if (sc->nlr0 != N_GROUPS || sc->lr0[0] <= 0 || sc->lr0[1] <= 0) return fx_fail(p, "case %s: no lr0", sc->name);
        if ((sc->kind == NB_SCHED_PLATEAU) != (sc->nmetric > 0))
            return fx_fail(p, "case %s: metric lines go with plateau schedules, and only with them", sc->name);
        if (sc->nmetric && sc->nmetric != sc->nlr[0] - 1)
            return fx_fail(p, "case %s: %d metrics for %d epochs", sc->name, sc->nmetric, sc->nlr[0] - 1);
        if (sc->nepochs && sc->nepochs != sc->nlr[0] - 1)
            return fx_fail(p, "case %s: %d epochs for %d lr values", sc->name, sc->nepochs, sc->nlr[0]);
        if ((sc->nmom[0] || sc->nmom[1]) && (sc->nmom[0] != sc->nlr[0] || sc->nmom[1] != sc->nlr[0]))
            return fx_fail(p, "case %s: mom lines need a value per lr value, for both groups", sc->name);
        if (sc->kind == NB_SCHED_LAMBDA && (sc->opts.fn || sc->opts.fn_user))
            return fx_fail(p, "case %s: lambda: fn is set by the test", sc->name);
    }
    return true;
}

/* Parse text (modified in place) into f; false with p->err set on failure. */
static bool parse(fx_parser *p, char *text, fixture *f)
{
    bool header = false;
    optim_case *oc = NULL;
    sched_case *sc = NULL;
    lbfgs_case *lc = NULL;
    char *kw, *line;
    while ((kw = fx_next_directive(p, &text, &line))) {
        if (!header) {
            if (!fx_header(p, kw, line, FX_HEADER, FX_VERSION)) return false;
            header = true;
        } else if (!strcmp(kw, "data")) {
            if (f->n_optim || f->n_sched || f->n_lbfgs) return fx_fail(p, "data after the first case");
            if (!parse_data(p, f, line)) return false;
        } else if (!strcmp(kw, "case")) {
            if (oc || sc || lc) return fx_fail(p, "case inside a case: missing end");
            if (!check_data(p, f)) return false;
            char *what = fx_token(&line);
            int kind;
            if (what && !strcmp(what, "optim")) {
                if (f->n_optim == MAX_CASES) return fx_fail(p, "more than %d optimizer cases", MAX_CASES);
                oc = &f->optim[f->n_optim++];
                if (!fx_name(p, fx_token(&line), "case name", oc->name)) return false;
                if (!parse_kind(p, fx_token(&line), optim_kinds, NB_OPTIM_KIND_COUNT, &kind)) return false;
                oc->kind = (nb_optim_kind)kind;
                oc->opts = nb_optim_defaults(oc->kind);
                oc->line = p->line;
            } else if (what && !strcmp(what, "sched")) {
                if (f->n_sched == MAX_CASES) return fx_fail(p, "more than %d schedule cases", MAX_CASES);
                sc = &f->sched[f->n_sched++];
                if (!fx_name(p, fx_token(&line), "case name", sc->name)) return false;
                if (!parse_kind(p, fx_token(&line), sched_kinds, NB_SCHED_KIND_COUNT, &kind)) return false;
                sc->kind = (nb_sched_kind)kind;
                sc->opts = nb_sched_defaults(sc->kind);
                sc->okind = NB_SGD;
                sc->oopts = nb_optim_defaults(NB_SGD);
                sc->line = p->line;
            } else if (what && !strcmp(what, "lbfgs")) {
                if (f->n_lbfgs == MAX_CASES) return fx_fail(p, "more than %d L-BFGS cases", MAX_CASES);
                lc = &f->lbfgs[f->n_lbfgs++];
                if (!fx_name(p, fx_token(&line), "case name", lc->name)) return false;
                char *prob = fx_token(&line);
                if (!prob || (strcmp(prob, "rosenbrock") && strcmp(prob, "logreg")))
                    return fx_fail(p, "unknown problem \"%s\" (rosenbrock, logreg)", prob ? prob : "");
                lc->problem = strcmp(prob, "rosenbrock") != 0;
                lc->opts = nb_optim_defaults(NB_LBFGS);
                lc->line = p->line;
            } else {
                return fx_fail(p, "case: expected optim, lbfgs or sched");
            }
            if (fx_token(&line)) return fx_fail(p, "case: unexpected text after the kind");
        } else if (!strcmp(kw, "end")) {
            if (!oc && !sc && !lc) return fx_fail(p, "end outside a case");
            if (!finish_case(p, oc, sc, lc)) return false;
            oc = NULL;
            sc = NULL;
            lc = NULL;
        } else if (oc) {
            if (!parse_optim_line(p, f, oc, kw, line)) return false;
        } else if (lc) {
            if (!parse_lbfgs_line(p, f, lc, kw, line)) return false;
        } else if (sc) {
            if (!parse_sched_line(p, sc, kw, line)) return false;
        } else {
            return fx_fail(p, "unexpected \"%s\" outside a case", kw);
        }
    }
    if (!header) return fx_fail(p, "empty file");
    if (oc || sc || lc) return fx_fail(p, "the last case has no end");
    return true;
}

static void fixture_free(fixture *f)
{
    fx_tensor_free(&f->X);
    fx_tensor_free(&f->Y);
    fx_tensor_free(&f->W0);
    fx_tensor_free(&f->b0);
    fx_tensor *l[] = {&f->RA0, &f->RB0, &f->LX, &f->LY, &f->LW0, &f->LC0};
    for (int i = 0; i < 6; i++) fx_tensor_free(l[i]);
    free(f->optim);
    free(f->sched);
    free(f->lbfgs);
}

/* ---------------------------------------------------------------------------------------------- */
/* The problem in nabla                                                                            */
/* ---------------------------------------------------------------------------------------------- */

typedef struct model {
    nb_params *ps;
    nb_tensor *W, *b; /* owned by ps */
    nb_tensor *X, *Y; /* owned here */
    double inv_n;
} model;

static int model_init(model *m, const fixture *f, nb_dtype dt)
{
    *m = (model){0};
    m->ps = nb_params_new();
    m->W = nb_params_add(m->ps, "W", fx_leaf(&f->W0, dt));
    m->b = nb_params_add(m->ps, "b", fx_leaf(&f->b0, dt));
    m->X = fx_leaf(&f->X, dt);
    m->Y = fx_leaf(&f->Y, dt);
    m->inv_n = 1.0 / (double)f->X.shape[0];
    return m->ps && m->W && m->b && m->X && m->Y;
}

static void model_free(model *m)
{
    nb_params_free(m->ps);
    nb_tensor_free(m->X);
    nb_tensor_free(m->Y);
}

/* sum((X W + b - Y)^2) / n + 0.1 sum(W^4), on the current tape (written as gen_optim_fixtures.py's) */
static nb_tensor *model_loss(const model *m)
{
    nb_tensor *r = nb_sub(nb_add(nb_matmul(m->X, m->W), m->b), m->Y);
    nb_tensor *fit = nb_div_scalar(nb_sum_all(nb_pow_scalar(r, 2)), 1.0 / m->inv_n);
    return nb_add(fit, nb_mul_scalar(nb_sum_all(nb_pow_scalar(m->W, 4)), 0.1));
}

/* zero_grad, loss, backward, step; 0 on success */
static int train_step(const model *m, nb_optim *opt, nb_tape *tape)
{
    nb_optim_zero_grad(opt);
    nb_tensor *loss = model_loss(m);
    int ok = loss && nb_backward(loss, NULL, 0) == NB_OK;
    nb_tape_reset(tape);
    return ok && nb_optim_step(opt) == NB_OK ? 0 : -1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Comparison with the worst error kept per case (every value compared is a check)                 */
/* ---------------------------------------------------------------------------------------------- */

/* nabla's tensor got, read by flat index, against PyTorch's want[0..n) */
static void compare(fx_err *e, const char *ctx, const char *what, const nb_tensor *got, const double *want, int64_t n,
                    const fx_tol *tol)
{
    nbt_checks += (int)n;
    nbt_failures += (int)fx_compare(e, ctx, what, got, want, n, tol);
}

/* ---------------------------------------------------------------------------------------------- */
/* Optimizer trajectories                                                                          */
/* ---------------------------------------------------------------------------------------------- */

static long g_traj_values, g_steps_compared;

/* Replay case c with a model of dtype dt for `steps` steps (0: all recorded) and compare. */
/* Replay case c with a model of dtype dt for `steps` steps (0: all recorded) and compare. A frozen b
 * is frozen by nb_tensor_set_requires_grad, or with freeze_group by its group's frozen flag (b then
 * in a group of its own); frozen, it must keep its values bit for bit. */
static void run_optim_case_as(const fixture *f, const optim_case *c, nb_dtype dt, int steps, fx_err *e,
                              bool freeze_group)
{
    model m;
    nb_tape *tape = nb_tape_new();
    nb_optim *opt = NULL;
    int last = steps ? steps : c->at[c->nrec - 1];
    int nw = (int)f->W0.numel, np = nw + (int)f->b0.numel;
    /* the "max rel" reported is the plain relative error (rel_floor 0) */
    fx_tol tol = dt == NB_F64 ? (fx_tol){TRAJ_RTOL, TRAJ_ATOL, 0} : (fx_tol){F32_RTOL, F32_ATOL, 0};
    char ctx[FX_MAX_NAME + 48];
    if (!model_init(&m, f, dt) || !tape || nb_tape_begin(tape) != NB_OK) {
        CHECK(0, "%s: setup failed: %s", c->name, nb_error_message());
        goto done;
    }
    nb_optim_group b_group = {.prefix = "b", .opts = c->has_group ? c->group_opts : c->opts};
    bool grouped = c->has_group || freeze_group;
    opt = nb_optim_new_groups(c->kind, m.ps, &c->opts, grouped ? 1 : 0, grouped ? &b_group : NULL);
    CHECK(opt != NULL, "%s: nb_optim_new: %s", c->name, nb_error_message());
    if (!opt) goto end;
    CHECK(nb_optim_group_count(opt) == (grouped ? 2 : 1) && nb_optim_param_group(opt, 1) == (grouped ? 1 : 0),
          "%s: groups", c->name);
    double b_frozen[MAX_P];
    for (int step = 1, r = 0; step <= last; step++) {
        bool frozen = c->freeze_from && step >= c->freeze_from && step <= c->freeze_to;
        if (freeze_group)
            nb_optim_group_set_frozen(opt, 1, frozen);
        else
            nb_tensor_set_requires_grad(m.b, !frozen);
        if (frozen && step == c->freeze_from)
            for (int i = 0; i < np - nw; i++) b_frozen[i] = nb_tensor_get(m.b, i);
        if (train_step(&m, opt, tape)) {
            CHECK(0, "%s: step %d failed: %s", c->name, step, nb_error_message());
            break;
        }
        if (frozen) {
            int same = 1;
            for (int i = 0; i < np - nw; i++) same &= nb_tensor_get(m.b, i) == b_frozen[i];
            CHECK(same, "%s (%s, frozen by %s): b moved at step %d", c->name, nb_dtype_name(dt),
                  freeze_group ? "its group" : "requires_grad 0", step);
            CHECK(nb_optim_param_steps(opt, 1) == c->freeze_from - 1, "%s: b's count %lld while frozen", c->name,
                  (long long)nb_optim_param_steps(opt, 1));
        }
        if (r < c->nrec && c->at[r] == step) {
            /* the record holds W then b, flattened */
            snprintf(ctx, sizeof ctx, "%s (%s) after step %d", c->name, nb_dtype_name(dt), step);
            compare(e, ctx, "W", m.W, c->rec[r], nw, &tol);
            compare(e, ctx, "b", m.b, c->rec[r] + nw, np - nw, &tol);
            if (dt == NB_F64) {
                g_traj_values += np;
                g_steps_compared++;
            }
            r++;
        }
    }
    CHECK(nb_optim_steps(opt) == last, "%s: nb_optim_steps %lld, expected %d", c->name,
          (long long)nb_optim_steps(opt), last);
    if (dt == NB_F64 && !steps) {
        /* every state PyTorch has, by name, with its values after the last step; no other */
        CHECK(nb_optim_state_count(opt) == c->nstate, "%s: %d state tensors, PyTorch has %d", c->name,
              nb_optim_state_count(opt), c->nstate);
        for (int k = 0; k < c->nstate; k++) {
            nb_tensor *st = NULL;
            for (int i = 0; i < nb_optim_state_count(opt); i++)
                if (!strcmp(nb_optim_state_name(opt, i), c->sname[k])) st = nb_optim_state_tensor(opt, i);
            CHECK(st != NULL, "%s: no state named %s", c->name, c->sname[k]);
            if (!st) continue;
            CHECK(nb_tensor_numel(st) == c->slen[k], "%s: %s has %lld elements, PyTorch's %d", c->name,
                  c->sname[k], (long long)nb_tensor_numel(st), c->slen[k]);
            snprintf(ctx, sizeof ctx, "%s (%s) after step %d", c->name, nb_dtype_name(dt), last);
            int64_t n = c->slen[k] < nb_tensor_numel(st) ? c->slen[k] : nb_tensor_numel(st);
            compare(e, ctx, c->sname[k], st, c->sval[k], n, &tol);
        }
    }
end:
    nb_tape_end(tape);
done:
    nb_optim_free(opt);
    nb_tape_free(tape);
    model_free(&m);
    CHECK_NO_ERROR();
}

static void run_optim_case(const fixture *f, const optim_case *c, nb_dtype dt, int steps, fx_err *e)
{
    run_optim_case_as(f, c, dt, steps, e, false);
    if (c->freeze_from) run_optim_case_as(f, c, dt, steps, e, true);
}

static void test_trajectories(const fixture *f)
{
    printf("%-30s %8s %12s %12s %12s\n", "optimizer case (f64)", "values", "max rel", "max abs", "f32 max rel");
    for (int k = 0; k < f->n_optim; k++) {
        const optim_case *c = &f->optim[k];
        fx_err e64 = {0}, e32 = {0};
        run_optim_case(f, c, NB_F64, 0, &e64);
        run_optim_case(f, c, NB_F32, c->freeze_from ? c->freeze_to + 2 : F32_STEPS, &e32);
        printf("%-30s %8lld %12.3g %12.3g %12.3g\n", c->name, e64.compared, e64.max_rel, e64.max_abs, e32.max_rel);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Schedules                                                                                       */
/* ---------------------------------------------------------------------------------------------- */

/* ---------------------------------------------------------------------------------------------- */
/* L-BFGS                                                                                          */
/* ---------------------------------------------------------------------------------------------- */

typedef struct lb_problem {
    int kind; /* 0 rosenbrock: a, b; 1 logreg: w, c */
    nb_params *ps;
    nb_tensor *p0, *p1;       /* owned by ps */
    nb_tensor *X, *y;         /* logreg data, owned here */
    nb_tape *tape;
    int calls;
} lb_problem;

static int lb_init(lb_problem *q, const fixture *f, int kind, nb_dtype dt)
{
    *q = (lb_problem){.kind = kind};
    q->ps = nb_params_new();
    q->tape = nb_tape_new();
    if (kind == 0) {
        q->p0 = nb_params_add(q->ps, "a", fx_leaf(&f->RA0, dt));
        q->p1 = nb_params_add(q->ps, "b", fx_leaf(&f->RB0, dt));
    } else {
        q->p0 = nb_params_add(q->ps, "w", fx_leaf(&f->LW0, dt));
        q->p1 = nb_params_add(q->ps, "c", fx_leaf(&f->LC0, dt));
        q->X = fx_leaf(&f->LX, dt);
        q->y = fx_leaf(&f->LY, dt);
    }
    return q->ps && q->p0 && q->p1 && q->tape && (kind == 0 || (q->X && q->y)) && nb_tape_begin(q->tape) == NB_OK;
}

static void lb_free(lb_problem *q)
{
    nb_tape_end(q->tape);
    nb_tape_free(q->tape);
    nb_params_free(q->ps);
    nb_tensor_free(q->X);
    nb_tensor_free(q->y);
}

/* rosenbrock: sum((1 - a)^2 + 100 (b - a^2)^2); logreg: mean(softplus(z) - y z) + 0.05 sum(w^2),
 * z = X w + c (as gen_optim_fixtures.py writes them) */
static nb_status lb_closure(void *user, double *loss)
{
    lb_problem *q = user;
    q->calls++;
    nb_params_zero_grad(q->ps);
    nb_tensor *l;
    if (q->kind == 0) {
        nb_tensor *fit = nb_pow_scalar(nb_rsub_scalar(1.0, q->p0), 2);
        nb_tensor *curve = nb_mul_scalar(nb_pow_scalar(nb_sub(q->p1, nb_pow_scalar(q->p0, 2)), 2), 100.0);
        l = nb_sum_all(nb_add(fit, curve));
    } else {
        nb_tensor *z = nb_add(nb_squeeze(nb_matmul(q->X, nb_unsqueeze(q->p0, 1)), 1), q->p1);
        nb_tensor *nll = nb_mean_all(nb_sub(nb_softplus(z), nb_mul(q->y, z)));
        l = nb_add(nll, nb_mul_scalar(nb_sum_all(nb_pow_scalar(q->p0, 2)), 0.05));
    }
    nb_status st = l ? nb_backward(l, NULL, 0) : nb_error_code();
    if (st == NB_OK) *loss = nb_tensor_get(l, 0);
    nb_tape_reset(q->tape);
    return st;
}

/* the optimizer's n_iter and func_evals, from its scalars state */
static double lb_scalar(const nb_optim *opt, int which)
{
    for (int i = 0; i < nb_optim_state_count(opt); i++) {
        const char *n = nb_optim_state_name(opt, i);
        size_t len = strlen(n);
        if (len > 8 && !strcmp(n + len - 8, ".scalars")) return nb_tensor_get(nb_optim_state_tensor(opt, i), which);
    }
    return NAN;
}

static long g_lb_values;

static void run_lbfgs_case(const fixture *f, const lbfgs_case *c)
{
    fx_err e = {0};
    const fx_tol tol = {TRAJ_RTOL, TRAJ_ATOL, 0};
    lb_problem q;
    nb_optim *opt = NULL;
    if (!lb_init(&q, f, c->problem, NB_F64)) {
        CHECK(0, "%s: setup: %s", c->name, nb_error_message());
        goto done;
    }
    opt = nb_optim_new(NB_LBFGS, q.ps, &c->opts);
    CHECK(opt != NULL, "%s: nb_optim_new: %s", c->name, nb_error_message());
    int n0 = (int)nb_tensor_numel(q.p0), n1 = (int)nb_tensor_numel(q.p1);
    char ctx[FX_MAX_NAME + 32];
    for (int step = 0; opt && step < c->nrec; step++) {
        double loss = NAN;
        nb_status st = nb_optim_step_closure(opt, lb_closure, &q, &loss);
        CHECK(st == NB_OK, "%s: step %d: %s", c->name, step + 1, nb_error_message());
        if (st) break;
        snprintf(ctx, sizeof ctx, "%s after step %d", c->name, step + 1);
        compare(&e, ctx, "first parameter", q.p0, c->rec[step], n0, &tol);
        compare(&e, ctx, "second parameter", q.p1, c->rec[step] + n0, n1, &tol);
        double got[3] = {loss, lb_scalar(opt, 4), lb_scalar(opt, 3)}, want[3] = {c->loss[step], c->evals[step], c->iters[step]};
        nbt_checks += 3;
        nbt_failures += (int)fx_compare_values(&e, ctx, "loss", got, want, 1, &tol);
        CHECK(got[1] == want[1] && got[2] == want[2], "%s: func_evals %g, n_iter %g; PyTorch %g, %g", ctx, got[1], got[2],
              want[1], want[2]);
        g_lb_values += n0 + n1;
    }
    printf("%-30s %8lld %12.3g %12.3g   (%d closure calls)\n", c->name, e.compared, e.max_rel, e.max_abs, q.calls);
done:
    nb_optim_free(opt);
    lb_free(&q);
    CHECK_NO_ERROR();
}

static void test_lbfgs(const fixture *f)
{
    printf("%-30s %8s %12s %12s\n", "L-BFGS case (f64)", "values", "max rel", "max abs");
    for (int k = 0; k < f->n_lbfgs; k++) run_lbfgs_case(f, &f->lbfgs[k]);
}

/* ---------------------------------------------------------------------------------------------- */
/* Schedules                                                                                       */
/* ---------------------------------------------------------------------------------------------- */

static long g_lr_values;

/* the lambda schedule of the fixture: 1 / (1 + 0.05 epoch) for group 0, 0.95^epoch for group 1 */
static double lambda_factor(int64_t epoch, int group, void *user)
{
    (void)user;
    return group == 0 ? 1.0 / (1.0 + 0.05 * (double)epoch) : pow(0.95, (double)epoch);
}

/* the momentum one-cycle drives: beta1 or momentum */
static double group_momentum(const nb_optim *opt, int g)
{
    nb_optim_opts o;
    nb_optim_group_opts(opt, g, &o);
    nb_optim_kind k = nb_optim_get_kind(opt);
    return k == NB_SGD || k == NB_RMSPROP ? o.momentum : o.beta1;
}

static void run_sched_case(const sched_case *c)
{
    fx_err e = {0};
    const fx_tol tol = {LR_RTOL, 0, 0};
    nb_params *ps = nb_params_new();
    nb_params_add(ps, "p0", nb_tensor_zeros(NB_F64, NB_SHAPE(2)));
    nb_params_add(ps, "p1", nb_tensor_zeros(NB_F64, NB_SHAPE(2)));
    nb_optim_opts oo = c->oopts;
    oo.lr = c->lr0[0];
    nb_optim_group g1 = {.prefix = "p1", .opts = oo};
    g1.opts.lr = c->lr0[1];
    nb_optim *opt = nb_optim_new_groups(c->okind, ps, &oo, 1, &g1);
    nb_sched_opts so = c->opts;
    if (c->kind == NB_SCHED_LAMBDA) so.fn = lambda_factor;
    nb_sched *s = opt ? nb_sched_new(c->kind, opt, &so) : NULL;
    CHECK(s != NULL, "%s: nb_sched_new: %s", c->name, nb_error_message());
    if (s) {
        static double lr[N_GROUPS][MAX_EPOCHS + 1], mom[N_GROUPS][MAX_EPOCHS + 1]; /* at construction, then after each step */
        for (int g = 0; g < N_GROUPS; g++) {
            lr[g][0] = nb_optim_group_lr(opt, g);
            mom[g][0] = group_momentum(opt, g);
        }
        for (int ep = 1; ep < c->nlr[0]; ep++) {
            double got = c->nepochs ? nb_sched_set_epoch(s, c->epochs[ep - 1])
                                    : nb_sched_step(s, c->nmetric ? c->metric[ep - 1] : NAN);
            CHECK(got == nb_optim_lr(opt), "%s: epoch %d: the step returned %g, the optimizer has %g", c->name, ep, got,
                  nb_optim_lr(opt));
            for (int g = 0; g < N_GROUPS; g++) {
                lr[g][ep] = nb_optim_group_lr(opt, g);
                mom[g][ep] = group_momentum(opt, g);
            }
        }
        for (int g = 0; g < N_GROUPS; g++) {
            char what[32];
            snprintf(what, sizeof what, "group %d lr", g);
            nbt_checks += c->nlr[g];
            nbt_failures += (int)fx_compare_values(&e, c->name, what, lr[g], c->lr[g], c->nlr[g], &tol);
            g_lr_values += c->nlr[g];
            if (c->nmom[g]) {
                snprintf(what, sizeof what, "group %d momentum", g);
                nbt_checks += c->nmom[g];
                nbt_failures += (int)fx_compare_values(&e, c->name, what, mom[g], c->mom[g], c->nmom[g], &tol);
            }
        }
    }
    printf("%-30s %8lld %12.3g %12.3g\n", c->name, e.compared, e.max_rel, e.max_abs);
    nb_sched_free(s);
    nb_optim_free(opt);
    nb_params_free(ps);
    CHECK_NO_ERROR();
}

static void test_schedules(const fixture *f)
{
    printf("%-30s %8s %12s %12s\n", "schedule case", "values", "max rel", "max abs");
    for (int k = 0; k < f->n_sched; k++) run_sched_case(&f->sched[k]);
}

/* ---------------------------------------------------------------------------------------------- */
/* Tests without PyTorch                                                                           */
/* ---------------------------------------------------------------------------------------------- */

/* A collection: W [2, 3] f64, b [3] f64, c [2] f32 (trainable), a buffer, and "unused" [2] f64 that
 * no loss reaches. */
typedef struct small {
    nb_params *ps;
    nb_tensor *W, *b, *c, *buf, *unused;
} small;

static void small_init(small *s)
{
    s->ps = nb_params_new();
    s->W = nb_params_add(s->ps, "W", nb_tensor_from_data(NB_F64, NB_SHAPE(2, 3), (const double[]){1, -2, 3, -4, 5, -6}));
    s->b = nb_params_add(s->ps, "b", nb_tensor_from_data(NB_F64, NB_SHAPE(3), (const double[]){0.5, -0.25, 2}));
    s->c = nb_params_add(s->ps, "c", nb_tensor_from_data(NB_F32, NB_SHAPE(2), (const float[]){1.5f, -0.75f}));
    s->buf = nb_params_add_buffer(s->ps, "running", nb_tensor_full(NB_F64, NB_SHAPE(2), 7.0));
    s->unused = nb_params_add(s->ps, "unused", nb_tensor_full(NB_F64, NB_SHAPE(2), 0.125));
}

/* Gradients: W <- GW, b <- Gb, c <- Gc exactly (backward of sum(W GW) + sum(b Gb) + sum(c Gc)). */
static const double GW[6] = {3, -4, 12, 0.5, -0.5, 1}, Gb[3] = {-2, 0.25, 6};
static const float Gc[2] = {4.0f, -1.5f};

static void small_set_grads(small *s, nb_tape *tape)
{
    nb_params_zero_grad(s->ps);
    nb_tensor *gw = nb_constant(NB_F64, NB_SHAPE(2, 3), GW), *gb = nb_constant(NB_F64, NB_SHAPE(3), Gb);
    nb_tensor *gc = nb_constant(NB_F32, NB_SHAPE(2), Gc);
    nb_tensor *l = nb_add(nb_add(nb_sum_all(nb_mul(s->W, gw)), nb_sum_all(nb_mul(s->b, gb))),
                          nb_cast(nb_sum_all(nb_mul(s->c, gc)), NB_F64));
    CHECK(l && nb_backward(l, NULL, 0) == NB_OK, "small_set_grads: %s", nb_error_message());
    nb_tape_reset(tape);
}

static double grad_at(const nb_tensor *t, int i) { return nb_tensor_get(nb_tensor_grad(t), i); }

static void test_clip(void)
{
    small s;
    small_init(&s);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    double ss = 0;
    for (int i = 0; i < 6; i++) ss += GW[i] * GW[i];
    for (int i = 0; i < 3; i++) ss += Gb[i] * Gb[i];
    for (int i = 0; i < 2; i++) ss += (double)Gc[i] * Gc[i];
    double norm = sqrt(ss); /* 15.5... */

    /* below the threshold: the norm is returned and nothing changes */
    small_set_grads(&s, tape);
    double got = nb_clip_grad_norm(s.ps, norm * 1.5);
    CHECK_CLOSE(got, norm, 1e-15, 0);
    for (int i = 0; i < 6; i++) CHECK(grad_at(s.W, i) == GW[i], "W.grad[%d] changed below the threshold", i);
    for (int i = 0; i < 2; i++) CHECK(grad_at(s.c, i) == Gc[i], "c.grad[%d] changed below the threshold", i);
    CHECK(nb_tensor_grad(s.unused) == NULL, "a parameter without a gradient got one");

    /* above: scaled by max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_ */
    const double max_norm = 2.0, coef = max_norm / (norm + 1e-6);
    got = nb_clip_grad_norm(s.ps, max_norm);
    CHECK_CLOSE(got, norm, 1e-15, 0);
    double ss2 = 0;
    for (int i = 0; i < 6; i++) {
        CHECK_CLOSE(grad_at(s.W, i), GW[i] * coef, 1e-15, 0);
        ss2 += grad_at(s.W, i) * grad_at(s.W, i);
    }
    for (int i = 0; i < 3; i++) {
        CHECK_CLOSE(grad_at(s.b, i), Gb[i] * coef, 1e-15, 0);
        ss2 += grad_at(s.b, i) * grad_at(s.b, i);
    }
    for (int i = 0; i < 2; i++) {
        CHECK_CLOSE(grad_at(s.c, i), Gc[i] * coef, 1e-7, 0); /* float32 gradient */
        ss2 += grad_at(s.c, i) * grad_at(s.c, i);
    }
    CHECK_CLOSE(sqrt(ss2), max_norm, 1e-6, 0);
    CHECK_CLOSE(nb_clip_grad_norm(s.ps, 100.0), sqrt(ss2), 1e-12, 0); /* the new norm, reported */

    /* clamp by value */
    small_set_grads(&s, tape);
    CHECK(nb_clip_grad_value(s.ps, 2.0) == NB_OK, "nb_clip_grad_value: %s", nb_error_message());
    for (int i = 0; i < 6; i++) CHECK(grad_at(s.W, i) == fmin(fmax(GW[i], -2.0), 2.0), "W.grad[%d] = %g", i, grad_at(s.W, i));
    for (int i = 0; i < 3; i++) CHECK(grad_at(s.b, i) == fmin(fmax(Gb[i], -2.0), 2.0), "b.grad[%d] = %g", i, grad_at(s.b, i));
    for (int i = 0; i < 2; i++) CHECK(grad_at(s.c, i) == fmin(fmax(Gc[i], -2.0), 2.0), "c.grad[%d] = %g", i, grad_at(s.c, i));
    CHECK(nb_tensor_grad(s.unused) == NULL, "a parameter without a gradient got one");

    /* errors */
    CHECK_ERROR(isnan(nb_clip_grad_norm(s.ps, 0.0)), NB_ERR_ARG, "max_norm");
    CHECK_ERROR(isnan(nb_clip_grad_norm(NULL, 1.0)), NB_ERR_ARG, "nb_clip_grad_norm");
    CHECK_ERROR(nb_clip_grad_value(s.ps, -1.0) != NB_OK, NB_ERR_ARG, "clip");
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_params_free(s.ps);
    CHECK_NO_ERROR();
}

/* Parameters set to a pattern that identifies epoch e. */
static void set_epoch_values(small *s, int e)
{
    for (int i = 0; i < 6; i++) nb_tensor_set(s->W, i, 100.0 * e + i + 0.5);
    for (int i = 0; i < 3; i++) nb_tensor_set(s->b, i, -100.0 * e - i);
    for (int i = 0; i < 2; i++) nb_tensor_set(s->c, i, (float)(0.25 * e + i));
}

static int has_epoch_values(const small *s, int e)
{
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= nb_tensor_get(s->W, i) == 100.0 * e + i + 0.5;
    for (int i = 0; i < 3; i++) ok &= nb_tensor_get(s->b, i) == -100.0 * e - i;
    for (int i = 0; i < 2; i++) ok &= nb_tensor_get(s->c, i) == (double)(float)(0.25 * e + i);
    return ok;
}

/* Feed metrics[0..n) (setting the parameters to epoch e's values before each); returns the epoch at
 * which update returned 1 (-1: never); every return before it must be 0. */
static int feed(nb_early_stop *es, small *s, const double *metrics, int n)
{
    for (int e = 0; e < n; e++) {
        set_epoch_values(s, e);
        int r = nb_early_stop_update(es, metrics[e]);
        CHECK(r == 0 || r == 1, "nb_early_stop_update returned %d at epoch %d: %s", r, e, nb_error_message());
        if (r == 1) return e;
    }
    return -1;
}

static void test_early_stop(void)
{
    small s;
    small_init(&s);

    /* minimise, patience 3, min_delta 0.01: improvements at 0, 1, 3 (0.795 is not 0.01 below 0.8,
     * 0.695 and 0.691 not below 0.69); stops at the third epoch without one, 6 */
    nb_early_stop *es = nb_early_stop_new(s.ps, 3, 0.01, 0);
    CHECK(es != NULL, "nb_early_stop_new: %s", nb_error_message());
    CHECK(nb_early_stop_best_epoch(es) == -1, "best epoch before any update: %lld", (long long)nb_early_stop_best_epoch(es));
    set_epoch_values(&s, 42);
    CHECK(nb_early_stop_restore(es) == NB_OK && has_epoch_values(&s, 42), "restore before any update changed the parameters");
    const double down[] = {1.0, 0.8, 0.795, 0.7, 0.695, 0.691, 0.6905, 0.1};
    int stop = feed(es, &s, down, 8);
    CHECK(stop == 6, "minimise: stopped at epoch %d, expected 6", stop);
    CHECK(nb_early_stop_best(es) == 0.7, "minimise: best %g, expected 0.7", nb_early_stop_best(es));
    CHECK(nb_early_stop_best_epoch(es) == 3, "minimise: best epoch %lld, expected 3", (long long)nb_early_stop_best_epoch(es));
    CHECK(has_epoch_values(&s, 6), "the parameters were not those of epoch 6 before restoring");
    CHECK(nb_early_stop_restore(es) == NB_OK, "restore: %s", nb_error_message());
    CHECK(has_epoch_values(&s, 3), "restore did not put back the parameters of epoch 3");
    CHECK(nb_tensor_get(s.buf, 0) == 7.0, "restore changed a buffer");
    nb_early_stop_free(es);

    /* maximise, patience 2, min_delta 0: a tie is not an improvement */
    es = nb_early_stop_new(s.ps, 2, 0.0, 1);
    const double up[] = {0.5, 0.6, 0.6, 0.7, 0.65, 0.7, 0.9};
    stop = feed(es, &s, up, 7);
    CHECK(stop == 5, "maximise: stopped at epoch %d, expected 5", stop);
    CHECK(nb_early_stop_best(es) == 0.7 && nb_early_stop_best_epoch(es) == 3, "maximise: best %g at %lld, expected 0.7 at 3",
          nb_early_stop_best(es), (long long)nb_early_stop_best_epoch(es));
    nb_early_stop_restore(es);
    CHECK(has_epoch_values(&s, 3), "maximise: restore did not put back the parameters of epoch 3");
    nb_early_stop_free(es);

    /* patience 0: the first epoch without improvement stops; improvements reset the count */
    es = nb_early_stop_new(s.ps, 0, 0.0, 0);
    const double z[] = {3, 2, 1, 1};
    stop = feed(es, &s, z, 4);
    CHECK(stop == 3 && nb_early_stop_best_epoch(es) == 2, "patience 0: stopped at %d, best epoch %lld", stop,
          (long long)nb_early_stop_best_epoch(es));
    nb_early_stop_free(es);

    /* errors */
    es = nb_early_stop_new(s.ps, 1, 0.0, 0);
    CHECK_ERROR(nb_early_stop_update(es, NAN) == -1, NB_ERR_ARG, "NaN");
    nb_early_stop_free(es);
    nb_early_stop *bad = NULL;
    CHECK_ERROR((bad = nb_early_stop_new(s.ps, -1, 0.0, 0)) == NULL, NB_ERR_ARG, "patience");
    nb_early_stop_free(bad);
    CHECK_ERROR((bad = nb_early_stop_new(s.ps, 1, -0.5, 0)) == NULL, NB_ERR_ARG, "min_delta");
    nb_early_stop_free(bad);
    CHECK_ERROR(nb_early_stop_restore(NULL) != NB_OK, NB_ERR_ARG, "NULL");
    nb_early_stop_free(NULL);
    nb_params_free(s.ps);
    CHECK_NO_ERROR();
}

/* Steps of every optimizer (with weight decay where it has one) on the small collection: parameters
 * that no loss reaches keep their values bit for bit, and so do buffers. */
static void test_no_grad_untouched(void)
{
    for (int k = 0; k < NB_OPTIM_KIND_COUNT; k++) {
        if (k == NB_LBFGS) continue; /* steps with a closure: test_lbfgs_known */
        small s;
        small_init(&s);
        nb_tape *tape = nb_tape_new();
        nb_tape_begin(tape);
        nb_optim_opts o = nb_optim_defaults((nb_optim_kind)k);
        o.weight_decay = 0.1;
        o.momentum = k == NB_SGD || k == NB_RMSPROP ? 0.9 : 0;
        nb_optim *opt = nb_optim_new((nb_optim_kind)k, s.ps, &o);
        CHECK(opt != NULL, "%s: %s", optim_kinds[k], nb_error_message());
        double w0 = nb_tensor_get(s.W, 0);
        for (int step = 0; opt && step < 3; step++) {
            small_set_grads(&s, tape);
            CHECK(nb_optim_step(opt) == NB_OK, "%s: step: %s", optim_kinds[k], nb_error_message());
        }
        CHECK(nb_tensor_get(s.W, 0) != w0, "%s: W did not move", optim_kinds[k]);
        CHECK(nb_tensor_grad(s.unused) == NULL, "%s: unused got a gradient", optim_kinds[k]);
        for (int i = 0; i < 2; i++) {
            CHECK(nb_tensor_get(s.unused, i) == 0.125, "%s: unused[%d] = %.17g, changed without a gradient",
                  optim_kinds[k], i, nb_tensor_get(s.unused, i));
            CHECK(nb_tensor_get(s.buf, i) == 7.0, "%s: buffer changed", optim_kinds[k]);
        }
        /* and its state stays at its initial value */
        for (int i = 0; opt && i < nb_optim_state_count(opt); i++) {
            const char *name = nb_optim_state_name(opt, i);
            if (strncmp(name, "unused.", 7)) continue;
            nb_tensor *st = nb_optim_state_tensor(opt, i);
            double init = strstr(name, "mu_product") ? 1.0 : 0.0;
            for (int j = 0; j < nb_tensor_numel(st); j++)
                CHECK(nb_tensor_get(st, j) == init, "%s: state %s changed without a gradient", optim_kinds[k], name);
        }
        nb_optim_free(opt);
        nb_tape_end(tape);
        nb_tape_free(tape);
        nb_params_free(s.ps);
    }
    CHECK_NO_ERROR();
}

/* Bias correction counts each parameter's own steps, as PyTorch's per-parameter state['step']: a
 * parameter that first gets a gradient at the optimizer's 4th step takes Adam's first step then,
 * p - lr g / (|g| + eps) (m and v bias-corrected to g and g^2). */
static void test_late_param(void)
{
    small s;
    small_init(&s);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    nb_optim *opt = nb_optim_new(NB_ADAM, s.ps, NULL);
    for (int step = 0; step < 3; step++) {
        small_set_grads(&s, tape);
        nb_optim_step(opt);
    }
    const double gu[2] = {2.0, -0.5}, lr = 1e-3, eps = 1e-8;
    double w3 = nb_tensor_get(s.W, 0);
    nb_params_zero_grad(s.ps);
    nb_tensor *l = nb_add(nb_sum_all(nb_mul(s.W, nb_constant(NB_F64, NB_SHAPE(2, 3), GW))),
                          nb_sum_all(nb_mul(s.unused, nb_constant(NB_F64, NB_SHAPE(2), gu))));
    CHECK(l && nb_backward(l, NULL, 0) == NB_OK, "late parameter: %s", nb_error_message());
    nb_tape_reset(tape);
    CHECK(nb_optim_step(opt) == NB_OK, "late parameter: step: %s", nb_error_message());
    for (int i = 0; i < 2; i++)
        CHECK_CLOSE(nb_tensor_get(s.unused, i), 0.125 - lr * gu[i] / (fabs(gu[i]) + eps), 1e-15, 0);
    CHECK(nb_tensor_get(s.W, 0) != w3, "W did not move at step 4");
    CHECK(nb_optim_steps(opt) == 4, "nb_optim_steps %lld, expected 4", (long long)nb_optim_steps(opt));
    nb_optim_free(opt);
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_params_free(s.ps);
    CHECK_NO_ERROR();
}

/* The state tensors: names "<param>.<torch key>", in parameter order, the parameter's shape and dtype;
 * buffers have none. */
static void check_states(nb_optim_kind kind, const nb_optim_opts *o, const small *s, const char *const *expect)
{
    nb_optim *opt = nb_optim_new(kind, s->ps, o);
    CHECK(opt != NULL, "%s: %s", optim_kinds[kind], nb_error_message());
    if (!opt) return;
    int n = 0;
    while (expect[n]) n++;
    CHECK(nb_optim_state_count(opt) == n, "%s: %d states, expected %d", optim_kinds[kind], nb_optim_state_count(opt), n);
    for (int i = 0; i < n && i < nb_optim_state_count(opt); i++) {
        const char *name = nb_optim_state_name(opt, i);
        CHECK(name && !strcmp(name, expect[i]), "%s: state %d is %s, expected %s", optim_kinds[kind], i,
              name ? name : "(null)", expect[i]);
        nb_tensor *st = nb_optim_state_tensor(opt, i);
        char pname[FX_MAX_NAME];
        snprintf(pname, sizeof pname, "%.*s", (int)strcspn(expect[i], "."), expect[i]);
        nb_tensor *p = nb_params_find(s->ps, pname);
        CHECK(st && nb_tensor_numel(st) == nb_tensor_numel(p) && nb_tensor_dtype(st) == nb_tensor_dtype(p),
              "%s: state %s does not match its parameter's shape or dtype", optim_kinds[kind], expect[i]);
        double init = kind == NB_ADAGRAD ? o->initial_accumulator : 0.0;
        for (int j = 0; st && j < nb_tensor_numel(st); j++)
            CHECK(nb_tensor_get(st, j) == init, "%s: %s[%d] = %g before any step", optim_kinds[kind], expect[i], j,
                  nb_tensor_get(st, j));
    }
    CHECK(nb_optim_state_name(opt, n) == NULL && nb_optim_state_tensor(opt, n) == NULL &&
              nb_optim_state_name(opt, -1) == NULL,
          "%s: a state out of range", optim_kinds[kind]);
    CHECK(nb_optim_get_kind(opt) == kind, "%s: nb_optim_get_kind", optim_kinds[kind]);
    CHECK(nb_optim_steps(opt) == 0, "%s: steps before any step", optim_kinds[kind]);
    nb_optim_free(opt);
}

static void test_state_names(void)
{
    small s;
    small_init(&s);
    nb_optim_opts o = nb_optim_defaults(NB_SGD);
    check_states(NB_SGD, &o, &s, (const char *const[]){NULL});
    o.momentum = 0.9;
    check_states(NB_SGD, &o, &s,
                 (const char *const[]){"W.momentum_buffer", "b.momentum_buffer", "c.momentum_buffer",
                                       "unused.momentum_buffer", NULL});
    o = nb_optim_defaults(NB_ADAM);
    check_states(NB_ADAM, &o, &s,
                 (const char *const[]){"W.exp_avg", "W.exp_avg_sq", "b.exp_avg", "b.exp_avg_sq", "c.exp_avg",
                                       "c.exp_avg_sq", "unused.exp_avg", "unused.exp_avg_sq", NULL});
    o = nb_optim_defaults(NB_ADAMW);
    o.amsgrad = 1;
    check_states(NB_ADAMW, &o, &s,
                 (const char *const[]){"W.exp_avg", "W.exp_avg_sq", "W.max_exp_avg_sq", "b.exp_avg", "b.exp_avg_sq",
                                       "b.max_exp_avg_sq", "c.exp_avg", "c.exp_avg_sq", "c.max_exp_avg_sq",
                                       "unused.exp_avg", "unused.exp_avg_sq", "unused.max_exp_avg_sq", NULL});
    o = nb_optim_defaults(NB_RMSPROP);
    check_states(NB_RMSPROP, &o, &s,
                 (const char *const[]){"W.square_avg", "b.square_avg", "c.square_avg", "unused.square_avg", NULL});
    o.centered = 1;
    o.momentum = 0.5;
    check_states(NB_RMSPROP, &o, &s,
                 (const char *const[]){"W.square_avg", "W.grad_avg", "W.momentum_buffer", "b.square_avg", "b.grad_avg",
                                       "b.momentum_buffer", "c.square_avg", "c.grad_avg", "c.momentum_buffer",
                                       "unused.square_avg", "unused.grad_avg", "unused.momentum_buffer", NULL});
    o = nb_optim_defaults(NB_ADAGRAD);
    o.initial_accumulator = 0.25;
    check_states(NB_ADAGRAD, &o, &s, (const char *const[]){"W.sum", "b.sum", "c.sum", "unused.sum", NULL});

    /* defaults as torch.optim's */
    o = nb_optim_defaults(NB_ADAM);
    CHECK(o.lr == 1e-3 && o.beta1 == 0.9 && o.beta2 == 0.999 && o.eps == 1e-8 && o.weight_decay == 0 && !o.amsgrad,
          "Adam defaults");
    o = nb_optim_defaults(NB_ADAMW);
    CHECK(o.lr == 1e-3 && o.weight_decay == 1e-2, "AdamW defaults");
    o = nb_optim_defaults(NB_RMSPROP);
    CHECK(o.lr == 1e-2 && o.alpha == 0.99 && o.eps == 1e-8 && o.momentum == 0 && !o.centered, "RMSprop defaults");
    o = nb_optim_defaults(NB_ADAGRAD);
    CHECK(o.lr == 1e-2 && o.eps == 1e-10 && o.lr_decay == 0 && o.initial_accumulator == 0, "Adagrad defaults");
    nb_params_free(s.ps);
    CHECK_NO_ERROR();
}

/* nb_optim_new fails; frees the optimizer if it did not. */
static int optim_fails(nb_optim_kind kind, nb_params *ps, const nb_optim_opts *o)
{
    nb_optim *opt = nb_optim_new(kind, ps, o);
    nb_optim_free(opt);
    return opt == NULL;
}

static int sched_fails(nb_sched_kind kind, nb_optim *opt, const nb_sched_opts *o)
{
    nb_sched *s = nb_sched_new(kind, opt, o);
    nb_sched_free(s);
    return s == NULL;
}

static void test_bad_options(void)
{
    small s;
    small_init(&s);
    nb_optim_opts o = nb_optim_defaults(NB_SGD);
    o.lr = -0.1;
    CHECK_ERROR(optim_fails(NB_SGD, s.ps, &o), NB_ERR_ARG, "lr must be >= 0");
    o = nb_optim_defaults(NB_ADAM);
    o.lr = NAN;
    CHECK_ERROR(optim_fails(NB_ADAM, s.ps, &o), NB_ERR_ARG, "lr must be >= 0");
    o = nb_optim_defaults(NB_ADAM);
    o.beta1 = 1.0;
    CHECK_ERROR(optim_fails(NB_ADAM, s.ps, &o), NB_ERR_ARG, "betas must be in [0, 1)");
    o = nb_optim_defaults(NB_ADAMW);
    o.beta2 = 1.5;
    CHECK_ERROR(optim_fails(NB_ADAMW, s.ps, &o), NB_ERR_ARG, "betas must be in [0, 1)");
    o = nb_optim_defaults(NB_ADAM);
    o.beta2 = -0.1;
    CHECK_ERROR(optim_fails(NB_ADAM, s.ps, &o), NB_ERR_ARG, "betas");
    o = nb_optim_defaults(NB_SGD);
    o.nesterov = 1;
    CHECK_ERROR(optim_fails(NB_SGD, s.ps, &o), NB_ERR_ARG, "nesterov needs momentum > 0 and dampening 0");
    o.momentum = 0.9;
    o.dampening = 0.1;
    CHECK_ERROR(optim_fails(NB_SGD, s.ps, &o), NB_ERR_ARG, "nesterov");
    o = nb_optim_defaults(NB_SGD);
    o.weight_decay = -1;
    CHECK_ERROR(optim_fails(NB_SGD, s.ps, &o), NB_ERR_ARG, "weight_decay");
    o = nb_optim_defaults(NB_RMSPROP);
    o.eps = -1e-8;
    CHECK_ERROR(optim_fails(NB_RMSPROP, s.ps, &o), NB_ERR_ARG, "eps");
    o = nb_optim_defaults(NB_ADAGRAD);
    o.lr_decay = -0.5;
    CHECK_ERROR(optim_fails(NB_ADAGRAD, s.ps, &o), NB_ERR_ARG, "lr_decay");
    CHECK_ERROR(optim_fails(NB_OPTIM_KIND_COUNT, s.ps, NULL), NB_ERR_ARG, "unknown kind");
    CHECK_ERROR(optim_fails(NB_SGD, NULL, NULL), NB_ERR_ARG, "nb_optim_new");
    CHECK_ERROR(nb_optim_step(NULL) != NB_OK, NB_ERR_ARG, "NULL");

    nb_optim *opt = nb_optim_new(NB_SGD, s.ps, NULL);
    CHECK(opt != NULL, "nb_optim_new with NULL options: %s", nb_error_message());
    /* nb_optim_set_lr refuses what nb_optim_group_set_lr refuses (it set every group's lr to NaN) */
    CHECK_ERROR((nb_optim_set_lr(opt, NAN), nb_error_code() != NB_OK), NB_ERR_ARG, "nb_optim_set_lr");
    CHECK_ERROR((nb_optim_set_lr(opt, -1), nb_error_code() != NB_OK), NB_ERR_ARG, "lr -1");
    CHECK_ERROR((nb_optim_set_lr(NULL, 0.1), nb_error_code() != NB_OK), NB_ERR_ARG, "NULL");
    CHECK(nb_optim_lr(opt) == 1e-2, "a refused lr was set: %g", nb_optim_lr(opt));
    nb_sched_opts so = nb_sched_defaults(NB_SCHED_COSINE);
    so.t_max = 10;
    so.warmup = 10;
    CHECK_ERROR(sched_fails(NB_SCHED_COSINE, opt, &so), NB_ERR_ARG, "need 0 <= warmup < t_max");
    so.t_max = 5;
    CHECK_ERROR(sched_fails(NB_SCHED_COSINE, opt, &so), NB_ERR_ARG, "warmup < t_max");
    so.t_max = 0;
    so.warmup = 0;
    CHECK_ERROR(sched_fails(NB_SCHED_COSINE, opt, &so), NB_ERR_ARG, "warmup < t_max");
    so = nb_sched_defaults(NB_SCHED_STEP);
    so.step_size = 0;
    CHECK_ERROR(sched_fails(NB_SCHED_STEP, opt, &so), NB_ERR_ARG, "step_size");
    so = nb_sched_defaults(NB_SCHED_PLATEAU);
    so.factor = 1.0;
    CHECK_ERROR(sched_fails(NB_SCHED_PLATEAU, opt, &so), NB_ERR_ARG, "factor");
    so = nb_sched_defaults(NB_SCHED_MULTISTEP);
    so.n_milestones = NB_SCHED_MAX_MILESTONES + 1;
    CHECK_ERROR(sched_fails(NB_SCHED_MULTISTEP, opt, &so), NB_ERR_ARG, "milestones");
    /* one-cycle through a momentum of 0 for sgd (whose buffer exists only for momentum > 0): refused
     * when made, not left half-applied at the step that reaches 0 (the momentum kept its old value
     * and the refusal stayed pending as the thread's error) */
    nb_optim_opts mo = nb_optim_defaults(NB_SGD);
    mo.momentum = 0.9;
    nb_optim *sgdm = nb_optim_new(NB_SGD, s.ps, &mo);
    for (int which = 0; which < 2; which++) {
        so = nb_sched_defaults(NB_SCHED_ONECYCLE);
        so.total_steps = 10;
        if (which) so.max_momentum = 0;
        else so.base_momentum = 0;
        CHECK_ERROR(sched_fails(NB_SCHED_ONECYCLE, sgdm, &so), NB_ERR_ARG, "> 0 as sgd/rmsprop momentum");
    }
    /* a rising phase of no length: said so, not "lr nan at epoch 0" */
    so = nb_sched_defaults(NB_SCHED_ONECYCLE);
    so.total_steps = 10;
    so.pct_start = 0.1;
    CHECK_ERROR(sched_fails(NB_SCHED_ONECYCLE, sgdm, &so), NB_ERR_ARG, "leaves the rising phase no length");
    so.three_phase = 1;
    CHECK_ERROR(sched_fails(NB_SCHED_ONECYCLE, sgdm, &so), NB_ERR_ARG, "leaves the rising phase no length");
    so = nb_sched_defaults(NB_SCHED_ONECYCLE);
    so.total_steps = 10;
    so.base_momentum = 1e-3;
    nb_sched *cyc = nb_sched_new(NB_SCHED_ONECYCLE, sgdm, &so);
    double lowest = 1;
    for (int i = 0; cyc && i < 10; i++) {
        nb_sched_step(cyc, 0);
        nb_optim_opts go;
        nb_optim_group_opts(sgdm, 0, &go);
        lowest = fmin(lowest, go.momentum);
    }
    CHECK(cyc && lowest == 1e-3, "one-cycle: sgd's momentum reaches base_momentum (lowest %g)", lowest);
    CHECK_NO_ERROR();
    nb_sched_free(cyc);
    nb_optim_free(sgdm);
    CHECK_ERROR(sched_fails(NB_SCHED_STEP, NULL, NULL), NB_ERR_ARG, "nb_sched_new");
    CHECK_ERROR(isnan(nb_sched_step(NULL, 0)), NB_ERR_ARG, "NULL");
    CHECK(nb_optim_lr(opt) == 1e-2, "a refused schedule changed the lr to %g", nb_optim_lr(opt));
    nb_optim_free(opt);
    nb_optim_free(NULL);
    nb_sched_free(NULL);
    nb_params_free(s.ps);
    CHECK_NO_ERROR();
}

/* Issue 9, finding 4: a parameter that does not require grad is never updated (its zeroed gradient
 * buffer from earlier steps does not count as a gradient), its state and count are kept, and after
 * unfreezing it continues from them: 3 steps, 3 frozen, 1 more equal 4 steps without freezing, bit
 * for bit (the small problem's gradients are the same every step). */
static void test_freeze(void)
{
    const nb_optim_kind kinds[] = {NB_ADAM, NB_SGD, NB_ADAMW, NB_NADAM, NB_RMSPROP};
    for (int k = 0; k < 5; k++) {
        nb_optim_opts o = nb_optim_defaults(kinds[k]);
        o.momentum = kinds[k] == NB_SGD || kinds[k] == NB_RMSPROP ? 0.9 : 0;
        o.weight_decay = 0.05;
        small a, b;
        small_init(&a);
        small_init(&b);
        nb_tape *tape = nb_tape_new();
        nb_tape_begin(tape);
        nb_optim *oa = nb_optim_new(kinds[k], a.ps, &o), *ob = nb_optim_new(kinds[k], b.ps, &o);
        for (int i = 0; i < 3; i++) {
            small_set_grads(&a, tape);
            nb_optim_step(oa);
        }
        double w[6], st[3][6];
        for (int i = 0; i < 6; i++) w[i] = nb_tensor_get(a.W, i);
        int nst = 0;
        for (int j = 0; j < nb_optim_state_count(oa) && nst < 3; j++)
            if (!strncmp(nb_optim_state_name(oa, j), "W.", 2)) {
                nb_tensor *t = nb_optim_state_tensor(oa, j);
                for (int i = 0; i < 6; i++) st[nst][i] = i < nb_tensor_numel(t) ? nb_tensor_get(t, i) : 0;
                nst++;
            }
        nb_tensor_set_requires_grad(a.W, 0);
        for (int i = 0; i < 3; i++) {
            small_set_grads(&a, tape); /* zero_grad, then a backward that no longer reaches W */
            CHECK(!nb_tensor_has_grad(a.W), "%s: W has a gradient while frozen", optim_kinds[kinds[k]]);
            CHECK(nb_optim_step(oa) == NB_OK, "%s: step", optim_kinds[kinds[k]]);
        }
        int same = 1;
        for (int i = 0; i < 6; i++) same &= nb_tensor_get(a.W, i) == w[i];
        CHECK(same, "%s: a parameter that does not require grad moved", optim_kinds[kinds[k]]);
        for (int j = 0, n = 0; j < nb_optim_state_count(oa) && n < nst; j++)
            if (!strncmp(nb_optim_state_name(oa, j), "W.", 2)) {
                int kept = 1;
                nb_tensor *t = nb_optim_state_tensor(oa, j);
                for (int i = 0; i < nb_tensor_numel(t); i++) kept &= nb_tensor_get(t, i) == st[n][i];
                CHECK(kept, "%s: state %s changed while frozen", optim_kinds[kinds[k]], nb_optim_state_name(oa, j));
                n++;
            }
        CHECK(nb_optim_param_steps(oa, 0) == 3 && nb_optim_param_steps(oa, 1) == 6, "%s: counts %lld, %lld",
              optim_kinds[kinds[k]], (long long)nb_optim_param_steps(oa, 0), (long long)nb_optim_param_steps(oa, 1));
        nb_tensor_set_requires_grad(a.W, 1);
        small_set_grads(&a, tape);
        nb_optim_step(oa);
        for (int i = 0; i < 4; i++) {
            small_set_grads(&b, tape);
            nb_optim_step(ob);
        }
        same = 1;
        for (int i = 0; i < 6; i++) same &= nb_tensor_get(a.W, i) == nb_tensor_get(b.W, i);
        CHECK(same, "%s: after unfreezing, W is not where 4 uninterrupted steps put it", optim_kinds[kinds[k]]);
        nb_optim_free(oa);
        nb_optim_free(ob);
        nb_tape_end(tape);
        nb_tape_free(tape);
        nb_params_free(a.ps);
        nb_params_free(b.ps);
    }
    CHECK_NO_ERROR();
}

/* nb_tensor_has_grad: none before a backward and after zero_grad (the buffer kept, zero), one after a
 * backward (also one that adds zero, and a create-graph one, also after its tape is reset). */
static void test_has_grad(void)
{
    nb_tensor *x = nb_tensor_from_data(NB_F64, NB_SHAPE(2), (const double[]){1, 2});
    nb_tensor_set_requires_grad(x, 1);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    CHECK(!nb_tensor_has_grad(x) && !nb_tensor_has_grad(NULL), "a gradient before any backward");
    nb_backward(nb_sum_all(nb_mul(x, x)), NULL, 0);
    CHECK(nb_tensor_has_grad(x), "no gradient after a backward");
    nb_tensor_zero_grad(x);
    CHECK(!nb_tensor_has_grad(x) && nb_tensor_grad(x) != NULL, "zero_grad: a gradient, or the buffer was freed");
    nb_backward(nb_sum_all(nb_mul_scalar(x, 0.0)), NULL, 0); /* a gradient of zeros is a gradient */
    CHECK(nb_tensor_has_grad(x), "a backward of zeros did not count");
    nb_tensor_zero_grad(x);
    nb_backward(nb_sum_all(nb_mul(x, x)), NULL, NB_CREATE_GRAPH);
    CHECK(nb_tensor_has_grad(x), "no gradient after a create-graph backward");
    nb_tape_reset(tape);
    CHECK(nb_tensor_has_grad(x) && nb_tensor_get(nb_tensor_grad(x), 1) == 4.0, "the gradient was lost with the tape");
    nb_tensor_zero_grad(x);
    CHECK(!nb_tensor_has_grad(x), "zero_grad after a create-graph backward");
    nb_tape_end(tape);
    nb_tape_free(tape);
    nb_tensor_free(x);
    CHECK_NO_ERROR();
}

/* L-BFGS with the strong Wolfe line search minimises Rosenbrock: every coordinate at 1 (f64; f32 to
 * its precision); its errors: nb_optim_step refused, a failing closure stops the step with the
 * parameters at the last iterate (here the start: the failure is inside the first line search). */
static int g_fail_at;
static nb_status failing_closure(void *user, double *loss)
{
    lb_problem *q = user;
    if (q->calls + 1 == g_fail_at) {
        q->calls++;
        nb_error_set(NB_ERR_ARG, "closure failed on purpose");
        return NB_ERR_ARG;
    }
    return lb_closure(user, loss);
}

/* A closure for a collection with nothing to optimise: counts its calls. */
static nb_status counting_closure(void *user, double *loss)
{
    ++*(int *)user;
    *loss = 1.5;
    return NB_OK;
}

/* L-BFGS over a collection with no trainable tensor (empty, or buffers only, one of them i64): a
 * step evaluates the closure once and changes nothing, as every other kind's step does (it
 * dereferenced the state made with the first parameter, which does not exist: a crash). */
static void test_lbfgs_nothing(void)
{
    for (int fill = 0; fill < 2; fill++) {
        nb_params *p = nb_params_new();
        nb_tensor *buf = fill ? nb_params_add_buffer(p, "running", nb_tensor_full(NB_F64, NB_SHAPE(3), 2.0)) : NULL;
        if (fill) nb_params_add_buffer(p, "ids", nb_tensor_zeros(NB_I64, NB_SHAPE(2)));
        for (int ls = 0; ls < 2; ls++) {
            nb_optim_opts o = nb_optim_defaults(NB_LBFGS);
            o.line_search = ls ? NB_LINE_SEARCH_STRONG_WOLFE : NB_LINE_SEARCH_NONE;
            nb_optim *opt = nb_optim_new(NB_LBFGS, p, &o);
            CHECK(opt && nb_optim_param_count(opt) == 0, "L-BFGS over no parameters: %s", nb_error_message());
            int calls = 0;
            double loss = NAN;
            CHECK(nb_optim_step_closure(opt, counting_closure, &calls, &loss) == NB_OK && calls == 1 && loss == 1.5 &&
                      nb_optim_steps(opt) == 1,
                  "L-BFGS over no parameters (%s): one evaluation, loss reported (%d calls, loss %g): %s",
                  fill ? "buffers only" : "empty", calls, loss, nb_error_message());
            CHECK(!buf || nb_tensor_get(buf, 0) == 2.0, "L-BFGS changed a buffer");
            nb_optim_free(opt);
        }
        nb_params_free(p);
    }
    CHECK_NO_ERROR();
}

static void test_lbfgs_known(const fixture *f)
{
    for (int d = 0; d < 2; d++) {
        nb_dtype dt = d ? NB_F32 : NB_F64;
        lb_problem q;
        CHECK(lb_init(&q, f, 0, dt), "setup");
        nb_optim_opts o = nb_optim_defaults(NB_LBFGS);
        o.line_search = NB_LINE_SEARCH_STRONG_WOLFE;
        o.tolerance_grad = dt == NB_F64 ? 1e-10 : 1e-4;
        o.tolerance_change = dt == NB_F64 ? 0 : 1e-9;
        nb_optim *opt = nb_optim_new(NB_LBFGS, q.ps, &o);
        double loss = NAN;
        for (int i = 0; i < 10; i++) nb_optim_step_closure(opt, lb_closure, &q, &loss);
        double tol = dt == NB_F64 ? 1e-8 : 1e-3, worst = 0;
        for (int i = 0; i < 3; i++) {
            worst = fmax(worst, fabs(nb_tensor_get(q.p0, i) - 1.0));
            worst = fmax(worst, fabs(nb_tensor_get(q.p1, i) - 1.0));
        }
        CHECK(worst < tol, "L-BFGS (%s) on Rosenbrock: %g from the minimum", nb_dtype_name(dt), worst);
        CHECK(loss < (dt == NB_F64 ? 1e-14 : 1e-5), "L-BFGS (%s) on Rosenbrock: loss %g", nb_dtype_name(dt), loss);
        CHECK_ERROR(nb_optim_step(opt) != NB_OK, NB_ERR_ARG, "nb_optim_step_closure");
        CHECK_ERROR(nb_optim_step_closure(opt, NULL, NULL, NULL) != NB_OK, NB_ERR_ARG, "closure");
        nb_optim_free(opt);
        lb_free(&q);
    }
    lb_problem q;
    lb_init(&q, f, 0, NB_F64);
    nb_optim_opts o = nb_optim_defaults(NB_LBFGS);
    o.line_search = NB_LINE_SEARCH_STRONG_WOLFE;
    nb_optim *opt = nb_optim_new(NB_LBFGS, q.ps, &o);
    g_fail_at = 2; /* the first trial point of the first line search */
    CHECK_ERROR(nb_optim_step_closure(opt, failing_closure, &q, NULL) == NB_ERR_ARG, NB_ERR_ARG, "on purpose");
    int same = 1;
    for (int i = 0; i < 3; i++)
        same &= nb_tensor_get(q.p0, i) == f->RA0.v[i] && nb_tensor_get(q.p1, i) == f->RB0.v[i];
    CHECK(same, "a failure in the line search left the parameters at a trial point");
    CHECK(nb_optim_steps(opt) == 0, "a failed step was counted");
    nb_optim_free(opt);
    lb_free(&q);
    CHECK_NO_ERROR();
}

/* Groups: selection by prefix and by list, the refusals, set_lr / set_opts / frozen, and a schedule
 * scaling every group from its own base. */
static void test_groups(void)
{
    small s;
    small_init(&s);
    nb_optim_opts o = nb_optim_defaults(NB_SGD);
    o.momentum = 0.9;
    nb_optim_group g[2] = {{.prefix = "b", .opts = o}, {.n_params = 1, .params = (nb_tensor *[]){s.c}, .opts = o}};
    g[0].opts.lr = 0.5;
    g[1].frozen = 1;
    nb_optim *opt = nb_optim_new_groups(NB_SGD, s.ps, &o, 2, g);
    CHECK(opt && nb_optim_group_count(opt) == 3, "groups: %s", nb_error_message());
    CHECK(nb_optim_param_group(opt, 0) == 0 && nb_optim_param_group(opt, 1) == 1 && nb_optim_param_group(opt, 2) == 2 &&
              nb_optim_param_group(opt, 3) == 0 && nb_optim_param_group(opt, 4) == -1,
          "parameter groups");
    CHECK(nb_optim_group_lr(opt, 1) == 0.5 && nb_optim_group_frozen(opt, 2) == 1 && nb_optim_group_frozen(opt, 0) == 0,
          "group options");
    CHECK(nb_optim_group_set_lr(opt, 2, 0.25) == NB_OK && nb_optim_group_lr(opt, 2) == 0.25, "set_lr");
    nb_optim_opts go;
    nb_optim_group_opts(opt, 1, &go);
    go.momentum = 0;
    CHECK_ERROR(nb_optim_group_set_opts(opt, 1, &go) != NB_OK, NB_ERR_ARG, "decides the state");
    go.momentum = 0.5;
    go.lr = -1;
    CHECK_ERROR(nb_optim_group_set_opts(opt, 1, &go) != NB_OK, NB_ERR_ARG, "lr must be >= 0");
    CHECK_ERROR(nb_optim_group_set_lr(opt, 3, 0.1) != NB_OK, NB_ERR_ARG, "out of range");
    CHECK_ERROR(nb_optim_group_set_frozen(opt, -1, 1) != NB_OK, NB_ERR_ARG, "out of range");
    /* a schedule: every group from its own base */
    nb_sched_opts so = nb_sched_defaults(NB_SCHED_STEP);
    so.gamma = 0.5;
    nb_sched *sc = nb_sched_new(NB_SCHED_STEP, opt, &so);
    nb_sched_step(sc, 0);
    CHECK(nb_optim_group_lr(opt, 0) == 0.005 && nb_optim_group_lr(opt, 1) == 0.25 && nb_optim_group_lr(opt, 2) == 0.125,
          "a schedule scales each group's base: %g %g %g", nb_optim_group_lr(opt, 0), nb_optim_group_lr(opt, 1),
          nb_optim_group_lr(opt, 2));
    CHECK(nb_sched_set_epoch(sc, 3) == 0.01 * 0.125 && nb_optim_group_lr(opt, 2) == 0.25 * 0.125, "set_epoch");
    CHECK_ERROR(isnan(nb_sched_set_epoch(sc, 1.5)), NB_ERR_ARG, "warm restarts only");
    nb_sched_free(sc);
    nb_optim_free(opt);
    /* refusals */
    nb_optim_group bad = {.prefix = "W", .opts = o}, twice[2] = {{.prefix = "W", .opts = o}, {.prefix = "W", .opts = o}};
    nb_optim_group none = {.prefix = "zz", .opts = o}, stranger = {.n_params = 1, .params = (nb_tensor *[]){s.buf}, .opts = o};
    bad.opts.beta1 = 2; /* not read by SGD */
    bad.opts.lr = NAN;
    CHECK_ERROR(!nb_optim_new_groups(NB_SGD, s.ps, &o, 1, &bad), NB_ERR_ARG, "group 1: lr must be >= 0");
    CHECK_ERROR(!nb_optim_new_groups(NB_SGD, s.ps, &o, 2, twice), NB_ERR_ARG, "two groups");
    CHECK_ERROR(!nb_optim_new_groups(NB_SGD, s.ps, &o, 1, &none), NB_ERR_ARG, "selects no parameter");
    CHECK_ERROR(!nb_optim_new_groups(NB_SGD, s.ps, &o, 1, &stranger), NB_ERR_ARG, "not a trainable");
    nb_optim_opts lo = nb_optim_defaults(NB_LBFGS);
    nb_optim_group lg = {.prefix = "W", .opts = lo};
    CHECK_ERROR(!nb_optim_new_groups(NB_LBFGS, s.ps, &lo, 1, &lg), NB_ERR_ARG, "one parameter group");
    /* one-cycle needs momentum or beta1 */
    nb_optim *ada = nb_optim_new(NB_ADAGRAD, s.ps, NULL), *sgd0 = nb_optim_new(NB_SGD, s.ps, NULL);
    nb_sched_opts oc = nb_sched_defaults(NB_SCHED_ONECYCLE);
    oc.total_steps = 10;
    CHECK_ERROR(!nb_sched_new(NB_SCHED_ONECYCLE, ada, &oc), NB_ERR_ARG, "cycle_momentum");
    CHECK_ERROR(!nb_sched_new(NB_SCHED_ONECYCLE, sgd0, &oc), NB_ERR_ARG, "cycle_momentum");
    oc.cycle_momentum = 0;
    nb_sched *s1 = nb_sched_new(NB_SCHED_ONECYCLE, ada, &oc);
    CHECK(s1 != NULL, "onecycle without momentum: %s", nb_error_message());
    for (int i = 0; i < 10; i++) nb_sched_step(s1, 0);
    double final = nb_optim_lr(ada);
    CHECK_CLOSE(final, 1e-2 / 25 / 1e4, 1e-12, 0);
    CHECK_ERROR(isnan(nb_sched_step(s1, 0)), NB_ERR_ARG, "past total_steps");
    CHECK(nb_optim_lr(ada) == final, "a refused step changed the lr");
    nb_sched_free(s1);
    oc.total_steps = 0;
    CHECK_ERROR(!nb_sched_new(NB_SCHED_ONECYCLE, ada, &oc), NB_ERR_ARG, "total_steps");
    nb_sched_opts wr = nb_sched_defaults(NB_SCHED_WARM_RESTARTS);
    wr.t_0 = 0;
    CHECK_ERROR(!nb_sched_new(NB_SCHED_WARM_RESTARTS, ada, &wr), NB_ERR_ARG, "t_0");
    CHECK_ERROR(!nb_sched_new(NB_SCHED_LAMBDA, ada, NULL), NB_ERR_ARG, "fn");
    nb_optim_free(ada);
    nb_optim_free(sgd0);
    nb_params_free(s.ps);
    CHECK_NO_ERROR();
}

/* A closure for the fixture's model (L-BFGS in the checkpoint test). */
typedef struct model_call {
    const model *m;
    nb_tape *tape;
} model_call;

static nb_status model_closure(void *user, double *loss)
{
    model_call *c = user;
    nb_params_zero_grad(c->m->ps);
    nb_tensor *l = model_loss(c->m);
    nb_status st = l ? nb_backward(l, NULL, 0) : nb_error_code();
    if (st == NB_OK) *loss = nb_tensor_get(l, 0);
    nb_tape_reset(c->tape);
    return st;
}

/* An optimizer of kind for m: b in a group of its own with other options (not for L-BFGS). */
static nb_optim *ckpt_optim(nb_optim_kind kind, const model *m)
{
    nb_optim_opts o = nb_optim_defaults(kind);
    if (kind == NB_SGD || kind == NB_RMSPROP) o.momentum = 0.9;
    if (kind == NB_LBFGS) {
        o.line_search = NB_LINE_SEARCH_STRONG_WOLFE;
        o.max_iter = 4;
        o.history_size = 3;
        return nb_optim_new(NB_LBFGS, m->ps, &o);
    }
    o.lr = kind == NB_ADADELTA ? 1.0 : 0.01;
    nb_optim_group g = {.prefix = "b", .opts = o};
    g.opts.lr = o.lr / 4;
    g.opts.weight_decay = 0.01;
    return nb_optim_new_groups(kind, m->ps, &o, 1, &g);
}

static int ckpt_steps(const model *m, nb_optim *opt, nb_tape *tape, int n)
{
    model_call c = {m, tape};
    for (int i = 0; i < n; i++)
        if (nb_optim_get_kind(opt) == NB_LBFGS ? nb_optim_step_closure(opt, model_closure, &c, NULL) != NB_OK
                                               : train_step(m, opt, tape) != 0)
            return -1;
    return 0;
}

/* Checkpoints of every kind, with groups: save after 3 steps (a schedule having moved the lrs, and
 * one-cycle beta1 or momentum), load into a fresh model and optimizer, and 3 more steps give the
 * uninterrupted run's parameters bit for bit; the groups' options and frozen flags come back. A file
 * without the groups (as saved before they existed) still loads, leaving the groups alone; one with
 * another number of groups is refused, changing nothing. */
static void test_checkpoint_groups(const fixture *f)
{
    char dir[] = "/tmp/nb_optim_XXXXXX", path[64];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/c.safetensors", dir);
    nb_tape *tape = nb_tape_new();
    nb_tape_begin(tape);
    for (int k = 0; k < NB_OPTIM_KIND_COUNT; k++) {
        const char *kn = optim_kinds[k];
        model a, b;
        model_init(&a, f, NB_F64);
        model_init(&b, f, NB_F64);
        nb_optim *oa = ckpt_optim((nb_optim_kind)k, &a), *ob = ckpt_optim((nb_optim_kind)k, &b);
        nb_sched_opts so = nb_sched_defaults(NB_SCHED_ONECYCLE);
        so.total_steps = 10;
        so.cycle_momentum = k == NB_SGD || k == NB_RMSPROP || k == NB_ADAM || k == NB_ADAMW || k == NB_NADAM ||
                            k == NB_RADAM || k == NB_ADAMAX;
        nb_sched *sa = k == NB_LBFGS ? NULL : nb_sched_new(NB_SCHED_ONECYCLE, oa, &so);
        CHECK(oa && ob && (sa || k == NB_LBFGS), "%s: %s", kn, nb_error_message());
        if (!oa || !ob) continue;
        for (int i = 0; i < 3; i++) {
            CHECK(ckpt_steps(&a, oa, tape, 1) == 0, "%s: step: %s", kn, nb_error_message());
            nb_sched_step(sa, 0);
        }
        if (k != NB_LBFGS) nb_optim_group_set_frozen(oa, 1, 1);
        CHECK(nb_checkpoint_save(path, a.ps, oa, 3) == NB_OK, "%s: save: %s", kn, nb_error_message());
        if (k != NB_LBFGS) nb_optim_group_set_frozen(oa, 1, 0);
        CHECK(ckpt_steps(&a, oa, tape, 3) == 0, "%s: steps after saving", kn);
        int64_t step = -1;
        CHECK(nb_checkpoint_load(path, b.ps, ob, &step) == NB_OK && step == 3, "%s: load: %s", kn, nb_error_message());
        for (int g = 0; g < nb_optim_group_count(ob); g++) {
            nb_optim_opts x, y;
            nb_optim_group_opts(oa, g, &x);
            nb_optim_group_opts(ob, g, &y);
            CHECK(x.lr == y.lr && x.beta1 == y.beta1 && x.momentum == y.momentum && x.weight_decay == y.weight_decay,
                  "%s: group %d's options were not restored (lr %g / %g)", kn, g, y.lr, x.lr);
        }
        if (k != NB_LBFGS) {
            CHECK(nb_optim_group_frozen(ob, 1) == 1, "%s: the frozen flag was not restored", kn);
            nb_optim_group_set_frozen(ob, 1, 0);
        }
        CHECK(ckpt_steps(&b, ob, tape, 3) == 0, "%s: steps after loading", kn);
        int same = 1;
        for (int i = 0; i < nb_tensor_numel(a.W); i++) same &= nb_tensor_get(a.W, i) == nb_tensor_get(b.W, i);
        for (int i = 0; i < nb_tensor_numel(a.b); i++) same &= nb_tensor_get(a.b, i) == nb_tensor_get(b.b, i);
        CHECK(same, "%s: the resumed run differs from the uninterrupted one", kn);
        nb_sched_free(sa);
        nb_optim_free(oa);
        nb_optim_free(ob);
        model_free(&a);
        model_free(&b);
    }
    /* a file from before groups: the same file without optim.groups and optim.param_groups */
    model m;
    model_init(&m, f, NB_F64);
    nb_optim *opt = ckpt_optim(NB_ADAM, &m);
    ckpt_steps(&m, opt, tape, 2);
    CHECK(nb_checkpoint_save(path, m.ps, opt, 2) == NB_OK, "save: %s", nb_error_message());
    nb_safetensors *file = NULL;
    CHECK(nb_safetensors_read(path, &file) == NB_OK, "read: %s", nb_error_message());
    const char *names[64];
    nb_tensor *tensors[64];
    int n = 0;
    for (int i = 0; file && i < nb_safetensors_count(file) && n < 64; i++) {
        const char *name = nb_safetensors_name(file, i);
        if (strcmp(name, "optim.groups") && strcmp(name, "optim.param_groups")) {
            names[n] = name;
            tensors[n++] = nb_safetensors_tensor(file, i);
        }
    }
    CHECK(file && n == nb_safetensors_count(file) - 2, "the file has no groups to drop");
    const char *keys[] = {"format", "step", "optimizer", "optimizer_steps"}, *values[4];
    for (int i = 0; file && i < 4; i++) values[i] = nb_safetensors_meta(file, keys[i]);
    char old[80];
    snprintf(old, sizeof old, "%s/old.safetensors", dir);
    CHECK(file && nb_safetensors_save(old, n, names, tensors, 4, keys, values) == NB_OK, "save old: %s", nb_error_message());
    nb_safetensors_free(file);
    model m2;
    model_init(&m2, f, NB_F64);
    nb_optim *o2 = ckpt_optim(NB_ADAM, &m2);
    nb_optim_group_set_lr(o2, 1, 0.125);
    CHECK(nb_checkpoint_load(old, m2.ps, o2, NULL) == NB_OK, "a file without groups: %s", nb_error_message());
    CHECK(nb_optim_group_lr(o2, 1) == 0.125 && nb_tensor_get(m2.W, 0) == nb_tensor_get(m.W, 0),
          "a file without groups: the groups changed or the parameters were not loaded");
    /* half of the groups: either entry without the other is refused (it was a NULL dereference) */
    for (int drop = 0; drop < 2; drop++) {
        const char *gone = drop ? "optim.param_groups" : "optim.groups", *kept = drop ? "optim.groups" : "optim.param_groups";
        CHECK(nb_safetensors_read(path, &file) == NB_OK, "read: %s", nb_error_message());
        n = 0;
        for (int i = 0; file && i < nb_safetensors_count(file) && n < 64; i++)
            if (strcmp(nb_safetensors_name(file, i), gone)) {
                names[n] = nb_safetensors_name(file, i);
                tensors[n++] = nb_safetensors_tensor(file, i);
            }
        for (int i = 0; file && i < 4; i++) values[i] = nb_safetensors_meta(file, keys[i]);
        CHECK(file && nb_safetensors_save(old, n, names, tensors, 4, keys, values) == NB_OK, "save: %s", nb_error_message());
        nb_safetensors_free(file);
        char needle[64];
        snprintf(needle, sizeof needle, "%s without %s", kept, gone);
        CHECK_ERROR(nb_checkpoint_load(old, m2.ps, o2, NULL) == NB_ERR_FORMAT, NB_ERR_FORMAT, needle);
    }
    /* an optimizer over no parameter: its one group is saved with an empty param_groups, and loads back */
    for (int k = 0; k < 2; k++) {
        nb_params *none = nb_params_new();
        nb_optim *on = nb_optim_new(k ? NB_LBFGS : NB_ADAM, none, NULL), *on2 = nb_optim_new(k ? NB_LBFGS : NB_ADAM, none, NULL);
        nb_optim_set_lr(on, 0.25);
        CHECK(nb_checkpoint_save(old, none, on, 5) == NB_OK, "save with no parameter: %s", nb_error_message());
        int64_t st5 = 0;
        CHECK(nb_checkpoint_load(old, none, on2, &st5) == NB_OK && st5 == 5 && nb_optim_lr(on2) == 0.25,
              "%s over no parameter: save and load back: %s", k ? "lbfgs" : "adam", nb_error_message());
        nb_optim_free(on);
        nb_optim_free(on2);
        nb_params_free(none);
    }
    /* another number of groups: refused, nothing changed */
    nb_optim *one = nb_optim_new(NB_ADAM, m2.ps, NULL);
    nb_tensor_set(m2.W, 0, 42.0);
    CHECK_ERROR(nb_checkpoint_load(path, m2.ps, one, NULL) == NB_ERR_SHAPE, NB_ERR_SHAPE, "2 parameter groups in the file, 1");
    CHECK(nb_tensor_get(m2.W, 0) == 42.0 && nb_optim_lr(one) == 1e-3, "a refused file changed the model");
    nb_optim_free(one);
    nb_optim_free(o2);
    nb_optim_free(opt);
    model_free(&m);
    model_free(&m2);
    remove(path);
    remove(old);
    rmdir(dir);
    nb_tape_end(tape);
    nb_tape_free(tape);
    CHECK_NO_ERROR();
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s tests/fixtures/optim_f64.txt\n", argc ? argv[0] : "test_optim");
        return 2;
    }
    fixture f = {0};
    f.optim = calloc(MAX_CASES, sizeof *f.optim);
    f.sched = calloc(MAX_CASES, sizeof *f.sched);
    f.lbfgs = calloc(MAX_CASES, sizeof *f.lbfgs);
    char err[512];
    char *text = fx_read_text(argv[1], err, sizeof err);
    fx_parser p = {argv[1], 0, err, sizeof err};
    bool oom = text && (!f.optim || !f.sched || !f.lbfgs), parsed = text && !oom && parse(&p, text, &f);
    free(text);
    if (!parsed) {
        fprintf(stderr, "%s\n", oom ? "out of memory" : err);
        fixture_free(&f);
        return 1;
    }
    CHECK(f.n_optim > 0 && f.n_sched > 0 && f.n_lbfgs > 0, "the fixture has no optimizer, L-BFGS or schedule case");

    test_trajectories(&f);
    test_lbfgs(&f);
    test_schedules(&f);
    printf("compared with PyTorch: %d optimizer trajectories (%ld recorded steps, %ld parameter values), "
           "%d L-BFGS runs (%ld parameter values), %d schedules (%ld lr values)\n",
           f.n_optim, g_steps_compared, g_traj_values, f.n_lbfgs, g_lb_values, f.n_sched, g_lr_values);
    test_clip();
    test_early_stop();
    test_no_grad_untouched();
    test_freeze();
    test_has_grad();
    test_lbfgs_known(&f);
    test_lbfgs_nothing();
    test_groups();
    test_checkpoint_groups(&f);
    test_late_param();
    test_state_names();
    test_bad_options();
    fixture_free(&f);
    return nbt_report("optim");
}
