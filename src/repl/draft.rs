//! The study a REPL session builds: its lines, kept by section, rendered as study text.

/// The sections of a study, in the order they are written.
pub const SECTIONS: [&str; 8] = [
    "concepts",
    "population",
    "exposure arms",
    "follow-up",
    "covariates",
    "endpoints",
    "output",
    "consent",
];

const POPULATION: usize = 1;
const FOLLOW_UP: usize = 3;
const OUTPUT: usize = 6;
const CONSENT: usize = 7;

/// What a typed line is, for the draft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// `study "title"`
    Title(String),
    /// `version "…"`, `question "…"`, `description "…"`, `author "…"`.
    HeaderItem,
    /// A section keyword alone: following lines go there.
    Section(usize),
    /// A line of a section.
    Statement(usize),
    /// A statement typed before any section that it could belong to.
    Unplaced,
}

/// The first word of a line, lower-cased.
fn first_word(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A study being built line by line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draft {
    pub title: Option<String>,
    pub header: Vec<String>,
    /// Lines per section, in `SECTIONS` order.
    pub sections: [Vec<String>; 8],
    /// Where a line that names no section goes.
    pub current: Option<usize>,
}

impl Draft {
    /// Where a line belongs.
    pub fn classify(&self, line: &str) -> LineKind {
        let trimmed = line.trim();
        let lower = trimmed.to_ascii_lowercase();
        let normalised = lower.split_whitespace().collect::<Vec<_>>().join(" ");
        let section = match normalised.as_str() {
            "follow up" => Some(3),
            "exposure arm" => Some(2),
            s => SECTIONS.iter().position(|x| *x == s),
        };
        if let Some(i) = section {
            return LineKind::Section(i);
        }
        let words: Vec<&str> = normalised.split(' ').collect();
        let second = words.get(1).copied().unwrap_or("");
        match first_word(trimmed).as_str() {
            // Lines whose first words only one section takes go there, whichever is current.
            "study" if second == "period" => LineKind::Statement(FOLLOW_UP),
            "from" | "until" | "collapse" => LineKind::Statement(FOLLOW_UP),
            "min" if second == "cell" => LineKind::Statement(OUTPUT),
            "person" if second == "ids" => LineKind::Statement(OUTPUT),
            "cohort" if second == "id" => LineKind::Statement(OUTPUT),
            "required" if second == "by" => LineKind::Statement(CONSENT),
            "not" if second == "required" => LineKind::Statement(CONSENT),
            "study" => LineKind::Title(
                trimmed["study".len()..]
                    .trim()
                    .trim_matches('"')
                    .to_string(),
            ),
            "version" | "question" | "description" | "author" | "acknowledge" => {
                LineKind::HeaderItem
            }
            "index" | "require" | "exclude" | "keep" => LineKind::Statement(POPULATION),
            _ => match self.current {
                Some(i) => LineKind::Statement(i),
                None => LineKind::Unplaced,
            },
        }
    }

    /// Whether the population has its index event.
    pub fn has_index(&self) -> bool {
        self.sections[POPULATION]
            .iter()
            .any(|l| first_word(l) == "index")
    }

    /// The study text. With `stand_in_index`, a population without an index event gets one, so
    /// that the rest can be checked before time zero is chosen; it is never shown or saved.
    pub fn render(&self, stand_in_index: bool) -> String {
        let title = self.title.as_deref().unwrap_or("REPL session");
        let mut text = format!("study \"{}\"\n", title.replace('"', "'"));
        for h in &self.header {
            text.push_str(&format!("  {}\n", h.trim()));
        }
        for (i, lines) in self.sections.iter().enumerate() {
            let needs_index = i == POPULATION && stand_in_index && !self.has_index();
            // A population left without lines by `render_ending_with` is written there.
            if lines.is_empty() && !needs_index {
                continue;
            }
            text.push_str(&format!("\n{}\n", SECTIONS[i]));
            if needs_index {
                text.push_str("  index = first observation period\n");
            }
            for l in lines {
                text.push_str(&format!("  {}\n", l.trim()));
            }
        }
        text
    }

    /// The study text with section `last` written after all others: where a statement being
    /// typed ends the text, so the parser tells whether it is whole (sections may come in any
    /// order).
    pub fn render_ending_with(&self, last: usize) -> String {
        let mut reordered = self.clone();
        let moved = std::mem::take(&mut reordered.sections[last]);
        let mut text = reordered.render(true);
        text.push_str(&format!("\n{}\n", SECTIONS[last]));
        if last == POPULATION
            && !self.has_index()
            && !moved.iter().any(|l| first_word(l) == "index")
        {
            text.push_str("  index = first observation period\n");
        }
        for l in &moved {
            text.push_str(&format!("  {}\n", l.trim()));
        }
        text
    }

    /// A draft holding a study file's lines: unindented lines start sections, indented ones
    /// belong to the one before (continuation lines stay with their statement).
    pub fn from_text(text: &str) -> Draft {
        let mut draft = Draft::default();
        let mut in_header = false;
        for line in text.lines() {
            let code = line.split("--").next().unwrap_or("");
            if code.trim().is_empty() {
                continue;
            }
            let indented = line.starts_with(char::is_whitespace);
            if !indented {
                match draft.classify(code) {
                    LineKind::Title(t) => {
                        draft.title = Some(t);
                        in_header = true;
                    }
                    LineKind::Section(i) => {
                        draft.current = Some(i);
                        in_header = false;
                    }
                    _ => {}
                }
                continue;
            }
            if in_header {
                draft.header.push(code.trim().to_string());
            } else if let Some(i) = draft.current {
                draft.sections[i].push(code.trim_end().to_string());
            }
        }
        draft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_their_section() {
        let mut d = Draft::default();
        assert_eq!(d.classify("concepts"), LineKind::Section(0));
        assert_eq!(d.classify("Follow Up"), LineKind::Section(3));
        assert_eq!(d.classify("exposure arms"), LineKind::Section(2));
        assert_eq!(d.classify("x = drug 1"), LineKind::Unplaced);
        assert_eq!(
            d.classify("require age at index >= 18"),
            LineKind::Statement(1)
        );
        d.current = Some(4);
        assert_eq!(d.classify("age = age at index"), LineKind::Statement(4));
        assert_eq!(d.classify("keep first entry"), LineKind::Statement(1));
        assert_eq!(
            d.classify("exclude condition in x before index"),
            LineKind::Statement(1)
        );
        assert_eq!(d.classify("study \"A b\""), LineKind::Title("A b".into()));
        // Lines only one section takes go there from any section.
        d.current = Some(1);
        for (line, section) in [
            ("collapse entries within 30 days", 3),
            ("until end of observation", 3),
            ("from index + 1 day", 3),
            ("study period from 2000-01-01", 3),
            ("min cell count 10", 6),
            ("person ids original", 6),
            ("cohort id 3", 6),
            ("required by observation in c", 7),
            ("not required", 7),
        ] {
            assert_eq!(d.classify(line), LineKind::Statement(section), "{line}");
        }
        assert_eq!(d.classify("version \"1\""), LineKind::HeaderItem);
        assert_eq!(
            d.classify("acknowledge W0001 \"why\""),
            LineKind::HeaderItem
        );
    }

    #[test]
    fn a_stand_in_index_is_rendered_only_when_asked() {
        let mut d = Draft::default();
        d.sections[0].push("x = drug 1".into());
        assert!(!d.render(false).contains("index ="));
        assert!(d
            .render(true)
            .contains("population\n  index = first observation period\n"));
        d.sections[1].push("index = first drug in x".into());
        assert_eq!(d.render(true).matches("index =").count(), 1);
    }

    #[test]
    fn a_study_file_becomes_a_draft_and_back() {
        let text = "study \"T\"\n  version \"1\"\n\nconcepts\n  x = drug 1  -- note\n\npopulation\n  index = first drug in x\n  require age at index >= 18\n";
        let d = Draft::from_text(text);
        assert_eq!(d.title.as_deref(), Some("T"));
        assert_eq!(d.header, ["version \"1\""]);
        assert_eq!(d.sections[1].len(), 2);
        assert!(d.render(false).contains("concepts\n  x = drug 1\n"));
    }
}
