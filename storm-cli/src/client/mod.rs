//! `storm client ws` and `storm client tcp`: generic clients in the spirit
//! of websocat and netcat. Each line of stdin goes out as one message, each
//! message received comes out on stdout, and stderr says what happens to
//! the connection (`storm client: connected to …`).
//!
//! - [`input`] turns stdin into messages, on a thread of its own.
//! - [`session`] runs the connections: connect (round-robin or failover
//!   over the endpoints, the core's [`EndpointSet`] and its backoff with
//!   jitter), pump messages both ways, reconnect.
//!
//! [`EndpointSet`]: storm_proto::reconnect::EndpointSet

mod input;
mod session;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use storm_host::options::{ClientOptions, TlsClientOptions, WsOptions};
use storm_proto::framing::{DelimiterConfig, Framing, LengthPrefixConfig, RawConfig};
use storm_proto::reconnect::BackoffConfig;
use storm_services::rpc::Endpoint;

use crate::reconnect::ReconnectArgs;
use crate::rpc::StrategyArg;
use storm_cli::runtime::Runtime;

/// Exit codes of `storm client ws` and `storm client tcp` (`--help` and the
/// README list them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// stdin ended (or Ctrl-C) and the connection closed: cleanly, or
    /// after `--close-timeout`.
    Done = 0,
    /// Reading stdin or writing stdout failed.
    Io = 1,
    /// An option is invalid (as clap's own usage errors).
    Usage = 2,
    /// No connection could be made (with `--reconnect`: every endpoint ran
    /// out of `--max-attempts`).
    ConnectFailed = 3,
    /// The peer closed the connection, it ended, or the peer stopped
    /// answering pings, and `--reconnect` is off.
    PeerClosed = 4,
    /// The peer broke the protocol (WebSocket or framing), and
    /// `--reconnect` is off.
    ProtocolError = 5,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit as u8)
    }
}

/// `--help` text after the options of both clients.
const AFTER_HELP: &str = "\
Output: each message received is written to stdout followed by a newline \
(raw TCP: the bytes as they come, nothing added); binary messages are \
written as they are, not as hex.

At stdin's end (or Ctrl-C) the client closes: ws sends its close frame and waits for the server's; tcp shuts its sending side down (a TCP FIN) and goes on printing what the server sends until the server ends the connection. Either waits at most --close-timeout, then closes anyway (still exit 0).

Exit codes:
  0  stdin ended (or Ctrl-C) and the connection closed (cleanly, or after --close-timeout)
  1  reading stdin or writing stdout failed
  2  bad option (an unreadable --tls-ca file, a malformed endpoint or header)
  3  could not connect (with --reconnect: --max-attempts used up on every endpoint)
  4  the peer closed the connection, or stopped answering pings (without --reconnect)
  5  the peer broke the protocol (without --reconnect)";

/// Options both generic clients take.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CommonArgs {
    /// Another endpoint, tried after the first (repeat for several): see
    /// --strategy.
    #[arg(long = "endpoint", value_name = "ENDPOINT")]
    endpoints: Vec<String>,
    /// Which endpoint each connection goes to: round-robin moves on to the
    /// next one at every reconnect; failover always takes the first one
    /// that is up. An endpoint that failed is skipped for its backoff
    /// delay.
    #[arg(long, value_enum, default_value = "failover")]
    strategy: StrategyArg,
    /// `--reconnect` (lines read meanwhile wait) and `--max-attempts`
    /// (used up on every endpoint: exit code 3).
    #[command(flatten)]
    reconnect: ReconnectArgs,
    /// Trust the CA certificates in this PEM file (e.g. the ca.pem of
    /// `storm cert`) instead of the public web roots.
    #[arg(long, value_name = "CA_PEM")]
    tls_ca: Option<PathBuf>,
    /// Largest message sent or received, in bytes: a longer stdin line is
    /// reported and not sent; a longer message received closes the
    /// connection (a protocol error).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    max_message: usize,
    /// Seconds to connect (TCP, TLS and WebSocket handshakes).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    connect_timeout: f64,
    /// Seconds to wait, once stdin ended, for the server to finish: its
    /// close frame (ws), or its end of the connection (tcp, whose sending
    /// side is shut down at once: what the server still sends is printed
    /// meanwhile).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    close_timeout: f64,
    /// Runtime the client runs on (std: blocking threads).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

