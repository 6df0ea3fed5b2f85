//! The report's document model: paragraphs, tables and images that render both as Markdown and
//! as self-contained HTML, so the two files always say the same.

use super::plots::{HEIGHT, WIDTH};
use super::*;

/// A piece of a paragraph.
pub(super) enum Span {
    /// Plain text.
    Text(String),
    /// A name or a config key (Markdown backticks, HTML `<code>`).
    Code(String),
}

/// A table of the report; `chosen` marks the row of the chosen student.
pub(super) struct Table {
    /// Column headers.
    pub(super) header: Vec<String>,
    /// Cells, row by row.
    pub(super) rows: Vec<Vec<String>>,
    /// The row of the chosen setting, highlighted.
    pub(super) chosen: Option<usize>,
}

/// One block of the report, in order: what both the Markdown and the HTML render.
pub(super) enum Block {
    Title(String),
    Verdict(String),
    Heading(String),
    Paragraph(Vec<Span>),
    Table(Table),
    Plot { alt: String, file: &'static str },
}

impl Block {
    /// This block as Markdown lines (blocks are separated by one blank line).
    pub(super) fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        match self {
            Block::Title(text) => format!("# {text}\n"),
            Block::Verdict(text) => format!("**{text}**\n"),
            Block::Heading(text) => format!("## {text}\n"),
            Block::Paragraph(spans) => {
                let mut out: String = spans
                    .iter()
                    .map(|s| match s {
                        Span::Text(t) => t.clone(),
                        Span::Code(c) => format!("`{c}`"),
                    })
                    .collect();
                out.push('\n');
                out
            }
            Block::Table(table) => {
                let mut out = line(&table.header);
                out.push('|');
                out.push_str(&"---|".repeat(table.header.len()));
                out.push('\n');
                for row in &table.rows {
                    out.push_str(&line(row));
                }
                out
            }
            Block::Plot { alt, file } => format!("![{alt}]({file})\n"),
        }
    }
}

/// `text` with HTML's special characters escaped (for element content and quoted attributes).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML report's style sheet (inline: the page references no other file).
pub(super) const HTML_STYLE: &str = "
body { margin: 0; background: #f6f7f9; color: #1d2330; font: 15px/1.5 'DejaVu Sans', 'Liberation Sans', Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 24px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 16px; }
h2 { font-size: 20px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d8dce3; }
p.verdict { padding: 12px 16px; border-left: 6px solid #8a93a3; background: #eef0f4; font-size: 16px; }
p.verdict.pays { border-color: #2e8b57; background: #e8f5ee; }
p.verdict.hurt { border-color: #c0392b; background: #fbeaea; }
p.verdict.even { border-color: #b8860b; background: #fbf5e6; }
code { font-family: 'DejaVu Sans Mono', 'Liberation Mono', monospace; font-size: 13px; background: #eef0f4; padding: 1px 4px; border-radius: 3px; }
div.table { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13.5px; }
th, td { border: 1px solid #d8dce3; padding: 4px 7px; text-align: right; vertical-align: top; white-space: nowrap; }
th { white-space: normal; }
th:first-child, td:first-child { text-align: left; white-space: normal; min-width: 10em; }
td.prose { white-space: normal; min-width: 16em; text-align: left; }
th { background: #eef0f4; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
tr.chosen td { background: #e8f5ee; font-weight: 600; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d8dce3; }
figcaption { color: #5a6375; font-size: 13px; }
";

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let rendered: Vec<String> = self.blocks().iter().map(Block::markdown).collect();
        rendered.join("\n")
    }

    /// The report as one self-contained HTML page: the same blocks as [`Report::markdown`], with
    /// `plot(file)` giving each plot's PNG bytes (embedded as a `data:` URI, so the page needs no
    /// other file and no network).
    pub fn html(&self, plot: impl Fn(&str) -> anyhow::Result<Vec<u8>>) -> anyhow::Result<String> {
        use base64::Engine as _;
        let tone = match self.best.paired_diff.as_ref().and_then(|d| d.ci95) {
            Some([lo, _]) if lo > 0.0 => "pays",
            Some([_, hi]) if hi < 0.0 => "hurt",
            Some(_) => "even",
            None => "unknown",
        };
        let mut html = String::new();
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>Distillation report: {}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n<main>\n",
            escape_html(&self.dataset.name)
        );
        for block in self.blocks() {
            match block {
                Block::Title(text) => {
                    let _ = writeln!(html, "<h1>{}</h1>", escape_html(&text));
                }
                Block::Verdict(text) => {
                    let _ = writeln!(
                        html,
                        "<p class=\"verdict {tone}\" id=\"verdict\"><strong>{}</strong></p>",
                        escape_html(&text)
                    );
                }
                Block::Heading(text) => {
                    let _ = writeln!(html, "<h2>{}</h2>", escape_html(&text));
                }
                Block::Paragraph(spans) => {
                    html.push_str("<p>");
                    for span in spans {
                        match span {
                            Span::Text(t) => html.push_str(&escape_html(&t)),
                            Span::Code(c) => {
                                let _ = write!(html, "<code>{}</code>", escape_html(&c));
                            }
                        }
                    }
                    html.push_str("</p>\n");
                }
                Block::Table(table) => {
                    html.push_str("<div class=\"table\"><table>\n<thead><tr>");
                    for h in &table.header {
                        let _ = write!(html, "<th>{}</th>", escape_html(h));
                    }
                    html.push_str("</tr></thead>\n<tbody>\n");
                    for (i, row) in table.rows.iter().enumerate() {
                        html.push_str(if table.chosen == Some(i) {
                            "<tr class=\"chosen\">"
                        } else {
                            "<tr>"
                        });
                        for cell in row {
                            // figures stay on one line; sentences (a reason for no figure) wrap
                            let _ = write!(
                                html,
                                "{}{}</td>",
                                if cell.chars().count() > 32 {
                                    "<td class=\"prose\">"
                                } else {
                                    "<td>"
                                },
                                escape_html(cell)
                            );
                        }
                        html.push_str("</tr>\n");
                    }
                    html.push_str("</tbody>\n</table></div>\n");
                }
                Block::Plot { alt, file } => {
                    let png = plot(file)?;
                    let _ = writeln!(
                        html,
                        "<figure><img src=\"data:image/png;base64,{}\" alt=\"{}\" width=\"{WIDTH}\" height=\"{HEIGHT}\"><figcaption>{} (<code>{}</code>)</figcaption></figure>",
                        base64::engine::general_purpose::STANDARD.encode(png),
                        escape_html(&alt),
                        escape_html(&alt),
                        escape_html(file)
                    );
                }
            }
        }
        html.push_str("</main>\n</body>\n</html>\n");
        Ok(html)
    }
}
