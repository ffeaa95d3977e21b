//! The examples, run as their users run them: each server is started on
//! `127.0.0.1:0` with every `--runtime`, found by the line it prints, and
//! talked to over loopback; the reconnecting client runs to its end. (The
//! Autobahn clients need the fuzzing server: `autobahn/run.sh` runs them.)
//!
//! The binaries are the ones `cargo test` builds beside this test
//! (`target/PROFILE/examples/`): run this test through `cargo test -p
//! storm-examples` (or `--workspace`), which builds the examples first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use storm_host::options::{ClientOptions, WsOptions};
use storm_proto::Message;
use storm_proto::ws::Event;
use storm_std::ws::{self, ConnectOptions, WebSocket};
use storm_tests::process::{lines, output_within};
use storm_tests::suite::pki::Pki;

/// How long any one step may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

const RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

/// The path of example `name`, built beside this test.
fn example(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    // target/PROFILE/deps/TEST → target/PROFILE/examples/NAME
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE");
    let path = profile.join("examples").join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is not built: {REBUILD}", path.display()));
    // `cargo test --test examples` alone does not rebuild the examples.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{name}.rs"));
    let edited = std::fs::metadata(&source).and_then(|m| m.modified());
    assert!(
        edited.is_ok_and(|edited| edited <= built),
        "{} is older than {}: {REBUILD}",
        path.display(),
        source.display()
    );
    path
}

const REBUILD: &str =
    "run this test through `cargo test -p storm-examples`, which builds the examples";

/// A server example running as a child process; killed, by its id, when
/// dropped.
struct Running {
    child: Child,
    /// Where it listens, from its first line (`NAME listening on URL`).
    url: String,
    _stdout: Receiver<String>,
}

