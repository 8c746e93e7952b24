//! The live terminal dashboard (ratatui). It consumes the run's `LiveSnapshot`s and sends
//! `Control`s back; it must never block the load, so it runs on its own thread and only reads
//! the latest snapshot off the `watch` channel.
//!
//! - `app`: state and key handling, fed by one `Event` enum (snapshots, keys, resizes, ticks).
//! - `ui`: drawing, generic over ratatui's `Backend` through `Frame` (tests use `TestBackend`).
//! - `terminal`: taking the terminal and always restoring it, on panic too.

pub mod app;
#[cfg(test)]
pub(crate) mod fixture;
mod terminal;
pub mod ui;

use std::io;
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::crossterm::event as term_event;
use tokio::time::Instant;

pub use app::{App, Event, Exit};
pub use terminal::restore;

use crate::live::{ControlTx, LiveRx};

pub struct Options {
    /// Profile name, shown before the first snapshot arrives.
    pub profile: String,
    /// Frames per second.
    pub fps: u16,
}

/// Where key and resize events come from: the real terminal, or a script in tests.
pub trait Input {
    /// Waits up to `timeout` for one input event.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>>;
}

/// The real terminal's input, through crossterm.
pub struct TerminalInput;

impl Input for TerminalInput {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        // A panic elsewhere restored the terminal: stop drawing over the user's shell.
        if !terminal::is_taken() {
            return Err(io::Error::other("the terminal was restored after a panic"));
        }
        if !term_event::poll(timeout)? {
            return Ok(None);
        }
        Ok(match term_event::read()? {
            term_event::Event::Key(key) => Some(Event::Key(key)),
            term_event::Event::Resize(w, h) => Some(Event::Resize(w, h)),
            _ => None,
        })
    }
}

/// A running dashboard.
pub struct Dashboard {
    exit_rx: tokio::sync::oneshot::Receiver<io::Result<Exit>>,
}

impl Dashboard {
    /// Takes the terminal and starts drawing on a thread of its own.
    pub fn start(live_rx: LiveRx, control_tx: ControlTx, options: Options) -> io::Result<Self> {
        let guard = terminal::TerminalGuard::take()?;
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("stampede-tui".into())
            .spawn(move || {
                let result = (|| {
                    let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
                    term.clear()?;
                    let mut app = App::new(&options.profile);
                    let mut live_rx = live_rx;
                    run(
                        &mut term,
                        &mut app,
                        &mut TerminalInput,
                        &mut live_rx,
                        &control_tx,
                        options.fps,
                    )
                })();
                drop(guard);
                let _ = exit_tx.send(result);
            })?;
        Ok(Dashboard { exit_rx })
    }

    /// Waits for the dashboard to end; the terminal is restored by then.
    pub async fn wait(self) -> io::Result<Exit> {
        match self.exit_rx.await {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the dashboard thread panicked")),
        }
    }
}

/// The event loop: input, snapshots and frame ticks become `Event`s for the `App`; controls go
/// to the run; a frame is drawn on each tick and after each key or resize. Returns when the app
/// decides to exit.
pub fn run<B: Backend>(
    term: &mut Terminal<B>,
    app: &mut App,
    input: &mut impl Input,
    live_rx: &mut LiveRx,
    control_tx: &ControlTx,
    fps: u16,
) -> io::Result<Exit>
where
    B::Error: Send + Sync + 'static,
{
    let frame = Duration::from_secs_f64(1.0 / f64::from(fps.clamp(1, 60)));
    let mut next_frame = Instant::now();
    loop {
        let mut events = Vec::with_capacity(3);
        match live_rx.has_changed() {
            Ok(true) => {
                if let Some(snapshot) = live_rx.borrow_and_update().clone() {
                    events.push(Event::Snapshot(snapshot));
                }
            }
            Ok(false) => {}
            Err(_) => events.push(Event::LiveClosed),
        }
        let now = Instant::now();
        if now >= next_frame {
            events.push(Event::Tick);
            next_frame = now + frame;
        } else if let Some(event) = input.next(next_frame - now)? {
            events.push(event);
        }
        let mut redraw = false;
        for event in events {
            redraw |= matches!(event, Event::Tick | Event::Key(_) | Event::Resize(..));
            if let Some(control) = app.handle(event) {
                // The run may be gone already; its final snapshot will end the loop.
                let _ = control_tx.send(control);
            }
        }
        if let Some(exit) = app.exit {
            return Ok(exit);
        }
        if redraw {
            term.draw(|f| ui::draw(f, app)).map_err(io::Error::other)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use super::*;
    use crate::live::{Control, LiveSnapshot, RunState};

    /// Input from a script: each entry is returned once, then the input is quiet.
    struct Script(VecDeque<Event>);

    impl Input for Script {
        #[expect(
            clippy::disallowed_methods,
            reason = "stands in for the blocking terminal input thread, which waits in wall time"
        )]
        fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
            match self.0.pop_front() {
                Some(event) => Ok(Some(event)),
                None => {
                    std::thread::sleep(timeout.min(Duration::from_millis(5)));
                    Ok(None)
                }
            }
        }
    }

    fn snapshot(state: RunState) -> Arc<LiveSnapshot> {
        let mut s = fixture::snapshot();
        s.state = state;
        Arc::new(s)
    }

    fn key(c: char) -> Event {
        Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "a plain thread plays the run against the blocking UI loop, in wall time"
    )]
    fn q_then_y_stops_the_run_and_the_final_snapshot_ends_the_loop() {
        let (live_tx, mut live_rx) = tokio::sync::watch::channel(Some(snapshot(RunState::Running)));
        let (control_tx, mut control_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut app = App::new("t");
        let mut input = Script(VecDeque::from([key('q'), key('y')]));
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            live_tx.send_replace(Some(snapshot(RunState::Finished)));
            // Keep the channel open: the loop must end on the snapshot, not on the close.
            std::thread::sleep(Duration::from_millis(500));
        });
        let exit = run(
            &mut term,
            &mut app,
            &mut input,
            &mut live_rx,
            &control_tx,
            50,
        )
        .unwrap();
        assert_eq!(exit, Exit::Finished);
        assert_eq!(
            control_rx.try_recv().unwrap(),
            Control::Stop(app::STOP_REASON.into())
        );
        let screen = format!("{}", term.backend());
        assert!(screen.contains("stampede"), "{screen}");
        finisher.join().unwrap();
    }

    #[test]
    fn the_loop_ends_when_the_run_drops_the_channel() {
        let (live_tx, mut live_rx) = tokio::sync::watch::channel(None);
        drop(live_tx);
        let (control_tx, _control_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut app = App::new("t");
        let exit = run(
            &mut term,
            &mut app,
            &mut Script(VecDeque::new()),
            &mut live_rx,
            &control_tx,
            4,
        )
        .unwrap();
        assert_eq!(exit, Exit::Closed);
    }
}
