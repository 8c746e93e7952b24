//! Regression gates (`--fail-if 'connect_p99 > +10%'`): parsing, units, and the verdict on a
//! pair of values.

use super::figures::{Kind, metric_kind};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

/// How a gate's limit reads: a percentage of the base, or a plain difference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Change {
    Percent(f64),
    /// In the figure's own unit (microseconds for latencies, seconds for recovery times).
    Absolute(f64),
}

/// `--fail-if 'METRIC OP CHANGE'`: the run regressed when NEW minus BASE satisfies it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    pub text: String,
    pub metric: String,
    op: Op,
    pub(super) change: Change,
}

const GATE_HELP: &str = "expected METRIC OP CHANGE, e.g. 'connect_p99 > +10%', 'established_ratio < -0.001', 'recovery_100_s > +2s' (OP one of >, >=, <, <=; CHANGE a signed number, with % for a change relative to BASE, or a unit: us, ms, s for times)";

impl Gate {
    pub fn parse(text: &str) -> Result<Gate, String> {
        let ops = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)];
        let (metric, op, value) = ops
            .iter()
            .find_map(|(token, op)| {
                text.split_once(token)
                    .map(|(l, r)| (l.trim(), *op, r.trim()))
            })
            .ok_or_else(|| format!("--fail-if {text:?}: {GATE_HELP}"))?;
        if metric.is_empty() || value.is_empty() {
            return Err(format!("--fail-if {text:?}: {GATE_HELP}"));
        }
        let bad_number = || format!("--fail-if {text:?}: {value:?} is not a change; {GATE_HELP}");
        let (number, unit) = split_unit(value);
        let n: f64 = number.parse().map_err(|_| bad_number())?;
        if !n.is_finite() {
            return Err(bad_number());
        }
        let kind = metric_kind(metric).ok_or_else(|| {
            format!(
                "--fail-if {text:?}: unknown figure {metric:?}; figures are named as in thresholds: established_ratio, open_at_end_ratio, errors, errors.<kind>, given_up, <latency>_<stat> (connect, connect_service, heartbeat, handshake, delivery, recovery; p50, p90, p99, p999, max, mean, min), phases.<N>.<recovered_ratio|recovery_99_s|recovery_100_s|peak_connects_per_s|connect_p99>, recovered_ratio, recovery_99_s and recovery_100_s (the worst disruptive phase), nlb.<CloudWatch name>; `stampede compare BASE NEW` lists every one"
            )
        })?;
        let change = match unit {
            "%" => Change::Percent(n),
            "" if kind == Kind::Micros => {
                return Err(format!(
                    "--fail-if {text:?}: {metric} is a latency; write the change with a unit (+5ms, +500us) or as a percentage (+10%)"
                ));
            }
            "" => Change::Absolute(n),
            "us" | "µs" | "ms" | "s" => {
                let seconds = n * match unit {
                    "s" => 1.0,
                    "ms" => 1e-3,
                    _ => 1e-6,
                };
                match kind {
                    Kind::Micros => Change::Absolute(seconds * 1e6),
                    Kind::Seconds => Change::Absolute(seconds),
                    _ => {
                        return Err(format!(
                            "--fail-if {text:?}: {metric} is not a time; write a plain number or a percentage"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "--fail-if {text:?}: unknown unit {other:?}; use %, us, ms or s"
                ));
            }
        };
        Ok(Gate {
            text: text.to_string(),
            metric: metric.to_string(),
            op,
            change,
        })
    }

    /// Whether the change from `base` to `new` is a regression, and the change as read.
    pub(super) fn judge(&self, base: f64, new: f64) -> (bool, f64) {
        let (observed, limit) = match self.change {
            Change::Percent(p) => (relative(base, new), p),
            Change::Absolute(a) => (new - base, a),
        };
        // Figures are decimals read from JSON: 0.999 - 1.0 is -0.0010000000000000009, which
        // must not cross a limit of -0.001. Differences within a part in 10^9 are equal.
        let slack = 1e-9 * limit.abs().max(1.0);
        let hit = match self.op {
            Op::Gt => observed > limit + slack,
            Op::Ge => observed >= limit - slack,
            Op::Lt => observed < limit - slack,
            Op::Le => observed <= limit + slack,
        };
        (hit, observed)
    }
}

fn split_unit(value: &str) -> (&str, &str) {
    let at = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E')))
        .map_or(value.len(), |(i, _)| i);
    (value[..at].trim(), value[at..].trim())
}

/// Percent change from `base` to `new`; infinite when only `new` is non-zero.
pub(super) fn relative(base: f64, new: f64) -> f64 {
    if base == new {
        0.0
    } else if base == 0.0 {
        if new > 0.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        }
    } else {
        (new - base) / base.abs() * 100.0
    }
}

/// One gate's verdict.
#[derive(Clone, Debug)]
pub struct GateResult {
    /// The gate as written, or what was judged (`NEW passed its own thresholds`).
    pub text: String,
    pub regressed: bool,
    /// What was seen, in words: "+25.3 % (130.4ms to 163.4ms)" or "not measured in NEW".
    pub observed: String,
}
