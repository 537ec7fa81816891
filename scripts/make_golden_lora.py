"""LoRA files for the tiny SDXL in the kohya, diffusers and PEFT formats, and what diffusers/peft make of them.

    python3 scripts/make_golden_lora.py        (after make_golden_sdxl.py and make_golden_sgm.py)

Each LoRA is made with peft on the tiny SDXL (tests/golden/tiny_sdxl), given random non-zero A and B
(B is zero at init), and written by the libraries' own writers:
    diffusers  StableDiffusionXLPipeline.save_lora_weights, as train_text_to_image_lora_sdxl.py calls it
    PEFT       PeftModel.save_pretrained: <dir>/{unet,text_encoder,text_encoder_2}/adapter_model.safetensors
               + adapter_config.json (the layout of peft's examples/lora_dreambooth)
    kohya      diffusers' convert_state_dict_to_kohya on the peft state dict (the layout
               train_dreambooth_lora_sdxl.py --output_kohya_format writes: diffusers block names,
               alpha = rank as int64), or the sd-scripts layout (SGM block names from
               tests/golden/sgm/unet_keys.json, which diffusers' own converter validated; float32
               alpha per module, ss_network_* metadata)
The reference for every file is the library loading it back into a fresh pipeline:
    pipe.load_lora_weights(file); pipe.fuse_lora(lora_scale=0.4)         (diffusers, kohya files)
    PeftModel.from_pretrained(component, dir); scale_layer(0.4); merge()  (PEFT folders; the same
                                                                          calls fuse_lora makes)
In diffusers 0.42.1 / peft 0.21 fuse_lora(lora_scale=s) multiplies each layer's scaling
(lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora) by s, then merges
W += (B @ A) * scaling; convs use conv2d(A^T, B), the same sum.
One detour: transformers 5.24's load_adapter/add_adapter refuse peft 0.21.2 (they ask for >= 0.22,
not released), so for the text encoders the two peft calls they make (inject_adapter_in_model,
set_peft_model_state_dict) are made directly; key conversion, the LoraConfig built from alphas or
metadata, and the fuse are diffusers' own code.

Variants (one reference set each: the script asserts that every format of a variant fuses to
bit-identical weights, equal to fusing the LoRA that was written, before saving anything):
    a  diffusers' SDXL LoRA script defaults: UNet to_q/to_k/to_v/to_out.0 everywhere, both text
       encoders' q/k/v/out_proj, rank 4, alpha 4.                    files: diffusers, PEFT, kohya (converter)
    b  alpha != rank: UNet attention of the mid block and up_blocks.1 plus mid proj_out, rank 4,
       alpha 2, one module rank 8 (rank_pattern), proj_out alpha 16 (alpha_pattern); text encoder 1
       alpha 8; text encoder 2 alpha 4 with use_rslora (scale alpha / sqrt(r)).
       files: diffusers (raw lora_A/lora_B keys, text_model. prefix, alphas in lora_adapter_metadata),
       PEFT (adapter_config.json), kohya sd-scripts layout (the true alpha per module, alpha * sqrt(r)
       for rslora; diffusers' converter would write alpha = rank and lose it)
    c  kohya LoCon in the sd-scripts layout: 3x3 convs (conv_in, resnet conv1/conv2, a downsampler,
       an upsampler) at rank 2 alpha 1, a 1x1 conv_shortcut, time_emb_proj, proj_in, ff, attention
       at rank 4 alpha 2; text encoder 1 mlp.fc1/fc2. No text encoder 2 part.
Written to tests/golden/lora/: the LoRA files (A and B stored as F16: their values are f16 numbers,
as kohya's --save_precision fp16 writes them, so nothing is rounded) and ref.safetensors with, per
variant v: v.<component>.<parameter> for a few fused weights, v.unet_out (the unet_6x9 inputs of
tiny_sdxl_ref.safetensors), v.te1.penultimate, v.te2.penultimate, v.te2.text_embeds (row 0 of
te1.ids/te2.ids; te2 only where the variant has a text encoder 2 part).
"""
import copy
import json
import math
import os
import shutil

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import diffusers
import peft
from golden_common import GOLDEN_DIR, save

