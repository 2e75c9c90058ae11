-- studies/lung_ct_radiomics_os.study written by hand for DuckDB, as an analyst would: the cohort
-- and the analysis dataset (covariates, overall survival) in one query. The bench script checks
-- it finds the same persons.
WITH lung AS (
  SELECT descendant_concept_id AS concept_id FROM concept_ancestor WHERE ancestor_concept_id = 443388
  UNION SELECT 443388
  UNION
  SELECT r.concept_id_2 FROM concept c
  JOIN concept_relationship r ON r.concept_id_1 = c.concept_id AND r.relationship_id = 'Maps to'
  WHERE c.vocabulary_id = 'ICD10' AND c.concept_code LIKE 'C34%'
),
platinum AS (
  SELECT descendant_concept_id AS concept_id FROM concept_ancestor WHERE ancestor_concept_id IN (1344905, 1397599)
  UNION SELECT 1344905 UNION SELECT 1397599
),
diagnosis AS (
  SELECT person_id, d, op_end FROM (
    SELECT e.person_id, e.episode_start_date AS d, o.observation_period_end_date AS op_end,
           row_number() OVER (PARTITION BY e.person_id ORDER BY e.episode_start_date, e.episode_id) AS n
    FROM episode e
    JOIN observation_period o ON o.person_id = e.person_id
     AND e.episode_start_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
    WHERE e.episode_object_concept_id IN (SELECT concept_id FROM lung)
      AND e.episode_concept_id IN (SELECT concept_id FROM concept WHERE lower(concept_name) = 'disease first occurrence'))
  WHERE n = 1
),
cohort AS (
  SELECT g.person_id, g.d, g.op_end, p.gender_concept_id,
         year(g.d) - p.year_of_birth
           - CASE WHEN (month(g.d), day(g.d)) < (coalesce(p.month_of_birth, 1), coalesce(p.day_of_birth, 1)) THEN 1 ELSE 0 END AS age
  FROM diagnosis g JOIN person p USING (person_id)
  WHERE EXISTS (SELECT 1 FROM observation_period o WHERE o.person_id = g.person_id
                  AND o.observation_period_start_date <= g.d - 365 AND o.observation_period_end_date >= g.d)
    AND EXISTS (SELECT 1 FROM image_occurrence i JOIN concept m ON m.concept_id = i.modality_concept_id
                WHERE i.person_id = g.person_id AND m.concept_code = 'CT'
                  AND i.image_occurrence_date BETWEEN g.d - 60 AND g.d)
),
adults AS (SELECT * FROM cohort WHERE age >= 18),
ct_features AS (
  SELECT a.person_id, c.concept_name, m.value_as_number AS v, i.image_occurrence_date AS d, f.image_feature_id AS id
  FROM adults a
  JOIN image_occurrence i ON i.person_id = a.person_id AND i.image_occurrence_date BETWEEN a.d - 60 AND a.d
  JOIN concept mo ON mo.concept_id = i.modality_concept_id AND mo.concept_code = 'CT'
  JOIN image_feature f ON f.image_occurrence_id = i.image_occurrence_id
  JOIN concept c ON c.concept_id = f.image_feature_concept_id
   AND c.concept_name IN ('original_firstorder_Entropy', 'original_glcm_Contrast', 'original_shape_Sphericity')
  LEFT JOIN measurement m ON m.measurement_id = f.image_feature_event_id
),
death_first AS (SELECT person_id, min(death_date) AS death_date FROM death GROUP BY person_id)
SELECT a.person_id, a.d AS index_date, a.age,
       CASE WHEN a.gender_concept_id = 8507 THEN 1 ELSE 0 END AS male,
       (SELECT arg_max(m.value_as_number, (m.measurement_date, m.measurement_id)) FROM measurement m
         JOIN concept c ON c.concept_id = m.measurement_concept_id AND c.vocabulary_id = 'LOINC' AND c.concept_code = '62238-1'
         WHERE m.person_id = a.person_id AND m.measurement_date BETWEEN a.d - 90 AND a.d) AS egfr,
       CASE WHEN EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = a.person_id
                           AND x.drug_concept_id IN (SELECT concept_id FROM platinum) AND x.drug_exposure_start_date < a.d)
            THEN 1 ELSE 0 END AS prior_platinum,
       (SELECT arg_max(v, (d, id)) FROM ct_features t WHERE t.person_id = a.person_id AND t.concept_name = 'original_firstorder_Entropy') AS entropy,
       (SELECT arg_max(v, (d, id)) FROM ct_features t WHERE t.person_id = a.person_id AND t.concept_name = 'original_glcm_Contrast') AS contrast,
       (SELECT arg_max(v, (d, id)) FROM ct_features t WHERE t.person_id = a.person_id AND t.concept_name = 'original_shape_Sphericity') AS sphericity,
       (SELECT a.d - max(i.image_occurrence_date) FROM image_occurrence i JOIN concept mo ON mo.concept_id = i.modality_concept_id
         WHERE i.person_id = a.person_id AND mo.concept_code = 'CT' AND i.image_occurrence_date BETWEEN a.d - 60 AND a.d) AS days_since_ct,
       CASE WHEN x.death_date BETWEEN a.d AND a.op_end THEN 1 ELSE 0 END AS os,
       CASE WHEN x.death_date BETWEEN a.d AND a.op_end THEN x.death_date ELSE a.op_end END - a.d + 1 AS os_days,
       CASE WHEN x.death_date BETWEEN a.d AND a.d + 730 THEN 1 ELSE 0 END AS death_two_years
FROM adults a LEFT JOIN death_first x ON x.person_id = a.person_id
  AND x.death_date >= a.d
