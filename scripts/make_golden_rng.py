"""Writes tests/golden/rng.safetensors: PyTorch CPU-generator draws that rng.c must reproduce
bit for bit.

    pip install torch safetensors
    python3 scripts/make_golden_rng.py

Each entry is one call on a generator; entries named seq.<k>.* are successive calls on one
generator seeded 42, so they also test that our generator state advances exactly as torch's.
Tensor names encode the call: randn.<seed>.<shape>, e.g. randn.42.1x4x96x171.
"""
import torch

from golden_common import save

SEED = 42
tensors = {}


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


# torch.randn in float32: shapes below and above the 16-element switch, tails that are not a
# multiple of 16, and the SDXL latent shapes the issue names.
for seed, shape in [
    (42, (1, 4, 96, 171)),   # 1368x768 latent: 65664 values, 65664 % 16 == 0
    (42, (2, 4, 128, 128)),  # 1024x1024 latent, batch 2
    (1234, (1, 4, 96, 170)), # 1360x768 latent: 65280 values
    (7, (3, 4, 5, 7)),       # 420 values: a tail of 4 is redrawn
    (42, (8,)), (42, (15,)), (42, (16,)), (42, (17,)), (0, (33,)), (42, (1, 4, 3, 1)),
]:
    name = "randn.%d.%s" % (seed, "x".join(str(s) for s in shape))
    tensors[name] = torch.randn(shape, generator=gen(seed), dtype=torch.float32)

# torch.rand, randint, randperm
tensors["rand.42.1000"] = torch.rand(1000, generator=gen(42))
tensors["randint.42.0_1000.64"] = torch.randint(0, 1000, (64,), generator=gen(42))
tensors["randint.42.-5_5.20"] = torch.randint(-5, 5, (20,), generator=gen(42))
tensors["randint.42.0_2p40.8"] = torch.randint(0, 2**40, (8,), generator=gen(42))
tensors["randperm.42.10"] = torch.randperm(10, generator=gen(42))
tensors["randperm.42.5000"] = torch.randperm(5000, generator=gen(42))

# One generator, successive calls of mixed kinds (the double path's cached second value included).
g = gen(SEED)
tensors["seq.0.randn.5"] = torch.randn(5, generator=g)
tensors["seq.1.randn.3"] = torch.randn(3, generator=g)
tensors["seq.2.randn.40"] = torch.randn(40, generator=g)
tensors["seq.3.rand.7"] = torch.rand(7, generator=g)
tensors["seq.4.randint.0_1000.4"] = torch.randint(0, 1000, (4,), generator=g)
tensors["seq.5.randperm.12"] = torch.randperm(12, generator=g)
tensors["seq.6.randn.1"] = torch.randn(1, generator=g)
tensors["seq.7.randn.700"] = torch.randn(700, generator=g)

save(tensors, "rng.safetensors", __file__, SEED)
