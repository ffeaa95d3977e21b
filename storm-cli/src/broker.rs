//! `storm broker` and `storm client broker`: the command-line face of the
//! broker library ([`storm_services::broker`]).

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Subcommand, ValueEnum};
use storm_host::options::{ClientOptions, TlsClientOptions};
use storm_proto::broker::{ChannelId, ErrorCode, ErrorPayload, RouterConfig, RouterStats};

use storm_cli::interrupt;
use storm_cli::metrics::MetricsEndpoint;
use storm_cli::policy::{PolicyArgs, Service};
use storm_cli::runtime::{Runtime, TlsArgs};
use storm_services::broker::{
    BrokerError, BrokerOptions, BrokerServer, Consumer, ConsumerOptions, Provider, ProviderOptions,
    RequestStream, Responder, StreamedRequest, blocking,
};
use storm_services::host::AsyncRuntime;
use storm_services::host::{on_async, on_std};

use crate::reconnect::{Reconnect, ReconnectArgs};

/// Options of `storm broker`.
#[derive(Debug, Clone, clap::Args)]
#[command(mut_arg("max_message", |arg| arg.visible_alias("max-frame")))]
pub(crate) struct ServerArgs {
    /// Address to listen on (IPv4 or IPv6); port 0 picks a free one,
    /// printed at start.
    #[arg(long, default_value = "127.0.0.1:9200")]
    pub addr: String,
    /// Timeout of a request at the broker when its consumer registered
    /// without one (e.g. 5s, 500ms, 2m). A request still open then fails
    /// with TIMEOUT at both ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest timeout a consumer may register with.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_timeout: Duration,
    /// Most requests in flight through the broker; more are refused with
    /// BUSY.
    #[arg(long, default_value_t = RouterConfig::DEFAULT_MAX_REQUESTS)]
    pub max_requests: usize,
    /// Most requests in flight per consumer; more are refused with
    /// TOO_MANY_REQUESTS.
    #[arg(long, default_value_t = RouterConfig::DEFAULT_MAX_REQUESTS_PER_CONSUMER)]
    pub max_requests_per_consumer: usize,
    /// Most frames queued for one connection; a new request for a provider
    /// whose queue is full is refused with BUSY.
    #[arg(long, default_value_t = RouterConfig::DEFAULT_MAX_QUEUED_FRAMES)]
    pub max_queued_frames: usize,
    /// Most payload bytes queued for one connection (memory per connection
    /// is about this much).
    #[arg(long, default_value_t = RouterConfig::DEFAULT_MAX_QUEUED_BYTES)]
    pub max_queued_bytes: usize,
    /// Print the broker's counters this often (e.g. 10s); 0s = never.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub stats_every: Duration,
    /// Runtime to serve on: tokio or smol (async tasks), or std (threads:
    /// a reader and a writer per connection).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
    /// `--tls CERT_PEM KEY_PEM`: serve TLS only.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// `--max-message` is the largest frame payload: requests and
    /// responses of any size are streamed in frames of at most this size,
    /// and clients must use the same value (`--max-frame`, its name
    /// before the policy flags were shared, still works).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `storm client broker <role>`.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ClientArgs {
    /// Send one request (or several, one after another) and print the
    /// response.
    Request(RequestArgs),
    /// Run a demo provider that answers requests until stopped.
    Provider(ProviderArgs),
}

