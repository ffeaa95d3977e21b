//! `loadgen`: drives an echo server on this machine and reports what it
//! sustained.
//!
//! Modes:
//!
//! - `throughput`: N clients (default 100), each keeping W messages
//!   (default 16) of S bytes (default 32) in flight, pipelined. Every batch
//!   of echoes read from a socket is answered with as many new messages in
//!   one write. Reports messages echoed per second and payload MiB/s.
//! - `latency`: one client with one message in flight (unless `--clients`
//!   or `--window` say otherwise); every round trip is timed with
//!   `Instant` and p50/p90/p99/max are reported.
//! - `idle`: opens `--connections` connections (default 1000), does the
//!   handshake and one echo on each, prints its result line and holds them
//!   open, idle, for `--duration` seconds, so that the server's memory per
//!   connection can be read meanwhile.
//! - `churn`: `--rounds` rounds (default 2) of connection churn: each opens
//!   `--connections` connections as `idle` does, holds them `--duration`
//!   seconds, then resets every one (`SO_LINGER` 0, so the server sees
//!   `ECONNRESET`). With `--server-pid`, it reads the server's `RssAnon`
//!   and `VmRSS` from `/proc/PID/status` before the first round, with
//!   each round's connections open, and after each round once the server
//!   has let go of them (its open descriptors and threads back to their
//!   count before the round); growth from one round to the next is what a
//!   server that keeps something of closed connections shows.
//!
//! The clients are hand-rolled on tokio's readiness API (one task per
//! connection, `try_read`/`try_write`, many frames per write) so that the
//! load generator costs as little CPU per message as possible. Runs are
//! bounded by `--duration` (at most 120 s) and `--max-msgs`. Only loopback
//! addresses are accepted.
//!
//! Output: one line of JSON, then one line for people.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use storm_e2e::handshake::{MAX_HEAD, check_response, client_key, client_request};
use storm_e2e::stats::percentile_us;
use storm_e2e::sys::{ProcessState, USER_HZ, loopback_addr, self_cpu_ticks};
use storm_e2e::wire::{self, Decoder, Encoder, MAX_SIZE, Proto, Rng};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// Longest run accepted, in seconds.
const MAX_DURATION: f64 = 120.0;
/// Most churn rounds.
const MAX_ROUNDS: usize = 10;
/// Time a server gets to let go of a churn round's connections.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most round-trip samples kept (8 bytes each): 40 MiB.
const MAX_SAMPLES: usize = 5_000_000;
/// Most clients or idle connections.
const MAX_CONNECTIONS: usize = 10_000;
/// Most messages in flight per client.
const MAX_WINDOW: usize = 4096;
/// Time allowed to connect and finish the handshake.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// Drive an echo server on this machine and report what it sustained.
#[derive(Debug, Parser)]
#[command(name = "loadgen", about)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// Wire protocol of the server.
    #[arg(long, value_enum, default_value_t = ProtoArg::Ws)]
    proto: ProtoArg,
    // The doc comment is `--help` text (clap shows it verbatim), not
    // Markdown: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Server address; loopback only (127.0.0.0/8, [::1], localhost).
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Concurrent clients [default: 100 for throughput, 1 for latency].
    #[arg(long)]
    clients: Option<usize>,
    /// Messages each client keeps in flight [default: 16 for throughput,
    /// 1 for latency].
    #[arg(long)]
    window: Option<usize>,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Seconds to run (idle and churn modes: to hold the connections), at
    /// most 120.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop once this many messages have been echoed.
    #[arg(long, default_value_t = 1_000_000_000)]
    max_msgs: u64,
    /// Connections to open (idle mode; churn mode: per round).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Rounds of connection churn (churn mode), at most 10.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The server's process id, to read its memory from /proc (churn mode).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Tokio worker threads [default: CPUs this process may use].
    #[arg(long)]
    workers: Option<usize>,
    /// Request path for WebSocket.
    #[arg(long, default_value = "/")]
    path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Many pipelined clients: messages per second.
    Throughput,
    /// One message in flight: round-trip percentiles.
    Latency,
    /// Many idle connections, held open.
    Idle,
    /// Rounds of many connections opened, held, then reset.
    Churn,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::Latency => "latency",
            Self::Idle => "idle",
            Self::Churn => "churn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtoArg {
    /// Raw TCP stream echo.
    Raw,
    /// 4-byte big-endian length prefix.
    Lp,
    /// WebSocket binary messages.
    Ws,
}

