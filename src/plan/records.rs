//! The relations criteria read: persons, observation periods and each domain's records in one
//! shape, concept sets through the vocabulary, and the consent rule applied to all of them.

use super::{c, filter, join_on, project, Planner};
use crate::study::{CodePattern, ConceptExpr, Consent, Domain};
use chrono::{Duration, NaiveDate};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::functions::expr_fn::{least, substring, upper};
use datafusion::logical_expr::{
    cast, in_subquery, lit, when, Expr, JoinType, LogicalPlan, LogicalPlanBuilder,
};
use std::sync::Arc;

/// The column names of a relation of records (see `reference::data::Record`).
#[derive(Clone, Debug)]
pub(super) struct Rec {
    pub person: String,
    pub id: String,
    pub concept: String,
    pub start: String,
    pub end: String,
    pub visit: String,
    pub number: String,
    pub value_concept: String,
    pub unit: String,
    pub low: String,
    pub high: String,
    pub modality: String,
    pub kind: String,
    pub days_supply: String,
    /// In a union of alternatives (`condition in x | observation in x`), the column numbering
    /// the alternative a record comes from (0, 1, …): record ids are unique only per table.
    pub alternative: Option<String>,
}

impl Rec {
    /// The record columns, in one fixed order.
    pub fn columns(&self) -> [&String; 14] {
        [
            &self.person,
            &self.id,
            &self.concept,
            &self.start,
            &self.end,
            &self.visit,
            &self.number,
            &self.value_concept,
            &self.unit,
            &self.low,
            &self.high,
            &self.modality,
            &self.kind,
            &self.days_supply,
        ]
    }
}

/// The column names of the person relation.
#[derive(Clone, Debug)]
pub(super) struct PersonCols {
    pub id: String,
    pub gender: String,
    pub year: String,
    pub month: String,
    pub day: String,
}

/// The column names of the observation period relation.
#[derive(Clone, Debug)]
pub(super) struct PeriodCols {
    pub person: String,
    pub id: String,
    pub start: String,
    pub end: String,
}

fn qualified(table: &str, column: &str) -> Expr {
    Expr::Column(Column::new(Some(table), column))
}

fn null(t: DataType) -> Expr {
    cast(lit(ScalarValue::Null), t)
}

const TYPES: [DataType; 14] = [
    DataType::Int64,
    DataType::Int64,
    DataType::Int64,
    DataType::Date32,
    DataType::Date32,
    DataType::Int64,
    DataType::Float64,
    DataType::Int64,
    DataType::Int64,
    DataType::Float64,
    DataType::Float64,
    DataType::Utf8,
    DataType::Int64,
    DataType::Int64,
];

