#!/usr/bin/env python3
"""Writes the golden JPEG files that tests/test_jpeg.c decodes: tests/golden/jpeg/.

    python3 scripts/make_golden_jpeg.py          (Pillow with libjpeg-turbo, and numpy)

Each NAME.jpg comes with NAME.png, the pixels Pillow decodes from it (Image.open(f), then
.convert("RGB"), or the "L" image a grayscale file opens as), which jpeg_decode must return byte
for byte, and a line in manifest.txt: `NAME width height channels`. Files Pillow or our decoder
must refuse are listed as `NAME refuse WORDS`: jpeg_decode must fail with a one-line error
containing WORDS. The Pillow and libjpeg-turbo versions go in the manifest's first line.

Two kinds of files:
  pil_*    written by Pillow's encoder (libjpeg-turbo): quality 50/90/100 at 4:4:4, 4:2:2 and
           4:2:0, grayscale, progressive (with optimized tables, so successive approximation
           and end-of-band runs), restart markers, RGB without the YCbCr transform (keep_rgb:
           Adobe transform 0), 16-bit quantization tables (SOF1), an EXIF orientation tag, and
           tiny sizes (1x1, 2x2, ...) where libjpeg upsamples by replication instead of the
           triangular filters.
  craft_*  written by encode() below, for what Pillow cannot write: other sampling factors
           (4:4:0, 4:1:1, 4:1:0, 3x1, chroma at a higher resolution than luma, ...), sequential
           files with one scan per component, the standard Huffman tables left out (motion
           JPEG), Adobe transform 1 without JFIF, 'R','G','B' component ids, JFIF and Adobe
           together, progressive scripts with spectral selection and DC successive
           approximation at those sampling factors, tables redefined between scans, stray
           bytes and fill bytes between markers, and coefficients whose IDCT overshoots 0..255
           by far (which shows how libjpeg-turbo range-limits). Plus files that must be
           refused: sampling ratios libjpeg cannot upsample, more than 10 blocks per MCU, two
           components, and a progressive file whose scans stop before the AC coefficients are
           complete (Pillow smooths it; we refuse rather than guess differently).

The test pictures are made here (gradients, hard-edged saturated shapes, noise) with a fixed
seed; sizes are odd and not multiples of 8 or 16, so every edge case of the block grid shows up.
"""
import io
import os
import re
import sys

import numpy as np
import PIL
import PIL.features
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "jpeg")
MANIFEST = []  # lines after the header

# ----------------------------------------------------------------------------
# test pictures


def picture(w, h, seed):
    """RGB uint8 (h, w, 3): ramps, a sine, saturated discs and a rectangle, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    img[..., 0] = 255 * x / max(w - 1, 1)
    img[..., 1] = 255 * y / max(h - 1, 1)
    img[..., 2] = 128 + 100 * np.sin(x / 5.0 + y / 7.0)
    for _ in range(6):
        cx, cy = rng.integers(0, w), rng.integers(0, h)
        r = rng.integers(3, max(4, min(w, h) // 3))
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.choice([0, 255], size=3)
    x0, y0 = rng.integers(0, w // 2 + 1), rng.integers(0, h // 2 + 1)
    img[y0 : y0 + h // 3, x0 : x0 + w // 4] = rng.integers(0, 256, size=3)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# writing goldens


def pillow_decode(data):
    """What Pillow makes of a JPEG: (uint8 array, None) or (None, error message)."""
    try:
        im = Image.open(io.BytesIO(data))
        im = im.convert("L" if im.mode == "L" else "RGB")
        return np.asarray(im), None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        return None, f"{type(e).__name__}: {e}"


def golden(name, data):
    """Writes NAME.jpg and Pillow's pixels as NAME.png, and the manifest line."""
    pixels, error = pillow_decode(data)
    if pixels is None:
        sys.exit(f"{name}: Pillow cannot decode it ({error})")
    with open(os.path.join(OUT, name + ".jpg"), "wb") as f:
        f.write(data)
    Image.fromarray(pixels).save(os.path.join(OUT, name + ".png"), optimize=True)
    h, w = pixels.shape[:2]
    MANIFEST.append(f"{name} {w} {h} {1 if pixels.ndim == 2 else 3}")


