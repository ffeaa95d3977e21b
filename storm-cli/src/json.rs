//! `storm json` and `storm client json`: the length-prefixed JSON service.
//!
//! Wire format: every message is a 4-byte big-endian length, then that many
//! bytes of UTF-8 JSON. The server answers
//!
//! | request `type` | reply `type` | reply fields |
//! |---|---|---|
//! | `ping` | `pong` | `ping_timestamp` (the ping's `timestamp`, as sent), `pong_timestamp`, `client_id` (`ip:port` of the client) |
//! | `echo` | `echo_response` | `content` (as sent), `timestamp`, `echoed_by` |
//! | `broadcast` | `broadcast_sent` | `recipients` (how many other clients got it), `timestamp` |
//! | `get_stats` | `server_stats` | `connected_clients`, `uptime_seconds`, `total_messages`, `server_start_time`, `current_time` |
//! | anything else, or none | `response` | `original_message` (the request object), `timestamp`, `from_server: true` |
//!
//! A broadcast reaches every *other* client as
//! `{"type": "broadcast", "from_client", "content", "timestamp"}`.
//!
//! A payload that is UTF-8 but not a JSON object (plain text, malformed
//! JSON, a bare number) is answered, as the reference server does, with
//! `{"type": "echo", "original_text", "timestamp", "from_server": true}`:
//! `original_text` is the parsed value for valid JSON and the text itself
//! otherwise. A payload that is not UTF-8 gets
//! `{"type": "error", "error", "timestamp"}`. In both cases the connection
//! stays open. A length prefix above `--max-message` closes that
//! connection at once, before anything is buffered; the server goes on. A
//! reply that would exceed `--max-message` (the echo of a request near the
//! limit) is replaced by an `error` reply.
//!
//! `storm json --runtime tokio|smol|std` (default tokio) serves the same
//! protocol on each adapter: `JsonService` decides every reply once, over
//! the core's `Peer` and `Hub`; `AsyncJson` (tokio and smol, through
//! storm-async) and `StdJson` only send it. `storm client json` runs on
//! tokio.
//!
//! Timestamps are UTC, ISO 8601 with milliseconds:
//! `2024-01-01T12:00:00.000Z`.
//!
//! `total_messages` counts the messages the server received from all
//! clients since it started, the `get_stats` request being answered
//! included. (The reference server counts only broadcast deliveries, which
//! leaves the figure at 0 for a server that answers thousands of pings.)

use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::ValueEnum;
use serde_json::{Map, Value, json};
use storm_cli::runtime::connection_error;
use storm_host::hub::Hub;
use storm_host::options::{ClientOptions, Framing, ServerOptions};
use storm_host::peer::Peer;
use storm_proto::Message;
use storm_proto::framing::LengthPrefixConfig;
use storm_tokio::{Client, Handler, Session, TcpClient};
use tokio::sync::mpsc;

use storm_cli::runtime::{AsyncRuntime, Runtime, TlsArgs, shutdown_on_ctrl_c, std_until_ctrl_c};

