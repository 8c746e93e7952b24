//! The Overview view: connection figures and two charts, and from 132x36 the latency table,
//! percentile plot and errors beside them.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph};

use super::charts::{count_chart, downsample, marked_lines, phase_marks};
use super::errors::{draw_errors_table, error_rows};
use super::latency::{draw_latency_compact, draw_percentile_plot};
use super::{
    CLOSES, CONNECTS, DIM, ERRORS, OPEN, RATE_WINDOW_S, RIGHT_COLUMN, TITLE, WIDE, bordered,
    shown_metrics, thousands,
};
use crate::live::LiveSnapshot;

pub(super) fn draw_overview(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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
pub(super) fn planned_peak(s: &LiveSnapshot) -> u64 {
    s.spans
        .iter()
        .map(|span| span.to.max(span.from))
        .max()
        .unwrap_or(s.summary.connections.requested)
        .max(1)
}

pub(super) fn draw_connections(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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

pub(super) fn draw_open_chart(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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

pub(super) fn draw_rates_chart(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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
