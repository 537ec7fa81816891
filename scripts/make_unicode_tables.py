"""Writes unicode_tables.h: the Unicode facts unicode.c needs to reproduce the CLIP tokenizer
of transformers 5 (a `tokenizers` backend) on non-ASCII text; blip.c's BERT normalizer uses the
same NFD and lowercase.

    pip install unicodedata2==16.0.0 tokenizers     # then: python3 scripts/make_unicode_tables.py

What the tables are for (tokenization_clip.py builds the backend with these steps):
  - normalizer NFC            -> combining classes, canonical decompositions, which pairs compose
  - normalizer Lowercase      -> per-character lowercase mapping (Rust char::to_lowercase)
  - pre-tokenizer Split regex `...|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+` (Oniguruma)
                              -> ranges of \\p{L} and \\p{N}, and the characters of \\s
  - A1111's `\\s*\\bBREAK\\b\\s*` (Python `re`) -> Python's \\s (str.isspace); its \\w is L, N and '_'

Source of the data: Unicode 16.0.0 through the unicodedata2 package, because the installed
`tokenizers` (0.23) classifies (Oniguruma) and lowercases (Rust std) Unicode 16 characters
(Python 3.11's own unicodedata is 14.0). Its NFC is another matter: the
unicode-normalization-alignments crate has Unicode 9.0 tables, so the NFC tables keep only the
characters that crate knows (see nfc_tables). The lowercase mapping is read from tokenizers' own
Lowercase normalizer (the code we must match). Every table is checked against `tokenizers` before
the file is written: the classes through the pre-tokenizer for every code point, the NFC tables
through a model of unicode.c's algorithm on every code point and on 200,000 random sequences.
A mismatch stops the script.
"""
import os
import sys

import unicodedata2 as ud
from tokenizers import Regex, normalizers, pre_tokenizers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unicode_tables.h")
MAX_CP = 0x110000
SURROGATES = range(0xD800, 0xE000)


def ranges(pred):
    out, start = [], None
    for cp in range(MAX_CP + 1):
        inside = cp < MAX_CP and cp not in SURROGATES and pred(cp)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def is_letter(cp):
    return ud.category(chr(cp)).startswith("L")


def is_number(cp):
    return ud.category(chr(cp)).startswith("N")


# Oniguruma's \s for Unicode strings is the White_Space property; U+180E left it in Unicode 6.3.
ONIG_SPACE = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B)) + \
             [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
PY_SPACE = [cp for cp in range(MAX_CP) if cp not in SURROGATES and chr(cp).isspace()]


def verify_classes(letters, numbers):
    """Probes the Split pre-tokenizer with 'a?a' and '!?!' for every code point: a letter joins the
    a's, punctuation joins the !'s, a space separates both, a number separates both but stays."""
    split = pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                                 behavior="removed", invert=True)
    letter_set = {cp for a, b in letters for cp in range(a, b + 1)}
    number_set = {cp for a, b in numbers for cp in range(a, b + 1)}
    space_set = set(ONIG_SPACE)
    bad = []
    for cp in range(MAX_CP):
        if cp in SURROGATES:
            continue
        ch = chr(cp)
        n1 = len(split.pre_tokenize_str("a" + ch + "a"))
        n2 = len(split.pre_tokenize_str("!" + ch + "!"))
        got = {(1, 3): "L", (3, 3): "N", (2, 2): "S", (3, 1): "P"}.get((n1, n2), "?")
        want = "L" if cp in letter_set else "N" if cp in number_set else "S" if cp in space_set else "P"
        if got != want:
            bad.append(f"U+{cp:04X} tokenizers {got} table {want}")
    if bad:
        sys.exit("class mismatch:\n" + "\n".join(bad[:40]))


def lowercase_map():
    lower = normalizers.Lowercase()
    out = {}
    for cp in range(MAX_CP):
        if cp in SURROGATES:
            continue
        s = lower.normalize_str(chr(cp))
        if s != chr(cp):
            out[cp] = s
    return out


