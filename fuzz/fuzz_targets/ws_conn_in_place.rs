//! The WebSocket `Connection`'s read in place (`fill_input`) against its
//! copying input (`handle_input`): the same peer bytes in the same chunks
//! give the same events, error and transmitted bytes either way, and a
//! read in place never grows the input buffer.
//!
//! Input: byte 0 bit 0 picks the side (0 server, masked input; 1 client);
//! byte 1 seeds the chunk sizes; the rest is what the peer sends. Limits
//! are roomy (1 MiB), so a header declaring a long frame is enough to reach
//! the in-place path.
//!
//! The logic: `storm_tests::fuzz::ws_conn_in_place`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays
//! `fuzz/corpus/ws_conn_in_place/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::ws_conn_in_place(data));
