//! The WebSocket `Connection` as an echo endpoint fed arbitrary peer bytes
//! in arbitrary chunks: no panic, messages within the limit, errors final,
//! nothing after `Event::Close`, and what it transmits (pongs, echoes, close
//! frame) decodes cleanly on a peer connection.
//!
//! Input: byte 0 picks the side (bit 0: 0 server, masked input; 1 client),
//! permessage-deflate (bit 1; bits 2 and 3 the no_context_takeover flags,
//! bits 4..=6 the window bits) and tight or roomy limits (bit 7); byte 1
//! seeds the chunk sizes; the rest is what the peer sends.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::ws_conn`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/ws_conn/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::ws_conn(data));
