//! `storm gateway --config routes.ini [--addr HOST:PORT] [--runtime
//! tokio|smol|std] [--tls CERT KEY]`.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use storm_cli::interrupt;
use storm_cli::metrics::MetricsEndpoint;
use storm_cli::policy::{PolicyArgs, Service};
use storm_cli::runtime::{Runtime, TlsArgs};
use storm_host::hub::Hub;
use storm_services::gateway::{
    BackendStatus, Gateway, GatewayConfig, GatewayOptions, LoadError, blocking,
};
use storm_services::host::AsyncRuntime;

/// Exit code for a route file that cannot be used (or a bad flag, as clap
/// does).
pub(crate) const EXIT_CONFIG: u8 = 2;

/// The `service` label of the gateway's metrics.
const SERVICE_LABEL: &str = "gateway";

/// How long clients get to close gracefully on Ctrl-C.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `storm gateway`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GatewayArgs {
    /// Route file: one INI section per backend with name, port, and
    /// optionally host (default 127.0.0.1), protocol (ws or tcp; default
    /// ws) and tls (on or off; default off). See storm-services/routes.example.ini.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
    /// WebSocket address clients connect to: IPv4, or IPv6 in brackets.
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub(crate) addr: String,
    /// Longest wait between two attempts to reconnect a backend, in
    /// milliseconds (attempts start at 100 ms and double up to this).
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub(crate) max_backoff_ms: u64,
    /// Seconds a client has to finish the route handshake; 0 waits forever.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub(crate) handshake_timeout: u64,
    /// `--tls CERT_PEM KEY_PEM`: serve clients over wss://.
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Runtime to run on: tokio or smol (async tasks), or std (threads:
    /// two per client, one per backend connection).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub(crate) runtime: Runtime,
    /// PEM file of the CA certificates that backends with `tls = on` must
    /// be signed by, instead of the public web roots.
    #[arg(long, value_name = "CA_PEM")]
    pub(crate) backend_ca: Option<PathBuf>,
}

