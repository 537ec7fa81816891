#!/usr/bin/env bash
# GPU check: run on a machine with an NVIDIA GPU (it needs nvcc, cuBLAS and a device).
#
#   scripts/gpu_check.sh              (the device tool: carry .whl, see docs/gpu-runs.md)
#   scripts/gpu_check.sh tests train  only those parts (after the build, which always runs):
#                                     tests, sanitizer, demo, eval, ceilings, unet, generate, train
#
#  1. builds with CUDA=1 (CUDA_ARCH=sm_90 unless set); has torch (when it is there) write its CUDA
#     randn for seed 42 etc., so our curand kernel is checked bit for bit against it;
#  2. runs the whole test suite on the CPU backend: with a device present, the ops_cuda_* tests
#     compare every CUDA kernel against its CPU reference on fresh random inputs, in f32 and in the
#     16-bit storage of the fast path (ops_cuda_16bit: tensor-core GEMMs, FlashAttention, fused
#     group norm + SiLU), and the model tests compare the CUDA VAE, CLIP, YOLO and BLIP;
#  3. runs the suite again with --backend cuda: the PyTorch goldens on the GPU;
#  4. runs the op tests under compute-sanitizer (memcheck), when it is installed;
#  5. runs `sdxl demo` (the whole tiny pipeline) on both backends, in f32 and in the fast
#     precision (UNet f16, VAE bf16), and compares the pictures; and `sdxl eval` on both;
#  6. measures the card's ceilings (a device-to-device copy, fp16 and fp32 GEMMs), then the
#     benchmarks: `sdxl bench unet` (full-size SDXL, fp16, batch 2, 1024x1024 and 1368x768) and
#     `sdxl bench generate` (a whole 25-step 1365x768 thumbnail), each beside diffusers on the
#     same card with the same settings (scripts/bench_torch.py; diffusers comes as a wheel in
#     .whl/, installed here into /tmp/site when the machine has none);
#  7. `sdxl bench train` (LoRA training steps on the full-size UNet at 1024x1024, batch 1, fp16,
#     with and without gradient checkpointing) beside diffusers + peft (scripts/bench_torch.py
#     train), and a short `sdxl train` run of the tiny model on both backends;
# then prints one table. table.md, gpu_check.log and the three test logs go to $OUT (the device
# tool's output folder) or build/gpu_check/, everything else to build/gpu_check/; table.md is
# rewritten after every row, so a run cut short still leaves what it measured.
# All of it is estimated at about 10 minutes on an H100; a session's device time is 15 minutes in
# all, so run it in two calls: `tests sanitizer train`, then `demo eval ceilings unet generate`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH" # its nvcc first: the Makefile takes CUDA_HOME from it
# Artefacts (pictures, reports, bench outputs) go to build/gpu_check; the five files a reader
# needs go to $OUT (the device tool returns at most 8 files from it), or beside the artefacts.
OUT_DIR=build/gpu_check
LOG_DIR="${OUT:-$OUT_DIR}"
mkdir -p "$OUT_DIR" "$LOG_DIR"
LOG="$LOG_DIR/gpu_check.log"
: >"$LOG"
PARTS=" $* "
want() { [ "$PARTS" = "  " ] || [[ "$PARTS" == *" $1 "* ]]; }
for part in "$@"; do
  case $part in tests|sanitizer|demo|eval|ceilings|unet|generate|train) ;;
    *) echo "gpu_check.sh: unknown part '$part' (tests sanitizer demo eval ceilings unet generate train)" >&2; exit 2 ;;
  esac
done
rows=()
table() { echo "| check | result | detail |"; echo "|---|---|---|"; printf '%s\n' "${rows[@]}"; }
row() { rows+=("| $1 | $2 | $3 |"); table >"$LOG_DIR/table.md"; }
step() { echo "== $*" | tee -a "$LOG"; }
secs() { echo $(( $(date +%s) - $1 )); }
START=$(date +%s)

step "device"
device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "$device" | tee -a "$LOG"
row "device" "${device:-none}" "$(date -u +%Y-%m-%dT%H:%MZ)"

# diffusers for the comparisons: carried as wheels when the machine has none
if ! python3 -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
row "diffusers / torch" "$(python3 -c 'import diffusers, torch; print(diffusers.__version__, "/", torch.__version__)' 2>/dev/null || echo "not importable")" "for the ratios"

