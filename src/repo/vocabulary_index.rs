//! A search index over a repository's vocabulary, built once per repository and cached on
//! disk, so that `:concept`, completion of concept names and the names of concept ids answer
//! in milliseconds over a full-size OHDSI vocabulary (millions of concepts, tens of millions of
//! ancestor rows) instead of scanning `concept`, `concept_synonym` and `concept_ancestor` on
//! every question. Its answers are those of the queries in `browse`, which a test holds it to.
//!
//! What it holds, in files a search reads only where it looks (the finite-state sets, the ids and
//! the word lists mapped into memory; the concepts and their texts read record by record):
//! - every concept in *rank* order, the order in which search answers (standard concepts
//!   first, then by name, then by id), with its descendants and records counted once at build;
//! - `names.fst`: lower-cased names with their rank, standard flag, domain and length, searched
//!   by prefix for completion;
//! - `codes.fst`: lower-cased codes with their rank;
//! - `suffixes.fst`: every suffix of every word of every name and synonym (a word is a run of
//!   letters and digits, or one other character), with its word, and the texts each word occurs
//!   in, in rank order: a text that contains a search contains each of the search's words inside
//!   one of its own (whole, at its start or at its end where the search has a separator beside
//!   it), so the words found through the search's rarest word give every candidate, and each
//!   candidate is then tested for the whole text as `browse` tests it.

use super::domains::CATALOGUE;
use super::{RepoError, Repository};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;
use fst::automaton::{Automaton, Str};
use fst::{IntoStreamer, Map, MapBuilder, Streamer};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The layout of the files; a different layout is a different index.
const FORMAT: u32 = 2;
/// Bytes per concept in `concepts.bin` (see `ConceptAt`).
const CONCEPT: usize = 56;
/// Bytes per synonym in `synonyms.bin`: rank u32, length u32, offset u64.
const SYNONYM: usize = 16;
/// Bytes per entry of `ids.bin`: id i64, rank u32, unused u32.
const ID: usize = 16;

/// One concept found (see `browse::ConceptHit`).
pub use super::browse::ConceptHit;

/// An open index.
pub struct VocabularyIndex {
    concepts: Stored,
    ids: Mmap,
    synonyms: Stored,
    strings: Stored,
    postings: Mmap,
    posting_starts: Mmap,
    names: Map<Mmap>,
    codes: Map<Mmap>,
    suffixes: Map<Mmap>,
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

/// One concept's fields as stored.
struct ConceptAt {
    id: i64,
    /// `None` for a concept whose name is null.
    name: Option<String>,
    code: String,
    descendants: u64,
    records: u64,
    domain: u16,
    vocabulary: u16,
    standard: bool,
    /// Its synonyms' positions in `synonyms.bin`.
    synonyms: std::ops::Range<u32>,
}

/// The value of a name's key in `names.fst`: what completion orders and filters by.
struct NameValue {
    rank: u32,
    standard: bool,
    domain: u16,
    /// The name's length in characters, at most 32,767.
    chars: u64,
}

impl NameValue {
    fn pack(&self) -> u64 {
        self.rank as u64
            | (self.standard as u64) << 32
            | (self.domain as u64) << 33
            | self.chars.min(0x7fff) << 49
    }

