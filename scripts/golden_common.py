"""Shared helpers for the scripts that write tests/golden/*.safetensors.

Every golden file records in its __metadata__ the script that made it, the seed, and the
versions of the libraries that computed it, so a failing comparison can be traced to a change
on either side. Tests never need Python; these scripts only regenerate the committed files.
"""
import os
import platform
import sys

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")


def versions():
    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "PIL", "diffusers", "transformers", "safetensors"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            out[name] = mod.__version__
    try:
        import torch
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    return out


def save(tensors, filename, script, seed, extra=None):
    """Writes tensors (name -> torch tensor) to tests/golden/<filename> with provenance metadata."""
    import torch
    from safetensors.torch import save_file

    meta = {"script": os.path.basename(script), "seed": str(seed), "format_version": "1"}
    meta.update({k: str(v) for k, v in versions().items()})
    if extra:
        meta.update({k: str(v) for k, v in extra.items()})
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    path = os.path.join(GOLDEN_DIR, filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata=meta)
    size = os.path.getsize(path)
    print(f"wrote {path}: {len(tensors)} tensors, {size / 1024:.1f} KiB")
    return path


def clip_bpe_merges():
    """The 48,894 merges of OpenAI's CLIP BPE (SD/SDXL tokenizers), from open_clip's packaged
    bpe_simple_vocab_16e6.txt.gz (pip install open_clip_torch --no-deps; it is found without
    importing open_clip, which would pull in torchvision)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise SystemExit("needs open_clip_torch for the CLIP BPE merges: pip install --no-deps open_clip_torch")
    path = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # openai/CLIP simple_tokenizer: merges = lines[1 : 49152 - 256 - 2 + 1]
    return [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table, used by CLIP's BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer_files(folder, n_merges=None):
    """vocab.json and merges.txt as the HF CLIP tokenizer folders hold them, derived from the merges
    as openai/CLIP does: 256 byte symbols, the same with </w>, one entry per merge, then the two
    special tokens. n_merges keeps only the first n merges (a tiny vocabulary for tiny models)."""
    import json

    merges = clip_bpe_merges()
    if n_merges is not None:
        merges = merges[:n_merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return len(vocab)
