"""diffusers on PyTorch, timed the way `sdxl bench` times sdxl.c, for the ratios in docs/.

    pip install torch diffusers transformers
    python3 scripts/bench_torch.py unet --size 512 --batch 1                 # CPU, fp32, all cores
    python3 scripts/bench_torch.py unet --device cuda --dtype float16        # 1024x1024 and 1368x768, batch 2
    python3 scripts/bench_torch.py generate --device cuda --dtype float16    # a whole 25-step thumbnail
    python3 scripts/bench_torch.py train --device cuda --dtype float16       # LoRA training steps at 1024^2
    python3 scripts/bench_torch.py train --unet-config tests/golden/tiny_sdxl/unet/config.json --size 512

unet:     the full-size SDXL base UNet architecture (the values of its unet/config.json), random
          weights (nothing is downloaded), 77 text tokens, PyTorch's default attention (SDPA),
          eager mode; one warm-up, then --repeat evaluations: the median and the best, and the
          peak memory PyTorch allocated.
generate: StableDiffusionXLPipeline built from SDXL base's configs with random weights: both
          CLIP text encoders, the UNet, the VAE (upcast to fp32 for decoding, diffusers' default
          for SDXL: force_upcast), Euler; the tokenizers are the byte-level ones `sdxl bench
          generate` writes under build/ (--tokenizer), since SDXL's own cannot be downloaded.
          The benchmark's short prompt and negative prompt (one chunk each), CFG 12, at 1368x768
          (diffusers needs multiples of 8; sdxl.c generates at 1368x768 and crops to 1365). One
          2-step warm-up, then the timed generation.
train:    train_text_to_image_lora_sdxl.py's step on the same UNet (or --unet-config's
          architecture): LoRA rank 4 on to_q/to_k/to_v/to_out.0 (peft's lora.Linear computation,
          written out below so the GPU machine needs no peft/transformers), the UNet frozen in --dtype,
          LoRA weights in fp32, autocast and GradScaler for float16 (as accelerate's fp16 mixed
          precision), the epsilon MSE loss on a noisy latent at --size (1024), batch 1; without and
          with unet.enable_gradient_checkpointing(). One warm-up, then --repeat timed micro-steps
          (the median), then a timed optimizer step of --accum micro-steps (unscale, clip 1, AdamW).
"""
import argparse
import statistics
import time

import torch

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    norm_num_groups=32, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, upcast_attention=False,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
# the prompts of `sdxl bench generate` (bench.c): one 77-token chunk each with the byte-level tokenizer
PROMPT = "a detective opens a door, black and white storyboard"
NEGATIVE = "colors, color, colorful, double body, double face"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory(device):
    if device != "cuda":
        return ""
    return (f", peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated by PyTorch "
            f"({torch.cuda.max_memory_reserved() / 2**20:.0f} MiB reserved)")


def bench_unet(args, dtype):
    from diffusers import UNet2DConditionModel
    t0 = time.time()
    with torch.device(args.device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}: "
          f"SDXL UNet {n_params} parameters, built in {time.time() - t0:.1f} s")
    sizes = [(args.size, args.size)] if args.size else [(args.width, args.height)] if args.width else [(1024, 1024), (1368, 768)]
    for W, H in sizes:
        h, w, B = H // 8, W // 8, args.batch
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(B, 4, h, w, generator=g).to(args.device, dtype)
        ctx = torch.randn(B, 77, 2048, generator=g).to(args.device, dtype)
        added = {"text_embeds": torch.randn(B, 1280, generator=g).to(args.device, dtype),
                 "time_ids": torch.tensor([[H, W, 0, 0, H, W]] * B, dtype=dtype, device=args.device)}
        t = torch.full((B,), 500.0, device=args.device)

        def run():
            with torch.no_grad():
                unet(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added)
            sync(args.device)

        run()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeat):
            t1 = time.time()
            run()
            times.append(time.time() - t1)
        median = statistics.median(times)
        print(f"unet {W}x{H} px (latent {w}x{h}), batch {B}, {args.dtype}: {median:.4f} s per evaluation "
              f"(median of {args.repeat}; best {min(times):.4f}){peak_memory(args.device)}")