def refused(name, data, words, pillow_refuses):
    """Writes NAME.jpg that jpeg_decode must refuse with an error containing `words`, and checks
    whether Pillow refuses it too (pillow_refuses says which we expect)."""
    pixels, error = pillow_decode(data)
    if (pixels is None) != pillow_refuses:
        sys.exit(f"{name}: expected Pillow to {'refuse' if pillow_refuses else 'decode'} it ({error})")
    with open(os.path.join(OUT, name + ".jpg"), "wb") as f:
        f.write(data)
    note = f"Pillow: {re.sub(r' at 0x[0-9a-f]+', '', error)}" if error else "Pillow decodes it"
    MANIFEST.append(f"{name} refuse {words}    # {note}")


def pil_jpeg(a, mode="RGB", **options):
    b = io.BytesIO()
    Image.fromarray(a).convert(mode).save(b, "JPEG", **options)
    return b.getvalue()


# ----------------------------------------------------------------------------
# a small JPEG encoder (ITU-T T.81), for what Pillow cannot write

ZIGZAG = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,
          7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31,
          39, 46, 53, 60, 61, 54, 47, 55, 62, 63]

# Annex K.1 example quantization tables (natural order), scaled like libjpeg's quality setting
K1_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
K1_CHROMA = np.array([17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                      47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32)

# Annex K.3 standard Huffman tables: counts per length 1..16, symbols
STD_DC_LUMA = ([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], list(range(12)))
STD_DC_CHROMA = ([0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], list(range(12)))
STD_AC_LUMA = ([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D], bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738"
    "393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5"
    "a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa"))
STD_AC_CHROMA = ([0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77], bytes.fromhex(
    "000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a3536"
    "3738393a434445464748494a535455565758595a636465666768696a737475767778797a82838485868788898a92939495969798999a"
    "a2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9fa"))


