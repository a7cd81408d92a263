"""The PyTorch side of the benchmarks, one workload per run, in a process of its own so that its thread
settings come from the environment it is started with (scaling.py, mlp.py and mnist.py start it through
benchlib.run_torch_worker):

    /usr/bin/python3 bench/torchbench.py WORKLOAD [options]     # prints one JSON line

WORKLOAD is mlp (one training step of an MLP, as bench_mlp.c), rnn (one LSTM or GRU layer forward +
backward, as bench_rnn.c), adam (one Adam step, as bench_adam.c), mnist (Fashion-MNIST training, as
bench_mnist.c) or cnn (one training step of examples/fashion_mnist's CNN, as bench_conv --case cnn). Threads: torch.set_num_threads(TORCH_THREADS, default OMP_NUM_THREADS, default 1);
PyTorch's matrix products go to Debian's OpenBLAS, whose threads come from OPENBLAS_NUM_THREADS.

The functions that build a workload (weights as closed forms of the flat index, as the C benchmarks
do) are shared with rnn.py and adam.py. Importing this module does not import torch.
"""
import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib.py, beside this file
import benchlib as bl  # noqa: E402

# ---- shared builders (torch passed in) -----------------------------------------------------------

RNN_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# (scale in units of k = 1/sqrt(hidden), a, b) of scale * sin(a j + b), as in bench_rnn.c
RNN_FORMS = {"weight_ih": (1, 0.7, 0.1), "weight_hh": (1, 1.3, 0.2), "bias_ih": (1, 0.9, 0.3),
             "bias_hh": (1, 1.1, 0.4)}


def sin_form(torch, n, scale, a, b, dtype):
    j = torch.arange(n, dtype=torch.float64)
    return (scale * torch.sin(a * j + b)).to(dtype)


def make_rnn(torch, kind, a):
    """torch.nn.LSTM / GRU and x of bench_rnn.c's shapes and closed-form values."""
    dt = torch.float32 if a.dtype == "f32" else torch.float64
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    layer = cls(a.input, a.hidden, num_layers=1).to(dt)
    k = 1 / math.sqrt(a.hidden)
    with torch.no_grad():
        for name in RNN_PARAMS:
            p = getattr(layer, name + "_l0")
            scale, fa, fb = RNN_FORMS[name]
            p.copy_(sin_form(torch, p.numel(), scale * k, fa, fb, dt).view_as(p))
    x = sin_form(torch, a.steps * a.batch * a.input, 1.0, 0.37, 0.5, dt).view(a.steps, a.batch, a.input)
    return layer, x


def rnn_pass(layer, x, backward):
    layer.zero_grad(set_to_none=True)
    out, _ = layer(x)
    y = out.sum()
    if backward:
        y.backward()
    return y  # released by the caller, inside the timed region


def make_adam_problem(torch, a):
    """The parameters (leaves with their gradients set) of bench_adam.c, in the same dtype."""
    dt = torch.float32 if a.dtype == "f32" else torch.float64
    params, first = [], 0
    for t in range(a.tensors):
        length = a.n // a.tensors + (1 if t < a.n % a.tensors else 0)
        i = torch.arange(first, first + length, dtype=torch.int64)
        p = ((37 * i) % 1000).to(dt) / 1000 - 0.5
        g = ((91 * i) % 2000).to(dt) / 1000 - 1
        p.requires_grad_(True)
        p.grad = g
        params.append(p)
        first += length
    return params


def make_mlp(torch, sizes, dropout, dtype):
    """bench_mlp.c's network: Linear layers with ReLU (and dropout) between them, closed-form weights."""
    layers = []
    for l in range(len(sizes) - 1):
        lin = torch.nn.Linear(sizes[l], sizes[l + 1]).to(dtype)
        k = 1 / math.sqrt(sizes[l])
        with torch.no_grad():
            lin.weight.copy_(sin_form(torch, lin.weight.numel(), k, 0.7 + 0.1 * l, 0.1, dtype).view_as(lin.weight))
            lin.bias.copy_(sin_form(torch, lin.bias.numel(), k, 0.9 + 0.1 * l, 0.3, dtype))
        layers.append(lin)
        if l + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
            if dropout > 0:
                layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers)


# ---- timing ----------------------------------------------------------------------------------------

def time_steps(fn, a):
    """As bench.h's bench_time_clock with the process's CPU clock: untimed calls for a.warmup calls and
    a.warmup_ms, then a.repeats timed calls; medians of wall and process CPU time, in ms."""
    import gc
    wall, cpu = [], []
    gc.disable()
    try:
        start, n = time.perf_counter_ns(), 0
        while n < a.warmup or time.perf_counter_ns() - start < a.warmup_ms * 1e6:
            fn()
            n += 1
        for _ in range(a.repeats):
            t0, c0 = time.perf_counter_ns(), time.process_time_ns()
            fn()
            cpu.append(time.process_time_ns() - c0)
            wall.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return statistics.median(wall) / 1e6, statistics.median(cpu) / 1e6


