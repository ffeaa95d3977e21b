//! Fuzzes `BrokerFramer`: broker frames cut from a byte stream in any
//! chunking, within the payload limit, re-encoding to the bytes consumed
//! (a frame over the limit: its header alone, its payload skipped).
//!
//! The logic, with the full input layout: `storm_tests::fuzz::broker::broker_framer`.
//! `cargo test -p storm-tests --test fuzz_broker` replays `fuzz/corpus/broker_framer/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::broker::broker_framer(data));
