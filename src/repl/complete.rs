//! Completion and hints for the REPL, driven by the grammar: the line so far is placed in a
//! study of its own, in its section, and the parser is asked which words, domains, anchors and
//! window phrases may follow it (`syntax::accepts_after`). Concept set names come from the study
//! being built; concept ids and names from the repository's vocabulary.

use super::draft::{Draft, LineKind, SECTIONS};
use crate::syntax::{accepts_after, KEYWORDS};

/// The REPL's commands, for completion and hints.
pub const COMMANDS: [&str; 16] = [
    ":help", ":show", ":explain", ":count", ":run", ":results", ":plan", ":sql", ":concept",
    ":tables", ":load", ":save", ":undo", ":reset", ":quit", ":exit",
];

/// The SQL dialects `:sql` takes.
pub const DIALECTS: [&str; 5] = ["postgres", "mysql", "sqlite", "duckdb", "bigquery"];

const DOMAINS: [&str; 15] = [
    "condition",
    "drug",
    "procedure",
    "measurement",
    "observation",
    "visit",
    "death",
    "device",
    "specimen",
    "episode",
    "drug era",
    "condition era",
    "observation period",
    "image occurrence",
    "image feature",
];

const ANCHORS: [&str; 4] = ["index", "event", "follow-up start", "follow-up end"];

const WINDOWS: [&str; 8] = [
    "before index",
    "after index",
    "on index",
    "on or before index",
    "on or after index",
    "during follow-up",
    "any time",
    "within",
];

/// Words that may start a line, besides section names.
const LINE_STARTS: [&str; 8] = [
    "index",
    "require",
    "exclude",
    "study",
    "version",
    "question",
    "description",
    "author",
];

/// What completion may ask of the repository's vocabulary.
pub trait Vocabulary {
    /// Concept ids and names whose name starts with `prefix` (ignoring case), best first,
    /// optionally of one OMOP domain (`Drug`, …).
    fn starting(&self, prefix: &str, domain: Option<&str>) -> Vec<(i64, String)>;
    /// The name of a concept.
    fn name_of(&self, id: i64) -> Option<String>;
}

/// A vocabulary with no concepts: completion from the grammar and the study only.
pub struct NoVocabulary;

impl Vocabulary for NoVocabulary {
    fn starting(&self, _: &str, _: Option<&str>) -> Vec<(i64, String)> {
        Vec::new()
    }
    fn name_of(&self, _: i64) -> Option<String> {
        None
    }
}

/// Completions for the word ending at `pos`: where the word starts, and the texts that may
/// replace it.
pub fn complete(
    draft: &Draft,
    line: &str,
    pos: usize,
    vocabulary: &dyn Vocabulary,
) -> (usize, Vec<String>) {
    candidates(draft, line, pos, vocabulary, true)
}

/// Grey text to show after the cursor: the rest of a command or word when only one fits, the
/// keywords the grammar requires next (`calendar ` → `age at`), or the vocabulary's name for a
/// concept id just typed in a concept set. Never queries the vocabulary by name, as hints are
/// asked on every key.
pub fn hint(draft: &Draft, line: &str, pos: usize, vocabulary: &dyn Vocabulary) -> Option<String> {
    if pos < line.len() || line.trim().is_empty() {
        return None;
    }
    if line.starts_with(':') {
        if line.len() < 2 || line.contains(' ') {
            return None;
        }
        let mut matching = COMMANDS
            .iter()
            .filter(|c| c.starts_with(line) && **c != line);
        return match (matching.next(), matching.next()) {
            (Some(only), None) => Some(only[line.len()..].to_string()),
            _ => None,
        };
    }
    let (start, found) = candidates(draft, line, pos, vocabulary, false);
    let word = &line[start..];
    let mut hint = match found.as_slice() {
        [only] if only.to_lowercase().starts_with(&word.to_lowercase()) => {
            only[word.len()..].to_string()
        }
        _ if word.is_empty() => match found.iter().find(|c| c.starts_with('"')) {
            Some(label) => return Some(label.clone()),
            None => String::new(),
        },
        _ => return None,
    };
    // Keywords the grammar requires after that, as long as there is only one choice.
    for _ in 0..4 {
        let sofar = format!("{line}{hint}");
        let sep = if sofar.ends_with(char::is_whitespace) {
            ""
        } else {
            " "
        };
        match Context::of(draft, &format!("{sofar}{sep}")).and_then(|c| c.forced_keyword()) {
            Some(k) => hint.push_str(&format!("{sep}{k}")),
            None => break,
        }
    }
    (!hint.is_empty()).then_some(hint)
}

