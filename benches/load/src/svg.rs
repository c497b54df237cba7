//! Small SVG line charts for the HTML report: linear scales, "nice" ticks (1, 2, 5 x 10^k),
//! axes with labels, a legend, gaps for missing points, and vertical event markers.
//!
//! Pure: returns strings.

use std::fmt::Write as _;

/// A linear map from a domain [d0, d1] to a range [r0, r1].
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub d0: f64,
    pub d1: f64,
    pub r0: f64,
    pub r1: f64,
}

impl Scale {
    pub fn map(&self, v: f64) -> f64 {
        if self.d1 == self.d0 {
            return self.r0;
        }
        self.r0 + (v - self.d0) * (self.r1 - self.r0) / (self.d1 - self.d0)
    }
}

/// A step of 1, 2 or 5 times a power of ten that cuts `span` into at most `max_ticks` parts.
pub fn nice_step(span: f64, max_ticks: usize) -> f64 {
    if !span.is_finite() || span <= 0.0 {
        return 1.0;
    }
    let raw = span / max_ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw * (1.0 - 1e-9) {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Ticks from `lo` up to the first multiple of the step at or above `hi`.
pub fn ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    let step = nice_step(hi - lo, max_ticks);
    let first = (lo / step).floor() * step;
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let v = first + step * i as f64;
        // Rounding noise off (0.30000000000000004).
        let v = (v / step).round() * step;
        out.push(v);
        if v >= hi - step * 1e-9 || i > 1000 {
            break;
        }
        i += 1;
    }
    out
}

/// A tick label with as many decimals as the step needs.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// XML text escaping.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Colours that stay apart for the first ten series.
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// One line; `None` values break it.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, Option<f64>)>,
}

/// A labelled vertical line.
#[derive(Debug, Clone)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The x domain is [0, x_max].
    pub x_max: f64,
    /// The y axis reaches at least this far (e.g. 100 for percentages).
    pub y_min_top: f64,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

const W: f64 = 900.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 46.0;

/// The chart as an `<svg>` element.
pub fn line_chart(c: &Chart) -> String {
    let y_max = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(c.y_min_top, f64::max);
    let y_ticks = ticks(0.0, if y_max > 0.0 { y_max } else { 1.0 }, 5);
    let y_top = *y_ticks.last().unwrap_or(&1.0);
    let x_ticks = ticks(0.0, c.x_max.max(1.0), 10);
    let x_end = c.x_max.max(1.0);
    let x = Scale {
        d0: 0.0,
        d1: x_end,
        r0: LEFT,
        r1: W - RIGHT,
    };
    let y = Scale {
        d0: 0.0,
        d1: y_top,
        r0: H - BOTTOM,
        r1: TOP,
    };
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11" role="img" aria-label="{}">"#,
        esc(&c.title)
    );
    let _ = write!(
        o,
        r#"<text x="{LEFT}" y="16" font-size="14" font-weight="bold">{}</text>"#,
        esc(&c.title)
    );
    // Grid and y ticks.
    let y_step = nice_step(y_top, 5);
    for v in &y_ticks {
        let py = y.map(*v);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            tick_label(*v, y_step)
        );
    }
    let x_step = nice_step(x_end, 10);
    for v in x_ticks.iter().filter(|v| **v <= x_end + 1e-9) {
        let px = x.map(*v);
        let _ = write!(
            o,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{:.1}" stroke="#f0f0f0"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 15.0,
            tick_label(*v, x_step)
        );
    }
    // Axes and their labels.
    let _ = write!(
        o,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let _ = write!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0,
        esc(&c.x_label)
    );
    let _ = write!(
        o,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        esc(&c.y_label)
    );
    // Lines, split at gaps.
    for s in &c.series {
        for run in runs(&s.points) {
            let pts: Vec<String> = run
                .iter()
                .map(|(px, py)| format!("{:.1},{:.1}", x.map(*px), y.map(*py)))
                .collect();
            if pts.len() == 1 {
                let (cx, cy) = (x.map(run[0].0), y.map(run[0].1));
                let _ = write!(
                    o,
                    r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="2" fill="{}"/>"#,
                    esc(&s.color)
                );
            } else {
                let _ = write!(
                    o,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
                    esc(&s.color),
                    pts.join(" ")
                );
            }
        }
    }
    // Event markers, labels staggered over three rows so close events stay readable.
    for (i, m) in c.markers.iter().enumerate() {
        if !(0.0..=x_end).contains(&m.x) {
            continue;
        }
        let px = x.map(m.x);
        let ly = TOP + 11.0 + 12.0 * (i % 3) as f64;
        let _ = write!(
            o,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{:.1}" stroke="#c00" stroke-dasharray="4 3"/><text x="{:.1}" y="{ly:.1}" fill="#c00">{}</text>"##,
            H - BOTTOM,
            px + 3.0,
            esc(&m.label)
        );
    }
    // Legend, one row under the title.
    let mut lx = LEFT;
    for s in &c.series {
        let _ = write!(
            o,
            r#"<rect x="{lx:.1}" y="28" width="14" height="4" fill="{}"/><text x="{:.1}" y="34">{}</text>"#,
            esc(&s.color),
            lx + 18.0,
            esc(&s.name)
        );
        lx += 30.0 + 6.5 * s.name.chars().count() as f64;
    }
    o.push_str("</svg>");
    o
}

