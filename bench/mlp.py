"""One MLP training step, nabla against its GEMM floor and against PyTorch, one thread each by default.

The step (bench_mlp.c, torchbench.py mlp): zero the gradients, forward through the MLP (784-512-256-10,
ReLU, float32; weights and input closed forms of the flat index), cross-entropy against fixed labels,
backward (and, with --optim, the optimizer's step). The GEMM floor is the step's own matrix products
replayed alone on the same memory (bench/gemm_floor.h): floor / step is the share of the step that
goes to its products; the issue's target for one thread is >= 0.92. PyTorch runs in a process of its
own (torchbench.py) with the same thread settings.

Run with Debian's python (python3-torch) against a release build:
    meson setup build-rel --buildtype=release && ninja -C build-rel
    /usr/bin/python3 bench/mlp.py --nabla-bin build-rel/bench/bench_mlp [--batch 128] [--threads 1]
        [--layers 784,512,256,10] [--optim none|sgd|adam] [--dropout 0] [--repeats 50] [--rounds 5]
Each round runs nabla, then PyTorch; the figures are medians over rounds of each round's median, with
the range over rounds. With one thread the CPU time is the steadier figure on a busy machine (the
verdict uses it); with more, wall time.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402

TARGET_FLOOR = 0.92  # floor / step, one thread


def parse_args():
    p = argparse.ArgumentParser(description="One MLP training step: nabla, its GEMM floor, PyTorch.")
    p.add_argument("--nabla-bin", default=os.path.join("build", "bench", "bench_mlp"),
                   help="the bench_mlp binary (default build/bench/bench_mlp; use a release build)")
    p.add_argument("--layers", default="784,512,256,10")
    p.add_argument("--batch", type=bl.int_in(1, 100000), default=128)
    p.add_argument("--optim", choices=["none", "sgd", "adam"], default="none")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--threads", type=bl.int_in(1, 1024), default=1,
                   help="nabla's knob and PyTorch's intra-op and BLAS threads (1)")
    p.add_argument("--repeats", type=bl.int_in(1, 100000), default=50, help="timed steps (50)")
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=5, help="alternating rounds (5)")
    return p.parse_args()


def main():
    a = parse_args()
    binary = bl.find_binary(a.nabla_bin)
    common = ["--layers", a.layers, "--batch", a.batch, "--optim", a.optim, "--dropout", a.dropout,
              "--repeats", a.repeats]
    nb_env = bl.thread_env(nabla=a.threads)
    pt_env = bl.thread_env(torch_threads=a.threads, blas=a.threads)
    load0 = bl.load_line()
    nb_rounds, pt_rounds = bl.alternate(a.rounds, lambda: bl.run_nabla("mlp.py", binary, common, nb_env),
                                        lambda: bl.run_torch_worker("mlp.py", "mlp", common, pt_env))
    keys = ("step_ms", "step_cpu_ms", "floor_ms", "floor_cpu_ms")
    nb = bl.medians(nb_rounds, keys)
    pt = bl.medians(pt_rounds, ("step_ms", "step_cpu_ms"))
    for r in nb_rounds:
        r["ratio_cpu"] = r["floor_cpu_ms"] / r["step_cpu_ms"]
        r["ratio_wall"] = r["floor_ms"] / r["step_ms"]
    print(f"MLP {a.layers}, batch {a.batch}, f32, optimizer {a.optim}, dropout {a.dropout}, {a.threads} thread(s); "
          f"median of {a.repeats} steps, median of {a.rounds} rounds")
    print(f"nabla: {binary}; {nb_rounds[-1]['gemm_calls']} products, {nb_rounds[-1]['gemm_gflops']:.0f} GFLOP/s "
          f"in the floor; {load0} before, {bl.load_line()} after")
    print(f"{'':22s} {'nabla ms':>9s} {'floor ms':>9s} {'floor/step':>10s} {'PyTorch ms':>10s} {'nabla/PyTorch':>13s}"
          "   (ranges over rounds: nabla; floor/step; PyTorch)")
    for label, k, fk, rk in (("step, CPU time", "step_cpu_ms", "floor_cpu_ms", "ratio_cpu"),
                             ("step, wall time", "step_ms", "floor_ms", "ratio_wall")):
        lo, hi = bl.span(nb_rounds, k)
        rlo, rhi = bl.span(nb_rounds, rk)
        plo, phi = bl.span(pt_rounds, k)
        print(f"{label:22s} {nb[k]:9.3f} {nb[fk]:9.3f} {nb[fk] / nb[k]:10.3f} {pt[k]:10.3f} {nb[k] / pt[k]:13.3f}"
              f"   ({lo:.2f}-{hi:.2f}; {rlo:.3f}-{rhi:.3f}; {plo:.2f}-{phi:.2f})")
    key = "step_cpu_ms" if a.threads == 1 else "step_ms"
    fkey = "floor_cpu_ms" if a.threads == 1 else "floor_ms"
    ratio = nb[fkey] / nb[key]
    print(f"target floor/step >= {TARGET_FLOOR} ({'CPU' if a.threads == 1 else 'wall'} time): {ratio:.3f}, "
          f"{'met' if ratio >= TARGET_FLOOR else 'NOT met'}")
    if a.dropout > 0:
        print("(dropout draws different masks on the two sides: values not compared)")
        return 0
    same = bl.agree(nb_rounds[-1], pt_rounds[-1], ["loss", "grad_abs_sum"], 2e-4)
    print("loss and gradients agree with PyTorch" if same else "loss or gradients DIFFER (see above)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
