//! The budgets page's chart. A stand-in of the console branch with the signature the wt-ops
//! branch's chart has (that branch's file replaces this one at the merge): one polyline per
//! series, scaled to the highest count, sized by its `viewBox`.

use std::fmt::Write;

/// One line of the chart: a count per minute, oldest first, the current minute last.
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [u64],
    pub class: &'a str,
}

/// The chart as an `<svg>` element.
pub fn minutes_svg(series: &[Series<'_>]) -> String {
    let (w, h, pad) = (480.0_f64, 200.0_f64, 24.0_f64);
    let minutes = series
        .iter()
        .map(|s| s.points.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img"><title>API calls per minute</title><text x="2" y="12" font-size="10">{top}</text>"#
    );
    for s in series {
        let n = s.points.len();
        let points: Vec<String> = s
            .points
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = pad + (w - 2.0 * pad) * (minutes - n + i) as f64 / (minutes - 1) as f64;
                let y = h - pad - (h - 2.0 * pad) * *v as f64 / top;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="{}" fill="none" stroke="currentColor" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            escape(s.class),
            points.join(" "),
            escape(s.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
