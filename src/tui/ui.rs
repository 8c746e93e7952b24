//! Drawing: turns the `App` (and the snapshot it holds) into one frame. Pure: it reads no clock
//! and no channel, so a `TestBackend` renders exactly what a terminal would.
//!
//! This file holds the frame's layout and the formatting every view shares; each view draws
//! itself in a file of its own under `ui/` (`overview.rs`, `latency.rs`, ...).
//!
//! Layout: a header (profile, state, phase, time, agents, thresholds), a tab bar, the selected
//! view, and a key line. Views adapt to the area: at 80x24 the overview shows the connection
//! figures, two charts and a compact latency table; from 132x36 it also shows the percentile
//! plot and the errors. The Latency view has the full table (last interval and whole run).

use std::time::Duration;

use hdrhistogram::Histogram;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph};

use super::app::{App, Dialog, View};

mod agents;
mod charts;
mod dialogs;
mod errors;
mod header;
mod latency;
mod nlb;
mod overview;
mod sources;
mod tables;
mod targets;

use crate::live::{LiveSnapshot, RunState};
use crate::metrics::Latency;
use crate::profile::duration::human_micros;
use crate::report::summary::ThresholdResult;
use agents::draw_agents;
use dialogs::{draw_confirm, draw_help};
use errors::draw_errors_view;
use header::{draw_header, draw_keys, draw_tabs, header_threshold_lines};
use latency::draw_latency_view;
use overview::draw_overview;
use sources::draw_sources;
use targets::draw_targets;

/// The rates chart shows this much of the run's recent past.
const RATE_WINDOW_S: u64 = 120;
/// Overview shows every panel at once from this size on: charts on the left, and on the right
/// the compact latency table at its natural width (`RIGHT_COLUMN`).
const WIDE: (u16, u16) = (132, 36);
const RIGHT_COLUMN: u16 = 71;

const TITLE: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);
const HEAD: Style = Style::new().add_modifier(Modifier::BOLD);
const CONNECTS: Color = Color::Green;
const CLOSES: Color = Color::Yellow;
const ERRORS: Color = Color::Red;
const OPEN: Color = Color::Cyan;
/// One colour per latency metric, in `Latency::ALL` order, for the percentile plot.
const METRIC_COLORS: [Color; Latency::COUNT] = [
    Color::Cyan,
    Color::Blue,
    Color::Magenta,
    Color::Green,
    Color::Yellow,
    Color::White,
    Color::LightRed,
];

