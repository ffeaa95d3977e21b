//! The broker over loopback: in-process (the library's server, consumer
//! and provider) and as real `storm` processes. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use storm_cli::broker::{
    BrokerError, BrokerHandle, BrokerOptions, BrokerServer, Consumer, ConsumerOptions, Provider,
    ProviderHandle, ProviderOptions, Request,
};
use storm_proto::broker::{
    ChannelId, ClientId, ErrorCode, ErrorPayload, Frame, FrameCodec, FrameConfig, FrameType,
    HEADER_LEN, Registration, RequestId, Role,
};
use tokio::sync::mpsc;

/// The bound on every wait that should be short.
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no result within {WAIT:?}"),
    }
}

fn channel(n: u128) -> ChannelId {
    ChannelId::from_bytes(n.to_be_bytes())
}

/// A broker on a free loopback port, serving in the background.
async fn broker(configure: impl FnOnce(&mut BrokerOptions)) -> (String, BrokerHandle) {
    let mut options = BrokerOptions::default();
    configure(&mut options);
    let server = BrokerServer::bind(options).await.expect("bind");
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    tokio::spawn(server.serve());
    (addr, handle)
}

async fn consumer(addr: &str, ch: ChannelId) -> Consumer {
    within(
        "consumer",
        Consumer::connect(addr, ch, ConsumerOptions::default()),
    )
    .await
    .expect("consumer registers")
}

/// A provider answering with `answer(request)`; returns its handle.
async fn provider<F, Fut>(addr: &str, ch: ChannelId, answer: F) -> ProviderHandle
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
{
    let provider = within(
        "provider",
        Provider::connect(addr, ch, ProviderOptions::default()),
    )
    .await
    .expect("provider registers");
    let handle = provider.handle();
    tokio::spawn(provider.serve(answer));
    handle
}

/// A provider that reports each request it gets and never answers.
async fn stuck_provider(addr: &str, ch: ChannelId) -> (ProviderHandle, mpsc::Receiver<RequestId>) {
    let (tx, rx) = mpsc::channel(16);
    let handle = provider(addr, ch, move |request| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(request.id).await;
            std::future::pending().await
        }
    })
    .await;
    (handle, rx)
}

fn code(result: &Result<Bytes, BrokerError>) -> Option<ErrorCode> {
    result.as_ref().err().and_then(BrokerError::code)
}

