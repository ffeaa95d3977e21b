//! `storm rpc` (a demo server) and `storm client rpc`: the command-line
//! face of the RPC library ([`storm_services::rpc`]).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use storm_cli::metrics::MetricsEndpoint;
use storm_cli::policy::{PolicyArgs, Service};
use storm_cli::runtime::{Runtime, TlsArgs};
use storm_services::host::AsyncRuntime;
use storm_services::host::{on_async, on_std};
use storm_services::rpc::{
    CallOptions, CancelToken, Codec, CompressionConfig, Fault, Json, Request, RpcClient,
    RpcClientBuilder, RpcError, RpcServer, RpcServerConfig, RpcServerStats, Strategy, blocking,
};

/// Transport of `storm rpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Proto {
    /// One binary WebSocket message per envelope.
    Ws,
    /// 4-byte big-endian length-prefixed TCP.
    Tcp,
}

/// Options of `storm rpc`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeArgs {
    /// Transport.
    #[arg(long, value_enum, default_value = "ws")]
    pub proto: Proto,
    /// Address to listen on (port 0 picks one, printed at start).
    #[arg(long, default_value = "127.0.0.1:9500")]
    pub addr: String,
    /// Compress responses of at least this many bytes; 0 turns it off.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub compress: usize,
    /// Name returned by the `name` method.
    #[arg(long, default_value = "storm")]
    pub name: String,
    /// `--tls CERT_PEM KEY_PEM`: serve `wss://` or TLS over TCP.
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Runtime to serve on: tokio or smol (a task per request), or std (a
    /// thread per request, two per connection).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
}

/// Strategy of `storm client rpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StrategyArg {
    /// Spread calls over every endpoint in turn.
    RoundRobin,
    /// Use the first endpoint that is up.
    Failover,
}

/// Options of `storm client rpc`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = CLIENT_AFTER_HELP)]
pub(crate) struct ClientArgs {
    /// An endpoint: ws://host:port/, tcp://host:port, or wss:// and
    /// tls://host:port over TLS (repeat for several).
    #[arg(long = "endpoint", default_value = "ws://127.0.0.1:9500/")]
    pub endpoints: Vec<String>,
    /// How calls are spread over the endpoints.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub strategy: StrategyArg,
    /// Method to call (`storm rpc` has echo, name, time, sleep).
    #[arg(long, default_value = "name")]
    pub method: String,
    /// Parameters, as JSON.
    #[arg(long, default_value = "null")]
    pub params: String,
    /// Timeout of each call, in milliseconds, connecting included: while
    /// every endpoint is down a call waits this long for one to come back
    /// (each is retried at least once a second) before it fails.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Number of calls; above 1 a summary with latencies is printed.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Compress requests of at least this many bytes; 0 turns it off.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub compress: usize,
    /// Mark calls idempotent (resent elsewhere if a connection dies).
    #[arg(long)]
    pub idempotent: bool,
    /// Print every envelope sent and received (length and hex) on stderr.
    #[arg(long)]
    pub trace: bool,
    /// Trust the CA certificates in this PEM file for wss:// and tls://
    /// endpoints, instead of the public web roots.
    #[arg(long, value_name = "CA_PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Runtime the client runs on: tokio or smol (async tasks), or std
    /// (threads: the calls block the main thread, Ctrl-C is waited for on
    /// a thread of its own).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
}

fn compression(threshold: usize) -> Option<CompressionConfig> {
    (threshold > 0).then(|| CompressionConfig::default().with_threshold(threshold))
}

