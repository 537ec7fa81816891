"""Writes tests/golden/ops.safetensors: every op of ops.h computed by PyTorch on random inputs.

    pip install torch safetensors
    python3 scripts/make_golden_ops.py

Tensor names are <case>.<role>: inputs, weights and the expected output (`.out`) of each case.
tests/test_ops.c runs our op on the inputs and compares with `.out`; the hyperparameters of each
case (stride, padding, eps, ...) are written in both files, next to the case name. Inputs come
from torch.randn with a fixed seed, so regenerating gives the same file for the same torch.
Also writes tests/golden/convert.safetensors (f16/bf16 conversions, all 65536 f16 patterns).
"""
import math

import torch
import torch.nn.functional as F

from golden_common import save

SEED = 1234
torch.manual_seed(SEED)
g = {}


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float32) * scale


# ---- matmul: out = alpha * op(a) @ op(b) + beta * out0, batch 2, M 5, N 7, K 9, all transposes
B, M, N, K = 2, 5, 7, 9
for ta in (0, 1):
    for tb in (0, 1):
        a = randn(B, K, M) if ta else randn(B, M, K)
        b = randn(B, N, K) if tb else randn(B, K, N)
        out0 = randn(B, M, N)
        opa = a.transpose(1, 2) if ta else a
        opb = b.transpose(1, 2) if tb else b
        name = f"matmul_t{ta}{tb}"
        g[name + ".a"], g[name + ".b"], g[name + ".out0"] = a, b, out0
        g[name + ".out"] = torch.baddbmm(out0, opa, opb, beta=0.25, alpha=0.5)
# a larger product that crosses the GEMM's KC (256) and MR/NR tile edges
a, b = randn(1, 70, 300), randn(1, 300, 45)
g["matmul_big.a"], g["matmul_big.b"], g["matmul_big.out"] = a, b, torch.bmm(a, b)

# ---- linear (PyTorch weight layout (C_out, C_in))
x, w, bias = randn(6, 33), randn(17, 33), randn(17)
g["linear.inp"], g["linear.weight"], g["linear.bias"] = x, w, bias
g["linear.out"] = F.linear(x, w, bias)
g["linear_nobias.out"] = F.linear(x, w)

# ---- conv2d: (name, N, C_in, H, W, C_out, K, stride, pad, bias)
conv_cases = [
    ("conv_k3s1p1", 2, 3, 9, 11, 5, 3, 1, 1, True),   # UNet/VAE 3x3
    ("conv_k3s2p1", 1, 4, 9, 10, 6, 3, 2, 1, True),   # UNet downsample, odd size
    ("conv_k1s1p0", 2, 6, 5, 7, 4, 1, 1, 0, True),    # 1x1 shortcut: no im2col
    ("conv_k3s2p0", 1, 3, 8, 8, 4, 3, 2, 0, False),   # VAE encoder downsample after pad
    ("conv_k4s4p0", 1, 3, 12, 16, 8, 4, 4, 0, False), # ViT patch embedding (14/14, 16/16)
    ("conv_k5s1p2", 1, 2, 6, 6, 3, 5, 1, 2, True),
    ("conv_chunks", 1, 2, 70, 70, 3, 3, 1, 1, True),  # 4900 output pixels: two im2col chunks
]
for name, n, ci, h, w_, co, k, s, p, has_bias in conv_cases:
    x, w = randn(n, ci, h, w_), randn(co, ci, k, k, scale=0.5)
    bias = randn(co) if has_bias else None
    g[name + ".inp"], g[name + ".weight"] = x, w
    if has_bias:
        g[name + ".bias"] = bias
    g[name + ".out"] = F.conv2d(x, w, bias, stride=s, padding=p)

# ---- pad2d (left, right, top, bottom) = (0, 1, 0, 1), the VAE downsample pad, and an uneven one
x = randn(2, 3, 4, 5)
g["pad2d.inp"] = x
g["pad2d.out"] = F.pad(x, (0, 1, 0, 1))
g["pad2d_uneven.out"] = F.pad(x, (2, 1, 3, 0))

