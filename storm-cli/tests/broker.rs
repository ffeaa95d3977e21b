//! The `storm` binary's broker over loopback: `storm broker` and
//! `storm client broker` as real processes, on every runtime and over
//! TLS. The library's tests (`BrokerServer`, `Consumer`, `Provider`) are
//! storm-services'. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use storm_proto::broker::{
    ErrorCode, ErrorPayload, Frame, FrameCodec, FrameType, HEADER_LEN, RequestId, Role,
};
use storm_services::broker::{BrokerOptions, BrokerServer, Consumer, ConsumerOptions};
use storm_services::sys::ProcessState;
use storm_tests::broker::{channel, fnv1a, noise, registered_raw};
use storm_tests::process::output_within;

/// The bound on every wait that should be short.
const WAIT: Duration = Duration::from_secs(10);

// ---- the real binary ------------------------------------------------------

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `storm ARGS` and returns it with its first stdout line.
fn spawn_storm(args: &[&str]) -> (Proc, String, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("storm starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        reader
    });
    let child = Proc(child);
    let line = rx.recv_timeout(WAIT).expect("first line in time");
    let reader = thread.join().expect("reader");
    (child, line, reader)
}

fn run_storm(args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storm starts");
    let output = output_within(child, WAIT, &format!("storm {args:?}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn storm_binary_broker_provider_and_request() {
    let (_broker, banner, _out) = spawn_storm(&["broker", "--addr", "127.0.0.1:0"]);
    assert!(
        banner.contains("listening on tcp://"),
        "broker banner: {banner}"
    );
    let addr = banner_addr(&banner);

    // No provider yet: a clear error and a failing exit status.
    let (ok, _, err) = run_storm(&[
        "client",
        "broker",
        "request",
        "--addr",
        &addr,
        "--channel",
        "42",
        "--data",
        "hi",
    ]);
    assert!(!ok && err.contains("no responders"), "stderr: {err}");

    let (_provider, line, _out) = spawn_storm(&[
        "client",
        "broker",
        "provider",
        "--addr",
        &addr,
        "--channel",
        "42",
        "--mode",
        "upper",
    ]);
    assert!(line.contains("registered"), "provider banner: {line}");

    let (ok, out, err) = run_storm(&[
        "client",
        "broker",
        "request",
        "--addr",
        &addr,
        "--channel",
        "42",
        "--data",
        "hello broker",
    ]);
    assert!(ok, "stderr: {err}");
    assert_eq!(out.trim(), "HELLO BROKER");

    let (ok, out, err) = run_storm(&[
        "client",
        "broker",
        "request",
        "--addr",
        &addr,
        "--channel",
        "42",
        "--size",
        "3000000",
    ]);
    assert!(ok, "stderr: {err}");
    assert!(out.contains("got 3000000 bytes"), "stdout: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_provider_process_killed_mid_request() {
    // The library's broker, so the test can read its counters.
    let server = BrokerServer::bind(BrokerOptions::default())
        .await
        .expect("bind");
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    tokio::spawn(server.serve());
    let (mut provider, line, mut out) = spawn_storm(&[
        "client",
        "broker",
        "provider",
        "--addr",
        &addr,
        "--channel",
        "77",
        "--delay",
        "60s",
    ]);
    assert!(line.contains("registered"), "provider banner: {line}");
    let consumer = Consumer::connect(&addr, channel(77), ConsumerOptions::default());
    let consumer = tokio::time::timeout(WAIT, consumer)
        .await
        .expect("consumer in time")
        .expect("consumer registers");
    let pending = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.request(Bytes::from_static(b"work"), WAIT).await }
    });
    // The provider prints a line per request it starts on.
    let got = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        line
    });
    let got = tokio::time::timeout(WAIT, got)
        .await
        .expect("provider saw the request in time")
        .expect("reader");
    assert!(got.contains("request"), "provider said: {got}");
    provider.0.kill().expect("kill");
    let result = tokio::time::timeout(WAIT, pending)
        .await
        .expect("answer in time")
        .expect("task");
    let code = result.as_ref().err().and_then(|e| e.code());
    assert_eq!(code, Some(ErrorCode::PROVIDER_GONE), "{result:?}");
    assert_eq!(handle.stats().provider_gone, 1);
}