/// Options of `storm client broker request`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RequestArgs {
    /// Address of the broker.
    #[arg(long, default_value = "127.0.0.1:9200")]
    pub addr: String,
    /// Channel id: a decimal number, or 32 hex digits.
    #[arg(long, value_parser = parse_channel)]
    pub channel: ChannelId,
    /// Text to send; the response is printed as text.
    #[arg(long, group = "payload")]
    pub data: Option<String>,
    /// Send this many bytes of generated data instead, any number: made
    /// and sent a frame at a time under the broker's flow control, never
    /// whole; prints sizes, checksums and throughput.
    #[arg(long, group = "payload")]
    pub size: Option<usize>,
    /// Send this file instead, of any size: read and sent a frame at a
    /// time under the broker's flow control, never whole; prints sizes,
    /// checksums and throughput.
    #[arg(long, group = "payload", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Largest response taken, in bytes; a larger one fails the request
    /// (it is held whole: the echo and upper providers answer with as many
    /// bytes as were sent).
    #[arg(long, default_value_t = ConsumerOptions::DEFAULT_MAX_RESPONSE)]
    pub max_response: usize,
    /// Time for the whole request (sending, processing, response).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Requests to send, one after another.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Largest frame payload in bytes (must match the broker's).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_frame: usize,
    /// Connect over TLS, trusting only the CA certificates in this PEM
    /// file (for a broker started with `--tls`).
    #[arg(long, value_name = "CA_PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Runtime to run the client on: tokio or smol (async tasks), or std
    /// (threads: the request waits on the main thread).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
}

/// Options of `storm client broker provider`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProviderArgs {
    /// Address of the broker.
    #[arg(long, default_value = "127.0.0.1:9200")]
    pub addr: String,
    /// Channel id: a decimal number, or 32 hex digits.
    #[arg(long, value_parser = parse_channel)]
    pub channel: ChannelId,
    /// What to answer.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    pub mode: Mode,
    /// Wait this long before answering each request (to try timeouts and
    /// provider failures).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Requests handled at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Largest frame payload in bytes (must match the broker's).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_frame: usize,
    /// Connect over TLS, trusting only the CA certificates in this PEM
    /// file (for a broker started with `--tls`).
    #[arg(long, value_name = "CA_PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Runtime to run the provider on: tokio or smol (async tasks; the
    /// handlers run as tasks there), or std (threads: a thread per request
    /// being answered).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
    /// `--reconnect`: after a drop (the broker restarted), connect and
    /// register on the channel again; requests in flight then are lost.
    #[command(flatten)]
    pub reconnect: ReconnectArgs,
}

/// What the demo provider answers. Every mode reads the request as it
/// arrives, a frame at a time, so requests of any size take the provider a
/// few frames of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// The request, unchanged, sent back piece by piece as it arrives.
    Echo,
    /// The request with ASCII letters in upper case, sent back piece by
    /// piece as it arrives.
    Upper,
    /// The request's size and FNV-1a checksum, as one line of text.
    Digest,
}

/// Parses `500ms`, `5s`, `2m`, or a number of seconds (at most a year).
///
/// # Errors
///
/// A message saying what is wrong.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s or m")),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!("{text:?} is longer than a year"));
    }
    Ok(duration)
}

/// The longest duration an option takes, so every deadline is a valid
/// instant.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a channel id: a decimal number (as a 128-bit big-endian id) or
/// 32 hex digits.
///
/// # Errors
///
/// A message saying what is wrong.
pub(crate) fn parse_channel(text: &str) -> Result<ChannelId, String> {
    let bad = || format!("{text:?} is not a channel id (a decimal number or 32 hex digits)");
    if text.len() == 32 {
        if let Ok(n) = u128::from_str_radix(text, 16) {
            return Ok(ChannelId::from_bytes(n.to_be_bytes()));
        }
    }
    let n: u128 = text.parse().map_err(|_| bad())?;
    Ok(ChannelId::from_bytes(n.to_be_bytes()))
}

fn frame(max: usize) -> storm_proto::broker::FrameConfig {
    let mut frame = storm_proto::broker::FrameConfig::default();
    frame.max_payload = max;
    frame
}

/// How long connections get to close on Ctrl-C.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `storm broker`: length-prefixed frames (no ping) of up to 1 MiB of
/// payload; the router's bounded queues are its slow-consumer policy.
const SERVICE: Service = Service {
    max_message: 1 << 20,
    waits_only: true,
    ..Service::tcp("storm broker")
};

