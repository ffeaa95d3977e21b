//! Fuzzes `DelimiterFramer`: arbitrary bytes in arbitrary chunks never
//! panic, never leave a maximal frame's worth of bytes buffered, and (without
//! `\r` stripping) every decoded message re-encodes to exactly the bytes it
//! consumed.
//!
//! Input: byte 0 picks the delimiter (bits 0-2) and `\r` stripping (bit 3),
//! byte 1 the max message length (0..=255), byte 2 seeds the chunk sizes,
//! the rest is the stream.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::framing_delimiter`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/framing_delimiter/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::framing_delimiter(data));
