"""Writes tests/golden/tokenizer_ref.json (and, if missing, tests/golden/clip_tokenizer/): what
tests/test_tokenizer.c compares tokenizer.c against.

    pip install --no-deps open_clip_torch    # for the real CLIP merges (scripts/golden_common.py)
    python3 scripts/make_golden_tokenizer.py

Oracles
  * Token ids: transformers' CLIPTokenizer, loaded the way diffusers loads it: through
    StableDiffusionXLPipeline.from_pretrained on an SDXL-layout folder (model_index.json,
    tokenizer/, tokenizer_2/; the heavy components passed as None). The folders hold the real
    49,408-token CLIP vocabulary (tests/golden/clip_tokenizer/, derived from open_clip's packaged
    merges) and the config files of stabilityai/stable-diffusion-xl-base-1.0 in their legacy layout
    (AddedToken dicts; "pad_token": "!" for tokenizer_2), as far as we know them: huggingface.co
    could not be read here, see the notes, section 9. The tiny pipeline of tests/golden/tiny_sdxl
    (transformers 5 layout: tokenizer.json, plain-string config) is loaded the same way.
    "padded" ids use diffusers' encode_prompt call, tokenizer(prompt, padding="max_length",
    max_length=tokenizer.model_max_length, truncation=True); "ids" use A1111's call,
    tokenizer(text, truncation=False, add_special_tokens=False).
    A few more folder layouts (added_tokens_decoder, plain strings only, no config at all) pin
    down which tokens transformers 5.24 splits out before BPE and how it matches them.
  * Emphasis and chunking: there is no A1111 install here (it needs a web UI, lark, a model). The
    expected values come from a1111_parse_attention and a1111_chunks below, a line-by-line port of
    the current upstream code, read at AUTOMATIC1111/stable-diffusion-webui commit 28bd8e14
    (v1.6 and later):
      modules/prompt_parser.py   re_attention, re_break and parse_prompt_attention; the weight
                                 alternative is :\s*([+-]?[.\d]+)\s*\) (whitespace allowed on
                                 both sides of the number; the older pattern had none);
      modules/sd_hijack_clip.py  tokenize_line (75-token chunks, comma backtrack with
                                 opts.comma_padding_backtrack = 20, BREAK, next_chunk's token_count)
                                 and process_tokens (ids after the first end token set to the pad id
                                 only `if self.id_end != self.id_pad`: never for CLIP-L, whose pad is
                                 its end token; always for bigG, sd_hijack_open_clip's id_pad = 0).
    The port is checked first against the worked examples of A1111's own docstring, copied here as
    facts. It tokenizes with the transformers tokenizers above; for tokenizer_2 that is diffusers'
    behaviour ("!" is id 0), where A1111 itself would use open_clip's tokenizer ("!" is id 256).
"""
import json
import os
import random
import re
import shutil
import sys
import tempfile

from golden_common import GOLDEN_DIR, versions, write_clip_tokenizer_files

CLIP_DIR = os.path.join(GOLDEN_DIR, "clip_tokenizer")
TINY_DIR = os.path.join(GOLDEN_DIR, "tiny_sdxl")
OUT = os.path.join(GOLDEN_DIR, "tokenizer_ref.json")
CONTEXT = 77


def added_token_dict(content, legacy):
    d = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **d} if legacy else d


# Config files as the SDXL base repository's tokenizer folders carry them (legacy layout).
def sdxl_config(pad_is_bang):
    cfg = {
        "add_prefix_space": False,
        "bos_token": added_token_dict("<|startoftext|>", True),
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": added_token_dict("<|endoftext|>", True),
        "errors": "replace",
        "model_max_length": CONTEXT,
        "pad_token": "!" if pad_is_bang else "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added_token_dict("<|endoftext|>", True),
    }
    stm = {
        "bos_token": added_token_dict("<|startoftext|>", False),
        "eos_token": added_token_dict("<|endoftext|>", False),
        "pad_token": "!" if pad_is_bang else "<|endoftext|>",
        "unk_token": added_token_dict("<|endoftext|>", False),
    }
    return {"tokenizer_config.json": cfg, "special_tokens_map.json": stm}


def decoder_entry(content, normalized):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False, "special": True}


