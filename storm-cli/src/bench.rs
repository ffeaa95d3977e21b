//! `storm bench`: a load generator for every `storm` service.
//!
//! ```text
//! storm bench <target> (--addr HOST:PORT | --spawn) [--mode throughput|latency]
//!     [--connections N] [--in-flight W] [--size BYTES] [--duration SECS]
//!     [--max-messages N] [--json] [--route NAME] [--deflate] [--channel ID]
//!     [--tls-ca CA_PEM] [--runtime tokio|smol|std]
//! ```
//!
//! Targets: `echo-raw`, `echo-lp`, `echo-line`, `echo-ws` (`storm echo
//! --proto …`), `json` (`storm json`), `chat` (`storm chat`) and `gateway`
//! (`storm gateway` with an echoing backend on `--route`), `broker`
//! (`storm broker`, through the library's `Consumer` and an echo
//! `Provider`). What each sends is in the `target` and `broker` modules;
//! every answer is checked, not just counted.
//!
//! - **throughput** (default): `--connections` (default 100) each keep
//!   `--in-flight` (default 16) requests outstanding: every answer is
//!   followed at once by a new request. Reports msgs/s, payload MiB/s (one
//!   direction) and the round trips, which include the queueing that
//!   pipelining adds.
//! - **latency**: one request in flight per connection (default 1
//!   connection): the true round trip of every request, from just before
//!   it is sent until its answer is parsed, as p50/p90/p99/max.
//!
//! A run is always bounded: it ends after `--duration` seconds (at most
//! 3600) or once `--max-messages` answers arrived, whichever comes first;
//! requests are handed out from that budget, so a run that ends on the cap
//! reports exactly that many messages. Setup (connecting, handshakes) has
//! its own 10 s limit and is not timed. Only loopback addresses are
//! accepted. `--spawn` starts the service as a child `storm` process on
//! 127.0.0.1:0 (for `gateway`, with a `storm echo --proto lp` backend and a
//! route file of one route) and stops it at the end.
//!
//! Ctrl-C during the load ends the run early and still prints the
//! summary (marked interrupted); spawned services are in their own process
//! group, so the terminal's Ctrl-C does not stop them under the bench.
//!
//! The summary also gives the CPU the bench used over the run (Linux), and
//! with `--spawn` the service's CPU and its CPU time per message, the
//! figure that moves least with machine noise (10 ms clock ticks: short
//! runs are coarse).
//!
//! A progress line goes to stderr once a second (rewritten in place on a
//! terminal), the summary to stdout: one line for people, or one JSON
//! object with `--json`. Exit code 0 on success, 1 when the run failed
//! (the summary says why), 2 for bad flags. A run in which no request was
//! answered has failed, for every target, whatever else happened: a
//! service that speaks another protocol than the target's often stays
//! silent, and the error names the service the target expects.
//!
//! # The clients
//!
//! `--runtime` picks what the clients run on: tokio (default) or smol,
//! through one generic path over storm-async's `Runtime` (`on_async.rs`),
//! or storm-std's blocking threads (`on_std.rs`); with `--spawn` the
//! service runs on the same runtime. Every decision is written once, here:
//! what a connection sends and when ([`Driver`]: the first window, then a
//! request for every answer), what it counts and records ([`Run`]: the
//! tickets that keep a run at its cap, the answers, the [`Histogram`]),
//! when a connection has failed the run, when the run ends ([`measure`]:
//! the duration, the cap, an error or Ctrl-C, one async loop on every
//! runtime, std's waiting on smol's `block_on` and timer), the setup
//! exchange of each target (`target`, over a [`target::Wire`]) and the
//! summary. The runtime's files only wait and do the I/O.
//!
//! Every connection is a storm-async or storm-std [`TcpClient`] or
//! [`WsClient`] whose handler hands each answer to its [`Driver`] and
//! sends the next requests from the connection's own task (on std, its
//! reader thread, with `send_blocking`), with no channel or extra task in
//! between. So the bench measures what an application on Storm's public
//! client API sees, and dogfoods that API (WebSocket masking, pings from
//! `storm chat`'s heartbeat, framing). The price is client CPU per
//! message: on one machine the bench competes with the service for cores.
//! For the lowest-overhead numbers on the echo servers use `benches/e2e`'s
//! `loadgen`, whose clients are hand-written on raw tokio sockets for
//! exactly that reason. The broker target uses the broker library's
//! `Consumer` (request/response with ids and flow control) instead, for
//! the same reason: it is what its users call (on std the blocking
//! `Consumer`, a thread per open request: see the `broker` module).
//!
//! [`TcpClient`]: storm_async::TcpClient
//! [`WsClient`]: storm_async::WsClient

mod broker;
mod cpu;
mod histogram;
mod on_async;
mod on_std;
mod spawn;
pub(crate) mod target;

use std::collections::VecDeque;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde_json::json;
use smol::channel::{Receiver, Sender};
use smol::future::or;
use storm_cli::runtime::Runtime;
use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, TlsClientOptions, WsOptions};
use storm_proto::Message;
use storm_proto::broker::ChannelId;
use storm_proto::framing::Framing;
use storm_proto::ws::deflate::DeflateConfig;
use storm_services::sys;

use histogram::Histogram;
use target::{Conn, EchoProto, Setup, Target, Transport, Wire};