/// Runs `storm broker` until Ctrl-C, on the runtime `--runtime` names.
///
/// # Errors
///
/// Invalid options, unreadable TLS files, or a failed bind.
pub(crate) fn serve(args: &ServerArgs) -> Result<(), BrokerError> {
    let mut options = BrokerOptions::default();
    options.server.addr.clone_from(&args.addr);
    args.tls
        .apply(&mut options.server)
        .map_err(BrokerError::Io)?;
    let policy = args.policy.resolve(&SERVICE)?;
    policy.apply(&mut options.server);
    options.frame = frame(policy.max_message);
    let router = &mut options.router;
    router.default_timeout = args.request_timeout;
    router.max_timeout = args.max_timeout;
    router.max_requests = args.max_requests;
    router.max_requests_per_consumer = args.max_requests_per_consumer;
    router.max_queued_frames = args.max_queued_frames;
    router.max_queued_bytes = args.max_queued_bytes;
    let metrics = storm_cli::metrics::bind(args.policy.metrics_addr.as_deref())?;
    interrupt::install().map_err(BrokerError::Io)?;
    match args.runtime {
        Runtime::Tokio => serve_async::<storm_tokio::Tokio>(args, options, metrics),
        Runtime::Smol => serve_async::<storm_smol::Smol>(args, options, metrics),
        Runtime::Std => serve_std(args, options, metrics),
    }
}

fn banner(args: &ServerArgs, addr: std::net::SocketAddr) {
    println!(
        "storm broker ({:?} runtime) listening on {}://{addr}",
        args.runtime,
        args.tls.scheme(false)
    );
    tracing::info!(%addr, runtime = ?args.runtime, tls = args.tls.enabled(), "broker listening");
}

/// Prints one line of counters, for `--stats-every`.
fn print_stats(connections: usize, open: usize, s: &RouterStats) {
    println!(
        "connections {connections} | requests open {open} started {} completed {} | \
         no responders {} busy {} timed out {} provider gone {} cancelled {}",
        s.requests_started,
        s.requests_completed,
        s.no_responders,
        s.busy,
        s.timed_out,
        s.provider_gone,
        s.cancelled,
    );
}

fn serve_async<R: AsyncRuntime>(
    args: &ServerArgs,
    options: BrokerOptions,
    metrics: Option<MetricsEndpoint>,
) -> Result<(), BrokerError> {
    let stop = interrupt::signal();
    on_async::serve_until::<R, _, _, _, _>(&stop, STOP_TIMEOUT, || async {
        let server = BrokerServer::<R>::bind_on(options).await?;
        banner(args, server.local_addr());
        let handle = server.handle();
        storm_cli::metrics::start(metrics, "broker", handle.hub());
        if !args.stats_every.is_zero() {
            let handle = handle.clone();
            R::spawn(on_async::every::<R>(args.stats_every, move || {
                print_stats(
                    handle.connections(),
                    handle.open_requests(),
                    &handle.stats(),
                );
            }));
        }
        Ok((handle, server.serve()))
    })
}

fn serve_std(
    args: &ServerArgs,
    options: BrokerOptions,
    metrics: Option<MetricsEndpoint>,
) -> Result<(), BrokerError> {
    let server = blocking::BrokerServer::bind(options)?;
    banner(args, server.local_addr());
    let handle = server.handle();
    storm_cli::metrics::start(metrics, "broker", handle.hub());
    if !args.stats_every.is_zero() {
        let handle = handle.clone();
        on_std::every(args.stats_every, move || {
            print_stats(
                handle.connections(),
                handle.open_requests(),
                &handle.stats(),
            );
        });
    }
    let serving = server.spawn()?;
    on_std::serve_until(&interrupt::signal(), STOP_TIMEOUT, &handle, serving)
}

/// Client options for `--tls-ca`.
fn client_options(tls_ca: Option<&PathBuf>) -> Result<ClientOptions, BrokerError> {
    let mut options = ClientOptions::default();
    if let Some(ca) = tls_ca {
        let pem = storm_host::tls::read_pem_file(ca).map_err(BrokerError::Io)?;
        options.tls = Some(TlsClientOptions::with_ca(pem));
    }
    Ok(options)
}

