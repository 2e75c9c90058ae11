"""Writes the SQL that loads a CSV repository (`cohortql synth --format csv`) into a schema of
PostgreSQL, typed as the OMOP CDM types its columns (ids and counts bigint, dates date, values
double precision, codes text), with the indexes OHDSI's DDL gives (person_id on every event
table, concept ids of the vocabulary), then ANALYZE. Used by benches/postgres.sh."""

import csv
import pathlib
import sys

FLOATS = {"value_as_number", "range_low", "range_high", "quantity", "dose_value"}
INTEGERS = {"year_of_birth", "month_of_birth", "day_of_birth", "refills", "days_supply",
            "drug_exposure_count", "condition_occurrence_count", "gap_days", "episode_number",
            "valid_start_date", "valid_end_date", "min_levels_of_separation",
            "max_levels_of_separation"}


def column_type(name: str) -> str:
    if name in FLOATS:
        return "double precision"
    if name in ("valid_start_date", "valid_end_date") or name.endswith("_date"):
        return "date"
    if name.endswith("_datetime"):
        return "timestamp"
    if name.endswith("_id") or name in INTEGERS:
        return "bigint"
    return "text"


def main() -> None:
    directory, schema = pathlib.Path(sys.argv[1]), sys.argv[2]
    print(f"CREATE SCHEMA {schema};")
    for path in sorted(directory.glob("*.csv")):
        table = path.name[: -len(".csv")]
        with path.open(newline="") as f:
            header = next(csv.reader(f))
        columns = ", ".join(f"{c} {column_type(c)}" for c in header)
        print(f"CREATE TABLE {schema}.{table} ({columns});")
        print(f"\\copy {schema}.{table} FROM '{path}' WITH (FORMAT csv, HEADER true)")
        if "person_id" in header:
            print(f"CREATE INDEX ON {schema}.{table} (person_id);")
        if table == "concept_ancestor":
            print(f"CREATE INDEX ON {schema}.{table} (ancestor_concept_id);")
        if table == "concept":
            print(f"CREATE INDEX ON {schema}.{table} (concept_id);")
    print(f"ANALYZE;")


if __name__ == "__main__":
    main()
