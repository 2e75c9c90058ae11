"""Writes the SQL that loads a CSV repository (`cohortql synth --format csv`) into a schema of
PostgreSQL, typed as the OMOP CDM types its columns (ids and counts bigint, dates date, values
double precision, codes text), with the indexes OHDSI's DDL gives (person_id on every event
table, concept ids of the vocabulary), then ANALYZE. Used by benches/postgres.sh."""

import csv
import pathlib
import sys

FLOATS = {"value_as_number", "range_low", "range_high", "dose_value"}
# quantity is a float in these tables, an integer in the others.
FLOAT_QUANTITY = {"drug_exposure", "specimen"}
INTEGERS = {"year_of_birth", "month_of_birth", "day_of_birth", "refills", "days_supply",
            "drug_exposure_count", "condition_occurrence_count", "gap_days", "episode_number",
            "valid_start_date", "valid_end_date", "min_levels_of_separation",
            "max_levels_of_separation"}


TEXTS = {"domain_id", "vocabulary_id", "concept_class_id", "relationship_id", "invalid_reason",
         "standard_concept", "concept_code", "concept_name", "cdm_version", "unique_device_id",
         "production_id", "specimen_source_id"}


def column_type(table: str, name: str) -> str:
    if name == "quantity":
        return "double precision" if table in FLOAT_QUANTITY else "bigint"
    if name in TEXTS or name.endswith("_source_value"):
        return "text"
    if name in FLOATS:
        return "double precision"
    if name in ("valid_start_date", "valid_end_date") or name.endswith("_date"):
        return "date"
    if name.endswith("_datetime"):
        return "timestamp"
    if name.endswith("_id") or name.startswith("concept_id_") or name in INTEGERS:
        return "bigint"
    return "text"


def main() -> None:
    directory, schema = pathlib.Path(sys.argv[1]), sys.argv[2]
    # One transaction: an interrupted load leaves no schema, and the next bench loads again.
    print("BEGIN;")
    print(f"CREATE SCHEMA {schema};")
    for path in sorted(directory.glob("*.csv")):
        table = path.name[: -len(".csv")]
        with path.open(newline="") as f:
            header = next(csv.reader(f))
        columns = ", ".join(f"{c} {column_type(table, c)}" for c in header)
        print(f"CREATE TABLE {schema}.{table} ({columns});")
        print(f"\\copy {schema}.{table} FROM '{path}' WITH (FORMAT csv, HEADER true)")
        if "person_id" in header:
            print(f"CREATE INDEX ON {schema}.{table} (person_id);")
        if table == "concept_ancestor":
            print(f"CREATE INDEX ON {schema}.{table} (ancestor_concept_id);")
        if table == "concept":
            print(f"CREATE INDEX ON {schema}.{table} (concept_id);")
    print("ANALYZE;")
    print("COMMIT;")


if __name__ == "__main__":
    main()
