//! A search index over a repository's vocabulary, built once per repository and cached on
//! disk, so that `:concept`, completion of concept names and the names of concept ids answer
//! in milliseconds over a full-size OHDSI vocabulary (millions of concepts, tens of millions of
//! ancestor rows) instead of scanning `concept`, `concept_synonym` and `concept_ancestor` on
//! every question. Its answers are those of the queries in `browse`, which a test holds it to.
//!
//! What it holds, in files a search maps into memory and reads only where it looks:
//! - every concept in *rank* order, the order in which search answers (standard concepts
//!   first, then by name, then by id), with its descendants and records counted once at build;
//! - `names.fst`: lower-cased names with their rank, searched by prefix for completion;
//! - `codes.fst`: lower-cased codes with their rank;
//! - `suffixes.fst`: every suffix of every word of every name and synonym, with its word, and
//!   the texts each word occurs in: a text that contains a search's longest word contains it
//!   inside one of its own words, so the words found by that suffix prefix give every candidate,
//!   and each candidate is then tested for the whole text as `browse` tests it.

use super::domains::CATALOGUE;
use super::{RepoError, Repository};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;
use fst::automaton::{Automaton, Str};
use fst::{IntoStreamer, Set, SetBuilder, Streamer};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The layout of the files; a different layout is a different index.
const FORMAT: u32 = 1;
/// Bytes per concept in `concepts.bin` (see `ConceptAt`).
const CONCEPT: usize = 56;
/// Bytes per synonym in `synonyms.bin`: rank u32, length u32, offset u64.
const SYNONYM: usize = 16;
/// Bytes per entry of `ids.bin`: id i64, rank u32, unused u32.
const ID: usize = 16;
/// Beyond this many texts holding the search's longest word, reading concepts in rank order
/// until enough match is quicker than gathering candidates (a search for `a`).
const DENSE: usize = 200_000;

/// One concept found (see `browse::ConceptHit`).
pub use super::browse::ConceptHit;

/// An open index.
pub struct VocabularyIndex {
    concepts: Mmap,
    ids: Mmap,
    synonyms: Mmap,
    strings: Mmap,
    postings: Mmap,
    posting_starts: Mmap,
    names: Set<Mmap>,
    codes: Set<Mmap>,
    suffixes: Set<Mmap>,
    meta: Meta,
}

/// `meta.json`: what the files hold and which data they were built from.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    /// `data_key` of the repository when built.
    key: String,
    concepts: u32,
    synonyms: u32,
    words: u32,
    domains: Vec<String>,
    vocabularies: Vec<String>,
}

/// One concept's fields as stored, borrowed from the mapped files.
struct ConceptAt<'a> {
    id: i64,
    /// `None` for a concept whose name is null.
    name: Option<&'a str>,
    code: &'a str,
    descendants: u64,
    records: u64,
    domain: u16,
    vocabulary: u16,
    standard: bool,
    /// Its synonyms' positions in `synonyms.bin`.
    synonyms: std::ops::Range<u32>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The rank stored in the last four bytes of a key of `names.fst` or `codes.fst`, or the word
/// of a key of `suffixes.fst`.
fn key_tail(key: &[u8]) -> u32 {
    u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"))
}