impl From<ProtoArg> for Proto {
    fn from(arg: ProtoArg) -> Self {
        match arg {
            ProtoArg::Raw => Self::Raw,
            ProtoArg::Lp => Self::Lp,
            ProtoArg::Ws => Self::Ws,
        }
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
struct Config {
    mode: Mode,
    proto: Proto,
    addr: SocketAddr,
    clients: usize,
    window: usize,
    size: usize,
    duration: Duration,
    max_msgs: u64,
    connections: usize,
    rounds: usize,
    server_pid: Option<u32>,
    path: String,
    /// Seed of every client's generator (the client id is mixed in).
    seed: u64,
}

impl Config {
    fn from_args(args: &Args) -> Result<Self, String> {
        let addr = loopback_addr(&args.addr).map_err(|e| e.to_string())?;
        let latency = args.mode == Mode::Latency;
        let clients = args.clients.unwrap_or(if latency { 1 } else { 100 });
        let window = args.window.unwrap_or(if latency { 1 } else { 16 });
        if !(1..=MAX_CONNECTIONS).contains(&clients) {
            return Err(format!("--clients must be 1..={MAX_CONNECTIONS}"));
        }
        if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
            return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
        }
        if !(1..=MAX_ROUNDS).contains(&args.rounds) {
            return Err(format!("--rounds must be 1..={MAX_ROUNDS}"));
        }
        if !(1..=MAX_WINDOW).contains(&window) {
            return Err(format!("--window must be 1..={MAX_WINDOW}"));
        }
        if !(1..=MAX_SIZE).contains(&args.size) {
            return Err(format!("--size must be 1..={MAX_SIZE}"));
        }
        if !(args.duration > 0.0 && args.duration <= MAX_DURATION) {
            return Err(format!("--duration must be in (0, {MAX_DURATION}] seconds"));
        }
        if args.workers == Some(0) {
            return Err("--workers must be at least 1".to_owned());
        }
        if !args.path.starts_with('/') || args.path.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err("--path must start with / and hold no spaces".to_owned());
        }
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Self {
            mode: args.mode,
            proto: args.proto.into(),
            addr,
            clients,
            window,
            size: args.size,
            duration: Duration::from_secs_f64(args.duration),
            max_msgs: args.max_msgs,
            connections: args.connections,
            rounds: args.rounds,
            server_pid: args.server_pid,
            path: args.path.clone(),
            seed,
        })
    }
}

/// One connected client: its socket, codec and the bytes read but not yet
/// decoded.
struct Client {
    stream: TcpStream,
    encoder: Encoder,
    decoder: Decoder,
    input: BytesMut,
}

