//! `report.html` and `stampede compare`, checked on real runs as a person would use them: the
//! page holds every chart with data and nothing from outside the file, headless Chromium
//! renders it with no network at all, and compare gates a storm against a drain.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin, read_json, repo, wait_child};

/// `stampede run PROFILE --quiet --out DIR ARGS...`, bounded; returns the exit code.
fn run_into(profile: &Path, dir: &Path, args: &[&str]) -> i32 {
    let mut child = bin()
        .arg("run")
        .arg(profile)
        .args(["--quiet", "--out"])
        .arg(dir)
        .args(args)
        .current_dir(repo(""))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(60));
    status.code().unwrap_or(-1)
}

/// A README profile scaled to 400 connections ramped in 1 s, plus `sets`; it must pass.
fn scaled(profile: &str, dir: &Path, sets: &[&str]) {
    let mut args = vec![
        "--set",
        "connections=400",
        "--set",
        "phases.0.ramp.rate=400",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let code = run_into(&repo(&format!("profiles/{profile}.json")), dir, &args);
    assert_eq!(code, 0, "the {profile} run should pass");
}

/// The README's storm, with a 3 s storm phase.
fn storm(dir: &Path) {
    scaled("bluegreen-storm", dir, &["phases.2.storm.for=3s"]);
}

/// The README's drain, over 4 s.
fn drain(dir: &Path) {
    scaled(
        "gradual-drain",
        dir,
        &["phases.2.drain.over=4s", "phases.2.drain.for=5s"],
    );
}

fn stampede(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = bin()
        .args(args)
        .current_dir(repo(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_child(&mut child, Duration::from_secs(30));
    child.wait_with_output().unwrap()
}

/// `data-points` of the chart named `name`, or `None` when the page has no such chart.
fn chart_points(html: &str, name: &str) -> Option<usize> {
    let at = html.find(&format!(r#"data-chart="{name}""#))?;
    let rest = &html[at..];
    let start = rest.find(r#"data-points=""#)? + r#"data-points=""#.len();
    let end = rest[start..].find('"')? + start;
    rest[start..end].parse().ok()
}

/// Nothing in the page points outside it: no scripts, stylesheets, images, frames, fonts or
/// URLs; the only "http" is SVG's namespace name, which is never fetched.
fn assert_self_contained(html: &str) {
    let lower = html.to_lowercase();
    for banned in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "<object",
        "<embed",
        " src=",
        "href=",
        "url(",
        "@import",
        "@font-face",
    ] {
        assert!(!lower.contains(banned), "the page contains {banned:?}");
    }
    let without_ns = lower.replace(r#"xmlns="http://www.w3.org/2000/svg""#, "");
    assert!(
        !without_ns.contains("http:")
            && !without_ns.contains("https:")
            && !without_ns.contains("//cdn"),
        "the page names a URL"
    );
}

#[test]
fn a_real_runs_report_is_self_contained_and_every_chart_has_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("storm");
    storm(&out);
    for file in [
        "summary.json",
        "latency.hlog",
        "profile.json",
        "report.html",
    ] {
        assert!(out.join(file).is_file(), "--out lacks {file}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_self_contained(&html);
    for chart in [
        "connections",
        "rates",
        "latency-connect",
        "latency-heartbeat",
        "distribution",
        "recovery",
    ] {
        let points = chart_points(&html, chart).unwrap_or_else(|| panic!("no {chart} chart"));
        assert!(points > 0, "the {chart} chart is empty");
    }
    // Plain TCP has no handshake and no publisher: said in a line, not drawn empty.
    for family in ["handshake", "delivery"] {
        assert_eq!(chart_points(&html, &format!("latency-{family}")), Some(0));
        assert!(html.contains(&format!("{family} latency: no samples in this run.")));
    }
    // The verdict and every threshold at the top, the phases named, the profile itself.
    let summary = read_json(&out.join("summary.json"));
    let thresholds_at = html.find("<h2>Thresholds</h2>").unwrap();
    assert!(thresholds_at < html.find("<h2>Connections</h2>").unwrap());
    assert!(html.contains(r#"<span class="badge pass">PASS</span>"#));
    for t in summary["thresholds"].as_array().unwrap() {
        let name = t["name"]
            .as_str()
            .unwrap()
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(html.contains(&name), "threshold {name} missing");
    }
    for band in ["0 ramp", "1 hold", "2 storm"] {
        assert!(
            html.contains(&format!(">{band}<")),
            "phase band {band} missing"
        );
    }
    assert!(
        html.contains("&quot;connections&quot;: 400"),
        "the profile as run"
    );
    // The timeline now says what was wanted each second, for the open-vs-wanted chart.
    let timeline = summary["timeline"].as_array().unwrap();
    assert!(timeline.iter().any(|p| p["wanted"] == 400), "{timeline:?}");
    common::assert_schema("summary.schema.json", &summary);

    // `stampede report` rewrites the same page from the same files, wherever asked.
    let again = dir.path().join("again.html");
    let output = stampede(&[
        "report".as_ref(),
        out.as_os_str(),
        "--html".as_ref(),
        again.as_os_str(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(std::fs::read_to_string(&again).unwrap(), html);

    // A directory without a run is bad input, with the way out named.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = stampede(&["report".as_ref(), empty.as_os_str()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("summary.json") && stderr.contains("--out"),
        "{stderr}"
    );
    assert!(!empty.join("report.html").exists());
}

#[test]
fn a_failing_run_still_gets_its_report_with_errors_stacked_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the discard port of this loopback address: every connect is refused.
    let profile = dir.path().join("refused.json");
    std::fs::write(
        &profile,
        r#"{"name": "refused", "target": {"addrs": ["127.0.0.1:9"]}, "protocol": "tcp",
            "connections": 50, "reconnect": {"policy": "immediate"},
            "phases": [{"ramp": {"rate": 100}}, {"hold": {"for": "1s"}}],
            "thresholds": ["errors <= 0"]}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    assert_eq!(
        run_into(&profile, &out, &[]),
        1,
        "the threshold should fail"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains(r#"<span class="badge fail">FAIL</span>"#));
    assert!(html.contains(r#"<td class="fail">FAIL</td>"#));
    assert!(
        html.contains("<title>error: refused</title>"),
        "refused errors not stacked"
    );

    // --no-report: the data, no page.
    let quiet = dir.path().join("quiet");
    assert_eq!(run_into(&profile, &quiet, &["--no-report"]), 1);
    assert!(quiet.join("summary.json").is_file());
    assert!(!quiet.join("report.html").exists());
}

/// PNG width and height from the IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (be(16), be(20))
}

/// Headless Chromium in a network namespace of its own (no route anywhere, not even
/// loopback is up): whatever it renders came from the file. Returns the screenshot's bytes and
/// Chromium's console lines.
fn screenshot(page: &Path, png: &Path, size: (u32, u32)) -> (Vec<u8>, Vec<String>) {
    let mut child = Command::new("unshare")
        .arg("--net")
        .arg("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian's chromium package; scripts/test installs it) and unshare");
    let status = wait_child(&mut child, Duration::from_secs(60));
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(status.success(), "chromium failed: {stderr}");
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (std::fs::read(png).unwrap(), console)
}

#[test]
fn headless_chromium_renders_the_report_and_the_comparison_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::thread::scope(|s| {
        s.spawn(|| storm(&a));
        s.spawn(|| drain(&b));
    });
    let cmp = dir.path().join("cmp.html");
    let output = stampede(&[
        "compare".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
        "--allow-different-profiles".as_ref(),
        "--html".as_ref(),
        cmp.as_os_str(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    // The baseline: a page with one line of text, same window, same invocation.
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><p>blank</p>").unwrap();
    let size = (1000, 2000);
    let (blank_png, _) = screenshot(&blank, &dir.path().join("blank.png"), size);
    for page in [a.join("report.html"), cmp] {
        let (png, console) = screenshot(&page, &dir.path().join("page.png"), size);
        assert_eq!(png_size(&png), size, "{}", page.display());
        assert!(
            console.is_empty(),
            "{}: console said {console:#?}",
            page.display()
        );
        // Charts and tables compress far worse than a blank page: the page was drawn.
        assert!(
            png.len() > 8 * blank_png.len(),
            "{}: screenshot of {} bytes against {} for a blank page",
            page.display(),
            png.len(),
            blank_png.len()
        );
    }
}

#[test]
fn compare_gates_a_storm_against_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("storm"), dir.path().join("drain"));
    std::thread::scope(|s| {
        s.spawn(|| storm(&a));
        s.spawn(|| drain(&b));
    });
    let path = |p: &PathBuf| p.as_os_str().to_owned();
    let junit = dir.path().join("compare.xml");
    let html = dir.path().join("compare.html");

    // Different profiles are refused unless asked, and nothing is written.
    let output = stampede(&[
        "compare".as_ref(),
        &path(&a),
        &path(&b),
        "--junit".as_ref(),
        &path(&junit),
        "--html".as_ref(),
        &path(&html),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-different-profiles"), "{stderr}");
    assert!(!junit.exists() && !html.exists());

    // The drain recovers over its window (seconds), the storm at once: a +2 s gate on the
    // time to 100 % regresses; the drain's peak reconnect rate is far below the storm's.
    let output = stampede(&[
        "compare".as_ref(),
        &path(&a),
        &path(&b),
        "--allow-different-profiles".as_ref(),
        "--fail-if".as_ref(),
        "phases.2.recovery_100_s > +2s".as_ref(),
        "--fail-if".as_ref(),
        "peak_reconnects_per_s > +10%".as_ref(),
        "--junit".as_ref(),
        &path(&junit),
        "--html".as_ref(),
        &path(&html),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  phases.2.recovery_100_s > +2s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pass  peak_reconnects_per_s > +10%"),
        "{stdout}"
    );
    assert!(stdout.contains("1 regression(s) of 2 gate(s)"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"tests="2" failures="1""#), "{xml}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained(&page);
    for chart in [
        "connections",
        "rates",
        "latency-connect",
        "latency-heartbeat",
        "distribution",
    ] {
        assert!(
            chart_points(&page, chart).unwrap_or(0) > 0,
            "compare: {chart} empty"
        );
    }
    // Both runs on the same axes.
    assert!(page.contains("connects (base)") && page.contains("connects (new)"));

    // A run against itself (given as summary.json): no regression on any gate.
    let output = stampede(&[
        "compare".as_ref(),
        &path(&a.join("summary.json")),
        &path(&a),
        "--fail-if".as_ref(),
        "connect_p99 > +0%".as_ref(),
        "--fail-if".as_ref(),
        "established_ratio < -0.001".as_ref(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    // A figure the runs lack (plain TCP: no handshake) cannot pass a gate.
    let output = stampede(&[
        "compare".as_ref(),
        &path(&a),
        &path(&a),
        "--fail-if".as_ref(),
        "handshake_p99 > +10%".as_ref(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");

    // A bad gate is bad input: exit 2, the gate and the fix named, nothing written.
    std::fs::remove_file(&junit).unwrap();
    let output = stampede(&[
        "compare".as_ref(),
        &path(&a),
        &path(&a),
        "--fail-if".as_ref(),
        "connect_p99 > 10".as_ref(),
        "--junit".as_ref(),
        &path(&junit),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("connect_p99 > 10") && stderr.contains("+5ms"),
        "{stderr}"
    );
    assert!(!junit.exists());
}
