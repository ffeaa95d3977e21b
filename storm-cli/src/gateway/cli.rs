//! `storm gateway --config routes.ini [--addr HOST:PORT]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{Gateway, GatewayConfig, GatewayOptions, LoadError};

/// Exit code for a route file that cannot be used (or a bad flag, as clap
/// does).
pub const EXIT_CONFIG: u8 = 2;

/// Options of `storm gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Route file: one INI section per backend with name, port, and
    /// optionally host (default 127.0.0.1) and protocol (ws or tcp;
    /// default ws). See routes.example.ini.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// WebSocket address clients connect to: IPv4, or IPv6 in brackets.
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub addr: String,
    /// Longest wait between two attempts to reconnect a backend, in
    /// milliseconds (attempts start at 100 ms and double up to this).
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub max_backoff_ms: u64,
    /// Seconds a client has to finish the route handshake; 0 waits forever.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub handshake_timeout: u64,
}

/// Runs `storm gateway`: exit code 2 with `FILE:LINE: why` on stderr for a
/// bad route file, 1 for other failures (the address is taken, …).
#[must_use]
pub fn run(args: &GatewayArgs) -> ExitCode {
    let config = match GatewayConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => return config_failure(&e),
    };
    let mut options = GatewayOptions {
        addr: args.addr.clone(),
        handshake_timeout: (args.handshake_timeout > 0)
            .then(|| Duration::from_secs(args.handshake_timeout)),
        ..GatewayOptions::default()
    };
    if let storm_proto::reconnect::BackoffPolicy::Exponential { initial, max, .. } =
        &mut options.reconnect.policy
    {
        *max = Duration::from_millis(args.max_backoff_ms).max(*initial);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return failure(&e),
    };
    match runtime.block_on(serve(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
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

async fn serve(config: GatewayConfig, options: GatewayOptions) -> std::io::Result<()> {
    let gateway = Gateway::bind(config, options).await?;
    let handle = gateway.handle();
    println!("storm gateway listening on ws://{}", handle.local_addr());
    for backend in handle.backends() {
        println!("route {} -> {}", backend.route, backend.url);
    }
    // Backend ups and downs, for the person watching.
    for backend in handle.backends() {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                if !handle.wait_backend(&backend.route, true).await {
                    return;
                }
                eprintln!("backend {} connected ({})", backend.route, backend.url);
                if !handle.wait_backend(&backend.route, false).await {
                    return;
                }
                eprintln!(
                    "backend {} down, reconnecting ({})",
                    backend.route, backend.url
                );
            }
        });
    }
    let stop = handle.clone();
    crate::interrupt::spawn_on_ctrl_c(async move {
        stop.shutdown(Duration::from_secs(5)).await;
    })?;
    gateway.serve().await
}
