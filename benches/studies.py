"""Times `cohortql run` on every study against DuckDB over the same Parquet files.

For each study it measures, each in a fresh process, the repetition with the best wall time of
--repeat runs (every figure of a row is from that one repetition):
  cohortql    `cohortql run` (release build): wall time and peak memory (GNU time); from that
              run's run.json, parse + check, planning, and the query: planning plus running
              every stage's plans (run.json's timings are disjoint and add up to it)
  duckdb-gen  the study as `cohortql sql --dialect duckdb` writes it, run by DuckDB
  duckdb-hand the study written by hand as SQL (benches/sql/<study>.sql), where there is one
  df-hand     the same query run by DataFusion (the Python package of the DataFusion release
              cohortql is built on), where the file says it is written for both engines (a
              line `-- also run by DataFusion`): the engine's own time for the one query an
              analyst would write, with none of cohortql's stages, reports or planning
  scan        the scan floor: DuckDB reading every value of the columns the study reads (the
              Parquet scans of `cohortql plan`)
and prints ratios of cohortql's query time (planning and every stage, from run.json) to each:
below 1.0 is faster. Wall time adds process start, opening the repository, the data
fingerprint and writing the outputs.
Not a test: run it through benches/studies.sh, which builds and generates what it needs.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

DUCKDB_RUNNER = r"""
import duckdb, sys, time, os
repo, script_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute("SET threads = 2")
for f in sorted(os.listdir(repo)):
    if f.endswith(".parquet"):
        con.execute(f"CREATE VIEW {f[:-8]} AS SELECT * FROM read_parquet('{os.path.join(repo, f)}')")
script = open(script_path).read()
started = time.perf_counter()
rows = 0
# Results are materialised inside DuckDB (not converted to Python objects).
def query(sql, n):
    con.execute(f"CREATE TEMP TABLE result_{n} AS {sql}")
    return con.execute(f"SELECT count(*) FROM result_{n}").fetchone()[0]
if mode == "script":
    for n, statement in enumerate(script.split(";\n\n")):
        body = "\n".join(l for l in statement.splitlines() if not l.startswith("--")).strip()
        if not body:
            continue
        if body.upper().startswith("CREATE"):
            con.execute(body)
        else:
            rows = query(body, n)
else:
    body = "\n".join(l for l in script.splitlines() if not l.startswith("--")).strip()
    rows = query(body, 0)
print(time.perf_counter() - started, rows)
"""

# The line of a hand-written query that says DataFusion plans it as DuckDB does.
DATAFUSION_TOO = "-- also run by DataFusion"

# The same boundary as DuckDB's: a fresh process, the tables registered before the clock
# starts, the first query's result materialised in memory (Arrow record batches).
DATAFUSION_RUNNER = r"""
import datafusion, sys, time, os
repo, script_path = sys.argv[1], sys.argv[2]
ctx = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(2))
for f in sorted(os.listdir(repo)):
    if f.endswith(".parquet"):
        ctx.register_parquet(f[:-8], os.path.join(repo, f))