impl Client {
    /// Connects and, for WebSocket, performs the opening handshake.
    async fn connect(config: &Config, id: u64) -> Result<Self, String> {
        let mut rng = Rng::new(config.seed ^ id.wrapping_mul(0xA24B_AED4_963E_E407));
        let stream = TcpStream::connect(config.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", config.addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
        nonce[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
        let payload = wire::payload(config.size);
        let mut client = Self {
            stream,
            encoder: Encoder::new(config.proto, payload.clone(), rng).map_err(|e| e.to_string())?,
            decoder: Decoder::new(config.proto, payload),
            input: BytesMut::with_capacity(READ_CHUNK),
        };
        if config.proto == Proto::Ws {
            client.handshake(config, &client_key(nonce)).await?;
        }
        Ok(client)
    }

    async fn handshake(&mut self, config: &Config, key: &str) -> Result<(), String> {
        let host = config.addr.to_string();
        let request = client_request(&host, &config.path, key);
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("handshake write: {e}"))?;
        loop {
            if self.input.len() >= MAX_HEAD {
                return Err("handshake: response head too long".to_owned());
            }
            self.input.reserve(MAX_HEAD);
            let n = self
                .stream
                .read_buf(&mut self.input)
                .await
                .map_err(|e| format!("handshake read: {e}"))?;
            if n == 0 {
                return Err("handshake: server closed".to_owned());
            }
            if let Some(len) =
                check_response(&self.input, key).map_err(|e| format!("handshake: {e}"))?
            {
                // What follows the head is already WebSocket data.
                self.input.advance(len);
                return Ok(());
            }
        }
    }

    /// Sends one message and waits for its echo.
    async fn round_trip(&mut self) -> Result<(), String> {
        let mut out = BytesMut::new();
        self.encoder.encode(1, &mut out);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            if self
                .decoder
                .decode(&mut self.input)
                .map_err(|e| e.to_string())?
                > 0
            {
                return Ok(());
            }
            self.input.reserve(READ_CHUNK);
            let n = self
                .stream
                .read_buf(&mut self.input)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed".to_owned());
            }
        }
    }

    /// Keeps `window` messages in flight until `stop` turns true, adding
    /// every echo to `echoed`; with `timing`, returns the round trip of
    /// every message echoed (in nanoseconds, at most [`MAX_SAMPLES`]).
    async fn pump(
        mut self,
        window: usize,
        timing: bool,
        echoed: &AtomicU64,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Vec<u64>, String> {
        let mut samples = Vec::new();
        let mut sent_at = VecDeque::with_capacity(if timing { window } else { 0 });
        let mut out = BytesMut::with_capacity(window * self.encoder.frame_len());
        self.encoder.encode(window, &mut out);
        if timing {
            sent_at.extend(std::iter::repeat_n(Instant::now(), window));
        }
        loop {
            // Write what is pending; most of the time it all goes at once.
            while !out.is_empty() {
                match self.stream.try_write(&out) {
                    Ok(n) => out.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            let interest = if out.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let ready = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return Ok(samples),
                ready = self.stream.ready(interest) => ready.map_err(|e| e.to_string())?,
            };
            if !ready.is_readable() {
                continue;
            }
            self.input.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.input) {
                Ok(0) => return Err("server closed the connection".to_owned()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(format!("read: {e}")),
            }
            let done = self
                .decoder
                .decode(&mut self.input)
                .map_err(|e| e.to_string())?;
            if done == 0 {
                continue;
            }
            if timing {
                let now = Instant::now();
                for sent in sent_at.drain(..done.min(sent_at.len())) {
                    if samples.len() < MAX_SAMPLES {
                        samples.push((now - sent).as_nanos() as u64);
                    }
                }
                sent_at.extend(std::iter::repeat_n(now, done));
            }
            echoed.fetch_add(done as u64, Ordering::Relaxed);
            self.encoder.encode(done, &mut out);
        }
    }
}

/// The outcome of a throughput or latency run.
struct Outcome {
    msgs: u64,
    elapsed: Duration,
    cpu_ticks: u64,
    samples: Vec<u64>,
    error: Option<String>,
}

async fn run_load(config: Arc<Config>) -> Outcome {
    let echoed = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(config.clients);
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let timing = config.mode == Mode::Latency;
    let mut handles: Vec<JoinHandle<Result<Vec<u64>, String>>> = Vec::new();
    for id in 0..config.clients {
        let (config, echoed, ready_tx) =
            (Arc::clone(&config), Arc::clone(&echoed), ready_tx.clone());
        let (mut go, stop) = (go_rx.clone(), stop_rx.clone());
        handles.push(tokio::spawn(async move {
            let client = match Client::connect(&config, id as u64).await {
                Ok(client) => {
                    let _ = ready_tx.send(Ok(())).await;
                    client
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.clone())).await;
                    return Err(e);
                }
            };
            drop(ready_tx);
            if go.wait_for(|go| *go).await.is_err() {
                return Ok(Vec::new());
            }
            client.pump(config.window, timing, &echoed, stop).await
        }));
    }
    drop(ready_tx);
    let mut error = None;
    let setup = tokio::time::timeout(SETUP_TIMEOUT, async {
        for _ in 0..config.clients {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("a client ended during setup".to_owned()),
            }
        }
        Ok(())
    })
    .await;
    match setup {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error = Some(e),
        Err(_) => error = Some(format!("setup took over {SETUP_TIMEOUT:?}")),
    }
    let cpu_before = self_cpu_ticks().unwrap_or(0);
    let start = Instant::now();
    let mut msgs = 0;
    if error.is_none() {
        let _ = go_tx.send(true);
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            msgs = echoed.load(Ordering::Relaxed);
            if start.elapsed() >= config.duration
                || msgs >= config.max_msgs
                || handles.iter().any(JoinHandle::is_finished)
            {
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(true);
    let cpu_ticks = self_cpu_ticks().unwrap_or(0).saturating_sub(cpu_before);
    let mut samples = Vec::new();
    let collect = async {
        for handle in &mut handles {
            match handle.await {
                Ok(Ok(mut s)) => samples.append(&mut s),
                Ok(Err(e)) => {
                    error.get_or_insert(e);
                }
                Err(e) => {
                    error.get_or_insert(e.to_string());
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), collect)
        .await
        .is_err()
    {
        error.get_or_insert("clients did not stop within 5 s".to_owned());
    }
    for handle in &handles {
        handle.abort();
    }
    Outcome {
        msgs,
        elapsed,
        cpu_ticks,
        samples,
        error,
    }
}

/// Opens the idle connections (handshake and one echo each) and returns
/// them with the time it took.
async fn run_idle(config: Arc<Config>) -> Result<(Vec<Client>, Duration), String> {
    let start = Instant::now();
    // Connect a few at a time so that the listen backlog never overflows.
    let gate = Arc::new(Semaphore::new(32));
    let mut handles = Vec::with_capacity(config.connections);
    for id in 0..config.connections {
        let (config, gate) = (Arc::clone(&config), Arc::clone(&gate));
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            let mut client = Client::connect(&config, id as u64).await?;
            client.round_trip().await?;
            Ok::<_, String>(client)
        }));
    }
    let mut clients = Vec::with_capacity(config.connections);
    let opened = tokio::time::timeout(SETUP_TIMEOUT * 3, async {
        for handle in &mut handles {
            clients.push(handle.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(())
    })
    .await;
    for handle in &handles {
        handle.abort();
    }
    match opened {
        Ok(Ok(())) => Ok((clients, start.elapsed())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "opening the connections took over {:?}",
            SETUP_TIMEOUT * 3
        )),
    }
}

/// What a churn run saw of the server: its state before the first round,
/// then with each round's connections open and after each round.
#[derive(Debug, Default)]
struct Churn {
    before: ProcessState,
    open: Vec<ProcessState>,
    after: Vec<ProcessState>,
}

/// Runs the churn rounds; the server's memory is read only with a
/// `--server-pid`.
async fn run_churn(config: Arc<Config>) -> Result<Churn, String> {
    let read = |pid| ProcessState::read(pid).map_err(|e| format!("server {pid}: {e}"));
    let mut churn = Churn::default();
    if let Some(pid) = config.server_pid {
        churn.before = read(pid)?;
    }
    for _ in 0..config.rounds {
        let start = config.server_pid.map(read).transpose()?;
        let (clients, _) = run_idle(Arc::clone(&config)).await?;
        tokio::time::sleep(config.duration).await;
        if let Some(pid) = config.server_pid {
            churn.open.push(read(pid)?);
        }
        for client in clients {
            client
                .stream
                .set_zero_linger()
                .map_err(|e| format!("SO_LINGER: {e}"))?;
        }
        if let (Some(pid), Some(start)) = (config.server_pid, start) {
            let settled = tokio::task::spawn_blocking(move || {
                ProcessState::wait_settled(pid, &start, SETTLE_TIMEOUT)
            });
            let settled = settled.await.map_err(|e| e.to_string())?;
            churn
                .after
                .push(settled.map_err(|e| format!("server {pid}: {e}"))?);
        }
    }
    Ok(churn)
}

fn report_churn(config: &Config, result: &Result<Churn, String>) {
    let (name, addr) = (config.proto.name(), json_str(&config.addr.to_string()));
    let churn = match result {
        Ok(churn) => churn,
        Err(e) => {
            println!(
                "{{\"mode\":\"churn\",\"proto\":\"{name}\",\"addr\":{addr},\"error\":{}}}",
                json_str(e)
            );
            println!("churn {name} {}: ERROR: {e}", config.addr);
            return;
        }
    };
    let n = config.connections;
    let list = |states: &[ProcessState], f: fn(&ProcessState) -> u64| {
        let items: Vec<String> = states.iter().map(|s| f(s).to_string()).collect();
        format!("[{}]", items.join(","))
    };
    println!(
        "{{\"mode\":\"churn\",\"proto\":\"{name}\",\"addr\":{addr},\"connections\":{n},\
         \"rounds\":{},\"server_pid\":{},\"before_anon_kib\":{},\"before_rss_kib\":{},\
         \"open_anon_kib\":{},\"open_rss_kib\":{},\"after_anon_kib\":{},\
         \"after_rss_kib\":{},\"error\":null}}",
        config.rounds,
        config
            .server_pid
            .map_or("null".to_owned(), |pid| pid.to_string()),
        churn.before.rss_anon_kib,
        churn.before.vm_rss_kib,
        list(&churn.open, |s| s.rss_anon_kib),
        list(&churn.open, |s| s.vm_rss_kib),
        list(&churn.after, |s| s.rss_anon_kib),
        list(&churn.after, |s| s.vm_rss_kib),
    );
    println!(
        "churn {name} {}: {} rounds of {n} connections opened (each handshaken and echoed \
         once), held {:.1} s, reset",
        config.addr,
        config.rounds,
        config.duration.as_secs_f64()
    );
    if config.server_pid.is_none() {
        return;
    }
    let before = churn.before.rss_anon_kib;
    println!("  server RssAnon before: {before} KiB");
    let mut previous = before;
    for (round, (open, after)) in churn.open.iter().zip(&churn.after).enumerate() {
        let per_connection = open.rss_anon_kib.saturating_sub(before) as f64 / n as f64;
        let growth = after.rss_anon_kib as i64 - previous as i64;
        let over = match round {
            0 => "before".to_owned(),
            n => format!("round {n}"),
        };
        println!(
            "  round {}: open {} KiB ({per_connection:.1} KiB per connection over before), \
             after {} KiB ({growth:+} KiB over {over})",
            round + 1,
            open.rss_anon_kib,
            after.rss_anon_kib,
        );
        previous = after.rss_anon_kib;
    }
}

fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn report_load(config: &Config, outcome: &mut Outcome) {
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let rate = outcome.msgs as f64 / secs;
    let mib = rate * config.size as f64 / f64::from(1 << 20);
    let cpu_pct = outcome.cpu_ticks as f64 / USER_HZ as f64 / secs * 100.0;
    outcome.samples.sort_unstable();
    let s = &outcome.samples;
    let (p50, p90, p99, max) = (
        percentile_us(s, 0.50),
        percentile_us(s, 0.90),
        percentile_us(s, 0.99),
        percentile_us(s, 1.0),
    );
    let error = outcome.error.as_deref().map_or("null".to_owned(), json_str);
    println!(
        "{{\"mode\":\"{}\",\"proto\":\"{}\",\"addr\":{},\"clients\":{},\"window\":{},\
         \"size\":{},\"elapsed_s\":{secs:.3},\"msgs\":{},\"msgs_per_s\":{rate:.0},\
         \"mib_per_s\":{mib:.2},\"client_cpu_pct\":{cpu_pct:.1},\"samples\":{},\
         \"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\"p99_us\":{p99:.1},\"max_us\":{max:.1},\
         \"error\":{error}}}",
        config.mode.name(),
        config.proto.name(),
        json_str(&config.addr.to_string()),
        config.clients,
        config.window,
        config.size,
        outcome.msgs,
        s.len(),
    );
    let mut human = format!(
        "{} {} {}: {} clients x {} in flight x {} B: {rate:.0} msgs/s, {mib:.2} MiB/s \
         ({} msgs in {secs:.2} s, loadgen CPU {cpu_pct:.0}%)",
        config.mode.name(),
        config.proto.name(),
        config.addr,
        config.clients,
        config.window,
        config.size,
        outcome.msgs,
    );
    if !s.is_empty() {
        human.push_str(&format!(
            "; round trip p50 {p50:.1} us, p90 {p90:.1} us, p99 {p99:.1} us, max {max:.1} us"
        ));
    }
    if let Some(e) = &outcome.error {
        human.push_str(&format!("; ERROR: {e}"));
    }
    println!("{human}");
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(&args) {
        Ok(config) => Arc::new(config),
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match config.mode {
        Mode::Throughput | Mode::Latency => {
            let mut outcome = runtime.block_on(run_load(Arc::clone(&config)));
            report_load(&config, &mut outcome);
            if outcome.error.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Mode::Idle => {
            let result = runtime.block_on(run_idle(Arc::clone(&config)));
            match result {
                Ok((clients, setup)) => {
                    let n = clients.len();
                    println!(
                        "{{\"mode\":\"idle\",\"proto\":\"{}\",\"addr\":{},\"connections\":{n},\
                         \"setup_s\":{:.3},\"hold_s\":{:.1},\"error\":null}}",
                        config.proto.name(),
                        json_str(&config.addr.to_string()),
                        setup.as_secs_f64(),
                        config.duration.as_secs_f64(),
                    );
                    println!(
                        "idle {} {}: {n} connections open (each handshaken and echoed once) \
                         in {:.2} s; holding them {:.1} s",
                        config.proto.name(),
                        config.addr,
                        setup.as_secs_f64(),
                        config.duration.as_secs_f64(),
                    );
                    let _ = std::io::stdout().flush();
                    runtime.block_on(async { tokio::time::sleep(config.duration).await });
                    drop(clients);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!(
                        "{{\"mode\":\"idle\",\"proto\":\"{}\",\"addr\":{},\"error\":{}}}",
                        config.proto.name(),
                        json_str(&config.addr.to_string()),
                        json_str(&e)
                    );
                    println!("idle {} {}: ERROR: {e}", config.proto.name(), config.addr);
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Churn => {
            let result = runtime.block_on(run_churn(Arc::clone(&config)));
            report_churn(&config, &result);
            if result.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
