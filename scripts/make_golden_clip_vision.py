#!/usr/bin/env python3
"""Builds the tiny random-weight CLIP models tests/test_clip_vision.c runs, and the references.

    pip install torch transformers torchmetrics safetensors pillow numpy ftfy
    pip install --no-deps open_clip_torch clip-interrogator==0.6.0
    python3 scripts/make_golden_clip_vision.py

Writes tests/golden/clip_vision/
  tiny_clip/       a transformers CLIPModel folder: the openai/clip-vit-large-patch14 structure
                   (quick_gelu, pre-LN layers, legacy text eos_token_id 2 so the text is pooled at
                   argmax(ids), bias-free projections) with small widths (text 32 wide, 2 layers;
                   vision 48 wide, 3 heads, 2 layers, 32x32 images in 8x8 patches; projection 24),
                   weights in fp16, and the CLIP BPE cut to 500 merges (vocabulary 1014)
  vision224/       a CLIPVisionModelWithProjection folder with ViT-L/14's geometry (224x224 images,
                   14x14 patches, 257 positions) and tiny widths
  labels/          small clip-interrogator lists (mediums, artists, movements, sites, flavors)
  clip_ref.safetensors
      pre.lut                (3, 256)  CLIPImageProcessorPil's normalised value of each byte, per channel
      pre224.crop            (224, 224, 3) uint8: the resized, centre-cropped synthetic 1365x768 image
                             as CLIPImageProcessorPil (openai/clip-vit-large-patch14's settings) makes
                             it; pre.lut[crop] equals its pixel_values exactly (checked here)
      pre224.image_embeds    vision224's get_image_features of those pixel_values
      img1, img2             uint8 test images (67x32: the two centre-crop roundings differ; 23x37)
      pixel_values           (3, 3, 32, 32) the tiny model's preprocessing of synthetic, img1, img2
      pixel_values_openclip  (3, 32, 32) img1 through open_clip's transform (torchvision CenterCrop rounds)
      image_embeds           (3, 24) get_image_features; image_pooled (3, 48) the post_layernorm CLS
      ids_truncate, text_embeds_truncate        texts tokenized with truncation (BOS, 75 tokens, EOS)
      ids_torchmetrics, text_embeds_torchmetrics  torchmetrics' way: untruncated, then sliced to 77
      cosine_<policy>        (4) cosine of pair i (image i % 3, text i)
      clip_score_<policy>    torchmetrics.functional.multimodal.clip_score over the 4 pairs
      clip_score_single      (4) the same function on each pair alone (the clamp at 0)
      ci.sims.<table>        each label's score; the rankings and prompts are in the metadata
The synthetic image is not stored: tests/test_image.c and scripts/make_golden_image.py compute it.
Weights are stored in fp16; every reference is computed from the fp16 values upcast to fp32.
"""
import importlib
import os
import shutil

import numpy as np
import torch
import torchmetrics
import torchvision.transforms as T
import transformers
from PIL import Image
from transformers import (CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer, CLIPVisionConfig,
                          CLIPVisionModelWithProjection)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import clip_interrogator
import clip_interrogator.clip_interrogator as ci
from golden_common import GOLDEN_DIR, save, write_clip_tokenizer_files
from make_golden_image import synthetic

# the module (the package re-exports a function of the same name)
tm_clip = importlib.import_module("torchmetrics.functional.multimodal.clip_score")

SEED = 7
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
OUT = os.path.join(GOLDEN_DIR, "clip_vision")


