//! The policy and limit flags every server service of `storm` takes
//! ([`PolicyArgs`]), turned into the library's options in one place
//! ([`PolicyArgs::resolve`], then [`Policy::apply`]).
//!
//! A service describes itself once ([`Service`]: its name, whether its
//! protocol can ping, its defaults); a flag the service cannot honour is
//! refused with an error that says why, never ignored.

use std::io;
use std::time::Duration;

use clap::ValueEnum;
use storm_host::options::ServerOptions;
use storm_proto::backpressure::{
    BackpressureConfig, DEFAULT_MAX_PENDING_BYTES, SlowConsumerPolicy,
};
use storm_proto::heartbeat::HeartbeatConfig;

/// Missed pongs after which a peer is dead, unless `--missed-pongs` says
/// otherwise.
pub const DEFAULT_MISSED_PONGS: u32 = 3;

/// The `--help` section that lists [`PolicyArgs`]. Set on each flag, not
/// as the struct's `next_help_heading`: that would also file every option
/// the service declares after the flattened flags (`--runtime`, …) under it.
const HELP_HEADING: &str = "Policies and limits";

/// `--max-connections`, `--slow-consumer`, `--max-pending-bytes`,
/// `--heartbeat`, `--missed-pongs`, `--idle-timeout`, `--max-message`,
/// `--metrics-addr` (the one flag not checked against the service: every
/// server has a hub to report, see [`metrics`](crate::metrics)): the
/// same flags, with the same meaning, on every server service. The help
/// text is `storm <service> --help` (clap shows it verbatim).
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Most connections at once; more are closed at accept, before any
    /// handshake. 0 = unlimited.
    #[arg(long, help_heading = HELP_HEADING, default_value_t = 0, value_name = "N")]
    pub max_connections: usize,
    /// What a send to a client whose queue holds --max-pending-bytes does:
    /// wait for it, drop the message, or disconnect the client. The broker
    /// takes only wait (its queues answer BUSY instead); the gateway never
    /// waits on one client, so there wait closes the client (1008) as
    /// disconnect does; chat's broadcasts never wait either, so there wait
    /// drops what does not fit.
    #[arg(long, help_heading = HELP_HEADING, value_enum, default_value_t = SlowConsumer::Wait)]
    pub slow_consumer: SlowConsumer,
    /// Bytes queued for one client before --slow-consumer applies. 0 =
    /// unlimited.
    #[arg(long, help_heading = HELP_HEADING, default_value_t = DEFAULT_MAX_PENDING_BYTES, value_name = "BYTES")]
    pub max_pending_bytes: usize,
    /// Seconds between WebSocket pings; a client that misses --missed-pongs
    /// pongs in a row is disconnected. 0 = off. [default: 30; chat: 15]
    /// Plain TCP (json, broker, echo and rpc over TCP) has no ping: there
    /// only 0 is taken (use --idle-timeout).
    #[arg(long, help_heading = HELP_HEADING, value_name = "SECS")]
    pub heartbeat: Option<u64>,
    /// Unanswered pings in a row after which a client is dead (at least 1;
    /// needs --heartbeat above 0, so never on plain TCP). [default: 3]
    #[arg(long, help_heading = HELP_HEADING, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub missed_pongs: Option<u32>,
    /// Seconds without anything from a client (messages, pongs) after which
    /// it is disconnected; works on every protocol. 0 = off.
    #[arg(long, help_heading = HELP_HEADING, default_value_t = 0, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Largest message accepted from a client, in bytes; a larger one
    /// closes the connection (WebSocket close code 1009). Raw TCP has no
    /// messages and refuses it. For rpc the
    /// largest request payload, for the broker the largest frame payload.
    /// [default: 16 MiB; json, broker: 1 MiB; chat: 64 KiB]
    #[arg(long, help_heading = HELP_HEADING, value_name = "BYTES")]
    pub max_message: Option<usize>,
    /// Serve this server's metrics (connections, messages and bytes each
    /// way, drops, backpressure, refused handshakes; the gateway's also its
    /// backends' state) as Prometheus text at http://HOST:PORT/metrics,
    /// labelled service="echo", "json", "chat", "broker", "gateway" or
    /// "rpc". Every server takes it. Off unless given.
    #[arg(long, help_heading = HELP_HEADING, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// `--slow-consumer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumer {
    /// The sender waits until the client has read enough.
    #[default]
    Wait,
    /// The message is dropped for that client (and counted).
    Drop,
    /// The client is disconnected.
    Disconnect,
}

