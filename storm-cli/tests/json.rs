//! `storm json` as a real process on a loopback port, driven by a small
//! hand-written length-prefixed JSON client, and `storm client json`
//! against it. Every read has a timeout, every child a deadline.

mod common;
use common::Inbox;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A running `storm json`, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every runtime `storm json` serves on; each test runs on each.
const RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

fn start(runtime: &str) -> Server {
    start_with(runtime, &[])
}

fn start_with(runtime: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(["json", "--addr", "127.0.0.1:0", "--runtime", runtime])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("storm starts");
    // "... listening on tcp://127.0.0.1:PORT" (tls:// with --tls)
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("banner");
    let scheme = if extra.contains(&"--tls") {
        "tls"
    } else {
        "tcp"
    };
    assert!(
        line.contains(&format!("listening on {scheme}://")),
        "banner: {line}"
    );
    assert!(
        line.to_lowercase().contains(&format!("{runtime} runtime")),
        "banner: {line}"
    );
    // Shown with a failing test's output: which runtime failed.
    eprintln!("storm json --runtime {runtime} on {}", line.trim());
    let addr = line
        .trim()
        .rsplit("://")
        .next()
        .expect("address")
        .to_owned();
    Server { child, addr }
}

/// The test's own client: 4-byte big-endian length + payload.
struct Peer {
    stream: TcpStream,
}

impl Peer {
    fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Self { stream }
    }

    fn local_addr(&self) -> String {
        self.stream.local_addr().expect("local addr").to_string()
    }

    fn send_raw(&mut self, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("fits");
        self.stream.write_all(&len.to_be_bytes()).expect("write");
        self.stream.write_all(payload).expect("write");
    }

    fn send(&mut self, value: &Value) {
        self.send_raw(value.to_string().as_bytes());
    }

    fn recv(&mut self) -> Value {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).expect("length prefix");
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut payload).expect("payload");
        serde_json::from_slice(&payload).expect("reply is JSON")
    }

    fn request(&mut self, value: &Value) -> Value {
        self.send(value);
        self.recv()
    }

    /// A ping round trip: proves the server has registered this client.
    fn ping(&mut self) {
        let pong = self.request(&json!({"type": "ping", "timestamp": "t"}));
        assert_eq!(pong["type"], "pong");
    }
}

/// `2024-01-01T12:00:00.000Z`
fn assert_timestamp(value: &Value) {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    let b = s.as_bytes();
    assert_eq!(b.len(), 24, "{s}");
    assert_eq!(
        (b[4], b[7], b[10], b[13], b[16], b[19], b[23]),
        (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{s}"
    );
    assert!(s.starts_with("20"), "{s}");
}

#[test]
fn ping_answers_pong_with_both_timestamps_and_client_id() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut peer = Peer::connect(&server.addr);
        let sent = "2024-01-01T12:00:00.000Z";
        let pong = peer.request(&json!({"type": "ping", "timestamp": sent, "client_info": "test"}));
        assert_eq!(pong["type"], "pong");
        assert_eq!(pong["ping_timestamp"], sent);
        assert_timestamp(&pong["pong_timestamp"]);
        assert_eq!(pong["client_id"], peer.local_addr());
    }
}

/// TLS on every runtime: a ping from a hand-written client, and
/// `storm client json --tls-ca` on the same runtime running its demo.
#[test]
fn ping_and_the_client_demo_over_tls() {
    let pki = storm_tests::suite::pki::Pki::new();
    let files = pki.pem_files();
    for runtime in RUNTIMES {
        let server = start_with(runtime, &files.tls_args());
        let options = storm_host::options::ClientOptions::default().with_tls(pki.client());
        let (tx, rx) = mpsc::channel();
        let client = storm_std::TcpClient::connect(
            &server.addr,
            options,
            storm_proto::framing::Framing::LengthPrefix,
            Inbox(tx),
        )
        .unwrap_or_else(|e| panic!("{runtime}: {e}"));
        let ping = json!({"type": "ping", "timestamp": "t"}).to_string();
        client.send(storm_proto::Message::from(ping)).unwrap();
        let pong: Value = serde_json::from_slice(rx.recv_timeout(WAIT).unwrap().as_bytes())
            .expect("reply is JSON");
        assert_eq!(pong["type"], "pong", "{runtime}");
        assert_eq!(pong["ping_timestamp"], "t", "{runtime}");
        client.close();
        let ca = files.ca.to_str().expect("a UTF-8 path");
        let out = run_client(&server, &["--runtime", runtime, "--tls-ca", ca], "");
        assert!(out.contains("demo done"), "{runtime}: {out}");
        assert_eq!(types(&replies(&out))[0], "pong", "{runtime}: {out}");
    }
}