def bench_generate(args, dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    t0 = time.time()
    common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    c1 = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        hidden_act="quick_gelu", projection_dim=768, **common)
    c2 = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                        hidden_act="gelu", projection_dim=1280, **common)
    with torch.device(args.device):
        te1 = CLIPTextModel(c1).to(dtype).eval()
        te2 = CLIPTextModelWithProjection(c2).to(dtype).eval()
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype).eval()
        vae = AutoencoderKL(**SDXL_VAE).to(dtype).eval()
    tok1 = CLIPTokenizer(f"{args.tokenizer}/vocab.json", f"{args.tokenizer}/merges.txt", model_max_length=77)
    tok2 = CLIPTokenizer(f"{args.tokenizer}_2/vocab.json", f"{args.tokenizer}_2/merges.txt", pad_token="!",
                         model_max_length=77)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                     unet=unet, scheduler=sched).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    print(f"torch {torch.__version__}, device {args.device}, {args.dtype}: random SDXL pipeline built in "
          f"{time.time() - t0:.1f} s")
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=args.width or 1368, height=args.height or 768,
              guidance_scale=12.0, generator=torch.Generator(args.device).manual_seed(42))
    with torch.no_grad():
        pipe(num_inference_steps=2, **kw)
        sync(args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t1 = time.time()
        pipe(num_inference_steps=args.steps, **kw)
        sync(args.device)
    print(f"thumbnail {kw['width']}x{kw['height']}, {args.steps} Euler steps, CFG 12: {time.time() - t1:.3f} s end to end"
          f"{peak_memory(args.device)}")


class LoraLinear(torch.nn.Module):
    """peft's lora.Linear forward: base(x) + lora_B(lora_A(x)) * scaling, A ~ N(0, 1/r), B = 0."""

    def __init__(self, base, r=4, alpha=4):
        super().__init__()
        self.base, self.scaling = base, alpha / r
        self.lora_A = torch.nn.Linear(base.in_features, r, bias=False, device=base.weight.device)
        self.lora_B = torch.nn.Linear(r, base.out_features, bias=False, device=base.weight.device)
        torch.nn.init.normal_(self.lora_A.weight, std=1 / r)
        torch.nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def add_lora(unet, targets=("to_q", "to_k", "to_v", "to_out.0")):
    for name, module in list(unet.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and any(full.endswith(t) for t in targets):
                setattr(module, child_name, LoraLinear(child))


def bench_train(args, dtype):
    import json

    from diffusers import UNet2DConditionModel
    config = json.load(open(args.unet_config)) if args.unet_config else SDXL_UNET
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    size = args.size or 1024
    h = w = size // 8
    B = args.batch
    g = torch.Generator().manual_seed(1)
    for checkpointing in (False, True):
        torch.manual_seed(0)
        with torch.device(args.device):
            unet = UNet2DConditionModel(**config).to(dtype)
        unet.requires_grad_(False)
        add_lora(unet)  # the LoRA weights stay fp32 (cast_training_params)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2)
        fp16 = dtype == torch.float16
        scaler = torch.amp.GradScaler(args.device, enabled=fp16)
        cross = config["cross_attention_dim"]
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        latents = torch.randn(B, 4, h, w, generator=g).to(args.device, dtype)
        noise = torch.randn(B, 4, h, w, generator=g).to(args.device, dtype)
        ctx = torch.randn(B, 77, cross, generator=g).to(args.device, dtype)
        added = {"text_embeds": torch.randn(B, pooled, generator=g).to(args.device, dtype),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * B, dtype=dtype, device=args.device)}
        t = torch.full((B,), 500, device=args.device)

        def micro():
            with torch.autocast(args.device, dtype=torch.float16, enabled=fp16):
                pred = unet(latents + noise, t, ctx, added_cond_kwargs=added).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            scaler.scale(loss / args.accum).backward()
            sync(args.device)

        def update():
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            sync(args.device)

        micro()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeat):
            t1 = time.time()
            micro()
            times.append(time.time() - t1)
        update()
        t2 = time.time()
        for _ in range(args.accum):
            micro()
        update()
        step = time.time() - t2
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.dtype}, {size}x{size}, "
              f"batch {B}, checkpointing {'on ' if checkpointing else 'off'}: {statistics.median(times):.4f} s per "
              f"micro-step (median of {args.repeat}; best {min(times):.4f}), {step:.3f} s per optimizer step of "
              f"{args.accum}{peak_memory(args.device)}")
        del unet, opt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="unet", choices=["unet", "generate", "train"])
    ap.add_argument("--unet-config", default=None, help="train: a unet/config.json instead of SDXL base's")
    ap.add_argument("--accum", type=int, default=4, help="train: micro-steps per optimizer step")
    ap.add_argument("--size", type=int, default=0, help="square image side (unet)")
    ap.add_argument("--width", type=int, default=0)
    ap.add_argument("--height", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokenizer", default="build/bench_tokenizer", help="generate: the folder `sdxl bench generate` writes")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.what == "unet":
        bench_unet(args, dtype)
    elif args.what == "train":
        if args.batch == 2 and "--batch" not in __import__("sys").argv:
            args.batch = 1  # training runs batch 1 (the unet bench's default of 2 is one CFG step)
        bench_train(args, dtype)
    else:
        bench_generate(args, dtype)


if __name__ == "__main__":
    main()
