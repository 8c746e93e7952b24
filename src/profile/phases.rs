//! Each phase kind's validation, one function per kind: from its raw JSON shape to a `Phase`,
//! every error naming the phase's path (`phases[2].storm.for`).

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{
    RawCutover, RawDrain, RawHold, RawNlbPhase, RawPhase, RawRamp, RawServer, RawStorm,
};
use super::reconnect::{RawReconnect, ReconnectPolicy};
use super::sink_action::NAMES;
use super::{CloseMode, DrainShape, Phase, ProfileError, SinkAction, TargetChange, duration_at};

/// What a phase may depend on outside itself.
pub(super) struct Context {
    /// The profile's `connections`: no ramp goes above it.
    pub connections: u64,
    /// Whether the profile links an NLB emulator (`"nlb": {"admin": ...}`).
    pub has_nlb: bool,
}

/// Phase `i` of the profile.
pub(super) fn validate(i: usize, raw: RawPhase, context: &Context) -> Result<Phase, ProfileError> {
    match raw {
        RawPhase::Ramp(ramp) => self::ramp(&format!("phases[{i}].ramp"), ramp, context),
        RawPhase::Hold(hold) => self::hold(&format!("phases[{i}].hold"), hold),
        RawPhase::Storm(storm) => self::storm(&format!("phases[{i}].storm"), storm),
        RawPhase::Drain(drain) => self::drain(&format!("phases[{i}].drain"), drain),
        RawPhase::Server(server) => self::server(&format!("phases[{i}].server"), server),
        RawPhase::Nlb(nlb) => self::nlb(&format!("phases[{i}].nlb"), nlb, context),
        RawPhase::Cutover(cutover) => self::cutover(&format!("phases[{i}].cutover"), cutover),
    }
}

fn ramp(at: &str, ramp: RawRamp, context: &Context) -> Result<Phase, ProfileError> {
    let to = ramp.to.unwrap_or(context.connections);
    if to > context.connections {
        return Err(ProfileError::at(
            format!("{at}.to"),
            format!(
                "{to} is more than `connections` ({}); ramp to at most that, or raise `connections`",
                context.connections
            ),
        ));
    }
    if !(ramp.rate.is_finite() && ramp.rate > 0.0 && ramp.rate <= 10_000_000.0) {
        return Err(ProfileError::at(
            format!("{at}.rate"),
            format!(
                "{} is out of range; expected connections per second above 0 and at most 10000000",
                ramp.rate
            ),
        ));
    }
    Ok(Phase::Ramp {
        to,
        rate: ramp.rate,
    })
}

fn hold(at: &str, hold: RawHold) -> Result<Phase, ProfileError> {
    Ok(Phase::Hold {
        duration: duration_at(&format!("{at}.for"), &hold.duration)?,
    })
}

fn storm(at: &str, storm: RawStorm) -> Result<Phase, ProfileError> {
    Ok(Phase::Storm {
        fraction: fraction_at(&format!("{at}.fraction"), storm.fraction)?,
        mode: match storm.mode.as_deref() {
            None | Some("close") => CloseMode::Close,
            Some("reset") => CloseMode::Reset,
            Some(other) => {
                return Err(ProfileError::at(
                    format!("{at}.mode"),
                    format!("{other:?} is not valid; expected \"close\" (FIN) or \"reset\" (RST)"),
                ));
            }
        },
        duration: duration_at(&format!("{at}.for"), &storm.duration)?,
        reconnect: phase_reconnect(at, storm.reconnect)?,
    })
}

fn drain(at: &str, drain: RawDrain) -> Result<Phase, ProfileError> {
    let over = duration_at(&format!("{at}.over"), &drain.over)?;
    let duration = match drain.duration.as_deref() {
        None => over,
        Some(text) => duration_at(&format!("{at}.for"), text)?,
    };
    at_least_its_window(at, duration, over)?;
    Ok(Phase::Drain {
        fraction: fraction_at(&format!("{at}.fraction"), drain.fraction)?,
        over,
        shape: match drain.shape.as_deref() {
            None | Some("uniform") => DrainShape::Uniform {
                jitter: drain.jitter.unwrap_or(false),
            },
            Some("linear") if drain.jitter.is_none() => DrainShape::Linear,
            Some("linear") => {
                return Err(ProfileError::at(
                    format!("{at}.jitter"),
                    "`jitter` applies to the uniform shape only",
                ));
            }
            Some(other) => {
                return Err(ProfileError::at(
                    format!("{at}.shape"),
                    format!("{other:?} is not valid; expected \"uniform\" or \"linear\""),
                ));
            }
        },
        duration,
        reconnect: phase_reconnect(at, drain.reconnect)?,
    })
}

