"""One Adam step on 1M float32 parameters, nabla against torch.optim.Adam (one thread each), in one run.
Target: nabla <= 0.5x PyTorch's time.

The problem (as in bench_adam.c): N parameters (default 1,000,000) in T tensors (default 1), element i
starting at ((37 i) mod 1000) / 1000 - 0.5, with the gradient ((91 i) mod 2000) / 1000 - 1 set once and
kept; Adam with torch's defaults (lr 1e-3, betas 0.9/0.999, eps 1e-8). What is timed is one
optimizer.step() (nb_optim_step on the nabla side), each step alone, median over --repeats steps after
a warm-up. PyTorch runs in two forms: its default (in torch 1.13 on the CPU, foreach=None means the
single-tensor loop, i.e. foreach=False) and foreach=True (the multi-tensor ops). Both sides first take
--check-steps steps from the same start and must reach the same sum(p * g) (the loss, which each step
lowers by about lr sum |g|, so a different update shows).

Run with Debian's python, which has torch (python3-torch), on a release build:
    meson setup /tmp/build-rel --buildtype=release && ninja -C /tmp/build-rel
    /usr/bin/python3 bench/adam.py --nabla-bin /tmp/build-rel/bench/bench_adam [--n 1000000]
        [--tensors 1] [--repeats 200] [--rounds 5] [--dtype f32|f64] [--amsgrad]
Each round runs the nabla binary once (subprocess, --json) and then PyTorch; the figures shown are the
medians over rounds of each round's median. Every step is timed in the thread's CPU time (which
the verdict uses: on a machine shared with other work, wall time also counts the waits, which grow
with the step's length) and in wall time.
"""
import argparse
import functools
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402
from torchbench import make_adam_problem  # noqa: E402  (shared with scaling.py)

bl.single_thread_env()  # before torch loads

TARGET = 0.5  # nabla's step time at most half of PyTorch's


def parse_args():
    p = argparse.ArgumentParser(description="One Adam step, nabla against torch.optim.Adam.")
    p.add_argument("--nabla-bin", default=os.path.join("build", "bench", "bench_adam"),
                   help="the bench_adam binary (default build/bench/bench_adam, relative to the current "
                   "directory, else to the repository); use a release build for figures")
    p.add_argument("--n", type=bl.int_in(1, 100000000), default=1000000, help="parameters (1000000)")
    p.add_argument("--tensors", type=bl.int_in(1, 1000), default=1, help="tensors they are split into (1)")
    p.add_argument("--repeats", type=bl.int_in(1, 100000), default=200, help="timed steps (200)")
    p.add_argument("--warmup", type=bl.int_in(0, 100000), default=10,
                   help="untimed steps first (10), and at least...")
    p.add_argument("--warmup-ms", type=bl.int_in(0, 60000), default=300,
                   help="...this many milliseconds of them (300)")
    p.add_argument("--check-steps", type=bl.int_in(1, 1000), default=3,
                   help="steps of the run whose sum(p * g) is compared (3)")
    p.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    p.add_argument("--amsgrad", action="store_true", help="Adam with amsgrad on both sides")
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=5,
                   help="alternating nabla/PyTorch rounds; medians over rounds are shown (5)")
    return p.parse_args()


def run_nabla(binary, a):
    return bl.run_nabla("adam.py", binary, ["--n", a.n, "--tensors", a.tensors, "--repeats", a.repeats,
                                            "--warmup", a.warmup, "--warmup-ms", a.warmup_ms, "--check-steps",
                                            a.check_steps, "--dtype", a.dtype] + (["--amsgrad"] if a.amsgrad else []))