body = "\n".join(l for l in open(script_path).read().splitlines() if not l.startswith("--")).strip()
started = time.perf_counter()
rows = sum(b.num_rows for b in ctx.sql(body).collect())
print(time.perf_counter() - started, rows)
"""


def timed(cmd, cwd=None):
    """Runs cmd under GNU time; returns (wall seconds, peak MiB, stdout)."""
    with tempfile.NamedTemporaryFile("r") as t:
        started = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", t.name] + cmd, cwd=cwd,
                             capture_output=True, text=True)
        wall = time.perf_counter() - started
        if out.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
        kib = int(t.read().split()[-1])
    return wall, kib / 1024, out.stdout


def best(n, f):
    results = [f() for _ in range(n)]
    return min(results, key=lambda r: r[0])


def scanned_columns(binary, study, repo):
    """Table -> columns the study reads: the Parquet scans of its physical plans."""
    plan = subprocess.run([binary, "plan", study, "--repo", repo], capture_output=True, text=True, check=True).stdout
    columns = {}
    for table, cols in re.findall(r"DataSourceExec: file_groups=\{.*?/(\w+)\.parquet.*?\}, projection=\[([^\]]*)\]", plan):
        # A scan may compute its projection (`start_date@1 as q9_start`): the columns are
        # those it refers to.
        read = re.findall(r"(\w+)@\d+", cols) if "@" in cols else [c.strip() for c in cols.split(",")]
        columns.setdefault(table, set()).update(c for c in read if c)
    return columns


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("studies", nargs="+")
    a = p.parse_args()
    work = tempfile.mkdtemp()
    runner = os.path.join(work, "runner.py")
    open(runner, "w").write(DUCKDB_RUNNER)
    df_runner = os.path.join(work, "df_runner.py")
    open(df_runner, "w").write(DATAFUSION_RUNNER)
    header = f"{'study':<26} {'persons':>8} {'wall s':>7} {'query s':>7} {'MiB':>6} {'check+plan ms':>13} " \
             f"{'duckdb-gen s':>12} {'ratio':>6} {'duckdb-hand s':>13} {'ratio':>6} {'df-hand s':>9} {'ratio':>6} " \
             f"{'scan s':>7} {'ratio':>6}"
    print(header)
    for study in a.studies:
        name = os.path.splitext(os.path.basename(study))[0]
        out = os.path.join(work, "out-" + name)
        def run_once():
            wall, mib, _ = timed([a.bin, "run", study, "--repo", a.repo, "--out", out])
            return wall, mib, json.load(open(os.path.join(out, "site", "run.json")))
        wall, mib, run = best(a.repeat, run_once)
        persons = run["rows"]["dataset"]
        t = run["timings"]
        front = t["check_ms"] + t["plan_ms"]
        # The query: planning and every stage, as DuckDB's time is its query alone.
        query = sum(v for k, v in t.items() if k != "check_ms") / 1000
        script = os.path.join(work, name + ".sql")
        open(script, "w").write(subprocess.run([a.bin, "sql", study, "--dialect", "duckdb"],
                                               capture_output=True, text=True, check=True).stdout)
        gen = best(a.repeat, lambda: timed([a.python, runner, a.repo, script, "script"]))
        gen_s, gen_rows = (float(x) for x in gen[2].split())
        hand_path = os.path.join(os.path.dirname(__file__), "sql", name + ".sql")
        hand_s = None
        if os.path.exists(hand_path):
            hand = best(a.repeat, lambda: timed([a.python, runner, a.repo, hand_path, "query"]))
            hand_s, hand_rows = (float(x) for x in hand[2].split())
            if int(hand_rows) != persons and "cohort_definition_id" not in open(hand_path).read():
                print(f"  note: hand SQL gives {int(hand_rows)} rows, cohortql {persons}")
        df_s = None
        if hand_s is not None and any(l.startswith(DATAFUSION_TOO) for l in open(hand_path)):
            df = best(a.repeat, lambda: timed([a.python, df_runner, a.repo, hand_path]))
            df_s, df_rows = (float(x) for x in df[2].split())
            if int(df_rows) != int(hand_rows):
                print(f"  note: DataFusion's hand SQL gives {int(df_rows)} rows, DuckDB's {int(hand_rows)}")
        columns = scanned_columns(a.bin, study, a.repo)
        scan_sql = os.path.join(work, name + "-scan.sql")
        # hash() makes DuckDB read every value (a count could be answered from Parquet metadata).
        parts = [f"SELECT {', '.join(f'sum(hash({c}))' for c in sorted(cols))} FROM {t}" for t, cols in sorted(columns.items())]
        open(scan_sql, "w").write(";\n\n".join(parts) + ";\n\n")
        scan = best(a.repeat, lambda: timed([a.python, runner, a.repo, scan_sql, "script"]))
        scan_s = float(scan[2].split()[0])
        # DuckDB's own time excludes its process start; ours includes it, as a user sees it.
        fmt = lambda x: "-" if x is None else f"{x:.2f}"
        ratio = lambda x: "-" if not x else f"{query / x:.2f}"
        print(f"{name:<26} {persons:>8} {wall:>7.2f} {query:>7.2f} {mib:>6.0f} {front:>13.1f} "
              f"{gen_s:>12.2f} {ratio(gen_s):>6} {fmt(hand_s):>13} {ratio(hand_s):>6} {fmt(df_s):>9} {ratio(df_s):>6} "
              f"{scan_s:>7.2f} {ratio(scan_s):>6}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