def quality_table(base, quality):
    """libjpeg's jpeg_quality_scaling applied to a K.1 table, clamped to 1..255."""
    scale = 5000 // quality if quality < 50 else 200 - quality * 2
    return np.clip((base * scale + 50) // 100, 1, 255)


def dct_matrix():
    c = np.zeros((8, 8))
    for u in range(8):
        for x in range(8):
            c[u, x] = (np.sqrt(0.5) if u == 0 else 1.0) / 2 * np.cos((2 * x + 1) * u * np.pi / 16)
    return c


DCT = dct_matrix()


def optimal_table(freq):
    """Huffman code lengths for symbol counts, at most 16 bits, no all-ones code (Annex K.2,
    figures K.1-K.4, as libjpeg's jpeg_gen_optimal_table). Returns (counts[16], symbols)."""
    f = [0] * 257
    for s, n in freq.items():
        f[s] = n
    f[256] = 1  # a reserved symbol takes the all-ones code
    size, others = [0] * 257, [-1] * 257
    while True:
        c1 = min((i for i in range(257) if f[i]), key=lambda i: (f[i], -i), default=-1)
        c2 = min((i for i in range(257) if f[i] and i != c1), key=lambda i: (f[i], -i), default=-1)
        if c2 < 0:
            break
        f[c1] += f[c2]
        f[c2] = 0
        size[c1] += 1
        while others[c1] >= 0:
            c1 = others[c1]
            size[c1] += 1
        others[c1] = c2
        size[c2] += 1
        while others[c2] >= 0:
            c2 = others[c2]
            size[c2] += 1
    bits = [0] * 33
    for i in range(257):
        if size[i]:
            bits[size[i]] += 1
    for i in range(32, 16, -1):  # K.3: move codes longer than 16 bits up the tree
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code
    symbols = [s for n in range(1, 33) for s in range(256) if size[s] == n]
    return bits[1:17], symbols


def huffman_codes(table):
    counts, symbols = table
    assert sum(counts) == len(symbols), "a Huffman table's counts and symbols disagree"
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            codes[symbols[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


class BitWriter:
    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, n):
        for i in range(n - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)  # byte stuffing (F.1.2.3)
                self.acc, self.n = 0, 0

    def flush(self):  # pad with 1 bits
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)


def category(v):
    return 0 if v == 0 else int(abs(v)).bit_length()


def magnitude_bits(v):
    s = category(v)
    return v if v >= 0 else v + (1 << s) - 1


def segment(marker, payload):
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def encode(rgb, sampling, *, quality=85, colorspace="ycc", ids=None, qslots=None, qtables=None, q16=False,
           jfif=True, adobe=None, scans=None, restart=0, std_tables=False, omit_dht=False, sof=0xC0,
           progressive=False, tables_per_scan=True, junk=b"", fill=0, coef_hook=None, ncomp=None):
    """A JPEG of rgb (h, w, 3) uint8 (or (h, w) for one component).

    sampling: [(h, v)] per component; colorspace: "ycc" (JFIF's RGB -> YCbCr), "rgb" (as is) or
    "gray"; ids: component ids (default 1, 2, 3); qtables: {slot: 64 values in natural order}
    (default K.1 scaled to quality, luma in slot 0, chroma in 1); qslots: table slot per
    component; q16: write 16-bit DQT; jfif/adobe: write APP0 JFIF / APP14 Adobe with that
    transform; scans: [(component indices, Ss, Se, Ah, Al)], default one interleaved sequential
    scan; restart: DRI interval in MCUs; std_tables: Annex K Huffman tables instead of optimal
    ones; omit_dht: leave the DHT out (a decoder must assume the standard tables); sof: the
    SOF marker; progressive: code the scans progressively (spectral selection, DC successive
    approximation; AC scans must have Ah = Al = 0); tables_per_scan: write tables before each scan;
    junk: bytes put between the tables and the first SOS (stray data); fill: FF fill bytes before
    each marker after the first; coef_hook(ci, coefs): edits the quantized coefficients
    (bh, bw, 64 natural order) of component ci; ncomp: keep only the first ncomp components."""
    if rgb.ndim == 2:
        planes = [rgb.astype(np.float64)]
    elif colorspace == "ycc":
        r, g, b = [rgb[..., i].astype(np.float64) for i in range(3)]
        planes = [0.299 * r + 0.587 * g + 0.114 * b,
                  -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
                  0.5 * r - 0.418688 * g - 0.081312 * b + 128]
    else:
        planes = [rgb[..., i].astype(np.float64) for i in range(3)]
    if ncomp:
        planes = planes[:ncomp]
    n = len(planes)
    H, W = planes[0].shape
    ids = ids or list(range(1, n + 1))
    qslots = qslots or [0] + [1] * (n - 1)
    if qtables is None:
        qtables = {0: quality_table(K1_LUMA, quality), 1: quality_table(K1_CHROMA, quality)}
    hmax, vmax = max(s[0] for s in sampling), max(s[1] for s in sampling)
    mcux, mcuy = -(-W // (8 * hmax)), -(-H // (8 * vmax))

    # components: resample, pad to the MCU grid by repeating edges, FDCT, quantize
    coefs, comp_blocks = [], []
    for ci, (h, v) in enumerate(sampling):
        cw, ch = -(-W * h // hmax), -(-H * v // vmax)
        plane = np.asarray(Image.fromarray(planes[ci].astype(np.float32)).resize((cw, ch), Image.BOX))
        bw, bh = mcux * h, mcuy * v
        padded = np.pad(plane, ((0, bh * 8 - ch), (0, bw * 8 - cw)), mode="edge") - 128
        blocks = padded.reshape(bh, 8, bw, 8).transpose(0, 2, 1, 3)
        f = np.einsum("ux,abxy,vy->abuv", DCT, blocks, DCT).reshape(bh, bw, 64)
        q = np.asarray(qtables[qslots[ci]], dtype=np.float64)
        c = np.round(f / q).astype(np.int64)
        if coef_hook:
            coef_hook(ci, c)
        coefs.append(c)
        comp_blocks.append((-(-cw // 8), -(-ch // 8)))  # blocks holding samples

    if scans is None:
        scans = [(list(range(n)), 0, 63, 0, 0)]

    # entropy-code each scan into tokens: ("h", kind, slot, symbol, bits, nbits) or ("rst", k)
    def scan_tokens(comps, ss, se, ah, al):
        tokens, pred = [], [0] * n
        one = len(comps) == 1
        if one:
            bw, bh = comp_blocks[comps[0]]
            units = [[(comps[0], by, bx)] for by in range(bh) for bx in range(bw)]
        else:
            units = [[(ci, my * sampling[ci][1] + by, mx * sampling[ci][0] + bx) for ci in comps
                      for by in range(sampling[ci][1]) for bx in range(sampling[ci][0])]
                     for my in range(mcuy) for mx in range(mcux)]
        eobrun = [0]

        def flush_eobrun(ci):
            if eobrun[0]:
                r = eobrun[0].bit_length() - 1
                tokens.append(("h", "ac", ci, r << 4, eobrun[0] - (1 << r), r))
                eobrun[0] = 0

        for u, unit in enumerate(units):
            if restart and u and u % restart == 0:
                if progressive and ss > 0:
                    flush_eobrun(comps[0])
                tokens.append(("rst", (u // restart - 1) & 7))
                pred = [0] * n
            for ci, by, bx in unit:
                blk = coefs[ci][by, bx]
                zz = [int(blk[ZIGZAG[k]]) for k in range(64)]
                if not progressive or (ss == 0 and ah == 0):  # sequential, or DC first
                    dc = zz[0] >> al if progressive else zz[0]  # arithmetic shift, as libjpeg's encoder
                    diff = dc - pred[ci]
                    pred[ci] = dc
                    tokens.append(("h", "dc", ci, category(diff), magnitude_bits(diff), category(diff)))
                if ss == 0 and ah != 0:  # DC refinement: bit Al of the DC value
                    tokens.append(("b", (zz[0] >> al) & 1, 1))
                if not progressive:
                    run = 0
                    last = max([k for k in range(1, 64) if zz[k]], default=0)
                    for k in range(1, last + 1):
                        if zz[k] == 0:
                            run += 1
                            continue
                        while run > 15:
                            tokens.append(("h", "ac", ci, 0xF0, 0, 0))
                            run -= 16
                        s = category(zz[k])
                        tokens.append(("h", "ac", ci, (run << 4) | s, magnitude_bits(zz[k]), s))
                        run = 0
                    if last < 63:
                        tokens.append(("h", "ac", ci, 0x00, 0, 0))
                elif ss > 0:  # AC first scan of a band, Al = 0
                    band = zz[ss : se + 1]
                    last = max([k for k in range(len(band)) if band[k]], default=-1)
                    if last < 0:
                        eobrun[0] += 1
                        if eobrun[0] == 0x7FFF:
                            flush_eobrun(ci)
                        continue
                    flush_eobrun(ci)
                    run = 0
                    for k in range(last + 1):
                        if band[k] == 0:
                            run += 1
                            continue
                        while run > 15:
                            tokens.append(("h", "ac", ci, 0xF0, 0, 0))
                            run -= 16
                        s = category(band[k])
                        tokens.append(("h", "ac", ci, (run << 4) | s, magnitude_bits(band[k]), s))
                        run = 0
                    if last < len(band) - 1:
                        eobrun[0] += 1
                        if eobrun[0] == 0x7FFF:
                            flush_eobrun(ci)
        if progressive and ss > 0:
            flush_eobrun(comps[0])
        return tokens

    # table slot per component and kind: luma 0, chroma 1 (gray or rgb: all 0)
    slot = [0] + [1 if colorspace == "ycc" else 0] * (n - 1)

    def tables_for(tokens):
        freq = {}
        for t in tokens:
            if t[0] == "h":
                freq.setdefault((t[1], slot[t[2]]), {}).setdefault(t[3], 0)
                freq[(t[1], slot[t[2]])][t[3]] += 1
        out = {}
        for key, fr in freq.items():
            if std_tables:
                out[key] = {("dc", 0): STD_DC_LUMA, ("dc", 1): STD_DC_CHROMA, ("ac", 0): STD_AC_LUMA,
                            ("ac", 1): STD_AC_CHROMA}[key]
            else:
                out[key] = optimal_table(fr)
        return out

    def dht(tables):
        payload = b""
        for (kind, s), (counts, symbols) in sorted(tables.items()):
            payload += bytes([(0x10 if kind == "ac" else 0) | s]) + bytes(counts) + bytes(symbols)
        return segment(0xC4, payload) if payload else b""

    def entropy(tokens, tables):
        codes = {k: huffman_codes(t) for k, t in tables.items()}
        bw = BitWriter()
        for t in tokens:
            if t[0] == "rst":
                bw.flush()
                bw.out += bytes([0xFF, 0xD0 + t[1]])
            elif t[0] == "b":
                bw.put(t[1], t[2])
            else:
                code, length = codes[(t[1], slot[t[2]])][t[3]]
                bw.put(code, length)
                bw.put(t[4], t[5])
        bw.flush()
        return bytes(bw.out)

    out = bytearray(b"\xff\xd8")
    if jfif:
        out += segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    if adobe is not None:
        out += segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes([adobe]))
    FF = b"\xff" * fill
    for s in sorted(set(qslots)):
        t = [int(qtables[s][ZIGZAG[k]]) for k in range(64)]
        out += FF + (segment(0xDB, bytes([0x10 | s]) + b"".join(v.to_bytes(2, "big") for v in t)) if q16
                     else segment(0xDB, bytes([s]) + bytes(t)))
    out += FF + segment(sof, bytes([8]) + H.to_bytes(2, "big") + W.to_bytes(2, "big") + bytes([n]) +
                        b"".join(bytes([ids[i], (sampling[i][0] << 4) | sampling[i][1], qslots[i]]) for i in range(n)))
    if restart:
        out += FF + segment(0xDD, restart.to_bytes(2, "big"))
    all_tokens = [scan_tokens(*s) for s in scans]
    if not tables_per_scan and not omit_dht:
        out += FF + dht(tables_for([t for ts in all_tokens for t in ts]))
    out += junk
    for (comps, ss, se, ah, al), tokens in zip(scans, all_tokens):
        tables = tables_for(tokens) if tables_per_scan else tables_for([t for ts in all_tokens for t in ts])
        if tables_per_scan and not omit_dht:
            out += FF + dht(tables)
        out += FF + segment(0xDA, bytes([len(comps)]) + b"".join(bytes([ids[c], (slot[c] << 4) | slot[c]])
                                                                 for c in comps) + bytes([ss, se, (ah << 4) | al]))
        out += entropy(tokens, tables)
    out += FF + b"\xff\xd9"
    return bytes(out)


def progressive_script(n, dc_al=1, bands=((1, 5), (6, 63))):
    """Scans for encode(progressive=True): interleaved DC at Al=dc_al, the DC refinements, then
    each component's AC bands at full precision."""
    scans = [(list(range(n)), 0, 0, 0, dc_al)]
    for ci in range(n):
        for ss, se in bands:
            scans.append(([ci], ss, se, 0, 0))
    for al in range(dc_al - 1, -1, -1):
        scans.append((list(range(n)), 0, 0, al + 1, al))
    return scans


# ----------------------------------------------------------------------------
# the goldens


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    turbo = PIL.features.version("libjpeg_turbo")
    if not turbo:
        sys.exit("Pillow is not built with libjpeg-turbo; the goldens must come from libjpeg-turbo")

    # Pillow's encoder
    a = picture(77, 61, 1)
    for q in (50, 90, 100):
        for sub, tag in ((0, "444"), (1, "422"), (2, "420")):
            golden(f"pil_q{q}_{tag}_77x61", pil_jpeg(a, quality=q, subsampling=sub))
    b = picture(45, 53, 2)
    for sub, tag in ((0, "444"), (1, "422"), (2, "420")):
        golden(f"pil_prog_{tag}_45x53", pil_jpeg(b, quality=85, subsampling=sub, progressive=True, optimize=True))
    golden("pil_prog_q100_420_45x53", pil_jpeg(b, quality=100, subsampling=2, progressive=True))
    golden("pil_optimize_420_45x53", pil_jpeg(b, quality=75, subsampling=2, optimize=True))
    golden("pil_gray_q90_41x39", pil_jpeg(picture(41, 39, 3), "L", quality=90))
    golden("pil_gray_prog_41x39", pil_jpeg(picture(41, 39, 3), "L", quality=70, progressive=True))
    golden("pil_restart_420_61x45", pil_jpeg(picture(61, 45, 4), quality=80, restart_marker_blocks=3))
    golden("pil_restart_rows_422_61x45", pil_jpeg(picture(61, 45, 4), quality=80, subsampling=1,
                                                  restart_marker_rows=1))
    golden("pil_restart_prog_420_61x45", pil_jpeg(picture(61, 45, 4), quality=80, restart_marker_blocks=2,
                                                  progressive=True))
    golden("pil_keep_rgb_43x29", pil_jpeg(picture(43, 29, 5), quality=90, keep_rgb=True))
    golden("pil_keep_rgb_prog_43x29", pil_jpeg(picture(43, 29, 5), quality=90, keep_rgb=True, progressive=True))
    # 16-bit tables: values above 255 make libjpeg write Pq=1 and SOF1
    qt = [[min(2 * (16 + k), 600) for k in range(64)], [300 + k for k in range(64)]]
    golden("pil_q16bit_420_49x35", pil_jpeg(picture(49, 35, 6), qtables=qt))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 (Image.open ignores it, and so do we)
    golden("pil_exif_orient6_33x21", pil_jpeg(picture(33, 21, 7), quality=85, exif=exif, comment=b"a comment"))
    for w, h in ((1, 1), (2, 2), (3, 3), (2, 7), (7, 2), (17, 5), (4, 33)):
        golden(f"pil_tiny_420_{w}x{h}", pil_jpeg(picture(w, h, w * 10 + h), quality=90, subsampling=2))
    golden("pil_tiny_422_2x3", pil_jpeg(picture(2, 3, 8), quality=90, subsampling=1))
    golden("pil_tiny_prog_420_3x2", pil_jpeg(picture(3, 2, 9), quality=90, subsampling=2, progressive=True))
    golden("pil_q95_420_120x97", pil_jpeg(picture(120, 97, 10), quality=95, subsampling=2))

    # our encoder: sampling factors Pillow cannot ask for
    c = picture(53, 43, 11)
    for samp, tag in (([(1, 2), (1, 1), (1, 1)], "440"), ([(4, 1), (1, 1), (1, 1)], "411"),
                      ([(4, 2), (1, 1), (1, 1)], "410"), ([(3, 1), (1, 1), (1, 1)], "311"),
                      ([(1, 3), (1, 1), (1, 1)], "131"), ([(2, 2), (1, 2), (2, 1)], "22_12_21"),
                      ([(1, 1), (2, 2), (2, 2)], "chroma_22"), ([(2, 1), (1, 1), (2, 1)], "21_11_21")):
        golden(f"craft_samp_{tag}_53x43", encode(c, samp, quality=90))
    # more than 10 blocks per MCU is fine in scans of one component each
    separate = [([0], 0, 63, 0, 0), ([1], 0, 63, 0, 0), ([2], 0, 63, 0, 0)]
    golden("craft_samp_44_22_11_53x43", encode(c, [(4, 4), (2, 2), (1, 1)], quality=90, scans=separate))
    golden("craft_samp_all_32_53x43", encode(c, [(3, 2), (3, 2), (3, 2)], quality=90, scans=separate))
    golden("craft_samp_440_prog_53x43", encode(c, [(1, 2), (1, 1), (1, 1)], quality=90, progressive=True,
                                               sof=0xC2, scans=progressive_script(3)))
    golden("craft_samp_411_prog_53x43", encode(c, [(4, 1), (1, 1), (1, 1)], quality=90, progressive=True,
                                               sof=0xC2, scans=progressive_script(3, dc_al=2)))
    golden("craft_samp_411_restart_53x43", encode(c, [(4, 1), (1, 1), (1, 1)], quality=90, restart=2))
    # a chroma component at most 2 samples wide: libjpeg replicates instead of filtering
    golden("craft_samp_h2v1_narrow_3x9", encode(picture(3, 9, 12), [(2, 1), (1, 1), (1, 1)], quality=95))
    # but h1v2 has no such exception
    golden("craft_samp_h1v2_narrow_2x9", encode(picture(2, 9, 12), [(1, 2), (1, 1), (1, 1)], quality=95))
    # a lone gray component with sampling factors other than 1x1
    golden("craft_gray_22_29x19", encode(picture(29, 19, 13)[..., 1], [(2, 2)], colorspace="gray"))

    # structure
    d = picture(47, 31, 14)
    golden("craft_noninterleaved_420_47x31", encode(d, [(2, 2), (1, 1), (1, 1)],
                                                    scans=[([0], 0, 63, 0, 0), ([1], 0, 63, 0, 0), ([2], 0, 63, 0, 0)],
                                                    restart=5))
    golden("craft_two_scans_47x31", encode(d, [(1, 1), (1, 1), (1, 1)],
                                           scans=[([0], 0, 63, 0, 0), ([1, 2], 0, 63, 0, 0)]))
    golden("craft_no_dht_420_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], std_tables=True, omit_dht=True))
    golden("craft_std_tables_sof1_47x31", encode(d, [(2, 1), (1, 1), (1, 1)], std_tables=True, sof=0xC1, q16=True))
    golden("craft_adobe_ycc_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], jfif=False, adobe=1))
    golden("craft_adobe_rgb_47x31", encode(d, [(1, 1), (1, 1), (1, 1)], jfif=False, adobe=0, colorspace="rgb"))
    golden("craft_adobe_rgb_sub_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], jfif=False, adobe=0, colorspace="rgb"))
    golden("craft_ids_rgb_47x31", encode(d, [(1, 1), (1, 1), (1, 1)], jfif=False, colorspace="rgb", ids=[82, 71, 66]))
    golden("craft_ids_other_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], jfif=False, ids=[7, 8, 9]))
    # JFIF wins over Adobe transform 0, and a transform other than 0/1 means YCbCr: both YCbCr data
    golden("craft_jfif_and_adobe0_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], jfif=True, adobe=0))
    golden("craft_adobe2_47x31", encode(d, [(1, 1), (1, 1), (1, 1)], jfif=False, adobe=2))
    golden("craft_junk_fill_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], junk=b"\x00\x12\xff\x00junk", fill=3,
                                           restart=4))
    golden("craft_tables_between_scans_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], progressive=True, sof=0xC2,
                                                      scans=progressive_script(3, bands=((1, 2), (3, 20), (21, 63)))))

    # progressive without coefficients 6..63: smoothing is on, but only touches 1..5 (complete here)
    golden("craft_prog_no_ac6_47x31", encode(d, [(2, 2), (1, 1), (1, 1)], progressive=True, sof=0xC2,
                                             scans=progressive_script(3, bands=((1, 5),))))

    # IDCT outputs far outside 0..255: large low-frequency coefficients at the coarsest table
    def overshoot(ci, c):
        c[::2, ::2, 0] = 8
        c[::2, ::2, 1] = -8
        c[::2, ::2, 8] = 8
        c[1::2, 1::2, 0] = -8
        c[1::2, 1::2, 9] = 8
    golden("craft_overshoot_444_40x24", encode(picture(40, 24, 15), [(1, 1), (1, 1), (1, 1)],
                                               qtables={0: np.full(64, 255), 1: np.full(64, 255)},
                                               coef_hook=overshoot))

    # refused: by both
    e = picture(29, 23, 16)
    refused("bad_samp_ratio_29x23", encode(e, [(3, 1), (2, 1), (1, 1)]), "not an integral ratio", True)
    refused("bad_mcu_blocks_29x23", encode(e, [(4, 3), (1, 1), (1, 1)]), "blocks in an MCU", True)
    refused("bad_two_components_29x23", encode(e, [(1, 1), (1, 1)], ncomp=2, jfif=False), "2-component", True)
    cmyk = io.BytesIO()
    Image.fromarray(e).convert("CMYK").save(cmyk, "JPEG", quality=80)
    refused("bad_cmyk_29x23", cmyk.getvalue(), "4-component", False)
    # refused by us only: progressive, AC coefficients 3..63 never sent; libjpeg's block smoothing
    # guesses 3..5 from the neighbouring DC values
    refused("bad_prog_incomplete_29x23", encode(e, [(2, 2), (1, 1), (1, 1)], progressive=True, sof=0xC2,
                                                scans=progressive_script(3, bands=((1, 2),))), "block smoothing",
            False)

    header = (f"# tests/golden/jpeg: written by scripts/make_golden_jpeg.py (Pillow {PIL.__version__}, "
              f"libjpeg-turbo {turbo}, numpy {np.__version__})\n"
              "# NAME width height channels: NAME.png holds the pixels Pillow decodes from NAME.jpg\n"
              "# NAME refuse WORDS: jpeg_decode must fail with an error containing WORDS\n")
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write(header + "\n".join(MANIFEST) + "\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(MANIFEST)} entries, {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
