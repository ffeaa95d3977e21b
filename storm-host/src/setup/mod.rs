//! What an adapter decides when it opens a connection, apart from the I/O:
//! the options checked and the TLS configurations built once, the
//! WebSocket upgrade as a byte-in, protocol-out step, a new connection
//! admitted into a hub as a [`Session`], and a client's reconnect schedule.
//!
//! A client adapter builds a [`ClientTarget`] and a [`ClientCore`] once,
//! then for every (re)connection: connects to [`ClientTarget::authority`],
//! runs TLS with `ClientTarget::tls` (feature `tls`) when set, calls
//! [`ClientTarget::open`] and, for WebSocket, sends the request and feeds
//! the response to the [`ClientUpgrade`] until it yields the [`Protocol`];
//! then [`ClientCore::session`], and when the connection ends,
//! [`ClientCore::ended`] and [`ClientCore::next_attempt`]. A server adapter
//! builds a [`ServerSetup`] at bind, takes an [`Admitted`] at accept, and
//! does the same with [`ServerSetup::open`], [`ServerUpgrade`] and
//! [`ServerSetup::admit`]; when `accept` itself fails, [`AcceptErrors`]
//! says whether to accept again at once or after a pause, and what to
//! report.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::RngCore;

use crate::hub::{ConnectionPermit, Hub, HubConfig, SessionId};
use crate::link::{LinkConfig, LinkDriver, Protocol};
use crate::options::{ClientOptions, ServerOptions, TlsClientConfig, TlsServerConfig, WsOptions};
use crate::session::{ClientError, Registry, Session};
use storm_proto::framing::{Framer, Framing, FramingConfigError, FramingError};
use storm_proto::reconnect::{Backoff, BackoffStep};
use storm_proto::tls_sniff::PlainFramer;
use storm_proto::ws::handshake::{
    ClientConfig, ClientHandshake, ClientStep, ServerConfig, ServerHandshake,
};
use storm_proto::ws::{Connection, Side, WsUrl};

mod accept;
mod upgrade;
pub use accept::{ACCEPT_BACKOFF, ACCEPT_REPORT_EVERY, AcceptErrors, AcceptStep};
/// The application's answer to an upgrade request (storm-proto's).
pub use storm_proto::ws::handshake::Decision;
pub use upgrade::{
    Answer, Opened, ServerRequest, ServerUpgrade, ServerUpgradeStep, TlsInfo, UpgradeInfo,
    UpgradeResponse, check_origins,
};

fn config_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::Config(e.to_string())
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// TLS for every (re)connection of one client, built once: the rustls
/// configuration and the name the server's certificate must carry.
/// Without the `tls` feature none can exist.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: TlsClientConfig,
    #[cfg(feature = "tls")]
    name: rustls_pki_types::ServerName<'static>,
}

impl ClientTls {
    /// `host` names the server unless the options name it.
    ///
    /// # Errors
    ///
    /// [`ClientError::Config`] for invalid TLS options or server name.
    #[cfg(feature = "tls")]
    pub fn new(
        options: &crate::options::TlsClientOptions,
        host: &str,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            config: crate::tls::client_config(options)
                .map_err(config_error)?
                .into(),
            name: crate::tls::server_name(options, host).map_err(config_error)?,
        })
    }

    /// The rustls configuration.
    #[must_use]
    pub fn config(&self) -> &TlsClientConfig {
        &self.config
    }

    /// The name the server's certificate must carry (and the SNI sent).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn name(&self) -> &rustls_pki_types::ServerName<'static> {
        &self.name
    }
}

/// Where and how a client connects, checked once and reused for every
/// reconnection.
#[derive(Clone)]
pub struct ClientTarget {
    kind: TargetKind,
    tls: Option<ClientTls>,
}

#[derive(Clone)]
enum TargetKind {
    Tcp { addr: String, framing: Framing },
    Ws { url: WsUrl, ws: WsOptions },
}

impl std::fmt::Debug for ClientTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTarget")
            .field("authority", &self.authority())
            .finish_non_exhaustive()
    }
}