# Extra layouts, all on the real vocabulary; the C test writes the same files next to a copy of it.
FOLDERS = {
    "sdxl_tokenizer": sdxl_config(False),
    "sdxl_tokenizer_2": sdxl_config(True),
    # newer HF layout: added_tokens_decoder decides the flags; special_tokens_map.json is ignored
    "decoder_tokenizer_2": {
        "tokenizer_config.json": {
            "added_tokens_decoder": {"0": decoder_entry("!", False), "49406": decoder_entry("<|startoftext|>", True),
                                     "49407": decoder_entry("<|endoftext|>", False)},
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
            "unk_token": "<|endoftext|>", "model_max_length": CONTEXT, "tokenizer_class": "CLIPTokenizer"},
        "special_tokens_map.json": {"eos_token": added_token_dict("<|endoftext|>", False), "pad_token": "<|endoftext|>"},
    },
    # the pad token as a plain string and nothing else; eos given as a dict that unk (a default,
    # later in the order bos, eos, unk, pad) overrides
    "plain_tokenizer_2": {"tokenizer_config.json": {"pad_token": "!", "eos_token": added_token_dict("<|endoftext|>", True),
                                                    "model_max_length": CONTEXT}},
    # vocab.json + merges.txt only: every default
    "bare_tokenizer": {},
}

# The long negative prompt of the SDXL storyboard setup (more than 75 tokens, commas throughout).
LONG_NEGATIVE = (
    "(((colors))), (((color))), (((colorful))), (((colourful))), mature content, double body, double face, "
    "double features, incorrect posture, two heads, two faces, plastic, deformed, blurry, messed up eyes, "
    "crossed eyes, disfigured, poorly drawn face, mutation, mutated, ugly, disgusting, amputation, extra limbs, "
    "extra arms, extra legs, malformed limbs, missing arms, missing legs, fused fingers, too many fingers, long neck"
)
# the special tokens written out, in both cases (only the "normalized" ones match in upper case)
SPECIAL_SPELLINGS = "<|startoftext|>x<|ENDOFTEXT|><|endoftext|>!! <|StartOfText|>"

PROMPTS = [
    "a photo of a cat",
    "An astronaut riding a green horse",
    "Hello, World 123",
    "",
    "   ",
    "wow!!! really?! (yes) [no] {maybe} <tag> a/b\\c; x:y -- \"quoted\" ... & @#$%^*~` +=_|",
    "1234567890 3.14159 1,000,000 2nd 21st 1990s x²+y½ Ⅻ ① ٣ ４２",
    "it's don't we're they've I'm you'll he'd IT'S Don'T rock'n'roll ''s 'tis o'clock '",
    "A STORYBOARD FRAME OF A Man In A Hat, CLOSE-UP",
    "  multiple   spaces\tand\ttabs\nnewlines\r\n\n end  \u00a0nbsp\u3000ideographic\u2009thin\u2028line\x1cfs\x85nel",
    "café crème brûlée, über Straße, niño, Ångström, ÉCOLE ÀÉÎÕÜ, naïve façade",
    "decomposed cafe\u0301 nin\u0303o A\u030a e\u0323\u0302 q\u0307\u0323 \u1100\u1161\u11a8 \u212b \uf900 \u0344",
    "ΣΊΣΥΦΟΣ σίσυφος İstanbul \u212a ǅ Ǆ ß ẞ ﬁ",
    # marks newer than Unicode 9.0 have class 0 in tokenizers' NFC tables, so they are not reordered
    "order: a\u0345\u1715 x\u0301\u1df9\u0323 \u0915\u093c\u0301\U000113cf q\u0307\u0323",
    "一只猫 東京タワー 한국어 テスト 中文，标点。",
    "🐱 cat 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇯🇵 ❤️ ✨",
    "مرحبا שלום नमस्ते ประเทศไทย Ελληνικά русский язык",
    "control\x07bell zero\u200bwidth soft\u00adhyphen bom\ufeff private\ue000 replacement\ufffd",
    "! !! !!!",
    "hello!world! wow!!!!! !",
    SPECIAL_SPELLINGS,
    "(((black and white))) in the style of storyboard and cartoonish",
    LONG_NEGATIVE,
    "a very long prompt " + " ".join(f"word{i}" for i in range(60)),
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
]

