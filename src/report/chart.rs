//! Charts as inline SVG: lines, stacked areas and shaded phase bands on a linear or log axis.
//!
//! Written by hand rather than with a plotting crate: the report needs five chart shapes, all
//! of them lines or areas over time, and a string of SVG elements whose text the browser lays
//! out. A plotting library would measure text with a font it loads at render time, which
//! either pulls a font stack into the build or draws labels at guessed widths; here the browser
//! does it, the output is a few kilobytes per chart and the same bytes on every machine.
//! Every chart carries `data-chart` (its name) and `data-points` (how many data points it
//! draws) so that a test can tell an empty chart from a drawn one.

use std::fmt::Write;

/// How values on the y axis read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unit {
    Count,
    /// Microseconds, written as µs, ms or s.
    Micros,
    Seconds,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Count => count(v),
            Unit::Micros => micros(v),
            Unit::Seconds => format!("{}s", trim(v)),
        }
    }
}

/// What the x axis is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum XAxis {
    /// Seconds since the run started.
    Seconds,
    /// Percentiles as "nines": x = -log10(1 - q), so 0 is the minimum (p0), 1 is p90,
    /// 2 is p99, 3 is p99.9.
    Nines,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Each point holds until the next (a per-second count covers its whole second), so a
    /// one-second spike is drawn one second wide, not as a triangle two wide.
    pub step: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, color: &'static str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color,
            points,
            dashed: false,
            step: false,
        }
    }

    pub fn steps(mut self) -> Series {
        self.step = true;
        self
    }

    pub fn dashed(mut self) -> Series {
        self.dashed = true;
        self
    }
}

/// A named stretch of the x axis (a phase), shaded behind the data.
#[derive(Clone, Debug)]
pub struct Band {
    pub start: f64,
    pub end: f64,
    pub label: String,
}

pub struct Chart {
    pub name: &'static str,
    pub title: String,
    pub y_label: String,
    pub unit: Unit,
    pub log_y: bool,
    pub x: XAxis,
    pub bands: Vec<Band>,
    /// Drawn as areas stacked on each other, under the lines.
    pub stacks: Vec<Series>,
    pub lines: Vec<Series>,
}

pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

const W: f64 = 900.0;
const H: f64 = 300.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 64.0;

