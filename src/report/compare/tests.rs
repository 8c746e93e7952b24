//! Unit tests of `compare`.

use super::*;
use serde_json::json;

fn run(profile: &str, p99: u64, ratio: f64, phases: Value) -> Run {
    Run {
        dir: std::path::PathBuf::from("."),
        label: profile.into(),
        summary: json!({
            "schema": "stampede.summary/v1", "profile": profile, "outcome": "pass",
            "connections": {"established_ratio": ratio, "established": 100},
            "errors": {"refused": 0},
            "latency_us": {"connect": {"count": 10, "p99": p99},
                           "handshake": {"count": 0, "p99": null}},
            "phases": phases,
        }),
        intervals: None,
        profile: None,
    }
}

fn gates(texts: &[&str]) -> Vec<Gate> {
    texts.iter().map(|t| Gate::parse(t).unwrap()).collect()
}

#[test]
fn gates_read_relative_and_absolute_changes() {
    let base = run(
        "p",
        100_000,
        1.0,
        json!([{"index": 2, "recovery_100_s": 3.0}]),
    );
    let new = run(
        "p",
        125_000,
        0.998,
        json!([{"index": 2, "recovery_100_s": 4.5}]),
    );
    let c = Comparison::new(
        base,
        new,
        gates(&[
            "connect_p99 > +10%",
            "connect_p99 > +30ms",
            "established_ratio < -0.001",
            "phases.2.recovery_100_s > +2s",
        ]),
        false,
    )
    .unwrap();
    let verdicts: Vec<bool> = c.gates.iter().map(|g| g.regressed).collect();
    assert_eq!(verdicts, vec![true, false, true, false], "{}", c.text());
    assert_eq!(c.regressions(), 2);
    assert!(
        c.gates[0].observed.starts_with("+25.0 %"),
        "{}",
        c.gates[0].observed
    );
    assert!(c.junit().contains(r#"failures="2""#));
}

#[test]
fn a_figure_missing_from_a_run_cannot_pass_a_gate() {
    let base = run("p", 100, 1.0, json!([]));
    let new = run("p", 100, 1.0, json!([]));
    let c = Comparison::new(
        base,
        new,
        gates(&["handshake_p99 > +10%", "phases.1.recovery_100_s > +1s"]),
        false,
    )
    .unwrap();
    assert!(c.gates.iter().all(|g| g.regressed));
    assert!(
        c.gates[0].observed.contains("neither"),
        "{}",
        c.gates[0].observed
    );
}

#[test]
fn different_profiles_need_consent() {
    let e = Comparison::new(
        run("a", 1, 1.0, json!([])),
        run("b", 1, 1.0, json!([])),
        vec![],
        false,
    )
    .err()
    .unwrap();
    assert!(e.contains("--allow-different-profiles"), "{e}");
    assert!(
        Comparison::new(
            run("a", 1, 1.0, json!([])),
            run("b", 1, 1.0, json!([])),
            vec![],
            true
        )
        .is_ok()
    );
}

#[test]
fn bad_gates_say_what_to_write() {
    for (text, hint) in [
        ("connect_p99 +10%", "expected METRIC OP CHANGE"),
        ("connect_p99 > 10", "is a latency"),
        ("conect_p99 > +10%", "unknown figure"),
        ("established_ratio < -2s", "not a time"),
        ("errors > +1x", "unknown unit"),
        ("errors > lots", "not a change"),
        ("phases.x.recovery_100_s > +1s", "unknown figure"),
    ] {
        let e = Gate::parse(text).err().unwrap_or_default();
        assert!(e.contains(hint), "{text}: {e}");
    }
    assert!(Gate::parse("errors.refused > 0").is_ok());
    assert!(Gate::parse("nlb.PortAllocationErrorCount > +0").is_ok());
    assert!(Gate::parse("given_up >= 1").is_ok());
}

#[test]
fn decimals_do_not_cross_a_limit_they_sit_on() {
    let g = Gate::parse("established_ratio < -0.001").unwrap();
    assert!(!g.judge(1.0, 0.999).0, "a change of exactly -0.001");
    assert!(g.judge(1.0, 0.998).0);
}

#[test]
fn the_worst_phase_answers_for_bare_recovery_figures() {
    let phases = json!([
        {"index": 1, "recovered_ratio": 1.0, "recovery_100_s": 1.5},
        {"index": 2, "recovered_ratio": 1.0, "recovery_100_s": 4.0}
    ]);
    let base = run("p", 1, 1.0, phases.clone());
    let mut never = phases;
    never[1]["recovered_ratio"] = json!(0.9);
    never[1]["recovery_100_s"] = Value::Null;
    let c = Comparison::new(
        base,
        run("p", 1, 1.0, never),
        gates(&["recovery_100_s > +2s"]),
        false,
    )
    .unwrap();
    // NEW never got all back in phase 2: no time to compare, so the gate cannot pass.
    assert!(c.gates[0].regressed, "{}", c.text());
    let figures = figures(&c.base.summary);
    let worst = figures.iter().find(|f| f.name == "recovery_100_s");
    assert_eq!(worst.map(|f| f.value), Some(4.0));
}

#[test]
fn a_new_run_that_did_not_pass_regresses() {
    let mut new = run("p", 1, 1.0, json!([]));
    new.summary["outcome"] = json!("aborted");
    new.summary["abort_reason"] = json!("interrupted");
    let c = Comparison::new(run("p", 1, 1.0, json!([])), new, vec![], false).unwrap();
    assert_eq!(c.regressions(), 1);
    assert!(
        c.text().contains("NEW's outcome is aborted: interrupted"),
        "{}",
        c.text()
    );
}

#[test]
fn the_same_name_with_different_settings_needs_consent() {
    let mut base = run("p", 1, 1.0, json!([]));
    let mut new = run("p", 1, 1.0, json!([]));
    base.profile = Some(json!({"name": "p", "connections": 400, "description": "a"}));
    new.profile = Some(json!({"name": "p", "connections": 40, "description": "b"}));
    let e = Comparison::new(base, new, vec![], false).err().unwrap();
    assert!(
        e.contains("(connections)") && e.contains("--allow-different-profiles"),
        "{e}"
    );
}

#[test]
fn a_change_from_zero_is_infinitely_relative() {
    assert_eq!(relative(0.0, 0.0), 0.0);
    assert!(relative(0.0, 3.0).is_infinite());
    let g = Gate::parse("errors > +10%").unwrap();
    assert!(g.judge(0.0, 1.0).0);
    assert!(!g.judge(0.0, 0.0).0);
}
