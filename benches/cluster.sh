#!/usr/bin/env bash
# Benchmark of the Ballista engine: every study of studies/ run in one process and on a local
# cluster (a scheduler and two executors on this machine, one task each, so both use the same
# cores), on the same synthetic repository. Not a test: it prints measurements, and checks
# that both runs released the same files.
#   bash benches/cluster.sh                 (1,000,000 persons)
#   bash benches/cluster.sh 100000          (another size)
# Repositories are generated once into $COHORTQL_BENCH_DIR (default target/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
if [ ! -x /usr/bin/time ]; then
  echo "benches/cluster.sh needs GNU time for peak memory: apt-get install time" >&2
  exit 2
fi
cargo build --release --locked --quiet --features ballista
target="${CARGO_TARGET_DIR:-target}"
[[ "$target" = /* ]] || target="$(pwd)/$target"
bin="$target/release/cohortql"
bench="${COHORTQL_BENCH_DIR:-$(pwd)/target/bench}"
repo="$bench/synth-$n"
mkdir -p "$bench"
[ -f "$repo/person.parquet" ] || "$bin" synth --persons "$n" --seed 1 --out "$repo" > /dev/null
work="$(mktemp -d)"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
port=$((20000 + RANDOM % 20000))
"$bin" ballista scheduler --port "$port" 2> "$work/scheduler.log" & pids+=($!)
for i in 1 2; do
  "$bin" ballista executor --scheduler "ballista://127.0.0.1:$port" --port $((port + 10 * i)) \
    --grpc-port $((port + 10 * i + 1)) --concurrent-tasks 1 --work-dir "$work/shuffle$i" \
    2> "$work/executor$i.log" & pids+=($!)
done
sleep 2
export COHORTQL_SITE="$work/site.toml"
echo "== $n persons, $(nproc) cores; cluster: 1 scheduler + 2 executors x 1 task"
printf '| %-24s | %9s | %9s | %9s | %9s | %6s | %s |\n' study "embedded" "MiB" "cluster" "MiB" ratio "same release"
printf '|%s|\n' "---|---:|---:|---:|---:|---:|---"
for study in studies/*.study; do
  name="$(basename "$study" .study)"
  for engine in embedded cluster; do
    args=(run "$study" --repo "$repo" --out "$work/$engine-$name")
    [ "$engine" = cluster ] && args+=(--engine "ballista://127.0.0.1:$port" --stage-dir "$work")
    /usr/bin/time -f '%e %M' -o "$work/$engine.time" "$bin" "${args[@]}" > /dev/null 2> "$work/$engine.err" || {
      echo "$name ($engine) failed:" >&2; cat "$work/$engine.err" >&2; exit 1; }
  done
  read -r te me < "$work/embedded.time"
  read -r tc mc < "$work/cluster.time"
  same=yes
  diff -rq "$work/embedded-$name/release" "$work/cluster-$name/release" > /dev/null || same=NO
  printf '| %-24s | %9.2f | %9d | %9.2f | %9d | %6.2f | %s |\n' "$name" "$te" $((me / 1024)) "$tc" $((mc / 1024)) \
    "$(awk -v a="$tc" -v b="$te" 'BEGIN { print a / b }')" "$same"
done
echo "MiB: peak resident memory of the cohortql run process; the executors' own peaks over all studies:"
for p in "${pids[@]:1}"; do
  echo "  executor $p: $(awk '/VmHWM/ { printf "%d MiB", $2 / 1024 }' "/proc/$p/status")"
done
