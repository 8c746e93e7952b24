//! Drawing: turns the `App` (and the snapshot it holds) into one frame. Pure: it reads no clock
//! and no channel, so a `TestBackend` renders exactly what a terminal would.
//!
//! Layout: a header (profile, state, phase, time, agents, thresholds), a tab bar, the selected
//! view, and a key line. Views adapt to the area: at 80x24 the overview shows the connection
//! figures, two charts and a compact latency table; from 132x36 it also shows the percentile
//! plot and the errors. The Latency view has the full table (last interval and whole run).

use std::time::Duration;

use hdrhistogram::Histogram;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Cell, Chart, Clear, Dataset, Gauge, GraphType, Paragraph, Row, Table, Tabs, Wrap,
};

use super::app::{App, Dialog, View};
use crate::live::{LiveSnapshot, RunState};
use crate::metrics::{ErrorKind, Latency};
use crate::profile::duration::human_micros;
use crate::report::summary::{ScopeCounts, ThresholdResult};

/// The rates chart shows this much of the run's recent past.
const RATE_WINDOW_S: u64 = 120;
/// Overview shows every panel at once from this size on: charts on the left, and on the right
/// the compact latency table at its natural width (`RIGHT_COLUMN`).
const WIDE: (u16, u16) = (132, 36);
const RIGHT_COLUMN: u16 = 71;

const TITLE: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);
const HEAD: Style = Style::new().add_modifier(Modifier::BOLD);
const CONNECTS: Color = Color::Green;
const CLOSES: Color = Color::Yellow;
const ERRORS: Color = Color::Red;
const OPEN: Color = Color::Cyan;
/// One colour per latency metric, in `Latency::ALL` order, for the percentile plot.
const METRIC_COLORS: [Color; Latency::COUNT] = [
    Color::Cyan,
    Color::Blue,
    Color::Magenta,
    Color::Green,
    Color::Yellow,
    Color::White,
    Color::LightRed,
];

/// Draws the whole dashboard.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let thresholds = header_threshold_lines(app, area.width);
    let header_height = 1 + thresholds.len() as u16;
    let [header, tabs, body, keys] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, app, thresholds);
    draw_tabs(frame, tabs, app);
    match &app.snapshot {
        None => {
            let text = Paragraph::new(vec![
                Line::default(),
                Line::from(
                    "Waiting for the first figures: they arrive a second after the load starts.",
                )
                .centered(),
            ])
            .style(DIM);
            frame.render_widget(text, body);
        }
        Some(s) => match app.view {
            View::Overview => draw_overview(frame, body, s),
            View::Latency => draw_latency_view(frame, body, s),
            View::Errors => draw_errors_view(frame, body, s),
            View::Agents => draw_agents(frame, body, s, app.scroll),
            View::Sources => draw_sources(frame, body, s, app.scroll),
            View::Targets => draw_targets(frame, body, s, app.scroll),
        },
    }
    draw_keys(frame, keys, app);
    match app.dialog {
        Some(Dialog::Help) => draw_help(frame, area),
        Some(Dialog::ConfirmStop) => draw_confirm(
            frame,
            area,
            " Stop the run? ",
            "Stops opening, closes every connection and writes the summary.",
            "y, q, Ctrl-C: stop      n, Esc: keep running",
        ),
        Some(Dialog::ConfirmLeave) => draw_confirm(
            frame,
            area,
            " Leave now? ",
            "The run is closing its connections. Leaving now skips the summary and the --out files (exit code 3).",
            "y, q, Ctrl-C: leave      n, Esc: wait",
        ),
        None => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A run's clock: `12.3s`, `4m05s`, `1h02m`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn latency_cell(h: &Histogram<u64>, q: Option<f64>) -> String {
    if h.is_empty() {
        return "-".to_string();
    }
    human_micros(match q {
        Some(q) => h.value_at_quantile(q),
        None => h.max(),
    })
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

/// A share as a bar of `width` cells, for skew between sources or targets.
fn share_bar(part: u64, whole: u64, width: usize) -> String {
    const EIGHTHS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if whole == 0 {
        return String::new();
    }
    let eighths = (part as f64 / whole as f64 * (width * 8) as f64).round() as usize;
    let eighths = eighths.min(width * 8);
    format!("{}{}", "█".repeat(eighths / 8), EIGHTHS[eighths % 8])
}

fn observed_text(t: &ThresholdResult) -> String {
    match (t.observed, t.unit) {
        (None, _) => "no samples".to_string(),
        (Some(v), "us") => human_micros(v.round() as u64),
        (Some(v), "ratio") => format!("{v:.4}"),
        (Some(v), _) => format!("{v}"),
    }
}

fn bordered(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::bordered().title(title).border_style(DIM)
}

/// Latency metrics worth a row: connect always, the others once they have samples (so a
/// protocol without a handshake shows no handshake row).
fn shown_metrics(s: &LiveSnapshot) -> Vec<Latency> {
    Latency::ALL
        .into_iter()
        // Disconnect times are an input to the recovery figures, not a latency to read.
        .filter(|m| *m != Latency::Disconnect)
        .filter(|m| *m == Latency::Connect || !s.total_latency.get(*m).is_empty())
        .collect()
}

fn metric_color(metric: Latency) -> Color {
    let index = Latency::ALL.iter().position(|m| *m == metric).unwrap_or(0);
    METRIC_COLORS[index % METRIC_COLORS.len()]
}

/// How far the plan has got, and how much of it is left. Plan time is wall time less time
/// spent paused: `planned` has grown by the pauses that ended; a pause under way (since
/// `paused_at`, as far as the snapshots tell) freezes both figures.
fn plan_clock(s: &LiveSnapshot, paused_at: Option<Duration>) -> (Duration, Duration) {
    let total = s.spans.last().map_or(Duration::ZERO, |span| span.end);
    let shift = s.planned.saturating_sub(total);
    let now = match (s.state, paused_at) {
        (RunState::Paused, Some(at)) => at.min(s.elapsed),
        _ => s.elapsed,
    };
    (now.saturating_sub(shift), s.planned.saturating_sub(now))
}

// ---------------------------------------------------------------------------------------------
// Header, tabs, keys

fn state_span(app: &App) -> Span<'static> {
    let (text, color) = match app.state() {
        None => ("STARTING", Color::Blue),
        Some(RunState::Running) if app.stop_sent => ("STOPPING", Color::Magenta),
        Some(RunState::Running) => ("RUNNING", Color::Green),
        Some(RunState::Paused) => ("PAUSED", Color::Yellow),
        Some(RunState::Stopping) => ("STOPPING", Color::Magenta),
        Some(RunState::Finished) => ("FINISHED", Color::Blue),
    };
    Span::styled(
        format!(" {text} "),
        Style::new().fg(Color::Black).bg(color).bold(),
    )
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App, thresholds: Vec<Line<'static>>) {
    let mut first = vec![
        Span::styled(" stampede ", TITLE),
        Span::styled(app.profile.clone(), HEAD),
        Span::raw("  "),
        state_span(app),
    ];
    if let Some(s) = &app.snapshot {
        let (plan_time, left) = plan_clock(s, app.paused_at);
        let phase = s.phase.and_then(|i| s.spans.get(i));
        if let Some(span) = phase {
            let length = span.end.saturating_sub(span.start).as_secs_f64();
            let into = plan_time.saturating_sub(span.start).as_secs_f64();
            let done = if s.state == RunState::Finished {
                1.0
            } else if length > 0.0 {
                (into / length).clamp(0.0, 1.0)
            } else {
                1.0
            };
            first.push(Span::raw(format!(
                "  {} {}/{} {:.0}%",
                span.kind,
                span.index + 1,
                s.spans.len(),
                done * 100.0
            )));
            // During a storm, drain or cutover: how much of the wanted count is back.
            if matches!(span.kind, "storm" | "drain" | "cutover" | "server") && s.wanted > 0 {
                let back = (s.open as f64 / s.wanted as f64 * 100.0).min(100.0);
                let style = if back < 99.0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new().fg(Color::Green)
                };
                first.push(Span::styled(format!("  recovery {back:.0}% back"), style));
            }
        }
        first.push(Span::raw(format!(
            "  {} elapsed, {} left",
            clock(s.elapsed),
            clock(left)
        )));
        if s.agents_expected > 0 {
            let joined = s.agents.len();
            let style = if joined < s.agents_expected {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            first.push(Span::styled(
                format!("  agents {joined}/{}", s.agents_expected),
                style,
            ));
        } else {
            first.push(Span::styled("  local", DIM));
        }
    }
    let mut lines = vec![Line::from(first)];
    lines.extend(thresholds);
    frame.render_widget(Paragraph::new(lines), area);
}