SEED = 7
SCALE = 0.4  # the product's default LoRA strength
TINY = os.path.join(GOLDEN_DIR, "tiny_sdxl")
OUT = os.path.join(GOLDEN_DIR, "lora")
REF = load_file(os.path.join(GOLDEN_DIR, "tiny_sdxl_ref.safetensors"))
SGM = {d[: -len(".weight")]: s[: -len(".weight")]
       for s, d in json.load(open(os.path.join(GOLDEN_DIR, "sgm", "unet_keys.json"))).items() if d.endswith(".weight")}
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
SHORT = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}
torch.manual_seed(SEED)
shutil.rmtree(OUT, ignore_errors=True)
os.makedirs(OUT)


def peft_load_adapter(self, adapter_name=None, adapter_state_dict=None, peft_config=None, **kwargs):
    """transformers 5.24's PreTrainedModel.load_adapter/add_adapter refuse peft < 0.22 (0.21.2 is the newest
    release): the two peft calls they make, inject the layers and load their state dict, made directly."""
    inject_adapter_in_model(peft_config, self, adapter_name)
    res = set_peft_model_state_dict(self, adapter_state_dict, adapter_name)
    assert not [k for k in res.unexpected_keys if "lora_" in k], res.unexpected_keys
    assert not [k for k in res.missing_keys if "lora_" in k and adapter_name in k], res.missing_keys


def fresh_pipe():
    # fp16 files upcast to f32: the values our loader reads
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY, torch_dtype=torch.float32)
    for te in (pipe.text_encoder, pipe.text_encoder_2):
        te.load_adapter = peft_load_adapter.__get__(te)
    return pipe


def randomize_lora(model, gen):
    """A ~ N(0, 1/fan_in), B ~ N(0, 1/r), rounded to f16 values: B @ A then has the size of W itself,
    so a merge at 0.4 changes every output noticeably."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                continue
            p.copy_(p.half().float())


def to_f16(path):
    """Rewrites a LoRA file with every floating tensor of 1 or more dims as F16 (exact: f16 values),
    keeping its metadata; 0-d alphas keep their dtype."""
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k: (v.half() if v.is_floating_point() and v.dim() > 0 else v) for k, v in sorted(sd.items())}
    for v in sd.values():
        assert v.dim() == 0 or torch.equal(v.float().half().float(), v.float())
    if meta and "lora_adapter_metadata" in meta:  # peft keeps target_modules as a set: fix its order
        m = json.loads(meta["lora_adapter_metadata"])
        m = {k: sorted(v) if k.endswith(".target_modules") and isinstance(v, list) else v for k, v in m.items()}
        meta["lora_adapter_metadata"] = json.dumps(m, indent=2, sort_keys=True)
    save_file(sd, path, metadata=meta)


def tuner_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def fuse_source(pipe):
    """What the LoRA that was written means: the source models fused with diffusers."""
    pipe.fuse_lora(components=[c for c in COMPONENTS if tuner_layers(getattr(pipe, c))], lora_scale=SCALE)


def peft_fuse(model):
    """peft's own merge, with the strength applied as fuse_lora applies it."""
    for _, m in tuner_layers(model):
        m.scale_layer(SCALE)
        m.merge()


def check_f32_loras(pipe):
    # peft's merge rounds the delta to the LoRA's dtype: keep it f32 so the reference is f32 math
    for c in COMPONENTS:
        for n, p in getattr(pipe, c).named_parameters():
            if "lora_" in n:
                assert p.dtype == torch.float32, (c, n, p.dtype)


def merged_weights(pipe, names):
    """The fused weights of every LoRA'd layer: {component.param: tensor}."""
    out = {}
    for c in COMPONENTS:
        sd = getattr(pipe, c).state_dict()
        for n in names.get(c, []):
            key = n + ".weight"
            if key not in sd:
                key = n + ".base_layer.weight"  # fused but not unloaded
            out[f"{c}.{n}"] = sd[key].detach().clone()
    return out


def lora_module_names(pipe):
    return {c: [n for n, _ in tuner_layers(getattr(pipe, c))] for c in COMPONENTS}


def outputs(pipe):
    """The text encoders on the first prompt of te1.ids / te2.ids ("a man opens a door"; one row keeps
    the file small), and one UNet evaluation on the unet_6x9 inputs (batch 2)."""
    out = {}
    with torch.no_grad():
        o1 = pipe.text_encoder(REF["te1.ids"][:1].long(), output_hidden_states=True)
        o2 = pipe.text_encoder_2(REF["te2.ids"][:1].long(), output_hidden_states=True)
        out["te1.penultimate"] = o1.hidden_states[-2]
        out["te2.penultimate"] = o2.hidden_states[-2]
        out["te2.text_embeds"] = o2.text_embeds
        g = lambda k: REF["unet_6x9." + k]
        out["unet_out"] = pipe.unet(g("sample"), g("t"), encoder_hidden_states=g("ctx"),
                                    added_cond_kwargs={"text_embeds": g("text_embeds"), "time_ids": g("time_ids")}).sample
    return out


