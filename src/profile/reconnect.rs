//! Reconnect policies: what a connection does after it fails or is closed (by the server, a
//! heartbeat timeout, a storm or a drain). Pure arithmetic over attempt counts and a random
//! number; the engine owns the clock.

use std::time::Duration;

use serde::Deserialize;

use super::ProfileError;
use super::duration::{DURATION_HINT, parse_duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    None,
    /// Uniform in `[0, backoff]` (AWS "full jitter").
    Full,
    /// `backoff / 2` plus uniform in `[0, backoff / 2]`.
    Equal,
    /// Uniform in `[base, previous * 3]`, capped.
    Decorrelated,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ReconnectPolicy {
    /// Never reconnect: a failed or closed connection stays down.
    #[default]
    Never,
    Immediate {
        max_attempts: u32,
    },
    Fixed {
        delay: Duration,
        max_attempts: u32,
    },
    Exponential {
        base: Duration,
        cap: Duration,
        jitter: Jitter,
        max_attempts: u32,
    },
}

impl ReconnectPolicy {
    /// How long to wait before attempt number `attempt` (1 for the first reconnect), given the
    /// previous wait (for decorrelated jitter) and a uniform random `u64`; `None` means give up.
    pub fn delay(&self, attempt: u32, previous: Duration, random: u64) -> Option<Duration> {
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
        match *self {
            ReconnectPolicy::Never => None,
            ReconnectPolicy::Immediate { max_attempts } => {
                (attempt <= max_attempts).then_some(Duration::ZERO)
            }
            ReconnectPolicy::Fixed {
                delay,
                max_attempts,
            } => (attempt <= max_attempts).then_some(delay),
            ReconnectPolicy::Exponential {
                base,
                cap,
                jitter,
                max_attempts,
            } => {
                if attempt > max_attempts {
                    return None;
                }
                let doubling = 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
                let backoff = base.mul_f64(doubling).min(cap);
                Some(match jitter {
                    Jitter::None => backoff,
                    Jitter::Full => backoff.mul_f64(unit),
                    Jitter::Equal => backoff / 2 + (backoff / 2).mul_f64(unit),
                    Jitter::Decorrelated => {
                        let high = previous.max(base) * 3;
                        (base + (high - base).mul_f64(unit)).min(cap)
                    }
                })
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReconnect {
    policy: String,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    cap: Option<String>,
    #[serde(default)]
    jitter: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

fn duration_field(
    path: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ProfileError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(text).ok_or_else(|| {
            ProfileError::at(
                path,
                format!("{text:?} is not a duration; expected {DURATION_HINT}"),
            )
        }),
    }
}

impl RawReconnect {
    pub(super) fn validate(self, path: &str) -> Result<ReconnectPolicy, ProfileError> {
        let max_attempts = self.max_attempts.unwrap_or(u32::MAX);
        if max_attempts == 0 {
            return Err(ProfileError::at(
                format!("{path}.max_attempts"),
                "0 is out of range; give at least 1, or use \"policy\": \"none\"",
            ));
        }
        let unused = |field: &str, present: bool| -> Result<(), ProfileError> {
            if present {
                Err(ProfileError::at(
                    format!("{path}.{field}"),
                    format!("`{field}` does not apply to policy {:?}", self.policy),
                ))
            } else {
                Ok(())
            }
        };
        match self.policy.as_str() {
            "none" => {
                unused("delay", self.delay.is_some())?;
                unused("base", self.base.is_some())?;
                Ok(ReconnectPolicy::Never)
            }
            "immediate" => {
                unused("delay", self.delay.is_some())?;
                unused("base", self.base.is_some())?;
                Ok(ReconnectPolicy::Immediate { max_attempts })
            }
            "fixed" => {
                unused("base", self.base.is_some())?;
                unused("jitter", self.jitter.is_some())?;
                Ok(ReconnectPolicy::Fixed {
                    delay: duration_field(
                        &format!("{path}.delay"),
                        self.delay.as_deref(),
                        Duration::from_secs(1),
                    )?,
                    max_attempts,
                })
            }
            "exponential" => {
                unused("delay", self.delay.is_some())?;
                let base = duration_field(
                    &format!("{path}.base"),
                    self.base.as_deref(),
                    Duration::from_millis(100),
                )?;
                let cap = duration_field(
                    &format!("{path}.cap"),
                    self.cap.as_deref(),
                    Duration::from_secs(30),
                )?;
                if base.is_zero() || cap < base {
                    return Err(ProfileError::at(
                        format!("{path}.cap"),
                        "expected 0 < base <= cap (e.g. \"base\": \"100ms\", \"cap\": \"30s\")",
                    ));
                }
                let jitter = match self.jitter.as_deref().unwrap_or("full") {
                    "none" => Jitter::None,
                    "full" => Jitter::Full,
                    "equal" => Jitter::Equal,
                    "decorrelated" => Jitter::Decorrelated,
                    other => {
                        return Err(ProfileError::at(
                            format!("{path}.jitter"),
                            format!(
                                "{other:?} is not valid; expected \"none\", \"full\", \"equal\" or \"decorrelated\""
                            ),
                        ));
                    }
                };
                Ok(ReconnectPolicy::Exponential {
                    base,
                    cap,
                    jitter,
                    max_attempts,
                })
            }
            other => Err(ProfileError::at(
                format!("{path}.policy"),
                format!(
                    "{other:?} is not valid; expected \"none\", \"immediate\", \"fixed\" or \"exponential\""
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_stays_inside() {
        let ms = Duration::from_millis;
        let p = ReconnectPolicy::Exponential {
            base: ms(100),
            cap: ms(1000),
            jitter: Jitter::None,
            max_attempts: 5,
        };
        let waits: Vec<_> = (1..=6).map(|n| p.delay(n, Duration::ZERO, 0)).collect();
        assert_eq!(
            waits,
            vec![
                Some(ms(100)),
                Some(ms(200)),
                Some(ms(400)),
                Some(ms(800)),
                Some(ms(1000)),
                None
            ]
        );
        let full = ReconnectPolicy::Exponential {
            base: ms(100),
            cap: ms(1000),
            jitter: Jitter::Full,
            max_attempts: 9,
        };
        assert_eq!(full.delay(4, Duration::ZERO, 0), Some(Duration::ZERO));
        assert!(full.delay(4, Duration::ZERO, u64::MAX).unwrap() <= ms(800));
        let equal = ReconnectPolicy::Exponential {
            base: ms(100),
            cap: ms(1000),
            jitter: Jitter::Equal,
            max_attempts: 9,
        };
        assert_eq!(equal.delay(4, Duration::ZERO, 0), Some(ms(400)));
        let dec = ReconnectPolicy::Exponential {
            base: ms(100),
            cap: ms(1000),
            jitter: Jitter::Decorrelated,
            max_attempts: 9,
        };
        let d = dec.delay(2, ms(300), u64::MAX / 2).unwrap();
        assert!(d >= ms(100) && d <= ms(900), "{d:?}");
        assert_eq!(ReconnectPolicy::Never.delay(1, Duration::ZERO, 0), None);
        assert_eq!(
            ReconnectPolicy::Fixed {
                delay: ms(5),
                max_attempts: 2
            }
            .delay(3, Duration::ZERO, 0),
            None
        );
    }
}