/// Longest run, in seconds.
pub(crate) const MAX_DURATION: f64 = 3600.0;
/// Most connections.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;
/// Most requests in flight per connection.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;
/// Exit code for bad flags (as clap uses).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Connections opened at once during setup, so that the service's listen
/// backlog never overflows.
const CONNECT_AT_ONCE: usize = 64;
/// Time allowed for the clients to close at the end.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the progress line is written.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Options of `storm bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// The service to drive.
    #[arg(value_enum)]
    pub target: TargetName,
    // The doc comment is `--help` text (clap shows it verbatim), not
    // Markdown: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Address of the running service; loopback only (127.0.0.0/8, [::1],
    /// localhost).
    #[arg(long, required_unless_present = "spawn", conflicts_with = "spawn")]
    pub addr: Option<String>,
    /// Start the service as a child process on 127.0.0.1:0 instead (for
    /// gateway, with a `storm echo --proto lp` backend), stopped at the end.
    #[arg(long)]
    pub spawn: bool,
    /// throughput: many requests in flight, msgs/s; latency: one request in
    /// flight per connection, round-trip percentiles.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    pub mode: Mode,
    /// Concurrent connections [default: 100 for throughput, 1 for latency].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Requests each connection keeps in flight [default: 16 for
    /// throughput; always 1 for latency].
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Payload bytes per request (the echoed bytes, the JSON `content`, the
    /// chat `text`, the payload after the route line).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Seconds to run at most (up to 3600).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop once this many answers have arrived.
    #[arg(long, default_value_t = 100_000_000)]
    pub max_messages: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// gateway: the route to send to; its backend must echo.
    #[arg(long, default_value = "echo")]
    pub route: String,
    /// WebSocket targets: offer permessage-deflate.
    #[arg(long)]
    pub deflate: bool,
    /// broker: the channel to send on, whose provider must echo (a decimal
    /// number or 32 hex digits). Default: a fresh random channel with the
    /// bench's own echo provider.
    #[arg(long, value_parser = crate::broker::parse_channel)]
    pub channel: Option<storm_proto::broker::ChannelId>,
    /// Connect over TLS (wss:// for WebSocket targets), trusting the CA
    /// certificates in this PEM file (e.g. the ca.pem of `storm cert`), for
    /// a service started with `--tls`. Not with --spawn.
    #[arg(long, value_name = "CA_PEM", conflicts_with = "spawn")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Runtime the load generator's clients run on: tokio or smol (async
    /// tasks), or std (storm-std's blocking threads: a reader and a writer
    /// per connection; for broker also a thread per open request, at most
    /// 2048 = --connections × --in-flight). With --spawn the service (and
    /// the gateway's backend) runs on it too, with the same --runtime, so
    /// the whole run is on one runtime.
    #[arg(long, value_enum, env = "STORM_RUNTIME", default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
}

/// A service `storm bench` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub(crate) enum TargetName {
    /// `storm echo --proto raw`: bytes, counted back in any chunking.
    EchoRaw,
    /// `storm echo --proto lp`: 4-byte length-prefixed messages.
    EchoLp,
    /// `storm echo --proto line`: newline-delimited lines.
    EchoLine,
    /// `storm echo --proto ws`: WebSocket binary messages.
    EchoWs,
    /// `storm json`: `echo` requests, `echo_response` answers.
    Json,
    /// `storm chat`: chat messages in a room of one's own.
    Chat,
    /// `storm gateway`: route-addressed messages to an echoing backend.
    Gateway,
    /// `storm broker`: requests through the broker to an echo provider.
    Broker,
}

impl TargetName {
    /// The name on the command line.
    #[must_use]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::EchoRaw => "echo-raw",
            Self::EchoLp => "echo-lp",
            Self::EchoLine => "echo-line",
            Self::EchoWs => "echo-ws",
            Self::Json => "json",
            Self::Chat => "chat",
            Self::Gateway => "gateway",
            Self::Broker => "broker",
        }
    }

    /// The service this target drives, as it is started.
    #[must_use]
    pub(crate) fn service(self) -> &'static str {
        match self {
            Self::EchoRaw => "storm echo --proto raw",
            Self::EchoLp => "storm echo --proto lp",
            Self::EchoLine => "storm echo --proto line",
            Self::EchoWs => "storm echo --proto ws",
            Self::Json => "storm json",
            Self::Chat => "storm chat",
            Self::Gateway => "storm gateway",
            Self::Broker => "storm broker",
        }
    }

    /// The largest `--size` the service takes with its default limits.
    #[must_use]
    pub(crate) fn max_size(self) -> usize {
        match self {
            Self::EchoRaw | Self::EchoLp | Self::EchoWs => target::ECHO_MAX,
            Self::EchoLine => storm_proto::framing::DelimiterConfig::DEFAULT_MAX_MESSAGE_LEN,
            Self::Json => target::JSON_MAX,
            Self::Chat => target::CHAT_MAX,
            Self::Gateway => target::GATEWAY_MAX,
            Self::Broker => broker::MAX_SIZE,
        }
    }
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub(crate) enum Mode {
    /// Pipelined requests on many connections: messages per second.
    Throughput,
    /// One request in flight per connection: round-trip percentiles.
    Latency,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::Latency => "latency",
        }
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
struct Config {
    target: TargetName,
    mode: Mode,
    connections: usize,
    in_flight: usize,
    size: usize,
    duration: Duration,
    max_messages: u64,
    route: String,
    deflate: bool,
    /// `--tls-ca`: every connection over TLS.
    tls: Option<TlsClientOptions>,
    /// `--runtime`: what the clients (and a spawned service) run on.
    runtime: Runtime,
}

