#!/usr/bin/env python3
"""Writes tests/golden/image/image_ref.safetensors: Pillow's bytes for the image.c functions.

    pip install pillow numpy torch transformers safetensors
    python3 scripts/make_golden_image.py [--check N]

Inputs are small deterministic images (a 37x23 pattern with noise in gray, gray+alpha, RGB and
RGBA) stored in the file, and a 1365x768 "storyboard" image that is not stored: synthetic() below
and synthetic_pixel() in tests/test_image.c compute it with the same integer arithmetic.

Tensors (all uint8 unless noted; images are (H, W, C)):
  src.<kind>                          kind = gray, la, rgb, rgba
  resize.<kind>.<filter>.<W>x<H>      Image.resize((W, H), filter) of src.<kind> (filter = nearest,
                                      box, bilinear, bicubic, lanczos); the test runs every tensor
                                      whose name starts with "resize."
  synth.<filter>.<W>x<H>              the same for the synthetic 1365x768 RGB image
  src16.<kind>                        int32 (H, W, C): 16-bit samples, as png.c decodes a 16-bit PNG
  convert.<kind>.rgb                  PIL's convert("RGB") of the image PIL decodes from that PNG
  convert.<kind>.over_white           transformers' image_transforms.convert_to_rgb of the same
  (kinds for convert.*: gray, la, rgb, rgba from src.*, and gray16, la16, rgb16, rgba16)

--check N also runs N random resizes (sizes 1..120, every filter and channel count) against
the C build (./build/cpu/image.o linked into a small checker in /tmp) and prints mismatches:
that is how the pass-order rule of Pillow 13 (image.c resample_separable) was pinned down.
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from transformers.image_transforms import convert_to_rgb

from golden_common import save

SEED = 1234
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def synthetic(w, h):
    """The 1365x768 test image: a checkerboard, ramps and hash noise, in uint32 arithmetic
    (tests/test_image.c synthetic_pixel computes the same)."""
    y, x, c = np.meshgrid(np.arange(h, dtype=np.uint64), np.arange(w, dtype=np.uint64), np.arange(3, dtype=np.uint64),
                          indexing="ij")
    m = np.uint64(0xFFFFFFFF)
    hsh = (x * np.uint64(374761393) + y * np.uint64(668265263) + c * np.uint64(2246822519)) & m
    hsh = ((hsh ^ (hsh >> np.uint64(13))) * np.uint64(1274126177)) & m
    hsh ^= hsh >> np.uint64(16)
    noise = hsh & np.uint64(63)
    checker = ((x // np.uint64(96) + y // np.uint64(64)) & np.uint64(1)) * np.uint64(100)
    ramp = (x * np.uint64(60)) // np.uint64(w) + (y * np.uint64(30)) // np.uint64(h) + c * np.uint64(15)
    return np.minimum(checker + ramp + noise, 255).astype(np.uint8)


def png_bytes(arr16):
    """A minimal 16-bit PNG of (H, W, C) samples (Pillow cannot write 16-bit gray+alpha/RGB/RGBA)."""
    h, w, c = arr16.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + arr16[r].astype(">u2").tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def pil(arr):
    return Image.fromarray(arr if arr.shape[2] > 1 else arr[..., 0], MODES[arr.shape[2]])


def as_hwc(pil_image):
    a = np.array(pil_image)
    return a if a.ndim == 3 else a[..., None]


def main():
    rng = np.random.default_rng(SEED)
    ref = {}
    H, W = 23, 37
    yy, xx = np.mgrid[0:H, 0:W]
    pattern = np.stack([(np.sin(xx / 3.0 + k) + np.cos(yy / 4.0 - k)) * 55 + 128 + 40 * ((xx // 7 + yy // 5) % 2)
                        for k in range(3)], -1)
    rgb = np.clip(pattern + rng.normal(0, 12, pattern.shape), 0, 255).astype(np.uint8)
    alpha = rng.integers(0, 256, (H, W, 1)).astype(np.uint8)
    alpha[0, :, 0] = 0   # fully transparent and fully opaque rows: the unpremultiply special cases
    alpha[1, :, 0] = 255
    src = {"gray": rgb[..., :1], "la": np.concatenate([rgb[..., :1], alpha], -1), "rgb": rgb,
           "rgba": np.concatenate([rgb, alpha], -1)}
    for k, v in src.items():
        ref[f"src.{k}"] = torch.from_numpy(np.ascontiguousarray(v))

    # every filter on RGB: up, down, one axis only, the vertical-first order of Pillow 13, 1x1, mixed
    sizes = [(80, 50), (13, 7), (36, 23), (37, 11), (30, 5), (1, 1), (111, 9), (5, 60)]
    cases = [("rgb", f, s) for f in FILTERS for s in sizes]
    cases += [(k, f, s) for k in ("gray", "la", "rgba") for f in FILTERS for s in [(50, 30), (20, 13)]]
    cases += [("gray", "bicubic", (360, 224))]  # CLIP's shortest edge 224, upscaling: int(224 * 37 / 23) = 360
    for kind, f, (w, h) in cases:
        out = as_hwc(pil(src[kind]).resize((w, h), FILTERS[f]))
        assert out.shape == (h, w, src[kind].shape[2])
        ref[f"resize.{kind}.{f}.{w}x{h}"] = torch.from_numpy(np.ascontiguousarray(out))

    synth = synthetic(1365, 768)
    for f, (w, h) in [("bicubic", (398, 224)), ("lanczos", (160, 90)), ("bilinear", (97, 55))]:
        ref[f"synth.{f}.{w}x{h}"] = torch.from_numpy(np.ascontiguousarray(as_hwc(Image.fromarray(synth).resize((w, h), FILTERS[f]))))

    # conversions to RGB: 8-bit images as PIL holds them, 16-bit ones through a PNG file as PIL opens it
    for kind, arr in src.items():
        im = pil(arr)
        ref[f"convert.{kind}.rgb"] = torch.from_numpy(np.array(im.convert("RGB")))
        ref[f"convert.{kind}.over_white"] = torch.from_numpy(convert_to_rgb(im, return_numpy=True))
    vals16 = np.array([0, 1, 200, 255, 256, 300, 4095, 32768, 65280, 65535], dtype=np.int64)
    for kind, c in (("gray16", 1), ("la16", 2), ("rgb16", 3), ("rgba16", 4)):
        a = rng.integers(0, 65536, (5, 10, c))
        a[0, :, 0] = vals16  # the edges of PIL's 16 -> 8 bit rules
        if c in (2, 4):
            a[1, :, -1] = [0, 255, 256, 65535, 32768, 65280, 1, 127, 128, 383]
        ref[f"src16.{kind[:-2]}"] = torch.from_numpy(a.astype(np.int32))
        im = Image.open(io.BytesIO(png_bytes(a)))
        im.load()
        ref[f"convert.{kind}.rgb"] = torch.from_numpy(np.array(im.convert("RGB")))
        ref[f"convert.{kind}.over_white"] = torch.from_numpy(convert_to_rgb(im, return_numpy=True))

    save(ref, "image/image_ref.safetensors", __file__, SEED,
         extra={"pillow": PIL.__version__, "transformers": transformers.__version__})


def check_random(n):
    """Random resizes against the C implementation (needs `make` first)."""
    import subprocess
    import tempfile

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    tmp = tempfile.mkdtemp()
    checker = os.path.join(tmp, "resize_check")
    src = os.path.join(tmp, "resize_check.c")
    with open(src, "w") as f:
        f.write(r'''#include <stdio.h>
#include <stdlib.h>
#include "image.h"
int main(int argc, char** argv) {
    FILE* in = fopen(argv[1], "rb"); FILE* out = fopen(argv[2], "wb"); int h[6];
    while (fread(h, sizeof(int), 6, in) == 6) {
        Image s = {0}, d; char err[512]; size_t n = (size_t)h[0] * h[1] * h[2];
        s.width = h[0]; s.height = h[1]; s.channels = h[2]; s.depth = 8; s.data = malloc(n);
        if (fread(s.data, 1, n, in) != n) return 1;
        if (image_resize_pil(&s, h[3], h[4], (ResampleFilter)h[5], &d, err)) { fprintf(stderr, "%s\n", err); return 1; }
        fwrite(d.data, 1, (size_t)h[3] * h[4] * h[2], out); image_free(&d); free(s.data);
    }
    fclose(out); return 0;
}
''')
    objs = [os.path.join(root, "build", "cpu", o) for o in ("image.o", "png.o", "common.o")]
    subprocess.run(["cc", "-O2", "-I", root, "-o", checker, src, *objs, "-lz", "-lm", "-fopenmp"], check=True)
    rng = np.random.default_rng(int(n))
    filters = list(FILTERS.values())
    blob, want, cases = bytearray(), bytearray(), []
    for _ in range(int(n)):
        c, w, h = (int(v) for v in (rng.integers(1, 5), rng.integers(1, 120), rng.integers(1, 120)))
        W, H, fi = int(rng.integers(1, 200)), int(rng.integers(1, 200)), int(rng.integers(0, 5))
        a = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        blob += struct.pack("6i", w, h, c, W, H, fi) + a.tobytes()
        want += as_hwc(pil(a).resize((W, H), filters[fi])).tobytes()
        cases.append((w, h, c, W, H, fi))
    with open(os.path.join(tmp, "in.bin"), "wb") as f:
        f.write(blob)
    subprocess.run([checker, os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")], check=True)
    got = open(os.path.join(tmp, "out.bin"), "rb").read()
    off, bad = 0, 0
    for w, h, c, W, H, fi in cases:
        k = W * H * c
        if got[off:off + k] != want[off:off + k]:
            bad += 1
            print("mismatch", (w, h, c), "->", (W, H), list(FILTERS)[fi])
        off += k
    print(f"{len(cases)} random resizes, {bad} differ from Pillow {PIL.__version__}")
    return bad


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(1 if check_random(sys.argv[2]) else 0)
    main()