#[test]
fn help_documents_the_broker_options() {
    let (ok, out, _) = run_storm(&["broker", "--help"]);
    assert!(ok);
    for option in [
        "--addr",
        "--request-timeout",
        "--max-timeout",
        "--max-frame",
        "--max-requests",
        "--max-queued-frames",
        "--max-queued-bytes",
        "--max-connections",
        "--stats-every",
    ] {
        assert!(out.contains(option), "{option} missing from:\n{out}");
    }
    let (ok, out, _) = run_storm(&["client", "broker", "provider", "--help"]);
    assert!(
        ok && out.contains("--mode") && out.contains("--delay") && out.contains("digest"),
        "{out}"
    );
    let (ok, out, _) = run_storm(&["client", "broker", "request", "--help"]);
    for option in [
        "--size",
        "--data",
        "--file",
        "--max-response",
        "[default: 67108864]",
        "--max-frame",
        "[default: 1048576]",
    ] {
        assert!(ok && out.contains(option), "{option} missing from:\n{out}");
    }
}

#[test]
fn storm_binary_broker_on_every_runtime_over_tls() {
    let pki = storm_tests::suite::pki::Pki::new();
    let dir = std::env::temp_dir().join(format!("storm-broker-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    let server = pki.server();
    std::fs::write(&cert, &server.cert_chain_pem).expect("cert");
    std::fs::write(&key, &server.key_pem).expect("key");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let (cert, key, ca) = (path(&cert), path(&key), path(&ca));
    // The clients on the broker's runtime.
    for runtime in ["tokio", "smol", "std"] {
        let clients = runtime;
        let (mut broker, banner, _out) = spawn_storm(&[
            "broker",
            "--addr",
            "127.0.0.1:0",
            "--runtime",
            runtime,
            "--tls",
            &cert,
            &key,
        ]);
        assert!(
            banner
                .to_lowercase()
                .contains(&format!("{runtime} runtime"))
                && banner.contains("listening on tls://"),
            "broker banner: {banner}"
        );
        let addr = banner_addr(&banner);
        let (_provider, line, _out) = spawn_storm(&[
            "client",
            "broker",
            "provider",
            "--addr",
            &addr,
            "--channel",
            "42",
            "--mode",
            "upper",
            "--tls-ca",
            &ca,
            "--runtime",
            clients,
        ]);
        assert!(
            line.contains("registered at tls://"),
            "provider banner: {line}"
        );
        let (ok, out, err) = run_storm(&[
            "client",
            "broker",
            "request",
            "--addr",
            &addr,
            "--channel",
            "42",
            "--data",
            "over tls",
            "--tls-ca",
            &ca,
            "--runtime",
            clients,
        ]);
        assert!(ok, "{runtime}: stderr: {err}");
        assert_eq!(out.trim(), "OVER TLS", "{runtime}");
        // Plain TCP to a TLS broker: no registration.
        let (ok, _, _) = run_storm(&[
            "client",
            "broker",
            "request",
            "--addr",
            &addr,
            "--channel",
            "42",
            "--data",
            "x",
        ]);
        assert!(!ok, "{runtime}: plain TCP must not get through");
        // Ctrl-C stops the broker gracefully.
        let pid = broker.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = broker.0.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{runtime}: no exit after Ctrl-C");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{runtime}: exit after Ctrl-C: {status}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_documents_runtime_and_tls() {
    let (ok, out, _) = run_storm(&["broker", "--help"]);
    assert!(ok);
    for text in ["--runtime", "tokio", "smol", "std", "--tls"] {
        assert!(out.contains(text), "{text} missing from:\n{out}");
    }
    for role in ["request", "provider"] {
        let (ok, out, _) = run_storm(&["client", "broker", role, "--help"]);
        assert!(ok && out.contains("--tls-ca"), "{role}: {out}");
        assert!(
            out.contains("--runtime") && out.contains("[default: tokio]"),
            "{role}: {out}"
        );
        for runtime in ["- tokio:", "- smol:", "- std:"] {
            assert!(
                out.contains(runtime),
                "{role}: {runtime} missing from:\n{out}"
            );
        }
    }
}

// ---- every refused frame is answered ---------------------------------------

/// The address a broker's banner (`… listening on tcp://ADDR`) names.
fn banner_addr(banner: &str) -> String {
    banner
        .trim()
        .rsplit("://")
        .next()
        .expect("address")
        .to_owned()
}

/// Starts `storm broker ARGS` on a free port; returns it and its address.
fn spawn_broker(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["broker", "--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (broker, banner, _out) = spawn_storm(&all);
    let addr = banner_addr(&banner);
    (broker, addr)
}

/// Writes `frame` whole to a raw connection.
fn write_frame(stream: &mut TcpStream, frame: &Frame) {
    let mut wire = BytesMut::new();
    FrameCodec::default()
        .encode(frame, &mut wire)
        .expect("fits");
    stream.write_all(&wire).expect("write");
}

/// The next frame from a raw connection (its read timeout bounds the
/// wait); `None` at end of stream.
fn read_frame(stream: &mut TcpStream) -> Option<Frame> {
    let mut header = [0u8; HEADER_LEN];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("no frame: {e}"),
    }
    let len = u32::from_be_bytes(header[20..].try_into().expect("4 bytes")) as usize;
    let mut wire = BytesMut::from(&header[..]);
    wire.resize(HEADER_LEN + len, 0);
    stream.read_exact(&mut wire[HEADER_LEN..]).expect("payload");
    FrameCodec::default().decode(&mut wire).expect("a frame")
}

/// The code and text of an `Error` frame.
fn error_of(frame: &Frame) -> (ErrorCode, String) {
    assert_eq!(frame.frame_type, FrameType::Error, "{frame:?}");
    let error = ErrorPayload::decode(&frame.payload);
    (
        error.code,
        String::from_utf8_lossy(&error.message).into_owned(),
    )
}

#[test]
fn storm_binary_answers_a_chunk_for_an_unknown_request_at_once() {
    for runtime in ["tokio", "smol", "std"] {
        let (_broker, addr) = spawn_broker(&["--runtime", runtime]);
        // A consumer whose own timeout is long: the answer must not wait
        // for it.
        let mut raw = registered_raw(&addr, channel(5), Role::Consumer, Duration::from_secs(60));
        let id = RequestId::random(&mut rand::rng());
        let started = Instant::now();
        write_frame(
            &mut raw,
            &Frame::new(FrameType::Chunk, id, Bytes::from_static(b"orphan")),
        );
        let answer = read_frame(&mut raw).expect("an answer, not a close");
        assert!(started.elapsed() < WAIT, "{runtime}");
        assert_eq!(answer.request_id, id, "{runtime}");
        let (code, text) = error_of(&answer);
        assert_eq!(code, ErrorCode::UNKNOWN_REQUEST, "{runtime}: {text}");
        assert!(text.contains(&id.to_string()), "{runtime}: {text}");
    }
}

#[test]
fn storm_binary_answers_a_frame_over_max_frame_before_any_close() {
    for runtime in ["tokio", "smol", "std"] {
        let (_broker, addr) = spawn_broker(&["--runtime", runtime, "--max-frame", "1024"]);
        // A registered consumer: the oversized frame is answered under its
        // id, its payload skipped, and the connection goes on in step.
        let mut raw = registered_raw(&addr, channel(6), Role::Consumer, Duration::ZERO);
        let (big, next) = (
            RequestId::random(&mut rand::rng()),
            RequestId::random(&mut rand::rng()),
        );
        let mut header = vec![1, FrameType::Chunk.to_u8(), 0, 0];
        header.extend_from_slice(&big.to_bytes());
        header.extend_from_slice(&4096u32.to_be_bytes());
        raw.write_all(&header).expect("header");
        raw.write_all(&[0x5a; 4096]).expect("payload");
        write_frame(&mut raw, &Frame::new(FrameType::End, next, Bytes::new()));
        let answer = read_frame(&mut raw).expect("an answer, not a close");
        assert_eq!(answer.request_id, big, "{runtime}");
        let (code, text) = error_of(&answer);
        assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{runtime}: {text}");
        assert!(
            text.contains("4096") && text.contains("1024"),
            "{runtime}: {text}"
        );
        let answer = read_frame(&mut raw).expect("the next frame was read in step");
        assert_eq!(answer.request_id, next, "{runtime}");
        assert_eq!(error_of(&answer).0, ErrorCode::UNKNOWN_REQUEST, "{runtime}");

        // Unregistered: refused with the reason, then closed.
        let mut raw = TcpStream::connect(&addr).expect("connect");
        raw.set_read_timeout(Some(WAIT)).expect("timeout");
        let id = RequestId::random(&mut rand::rng());
        let mut header = vec![1, FrameType::Start.to_u8(), 0, 0];
        header.extend_from_slice(&id.to_bytes());
        header.extend_from_slice(&2048u32.to_be_bytes());
        raw.write_all(&header).expect("header");
        let answer = read_frame(&mut raw).expect("an answer before the close");
        assert_eq!(answer.request_id, id, "{runtime}");
        let (code, text) = error_of(&answer);
        assert_eq!(code, ErrorCode::PROTOCOL, "{runtime}: {text}");
        assert!(text.contains("1024"), "{runtime}: {text}");
        assert!(read_frame(&mut raw).is_none(), "{runtime}: then the close");
    }
}

/// Peak resident memory of a running process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    Some(ProcessState::read(pid).ok()?.peak_rss_kib * 1024)
}

/// Size of the big request test: `STORM_BROKER_BIG_REQUEST` bytes, or
/// 256 MiB (any process that held it whole would be far over the limit;
/// 1 GiB takes about 25 s in a debug build, see BENCHMARKS.md).
fn big_request_size() -> usize {
    std::env::var("STORM_BROKER_BIG_REQUEST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 << 20)
}

/// The most memory each of client, broker and provider may hold.
const RSS_LIMIT: u64 = 64 << 20;

/// A big request through broker, client and provider, all on tokio, then
/// all on std threads: each holds a bounded amount of memory.
#[test]
fn storm_binary_streams_a_big_request_in_bounded_memory() {
    for runtime in ["tokio", "std"] {
        big_request_in_bounded_memory(runtime);
    }
}

fn big_request_in_bounded_memory(runtime: &str) {
    let size = big_request_size();
    let on = ["--runtime", runtime];
    let (broker, addr) = spawn_broker(&on);
    let (provider, _out) = storm_provider(&addr, "7", &[&on[..], &["--mode", "digest"]].concat());
    let size_arg = size.to_string();
    let mut client = Proc(
        Command::new(env!("CARGO_BIN_EXE_storm"))
            .args(request_args(
                &addr,
                "7",
                &["--size", &size_arg, "--timeout", "5m", "--runtime", runtime],
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("storm starts"),
    );
    // The client's peak, sampled until it exits (VmHWM only grows).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut client_peak = 0;
    let status = loop {
        if let Some(status) = client.0.try_wait().expect("wait") {
            break status;
        }
        client_peak = peak_rss(client.0.id()).unwrap_or(0).max(client_peak);
        assert!(Instant::now() < deadline, "the request took over 5 minutes");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    client
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("output");
    assert!(status.success(), "{runtime}: {status}: {out}");
    let broker_peak = peak_rss(broker.0.id()).expect("broker runs");
    let provider_peak = peak_rss(provider.0.id()).expect("provider runs");
    eprintln!(
        "{runtime}, {size} bytes: peak RSS client {client_peak}, broker {broker_peak}, provider {provider_peak}"
    );
    for (who, peak) in [
        ("client", client_peak),
        ("broker", broker_peak),
        ("provider", provider_peak),
    ] {
        assert!(
            peak > 0 && peak < RSS_LIMIT,
            "{runtime}: {who} peaked at {peak} bytes"
        );
    }
    // The provider counted every byte and agrees on the checksum.
    let sent = out
        .split("fnv1a ")
        .nth(1)
        .and_then(|rest| rest.get(..16))
        .expect("the client's checksum");
    assert!(
        out.contains(&format!("sent {size} bytes"))
            && out.contains(&format!("response: {size} bytes, fnv1a {sent}")),
        "{runtime}: {out}"
    );
}

/// `storm client broker provider` on `channel` of the broker at `addr`,
/// with `extra` options, registered; with its stdout, which must stay open
/// while it prints.
fn storm_provider(
    addr: &str,
    channel: &str,
    extra: &[&str],
) -> (Proc, BufReader<std::process::ChildStdout>) {
    let mut args = vec![
        "client",
        "broker",
        "provider",
        "--addr",
        addr,
        "--channel",
        channel,
    ];
    args.extend_from_slice(extra);
    let (provider, line, out) = spawn_storm(&args);
    assert!(line.contains("registered"), "provider banner: {line}");
    (provider, out)
}

/// The arguments of `storm client broker request` on `channel` of the
/// broker at `addr`, with `extra` options.
fn request_args<'a>(addr: &'a str, channel: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "client",
        "broker",
        "request",
        "--addr",
        addr,
        "--channel",
        channel,
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs `storm client broker request` on `channel` of the broker at
/// `addr`, with `extra` options.
fn storm_request(addr: &str, channel: &str, extra: &[&str]) -> (bool, String, String) {
    run_storm(&request_args(addr, channel, extra))
}

/// A file sent through the digest and echo providers, the clients on
/// each runtime (the broker on the same runtime).
#[test]
fn storm_binary_sends_a_file_and_every_mode_streams() {
    let path = std::env::temp_dir().join(format!("storm-broker-file-{}", std::process::id()));
    let data = noise(3 << 20);
    std::fs::write(&path, &data).expect("file");
    let file = path.to_str().expect("utf-8 path").to_owned();
    for runtime in ["tokio", "smol", "std"] {
        let on = ["--runtime", runtime];
        let (_broker, addr) = spawn_broker(&on);
        let _digest = storm_provider(&addr, "8", &[&on[..], &["--mode", "digest"]].concat());
        let (ok, out, err) = storm_request(&addr, "8", &[&on[..], &["--file", &file]].concat());
        assert!(ok, "{runtime}: stderr: {err}");
        let sum = fnv1a(&data);
        let expected = format!("response: {} bytes, fnv1a {sum:016x}", data.len());
        assert!(out.contains(&expected), "{runtime}: {out}");
        // Echo sends the file back as it reads it; a response over
        // --max-response is refused with the limit named.
        let _echo = storm_provider(&addr, "9", &on);
        let (ok, out, err) = storm_request(&addr, "9", &[&on[..], &["--file", &file]].concat());
        assert!(ok, "{runtime}: stderr: {err}");
        let expected = format!("got {} bytes (fnv1a {sum:016x})", data.len());
        assert!(out.contains(&expected), "{runtime}: {out}");
        let too_small = [&on[..], &["--file", &file, "--max-response", "1000000"]].concat();
        let (ok, _, err) = storm_request(&addr, "9", &too_small);
        assert!(!ok && err.contains("1000000"), "{runtime}: stderr: {err}");
        let missing = "/nonexistent/storm-broker-file";
        let (ok, _, err) = storm_request(&addr, "9", &[&on[..], &["--file", missing]].concat());
        assert!(!ok && err.contains(missing), "{runtime}: stderr: {err}");
    }
    let _ = std::fs::remove_file(&path);
}
