//! `storm chat`: the command line of the chat service
//! ([`storm_services::chat`], where the protocol, the page and the admin
//! console are documented).

use std::io;
use std::time::Duration;

use storm_backplane::nats::NatsConfig;
use storm_backplane::redis::RedisConfig;
use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::ws::deflate::DeflateConfig;
use storm_services::chat::{BackplaneConfig, ChatConfig, PageAddr};

use storm_cli::policy::{PolicyArgs, Service};
use storm_cli::runtime::{Runtime, TlsArgs};

/// Options of `storm chat`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    // The doc comment is `--help` text (clap shows it verbatim), not
    // Markdown: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// WebSocket address to listen on (IPv4 or IPv6, e.g. [::1]:9002).
    #[arg(long, default_value = "127.0.0.1:9002")]
    addr: String,
    /// Address of the HTTP listener serving the chat page (HTTPS with
    /// --tls). Default: the WebSocket host with the next port (port 0 if
    /// --addr has port 0).
    #[arg(long)]
    http_addr: Option<String>,
    /// Do not serve the chat page.
    #[arg(long, conflicts_with = "http_addr")]
    no_http: bool,
    /// Milliseconds between tick messages to every client; 0 turns the tick
    /// off.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Turn off permessage-deflate (on by default).
    #[arg(long)]
    no_deflate: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Runtime to serve on: tokio or smol (async tasks), or std (threads).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
    /// An origin whose pages may connect, as browsers send it
    /// (`scheme://host[:port]`, e.g. `https://chat.example.com`); repeat for
    /// more. Default: only the chat page's own origin (the host it was
    /// loaded from, the page port). Other pages are refused with 403;
    /// clients that send no Origin (not browsers) are not checked.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// A token every client must present: ?token=TOKEN on the WebSocket URL
    /// or an `Authorization: Bearer TOKEN` header (else 401). The page is
    /// then served only at /?token=TOKEN and passes it on. Letters, digits,
    /// -, ., _ and ~. Default: none.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Run as one node of a chat spread over several: every `storm chat`
    /// given the same Redis server (redis://HOST:PORT) delivers room
    /// messages (chat, joined, left, renamed) to the members of the room on
    /// every node, in one order, each with its "epoch" and "offset"; a
    /// join with the last epoch and offset seen gets what it missed (see
    /// the README). Redis runs on every --runtime (on std the backplane
    /// runs on a smol executor thread). With a NATS server
    /// (nats://HOST:PORT) the same, but NATS keeps no history: no epoch or
    /// offset, and a join with one is told the missed messages cannot be
    /// recovered; NATS needs --runtime tokio (refused on smol and std).
    /// Default: none, this node alone.
    #[arg(long, value_name = "URL")]
    backplane: Option<String>,
    /// With --backplane redis://: messages each room's history keeps (at
    /// least) for recovery; 0 = none (messages then carry no offset). NATS keeps none.
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "backplane")]
    backplane_history: usize,
    /// With --backplane: milliseconds a user stays in the other nodes'
    /// user lists after its node stops refreshing it (every third of this):
    /// the users of a node that dies disappear within it (and, with
    /// redis://, their names are free again).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        requires = "backplane",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    backplane_presence_ttl_ms: u64,
    /// With --backplane redis://: append each room message's stage times
    /// (queued, taken into a pipeline, replied; received, delivered) to
    /// FILE, for measuring where its latency goes across nodes (xnode
    /// --stages in benches/e2e reads them). Default: none kept.
    #[arg(long, value_name = "FILE", env = "STORM_BACKPLANE_STAGES")]
    backplane_stages: Option<std::path::PathBuf>,
}

/// `storm chat`: WebSocket, pings every 15 s, messages up to 64 KiB.
const SERVICE: Service = Service {
    heartbeat_secs: 15,
    max_message: 64 * 1024,
    ..Service::ws("storm chat")
};

/// Runs `storm chat` until `/stop` on the console or Ctrl-C, on the
/// runtime of `--runtime`.
pub(crate) fn run(args: &ChatArgs) -> io::Result<()> {
    let mut options = ServerOptions::default().with_addr(args.addr.clone());
    args.tls.apply(&mut options)?;
    let policy = args.policy.resolve(&SERVICE)?;
    policy.apply(&mut options);
    let mut ws = WsOptions::default();
    ws.deflate = (!args.no_deflate).then(DeflateConfig::default);
    ws.config.max_message_size = policy.max_message;
    ws.config.max_frame_size = policy.max_message;
    let mut config = ChatConfig::default();
    config.options = options;
    config.ws = ws;
    config.page = match (&args.http_addr, args.no_http) {
        (_, true) => PageAddr::Off,
        (Some(addr), false) => PageAddr::At(addr.clone()),
        (None, false) => PageAddr::NextPort,
    };
    config.tick = (args.tick_ms > 0).then(|| Duration::from_millis(args.tick_ms));
    config.runtime = args.runtime.into();
    config.allowed_origins.clone_from(&args.allow_origin);
    config.token.clone_from(&args.token);
    config.backplane = args.backplane.as_deref().map(|url| {
        let presence_ttl = Duration::from_millis(args.backplane_presence_ttl_ms);
        // By the URL's scheme; anything but nats:// is Redis's to judge.
        if url.starts_with("nats://") {
            let mut nats = NatsConfig::default();
            nats.url = url.to_owned();
            nats.presence_ttl = presence_ttl;
            return BackplaneConfig::Nats(nats);
        }
        let mut redis = RedisConfig::default();
        redis.url = url.to_owned();
        redis.history_len = args.backplane_history;
        redis.presence_ttl = presence_ttl;
        redis.stages.clone_from(&args.backplane_stages);
        BackplaneConfig::Redis(redis)
    });
    let metrics = storm_cli::metrics::bind(args.policy.metrics_addr.as_deref())?;
    storm_cli::interrupt::install()?;
    storm_services::chat::serve_with(config, &storm_cli::interrupt::signal(), |bound| {
        storm_cli::metrics::start(metrics, "chat", &bound.hub);
    })
}