/// Runs `storm client broker …` on the runtime of its `--runtime`.
///
/// # Errors
///
/// Connecting or registering failed, or (for `request`) a request failed.
pub(crate) fn client(args: &ClientArgs) -> Result<(), BrokerError> {
    let runtime = match args {
        ClientArgs::Request(args) => args.runtime,
        ClientArgs::Provider(args) => args.runtime,
    };
    match runtime {
        Runtime::Tokio => client_on::<storm_tokio::Tokio>(args),
        Runtime::Smol => client_on::<storm_smol::Smol>(args),
        // The blocking clients wait on this thread.
        Runtime::Std => smol::future::block_on(client_with::<OnStd>(args)),
    }
}

fn client_on<R: AsyncRuntime>(args: &ClientArgs) -> Result<(), BrokerError> {
    R::block_on(async { Ok(client_with::<OnAsync<R>>(args).await) }).map_err(BrokerError::Io)?
}

async fn client_with<S: Side>(args: &ClientArgs) -> Result<(), BrokerError> {
    match args {
        ClientArgs::Request(args) => request::<S>(args).await,
        ClientArgs::Provider(args) => provide::<S>(args).await,
    }
}

/// The broker's clients as `storm client broker` uses them, on a runtime:
/// [`OnAsync`] (tokio, smol) waits asynchronously, [`OnStd`] blocks its
/// thread (the blocking library clients, their handlers on threads of
/// their own). What the command does with them is written once, over this.
trait Side {
    type Consumer;
    type Stream;
    type Provider;

    async fn consumer(
        args: &RequestArgs,
        options: ConsumerOptions,
    ) -> Result<Self::Consumer, BrokerError>;
    async fn stream(
        consumer: &Self::Consumer,
        timeout: Duration,
    ) -> Result<Self::Stream, BrokerError>;
    async fn write(stream: &mut Self::Stream, piece: Bytes) -> Result<(), BrokerError>;
    async fn finish(stream: Self::Stream) -> Result<Bytes, BrokerError>;
    fn close(consumer: &Self::Consumer);
    async fn provider(
        args: &ProviderArgs,
        options: ProviderOptions,
    ) -> Result<Self::Provider, BrokerError>;
    /// Answers requests as `mode` and `delay` say until the connection ends.
    async fn serve(
        provider: Self::Provider,
        mode: Mode,
        delay: Duration,
    ) -> Result<(), BrokerError>;
    async fn sleep(duration: Duration);
}

/// The clients on tokio or smol.
struct OnAsync<R>(std::marker::PhantomData<R>);

impl<R: AsyncRuntime> Side for OnAsync<R> {
    type Consumer = Consumer;
    type Stream = RequestStream;
    type Provider = Provider;

    async fn consumer(
        args: &RequestArgs,
        options: ConsumerOptions,
    ) -> Result<Consumer, BrokerError> {
        Consumer::connect_on::<R>(&args.addr, args.channel, options).await
    }

    async fn stream(consumer: &Consumer, timeout: Duration) -> Result<RequestStream, BrokerError> {
        consumer.stream(timeout).await
    }

    async fn write(stream: &mut RequestStream, piece: Bytes) -> Result<(), BrokerError> {
        stream.write(piece).await
    }

    async fn finish(stream: RequestStream) -> Result<Bytes, BrokerError> {
        stream.finish().await
    }

    fn close(consumer: &Consumer) {
        consumer.close();
    }

    async fn provider(
        args: &ProviderArgs,
        options: ProviderOptions,
    ) -> Result<Provider, BrokerError> {
        Provider::connect_on::<R>(&args.addr, args.channel, options).await
    }

    async fn serve(provider: Provider, mode: Mode, delay: Duration) -> Result<(), BrokerError> {
        provider
            .serve_streamed(move |request, responder| answer::<R>(mode, delay, request, responder))
            .await
    }

    async fn sleep(duration: Duration) {
        R::sleep_until(Instant::now() + duration).await;
    }
}

/// The blocking clients (storm-std): every call blocks the thread, which
/// does nothing else meanwhile.
struct OnStd;