impl ClientTarget {
    /// A WebSocket client of `url` (`ws://` or `wss://`). `wss://` uses
    /// `options.tls`, or the default TLS options when it is `None`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Url`] for a bad URL; [`ClientError::Config`] for
    /// invalid TLS options, TLS options with a `ws://` URL, or (without
    /// the `tls` feature) any TLS at all.
    pub fn ws(url: &str, options: &ClientOptions, ws: WsOptions) -> Result<Self, ClientError> {
        let url: WsUrl = url.parse().map_err(ClientError::Url)?;
        if !url.secure && options.tls.is_some() {
            return Err(config_error(
                "TLS options are set but the URL is ws://: use wss://",
            ));
        }
        #[cfg(feature = "tls")]
        let tls = match url.secure {
            true => Some(ClientTls::new(
                &options.tls.clone().unwrap_or_default(),
                &url.host,
            )?),
            false => None,
        };
        #[cfg(not(feature = "tls"))]
        let tls = no_tls(url.secure)?;
        Ok(Self {
            kind: TargetKind::Ws { url, ws },
            tls,
        })
    }

    /// A TCP client of `addr` (`host:port`) framing messages with
    /// `framing`; over TLS when `options.tls` is set, the certificate
    /// naming `host` unless `server_name` says otherwise.
    ///
    /// # Errors
    ///
    /// [`ClientError::Config`] for invalid framing or TLS options.
    pub fn tcp(addr: &str, options: &ClientOptions, framing: Framing) -> Result<Self, ClientError> {
        framing.build().map_err(config_error)?;
        #[cfg(feature = "tls")]
        let tls = match &options.tls {
            Some(tls) => Some(ClientTls::new(tls, crate::tls::host_of(addr))?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let tls = no_tls(options.tls.is_some())?;
        Ok(Self {
            kind: TargetKind::Tcp {
                addr: addr.to_owned(),
                framing,
            },
            tls,
        })
    }

    /// What to resolve and connect to: `host:port`.
    #[must_use]
    pub fn authority(&self) -> String {
        match &self.kind {
            TargetKind::Tcp { addr, .. } => addr.clone(),
            TargetKind::Ws { url, .. } => url.authority(),
        }
    }

    /// The TLS to run after connecting, if any.
    #[must_use]
    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// What a new connection does once connected (and past TLS): a TCP
    /// client speaks at once; a WebSocket client sends its upgrade request
    /// and reads the response into the returned [`ClientUpgrade`]. `rng`
    /// makes the handshake key. Without TLS, a server that answers with a
    /// TLS record is reported as one ([`storm_proto::tls_sniff`]).
    ///
    /// # Errors
    ///
    /// [`ClientError::Config`] for invalid options.
    pub fn open<R: RngCore + ?Sized>(
        &self,
        options: &ClientOptions,
        rng: &mut R,
    ) -> Result<ClientOpen<'_>, ClientError> {
        match &self.kind {
            TargetKind::Tcp { framing, .. } => Ok(ClientOpen::Ready(Protocol::Framed(
                framer(framing, self.has_tls(), FramingError::ServerSpeaksTls)
                    .map_err(config_error)?,
            ))),
            TargetKind::Ws { url, ws } => {
                let mut config = ClientConfig::new(url.host_header(), url.resource.clone());
                config.subprotocols.clone_from(&ws.subprotocols);
                config.deflate.clone_from(&ws.deflate);
                config.headers.clone_from(&options.headers);
                let mut request = BytesMut::new();
                let state =
                    ClientHandshake::start(&config, rng, &mut request).map_err(config_error)?;
                Ok(ClientOpen::Upgrade {
                    request: request.freeze(),
                    upgrade: ClientUpgrade { state, ws },
                })
            }
        }
    }

    /// What to call the handshake when it times out.
    #[must_use]
    pub fn handshake_name(&self) -> &'static str {
        handshake_name(matches!(self.kind, TargetKind::Ws { .. }), self.has_tls())
    }

