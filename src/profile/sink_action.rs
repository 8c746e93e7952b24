//! The one vocabulary of what a sink can do to its clients: the type a profile's `server` phase
//! holds, the admin endpoint parses (`from_json`), `stampede sink-admin` parses
//! (`from_words`) and `sink::SinkControl` carries out. The sink re-exports it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What the sink can do to its clients, from the command line, the admin endpoint or a profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SinkAction {
    CloseAll,
    /// Close this fraction (0..=1) of the open connections now, chosen at random.
    CloseFraction {
        fraction: f64,
    },
    /// Close open connections at this many per second, oldest first, until none are left.
    /// The rate stays set: connections accepted meanwhile are closed in turn (a rolling
    /// drain), and with nothing open it idles and restarts one period after the next accept.
    /// 0 stops it.
    CloseRate {
        per_second: f64,
    },
    /// Close each connection this long after it was accepted (None: hold forever). Applies to
    /// connections already held too: those older than the lifetime are closed at once.
    Lifetime {
        seconds: Option<f64>,
    },
    StopAccepting,
    StartAccepting,
}

/// Names of the actions as they appear in JSON (and, with dashes, on the command line).
pub const NAMES: [&str; 6] = [
    "close_all",
    "close_fraction",
    "close_rate",
    "lifetime",
    "stop_accepting",
    "start_accepting",
];
/// `NAMES` as a list for error messages.
pub const ACTION_NAMES: &str =
    "close_all, close_fraction, close_rate, lifetime, stop_accepting, start_accepting";
const FRACTION_HINT: &str = "expected a number from 0 to 1";
const RATE_HINT: &str = "expected closes per second, a number >= 0 (0 stops closing)";
const LIFETIME_HINT: &str = "expected seconds after accept, a number > 0 and at most a year \
     (31622400), or null to hold connections forever";
/// A year: longer lifetimes are typos, as for durations in profiles.
pub const MAX_LIFETIME_SECONDS: f64 = 366.0 * 24.0 * 3600.0;
const EXAMPLE: &str = r#"{"action":"close_fraction","fraction":0.5}"#;