LONG_TEXTS = [
    "The quick brown fox jumps over the lazy dog. In 1984, Winston Smith's diary read: \"Freedom is the freedom "
    "to say that two plus two make four.\" Meanwhile, at 3:45pm (GMT+1), the café's naïve barista—who'd "
    "trained in São Paulo & Zürich—served 12 croissants, 7 espressos & a crème brûlée! Isn't that "
    "remarkable?! #breakfast @home $9.99 100% <html><body>tags</body></html> snake_case camelCase "
    "kebab-case SCREAMING_CASE e.g. i.e. etc... ' '' ''' ` `` ~~~ ***bold*** __under__ [link](http://x.y/z?a=1&b=2)",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Ça va très bien, merci! ¿Dónde está la "
    "biblioteca? 東京は日本の首都です。서울은 한국의 수도입니다. Москва — столица России. Αθήνα. "
    "القاهرة عاصمة مصر. ירושלים. मुंबई भारत का शहर है। กรุงเทพมหานคร 🌏🌍🌎 ½ ¾ ⅓ ① ② Ⅳ ²³ "
    "ﬀ ﬂ Ǳ ǲ ǳ ΐ ΰ Å K ᾈ ᾀ",
]


def long_words():
    """Words whose BPE runs many merges (tokenizers' heap order), and a long run of combining marks
    in mixed classes (NFC's canonical reordering)."""
    rng = random.Random(77)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1500))
    pattern = "".join("abcdefgh"[: 1 + i % 8] for i in range(200))
    punct = "".join(rng.choice("!?#$%&*+-./;<=>@^_`|~") for _ in range(600))
    marks = "e" + "".join(rng.choice("\u0301\u0323\u0327\u0334\u0345\u0316\u035c\u05b0\u093c\u0308") for _ in range(400))
    return [letters, pattern, punct, marks + " cafe" + marks[1:50] + " x"]


# A seeded jumble of characters that stress the classes and normalization boundaries.
POOL = list("abcXYZ019 ',.!?-_()[]:\\\t\n") + ["é", "E\u0301", "\u0301", "\u0323", "ß", "İ", "Σ", "東", "한",
                                                 "\u1100", "\u1161", "\u11a8", "😀", "\u200d", "\u00a0", "\u3000",
                                                 "²", "٣", "ǅ", "\ufb01", "'s", "'ll", "<|endoftext|>", "\u212b"]


def jumbles(count, length, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(POOL) for _ in range(length)) for _ in range(count)]


# ----------------------------------------------------------------------------
# A1111 emphasis: modules/prompt_parser.py at 28bd8e14, ported line by line

RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def a1111_parse_attention(text):
    out = []           # [text, weight] pairs
    opened_round = []  # index into out where each open "(" started
    opened_square = []

    def scale_from(start, factor):
        for item in out[start:]:
            item[1] *= factor

    for m in RE_ATTENTION.finditer(text):
        tok, number = m.group(0), m.group(1)
        if tok[0] == "\\":
            out.append([tok[1:], 1.0])
        elif tok == "(":
            opened_round.append(len(out))
        elif tok == "[":
            opened_square.append(len(out))
        elif number is not None and opened_round:
            scale_from(opened_round.pop(), float(number))  # float() raises like A1111 does
        elif tok == ")" and opened_round:
            scale_from(opened_round.pop(), 1.1)
        elif tok == "]" and opened_square:
            scale_from(opened_square.pop(), 1 / 1.1)
        else:
            for k, piece in enumerate(RE_BREAK.split(tok)):
                if k:
                    out.append(["BREAK", -1])
                out.append([piece, 1.0])
    for start in opened_round:
        scale_from(start, 1.1)
    for start in opened_square:
        scale_from(start, 1 / 1.1)
    if not out:
        out = [["", 1.0]]
    merged = [out[0]]
    for item in out[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged


DOCSTRING_EXAMPLES = [  # modules/prompt_parser.py parse_prompt_attention docstring
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]

EMPHASIS_PROMPTS = [p for p, _ in DOCSTRING_EXAMPLES] + [
    "",
    "(a:1.5) (b:-0.5) (c:.5) (d:1.) (e:+2)",
    "a BREAK b",
    "BREAK",
    "BREAK b",
    "a BREAK",
    "aBREAK b a BREAKfast BREAK_x éBREAK",
    "a\tBREAK\nb  BREAK  BREAK c",
    "x,BREAK,y",
    "(a BREAK b)",
    "\\(a\\) \\[b\\] \\\\ c\\d \\",
    "a) b] c:1.5) d: e:f",
    "((a) [b] (c:2))",
    "[[a]] [(a)] ([a]) [a:1.5]",
    "(((black and white))) in the style of storyboard and cartoonish",
    "(café:1.2) 東京 [naïve] (🐱)",
    "a:b (c:d) e (f:1.2",
    "(x:1.2.3)",
    "(x:.)",
    "x:1.2.3) y",
    # whitespace around the weight (current A1111: \s* on both sides of the number)
    "(masterpiece: 1.2)",
    "(a:1.5 )",
    "(a:\t1.5)",
    "( a : 1.3 )",
    "(a:\n 1.5 \r\n)",
    "(a:\u00a01.5\u3000) (b:\u20281.5\x1c)",
    "(a: +1.5) (b: -0.5 ) (c: .5) (d:  1. )",
    "(a: - 1.5) (b:1. 5) (c: 1.5 x) (d:1e3) (e: )",
    "a: 1.2) b :1.3 ) c",
    "(x: 1.2.3 )",
    # nested and unbalanced brackets with weights
    "((a: 1.2) b:0.5)",
    "[(a: 1.2) b]",
    "((a:1.2) [b: 0.5]",
    "(a:1.2)) b] [c",
    "(((a)) : 1.1 ) ((b:1.3 ) ) ] [ (c : 0.9)",
    "[a: 1.2] (b:[c]: 2)",
    "(a BREAK b: 1.2)",
]


# ----------------------------------------------------------------------------
# A1111 chunking: modules/sd_hijack_clip.py at 28bd8e14 (tokenize_line, process_tokens)

CHUNK = 75
COMMA_BACKTRACK = 20


def a1111_chunks(tok, prompt):
    """Returns (chunks, token_count): chunks as (ids[77], multipliers[77]) after process_tokens."""
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    comma = tok.get_vocab().get(",</w>")
    parsed = a1111_parse_attention(prompt)
    done = []
    ids, mults = [], []
    count = 0
    last_comma = -1

    def close(final):
        nonlocal ids, mults, count, last_comma
        count += len(ids) if final else CHUNK
        fill = CHUNK - len(ids)
        done.append(([bos] + ids + [eos] * fill + [eos], [1.0] + mults + [1.0] * fill + [1.0]))
        ids, mults = [], []
        last_comma = -1

    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            close(False)
            continue
        for t in tok(text, truncation=False, add_special_tokens=False).input_ids:
            if t == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                keep = last_comma + 1
                moved_ids, moved_mults = ids[keep:], mults[keep:]
                ids, mults = ids[:keep], mults[:keep]
                close(False)
                ids, mults = moved_ids, moved_mults
            if len(ids) == CHUNK:
                close(False)
            ids.append(t)
            mults.append(weight)
    if ids or not done:
        close(True)
    # process_tokens: "if self.id_end != self.id_pad", everything after the first end token becomes
    # the pad id (bigG: 0), even when that end token is an "<|endoftext|>" typed in the prompt
    out = []
    for cids, cm in done:
        if eos != pad:
            first = cids.index(eos)
            cids = cids[: first + 1] + [pad] * (CONTEXT - first - 1)
        out.append((cids, cm))
    return out, count


def empty_chunk(tok):
    return a1111_chunks(tok, "")[0][0]


def comma_boundary_prompts():
    """Prompts whose 75th token falls just after a comma, far after one, and on a comma."""
    words = [f"w{i}" for i in range(200)]  # "w12" is three tokens: "w", "1", "2"
    plain = "red car blue sky green tree yellow sun black cat white dog "  # 12 tokens
    near = plain * 5 + ", " + " ".join(["tall house"] * 10)  # comma is token 61: 14 tokens move on
    far = plain * 2 + ", " + " ".join(["tall house"] * 30)   # comma is token 25: too far back, no move
    exact = "cat " * 74 + ", dog dog dog"                    # comma is token 75
    after = "cat " * 75 + ", dog"                            # comma is token 76
    weighted = plain * 5 + ", " + "(tall house:1.3) [old tree] " * 6  # the moved tokens keep their weights
    return [near, far, exact, after, weighted, " ".join(words[:40]) + ", " + " ".join(words[40:80])]


# A prompt of several chunks: weights, nesting, commas near the chunk ends, a BREAK
LONG_PROMPT = ", ".join(
    (f"(detail {i}: 1.{i % 10})" if i % 3 == 0 else f"[word{i} and more words]" if i % 3 == 1 else f"plain text number {i}")
    for i in range(70)) + " BREAK ((" + " ".join(["tree"] * 80) + ")) end"

MASTERPIECE = "masterpiece, (best quality:1.2), " + ", ".join(f"detail {i}" for i in range(40)) + ", [blurry], (sharp:1.1)"

CHUNK_PROMPTS = [
    "a photo of a cat",
    "",
    "(((black and white))) in the style of storyboard and cartoonish",
    LONG_NEGATIVE,
    "a red house BREAK a blue sky",
    "BREAK a",
    "a BREAK",
    "(a BREAK b)",
    "wow!!! amazing! (great:1.3)",
    MASTERPIECE,
    "((long emphasis " + " ".join(["sky"] * 90) + ")) end",
    # an end-of-text token typed in the prompt: CLIP-L keeps the words after it, bigG pads them
    "a photo <|endoftext|> of a cat",
    "<|endoftext|> a cat",
    "(red: 1.2) car <|endoftext|> BREAK blue <|endoftext|>",
    "(masterpiece: 1.2), (best quality:1.1 ), [blurry], ( sharp : 1.3 )",
    LONG_PROMPT,
] + comma_boundary_prompts()

PAIRS = [
    (MASTERPIECE, "blurry"),                           # long positive, short negative
    ("a cat", LONG_NEGATIVE + ", " + LONG_NEGATIVE),  # short positive, long negative
]


# ----------------------------------------------------------------------------

def trim(values, filler):
    """values without its trailing run of filler (the C test pads back to 77 with it)."""
    n = len(values)
    while n > 0 and values[n - 1] == filler:
        n -= 1
    return values[:n]


def build_folder(root, name, files):
    d = os.path.join(root, name)
    os.makedirs(d)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(CLIP_DIR, f), d)
    texts = {}
    for fname, content in files.items():
        text = json.dumps(content, indent=2, ensure_ascii=False) + "\n"
        with open(os.path.join(d, fname), "w", encoding="utf-8") as f:
            f.write(text)
        texts[fname] = text
    return d, texts


