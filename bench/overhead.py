"""Per-op overhead, nabla against PyTorch: the same chain of ops on 1-element tensors in both, forward +
backward and forward only, median nanoseconds per op, and the ratio nabla / PyTorch.

The chain (as in bench_overhead.c): starting from x = 0.5, repeat sigmoid, * w, + b, tanh, with x, w
and b 1-element leaves that require grad (w = 4, b = -2). One forward + backward pass clears the
leaves' gradients, builds the chain, runs backward and releases the graph; forward only skips the
backward. The PyTorch side is written the way a user would write it (one Python statement per cycle
of four ops), so its cost includes the Python interpreter, as it does for a PyTorch user.

Run with Debian's python, which has torch (python3-torch):
    /usr/bin/python3 bench/overhead.py [--nabla-bin build/bench/bench_overhead] [--ops 1000]
        [--repeats 200] [--dtype f64|f32] [--rounds 5]
Each round runs the nabla binary once (subprocess, --json) and then PyTorch; the figures shown are the
medians over rounds of each round's median, so that a noisy neighbour on a small machine moves them
little.
"""
import os

# Single-threaded BLAS and intra-op work on both sides; set before torch (and its OpenBLAS) loads, and
# passed on to the nabla subprocess with the rest of the environment.
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1 / 50  # the goal: nabla's per-op cost at most 1/50 of PyTorch's


def int_in(lo, hi):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not a whole number")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is not in {lo}..{hi}")
        return v
    return parse


def parse_args():
    p = argparse.ArgumentParser(description="Per-op overhead of nabla and PyTorch on a chain of "
                                "1-element tensor ops.")
    p.add_argument("--nabla-bin", default=os.path.join("build", "bench", "bench_overhead"),
                   help="the bench_overhead binary (default build/bench/bench_overhead, relative to "
                   "the current directory, else to the repository)")
    p.add_argument("--ops", type=int_in(1, 100000), default=1000, help="ops in the chain (1000)")
    p.add_argument("--repeats", type=int_in(1, 1000000), default=200, help="timed passes (200)")
    p.add_argument("--warmup", type=int_in(0, 1000000), default=20,
                   help="untimed passes before timing (20), and at least...")
    p.add_argument("--warmup-ms", type=int_in(0, 60000), default=500,
                   help="...this many milliseconds of them (500): a CPU coming from idle runs slower "
                   "for a while")
    p.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    p.add_argument("--rounds", type=int_in(1, 100), default=5,
                   help="alternating nabla/PyTorch rounds; medians over rounds are shown (5)")
    return p.parse_args()


def find_binary(path):
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = os.path.join(REPO, path)
    return in_repo if os.path.exists(in_repo) else path


def run_nabla(binary, a):
    cmd = [binary, "--json", "--ops", str(a.ops), "--repeats", str(a.repeats), "--warmup",
           str(a.warmup), "--warmup-ms", str(a.warmup_ms), "--dtype", a.dtype]
    try:
        r = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"overhead.py: cannot run {binary}: {e.strerror} (build it with `ninja -C build`, or "
                 "pass --nabla-bin)")
    if r.returncode != 0:
        sys.exit(f"overhead.py: {' '.join(cmd)} exited with {r.returncode}:\n{r.stderr.strip()}")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        sys.exit(f"overhead.py: no JSON line from {binary}; it printed:\n{r.stdout}")


