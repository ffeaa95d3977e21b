//! The hosting seam on every runtime: `host::serve` binds, starts the
//! service once bound, serves it, and on `Stop` shuts it down gracefully
//! and returns.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use storm_host::options::ServerOptions;
use storm_proto::framing::Framing;
use storm_services::host::{Listen, Runtime};

use common::{EchoServer, WAIT};

fn serves_until_stopped(runtime: Runtime) {
    // 127.0.0.1, a free port.
    let options = ServerOptions::default();
    let server = EchoServer::start(runtime, options, Listen::Tcp(Framing::LengthPrefix));
    let mut client = TcpStream::connect(server.addr).expect("connect");
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    client.write_all(b"\0\0\0\x05hello").expect("send");
    let mut echoed = [0u8; 9];
    client.read_exact(&mut echoed).expect("the echo");
    assert_eq!(&echoed, b"\0\0\0\x05hello", "{runtime:?}");
    // The hub `start` was shown is the server's.
    assert_eq!(server.hub.sessions().len(), 1, "{runtime:?}");

    server.stop();
    // The session was closed, not left open: the client reads the end.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("a clean end");
    assert!(rest.is_empty(), "{runtime:?}: {rest:?}");
}

#[test]
fn serve_stops_on_tokio() {
    serves_until_stopped(Runtime::Tokio);
}

#[test]
fn serve_stops_on_smol() {
    serves_until_stopped(Runtime::Smol);
}

#[test]
fn serve_stops_on_std() {
    serves_until_stopped(Runtime::Std);
}
