//! TCP and WebSocket clients, with reconnects.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;

use storm_proto::Message;
use storm_proto::hub::{Hub, HubConfig};
use storm_proto::link::{Link, Protocol};
use storm_proto::options::{ClientOptions, Framing, TlsClientOptions, WsOptions};
pub use storm_proto::peer::ClientError;
use storm_proto::reconnect::{Backoff, BackoffStep};
use storm_proto::ws::handshake::{ClientConfig, ClientHandshake, ClientStep};
use storm_proto::ws::{Connection, Side, WsUrl};

use crate::driver::drive;
use crate::io::{Either, read, write_all_flush};
use crate::runtime::{Runtime, Stream};
use crate::sync::{Signal, lock, timeout};
use crate::{Handler, Session};

fn config_error(e: impl fmt::Display) -> ClientError {
    ClientError::Config(e.to_string())
}

/// Where and how a client connects.
#[derive(Clone)]
enum Target {
    Tcp {
        addr: String,
        framing: Framing,
        tls: Option<Tls>,
    },
    Ws {
        url: WsUrl,
        ws: WsOptions,
        tls: Option<Tls>,
    },
}

/// TLS for every (re)connection of one client, built once.
#[derive(Clone)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    /// `host` names the server unless the options name it.
    fn new(options: &TlsClientOptions, host: &str) -> Result<Self, ClientError> {
        Ok(Self {
            config: storm_proto::tls::client_config(options).map_err(config_error)?,
            name: storm_proto::tls::server_name(options, host).map_err(config_error)?,
        })
    }
}

/// A connected client, on any runtime. Dropping it does not close the
/// connection; call [`close`](Self::close).
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    current: Mutex<Option<Session>>,
    closing: AtomicBool,
    /// Set once the client stopped for good (closed, or gave up).
    finished: Signal,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.session())
            .finish()
    }
}

/// Connects WebSocket clients on runtime `R`.
pub struct WsClient<R>(PhantomData<fn() -> R>);

/// Connects plain TCP clients with a framer on runtime `R`.
pub struct TcpClient<R>(PhantomData<fn() -> R>);

macro_rules! connector_common {
    ($name:ident) => {
        impl<R> fmt::Debug for $name<R> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl<R> Clone for $name<R> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<R> Copy for $name<R> {}
    };
}

connector_common!(WsClient);
connector_common!(TcpClient);

impl<R: Runtime> WsClient<R> {
    /// Connects to a `ws://` or `wss://` URL and runs `handler` for the
    /// connection (and, with `options.reconnect`, for every reconnection).
    ///
    /// `wss://` uses `options.tls`, or the default TLS options (the web
    /// roots) when it is `None`; the certificate must name the URL's host
    /// unless `server_name` says otherwise.
    ///
    /// # Errors
    ///
    /// When the first connection cannot be made; [`ClientError::Config`]
    /// for invalid TLS options, or TLS options with a `ws://` URL.
    pub async fn connect<H: Handler>(
        url: &str,
        options: ClientOptions,
        ws: WsOptions,
        handler: H,
    ) -> Result<Client, ClientError> {
        let url: WsUrl = url.parse().map_err(ClientError::Url)?;
        let tls = match (url.secure, &options.tls) {
            (true, tls) => Some(Tls::new(&tls.clone().unwrap_or_default(), &url.host)?),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ClientError::Config(
                    "TLS options are set but the URL is ws://: use wss://".to_owned(),
                ));
            }
        };
        start::<R, H>(Target::Ws { url, ws, tls }, options, handler).await
    }
}

