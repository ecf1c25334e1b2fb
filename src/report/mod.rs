//! `RUN_DIR/report.html`: one self-contained page of a run's curves, inline SVG drawn by
//! plotters, with no script and nothing fetched from anywhere. Written whole (a temporary
//! file, then a rename) each time the run finishes an iteration or a stretch of updates, so
//! that it can be opened while the run goes on.

pub mod chart;
pub mod updates;

use anyhow::Result;
use chart::Chart;
use std::path::Path;

/// A group of charts under a heading, with an optional preformatted table.
pub struct Section {
    pub heading: String,
    pub charts: Vec<Chart>,
    pub table: Option<String>,
}

/// A whole page.
pub struct Page {
    pub title: String,
    /// A line under the title (what the run is, when it was written).
    pub subtitle: String,
    pub sections: Vec<Section>,
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1320px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}p.sub{color:#555}\
.charts{display:flex;flex-wrap:wrap;gap:16px}\
figure{margin:0;border:1px solid #ddd}figure.empty{width:640px;height:60px;display:flex;\
align-items:center;justify-content:center;color:#777}\
pre{background:#f6f6f6;padding:12px;overflow-x:auto;font-size:13px}";

impl Page {
    pub fn html(&self) -> Result<String> {
        let mut out = String::new();
        out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        out.push_str(&format!("<title>{}</title>\n", escape(&self.title)));
        out.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
        out.push_str(&format!("<h1>{}</h1>\n", escape(&self.title)));
        out.push_str(&format!(
            "<p class=\"sub\">{}</p>\n",
            escape(&self.subtitle)
        ));
        for section in &self.sections {
            out.push_str(&format!("<h2>{}</h2>\n", escape(&section.heading)));
            if !section.charts.is_empty() {
                out.push_str("<div class=\"charts\">\n");
                for c in &section.charts {
                    let series: Vec<&str> = c
                        .series
                        .iter()
                        .filter(|s| !s.points.is_empty())
                        .map(|s| s.name.as_str())
                        .collect();
                    match c.svg()? {
                        Some(svg) => out.push_str(&format!(
                            "<figure id=\"{}\" data-series=\"{}\">\n{svg}\n</figure>\n",
                            escape(&c.id),
                            escape(&series.join(","))
                        )),
                        None => out.push_str(&format!(
                            "<figure id=\"{}\" class=\"empty\">{}: no data yet</figure>\n",
                            escape(&c.id),
                            escape(&c.title)
                        )),
                    }
                }
                out.push_str("</div>\n");
            }
            if let Some(table) = &section.table {
                out.push_str(&format!("<pre>{}</pre>\n", escape(table)));
            }
        }
        out.push_str("</body>\n</html>\n");
        Ok(out)
    }

    /// Writes the page to `path` whole.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, self.html()?.as_bytes())
    }
}

/// Text for HTML: `&`, `<`, `>` and `"` escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Now, as "YYYY-MM-DD HH:MM:SS UTC".
pub fn now_utc() -> String {
    utc(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

/// Seconds since the Unix epoch as "YYYY-MM-DD HH:MM:SS UTC".
fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::chart::Series;
    use super::*;

    #[test]
    fn a_page_holds_its_charts_inline_and_no_script() {
        let page = Page {
            title: "run <a>".into(),
            subtitle: "written now".into(),
            sections: vec![Section {
                heading: "By iteration".into(),
                charts: vec![
                    Chart {
                        id: "score".into(),
                        title: "Score".into(),
                        x_label: "iteration".into(),
                        y_label: "score".into(),
                        y_range: Some((0.0, 1.0)),
                        series: vec![Series::new("tpo", [(0.0, 0.1), (1.0, 0.4)])],
                        marks: vec![],
                    },
                    Chart {
                        id: "pairs".into(),
                        title: "Pairs".into(),
                        x_label: "iteration".into(),
                        y_label: "pairs".into(),
                        y_range: None,
                        series: vec![],
                        marks: vec![],
                    },
                ],
                table: Some("| a | <b> |".into()),
            }],
        };
        let html = page.html().unwrap();
        assert!(html.contains("<title>run &lt;a&gt;</title>"));
        assert!(html.contains("<figure id=\"score\" data-series=\"tpo\">\n<svg"));
        assert!(html.contains("<figure id=\"pairs\" class=\"empty\">Pairs: no data yet</figure>"));
        assert!(html.contains("<pre>| a | &lt;b&gt; |</pre>"));
        assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains("href="));
    }

    #[test]
    fn dates_are_civil_utc() {
        // Expected values from `date -u -d @SECS`.
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_670_190), "2026-12-07 19:03:10 UTC");
    }
}