/// Thresholds, failing ones first, packed into as few lines as the width allows (at most 2 at
/// 80 columns, 3 when wider).
fn header_threshold_lines(app: &App, width: u16) -> Vec<Line<'static>> {
    let Some(s) = &app.snapshot else {
        return Vec::new();
    };
    let results = &s.summary.thresholds;
    if results.is_empty() {
        return vec![Line::styled(" thresholds: none set", DIM)];
    }
    let mut sorted: Vec<&ThresholdResult> = results.iter().collect();
    sorted.sort_by_key(|t| t.pass);
    let with_values = width >= WIDE.0;
    let max_lines = if width >= WIDE.0 { 3 } else { 2 };
    let width = width as usize;
    let mut lines: Vec<Vec<Span<'static>>> = vec![Vec::new()];
    let mut used = 0usize;
    for t in sorted {
        let (mark, color) = if t.pass {
            ("✓", Color::Green)
        } else {
            ("✗", Color::Red)
        };
        let text = if with_values {
            format!("{} ({})", t.name, observed_text(t))
        } else {
            t.name.clone()
        };
        let cost = 3 + text.chars().count();
        if used + cost > width && used > 0 {
            if lines.len() == max_lines {
                break;
            }
            lines.push(Vec::new());
            used = 0;
        }
        if let Some(line) = lines.last_mut() {
            line.push(Span::styled(
                format!(" {mark} "),
                Style::new().fg(color).bold(),
            ));
            let style = if t.pass {
                Style::new()
            } else {
                Style::new().fg(Color::Red)
            };
            line.push(Span::styled(text, style));
        }
        used += cost;
    }
    lines.into_iter().map(Line::from).collect()
}

fn draw_tabs(frame: &mut Frame, area: Rect, app: &App) {
    let titles = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{} {}", i + 1, v.title()));
    let index = View::ALL.iter().position(|v| *v == app.view);
    let tabs = Tabs::new(titles)
        .select(index)
        .style(DIM)
        .highlight_style(Style::new().fg(Color::Black).bg(Color::Cyan).bold())
        .divider("│");
    frame.render_widget(tabs, area);
}

fn draw_keys(frame: &mut Frame, area: Rect, app: &App) {
    let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Cyan).bold());
    let mut spans = if app.stop_sent || app.state() == Some(RunState::Stopping) {
        vec![
            Span::styled(
                " stopping: closing connections  ",
                Style::new().fg(Color::Magenta),
            ),
            key("q"),
            Span::raw(" leave now  "),
        ]
    } else {
        vec![
            Span::raw(" "),
            key("q"),
            Span::raw(" stop  "),
            key("p"),
            Span::raw(" pause  "),
            key("r"),
            Span::raw(" resume  "),
        ]
    };
    spans.extend([
        key("Tab ←→"),
        Span::raw(" view  "),
        key("↑↓"),
        Span::raw(" scroll  "),
        key("?"),
        Span::raw(" help"),
    ]);
    match app.pending_pause {
        Some(true) => spans.push(Span::styled("  pausing…", Style::new().fg(Color::Yellow))),
        Some(false) => spans.push(Span::styled("  resuming…", Style::new().fg(Color::Yellow))),
        None => {}
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(DIM), area);
}

// ---------------------------------------------------------------------------------------------
// Overview

