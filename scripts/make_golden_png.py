#!/usr/bin/env python3
"""Writes the golden PNG files that tests/test_png.c decodes: tests/golden/png/.

    python3 scripts/make_golden_png.py          (Pillow and numpy; pypng too, as a second oracle)

Each golden image NAME.png comes with NAME.raw, the samples our decoder must return, byte for
byte, after png.c's normalisation (palette -> RGB/RGBA, tRNS colour key -> alpha channel,
1/2/4-bit -> 8-bit as v * 255 / (2^d - 1), 16-bit kept; 16-bit samples stored little-endian),
and a line in manifest.txt: `NAME width height channels depth`.

Two kinds of files:
  pil_*    written by Pillow's PNG encoder (8-bit gray/gray+alpha/RGB/RGBA, 1-bit gray, 1/2/4/8-bit
           palette with and without tRNS, 16-bit gray, gray/RGB with a tRNS colour key, and a file
           with tEXt, zTXt and iTXt chunks). Pillow chooses each row's filter itself.
  craft_*  written by write_png() below, for what Pillow cannot write: 2/4-bit gray, 16-bit
           gray+alpha/RGB/RGBA, 16-bit colour keys, Adam7 interlacing (at sizes from 1x1 to
           33x17, so every pass is empty or partial somewhere), each of the five filters forced,
           image data split over many IDAT chunks, unknown ancillary chunks.

The expected samples are computed from the arrays we encode, never from a decoder, and every
file is then decoded by Pillow (where it represents the format exactly) and by pypng, and must
match; the script fails otherwise. The test's own encoder outputs (ours_*.png) are not made
here: tests/test_png.c writes them to build/png_out/ (see scripts/check_png_pil.py).
"""
import binascii
import os
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image, PngImagePlugin

try:
    import png as pypng  # pip install pypng
except ImportError:
    pypng = None

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "png")
MANIFEST = []  # (name, width, height, channels, depth)

# ----------------------------------------------------------------------------
# test patterns and the normalisation png.c performs


def pattern(h, w, c, depth, salt=0):
    """Deterministic samples in [0, 2^depth): varied enough that every filter gets picked."""
    y, x, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    v = x * 7 + y * 13 + ch * 51 + (x * y) // 3 + salt * 29
    if depth == 16:
        v = v * 4099 + (x * y * ch) * 31
    return (v % (1 << depth)).astype(np.int64)