impl From<SlowConsumer> for SlowConsumerPolicy {
    fn from(policy: SlowConsumer) -> Self {
        match policy {
            SlowConsumer::Wait => Self::Wait,
            SlowConsumer::Drop => Self::Drop,
            SlowConsumer::Disconnect => Self::Disconnect,
        }
    }
}

/// What a service is, for its policy flags: where they differ from one
/// service to another, it is here.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The command, for error messages (`storm json`).
    pub name: &'static str,
    /// Whether the protocol can ping (WebSocket): `--heartbeat` and
    /// `--missed-pongs` are refused otherwise.
    pub pings: bool,
    /// `--heartbeat` when not given, in seconds (where it pings).
    pub heartbeat_secs: u64,
    /// `--max-message` when not given.
    pub max_message: usize,
    /// Whether the service takes only `--slow-consumer wait`.
    pub waits_only: bool,
    /// Whether the protocol has messages: raw TCP has only bytes, and
    /// `--max-message` is refused there.
    pub messages: bool,
}

impl Service {
    /// A WebSocket service: pings every 30 s, messages up to 16 MiB, every
    /// slow-consumer policy.
    #[must_use]
    pub const fn ws(name: &'static str) -> Self {
        Self {
            name,
            pings: true,
            heartbeat_secs: 30,
            max_message: 16 << 20,
            waits_only: false,
            messages: true,
        }
    }

    /// A plain TCP service: no ping, messages up to 16 MiB, every
    /// slow-consumer policy.
    #[must_use]
    pub const fn tcp(name: &'static str) -> Self {
        Self {
            pings: false,
            ..Self::ws(name)
        }
    }

    /// Raw TCP: neither pings nor messages, only bytes.
    #[must_use]
    pub const fn raw(name: &'static str) -> Self {
        Self {
            messages: false,
            ..Self::tcp(name)
        }
    }
}

/// The flags, checked against a [`Service`] and with its defaults filled
/// in: what the library's options get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// [`ServerOptions::max_connections`].
    pub max_connections: usize,
    /// [`ServerOptions::backpressure`].
    pub backpressure: BackpressureConfig,
    /// The heartbeat of [`ServerOptions::link`].
    pub heartbeat: HeartbeatConfig,
    /// Largest message taken, in bytes: each service puts it where its
    /// protocol's limit is.
    pub max_message: usize,
}

impl PolicyArgs {
    /// The policy these flags ask of `service`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming the flag, when `service` cannot honour it:
    /// `--heartbeat` above 0 or `--missed-pongs` on a protocol without
    /// ping, `--missed-pongs` with the heartbeat off, `--max-message` on
    /// raw TCP, a slow-consumer
    /// policy other than wait where only wait is taken.
    pub fn resolve(&self, service: &Service) -> io::Result<Policy> {
        let refuse = |why: String| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {why}", service.name),
            ))
        };
        if !service.pings {
            if let Some(secs @ 1..) = self.heartbeat {
                return refuse(format!(
                    "--heartbeat {secs}: plain TCP has no ping to send; use --idle-timeout to \
                     close silent clients"
                ));
            }
            if self.missed_pongs.is_some() {
                return refuse(
                    "--missed-pongs: plain TCP has no ping, so no pong to miss".to_owned(),
                );
            }
        }
        let interval = match (service.pings, self.heartbeat) {
            (false, _) => 0,
            (true, given) => given.unwrap_or(service.heartbeat_secs),
        };
        if interval == 0 && service.pings && self.missed_pongs.is_some() {
            return refuse("--missed-pongs needs a --heartbeat above 0".to_owned());
        }
        if let (false, Some(bytes)) = (service.messages, self.max_message) {
            return refuse(format!(
                "--max-message {bytes}: raw TCP has no messages, only bytes"
            ));
        }
        if service.waits_only && self.slow_consumer != SlowConsumer::Wait {
            return refuse(format!(
                "--slow-consumer {}: only wait is taken here (the bounded queues answer BUSY \
                 instead of dropping or disconnecting)",
                self.slow_consumer
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_owned())
            ));
        }
        let mut backpressure = BackpressureConfig::default();
        backpressure.max_pending_send_bytes = self.max_pending_bytes;
        backpressure.slow_consumer_policy = self.slow_consumer.into();
        Ok(Policy {
            max_connections: self.max_connections,
            backpressure,
            heartbeat: HeartbeatConfig::default()
                .with_interval(Duration::from_secs(interval))
                .with_max_missed(self.missed_pongs.unwrap_or(DEFAULT_MISSED_PONGS))
                .with_idle_timeout(Duration::from_secs(self.idle_timeout)),
            max_message: self.max_message.unwrap_or(service.max_message),
        })
    }
}

