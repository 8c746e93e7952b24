//! The Errors view: errors by kind, with their rate, and the errors-per-second chart.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use super::charts::{count_chart, downsample, marked_lines, phase_marks};
use super::{DIM, ERRORS, HEAD, TITLE, bordered, percent, thousands};
use crate::live::LiveSnapshot;
use crate::metrics::ErrorKind;

pub(super) fn draw_errors_table(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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

pub(super) fn draw_errors_view(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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

/// Error kinds seen so far, most frequent first: (kind, total, last interval).
pub(super) fn error_rows(s: &LiveSnapshot) -> Vec<(ErrorKind, u64, u64)> {
    let mut rows: Vec<(ErrorKind, u64, u64)> = ErrorKind::ALL
        .into_iter()
        .map(|k| (k, s.summary.errors.0[k as usize], s.interval.error(k)))
        .filter(|(_, total, rate)| *total > 0 || *rate > 0)
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows
}