def torch_pass(torch, x, w, b, ops, backward):
    x.grad = w.grad = b.grad = None
    h = x
    for _ in range(ops // 4):
        h = torch.tanh(torch.sigmoid(h) * w + b)
    rest = ops % 4
    if rest > 0:
        h = torch.sigmoid(h)
    if rest > 1:
        h = h * w
    if rest > 2:
        h = h + b
    if backward:
        h.backward()
    return h  # released by the caller, inside the timed region


def run_torch(torch, a):
    """Median ns per op of forward + backward and of forward only, and the check values."""
    dt = torch.float64 if a.dtype == "f64" else torch.float32
    x = torch.tensor([0.5], dtype=dt, requires_grad=True)
    w = torch.tensor([4.0], dtype=dt, requires_grad=True)
    b = torch.tensor([-2.0], dtype=dt, requires_grad=True)
    clock = time.perf_counter_ns
    out = {}
    gc.disable()
    try:
        for key, backward in (("fwd_bwd_ns_per_op", True), ("fwd_ns_per_op", False)):
            start, n = clock(), 0
            while n < a.warmup or clock() - start < a.warmup_ms * 1e6:
                torch_pass(torch, x, w, b, a.ops, backward)
                n += 1
            samples = []
            for _ in range(a.repeats):
                t0 = clock()
                y = torch_pass(torch, x, w, b, a.ops, backward)
                del y
                samples.append(clock() - t0)
            out[key] = statistics.median(samples) / a.ops
    finally:
        gc.enable()
    y = torch_pass(torch, x, w, b, a.ops, True)
    out.update(y=y.item(), grad_x=x.grad.item(), grad_w=w.grad.item(), grad_b=b.grad.item())
    return out


def check_values(nb, pt, dtype):
    """Both sides must compute the same function and gradients (a guard against benchmarking a
    different workload by mistake)."""
    tol = 1e-9 if dtype == "f64" else 1e-3
    bad = [k for k in ("y", "grad_x", "grad_w", "grad_b")
           if abs(nb[k] - pt[k]) > tol * max(1.0, abs(pt[k]))]
    for k in bad:
        print(f"warning: {k} differs: nabla {nb[k]!r}, PyTorch {pt[k]!r}", file=sys.stderr)
    return not bad


def main():
    a = parse_args()
    binary = find_binary(a.nabla_bin)
    try:
        import torch
    except ImportError:
        sys.exit("overhead.py: torch is not importable by this python; run it with /usr/bin/python3 "
                 "(Debian's python3-torch)")
    torch.set_num_threads(1)

    keys = ("fwd_bwd_ns_per_op", "fwd_ns_per_op")
    nb_rounds, pt_rounds = [], []
    for _ in range(a.rounds):
        nb_rounds.append(run_nabla(binary, a))
        pt_rounds.append(run_torch(torch, a))
    nb = {k: statistics.median(r[k] for r in nb_rounds) for k in keys}
    pt = {k: statistics.median(r[k] for r in pt_rounds) for k in keys}
    same = check_values(nb_rounds[-1], pt_rounds[-1], a.dtype)

    print(f"per-op overhead: chain of {a.ops} ops (sigmoid, *w, +b, tanh) on 1-element {a.dtype} "
          f"tensors; median of {a.repeats} passes, median of {a.rounds} rounds")
    print(f"nabla: {binary}; PyTorch {torch.__version__}, {torch.get_num_threads()} thread; "
          f"{os.cpu_count()} CPUs")
    print(f"{'':20s} {'nabla ns/op':>12s} {'PyTorch ns/op':>14s} {'nabla/PyTorch':>14s} {'speed-up':>9s}"
          "   (range over rounds: nabla; PyTorch)")
    for k, label in zip(keys, ("forward + backward", "forward only")):
        ratio = nb[k] / pt[k]
        spread = "   ({:.0f}-{:.0f}; {:.0f}-{:.0f})".format(
            min(r[k] for r in nb_rounds), max(r[k] for r in nb_rounds),
            min(r[k] for r in pt_rounds), max(r[k] for r in pt_rounds))
        print(f"{label:20s} {nb[k]:12.1f} {pt[k]:14.1f} {ratio:14.4f} {1 / ratio:8.1f}x{spread}")
    ratio = nb[keys[0]] / pt[keys[0]]
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"target nabla/PyTorch <= 1/50 = {TARGET:.4f} (forward + backward): {verdict}")
    print("values and gradients agree" if same else "values or gradients DIFFER (see above)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
