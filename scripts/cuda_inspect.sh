#!/usr/bin/env bash
# What the compiled CUDA kernels look like, with no GPU needed: registers, shared memory, stack and
# local memory (spills) of every kernel, and the instruction mix of the FlashAttention kernel
# (tensor-core HMMA, ldmatrix LDSM, and no LDL/STL local-memory traffic).
#
#   scripts/cuda_inspect.sh          (builds build/cuda/kernels.o with make CUDA=1 first)
#
# Needs cuobjdump, part of the CUDA toolkit; where the toolkit came without it:
#   pip download --no-deps nvidia-cuda-cuobjdump && unzip the wheel, then put its bin/ on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
command -v cuobjdump >/dev/null || { echo "error: cuobjdump not found (see the header of $0)" >&2; exit 1; }
make -s CUDA=1 build/cuda/kernels.o
obj=build/cuda/kernels.o
echo "== resources per kernel (REG registers per thread, SHARED bytes per block, LOCAL = spills)"
cuobjdump --dump-resource-usage "$obj" | grep -A1 "Function" | paste - - |
  sed -E 's/ *Function ([^:]*):.*REG:([0-9]+) STACK:([0-9]+) SHARED:([0-9]+) LOCAL:([0-9]+).*/\2\t\4\t\3\t\5\t\1/' |
  c++filt | sort -t$'\t' -k5 | awk -F'\t' 'BEGIN { printf "%5s %7s %5s %5s  %s\n", "REG", "SHARED", "STACK", "LOCAL", "kernel" }
    { sub(/\(.*/, "", $5); printf "%5s %7s %5s %5s  %s\n", $1, $2, $3, $4, $5 }' | uniq
echo
echo "== flash_attention_kernel<__half>: static instruction counts (the key-block loop body appears once:"
echo "   64 HMMA = 32 for Q K^T and 32 for P V per 64 keys; no LDL/STL means no local memory)"
cuobjdump --dump-sass "$obj" | awk '/Function : .*flash_attention_kernel.*6__half/ { f = 1; next } f && /Function : / { f = 0 } f' |
  grep -oE "\b(HMMA|LDSM|LDS|STS|LDG|STG|LDL|STL|MUFU|BAR|SHFL)[A-Z0-9._]*" | sort | uniq -c | sort -rn