def run_torch(torch, a, foreach):
    """Median ns of one step, and the check sum, for torch.optim.Adam(foreach=foreach)."""
    kw = {} if foreach is None else {"foreach": foreach}
    params = make_adam_problem(torch, a)
    opt = torch.optim.Adam(params, amsgrad=a.amsgrad, **kw)
    for _ in range(a.check_steps):
        opt.step()
    check = sum((p.detach().double() * p.grad.double()).sum().item() for p in params)

    params = make_adam_problem(torch, a)
    opt = torch.optim.Adam(params, amsgrad=a.amsgrad, **kw)
    samples, cpu = bl.time_calls(opt.step, a, cpu=True)
    return {"median_ns": statistics.median(samples), "min_ns": min(samples),
            "cpu_median_ns": statistics.median(cpu), "cpu_min_ns": min(cpu), "check_sum": check}


def cpu_capability(torch):
    """The SIMD level PyTorch's kernels run with (AVX2, AVX512...), as its build summary reports it."""
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage:" in line:
            return line.split(":", 1)[1].strip()
    return "CPU capability unknown"


def main():
    a = parse_args()
    binary = bl.find_binary(a.nabla_bin)
    torch = bl.import_torch("adam.py")

    variants = [("PyTorch default", None), ("PyTorch foreach=True", True)]
    # each round: nabla, then every PyTorch variant
    nb_rounds, *pt_lists = bl.alternate(a.rounds, functools.partial(run_nabla, binary, a),
                                        *(functools.partial(run_torch, torch, a, fe) for _, fe in variants))
    pt_rounds = {name: rounds for (name, _), rounds in zip(variants, pt_lists)}

    print(f"one Adam step: {a.n} {a.dtype} parameters in {a.tensors} tensor(s)"
          f"{', amsgrad' if a.amsgrad else ''}; median of {a.repeats} steps, median of {a.rounds} rounds")
    print(bl.setup_line(torch, binary, f", {cpu_capability(torch)}", f", load average {os.getloadavg()[0]:.1f}"))
    print(f"{'':22s} {'cpu us':>9s} {'nabla/this':>10s} {'wall us':>9s} {'nabla/this':>10s} {'ns/elem':>8s}"
          "   (range of the cpu medians over rounds)")
    rows = [("nabla", nb_rounds)] + [(name, pt_rounds[name]) for name, _ in variants]
    med = {name: bl.medians(rs, ("cpu_median_ns", "median_ns")) for name, rs in rows}
    nb = med["nabla"]
    for name, rs in rows:
        m = med[name]
        lo, hi = bl.span(rs, "cpu_median_ns")
        print(f"{name:22s} {m['cpu_median_ns'] / 1e3:9.1f} {nb['cpu_median_ns'] / m['cpu_median_ns']:10.3f} "
              f"{m['median_ns'] / 1e3:9.1f} {nb['median_ns'] / m['median_ns']:10.3f} "
              f"{m['cpu_median_ns'] / a.n:8.3f}   ({lo / 1e3:.0f}-{hi / 1e3:.0f})")
    r = nb["cpu_median_ns"] / med["PyTorch default"]["cpu_median_ns"]
    r_fe = nb["cpu_median_ns"] / med["PyTorch foreach=True"]["cpu_median_ns"]
    print(f"target nabla <= {TARGET}x PyTorch's time (default Adam, cpu time): {r:.3f}x, "
          f"{'met' if r <= TARGET else 'NOT met'} (against foreach=True: {r_fe:.3f}x)")

    tol = 1e-6 if a.dtype == "f32" else 1e-12
    nb_sum = nb_rounds[-1]["check_sum"]
    same = True
    for name, _ in variants:
        pt_sum = pt_rounds[name][-1]["check_sum"]
        if abs(nb_sum - pt_sum) > tol * max(1.0, abs(pt_sum), a.n * 1e-3):
            print(f"warning: sum(p * g) after {a.check_steps} steps differs: nabla {nb_sum!r}, "
                  f"{name} {pt_sum!r}", file=sys.stderr)
            same = False
    print(f"parameters after {a.check_steps} steps agree (sum(p * g) = {nb_sum:.9g})" if same
          else "parameters DIFFER (see above)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
