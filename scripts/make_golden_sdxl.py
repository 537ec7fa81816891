"""Builds the tiny random-weight SDXL that the tests run, and diffusers' outputs for it.

    pip install torch diffusers transformers safetensors
    pip install --no-deps open_clip_torch      # only for the CLIP BPE merges
    python3 scripts/make_golden_sdxl.py

Writes
    tests/golden/tiny_sdxl/                 a diffusers StableDiffusionXLPipeline folder: the real SDXL
                                            structure (three UNet levels, DownBlock2D + 2 cross-attention
                                            levels, transformer depths, text_time added conditioning, two
                                            CLIP text encoders, a 4-level VAE, Euler scheduler config) with
                                            small widths, random weights stored in fp16, and a CLIP
                                            tokenizer cut to its first 500 merges (vocabulary 1014)
    tests/golden/tiny_sdxl_ref.safetensors  text encoders, one UNet evaluation at two latent sizes, and a
                                            full 3-step CFG generation from seed 42, all in fp32
Weights are stored in fp16 and every reference is computed from the fp16 values upcast to fp32, which
is exactly what our loader does, so the comparison is fp32 against fp32.
"""
import json
import os
import shutil

import numpy as np
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from golden_common import GOLDEN_DIR, save, write_clip_tokenizer_files

SEED = 42
torch.manual_seed(0)
folder = os.path.join(GOLDEN_DIR, "tiny_sdxl")
shutil.rmtree(folder, ignore_errors=True)

# ---- tokenizers: the real CLIP BPE, cut to 500 merges so the embedding tables stay small
tok_dir = "/tmp/sdxl_tiny_tokenizer"
vocab_size = write_clip_tokenizer_files(tok_dir, n_merges=500)  # 1014: ids 1012 = BOS, 1013 = EOS
bos, eos = vocab_size - 2, vocab_size - 1
tokenizer = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"), model_max_length=77)
tokenizer_2 = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"), pad_token="!",
                            model_max_length=77)

# ---- text encoders: CLIP ViT-L/14 shape (quick_gelu) and OpenCLIP bigG shape (gelu, projection)
te1_cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, projection_dim=32)
te2_cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=0, projection_dim=32)
text_encoder = CLIPTextModel(te1_cfg)
text_encoder_2 = CLIPTextModelWithProjection(te2_cfg)

# ---- UNet: SDXL's block layout with widths 16/32/64 (8 groups), heads of 16, depths 1/2/2
unet = UNet2DConditionModel(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(16, 32, 64), layers_per_block=2, transformer_layers_per_block=(1, 2, 2),
    attention_head_dim=(1, 2, 4),  # diffusers' name for the number of heads: 32/2 = 64/4 = 16 per head
    cross_attention_dim=32 + 64, norm_num_groups=8, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text (32) + six size/crop ids of 8
    upcast_attention=False,
)
# ---- VAE: four levels (three downsamples, factor 8) as SDXL's, widths 16/32/32/32, 8 groups
vae = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32), sample_size=64, scaling_factor=0.13025, force_upcast=True,
)
# Random init gives weights ~0.02 that make every output nearly constant; scale the weights up so
# the references exercise the arithmetic (values of order 1 everywhere).
with torch.no_grad():
    for model in (text_encoder, text_encoder_2, unet, vae):
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif p.dim() == 1:  # norm scales
                p.normal_(1.0, 0.1)
            else:
                fan_in = p[0].numel()
                p.normal_(0, 1.0 / fan_in**0.5)
        model.half().float()  # the values the fp16 files hold

sched_cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False, steps_offset=1,
                 timestep_spacing="leading", set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0,
                 clip_sample=False, trained_betas=None)