/// Options of `storm client ws`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct WsArgs {
    /// The server's URL: ws://host:port/path, or wss:// over TLS.
    url: String,
    /// Send each line as a binary message (default: text; a line that is
    /// not UTF-8 is then reported and not sent).
    #[arg(long)]
    binary: bool,
    /// An extra header of the upgrade request, `Name: value` (repeat for
    /// several), e.g. `Authorization: Bearer TOKEN`.
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// A subprotocol to offer (repeat for several, in preference order).
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Seconds between pings; the connection is dropped after 3 pings
    /// without a pong. 0 turns pings off.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    ping: f64,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options of `storm client tcp`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct TcpArgs {
    /// The server: host:port (tcp://host:port), or tls://host:port over TLS
    /// (also what --tls-ca makes of host:port).
    addr: String,
    /// How messages are framed on the wire.
    #[arg(long, value_enum, default_value_t = Wire::Line)]
    proto: Wire,
    #[command(flatten)]
    common: CommonArgs,
}

/// How `storm client tcp` frames messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// No framing: stdin's bytes go out as they come, and what arrives is
    /// written as it comes.
    Raw,
    /// 4-byte big-endian length prefix.
    Lp,
    /// Newline-delimited lines.
    Line,
}

impl Wire {
    /// The framer, with messages of at most `max` bytes.
    fn framing(self, max: usize) -> Framing {
        match self {
            Self::Raw => Framing::Raw(RawConfig::default()),
            Self::Lp => {
                let mut config = LengthPrefixConfig::default();
                config.max_frame_len = max;
                Framing::LengthPrefixWith(config)
            }
            Self::Line => {
                let mut config = DelimiterConfig::default();
                config.max_message_len = max;
                Framing::Delimiter(config)
            }
        }
    }
}

/// Runs `storm client ws`.
#[must_use]
pub(crate) fn ws(args: &WsArgs) -> ExitCode {
    let plan = (|| {
        let mut plan = Plan::new(&args.url, &args.common, |endpoint| match endpoint {
            Endpoint::Ws(url) => Ok(Target {
                tls: url.starts_with("wss://"),
                label: url.clone(),
                address: url,
            }),
            other => Err(format!("{other} is not a ws:// or wss:// URL")),
        })?;
        for header in &args.headers {
            plan.options.headers.push(header_of(header)?);
        }
        plan.options.link.heartbeat.interval = seconds(args.ping, "--ping", true)?;
        let mut ws = WsOptions::default().with_subprotocols(args.subprotocols.clone());
        ws.config.max_message_size = args.common.max_message;
        ws.config.max_frame_size = args.common.max_message;
        plan.input = if args.binary {
            input::Mode::Binary
        } else {
            input::Mode::Text
        };
        plan.transport = Transport::Ws(ws);
        Ok(plan)
    })();
    run(plan, args.common.runtime)
}

/// Runs `storm client tcp`.
#[must_use]
pub(crate) fn tcp(args: &TcpArgs) -> ExitCode {
    let tls_ca = args.common.tls_ca.is_some();
    let plan = (|| {
        let mut plan = Plan::new(&args.addr, &args.common, |endpoint| match endpoint {
            Endpoint::Tcp(addr) => Ok(Target {
                label: format!("{}://{addr}", if tls_ca { "tls" } else { "tcp" }),
                address: addr,
                tls: tls_ca,
            }),
            Endpoint::Tls(addr) => Ok(Target {
                label: format!("tls://{addr}"),
                address: addr,
                tls: true,
            }),
            other => Err(format!("{other} is not host:port, tcp:// or tls://")),
        })?;
        plan.input = match args.proto {
            Wire::Raw => input::Mode::Raw,
            Wire::Lp | Wire::Line => input::Mode::Binary,
        };
        plan.transport = Transport::Tcp(args.proto.framing(args.common.max_message));
        // At stdin's end: shut the sending side down (a FIN) and print
        // what the server still sends until it ends the connection.
        plan.options.link.half_close = true;
        Ok(plan)
    })();
    run(plan, args.common.runtime)
}

/// Where one endpoint is.
#[derive(Debug, Clone)]
struct Target {
    /// As messages name it: the URL, or `tcp://`/`tls://` and the address.
    label: String,
    /// What the client connects to: the URL, or `host:port`.
    address: String,
    /// Over TLS.
    tls: bool,
}

/// WebSocket or framed TCP.
#[derive(Debug, Clone)]
enum Transport {
    Ws(WsOptions),
    Tcp(Framing),
}