/// Options of `storm json`.
#[derive(Debug, clap::Args)]
pub(crate) struct JsonArgs {
    // The doc comment is `--help` text (clap shows it verbatim), not
    // Markdown: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Address to listen on (IPv4 or IPv6, e.g. [::1]:9100).
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: String,
    /// Largest message accepted, in bytes. A client that declares a longer
    /// one is disconnected.
    #[arg(long, default_value_t = 1 << 20)]
    max_message: usize,
    /// Greet every client with a `welcome` message when it connects, as the
    /// reference Python server does. Off by default: the protocol document
    /// does not list it, and a strict request/response client would take it
    /// for the reply to its first request.
    #[arg(long)]
    welcome: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Runtime to serve on: tokio or smol (async tasks), or std (two
    /// threads per connection).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

/// Options of `storm client json`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// Address of the `storm json` server.
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: String,
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
    let mut options = ServerOptions {
        addr: args.addr.clone(),
        ..ServerOptions::default()
    };
    args.tls.apply(&mut options)?;
    let mut framing = LengthPrefixConfig::default();
    framing.max_frame_len = args.max_message;
    let framing = Framing::LengthPrefixWith(framing);
    storm_cli::interrupt::install()?;
    match args.runtime {
        Runtime::Tokio => serve_async::<storm_tokio::Tokio>(args, options, framing),
        Runtime::Smol => serve_async::<storm_smol::Smol>(args, options, framing),
        Runtime::Std => serve_std(args, options, framing),
    }
}

fn banner(args: &JsonArgs, addr: SocketAddr) {
    println!(
        "storm json (length-prefixed JSON, {:?} runtime) listening on {}://{addr}",
        args.runtime,
        args.tls.scheme(false)
    );
}

/// tokio and smol: one generic server over storm-async.
fn serve_async<R: AsyncRuntime>(
    args: &JsonArgs,
    options: ServerOptions,
    framing: Framing,
) -> io::Result<()> {
    R::block_on(async {
        let server = storm_async::TcpServer::<R>::bind(options, framing).await?;
        let service = JsonService::new(args, server.handle().hub().clone());
        banner(args, server.local_addr());
        shutdown_on_ctrl_c(server.handle(), crate::SHUTDOWN_TIMEOUT);
        server.serve(AsyncJson(service)).await
    })
}

/// std: blocking threads, stopped from the main thread on Ctrl-C.
fn serve_std(args: &JsonArgs, options: ServerOptions, framing: Framing) -> io::Result<()> {
    let server = storm_std::TcpServer::bind(options, framing)?;
    let service = JsonService::new(args, server.handle().hub().clone());
    banner(args, server.local_addr());
    let handle = server.handle();
    let serving = server.spawn(StdJson(service))?;
    std_until_ctrl_c(&handle, serving, crate::SHUTDOWN_TIMEOUT)
}

/// The json service on tokio and smol.
struct AsyncJson(JsonService);

impl storm_async::Handler for AsyncJson {
    async fn on_connect(&self, session: &storm_async::Session) {
        if let Some(welcome) = self.0.welcome(session) {
            let _ = session.send(welcome).await;
        }
    }

