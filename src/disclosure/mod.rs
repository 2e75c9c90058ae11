//! Disclosure control: the named policies a site sets and a study may only tighten, what each
//! does to a count, and (in `control`) the suppression and rounding of every count a run
//! releases, with the checker that proves no small count can be derived from them.

pub mod control;

/// How a withheld count is shown, on a screen or in a report: one mark for every withheld
/// count, since telling a small count from one withheld to protect it would say which are small.
pub const WITHHELD: &str = "—";

use crate::study::OutputPolicy;
use serde::Serialize;

/// The presets a site may name, in order of strictness.
pub const PRESETS: [&str; 3] = ["ohdsi", "opensafely", "strict"];

/// The policy a site asks for when it names none.
pub const DEFAULT_PRESET: &str = "ohdsi";

/// What a site allows of a person-level dataset leaving it (`run --export-dataset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// No person-level dataset leaves the site.
    Never,
    /// Days relative to index and the year of index, never calendar dates.
    RelativeDates,
    /// Calendar dates too, for studies that ask with `exported dates exact`.
    ExactDates,
}

impl Export {
    pub const NAMES: [&str; 3] = ["never", "relative-dates", "exact-dates"];

    pub fn name(self) -> &'static str {
        match self {
            Export::Never => "never",
            Export::RelativeDates => "relative-dates",
            Export::ExactDates => "exact-dates",
        }
    }

    pub fn parse(name: &str) -> Option<Export> {
        match name {
            "never" => Some(Export::Never),
            "relative-dates" => Some(Export::RelativeDates),
            "exact-dates" => Some(Export::ExactDates),
            _ => None,
        }
    }
}

/// The rules a run is under: the site's policy, where it was set, and what person-level export
/// the site allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRules {
    pub policy: Policy,
    /// Where the policy was set, in words (`the site configuration cohortql.toml`).
    pub source: String,
    pub dataset_export: Export,
}

impl Default for SiteRules {
    fn default() -> Self {
        SiteRules {
            policy: Policy::default(),
            source: "the default policy (no site configuration was found)".to_string(),
            dataset_export: Export::Never,
        }
    }
}

/// What may leave a site: which counts are withheld and how the others are rounded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The preset it starts from (`ohdsi`, `opensafely`, `strict`).
    pub preset: String,
    /// Counts from 1 to `threshold - 1` are withheld; 0 is shown.
    pub threshold: u64,
    /// Every count released is rounded to the nearest multiple of this (halves up); 1 rounds
    /// nothing.
    pub rounding: u64,
    /// Where a stricter threshold or rounding than the site's came from, for the record.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tightened_by: Vec<String>,
}

/// Why a study's output section cannot run under a site's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Looser {
    /// What the study asked for, in its own words.
    pub asked: String,
    /// Where in the study text it asked (byte offsets).
    pub span: Option<crate::syntax::ast::Span>,
    /// The site's floor, in words.
    pub floor: String,
}

impl Policy {
    /// A named preset, or `None` for a name that is none of `PRESETS`.
    pub fn preset(name: &str) -> Option<Policy> {
        let (threshold, rounding) = match name.to_ascii_lowercase().as_str() {
            // OHDSI's minCellCount: 1 to 4 shown as `<5`; exact counts otherwise.
            "ohdsi" => (5, 1),
            // OpenSAFELY's output checking: redact 7 or fewer, round every count to 5.
            "opensafely" => (8, 5),
            "strict" => (10, 10),
            _ => return None,
        };
        Some(Policy {
            preset: name.to_ascii_lowercase(),
            threshold,
            rounding,
            tightened_by: Vec::new(),
        })
    }

    /// Whether every count this policy releases would also be released, at least as coarsely,
    /// by `other`'s rules: a threshold at least as high and a rounding that is a multiple of
    /// the other's.
    pub fn at_least_as_strict_as(&self, other: &Policy) -> bool {
        self.threshold >= other.threshold && self.rounding.is_multiple_of(other.rounding)
    }