impl Chart {
    pub fn new(name: &'static str, title: impl Into<String>, unit: Unit) -> Chart {
        Chart {
            name,
            title: title.into(),
            y_label: String::new(),
            unit,
            log_y: false,
            x: XAxis::Seconds,
            bands: Vec::new(),
            stacks: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Data points drawn (a chart with none says so instead of drawing empty axes).
    pub fn points(&self) -> usize {
        self.stacks
            .iter()
            .chain(&self.lines)
            .map(|s| s.points.iter().filter(|p| p.1.is_finite()).count())
            .sum()
    }

    pub fn svg(&self) -> String {
        let mut out = String::new();
        let points = self.points();
        let _ = write!(
            out,
            r#"<figure class="chart"><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" data-chart="{}" data-points="{points}"><title>{}</title>"#,
            self.name,
            esc(&self.title)
        );
        let stacked = stack(&self.stacks);
        let all = stacked.iter().chain(&self.lines);
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for s in all {
            for &(x, y) in &s.points {
                if !x.is_finite() || !y.is_finite() || (self.log_y && y <= 0.0) {
                    continue;
                }
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
        for b in &self.bands {
            x0 = x0.min(b.start);
            x1 = x1.max(b.end);
        }
        // Nothing finite to draw (or a span no axis can hold: a damaged summary).
        if points == 0 || x0 > x1 || !(x1 - x0).is_finite() || !(y1 - y0).is_finite() {
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle" class="empty">no data</text></svg><figcaption>{}</figcaption></figure>"#,
                W / 2.0,
                H / 2.0,
                esc(&self.title)
            );
            return out;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if self.x == XAxis::Nines {
            x1 = x1.ceil();
        }
        let y_axis = if self.log_y {
            let lo = if y0 == f64::MAX { 1.0 } else { y0 };
            let hi = if y1 == f64::MIN { 10.0 } else { y1 };
            YAxis::log(lo, hi)
        } else {
            YAxis::linear(0.0_f64.min(y0.min(0.0)), y1.max(1.0))
        };
        let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
        let py = |y: f64| TOP + (1.0 - y_axis.fraction(y)) * (H - TOP - BOTTOM);
        let _ = write!(
            out,
            r#"<text x="{LEFT}" y="18" class="title">{}</text>"#,
            esc(&self.title)
        );
        // Phase bands, alternately shaded, named at the top.
        for (i, b) in self.bands.iter().enumerate() {
            let (a, z) = (px(b.start), px(b.end.max(b.start)));
            let fill = if i % 2 == 0 { "#eef2f7" } else { "#f8f9fb" };
            let _ = write!(
                out,
                r#"<rect x="{a:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{}</title></rect>"#,
                (z - a).max(0.5),
                H - TOP - BOTTOM,
                esc(&b.label)
            );
            if z - a > 24.0 {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{}" class="band">{}</text>"#,
                    a + 3.0,
                    TOP + 11.0,
                    esc(&b.label)
                );
            }
        }
        // Y grid and labels.
        for tick in y_axis.ticks() {
            let y = py(tick);
            let _ = write!(
                out,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                self.unit.format(tick)
            );
        }
        // X ticks.
        for tick in x_ticks(self.x, x0, x1) {
            let x = px(tick);
            let label = match self.x {
                XAxis::Seconds => format!("{}s", trim(tick)),
                XAxis::Nines => nines_label(tick),
            };
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{label}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 4.0,
                H - BOTTOM + 16.0
            );
        }
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{:.1}" stroke="#999"/><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/>"##,
            H - BOTTOM,
            W - RIGHT,
            H - BOTTOM,
            H - BOTTOM
        );
        if !self.y_label.is_empty() {
            let _ = write!(
                out,
                r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle" class="axis">{}</text>"#,
                TOP + (H - TOP - BOTTOM) / 2.0,
                esc(&self.y_label)
            );
        }
        // Stacked areas: each from the one below it to its own top.
        let mut below: Vec<(f64, f64)> = Vec::new();
        for s in &stacked {
            if s.points.is_empty() {
                continue;
            }
            let mut d = String::new();
            for (i, &(x, y)) in s.points.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { "L" },
                    px(x),
                    py(y)
                );
            }
            let base: Vec<(f64, f64)> = if below.len() == s.points.len() {
                below.clone()
            } else {
                s.points.iter().map(|&(x, _)| (x, 0.0)).collect()
            };
            for &(x, y) in base.iter().rev() {
                let _ = write!(d, "L{:.1},{:.1}", px(x), py(y.max(y_axis.floor())));
            }
            let _ = write!(
                out,
                r#"<path d="{d}Z" fill="{}" fill-opacity="0.55" stroke="none"><title>{}</title></path>"#,
                s.color,
                esc(&s.name)
            );
            below = s.points.clone();
        }
        for s in &self.lines {
            let mut d = String::new();
            let mut pen_up = true;
            let mut last_y = 0.0;
            for &(x, y) in &s.points {
                if !y.is_finite() || (self.log_y && y <= 0.0) {
                    pen_up = true;
                    continue;
                }
                if s.step && !pen_up {
                    let _ = write!(d, "L{:.1},{:.1}", px(x), py(last_y));
                }
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if pen_up { "M" } else { "L" },
                    px(x),
                    py(y)
                );
                pen_up = false;
                last_y = y;
            }
            if s.step
                && !pen_up
                && let [.., (a, _), (b, _)] = s.points.as_slice()
            {
                // The last point's own span, to the edge of its interval.
                let end = (b + (b - a)).min(x1);
                let _ = write!(d, "L{:.1},{:.1}", px(end), py(last_y));
            }
            // A point with no drawable neighbour would be an invisible segment: a dot instead.
            let drawable = |i: usize| {
                s.points
                    .get(i)
                    .is_some_and(|p| p.1.is_finite() && !(self.log_y && p.1 <= 0.0))
            };
            for (i, &(x, y)) in s.points.iter().enumerate() {
                let lonely = drawable(i) && !drawable(i + 1) && (i == 0 || !drawable(i - 1));
                if lonely {
                    let _ = write!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                        px(x),
                        py(y),
                        s.color
                    );
                }
            }
            let _ = write!(
                out,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.6"{}><title>{}</title></path>"#,
                s.color,
                if s.dashed {
                    r#" stroke-dasharray="5 3""#
                } else {
                    ""
                },
                esc(&s.name)
            );
        }
        // Legend under the axis.
        let mut lx = LEFT;
        let mut ly = H - 22.0;
        for s in self.stacks.iter().chain(&self.lines) {
            let width = 30.0 + 6.5 * s.name.chars().count() as f64;
            if lx + width > W - RIGHT && lx > LEFT {
                // A second row; past it, the names are in each line's tooltip.
                if ly > H - 22.0 {
                    break;
                }
                lx = LEFT;
                ly = H - 8.0;
            }
            let dash = if s.dashed {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r#"<line x1="{lx:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
                lx + 18.0,
                s.color,
                lx + 22.0,
                ly + 4.0,
                esc(&s.name)
            );
            lx += width;
        }
        let _ = write!(
            out,
            "</svg><figcaption>{}</figcaption></figure>",
            esc(&self.title)
        );
        out
    }
}