    async fn on_message(&self, session: &storm_async::Session, message: Message) {
        // A send fails only when the session is already closing.
        let _ = session.send(self.0.reply_to(session, &message)).await;
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// The json service on blocking threads.
struct StdJson(JsonService);

impl storm_std::Handler for StdJson {
    fn on_connect(&self, session: &storm_std::Session) {
        if let Some(welcome) = self.0.welcome(session) {
            let _ = session.send(welcome);
        }
    }

    fn on_message(&self, session: &storm_std::Session, message: Message) {
        let _ = session.send(self.0.reply_to(session, &message));
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// The service itself, the same on every runtime: what to answer to each
/// message, over the core's [`Peer`] and [`Hub`] that every adapter's
/// sessions and servers are built on.
struct JsonService {
    hub: Hub,
    started: SystemTime,
    started_at: Instant,
    total_messages: AtomicU64,
    welcome: bool,
    /// The framer's limit, which applies to replies too.
    max_message: usize,
}

impl JsonService {
    fn new(args: &JsonArgs, hub: Hub) -> Self {
        Self {
            hub,
            started: SystemTime::now(),
            started_at: Instant::now(),
            total_messages: AtomicU64::new(0),
            welcome: args.welcome,
            max_message: args.max_message,
        }
    }

    /// The greeting for a new client, with `--welcome`.
    fn welcome(&self, session: &Peer) -> Option<Message> {
        self.welcome.then(|| {
            encode(&json!({
                "type": "welcome",
                "client_id": session.remote_addr().to_string(),
                "message": "Welcome to storm json!",
                "timestamp": now(),
            }))
        })
    }

    /// The reply to one message (broadcasts go out on the way).
    fn reply_to(&self, session: &Peer, message: &Message) -> Message {
        self.total_messages.fetch_add(1, Ordering::Relaxed);
        let reply = encode(&self.reply(session, message.as_bytes()));
        // An echo of a request near the limit can outgrow it; the framer
        // would refuse to send it, so say why instead.
        if reply.len() > self.max_message {
            encode(&json!({
                "type": "error",
                "error": format!("reply of {} bytes exceeds the {}-byte message limit", reply.len(), self.max_message),
                "timestamp": now(),
            }))
        } else {
            reply
        }
    }
}

impl JsonService {
    /// The answer to one payload; never fails, whatever the bytes.
    fn reply(&self, session: &Peer, payload: &[u8]) -> Value {
        let Ok(text) = std::str::from_utf8(payload) else {
            return json!({
                "type": "error",
                "error": "message is not valid UTF-8",
                "timestamp": now(),
            });
        };
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(request)) => self.answer(session, request),
            Ok(other) => plain_echo(other),
            Err(_) => plain_echo(Value::String(text.to_owned())),
        }
    }

    /// The answer to a JSON object, by its `type`.
    fn answer(&self, session: &Peer, request: Map<String, Value>) -> Value {
        let client_id = session.remote_addr().to_string();
        match request.get("type").and_then(Value::as_str) {
            Some("ping") => json!({
                "type": "pong",
                "ping_timestamp": request.get("timestamp").cloned().unwrap_or(Value::Null),
                "pong_timestamp": now(),
                "client_id": client_id,
            }),
            Some("echo") => json!({
                "type": "echo_response",
                "content": content(&request),
                "timestamp": now(),
                "echoed_by": "TCP Server",
            }),
            Some("broadcast") => {
                let relay = json!({
                    "type": "broadcast",
                    "from_client": client_id,
                    "content": content(&request),
                    "timestamp": now(),
                });
                let report = self.hub.broadcast(&encode(&relay), Some(session.id()));
                json!({
                    "type": "broadcast_sent",
                    "recipients": report.delivered,
                    "timestamp": now(),
                })
            }
            Some("get_stats") => json!({
                "type": "server_stats",
                "connected_clients": self.hub.session_count(),
                "uptime_seconds": self.started_at.elapsed().as_secs(),
                "total_messages": self.total_messages.load(Ordering::Relaxed),
                "server_start_time": iso8601(self.started),
                "current_time": now(),
            }),
            _ => json!({
                "type": "response",
                "original_message": Value::Object(request),
                "timestamp": now(),
                "from_server": true,
            }),
        }
    }
}

/// A request's `content`, or `""` when it has none.
fn content(request: &Map<String, Value>) -> Value {
    request
        .get("content")
        .cloned()
        .unwrap_or_else(|| Value::String(String::new()))
}

/// The reply to a payload that is not a JSON object.
fn plain_echo(original: Value) -> Value {
    json!({
        "type": "echo",
        "original_text": original,
        "timestamp": now(),
        "from_server": true,
    })
}

/// One message on the wire (the framer adds the length prefix).
fn encode(value: &Value) -> Message {
    Message::from(Bytes::from(value.to_string()))
}

/// A received payload as JSON; text that is not JSON as a JSON string.
fn decode(message: &Message) -> Value {
    serde_json::from_slice(message.as_bytes())
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(message.as_bytes()).into_owned()))
}

/// The current time as the protocol writes it.
fn now() -> String {
    iso8601(SystemTime::now())
}

/// `t` in UTC as `YYYY-MM-DDTHH:MM:SS.mmmZ` (times before 1970 print as
/// 1970-01-01).
fn iso8601(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01, counting in 400-year
/// eras that start on 1 March (so the leap day is the last of its year).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------- client

/// Runs `storm client json` in its mode.
pub(crate) fn client(args: &ClientArgs) -> io::Result<()> {
    let timeout = seconds(args.timeout, "--timeout")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut conn = Conn::connect(&args.addr, timeout).await?;
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
        conn.client.close();
        result
    })
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

/// Hands every message the connection receives to the client's task.
struct Inbox(mpsc::Sender<Message>);

impl Handler for Inbox {
    async fn on_message(&self, _session: &Session, message: Message) {
        // Awaiting here holds the connection's reading back while the
        // client's task is behind: bounded memory, not dropped messages.
        let _ = self.0.send(message).await;
    }
}

/// A connected client: sending, and replies in arrival order.
struct Conn {
    client: Client,
    inbox: mpsc::Receiver<Message>,
    timeout: Duration,
}

impl Conn {
    async fn connect(addr: &str, timeout: Duration) -> io::Result<Self> {
        let (tx, inbox) = mpsc::channel(1024);
        let client = TcpClient::connect(
            addr,
            ClientOptions::default(),
            Framing::LengthPrefix,
            Inbox(tx),
        )
        .await
        .map_err(|e| io::Error::other(format!("connecting to {addr}: {e}")))?;
        Ok(Self {
            client,
            inbox,
            timeout,
        })
    }

