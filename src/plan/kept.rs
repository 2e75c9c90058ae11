//! Domains read by several stages, kept once: the records of a domain the study reads only by
//! concept sets, of any of those sets, read from the repository once and kept by the engine,
//! so that later stages test their own sets over the few records kept rather than decode the
//! whole table again (the prostate study reads `measurement` in its index event, its arms and
//! its dataset).

use super::{aggregate, filter, project, Planner};
use crate::repo::domains::{self, Field};
use crate::study::*;
use datafusion::common::Column;
use datafusion::common::Result;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{cast, lit, when, Expr, LogicalPlan, LogicalPlanBuilder};
use std::collections::BTreeMap;

/// Rows of a domain's table read to judge how many of its records the study's concept sets
/// select.
pub const SAMPLE_ROWS: usize = 65_536;

/// A domain is kept when its concept sets select at most one record in this many of the
/// sample: more, and keeping them costs memory for little saved.
pub const KEPT_SHARE: usize = 4;

/// The index event's records are rare in their table when a sample finds at most one in this
/// many (`Planner::sample_rare`).
pub const RARE_SHARE: usize = 100;

/// At most this many records are kept (some 40 bytes each), whatever the sample said: a table
/// whose first rows were not like the rest is read by each stage instead.
pub const KEPT_ROWS: usize = 1 << 24;

/// How the study reads one domain.
#[derive(Default)]
struct Reads {
    /// The concept sets it reads the domain by.
    sets: Vec<ConceptExpr>,
    /// Some reading takes records of any concept.
    any_concept: bool,
    /// The stages that read it (a bit each).
    stages: u8,
    /// The fields its readings use beyond the person, concept and start day every one does.
    fields: Vec<Field>,
}

/// Fields every reading of a domain uses.
const EVERY_READING: [Field; 3] = [Field::Person, Field::Concept, Field::Start];

/// What a reading needs of the record itself beyond them: its id (ties between records, an
/// event's key), its end (with a drug's days supplied, which stand in for a missing end) and
/// its visit. The index event's records, those of a `where`, of an era, of an exit or of the
/// consent rule need these.
const WHOLE_RECORD: [Field; 4] = [Field::Id, Field::End, Field::DaysSupply, Field::Visit];

/// The end of a record, where a drug's days supplied stand in for a missing one.
const RECORD_END: [Field; 2] = [Field::End, Field::DaysSupply];

impl Reads {
    fn uses(&mut self, fields: &[Field]) {
        for f in fields {
            if !self.fields.contains(f) {
                self.fields.push(*f);
            }
        }
    }
}

const INDEX: u8 = 1;
const POPULATION: u8 = 2;
const FOLLOW_UP: u8 = 4;
const DATASET: u8 = 8;
const CONSENT: u8 = 16;

/// Every domain the study reads, with how.
fn reads(study: &Study) -> BTreeMap<Domain, Reads> {
    let mut walk = Walk {
        all: BTreeMap::new(),
        same_visit: false,
        events: Vec::new(),
    };
    walk.query(&study.index.query, INDEX, &WHOLE_RECORD);
    if let Consent::RequiredBy { query, .. } = &study.consent {
        walk.query(query, CONSENT, &WHOLE_RECORD);
    }
    for step in &study.steps {
        walk.criterion(&step.criterion, POPULATION);
    }
    for arm in &study.arms {
        walk.criterion(&arm.criterion, POPULATION);
    }
    for exit in &study.follow_up.exits {
        match exit {
            Exit::Event(query) => walk.query(query, FOLLOW_UP, &WHOLE_RECORD),
            Exit::ExposureEnd { concepts, .. } => {
                let mut query = EventQuery::of(Domain::Drug);
                query.concepts = Some(concepts.clone());
                walk.query(&query, FOLLOW_UP, &WHOLE_RECORD);
            }
            _ => {}
        }
    }
    for covariate in &study.covariates {
        match &covariate.value {
            // A value reading carries the number and the value concept alike, and breaks ties
            // between records of one day by id.
            CovariateValue::Aggregate { query, .. } => walk.query(
                query,
                DATASET,
                &[Field::Id, Field::Number, Field::ValueConcept],
            ),
            CovariateValue::Count {
                query, distinct, ..
            } => walk.query(query, DATASET, distinct_fields(*distinct)),
            CovariateValue::DaysSince { query, .. } => walk.query(query, DATASET, &[]),
            CovariateValue::Flag(criterion) => walk.criterion(criterion, DATASET),
            _ => {}
        }
    }
    for endpoint in &study.endpoints {
        walk.query(&endpoint.query, DATASET, &[]);
    }
    // A `same visit` inside a `where` compares with the visit of the `where`'s event.
    if walk.same_visit {
        for domain in walk.events {
            walk.all.entry(domain).or_default().uses(&[Field::Visit]);
        }
    }
    walk.all
}