/// Stacked series: each point is the sum of its own and the ones below (series are aligned
/// by index; they come from the same timeline).
fn stack(series: &[Series]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    for s in series {
        let mut next = s.clone();
        if let Some(prev) = out.last()
            && prev.points.len() == next.points.len()
        {
            for (p, q) in next.points.iter_mut().zip(&prev.points) {
                p.1 += q.1;
            }
        }
        out.push(next);
    }
    out
}

struct YAxis {
    log: bool,
    lo: f64,
    hi: f64,
}

impl YAxis {
    fn linear(lo: f64, hi: f64) -> YAxis {
        let step = nice_step((hi - lo) / 5.0);
        YAxis {
            log: false,
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
        }
    }

    fn log(lo: f64, hi: f64) -> YAxis {
        let lo = 10f64.powf(lo.max(1e-9).log10().floor());
        let mut hi = 10f64.powf(hi.max(lo).log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        YAxis { log: true, lo, hi }
    }

    fn floor(&self) -> f64 {
        self.lo
    }

    fn fraction(&self, v: f64) -> f64 {
        if self.log {
            let v = v.max(self.lo);
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    /// At most `MAX_TICKS`, each computed from its index (adding a step to a huge value
    /// can leave it unchanged).
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            (0..MAX_TICKS)
                .map(|i| self.lo * 10f64.powi(i as i32))
                .take_while(|v| *v <= self.hi * 1.0001)
                .collect()
        } else {
            let step = nice_step((self.hi - self.lo) / 5.0);
            (0..MAX_TICKS)
                .map(|i| self.lo + step * i as f64)
                .take_while(|v| *v <= self.hi + step * 1e-6)
                .collect()
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let mantissa = raw / magnitude;
    let nice = if mantissa <= 1.0 {
        1.0
    } else if mantissa <= 2.0 {
        2.0
    } else if mantissa <= 5.0 {
        5.0
    } else {
        10.0
    };
    (nice * magnitude).max(1e-9)
}

const MAX_TICKS: usize = 24;

fn x_ticks(axis: XAxis, x0: f64, x1: f64) -> Vec<f64> {
    match axis {
        XAxis::Nines => (0..=(x1.ceil() as i64).clamp(1, MAX_TICKS as i64))
            .map(|n| n as f64)
            .collect(),
        XAxis::Seconds => {
            let step = nice_step((x1 - x0) / 8.0).max(1.0);
            let first = (x0 / step).ceil() * step;
            (0..MAX_TICKS)
                .map(|i| first + step * i as f64)
                .take_while(|v| *v <= x1 + 1e-9)
                .collect()
        }
    }
}

/// `0` -> "0%", `1` -> "90%", `2` -> "99%", `3` -> "99.9%".
pub fn nines_label(n: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-n));
    let digits = (n.round() as usize).saturating_sub(2);
    format!("{q:.digits$}%")
}

fn trim(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn count(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

pub fn micros(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}s", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}ms", trim(v / 1e3))
    } else {
        format!("{}µs", trim(v))
    }
}

/// HTML/XML text escaping.
pub fn esc(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_chart_says_so() {
        let chart = Chart::new("x", "Nothing", Unit::Count);
        let svg = chart.svg();
        assert!(svg.contains(r#"data-points="0""#));
        assert!(svg.contains("no data"));
    }

    #[test]
    fn lines_and_stacks_are_drawn_and_escaped() {
        let mut chart = Chart::new("c", "a <b> & c", Unit::Count);
        chart.lines.push(Series::new(
            "open",
            PALETTE[0],
            vec![(0.0, 1.0), (1.0, 5.0)],
        ));
        chart.stacks.push(Series::new(
            "refused",
            PALETTE[1],
            vec![(0.0, 1.0), (1.0, 2.0)],
        ));
        chart.bands.push(Band {
            start: 0.0,
            end: 1.0,
            label: "ramp".into(),
        });
        let svg = chart.svg();
        assert!(svg.contains(r#"data-points="4""#), "{svg}");
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<path").count(), 2);
    }

    #[test]
    fn nines_read_as_percentiles() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(5.0), "99.999%");
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(micros(15.0), "15µs");
        assert_eq!(micros(23_600.0), "23.6ms");
        assert_eq!(micros(2_000_000.0), "2s");
        assert_eq!(count(55_000.0), "55k");
        assert_eq!(count(1_000_000.0), "1M");
    }

    #[test]
    fn log_axes_cover_the_data_in_decades() {
        let axis = YAxis::log(15.0, 130_000.0);
        assert_eq!(axis.ticks(), vec![10.0, 100.0, 1e3, 1e4, 1e5, 1e6]);
        assert!((axis.fraction(10.0)).abs() < 1e-9);
        assert!((axis.fraction(1e6) - 1.0).abs() < 1e-9);
    }
}