    async fn send(&self, value: &Value) -> io::Result<()> {
        self.send_message(encode(value)).await
    }

    async fn send_message(&self, message: Message) -> io::Result<()> {
        self.client.send(message).await.map_err(io::Error::other)
    }

    /// The next message, waiting at most the reply timeout.
    async fn recv(&mut self) -> io::Result<Value> {
        match tokio::time::timeout(self.timeout, self.inbox.recv()).await {
            Ok(Some(message)) => Ok(decode(&message)),
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply within {:?}", self.timeout),
            )),
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
async fn demo(conn: &mut Conn) -> io::Result<()> {
    let requests = [
        (ping(), "pong"),
        (echo("Hello TCP Server!"), "echo_response"),
        (broadcast("Hello all clients!"), "broadcast_sent"),
        (get_stats(), "server_stats"),
        (custom("custom_type"), "response"),
    ];
    for (request, wanted) in requests {
        println!("-> {request}");
        conn.send(&request).await?;
        conn.expect(wanted).await?;
    }
    let text = "Plain text message";
    println!("-> {text}");
    conn.send_message(Message::from(Bytes::from_static(text.as_bytes())))
        .await?;
    conn.expect("echo").await?;
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
/// moment), or when the server closes the connection.
async fn interactive(conn: &mut Conn) -> io::Result<()> {
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
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                match parse_line(&line) {
                    Line::Send(request) => {
                        println!("-> {request}");
                        conn.send(&request).await?;
                    }
                    Line::Text(text) => {
                        println!("-> {text}");
                        conn.send_message(Message::from(Bytes::from(text))).await?;
                    }
                    Line::Exit => break,
                    Line::Help => println!("{HELP}"),
                    Line::Nothing => {}
                }
            }
            message = conn.inbox.recv() => {
                let Some(message) = message else {
                    println!("the server closed the connection");
                    return Ok(());
                };
                println!("<- {}", decode(&message));
            }
        }
    }
    // Replies to the last commands may still be on their way.
    let grace = Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout(grace, conn.inbox.recv()).await {
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
/// or `duration` has passed, then prints throughput and latency.
///
/// Latency here is the true round trip of each request: from just before it
/// is sent until its `echo_response` arrives (replies come back in order on
/// one connection, so they are matched first in, first out), reported as
/// percentiles over all requests. The reference client's "latency" is the
/// run's duration divided by the number of messages, which is inverse
/// throughput: it hides every slow request and shrinks as the window grows.
async fn perf(conn: &mut Conn, limits: &PerfLimits) -> io::Result<()> {
    let content = "x".repeat(limits.size);
    let window = usize::try_from(limits.window).unwrap_or(usize::MAX);
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(window);
    let mut round_trips: Vec<Duration> = Vec::new();
    let mut sent: u64 = 0;
    let start = Instant::now();
    let deadline = start + limits.duration;
    loop {
        while in_flight.len() < window && sent < limits.count && Instant::now() < deadline {
            let request = json!({"type": "echo", "content": content, "seq": sent});
            in_flight.push_back(Instant::now());
            conn.send(&request).await?;
            sent += 1;
        }
        if in_flight.is_empty() {
            break;
        }
        let reply = conn.recv().await?;
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

    fn at(secs: u64, millis: u64) -> String {
        iso8601(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
    }

    #[test]
    fn timestamps_are_utc_iso8601_with_millis() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_704_110_400, 1), "2024-01-01T12:00:00.001Z");
        assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.999Z");
        assert_eq!(at(951_868_799, 0), "2000-02-29T23:59:59.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

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
