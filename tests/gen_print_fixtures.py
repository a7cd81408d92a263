#!/usr/bin/python3
"""PyTorch's printed layout of tensors, for nb_tensor_print (tests/test_print.c).

Run by hand with Debian's python and its torch (python3-torch), from anywhere:

    /usr/bin/python3 tests/gen_print_fixtures.py            # (re)write tests/fixtures/print.txt
    /usr/bin/python3 tests/gen_print_fixtures.py --check    # exit 1 if the file is not what this makes

Each case names a tensor that both sides build from the same formula (so the file holds no values),
and PyTorch's text for it: what torch.Tensor.__repr__ puts between "tensor(" and the dtype, laid out
for a first column of 0 (torch._tensor_str._tensor_str(t, indent=0), with the default line width of
80 and PyTorch's default precision of 4; threshold as the case says, 1000 by default). The cases keep
to tensors where PyTorch's columns line up: nabla sizes its columns by every shown value, where
PyTorch sizes them by the finite non-zero ones only (so that "nan" or "-0." can stick out).

File format (ASCII, one record per line)
-------------------------------------------------------------------------------------------------
    # anything                      a comment (also blank lines): ignored
    nabla-print 1                   the first non-comment line: format name and version
    case <name> <dtype> <kind> <scale> <threshold> <ndim> <dim>...
                                    dtype f64, f32 or i64; kind (below); threshold 0: PyTorch's default
    | <text>                        one line of the expected text (after "| "), in order
    end

Kinds, for element i (row-major) of the tensor, computed in float64 and then converted to the dtype:
    arange    i * scale
    mix       ((i * 37) % 101 - 50) * scale
    frac      ((i * 37) % 101 - 50) / 7 * scale
    special   frac, but NaN where i % 11 == 1, inf where i % 13 == 2, -inf where i % 17 == 3
"""

import math
import os
import sys

import torch
from torch._tensor_str import _tensor_str

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fixture_writer.py, beside this file
import fixture_writer as fw  # noqa: E402

FORMAT_VERSION = 1
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "print.txt")
DTYPES = {"f64": torch.float64, "f32": torch.float32, "i64": torch.int64}


def value(kind, i, scale):
    base = float((i * 37) % 101 - 50)
    if kind == "arange":
        return i * scale
    if kind == "mix":
        return base * scale
    v = base / 7.0 * scale
    if kind == "special":
        if i % 11 == 1:
            return math.nan
        if i % 13 == 2:
            return math.inf
        if i % 17 == 3:
            return -math.inf
    return v


def build(dtype, kind, scale, shape):
    n = math.prod(shape)
    vals = [value(kind, i, scale) for i in range(n)]
    if dtype == "i64":
        vals = [int(v) for v in vals]
    return torch.tensor(vals, dtype=DTYPES[dtype]).reshape(shape)


CASES = [
    # name, dtype, kind, scale, threshold (0: default), shape
    ("vector_whole", "f64", "arange", 1.0, 0, (6,)),
    ("cube_whole", "f64", "arange", 1.0, 0, (2, 3, 4)),
    ("matrix_frac", "f64", "frac", 1.0, 0, (3, 4)),
    ("matrix_f32", "f32", "frac", 0.25, 0, (4, 3)),
    ("scalar", "f64", "frac", 1.0, 0, ()),
    ("scalar_i64", "i64", "mix", 1.0, 0, ()),
    ("long_row_i64", "i64", "mix", 1.0, 0, (35,)),
    ("long_rows_f32", "f32", "frac", 1.0, 0, (5, 30)),
    ("zeros", "f64", "arange", 0.0, 0, (3, 3)),
    ("tiny_sci", "f64", "frac", 1e-5, 0, (2, 3)),
    ("wide_sci", "f64", "mix", 1e3, 0, (3, 4)),
    ("huge_whole_sci", "f64", "mix", 1e9, 0, (2, 2, 2, 2)),
    ("special", "f64", "special", 1.0, 0, (4, 5)),
    ("special_f32", "f32", "special", 3.0, 0, (20,)),
    ("summary_matrix", "f64", "arange", 1.0, 0, (40, 50)),
    ("summary_cube", "f64", "arange", 0.001, 0, (2, 10, 100)),
    ("summary_vector", "f64", "frac", 1.0, 0, (1001,)),
    ("summary_i64", "i64", "mix", 3.0, 0, (3, 1000)),
    ("summary_threshold", "f64", "frac", 1.0, 10, (4, 8)),
    ("summary_short_dims", "f64", "mix", 1.0, 10, (7, 2, 3)),
    ("deep", "f64", "frac", 1.0, 0, (1, 1, 1, 1, 1, 1, 1, 2)),
]


def generate():
    lines = fw.header("nb_tensor_print reference layouts: PyTorch %s's printing." % torch.__version__,
                      "gen_print_fixtures.py", "nabla-print", FORMAT_VERSION)
    for name, dtype, kind, scale, threshold, shape in CASES:
        torch.set_printoptions(profile="default")
        if threshold:
            torch.set_printoptions(threshold=threshold)
        text = _tensor_str(build(dtype, kind, scale, shape), 0)
        lines.append("case %s %s %s %r %d %d%s" % (name, dtype, kind, scale, threshold, len(shape),
                                                   "".join(" %d" % d for d in shape)))
        lines += [("| " + line).rstrip() if line else "|" for line in text.split("\n")]
        lines.append("end")
    torch.set_printoptions(profile="default")
    return "\n".join(lines) + "\n"


def summary(out, text):
    return "%s: %d cases, %d bytes" % (out, len(CASES), len(text))


if __name__ == "__main__":
    sys.exit(fw.main(__doc__, DEFAULT_OUT, generate, summary))
