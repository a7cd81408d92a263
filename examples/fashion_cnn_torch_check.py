#!/usr/bin/python3
"""The Fashion-MNIST CNN of examples/fashion_mnist.c (--model cnn), checkpoint both ways between
nabla and PyTorch:

  1. nabla's checkpoint (safetensors) goes into the equivalent torch.nn module with
     load_state_dict(strict=True): every parameter and buffer (batch norm's running statistics and
     num_batches_tracked included) under the same name, nothing missing, nothing left over (the
     optimizer's state, "optim.*", is not part of the model);
  2. both evaluate the test set: nabla's predictions (fashion_mnist --eval CKPT --predictions FILE)
     and PyTorch's must agree image by image, and so must the accuracies (both predict from the mean
     of the logits of an image and of its mirror image, as fashion_mnist does unless --no-tta);
  3. back: PyTorch trains the module for a few steps (its weights and running statistics change),
     saves its state_dict as a safetensors file, nabla evaluates that file, and the predictions must
     again agree with PyTorch's.

Run with Debian's python, which has torch and numpy (python3-torch), after training:
    build/examples/fashion_mnist --model cnn                     # writes runs/fashion_cnn.safetensors
    /usr/bin/python3 examples/fashion_cnn_torch_check.py [--checkpoint runs/fashion_cnn.safetensors]
        [--nabla build/examples/fashion_mnist] [--data /usr/share/datasets/fashion-mnist]
        [--channels 32,64] [--hidden 256] [--no-tta]
Exit status 0 when everything agrees. Predictions may differ on an image whose two best logits are
closer than float32 rounding (at most --tolerance images, default 2 of 10000); the script prints how
many differ and the smallest logit gap among them.
"""
import argparse
import gzip
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # torch_safetensors.py, beside this file
import torch_safetensors as ts  # noqa: E402

SAFETENSORS = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=os.path.join("runs", "fashion_cnn.safetensors"))
    p.add_argument("--nabla", default=os.path.join(REPO, "build", "examples", "fashion_mnist"),
                   help="the fashion_mnist binary (default build/examples/fashion_mnist)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--channels", default="32,64", help="as given to fashion_mnist --channels")
    p.add_argument("--hidden", type=int, default=256, help="as given to fashion_mnist --hidden")
    p.add_argument("--dropout", type=float, default=0.2, help="as given to fashion_mnist --dropout (used by the "
                   "PyTorch steps of the check that goes back)")
    p.add_argument("--no-tta", action="store_true",
                   help="as given to fashion_mnist --no-tta: predict from the image alone, not from the mean of "
                        "its and its mirror image's logits")
    p.add_argument("--tolerance", type=int, default=2, help="predictions allowed to differ (2)")
    p.add_argument("--smoke", action="store_true",
                   help="first train for one short epoch into a temporary folder and check that checkpoint "
                   "(the test suite's mode; exit status 77, skipped, without torch)")
    return p.parse_args()


def read_images(path):
    """[N, 28, 28] float32 in [0, 1], rounded as nb_idx_read does (the byte times 1/255 in double)"""
    return (read_idx(path).astype(np.float64) * (1.0 / 255.0)).astype(np.float32)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        blob = f.read()
    ndim = blob[3]
    dims = struct.unpack(">" + "I" * ndim, blob[4:4 + 4 * ndim])
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def make_model(torch, channels, hidden, dropout):
    nn, F = torch.nn, torch.nn.functional

    class CNN(nn.Module):
        """examples/fashion_mnist.c's logits_of for --model cnn: conv-bn-relu-pool blocks (conv1, bn1,
        conv2, bn2[, conv3, bn3]), fc1, fc2"""

        def __init__(self):
            super().__init__()
            side, cin = 28, 1
            for k, c in enumerate(channels):
                setattr(self, f"conv{k + 1}", nn.Conv2d(cin, c, 3, padding=1, bias=False))
                setattr(self, f"bn{k + 1}", nn.BatchNorm2d(c))
                cin, side = c, side // 2
            self.fc1 = nn.Linear(cin * side * side, hidden)
            self.fc2 = nn.Linear(hidden, 10)

        def forward(self, x):
            # x: images scaled to [0, 1] in float32, as nb_idx_read gives them; then nabla's affine map
            x = (x * np.float32(1.0 / 0.3530) + np.float32(-0.2860 / 0.3530)).reshape(-1, 1, 28, 28)
            for k in range(len(channels)):
                x = F.max_pool2d(F.relu(getattr(self, f"bn{k + 1}")(getattr(self, f"conv{k + 1}")(x))), 2)
                if k == 0:
                    x = F.dropout2d(x, dropout / 3, self.training)
            x = F.dropout(torch.flatten(x, 1), dropout, self.training)
            x = F.dropout(F.relu(self.fc1(x)), dropout, self.training)
            return self.fc2(x)

    return CNN()


