//! SVG charts of the shoot-out's summaries (issue 5, item 4).
//!
//! [`write_svgs`] writes two grouped bar charts per thread count found in
//! the summaries, sizes on the x axis and one bar per allocator:
//! - `shootout-<T>t.svg`: throughput ratio to bare mimalloc (median bar,
//!   min–max whisker), with a dashed line at the DESIGN §5 target
//!   ([`design_target`]) where one exists for `T`;
//! - `ns-<T>t.svg`: ns per pair per thread (median bar, min–max whisker) on
//!   a log-scaled y axis, since the sizes span 4 to 100 ns.
//!
//! Only plotters' SVG backend is compiled (`default-features = false`):
//! text becomes SVG `<text>` laid out by whoever displays the file, so no
//! font library (fontconfig, freetype) is linked or read.

use std::path::{Path, PathBuf};

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::Summary;

/// The DESIGN §5 throughput-ratio target for `threads` workers, if any:
/// one thread at most 1.3× bare mimalloc's time (a ratio of 1/1.3 ≈ 0.77),
/// two threads of one group at least 0.9× its throughput.
pub fn design_target(threads: usize) -> Option<f64> {
    match threads {
        1 => Some(1.0 / 1.3),
        2 => Some(0.9),
        _ => None,
    }
}

/// Label of the target line, in the chart and its legend.
pub const TARGET_LABEL: &str = "DESIGN §5 target";

/// What a chart plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Throughput ratio to bare mimalloc ([`Summary::ratio`]), linear y axis.
    Ratio,
    /// ns per pair per thread ([`Summary::ns_per_pair`]), log y axis.
    NsPerPair,
}

impl Metric {
    /// File name of this metric's chart for `threads` workers.
    pub fn file_name(self, threads: usize) -> String {
        match self {
            Metric::Ratio => format!("shootout-{threads}t.svg"),
            Metric::NsPerPair => format!("ns-{threads}t.svg"),
        }
    }

    fn values(self, s: &Summary) -> [f64; 3] {
        match self {
            Metric::Ratio => s.ratio,
            Metric::NsPerPair => s.ns_per_pair,
        }
    }

    fn caption(self, threads: usize) -> String {
        let what = match self {
            Metric::Ratio => "throughput ratio to bare mimalloc",
            Metric::NsPerPair => "ns per pair",
        };
        let plural = if threads == 1 { "" } else { "s" };
        format!("{what} (median, with min–max whiskers), {threads} thread{plural}")
    }
}

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 500;
const LEGEND_WIDTH: u32 = 290;
const FONT: &str = "sans-serif";

/// Tableau 10: distinguishable, colour-blind-aware bar colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

