//! The hosting seam on every runtime: `host::serve` binds, starts the
//! service once bound, serves it, and on `Stop` shuts it down gracefully
//! and returns.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use storm_host::options::ServerOptions;
use storm_proto::framing::Framing;
use storm_services::echo::Echo;
use storm_services::host::{self, Listen, Runtime, Stop};

/// How long any one step may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

fn serves_until_stopped(runtime: Runtime) {
    let stop = Stop::new();
    let (bound, addr) = mpsc::channel::<SocketAddr>();
    let (done, ended) = mpsc::channel();
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let options = ServerOptions::default(); // 127.0.0.1, a free port
            let result = host::serve(
                runtime,
                options,
                Listen::Tcp(Framing::LengthPrefix),
                &stop,
                WAIT,
                |started| {
                    bound.send(started.local_addr).expect("the test waits");
                    Echo
                },
            );
            let _ = done.send(result.map_err(|e| e.to_string()));
        });
    }
    let addr = addr.recv_timeout(WAIT).expect("bound");
    let mut client = TcpStream::connect(addr).expect("connect");
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    client.write_all(b"\0\0\0\x05hello").expect("send");
    let mut echoed = [0u8; 9];
    client.read_exact(&mut echoed).expect("the echo");
    assert_eq!(&echoed, b"\0\0\0\x05hello", "{runtime:?}");

    assert!(stop.raise());
    let result = ended
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{runtime:?}: serve did not return after the stop"));
    assert_eq!(result, Ok(()), "{runtime:?}");
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
