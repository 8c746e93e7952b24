//! Threshold expressions such as `"connect_p99 < 50ms"` or `"errors <= 0"`.
//!
//! Parsing and evaluation against final figures; collecting the figures is `report`'s job.

use std::fmt;

use super::duration::{DURATION_HINT, parse_duration};
use crate::metrics::ErrorKind;

/// The latency families a threshold can name, with their histogram tag.
pub const LATENCY_METRICS: [&str; 5] = [
    "connect",
    "connect_service",
    "heartbeat",
    "handshake",
    "delivery",
];
/// Statistics of a latency family: `connect_p99`, `heartbeat_max`, ...
pub const LATENCY_STATS: [&str; 6] = ["p50", "p90", "p99", "p999", "max", "mean"];
/// Plain counters and ratios.
pub const COUNT_METRICS: [&str; 9] = [
    "errors",
    "established_ratio",
    "connected_ratio",
    "open_at_end_ratio",
    "established",
    "connected",
    "attempts",
    "peak_open",
    "received",
];
/// Figures of one disruptive phase: `phases.N.recovered_ratio >= 1`.
pub const PHASE_METRICS: [&str; 3] = ["recovered_ratio", "recovery_99_s", "recovery_100_s"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn holds(self, observed: f64, limit: f64) -> bool {
        match self {
            Op::Lt => observed < limit,
            Op::Le => observed <= limit,
            Op::Gt => observed > limit,
            Op::Ge => observed >= limit,
            Op::Eq => (observed - limit).abs() < f64::EPSILON,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }
}

/// What a threshold reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    /// A statistic of a latency histogram, compared in microseconds.
    Latency {
        family: String,
        stat: String,
    },
    /// `errors`, or `errors.<kind>` for one kind.
    Errors(Option<ErrorKind>),
    /// Slots established at least once / slots requested.
    EstablishedRatio,
    /// Slots connected at least once / slots requested.
    ConnectedRatio,
    /// Connections open and established when the run ended / connections wanted then.
    OpenAtEndRatio,
    Established,
    Connected,
    /// A figure of phase `index` (as in `--set phases.N...`): compared in seconds for the
    /// recovery times.
    Phase {
        index: usize,
        metric: PhaseMetric,
    },
    Attempts,
    PeakOpen,
    /// Server-sent messages that arrived (`messages.received`).
    Received,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseMetric {
    /// Connections open and established at the phase's end / connections it wanted then.
    RecoveredRatio,
    /// Seconds from the phase's start until 99 % (all) of them were established again.
    Recovery99,
    Recovery100,
}

impl Subject {
    /// Figures that only an established connection can give: none of them can be shown by
    /// plain TCP without heartbeats, whose connections never prove they are served.
    pub fn needs_established(&self) -> bool {
        matches!(
            self,
            Subject::EstablishedRatio
                | Subject::OpenAtEndRatio
                | Subject::Established
                | Subject::Phase { .. }
        )
    }

    fn is_ratio(&self) -> bool {
        matches!(
            self,
            Subject::EstablishedRatio
                | Subject::ConnectedRatio
                | Subject::OpenAtEndRatio
                | Subject::Phase {
                    metric: PhaseMetric::RecoveredRatio,
                    ..
                }
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// The expression as written in the profile, used as the threshold's name.
    pub text: String,
    pub metric: String,
    pub subject: Subject,
    pub op: Op,
    /// Microseconds for latencies, seconds for recovery times, plain numbers otherwise.
    pub limit: f64,
}

impl Threshold {
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (metric, op, value) = ops
            .iter()
            .find_map(|(token, op)| {
                text.split_once(token)
                    .map(|(left, right)| (left.trim(), *op, right.trim()))
            })
            .ok_or_else(|| {
                "expected METRIC OP VALUE with OP one of <, <=, >, >=, == (e.g. \"connect_p99 < 50ms\")"
                    .to_string()
            })?;
        let subject = parse_subject(metric)?;
        let limit = match &subject {
            Subject::Latency { .. } => parse_duration(value)
                .map(|d| d.as_secs_f64() * 1e6)
                .ok_or_else(|| {
                    format!("limit {value:?} is not a duration; expected {DURATION_HINT}")
                })?,
            Subject::Phase {
                metric: PhaseMetric::Recovery99 | PhaseMetric::Recovery100,
                ..
            } => parse_duration(value)
                .map(|d| d.as_secs_f64())
                .or_else(|| {
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0)
                })
                .ok_or_else(|| {
                    format!(
                        "limit {value:?} is not a time; expected seconds (\"5\") or {DURATION_HINT}"
                    )
                })?,
            _ => value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("limit {value:?} is not a non-negative number"))?,
        };
        if subject.is_ratio() && limit > 1.0 {
            return Err(format!(
                "{metric} is at most 1, the limit {value} can never hold"
            ));
        }
        Ok(Threshold {
            text: text.trim().to_string(),
            metric: metric.to_string(),
            subject,
            op,
            limit,
        })
    }

    /// Whether `observed` satisfies the threshold; no sample at all never does.
    pub fn holds(&self, observed: Option<f64>) -> bool {
        observed.is_some_and(|value| self.op.holds(value, self.limit))
    }

    pub fn unit(&self) -> &'static str {
        match self.subject {
            Subject::Latency { .. } => "us",
            Subject::Phase {
                metric: PhaseMetric::Recovery99 | PhaseMetric::Recovery100,
                ..
            } => "s",
            _ if self.subject.is_ratio() => "ratio",
            _ => "count",
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_subject(metric: &str) -> Result<Subject, String> {
    match metric {
        "errors" => return Ok(Subject::Errors(None)),
        "established_ratio" => return Ok(Subject::EstablishedRatio),
        "connected_ratio" => return Ok(Subject::ConnectedRatio),
        "open_at_end_ratio" => return Ok(Subject::OpenAtEndRatio),
        "established" => return Ok(Subject::Established),
        "connected" => return Ok(Subject::Connected),
        "attempts" => return Ok(Subject::Attempts),
        "peak_open" => return Ok(Subject::PeakOpen),
        "received" => return Ok(Subject::Received),
        _ => {}
    }
    if let Some(kind) = metric.strip_prefix("errors.") {
        return ErrorKind::from_name(kind)
            .map(|k| Subject::Errors(Some(k)))
            .ok_or_else(|| {
                format!(
                    "unknown error kind {kind:?}; valid kinds: {}",
                    ErrorKind::ALL.map(|k| k.name()).join(", ")
                )
            });
    }
    if let Some(rest) = metric.strip_prefix("phases.") {
        const HINT: &str = "expected phases.N.METRIC with N the phase's index (from 0, as in \
             --set phases.N...) and METRIC one of recovered_ratio, recovery_99_s, recovery_100_s";
        let (index, name) = rest
            .split_once('.')
            .ok_or_else(|| format!("{metric:?}: {HINT}"))?;
        let index = index
            .parse::<usize>()
            .map_err(|_| format!("{metric:?}: phase index {index:?} is not a number; {HINT}"))?;
        let metric = match name {
            "recovered_ratio" => PhaseMetric::RecoveredRatio,
            "recovery_99_s" => PhaseMetric::Recovery99,
            "recovery_100_s" => PhaseMetric::Recovery100,
            _ => return Err(format!("{metric:?}: unknown phase figure {name:?}; {HINT}")),
        };
        return Ok(Subject::Phase { index, metric });
    }
    if let Some((family, stat)) = metric.rsplit_once('_')
        && LATENCY_METRICS.contains(&family)
        && LATENCY_STATS.contains(&stat)
    {
        return Ok(Subject::Latency {
            family: family.to_string(),
            stat: stat.to_string(),
        });
    }
    Err(format!(
        "unknown metric {metric:?}; valid metrics: {}, errors.<kind>, phases.<N>.<{}>, or <latency>_<stat> with latency one of {} and stat one of {}",
        COUNT_METRICS.join(", "),
        PHASE_METRICS.join("|"),
        LATENCY_METRICS.join(", "),
        LATENCY_STATS.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_expressions() {
        let t = Threshold::parse("connect_p99 < 50ms").unwrap();
        assert_eq!(t.op, Op::Lt);
        assert_eq!(t.limit, 50_000.0);
        assert!(t.holds(Some(49_999.0)));
        assert!(!t.holds(Some(50_000.0)));
        assert!(!t.holds(None));

        let t = Threshold::parse("established_ratio >= 0.999").unwrap();
        assert_eq!(t.subject, Subject::EstablishedRatio);
        assert!(t.holds(Some(1.0)));

        let t = Threshold::parse("errors.refused <= 0").unwrap();
        assert_eq!(t.subject, Subject::Errors(Some(ErrorKind::Refused)));

        let t = Threshold::parse("connect_service_p999<=1s").unwrap();
        assert_eq!(
            t.subject,
            Subject::Latency {
                family: "connect_service".into(),
                stat: "p999".into()
            }
        );
    }

    #[test]
    fn explains_mistakes() {
        let err = Threshold::parse("conect_p99 < 5ms").unwrap_err();
        assert!(err.contains("unknown metric \"conect_p99\""), "{err}");
        let err = Threshold::parse("connect_p99 < 5").unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
        let err = Threshold::parse("errors.nope <= 0").unwrap_err();
        assert!(err.contains("addr_not_available"), "{err}");
        assert!(Threshold::parse("errors 0").is_err());
        assert!(Threshold::parse("established_ratio >= 2").is_err());
        assert!(Threshold::parse("phases.2.recovered_ratio >= 1.5").is_err());
        let err = Threshold::parse("phases.x.recovered_ratio >= 1").unwrap_err();
        assert!(err.contains("not a number"), "{err}");
        let err = Threshold::parse("phases.2.recovery < 1s").unwrap_err();
        assert!(err.contains("recovery_100_s"), "{err}");
    }

    #[test]
    fn parses_phase_figures() {
        let t = Threshold::parse("phases.2.recovery_100_s < 5s").unwrap();
        assert_eq!(
            t.subject,
            Subject::Phase {
                index: 2,
                metric: PhaseMetric::Recovery100
            }
        );
        assert_eq!(t.limit, 5.0);
        assert_eq!(t.unit(), "s");
        assert_eq!(
            Threshold::parse("phases.2.recovery_99_s <= 2.5")
                .unwrap()
                .limit,
            2.5
        );
        let t = Threshold::parse("phases.0.recovered_ratio >= 1").unwrap();
        assert_eq!(t.unit(), "ratio");
        assert!(t.subject.needs_established());
        assert!(
            !Threshold::parse("connected_ratio >= 1")
                .unwrap()
                .subject
                .needs_established()
        );
    }
}
