#!/usr/bin/python3
"""PyTorch reference fixtures for nabla's convolutional-network ops and layers.

Run by hand with Debian's python and its torch (python3-torch), from anywhere:

    /usr/bin/python3 tests/gen_cnn_fixtures.py          # (re)write the two files below
    /usr/bin/python3 tests/gen_cnn_fixtures.py --check  # exit 1 if they are not what this script makes

tests/fixtures/cnn_ops_f64.txt holds op cases in the format of tests/gen_fixtures.py (read by
tests/test_fixtures.c with ops_f64.txt: float64 to 1e-12, then a float32 pass to 1e-5); the ops are
defined here, added to gen_fixtures.py's table, and each case runs through its run_case.

tests/fixtures/cnn_nn_f64.txt holds layer cases in the format of tests/gen_nn_fixtures.py (read by
tests/test_nn_fixtures.c with nn_f64.txt), with two more roles for the layers' buffers:
    buffer:<name>   a buffer's value before the case runs (running_mean, num_batches_tracked, ...)
    after:<name>    its value after the case ran: compared with nabla's, not differentiated
A batch-norm case runs `steps` training forwards on in:x0, in:x1, ... (the running statistics move at
each), keeps the last one's output as out:y, then one evaluation forward on in:x_eval as out:y_eval;
the differentiated scalar is sum(y seed_y) + sum(y_eval seed_y_eval) as in every nn case.

Attributes of the op cases: stride, padding, dilation, output_padding (one value per spatial dim),
groups, same (1: padding='same'); pools: kernel, stride, padding, dilation, ceil_mode,
count_include_pad; adaptive pools: size. Layer cases name their parameters as nabla does (conv.weight,
bn.running_mean, gn.bias, ...), which are torch's names under the module's prefix.
"""

import argparse
import os
import sys
import warnings
import zlib

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # fixture_writer.py and gen_fixtures.py, beside this file
import fixture_writer as fw  # noqa: E402
import gen_fixtures as gf  # noqa: E402

OPS_OUT = os.path.join(HERE, "fixtures", "cnn_ops_f64.txt")
NN_OUT = os.path.join(HERE, "fixtures", "cnn_nn_f64.txt")
F64 = torch.float64
warnings.filterwarnings("ignore", message="Using padding='same'")  # torch's note on its own padded copy

# ----------------------------------------------------------------------------------------------
# Ops (registered in gen_fixtures' table, so that its run_case runs them)
# ----------------------------------------------------------------------------------------------


def _pad(padding, same):
    return "same" if same else tuple(padding)


@gf.op("conv2d")  # in0 x, in1 weight, in2 bias (optional)
def _conv2d(x, w, *b, stride, padding, dilation, groups, same=0):
    return F.conv2d(x, w, b[0] if b else None, tuple(stride), _pad(padding, same), tuple(dilation), groups)


@gf.op("conv1d")
def _conv1d(x, w, *b, stride, padding, dilation, groups, same=0):
    return F.conv1d(x, w, b[0] if b else None, tuple(stride), _pad(padding, same), tuple(dilation), groups)


@gf.op("conv_transpose2d")
def _conv_transpose2d(x, w, *b, stride, padding, dilation, groups, output_padding):
    return F.conv_transpose2d(x, w, b[0] if b else None, tuple(stride), tuple(padding), tuple(output_padding),
                              groups, tuple(dilation))


@gf.op("conv_transpose1d")
def _conv_transpose1d(x, w, *b, stride, padding, dilation, groups, output_padding):
    return F.conv_transpose1d(x, w, b[0] if b else None, tuple(stride), tuple(padding), tuple(output_padding),
                              groups, tuple(dilation))


@gf.op("conv2d_weight")  # in0 x, in1 the gradient of the output; attribute kernel (kh, kw)
def _conv2d_weight(x, g, kernel, stride, padding, dilation, groups):
    # d<g, conv2d(x, w)>/dw, with the graph kept so that it is differentiable in x and g again
    w = torch.zeros(g.shape[1], x.shape[1] // groups, *kernel, dtype=x.dtype, requires_grad=True)
    y = F.conv2d(x, w, None, tuple(stride), tuple(padding), tuple(dilation), groups)
    return torch.autograd.grad(y, w, g, create_graph=True)[0]


@gf.op("max_pool2d")
def _max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
    return F.max_pool2d(x, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), bool(ceil_mode))


