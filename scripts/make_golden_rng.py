"""Writes tests/golden/rng.safetensors: PyTorch CPU-generator draws that rng.c must reproduce
bit for bit, and tests/golden/rng_seeds.safetensors: the same for seeds across the whole range
torch.Generator.manual_seed takes (above 2^31 - 1, above 2^32, up to 2^64 - 1, and negative).

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

# Seeds over the whole range manual_seed takes (torch/csrc/Generator.cpp, unpack_uint64: a Python
# int in 0..2^64-1 as is, one in -2^63..-1 as its two's-complement bits). Names carry the seed as
# the user writes it: seed.<decimal>.<call>. seed.<decimal>.initial_seed is the 64-bit value torch
# keeps (what the C side must parse the text to); randn.8 is the per-element double path, randn.40
# the vectorised float path with a redrawn tail, rand.8 the float uniforms.
SEED_TEXTS = ["0", "2147483647", "2147483648", "4294967295", "4294967296", "4294967338", "9223372036854775807",
              "9223372036854775808", "18446744073709551615", "-1", "-42", "-9223372036854775808"]
seeds = {}
for text in SEED_TEXTS:
    g = gen(int(text))
    seeds["seed.%s.initial_seed" % text] = torch.tensor([g.initial_seed()], dtype=torch.uint64)
    seeds["seed.%s.randn.8" % text] = torch.randn(8, generator=gen(int(text)))
    seeds["seed.%s.randn.40" % text] = torch.randn(40, generator=gen(int(text)))
    seeds["seed.%s.rand.8" % text] = torch.rand(8, generator=gen(int(text)))
for bad in [2**64, -2**63 - 1]:  # out of range: torch refuses them, and so must the C parser
    try:
        gen(bad)
        raise SystemExit("torch accepted seed %d; the C parser refuses it" % bad)
    except (ValueError, OverflowError, RuntimeError):
        pass
save(seeds, "rng_seeds.safetensors", __file__, "see names")
