#!/usr/bin/python3
"""PyTorch reference fixtures for nabla's neural-network layer (src/nn/).

Run by hand with Debian's python and its torch (python3-torch), from anywhere:

    /usr/bin/python3 tests/gen_nn_fixtures.py            # (re)write tests/fixtures/nn_f64.txt
    /usr/bin/python3 tests/gen_nn_fixtures.py --check    # exit 1 if the file is not what this script makes

tests/test_nn_fixtures.c reads the file, builds the same nabla layer in float64, copies the fixture's
parameters into it, runs the forward pass and one nb_backward, and compares every output and the
gradient of every parameter and input.

File format (ASCII, one record per line, tokens separated by single spaces). The line syntax is that
of tests/gen_fixtures.py (ops_f64.txt); only the header and the roles differ.
-------------------------------------------------------------------------------------------------
    # anything                          a comment (also blank lines): ignored
    nabla-nn-fixtures 1                 the first non-comment line: format name and version
    case <name> <layer>                 starts a case; <name> is unique, <layer> names a runner in the
                                        C dispatch table (test_nn_fixtures.c) and a builder in LAYERS
    attr <key> [<number> ...]           an attribute: zero or more numbers (ints without a point)
    tensor <role> <dtype> <ndim> <dim>... <value>...
                                        dtype f64 or i64; ndim 0..8; ndim extents; then exactly
                                        prod(extents) values (1 for ndim 0) in row-major order
    end                                 ends the case

Roles are <kind>:<name>:
    param:<nabla name>   a parameter, under the name nabla gives it ("rnn.weight_ih_l0",
                         "mha.q_proj.weight", ...). Every parameter of the nabla layer has exactly one.
    in:<name>            an input of the forward call ("x", "h0", "labels", ...); i64 or marked
                         without a grad line: held constant
    out:<name>           an output ("y", "h_n", "c_n", "loss")
    seed:<name>          one per output, same shape: the weights of the scalar that is differentiated,
                             L = sum over outputs o of sum(o * seed:o)
    grad:<name>          dL/d(param or input <name>), from torch.autograd; present exactly for the
                         parameters and for the inputs that are differentiated

Values are Python's repr of the float64 value, which round-trips exactly through C's strtod. Inputs,
parameters and seeds are rounded to multiples of 2^-8 (short in the file); outputs and gradients keep
full float64 precision.

Name mapping (nabla <- torch)
-------------------------------------------------------------------------------------------------
    RNN/LSTM/GRU     rnn.weight_ih_l0 ... <- the module's own names (nabla uses PyTorch's, also the
                     reverse direction's rnn.weight_ih_l0_reverse ...); h0/c0 are torch's hx; with
                     lengths, torch runs a PackedSequence (enforce_sorted=False) and pads the output
                     with zeros; nabla takes lengths directly; attr bidirectional 1 when present
    MultiheadAttention  mha.{q,k,v}_proj.{weight,bias} <- rows [0:E], [E:2E], [2:E:3E] of
                     in_proj_weight / in_proj_bias; mha.out_proj.* <- out_proj.*. The key padding
                     mask is stored in nabla's convention (1 = real key, 0 = padding) and given to
                     torch as key_padding_mask = (mask == 0) (True = ignore); causal = 1 is torch's
                     attn_mask = triu(ones, diagonal=1) (True = not allowed)
    LayerNorm, Linear   ln.weight/ln.bias, lin.weight/lin.bias <- weight/bias
    Embedding        emb.weight <- weight; attr padding_idx (present: used, torch's value, may be
                     negative)
    Losses           attr reduction: nabla's nb_reduction numbering, 0 mean, 1 sum, 2 none,
                     3 batchmean (kl_div); attr ignore_index (present: used); attr label_smoothing;
                     in:weight (class weights, or bce's per-element weight), in:pos_weight; float
                     in:labels are probability targets; attr beta (smooth_l1), delta (huber),
                     log_target (kl_div)
"""

import math
import os
import sys
import warnings
import zlib

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fixture_writer.py, beside this file
import fixture_writer as fw  # noqa: E402

FORMAT_VERSION = 1
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures", "nn_f64.txt")
F64 = torch.float64
Q = 2.0 ** -8
REDUCTIONS = {"mean": 0, "sum": 1, "none": 2, "batchmean": 3}  # nabla's nb_reduction values


def q(x):
    return torch.round(x / Q) * Q


