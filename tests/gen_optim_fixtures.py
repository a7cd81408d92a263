#!/usr/bin/python3
"""PyTorch reference trajectories for nabla's optimizers and learning-rate schedules.

Run by hand with Debian's python and its torch (python3-torch), from anywhere:

    /usr/bin/python3 tests/gen_optim_fixtures.py           # (re)write tests/fixtures/optim_f64.txt
    /usr/bin/python3 tests/gen_optim_fixtures.py --check   # exit 1 if the file is not what this makes

tests/test_optim.c reads the file, rebuilds the problem with nabla ops in float64, replays every
trajectory with nb_optim_* / nb_sched_* and compares every recorded value with PyTorch's.

The problem
-------------------------------------------------------------------------------------------------
Two parameters, W [4, 3] and b [3], and fixed data X [6, 4], Y [6, 3]:

    loss = sum((X W + b - Y)^2) / 6 + 0.1 * sum(W^4)

The quartic term makes the gradient a non-linear function of W, so it changes every step (also for
plain SGD) and the optimizers' states matter. All data and initial values are multiples of 1/64
(exact in float32 too).

Each optimizer case runs STEPS steps of torch.optim (foreach=False, the 1.13 default on the CPU):
zero_grad(set_to_none=True), loss.backward(), step(); the parameters are recorded after the steps in
RECORD_AT, and every state tensor of the optimizer after the last step. A case with a group line
puts b in a second parameter group with its own options; a case with a freeze line sets
b.requires_grad = False for those steps (b then has no gradient: torch skips it, keeping its state).
NAdam is torch 1.13's with the one-line fix of torch 2.0 (pytorch/pytorch#92699: mu_product_next is
mu_product * mu_next, as in Dozat's paper; 1.13 multiplies by mu once more); the reference below is
checked against torch 1.13's NAdam with the old line before it is used.

L-BFGS cases (torch.optim.LBFGS, float64) minimise two full-batch problems with step(closure):
    rosenbrock   a [3], b [3]:  sum((1 - a)^2 + 100 (b - a^2)^2)          (minimum 0 at a = b = 1)
    logreg       w [3], c [1]:  mean(softplus(X w + c) - y (X w + c)) + 0.05 sum(w^2)
and record the parameters, the loss step() returns and the optimizer's func_evals and n_iter after
every step.

Each schedule case drives an optimizer with two parameter groups (lr0: their lrs when the schedule is
made; no gradients, so the parameters never move) for EPOCHS epochs and records each group's lr (and
for one-cycle its momentum or beta1) at epoch 0 (after construction) and after every
scheduler.step() (or step(epoch) for the listed epochs).

File format (ASCII, one record per line, tokens separated by single spaces)
-------------------------------------------------------------------------------------------------
    # anything                          a comment (also blank lines): ignored
    nabla-optim-fixtures 2              the first non-comment line: format name and version
    data <name> <ndim> <dim>... <value>...
                                        problem data: X, Y, W0, b0, then the L-BFGS problems' RA0,
                                        RB0 (rosenbrock a, b), LX, LY, LW0, LC0 (logreg X, y, w, c),
                                        all before any case
    case optim <name> <kind>            an optimizer trajectory; kind: sgd adam adamw rmsprop adagrad
                                        nadam radam adamax adadelta
    opt <field> <number>                a field of nb_optim_opts to set after nb_optim_defaults(kind)
                                        (0/1 for the flags amsgrad, nesterov, centered)
    group <field> <number>...           b's group: these fields changed from the case's options
    freeze <first> <last>               b does not require grad for steps first..last (1-based)
    at <step> <W values> <b values>     parameters after step <step> (1-based), W then b, row-major
    state <name> <values>               an optimizer state after the last step, named as nabla names
                                        it: "<param>.<torch state key>", e.g. W.exp_avg
    end                                 ends the case
    case lbfgs <name> <problem>         an L-BFGS run on rosenbrock or logreg
    opt <field> <number>                as for optim (max_iter, max_eval, tolerance_grad,
                                        tolerance_change, history_size, line_search 0/1, lr)
    at <step> <values>                  parameters after step <step> (a then b, or w then c)
    loss <value>...                     what step i returned (the loss before it), i = 1..steps
    evals <n>...                        func_evals after step i
    iters <n>...                        n_iter after step i
    end
    case sched <name> <kind>            a schedule; kind: step multistep exponential cosine plateau
                                        lambda onecycle warm_restarts
    optim <kind> [<field> <number>]...  the optimizer driven (default sgd), with option fields
    lr0 <number> <number>               the two groups' lrs when the schedule is made (their bases)
    opt <field> <number>...             a field of nb_sched_opts to set after nb_sched_defaults(kind);
                                        milestones takes a list (n_milestones is its length)
    metric <value>...                   plateau: the metric passed to step i (i = 1..epochs)
    epochs <value>...                   step(epoch) with these epochs instead of step()
    lr <group> <value>...               the group's lr at epoch 0 and after each step
    mom <group> <value>...              one-cycle: the group's momentum (or beta1), likewise
    end

The lambda schedule's factor is 1 / (1 + 0.05 epoch) for group 0 and 0.95^epoch for group 1 (the
test's C function computes the same).

Values are Python's repr of float64, which round-trips exactly through C's strtod.
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fixture_writer.py, beside this file
import fixture_writer as fw  # noqa: E402

FORMAT_VERSION = 2
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "optim_f64.txt")

STEPS = 100
RECORD_AT = [1, 2, 3, 4, 5] + list(range(10, STEPS + 1, 10))
EPOCHS = 100
N_ROWS = 6

# ----------------------------------------------------------------------------------------------
# The problem
# ----------------------------------------------------------------------------------------------


def _q(t, step=64):
    """Round to a multiple of 1/step (exact in float32 and float64)."""
    return torch.round(t * step) / step


def problem():
    gen = torch.Generator().manual_seed(20240611)
    d = torch.float64
    X = _q(torch.randn(N_ROWS, 4, generator=gen, dtype=d))
    Y = _q(torch.randn(N_ROWS, 3, generator=gen, dtype=d))
    W0 = _q(torch.randn(4, 3, generator=gen, dtype=d) * 0.75)
    b0 = _q(torch.randn(3, generator=gen, dtype=d) * 0.5)
    return X, Y, W0, b0


def loss_fn(X, Y, W, b):
    return ((X @ W + b - Y) ** 2).sum() / N_ROWS + 0.1 * (W ** 4).sum()


# ----------------------------------------------------------------------------------------------
# Optimizer cases: (name, kind, nabla opts (fields of nb_optim_opts set after the defaults))
# The torch constructor arguments are derived from the nabla fields in torch_optimizer().
# ----------------------------------------------------------------------------------------------

OPTIM_CASES = [
    ("sgd_plain", "sgd", dict(lr=0.02)),
    ("sgd_momentum", "sgd", dict(lr=0.02, momentum=0.9)),
    ("sgd_dampening", "sgd", dict(lr=0.02, momentum=0.9, dampening=0.1)),
    ("sgd_nesterov", "sgd", dict(lr=0.02, momentum=0.9, nesterov=1)),
    ("sgd_wd_momentum", "sgd", dict(lr=0.02, momentum=0.9, weight_decay=0.01)),
    ("adam_default", "adam", dict()),
    # larger steps: the gradient shrinks, v falls and amsgrad's maximum takes over
    ("adam_lr", "adam", dict(lr=0.02)),
    ("adam_amsgrad", "adam", dict(lr=0.02, amsgrad=1)),
    ("adam_wd", "adam", dict(lr=0.02, weight_decay=0.01)),
    ("adam_amsgrad_wd", "adam", dict(lr=0.02, amsgrad=1, weight_decay=0.01)),
    # eps large enough to matter (where it is added), other betas
    ("adam_betas_eps", "adam", dict(lr=0.02, beta1=0.8, beta2=0.95, eps=1e-3)),
    ("adamw_default", "adamw", dict()),
    ("adamw_amsgrad", "adamw", dict(lr=0.02, amsgrad=1)),
    ("adamw_wd", "adamw", dict(lr=0.02, weight_decay=0.1)),
    ("rmsprop_default", "rmsprop", dict()),
    ("rmsprop_momentum", "rmsprop", dict(momentum=0.9)),
    ("rmsprop_centered", "rmsprop", dict(centered=1)),
    ("rmsprop_centered_momentum_wd", "rmsprop", dict(centered=1, momentum=0.9, weight_decay=0.01)),
    ("rmsprop_alpha_eps", "rmsprop", dict(alpha=0.9, eps=1e-2)),
    ("adagrad_default", "adagrad", dict()),
    ("adagrad_lr_decay", "adagrad", dict(lr=0.1, lr_decay=0.01)),
    ("adagrad_init_acc", "adagrad", dict(lr=0.1, initial_accumulator=0.1)),
    ("adagrad_wd", "adagrad", dict(lr=0.1, weight_decay=0.01)),
    ("nadam_default", "nadam", dict()),
    ("nadam_lr", "nadam", dict(lr=0.02)),
    ("nadam_wd", "nadam", dict(lr=0.02, weight_decay=0.01)),
    ("nadam_betas_decay", "nadam", dict(lr=0.02, beta1=0.8, beta2=0.95, momentum_decay=0.05, eps=1e-3)),
    # rho_t passes 5 at step 6 with beta2 0.999: the first steps are unrectified
    ("radam_default", "radam", dict()),
    ("radam_lr", "radam", dict(lr=0.02)),
    ("radam_wd", "radam", dict(lr=0.02, weight_decay=0.01)),
    ("radam_betas_eps", "radam", dict(lr=0.02, beta1=0.8, beta2=0.9, eps=1e-3)),
    ("adamax_default", "adamax", dict()),
    ("adamax_lr", "adamax", dict(lr=0.02)),
    ("adamax_wd", "adamax", dict(lr=0.02, weight_decay=0.01)),
    ("adamax_betas_eps", "adamax", dict(lr=0.02, beta1=0.8, beta2=0.95, eps=1e-3)),
    ("adadelta_default", "adadelta", dict()),
    ("adadelta_wd", "adadelta", dict(weight_decay=0.01)),
    ("adadelta_rho_eps", "adadelta", dict(lr=0.3, rho=0.7, eps=1e-4)),
]

# Two parameter groups: W with the case's options, b with these changed (torch: param_groups
# [{"params": [W]}, {"params": [b], ...}]).
GROUP_CASES = [
    ("sgd_groups", "sgd", dict(lr=0.02, momentum=0.9), dict(lr=0.05, momentum=0.5, weight_decay=0.01)),
    ("adam_groups", "adam", dict(lr=0.02), dict(lr=0.05, weight_decay=0.1, beta1=0.8, beta2=0.99)),
    ("adamw_groups", "adamw", dict(lr=0.02, weight_decay=0.1), dict(lr=0.01, weight_decay=0.0, eps=1e-3)),
    ("nadam_groups", "nadam", dict(lr=0.02), dict(lr=0.005, weight_decay=0.01, beta1=0.7)),
    ("adadelta_groups", "adadelta", dict(), dict(lr=0.3, rho=0.6)),
]

# b frozen (requires_grad False, so no gradient: skipped, its state kept) for steps FREEZE
FREEZE = (11, 30)
FREEZE_CASES = [
    ("sgd_momentum_freeze", "sgd", dict(lr=0.02, momentum=0.9)),
    ("adam_freeze", "adam", dict(lr=0.02)),
    ("adamw_freeze", "adamw", dict(lr=0.02, weight_decay=0.1)),
]

# nabla's defaults (nb_optim_defaults), which must be torch's
NB_DEFAULTS = {
    "sgd": dict(lr=1e-2),
    "adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
    "adamw": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2),
    "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8),
    "adagrad": dict(lr=1e-2, eps=1e-10),
    "nadam": dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, momentum_decay=4e-3),
    "radam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
    "adamax": dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8),
    "adadelta": dict(lr=1.0, rho=0.9, eps=1e-6),
}


def torch_args(kind, o):
    """torch.optim's keyword arguments for nabla's options o (defaults filled in)."""
    o = dict(NB_DEFAULTS[kind], **o)
    g = lambda k, d=0.0: o.get(k, d)
    if kind == "sgd":
        return dict(lr=g("lr"), momentum=g("momentum"), dampening=g("dampening"), weight_decay=g("weight_decay"),
                    nesterov=bool(g("nesterov", 0)))
    if kind in ("adam", "adamw"):
        return dict(lr=g("lr"), betas=(g("beta1"), g("beta2")), eps=g("eps"), weight_decay=g("weight_decay"),
                    amsgrad=bool(g("amsgrad", 0)))
    if kind == "rmsprop":
        return dict(lr=g("lr"), alpha=g("alpha"), eps=g("eps"), weight_decay=g("weight_decay"),
                    momentum=g("momentum"), centered=bool(g("centered", 0)))
    if kind == "adagrad":
        return dict(lr=g("lr"), lr_decay=g("lr_decay"), weight_decay=g("weight_decay"),
                    initial_accumulator_value=g("initial_accumulator"), eps=g("eps"))
    if kind == "nadam":
        return dict(lr=g("lr"), betas=(g("beta1"), g("beta2")), eps=g("eps"), weight_decay=g("weight_decay"),
                    momentum_decay=g("momentum_decay"))
    if kind in ("radam", "adamax"):
        return dict(lr=g("lr"), betas=(g("beta1"), g("beta2")), eps=g("eps"), weight_decay=g("weight_decay"))
    if kind == "adadelta":
        return dict(lr=g("lr"), rho=g("rho"), eps=g("eps"), weight_decay=g("weight_decay"))
    raise ValueError(kind)


class FixedNAdam(torch.optim.Optimizer):
    """NAdam as torch 1.13 computes it (single-tensor path), with mu_product_next = mu_product * mu_next
    (torch >= 2.0, pytorch/pytorch#92699) unless old_bug is set (then 1.13's mu_product * mu * mu_next).
    Written from the algorithm in torch's documentation; check_nadam() compares it with torch 1.13."""

    def __init__(self, params, lr, betas, eps, weight_decay, momentum_decay, old_bug=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay))
        self.old_bug = old_bug

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd, psi, eps = group["lr"], group["weight_decay"], group["momentum_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["mu_product"] = 1.0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                mu = beta1 * (1. - 0.5 * (0.96 ** (t * psi)))
                mu_next = beta1 * (1. - 0.5 * (0.96 ** ((t + 1) * psi)))
                st["mu_product"] *= mu
                mu_product_next = st["mu_product"] * (mu * mu_next if self.old_bug else mu_next)
                st["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                st["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = st["exp_avg_sq"].div(1 - beta2 ** t).sqrt().add_(eps)
                p.addcdiv_(grad, denom, value=-lr * (1. - mu) / (1. - st["mu_product"]))
                p.addcdiv_(st["exp_avg"], denom, value=-lr * mu_next / (1. - mu_product_next))


TORCH_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                 "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad, "nadam": torch.optim.NAdam,
                 "radam": torch.optim.RAdam, "adamax": torch.optim.Adamax, "adadelta": torch.optim.Adadelta}


def torch_optimizer(kind, W, b, o, group_o=None, make=None):
    """torch's optimizer for nabla's options o; with group_o, b in a second group with o changed by it.
    make(groups, **args) builds it instead of the class of kind."""
    args = torch_args(kind, o)
    groups = [{"params": [W]}, dict(torch_args(kind, dict(o, **group_o)), params=[b])] if group_o is not None \
        else [{"params": [W, b]}]
    if make:
        return make(groups, **args)
    if kind == "nadam":
        return FixedNAdam(groups, **args)
    return TORCH_CLASSES[kind](groups, foreach=False, **args)


def run_optim(kind, o, data, group_o=None, freeze=None, make=None):
    X, Y, W0, b0 = data
    W = W0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch_optimizer(kind, W, b, o, group_o, make)
    recs = {}
    for step in range(1, STEPS + 1):
        if freeze:
            b.requires_grad_(not (freeze[0] <= step <= freeze[1]))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(X, Y, W, b)
        loss.backward()
        opt.step()
        if not all(math.isfinite(v) for v in torch.cat([W.flatten(), b]).tolist()):
            raise SystemExit("%s: diverged at step %d" % (kind, step))
        if step in RECORD_AT:
            recs[step] = torch.cat([W.detach().flatten(), b.detach()]).clone()
    states = []
    for pname, p in (("W", W), ("b", b)):
        for key, v in opt.state[p].items():
            if key == "step" or v is None:  # SGD keeps momentum_buffer None without momentum
                continue
            v = torch.as_tensor(v, dtype=torch.float64)  # FixedNAdam's mu_product is a float
            states.append(("%s.%s" % (pname, key), v.detach().flatten().clone()))
    return recs, states, loss.item()


def check_nadam(data):
    """FixedNAdam with torch 1.13's line must reproduce torch.optim.NAdam (float64 mu_product, as
    torch.set_default_dtype(float64) makes it)."""
    for name, kind, o in OPTIM_CASES:
        if kind != "nadam":
            continue
        ref, _, _ = run_optim(kind, o, data, make=lambda groups, **a: torch.optim.NAdam(groups, foreach=False, **a))
        mine, _, _ = run_optim(kind, o, data, make=lambda groups, **a: FixedNAdam(groups, old_bug=True, **a))
        diff = max((ref[s] - mine[s]).abs().max().item() for s in RECORD_AT)
        if diff > 1e-14:
            raise SystemExit("%s: the NAdam reference differs from torch 1.13's by %g" % (name, diff))
        fixed, _, _ = run_optim(kind, o, data)
        if (fixed[STEPS] - ref[STEPS]).abs().max().item() < 1e-9:
            raise SystemExit("%s: the mu_product_next fix changes nothing" % name)


def optim_lines(data):
    lines = []
    trajectories = {}
    cases = [(n, k, o, None, None) for n, k, o in OPTIM_CASES]
    cases += [(n, k, o, go, None) for n, k, o, go in GROUP_CASES]
    cases += [(n, k, o, None, FREEZE) for n, k, o in FREEZE_CASES]
    for name, kind, o, group_o, freeze in cases:
        recs, states, final_loss = run_optim(kind, o, data, group_o, freeze)
        trajectories[name] = recs[STEPS]
        lines.append("case optim %s %s" % (name, kind))
        lines += ["opt %s %s" % (k, fw.fmt_number(v)) for k, v in o.items()]
        if group_o is not None:
            lines.append("group " + " ".join("%s %s" % (k, fw.fmt_number(v)) for k, v in group_o.items()))
        if freeze:
            lines.append("freeze %d %d" % freeze)
        for step in RECORD_AT:
            lines.append("at %d %s" % (step, fw.fmt_numbers(recs[step].tolist())))
        for sname, v in states:
            lines.append("state %s %s" % (sname, fw.fmt_numbers(v.tolist())))
        lines.append("end")
    # every option must change the trajectory, else its case checks nothing
    for a, b_ in [("sgd_plain", "sgd_momentum"), ("sgd_momentum", "sgd_dampening"),
                  ("sgd_momentum", "sgd_nesterov"), ("sgd_momentum", "sgd_wd_momentum"),
                  ("adam_lr", "adam_amsgrad"), ("adam_lr", "adam_wd"), ("adam_amsgrad", "adam_amsgrad_wd"),
                  ("adam_lr", "adam_betas_eps"), ("adamw_default", "adam_default"),
                  ("adam_amsgrad", "adamw_amsgrad"), ("rmsprop_default", "rmsprop_momentum"),
                  ("rmsprop_default", "rmsprop_centered"), ("rmsprop_default", "rmsprop_alpha_eps"),
                  ("adagrad_default", "adagrad_lr_decay"), ("adagrad_lr_decay", "adagrad_init_acc"),
                  ("adagrad_lr_decay", "adagrad_wd"), ("nadam_lr", "nadam_wd"), ("nadam_lr", "nadam_betas_decay"),
                  ("radam_lr", "radam_wd"), ("radam_lr", "radam_betas_eps"), ("adamax_lr", "adamax_wd"),
                  ("adamax_lr", "adamax_betas_eps"), ("adadelta_default", "adadelta_wd"),
                  ("adadelta_default", "adadelta_rho_eps"), ("sgd_momentum", "sgd_groups"), ("adam_lr", "adam_groups"),
                  ("adamw_amsgrad", "adamw_groups"), ("nadam_lr", "nadam_groups"), ("adadelta_default", "adadelta_groups"),
                  ("sgd_momentum", "sgd_momentum_freeze"), ("adam_lr", "adam_freeze"), ("adamw_wd", "adamw_freeze")]:
        diff = (trajectories[a] - trajectories[b_]).abs().max().item()
        if diff < 1e-6:
            raise SystemExit("cases %s and %s end within %g of each other" % (a, b_, diff))
    return lines


# ----------------------------------------------------------------------------------------------
# L-BFGS cases: (name, problem, nabla opts, steps)
# ----------------------------------------------------------------------------------------------

LB_DEFAULTS = dict(lr=1.0, max_iter=20, max_eval=25, tolerance_grad=1e-7, tolerance_change=1e-9, history_size=100,
                   line_search=0)

LBFGS_CASES = [
    # Rosenbrock's curved valley amplifies rounding differences about 1000-fold per step of 20
    # iterations: 3 steps keep them below 1e-11 (test_optim checks convergence to 1 separately)
    ("rosen_wolfe", "rosenbrock", dict(line_search=1), 3),
    # a short history: the ring of curvature pairs wraps around
    ("rosen_wolfe_hist3", "rosenbrock", dict(line_search=1, history_size=3, max_iter=10, max_eval=15), 4),
    ("rosen_fixed", "rosenbrock", dict(lr=0.1, max_iter=15), 5),
    # few evaluations: max_eval ends the steps
    ("rosen_max_eval", "rosenbrock", dict(line_search=1, max_eval=6), 5),
    ("logreg_wolfe", "logreg", dict(line_search=1, max_iter=10), 3),
    ("logreg_fixed", "logreg", dict(max_iter=8, history_size=4), 4),
    # loose tolerances: the change and gradient tests end the steps early
    ("logreg_tolerance", "logreg", dict(line_search=1, tolerance_grad=1e-3, tolerance_change=1e-4), 3),
]


def lbfgs_data():
    gen = torch.Generator().manual_seed(20241206)
    d = torch.float64
    ra0 = torch.tensor([-1.5, -1.25, 0.5], dtype=d)
    rb0 = torch.tensor([2.0, 1.0, -0.5], dtype=d)
    lx = _q(torch.randn(12, 3, generator=gen, dtype=d))
    lw_true = torch.tensor([1.5, -2.0, 0.5], dtype=d)
    ly = (lx @ lw_true + 0.25 * torch.randn(12, generator=gen, dtype=d) > 0).to(d)
    lw0 = torch.zeros(3, dtype=d)
    lc0 = torch.zeros(1, dtype=d)
    return dict(RA0=ra0, RB0=rb0, LX=lx, LY=ly, LW0=lw0, LC0=lc0)


def lbfgs_loss(problem, p, ld):
    if problem == "rosenbrock":
        a, b = p
        return ((1 - a) ** 2 + 100 * (b - a ** 2) ** 2).sum()
    w, c = p
    z = ld["LX"] @ w + c
    return (torch.nn.functional.softplus(z) - ld["LY"] * z).mean() + 0.05 * (w ** 2).sum()


def run_lbfgs(problem, o, steps, ld):
    init = [ld["RA0"], ld["RB0"]] if problem == "rosenbrock" else [ld["LW0"], ld["LC0"]]
    p = [t.clone().requires_grad_(True) for t in init]
    o = dict(LB_DEFAULTS, **o)
    opt = torch.optim.LBFGS(p, lr=o["lr"], max_iter=o["max_iter"], max_eval=o["max_eval"],
                            tolerance_grad=o["tolerance_grad"], tolerance_change=o["tolerance_change"],
                            history_size=o["history_size"], line_search_fn="strong_wolfe" if o["line_search"] else None)

    def closure():
        opt.zero_grad()
        loss = lbfgs_loss(problem, p, ld)
        loss.backward()
        return loss

    recs, losses, evals, iters = [], [], [], []
    for _ in range(steps):
        losses.append(float(opt.step(closure)))
        st = opt.state[p[0]]
        recs.append(torch.cat([t.detach().flatten() for t in p]).clone())
        evals.append(st["func_evals"])
        iters.append(st["n_iter"])
    return recs, losses, evals, iters


def lbfgs_lines(ld):
    lines = []
    for name, problem, o, steps in LBFGS_CASES:
        recs, losses, evals, iters = run_lbfgs(problem, o, steps, ld)
        if not all(math.isfinite(v) for r in recs for v in r.tolist()):
            raise SystemExit("%s: diverged" % name)
        if len(set(iters)) < 2 and name != "logreg_tolerance":
            raise SystemExit("%s: n_iter does not change" % name)
        lines.append("case lbfgs %s %s" % (name, problem))
        lines += ["opt %s %s" % (k, fw.fmt_number(v)) for k, v in o.items()]
        for i, r in enumerate(recs):
            lines.append("at %d %s" % (i + 1, fw.fmt_numbers(r.tolist())))
        lines.append("loss %s" % fw.fmt_numbers(losses))
        lines.append("evals %s" % fw.fmt_numbers(evals))
        lines.append("iters %s" % fw.fmt_numbers(iters))
        lines.append("end")
    return lines


# ----------------------------------------------------------------------------------------------
# Schedule cases: (name, nabla kind, nabla opts, torch scheduler factory, metrics or None)
# ----------------------------------------------------------------------------------------------

LR0 = (0.1, 0.02)  # the two groups' lrs when the schedule is made
COS_WARMUP, COS_TMAX, COS_ETA_MIN, COS_WARMUP_START = 10, 100, 0.001, 0.1


def warmup_cosine_factor(e):
    """lr(e) / base for nabla's NB_SCHED_COSINE: base (ws + (1 - ws) e / warmup) during the warm-up,
    then eta_min + (base - eta_min) (1 + cos(pi (e - warmup) / (t_max - warmup))) / 2."""
    if e < COS_WARMUP:
        return COS_WARMUP_START + (1.0 - COS_WARMUP_START) * e / COS_WARMUP
    t = min(e - COS_WARMUP, COS_TMAX - COS_WARMUP)
    lr = COS_ETA_MIN + (LR0[0] - COS_ETA_MIN) * (1.0 + math.cos(math.pi * t / (COS_TMAX - COS_WARMUP))) / 2.0
    return lr / LR0[0]


def warmup_cosine_factor_g1(e):
    """the same for the second group: its own base, the same (absolute) eta_min"""
    if e < COS_WARMUP:
        return COS_WARMUP_START + (1.0 - COS_WARMUP_START) * e / COS_WARMUP
    t = min(e - COS_WARMUP, COS_TMAX - COS_WARMUP)
    lr = COS_ETA_MIN + (LR0[1] - COS_ETA_MIN) * (1.0 + math.cos(math.pi * t / (COS_TMAX - COS_WARMUP))) / 2.0
    return lr / LR0[1]


def plateau_min_metrics():
    """A loss that improves, plateaus (with changes below the 1e-4 relative threshold), improves
    again, and stalls for good: reductions, cooldowns and finally the min_lr floor."""
    m, v = [], 1.0
    for e in range(EPOCHS):
        if e < 8:
            v *= 0.9            # clear improvement
        elif e < 20:
            v *= 1 - 0.5e-4     # below the threshold: not an improvement
        elif e < 24:
            v *= 0.95
        elif e < 40:
            v *= 1.001 if e % 2 else 0.9995  # noise around a plateau
        elif e == 40:
            v *= 0.5
        else:
            v *= 1.0            # stalls: reductions down to min_lr
        m.append(v)
    return m


def plateau_max_metrics():
    """An accuracy that rises, then creeps up too slowly to count, then rises once more."""
    m, v = [], 0.5
    for e in range(EPOCHS):
        if e < 10:
            v += 0.03
        elif e < 30:
            v *= 1 + 0.5e-4
        elif e == 30:
            v += 0.01
        elif e < 60:
            v -= 0.001 * (e % 3)
        else:
            v += 0.0001 * math.sin(e)
        m.append(v)
    return m


def plateau_case(name, mode, metric_fn):
    """ReduceLROnPlateau with the same settings on both sides, minimising or maximising the metric."""
    return (name, "plateau",
            dict(maximize=int(mode == "max"), factor=0.5, patience=3, threshold=1e-4, cooldown=2, min_lr=1e-4),
            lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode=mode, factor=0.5, patience=3,
                                                                 threshold=1e-4, threshold_mode="rel",
                                                                 cooldown=2, min_lr=1e-4),
            metric_fn)


