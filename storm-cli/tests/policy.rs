//! The policy and limit flags every server service takes
//! (`storm-cli/src/policy.rs`), checked on the real binary over loopback:
//! each test starts a service with a flag and watches a hand-written
//! client meet it. Every wait is bounded (reads and writes time out after
//! [`WAIT`]); nothing sleeps.

mod common;
use common::{connect, ended, lp, lp_round_trip};

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use storm_proto::route::{self, envelope};
use storm_proto::ws::{CloseCode, Event};
use storm_tests::process::{lines, output_within};
use storm_tests::suite::WAIT;
use storm_tests::suite::raw::{RawWs, opcode};

/// A running `storm <service>`, killed (by its id) on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    _stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `storm <args…> --addr 127.0.0.1:0` and reads where it listens
/// from its banner, the first line it prints ("… listening on
/// SCHEME://ADDR", an rpc endpoint ending in `/`).
fn start(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(args)
        .args(["--addr", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storm starts");
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let banner = stdout.recv_timeout(WAIT).expect("a banner");
    let addr = banner
        .rsplit("://")
        .next()
        .map(|addr| addr.trim_end_matches('/'))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));
    Server {
        child,
        addr,
        _stdout: stdout,
        stderr,
    }
}

#[test]
fn every_server_service_documents_the_policy_flags() {
    for service in ["echo", "json", "chat", "broker", "gateway", "rpc"] {
        let child = Command::new(env!("CARGO_BIN_EXE_storm"))
            .args([service, "--help"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("storm starts");
        let output = output_within(child, WAIT, "storm --help");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{service}: {help}");
        for flag in [
            "--max-connections <N>",
            "--slow-consumer <SLOW_CONSUMER>",
            "--max-pending-bytes <BYTES>",
            "[default: 1048576]",
            "--heartbeat <SECS>",
            "--missed-pongs <N>",
            "--idle-timeout <SECS>",
            "--max-message <BYTES>",
        ] {
            assert!(
                help.contains(flag),
                "storm {service} --help lacks {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn a_flag_the_service_cannot_honour_is_refused_with_a_reason() {
    for (args, says) in [
        (
            &["json", "--heartbeat", "5"][..],
            "storm json: --heartbeat 5: plain TCP has no ping",
        ),
        (
            &["echo", "--proto", "lp", "--missed-pongs", "2"][..],
            "--missed-pongs: plain TCP has no ping",
        ),
        (
            &["broker", "--slow-consumer", "drop"][..],
            "storm broker: --slow-consumer drop: only wait",
        ),
        (
            &["echo", "--proto", "raw", "--max-message", "10"][..],
            "--max-message 10: raw TCP has no messages",
        ),
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("storm starts");
        let output = output_within(child, WAIT, "a refused storm");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was taken");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn max_connections_refuses_the_second_client_of_echo_over_websocket() {
    let server = start(&["echo", "--max-connections", "1"]);
    // Upgraded: the first client holds the one place.
    let mut first = RawWs::upgrade(server.addr);
    let mut second = connect(server.addr);
    assert!(ended(&mut second), "a second client was let in");
    first.send(opcode::TEXT, b"still here", true);
    assert!(matches!(first.next_event(), Some(Event::Text(text)) if text.as_str() == "still here"));
}

#[test]
fn max_connections_refuses_the_second_client_of_json() {
    let server = start(&["json", "--max-connections", "1"]);
    let mut first = connect(server.addr);
    // A reply: the first client has been admitted.
    let reply = lp_round_trip(&mut first, br#"{"type":"ping"}"#);
    assert!(
        String::from_utf8_lossy(&reply).contains("pong"),
        "{reply:?}"
    );
    let mut second = connect(server.addr);
    assert!(ended(&mut second), "a second client was let in");
    let reply = lp_round_trip(&mut first, br#"{"type":"ping"}"#);
    assert!(
        String::from_utf8_lossy(&reply).contains("pong"),
        "{reply:?}"
    );
}

#[test]
fn max_connections_refuses_the_second_client_of_the_broker() {
    let server = start(&["broker", "--max-connections", "1"]);
    let addr = server.addr.to_string();
    // Registered (acknowledged): the first client holds the one place.
    let _first = storm_tests::broker::registered_raw(
        &addr,
        storm_tests::broker::channel(1),
        storm_proto::broker::Role::Provider,
        Duration::ZERO,
    );
    let mut second = connect(server.addr);
    assert!(ended(&mut second), "a second client was let in");
}

/// `--slow-consumer disconnect`: a client that sends and never reads has
/// its replies pile up past `--max-pending-bytes` and is disconnected,
/// while another client's echoes keep coming.
#[test]
fn slow_consumer_disconnect_drops_the_client_that_never_reads() {
    let server = start(&[
        "echo",
        "--proto",
        "lp",
        "--slow-consumer",
        "disconnect",
        "--max-pending-bytes",
        "65536",
    ]);
    let mut reader = connect(server.addr);
    assert_eq!(lp_round_trip(&mut reader, b"before"), b"before");

    // The kernel's buffers fill first (a small receive buffer keeps that
    // short), then the server's queue: the flood ends when a write fails.
    let socket = socket2::Socket::from(connect(server.addr));
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut flooder = TcpStream::from(socket);
    let message = lp(&[b'x'; 16 * 1024]);
    let started = Instant::now();
    let mut sent = 0usize;
    let cut = loop {
        assert!(
            sent < 1 << 30 && started.elapsed() < WAIT,
            "still connected after {sent} bytes never read"
        );
        match flooder.write_all(&message) {
            Ok(()) => sent += message.len(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    assert!(cut, "the server stopped reading instead of disconnecting");
    assert!(ended(&mut flooder));
    assert_eq!(lp_round_trip(&mut reader, b"after"), b"after");
}

/// `--heartbeat 1 --missed-pongs 1`: a WebSocket client that never answers
/// pings is dropped after its first unanswered one (three with the old
/// fixed count), a few seconds after it connected.
#[test]
fn heartbeat_with_one_missed_pong_drops_a_silent_websocket_client() {
    for service in [&["echo"][..], &["chat", "--no-http"][..]] {
        let mut args = service.to_vec();
        args.extend(["--heartbeat", "1", "--missed-pongs", "1"]);
        let server = start(&args);
        let started = Instant::now();
        // RawWs never writes a pong.
        let mut silent = RawWs::upgrade(server.addr);
        let mut pings = 0;
        while let Some(event) = silent.next_event() {
            match event {
                Event::Ping(_) => pings += 1,
                Event::Close(_) => break,
                _ => {}
            }
        }
        assert_eq!(pings, 1, "{service:?}: pings before the server gave up");
        assert!(started.elapsed() < WAIT, "{service:?}");
    }
}

/// `--max-message` on WebSocket: a larger message is refused with close
/// code 1009 (Message Too Big), on echo and on rpc (where the limit is the
/// request payload, plus room for the envelope).
#[test]
fn max_message_closes_with_1009_on_websocket() {
    for (service, too_big) in [(&["echo"][..], 101), (&["rpc"][..], 4096)] {
        let mut args = service.to_vec();
        args.extend(["--max-message", "100"]);
        let server = start(&args);
        let mut client = RawWs::upgrade(server.addr);
        client.send(opcode::BINARY, &vec![b'x'; too_big], true);
        let close = client.close_frame().expect("a close frame");
        assert_eq!(
            close.code,
            CloseCode::MESSAGE_TOO_BIG,
            "{service:?}: {close:?}"
        );
    }
}

/// The gateway never waits on one client; with `--slow-consumer drop` a
/// client that does not read loses the replies that do not fit and stays
/// connected (before, any client over its limit was closed with 1008).
#[test]
fn slow_consumer_drop_in_the_gateway_drops_messages_and_keeps_the_client() {
    let backend = start(&["echo", "--proto", "lp"]);
    let dir = std::env::temp_dir().join(format!("storm-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ini = dir.join("routes.ini");
    std::fs::write(
        &ini,
        format!(
            "[echo]\nname = echo\nport = {}\nprotocol = tcp\n",
            backend.addr.port()
        ),
    )
    .expect("route file");
    let gateway = start(&[
        "gateway",
        "--config",
        ini.to_str().expect("UTF-8 path"),
        "--slow-consumer",
        "drop",
        "--max-pending-bytes",
        "65536",
    ]);
    let up = std::iter::from_fn(|| gateway.stderr.recv_timeout(WAIT).ok())
        .any(|line| line.starts_with("backend echo connected"));
    assert!(up, "the backend never came up");

    // The client does the route handshake. Its receive buffer is fixed
    // (no autotuning up to tens of MiB), and not tiny, so that reading
    // back what the kernel holds is quick.
    let socket = socket2::Socket::from(RawWs::request(gateway.addr));
    socket.set_recv_buffer_size(256 * 1024).expect("SO_RCVBUF");
    let mut client = RawWs::upgraded(TcpStream::from(socket)).expect("upgraded");
    client
        .stream
        .set_write_timeout(Some(WAIT))
        .expect("write timeout");
    let config = route::ClientConfig {
        routes: vec!["echo".to_owned()],
        ..route::ClientConfig::default()
    };
    let mut handshake = route::ClientHandshake::new(&config, Instant::now()).expect("config");
    loop {
        while let Some(text) = handshake.poll_transmit() {
            client.send(opcode::TEXT, text.as_bytes(), true);
        }
        if let Some(route::Event::Ready(_)) = handshake.poll_event() {
            break;
        }
        let Some(Event::Text(text)) = client.next_event() else {
            panic!("the handshake ended");
        };
        handshake
            .handle_message(Instant::now(), text.as_str())
            .expect("handshake step");
    }

    // Requests whose echoes the client does not read: 32 MiB, far more
    // than the kernel's buffers (a few MiB each way) and the gateway's
    // 64 KiB queue hold.
    let payload = "x".repeat(16 * 1024);
    let request = envelope::encode_text("echo", &payload).expect("envelope");
    let sent = 2048;
    for _ in 0..sent {
        client.send(opcode::TEXT, request.as_bytes(), true);
    }
    // Then a marker: the client reads until its echo. The marker's echo
    // may itself be dropped while the queue is still full, so it is sent
    // again after each echo read: the last one goes when the queue has
    // room.
    let marker = envelope::encode_text("echo", "marker").expect("envelope");
    client.send(opcode::TEXT, marker.as_bytes(), true);
    let mut echoed = 0;
    loop {
        match client.next_event() {
            Some(Event::Text(text)) if text.as_str().ends_with("marker") => break,
            Some(Event::Text(_)) => echoed += 1,
            Some(Event::Close(close)) => panic!("closed: {close:?}"),
            Some(_) => continue,
            None => panic!("the gateway ended the connection"),
        }
        client.send(opcode::TEXT, marker.as_bytes(), true);
    }
    assert!(
        echoed < sent,
        "nothing was dropped: {echoed} of {sent} echoed"
    );
}
