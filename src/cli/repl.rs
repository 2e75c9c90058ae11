//! `cohortql repl`: the line editor (history, multi-line input, completion) around a
//! `repl::Session`; with piped input, lines are read plainly and no prompt is printed.

use super::data::runtime;
use super::Status;
use crate::printable::escaped_keeping_lines;
use crate::repl::complete::{complete, hint, Vocabulary};
use crate::repl::draft::Draft;
use crate::repl::{input_is_complete, Reply, Session};
use crate::run::database::{is_database, Database};
use crate::run::workspace::{Indexing, Workspace};
use anstream::{eprintln, println};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::{Hinter, HistoryHinter};
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use std::cell::RefCell;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::rc::Rc;

/// Completion, hints and highlighting, and the parser's word on whether input is complete.
struct StudyHelper {
    /// The study so far: completion and the validator ask the grammar what may follow it.
    draft: Rc<RefCell<Draft>>,
    vocabulary: Box<dyn Vocabulary>,
    files: FilenameCompleter,
    history_hints: HistoryHinter,
    /// Highlighting, unless NO_COLOR says otherwise.
    colour: bool,
}

impl Completer for StudyHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        if [":load ", ":save ", ":run "]
            .iter()
            .any(|c| line[..pos].starts_with(c))
        {
            return self.files.complete(line, pos, ctx);
        }
        let (start, found) = complete(&self.draft.borrow(), line, pos, self.vocabulary.as_ref());
        Ok((
            start,
            found
                .into_iter()
                .map(|c| Pair {
                    display: c.clone(),
                    replacement: c,
                })
                .collect(),
        ))
    }
}

impl Hinter for StudyHelper {
    type Hint = String;

    /// What the grammar or the vocabulary says comes next; otherwise the rest of the latest
    /// history entry that starts with the line.
    fn hint(&self, line: &str, pos: usize, ctx: &Context<'_>) -> Option<String> {
        hint(&self.draft.borrow(), line, pos, self.vocabulary.as_ref())
            .or_else(|| self.history_hints.hint(line, pos, ctx))
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

pub(super) fn repl(
    repo: Option<&Path>,
    study: Option<&Path>,
    site: Option<&Path>,
) -> Result<Status, String> {
    let (_, rules) = super::site::rules(site, false)?;
    let runtime = runtime()?;
    let workspace = match repo.and_then(Path::to_str).filter(|r| is_database(r)) {
        Some(url) => runtime.block_on(Workspace::open_database(&Database::parse(url)?))?,
        None => runtime.block_on(Workspace::open(super::run::open(repo)?))?,
    };
    let place = workspace.describe();
    let cache = crate::demo::cache_dir();
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // Told to a person, who may wonder why the first search waits; a script's output stays
    // its answers.
    if runtime.block_on(workspace.index_vocabulary(&cache)) == Indexing::Building && interactive {
        eprintln!(
            "indexing the vocabulary of {place} in the background, once for this data (kept in {})",
            cache.join("vocabulary").display()
        );
    }
    let mut session = Session::new(Some(workspace), runtime, crate::site::locate(site), rules);
    if let Some(path) = study {
        if let Reply::Error(e) = session.handle(&format!(":load {}", path.display())) {
            return Err(e);
        }
    }
    if interactive {
        interactive_loop(&mut session, &place)
    } else {
        piped_loop(&mut session)
    }
}

/// Prints a reply; returns false to quit.
fn show(reply: Reply) -> bool {
    match reply {
        Reply::Quiet => {}
        // Replies carry vocabulary names and other repository text: never raw to the terminal.
        Reply::Text(t) => println!("{}", escaped_keeping_lines(t.trim_end())),
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

fn interactive_loop(session: &mut Session, place: &str) -> Result<Status, String> {
    let draft = Rc::new(RefCell::new(session.draft().clone()));
    let mut editor: Editor<StudyHelper, rustyline::history::DefaultHistory> =
        Editor::new().map_err(|e| format!("cannot start the line editor: {e}"))?;
    editor.set_helper(Some(StudyHelper {
        draft: draft.clone(),
        vocabulary: session.vocabulary(),
        files: FilenameCompleter::new(),
        history_hints: HistoryHinter::new(),
        colour: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }));
    let history = history_path();
    let _ = editor.load_history(&history);
    println!(
        "cohortql {} on {} — type study lines, or :help",
        env!("CARGO_PKG_VERSION"),
        place
    );
    loop {
        match editor.readline("cohortql> ") {
            Ok(input) => {
                let _ = editor.add_history_entry(input.as_str());
                if !show(session.handle(&input)) {
                    break;
                }
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
        let mut draft = Draft::default();
        draft.sections[0].push("celecoxib = drug 1118084".into());
        StudyHelper {
            draft: Rc::new(RefCell::new(draft)),
            vocabulary: Box::new(crate::repl::complete::NoVocabulary),
            files: FilenameCompleter::new(),
            history_hints: HistoryHinter::new(),
            colour: true,
        }
    }

    #[test]
    fn completes_study_words_and_file_names() {
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let complete = |line: &str| {
            let (start, found) = helper().complete(line, line.len(), &ctx).unwrap();
            (
                start,
                found.into_iter().map(|p| p.replacement).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            complete("index = first drug in cele"),
            (
                "index = first drug in ".len(),
                vec!["celecoxib".to_string()]
            )
        );
        let (start, files) = complete(":load studies/nsaid_gi");
        assert_eq!(start, ":load ".len());
        assert_eq!(files, ["studies/nsaid_gi_bleed.study"]);
    }

    #[test]
    fn hints_from_the_grammar_then_from_history() {
        let mut history = DefaultHistory::new();
        rustyline::history::History::add(&mut history, "index = first drug era in celecoxib")
            .unwrap();
        let ctx = Context::new(&history);
        assert_eq!(helper().hint(":ta", 3, &ctx), Some("bles".into()));
        assert_eq!(
            helper().hint("require calendar ", 17, &ctx),
            Some("age at".into())
        );
        assert_eq!(
            helper().hint("index = first drug era", 22, &ctx),
            Some(" in celecoxib".into())
        );
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
