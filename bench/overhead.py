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
little. --baseline-bin BIN also runs another build's bench_overhead in each round (say, of main, built
in another folder) and shows this build's cost against it, to see what a change costs per op.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402

bl.single_thread_env()  # before torch loads

TARGET = 1 / 50  # the goal: nabla's per-op cost at most 1/50 of PyTorch's


def parse_args():
    p = argparse.ArgumentParser(description="Per-op overhead of nabla and PyTorch on a chain of "
                                "1-element tensor ops.")
    p.add_argument("--nabla-bin", default=os.path.join("build", "bench", "bench_overhead"),
                   help="the bench_overhead binary (default build/bench/bench_overhead, relative to "
                   "the current directory, else to the repository)")
    p.add_argument("--ops", type=bl.int_in(1, 100000), default=1000, help="ops in the chain (1000)")
    p.add_argument("--repeats", type=bl.int_in(1, 1000000), default=200, help="timed passes (200)")
    p.add_argument("--warmup", type=bl.int_in(0, 1000000), default=20,
                   help="untimed passes before timing (20), and at least...")
    p.add_argument("--warmup-ms", type=bl.int_in(0, 60000), default=500,
                   help="...this many milliseconds of them (500): a CPU coming from idle runs slower "
                   "for a while")
    p.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=5,
                   help="alternating nabla/PyTorch rounds; medians over rounds are shown (5)")
    p.add_argument("--baseline-bin", default=None,
                   help="another build's bench_overhead, timed in the same rounds (before/after a change)")
    return p.parse_args()


def run_nabla(binary, a):
    return bl.run_nabla("overhead.py", binary, ["--ops", a.ops, "--repeats", a.repeats, "--warmup", a.warmup,
                                                "--warmup-ms", a.warmup_ms, "--dtype", a.dtype])


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
    out = {}
    for key, backward in (("fwd_bwd_ns_per_op", True), ("fwd_ns_per_op", False)):
        samples, _ = bl.time_calls(lambda: torch_pass(torch, x, w, b, a.ops, backward), a)
        out[key] = statistics.median(samples) / a.ops
    y = torch_pass(torch, x, w, b, a.ops, True)
    out.update(y=y.item(), grad_x=x.grad.item(), grad_w=w.grad.item(), grad_b=b.grad.item())
    return out


def main():
    a = parse_args()
    binary = bl.find_binary(a.nabla_bin)
    torch = bl.import_torch("overhead.py")

    keys = ("fwd_bwd_ns_per_op", "fwd_ns_per_op")
    runs = [lambda: run_nabla(binary, a), lambda: run_torch(torch, a)]
    if a.baseline_bin:
        base_bin = bl.find_binary(a.baseline_bin)
        runs.append(lambda: run_nabla(base_bin, a))
    nb_rounds, pt_rounds, *base = bl.alternate(a.rounds, *runs)
    nb, pt = bl.medians(nb_rounds, keys), bl.medians(pt_rounds, keys)
    # both sides must compute the same function and gradients
    same = bl.agree(nb_rounds[-1], pt_rounds[-1], ("y", "grad_x", "grad_w", "grad_b"),
                    1e-9 if a.dtype == "f64" else 1e-3)

    print(f"per-op overhead: chain of {a.ops} ops (sigmoid, *w, +b, tanh) on 1-element {a.dtype} "
          f"tensors; median of {a.repeats} passes, median of {a.rounds} rounds")
    print(bl.setup_line(torch, binary))
    print(f"{'':20s} {'nabla ns/op':>12s} {'PyTorch ns/op':>14s} {'nabla/PyTorch':>14s} {'speed-up':>9s}"
          "   (range over rounds: nabla; PyTorch)")
    for k, label in zip(keys, ("forward + backward", "forward only")):
        ratio = nb[k] / pt[k]
        print(f"{label:20s} {nb[k]:12.1f} {pt[k]:14.1f} {ratio:14.4f} {1 / ratio:8.1f}x"
              f"{bl.spread(nb_rounds, pt_rounds, k, 0)}")
    ratio = nb[keys[0]] / pt[keys[0]]
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"target nabla/PyTorch <= 1/50 = {TARGET:.4f} (forward + backward): {verdict}")
    if a.baseline_bin:
        bs = bl.medians(base[0], keys)
        for k, label in zip(keys, ("forward + backward", "forward only")):
            lo, hi = bl.span(base[0], k)
            print(f"baseline {label:20s} {bs[k]:8.1f} ns/op ({lo:.1f}-{hi:.1f}); this build / baseline "
                  f"{nb[k] / bs[k]:.3f}")
    print("values and gradients agree" if same else "values or gradients DIFFER (see above)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
