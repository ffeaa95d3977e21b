//! Server opening handshake: arbitrary request bytes, in arbitrary chunks.
//!
//! Input: the first byte sets the chunk size (1..=256), the rest is fed to a
//! `ServerHandshake` with deflate and subprotocols enabled and a small header
//! limit. Must never panic, never buffer past the limit, and every outcome
//! must produce a writable response.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::ws_handshake_server`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/ws_handshake_server/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::ws_handshake_server(data));