def nabla_predictions(a, ckpt):
    """fashion_mnist --eval's predictions, and its printed accuracy line."""
    with tempfile.TemporaryDirectory() as d:
        pred = os.path.join(d, "pred.txt")
        cmd = [a.nabla, "--model", "cnn", "--channels", a.channels, "--hidden", str(a.hidden), "--data", a.data,
               "--eval", ckpt, "--predictions", pred] + (["--no-tta"] if a.no_tta else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"fashion_cnn_torch_check: {' '.join(cmd)} failed:\n{r.stderr}")
        with open(pred) as f:
            p = np.array([int(line) for line in f], dtype=np.int64)
    return p, r.stdout.splitlines()[0]


def predict(torch, model, images, tta):
    """The logits fashion_mnist predicts from: the mean of an image's and its mirror image's (tta)."""
    with torch.no_grad():
        logits = model(images)
        if tta:
            logits = (logits + model(torch.flip(images, [2]))) * 0.5
    return logits.double().numpy()


def compare(label, torch_logits, nb_pred, tol):
    t_pred = torch_logits.argmax(1)
    diff = np.nonzero(t_pred != nb_pred)[0]
    top2 = np.sort(torch_logits, axis=1)[:, -2:]
    gaps = top2[diff, 1] - top2[diff, 0]
    print(f"{label}: {len(nb_pred) - len(diff)} of {len(nb_pred)} predictions agree"
          + (f"; the {len(diff)} others have a logit gap of at most {gaps.max():.2e}" if len(diff) else ""))
    return len(diff) <= tol


def main():
    a = parse_args()
    try:
        import torch
    except ImportError:
        if a.smoke:
            return 77
        sys.exit("fashion_cnn_torch_check: torch is not importable; run it with /usr/bin/python3 (python3-torch)")
    torch.set_num_threads(1)
    channels = [int(v) for v in a.channels.split(",")]
    ok = True
    if a.smoke:
        smoke = tempfile.TemporaryDirectory()
        cmd = [a.nabla, "--model", "cnn", "--channels", a.channels, "--hidden", str(a.hidden), "--data", a.data,
               "--epochs", "1", "--train-limit", "1000", "--quiet", "--threads", "1", "--out", smoke.name]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"fashion_cnn_torch_check: {' '.join(cmd)} failed:\n{r.stderr}")
        a.checkpoint = os.path.join(smoke.name, "fashion_cnn.safetensors")

    # 1. nabla -> PyTorch
    tensors, _ = ts.read(a.checkpoint)
    state = {k: torch.from_numpy(v.copy()) for k, v, _ in tensors if not k.startswith(ts.OPTIM_PREFIX)}
    model = make_model(torch, channels, a.hidden, a.dropout)
    model.load_state_dict(state, strict=True)  # raises on a missing or extra name, or another shape
    print(f"{a.checkpoint}: {len(state)} tensors loaded into torch.nn with load_state_dict(strict=True) "
          f"({sum(v.numel() for v in state.values())} numbers; buffers included)")

    # 2. the test set in both
    images = torch.from_numpy(read_images(os.path.join(a.data, "t10k-images-idx3-ubyte.gz")))
    labels = read_idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    model.eval()
    logits = predict(torch, model, images, not a.no_tta)
    nb_pred, nb_line = nabla_predictions(a, a.checkpoint)
    t_acc, n_acc = (logits.argmax(1) == labels).mean(), (nb_pred == labels).mean()
    print(f"test accuracy: PyTorch {100 * t_acc:.2f}%, nabla {100 * n_acc:.2f}% ({nb_line})")
    ok &= compare("nabla's checkpoint", logits, nb_pred, a.tolerance)

    # 3. PyTorch -> nabla: a few training steps in torch move the weights and the running statistics
    train_x = torch.from_numpy(read_images(os.path.join(a.data, "train-images-idx3-ubyte.gz"))[:640])
    train_y = torch.from_numpy(read_idx(os.path.join(a.data, "train-labels-idx1-ubyte.gz"))[:640].astype(np.int64))
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(0, 640, 64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train_x[i:i + 64]), train_y[i:i + 64]).backward()
        opt.step()
    model.eval()
    logits2 = predict(torch, model, images, not a.no_tta)
    with tempfile.TemporaryDirectory() as d:
        back = os.path.join(d, "from_torch.safetensors")
        arrays = [(k, v.detach().numpy(), SAFETENSORS[v.detach().numpy().dtype]) for k, v in model.state_dict().items()]
        ts.write(back, arrays, {"format": "nabla-checkpoint", "step": "0"})
        nb_pred2, nb_line2 = nabla_predictions(a, back)
    print(f"after 10 PyTorch SGD steps: PyTorch {100 * (logits2.argmax(1) == labels).mean():.2f}%, "
          f"nabla on PyTorch's state_dict {100 * (nb_pred2 == labels).mean():.2f}%")
    ok &= compare("PyTorch's state_dict in nabla", logits2, nb_pred2, a.tolerance)
    print("checkpoints agree both ways" if ok else "checkpoints DO NOT agree")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