fn candidates(
    draft: &Draft,
    line: &str,
    pos: usize,
    vocabulary: &dyn Vocabulary,
    search: bool,
) -> (usize, Vec<String>) {
    let before = &line[..pos];
    if let Some(command) = before.strip_prefix(':') {
        return match command.split_once(' ') {
            None => (0, matching(COMMANDS.iter().map(|c| c.to_string()), before)),
            Some(("sql", arg)) => (
                pos - arg.len(),
                matching(DIALECTS.iter().map(|d| d.to_string()), arg),
            ),
            Some(_) => (pos, Vec::new()),
        };
    }
    // Inside a quoted concept name: names from the vocabulary, closing the quote.
    if before.matches('"').count() % 2 == 1 {
        let start = before.rfind('"').map_or(0, |i| i + 1);
        let typed = &before[start..];
        if !search || typed.chars().count() < 2 {
            return (pos, Vec::new());
        }
        let mut found: Vec<String> = Vec::new();
        for (_, name) in vocabulary.starting(typed, line_domain(before)) {
            let name = format!("{name}\"");
            if !found.contains(&name) {
                found.push(name);
            }
        }
        return (start, found);
    }
    let start = before
        .rfind(|c: char| c.is_whitespace() || c == '(' || c == ',')
        .map_or(0, |i| i + 1);
    let word = &before[start..];
    let head = &before[..start];
    if head.trim().is_empty() {
        let starts = SECTIONS
            .iter()
            .chain(LINE_STARTS.iter())
            .map(|s| s.to_string())
            .chain(statement_names(draft));
        return (start, matching(starts, word));
    }
    let Some(context) = Context::of(draft, head) else {
        return (start, Vec::new());
    };
    let mut found = matching(
        phrases().filter(|p| {
            starts_with_ignoring_case(p, word) && !starts_section(p) && context.takes(p)
        }),
        word,
    );
    if context.takes(NAME_PROBE) {
        let mut names = concept_set_names(draft);
        names.extend(statement_names(draft));
        found.extend(matching(names, word));
        found.sort();
        found.dedup();
        let typed_name = word.chars().count() >= 3
            && word
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
        if context.in_concepts && search && typed_name {
            for (id, name) in vocabulary.starting(word, line_domain(head)) {
                found.push(format!("{id} {}", quoted(&name)));
            }
        }
    }
    if context.in_concepts && word.is_empty() && context.takes("\"x\"") {
        let id = head.split_whitespace().last().and_then(|w| w.parse().ok());
        if let Some(name) = id.and_then(|id| vocabulary.name_of(id)) {
            found.push(quoted(&name));
        }
    }
    (start, found)
}

/// A word the grammar takes where a name may stand, and no keyword is.
const NAME_PROBE: &str = "zz_name";

/// What may stand where text other than keywords goes: for telling whether the grammar leaves
/// exactly one choice.
const OTHER_PROBES: [&str; 14] = [
    NAME_PROBE,
    "1",
    "2020-01-01",
    "\"x\"",
    "(",
    ")",
    "[",
    "-",
    "+",
    "|",
    ",",
    "=",
    "<",
    "*",
];

/// Every word and phrase completion may offer.
fn phrases() -> impl Iterator<Item = String> {
    KEYWORDS
        .iter()
        .chain(DOMAINS.iter())
        .chain(ANCHORS.iter())
        .chain(WINDOWS.iter())
        .chain(["+ descendants"].iter())
        .map(|p| p.to_string())
}

