//! `--set PATH=VALUE` overrides, applied to the profile's JSON before it is validated.
//!
//! PATH is dotted (`heartbeat.interval`, `phases.0.ramp.rate` or `phases[0].ramp.rate`);
//! VALUE is read as JSON when it parses (`5000`, `true`, `["127.0.0.2"]`), else as a string.

use serde_json::Value;

use super::ProfileError;

pub fn apply(root: &mut Value, item: &str) -> Result<(), ProfileError> {
    let (path, raw) = item.split_once('=').ok_or_else(|| {
        ProfileError::at(
            "",
            format!("--set {item:?} has no `=`; expected PATH=VALUE, e.g. --set connections=5000"),
        )
    })?;
    let path = path.trim();
    let segments: Vec<&str> = path
        .split(['.', '[', ']'])
        .filter(|s| !s.is_empty())
        .collect();
    if segments.is_empty() {
        return Err(ProfileError::at(
            "",
            format!("--set {item:?} has an empty path; expected PATH=VALUE"),
        ));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut node = root;
    let mut walked = String::new();
    for (depth, segment) in segments.iter().enumerate() {
        let last = depth + 1 == segments.len();
        node = match node {
            Value::Object(map) => {
                if last {
                    map.insert((*segment).to_string(), value);
                    return Ok(());
                }
                map.entry((*segment).to_string())
                    .or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(items) => {
                let len = items.len();
                let slot = segment
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get_mut(i))
                    .ok_or_else(|| {
                        ProfileError::at(
                            walked.clone(),
                            format!(
                                "--set {path}: {segment:?} is not an index of this list of {len}; use 0 to {}",
                                len.saturating_sub(1)
                            ),
                        )
                    })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            other => {
                return Err(ProfileError::at(
                    walked.clone(),
                    format!("--set {path}: {other} has no field {segment:?}"),
                ));
            }
        };
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(segment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_nested_and_indexed() {
        let mut v = json!({"a": {"b": 1}, "list": [{"x": 1}, {"x": 2}]});
        apply(&mut v, "a.b=5").unwrap();
        apply(&mut v, "list[1].x=\"hi\"").unwrap();
        apply(&mut v, "list.0.x=[1,2]").unwrap();
        apply(&mut v, "new.key=text").unwrap();
        assert_eq!(
            v,
            json!({"a": {"b": 5}, "list": [{"x": [1,2]}, {"x": "hi"}], "new": {"key": "text"}})
        );
    }

    #[test]
    fn refuses_bad_paths() {
        let mut v = json!({"a": 1, "list": []});
        assert!(apply(&mut v, "a").is_err());
        assert!(apply(&mut v, "a.b=1").is_err());
        assert!(apply(&mut v, "list.3=1").is_err());
        assert!(apply(&mut v, "=1").is_err());
    }
}
