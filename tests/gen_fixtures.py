#!/usr/bin/python3
"""PyTorch reference fixtures for nabla's ops.

Run by hand with Debian's python and its torch (python3-torch), from anywhere:

    /usr/bin/python3 tests/gen_fixtures.py            # (re)write tests/fixtures/ops_f64.txt
    /usr/bin/python3 tests/gen_fixtures.py --check    # exit 1 if the file is not what this script makes

tests/test_fixtures.c reads the file, runs every case through nabla (in float64, and again with the
inputs cast to float32), and compares the forward output and every input gradient.

File format (ASCII, one record per line, tokens separated by single spaces)
-------------------------------------------------------------------------------------------------
    # anything                          a comment (also blank lines): ignored
    nabla-fixtures 1                    the first non-comment line: format name and version
    case <name> <op>                    starts a case; <name> is unique, <op> names a runner in the
                                        C dispatch table (test_fixtures.c) and a function in OPS below
    attr <key> [<number> ...]           an attribute: zero or more numbers (ints are written without a
                                        point; an empty list, e.g. `attr axes`, is a valid list)
    tensor <role> <dtype> <ndim> <dim>... <value>...
                                        dtype is f64, f32 or i64; ndim 0..8; then ndim extents, then
                                        exactly prod(extents) values (1 for ndim 0) in row-major order
    end                                 ends the case

Roles: in0, in1, ... (the op's inputs, in argument order, numbered from 0 without gaps), out (the
forward result), seed (the gradient given to nabla's nb_backward for out: same shape and dtype as
out), grad0, grad1, ... (d<out, seed>/d in_i, from torch.autograd). An input has a grad line exactly
when it is differentiable (floating and not marked nograd, e.g. i64 indices have none); the test
makes exactly those inputs require grad. A value case (an op in VALUE_OPS, or an i64 result) has no
seed and no grad lines: only its output is compared. Lines inside a case may come in any order.

Values are Python's repr of the float64 value, which round-trips exactly through C's strtod (inf
and nan would be written as such). float32 tensors are stored as the exact decimal value of each
float32 (every float32 is a float64), so parsing with strtod and converting to float is exact. i64
values are plain integers.

Adding ops
-------------------------------------------------------------------------------------------------
1. Add the PyTorch function to OPS with the @op("name") decorator: it receives the input tensors and
   the case's attributes as keyword arguments and returns the output tensor.
2. Add cases to CASES with case(name, op, [input specs], attr=value, ...). Input specs: N(*shape)
   (standard normal), U(lo, hi, *shape), POS(*shape) (uniform in [0.25, 3]), AWAY(*shape) (normal
   pushed at least 0.125 away from 0), NZ(*shape) (magnitude in [0.5, 2], random sign), DISTINCT(*shape)
   (distinct multiples of 0.25: no ties, for max and min), V(values, shape) (explicit values: keep
   them exact in float32, or the float32 pass sees other inputs), IRAND(lo, hi, *shape) (i64 in
   [lo, hi)), and the wrappers F32(spec) (float32 input), I64(values, shape) and NOGRAD(spec). Each case draws from its own generator seeded by its
   name, so adding or reordering cases leaves the other cases' numbers unchanged.
   Ops with several outputs (split, chunk) join their pieces into one output; ops with a random part
   (dropout) get their randomness from a seed attribute that both sides turn into the same numbers.
3. Add the runner to the dispatch table in tests/test_fixtures.c.
"""

import math
import os
import sys
import zlib

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fixture_writer.py, beside this file
import fixture_writer as fw  # noqa: E402

FORMAT_VERSION = 1
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "ops_f64.txt")

# ----------------------------------------------------------------------------------------------
# Op definitions: name -> torch function(*inputs, **attrs) -> output
# ----------------------------------------------------------------------------------------------

OPS = {}


def op(name):
    def register(fn):
        assert name not in OPS, name
        OPS[name] = fn
        return fn
    return register


def _dims(x, axes):
    """nabla's axes list (empty: every axis) as a torch dim tuple."""
    return tuple(axes) if axes else tuple(range(x.dim()))


@op("add")
def _add(a, b):
    return a + b


@op("sub")
def _sub(a, b):
    return a - b


@op("mul")
def _mul(a, b):
    return a * b


@op("div")
def _div(a, b):
    return a / b


@op("add_scalar")
def _add_scalar(x, s):
    return x + s


@op("mul_scalar")
def _mul_scalar(x, s):
    return x * s


@op("rsub_scalar")  # s - x
def _rsub_scalar(x, s):
    return s - x


@op("div_scalar")
def _div_scalar(x, s):
    return x / s


@op("affine")  # a * x + b
def _affine(x, a, b):
    return a * x + b


@op("neg")
def _neg(x):
    return -x


@op("exp")
def _exp(x):
    return torch.exp(x)


@op("log")
def _log(x):
    return torch.log(x)


@op("tanh")
def _tanh(x):
    return torch.tanh(x)


@op("sigmoid")
def _sigmoid(x):
    return torch.sigmoid(x)


@op("relu")
def _relu(x):
    return torch.relu(x)


@op("matmul")  # op(a) @ op(b) with NumPy batching and 1-D operands; trans_a: a is stored [..., k, m],
def _matmul(a, b, trans_a=0, trans_b=0):  # trans_b: b is stored [..., n, k]
    return torch.matmul(a.transpose(-1, -2) if trans_a else a, b.transpose(-1, -2) if trans_b else b)


@op("sum")  # nb_sum(x, axes, keepdim); no axes: every axis
def _sum(x, axes=(), keepdim=0):
    return x.sum(dim=_dims(x, axes), keepdim=bool(keepdim))


@op("mean")
def _mean(x, axes=(), keepdim=0):
    return x.mean(dim=_dims(x, axes), keepdim=bool(keepdim))


@op("sum_all")
def _sum_all(x):
    return x.sum()


@op("mean_all")
def _mean_all(x):
    return x.mean()


@op("sum_to")
def _sum_to(x, shape):
    return x.sum_to_size(*shape) if shape else x.sum()


@op("reshape")
def _reshape(x, shape):
    return x.reshape(tuple(shape))


@op("transpose")
def _transpose(x, dims):
    return x.transpose(dims[0], dims[1])


@op("permute")
def _permute(x, perm):
    return x.permute(*perm)


@op("broadcast_to")
def _broadcast_to(x, shape):
    return torch.broadcast_to(x, tuple(shape))


@op("cast_f32")
def _cast_f32(x):
    return x.to(torch.float32)


@op("cast_f64")
def _cast_f64(x):
    return x.to(torch.float64)


# The full primitive set.

@op("pow")
def _pow(a, b):
    return torch.pow(a, b)


