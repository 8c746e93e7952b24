//! Every shipped profile passes both the JSON Schema and the parser; every invalid fixture is
//! refused with its expected message, by the library and by `stampede profile check` (exit 2).

mod common;

use std::path::PathBuf;

use common::{assert_schema, bin, repo};
use serde_json::Value;
use stampede::profile::Profile;

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *.{ext} in {dir}");
    out
}

#[test]
fn shipped_profiles_pass_schema_and_parser() {
    let profiles = files("profiles", "json");
    for name in ["smoke.json", "ci-smoke.json", "many-sources.json"] {
        assert!(
            profiles.iter().any(|p| p.ends_with(name)),
            "profiles/{name} is missing"
        );
    }
    for path in profiles {
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_schema("profile.schema.json", &value);
        Profile::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        let out = bin()
            .args(["profile", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("valid") && text.contains("capacity"),
            "{text}"
        );
    }
}

#[test]
fn invalid_profiles_are_refused_with_their_message() {
    for path in files("tests/fixtures/profiles/invalid", "json") {
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let expected = expected.trim();
        let err = Profile::load(&path, &[]).expect_err(&format!("{} parsed", path.display()));
        let message = err.to_string();
        assert!(
            message.contains(expected),
            "{}:\n  got:      {message}\n  expected: {expected}",
            path.display()
        );
        let out = bin()
            .args(["profile", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
        assert!(out.stdout.is_empty(), "nothing half-done on stdout");
    }
}

#[test]
fn schema_rejects_what_the_parser_rejects_structurally() {
    // The structural fixtures (unknown fields, wrong types) must fail the schema too, so editors
    // that use it catch them before a run.
    for name in [
        "unknown-field",
        "unknown-phase",
        "zero-connections",
        "wrong-type",
        "target-typo",
        "bad-duration",
    ] {
        let text = std::fs::read_to_string(repo(&format!(
            "tests/fixtures/profiles/invalid/{name}.json"
        )))
        .unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(repo("schemas/profile.schema.json")).unwrap(),
        )
        .unwrap();
        assert!(
            !jsonschema::is_valid(&schema, &value),
            "{name} passed the schema"
        );
    }
}

#[test]
fn set_overrides_fields_and_names_bad_paths() {
    let out = bin()
        .args([
            "profile",
            "check",
            "profiles/smoke.json",
            "--set",
            "connections=5000",
            "--set",
            "heartbeat.interval=5s",
        ])
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connections 5000"), "{text}");
    assert!(text.contains("every 5s"), "{text}");

    let out = bin()
        .args([
            "profile",
            "check",
            "profiles/smoke.json",
            "--set",
            "heartbeat.intervall=5s",
        ])
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("heartbeat.intervall") && stderr.contains("unknown field"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    let out = bin().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["sink", "--help"],
        vec!["profile", "check", "--help"],
        vec!["doctor", "--help"],
        vec!["report", "--help"],
        vec!["compare", "--help"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Examples:"), "{args:?}: {text}");
    }
}
