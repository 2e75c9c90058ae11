-- studies/eunomia/celecoxib_age40_male.study written by hand for DuckDB.
-- also run by DataFusion: SQL both engines read alike (date_part, not DuckDB's year()).
SELECT 1 AS cohort_definition_id, person_id AS subject_id, start AS cohort_start_date, op_end AS cohort_end_date
FROM (
  SELECT e.person_id, e.drug_era_start_date AS start, o.observation_period_end_date AS op_end,
         row_number() OVER (PARTITION BY e.person_id ORDER BY e.drug_era_start_date, e.drug_era_id) AS n
  FROM drug_era e
  JOIN observation_period o ON o.person_id = e.person_id
   AND e.drug_era_start_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
  WHERE e.drug_concept_id = 1118084
) f
JOIN person p USING (person_id)
WHERE n = 1 AND date_part('year', start) - p.year_of_birth > 40 AND p.gender_concept_id = 8507
ORDER BY subject_id