#[test]
fn echo_returns_the_content() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut peer = Peer::connect(&server.addr);
        let reply = peer
            .request(&json!({"type": "echo", "content": "Hello TCP Server! ✓", "timestamp": "x"}));
        assert_eq!(reply["type"], "echo_response");
        assert_eq!(reply["content"], "Hello TCP Server! ✓");
        assert_eq!(reply["echoed_by"], "TCP Server");
        assert_timestamp(&reply["timestamp"]);
    }
}

#[test]
fn broadcast_reaches_the_other_clients_only() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut a = Peer::connect(&server.addr);
        let mut b = Peer::connect(&server.addr);
        let mut c = Peer::connect(&server.addr);
        for peer in [&mut a, &mut b, &mut c] {
            peer.ping();
        }
        let sent = a.request(&json!({"type": "broadcast", "content": "to all", "timestamp": "x"}));
        assert_eq!(sent["type"], "broadcast_sent");
        assert_eq!(sent["recipients"], 2);
        assert_timestamp(&sent["timestamp"]);
        for peer in [&mut b, &mut c] {
            let got = peer.recv();
            assert_eq!(got["type"], "broadcast");
            assert_eq!(got["content"], "to all");
            assert_eq!(got["from_client"], a.local_addr());
            assert_timestamp(&got["timestamp"]);
        }
        // The sender does not get its own broadcast: its next message is a pong.
        a.ping();
    }
}

#[test]
fn stats_count_clients_and_messages() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut a = Peer::connect(&server.addr);
        let mut b = Peer::connect(&server.addr);
        a.ping();
        b.ping();
        let stats = a.request(&json!({"type": "get_stats", "timestamp": "x"}));
        assert_eq!(stats["type"], "server_stats");
        assert_eq!(stats["connected_clients"], 2);
        // Two pings and this request.
        assert_eq!(stats["total_messages"], 3);
        assert!(
            stats["uptime_seconds"].as_u64().is_some_and(|s| s < 60),
            "{stats}"
        );
        assert_timestamp(&stats["server_start_time"]);
        assert_timestamp(&stats["current_time"]);

        drop(b);
        // The server notices the disconnect on its own time: poll, bounded.
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = a.request(&json!({"type": "get_stats"}));
            if stats["connected_clients"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "still {stats}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn unknown_types_are_answered_with_the_original_message() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut peer = Peer::connect(&server.addr);
        for request in [
            json!({"type": "custom_type", "data": {"k": [1, 2]}}),
            json!({"no_type": true}),
            json!({"type": 7}),
        ] {
            let reply = peer.request(&request);
            assert_eq!(reply["type"], "response", "{request}");
            assert_eq!(reply["original_message"], request);
            assert_eq!(reply["from_server"], true);
            assert_timestamp(&reply["timestamp"]);
        }
    }
}

/// Documented behaviour: text that is not a JSON object is echoed back as
/// `{"type": "echo", "original_text", ...}`; bytes that are not UTF-8 get
/// `{"type": "error", ...}`; the connection stays open either way.
#[test]
fn malformed_json_gets_a_reply_and_the_connection_lives_on() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut peer = Peer::connect(&server.addr);

        peer.send_raw(b"{\"type\": \"ping\", oops");
        let reply = peer.recv();
        assert_eq!(reply["type"], "echo");
        assert_eq!(reply["original_text"], "{\"type\": \"ping\", oops");
        assert_eq!(reply["from_server"], true);

        peer.send_raw(b"plain text");
        assert_eq!(peer.recv()["original_text"], "plain text");

        peer.send_raw(b"42");
        assert_eq!(peer.recv()["original_text"], 42);

        peer.send_raw(&[0xff, 0xfe, b'{']);
        let reply = peer.recv();
        assert_eq!(reply["type"], "error");
        assert!(reply["error"].is_string());

        peer.send_raw(b"");
        assert_eq!(peer.recv()["type"], "echo");

        peer.ping();
        Peer::connect(&server.addr).ping();
    }
}