/// A text's words: its maximal runs of letters and digits, lower-cased.
fn words(lower: &str) -> impl Iterator<Item = &str> {
    lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Which files of a repository an index depends on, and as they are now: the table, path, size
/// and modification time of every table file (records are counted from the event tables). A
/// change to any gives another key, hence a rebuilt index. Reading metadata only, it costs
/// microseconds where hashing the data (`run`'s fingerprint) would read gigabytes.
pub fn data_key(repo: &Repository) -> Result<String, RepoError> {
    let mut files: Vec<_> = repo.files.iter().collect();
    files.sort_by_key(|f| f.table.name);
    let mut h = Sha256::new();
    h.update(FORMAT.to_le_bytes());
    for f in files {
        let meta = std::fs::metadata(&f.path).map_err(|e| RepoError::Io {
            path: f.path.clone(),
            message: e.to_string(),
        })?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let path = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
        h.update(f.table.name.as_bytes());
        h.update([0]);
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(meta.len().to_le_bytes());
        h.update(modified.to_le_bytes());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Where the index of the repository in `repo_dir` is kept under `cache`: one directory per
/// repository, replaced when its data changes.
pub fn index_dir(cache: &Path, repo_dir: &Path) -> PathBuf {
    let dir = std::fs::canonicalize(repo_dir).unwrap_or_else(|_| repo_dir.to_path_buf());
    let digest = Sha256::digest(dir.to_string_lossy().as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    cache.join("vocabulary").join(name)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RepoError + '_ {
    move |e| RepoError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn engine(e: impl ToString) -> RepoError {
    RepoError::Engine(e.to_string())
}

impl VocabularyIndex {
    /// The repository's index from `dir` if it was built from the data as it is now
    /// (`data_key`); otherwise built there first, replacing an index of older data. The new
    /// index is written beside `dir` and renamed into place, so an interrupted build leaves the
    /// old index or none, never part of one.
    pub async fn open_or_build(
        ctx: &SessionContext,
        repo: &Repository,
        dir: &Path,
    ) -> Result<VocabularyIndex, RepoError> {
        let key = data_key(repo)?;
        if let Some(index) = Self::open(dir, &key)? {
            return Ok(index);
        }
        let parent = dir.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let partial = super::write::hidden_sibling(dir, &format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let built = build(ctx, repo, &key, &partial).await;
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(dir);
        if std::fs::rename(&partial, dir).is_err() {
            // Another session built it at the same time: use theirs.
            let _ = std::fs::remove_dir_all(&partial);
        }
        Self::open(dir, &key)?.ok_or_else(|| RepoError::Io {
            path: dir.to_path_buf(),
            message: "the vocabulary index just built cannot be read".into(),
        })
    }

    /// The repository's index from `dir` if it was built from the data as it is now.
    pub fn open_cached(
        repo: &Repository,
        dir: &Path,
    ) -> Result<Option<VocabularyIndex>, RepoError> {
        Self::open(dir, &data_key(repo)?)
    }

    /// The index in `dir` if it exists and was built from data with this key.
    fn open(dir: &Path, key: &str) -> Result<Option<VocabularyIndex>, RepoError> {
        let Ok(text) = std::fs::read_to_string(dir.join("meta.json")) else {
            return Ok(None);
        };
        let meta: Meta = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        if meta.format != FORMAT || meta.key != key {
            return Ok(None);
        }
        let map = |name: &str| -> Result<Mmap, RepoError> {
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            // The files are written once, before the directory is renamed into place, and never
            // written again: a rebuild writes a new directory. So the mapping cannot change.
            unsafe { Mmap::map(&file) }.map_err(io(&path))
        };
        let set = |name: &str| -> Result<Set<Mmap>, RepoError> {
            Set::new(map(name)?).map_err(|e| RepoError::Io {
                path: dir.join(name),
                message: e.to_string(),
            })
        };
        let index = VocabularyIndex {
            concepts: map("concepts.bin")?,
            ids: map("ids.bin")?,
            synonyms: map("synonyms.bin")?,
            strings: map("strings.bin")?,
            postings: map("postings.bin")?,
            posting_starts: map("posting_starts.bin")?,
            names: set("names.fst")?,
            codes: set("codes.fst")?,
            suffixes: set("suffixes.fst")?,
            meta,
        };
        let sizes_agree = index.concepts.len() == index.meta.concepts as usize * CONCEPT
            && index.ids.len() == index.meta.concepts as usize * ID
            && index.synonyms.len() == index.meta.synonyms as usize * SYNONYM
            && index.posting_starts.len() == (index.meta.words as usize + 1) * 8;
        Ok(sizes_agree.then_some(index))
    }

    /// How many concepts the index holds.
    pub fn len(&self) -> usize {
        self.meta.concepts as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn text(&self, offset: u64, len: u32) -> &str {
        let bytes = &self.strings[offset as usize..offset as usize + len as usize];
        std::str::from_utf8(bytes).unwrap_or("")
    }

    fn concept(&self, rank: u32) -> ConceptAt<'_> {
        let b = &self.concepts[rank as usize * CONCEPT..(rank as usize + 1) * CONCEPT];
        let offset = u64_at(b, 8);
        let (name_len, code_len) = (u32_at(b, 16), u32_at(b, 20));
        let flags = b[48];
        let end = if rank + 1 < self.meta.concepts {
            u32_at(&self.concepts, (rank as usize + 1) * CONCEPT + 44)
        } else {
            self.meta.synonyms
        };
        ConceptAt {
            id: u64_at(b, 0) as i64,
            name: (flags & 2 == 0).then(|| self.text(offset, name_len)),
            code: self.text(offset + name_len as u64, code_len),
            descendants: u64_at(b, 24),
            records: u64_at(b, 32),
            domain: u16::from_le_bytes([b[40], b[41]]),
            vocabulary: u16::from_le_bytes([b[42], b[43]]),
            standard: flags & 1 == 1,
            synonyms: u32_at(b, 44)..end,
        }
    }

    fn synonym(&self, at: u32) -> &str {
        let b = &self.synonyms[at as usize * SYNONYM..(at as usize + 1) * SYNONYM];
        self.text(u64_at(b, 8), u32_at(b, 4))
    }

    fn synonym_rank(&self, at: u32) -> u32 {
        u32_at(&self.synonyms, at as usize * SYNONYM)
    }

    /// The rank of the concept with this id.
    fn rank_of(&self, id: i64) -> Option<u32> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = u64_at(&self.ids, mid * ID) as i64;
            match at.cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(u32_at(&self.ids, mid * ID + 8)),
            }
        }
        None
    }

    /// The name of one concept, if the vocabulary has it (as `browse::concept_name`).
    pub fn name_of(&self, id: i64) -> Option<String> {
        let rank = self.rank_of(id)?;
        self.concept(rank).name.map(str::to_string)
    }

    /// Concept ids and names whose name starts with `prefix` (ignoring case), optionally of one
    /// domain, at most `limit`: standard concepts first, then shorter names, then by name and
    /// id (as `browse::concepts_starting`).
    pub fn starting(&self, prefix: &str, domain: Option<&str>, limit: usize) -> Vec<(i64, String)> {
        let lower = prefix.to_lowercase();
        let domain = match domain {
            Some(d) => match self.meta.domains.iter().position(|x| x == d) {
                Some(at) => Some(at as u16),
                None => return Vec::new(),
            },
            None => None,
        };
        // Rank orders standard first, then by name and id; only the name's length comes first
        // within the standard concepts and the rest, so (standard, length, rank) is the order.
        let mut found: Vec<(bool, usize, u32)> = Vec::new();
        let mut stream = self
            .names
            .search(Str::new(&lower).starts_with())
            .into_stream();
        while let Some(key) = stream.next() {
            let rank = key_tail(key);
            let c = self.concept(rank);
            if domain.is_some_and(|d| d != c.domain) {
                continue;
            }
            let Some(name) = c.name else { continue };
            found.push((!c.standard, name.chars().count(), rank));
        }
        if found.len() > limit {
            found.select_nth_unstable(limit);
            found.truncate(limit);
        }
        found.sort_unstable();
        found
            .into_iter()
            .map(|(_, _, rank)| {
                let c = self.concept(rank);
                (c.id, c.name.unwrap_or_default().to_string())
            })
            .collect()
    }

    /// Concepts whose name or one of whose synonyms contains `text` (ignoring case), or whose
    /// code or id is `text`, at most `limit`, in rank order (as `browse::search_concepts`).
    pub fn search(&self, text: &str, limit: usize) -> Vec<ConceptHit> {
        let lower = text.to_lowercase();
        let mut ranks = self.containing(&lower, limit);
        if let Some(rank) = text
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|id| self.rank_of(id))
        {
            ranks.push(rank);
        }
        let code_key = format!("{lower}\0");
        let mut codes = self
            .codes
            .search(Str::new(&code_key).starts_with())
            .into_stream();
        while let Some(key) = codes.next() {
            // The key is the code, a zero byte and four bytes of rank: nothing longer.
            if key.len() == code_key.len() + 4 {
                ranks.push(key_tail(key));
            }
        }
        ranks.sort_unstable();
        ranks.dedup();
        ranks.truncate(limit);
        ranks.into_iter().map(|r| self.hit(r, &lower)).collect()
    }

    /// Whether a concept's name or one of its synonyms contains `lower`.
    fn contains(&self, rank: u32, lower: &str) -> bool {
        let c = self.concept(rank);
        c.name.is_some_and(|n| n.to_lowercase().contains(lower))
            || c.synonyms
                .clone()
                .any(|s| self.synonym(s).to_lowercase().contains(lower))
    }

    /// The first `limit` ranks (in order) of concepts whose name or a synonym contains `lower`.
    fn containing(&self, lower: &str, limit: usize) -> Vec<u32> {
        let scan = |limit: usize| -> Vec<u32> {
            (0..self.meta.concepts)
                .filter(|&r| self.contains(r, lower))
                .take(limit)
                .collect()
        };
        let Some(longest) = words(lower).max_by_key(|w| w.len()) else {
            // No letter or digit to look up (`-`, `%`): every concept is a candidate.
            return scan(limit);
        };
        let mut word_ids: Vec<u32> = Vec::new();
        let mut stream = self
            .suffixes
            .search(Str::new(longest).starts_with())
            .into_stream();
        while let Some(key) = stream.next() {
            word_ids.push(key_tail(key));
        }
        word_ids.sort_unstable();
        word_ids.dedup();
        let range = |w: u32| {
            let start = u64_at(&self.posting_starts, w as usize * 8) as usize;
            let end = u64_at(&self.posting_starts, (w as usize + 1) * 8) as usize;
            start..end
        };
        let total: usize = word_ids.iter().map(|&w| range(w).len()).sum();
        if total > DENSE {
            return scan(limit);
        }
        let names = self.meta.concepts;
        let mut ranks: Vec<u32> = Vec::with_capacity(total);
        for w in word_ids {
            for at in range(w) {
                let text = u32_at(&self.postings, at * 4);
                ranks.push(if text < names {
                    text
                } else {
                    self.synonym_rank(text - names)
                });
            }
        }
        ranks.sort_unstable();
        ranks.dedup();
        ranks
            .into_iter()
            .filter(|&r| self.contains(r, lower))
            .take(limit)
            .collect()
    }

    fn hit(&self, rank: u32, lower: &str) -> ConceptHit {
        let c = self.concept(rank);
        let name = c.name.unwrap_or_default();
        let synonym = (!name.to_lowercase().contains(lower))
            .then(|| {
                c.synonyms
                    .clone()
                    .map(|s| self.synonym(s))
                    .find(|s| s.to_lowercase().contains(lower))
                    .map(str::to_string)
            })
            .flatten();
        ConceptHit {
            id: c.id,
            name: name.to_string(),
            domain: self.meta.domains[c.domain as usize].clone(),
            vocabulary: self.meta.vocabularies[c.vocabulary as usize].clone(),
            code: c.code.to_string(),
            standard: c.standard,
            synonym,
            descendants: c.descendants,
            records: c.records,
        }
    }
}

/// Every batch of a query, one at a time.
async fn each_batch(
    ctx: &SessionContext,
    sql: &str,
    mut f: impl FnMut(&RecordBatch) -> Result<(), RepoError>,
) -> Result<(), RepoError> {
    use futures::StreamExt;
    let df = ctx.sql(sql).await.map_err(engine)?;
    let mut stream = df.execute_stream().await.map_err(engine)?;
    while let Some(batch) = stream.next().await {
        f(&batch.map_err(engine)?)?;
    }
    Ok(())
}

/// A column as Int64 or Utf8 values.
fn ints(b: &RecordBatch, i: usize) -> Result<Vec<Option<i64>>, RepoError> {
    let a = cast(b.column(i), &DataType::Int64).map_err(engine)?;
    Ok(a.as_primitive::<Int64Type>().iter().collect())
}

fn texts(b: &RecordBatch, i: usize) -> Result<datafusion::arrow::array::StringArray, RepoError> {
    let a = cast(b.column(i), &DataType::Utf8).map_err(engine)?;
    Ok(a.as_string::<i32>().clone())
}

/// The position of `s` in `list`, added if new.
fn intern(list: &mut Vec<String>, seen: &mut HashMap<String, u16>, s: &str) -> u16 {
    if let Some(&at) = seen.get(s) {
        return at;
    }
    let at = list.len() as u16;
    list.push(s.to_string());
    seen.insert(s.to_string(), at);
    at
}

/// Keys in one buffer, sorted and written as an fst set: millions of keys without an
/// allocation each.
#[derive(Default)]
struct Keys {
    bytes: Vec<u8>,
    spans: Vec<(usize, u32)>,
}

impl Keys {
    fn push(&mut self, parts: &[&[u8]]) {
        let start = self.bytes.len();
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.spans.push((start, (self.bytes.len() - start) as u32));
    }

    fn write(mut self, path: &Path) -> Result<(), RepoError> {
        let bytes = &self.bytes;
        let key = |&(s, l): &(usize, u32)| &bytes[s..s + l as usize];
        self.spans.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        self.spans.dedup_by(|a, b| key(a) == key(b));
        let file = std::fs::File::create(path).map_err(io(path))?;
        let mut set = SetBuilder::new(BufWriter::new(file)).map_err(|e| RepoError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for span in &self.spans {
            set.insert(key(span)).map_err(|e| RepoError::Io {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        set.finish().map_err(|e| RepoError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let mut f = BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    f.write_all(bytes).map_err(io(path))?;
    f.flush().map_err(io(path))
}

/// Builds the index files of the repository's vocabulary into `dir`.
async fn build(
    ctx: &SessionContext,
    repo: &Repository,
    key: &str,
    dir: &Path,
) -> Result<(), RepoError> {
    // Concepts as read: id, the offset of "name then code" in `strings`, lengths, fields.
    struct Read {
        id: i64,
        offset: u64,
        name_len: u32,
        code_len: u32,
        domain: u16,
        vocabulary: u16,
        standard: bool,
        null_name: bool,
    }
    let mut strings: Vec<u8> = Vec::new();
    let mut read: Vec<Read> = Vec::new();
    let (mut domains, mut vocabularies) = (Vec::new(), Vec::new());
    let (mut seen_domains, mut seen_vocabularies) = (HashMap::new(), HashMap::new());
    each_batch(
        ctx,
        "SELECT concept_id, concept_name, domain_id, vocabulary_id, concept_code, \
         standard_concept FROM concept WHERE concept_id IS NOT NULL",
        |b| {
            let ids = ints(b, 0)?;
            let t: Vec<_> = (1..6).map(|i| texts(b, i)).collect::<Result<_, _>>()?;
            let at = |c: usize, k: usize| (!t[c].is_null(k)).then(|| t[c].value(k));
            for (k, id) in ids.into_iter().enumerate() {
                let (name, code) = (at(0, k), at(3, k).unwrap_or(""));
                let offset = strings.len() as u64;
                strings.extend_from_slice(name.unwrap_or("").as_bytes());
                strings.extend_from_slice(code.as_bytes());
                read.push(Read {
                    id: id.expect("not null"),
                    offset,
                    name_len: name.map_or(0, str::len) as u32,
                    code_len: code.len() as u32,
                    domain: intern(&mut domains, &mut seen_domains, at(1, k).unwrap_or("")),
                    vocabulary: intern(
                        &mut vocabularies,
                        &mut seen_vocabularies,
                        at(2, k).unwrap_or(""),
                    ),
                    standard: at(4, k) == Some("S"),
                    null_name: name.is_none(),
                });
            }
            Ok(())
        },
    )
    .await?;
    fn span(strings: &[u8], offset: u64, len: u32) -> &[u8] {
        &strings[offset as usize..offset as usize + len as usize]
    }
    // Rank: standard first, then name (bytes, as the engine compares text), then id.
    let mut order: Vec<u32> = (0..read.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&read[a as usize], &read[b as usize]);
        let (na, nb) = (
            span(&strings, a.offset, a.name_len),
            span(&strings, b.offset, b.name_len),
        );
        (!a.standard, na, a.id).cmp(&(!b.standard, nb, b.id))
    });
    let mut by_id: Vec<(i64, u32)> = order
        .iter()
        .enumerate()
        .map(|(rank, &r)| (read[r as usize].id, rank as u32))
        .collect();
    by_id.sort_unstable();
    let rank_of = |id: i64| {
        by_id
            .binary_search_by_key(&id, |&(i, _)| i)
            .ok()
            .map(|at| by_id[at].1)
    };

    let mut descendants = vec![0u64; read.len()];
    each_batch(
        ctx,
        "SELECT ancestor_concept_id, count(*) FROM concept_ancestor \
         WHERE ancestor_concept_id <> descendant_concept_id GROUP BY ancestor_concept_id",
        |b| {
            for (id, n) in ints(b, 0)?.into_iter().zip(ints(b, 1)?) {
                if let (Some(rank), Some(n)) = (id.and_then(rank_of), n) {
                    descendants[rank as usize] = n as u64;
                }
            }
            Ok(())
        },
    )
    .await?;

    // Records of each concept in the table of its domain.
    let mut records = vec![0u64; read.len()];
    for r in CATALOGUE {
        let Some((domain, field)) = r.vocabulary_domain else {
            continue;
        };
        let Some(column) = r.own(field) else { continue };
        let Some(d) = domains.iter().position(|x| x == domain) else {
            continue;
        };
        if repo.file(r.table).is_none() {
            continue;
        }
        let sql = format!(
            "SELECT {column}, count(*) FROM {} GROUP BY {column}",
            r.table
        );
        each_batch(ctx, &sql, |b| {
            for (id, n) in ints(b, 0)?.into_iter().zip(ints(b, 1)?) {
                if let (Some(rank), Some(n)) = (id.and_then(rank_of), n) {
                    let c = &read[order[rank as usize] as usize];
                    if c.domain as usize == d {
                        records[rank as usize] = n as u64;
                    }
                }
            }
            Ok(())
        })
        .await?;
    }

    // Synonyms: (rank, offset, length), by rank and then text, each once.
    let mut synonyms: Vec<(u32, u64, u32)> = Vec::new();
    if repo.file("concept_synonym").is_some() {
        each_batch(
            ctx,
            "SELECT concept_id, concept_synonym_name FROM concept_synonym",
            |b| {
                let names = texts(b, 1)?;
                for (k, id) in ints(b, 0)?.into_iter().enumerate() {
                    let Some(rank) = id.and_then(rank_of) else {
                        continue;
                    };
                    if names.is_null(k) {
                        continue;
                    }
                    let offset = strings.len() as u64;
                    strings.extend_from_slice(names.value(k).as_bytes());
                    synonyms.push((rank, offset, names.value(k).len() as u32));
                }
                Ok(())
            },
        )
        .await?;
    }
    let text_at = |offset: u64, len: u32| span(&strings, offset, len);
    let name_of = |r: &Read| span(&strings, r.offset, r.name_len);
    synonyms.sort_unstable_by(|a, b| (a.0, text_at(a.1, a.2)).cmp(&(b.0, text_at(b.1, b.2))));
    synonyms.dedup_by(|a, b| a.0 == b.0 && text_at(a.1, a.2) == text_at(b.1, b.2));

    // concepts.bin, ids.bin, synonyms.bin; names.fst and codes.fst.
    let mut concepts = Vec::with_capacity(read.len() * CONCEPT);
    let (mut names, mut codes) = (Keys::default(), Keys::default());
    let mut next_synonym = 0usize;
    for (rank, &r) in order.iter().enumerate() {
        let c = &read[r as usize];
        while next_synonym < synonyms.len() && (synonyms[next_synonym].0 as usize) < rank {
            next_synonym += 1;
        }
        concepts.extend_from_slice(&c.id.to_le_bytes());
        concepts.extend_from_slice(&c.offset.to_le_bytes());
        concepts.extend_from_slice(&c.name_len.to_le_bytes());
        concepts.extend_from_slice(&c.code_len.to_le_bytes());
        concepts.extend_from_slice(&descendants[rank].to_le_bytes());
        concepts.extend_from_slice(&records[rank].to_le_bytes());
        concepts.extend_from_slice(&c.domain.to_le_bytes());
        concepts.extend_from_slice(&c.vocabulary.to_le_bytes());
        concepts.extend_from_slice(&(next_synonym as u32).to_le_bytes());
        concepts.push(u8::from(c.standard) | (u8::from(c.null_name) << 1));
        concepts.extend_from_slice(&[0; 7]);
        let rank_key = (rank as u32).to_be_bytes();
        if !c.null_name {
            let lower = String::from_utf8_lossy(name_of(c)).to_lowercase();
            names.push(&[lower.as_bytes(), &[0], &rank_key]);
        }
        let code = &strings[(c.offset + c.name_len as u64) as usize..][..c.code_len as usize];
        let lower = String::from_utf8_lossy(code).to_lowercase();
        codes.push(&[lower.as_bytes(), &[0], &rank_key]);
    }
    names.write(&dir.join("names.fst"))?;
    codes.write(&dir.join("codes.fst"))?;
    let ids: Vec<u8> = by_id
        .iter()
        .flat_map(|&(id, rank)| {
            let mut e = [0u8; ID];
            e[..8].copy_from_slice(&id.to_le_bytes());
            e[8..12].copy_from_slice(&rank.to_le_bytes());
            e
        })
        .collect();
    let synonym_bytes: Vec<u8> = synonyms
        .iter()
        .flat_map(|&(rank, offset, len)| {
            let mut e = [0u8; SYNONYM];
            e[..4].copy_from_slice(&rank.to_le_bytes());
            e[4..8].copy_from_slice(&len.to_le_bytes());
            e[8..].copy_from_slice(&offset.to_le_bytes());
            e
        })
        .collect();

    // Words: text ids are ranks for names, then the concepts' count plus the synonym's place.
    let mut word_ids: HashMap<String, u32> = HashMap::new();
    let mut postings: Vec<Vec<u32>> = Vec::new();
    let texts = order
        .iter()
        .map(|&r| {
            let c = &read[r as usize];
            (!c.null_name).then(|| name_of(c))
        })
        .chain(synonyms.iter().map(|&(_, o, l)| Some(text_at(o, l))));
    let mut seen_here: Vec<u32> = Vec::new();
    for (text_id, text) in texts.enumerate() {
        let Some(text) = text else { continue };
        let lower = String::from_utf8_lossy(text).to_lowercase();
        seen_here.clear();
        for w in words(&lower) {
            let next = word_ids.len() as u32;
            let id = *word_ids.entry(w.to_string()).or_insert(next);
            if id == next {
                postings.push(Vec::new());
            }
            if !seen_here.contains(&id) {
                seen_here.push(id);
                postings[id as usize].push(text_id as u32);
            }
        }
    }
    let mut suffixes = Keys::default();
    for (w, &id) in &word_ids {
        let tail = id.to_be_bytes();
        for (at, _) in w.char_indices() {
            suffixes.push(&[&w.as_bytes()[at..], &[0], &tail]);
        }
    }
    drop(word_ids);
    suffixes.write(&dir.join("suffixes.fst"))?;
    let mut starts = Vec::with_capacity((postings.len() + 1) * 8);
    let mut flat = Vec::new();
    for p in &postings {
        starts.extend_from_slice(&((flat.len() / 4) as u64).to_le_bytes());
        for t in p {
            flat.extend_from_slice(&t.to_le_bytes());
        }
    }
    starts.extend_from_slice(&((flat.len() / 4) as u64).to_le_bytes());

    write_file(&dir.join("concepts.bin"), &concepts)?;
    write_file(&dir.join("ids.bin"), &ids)?;
    write_file(&dir.join("synonyms.bin"), &synonym_bytes)?;
    write_file(&dir.join("strings.bin"), &strings)?;
    write_file(&dir.join("postings.bin"), &flat)?;
    write_file(&dir.join("posting_starts.bin"), &starts)?;
    let meta = Meta {
        format: FORMAT,
        key: key.to_string(),
        concepts: read.len() as u32,
        synonyms: synonyms.len() as u32,
        words: postings.len() as u32,
        domains,
        vocabularies,
    };
    // Written last: an index without it is not one.
    write_file(
        &dir.join("meta.json"),
        serde_json::to_string(&meta).expect("plain data").as_bytes(),
    )
}