/// How long connections get to close at Ctrl-C.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `storm rpc` until Ctrl-C: `echo` (the parameters back), `name`,
/// `time` (Unix milliseconds), `sleep` (waits the given milliseconds, at
/// most 60 s, and returns them: try timeouts and cancellation with it).
#[must_use]
pub(crate) fn serve(args: &ServeArgs) -> ExitCode {
    let result = serve_on(args);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storm rpc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_on(args: &ServeArgs) -> std::io::Result<()> {
    let (mut config, service) = match args.proto {
        Proto::Ws => (RpcServerConfig::ws(&args.addr), Service::ws("storm rpc")),
        Proto::Tcp => (
            RpcServerConfig::tcp(&args.addr),
            Service::tcp("storm rpc --proto tcp"),
        ),
    };
    config.compression = compression(args.compress);
    args.tls.apply(&mut config.options)?;
    let policy = args.policy.resolve(&service)?;
    policy.apply(&mut config.options);
    config.max_payload = policy.max_message;
    let metrics = storm_cli::metrics::bind(args.policy.metrics_addr.as_deref())?;
    storm_cli::interrupt::install()?;
    let name: Arc<str> = args.name.as_str().into();
    match args.runtime {
        Runtime::Tokio => serve_async::<storm_tokio::Tokio>(args, config, name, metrics),
        Runtime::Smol => serve_async::<storm_smol::Smol>(args, config, name, metrics),
        Runtime::Std => {
            let server = blocking::RpcServer::bind(config, move |request: Request| {
                match demo(&name, &request) {
                    Demo::Reply(result) => result,
                    Demo::Sleep(ms) => {
                        if request.wait_cancelled(Duration::from_millis(ms)) {
                            Err(Fault::new(Fault::CANCELLED, "cancelled"))
                        } else {
                            Json.reply(&ms)
                        }
                    }
                }
            })?;
            banner(args, &server.endpoint());
            storm_cli::metrics::start(metrics, "rpc", server.hub());
            on_std::shut_down_on(&storm_cli::interrupt::signal(), STOP_TIMEOUT, &server);
            stopped(&server.stats());
            // Stopped: this joins its accept thread.
            server.shutdown(STOP_TIMEOUT)
        }
    }
}

fn serve_async<R: AsyncRuntime>(
    args: &ServeArgs,
    config: RpcServerConfig,
    name: Arc<str>,
    metrics: Option<MetricsEndpoint>,
) -> std::io::Result<()> {
    R::block_on(async {
        let server = RpcServer::<R>::bind_on(config, move |request: Request| {
            let reply = demo(&name, &request);
            async move {
                match reply {
                    Demo::Reply(result) => result,
                    Demo::Sleep(ms) => {
                        R::sleep_until(Instant::now() + Duration::from_millis(ms)).await;
                        Json.reply(&ms)
                    }
                }
            }
        })
        .await?;
        banner(args, &server.endpoint());
        storm_cli::metrics::start(metrics, "rpc", server.hub());
        on_async::shut_down_on(&storm_cli::interrupt::signal(), STOP_TIMEOUT, &server).await;
        stopped(&server.stats());
        Ok(())
    })
}

/// Says on stdout, once stopped, what the server did: requests, replies,
/// calls its clients cancelled, calls that ran past their deadline. A
/// closed stdout is no failure of the server's.
fn stopped(stats: &RpcServerStats) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout(),
        "storm rpc stopped: {} requests, {} replies, {} cancelled, {} timed out",
        stats.requests,
        stats.replies,
        stats.cancelled,
        stats.timed_out
    );
}

fn banner(args: &ServeArgs, endpoint: &str) {
    println!(
        "storm rpc ({:?}, {:?} runtime) listening on {endpoint}",
        args.proto, args.runtime
    );
    tracing::info!(%endpoint, runtime = ?args.runtime, "rpc listening");
}

/// What the demo does with a request, the same on every runtime; only
/// the sleep differs.
enum Demo {
    Reply(Result<Bytes, Fault>),
    /// Sleep this many milliseconds, then answer them.
    Sleep(u64),
}

fn demo(name: &str, request: &Request) -> Demo {
    Demo::Reply(match request.method.as_str() {
        "echo" => Ok(request.payload.clone()),
        "name" => Json.reply(name),
        "time" => {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            Json.reply(&ms)
        }
        "sleep" => match request.params::<u64>(&Json) {
            Ok(ms) => return Demo::Sleep(ms.min(60_000)),
            Err(fault) => Err(fault),
        },
        other => Err(Fault::new(
            Fault::UNKNOWN_METHOD,
            format!("no method {other:?}; try echo, name, time, sleep"),
        )),
    })
}

/// How `storm client rpc` ended (`--help` and the README list the codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every call succeeded: exit code 0.
    Done,
    /// A call failed, or the options were bad: exit code 1.
    Failed,
    /// Ctrl-C: the calls in flight were cancelled (the server was sent a
    /// cancel for each): exit code 130, as a shell reports SIGINT.
    Interrupted,
}

/// `--help` text after the options of `storm client rpc`.
const CLIENT_AFTER_HELP: &str = "\
Ctrl-C cancels the calls in flight (the server is told, and stops their \
handlers) and exits; a second Ctrl-C exits at once.

Exit codes:
  0    every call succeeded
  1    a call failed, or a bad option
  130  Ctrl-C: the calls in flight were cancelled";

