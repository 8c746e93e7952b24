//! Thresholds as JUnit test cases, for CI systems that read JUnit XML.

use std::fmt::Write;

use super::summary::Summary;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(summary: &Summary) -> String {
    let failures = summary.thresholds.iter().filter(|t| !t.pass).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"stampede\" tests=\"{}\" failures=\"{failures}\">",
        summary.thresholds.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
        escape(&summary.profile),
        summary.thresholds.len(),
        summary.duration_s
    );
    for t in &summary.thresholds {
        let observed = t
            .observed
            .map_or_else(|| "no samples".to_string(), |v| format!("{v} {}", t.unit));
        let _ = write!(
            out,
            "    <testcase classname=\"stampede.thresholds\" name=\"{}\"",
            escape(&t.name)
        );
        if t.pass {
            let _ = writeln!(out, "/>");
        } else {
            let _ = writeln!(
                out,
                ">\n      <failure message=\"{}: observed {}, limit {} {} {}\"/>\n    </testcase>",
                escape(&t.name),
                escape(&observed),
                escape(t.op),
                t.limit,
                t.unit
            );
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