def randn(g, *shape, scale=1.0):
    return q(scale * torch.randn(shape, generator=g, dtype=F64))


def uniform(g, lo, hi, *shape):
    return q(lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64))


class Case:
    """Collects the tensors of one case in a fixed order."""

    def __init__(self, name, layer):
        assert name.replace("_", "").isalnum(), name
        self.name, self.layer = name, layer
        self.gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        self.attrs = []
        self.params = []  # (nabla name, torch leaf, rows of it or None)
        self.inputs = []  # (name, tensor): those requiring grad are differentiated
        self.outputs = []

    def attr(self, key, *values):
        self.attrs.append((key, values))

    def param(self, name, leaf, rows=None):
        """nabla parameter `name` is leaf (a torch parameter), or its rows [rows[0], rows[1])."""
        self.params.append((name, leaf, rows))

    def input(self, name, value, grad=True):
        t = value.detach().clone()
        if grad and t.is_floating_point():
            t.requires_grad_(True)
        self.inputs.append((name, t))
        return t

    def output(self, name, value):
        self.outputs.append((name, value))


def leaf(value):
    return value.detach().clone().requires_grad_(True)


def set_param(p, value):
    with torch.no_grad():
        p.copy_(value)


# ----------------------------------------------------------------------------------------------
# Layer builders: each fills a Case (params and inputs created through it, outputs recorded)
# ----------------------------------------------------------------------------------------------

CASES = []


def case(fn):
    """Register a builder call: case(fn)(name, layer, **kw)."""
    def add(name, layer, **kw):
        assert all(c[0] != name for c in CASES), "duplicate case " + name
        CASES.append((name, layer, fn, kw))
    return add


T, B, I, H, L = 5, 3, 4, 6, 2
RNN_MODULES = {"rnn_tanh": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


@case
def rnn(c, kind, batch_first=False, lengths=None, bidirectional=False):
    g = c.gen
    d = 2 if bidirectional else 1
    mod = RNN_MODULES[kind](I, H, num_layers=L, batch_first=batch_first, bidirectional=bidirectional, dtype=F64)
    c.attr("layers", L)
    c.attr("input", I)
    c.attr("hidden", H)
    c.attr("batch_first", int(batch_first))
    if bidirectional:
        c.attr("bidirectional", 1)
    if lengths is not None:
        c.attr("lengths", *lengths)
    k = 1.0 / math.sqrt(H)
    # torch's names are nabla's; the fixture's values replace torch's own initialisation
    for pname, p in mod.named_parameters():
        set_param(p, uniform(g, -k, k, *p.shape))
        c.param("rnn." + pname, p)
    x = c.input("x", randn(g, B, T, I) if batch_first else randn(g, T, B, I))
    h0 = c.input("h0", randn(g, L * d, B, H, scale=0.5))
    hx = h0
    if kind == "lstm":
        hx = (h0, c.input("c0", randn(g, L * d, B, H, scale=0.5)))
    if lengths is None:
        out, hn = mod(x, hx)
    else:
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        out, hn = mod(packed, hx)  # hx and h_n in the original batch order
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)  # zeros past each end
    c.output("y", out)
    if kind == "lstm":
        c.output("h_n", hn[0])
        c.output("c_n", hn[1])
    else:
        c.output("h_n", hn)


E, HEADS = 8, 2