def same(label, got, want):
    for k in want:
        if not torch.equal(got[k], want[k]):
            d = (got[k] - want[k]).abs().max().item()
            raise SystemExit(f"{label}: {k} differs from the source LoRA by {d:g}")


def save_diffusers(pipe, path, raw_peft_keys=False, text_model_prefix=False, with_metadata=False):
    """save_lora_weights as the diffusers SDXL scripts call it (convert_state_dict_to_diffusers of the
    peft state dict), or with the raw lora_A/lora_B keys and the LoraConfigs as lora_adapter_metadata."""
    layers, meta = {}, {}
    for c in COMPONENTS:
        model = getattr(pipe, c)
        if not tuner_layers(model):
            continue
        sd = get_peft_model_state_dict(model)
        if not raw_peft_keys:
            sd = convert_state_dict_to_diffusers(sd)
        if text_model_prefix and c == "text_encoder":  # transformers 5 flattened CLIPTextModel; older
            sd = {"text_model." + k: v for k, v in sd.items()}  # versions (and CLIPTextModelWithProjection) nest it
        layers[c] = sd
        if with_metadata:
            meta[c] = model.peft_config["default"].to_dict()
    kwargs = {f"{'unet' if c == 'unet' else c}_lora_layers": v for c, v in layers.items()}
    if with_metadata:
        kwargs.update({f"{c}_lora_adapter_metadata": v for c, v in meta.items()})
    d = path + ".dir"
    StableDiffusionXLPipeline.save_lora_weights(d, **kwargs)
    shutil.move(os.path.join(d, "pytorch_lora_weights.safetensors"), path)
    shutil.rmtree(d)
    to_f16(path)


def save_peft(pipe, folder):
    """One PeftModel per component, carrying the trained adapter, saved by peft."""
    base = fresh_pipe()
    for c in COMPONENTS:
        src = getattr(pipe, c)
        if not tuner_layers(src):
            continue
        pm = get_peft_model(copy.deepcopy(getattr(base, c)), copy.deepcopy(src.peft_config["default"]))
        res = set_peft_model_state_dict(pm, {"base_model.model." + k: v for k, v in get_peft_model_state_dict(src).items()})
        assert not res.unexpected_keys, res.unexpected_keys
        pm.save_pretrained(os.path.join(folder, c))
        os.remove(os.path.join(folder, c, "README.md"))
        # peft records where the base model was loaded from: keep the machine's paths out of the golden
        cfg_path = os.path.join(folder, c, "adapter_config.json")
        cfg = json.load(open(cfg_path))
        cfg["base_model_name_or_path"] = f"tests/golden/tiny_sdxl/{c}"
        if isinstance(cfg["target_modules"], list):  # a set in peft: its order changes from run to run
            cfg["target_modules"] = sorted(cfg["target_modules"])
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        to_f16(os.path.join(folder, c, "adapter_model.safetensors"))


def kohya_converter(pipe, path):
    """diffusers' convert_state_dict_to_kohya on the PEFT state dict with component prefixes (its
    documented input). Not the way train_dreambooth_lora_sdxl.py --output_kohya_format goes (through
    convert_all_state_dict_to_peft of the saved diffusers file): in diffusers 0.42.1 that leaves the
    UNet's .lora.down keys unconverted as soon as the file has text-encoder keys, and the result does
    not load."""
    sd = {}
    for c in COMPONENTS:
        model = getattr(pipe, c)
        if tuner_layers(model):
            sd.update({f"{c}.{k}": v for k, v in get_peft_model_state_dict(model).items()})
    save_file(convert_state_dict_to_kohya(sd), path)
    to_f16(path)


def kohya_sd_scripts(pipe, path, alphas, meta):
    """The sd-scripts layout: SGM block names for the UNet, text_model names for the text encoders,
    float32 alpha per module (alphas: {component.module: alpha}). The renaming is ours; diffusers
    loading the file back (below) is what validates it."""
    sd = {}
    for c in COMPONENTS:
        model = getattr(pipe, c)
        if not tuner_layers(model):
            continue
        psd = get_peft_model_state_dict(model)
        for n, _ in tuner_layers(model):
            if c == "unet":
                name = "lora_unet_" + SGM[n].replace(".", "_")
            else:
                name = ("lora_te1_" if c == "text_encoder" else "lora_te2_") + "text_model_" + \
                    n.removeprefix("text_model.").replace(".", "_")
            sd[name + ".lora_down.weight"] = psd[n + ".lora_A.weight"]
            sd[name + ".lora_up.weight"] = psd[n + ".lora_B.weight"]
            sd[name + ".alpha"] = torch.tensor(float(alphas[f"{c}.{n}"]), dtype=torch.float32)
    save_file(sd, path, metadata=meta)
    to_f16(path)


