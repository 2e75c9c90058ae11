//! The front half of the compiler as one call: text to syntax tree to checked `Study`.

use crate::check::check_study;
use crate::diag::Diagnostic;
use crate::study::Study;
use crate::syntax::ast::StudyFile;
use crate::syntax::{parse_study, source};

/// Everything the front end learned about one study text.
#[derive(Debug)]
pub struct Compiled {
    /// The text the diagnostics point into (lossily decoded when the bytes were not UTF-8).
    pub text: String,
    /// The syntax tree, when the text parsed.
    pub file: Option<StudyFile>,
    /// The checked model, when there were no errors.
    pub study: Option<Study>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Decodes, parses and checks a study file's bytes.
pub fn compile_bytes(bytes: &[u8]) -> Compiled {
    match source::decode(bytes) {
        Ok(text) => compile_text(text),
        Err((text, d)) => Compiled {
            text,
            file: None,
            study: None,
            diagnostics: vec![d],
        },
    }
}

/// Parses and checks study text.
pub fn compile_text(text: String) -> Compiled {
    let unsafe_characters = source::unsafe_characters(&text);
    if !unsafe_characters.is_empty() {
        return Compiled {
            text,
            file: None,
            study: None,
            diagnostics: unsafe_characters,
        };
    }
    match parse_study(&text) {
        Err(d) => Compiled {
            text,
            file: None,
            study: None,
            diagnostics: vec![d],
        },
        Ok(file) => {
            let checked = check_study(&file);
            Compiled {
                text,
                file: Some(file),
                study: checked.study,
                diagnostics: checked.diagnostics,
            }
        }
    }
}
