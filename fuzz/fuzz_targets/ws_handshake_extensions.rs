//! `Sec-WebSocket-Extensions` parsing and permessage-deflate negotiation.
//!
//! Input: a header value. It is parsed as a client's offers (the server
//! negotiates) and as a server's answer (the client checks it). Whatever the
//! server agrees to must read back on the client to the same windows.
//!
//! The logic, with the full input layout: `storm_tests::fuzz::ws_handshake_extensions`.
//! `cargo test -p storm-tests --test fuzz_corpus` replays `fuzz/corpus/ws_handshake_extensions/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::ws_handshake_extensions(data));
