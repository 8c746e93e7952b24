//! Histogram decoding as the coordinator does it on agent reports: HdrHistogram V2 or
//! V2-deflate bytes, checked against our bounds, then merged and read for percentiles.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use stampede::metrics::{Latency, LatencySet};
use stampede::report::summary::LatencyStats;
use stampede::wire;

fuzz_target!(|data: &[u8]| {
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let Ok(h) = wire::decode_histogram(&text) else {
        return;
    };
    let _ = LatencyStats::of(&h);
    let _ = h.value_at_quantile(0.99);
    let mut one = LatencySet::default();
    one.hists[Latency::Connect as usize] = h;
    let mut merged = LatencySet::default();
    merged.add(&one);
    merged.add(&one);
});
