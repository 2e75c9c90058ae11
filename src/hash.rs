//! The study hash: sha256 of the checked model, so layout and comments never change it and any
//! change of meaning does; and digests written as hex digits.

use crate::study::Study;
use sha2::{Digest, Sha256};

/// Bumped whenever the model's serialised form changes meaning, so old hashes never collide.
const FORM: &str = "cohortql-study-model-1\n";

/// The hash of a study, as 64 lower-case hex digits.
pub fn study_hash(study: &Study) -> String {
    let json = serde_json::to_string(study).expect("a study model always serialises");
    let mut hasher = Sha256::new();
    hasher.update(FORM.as_bytes());
    hasher.update(json.as_bytes());
    hex(&hasher.finalize())
}

/// Bytes as lower-case hex digits, two per byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
