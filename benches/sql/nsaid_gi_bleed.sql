-- studies/nsaid_gi_bleed.study written by hand for DuckDB, as an analyst would: the cohort and
-- the analysis dataset in one query. The bench script checks it finds the same persons.
WITH nsaid_concepts AS (
  SELECT descendant_concept_id AS concept_id, ancestor_concept_id AS ingredient
  FROM concept_ancestor WHERE ancestor_concept_id IN (1118084, 1124300)
  UNION SELECT 1118084, 1118084 UNION SELECT 1124300, 1124300
),
gi_concepts AS (
  SELECT descendant_concept_id AS concept_id FROM concept_ancestor WHERE ancestor_concept_id = 192671
  UNION SELECT 192671
),
arthritis_concepts AS (
  SELECT r.concept_id_2 AS concept_id
  FROM concept c JOIN concept_relationship r ON r.concept_id_1 = c.concept_id AND r.relationship_id = 'Maps to'
  WHERE upper(c.vocabulary_id) = 'ICD10CM' AND upper(c.concept_code) >= 'M15' AND substr(upper(c.concept_code), 1, 3) <= 'M19'
),
arthritis_all AS (
  SELECT concept_id FROM arthritis_concepts
  UNION SELECT a.descendant_concept_id FROM concept_ancestor a JOIN arthritis_concepts s ON a.ancestor_concept_id = s.concept_id
),
first_nsaid AS (
  SELECT person_id, drug_exposure_id, drug_exposure_start_date AS index_date
  FROM (
    SELECT d.person_id, d.drug_exposure_id, d.drug_exposure_start_date,
           row_number() OVER (PARTITION BY d.person_id ORDER BY d.drug_exposure_start_date, d.drug_exposure_id) AS n
    FROM drug_exposure d
    JOIN observation_period o ON o.person_id = d.person_id
     AND d.drug_exposure_start_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
    WHERE d.drug_concept_id IN (SELECT concept_id FROM nsaid_concepts)
  ) WHERE n = 1
),
entries AS (
  SELECT f.person_id, f.index_date, o.observation_period_start_date AS op_start, o.observation_period_end_date AS op_end,
         p.gender_concept_id, p.year_of_birth,
         year(f.index_date) - p.year_of_birth
           - CASE WHEN month(f.index_date) < coalesce(p.month_of_birth, 1)
                    OR (month(f.index_date) = coalesce(p.month_of_birth, 1) AND day(f.index_date) < coalesce(p.day_of_birth, 1))
                  THEN 1 ELSE 0 END AS age
  FROM first_nsaid f
  JOIN observation_period o ON o.person_id = f.person_id
   AND f.index_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
  JOIN person p ON p.person_id = f.person_id
),
on_index AS (
  SELECT e.person_id,
         max(CASE WHEN n.ingredient = 1118084 THEN 1 ELSE 0 END) AS celecoxib,
         max(CASE WHEN n.ingredient = 1124300 THEN 1 ELSE 0 END) AS diclofenac
  FROM entries e
  JOIN drug_exposure d ON d.person_id = e.person_id AND d.drug_exposure_start_date = e.index_date
  JOIN nsaid_concepts n ON n.concept_id = d.drug_concept_id
  GROUP BY e.person_id
),
prior_gi_any AS (
  SELECT DISTINCT e.person_id FROM entries e
  JOIN condition_occurrence c ON c.person_id = e.person_id AND c.condition_start_date < e.index_date
  WHERE c.condition_concept_id IN (SELECT concept_id FROM gi_concepts)
),
cohort AS (
  SELECT e.*, CASE WHEN i.celecoxib = 1 THEN 'celecoxib' ELSE 'diclofenac' END AS arm,
         e.index_date + 1 AS follow_up_start,
         least(e.op_end, e.index_date + 365, coalesce((SELECT min(death_date) FROM death d WHERE d.person_id = e.person_id AND d.death_date >= e.index_date + 1), e.op_end)) AS follow_up_end
  FROM entries e
  JOIN on_index i ON i.person_id = e.person_id
  WHERE e.op_start <= e.index_date - 365
    AND e.age >= 18
    AND e.person_id NOT IN (SELECT person_id FROM prior_gi_any)
    AND NOT (i.celecoxib = 1 AND i.diclofenac = 1)
    AND (i.celecoxib = 1 OR i.diclofenac = 1)
)
SELECT c.person_id, c.index_date, c.follow_up_start, c.follow_up_end, c.arm,
       c.age, c.gender_concept_id AS sex,
       CASE WHEN c.gender_concept_id = 8507 THEN 1 ELSE 0 END AS male,
       CASE WHEN EXISTS (SELECT 1 FROM condition_occurrence x WHERE x.person_id = c.person_id AND x.condition_start_date < c.index_date
                           AND x.condition_concept_id IN (SELECT concept_id FROM arthritis_all)) THEN 1 ELSE 0 END AS arthritis,
       (SELECT count(*) FROM condition_occurrence x WHERE x.person_id = c.person_id
          AND x.condition_start_date BETWEEN c.index_date - 365 AND c.index_date - 1
          AND x.condition_concept_id IN (SELECT concept_id FROM gi_concepts)) AS prior_gi,
       (SELECT count(*) FROM visit_occurrence v WHERE v.person_id = c.person_id
          AND v.visit_start_date BETWEEN c.index_date - 365 AND c.index_date - 1) AS visits,
       c.age * CASE WHEN c.gender_concept_id = 8507 THEN 1 ELSE 0 END AS age_by_male,
       CASE WHEN g.first_gi IS NULL THEN 0 ELSE 1 END AS gi_bleed_event,
       coalesce(g.first_gi, c.follow_up_end) - c.follow_up_start AS gi_bleed_event_days
FROM cohort c
LEFT JOIN (
  SELECT c2.person_id, min(x.condition_start_date) AS first_gi
  FROM cohort c2 JOIN condition_occurrence x ON x.person_id = c2.person_id
   AND x.condition_start_date BETWEEN c2.follow_up_start AND c2.follow_up_end
  WHERE x.condition_concept_id IN (SELECT concept_id FROM gi_concepts)
  GROUP BY c2.person_id
) g ON g.person_id = c.person_id
WHERE c.follow_up_start <= c.follow_up_end
ORDER BY c.person_id
