//! The Latency view (last interval and whole run per metric) and the percentile plot, also drawn by
//! the overview.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Cell, Chart, Dataset, GraphType, Row, Table};

use super::{DIM, HEAD, TITLE, bordered, latency_cell, metric_color, shown_metrics, thousands};
use crate::live::LiveSnapshot;
use crate::metrics::Latency;
use crate::profile::duration::human_micros;

pub(super) const QUANTILES: [(&str, Option<f64>); 5] = [
    ("p50", Some(0.5)),
    ("p90", Some(0.9)),
    ("p99", Some(0.99)),
    ("p99.9", Some(0.999)),
    ("max", None),
];

/// One row per metric: p99 of the last interval, then the whole run's percentiles.
pub(super) fn draw_latency_compact(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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
pub(super) fn draw_latency_table(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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
pub(super) fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// Whole-run latency against percentile, both on log scales: x is log10(1 / (1 - q)), so each
/// step right adds a nine; y is log10 of the latency in microseconds.
pub(super) fn draw_percentile_plot(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
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

pub(super) fn draw_latency_view(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let table_height = 3 + 2 * shown_metrics(s).len() as u16;
    let [table, plot] =
        Layout::vertical([Constraint::Length(table_height), Constraint::Min(6)]).areas(area);
    draw_latency_table(frame, table, s);
    draw_percentile_plot(frame, plot, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_count_nines() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(3), "99.9%");
    }
}