@op("maximum")  # ties split the gradient evenly, in nabla as in torch
def _maximum(a, b):
    return torch.maximum(a, b)


@op("minimum")
def _minimum(a, b):
    return torch.minimum(a, b)


@op("sub_scalar")  # x - s
def _sub_scalar(x, s):
    return x - s


@op("rdiv_scalar")  # s / x
def _rdiv_scalar(x, s):
    return s / x


@op("pow_scalar")  # x ^ p
def _pow_scalar(x, p):
    return torch.pow(x, p)


@op("sqrt")
def _sqrt(x):
    return torch.sqrt(x)


@op("abs")
def _abs(x):
    return torch.abs(x)


@op("sin")
def _sin(x):
    return torch.sin(x)


@op("cos")
def _cos(x):
    return torch.cos(x)


@op("erf")
def _erf(x):
    return torch.erf(x)


@op("log1p")
def _log1p(x):
    return torch.log1p(x)


@op("expm1")
def _expm1(x):
    return torch.expm1(x)


@op("leaky_relu")
def _leaky_relu(x, slope):
    return F.leaky_relu(x, slope)


@op("elu")
def _elu(x, alpha):
    return F.elu(x, alpha)


@op("softplus")  # torch switches to x above its threshold of 20: the cases stay below it
def _softplus(x):
    return F.softplus(x)


@op("gelu")  # exact: x Phi(x)
def _gelu(x):
    return F.gelu(x)


@op("clamp")
def _clamp(x, lo, hi):
    return torch.clamp(x, lo, hi)


@op("reciprocal")
def _reciprocal(x):
    return torch.reciprocal(x)


@op("square")
def _square(x):
    return torch.square(x)


@op("where")  # the runner makes nabla's mask with nb_gt(c, 0)
def _where(c, a, b):
    return torch.where(c > 0, a, b)


@op("max")  # amax: cases have no ties (torch splits them, nabla picks the first)
def _max(x, axes=(), keepdim=0):
    return torch.amax(x, dim=_dims(x, axes), keepdim=bool(keepdim))


@op("min")
def _min(x, axes=(), keepdim=0):
    return torch.amin(x, dim=_dims(x, axes), keepdim=bool(keepdim))


@op("logsumexp")
def _logsumexp(x, axes=(), keepdim=0):
    return torch.logsumexp(x, dim=_dims(x, axes), keepdim=bool(keepdim))


@op("var")
def _var(x, axes=(), correction=1, keepdim=0):
    return torch.var(x, dim=_dims(x, axes), correction=correction, keepdim=bool(keepdim))


@op("std")
def _std(x, axes=(), correction=1, keepdim=0):
    return torch.std(x, dim=_dims(x, axes), correction=correction, keepdim=bool(keepdim))


@op("softmax")
def _softmax(x, axis):
    return torch.softmax(x, dim=axis)


@op("log_softmax")
def _log_softmax(x, axis):
    return torch.log_softmax(x, dim=axis)


@op("slice")  # x[..., start:stop:step, ...] along axis
def _slice(x, axis, start, stop, step):
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


@op("concat")
def _concat(*xs, axis):
    return torch.cat(xs, dim=axis)


@op("stack")
def _stack(*xs, axis):
    return torch.stack(xs, dim=axis)


@op("split")  # every piece, joined again in reverse order (one output that depends on all of them)
def _split(x, axis, sizes):
    return torch.cat(list(reversed(torch.split(x, list(sizes), dim=axis))), dim=axis)


@op("chunk")  # the same for chunk
def _chunk(x, n, axis):
    return torch.cat(list(reversed(torch.chunk(x, n, dim=axis))), dim=axis)


@op("squeeze")
def _squeeze(x, axis):
    return x.squeeze(axis)


@op("unsqueeze")
def _unsqueeze(x, axis):
    return x.unsqueeze(axis)


@op("pad")  # nabla: (before, after) per dim from the first; F.pad: from the last
def _pad(x, pads, value):
    tp = []
    for d in reversed(range(x.dim())):
        tp += [pads[2 * d], pads[2 * d + 1]]
    return F.pad(x, tp, mode="constant", value=value)


@op("index_select")
def _index_select(x, idx, axis):
    return torch.index_select(x, axis, idx)


@op("gather")
def _gather(x, idx, axis):
    return torch.gather(x, axis, idx)


@op("scatter_add")  # nb_scatter_add(shape, axis, idx, src): zeros of shape, src added at idx
def _scatter_add(src, idx, axis, shape):
    return torch.zeros(tuple(shape), dtype=src.dtype).scatter_add(axis, idx, src)


# nabla's generator (src/autograd/rng.c: xoshiro256** seeded through splitmix64), so that the
# dropout cases know the mask nb_dropout draws for a seed.
_M64 = (1 << 64) - 1


class NbRng:
    def __init__(self, seed):
        x = seed & _M64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & _M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & _M64

    def u64(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & _M64, 7) * 9) & _M64
        t = (s[1] << 17) & _M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def uniform(self):
        return (self.u64() >> 11) * 2.0 ** -53


