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