/// Writes every chart (both metrics, every thread count of `summaries`)
/// into `dir`, creating it if needed; returns the files written.
///
/// # Errors
/// A message naming the file if `dir` cannot be created or a chart cannot
/// be drawn or written.
pub fn write_svgs(dir: &Path, summaries: &[Summary]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for threads in unique(summaries.iter().map(|s| s.threads)) {
        for metric in [Metric::Ratio, Metric::NsPerPair] {
            let path = dir.join(metric.file_name(threads));
            write_chart(&path, summaries, threads, metric)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Writes one chart of `metric` for the `threads`-worker summaries to `path`.
///
/// # Errors
/// A message if no summary has `threads` workers, or drawing or writing fails.
pub fn write_chart(
    path: &Path,
    summaries: &[Summary],
    threads: usize,
    metric: Metric,
) -> Result<(), String> {
    let rows: Vec<&Summary> = summaries.iter().filter(|s| s.threads == threads).collect();
    if rows.is_empty() {
        return Err(format!("no summaries for {threads} threads"));
    }
    let (lo, hi) = rows
        .iter()
        .flat_map(|s| metric.values(s))
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        return Err("no finite values to plot".into());
    }
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let target = match metric {
        Metric::Ratio => design_target(threads),
        Metric::NsPerPair => None,
    };
    let bars = Bars {
        rows: &rows,
        metric,
        threads,
        target,
    };
    match metric {
        Metric::Ratio => {
            let top = hi.max(target.unwrap_or(0.0)).max(1.0) * 1.08;
            bars.draw(&root, 0.0..top, 0.0, |v| format!("{v:.1}"))?;
        }
        Metric::NsPerPair => {
            let (lo, hi) = (lo.max(1e-3) / 1.5, hi.max(1e-3) * 1.25);
            bars.draw(&root, LogAxis::new(lo..hi), lo, |v| format!("{v}"))?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// The pieces of one grouped bar chart.
struct Bars<'s> {
    rows: &'s [&'s Summary],
    metric: Metric,
    threads: usize,
    target: Option<f64>,
}

impl Bars<'_> {
    /// Draws the chart on `root` with y axis `y` (bars start at `floor`).
    fn draw<Y>(
        &self,
        root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        y: Y,
        floor: f64,
        y_fmt: impl Fn(&f64) -> String,
    ) -> Result<(), String>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        let sizes = unique(self.rows.iter().map(|s| s.size));
        let allocators = unique(self.rows.iter().map(|s| s.allocator.as_str()));
        let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);

        // Group `i` spans x in [i, i + 1]; its bars fill the middle 80 %.
        let x = GroupAxis::new(sizes.len());
        let x_fmt = |v: &f64| {
            let i = v.floor().max(0.0) as usize;
            sizes.get(i).map_or_else(String::new, |s| format!("{s} B"))
        };
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(self.metric.caption(self.threads), (FONT, 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(0)
            .x_labels(sizes.len())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .x_desc("allocation size")
            .y_desc(match self.metric {
                Metric::Ratio => "throughput / bare mimalloc's (above 1 is faster)",
                Metric::NsPerPair => "ns per alloc+dealloc pair per thread (log scale)",
            })
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;

        let slot = 0.8 / allocators.len().max(1) as f64;
        for (a, name) in allocators.iter().enumerate() {
            let colour = PALETTE[a % PALETTE.len()];
            for s in self.rows.iter().filter(|s| s.allocator == *name) {
                let Some(g) = sizes.iter().position(|&z| z == s.size) else {
                    continue;
                };
                let [min, med, max] = self.metric.values(s);
                let left = g as f64 + 0.1 + slot * a as f64;
                let (right, mid) = (left + slot * 0.9, left + slot * 0.45);
                chart
                    .draw_series([Rectangle::new(
                        [(left, floor), (right, med)],
                        colour.filled(),
                    )])
                    .map_err(err)?;
                let whisker = BLACK.stroke_width(1);
                let cap = slot * 0.2;
                chart
                    .draw_series([
                        PathElement::new(vec![(mid, min), (mid, max)], whisker),
                        PathElement::new(vec![(mid - cap, min), (mid + cap, min)], whisker),
                        PathElement::new(vec![(mid - cap, max), (mid + cap, max)], whisker),
                    ])
                    .map_err(err)?;
            }
        }
        if let Some(t) = self.target {
            let line = RED.stroke_width(2);
            chart
                .draw_series([DashedPathElement::new(
                    vec![(0.0, t), (sizes.len() as f64, t)],
                    8,
                    5,
                    line,
                )])
                .map_err(err)?;
        }

        // Legend, right of the plot.
        let text = (FONT, 14).into_font().color(&BLACK);
        let mut row_y = 50;
        for (a, name) in allocators.iter().enumerate() {
            let colour = PALETTE[a % PALETTE.len()];
            legend_area
                .draw(&Rectangle::new(
                    [(10, row_y - 6), (24, row_y + 6)],
                    colour.filled(),
                ))
                .map_err(err)?;
            legend_area
                .draw(&Text::new(name.to_string(), (32, row_y - 8), text.clone()))
                .map_err(err)?;
            row_y += 24;
        }
        if let Some(t) = self.target {
            legend_area
                .draw(&DashedPathElement::new(
                    vec![(4, row_y), (28, row_y)],
                    6,
                    3,
                    RED.stroke_width(2),
                ))
                .map_err(err)?;
            legend_area
                .draw(&Text::new(
                    format!("{TARGET_LABEL}: {t:.2}"),
                    (32, row_y - 8),
                    text.clone(),
                ))
                .map_err(err)?;
            row_y += 24;
        }
        legend_area
            .draw(&Text::new(
                "bar: median; whisker: min–max".to_string(),
                (10, row_y - 8),
                text,
            ))
            .map_err(err)?;
        Ok(())
    }
}

/// A linear x axis over `[0, groups]` whose only ticks are the group
/// centres `i + 0.5`, so each group's label sits under its bars.
///
/// (plotters' `with_key_points` would do, but its f64 axis has no default
/// label formatting, which the mesh requires even with a custom formatter.)
struct GroupAxis {
    linear: RangedCoordf64,
    groups: usize,
}

impl GroupAxis {
    fn new(groups: usize) -> Self {
        GroupAxis {
            linear: (0.0..groups.max(1) as f64).into(),
            groups,
        }
    }
}

impl Ranged for GroupAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.max_num_points() < self.groups {
            return Vec::new();
        }
        (0..self.groups).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        self.linear.range()
    }
}

