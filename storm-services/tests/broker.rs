//! The broker library over loopback: `BrokerServer` on every runtime
//! (tokio, smol, std threads), `Consumer` and `Provider` on tokio, on
//! smol and on std threads (`blocking::Consumer`, `blocking::Provider`),
//! plain and over TLS; a hand-written client for what no well-behaved one does.
//! The `storm` binary's broker tests are storm-cli's. Every wait is
//! bounded.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use storm_host::options::{ClientOptions, TlsClientOptions};
use storm_proto::broker::{
    ChannelId, ErrorCode, ErrorPayload, Frame, FrameCodec, FrameConfig, FrameType, RequestId, Role,
    RouterStats,
};
use storm_services::broker::{
    BrokerError, BrokerHandle, BrokerOptions, BrokerServer, Consumer, ConsumerOptions, Provider,
    ProviderHandle, ProviderOptions, Request, Responder, StreamedRequest, blocking,
};
use storm_tests::broker::{channel, fnv1a, noise, registered_raw};
use tokio::sync::mpsc;

/// The bound on every wait that should be short.
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no result within {WAIT:?}"),
    }
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

// ---- the blocking clients (storm-std) ----------------------------------------

/// A std broker for the blocking clients' tests, served on a thread.
fn std_broker() -> (String, Running) {
    let mut options = BrokerOptions::default();
    options.frame = frame_of(64 * 1024);
    let server = blocking::BrokerServer::bind(options).expect("bind on std");
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.serve().expect("serves"));
    (addr, Running::Std(handle, Some(thread)))
}

fn blocking_consumer(addr: &str, ch: ChannelId) -> blocking::Consumer {
    let mut options = ConsumerOptions::default();
    options.frame = frame_of(64 * 1024);
    blocking::Consumer::connect(addr, ch, options).expect("consumer registers")
}

fn blocking_provider(addr: &str, ch: ChannelId) -> blocking::Provider {
    let mut options = ProviderOptions::default();
    options.frame = frame_of(64 * 1024);
    blocking::Provider::connect(addr, ch, options).expect("provider registers")
}

/// On std, a request written in pieces to a streaming provider that
/// answers piece by piece as it reads (its `Responder`), and ends with a
/// last part of its own; closed through its handle, the provider's
/// serving ends with `Ok`.
#[test]
fn on_std_a_streamed_request_is_answered_as_a_stream() {
    let (addr, broker) = std_broker();
    let ch = channel(31);
    let provider = blocking_provider(&addr, ch);
    let handle = provider.handle();
    let serving = std::thread::spawn(move || {
        provider.serve_streamed(|request: blocking::StreamedRequest, mut responder| {
            for piece in request.body {
                responder
                    .write(piece)
                    .map_err(|e| ErrorPayload::new(ErrorCode::PROVIDER_GONE, e.to_string()))?;
            }
            Ok(Bytes::from_static(b"<end>"))
        })
    });
    let consumer = blocking_consumer(&addr, ch);
    let data = noise(1 << 20);
    let mut stream = consumer.stream(WAIT).expect("started");
    for piece in [
        data.slice(..10),
        data.slice(10..(700 << 10)),
        data.slice((700 << 10)..),
    ] {
        stream.write(piece).expect("written");
    }
    let reply = stream.finish().expect("answered");
    let mut expected = BytesMut::from(&data[..]);
    expected.extend_from_slice(b"<end>");
    assert_eq!(reply, expected.freeze());
    assert_eq!(consumer.pending(), 0);
    let stats = broker.stats();
    assert!(stats.frames_in >= 2 * 16, "in frames: {stats:?}");
    // Closed from another thread, the provider stops serving: `Ok`.
    handle.close();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(serving.join()));
    let served = done
        .recv_timeout(WAIT)
        .expect("serving ends")
        .expect("thread");
    assert!(served.is_ok(), "{served:?}");
}

