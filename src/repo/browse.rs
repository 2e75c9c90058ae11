//! What an analyst asks of a repository while exploring: how many rows and persons each table
//! holds, and which concepts match a name or code, with their descendants and records.

use super::query::Queries;
use super::{schema::TABLES, RepoError};
use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;

/// One table: rows and (where it has `person_id`) distinct persons.
#[derive(Clone, Debug, PartialEq)]
pub struct TableCount {
    pub table: String,
    pub rows: u64,
    pub persons: Option<u64>,
}

/// One concept found by `search_concepts`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConceptHit {
    pub id: i64,
    pub name: String,
    pub domain: String,
    pub vocabulary: String,
    pub code: String,
    pub standard: bool,
    /// A synonym that matched the text, when the name itself did not.
    pub synonym: Option<String>,
    /// Descendants in `concept_ancestor`, the concept itself not counted.
    pub descendants: u64,
    /// Records of this concept in the table of its domain.
    pub records: u64,
}

async fn batches(q: &impl Queries, sql: &str) -> Result<Vec<RecordBatch>, RepoError> {
    super::query::sql(q, sql).await.map_err(RepoError::Engine)
}

fn column<T: Array + Clone + 'static>(b: &RecordBatch, i: usize, t: &DataType) -> T {
    cast(b.column(i), t)
        .expect("castable")
        .as_any()
        .downcast_ref::<T>()
        .expect("the cast type")
        .clone()
}

/// Rows and persons of every OMOP table the repository has (a file repository's absent tables
/// count as empty).
pub async fn table_counts(q: &impl Queries) -> Result<Vec<TableCount>, RepoError> {
    let mut out = Vec::new();
    for table in TABLES.iter().filter(|t| q.has_table(t.name)) {
        let persons = if table.column("person_id").is_some() {
            "count(DISTINCT person_id)"
        } else {
            "CAST(NULL AS BIGINT)"
        };
        let b = batches(
            q,
            &format!("SELECT count(*), {persons} FROM {}", table.name),
        )
        .await?;
        let b = &b[0];
        let rows: Int64Array = column(b, 0, &DataType::Int64);
        let persons: Int64Array = column(b, 1, &DataType::Int64);
        out.push(TableCount {
            table: table.name.to_string(),
            rows: rows.value(0) as u64,
            persons: (!persons.is_null(0)).then(|| persons.value(0) as u64),
        });
    }
    Ok(out)
}

/// The table and column holding the concepts of a vocabulary domain (`concept.domain_id`).
fn domain_column(domain: &str) -> Option<(&'static str, &'static str)> {
    super::domains::CATALOGUE.iter().find_map(|r| {
        let (name, field) = r.vocabulary_domain?;
        (name == domain).then_some((r.table, r.own(field)?))
    })
}