impl<R: Runtime> TcpClient<R> {
    /// Connects to `addr` (`host:port`) and frames messages with `framing`;
    /// over TLS when `options.tls` is set, the certificate naming `host`
    /// unless `server_name` says otherwise.
    ///
    /// # Errors
    ///
    /// When the first connection cannot be made; [`ClientError::Config`]
    /// for invalid options.
    pub async fn connect<H: Handler>(
        addr: &str,
        options: ClientOptions,
        framing: Framing,
        handler: H,
    ) -> Result<Client, ClientError> {
        framing.build().map_err(config_error)?;
        let tls = match &options.tls {
            Some(tls) => Some(Tls::new(tls, storm_proto::tls::host_of(addr))?),
            None => None,
        };
        let target = Target::Tcp {
            addr: addr.to_owned(),
            framing,
            tls,
        };
        start::<R, H>(target, options, handler).await
    }
}

impl Client {
    /// The current connection's session (`None` between reconnects).
    #[must_use]
    pub fn session(&self) -> Option<Session> {
        lock(&self.shared.current).clone()
    }

    /// Whether a connection is up.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.session().is_some()
    }

    /// Sends on the current connection (waiting under the `Wait` policy).
    ///
    /// # Errors
    ///
    /// [`ClientError::NotConnected`] between reconnects; [`ClientError::Send`].
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), ClientError> {
        let session = self.session().ok_or(ClientError::NotConnected)?;
        session.send(message).await.map_err(ClientError::Send)
    }

    /// Closes gracefully and stops reconnecting.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        if let Some(session) = self.session() {
            session.close();
        }
    }

    /// Waits until the client has stopped for good: closed, or out of
    /// reconnect attempts.
    pub async fn closed(&self) {
        self.shared.finished.wait().await;
    }
}

/// One established connection, ready for the driver.
struct Connected<S> {
    stream: S,
    session: Session,
    initial: Bytes,
}

/// A client's stream: plain TCP or TLS.
type ClientStream<R> = Either<<R as Runtime>::Tcp, <R as Runtime>::TlsClient>;

async fn start<R: Runtime, H: Handler>(
    target: Target,
    options: ClientOptions,
    handler: H,
) -> Result<Client, ClientError> {
    let backoff = match &options.reconnect {
        Some(config) => Some(Backoff::new(config.clone(), rand::random()).map_err(config_error)?),
        None => None,
    };
    let mut hub_config = HubConfig::default();
    hub_config.backpressure = options.backpressure;
    let hub = Hub::new(hub_config, Instant::now()).map_err(config_error)?;
    let first = connect_once::<R>(&target, &options, &hub).await?;
    let shared = Arc::new(ClientShared {
        current: Mutex::new(Some(first.session.clone())),
        closing: AtomicBool::new(false),
        finished: Signal::default(),
    });
    let client = Client {
        shared: Arc::clone(&shared),
    };
    R::spawn(run::<R, H>(
        target, options, handler, hub, shared, backoff, first,
    ));
    Ok(client)
}

/// The session for a new connection, registered in the client's hub.
fn new_session(
    hub: &Hub,
    options: &ClientOptions,
    remote: SocketAddr,
    protocol: Protocol,
) -> Result<Session, ClientError> {
    let permit = hub.try_admit().map_err(config_error)?;
    let hub_session = hub.register(permit, Instant::now()).map_err(config_error)?;
    let link = Link::new(hub_session, protocol, options.link.clone(), Instant::now())
        .map_err(config_error)?;
    Ok(Session::new(Arc::new(link), hub.clone(), remote))
}

async fn run<R: Runtime, H: Handler>(
    target: Target,
    options: ClientOptions,
    handler: H,
    hub: Hub,
    shared: Arc<ClientShared>,
    mut backoff: Option<Backoff>,
    first: Connected<ClientStream<R>>,
) {
    let mut next = Some(first);
    while let Some(connected) = next.take() {
        let session = connected.session;
        if let Some(backoff) = &mut backoff {
            backoff.connected(Instant::now());
        }
        let id = session.id();
        drive::<R, _, _, _>(
            connected.stream.split(),
            session,
            &handler,
            connected.initial,
            options.write_batch,
            options.link.close_timeout,
        )
        .await;
        *lock(&shared.current) = None;
        hub.disconnect(id);
        // Reconnect unless the application closed, or reconnects are off.
        let Some(backoff) = &mut backoff else { break };
        while !shared.closing.load(Ordering::Acquire) {
            let (attempt, delay) = match backoff.disconnected(Instant::now()) {
                BackoffStep::Retry { attempt, delay } => (attempt, delay),
                BackoffStep::GiveUp { .. } => break,
            };
            handler.on_reconnecting(attempt, delay).await;
            crate::sync::sleep_until::<R>(Instant::now().checked_add(delay)).await;
            if shared.closing.load(Ordering::Acquire) {
                break;
            }
            match connect_once::<R>(&target, &options, &hub).await {
                Ok(connected) => {
                    *lock(&shared.current) = Some(connected.session.clone());
                    next = Some(connected);
                    break;
                }
                Err(e) => handler.on_error(&e).await,
            }
        }
    }
    shared.finished.set();
}

