#!/usr/bin/python3
"""Convert a PyTorch state_dict to safetensors and back, with json + numpy (Debian has no safetensors
package; torch is needed only to read and write the .pt side).

    torch_safetensors.py to-safetensors model.pt model.safetensors [--meta KEY=VALUE ...]
    torch_safetensors.py to-torch model.safetensors model.pt
    torch_safetensors.py list model.safetensors

nabla writes and reads safetensors (nb_checkpoint_save / nb_checkpoint_load / nb_safetensors_read)
with PyTorch's parameter names, so a model trained in C loads into the equivalent torch.nn module with
`module.load_state_dict(torch.load("model.pt"), strict=...)` after `to-torch`, and weights trained in
PyTorch reach nabla after `to-safetensors`. nabla reads F32, F64 and I64 tensors; this script also
converts F16, BF16, I32, I16, I8, U8 and BOOL for other readers. A checkpoint of nabla
(nb_checkpoint_save) also holds the optimizer's state under names starting with "optim."
("optim.fc.weight.exp_avg", ...); `to-torch --params-only` leaves those out, which is what
`load_state_dict(strict=True)` of the model wants.

The file format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N,
N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the data section, each tensor row-major little-endian at its offsets.
"""
import argparse
import json
import struct
import sys

import numpy as np

# safetensors dtype <-> numpy dtype (BF16 has no numpy type: it travels as raw 16-bit words)
NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<i2", "I64": "<i8", "I32": "<i4",
      "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
OPTIM_PREFIX = "optim."  # nb_checkpoint_save's names for optimizer state


def write(path, tensors, meta=None):
    """tensors: ordered list of (name, numpy array, safetensors dtype)."""
    header, offset, blobs = {}, 0, []
    for name, arr, dt in tensors:
        raw = np.ascontiguousarray(arr).astype(NP[dt], copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if meta:
        header["__metadata__"] = {str(k): str(v) for k, v in meta.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad so the data section starts 8-aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def read(path):
    """-> (list of (name, numpy array, dtype), metadata dict); validates the layout."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + n:]
    out, end = [], 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dt, shape, (b, en) = e["dtype"], e["shape"], e["data_offsets"]
        if dt not in NP:
            raise ValueError(f"{path}: {name}: unsupported dtype {dt}")
        count = int(np.prod(shape)) if shape else 1
        if b != end or en - b != count * np.dtype(NP[dt]).itemsize or en > len(data):
            raise ValueError(f"{path}: {name}: byte range {b}..{en} does not fit")
        out.append((name, np.frombuffer(data[b:en], dtype=NP[dt]).reshape(shape).copy(), dt))
        end = en
    if end != len(data):
        raise ValueError(f"{path}: {len(data) - end} bytes after the last tensor")
    return out, meta


def to_safetensors(src, dst, meta):
    import torch

    sd = torch.load(src, map_location="cpu")
    if hasattr(sd, "state_dict"):
        sd = sd.state_dict()
    dtypes = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
              torch.uint8: "U8", torch.bool: "BOOL"}
    tensors = []
    for name, t in sd.items():
        if t.dtype not in dtypes:
            sys.exit(f"{name}: dtype {t.dtype} has no safetensors counterpart here")
        t = t.detach().contiguous().cpu()
        arr = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        tensors.append((name, arr, dtypes[t.dtype]))
    write(dst, tensors, meta)
    return len(tensors)


def to_torch(src, dst, params_only):
    import torch

    tensors, _ = read(src)
    sd = {}
    for name, arr, dt in tensors:
        if params_only and name.startswith(OPTIM_PREFIX):
            continue
        t = torch.from_numpy(arr.copy())
        sd[name] = t.view(torch.bfloat16) if dt == "BF16" else t
    torch.save(sd, dst)
    return len(sd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-safetensors", help="a torch.save'd state_dict (or module) -> safetensors")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    b = sub.add_parser("to-torch", help="safetensors -> a state_dict saved with torch.save")
    b.add_argument("src")
    b.add_argument("dst")
    b.add_argument("--params-only", action="store_true", help="leave out optimizer state entries")
    c = sub.add_parser("list", help="names, dtypes and shapes of a safetensors file")
    c.add_argument("src")
    args = p.parse_args(argv)
    if args.cmd == "to-safetensors":
        meta = dict(kv.split("=", 1) for kv in args.meta)
        print(f"{args.dst}: {to_safetensors(args.src, args.dst, meta)} tensors")
    elif args.cmd == "to-torch":
        print(f"{args.dst}: {to_torch(args.src, args.dst, args.params_only)} tensors")
    else:
        tensors, meta = read(args.src)
        for k, v in meta.items():
            print(f"metadata {k} = {v}")
        for name, arr, dt in tensors:
            print(f"{name} {dt} {list(arr.shape)}")


if __name__ == "__main__":
    main()
