#!/usr/bin/python3
"""examples/torch_safetensors.py round trip (run by meson when python3-torch is present; exit 77 =
skipped otherwise): a state_dict with parameters and buffers of every supported dtype goes to
safetensors and back bit for bit; the file passes the independent reader tests/read_safetensors.py;
a nabla checkpoint written by examples' fixture (tests/fixtures/small.safetensors) converts to a
state_dict with the same values; --params-only drops optimizer state."""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError:
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "examples"))
import torch_safetensors as ts  # noqa: E402

fails = 0


def check(cond, what):
    global fails
    print(("ok: " if cond else "FAIL: ") + what)
    fails += 0 if cond else 1


torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.LSTM(4, 5))
m[1].train()
m[1](torch.randn(8, 4))  # running statistics and num_batches_tracked (int64) become non-trivial
sd = dict(m.state_dict())
sd["extra.f64"] = torch.randn(2, 3, dtype=torch.float64)
sd["extra.f16"] = torch.randn(3).half()
sd["extra.bf16"] = torch.randn(3).bfloat16()
sd["extra.i32"] = torch.arange(5, dtype=torch.int32)
sd["extra.u8"] = torch.arange(4, dtype=torch.uint8)
sd["extra.bool"] = torch.tensor([True, False, True])
sd["extra.scalar"] = torch.tensor(2.5)
sd["extra.empty"] = torch.zeros(0, 3)
sd["extra.noncontig"] = torch.randn(4, 3).t()

with tempfile.TemporaryDirectory() as d:
    pt, st, back = (os.path.join(d, f) for f in ("a.pt", "a.safetensors", "b.pt"))
    torch.save(sd, pt)
    ts.main(["to-safetensors", pt, st, "--meta", "source=test"])
    # the independent reader (which knows nabla's dtypes only) accepts a file of those
    nabla_sd = {k: v for k, v in sd.items() if v.dtype in (torch.float32, torch.float64, torch.int64)}
    torch.save(nabla_sd, pt)
    ts.main(["to-safetensors", pt, back])
    r = subprocess.run([sys.executable, os.path.join(here, "read_safetensors.py"), back], capture_output=True)
    check(r.returncode == 0 and r.stdout.count(b"\ntensor ") == len(nabla_sd),
          "the independent reader accepts the layout: " + r.stderr.decode()[-200:])
    torch.save(sd, pt)
    tensors, meta = ts.read(st)
    check(meta == {"source": "test"}, "metadata kept")
    check([n for n, _, _ in tensors] == list(sd.keys()), "names in order")
    ts.main(["to-torch", st, back])
    sd2 = torch.load(back)
    same = all(sd[k].dtype == sd2[k].dtype and sd[k].shape == sd2[k].shape and torch.equal(sd[k], sd2[k])
               for k in sd)
    check(same and sd.keys() == sd2.keys(), "state_dict -> safetensors -> state_dict is exact")
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.LSTM(4, 5))
    missing = m2.load_state_dict({k: v for k, v in sd2.items() if not k.startswith("extra.")}, strict=True)
    check(not missing.missing_keys and not missing.unexpected_keys, "loads into the module with strict=True")

    # a file written by nabla (committed fixture) converts to torch with the same values
    fx = os.path.join(here, "fixtures", "small.safetensors")
    ts.main(["to-torch", fx, back])
    sd3 = torch.load(back)
    t3, _ = ts.read(fx)
    check(all(np.array_equal(sd3[n].numpy(), a) for n, a, _ in t3), "nabla's fixture converts exactly")

    # --params-only leaves out optimizer state
    ts.write(st, [("fc.weight", np.ones((2, 2), "<f4"), "F32"), ("optim.fc.weight.exp_avg", np.zeros((2, 2), "<f4"), "F32")])
    ts.main(["to-torch", st, back, "--params-only"])
    check(list(torch.load(back).keys()) == ["fc.weight"], "--params-only drops optim.* entries")

print(f"torch_safetensors: {fails} failed")
sys.exit(1 if fails else 0)
