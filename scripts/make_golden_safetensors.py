"""Writes the safetensors files tests/test_safetensors.c reads, with the reference writer:

    tests/golden/st/dtypes.safetensors     one tensor per dtype (F32 F16 BF16 F64 I8 U8 I16 U16
                                           I32 U32 I64 U64 BOOL) and a __metadata__ block
    tests/golden/st/sharded/               a diffusers-style component folder split in two shards:
        diffusion_pytorch_model.safetensors.index.json, ...-00001-of-00002.safetensors, ...-00002-...
        config.json
    tests/golden/st/variant/model.fp16.safetensors   the ".fp16" variant naming of diffusers folders

    pip install torch safetensors numpy
    python3 scripts/make_golden_safetensors.py
"""
import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

from golden_common import GOLDEN_DIR, versions

SEED = 7
torch.manual_seed(SEED)
out = os.path.join(GOLDEN_DIR, "st")
os.makedirs(os.path.join(out, "sharded"), exist_ok=True)
os.makedirs(os.path.join(out, "variant"), exist_ok=True)
meta = {"script": "make_golden_safetensors.py", "seed": str(SEED), "format_version": "1"}
meta.update({k: str(v) for k, v in versions().items()})

# Values chosen so every dtype holds them exactly, and the C test can recompute them: v[i] = i - 3
# (booleans: i % 2), shape (2, 3).
base = np.arange(6, dtype=np.float64).reshape(2, 3) - 3
arrays = {
    "t_f32": base.astype(np.float32), "t_f16": base.astype(np.float16), "t_f64": base.astype(np.float64),
    "t_i8": base.astype(np.int8), "t_u8": (base + 3).astype(np.uint8), "t_i16": base.astype(np.int16),
    "t_u16": (base + 3).astype(np.uint16), "t_i32": base.astype(np.int32), "t_u32": (base + 3).astype(np.uint32),
    "t_i64": base.astype(np.int64), "t_u64": (base + 3).astype(np.uint64),
    "t_bool": (np.arange(6).reshape(2, 3) % 2).astype(np.bool_),
    "t_scalar": np.array(2.5, dtype=np.float32),  # rank 0
    "t_empty": np.zeros((0, 4), dtype=np.float32),  # zero elements
}
save_numpy(arrays, os.path.join(out, "dtypes_np.safetensors"), metadata=dict(meta, note="numpy writer"))
# bf16 needs torch; put it with the float types in a second file
save_file({"t_bf16": torch.tensor(base, dtype=torch.bfloat16), "t_f32": torch.tensor(base, dtype=torch.float32)},
          os.path.join(out, "dtypes_bf16.safetensors"), metadata=dict(meta, note="torch writer"))

# A sharded component: 5 tensors over two files, as transformers' save_pretrained(max_shard_size) does.
names = ["conv_in.weight", "conv_in.bias", "down.0.weight", "down.0.bias", "out.weight"]
tensors = {n: torch.randn(3, 4) if n.endswith("weight") else torch.randn(4) for n in names}
shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[:3],
          "diffusion_pytorch_model-00002-of-00002.safetensors": names[3:]}
weight_map = {}
for fname, members in shards.items():
    save_file({n: tensors[n] for n in members}, os.path.join(out, "sharded", fname), metadata={"format": "pt"})
    weight_map.update({n: fname for n in members})
with open(os.path.join(out, "sharded", "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(t.numel() * 4 for t in tensors.values())}, "weight_map": weight_map}, f, indent=2)
with open(os.path.join(out, "sharded", "config.json"), "w") as f:
    json.dump({"_class_name": "UNet2DConditionModel", "in_channels": 4, "block_out_channels": [320, 640, 1280],
               "norm_eps": 1e-05, "use_linear_projection": True, "sample_size": 128}, f, indent=2)
# the expected values of the sharded tensors, in one plain file
save_file(tensors, os.path.join(out, "sharded_expected.safetensors"), metadata=meta)
save_file({"w": torch.tensor(base, dtype=torch.float16)}, os.path.join(out, "variant", "model.fp16.safetensors"))
for root, _, files in os.walk(out):
    for fn in sorted(files):
        print("wrote", os.path.join(root, fn), os.path.getsize(os.path.join(root, fn)), "bytes")
