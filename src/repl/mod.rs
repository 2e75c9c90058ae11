//! The REPL's session: a study built line by line, checked after every line, with the attrition
//! recomputed on the repository after each step of the population. Free of any terminal: the
//! command line feeds it lines and prints its replies (see `cli::repl`).

pub mod complete;
pub mod draft;

use crate::compile::compile_text;
use crate::diag::Diagnostic;
use crate::disclosure::{Policy, SiteRules};
use crate::run::workspace::Workspace;
use crate::run::{Attrition, Dialect};
use crate::study::Study;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use draft::{Draft, LineKind, SECTIONS};
use std::path::{Path, PathBuf};

/// What the session answers to one input.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Nothing to say (a section switch, a comment).
    Quiet,
    Text(String),
    /// The input was refused; the session is unchanged.
    Error(String),
    Quit,
}

pub const HELP: &str = "\
Type study lines as in a study file; they are checked at once and kept if they are right.
  concepts | population | exposure arms | follow-up | covariates | endpoints | output | consent
                      start a section (index, require and exclude always go to population)
  study \"title\"       name the study
Commands:
  :help               this text
  :show               the study so far, in canonical layout
  :explain            the study in plain English
  :count              the attrition so far, on the repository
  :run [DIR]          run the study; outputs to DIR (default output/repl)
  :results [DIR]      Table 1, rates, survival tests and hazard ratios of a run, as released
  :plan               the query plan of each stage
  :sql [DIALECT]      the study as SQL (postgres, mysql, sqlite, duckdb, bigquery)
  :concept TEXT       concepts whose name or synonym contains TEXT, or whose code or id is TEXT
  :tables             the repository's tables, with rows and persons
  :load FILE          replace the study with a study file
  :save FILE          write the study to a file (canonical layout)
  :undo               take back the last change
  :reset              start again from an empty study
  :quit               leave (also Ctrl-D)
Tab completes what the grammar takes next: keywords, domains, concept sets, anchors, windows;
in `concepts`, a concept name becomes its id and name from the vocabulary.";

/// A REPL session.
pub struct Session {
    draft: Draft,
    undo: Vec<Draft>,
    workspace: Option<std::rc::Rc<Workspace>>,
    runtime: std::rc::Rc<tokio::runtime::Runtime>,
    /// The site's configuration file, made at the first `:run` if missing (its secret keys the
    /// pseudonyms), and its rules as the session started.
    site_path: PathBuf,
    rules: SiteRules,
}

impl Session {
    pub fn new(
        workspace: Option<Workspace>,
        runtime: tokio::runtime::Runtime,
        site_path: PathBuf,
        rules: SiteRules,
    ) -> Session {
        Session {
            draft: Draft::default(),
            undo: Vec::new(),
            workspace: workspace.map(std::rc::Rc::new),
            runtime: std::rc::Rc::new(runtime),
            site_path,
            rules,
        }
    }

    /// The policy counts are shown under: the site's, tightened by the draft study where it
    /// asks for more; a line typed in the session can never loosen it.
    fn policy(&self) -> Policy {
        let site = &self.rules.policy;
        compile_text(self.draft.render(true))
            .study
            .and_then(|s| site.for_study(&s.output).ok())
            .unwrap_or_else(|| site.clone())
    }

    /// The repository's vocabulary, for completion (no concepts without a repository).
    pub fn vocabulary(&self) -> Box<dyn complete::Vocabulary> {
        match &self.workspace {
            Some(w) => Box::new(RepositoryVocabulary {
                workspace: w.clone(),
                runtime: self.runtime.clone(),
                last_name: Default::default(),
            }),
            None => Box::new(complete::NoVocabulary),
        }
    }

    /// The study as it stands, in its own words (for saving, showing, completing names).
    pub fn text(&self) -> String {
        self.draft.render(false)
    }

    /// Whether `input` (one or more lines) is a whole statement or command, or the parser
    /// wants more of it (see `input_is_complete`).
    pub fn is_complete(&self, input: &str) -> bool {
        input_is_complete(&self.draft, input)
    }

    /// The study so far, for a line editor that asks `input_is_complete` on its own.
    pub fn draft(&self) -> &Draft {
        &self.draft
    }

