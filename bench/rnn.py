"""A recurrent layer, nabla against PyTorch: one LSTM and one GRU layer of the same shape (input 64,
hidden 256, T 50, batch 32, float32 by default), forward + backward of sum(out) and forward alone,
median milliseconds per pass, and the ratio nabla / PyTorch. The issue's target: nabla's forward +
backward at most 0.6x PyTorch's time.

Both sides use the same weights and input, closed forms of the flat index j (see bench_rnn.c), so
they compute the same function; the script checks that sum(out) and the sums of |grad| of the four
parameters agree. The PyTorch side is torch.nn.LSTM / torch.nn.GRU:
    out, _ = layer(x); out.sum().backward()
with the gradients set to None before each pass, as nabla zeroes its own.

Run with Debian's python, which has torch (python3-torch), against a release build:
    meson setup /tmp/build-rel --buildtype=release && ninja -C /tmp/build-rel
    /usr/bin/python3 bench/rnn.py --nabla-bin /tmp/build-rel/bench/bench_rnn [--kinds lstm,gru]
        [--input 64] [--hidden 256] [--steps 50] [--batch 32] [--repeats 20] [--rounds 3] [--dtype f32]
Each round runs the nabla binary once (subprocess, --json) and then PyTorch, for each kind; the
figures shown are the medians over rounds of each round's median. One thread on both sides. Times
are given in wall time (the target's measure) and in the thread's CPU time, which a busy machine
inflates far less.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402
from torchbench import RNN_PARAMS, make_rnn, rnn_pass  # noqa: E402  (shared with scaling.py)

bl.single_thread_env()  # before torch loads

TARGET = 0.6  # the goal: nabla's forward + backward at most 0.6x PyTorch's time
TARGET_FLOOR = 1.10  # and at most 1.10x its own GEMM floor (the pass's products replayed alone, gemm_floor.h)
KEYS = ("fwd_bwd_ms", "fwd_ms", "fwd_bwd_cpu_ms", "fwd_cpu_ms")
LABELS = ("forward + backward", "forward only", "fwd + bwd, CPU time", "forward, CPU time")
# bench_rnn.c's parameters and closed forms, and the torch layer built from them: torchbench.py


def kinds(s):
    ks = [k.strip() for k in s.split(",") if k.strip()]
    if not ks or any(k not in ("lstm", "gru") for k in ks):
        raise argparse.ArgumentTypeError(f"'{s}': expected a comma-separated list of lstm, gru")
    return ks


def parse_args():
    p = argparse.ArgumentParser(description="One LSTM / GRU layer, forward + backward, in nabla and "
                                "PyTorch.")
    p.add_argument("--nabla-bin", default=os.path.join("build", "bench", "bench_rnn"),
                   help="the bench_rnn binary (default build/bench/bench_rnn, relative to the current "
                   "directory, else to the repository; use a release build for figures)")
    p.add_argument("--kinds", type=kinds, default=["lstm", "gru"], help="lstm,gru (both)")
    p.add_argument("--input", type=bl.int_in(1, 100000), default=64, help="input features (64)")
    p.add_argument("--hidden", type=bl.int_in(1, 100000), default=256, help="hidden units (256)")
    p.add_argument("--steps", type=bl.int_in(1, 100000), default=50, help="sequence length T (50)")
    p.add_argument("--batch", type=bl.int_in(1, 100000), default=32, help="sequences (32)")
    p.add_argument("--repeats", type=bl.int_in(1, 100000), default=20, help="timed passes (20)")
    p.add_argument("--warmup", type=bl.int_in(0, 100000), default=3,
                   help="untimed passes before timing (3), and at least...")
    p.add_argument("--warmup-ms", type=bl.int_in(0, 60000), default=500,
                   help="...this many milliseconds of them (500)")
    p.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=3,
                   help="alternating nabla/PyTorch rounds; medians over rounds are shown (3)")
    return p.parse_args()


def run_nabla(binary, kind, a):
    return bl.run_nabla("rnn.py", binary, ["--kind", kind, "--input", a.input, "--hidden", a.hidden,
                                           "--steps", a.steps, "--batch", a.batch, "--repeats", a.repeats,
                                           "--warmup", a.warmup, "--warmup-ms", a.warmup_ms, "--dtype", a.dtype])


def run_torch(torch, kind, a):
    """Median ms per pass of forward + backward and of forward only, in wall time and in this thread's
    CPU time (all of it with one thread), and the check values."""
    layer, x = make_rnn(torch, kind, a)
    out = {}
    for key, cpu_key, backward in (("fwd_bwd_ms", "fwd_bwd_cpu_ms", True), ("fwd_ms", "fwd_cpu_ms", False)):
        samples, cpu_samples = bl.time_calls(lambda: rnn_pass(layer, x, backward), a, cpu=True)
        out[key] = statistics.median(samples) / 1e6
        out[cpu_key] = statistics.median(cpu_samples) / 1e6
    y = rnn_pass(layer, x, True)
    out["y"] = y.item()
    for name in RNN_PARAMS:
        out["grad_" + name] = getattr(layer, name + "_l0").grad.double().abs().sum().item()
    return out


def check_values(kind, nb, pt, dtype):
    """Both sides must compute the same function and gradients. Sums over many float32 terms: a
    relative tolerance."""
    return bl.agree(nb, pt, ["y"] + ["grad_" + n for n in RNN_PARAMS], 1e-9 if dtype == "f64" else 2e-3,
                    f"{kind}: ")


def main():
    a = parse_args()
    binary = bl.find_binary(a.nabla_bin)
    torch = bl.import_torch("rnn.py")

    results = {}
    for kind in a.kinds:
        results[kind] = bl.alternate(a.rounds, lambda: run_nabla(binary, kind, a), lambda: run_torch(torch, kind, a))

    print(f"one recurrent layer: input {a.input}, hidden {a.hidden}, T {a.steps}, batch {a.batch}, "
          f"{a.dtype}; forward + backward of sum(out); median of {a.repeats} passes, median of "
          f"{a.rounds} rounds")
    print(bl.setup_line(torch, binary))
    print(f"{'':28s} {'nabla ms':>10s} {'PyTorch ms':>11s} {'nabla/PyTorch':>14s}"
          "   (range over rounds: nabla; PyTorch)")
    all_same, all_met = True, True
    for kind in a.kinds:
        nb_rounds, pt_rounds = results[kind]
        nb, pt = bl.medians(nb_rounds, KEYS), bl.medians(pt_rounds, KEYS)
        for k, label in zip(KEYS, LABELS):
            print(f"{kind.upper() + ' ' + label:28s} {nb[k]:10.2f} {pt[k]:11.2f} {nb[k] / pt[k]:14.3f}"
                  f"{bl.spread(nb_rounds, pt_rounds, k, 1)}")
        all_met &= nb[KEYS[0]] / pt[KEYS[0]] <= TARGET
        all_same &= check_values(kind, nb_rounds[-1], pt_rounds[-1], a.dtype)
        fl = bl.medians(nb_rounds, ("floor_ms", "floor_cpu_ms"))
        for r in nb_rounds:
            r["floor_ratio"] = r["fwd_bwd_cpu_ms"] / r["floor_cpu_ms"]
        lo, hi = bl.span(nb_rounds, "floor_ratio")
        print(f"{kind.upper() + ' GEMM floor':28s} {fl['floor_cpu_ms']:10.2f} ms CPU ({fl['floor_ms']:.2f} wall): "
              f"nabla's pass is {nb['fwd_bwd_cpu_ms'] / fl['floor_cpu_ms']:.3f}x its floor, CPU time ({lo:.3f}-{hi:.3f}; "
              f"target <= {TARGET_FLOOR}); the floor alone is {fl['floor_cpu_ms'] / pt['fwd_bwd_cpu_ms']:.3f}x "
              "PyTorch's pass")
    print(f"target nabla/PyTorch <= {TARGET} (forward + backward, wall time): "
          f"{'met' if all_met else 'NOT met'}")
    print("CPU time is this thread's: unlike wall time it does not grow while other processes hold the "
          "CPU, so it is the steadier figure on a busy machine")
    print("values and gradients agree" if all_same else "values or gradients DIFFER (see above)")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
