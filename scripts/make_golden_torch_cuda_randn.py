"""Writes torch's CUDA randn output for scripts/gpu_check.sh to compare with our curand kernel.

    python3 scripts/make_golden_torch_cuda_randn.py OUT.safetensors     (needs a CUDA GPU and torch)

torch.Generator("cuda") draws depend on the GPU (the launch grid follows its SM count), so this
golden is made on the machine that runs the check, not committed. Names are
randn_cuda.<seed>.<philox offset before the call>.<shape>; the metadata holds the device.
"""
import sys

import torch
from safetensors.torch import save_file

assert torch.cuda.is_available(), "needs a CUDA device"
out = {}
# Seeds past 32 bits reach the Philox key's high word (curand_init: key = low, high 32 bits of the
# seed), and -1 is 2^64 - 1 (manual_seed's two's-complement rule); names carry initial_seed().
for seed, shapes in [(42, [(1, 4, 96, 171), (1, 4, 96, 171)]), (1234, [(2, 4, 128, 128)]), (7, [(3, 5)]),
                     (2**32 - 1, [(1, 4, 8, 8)]), (2**32 + 42, [(1, 4, 8, 8)]), (2**63, [(1, 4, 8, 8)]), (-1, [(1, 4, 8, 8)])]:
    g = torch.Generator("cuda").manual_seed(seed)
    for shape in shapes:  # successive calls on one generator: the second starts at a later offset
        offset = g.get_offset()
        x = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32)
        out["randn_cuda.%d.%d.%s" % (g.initial_seed(), offset, "x".join(map(str, shape)))] = x.cpu()
props = torch.cuda.get_device_properties(0)
meta = {"script": "make_golden_torch_cuda_randn.py", "torch": torch.__version__, "device": props.name,
        "multiprocessors": str(props.multi_processor_count)}
save_file(out, sys.argv[1], metadata=meta)
print(f"wrote {sys.argv[1]}: {len(out)} tensors from {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}")
