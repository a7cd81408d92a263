"""Per-op overhead of two builds of nabla side by side: the bench_overhead binaries of both (e.g. a
baseline commit's and this checkout's) run in alternating rounds, and the medians over rounds of each
round's forward + backward (and forward only) ns/op are shown with their ratio. For judging a change
of the engine against a fixed target on a shared, noisy machine: the two binaries see the same load.

    python3 bench/overhead_ab.py BASELINE_BIN [CANDIDATE_BIN] [--rounds 9] [--dtype f64]

CANDIDATE_BIN defaults to build-rel/bench/bench_overhead. Build a baseline from another commit in a
separate worktree, e.g.
    git worktree add --detach /tmp/nb-base 8fda508 && cd /tmp/nb-base &&
    meson setup build-rel --buildtype=release && ninja -C build-rel bench/bench_overhead
No PyTorch needed (bench/overhead.py compares with PyTorch).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402


def main():
    p = argparse.ArgumentParser(description="Alternating rounds of two bench_overhead binaries.")
    p.add_argument("baseline")
    p.add_argument("candidate", nargs="?", default=os.path.join("build-rel", "bench", "bench_overhead"))
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=9)
    p.add_argument("--repeats", type=bl.int_in(1, 100000), default=300)
    p.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    a = p.parse_args()
    bl.single_thread_env()
    bins = [a.baseline, a.candidate]
    fb = {b: [] for b in bins}
    fw = {b: [] for b in bins}
    for _ in range(a.rounds):
        for b in bins:
            d = bl.run_nabla("overhead_ab.py", b, ["--repeats", a.repeats, "--warmup-ms", 300, "--dtype", a.dtype])
            fb[b].append(d["fwd_bwd_ns_per_op"])
            fw[b].append(d["fwd_ns_per_op"])
    for b in bins:
        print(f"{b}: forward+backward {statistics.median(fb[b]):.2f} ns/op (range {min(fb[b]):.2f}-"
              f"{max(fb[b]):.2f}), forward {statistics.median(fw[b]):.2f}")
    ratio = statistics.median(fb[a.candidate]) / statistics.median(fb[a.baseline])
    print(f"candidate / baseline (forward+backward, medians of {a.rounds} rounds): {ratio:.3f}")
    print(f"load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
