//! `FrameHeader::decode` on arbitrary bytes: a decoded header is at most
//! `MAX_HEADER_LEN` bytes, re-encodes (shortest length form) to bytes that
//! decode to the same header, and errors do not depend on what follows.
//!
//! Input: the bytes to decode, as the front of a frame.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::ws_frame_header`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/ws_frame_header/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::ws_frame_header(data));