/// Deterministic pseudo-random bytes (xorshift), so a swapped or lost
/// chunk cannot go unnoticed.
fn noise(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip() {
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(1);
    provider(&addr, ch, |r: Request| async move {
        Ok(Bytes::from(r.payload.to_ascii_uppercase()))
    })
    .await;
    let consumer = consumer(&addr, ch).await;
    let reply = within(
        "request",
        consumer.request(Bytes::from_static(b"hello"), WAIT),
    )
    .await;
    assert_eq!(reply.expect("answered"), Bytes::from_static(b"HELLO"));
    let empty = within("empty request", consumer.request(Bytes::new(), WAIT)).await;
    assert_eq!(empty.expect("answered"), Bytes::new());
    assert_eq!(consumer.pending(), 0);
    let stats = handle.stats();
    assert_eq!(stats.requests_completed, 2);
    assert_eq!(handle.open_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_reach_the_consumer() {
    let (addr, _handle) = broker(|_| {}).await;
    let ch = channel(2);
    provider(&addr, ch, |_r: Request| async move {
        Err(ErrorPayload::new(ErrorCode(100), "no such thing"))
    })
    .await;
    let consumer = consumer(&addr, ch).await;
    let result = within("request", consumer.request(Bytes::from_static(b"?"), WAIT)).await;
    match result {
        Err(BrokerError::Failed { code, message }) => {
            assert_eq!(code, ErrorCode(100));
            assert_eq!(message, "no such thing");
        }
        other => panic!("expected the provider's error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_round_trip_is_streamed() {
    const SIZE: usize = 50 * 1024 * 1024;
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(3);
    provider(&addr, ch, |r: Request| async move { Ok(r.payload) }).await;
    let mut options = ConsumerOptions::default();
    options.server_timeout = Duration::from_secs(120);
    let consumer = within("consumer", Consumer::connect(&addr, ch, options))
        .await
        .expect("registers");
    let payload = noise(SIZE);
    let sum = fnv1a(&payload);
    let limit = Duration::from_secs(120);
    let started = Instant::now();
    let reply = tokio::time::timeout(limit, consumer.request(payload, limit))
        .await
        .expect("bounded")
        .expect("50 MiB answered");
    let took = started.elapsed();
    assert_eq!(reply.len(), SIZE);
    assert_eq!(fnv1a(&reply), sum, "checksum of the echoed payload");
    let stats = handle.stats();
    assert_eq!(stats.busy, 0, "flow control, not BUSY: {stats:?}");
    // 50 frames of 1 MiB each way, plus Start/End and the ack.
    assert!(stats.frames_in >= 100, "{stats:?}");
    eprintln!(
        "50 MiB round trip in {took:?} ({:.0} MiB/s each way)",
        50.0 / took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_written_in_pieces() {
    let (addr, _handle) = broker(|_| {}).await;
    let ch = channel(12);
    provider(&addr, ch, |r: Request| async move { Ok(r.payload) }).await;
    let consumer = consumer(&addr, ch).await;
    let mut stream = within("start", consumer.stream(WAIT))
        .await
        .expect("started");
    let data = noise(3 << 20);
    for piece in [
        data.slice(..10),
        data.slice(10..(2 << 20)),
        data.slice((2 << 20)..),
    ] {
        within("write", stream.write(piece)).await.expect("written");
    }
    let reply = within("finish", stream.finish()).await.expect("answered");
    assert_eq!(reply, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_responses() {
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(13);
    for _ in 0..2 {
        provider(&addr, ch, |r: Request| async move {
            Ok(Bytes::from(r.payload.to_ascii_uppercase()))
        })
        .await;
    }
    let consumer = consumer(&addr, ch).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u32 {
        let consumer = consumer.clone();
        tasks.spawn(async move {
            let text = format!("request number {i} {}", "x".repeat((i as usize) * 40_000));
            let reply = consumer.request(Bytes::from(text.clone()), WAIT).await;
            (text, reply)
        });
    }
    while let Some(done) = within("a request", tasks.join_next()).await {
        let (text, reply) = done.expect("task");
        assert_eq!(
            reply.expect("answered"),
            text.to_ascii_uppercase().as_bytes()
        );
    }
    assert_eq!(handle.stats().requests_completed, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_provider_fails_fast() {
    let (addr, handle) = broker(|_| {}).await;
    let consumer = consumer(&addr, channel(4)).await;
    let started = Instant::now();
    // A large request: the error arrives first and stops the upload.
    let result = within("request", consumer.request(noise(8 << 20), WAIT)).await;
    assert_eq!(code(&result), Some(ErrorCode::NO_RESPONDERS), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(handle.stats().no_responders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_killed_mid_request_fails_the_request() {
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(5);
    let (provider, mut got) = stuck_provider(&addr, ch).await;
    let consumer = consumer(&addr, ch).await;
    let pending = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.request(Bytes::from_static(b"work"), WAIT).await }
    });
    within("provider got the request", got.recv())
        .await
        .expect("request");
    provider.abort();
    let result = within("answer", pending).await.expect("task");
    assert_eq!(code(&result), Some(ErrorCode::PROVIDER_GONE), "{result:?}");
    assert_eq!(handle.stats().provider_gone, 1);
    // The channel has no provider now: the next request fails fast.
    let next = within("next", consumer.request(Bytes::from_static(b"x"), WAIT)).await;
    assert_eq!(code(&next), Some(ErrorCode::NO_RESPONDERS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_at_the_consumer() {
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(6);
    let (_provider, _got) = stuck_provider(&addr, ch).await;
    let consumer = consumer(&addr, ch).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = within(
        "request",
        consumer.request(Bytes::from_static(b"slow"), timeout),
    )
    .await;
    let took = started.elapsed();
    assert!(matches!(result, Err(BrokerError::Timeout)), "{result:?}");
    assert!(took >= timeout && took < timeout * 10, "{took:?}");
    assert_eq!(consumer.pending(), 0);
    assert!(handle.stats().requests_started >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_at_the_broker() {
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(7);
    let (_provider, _got) = stuck_provider(&addr, ch).await;
    let mut options = ConsumerOptions::default();
    options.server_timeout = Duration::from_millis(200);
    let consumer = within("consumer", Consumer::connect(&addr, ch, options))
        .await
        .expect("registers");
    let started = Instant::now();
    let result = within("request", consumer.request(Bytes::from_static(b"x"), WAIT)).await;
    assert_eq!(code(&result), Some(ErrorCode::TIMEOUT), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(handle.stats().timed_out, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_request_cancels_it_at_the_provider() {
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(8);
    let (_provider, mut got) = stuck_provider(&addr, ch).await;
    let consumer = consumer(&addr, ch).await;
    let request = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.request(Bytes::from_static(b"x"), WAIT).await }
    });
    within("provider got it", got.recv())
        .await
        .expect("request");
    request.abort();
    let _ = request.await;
    assert_eq!(consumer.pending(), 0);
    // The cancel travels to the broker; the next request on the same
    // consumer still works end to end (answered by a second provider,
    // round-robin), and the broker counted the cancellation.
    provider(&addr, ch, |r: Request| async move { Ok(r.payload) }).await;
    let reply = within("next", consumer.request(Bytes::from_static(b"ok"), WAIT)).await;
    assert_eq!(reply.expect("answered"), Bytes::from_static(b"ok"));
    assert_eq!(handle.stats().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_share_the_load_round_robin() {
    let (addr, _handle) = broker(|_| {}).await;
    let ch = channel(9);
    provider(&addr, ch, |_r: Request| async {
        Ok(Bytes::from_static(b"a"))
    })
    .await;
    provider(&addr, ch, |_r: Request| async {
        Ok(Bytes::from_static(b"b"))
    })
    .await;
    let consumer = consumer(&addr, ch).await;
    let mut answers = Vec::new();
    for _ in 0..10 {
        let reply = within("request", consumer.request(Bytes::from_static(b"?"), WAIT)).await;
        answers.push(reply.expect("answered"));
    }
    let a = answers.iter().filter(|r| &r[..] == b"a").count();
    assert_eq!((a, answers.len() - a), (5, 5), "{answers:?}");
    assert!(answers.windows(2).all(|w| w[0] != w[1]), "alternates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_at_its_request_limit_answers_busy() {
    let (addr, handle) = broker(|o| o.router.max_requests = 1).await;
    let ch = channel(10);
    let (_provider, mut got) = stuck_provider(&addr, ch).await;
    let consumer = consumer(&addr, ch).await;
    let first = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.request(Bytes::from_static(b"1"), WAIT).await }
    });
    within("first reached the provider", got.recv())
        .await
        .expect("request");
    let started = Instant::now();
    let second = within("second", consumer.request(Bytes::from_static(b"2"), WAIT)).await;
    assert_eq!(code(&second), Some(ErrorCode::BUSY), "{second:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(handle.stats().busy, 1);
    first.abort();
}

/// A provider that registers and then never reads: its queue at the
/// broker fills up.
fn deaf_provider(addr: &str, ch: ChannelId) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let registration = Registration {
        role: Role::Provider,
        client_id: ClientId::from_bytes([1; 16]),
        channel_id: ch,
        timeout: Duration::ZERO,
    };
    let id = RequestId::from_bytes([2; 16]);
    let mut wire = BytesMut::new();
    FrameCodec::default()
        .encode(
            &Frame::new(FrameType::Start, id, registration.encode()),
            &mut wire,
        )
        .expect("fits");
    stream.write_all(&wire).expect("register");
    let mut ack = [0u8; HEADER_LEN];
    stream.read_exact(&mut ack).expect("acknowledged");
    assert_eq!(ack[1], FrameType::Response.to_u8());
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_provider_queue_answers_busy() {
    let (addr, handle) = broker(|o| {
        o.router.max_queued_bytes = 1 << 20;
        o.router.max_queued_frames = 16;
        o.frame = {
            let mut f = FrameConfig::default();
            f.max_payload = 64 * 1024;
            f
        };
        o.flow_wait = Duration::from_millis(300);
    })
    .await;
    let ch = channel(11);
    let _deaf = deaf_provider(&addr, ch);
    let mut options = ConsumerOptions::default();
    options.frame.max_payload = 64 * 1024;
    options.server_timeout = Duration::from_secs(60);
    let consumer = within("consumer", Consumer::connect(&addr, ch, options))
        .await
        .expect("registers");
    // More than the kernel's socket buffers and the queue together: the
    // stream stalls, waits `flow_wait`, and the router gives up on it.
    let started = Instant::now();
    let big = within("big request", consumer.request(noise(64 << 20), WAIT)).await;
    assert_eq!(code(&big), Some(ErrorCode::BUSY), "{big:?}");
    assert!(started.elapsed() < WAIT, "failed before its deadline");
    let stats = handle.stats();
    assert_eq!(stats.busy, 1, "{stats:?}");
    // The error stopped the upload: whole, it is 1026 frames (plus two
    // registrations); what socket buffers held is all that came after.
    assert!(stats.frames_in < 1026, "{stats:?}");
    assert_eq!(consumer.pending(), 0);
}

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
    let (tx, rx) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(WAIT) else {
        let _ = Command::new("kill").arg(id.to_string()).status();
        panic!("storm {args:?} did not finish within {WAIT:?}");
    };
    let output = output.expect("output");
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
    let addr = banner
        .trim()
        .rsplit("://")
        .next()
        .expect("address")
        .to_owned();

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
    let (addr, handle) = broker(|_| {}).await;
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
    let consumer = consumer(&addr, channel(77)).await;
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
    let got = within("provider saw the request", got)
        .await
        .expect("reader");
    assert!(got.contains("request"), "provider said: {got}");
    provider.0.kill().expect("kill");
    let result = within("answer", pending).await.expect("task");
    assert_eq!(code(&result), Some(ErrorCode::PROVIDER_GONE), "{result:?}");
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
        ok && out.contains("--mode") && out.contains("--delay"),
        "{out}"
    );
    let (ok, out, _) = run_storm(&["client", "broker", "request", "--help"]);
    assert!(
        ok && out.contains("--size") && out.contains("--data"),
        "{out}"
    );
}
