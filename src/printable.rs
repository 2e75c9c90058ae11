//! Text from studies and repositories made safe to show or to embed: control characters,
//! bidirectional-text controls and line separators written as visible escapes.
//!
//! A title or a concept name reaches terminals, SQL comments and reports. Raw, a carriage return
//! ends a SQL comment, an escape sequence can clear a screen or conceal text, and a right-to-left
//! override can make a line read differently from what it says (the "Trojan Source" class). The
//! checker refuses such characters in study files; everything shown or embedded also passes
//! through [`escaped`], so text from a repository or from a model built by other means is safe
//! too.

use std::borrow::Cow;

/// Whether a character may not be shown or embedded as it is: C0 and C1 control characters
/// (tab excepted), DEL, bidirectional-text controls, and the Unicode line and paragraph
/// separators.
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{061C}'                  // Arabic letter mark
            | '\u{200E}' | '\u{200F}'   // left-to-right and right-to-left marks
            | '\u{202A}'..='\u{202E}'   // embeddings and overrides
            | '\u{2066}'..='\u{2069}'   // isolates
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
        )
}

/// A short name for an unsafe character, for messages.
pub fn describe(c: char) -> String {
    let name = match c {
        '\n' => "a line break",
        '\r' => "a carriage return",
        '\u{1b}' => "an escape character (it starts terminal control sequences)",
        '\u{7f}' => "a delete character",
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{061C}'
        | '\u{200E}'
        | '\u{200F}' => "a bidirectional-text control (it can make text read out of order)",
        '\u{2028}' | '\u{2029}' => "a Unicode line separator",
        _ => "a control character",
    };
    format!("{name}, U+{:04X}", c as u32)
}

/// The text with every unsafe character written as a visible escape (`\r`, `\n`, `\u{1b}`).
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Text of several lines with every unsafe character but the line breaks escaped: for output
/// that the program itself lays out in lines, once the single-line parts were [`escaped`].
pub fn escaped_keeping_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.split('\n')
            .map(|line| escaped(line).into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_text_is_borrowed_unchanged() {
        assert!(matches!(
            escaped("Celecoxib\tvs «diclofenac»"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn every_unsafe_character_becomes_visible() {
        assert_eq!(escaped("a\rb\nc"), "a\\rb\\nc");
        assert_eq!(escaped("\u{1b}]52;c;x\u{7}"), "\\u{1b}]52;c;x\\u{7}");
        assert_eq!(escaped("x\u{202E}y\u{2066}"), "x\\u{202e}y\\u{2066}");
        assert_eq!(escaped("\u{85}\u{2028}"), "\\u{85}\\u{2028}");
        assert_eq!(
            escaped_keeping_lines("a\u{1b}[2J\nb\r"),
            "a\\u{1b}[2J\nb\\r"
        );
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let e = escaped(&c.to_string()).into_owned();
            assert!(!e.chars().any(is_unsafe), "{c:?} survives as {e:?}");
        }
    }
}