/// Words that start a section: the grammar takes them after any statement, but a REPL line is
/// one statement.
fn starts_section(word: &str) -> bool {
    SECTIONS.iter().any(|s| s.split(' ').next() == Some(word))
        || ["endpoint", "arms", "arm"].contains(&word)
}

fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.to_lowercase().starts_with(&prefix.to_lowercase())
}

/// A line typed so far, alone in a study in its section: what may follow a line depends only
/// on its section, and a short text keeps the many parses of one completion fast.
struct Context {
    text: String,
    in_concepts: bool,
}

impl Context {
    fn of(draft: &Draft, head: &str) -> Option<Context> {
        let line = head.trim_start();
        if line.matches('"').count() % 2 == 1 {
            return None;
        }
        let section = match draft.classify(line) {
            LineKind::Statement(i) => i,
            _ => return None,
        };
        let mut alone = Draft::default();
        alone.sections[section].push(line.to_string());
        let text = alone.render_ending_with(section);
        let space = if line.ends_with(char::is_whitespace) {
            " "
        } else {
            ""
        };
        Some(Context {
            text: format!("{}{space}", text.trim_end()),
            in_concepts: section == 0,
        })
    }

    fn takes(&self, phrase: &str) -> bool {
        accepts_after(&self.text, phrase)
    }

