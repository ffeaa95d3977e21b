//! `storm json` and `storm client json`: the command line of the
//! length-prefixed JSON service ([`storm_services::json`], where the
//! protocol is documented). `storm client json` runs on the runtime of
//! its `--runtime` too: its modes are written once over a [`Wire`], the
//! connection on tokio or smol (`json/on_async.rs`) or on storm-std's
//! threads (`json/on_std.rs`); with `--reconnect` it connects again after
//! a drop ([`crate::reconnect`]).

mod on_async;
mod on_std;

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use serde_json::{Value, json};
use storm_host::options::{ClientOptions, ServerOptions, TlsClientOptions};
use storm_proto::Message;
use storm_proto::framing::{Framing, LengthPrefixConfig};
use storm_services::host::{self, AsyncRuntime, Listen};
use storm_services::json::{JsonConfig, JsonService, decode, encode, now};
use storm_services::rpc::Endpoint;
use tokio::sync::mpsc;

use storm_cli::policy::{PolicyArgs, Service};
use storm_cli::runtime::{Runtime, TlsArgs};

use crate::SHUTDOWN_TIMEOUT;
use crate::reconnect::{Reconnect, ReconnectArgs};

/// Options of `storm json`.
#[derive(Debug, clap::Args)]
pub(crate) struct JsonArgs {
    // The doc comment is `--help` text (clap shows it verbatim), not
    // Markdown: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Address to listen on (IPv4 or IPv6, e.g. [::1]:9100).
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: String,
    /// Greet every client with a `welcome` message when it connects, as the
    /// reference Python server does. Off by default: the protocol document
    /// does not list it, and a strict request/response client would take it
    /// for the reply to its first request.
    #[arg(long)]
    welcome: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Runtime to serve on: tokio or smol (async tasks), or std (two
    /// threads per connection).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

/// Options of `storm client json`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// Address of the `storm json` server: host:port (tcp://host:port), or
    /// tls://host:port over TLS (also what --tls-ca makes of host:port).
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: String,
    /// Connect over TLS, trusting the CA certificates in this PEM file
    /// (e.g. the ca.pem of `storm cert`) instead of the public web roots.
    #[arg(long, value_name = "CA_PEM")]
    tls_ca: Option<PathBuf>,
    /// `--reconnect`: after a drop, demo retries the step it was on,
    /// interactive goes on reading commands, perf counts the requests in
    /// flight as lost and goes on.
    #[command(flatten)]
    reconnect: ReconnectArgs,
    /// Runtime to run the client on: tokio or smol (async tasks), or std
    /// (storm-std's blocking threads).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
    /// What to do once connected.
    #[arg(long, value_enum, default_value_t = Mode::Demo)]
    mode: Mode,
    /// perf: the most requests to send.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// perf: the most seconds to send for (whichever of count and duration
    /// comes first ends the run).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// perf: requests in flight at once. 1 measures pure round trips; more
    /// raises throughput and adds queueing to each request's latency.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    window: u32,
    /// perf: bytes of `content` in each echo request.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to wait for any one reply before giving up.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

/// What `storm client json` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Send one message of each kind and print the replies.
    Demo,
    // `--help` text (clap shows it verbatim): `<text>` is a placeholder.
    #[allow(rustdoc::invalid_html_tags)]
    /// Read commands from stdin: /ping, /echo <text>, /broadcast <text>,
    /// /stats, /custom <type>, /exit; other text is sent as it is.
    Interactive,
    /// Send many echo requests and print msgs/s and round-trip latency.
    Perf,
}

// ---------------------------------------------------------------- server

/// Runs `storm json` until Ctrl-C, on the runtime of `--runtime`.
pub(crate) fn serve(args: &JsonArgs) -> io::Result<()> {
    let mut options = ServerOptions::default().with_addr(args.addr.clone());
    args.tls.apply(&mut options)?;
    let policy = args.policy.resolve(&SERVICE)?;
    policy.apply(&mut options);
    let mut framing = LengthPrefixConfig::default();
    framing.max_frame_len = policy.max_message;
    let framing = Framing::LengthPrefixWith(framing);
    let metrics = storm_cli::metrics::bind(args.policy.metrics_addr.as_deref())?;
    storm_cli::interrupt::install()?;
    let stop = storm_cli::interrupt::signal();
    let listen = Listen::Tcp(framing);
    host::serve(
        args.runtime.into(),
        options,
        listen,
        &stop,
        SHUTDOWN_TIMEOUT,
        |bound| {
            banner(args, bound.local_addr);
            storm_cli::metrics::start(metrics, "json", &bound.hub);
            JsonService::new(config(args, policy.max_message), bound.hub.clone())
        },
    )
}

/// `storm json`: length-prefixed TCP (no ping), messages up to 1 MiB.
const SERVICE: Service = Service {
    max_message: 1 << 20,
    ..Service::tcp("storm json")
};

fn config(args: &JsonArgs, max_message: usize) -> JsonConfig {
    let mut config = JsonConfig::default();
    config.welcome = args.welcome;
    config.max_message = max_message;
    config
}

fn banner(args: &JsonArgs, addr: SocketAddr) {
    println!(
        "storm json (length-prefixed JSON, {:?} runtime) listening on {}://{addr}",
        args.runtime,
        args.tls.scheme(false)
    );
}

// ---------------------------------------------------------------- client

/// Runs `storm client json` in its mode, on the runtime of `--runtime`.
pub(crate) fn client(args: &ClientArgs) -> io::Result<()> {
    let timeout = seconds(args.timeout, "--timeout")?;
    let (addr, options) = tcp_target(&args.addr, args.tls_ca.as_ref())?;
    let reconnect = Reconnect::new(CLIENT, &args.reconnect)?;
    let target = Target {
        addr,
        options,
        timeout,
    };
    match args.runtime {
        Runtime::Tokio => storm_tokio::Tokio::block_on(run::<
            on_async::AsyncWire<storm_tokio::Tokio>,
        >(args, target, reconnect)),
        Runtime::Smol => storm_smol::Smol::block_on(run::<on_async::AsyncWire<storm_smol::Smol>>(
            args, target, reconnect,
        )),
        // The connection runs on storm-std's threads; the client's own
        // loop waits on this thread.
        Runtime::Std => smol::block_on(run::<on_std::StdWire>(args, target, reconnect)),
    }
}

/// Connects and runs the mode of `args` over a `W`.
async fn run<W: Wire>(args: &ClientArgs, target: Target, reconnect: Reconnect) -> io::Result<()> {
    let mut conn = Conn::<W>::connect(target, reconnect).await?;
    let result = match args.mode {
        Mode::Demo => demo(&mut conn).await,
        Mode::Interactive => interactive(&mut conn).await,
        Mode::Perf => {
            let limits = PerfLimits {
                count: args.count,
                duration: seconds(args.duration, "--duration")?,
                window: args.window,
                size: args.size,
            };
            perf(&mut conn, &limits).await
        }
    };
    conn.wire.close();
    result
}

/// Where `storm client json` connects, and how long it waits for a reply.
struct Target {
    addr: String,
    options: ClientOptions,
    timeout: Duration,
}

/// Who `storm client json` speaks as on stderr.
const CLIENT: &str = "storm client json";

/// The address to connect to and the options for it, from `--addr`
/// (`host:port`, `tcp://host:port` or `tls://host:port`) and `--tls-ca`
/// (which turns TLS on, as `storm client tcp` does).
///
/// # Errors
///
/// A malformed address, or an unreadable `--tls-ca` file.
pub(crate) fn tcp_target(
    text: &str,
    tls_ca: Option<&PathBuf>,
) -> io::Result<(String, ClientOptions)> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let (addr, tls) = match Endpoint::parse(text).map_err(|e| invalid(e.to_string()))? {
        Endpoint::Tcp(addr) => (addr, tls_ca.is_some()),
        Endpoint::Tls(addr) => (addr, true),
        other => {
            return Err(invalid(format!(
                "{other} is not host:port, tcp:// or tls://"
            )));
        }
    };
    let mut options = ClientOptions::default();
    if tls {
        options.tls = Some(match tls_ca {
            Some(path) => TlsClientOptions::with_ca(
                storm_host::tls::read_pem_file(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("--tls-ca: {e}")))?,
            ),
            None => TlsClientOptions::default(),
        });
    }
    Ok((addr, options))
}