    /// Handles one input: a command, a section keyword, or a study line.
    pub fn handle(&mut self, input: &str) -> Reply {
        let input = input.trim();
        if input.is_empty() || input.starts_with("--") {
            return Reply::Quiet;
        }
        if let Some(command) = input.strip_prefix(':') {
            return self.command(command);
        }
        let line = input
            .split('\n')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        let mut next = self.draft.clone();
        let mut population_step = false;
        match self.draft.classify(&line) {
            LineKind::Section(i) => {
                self.draft.current = Some(i);
                return Reply::Quiet;
            }
            LineKind::Title(t) => next.title = Some(t),
            LineKind::HeaderItem => next.header.push(line.clone()),
            LineKind::Statement(i) => {
                next.sections[i].push(line.clone());
                population_step = i == 1;
                if i == 1 {
                    next.current = Some(1);
                }
            }
            LineKind::Unplaced => {
                return Reply::Error(format!(
                    "which section does this belong to? Type one first: {}",
                    SECTIONS.join(", ")
                ))
            }
        }
        let text = next.render(true);
        let compiled = compile_text(text.clone());
        if compiled.has_errors() {
            return Reply::Error(diagnostics(&compiled.diagnostics, &text));
        }
        self.undo.push(std::mem::replace(&mut self.draft, next));
        let warnings = diagnostics(&compiled.diagnostics, &text);
        if population_step && self.draft.has_index() {
            return match self.attrition_text() {
                Ok(t) => Reply::Text(format!("{warnings}{t}")),
                Err(e) => Reply::Error(format!("{warnings}{e}")),
            };
        }
        if warnings.is_empty() {
            Reply::Quiet
        } else {
            Reply::Text(warnings)
        }
    }

    /// The checked study, or why there is none yet.
    fn study(&self) -> Result<Study, String> {
        if !self.draft.has_index() {
            return Err("the study has no index event yet: type `index = first …`".into());
        }
        let text = self.draft.render(false);
        let compiled = compile_text(text.clone());
        match compiled.study {
            Some(s) if !compiled.has_errors() => Ok(s),
            _ => Err(diagnostics(&compiled.diagnostics, &text)),
        }
    }

    fn workspace(&self) -> Result<&Workspace, String> {
        self.workspace
            .as_deref()
            .ok_or_else(|| "no repository is open: start with `cohortql repl --repo DIR`".into())
    }

    fn attrition_text(&self) -> Result<String, String> {
        let study = self.study()?;
        let rows = self.runtime.block_on(self.workspace()?.attrition(&study))?;
        Ok(attrition_table(&rows, &self.policy()))
    }