impl Side for OnStd {
    type Consumer = blocking::Consumer;
    type Stream = blocking::RequestStream;
    type Provider = blocking::Provider;

    async fn consumer(
        args: &RequestArgs,
        options: ConsumerOptions,
    ) -> Result<Self::Consumer, BrokerError> {
        blocking::Consumer::connect(&args.addr, args.channel, options)
    }

    async fn stream(
        consumer: &Self::Consumer,
        timeout: Duration,
    ) -> Result<Self::Stream, BrokerError> {
        consumer.stream(timeout)
    }

    async fn write(stream: &mut Self::Stream, piece: Bytes) -> Result<(), BrokerError> {
        stream.write(piece)
    }

    async fn finish(stream: Self::Stream) -> Result<Bytes, BrokerError> {
        stream.finish()
    }

    fn close(consumer: &Self::Consumer) {
        consumer.close();
    }

    async fn provider(
        args: &ProviderArgs,
        options: ProviderOptions,
    ) -> Result<Self::Provider, BrokerError> {
        blocking::Provider::connect(&args.addr, args.channel, options)
    }

    async fn serve(
        provider: Self::Provider,
        mode: Mode,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        provider.serve_streamed(move |request, mut responder| {
            let mut answer = Answer::start(request.id, mode);
            // The delay ends early when the request is cancelled (its
            // answer would be dropped).
            if request.wait_cancelled(delay) {
                return Err(ErrorPayload::new(ErrorCode::CANCELLED, "cancelled"));
            }
            for piece in request.body {
                if let Some(back) = answer.piece(&piece) {
                    responder.write(back).map_err(provider_gone)?;
                }
            }
            Ok(answer.end())
        })
    }

    async fn sleep(duration: Duration) {
        std::thread::sleep(duration);
    }
}

async fn request<S: Side>(args: &RequestArgs) -> Result<(), BrokerError> {
    let mut options = ConsumerOptions::default();
    options.client = client_options(args.tls_ca.as_ref())?;
    options.frame = frame(args.max_frame);
    // The broker applies the same deadline (capped at its maximum).
    options.server_timeout = args.timeout;
    options.max_response = args.max_response;
    let consumer = S::consumer(args, options).await?;
    for _ in 0..args.count {
        let mut source = Source::open(args).map_err(BrokerError::Io)?;
        let started = Instant::now();
        let mut stream = S::stream(&consumer, args.timeout).await?;
        let (mut sent, mut checksum) = (0usize, FNV1A_START);
        while let Some(piece) = source.next().await.map_err(BrokerError::Io)? {
            sent += piece.len();
            checksum = fnv1a(checksum, &piece);
            S::write(&mut stream, piece).await?;
        }
        let response = S::finish(stream).await?;
        let took = started.elapsed();
        if matches!(source.origin, Origin::Text(_)) {
            println!("{}", String::from_utf8_lossy(&response));
            continue;
        }
        let mib = (sent + response.len()) as f64 / (1024.0 * 1024.0);
        println!(
            "sent {sent} bytes (fnv1a {checksum:016x}), got {} bytes (fnv1a {:016x}) in {:.1} ms, {:.1} MiB/s both ways together",
            response.len(),
            fnv1a(FNV1A_START, &response),
            took.as_secs_f64() * 1000.0,
            mib / took.as_secs_f64().max(1e-9),
        );
        if let Some(text) = short_text(&response) {
            println!("response: {text}");
        }
    }
    S::close(&consumer);
    Ok(())
}

/// Where a request's data comes from, a piece of at most a frame at a
/// time: nothing is built or read whole.
struct Source {
    /// The largest piece: the frame size.
    max: usize,
    origin: Origin,
}

/// What a [`Source`] reads from.
enum Origin {
    /// `--data`, or a greeting: one piece.
    Text(Option<Bytes>),
    /// `--size`: `left` more bytes of the repeating pattern, each piece a
    /// slice of `block` (the pattern from every phase, made once).
    Pattern {
        block: Bytes,
        offset: usize,
        left: usize,
    },
    /// `--file`: read as it is sent (on a thread of the blocking pool).
    File(Option<std::fs::File>),
}

