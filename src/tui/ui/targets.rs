//! The Targets view: connections per target, with the NLB emulator's counters when the run went
//! through it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row};

use super::nlb::draw_nlb;
use super::tables::{bar_width, draw_scrolled, name_width, open_of};
use super::{ERRORS, OPEN, percent, right, share_bar, thousands};
use crate::live::LiveSnapshot;

pub(super) fn draw_targets(frame: &mut Frame, area: Rect, s: &LiveSnapshot, scroll: usize) {
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