impl Policy {
    /// Puts the connection limit, the backpressure and the heartbeat into
    /// `options` (the message limit is the service's to place).
    pub fn apply(&self, options: &mut ServerOptions) {
        options.max_connections = self.max_connections;
        options.backpressure = self.backpressure;
        options.link.heartbeat = self.heartbeat.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn resolve(args: &[&str], service: &Service) -> io::Result<Policy> {
        let cli = Cli::try_parse_from(std::iter::once("storm").chain(args.iter().copied()))
            .map_err(io::Error::other)?;
        cli.policy.resolve(service)
    }

    #[test]
    fn defaults_are_the_services() {
        let ws = resolve(&[], &Service::ws("storm x")).expect("defaults");
        assert_eq!(ws.max_connections, 0);
        assert_eq!(ws.backpressure, BackpressureConfig::default());
        assert_eq!(ws.heartbeat.interval, Duration::from_secs(30));
        assert_eq!(ws.heartbeat.max_missed, 3);
        assert_eq!(ws.heartbeat.idle_timeout, Duration::ZERO);
        assert_eq!(ws.max_message, 16 << 20);
        let tcp = resolve(&[], &Service::tcp("storm x")).expect("defaults");
        assert_eq!(tcp.heartbeat.interval, Duration::ZERO);
    }

    #[test]
    fn every_flag_reaches_the_policy() {
        let policy = resolve(
            &[
                "--max-connections=7",
                "--slow-consumer=disconnect",
                "--max-pending-bytes=1000",
                "--heartbeat=2",
                "--missed-pongs=1",
                "--idle-timeout=9",
                "--max-message=500",
            ],
            &Service::ws("storm x"),
        )
        .expect("valid");
        assert_eq!(policy.max_connections, 7);
        assert_eq!(
            policy.backpressure.slow_consumer_policy,
            SlowConsumerPolicy::Disconnect
        );
        assert_eq!(policy.backpressure.max_pending_send_bytes, 1000);
        assert_eq!(policy.heartbeat.interval, Duration::from_secs(2));
        assert_eq!(policy.heartbeat.max_missed, 1);
        assert_eq!(policy.heartbeat.idle_timeout, Duration::from_secs(9));
        assert_eq!(policy.max_message, 500);
        let mut options = ServerOptions::default();
        policy.apply(&mut options);
        assert_eq!(options.max_connections, 7);
        assert_eq!(options.backpressure, policy.backpressure);
        assert_eq!(options.link.heartbeat, policy.heartbeat);
    }

    #[test]
    fn what_a_service_cannot_honour_is_refused() {
        let tcp = Service::tcp("storm json");
        let error = |args: &[&str], service: &Service| {
            resolve(args, service).expect_err("refused").to_string()
        };
        let e = error(&["--heartbeat", "5"], &tcp);
        assert!(e.starts_with("storm json: --heartbeat 5:"), "{e}");
        assert!(error(&["--missed-pongs", "2"], &tcp).contains("--missed-pongs"));
        // Off is what plain TCP does anyway, and idle timeouts work there.
        assert!(resolve(&["--heartbeat", "0", "--idle-timeout", "3"], &tcp).is_ok());
        let ws = Service::ws("storm chat");
        let e = error(&["--heartbeat", "0", "--missed-pongs", "2"], &ws);
        assert!(e.contains("needs a --heartbeat"), "{e}");
        assert!(
            Cli::try_parse_from(["storm", "--missed-pongs", "0"]).is_err(),
            "at least 1"
        );
        let broker = Service {
            waits_only: true,
            ..tcp
        };
        let e = error(&["--slow-consumer", "drop"], &broker);
        assert!(e.contains("--slow-consumer drop"), "{e}");
        assert!(resolve(&["--slow-consumer", "wait"], &broker).is_ok());
        let e = error(&["--max-message", "10"], &Service::raw("storm echo"));
        assert!(e.contains("--max-message 10: raw TCP"), "{e}");
        assert!(
            resolve(
                &["--metrics-addr", "127.0.0.1:0"],
                &Service::raw("storm echo --proto raw")
            )
            .is_ok(),
            "every server serves its metrics"
        );
    }
}