fn draw_overview(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    if area.width >= WIDE.0 && area.height + 5 >= WIDE.1 {
        let [left, right] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(RIGHT_COLUMN)]).areas(area);
        let [connections, open, rates] = Layout::vertical([
            Constraint::Length(5),
            Constraint::Fill(1),
            Constraint::Fill(1),
        ])
        .areas(left);
        draw_connections(frame, connections, s);
        draw_open_chart(frame, open, s);
        draw_rates_chart(frame, rates, s);
        let table_height = 3 + shown_metrics(s).len() as u16;
        let errors_height = 3 + error_rows(s).len().clamp(1, 5) as u16;
        let [table, plot, errors] = Layout::vertical([
            Constraint::Length(table_height),
            Constraint::Min(6),
            Constraint::Length(errors_height),
        ])
        .areas(right);
        draw_latency_compact(frame, table, s);
        draw_percentile_plot(frame, plot, s);
        draw_errors_table(frame, errors, s);
    } else {
        let latency_height = 3 + shown_metrics(s).len() as u16;
        let [connections, charts, latency] = Layout::vertical([
            Constraint::Length(5),
            Constraint::Min(6),
            Constraint::Length(latency_height),
        ])
        .areas(area);
        draw_connections(frame, connections, s);
        let [open, rates] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(charts);
        draw_open_chart(frame, open, s);
        draw_rates_chart(frame, rates, s);
        draw_latency_compact(frame, latency, s);
    }
}

/// The plan's highest level: what the gauge fills towards.
fn planned_peak(s: &LiveSnapshot) -> u64 {
    s.spans
        .iter()
        .map(|span| span.to.max(span.from))
        .max()
        .unwrap_or(s.summary.connections.requested)
        .max(1)
}

fn draw_connections(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let block = bordered(Span::styled(" Connections ", TITLE));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [gauge, stats, errors] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(inner);
    let peak = planned_peak(s);
    let label = format!(
        "{} / {} open ({} established)   wanted now {}",
        thousands(s.open),
        thousands(peak),
        thousands(s.open_established),
        thousands(s.wanted)
    );
    frame.render_widget(
        Gauge::default()
            .ratio((s.open as f64 / peak as f64).clamp(0.0, 1.0))
            .label(Span::styled(label, Style::new().fg(Color::White).bold()))
            .gauge_style(Style::new().fg(OPEN).bg(Color::Black))
            .use_unicode(true),
        gauge,
    );
    let i = &s.interval;
    let c = &s.summary.connections;
    let mut parts = vec![
        Span::styled("connects/s ", DIM),
        Span::styled(thousands(i.connected), Style::new().fg(CONNECTS).bold()),
        Span::styled("  closes/s ", DIM),
        Span::styled(thousands(i.closed), Style::new().fg(CLOSES).bold()),
        Span::styled("  errors/s ", DIM),
        Span::styled(
            thousands(i.error_total()),
            Style::new()
                .fg(if i.error_total() > 0 {
                    ERRORS
                } else {
                    Color::White
                })
                .bold(),
        ),
        Span::styled("  connected ", DIM),
        Span::raw(thousands(c.connected_slots)),
        Span::styled("  established ", DIM),
        Span::raw(thousands(c.established_slots)),
    ];
    // Below 100 columns the two levels of "up" keep their place; attempts make way.
    if area.width >= 100 {
        parts.extend([
            Span::styled("  attempts ", DIM),
            Span::raw(thousands(c.attempts)),
            Span::styled("  peak ", DIM),
            Span::raw(thousands(c.peak_open)),
            Span::styled("  heartbeats/s ", DIM),
            Span::raw(thousands(i.heartbeats_answered)),
        ]);
        // Server-sent messages, once a run has any (MQTT fan-out, HTTP/2 frames).
        if s.summary.messages.received > 0 || s.summary.messages.published > 0 {
            parts.extend([
                Span::styled("  messages/s ", DIM),
                Span::raw(thousands(i.received)),
            ]);
        }
    }
    frame.render_widget(Paragraph::new(Line::from(parts)), stats);
    let total = s.summary.error_total();
    let mut line = vec![Span::styled("errors ", DIM)];
    if total == 0 {
        line.push(Span::raw("none"));
    } else {
        line.push(Span::styled(
            thousands(total),
            Style::new().fg(ERRORS).bold(),
        ));
        for (n, (kind, count, rate)) in error_rows(s).into_iter().enumerate() {
            line.push(Span::styled(if n == 0 { ": " } else { ", " }, DIM));
            line.push(Span::raw(format!("{} {}", kind.name(), thousands(count))));
            if rate > 0 {
                line.push(Span::styled(format!(" ({}/s)", thousands(rate)), DIM));
            }
        }
    }
    frame.render_widget(Paragraph::new(Line::from(line)), errors);
}

/// Error kinds seen so far, most frequent first: (kind, total, last interval).
fn error_rows(s: &LiveSnapshot) -> Vec<(ErrorKind, u64, u64)> {
    let mut rows: Vec<(ErrorKind, u64, u64)> = ErrorKind::ALL
        .into_iter()
        .map(|k| (k, s.summary.errors.0[k as usize], s.interval.error(k)))
        .filter(|(_, total, rate)| *total > 0 || *rate > 0)
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows
}

/// Keeps at most `max` points, each the highest of its bucket (peaks stay visible).
fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .filter_map(|chunk| {
            chunk
                .iter()
                .copied()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(_, y)| (chunk[0].0, y))
        })
        .collect()
}

/// Vertical lines where phases start, inside `[x0, x1]`.
/// A chart of counts over run seconds `x0..x1`, from 0 to `top`, in a titled border.
fn count_chart<'a>(
    datasets: Vec<Dataset<'a>>,
    block: Block<'a>,
    (x0, x1): (f64, f64),
    top: f64,
) -> Chart<'a> {
    Chart::new(datasets)
        .block(block)
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .labels(axis_labels(x0, x1, seconds_label))
                .style(DIM),
        )
        .y_axis(
            Axis::default()
                .bounds([0.0, top])
                .labels(axis_labels(0.0, top, count_label))
                .style(DIM),
        )
        .legend_position(None)
}