def scale_weights(model):
    """Random init gives ~0.02 weights and near-constant outputs; make everything of order 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(float(np.log(100.0)))  # what trained OpenAI CLIP models hold
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
            elif p.dim() == 1 and "norm" in name:
                p.normal_(1.0, 0.1)
            elif p.dim() == 1:  # class_embedding
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 1.0 / p[0].numel() ** 0.5)
        model.half().float()  # the values the fp16 files hold


def main():
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    shutil.rmtree(OUT, ignore_errors=True)
    folder = os.path.join(OUT, "tiny_clip")
    os.makedirs(folder)
    ref = {}

    # ---- the tiny CLIPModel and its tokenizer
    vocab_size = write_clip_tokenizer_files(folder, n_merges=500)  # 1014: 1012 = BOS, 1013 = EOS
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)
    text_cfg = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                    bos_token_id=vocab_size - 2, eos_token_id=2, pad_token_id=1)  # eos 2: the legacy value of ViT-L/14
    vision_cfg = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                      image_size=32, patch_size=8, hidden_act="quick_gelu")
    model = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=24)).eval()
    scale_weights(model)
    model.half().save_pretrained(folder, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(folder)
    write_clip_tokenizer_files(folder, n_merges=500)  # keep vocab.json + merges.txt as hub folders have them
    proc_pil = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc_pil.save_pretrained(folder)
    processor = CLIPProcessor(image_processor=proc_pil, tokenizer=tokenizer)

    # ---- ViT-L/14 geometry: 224x224 in 14x14 patches, 257 positions
    v224_dir = os.path.join(OUT, "vision224")
    v224 = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, image_size=224, patch_size=14,
                                                          projection_dim=8, hidden_act="quick_gelu")).eval()
    scale_weights(v224)
    v224.half().save_pretrained(v224_dir, safe_serialization=True)
    v224.float()

    # ---- preprocessing: the per-byte map, and openai/clip-vit-large-patch14's settings on 1365x768
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)
    lut = CLIPImageProcessorPil(do_resize=False, do_center_crop=False)(images=Image.fromarray(ramp),
                                                                        return_tensors="pt")["pixel_values"][0, :, 0, :]
    ref["pre.lut"] = lut
    synth = Image.fromarray(synthetic(1365, 768))
    pv224 = CLIPImageProcessorPil()(images=synth, return_tensors="pt")["pixel_values"]  # defaults = ViT-L/14's
    assert pv224.shape == (1, 3, 224, 224)
    crop = np.zeros((224, 224, 3), np.uint8)
    for c in range(3):  # invert the LUT exactly: every value must be one of the 256
        idx = np.searchsorted(lut[c].numpy(), pv224[0, c].numpy())
        crop[..., c] = idx
        assert np.array_equal(lut[c].numpy()[idx], pv224[0, c].numpy())
    direct = np.array(synth.resize((398, 224), Image.Resampling.BICUBIC))[:, 87:87 + 224]
    assert np.array_equal(direct, crop), "398x224 and left = (398 - 224) // 2 = 87"
    ref["pre224.crop"] = torch.from_numpy(crop)
    with torch.no_grad():
        ref["pre224.image_embeds"] = v224(pixel_values=pv224).image_embeds
    # the default (torchvision) CLIPImageProcessor of transformers 5.x resizes with torch's
    # antialiased bicubic, which differs from PIL by +-1 in a few bytes: record by how much
    from transformers import CLIPImageProcessor
    pv_tv = CLIPImageProcessor()(images=synth, return_tensors="pt")["pixel_values"]
    tv_note = (f"torchvision-backend CLIPImageProcessor vs PIL: max |dpixel| {float((pv_tv - pv224).abs().max()):.4f}, "
               f"{float(((pv_tv - pv224).abs() > 1e-6).float().mean()) * 100:.2f}% of values differ")
    print(tv_note)

    # ---- the tiny model's images: synthetic (downscale), img1 67x32 (no resize; crop offset 17.5),
    # img2 23x37 (upscale, portrait)
    yy, xx = np.mgrid[0:32, 0:67]
    img1 = np.stack([(xx * 3 + yy * k * 2 + 40 * k) % 256 for k in range(3)], -1).astype(np.uint8)
    img2 = rng.integers(0, 256, (37, 23, 3)).astype(np.uint8)
    ref["img1"], ref["img2"] = torch.from_numpy(img1), torch.from_numpy(img2)
    pils = [synth, Image.fromarray(img1), Image.fromarray(img2)]
    pv = processor(images=pils, return_tensors="pt")["pixel_values"]
    ref["pixel_values"] = pv
    openclip_tf = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                             T.Normalize(MEAN, STD)])  # open_clip image_transform for 'shortest' resize
    pv_oc = openclip_tf(pils[1])
    assert not torch.equal(pv_oc, pv[1]), "img1 must tell floor from round-half-even crops"
    ref["pixel_values_openclip"] = pv_oc
    with torch.no_grad():
        vis = model.vision_model(pixel_values=pv)
        ref["image_pooled"] = vis.pooler_output
        image_embeds = model.visual_projection(vis.pooler_output)
    ref["image_embeds"] = image_embeds

    # ---- texts, two long-prompt policies
    long_prompt = ", ".join(["a storyboard panel of a detective walking through heavy rain at night"] * 4)
    texts = ["a man opens a door", "two people talking in a kitchen, black and white sketch", "", long_prompt]
    n_long = len(tokenizer(long_prompt, add_special_tokens=False).input_ids)
    assert n_long > 76, n_long
    ids_tr = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    tm = tokenizer(texts, padding=True, return_tensors="pt")
    ids_tm, mask_tm = tm.input_ids[:, :77], tm.attention_mask[:, :77]  # torchmetrics' slice
    with torch.no_grad():
        te_tr = model.get_text_features(input_ids=ids_tr).pooler_output
        te_tm = model.get_text_features(input_ids=ids_tm, attention_mask=mask_tm).pooler_output
    ref["ids_truncate"], ref["text_embeds_truncate"] = ids_tr.int(), te_tr
    ref["ids_torchmetrics"], ref["text_embeds_torchmetrics"] = ids_tm.int(), te_tm
    ref["n_tokens"] = torch.tensor([len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts], dtype=torch.int32)

    # ---- CLIP score through torchmetrics' own function, with our model and processor plugged in.
    # torchmetrics 1.9 expects get_*_features to return tensors; transformers 5 returns an output
    # object whose pooler_output is the projection, so a shim unwraps it.
    class Shim(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def get_image_features(self, *a, **k):
            return self.m.get_image_features(*a, **k).pooler_output

        def get_text_features(self, *a, **k):
            return self.m.get_text_features(*a, **k).pooler_output

    tm_clip._get_clip_model_and_processor = lambda name: (Shim(model), processor)
    images_u8 = [torch.from_numpy(np.array(p)).permute(2, 0, 1).contiguous() for p in pils]
    pair_images = [images_u8[i % 3] for i in range(4)]
    img_n = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    for policy, te in (("truncate", te_tr), ("torchmetrics", te_tm)):
        te_n = te / te.norm(dim=-1, keepdim=True)
        ref[f"cosine_{policy}"] = (img_n[[0, 1, 2, 0]] * te_n).sum(-1)
    with torch.no_grad():
        ref["clip_score_torchmetrics"] = tm_clip.clip_score(pair_images, texts, "tiny").reshape(1)
        ref["clip_score_single"] = torch.stack([tm_clip.clip_score([pair_images[i]], [texts[i]], "tiny") for i in range(4)])
    print("cosines (torchmetrics policy):", ref["cosine_torchmetrics"].tolist(), "score", ref["clip_score_torchmetrics"].item())
    assert abs(ref["clip_score_torchmetrics"].item() - max(100 * ref["cosine_torchmetrics"].mean().item(), 0)) < 1e-4
    assert (ref["clip_score_single"] == 0).any(), "want one negative pair, to see the clamp"

    # ---- clip-interrogator 0.6.0 on small lists, with its own LabelTable / _merge_tables / _truncate_to_fit
    lab = os.path.join(OUT, "labels")
    os.makedirs(lab)
    lists = {
        "mediums": ["a storyboard sketch", "an oil painting", "a black and white photo", "a 3D render", "a pencil sketch",
                    "a comic book panel"],
        "artists": ["Gustave Dore", "Moebius", "Frank Miller", "Hergé", "Albrecht Durer"],
        "movements": ["film noir", "art nouveau", "expressionism", "pop art", "minimalism"],
        "sites": ["Artstation", "behance", "pixiv"],
        "flavors": ["high contrast", "  dramatic lighting  ", "ink wash", "crosshatching", "", "rough lines",
                    "cinematic composition", "wide shot", "close up", "dutch angle", "silhouette", "heavy shadows",
                    "clean linework", "concept art", "thumbnail sketch", "rule of thirds", "low angle",
                    "high angle", "chiaroscuro", "high contrast", "grainy", "soft focus", "motion blur", "rain",
                    "fog", "city street", "interior", "night", "dawn", "storyboard arrows", "panel border",
                    "speech bubble", "monochrome", "grayscale", "graphite", "charcoal", "marker rendering",
                    "halftone", "crowd", "lonely figure"],
    }
    for name, items in lists.items():
        with open(os.path.join(lab, f"{name}.txt"), "w", encoding="utf-8", newline="") as f:
            # CRLF on one line and no final newline: load_list's universal newlines and strip()
            f.write("\n".join(items[:3]) + "\r\n" + "\n".join(items[3:]))
    load = lambda n: ci.load_list(lab, f"{n}.txt")
    raw_artists = load("artists")
    artists = [f"by {a}" for a in raw_artists] + [f"inspired by {a}" for a in raw_artists]
    sites = load("sites")
    trending = sites + ["trending on " + s for s in sites] + ["featured on " + s for s in sites] + \
        [s + " contest winner" for s in sites]

    def oc_tokenize(texts_):  # open_clip's tokenize contract: (N, 77), BOS ... EOS, zero padding, EOS kept
        out = torch.zeros(len(texts_), 77, dtype=torch.long)
        for i, t in enumerate(texts_):
            ids = [vocab_size - 2] + tokenizer(str(t), add_special_tokens=False).input_ids[:75] + [vocab_size - 1]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    class FakeCI:  # what LabelTable reads from an Interrogator
        clip_model = type("M", (), {"encode_text": staticmethod(lambda tok: model.get_text_features(input_ids=tok).pooler_output)})
        config = ci.Config(cache_path=None, download_cache=False, chunk_size=16, device="cpu", quiet=True)
        tokenize = staticmethod(oc_tokenize)

    with torch.no_grad():
        tables = {"mediums": ci.LabelTable(load("mediums"), "mediums", FakeCI),
                  "artists": ci.LabelTable(artists, "artists", FakeCI),
                  "movements": ci.LabelTable(load("movements"), "movements", FakeCI),
                  "trendings": ci.LabelTable(trending, "trendings", FakeCI),
                  "flavors": ci.LabelTable(load("flavors"), "flavors", FakeCI)}
        feats = image_embeds[:1] / image_embeds[:1].norm(dim=-1, keepdim=True)  # Interrogator.image_to_features
        caption = "a man opens a door"
        meta = {}
        for name, t in tables.items():
            ref[f"ci.sims.{name}"] = (feats @ torch.from_numpy(np.stack(t.embeds)).T)[0]

        def interrogate(tabs):
            """0.6.0's rankings, interrogate_classic (max_flavors 3) and interrogate_fast (32)."""
            top = {n: t.rank(feats, 1)[0] for n, t in tabs.items()}
            flaves3 = tabs["flavors"].rank(feats, 3)
            flavors8 = tabs["flavors"].rank(feats, 8)  # chunked: 40 labels, chunk_size 16
            if caption.startswith(top["mediums"]):
                classic = f"{caption} {top['artists']}, {top['trendings']}, {top['movements']}, {', '.join(flaves3)}"
            else:
                classic = (f"{caption}, {top['mediums']} {top['artists']}, {top['trendings']}, {top['movements']}, "
                           f"{', '.join(flaves3)}")
            classic = ci._truncate_to_fit(classic, oc_tokenize)
            # artists, flavors, mediums, movements, trendings merged (73 labels: 5 chunks of 16)
            merged = ci._merge_tables([tabs[n] for n in ("artists", "flavors", "mediums", "movements", "trendings")],
                                      FakeCI)
            tops = merged.rank(feats, 32)
            fast = ci._truncate_to_fit(caption + ", " + ", ".join(tops), oc_tokenize)
            assert fast != caption + ", " + ", ".join(tops), "the fast prompt should hit the 77-token limit"
            return top, flavors8, tops, classic, fast

        top, flavors8, tops, classic, fast = interrogate(tables)
        # Our label embeddings differ from these by f32 noise, which flips the f16 rounding of a few
        # components (a score moves by up to ~5e-5). The answers must not depend on that: redo
        # everything with a random one-ulp f16 change in 10% of the components, ten times.
        prng = np.random.default_rng(1)
        for _ in range(10):
            shaken = {}
            for n, t in tables.items():
                c = ci.LabelTable.__new__(ci.LabelTable)
                c.__dict__.update(t.__dict__)
                e = np.stack(t.embeds).astype(np.float16)
                flip = (prng.random(e.shape) < 0.1) * prng.choice([-1, 1], e.shape)
                e = (e.view(np.int16) + flip.astype(np.int16)).view(np.float16).astype(np.float32)
                c.embeds = [e[i] for i in range(e.shape[0])]
                shaken[n] = c
            assert interrogate(shaken) == (top, flavors8, tops, classic, fast), "a near-tie: rankings are fragile"
        meta = {"ci_caption": caption, "ci_classic": classic, "ci_fast": fast, "ci_chunk_size": 16,
                "ci_top_medium": top["mediums"], "ci_top_artist": top["artists"], "ci_top_trending": top["trendings"],
                "ci_top_movement": top["movements"],
                # rankings as label lists, one per line (flavors.txt holds "high contrast" twice: the
                # two tie exactly, and either order is the same list of labels)
                "ci_rank_flavors8": "\n".join(flavors8), "ci_rank_fast32": "\n".join(tops),
                "clip_interrogator": getattr(clip_interrogator, "__version__", "0.6.0"),
                "torchmetrics": torchmetrics.__version__, "note_torchvision": tv_note}
        print("classic:", classic)
        print("fast:", fast)

    save(ref, "clip_vision/clip_ref.safetensors", __file__, SEED, extra=meta)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
