//! TCP and WebSocket clients, with reconnects.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use storm_proto::Message;
use storm_proto::hub::{Hub, HubConfig};
use storm_proto::link::{Link, Protocol};
use storm_proto::options::{ClientOptions, Framing, TlsClientOptions, WsOptions};
use storm_proto::reconnect::{Backoff, BackoffStep};
use storm_proto::ws::handshake::{ClientConfig, ClientHandshake, ClientStep, ResponseError};
use storm_proto::ws::{Connection, Side, UrlError, WsUrl};

use crate::driver::{Buffered, drive};
use crate::{Handler, SendError, Session};

/// Why a client could not connect.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not a WebSocket URL.
    Url(UrlError),
    /// TLS failed: the server's certificate is not trusted or does not
    /// name the server, the server refused the client's certificate, or
    /// the peer does not speak TLS.
    Tls(io::Error),
    /// Connecting or the handshake took longer than the connect timeout.
    Timeout,
    /// The transport failed.
    Io(io::Error),
    /// The server refused the WebSocket upgrade.
    Handshake(ResponseError),
    /// An option is invalid.
    Config(String),
    /// No connection is up (between reconnects, or after close).
    NotConnected,
    /// The send was refused.
    Send(SendError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(e) => e.fmt(f),
            Self::Tls(e) => write!(f, "TLS failed: {e}"),
            Self::Timeout => f.write_str("connect timed out"),
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Handshake(e) => write!(f, "upgrade refused: {e}"),
            Self::Config(e) => write!(f, "invalid option: {e}"),
            Self::NotConnected => f.write_str("not connected"),
            Self::Send(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Url(e) => Some(e),
            Self::Tls(e) | Self::Io(e) => Some(e),
            Self::Handshake(e) => Some(e),
            Self::Send(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    /// [`ClientError::Tls`] when rustls is what failed (a handshake, or an
    /// alert from the server such as a refused client certificate), else
    /// [`ClientError::Io`].
    fn from(e: io::Error) -> Self {
        let tls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if tls { Self::Tls(e) } else { Self::Io(e) }
    }
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
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// `host` names the server unless the options name it.
    fn new(options: &TlsClientOptions, host: &str) -> Result<Self, ClientError> {
        let config = |e: io::Error| ClientError::Config(e.to_string());
        Ok(Self {
            connector: crate::tls::connector(options).map_err(config)?,
            name: crate::tls::server_name(options, host).map_err(config)?,
        })
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// A connected client. Dropping it does not close the connection; call
/// [`close`](Self::close).
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    current: Mutex<Option<Session>>,
    closing: AtomicBool,
    /// `true` once the client stopped for good (closed, or gave up).
    finished: watch::Sender<bool>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.session())
            .finish()
    }
}

/// Connects WebSocket clients.
#[derive(Debug, Clone, Copy)]
pub struct WsClient;

/// Connects plain TCP clients with a framer.
#[derive(Debug, Clone, Copy)]
pub struct TcpClient;

impl WsClient {
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
        start(Target::Ws { url, ws, tls }, options, handler).await
    }
}

