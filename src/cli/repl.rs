//! `cohortql repl`: the line editor (history, multi-line input, completion) around a
//! `repl::Session`; with piped input, lines are read plainly and no prompt is printed.

use super::data::runtime;
use super::Status;
use crate::repl::{input_is_complete, Reply, Session};
use crate::run::workspace::Workspace;
use anstream::{eprintln, println};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use std::cell::RefCell;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::rc::Rc;

const COMMANDS: [&str; 15] = [
    ":help", ":show", ":explain", ":count", ":run", ":plan", ":sql", ":concept", ":tables",
    ":load", ":save", ":undo", ":reset", ":quit", ":exit",
];

/// Completion, and the parser's word on whether input is complete.
struct StudyHelper {
    names: Rc<RefCell<Vec<String>>>,
    /// Concept names of the vocabulary starting with a text.
    concept_names: Box<dyn Fn(&str) -> Vec<String>>,
    /// Highlighting, unless NO_COLOR says otherwise.
    colour: bool,
    /// The study so far, for asking the parser whether input is whole.
    draft: Rc<RefCell<crate::repl::draft::Draft>>,
}

impl Completer for StudyHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        // Inside a quoted concept name: names from the repository's vocabulary.
        if line[..pos].matches('"').count() % 2 == 1 {
            let start = line[..pos].rfind('"').map_or(0, |i| i + 1);
            let typed = &line[start..pos];
            if typed.len() < 2 {
                return Ok((pos, Vec::new()));
            }
            let mut found: Vec<String> = (self.concept_names)(typed)
                .into_iter()
                .map(|n| format!("{n}\""))
                .collect();
            found.sort();
            found.dedup();
            return Ok((start, found));
        }
        let start = line[..pos]
            .rfind(|c: char| c.is_whitespace() || c == '(')
            .map_or(0, |i| i + 1);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let mut found: Vec<String> = if word.starts_with(':') {
            COMMANDS.iter().map(|c| c.to_string()).collect()
        } else {
            let mut all: Vec<String> = crate::syntax::KEYWORDS
                .iter()
                .map(|k| k.to_string())
                .collect();
            all.extend(self.names.borrow().iter().cloned());
            all.extend(crate::repl::draft::SECTIONS.iter().map(|s| s.to_string()));
            all
        };
        found.retain(|c| c.starts_with(word) && c != word);
        found.sort();
        found.dedup();
        Ok((start, found))
    }
}

impl Hinter for StudyHelper {
    type Hint = String;

    /// The rest of a command, once its first letters name only one.
    fn hint(&self, line: &str, pos: usize, _: &Context<'_>) -> Option<String> {
        if pos < line.len() || !line.starts_with(':') || line.len() < 2 || line.contains(' ') {
            return None;
        }
        let mut matching = COMMANDS
            .iter()
            .filter(|c| c.starts_with(line) && **c != line);
        match (matching.next(), matching.next()) {
            (Some(only), None) => Some(only[line.len()..].to_string()),
            _ => None,
        }
    }
}

impl Highlighter for StudyHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> std::borrow::Cow<'l, str> {
        if !self.colour {
            return std::borrow::Cow::Borrowed(line);
        }
        std::borrow::Cow::Owned(highlight(line))
    }

    fn highlight_hint<'h>(&self, hint: &'h str) -> std::borrow::Cow<'h, str> {
        if !self.colour {
            return std::borrow::Cow::Borrowed(hint);
        }
        std::borrow::Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
    }

    fn highlight_char(
        &self,
        _line: &str,
        _pos: usize,
        _kind: rustyline::highlight::CmdKind,
    ) -> bool {
        self.colour
    }
}

