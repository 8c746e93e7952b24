//! A strict reader of the Prometheus text exposition format (version 0.0.4), for tests: it
//! rejects anything a Prometheus server would reject, and a few things it would only frown on
//! (counters not named `*_total`, a family's samples split up, duplicate series).
//!
//! Also compiled into `src/prometheus.rs`'s unit tests (through `#[path]`), so the fixed
//! snapshots and the real scrape are held to the same reader; its own tests live there.

use std::collections::HashSet;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// Every family, in order of appearance.
pub fn parse(text: &str) -> Result<Vec<Family>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition must end with a line feed".into());
    }
    let mut families: Vec<Family> = Vec::new();
    let mut series = HashSet::new();
    let mut typed = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let name = parts.next().ok_or_else(|| at("no metric name".into()))?;
            check_metric_name(name).map_err(at)?;
            let text = parts.next().unwrap_or("");
            let family = family_for(&mut families, name).map_err(at)?;
            if !family.samples.is_empty() {
                return Err(at(format!("{keyword} after samples of {name}")));
            }
            if keyword == "HELP" {
                if family.help.is_some() {
                    return Err(at("second HELP".into()));
                }
                family.help = Some(unescape(text, false).map_err(at)?);
            } else {
                if !typed.insert(name.to_string()) {
                    return Err(at("second TYPE".into()));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&text) {
                    return Err(at(format!("unknown type {text:?}")));
                }
                family.kind = text.to_string();
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let key = format!("{}{:?}", sample.name, {
            let mut l = sample.labels.clone();
            l.sort();
            l
        });
        if !series.insert(key) {
            return Err(at("duplicate series".into()));
        }
        let family = match families.last_mut() {
            Some(f) if belongs(&sample.name, f) => f,
            _ => {
                if families.iter().any(|f| belongs(&sample.name, f)) {
                    return Err(at("samples of a family must be contiguous".into()));
                }
                families.push(Family {
                    name: sample.name.clone(),
                    kind: "untyped".into(),
                    help: None,
                    samples: Vec::new(),
                });
                families.last_mut().ok_or("unreachable")?
            }
        };
        check_sample(family, &sample).map_err(at)?;
        family.samples.push(sample);
    }
    for family in &families {
        check_family(family)?;
    }
    Ok(families)
}

/// The family for a HELP or TYPE line: the current one if the name matches, else a new one.
fn family_for<'a>(families: &'a mut Vec<Family>, name: &str) -> Result<&'a mut Family, String> {
    let current = families.last().is_some_and(|f| f.name == name);
    if !current {
        if families.iter().any(|f| f.name == name) {
            return Err(format!("{name} described twice"));
        }
        families.push(Family {
            name: name.to_string(),
            kind: "untyped".into(),
            help: None,
            samples: Vec::new(),
        });
    }
    families.last_mut().ok_or_else(|| "unreachable".into())
}

fn belongs(sample: &str, family: &Family) -> bool {
    let suffixes: &[&str] = match family.kind.as_str() {
        "summary" => &["", "_sum", "_count"],
        "histogram" => &["_bucket", "_sum", "_count"],
        _ => &[""],
    };
    suffixes
        .iter()
        .any(|s| sample.strip_suffix(s) == Some(family.name.as_str()))
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars.next().ok_or("empty metric name")?;
    if !(first.is_ascii_alphabetic() || first == '_' || first == ':')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    Ok(())
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars.next().ok_or("empty label name")?;
    if !(first.is_ascii_alphabetic() || first == '_')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with("__")
    {
        return Err(format!("bad label name {name:?}"));
    }
    Ok(())
}

/// Undoes `\\`, `\n` and (in label values) `\"`; any other escape is an error.
fn unescape(text: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
            && !text.is_empty() =>
        {
            text.parse().map_err(|_| format!("bad value {text:?}"))
        }
        _ => Err(format!("bad value {text:?}")),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let label = &rest[..eq];
            check_label_name(label)?;
            if labels.iter().any(|(k, _): &(String, String)| k == label) {
                return Err(format!("label {label} twice"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value must be quoted")?;
            let mut end = None;
            let mut escaped = false;
            for (i, c) in rest.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    (false, '\n') => return Err("raw line feed in a label value".into()),
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated label value")?;
            labels.push((label.to_string(), unescape(&rest[..end], true)?));
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected a space before the value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn check_sample(family: &Family, sample: &Sample) -> Result<(), String> {
    match family.kind.as_str() {
        "counter" => {
            if !family.name.ends_with("_total") {
                return Err(format!("counter {} should end in _total", family.name));
            }
            if sample.value < 0.0 || sample.value.is_nan() {
                return Err("a counter cannot be negative or NaN".into());
            }
        }
        "summary" => {
            let quantile = sample.label("quantile");
            if sample.name == family.name {
                let q: f64 = quantile
                    .ok_or("a summary sample needs a quantile label")?
                    .parse()
                    .map_err(|_| "quantile is not a number")?;
                if !(0.0..=1.0).contains(&q) {
                    return Err(format!("quantile {q} outside [0, 1]"));
                }
            } else if quantile.is_some() {
                return Err("_sum and _count take no quantile label".into());
            }
        }
        "histogram" if sample.name.ends_with("_bucket") => {
            sample.label("le").ok_or("a bucket needs an le label")?;
        }
        _ => {}
    }
    if family.kind != "summary" && sample.label("quantile").is_some() {
        return Err("quantile label outside a summary".into());
    }
    Ok(())
}

fn check_family(family: &Family) -> Result<(), String> {
    if family.kind == "histogram" {
        // Per label set (less `le`): cumulative buckets ending in +Inf == _count.
        type Labels = Vec<(String, String)>;
        let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
        for s in family
            .samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
        {
            let key: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            let le = parse_value(s.label("le").unwrap_or(""))?;
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, buckets)) => buckets.push((le, s.value)),
                None => groups.push((key, vec![(le, s.value)])),
            }
        }
        for (key, buckets) in groups {
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!("{}{key:?}: buckets not cumulative", family.name));
            }
            if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
                return Err(format!("{}{key:?}: no +Inf bucket", family.name));
            }
        }
    }
    Ok(())
}
