//! Study text as it arrives: decoding bytes safely, and finding the comments `fmt` must keep.

use super::ast::Span;
use crate::diag::{Code, Diagnostic};

/// Study files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

/// Reads a study file's bytes, or standard input for `-`, refusing more than `MAX_FILE_BYTES`
/// without reading further (a device such as /dev/zero never ends).
pub fn read_study_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let limit = MAX_FILE_BYTES as u64;
    let stdin = path == std::path::Path::new("-");
    let name = if stdin {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    let fail = |e: std::io::Error| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        format!("cannot read {name}: {why}")
    };
    let mut buf = Vec::new();
    if stdin {
        std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(fail)?;
    } else {
        if std::fs::metadata(path).map_err(fail)?.is_dir() {
            return Err(format!("{name} is a directory, not a study file"));
        }
        std::fs::File::open(path)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut buf))
            .map_err(fail)?;
    }
    if buf.len() as u64 > limit {
        return Err(format!(
            "{name} has more than {limit} bytes; study files may have at most {limit}"
        ));
    }
    Ok(buf)
}

/// Decodes a study file. On failure the text is still returned (lossily decoded) so the
/// diagnostic can be shown against it.
pub fn decode(bytes: &[u8]) -> Result<String, (String, Diagnostic)> {
    if bytes.len() > MAX_FILE_BYTES {
        let d = Diagnostic::new(
            Code::TooLarge,
            format!(
                "the file has {} bytes; study files may have at most {MAX_FILE_BYTES}",
                bytes.len()
            ),
        )
        .help(
            "is this really a study file? Concept lists belong in the vocabulary, not in the study",
        );
        return Err((String::new(), d));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            if let Some(at) = text.find('\0') {
                let d = Diagnostic::new(
                    Code::BinaryFile,
                    "the file contains a NUL byte: it is not a text file",
                )
                .at(Span::new(at, at + 1))
                .label("NUL byte")
                .help("study files are plain UTF-8 text; check that the right file was given");
                return Err((text.replace('\0', "\u{2400}"), d));
            }
            Ok(text.to_string())
        }
        Err(e) => {
            let at = e.valid_up_to();
            let lossy = String::from_utf8_lossy(bytes).into_owned();
            let d = Diagnostic::new(
                Code::InvalidUtf8,
                format!("the file is not valid UTF-8 text (byte {at})"),
            )
            .at(Span::new(at, at + '\u{FFFD}'.len_utf8()))
            .label("not UTF-8")
            .help("save the study file as UTF-8");
            Err((lossy, d))
        }
    }
}

/// How many unsafe characters are reported one by one before the rest are only counted.
const MAX_UNSAFE_REPORTED: usize = 20;

/// Characters a study may not contain, wherever they stand: control characters other than tab,
/// line breaks and the carriage return of a CRLF line end; bidirectional-text controls; and the
/// escape `\n` in quoted text. Titles, labels and comments reach terminals, SQL comments and
/// reports, where such characters could forge or hide what a reviewer reads.
pub fn unsafe_characters(text: &str) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    let (mut in_string, mut in_comment) = (false, false);
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let problem = match c {
            '\n' => {
                (in_string, in_comment) = (false, false);
                None
            }
            '\r' if next == Some('\n') => None,
            '-' if !in_string && next == Some('-') => {
                in_comment = true;
                None
            }
            '"' if !in_comment => {
                in_string = !in_string;
                None
            }
            '\\' if in_string => {
                chars.next();
                match next {
                    Some('n') => Some((
                        Span::new(at, at + 2),
                        "the escape `\\n` (a line break)".to_string(),
                    )),
                    Some(n) if crate::printable::is_unsafe(n) => Some((
                        Span::new(at, at + 1 + n.len_utf8()),
                        crate::printable::describe(n),
                    )),
                    _ => None,
                }
            }
            c if crate::printable::is_unsafe(c) => Some((
                Span::new(at, at + c.len_utf8()),
                crate::printable::describe(c),
            )),
            _ => None,
        };
        if let Some(p) = problem {
            found.push(p);
        }
    }
    let total = found.len();
    found
        .into_iter()
        .take(MAX_UNSAFE_REPORTED)
        .enumerate()
        .map(|(i, (span, what))| {
            let more = if i + 1 == MAX_UNSAFE_REPORTED && total > MAX_UNSAFE_REPORTED {
                format!(
                    " ({} more such characters are not shown)",
                    total - MAX_UNSAFE_REPORTED
                )
            } else {
                String::new()
            };
            Diagnostic::new(
                Code::UnsafeCharacter,
                format!("the study contains {what}{more}"),
            )
            .at(span)
            .label("not allowed in a study")
            .help(
                "study text is shown to reviewers and written into SQL: control characters \
                     and bidirectional-text controls could hide or forge what it says. Delete \
                     the character; write text in quotes on one line",
            )
        })
        .collect()
}

/// A `--` comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    pub span: Span,
    /// The comment text after `--`, trimmed at the end.
    pub text: String,
    /// Whether only white space stands before it on its line.
    pub own_line: bool,
}

/// Every comment in the text, in order, skipping `--` inside quoted text.
pub fn comments(text: &str) -> Vec<Comment> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    let mut line_start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line_start = i + 1;
            in_string = false;
        } else if in_string {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-' && bytes.get(i + 1) == Some(&b'-') {
            let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            let own_line = text[line_start..i].trim().is_empty();
            out.push(Comment {
                span: Span::new(i, end),
                text: text[i + 2..end].trim_end().to_string(),
                own_line,
            });
            i = end;
            continue;
        }
        i += 1;
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

pub fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}