    fn has_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Without the `tls` feature: TLS that is asked for is refused.
#[cfg(not(feature = "tls"))]
fn no_tls(wanted: bool) -> Result<Option<ClientTls>, ClientError> {
    match wanted {
        true => Err(config_error(NO_TLS)),
        false => Ok(None),
    }
}

/// Why TLS options are refused without the `tls` feature.
#[cfg(not(feature = "tls"))]
const NO_TLS: &str = "TLS needs the `tls` feature (of the adapter, on by default; or storm-host's)";

/// A framed connection's framer: `framing`'s, behind a [`PlainFramer`]
/// (which turns a peer's opening TLS record into `peer_speaks_tls`) when
/// the connection is plain and its framing is not raw. Raw framing passes
/// any bytes as they come, so it is not checked: a raw echo echoes even
/// bytes that look like a TLS record. A custom framer (the broker's, say)
/// is checked like the built-in message framings.
fn framer(
    framing: &Framing,
    tls: bool,
    peer_speaks_tls: FramingError,
) -> Result<Box<dyn Framer + Send>, FramingConfigError> {
    let framer = framing.build()?;
    let checked = !tls && !matches!(framing, Framing::Raw(_));
    Ok(match checked {
        true => Box::new(PlainFramer::new(framer, peer_speaks_tls)),
        false => framer,
    })
}

fn handshake_name(ws: bool, tls: bool) -> &'static str {
    match (ws, tls) {
        (true, false) => "WebSocket handshake",
        (true, true) => "TLS or WebSocket handshake",
        (false, _) => "TLS handshake",
    }
}

/// A new client connection's next step (from [`ClientTarget::open`]).
#[derive(Debug)]
#[must_use]
pub enum ClientOpen<'a> {
    /// Speak this protocol now; no bytes came before it.
    Ready(Protocol),
    /// Send `request`, then feed the response to `upgrade`.
    Upgrade {
        /// The upgrade request.
        request: Bytes,
        /// The handshake waiting for the response.
        upgrade: ClientUpgrade<'a>,
    },
}

/// A client's WebSocket upgrade waiting for the server's response.
#[derive(Debug)]
#[must_use]
pub struct ClientUpgrade<'a> {
    state: ClientHandshake,
    ws: &'a WsOptions,
}

/// What the response bytes so far made of a [`ClientUpgrade`].
#[derive(Debug)]
#[must_use]
pub enum ClientUpgradeStep<'a> {
    /// The response is not complete: read more.
    NeedMore(ClientUpgrade<'a>),
    /// Upgraded: the connection (with permessage-deflate when agreed), the
    /// bytes the server sent after its response, and the response itself
    /// ([`UpgradeResponse`], attached to the connection's session).
    Done(Opened),
}

impl<'a> ClientUpgrade<'a> {
    /// Feeds response bytes (at least one: an empty read is the end of the
    /// stream, for the caller to report).
    ///
    /// # Errors
    ///
    /// [`ClientError::Handshake`] when the server refused;
    /// [`ClientError::Config`] when the agreed deflate does not fit.
    pub fn handle_input(self, input: &[u8]) -> Result<ClientUpgradeStep<'a>, ClientError> {
        match self
            .state
            .handle_input(input)
            .map_err(ClientError::Handshake)?
        {
            ClientStep::NeedMore(state) => Ok(ClientUpgradeStep::NeedMore(Self { state, ..self })),
            ClientStep::Done(upgraded) => {
                let mut conn = Connection::new(Side::Client, self.ws.config.clone());
                if let (Some(params), Some(deflate)) = (upgraded.deflate, &self.ws.deflate) {
                    conn = conn.with_deflate(params, deflate).map_err(config_error)?;
                }
                let response = UpgradeResponse {
                    subprotocol: upgraded.subprotocol.clone(),
                    headers: upgraded.headers,
                };
                Ok(ClientUpgradeStep::Done(Opened {
                    protocol: Protocol::WebSocket(Box::new(conn)),
                    leftover: upgraded.leftover,
                    subprotocol: upgraded.subprotocol,
                    attached: Some(Arc::new(response)),
                }))
            }
        }
    }
}

/// What a client keeps across its connections, apart from the I/O: the
/// hub its sessions live in and the reconnect schedule.
#[derive(Debug)]
pub struct ClientCore {
    hub: Hub,
    backoff: Option<Backoff>,
    link: LinkConfig,
}

