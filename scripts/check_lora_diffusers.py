"""Proves that diffusers loads the LoRA files `sdxl train` writes, and that its UNet with them gives
the output our merge gives.

    pip install torch diffusers transformers peft safetensors
    make && python3 scripts/check_lora_diffusers.py [--dir /tmp/lora_check]

For each case it trains a LoRA with ./sdxl train on the tiny SDXL of tests/golden (a few steps at a
large learning rate, so B is far from zero), loads the file with
StableDiffusionXLPipeline.load_lora_weights, evaluates the UNet on fixed random inputs at LoRA
strength 0.4 (peft's live adapters, set_adapters), and again, freshly loaded, after
fuse_lora(lora_scale=0.4) (with set_adapters' 0.4 as well it would be 0.16); writes
the first as a reference and runs `./sdxl verify unet --lora FILE --lora-scale 0.4` against it.
Each case also reports how far the LoRA moved diffusers' output, so a pass cannot come from a LoRA
that does nothing. Nothing is committed; docs/TRAINING.md keeps the figures.
"""
import argparse
import os
import subprocess
import sys

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "tests", "golden", "tiny_sdxl")
DATA = os.path.join(ROOT, "tests", "golden", "data")
CASES = [
    # name, sdxl train options, the file to load
    ("kohya, attention, alpha = rank", ["--targets", "attention"], "lora.safetensors"),
    ("kohya, transformer, alpha 2 of rank 8", ["--targets", "transformer", "--rank", "8", "--alpha", "2"], "lora.safetensors"),
    ("diffusers format, transformer, alpha 2 of rank 8", ["--targets", "transformer", "--rank", "8", "--alpha", "2"],
     "pytorch_lora_weights.safetensors"),
    ("kohya, transformer + convs (conv rank 8, alpha 2)", ["--targets", "transformer", "--conv-rank", "8", "--conv-alpha", "2"],
     "lora.safetensors"),
    ("diffusers format, transformer + convs", ["--targets", "transformer", "--conv-rank", "8", "--conv-alpha", "2"],
     "pytorch_lora_weights.safetensors"),
]


def unet_inputs():
    g = torch.Generator().manual_seed(5)
    return dict(sample=torch.randn(2, 4, 12, 20, generator=g), t=torch.tensor([999.0, 321.0]),
                ctx=torch.randn(2, 77, 96, generator=g), text_embeds=torch.randn(2, 32, generator=g),
                time_ids=torch.tensor([[768.0, 1365, 0, 10, 96, 160], [96, 160, 0, 0, 96, 160]]))


def unet_out(pipe, x):
    with torch.no_grad():
        return pipe.unet(x["sample"], x["t"], x["ctx"],
                         added_cond_kwargs={"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}).sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/lora_check")
    ap.add_argument("--sdxl", default=os.path.join(ROOT, "sdxl"))
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    x = unet_inputs()
    base = StableDiffusionXLPipeline.from_pretrained(MODEL, torch_dtype=torch.float32)
    out_base = unet_out(base, x)
    rows, ok = [], True
    for i, (name, options, filename) in enumerate(CASES):
        case_dir = os.path.join(args.dir, f"case{i}")
        os.makedirs(case_dir, exist_ok=True)
        lora = os.path.join(case_dir, "lora.safetensors")
        diffusers_file = os.path.join(case_dir, "pytorch_lora_weights.safetensors")
        subprocess.run([args.sdxl, "train", "--model", MODEL, "--data", DATA, "--out", lora, "--out-diffusers",
                        diffusers_file, "--steps", "6", "--grad-accum", "1", "--lr", "1e-2", "--resolution", "128",
                        "--bucket-min", "64", "--bucket-step", "32", "--no-cache", "--quiet", "--checkpoint-every", "0",
                        *options], check=True, stdout=subprocess.DEVNULL)
        path = os.path.join(case_dir, filename)
        pipe = StableDiffusionXLPipeline.from_pretrained(MODEL, torch_dtype=torch.float32)
        pipe.load_lora_weights(path, adapter_name="storyboard")
        pipe.set_adapters(["storyboard"], adapter_weights=[0.4])
        out_live = unet_out(pipe, x)
        pipe = StableDiffusionXLPipeline.from_pretrained(MODEL, torch_dtype=torch.float32)
        pipe.load_lora_weights(path, adapter_name="storyboard")  # adapter weight 1: fuse_lora's scale is the strength
        pipe.fuse_lora(lora_scale=0.4)
        pipe.unload_lora_weights()
        out_fused = unet_out(pipe, x)
        ref = os.path.join(case_dir, "ref.safetensors")
        save_file({**{k: v.contiguous() for k, v in x.items()}, "out": out_live.contiguous()}, ref)
        run = subprocess.run([args.sdxl, "verify", "unet", "--unet", os.path.join(MODEL, "unet"), "--lora", path,
                              "--lora-scale", "0.4", "--ref", ref, "--rtol", "1e-4"], capture_output=True, text=True)
        line = [l for l in run.stdout.splitlines() if "relative to max" in l]
        moved = ((out_live - out_base).abs().max() / out_base.abs().max()).item()
        fused = ((out_fused - out_live).abs().max() / out_live.abs().max()).item()
        passed = run.returncode == 0
        ok &= passed
        number = line[0].split("relative to max |ref| ")[1].split(" ")[0] if line else "?"
        rows.append((name, filename, moved, fused, f"{number} ({'PASS' if passed else 'FAIL: ' + run.stderr.strip()[-80:]})"))
    print(f"diffusers {__import__('diffusers').__version__}, peft {__import__('peft').__version__}, torch {torch.__version__}\n")
    print("| case | file | LoRA moved diffusers' UNet output | diffusers fused vs live | ours (merged) vs diffusers (live), tolerance 1e-4 |")
    print("|---|---|---|---|---|")  # each: max |difference| / max |output|
    for name, filename, moved, fused, verdict in rows:
        print(f"| {name} | `{filename}` | {moved:.3g} | {fused:.2g} | {verdict} |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