impl SinkAction {
    /// Parses one action from a JSON body. Errors start with the field at fault and say what
    /// would be valid.
    pub fn from_json(body: &[u8]) -> Result<SinkAction, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("body: not JSON ({e}); expected one action, e.g. {EXAMPLE}"))?;
        let Value::Object(fields) = value else {
            return Err(format!(
                "body: {} is not an object; expected one action, e.g. {EXAMPLE}",
                short(&value)
            ));
        };
        let name = match fields.get("action") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                return Err(format!(
                    "action: {} is not a string; expected one of {ACTION_NAMES}",
                    short(other)
                ));
            }
            None => return Err(format!("action: missing; expected one of {ACTION_NAMES}")),
        };
        let (action, allowed): (SinkAction, &[&str]) = match name {
            "close_all" => (SinkAction::CloseAll, &[]),
            "stop_accepting" => (SinkAction::StopAccepting, &[]),
            "start_accepting" => (SinkAction::StartAccepting, &[]),
            "close_fraction" => (
                SinkAction::CloseFraction {
                    fraction: number(&fields, "fraction", FRACTION_HINT)?,
                },
                &["fraction"],
            ),
            "close_rate" => (
                SinkAction::CloseRate {
                    per_second: number(&fields, "per_second", RATE_HINT)?,
                },
                &["per_second"],
            ),
            "lifetime" => {
                let seconds = match fields.get("seconds") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(number(&fields, "seconds", LIFETIME_HINT)?),
                };
                (SinkAction::Lifetime { seconds }, &["seconds"])
            }
            other => {
                return Err(format!(
                    "action: {other:?} is not an action; expected one of {ACTION_NAMES}"
                ));
            }
        };
        if let Some(extra) = fields
            .keys()
            .find(|k| *k != "action" && !allowed.contains(&k.as_str()))
        {
            let expected = if allowed.is_empty() {
                "it takes no other field".to_string()
            } else {
                format!("expected {}", allowed.join(", "))
            };
            return Err(format!("{extra}: not a field of {name}; {expected}"));
        }
        action.validate()?;
        Ok(action)
    }

    /// Parses the command line's form: an action name (`close-fraction` or `close_fraction`)
    /// and its one value (`0.5`, `100`, `30s` or `off`). Errors name the action and what it
    /// wants.
    pub fn from_words(name: &str, value: Option<&str>) -> Result<SinkAction, String> {
        let key = name.replace('-', "_");
        let wants = match key.as_str() {
            "close_fraction" => Some("a fraction from 0 to 1 (e.g. close-fraction 0.5)"),
            "close_rate" => Some("closes per second, a number >= 0 (e.g. close-rate 100; 0 stops)"),
            "lifetime" => Some("a duration (e.g. lifetime 30s) or `off`"),
            _ => None,
        };
        let (value, wants) = match (wants, value) {
            (None, None) => ("", ""),
            (None, Some(v)) => return Err(format!("{name} takes no value; got {v:?}")),
            (Some(wants), None) => return Err(format!("{name} needs a value: {wants}")),
            (Some(wants), Some(v)) => (v.trim(), wants),
        };
        let number = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{name}: {value:?} is not a number; expected {wants}"))
        };
        let chosen = match key.as_str() {
            "close_all" => SinkAction::CloseAll,
            "stop_accepting" => SinkAction::StopAccepting,
            "start_accepting" => SinkAction::StartAccepting,
            "close_fraction" => SinkAction::CloseFraction {
                fraction: number()?,
            },
            "close_rate" => SinkAction::CloseRate {
                per_second: number()?,
            },
            "lifetime" => SinkAction::Lifetime {
                seconds: match value {
                    "off" | "none" | "forever" => None,
                    _ => Some(
                        super::duration::parse_duration(value)
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| {
                                format!("lifetime: {value:?} is not a duration; expected {wants}")
                            })?
                            .as_secs_f64(),
                    ),
                },
            },
            _ => {
                return Err(format!(
                    "{name:?} is not an action; expected one of {ACTION_NAMES}"
                ));
            }
        };
        chosen
            .validate()
            .map_err(|_| format!("{name}: {value:?} is out of range; expected {wants}"))?;
        Ok(chosen)
    }

    /// Checks the numbers an action carries; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            SinkAction::CloseFraction { fraction } if !(0.0..=1.0).contains(&fraction) => Err(
                format!("fraction: {fraction} is out of range; {FRACTION_HINT}"),
            ),
            SinkAction::CloseRate { per_second }
                if !(per_second.is_finite() && per_second >= 0.0) =>
            {
                Err(format!(
                    "per_second: {per_second} is not a rate; {RATE_HINT}"
                ))
            }
            SinkAction::Lifetime {
                seconds: Some(seconds),
            } if !(seconds > 0.0 && seconds <= MAX_LIFETIME_SECONDS) => Err(format!(
                "seconds: {seconds} is not a lifetime; {LIFETIME_HINT}"
            )),
            _ => Ok(()),
        }
    }
}

fn number(fields: &Map<String, Value>, field: &str, hint: &str) -> Result<f64, String> {
    match fields.get(field) {
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| format!("{field}: {n} is not a number; {hint}")),
        Some(other) => Err(format!("{field}: {} is not a number; {hint}", short(other))),
        None => Err(format!("{field}: missing; {hint}")),
    }
}

