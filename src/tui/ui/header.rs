//! The header (profile, state, phase, clock, agents, thresholds), the tab bar and the key line.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Tabs};

use super::{DIM, HEAD, TITLE, WIDE, clock, observed_text, plan_clock};
use crate::live::RunState;
use crate::report::summary::ThresholdResult;
use crate::tui::app::{App, View};

pub(super) fn state_span(app: &App) -> Span<'static> {
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

pub(super) fn draw_header(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    thresholds: Vec<Line<'static>>,
) {
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
pub(super) fn header_threshold_lines(app: &App, width: u16) -> Vec<Line<'static>> {
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

pub(super) fn draw_tabs(frame: &mut Frame, area: Rect, app: &App) {
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

pub(super) fn draw_keys(frame: &mut Frame, area: Rect, app: &App) {
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