/// A positive, finite number of seconds.
fn seconds(value: f64, flag: &str) -> io::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{flag} must be a positive number of seconds"),
            )
        })
}

/// `storm client json`'s connection on one runtime: connecting, sending,
/// closing, and the runtime's timer. What arrives goes to the [`Inbox`]
/// it was connected with.
trait Wire: Sized {
    /// Connects to `addr`, handing every message to `inbox`.
    ///
    /// # Errors
    ///
    /// The connection cannot be made, as a sentence.
    fn connect(
        addr: &str,
        options: ClientOptions,
        inbox: Inbox,
    ) -> impl Future<Output = Result<Self, String>>;

    /// Sends `message`, waiting while the connection is backpressured.
    ///
    /// # Errors
    ///
    /// The connection is gone.
    fn send(&self, message: Message) -> impl Future<Output = io::Result<()>>;

    /// Closes the connection (gracefully: what is queued goes first).
    fn close(&self);

    /// Completes at `deadline`.
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()>;
}

/// Where a connection's handler puts every message it receives, for the
/// client's loop: a bounded queue (while it is full the connection reads
/// nothing more: bounded memory, not dropped messages), closed when the
/// connection ends.
struct Inbox(Mutex<Option<mpsc::Sender<Message>>>);

/// Messages the [`Inbox`] holds before the connection stops reading.
const INBOX_CAPACITY: usize = 1024;