# ---- nearest upsampling: exact 2x, and the size rule (UNet latents not divisible by 4)
x = randn(1, 2, 5, 7)
g["upsample.inp"] = x
g["upsample_2x.out"] = F.interpolate(x, scale_factor=2, mode="nearest")
g["upsample_size.out"] = F.interpolate(x, size=(9, 13), mode="nearest")
x = randn(1, 1, 43, 24)
g["upsample_43.inp"] = x
g["upsample_43.out"] = F.interpolate(x, size=(85, 48), mode="nearest")

# ---- max pooling: (name, K, stride, pad)
x = randn(2, 3, 9, 8)
g["maxpool.inp"] = x
for name, k, s, p in [("maxpool_k5s1p2", 5, 1, 2), ("maxpool_k3s2p1", 3, 2, 1), ("maxpool_k2s2p0", 2, 2, 0)]:
    g[name + ".out"] = F.max_pool2d(x, k, s, p)

# ---- group norm: N 2, C 8, HW 15, G 4
x, w, bias = randn(2, 8, 3, 5), randn(8), randn(8)
g["group_norm.inp"], g["group_norm.weight"], g["group_norm.bias"] = x, w, bias
g["group_norm.out"] = F.group_norm(x, 4, w, bias, eps=1e-5)
g["group_norm_noaffine.out"] = F.group_norm(x, 4, eps=1e-6)
# an offset of 100 tests the two-pass variance (a one-pass E[x^2]-E[x]^2 in f32 loses digits)
g["group_norm_offset.inp"] = x + 100.0
g["group_norm_offset.out"] = F.group_norm(x + 100.0, 4, w, bias, eps=1e-5)
# the statistics saved for backward: mean and 1/sqrt(var + eps) per (n, group)
xg = x.reshape(2, 4, -1)
g["group_norm.mean"] = xg.mean(-1)
g["group_norm.rstd"] = 1.0 / torch.sqrt(xg.var(-1, unbiased=False) + 1e-5)

# ---- layer norm: N 7, C 33
x, w, bias = randn(7, 33), randn(33), randn(33)
g["layer_norm.inp"], g["layer_norm.weight"], g["layer_norm.bias"] = x, w, bias
g["layer_norm.out"] = F.layer_norm(x, (33,), w, bias, eps=1e-5)
g["layer_norm_bert.out"] = F.layer_norm(x, (33,), w, bias, eps=1e-12)  # BERT's eps
g["layer_norm.mean"] = x.mean(-1)
g["layer_norm.rstd"] = 1.0 / torch.sqrt(x.var(-1, unbiased=False) + 1e-5)

# ---- softmax over the last dim, ordinary and large logits
x = randn(5, 17)
g["softmax.inp"], g["softmax.out"] = x, torch.softmax(x, -1)
g["softmax_large.inp"], g["softmax_large.out"] = x * 50, torch.softmax(x * 50, -1)

# ---- attention: (name, N, NH, Lq, Lk, HS, causal); layout (N, L, NH*HS)
for name, n, nh, lq, lk, hs, causal in [
    ("attn_small", 2, 3, 5, 7, 8, False),
    ("attn_causal", 1, 2, 6, 6, 8, True),
    ("attn_cross77", 1, 2, 9, 77, 64, False),  # cross-attention to 77 text tokens, HS 64
    ("attn_blocks", 1, 1, 4, 130, 16, False),  # 130 keys: three online-softmax blocks
    ("attn_causal_long", 1, 1, 70, 70, 4, True),
]:
    q, k, v = randn(n, lq, nh * hs), randn(n, lk, nh * hs), randn(n, lk, nh * hs)
    split = lambda t, l: t.reshape(n, l, nh, hs).transpose(1, 2)
    o = F.scaled_dot_product_attention(split(q, lq), split(k, lk), split(v, lk), is_causal=causal)
    g[name + ".q"], g[name + ".k"], g[name + ".v"] = q, k, v
    g[name + ".out"] = o.transpose(1, 2).reshape(n, lq, nh * hs)
# the VAE's single head of 512
q, k, v = randn(1, 10, 512, scale=0.1), randn(1, 10, 512, scale=0.1), randn(1, 10, 512)
g["attn_hs512.q"], g["attn_hs512.k"], g["attn_hs512.v"] = q, k, v
g["attn_hs512.out"] = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]