/// Draws the whole dashboard.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let thresholds = header_threshold_lines(app, area.width);
    let header_height = 1 + thresholds.len() as u16;
    let [header, tabs, body, keys] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, app, thresholds);
    draw_tabs(frame, tabs, app);
    match &app.snapshot {
        None => {
            let text = Paragraph::new(vec![
                Line::default(),
                Line::from(
                    "Waiting for the first figures: they arrive a second after the load starts.",
                )
                .centered(),
            ])
            .style(DIM);
            frame.render_widget(text, body);
        }
        Some(s) => match app.view {
            View::Overview => draw_overview(frame, body, s),
            View::Latency => draw_latency_view(frame, body, s),
            View::Errors => draw_errors_view(frame, body, s),
            View::Agents => draw_agents(frame, body, s, app.scroll),
            View::Sources => draw_sources(frame, body, s, app.scroll),
            View::Targets => draw_targets(frame, body, s, app.scroll),
        },
    }
    draw_keys(frame, keys, app);
    match app.dialog {
        Some(Dialog::Help) => draw_help(frame, area),
        Some(Dialog::ConfirmStop) => draw_confirm(
            frame,
            area,
            " Stop the run? ",
            "Stops opening, closes every connection and writes the summary.",
            "y, q, Ctrl-C: stop      n, Esc: keep running",
        ),
        Some(Dialog::ConfirmLeave) => draw_confirm(
            frame,
            area,
            " Leave now? ",
            "The run is closing its connections. Leaving now skips the summary and the --out files (exit code 3).",
            "y, q, Ctrl-C: leave      n, Esc: wait",
        ),
        None => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A run's clock: `12.3s`, `4m05s`, `1h02m`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn latency_cell(h: &Histogram<u64>, q: Option<f64>) -> String {
    if h.is_empty() {
        return "-".to_string();
    }
    human_micros(match q {
        Some(q) => h.value_at_quantile(q),
        None => h.max(),
    })
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

/// A share as a bar of `width` cells, for skew between sources or targets.
fn share_bar(part: u64, whole: u64, width: usize) -> String {
    const EIGHTHS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if whole == 0 {
        return String::new();
    }
    let eighths = (part as f64 / whole as f64 * (width * 8) as f64).round() as usize;
    let eighths = eighths.min(width * 8);
    format!("{}{}", "█".repeat(eighths / 8), EIGHTHS[eighths % 8])
}

fn observed_text(t: &ThresholdResult) -> String {
    match (t.observed, t.unit) {
        (None, _) => "no samples".to_string(),
        (Some(v), "us") => human_micros(v.round() as u64),
        (Some(v), "ratio") => format!("{v:.4}"),
        (Some(v), _) => format!("{v}"),
    }
}

fn bordered(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::bordered().title(title).border_style(DIM)
}

/// Latency metrics worth a row: connect always, the others once they have samples (so a
/// protocol without a handshake shows no handshake row).
fn shown_metrics(s: &LiveSnapshot) -> Vec<Latency> {
    Latency::ALL
        .into_iter()
        // Disconnect times are an input to the recovery figures, not a latency to read.
        .filter(|m| *m != Latency::Disconnect)
        .filter(|m| *m == Latency::Connect || !s.total_latency.get(*m).is_empty())
        .collect()
}

fn metric_color(metric: Latency) -> Color {
    let index = Latency::ALL.iter().position(|m| *m == metric).unwrap_or(0);
    METRIC_COLORS[index % METRIC_COLORS.len()]
}

/// How far the plan has got, and how much of it is left. Plan time is wall time less time
/// spent paused: `planned` has grown by the pauses that ended; a pause under way (since
/// `paused_at`, as far as the snapshots tell) freezes both figures.
fn plan_clock(s: &LiveSnapshot, paused_at: Option<Duration>) -> (Duration, Duration) {
    let total = s.spans.last().map_or(Duration::ZERO, |span| span.end);
    let shift = s.planned.saturating_sub(total);
    let now = match (s.state, paused_at) {
        (RunState::Paused, Some(at)) => at.min(s.elapsed),
        _ => s.elapsed,
    };
    (now.saturating_sub(shift), s.planned.saturating_sub(now))
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;

    use super::*;
    use crate::tui::fixture;

    fn render(app: &App, width: u16, height: u16) -> Buffer {
        let mut term = Terminal::new(TestBackend::new(width, height)).unwrap();
        term.draw(|f| draw(f, app)).unwrap();
        term.backend().buffer().clone()
    }

    /// The screen as text, one line per row, trailing blanks trimmed.
    fn text(buffer: &Buffer) -> String {
        let area = buffer.area;
        let mut out = String::new();
        for y in 0..area.height {
            let line: String = (0..area.width)
                .filter_map(|x| buffer.cell((x, y)).map(|c| c.symbol().to_string()))
                .collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn snapshot_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/tui/snapshots")
            .join(format!("{name}.txt"))
    }

    /// Compares with `src/tui/snapshots/NAME.txt`; `UPDATE_SNAPSHOTS=1` rewrites it instead.
    /// Returns a description of the difference, if any.
    fn compare(name: &str, actual: &str) -> Option<String> {
        let path = snapshot_path(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return None;
        }
        let expected = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return Some(format!("{name}: {e} (UPDATE_SNAPSHOTS=1 writes it)")),
        };
        if expected == actual {
            return None;
        }
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Some(format!(
            "{name} differs from line {}:\n--- expected\n{expected}\n--- actual\n{actual}",
            line + 1
        ))
    }

    fn app_with(snapshot: LiveSnapshot) -> App {
        let mut app = App::new(&snapshot.summary.profile);
        app.snapshot = Some(Arc::new(snapshot));
        app
    }

    fn check_views(width: u16, height: u16) {
        let mut failures = Vec::new();
        for view in View::ALL {
            let snapshot = if view == View::Agents {
                fixture::swarm_snapshot()
            } else {
                fixture::snapshot()
            };
            let mut app = app_with(snapshot);
            app.view = view;
            let name = format!("{}_{width}x{height}", view.title().to_lowercase());
            failures.extend(compare(&name, &text(&render(&app, width, height))));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn the_targets_view_shows_what_the_nlb_counted() {
        let mut snapshot = fixture::snapshot();
        let counters = crate::nlb::CountersSnapshot {
            active: 1000,
            new_flows: 1000,
            port_allocation_errors: 500,
            elb_resets: 500,
            ..Default::default()
        };
        snapshot.summary.nlb = Some(crate::nlb::NlbSummary {
            admin: "127.0.0.1:7101".into(),
            error: None,
            peak_active_flows: 1000,
            total: counters,
            nodes: vec![crate::nlb::NodeMetrics {
                node: 0,
                ip: "127.100.0.1".into(),
                zone: 0,
                counters,
            }],
            targets: vec![crate::nlb::TargetMetrics {
                target: "127.0.0.1:7000".into(),
                zone: 0,
                registered: false,
                counters,
            }],
        });
        let mut app = app_with(snapshot);
        app.view = View::Targets;
        let screen = text(&render(&app, 100, 30));
        for needle in [
            "NLB",
            "node 127.100.0.1",
            "127.0.0.1:7000",
            "port errors",
            "500",
            "deregistered",
            "Targets",
        ] {
            assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
        }
    }

    #[test]
    fn every_view_at_80x24_matches_its_snapshot() {
        check_views(80, 24);
    }

    #[test]
    fn every_view_at_160x48_matches_its_snapshot() {
        check_views(160, 48);
    }

    #[test]
    fn dialogs_and_the_first_second_match_their_snapshots() {
        let mut failures = Vec::new();
        let mut app = App::new("launch-rehearsal");
        failures.extend(compare("starting_80x24", &text(&render(&app, 80, 24))));
        app = app_with(fixture::snapshot());
        app.dialog = Some(Dialog::ConfirmStop);
        failures.extend(compare("confirm_stop_80x24", &text(&render(&app, 80, 24))));
        app.dialog = Some(Dialog::Help);
        failures.extend(compare("help_80x24", &text(&render(&app, 80, 24))));
        app.dialog = None;
        app.view = View::Agents;
        failures.extend(compare("agents_local_80x24", &text(&render(&app, 80, 24))));
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn the_80x24_overview_shows_every_panel_and_the_live_figures() {
        let app = app_with(fixture::snapshot());
        let buffer = render(&app, 80, 24);
        let screen = text(&buffer);
        for needle in [
            "launch-rehearsal",
            "RUNNING",
            "hold 2/2",
            "1m35s elapsed",
            "Connections",
            "open",
            "Open connections",
            "Per second",
            "Latency",
            "connect",
            "heartbeat_rtt",
            "addr_not_available",
            "✗ errors <= 0",
        ] {
            assert!(screen.contains(needle), "{needle:?} missing:\n{screen}");
        }
        assert!(!screen.contains("handshake"), "no handshake data, no row");
        // A failing threshold is red.
        let fail = (0..80u16)
            .find(|x| buffer.cell((*x, 1)).is_some_and(|c| c.symbol() == "✗"))
            .expect("a failing threshold on the second line");
        assert_eq!(buffer.cell((fail, 1)).map(|c| c.fg), Some(Color::Red));
    }

    #[test]
    fn a_pause_under_way_freezes_phase_progress_and_time_left() {
        let running = fixture::snapshot();
        let mut app = app_with(running.clone());
        let header = |app: &App| {
            text(&render(app, 100, 24))
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        let before = header(&app);
        assert!(
            before.contains("hold 2/2 15%") && before.contains("3m25s left"),
            "{before}"
        );
        let mut paused = running;
        paused.state = RunState::Paused;
        paused.elapsed += Duration::from_secs(30);
        app.handle(crate::tui::Event::Snapshot(Arc::new(paused)));
        let during = header(&app);
        assert!(during.contains("PAUSED"), "{during}");
        assert!(
            during.contains("hold 2/2 15%") && during.contains("3m25s left"),
            "{during}"
        );
        assert!(during.contains("2m05s elapsed"), "{during}");
    }

    #[test]
    fn any_size_renders_without_panicking() {
        let mut app = app_with(fixture::swarm_snapshot());
        for (width, height) in [
            (1, 1),
            (10, 3),
            (40, 10),
            (79, 23),
            (80, 24),
            (119, 35),
            (131, 40),
            (132, 36),
            (250, 80),
        ] {
            for view in View::ALL {
                app.view = view;
                for dialog in [None, Some(Dialog::Help), Some(Dialog::ConfirmLeave)] {
                    app.dialog = dialog;
                    render(&app, width, height);
                }
            }
        }
        let mut empty = app_with(fixture::snapshot());
        Arc::make_mut(empty.snapshot.as_mut().unwrap())
            .summary
            .timeline
            .clear();
        render(&empty, 80, 24);
    }

    #[test]
    fn formats_numbers_and_clocks() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(clock(Duration::from_millis(6_050)), "6.0s");
        assert_eq!(clock(Duration::from_secs(65)), "1m05s");
        assert_eq!(clock(Duration::from_secs(3_720)), "1h02m");
        assert_eq!(share_bar(1, 2, 4), "██");
        assert_eq!(share_bar(0, 0, 4), "");
    }
}
