//! The relations criteria read: persons, observation periods and each domain's records in one
//! shape, concept sets through the vocabulary, and the consent rule applied to all of them.

use super::{c, filter, join_on, names, project, Planner};
use crate::repo::domains::{self, Field, JoinKind};
use crate::study::{CodePattern, ConceptExpr, Consent, Domain};
use chrono::{Duration, NaiveDate};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
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
    pub source_concept: String,
    /// In a union of alternatives (`condition in x | observation in x`), the column numbering
    /// the alternative a record comes from (0, 1, …): record ids are unique only per table.
    pub alternative: Option<String>,
}

impl Rec {
    /// The column holding a field.
    pub fn of(&self, field: Field) -> &String {
        match field {
            Field::Id => &self.id,
            Field::Person => &self.person,
            Field::Concept => &self.concept,
            Field::Start => &self.start,
            Field::End => &self.end,
            Field::Visit => &self.visit,
            Field::Number => &self.number,
            Field::ValueConcept => &self.value_concept,
            Field::Unit => &self.unit,
            Field::RangeLow => &self.low,
            Field::RangeHigh => &self.high,
            Field::Modality => &self.modality,
            Field::Kind => &self.kind,
            Field::DaysSupply => &self.days_supply,
            Field::SourceConcept => &self.source_concept,
        }
    }

    /// The record columns, in one fixed order.
    pub fn columns(&self) -> [&String; 15] {
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
            &self.source_concept,
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

/// A column of `plan` as type `t`: cast only where the plan holds it as another type. A cast
/// to a column's own type stays in DataFusion's plans, and between the filters and the
/// scan it hides the column: the concept filter reached the scan as `CAST(drug_concept_id AS
/// Int64) = 1118084` after the optimizer's first pass, and as the column compared with a
/// value only after its second.
fn as_type(plan: &LogicalPlan, table: &str, column: &str, t: DataType) -> Expr {
    let e = qualified(table, column);
    let same = plan
        .schema()
        .field_with_qualified_name(&table.into(), column)
        .is_ok_and(|f| f.data_type() == &t);
    if same {
        e
    } else {
        cast(e, t)
    }
}

fn null(t: DataType) -> Expr {
    cast(lit(ScalarValue::Null), t)
}

impl Planner<'_> {
    pub(super) fn rec_names(&mut self) -> Rec {
        let mut name = |f: Field| self.fresh(f.name());
        Rec {
            person: name(Field::Person),
            id: name(Field::Id),
            concept: name(Field::Concept),
            start: name(Field::Start),
            end: name(Field::End),
            visit: name(Field::Visit),
            number: name(Field::Number),
            value_concept: name(Field::ValueConcept),
            unit: name(Field::Unit),
            low: name(Field::RangeLow),
            high: name(Field::RangeHigh),
            modality: name(Field::Modality),
            kind: name(Field::Kind),
            days_supply: name(Field::DaysSupply),
            source_concept: name(Field::SourceConcept),
            alternative: None,
        }
    }

    /// The records of a domain, of the concepts if given, consent applied; `modality` only
    /// when a filter asks for it, since it costs a join with the vocabulary. The concept test
    /// comes before the consent rule (each keeps or drops a record alone, so their order is
    /// free): the rule then joins the few records of the set, not the whole domain.
    pub(super) fn records(
        &mut self,
        domain: Domain,
        modality: bool,
        concepts: Option<&ConceptExpr>,
    ) -> Result<(LogicalPlan, Rec)> {
        self.records_of_any(domain, modality, &[concepts])
    }

    /// The records of a domain of any of the concept sets (`None`: of any concept), as
    /// `records` gives them.
    pub(super) fn records_of_any(
        &mut self,
        domain: Domain,
        modality: bool,
        sets: &[Option<&ConceptExpr>],
    ) -> Result<(LogicalPlan, Rec)> {
        let (plan, rec) = self.records_of_any_before_consent(domain, modality, sets)?;
        self.consent_records(plan, rec)
    }

    /// The records of a domain of any of the concept sets, the consent rule not yet applied:
    /// for a reading that applies it once joined with fewer rows (`consent_records`).
    pub(super) fn records_of_any_before_consent(
        &mut self,
        domain: Domain,
        modality: bool,
        sets: &[Option<&ConceptExpr>],
    ) -> Result<(LogicalPlan, Rec)> {
        let kept = self.kept_reading(domain, sets);
        let (mut plan, rec) = self.raw_records(domain, modality, kept)?;
        if sets.iter().all(Option::is_some) {
            if let Some(any) =
                self.in_any_concepts(c(&rec.concept), sets.iter().flatten().copied())?
            {
                plan = filter(plan, any)?;
            }
        }
        Ok((plan, rec))
    }

    /// Whether `column` holds a concept of any of the sets (`in_concepts` of each, the same
    /// test once); `None` without sets.
    pub(super) fn in_any_concepts<'s>(
        &mut self,
        column: Expr,
        sets: impl IntoIterator<Item = &'s ConceptExpr>,
    ) -> Result<Option<Expr>> {
        let mut tests: Vec<Expr> = Vec::new();
        for set in sets {
            let test = self.in_concepts(column.clone(), set)?;
            if !tests.contains(&test) {
                tests.push(test);
            }
        }
        Ok(tests.into_iter().reduce(|a, b| a.or(b)))
    }

