#!/usr/bin/env bash
# Measures sdxl.c's CPU GEMM beside numpy's sgemm (OpenBLAS) on the same machine in the same run,
# for the shapes `sdxl bench matmul` lists, and prints the markdown table of docs/PERF.md.
#
#   scripts/bench_cpu_gemm.sh            print the table
#   scripts/bench_cpu_gemm.sh --write    also replace the table in docs/PERF.md
#
# OpenBLAS is only a yardstick here (pip install numpy); sdxl.c never links it.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s sdxl >/dev/null
ours=$(./sdxl bench matmul --csv --repeat 3)
python3 - "$ours" "${1:-}" <<'PY'
import datetime, os, platform, re, subprocess, sys, time
import numpy as np

ours_csv, write = sys.argv[1], sys.argv[2] == "--write"
cfg = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
blas = cfg.get("Build Dependencies", {}).get("blas", {})
blas_name = f"{blas.get('name', 'BLAS')} {blas.get('version', '')}".strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
rows = []
for line in ours_csv.strip().splitlines():
    M, N, K, ms, gf = line.split(",")
    M, N, K = int(M), int(N), int(K)
    a = (np.arange(M * K, dtype=np.float32) % 7 * 0.01).reshape(M, K)
    b = (np.arange(K * N, dtype=np.float32) % 5 * 0.01).reshape(K, N)
    a @ b  # warm-up
    best = 1e30
    for _ in range(3):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    np_gf = 2.0 * M * N * K / best / 1e9
    rows.append((M, N, K, float(ms), float(gf), best * 1e3, np_gf))
today = datetime.date.today().isoformat()
out = [f"Measured {today} on {cpu}, {os.cpu_count()} cores, by `scripts/bench_cpu_gemm.sh` "
       f"(ours: `sdxl bench matmul`, best of 3; yardstick: numpy {np.__version__} `a @ b` on {blas_name}, best of 3).", "",
       "| M x N x K | sdxl.c ms | sdxl.c GFLOP/s | numpy/OpenBLAS ms | OpenBLAS GFLOP/s | ours / OpenBLAS |",
       "|---|---:|---:|---:|---:|---:|"]
for M, N, K, ms, gf, np_ms, np_gf in rows:
    out.append(f"| {M}x{N}x{K} | {ms:.2f} | {gf:.1f} | {np_ms:.2f} | {np_gf:.1f} | {gf / np_gf:.2f} |")
table = "\n".join(out)
print(table)
if write:
    path = "docs/PERF.md"
    text = open(path).read()
    begin, end = "<!-- gemm-table-begin -->", "<!-- gemm-table-end -->"
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), begin + "\n" + table + "\n" + end, text, flags=re.S)
    open(path, "w").write(text)
    print(f"updated {path}")
PY