/// On std, the broker's errors and the provider's own reach the consumer
/// as on every runtime; a closed consumer fails what it is asked.
#[test]
fn on_std_errors_reach_the_consumer() {
    let (addr, _broker) = std_broker();
    let consumer = blocking_consumer(&addr, channel(32));
    let result = consumer.request(Bytes::from_static(b"anyone?"), WAIT);
    assert_eq!(code(&result), Some(ErrorCode::NO_RESPONDERS), "{result:?}");
    let provider = blocking_provider(&addr, channel(32));
    std::thread::spawn(move || {
        provider.serve(|_request| Err(ErrorPayload::new(ErrorCode(150), "not today")))
    });
    match consumer.request(Bytes::from_static(b"please"), WAIT) {
        Err(BrokerError::Failed { code, message }) => {
            assert_eq!((code, message.as_str()), (ErrorCode(150), "not today"));
        }
        other => panic!("expected the provider's error: {other:?}"),
    }
    consumer.close();
    let result = consumer.request(Bytes::from_static(b"closed"), WAIT);
    assert!(
        matches!(result, Err(BrokerError::Disconnected(_))),
        "{result:?}"
    );
    // Nothing listens here any more: connecting fails.
    drop(_broker);
    let refused = blocking::Consumer::connect(&addr, channel(32), ConsumerOptions::default());
    assert!(
        matches!(refused, Err(BrokerError::Connect(_))),
        "{refused:?}"
    );
}

/// On std, a consumer's timeout: the request fails in time, the broker is
/// told (and cancels it), and the blocking handler, which cannot be
/// stopped, is told of the cancellation; its late answer is dropped, and
/// the provider goes on serving.
#[test]
fn on_std_a_timed_out_request_tells_the_handler_and_drops_its_answer() {
    let (addr, broker) = std_broker();
    let ch = channel(33);
    let provider = blocking_provider(&addr, ch);
    let (told_tx, told) = std::sync::mpsc::channel();
    let told_tx = std::sync::Mutex::new(told_tx);
    std::thread::spawn(move || {
        provider.serve(move |request| {
            if request.payload == "slow" {
                let cancelled = request.wait_cancelled(WAIT);
                let _ = told_tx.lock().expect("lock").send(cancelled);
                return Ok(Bytes::from_static(b"late"));
            }
            Ok(request.payload)
        })
    });
    let consumer = blocking_consumer(&addr, ch);
    let timeout = Duration::from_millis(300);
    let begun = Instant::now();
    let result = consumer.request(Bytes::from_static(b"slow"), timeout);
    let took = begun.elapsed();
    assert!(matches!(result, Err(BrokerError::Timeout)), "{result:?}");
    assert!(took >= timeout && took < timeout * 10, "{took:?}");
    assert_eq!(consumer.pending(), 0);
    let cancelled = told.recv_timeout(WAIT).expect("the handler returned");
    assert!(cancelled, "the handler was told of the cancellation");
    let reply = consumer.request(Bytes::from_static(b"next"), WAIT);
    assert_eq!(reply.expect("answered"), &b"next"[..]);
    let stats = broker.stats();
    assert_eq!(
        (
            stats.cancelled,
            stats.late_responses,
            stats.unknown_requests
        ),
        (1, 0, 0),
        "the late answer was dropped at the provider: {stats:?}"
    );
}

