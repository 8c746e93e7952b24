//! The Agents view: one row per agent of a swarm, with its state and share.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Wrap};

use super::tables::{draw_scrolled, name_width};
use super::{DIM, ERRORS, TITLE, bordered, right, thousands};
use crate::live::LiveSnapshot;
use crate::profile::duration::human_micros;
use crate::report::summary::AgentStatus;

pub(super) fn draw_agents(frame: &mut Frame, area: Rect, s: &LiveSnapshot, scroll: usize) {
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
            // A running agent that has gone quiet is yellow before the coordinator gives up
            // on it and marks it lost.
            let status_style = match a.status {
                AgentStatus::Running if stale => Style::new().fg(Color::Yellow),
                AgentStatus::Running => Style::new().fg(Color::Green),
                AgentStatus::Lost => Style::new().fg(ERRORS),
                AgentStatus::Finished | AgentStatus::Stopped => Style::new(),
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
                    Line::from(a.status.as_str())
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
