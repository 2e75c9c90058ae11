//! The site's configuration, `cohortql.toml`: the disclosure policy the site sets (studies may
//! only tighten it), whether a person-level dataset may be exported, and the secret that keys
//! person pseudonyms. It stays at the site, readable by its owner only.

use crate::disclosure::{Export, Policy, PRESETS};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file a site's configuration is looked for in when neither `--site` nor `COHORTQL_SITE`
/// names one: in the working directory.
pub const DEFAULT_FILE: &str = "cohortql.toml";

/// The environment variable naming the site's configuration file.
pub const ENV: &str = "COHORTQL_SITE";

/// A site's configuration, read from its file.
#[derive(Clone)]
pub struct Site {
    pub path: PathBuf,
    pub policy: Policy,
    pub dataset_export: Export,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Site {
    // Never the secret, even in a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .field("dataset_export", &self.dataset_export)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    policy: String,
    #[serde(default)]
    dataset_export: Option<String>,
    secret: String,
}

/// The configuration file to use: `--site`, else `COHORTQL_SITE`, else `cohortql.toml` in the
/// working directory.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    match std::env::var_os(ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_FILE),
    }
}

impl Site {
    /// Reads the configuration at `path`; `Ok(None)` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Site>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot read the site configuration {}: {e}",
                    path.display()
                ))
            }
        };
        check_private(path)?;
        let bad = |why: String| format!("the site configuration {} {why}", path.display());
        let file: SiteFile = toml::from_str(&text).map_err(|e| {
            bad(format!(
                "is not valid: {}",
                e.to_string().trim_end().replace('\n', "\n  ")
            ))
        })?;
        let policy = Policy::preset(&file.policy).ok_or_else(|| {
            bad(format!(
                "names the policy `{}`: the policies are {}",
                file.policy,
                PRESETS.join(", ")
            ))
        })?;
        let dataset_export = match file.dataset_export.as_deref() {
            None => Export::Never,
            Some(name) => Export::parse(name).ok_or_else(|| {
                bad(format!(
                    "says dataset_export = \"{name}\": it is one of {}",
                    Export::NAMES.join(", ")
                ))
            })?,
        };
        let secret = from_hex(&file.secret)
            .filter(|s| s.len() >= 16)
            .ok_or_else(|| {
                bad("has a secret that is not at least 32 hexadecimal digits: make a new configuration with `cohortql site init`".to_string())
            })?;
        Ok(Some(Site {
            path: path.to_path_buf(),
            policy,
            dataset_export,
            secret,
        }))
    }

    /// Writes a new configuration with a fresh random secret, readable by its owner only.
    /// Refuses to replace one: its secret keys pseudonyms already given out.
    pub fn create(path: &Path, preset: &str, dataset_export: Export) -> Result<Site, String> {
        let policy = Policy::preset(preset).ok_or_else(|| {
            format!(
                "there is no disclosure policy `{preset}`: the policies are {}",
                PRESETS.join(", ")
            )
        })?;
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| format!("cannot draw a random secret: {e}"))?;
        let text = format!(
            "# cohortql's site configuration. It stays at this site, readable by its owner only:\n\
             # `secret` keys the pseudonyms of persons in person-level outputs, and whoever holds\n\
             # it can link them back to person ids. Do not copy it into a study or an output.\n\
             #\n\
             # policy: {} (a study may make it stricter, never looser)\n\
             policy = \"{}\"\n\
             # dataset_export: {} (what `run --export-dataset` may write)\n\
             dataset_export = \"{}\"\n\
             secret = \"{}\"\n",
            PRESETS.join(" | "),
            policy.preset,
            Export::NAMES.join(" | "),
            dataset_export.name(),
            hex(&secret)
        );
        write_new_private(path, &text)?;
        Ok(Site {
            path: path.to_path_buf(),
            policy,
            dataset_export,
            secret,
        })
    }

    /// The configuration at `path`, made with the default policy when there is none yet; the
    /// flag says whether it was made now.
    pub fn load_or_create(path: &Path) -> Result<(Site, bool), String> {
        if let Some(site) = Site::load(path)? {
            return Ok((site, false));
        }
        match Site::create(path, crate::disclosure::DEFAULT_PRESET, Export::Never) {
            Ok(site) => Ok((site, true)),
            // Made by another run at the same moment: use that one.
            Err(_) if path.exists() => Site::load(path)?
                .map(|s| (s, false))
                .ok_or_else(|| format!("cannot read the site configuration {}", path.display())),
            Err(e) => Err(e),
        }
    }

    /// A person's pseudonym in one study's person-level outputs: the first 16 hexadecimal
    /// digits of HMAC-SHA-256 keyed by the site's secret over the study hash and the person id.
    /// Without the secret the mapping can be neither reproduced nor reversed; with it, the
    /// site can do both.
    pub fn pseudonym(&self, study_hash: &str, person: i64) -> String {
        format!("{:016x}", self.pseudonyms(study_hash).number(person))
    }

    /// The pseudonyms of one study, keyed once for the many persons of a dataset.
    pub fn pseudonyms(&self, study_hash: &str) -> Pseudonyms {
        let mut keyed =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("any key length");
        keyed.update(study_hash.as_bytes());
        keyed.update(b":");
        Pseudonyms { keyed }
    }
}

/// A study's pseudonyms (`Site::pseudonym`): the MAC keyed with the secret and fed the study
/// hash, cloned for each person.
pub struct Pseudonyms {
    keyed: hmac::Hmac<sha2::Sha256>,
}

impl Pseudonyms {
    /// A person's pseudonym as the number its 16 hexadecimal digits write: numbers sort as
    /// the digits do.
    pub fn number(&self, person: i64) -> u64 {
        let mut mac = self.keyed.clone();
        mac.update(person.to_string().as_bytes());
        let bytes = mac.finalize().into_bytes();
        u64::from_be_bytes(bytes[..8].try_into().expect("a MAC is longer than 8 bytes"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Refuses a configuration others can read: its secret keys the pseudonyms.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the site configuration {} can be read by others (mode {:o}): it holds the pseudonym secret; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), String> {
    Ok(())
}

/// Writes `text` to `path` only if nothing is there, with mode 0600 from the start: written to
/// a private temporary file, then linked into place (which fails if the file appeared since).
fn write_new_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| fail(&e))?;
    }
    // Unique to this call: two threads of one process may make the file at the same moment.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = crate::repo::write::hidden_sibling(path, &format!("new{call}"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(format!(
            "{} exists already: a site keeps its secret, since pseudonyms given out depend on it",
            path.display()
        )),
        Err(e) => Err(fail(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2: key "Jefe".
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pseudonyms_depend_on_secret_study_and_person() {
        let dir = tempfile_dir();
        let a = Site::create(&dir.join("a.toml"), "ohdsi", Export::Never).unwrap();
        let b = Site::create(&dir.join("b.toml"), "ohdsi", Export::Never).unwrap();
        let again = Site::load(&dir.join("a.toml")).unwrap().unwrap();
        assert_eq!(a.pseudonym("h1", 7), again.pseudonym("h1", 7));
        assert_ne!(a.pseudonym("h1", 7), b.pseudonym("h1", 7));
        assert_ne!(a.pseudonym("h1", 7), a.pseudonym("h2", 7));
        assert_ne!(a.pseudonym("h1", 7), a.pseudonym("h1", 8));
        assert_eq!(a.pseudonym("h1", 7).len(), 16);
        assert!(Site::create(&dir.join("a.toml"), "ohdsi", Export::Never).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cohortql-site-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