/// A log-scaled y axis whose ticks are the 1-2-3-5 steps of each decade in
/// range (1, 2, 3, 5, 10, 20, ...), or only the powers of ten if those are too
/// many; plotters' own log ticks crowd and repeat labels on short ranges.
struct LogAxis {
    log: LogCoord<f64>,
}

impl LogAxis {
    fn new(range: Range<f64>) -> Self {
        LogAxis {
            log: range.log_scale().into(),
        }
    }
}

impl Ranged for LogAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.log.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let Range { start, end } = self.log.range();
        let in_range = |steps: &[f64]| -> Vec<f64> {
            let mut out = Vec::new();
            let mut decade = 10f64.powi(start.log10().floor() as i32);
            while decade <= end {
                out.extend(
                    steps
                        .iter()
                        .map(|m| m * decade)
                        .filter(|v| (start..=end).contains(v)),
                );
                decade *= 10.0;
            }
            out
        };
        let fine = in_range(&[1.0, 2.0, 3.0, 5.0]);
        if fine.len() <= hint.max_num_points() {
            fine
        } else {
            in_range(&[1.0])
        }
    }

    fn range(&self) -> Range<f64> {
        self.log.range()
    }
}

/// The distinct items of `it`, in first-seen order.
fn unique<T: PartialEq>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in it {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 3] = [
        "mimalloc",
        "MemcgAlloc<mimalloc> per-node",
        "batched-4MiB<mimalloc>",
    ];

    fn synthetic() -> Vec<Summary> {
        let mut out = Vec::new();
        for threads in [1, 2, 4] {
            for (i, size) in [16, 64, 256, 4096].into_iter().enumerate() {
                for (a, name) in NAMES.iter().enumerate() {
                    let ns = 4.0 + 3.0 * a as f64 + 5.0 * i as f64;
                    let ratio = 1.0 / (1.0 + a as f64 * 0.5);
                    out.push(Summary {
                        allocator: name.to_string(),
                        size,
                        threads,
                        ns_per_pair: [ns * 0.9, ns, ns * 1.4],
                        ratio: [ratio * 0.8, ratio, ratio * 1.1],
                    });
                }
            }
        }
        out
    }

    /// Every text node of the SVG at `path`, which must parse as XML with an
    /// `<svg>` root.
    fn svg_texts(path: &Path) -> Vec<String> {
        let src = std::fs::read_to_string(path).expect("read svg");
        let doc = roxmltree::Document::parse(&src)
            .unwrap_or_else(|e| panic!("{} is not well-formed: {e}", path.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .map(|t| t.trim().to_string())
            .collect()
    }

    #[test]
    fn write_svgs_synthetic_summaries_writes_wellformed_svg_naming_every_allocator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("nested");
        let written = write_svgs(&out, &synthetic()).expect("write_svgs");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "shootout-1t.svg",
                "ns-1t.svg",
                "shootout-2t.svg",
                "ns-2t.svg",
                "shootout-4t.svg",
                "ns-4t.svg"
            ]
        );
        for path in &written {
            let texts = svg_texts(path);
            for name in NAMES {
                assert!(
                    texts.iter().any(|t| t == name),
                    "{} lacks {name:?}",
                    path.display()
                );
            }
            for size in ["16 B", "4096 B"] {
                assert!(
                    texts.iter().any(|t| t == size),
                    "{} lacks {size}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn write_chart_ratio_labels_target_only_where_design_sets_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sum = synthetic();
        for (threads, expected) in [(1, Some("0.77")), (2, Some("0.90")), (4, None)] {
            let path = dir.path().join(Metric::Ratio.file_name(threads));
            write_chart(&path, &sum, threads, Metric::Ratio).expect("chart");
            let label = svg_texts(&path)
                .into_iter()
                .find(|t| t.starts_with(TARGET_LABEL));
            match expected {
                Some(v) => assert_eq!(label, Some(format!("{TARGET_LABEL}: {v}"))),
                None => assert_eq!(label, None),
            }
        }
    }

    #[test]
    fn log_axis_short_range_ticks_1_2_3_5_steps() {
        let ticks = LogAxis::new(2.5..45.0).key_points(10);
        assert_eq!(ticks, [3.0, 5.0, 10.0, 20.0, 30.0]);
        let coarse = LogAxis::new(0.5..2000.0).key_points(5);
        assert_eq!(coarse, [1.0, 10.0, 100.0, 1000.0]);
    }

    #[test]
    fn write_chart_no_rows_for_threads_returns_err() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.svg");
        assert!(write_chart(&path, &synthetic(), 3, Metric::NsPerPair).is_err());
        assert!(!path.exists());
    }
}