/// Runs `storm gateway` until Ctrl-C or SIGTERM: exit code 2 with
/// `FILE:LINE: why` on stderr for a bad route file, 1 for other failures
/// (the address is taken, …).
#[must_use]
pub(crate) fn run(args: &GatewayArgs) -> ExitCode {
    let config = match GatewayConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => return config_failure(&e),
    };
    let mut options = GatewayOptions::default()
        .with_addr(args.addr.clone())
        .with_handshake_timeout(
            (args.handshake_timeout > 0).then(|| Duration::from_secs(args.handshake_timeout)),
        );
    if let storm_proto::reconnect::BackoffPolicy::Exponential { initial, max, .. } =
        &mut options.reconnect.policy
    {
        *max = Duration::from_millis(args.max_backoff_ms).max(*initial);
    }
    let result = (|| {
        let mut server = storm_host::options::ServerOptions::default();
        args.tls.apply(&mut server)?;
        options.tls = server.tls;
        let policy = args.policy.resolve(&Service::ws("storm gateway"))?;
        options.max_connections = policy.max_connections;
        options.backpressure = policy.backpressure;
        options.heartbeat = policy.heartbeat;
        options.max_message_size = policy.max_message;
        if let Some(ca) = &args.backend_ca {
            options.backend_tls.ca_pem = Some(storm_host::tls::read_pem_file(ca)?);
        }
        let metrics = storm_cli::metrics::bind(args.policy.metrics_addr.as_deref())?;
        interrupt::install()?;
        match args.runtime {
            Runtime::Tokio => on_async::<storm_tokio::Tokio>(args, config, options, metrics),
            Runtime::Smol => on_async::<storm_smol::Smol>(args, config, options, metrics),
            Runtime::Std => on_std(args, config, options, metrics),
        }
    })();
    match result {
        Ok(()) => {
            eprintln!("storm gateway: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => failure(&e),
    }
}

fn config_failure(e: &LoadError) -> ExitCode {
    eprintln!("storm gateway: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn failure(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("storm gateway: {e}");
    ExitCode::FAILURE
}

/// The banner: where clients connect, on which runtime, and the routes.
fn banner(args: &GatewayArgs, addr: std::net::SocketAddr, backends: &[BackendStatus]) {
    println!(
        "storm gateway ({:?} runtime) listening on {}://{addr}",
        args.runtime,
        args.tls.scheme(true)
    );
    for backend in backends {
        println!("route {} -> {}", backend.route, backend.url);
    }
    tracing::info!(%addr, runtime = ?args.runtime, "gateway listening");
}

fn backend_up(backend: &BackendStatus) {
    eprintln!("backend {} connected ({})", backend.route, backend.url);
}

fn backend_down(backend: &BackendStatus) {
    eprintln!(
        "backend {} down, reconnecting ({})",
        backend.route, backend.url
    );
}

/// Ctrl-C or SIGTERM: the shutdown begins. It sets the gateway's stop flag
/// before it closes the backends, so the watchers that see a backend go
/// down after this line know it is not coming back.
fn shutting_down(clients: usize) {
    eprintln!(
        "storm gateway: interrupted, shutting down (closing {clients} client(s) and every backend)"
    );
}

/// Serves `--metrics-addr`, if given: the hub of the client endpoint and
/// the backends, read from the gateway's handle on each scrape.
fn serve_metrics(
    endpoint: Option<MetricsEndpoint>,
    hub: Hub,
    backends: impl Fn() -> (Vec<BackendStatus>, u64) + Send + 'static,
) -> io::Result<()> {
    let Some(endpoint) = endpoint else {
        return Ok(());
    };
    endpoint.serve_with(SERVICE_LABEL, move || {
        hub.metrics(Instant::now()).record(SERVICE_LABEL);
        let (backends, dropped) = backends();
        storm_cli::metrics::record_gateway(SERVICE_LABEL, &backends, dropped);
    })
}

fn on_async<R: AsyncRuntime>(
    args: &GatewayArgs,
    config: GatewayConfig,
    options: GatewayOptions,
    metrics: Option<MetricsEndpoint>,
) -> io::Result<()> {
    R::block_on(async {
        let gateway = Gateway::<R>::bind(config, options).await?;
        let handle = gateway.handle();
        let backends = handle.backends();
        banner(args, handle.local_addr(), &backends);
        let observed = handle.clone();
        serve_metrics(metrics, handle.hub().clone(), move || {
            (observed.backends(), observed.dropped_replies())
        })?;
        // Backend ups and downs, for the person watching, until the
        // shutdown closes them.
        for backend in backends {
            let handle = handle.clone();
            R::spawn(async move {
                while handle.wait_backend(&backend.route, true).await {
                    backend_up(&backend);
                    handle.wait_backend(&backend.route, false).await;
                    if handle.is_shutting_down() {
                        return;
                    }
                    backend_down(&backend);
                }
            });
        }
        let stopping = async {
            interrupt::ctrl_c().await;
            shutting_down(handle.client_count());
            handle.shutdown(SHUTDOWN_TIMEOUT).await;
            Ok(())
        };
        // `serve` returns when the shutdown stops the listener, before the
        // shutdown has closed the clients and the backends: done is when
        // the shutdown is, unless the listener fails first.
        let serving = async {
            gateway.serve().await?;
            std::future::pending().await
        };
        smol::future::or(serving, stopping).await
    })
}

fn on_std(
    args: &GatewayArgs,
    config: GatewayConfig,
    options: GatewayOptions,
    metrics: Option<MetricsEndpoint>,
) -> io::Result<()> {
    let gateway = blocking::Gateway::bind(config, options)?;
    let handle = gateway.handle();
    let backends = handle.backends();
    banner(args, handle.local_addr(), &backends);
    let observed = handle.clone();
    serve_metrics(metrics, handle.hub().clone(), move || {
        (observed.backends(), observed.dropped_replies())
    })?;
    for backend in backends {
        let handle = handle.clone();
        std::thread::spawn(move || {
            while handle.wait_backend(&backend.route, true, Duration::MAX) {
                backend_up(&backend);
                let _ = handle.wait_backend(&backend.route, false, Duration::MAX);
                if handle.is_shutting_down() {
                    return;
                }
                backend_down(&backend);
            }
        });
    }
    let serving = gateway.spawn()?;
    interrupt::wait();
    shutting_down(handle.client_count());
    handle.shutdown(SHUTDOWN_TIMEOUT);
    serving
        .join()
        .map_err(|_| io::Error::other("the accept thread panicked"))?
}