impl Inbox {
    /// An inbox and the receiving end of its queue.
    fn new() -> (Self, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        (Self(Mutex::new(Some(tx))), rx)
    }

    /// The queue's sending end, until the connection ended.
    fn sender(&self) -> Option<mpsc::Sender<Message>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The connection ended: the receiver sees the end once it has taken
    /// what is queued.
    fn close(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// A connected client: sending, and replies in arrival order; with
/// `--reconnect`, connected again after a drop.
struct Conn<W> {
    wire: W,
    inbox: mpsc::Receiver<Message>,
    target: Target,
    reconnect: Reconnect,
}

/// The error kind of a dropped connection: the one [`Conn::recover`]
/// reconnects after.
const DROPPED: io::ErrorKind = io::ErrorKind::ConnectionAborted;

impl<W: Wire> Conn<W> {
    /// Connects; with `--reconnect`, tries until it connects or runs out of
    /// attempts.
    async fn connect(target: Target, mut reconnect: Reconnect) -> io::Result<Self> {
        let (wire, inbox) = open::<W>(&target, &mut reconnect).await?;
        Ok(Self {
            wire,
            inbox,
            target,
            reconnect,
        })
    }

    /// After `error`: when it is a drop and `--reconnect` is on, connects
    /// again (waiting out the backoff) and returns `Ok`, so the caller
    /// retries; else `error` itself.
    async fn recover(&mut self, error: io::Error) -> io::Result<()> {
        if error.kind() != DROPPED || !self.reconnect.is_on() {
            return Err(error);
        }
        self.wire.close();
        let Some(delay) = self.reconnect.after(&format_args!("disconnected: {error}")) else {
            return Err(error);
        };
        W::sleep_until(Instant::now() + delay).await;
        let (wire, inbox) = open::<W>(&self.target, &mut self.reconnect).await?;
        self.wire = wire;
        self.inbox = inbox;
        Ok(())
    }

    async fn send(&self, value: &Value) -> io::Result<()> {
        self.send_message(encode(value)).await
    }

    async fn send_message(&self, message: Message) -> io::Result<()> {
        self.wire.send(message).await
    }

    /// The next message, waiting at most `limit`: `Ok(None)` once the
    /// connection has ended and everything it received was taken.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] when nothing came within `limit`.
    async fn next_within(&mut self, limit: Duration) -> io::Result<Option<Message>> {
        let deadline = Instant::now() + limit;
        let next = async { Ok(self.inbox.recv().await) };
        let late = async {
            W::sleep_until(deadline).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply within {limit:?}"),
            ))
        };
        smol::future::or(next, late).await
    }

    /// The next message, waiting at most the reply timeout.
    async fn recv(&mut self) -> io::Result<Value> {
        match self.next_within(self.target.timeout).await? {
            Some(message) => Ok(decode(&message)),
            None => Err(closed()),
        }
    }

    /// Prints messages until one of type `wanted` arrives (others, such as
    /// broadcasts from other clients, are printed as they come).
    async fn expect(&mut self, wanted: &str) -> io::Result<()> {
        loop {
            let reply = self.recv().await?;
            println!("<- {reply}");
            if reply.get("type").and_then(Value::as_str) == Some(wanted) {
                return Ok(());
            }
        }
    }

    /// Sends `request` and prints messages until one of type `wanted`;
    /// after a drop (with `--reconnect`) does it again on the new
    /// connection.
    async fn exchange(&mut self, request: &Message, wanted: &str) -> io::Result<()> {
        loop {
            let done = match self.send_message(request.clone()).await {
                Ok(()) => self.expect(wanted).await,
                Err(e) => Err(e),
            };
            match done {
                Err(e) => self.recover(e).await?,
                Ok(()) => return Ok(()),
            }
        }
    }
}

/// The server closed the connection.
fn closed() -> io::Error {
    io::Error::new(DROPPED, "the server closed the connection")
}