def onecycle(**kw):
    """OneCycleLR over EPOCHS + 1 steps whose peaks are the groups' lrs (nabla's bases). (At step
    total_steps, one past the cycle's last, torch extrapolates the last phase, to a negative lr with
    linear annealing; nabla holds the final lr there.)"""
    return lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=list(LR0), total_steps=EPOCHS + 1, **kw)


def frac_epochs():
    """fractional epochs, as step(epoch + batch / batches) gives with 4 batches, for 40 epochs"""
    return [e + i / 4 for e in range(40) for i in range(4)][1:]


# (name, nabla kind, nabla opts, torch scheduler factory, metrics or None, epochs or None,
#  (optimizer kind, its nabla options))
SCHED_CASES = [
    ("step", "step", dict(step_size=7, gamma=0.5),
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5), None),
    ("multistep", "multistep", dict(milestones=[10, 30, 31, 70], gamma=0.3),
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 30, 31, 70], gamma=0.3), None),
    ("exponential", "exponential", dict(gamma=0.97),
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.97), None),
    ("cosine", "cosine", dict(t_max=100, eta_min=0.001, warmup=0),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=100, eta_min=0.001), None),
    ("cosine_warmup", "cosine",
     dict(t_max=COS_TMAX, eta_min=COS_ETA_MIN, warmup=COS_WARMUP, warmup_start=COS_WARMUP_START),
     lambda o: torch.optim.lr_scheduler.LambdaLR(o, [warmup_cosine_factor, warmup_cosine_factor_g1]), None),
    plateau_case("plateau_min", "min", plateau_min_metrics),
    plateau_case("plateau_max", "max", plateau_max_metrics),
    ("lambda", "lambda", dict(),
     lambda o: torch.optim.lr_scheduler.LambdaLR(o, [lambda e: 1.0 / (1.0 + 0.05 * e), lambda e: 0.95 ** e]), None),
    ("onecycle_sgd", "onecycle", dict(total_steps=EPOCHS + 1), onecycle(), None, None, ("sgd", dict(momentum=0.9))),
    ("onecycle_adam_linear3", "onecycle",
     dict(total_steps=EPOCHS + 1, pct_start=0.25, div_factor=10.0, final_div_factor=100.0, anneal_linear=1, three_phase=1,
          base_momentum=0.8, max_momentum=0.9),
     onecycle(pct_start=0.25, div_factor=10.0, final_div_factor=100.0, anneal_strategy="linear", three_phase=True,
              base_momentum=0.8, max_momentum=0.9), None, None, ("adam", dict())),
    ("onecycle_no_momentum", "onecycle", dict(total_steps=EPOCHS + 1, cycle_momentum=0, pct_start=0.4),
     onecycle(cycle_momentum=False, pct_start=0.4), None, None, ("adagrad", dict())),
    ("warm_restarts", "warm_restarts", dict(t_0=10, t_mult=1, eta_min=0.001),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=1, eta_min=0.001), None),
    ("warm_restarts_mult", "warm_restarts", dict(t_0=3, t_mult=2, eta_min=0.0),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2), None),
    ("warm_restarts_frac", "warm_restarts", dict(t_0=5, t_mult=1, eta_min=0.002),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=1, eta_min=0.002), None,
     frac_epochs),
    ("warm_restarts_mult_frac", "warm_restarts", dict(t_0=2, t_mult=3, eta_min=0.001),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=3, eta_min=0.001), None,
     frac_epochs),
]


