//! The profile parser as `stampede profile check` drives it: JSON text plus `--set` overrides,
//! validation, the expanded plan text, the timeline, and an agent's share of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede::profile::{Profile, timeline};
use stampede::doctor::plan;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines after a NUL are `--set PATH=VALUE` overrides, so both inputs get exercised.
    let (json, sets) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<String> = sets.lines().take(8).map(str::to_string).collect();
    let Ok(profile) = Profile::from_json(json, &overrides) else {
        return;
    };
    let _ = plan::render(&profile);
    let _ = timeline::spans(&profile);
    let _ = profile.peak_connections();
    let share = profile.share(&[3, 1, 0], 1);
    let _ = timeline::spans(&share);
});