    fn unpack(v: u64) -> NameValue {
        NameValue {
            rank: v as u32,
            standard: (v >> 32) & 1 == 1,
            domain: (v >> 33) as u16,
            chars: v >> 49,
        }
    }
}

/// A file of the index read where asked with positioned reads: the pages a search reads stay in
/// the page cache, not in the process's memory as mapped pages (and their neighbours) would.
struct Stored {
    file: std::fs::File,
    path: PathBuf,
    len: u64,
}

impl Stored {
    fn open(path: &Path) -> Result<Stored, RepoError> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        Ok(Stored {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    fn read(&self, at: u64, len: usize) -> Result<Vec<u8>, RepoError> {
        let mut buf = vec![0; len];
        #[cfg(unix)]
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut buf, at)
            .map_err(io(&self.path))?;
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < len {
                let n = std::os::windows::fs::FileExt::seek_read(
                    &self.file,
                    &mut buf[done..],
                    at + done as u64,
                )
                .map_err(io(&self.path))?;
                if n == 0 {
                    return Err(io(&self.path)(std::io::ErrorKind::UnexpectedEof.into()));
                }
                done += n;
            }
        }
        Ok(buf)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A lower-cased text's words: its maximal runs of letters and digits, and each other character
/// but white space on its own (so that a search for `-` or `%` has words to look up too).
fn words(lower: &str) -> impl Iterator<Item = &str> {
    search_words(lower).into_iter().map(|(w, _)| w)
}

/// Where a search's word must sit in a text's word: the text has a separator wherever the
/// search has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fit {
    Inside,
    /// A separator follows it in the search.
    Ends,
    /// A separator precedes it in the search.
    Starts,
    /// Separators on both sides.
    Whole,
}

/// A lower-cased search's words (as `words`) and how each must fit in a text's word: a
/// character other than a letter or digit is a word of its own, whole.
fn search_words(lower: &str) -> Vec<(&str, Fit)> {
    let mut out = Vec::new();
    let mut start = None;
    let ends = std::iter::once((lower.len(), ' '));
    for (i, c) in lower.char_indices().chain(ends) {
        let alnum = c.is_alphanumeric() && i < lower.len();
        match (start, alnum) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                let fit = match (s > 0, i < lower.len()) {
                    (true, true) => Fit::Whole,
                    (true, false) => Fit::Starts,
                    (false, true) => Fit::Ends,
                    (false, false) => Fit::Inside,
                };
                out.push((&lower[s..i], fit));
                start = None;
            }
            _ => {}
        }
        if !alnum && !c.is_whitespace() && i < lower.len() {
            out.push((&lower[i..i + c.len_utf8()], Fit::Whole));
        }
    }
    out
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
    cache.join("vocabulary").join(super::cache_name(repo_dir))
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
            let map = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
            // Searches read a few scattered records: no read-ahead around them.
            let _ = map.advise(memmap2::Advice::Random);
            Ok(map)
        };
        let fst_map = |name: &str| -> Result<Map<Mmap>, RepoError> {
            Map::new(map(name)?).map_err(|e| RepoError::Io {
                path: dir.join(name),
                message: e.to_string(),
            })
        };
        let index = VocabularyIndex {
            concepts: Stored::open(&dir.join("concepts.bin"))?,
            ids: map("ids.bin")?,
            synonyms: Stored::open(&dir.join("synonyms.bin"))?,
            strings: Stored::open(&dir.join("strings.bin"))?,
            postings: map("postings.bin")?,
            posting_starts: map("posting_starts.bin")?,
            names: fst_map("names.fst")?,
            codes: fst_map("codes.fst")?,
            suffixes: fst_map("suffixes.fst")?,
            meta,
        };
        let sizes_agree = index.concepts.len == index.meta.concepts as u64 * CONCEPT as u64
            && index.ids.len() == index.meta.concepts as usize * ID
            && index.synonyms.len == index.meta.synonyms as u64 * SYNONYM as u64
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

    fn text(&self, offset: u64, len: u32) -> Result<String, RepoError> {
        let bytes = self.strings.read(offset, len as usize)?;
        Ok(String::from_utf8(bytes).unwrap_or_default())
    }

    fn concept(&self, rank: u32) -> Result<ConceptAt, RepoError> {
        // With the next concept's first synonym, where this one's synonyms end.
        let last = rank + 1 == self.meta.concepts;
        let b = self.concepts.read(
            rank as u64 * CONCEPT as u64,
            if last { CONCEPT } else { CONCEPT + 48 },
        )?;
        let offset = u64_at(&b, 8);
        let (name_len, code_len) = (u32_at(&b, 16), u32_at(&b, 20));
        let flags = b[48];
        let end = if last {
            self.meta.synonyms
        } else {
            u32_at(&b, CONCEPT + 44)
        };
        let both = self.text(offset, name_len + code_len)?;
        let (name, code) = both.split_at((name_len as usize).min(both.len()));
        Ok(ConceptAt {
            id: u64_at(&b, 0) as i64,
            name: (flags & 2 == 0).then(|| name.to_string()),
            code: code.to_string(),
            descendants: u64_at(&b, 24),
            records: u64_at(&b, 32),
            domain: u16::from_le_bytes([b[40], b[41]]),
            vocabulary: u16::from_le_bytes([b[42], b[43]]),
            standard: flags & 1 == 1,
            synonyms: u32_at(&b, 44)..end,
        })
    }

    fn synonym(&self, at: u32) -> Result<String, RepoError> {
        let b = self.synonyms.read(at as u64 * SYNONYM as u64, SYNONYM)?;
        self.text(u64_at(&b, 8), u32_at(&b, 4))
    }

    fn synonym_rank(&self, at: u32) -> Result<u32, RepoError> {
        Ok(u32_at(
            &self.synonyms.read(at as u64 * SYNONYM as u64, 4)?,
            0,
        ))
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
    pub fn name_of(&self, id: i64) -> Result<Option<String>, RepoError> {
        match self.rank_of(id) {
            Some(rank) => Ok(self.concept(rank)?.name),
            None => Ok(None),
        }
    }

    /// Concept ids and names whose name starts with `prefix` (ignoring case), optionally of one
    /// domain, at most `limit`: standard concepts first, then shorter names, then by name and
    /// id (as `browse::concepts_starting`).
    pub fn starting(
        &self,
        prefix: &str,
        domain: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, RepoError> {
        let lower = prefix.to_lowercase();
        let domain = match domain {
            Some(d) => match self.meta.domains.iter().position(|x| x == d) {
                Some(at) => Some(at as u16),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        // Rank orders standard first, then by name and id; only the name's length comes first
        // within the standard concepts and the rest, so (standard, length, rank) is the order.
        // The key's value holds all three and the domain: no concept is read until the last.
        let mut found: Vec<(bool, u64, u32)> = Vec::new();
        let mut stream = self
            .names
            .search(Str::new(&lower).starts_with())
            .into_stream();
        while let Some((_, value)) = stream.next() {
            let name = NameValue::unpack(value);
            if domain.is_some_and(|d| d != name.domain) {
                continue;
            }
            found.push((!name.standard, name.chars, name.rank));
        }
        if found.len() > limit {
            found.select_nth_unstable(limit);
            found.truncate(limit);
        }
        found.sort_unstable();
        found
            .into_iter()
            .map(|(_, _, rank)| {
                let c = self.concept(rank)?;
                Ok((c.id, c.name.unwrap_or_default()))
            })
            .collect()
    }

    /// Concepts whose name or one of whose synonyms contains `text` (ignoring case), or whose
    /// code or id is `text`, at most `limit`, in rank order (as `browse::search_concepts`).
    pub fn search(&self, text: &str, limit: usize) -> Result<Vec<ConceptHit>, RepoError> {
        let lower = text.to_lowercase();
        let mut ranks = self.containing(&lower, limit)?;
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
        while let Some((key, rank)) = codes.next() {
            // The key is the code, a zero byte and a four-byte count of equal codes before it.
            if key.len() == code_key.len() + 4 {
                ranks.push(rank as u32);
            }
        }
        ranks.sort_unstable();
        ranks.dedup();
        ranks.truncate(limit);
        ranks.into_iter().map(|r| self.hit(r, &lower)).collect()
    }

    /// Whether a concept's name or one of its synonyms contains `lower`.
    fn contains(&self, rank: u32, lower: &str) -> Result<bool, RepoError> {
        let c = self.concept(rank)?;
        if c.name.is_some_and(|n| n.to_lowercase().contains(lower)) {
            return Ok(true);
        }
        for s in c.synonyms {
            if self.synonym(s)?.to_lowercase().contains(lower) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The first `limit` ranks (in order) of concepts whose name or a synonym contains `lower`.
    ///
    /// Every text that contains `lower` holds each of its words inside one of the text's own
    /// words, and more exactly where the search has a separator beside it: as a whole word,
    /// at a word's start or at its end. The search's word with the fewest texts gives the
    /// candidates, read in rank order (each word's texts are stored in rank order) and each
    /// tested for the whole search until `limit` are found. Where that word is in one text of
    /// ten or more, concepts are tested in rank order instead: enough match soon.
    fn containing(&self, lower: &str, limit: usize) -> Result<Vec<u32>, RepoError> {
        let fewest = search_words(lower)
            .into_iter()
            .map(|(w, fit)| {
                let words = self.words_fitting(w, fit);
                let texts: usize = words.iter().map(|&w| self.texts_of(w).len()).sum();
                (texts, words)
            })
            .min_by_key(|(texts, _)| *texts);
        let all_texts = self.meta.concepts as usize + self.meta.synonyms as usize;
        let words = match fewest {
            Some((texts, words)) if texts * 10 < all_texts => words,
            // Common words, or no letter or digit to look up (`-`, `%`).
            _ => {
                let mut found = Vec::new();
                for rank in 0..self.meta.concepts {
                    if found.len() == limit {
                        break;
                    }
                    if self.contains(rank, lower)? {
                        found.push(rank);
                    }
                }
                return Ok(found);
            }
        };
        // Each word's texts are two runs in rank order: names (text id = rank), then synonyms
        // (stored by rank). Merged lazily, smallest rank first.
        let names = self.meta.concepts;
        let mut runs: Vec<(usize, usize)> = Vec::with_capacity(words.len() * 2);
        for w in words {
            let texts = self.texts_of(w);
            let (mut lo, mut hi) = (texts.start, texts.end);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if u32_at(&self.postings, mid * 4) < names {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            runs.extend([(texts.start, lo), (lo, texts.end)]);
        }
        let rank_at = |at: usize| {
            let text = u32_at(&self.postings, at * 4);
            if text < names {
                Ok(text)
            } else {
                self.synonym_rank(text - names)
            }
        };
        let mut heap = std::collections::BinaryHeap::new();
        for (k, run) in runs.iter().enumerate().filter(|(_, r)| r.0 < r.1) {
            heap.push(std::cmp::Reverse((rank_at(run.0)?, k)));
        }
        let mut found: Vec<u32> = Vec::new();
        while let Some(std::cmp::Reverse((rank, k))) = heap.pop() {
            runs[k].0 += 1;
            if runs[k].0 < runs[k].1 {
                heap.push(std::cmp::Reverse((rank_at(runs[k].0)?, k)));
            }
            if found.last() == Some(&rank) {
                continue;
            }
            if self.contains(rank, lower)? {
                found.push(rank);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The positions in `postings.bin` of the texts a word occurs in.
    fn texts_of(&self, word: u32) -> std::ops::Range<usize> {
        let start = u64_at(&self.posting_starts, word as usize * 8) as usize;
        let end = u64_at(&self.posting_starts, (word as usize + 1) * 8) as usize;
        start..end
    }

    /// The texts' words in which a search's word fits as `fit` says.
    fn words_fitting(&self, w: &str, fit: Fit) -> Vec<u32> {
        let prefix = match fit {
            Fit::Inside | Fit::Starts => w.to_string(),
            Fit::Ends | Fit::Whole => format!("{w}\0"),
        };
        let mut found = Vec::new();
        let mut stream = self
            .suffixes
            .search(Str::new(&prefix).starts_with())
            .into_stream();
        while let Some((key, value)) = stream.next() {
            // Keys are a suffix, a zero byte and a count; the value the word and whether the
            // suffix is all of it.
            let exact = key.len() == prefix.len() + 4;
            let whole = value >> 32 == 1;
            let fits = match fit {
                Fit::Inside => true,
                Fit::Starts => whole,
                Fit::Ends => exact,
                Fit::Whole => exact && whole,
            };
            if fits {
                found.push(value as u32);
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    fn hit(&self, rank: u32, lower: &str) -> Result<ConceptHit, RepoError> {
        let c = self.concept(rank)?;
        let name = c.name.unwrap_or_default();
        let mut synonym = None;
        if !name.to_lowercase().contains(lower) {
            for s in c.synonyms {
                let text = self.synonym(s)?;
                if text.to_lowercase().contains(lower) {
                    synonym = Some(text);
                    break;
                }
            }
        }
        Ok(ConceptHit {
            id: c.id,
            name,
            domain: self.meta.domains[c.domain as usize].clone(),
            vocabulary: self.meta.vocabularies[c.vocabulary as usize].clone(),
            code: c.code,
            standard: c.standard,
            synonym,
            descendants: c.descendants,
            records: c.records,
        })
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

/// Keys with values in one buffer, sorted and written as an fst map: millions of keys without
/// an allocation each. Keys need not be unique (names and codes repeat): each is written with a
/// zero byte and a four-byte count of the equal keys before it, which keeps them unique while
/// letting equal endings share the automaton's states.
#[derive(Default)]
struct Keys {
    bytes: Vec<u8>,
    /// Start, length and value of each key.
    spans: Vec<(usize, u32, u64)>,
}

impl Keys {
    fn push(&mut self, key: &[u8], value: u64) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.spans.push((start, key.len() as u32, value));
    }

    fn write(mut self, path: &Path) -> Result<(), RepoError> {
        let failed = |e: fst::Error| RepoError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let bytes = &self.bytes;
        let key = |&(s, l, _): &(usize, u32, u64)| &bytes[s..s + l as usize];
        self.spans
            .sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.2.cmp(&b.2)));
        let out = BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
        let mut map = MapBuilder::new(out).map_err(failed)?;
        let mut full = Vec::new();
        let mut count = 0u32;
        for (k, span) in self.spans.iter().enumerate() {
            count = if k > 0 && key(&self.spans[k - 1]) == key(span) {
                count + 1
            } else {
                0
            };
            full.clear();
            full.extend_from_slice(key(span));
            full.push(0);
            full.extend_from_slice(&count.to_be_bytes());
            map.insert(&full, span.2).map_err(failed)?;
        }
        map.finish().map_err(failed)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let mut f = BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    f.write_all(bytes).map_err(io(path))?;
    f.flush().map_err(io(path))
}

/// The length in characters of a name as stored (completion orders by the name's length, as
/// `character_length` counts it).
fn lower_chars(name: &[u8]) -> u64 {
    String::from_utf8_lossy(name).chars().count() as u64
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
        if !c.null_name {
            let lower = String::from_utf8_lossy(name_of(c)).to_lowercase();
            let value = NameValue {
                rank: rank as u32,
                standard: c.standard,
                domain: c.domain,
                chars: lower_chars(name_of(c)),
            };
            names.push(lower.as_bytes(), value.pack());
        }
        let code = &strings[(c.offset + c.name_len as u64) as usize..][..c.code_len as usize];
        let lower = String::from_utf8_lossy(code).to_lowercase();
        codes.push(lower.as_bytes(), rank as u64);
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
        for (at, _) in w.char_indices() {
            // Whether the suffix is the whole word: the word starts with what it starts with.
            let whole = u8::from(at == 0);
            suffixes.push(&w.as_bytes()[at..], id as u64 | (whole as u64) << 32);
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