def run_sched(factory, metrics, epochs, okind, oopts):
    p = [torch.zeros(1, dtype=torch.float64, requires_grad=True) for _ in LR0]  # never get a gradient
    args = torch_args(okind, dict(oopts, lr=LR0[0]))
    groups = [{"params": [p[0]]}, dict(args, params=[p[1]], lr=LR0[1])]
    opt = TORCH_CLASSES[okind](groups, **args)
    sched = factory(opt)

    def mom(g):
        return g["betas"][0] if "betas" in g else g.get("momentum", 0.0)

    lrs = [[g["lr"]] for g in opt.param_groups]
    moms = [[mom(g)] for g in opt.param_groups]
    n = len(epochs) if epochs is not None else EPOCHS
    for e in range(n):
        opt.step()
        if epochs is not None:
            sched.step(epochs[e])
        elif metrics is None:
            sched.step()
        else:
            sched.step(metrics[e])
        for k, g in enumerate(opt.param_groups):
            lrs[k].append(g["lr"])
            moms[k].append(mom(g))
    return lrs, moms


def sched_lines():
    lines = []
    for case in SCHED_CASES:
        name, kind, o, factory, metric_fn = case[:5]
        epoch_fn = case[5] if len(case) > 5 else None
        okind, oopts = case[6] if len(case) > 6 else ("sgd", {})
        metrics = metric_fn() if metric_fn else None
        epochs = epoch_fn() if epoch_fn else None
        lrs, moms = run_sched(factory, metrics, epochs, okind, oopts)
        for k in range(len(LR0)):
            if len(set(lrs[k])) < 4:
                raise SystemExit("schedule %s: the lr hardly changes (%d distinct values)" % (name, len(set(lrs[k]))))
        if (o.get("eta_min", 0) or o.get("min_lr", 0)) and max(
                abs(b / a - LR0[1] / LR0[0]) for a, b in zip(lrs[0], lrs[1])) < 1e-9:
            raise SystemExit("schedule %s: the groups' lrs stay proportional: eta_min or min_lr untested" % name)
        lines.append("case sched %s %s" % (name, kind))
        if (okind, oopts) != ("sgd", {}):
            lines.append(" ".join(["optim", okind] + ["%s %s" % (k, fw.fmt_number(v)) for k, v in oopts.items()]))
        lines.append("lr0 %s" % fw.fmt_numbers(LR0))
        for k, v in o.items():
            lines.append("opt %s %s" % (k, fw.fmt_numbers(v if isinstance(v, list) else [v])))
        if metrics is not None:
            lines.append("metric %s" % fw.fmt_numbers(metrics))
        if epochs is not None:
            lines.append("epochs %s" % fw.fmt_numbers(epochs))
        for k in range(len(LR0)):
            lines.append("lr %d %s" % (k, fw.fmt_numbers(lrs[k])))
        if kind == "onecycle" and o.get("cycle_momentum", 1):
            for k in range(len(LR0)):
                lines.append("mom %d %s" % (k, fw.fmt_numbers(moms[k])))
        lines.append("end")
    return lines