def module_alpha(cfg, name):
    """peft's effective alpha * r / r_eff bookkeeping, as a kohya alpha: scaling * rank."""
    from peft.utils.other import get_pattern_key
    r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), name), cfg.r)
    a = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), name), cfg.lora_alpha)
    return a * math.sqrt(r) if cfg.use_rslora else a  # alpha / sqrt(r) == (alpha * sqrt(r)) / r


def kohya_alphas(pipe):
    out = {}
    for c in COMPONENTS:
        model = getattr(pipe, c)
        for n, _ in tuner_layers(model):
            out[f"{c}.{n}"] = module_alpha(model.peft_config["default"], n)
    return out


def reference_diffusers(path):
    pipe = fresh_pipe()
    pipe.load_lora_weights(path)
    check_f32_loras(pipe)
    pipe.fuse_lora(lora_scale=SCALE)
    return pipe


def reference_peft(folder):
    pipe = fresh_pipe()
    for c in COMPONENTS:
        sub = os.path.join(folder, c)
        if os.path.isdir(sub):
            pm = PeftModel.from_pretrained(getattr(pipe, c), sub)
            check = {n: p.dtype for n, p in pm.named_parameters() if "lora_" in n}
            assert all(d == torch.float32 for d in check.values())
            peft_fuse(pm)
            setattr(pipe, c, pm.unload())  # the base model, merged weights kept
    return pipe


ref = {}


def variant(tag, pipe, files, keep):
    """Fuses the written LoRA in the source pipeline, checks every file against it, saves the refs."""
    names = lora_module_names(pipe)
    fuse_source(pipe)
    want = merged_weights(pipe, names)
    want_out = outputs(pipe)
    for label, make_ref in files:
        p = make_ref()
        same(f"{tag} {label}", merged_weights(p, names), want)
        same(f"{tag} {label} outputs", outputs(p), want_out)
        print(f"  {tag} {label}: fuses to the same weights and outputs as the source LoRA")
    base = fresh_pipe()
    changed = (outputs(base)["unet_out"] - want_out["unet_out"]).abs().max().item()
    print(f"  {tag}: {sum(len(v) for v in names.values())} LoRA layers; the merge at {SCALE} moves the UNet "
          f"output by up to {changed:.3f}")
    for k in keep:  # named as the C side names them: a, te1/te2, the transformers name without text_model.
        c, n = k.split(".", 1)
        m = n if c == "unet" or n in names[c] else "text_model." + n
        ref[f"{tag}.{SHORT[c]}.{n}.weight"] = want[f"{c}.{m}"]
    for k, v in want_out.items():
        if k.startswith("te2.") and not names["text_encoder_2"]:
            continue  # untouched: the test checks that te2 = NULL is accepted instead
        ref[f"{tag}.{k}"] = v


gen = torch.Generator().manual_seed(SEED)

# ---- a: diffusers' SDXL LoRA script defaults (train_text_to_image_lora_sdxl.py with --train_text_encoder)
pipe = fresh_pipe()
pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
te_cfg = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
inject_adapter_in_model(te_cfg, pipe.text_encoder)  # = CLIPTextModel.add_adapter (see peft_load_adapter)
inject_adapter_in_model(copy.deepcopy(te_cfg), pipe.text_encoder_2)
for c in COMPONENTS:
    randomize_lora(getattr(pipe, c), gen)
save_diffusers(pipe, os.path.join(OUT, "a_diffusers.safetensors"))
save_peft(pipe, os.path.join(OUT, "a_peft"))
kohya_converter(pipe, os.path.join(OUT, "a_kohya.safetensors"))
variant("a", pipe, [
    ("diffusers", lambda: reference_diffusers(os.path.join(OUT, "a_diffusers.safetensors"))),
    ("peft", lambda: reference_peft(os.path.join(OUT, "a_peft"))),
    ("kohya (diffusers converter)", lambda: reference_diffusers(os.path.join(OUT, "a_kohya.safetensors"))),
], keep=["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
         "unet.mid_block.attentions.0.transformer_blocks.1.attn2.to_k",
         "unet.up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_out.0",
         "text_encoder.encoder.layers.0.self_attn.q_proj",
         "text_encoder_2.encoder.layers.2.self_attn.out_proj"])