impl Source {
    fn open(args: &RequestArgs) -> io::Result<Self> {
        let max = args.max_frame;
        let origin = match (&args.data, args.size, &args.file) {
            (_, Some(size), _) => Origin::Pattern {
                block: pattern(max.min(size) + PATTERN_PERIOD),
                offset: 0,
                left: size,
            },
            (_, _, Some(path)) => {
                Origin::File(Some(std::fs::File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?))
            }
            (Some(text), _, _) => Origin::Text(Some(Bytes::from(text.clone()))),
            (None, None, None) => Origin::Text(Some(Bytes::from_static(b"hello from storm"))),
        };
        Ok(Self { max, origin })
    }

    /// The next piece, at most a frame; `None` at the end.
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        let max = self.max;
        match &mut self.origin {
            Origin::Text(text) => Ok(text.take()),
            Origin::Pattern {
                block,
                offset,
                left,
            } => {
                if *left == 0 {
                    return Ok(None);
                }
                let n = max.min(*left);
                let phase = *offset % PATTERN_PERIOD;
                *offset += n;
                *left -= n;
                Ok(Some(block.slice(phase..phase + n)))
            }
            Origin::File(slot) => {
                let Some(mut file) = slot.take() else {
                    return Ok(None);
                };
                let (file, piece) = smol::unblock(move || {
                    use std::io::Read;
                    let mut piece = Vec::with_capacity(max);
                    let read = (&mut file).take(max as u64).read_to_end(&mut piece);
                    (file, read.map(|_| piece))
                })
                .await;
                let piece = piece?;
                if piece.is_empty() {
                    return Ok(None);
                }
                *slot = Some(file);
                Ok(Some(Bytes::from(piece)))
            }
        }
    }
}

/// The response as text, if it is a short line of UTF-8 (a digest).
fn short_text(response: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(response).ok()?;
    (text.len() <= 200 && !text.contains('\n')).then_some(text)
}

/// Who the provider speaks as on stderr.
const PROVIDER: &str = "storm client broker provider";

/// Runs the demo provider until the connection ends; with `--reconnect`,
/// connects and registers again after every drop until attempts run out.
async fn provide<S: Side>(args: &ProviderArgs) -> Result<(), BrokerError> {
    let mut reconnect = Reconnect::new(PROVIDER, &args.reconnect).map_err(BrokerError::Io)?;
    loop {
        let e = match register::<S>(args).await {
            Ok(provider) => {
                reconnect.connected();
                match S::serve(provider, args.mode, args.delay).await {
                    Err(e @ BrokerError::Disconnected(_)) => e,
                    done => return done,
                }
            }
            // Not a refusal or bad options: worth another try.
            Err(e @ (BrokerError::Connect(_) | BrokerError::Timeout | BrokerError::Io(_))) => e,
            Err(e) => return Err(e),
        };
        match reconnect.after(&e) {
            Some(delay) => S::sleep(delay).await,
            None => return Err(e),
        }
    }
}

/// Connects to the broker and registers on the channel.
async fn register<S: Side>(args: &ProviderArgs) -> Result<S::Provider, BrokerError> {
    let mut options = ProviderOptions::default();
    options.client = client_options(args.tls_ca.as_ref())?;
    options.frame = frame(args.max_frame);
    options.max_concurrent = args.concurrency;
    let provider = S::provider(args, options).await?;
    let mode = match args.mode {
        Mode::Echo => "echo",
        Mode::Upper => "upper",
        Mode::Digest => "digest",
    };
    let scheme = if args.tls_ca.is_some() { "tls" } else { "tcp" };
    println!(
        "storm broker provider ({mode}) registered at {scheme}://{}",
        args.addr
    );
    Ok(provider)
}

