"""Opens the safetensors file our writer produced during `make test`
(build/test_roundtrip.safetensors, written by tests/test_safetensors.c) with the reference
implementation (pip install safetensors numpy) and checks every tensor and metadata value.
Exits non-zero on any mismatch. .ci/run calls it as an optional reference check.
"""
import sys

import numpy as np
from safetensors import safe_open

path = "build/test_roundtrip.safetensors"
expected = {
    "layer.weight": np.array([[1.5, -2, 3], [4, 5, 6e-8]], dtype=np.float32),
    "layer.half": np.array([1, -2, np.inf], dtype=np.float16),
    'ids "quoted" \\ name': np.array([-1, 1 << 40], dtype=np.int64),
}
meta_expected = {"ss_network_dim": "4", "prompt": 'a "storyboard" frame\nline two, ünïcödé'}
ok = True
with safe_open(path, framework="numpy") as f:
    meta = f.metadata()
    for k, v in meta_expected.items():
        if meta.get(k) != v:
            print(f"FAIL metadata {k!r}: {meta.get(k)!r} != {v!r}")
            ok = False
    for name, want in expected.items():
        got = f.get_tensor(name)
        if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
            print(f"FAIL {name!r}: {got!r} != {want!r}")
            ok = False
print(("ok: " if ok else "FAILED: ") + f"{path} read by the safetensors package, {len(expected)} tensors and metadata match")
sys.exit(0 if ok else 1)
