-- studies/prostate_mri_pirads.study written by hand for DuckDB, as an analyst would: the cohort
-- with its arm and the analysis dataset (covariates, endpoints) in one query. The bench script
-- checks it finds the same persons.
WITH mri AS (
  SELECT i.person_id, i.image_occurrence_id AS id, i.image_occurrence_date AS d
  FROM image_occurrence i
  JOIN concept m ON m.concept_id = i.modality_concept_id AND m.concept_code = 'MR'
  JOIN observation_period o ON o.person_id = i.person_id
   AND i.image_occurrence_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
  WHERE i.image_occurrence_date >= DATE '2015-01-01'
    AND EXISTS (SELECT 1 FROM measurement p
                WHERE p.person_id = i.person_id AND p.measurement_concept_id = 3013603
                  AND p.value_as_number >= 3
                  AND p.measurement_date BETWEEN i.image_occurrence_date - 180 AND i.image_occurrence_date)
), entry AS (
  SELECT person_id, d FROM (
    SELECT person_id, d, row_number() OVER (PARTITION BY person_id ORDER BY d, id) AS n FROM mri) WHERE n = 1
), kept AS (
  SELECT e.person_id, e.d FROM entry e JOIN person p USING (person_id)
  WHERE p.gender_concept_id = 8507
    AND year(e.d) - p.year_of_birth
        - CASE WHEN (month(e.d), day(e.d)) < (coalesce(p.month_of_birth, 1), coalesce(p.day_of_birth, 1)) THEN 1 ELSE 0 END
        BETWEEN 40 AND 85
    AND EXISTS (SELECT 1 FROM observation_period o WHERE o.person_id = e.person_id
                  AND o.observation_period_start_date <= e.d - 365 AND o.observation_period_end_date >= e.d)
    AND NOT EXISTS (SELECT 1 FROM condition_occurrence c
                    JOIN concept_ancestor a ON a.descendant_concept_id = c.condition_concept_id AND a.ancestor_concept_id = 4163261
                    WHERE c.person_id = e.person_id AND c.condition_start_date < e.d)
    AND NOT EXISTS (SELECT 1 FROM condition_occurrence c
                    WHERE c.person_id = e.person_id AND c.condition_concept_id = 4163261 AND c.condition_start_date < e.d)
    AND (SELECT count(DISTINCT b.procedure_date) FROM procedure_occurrence b
         WHERE b.person_id = e.person_id AND b.procedure_concept_id = 2000000503 AND b.procedure_date < e.d) < 2
    AND EXISTS (SELECT 1 FROM procedure_occurrence b
                WHERE b.person_id = e.person_id AND b.procedure_concept_id = 2000000503
                  AND b.procedure_date BETWEEN e.d AND e.d + 180)
),
armed AS (
  SELECT k.person_id, k.d,
         CASE WHEN EXISTS (SELECT 1 FROM measurement r WHERE r.person_id = k.person_id
                             AND r.measurement_concept_id = 2000000606 AND r.value_as_number >= 4
                             AND r.measurement_date BETWEEN k.d AND k.d + 7) THEN 'pirads_4_5'
              WHEN EXISTS (SELECT 1 FROM measurement r WHERE r.person_id = k.person_id
                             AND r.measurement_concept_id = 2000000606 AND r.value_as_number <= 3
                             AND r.measurement_date BETWEEN k.d AND k.d + 7) THEN 'pirads_1_3' END AS arm,
         (SELECT least(max(o.observation_period_end_date), k.d + 180) FROM observation_period o
           WHERE o.person_id = k.person_id AND k.d BETWEEN o.observation_period_start_date AND o.observation_period_end_date) AS fu_end
  FROM kept k
)
SELECT a.person_id, a.d AS index_date, a.arm,
       year(a.d) - p.year_of_birth
         - CASE WHEN (month(a.d), day(a.d)) < (coalesce(p.month_of_birth, 1), coalesce(p.day_of_birth, 1)) THEN 1 ELSE 0 END AS age,
       (SELECT arg_max(m.value_as_number, (m.measurement_date, m.measurement_id)) FROM measurement m
         WHERE m.person_id = a.person_id AND m.measurement_concept_id = 3013603
           AND m.measurement_date BETWEEN a.d - 180 AND a.d) AS psa,
       (SELECT count(*) FROM procedure_occurrence b WHERE b.person_id = a.person_id
           AND b.procedure_concept_id = 2000000503 AND b.procedure_date < a.d) AS prior_biopsies,
       (SELECT arg_max(m.value_as_number, (i.image_occurrence_date, f.image_feature_id))
         FROM image_feature f
         JOIN image_occurrence i ON i.image_occurrence_id = f.image_occurrence_id
         JOIN concept mo ON mo.concept_id = i.modality_concept_id AND mo.concept_code = 'MR'
         JOIN concept c ON c.concept_id = f.image_feature_concept_id AND c.concept_name = 'original_firstorder_Entropy'
         LEFT JOIN measurement m ON m.measurement_id = f.image_feature_event_id
         WHERE f.person_id = a.person_id AND i.image_occurrence_date = a.d) AS adc_entropy,
       CASE WHEN EXISTS (SELECT 1 FROM measurement g WHERE g.person_id = a.person_id
                           AND g.measurement_concept_id = 2000000607 AND g.value_as_number >= 2
                           AND g.measurement_date BETWEEN a.d AND a.d + 180) THEN 1 ELSE 0 END AS significant_cancer,
       (SELECT min(c.condition_start_date) FROM condition_occurrence c
         JOIN concept_ancestor x ON x.descendant_concept_id = c.condition_concept_id AND x.ancestor_concept_id = 4163261
         WHERE c.person_id = a.person_id AND c.condition_start_date BETWEEN a.d AND a.fu_end) AS any_cancer_date
FROM armed a JOIN person p USING (person_id)
WHERE a.arm IS NOT NULL
