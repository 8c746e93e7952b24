//! Human durations in profiles and on the command line: `"250ms"`, `"30s"`, `"5m"`, `"2h"`.
//!
//! Parsing only; this module never reads a clock.

use std::fmt;
use std::time::Duration;

/// What a duration string must look like, quoted in every error.
pub const DURATION_HINT: &str =
    "a number with a unit: us, ms, s, m or h (e.g. \"250ms\", \"30s\", \"2h\")";

/// Parses `"1.5s"`, `"250ms"`, `"2h"`, `"90us"`. Whitespace around the text is allowed.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let seconds_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let seconds = value * seconds_per_unit;
    // Anything above a year is a typo, not a plan.
    if !seconds.is_finite() || seconds > 366.0 * 24.0 * 3600.0 {
        return None;
    }
    Some(Duration::from_secs_f64(seconds))
}

/// Formats a duration the way a person would write it in a profile.
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        if micros == 0 {
            write!(f, "0s")
        } else if micros < 1_000 {
            write!(f, "{micros}us")
        } else if micros < 1_000_000 {
            write!(f, "{}ms", trim(micros as f64 / 1e3))
        } else if micros < 60_000_000 {
            write!(f, "{}s", trim(micros as f64 / 1e6))
        } else if micros < 3_600_000_000 {
            write!(f, "{}m", trim(micros as f64 / 6e7))
        } else {
            write!(f, "{}h", trim(micros as f64 / 3.6e9))
        }
    }
}

/// Formats a latency in microseconds with a unit fit for a table.
pub fn human_micros(micros: u64) -> String {
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.2}ms", micros as f64 / 1e3)
    } else {
        format!("{:.2}s", micros as f64 / 1e6)
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("90us"), Some(Duration::from_micros(90)));
        assert_eq!(parse_duration(" 5m "), Some(Duration::from_secs(300)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "5", "s", "5x", "-1s", ".5s", "5.s", "1e3s", "99999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "30s", "2h", "1.5s", "90us", "5m"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(Human(parsed).to_string(), text);
        }
    }
}