@case
def mha(c, tq, tk, keypad=None, causal=False):
    g = c.gen
    b = 2
    mod = torch.nn.MultiheadAttention(E, HEADS, batch_first=True, dtype=F64)
    c.attr("embed", E)
    c.attr("heads", HEADS)
    c.attr("causal", int(causal))
    # random biases too (torch starts them at zero), so that their gradients are tested
    set_param(mod.in_proj_weight, uniform(g, -0.5, 0.5, 3 * E, E))
    set_param(mod.in_proj_bias, uniform(g, -0.5, 0.5, 3 * E))
    set_param(mod.out_proj.weight, uniform(g, -0.5, 0.5, E, E))
    set_param(mod.out_proj.bias, uniform(g, -0.5, 0.5, E))
    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):  # torch's stacked [3E, E]: q, k, v rows
        c.param("mha.%s.weight" % proj, mod.in_proj_weight, (i * E, (i + 1) * E))
        c.param("mha.%s.bias" % proj, mod.in_proj_bias, (i * E, (i + 1) * E))
    c.param("mha.out_proj.weight", mod.out_proj.weight)
    c.param("mha.out_proj.bias", mod.out_proj.bias)
    xq = c.input("q", randn(g, b, tq, E))
    xk = c.input("k", randn(g, b, tk, E))
    xv = c.input("v", randn(g, b, tk, E))
    kpm = None
    if keypad is not None:
        keep = torch.ones(b, tk, dtype=F64)
        for bi, pads in enumerate(keypad):
            for j in pads:
                keep[bi, j] = 0.0
        c.input("key_padding", keep, grad=False)
        kpm = keep == 0  # torch: True = ignore
    am = torch.triu(torch.ones(tq, tk, dtype=torch.bool), diagonal=1) if causal else None
    out, _ = mod(xq, xk, xv, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    c.output("y", out)


@case
def layer_norm(c, shape, eps=1e-5):
    g = c.gen
    d = shape[-1]
    c.attr("dim", d)
    c.attr("eps", eps)
    w = leaf(1.0 + randn(g, d, scale=0.3))
    bias = leaf(randn(g, d, scale=0.3))
    c.param("ln.weight", w)
    c.param("ln.bias", bias)
    x = c.input("x", randn(g, *shape, scale=2.0) + 0.5)
    c.output("y", F.layer_norm(x, (d,), w, bias, eps))


@case
def linear(c, shape, out_features, bias=True):
    g = c.gen
    fin = shape[-1]
    k = 1.0 / math.sqrt(fin)
    c.attr("in", fin)
    c.attr("out", out_features)
    c.attr("bias", int(bias))
    w = leaf(uniform(g, -k, k, out_features, fin))
    c.param("lin.weight", w)
    b = None
    if bias:
        b = leaf(uniform(g, -k, k, out_features))
        c.param("lin.bias", b)
    x = c.input("x", randn(g, *shape))
    c.output("y", F.linear(x, w, b))


@case
def embedding(c, num, dim, idx, padding_idx=None):
    g = c.gen
    c.attr("num", num)
    c.attr("dim", dim)
    if padding_idx is not None:
        c.attr("padding_idx", padding_idx)
    mod = torch.nn.Embedding(num, dim, padding_idx=padding_idx, dtype=F64)
    # every row random, the padding row too: lookups return it, and its gradient must still be 0
    set_param(mod.weight, randn(g, num, dim))
    c.param("emb.weight", mod.weight)
    i = c.input("idx", torch.tensor(idx, dtype=torch.int64))
    c.output("y", mod(i))


@case
def mse(c, reduction):
    g = c.gen
    c.attr("reduction", REDUCTIONS[reduction])
    pred = c.input("pred", randn(g, 3, 4))
    target = c.input("target", randn(g, 3, 4))
    c.output("loss", F.mse_loss(pred, target, reduction=reduction))


@case
def bce(c, reduction, wide=False, pos_weight=False, weight=False):
    g = c.gen
    c.attr("reduction", REDUCTIONS[reduction])
    if wide:  # large logits of both signs: the stable form must hold
        logits = torch.tensor([[-1e4, -100.0, -30.0, -5.0, -0.5], [0.0, 0.5, 5.0, 30.0, 1e4]], dtype=F64)
    else:
        logits = randn(g, 3, 4, scale=2.0)
    x = c.input("logits", logits)
    t = c.input("target", uniform(g, 0.0, 1.0, *logits.shape))
    kw = {"reduction": reduction}
    # torch differentiates neither weight (so nabla's gradients of them are gradchecked in test_nn_losses)
    if pos_weight:  # one per column, broadcast over rows
        kw["pos_weight"] = c.input("pos_weight", uniform(g, 0.25, 4.0, logits.shape[-1]), grad=False)
    if weight:  # one per row
        kw["weight"] = c.input("weight", uniform(g, 0.0, 2.0, logits.shape[0], 1), grad=False)
    c.output("loss", F.binary_cross_entropy_with_logits(x, t, **kw))


N_CE, C_CE = 6, 5


def ce_kwargs(c, reduction, ignore_index, label_smoothing):
    c.attr("reduction", REDUCTIONS[reduction])
    kw = {"reduction": reduction}
    if ignore_index is not None:
        c.attr("ignore_index", ignore_index)
        kw["ignore_index"] = ignore_index
    if label_smoothing:
        c.attr("label_smoothing", label_smoothing)
        kw["label_smoothing"] = label_smoothing
    return kw


def labels_for(g, shape, ignore_index):
    """Labels in [0, C_CE) of the given shape; with ignore_index, about a quarter of them ignored
    (never all)."""
    y = torch.randint(0, C_CE, shape, generator=g)
    if ignore_index is not None:
        drop = torch.rand(shape, generator=g) < 0.25
        drop.view(-1)[0] = False
        y[drop] = ignore_index
    return y


@case
def cross_entropy(c, reduction, labels=None, ignore_index=None, label_smoothing=0.0, shape=(N_CE, C_CE),
                  weight=False, soft=False):
    """labels: a list, or None for random ones of the shape without dim 1; weight: class weights;
    soft: probability targets of the logits' shape"""
    g = c.gen
    kw = ce_kwargs(c, reduction, ignore_index, label_smoothing)
    x = c.input("logits", randn(g, *shape, scale=2.0))
    if soft:
        y = c.input("labels", q(torch.softmax(randn(g, *shape, scale=1.5), 1)))
    else:
        y = torch.tensor(labels, dtype=torch.int64) if labels is not None else \
            labels_for(g, shape[:1] + shape[2:], ignore_index)
        y = c.input("labels", y)
    if weight:  # torch differentiates class weights only with probability targets
        kw["weight"] = c.input("weight", uniform(g, 0.25, 2.0, shape[1]), grad=soft)
    c.output("loss", F.cross_entropy(x, y, **kw))


@case
def nll(c, reduction, labels=None, ignore_index=None, shape=(N_CE, C_CE), weight=False):
    g = c.gen
    kw = ce_kwargs(c, reduction, ignore_index, 0.0)
    logp = c.input("log_probs", q(torch.log_softmax(randn(g, *shape, scale=2.0), 1)))
    y = torch.tensor(labels, dtype=torch.int64) if labels is not None else labels_for(g, shape[:1] + shape[2:], ignore_index)
    y = c.input("labels", y)
    if weight:
        kw["weight"] = c.input("weight", uniform(g, 0.25, 2.0, shape[1]), grad=False)
    c.output("loss", F.nll_loss(logp, y, **kw))


@case
def l1(c, reduction):
    g = c.gen
    c.attr("reduction", REDUCTIONS[reduction])
    pred = c.input("pred", randn(g, 3, 4))
    target = c.input("target", randn(g, 3, 4))
    c.output("loss", F.l1_loss(pred, target, reduction=reduction))


@case
def smooth_l1(c, reduction, beta):
    g = c.gen
    c.attr("reduction", REDUCTIONS[reduction])
    c.attr("beta", beta)
    pred = c.input("pred", randn(g, 3, 5))  # differences of both sides of beta
    target = c.input("target", randn(g, 3, 5))
    c.output("loss", F.smooth_l1_loss(pred, target, reduction=reduction, beta=beta))


@case
def huber(c, reduction, delta):
    g = c.gen
    c.attr("reduction", REDUCTIONS[reduction])
    c.attr("delta", delta)
    pred = c.input("pred", randn(g, 3, 5))
    target = c.input("target", randn(g, 3, 5))
    c.output("loss", F.huber_loss(pred, target, reduction=reduction, delta=delta))


@case
def kl_div(c, reduction, log_target, zeros=False):
    """input: log-probabilities [4, 5]; target probabilities (with zeros: some exactly 0, then not
    differentiated, as torch's gradient there is NaN) or log-probabilities"""
    g = c.gen
    c.attr("reduction", REDUCTIONS[reduction])
    c.attr("log_target", int(log_target))
    x = c.input("input", q(torch.log_softmax(randn(g, 4, 5, scale=1.5), 1)))
    t = torch.softmax(randn(g, 4, 5, scale=1.5), 1)
    if zeros:
        t[0, 1] = t[2, 0] = t[2, 4] = 0.0
    t = q(torch.log(t)) if log_target else q(t)
    t = c.input("target", t, grad=not zeros)
    with warnings.catch_warnings():  # torch's note that 'mean' is not 'batchmean'
        warnings.simplefilter("ignore")
        c.output("loss", F.kl_div(x, t, reduction=reduction, log_target=log_target))


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

for kind in ("rnn_tanh", "lstm", "gru"):
    rnn("%s_seq" % kind, kind, kind=kind)
    rnn("%s_bf" % kind, kind, kind=kind, batch_first=True)
# variable lengths (unsorted, one full): PackedSequence in torch, lengths in nabla (the Elman and GRU
# runs share nabla's masking code, so the Elman one is left out to keep the file small)
rnn("lstm_len_bf", "lstm", kind="lstm", batch_first=True, lengths=[3, 5, 1])
rnn("gru_len", "gru", kind="gru", lengths=[4, 5, 2])
# bidirectional, two layers (layer 1 reads both directions); with lengths, torch's reverse direction
# starts at each sequence's last real step (three cases: each adds 50 kB to the file)
rnn("rnn_tanh_bi_bf", "rnn_tanh", kind="rnn_tanh", bidirectional=True, batch_first=True)
rnn("lstm_bi_len", "lstm", kind="lstm", bidirectional=True, lengths=[3, 5, 1])
rnn("gru_bi_len", "gru", kind="gru", bidirectional=True, lengths=[4, 5, 2])

mha("mha_cross", "mha", tq=4, tk=5)
mha("mha_keypad", "mha", tq=4, tk=5, keypad=[[3, 4], [1]])
# causal alone is left out (file size): every causal code path runs in the combined case
mha("mha_causal_keypad", "mha", tq=5, tk=5, causal=True, keypad=[[4], [2, 3]])

layer_norm("layer_norm_2d", "layer_norm", shape=(4, 6))
layer_norm("layer_norm_3d", "layer_norm", shape=(2, 3, 6), eps=1e-3)

linear("linear_2d", "linear", shape=(3, 5), out_features=4)
linear("linear_3d", "linear", shape=(2, 3, 5), out_features=4)
linear("linear_nobias", "linear", shape=(2, 3, 5), out_features=4, bias=False)

IDX = [[1, 0, 4, 0], [3, 3, 6, 1]]  # row 0 and row 6 (= -1 of 7) looked up, repeats accumulate
embedding("embedding", "embedding", num=7, dim=3, idx=IDX)
embedding("embedding_pad", "embedding", num=7, dim=3, idx=IDX, padding_idx=0)
embedding("embedding_pad_neg", "embedding", num=7, dim=3, idx=IDX, padding_idx=-1)

LABELS = [1, 0, 4, 2, 2, 3]
LABELS_IGN = [1, -100, 4, 2, -100, 3]
for red in ("mean", "sum", "none"):
    mse("mse_%s" % red, "mse", reduction=red)
    bce("bce_%s" % red, "bce", reduction=red)
    cross_entropy("ce_%s" % red, "cross_entropy", reduction=red, labels=LABELS)
    cross_entropy("ce_ignore_%s" % red, "cross_entropy", reduction=red, labels=LABELS_IGN, ignore_index=-100)
    cross_entropy("ce_smooth_%s" % red, "cross_entropy", reduction=red, labels=LABELS, label_smoothing=0.1)
    nll("nll_%s" % red, "nll", reduction=red, labels=LABELS)
bce("bce_wide_mean", "bce", reduction="mean", wide=True)
cross_entropy("ce_ignore_class_mean", "cross_entropy", reduction="mean", labels=LABELS, ignore_index=2)
cross_entropy("ce_smooth_ignore_mean", "cross_entropy", reduction="mean", labels=LABELS_IGN, ignore_index=-100,
              label_smoothing=0.1)
cross_entropy("ce_smooth_ignore_none", "cross_entropy", reduction="none", labels=LABELS_IGN, ignore_index=-100,
              label_smoothing=0.1)
nll("nll_ignore_mean", "nll", reduction="mean", labels=LABELS_IGN, ignore_index=-100)

# class dims after dim 1 ([N, C, d1, d2]), class weights (torch's weighted mean, also with ignored
# labels and smoothing), probability targets
ND = (2, C_CE, 3, 2)
for red in ("mean", "sum", "none"):
    cross_entropy("ce_nd_%s" % red, "cross_entropy", reduction=red, shape=ND)
    cross_entropy("ce_weight_ignore_smooth_%s" % red, "cross_entropy", reduction=red, weight=True,
                  ignore_index=-100, label_smoothing=0.2)
    cross_entropy("ce_soft_weight_smooth_%s" % red, "cross_entropy", reduction=red, soft=True, weight=True,
                  label_smoothing=0.1)
    nll("nll_nd_weight_ignore_%s" % red, "nll", reduction=red, shape=ND, weight=True, ignore_index=1)
cross_entropy("ce_weight_mean", "cross_entropy", reduction="mean", labels=LABELS, weight=True)
cross_entropy("ce_nd_weight_ignore_smooth_mean", "cross_entropy", reduction="mean", shape=ND, weight=True,
              ignore_index=-100, label_smoothing=0.15)
cross_entropy("ce_soft_mean", "cross_entropy", reduction="mean", soft=True)
cross_entropy("ce_soft_nd_smooth_none", "cross_entropy", reduction="none", soft=True, shape=ND, label_smoothing=0.3)
cross_entropy("ce_one_sample_none", "cross_entropy", reduction="none", labels=3, shape=(C_CE,))

for red in ("mean", "sum", "none"):
    bce("bce_pos_weight_%s" % red, "bce", reduction=red, pos_weight=True)
    l1("l1_%s" % red, "l1", reduction=red)
    smooth_l1("smooth_l1_%s" % red, "smooth_l1", reduction=red, beta=0.5)
    huber("huber_%s" % red, "huber", reduction=red, delta=0.75)
bce("bce_pos_weight_weight_mean", "bce", reduction="mean", pos_weight=True, weight=True)
bce("bce_wide_pos_weight_sum", "bce", reduction="sum", wide=True, pos_weight=True)
smooth_l1("smooth_l1_beta0_mean", "smooth_l1", reduction="mean", beta=0.0)
smooth_l1("smooth_l1_beta2_sum", "smooth_l1", reduction="sum", beta=2.0)
for red in ("mean", "sum", "none", "batchmean"):
    kl_div("kl_div_%s" % red, "kl_div", reduction=red, log_target=False)
    kl_div("kl_div_log_target_%s" % red, "kl_div", reduction=red, log_target=True)
kl_div("kl_div_zeros_batchmean", "kl_div", reduction="batchmean", log_target=False, zeros=True)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def run_case(name, layer, fn, kw):
    c = Case(name, layer)
    fn(c, **kw)
    # the scalar that is differentiated: sum over outputs of sum(output * seed)
    seeds = [randn(c.gen, *o.shape) for _, o in c.outputs]
    total = sum((o * s).sum() for (_, o), s in zip(c.outputs, seeds))
    leaves = []  # distinct torch leaves: parameters (MHA's in_proj is shared by three) and inputs
    for _, t, _ in c.params:
        if all(t is not u for u in leaves):
            leaves.append(t)
    inputs = [(n, t) for n, t in c.inputs if t.requires_grad]
    leaves += [t for _, t in inputs]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    gmap = [(t, gr if gr is not None else torch.zeros_like(t)) for t, gr in zip(leaves, grads)]

    def grad_of(t):
        return next(gr for u, gr in gmap if u is t)

    def rows(t, r):
        return t if r is None else t[r[0]:r[1]]

    lines = ["case %s %s" % (name, layer)]
    lines += [fw.fmt_attr(k, v) for k, v in c.attrs]
    lines += [fw.fmt_tensor("param:" + n, rows(t, r)) for n, t, r in c.params]
    lines += [fw.fmt_tensor("in:" + n, t) for n, t in c.inputs]
    for (n, o), s in zip(c.outputs, seeds):
        lines.append(fw.fmt_tensor("out:" + n, o))
        lines.append(fw.fmt_tensor("seed:" + n, s))
    lines += [fw.fmt_tensor("grad:" + n, rows(grad_of(t), r)) for n, t, r in c.params]
    lines += [fw.fmt_tensor("grad:" + n, grad_of(t)) for n, t in inputs]
    lines.append("end")
    return lines


def generate():
    torch.manual_seed(0)  # torch's own module initialisation (overwritten, but keep it fixed)
    torch.set_num_threads(1)  # one summation order
    lines = fw.header("nabla nn fixtures: PyTorch %s reference values, float64." % torch.__version__,
                      "gen_nn_fixtures.py", "nabla-nn-fixtures", FORMAT_VERSION)
    for name, layer, fn, kw in CASES:
        lines += run_case(name, layer, fn, kw)
    return "\n".join(lines) + "\n"


def summary(out, text):
    layers = sorted({c[1] for c in CASES})
    return "%s: %d cases, %d layers, %d bytes" % (out, len(CASES), len(layers), len(text))


if __name__ == "__main__":
    sys.exit(fw.main(__doc__, DEFAULT_OUT, generate, summary))