fn distinct_fields(distinct: Option<Distinct>) -> &'static [Field] {
    match distinct {
        Some(Distinct::Visits) => &[Field::Visit],
        _ => &[],
    }
}

struct Walk {
    all: BTreeMap<Domain, Reads>,
    /// Some query filters by `same visit`.
    same_visit: bool,
    /// The domains of records a `where` is evaluated for.
    events: Vec<Domain>,
}

impl Walk {
    /// A query read in `stage`, each record with `needs` beyond what its filters read.
    fn query(&mut self, query: &EventQuery, stage: u8, needs: &[Field]) {
        for alt in query.alternatives() {
            let mut fields: Vec<Field> = needs.to_vec();
            if alt.era.is_some() {
                fields.extend([Field::Id, Field::End, Field::DaysSupply]);
            }
            let mut nested = Vec::new();
            for f in &alt.filters {
                fields.extend_from_slice(match f {
                    EventFilter::Value(_) => &[Field::Number],
                    EventFilter::ValueIn(_) => &[Field::ValueConcept],
                    EventFilter::AboveNormal => &[Field::Number, Field::RangeHigh],
                    EventFilter::BelowNormal => &[Field::Number, Field::RangeLow],
                    EventFilter::UnitIn(_) => &[Field::Unit],
                    EventFilter::SourceIn(_) => &[Field::SourceConcept],
                    EventFilter::KindIn(_) => &[Field::Kind],
                    EventFilter::Modality(_) => &[Field::Modality],
                    EventFilter::Duration(_) => &RECORD_END,
                    EventFilter::SameVisit => &[Field::Visit],
                    EventFilter::FirstEver => &[Field::Id],
                    EventFilter::Where(_) => &[Field::Id, Field::End, Field::DaysSupply],
                });
                match f {
                    EventFilter::Where(criterion) => {
                        self.events.push(alt.domain);
                        nested.push(criterion);
                    }
                    EventFilter::SameVisit => self.same_visit = true,
                    _ => {}
                }
            }
            let reads = self.all.entry(alt.domain).or_default();
            reads.stages |= stage;
            match &alt.concepts {
                Some(set) if !reads.sets.contains(set) => reads.sets.push(set.clone()),
                Some(_) => {}
                None => reads.any_concept = true,
            }
            reads.uses(&fields);
            for criterion in nested {
                self.criterion(criterion, stage);
            }
        }
    }

    fn criterion(&mut self, criterion: &Criterion, stage: u8) {
        match criterion {
            Criterion::All(parts) | Criterion::Any(parts) => {
                for p in parts {
                    self.criterion(p, stage);
                }
            }
            Criterion::Not(inner) => self.criterion(inner, stage),
            Criterion::Events {
                count, query, more, ..
            } => {
                let mut fields = distinct_fields(count.distinct).to_vec();
                if more.iter().any(|w| w.edge == Edge::End) {
                    fields.extend(RECORD_END);
                }
                self.query(query, stage, &fields);
            }
            Criterion::Observation { .. } | Criterion::Sex(_) | Criterion::Compare { .. } => {}
        }
    }
}

