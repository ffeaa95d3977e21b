//! `Sec-WebSocket-Extensions` parsing and permessage-deflate negotiation.
//!
//! Input: a header value. It is parsed as a client's offers (the server
//! negotiates) and as a server's answer (the client checks it). Whatever the
//! server agrees to must read back on the client to the same windows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::extensions::{deflate_response_params, negotiate_deflate, parse_extensions};

fuzz_target!(|data: &[u8]| {
    let mut offers = Vec::new();
    if parse_extensions(data, &mut offers).is_err() {
        assert!(offers.is_empty());
        return;
    }
    let config = DeflateConfig::default();
    if let Some(agreement) = negotiate_deflate(&config, &offers) {
        let mut answer = Vec::new();
        assert!(parse_extensions(agreement.response.as_bytes(), &mut answer).is_ok());
        assert_eq!(answer.len(), 1);
    }
    for ext in &offers {
        if let Ok(params) = deflate_response_params(&config, ext) {
            assert!((9..=15).contains(&params.server_max_window_bits));
            assert!((9..=15).contains(&params.client_max_window_bits));
        }
    }
});
