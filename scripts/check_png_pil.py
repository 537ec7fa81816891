#!/usr/bin/env python3
"""Checks that PNGs written by our encoder (png.c) read back exactly in Pillow.

    python3 scripts/check_png_pil.py [folder]      (default: tests/golden/png)

The files are tests/golden/png/ours_*.png. They come from the C test png_ours_golden, which
writes them to build/png_out/ and then compares their bytes with the committed copies. To make
or refresh the committed copies (after an intended encoder change):

    make && ./tests/run_tests png_ours          # writes build/png_out/ours_*.png
    python3 scripts/check_png_pil.py build/png_out
    cp build/png_out/ours_*.png tests/golden/png/

For each file this opens it with Pillow, recomputes the pattern the C test drew on a 37x23
image, sample (x, y, c) = (x*7 + y*13 + c*51) & 255 (8-bit files) or
(x*1031 + y*2053 + c*4099 + x*y*17) & 65535 (ours_rgba16.png), and requires exact equality of
mode, size, every sample and the `parameters` text chunk (tEXt for ASCII, iTXt otherwise).
Pillow reads 16-bit RGBA as 8-bit (the high bytes), so ours_rgba16.png is compared on those in
Pillow and in full with pypng when it is installed. Prints one line per file and exits non-zero
on any mismatch.
"""
import os
import sys

import numpy as np
import PIL
from PIL import Image

try:
    import png as pypng  # optional (pip install pypng): Pillow cannot hold 16-bit colour samples
except ImportError:
    pypng = None

# keep in step with test_png_ours_golden in tests/test_png.c
W, H = 37, 23
FILES = {
    "ours_gray.png": ("L", 1, "a photo of an astronaut riding a horse\nNegative prompt: blurry\n"
                               "Steps: 25, Sampler: Euler, CFG scale: 7.0, Seed: 42, Size: 37x23"),
    "ours_gray_alpha.png": ("LA", 2, "gray+alpha test\nSteps: 1, Seed: 1"),
    "ours_rgb.png": ("RGB", 3, "a red fox in the snow\nSteps: 30, Sampler: DDIM, CFG scale: 5.5, Seed: 1234, "
                               "Size: 37x23, Model: sd_xl_base_1.0"),
    "ours_rgba.png": ("RGBA", 4, "ein Fuchs im Schnee, gr\u00fcn \U0001F98A\nSteps: 30, Seed: 7"),
    "ours_rgba16.png": ("RGBA", 4, "16-bit RGBA test"),  # 16-bit: Pillow shows the high bytes
}


def chunk_types(path):
    with open(path, "rb") as f:
        data = f.read()
    pos, types = 8, []
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        types.append(data[pos + 4 : pos + 8].decode("latin-1"))
        pos += 12 + n
    return types


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "golden", "png")
    print(f"check_png_pil.py: Pillow {PIL.__version__}, numpy {np.__version__}, folder {os.path.normpath(folder)}")
    y, x, c = np.meshgrid(np.arange(H), np.arange(W), np.arange(4), indexing="ij")
    pattern8 = ((x * 7 + y * 13 + c * 51) & 255).astype(np.int64)
    pattern16 = ((x * 1031 + y * 2053 + c * 4099 + x * y * 17) & 65535).astype(np.int64)
    failures = 0
    for name, (mode, channels, params) in FILES.items():
        path = os.path.join(folder, name)
        problems = []
        if not os.path.exists(path):
            problems.append("missing")
        else:
            im = Image.open(path)
            im.load()
            got = np.array(im).reshape(im.size[1], im.size[0], -1).astype(np.int64)
            sixteen = name.endswith("16.png")
            want = (pattern16 >> 8 if sixteen else pattern8)[..., :channels]
            how = f"{W * H * channels} samples equal" + (" (high bytes)" if sixteen else "")
            if sixteen and pypng is not None:
                w, h, rows, info = pypng.Reader(filename=path).asDirect()
                full = np.array([list(r) for r in rows], dtype=np.int64).reshape(h, w, info["planes"])
                if info["bitdepth"] != 16 or not np.array_equal(full, pattern16[..., :channels]):
                    problems.append("pypng: 16-bit samples differ")
                how += f", pypng {pypng.__version__}: all 16 bits equal"
            if im.mode != mode:
                problems.append(f"mode {im.mode}, expected {mode}")
            if im.size != (W, H):
                problems.append(f"size {im.size}, expected {(W, H)}")
            elif got.shape != want.shape:
                problems.append(f"shape {got.shape}, expected {want.shape}")
            elif not np.array_equal(got, want):
                bad = np.argwhere(got != want)
                problems.append(f"{len(bad)} samples differ, first at (y, x, c) = {tuple(int(v) for v in bad[0])}")
            text = im.info.get("parameters")
            if text != params:
                problems.append(f"parameters chunk {text!r}, expected {params!r}")
            wanted_chunk = "tEXt" if params.isascii() else "iTXt"
            if wanted_chunk not in chunk_types(path):
                problems.append(f"no {wanted_chunk} chunk")
        if problems:
            failures += 1
            print(f"  {name:20s} FAIL: {'; '.join(problems)}")
        else:
            print(f"  {name:20s} ok: {mode} {W}x{H}, {how}, parameters ({wanted_chunk}) equal")
    print("all our PNGs read back exactly in Pillow" if failures == 0 else f"{failures} file(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
