//! The `storm` command line: services built on Storm's public API.
//!
//! `storm --help` lists the services; each one's options are documented
//! with `storm <service> --help`. Every option that takes one value can
//! also come from a `STORM_…` environment variable ([`environment`]). Logs
//! go to stderr, filtered by the `STORM_LOG` environment variable (default
//! `warn`), as text (in colour only on a terminal and without `NO_COLOR`)
//! or JSON lines (`--log-format json`).

use std::ffi::OsStr;
use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// How long services give their sessions to close on Ctrl-C.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

mod bench;
mod broker;
mod cert;
mod chat;
mod client;
mod echo;
mod environment;
mod gateway;
mod json;
mod reconnect;
mod rpc;

/// Storm: message-oriented TCP and WebSocket services.
#[derive(Debug, Parser)]
#[command(name = "storm", version, about)]
struct Cli {
    /// Worker threads of the tokio runtime (`--runtime tokio`, the
    /// default): 1 runs every connection on the main thread (a
    /// current-thread runtime: no wake-ups across threads); default: one
    /// per CPU the process may run on (its affinity), so a current-thread
    /// runtime on one. smol takes SMOL_THREADS; std gives each connection
    /// threads of its own.
    #[arg(long, global = true, env = "STORM_THREADS", value_name = "N")]
    threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr (filtered by STORM_LOG, default warn): text, in
    /// colour on a terminal without NO_COLOR; or json, one object per line
    /// (timestamp, level, fields, target, spans), never in colour.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Echo every message back to its sender.
    Echo(echo::EchoArgs),
    /// Length-prefixed JSON service: ping, echo, broadcast, stats.
    Json(json::JsonArgs),
    /// A WebSocket chat server with rooms, an admin console on stdin, and
    /// a chat page for browsers.
    Chat(chat::ChatArgs),
    /// One WebSocket endpoint in front of named backends (WebSocket or
    /// length-prefixed TCP) from a route file: clients do the route
    /// handshake, then start each message with a ROUTENAME=name line. Exit
    /// code 2 for a bad route file.
    Gateway(gateway::GatewayArgs),
    /// Request broker: consumers and providers meet on channel ids;
    /// requests of any size stream through in frames.
    Broker(broker::ServerArgs),
    /// A request/response RPC demo server (WebSocket or length-prefixed
    /// TCP) with the methods echo, name, time and sleep.
    Rpc(rpc::ServeArgs),
    /// Clients of the services.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Load generator for every service: msgs/s and round-trip latency
    /// percentiles. Exit code 2 for bad flags (a non-loopback address).
    Bench(bench::BenchArgs),
    /// Make a development CA and a server certificate it signed (ca.pem,
    /// cert.pem, key.pem) for --tls and --tls-ca, and print commands that
    /// use them.
    Cert(cert::CertArgs),
}

/// `storm client <service>`.
#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Client of `storm json`: demo, interactive or perf mode.
    Json(json::ClientArgs),
    /// Client of `storm broker`: send a request, or run a demo provider.
    #[command(subcommand)]
    Broker(broker::ClientArgs),
    /// RPC client: calls a method on one or more endpoints (round-robin or
    /// failover), with timeouts, compression and a byte trace.
    Rpc(rpc::ClientArgs),
    /// Generic WebSocket client: each stdin line goes out as a message,
    /// each message received is printed on a line.
    Ws(client::WsArgs),
    /// Generic TCP client (raw, length-prefixed or lines): each stdin line
    /// goes out as a message, each message received is printed on a line.
    Tcp(client::TcpArgs),
}

/// Whether log lines carry ANSI colours: only text (never JSON), only
/// when stderr is a terminal (a file or a pipe gets plain text), and not
/// when `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
fn log_colour(format: LogFormat, stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    format == LogFormat::Text && stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Sends logs to stderr (stdout carries the services' own output) in
/// `format`; STORM_LOG=debug, or any tracing filter, changes what is shown.
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STORM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colour(
            format,
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn main() -> ExitCode {
    let cli: Cli = environment::parse();
    init_logs(cli.log_format);
    // Unset: one worker per CPU this process may run on, and so a
    // current-thread runtime when that is one (pinned with `taskset -c 0`,
    // a one-CPU container): a multi-threaded runtime of one worker costs
    // more per wake-up and gains nothing.
    if let Some(threads) = cli
        .threads
        .or_else(|| std::thread::available_parallelism().ok())
    {
        storm_services::host::set_tokio_threads(threads.get());
    }
    let result = match cli.command {
        Command::Gateway(args) => return gateway::run(&args),
        Command::Rpc(args) => return rpc::serve(&args),
        Command::Client(ClientCommand::Rpc(args)) => return rpc::client(&args),
        Command::Client(ClientCommand::Ws(args)) => return client::ws(&args),
        Command::Client(ClientCommand::Tcp(args)) => return client::tcp(&args),
        Command::Bench(args) => return bench::run(&args),
        Command::Cert(args) => cert::run(&args),
        Command::Echo(args) => echo::run(&args),
        Command::Json(args) => json::serve(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Client(ClientCommand::Json(args)) => json::client(&args),
        Command::Broker(args) => broker::serve(&args).map_err(io::Error::other),
        Command::Client(ClientCommand::Broker(args)) => {
            broker::client(&args).map_err(io::Error::other)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn logs_are_coloured_only_as_text_on_a_terminal_without_no_color() {
        use LogFormat::{Json, Text};
        assert!(log_colour(Text, true, None));
        assert!(log_colour(Text, true, Some(OsStr::new(""))));
        assert!(!log_colour(Text, true, Some(OsStr::new("1"))));
        assert!(!log_colour(Text, false, None));
        assert!(!log_colour(Text, false, Some(OsStr::new("1"))));
        assert!(!log_colour(Json, true, None));
    }

    #[test]
    fn every_option_of_every_command_is_checked_by_clap_with_its_variable() {
        environment::with_env(Cli::command(), &[]).debug_assert();
    }
}
