//! Braille line charts over the run's timeline, shared by the overview and the errors view.

use std::time::Duration;

use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType};

use super::{DIM, clock};
use crate::live::LiveSnapshot;

/// Keeps at most `max` points, each the highest of its bucket (peaks stay visible).
pub(super) fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
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
pub(super) fn count_chart<'a>(
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
pub(super) fn marked_lines<'a>(
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

pub(super) fn phase_marks(s: &LiveSnapshot, x0: f64, x1: f64, y1: f64) -> Vec<Vec<(f64, f64)>> {
    s.spans
        .iter()
        .map(|span| span.start.as_secs_f64())
        .filter(|x| *x > x0 && *x < x1)
        .map(|x| vec![(x, 0.0), (x, y1)])
        .collect()
}

pub(super) fn axis_labels(lo: f64, hi: f64, format: impl Fn(f64) -> String) -> Vec<Line<'static>> {
    vec![
        Line::from(format(lo)),
        Line::from(format((lo + hi) / 2.0)),
        Line::from(format(hi)),
    ]
}

pub(super) fn seconds_label(x: f64) -> String {
    clock(Duration::from_secs_f64(x.max(0.0)))
}

pub(super) fn count_label(y: f64) -> String {
    let y = y.max(0.0);
    if y >= 10_000_000.0 {
        format!("{:.0}M", y / 1e6)
    } else if y >= 10_000.0 {
        format!("{:.0}k", y / 1e3)
    } else {
        format!("{y:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_peaks() {
        let points: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, (i % 10) as f64)).collect();
        let fewer = downsample(&points, 10);
        assert_eq!(fewer.len(), 10);
        assert!(fewer.iter().all(|p| p.1 == 9.0));
    }
}
