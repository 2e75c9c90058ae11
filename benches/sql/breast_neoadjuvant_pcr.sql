-- studies/breast_neoadjuvant_pcr.study written by hand for DuckDB, as an analyst would: the
-- consent rule, the cohort with its arm and the analysis dataset (covariates, endpoints) in one
-- query. The bench script checks it finds the same persons.
WITH consented AS (
  SELECT DISTINCT o.person_id FROM observation o JOIN concept c ON c.concept_id = o.observation_concept_id
  WHERE lower(c.concept_name) = 'consent given for research'
),
-- From 2021 on, records count only for persons who consented; the others' observation ends
-- the day before.
periods AS (
  SELECT o.person_id, o.observation_period_start_date AS op_start,
         CASE WHEN s.person_id IS NULL THEN least(o.observation_period_end_date, DATE '2020-12-31')
              ELSE o.observation_period_end_date END AS op_end
  FROM observation_period o LEFT JOIN consented s USING (person_id)
  WHERE s.person_id IS NOT NULL OR o.observation_period_start_date < DATE '2021-01-01'
),
drugs AS (SELECT d.* FROM drug_exposure d LEFT JOIN consented s USING (person_id)
          WHERE d.drug_exposure_start_date < DATE '2021-01-01' OR s.person_id IS NOT NULL),
conditions AS (SELECT c.* FROM condition_occurrence c LEFT JOIN consented s USING (person_id)
               WHERE c.condition_start_date < DATE '2021-01-01' OR s.person_id IS NOT NULL),
measurements AS (SELECT m.* FROM measurement m LEFT JOIN consented s USING (person_id)
                 WHERE m.measurement_date < DATE '2021-01-01' OR s.person_id IS NOT NULL),
images AS (SELECT i.*, mo.concept_code AS modality FROM image_occurrence i
           JOIN concept mo ON mo.concept_id = i.modality_concept_id
           LEFT JOIN consented s USING (person_id)
           WHERE i.image_occurrence_date < DATE '2021-01-01' OR s.person_id IS NOT NULL),
