//! The dashboard as a person sees it: the real binary in a real terminal (tmux on a private
//! socket), read with capture-pane, driven with send-keys.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests measure and wait in wall time, around real sockets and subprocesses"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use common::{bin, read_json, repo};

/// A private tmux server, killed on drop whatever happens to the test.
struct Tmux {
    socket: String,
    /// The socket file, removed on drop (tmux leaves it behind).
    socket_path: Option<String>,
}

impl Tmux {
    fn start(width: u16, height: u16, script: &str) -> Tmux {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tmux = Tmux {
            socket: format!("stampede-e2e-{}-{nanos}", std::process::id()),
            socket_path: None,
        };
        let output = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "-s",
            "main",
            "sh",
            "-c",
            script,
        ]);
        assert!(
            output.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let path = tmux.run(&["display-message", "-p", "#{socket_path}"]);
        tmux.socket_path = Some(String::from_utf8_lossy(&path.stdout).trim().to_string())
            .filter(|p| p.contains(&tmux.socket));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux runs (scripts/test installs it)")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "main"]).stdout)
            .into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Polls the pane until `pred` holds; panics with the last screen after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; the pane shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The `12.3s` in `12.3s elapsed` (or `1m05s`), as seconds.
fn elapsed(screen: &str) -> Option<f64> {
    let before = screen.split(" elapsed").next()?;
    let token = before.rsplit(' ').next()?;
    let (minutes, seconds) = match token.split_once('m') {
        Some((m, s)) => (m.parse::<f64>().ok()?, s),
        None => (0.0, token),
    };
    Some(minutes * 60.0 + seconds.strip_suffix('s')?.parse::<f64>().ok()?)
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[test]
fn dashboard_shows_the_run_live_and_q_stops_it_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let exit_file = dir.path().join("exit");
    // The smoke profile with a longer hold, so a slow machine cannot finish before `q`.
    let script = format!(
        "cd {repo} && {bin} run profiles/smoke.json --set phases.1.hold.for=40s --out {out}; \
         code=$?; stty -a > {out}/stty 2>&1; echo $code > {out}/exit.tmp; \
         mv {out}/exit.tmp {out}/exit; sleep 60",
        repo = quote(&repo("")),
        bin = quote(Path::new(bin().get_program())),
        out = quote(dir.path()),
    );
    let tmux = Tmux::start(80, 24, &script);

    let first = tmux.wait_for("dashboard", Duration::from_secs(20), |s| {
        s.contains("RUNNING") && s.contains("Open connections") && elapsed(s).is_some()
    });
    for panel in [
        "stampede smoke",
        "elapsed",
        "left",
        "connect_p99 < 50ms",
        "1 Overview",
        "Connections",
        "/ 2,000 open",
        "connects/s",
        "Open connections",
        "Per second",
        "Latency",
        "connect_service",
        "heartbeat_rtt",
        "q stop",
    ] {
        assert!(first.contains(panel), "{panel:?} missing:\n{first}");
    }
    let t0 = elapsed(&first).unwrap();
    let second = tmux.wait_for("a later frame", Duration::from_secs(10), |s| {
        elapsed(s).is_some_and(|t| t >= t0 + 1.0)
    });
    assert_ne!(first, second, "the live numbers move");
    eprintln!("first frame:\n{first}\nsecond frame:\n{second}");

    // Views switch with Tab and back.
    tmux.keys(&["Tab"]);
    tmux.wait_for("the latency view", Duration::from_secs(5), |s| {
        s.contains("Percentiles")
    });
    tmux.keys(&["BTab"]);
    tmux.wait_for("the overview again", Duration::from_secs(5), |s| {
        s.contains("Open connections")
    });

    // q asks first; a second q confirms.
    tmux.keys(&["q"]);
    tmux.wait_for("the stop question", Duration::from_secs(5), |s| {
        s.contains("Stop the run?")
    });
    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exit_file.exists() {
        assert!(
            Instant::now() < deadline,
            "stampede did not exit; the pane shows:\n{}",
            tmux.capture()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = std::fs::read_to_string(&exit_file).unwrap();
    assert_eq!(code.trim(), "3", "a stopped run is aborted");

    // The terminal is back to normal and the summary is on the main screen.
    let stty = std::fs::read_to_string(dir.path().join("stty")).unwrap();
    assert!(
        stty.contains(" icanon") && !stty.contains("-icanon") && !stty.contains("-echo "),
        "raw mode left on: {stty}"
    );
    let last = tmux.wait_for("the summary", Duration::from_secs(5), |s| {
        s.contains("ABORTED")
    });
    assert!(last.contains("stampede: smoke -- ABORTED"), "{last}");
    assert!(
        last.contains("aborted: stopped from the dashboard"),
        "{last}"
    );
    assert!(
        !last.contains("Open connections"),
        "left the alternate screen:\n{last}"
    );

    let summary = read_json(&dir.path().join("summary.json"));
    assert_eq!(summary["outcome"], "aborted");
    assert_eq!(summary["abort_reason"], "stopped from the dashboard");
    assert_eq!(summary["connections"]["established"], 2000);
    assert!(dir.path().join("latency.hlog").exists());
}