/// Consecutive present points.
fn runs(points: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for &(px, py) in points {
        match py.filter(|v| v.is_finite()) {
            Some(v) => cur.push((px, v)),
            None => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_map_domain_to_range_including_inverted_ranges() {
        let s = Scale {
            d0: 0.0,
            d1: 10.0,
            r0: 100.0,
            r1: 0.0,
        };
        assert_eq!(s.map(0.0), 100.0);
        assert_eq!(s.map(10.0), 0.0);
        assert_eq!(s.map(2.5), 75.0);
        let flat = Scale {
            d0: 3.0,
            d1: 3.0,
            r0: 5.0,
            r1: 9.0,
        };
        assert_eq!(flat.map(3.0), 5.0);
    }

    #[test]
    fn steps_are_1_2_or_5_times_a_power_of_ten() {
        assert_eq!(nice_step(10.0, 10), 1.0);
        assert_eq!(nice_step(10.0, 5), 2.0);
        assert_eq!(nice_step(100.0, 5), 20.0);
        assert_eq!(nice_step(7.3, 5), 2.0);
        assert_eq!(nice_step(0.9, 5), 0.2);
        assert_eq!(nice_step(2300.0, 5), 500.0);
        assert_eq!(nice_step(0.0, 5), 1.0);
        assert_eq!(nice_step(f64::NAN, 5), 1.0);
    }

    #[test]
    fn ticks_cover_the_range_and_end_at_or_above_it() {
        assert_eq!(ticks(0.0, 10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0, 7.3, 5), [0.0, 2.0, 4.0, 6.0, 8.0]);
        let small = ticks(0.0, 0.9, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(small.len(), want.len());
        assert!(
            small.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9),
            "{small:?}"
        );
        let t = ticks(0.0, 1234.0, 5);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().expect("ticks") >= 1234.0);
        assert!(t.len() <= 7);
    }

    #[test]
    fn tick_labels_have_the_decimals_the_step_needs() {
        assert_eq!(tick_label(4.0, 2.0), "4");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc(r#"<a & "b">'"#), "&lt;a &amp; &quot;b&quot;&gt;&#39;");
    }

    #[test]
    fn gaps_split_lines() {
        let r = runs(&[
            (0.0, Some(1.0)),
            (1.0, None),
            (2.0, Some(2.0)),
            (3.0, Some(f64::NAN)),
            (4.0, Some(3.0)),
            (5.0, Some(4.0)),
        ]);
        assert_eq!(
            r,
            vec![
                vec![(0.0, 1.0)],
                vec![(2.0, 2.0)],
                vec![(4.0, 3.0), (5.0, 4.0)]
            ]
        );
    }

    #[test]
    fn a_chart_has_its_title_legend_lines_and_markers() {
        let svg = line_chart(&Chart {
            title: "Latency <p99>".into(),
            x_label: "seconds".into(),
            y_label: "ms".into(),
            x_max: 10.0,
            y_min_top: 0.0,
            series: vec![Series {
                name: "p99".into(),
                color: PALETTE[0].into(),
                points: (0..10).map(|i| (i as f64 + 0.5, Some(i as f64))).collect(),
            }],
            markers: vec![
                Marker {
                    x: 5.0,
                    label: "kill b2".into(),
                },
                Marker {
                    x: 50.0,
                    label: "outside".into(),
                },
            ],
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("Latency &lt;p99&gt;"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("kill b2"));
        assert!(
            !svg.contains("outside"),
            "markers outside the x range are left out"
        );
        assert!(svg.contains(">seconds<") && svg.contains(">ms<"));
    }
}