def fill_form(torch, t, scale, fa, fb):
    """t = scale * sin(fa j + fb) over its flat index j"""
    with torch.no_grad():
        t.copy_(sin_form(torch, t.numel(), scale, fa, fb, t.dtype).view_as(t))


def make_cnn(torch, a):
    """examples/fashion_mnist.c's --model cnn as a torch.nn module with the weights of bench_conv.c (closed
    forms of the flat index), a batch of a.batch images and labels; a: channel_list, hidden, dropout,
    batch, dtype. Shared with conv.py."""
    nn, F = torch.nn, torch.nn.functional
    dt = torch.float32 if a.dtype == "f32" else torch.float64

    class CNN(nn.Module):
        """examples/fashion_mnist.c's --model cnn (the input already standardised)"""

        def __init__(self):
            super().__init__()
            cin, side = 1, 28
            for k, c in enumerate(a.channel_list):
                setattr(self, f"conv{k + 1}", nn.Conv2d(cin, c, 3, padding=1, bias=False))
                setattr(self, f"bn{k + 1}", nn.BatchNorm2d(c))
                cin, side = c, side // 2
            self.flat = cin * side * side
            self.fc1 = nn.Linear(self.flat, a.hidden)
            self.fc2 = nn.Linear(a.hidden, 10)
            self.p = a.dropout

        def forward(self, x):
            for k in range(len(a.channel_list)):
                x = F.max_pool2d(F.relu(getattr(self, f"bn{k + 1}")(getattr(self, f"conv{k + 1}")(x))), 2)
                if k == 0:
                    x = F.dropout2d(x, self.p / 3, self.training)
            x = F.dropout(torch.flatten(x, 1), self.p, self.training)
            x = F.dropout(F.relu(self.fc1(x)), self.p, self.training)
            return self.fc2(x)

    m = CNN().to(dt)
    cin = 1
    for k, c in enumerate(a.channel_list):
        fill_form(torch, getattr(m, f"conv{k + 1}").weight, 1 / math.sqrt(cin * 9), 0.7, 0.1)
        cin = c
    fill_form(torch, m.fc1.weight, 1 / math.sqrt(m.flat), 1.3, 0.2)
    fill_form(torch, m.fc1.bias, 1 / math.sqrt(m.flat), 0.9, 0.3)
    fill_form(torch, m.fc2.weight, 1 / math.sqrt(a.hidden), 1.3, 0.2)
    fill_form(torch, m.fc2.bias, 1 / math.sqrt(a.hidden), 0.9, 0.3)
    x = sin_form(torch, a.batch * 784, 1.0, 0.37, 0.5, dt).view(a.batch, 1, 28, 28)
    y = torch.arange(a.batch) % 10
    return m, x, y


# ---- workloads -------------------------------------------------------------------------------------

def work_mlp(torch, a):
    dt = torch.float32 if a.dtype == "f32" else torch.float64
    sizes = [int(s) for s in a.layers.split(",")]
    model = make_mlp(torch, sizes, a.dropout, dt)
    x = sin_form(torch, a.batch * sizes[0], 1.0, 0.37, 0.5, dt).view(a.batch, sizes[0])
    y = torch.tensor([(7 * r) % sizes[-1] for r in range(a.batch)], dtype=torch.int64)
    opt = (torch.optim.SGD(model.parameters(), lr=0.01) if a.optim == "sgd" else
           torch.optim.Adam(model.parameters()) if a.optim == "adam" else None)

    def step():
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if opt:
            opt.step()
        return loss

    # the values bench_mlp.c reports: the first step from the initial weights
    loss = step()
    gsum = sum(m.weight.grad.double().abs().sum().item() for m in model if isinstance(m, torch.nn.Linear))
    wall, cpu = time_steps(step, a)
    return {"step_ms": wall, "step_cpu_ms": cpu, "loss": loss.item(), "grad_abs_sum": gsum}


def work_rnn(torch, a):
    layer, x = make_rnn(torch, a.kind, a)
    out = {}
    for key, backward in (("fwd_bwd", True), ("fwd", False)):
        wall, cpu = time_steps(lambda: rnn_pass(layer, x, backward), a)
        out[key + "_ms"], out[key + "_cpu_ms"] = wall, cpu
    y = rnn_pass(layer, x, True)
    out["y"] = y.item()
    for name in RNN_PARAMS:
        out["grad_" + name] = getattr(layer, name + "_l0").grad.double().abs().sum().item()
    return out


def work_adam(torch, a):
    params = make_adam_problem(torch, a)
    opt = torch.optim.Adam(params, **({} if a.foreach is None else {"foreach": a.foreach == "true"}))
    wall, cpu = time_steps(opt.step, a)
    return {"median_ns": wall * 1e6, "cpu_median_ns": cpu * 1e6}