/// Everything a generic client runs with, checked.
#[derive(Debug)]
struct Plan {
    /// The endpoints, in the order given (at least one).
    targets: Vec<Target>,
    /// TLS for the targets that use it.
    tls: TlsClientOptions,
    /// Options of every connection (TLS set per target).
    options: ClientOptions,
    transport: Transport,
    /// What stdin becomes.
    input: input::Mode,
    /// `--max-message`.
    max_message: usize,
    /// Failover (else round-robin).
    failover: bool,
    /// `--reconnect`, with its backoff.
    reconnect: Option<BackoffConfig>,
}

impl Plan {
    /// The options `common` gives, with the endpoints `first` and
    /// `--endpoint`s, each read by [`Endpoint::parse`] and turned into a
    /// target by `target`.
    fn new(
        first: &str,
        common: &CommonArgs,
        target: impl Fn(Endpoint) -> Result<Target, String>,
    ) -> Result<Self, String> {
        let targets = std::iter::once(first)
            .chain(common.endpoints.iter().map(String::as_str))
            .map(|text| {
                let endpoint = Endpoint::parse(text).map_err(|e| e.to_string())?;
                target(endpoint)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match &common.tls_ca {
            Some(path) => {
                let ca =
                    storm_host::tls::read_pem_file(path).map_err(|e| format!("--tls-ca: {e}"))?;
                if !targets.iter().any(|target| target.tls) {
                    return Err(
                        "--tls-ca is for TLS endpoints (wss://, tls://); these are plain".into(),
                    );
                }
                TlsClientOptions::with_ca(ca)
            }
            None => TlsClientOptions::default(),
        };
        let mut options = ClientOptions::default().with_connect_timeout(seconds(
            common.connect_timeout,
            "--connect-timeout",
            false,
        )?);
        options.link.close_timeout = seconds(common.close_timeout, "--close-timeout", true)?;
        Ok(Self {
            targets,
            tls,
            options,
            transport: Transport::Ws(WsOptions::default()),
            input: input::Mode::Text,
            max_message: common.max_message,
            failover: common.strategy == StrategyArg::Failover,
            reconnect: common.reconnect.backoff(),
        })
    }
}

impl Plan {
    /// What a connection to the endpoint at `index` connects to, and with
    /// which options (TLS for a TLS endpoint).
    fn connection(&self, index: usize) -> (&str, ClientOptions) {
        let target = &self.targets[index];
        let mut options = self.options.clone();
        options.tls = target.tls.then(|| self.tls.clone());
        (&target.address, options)
    }
}

/// `Name: value` (or `Name:value`) as a header.
fn header_of(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("--header {text:?} is not `Name: value`")),
    }
}

/// A number of seconds from a flag: finite and not negative, and not zero
/// unless `zero_is_off`.
fn seconds(value: f64, flag: &str, zero_is_off: bool) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| zero_is_off || !d.is_zero())
        .ok_or_else(|| format!("{flag} must be a positive number of seconds"))
}

/// Runs `plan` on `runtime`.
fn run(plan: Result<Plan, String>, runtime: Runtime) -> ExitCode {
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("storm client: {e}");
            return Exit::Usage.into();
        }
    };
    let exit = match runtime {
        Runtime::Tokio => session::on_async::run::<storm_tokio::Tokio>(plan),
        Runtime::Smol => session::on_async::run::<storm_smol::Smol>(plan),
        Runtime::Std => session::on_std::run(plan),
    };
    exit.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_name_colon_value() {
        assert_eq!(
            header_of("Authorization: Bearer a:b").unwrap(),
            ("Authorization".to_owned(), "Bearer a:b".to_owned())
        );
        assert_eq!(
            header_of("X-Id:7").unwrap(),
            ("X-Id".to_owned(), "7".to_owned())
        );
        assert!(header_of("no colon").is_err());
        assert!(header_of(": value").is_err());
    }

    #[test]
    fn seconds_are_positive_and_finite() {
        assert_eq!(seconds(0.5, "--x", false), Ok(Duration::from_millis(500)));
        assert_eq!(seconds(0.0, "--x", true), Ok(Duration::ZERO));
        assert!(seconds(0.0, "--x", false).is_err());
        assert!(seconds(-1.0, "--x", true).is_err());
        assert!(seconds(f64::NAN, "--x", true).is_err());
    }
}
