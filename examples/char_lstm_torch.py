"""The PyTorch twin of examples/char_lstm.c: the same character-level LSTM language model trained the
same way on the same data, to compare validation bits per character.

The data comes from the C program, so that both see the same bytes: run it once with --dump-data DIR
(it writes DIR/vocab.bin, DIR/train.bin and DIR/valid.bin, one byte per id, and the initial weights
DIR/init.safetensors) and give this script --data DIR. By default it starts from those same initial
weights; --own-init draws PyTorch's own (with the forget-gate bias set as nabla's default: b_ih 1,
b_hh 0).

Everything else mirrors char_lstm.c: nn.Embedding -> nn.LSTM (2 layers) -> nn.Linear, float32;
B parallel streams of length L = (n - 1) // B over the training stream, chunks of T steps, the state
carried between chunks without a graph (truncated backpropagation through time) and zeroed at every
epoch; mean cross-entropy; clip_grad_norm_ to 1.0; Adam; a cosine schedule per step from lr to lr/10
over the run; validation over the whole validation stream cut the same way (the last chunk shorter),
as mean cross-entropy / ln 2.

Run with Debian's python, which has torch (python3-torch):
    build/examples/char_lstm --dump-data /tmp/cl-data [options]
    /usr/bin/python3 examples/char_lstm_torch.py --data /tmp/cl-data [the same options]
(char_lstm prints the second command line with its options filled in).
"""
import os

# Set before torch (and its OpenBLAS) loads: the AVX-512 kernels, and no more BLAS threads than asked.
os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")


def _threads_arg():
    import sys
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


os.environ["OPENBLAS_NUM_THREADS"] = _threads_arg()
os.environ["OMP_NUM_THREADS"] = _threads_arg()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


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


def float_in(lo, hi):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not a number")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is not in [{lo}, {hi}]")
        return v
    return parse


def read_safetensors(path):
    """The tensors of a safetensors file as numpy arrays (F32, F64, I64)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    kinds = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + end], dtype=kinds[e["dtype"]]).reshape(e["shape"])
    return out


class CharLSTM(nn.Module):
    """Names as char_lstm.c's parameters: embed.weight, lstm.weight_ih_l0, ..., head.weight."""

    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers)
        self.head = nn.Linear(hidden, vocab)
        with torch.no_grad():  # nabla's default forget-gate bias: b_ih 1, b_hh 0
            for k in range(layers):
                getattr(self.lstm, f"bias_ih_l{k}")[hidden:2 * hidden] = 1.0
                getattr(self.lstm, f"bias_hh_l{k}")[hidden:2 * hidden] = 0.0

    def forward(self, x, state):
        """x [T, B] ids -> logits [T * B, V] and the state after the last step."""
        out, state = self.lstm(self.embed(x), state)
        return self.head(out).reshape(-1, self.head.out_features), state


def chunk(ids, L, B, t0, T):
    """Inputs ids[b L + t0 + t] and targets one further on, [T, B] (time major), as char_lstm.c."""
    idx = (np.arange(B) * L)[None, :] + t0 + np.arange(T)[:, None]
    return torch.from_numpy(ids[idx]), torch.from_numpy(ids[idx + 1]).reshape(-1)


def evaluate(model, ids, B, T):
    n = len(ids)
    B = min(B, n - 1)
    L = (n - 1) // B
    model.eval()
    total, state = 0.0, None
    with torch.no_grad():
        for t0 in range(0, L, T):
            x, y = chunk(ids, L, B, t0, min(T, L - t0))
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits, y, reduction="sum").item()
    model.train()
    return total / (L * B) / math.log(2)


