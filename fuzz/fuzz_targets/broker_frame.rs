#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::broker::broker_frame(data));
