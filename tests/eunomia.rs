//! The four OHDSI test cohorts re-expressed in studies/eunomia/, evaluated by the reference
//! evaluator on Eunomia GiBleed and compared with the same cohorts written by hand as SQL.

use cohortql::compile::compile_text;
use cohortql::reference::evaluate_study;
use cohortql::repo::rows::load_rows;
use cohortql::repo::Repository;
use datafusion::arrow::array::{Array, Int64Array};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first celecoxib drug era in an observation period, per person, with that period.
const FIRST_ERA: &str = "WITH eras AS (
    SELECT e.person_id, e.drug_era_start_date AS start, o.observation_period_end_date AS op_end,
           row_number() OVER (PARTITION BY e.person_id ORDER BY e.drug_era_start_date, e.drug_era_id) AS n
    FROM drug_era e JOIN observation_period o ON e.person_id = o.person_id
     AND e.drug_era_start_date >= o.observation_period_start_date
     AND e.drug_era_start_date <= o.observation_period_end_date
    WHERE e.drug_concept_id = 1118084)
  SELECT count(*) FROM eras JOIN person p ON eras.person_id = p.person_id WHERE n = 1";

#[test]
fn eunomia_cohorts_agree_with_hand_written_sql() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repo = Repository::open(&root().join("tests/data/eunomia-gibleed")).unwrap();
    let (data, sql_counts) = rt.block_on(async {
        let ctx = repo.session().await.unwrap();
        let data = load_rows(&ctx).await.unwrap();
        let mut counts = Vec::new();
        for extra in [
            "",
            " AND extract(year FROM start) - p.year_of_birth > 40",
            " AND extract(year FROM start) - p.year_of_birth > 40 AND p.gender_concept_id = 8507",
            " AND op_end >= DATE '2000-01-01'",
        ] {
            let batches = ctx
                .sql(&format!("{FIRST_ERA}{extra}"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let c = batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert_eq!(c.len(), 1);
            counts.push(c.value(0) as usize);
        }
        (data, counts)
    });
    assert_eq!(data.persons.len(), 2_694);
    let studies = [
        "celecoxib",
        "celecoxib_age40",
        "celecoxib_age40_male",
        "celecoxib_censored",
    ];
    for (name, expected) in studies.iter().zip(sql_counts) {
        let text =
            std::fs::read_to_string(root().join(format!("studies/eunomia/{name}.study"))).unwrap();
        let study = compile_text(text).study.unwrap();
        let evaluation = evaluate_study(&study, &data);
        let persons = evaluation.attrition.last().unwrap().persons;
        println!(
            "{name}: {persons} persons; attrition {:?}",
            evaluation
                .attrition
                .iter()
                .map(|r| (r.rule.as_str(), r.persons))
                .collect::<Vec<_>>()
        );
        assert_eq!(persons, expected, "{name}");
        assert_eq!(
            evaluation.rows.len(),
            expected,
            "{name}: one entry per person"
        );
        assert!(expected > 100, "{name}: only {expected} persons");
    }
}