def padded_head(tok, prompt):
    """The padded ids up to and including the EOS that ends the text; the rest must be pad ids."""
    # diffusers passes max_length=tokenizer.model_max_length, 77 in every SDXL folder (checked in
    # main); the config-less layout has none, so 77 is given explicitly for all
    ids = tok(prompt, padding="max_length", max_length=CONTEXT, truncation=True).input_ids
    n_text = len(tok(prompt, truncation=False, add_special_tokens=False).input_ids)
    head = ids[: min(n_text, CONTEXT - 2) + 2]
    assert len(ids) == CONTEXT and head[-1] == tok.eos_token_id, (prompt, ids)
    assert ids == head + [tok.pad_token_id] * (CONTEXT - len(head)), (prompt, ids)
    return head


def main():
    if not os.path.exists(os.path.join(CLIP_DIR, "vocab.json")):
        write_clip_tokenizer_files(CLIP_DIR)
    import transformers
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    # the docstring examples first: the port must reproduce A1111's own outputs
    for prompt, want in DOCSTRING_EXAMPLES:
        got = a1111_parse_attention(prompt)
        assert got == want, (prompt, got, want)

    tmp = tempfile.mkdtemp(prefix="golden_tokenizer_")
    try:
        folder_texts = {}
        for name, files in FOLDERS.items():
            _, folder_texts[name] = build_folder(tmp, name, files)
        # an SDXL-layout pipeline folder around the two SDXL tokenizers
        sdxl = os.path.join(tmp, "sdxl")
        os.makedirs(sdxl)
        shutil.copytree(os.path.join(tmp, "sdxl_tokenizer"), os.path.join(sdxl, "tokenizer"))
        shutil.copytree(os.path.join(tmp, "sdxl_tokenizer_2"), os.path.join(sdxl, "tokenizer_2"))
        shutil.copy(os.path.join(TINY_DIR, "model_index.json"), sdxl)
        none = dict(vae=None, text_encoder=None, text_encoder_2=None, unet=None, scheduler=None)
        pipe = StableDiffusionXLPipeline.from_pretrained(sdxl, **none)
        tiny = StableDiffusionXLPipeline.from_pretrained(TINY_DIR, **none)
        toks = {
            "sdxl_tokenizer": pipe.tokenizer,
            "sdxl_tokenizer_2": pipe.tokenizer_2,
            "tiny_tokenizer": tiny.tokenizer,
            "tiny_tokenizer_2": tiny.tokenizer_2,
        }
        assert all(t.model_max_length == CONTEXT for t in toks.values())
        for name in ("decoder_tokenizer_2", "plain_tokenizer_2", "bare_tokenizer"):
            toks[name] = CLIPTokenizer.from_pretrained(os.path.join(tmp, name))

        tokenizers = {}
        for name, t in toks.items():
            added = {str(i): {"content": a.content, "normalized": a.normalized}
                     for i, a in sorted(t.backend_tokenizer.get_added_tokens_decoder().items())}
            tokenizers[name] = {
                "folder": ("tiny_sdxl/" + name[len("tiny_"):]) if name.startswith("tiny_") else name,
                "committed": name.startswith("tiny_"),
                "bos": t.bos_token_id, "eos": t.eos_token_id, "pad": t.pad_token_id, "unk": t.unk_token_id,
                "comma": t.get_vocab().get(",</w>", -1), "vocab_size": len(t.get_vocab()), "added": added,
            }
            print(f"{name:20s} bos {t.bos_token_id} eos {t.eos_token_id} pad {t.pad_token_id} added {added}")

        main_names = ["sdxl_tokenizer", "sdxl_tokenizer_2", "tiny_tokenizer_2"]
        variant_prompts = ["! !! !!!", SPECIAL_SPELLINGS, "<|STARTOFTEXT|> hi <|EndOfText|>", "a photo of a cat"]
        encode = []
        for prompt in PROMPTS + variant_prompts[2:3]:
            names = main_names + (["decoder_tokenizer_2", "plain_tokenizer_2", "bare_tokenizer"] if prompt in variant_prompts else [])
            encode.append({
                "prompt": prompt,
                "padded": {n: padded_head(toks[n], prompt) for n in names},
                "ids": {n: toks[n](prompt, truncation=False, add_special_tokens=False).input_ids for n in names},
            })
        for prompt in LONG_TEXTS + long_words() + jumbles(24, 40, seed=1234):
            encode.append({
                "prompt": prompt,
                "ids": {n: toks[n](prompt, truncation=False, add_special_tokens=False).input_ids for n in main_names[:2]},
            })

        emphasis = []
        for prompt in EMPHASIS_PROMPTS:
            try:
                emphasis.append({"prompt": prompt, "segments": a1111_parse_attention(prompt)})
            except ValueError as e:
                emphasis.append({"prompt": prompt, "error": str(e)})

        chunks = []
        for prompt in CHUNK_PROMPTS:
            for n in ("sdxl_tokenizer", "sdxl_tokenizer_2"):
                cs, count = a1111_chunks(toks[n], prompt)
                chunks.append({"prompt": prompt, "tokenizer": n, "token_count": count, "n_chunks": len(cs),
                               "ids": [trim(c[0], toks[n].pad_token_id) for c in cs],
                               "multipliers": [trim(c[1], 1.0) for c in cs]})
        pairs = []
        for pos, neg in PAIRS:
            for n in ("sdxl_tokenizer", "sdxl_tokenizer_2"):
                p, _ = a1111_chunks(toks[n], pos)
                q, _ = a1111_chunks(toks[n], neg)
                k = max(len(p), len(q))
                pad = [empty_chunk(toks[n])]
                pad_id = toks[n].pad_token_id
                pairs.append({"positive": pos, "negative": neg, "tokenizer": n, "n_chunks": k,
                              "positive_ids": [trim(c[0], pad_id) for c in p + pad * (k - len(p))],
                              "negative_ids": [trim(c[0], pad_id) for c in q + pad * (k - len(q))]})
    finally:
        shutil.rmtree(tmp)

    doc = {
        "format_version": 1,
        "script": os.path.basename(__file__),
        "versions": versions(),
        "folders": folder_texts,
        "trimmed": "chunk and pair ids omit their trailing pad ids, multipliers their trailing 1.0s",
        "tokenizers": tokenizers,
        "encode": encode,
        "emphasis": emphasis,
        "chunks": chunks,
        "pairs": pairs,
    }
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    # one top-level entry per line keeps diffs readable without the size of full indentation
    text = text.replace(',{"prompt"', ',\n{"prompt"').replace(',{"positive"', ',\n{"positive"')
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {OUT}: {os.path.getsize(OUT) / 1024:.1f} KiB, {len(encode)} encode cases, "
          f"{len(emphasis)} emphasis cases, {len(chunks)} chunk cases, {len(pairs)} pairs")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
