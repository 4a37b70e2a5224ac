//! The budgets page's chart: API calls per minute over the last hour, one line per series, drawn
//! on the server as SVG (no script, readable by screen readers through its `<title>` and `<desc>`).
//! Sized by its `viewBox` only, so it scales to the page's width (a 390 px phone included).

use std::fmt::Write;

/// One line of the chart: a count per minute, oldest first, the current minute last
/// (`RateLimiter::calls_per_minute`). `class` is set on the line and its legend entry for the
/// page's CSS; a built-in colour shows when no rule matches.
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [u64],
    pub class: &'a str,
}

const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
/// Room for the x labels and the legend.
const BOTTOM: f64 = 58.0;
/// Colours for series the page's CSS does not style (distinguishable in greyscale too).
const PALETTE: [&str; 4] = ["#1f6feb", "#c2410c", "#15803d", "#7e22ce"];

/// The chart as an `<svg>` element. Every series is aligned on its last point (now); the x axis
/// spans the longest series.
pub fn minutes_svg(series: &[Series<'_>]) -> String {
    let minutes = series.iter().map(|s| s.points.len()).max().unwrap_or(0);
    let highest = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .max()
        .unwrap_or(0);
    let (top, step) = scale(highest);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bottom = TOP + plot_h;
    let dx = plot_w / (minutes.max(2) - 1) as f64;
    // Minute `ago` (0 = now) at x; value at y.
    let x = |ago: usize| LEFT + plot_w - ago as f64 * dx;
    let y = |v: u64| bottom - v as f64 / top as f64 * plot_h;

    let names = series
        .iter()
        .map(|s| escape(s.label))
        .collect::<Vec<_>>()
        .join(", ");
    let title = format!("API calls per minute, last {minutes} minutes: {names}");
    let desc = series
        .iter()
        .map(|s| {
            let total: u64 = s.points.iter().sum();
            let peak = s.points.iter().copied().max().unwrap_or(0);
            let now = s.points.last().copied().unwrap_or(0);
            format!(
                "{}: {total} calls in all, at most {peak} in a minute, {now} this minute.",
                escape(s.label)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet" role="img" aria-labelledby="chart-title chart-desc" font-family="system-ui, sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<title id="chart-title">{title}</title><desc id="chart-desc">{desc}</desc>"#
    );

    // The y axis: gridlines and labels at each step.
    svg.push_str(r##"<g class="axis y-axis" fill="#555" stroke="#ddd">"##);
    let mut v = 0;
    while v <= top {
        let yy = y(v);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end" stroke="none">{v}</text>"#,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0
        );
        v += step;
    }
    svg.push_str("</g>");

    // The x axis: a tick every 15 minutes back from now (every 5 on a short chart).
    let every = if minutes > 20 { 15 } else { 5 };
    svg.push_str(r##"<g class="axis x-axis" fill="#555" stroke="#999">"##);
    let _ = write!(
        svg,
        r#"<line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}"/>"#,
        LEFT + plot_w
    );
    let mut ago = 0;
    while minutes > 0 && ago < minutes {
        let xx = x(ago);
        let label = if ago == 0 {
            "now".to_string()
        } else {
            format!("\u{2212}{ago} min")
        };
        let anchor = if ago == 0 { "end" } else { "middle" };
        let _ = write!(
            svg,
            r#"<line x1="{xx:.1}" y1="{bottom:.1}" x2="{xx:.1}" y2="{:.1}"/><text x="{xx:.1}" y="{:.1}" text-anchor="{anchor}" stroke="none">{label}</text>"#,
            bottom + 4.0,
            bottom + 17.0
        );
        ago += every;
    }
    svg.push_str("</g>");

    // The lines.
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let n = s.points.len();
        let points = s
            .points
            .iter()
            .enumerate()
            .map(|(j, v)| format!("{:.1},{:.1}", x(n - 1 - j), y(*v)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            svg,
            r#"<polyline class="series {}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round" points="{points}"><title>{}</title></polyline>"#,
            class_name(s.class),
            escape(s.label)
        );
    }

    // The legend, under the x labels.
    let legend_y = HEIGHT - 12.0;
    let mut lx = LEFT;
    svg.push_str(r#"<g class="legend">"#);
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let total: u64 = s.points.iter().sum();
        let text = format!("{} ({total})", escape(s.label));
        let _ = write!(
            svg,
            r##"<line class="series {}" x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{legend_y:.1}" fill="#222">{text}</text>"##,
            class_name(s.class),
            legend_y - 4.0,
            lx + 18.0,
            legend_y - 4.0,
            lx + 23.0
        );
        // About 6.5 units a character at this size.
        lx += 23.0 + 6.5 * (s.label.chars().count() + total.to_string().len() + 3) as f64 + 16.0;
    }
    svg.push_str("</g></svg>");
    svg
}

/// The y axis's top and its step: a 1, 2 or 5 times a power of ten, at most four steps to the
/// top, and the top at or above `highest` (an idle hour still gets an axis from 0 to 1).
fn scale(highest: u64) -> (u64, u64) {
    let highest = highest.max(1);
    let mut magnitude = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = m * magnitude;
            if step * 4 >= highest {
                return (highest.div_ceil(step) * step, step);
            }
        }
        magnitude *= 10;
    }
}

/// Text for SVG content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// A CSS class name: letters, digits, `-` and `_` only (anything else is dropped).
fn class_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(hay: &str, needle: &str) -> usize {
        hay.matches(needle).count()
    }

    #[test]
    fn an_hour_of_two_apis_is_two_lines_with_axes_a_legend_and_a_title() {
        let mut exact = vec![0u64; 60];
        exact[59] = 7;
        exact[30] = 42;
        let precoro = vec![3u64; 60];
        let svg = minutes_svg(&[
            Series {
                label: "Exact",
                points: &exact,
                class: "exact",
            },
            Series {
                label: "Precoro",
                points: &precoro,
                class: "precoro",
            },
        ]);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"), "{svg}");
        assert!(
            svg.contains(r#"viewBox="0 0 480 230""#),
            "scales with its width"
        );
        assert!(!svg.contains("height=\""), "no fixed height: {svg}");
        assert!(
            svg.contains(
                "<title id=\"chart-title\">API calls per minute, last 60 minutes: Exact, Precoro</title>"
            ),
            "{svg}"
        );
        assert!(svg.contains("Exact: 49 calls in all, at most 42 in a minute, 7 this minute."));
        assert_eq!(count(&svg, "<polyline "), 2);
        assert!(
            svg.contains(r#"class="series exact""#) && svg.contains(r#"class="series precoro""#)
        );
        // 42 → a top of 50 in steps of 20 would leave it over: steps of 20 up to 60.
        assert_eq!(scale(42), (60, 20));
        for tick in [">0<", ">20<", ">40<", ">60<"] {
            assert!(svg.contains(tick), "y tick {tick}");
        }
        for tick in [
            ">now<",
            ">\u{2212}15 min<",
            ">\u{2212}30 min<",
            ">\u{2212}45 min<",
        ] {
            assert!(svg.contains(tick), "x tick {tick}");
        }
        assert!(svg.contains(">Exact (49)<") && svg.contains(">Precoro (180)<"));
        // Now is the right edge of the plot, the first minute its left edge.
        assert!(svg.contains(&format!(
            "{:.1},{:.1}",
            WIDTH - RIGHT,
            TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - 7.0 / 60.0)
        )));
        assert!(svg.contains(&format!("{LEFT:.1},")));
    }

    #[test]
    fn labels_and_classes_cannot_break_out_of_the_svg() {
        let svg = minutes_svg(&[Series {
            label: "<script>alert('x')</script> & \"co\"",
            points: &[1, 2],
            class: "a\" onload=\"evil",
        }]);
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(
            svg.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;co&quot;")
        );
        assert!(!svg.contains("onload=\""), "{svg}");
        assert!(svg.contains(r#"class="series aonloadevil""#), "{svg}");
    }

    #[test]
    fn an_idle_or_empty_chart_still_draws_its_axes() {
        let svg = minutes_svg(&[Series {
            label: "Exact",
            points: &[0; 60],
            class: "exact",
        }]);
        assert_eq!(scale(0), (1, 1));
        assert!(svg.contains(">0<") && svg.contains(">1<"), "{svg}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let empty = minutes_svg(&[]);
        assert!(empty.contains("last 0 minutes") && empty.ends_with("</svg>"));
        assert!(!empty.contains("NaN") && !empty.contains("<polyline"));
        let one = minutes_svg(&[Series {
            label: "Exact",
            points: &[5],
            class: "exact",
        }]);
        assert!(!one.contains("NaN") && one.contains(">now<"), "{one}");
    }

    #[test]
    fn the_scale_uses_round_steps() {
        assert_eq!(scale(1), (1, 1));
        assert_eq!(scale(4), (4, 1));
        assert_eq!(scale(5), (6, 2));
        assert_eq!(scale(60), (60, 20));
        assert_eq!(scale(61), (80, 20));
        assert_eq!(scale(1500), (1500, 500));
        assert_eq!(scale(3001), (4000, 1000));
    }

    #[test]
    fn a_short_series_is_aligned_on_now() {
        let svg = minutes_svg(&[
            Series {
                label: "long",
                points: &[1; 10],
                class: "a",
            },
            Series {
                label: "short",
                points: &[1; 3],
                class: "b",
            },
        ]);
        assert!(svg.contains(">\u{2212}5 min<") && svg.contains(">now<"));
        let lines: Vec<&str> = svg.split("<polyline ").skip(1).collect();
        let last_point = |l: &str| {
            let pts = l.split("points=\"").nth(1).unwrap();
            pts.split('"')
                .next()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(last_point(lines[0]), last_point(lines[1]));
    }
}
