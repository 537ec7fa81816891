#!/usr/bin/env bash
# The full-size structural check (issue 3): diffusers builds a random-weight SDXL UNet from the real
# config, our loader reads its folder and runs one evaluation. Figures go to docs/full-size-check.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-/tmp/sdxl_full}"
make -s sdxl >/dev/null
python3 scripts/check_full_size.py --dir "$DIR" 2>&1 | grep -v -i warn
/usr/bin/time -f "sdxl verify: %e s wall, %M KiB peak RSS" ./sdxl verify unet --unet "$DIR/unet" --ref "$DIR/unet_ref.safetensors"
