#!/usr/bin/env bash
# Benchmark of `cohortql run` on every study in studies/ against DuckDB and DataFusion (their Python
# packages, used only here) over the same Parquet files, and against the scan floor. Not a test: it
# prints measurements.
#   bash benches/studies.sh                 (100,000 and 1,000,000 persons)
#   bash benches/studies.sh 20000           (other sizes; BENCH_REPEAT=1 for one run each)
# Repositories are generated once into $COHORTQL_BENCH_DIR (default target/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
if [ ! -x /usr/bin/time ]; then
  echo "benches/studies.sh needs GNU time for peak memory: apt-get install time" >&2
  exit 2
fi
cargo build --release --locked --quiet
target="${CARGO_TARGET_DIR:-target}"
[[ "$target" = /* ]] || target="$(pwd)/$target"
bin="$target/release/cohortql"
bench="${COHORTQL_BENCH_DIR:-$(pwd)/target/bench}"
mkdir -p "$bench"
if [ ! -x "$bench/venv/bin/python" ]; then
  python3 -m venv "$bench/venv"
  "$bench/venv/bin/pip" install --quiet "duckdb>=1.1,<3"
fi
# DataFusion's Python package of the release line cohortql is built on (Cargo.toml): the engine
# alone running a hand-written query, beside DuckDB (benches/sql/*.sql, where it says so).
if ! "$bench/venv/bin/python" -c 'import datafusion' 2> /dev/null; then
  "$bench/venv/bin/pip" install --quiet "datafusion==55.*"
fi
for n in "${sizes[@]}"; do
  repo="$bench/synth-$n"
  [ -f "$repo/person.parquet" ] || "$bin" synth --persons "$n" --seed 1 --out "$repo" > /dev/null
  echo "== $n persons ($("$bench/venv/bin/python" -c 'import duckdb, datafusion; print("DuckDB", duckdb.__version__ + ", DataFusion", datafusion.__version__)'), $(nproc) cores)"
  "$bench/venv/bin/python" benches/studies.py --bin "$bin" --repo "$repo" --python "$bench/venv/bin/python" \
    --repeat "${BENCH_REPEAT:-3}" \
    studies/*.study studies/eunomia/*.study
done