/// Connects to the target, waiting out the backoff between failed
/// attempts while `reconnect` allows more.
async fn open<W: Wire>(
    target: &Target,
    reconnect: &mut Reconnect,
) -> io::Result<(W, mpsc::Receiver<Message>)> {
    let addr = &target.addr;
    loop {
        let (inbox, rx) = Inbox::new();
        match W::connect(addr, target.options.clone(), inbox).await {
            Ok(wire) => {
                reconnect.connected();
                return Ok((wire, rx));
            }
            Err(e) => {
                let why = format!("connecting to {addr}: {e}");
                match reconnect.after(&why) {
                    Some(delay) => W::sleep_until(Instant::now() + delay).await,
                    None => return Err(io::Error::other(why)),
                }
            }
        }
    }
}

fn ping() -> Value {
    json!({"type": "ping", "timestamp": now(), "client_info": "storm client json"})
}

fn echo(content: &str) -> Value {
    json!({"type": "echo", "content": content, "timestamp": now()})
}

fn broadcast(content: &str) -> Value {
    json!({"type": "broadcast", "content": content, "timestamp": now()})
}

fn get_stats() -> Value {
    json!({"type": "get_stats", "timestamp": now()})
}

fn custom(kind: &str) -> Value {
    json!({"type": kind, "data": "value", "timestamp": now()})
}

/// One of each message, each reply printed before the next is sent.
async fn demo<W: Wire>(conn: &mut Conn<W>) -> io::Result<()> {
    let requests = [
        (ping(), "pong"),
        (echo("Hello TCP Server!"), "echo_response"),
        (broadcast("Hello all clients!"), "broadcast_sent"),
        (get_stats(), "server_stats"),
        (custom("custom_type"), "response"),
    ];
    for (request, wanted) in requests {
        println!("-> {request}");
        conn.exchange(&encode(&request), wanted).await?;
    }
    let text = "Plain text message";
    println!("-> {text}");
    let message = Message::from(Bytes::from_static(text.as_bytes()));
    conn.exchange(&message, "echo").await?;
    println!("demo done");
    Ok(())
}

/// What an interactive line asks for.
#[derive(Debug, PartialEq)]
enum Line {
    Send(Value),
    Text(String),
    Exit,
    Help,
    Nothing,
}

const HELP: &str = "commands: /ping, /echo <text>, /broadcast <text>, /stats, /custom <type>, /exit; other text is sent as it is";

fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Line::Nothing;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Line::Text(line.to_owned());
    };
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    let rest = rest.trim();
    match (name, rest.is_empty()) {
        ("ping", true) => Line::Send(ping()),
        ("echo", false) => Line::Send(echo(rest)),
        ("broadcast", false) => Line::Send(broadcast(rest)),
        ("stats", true) => Line::Send(get_stats()),
        ("custom", false) => Line::Send(custom(rest)),
        ("exit" | "quit", true) => Line::Exit,
        _ => Line::Help,
    }
}

/// Commands from stdin; everything received is printed as it arrives. Ends
/// on `/exit`, at the end of input (after replies stop coming for a
/// moment), or when the server closes the connection (with `--reconnect`:
/// connects again, and a command the dropped connection refused is sent on
/// the new one).
async fn interactive<W: Wire>(conn: &mut Conn<W>) -> io::Result<()> {
    /// What the loop waits for first.
    enum Next {
        /// A line from stdin (`None`: its end).
        Line(Option<String>),
        /// A message (`None`: the connection ended).
        Message(Option<Message>),
    }
    let (tx, mut lines) = mpsc::channel::<String>(16);
    // Blocking stdin on its own thread; it ends with the process.
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    println!("{HELP}");
    loop {
        // Both receivers are cancel-safe: the one that loses keeps its item.
        let next = smol::future::or(async { Next::Line(lines.recv().await) }, async {
            Next::Message(conn.inbox.recv().await)
        })
        .await;
        match next {
            Next::Line(None) => break,
            Next::Line(Some(line)) => {
                let message = match parse_line(&line) {
                    Line::Send(request) => {
                        println!("-> {request}");
                        encode(&request)
                    }
                    Line::Text(text) => {
                        println!("-> {text}");
                        Message::from(Bytes::from(text))
                    }
                    Line::Exit => break,
                    Line::Help => {
                        println!("{HELP}");
                        continue;
                    }
                    Line::Nothing => continue,
                };
                while let Err(e) = conn.send_message(message.clone()).await {
                    conn.recover(e).await?;
                }
            }
            Next::Message(None) => {
                if !conn.reconnect.is_on() {
                    println!("the server closed the connection");
                    return Ok(());
                }
                conn.recover(closed()).await?;
            }
            Next::Message(Some(message)) => println!("<- {}", decode(&message)),
        }
    }
    // Replies to the last commands may still be on their way.
    let grace = Duration::from_millis(500);
    while let Ok(Some(message)) = conn.next_within(grace).await {
        println!("<- {}", decode(&message));
    }
    Ok(())
}