/// A JSON value for an error message, cut short.
fn short(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 40 {
        let mut end = 40;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_form_parses_and_names_match() {
        assert_eq!(ACTION_NAMES, NAMES.join(", "));
        let ok = |name: &str, value: Option<&str>| SinkAction::from_words(name, value).unwrap();
        assert_eq!(
            ok("close-fraction", Some("0.5")),
            SinkAction::CloseFraction { fraction: 0.5 }
        );
        assert_eq!(
            ok("close_rate", Some(" 100 ")),
            SinkAction::CloseRate { per_second: 100.0 }
        );
        assert_eq!(
            ok("lifetime", Some("30s")),
            SinkAction::Lifetime {
                seconds: Some(30.0)
            }
        );
        assert_eq!(
            ok("lifetime", Some("off")),
            SinkAction::Lifetime { seconds: None }
        );
        assert_eq!(ok("stop-accepting", None), SinkAction::StopAccepting);
        // Every name the JSON knows, the command line knows too.
        for name in NAMES {
            let value = match name {
                "close_fraction" => Some("1"),
                "close_rate" => Some("0"),
                "lifetime" => Some("1s"),
                _ => None,
            };
            assert!(SinkAction::from_words(name, value).is_ok(), "{name}");
        }
        let err =
            |name: &str, value: Option<&str>| SinkAction::from_words(name, value).unwrap_err();
        assert!(err("close-all", Some("1")).contains("takes no value"));
        assert!(err("close-fraction", None).contains("needs a value"));
        assert!(err("close-fraction", Some("2")).contains("out of range"));
        assert!(err("close-rate", Some("fast")).contains("not a number"));
        assert!(err("lifetime", Some("soon")).contains("not a duration"));
        assert!(err("explode", None).contains("not an action"));
    }

    #[test]
    fn bodies_parse_and_errors_name_the_field() {
        let ok = |body: &str| SinkAction::from_json(body.as_bytes()).unwrap();
        assert_eq!(ok(r#"{"action":"close_all"}"#), SinkAction::CloseAll);
        assert_eq!(
            ok(r#"{"action":"close_fraction","fraction":0.5}"#),
            SinkAction::CloseFraction { fraction: 0.5 }
        );
        assert_eq!(
            ok(r#"{"action":"close_rate","per_second":0}"#),
            SinkAction::CloseRate { per_second: 0.0 }
        );
        assert_eq!(
            ok(r#"{"action":"lifetime","seconds":null}"#),
            SinkAction::Lifetime { seconds: None }
        );
        assert_eq!(
            ok(r#"{"action":"lifetime"}"#),
            SinkAction::Lifetime { seconds: None }
        );
        // What the derived serialisation writes is what the endpoint reads.
        for action in [
            SinkAction::CloseAll,
            SinkAction::CloseFraction { fraction: 0.25 },
            SinkAction::CloseRate { per_second: 100.0 },
            SinkAction::Lifetime {
                seconds: Some(30.0),
            },
            SinkAction::Lifetime { seconds: None },
            SinkAction::StopAccepting,
            SinkAction::StartAccepting,
        ] {
            let json = serde_json::to_vec(&action).unwrap();
            assert_eq!(SinkAction::from_json(&json).unwrap(), action);
        }
        let err = |body: &str| SinkAction::from_json(body.as_bytes()).unwrap_err();
        for (body, start, mentions) in [
            ("nope", "body:", "expected one action"),
            ("[1]", "body:", "not an object"),
            ("{}", "action: missing", "close_fraction"),
            (r#"{"action":3}"#, "action: 3", "expected one of"),
            (
                r#"{"action":"explode"}"#,
                "action: \"explode\"",
                "stop_accepting",
            ),
            (
                r#"{"action":"close_fraction"}"#,
                "fraction: missing",
                "0 to 1",
            ),
            (
                r#"{"action":"close_fraction","fraction":"half"}"#,
                "fraction: \"half\" is not a number",
                "0 to 1",
            ),
            (
                r#"{"action":"close_fraction","fraction":1.5}"#,
                "fraction: 1.5 is out of range",
                "0 to 1",
            ),
            (
                r#"{"action":"close_rate","per_second":-1}"#,
                "per_second: -1",
                ">= 0",
            ),
            (
                r#"{"action":"close_rate","rate":5}"#,
                "per_second: missing",
                "per second",
            ),
            (
                r#"{"action":"close_rate","per_second":5,"rate":5}"#,
                "rate: not a field of close_rate",
                "per_second",
            ),
            (
                r#"{"action":"lifetime","seconds":"30s"}"#,
                "seconds: \"30s\" is not a number",
                "null",
            ),
            (r#"{"action":"lifetime","seconds":0}"#, "seconds: 0", "> 0"),
            (
                r#"{"action":"close_all","fraction":1}"#,
                "fraction: not a field of close_all",
                "no other field",
            ),
        ] {
            let message = err(body);
            assert!(message.starts_with(start), "{body}: {message}");
            assert!(message.contains(mentions), "{body}: {message}");
        }
    }
}