fn server(at: &str, server: RawServer) -> Result<Phase, ProfileError> {
    let action = match server.action.as_str() {
        "close_all" => SinkAction::CloseAll,
        "close_fraction" => SinkAction::CloseFraction {
            fraction: fraction_at(&format!("{at}.fraction"), server.fraction)?,
        },
        "close_rate" => {
            let rate = server.per_second.unwrap_or(0.0);
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ProfileError::at(
                    format!("{at}.per_second"),
                    format!("{rate} is out of range; give connections per second above 0"),
                ));
            }
            SinkAction::CloseRate { per_second: rate }
        }
        "lifetime" => SinkAction::Lifetime {
            seconds: match server.lifetime.as_deref() {
                None | Some("forever") => None,
                Some(text) => Some(duration_at(&format!("{at}.lifetime"), text)?.as_secs_f64()),
            },
        },
        "stop_accepting" => SinkAction::StopAccepting,
        "start_accepting" => SinkAction::StartAccepting,
        other => {
            let quoted: Vec<String> = NAMES.iter().map(|n| format!("{n:?}")).collect();
            let (last, first) = quoted.split_last().expect("six names");
            return Err(ProfileError::at(
                format!("{at}.do"),
                format!(
                    "{other:?} is not valid; expected {} or {last}",
                    first.join(", ")
                ),
            ));
        }
    };
    let admin = match server.admin.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            ProfileError::at(
                format!("{at}.admin"),
                format!("{text:?} is not the IP:port of a sink's admin endpoint"),
            )
        })?),
    };
    Ok(Phase::Server {
        action,
        admin,
        duration: duration_at(&format!("{at}.for"), &server.duration)?,
        reconnect: phase_reconnect(at, server.reconnect)?,
    })
}

fn nlb(at: &str, phase: RawNlbPhase, context: &Context) -> Result<Phase, ProfileError> {
    if !context.has_nlb {
        return Err(ProfileError::at(
            at,
            "needs the emulator's admin address: add \"nlb\": {\"admin\": \"IP:PORT\"} at the \
             top level (`stampede nlb --admin IP:PORT`)",
        ));
    }
    let change = match phase.action.as_str() {
        "deregister" => TargetChange::Deregister,
        "register" => TargetChange::Register,
        other => {
            return Err(ProfileError::at(
                format!("{at}.do"),
                format!("{other:?} is not valid; expected \"deregister\" or \"register\""),
            ));
        }
    };
    let target = phase.target.parse::<SocketAddr>().map_err(|_| {
        ProfileError::at(
            format!("{at}.target"),
            format!(
                "{:?} is not the IP:port of one of the emulator's targets",
                phase.target
            ),
        )
    })?;
    Ok(Phase::Nlb {
        change,
        target,
        duration: duration_at(&format!("{at}.for"), &phase.duration)?,
        reconnect: phase_reconnect(at, phase.reconnect)?,
    })
}

fn cutover(at: &str, cutover: RawCutover) -> Result<Phase, ProfileError> {
    if cutover.to.is_empty() {
        return Err(ProfileError::at(
            format!("{at}.to"),
            "[] is empty; list the green targets as IP:port",
        ));
    }
    let mut to = Vec::with_capacity(cutover.to.len());
    for (j, text) in cutover.to.iter().enumerate() {
        let addr = text.parse::<SocketAddr>().ok().filter(|a| a.port() != 0);
        to.push(addr.ok_or_else(|| {
            ProfileError::at(
                format!("{at}.to[{j}]"),
                format!("{text:?} is not an IP:port with a non-zero port"),
            )
        })?);
    }
    let over = match cutover.over.as_deref() {
        None | Some("0s") => Duration::ZERO,
        Some(text) => duration_at(&format!("{at}.over"), text)?,
    };
    let duration = duration_at(&format!("{at}.for"), &cutover.duration)?;
    at_least_its_window(at, duration, over)?;
    Ok(Phase::Cutover {
        to,
        over,
        close: cutover.close.unwrap_or(true),
        duration,
        reconnect: phase_reconnect(at, cutover.reconnect)?,
    })
}

/// A phase with a window (`over`) lasts at least that long.
fn at_least_its_window(at: &str, duration: Duration, over: Duration) -> Result<(), ProfileError> {
    if duration < over {
        return Err(ProfileError::at(
            format!("{at}.for"),
            "is shorter than `over`; the phase must last at least its window",
        ));
    }
    Ok(())
}

/// A phase's own reconnect policy, if it sets one.
fn phase_reconnect(
    at: &str,
    raw: Option<RawReconnect>,
) -> Result<Option<ReconnectPolicy>, ProfileError> {
    raw.map(|r| r.validate(&format!("{at}.reconnect")))
        .transpose()
}

fn fraction_at(path: &str, value: Option<f64>) -> Result<f64, ProfileError> {
    let fraction = value.unwrap_or(1.0);
    if fraction.is_finite() && fraction > 0.0 && fraction <= 1.0 {
        Ok(fraction)
    } else {
        Err(ProfileError::at(
            path,
            format!("{fraction} is out of range; expected a fraction above 0 and at most 1"),
        ))
    }
}
