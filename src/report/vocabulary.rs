//! What the review report looks up in a repository: the concepts a study names (with their
//! names, codes and vocabularies), the concepts of the source codes it gives, and the
//! repository's `cdm_source` description. Queries go through DataFusion's expression API, so
//! no text from the study is ever spliced into SQL.

use crate::repo::query::Queries;
use crate::study::*;
use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{col, lit};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// One concept of the vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConceptInfo {
    pub id: i64,
    pub name: String,
    pub code: String,
    pub vocabulary: String,
}

/// The repository's description of itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataSource {
    /// The repository directory's name.
    pub repository: String,
    /// `cdm_source`'s columns that have a value, in the table's order.
    pub fields: Vec<(String, String)>,
}

/// Everything looked up for one study.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lookups {
    pub concepts: HashMap<i64, ConceptInfo>,
    /// Per source vocabulary the study names: its concepts.
    pub source: HashMap<String, Vec<ConceptInfo>>,
    /// Per concept name the study gives (lower case): the concepts so named.
    pub named: HashMap<String, Vec<ConceptInfo>>,
    pub data_source: Option<DataSource>,
}

/// Every concept expression of the study: the concept sets, then any written inline.
pub fn expressions(study: &Study) -> Vec<&ConceptExpr> {
    let mut out: Vec<&ConceptExpr> = study.concept_sets.iter().map(|s| &s.expr).collect();
    for (_, e) in inline_expressions(study) {
        out.push(e);
    }
    out
}

/// Concept expressions written in place of a concept set, with where they are.
pub fn inline_expressions(study: &Study) -> Vec<(String, &ConceptExpr)> {
    let mut out = Vec::new();
    query_exprs("time zero", &study.index.query, &mut out);
    for s in &study.steps {
        criterion_exprs(&s.rule, &s.criterion, &mut out);
    }
    for a in &study.arms {
        criterion_exprs(&format!("arm {}", a.name), &a.criterion, &mut out);
    }
    for e in &study.follow_up.exits {
        match e {
            Exit::Event(q) => query_exprs("follow-up exit", q, &mut out),
            Exit::ExposureEnd { concepts, .. } => push_inline("follow-up exit", concepts, &mut out),
            _ => {}
        }
    }
    for c in &study.covariates {
        let place = format!("covariate {}", c.name);
        match &c.value {
            CovariateValue::Count { query, .. }
            | CovariateValue::Aggregate { query, .. }
            | CovariateValue::DaysSince { query, .. } => query_exprs(&place, query, &mut out),
            CovariateValue::Flag(criterion) => criterion_exprs(&place, criterion, &mut out),
            _ => {}
        }
    }
    for e in &study.endpoints {
        query_exprs(&format!("endpoint {}", e.name), &e.query, &mut out);
    }
    if let Consent::RequiredBy { query, .. } = &study.consent {
        query_exprs("consent", query, &mut out);
    }
    out
}

fn push_inline<'a>(place: &str, e: &'a ConceptExpr, out: &mut Vec<(String, &'a ConceptExpr)>) {
    if !matches!(e, ConceptExpr::Set(_)) {
        out.push((place.to_string(), e));
    }
}

fn query_exprs<'a>(place: &str, q: &'a EventQuery, out: &mut Vec<(String, &'a ConceptExpr)>) {
    for alt in q.alternatives() {
        if let Some(e) = &alt.concepts {
            push_inline(place, e, out);
        }
        for f in &alt.filters {
            match f {
                EventFilter::ValueIn(e) | EventFilter::SourceIn(e) => push_inline(place, e, out),
                EventFilter::Where(c) => criterion_exprs(place, c, out),
                _ => {}
            }
        }
    }
}

fn criterion_exprs<'a>(place: &str, c: &'a Criterion, out: &mut Vec<(String, &'a ConceptExpr)>) {
    match c {
        Criterion::All(parts) | Criterion::Any(parts) => {
            for p in parts {
                criterion_exprs(place, p, out);
            }
        }
        Criterion::Not(inner) => criterion_exprs(place, inner, out),
        Criterion::Events { query, .. } => query_exprs(place, query, out),
        _ => {}
    }
}

