//! What only storm-std does. Everything the adapters share (echo, groups,
//! policies, heartbeats, reconnects, shutdown, …) runs on every adapter and
//! every pair of adapters in the cross-adapter suite, `tests/tests/suite.rs`.

use storm_proto::options::{ClientOptions, ServerOptions, TlsServerOptions, WsOptions};
use storm_std::{ClientError, Handler, WsClient, WsServer};

struct Nothing;

impl Handler for Nothing {}

#[test]
fn tls_options_are_refused_not_ignored() {
    let options = ServerOptions {
        tls: Some(TlsServerOptions::new("cert", "key")),
        ..ServerOptions::default()
    };
    let error = WsServer::bind(options, WsOptions::default()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("TLS"));
    match WsClient::connect(
        "wss://127.0.0.1:1/",
        ClientOptions::default(),
        WsOptions::default(),
        Nothing,
    ) {
        Err(ClientError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}
