"""Proves the real SDXL key names and shapes: a full-size SDXL UNet with random weights, built by
diffusers from SDXL base's config, written as a diffusers folder, then loaded by our loader and
compared on one UNet evaluation at a small latent.

    pip install torch diffusers safetensors
    python3 scripts/check_full_size.py [--dir /tmp/sdxl_full]     # writes ~5 GB (fp16), needs ~16 GB RAM
    ./sdxl verify unet --unet /tmp/sdxl_full/unet --ref /tmp/sdxl_full/unet_ref.safetensors

(scripts/check_full_size.sh runs both.) Nothing here is committed; docs/full-size-check.md keeps the
figures. The weights are stored in fp16, as the real checkpoint's .fp16 variant, and the reference
output is computed in fp32 from those fp16 values, as our loader upcasts them.
"""
import argparse
import os
import time

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from bench_torch import SDXL_UNET  # noqa: E402  (same directory)

ap = argparse.ArgumentParser()
ap.add_argument("--dir", default="/tmp/sdxl_full")
ap.add_argument("--height", type=int, default=24, help="latent height (24 = 192 px)")
ap.add_argument("--width", type=int, default=17, help="latent width; 17 is odd, so the up path takes explicit sizes")
args = ap.parse_args()
torch.manual_seed(0)
t0 = time.time()
unet = UNet2DConditionModel(**SDXL_UNET).eval()
unet.half()  # the stored values
unet_dir = os.path.join(args.dir, "unet")
unet.save_pretrained(unet_dir, safe_serialization=True, max_shard_size="2GB")  # sharded, as large checkpoints are
print(f"wrote {unet_dir} in {time.time() - t0:.0f} s: {sum(p.numel() for p in unet.parameters())} parameters (fp16)")
unet.float()
g = torch.Generator().manual_seed(1)
B, h, w = 2, args.height, args.width
ref = dict(sample=torch.randn(B, 4, h, w, generator=g), t=torch.tensor([999.0, 500.0]),
           ctx=torch.randn(B, 77, 2048, generator=g), text_embeds=torch.randn(B, 1280, generator=g),
           time_ids=torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768, 1368, 0, 2, 768, 1365]]))
t0 = time.time()
with torch.no_grad():
    ref["out"] = unet(ref["sample"], ref["t"], encoder_hidden_states=ref["ctx"],
                      added_cond_kwargs={"text_embeds": ref["text_embeds"], "time_ids": ref["time_ids"]}).sample
print(f"diffusers fp32 forward at latent {h}x{w}, batch {B}: {time.time() - t0:.1f} s; output std {ref['out'].std():.4f}")
save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(args.dir, "unet_ref.safetensors"),
          metadata={"script": "check_full_size.py", "torch": torch.__version__})