def expected_samples(samples, color_type, depth, plte=None, trns=None):
    """What png.c returns for raw file samples (h, w, samples_per_pixel)."""
    if color_type == 3:
        idx = samples[..., 0]
        out = np.asarray(plte, dtype=np.int64)[idx]
        if trns is not None:
            alpha = np.full(len(plte), 255, dtype=np.int64)
            alpha[: len(trns)] = trns
            out = np.concatenate([out, alpha[idx][..., None]], axis=-1)
        return out.astype(np.uint8)
    out = samples.copy()
    if depth < 8:
        out = out * (255 // ((1 << depth) - 1))
    maxval = 65535 if depth == 16 else 255
    if trns is not None:  # colour key for gray or RGB
        match = np.all(samples == np.asarray(trns), axis=-1)
        out = np.concatenate([out, np.where(match, 0, maxval)[..., None]], axis=-1)
    return out.astype(np.uint16 if depth == 16 else np.uint8)


# ----------------------------------------------------------------------------
# a small PNG writer (spec https://www.w3.org/TR/png/), for what Pillow cannot write

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(ctype, data):
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", binascii.crc32(ctype + data) & 0xFFFFFFFF)


def pack_row(row, depth):
    """One row of samples (flat ints) -> bytes: big-endian 16-bit, or packed MSB-first below 8."""
    if depth == 16:
        return row.astype(">u2").tobytes()
    if depth == 8:
        return row.astype(np.uint8).tobytes()
    per = 8 // depth
    out = bytearray((len(row) * depth + 7) // 8)
    for i, v in enumerate(row):
        out[i // per] |= int(v) << (8 - depth - (i % per) * depth)
    return bytes(out)


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def paeth_ties(img, bpp):
    """Ties the Paeth predictor meets over a (rows, bytes) image between neighbours that differ,
    so a decoder that breaks ties in the wrong order gets them wrong: (a vs c, b vs c). An a vs b
    tie between different values cannot happen (it would need |p - c| < |p - a|)."""
    ties = [0, 0]
    for y in range(1, img.shape[0]):
        for i in range(bpp, img.shape[1]):
            a, b, c = int(img[y, i - bpp]), int(img[y - 1, i]), int(img[y - 1, i - bpp])
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            if pa == pc and pa < pb and a != c:
                ties[0] += 1
            if pb == pc and pb < pa and b != c:
                ties[1] += 1
    return ties


def filter_row(row, prev, bpp, ftype):
    out = bytearray(len(row))
    for i in range(len(row)):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][ftype]
        out[i] = (row[i] - pred) & 255
    return bytes([ftype]) + bytes(out)


def write_png(name, samples, color_type, depth, interlace=0, filters="cycle", plte=None, trns=None,
              idat_piece=None, extra=()):
    """samples: (h, w, channels) ints as stored in the file. filters: 0-4 for every row, or
    "cycle" for filter (pass + row) % 5. idat_piece: split the zlib stream into IDAT chunks of
    that many bytes (plus one empty IDAT). extra: (type, data) ancillary chunks placed before IDAT."""
    h, w, c = samples.shape
    assert c == CHANNELS[color_type]
    bpp = max(1, c * depth // 8)
    raw = bytearray()
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    for p, (x0, y0, dx, dy) in enumerate(passes):
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue  # empty passes contribute nothing, not even filter bytes
        prev = bytes(len(pack_row(sub[0].reshape(-1), depth)))
        for j in range(sub.shape[0]):
            row = pack_row(sub[j].reshape(-1), depth)
            f = (p + j) % 5 if filters == "cycle" else filters
            raw += filter_row(row, prev, bpp, f)
            prev = row
    z = zlib.compress(bytes(raw), 9)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, interlace))
    for ctype, cdata in extra:
        data += chunk(ctype, cdata)
    if plte is not None:
        data += chunk(b"PLTE", bytes(np.asarray(plte, dtype=np.uint8).reshape(-1)))
    if trns is not None:
        if color_type == 3:
            data += chunk(b"tRNS", bytes(trns))
        else:
            data += chunk(b"tRNS", b"".join(struct.pack(">H", v) for v in trns))
    if idat_piece:
        data += chunk(b"IDAT", b"")
        for i in range(0, len(z), idat_piece):
            data += chunk(b"IDAT", z[i : i + idat_piece])
    else:
        data += chunk(b"IDAT", z)
    data += chunk(b"IEND", b"")
    with open(os.path.join(OUT, name + ".png"), "wb") as f:
        f.write(data)
    return expected_samples(samples, color_type, depth, plte, trns)


# ----------------------------------------------------------------------------
# oracles


def filters_used(data):
    """Filter type of every row of a non-interlaced file (for the printout)."""
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        t = data[pos + 4 : pos + 8]
        if t == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data[pos + 8 : pos + 21])
        if t == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    w, h, depth, ct, _, _, interlace = ihdr
    if interlace:
        return "interlaced"
    raw = zlib.decompress(idat)
    stride = (w * CHANNELS[ct] * depth + 7) // 8 + 1
    return "filters " + "".join(str(raw[i * stride]) for i in range(h))