step "build: make CUDA=1"
t=$(date +%s)
if make -j"$(nproc)" CUDA=1 all >>"$LOG" 2>&1; then row "build CUDA=1 (${CUDA_ARCH:-sm_90})" "ok" "$(secs $t) s"
else row "build CUDA=1" "FAILED" "see $LOG"; tail -30 "$LOG"; printf '%s\n' "${rows[@]}"; exit 1; fi

# the runner's last line, or the error that stopped it
summary() { grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -1 | grep . || { echo -n "did not finish: "; grep -m1 '^error:' "$1"; }; }
skipped() { grep -E '^[0-9]+ skipped' "$1" | sed 's/:.*//' | tail -1; }

if want tests; then
step "torch's CUDA randn golden (made here: it depends on the GPU)"
if python3 scripts/make_golden_torch_cuda_randn.py "$OUT_DIR/torch_cuda_randn.safetensors" >>"$LOG" 2>&1; then
  export SDXL_TORCH_CUDA_RANDN="$OUT_DIR/torch_cuda_randn.safetensors"
fi

step "tests on the CPU backend (with CUDA-vs-CPU comparisons)"
t=$(date +%s)
timeout 300 ./tests/run_tests >"$LOG_DIR/tests_cpu_backend.log" 2>&1
rc=$?
row "tests (incl. ops_cuda_*, ops_cuda_16bit, *_cuda_*)" "$(summary "$LOG_DIR/tests_cpu_backend.log") (rc $rc)" "$(skipped "$LOG_DIR/tests_cpu_backend.log"); $(secs $t) s"
grep -E '^(FAIL|SKIP)|FAIL$' "$LOG_DIR/tests_cpu_backend.log" | head -40 | tee -a "$LOG"

step "tests on the CUDA backend (PyTorch goldens on the GPU)"
t=$(date +%s)
timeout 240 ./tests/run_tests --backend cuda >"$LOG_DIR/tests_cuda_backend.log" 2>&1
rc=$?
row "tests --backend cuda" "$(summary "$LOG_DIR/tests_cuda_backend.log") (rc $rc)" "$(secs $t) s"
grep -E '^(FAIL|SKIP)|FAIL$' "$LOG_DIR/tests_cuda_backend.log" | head -40 | tee -a "$LOG"

fi

if want sanitizer; then
step "compute-sanitizer memcheck on the 16-bit op tests"
if command -v compute-sanitizer >/dev/null 2>&1; then
  t=$(date +%s)
  timeout 120 compute-sanitizer --tool memcheck --leak-check no ./tests/run_tests ops_cuda_16bit >"$LOG_DIR/sanitizer.log" 2>&1
  rc=$?
  errs=$(grep -Eo 'ERROR SUMMARY: [0-9]+ error' "$LOG_DIR/sanitizer.log" | tail -1)
  row "compute-sanitizer memcheck (ops_cuda_16bit)" "${errs:-no summary} (rc $rc)" "$(secs $t) s"
else
  row "compute-sanitizer" "not installed" "-"
fi

fi

# max and mean 8-bit difference of two PNGs
pngdiff() {
  python3 -c "
import sys; from PIL import Image; import numpy as np
a = np.asarray(Image.open(sys.argv[1]), dtype=int); b = np.asarray(Image.open(sys.argv[2]), dtype=int)
print(f'max difference {abs(a - b).max()} of 255, mean {abs(a - b).mean():.3f}')" "$1" "$2" 2>&1 | tail -1
}

if want demo || want eval; then
step "demo (the whole tiny pipeline) on both backends, f32 and the fast precision"
for prec in fp32 fast; do
  args="--precision fp32 --vae-precision fp32"; [ $prec = fast ] && args="--precision fp16 --vae-precision bf16"
  if ./sdxl demo --backend cpu --steps 4 $args --out "$OUT_DIR/demo_cpu_$prec.png" >>"$LOG" 2>&1 &&
     ./sdxl demo --backend cuda --steps 4 $args --out "$OUT_DIR/demo_cuda_$prec.png" >>"$LOG" 2>&1; then
    row "demo 1365x768, 4 steps, $prec: cuda vs cpu" "$(pngdiff "$OUT_DIR/demo_cpu_$prec.png" "$OUT_DIR/demo_cuda_$prec.png")" "-"
  else
    row "demo $prec" "FAILED" "$(grep '^error:' "$LOG" | tail -1)"
  fi
done

fi

