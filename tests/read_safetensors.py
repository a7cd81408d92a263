#!/usr/bin/python3
"""An independent safetensors reader (json + numpy only), to check files written by nabla.

Validates the layout as the format demands (8-byte little-endian header length, a JSON object
header, known dtypes, byte ranges of shape x dtype size that tile the data section exactly) and
prints a listing that tests/test_checkpoint.c compares with what nb_checkpoint_load reads:

    # comments (file name, header length, data size)
    metadata KEY VALUE
    tensor NAME DTYPE NDIM DIM...
    VALUE VALUE ...              (one line per tensor, row-major; may be empty)

Floats are printed with repr() of the Python float (the exact value of an F32 element widened to
double), integers with repr() of the int. Tensors are listed in the order of the header.

Usage (by hand, with Debian's python3, which has numpy):
    /usr/bin/python3 tests/read_safetensors.py tests/fixtures/small.safetensors > tests/fixtures/small.expected.txt
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8")}


def fail(msg):
    sys.exit(f"read_safetensors: {msg}")


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        fail(f"{path}: {len(blob)} bytes, shorter than the header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n < 2 or 8 + n > len(blob):
        fail(f"{path}: header length {n} does not fit a file of {len(blob)} bytes")
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        fail(f"{path}: the header is not an object")
    data = blob[8 + n :]
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        fail(f"{path}: __metadata__ is not an object of strings")

    tensors, ranges = [], []
    for name, e in header.items():
        if set(e) != {"dtype", "shape", "data_offsets"}:
            fail(f"{path}: tensor {name}: keys {sorted(e)}")
        if e["dtype"] not in DTYPES:
            fail(f"{path}: tensor {name}: dtype {e['dtype']}")
        dt, shape = DTYPES[e["dtype"]], e["shape"]
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            fail(f"{path}: tensor {name}: shape {shape}")
        b, end = e["data_offsets"]
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= b <= end <= len(data)) or end - b != numel * dt.itemsize:
            fail(f"{path}: tensor {name}: data_offsets {[b, end]} for {e['dtype']} {shape}")
        if b % dt.itemsize:
            print(f"# note: tensor {name} is not aligned to {dt.itemsize} bytes in the data", file=sys.stderr)
        values = np.frombuffer(data, dtype=dt, count=numel, offset=b).reshape(shape)
        tensors.append((name, e["dtype"], shape, values))
        ranges.append((b, end, name))
    pos = 0
    for b, end, name in sorted(ranges):
        if b != pos:
            fail(f"{path}: tensor {name} starts at {b}, expected {pos} (gap or overlap)")
        pos = end
    if pos != len(data):
        fail(f"{path}: the tensors cover {pos} of {len(data)} data bytes")
    if (8 + n) % 8:
        fail(f"{path}: the data section starts at {8 + n}, not 8-byte aligned")
    return n, len(data), meta, tensors


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    n, data_size, meta, tensors = read(path)
    print(f"# {os.path.basename(path)}: header {n} bytes, data {data_size} bytes, {len(tensors)} tensors")
    for k, v in meta.items():
        print(f"metadata {k} {v}")
    for name, dtype, shape, values in tensors:
        print(f"tensor {name} {dtype} {len(shape)}" + "".join(f" {d}" for d in shape))
        flat = values.reshape(-1)
        conv = int if dtype == "I64" else float
        print(" ".join(repr(conv(x)) for x in flat))


if __name__ == "__main__":
    main()