def dropout_mask(shape, p, seed):
    """nb_dropout_mask(f64, shape, p, rng seeded with seed): one draw from the generator is the key of
    a splitmix64 stream; element i is kept (1 / (1 - p)) when half i % 2 (low, high) of the stream's
    output i // 2 + 1 is >= round(p 2^32) (src/ops/kernels.h, nb__dropout_bits)."""
    rng = NbRng(seed)
    key = rng.u64()
    n = math.prod(shape)
    thr = min(round(p * 2.0 ** 32), 2 ** 32 - 1)
    keep = 1.0 / (1.0 - p)
    vals = []
    for i in range(n):
        z = (key + (i // 2 + 1) * 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        z ^= z >> 31
        bits = z & 0xFFFFFFFF if i % 2 == 0 else z >> 32
        vals.append(keep if bits >= thr else 0.0)
    return torch.tensor(vals, dtype=torch.float64).reshape(shape)


@op("dropout")  # nb_dropout(x, p, rng seeded with seed): x times nabla's mask
def _dropout(x, p, seed):
    return x * dropout_mask(tuple(x.shape), p, seed).to(x.dtype)


@op("lstm_gates")  # nb_lstm_gates(gates, c): [h', c'] of an LSTM step from its gate pre-activations
def _lstm_gates(gates, c):
    i, f, g, o = gates.chunk(4, -1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c2 = f * c + i * g
    return torch.stack([o * torch.tanh(c2), c2])


@op("gru_gates")  # nb_gru_gates(xg, hg, h): h' of a GRU step (torch.nn.GRU's equations)
def _gru_gates(xg, hg, h):
    xr, xz, xn = xg.chunk(3, -1)
    hr, hz, hn = hg.chunk(3, -1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


# The everyday ops and integer tensors. Ops in VALUE_OPS are not differentiable (or, for i64 inputs,
# have i64 results): their cases hold no seed and no gradients, only the output to compare.

VALUE_OPS = set()


def value_op(name):
    VALUE_OPS.add(name)
    return op(name)


@op("flip")  # nb_flip(x, axes); no axes: every axis
def _flip(x, axes=()):
    return torch.flip(x, _dims(x, axes))


@op("roll")
def _roll(x, shift, axis):
    return torch.roll(x, shift, axis)


@op("repeat")  # torch.Tensor.repeat
def _repeat(x, reps):
    return x.repeat(*reps)


@op("tile")
def _tile(x, reps):
    return torch.tile(x, tuple(reps))


@op("cumsum")
def _cumsum(x, axis):
    return torch.cumsum(x, axis)


@op("cumprod")  # torch's gradient is exact at zeros too
def _cumprod(x, axis):
    return torch.cumprod(x, axis)


@op("sort")  # stable, as nb_sort: ties keep their order in both directions
def _sort(x, axis, descending):
    return torch.sort(x, dim=axis, descending=bool(descending), stable=True).values


@value_op("argsort")
def _argsort(x, axis, descending):
    return torch.sort(x, dim=axis, descending=bool(descending), stable=True).indices


@op("topk")  # cases have no ties (torch does not specify their order)
def _topk(x, k, axis, largest):
    return torch.topk(x, k, dim=axis, largest=bool(largest), sorted=True).values


@value_op("topk_indices")
def _topk_indices(x, k, axis, largest):
    return torch.topk(x, k, dim=axis, largest=bool(largest), sorted=True).indices


@op("masked_fill")  # the runner's mask: nb_gt(m, 0) for a float m, m itself (non-zero) for i64
def _masked_fill(x, m, value):
    return x.masked_fill(m > 0 if m.is_floating_point() else m != 0, value)


@op("triu")
def _triu(x, diagonal):
    return torch.triu(x, diagonal)


@op("tril")
def _tril(x, diagonal):
    return torch.tril(x, diagonal)


# Attributes are numbers, so einsum cases name their equation by its index in EINSUM, a list that
# tests/test_fixtures.c repeats; eq_check (einsum_check below) catches the two lists drifting apart.
EINSUM = ["ij,jk->ik", "ij,kj->ik", "ji,jk->ik", "bij,bjk->bik", "bij,bkj->bik", "i,j->ij", "i,i->",
          "ij,ij->ij", "ij->ji", "ij->", "ij->j", "ij,jk", "ba,ab", "...ij,...jk->...ik", "bhqd,bhkd->bhqk",
          "ijk,jl->lki", "ij,j->i", "ij,kl->ijkl", "...i,...i->...", "ik,k->"]


def einsum_check(eq):
    return sum((i + 1) * ord(c) for i, c in enumerate(eq))


@op("einsum")
def _einsum(*xs, eq, eq_check):
    assert einsum_check(EINSUM[eq]) == eq_check
    return torch.einsum(EINSUM[eq], *xs)


def _same_dtype(mask, x):
    """a comparison's result as nabla gives it: 0/1 in the inputs' dtype"""
    return mask.to(x.dtype)


@value_op("sign")  # not differentiable
def _sign(x):
    return torch.sign(x)


@value_op("eq")
def _eq(a, b):
    return _same_dtype(a == b, a)


@value_op("ne")
def _ne(a, b):
    return _same_dtype(a != b, a)


@value_op("lt")
def _lt(a, b):
    return _same_dtype(a < b, a)


@value_op("le")
def _le(a, b):
    return _same_dtype(a <= b, a)


@value_op("gt")
def _gt(a, b):
    return _same_dtype(a > b, a)


@value_op("ge")
def _ge(a, b):
    return _same_dtype(a >= b, a)


@value_op("argmax")  # the first maximal element, as torch.argmax
def _argmax(x, axis, keepdim):
    return torch.argmax(x, dim=axis, keepdim=bool(keepdim))


@value_op("accuracy")  # nb_sum_all(nb_eq(nb_argmax(logits, 1, 0), labels)): the number of correct rows
def _accuracy(logits, labels):
    return (torch.argmax(logits, dim=1) == labels).sum()


# ----------------------------------------------------------------------------------------------
# Input specs: each is called with the case's generator and returns a tensor
# ----------------------------------------------------------------------------------------------

class Spec:
    def __init__(self, make, grad=True):
        self.make, self.grad = make, grad

    def __call__(self, gen):
        return self.make(gen)


# Random values are rounded to multiples of Q = 2^-6: short in the file, and exact in float32, so the
# float32 pass of the test sees the same inputs as the float64 one. Outputs and gradients keep full
# float64 precision.
Q = 2.0 ** -6


def _q(x):
    return torch.round(x / Q) * Q


def N(*shape):
    return Spec(lambda g: _q(torch.randn(shape, generator=g, dtype=torch.float64)))


def U(lo, hi, *shape):
    return Spec(lambda g: _q(lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)))


def POS(*shape):
    return U(0.25, 3.0, *shape)


def AWAY(*shape):
    def make(g):
        x = _q(torch.randn(shape, generator=g, dtype=torch.float64))
        return torch.where(x >= 0, x + 0.125, x - 0.125)
    return Spec(make)


def NZ(*shape):
    def make(g):
        m = _q(0.5 + 1.5 * torch.rand(shape, generator=g, dtype=torch.float64))
        s = torch.randint(0, 2, shape, generator=g, dtype=torch.int64) * 2 - 1
        return m * s.to(torch.float64)
    return Spec(make)


def V(values, shape=None):
    t = torch.tensor(values, dtype=torch.float64)
    return Spec(lambda g: t.reshape(shape) if shape is not None else t.clone())


def F32(spec):
    return Spec(lambda g: spec(g).to(torch.float32), spec.grad)


def NOGRAD(spec):
    return Spec(spec.make, grad=False)


def I64(values, shape=None):
    t = torch.tensor(values, dtype=torch.int64)
    return Spec(lambda g: t.reshape(shape) if shape is not None else t.clone(), grad=False)


def IRAND(lo, hi, *shape):
    """i64 uniform in [lo, hi)"""
    return Spec(lambda g: torch.randint(lo, hi, shape, generator=g, dtype=torch.int64), grad=False)


def DISTINCT(*shape):
    """Distinct values (a shuffled ladder of step 0.25): no ties for max/min."""
    def make(g):
        n = math.prod(shape)
        perm = torch.randperm(n, generator=g).to(torch.float64)
        return ((perm - (n - 1) // 2) * 0.25).reshape(shape)
    return Spec(make)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

CASES = []


def case(name, opname, inputs, **attrs):
    assert opname in OPS, opname
    assert all(c[0] != name for c in CASES), "duplicate case " + name
    assert name.replace("_", "").isalnum(), name
    CASES.append((name, opname, inputs, attrs))


# Binary arithmetic: same shapes and the broadcasting patterns.
BINARY_SHAPES = [
    ("same", (2, 3), (2, 3)),
    ("row", (2, 3), (3,)),          # [2,3] with [3]
    ("row_rev", (3,), (2, 3)),      # [3] with [2,3]
    ("both", (2, 1, 4), (3, 1)),    # both sides broadcast -> [2,3,4]
    ("scalar", (), (2, 3)),         # 0-d with [2,3]
    ("scalar_rev", (2, 3), ()),
]
for opname in ("add", "sub", "mul", "div"):
    for tag, sa, sb in BINARY_SHAPES:
        rhs = NZ(*sb) if opname == "div" else N(*sb)  # denominators stay away from 0
        case("%s_%s" % (opname, tag), opname, [N(*sa), rhs])

# Scalar forms (nb_add_scalar and friends) and the affine map.
for opname, svals in (("add_scalar", (2.5, -0.75)), ("mul_scalar", (-1.5, 0.3)),
                      ("rsub_scalar", (1.0, -2.25)), ("div_scalar", (4.0, -0.7))):
    for i, s in enumerate(svals):
        case("%s_%d" % (opname, i), opname, [N(2, 3)], s=s)
case("add_scalar_0d", "add_scalar", [N()], s=1.25)
case("affine_0", "affine", [N(2, 3)], a=-1.5, b=0.25)

# Unary functions.
case("neg_0", "neg", [N(2, 3)])
case("neg_0d", "neg", [N()])
case("exp_0", "exp", [N(2, 3)])
case("exp_wide", "exp", [V([-20.0, -5.0, -0.5, 0.0, 0.5, 5.0, 10.0, 20.0])])
case("log_0", "log", [POS(2, 3)])
case("log_wide", "log", [V([1e-8, 1e-3, 0.1, 1.0, 2.0, 1e3, 1e8])])
case("tanh_0", "tanh", [N(2, 3)])
case("tanh_wide", "tanh", [V([-30.0, -5.0, -0.01, 0.0, 0.01, 5.0, 30.0])])
case("sigmoid_0", "sigmoid", [N(2, 3)])
case("sigmoid_wide", "sigmoid", [V([-30.0, -10.0, -1.0, 0.0, 1.0, 10.0, 30.0])])
case("sigmoid_neg_tail", "sigmoid", [V([-40.0, -35.0, -30.0, -25.0])])
case("relu_0", "relu", [AWAY(3, 4)])

# Matrix products: C [3,5] = op(A) op(B) with k = 4, all four transpose combinations.
for ta in (0, 1):
    for tb in (0, 1):
        sa = (4, 3) if ta else (3, 4)
        sb = (5, 4) if tb else (4, 5)
        case("matmul_%s%s" % ("t" if ta else "n", "t" if tb else "n"), "matmul",
             [N(*sa), N(*sb)], trans_a=ta, trans_b=tb)
case("matmul_vecs", "matmul", [N(1, 3), N(3, 1)], trans_a=0, trans_b=0)  # [1,1] result
case("matmul_outer", "matmul", [N(1, 4), N(1, 2)], trans_a=1, trans_b=0)  # [4,2] from k = 1

# Reductions over axis lists, keepdim off and on; an empty axes list means every axis.
for opname in ("sum", "mean"):
    for tag, axes in (("all", ()), ("a0", (0,)), ("a1", (1,)), ("a02", (0, 2)), ("am1", (-1,)),
                      ("a20", (2, 0))):
        for keep in (0, 1):
            case("%s_%s_k%d" % (opname, tag, keep), opname, [N(2, 3, 4)], axes=axes, keepdim=keep)
    case("%s_2d_a1" % opname, opname, [N(3, 2)], axes=(1,), keepdim=0)
    case("%s_all_0d" % opname, "%s_all" % opname, [N(2, 3)])
case("sum_to_row", "sum_to", [N(2, 3)], shape=(3,))
case("sum_to_keep", "sum_to", [N(2, 3, 4)], shape=(3, 1))
case("sum_to_0d", "sum_to", [N(2, 3)], shape=())

# Shape ops.
case("reshape_2d", "reshape", [N(2, 3, 4)], shape=(6, 4))
case("reshape_infer", "reshape", [N(2, 3, 4)], shape=(4, -1))
case("reshape_flat", "reshape", [N(2, 3)], shape=(6,))
case("reshape_to_0d", "reshape", [N(1, 1)], shape=())
case("reshape_from_0d", "reshape", [N()], shape=(1, 1, 1))
case("transpose_01", "transpose", [N(2, 3, 4)], dims=(0, 1))
case("transpose_02", "transpose", [N(2, 3, 4)], dims=(0, 2))
case("transpose_neg", "transpose", [N(2, 3, 4)], dims=(-1, -2))
case("transpose_2d", "transpose", [N(3, 2)], dims=(1, 0))
case("transpose_same", "transpose", [N(2, 3)], dims=(1, 1))
case("permute_201", "permute", [N(2, 3, 4)], perm=(2, 0, 1))
case("permute_120", "permute", [N(2, 3, 4)], perm=(1, 2, 0))
case("permute_2d", "permute", [N(2, 3)], perm=(1, 0))
case("permute_4d", "permute", [N(2, 1, 3, 2)], perm=(3, 1, 0, 2))
case("broadcast_to_row", "broadcast_to", [N(3)], shape=(2, 3))
case("broadcast_to_mid", "broadcast_to", [N(2, 1, 4)], shape=(2, 3, 4))
case("broadcast_to_0d", "broadcast_to", [N()], shape=(2, 2))
case("broadcast_to_both", "broadcast_to", [N(3, 1)], shape=(2, 3, 4))
case("broadcast_to_same", "broadcast_to", [N(2, 3)], shape=(2, 3))

# Casts: f64 -> f32 rounds (values stored as exact float32 decimals); f32 -> f64 is exact.
case("cast_f64_to_f32", "cast_f32", [N(2, 3)])
case("cast_f64_to_f32_wide", "cast_f32", [V([1e-30, -3.0e20, 0.1, 1.0 / 3.0, -2.0 ** -140])])
case("cast_f32_to_f64", "cast_f64", [F32(N(2, 3))])
case("cast_f32_to_f32", "cast_f32", [F32(N(3))])
case("cast_f64_to_f64", "cast_f64", [N(3)])

# ---- the full primitive set --------------------------------------------------------------------

# pow, maximum, minimum: the broadcasting patterns; pow's base stays positive (d/db uses log a).
for tag, sa, sb in BINARY_SHAPES:
    case("pow_%s" % tag, "pow", [POS(*sa), U(-2, 2, *sb)])
    for opname in ("maximum", "minimum"):
        case("%s_%s" % (opname, tag), opname, [N(*sa), N(*sb)])
# ties share the gradient equally (positions 0, 2 and 5)
for opname in ("maximum", "minimum"):
    case("%s_ties" % opname, opname, [V([1.0, 2.0, -3.0, -1.0, 0.5, 0.0]), V([1.0, 0.0, -3.0, 2.0, -0.5, 0.0])])

# Scalar forms.
case("sub_scalar_0", "sub_scalar", [N(2, 3)], s=1.5)
case("sub_scalar_1", "sub_scalar", [N(2, 3)], s=-0.25)
case("rdiv_scalar_0", "rdiv_scalar", [NZ(2, 3)], s=2.0)
case("rdiv_scalar_1", "rdiv_scalar", [NZ(2, 3)], s=-0.75)
for tag, p, spec in (("2p5", 2.5, POS), ("m1p5", -1.5, POS), ("half", 0.5, POS), ("3", 3.0, N),
                     ("2", 2.0, N), ("1", 1.0, N), ("0", 0.0, N), ("m2", -2.0, NZ)):
    case("pow_scalar_%s" % tag, "pow_scalar", [spec(2, 3)], p=p)

# Unary functions: random inputs and a row of wide or special values.
case("sqrt_0", "sqrt", [POS(2, 3)])
case("sqrt_wide", "sqrt", [V([1e-10, 1e-3, 0.25, 2.0, 1e6])])
case("abs_0", "abs", [AWAY(2, 3)])
case("abs_zero", "abs", [V([-2.0, -0.5, 0.0, 0.5, 2.0])])  # gradient 0 at 0, as torch's sgn
case("sin_0", "sin", [N(2, 3)])
case("sin_wide", "sin", [V([-100.0, -10.0, -1e-8, 0.0, 3.0, 10.0, 100.0])])
case("cos_0", "cos", [N(2, 3)])
case("cos_wide", "cos", [V([-100.0, -10.0, -1e-8, 0.0, 3.0, 10.0, 100.0])])
case("erf_0", "erf", [N(2, 3)])
case("erf_wide", "erf", [V([-6.0, -3.0, -0.5, 0.0, 1e-8, 0.5, 3.0, 6.0])])
case("log1p_0", "log1p", [U(-0.75, 3, 2, 3)])
case("log1p_wide", "log1p", [V([-0.9990234375, -1e-10, 0.0, 1e-10, 1.0, 1e6])])
case("expm1_0", "expm1", [N(2, 3)])
case("expm1_wide", "expm1", [V([-30.0, -1e-10, 0.0, 1e-10, 1.0, 20.0])])
case("leaky_relu_0", "leaky_relu", [AWAY(3, 4)], slope=0.01)
case("leaky_relu_1", "leaky_relu", [AWAY(3, 4)], slope=0.2)
case("elu_0", "elu", [AWAY(3, 4)], alpha=1.0)
case("elu_1", "elu", [AWAY(3, 4)], alpha=0.5)
case("elu_wide", "elu", [V([-30.0, -5.0, -1e-8, 1e-8, 5.0])], alpha=1.5)
case("softplus_0", "softplus", [N(2, 3)])
case("softplus_wide", "softplus", [V([-50.0, -20.0, -1.0, 0.0, 1.0, 15.0, 19.5])])
case("gelu_0", "gelu", [N(2, 3)])
case("gelu_wide", "gelu", [V([-10.0, -4.0, -1.0, 0.0, 1.0, 4.0, 10.0])])
case("clamp_0", "clamp", [N(3, 4)], lo=-0.5, hi=0.75)
case("clamp_bounds", "clamp", [V([-0.5, 0.75, -0.5078125, 0.7578125, 0.0])], lo=-0.5, hi=0.75)  # inclusive
case("reciprocal_0", "reciprocal", [NZ(2, 3)])
case("square_0", "square", [N(2, 3)])

# NaN goes through as in PyTorch, forward and backward, so that anomaly mode can see it: relu(NaN)
# is NaN and passes the gradient on (threshold_backward zeroes only where x <= 0); maximum/minimum
# with a NaN give NaN and the whole gradient to both inputs; leaky_relu, elu, clamp and abs at NaN
# and +-inf as torch has them.
NAN, INF = float("nan"), float("inf")
EDGE = [NAN, -1.0, 0.0, 2.0, -0.0, INF, -INF]
case("relu_nan", "relu", [V(EDGE)])
case("leaky_relu_nan", "leaky_relu", [V(EDGE)], slope=0.125)
case("elu_nan", "elu", [V(EDGE)], alpha=1.5)
case("clamp_nan", "clamp", [V(EDGE)], lo=-0.5, hi=1.0)
case("abs_nan", "abs", [V(EDGE)])
case("softplus_nan", "softplus", [V([NAN, -1.0, 0.0, 2.0])])
case("sigmoid_nan", "sigmoid", [V([NAN, -1.0, 0.0, 2.0])])
case("tanh_nan", "tanh", [V([NAN, -1.0, 0.0, 2.0])])
for opname in ("maximum", "minimum"):
    case("%s_nan" % opname, opname, [V([NAN, 1.0, 2.0, NAN, -INF]), V([1.0, NAN, 2.0, NAN, 3.0])])

# where: cond c > 0 (the runner compares with nb_gt), all three broadcast.
case("where_same", "where", [NOGRAD(N(2, 3)), N(2, 3), N(2, 3)])
case("where_bcast", "where", [NOGRAD(N(2, 1, 4)), N(3, 1), N(4)])
case("where_scalar", "where", [NOGRAD(N(2, 3)), N(), N(2, 3)])
case("where_cond_bcast", "where", [NOGRAD(N(3)), N(2, 3), N(2, 1)])

# Batched matrix products, broadcast batches, vectors, transposes of batched operands.
case("matmul_batch_mat", "matmul", [N(2, 3, 4), N(4, 5)])
case("matmul_batch_batch", "matmul", [N(2, 3, 4), N(2, 4, 5)])
case("matmul_bcast_batch", "matmul", [N(2, 1, 3, 4), N(3, 4, 2)])
case("matmul_mat_batch", "matmul", [N(3, 4), N(2, 4, 5)])
case("matmul_vec_mat", "matmul", [N(4), N(4, 5)])
case("matmul_mat_vec", "matmul", [N(3, 4), N(4)])
case("matmul_vec_batch", "matmul", [N(4), N(2, 4, 5)])
case("matmul_batch_vec", "matmul", [N(2, 3, 4), N(4)])
case("matmul_dot", "matmul", [N(4), N(4)])
case("matmul_batch_tn", "matmul", [N(2, 4, 3), N(4, 5)], trans_a=1)
case("matmul_batch_nt", "matmul", [N(2, 3, 4), N(5, 4)], trans_b=1)
case("matmul_batch_nt_b", "matmul", [N(2, 3, 4), N(2, 5, 4)], trans_b=1)
case("matmul_bcast_tt", "matmul", [N(2, 1, 4, 3), N(3, 5, 4)], trans_a=1, trans_b=1)

# max / min (no ties), logsumexp, var, std over axis lists.
for opname in ("max", "min"):
    for tag, axes, keep in (("all", (), 0), ("all_k", (), 1), ("a1", (1,), 0), ("a1_k", (1,), 1),
                            ("a02", (0, 2), 0), ("a02_k", (0, 2), 1), ("am1", (-1,), 0), ("a21_k", (2, 1), 1)):
        case("%s_%s" % (opname, tag), opname, [DISTINCT(2, 3, 4)], axes=axes, keepdim=keep)
    case("%s_2d" % opname, opname, [DISTINCT(3, 5)], axes=(0,), keepdim=0)
for tag, axes, keep in (("all", (), 0), ("a1", (1,), 0), ("a1_k", (1,), 1), ("a02", (0, 2), 0),
                        ("am1_k", (-1,), 1)):
    case("logsumexp_%s" % tag, "logsumexp", [N(2, 3, 4)], axes=axes, keepdim=keep)
# Near 1e4, torch's gradient exp(x - lse) inherits the rounding of lse (an ulp of 1e4 is 1.8e-12): its
# values are off by up to 9e-13 relative, nabla's match a 50-digit computation; inside the tolerance.
case("logsumexp_big", "logsumexp", [V([1e4, 9999.0, -1e4, -1e4, -9998.0, -9999.5], (2, 3))], axes=(1,), keepdim=0)
# An empty axis: -inf (the log of an empty sum) and an empty gradient; an empty kept axis: an empty result.
case("logsumexp_empty_axis", "logsumexp", [V([], (2, 0))], axes=(1,), keepdim=0)
case("logsumexp_empty_keepdim", "logsumexp", [V([], (2, 0, 3))], axes=(1, 2), keepdim=1)
case("logsumexp_empty_all", "logsumexp", [V([], (0, 3))], axes=(), keepdim=0)
case("logsumexp_empty_kept", "logsumexp", [V([], (0, 3))], axes=(1,), keepdim=0)
for opname in ("var", "std"):
    for tag, axes, keep in (("all", (), 0), ("a1", (1,), 0), ("a02_k", (0, 2), 1), ("am1", (-1,), 0)):
        for corr in (0, 1):
            case("%s_%s_c%d" % (opname, tag, corr), opname, [N(2, 3, 4)], axes=axes, correction=corr,
                 keepdim=keep)

# Too few samples: PyTorch divides by max(0, count - correction), so an empty axis gives NaN (mean too)
# and one sample with correction 1 gives NaN (0/0), never a finite number. (Fewer samples than the
# correction give infinity: test_trust_values.c checks that forward; torch's backward there divides by
# the unclamped count - correction, so it has no fixture.)
for opname in ("var", "std"):
    for corr in (0, 1):
        case("%s_empty_c%d" % (opname, corr), opname, [V([], (0, 3))], axes=(0,), correction=corr, keepdim=0)
    case("%s_one_c1" % opname, opname, [V([5.0, -2.0], (1, 2))], axes=(0,), correction=1, keepdim=0)
case("mean_empty", "mean", [V([], (0, 3))], axes=(0,), keepdim=0)

# softmax, log_softmax along each axis, and at +-1e4.
for opname in ("softmax", "log_softmax"):
    for axis in (0, 1, 2, -1):
        case("%s_a%s" % (opname, str(axis).replace("-", "m")), opname, [N(2, 3, 4)], axis=axis)
    case("%s_big" % opname, opname, [V([1e4, 9999.0, -1e4, -1e4, -9998.0, -9999.5], (2, 3))], axis=1)

# Shape and indexing.
case("slice_step", "slice", [N(4, 6)], axis=1, start=1, stop=5, step=2)
case("slice_neg_start", "slice", [N(4, 6)], axis=0, start=-3, stop=4, step=1)
case("slice_big_stop", "slice", [N(3, 7)], axis=-1, start=0, stop=100, step=3)
case("slice_neg_both", "slice", [N(2, 5, 3)], axis=1, start=-4, stop=-1, step=2)
case("slice_empty", "slice", [N(2, 5)], axis=1, start=3, stop=1, step=1)
case("concat_a1", "concat", [N(2, 1, 3), N(2, 3, 3), N(2, 2, 3)], axis=1)
case("concat_a0", "concat", [N(1, 4), N(3, 4)], axis=0)
case("concat_am1", "concat", [N(2, 2), N(2, 3), N(2, 1)], axis=-1)
for axis in (0, 1, -1):
    case("stack_a%s" % str(axis).replace("-", "m"), "stack", [N(2, 3), N(2, 3), N(2, 3)], axis=axis)
case("split_a0", "split", [N(5, 4)], axis=0, sizes=(1, 3, 1))
case("split_empty_piece", "split", [N(5, 2)], axis=0, sizes=(2, 0, 3))
case("split_a1", "split", [N(2, 6, 2)], axis=1, sizes=(4, 2))
case("chunk_uneven", "chunk", [N(7, 2)], n=3, axis=0)
case("chunk_fewer", "chunk", [N(2, 6)], n=4, axis=1)  # size 2: three pieces
case("chunk_one", "chunk", [N(2, 3)], n=1, axis=-1)
case("squeeze_mid", "squeeze", [N(2, 1, 3)], axis=1)
case("squeeze_neg", "squeeze", [N(1, 3)], axis=-2)
case("unsqueeze_0", "unsqueeze", [N(2, 3)], axis=0)
case("unsqueeze_2", "unsqueeze", [N(2, 3)], axis=2)
case("unsqueeze_m1", "unsqueeze", [N(2, 3)], axis=-1)
case("pad_2d", "pad", [N(2, 3)], pads=(1, 0, 2, 1), value=0.5)
case("pad_3d", "pad", [N(2, 3, 2)], pads=(0, 0, 1, 1, 0, 2), value=-1.0)
case("pad_1d", "pad", [N(3)], pads=(2, 2), value=0.0)
case("index_select_rep", "index_select", [N(4, 3), I64([3, 0, 3, 1, 3])], axis=0)
case("index_select_a1", "index_select", [N(2, 3), I64([2, 2, 0])], axis=1)
case("index_select_3d", "index_select", [N(2, 3, 4), I64([1, 3, 1])], axis=-1)
case("gather_a1", "gather", [N(3, 4), I64([[3, 3], [0, 1], [2, 2]])], axis=1)
case("gather_a0", "gather", [N(3, 4), I64([[2, 0, 1, 2], [2, 2, 0, 1]])], axis=0)
case("gather_3d", "gather", [N(2, 3, 4), I64([[[0, 3, 3, 1, 2], [1, 1, 0, 0, 3]], [[2, 2, 2, 0, 1], [3, 0, 1, 2, 3]]])],
     axis=2)
case("scatter_add_a1", "scatter_add", [N(3, 2), I64([[3, 3], [0, 1], [2, 0]])], axis=1, shape=(3, 4))
case("scatter_add_a0", "scatter_add", [N(5, 3), I64([[0, 1, 3], [3, 3, 3], [1, 0, 2], [0, 0, 0], [2, 3, 1]])],
     axis=0, shape=(4, 3))

# dropout: nabla's mask for the seed, recomputed here (keep factors exact in float32).
case("dropout_half", "dropout", [N(4, 5)], p=0.5, seed=7)
case("dropout_fifth", "dropout", [N(3, 8)], p=0.2, seed=123)
# fused recurrent steps against their equations in torch
case("lstm_gates_2d", "lstm_gates", [N(3, 8), N(3, 2)])
case("lstm_gates_3d", "lstm_gates", [N(2, 3, 12), N(2, 3, 3)])
case("gru_gates_2d", "gru_gates", [N(4, 6), N(4, 6), N(4, 2)])
case("gru_gates_3d", "gru_gates", [N(2, 1, 9), N(2, 1, 9), N(2, 1, 3)])

# ---- everyday ops ------------------------------------------------------------------------------

case("flip_a1", "flip", [N(2, 3, 4)], axes=(1,))
case("flip_a02", "flip", [N(2, 3, 4)], axes=(0, -1))
case("flip_all", "flip", [N(3, 4)], axes=())
case("flip_ext1", "flip", [N(1, 4)], axes=(0,))  # reversing one element: the input itself
case("roll_pos", "roll", [N(2, 5)], shift=2, axis=1)
case("roll_neg", "roll", [N(4, 3)], shift=-1, axis=0)
case("roll_wrap", "roll", [N(2, 3, 4)], shift=11, axis=-1)  # 11 = 3 (mod 4)
case("roll_zero", "roll", [N(2, 3)], shift=6, axis=1)
case("repeat_2d", "repeat", [N(2, 3)], reps=(2, 3))
case("repeat_lead", "repeat", [N(2, 3)], reps=(2, 1, 2))
case("repeat_ones", "repeat", [N(3)], reps=(1, 1))
case("repeat_zero", "repeat", [N(2, 3)], reps=(0, 2))
case("tile_short", "tile", [N(2, 2, 3)], reps=(2,))  # the missing leading counts are 1
case("tile_long", "tile", [N(3)], reps=(2, 1, 2))
case("cumsum_a0", "cumsum", [N(3, 4)], axis=0)
case("cumsum_a1", "cumsum", [N(2, 5, 3)], axis=1)
case("cumsum_am1", "cumsum", [N(2, 3, 4)], axis=-1)
case("cumprod_a1", "cumprod", [NZ(3, 5)], axis=1)
case("cumprod_a0", "cumprod", [NZ(4, 2, 3)], axis=0)
# zeros: one, two in a row, two apart, at the start and at the end of a slice
case("cumprod_zeros", "cumprod", [V([[0.5, 0.0, 2.0, -1.5, 0.75], [1.5, -0.5, 0.0, 0.0, 2.0],
                                     [0.0, 2.0, 0.5, 0.0, -1.0], [1.25, 2.0, -0.5, 1.5, 0.0]])], axis=1)
case("cumprod_zeros_a0", "cumprod", [V([[0.5, 0.0, 2.0], [0.0, 1.5, -1.0], [2.0, 0.0, 0.0],
                                        [-1.5, 3.0, 0.5]])], axis=0)
case("sort_asc", "sort", [DISTINCT(3, 5)], axis=1, descending=0)
case("sort_desc", "sort", [DISTINCT(2, 3, 4)], axis=0, descending=1)
# ties: stable in both directions (the gradient goes back to where each value was)
case("sort_ties", "sort", [V([[1.0, -0.5, 1.0, 2.0, -0.5, 1.0], [0.0, 0.0, 0.0, 3.0, -1.0, 3.0]])], axis=1,
     descending=0)
case("sort_ties_desc", "sort", [V([[1.0, -0.5, 1.0, 2.0, -0.5, 1.0], [0.0, 0.0, 0.0, 3.0, -1.0, 3.0]])], axis=1,
     descending=1)
case("argsort_ties", "argsort", [V([[1.0, -0.5, 1.0, 2.0, -0.5, 1.0], [0.0, 0.0, 0.0, 3.0, -1.0, 3.0]])],
     axis=1, descending=0)
case("argsort_ties_desc", "argsort", [V([[1.0, -0.5, 1.0, 2.0, -0.5, 1.0], [0.0, 0.0, 0.0, 3.0, -1.0, 3.0]])],
     axis=-1, descending=1)
case("argsort_a0", "argsort", [DISTINCT(4, 3)], axis=0, descending=0)
case("argsort_i64", "argsort", [I64([[3, 1, 3, -2, 1], [0, 0, 7, -7, 0]])], axis=1, descending=1)
case("topk_largest", "topk", [DISTINCT(3, 6)], k=2, axis=1, largest=1)
case("topk_smallest", "topk", [DISTINCT(4, 3, 2)], k=3, axis=0, largest=0)
case("topk_all", "topk", [DISTINCT(2, 4)], k=4, axis=-1, largest=1)
case("topk_indices", "topk_indices", [DISTINCT(3, 6)], k=3, axis=1, largest=1)
case("masked_fill_same", "masked_fill", [N(3, 4), NOGRAD(N(3, 4))], value=-2.5)
case("masked_fill_bcast", "masked_fill", [N(2, 3, 4), NOGRAD(N(3, 1))], value=0.0)
case("masked_fill_i64mask", "masked_fill", [N(2, 3), I64([1, 0, 2])], value=7.0)
case("masked_fill_i64", "masked_fill", [I64([[5, -3, 2], [0, 9, 1]]), I64([[1, 0, 0], [0, 1, 1]])], value=-1.0)
for opname in ("triu", "tril"):
    for d in (0, 1, -1, 3, -3):
        case("%s_%s" % (opname, str(d).replace("-", "m")), opname, [N(3, 4)], diagonal=d)
    case("%s_batch" % opname, opname, [N(2, 4, 3)], diagonal=0)
case("tril_i64", "tril", [I64([[1, 2, 3], [4, 5, 6]])], diagonal=0)
EINSUM_SHAPES = {
    "ij,jk->ik": [(3, 4), (4, 5)], "ij,kj->ik": [(3, 4), (5, 4)], "ji,jk->ik": [(4, 3), (4, 5)],
    "bij,bjk->bik": [(2, 3, 4), (2, 4, 5)], "bij,bkj->bik": [(2, 3, 4), (2, 5, 4)], "i,j->ij": [(3,), (4,)],
    "i,i->": [(5,), (5,)], "ij,ij->ij": [(2, 3), (2, 3)], "ij->ji": [(2, 3)], "ij->": [(2, 3)], "ij->j": [(2, 3)],
    "ij,jk": [(3, 4), (4, 2)], "ba,ab": [(2, 3), (3, 2)], "...ij,...jk->...ik": [(2, 1, 3, 4), (3, 4, 2)],
    "bhqd,bhkd->bhqk": [(2, 2, 3, 4), (2, 2, 5, 4)], "ijk,jl->lki": [(2, 3, 4), (3, 5)],
    "ij,j->i": [(3, 4), (4,)], "ij,kl->ijkl": [(2, 3), (2, 2)], "...i,...i->...": [(2, 1, 3), (4, 3)],
    "ik,k->": [(3, 4), (1,)],  # extent 1 broadcasts: k is summed in the first operand
}
assert sorted(EINSUM_SHAPES) == sorted(EINSUM)
for i, eq in enumerate(EINSUM):
    case("einsum_%d" % i, "einsum", [N(*s) for s in EINSUM_SHAPES[eq]], eq=i, eq_check=einsum_check(eq))

# ---- integer tensors: exact values (no seed, no gradients) --------------------------------------

for opname in ("add", "sub", "mul", "maximum", "minimum"):
    case("%s_i64" % opname, opname, [IRAND(-50, 50, 2, 3), IRAND(-50, 50, 3)])
for opname in ("eq", "ne", "lt", "le", "gt", "ge"):
    case("%s_i64" % opname, opname, [IRAND(-2, 3, 3, 4), IRAND(-2, 3, 4)])
    case("%s_f64" % opname, opname, [V([0.5, -1.0, 2.0, 0.5, 3.0, -2.5]), V([0.5, 1.0, 2.0, -0.5, 3.5, -2.5])])
case("sum_i64", "sum", [IRAND(-100, 100, 2, 3, 4)], axes=(0, 2), keepdim=0)
case("sum_all_i64", "sum_all", [IRAND(-100, 100, 3, 4)])
case("max_i64", "max", [IRAND(-9, 9, 3, 5)], axes=(1,), keepdim=1)
case("min_i64", "min", [IRAND(-9, 9, 3, 5)], axes=(), keepdim=0)
case("argmax_i64", "argmax", [I64([[3, 7, 7, 1], [-2, -5, -2, -9], [0, 0, 0, 0]])], axis=1, keepdim=0)
case("argmax_f64", "argmax", [V([[0.5, 2.0, 2.0], [-1.0, -3.0, -0.5]])], axis=0, keepdim=1)
case("accuracy", "accuracy", [N(6, 4), I64([0, 1, 2, 3, 3, 1])])
case("where_i64", "where", [I64([1, 0, 2, 0]), I64([[1, 2, 3, 4], [5, 6, 7, 8]]), I64([-1, -2, -3, -4])])
case("cumsum_i64", "cumsum", [IRAND(-20, 20, 3, 4)], axis=1)
case("cumprod_i64", "cumprod", [IRAND(-4, 5, 2, 5)], axis=1)
case("sort_i64", "sort", [I64([[3, 1, 3, -2, 1], [0, 0, 7, -7, 0]])], axis=1, descending=0)
case("flip_i64", "flip", [I64([[1, 2, 3], [4, 5, 6]])], axes=(1,))
case("roll_i64", "roll", [I64([1, 2, 3, 4, 5])], shift=-2, axis=0)
case("repeat_i64", "repeat", [I64([1, 2])], reps=(2, 2))
# neg, abs and sign of integers (the reader takes |values| <= 2^53; the wrap at INT64_MIN is checked
# by test_grad_everyday.c)
I64_EDGE = [-2**53, -2**53 + 1, -7, -1, 0, 1, 7, 2**53]
case("neg_i64", "neg", [I64(I64_EDGE, (2, 4))])
case("abs_i64", "abs", [I64(I64_EDGE, (2, 4))])
case("sign_i64", "sign", [I64(I64_EDGE, (2, 4))])
case("sign_f64", "sign", [V([-2.5, -0.0, 0.0, 2.0**-100, 3.0, -2.0**100])])


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def run_case(name, opname, specs, attrs):
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    inputs = []
    for spec in specs:
        t = spec(gen).detach().clone()
        if spec.grad and t.is_floating_point():
            t.requires_grad_(True)
        inputs.append(t)
    out = OPS[opname](*inputs, **attrs)
    lines = ["case %s %s" % (name, opname)]
    lines += [fw.fmt_attr(k, v) for k, v in attrs.items()]
    lines += [fw.fmt_tensor("in%d" % i, t) for i, t in enumerate(inputs)]
    if opname in VALUE_OPS or not out.is_floating_point():
        # not differentiable: the values only
        lines += [fw.fmt_tensor("out", out.detach()), "end"]
        return lines
    if not out.requires_grad:
        raise SystemExit("case %s: output is not differentiable" % name)
    lines.append(fw.fmt_tensor("out", out))
    seed = _q(torch.randn(out.shape, generator=gen, dtype=torch.float64)).to(out.dtype)
    diff = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(out, diff, seed, allow_unused=True)
    lines.append(fw.fmt_tensor("seed", seed))
    gi = iter(grads)
    for i, t in enumerate(inputs):
        if t.requires_grad:
            g = next(gi)
            lines.append(fw.fmt_tensor("grad%d" % i, g if g is not None else torch.zeros_like(t)))
    lines.append("end")
    return lines


def generate():
    torch.set_num_threads(1)  # one summation order for reductions
    lines = fw.header("nabla op fixtures: PyTorch %s reference values, float64." % torch.__version__,
                      "gen_fixtures.py", "nabla-fixtures", FORMAT_VERSION)
    for name, opname, specs, attrs in CASES:
        lines += run_case(name, opname, specs, attrs)
    return "\n".join(lines) + "\n"


def summary(out, text):
    ops = sorted({c[1] for c in CASES})
    return "%s: %d cases, %d ops, %d bytes" % (out, len(CASES), len(ops), len(text))


if __name__ == "__main__":
    sys.exit(fw.main(__doc__, DEFAULT_OUT, generate, summary))
