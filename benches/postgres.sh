#!/usr/bin/env bash
# Benchmark of `cohortql run --repo postgresql://…` (every stage run inside PostgreSQL) against
# the same study on the same data in Parquet files, for every study in studies/. Not a test:
# it prints measurements.
#   bash benches/postgres.sh              (1,000,000 persons)
#   bash benches/postgres.sh 100000       (other sizes; BENCH_REPEAT=1 for one run each)
# The synthetic repository is generated once (Parquet and CSV) into $COHORTQL_BENCH_DIR
# (default target/bench) and loaded once into a PostgreSQL cluster kept there; the cluster is
# started for the bench and stopped after it, reached only through its Unix socket.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000)
pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$pgbin" ]; then
  echo "benches/postgres.sh needs PostgreSQL's server programs: apt-get install postgresql" >&2
  exit 2
fi
cargo build --release --locked --quiet
target="${CARGO_TARGET_DIR:-target}"
[[ "$target" = /* ]] || target="$(pwd)/$target"
bin="$target/release/cohortql"
bench="${COHORTQL_BENCH_DIR:-$(pwd)/target/bench}"
mkdir -p "$bench"
# initdb and the server refuse to run as root: as root they run as `postgres`.
as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
for n in "${sizes[@]}"; do
  files="$bench/synth-$n"
  csv="$bench/synth-$n-csv"
  [ -f "$files/person.parquet" ] || "$bin" synth --persons "$n" --seed 1 --out "$files" > /dev/null
  [ -f "$csv/person.csv" ] || "$bin" synth --persons "$n" --seed 1 --format csv --out "$csv" > /dev/null
  data="$bench/pg-$n"
  socket="$bench/pg-$n-socket"
  mkdir -p "$socket"
  [ "$(id -u)" = 0 ] && chown postgres: "$socket"
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres: "$data"
    as_server "$pgbin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C > /dev/null
  fi
  as_server "$pgbin/pg_ctl" start -w -D "$data" -l "$data/server.log" \
    -o "-k $socket -c listen_addresses= -c shared_buffers=1GB -c work_mem=256MB" > /dev/null
  trap 'as_server "$pgbin/pg_ctl" stop -D "$data" -m fast > /dev/null' EXIT
  psql=(psql -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres -h "$socket")
  if [ "$("${psql[@]}" -tAc "SELECT count(*) FROM pg_namespace WHERE nspname = 'cdm'")" = 0 ]; then
    echo "== loading $n persons into PostgreSQL"
    start=$(date +%s)
    python3 benches/postgres_load.py "$csv" cdm | "${psql[@]}"
    echo "loaded in $(( $(date +%s) - start )) s"
  fi
  url="postgresql://postgres@/postgres?host=$socket&schema=cdm"
  echo "== $n persons ($("${psql[@]}" -tAc 'SHOW server_version' | cut -d' ' -f1), PostgreSQL; $(nproc) cores)"
  python3 benches/postgres.py --bin "$bin" --files "$files" --url "$url" \
    --repeat "${BENCH_REPEAT:-3}" studies/*.study studies/eunomia/*.study
  as_server "$pgbin/pg_ctl" stop -D "$data" -m fast > /dev/null
  trap - EXIT
done