    fn command(&mut self, command: &str) -> Reply {
        let (name, arg) = match command.trim().split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (command.trim(), ""),
        };
        let result: Result<String, String> = match name {
            "help" | "h" | "?" => Ok(HELP.to_string()),
            "quit" | "q" | "exit" => return Reply::Quit,
            "show" => Ok(self.canonical()),
            "explain" => self.study().map(|s| crate::explain::explain_study(&s)),
            "count" => self.attrition_text(),
            "undo" => match self.undo.pop() {
                Some(d) => {
                    self.draft = d;
                    Ok("Took back the last change.".into())
                }
                None => Err("nothing to undo".into()),
            },
            "reset" => {
                self.undo.push(std::mem::take(&mut self.draft));
                Ok("Started again from an empty study (`:undo` brings it back).".into())
            }
            "save" => self.save(arg),
            "load" => self.load(arg),
            "run" => self.run(arg),
            "results" => crate::results::report::report(&if arg.is_empty() {
                PathBuf::from("output").join("repl")
            } else {
                PathBuf::from(arg)
            }),
            "plan" => self
                .study()
                .and_then(|s| self.runtime.block_on(self.workspace()?.plans(&s))),
            "sql" => self.sql(arg),
            "concept" => self.concept(arg),
            "tables" => self.tables(),
            other => Err(format!("unknown command `:{other}`: `:help` lists them")),
        };
        match result {
            Ok(t) if t.is_empty() => Reply::Quiet,
            Ok(t) => Reply::Text(t),
            Err(e) => Reply::Error(e),
        }
    }

    /// The study text in canonical layout (as `cohortql fmt` writes it).
    fn canonical(&self) -> String {
        let text = self.draft.render(false);
        let compiled = compile_text(text.clone());
        match &compiled.file {
            Some(file) => {
                crate::fmt::format_study(file, &crate::syntax::source::comments(&compiled.text))
            }
            None => text,
        }
    }

    fn save(&self, arg: &str) -> Result<String, String> {
        if arg.is_empty() {
            return Err("`:save FILE`: name the file".into());
        }
        self.study()?;
        let path = PathBuf::from(arg);
        crate::repo::write::write_atomically(&path, self.canonical().as_bytes())?;
        Ok(format!("Saved {}.", path.display()))
    }

    fn load(&mut self, arg: &str) -> Result<String, String> {
        if arg.is_empty() {
            return Err("`:load FILE`: name the file".into());
        }
        let bytes = crate::syntax::source::read_study_file(std::path::Path::new(arg))?;
        let compiled = crate::compile::compile_bytes(&bytes);
        let text = compiled.text.clone();
        if compiled.has_errors() {
            return Err(diagnostics(&compiled.diagnostics, &text));
        }
        let draft = Draft::from_text(&text);
        let again = compile_text(draft.render(false));
        if again.has_errors() {
            return Err(format!(
                "{arg} checks, but its lines could not be taken apart for editing here"
            ));
        }
        self.undo.push(std::mem::replace(&mut self.draft, draft));
        Ok(format!("Loaded {arg}."))
    }

    fn run(&self, arg: &str) -> Result<String, String> {
        let study = self.study()?;
        let out = if arg.is_empty() {
            PathBuf::from("output").join("repl")
        } else {
            PathBuf::from(arg)
        };
        let text = self.canonical();
        let (site, _) = crate::site::Site::load_or_create(&self.site_path)?;
        let policy = self
            .rules
            .policy
            .for_study(&study.output)
            .map_err(|looser| {
                format!(
                    "`{}` asks for less than {} allows ({}): remove it to run",
                    looser.asked, self.rules.source, looser.floor
                )
            })?;
        let notes = std::cell::RefCell::new(String::new());
        let (_, written) = self.runtime.block_on(self.workspace()?.run_to(
            &study,
            Path::new("<repl>"),
            &text,
            std::time::Duration::ZERO,
            None,
            &crate::run::workspace::Disclosure {
                policy: &policy,
                source: &self.rules.source,
                site: &site,
                export: None,
            },
            &out,
            &|_| {},
            &|note| notes.borrow_mut().push_str(&format!("warning: {note}\n")),
        ))?;
        Ok(format!(
            "{}{}\nWritten to {}: site/ stays at the site; release/ holds the counts as released under the {} policy.",
            notes.into_inner(),
            crate::run::output::attrition_table(&written.attrition()),
            out.display(),
            policy.preset
        ))
    }

    fn sql(&self, arg: &str) -> Result<String, String> {
        let dialect = match arg.to_ascii_lowercase().as_str() {
            "" | "postgres" | "postgresql" => Dialect::Postgres,
            "mysql" => Dialect::Mysql,
            "sqlite" => Dialect::Sqlite,
            "duckdb" => Dialect::Duckdb,
            "bigquery" => Dialect::Bigquery,
            other => {
                return Err(format!(
                    "unknown dialect `{other}`: postgres, mysql, sqlite, duckdb or bigquery"
                ))
            }
        };
        let study = self.study()?;
        self.runtime
            .block_on(self.workspace()?.sql(&study, dialect))
    }

    fn concept(&self, arg: &str) -> Result<String, String> {
        if arg.is_empty() {
            return Err("`:concept TEXT`: a name, a code or a concept id".into());
        }
        let workspace = self.workspace()?;
        let hits = self.runtime.block_on(workspace.concepts(arg))?;
        let note = workspace.vocabulary_problem().map_or(String::new(), |why| {
            format!(
                "note: the vocabulary index could not be built ({why}); searches read the tables\n"
            )
        });
        // Record counts are counts of persons' data: withheld and rounded as live counts are.
        let policy = self.policy();
        if hits.is_empty() {
            return Ok(format!("{note}No concept matches `{arg}`."));
        }
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header([
            "concept id",
            "name",
            "domain",
            "vocabulary",
            "code",
            "standard",
            "descendants",
            "records",
        ]);
        for h in hits {
            let name = match &h.synonym {
                Some(s) => format!("{} (synonym: {s})", h.name),
                None => h.name,
            };
            t.add_row(vec![
                Cell::new(h.id).set_alignment(CellAlignment::Right),
                Cell::new(name),
                Cell::new(h.domain),
                Cell::new(h.vocabulary),
                Cell::new(h.code),
                Cell::new(if h.standard { "yes" } else { "no" }),
                Cell::new(h.descendants).set_alignment(CellAlignment::Right),
                Cell::new(policy.shown_live(h.records)).set_alignment(CellAlignment::Right),
            ]);
        }
        Ok(format!("{note}{t}"))
    }

    fn tables(&self) -> Result<String, String> {
        let counts = self.runtime.block_on(self.workspace()?.tables())?;
        let policy = self.policy();
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(["table", "rows", "persons"]);
        for c in counts.iter().filter(|c| c.rows > 0) {
            t.add_row(vec![
                Cell::new(&c.table),
                Cell::new(policy.shown_live(c.rows)).set_alignment(CellAlignment::Right),
                Cell::new(c.persons.map_or(String::new(), |p| policy.shown_live(p)))
                    .set_alignment(CellAlignment::Right),
            ]);
        }
        Ok(t.to_string())
    }
}