scheduler = EulerDiscreteScheduler.from_config(sched_cfg)  # keeps the SDXL keys Euler ignores, as the real file does
pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                 tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                 force_zeros_for_empty_prompt=True, add_watermarker=False)
pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
pipe.to(torch.float32)
# transformers 5 saves only tokenizer.json; real SDXL folders hold vocab.json and merges.txt as well
for sub in ("tokenizer", "tokenizer_2"):
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(folder, sub, f))

ref = {}
# ---- text encoders on token ids diffusers makes for two prompts
prompts = ["a man opens a door", ""]
with torch.no_grad():
    ids1 = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = tokenizer_2(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    o1 = text_encoder(ids1, output_hidden_states=True)
    o2 = text_encoder_2(ids2, output_hidden_states=True)
    ref["te1.ids"], ref["te2.ids"] = ids1.int(), ids2.int()
    ref["te1.penultimate"] = o1.hidden_states[-2]
    ref["te1.last"] = o1.last_hidden_state  # after final_layer_norm
    ref["te2.penultimate"] = o2.hidden_states[-2]
    ref["te2.text_embeds"] = o2.text_embeds

# ---- one UNet evaluation: latents 6x9 (not a multiple of 4: the up path uses explicit sizes) and 8x8
g = torch.Generator().manual_seed(1)
for name, (h, w) in {"unet_6x9": (6, 9), "unet_8x8": (8, 8)}.items():
    sample = torch.randn(2, 4, h, w, generator=g)
    t = torch.tensor([999.0, 37.5])  # one timestep per batch row
    ctx = torch.randn(2, 77, 96, generator=g)
    text_embeds = torch.randn(2, 32, generator=g)
    time_ids = torch.tensor([[8.0 * h, 8.0 * w, 0, 0, 8.0 * h, 8.0 * w], [1024, 1360, 16, 8, 768, 1365]])
    with torch.no_grad():
        out = unet(sample, t, encoder_hidden_states=ctx,
                   added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
    for k, v in dict(sample=sample, t=t, ctx=ctx, text_embeds=text_embeds, time_ids=time_ids, out=out).items():
        ref[f"{name}.{k}"] = v

# ---- the whole pipeline: 3 Euler steps, CFG 12, 72x48 px, latents from torch.randn(seed 42) on the CPU
H, W, steps, cfg = 48, 72, 3, 12.0
prompt, negative = "a man opens a door, storyboard", "colors, blurry"
latents0 = torch.randn((1, 4, H // 8, W // 8), generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
captured = {}


def on_step_end(p, i, t, kw):
    captured[f"pipe.latents_after_step{i}"] = kw["latents"].clone()
    return kw


with torch.no_grad():
    pe, npe, ppe, nppe = pipe.encode_prompt(prompt, negative_prompt=negative, do_classifier_free_guidance=True)
    image = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=cfg, height=H, width=W,
                 latents=latents0.clone(), output_type="np", callback_on_step_end=on_step_end,
                 callback_on_step_end_tensor_inputs=["latents"]).images
    # the same run up to the latents (output_type="latent"), then the VAE decode by hand
    latents_out = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=cfg, height=H,
                       width=W, latents=latents0.clone(), output_type="latent").images
sch = pipe.scheduler
ref.update(captured)
ref["pipe.latents0"] = latents0
ref["pipe.prompt_embeds"], ref["pipe.negative_prompt_embeds"] = pe, npe
ref["pipe.pooled"], ref["pipe.negative_pooled"] = ppe, nppe
ref["pipe.timesteps"], ref["pipe.sigmas"] = sch.timesteps.float(), sch.sigmas.float()
ref["pipe.latents_final"] = latents_out
ref["pipe.image"] = torch.from_numpy(np.ascontiguousarray(image))  # (1, H, W, 3) in [0, 1]
save(ref, "tiny_sdxl_ref.safetensors", __file__, SEED,
     extra={"prompt": prompt, "negative_prompt": negative, "steps": steps, "guidance_scale": cfg,
            "height": H, "width": W})
total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
print(f"wrote {folder}: {total / 1024:.0f} KiB")
