//! The live views a command shows while a run lasts: the terminal dashboard and the Prometheus
//! endpoint, both fed by one `watch` channel of `LiveSnapshot`s. Used by `run` and
//! `coordinator`: start the views, hand `live_tx` to the run, `drive` the run's future.
//!
//! Views only read snapshots; nothing here can slow the load down.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::collect::Progress;
use crate::live::{ControlTx, LiveRx, LiveTx};
use crate::tui::{self, Dashboard, Exit};

pub struct ViewOptions {
    /// Take the terminal for the dashboard (the caller checks that stdout is a terminal).
    pub dashboard: bool,
    pub fps: u16,
    /// Serve `/metrics` here.
    pub metrics_listen: Option<SocketAddr>,
    /// Profile name, for the dashboard's header before the first snapshot.
    pub profile: String,
}

pub struct Views {
    /// Handed to the run once; the run dropping it tells the views it is over.
    live_tx: Option<LiveTx>,
    dashboard: Option<Dashboard>,
    metrics: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// Where `/metrics` is served (the bound address, useful with port 0).
    pub metrics_addr: Option<SocketAddr>,
}

impl Views {
    /// Binds the metrics endpoint and takes the terminal for the dashboard (or falls back to
    /// lines if the terminal refuses). An error is a usage error (exit code 2): nothing has
    /// started.
    pub async fn start(options: ViewOptions, control_tx: ControlTx) -> Result<Views, String> {
        let (live_tx, live_rx): (LiveTx, LiveRx) = tokio::sync::watch::channel(None);
        let mut views = Views {
            live_tx: Some(live_tx),
            dashboard: None,
            metrics: None,
            metrics_addr: None,
        };
        if let Some(addr) = options.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!(
                    "--metrics-listen {addr}: cannot listen: {e}; choose a free port or an \
                     address of this host"
                )
            })?;
            let bound = listener.local_addr().map_or(addr, |a| a);
            let _ = writeln!(
                std::io::stderr(),
                "stampede: live metrics at http://{bound}/metrics"
            );
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let task = tokio::spawn(crate::prometheus::run(listener, live_rx.clone(), async {
                let _ = stop_rx.await;
            }));
            views.metrics = Some((stop_tx, task));
            views.metrics_addr = Some(bound);
        }
        if options.dashboard {
            let started = Dashboard::start(
                live_rx,
                control_tx,
                tui::Options {
                    profile: options.profile,
                    fps: options.fps,
                },
            );
            match started {
                Ok(dashboard) => views.dashboard = Some(dashboard),
                // A terminal that cannot go raw still gets the run, as plain lines.
                Err(e) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "stampede: cannot start the dashboard ({e}); printing plain lines"
                    );
                }
            }
        }
        Ok(views)
    }

    /// The sender for the run's `live_tx` (once; `None` if no view wants snapshots).
    pub fn live_tx(&mut self) -> Option<LiveTx> {
        if self.dashboard.is_none() && self.metrics.is_none() {
            return None;
        }
        self.live_tx.take()
    }

    /// What the run itself should print: nothing while the dashboard owns the screen.
    pub fn progress(&self, quiet: bool) -> Progress {
        if self.dashboard.is_some() {
            Progress::Silent
        } else if quiet {
            Progress::SummaryOnly
        } else {
            Progress::Lines
        }
    }

    pub fn has_dashboard(&self) -> bool {
        self.dashboard.is_some()
    }

    /// Awaits the run while the views show it. `None`: the user left the dashboard while the
    /// run was still stopping (the caller exits with code 3). The terminal is restored and the
    /// metrics endpoint closed when this returns.
    pub async fn drive<T>(mut self, run: impl Future<Output = T>) -> Option<T> {
        // Whoever did not take the sender must not keep the channel open.
        self.live_tx = None;
        tokio::pin!(run);
        let output = match self.dashboard.take() {
            None => run.await,
            Some(dashboard) => {
                let wait = dashboard.wait();
                tokio::pin!(wait);
                tokio::select! {
                    output = &mut run => {
                        // The run dropped its sender: the dashboard leaves within a frame.
                        report_dashboard_end(wait.await);
                        output
                    }
                    exit = &mut wait => {
                        if matches!(exit, Ok(Exit::Abandoned)) {
                            self.stop_metrics().await;
                            return None;
                        }
                        report_dashboard_end(exit);
                        run.await
                    }
                }
            }
        };
        self.stop_metrics().await;
        Some(output)
    }

    async fn stop_metrics(&mut self) {
        if let Some((stop_tx, task)) = self.metrics.take() {
            let _ = stop_tx.send(());
            let _ = task.await;
        }
    }
}

fn report_dashboard_end(exit: std::io::Result<Exit>) {
    if let Err(e) = exit {
        let _ = writeln!(
            std::io::stderr(),
            "stampede: the dashboard stopped: {e}; the run goes on (Ctrl-C stops it)"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn metrics_follow_the_run_and_close_with_it() {
        let (control_tx, _control_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut views = Views::start(
            ViewOptions {
                dashboard: false,
                fps: 4,
                metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                profile: "t".into(),
            },
            control_tx,
        )
        .await
        .unwrap();
        assert_eq!(views.progress(false), Progress::Lines);
        let addr = views.metrics_addr.unwrap();
        let live_tx = views.live_tx().expect("the endpoint wants snapshots");
        assert!(views.live_tx().is_none(), "handed out once");
        live_tx.send_replace(Some(Arc::new(crate::tui::fixture::snapshot())));
        let response = scrape(addr).await.unwrap();
        assert!(response.contains("stampede_up 1"), "{response}");
        let output = views
            .drive(async move {
                drop(live_tx);
                7
            })
            .await;
        assert_eq!(output, Some(7));
        assert!(
            scrape(addr).await.is_err(),
            "the endpoint closes with the run"
        );
    }

    #[tokio::test]
    async fn without_views_the_run_gets_no_sender_and_prints_its_own_lines() {
        let (control_tx, _control_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut views = Views::start(
            ViewOptions {
                dashboard: false,
                fps: 4,
                metrics_listen: None,
                profile: "t".into(),
            },
            control_tx,
        )
        .await
        .unwrap();
        assert!(views.live_tx().is_none());
        assert_eq!(views.progress(true), Progress::SummaryOnly);
        assert_eq!(views.drive(async { 1 }).await, Some(1));
    }
}
