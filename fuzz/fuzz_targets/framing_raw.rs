//! Fuzzes `RawFramer`: any bytes in any chunking come out unchanged, in
//! non-empty messages of at most the limit, and nothing stays buffered.
//!
//! Input: byte 0 picks the max chunk length (1..=256), byte 1 seeds the
//! chunk sizes, the rest is the stream.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::framing_raw`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/framing_raw/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::framing_raw(data));
