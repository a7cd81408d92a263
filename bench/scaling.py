"""Scaling from one thread to all cores: nabla with 1 and N threads (the one knob, NB_NUM_THREADS) against
PyTorch with one thread and with the N-thread configurations a user would try, in one run.

Workloads (wall time, the measure once several threads work):
    mlp    one MLP training step, 784-512-256-10, batch 512 (bench_mlp, torchbench.py mlp)
    mnist  one epoch of the Fashion-MNIST training of mnist.py (the median epoch of --mnist-epochs)
    lstm   one LSTM layer forward + backward, input 64, hidden 256, T 50, batch 128 (bench_rnn)
    adam   one Adam step on 10M float32 parameters (bench_adam, torchbench.py adam)
    cnn    one training step of examples/fashion_mnist's CNN, batch 128 (bench_conv --case cnn,
           torchbench.py cnn; PyTorch runs oneDNN for the convolutions)
PyTorch configurations (OpenMP intra-op threads / OpenBLAS threads): 1/1, N/N, 1/N, and N/N with
OMP_WAIT_POLICY=PASSIVE; its best N-thread figure is the comparison. nabla also runs with N threads and
OMP_WAIT_POLICY=PASSIVE (the setting for machines shared with other work). The issue's targets on a
2-core machine: nabla's speed-up from 1 to 2 threads >= 1.7x where the work is large enough, and nabla
ahead of PyTorch's best 2-thread configuration.

Run with Debian's python (python3-torch) against a release build, on a machine that is otherwise idle
(the load average is printed before and after; other work on the cores ruins any scaling figure):
    meson setup build-rel --buildtype=release && ninja -C build-rel
    /usr/bin/python3 bench/scaling.py --build build-rel [--threads 2] [--rounds 3] [--workloads mlp,mnist,lstm,adam,cnn]
Each round runs every configuration of every workload once, in turn; the figures are medians over
rounds, with ranges.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402

TARGET_SPEEDUP = 1.7
WORKLOADS = ("mlp", "mnist", "lstm", "adam", "cnn")


def parse_args():
    p = argparse.ArgumentParser(description="nabla and PyTorch from one thread to all cores.")
    p.add_argument("--build", default="build", help="the build folder (use a release build)")
    p.add_argument("--threads", type=bl.int_in(2, 1024), default=os.cpu_count() or 2,
                   help="the thread count to scale to (default: every core)")
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=3)
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated subset of " + ",".join(WORKLOADS))
    p.add_argument("--mnist-epochs", type=bl.int_in(1, 100), default=3)
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    a = p.parse_args()
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    bad = [w for w in a.workloads if w not in WORKLOADS]
    if bad or not a.workloads:
        p.error(f"unknown workloads {bad}")
    return a


def workload_runs(a, w):
    """(nabla runner(threads, passive) -> ms, PyTorch runner(omp, blas, passive) -> ms, description)"""
    b = lambda name: bl.find_binary(os.path.join(a.build, "bench", name))  # noqa: E731

    if w == "mlp":
        args = ["--batch", 512, "--repeats", 30]
        return (lambda t, pas: bl.run_nabla("scaling.py", b("bench_mlp"), args, bl.thread_env(nabla=t, passive=pas))["step_ms"],
                lambda o, k, pas: bl.run_torch_worker("scaling.py", "mlp", args, bl.thread_env(torch_threads=o, blas=k, passive=pas))["step_ms"],
                "MLP 784-512-256-10 step, batch 512")
    if w == "mnist":
        args = ["--epochs", a.mnist_epochs]
        med = lambda r: statistics.median(r["epoch_ms"])  # noqa: E731
        return (lambda t, pas: med(bl.run_nabla("scaling.py", b("bench_mnist"), args, bl.thread_env(nabla=t, passive=pas))),
                lambda o, k, pas: med(bl.run_torch_worker("scaling.py", "mnist", args, bl.thread_env(torch_threads=o, blas=k, passive=pas))),
                "Fashion-MNIST epoch (MLP 784-256-128-10, batch 128, dropout, Adam)")
    if w == "lstm":
        args = ["--kind", "lstm", "--batch", 128, "--repeats", 10]
        return (lambda t, pas: bl.run_nabla("scaling.py", b("bench_rnn"), args, bl.thread_env(nabla=t, passive=pas))["fwd_bwd_ms"],
                lambda o, k, pas: bl.run_torch_worker("scaling.py", "rnn", args, bl.thread_env(torch_threads=o, blas=k, passive=pas))["fwd_bwd_ms"],
                "LSTM in 64, hidden 256, T 50, batch 128, forward + backward")
    if w == "cnn":
        args = ["--repeats", 20]
        return (lambda t, pas: bl.run_nabla("scaling.py", b("bench_conv"), ["--case", "cnn"] + args, bl.thread_env(nabla=t, passive=pas))["step_ms"],
                lambda o, k, pas: bl.run_torch_worker("scaling.py", "cnn", args, bl.thread_env(torch_threads=o, blas=k, passive=pas))["step_ms"],
                "Fashion-MNIST CNN training step, batch 128 (conv32-bn-relu-pool, conv64-bn-relu-pool, fc256, fc10, AdamW)")
    args = ["--n", 10000000, "--repeats", 30]
    return (lambda t, pas: bl.run_nabla("scaling.py", b("bench_adam"), args, bl.thread_env(nabla=t, passive=pas))["median_ns"] / 1e6,
            lambda o, k, pas: bl.run_torch_worker("scaling.py", "adam", args, bl.thread_env(torch_threads=o, blas=k, passive=pas))["median_ns"] / 1e6,
            "Adam step, 10M f32 parameters")


def main():
    a = parse_args()
    n = a.threads
    configs = [("nabla 1", "nb", 1, 1, False), (f"nabla {n}", "nb", n, n, False),
               (f"nabla {n} passive", "nb", n, n, True)]
    if not a.no_torch:
        configs += [("PyTorch 1/1", "pt", 1, 1, False), (f"PyTorch {n}/{n}", "pt", n, n, False),
                    (f"PyTorch 1/{n}", "pt", 1, n, False), (f"PyTorch {n}/{n} passive", "pt", n, n, True)]
    load0 = bl.load_line()
    res = {w: {c[0]: [] for c in configs} for w in a.workloads}
    for _ in range(a.rounds):
        for w in a.workloads:
            nb_run, pt_run, _ = workload_runs(a, w)
            for name, side, o, k, pas in configs:
                res[w][name].append(nb_run(o, pas) if side == "nb" else pt_run(o, k, pas))
    print(f"scaling to {n} threads; medians of {a.rounds} rounds (wall ms; ranges over rounds in brackets)")
    print(f"{load0} before, {bl.load_line()} after")
    for w in a.workloads:
        desc = workload_runs(a, w)[2]
        med = {name: statistics.median(v) for name, v in res[w].items()}
        print(f"\n{desc}")
        for name, v in res[w].items():
            print(f"  {name:24s} {med[name]:10.2f} ms   ({min(v):.2f}-{max(v):.2f})")
        sp = med["nabla 1"] / med[f"nabla {n}"]
        print(f"  nabla speed-up 1 -> {n} threads: {sp:.2f}x (target >= {TARGET_SPEEDUP}x: "
              f"{'met' if sp >= TARGET_SPEEDUP else 'NOT met'}); with passive waits {med['nabla 1'] / med[f'nabla {n} passive']:.2f}x")
        if not a.no_torch:
            pt = {k: v for k, v in med.items() if k.startswith("PyTorch") and k != "PyTorch 1/1"}
            best = min(pt, key=pt.get)
            r = med[f"nabla {n}"] / pt[best]
            print(f"  PyTorch's best {n}-thread configuration: {best}, {pt[best]:.2f} ms (its own speed-up "
                  f"{med['PyTorch 1/1'] / pt[best]:.2f}x); nabla {n} / that: {r:.3f} ({'ahead' if r < 1 else 'NOT ahead'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