def read_idx(path):
    """An IDX file (gzip) as a flat list-free tensor source: (dims, bytes)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return dims, data[4 + 4 * ndim:]


def work_mnist(torch, a):
    """bench_mnist.c's training: the same model, optimizer, batches and normalisation."""
    import numpy as np
    t0 = time.perf_counter()
    dims, raw = read_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz"))
    x = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.float32).reshape(dims[0], 784)) / 255
    _, raw = read_idx(os.path.join(a.data, "train-labels-idx1-ubyte.gz"))
    y = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))
    dims, raw = read_idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"))
    tx = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.float32).reshape(dims[0], 784)) / 255
    _, raw = read_idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz"))
    ty = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))
    load_ms = (time.perf_counter() - t0) * 1e3
    torch.manual_seed(1)
    sizes = [784] + [int(s) for s in a.layers.split(",")] + [10]
    layers = []
    for l in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[l], sizes[l + 1]))
        if l + 2 < len(sizes):
            layers += [torch.nn.ReLU(), torch.nn.Dropout(a.dropout)]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    n = x.shape[0]
    epoch_ms, loss = [], None
    c0 = time.process_time()
    for _ in range(a.epochs):
        te = time.perf_counter()
        perm = torch.randperm(n)
        for s in range(0, n, a.batch):
            idx = perm[s:s + a.batch]
            xb = (x[idx] - 0.2860) / 0.3530
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            loss.backward()
            opt.step()
        epoch_ms.append((time.perf_counter() - te) * 1e3)
    cpu_ms = (time.process_time() - c0) * 1e3
    model.eval()
    with torch.no_grad():
        acc = (model((tx - 0.2860) / 0.3530).argmax(1) == ty).double().mean().item()
    return {"impl": "PyTorch", "load_ms": load_ms, "train_ms": sum(epoch_ms), "cpu_ms": cpu_ms,
            "epoch_ms": epoch_ms, "last_loss": loss.item(), "test_acc": acc}


def cnn_step(torch, a):
    """a fresh CNN (make_cnn) in training mode and its training step (AdamW, label smoothing 0.1), as
    bench_conv --case cnn; shared with conv.py"""
    F = torch.nn.functional
    m, x, y = make_cnn(torch, a)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        return loss

    return step


def work_cnn(torch, a):
    wall, cpu = time_steps(cnn_step(torch, a), a)
    return {"step_ms": wall, "step_cpu_ms": cpu}


def parse_args(argv):
    p = argparse.ArgumentParser(description="A PyTorch workload of nabla's benchmarks; prints one JSON line.")
    p.add_argument("workload", choices=["mlp", "rnn", "adam", "mnist", "cnn"])
    p.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    p.add_argument("--repeats", type=bl.int_in(1, 100000), default=50)
    p.add_argument("--warmup", type=bl.int_in(0, 100000), default=5)
    p.add_argument("--warmup-ms", type=bl.int_in(0, 60000), default=500)
    # mlp
    p.add_argument("--layers", default=None, help="mlp: 784,512,256,10; mnist: hidden sizes 256,128")
    p.add_argument("--batch", type=bl.int_in(1, 100000), default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--optim", choices=["none", "sgd", "adam"], default="none")
    # rnn
    p.add_argument("--kind", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--input", type=bl.int_in(1, 100000), default=64)
    p.add_argument("--hidden", type=bl.int_in(1, 100000), default=256)
    p.add_argument("--steps", type=bl.int_in(1, 100000), default=50)
    # adam
    p.add_argument("--n", type=bl.int_in(1, 100000000), default=1000000)
    p.add_argument("--tensors", type=bl.int_in(1, 1000), default=1)
    p.add_argument("--foreach", choices=["true", "false"], default=None)
    # mnist
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=bl.int_in(1, 1000), default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    # cnn
    p.add_argument("--channels", default="32,64")
    a = p.parse_args(argv)
    a.channel_list = [int(c) for c in a.channels.split(",")]
    defaults = {"mlp": ("784,512,256,10", 128, 0.0), "rnn": (None, 32, 0.0), "adam": (None, 1, 0.0),
                "mnist": ("256,128", 128, 0.2), "cnn": (None, 128, 0.2)}[a.workload]
    a.layers = a.layers or defaults[0]
    a.batch = a.batch or defaults[1]
    a.dropout = defaults[2] if a.dropout is None else a.dropout
    return a


def main():
    a = parse_args(sys.argv[1:])
    try:
        import torch
    except ImportError:
        sys.exit("torchbench.py: torch is not importable by this python; run it with /usr/bin/python3")
    threads = int(os.environ.get("TORCH_THREADS", os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_num_threads(threads)
    out = {"mlp": work_mlp, "rnn": work_rnn, "adam": work_adam, "mnist": work_mnist, "cnn": work_cnn}[a.workload](torch, a)
    out.update({"bench": a.workload, "torch_threads": torch.get_num_threads(),
                "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
