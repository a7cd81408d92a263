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
zero_grad(), loss.backward(), step(); the parameters are recorded after the steps in RECORD_AT, and
every state tensor of the optimizer after the last step. Each schedule case drives plain SGD (lr
0.1, no gradients, so the parameters never move) for EPOCHS epochs and records the lr at epoch 0
(after construction) and after every scheduler.step().

File format (ASCII, one record per line, tokens separated by single spaces)
-------------------------------------------------------------------------------------------------
    # anything                          a comment (also blank lines): ignored
    nabla-optim-fixtures 1              the first non-comment line: format name and version
    data <name> <ndim> <dim>... <value>...
                                        problem data: X, Y, W0, b0 (in this order, before any case)
    case optim <name> <kind>            an optimizer trajectory; kind: sgd adam adamw rmsprop adagrad
    opt <field> <number>                a field of nb_optim_opts to set after nb_optim_defaults(kind)
                                        (0/1 for the flags amsgrad, nesterov, centered)
    at <step> <W values> <b values>     parameters after step <step> (1-based), W then b, row-major
    state <name> <values>               an optimizer state after the last step, named as nabla names
                                        it: "<param>.<torch state key>", e.g. W.exp_avg
    end                                 ends the case
    case sched <name> <kind>            a schedule; kind: step multistep exponential cosine plateau
    lr0 <number>                        the optimizer's lr when the schedule is made (its base)
    opt <field> <number>...             a field of nb_sched_opts to set after nb_sched_defaults(kind);
                                        milestones takes a list (n_milestones is its length)
    metric <value>...                   plateau: the metric passed to step i (i = 1..epochs)
    lr <value>...                       lr at epoch 0, 1, ..., epochs
    end

Values are Python's repr of float64, which round-trips exactly through C's strtod.
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fixture_writer.py, beside this file
import fixture_writer as fw  # noqa: E402

FORMAT_VERSION = 1
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
]

# nabla's defaults (nb_optim_defaults), which must be torch's
NB_DEFAULTS = {
    "sgd": dict(lr=1e-2),
    "adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
    "adamw": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2),
    "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8),
    "adagrad": dict(lr=1e-2, eps=1e-10),
}


def torch_optimizer(kind, params, o):
    o = dict(NB_DEFAULTS[kind], **o)
    g = lambda k, d=0.0: o.get(k, d)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=g("lr"), momentum=g("momentum"), dampening=g("dampening"),
                               weight_decay=g("weight_decay"), nesterov=bool(g("nesterov", 0)),
                               foreach=False)
    if kind in ("adam", "adamw"):
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        return cls(params, lr=g("lr"), betas=(g("beta1"), g("beta2")), eps=g("eps"),
                   weight_decay=g("weight_decay"), amsgrad=bool(g("amsgrad", 0)), foreach=False)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=g("lr"), alpha=g("alpha"), eps=g("eps"),
                                   weight_decay=g("weight_decay"), momentum=g("momentum"),
                                   centered=bool(g("centered", 0)), foreach=False)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=g("lr"), lr_decay=g("lr_decay"),
                                   weight_decay=g("weight_decay"),
                                   initial_accumulator_value=g("initial_accumulator"), eps=g("eps"),
                                   foreach=False)
    raise ValueError(kind)


def run_optim(kind, o, data):
    X, Y, W0, b0 = data
    W = W0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch_optimizer(kind, [W, b], o)
    recs = {}
    for step in range(1, STEPS + 1):
        opt.zero_grad()
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
            states.append(("%s.%s" % (pname, key), v.detach().flatten().clone()))
    return recs, states, loss.item()


def optim_lines(data):
    lines = []
    trajectories = {}
    for name, kind, o in OPTIM_CASES:
        recs, states, final_loss = run_optim(kind, o, data)
        trajectories[name] = recs[STEPS]
        lines.append("case optim %s %s" % (name, kind))
        lines += ["opt %s %s" % (k, fw.fmt_number(v)) for k, v in o.items()]
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
                  ("adagrad_lr_decay", "adagrad_wd")]:
        diff = (trajectories[a] - trajectories[b_]).abs().max().item()
        if diff < 1e-6:
            raise SystemExit("cases %s and %s end within %g of each other" % (a, b_, diff))
    return lines


# ----------------------------------------------------------------------------------------------
# Schedule cases: (name, nabla kind, nabla opts, torch scheduler factory, metrics or None)
# ----------------------------------------------------------------------------------------------

LR0 = 0.1
COS_WARMUP, COS_TMAX, COS_ETA_MIN, COS_WARMUP_START = 10, 100, 0.001, 0.1


def warmup_cosine_factor(e):
    """lr(e) / base for nabla's NB_SCHED_COSINE: base (ws + (1 - ws) e / warmup) during the warm-up,
    then eta_min + (base - eta_min) (1 + cos(pi (e - warmup) / (t_max - warmup))) / 2."""
    if e < COS_WARMUP:
        return COS_WARMUP_START + (1.0 - COS_WARMUP_START) * e / COS_WARMUP
    t = min(e - COS_WARMUP, COS_TMAX - COS_WARMUP)
    lr = COS_ETA_MIN + (LR0 - COS_ETA_MIN) * (1.0 + math.cos(math.pi * t / (COS_TMAX - COS_WARMUP))) / 2.0
    return lr / LR0


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
     lambda o: torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine_factor), None),
    plateau_case("plateau_min", "min", plateau_min_metrics),
    plateau_case("plateau_max", "max", plateau_max_metrics),
]


def run_sched(factory, metrics):
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # never gets a gradient
    opt = torch.optim.SGD([p], lr=LR0)
    sched = factory(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for e in range(EPOCHS):
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[e])
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def sched_lines():
    lines = []
    for name, kind, o, factory, metric_fn in SCHED_CASES:
        metrics = metric_fn() if metric_fn else None
        lrs = run_sched(factory, metrics)
        if len(set(lrs)) < 4:
            raise SystemExit("schedule %s: the lr hardly changes (%d distinct values)" % (name, len(set(lrs))))
        lines.append("case sched %s %s" % (name, kind))
        lines.append("lr0 %s" % fw.fmt_number(LR0))
        for k, v in o.items():
            lines.append("opt %s %s" % (k, fw.fmt_numbers(v if isinstance(v, list) else [v])))
        if metrics is not None:
            lines.append("metric %s" % fw.fmt_numbers(metrics))
        lines.append("lr %s" % fw.fmt_numbers(lrs))
        lines.append("end")
    return lines


# ----------------------------------------------------------------------------------------------


def fmt_data(name, t):
    return "data %s %s" % (name, fw.fmt_array(t))


def generate():
    torch.set_num_threads(1)  # one summation order for the reductions
    data = problem()
    X, Y, W0, b0 = data
    lines = fw.header("nabla optimizer and schedule fixtures: PyTorch %s torch.optim, float64." % torch.__version__,
                      "gen_optim_fixtures.py", "nabla-optim-fixtures", FORMAT_VERSION)
    lines += [fmt_data("X", X), fmt_data("Y", Y), fmt_data("W0", W0), fmt_data("b0", b0)]
    lines += optim_lines(data)
    lines += sched_lines()
    return "\n".join(lines) + "\n"


def summary(out, text):
    return ("%s: %d optimizer cases (%d steps, %d recorded), %d schedules (%d epochs), %d bytes"
            % (out, len(OPTIM_CASES), STEPS, len(RECORD_AT), len(SCHED_CASES), EPOCHS, len(text)))


if __name__ == "__main__":
    sys.exit(fw.main(__doc__, DEFAULT_OUT, generate, summary))
