//! TCP and WebSocket clients, with reconnects.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use storm_proto::Message;
use storm_proto::hub::{Hub, HubConfig};
use storm_proto::link::{Link, Protocol};
use storm_proto::options::{ClientOptions, Framing, WsOptions};
use storm_proto::reconnect::{Backoff, BackoffStep};
use storm_proto::ws::handshake::{ClientConfig, ClientHandshake, ClientStep, ResponseError};
use storm_proto::ws::{Connection, Side, UrlError, WsUrl};

use crate::driver::drive;
use crate::{Handler, SendError, Session};

/// Why a client could not connect.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not a WebSocket URL.
    Url(UrlError),
    /// `wss://` needs TLS, which this client does not do yet.
    TlsUnsupported,
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
            Self::TlsUnsupported => f.write_str("wss:// is not supported by this client yet"),
            Self::Timeout => f.write_str("connect timed out"),
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Handshake(e) => write!(f, "upgrade refused: {e}"),
            Self::Config(e) => write!(f, "invalid option: {e}"),
            Self::NotConnected => f.write_str("not connected"),
            Self::Send(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Where and how a client connects.
#[derive(Clone)]
enum Target {
    Tcp { addr: String, framing: Framing },
    Ws { url: WsUrl, ws: WsOptions },
}

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
    /// Connects to a `ws://` URL and runs `handler` for the connection
    /// (and, with `options.reconnect`, for every reconnection).
    ///
    /// # Errors
    ///
    /// When the first connection cannot be made.
    pub async fn connect<H: Handler>(
        url: &str,
        options: ClientOptions,
        ws: WsOptions,
        handler: H,
    ) -> Result<Client, ClientError> {
        let url: WsUrl = url.parse().map_err(ClientError::Url)?;
        if url.secure {
            return Err(ClientError::TlsUnsupported);
        }
        start(Target::Ws { url, ws }, options, handler).await
    }
}

impl TcpClient {
    /// Connects to `addr` (`host:port`) and frames messages with `framing`.
    ///
    /// # Errors
    ///
    /// When the first connection cannot be made.
    pub async fn connect<H: Handler>(
        addr: &str,
        options: ClientOptions,
        framing: Framing,
        handler: H,
    ) -> Result<Client, ClientError> {
        framing
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        start(
            Target::Tcp {
                addr: addr.to_owned(),
                framing,
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
    stream: TcpStream,
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
    stream: &TcpStream,
    protocol: Protocol,
) -> Result<Session, ClientError> {
    let config = |e: &dyn std::error::Error| ClientError::Config(e.to_string());
    let permit = hub.try_admit().map_err(|e| config(&e))?;
    let hub_session = hub
        .register(permit, Instant::now())
        .map_err(|e| config(&e))?;
    let link = Link::new(hub_session, protocol, options.link.clone(), Instant::now())
        .map_err(|e| config(&e))?;
    Ok(Session::new(
        Arc::new(link),
        hub.clone(),
        stream.peer_addr()?,
    ))
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
            connected.stream,
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
        match target {
            Target::Tcp { addr, framing } => {
                let stream = TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(options.nodelay)?;
                let framer = framing
                    .build()
                    .map_err(|e| ClientError::Config(e.to_string()))?;
                let session = new_session(hub, options, &stream, Protocol::Framed(framer))?;
                Ok(Connected {
                    stream,
                    session,
                    initial: Bytes::new(),
                })
            }
            Target::Ws { url, ws } => {
                let mut stream = TcpStream::connect(url.authority()).await?;
                stream.set_nodelay(options.nodelay)?;
                let (conn, initial) = upgrade(&mut stream, url, ws, options).await?;
                let session =
                    new_session(hub, options, &stream, Protocol::WebSocket(Box::new(conn)))?;
                Ok(Connected {
                    stream,
                    session,
                    initial,
                })
            }
        }
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn upgrade(
    stream: &mut TcpStream,
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
