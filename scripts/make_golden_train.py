"""Goldens for the LoRA trainer (train.c) on the tiny SDXL UNet of tests/golden/tiny_sdxl.

    pip install torch diffusers peft safetensors
    python3 scripts/make_golden_train.py

Writes tests/golden/train/
    init.safetensors         peft's init_lora_weights="gaussian" after torch.manual_seed(1234): the A
                             matrices in the order peft creates them (our init draws the same stream)
    grads_attention.safetensors
                             one micro-batch through diffusers' UNet with peft LoRA on to_q/to_k/to_v/
                             to_out.0 (rank 4, alpha 4), B set non-zero so every gradient is: inputs,
                             the loss (F.mse_loss on epsilon, as train_text_to_image_lora_sdxl.py) and
                             the autograd gradients of every A and B, computed in float64 from the
                             float32 inputs (torch's own float32 error is in the metadata)
    grads_transformer.safetensors
                             the same with kohya's wider set (proj_in, proj_out, ff.net.0.proj,
                             ff.net.2 too), rank 4 alpha 8 (scale 2), v-prediction and min-SNR 5
    grads_convs.safetensors  the same with kohya's conv_dim set as well (every resnet's conv1, conv2,
                             conv_shortcut and time_emb_proj, every sampler conv): rank 4 alpha 4, the
                             3x3 convs rank 8 alpha 4 (peft's rank_pattern / alpha_pattern)
    trajectory.safetensors   10 optimizer updates of the script's recipe in f32 (AdamW, 2 micro-batches
                             per update, clip 1.0, cosine schedule with 2 warmup steps) fed fixed
                             latents, noise and timesteps: every micro-batch's loss and the final A, B
Everything is float32 on the CPU; the UNet's weights are the fp16 file's values, upcast.
"""
import copy
import os

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from peft import LoraConfig

from golden_common import GOLDEN_DIR, save

SCRIPT = __file__
UNET = os.path.join(GOLDEN_DIR, "tiny_sdxl", "unet")
ATTENTION = ["to_k", "to_q", "to_v", "to_out.0"]
TRANSFORMER = ATTENTION + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
CONVS = TRANSFORMER + ["conv1", "conv2", "conv_shortcut", "conv", "time_emb_proj"]  # kohya's conv_dim set
CONV3X3 = {"conv1": 8, "conv2": 8, "conv": 8}  # peft rank_pattern: kohya's conv_dim for the 3x3 convs
N, H, W, LCTX = 2, 10, 14, 77  # odd latent sizes: 10x14 -> 5x7 -> 3x4 exercises the general upsampling


def load_unet():
    unet = UNet2DConditionModel.from_pretrained(UNET, torch_dtype=torch.float32)
    unet.requires_grad_(False)
    return unet


def lora_modules(unet):
    """(name, module) of every peft LoRA layer, in named_modules order."""
    return [(n, m) for n, m in unet.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]


def schedule():
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def conditioning(g, n):
    context = torch.randn(n, LCTX, 96, generator=g)
    pooled = torch.randn(n, 32, generator=g)
    time_ids = torch.tensor([[768.0, 1365.0, 0.0, 21.0, 80.0, 112.0]] * n)
    return context, pooled, time_ids


def loss_of(unet, sched, latents, noise, t, context, pooled, time_ids, prediction="epsilon", snr_gamma=None):
    noisy = sched.add_noise(latents, noise, t)
    target = noise if prediction == "epsilon" else sched.get_velocity(latents, noise, t)
    pred = unet(noisy, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    snr = compute_snr(sched, t)
    w = torch.stack([snr, snr_gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
    w = w / snr if prediction == "epsilon" else w / (snr + 1)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, len(loss.shape)))) * w).mean()


def init_golden():
    unet = load_unet()
    torch.manual_seed(1234)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=ATTENTION))
    out = {f"A.{n}": m.lora_A["default"].weight for n, m in lora_modules(unet)}
    save(out, "train/init.safetensors", SCRIPT, 1234, {"rank": 4, "order": "peft named_modules"})