# ---- activations on a wide range, including saturation
x = torch.cat([randn(1000, scale=4.0), torch.tensor([-100.0, -30.0, -10.0, 0.0, 10.0, 30.0, 100.0])])
g["act.inp"] = x
g["silu.out"] = F.silu(x)
g["gelu.out"] = F.gelu(x)
g["gelu_tanh.out"] = F.gelu(x, approximate="tanh")
g["quick_gelu.out"] = x * torch.sigmoid(1.702 * x)
g["sigmoid.out"] = torch.sigmoid(x)

# ---- GEGLU: inp (N, 2C) -> value * gelu(gate)
x = randn(5, 24)
h, gate = x.chunk(2, dim=-1)
g["geglu.inp"], g["geglu.out"] = x, h * F.gelu(gate)

# ---- elementwise arithmetic
a, b = randn(300), randn(300)
g["elem.a"], g["elem.b"] = a, b
g["add.out"], g["mul.out"], g["scale.out"] = a + b, a * b, a * 0.37
g["axpby.out"] = 1.5 * a + (-0.75) * b
x, vec = randn(2, 3, 4, 5), randn(2, 3)
g["add_channel_vector.inp"], g["add_channel_vector.vec"] = x, vec
g["add_channel_vector.out"] = x + vec[:, :, None, None]

# ---- layout ops
a, b = randn(2, 3, 4, 5), randn(2, 6, 4, 5)
g["concat.a"], g["concat.b"], g["concat.out"] = a, b, torch.cat([a, b], 1)
x = randn(2, 3, 4, 5)
g["transpose.inp"] = x
g["transpose.out"] = x.reshape(2, 3, 20).transpose(1, 2).contiguous()  # NCHW -> (N, HW, C)
table = randn(11, 6)
ids = torch.tensor([3, 0, 10, 3, 7], dtype=torch.int32)
g["embedding.table"], g["embedding.ids"] = table, ids
g["embedding.out"] = F.embedding(ids.long(), table)

# ---- sinusoidal timestep embedding, diffusers get_timestep_embedding
def timestep_embedding(t, dim, flip, shift, max_period=10000):
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


t = torch.tensor([0.0, 1.0, 999.0, 500.5, 37.0, 1024.0])
g["timestep.t"] = t
g["timestep_320.out"] = timestep_embedding(t, 320, True, 0)  # SDXL time_proj
g["timestep_256.out"] = timestep_embedding(t, 256, True, 0)  # SDXL add_time_proj
g["timestep_noflip.out"] = timestep_embedding(t, 64, False, 1)  # shift 1, sin first
try:  # cross-check the formula against diffusers itself when it is installed
    from diffusers.models.embeddings import get_timestep_embedding
    ref = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(ref, g["timestep_320.out"]), "diffusers get_timestep_embedding differs"
    print("timestep embedding identical to diffusers'")
except ImportError:
    pass

save(g, "ops.safetensors", __file__, SEED)

# ---- storage conversions (convert.safetensors)
c = {}
specials = torch.tensor([
    0.0, -0.0, 1.0, -1.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6.1035156e-05, 6.0975552e-05,
    5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 1e-9, 1.0009765625, 1.00048828125, 1.00146484375,
    3.3895314e38, 3.4e38, 1e-40, float("inf"), float("-inf"), float("nan"),
], dtype=torch.float32)
# halfway cases for f16 (ties to even both ways) and bf16, plus random values over many binades
halfway = torch.tensor([1.0 + (2 * i + 1) * 2.0**-11 for i in range(8)] + [1.0 + (2 * i + 1) * 2.0**-8 for i in range(8)])
rnd = torch.randn(4000) * torch.exp2(torch.randint(-30, 20, (4000,)).float())
x = torch.cat([specials, halfway, -halfway, rnd]).float()
c["f32.inp"] = x
c["f32_to_f16.out"] = x.half()
c["f32_to_bf16.out"] = x.bfloat16()
all_f16 = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
c["f16_all.inp"] = all_f16
c["f16_all_to_f32.out"] = all_f16.float()
all_bf16 = torch.arange(0, 65536, 7, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
c["bf16_some.inp"] = all_bf16
c["bf16_some_to_f32.out"] = all_bf16.float()
save(c, "convert.safetensors", __file__, SEED)
