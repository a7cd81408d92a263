"""Fashion-MNIST training end to end: nabla (bench_mnist.c), the same training hand-written in plain C +
OpenBLAS (bench_mnist_plain.c, a KANN-like baseline) and PyTorch (torchbench.py mnist), in one run.

The training: MLP 784-256-128-10, ReLU, dropout 0.2 after each hidden layer, cross-entropy, Adam (lr
1e-3), batch 128, 5 epochs over the 60000 training images, shuffled each epoch; the figure is the wall
time of the epochs (reading the data and making the model come before), with the process's CPU time
beside it; each side's test accuracy afterwards shows that it learned. The issue's targets for one
thread: nabla <= 0.5x PyTorch and <= 0.6x the plain C loop.

--dropout-share also runs nabla without dropout: (time with - time without) / time with is dropout's
share of the training (target <= 3%).

Run with Debian's python (python3-torch) against a release build:
    meson setup build-rel --buildtype=release && ninja -C build-rel
    /usr/bin/python3 bench/mnist.py --build build-rel [--threads 1] [--rounds 3] [--epochs 5]
        [--dropout-share]
--threads N sets nabla's knob (NB_NUM_THREADS), the plain loop's OpenBLAS threads and PyTorch's intra-op
and BLAS threads alike. Each round runs every side once; figures are medians over rounds, ranges after.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402

TARGET_TORCH, TARGET_PLAIN, TARGET_DROPOUT = 0.5, 0.6, 0.03


def parse_args():
    p = argparse.ArgumentParser(description="Fashion-MNIST training: nabla, plain C + OpenBLAS, PyTorch.")
    p.add_argument("--build", default="build", help="the build folder with bench/bench_mnist (use a release build)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--threads", type=bl.int_in(1, 1024), default=1)
    p.add_argument("--epochs", type=bl.int_in(1, 1000), default=5)
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=3)
    p.add_argument("--dropout-share", action="store_true", help="also time nabla without dropout")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    return p.parse_args()


def main():
    a = parse_args()
    nb_bin = bl.find_binary(os.path.join(a.build, "bench", "bench_mnist"))
    plain_bin = bl.find_binary(os.path.join(a.build, "bench", "bench_mnist_plain"))
    common = ["--data", a.data, "--epochs", a.epochs]
    t = a.threads
    runs = [("nabla", lambda: bl.run_nabla("mnist.py", nb_bin, common, bl.thread_env(nabla=t))),
            ("plain C + OpenBLAS", lambda: bl.run_nabla("mnist.py", plain_bin, common + ["--threads", t],
                                                        bl.thread_env(nabla=1, blas=t)))]
    if not a.no_torch:
        runs.append(("PyTorch", lambda: bl.run_torch_worker("mnist.py", "mnist", common,
                                                            bl.thread_env(torch_threads=t, blas=t))))
    if a.dropout_share:
        runs.append(("nabla, no dropout", lambda: bl.run_nabla("mnist.py", nb_bin, common + ["--dropout", 0],
                                                               bl.thread_env(nabla=t))))
    load0 = bl.load_line()
    results = bl.alternate(a.rounds, *(f for _, f in runs))
    med = {name: bl.medians(rs, ("train_ms", "cpu_ms", "test_acc")) for (name, _), rs in zip(runs, results)}
    print(f"Fashion-MNIST MLP 784-256-128-10, dropout 0.2, Adam, batch 128, {a.epochs} epochs, {t} thread(s); "
          f"median of {a.rounds} rounds")
    print(f"{load0} before, {bl.load_line()} after")
    print(f"{'':22s} {'wall ms':>9s} {'CPU ms':>9s} {'nabla/this':>10s} {'test acc':>8s}   (range over rounds)")
    nb = med["nabla"]
    # one thread: CPU time, the steadier figure on a busy machine; several: wall time
    k = "cpu_ms" if t == 1 else "train_ms"
    print(f"(ratios below use {'CPU' if t == 1 else 'wall'} time)")
    for (name, _), rs in zip(runs, results):
        m = med[name]
        lo, hi = bl.span(rs, k)
        print(f"{name:22s} {m['train_ms']:9.0f} {m['cpu_ms']:9.0f} {nb[k] / m[k]:10.3f} "
              f"{100 * m['test_acc']:7.2f}%   ({lo:.0f}-{hi:.0f})")
    if "PyTorch" in med:
        r = nb[k] / med["PyTorch"][k]
        print(f"target nabla <= {TARGET_TORCH}x PyTorch: {r:.3f}x, {'met' if r <= TARGET_TORCH else 'NOT met'}")
    r = nb[k] / med["plain C + OpenBLAS"][k]
    print(f"target nabla <= {TARGET_PLAIN}x plain C + OpenBLAS: {r:.3f}x, {'met' if r <= TARGET_PLAIN else 'NOT met'}")
    fl = bl.medians(results[0], ("floor_epoch_ms", "floor_epoch_cpu_ms"))
    f_wall, f_cpu = fl["floor_epoch_ms"] * a.epochs, fl["floor_epoch_cpu_ms"] * a.epochs
    print(f"GEMM floor of the training (its products alone, bench_mnist): {f_wall:.0f} ms wall, {f_cpu:.0f} ms CPU; "
          f"nabla {nb['train_ms'] / f_wall:.2f}x of it (wall), {nb['cpu_ms'] / f_cpu:.2f}x (CPU); the plain loop "
          f"{med['plain C + OpenBLAS']['cpu_ms'] / f_cpu:.2f}x (CPU), so {TARGET_PLAIN}x the plain loop is "
          f"{TARGET_PLAIN * med['plain C + OpenBLAS']['cpu_ms'] / f_cpu:.2f}x the floor")
    if a.dropout_share:
        share = 1 - med["nabla, no dropout"][k] / nb[k]
        print(f"dropout's share of nabla's training time: {100 * share:.1f}% (target <= {100 * TARGET_DROPOUT:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
