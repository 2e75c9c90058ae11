//! Filler concepts that grow the synthetic vocabulary to the size of a full OHDSI vocabulary
//! (`synth --full-vocabulary N`): names of several words from a large lexicon, codes, domains
//! and vocabularies in realistic proportions, synonyms for most concepts and a hierarchy five
//! levels deep, so that searching and completing concepts is measured at the size sites load.
//! No person has a record of a filler concept; the study concepts are unchanged.

use super::Out;
use crate::repo::write::{Cell, WriteError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The first filler id: above the well-known OMOP ids the generator uses, below the
/// 2,000,000,000 of its local concepts.
pub const FIRST_ID: i64 = 1_000_000_000;
/// Distinct words names are made of (a full vocabulary has some hundreds of thousands).
const LEXICON: usize = 300_000;
/// Each filler concept's ancestors: itself and up to this many levels of parents.
const LEVELS: i64 = 5;

const SYLLABLES: [&str; 48] = [
    "al", "an", "ar", "ba", "be", "car", "ce", "chlo", "ci", "co", "cor", "da", "de", "di", "do",
    "en", "er", "fa", "fi", "ga", "gen", "hy", "in", "is", "ka", "la", "le", "li", "lo", "ma",
    "me", "mi", "mo", "na", "ne", "ni", "no", "ol", "or", "pa", "pe", "phe", "ra", "re", "ri",
    "ro", "sa", "te",
];
/// Words most names share, as "of", "tablet" and "disorder" are in OHDSI's.
const COMMON: [&str; 24] = [
    "of",
    "and",
    "with",
    "disorder",
    "oral",
    "tablet",
    "injection",
    "left",
    "right",
    "chronic",
    "acute",
    "finding",
    "procedure",
    "measurement",
    "serum",
    "mg",
    "ml",
    "structure",
    "primary",
    "secondary",
    "malignant",
    "neoplasm",
    "imaging",
    "carcinoma",
];
/// (domain, concept class, vocabulary, share of concepts in hundredths).
const KINDS: [(&str, &str, &str, u32); 9] = [
    ("Drug", "Clinical Drug", "RxNorm Extension", 40),
    ("Drug", "Branded Drug", "RxNorm", 8),
    ("Condition", "Clinical Finding", "SNOMED", 12),
    ("Condition", "ICD10CM code", "ICD10CM", 6),
    ("Procedure", "Procedure", "SNOMED", 8),
    ("Procedure", "CPT4", "CPT4", 4),
    ("Measurement", "Lab Test", "LOINC", 10),
    ("Observation", "Observable Entity", "SNOMED", 8),
    ("Device", "Device", "NDC", 4),
];

/// A word of the lexicon, made of two to four syllables chosen from its number.
fn word(k: usize, out: &mut String) {
    let mut x = (k as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x2545_F491);
    let syllables = 2 + (x % 3) as usize;
    for _ in 0..syllables {
        x = x.rotate_left(17) ^ (x >> 7);
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        out.push_str(SYLLABLES[(x % SYLLABLES.len() as u64) as usize]);
    }
    // Numbers keep words of the same syllables apart: a lexicon of distinct words.
    out.push_str(&(k % 97).to_string());
}

/// A name of two to six words: most from the lexicon, some common.
fn name(rng: &mut ChaCha8Rng) -> String {
    let mut s = String::new();
    for w in 0..rng.random_range(2..=6) {
        if w > 0 {
            s.push(' ');
        }
        if rng.random_bool(0.3) {
            s.push_str(COMMON[rng.random_range(0..COMMON.len())]);
        } else {
            word(rng.random_range(0..LEXICON), &mut s);
        }
    }
    if rng.random_bool(0.3) {
        s.push_str(&format!(" {} MG", rng.random_range(1..1000)));
    }
    // Capitalised as OHDSI's names are.
    let mut chars = s.chars();
    chars
        .next()
        .map_or(s.clone(), |c| c.to_uppercase().chain(chars).collect())
}

/// Writes `count` filler concepts, their synonyms and their ancestors.
pub(super) fn write(
    count: u64,
    seed: u64,
    dates: (i32, i32),
    concept: &mut Out,
    synonym: &mut Out,
    ancestor: &mut Out,
) -> Result<(), WriteError> {
    use Cell::{Date, Int, Null, Str, Text};
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x766f_6361_6275_6c61);
    for i in 0..count as i64 {
        let id = FIRST_ID + i;
        let mut share = rng.random_range(0..100u32);
        let &(domain, class, vocabulary, _) = KINDS
            .iter()
            .find(|k| {
                let here = share < k.3;
                share = share.saturating_sub(k.3);
                here
            })
            .unwrap_or(&KINDS[0]);
        // Source vocabularies' concepts are never standard; of the others, most are.
        let source = matches!(vocabulary, "ICD10CM" | "NDC");
        let standard = match rng.random_range(0..100) {
            _ if source => Null,
            0..70 => Str("S"),
            70..75 => Str("C"),
            _ => Null,
        };
        let name = name(&mut rng);
        concept.push(&[
            Int(id),
            Text(name.clone()),
            Str(domain),
            Str(vocabulary),
            Str(class),
            standard,
            Text(format!("F{i:08}")),
            Date(dates.0),
            Date(dates.1),
        ])?;
        if rng.random_bool(0.6) {
            let mut words: Vec<&str> = name.split(' ').collect();
            words.rotate_left(1);
            synonym.push(&[Int(id), Text(words.join(" ")), Int(4180186)])?;
        }
        // Parents form a tree of four children each: i's parent is (i - 1) / 4.
        let mut up = i;
        for level in 0..=LEVELS {
            ancestor.push(&[Int(FIRST_ID + up), Int(id), Int(level), Int(level)])?;
            if up == 0 {
                break;
            }
            up = (up - 1) / 4;
        }
    }
    Ok(())
}