/// A line chart's data: dim vertical marks at phase changes, then each series in its colour.
fn marked_lines<'a>(
    marks: &'a [Vec<(f64, f64)>],
    series: &[(&'a [(f64, f64)], Color)],
) -> Vec<Dataset<'a>> {
    let line = |data: &'a [(f64, f64)], style: Style| {
        Dataset::default()
            .data(data)
            .graph_type(GraphType::Line)
            .marker(Marker::Braille)
            .style(style)
    };
    let mut datasets: Vec<Dataset> = marks.iter().map(|m| line(m, DIM)).collect();
    for (data, color) in series {
        datasets.push(line(data, Style::new().fg(*color)));
    }
    datasets
}

fn phase_marks(s: &LiveSnapshot, x0: f64, x1: f64, y1: f64) -> Vec<Vec<(f64, f64)>> {
    s.spans
        .iter()
        .map(|span| span.start.as_secs_f64())
        .filter(|x| *x > x0 && *x < x1)
        .map(|x| vec![(x, 0.0), (x, y1)])
        .collect()
}

fn axis_labels(lo: f64, hi: f64, format: impl Fn(f64) -> String) -> Vec<Line<'static>> {
    vec![
        Line::from(format(lo)),
        Line::from(format((lo + hi) / 2.0)),
        Line::from(format(hi)),
    ]
}

fn seconds_label(x: f64) -> String {
    clock(Duration::from_secs_f64(x.max(0.0)))
}

fn count_label(y: f64) -> String {
    let y = y.max(0.0);
    if y >= 10_000_000.0 {
        format!("{:.0}M", y / 1e6)
    } else if y >= 10_000.0 {
        format!("{:.0}k", y / 1e3)
    } else {
        format!("{y:.0}")
    }
}

fn draw_open_chart(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    // Each point is the end of its second; the run starts with nothing open.
    let points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            s.summary
                .timeline
                .iter()
                .map(|p| ((p.second + 1) as f64, p.open as f64)),
        )
        .collect();
    let points = downsample(&points, area.width as usize * 2);
    let last = points.last().map_or(0.0, |p| p.0);
    let x1 = s.planned.as_secs_f64().max(last).max(1.0);
    let top = points
        .iter()
        .map(|p| p.1)
        .fold(planned_peak(s) as f64, f64::max)
        * 1.1;
    let marks = phase_marks(s, 0.0, x1, top);
    let datasets = marked_lines(&marks, &[(&points, OPEN)]);
    let title = Line::from(vec![
        Span::styled(" Open connections ", TITLE),
        Span::styled("│ phases ", DIM),
    ]);
    let chart = count_chart(datasets, bordered(title), (0.0, x1), top);
    frame.render_widget(chart, area);
}

fn draw_rates_chart(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let timeline = &s.summary.timeline;
    let end = timeline.last().map_or(0, |p| p.second + 1);
    let start = end.saturating_sub(RATE_WINDOW_S);
    let recent: Vec<_> = timeline.iter().filter(|p| p.second >= start).collect();
    let series = |f: &dyn Fn(&crate::metrics::TimelinePoint) -> u64| -> Vec<(f64, f64)> {
        recent
            .iter()
            .map(|p| ((p.second + 1) as f64, f(p) as f64))
            .collect()
    };
    let connects = series(&|p| p.connects);
    let closes = series(&|p| p.closes);
    let errors = series(&|p| p.errors);
    let top = connects
        .iter()
        .chain(&closes)
        .chain(&errors)
        .map(|p| p.1)
        .fold(1.0, f64::max)
        * 1.1;
    let (x0, x1) = (start as f64, (end as f64).max(start as f64 + 1.0));
    let marks = phase_marks(s, x0, x1, top);
    let datasets = marked_lines(
        &marks,
        &[(&errors, ERRORS), (&closes, CLOSES), (&connects, CONNECTS)],
    );
    let title = Line::from(vec![
        Span::styled(" Per second ", TITLE),
        Span::styled("connects ", Style::new().fg(CONNECTS)),
        Span::styled("closes ", Style::new().fg(CLOSES)),
        Span::styled("errors ", Style::new().fg(ERRORS)),
    ]);
    let chart = count_chart(datasets, bordered(title), (x0, x1), top);
    frame.render_widget(chart, area);
}

// ---------------------------------------------------------------------------------------------
// Latency

const QUANTILES: [(&str, Option<f64>); 5] = [
    ("p50", Some(0.5)),
    ("p90", Some(0.9)),
    ("p99", Some(0.99)),
    ("p99.9", Some(0.999)),
    ("max", None),
];

/// One row per metric: p99 of the last interval, then the whole run's percentiles.
fn draw_latency_compact(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let header = Row::new(
        ["", "1s p99"]
            .into_iter()
            .chain(QUANTILES.iter().map(|(name, _)| *name))
            .map(|h| Cell::from(Line::from(h).right_aligned())),
    )
    .style(HEAD);
    let rows = shown_metrics(s).into_iter().map(|m| {
        let interval = s.interval_latency.get(m);
        let total = s.total_latency.get(m);
        let mut cells = vec![
            Cell::from(Span::styled(m.tag(), Style::new().fg(metric_color(m)))),
            Cell::from(Line::from(latency_cell(interval, Some(0.99))).right_aligned()),
        ];
        cells.extend(
            QUANTILES
                .iter()
                .map(|(_, q)| Cell::from(Line::from(latency_cell(total, *q)).right_aligned())),
        );
        Row::new(cells)
    });
    let widths = [Constraint::Length(15)]
        .into_iter()
        .chain(std::iter::repeat_n(Constraint::Length(8), 6));
    let table = Table::new(rows, widths)
        .header(header)
        .block(bordered(Line::from(vec![
            Span::styled(" Latency ", TITLE),
            Span::styled("whole run; 1s = last interval ", DIM),
        ])));
    frame.render_widget(table, area);
}