def sample(model, vocab, prompt, length, temperature, gen):
    """Prime with "%\\n" and the prompt, then draw bytes from softmax(logits / temperature)."""
    ids_of = {b: i for i, b in enumerate(vocab)}
    prime = b"%\n" + prompt
    x = torch.tensor([[ids_of[b]] for b in prime], dtype=torch.int64)
    out, state = bytearray(prompt), None
    model.eval()
    with torch.no_grad():
        for _ in range(length):
            logits, state = model(x, state)
            last = logits[-1].double()
            if temperature == 0:
                nxt = int(last.argmax())
            else:
                nxt = int(torch.multinomial(torch.softmax(last / temperature, 0), 1, generator=gen))
            out.append(vocab[nxt])
            x = torch.tensor([[nxt]], dtype=torch.int64)
    model.train()
    return out.decode("utf-8", errors="replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the folder char_lstm --dump-data wrote")
    ap.add_argument("--epochs", type=int_in(1, 100000), default=2)
    ap.add_argument("--max-steps", type=int_in(1, 1 << 62), default=0)
    ap.add_argument("--hidden", type=int_in(1, 8192), default=256)
    ap.add_argument("--layers", type=int_in(1, 8), default=2)
    ap.add_argument("--embed", type=int_in(1, 8192), default=64)
    ap.add_argument("--batch", type=int_in(1, 4096), default=16)
    ap.add_argument("--bptt", type=int_in(1, 4096), default=32)
    ap.add_argument("--lr", type=float_in(1e-8, 10), default=5e-3)
    ap.add_argument("--clip", type=float_in(1e-8, 1e8), default=1.0)
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    ap.add_argument("--seed", type=int_in(0, 1 << 62), default=1, help="for --own-init and sampling")
    ap.add_argument("--threads", type=int_in(1, 1024), default=1)
    ap.add_argument("--own-init", action="store_true", help="PyTorch's initial weights, not init.safetensors")
    ap.add_argument("--samples", type=int_in(0, 1000), default=1)
    ap.add_argument("--length", type=int_in(0, 1 << 20), default=300)
    ap.add_argument("--temperature", type=float_in(0, 100), default=0.8)
    ap.add_argument("--prompt", default="")
    ap.add_argument("--csv", help="write epoch,step,train_bpc,val_bpc,grad_norm,clipped,lr,seconds here")
    ap.add_argument("--log-every", type=int_in(1, 1 << 30), default=50)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    paths = {k: os.path.join(args.data, k) for k in ("vocab.bin", "train.bin", "valid.bin", "init.safetensors")}
    for k in ("vocab.bin", "train.bin", "valid.bin"):
        if not os.path.isfile(paths[k]):
            sys.exit(f"char_lstm_torch.py: {paths[k]} is missing; write it with char_lstm --dump-data {args.data}")
    with open(paths["vocab.bin"], "rb") as f:
        vocab = f.read()
    train = np.fromfile(paths["train.bin"], dtype=np.uint8).astype(np.int64)
    valid = np.fromfile(paths["valid.bin"], dtype=np.uint8).astype(np.int64)
    V, B, T = len(vocab), args.batch, args.bptt
    prompt = args.prompt.encode()
    if any(b not in vocab for b in prompt):
        sys.exit("char_lstm_torch.py: the prompt has a byte that never occurs in the training text")

    model = CharLSTM(V, args.embed, args.hidden, args.layers)
    if not args.own_init:
        if not os.path.isfile(paths["init.safetensors"]):
            sys.exit(f"char_lstm_torch.py: {paths['init.safetensors']} is missing (or pass --own-init)")
        init = read_safetensors(paths["init.safetensors"])
        state = model.state_dict()
        for name in state:
            if name not in init or tuple(init[name].shape) != tuple(state[name].shape):
                sys.exit(f"char_lstm_torch.py: init.safetensors has no {name} of shape {tuple(state[name].shape)}; "
                         "were the size options the same as char_lstm's?")
            state[name] = torch.from_numpy(init[name].copy())
        model.load_state_dict(state)

    L = (len(train) - 1) // B
    per_epoch = L // T
    if per_epoch < 1:
        sys.exit("char_lstm_torch.py: the training text is too short for --batch x --bptt")
    total = per_epoch * args.epochs
    if args.max_steps:
        total = min(total, args.max_steps)
    epochs = -(-total // per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    eta_min = args.lr / 10

    def lr_at(step):  # as nb_sched's cosine with t_max = total steps, stepped once per step
        if args.schedule == "constant" or total <= 1:
            return args.lr
        return eta_min + (args.lr - eta_min) * (1 + math.cos(math.pi * min(step, total) / total)) / 2

    n_params = sum(p.numel() for p in model.parameters())
    print(f"PyTorch {torch.__version__}, {args.threads} thread(s); {len(train)} train / {len(valid)} validation "
          f"bytes, vocabulary {V}; {n_params} parameters; B {B} x T {T}, {per_epoch} steps per epoch, {total} steps; "
          f"{'own' if args.own_init else 'nabla'} initial weights")
    print(f"before training: validation {evaluate(model, valid, B, T):.4f} bpc", flush=True)
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv.write("epoch,step,train_bpc,val_bpc,grad_norm,clipped,lr,seconds\n")
    step, times, t_start, val = 0, [], time.perf_counter(), float("nan")
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        this_epoch = min(per_epoch, total - step)
        h = (torch.zeros(args.layers, B, args.hidden), torch.zeros(args.layers, B, args.hidden))
        loss_sum = gnorm_sum = 0.0
        clipped = 0
        for k in range(this_epoch):
            ts = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            x, y = chunk(train, L, B, k * T, T)
            logits, h = model(x, h)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), args.clip))
            opt.step()
            h = (h[0].detach(), h[1].detach())
            loss_sum += loss.item()
            gnorm_sum += gnorm
            clipped += gnorm > args.clip
            step += 1
            times.append(time.perf_counter() - ts)
            if (k + 1) % args.log_every == 0:
                print(f"epoch {epoch} step {k + 1}/{this_epoch}  train {loss_sum / (k + 1) / math.log(2):.4f} bpc  "
                      f"|g| {gnorm:.3f}  {(time.perf_counter() - t0) / (k + 1):.3f} s/step", flush=True)
        val = evaluate(model, valid, B, T)
        secs = time.perf_counter() - t0
        train_bpc = loss_sum / this_epoch / math.log(2)
        lr = lr_at(step)
        print(f"epoch {epoch:2d}/{epochs}  step {step}  train {train_bpc:.4f} bpc  validation {val:.4f} bpc  "
              f"mean |g| {gnorm_sum / this_epoch:.3f} ({100 * clipped / this_epoch:.0f}% clipped)  lr {lr:.2e}  "
              f"{secs:.1f}s", flush=True)
        if csv:
            csv.write(f"{epoch},{step},{train_bpc:.6f},{val:.6f},{gnorm_sum / this_epoch:.4f},"
                      f"{clipped / this_epoch:.4f},{lr:.6g},{secs:.3f}\n")
            csv.flush()
    print(f"validation {val:.4f} bpc after {step} steps; median {statistics.median(times):.3f} s/step; "
          f"{time.perf_counter() - t_start:.1f}s in all")
    if csv:
        csv.close()
    gen = torch.Generator().manual_seed(args.seed)
    if args.samples:
        print(f"\nsamples (temperature {args.temperature:g}, prompt \"{args.prompt}\"):")
        for _ in range(args.samples):
            print("---")
            print(sample(model, vocab, prompt, args.length, args.temperature, gen))
        print("---")


if __name__ == "__main__":
    main()
