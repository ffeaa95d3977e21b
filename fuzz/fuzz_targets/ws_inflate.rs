//! permessage-deflate decompression (and compression round trips) on
//! arbitrary input.
//!
//! Input layout: one control byte, then records `[header][payload]`.
//! Control: bit 0 server_no_context_takeover, bit 1 client_no_context_takeover,
//! bits 2..=6 pick server_max_window_bits (9 + n % 7), bit 7 round-trip mode.
//! Record header: bits 0..=6 payload length (cut short at the end of input),
//! bit 7 `fin`.
//!
//! Inflate mode: each record is one frame payload of a compressed message the
//! client receives; the message limit is 64 KiB and must never be exceeded,
//! whatever the bytes. Round-trip mode: each record is a whole message the
//! server compresses and the client must get back unchanged.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::ws_inflate`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/ws_inflate/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::ws_inflate(data));