/// Two rows per metric: the last interval and the whole run.
fn draw_latency_table(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let header = Row::new(
        ["", ""]
            .into_iter()
            .chain(QUANTILES.iter().map(|(name, _)| *name))
            .chain(["count"])
            .map(|h| Cell::from(Line::from(h).right_aligned())),
    )
    .style(HEAD);
    let mut rows = Vec::new();
    for m in shown_metrics(s) {
        for (window, h) in [
            ("last 1s", s.interval_latency.get(m)),
            ("run", s.total_latency.get(m)),
        ] {
            let name = if window == "run" {
                Cell::from("")
            } else {
                Cell::from(Span::styled(m.tag(), Style::new().fg(metric_color(m))))
            };
            let mut cells = vec![name, Cell::from(Span::styled(window, DIM))];
            cells.extend(
                QUANTILES
                    .iter()
                    .map(|(_, q)| Cell::from(Line::from(latency_cell(h, *q)).right_aligned())),
            );
            cells.push(Cell::from(Line::from(thousands(h.len())).right_aligned()));
            rows.push(Row::new(cells));
        }
    }
    let widths = [Constraint::Length(15), Constraint::Length(7)]
        .into_iter()
        .chain(std::iter::repeat_n(Constraint::Length(8), 5))
        .chain([Constraint::Length(9)]);
    let table = Table::new(rows, widths)
        .header(header)
        .block(bordered(Span::styled(" Latency ", TITLE)));
    frame.render_widget(table, area);
}

/// Percentile labels for the log-scale x axis: 0%, 90%, 99%, ...
fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// Whole-run latency against percentile, both on log scales: x is log10(1 / (1 - q)), so each
/// step right adds a nine; y is log10 of the latency in microseconds.
fn draw_percentile_plot(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let metrics: Vec<Latency> = shown_metrics(s)
        .into_iter()
        .filter(|m| !s.total_latency.get(*m).is_empty())
        .collect();
    let most = metrics
        .iter()
        .map(|m| s.total_latency.get(*m).len())
        .max()
        .unwrap_or(0);
    // As many nines as the samples can support, between 2 and 5.
    let decades = ((most.max(1) as f64).log10().ceil() as u32).clamp(2, 5);
    let steps = (area.width as usize * 2).max(20);
    let series: Vec<(Latency, Vec<(f64, f64)>)> = metrics
        .iter()
        .map(|m| {
            let h = s.total_latency.get(*m);
            let points = (0..=steps)
                .map(|i| {
                    let x = decades as f64 * i as f64 / steps as f64;
                    let q = (1.0 - 10f64.powf(-x)).clamp(0.0, 1.0);
                    let v = if i == steps {
                        h.max()
                    } else {
                        h.value_at_quantile(q)
                    };
                    (x, (v.max(1) as f64).log10())
                })
                .collect();
            (*m, points)
        })
        .collect();
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo > hi {
        (0.0, 3.0)
    } else {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    };
    let datasets = series
        .iter()
        .map(|(m, points)| {
            Dataset::default()
                .data(points)
                .graph_type(GraphType::Line)
                .marker(Marker::Braille)
                .style(Style::new().fg(metric_color(*m)))
        })
        .collect();
    let mut title = vec![Span::styled(" Percentiles, whole run ", TITLE)];
    for (m, _) in &series {
        title.push(Span::styled(
            format!("{} ", m.tag()),
            Style::new().fg(metric_color(*m)),
        ));
    }
    let y_labels: Vec<Line> = (lo as i32..=hi as i32)
        .map(|d| Line::from(human_micros(10u64.pow(d.clamp(0, 12) as u32))))
        .collect();
    let chart = Chart::new(datasets)
        .block(bordered(Line::from(title)))
        .x_axis(
            Axis::default()
                .bounds([0.0, decades as f64])
                .labels((0..=decades).map(|d| Line::from(percentile_label(d))))
                .style(DIM),
        )
        .y_axis(Axis::default().bounds([lo, hi]).labels(y_labels).style(DIM))
        .legend_position(None);
    frame.render_widget(chart, area);
}

fn draw_latency_view(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let table_height = 3 + 2 * shown_metrics(s).len() as u16;
    let [table, plot] =
        Layout::vertical([Constraint::Length(table_height), Constraint::Min(6)]).areas(area);
    draw_latency_table(frame, table, s);
    draw_percentile_plot(frame, plot, s);
}

// ---------------------------------------------------------------------------------------------
// Errors

fn draw_errors_table(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let total = s.summary.error_total();
    let attempts = s.summary.connections.attempts;
    let rows: Vec<Row> = error_rows(s)
        .into_iter()
        .map(|(kind, count, rate)| {
            Row::new([
                Cell::from(Span::styled(kind.name(), Style::new().fg(ERRORS))),
                Cell::from(Line::from(thousands(count)).right_aligned()),
                Cell::from(Line::from(thousands(rate)).right_aligned()),
                Cell::from(Line::from(percent(count, total)).right_aligned()),
                Cell::from(Line::from(percent(count, attempts)).right_aligned()),
            ])
        })
        .collect();
    let title = Line::from(vec![
        Span::styled(" Errors ", TITLE),
        Span::styled(format!("{} in all ", thousands(total)), DIM),
    ]);
    let block = bordered(title);
    if rows.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled("none so far", DIM)).block(block),
            area,
        );
        return;
    }
    let header = Row::new(
        ["kind", "total", "last 1s", "of errors", "of attempts"]
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let line = Line::from(h);
                Cell::from(if i == 0 { line } else { line.right_aligned() })
            }),
    )
    .style(HEAD);
    let widths = [
        Constraint::Length(19),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(12),
    ];
    frame.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

fn draw_errors_view(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let table_height = 3 + error_rows(s).len().max(1) as u16;
    let [table, chart] =
        Layout::vertical([Constraint::Length(table_height), Constraint::Min(6)]).areas(area);
    draw_errors_table(frame, table, s);
    let points: Vec<(f64, f64)> = s
        .summary
        .timeline
        .iter()
        .map(|p| ((p.second + 1) as f64, p.errors as f64))
        .collect();
    let points = downsample(&points, chart.width as usize * 2);
    let x1 = s
        .planned
        .as_secs_f64()
        .max(points.last().map_or(0.0, |p| p.0))
        .max(1.0);
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let marks = phase_marks(s, 0.0, x1, top);
    let datasets = marked_lines(&marks, &[(&points, ERRORS)]);
    let title = Span::styled(" Errors per second ", TITLE);
    let widget = count_chart(datasets, bordered(title), (0.0, x1), top);
    frame.render_widget(widget, chart);
}

