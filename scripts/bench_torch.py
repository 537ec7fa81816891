"""diffusers' SDXL UNet on PyTorch, CPU or CUDA, timed the way `sdxl bench unet` times ours.

    pip install torch diffusers
    python3 scripts/bench_torch.py --size 512 --batch 1            # CPU, fp32, all cores
    python3 scripts/bench_torch.py --device cuda --dtype float16   # on a GPU

The full-size SDXL base UNet architecture (the values of its unet/config.json), random weights
(nothing is downloaded), 77 text tokens, one warm-up, then the best of --repeat evaluations.
"""
import argparse
import time

import torch
from diffusers import UNet2DConditionModel

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    norm_num_groups=32, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, upcast_attention=False,
)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    t0 = time.time()
    with torch.device(args.device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}: "
          f"SDXL UNet {n_params} parameters, built in {time.time() - t0:.1f} s")
    h = w = args.size // 8
    B = args.batch
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(B, 4, h, w, generator=g).to(args.device, dtype)
    ctx = torch.randn(B, 77, 2048, generator=g).to(args.device, dtype)
    added = {"text_embeds": torch.randn(B, 1280, generator=g).to(args.device, dtype),
             "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * B, dtype=dtype, device=args.device)}
    t = torch.full((B,), 500.0, device=args.device)


    def run():
        with torch.no_grad():
            unet(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added)
        if args.device == "cuda":
            torch.cuda.synchronize()


    run()
    best = 1e30
    for _ in range(args.repeat):
        t1 = time.time()
        run()
        best = min(best, time.time() - t1)
    print(f"unet {args.size}x{args.size} px (latent {h}x{w}), batch {B}: {best:.3f} s per evaluation (best of {args.repeat})")


if __name__ == "__main__":
    main()