    /// The one keyword the grammar requires next, if it leaves no other choice.
    fn forced_keyword(&self) -> Option<String> {
        if OTHER_PROBES.iter().any(|p| self.takes(p)) {
            return None;
        }
        let mut taken = phrases().filter(|p| self.takes(p));
        match (taken.next(), taken.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

/// Candidates that start with `word` (ignoring case) and are not `word` itself, sorted.
fn matching(candidates: impl IntoIterator<Item = String>, word: &str) -> Vec<String> {
    let lower = word.to_lowercase();
    let mut found: Vec<String> = candidates
        .into_iter()
        .filter(|c| c.to_lowercase().starts_with(&lower) && c.to_lowercase() != lower)
        .collect();
    found.sort();
    found.dedup();
    found
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Concept sets defined so far.
fn concept_set_names(draft: &Draft) -> Vec<String> {
    defined_names(&draft.sections[0])
}

/// Names that start lines of the section being written (covariates, endpoints, arms), so that
/// a definition can be retyped.
fn statement_names(draft: &Draft) -> Vec<String> {
    draft
        .current
        .map_or(Vec::new(), |i| defined_names(&draft.sections[i]))
}

fn defined_names(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.trim().to_string())
        .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        .collect()
}

/// The OMOP domain of a concept set definition being typed (`x = drug …` → `Drug`), so that
/// vocabulary completion offers concepts of that domain.
fn line_domain(line: &str) -> Option<&'static str> {
    let (_, rest) = line.split_once('=')?;
    Some(
        match rest
            .split_whitespace()
            .next()?
            .to_ascii_lowercase()
            .as_str()
        {
            "condition" => "Condition",
            "drug" => "Drug",
            "procedure" => "Procedure",
            "measurement" => "Measurement",
            "observation" => "Observation",
            "visit" => "Visit",
            "device" => "Device",
            "specimen" => "Specimen",
            "episode" => "Episode",
            _ => return None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Vocabulary for Fake {
        fn starting(&self, prefix: &str, domain: Option<&str>) -> Vec<(i64, String)> {
            [
                (1118084, "celecoxib", "Drug"),
                (1118085, "Celecoxib 200 MG Oral Capsule", "Drug"),
                (4000001, "Celiac disease", "Condition"),
            ]
            .into_iter()
            .filter(|(_, n, d)| {
                n.to_lowercase().starts_with(&prefix.to_lowercase())
                    && domain.is_none_or(|want| want == *d)
            })
            .map(|(id, n, _)| (id, n.to_string()))
            .collect()
        }
        fn name_of(&self, id: i64) -> Option<String> {
            (id == 1118084).then(|| "celecoxib".to_string())
        }
    }

    fn draft() -> Draft {
        let mut d = Draft::default();
        d.sections[0].push("celecoxib = drug 1118084".into());
        d.sections[0].push("gi_bleed = condition 192671".into());
        d.current = Some(0);
        d
    }

    fn complete_end(d: &Draft, line: &str) -> (usize, Vec<String>) {
        complete(d, line, line.len(), &Fake)
    }

    #[test]
    fn completes_what_the_grammar_takes_at_the_cursor() {
        let d = draft();
        let (start, found) = complete_end(&d, "index = first drug in cele");
        assert_eq!(start, "index = first drug in ".len());
        assert_eq!(found, ["celecoxib"]);
        assert_eq!(complete_end(&d, "index = fi").1, ["first"]);
        let domains = complete_end(&d, "index = first dr").1;
        assert_eq!(domains, ["drug", "drug era"]);
        assert_eq!(complete_end(&d, "requ").1, ["require"]);
        assert_eq!(complete_end(&d, "covar").1, ["covariates"]);
        let windows = complete_end(&d, "require drug in celecoxib be").1;
        assert_eq!(windows, ["before", "before index"]);
        // A line is one statement: no section starts inside it.
        assert!(!complete_end(&d, "require drug in celecoxib ")
            .1
            .contains(&"covariates".into()));
        assert_eq!(complete_end(&d, "x = drug 1 +").1, ["+ descendants"]);
        let anchors = complete_end(&d, "require drug in celecoxib within 30 days of follow").1;
        assert_eq!(anchors, ["follow-up end", "follow-up start"]);
        // Nothing fits after a syntax error.
        assert!(complete_end(&d, "index = = fi").1.is_empty());
    }

    #[test]
    fn completes_commands_and_dialects() {
        let d = draft();
        assert_eq!(complete_end(&d, ":conc").1, [":concept"]);
        assert_eq!(complete_end(&d, ":sql du"), (5, vec!["duckdb".to_string()]));
        assert!(complete_end(&d, ":load st").1.is_empty());
    }

    #[test]
    fn completes_concepts_from_the_vocabulary() {
        let d = draft();
        // A name typed where a concept set goes becomes an id with its name, of the domain.
        let (start, found) = complete_end(&d, "nsaid = drug cele");
        assert_eq!(start, "nsaid = drug ".len());
        assert_eq!(
            found,
            [
                "celecoxib",
                "1118084 \"celecoxib\"",
                "1118085 \"Celecoxib 200 MG Oral Capsule\""
            ]
        );
        // Inside quotes: the names, with the quote closed.
        let (start, found) = complete_end(&d, "x = condition 4000001 \"Cel");
        assert_eq!(start, "x = condition 4000001 \"".len());
        assert_eq!(found, ["Celiac disease\""]);
        // After an id: its name as the label.
        assert_eq!(
            complete_end(&d, "x = drug 1118084 ").1,
            ["+ descendants", "mapped", "\"celecoxib\""]
        );
        // Outside the concepts section, only concept sets are offered.
        assert_eq!(complete_end(&d, "require drug in cele").1, ["celecoxib"]);
    }

    #[test]
    fn hints_the_rest_of_a_command_forced_keywords_and_labels() {
        let d = draft();
        let hint = |line: &str| super::hint(&d, line, line.len(), &Fake);
        assert_eq!(hint(":ta"), Some("bles".into()));
        assert_eq!(hint(":s"), None, ":show, :sql and :save");
        assert_eq!(hint("require calendar "), Some("age at".into()));
        assert_eq!(hint("require calend"), Some("ar age at".into()));
        assert_eq!(hint("x = drug 1118084 "), Some("\"celecoxib\"".into()));
        assert_eq!(hint("require"), None, "require and required");
        assert_eq!(hint(""), None);
        // The vocabulary is not searched by name for hints.
        assert_eq!(hint("x = drug diclo"), None);
        assert_eq!(hint("x = drug celec"), Some("oxib".into()), "a concept set");
    }
}
