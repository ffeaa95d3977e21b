#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::backplane::backplane_envelope(data));