/// The demo provider's answer to one request, as `mode` says, after
/// `delay`, on tokio or smol (on std: [`OnStd::serve`]).
async fn answer<R: AsyncRuntime>(
    mode: Mode,
    delay: Duration,
    request: StreamedRequest,
    mut responder: Responder,
) -> Result<Bytes, ErrorPayload> {
    let StreamedRequest { id, mut body, .. } = request;
    let mut answer = Answer::start(id, mode);
    if !delay.is_zero() {
        R::sleep_until(Instant::now() + delay).await;
    }
    while let Some(piece) = body.next().await {
        if let Some(back) = answer.piece(&piece) {
            responder.write(back).await.map_err(provider_gone)?;
        }
    }
    Ok(answer.end())
}

/// A response that could not be written, as the error the consumer gets.
fn provider_gone(e: BrokerError) -> ErrorPayload {
    ErrorPayload::new(ErrorCode::PROVIDER_GONE, e.to_string())
}

/// The demo provider's answer to one request as its pieces arrive, the
/// same on every runtime: what to send back at once, and the last part.
struct Answer {
    id: storm_proto::broker::RequestId,
    mode: Mode,
    size: usize,
    checksum: u64,
}

impl Answer {
    /// A request starts (said on stdout).
    fn start(id: storm_proto::broker::RequestId, mode: Mode) -> Self {
        println!("request {id}");
        Self {
            id,
            mode,
            size: 0,
            checksum: FNV1A_START,
        }
    }

    /// Takes the next piece of the request; returns what to send back now.
    fn piece(&mut self, piece: &Bytes) -> Option<Bytes> {
        self.size += piece.len();
        match self.mode {
            Mode::Echo => Some(piece.clone()),
            Mode::Upper => {
                let mut upper = BytesMut::from(&piece[..]);
                upper.make_ascii_uppercase();
                Some(upper.freeze())
            }
            Mode::Digest => {
                self.checksum = fnv1a(self.checksum, piece);
                None
            }
        }
    }

    /// The request has ended (said on stdout): the response's last part.
    fn end(self) -> Bytes {
        println!("request {}: {} bytes", self.id, self.size);
        match self.mode {
            Mode::Digest => {
                Bytes::from(format!("{} bytes, fnv1a {:016x}", self.size, self.checksum))
            }
            Mode::Echo | Mode::Upper => Bytes::new(),
        }
    }
}

/// The period of the `--size` pattern: `a` to `z`.
const PATTERN_PERIOD: usize = 26;

/// `len` bytes of the `--size` pattern: `abc…z`, repeated.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| b'a' + (i % PATTERN_PERIOD) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// FNV-1a, 64 bits, fed piece by piece from this start: a checksum to
/// compare payloads by eye.
const FNV1A_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_channels_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("1e12s").is_err());
        assert!(parse_duration("400000000").is_err());
        assert_eq!(
            parse_channel("1").map(ChannelId::to_bytes),
            Ok(1u128.to_be_bytes())
        );
        assert_eq!(
            parse_channel(&"ab".repeat(16)).map(ChannelId::to_bytes),
            Ok([0xab; 16])
        );
        assert!(parse_channel("-1").is_err());
        assert_eq!(fnv1a(FNV1A_START, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(
            fnv1a(fnv1a(FNV1A_START, b"ab"), b"c"),
            fnv1a(FNV1A_START, b"abc")
        );
        assert_eq!(pattern(28).last(), Some(&b'b'));
    }

    #[test]
    fn the_pattern_is_sent_in_pieces_that_join_up() {
        let args = RequestArgs {
            addr: String::new(),
            channel: ChannelId::default(),
            data: None,
            size: Some(100),
            file: None,
            max_response: 1,
            timeout: Duration::from_secs(1),
            count: 1,
            max_frame: 7,
            tls_ca: None,
            runtime: Runtime::Tokio,
        };
        let mut source = Source::open(&args).expect("a pattern");
        let mut joined = Vec::new();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(async {
                while let Some(piece) = source.next().await.expect("no i/o") {
                    assert!(!piece.is_empty() && piece.len() <= 7);
                    joined.extend_from_slice(&piece);
                }
            });
        assert_eq!(joined, pattern(100));
    }
}