impl ClientCore {
    /// A client's hub and, with `options.reconnect`, its backoff
    /// (`seed` for the jitter).
    ///
    /// # Errors
    ///
    /// [`ClientError::Config`] for invalid backpressure or reconnect
    /// options.
    pub fn new(options: &ClientOptions, seed: u64, now: Instant) -> Result<Self, ClientError> {
        let config = HubConfig {
            backpressure: options.backpressure,
            ..HubConfig::default()
        };
        let backoff = options
            .reconnect
            .as_ref()
            .map(|config| Backoff::new(config.clone(), seed).map_err(config_error))
            .transpose()?;
        Ok(Self {
            hub: Hub::new(config, now).map_err(config_error)?,
            backoff,
            link: options.link.clone(),
        })
    }

    /// A new connection to `remote` admitted and registered in the hub:
    /// its [`Session`] (carrying the server's
    /// [`UpgradeResponse`] for a WebSocket), and the [`LinkDriver`] the
    /// adapter's driver owns. The bytes read ahead stay in `opened`'s
    /// `leftover`: take them first.
    ///
    /// # Errors
    ///
    /// [`ClientError::Config`] when the hub refuses or the link options
    /// are invalid.
    pub fn session(
        &self,
        opened: Opened,
        remote: SocketAddr,
        now: Instant,
    ) -> Result<(Session, Box<LinkDriver>), ClientError> {
        let Opened {
            protocol, attached, ..
        } = opened;
        let permit = self.hub.try_admit().map_err(config_error)?;
        let outbox = self.hub.register(permit, now).map_err(config_error)?;
        let middleware = self.link.middleware.clone();
        let mut session = Session::new(Arc::clone(&outbox), middleware, self.hub.clone(), remote);
        if let Some(attached) = attached {
            session.attach(attached);
        }
        let link = LinkDriver::new(outbox, protocol, &self.link, now).map_err(config_error)?;
        Ok((session, Box::new(link)))
    }

    /// A connection is up (it counts as stable after a while, which resets
    /// the backoff).
    pub fn connected(&mut self, now: Instant) {
        if let Some(backoff) = &mut self.backoff {
            backoff.connected(now);
        }
    }

    /// The connection `id` ended: its session leaves the hub.
    pub fn ended(&mut self, id: SessionId) {
        self.hub.disconnect(id);
    }

    /// After a connection ended or an attempt failed: the next attempt's
    /// number and the delay before it; `None` to stop for good
    /// (reconnects off, or out of attempts).
    pub fn next_attempt(&mut self, now: Instant) -> Option<(u32, Duration)> {
        match self.backoff.as_mut()?.disconnected(now) {
            BackoffStep::Retry { attempt, delay } => Some((attempt, delay)),
            BackoffStep::GiveUp { .. } => None,
        }
    }
}

/// What a server speaks after accepting.
#[derive(Clone)]
enum ServerKind {
    Tcp(Framing),
    Ws {
        handshake: Arc<ServerConfig>,
        options: WsOptions,
    },
}

/// A server's per-connection setup, checked and built once at bind: the
/// framing or the WebSocket handshake configuration, and the TLS
/// configuration.
#[derive(Clone)]
pub struct ServerSetup {
    kind: ServerKind,
    link: LinkConfig,
    tls: Option<TlsServerConfig>,
}

impl std::fmt::Debug for ServerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSetup")
            .field("handshake", &self.handshake_name())
            .finish_non_exhaustive()
    }
}

impl ServerSetup {
    /// A WebSocket server's setup.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) for invalid WebSocket
    /// or TLS options (or TLS options without the `tls` feature).
    pub fn ws(options: &ServerOptions, ws: WsOptions) -> io::Result<Self> {
        let handshake = ServerConfig {
            subprotocols: ws.subprotocols.clone(),
            deflate: ws.deflate.clone(),
            ..ServerConfig::default()
        };
        handshake.validate().map_err(invalid)?;
        check_origins(&ws.allowed_origins)?;
        let kind = ServerKind::Ws {
            handshake: Arc::new(handshake),
            options: ws,
        };
        Self::new(options, kind)
    }

    /// A TCP server's setup, framing messages with `framing`.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) for invalid framing
    /// or TLS options.
    pub fn tcp(options: &ServerOptions, framing: Framing) -> io::Result<Self> {
        framing.build().map_err(invalid)?;
        Self::new(options, ServerKind::Tcp(framing))
    }