/// Whether a sample of `seen` rows (some) selects at most one in `share` (`kept`).
fn at_most_one_in(share: usize, seen: u64, kept: u64) -> bool {
    seen > 0 && kept.saturating_mul(share as u64) <= seen
}

/// The table a kept domain is registered as.
pub fn kept_name(domain: Domain) -> &'static str {
    match domain {
        Domain::Condition => "cohortql_kept_condition",
        Domain::Drug => "cohortql_kept_drug",
        Domain::Procedure => "cohortql_kept_procedure",
        Domain::Measurement => "cohortql_kept_measurement",
        Domain::Observation => "cohortql_kept_observation",
        Domain::Visit => "cohortql_kept_visit",
        Domain::Death => "cohortql_kept_death",
        Domain::Device => "cohortql_kept_device",
        Domain::Specimen => "cohortql_kept_specimen",
        Domain::ObservationPeriod => "cohortql_kept_observation_period",
        Domain::DrugEra => "cohortql_kept_drug_era",
        Domain::ConditionEra => "cohortql_kept_condition_era",
        Domain::Episode => "cohortql_kept_episode",
        Domain::ImageOccurrence => "cohortql_kept_image_occurrence",
        Domain::ImageFeature => "cohortql_kept_image_feature",
    }
}

impl Planner<'_> {
    /// The domains worth keeping, each with a plan that counts, among the first `SAMPLE_ROWS`
    /// rows of its table, the rows (`seen`) and those of the study's concept sets (`kept`):
    /// domains read by more than one stage, only by concept sets whose ids are known (a list
    /// to test, no subquery), from a table of their own (no join).
    /// With `every`, every domain read only by such concept sets, by one stage or more.
    pub fn kept_domain_samples(&mut self, every: bool) -> Result<Vec<(Domain, LogicalPlan)>> {
        let mut samples = Vec::new();
        for (domain, reads) in reads(self.study) {
            let source = domains::records(domain);
            if reads.any_concept
                || reads.sets.is_empty()
                || reads.stages.count_ones() < if every { 1 } else { 2 }
                || !source.joins.is_empty()
                || source.own(Field::Concept).is_none()
                || reads.sets.iter().any(|s| self.plain_ids(s).is_none())
            {
                continue;
            }
            samples.push((domain, self.sample(domain, &reads.sets)?));
        }
        Ok(samples)
    }

    /// Among the first `SAMPLE_ROWS` rows of the domain's table, the rows (`seen`) and those
    /// of any of the sets (`kept`).
    fn sample(&mut self, domain: Domain, sets: &[ConceptExpr]) -> Result<LogicalPlan> {
        let source = domains::records(domain);
        let test = self.kept_test(domain, sets)?;
        let concept = source
            .own(Field::Concept)
            .expect("a domain sampled has one");
        let rows = LogicalPlanBuilder::from(self.table(source.table))
            .project(vec![Expr::Column(Column::new_unqualified(concept))])?
            .limit(0, Some(SAMPLE_ROWS))?
            .build()?;
        let selected = when(test, lit(1i64)).otherwise(lit(0i64))?;
        aggregate(
            rows,
            vec![],
            vec![count(lit(1i64)).alias("seen"), sum(selected).alias("kept")],
        )
    }

    /// A sample of the index event's table (`sample`'s counts) for its concept set, when its
    /// records are read from their own table (not from a kept domain) by one set of known
    /// ids: to judge whether they are rare there (`sample_rare`).
    pub fn index_sample(&mut self) -> Result<Option<LogicalPlan>> {
        let query = &self.study.index.query;
        let domain = query.domain;
        let source = domains::records(domain);
        let Some(set) = query.concepts.clone() else {
            return Ok(None);
        };
        if !query.also.is_empty()
            || self.kept_domains.contains_key(&domain)
            || !source.joins.is_empty()
            || source.own(Field::Concept).is_none()
            || self.plain_ids(&set).is_none()
        {
            return Ok(None);
        }
        self.sample(domain, &[set]).map(Some)
    }

    /// Whether a sample says the records of the sets are rare: at most one row in
    /// `RARE_SHARE`. An engine then finds them by decoding the concept column first, and the
    /// other columns only for the rows it keeps; for records less rare, decoding every column
    /// of every row and filtering after is faster (`docs/performance.md`).
    pub fn sample_rare(seen: u64, kept: u64) -> bool {
        at_most_one_in(RARE_SHARE, seen, kept)
    }

    /// Whether a sample (`kept_domain_samples`'s counts) says the domain is worth keeping:
    /// some rows, of which at most one in `KEPT_SHARE` is selected.
    pub fn sample_keeps(seen: u64, kept: u64) -> bool {
        at_most_one_in(KEPT_SHARE, seen, kept)
    }

    /// The domain's records of any of the study's concept sets, with the columns its
    /// readings use, as its table names them: for the engine to keep as `kept_name(domain)`.
    pub fn kept_domain(&mut self, domain: Domain) -> Result<LogicalPlan> {
        let reads = reads(self.study).remove(&domain).unwrap_or_default();
        let source = domains::records(domain);
        let test = self.kept_test(domain, &reads.sets)?;
        let mut columns: Vec<&'static str> = Vec::new();
        for (field, col) in source.fields {
            let used = EVERY_READING.contains(field) || reads.fields.contains(field);
            if used && !columns.contains(&col.column) {
                columns.push(col.column);
            }
        }
        let scan = self.table(source.table);
        let plan = project(
            scan,
            columns
                .iter()
                .map(|n| Expr::Column(Column::new_unqualified(*n)))
                .collect(),
        )?;
        let plan = filter(plan, test)?;
        LogicalPlanBuilder::from(plan)
            .limit(0, Some(KEPT_ROWS + 1))?
            .build()
    }

    /// Reads of `domain` come from `kept` (the engine's table of `kept_domain`) when every
    /// concept set they test is one of those kept.
    pub fn use_kept_domain(&mut self, domain: Domain, kept: LogicalPlan) {
        let sets = reads(self.study)
            .remove(&domain)
            .map(|r| r.sets)
            .unwrap_or_default();
        self.kept_domains.insert(domain, (sets, kept));
    }

    /// The kept records of `domain` that hold every record of these concept sets, if any.
    pub(super) fn kept_reading(
        &self,
        domain: Domain,
        sets: &[Option<&ConceptExpr>],
    ) -> Option<LogicalPlan> {
        let (kept_sets, plan) = self.kept_domains.get(&domain)?;
        sets.iter()
            .all(|s| s.is_some_and(|s| kept_sets.contains(s)))
            .then(|| plan.clone())
    }

    /// A record of any of the sets, on the table's own concept column.
    fn kept_test(&mut self, domain: Domain, sets: &[ConceptExpr]) -> Result<Expr> {
        let source = domains::records(domain);
        let concept = source.own(Field::Concept).expect("a domain kept has one");
        let column = cast(
            Expr::Column(Column::new_unqualified(concept)),
            Field::Concept.kind().arrow(),
        );
        Ok(self
            .in_any_concepts(column, sets)?
            .unwrap_or_else(|| lit(false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_finds_records_rare_at_one_in_a_hundred_or_fewer() {
        assert!(Planner::sample_rare(65_536, 0));
        assert!(Planner::sample_rare(65_536, 655));
        assert!(!Planner::sample_rare(65_536, 656));
        assert!(!Planner::sample_rare(0, 0));
    }

    #[test]
    fn a_sample_keeps_a_domain_when_few_of_its_rows_are_selected() {
        assert!(Planner::sample_keeps(65_536, 0));
        assert!(Planner::sample_keeps(65_536, 16_384));
        assert!(!Planner::sample_keeps(65_536, 16_385));
        assert!(!Planner::sample_keeps(0, 0));
    }
}
