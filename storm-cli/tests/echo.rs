//! `storm echo` as a real process on a loopback port, for every protocol.

mod common;
use common::Inbox;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use storm_host::options::{ClientOptions, WsOptions};
use storm_proto::Message;
use storm_proto::framing::Framing;
use storm_proto::ws::{CloseCode, Event};
use storm_std::ws;
use storm_tests::suite::raw::{RawWs, frame, opcode};

/// A running `storm echo`, killed on drop.
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

const RUNTIMES: [&str; 3] = ["tokio", "smol", "std"];

fn start(proto: &str, runtime: &str) -> Server {
    start_with(proto, runtime, &[])
}

fn start_with(proto: &str, runtime: &str, extra: &[&str]) -> Server {
    launch(
        Command::new(env!("CARGO_BIN_EXE_storm")),
        proto,
        runtime,
        extra,
    )
}

/// `storm echo` allowed at most `limit` open descriptors: a shell lowers
/// its limit (`ulimit -n`, soft and hard) and becomes the server.
fn start_with_descriptor_limit(limit: usize, proto: &str, runtime: &str) -> Server {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_storm"));
    launch(shell, proto, runtime, &[])
}

/// Runs `command` with `storm echo`'s arguments after it.
fn launch(mut command: Command, proto: &str, runtime: &str, extra: &[&str]) -> Server {
    let mut child = command
        .args([
            "echo",
            "--proto",
            proto,
            "--addr",
            "127.0.0.1:0",
            "--runtime",
            runtime,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("storm starts");
    // The first line says where it listens: "... listening on tcp://127.0.0.1:PORT".
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("banner");
    let addr = line
        .trim()
        .rsplit("://")
        .next()
        .expect("address in banner")
        .to_owned();
    Server { child, addr }
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

#[test]
fn line_echo() {
    for runtime in RUNTIMES {
        let server = start("line", runtime);
        let mut stream = connect(&server.addr);
        stream.write_all(b"hello\nwor").unwrap();
        stream.write_all(b"ld\n").unwrap();
        let mut reply = [0u8; 12];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"hello\nworld\n", "{runtime}");
    }
}

#[test]
fn raw_echo() {
    for runtime in RUNTIMES {
        let server = start("raw", runtime);
        let mut stream = connect(&server.addr);
        stream.write_all(b"any bytes at all").unwrap();
        let mut reply = [0u8; 16];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"any bytes at all", "{runtime}");
    }
}

/// Issue #16: a `storm echo` that may run on one CPU only (`taskset -c 0`)
/// serves on a current-thread runtime by default, as `--threads 1` asks:
/// as many threads as that one. BASE ran a multi-threaded runtime of one
/// worker there, a thread more (and a costlier wake-up per message).
#[cfg(target_os = "linux")]
#[test]
fn pinned_to_one_cpu_serves_on_a_current_thread_runtime() {
    let pinned = |extra: &[&str]| {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", "0", env!("CARGO_BIN_EXE_storm")]);
        launch(taskset, "raw", "tokio", extra)
    };
    let threads = |server: &Server| {
        let mut stream = connect(&server.addr);
        stream.write_all(b"ping").unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ping");
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
            .expect("the server's status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|count| count.trim().parse::<usize>().ok())
            .expect("a thread count")
    };
    let by_default = threads(&pinned(&[]));
    let current_thread = threads(&pinned(&["--threads", "1"]));
    assert_eq!(
        by_default, current_thread,
        "threads of a one-CPU storm echo"
    );
}

#[test]
fn length_prefixed_echo() {
    for runtime in RUNTIMES {
        length_prefixed_echo_on(runtime);
    }
}

fn length_prefixed_echo_on(runtime: &str) {
    let server = start("lp", runtime);
    let mut stream = connect(&server.addr);
    let mut request = Vec::new();
    for msg in [&b"one"[..], b"", &[7u8; 70_000]] {
        request.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        request.extend_from_slice(msg);
    }
    stream.write_all(&request).unwrap();
    let mut reply = vec![0u8; request.len()];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, request);
}

#[test]
fn websocket_echo_with_deflate() {
    for runtime in RUNTIMES {
        websocket_echo_with_deflate_on(runtime);
    }
}

fn websocket_echo_with_deflate_on(runtime: &str) {
    let server = start("ws", runtime);
    let options = ws::ConnectOptions::default().with_deflate(Default::default());
    let (mut socket, upgraded) = ws::connect(&format!("ws://{}/", server.addr), &options).unwrap();
    socket
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        upgraded.deflate.is_some(),
        "the echo server negotiates permessage-deflate"
    );
    socket.send_text("héllo").unwrap();
    assert!(matches!(socket.read().unwrap(), Event::Text(t) if t.as_str() == "héllo"));
    socket.send_binary(&[1, 2, 3]).unwrap();
    assert!(matches!(socket.read().unwrap(), Event::Binary(b) if b[..] == [1, 2, 3]));
    socket.close(CloseCode::NORMAL, "done").unwrap();
    assert!(matches!(socket.read().unwrap(), Event::Close(f) if f.code == CloseCode::NORMAL));
}

