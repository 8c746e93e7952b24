//! The dashboard's state and how each event changes it. No terminal, no clock, no channels:
//! `App::handle` takes one event and returns the control to send, if any, so every key can be
//! tested without a terminal.

use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::live::{Control, LiveSnapshot, RunState};

/// Reason sent with the stop a user confirms on the dashboard.
pub const STOP_REASON: &str = "stopped from the dashboard";

/// Everything the dashboard reacts to, from its three sources.
#[derive(Clone, Debug)]
pub enum Event {
    /// The run published a new snapshot.
    Snapshot(Arc<LiveSnapshot>),
    /// The run dropped its end of the live channel: it is over or never started.
    LiveClosed,
    Key(KeyEvent),
    Resize(u16, u16),
    /// Time to draw a frame.
    Tick,
}

/// Why the dashboard ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The run's final snapshot arrived; its summary is final.
    Finished,
    /// The live channel closed without a final snapshot (the run failed to start, or ended).
    Closed,
    /// The user chose to leave while the run was still closing its connections.
    Abandoned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Overview,
    Latency,
    Errors,
    Agents,
    Sources,
    Targets,
}

impl View {
    pub const ALL: [View; 6] = [
        View::Overview,
        View::Latency,
        View::Errors,
        View::Agents,
        View::Sources,
        View::Targets,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Latency => "Latency",
            View::Errors => "Errors",
            View::Agents => "Agents",
            View::Sources => "Sources",
            View::Targets => "Targets",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    fn step(self, forward: bool) -> View {
        let n = View::ALL.len();
        let i = self.index();
        View::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }
}

/// A box over the dashboard that takes the keys until it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialog {
    Help,
    /// Stop the run? (load is running)
    ConfirmStop,
    /// Leave now, without waiting for the summary? (a stop is already under way)
    ConfirmLeave,
}

pub struct App {
    /// Profile name, known before the first snapshot.
    pub profile: String,
    pub snapshot: Option<Arc<LiveSnapshot>>,
    pub view: View,
    pub dialog: Option<Dialog>,
    /// First row shown in the table views.
    pub scroll: usize,
    /// A pause (true) or resume (false) sent and not yet seen in a snapshot.
    pub pending_pause: Option<bool>,
    pub stop_sent: bool,
    pub exit: Option<Exit>,
    /// While paused: the run's elapsed time when the pause began, as far as snapshots tell
    /// (the last one before the pause).
    pub paused_at: Option<Duration>,
}

impl App {
    pub fn new(profile: &str) -> App {
        App {
            profile: profile.to_string(),
            snapshot: None,
            view: View::Overview,
            dialog: None,
            scroll: 0,
            pending_pause: None,
            stop_sent: false,
            exit: None,
            paused_at: None,
        }
    }

    /// The run's state as the user should see it, sent requests included.
    pub fn state(&self) -> Option<RunState> {
        self.snapshot.as_ref().map(|s| s.state)
    }

    fn finished(&self) -> bool {
        self.state() == Some(RunState::Finished)
    }

    fn stopping(&self) -> bool {
        self.stop_sent || self.state() == Some(RunState::Stopping)
    }

    /// Applies one event; returns the control to send to the run, if any.
    pub fn handle(&mut self, event: Event) -> Option<Control> {
        match event {
            Event::Snapshot(snapshot) => {
                if snapshot.state == RunState::Finished {
                    self.exit.get_or_insert(Exit::Finished);
                }
                match (self.pending_pause, snapshot.state) {
                    (Some(true), RunState::Paused) | (Some(false), RunState::Running) => {
                        self.pending_pause = None
                    }
                    _ => {}
                }
                self.paused_at = match snapshot.state {
                    RunState::Paused => self.paused_at.or_else(|| {
                        Some(
                            self.snapshot
                                .as_ref()
                                .map_or(snapshot.elapsed, |s| s.elapsed),
                        )
                    }),
                    _ => None,
                };
                self.snapshot = Some(snapshot);
                None
            }
            Event::LiveClosed => {
                self.exit.get_or_insert(Exit::Closed);
                None
            }
            Event::Key(key) if key.kind != KeyEventKind::Release => self.key(key),
            Event::Key(_) | Event::Resize(..) | Event::Tick => None,
        }
    }

