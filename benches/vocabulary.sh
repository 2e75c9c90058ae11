#!/usr/bin/env bash
# Vocabulary search at the size of a full OHDSI vocabulary: a synthetic repository whose
# vocabulary is grown to N concepts (`cohortql synth --full-vocabulary N`; default 5,000,000,
# with some 3 million synonyms and 30 million ancestor rows), the vocabulary index built once
# (time and peak memory of a REPL that waits for it), a REPL session of ten `:concept` searches
# from the cache, and per-question timings of the index against the tables (benches/vocabulary.rs).
# Not a test: it prints measurements.
#   bash benches/vocabulary.sh            (5,000,000 concepts)
#   bash benches/vocabulary.sh 1000000    (another size)
# The repository is generated once into $COHORTQL_BENCH_DIR (default target/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-5000000}"
if [ ! -x /usr/bin/time ]; then
  echo "benches/vocabulary.sh needs GNU time for peak memory: apt-get install time" >&2
  exit 2
fi
cargo build --release --locked --quiet
target="${CARGO_TARGET_DIR:-target}"
[[ "$target" = /* ]] || target="$(pwd)/$target"
bin="$target/release/cohortql"
bench="${COHORTQL_BENCH_DIR:-$(pwd)/target/bench}"
mkdir -p "$bench"
repo="$bench/vocab-$n"
[ -f "$repo/concept.parquet" ] || "$bin" synth --persons 10000 --seed 1 --full-vocabulary "$n" --out "$repo" > /dev/null
export COHORTQL_CACHE_DIR="$bench/vocab-cache-$n"
rm -rf "$COHORTQL_CACHE_DIR"
echo "== $n concepts ($(nproc) cores)"
/usr/bin/time -f "index build and one search: %e s, peak %M KiB" \
  "$bin" repl --repo "$repo" <<< ':concept cardi' > /dev/null
echo "du of the index: $(du -sh "$COHORTQL_CACHE_DIR/vocabulary" | cut -f1)"
/usr/bin/time -f "REPL start and quit: %e s, peak %M KiB" "$bin" repl --repo "$repo" < /dev/null > /dev/null
printf ':concept %s\n' cardi tablet a 'bacarlo77 acute' F00001234 1000004321 'oral tablet' 'tablet 200' - hemorrhage |
  /usr/bin/time -f "REPL with 10 searches: %e s, peak %M KiB" "$bin" repl --repo "$repo" > /dev/null
COHORTQL_BENCH_REPO="$repo" cargo bench --locked --quiet --bench vocabulary
