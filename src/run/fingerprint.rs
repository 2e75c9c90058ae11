//! The data fingerprint of a repository directory: sha256 over its table files' names and
//! bytes, the data snapshot a run read. Hashing gigabytes on every run of the same snapshot
//! would cost a core for seconds beside the query, so a fingerprint is remembered in the cache
//! directory with the identity of every file it covers (device, inode, size, modification and
//! change times) and reused while all of them are unchanged. Any write to a file, or a
//! replaced file, changes its change time or inode, which no one but the system sets back: the
//! data is hashed again.

use crate::hash::hex;
use crate::repo::files::TableFile;
use crate::repo::write::hidden_sibling;
use crate::repo::Repository;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The layout of a remembered fingerprint; another layout is another file.
const FORMAT: u32 = 1;

/// A file changed this recently may still be being written within the resolution of its
/// times: its fingerprint is computed but not remembered.
const SETTLED: Duration = Duration::from_secs(2);

/// The repository's fingerprint, remembered in `demo::cache_dir()` (see the module doc).
pub fn data_fingerprint(repo: &Repository) -> Result<String, String> {
    data_fingerprint_with(repo, Some(&crate::demo::cache_dir()))
}

/// The fingerprint, remembered under `cache` when given. A cache that cannot be read or
/// written only means hashing the data.
pub fn data_fingerprint_with(repo: &Repository, cache: Option<&Path>) -> Result<String, String> {
    let files = in_table_order(repo);
    let remembered = cache.map(|c| remembered_at(c, &repo.dir));
    let before = identity(&files);
    if let (Some(at), Some(key)) = (&remembered, &before) {
        if let Some(known) = recall(at, key) {
            return Ok(known);
        }
    }
    let fingerprint = hash_files(&files)?;
    // Remembered only when no file changed while it was read, nor just before.
    if let (Some(at), Some(key)) = (&remembered, &before) {
        if identity(&files).as_ref() == Some(key) {
            remember(at, key, &fingerprint);
        }
    }
    Ok(fingerprint)
}

/// sha256 over the files of the repository's tables (names and contents), in table order.
fn hash_files(files: &[&TableFile]) -> Result<String, String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        hasher.update(f.table.name.as_bytes());
        hasher.update([0]);
        let mut file = std::fs::File::open(&f.path)
            .map_err(|e| format!("cannot read {}: {e}", f.path.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", f.path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn in_table_order(repo: &Repository) -> Vec<&TableFile> {
    let mut files: Vec<&TableFile> = repo.files.iter().collect();
    files.sort_by_key(|f| f.table.name);
    files
}

/// Where the fingerprint of the repository in `dir` is remembered: one file per directory,
/// replaced when its data changes.
fn remembered_at(cache: &Path, dir: &Path) -> PathBuf {
    cache
        .join("fingerprints")
        .join(crate::repo::cache_name(dir))
}

/// sha256 over the identity of every file (see the module doc), or `None` when one cannot be
/// read or has changed within `SETTLED`: then nothing is remembered or recalled.
#[cfg(unix)]
fn identity(files: &[&TableFile]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let now = SystemTime::now();
    let mut h = Sha256::new();
    h.update(FORMAT.to_le_bytes());
    for f in files {
        let meta = std::fs::metadata(&f.path).ok()?;
        let path = std::fs::canonicalize(&f.path).ok()?;
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.ctime()).ok()?,
                u32::try_from(meta.ctime_nsec()).ok()?,
            );
        let modified = meta.modified().ok()?;
        for t in [changed, modified] {
            if now.duration_since(t).map_or(true, |age| age < SETTLED) {
                return None;
            }
        }
        h.update(f.table.name.as_bytes());
        h.update([0]);
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        for n in [meta.dev(), meta.ino(), meta.len()] {
            h.update(n.to_le_bytes());
        }
        for n in [
            meta.ctime(),
            meta.ctime_nsec(),
            meta.mtime(),
            meta.mtime_nsec(),
        ] {
            h.update(n.to_le_bytes());
        }
    }
    Some(hex(&h.finalize()))
}

/// Without change times and inodes, nothing is remembered: the data is hashed every time.
#[cfg(not(unix))]
fn identity(_: &[&TableFile]) -> Option<String> {
    None
}