def case_runs(mapping):
    """Single-character mappings as runs {first, last, delta, stride}: stride 1 for blocks such as
    A-Z, stride 2 for the alternating upper/lower pairs of Latin Extended-A and friends."""
    singles = sorted((cp, ord(s) - cp) for cp, s in mapping.items() if len(s) == 1)
    runs = []
    i = 0
    while i < len(singles):
        cp, d = singles[i]
        best = (cp, cp, d, 1)
        for stride in (1, 2):
            j = i
            while j + 1 < len(singles) and singles[j + 1][0] == singles[j][0] + stride and singles[j + 1][1] == d:
                j += 1
            if singles[j][0] > best[1]:
                best = (cp, singles[j][0], d, stride)
        runs.append(best)
        # skip every entry covered by the run
        while i < len(singles) and singles[i][0] <= best[1]:
            i += 1
    return runs


def nfc_tables():
    """NFC data as tokenizers has it. Its NFC comes from the unicode-normalization-alignments crate,
    whose tables are Unicode 9.0: characters assigned later have class 0 and no decomposition
    there. Unicode never changes the class or canonical decomposition of an assigned character, so
    the Unicode 16 data restricted to the characters the crate knows are its tables; which ones it
    knows is asked of tokenizers itself."""
    nfc, nfd = normalizers.NFC(), normalizers.NFD()

    def class_known(cp):
        c = ud.combining(chr(cp))
        if c >= 240:
            assert cp == 0x345, hex(cp)  # U+0345 (class 240) is from Unicode 1.1
            return True
        # a known mark of a lower class moves in front of U+0345 (class 240)
        alone = nfc.normalize_str(chr(cp))
        return nfc.normalize_str(" \u0345" + chr(cp)) == " " + alone + "\u0345"

    classes = {cp: ud.combining(chr(cp)) for cp in range(MAX_CP)
               if cp not in SURROGATES and ud.combining(chr(cp)) and class_known(cp)}
    ccc_runs = []
    for cp in sorted(classes):
        if ccc_runs and ccc_runs[-1][1] == cp - 1 and ccc_runs[-1][2] == classes[cp]:
            ccc_runs[-1] = (ccc_runs[-1][0], cp, classes[cp])
        else:
            ccc_runs.append((cp, cp, classes[cp]))
    decomp = []
    for cp in range(MAX_CP):
        if cp in SURROGATES or 0xAC00 <= cp <= 0xD7A3:  # Hangul syllables are algorithmic
            continue
        d = ud.decomposition(chr(cp))
        if not d or d.startswith("<"):
            continue  # none, or a compatibility decomposition (NFKC only)
        if nfd.normalize_str(chr(cp)) == chr(cp):
            continue  # newer than the crate's tables
        parts = [int(x, 16) for x in d.split()]
        assert len(parts) in (1, 2)
        composes = len(parts) == 2 and nfc.normalize_str(chr(cp)) == chr(cp)
        decomp.append((cp, parts[0], parts[1] if len(parts) == 2 else 0, int(composes)))
    return ccc_runs, decomp


