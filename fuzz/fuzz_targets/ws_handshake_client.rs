//! Client opening handshake: arbitrary response bytes, in arbitrary chunks.
//!
//! Input: the first byte sets the chunk size (1..=256), the rest is fed to a
//! `ClientHandshake` that offered two subprotocols and permessage-deflate
//! with the RFC 6455 sample key (so `Sec-WebSocket-Accept:
//! s3pPLMBiTxaQ9kYGzzhZRbK+xOo=` is the matching answer). Must never panic
//! nor buffer past the limit.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::ws_handshake_client`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/ws_handshake_client/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::ws_handshake_client(data));