// ---------------------------------------------------------------------------------------------
// Agents, sources, targets

/// A table that scrolls: `scroll` rows are skipped (clamped so the last page stays full).
fn draw_scrolled(
    frame: &mut Frame,
    area: Rect,
    title: &'static str,
    header: Vec<&'static str>,
    widths: Vec<Constraint>,
    rows: Vec<Row<'static>>,
    scroll: usize,
) {
    let visible = area.height.saturating_sub(3) as usize;
    let total = rows.len();
    let first = scroll.min(total.saturating_sub(visible));
    let range = if total == 0 {
        String::new()
    } else {
        format!(
            "{}-{} of {} ",
            first + 1,
            (first + visible).min(total),
            total
        )
    };
    let block = bordered(Line::from(vec![
        Span::styled(format!(" {title} "), TITLE),
        Span::styled(range, DIM),
    ]));
    let header = Row::new(header.into_iter().enumerate().map(|(i, h)| {
        let line = Line::from(h);
        Cell::from(if i == 0 { line } else { line.right_aligned() })
    }))
    .style(HEAD);
    let rows: Vec<Row> = rows.into_iter().skip(first).collect();
    frame.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

/// Width of a table's name column: the longest name, within reason.
fn name_width<'a>(header: &str, names: impl Iterator<Item = &'a str>) -> u16 {
    names
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(header.len())
        .clamp(10, 48) as u16
}

/// Cells left for a share bar once the other columns (and one space between each) are placed.
fn bar_width(area: Rect, others: &[u16], max: u16) -> u16 {
    let inner = area.width.saturating_sub(2);
    let used: u16 = others.iter().sum::<u16>() + others.len() as u16;
    inner.saturating_sub(used).clamp(4, max)
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

fn draw_agents(frame: &mut Frame, area: Rect, s: &LiveSnapshot, scroll: usize) {
    if s.agents.is_empty() {
        let text = if s.agents_expected == 0 {
            "Local run: this process is the only agent. Swarm runs list their agents here."
                .to_string()
        } else {
            format!("Waiting for agents: 0 of {} joined.", s.agents_expected)
        };
        frame.render_widget(
            Paragraph::new(Line::styled(text, DIM))
                .wrap(Wrap { trim: true })
                .block(bordered(Span::styled(" Agents ", TITLE))),
            area,
        );
        return;
    }
    let rows = s
        .agents
        .iter()
        .map(|a| {
            let stale = a.last_report_s > 3.0;
            let status_style = match a.status.as_str() {
                "ok" | "running" => Style::new().fg(Color::Green),
                _ if stale => Style::new().fg(Color::Yellow),
                _ => Style::new(),
            };
            Row::new([
                Cell::from(a.name.clone()),
                right(thousands(a.open)),
                right(thousands(a.connects_per_s)),
                Cell::from(Line::from(thousands(a.errors)).right_aligned().style(
                    if a.errors > 0 {
                        Style::new().fg(ERRORS)
                    } else {
                        Style::new()
                    },
                )),
                right(
                    a.connect_p99_us
                        .map_or_else(|| "-".to_string(), human_micros),
                ),
                Cell::from(
                    Line::from(format!("{:.1}s ago", a.last_report_s))
                        .right_aligned()
                        .style(if stale {
                            Style::new().fg(Color::Yellow)
                        } else {
                            Style::new()
                        }),
                ),
                Cell::from(
                    Line::from(a.status.clone())
                        .right_aligned()
                        .style(status_style),
                ),
            ])
        })
        .collect();
    draw_scrolled(
        frame,
        area,
        "Agents",
        vec![
            "agent",
            "open",
            "connects/s",
            "errors",
            "connect p99",
            "last report",
            "status",
        ],
        vec![
            Constraint::Length(name_width(
                "agent",
                s.agents.iter().map(|a| a.name.as_str()),
            )),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(10),
        ],
        rows,
        scroll,
    );
}

fn open_of(c: &ScopeCounts) -> u64 {
    c.connected.saturating_sub(c.closed)
}

fn draw_sources(frame: &mut Frame, area: Rect, s: &LiveSnapshot, scroll: usize) {
    let sources = &s.summary.sources;
    let established: u64 = sources.iter().map(|c| c.established_slots).sum();
    let name = name_width("source", sources.iter().map(|c| c.addr.as_str()));
    let bar = bar_width(area, &[name, 9, 10, 11, 12, 9, 6], 40);
    let rows = sources
        .iter()
        .map(|c| {
            let unavailable = c.errors.0[ErrorKind::AddrNotAvailable as usize];
            let others: u64 = c.errors.0.iter().sum::<u64>() - unavailable;
            Row::new([
                Cell::from(c.addr.clone()),
                right(thousands(open_of(c))),
                right(thousands(c.connected_slots)),
                right(thousands(c.established_slots)),
                Cell::from(Line::from(thousands(unavailable)).right_aligned().style(
                    if unavailable > 0 {
                        Style::new().fg(ERRORS)
                    } else {
                        Style::new()
                    },
                )),
                right(thousands(others)),
                right(percent(c.established_slots, established)),
                Cell::from(Span::styled(
                    share_bar(c.established_slots, established, bar as usize),
                    Style::new().fg(OPEN),
                )),
            ])
        })
        .collect();
    draw_scrolled(
        frame,
        area,
        "Source addresses",
        vec![
            "source",
            "open",
            "connected",
            "established",
            "addr unavail",
            "other err",
            "share",
            "",
        ],
        vec![
            Constraint::Length(name),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(bar),
        ],
        rows,
        scroll,
    );
}

fn draw_targets(frame: &mut Frame, area: Rect, s: &LiveSnapshot, scroll: usize) {
    let area = match &s.summary.nlb {
        None => area,
        Some(nlb) => {
            let rows = (nlb.nodes.len() + nlb.targets.len()) as u16;
            let [targets, lb] = Layout::vertical([
                Constraint::Min(5),
                Constraint::Length((rows + 3).min(area.height / 2)),
            ])
            .areas(area);
            draw_nlb(frame, lb, nlb);
            targets
        }
    };
    let targets = &s.summary.targets;
    let open: u64 = targets.iter().map(open_of).sum();
    let name = name_width("target", targets.iter().map(|c| c.addr.as_str()));
    let bar = bar_width(area, &[name, 9, 6, 10, 11, 8], 50);
    let rows =
        targets
            .iter()
            .map(|c| {
                let errors: u64 = c.errors.0.iter().sum();
                Row::new([
                    Cell::from(c.addr.clone()),
                    right(thousands(open_of(c))),
                    right(percent(open_of(c), open)),
                    Cell::from(Span::styled(
                        share_bar(open_of(c), open, bar as usize),
                        Style::new().fg(OPEN),
                    )),
                    right(thousands(c.connected_slots)),
                    right(thousands(c.established_slots)),
                    Cell::from(Line::from(thousands(errors)).right_aligned().style(
                        if errors > 0 {
                            Style::new().fg(ERRORS)
                        } else {
                            Style::new()
                        },
                    )),
                ])
            })
            .collect();
    draw_scrolled(
        frame,
        area,
        "Targets",
        vec![
            "target",
            "open",
            "share",
            "",
            "connected",
            "established",
            "errors",
        ],
        vec![
            Constraint::Length(name),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(bar),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(8),
        ],
        rows,
        scroll,
    );
}

/// What the NLB emulator in front of the targets counted during the run, per node and target.
fn draw_nlb(frame: &mut Frame, area: Rect, nlb: &crate::nlb::NlbSummary) {
    let counters = |label: String, c: &crate::nlb::CountersSnapshot, note: &str| {
        let flagged = |n: u64| {
            Cell::from(Line::from(thousands(n)).right_aligned().style(if n > 0 {
                Style::new().fg(ERRORS)
            } else {
                Style::new()
            }))
        };
        Row::new([
            Cell::from(label),
            right(thousands(c.active)),
            right(thousands(c.new_flows)),
            flagged(c.port_allocation_errors),
            flagged(c.elb_resets),
            right(thousands(c.target_resets + c.client_resets)),
            Cell::from(Span::styled(note.to_string(), DIM)),
        ])
    };
    let rows = nlb
        .nodes
        .iter()
        .map(|n| counters(format!("node {}", n.ip), &n.counters, ""))
        .chain(nlb.targets.iter().map(|t| {
            let note = if t.registered { "" } else { "deregistered" };
            counters(t.target.clone(), &t.counters, note)
        }))
        .collect();
    let name = name_width(
        "node 127.100.0.1",
        nlb.targets.iter().map(|t| t.target.as_str()),
    ) + 5;
    draw_scrolled(
        frame,
        area,
        "NLB",
        vec![
            "node / target",
            "active",
            "new",
            "port errors",
            "LB resets",
            "passed on",
            "",
        ],
        vec![
            Constraint::Length(name),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Min(0),
        ],
        rows,
        0,
    );
}

// ---------------------------------------------------------------------------------------------
// Dialogs

fn popup(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width.saturating_sub(2));
    let height = height.min(area.height.saturating_sub(2));
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let key =
        |k: &'static str| Span::styled(format!("{k:<16}"), Style::new().fg(Color::Cyan).bold());
    let lines = vec![
        Line::from(vec![
            key("q, Ctrl-C"),
            Span::raw("stop the run (asks first)"),
        ]),
        Line::from(vec![
            key(""),
            Span::raw("while stopping: leave without the summary"),
        ]),
        Line::from(vec![
            key("p / r"),
            Span::raw("pause / resume opening connections"),
        ]),
        Line::from(vec![key("Tab, ←/→, 1-6"), Span::raw("switch view")]),
        Line::from(vec![key("↑/↓, PgUp/PgDn"), Span::raw("scroll tables")]),
        Line::from(vec![key("?"), Span::raw("this help (any key closes it)")]),
    ];
    let rect = popup(area, 62, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(Span::styled(" Keys ", TITLE))
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        rect,
    );
}