    fn key(&mut self, key: KeyEvent) -> Option<Control> {
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        let quit = ctrl_c || key.code == KeyCode::Char('q');
        let yes = quit || matches!(key.code, KeyCode::Char('y' | 'Y') | KeyCode::Enter);
        let no = matches!(key.code, KeyCode::Char('n' | 'N') | KeyCode::Esc);
        match self.dialog {
            Some(Dialog::Help) => {
                // Any key closes the help; Ctrl-C still asks to stop, as everywhere.
                self.dialog = None;
                if ctrl_c {
                    return self.quit();
                }
                None
            }
            Some(Dialog::ConfirmStop) => {
                if yes {
                    self.dialog = None;
                    if self.finished() {
                        self.exit.get_or_insert(Exit::Finished);
                        return None;
                    }
                    self.stop_sent = true;
                    return Some(Control::Stop(STOP_REASON.to_string()));
                }
                if no {
                    self.dialog = None;
                }
                None
            }
            Some(Dialog::ConfirmLeave) => {
                if yes {
                    self.dialog = None;
                    self.exit.get_or_insert(Exit::Abandoned);
                } else if no {
                    self.dialog = None;
                }
                None
            }
            None => {
                if quit {
                    return self.quit();
                }
                match key.code {
                    KeyCode::Char('p') if !self.stopping() && !self.finished() => {
                        self.pending_pause = Some(true);
                        Some(Control::Pause)
                    }
                    KeyCode::Char('r') if !self.stopping() && !self.finished() => {
                        self.pending_pause = Some(false);
                        Some(Control::Resume)
                    }
                    KeyCode::Char('?') | KeyCode::F(1) => {
                        self.dialog = Some(Dialog::Help);
                        None
                    }
                    KeyCode::Tab | KeyCode::Right => self.select(self.view.step(true)),
                    KeyCode::BackTab | KeyCode::Left => self.select(self.view.step(false)),
                    KeyCode::Char(c @ '1'..='6') => {
                        let index = c as usize - '1' as usize;
                        self.select(View::ALL[index])
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        self.scroll = self.scroll.saturating_add(1);
                        None
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        self.scroll = self.scroll.saturating_sub(1);
                        None
                    }
                    KeyCode::PageDown => {
                        self.scroll = self.scroll.saturating_add(10);
                        None
                    }
                    KeyCode::PageUp => {
                        self.scroll = self.scroll.saturating_sub(10);
                        None
                    }
                    KeyCode::Home => {
                        self.scroll = 0;
                        None
                    }
                    _ => None,
                }
            }
        }
    }

    /// `q` or Ctrl-C with no dialog open: leave once the run is over, otherwise confirm first.
    fn quit(&mut self) -> Option<Control> {
        if self.finished() {
            self.exit.get_or_insert(Exit::Finished);
        } else if self.stopping() {
            self.dialog = Some(Dialog::ConfirmLeave);
        } else {
            self.dialog = Some(Dialog::ConfirmStop);
        }
        None
    }

