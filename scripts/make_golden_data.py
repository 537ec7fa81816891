"""Goldens for the trainer's data pipeline (data.c): tests/golden/data/.

    pip install pillow torch torchvision safetensors numpy
    python3 scripts/make_golden_data.py

- an imagefolder (three small PNGs and metadata.jsonl) for dataset_open and dataset_example;
- the expected pixels of DATA_CROP with a centre crop: torchvision's Resize(res, LANCZOS) ->
  CenterCrop(res) -> ToTensor -> Normalize([0.5], [0.5]) on PIL images, exactly what diffusers'
  train_text_to_image_lora_sdxl.py runs with --center_crop (no flip);
- the expected bucket of DATA_BUCKETS for many image sizes: kohya sd-scripts' make_bucket_resolutions
  and BucketManager.select_bucket, re-implemented below from their description (the repository is
  not a package), and the pixels after the cover-resize (PIL LANCZOS) and centre trim.
"""
import json
import math
import os

import numpy as np
import torch
import torchvision
import PIL
from PIL import Image
from safetensors.numpy import save_file
from torchvision import transforms

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "data")


def kohya_buckets(res, min_size, max_size, step):
    """make_bucket_resolutions((res, res), min_size, max_size, step)."""
    area = res * res
    resos = set()
    w = int(math.sqrt(area) // step) * step
    resos.add((w, w))
    w = min_size
    while w <= max_size:
        h = min(max_size, int((area // w) // step) * step)
        if h >= min_size:
            resos.add((w, h))
            resos.add((h, w))
        w += step
    return sorted(resos)


def kohya_select(resos, w, h):
    """BucketManager.select_bucket (no_upscale off): the nearest aspect ratio, numpy argmin."""
    if (w, h) in resos:
        return (w, h)
    ars = np.array([a / b for a, b in resos])
    return resos[int(np.abs(ars - w / h).argmin())]


def picture(w, h, seed):
    """Edges, gradients and colour: something a resize and a crop can get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x // 5 + y // 7) % 2) * 255], -1)
    img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def main():
    os.makedirs(OUT, exist_ok=True)
    sizes = [("wide.png", 91, 51), ("tall.png", 40, 62), ("square.png", 48, 48)]
    meta = []
    tensors = {}
    res = 32
    crop = transforms.Compose([transforms.Resize(res, interpolation=transforms.InterpolationMode.LANCZOS),
                               transforms.CenterCrop(res), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    small = kohya_buckets(res, 16, 64, 8)
    for i, (name, w, h) in enumerate(sizes):
        img = picture(w, h, i)
        img.save(os.path.join(OUT, name))
        meta.append({"file_name": name, "text": f"caption {i}: a {name[:-4]} frame", "other": i})
        tensors[f"{name}.crop"] = crop(img).numpy()
        bw, bh = kohya_select(small, w, h)
        scale = bh / h if w / h > bw / bh else bw / w
        rw, rh = max(int(w * scale + 0.5), bw), max(int(h * scale + 0.5), bh)
        r = img.resize((rw, rh), Image.LANCZOS)
        top, left = int(round((rh - bh) / 2.0)), int(round((rw - bw) / 2.0))
        r = r.crop((left, top, left + bw, top + bh))
        tensors[f"{name}.bucket"] = ((np.asarray(r, dtype=np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).copy()
        tensors[f"{name}.bucket_size"] = np.array([bw, bh], dtype=np.int32)
    with open(os.path.join(OUT, "metadata.jsonl"), "w") as f:
        for m in meta:
            f.write(json.dumps(m) + "\n")
    # buckets at SDXL's scale: (w, h) of an image -> kohya's bucket, for max 2048 and max 1024
    probes = [(1365, 768), (768, 1365), (1024, 1024), (1920, 1080), (1000, 1500), (640, 480), (3000, 1000), (512, 2048),
              (1344, 768), (777, 555)]
    for max_size in (2048, 1024):
        resos = kohya_buckets(1024, 256, max_size, 64)
        tensors[f"buckets_max{max_size}"] = np.array([[w, h, *kohya_select(resos, w, h)] for w, h in probes], dtype=np.int32)
    save_file(tensors, os.path.join(OUT, "data_ref.safetensors"),
              metadata={"script": "scripts/make_golden_data.py", "torch": torch.__version__,
                        "torchvision": torchvision.__version__, "pillow": PIL.__version__})
    print("wrote", OUT)


if __name__ == "__main__":
    main()
