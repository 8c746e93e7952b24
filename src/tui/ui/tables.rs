//! What the scrolled tables (agents, sources, targets, NLB) share: scrolling and column widths.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table};

use super::{DIM, HEAD, TITLE, bordered};
use crate::report::summary::ScopeCounts;

/// A table that scrolls: `scroll` rows are skipped (clamped so the last page stays full).
pub(super) fn draw_scrolled(
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
pub(super) fn name_width<'a>(header: &str, names: impl Iterator<Item = &'a str>) -> u16 {
    names
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(header.len())
        .clamp(10, 48) as u16
}

/// Cells left for a share bar once the other columns (and one space between each) are placed.
pub(super) fn bar_width(area: Rect, others: &[u16], max: u16) -> u16 {
    let inner = area.width.saturating_sub(2);
    let used: u16 = others.iter().sum::<u16>() + others.len() as u16;
    inner.saturating_sub(used).clamp(4, max)
}

pub(super) fn open_of(c: &ScopeCounts) -> u64 {
    c.connected.saturating_sub(c.closed)
}