chemo AS (
  SELECT descendant_concept_id AS concept_id FROM concept_ancestor
  WHERE ancestor_concept_id IN (1338512, 1310317, 1378382, 1315942, 1344905)
  UNION SELECT unnest([1338512, 1310317, 1378382, 1315942, 1344905])
),
trastuzumab AS (
  SELECT descendant_concept_id AS concept_id FROM concept_ancestor WHERE ancestor_concept_id = 1387104
  UNION SELECT 1387104
),
breast AS (
  SELECT descendant_concept_id AS concept_id FROM concept_ancestor WHERE ancestor_concept_id = 4112853
  UNION SELECT 4112853
),
breast_icd AS (
  SELECT r.concept_id_2 AS concept_id FROM concept c
  JOIN concept_relationship r ON r.concept_id_1 = c.concept_id AND r.relationship_id = 'Maps to'
  WHERE c.vocabulary_id = 'ICD10' AND c.concept_code LIKE 'C50%'
),
positive AS (SELECT concept_id FROM concept WHERE lower(concept_name) = 'positive'),
first_chemo AS (
  SELECT person_id, d, op_end FROM (
    SELECT x.person_id, x.drug_exposure_start_date AS d, p.op_end,
           row_number() OVER (PARTITION BY x.person_id ORDER BY x.drug_exposure_start_date, x.drug_exposure_id) AS n
    FROM drugs x JOIN periods p ON p.person_id = x.person_id
     AND p.op_start <= x.drug_exposure_start_date - 180 AND p.op_end >= x.drug_exposure_start_date
    WHERE x.drug_concept_id IN (SELECT concept_id FROM chemo))
  WHERE n = 1
),
cohort AS (
  SELECT f.person_id, f.d, f.op_end,
         year(f.d) - p.year_of_birth
           - CASE WHEN (month(f.d), day(f.d)) < (coalesce(p.month_of_birth, 1), coalesce(p.day_of_birth, 1)) THEN 1 ELSE 0 END AS age
  FROM first_chemo f JOIN person p USING (person_id)
  WHERE p.gender_concept_id = 8532
    AND EXISTS (SELECT 1 FROM conditions c WHERE c.person_id = f.person_id
                  AND (c.condition_concept_id IN (SELECT concept_id FROM breast) OR c.condition_concept_id IN (SELECT concept_id FROM breast_icd))
                  AND c.condition_start_date BETWEEN f.d - 90 AND f.d)
    AND NOT EXISTS (SELECT 1 FROM conditions c WHERE c.person_id = f.person_id
                      AND c.condition_concept_id IN (SELECT concept_id FROM breast) AND c.condition_start_date <= f.d - 366)
    AND EXISTS (SELECT 1 FROM images i WHERE i.person_id = f.person_id AND i.modality = 'MR'
                  AND i.image_occurrence_date BETWEEN f.d - 60 AND f.d)
    AND NOT EXISTS (SELECT 1 FROM procedure_occurrence s JOIN concept c ON c.concept_id = s.procedure_concept_id
                      LEFT JOIN consented k ON k.person_id = s.person_id
                    WHERE s.person_id = f.person_id AND lower(c.concept_name) IN ('mastectomy', 'lumpectomy of breast')
                      AND s.procedure_date BETWEEN f.d - 365 AND f.d
                      AND (s.procedure_date < DATE '2021-01-01' OR k.person_id IS NOT NULL))
),
adults AS (SELECT * FROM cohort WHERE age BETWEEN 18 AND 90),
mr_features AS (
  SELECT a.person_id, c.concept_name, m.value_as_number AS v, i.image_occurrence_date AS d, f.image_feature_id AS id
  FROM adults a
  JOIN images i ON i.person_id = a.person_id AND i.modality = 'MR' AND i.image_occurrence_date BETWEEN a.d - 60 AND a.d
  JOIN image_feature f ON f.image_occurrence_id = i.image_occurrence_id
  JOIN concept c ON c.concept_id = f.image_feature_concept_id
   AND c.concept_name IN ('original_firstorder_Entropy', 'original_glcm_Contrast', 'original_shape_Sphericity')
  LEFT JOIN measurement m ON m.measurement_id = f.image_feature_event_id
),
deaths AS (
  SELECT e.person_id, min(e.death_date) AS death_date FROM death e LEFT JOIN consented s USING (person_id)
  WHERE e.death_date < DATE '2021-01-01' OR s.person_id IS NOT NULL GROUP BY e.person_id
),
dataset AS (
  SELECT a.person_id, a.d AS index_date, a.age, a.op_end,
         CASE WHEN EXISTS (SELECT 1 FROM drugs x WHERE x.person_id = a.person_id AND x.drug_exposure_start_date = a.d
                             AND x.drug_concept_id IN (SELECT concept_id FROM trastuzumab))
              THEN 'with_trastuzumab' ELSE 'chemotherapy_only' END AS arm,
         (SELECT arg_max(m.value_as_number, (m.measurement_date, m.measurement_id)) FROM measurements m
           WHERE m.person_id = a.person_id AND m.measurement_concept_id = 3038553
             AND m.measurement_date BETWEEN a.d - 365 AND a.d) AS bmi,
         CASE WHEN EXISTS (SELECT 1 FROM measurements m WHERE m.person_id = a.person_id AND m.measurement_concept_id = 2000000601
                             AND m.value_as_concept_id IN (SELECT concept_id FROM positive)
                             AND m.measurement_date BETWEEN a.d - 90 AND a.d) THEN 1 ELSE 0 END AS her2_positive,
         CASE WHEN EXISTS (SELECT 1 FROM measurements m WHERE m.person_id = a.person_id AND m.measurement_concept_id = 2000000602
                             AND m.value_as_concept_id IN (SELECT concept_id FROM positive)
                             AND m.measurement_date BETWEEN a.d - 90 AND a.d) THEN 1 ELSE 0 END AS er_positive,
         (SELECT arg_max(v, (d, id)) FROM mr_features t WHERE t.person_id = a.person_id AND t.concept_name = 'original_firstorder_Entropy') AS tumour_entropy,
         (SELECT arg_max(v, (d, id)) FROM mr_features t WHERE t.person_id = a.person_id AND t.concept_name = 'original_glcm_Contrast') AS tumour_contrast,
         (SELECT arg_max(v, (d, id)) FROM mr_features t WHERE t.person_id = a.person_id AND t.concept_name = 'original_shape_Sphericity') AS sphericity,
         CASE WHEN EXISTS (SELECT 1 FROM observation o JOIN concept c ON c.concept_id = o.observation_concept_id
                             LEFT JOIN consented k ON k.person_id = o.person_id
                           WHERE o.person_id = a.person_id AND lower(c.concept_name) = 'pathologic complete response'
                             AND o.observation_date BETWEEN a.d AND a.d + 365
                             AND (o.observation_date < DATE '2021-01-01' OR k.person_id IS NOT NULL)) THEN 1 ELSE 0 END AS pcr_at_surgery,
         least(a.op_end, a.d + 1826) AS fu_end
  FROM adults a
)
SELECT x.* EXCLUDE (op_end, fu_end), x.tumour_entropy * x.her2_positive AS entropy_by_her2,
       CASE WHEN e.death_date BETWEEN x.index_date AND x.fu_end THEN 1 ELSE 0 END AS os,
       least(coalesce(e.death_date, x.fu_end), x.fu_end) - x.index_date + 1 AS os_days
FROM dataset x LEFT JOIN deaths e ON e.person_id = x.person_id AND e.death_date >= x.index_date