/// Runs `storm client rpc`.
#[must_use]
pub(crate) fn client(args: &ClientArgs) -> ExitCode {
    if let Err(e) = storm_cli::interrupt::install() {
        eprintln!("storm client rpc: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.runtime {
        Runtime::Tokio => client_on::<storm_tokio::Tokio>(args),
        Runtime::Smol => client_on::<storm_smol::Smol>(args),
        // The blocking client waits on this thread.
        Runtime::Std => smol::future::block_on(async {
            let client = builder(args)?.build_blocking().map_err(|e| e.to_string())?;
            calls(args, client).await
        }),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("storm client rpc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().take(64).fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    }) + if bytes.len() > 64 { "…" } else { "" }
}

/// Makes the calls on async runtime `R`.
fn client_on<R: AsyncRuntime>(args: &ClientArgs) -> Result<Outcome, String> {
    R::block_on(async {
        Ok(async {
            let client = builder(args)?
                .runtime::<R>()
                .build()
                .map_err(|e| e.to_string())?;
            calls(args, client).await
        }
        .await)
    })
    .map_err(|e| e.to_string())?
}

/// The client's builder, as the options say, for any runtime.
fn builder(args: &ClientArgs) -> Result<RpcClientBuilder, String> {
    let mut builder = RpcClient::builder(&args.endpoints)
        .map_err(|e| e.to_string())?
        .strategy(match args.strategy {
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::Failover => Strategy::Failover,
        })
        .compression(compression(args.compress));
    if let Some(path) = &args.tls_ca {
        let ca = storm_host::tls::read_pem_file(path).map_err(|e| format!("--tls-ca: {e}"))?;
        builder = builder.tls(storm_host::options::TlsClientOptions::with_ca(ca));
    }
    if args.trace {
        builder = builder
            .on_bytes_sent(|endpoint, bytes| {
                eprintln!("-> {endpoint} {} bytes {}", bytes.len(), hex(bytes));
            })
            .on_bytes_received(|endpoint, bytes| {
                eprintln!("<- {endpoint} {} bytes {}", bytes.len(), hex(bytes));
            });
    }
    Ok(builder)
}

/// The RPC client as `storm client rpc` uses it, on any runtime: the async
/// one (tokio, smol) or the blocking one (std), whose calls block the
/// thread that waits for them.
trait Caller {
    async fn call(
        &self,
        method: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, RpcError>;
    async fn close(&self);
}

impl<R: AsyncRuntime> Caller for RpcClient<Json, R> {
    async fn call(
        &self,
        method: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, RpcError> {
        self.call_raw(method, payload, options).await
    }

    async fn close(&self) {
        self.close().await;
    }
}

impl Caller for blocking::RpcClient {
    async fn call(
        &self,
        method: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, RpcError> {
        self.call_raw(method, payload, options)
    }

    async fn close(&self) {
        self.close();
    }
}

/// Makes the calls with `client`; Ctrl-C cancels the one in flight.
async fn calls(args: &ClientArgs, client: impl Caller) -> Result<Outcome, String> {
    let params: serde_json::Value =
        serde_json::from_str(&args.params).map_err(|e| format!("--params is not JSON: {e}"))?;
    let payload = Json.encode(&params).map_err(|e| e.to_string())?;
    // Ctrl-C cancels the token (from a thread of its own, so that it does
    // while a blocking call holds this one), and with it the call in
    // flight: the client sends the server a cancel for it.
    let interrupt = CancelToken::new();
    std::thread::spawn({
        let interrupt = interrupt.clone();
        move || {
            storm_cli::interrupt::wait();
            interrupt.cancel();
        }
    });
    let options = CallOptions::new(Duration::from_millis(args.timeout_ms))
        .idempotent(args.idempotent)
        .cancel_token(interrupt.clone());
    let outcome = async {
        let mut latencies = Vec::new();
        let mut failures = 0u32;
        for _ in 0..args.count.max(1) {
            let start = Instant::now();
            match client
                .call(&args.method, payload.clone(), options.clone())
                .await
            {
                Err(RpcError::Cancelled) => return None,
                Ok(result) => {
                    latencies.push(start.elapsed());
                    if args.count <= 1 {
                        match std::str::from_utf8(&result) {
                            Ok(text) => println!("{text}"),
                            Err(_) => println!("{}", hex(&result)),
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("call failed: {e}");
                }
            }
        }
        if args.count > 1 {
            latencies.sort_unstable();
            let at = |q: usize| {
                latencies
                    .get((latencies.len().saturating_sub(1)) * q / 100)
                    .copied()
                    .unwrap_or_default()
            };
            println!(
                "{} ok, {failures} failed; p50 {:?}, p99 {:?}",
                latencies.len(),
                at(50),
                at(99)
            );
        }
        Some(failures)
    }
    .await;
    // Closing sends what is queued first: the cancels among it.
    client.close().await;
    Ok(match outcome {
        None => {
            eprintln!("storm client rpc: interrupted: the calls in flight were cancelled");
            Outcome::Interrupted
        }
        Some(_) if interrupt.is_cancelled() => Outcome::Interrupted,
        Some(0) => Outcome::Done,
        Some(_) => Outcome::Failed,
    })
}
