"""References for vae.c: diffusers' AutoencoderKL on the tiny SDXL VAE, and an SGM-format copy of it.

    pip install torch diffusers safetensors
    python3 scripts/make_golden_vae.py          (after make_golden_sdxl.py, which writes the tiny VAE)

Reads  tests/golden/tiny_sdxl/vae               AutoencoderKL as SDXL configures it (4 levels, 2 layers per
                                                block, mid-block attention) with widths 16/32/32/32, 8 groups,
                                                weights stored in fp16 (loaded here as float32, as vae.c does)
Writes tests/golden/vae_ref.safetensors         inputs and outputs, float32:
         decode.a.z (1,4,6,9) -> decode.a.image     odd latent sizes, not multiples of 4
         decode.b.z (2,4,4,4) -> decode.b.image     a batch of two
         encode.image (1,3,48,72) -> encode.moments, encode.mean, encode.logvar (posterior, logvar clamped)
         encode.noise -> encode.sample              posterior.sample(generator) = mean + std * noise
       tests/golden/vae_sgm.safetensors         the same weights (fp16) under the single-file SGM/LDM names
                                                (first_stage_model.encoder.down.0.block.1.norm1.weight, ...,
                                                attention q/k/v/proj_out as [C, C, 1, 1] convs), plus one
                                                UNet-prefixed tensor that a VAE loader must ignore.
The LDM renaming below is ours; the file is accepted only after diffusers' own single-file loader
(AutoencoderKL.from_single_file with the tiny config) and convert_ldm_vae_checkpoint both give back
exactly the weights of the diffusers folder, so the mapping vae.c is tested against is diffusers'.
"""
import os

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file

from golden_common import GOLDEN_DIR, save

SEED = 1234
folder = os.path.join(GOLDEN_DIR, "tiny_sdxl", "vae")
vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()
assert all(p.dtype == torch.float32 for p in vae.parameters())
cfg = vae.config
levels = len(cfg.block_out_channels)

g = torch.Generator().manual_seed(SEED)
ref = {}
with torch.no_grad():
    # decode: AutoencoderKL.decode(z) = decoder(post_quant_conv(z)); the pipeline's 1/scaling_factor is outside
    for tag, shape in (("a", (1, 4, 6, 9)), ("b", (2, 4, 4, 4))):
        z = torch.randn(shape, generator=g)
        ref[f"decode.{tag}.z"] = z
        ref[f"decode.{tag}.image"] = vae.decode(z).sample
    # encode: quant_conv(encoder(x)) = moments; DiagonalGaussianDistribution chunks and clamps
    x = torch.rand((1, 3, 48, 72), generator=g) * 2 - 1
    moments = vae._encode(x)
    post = vae.encode(x).latent_dist
    ref["encode.image"] = x
    ref["encode.moments"] = moments
    ref["encode.mean"] = post.mean
    ref["encode.logvar"] = post.logvar
    sample = post.sample(generator=torch.Generator().manual_seed(SEED + 1))
    noise = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(SEED + 1))
    assert torch.equal(sample, post.mean + post.std * noise), "posterior.sample is not mean + std * randn"
    ref["encode.noise"] = noise
    ref["encode.sample"] = sample
save(ref, "vae_ref.safetensors", __file__, SEED, extra={"vae": "tests/golden/tiny_sdxl/vae"})


# ---- the SGM/LDM single-file names (inverse of diffusers' convert_ldm_vae_checkpoint)
def ldm_resnet(name):
    return name.replace("conv_shortcut", "nin_shortcut")


def ldm_attention(rest):
    table = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for d, l in table.items():
        if rest.startswith(d + "."):
            return l + rest[len(d):]
    raise KeyError(rest)


def to_ldm(key):
    part, rest = key.split(".", 1)
    if part in ("quant_conv", "post_quant_conv"):
        return key
    for d, l in (("conv_norm_out.", "norm_out."), ("conv_in.", "conv_in."), ("conv_out.", "conv_out.")):
        if rest.startswith(d):
            return f"{part}.{l}{rest[len(d):]}"
    f = rest.split(".")
    if f[0] == "mid_block":
        if f[1] == "resnets":
            return f"{part}.mid.block_{int(f[2]) + 1}." + ldm_resnet(".".join(f[3:]))
        return f"{part}.mid.attn_1." + ldm_attention(".".join(f[3:]))
    i = int(f[1])
    if f[0] == "down_blocks":
        if f[2] == "resnets":
            return f"{part}.down.{i}.block.{f[3]}." + ldm_resnet(".".join(f[4:]))
        return f"{part}.down.{i}.downsample.conv." + f[-1]  # downsamplers.0.conv.{weight,bias}
    if f[0] == "up_blocks":  # diffusers up_blocks.i is LDM up.(levels-1-i): LDM numbers by resolution
        j = levels - 1 - i
        if f[2] == "resnets":
            return f"{part}.up.{j}.block.{f[3]}." + ldm_resnet(".".join(f[4:]))
        return f"{part}.up.{j}.upsample.conv." + f[-1]
    raise KeyError(key)


stored = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))  # the fp16 values themselves
sgm = {}
for k, v in stored.items():
    lk = to_ldm(k)
    if ".mid.attn_1." in lk and lk.endswith(".weight") and v.dim() == 2:
        v = v[:, :, None, None]  # LDM's AttnBlock uses 1x1 Conv2d for q, k, v and proj_out
    sgm["first_stage_model." + lk] = v.contiguous()
assert len(sgm) == len(stored)
sgm["model.diffusion_model.out.2.bias"] = torch.zeros(4, dtype=torch.float16)  # not the VAE: must be ignored
sgm_path = save(sgm, "vae_sgm.safetensors", __file__, SEED, extra={"source": "tests/golden/tiny_sdxl/vae"})

# ---- verify the file with diffusers' own code, not with our renaming
want = {k: v.float() for k, v in stored.items()}
conv = convert_ldm_vae_checkpoint({k: v.float() for k, v in sgm.items()}, dict(cfg))
assert set(conv) == set(want), (set(conv) ^ set(want))
for k in want:
    assert torch.equal(conv[k], want[k]), k
single = AutoencoderKL.from_single_file(sgm_path, config=folder, torch_dtype=torch.float32)
got = single.state_dict()
assert set(got) == set(vae.state_dict())
for k, v in vae.state_dict().items():
    assert torch.equal(got[k], v), k
with torch.no_grad():
    assert torch.equal(single.decode(ref["decode.a.z"]).sample, ref["decode.a.image"])
print(f"wrote {sgm_path}: {len(sgm)} tensors, {os.path.getsize(sgm_path) / 1024:.1f} KiB; "
      "diffusers' from_single_file and convert_ldm_vae_checkpoint give back the folder's weights exactly")