fn draw_confirm(frame: &mut Frame, area: Rect, title: &'static str, text: &str, keys: &str) {
    let width = 60u16;
    let lines = vec![
        Line::from(text.to_string()),
        Line::default(),
        Line::styled(keys.to_string(), Style::new().fg(Color::Cyan).bold()),
    ];
    let inner = width.saturating_sub(2).max(1) as usize;
    let height = 2 + 2 + text.chars().count().div_ceil(inner) as u16;
    let rect = popup(area, width, height);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(
            Block::bordered()
                .title(Span::styled(title, Style::new().fg(Color::Yellow).bold()))
                .border_style(Style::new().fg(Color::Yellow)),
        ),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;

    use super::*;
    use crate::tui::fixture;

    fn render(app: &App, width: u16, height: u16) -> Buffer {
        let mut term = Terminal::new(TestBackend::new(width, height)).unwrap();
        term.draw(|f| draw(f, app)).unwrap();
        term.backend().buffer().clone()
    }

    /// The screen as text, one line per row, trailing blanks trimmed.
    fn text(buffer: &Buffer) -> String {
        let area = buffer.area;
        let mut out = String::new();
        for y in 0..area.height {
            let line: String = (0..area.width)
                .filter_map(|x| buffer.cell((x, y)).map(|c| c.symbol().to_string()))
                .collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn snapshot_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/tui/snapshots")
            .join(format!("{name}.txt"))
    }

    /// Compares with `src/tui/snapshots/NAME.txt`; `UPDATE_SNAPSHOTS=1` rewrites it instead.
    /// Returns a description of the difference, if any.
    fn compare(name: &str, actual: &str) -> Option<String> {
        let path = snapshot_path(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return None;
        }
        let expected = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return Some(format!("{name}: {e} (UPDATE_SNAPSHOTS=1 writes it)")),
        };
        if expected == actual {
            return None;
        }
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Some(format!(
            "{name} differs from line {}:\n--- expected\n{expected}\n--- actual\n{actual}",
            line + 1
        ))
    }

    fn app_with(snapshot: LiveSnapshot) -> App {
        let mut app = App::new(&snapshot.summary.profile);
        app.snapshot = Some(Arc::new(snapshot));
        app
    }

    fn check_views(width: u16, height: u16) {
        let mut failures = Vec::new();
        for view in View::ALL {
            let snapshot = if view == View::Agents {
                fixture::swarm_snapshot()
            } else {
                fixture::snapshot()
            };
            let mut app = app_with(snapshot);
            app.view = view;
            let name = format!("{}_{width}x{height}", view.title().to_lowercase());
            failures.extend(compare(&name, &text(&render(&app, width, height))));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn the_targets_view_shows_what_the_nlb_counted() {
        let mut snapshot = fixture::snapshot();
        let counters = crate::nlb::CountersSnapshot {
            active: 1000,
            new_flows: 1000,
            port_allocation_errors: 500,
            elb_resets: 500,
            ..Default::default()
        };
        snapshot.summary.nlb = Some(crate::nlb::NlbSummary {
            admin: "127.0.0.1:7101".into(),
            error: None,
            peak_active_flows: 1000,
            total: counters,
            nodes: vec![crate::nlb::NodeMetrics {
                node: 0,
                ip: "127.100.0.1".into(),
                zone: 0,
                counters,
            }],
            targets: vec![crate::nlb::TargetMetrics {
                target: "127.0.0.1:7000".into(),
                zone: 0,
                registered: false,
                counters,
            }],
        });
        let mut app = app_with(snapshot);
        app.view = View::Targets;
        let screen = text(&render(&app, 100, 30));
        for needle in [
            "NLB",
            "node 127.100.0.1",
            "127.0.0.1:7000",
            "port errors",
            "500",
            "deregistered",
            "Targets",
        ] {
            assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
        }
    }

    #[test]
    fn every_view_at_80x24_matches_its_snapshot() {
        check_views(80, 24);
    }

    #[test]
    fn every_view_at_160x48_matches_its_snapshot() {
        check_views(160, 48);
    }

    #[test]
    fn dialogs_and_the_first_second_match_their_snapshots() {
        let mut failures = Vec::new();
        let mut app = App::new("launch-rehearsal");
        failures.extend(compare("starting_80x24", &text(&render(&app, 80, 24))));
        app = app_with(fixture::snapshot());
        app.dialog = Some(Dialog::ConfirmStop);
        failures.extend(compare("confirm_stop_80x24", &text(&render(&app, 80, 24))));
        app.dialog = Some(Dialog::Help);
        failures.extend(compare("help_80x24", &text(&render(&app, 80, 24))));
        app.dialog = None;
        app.view = View::Agents;
        failures.extend(compare("agents_local_80x24", &text(&render(&app, 80, 24))));
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn the_80x24_overview_shows_every_panel_and_the_live_figures() {
        let app = app_with(fixture::snapshot());
        let buffer = render(&app, 80, 24);
        let screen = text(&buffer);
        for needle in [
            "launch-rehearsal",
            "RUNNING",
            "hold 2/2",
            "1m35s elapsed",
            "Connections",
            "open",
            "Open connections",
            "Per second",
            "Latency",
            "connect",
            "heartbeat_rtt",
            "addr_not_available",
            "✗ errors <= 0",
        ] {
            assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
        }
        assert!(!screen.contains("handshake"), "no handshake data, no row");
        // A failing threshold is red.
        let fail = (0..80u16)
            .find(|x| buffer.cell((*x, 1)).is_some_and(|c| c.symbol() == "✗"))
            .expect("a failing threshold on the second line");
        assert_eq!(buffer.cell((fail, 1)).map(|c| c.fg), Some(Color::Red));
    }

    #[test]
    fn a_pause_under_way_freezes_phase_progress_and_time_left() {
        let running = fixture::snapshot();
        let mut app = app_with(running.clone());
        let header = |app: &App| {
            text(&render(app, 100, 24))
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        let before = header(&app);
        assert!(
            before.contains("hold 2/2 15%") && before.contains("3m25s left"),
            "{before}"
        );
        let mut paused = running;
        paused.state = RunState::Paused;
        paused.elapsed += Duration::from_secs(30);
        app.handle(crate::tui::Event::Snapshot(Arc::new(paused)));
        let during = header(&app);
        assert!(during.contains("PAUSED"), "{during}");
        assert!(
            during.contains("hold 2/2 15%") && during.contains("3m25s left"),
            "{during}"
        );
        assert!(during.contains("2m05s elapsed"), "{during}");
    }

    #[test]
    fn any_size_renders_without_panicking() {
        let mut app = app_with(fixture::swarm_snapshot());
        for (width, height) in [
            (1, 1),
            (10, 3),
            (40, 10),
            (79, 23),
            (80, 24),
            (119, 35),
            (131, 40),
            (132, 36),
            (250, 80),
        ] {
            for view in View::ALL {
                app.view = view;
                for dialog in [None, Some(Dialog::Help), Some(Dialog::ConfirmLeave)] {
                    app.dialog = dialog;
                    render(&app, width, height);
                }
            }
        }
        let mut empty = app_with(fixture::snapshot());
        Arc::make_mut(empty.snapshot.as_mut().unwrap())
            .summary
            .timeline
            .clear();
        render(&empty, 80, 24);
    }

    #[test]
    fn formats_numbers_and_clocks() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(clock(Duration::from_millis(6_050)), "6.0s");
        assert_eq!(clock(Duration::from_secs(65)), "1m05s");
        assert_eq!(clock(Duration::from_secs(3_720)), "1h02m");
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(share_bar(1, 2, 4), "██");
        assert_eq!(share_bar(0, 0, 4), "");
    }

    #[test]
    fn downsampling_keeps_peaks() {
        let points: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, (i % 10) as f64)).collect();
        let fewer = downsample(&points, 10);
        assert_eq!(fewer.len(), 10);
        assert!(fewer.iter().all(|p| p.1 == 9.0));
    }
}