@gf.op("max_pool1d")
def _max_pool1d(x, kernel, stride, padding, dilation, ceil_mode):
    return F.max_pool1d(x, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), bool(ceil_mode))


@gf.op("avg_pool2d")
def _avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    return F.avg_pool2d(x, tuple(kernel), tuple(stride), tuple(padding), bool(ceil_mode), bool(count_include_pad))


@gf.op("avg_pool1d")
def _avg_pool1d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    return F.avg_pool1d(x, tuple(kernel), tuple(stride), tuple(padding), bool(ceil_mode), bool(count_include_pad))


@gf.op("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(x, size):
    return F.adaptive_avg_pool2d(x, tuple(size))


@gf.op("adaptive_avg_pool1d")
def _adaptive_avg_pool1d(x, size):
    return F.adaptive_avg_pool1d(x, tuple(size))


def _not_channel(x):
    return tuple(d for d in range(x.dim()) if d != 1)


@gf.op("channel_moments")  # [2, C]: mean and biased variance over every dim but 1
def _channel_moments(x):
    var, mean = torch.var_mean(x, dim=_not_channel(x), unbiased=False)
    return torch.stack([mean, var])


@gf.op("channel_norm")  # in0 x, in1 stats [2, C], in2 weight, in3 bias: the formula, differentiable in all
def _channel_norm(x, st, w, b, eps):
    shape = [1, -1] + [1] * (x.dim() - 2)
    m, v = st[0].reshape(shape), st[1].reshape(shape)
    return (x - m) / torch.sqrt(v + eps) * w.reshape(shape) + b.reshape(shape)


@gf.op("batch_norm_train")  # F.batch_norm in training mode: nabla's nb_batch_norm_train
def _batch_norm_train(x, w, b, eps):
    return F.batch_norm(x, None, None, w, b, True, 0.1, eps)


gf.OPS["batch_norm_composed"] = _batch_norm_train  # and as norm(x, moments(x))


@gf.op("batch_norm_relu_max_pool2d")  # nabla's fused op: max pooling (stride = kernel) of relu(batch norm)
def _batch_norm_relu_max_pool2d(x, w, b, eps, kernel):
    return F.max_pool2d(F.relu(F.batch_norm(x, None, None, w, b, True, 0.1, eps)), kernel)


@gf.op("batch_norm_eval")  # in1, in2: running mean and variance (constants)
def _batch_norm_eval(x, rm, rv, w, b, eps):
    return F.batch_norm(x, rm, rv, w, b, False, 0.1, eps)


# ----------------------------------------------------------------------------------------------
# Op cases
# ----------------------------------------------------------------------------------------------

N, U, POS, DISTINCT, NOGRAD = gf.N, gf.U, gf.POS, gf.DISTINCT, gf.NOGRAD
OP_CASES = []


def case(name, opname, inputs, **attrs):
    assert opname in gf.OPS, opname
    assert all(c[0] != name for c in OP_CASES), "duplicate case " + name
    OP_CASES.append((name, opname, inputs, attrs))


def conv_case(name, dims, n, c, o, sp, k, stride=1, padding=0, dilation=1, groups=1, same=0, bias=True):
    rep = lambda v: [v] * dims if isinstance(v, int) else list(v)  # noqa: E731
    ins = [N(n, c, *sp), U(-0.5, 0.5, o, c // groups, *k)] + ([N(o)] if bias else [])
    attrs = dict(stride=rep(stride), padding=rep(padding), dilation=rep(dilation), groups=groups)
    if same:
        attrs["same"] = 1
    case(name, "conv%dd" % dims, ins, **attrs)


conv_case("conv2d_plain", 2, 2, 3, 4, (5, 6), (3, 3))
conv_case("conv2d_no_bias_stride2_pad1", 2, 1, 2, 3, (7, 6), (3, 2), stride=2, padding=1, bias=False)
conv_case("conv2d_stride_3_1_pad_2_0", 2, 2, 2, 2, (8, 5), (3, 3), stride=(3, 1), padding=(2, 0))
conv_case("conv2d_dilation2_pad2", 2, 2, 2, 3, (7, 7), (3, 3), padding=2, dilation=2)
conv_case("conv2d_groups2", 2, 2, 4, 6, (5, 5), (3, 3), padding=1, groups=2)
conv_case("conv2d_depthwise", 2, 3, 3, 6, (5, 4), (3, 3), stride=2, padding=1, groups=3)
conv_case("conv2d_same_odd", 2, 2, 2, 3, (5, 6), (3, 3), same=1)
conv_case("conv2d_same_even_dilated", 2, 1, 2, 2, (6, 5), (2, 4), dilation=(2, 1), same=1)
conv_case("conv2d_1x1", 2, 2, 3, 4, (8, 9), (1, 1))
conv_case("conv2d_wide_rows", 2, 2, 2, 3, (4, 20), (3, 3), padding=1)
conv_case("conv1d_plain", 1, 2, 3, 4, (9,), (3,))
conv_case("conv1d_stride2_pad1_dil2", 1, 3, 2, 2, (11,), (3,), stride=2, padding=1, dilation=2)
conv_case("conv1d_groups2_same", 1, 2, 4, 2, (8,), (4,), groups=2, same=1)


def convt_case(name, dims, n, c, o, sp, k, stride=1, padding=0, dilation=1, groups=1, output_padding=0, bias=True):
    rep = lambda v: [v] * dims if isinstance(v, int) else list(v)  # noqa: E731
    ins = [N(n, c, *sp), U(-0.5, 0.5, c, o // groups, *k)] + ([N(o)] if bias else [])
    case(name, "conv_transpose%dd" % dims, ins, stride=rep(stride), padding=rep(padding), dilation=rep(dilation),
         groups=groups, output_padding=rep(output_padding))


convt_case("conv_transpose2d_plain", 2, 2, 3, 2, (4, 5), (3, 3))
convt_case("conv_transpose2d_stride2_outpad", 2, 2, 2, 3, (4, 3), (3, 3), stride=2, padding=1, output_padding=1)
convt_case("conv_transpose2d_groups_dilation", 2, 1, 4, 2, (3, 4), (2, 3), stride=(1, 2), dilation=2, groups=2,
           output_padding=(1, 1), bias=False)
convt_case("conv_transpose1d_stride3", 1, 2, 2, 3, (5,), (4,), stride=3, padding=1, output_padding=2)
case("conv2d_weight_plain", "conv2d_weight", [N(2, 3, 5, 5), N(2, 4, 3, 3)], kernel=[3, 3], stride=[1, 1],
     padding=[0, 0], dilation=[1, 1], groups=1)
case("conv2d_weight_strided_groups", "conv2d_weight", [N(2, 4, 7, 6), N(2, 2, 4, 2)], kernel=[3, 2], stride=[2, 2],
     padding=[1, 0], dilation=[1, 2], groups=2)


def pool_case(name, kind, dims, n, c, sp, kernel, stride=0, padding=0, dilation=1, ceil_mode=0, count_include_pad=1):
    rep = lambda v: [v] * dims if isinstance(v, int) else list(v)  # noqa: E731
    x = DISTINCT(n, c, *sp) if kind == "max" else N(n, c, *sp)  # no ties for the maxima
    attrs = dict(kernel=rep(kernel), stride=rep(stride) if stride else rep(kernel), padding=rep(padding),
                 ceil_mode=ceil_mode)
    if kind == "max":
        attrs["dilation"] = rep(dilation)
    else:
        attrs["count_include_pad"] = count_include_pad
    case(name, "%s_pool%dd" % (kind, dims), [x], **attrs)


pool_case("max_pool2d_2x2", "max", 2, 2, 3, (4, 6), 2)
pool_case("max_pool2d_3x3_s2_p1", "max", 2, 2, 2, (7, 6), 3, stride=2, padding=1)
pool_case("max_pool2d_ceil_dilated", "max", 2, 1, 2, (7, 5), (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1),
          ceil_mode=1)
pool_case("max_pool2d_ceil_odd", "max", 2, 2, 2, (5, 5), 2, ceil_mode=1)
pool_case("max_pool1d_3_s2_p1", "max", 1, 2, 3, (9,), 3, stride=2, padding=1)
pool_case("max_pool1d_ceil_dil2", "max", 1, 1, 2, (8,), 2, dilation=2, ceil_mode=1)
pool_case("avg_pool2d_2x2", "avg", 2, 2, 3, (4, 6), 2)
pool_case("avg_pool2d_3x3_s2_p1", "avg", 2, 2, 2, (7, 6), 3, stride=2, padding=1)
pool_case("avg_pool2d_exclude_pad", "avg", 2, 2, 2, (7, 6), 3, stride=2, padding=1, count_include_pad=0)
pool_case("avg_pool2d_ceil", "avg", 2, 1, 2, (8, 7), (3, 2), stride=3, padding=1, ceil_mode=1)
pool_case("avg_pool2d_ceil_exclude_pad", "avg", 2, 2, 1, (6, 6), 3, stride=2, padding=1, ceil_mode=1,
          count_include_pad=0)
pool_case("avg_pool1d_3_s2_p1", "avg", 1, 2, 3, (9,), 3, stride=2, padding=1)
pool_case("avg_pool1d_ceil", "avg", 1, 1, 2, (10,), 4, stride=3, ceil_mode=1)
case("adaptive_avg_pool2d_2x3", "adaptive_avg_pool2d", [N(2, 2, 5, 7)], size=[2, 3])
case("adaptive_avg_pool2d_global", "adaptive_avg_pool2d", [N(2, 3, 4, 5)], size=[1, 1])
case("adaptive_avg_pool2d_up", "adaptive_avg_pool2d", [N(1, 2, 3, 3)], size=[5, 4])
case("adaptive_avg_pool1d_7to3", "adaptive_avg_pool1d", [N(2, 2, 7)], size=[3])

case("channel_moments_4d", "channel_moments", [N(3, 4, 2, 3)])
case("channel_moments_2d", "channel_moments", [N(5, 3)])
case("channel_norm_4d", "channel_norm", [N(2, 3, 2, 3), U(0.5, 2.0, 2, 3), N(3), N(3)], eps=1e-3)
case("channel_norm_3d", "channel_norm", [N(3, 2, 4), U(0.5, 2.0, 2, 2), N(2), N(2)], eps=1e-5)
case("batch_norm_train_4d", "batch_norm_train", [N(3, 4, 3, 2), N(4), N(4)], eps=1e-5)
case("batch_norm_train_2d", "batch_norm_train", [N(6, 3), N(3), N(3)], eps=1e-3)
case("batch_norm_composed_4d", "batch_norm_composed", [N(3, 4, 3, 2), N(4), N(4)], eps=1e-5)
case("batch_norm_composed_3d", "batch_norm_composed", [N(2, 3, 5), N(3), N(3)], eps=1e-3)
case("batch_norm_relu_max_pool2d_2x2", "batch_norm_relu_max_pool2d", [N(3, 4, 6, 6), N(4), N(4)], eps=1e-5,
     kernel=[2, 2])
case("batch_norm_relu_max_pool2d_3x2_odd", "batch_norm_relu_max_pool2d", [N(2, 3, 7, 5), N(3), N(3)], eps=1e-3,
     kernel=[3, 2])
case("batch_norm_eval_4d", "batch_norm_eval", [N(2, 3, 3, 3), NOGRAD(N(3)), NOGRAD(POS(3)), N(3), N(3)], eps=1e-5)
case("batch_norm_eval_3d", "batch_norm_eval", [N(3, 2, 5), NOGRAD(N(2)), NOGRAD(POS(2)), N(2), N(2)], eps=1e-3)

# edge geometries (review of the merge): a kernel that fills the padded input exactly, strides longer
# than the kernel (skipped positions), output_padding at least the stride but below the dilation, and
# ceil_mode windows that would start in the right padding (torch drops them)
conv_case("conv2d_kernel_fills_padded_input", 2, 1, 2, 2, (3, 2), (5, 4), padding=1)
conv_case("conv2d_stride_beyond_kernel", 2, 2, 2, 3, (9, 8), (2, 2), stride=(4, 3))
conv_case("conv1d_kernel_equals_input", 1, 2, 3, 2, (4,), (4,))
convt_case("conv_transpose2d_outpad_below_dilation", 2, 1, 2, 2, (3, 3), (2, 2), dilation=2, output_padding=1)
convt_case("conv_transpose1d_groups3_stride2", 1, 2, 3, 6, (4,), (3,), stride=2, padding=2, groups=3,
           output_padding=1)
pool_case("max_pool2d_ceil_drops_last", "max", 2, 1, 2, (5, 5), 2, stride=2, padding=1, ceil_mode=1)
pool_case("avg_pool2d_ceil_drops_last", "avg", 2, 1, 2, (5, 5), 2, stride=2, padding=1, ceil_mode=1)
pool_case("avg_pool1d_ceil_drops_last_exclude_pad", "avg", 1, 2, 1, (7,), 2, stride=3, padding=1, ceil_mode=1,
          count_include_pad=0)
pool_case("max_pool1d_stride_beyond_kernel", "max", 1, 1, 2, (11,), 2, stride=4, padding=1, ceil_mode=1)
case("adaptive_avg_pool1d_3to5", "adaptive_avg_pool1d", [N(1, 2, 3)], size=[5])
# a tap whose first input column lies past a narrow output row (im2col zeroed the next image's columns)
conv_case("conv2d_taps_past_the_row", 2, 2, 4, 2, (6, 6), (2, 4), stride=(2, 1), padding=(0, 2), dilation=(2, 3),
          groups=2)

# ----------------------------------------------------------------------------------------------
# Layer cases (format of gen_nn_fixtures.py, plus buffer: and after:)
# ----------------------------------------------------------------------------------------------

Q = 2.0 ** -8


def q(x):
    return torch.round(x / Q) * Q


class Case:
    def __init__(self, name, layer):
        self.name, self.layer = name, layer
        self.gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        self.attrs, self.params, self.buffers, self.inputs, self.outputs = [], [], [], [], []

    def randn(self, *shape, scale=1.0):
        return q(scale * torch.randn(shape, generator=self.gen, dtype=F64))

    def module(self, prefix, m):
        """Every parameter and buffer of torch module m, under nabla's name prefix.name."""
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(self.randn(*p.shape, scale=0.5) + (1.0 if n == "weight" and p.dim() == 1 else 0.0))
                self.params.append((prefix + "." + n, p))
            for n, b in m.named_buffers():
                if b.dtype == torch.int64:
                    b.fill_(2)
                elif n == "running_var":
                    b.copy_(q(0.5 + torch.rand(b.shape, generator=self.gen, dtype=F64)))
                else:
                    b.copy_(self.randn(*b.shape, scale=0.5))
                self.buffers.append((prefix + "." + n, b, b.detach().clone()))

    def input(self, name, value, grad=True):
        t = value.detach().clone().requires_grad_(grad)
        self.inputs.append((name, t))
        return t


NN_CASES = []


def nn_case(fn):
    def add(name, layer, **kw):
        assert all(c[0] != name for c in NN_CASES), "duplicate case " + name
        NN_CASES.append((name, layer, fn, kw))
    return add


@nn_case
def batch_norm(c, dims, shape, steps=3, eps=1e-5, momentum=0.1, affine=True, track=True):
    C = shape[1]
    for k, v in (("dims", dims), ("features", C), ("eps", eps), ("momentum", -1.0 if momentum is None else momentum),
                 ("steps", steps), ("affine", int(affine)), ("track", int(track))):
        c.attrs.append((k, v))
    cls = torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm1d
    m = cls(C, eps=eps, momentum=momentum, affine=affine, track_running_stats=track, dtype=F64)
    c.module("bn", m)
    m.train()
    for k in range(steps):
        # batches of their own centre and spread: the running statistics move
        x = c.input("x%d" % k, c.randn(*shape, scale=1.0 + 0.5 * k) + 0.25 * k, grad=k == steps - 1)
        y = m(x)
    c.outputs.append(("y", y))
    m.eval()
    c.outputs.append(("y_eval", m(c.input("x_eval", c.randn(*shape)))))


@nn_case
def group_norm(c, shape, groups, eps=1e-5, affine=True):
    for k, v in (("groups", groups), ("channels", shape[1]), ("eps", eps), ("affine", int(affine))):
        c.attrs.append((k, v))
    m = torch.nn.GroupNorm(groups, shape[1], eps=eps, affine=affine, dtype=F64)
    c.module("gn", m)
    c.outputs.append(("y", m(c.input("x", c.randn(*shape, scale=2.0) + 0.5))))


@nn_case
def conv(c, dims, shape, out, kernel, stride=1, padding=0, dilation=1, groups=1, bias=True):
    rep = lambda v: [v] * dims if isinstance(v, int) else list(v)  # noqa: E731
    for k, v in (("dims", dims), ("in", shape[1]), ("out", out), ("kernel", rep(kernel)), ("stride", rep(stride)),
                 ("padding", rep(padding)), ("dilation", rep(dilation)), ("groups", groups), ("bias", int(bias))):
        c.attrs.append((k, v))
    cls = torch.nn.Conv2d if dims == 2 else torch.nn.Conv1d
    m = cls(shape[1], out, kernel, stride, padding, dilation, groups, bias, dtype=F64)
    c.module("conv", m)
    c.outputs.append(("y", m(c.input("x", c.randn(*shape)))))


batch_norm("bn2d_three_steps", "batch_norm", dims=2, shape=(4, 3, 3, 5))
batch_norm("bn2d_momentum_0p3_eps", "batch_norm", dims=2, shape=(2, 2, 4, 3), momentum=0.3, eps=1e-3, steps=4)
batch_norm("bn2d_cumulative", "batch_norm", dims=2, shape=(3, 2, 2, 3), momentum=None)
batch_norm("bn2d_no_affine", "batch_norm", dims=2, shape=(2, 3, 3, 3), affine=False)
batch_norm("bn2d_no_running_stats", "batch_norm", dims=2, shape=(3, 2, 3, 2), track=False, steps=2)
batch_norm("bn1d_2d_input", "batch_norm", dims=1, shape=(6, 4))
batch_norm("bn1d_3d_input", "batch_norm", dims=1, shape=(3, 2, 5), steps=2)
group_norm("gn_three_groups", "group_norm", shape=(2, 6, 3, 2), groups=3)
group_norm("gn_one_group", "group_norm", shape=(3, 4, 5), groups=1, eps=1e-3)
group_norm("gn_instance", "group_norm", shape=(2, 3, 2, 3), groups=3, affine=False)
conv("conv2d_layer", "conv", dims=2, shape=(2, 4, 6, 5), out=6, kernel=3, stride=2, padding=1, groups=2)
conv("conv2d_layer_no_bias", "conv", dims=2, shape=(1, 2, 5, 5), out=3, kernel=(2, 3), dilation=(2, 1), bias=False)
conv("conv1d_layer", "conv", dims=1, shape=(2, 3, 9), out=4, kernel=3, padding=1)


def run_nn_case(name, layer, fn, kw):
    c = Case(name, layer)
    fn(c, **kw)
    seeds = [c.randn(*o.shape) for _, o in c.outputs]
    total = sum((o * s).sum() for (_, o), s in zip(c.outputs, seeds))
    leaves = [p for _, p in c.params] + [t for _, t in c.inputs if t.requires_grad]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, leaves)]
    lines = ["case %s %s" % (name, layer)]
    lines += [fw.fmt_attr(k, v) for k, v in c.attrs]
    lines += [fw.fmt_tensor("param:" + n, p) for n, p in c.params]
    lines += [fw.fmt_tensor("buffer:" + n, before) for n, _, before in c.buffers]
    lines += [fw.fmt_tensor("in:" + n, t) for n, t in c.inputs]
    for (n, o), s in zip(c.outputs, seeds):
        lines.append(fw.fmt_tensor("out:" + n, o))
        lines.append(fw.fmt_tensor("seed:" + n, s))
    names = [n for n, _ in c.params] + [n for n, t in c.inputs if t.requires_grad]
    lines += [fw.fmt_tensor("grad:" + n, g) for n, g in zip(names, grads)]
    lines += [fw.fmt_tensor("after:" + n, b) for n, b, _ in c.buffers]
    lines.append("end")
    return lines


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def generate_ops():
    torch.set_num_threads(1)
    lines = fw.header("nabla convolutional-network op fixtures: PyTorch %s reference values, float64."
                      % torch.__version__, "gen_cnn_fixtures.py", "nabla-fixtures", gf.FORMAT_VERSION)
    for name, opname, specs, attrs in OP_CASES:
        lines += gf.run_case(name, opname, specs, attrs)
    return "\n".join(lines) + "\n"


def generate_nn():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    lines = fw.header("nabla convolutional-network layer fixtures: PyTorch %s reference values, float64."
                      % torch.__version__, "gen_cnn_fixtures.py", "nabla-nn-fixtures", 1)
    for name, layer, fn, kw in NN_CASES:
        lines += run_nn_case(name, layer, fn, kw)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing")
    args = ap.parse_args()
    status = 0
    for path, text, n in ((OPS_OUT, generate_ops(), len(OP_CASES)), (NN_OUT, generate_nn(), len(NN_CASES))):
        if args.check:
            with open(path) as f:
                same = f.read() == text
            print("%s: %s" % (path, "up to date" if same else "differs from the generator"))
            status |= 0 if same else 1
        else:
            with open(path, "w") as f:
                f.write(text)
            print("%s: %d cases, %d bytes" % (path, n, len(text)))
    return status


if __name__ == "__main__":
    sys.exit(main())