impl Config {
    fn from_args(args: &BenchArgs) -> Result<Self, String> {
        let latency = args.mode == Mode::Latency;
        let connections = args.connections.unwrap_or(if latency { 1 } else { 100 });
        let in_flight = args.in_flight.unwrap_or(if latency { 1 } else { 16 });
        if !(1..=MAX_CONNECTIONS).contains(&connections) {
            return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&in_flight) {
            return Err(format!("--in-flight must be 1..={MAX_IN_FLIGHT}"));
        }
        if latency && in_flight != 1 {
            return Err("--mode latency keeps one request in flight: drop --in-flight".to_owned());
        }
        if !(args.duration > 0.0 && args.duration <= MAX_DURATION) {
            return Err(format!("--duration must be in (0, {MAX_DURATION}] seconds"));
        }
        if args.max_messages == 0 {
            return Err("--max-messages must be at least 1".to_owned());
        }
        let max_size = args.target.max_size();
        if !(1..=max_size).contains(&args.size) {
            return Err(format!(
                "--size must be 1..={max_size} for {} (the service's default limit)",
                args.target.name()
            ));
        }
        if args.target == TargetName::Broker && in_flight > broker::MAX_IN_FLIGHT {
            return Err(format!(
                "--in-flight must be 1..={} for broker (a consumer's open requests)",
                broker::MAX_IN_FLIGHT
            ));
        }
        if args.target == TargetName::Broker
            && args.runtime == Runtime::Std
            && connections * in_flight > broker::MAX_STD_SLOTS
        {
            return Err(format!(
                "--runtime std: broker runs a thread per open request, so --connections × \
                 --in-flight must be at most {} ({connections} × {in_flight} here)",
                broker::MAX_STD_SLOTS
            ));
        }
        storm_proto::route::validate_route_name(
            &args.route,
            storm_proto::route::MAX_ROUTE_NAME_LEN_LIMIT,
        )
        .map_err(|e| format!("--route: {e}"))?;
        Ok(Self {
            target: args.target,
            mode: args.mode,
            connections,
            in_flight,
            size: args.size,
            duration: Duration::from_secs_f64(args.duration),
            max_messages: args.max_messages,
            route: args.route.clone(),
            deflate: args.deflate,
            tls: match &args.tls_ca {
                Some(path) => Some(TlsClientOptions::with_ca(
                    storm_host::tls::read_pem_file(path).map_err(|e| format!("--tls-ca: {e}"))?,
                )),
                None => None,
            },
            runtime: args.runtime,
        })
    }
}

/// `addr` resolved, if every address it names is a loopback address.
///
/// # Errors
///
/// A message for people: not an address, or not loopback.
pub(crate) fn loopback_addr(addr: &str) -> Result<SocketAddr, String> {
    sys::loopback_addr(addr).map_err(|e| match e {
        sys::AddrError::NotLoopback(bad) => format!(
            "--addr {addr} ({bad}) is not a loopback address: storm bench only drives \
             services on this machine (127.0.0.0/8, [::1], localhost)"
        ),
        e => format!("--addr {addr}: {e}"),
    })
}