/// On smol, a consumer's timeout and a provider's cancelled handler: the
/// consumer's timer (smol's) fails the request in time, the broker is
/// told, and the provider's handler task (spawned on smol) is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_smol_a_timed_out_request_stops_the_providers_handler() {
    /// Says on its channel when it is dropped: the handler stopped.
    struct Stopped(Option<std::sync::mpsc::Sender<()>>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    type Smol = storm_smol::Smol;
    let (addr, broker) = Running::start("smol", |_| {}).await;
    let ch = channel(9);
    let provider = within(
        "provider",
        Provider::connect_on::<Smol>(&addr, ch, ProviderOptions::default()),
    )
    .await
    .expect("provider registers");
    let (started, mut got) = mpsc::channel(1);
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    let stopped_tx = std::sync::Mutex::new(Some(stopped_tx));
    smol::spawn(provider.serve(move |_request: Request| {
        let guard = Stopped(stopped_tx.lock().expect("lock").take());
        let started = started.clone();
        async move {
            let _guard = guard;
            let _ = started.send(()).await;
            std::future::pending().await
        }
    }))
    .detach();
    let consumer = within(
        "consumer",
        Consumer::connect_on::<Smol>(&addr, ch, ConsumerOptions::default()),
    )
    .await
    .expect("consumer registers");
    let timeout = Duration::from_millis(300);
    let begun = Instant::now();
    let result = within(
        "request",
        consumer.request(Bytes::from_static(b"slow"), timeout),
    )
    .await;
    let took = begun.elapsed();
    assert!(matches!(result, Err(BrokerError::Timeout)), "{result:?}");
    assert!(took >= timeout && took < timeout * 10, "{took:?}");
    assert_eq!(consumer.pending(), 0);
    within("the handler started", got.recv())
        .await
        .expect("started");
    let waited = tokio::task::spawn_blocking(move || stopped.recv_timeout(WAIT));
    within("the handler stopped", waited)
        .await
        .expect("joined")
        .expect("the provider's handler was stopped");
    assert_eq!(broker.stats().cancelled, 1, "{:?}", broker.stats());
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
    registered_raw(addr, ch, Role::Provider, Duration::ZERO)
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

// ---- every runtime, and TLS -------------------------------------------------

/// A broker serving on one of the three runtimes (the clients run on the
/// runtime each scenario names; the test's own waiting is tokio's).
enum Running {
    Tokio(BrokerHandle),
    Smol(
        BrokerHandle<storm_smol::Smol>,
        Option<std::thread::JoinHandle<()>>,
    ),
    Std(blocking::BrokerHandle, Option<std::thread::JoinHandle<()>>),
}

impl Running {
    /// Binds a broker on `runtime` (`"tokio"`, `"smol"` or `"std"`) on a
    /// free loopback port and serves it in the background.
    async fn start(runtime: &str, configure: impl FnOnce(&mut BrokerOptions)) -> (String, Self) {
        let mut options = BrokerOptions::default();
        configure(&mut options);
        match runtime {
            "tokio" => {
                let (addr, handle) = broker(|o| *o = options).await;
                (addr, Self::Tokio(handle))
            }
            "smol" => {
                let server = smol::block_on(BrokerServer::<storm_smol::Smol>::bind_on(options))
                    .expect("bind on smol");
                let addr = server.local_addr().to_string();
                let handle = server.handle();
                let thread = std::thread::spawn(move || {
                    smol::block_on(server.serve()).expect("serves");
                });
                (addr, Self::Smol(handle, Some(thread)))
            }
            "std" => {
                let server = blocking::BrokerServer::bind(options).expect("bind on std");
                let addr = server.local_addr().to_string();
                let handle = server.handle();
                let thread = std::thread::spawn(move || server.serve().expect("serves"));
                (addr, Self::Std(handle, Some(thread)))
            }
            other => panic!("no runtime {other}"),
        }
    }

    fn stats(&self) -> RouterStats {
        match self {
            Self::Tokio(h) => h.stats(),
            Self::Smol(h, _) => h.stats(),
            Self::Std(h, _) => h.stats(),
        }
    }

    fn held_streams(&self) -> usize {
        match self {
            Self::Tokio(h) => h.held_streams(),
            Self::Smol(h, _) => h.held_streams(),
            Self::Std(h, _) => h.held_streams(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let stop = Duration::from_secs(1);
        let thread = match self {
            Self::Tokio(_) => None,
            Self::Smol(h, thread) => {
                smol::block_on(h.shutdown(stop));
                thread.take()
            }
            Self::Std(h, thread) => {
                h.shutdown(stop);
                thread.take()
            }
        };
        if let Some(thread) = thread {
            let joined = thread.join();
            if !std::thread::panicking() {
                joined.expect("the broker thread ends cleanly");
            }
        }
    }
}

/// The broker's main scenario against a broker at `addr`, with consumers
/// and providers on runtime `R`: a round trip, a multi-chunk streamed
/// request and response of a few MiB, and a provider that leaves
/// mid-request (`PROVIDER_GONE`).
async fn main_scenario<R: storm_async::Runtime>(
    addr: &str,
    broker: &Running,
    client: ClientOptions,
    label: &str,
) {
    let (upper, big, gone) = (channel(101), channel(102), channel(103));
    let connect_consumer = |ch| {
        let mut options = ConsumerOptions::default();
        options.client = client.clone();
        options.frame = frame_of(256 * 1024);
        Consumer::connect_on::<R>(addr, ch, options)
    };
    let connect_provider = |ch| {
        let mut options = ProviderOptions::default();
        options.client = client.clone();
        options.frame = frame_of(256 * 1024);
        Provider::connect_on::<R>(addr, ch, options)
    };
    let provider = within("provider", connect_provider(upper))
        .await
        .expect("provider registers");
    serve_on::<R>(
        provider.serve(|r: Request| async move { Ok(Bytes::from(r.payload.to_ascii_uppercase())) }),
    );
    let echo = within("provider", connect_provider(big))
        .await
        .expect("provider registers");
    serve_on::<R>(echo.serve(|r: Request| async move { Ok(r.payload) }));
    let stuck = within("provider", connect_provider(gone))
        .await
        .expect("provider registers");
    let stuck_handle = stuck.handle();
    let (seen, mut got) = mpsc::channel(4);
    serve_on::<R>(stuck.serve(move |r: Request| {
        let seen = seen.clone();
        async move {
            let _ = seen.send(r.id).await;
            std::future::pending().await
        }
    }));

    let consumer = within("consumer", connect_consumer(upper))
        .await
        .expect("consumer registers");
    let reply = within(
        "request",
        consumer.request(Bytes::from_static(b"hello"), WAIT),
    )
    .await;
    assert_eq!(reply.expect("answered"), &b"HELLO"[..], "{label}");

    // 4 MiB in frames of 256 KiB, both ways.
    let consumer = within("consumer", connect_consumer(big))
        .await
        .expect("consumer registers");
    let payload = noise(4 << 20);
    let reply = within("big request", consumer.request(payload.clone(), WAIT))
        .await
        .expect("4 MiB answered");
    assert_eq!(reply.len(), payload.len(), "{label}");
    assert_eq!(fnv1a(&reply), fnv1a(&payload), "{label}");

    let consumer = within("consumer", connect_consumer(gone))
        .await
        .expect("consumer registers");
    let pending = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.request(Bytes::from_static(b"work"), WAIT).await }
    });
    within("provider got the request", got.recv())
        .await
        .expect("request");
    stuck_handle.abort();
    let result = within("answer", pending).await.expect("task");
    assert_eq!(
        code(&result),
        Some(ErrorCode::PROVIDER_GONE),
        "{label}: {result:?}"
    );

    let stats = broker.stats();
    assert_eq!(stats.requests_completed, 2, "{label}: {stats:?}");
    assert_eq!(stats.provider_gone, 1, "{label}: {stats:?}");
    assert!(
        stats.frames_in >= 2 * 16,
        "{label}: streamed in frames: {stats:?}"
    );
    assert_eq!(stats.busy, 0, "{label}: {stats:?}");
}

