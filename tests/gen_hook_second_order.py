"""PyTorch reference for test_inspect's second_order_views_hooks: first and second derivatives of a
composition of a matmul, reshapes, strided and transposed slices, index_select, a custom op with a
composed backward (x^3) and two gradient hooks (x2 and x0.5, which PyTorch also runs in the double
backward), printed as the C arrays the test holds.

    /usr/bin/python3 tests/gen_hook_second_order.py
"""
import torch

torch.set_default_dtype(torch.float64)


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.square() * 3.0)


x = torch.tensor([0.1 * i - 0.35 for i in range(8)]).reshape(4, 2).requires_grad_()
w = torch.tensor([0.2 * i - 0.45 for i in range(6)]).reshape(2, 3).requires_grad_()
vx = torch.tensor([0.05 * i + 0.1 for i in range(8)]).reshape(4, 2)
vw = torch.tensor([-0.07 * i + 0.2 for i in range(6)]).reshape(2, 3)
s = (x @ w).reshape(12)[1:11:2]
s.register_hook(lambda g: g * 2)
c = Cube.apply(s[torch.tensor([0, 4, 4, 2, 1, 3])])
c.register_hook(lambda g: g * 0.5)
sl = torch.tanh(c.reshape(2, 3)).transpose(0, 1)[:, 0:2]
loss = (torch.sin(sl) * torch.exp(sl * 0.3)).sum()
gx, gw = torch.autograd.grad(loss, [x, w], create_graph=True)
hx, hw = torch.autograd.grad((gx * vx).sum() + (gw * vw).sum(), [x, w])


def carray(name, t):
    vals = ", ".join("%.17g" % v for v in t.flatten().tolist())
    print("static const double %s[%d] = {%s};" % (name, t.numel(), vals))


print("static const double ho_loss = %.17g;" % loss.item())
carray("ho_gx", gx)
carray("ho_gw", gw)
carray("ho_hx", hx)
carray("ho_hw", hw)
