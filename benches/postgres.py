"""Times `cohortql run` on each study from Parquet files and from PostgreSQL (every stage run in
the database) and prints a Markdown table: for each, the best wall time of `--repeat` runs
and the time of its stages, and the ratio of the stages' times, database / files. Checks that both give the same persons. Used by benches/postgres.sh."""

import argparse
import json
import pathlib
import subprocess
import tempfile
import time


def run(binary: str, study: str, repo: str, out: pathlib.Path) -> tuple[float, float, int]:
    """The wall time of one run, the time of its stages (run.json's timings: planning and
    every stage, without the data fingerprint and checks), and the persons it found."""
    started = time.perf_counter()
    subprocess.run([binary, "run", study, "--repo", repo, "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    info = json.loads((out / "site" / "run.json").read_text())
    stages = sum(v for k, v in info["timings"].items() if k != "check_ms") / 1000.0
    return wall, stages, info["persons"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--files", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("studies", nargs="+")
    a = p.parse_args()
    print("| study | persons | files: wall s | stages s | database: wall s | stages s | "
          "ratio of stages |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for study in a.studies:
            best = {}
            stages = {}
            persons = {}
            for source, repo in (("files", a.files), ("database", a.url)):
                times = []
                for i in range(a.repeat):
                    out = pathlib.Path(tmp) / f"{pathlib.Path(study).stem}-{source}-{i}"
                    wall, stage, persons[source] = run(a.bin, study, repo, out)
                    times.append((wall, stage))
                best[source], stages[source] = min(times)
            if persons["files"] != persons["database"]:
                raise SystemExit(f"{study}: {persons['files']} persons from files, "
                                 f"{persons['database']} from the database")
            name = pathlib.Path(study).stem
            print(f"| {name} | {persons['files']:,} | {best['files']:.2f} | "
                  f"{stages['files']:.2f} | {best['database']:.2f} | {stages['database']:.2f} | "
                  f"{stages['database'] / max(stages['files'], 0.001):.2f} |", flush=True)


if __name__ == "__main__":
    main()
