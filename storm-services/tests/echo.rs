//! The echo service under backpressure on every runtime: a client sends
//! a long run of messages at once (many per read) and reads nothing for a
//! while, so the server's send limit fills in the middle of a batch. Under
//! the `Wait` policy the echo waits there (and reads nothing more) until
//! the client reads: every message comes back, once, in order. Under
//! `Drop` it drops what does not fit and counts it: the rest comes back,
//! once, in order.

mod common;

use std::io::ErrorKind;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use storm_host::options::ServerOptions;
use storm_proto::backpressure::SlowConsumerPolicy;
use storm_proto::framing::Framing;
use storm_services::host::{Listen, Runtime};

use common::{EchoServer, WAIT};

/// Messages the client sends, each `LEN` bytes: far more than the send
/// limit, the server's socket buffer and the client's receive buffer hold.
const COUNT: u32 = 4000;
const LEN: usize = 64;

/// The `i`th message, length-prefixed: its number, then filler.
fn message(i: u32) -> Vec<u8> {
    let mut frame = u32::try_from(LEN).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&i.to_be_bytes());
    frame.resize(4 + LEN, b'.');
    frame
}

/// Polls `done` until it holds, for at most [`WAIT`].
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "{what}");
        std::thread::yield_now();
    }
}

fn echo_waits_for_a_full_send_limit(runtime: Runtime) {
    // 127.0.0.1, a free port; a send limit far below what is sent.
    let mut options = ServerOptions::default();
    options.backpressure.slow_consumer_policy = SlowConsumerPolicy::Wait;
    options.backpressure.max_pending_send_bytes = 1024;
    options.send_buffer_size = Some(4096);
    let server = EchoServer::start(runtime, options, Listen::Tcp(Framing::LengthPrefix));
    let hub = server.hub.clone();
    let mut client = TcpStream::connect(server.addr).expect("connect");
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut sender = client.try_clone().expect("clone");
    // The sender blocks once the server stops reading: on a thread.
    let sent = std::thread::spawn(move || {
        let wire: Vec<u8> = (0..COUNT).flat_map(message).collect();
        sender.write_all(&wire).map_err(|e| e.to_string())
    });
    // The replies fill the send limit while the client reads nothing.
    eventually(&format!("{runtime:?}: the send limit fills"), || {
        hub.sessions().iter().any(|s| s.is_backpressured())
    });
    let mut echoed = vec![0u8; (4 + LEN) * COUNT as usize];
    client.read_exact(&mut echoed).expect("every echo");
    for (i, frame) in (0..COUNT).zip(echoed.chunks(4 + LEN)) {
        assert_eq!(frame, message(i), "{runtime:?}: echo {i} in order");
    }
    assert_eq!(sent.join().expect("sender"), Ok(()), "{runtime:?}");
    let dropped: u64 = hub
        .sessions()
        .iter()
        .map(|s| s.metrics().messages_dropped)
        .sum();
    assert_eq!(dropped, 0, "{runtime:?}: nothing dropped");

    server.stop();
}

fn echo_drops_past_a_full_send_limit(runtime: Runtime) {
    let mut options = ServerOptions::default();
    options.backpressure.slow_consumer_policy = SlowConsumerPolicy::Drop;
    options.backpressure.max_pending_send_bytes = 1024;
    options.send_buffer_size = Some(4096);
    let server = EchoServer::start(runtime, options, Listen::Tcp(Framing::LengthPrefix));
    let hub = server.hub.clone();
    let dropped = || -> u64 {
        hub.sessions()
            .iter()
            .map(|s| s.metrics().messages_dropped)
            .sum()
    };
    let mut client = TcpStream::connect(server.addr).expect("connect");
    let mut sender = client.try_clone().expect("clone");
    // The server never stops reading under `Drop`; the client reads
    // nothing until all is sent, so the send limit fills.
    let wire: Vec<u8> = (0..COUNT).flat_map(message).collect();
    sender.write_all(&wire).expect("send all");
    // Read until every message came back or was counted as dropped; a
    // short read timeout lets the count be looked at again.
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let (start, mut echoed, mut buffer) = (Instant::now(), Vec::new(), vec![0u8; 64 * 1024]);
    while echoed.len() / (4 + LEN) + usize::try_from(dropped()).unwrap() < COUNT as usize {
        assert!(
            start.elapsed() < WAIT,
            "{runtime:?}: every message echoed or dropped"
        );
        match client.read(&mut buffer) {
            Ok(0) => panic!("{runtime:?}: the server closed"),
            Ok(n) => echoed.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{runtime:?}: {e}"),
        }
    }
    assert!(dropped() > 0, "{runtime:?}: the send limit filled");
    assert_eq!(echoed.len() % (4 + LEN), 0, "{runtime:?}: whole frames");
    let mut last = None;
    for frame in echoed.chunks(4 + LEN) {
        let i = u32::from_be_bytes(frame[4..8].try_into().unwrap());
        assert_eq!(frame, message(i), "{runtime:?}: echo {i} intact");
        assert!(last < Some(i), "{runtime:?}: echo {i} in order, once");
        last = Some(i);
    }

    server.stop();
}

#[test]
fn echo_drops_past_a_full_send_limit_on_tokio() {
    echo_drops_past_a_full_send_limit(Runtime::Tokio);
}

#[test]
fn echo_drops_past_a_full_send_limit_on_smol() {
    echo_drops_past_a_full_send_limit(Runtime::Smol);
}

#[test]
fn echo_drops_past_a_full_send_limit_on_std() {
    echo_drops_past_a_full_send_limit(Runtime::Std);
}

#[test]
fn echo_waits_for_a_full_send_limit_on_tokio() {
    echo_waits_for_a_full_send_limit(Runtime::Tokio);
}

#[test]
fn echo_waits_for_a_full_send_limit_on_smol() {
    echo_waits_for_a_full_send_limit(Runtime::Smol);
}

#[test]
fn echo_waits_for_a_full_send_limit_on_std() {
    echo_waits_for_a_full_send_limit(Runtime::Std);
}
