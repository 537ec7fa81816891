"""AUTOMATIC1111-style text conditioning of the tiny SDXL: emphasis weights and a prompt longer than
75 tokens, computed with transformers' encoders from the committed tests/golden/tiny_sdxl.

    python3 scripts/make_golden_a1111.py      (after make_golden_sdxl.py)

diffusers truncates prompts at 77 tokens and has no emphasis syntax, so the oracle here is
A1111's algorithm (modules/sd_hijack_clip.py, sd_emphasis.py), restated below for the simple
cases this golden uses: segments of one weight are tokenized separately, tokens are packed 75 per
chunk ([BOS] + 75 + [EOS], padded with EOS for tokenizer and with "!" (0) after the first EOS for
tokenizer_2), each chunk is encoded on its own, each encoder's penultimate states are multiplied by
the token weights and rescaled to the chunk's original mean, chunks are concatenated along the
sequence, the two encoders along the channels, and the pooled vector comes from the first chunk.
The prompts avoid commas near a chunk boundary, so A1111's comma backtrack does not apply here
(tests/test_tokenizer.c covers it).
"""
import os

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from golden_common import GOLDEN_DIR, save

tiny = os.path.join(GOLDEN_DIR, "tiny_sdxl")
tok1 = CLIPTokenizer.from_pretrained(os.path.join(tiny, "tokenizer"))
tok2 = CLIPTokenizer.from_pretrained(os.path.join(tiny, "tokenizer_2"))
te1 = CLIPTextModel.from_pretrained(os.path.join(tiny, "text_encoder"), torch_dtype=torch.float32).eval()
te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(tiny, "text_encoder_2"), torch_dtype=torch.float32).eval()

# (segments with their weights) as A1111's parse_prompt_attention gives them for the prompt below
filler = " and the cat sat on the mat" * 12
PROMPT = "a (man:1.5) opens [a door]" + filler
SEGMENTS = [("a ", 1.0), ("man", 1.5), (" opens ", 1.0), ("a door", 1 / 1.1), (filler, 1.0)]


def chunks(tok, pad_after_eos):
    ids, weights = [], []
    for text, w in SEGMENTS:
        t = tok(text, add_special_tokens=False).input_ids
        ids += t
        weights += [w] * len(t)
    out = []
    bos, eos = tok.bos_token_id, tok.eos_token_id
    for start in range(0, max(len(ids), 1), 75):
        part, pw = ids[start:start + 75], weights[start:start + 75]
        cid = [bos] + part + [eos] * (75 - len(part)) + [eos]
        cw = [1.0] + pw + [1.0] * (75 - len(part)) + [1.0]
        if pad_after_eos is not None:  # tokenizer_2: everything after the first EOS is the pad id
            first = cid.index(eos)
            cid = cid[:first + 1] + [pad_after_eos] * (76 - first)
        out.append((torch.tensor([cid]), torch.tensor([cw])))
    return out


def emphasis(z, w):
    m = z.mean()
    z = z * w[..., None]
    return z * (m / z.mean())


ref = {}
with torch.no_grad():
    c1, c2 = chunks(tok1, None), chunks(tok2, 0)
    assert len(c1) == len(c2) == 2, (len(c1), len(c2))
    z1 = [emphasis(te1(ids, output_hidden_states=True).hidden_states[-2], w) for ids, w in c1]
    o2 = [te2(ids, output_hidden_states=True) for ids, _ in c2]
    z2 = [emphasis(o.hidden_states[-2], w) for o, (_, w) in zip(o2, c2)]
    ref["a1111.context"] = torch.cat([torch.cat(z1, 1), torch.cat(z2, 1)], -1)  # (1, 154, 96)
    ref["a1111.pooled"] = o2[0].text_embeds                                      # first chunk only
    for k, (ids, w) in enumerate(c1):
        ref[f"a1111.chunk{k}.ids1"], ref[f"a1111.chunk{k}.weights"] = ids.int(), w.float()
    for k, (ids, _) in enumerate(c2):
        ref[f"a1111.chunk{k}.ids2"] = ids.int()
save(ref, "a1111_ref.safetensors", __file__, 0, extra={"prompt": PROMPT})