def grads_golden(name, targets, rank, alpha, prediction, snr_gamma, seed, rank_pattern=None, alpha_pattern=None):
    """The reference gradients are float64 autograd on the float32 inputs and weights (the float32
    run is kept only to measure how far torch's own f32 lands from them: the metadata's
    torch_f32_error, the largest gradient error relative to the largest gradient)."""
    unet = load_unet()
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets,
                                rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {}))
    g = torch.Generator().manual_seed(seed)
    for _, m in lora_modules(unet):  # B = 0 would leave A without gradient
        m.lora_B["default"].weight.data = torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.1
    latents = torch.randn(N, 4, H, W, generator=g)
    noise = torch.randn(N, 4, H, W, generator=g)
    t = torch.tensor([999, 37])
    context, pooled, time_ids = conditioning(g, N)
    out = {"latents": latents, "noise": noise, "timesteps": t, "context": context, "pooled": pooled, "time_ids": time_ids}
    for n, m in lora_modules(unet):
        out.update({f"A.{n}": m.lora_A["default"].weight.detach().clone(), f"B.{n}": m.lora_B["default"].weight.detach().clone()})
    grads = {}
    for dtype in (torch.float32, torch.float64):
        model = copy.deepcopy(unet).to(dtype)
        sched = schedule()
        sched.alphas_cumprod = sched.alphas_cumprod.to(dtype)
        loss = loss_of(model, sched, latents.to(dtype), noise.to(dtype), t, context.to(dtype), pooled.to(dtype),
                       time_ids.to(dtype), prediction, snr_gamma)
        loss.backward()
        grads[dtype] = {"loss": loss.detach().reshape(1)}
        for n, m in lora_modules(model):
            grads[dtype][f"gA.{n}"] = m.lora_A["default"].weight.grad
            grads[dtype][f"gB.{n}"] = m.lora_B["default"].weight.grad
    ref = grads[torch.float64]
    most = max(v.abs().max().item() for k, v in ref.items() if k != "loss")
    f32_error = max((grads[torch.float32][k].double() - v).abs().max().item() for k, v in ref.items() if k != "loss") / most
    out.update({k: v.float() for k, v in ref.items()})
    save(out, f"train/{name}.safetensors", SCRIPT, seed,
         {"rank": rank, "alpha": alpha, "prediction": prediction, "snr_gamma": snr_gamma or 0,
          "modules": len(lora_modules(unet)), "reference": "float64 autograd", "torch_f32_error": f"{f32_error:.3g}"})


def trajectory_golden(seed=7, updates=10, accum=2, lr=1e-3):
    unet = load_unet()
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=ATTENTION))
    g = torch.Generator().manual_seed(seed)
    for _, m in lora_modules(unet):  # start from non-zero B so the first updates move the loss
        m.lora_B["default"].weight.data = torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.05
    params = [p for p in unet.parameters() if p.requires_grad]
    init = {}
    for n, m in lora_modules(unet):
        init[f"A0.{n}"] = m.lora_A["default"].weight.detach().clone()
        init[f"B0.{n}"] = m.lora_B["default"].weight.detach().clone()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=2, num_training_steps=updates)
    sched = schedule()
    micro = updates * accum
    latents = torch.randn(micro, 1, 4, H, W, generator=g)
    noise = torch.randn(micro, 1, 4, H, W, generator=g)
    t = torch.randint(0, 1000, (micro, 1), generator=g)
    context, pooled, time_ids = conditioning(g, 2)  # two captions, alternating
    losses = []
    for k in range(micro):
        c = k % 2
        loss = loss_of(unet, sched, latents[k], noise[k], t[k], context[c:c + 1], pooled[c:c + 1], time_ids[c:c + 1])
        losses.append(loss.item())
        (loss / accum).backward()
        if (k + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            lr_sched.step()
            opt.zero_grad()
    out = {"latents": latents, "noise": noise, "timesteps": t, "context": context, "pooled": pooled,
           "time_ids": time_ids, "losses": torch.tensor(losses, dtype=torch.float32)}
    out.update(init)
    for n, m in lora_modules(unet):
        out[f"A.{n}"] = m.lora_A["default"].weight
        out[f"B.{n}"] = m.lora_B["default"].weight
    save(out, "train/trajectory.safetensors", SCRIPT, seed,
         {"updates": updates, "accum": accum, "lr": lr, "schedule": "cosine", "warmup": 2, "weight_decay": 1e-2,
          "max_grad_norm": 1.0})


if __name__ == "__main__":
    torch.set_num_threads(2)
    init_golden()
    grads_golden("grads_attention", ATTENTION, 4, 4, "epsilon", None, 11)
    grads_golden("grads_transformer", TRANSFORMER, 4, 8, "v_prediction", 5.0, 12)
    grads_golden("grads_convs", CONVS, 4, 4, "epsilon", None, 13, CONV3X3, {k: 4 for k in CONV3X3})
    trajectory_golden()
