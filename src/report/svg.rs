//! Writing SVG for the report: an accessible canvas (a title a screen reader announces) and
//! text escaped for markup. The figures are simple shapes, written directly.

/// Text made safe inside SVG or HTML markup: control characters shown as escapes (see
/// `printable`), then the five markup characters as entities.
pub fn esc(text: &str) -> String {
    crate::printable::escaped(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// One figure being written.
pub struct Canvas {
    svg: String,
}

impl Canvas {
    /// A figure `width` × `height` pixels, of class `class`, titled `title` for assistive
    /// technology.
    pub fn new(width: f64, height: f64, class: &str, title: &str) -> Canvas {
        Canvas {
            svg: format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" class="{class}" role="img" aria-label="{}" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" font-family="Helvetica, Arial, sans-serif" font-size="12"><title>{}</title>"#,
                esc(title),
                esc(title)
            ),
        }
    }

    /// Appends markup as it is: callers escape the text they put in it.
    pub fn raw(&mut self, markup: &str) {
        self.svg.push_str(markup);
    }

    pub fn finish(mut self) -> String {
        self.svg.push_str("</svg>");
        self.svg
    }
}
