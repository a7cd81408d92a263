"""Convolutional networks, nabla against PyTorch, one thread each: conv2d layers at CNN-typical shapes
(forward + backward of sum(y), and forward alone), and one training step of examples/fashion_mnist's
CNN at batch 128. Median milliseconds per pass, the ratio nabla / PyTorch, nabla's GFLOP/s and the
fraction of its time that the convolution's three matrix products take when timed alone (the "sgemm
limit" of an im2col convolution). The issue's target: the CNN step at most 0.8x PyTorch's time.

Both sides use the same weights and inputs, closed forms of the flat index (see bench_conv.c), so they
compute the same function; the script checks sum(y) and the gradient sums of each layer, and the
CNN's loss on the first batch with dropout off. PyTorch's side is torch.nn.Conv2d (Debian's torch 1.13
runs oneDNN for it) and the equivalent torch.nn module of the CNN with torch.optim.AdamW:
    opt.zero_grad(set_to_none=True); loss = cross_entropy(model(x), y, label_smoothing=0.1)
    loss.backward(); opt.step()

Run with Debian's python, which has torch (python3-torch), against a release build:
    meson setup build-rel --buildtype=release && ninja -C build-rel
    /usr/bin/python3 bench/conv.py --nabla-bin build-rel/bench/bench_conv [--cases conv,cnn]
        [--repeats 20] [--rounds 3] [--dtype f32]
Each round runs the nabla binary once per workload (subprocess, --json) and then PyTorch; the figures
are medians over rounds of each round's median. Times are in this thread's CPU time (steadier on a
busy machine: it does not count the time other processes hold the CPU) and in wall time.
"""
import argparse
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402
from torchbench import cnn_step, fill_form, make_cnn, sin_form  # noqa: E402  (shared with scaling.py)

bl.single_thread_env()  # before torch loads

TARGET = 0.8  # the goal: nabla's CNN training step at most 0.8x PyTorch's time
# (batch, in, out, size): the shapes (the first layer of the Fashion-MNIST CNN, its second, and
# a 64 -> 64 layer at 32x32), 3x3 kernels with padding 1
CONVS = [(128, 1, 32, 28), (128, 32, 64, 14), (128, 64, 64, 32)]


def parse_args():
    p = argparse.ArgumentParser(description="conv2d layers and a CNN training step in nabla and PyTorch.")
    p.add_argument("--nabla-bin", default=os.path.join("build", "bench", "bench_conv"),
                   help="the bench_conv binary (default build/bench/bench_conv, relative to the current "
                   "directory, else to the repository; use a release build for figures)")
    p.add_argument("--cases", default="conv,cnn", help="conv,cnn (both)")
    p.add_argument("--repeats", type=bl.int_in(1, 100000), default=20, help="timed passes (20)")
    p.add_argument("--warmup", type=bl.int_in(0, 100000), default=3,
                   help="untimed passes before timing (3), and at least...")
    p.add_argument("--warmup-ms", type=bl.int_in(0, 60000), default=500,
                   help="...this many milliseconds of them (500)")
    p.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    p.add_argument("--channels", default="32,64", help="the CNN's conv channels, as fashion_mnist --channels "
                   "(32,64)")
    p.add_argument("--hidden", type=bl.int_in(1, 100000), default=256, help="the CNN's fc1 units (256)")
    p.add_argument("--dropout", type=float, default=0.2, help="the CNN's dropout (0.2)")
    p.add_argument("--rounds", type=bl.int_in(1, 100), default=3,
                   help="alternating nabla/PyTorch rounds; medians over rounds are shown (3)")
    a = p.parse_args()
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    try:
        a.channel_list = [int(c) for c in a.channels.split(",")]
    except ValueError:
        p.error("--channels: two or three whole numbers, A,B[,C]")
    if len(a.channel_list) not in (2, 3):
        p.error("--channels: two or three whole numbers, A,B[,C]")
    if not a.cases or any(c not in ("conv", "cnn") for c in a.cases):
        p.error("--cases: a comma-separated list of conv, cnn")
    return a


def common(a):
    return ["--repeats", a.repeats, "--warmup", a.warmup, "--warmup-ms", a.warmup_ms, "--dtype", a.dtype]


# ---- one conv2d layer -------------------------------------------------------------------------------

def run_torch_conv(torch, shape, a):
    n, c, o, h = shape
    dt = torch.float32 if a.dtype == "f32" else torch.float64
    conv = torch.nn.Conv2d(c, o, 3, padding=1).to(dt)
    k = 1 / math.sqrt(c * 9)
    fill_form(torch, conv.weight, k, 0.7, 0.1)
    fill_form(torch, conv.bias, k, 0.9, 0.3)
    x = sin_form(torch, n * c * h * h, 1.0, 0.37, 0.5, dt).view(n, c, h, h).requires_grad_(c > 1)

    def step(backward):
        conv.zero_grad(set_to_none=True)
        x.grad = None
        y = conv(x).sum()
        if backward:
            y.backward()
        return y

    out = {}
    for key, cpu_key, backward in (("fwd_bwd_ms", "fwd_bwd_cpu_ms", True), ("fwd_ms", "fwd_cpu_ms", False)):
        wall, cpu = bl.time_calls(lambda: step(backward), a, cpu=True)
        out[key], out[cpu_key] = statistics.median(wall) / 1e6, statistics.median(cpu) / 1e6
    out["y"] = step(True).item()
    out["grad_weight"] = conv.weight.grad.double().abs().sum().item()
    out["grad_bias"] = conv.bias.grad.double().abs().sum().item()
    out["grad_x"] = x.grad.double().abs().sum().item() if c > 1 else 0.0
    return out


