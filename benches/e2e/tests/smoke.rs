//! A short run of `loadgen` against every peer server, so that the harness
//! keeps working between benchmark runs (a fraction of a second each; this is
//! a test of the harness, not a benchmark).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A peer server on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(bin: &str) -> Self {
        let mut child = Command::new(bin)
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let addr = line
            .rsplit("://")
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        assert!(
            line.contains("listening on") && addr.starts_with("127.0.0.1:"),
            "{line}"
        );
        Self { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("loadgen: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout)
}

fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":");
    let rest = json
        .split(&key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {json}"));
    rest.split([',', '}']).next().unwrap_or_default()
}

/// The load shapes `run.sh` measures, each run for a fifth of a second:
/// (mode, clients, messages in flight, payload bytes).
const SHAPES: [(&str, &str, &str, &str); 5] = [
    // 100 x 16 x 32 B, pipelined (fewer clients: the harness, not the speed).
    ("throughput", "4", "16", "32"),
    // Deep pipeline: 100 in flight per connection.
    ("throughput", "4", "100", "32"),
    // 100-connection ping-pong: one in flight each, timed.
    ("latency", "100", "1", "32"),
    // One connection, one in flight.
    ("latency", "1", "1", "32"),
    // Large messages: 64 KiB.
    ("throughput", "2", "4", "65536"),
];

/// The number of threads of process `pid`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads in {status}"))
}

fn drive(bin: &str, proto: &str) {
    let server = Server::start(bin);
    let addr = server.addr.as_str();
    for (mode, clients, window, size) in SHAPES {
        let (ok, out) = loadgen(&[
            "--mode",
            mode,
            "--proto",
            proto,
            "--addr",
            addr,
            "--clients",
            clients,
            "--window",
            window,
            "--size",
            size,
            "--duration",
            "0.2",
            "--workers",
            "1",
        ]);
        let shape = format!("{bin} {mode} {clients} x {window} x {size} B");
        let json = out.lines().next().unwrap_or_default();
        assert!(ok, "{shape}: {out}");
        assert_eq!(field(json, "error"), "null", "{shape}: {json}");
        assert_eq!(field(json, "clients"), clients, "{shape}: {json}");
        assert_eq!(field(json, "window"), window, "{shape}: {json}");
        let msgs: u64 = field(json, "msgs").parse().unwrap_or(0);
        assert!(msgs > 0, "{shape}: {json}");
        let rate: f64 = field(json, "msgs_per_s").parse().unwrap_or(0.0);
        assert!(rate > 0.0, "{shape}: {json}");
        if mode == "latency" {
            let samples: u64 = field(json, "samples").parse().unwrap_or(0);
            assert!(samples > 0, "{shape}: {json}");
        }
    }
    // Every peer runs on one thread (a current-thread runtime), as storm is
    // compared with it on one pinned core.
    assert_eq!(threads(server.child.id()), 1, "{bin}");
    // Twenty connections opened, held a tenth of a second, let go.
    let few = [
        "--proto",
        proto,
        "--addr",
        addr,
        "--connections",
        "20",
        "--duration",
        "0.1",
    ];
    let (ok, out) = loadgen(&[&["--mode", "idle"], &few[..]].concat());
    assert!(ok, "{bin} idle: {out}");
    assert_eq!(field(&out, "connections"), "20", "{out}");
    let pid = server.child.id().to_string();
    let churn = ["--mode", "churn", "--rounds", "2", "--server-pid", &pid];
    let (ok, out) = loadgen(&[&churn[..], &few[..]].concat());
    assert!(ok, "{bin} churn: {out}");
    assert_eq!(field(&out, "error"), "null", "{out}");
    // Two rounds, each read with the connections open and after them.
    for list in ["open_anon_kib", "after_anon_kib"] {
        let key = format!("\"{list}\":[");
        let rest = out.split(&key).nth(1).unwrap_or_default();
        let values = rest.split(']').next().unwrap_or_default().split(',');
        assert_eq!(
            values.filter(|v| v.parse::<u64>().is_ok()).count(),
            2,
            "{out}"
        );
    }
}

#[test]
fn raw_tcp() {
    drive(env!("CARGO_BIN_EXE_peer_raw_tcp"), "raw");
}

#[test]
fn length_delimited() {
    drive(env!("CARGO_BIN_EXE_peer_lengthdelimited"), "lp");
}

#[test]
fn tungstenite() {
    drive(env!("CARGO_BIN_EXE_peer_tungstenite"), "ws");
}

#[test]
fn tokio_websockets() {
    drive(env!("CARGO_BIN_EXE_peer_tokio_websockets"), "ws");
}

#[test]
fn fastwebsockets() {
    drive(env!("CARGO_BIN_EXE_peer_fastwebsockets"), "ws");
}

#[test]
fn a_raw_echo_of_a_websocket_request_is_refused() {
    // A server that does not speak the protocol is reported, not counted.
    let server = Server::start(env!("CARGO_BIN_EXE_peer_raw_tcp"));
    let (ok, out) = loadgen(&[
        "--proto",
        "ws",
        "--addr",
        &server.addr,
        "--clients",
        "1",
        "--duration",
        "0.2",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("handshake"), "{out}");
}

#[test]
fn only_loopback_targets() {
    for addr in [
        "10.0.0.1:9",
        "192.168.1.1:9001",
        "0.0.0.0:9001",
        "8.8.8.8:53",
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--addr", addr, "--duration", "0.1"])
            .output()
            .unwrap_or_else(|e| panic!("loadgen: {e}"));
        assert_eq!(output.status.code(), Some(2), "{addr}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
        let peer = Command::new(env!("CARGO_BIN_EXE_peer_raw_tcp"))
            .arg(addr)
            .output()
            .unwrap_or_else(|e| panic!("peer: {e}"));
        assert_eq!(peer.status.code(), Some(2), "{addr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--duration", "121"])
        .output()
        .unwrap_or_else(|e| panic!("loadgen: {e}"));
    assert_eq!(output.status.code(), Some(2), "durations are capped");
}