# ----------------------------------------------------------------------------------------------


def fmt_data(name, t):
    return "data %s %s" % (name, fw.fmt_array(t))


def generate():
    torch.set_num_threads(1)  # one summation order for the reductions
    torch.set_default_dtype(torch.float64)  # state torch makes with torch.tensor(1.), e.g. NAdam's mu_product
    data = problem()
    X, Y, W0, b0 = data
    ld = lbfgs_data()
    lines = fw.header("nabla optimizer and schedule fixtures: PyTorch %s torch.optim, float64." % torch.__version__,
                      "gen_optim_fixtures.py", "nabla-optim-fixtures", FORMAT_VERSION)
    lines += [fmt_data("X", X), fmt_data("Y", Y), fmt_data("W0", W0), fmt_data("b0", b0)]
    lines += [fmt_data(k, v) for k, v in ld.items()]
    check_nadam(data)
    lines += optim_lines(data)
    lines += lbfgs_lines(ld)
    lines += sched_lines()
    return "\n".join(lines) + "\n"


def summary(out, text):
    return ("%s: %d optimizer cases (%d steps, %d recorded), %d L-BFGS cases, %d schedules (%d epochs), %d bytes"
            % (out, len(OPTIM_CASES) + len(GROUP_CASES) + len(FREEZE_CASES), STEPS, len(RECORD_AT), len(LBFGS_CASES),
               len(SCHED_CASES), EPOCHS, len(text)))


if __name__ == "__main__":
    sys.exit(fw.main(__doc__, DEFAULT_OUT, generate, summary))