# ---- the CNN step ------------------------------------------------------------------------------------

def run_torch_cnn(torch, a):
    F = torch.nn.functional
    m, x, y = make_cnn(torch, a)
    m.train()
    m.p = 0.0
    loss0 = F.cross_entropy(m(x), y, label_smoothing=0.1).item()
    step = cnn_step(torch, a)  # a fresh model: fresh running statistics, as nabla's
    wall, cpu = bl.time_calls(step, a, cpu=True)
    return {"step_ms": statistics.median(wall) / 1e6, "step_cpu_ms": statistics.median(cpu) / 1e6, "loss0": loss0}


# ---- the table ---------------------------------------------------------------------------------------

def main():
    a = parse_args()
    a.batch = 128
    binary = bl.find_binary(a.nabla_bin)
    torch = bl.import_torch("conv.py")
    tol = 1e-9 if a.dtype == "f64" else 2e-3
    all_same = True
    print(bl.setup_line(torch, binary, f" (oneDNN for convolutions: {torch.backends.mkldnn.is_available()})"))
    print("at the start:", bl.load_line())
    if "conv" in a.cases:
        print(f"\nconv2d layer, 3x3 kernel, padding 1, {a.dtype}; forward + backward of sum(y) (the input's "
              f"gradient when C > 1); median of {a.repeats} passes, median of {a.rounds} rounds; CPU ms")
        print(f"{'layer':26s} {'nabla':>8s} {'PyTorch':>8s} {'ratio':>6s} {'GFLOP/s':>8s} {'PT GF/s':>8s} "
              f"{'GEMMs ms':>9s} {'of time':>8s}   (wall ms: nabla; PyTorch)")
        for shape in CONVS:
            n, c, o, h = shape
            args = ["--case", "conv", "--batch", n, "--in", c, "--out", o, "--size", h] + common(a)
            nb_r, pt_r = bl.alternate(a.rounds, lambda: bl.run_nabla("conv.py", binary, args),
                                      lambda: run_torch_conv(torch, shape, a))
            keys = ("fwd_bwd_cpu_ms", "fwd_cpu_ms", "fwd_bwd_ms", "fwd_ms", "gemm_fwd_cpu_ms", "gemm_fwd_bwd_cpu_ms")
            nb = bl.medians(nb_r, keys)
            pt = bl.medians(pt_r, keys[:4])
            gf = nb_r[-1]["gflop_fwd_bwd"]
            for label, k, kw, gk, flops in (("fwd+bwd", "fwd_bwd_cpu_ms", "fwd_bwd_ms", "gemm_fwd_bwd_cpu_ms", gf),
                                            ("fwd", "fwd_cpu_ms", "fwd_ms", "gemm_fwd_cpu_ms",
                                             gf / (3 if c > 1 else 2))):
                print(f"{f'{c}->{o} {h}x{h} N{n} {label}':26s} {nb[k]:8.2f} {pt[k]:8.2f} {nb[k] / pt[k]:6.2f} "
                      f"{flops / nb[k] * 1e3:8.1f} {flops / pt[k] * 1e3:8.1f} {nb[gk]:9.2f} "
                      f"{100 * nb[gk] / nb[k]:7.0f}%   ({nb[kw]:.1f}; {pt[kw]:.1f})")
            all_same &= bl.agree(nb_r[-1], pt_r[-1], ["y", "grad_weight", "grad_bias", "grad_x"], tol,
                                 f"conv {c}->{o} {h}x{h}: ")
        print("GEMMs ms: the layer's matrix products over the whole batch timed alone (OpenBLAS); 'of time': "
              "their share of nabla's time, the fraction of the sgemm limit it reaches")
    met = None
    if "cnn" in a.cases:
        args = ["--case", "cnn", "--batch", a.batch, "--channels", a.channels, "--hidden", a.hidden,
                "--dropout", a.dropout] + common(a)
        nb_r, pt_r = bl.alternate(a.rounds, lambda: bl.run_nabla("conv.py", binary, args),
                                  lambda: run_torch_cnn(torch, a))
        keys = ("step_cpu_ms", "step_ms")
        nb, pt = bl.medians(nb_r, keys), bl.medians(pt_r, keys)
        print(f"\nFashion-MNIST CNN, one training step at batch {a.batch} ({a.dtype}; conv-bn-relu-pool blocks "
              f"{a.channels}, dropout {a.dropout}, fc {a.hidden}, fc 10, AdamW); median of {a.repeats} steps, "
              f"median of {a.rounds} rounds")
        print(f"{'':26s} {'nabla':>8s} {'PyTorch':>8s} {'ratio':>6s}")
        print(f"{'CPU ms':26s} {nb['step_cpu_ms']:8.2f} {pt['step_cpu_ms']:8.2f} "
              f"{nb['step_cpu_ms'] / pt['step_cpu_ms']:6.2f}{bl.spread(nb_r, pt_r, 'step_cpu_ms', 1)}")
        print(f"{'wall ms':26s} {nb['step_ms']:8.2f} {pt['step_ms']:8.2f} "
              f"{nb['step_ms'] / pt['step_ms']:6.2f}{bl.spread(nb_r, pt_r, 'step_ms', 1)}")
        met = nb["step_cpu_ms"] / pt["step_cpu_ms"] <= TARGET
        print(f"target nabla/PyTorch <= {TARGET} (CPU time): {'met' if met else 'NOT met'}")
        all_same &= bl.agree(nb_r[-1], pt_r[-1], ["loss0"], tol, "cnn: ")
    print("at the end:", bl.load_line())
    print("values and gradients agree" if all_same else "values or gradients DIFFER (see above)")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
