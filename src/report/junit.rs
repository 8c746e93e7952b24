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
    // A failure besides the thresholds (synthetic agents) is one more failed case.
    let extra = usize::from(summary.fail_reason.is_some());
    let failures = summary.thresholds.iter().filter(|t| !t.pass).count() + extra;
    let tests = summary.thresholds.len() + extra;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"stampede\" tests=\"{tests}\" failures=\"{failures}\">"
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" time=\"{:.3}\">",
        escape(&summary.profile),
        summary.duration_s
    );
    if let Some(reason) = &summary.fail_reason {
        let _ = writeln!(
            out,
            "    <testcase classname=\"stampede.run\" name=\"real agents\">\n      <failure message=\"{}\"/>\n    </testcase>",
            escape(reason)
        );
    }
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