/// The remembered fingerprint if it was remembered for exactly these files as they are now.
fn recall(at: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(at).ok()?;
    let (known_key, fingerprint) = text.trim_end().split_once(' ')?;
    let well_formed = fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
    (known_key == key && well_formed).then(|| fingerprint.to_string())
}

/// Written beside and renamed into place, so a reader finds the old line or the new one. A
/// cache that cannot be written costs the next run a hash, nothing else.
fn remember(at: &Path, key: &str, fingerprint: &str) {
    let Some(parent) = at.parent() else { return };
    let new = hidden_sibling(at, "new");
    let written = std::fs::create_dir_all(parent)
        .and_then(|()| std::fs::write(&new, format!("{key} {fingerprint}\n")))
        .and_then(|()| std::fs::rename(&new, at));
    if written.is_err() {
        let _ = std::fs::remove_file(&new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Two of Eunomia's tables, copied: files the test may change.
    fn repo_with_person(dir: &Path) -> Repository {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/eunomia-gibleed");
        fs::create_dir_all(dir).unwrap();
        for t in ["person", "observation_period"] {
            let name = format!("{t}.csv.gz");
            fs::copy(src.join(&name), dir.join(&name)).unwrap();
        }
        let (files, _) = crate::repo::files::discover(dir).expect("discover");
        Repository {
            dir: dir.to_path_buf(),
            files,
        }
    }

    fn age(path: &Path, by: Duration) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn a_remembered_fingerprint_is_the_hash_of_the_data_and_is_reused_while_the_files_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let repo = repo_with_person(&tmp.path().join("repo"));
        let fresh = hash_files(&in_table_order(&repo)).unwrap();
        // Files written just now are not remembered: their times may not have settled.
        assert_eq!(data_fingerprint_with(&repo, Some(&cache)).unwrap(), fresh);
        assert!(!remembered_at(&cache, &repo.dir).exists());
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        assert_eq!(data_fingerprint_with(&repo, Some(&cache)).unwrap(), fresh);
        let at = remembered_at(&cache, &repo.dir);
        let line = fs::read_to_string(&at).unwrap();
        assert!(line.trim_end().ends_with(&fresh), "{line}");
        // Recalled, not hashed again: a line naming another fingerprint for the same files is
        // what the next run reports (which is why only cohortql writes the cache).
        let key = line.split_once(' ').unwrap().0;
        let other = "0".repeat(64);
        fs::write(&at, format!("{key} {other}\n")).unwrap();
        assert_eq!(data_fingerprint_with(&repo, Some(&cache)).unwrap(), other);
        // A malformed line is not trusted.
        fs::write(&at, format!("{key} not-a-hash\n")).unwrap();
        assert_eq!(data_fingerprint_with(&repo, Some(&cache)).unwrap(), fresh);
    }

    #[test]
    fn data_rewritten_with_its_size_and_modification_time_kept_is_hashed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let repo = repo_with_person(&tmp.path().join("repo"));
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        let before = data_fingerprint_with(&repo, Some(&cache)).unwrap();
        assert!(remembered_at(&cache, &repo.dir).exists());
        // The attack a cache keyed by size and modification time would miss: one byte of the
        // data changed, the length kept and the modification time set back as it was.
        let path = repo.dir.join("person.csv.gz");
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), modified);
        // Settled, so that the files' identity is taken, not skipped as too recent.
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        let after = data_fingerprint_with(&repo, Some(&cache)).unwrap();
        assert_ne!(after, before);
        assert_eq!(after, hash_files(&in_table_order(&repo)).unwrap());
    }

    #[test]
    fn without_a_cache_or_with_one_that_cannot_be_written_the_data_is_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo_with_person(&tmp.path().join("repo"));
        for f in &repo.files {
            age(&f.path, Duration::from_secs(60));
        }
        let fresh = hash_files(&in_table_order(&repo)).unwrap();
        assert_eq!(data_fingerprint_with(&repo, None).unwrap(), fresh);
        // A cache path that is a file, not a directory: nothing can be written under it.
        let blocked = tmp.path().join("blocked");
        fs::write(&blocked, "").unwrap();
        assert_eq!(data_fingerprint_with(&repo, Some(&blocked)).unwrap(), fresh);
    }
}
