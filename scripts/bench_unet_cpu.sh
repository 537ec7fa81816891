#!/usr/bin/env bash
# Seconds per full-size SDXL UNet evaluation on the CPU: ours (`sdxl bench unet`) beside diffusers
# on PyTorch fp32 (scripts/bench_torch.py), same config, same machine, same run; writes the table
# in docs/PERF.md with --write. Both build the real SDXL base architecture with random weights
# (about 10 GB of f32 each, one after the other).
#   scripts/bench_unet_cpu.sh [--size 512] [--batch 1] [--write]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=512 BATCH=1 WRITE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2;; --batch) BATCH=$2; shift 2;; --write) WRITE=1; shift;;
    *) echo "unknown option $1" >&2; exit 1;;
  esac
done
make -s sdxl >/dev/null
ours=$(./sdxl bench unet --size "$SIZE" --batch "$BATCH" --repeat 2 --precision fp32 | grep "per evaluation")
theirs=$(unset OPENBLAS_CORETYPE; python3 scripts/bench_torch.py unet --size "$SIZE" --batch "$BATCH" --repeat 2 2>/dev/null | tail -2)
echo "sdxl.c : $ours"
echo "torch  : $theirs"
python3 - "$ours" "$theirs" "$WRITE" "$SIZE" "$BATCH" <<'PY'
import datetime, os, re, sys
ours, theirs, write, size, batch = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5]
t_ours = float(re.search(r"([0-9.]+) s per evaluation", ours).group(1))
t_torch = float(re.search(r"([0-9.]+) s per evaluation", theirs).group(1))
head = theirs.splitlines()[0]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
table = (f"Measured {datetime.date.today().isoformat()} on {cpu}, {os.cpu_count()} cores, by `scripts/bench_unet_cpu.sh` "
         f"({head.split(':')[0]}).\n\n"
         "| SDXL UNet, fp32, random weights | size | batch | seconds per evaluation | PyTorch / sdxl.c |\n|---|---|---:|---:|---:|\n"
         f"| sdxl.c (`sdxl bench unet`) | {size}x{size} (latent {int(size)//8}x{int(size)//8}) | {batch} | {t_ours:.2f} | |\n"
         f"| diffusers on PyTorch (`scripts/bench_torch.py`) | {size}x{size} | {batch} | {t_torch:.2f} | {t_torch / t_ours:.2f} |")
print(table)
if write:
    text = open("docs/PERF.md").read()
    b, e = "<!-- unet-cpu-begin -->", "<!-- unet-cpu-end -->"
    if b not in text:
        text += f"\n## CPU UNet\n\nThe CPU path against PyTorch's on the full-size SDXL UNet (the issue's target: not slower).\n\n{b}\n{e}\n"
    text = re.sub(re.escape(b) + ".*?" + re.escape(e), lambda m: b + "\n" + table + "\n" + e, text, flags=re.S)
    open("docs/PERF.md", "w").write(text)
    print("updated docs/PERF.md")
PY
