#!/usr/bin/env bash
# Opens an `sdxl eval` report in headless Chromium and saves a screenshot, to check with one's own
# eyes that the contact sheet renders (thumbnails, boxes, badges, the summary table).
#
#   scripts/screenshot_report.sh [REPORT.html] [OUT.png] [WIDTHxHEIGHT]
#   defaults: demo_out/eval/report.html (from `make demo`), report.png, 1200x1400
#
# Needs chromium (Debian: apt-get install chromium). Not used by `make test`.
set -euo pipefail
report=${1:-demo_out/eval/report.html}
out=${2:-report.png}
size=${3:-1200x1400}
[ -f "$report" ] || { echo "error: $report: no such report (run make demo, or sdxl eval)" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "error: no chromium found (apt-get install chromium)" >&2; exit 1; }
"$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size="${size/x/,}" \
  --screenshot="$out" "file://$(realpath "$report")" 2>/dev/null
[ -s "$out" ] || { echo "error: $out: chromium wrote no screenshot" >&2; exit 1; }
echo "wrote $out ($(stat -c %s "$out") bytes) from $report"