/// Runs a provider's `serving` as a task of runtime `R`.
fn serve_on<R: storm_async::Runtime>(
    serving: impl Future<Output = Result<(), BrokerError>> + Send + 'static,
) {
    R::spawn(async move {
        let _ = serving.await;
    });
}

fn frame_of(max_payload: usize) -> FrameConfig {
    let mut frame = FrameConfig::default();
    frame.max_payload = max_payload;
    frame
}

/// The main scenario of [`main_scenario`] with the blocking clients
/// (storm-std): providers serving on threads of their own with blocking
/// handlers, consumers blocking the test's thread.
fn main_scenario_blocking(addr: &str, broker: &Running, client: &ClientOptions, label: &str) {
    let (upper, big, gone) = (channel(101), channel(102), channel(103));
    let consumer = |ch| {
        let mut options = ConsumerOptions::default();
        options.client = client.clone();
        options.frame = frame_of(256 * 1024);
        blocking::Consumer::connect(addr, ch, options).expect("consumer registers")
    };
    let provider = |ch| {
        let mut options = ProviderOptions::default();
        options.client = client.clone();
        options.frame = frame_of(256 * 1024);
        blocking::Provider::connect(addr, ch, options).expect("provider registers")
    };
    let serve = |provider: blocking::Provider,
                 answer: fn(blocking::Request) -> Result<Bytes, ErrorPayload>| {
        std::thread::spawn(move || provider.serve(answer))
    };
    serve(provider(upper), |r| {
        Ok(Bytes::from(r.payload.to_ascii_uppercase()))
    });
    serve(provider(big), |r| Ok(r.payload));
    let stuck = provider(gone);
    let stuck_handle = stuck.handle();
    let (seen, got) = std::sync::mpsc::channel();
    let seen = std::sync::Mutex::new(seen);
    std::thread::spawn(move || {
        stuck.serve(move |r| {
            let _ = seen.lock().expect("seen").send(r.id);
            // Held until the provider is gone (it is told), at most WAIT.
            let _ = r.wait_cancelled(WAIT);
            Err(ErrorPayload::new(ErrorCode::BAD_REQUEST, "released"))
        })
    });

    let reply = consumer(upper).request(Bytes::from_static(b"hello"), WAIT);
    assert_eq!(reply.expect("answered"), &b"HELLO"[..], "{label}");

    // 4 MiB in frames of 256 KiB, both ways.
    let payload = noise(4 << 20);
    let reply = consumer(big)
        .request(payload.clone(), WAIT)
        .expect("4 MiB answered");
    assert_eq!(reply.len(), payload.len(), "{label}");
    assert_eq!(fnv1a(&reply), fnv1a(&payload), "{label}");

    let consumer = consumer(gone);
    let pending = std::thread::spawn(move || consumer.request(Bytes::from_static(b"work"), WAIT));
    got.recv_timeout(WAIT).expect("provider got the request");
    stuck_handle.abort();
    let result = pending.join().expect("request thread");
    assert_eq!(
        code(&result),
        Some(ErrorCode::PROVIDER_GONE),
        "{label}: {result:?}"
    );

    let stats = broker.stats();
    assert_eq!(stats.requests_completed, 2, "{label}: {stats:?}");
    assert_eq!(stats.provider_gone, 1, "{label}: {stats:?}");
    assert!(
        stats.frames_in >= 2 * 16,
        "{label}: streamed in frames: {stats:?}"
    );
    assert_eq!(stats.busy, 0, "{label}: {stats:?}");
}

