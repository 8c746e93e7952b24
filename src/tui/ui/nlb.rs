//! The NLB emulator's counters per node and per target, drawn in the Targets view.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row};

use super::tables::{draw_scrolled, name_width};
use super::{DIM, ERRORS, right, thousands};

/// What the NLB emulator in front of the targets counted during the run, per node and target.
pub(super) fn draw_nlb(frame: &mut Frame, area: Rect, nlb: &crate::nlb::NlbSummary) {
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