def check_pypng(path, want):
    if pypng is None:
        return "pypng missing"
    w, h, rows, info = pypng.Reader(filename=path).asDirect()
    got = np.array([list(r) for r in rows], dtype=np.int64).reshape(h, w, info["planes"])
    d = info["bitdepth"]
    if d < 8:  # pypng keeps 1/2/4-bit samples as they are; scale the way png.c does
        got = got * (255 // ((1 << d) - 1))
    assert got.shape == want.shape and np.array_equal(got, want.astype(np.int64)), f"{path}: pypng disagrees"
    return "pypng ok"


def check_pil(path, want):
    """Compares with Pillow where its decoded mode carries the same samples."""
    im = Image.open(path)
    im.load()
    c = want.shape[-1]
    if want.dtype == np.uint16:
        if im.mode in ("I;16", "I") and c in (1, 2):  # Pillow drops a 16-bit colour key's alpha
            got = np.array(im).astype(np.int64)
            assert np.array_equal(got, want[..., 0].astype(np.int64)), f"{path}: Pillow disagrees"
            return "PIL ok (gray only)"
        # Pillow reads 16-bit colour as 8-bit by keeping the high byte (gray+alpha as RGBA)
        got = np.array(im.convert("RGBA")).astype(np.int64)
        hi = want.astype(np.int64) >> 8
        if c == 2:
            hi = np.stack([hi[..., 0]] * 3 + [hi[..., 1]], axis=-1)
        if c == 3 or "transparency" in im.info:  # Pillow ignores a 16-bit RGB colour key
            got, hi = got[..., :3], hi[..., :3]
        assert np.array_equal(got, hi), f"{path}: Pillow disagrees"
        return "PIL ok (high bytes)"
    with open(path, "rb") as f:
        file_depth = f.read(25)[24]
    if im.mode == "L" and "transparency" in im.info and file_depth < 8:
        # Pillow compares the key with the samples after scaling them to 8 bits, so a key on
        # 1/2/4-bit gray never matches (pypng and libpng compare before scaling); gray only
        got = np.array(im)
        assert np.array_equal(got, want[..., 0]), f"{path}: Pillow disagrees"
        return "PIL ok (gray only)"
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    got = np.array(im.convert(mode)).reshape(want.shape)
    assert np.array_equal(got, want), f"{path}: Pillow disagrees"
    return "PIL ok"


def emit(name, want, note=""):
    path = os.path.join(OUT, name + ".png")
    h, w, c = want.shape
    depth = 16 if want.dtype == np.uint16 else 8
    with open(os.path.join(OUT, name + ".raw"), "wb") as f:
        f.write(want.astype("<u2" if depth == 16 else np.uint8).tobytes())
    oracles = [check_pil(path, want), check_pypng(path, want)]
    with open(path, "rb") as f:
        used = filters_used(f.read())
    MANIFEST.append((name, w, h, c, depth))
    print(f"  {name:28s} {w:3d}x{h:<3d} c{c} d{depth:<2d} {os.path.getsize(path):5d} B  {', '.join(oracles)}  {used} {note}")


# ----------------------------------------------------------------------------
# the files


def save_pil(name, im, **kw):
    im.save(os.path.join(OUT, name + ".png"), "PNG", **kw)


def make_pil_files():
    print("written by Pillow:")
    g = pattern(5, 7, 1, 8)
    save_pil("pil_gray8_7x5", Image.fromarray(g[..., 0].astype(np.uint8), "L"))
    emit("pil_gray8_7x5", expected_samples(g, 0, 8))

    b = pattern(17, 33, 1, 1)
    save_pil("pil_gray1_33x17", Image.fromarray(b[..., 0].astype(bool)).convert("1"))
    emit("pil_gray1_33x17", expected_samples(b, 0, 1))

    ga = pattern(5, 7, 2, 8)
    save_pil("pil_ga8_7x5", Image.fromarray(ga.astype(np.uint8), "LA"))
    emit("pil_ga8_7x5", expected_samples(ga, 4, 8))

    rgb = pattern(17, 33, 3, 8)
    save_pil("pil_rgb8_33x17", Image.fromarray(rgb.astype(np.uint8), "RGB"))
    emit("pil_rgb8_33x17", expected_samples(rgb, 2, 8))

    rgba = pattern(5, 7, 4, 8, salt=1)
    save_pil("pil_rgba8_7x5", Image.fromarray(rgba.astype(np.uint8), "RGBA"))
    emit("pil_rgba8_7x5", expected_samples(rgba, 6, 8))

    one = np.array([[[200, 100, 50]]])
    save_pil("pil_rgb8_1x1", Image.fromarray(one.astype(np.uint8), "RGB"))
    emit("pil_rgb8_1x1", expected_samples(one, 2, 8))

    # palettes: entry i = (i*3, 255 - i, i*7 mod 256)
    def pal(n):
        return [[(i * 3) % 256, 255 - i, (i * 7) % 256] for i in range(n)]

    for bits, (h, w), n, trns in [(8, (17, 33), 200, None), (4, (5, 7), 16, [0, 100, 200]),
                                  (2, (3, 9), 4, None), (1, (3, 9), 2, [17])]:
        idx = pattern(h, w, 1, 8) % n
        im = Image.fromarray(idx[..., 0].astype(np.uint8), "P")
        im.putpalette([v for e in pal(n) for v in e])
        name = f"pil_pal{bits}{'_trns' if trns else ''}_{w}x{h}"
        kw = {"bits": bits} if bits < 8 else {}
        if trns:
            kw["transparency"] = bytes(trns)
        save_pil(name, im, **kw)
        emit(name, expected_samples(idx, 3, bits, pal(n), trns))

    g16 = pattern(5, 7, 1, 16)
    save_pil("pil_gray16_7x5", Image.fromarray(g16[..., 0].astype(np.uint16)))
    emit("pil_gray16_7x5", expected_samples(g16, 0, 16))

    key = int(g[2, 3, 0])  # a gray value that occurs
    save_pil("pil_gray8_trns_7x5", Image.fromarray(g[..., 0].astype(np.uint8), "L"), transparency=key)
    emit("pil_gray8_trns_7x5", expected_samples(g, 0, 8, trns=[key]))

    rgb_small = pattern(5, 7, 3, 8, salt=2)
    rkey = [int(v) for v in rgb_small[1, 4]]
    save_pil("pil_rgb8_trns_7x5", Image.fromarray(rgb_small.astype(np.uint8), "RGB"), transparency=tuple(rkey))
    emit("pil_rgb8_trns_7x5", expected_samples(rgb_small, 2, 8, trns=rkey))

    # text chunks; tests/test_png.c checks these exact strings
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a photo of a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 42")
    info.add_text("Title", "caf\u00e9")  # Latin-1 tEXt: png.c converts it to UTF-8
    info.add_text("Comment", "zipped " * 20, zip=True)  # zTXt
    info.add_itxt("Emoji", "smile \U0001F600 \u00fc", lang="en", tkey="L\u00e4cheln")  # iTXt, plain
    info.add_itxt("Long", "\u00fc" * 100, zip=True)  # iTXt, compressed
    t = pattern(2, 3, 3, 8)
    save_pil("pil_text_3x2", Image.fromarray(t.astype(np.uint8), "RGB"), pnginfo=info)
    emit("pil_text_3x2", expected_samples(t, 2, 8), "(tEXt x2, zTXt, iTXt x2)")


def make_crafted_files():
    print("written by write_png() in this script:")
    for d in (1, 2, 4):
        s = pattern(17, 33, 1, d, salt=d)
        emit(f"craft_gray{d}_33x17", write_png(f"craft_gray{d}_33x17", s, 0, d))
        emit(f"craft_gray{d}_i_33x17", write_png(f"craft_gray{d}_i_33x17", s, 0, d, interlace=1))
    s = pattern(5, 7, 1, 2)
    emit("craft_gray2_trns_7x5", write_png("craft_gray2_trns_7x5", s, 0, 2, trns=[int(s[0, 1, 0])]))

    s = pattern(5, 7, 1, 16)
    emit("craft_gray16_trns_7x5", write_png("craft_gray16_trns_7x5", s, 0, 16, trns=[int(s[3, 2, 0])]))
    s = pattern(5, 7, 2, 16)
    emit("craft_ga16_7x5", write_png("craft_ga16_7x5", s, 4, 16))
    s = pattern(5, 7, 3, 16)
    emit("craft_rgb16_7x5", write_png("craft_rgb16_7x5", s, 2, 16))
    emit("craft_rgb16_trns_7x5", write_png("craft_rgb16_trns_7x5", s, 2, 16, trns=[int(v) for v in s[4, 6]]))
    s = pattern(9, 9, 4, 16)
    emit("craft_rgba16_i_9x9", write_png("craft_rgba16_i_9x9", s, 6, 16, interlace=1))

    # noise, so that the average filter's rounding and wrap-around are exercised, mixed with
    # small values, so that the Paeth predictor meets many ties (which neighbour wins matters)
    for seed in range(100):  # the first seed whose image has a few of each kind of tie
        rng = np.random.default_rng(seed)
        s = np.where(rng.random((7, 9, 3)) < 0.2, rng.integers(0, 256, (7, 9, 3)), rng.integers(0, 4, (7, 9, 3)))
        ties = paeth_ties(s.reshape(7, -1), 3)
        if min(ties) >= 3:
            break
    print(f"  (forced-filter image: seed {seed}, Paeth ties a/c {ties[0]}, b/c {ties[1]})")
    for f in range(5):
        emit(f"craft_rgb8_filter{f}_9x7", write_png(f"craft_rgb8_filter{f}_9x7", s, 2, 8, filters=f))

    # Adam7 at sizes where passes are empty (w or h <= the pass offset) or partial
    for w, h in [(1, 1), (2, 1), (1, 2), (3, 3), (4, 4), (5, 5), (7, 5), (8, 8), (9, 9)]:
        s = pattern(h, w, 1, 8, salt=w + h)
        emit(f"craft_gray8_i_{w}x{h}", write_png(f"craft_gray8_i_{w}x{h}", s, 0, 8, interlace=1))
    s = pattern(17, 33, 4, 8)
    emit("craft_rgba8_i_33x17", write_png("craft_rgba8_i_33x17", s, 6, 8, interlace=1))
    s = pattern(5, 7, 2, 8)
    emit("craft_ga8_i_7x5", write_png("craft_ga8_i_7x5", s, 4, 8, interlace=1))
    s = pattern(5, 7, 3, 8)
    emit("craft_rgb8_trns_i_7x5", write_png("craft_rgb8_trns_i_7x5", s, 2, 8, interlace=1, trns=[int(v) for v in s[2, 2]]))

    for d in (1, 2, 4, 8):
        n = min(1 << d, 37)
        plte = [[(i * 5) % 256, (i * 11) % 256, 255 - i] for i in range(n)]
        s = pattern(5, 7, 1, 8, salt=d) % n
        trns = [(i * 60) % 256 for i in range(max(1, n // 2))]  # covers only part of the palette
        emit(f"craft_pal{d}_trns_i_7x5", write_png(f"craft_pal{d}_trns_i_7x5", s, 3, d, interlace=1, plte=plte, trns=trns))

    # many IDAT chunks (the first empty), unknown ancillary chunks to skip
    s = pattern(5, 7, 3, 8, salt=5)
    extra = [(b"teSt", b"ignored by decoders"), (b"gAMA", struct.pack(">I", 45455))]
    emit("craft_rgb8_split_7x5", write_png("craft_rgb8_split_7x5", s, 2, 8, idat_piece=7, extra=extra),
         "(IDAT in 7-byte pieces, teSt and gAMA chunks)")


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):  # start clean, but keep the C test's ours_*.png
        if (f.startswith("pil_") or f.startswith("craft_")) and f.endswith((".png", ".raw")):
            os.remove(os.path.join(OUT, f))
    versions = f"Pillow {PIL.__version__}, numpy {np.__version__}, pypng {pypng.__version__ if pypng else 'missing'}, zlib {zlib.ZLIB_VERSION}"
    print(f"make_golden_png.py: {versions}")
    if pypng is None:
        print("warning: pypng is not installed (pip install pypng); 16-bit colour is checked against Pillow's high bytes only")
    make_pil_files()
    make_crafted_files()
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("# tests/golden/png: written by scripts/make_golden_png.py (" + versions + ")\n")
        f.write("# file width height channels depth: the samples png.c must return, in file.raw (16-bit little-endian)\n")
        for m in MANIFEST:
            f.write("%s %d %d %d %d\n" % m)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(MANIFEST)} golden images, tests/golden/png holds {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