    fn new(options: &ServerOptions, kind: ServerKind) -> io::Result<Self> {
        #[cfg(feature = "tls")]
        let tls = match &options.tls {
            Some(tls) => Some(crate::tls::server_config(tls)?.into()),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let tls = match options.tls {
            Some(_) => return Err(io::Error::new(io::ErrorKind::InvalidInput, NO_TLS)),
            None => None,
        };
        Ok(Self {
            kind,
            link: options.link.clone(),
            tls,
        })
    }

    /// The server's TLS configuration, if it speaks TLS.
    #[must_use]
    pub fn tls(&self) -> Option<&TlsServerConfig> {
        self.tls.as_ref()
    }

    /// What to call a connection's handshake when it times out.
    #[must_use]
    pub fn handshake_name(&self) -> &'static str {
        handshake_name(matches!(self.kind, ServerKind::Ws { .. }), self.has_tls())
    }

    /// The protocol its connections speak, as a URL scheme would say it:
    /// `ws`, `wss`, `tcp` or `tls`.
    #[must_use]
    pub fn protocol_name(&self) -> &'static str {
        match (matches!(self.kind, ServerKind::Ws { .. }), self.has_tls()) {
            (true, false) => "ws",
            (true, true) => "wss",
            (false, false) => "tcp",
            (false, true) => "tls",
        }
    }

    fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// What a new connection does once accepted (and past TLS): a TCP
    /// server speaks at once; a WebSocket server reads the upgrade request
    /// into the returned [`ServerUpgrade`]. Without TLS, a client that opens
    /// with a TLS ClientHello is reported as one ([`storm_proto::tls_sniff`]).
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) for invalid options.
    pub fn open(&self) -> io::Result<ServerOpen<'_>> {
        Ok(match &self.kind {
            ServerKind::Tcp(framing) => ServerOpen::Ready(Protocol::Framed(
                framer(framing, self.has_tls(), FramingError::ClientSpeaksTls).map_err(invalid)?,
            )),
            ServerKind::Ws { handshake, options } => ServerOpen::Upgrade(ServerUpgrade::new(
                ServerHandshake::new(Arc::clone(handshake)).map_err(invalid)?,
                options,
            )),
        })
    }

    /// Registers a connection past its handshake in `registry`'s hub,
    /// makes its session (carrying what the upgrade hook attached) and
    /// inserts it; then closes it at
    /// once when `stopping()` says the server is shutting down. Returns the
    /// session and the [`LinkDriver`] the adapter's driver owns.
    ///
    /// A connection accepted before a shutdown may finish its handshake
    /// after the shutdown's `close_all` ran. The hub's lock orders the two:
    /// either `close_all` saw this session registered, or it ran before
    /// the registration here and the stop flag (set before it) is seen by
    /// `stopping`.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) when `admitted` is not
    /// from this hub or the link options are invalid.
    pub fn admit(
        &self,
        registry: &Registry,
        admitted: Admitted,
        opened: Opened,
        now: Instant,
        stopping: impl FnOnce() -> bool,
    ) -> io::Result<(Session, Box<LinkDriver>)> {
        let Opened {
            protocol, attached, ..
        } = opened;
        let hub = registry.hub();
        let outbox = hub.register(admitted.permit, now).map_err(invalid)?;
        let middleware = self.link.middleware.clone();
        let mut session = Session::new(
            Arc::clone(&outbox),
            middleware,
            hub.clone(),
            admitted.remote,
        );
        if let Some(attached) = attached {
            session.attach(attached);
        }
        // Boxed from the start: an adapter moves it into the connection's
        // task or thread, where a few hundred bytes more per frame would
        // cost every idle connection stack (std) or task size.
        let link = Box::new(LinkDriver::new(outbox, protocol, &self.link, now).map_err(invalid)?);
        #[cfg(feature = "tracing")]
        {
            let id = session.id().get();
            tracing::Span::current().record("id", id);
            tracing::debug!(id, peer = %admitted.remote, "handshake accepted");
        }
        registry.insert(session.clone());
        if stopping() {
            session.close();
        }
        Ok((session, link))
    }
}