    /// This (the site's) policy with a study's requests applied: a study may name a stricter
    /// preset or a higher minimum cell count, never a looser one.
    pub fn for_study(&self, study: &OutputPolicy) -> Result<Policy, Looser> {
        let mut policy = self.clone();
        if let Some(name) = &study.disclosure {
            let asked = Policy::preset(name).expect("the checker accepts only presets");
            if !asked.at_least_as_strict_as(self) {
                return Err(Looser {
                    asked: format!("disclosure policy {name}"),
                    span: study.spans.disclosure,
                    floor: self.describe(),
                });
            }
            policy.threshold = asked.threshold;
            policy.rounding = asked.rounding;
            policy.preset = asked.preset;
            policy.tightened_by.push(format!(
                "the study's `disclosure policy {name}` (the site's is {})",
                self.preset
            ));
        }
        if let Some(span) = study.spans.min_cell_count {
            let asked = study.min_cell_count;
            if asked < self.threshold {
                return Err(Looser {
                    asked: format!("min cell count {asked}"),
                    span: Some(span),
                    floor: self.describe(),
                });
            }
            if asked > policy.threshold {
                policy.threshold = asked;
                policy
                    .tightened_by
                    .push(format!("the study's `min cell count {asked}`"));
            }
        }
        Ok(policy)
    }

    /// A count rounded as this policy rounds: to the nearest multiple of `rounding`, halves up.
    pub fn rounded(&self, count: u64) -> u64 {
        if self.rounding <= 1 {
            count
        } else {
            (count + self.rounding / 2) / self.rounding * self.rounding
        }
    }

    /// A count as it may leave the site on its own: `None` when it is withheld (from 1 to
    /// `threshold - 1`), else rounded.
    pub fn released(&self, count: u64) -> Option<u64> {
        (count == 0 || count >= self.threshold).then(|| self.rounded(count))
    }

    /// A count as the screen shows it: rounded, or `<5` (the threshold) when withheld.
    pub fn shown(&self, count: u64) -> String {
        self.released(count)
            .map_or_else(|| format!("<{}", self.threshold), |n| n.to_string())
    }

    /// The smallest count other than 0 this policy releases: the threshold, rounded.
    pub fn smallest_released(&self) -> u64 {
        self.rounded(self.threshold)
    }

    /// The multiple an interactive session rounds its live counts to: the policy's rounding,
    /// or, where it rounds nothing, its threshold, so that two successive counts never differ by
    /// fewer persons than the threshold.
    pub fn live_rounding(&self) -> u64 {
        if self.rounding > 1 {
            self.rounding
        } else {
            self.threshold
        }
    }

    /// A count as an interactive session shows it: withheld as on any channel, and rounded to
    /// `live_rounding`.
    pub fn shown_live(&self, count: u64) -> String {
        let live = Policy {
            rounding: self.live_rounding(),
            ..self.clone()
        };
        live.shown(count)
    }

    /// The policy's rules in one sentence, exactly.
    pub fn describe(&self) -> String {
        let rounding = if self.rounding > 1 {
            format!(
                "every other count is rounded to the nearest multiple of {} (halves up)",
                self.rounding
            )
        } else {
            "other counts are exact".to_string()
        };
        format!(
            "policy {}: counts from 1 to {} are withheld (0 is shown), {rounding}",
            self.preset,
            self.threshold - 1
        )
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::preset(DEFAULT_PRESET).expect("a preset")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_say_what_they_do() {
        let ohdsi = Policy::preset("ohdsi").unwrap();
        assert_eq!(
            (1..=6).map(|c| ohdsi.shown(c)).collect::<Vec<_>>(),
            ["<5", "<5", "<5", "<5", "5", "6"]
        );
        assert_eq!(ohdsi.shown(0), "0");
        let os = Policy::preset("opensafely").unwrap();
        assert_eq!(
            [0, 7, 8, 12, 13, 1226].map(|c| os.shown(c)),
            ["0", "<8", "10", "10", "15", "1225"]
        );
        let strict = Policy::preset("strict").unwrap();
        assert_eq!(
            [9, 10, 14, 15].map(|c| strict.shown(c)),
            ["<10", "10", "10", "20"]
        );
        assert!(os.at_least_as_strict_as(&ohdsi));
        assert!(strict.at_least_as_strict_as(&os));
        assert!(!ohdsi.at_least_as_strict_as(&os));
        assert_eq!(ohdsi.live_rounding(), 5);
        assert_eq!(ohdsi.shown_live(1227), "1225");
    }
}