/// The concept ids, source vocabularies and concept names an expression gives.
fn wanted(
    e: &ConceptExpr,
    ids: &mut BTreeSet<i64>,
    vocabularies: &mut BTreeSet<String>,
    names: &mut BTreeSet<String>,
) {
    match e {
        ConceptExpr::Concept { id, .. } => {
            ids.insert(*id);
        }
        ConceptExpr::SourceCodes { vocabulary, .. } => {
            vocabularies.insert(vocabulary.clone());
        }
        ConceptExpr::Named(n) => {
            names.insert(n.to_lowercase());
        }
        ConceptExpr::Set(_) => {}
        ConceptExpr::WithDescendants(inner)
        | ConceptExpr::Mapped(inner)
        | ConceptExpr::WithSources(inner) => wanted(inner, ids, vocabularies, names),
        ConceptExpr::Union(parts) => {
            for p in parts {
                wanted(p, ids, vocabularies, names);
            }
        }
        ConceptExpr::Minus(a, b) => {
            wanted(a, ids, vocabularies, names);
            wanted(b, ids, vocabularies, names);
        }
    }
}

fn strings(b: &datafusion::arrow::record_batch::RecordBatch, i: usize) -> StringArray {
    cast(b.column(i), &DataType::Utf8)
        .expect("castable to text")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("text")
        .clone()
}

/// The concepts of `concept` for which `filter` holds.
async fn concepts_where(
    q: &impl Queries,
    filter: datafusion::prelude::Expr,
) -> Result<Vec<ConceptInfo>, String> {
    let frame = q
        .session()
        .table("concept")
        .await
        .and_then(|t| t.filter(filter))
        .and_then(|t| {
            t.select(vec![
                col("concept_id"),
                col("concept_name"),
                col("concept_code"),
                col("vocabulary_id"),
            ])
        })
        .map_err(|e| format!("cannot read the vocabulary: {e}"))?;
    let batches = q
        .rows(frame.into_unoptimized_plan())
        .await
        .map_err(|e| format!("cannot read the vocabulary: {e}"))?;
    let mut out = Vec::new();
    for b in &batches {
        let ids = cast(b.column(0), &DataType::Int64).map_err(|e| e.to_string())?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("integers")
            .clone();
        let (names, codes, vocabularies) = (strings(b, 1), strings(b, 2), strings(b, 3));
        for k in 0..b.num_rows() {
            let text = |a: &StringArray| {
                if a.is_null(k) {
                    String::new()
                } else {
                    a.value(k).to_string()
                }
            };
            out.push(ConceptInfo {
                id: ids.value(k),
                name: text(&names),
                code: text(&codes),
                vocabulary: text(&vocabularies),
            });
        }
    }
    Ok(out)
}

/// Looks up the study's concepts and the repository's description.
pub async fn look_up(study: &Study, q: &impl Queries, repository: &str) -> Result<Lookups, String> {
    let (mut ids, mut vocabularies, mut names) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for e in expressions(study) {
        wanted(e, &mut ids, &mut vocabularies, &mut names);
    }
    let mut lookups = Lookups::default();
    if !ids.is_empty() {
        let list = ids.iter().map(|&id| lit(id)).collect();
        for c in concepts_where(q, col("concept_id").in_list(list, false)).await? {
            lookups.concepts.insert(c.id, c);
        }
    }
    for v in vocabularies {
        let found = concepts_where(q, col("vocabulary_id").eq(lit(v.clone()))).await?;
        lookups.source.insert(v, found);
    }
    for n in names {
        let filter = datafusion::functions::expr_fn::lower(col("concept_name")).eq(lit(n.clone()));
        lookups.named.insert(n, concepts_where(q, filter).await?);
    }
    lookups.data_source = Some(data_source(q, repository).await?);
    Ok(lookups)
}

/// The first row of `cdm_source`, its columns with a value.
async fn data_source(q: &impl Queries, repository: &str) -> Result<DataSource, String> {
    let mut fields = Vec::new();
    let batches = match q.session().table("cdm_source").await {
        Ok(t) => {
            let plan = t
                .limit(0, Some(1))
                .map_err(|e| e.to_string())?
                .into_unoptimized_plan();
            q.rows(plan)
                .await
                .map_err(|e| format!("cannot read cdm_source: {e}"))?
        }
        Err(_) => Vec::new(),
    };
    if let Some(b) = batches.iter().find(|b| b.num_rows() > 0) {
        let schema = b.schema();
        for (i, field) in schema.fields().iter().enumerate() {
            let values = strings(b, i);
            if !values.is_null(0) && !values.value(0).is_empty() {
                fields.push((field.name().clone(), values.value(0).to_string()));
            }
        }
    }
    Ok(DataSource {
        repository: repository.to_string(),
        fields,
    })
}

/// One row of the code-list appendix, in OHDSI's layout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CodeRow {
    /// The concept set, or where an expression is written inline.
    pub set: String,
    pub concept_id: Option<i64>,
    pub name: String,
    pub code: String,
    pub vocabulary: String,
    pub excluded: bool,
    pub descendants: bool,
    pub mapped: bool,
    /// `+ sources`: the concepts that map to it are included.
    pub sources: bool,
}