/// The main scenario against a broker on `runtime`, its clients on tokio,
/// then (against a broker of its own each) on smol and on std threads.
async fn scenario_on(runtime: &str) {
    let (addr, broker) = Running::start(runtime, |o| o.frame = frame_of(256 * 1024)).await;
    main_scenario::<storm_tokio::Tokio>(&addr, &broker, ClientOptions::default(), runtime).await;
    drop(broker);
    let (addr, broker) = Running::start(runtime, |o| o.frame = frame_of(256 * 1024)).await;
    let label = format!("{runtime}, clients on smol");
    main_scenario::<storm_smol::Smol>(&addr, &broker, ClientOptions::default(), &label).await;
    drop(broker);
    let (addr, broker) = Running::start(runtime, |o| o.frame = frame_of(256 * 1024)).await;
    let label = format!("{runtime}, clients on std");
    tokio::task::block_in_place(|| {
        main_scenario_blocking(&addr, &broker, &ClientOptions::default(), &label);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_scenario_on_tokio() {
    scenario_on("tokio").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_scenario_on_smol() {
    scenario_on("smol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_scenario_on_std() {
    scenario_on("std").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_scenario_over_tls_on_every_runtime() {
    let pki = storm_tests::suite::pki::Pki::new();
    for runtime in ["tokio", "smol", "std"] {
        let (addr, broker) = Running::start(runtime, |o| {
            o.frame = frame_of(256 * 1024);
            o.server.tls = Some(pki.server());
        })
        .await;
        let tls = ClientOptions::default().with_tls(pki.client());
        let label = format!("{runtime} over TLS");
        main_scenario::<storm_tokio::Tokio>(&addr, &broker, tls.clone(), &label).await;
        drop(broker);
        let (addr, broker) = Running::start(runtime, |o| {
            o.frame = frame_of(256 * 1024);
            o.server.tls = Some(pki.server());
        })
        .await;
        let label = format!("{runtime} over TLS, clients on smol");
        main_scenario::<storm_smol::Smol>(&addr, &broker, tls.clone(), &label).await;
        drop(broker);
        let (addr, broker) = Running::start(runtime, |o| {
            o.frame = frame_of(256 * 1024);
            o.server.tls = Some(pki.server());
        })
        .await;
        let label = format!("{runtime} over TLS, clients on std");
        tokio::task::block_in_place(|| main_scenario_blocking(&addr, &broker, &tls, &label));
        // A client that does not trust the broker's CA gets nowhere.
        let mut untrusted = ConsumerOptions::default();
        untrusted.client.tls = Some(TlsClientOptions::default());
        let refused = within(
            "untrusted",
            Consumer::connect(&addr, channel(101), untrusted),
        )
        .await;
        assert!(refused.is_err(), "{runtime}: an unknown CA is refused");
    }
}

// ---- flow control is per request --------------------------------------------

/// Options for the flow-control tests: small frames and queues, no
/// broker timeout meanwhile, and a `flow_wait` far longer than a test
/// waits, so a stream held for the wrong receiver cannot finish in time.
fn small_queues(o: &mut BrokerOptions) {
    o.frame = frame_of(64 * 1024);
    o.router.max_queued_bytes = 1 << 20;
    o.router.default_timeout = Duration::from_secs(60);
    o.flow_wait = Duration::from_secs(60);
}

/// How long the other stream on the channel may take: far less than
/// `flow_wait`.
const QUICK: Duration = Duration::from_secs(5);

async fn small_consumer(addr: &str, ch: ChannelId) -> Consumer {
    let mut options = ConsumerOptions::default();
    options.frame = frame_of(64 * 1024);
    options.server_timeout = Duration::from_secs(60);
    within("consumer", Consumer::connect(addr, ch, options))
        .await
        .expect("consumer registers")
}

async fn small_provider<F, Fut>(addr: &str, ch: ChannelId, answer: F)
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
{
    let mut options = ProviderOptions::default();
    options.frame = frame_of(64 * 1024);
    let provider = within("provider", Provider::connect(addr, ch, options))
        .await
        .expect("provider registers");
    tokio::spawn(provider.serve(answer));
}

/// Waits (bounded) until the broker holds a stream back for a slow
/// receiver.
async fn until_held(broker: &Running, label: &str) {
    let deadline = Instant::now() + WAIT;
    while broker.held_streams() == 0 {
        assert!(
            Instant::now() < deadline,
            "{label}: the slow receiver never held a stream back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request streamed to a provider that does not read stalls; another
/// consumer's request to the other provider of the same channel goes
/// through at full speed. (With flow control per channel it waited for
/// the deaf provider too, for `flow_wait`.)
async fn deaf_provider_does_not_slow_the_channel(runtime: &str) {
    let (addr, broker) = Running::start(runtime, small_queues).await;
    let ch = channel(120);
    // Registered first: the first request goes to it.
    let _deaf = deaf_provider(&addr, ch);
    small_provider(&addr, ch, |r: Request| async move { Ok(r.payload) }).await;

    let slow = small_consumer(&addr, ch).await;
    let mut stream = within("start", slow.stream(Duration::from_secs(60)))
        .await
        .expect("started");
    let upload = tokio::spawn(async move {
        // 64 MiB: far more than socket buffers and the queue hold.
        let piece = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..64 {
            if stream.write(piece.clone()).await.is_err() {
                break;
            }
        }
    });
    until_held(&broker, runtime).await;

    let other = small_consumer(&addr, ch).await;
    let payload = noise(2 << 20);
    let started = Instant::now();
    let reply = tokio::time::timeout(QUICK, other.request(payload.clone(), WAIT))
        .await
        .unwrap_or_else(|_| panic!("{runtime}: the other stream was held back"))
        .expect("answered");
    assert_eq!(fnv1a(&reply), fnv1a(&payload), "{runtime}");
    assert!(broker.held_streams() >= 1, "{runtime}: still stalled");
    eprintln!(
        "{runtime}: 2 MiB round trip beside a stalled stream in {:?}",
        started.elapsed()
    );
    upload.abort();
}

/// A consumer that registers, sends one empty request and never reads
/// again.
fn deaf_consumer(addr: &str, ch: ChannelId) -> TcpStream {
    let mut stream = registered_raw(addr, ch, Role::Consumer, Duration::from_secs(60));
    let mut wire = BytesMut::new();
    let id = RequestId::random(&mut rand::rng());
    for t in [FrameType::Start, FrameType::End] {
        FrameCodec::default()
            .encode(&Frame::new(t, id, Bytes::new()), &mut wire)
            .expect("fits");
    }
    stream.write_all(&wire).expect("request");
    stream
}

/// A provider's big response to a consumer that does not read stalls;
/// another provider's response on the same channel goes through. (With
/// flow control per channel it waited for the deaf consumer too.)
async fn deaf_consumer_does_not_slow_the_channel(runtime: &str) {
    let (addr, broker) = Running::start(runtime, small_queues).await;
    let ch = channel(121);
    // Registered first: the deaf consumer's request goes to it.
    small_provider(&addr, ch, |_r: Request| async move {
        Ok(Bytes::from(vec![9u8; 64 << 20]))
    })
    .await;
    small_provider(&addr, ch, |r: Request| async move { Ok(r.payload) }).await;
    let _deaf = deaf_consumer(&addr, ch);
    until_held(&broker, runtime).await;

    let other = small_consumer(&addr, ch).await;
    let payload = noise(2 << 20);
    let reply = tokio::time::timeout(QUICK, other.request(payload.clone(), WAIT))
        .await
        .unwrap_or_else(|_| panic!("{runtime}: the other response was held back"))
        .expect("answered");
    assert_eq!(fnv1a(&reply), fnv1a(&payload), "{runtime}");
    assert!(broker.held_streams() >= 1, "{runtime}: still stalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_provider_does_not_slow_the_channel_on_tokio() {
    deaf_provider_does_not_slow_the_channel("tokio").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_provider_does_not_slow_the_channel_on_smol() {
    deaf_provider_does_not_slow_the_channel("smol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_provider_does_not_slow_the_channel_on_std() {
    deaf_provider_does_not_slow_the_channel("std").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_consumer_does_not_slow_the_channel_on_tokio() {
    deaf_consumer_does_not_slow_the_channel("tokio").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_consumer_does_not_slow_the_channel_on_smol() {
    deaf_consumer_does_not_slow_the_channel("smol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_consumer_does_not_slow_the_channel_on_std() {
    deaf_consumer_does_not_slow_the_channel("std").await;
}

// ---- requests of any size ---------------------------------------------------

/// A streaming provider on `ch` with `max_concurrent` handlers; returns
/// its handle.
async fn streamed_provider<F, Fut>(
    addr: &str,
    ch: ChannelId,
    max_concurrent: usize,
    handler: F,
) -> ProviderHandle
where
    F: Fn(StreamedRequest, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
{
    let mut options = ProviderOptions::default();
    options.max_concurrent = max_concurrent;
    let provider = within("provider", Provider::connect(addr, ch, options))
        .await
        .expect("provider registers");
    let handle = provider.handle();
    tokio::spawn(provider.serve_streamed(handler));
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_provider_answers_as_the_request_arrives() {
    let (addr, handle) = broker(|_| {}).await;
    let ch = channel(31);
    // Echoes each piece as it comes, then appends the size it counted.
    streamed_provider(&addr, ch, 4, |request, mut responder| async move {
        let mut body = request.body;
        let mut size = 0;
        while let Some(piece) = body.next().await {
            size += piece.len();
            responder
                .write(piece)
                .await
                .map_err(|e| ErrorPayload::new(ErrorCode(100), e.to_string()))?;
        }
        Ok(Bytes::from(format!("|{size}")))
    })
    .await;
    let consumer = consumer(&addr, ch).await;
    let payload = noise(5 << 20);
    let reply = within("5 MiB", consumer.request(payload.clone(), WAIT))
        .await
        .expect("answered");
    let (echo, tail) = reply.split_at(payload.len());
    assert_eq!(fnv1a(echo), fnv1a(&payload));
    assert_eq!(tail, format!("|{}", payload.len()).as_bytes());
    let empty = within("empty", consumer.request(Bytes::new(), WAIT))
        .await
        .expect("answered");
    assert_eq!(&empty[..], b"|0");
    assert_eq!(handle.stats().busy, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_provider_refuses_what_its_handlers_cannot_take_and_stops_on_cancel() {
    let (addr, _handle) = broker(|_| {}).await;
    let ch = channel(32);
    let (started, mut seen) = mpsc::channel(4);
    let (stopped, mut gone) = mpsc::channel::<RequestId>(4);
    // One handler, which reads nothing and never answers; it reports when
    // it starts and when it is dropped (aborted).
    streamed_provider(&addr, ch, 1, move |request, _| {
        let (started, stopped) = (started.clone(), stopped.clone());
        async move {
            struct Report(mpsc::Sender<RequestId>, RequestId);
            impl Drop for Report {
                fn drop(&mut self) {
                    let _ = self.0.try_send(self.1);
                }
            }
            let _report = Report(stopped, request.id);
            let _ = started.send(request.id).await;
            std::future::pending().await
        }
    })
    .await;
    let consumer = consumer(&addr, ch).await;
    let first = within("start", consumer.stream(WAIT))
        .await
        .expect("started");
    let id = within("handler runs", seen.recv()).await.expect("started");
    // The only handler is busy: the next request is refused at once.
    let second = within("busy", consumer.request(Bytes::from_static(b"x"), WAIT)).await;
    assert_eq!(code(&second), Some(ErrorCode::BUSY), "{second:?}");
    // Cancelling the first aborts its handler.
    first.cancel();
    assert_eq!(within("handler aborted", gone.recv()).await, Some(id));
}