# ---- b: alpha != rank, rank/alpha patterns, rslora
pipe = fresh_pipe()
att = r"(mid_block|up_blocks\.1)\.attentions\.\d\.transformer_blocks\.\d\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
pipe.unet.add_adapter(LoraConfig(
    r=4, lora_alpha=2, init_lora_weights="gaussian", target_modules=rf"{att}|mid_block\.attentions\.0\.proj_out",
    rank_pattern={"mid_block.attentions.0.transformer_blocks.1.attn2.to_k": 8},
    alpha_pattern={"^mid_block.attentions.0.proj_out": 16}))
inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), pipe.text_encoder)
inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
                        pipe.text_encoder_2)
for c in COMPONENTS:
    randomize_lora(getattr(pipe, c), gen)
save_diffusers(pipe, os.path.join(OUT, "b_diffusers.safetensors"), raw_peft_keys=True, text_model_prefix=True,
               with_metadata=True)
save_peft(pipe, os.path.join(OUT, "b_peft"))
kohya_sd_scripts(pipe, os.path.join(OUT, "b_kohya.safetensors"), kohya_alphas(pipe),
                 {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2",
                  "ss_base_model_version": "sdxl_base_v1-0"})
variant("b", pipe, [
    ("diffusers", lambda: reference_diffusers(os.path.join(OUT, "b_diffusers.safetensors"))),
    ("peft", lambda: reference_peft(os.path.join(OUT, "b_peft"))),
    ("kohya (sd-scripts layout)", lambda: reference_diffusers(os.path.join(OUT, "b_kohya.safetensors"))),
], keep=["unet.mid_block.attentions.0.transformer_blocks.1.attn2.to_k",  # rank 8
         "unet.mid_block.attentions.0.proj_out",                          # alpha 16
         "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_v",
         "text_encoder.encoder.layers.1.self_attn.v_proj",
         "text_encoder_2.encoder.layers.0.self_attn.k_proj"])               # rslora

# ---- c: kohya LoCon (conv_dim / conv_alpha) in the sd-scripts layout
pipe = fresh_pipe()
convs = ["conv_in", "down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2", "down_blocks.0.downsamplers.0.conv",
         "up_blocks.0.upsamplers.0.conv"]
linears = ["down_blocks.1.resnets.0.conv_shortcut",  # 1x1 conv, network_dim like kohya
           "down_blocks.0.resnets.1.time_emb_proj", "down_blocks.1.attentions.1.proj_in",
           "down_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj",
           "down_blocks.1.attentions.1.transformer_blocks.0.ff.net.2"] + \
          [f"down_blocks.1.attentions.1.transformer_blocks.{b}.{a}.{m}" for b in (0, 1) for a in ("attn1", "attn2")
           for m in ("to_q", "to_k", "to_v", "to_out.0")]
pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=convs + linears,
                                 rank_pattern={f"^{n}": 2 for n in convs}, alpha_pattern={f"^{n}": 1 for n in convs}))
inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, target_modules=["fc1", "fc2"]), pipe.text_encoder)
for c in ("unet", "text_encoder"):
    randomize_lora(getattr(pipe, c), gen)
kohya_sd_scripts(pipe, os.path.join(OUT, "c_kohya_locon.safetensors"), kohya_alphas(pipe),
                 {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2",
                  "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "1"})})
variant("c", pipe, [
    ("kohya LoCon (sd-scripts layout)", lambda: reference_diffusers(os.path.join(OUT, "c_kohya_locon.safetensors"))),
], keep=["unet.conv_in", "unet.down_blocks.0.resnets.0.conv1", "unet.down_blocks.0.downsamplers.0.conv",
         "unet.down_blocks.1.resnets.0.conv_shortcut", "unet.down_blocks.0.resnets.1.time_emb_proj",
         "unet.down_blocks.1.attentions.1.transformer_blocks.0.ff.net.2", "text_encoder.encoder.layers.2.mlp.fc2"])

save(ref, "lora/ref.safetensors", __file__, SEED,
     extra={"scale": SCALE, "diffusers": diffusers.__version__, "peft": peft.__version__})
total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
print(f"wrote {OUT}: {total / 1024:.0f} KiB")