#[test]
fn echo_over_tls_from_pem_files() {
    let pki = storm_tests::suite::pki::Pki::new();
    let files = pki.pem_files();
    for runtime in RUNTIMES {
        for proto in ["lp", "ws"] {
            let server = start_with(proto, runtime, &files.tls_args());
            let options = ClientOptions::default().with_tls(pki.client());
            let (tx, rx) = mpsc::channel();
            let client = if proto == "ws" {
                let url = format!("wss://{}/", server.addr);
                storm_std::WsClient::connect(&url, options, WsOptions::default(), Inbox(tx))
            } else {
                storm_std::TcpClient::connect(
                    &server.addr,
                    options,
                    Framing::LengthPrefix,
                    Inbox(tx),
                )
            }
            .unwrap_or_else(|e| panic!("{runtime} {proto}: {e}"));
            client.send(Message::from("over tls")).unwrap();
            let echoed = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(echoed.as_bytes(), b"over tls", "{runtime} {proto}");
            client.close();
        }
    }
}

#[test]
fn ctrl_c_closes_sessions_and_exits_zero() {
    for runtime in RUNTIMES {
        let mut server = start("ws", runtime);
        let (mut socket, _) = ws::connect(
            &format!("ws://{}/", server.addr),
            &ws::ConnectOptions::default(),
        )
        .unwrap();
        socket
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket.send_text("before").unwrap();
        assert!(matches!(socket.read().unwrap(), Event::Text(t) if t.as_str() == "before"));
        let status = Command::new("kill")
            .args(["-INT", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // The session is closed properly: a close frame, not a reset.
        match socket.read().unwrap() {
            Event::Close(frame) => assert!(frame.code.is_sendable(), "{runtime}: {frame:?}"),
            other => panic!("{runtime}: expected a close frame, got {other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = server.child.try_wait().unwrap() {
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

/// The descriptor limit of the exhaustion tests: small, so that the flood
/// is quick in a debug build.
const DESCRIPTOR_LIMIT: usize = 128;

/// Out of descriptors, a server keeps serving the connections it has
/// accepted, accepts the rest as those end, and serves new ones once the
/// flood is over. Twice as many connections as the server may have
/// descriptors all ask to upgrade at once (the kernel completes them into
/// the listen backlog, faster than the server accepts), then each in turn
/// is read, echoes a message and closes; then a fresh client must upgrade
/// and echo.
fn serves_through_descriptor_exhaustion(runtime: &str) {
    let server = start_with_descriptor_limit(DESCRIPTOR_LIMIT, "ws", runtime);
    let addr = server.addr.parse().expect("address");
    let flood: Vec<TcpStream> = (0..2 * DESCRIPTOR_LIMIT)
        .map(|_| RawWs::request(addr))
        .collect();
    // A write error too is a connection the server dropped.
    let echoes = |ws: &mut RawWs| {
        let message = frame(opcode::TEXT, b"still here", true);
        ws.stream.write_all(&message).is_ok()
            && matches!(ws.next_event(), Some(Event::Text(t)) if t.as_str() == "still here")
    };
    // Each read waits at most storm-tests' WAIT (10 s), and panics after.
    let mut served = 0;
    for stream in flood {
        // A connection dropped for want of descriptors (std needs two per
        // session) ends, before or after its upgrade; it never hangs.
        if let Some(mut ws) = RawWs::upgraded(stream) {
            served += usize::from(echoes(&mut ws));
        }
    }
    eprintln!(
        "{runtime}: {served} of {} flood connections served",
        2 * DESCRIPTOR_LIMIT
    );
    assert!(
        served >= DESCRIPTOR_LIMIT / 2,
        "{runtime}: only {served} flood connections were served"
    );
    let mut fresh = RawWs::upgrade(addr);
    assert!(echoes(&mut fresh), "{runtime}: no echo after the flood");
}

#[test]
fn serves_through_descriptor_exhaustion_on_tokio() {
    serves_through_descriptor_exhaustion("tokio");
}

#[test]
fn serves_through_descriptor_exhaustion_on_smol() {
    serves_through_descriptor_exhaustion("smol");
}

#[test]
fn serves_through_descriptor_exhaustion_on_std() {
    serves_through_descriptor_exhaustion("std");
}

/// Connections opened and reset in rounds leave the server about as big as
/// it was, on every runtime: each round upgrades [`churn_round_size`]
/// WebSocket connections, holds them all open at once, then resets them
/// (`SO_LINGER` 0); once the server has let go of them (its threads and
/// descriptors back to their count before the round) its resident
/// anonymous memory is read. On std a closed connection used to leave
/// about 45 KiB behind (in this debug build): its reader thread's stack,
/// kept until the next accept joined the thread, and its 16 KiB read
/// buffer, freed into that thread's malloc arena. Now it leaves what the
/// allocator keeps of its heap for the next connections (about 7 KiB;
/// tokio and smol about 3 KiB), and a second round reuses that.
#[cfg(target_os = "linux")]
#[test]
fn connection_churn_leaves_little_behind() {
    use storm_services::sys::ProcessState;
    use storm_tests::suite::raw::RawWs;

    let n = churn_round_size();
    let kib = |count: u64| count * n as u64;
    for runtime in RUNTIMES {
        let server = start("ws", runtime);
        let addr = server.addr.parse().unwrap();
        let pid = server.child.id();
        let settle = |earlier: &ProcessState| {
            ProcessState::wait_settled(pid, earlier, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{runtime}: {e}"))
        };
        // One connection first, so that what a server starts once (its
        // Ctrl-C waiter, a runtime's threads) is running before anything
        // is counted.
        let idle = ProcessState::read(pid).unwrap();
        drop(RawWs::upgrade(addr));
        let before = settle(&ProcessState {
            threads: u64::MAX,
            ..idle
        });
        let mut after = Vec::new();
        for _ in 0..2 {
            let start = ProcessState::read(pid).unwrap();
            // All requests first, then all answers: the server upgrades
            // them side by side.
            let requests: Vec<_> = (0..n).map(|_| RawWs::request(addr)).collect();
            let clients: Vec<_> = requests
                .into_iter()
                .map(|stream| RawWs::upgraded(stream).expect("upgraded"))
                .collect();
            for client in clients {
                socket2::SockRef::from(&client.stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            after.push(settle(&start));
        }
        let left = after[0].rss_anon_kib.saturating_sub(before.rss_anon_kib);
        let grew = after[1].rss_anon_kib.saturating_sub(after[0].rss_anon_kib);
        let seen = format!(
            "{runtime}: RssAnon {} KiB before, {} and {} KiB after rounds of {n} connections",
            before.rss_anon_kib, after[0].rss_anon_kib, after[1].rss_anon_kib
        );
        assert!(
            left <= kib(16),
            "{seen}: a closed connection left over 16 KiB"
        );
        assert!(
            grew <= kib(4),
            "{seen}: the second round grew over 4 KiB per connection"
        );
    }
}

/// Connections per churn round: 500, or fewer if the open-file limit (which
/// the server inherits) is low: the server holds up to three descriptors
/// per connection while it upgrades it.
#[cfg(target_os = "linux")]
fn churn_round_size() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: usize = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(1024);
    ((soft.saturating_sub(64)) / 3).min(500)
}

/// The threads of process `pid` (Linux: its `/proc/PID/task` entries).
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(Iterator::count)
        .expect("/proc/PID/task")
}

/// `--threads N` (or `STORM_THREADS`) sets the tokio runtime's workers:
/// with 1 every connection runs on the main thread, with 3 three workers
/// serve; both echo.
#[test]
fn threads_sets_the_tokio_workers() {
    let mut counts = Vec::new();
    for threads in ["1", "3"] {
        let server = start_with("raw", "tokio", &["--threads", threads]);
        let mut stream = connect(&server.addr);
        stream.write_all(b"ping").unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ping", "--threads {threads}");
        counts.push(threads_of(server.child.id()));
    }
    assert_eq!(counts[1] - counts[0], 3, "threads: {counts:?}");
    // The environment says the same.
    let mut command = Command::new(env!("CARGO_BIN_EXE_storm"));
    command.env("STORM_THREADS", "1");
    let server = launch(command, "raw", "tokio", &[]);
    let _ = connect(&server.addr);
    assert_eq!(threads_of(server.child.id()), counts[0]);
}
