#!/usr/bin/env bash
# Makes docs/report.png, the picture of the review report in the README: runs the NSAID study on
# the built-in demo repository, writes the report of the run, and photographs its first screen in
# headless Chromium (Debian's chromium package).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo run --locked --quiet -- run studies/nsaid_gi_bleed.study --out "$work/run" >/dev/null
cargo run --locked --quiet -- report --run "$work/run" --out "$work/report.html"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,2200 \
  --screenshot="$PWD/docs/report.png" "file://$work/report.html" 2>/dev/null
echo "wrote docs/report.png"