#[derive(Clone, Copy, Default)]
struct Flags {
    excluded: bool,
    descendants: bool,
    mapped: bool,
    sources: bool,
}

fn pattern_text(p: &CodePattern) -> String {
    match p {
        CodePattern::Exact(c) => c.clone(),
        CodePattern::Prefix(c) => format!("{c}*"),
        CodePattern::Range(a, b) => format!("{a}..{b}"),
    }
}

/// The rows of one expression: concept sets used inside it are written out in place.
fn code_rows(
    study: &Study,
    set: &str,
    e: &ConceptExpr,
    flags: Flags,
    lookups: Option<&Lookups>,
    out: &mut Vec<CodeRow>,
) {
    let row = |id: Option<i64>, name: String, code: String, vocabulary: String| CodeRow {
        set: set.to_string(),
        concept_id: id,
        name,
        code,
        vocabulary,
        excluded: flags.excluded,
        descendants: flags.descendants,
        mapped: flags.mapped,
        sources: flags.sources,
    };
    match e {
        ConceptExpr::Concept { id, label } => {
            let found = lookups.and_then(|l| l.concepts.get(id));
            out.push(row(
                Some(*id),
                found
                    .map(|c| c.name.clone())
                    .or_else(|| label.clone())
                    .unwrap_or_else(|| "(not in the vocabulary)".into()),
                found.map_or(String::new(), |c| c.code.clone()),
                found.map_or(String::new(), |c| c.vocabulary.clone()),
            ));
        }
        ConceptExpr::SourceCodes { vocabulary, codes } => {
            let matched: Vec<&ConceptInfo> = lookups
                .and_then(|l| l.source.get(vocabulary))
                .map(|all| {
                    let mut m: Vec<&ConceptInfo> = all
                        .iter()
                        .filter(|c| codes.iter().any(|p| p.matches(&c.code)))
                        .collect();
                    m.sort_by(|a, b| a.code.cmp(&b.code).then(a.id.cmp(&b.id)));
                    m
                })
                .unwrap_or_default();
            if matched.is_empty() {
                for p in codes {
                    out.push(row(
                        None,
                        format!("codes matching {}", pattern_text(p)),
                        pattern_text(p),
                        vocabulary.clone(),
                    ));
                }
            }
            for c in matched {
                out.push(row(
                    Some(c.id),
                    c.name.clone(),
                    c.code.clone(),
                    c.vocabulary.clone(),
                ));
            }
        }
        ConceptExpr::Named(name) => {
            let found = lookups
                .and_then(|l| l.named.get(&name.to_lowercase()))
                .cloned()
                .unwrap_or_default();
            if found.is_empty() {
                out.push(row(
                    None,
                    format!("concepts named \"{name}\""),
                    String::new(),
                    String::new(),
                ));
            }
            for c in found {
                out.push(row(Some(c.id), c.name, c.code, c.vocabulary));
            }
        }
        ConceptExpr::Set(i) => {
            if let Some(s) = study.concept_sets.get(*i) {
                code_rows(study, set, &s.expr, flags, lookups, out);
            }
        }
        ConceptExpr::WithDescendants(inner) => code_rows(
            study,
            set,
            inner,
            Flags {
                descendants: true,
                ..flags
            },
            lookups,
            out,
        ),
        ConceptExpr::Mapped(inner) => code_rows(
            study,
            set,
            inner,
            Flags {
                mapped: true,
                ..flags
            },
            lookups,
            out,
        ),
        ConceptExpr::WithSources(inner) => code_rows(
            study,
            set,
            inner,
            Flags {
                sources: true,
                ..flags
            },
            lookups,
            out,
        ),
        ConceptExpr::Union(parts) => {
            for p in parts {
                code_rows(study, set, p, flags, lookups, out);
            }
        }
        ConceptExpr::Minus(a, b) => {
            code_rows(study, set, a, flags, lookups, out);
            code_rows(
                study,
                set,
                b,
                Flags {
                    excluded: !flags.excluded,
                    ..flags
                },
                lookups,
                out,
            );
        }
    }
}

/// The code-list appendix: every concept set's items, then expressions written inline.
pub fn code_list(study: &Study, lookups: Option<&Lookups>) -> Vec<CodeRow> {
    let mut out = Vec::new();
    for s in &study.concept_sets {
        code_rows(study, &s.name, &s.expr, Flags::default(), lookups, &mut out);
    }
    for (place, e) in inline_expressions(study) {
        code_rows(
            study,
            &format!("({place})"),
            e,
            Flags::default(),
            lookups,
            &mut out,
        );
    }
    out
}
