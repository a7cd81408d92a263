"""One MLP training step (bench_mlp.c) of two builds of nabla side by side, one thread: the binaries run
in alternating rounds and the medians over rounds of each round's median step CPU time (and wall time)
are shown with their ratio, and the load. For judging an engine change on a shared, noisy machine: both
binaries see the same load. Both must compute the same loss; the sums of |grad W| must agree to 1e-6.

    /usr/bin/python3 bench/mlp_ab.py BASELINE_BIN [CANDIDATE_BIN] [--rounds 9] [--batch 128]
        [--optim none|sgd|adam] [--dtype f32|f64] [--repeats 50]

CANDIDATE_BIN defaults to build-rel/bench/bench_mlp. Build a baseline from another commit elsewhere, e.g.
    mkdir /tmp/nb-base && git archive main | tar -x -C /tmp/nb-base && cd /tmp/nb-base &&
    meson setup build-rel --buildtype=release -Dnative=true && ninja -C build-rel bench/bench_mlp
No PyTorch needed (bench/mlp.py compares with PyTorch).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402


def main():
    p = argparse.ArgumentParser(description="Alternating rounds of two bench_mlp binaries, one thread.")
    p.add_argument("baseline")
    p.add_argument("candidate", nargs="?", default=os.path.join("build-rel", "bench", "bench_mlp"))
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=9)
    p.add_argument("--repeats", type=bl.int_in(1, 100000), default=50)
    p.add_argument("--batch", type=bl.int_in(1, 100000), default=128)
    p.add_argument("--optim", choices=["none", "sgd", "adam"], default="none")
    p.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    a = p.parse_args()
    bl.single_thread_env()
    print(f"load at start: {os.getloadavg()[0]:.2f}")
    bins = [a.baseline, a.candidate]
    cpu = {b: [] for b in bins}
    wall = {b: [] for b in bins}
    seen = {}
    for _ in range(a.rounds):
        for b in bins:
            d = bl.run_nabla("mlp_ab.py", b, ["--threads", 1, "--repeats", a.repeats, "--warmup-ms", 300,
                                              "--batch", a.batch, "--optim", a.optim, "--dtype", a.dtype])
            cpu[b].append(d["step_cpu_ms"])
            wall[b].append(d["step_ms"])
            seen.setdefault(b, (d["loss"], d["grad_abs_sum"]))
    (l0, g0), (l1, g1) = seen[a.baseline], seen[a.candidate]
    if l0 != l1 or abs(g0 - g1) > 1e-6 * abs(g0):
        sys.exit(f"mlp_ab.py: the builds disagree: loss {l0!r} vs {l1!r}, sum |grad W| {g0!r} vs {g1!r}")
    for b in bins:
        print(f"{b}: step {statistics.median(cpu[b]):.4f} ms CPU (range {min(cpu[b]):.4f}-{max(cpu[b]):.4f}), "
              f"{statistics.median(wall[b]):.4f} ms wall")
    ratio = statistics.median(cpu[a.candidate]) / statistics.median(cpu[a.baseline])
    print(f"candidate / baseline (step CPU time, medians of {a.rounds} rounds): {ratio:.3f}")
    print(f"load at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