/// A connection a server took on at accept, before any handshake: the
/// peer's address and its place under the hub's `max_connections`.
#[derive(Debug)]
#[must_use]
pub struct Admitted {
    permit: ConnectionPermit,
    remote: SocketAddr,
}

impl Admitted {
    /// `None` when the hub is full: close the connection at once.
    pub fn new(hub: &Hub, remote: SocketAddr) -> Option<Self> {
        let permit = hub.try_admit().ok()?;
        Some(Self { permit, remote })
    }

    /// The peer's address.
    #[must_use]
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
}

/// Whether `error`, or any error in its [`source`](std::error::Error::source)
/// chain (through an [`io::Error`]'s inner error too), is a
/// plain server's finding that its client speaks TLS: the WebSocket
/// handshake's [`HandshakeError::ClientSpeaksTls`](storm_proto::ws::handshake::HandshakeError::ClientSpeaksTls) or the framer's
/// [`FramingError::ClientSpeaksTls`]. A server's logger uses it to tell
/// this configuration mistake from the everyday failures of connections.
#[must_use]
pub fn client_speaks_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    use storm_proto::framing::FramingError;
    use storm_proto::ws::handshake::HandshakeError;
    let mut next = Some(error);
    while let Some(error) = next {
        if matches!(
            error.downcast_ref::<HandshakeError>(),
            Some(HandshakeError::ClientSpeaksTls)
        ) || matches!(
            error.downcast_ref::<FramingError>(),
            Some(FramingError::ClientSpeaksTls)
        ) {
            return true;
        }
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => error.source(),
        };
    }
    false
}

/// `error`, a server connection's failure before it became a session (its
/// TLS or WebSocket handshake, or their timeout), naming the peer: it
/// reads `from ADDR: ERROR`, keeps `error`'s kind, and has `error` as its
/// [`source`](std::error::Error::source), so that a typed cause (a
/// [`HandshakeError`](storm_proto::ws::handshake::HandshakeError), say) can
/// still be found by downcasting.
#[must_use]
pub fn from_peer(remote: SocketAddr, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), FromPeer { remote, error })
}

/// `error`, a failed TLS handshake on a server connection, marked as such
/// for [`HandshakeFailure::of`](crate::hub::HandshakeFailure::of): it reads
/// `TLS handshake failed: ERROR` and keeps `error`'s kind (a timed-out
/// one is returned as it is, and counts as timed out).
#[must_use]
pub fn tls_handshake_failed(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::TimedOut {
        return error;
    }
    io::Error::new(error.kind(), TlsHandshakeFailed(error))
}

/// See [`tls_handshake_failed`].
#[derive(Debug)]
pub(crate) struct TlsHandshakeFailed(io::Error);

impl std::fmt::Display for TlsHandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl std::error::Error for TlsHandshakeFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A server connection whose handshake failed with `error`: counted in
/// `hub`'s metrics ([`Hub::handshake_failed`]) and returned
/// [`from_peer`] `remote`, for the handler's `on_error`.
#[must_use]
pub fn handshake_failed(hub: &Hub, remote: SocketAddr, error: io::Error) -> io::Error {
    let why = hub.handshake_failed(&error);
    #[cfg(feature = "tracing")]
    tracing::info!(peer = %remote, reason = why.name(), error = %error, "handshake failed");
    let _ = why;
    from_peer(remote, error)
}

/// The span of one server connection (feature `tracing`): `connection`
/// with the peer's address, the protocol
/// ([`ServerSetup::protocol_name`]: `ws`, `wss`, `tcp`, `tls`) and the
/// session's `id`, recorded once the handshake is accepted
/// ([`ServerSetup::admit`] records it in the current span). The adapter
/// runs the connection's task, or enters it on the connection's thread.
#[cfg(feature = "tracing")]
#[must_use]
pub fn connection_span(remote: SocketAddr, protocol: &'static str) -> tracing::Span {
    tracing::info_span!(
        "connection",
        peer = %remote,
        protocol,
        id = tracing::field::Empty
    )
}

/// See [`from_peer`].
#[derive(Debug)]
struct FromPeer {
    remote: SocketAddr,
    error: io::Error,
}

impl std::fmt::Display for FromPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from {}: {}", self.remote, self.error)
    }
}

