//! The built-in demo repository: a fixed-seed synthetic repository generated once into a cache
//! directory, so commands that read data work on a fresh machine with no data at all.

use crate::repo::write::OutputFormat;
use crate::synth::{generate, SynthOptions};
use std::path::PathBuf;

/// The demo's size and seed. Changing either, or the generator, means a new cache directory.
pub const DEMO_PERSONS: u64 = 5_000;
pub const DEMO_SEED: u64 = 20_240_101;
const DEMO_VERSION: u32 = 1;

/// Where cohortql keeps what it caches: `$COHORTQL_CACHE_DIR`, else `$XDG_CACHE_HOME/cohortql`,
/// else `~/.cache/cohortql`, else a `cohortql` folder in the system's temporary directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COHORTQL_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("cohortql");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("cohortql");
    }
    std::env::temp_dir().join("cohortql")
}

/// The demo repository's directory (it may not exist yet).
pub fn demo_dir() -> PathBuf {
    cache_dir().join(format!(
        "demo-v{DEMO_VERSION}-{DEMO_PERSONS}-persons-seed-{DEMO_SEED}"
    ))
}

/// The demo repository, generated first if it is not in the cache. Generation is atomic, so an
/// interrupted first run leaves no half-made demo behind.
pub fn ensure_demo(progress: &dyn Fn(u64)) -> Result<PathBuf, String> {
    let dir = demo_dir();
    if dir.join("person.parquet").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache_dir()).map_err(|e| {
        format!(
            "cannot create the cache directory {}: {e}",
            cache_dir().display()
        )
    })?;
    let options = SynthOptions {
        persons: DEMO_PERSONS,
        seed: DEMO_SEED,
        format: OutputFormat::Parquet,
        full_vocabulary: 0,
    };
    match generate(&options, &dir, progress) {
        Ok(_) => Ok(dir),
        // Another process may have made it meanwhile.
        Err(_) if dir.join("person.parquet").is_file() => Ok(dir),
        Err(e) => Err(e.to_string()),
    }
}
