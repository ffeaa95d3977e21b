//! TCP and WebSocket servers.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use storm_proto::hub::{CloseKind, Hub, HubConfig};
use storm_proto::link::{Link, Protocol};
use storm_proto::options::{Framing, ServerOptions, WsOptions};
use storm_proto::peer::Registry;
use storm_proto::ws::handshake::{ServerConfig, ServerHandshake, ServerStep};
use storm_proto::ws::{Connection, Side};

use crate::driver::{Buffered, Transport, drive};
use crate::{Handler, Session};

/// What the server speaks after accepting.
#[derive(Clone)]
enum Kind {
    Tcp(Framing),
    Ws {
        handshake: Arc<ServerConfig>,
        options: WsOptions,
    },
}

/// State every connection task and every [`ServerHandle`] shares.
struct Shared {
    registry: Registry<Session>,
    options: ServerOptions,
    kind: Kind,
    /// Built once at bind from `options.tls`.
    tls: Option<TlsAcceptor>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    done: watch::Sender<bool>,
}

/// Controls a running server from anywhere: its sessions, groups,
/// broadcast, and shutdown. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

/// Sessions, groups and broadcast: everything but `local_addr` and
/// `shutdown` comes from the core's [`Registry`].
impl std::ops::Deref for ServerHandle {
    type Target = Registry<Session>;
    fn deref(&self) -> &Registry<Session> {
        &self.shared.registry
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

/// A WebSocket server. See the [crate docs](crate) for an example.
pub struct WsServer {
    listener: TcpListener,
    handle: ServerHandle,
}

/// A plain TCP server with a framer (length-prefixed by default).
pub struct TcpServer {
    listener: TcpListener,
    handle: ServerHandle,
}

macro_rules! server_common {
    ($name:ident) => {
        impl $name {
            /// The address the server listens on (the real port when the
            /// options asked for port 0).
            #[must_use]
            pub fn local_addr(&self) -> SocketAddr {
                self.handle.shared.local_addr
            }

            /// A handle to the server's sessions, groups and shutdown.
            #[must_use]
            pub fn handle(&self) -> ServerHandle {
                self.handle.clone()
            }

            /// Accepts connections and runs `handler` for each until
            /// [`ServerHandle::shutdown`]; returns when every connection
            /// task has ended.
            ///
            /// # Errors
            ///
            /// Only a failing listener; connection errors go to the handler.
            pub async fn serve<H: Handler>(self, handler: H) -> io::Result<()> {
                serve(self.listener, self.handle, handler).await
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("local_addr", &self.local_addr())
                    .finish_non_exhaustive()
            }
        }
    };
}

server_common!(WsServer);
server_common!(TcpServer);

impl WsServer {
    /// Binds a WebSocket server.
    ///
    /// # Errors
    ///
    /// An invalid address or option, or a failed bind.
    pub async fn bind(options: ServerOptions, ws: WsOptions) -> io::Result<Self> {
        let handshake = ServerConfig {
            subprotocols: ws.subprotocols.clone(),
            deflate: ws.deflate.clone(),
            ..ServerConfig::default()
        };
        handshake.validate().map_err(invalid)?;
        let kind = Kind::Ws {
            handshake: Arc::new(handshake),
            options: ws,
        };
        let (listener, handle) = bind(options, kind).await?;
        Ok(Self { listener, handle })
    }
}

impl TcpServer {
    /// Binds a TCP server that frames messages with `framing`.
    ///
    /// # Errors
    ///
    /// An invalid address or option, or a failed bind.
    pub async fn bind(options: ServerOptions, framing: Framing) -> io::Result<Self> {
        framing.build().map_err(invalid)?;
        let (listener, handle) = bind(options, Kind::Tcp(framing)).await?;
        Ok(Self { listener, handle })
    }
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

async fn bind(options: ServerOptions, kind: Kind) -> io::Result<(TcpListener, ServerHandle)> {
    // Before the socket: a bad certificate must not leave a port taken.
    let tls = options.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let addr: SocketAddr = tokio::net::lookup_host(&options.addr)
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        })?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if let Some(size) = options.recv_buffer_size {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = options.send_buffer_size {
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(addr)?;
    let listener = socket.listen(options.backlog)?;
    let mut hub_config = HubConfig::default();
    hub_config.max_connections = options.max_connections;
    hub_config.backpressure = options.backpressure;
    let hub = Hub::new(hub_config, Instant::now()).map_err(invalid)?;
    let shared = Shared {
        registry: Registry::new(hub),
        local_addr: listener.local_addr()?,
        options,
        kind,
        tls,
        stop: watch::channel(false).0,
        done: watch::channel(false).0,
    };
    Ok((
        listener,
        ServerHandle {
            shared: Arc::new(shared),
        },
    ))
}

async fn serve<H: Handler>(
    listener: TcpListener,
    handle: ServerHandle,
    handler: H,
) -> io::Result<()> {
    let handler = Arc::new(handler);
    let shared = &handle.shared;
    let mut stop = shared.stop.subscribe();
    let mut tasks = JoinSet::new();
    while !*stop.borrow_and_update() {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    // Per-connection failures (the peer reset before accept,
                    // out of descriptors) must not stop the server.
                    Err(e) => {
                        handler.on_error(&e).await;
                        continue;
                    }
                };
                // Over the limit: closed at accept, before any handshake.
                let Ok(permit) = shared.registry.hub().try_admit() else {
                    drop(stream);
                    continue;
                };
                let handle = handle.clone();
                let handler = Arc::clone(&handler);
                tasks.spawn(async move {
                    if let Err(e) = handle.run_connection(stream, remote, permit, &*handler).await {
                        handler.on_error(&e).await;
                    }
                });
            }
            // The only change ever sent is "stop".
            _ = stop.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    shared.done.send_replace(true);
    Ok(())
}

impl ServerHandle {
    async fn run_connection<H: Handler>(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        permit: storm_proto::hub::ConnectionPermit,
        handler: &H,
    ) -> io::Result<()> {
        let shared = &self.shared;
        let options = &shared.options;
        stream.set_nodelay(options.nodelay)?;
        if options.keepalive {
            socket_keepalive(&stream)?;
        }
        // One time budget for the whole handshake: TLS, then the upgrade.
        let limit = options.handshake_timeout;
        match &shared.tls {
            None => {
                let mut stream = stream;
                let (protocol, initial) = self.within(limit, self.open(&mut stream)).await?;
                self.run_session(stream, protocol, initial, remote, permit, handler)
                    .await
            }
            Some(acceptor) => {
                let handshake = async {
                    let mut stream = acceptor.accept(stream).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("TLS handshake failed: {e}"))
                    })?;
                    let (protocol, initial) = self.open(&mut stream).await?;
                    Ok((stream, protocol, initial))
                };
                let (stream, protocol, initial) = self.within(limit, handshake).await?;
                self.run_session(Buffered(stream), protocol, initial, remote, permit, handler)
                    .await
            }
        }
    }

    /// `handshake`, or a timed-out error that says which handshake.
    async fn within<T>(
        &self,
        limit: Duration,
        handshake: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        tokio::time::timeout(limit, handshake).await.map_err(|_| {
            let what = match (&self.shared.kind, self.shared.tls.is_some()) {
                (Kind::Ws { .. }, false) => "WebSocket handshake",
                (Kind::Ws { .. }, true) => "TLS or WebSocket handshake",
                (Kind::Tcp(_), _) => "TLS handshake",
            };
            io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
        })?
    }

    /// The protocol a new connection speaks, after the WebSocket upgrade
    /// when the server is a WebSocket server; and any bytes the peer sent
    /// after its upgrade request.
    async fn open<S>(&self, stream: &mut S) -> io::Result<(Protocol, Bytes)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Ok(match &self.shared.kind {
            Kind::Tcp(framing) => (
                Protocol::Framed(framing.build().map_err(invalid)?),
                Bytes::new(),
            ),
            Kind::Ws {
                handshake,
                options: ws,
            } => {
                let (conn, leftover) = accept_ws(stream, handshake, ws).await?;
                (Protocol::WebSocket(Box::new(conn)), leftover)
            }
        })
    }

    /// Registers the session and drives it until it closes.
    async fn run_session<T, H>(
        &self,
        stream: T,
        protocol: Protocol,
        initial: Bytes,
        remote: SocketAddr,
        permit: storm_proto::hub::ConnectionPermit,
        handler: &H,
    ) -> io::Result<()>
    where
        T: Transport,
        H: Handler,
    {
        let shared = &self.shared;
        let options = &shared.options;
        let hub_session = shared
            .registry
            .hub()
            .register(permit, Instant::now())
            .map_err(invalid)?;
        let link = Link::new(hub_session, protocol, options.link.clone(), Instant::now())
            .map_err(invalid)?;
        let session = Session::new(Arc::new(link), shared.registry.hub().clone(), remote);
        let id = session.id();
        shared.registry.insert(session.clone());
        drive(
            stream,
            session,
            handler,
            initial,
            options.write_batch,
            options.link.close_timeout,
        )
        .await;
        shared.registry.remove(id);
        Ok(())
    }

    /// The server's address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Stops accepting, closes every session gracefully, aborts the ones
    /// still open after `timeout`, and returns once every connection task
    /// has ended (and [`serve`](WsServer::serve) has returned).
    pub async fn shutdown(&self, timeout: Duration) {
        let shared = &self.shared;
        shared.stop.send_replace(true);
        shared.registry.hub().close_all(CloseKind::Graceful);
        let mut done = shared.done.subscribe();
        if tokio::time::timeout(timeout, done.wait_for(|done| *done))
            .await
            .is_err()
        {
            shared.registry.hub().close_all(CloseKind::Abort);
            let _ = done.wait_for(|done| *done).await;
        }
    }
}