/// Connects to the first address of `authority` that answers.
async fn connect_tcp<R: Runtime>(authority: &str) -> io::Result<(R::Tcp, SocketAddr)> {
    let mut last = None;
    for addr in R::resolve(authority).await? {
        match R::connect(addr).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
    }))
}

async fn connect_once<R: Runtime>(
    target: &Target,
    options: &ClientOptions,
    hub: &Hub,
) -> Result<Connected<ClientStream<R>>, ClientError> {
    let attempt = async {
        let (authority, tls) = match target {
            Target::Tcp { addr, tls, .. } => (addr.clone(), tls),
            Target::Ws { url, tls, .. } => (url.authority(), tls),
        };
        let (tcp, remote) = connect_tcp::<R>(&authority).await?;
        R::socket(&tcp).set_tcp_nodelay(options.nodelay)?;
        let mut stream: ClientStream<R> = match tls {
            None => Either::A(tcp),
            Some(tls) => Either::B(
                R::tls_connect(Arc::clone(&tls.config), tls.name.clone(), tcp)
                    .await
                    .map_err(ClientError::Tls)?,
            ),
        };
        let (protocol, initial) = match target {
            Target::Tcp { framing, .. } => (
                Protocol::Framed(framing.build().map_err(config_error)?),
                Bytes::new(),
            ),
            Target::Ws { url, ws, .. } => {
                let (conn, initial) = upgrade(&mut stream, url, ws, options).await?;
                (Protocol::WebSocket(Box::new(conn)), initial)
            }
        };
        let session = new_session(hub, options, remote, protocol)?;
        Ok(Connected {
            stream,
            session,
            initial,
        })
    };
    timeout::<R, _>(options.connect_timeout, pin!(attempt))
        .await
        .ok_or(ClientError::Timeout)?
}

async fn upgrade<S: Stream>(
    stream: &mut S,
    url: &WsUrl,
    ws: &WsOptions,
    options: &ClientOptions,
) -> Result<(Connection, Bytes), ClientError> {
    let mut config = ClientConfig::new(url.host_header(), url.resource.clone());
    config.subprotocols.clone_from(&ws.subprotocols);
    config.deflate.clone_from(&ws.deflate);
    config.headers.clone_from(&options.headers);
    let mut out = BytesMut::new();
    let mut state =
        ClientHandshake::start(&config, &mut rand::rng(), &mut out).map_err(config_error)?;
    write_all_flush(stream, &out).await?;
    let mut buf = vec![0u8; 4096];
    let upgraded = loop {
        let n = read(stream, &mut buf).await?;
        let Some(input) = buf.get(..n).filter(|b| !b.is_empty()) else {
            return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
        };
        match state.handle_input(input).map_err(ClientError::Handshake)? {
            ClientStep::NeedMore(next) => state = next,
            ClientStep::Done(upgraded) => break upgraded,
        }
    };
    let mut conn = Connection::new(Side::Client, ws.config.clone());
    if let (Some(params), Some(deflate)) = (upgraded.deflate, &ws.deflate) {
        conn = conn.with_deflate(params, deflate).map_err(config_error)?;
    }
    Ok((conn, upgraded.leftover))
}