def nfc_model(text, ccc, dec, comp):
    """UAX #15 NFC over the tables, the algorithm unicode.c implements."""

    def decompose(cp, out):
        if 0xAC00 <= cp <= 0xD7A3:
            s = cp - 0xAC00
            out += [0x1100 + s // 588, 0x1161 + (s % 588) // 28] + ([0x11A7 + s % 28] if s % 28 else [])
        elif cp in dec:
            for part in dec[cp]:
                if part:
                    decompose(part, out)
        else:
            out.append(cp)

    d = []
    for ch in text:
        decompose(ord(ch), d)
    for i in range(1, len(d)):  # stable insertion sort of marks by class
        j = i
        while j > 0 and ccc.get(d[j], 0) and ccc.get(d[j - 1], 0) > ccc.get(d[j], 0):
            d[j - 1], d[j] = d[j], d[j - 1]
            j -= 1
    out, starter, last = [], -1, -1
    for c in d:
        cc = ccc.get(c, 0)
        if starter >= 0 and (last == -1 or (last != 0 and cc > last)):
            a = out[starter]
            if 0x1100 <= a < 0x1113 and 0x1161 <= c < 0x1176:
                out[starter] = 0xAC00 + ((a - 0x1100) * 21 + (c - 0x1161)) * 28
                continue
            if 0xAC00 <= a <= 0xD7A3 and (a - 0xAC00) % 28 == 0 and 0x11A7 < c < 0x11C3:
                out[starter] = a + c - 0x11A7
                continue
            if (a, c) in comp:
                out[starter] = comp[(a, c)]
                continue
        if cc == 0:
            starter, last = len(out), -1
        else:
            last = cc
        out.append(c)
    return "".join(map(chr, out))


def verify_normalizers(ccc_runs, decomp):
    """The table-driven NFC against tokenizers' NFC: every code point alone, and 200,000 seeded
    random runs of starters, precomposed letters, conjoining jamo and combining marks."""
    import random

    nfc = normalizers.NFC()
    cases = [chr(cp) for cp in range(MAX_CP) if cp not in SURROGATES]
    rng = random.Random(5)
    marks = [cp for cp in range(MAX_CP) if cp not in SURROGATES and ud.combining(chr(cp))]
    bases = [cp for cp, _, _, _ in decomp] + list(range(0x41, 0x7B)) + \
            [0x1100, 0x1161, 0x11A8, 0xAC00, 0xAC01, 0x1112, 0x1175, 0x11C2, 0x0B47, 0x0B3E, 0x0B57, 0x0DD9,
             0x0DCF, 0x0DDF, 0x09C7, 0x09BE, 0x1025, 0x102E, 0x20]
    for _ in range(200000):
        cases.append("".join(chr(rng.choice(bases) if rng.random() < 0.45 else rng.choice(marks))
                             for _ in range(rng.randint(1, 7))))
    ccc = {cp: c for a, b, c in ccc_runs for cp in range(a, b + 1)}
    dec = {cp: (a, b) for cp, a, b, _ in decomp}
    comp = {(a, b): cp for cp, a, b, c in decomp if c}
    bad = [ascii(t) for t in cases if nfc_model(t, ccc, dec, comp) != nfc.normalize_str(t)]
    if bad:
        sys.exit(f"NFC mismatch on {len(bad)} strings:\n" + "\n".join(bad[:40]))


def fmt_rows(items, per_line, fmt):
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + " ".join(fmt(x) for x in items[i : i + per_line]))
    return "\n".join(lines)