impl TcpClient {
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
        framing
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let tls = match &options.tls {
            Some(tls) => Some(Tls::new(tls, crate::tls::host_of(addr))?),
            None => None,
        };
        start(
            Target::Tcp {
                addr: addr.to_owned(),
                framing,
                tls,
            },
            options,
            handler,
        )
        .await
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
        let mut finished = self.shared.finished.subscribe();
        let _ = finished.wait_for(|finished| *finished).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One established connection, ready for the driver.
struct Connected {
    stream: Box<dyn Stream>,
    session: Session,
    initial: Bytes,
}

async fn start<H: Handler>(
    target: Target,
    options: ClientOptions,
    handler: H,
) -> Result<Client, ClientError> {
    let backoff = match &options.reconnect {
        Some(config) => Some(
            Backoff::new(config.clone(), rand::random())
                .map_err(|e| ClientError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let mut hub_config = HubConfig::default();
    hub_config.backpressure = options.backpressure;
    let hub =
        Hub::new(hub_config, Instant::now()).map_err(|e| ClientError::Config(e.to_string()))?;
    let first = connect_once(&target, &options, &hub).await?;
    let shared = Arc::new(ClientShared {
        current: Mutex::new(Some(first.session.clone())),
        closing: AtomicBool::new(false),
        finished: watch::channel(false).0,
    });
    let client = Client {
        shared: Arc::clone(&shared),
    };
    tokio::spawn(run(target, options, handler, hub, shared, backoff, first));
    Ok(client)
}

/// The session for a new connection, registered in the client's hub.
fn new_session(
    hub: &Hub,
    options: &ClientOptions,
    remote: SocketAddr,
    protocol: Protocol,
) -> Result<Session, ClientError> {
    let config = |e: &dyn std::error::Error| ClientError::Config(e.to_string());
    let permit = hub.try_admit().map_err(|e| config(&e))?;
    let hub_session = hub
        .register(permit, Instant::now())
        .map_err(|e| config(&e))?;
    let link = Link::new(hub_session, protocol, options.link.clone(), Instant::now())
        .map_err(|e| config(&e))?;
    Ok(Session::new(Arc::new(link), hub.clone(), remote))
}

async fn run<H: Handler>(
    target: Target,
    options: ClientOptions,
    handler: H,
    hub: Hub,
    shared: Arc<ClientShared>,
    mut backoff: Option<Backoff>,
    first: Connected,
) {
    let mut next = Some(first);
    while let Some(connected) = next.take() {
        let session = connected.session;
        if let Some(backoff) = &mut backoff {
            backoff.connected(Instant::now());
        }
        let id = session.id();
        drive(
            Buffered(connected.stream),
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
            tokio::time::sleep(delay).await;
            if shared.closing.load(Ordering::Acquire) {
                break;
            }
            match connect_once(&target, &options, &hub).await {
                Ok(connected) => {
                    *lock(&shared.current) = Some(connected.session.clone());
                    next = Some(connected);
                    break;
                }
                Err(e) => handler.on_error(&e).await,
            }
        }
    }
    shared.finished.send_replace(true);
}

async fn connect_once(
    target: &Target,
    options: &ClientOptions,
    hub: &Hub,
) -> Result<Connected, ClientError> {
    let attempt = async {
        let (authority, tls) = match target {
            Target::Tcp { addr, tls, .. } => (addr.clone(), tls),
            Target::Ws { url, tls, .. } => (url.authority(), tls),
        };
        let tcp = TcpStream::connect(authority.as_str()).await?;
        tcp.set_nodelay(options.nodelay)?;
        let remote = tcp.peer_addr()?;
        let mut stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(
                tls.connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(ClientError::Tls)?,
            ),
        };
        let (protocol, initial) = match target {
            Target::Tcp { framing, .. } => {
                let framer = framing
                    .build()
                    .map_err(|e| ClientError::Config(e.to_string()))?;
                (Protocol::Framed(framer), Bytes::new())
            }
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
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
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
    let mut state = ClientHandshake::start(&config, &mut rand::rng(), &mut out)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    stream.write_all(&out).await?;
    // A TLS stream may hold the request until flushed.
    stream.flush().await?;
    let mut buf = vec![0u8; 4096];
    let upgraded = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        match state
            .handle_input(&buf[..n])
            .map_err(ClientError::Handshake)?
        {
            ClientStep::NeedMore(next) => state = next,
            ClientStep::Done(upgraded) => break upgraded,
        }
    };
    let mut conn = Connection::new(Side::Client, ws.config.clone());
    if let (Some(params), Some(deflate)) = (upgraded.deflate, &ws.deflate) {
        conn = conn
            .with_deflate(params, deflate)
            .map_err(|e| ClientError::Config(e.to_string()))?;
    }
    Ok((conn, upgraded.leftover))
}
