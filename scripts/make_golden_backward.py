"""Writes tests/golden/backward.safetensors: the gradients of every backward op of ops.h, from torch
autograd on small random inputs.

    pip install torch safetensors
    python3 scripts/make_golden_backward.py

Tensor names are <case>.<role>. Each case stores the forward's inputs and parameters, `dout` (the
loss gradient with respect to the op's output: the loss is sum(out * dout)), and torch's
gradients `d<input>` (dinp, dweight, dbias, dq, dk, dv). tests/test_backward.c runs our forward
(for what the backward needs: the norms' mean and rstd, attention's output) and our backward on
the inputs and compares with these; the hyperparameters of each case are written in both files,
next to the case name.

Inputs are drawn in float32 (torch.randn, fixed seed) and stored as float32; autograd then runs
in float64 on exactly those values, so the stored gradients are the exact answer rounded once to
float32, and the C test's tolerances measure our f32 arithmetic alone.
"""
import torch
import torch.nn.functional as F

from golden_common import save

SEED = 4321
torch.manual_seed(SEED)
g = {}


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float32) * scale


def grads(name, fn, inputs, out_shape=None):
    """inputs: role -> float32 tensor (None for absent). Runs fn on float64 leaves, backpropagates
    a random dout, stores inputs, dout and the gradient of every input as <name>.<role>,
    <name>.dout and <name>.d<role>."""
    leaves = {k: (v.double().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    out = fn(**leaves)
    dout = randn(*out.shape)
    out.backward(dout.double())
    for k, v in inputs.items():
        if v is None:
            continue
        g[f"{name}.{k}"] = v.clone()  # cases may share an input; each gets its own copy
        g[f"{name}.d{k}"] = leaves[k].grad.float()
    g[f"{name}.dout"] = dout


# ---- linear: N 6, C_in 33, C_out 17, with and without bias
x, w, b = randn(6, 33), randn(17, 33, scale=0.5), randn(17)
grads("linear", lambda inp, weight, bias: F.linear(inp, weight, bias), {"inp": x, "weight": w, "bias": b})
grads("linear_nobias", lambda inp, weight: F.linear(inp, weight), {"inp": x, "weight": w})

# ---- conv2d: (name, N, C_in, H, W, C_out, K, stride, pad, bias); must match tests/test_backward.c
conv_cases = [
    ("conv_k3s1p1", 2, 3, 9, 11, 5, 3, 1, 1, True),     # UNet/VAE 3x3
    ("conv_k3s2p1", 1, 4, 9, 10, 6, 3, 2, 1, True),     # UNet downsample, odd size: last row/column unused
    ("conv_k1", 2, 6, 5, 7, 4, 1, 1, 0, True),          # 1x1 shortcut: no im2col
    ("conv_k3s1p1_odd", 1, 3, 7, 5, 4, 3, 1, 1, False), # odd size, no bias
    ("conv_k3s2p0", 1, 3, 8, 8, 4, 3, 2, 0, False),     # VAE encoder downsample after pad
    ("conv_chunks", 1, 2, 70, 70, 3, 3, 1, 1, True),    # 4900 output pixels: two im2col chunks
]
for name, n, ci, h, w_, co, k, s, p, has_bias in conv_cases:
    inputs = {"inp": randn(n, ci, h, w_), "weight": randn(co, ci, k, k, scale=0.5), "bias": randn(co) if has_bias else None}
    grads(name, lambda inp, weight, bias, s=s, p=p: F.conv2d(inp, weight, bias, stride=s, padding=p), inputs)

# ---- group norm: N 2, C 8, HW 15 (as (2, 8, 3, 5)), G 4, eps 1e-5; affine or not, SiLU or not
x = randn(2, 8, 3, 5, scale=2.0) + 0.5
w, b = randn(8, scale=0.5) + 1.0, randn(8)
for name, affine, silu in [("gn", True, False), ("gn_noaffine", False, False), ("gn_silu", True, True),
                           ("gn_noaffine_silu", False, True)]:
    def gn(inp, weight=None, bias=None, silu=silu):
        y = F.group_norm(inp, 4, weight, bias, eps=1e-5)
        return F.silu(y) if silu else y
    grads(name, gn, {"inp": x, "weight": w, "bias": b} if affine else {"inp": x})

# ---- layer norm: N 7, C 33, eps 1e-5; affine or not
x = randn(7, 33, scale=1.5) - 0.3
w, b = randn(33, scale=0.5) + 1.0, randn(33)
grads("ln", lambda inp, weight, bias: F.layer_norm(inp, (33,), weight, bias, eps=1e-5), {"inp": x, "weight": w, "bias": b})
grads("ln_noaffine", lambda inp: F.layer_norm(inp, (33,), eps=1e-5), {"inp": x})

# ---- attention in the (N, L, NH*HS) layout: (name, N, NH, Lq, Lk, HS, causal); must match the test
attn_cases = [
    ("attn_cross", 2, 2, 5, 7, 8, False),     # Lq != Lk
    ("attn_hs64", 1, 2, 9, 77, 64, False),    # the UNet's head size, a text-length context
    ("attn_causal", 1, 2, 70, 70, 8, True),   # causal over two query blocks of the CPU reference
    ("attn_lk130", 1, 1, 66, 130, 16, False), # Lk not a multiple of 64, two query blocks
    ("attn_hs512", 1, 1, 10, 12, 512, False), # the VAE's single 512-wide head
]
for name, n, nh, lq, lk, hs, causal in attn_cases:
    def attn(q, k, v, n=n, nh=nh, lq=lq, lk=lk, hs=hs, causal=causal):
        split = lambda t, l: t.view(n, l, nh, hs).transpose(1, 2)  # (N, NH, L, HS)
        o = F.scaled_dot_product_attention(split(q, lq), split(k, lk), split(v, lk), is_causal=causal)
        return o.transpose(1, 2).reshape(n, lq, nh * hs)
    grads(name, attn, {"q": randn(n, lq, nh * hs), "k": randn(n, lk, nh * hs), "v": randn(n, lk, nh * hs)})

# ---- activations: a spread of values, the tails included
x = torch.cat([torch.linspace(-30, 30, 241), randn(759, scale=3.0)])
grads("silu", lambda inp: F.silu(inp), {"inp": x})
grads("gelu", lambda inp: F.gelu(inp), {"inp": x})
x = randn(5, 24, scale=2.0)
grads("geglu", lambda inp: (lambda h, gate: h * F.gelu(gate))(*inp.chunk(2, dim=-1)), {"inp": x})  # N 5, C 12

# ---- nearest upsampling: exact 2x, and 43x24 -> 85x48 (torch's legacy index rule, not 2x)
grads("upsample_2x", lambda inp: F.interpolate(inp, size=(10, 14), mode="nearest"), {"inp": randn(1, 2, 5, 7)})
grads("upsample_43", lambda inp: F.interpolate(inp, size=(85, 48), mode="nearest"), {"inp": randn(1, 1, 43, 24)})

save(g, "backward.safetensors", __file__, SEED, {"autograd": "float64 on float32 inputs, gradients rounded to float32"})