impl std::error::Error for FromPeer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A server's hub: max connections and backpressure from its options.
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput) for invalid options.
pub fn server_hub(options: &ServerOptions, now: Instant) -> io::Result<Hub> {
    let config = HubConfig {
        max_connections: options.max_connections,
        backpressure: options.backpressure,
        ..HubConfig::default()
    };
    Hub::new(config, now).map_err(invalid)
}

/// A new server connection's next step (from [`ServerSetup::open`]).
#[derive(Debug)]
#[must_use]
pub enum ServerOpen<'a> {
    /// Speak this protocol now; no bytes came before it.
    Ready(Protocol),
    /// Feed the upgrade request here.
    Upgrade(ServerUpgrade<'a>),
}

#[cfg(test)]
mod tests {
    use storm_proto::ws::handshake::HandshakeError;

    #[test]
    fn a_client_speaking_tls_is_found_in_any_error_chain() {
        let handshake =
            io::Error::new(io::ErrorKind::InvalidInput, HandshakeError::ClientSpeaksTls);
        let named = from_peer(([127, 0, 0, 1], 9).into(), handshake);
        assert!(client_speaks_tls(&named));
        assert!(client_speaks_tls(
            &storm_proto::framing::FramingError::ClientSpeaksTls
        ));
        assert!(!client_speaks_tls(
            &storm_proto::framing::FramingError::ServerSpeaksTls
        ));
        let other = io::Error::new(io::ErrorKind::InvalidInput, HandshakeError::UnexpectedBody);
        assert!(!client_speaks_tls(&other));
        assert!(!client_speaks_tls(&io::Error::from(
            io::ErrorKind::TimedOut
        )));
    }
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::hub::SessionState;
    use crate::options::TlsClientOptions;

    fn remote() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    /// The client's request through the server's answer, `extra` sent
    /// right after the request: both sides end with a WebSocket protocol.
    fn upgrade(extra: &[u8]) -> Result<(Bytes, Bytes), ClientError> {
        let options = ClientOptions::default();
        let target = ClientTarget::ws("ws://127.0.0.1:9/chat", &options, WsOptions::default())?;
        let ClientOpen::Upgrade {
            request,
            upgrade: client,
        } = target.open(&options, &mut StdRng::seed_from_u64(1))?
        else {
            return Err(config_error("a WebSocket client must upgrade"));
        };
        let request = [&request[..], extra].concat();
        let setup = ServerSetup::ws(&ServerOptions::default(), WsOptions::default())?;
        let ServerOpen::Upgrade(server) = setup.open()? else {
            return Err(config_error("a WebSocket server must upgrade"));
        };
        // One byte short first: the server must ask for more.
        let split = request.len() - extra.len() - 1;
        let server = match server.handle_input(&request[..split]) {
            ServerUpgradeStep::NeedMore(server) => server,
            _ => return Err(config_error("the request is not complete yet")),
        };
        let ServerUpgradeStep::Request(request) = server.handle_input(&request[split..]) else {
            return Err(config_error("the request is complete"));
        };
        assert_eq!(request.request().path(), "/chat");
        let Answer { response, opened } = request.accept();
        let opened = opened?;
        assert!(matches!(opened.protocol, Protocol::WebSocket(_)));
        let server_leftover = opened.leftover;
        let response = [&response[..], b"srv"].concat();
        match client.handle_input(&response)? {
            ClientUpgradeStep::Done(Opened {
                protocol: Protocol::WebSocket(_),
                leftover,
                ..
            }) => Ok((server_leftover, leftover)),
            _ => Err(config_error("the client did not finish the upgrade")),
        }
    }

    #[test]
    fn client_and_server_upgrade_each_other_and_keep_what_followed() -> Result<(), ClientError> {
        let (server_leftover, client_leftover) = upgrade(b"abc")?;
        assert_eq!(&server_leftover[..], b"abc");
        assert_eq!(&client_leftover[..], b"srv");
        Ok(())
    }

    #[test]
    fn a_bad_request_is_refused_with_a_response() {
        let Ok(setup) = ServerSetup::ws(&ServerOptions::default(), WsOptions::default()) else {
            panic!("default options are valid");
        };
        let Ok(ServerOpen::Upgrade(server)) = setup.open() else {
            panic!("a WebSocket server must upgrade");
        };
        let step = server.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let ServerUpgradeStep::Done(Answer {
            response,
            opened: Err(_),
        }) = step
        else {
            panic!("an upgrade request without its headers must be refused");
        };
        assert!(response.starts_with(b"HTTP/1.1 4"), "{response:?}");
    }

