//! Pop-ups over the dashboard: help and the stop/leave confirmations.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::TITLE;

pub(super) fn popup(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width.saturating_sub(2));
    let height = height.min(area.height.saturating_sub(2));
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

pub(super) fn draw_help(frame: &mut Frame, area: Rect) {
    let key =
        |k: &'static str| Span::styled(format!("{k:<16}"), Style::new().fg(Color::Cyan).bold());
    let lines = vec![
        Line::from(vec![
            key("q, Ctrl-C"),
            Span::raw("stop the run (asks first)"),
        ]),
        Line::from(vec![
            key(""),
            Span::raw("while stopping: leave without the summary"),
        ]),
        Line::from(vec![
            key("p / r"),
            Span::raw("pause / resume opening connections"),
        ]),
        Line::from(vec![key("Tab, ←/→, 1-6"), Span::raw("switch view")]),
        Line::from(vec![key("↑/↓, PgUp/PgDn"), Span::raw("scroll tables")]),
        Line::from(vec![key("?"), Span::raw("this help (any key closes it)")]),
    ];
    let rect = popup(area, 62, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(Span::styled(" Keys ", TITLE))
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        rect,
    );
}

pub(super) fn draw_confirm(
    frame: &mut Frame,
    area: Rect,
    title: &'static str,
    text: &str,
    keys: &str,
) {
    let width = 60u16;
    let lines = vec![
        Line::from(text.to_string()),
        Line::default(),
        Line::styled(keys.to_string(), Style::new().fg(Color::Cyan).bold()),
    ];
    let inner = width.saturating_sub(2).max(1) as usize;
    let height = 2 + 2 + text.chars().count().div_ceil(inner) as u16;
    let rect = popup(area, width, height);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(
            Block::bordered()
                .title(Span::styled(title, Style::new().fg(Color::Yellow).bold()))
                .border_style(Style::new().fg(Color::Yellow)),
        ),
        rect,
    );
}