if want eval; then
step "eval (every tiny evaluator) on both backends"
mkdir -p "$OUT_DIR/frames"
cp "$OUT_DIR/demo_cpu_fp32.png" "$OUT_DIR/frames/" 2>/dev/null
EVALUATORS="--clip tests/golden/clip_vision/tiny_clip --interrogator-lists tests/golden/clip_vision/labels --cache $OUT_DIR/label_cache --yolo tests/golden/yolo/tiny.safetensors --blip tests/golden/blip/tiny_blip --minilm tests/golden/blip/tiny_minilm"
if ./sdxl eval --backend cpu --images "$OUT_DIR/frames" --out "$OUT_DIR/eval_cpu" $EVALUATORS >>"$LOG" 2>&1 &&
   ./sdxl eval --backend cuda --images "$OUT_DIR/frames" --out "$OUT_DIR/eval_cuda" $EVALUATORS >>"$LOG" 2>&1; then
  cmp=$(python3 -c "
import json, sys
a, b = (json.load(open(f))['images'][0] for f in sys.argv[1:3])
d = max(abs(a['clip']['cosine'] - b['clip']['cosine']), abs(a['similarity']['minilm_cosine'] - b['similarity']['minilm_cosine']))
same = a['caption']['text'] == b['caption']['text'] and len(a['detection']['boxes']) == len(b['detection']['boxes'])
word = 'identical' if same else 'DIFFER'
print(f'cosines within {d:.1e}; caption and detection count {word}')" "$OUT_DIR/eval_cpu/report.json" "$OUT_DIR/eval_cuda/report.json" 2>&1 | tail -1)
  row "eval, tiny evaluators: cuda vs cpu" "${cmp:-compare failed}" "-"
else
  row "eval on both backends" "FAILED" "$(grep '^error:' "$LOG" | tail -1)"
fi

fi

if want ceilings; then
step "the card's ceilings: device-to-device copy, GEMMs"
bw=$(timeout 60 python3 -c "
import torch
x = torch.empty(2**30, dtype=torch.uint8, device='cuda').random_(); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record(); [y.copy_(x) for _ in range(10)]; e.record(); torch.cuda.synchronize()
print(f'{2 * 10 * 2**30 / (s.elapsed_time(e) / 1e3) / 1e12:.2f} TB/s (read + write)')" 2>>"$LOG")
row "device-to-device copy, 1 GiB" "${bw:-not measured}" "torch"
./sdxl bench matmul --backend cuda --precision fp16 --repeat 20 | tee "$OUT_DIR/bench_matmul_fp16.txt" >>"$LOG"
./sdxl bench matmul --backend cuda --precision fp32 --repeat 10 --max-size 4096 | tee "$OUT_DIR/bench_matmul_fp32.txt" >>"$LOG"
gf() { awk -v s="$2" '$1 == s { printf "%.0f", $3 / 1000 }' "$1"; }
row "GEMM 4096^3: fp16 (f32 accumulate) / fp32, cuBLAS" "$(gf "$OUT_DIR/bench_matmul_fp16.txt" 4096x4096x4096) / $(gf "$OUT_DIR/bench_matmul_fp32.txt" 4096x4096x4096) TFLOP/s" "random data"
row "GEMM 2048x10240x1280 (level-2 GEGLU in), fp16" "$(gf "$OUT_DIR/bench_matmul_fp16.txt" 2048x10240x1280) TFLOP/s" "cuBLAS"

fi

if want unet; then
step "bench unet: full-size SDXL, fp16, batch 2 (one CFG step)"
timeout 180 ./sdxl bench unet --backend cuda --precision fp16 --repeat 10 2>&1 | tee "$OUT_DIR/bench_unet.txt" >>"$LOG"
timeout 240 python3 scripts/bench_torch.py unet --device cuda --dtype float16 --repeat 10 2>&1 | tee "$OUT_DIR/bench_unet_torch.txt" >>"$LOG"
# "<s> s per evaluation" for the given size, ours and theirs
per_eval() { grep "^unet $2 px" "$1" | grep -o "[0-9.]* s per evaluation" | cut -d' ' -f1; }
for size in 1024x1024 1368x768; do
  ours=$(per_eval "$OUT_DIR/bench_unet.txt" "$size"); theirs=$(per_eval "$OUT_DIR/bench_unet_torch.txt" "$size")
  detail=$(grep -A1 "^unet $size px" "$OUT_DIR/bench_unet.txt" | tail -1 | sed 's/^ *//; s/, peak/; peak/')
  ratio=$(python3 -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{1/a:.2f} it/s vs {1/b:.2f} it/s: {b/a:.2f}x')" "${ours:-0}" "${theirs:-0}" 2>/dev/null)
  row "UNet $size, batch 2, fp16: sdxl.c vs diffusers" "${ratio:-ours ${ours:-failed} s, diffusers ${theirs:-failed} s}" "${detail:-}"
  tmem=$(grep "^unet $size px" "$OUT_DIR/bench_unet_torch.txt" | grep -o "peak memory.*")
  [ -n "$tmem" ] && row "UNet $size, diffusers memory" "$tmem" "torch"
done

fi

if want generate; then
step "bench generate: a whole 1365x768 thumbnail, 25 Euler steps, CFG 12"
timeout 180 ./sdxl bench generate --backend cuda 2>&1 | tee "$OUT_DIR/bench_generate.txt" >>"$LOG"
timeout 180 python3 scripts/bench_torch.py generate --device cuda --dtype float16 2>&1 | tee "$OUT_DIR/bench_generate_torch.txt" >>"$LOG"
ours=$(grep -o "[0-9.]* s end to end" "$OUT_DIR/bench_generate.txt" | cut -d' ' -f1)
theirs=$(grep -o "[0-9.]* s end to end" "$OUT_DIR/bench_generate_torch.txt" | cut -d' ' -f1)
row "thumbnail 1365x768, 25 steps: sdxl.c (UNet fp16, VAE bf16)" "${ours:-failed} s" "$(grep -E '^  (text|peak)' "$OUT_DIR/bench_generate.txt" | sed 's/^ *//' | tr '\n' ';')"
row "thumbnail 1368x768, 25 steps: diffusers fp16 (VAE upcast fp32)" "${theirs:-failed} s" "$(grep -o 'peak memory.*' "$OUT_DIR/bench_generate_torch.txt")"

fi

if want train; then
step "train: the tiny model on both backends, then bench train beside diffusers + peft"
for be in cpu cuda; do
  ./sdxl train --backend $be --model tests/golden/tiny_sdxl --data tests/golden/data --out "$OUT_DIR/train_$be.safetensors" \
    --steps 4 --resolution 256 --bucket-min 128 --mixed-precision fp16 --lr 1e-3 --no-cache --quiet >>"$LOG" 2>&1 ||
    row "train tiny ($be)" "FAILED" "$(grep '^error:' "$LOG" | tail -1)"
done
cmp=$(python3 -c "
import csv, sys
a, b = ([float(r['loss']) for r in csv.DictReader(open(f))] for f in sys.argv[1:3])
print('losses cpu ' + ' '.join(f'{x:.4f}' for x in a) + ' / cuda ' + ' '.join(f'{x:.4f}' for x in b))" \
  "$OUT_DIR/train_cpu.safetensors.csv" "$OUT_DIR/train_cuda.safetensors.csv" 2>&1 | tail -1)
row "train tiny, 4 steps fp16: cpu vs cuda" "${cmp:-compare failed}" "same seed, same data"
timeout 300 ./sdxl bench train --backend cuda --precision fp16 --repeat 3 2>&1 | tee "$OUT_DIR/bench_train.txt" >>"$LOG"
timeout 300 python3 scripts/bench_torch.py train --device cuda --dtype float16 --repeat 3 2>&1 | tee "$OUT_DIR/bench_train_torch.txt" >>"$LOG"
for ck in off on; do
  ours=$(grep "^checkpointing $ck" "$OUT_DIR/bench_train.txt" | grep -o "[0-9.]* s per micro-step" | cut -d' ' -f1)
  theirs=$(grep "checkpointing $ck" "$OUT_DIR/bench_train_torch.txt" | grep -o "[0-9.]* s per micro-step" | cut -d' ' -f1)
  mem=$(grep -A1 "^checkpointing $ck" "$OUT_DIR/bench_train.txt" | tail -1 | grep -o "peak device memory [0-9]* MiB")
  tmem=$(grep "checkpointing $ck" "$OUT_DIR/bench_train_torch.txt" | grep -o "peak memory [0-9]* MiB")
  row "LoRA micro-step 1024^2, batch 1, fp16, checkpointing $ck: sdxl.c vs diffusers+peft" "${ours:-failed} s vs ${theirs:-failed} s" "${mem:-?}; diffusers ${tmem:-?}"
done
step15k=$(grep "^checkpointing off" "$OUT_DIR/bench_train.txt" | grep -o "15,000 steps in [0-9.]* h")
row "projected: 15,000 steps x 4 micro-batches (checkpointing off)" "${step15k:-?}" "target <= 3.5 h"

fi

row "gpu_check.sh${PARTS%% }" "done" "$(secs $START) s"
echo
table
{ echo; table; } >>"$LOG"