def main():
    letters = ranges(is_letter)
    numbers = ranges(is_number)
    print(f"{len(letters)} letter ranges, {len(numbers)} number ranges; verifying against tokenizers ...")
    verify_classes(letters, numbers)
    lower = lowercase_map()
    multi = {cp: s for cp, s in lower.items() if len(s) != 1}
    assert list(multi) == [0x130] and multi[0x130] == "i\u0307", multi  # handled in unicode.c
    runs = case_runs(lower)
    # check the runs reproduce the mapping exactly
    rebuilt = {}
    for a, b, d, st in runs:
        for cp in range(a, b + 1, st):
            rebuilt[cp] = chr(cp + d)
    assert rebuilt == {cp: s for cp, s in lower.items() if len(s) == 1}
    ccc_runs, decomp = nfc_tables()
    verify_normalizers(ccc_runs, decomp)
    print(f"{len(runs)} lowercase runs, {len(ccc_runs)} combining-class runs, {len(decomp)} canonical decompositions")

    h = []
    h.append("// unicode_tables.h: GENERATED by scripts/make_unicode_tables.py; do not edit.")
    h.append(f"// Unicode {ud.unidata_version} (unicodedata2), checked against tokenizers 0.23 when generated: classes and")
    h.append("// lowercase are Unicode 16 there, NFC data only cover the characters of Unicode 9.0 (the tables of its")
    h.append("// unicode-normalization-alignments crate). Only unicode.c includes this file.")
    h.append("#pragma once")
    h.append("#include <stdint.h>")
    h.append("")
    h.append('#include "unicode.h" // UnicodeRange')
    h.append("")
    h.append("typedef struct { uint32_t first, last; int32_t delta; uint32_t stride; } UnicodeCaseRun; // cp -> cp + delta")
    h.append("typedef struct { uint32_t first, last, ccc; } UnicodeClassRun;         // canonical combining class")
    h.append("typedef struct { uint32_t cp, first, second; } UnicodePair;          // cp == first second canonically")
    h.append("typedef struct { uint32_t cp, to; } UnicodeSingleton;                  // cp == to canonically")
    h.append("")
    h.append(f"// General category L* (Oniguruma \\p{{L}}, Python isalpha): {len(letters)} ranges")
    h.append("static const UnicodeRange unicode_letters[] = {")
    h.append(fmt_rows(letters, 6, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}}},"))
    h.append("};")
    h.append(f"// General category N* (Oniguruma \\p{{N}}): {len(numbers)} ranges")
    h.append("static const UnicodeRange unicode_numbers[] = {")
    h.append(fmt_rows(numbers, 6, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}}},"))
    h.append("};")
    h.append("// Oniguruma \\s (White_Space) used by the tokenizers pre-tokenizer")
    h.append("static const uint32_t unicode_spaces_onig[] = {")
    h.append(fmt_rows(ONIG_SPACE, 12, lambda c: f"0x{c:X},"))
    h.append("};")
    h.append("// Python re \\s (str.isspace) used by A1111's BREAK splitter: adds U+001C..U+001F")
    h.append("static const uint32_t unicode_spaces_python[] = {")
    h.append(fmt_rows(PY_SPACE, 12, lambda c: f"0x{c:X},"))
    h.append("};")
    h.append(f"// Lowercase (Rust char::to_lowercase, as tokenizers' Lowercase normalizer): {len(runs)} runs;")
    h.append("// first..last step stride maps to cp + delta. U+0130 -> U+0069 U+0307 is the one two-character case.")
    h.append("static const UnicodeCaseRun unicode_lowercase[] = {")
    h.append(fmt_rows(runs, 4, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}, {r[2]}, {r[3]}}},"))
    h.append("};")
    h.append(f"// Canonical combining classes (non-zero only): {len(ccc_runs)} runs")
    h.append("static const UnicodeClassRun unicode_combining[] = {")
    h.append(fmt_rows(ccc_runs, 5, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}, {r[2]}}},"))
    h.append("};")
    pairs = [(cp, a, b) for cp, a, b, _ in decomp if b]
    excluded = [cp for cp, a, b, c in decomp if b and not c]
    singles = [(cp, a) for cp, a, b, _ in decomp if not b]
    h.append(f"// Canonical decompositions into two characters, one level: {len(pairs)} (Hangul syllables are")
    h.append("// algorithmic and not listed). NFC recomposes each pair unless cp is in unicode_no_compose.")
    h.append("static const UnicodePair unicode_pairs[] = {")
    h.append(fmt_rows(pairs, 5, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}, 0x{r[2]:X}}},"))
    h.append("};")
    h.append(f"// Composition exclusions and non-starter decompositions among the pairs: {len(excluded)}")
    h.append("static const uint32_t unicode_no_compose[] = {")
    h.append(fmt_rows(excluded, 10, lambda c: f"0x{c:X},"))
    h.append("};")
    h.append(f"// Canonical singleton decompositions (never recomposed; mostly CJK compatibility ideographs): {len(singles)}")
    h.append("static const UnicodeSingleton unicode_singletons[] = {")
    h.append(fmt_rows(singles, 7, lambda r: f"{{0x{r[0]:X}, 0x{r[1]:X}}},"))
    h.append("};")
    with open(OUT, "w") as f:
        f.write("\n".join(h) + "\n")
    print(f"wrote {os.path.normpath(OUT)}: {os.path.getsize(OUT) / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