/// The vocabulary of the session's repository; a failed query completes nothing.
struct RepositoryVocabulary {
    workspace: std::rc::Rc<Workspace>,
    runtime: std::rc::Rc<tokio::runtime::Runtime>,
    /// The last id looked up: hints ask again on every key.
    last_name: std::cell::RefCell<Option<(i64, Option<String>)>>,
}

impl complete::Vocabulary for RepositoryVocabulary {
    fn starting(&self, prefix: &str, domain: Option<&str>) -> Vec<(i64, String)> {
        self.runtime
            .block_on(self.workspace.concepts_starting(prefix, domain))
            .unwrap_or_default()
    }

    fn name_of(&self, id: i64) -> Option<String> {
        if let Some((last, name)) = &*self.last_name.borrow() {
            if *last == id {
                return name.clone();
            }
        }
        let name = self
            .runtime
            .block_on(self.workspace.concept_name(id))
            .ok()
            .flatten();
        *self.last_name.borrow_mut() = Some((id, name.clone()));
        name
    }
}

/// Whether `input` is whole, asking the study parser: the input is placed where it belongs in
/// the draft, at the very end of the text, and is incomplete when the parser's only complaint
/// is that the text ended (an open parenthesis or quote, a trailing `|`, `and`, `is`, …).
pub fn input_is_complete(draft: &Draft, input: &str) -> bool {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.starts_with(':') || trimmed.starts_with("--") {
        return true;
    }
    let line = trimmed.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    // An open string: the parser points at its opening quote, not at the end.
    if line.matches('"').count() % 2 == 1 {
        return false;
    }
    let mut next = draft.clone();
    let section = match next.classify(&line) {
        LineKind::Statement(i) => i,
        // A title or header item is one line; sections and stray lines are answered at once.
        _ => return true,
    };
    next.sections[section].push(line);
    let text = next.render_ending_with(section);
    match crate::syntax::parse_study(&text) {
        Ok(_) => true,
        Err(d) => !d.span.is_some_and(|s| s.start >= text.trim_end().len()),
    }
}

/// Diagnostics rendered against the study text, which the session's lines make up.
fn diagnostics(diagnostics: &[Diagnostic], text: &str) -> String {
    crate::render::render_all(diagnostics, "<repl>", text)
}

/// The attrition as a table, each count withheld and rounded as live counts are.
fn attrition_table(rows: &[Attrition], policy: &Policy) -> String {
    format!(
        "{}\n",
        crate::run::output::live_attrition_table(rows, policy)
    )
}

#[cfg(test)]
mod tests {
    use super::draft::Draft;
    use super::input_is_complete;

    #[test]
    fn the_parser_says_when_input_is_whole() {
        let mut d = Draft::default();
        d.current = Some(0);
        d.sections[0].push("x = drug 1".into());
        let complete = |s: &str| input_is_complete(&d, s);
        assert!(complete("require age at index >= 18"));
        assert!(complete(":count"));
        assert!(complete("concepts"));
        assert!(!complete("y = drug 1 |"));
        assert!(!complete("require (condition in x [-1, 0] days or"));
        assert!(!complete("require sex is"));
        assert!(complete("require sex is\n  male"));
        assert!(!complete("y = drug 1 \"unfinished"));
        assert!(complete("y = drug 1 | 2 -- a comment ending in |"));
        assert!(complete("require age at index >= 18 and sex is male"));
        // Wrong, not unfinished: the session will say what is wrong.
        assert!(complete("require bogus"));
    }
}
