#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| storm_tests::fuzz::rpc::rpc_envelope(data));
