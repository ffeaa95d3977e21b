//! Client opening handshake: arbitrary response bytes, in arbitrary chunks.
//!
//! Input: the first byte sets the chunk size (1..=256), the rest is fed to a
//! `ClientHandshake` that offered two subprotocols and permessage-deflate
//! with the RFC 6455 sample key (so `Sec-WebSocket-Accept:
//! s3pPLMBiTxaQ9kYGzzhZRbK+xOo=` is the matching answer). Must never panic
//! nor buffer past the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::handshake::{ClientConfig, ClientHandshake, ClientStep};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut config = ClientConfig::new("server.example.com", "/chat");
    config.subprotocols = vec!["chat".into(), "superchat".into()];
    config.deflate = Some(DeflateConfig {
        server_max_window_bits: 12,
        ..DeflateConfig::default()
    });
    config.max_response_header_bytes = 2048;
    let mut out = BytesMut::new();
    let Ok(mut hs) = ClientHandshake::start_with_key(&config, *b"the sample nonce", &mut out)
    else {
        return;
    };
    for piece in input.chunks(chunk) {
        match hs.handle_input(piece) {
            Ok(ClientStep::NeedMore(next)) => {
                assert!(next.buffered() <= 2048);
                hs = next;
            }
            Ok(ClientStep::Done(up)) => {
                assert_eq!(up.status, 101);
                if let Some(params) = up.deflate {
                    assert!(params.server_max_window_bits <= 12);
                }
                return;
            }
            Err(err) => {
                let _ = err.to_string();
                return;
            }
        }
    }
});
