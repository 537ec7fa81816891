#!/usr/bin/env bash
# Measures sdxl.c's CPU GEMM beside numpy's sgemm (OpenBLAS) on the same machine in the same run,
# for the shapes `sdxl bench matmul` lists, and prints the markdown table of docs/PERF.md.
#
#   scripts/bench_cpu_gemm.sh            print the table
#   scripts/bench_cpu_gemm.sh --write    also replace the table in docs/PERF.md
#
# OpenBLAS is only a yardstick here (pip install numpy threadpoolctl); sdxl.c never links it.
# OpenBLAS picks its kernels at run time from the CPU model. The table shows its own pick and,
# on AVX-512 machines, its SkylakeX (AVX-512) kernels forced with OPENBLAS_CORETYPE, so the
# comparison is also made against OpenBLAS at the same vector width as ours.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s sdxl >/dev/null
ours=$(./sdxl bench matmul --csv --repeat 3)

# numpy timings for one OpenBLAS core type (empty: its own choice); prints "arch M,N,K,ms,gflops" lines
numpy_times() {
  if [ -n "$1" ]; then export OPENBLAS_CORETYPE="$1"; else unset OPENBLAS_CORETYPE; fi
  python3 - "$ours" <<'PY'
import sys, time
import numpy as np
try:
    import threadpoolctl
    arch = next((i.get("architecture", "?") for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"), "?")
except ImportError:
    arch = "?"
for line in sys.argv[1].strip().splitlines():
    M, N, K = (int(v) for v in line.split(",")[:3])
    a = (np.arange(M * K, dtype=np.float32) % 7 * 0.01).reshape(M, K)
    b = (np.arange(K * N, dtype=np.float32) % 5 * 0.01).reshape(K, N)
    a @ b  # warm-up
    best = 1e30
    for _ in range(3):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    print(f"{arch} {M},{N},{K},{best * 1e3:.3f},{2.0 * M * N * K / best / 1e9:.1f}")
PY
}
default_runs=$(numpy_times "")
avx512_runs=""
if grep -q avx512f /proc/cpuinfo; then avx512_runs=$(numpy_times SkylakeX); fi

python3 - "$ours" "$default_runs" "$avx512_runs" "${1:-}" <<'PY'
import datetime, os, re, sys
import numpy as np

ours, default_runs, avx512_runs, write = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "--write"
def parse(text):
    rows, arch = {}, "?"
    for line in text.strip().splitlines():
        arch, csv = line.split(" ", 1)
        M, N, K, ms, gf = csv.split(",")
        rows[(int(M), int(N), int(K))] = (float(ms), float(gf))
    return rows, arch
base, base_arch = parse(default_runs)
forced, forced_arch = parse(avx512_runs) if avx512_runs.strip() else ({}, None)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
head = ["M x N x K", "sdxl.c ms", "sdxl.c GFLOP/s", f"OpenBLAS ({base_arch}) GFLOP/s", "ours / it"]
if forced:
    head += [f"OpenBLAS ({forced_arch}, forced) GFLOP/s", "ours / it"]
out = [f"Measured {datetime.date.today().isoformat()} on {cpu}, {os.cpu_count()} cores, by `scripts/bench_cpu_gemm.sh` "
       f"(ours: `sdxl bench matmul`, best of 3; yardstick: numpy {np.__version__} `a @ b` on "
       f"{blas.get('name', 'OpenBLAS')} {blas.get('version', '')}, best of 3, all threads).", "",
       "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
for line in ours.strip().splitlines():
    M, N, K, ms, gf = line.split(",")
    key, gf = (int(M), int(N), int(K)), float(gf)
    row = [f"{M}x{N}x{K}", ms, f"{gf:.1f}", f"{base[key][1]:.1f}", f"{gf / base[key][1]:.2f}"]
    if forced:
        row += [f"{forced[key][1]:.1f}", f"{gf / forced[key][1]:.2f}"]
    out.append("| " + " | ".join(row) + " |")
table = "\n".join(out)
print(table)
if write:
    path = "docs/PERF.md"
    text = open(path).read()
    begin, end = "<!-- gemm-table-begin -->", "<!-- gemm-table-end -->"
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: begin + "\n" + table + "\n" + end, text, flags=re.S)
    open(path, "w").write(text)
    print(f"updated {path}")
PY