    #[test]
    fn a_tcp_target_speaks_at_once() {
        let options = ClientOptions::default();
        let Ok(target) = ClientTarget::tcp("127.0.0.1:9", &options, Framing::default()) else {
            panic!("default framing is valid");
        };
        assert_eq!(target.authority(), "127.0.0.1:9");
        let open = target.open(&options, &mut StdRng::seed_from_u64(1));
        assert!(matches!(open, Ok(ClientOpen::Ready(Protocol::Framed(_)))));
    }

    /// A plain server's framer for `framing`, fed `bytes`.
    fn server_decodes(framing: Framing, bytes: &[u8]) -> Result<Option<Bytes>, FramingError> {
        let Ok(setup) = ServerSetup::tcp(&ServerOptions::default(), framing) else {
            panic!("the framing is valid");
        };
        let Ok(ServerOpen::Ready(Protocol::Framed(mut framer))) = setup.open() else {
            panic!("a TCP server speaks at once");
        };
        framer.decode(&mut BytesMut::from(bytes))
    }

    /// The start of a TLS ClientHello record.
    const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\x50\x01\x00\x00\x4c\x03\x03";

    #[test]
    fn a_plain_framed_server_tells_a_client_hello_and_a_raw_one_echoes_it() {
        for framing in [
            Framing::LengthPrefix,
            Framing::Delimiter(Default::default()),
        ] {
            assert_eq!(
                server_decodes(framing, CLIENT_HELLO),
                Err(FramingError::ClientSpeaksTls)
            );
        }
        let raw = server_decodes(Framing::Raw(Default::default()), CLIENT_HELLO);
        assert_eq!(raw, Ok(Some(Bytes::from_static(CLIENT_HELLO))));
    }

    #[test]
    fn tls_options_with_a_plain_url_are_refused() {
        let options = ClientOptions {
            tls: Some(TlsClientOptions::default()),
            ..ClientOptions::default()
        };
        let target = ClientTarget::ws("ws://127.0.0.1:9/", &options, WsOptions::default());
        assert!(matches!(target, Err(ClientError::Config(_))));
        let target = ClientTarget::ws("not a url", &ClientOptions::default(), WsOptions::default());
        assert!(matches!(target, Err(ClientError::Url(_))));
    }

    #[test]
    fn a_client_admits_each_connection_into_its_hub() -> Result<(), ClientError> {
        let options = ClientOptions::default();
        let mut core = ClientCore::new(&options, 1, Instant::now())?;
        let framer = Framing::default().build().map_err(config_error)?;
        let opened = Opened::new(Protocol::Framed(framer));
        let (session, _link) = core.session(opened, remote(), Instant::now())?;
        assert_eq!(session.remote_addr(), remote());
        assert_eq!(session.state(), SessionState::Open);
        core.ended(session.id());
        assert_eq!(session.state(), SessionState::Closed);
        // Reconnects are off by default: one connection, then stop.
        assert_eq!(core.next_attempt(Instant::now()), None);
        Ok(())
    }

    #[test]
    fn a_session_admitted_while_stopping_is_closed_at_once() -> io::Result<()> {
        let options = ServerOptions::default();
        let registry = Registry::new(server_hub(&options, Instant::now())?);
        let setup = ServerSetup::tcp(&options, Framing::default())?;
        for stopping in [false, true] {
            let admitted = Admitted::new(registry.hub(), remote())
                .ok_or_else(|| io::Error::other("the hub has room"))?;
            let ServerOpen::Ready(protocol) = setup.open()? else {
                return Err(io::Error::other("a TCP server speaks at once"));
            };
            let (session, _link) = setup.admit(
                &registry,
                admitted,
                Opened::new(protocol),
                Instant::now(),
                || stopping,
            )?;
            assert_eq!(session.state() != SessionState::Open, stopping);
            assert!(registry.session(session.id()).is_some());
        }
        Ok(())
    }
}