/// Runs `storm bench`; see the module docs for the exit codes.
#[must_use]
pub(crate) fn run(args: &BenchArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => return usage(&e),
    };
    // Held until the end: dropping it stops the spawned services.
    let mut spawned = None;
    let addr = match (&args.addr, args.spawn) {
        (Some(addr), _) => match loopback_addr(addr) {
            Ok(addr) => addr,
            Err(e) => return usage(&e),
        },
        (None, _) => match spawn::spawn(config.target, &config.route, config.runtime) {
            Ok(service) => {
                let addr = service.addr;
                spawned = Some(service);
                addr
            }
            Err(e) => {
                eprintln!("storm bench: --spawn: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let pids = spawned.as_ref().map(spawn::Spawned::pids);
    let at = Where {
        addr,
        service_pids: pids.as_deref(),
    };
    let mut outcome = match config.runtime {
        Runtime::Tokio => on_async::run::<storm_tokio::Tokio>(&config, at, args.channel),
        Runtime::Smol => on_async::run::<storm_smol::Smol>(&config, at, args.channel),
        Runtime::Std => smol::block_on(targets::<on_std::Threads>(&config, at, args.channel)),
    };
    drop(spawned);
    outcome.require_answers(config.target, addr);
    let summary = Summary::new(&config, addr, &outcome);
    if args.json {
        println!("{}", summary.json());
    } else {
        println!("{}", summary.human());
    }
    if outcome.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `runtime` as `--runtime` takes it.
fn runtime_name(runtime: Runtime) -> String {
    runtime
        .to_possible_value()
        .map_or_else(String::new, |value| value.get_name().to_owned())
}

fn usage(e: &str) -> ExitCode {
    eprintln!("storm bench: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// What a runtime provides to run the load: its connections, set up and
/// pumped by [`Driver`]'s decisions (`on_async.rs` for tokio and smol,
/// `on_std.rs` on threads).
trait Engine {
    /// Opens every connection of `target`, runs the load through
    /// [`measure`] until the duration, the cap or an error ends it, and
    /// closes the connections.
    async fn drive<T: Target>(target: T, config: &Config, at: Where<'_>) -> Outcome;

    /// Runs the broker target (its own clients: see the `broker` module).
    async fn broker(config: &Config, at: Where<'_>, channel: Option<ChannelId>) -> Outcome;
}

/// Runs the target `config` names on engine `E`.
async fn targets<E: Engine>(config: &Config, at: Where<'_>, channel: Option<ChannelId>) -> Outcome {
    let size = config.size;
    let echo = |proto| target::Echo { proto, size };
    match config.target {
        TargetName::EchoRaw => E::drive(echo(EchoProto::Raw), config, at).await,
        TargetName::EchoLp => E::drive(echo(EchoProto::Lp), config, at).await,
        TargetName::EchoLine => E::drive(echo(EchoProto::Line), config, at).await,
        TargetName::EchoWs => E::drive(echo(EchoProto::Ws), config, at).await,
        TargetName::Json => E::drive(target::Json { size }, config, at).await,
        TargetName::Chat => {
            let run = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
            E::drive(target::Chat { size, run }, config, at).await
        }
        TargetName::Gateway => {
            let route = config.route.clone();
            E::drive(target::Gateway { route, size }, config, at).await
        }
        TargetName::Broker => E::broker(config, at, channel).await,
    }
}

/// Where the service is.
#[derive(Clone, Copy)]
struct Where<'a> {
    addr: SocketAddr,
    /// Its processes, when the bench started them.
    service_pids: Option<&'a [u32]>,
}

/// How every connection of a run connects.
struct Dial {
    /// The service.
    addr: SocketAddr,
    options: ClientOptions,
    how: How,
}

/// The protocol of a [`Dial`].
enum How {
    /// Plain TCP (or TLS) with this framing.
    Tcp(Framing),
    /// WebSocket to this URL.
    Ws { url: String, ws: WsOptions },
}

impl Dial {
    /// How the connections of `config` reach `addr` over `transport`.
    fn new(config: &Config, addr: SocketAddr, transport: Transport) -> Self {
        let mut options = ClientOptions::default().with_connect_timeout(target::SETUP_TIMEOUT);
        options.tls = config.tls.clone();
        let how = match transport {
            Transport::Tcp(framing) => How::Tcp(framing),
            Transport::Ws => {
                let mut ws = WsOptions::default();
                ws.deflate = config.deflate.then(DeflateConfig::default);
                // Room for the largest request any target sends, and answers.
                ws.config.max_message_size = ws.config.max_message_size.max(32 << 20);
                ws.config.max_frame_size = ws.config.max_frame_size.max(32 << 20);
                let scheme = if config.tls.is_some() { "wss" } else { "ws" };
                How::Ws {
                    url: format!("{scheme}://{addr}/"),
                    ws,
                }
            }
        };
        Self { addr, options, how }
    }
}

// ---------------------------------------------------------------- the run

/// What every connection of a run shares.
struct Run {
    max_messages: u64,
    /// Requests handed out (may pass `max_messages`; only the first
    /// `max_messages` are sent).
    issued: AtomicU64,
    /// Requests sent (granted from `issued`).
    sent: AtomicU64,
    /// Answers received.
    done: AtomicU64,
    /// No more requests once set.
    stopping: AtomicBool,
    latency: Histogram,
    /// Holds a wake-up once the run must end early: the cap reached, or an
    /// error ([`Run::finished`] waits for it).
    end_early: Sender<()>,
    ended_early: Receiver<()>,
    error: Mutex<Option<String>>,
}

impl Run {
    fn new(max_messages: u64) -> Self {
        let (end_early, ended_early) = smol::channel::bounded(1);
        Self {
            max_messages,
            issued: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            latency: Histogram::new(),
            end_early,
            ended_early,
            error: Mutex::new(None),
        }
    }

    /// How many of `want` more requests may be sent.
    fn tickets(&self, want: u64) -> u64 {
        if want == 0 || self.stopping.load(Ordering::Relaxed) {
            return 0;
        }
        let before = self.issued.fetch_add(want, Ordering::Relaxed);
        let granted = want.min(self.max_messages.saturating_sub(before));
        self.sent.fetch_add(granted, Ordering::Relaxed);
        granted
    }

    /// Counts `n` answers; ends the run at the cap.
    fn complete(&self, n: u64) {
        let total = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if total >= self.max_messages {
            self.stopping.store(true, Ordering::Relaxed);
            // Full: the wake-up is already there.
            let _ = self.end_early.try_send(());
        }
    }

    /// Ends the run with `error` (the first one is kept).
    fn fail(&self, error: String) {
        lock(&self.error).get_or_insert(error);
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.end_early.try_send(());
    }

    /// Completes once the run must end early (the cap, or an error).
    async fn finished(&self) {
        // The run holds the sender: never closed.
        let _ = self.ended_early.recv().await;
    }

    /// Records the round trips of requests sent at `sent` and answered at
    /// `now` (not once the run is stopping).
    fn record(&self, sent: impl IntoIterator<Item = Instant>, now: Instant) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        for sent in sent {
            let nanos = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
            self.latency.record(nanos);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where one connection is.
enum Phase<C> {
    /// Connecting and setting up: every message goes to the setup code.
    Setup(Sender<Message>),
    /// Under load.
    Pump {
        conn: C,
        /// When each outstanding request was sent, oldest first.
        sent_at: VecDeque<Instant>,
    },
    /// Failed or finished: messages are ignored.
    Done,
}

/// Messages a connection holds for its setup exchange before it reads no
/// more.
const SETUP_QUEUE: usize = 64;

/// One connection's state and every decision about it, shared by its
/// handler (on any runtime, which only carries the decisions out) and the
/// run.
struct Driver<C> {
    run: Arc<Run>,
    index: usize,
    phase: Mutex<Phase<C>>,
}

impl<C: Conn> Driver<C> {
    /// A connection in setup, and where its received messages go until
    /// [`Driver::set_up`] is done.
    fn new(run: Arc<Run>, index: usize) -> (Self, Receiver<Message>) {
        let (tx, inbox) = smol::channel::bounded(SETUP_QUEUE);
        let driver = Self {
            run,
            index,
            phase: Mutex::new(Phase::Setup(tx)),
        };
        (driver, inbox)
    }

    /// Runs `target`'s setup exchange on the fresh connection `wire`,
    /// whose messages arrive in `inbox`, until `deadline`; then this
    /// connection's protocol takes its messages. `Err`: why the run failed
    /// (the caller closes the connection).
    async fn set_up<T, W>(
        &self,
        target: &T,
        wire: &W,
        inbox: &Receiver<Message>,
        deadline: Instant,
        in_flight: usize,
    ) -> Result<(), String>
    where
        T: Target<Conn = C>,
        W: Wire,
    {
        let setup = Setup {
            wire,
            inbox,
            deadline,
            index: self.index,
        };
        match target.setup(setup).await {
            Ok(conn) => {
                *lock(&self.phase) = Phase::Pump {
                    conn,
                    sent_at: VecDeque::with_capacity(in_flight),
                };
                Ok(())
            }
            Err(e) => Err(format!("connection {}: {e}", self.index)),
        }
    }

    /// Where a received message goes during setup: the setup exchange's
    /// queue; `None` once it is over.
    fn setup_queue(&self) -> Option<Sender<Message>> {
        match &*lock(&self.phase) {
            Phase::Setup(tx) => Some(tx.clone()),
            _ => None,
        }
    }

    /// Takes up to `n` tickets and marks that many requests sent now:
    /// the messages to send.
    fn issue(phase: &mut Phase<C>, run: &Run, n: u64) -> Option<(u64, Message)> {
        let Phase::Pump { conn, sent_at } = phase else {
            return None;
        };
        let granted = run.tickets(n);
        if granted == 0 {
            return None;
        }
        let now = Instant::now();
        sent_at.extend(std::iter::repeat_n(now, granted as usize));
        Some((granted, conn.request()))
    }

    /// The first `window` requests: send `request` `n` times.
    fn start(&self, window: usize) -> Option<(u64, Message)> {
        Self::issue(&mut lock(&self.phase), &self.run, window as u64)
    }

    /// `message` arrived under load: counts what it answers and says what
    /// to send next (`request` `n` times), if anything.
    fn answered(&self, message: &Message) -> Option<(u64, Message)> {
        let run = &self.run;
        let mut phase = lock(&self.phase);
        let Phase::Pump { conn, sent_at } = &mut *phase else {
            return None;
        };
        let answered = match conn.answers(message) {
            Ok(n) => n,
            Err(e) => {
                *phase = Phase::Done;
                run.fail(format!("connection {}: {e}", self.index));
                return None;
            }
        };
        if answered == 0 {
            return None;
        }
        if answered > sent_at.len() as u64 {
            *phase = Phase::Done;
            run.fail(format!(
                "connection {}: more answers than requests",
                self.index
            ));
            return None;
        }
        run.record(sent_at.drain(..answered as usize), Instant::now());
        run.complete(answered);
        Self::issue(&mut phase, run, answered)
    }

    /// The connection ended: under load and before the run stopped, that
    /// fails the run (during setup, the setup exchange says why).
    fn disconnected(&self, reason: &CloseReason) {
        let was = std::mem::replace(&mut *lock(&self.phase), Phase::Done);
        if !self.run.stopping.load(Ordering::Relaxed) && !matches!(was, Phase::Setup(_)) {
            self.run.fail(format!(
                "connection {}: the service closed it ({reason:?})",
                self.index
            ));
        }
    }
}

/// The outcome of a run.
struct Outcome {
    /// Answers counted until the run ended.
    msgs: u64,
    /// Requests sent until the run ended (more than `msgs` when it ended
    /// on time with requests in flight).
    sent: u64,
    /// From the first request until the run ended.
    elapsed: Duration,
    /// Ctrl-C ended the run.
    interrupted: bool,
    /// CPU the bench used during the run.
    bench_cpu: Option<Duration>,
    /// CPU the service used during the run (when the bench started it).
    service_cpu: Option<Duration>,
    run: Arc<Run>,
    error: Option<String>,
}

impl Outcome {
    /// A run that failed before it started.
    fn failed(run: &Arc<Run>, error: String) -> Self {
        Self {
            msgs: 0,
            sent: 0,
            elapsed: Duration::ZERO,
            interrupted: false,
            bench_cpu: None,
            service_cpu: None,
            run: Arc::clone(run),
            error: Some(error),
        }
    }
}

impl Outcome {
    /// A run in which no request was answered has failed, whatever else
    /// happened: a service that speaks another protocol often just stays
    /// silent (`storm json` against a WebSocket server waits for an HTTP
    /// request that never comes). The error then says which service the
    /// target expects at `addr`.
    fn require_answers(&mut self, target: TargetName, addr: SocketAddr) {
        if self.msgs > 0 {
            return;
        }
        let service = target.service();
        self.error = Some(match self.error.take() {
            Some(e) => format!("{e} (is {addr} running `{service}`?)"),
            None => format!(
                "no request was answered in {:.1} s: is {addr} running `{service}`? \
                 (a service that speaks another protocol may never answer)",
                self.elapsed.as_secs_f64()
            ),
        });
    }
}

/// What wakes the timed part of a run.
enum Wake {
    /// The next progress line, or the end of the duration.
    Time,
    /// The cap, or an error.
    Finished,
    /// Ctrl-C.
    Interrupt,
}

/// The timed part of a run: calls `start` to send the first requests,
/// reports progress, and stops the run at its duration, its cap, an error
/// or Ctrl-C, waiting with `sleep_until` (the runtime's timer). `error` is
/// left for the caller to fill in once its connections are closed.
async fn measure<F: Future<Output = ()>>(
    run: &Arc<Run>,
    config: &Config,
    at: Where<'_>,
    sleep_until: impl Fn(Instant) -> F,
    start: impl FnOnce(),
) -> Outcome {
    let own_pid = [std::process::id()];
    let cpu_before = (
        cpu::total_cpu(&own_pid),
        at.service_pids.and_then(cpu::total_cpu),
    );
    let started = Instant::now();
    let mut progress = Progress::new(config, started);
    start();
    let deadline = started + config.duration;
    let mut tick = started + PROGRESS_EVERY;
    // From here on Ctrl-C ends the run early, with its summary (a second
    // one exits at once).
    if let Err(e) = storm_cli::interrupt::install() {
        tracing::warn!("Ctrl-C will not print a summary: {e}");
    }
    let mut ctrl_c = pin!(storm_cli::interrupt::ctrl_c());
    let mut interrupted = false;
    loop {
        let timer = async {
            sleep_until(deadline.min(tick)).await;
            Wake::Time
        };
        let finished = async {
            run.finished().await;
            Wake::Finished
        };
        let interrupt = async {
            (&mut ctrl_c).await;
            Wake::Interrupt
        };
        match or(interrupt, or(finished, timer)).await {
            Wake::Time => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if now >= tick {
                    progress.report(run);
                    // The next whole second of the run after now.
                    while tick <= now {
                        tick += PROGRESS_EVERY;
                    }
                }
            }
            Wake::Finished => break,
            Wake::Interrupt => {
                interrupted = true;
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    run.stopping.store(true, Ordering::Relaxed);
    let msgs = run.done.load(Ordering::Relaxed);
    let sent = run.sent.load(Ordering::Relaxed);
    let used = |before: Option<Duration>, now: Option<Duration>| Some(now?.saturating_sub(before?));
    let bench_cpu = used(cpu_before.0, cpu::total_cpu(&own_pid));
    let service_cpu = used(cpu_before.1, at.service_pids.and_then(cpu::total_cpu));
    progress.finish();
    Outcome {
        msgs,
        sent,
        elapsed,
        interrupted,
        bench_cpu,
        service_cpu,
        run: Arc::clone(run),
        error: None,
    }
}

// ---------------------------------------------------------------- output

/// The once-a-second progress line on stderr.
struct Progress {
    name: &'static str,
    start: Instant,
    last: (Instant, u64),
    terminal: bool,
    printed: bool,
}

impl Progress {
    fn new(config: &Config, start: Instant) -> Self {
        Self {
            name: config.target.name(),
            start,
            last: (start, 0),
            terminal: std::io::stderr().is_terminal(),
            printed: false,
        }
    }

    fn report(&mut self, run: &Run) {
        let now = Instant::now();
        let done = run.done.load(Ordering::Relaxed);
        let (then, before) = self.last;
        let rate = (done - before.min(done)) as f64 / (now - then).as_secs_f64().max(1e-9);
        self.last = (now, done);
        let h = &run.latency;
        let line = format!(
            "storm bench {}: {:.0} s, {done} msgs, {rate:.0} msgs/s, p50 {} us, p99 {} us",
            self.name,
            (now - self.start).as_secs_f64(),
            micros(h.quantile(0.5)),
            micros(h.quantile(0.99)),
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.printed = true;
    }

    fn finish(&self) {
        if self.terminal && self.printed {
            eprintln!();
        }
    }
}

/// `cpu` as a percentage of one core over `secs`.
fn pct(cpu: Duration, secs: f64) -> f64 {
    cpu.as_secs_f64() / secs.max(1e-9) * 100.0
}

/// Nanoseconds as microseconds with one decimal.
fn micros(nanos: u64) -> String {
    format!("{:.1}", nanos as f64 / 1000.0)
}

/// The figures of the summary.
struct Summary<'a> {
    config: &'a Config,
    addr: SocketAddr,
    msgs: u64,
    sent: u64,
    secs: f64,
    interrupted: bool,
    /// Percent of one core.
    bench_cpu_pct: Option<f64>,
    /// Percent of one core.
    service_cpu_pct: Option<f64>,
    service_us_per_msg: Option<f64>,
    rate: f64,
    mib: f64,
    samples: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    error: Option<&'a str>,
}

impl<'a> Summary<'a> {
    fn new(config: &'a Config, addr: SocketAddr, outcome: &'a Outcome) -> Self {
        let secs = outcome.elapsed.as_secs_f64();
        let rate = outcome.msgs as f64 / secs.max(1e-9);
        let h = &outcome.run.latency;
        Self {
            config,
            addr,
            msgs: outcome.msgs,
            sent: outcome.sent,
            secs,
            interrupted: outcome.interrupted,
            bench_cpu_pct: outcome.bench_cpu.map(|cpu| pct(cpu, secs)),
            service_cpu_pct: outcome.service_cpu.map(|cpu| pct(cpu, secs)),
            service_us_per_msg: outcome
                .service_cpu
                .filter(|_| outcome.msgs > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / outcome.msgs as f64),
            rate,
            mib: rate * config.size as f64 / f64::from(1 << 20),
            samples: h.count(),
            p50: h.quantile(0.5),
            p90: h.quantile(0.9),
            p99: h.quantile(0.99),
            max: h.max(),
            error: outcome.error.as_deref(),
        }
    }

    fn human(&self) -> String {
        let c = self.config;
        let mut line = format!(
            "{} {} {} ({}): {} conns x {} in flight x {} B: {} msgs in {:.3} s, {:.0} msgs/s, {:.2} MiB/s",
            c.target.name(),
            c.mode.name(),
            self.addr,
            runtime_name(c.runtime),
            c.connections,
            c.in_flight,
            c.size,
            self.msgs,
            self.secs,
            self.rate,
            self.mib,
        );
        if self.samples > 0 {
            line.push_str(&format!(
                "; round trip p50 {} us, p90 {} us, p99 {} us, max {} us",
                micros(self.p50),
                micros(self.p90),
                micros(self.p99),
                micros(self.max),
            ));
        }
        if let Some(cpu) = self.bench_cpu_pct {
            line.push_str(&format!("; bench CPU {cpu:.0}%"));
        }
        if let Some(cpu) = self.service_cpu_pct {
            line.push_str(&format!(", service CPU {cpu:.0}%"));
            if let Some(us) = self.service_us_per_msg {
                line.push_str(&format!(" ({us:.1} us/msg)"));
            }
        }
        if self.interrupted {
            line.push_str(" (interrupted)");
        }
        if let Some(e) = self.error {
            line.push_str(&format!("; ERROR: {e}"));
        }
        line
    }

    fn json(&self) -> serde_json::Value {
        let c = self.config;
        let us = |nanos: u64| nanos as f64 / 1000.0;
        json!({
            "target": c.target.name(),
            "mode": c.mode.name(),
            "runtime": runtime_name(c.runtime),
            "addr": self.addr.to_string(),
            "connections": c.connections,
            "in_flight": c.in_flight,
            "size": c.size,
            "elapsed_s": self.secs,
            "msgs": self.msgs,
            "sent": self.sent,
            "msgs_per_s": self.rate,
            "mib_per_s": self.mib,
            "latency_us": {
                "samples": self.samples,
                "p50": us(self.p50),
                "p90": us(self.p90),
                "p99": us(self.p99),
                "max": us(self.max),
            },
            "bench_cpu_pct": self.bench_cpu_pct,
            "service_cpu_pct": self.service_cpu_pct,
            "service_cpu_us_per_msg": self.service_us_per_msg,
            "interrupted": self.interrupted,
            "error": self.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(loopback_addr("127.0.0.1:9001").is_ok());
        assert!(loopback_addr("[::1]:9001").is_ok());
        assert!(loopback_addr("localhost:9001").is_ok());
        let e = loopback_addr("10.1.2.3:9001").unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
        assert!(loopback_addr("8.8.8.8:53").is_err());
    }

    /// `--help` states the std broker limit as the code applies it, and
    /// the default throughput run fits under it.
    #[test]
    fn the_std_broker_limit_is_in_the_help_and_fits_the_defaults() {
        use clap::{Args, FromArgMatches};
        let mut command = BenchArgs::augment_args(clap::Command::new("bench"));
        let help = command.render_long_help().to_string();
        let said = format!(
            "at most {} = --connections × --in-flight",
            broker::MAX_STD_SLOTS
        );
        assert!(help.contains(&said), "{help}");
        let matches = command
            .try_get_matches_from(["bench", "broker", "--spawn", "--runtime", "std"])
            .expect("valid flags");
        let args = BenchArgs::from_arg_matches(&matches).expect("bench arguments");
        let config = Config::from_args(&args).expect("the defaults run on std");
        assert_eq!((config.connections, config.in_flight), (100, 16));
    }

    #[test]
    fn a_run_without_answers_fails_naming_the_service() {
        let run = Arc::new(Run::new(10));
        let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let mut silent = Outcome::failed(&run, String::new());
        silent.error = None;
        silent.elapsed = Duration::from_millis(2_000);
        silent.require_answers(TargetName::Json, addr);
        assert_eq!(
            silent.error.as_deref(),
            Some(
                "no request was answered in 2.0 s: is 127.0.0.1:9001 running `storm json`? \
                 (a service that speaks another protocol may never answer)"
            )
        );
        // Interrupted before any answer: failed too.
        let mut interrupted = Outcome::failed(&run, String::new());
        interrupted.error = None;
        interrupted.interrupted = true;
        interrupted.require_answers(TargetName::Broker, addr);
        assert!(interrupted.error.is_some());
        // An error before any answer keeps its reason.
        let mut refused = Outcome::failed(&run, "setup timed out".to_owned());
        refused.require_answers(TargetName::Chat, addr);
        assert_eq!(
            refused.error.as_deref(),
            Some("setup timed out (is 127.0.0.1:9001 running `storm chat`?)")
        );
        // Answers: nothing to add, with or without an error.
        let mut answered = Outcome::failed(&run, "later failure".to_owned());
        answered.msgs = 1;
        answered.require_answers(TargetName::Chat, addr);
        assert_eq!(answered.error.as_deref(), Some("later failure"));
        answered.error = None;
        answered.require_answers(TargetName::Chat, addr);
        assert_eq!(answered.error, None);
    }

    /// Answers as many requests as the message has bytes; `x` is wrong.
    struct Counting;

    impl Conn for Counting {
        fn request(&mut self) -> Message {
            Message::from("q")
        }

        fn answers(&mut self, message: &Message) -> Result<u64, String> {
            match message.as_bytes() {
                b"x" => Err("wrong".to_owned()),
                bytes => Ok(bytes.len() as u64),
            }
        }
    }

    fn pumping(max_messages: u64) -> Driver<Counting> {
        let (driver, _inbox) = Driver::new(Arc::new(Run::new(max_messages)), 3);
        *lock(&driver.phase) = Phase::Pump {
            conn: Counting,
            sent_at: VecDeque::new(),
        };
        driver
    }

    #[test]
    fn a_connection_sends_a_request_for_every_answer_until_the_cap() {
        let driver = pumping(5);
        let (n, request) = driver.start(4).expect("the first window");
        assert_eq!((n, request.as_bytes()), (4, &b"q"[..]));
        // Not an answer: nothing counted, nothing sent.
        assert!(driver.answered(&Message::from("")).is_none());
        // Two answers: two more requests, but only one is left under the cap.
        let (n, _) = driver.answered(&Message::from("aa")).expect("more");
        assert_eq!(n, 1);
        assert_eq!(driver.run.done.load(Ordering::Relaxed), 2);
        assert_eq!(driver.run.latency.count(), 2);
        assert!(driver.answered(&Message::from("aaa")).is_none());
        assert!(driver.run.stopping.load(Ordering::Relaxed));
        assert_eq!(driver.run.sent.load(Ordering::Relaxed), 5);
        assert_eq!(driver.run.done.load(Ordering::Relaxed), 5);
        assert_eq!(*lock(&driver.run.error), None);
        // Closed once stopping: not a failure.
        driver.disconnected(&CloseReason::Eof);
        assert_eq!(*lock(&driver.run.error), None);
    }

    #[test]
    fn a_wrong_answer_or_one_too_many_fails_the_run() {
        let driver = pumping(100);
        let _ = driver.start(1);
        assert!(driver.answered(&Message::from("x")).is_none());
        assert_eq!(
            lock(&driver.run.error).as_deref(),
            Some("connection 3: wrong")
        );
        // Done: later messages are ignored.
        assert!(driver.answered(&Message::from("a")).is_none());

        let driver = pumping(100);
        let _ = driver.start(1);
        assert!(driver.answered(&Message::from("aa")).is_none());
        assert_eq!(
            lock(&driver.run.error).as_deref(),
            Some("connection 3: more answers than requests")
        );
    }

    #[test]
    fn a_close_fails_the_run_under_load_but_not_in_setup() {
        let (in_setup, _inbox) = Driver::<Counting>::new(Arc::new(Run::new(10)), 0);
        assert!(in_setup.setup_queue().is_some());
        in_setup.disconnected(&CloseReason::Eof);
        assert_eq!(*lock(&in_setup.run.error), None);

        let driver = pumping(10);
        assert!(driver.setup_queue().is_none());
        driver.disconnected(&CloseReason::Eof);
        assert!(
            lock(&driver.run.error)
                .as_deref()
                .is_some_and(|e| e.starts_with("connection 3: the service closed it")),
        );
    }

    #[test]
    fn tickets_stop_at_the_cap() {
        let run = Run::new(10);
        assert_eq!(run.tickets(4), 4);
        assert_eq!(run.tickets(4), 4);
        assert_eq!(run.tickets(4), 2);
        assert_eq!(run.tickets(4), 0);
        run.complete(9);
        assert!(!run.stopping.load(Ordering::Relaxed));
        run.complete(1);
        assert!(run.stopping.load(Ordering::Relaxed));
    }
}
