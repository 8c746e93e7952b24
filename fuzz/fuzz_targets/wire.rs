//! The coordinator <-> agent decoder: length-prefixed frames read from a byte stream (with the
//! pre-handshake and the session limits), each message decoded, and reports turned back into
//! interval data as the coordinator does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede::wire::{self, HANDSHAKE_MAX_FRAME, MAX_FRAME, Message};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

fn check(message: &Message) {
    if let Message::Report(report) = message {
        let _ = report.decode();
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = wire::decode(data) {
        check(&message);
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            for limit in [HANDSHAKE_MAX_FRAME, MAX_FRAME] {
                let mut input = data;
                // A stream holds several frames; stop at the first error as a session does.
                for _ in 0..16 {
                    match wire::read_message_limited(&mut input, limit).await {
                        Ok(message) => check(&message),
                        Err(_) => break,
                    }
                }
            }
        });
    });
});