/// Study text with keywords bold, strings green, numbers cyan and comments dim.
fn highlight(line: &str) -> String {
    let (code, comment) = match line.find("--") {
        Some(i) if line[..i].matches('"').count() % 2 == 0 => (&line[..i], &line[i..]),
        _ => (line, ""),
    };
    let mut out = String::new();
    let mut word = String::new();
    let mut quoted = false;
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        let lower = word.to_ascii_lowercase();
        if crate::syntax::KEYWORDS.contains(&lower.as_str()) || word.starts_with(':') {
            out.push_str(&format!("\x1b[1m{word}\x1b[0m"));
        } else if word
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        {
            out.push_str(&format!("\x1b[36m{word}\x1b[0m"));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for ch in code.chars() {
        if quoted {
            out.push(ch);
            if ch == '"' {
                out.push_str("\x1b[0m");
                quoted = false;
            }
        } else if ch == '"' {
            flush(&mut word, &mut out);
            out.push_str("\x1b[32m\"");
            quoted = true;
        } else if ch.is_alphanumeric()
            || ch == '_'
            || ch == ':'
            || ch == '.'
            || (ch == '-' && !word.is_empty())
        {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    if quoted {
        out.push_str("\x1b[0m");
    }
    if !comment.is_empty() {
        out.push_str(&format!("\x1b[2m{comment}\x1b[0m"));
    }
    out
}

impl Validator for StudyHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if input_is_complete(&self.draft.borrow(), ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

impl Helper for StudyHelper {}

fn history_path() -> std::path::PathBuf {
    crate::demo::cache_dir().join("repl-history")
}

pub(super) fn repl(repo: Option<&Path>, study: Option<&Path>) -> Result<Status, String> {
    let repository = super::run::open(repo)?;
    let dir = repository.dir.clone();
    let runtime = runtime()?;
    let workspace = runtime.block_on(Workspace::open(repository))?;
    let mut session = Session::new(Some(workspace), runtime);
    if let Some(path) = study {
        match session.handle(&format!(":load {}", path.display())) {
            Reply::Error(e) => return Err(e),
            _ => {}
        }
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive {
        interactive_loop(&mut session, &dir)
    } else {
        piped_loop(&mut session)
    }
}

/// Prints a reply; returns false to quit.
fn show(reply: Reply) -> bool {
    match reply {
        Reply::Quiet => {}
        Reply::Text(t) => println!("{}", t.trim_end()),
        Reply::Error(e) => eprintln!("{}", e.trim_end()),
        Reply::Quit => return false,
    }
    true
}

/// Input from a script or another program: statements may span lines until they are whole.
fn piped_loop(session: &mut Session) -> Result<Status, String> {
    let mut pending = String::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("cannot read standard input: {e}"))?;
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(&line);
        if !session.is_complete(&pending) {
            continue;
        }
        let input = std::mem::take(&mut pending);
        if !show(session.handle(&input)) {
            return Ok(Status::Ok);
        }
    }
    if !pending.trim().is_empty() {
        show(session.handle(&pending));
    }
    Ok(Status::Ok)
}

fn interactive_loop(session: &mut Session, dir: &Path) -> Result<Status, String> {
    let names = Rc::new(RefCell::new(session.names()));
    let draft = Rc::new(RefCell::new(session.draft().clone()));
    let mut editor: Editor<StudyHelper, rustyline::history::DefaultHistory> =
        Editor::new().map_err(|e| format!("cannot start the line editor: {e}"))?;
    editor.set_helper(Some(StudyHelper {
        names: names.clone(),
        concept_names: Box::new(session.concept_names()),
        colour: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        draft: draft.clone(),
    }));
    let history = history_path();
    let _ = editor.load_history(&history);
    println!(
        "cohortql {} on {} — type study lines, or :help",
        env!("CARGO_PKG_VERSION"),
        dir.display()
    );
    loop {
        match editor.readline("cohortql> ") {
            Ok(input) => {
                let _ = editor.add_history_entry(input.as_str());
                if !show(session.handle(&input)) {
                    break;
                }
                *names.borrow_mut() = session.names();
                *draft.borrow_mut() = session.draft().clone();
            }
            // Ctrl-C drops the input being typed; the session goes on.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(format!("cannot read input: {e}")),
        }
    }
    if let Some(parent) = history.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = editor.save_history(&history);
    Ok(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustyline::history::DefaultHistory;

    fn helper() -> StudyHelper {
        StudyHelper {
            names: Rc::new(RefCell::new(vec!["celecoxib".into(), "gi_bleed".into()])),
            concept_names: Box::new(|prefix: &str| {
                ["Celecoxib", "Celecoxib 200 MG Oral Capsule", "Diclofenac"]
                    .iter()
                    .filter(|n| n.to_lowercase().starts_with(&prefix.to_lowercase()))
                    .map(|n| n.to_string())
                    .collect()
            }),
            colour: true,
            draft: Rc::new(RefCell::new(crate::repl::draft::Draft::default())),
        }
    }

    fn complete(line: &str) -> (usize, Vec<String>) {
        let history = DefaultHistory::new();
        helper()
            .complete(line, line.len(), &Context::new(&history))
            .unwrap()
    }

    #[test]
    fn completes_keywords_names_sections_commands_and_concept_names() {
        let (start, found) = complete("index = first drug in cele");
        assert_eq!(start, "index = first drug in ".len());
        assert_eq!(found, ["celecoxib"]);
        assert!(complete("requ").1.contains(&"require".to_string()));
        assert!(complete("covar").1.contains(&"covariates".to_string()));
        assert_eq!(complete(":conc").1, [":concept"]);
        let (start, found) = complete("x = drug 1118084 \"cele");
        assert_eq!(start, "x = drug 1118084 \"".len());
        assert_eq!(found, ["Celecoxib 200 MG Oral Capsule\"", "Celecoxib\""]);
        assert!(complete("").1.is_empty());
    }

    #[test]
    fn hints_the_rest_of_a_unique_command() {
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        assert_eq!(helper().hint(":ta", 3, &ctx), Some("bles".into()));
        assert_eq!(helper().hint(":s", 2, &ctx), None, ":show, :sql and :save");
        assert_eq!(helper().hint("require", 7, &ctx), None);
    }

    #[test]
    fn highlights_keywords_strings_numbers_and_comments() {
        let h = highlight("x = drug 1118084 \"celecoxib\" -- note");
        assert!(h.contains("\x1b[1mdrug\x1b[0m"), "{h:?}");
        assert!(h.contains("\x1b[36m1118084\x1b[0m"), "{h:?}");
        assert!(h.contains("\x1b[32m\"celecoxib\"\x1b[0m"), "{h:?}");
        assert!(h.contains("\x1b[2m-- note\x1b[0m"), "{h:?}");
        let plain = StudyHelper {
            colour: false,
            ..helper()
        };
        assert_eq!(plain.highlight("x = drug 1", 0), "x = drug 1");
    }
}