/// Concepts whose name or one of whose synonyms (`concept_synonym`) contains `text` (ignoring
/// case), or whose code or id is `text`, at most `limit`, standard concepts first.
pub async fn search_concepts(
    q: &impl Queries,
    text: &str,
    limit: usize,
) -> Result<Vec<ConceptHit>, RepoError> {
    let quoted = sql_text(text);
    let id_test = text
        .trim()
        .parse::<i64>()
        .map_or(String::new(), |id| format!(" OR c.concept_id = {id}"));
    let sql = format!(
        "WITH synonyms AS (SELECT concept_id, min(concept_synonym_name) AS synonym \
           FROM concept_synonym WHERE strpos(lower(concept_synonym_name), lower({quoted})) > 0 \
           GROUP BY concept_id) \
         SELECT c.concept_id, c.concept_name, c.domain_id, c.vocabulary_id, c.concept_code, \
           c.standard_concept, s.synonym \
         FROM concept c LEFT JOIN synonyms s ON s.concept_id = c.concept_id \
         WHERE strpos(lower(c.concept_name), lower({quoted})) > 0 OR s.synonym IS NOT NULL \
           OR lower(c.concept_code) = lower({quoted}){id_test} \
         ORDER BY CASE WHEN c.standard_concept = 'S' THEN 0 ELSE 1 END, c.concept_name, c.concept_id \
         LIMIT {limit}"
    );
    let mut hits = Vec::new();
    for b in batches(q, &sql).await? {
        let ids: Int64Array = column(&b, 0, &DataType::Int64);
        let texts: Vec<StringArray> = (1..7).map(|i| column(&b, i, &DataType::Utf8)).collect();
        let text_at = |c: usize, k: usize| {
            (!texts[c].is_null(k))
                .then(|| texts[c].value(k).to_string())
                .unwrap_or_default()
        };
        for k in 0..b.num_rows() {
            hits.push(ConceptHit {
                id: ids.value(k),
                name: text_at(0, k),
                domain: text_at(1, k),
                vocabulary: text_at(2, k),
                code: text_at(3, k),
                standard: text_at(4, k) == "S",
                synonym: (!texts[5].is_null(k)
                    && !text_at(0, k).to_lowercase().contains(&text.to_lowercase()))
                .then(|| text_at(5, k)),
                descendants: 0,
                records: 0,
            });
        }
    }
    // Counted for all hits at once: one query of the ancestors, one per domain's table.
    let ids = |hits: &mut dyn Iterator<Item = &ConceptHit>| {
        hits.map(|h| h.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !hits.is_empty() {
        let sql = format!(
            "SELECT ancestor_concept_id, count(*) FROM concept_ancestor \
             WHERE ancestor_concept_id IN ({}) AND descendant_concept_id <> ancestor_concept_id \
             GROUP BY ancestor_concept_id",
            ids(&mut hits.iter())
        );
        let counts = id_counts(q, &sql).await?;
        for hit in &mut hits {
            hit.descendants = counts.get(&hit.id).copied().unwrap_or(0);
        }
    }
    let mut domains: Vec<String> = hits.iter().map(|h| h.domain.clone()).collect();
    domains.sort();
    domains.dedup();
    for domain in domains {
        let Some((table, col)) = domain_column(&domain) else {
            continue;
        };
        let sql = format!(
            "SELECT {col}, count(*) FROM {table} WHERE {col} IN ({}) GROUP BY {col}",
            ids(&mut hits.iter().filter(|h| h.domain == domain))
        );
        let counts = id_counts(q, &sql).await?;
        for hit in hits.iter_mut().filter(|h| h.domain == domain) {
            hit.records = counts.get(&hit.id).copied().unwrap_or(0);
        }
    }
    Ok(hits)
}

/// The counts of a query of (concept id, count) rows, by id.
async fn id_counts(
    q: &impl Queries,
    sql: &str,
) -> Result<std::collections::HashMap<i64, u64>, RepoError> {
    let mut counts = std::collections::HashMap::new();
    for b in batches(q, sql).await? {
        let ids: Int64Array = column(&b, 0, &DataType::Int64);
        let n: Int64Array = column(&b, 1, &DataType::Int64);
        for k in 0..b.num_rows() {
            if !ids.is_null(k) {
                counts.insert(ids.value(k), n.value(k) as u64);
            }
        }
    }
    Ok(counts)
}

/// A text as an SQL string literal.
fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Concept ids and names whose name starts with `prefix` (ignoring case), optionally of one
/// domain (`Drug`, `Condition`, …), at most `limit`: standard concepts first, then shorter
/// names. For completing names as they are typed, so it reads the `concept` table only.
pub async fn concepts_starting(
    q: &impl Queries,
    prefix: &str,
    domain: Option<&str>,
    limit: usize,
) -> Result<Vec<(i64, String)>, RepoError> {
    let domain_test = domain.map_or(String::new(), |d| {
        format!(" AND domain_id = {}", sql_text(d))
    });
    let sql = format!(
        "SELECT concept_id, concept_name FROM concept \
         WHERE starts_with(lower(concept_name), lower({})){domain_test} \
         ORDER BY CASE WHEN standard_concept = 'S' THEN 0 ELSE 1 END, \
           character_length(concept_name), concept_name, concept_id \
         LIMIT {limit}",
        sql_text(prefix)
    );
    let mut found = Vec::new();
    for b in batches(q, &sql).await? {
        let ids: Int64Array = column(&b, 0, &DataType::Int64);
        let names: StringArray = column(&b, 1, &DataType::Utf8);
        for k in 0..b.num_rows() {
            if !names.is_null(k) {
                found.push((ids.value(k), names.value(k).to_string()));
            }
        }
    }
    Ok(found)
}

/// The name of one concept, if the vocabulary has it.
pub async fn concept_name(q: &impl Queries, id: i64) -> Result<Option<String>, RepoError> {
    let b = batches(
        q,
        &format!("SELECT concept_name FROM concept WHERE concept_id = {id} LIMIT 1"),
    )
    .await?;
    Ok(b.iter().find(|b| b.num_rows() > 0).and_then(|b| {
        let names: StringArray = column(b, 0, &DataType::Utf8);
        (!names.is_null(0)).then(|| names.value(0).to_string())
    }))
}
