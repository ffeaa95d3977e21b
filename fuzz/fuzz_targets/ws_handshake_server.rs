//! Server opening handshake: arbitrary request bytes, in arbitrary chunks.
//!
//! Input: the first byte sets the chunk size (1..=256), the rest is fed to a
//! `ServerHandshake` with deflate and subprotocols enabled and a small header
//! limit. Must never panic, never buffer past the limit, and every outcome
//! must produce a writable response.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::handshake::{ServerConfig, ServerHandshake, ServerStep};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let config = Arc::new(ServerConfig {
        subprotocols: vec!["chat".into(), "superchat".into()],
        deflate: Some(DeflateConfig::default()),
        max_request_header_bytes: 2048,
        max_headers: 32,
    });
    let Ok(mut hs) = ServerHandshake::new(config) else {
        return;
    };
    let mut out = BytesMut::new();
    for piece in input.chunks(chunk) {
        match hs.handle_input(piece) {
            Ok(ServerStep::NeedMore(next)) => {
                assert!(next.buffered() <= 2048);
                hs = next;
            }
            Ok(ServerStep::Request(pending)) => {
                let _ = pending.request().path();
                let accepted = pending.accept(&mut out);
                if let Some(params) = accepted.deflate {
                    assert!((9..=15).contains(&params.server_max_window_bits));
                    assert!((9..=15).contains(&params.client_max_window_bits));
                }
                return;
            }
            Err(err) => {
                assert!(matches!(err.status(), 400 | 426 | 431));
                err.write_response(&mut out);
                return;
            }
        }
    }
});