fn socket_keepalive(stream: &TcpStream) -> io::Result<()> {
    // tokio has no SO_KEEPALIVE setter on an accepted stream.
    socket2::SockRef::from(stream).set_keepalive(true)
}

/// Reads the upgrade request, answers it, and returns the connection and
/// any bytes the client sent after its request.
async fn accept_ws<S>(
    stream: &mut S,
    handshake: &Arc<ServerConfig>,
    ws: &WsOptions,
) -> io::Result<(Connection, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = ServerHandshake::new(Arc::clone(handshake)).map_err(invalid)?;
    let mut buf = vec![0u8; 4096];
    let mut out = BytesMut::new();
    let pending = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match state.handle_input(&buf[..n]) {
            Ok(ServerStep::NeedMore(next)) => state = next,
            Ok(ServerStep::Request(pending)) => break pending,
            Err(e) => {
                e.write_response(&mut out);
                if stream.write_all(&out).await.is_ok() {
                    let _ = stream.flush().await;
                }
                return Err(invalid(e));
            }
        }
    };
    let accepted = pending.accept(&mut out);
    stream.write_all(&out).await?;
    // A TLS stream may hold the response until flushed.
    stream.flush().await?;
    let mut conn = Connection::new(Side::Server, ws.config.clone());
    if let (Some(params), Some(deflate)) = (accepted.deflate, &ws.deflate) {
        conn = conn.with_deflate(params, deflate).map_err(invalid)?;
    }
    Ok((conn, accepted.leftover))
}