    fn select(&mut self, view: View) -> Option<Control> {
        if view != self.view {
            self.view = view;
            self.scroll = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> Event {
        Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn ctrl_c() -> Event {
        Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL))
    }

    #[test]
    fn q_asks_before_stopping_and_y_confirms() {
        let mut app = App::new("t");
        assert_eq!(app.handle(key(KeyCode::Char('q'))), None);
        assert_eq!(app.dialog, Some(Dialog::ConfirmStop));
        assert_eq!(
            app.handle(key(KeyCode::Char('y'))),
            Some(Control::Stop(STOP_REASON.into()))
        );
        assert_eq!(app.dialog, None);
        assert_eq!(app.exit, None, "waits for the final snapshot");
    }

    #[test]
    fn a_second_ctrl_c_confirms_and_a_third_offers_to_leave() {
        let mut app = App::new("t");
        assert_eq!(app.handle(ctrl_c()), None);
        assert_eq!(
            app.handle(ctrl_c()),
            Some(Control::Stop(STOP_REASON.into()))
        );
        assert_eq!(app.handle(ctrl_c()), None);
        assert_eq!(app.dialog, Some(Dialog::ConfirmLeave));
        assert_eq!(app.handle(key(KeyCode::Char('y'))), None);
        assert_eq!(app.exit, Some(Exit::Abandoned));
    }

    #[test]
    fn escape_cancels_the_stop() {
        let mut app = App::new("t");
        app.handle(key(KeyCode::Char('q')));
        assert_eq!(app.handle(key(KeyCode::Esc)), None);
        assert_eq!(app.dialog, None);
        assert!(!app.stop_sent);
        // Other keys leave the question open.
        app.handle(key(KeyCode::Char('q')));
        app.handle(key(KeyCode::Char('x')));
        assert_eq!(app.dialog, Some(Dialog::ConfirmStop));
    }

    #[test]
    fn pause_and_resume_send_controls() {
        let mut app = App::new("t");
        assert_eq!(app.handle(key(KeyCode::Char('p'))), Some(Control::Pause));
        assert_eq!(app.pending_pause, Some(true));
        assert_eq!(app.handle(key(KeyCode::Char('r'))), Some(Control::Resume));
        assert_eq!(app.pending_pause, Some(false));
    }

    #[test]
    fn views_cycle_both_ways_and_reset_scroll() {
        let mut app = App::new("t");
        app.handle(key(KeyCode::BackTab));
        assert_eq!(app.view, View::Targets);
        app.handle(key(KeyCode::Down));
        assert_eq!(app.scroll, 1);
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.view, View::Overview);
        assert_eq!(app.scroll, 0);
        app.handle(key(KeyCode::Char('5')));
        assert_eq!(app.view, View::Sources);
        app.handle(key(KeyCode::Right));
        assert_eq!(app.view, View::Targets);
    }

    #[test]
    fn help_opens_and_any_key_closes_it() {
        let mut app = App::new("t");
        app.handle(key(KeyCode::Char('?')));
        assert_eq!(app.dialog, Some(Dialog::Help));
        assert_eq!(app.handle(key(KeyCode::Char('q'))), None);
        assert_eq!(app.dialog, None);
    }

    #[test]
    fn the_final_snapshot_ends_the_dashboard_and_q_leaves_without_asking() {
        let mut app = App::new("t");
        app.handle(Event::Snapshot(Arc::new(crate::tui::fixture::snapshot())));
        assert_eq!(app.exit, None);
        app.handle(Event::Snapshot(Arc::new(
            crate::tui::fixture::finished_snapshot(),
        )));
        assert_eq!(app.exit, Some(Exit::Finished));
        let mut app = App::new("t");
        app.snapshot = Some(Arc::new(crate::tui::fixture::finished_snapshot()));
        assert_eq!(app.handle(key(KeyCode::Char('q'))), None);
        assert_eq!(app.dialog, None);
        assert_eq!(app.exit, Some(Exit::Finished));
    }

    #[test]
    fn pause_feedback_clears_once_a_snapshot_shows_it_and_the_pause_start_is_kept() {
        let mut app = App::new("t");
        let running = crate::tui::fixture::snapshot();
        let before = running.elapsed;
        app.handle(Event::Snapshot(Arc::new(running.clone())));
        app.handle(key(KeyCode::Char('p')));
        for extra in [1, 2] {
            let mut paused = running.clone();
            paused.state = RunState::Paused;
            paused.elapsed += Duration::from_secs(extra);
            app.handle(Event::Snapshot(Arc::new(paused)));
            assert_eq!(app.pending_pause, None);
            assert_eq!(app.paused_at, Some(before));
        }
        app.handle(key(KeyCode::Char('r')));
        app.handle(Event::Snapshot(Arc::new(running)));
        assert_eq!((app.pending_pause, app.paused_at), (None, None));
    }

    #[test]
    fn the_channel_closing_ends_the_dashboard() {
        let mut app = App::new("t");
        app.handle(Event::LiveClosed);
        assert_eq!(app.exit, Some(Exit::Closed));
    }
}