/// Documented behaviour: a declared length above the limit (1 MiB by
/// default) closes that connection before any payload is read; the server
/// serves everyone else.
#[test]
fn oversized_length_prefix_closes_only_that_connection() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut bystander = Peer::connect(&server.addr);
        bystander.ping();
        for declared in [u32::MAX, (1 << 20) + 1] {
            let mut peer = Peer::connect(&server.addr);
            peer.stream
                .write_all(&declared.to_be_bytes())
                .expect("write");
            peer.stream
                .write_all(b"{\"type\":\"ping\"}")
                .expect("write");
            let mut buf = [0u8; 64];
            match peer.stream.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => panic!("{declared}: got {n} bytes instead of a close"),
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ),
                    "{declared}: {e}"
                ),
            }
        }
        // A request near the limit is answered; one whose echo would
        // outgrow the limit gets an error reply instead.
        let mut big = Peer::connect(&server.addr);
        let content = "y".repeat((1 << 20) - 256);
        let reply = big.request(&json!({"type": "echo", "content": content}));
        assert_eq!(reply["content"].as_str().map(str::len), Some(content.len()));
        let content = "y".repeat((1 << 20) - 32);
        let request = json!({"type": "echo", "content": content});
        assert!(request.to_string().len() <= 1 << 20);
        let reply = big.request(&request);
        assert_eq!(reply["type"], "error", "{}", reply["error"]);
        big.ping();
        bystander.ping();
    }
}

/// Runs `storm client json` with `args` against `server`, feeding `stdin`;
/// returns its stdout once it exits (killed after the deadline).
fn run_client(server: &Server, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(["client", "json", "--addr", &server.addr])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client starts");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("stdin");
    drop(input);
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("storm client json {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = rx.recv_timeout(WAIT).expect("stdout");
    assert!(status.success(), "{args:?} failed: {status}\n{out}");
    out
}

/// The `<-` lines of the client's output, as JSON.
fn replies(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|line| line.strip_prefix("<- "))
        .map(|json| serde_json::from_str(json).expect("reply printed as JSON"))
        .collect()
}

fn types(replies: &[Value]) -> Vec<&str> {
    replies.iter().filter_map(|r| r["type"].as_str()).collect()
}

#[test]
fn client_demo_prints_every_reply() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let mut other = Peer::connect(&server.addr);
        other.ping();
        let out = run_client(&server, &["--runtime", runtime, "--mode", "demo"], "");
        let replies = replies(&out);
        assert_eq!(
            types(&replies),
            [
                "pong",
                "echo_response",
                "broadcast_sent",
                "server_stats",
                "response",
                "echo"
            ],
            "{out}"
        );
        assert_eq!(replies[1]["content"], "Hello TCP Server!");
        assert_eq!(replies[2]["recipients"], 1);
        assert_eq!(replies[3]["connected_clients"], 2);
        assert_eq!(replies[4]["original_message"]["type"], "custom_type");
        assert!(out.contains("demo done"), "{out}");
        // The other client got the demo's broadcast.
        let got = other.recv();
        assert_eq!(
            (got["type"].as_str(), got["content"].as_str()),
            (Some("broadcast"), Some("Hello all clients!"))
        );
    }
}

#[test]
fn client_interactive_runs_commands_from_stdin() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let script =
            "/ping\n/echo hi there\n/stats\n/custom my_type\nhello plain\n/bogus\n/exit\n/ping\n";
        let out = run_client(
            &server,
            &["--runtime", runtime, "--mode", "interactive"],
            script,
        );
        let replies = replies(&out);
        assert_eq!(
            types(&replies),
            ["pong", "echo_response", "server_stats", "response", "echo"],
            "{out}"
        );
        assert_eq!(replies[1]["content"], "hi there");
        assert_eq!(replies[3]["original_message"]["type"], "my_type");
        assert_eq!(replies[4]["original_text"], "hello plain");
    }
}

#[test]
fn client_perf_reports_rate_and_latency() {
    for runtime in RUNTIMES {
        let server = start(runtime);
        let out = run_client(
            &server,
            &[
                "--runtime",
                runtime,
                "--mode",
                "perf",
                "--count",
                "300",
                "--window",
                "4",
                "--duration",
                "20",
            ],
            "",
        );
        assert!(out.contains("perf: 300 round trips"), "{out}");
        assert!(out.contains("msgs/s"), "{out}");
        assert!(out.contains("p50 ") && out.contains("p99 "), "{out}");
        // The server saw every request.
        let stats = Peer::connect(&server.addr).request(&json!({"type": "get_stats"}));
        assert_eq!(stats["total_messages"], 301);
    }
}

#[test]
fn ctrl_c_closes_sessions_and_exits_zero() {
    for runtime in RUNTIMES {
        let mut server = start(runtime);
        let mut peer = Peer::connect(&server.addr);
        peer.ping();
        let status = Command::new("kill")
            .args(["-INT", &server.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        // The session is closed (end of stream), then the process exits 0.
        let mut buf = [0u8; 16];
        match peer.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{runtime}: {n} bytes instead of a close"),
            Err(e) => panic!("{runtime}: {e} instead of a close"),
        }
        let deadline = Instant::now() + WAIT;
        let exit = loop {
            if let Some(exit) = server.child.try_wait().expect("wait") {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "{runtime}: still running after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "{runtime}: {exit}");
    }
}
