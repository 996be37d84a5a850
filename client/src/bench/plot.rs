//! PNG plots of bench results: latency (p50 and p99) and deliveries per
//! second against users, one series per label, on a log axis of users.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Csv { path: PathBuf, what: String },
    #[error("no TrueType font found (looked in {looked}); set CHAT_BENCH_FONT to a .ttf file")]
    NoFont { looked: String },
    #[error("drawing {path}: {what}")]
    Draw { path: PathBuf, what: String },
}

/// The columns the plots use, one row of a results CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub label: String,
    pub users: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub deliveries_per_s: f64,
}

pub fn read_points(path: &Path) -> Result<Vec<Point>, PlotError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Read { path: path.into(), source })?;
    parse_points(&text).map_err(|what| PlotError::Csv { path: path.into(), what })
}

pub fn parse_points(text: &str) -> Result<Vec<Point>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or("empty file")?.split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).ok_or(format!("no column {name}"));
    let (label, users, p50, p99, rate) =
        (column("label")?, column("users")?, column("p50_ms")?, column("p99_ms")?, column("deliveries_per_s")?);
    lines
        .enumerate()
        .map(|(i, line)| {
            let cells: Vec<&str> = line.split(',').collect();
            let number = |at: usize| -> Result<f64, String> {
                cells.get(at).and_then(|c| c.parse::<f64>().ok()).ok_or(format!(
                    "line {}: column {} is not a number",
                    i + 2,
                    header[at]
                ))
            };
            Ok(Point {
                label: cells.get(label).ok_or(format!("line {}: no label", i + 2))?.to_string(),
                users: number(users)?,
                p50_ms: number(p50)?,
                p99_ms: number(p99)?,
                deliveries_per_s: number(rate)?,
            })
        })
        .collect()
}

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = REGISTERED.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("CHAT_BENCH_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                    "/usr/share/fonts/TTF/DejaVuSans.ttf",
                    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                    "/System/Library/Fonts/Supplemental/Arial.ttf",
                ]
                .map(PathBuf::from),
            )
            .collect();
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered once for the process's life, as plotters needs.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
    });
    result.clone().map_err(|looked| PlotError::NoFont { looked })
}

/// Series by label, points by users.
fn series(points: &[Point]) -> BTreeMap<&str, Vec<&Point>> {
    let mut by_label: BTreeMap<&str, Vec<&Point>> = BTreeMap::new();
    for p in points {
        by_label.entry(p.label.as_str()).or_default().push(p);
    }
    for s in by_label.values_mut() {
        s.sort_by(|a, b| a.users.total_cmp(&b.users));
    }
    by_label
}

type Metric = fn(&Point) -> f64;

fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    points: &[Point],
    metrics: &[(&str, Metric, bool)],
) -> Result<(), PlotError> {
    let draw = |what: String| PlotError::Draw { path: path.into(), what };
    let users = points.iter().map(|p| p.users);
    let (min_users, max_users) = users.fold((f64::MAX, f64::MIN), |(lo, hi), u| (lo.min(u), hi.max(u)));
    let values = || points.iter().flat_map(|p| metrics.iter().map(move |(_, f, _)| f(p))).filter(|v| *v > 0.0);
    let max_y = values().fold(1e-3_f64, f64::max);
    let min_y = values().fold(max_y, f64::min);
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        // Both axes logarithmic: the emulator path is milliseconds where the
        // memory bus is tenths of one, and users span two decades.
        .build_cartesian_2d((min_users * 0.9..max_users * 1.1).log_scale(), (min_y * 0.8..max_y * 1.25).log_scale())
        .map_err(|e| draw(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("users (log scale)")
        .y_desc(format!("{y_label} (log scale)"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| draw(e.to_string()))?;
    for (i, (label, rows)) in series(points).into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        for (name, metric, dashed) in metrics {
            let data: Vec<(f64, f64)> = rows.iter().map(|p| (p.users, metric(p))).filter(|(_, y)| *y > 0.0).collect();
            let legend = if name.is_empty() { label.to_owned() } else { format!("{label} {name}") };
            let style = ShapeStyle { color, filled: true, stroke_width: if *dashed { 1 } else { 2 } };
            chart
                .draw_series(LineSeries::new(data.clone(), style))
                .map_err(|e| draw(e.to_string()))?
                .label(legend)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(data.into_iter().map(|(x, y)| Circle::new((x, y), 3, style.filled())))
                .map_err(|e| draw(e.to_string()))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| draw(e.to_string()))?;
    root.present().map_err(|e| draw(e.to_string()))
}

/// Writes `latency.png` and `throughput.png` into `dir`; returns their paths.
pub fn plot(points: &[Point], dir: &Path, title: &str) -> Result<Vec<PathBuf>, PlotError> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Read { path: dir.into(), source })?;
    let latency = dir.join("latency.png");
    line_chart(
        &latency,
        &format!("{title}: send → receive latency (p99 thick, p50 thin)"),
        "milliseconds",
        points,
        &[("p99", |p| p.p99_ms, false), ("p50", |p| p.p50_ms, true)],
    )?;
    let throughput = dir.join("throughput.png");
    line_chart(
        &throughput,
        &format!("{title}: deliveries per second"),
        "deliveries / s",
        points,
        &[("", |p| p.deliveries_per_s, false)],
    )?;
    Ok(vec![latency, throughput])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "label,users,p50_ms,p99_ms,deliveries_per_s\nmemory,50,0.4,1.0,200\nmemory,100,0.5,1.5,400\nbaseline,50,0.2,0.6,200\n";

    #[test]
    fn parses_the_columns_it_needs_by_name() {
        let points = parse_points(CSV).expect("parses");
        assert_eq!(points.len(), 3);
        assert_eq!(points[1].users, 100.0);
        assert_eq!(points[2].label, "baseline");
        assert!(parse_points("label,users\nx,1\n").expect_err("missing columns").contains("p50_ms"));
        assert!(parse_points(&CSV.replace("0.5,", "fast,")).expect_err("bad number").contains("line 3"));
        assert!(parse_points("").is_err());
    }

    /// Real PNGs come out (when the machine has a font, as this one does).
    #[test]
    fn writes_png_files() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        let points = parse_points(CSV).expect("parses");
        match plot(&points, &dir, "test") {
            Ok(paths) => {
                for path in paths {
                    let bytes = std::fs::read(&path).expect("written");
                    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
                }
            }
            Err(PlotError::NoFont { .. }) if std::env::var_os("CHAT_BENCH_FONT").is_none() => {}
            Err(e) => panic!("{e}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