impl Planner<'_> {
    pub(super) fn rec_names(&mut self) -> Rec {
        Rec {
            person: self.fresh("person"),
            id: self.fresh("id"),
            concept: self.fresh("concept"),
            start: self.fresh("start"),
            end: self.fresh("end"),
            visit: self.fresh("visit"),
            number: self.fresh("number"),
            value_concept: self.fresh("value_concept"),
            unit: self.fresh("unit"),
            low: self.fresh("low"),
            high: self.fresh("high"),
            modality: self.fresh("modality"),
            kind: self.fresh("kind"),
            days_supply: self.fresh("days_supply"),
            alternative: None,
        }
    }

    /// The records of a domain, consent applied; `modality` only when a filter asks for it,
    /// since it costs a join with the vocabulary.
    pub(super) fn records(&mut self, domain: Domain, modality: bool) -> Result<(LogicalPlan, Rec)> {
        let (plan, rec) = self.raw_records(domain, modality)?;
        self.consent_records(plan, rec)
    }

    /// The records of a domain as stored, before the consent rule.
    fn raw_records(&mut self, domain: Domain, modality: bool) -> Result<(LogicalPlan, Rec)> {
        let rec = self.rec_names();
        let names = [
            &rec.id,
            &rec.person,
            &rec.concept,
            &rec.start,
            &rec.end,
            &rec.visit,
            &rec.number,
            &rec.value_concept,
            &rec.unit,
            &rec.low,
            &rec.high,
            &rec.modality,
            &rec.kind,
            &rec.days_supply,
        ];
        let (plan, columns) = match domain {
            Domain::ImageOccurrence | Domain::ImageFeature => self.imaging(domain, modality)?,
            _ => {
                let s = crate::repo::schema::domain_source(domain)
                    .expect("every domain but imaging reads one table");
                let mut columns: Vec<Option<Expr>> = s
                    .columns
                    .iter()
                    .map(|col| col.map(|n| qualified(s.table, n)))
                    .collect();
                if domain == Domain::Death {
                    // Deaths have no id of their own: every one is record 0.
                    columns[0] = Some(lit(0i64));
                }
                (self.table(s.table), columns)
            }
        };
        let exprs: Vec<Expr> = columns
            .into_iter()
            .zip(TYPES)
            .zip(names)
            .map(|((e, t), name)| {
                let e = match e {
                    Some(e) => cast(e, t),
                    None => null(t),
                };
                // A record without an id (which OMOP forbids) is record 0, as deaths are: ties
                // between records are broken by id, which therefore must not be NULL.
                let e = if *name == rec.id {
                    datafusion::functions::expr_fn::coalesce(vec![e, lit(0i64)])
                } else {
                    e
                };
                e.alias(name.as_str())
            })
            .collect();
        let plan = project(plan, exprs)?;
        // Records without a person or a start date cannot be placed in time: no criterion sees them.
        let plan = filter(
            plan,
            c(&rec.person)
                .is_not_null()
                .and(c(&rec.start).is_not_null()),
        )?;
        Ok((plan, rec))
    }

    /// Image occurrences (dated by the image, the modality a DICOM code) and image features
    /// (dated by their image, valued by their measurement).
    fn imaging(
        &mut self,
        domain: Domain,
        modality: bool,
    ) -> Result<(LogicalPlan, Vec<Option<Expr>>)> {
        let io = |n: &str| Some(qualified("image_occurrence", n));
        let mut builder = LogicalPlanBuilder::from(self.table("image_occurrence"));
        let mut columns = if domain == Domain::ImageFeature {
            let features = self.table("image_feature");
            let measurement = self.table("measurement");
            builder = LogicalPlanBuilder::from(features)
                .join(
                    self.table("image_occurrence"),
                    JoinType::Inner,
                    (
                        vec![Column::new(Some("image_feature"), "image_occurrence_id")],
                        vec![Column::new(Some("image_occurrence"), "image_occurrence_id")],
                    ),
                    None,
                )?
                .join(
                    measurement,
                    JoinType::Left,
                    (
                        vec![Column::new(Some("image_feature"), "image_feature_event_id")],
                        vec![Column::new(Some("measurement"), "measurement_id")],
                    ),
                    None,
                )?;
            let f = |n: &str| Some(qualified("image_feature", n));
            let m = |n: &str| Some(qualified("measurement", n));
            vec![
                f("image_feature_id"),
                f("person_id"),
                f("image_feature_concept_id"),
                io("image_occurrence_date"),
                None,
                io("visit_occurrence_id"),
                m("value_as_number"),
                m("value_as_concept_id"),
                m("unit_concept_id"),
                m("range_low"),
                m("range_high"),
                None,
                None,
                None,
            ]
        } else {
            vec![
                io("image_occurrence_id"),
                io("person_id"),
                io("anatomic_site_concept_id"),
                io("image_occurrence_date"),
                None,
                io("visit_occurrence_id"),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ]
        };
        if modality {
            let concept = LogicalPlanBuilder::from(self.table("concept"))
                .alias("modality_concept")?
                .build()?;
            builder = builder.join(
                concept,
                JoinType::Left,
                (
                    vec![Column::new(Some("image_occurrence"), "modality_concept_id")],
                    vec![Column::new(Some("modality_concept"), "concept_id")],
                ),
                None,
            )?;
            columns[11] = Some(qualified("modality_concept", "concept_code"));
        }
        Ok((builder.build()?, columns))
    }

    /// Persons: id, sex and birth, consent applied.
    pub(super) fn persons(&mut self) -> Result<(LogicalPlan, PersonCols)> {
        let cols = PersonCols {
            id: self.fresh("person"),
            gender: self.fresh("gender"),
            year: self.fresh("year_of_birth"),
            month: self.fresh("month_of_birth"),
            day: self.fresh("day_of_birth"),
        };
        let p = |n: &str| qualified("person", n);
        let plan = project(
            self.table("person"),
            vec![
                cast(p("person_id"), DataType::Int64).alias(&cols.id),
                cast(p("gender_concept_id"), DataType::Int64).alias(&cols.gender),
                cast(p("year_of_birth"), DataType::Int64).alias(&cols.year),
                cast(p("month_of_birth"), DataType::Int64).alias(&cols.month),
                cast(p("day_of_birth"), DataType::Int64).alias(&cols.day),
            ],
        )?;
        let plan = filter(plan, c(&cols.id).is_not_null())?;
        let plan = match self.consent_rule()? {
            Some((consenting, None)) => {
                filter(plan, in_subquery(c(&cols.id), Arc::new(consenting)))?
            }
            _ => plan,
        };
        Ok((plan, cols))
    }

    /// Observation periods, consent applied: without consent from a date on, a person's
    /// observation ends the day before.
    pub(super) fn periods(&mut self) -> Result<(LogicalPlan, PeriodCols)> {
        let cols = PeriodCols {
            person: self.fresh("period_person"),
            id: self.fresh("period_id"),
            start: self.fresh("period_start"),
            end: self.fresh("period_end"),
        };
        let o = |n: &str| qualified("observation_period", n);
        let plan = project(
            self.table("observation_period"),
            vec![
                cast(o("person_id"), DataType::Int64).alias(&cols.person),
                cast(o("observation_period_id"), DataType::Int64).alias(&cols.id),
                o("observation_period_start_date").alias(&cols.start),
                o("observation_period_end_date").alias(&cols.end),
            ],
        )?;
        let plan = filter(
            plan,
            c(&cols.person)
                .is_not_null()
                .and(c(&cols.start).is_not_null())
                .and(c(&cols.end).is_not_null()),
        )?;
        let Some((consenting, from)) = self.consent_rule()? else {
            return Ok((plan, cols));
        };
        let plan = match from {
            None => filter(plan, in_subquery(c(&cols.person), Arc::new(consenting)))?,
            Some(day) => {
                let (plan, flag) = self.with_consent_flag(plan, &cols.person, consenting)?;
                let last_day = date_lit(day - Duration::days(1));
                let end =
                    when(c(&flag), c(&cols.end)).otherwise(least(vec![c(&cols.end), last_day]))?;
                let plan = project(
                    plan,
                    vec![
                        c(&cols.person),
                        c(&cols.id),
                        c(&cols.start),
                        end.alias(&cols.end),
                    ],
                )?;
                filter(plan, c(&cols.start).lt_eq(c(&cols.end)))?
            }
        };
        Ok((plan, cols))
    }

    /// Applies the consent rule to records: a person without consent contributes none, or
    /// none dated from the rule's date on.
    fn consent_records(&mut self, plan: LogicalPlan, rec: Rec) -> Result<(LogicalPlan, Rec)> {
        let Some((consenting, from)) = self.consent_rule()? else {
            return Ok((plan, rec));
        };
        let plan = match from {
            None => filter(plan, in_subquery(c(&rec.person), Arc::new(consenting)))?,
            Some(day) => {
                let columns = super::names(&plan);
                let (plan, flag) = self.with_consent_flag(plan, &rec.person, consenting)?;
                let plan = filter(plan, c(&flag).or(c(&rec.start).lt(date_lit(day))))?;
                super::keep(plan, &columns)?
            }
        };
        Ok((plan, rec))
    }

    /// Adds a boolean column: whether the row's person consents.
    fn with_consent_flag(
        &mut self,
        plan: LogicalPlan,
        person: &str,
        consenting: LogicalPlan,
    ) -> Result<(LogicalPlan, String)> {
        let consenting_person = self.fresh("consenting");
        let flag = self.fresh("consents");
        let columns = super::names(&plan);
        let consenting = project(consenting, vec![c("person").alias(&consenting_person)])?;
        let left = self.aliased(plan)?;
        let right = self.aliased(consenting)?;
        let joined = join_on(
            left,
            right,
            JoinType::Left,
            &[(person, consenting_person.as_str())],
        )?;
        let mut exprs: Vec<Expr> = columns.iter().map(|n| c(n)).collect();
        exprs.push(c(&consenting_person).is_not_null().alias(&flag));
        Ok((project(joined, exprs)?, flag))
    }

    /// The distinct persons with a consent record (one column, `person`) and the date the rule
    /// applies from; `None` when the study has no consent rule, or while the consent records
    /// themselves are being read (they are read as stored).
    fn consent_rule(&mut self) -> Result<Option<(LogicalPlan, Option<NaiveDate>)>> {
        let Consent::RequiredBy { query, from } = &self.study.consent else {
            return Ok(None);
        };
        if self.reading_consent {
            return Ok(None);
        }
        if let Some(plan) = &self.consenting {
            return Ok(Some((plan.clone(), *from)));
        }
        let (query, from) = (query.clone(), *from);
        self.reading_consent = true;
        let built = (|| {
            let (persons, cols) = self.persons()?;
            let ctx = super::criteria::Ctx::of_persons(persons, &cols);
            let (found, _) = self.matching(&query, &ctx)?;
            LogicalPlanBuilder::new_from_arc(super::sub(project(
                found,
                vec![c(&cols.id).alias("person")],
            )?)?)
            .distinct()?
            .build()
        })();
        self.reading_consent = false;
        let plan = built?;
        self.consenting = Some(plan.clone());
        Ok(Some((plan, from)))
    }

    /// Whether `column` holds a concept of the expression: a list of ids when the expression
    /// is only concept ids (however many, one expression and no relation per id), a subquery
    /// otherwise.
    pub(super) fn in_concepts(&mut self, column: Expr, expr: &ConceptExpr) -> Result<Expr> {
        Ok(match self.plain_ids(expr) {
            Some(ids) => column.in_list(ids.into_iter().map(lit).collect(), false),
            None => in_subquery(column, Arc::new(self.concepts(expr)?)),
        })
    }

    /// The ids of an expression made only of concept ids, unions and sets of such.
    fn plain_ids(&self, expr: &ConceptExpr) -> Option<Vec<i64>> {
        match expr {
            ConceptExpr::Concept { id, .. } => Some(vec![*id]),
            ConceptExpr::Set(i) => self.plain_ids(&self.study.concept_sets[*i].expr),
            ConceptExpr::Union(parts) => {
                let mut ids = Vec::new();
                for p in parts {
                    ids.extend(self.plain_ids(p)?);
                }
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
            _ => None,
        }
    }

    /// The concept ids a concept expression stands for, as a one-column plan (`concept_id`).
    pub(super) fn concepts(&mut self, expr: &ConceptExpr) -> Result<LogicalPlan> {
        let concept = |n: &str| qualified("concept", n);
        let plan = match expr {
            // `SELECT id AS concept_id`: a one-row relation every SQL dialect can read.
            ConceptExpr::Concept { id, .. } => LogicalPlanBuilder::empty(true)
                .project(vec![lit(*id).alias("concept_id")])?
                .build()?,
            ConceptExpr::SourceCodes { vocabulary, codes } => {
                let code = upper(concept("concept_code"));
                let matches = codes
                    .iter()
                    .map(|p| code_matches(p, code.clone()))
                    .reduce(Expr::or)
                    .unwrap_or(lit(false));
                let predicate = upper(concept("vocabulary_id"))
                    .eq(lit(vocabulary.to_ascii_uppercase()))
                    .and(matches);
                LogicalPlanBuilder::from(self.table("concept"))
                    .filter(predicate)?
                    .project(vec![concept("concept_id").alias("concept_id")])?
                    .build()?
            }
            ConceptExpr::Named(name) => LogicalPlanBuilder::from(self.table("concept"))
                .filter(upper(concept("concept_name")).eq(lit(name.to_uppercase())))?
                .project(vec![concept("concept_id").alias("concept_id")])?
                .build()?,
            ConceptExpr::Set(i) => {
                let expr = self.study.concept_sets[*i].expr.clone();
                self.concepts(&expr)?
            }
            ConceptExpr::WithDescendants(inner) => {
                let base = self.concepts(inner)?;
                let a = |n: &str| qualified("concept_ancestor", n);
                let descendants = LogicalPlanBuilder::from(self.table("concept_ancestor"))
                    .filter(in_subquery(
                        a("ancestor_concept_id"),
                        Arc::new(base.clone()),
                    ))?
                    .project(vec![a("descendant_concept_id").alias("concept_id")])?
                    .build()?;
                LogicalPlanBuilder::from(base)
                    .union_distinct(descendants)?
                    .build()?
            }
            ConceptExpr::Mapped(inner) => {
                let base = self.concepts(inner)?;
                let r = |n: &str| qualified("concept_relationship", n);
                LogicalPlanBuilder::from(self.table("concept_relationship"))
                    .filter(
                        r("relationship_id")
                            .eq(lit("Maps to"))
                            .and(in_subquery(r("concept_id_1"), Arc::new(base))),
                    )?
                    .project(vec![r("concept_id_2").alias("concept_id")])?
                    .distinct()?
                    .build()?
            }
            // One union of every part, not a chain of unions nested as deep as the parts are
            // many.
            ConceptExpr::Union(parts) => {
                let mut plans = Vec::new();
                for p in parts {
                    plans.push(Arc::new(self.concepts(p)?));
                }
                LogicalPlanBuilder::from(LogicalPlan::Union(
                    datafusion::logical_expr::Union::try_new_with_loose_types(plans)?,
                ))
                .distinct()?
                .build()?
            }
            ConceptExpr::Minus(a, b) => {
                let keep = self.concepts(a)?;
                let remove = self.concepts(b)?;
                let alias = self.aliased(keep)?;
                LogicalPlanBuilder::from(alias)
                    .filter(datafusion::logical_expr::not_in_subquery(
                        c("concept_id"),
                        Arc::new(remove),
                    ))?
                    .project(vec![c("concept_id")])?
                    .build()?
            }
        };
        self.aliased(plan)
    }
}

/// Whether an upper-cased source code matches a pattern.
fn code_matches(pattern: &CodePattern, code: Expr) -> Expr {
    match pattern {
        CodePattern::Exact(x) => code.eq(lit(x.to_ascii_uppercase())),
        CodePattern::Prefix(p) => {
            let p = p.to_ascii_uppercase();
            let n = p.chars().count() as i64;
            substring(code, lit(1i64), lit(n)).eq(lit(p))
        }
        CodePattern::Range(low, high) => {
            let (low, high) = (low.to_ascii_uppercase(), high.to_ascii_uppercase());
            let n = high.chars().count() as i64;
            code.clone()
                .gt_eq(lit(low))
                .and(substring(code, lit(1i64), lit(n)).lt_eq(lit(high)))
        }
    }
}

pub(super) fn date_lit(d: NaiveDate) -> Expr {
    lit(ScalarValue::Date32(Some(
        (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32,
    )))
}
