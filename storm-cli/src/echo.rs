//! `storm echo`: every message goes back to its sender
//! ([`storm_services::echo`]), over WebSocket or plain TCP with any of the
//! core's framers, with or without TLS, on the runtime of your choice. The
//! same options build the same server on each adapter; only the I/O
//! underneath changes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;
use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::framing::{DelimiterConfig, Framing, LengthPrefixConfig, RawConfig};
use storm_proto::ws::Config;
use storm_proto::ws::deflate::DeflateConfig;
use storm_services::echo::Echo;
use storm_services::host::{self, Listen};

use storm_cli::interrupt;
use storm_cli::policy::{PolicyArgs, Service};
use storm_cli::runtime::{Runtime, TlsArgs};

/// Options of `storm echo`.
#[derive(Debug, clap::Args)]
pub(crate) struct EchoArgs {
    /// Wire protocol: raw bytes, 4-byte length-prefixed, newline-delimited
    /// lines, or WebSocket.
    #[arg(long, value_enum, default_value_t = Proto::Ws)]
    proto: Proto,
    // The doc comment is `--help` text (clap shows it verbatim), not
    // Markdown: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Address to listen on (IPv4 or IPv6, e.g. [::1]:9001).
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Turn off permessage-deflate for WebSocket (on by default).
    #[arg(long)]
    no_deflate: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Runtime to serve on: tokio or smol (async tasks), or std (two
    /// threads per connection).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
    /// On Ctrl-C, how long sessions get to close gracefully before they
    /// are aborted, in seconds.
    #[arg(long, default_value_t = 5.0)]
    shutdown_timeout: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// Raw TCP: whatever arrives is sent back.
    Raw,
    /// 4-byte big-endian length prefix.
    Lp,
    /// Newline-delimited lines.
    Line,
    /// WebSocket (RFC 6455), text and binary.
    Ws,
}

/// Runs `storm echo` until Ctrl-C.
pub(crate) fn run(args: &EchoArgs) -> io::Result<()> {
    let mut options = ServerOptions::default().with_addr(args.addr.clone());
    args.tls.apply(&mut options)?;
    let service = match args.proto {
        Proto::Ws => Service::ws("storm echo"),
        Proto::Raw => Service::raw("storm echo --proto raw"),
        Proto::Lp | Proto::Line => Service::tcp("storm echo --proto lp|line"),
    };
    let policy = args.policy.resolve(&service)?;
    policy.apply(&mut options);
    let max = policy.max_message;
    let listen = match args.proto {
        Proto::Ws => {
            let mut ws = WsOptions::default().with_config(
                Config::default()
                    .with_max_message_size(max)
                    .with_max_frame_size(max),
            );
            ws.deflate = (!args.no_deflate).then(DeflateConfig::default);
            Listen::Ws(ws)
        }
        Proto::Raw => Listen::Tcp(Framing::Raw(RawConfig::default())),
        Proto::Lp => {
            let mut config = LengthPrefixConfig::default();
            config.max_frame_len = max;
            Listen::Tcp(Framing::LengthPrefixWith(config))
        }
        Proto::Line => {
            let mut config = DelimiterConfig::default();
            config.max_message_len = max;
            Listen::Tcp(Framing::Delimiter(config))
        }
    };
    let metrics = storm_cli::metrics::bind(args.policy.metrics_addr.as_deref())?;
    interrupt::install()?;
    let timeout = Duration::from_secs_f64(args.shutdown_timeout.max(0.0));
    let stop = interrupt::signal();
    host::serve(
        args.runtime.into(),
        options,
        listen,
        &stop,
        timeout,
        |bound| {
            banner(args, bound.local_addr);
            storm_cli::metrics::start(metrics, "echo", &bound.hub);
            Echo
        },
    )
}

fn banner(args: &EchoArgs, addr: SocketAddr) {
    let scheme = args.tls.scheme(args.proto == Proto::Ws);
    println!(
        "storm echo ({:?}, {:?} runtime) listening on {scheme}://{addr}",
        args.proto, args.runtime
    );
    tracing::info!(%addr, proto = ?args.proto, runtime = ?args.runtime, "echo listening");
}
