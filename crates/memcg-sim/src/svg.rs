//! A small hand-written SVG chart: one row per figure, two horizontal bars
//! (per-node, single) scaled to the larger of the two, values printed.

use std::fmt::Write as _;

/// One figure of the chart.
#[derive(Debug, Clone)]
pub struct Row {
    /// Label on the left.
    pub label: String,
    /// Per-node value.
    pub per_node: f64,
    /// Single-cache value.
    pub single: f64,
    /// How to print a value.
    pub unit: &'static str,
}

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 330.0;
const BAR_W: f64 = 330.0;
const ROW_H: f64 = 46.0;
const TOP: f64 = 64.0;
const PER_NODE_COLOR: &str = "#2b7bb9";
const SINGLE_COLOR: &str = "#e8743b";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_value(v: f64, unit: &str) -> String {
    if unit == "%" {
        format!("{v:.1}%")
    } else if v.fract() == 0.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

/// The chart as an SVG document.
pub fn chart(title: &str, subtitle: &str, rows: &[Row]) -> String {
    let height = TOP + ROW_H * rows.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="40" fill="#555">{}</text>"##,
        esc(subtitle)
    );
    // Legend.
    for (i, (name, color)) in [
        ("per-node cache (seed)", PER_NODE_COLOR),
        ("single cache (pre-seed)", SINGLE_COLOR),
    ]
    .iter()
    .enumerate()
    {
        let x = LABEL_W + 10.0 + i as f64 * 190.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="46" width="12" height="12" fill="{color}"/>"#
        );
        let _ = writeln!(s, r#"<text x="{}" y="57">{name}</text>"#, x + 16.0);
    }
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let max = r.per_node.max(r.single);
        let scale = if max > 0.0 { BAR_W / max } else { 0.0 };
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text>"#,
            y + 24.0,
            esc(&r.label)
        );
        for (k, (v, color)) in [(r.per_node, PER_NODE_COLOR), (r.single, SINGLE_COLOR)]
            .iter()
            .enumerate()
        {
            let by = y + 8.0 + k as f64 * 16.0;
            let w = (v * scale).max(if *v > 0.0 { 1.0 } else { 0.0 });
            let _ = writeln!(
                s,
                r#"<rect x="{LABEL_W}" y="{by}" width="{w:.1}" height="13" fill="{color}"/>"#
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" fill="#333">{}</text>"##,
                LABEL_W + w + 4.0,
                by + 11.0,
                esc(&fmt_value(*v, r.unit))
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="10" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>"##,
            WIDTH - 10.0,
            y + ROW_H,
            y + ROW_H
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="10" y="{}" fill="#777">Each row is scaled to its larger value; lower is better in every row.</text>"##,
        height - 14.0
    );
    s.push_str("</svg>\n");
    s
}
