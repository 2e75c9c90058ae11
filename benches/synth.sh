#!/usr/bin/env bash
# Benchmark of `cohortql synth`: persons per second and peak memory at 100k and 1M persons.
# Not a test: it prints measurements. Run it on the machine whose numbers you want:
#   bash benches/synth.sh            (sizes 100000 and 1000000)
#   bash benches/synth.sh 20000      (other sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)

if [ ! -x /usr/bin/time ]; then
  echo "benches/synth.sh needs GNU time for peak memory: apt-get install time" >&2
  exit 2
fi
cargo build --release --locked --quiet
bin="${CARGO_TARGET_DIR:-target}/release/cohortql"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

printf '%-10s %-8s %10s %14s %14s %10s\n' persons format seconds persons/s "peak MiB" "size MiB"
for n in "${sizes[@]}"; do
  for format in parquet csv; do
    out="$work/synth-$n-$format"
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" synth --persons "$n" --seed 1 --format "$format" --out "$out" > /dev/null
    read -r seconds kib < "$work/time"
    size=$(du -sm "$out" | cut -f1)
    awk -v n="$n" -v f="$format" -v s="$seconds" -v k="$kib" -v z="$size" \
      'BEGIN { printf "%-10d %-8s %10.1f %14.0f %14.0f %10d\n", n, f, s, n / s, k / 1024, z }'
    rm -rf "$out"
  done
done