impl Running {
    fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(example(name))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let stdout = lines(child.stdout.take().expect("piped stdout"));
        let mut running = Self {
            child,
            url: String::new(),
            _stdout: stdout,
        };
        let banner = running
            ._stdout
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{name} {args:?} printed nothing within {WAIT:?}"));
        running.url = match banner.split_once(" listening on ") {
            Some((who, url)) if who == name => url.to_owned(),
            _ => panic!("{name} {args:?} printed {banner:?}, not where it listens"),
        };
        running
    }

    /// `host:port` of the URL.
    fn addr(&self) -> &str {
        self.url.split_once("://").expect("a URL").1
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking WebSocket client whose reads give up after [`WAIT`].
fn ws_client(url: &str, options: &ConnectOptions) -> WebSocket<TcpStream> {
    let (mut socket, _) = ws::connect(url, options).expect("the upgrade");
    socket
        .get_mut()
        .set_read_timeout(Some(WAIT))
        .expect("a read timeout");
    socket
}

/// The next text or binary message; pings and pongs are passed over.
fn next_message(socket: &mut WebSocket<TcpStream>) -> Event {
    loop {
        match socket.read().expect("a message in time") {
            Event::Ping(_) | Event::Pong(_) => {}
            event => return event,
        }
    }
}

fn next_text(socket: &mut WebSocket<TcpStream>) -> String {
    match next_message(socket) {
        Event::Text(text) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The Autobahn settings of `ws_echo` and `ws_echo_blocking`: deflate is
/// agreed, and a message past the default 16 MiB limit comes back whole.
fn check_autobahn_echo(url: &str) {
    let ws = storm_examples::autobahn_ws();
    let mut options = ConnectOptions::default().with_config(ws.config);
    options.deflate = ws.deflate;
    let (mut socket, upgraded) = ws::connect(url, &options).expect("the upgrade");
    assert!(upgraded.deflate.is_some(), "{url}: no permessage-deflate");
    socket
        .get_mut()
        .set_read_timeout(Some(WAIT))
        .expect("a read timeout");
    socket.send_text("hello").unwrap();
    assert_eq!(next_text(&mut socket), "hello");
    let large: Vec<u8> = (0..(16 << 20) + 1).map(|i: u32| i as u8).collect();
    socket.send_binary(&large).unwrap();
    match next_message(&mut socket) {
        Event::Binary(data) => assert!(data == large, "{url}: the large message came back changed"),
        other => panic!("{url}: expected the large message back, got {other:?}"),
    }
}

#[test]
fn ws_echo_echoes_with_the_autobahn_settings_on_every_runtime() {
    for runtime in RUNTIMES {
        let server = Running::start("ws_echo", &["--runtime", runtime, "127.0.0.1:0"]);
        assert!(server.url.starts_with("ws://127.0.0.1:"), "{}", server.url);
        check_autobahn_echo(&server.url);
    }
}

#[test]
fn ws_echo_blocking_echoes_with_the_autobahn_settings() {
    let server = Running::start("ws_echo_blocking", &["127.0.0.1:0"]);
    check_autobahn_echo(&server.url);
}

/// Forwards every message a client receives.
struct Forward(Sender<Message>);

impl storm_std::Handler for Forward {
    fn on_message(&self, _session: &storm_std::Session, message: Message) {
        let _ = self.0.send(message);
    }
}

#[test]
fn ws_echo_serves_wss_with_tls_on_every_runtime() {
    let pki = Pki::new();
    let files = pki.pem_files();
    for runtime in RUNTIMES {
        let mut args = vec!["--runtime", runtime, "127.0.0.1:0"];
        args.extend(files.tls_args());
        let server = Running::start("ws_echo", &args);
        assert!(server.url.starts_with("wss://127.0.0.1:"), "{}", server.url);
        let options = ClientOptions::default().with_tls(pki.client());
        let (tx, rx) = mpsc::channel();
        let client =
            storm_std::WsClient::connect(&server.url, options, WsOptions::default(), Forward(tx))
                .unwrap_or_else(|e| panic!("{runtime}: {e}"));
        client.send("over TLS").unwrap();
        assert_eq!(
            rx.recv_timeout(WAIT).expect("the echo in time"),
            Message::from("over TLS"),
            "{runtime}"
        );
        client.close();
        assert!(
            client.closed_timeout(WAIT),
            "{runtime}: the client did not stop"
        );
    }
}

/// Writes `bytes` to the server at `addr` and reads back as many.
fn tcp_echoed(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket.write_all(bytes).unwrap();
    let mut echoed = vec![0; bytes.len()];
    socket.read_exact(&mut echoed).unwrap();
    echoed
}

#[test]
fn tcp_echo_echoes_lines_and_length_prefixed_messages_on_every_runtime() {
    for runtime in RUNTIMES {
        let line = Running::start(
            "tcp_echo",
            &["127.0.0.1:0", "--framing", "line", "--runtime", runtime],
        );
        assert_eq!(
            tcp_echoed(line.addr(), b"one\ntwo\n"),
            b"one\ntwo\n",
            "{runtime}"
        );
        // Length-prefixed is the default.
        let lp = Running::start("tcp_echo", &["--runtime", runtime, "127.0.0.1:0"]);
        let message = b"\0\0\0\x05hello";
        assert_eq!(tcp_echoed(lp.addr(), message), message, "{runtime}");
    }
}

/// The name in `* welcome NAME, you are in lobby`.
fn welcomed(socket: &mut WebSocket<TcpStream>) -> String {
    let welcome = next_text(socket);
    welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.strip_suffix(", you are in lobby"))
        .unwrap_or_else(|| panic!("not a welcome: {welcome:?}"))
        .to_owned()
}

#[test]
fn chat_runs_its_protocol_on_every_runtime() {
    for runtime in RUNTIMES {
        let server = Running::start("chat", &["127.0.0.1:0", "--runtime", runtime]);
        let options = ConnectOptions::default();
        let mut a = ws_client(&server.url, &options);
        let guest_a = welcomed(&mut a);
        let mut b = ws_client(&server.url, &options);
        let guest_b = welcomed(&mut b);
        assert_ne!(guest_a, guest_b, "{runtime}");
        assert_eq!(next_text(&mut a), format!("* {guest_b} joined lobby"));

        // A rename is told to the room, the renamed included.
        a.send_text("/name alice").unwrap();
        let renamed = format!("* {guest_a} is now alice");
        assert_eq!(next_text(&mut a), renamed, "{runtime}");
        assert_eq!(next_text(&mut b), renamed, "{runtime}");

        // Chat goes to the others in the room, not back to its sender:
        // alice's next message is about b's move, not her own line.
        a.send_text("hello").unwrap();
        assert_eq!(next_text(&mut b), "[lobby] alice: hello", "{runtime}");
        b.send_text("/join rust").unwrap();
        let left = format!("* {guest_b} left lobby");
        assert_eq!(next_text(&mut b), left, "{runtime}");
        assert_eq!(next_text(&mut b), format!("* {guest_b} joined rust"));
        assert_eq!(next_text(&mut a), left, "{runtime}");

        a.send_text("/bogus").unwrap();
        assert_eq!(next_text(&mut a), "! unknown command /bogus", "{runtime}");
        b.send_binary(b"bytes").unwrap();
        assert_eq!(next_text(&mut b), "! text messages only", "{runtime}");

        a.send_text("/join rust").unwrap();
        assert_eq!(next_text(&mut a), "* alice left lobby", "{runtime}");
        assert_eq!(next_text(&mut a), "* alice joined rust", "{runtime}");
        assert_eq!(next_text(&mut b), "* alice joined rust", "{runtime}");

        // A disconnect is told to the room.
        drop(b);
        assert_eq!(next_text(&mut a), format!("* {guest_b} left rust"));
        a.send_text("/leave").unwrap();
        assert_eq!(next_text(&mut a), "* alice left rust", "{runtime}");
        a.send_text("anyone?").unwrap();
        assert_eq!(
            next_text(&mut a),
            "! you are in no room: /join one",
            "{runtime}"
        );
    }
}

#[test]
fn reconnecting_client_sends_prints_and_exits_on_every_runtime() {
    let server = Running::start("ws_echo", &["127.0.0.1:0"]);
    for runtime in RUNTIMES {
        let client = Command::new(example("reconnecting_client"))
            .args([&server.url, "--count", "1", "--runtime", runtime])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("reconnecting_client starts");
        let output = output_within(client, WAIT, "reconnecting_client");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{runtime}: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let printed: Vec<&str> = stdout.lines().collect();
        assert!(
            printed
                .first()
                .is_some_and(|l| l.starts_with("on_connect: 127.0.0.1:")),
            "{runtime}: {printed:?}"
        );
        for line in ["sent: message 1", "received: message 1"] {
            assert!(
                printed.contains(&line),
                "{runtime}: no {line:?} in {printed:?}"
            );
        }
        assert!(
            printed
                .last()
                .is_some_and(|l| l.starts_with("on_disconnect: ")),
            "{runtime}: {printed:?}"
        );
    }
}