    /// The records of a domain as stored, before the consent rule, read as the OMOP domain
    /// catalogue says; `modality` only when a filter asks for it, since it may cost a join.
    /// From `kept` instead of the table when given: the domain's records kept by the engine,
    /// under the table's own column names (`kept`).
    fn raw_records(
        &mut self,
        domain: Domain,
        modality: bool,
        kept: Option<LogicalPlan>,
    ) -> Result<(LogicalPlan, Rec)> {
        let rec = self.rec_names();
        let source = domains::records(domain);
        let wanted = |f: Field| modality || f != Field::Modality;
        // The kept records hold the columns the study's readings of the domain use
        // (`kept::kept_domain`); any other field is NULL there, read by no plan.
        let kept_columns: Option<Vec<String>> = kept.as_ref().map(names);
        let mut builder = match kept {
            Some(kept) => LogicalPlanBuilder::from(kept).alias(source.table)?,
            None => LogicalPlanBuilder::from(self.table(source.table)),
        };
        for join in source.joins_for(wanted) {
            let joined = LogicalPlanBuilder::from(self.table(join.table))
                .alias(join.alias)?
                .build()?;
            let kind = match join.kind {
                JoinKind::Inner => JoinType::Inner,
                JoinKind::Left => JoinType::Left,
            };
            builder = builder.join(
                joined,
                kind,
                (
                    vec![Column::new(Some(join.left.table), join.left.column)],
                    vec![Column::new(Some(join.alias), join.right)],
                ),
                None,
            )?;
        }
        let joined = builder.build()?;
        let exprs: Vec<Expr> = Field::ALL
            .into_iter()
            .map(|field| {
                let t = field.kind().arrow();
                let present = |col: &domains::Col| {
                    kept_columns
                        .as_ref()
                        .is_none_or(|k| k.iter().any(|n| n == col.column))
                };
                let e = match source.column(field).filter(|c| wanted(field) && present(c)) {
                    Some(col) => as_type(&joined, col.table, col.column, t),
                    None => null(t),
                };
                // A record without an id (deaths, or rows OMOP forbids) is record 0: ties
                // between records are broken by id, which therefore must not be NULL.
                let e = if field == Field::Id {
                    datafusion::functions::expr_fn::coalesce(vec![e, lit(0i64)])
                } else {
                    e
                };
                e.alias(rec.of(field).as_str())
            })
            .collect();
        let plan = project(joined, exprs)?;
        // Records without a person or a start date cannot be placed in time: no criterion sees them.
        let plan = filter(
            plan,
            c(&rec.person)
                .is_not_null()
                .and(c(&rec.start).is_not_null()),
        )?;
        Ok((plan, rec))
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
        let person = self.table("person");
        let p = |n: &str| as_type(&person, "person", n, DataType::Int64);
        let plan = project(
            person.clone(),
            vec![
                p("person_id").alias(&cols.id),
                p("gender_concept_id").alias(&cols.gender),
                p("year_of_birth").alias(&cols.year),
                p("month_of_birth").alias(&cols.month),
                p("day_of_birth").alias(&cols.day),
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
        let (plan, cols) = self.period_rows()?;
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

    /// Every observation period as it is stored, with no rows left out: a row with a NULL
    /// person, start or end matches no date in a join on the person and a date between start
    /// and end, so such joins need no filter. Consent is not applied (see `periods`).
    pub(super) fn period_rows(&mut self) -> Result<(LogicalPlan, PeriodCols)> {
        let cols = PeriodCols {
            person: self.fresh("period_person"),
            id: self.fresh("period_id"),
            start: self.fresh("period_start"),
            end: self.fresh("period_end"),
        };
        let source = domains::records(Domain::ObservationPeriod);
        let periods = self.table(source.table);
        let col = |f: Field| {
            source
                .column(f)
                .expect("observation periods have this field")
        };
        let o = |f: Field| qualified(col(f).table, col(f).column);
        let int = |f: Field| as_type(&periods, col(f).table, col(f).column, DataType::Int64);
        let plan = project(
            periods.clone(),
            vec![
                int(Field::Person).alias(&cols.person),
                int(Field::Id).alias(&cols.id),
                o(Field::Start).alias(&cols.start),
                o(Field::End).alias(&cols.end),
            ],
        )?;
        Ok((plan, cols))
    }

    /// Applies the consent rule to records (or to rows holding a record's columns): a person
    /// without consent contributes none, or none dated from the rule's date on.
    pub(super) fn consent_records(
        &mut self,
        plan: LogicalPlan,
        rec: Rec,
    ) -> Result<(LogicalPlan, Rec)> {
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

    /// The persons the consent rule lets the study use (one column, `person`), for an engine
    /// to keep as the stage `CONSENTING` before the others; `None` without a consent rule.
    pub fn consenting(&mut self) -> Result<Option<LogicalPlan>> {
        Ok(self.consent_rule()?.map(|(plan, _)| plan))
    }

    /// The kept `consenting` stage: every later plan reads it rather than finding the
    /// consenting persons again in each criterion.
    pub fn use_consenting(&mut self, kept: LogicalPlan) {
        self.consenting = Some(kept);
    }

    /// Whether the study's consent rule applies to the records being read (see `consent_rule`).
    pub(super) fn has_consent_rule(&self) -> bool {
        matches!(self.study.consent, Consent::RequiredBy { .. }) && !self.reading_consent
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

    /// Whether `column` holds a concept of the expression (a test that keeps or drops a
    /// record, never negated): a list of ids when the expression is only concept ids and sets
    /// already looked up (however many, one expression and no relation per id), a subquery
    /// otherwise.
    pub(super) fn in_concepts(&mut self, column: Expr, expr: &ConceptExpr) -> Result<Expr> {
        Ok(match self.plain_ids(expr) {
            // `x IN ()` is not SQL; an empty set matches nothing, as its subquery would.
            Some(ids) if ids.is_empty() => lit(false),
            Some(ids) => column.in_list(ids.into_iter().map(lit).collect(), false),
            None => in_subquery(column, Arc::new(self.concepts(expr)?)),
        })
    }

    /// The next lookup of concept sets in the vocabulary, or `None` when every set is a list
    /// of ids. An engine runs each plan once, before the stages, and hands its rows to
    /// `use_concept_sets`, until there is none: the stages then test lists of ids instead of
    /// each criterion reading the vocabulary again. The first lookup reads `concept` once for
    /// every name and source code of every set (a row per concept that any of them matches,
    /// with one flag per test); each later one reads `concept_ancestor` and
    /// `concept_relationship` for the descendants and mappings of ids found before it. Each
    /// part yields the ids its subquery would (NULL ids remembered, for `-`).
    pub fn concept_sets(&mut self) -> Result<Option<LogicalPlan>> {
        let mut ready: Vec<ConceptExpr> = Vec::new();
        for set in &self.study.concept_sets {
            self.ready_parts(&set.expr, &mut ready);
        }
        let leaves: Vec<ConceptExpr> = ready.iter().filter(|e| is_leaf(e)).cloned().collect();
        self.looking_up = if leaves.is_empty() { ready } else { leaves };
        let Some(first) = self.looking_up.first() else {
            return Ok(None);
        };
        if is_leaf(first) {
            let tests: Vec<Expr> = self.looking_up.iter().map(leaf_test).collect();
            let concept = |n: &str| qualified("concept", n);
            let mut exprs = vec![cast(concept("concept_id"), DataType::Int64).alias("concept_id")];
            exprs.extend(
                tests
                    .iter()
                    .enumerate()
                    .map(|(k, t)| t.clone().alias(format!("test{k}"))),
            );
            let any = tests.into_iter().reduce(Expr::or).unwrap_or(lit(false));
            let plan = LogicalPlanBuilder::from(self.table("concept"))
                .filter(any)?
                .project(exprs)?
                .build()?;
            return Ok(Some(plan));
        }
        // One reading of each relation for every part of this level: the rows whose first
        // (forward) or second column is any part's id, handed out in `use_concept_sets`.
        let mut wanted: [[Vec<i64>; 2]; 2] = Default::default();
        for part in &self.looking_up {
            if let Some((relation, forward, inner)) = relation_of(part) {
                let ids = self.known_ids(inner).map(|k| k.ids).unwrap_or_default();
                wanted[relation][usize::from(forward)].extend(ids);
            }
        }
        let any_of = |column: Expr, ids: &mut Vec<i64>| {
            ids.sort_unstable();
            ids.dedup();
            match ids.is_empty() {
                true => lit(false),
                false => column.in_list(ids.iter().map(|i| lit(*i)).collect(), false),
            }
        };
        let mut plans = Vec::new();
        for (relation, [backward, forward]) in wanted.iter_mut().enumerate() {
            if backward.is_empty() && forward.is_empty() {
                continue;
            }
            let (table, first, second) = RELATIONS[relation];
            let t = |n: &str| qualified(table, n);
            let mut test = any_of(t(first), forward).or(any_of(t(second), backward));
            if table == "concept_relationship" {
                test = t("relationship_id").eq(lit("Maps to")).and(test);
            }
            plans.push(Arc::new(
                LogicalPlanBuilder::from(self.table(table))
                    .filter(test)?
                    .project(vec![
                        lit(relation as i64).alias("relation"),
                        cast(t(first), DataType::Int64).alias("first"),
                        cast(t(second), DataType::Int64).alias("second"),
                    ])?
                    .build()?,
            ));
        }
        Ok(Some(match plans.len() {
            1 => Arc::unwrap_or_clone(plans.remove(0)),
            _ => LogicalPlan::Union(datafusion::logical_expr::Union::try_new_with_loose_types(
                plans,
            )?),
        }))
    }

    /// The parts of `expr` not known yet that can be looked up now: names and codes, and
    /// descendants and mappings of known ids.
    fn ready_parts(&self, expr: &ConceptExpr, ready: &mut Vec<ConceptExpr>) {
        if self.known_ids(expr).is_some() {
            return;
        }
        if let Some((_, _, inner)) = relation_of(expr) {
            if self.known_ids(inner).is_none() {
                return self.ready_parts(inner, ready);
            }
        }
        match expr {
            ConceptExpr::Concept { .. } | ConceptExpr::Set(_) => {}
            ConceptExpr::Named(_)
            | ConceptExpr::SourceCodes { .. }
            | ConceptExpr::WithDescendants(_)
            | ConceptExpr::Mapped(_)
            | ConceptExpr::WithSources(_) => {
                if !ready.contains(expr) {
                    ready.push(expr.clone());
                }
            }
            ConceptExpr::Union(parts) => {
                for p in parts {
                    self.ready_parts(p, ready);
                }
            }
            ConceptExpr::Minus(a, b) => {
                self.ready_parts(a, ready);
                self.ready_parts(b, ready);
            }
        }
    }

    /// Takes the rows of the last `concept_sets` plan: the parts it looked up are known.
    pub fn use_concept_sets(&mut self, rows: &[RecordBatch]) -> Result<()> {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::Int64Type;
        let parts = std::mem::take(&mut self.looking_up);
        let mut found: Vec<Ids> = vec![Ids::default(); parts.len()];
        let missing = |name: &str| {
            datafusion::error::DataFusionError::Internal(format!(
                "the concept sets' lookup gave no column {name} of the expected type"
            ))
        };
        let leaves = parts.first().is_some_and(is_leaf);
        let column = |batch: &RecordBatch, name: &str| {
            batch
                .column_by_name(name)
                .and_then(|a| a.as_primitive_opt::<Int64Type>().cloned())
                .ok_or_else(|| missing(name))
        };
        // For each part of a level: the relation it reads, whether its ids are in the first
        // column (else the second), and its ids.
        let wanted: Vec<Option<(i64, bool, Vec<i64>)>> = parts
            .iter()
            .map(|part| {
                let (relation, forward, inner) = relation_of(part)?;
                let ids = self.known_ids(inner).map(|k| k.ids).unwrap_or_default();
                Some((relation as i64, forward, ids))
            })
            .collect();
        for batch in rows {
            if leaves {
                let ids = column(batch, "concept_id")?;
                for (k, found) in found.iter_mut().enumerate() {
                    let name = format!("test{k}");
                    let test = batch
                        .column_by_name(&name)
                        .and_then(|a| a.as_boolean_opt())
                        .ok_or_else(|| missing(&name))?;
                    for row in 0..batch.num_rows() {
                        // A test that is NULL keeps nothing, as in the subquery's filter.
                        if !(test.is_valid(row) && test.value(row)) {
                            continue;
                        }
                        match ids.is_null(row) {
                            true => found.null = true,
                            false => found.ids.push(ids.value(row)),
                        }
                    }
                }
            } else {
                let (relation, first, second) = (
                    column(batch, "relation")?,
                    column(batch, "first")?,
                    column(batch, "second")?,
                );
                for row in 0..batch.num_rows() {
                    for (k, wanted) in wanted.iter().enumerate() {
                        let Some((wanted_relation, forward, ids)) = wanted else {
                            continue;
                        };
                        let (from, to) = match forward {
                            true => (&first, &second),
                            false => (&second, &first),
                        };
                        // A NULL id matches no part, as `IN` has it.
                        if relation.value(row) != *wanted_relation
                            || from.is_null(row)
                            || ids.binary_search(&from.value(row)).is_err()
                        {
                            continue;
                        }
                        match to.is_null(row) {
                            true => found[k].null = true,
                            false => found[k].ids.push(to.value(row)),
                        }
                    }
                }
            }
        }
        for (part, mut ids) in parts.into_iter().zip(found) {
            // Descendants and sources include the concepts themselves.
            if let ConceptExpr::WithDescendants(inner) | ConceptExpr::WithSources(inner) = &part {
                if let Some(base) = self.known_ids(inner) {
                    ids.ids.extend(base.ids);
                    ids.null |= base.null;
                }
            }
            ids.ids.sort_unstable();
            ids.ids.dedup();
            self.known.push((part, ids));
        }
        Ok(())
    }

    /// The ids of an expression made only of concept ids and parts already looked up, with
    /// unions, differences and sets of such.
    pub(super) fn known_ids(&self, expr: &ConceptExpr) -> Option<Ids> {
        match expr {
            ConceptExpr::Concept { id, .. } => Some(Ids {
                ids: vec![*id],
                null: false,
            }),
            ConceptExpr::Set(i) => self.known_ids(&self.study.concept_sets[*i].expr),
            ConceptExpr::Union(parts) => {
                let mut all = Ids::default();
                for p in parts {
                    let part = self.known_ids(p)?;
                    all.ids.extend(part.ids);
                    all.null |= part.null;
                }
                all.ids.sort_unstable();
                all.ids.dedup();
                Some(all)
            }
            ConceptExpr::Minus(a, b) => {
                let (keep, remove) = (self.known_ids(a)?, self.known_ids(b)?);
                // `NOT IN` a list holding NULL is never true: nothing is kept.
                if remove.null {
                    return Some(Ids::default());
                }
                Some(Ids {
                    ids: keep
                        .ids
                        .into_iter()
                        .filter(|i| remove.ids.binary_search(i).is_err())
                        .collect(),
                    null: false,
                })
            }
            _ => self
                .known
                .iter()
                .find(|(part, _)| part == expr)
                .map(|(_, ids)| ids.clone()),
        }
    }

    /// The ids of an expression made only of concept ids, unions, differences and sets of
    /// such (or parts already looked up).
    pub(super) fn plain_ids(&self, expr: &ConceptExpr) -> Option<Vec<i64>> {
        self.known_ids(expr).map(|k| k.ids)
    }

    /// The concept ids a concept expression stands for, as a one-column plan (`concept_id`).
    pub(super) fn concepts(&mut self, expr: &ConceptExpr) -> Result<LogicalPlan> {
        let concept = |n: &str| qualified("concept", n);
        let plan = match expr {
            // `SELECT id AS concept_id`: a one-row relation every SQL dialect can read.
            ConceptExpr::Concept { id, .. } => LogicalPlanBuilder::empty(true)
                .project(vec![lit(*id).alias("concept_id")])?
                .build()?,
            ConceptExpr::SourceCodes { .. } | ConceptExpr::Named(_) => {
                LogicalPlanBuilder::from(self.table("concept"))
                    .filter(leaf_test(expr))?
                    .project(vec![concept("concept_id").alias("concept_id")])?
                    .build()?
            }
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
            ConceptExpr::WithSources(inner) => {
                let base = self.concepts(inner)?;
                let r = |n: &str| qualified("concept_relationship", n);
                let sources = LogicalPlanBuilder::from(self.table("concept_relationship"))
                    .filter(
                        r("relationship_id")
                            .eq(lit("Maps to"))
                            .and(in_subquery(r("concept_id_2"), Arc::new(base.clone()))),
                    )?
                    .project(vec![r("concept_id_1").alias("concept_id")])?
                    .build()?;
                LogicalPlanBuilder::from(base)
                    .union_distinct(sources)?
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

/// The concept ids of a part of a concept set, once looked up; `null` when a NULL id was
/// among them.
#[derive(Clone, Debug, Default)]
pub(super) struct Ids {
    pub ids: Vec<i64>,
    pub null: bool,
}

/// The vocabulary's relations a part of a concept set reads: (table, first column, second).
const RELATIONS: [(&str, &str, &str); 2] = [
    (
        "concept_ancestor",
        "ancestor_concept_id",
        "descendant_concept_id",
    ),
    ("concept_relationship", "concept_id_1", "concept_id_2"),
];

/// For a part read from a relation once the ids inside it are known (descendants, mappings,
/// sources): its relation (an index of `RELATIONS`), whether those ids are in the relation's
/// first column (else the second, the ids found being in the other), and the inner part.
fn relation_of(part: &ConceptExpr) -> Option<(usize, bool, &ConceptExpr)> {
    match part {
        ConceptExpr::WithDescendants(inner) => Some((0, true, inner)),
        ConceptExpr::Mapped(inner) => Some((1, true, inner)),
        ConceptExpr::WithSources(inner) => Some((1, false, inner)),
        _ => None,
    }
}

/// Parts of a concept set found by a test of `concept` alone.
fn is_leaf(expr: &ConceptExpr) -> bool {
    matches!(
        expr,
        ConceptExpr::Named(_) | ConceptExpr::SourceCodes { .. }
    )
}

/// The test of a `concept` row for a name or source codes (`is_leaf`).
fn leaf_test(expr: &ConceptExpr) -> Expr {
    let concept = |n: &str| qualified("concept", n);
    match expr {
        ConceptExpr::SourceCodes { vocabulary, codes } => {
            let code = upper(concept("concept_code"));
            let matches = codes
                .iter()
                .map(|p| code_matches(p, code.clone()))
                .reduce(Expr::or)
                .unwrap_or(lit(false));
            upper(concept("vocabulary_id"))
                .eq(lit(vocabulary.to_ascii_uppercase()))
                .and(matches)
        }
        ConceptExpr::Named(name) => upper(concept("concept_name")).eq(lit(name.to_uppercase())),
        _ => lit(false),
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
