//! The Sources view: connections per source address, with each one's share.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row};

use super::tables::{bar_width, draw_scrolled, name_width, open_of};
use super::{ERRORS, OPEN, percent, right, share_bar, thousands};
use crate::live::LiveSnapshot;
use crate::metrics::ErrorKind;

pub(super) fn draw_sources(frame: &mut Frame, area: Rect, s: &LiveSnapshot, scroll: usize) {
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