/// Bounds of a perf run.
struct PerfLimits {
    count: u64,
    duration: Duration,
    window: u32,
    size: usize,
}

/// Sends echo requests, at most `window` in flight, until `count` are sent
/// or `duration` has passed, then prints throughput and latency. After a
/// drop (with `--reconnect`) the requests in flight are counted as lost
/// and the run goes on on the new connection.
///
/// Latency here is the true round trip of each request: from just before it
/// is sent until its `echo_response` arrives (replies come back in order on
/// one connection, so they are matched first in, first out), reported as
/// percentiles over all requests. The reference client's "latency" is the
/// run's duration divided by the number of messages, which is inverse
/// throughput: it hides every slow request and shrinks as the window grows.
async fn perf<W: Wire>(conn: &mut Conn<W>, limits: &PerfLimits) -> io::Result<()> {
    let content = "x".repeat(limits.size);
    let window = usize::try_from(limits.window).unwrap_or(usize::MAX);
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(window);
    let mut round_trips: Vec<Duration> = Vec::new();
    let mut sent: u64 = 0;
    let mut lost: u64 = 0;
    let start = Instant::now();
    let deadline = start + limits.duration;
    loop {
        let step = async {
            while in_flight.len() < window && sent < limits.count && Instant::now() < deadline {
                let request = json!({"type": "echo", "content": content, "seq": sent});
                in_flight.push_back(Instant::now());
                sent += 1;
                conn.send(&request).await?;
            }
            if in_flight.is_empty() {
                return Ok(None);
            }
            conn.recv().await.map(Some)
        };
        let reply = match step.await {
            Ok(Some(reply)) => reply,
            Ok(None) => break,
            Err(e) => {
                conn.recover(e).await?;
                lost += in_flight.len() as u64;
                in_flight.clear();
                continue;
            }
        };
        // Anything else (a broadcast from another client) is not ours.
        if reply.get("type").and_then(Value::as_str) == Some("echo_response")
            && let Some(sent_at) = in_flight.pop_front()
        {
            round_trips.push(sent_at.elapsed());
        }
    }
    let elapsed = start.elapsed();
    round_trips.sort_unstable();
    let rate = round_trips.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    println!(
        "perf: {} round trips in {:.3} s, window {}, {} bytes of content: {rate:.0} msgs/s",
        round_trips.len(),
        elapsed.as_secs_f64(),
        limits.window,
        limits.size,
    );
    if lost > 0 {
        println!("perf: {lost} requests lost to reconnects");
    }
    println!(
        "round-trip latency: p50 {} us, p99 {} us, max {} us",
        micros(percentile(&round_trips, 50)),
        micros(percentile(&round_trips, 99)),
        micros(round_trips.last().copied()),
    );
    Ok(())
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: usize) -> Option<Duration> {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn micros(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_micros().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_lines() {
        assert!(matches!(parse_line("/ping"), Line::Send(v) if v["type"] == "ping"));
        assert!(
            matches!(parse_line("/echo hello there"), Line::Send(v) if v["type"] == "echo" && v["content"] == "hello there")
        );
        assert!(
            matches!(parse_line("/broadcast hi"), Line::Send(v) if v["type"] == "broadcast" && v["content"] == "hi")
        );
        assert!(matches!(parse_line("/stats"), Line::Send(v) if v["type"] == "get_stats"));
        assert!(matches!(parse_line("/custom my_type"), Line::Send(v) if v["type"] == "my_type"));
        assert_eq!(parse_line("/exit"), Line::Exit);
        assert_eq!(parse_line("/echo"), Line::Help);
        assert_eq!(parse_line("/nope"), Line::Help);
        assert_eq!(parse_line("   "), Line::Nothing);
        assert_eq!(
            parse_line("just text\r"),
            Line::Text("just text".to_owned())
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&samples, 50), Some(Duration::from_micros(50)));
        assert_eq!(percentile(&samples, 99), Some(Duration::from_micros(99)));
        assert_eq!(
            percentile(&samples[..1], 99),
            Some(Duration::from_micros(1))
        );
        assert_eq!(percentile(&[], 50), None);
    }
}
