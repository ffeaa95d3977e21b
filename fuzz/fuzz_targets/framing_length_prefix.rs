//! Fuzzes `LengthPrefixFramer`: arbitrary bytes in arbitrary chunks never
//! panic, never leave a maximal frame's worth of bytes buffered, and every
//! decoded message re-encodes to exactly the bytes it consumed.
//!
//! Input: byte 0 picks the max frame length (0..=1020, in steps of 4),
//! byte 1 seeds the chunk sizes, the rest is the stream.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::framing_length_prefix`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/framing_length_prefix/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::framing_length_prefix(data));
