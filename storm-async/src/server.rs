//! TCP and WebSocket servers.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use storm_host::hub::{CloseKind, SessionId};
use storm_host::link::LinkDriver;
use storm_host::options::{ServerOptions, TlsServerConfig, WsOptions};
use storm_host::session::Registry;
use storm_host::setup::{
    AcceptErrors, Admitted, Answer, Decision, Opened, ServerOpen, ServerRequest, ServerSetup,
    ServerUpgradeStep, TlsInfo, UpgradeInfo, handshake_failed, server_hub, tls_handshake_failed,
};
use storm_proto::framing::Framing;

use crate::driver::drive;
use crate::io::{read_step, write_all_flush};
use crate::runtime::{PollRead, PollWrite, Runtime, Stream, check_tls};
use crate::sync::{Either, Signal, TaskCount, TaskGuard, race, timeout};
use crate::{Handler, Session};

/// State every connection task and every [`ServerHandle`] shares.
struct Shared {
    registry: Registry,
    options: ServerOptions,
    /// Framing or WebSocket, and TLS: built once at bind.
    setup: ServerSetup,
    local_addr: SocketAddr,
    /// Set by `shutdown`: stop accepting.
    stop: Signal,
    /// Set by `serve` once every connection task has ended.
    done: Signal,
    /// Set by `shutdown` once its timeout has passed: handshakes still
    /// running end at once instead of at their own timeout.
    abort: Signal,
    tasks: Arc<TaskCount>,
    /// The application's upgrade hook, set when a [`WsServer`] starts to
    /// serve, or by [`ServerHandle::on_upgrade`] on a detached server.
    upgrade: OnceLock<UpgradeHook>,
    /// No listener and no accept loop ([`WsServer::detached`]): `done` is
    /// never set, and `shutdown` waits for the connection tasks instead.
    detached: bool,
}

impl Shared {
    /// The state of a server with `options` and `setup`, listening on
    /// `local_addr` (or detached).
    fn new(
        options: ServerOptions,
        setup: ServerSetup,
        local_addr: SocketAddr,
        detached: bool,
    ) -> io::Result<Self> {
        let hub = server_hub(&options, Instant::now())?;
        Ok(Self {
            registry: Registry::new(hub),
            local_addr,
            options,
            setup,
            stop: Signal::default(),
            done: Signal::default(),
            abort: Signal::default(),
            tasks: Arc::default(),
            upgrade: OnceLock::new(),
            detached,
        })
    }
}

/// The future an upgrade hook returns, boxed.
type UpgradeFuture = Pin<Box<dyn Future<Output = Decision> + Send + 'static>>;

/// An upgrade hook, boxed.
pub(crate) type UpgradeHook = Arc<dyn Fn(UpgradeInfo) -> UpgradeFuture + Send + Sync>;

/// `hook` boxed, as every server and
/// [`WebSocketStream::accept_hdr`](crate::websocket::WebSocketStream::accept_hdr)
/// keep it.
pub(crate) fn upgrade_hook<F, Fut>(hook: F) -> UpgradeHook
where
    F: Fn(UpgradeInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Decision> + Send + 'static,
{
    Arc::new(move |info| Box::pin(hook(info)) as UpgradeFuture)
}

/// Controls a running server from anywhere: its sessions, groups,
/// broadcast, and shutdown. Cheap to clone.
pub struct ServerHandle<R> {
    shared: Arc<Shared>,
    runtime: PhantomData<fn() -> R>,
}

impl<R> Clone for ServerHandle<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            runtime: PhantomData,
        }
    }
}

/// Sessions, groups and broadcast: everything but `local_addr` and
/// `shutdown` comes from the core's [`Registry`].
impl<R> std::ops::Deref for ServerHandle<R> {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.shared.registry
    }
}

impl<R> fmt::Debug for ServerHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

/// A WebSocket server on runtime `R`.
///
/// **Panics**: the server panics neither on what peers send nor on I/O
/// errors (those reach the handler's `on_error`). A panic in the
/// application's code it runs (the [`Handler`](crate::Handler), the
/// upgrade hook, middleware) ends that one connection's task: its socket
/// closes without a close frame, its session leaves the server and its
/// place under `max_connections` is freed, while the server and its other
/// connections go on (tokio and smol catch a task's panic).
pub struct WsServer<R: Runtime> {
    listener: R::Listener,
    handle: ServerHandle<R>,
    upgrade: Option<UpgradeHook>,
}

/// A plain TCP server with a framer (length-prefixed by default), on
/// runtime `R`.
pub struct TcpServer<R: Runtime> {
    listener: R::Listener,
    handle: ServerHandle<R>,
}

macro_rules! server_common {
    ($name:ident) => {
        impl<R: Runtime> $name<R> {
            /// The address the server listens on (the real port when the
            /// options asked for port 0).
            #[must_use]
            pub fn local_addr(&self) -> SocketAddr {
                self.handle.shared.local_addr
            }

            /// A handle to the server's sessions, groups and shutdown.
            #[must_use]
            pub fn handle(&self) -> ServerHandle<R> {
                self.handle.clone()
            }

            /// Accepts connections and runs `handler` for each until
            /// [`ServerHandle::shutdown`]; returns when every connection
            /// task has ended.
            ///
            /// A failed accept never ends it: the handler's `on_error`
            /// hears it, and the server accepts again at once (one
            /// connection's failure) or after a pause (out of descriptors,
            /// buffers or memory), serving its connections meanwhile (see
            /// [`AcceptErrors`](storm_host::setup::AcceptErrors)).
            ///
            /// # Errors
            ///
            /// None from accepting; connection errors go to the handler.
            pub async fn serve<H: Handler>(self, handler: H) -> io::Result<()> {
                let (listener, handle) = self.start();
                serve(listener, handle, handler).await
            }
        }

        impl<R: Runtime> fmt::Debug for $name<R> {
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

impl<R: Runtime> WsServer<R> {
    /// Binds a WebSocket server.
    ///
    /// # Errors
    ///
    /// An invalid address or option, or a failed bind.
    pub async fn bind(options: ServerOptions, ws: WsOptions) -> io::Result<Self> {
        // Before the socket: a bad certificate must not leave a port taken.
        let setup = ServerSetup::ws(&options, ws)?;
        let (listener, handle) = bind::<R>(options, setup).await?;
        Ok(Self {
            listener,
            handle,
            upgrade: None,
        })
    }

    /// Decides on every upgrade request with `hook` (replacing any hook
    /// set before): it gets the request (method, path, query, headers,
    /// `Origin`, offered subprotocols and extensions), the peer's address
    /// and, under TLS, the SNI and ALPN, and returns a [`Decision`]:
    /// accept (choosing a subprotocol, adding response headers, attaching
    /// a value the handler reads with
    /// [`Session::attached`]) or reject
    /// (a status, headers and a body, then the connection is closed). Route
    /// by path by attaching the route. Without a hook every valid request
    /// from an allowed origin
    /// ([`WsOptions::allowed_origins`](storm_host::options::WsOptions::allowed_origins),
    /// checked before the hook) is accepted.
    ///
    /// The hook runs after the request has been read and before anything
    /// else is committed to the connection (no session, no link, no
    /// buffers; only its place under `max_connections`), within the
    /// server's `handshake_timeout` (which the TLS handshake and the
    /// request's reading share): a hook still running then is dropped, the
    /// connection closed without a response and the handler's `on_error`
    /// hears [`TimedOut`](io::ErrorKind::TimedOut). A rejection reaches
    /// `on_error` as [`PermissionDenied`](io::ErrorKind::PermissionDenied),
    /// a decision with a mistake (a header with CR or LF, an unoffered
    /// subprotocol) as [`InvalidInput`](io::ErrorKind::InvalidInput)
    /// after a `500`.
    ///
    /// **Cancel safety**: the hook's future is dropped at any await point
    /// when the handshake times out or a shutdown gives up waiting; it
    /// must not leave anything half done then. A panic in the hook ends
    /// that connection's task, as a panic in the handler does.
    #[must_use]
    pub fn on_upgrade<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(UpgradeInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Decision> + Send + 'static,
    {
        self.upgrade = Some(upgrade_hook(hook));
        self
    }

    /// A WebSocket server without a listener of its own, for connections
    /// another HTTP server (hyper, axum) accepts and upgrades: answer each
    /// upgrade request with [`ServerHandle::upgrade`], and serve the
    /// connection the HTTP server hands over with
    /// [`PendingSession::serve`]. Sessions, groups, broadcast, heartbeat,
    /// backpressure, the slow-consumer policy, the upgrade hook (set with
    /// [`ServerHandle::on_upgrade`]) and `shutdown` work as on a
    /// listening server; `options.addr`, the socket options and the
    /// handshake's reading are the HTTP server's, and `local_addr` is
    /// `0.0.0.0:0`.
    ///
    /// # Errors
    ///
    /// An invalid option, or TLS options (TLS, if any, is the HTTP
    /// server's).
    pub fn detached(options: ServerOptions, ws: WsOptions) -> io::Result<ServerHandle<R>> {
        if options.tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a detached server runs no TLS: the HTTP server in front of it does",
            ));
        }
        let setup = ServerSetup::ws(&options, ws)?;
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Ok(ServerHandle {
            shared: Arc::new(Shared::new(options, setup, unspecified, true)?),
            runtime: PhantomData,
        })
    }

    fn start(self) -> (R::Listener, ServerHandle<R>) {
        if let Some(hook) = self.upgrade {
            // `serve` takes the server by value: this runs once.
            let _ = self.handle.shared.upgrade.set(hook);
        }
        (self.listener, self.handle)
    }
}

impl<R: Runtime> TcpServer<R> {
    /// Binds a TCP server that frames messages with `framing`.
    ///
    /// # Errors
    ///
    /// An invalid address or option, or a failed bind.
    pub async fn bind(options: ServerOptions, framing: Framing) -> io::Result<Self> {
        let setup = ServerSetup::tcp(&options, framing)?;
        let (listener, handle) = bind::<R>(options, setup).await?;
        Ok(Self { listener, handle })
    }

    fn start(self) -> (R::Listener, ServerHandle<R>) {
        (self.listener, self.handle)
    }
}

async fn bind<R: Runtime>(
    options: ServerOptions,
    setup: ServerSetup,
) -> io::Result<(R::Listener, ServerHandle<R>)> {
    check_tls::<R>(setup.tls().is_some())?;
    let addr = R::resolve(&options.addr)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        })?;
    let listener = listen(addr, &options)?;
    let local_addr = listener.local_addr()?;
    let listener = R::listen(listener)?;
    let shared = Shared::new(options, setup, local_addr, false)?;
    Ok((
        listener,
        ServerHandle {
            shared: Arc::new(shared),
            runtime: PhantomData,
        },
    ))
}

/// A bound, listening, non-blocking socket with the options applied.
fn listen(addr: SocketAddr, options: &ServerOptions) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(IpProtocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if let Some(size) = options.recv_buffer_size {
        socket.set_recv_buffer_size(usize::try_from(size).unwrap_or(usize::MAX))?;
    }
    if let Some(size) = options.send_buffer_size {
        socket.set_send_buffer_size(usize::try_from(size).unwrap_or(usize::MAX))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Runs the accept loop as a task of its own and waits for it to finish.
///
/// In its own task, not in the caller's: a caller under `block_on` (as
/// `#[tokio::main]` is) runs on a thread outside the runtime's workers, and
/// every connection task would be allocated there, apart from everything
/// the workers allocate for it: 0.3 KiB more per idle connection, measured.
/// Dropping this future stops accepting; connections already accepted run
/// on, and [`ServerHandle::shutdown`] still ends them.
async fn serve<R: Runtime, H: Handler>(
    listener: R::Listener,
    handle: ServerHandle<R>,
    handler: H,
) -> io::Result<()> {
    /// Sets the flag when dropped.
    struct SetOnDrop(Arc<Signal>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.set();
        }
    }
    let detached = Arc::new(Signal::default());
    let done = SetOnDrop(Arc::clone(&detached));
    R::spawn(accept::<R, H>(listener, handle.clone(), handler, detached));
    handle.shared.done.wait().await;
    drop(done);
    Ok(())
}

/// Accepts until shutdown (or until `detached`: the `serve` future was
/// dropped), then waits for every connection task.
///
/// A failed accept follows storm-proto's [`AcceptErrors`]: one
/// connection's failure is reported and the next accepted at once; out of
/// descriptors (or any failure that is not one connection's), the task
/// sleeps on the runtime's timer before accepting again, so that the
/// connections already accepted run and free descriptors as they end.
/// Accepting again at once would fail again at once, and on an executor
/// without a cooperative budget (smol's) the task would never yield.
async fn accept<R: Runtime, H: Handler>(
    listener: R::Listener,
    handle: ServerHandle<R>,
    handler: H,
    detached: Arc<Signal>,
) {
    let handler = Arc::new(handler);
    let shared = &handle.shared;
    let (mut stop, mut detach) = (shared.stop.wait(), detached.wait());
    let mut stopped = |cx: &mut Context<'_>| {
        Pin::new(&mut stop).poll(cx).is_ready() || Pin::new(&mut detach).poll(cx).is_ready()
    };
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = poll_fn(|cx| {
            if stopped(cx) {
                return Poll::Ready(None);
            }
            R::poll_accept(&listener, cx).map(Some)
        })
        .await;
        let (stream, remote) = match accepted {
            None => break,
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                let step = errors.failed(e, Instant::now());
                if let Some(report) = step.report {
                    handler.on_error(&report).await;
                }
                if let Some(wait) = step.wait {
                    let mut pause = pin!(R::sleep_until(Instant::now() + wait));
                    let paused = poll_fn(|cx| {
                        if stopped(cx) {
                            return Poll::Ready(false);
                        }
                        pause.as_mut().poll(cx).map(|()| true)
                    });
                    if !paused.await {
                        break;
                    }
                }
                continue;
            }
        };
        // Over the limit: closed at accept, before any handshake.
        let Some(admitted) = Admitted::new(shared.registry.hub(), remote) else {
            drop(stream);
            continue;
        };
        let guard = shared.tasks.enter();
        let (handle, handler) = (handle.clone(), Arc::clone(&handler));
        #[cfg(feature = "tracing")]
        let span = storm_host::setup::connection_span(remote, shared.setup.protocol_name());
        match shared.setup.tls() {
            None => {
                let task = handle.plain(stream, admitted, handler, guard);
                #[cfg(feature = "tracing")]
                let task = tracing::Instrument::instrument(task, span);
                R::spawn(task);
            }
            Some(config) => {
                let config = config.clone();
                let task = handle.secure(config, stream, admitted, handler, guard);
                #[cfg(feature = "tracing")]
                let task = tracing::Instrument::instrument(task, span);
                R::spawn(task);
            }
        }
    }
    drop(listener);
    shared.tasks.wait_idle().await;
    shared.done.set();
}

/// The value, or `None` once the handler heard the error.
///
/// Taking the result by value matters: a result matched in place and
/// partly moved out of keeps its space in the connection task for the
/// connection's whole life.
async fn report<T, H: Handler>(result: io::Result<T>, handler: &H) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            handler.on_error(&e).await;
            None
        }
    }
}

/// Runs the upgrade hook on `request` and answers with its decision.
///
/// Boxed, and a plain function that builds the box: only connections of
/// a server with a hook carry the hook's state, and only while it runs;
/// the connection task's own future keeps one pointer.
fn decide<'a>(
    hook: &UpgradeHook,
    request: ServerRequest<'a>,
    remote: SocketAddr,
    tls: Option<TlsInfo>,
) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>> {
    let decision = hook(request.info(remote, tls));
    Box::pin(async move { request.decide(decision.await) })
}

/// Removes a session from the registry when dropped.
struct Registered<'a> {
    registry: &'a Registry,
    id: SessionId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

impl<R: Runtime> ServerHandle<R> {
    /// Socket options for an accepted connection.
    fn configure(&self, stream: &R::Tcp) -> io::Result<()> {
        let options = &self.shared.options;
        let socket = R::socket(stream);
        socket.set_tcp_nodelay(options.nodelay)?;
        if options.keepalive {
            socket.set_keepalive(true)?;
        }
        Ok(())
    }

    /// The task of one accepted plain TCP connection: handshakes, registers
    /// and drives it; errors go to `on_error`, and the task count drops
    /// last.
    ///
    /// The spawned future itself, an `async move` block rather than an
    /// `async fn` or a block around one: every argument of an `async fn`
    /// is stored twice in its future, and every layer stores what it hands
    /// down again. This future is most of an idle connection's memory.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice (see above)"
    )]
    fn plain<H: Handler>(
        self,
        mut stream: R::Tcp,
        admitted: Admitted,
        handler: Arc<H>,
        guard: TaskGuard,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            // One time budget for the whole handshake.
            let limit = self.shared.options.handshake_timeout;
            let remote = admitted.remote();
            let opened = match self.configure(&stream) {
                Ok(()) => {
                    let open = pin!(self.open(&mut stream, &remote, None));
                    self.within(limit, open).await
                }
                Err(e) => Err(e),
            };
            let opened = opened.map_err(|e| handshake_failed(self.hub(), remote, e));
            let registered = opened.and_then(|mut opened| {
                let initial = std::mem::take(&mut opened.leftover);
                let (session, link, registered) = self.register(admitted, opened)?;
                Ok((session, link, registered, initial))
            });
            let Some((session, link, registered, initial)) = report(registered, &*handler).await
            else {
                return;
            };
            self.drive(stream.split(), session, link, initial, &*handler)
                .await;
            drop(registered);
            drop(guard);
        }
    }

    /// [`Self::plain`] for a TLS connection.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice (see `plain`)"
    )]
    fn secure<H: Handler>(
        self,
        config: TlsServerConfig,
        stream: R::Tcp,
        admitted: Admitted,
        handler: Arc<H>,
        guard: TaskGuard,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            // One time budget for the whole handshake: TLS, then the
            // upgrade. Boxed: the TLS handshake state is large, and only
            // TLS connections should carry it.
            let limit = self.shared.options.handshake_timeout;
            let remote = admitted.remote();
            let mut handshake = Box::pin(async {
                self.configure(&stream)?;
                let mut stream = R::tls_accept(config, stream)
                    .await
                    .map_err(tls_handshake_failed)?;
                let tls = R::tls_info(&stream);
                let mut opened = self.open(&mut stream, &remote, Some(&tls)).await?;
                let initial = std::mem::take(&mut opened.leftover);
                let (session, link, registered) = self.register(admitted, opened)?;
                // Split here: only the halves (two pointers), not the
                // large TLS stream, reach this task's own future.
                Ok((stream.split(), session, link, registered, initial))
            });
            let opened = self.within(limit, handshake.as_mut()).await;
            let opened = opened.map_err(|e| handshake_failed(self.hub(), remote, e));
            drop(handshake);
            let Some((halves, session, link, registered, initial)) =
                report(opened, &*handler).await
            else {
                return;
            };
            self.drive(halves, session, link, initial, &*handler).await;
            drop(registered);
            drop(guard);
        }
    }

    /// `handshake`, or a timed-out error that says which handshake, or
    /// an aborted one when `shutdown` gave up waiting. Pinned by the
    /// caller, so that the connection task stores it once.
    async fn within<T, F: Future<Output = io::Result<T>>>(
        &self,
        limit: Duration,
        handshake: Pin<&mut F>,
    ) -> io::Result<T> {
        let what = self.shared.setup.handshake_name();
        let timed = pin!(timeout::<R, _>(limit, handshake));
        match race(timed, pin!(self.shared.abort.wait())).await {
            Either::Left(Some(result)) => result,
            Either::Left(None) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} timed out"),
            )),
            Either::Right(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("{what} cut short by the server's shutdown"),
            )),
        }
    }

    /// The protocol a new connection speaks, after the WebSocket upgrade
    /// (decided by the upgrade hook, if any) when the server is a
    /// WebSocket server; and any bytes the peer sent after its upgrade
    /// request.
    async fn open<S: Stream>(
        &self,
        stream: &mut S,
        remote: &SocketAddr,
        tls: Option<&TlsInfo>,
    ) -> io::Result<Opened> {
        let hook = self
            .shared
            .upgrade
            .get()
            .map(|hook| (hook, *remote, tls.cloned()));
        open_upgrade(&self.shared.setup, stream, hook).await
    }

    /// Registers an opened connection: its session, its link (boxed: the
    /// task's future holds a pointer until the driver takes it), and a guard that
    /// removes it from the registry when the connection task ends (no
    /// async layer of its own, which would cost the task its arguments'
    /// space for its whole life).
    fn register(
        &self,
        admitted: Admitted,
        opened: Opened,
    ) -> io::Result<(Session, Box<LinkDriver>, Registered<'_>)> {
        // Closed at once if registered after the shutdown's `close_all`.
        let stopping = || self.shared.stop.is_set();
        let (setup, registry) = (&self.shared.setup, &self.shared.registry);
        let (session, link) = setup.admit(registry, admitted, opened, Instant::now(), stopping)?;
        let registered = Registered {
            registry,
            id: session.id(),
        };
        Ok((session, link, registered))
    }

    /// Runs a registered session until it closes.
    fn drive<'a, Rd: PollRead + 'a, Wr: PollWrite + 'a, H: Handler>(
        &self,
        halves: (Rd, Wr),
        session: Session,
        link: Box<LinkDriver>,
        initial: Bytes,
        handler: &'a H,
    ) -> impl Future<Output = ()> + 'a {
        let options = &self.shared.options;
        drive::<R, _, _, _>(
            halves,
            session,
            link,
            handler,
            initial,
            options.write_batch,
            options.link.close_timeout,
        )
    }

    /// The server's address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Stops accepting, closes every session gracefully, aborts the ones
    /// still open after `timeout`, and returns once every connection task
    /// has ended (and [`serve`](WsServer::serve) has returned). A
    /// connection accepted before and still in its handshake is closed
    /// gracefully as soon as it is registered; one whose handshake has not
    /// finished after `timeout` is dropped then (the handler's `on_error`
    /// hears [`io::ErrorKind::ConnectionAborted`]).
    pub async fn shutdown(&self, timeout: Duration) {
        let shared = &self.shared;
        shared.stop.set();
        shared.registry.hub().close_all(CloseKind::Graceful);
        if crate::sync::timeout::<R, _>(timeout, pin!(self.finished()))
            .await
            .is_none()
        {
            shared.abort.set();
            shared.registry.hub().close_all(CloseKind::Abort);
            self.finished().await;
        }
    }

    /// Completes once the server stopped accepting and every connection
    /// task ended (a detached server accepts nothing itself).
    async fn finished(&self) {
        match self.shared.detached {
            true => self.shared.tasks.wait_idle().await,
            false => self.shared.done.wait().await,
        }
    }

    /// Sets a [detached](WsServer::detached) server's upgrade hook: the
    /// same hook, with the same contract, as [`WsServer::on_upgrade`]'s
    /// on a listening server, run by [`upgrade`](Self::upgrade) on every
    /// request the caller does not decide itself. The request's peer
    /// address is the one given to `upgrade`; its TLS details are `None`
    /// (TLS is the HTTP server's).
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) on a listening
    /// server's handle (it takes its hook from [`WsServer::on_upgrade`])
    /// or when this server has a hook already.
    pub fn on_upgrade<F, Fut>(self, hook: F) -> io::Result<Self>
    where
        F: Fn(UpgradeInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Decision> + Send + 'static,
    {
        if !self.shared.detached {
            return Err(invalid(
                "a listening server takes its upgrade hook from WsServer::on_upgrade",
            ));
        }
        if self.shared.upgrade.set(upgrade_hook(hook)).is_err() {
            return Err(invalid("this detached server has its upgrade hook already"));
        }
        Ok(self)
    }

    /// Answers a WebSocket upgrade request another HTTP server (hyper,
    /// axum) read, for a [detached](WsServer::detached) server: `head` is
    /// the request's header block as HTTP/1.1 bytes (request line,
    /// headers, blank line), `remote` the peer's address.
    ///
    /// The checks are a listening server's: the handshake's limits (400,
    /// 426, 431), `allowed_origins` (403), then `max_connections` and a
    /// shutdown in progress (503), then the decision: `decision` when the
    /// caller gives one (the server's hook does not run then), else the
    /// server's upgrade hook ([`on_upgrade`](Self::on_upgrade)) as a
    /// listening server runs it, else [`Decision::accept`]. A hook still
    /// running after the server's `handshake_timeout` (or when a
    /// `shutdown` gives up waiting) is dropped and the request refused
    /// with `503`, the session's error saying why
    /// ([`TimedOut`](io::ErrorKind::TimedOut) or
    /// [`ConnectionAborted`](io::ErrorKind::ConnectionAborted)).
    ///
    /// Send [`UpgradeAnswer::response`]; once the HTTP server hands the
    /// connection over, run [`UpgradeAnswer::session`]'s
    /// [`PendingSession::serve`]. From the time the request passed its
    /// checks the connection holds its place under `max_connections` and
    /// counts for `shutdown`; the hook and the wait for the connection
    /// share one `handshake_timeout`.
    ///
    /// **Cancel safety**: dropping the future drops the hook's future and
    /// gives the place back; nothing was sent.
    pub async fn upgrade(
        &self,
        head: &[u8],
        remote: SocketAddr,
        decision: Option<Decision>,
    ) -> UpgradeAnswer<R> {
        let shared = &self.shared;
        let limit = shared.options.handshake_timeout;
        let deadline = Instant::now() + limit;
        let refused = |response, e| UpgradeAnswer {
            response,
            session: Err(e),
        };
        let request = match read_head(&shared.setup, head) {
            Ok(Ok(request)) => request,
            Ok(Err(Answer {
                response, opened, ..
            })) => {
                let e = opened.err().unwrap_or_else(|| invalid("refused"));
                return refused(response, e);
            }
            Err(e) => return refused(Bytes::new(), e),
        };
        // Counted before the check: a `shutdown` that sets `stop` after it
        // waits for this connection.
        let guard = shared.tasks.enter();
        let busy = |request: ServerRequest<'_>, why: &str| {
            let Answer { response, .. } =
                request.decide(Decision::reject(503).body(format!("{why}\n")));
            let e = io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("upgrade refused: {why}"),
            );
            refused(response, e)
        };
        if shared.stop.is_set() {
            return busy(request, "the server is shutting down");
        }
        let Some(admitted) = Admitted::new(shared.registry.hub(), remote) else {
            return busy(request, "too many connections");
        };
        let decision = match (decision, shared.upgrade.get()) {
            (Some(decision), _) => decision,
            (None, None) => Decision::accept(),
            (None, Some(hook)) => {
                let decided = hook(request.info(remote, None));
                match self.within(limit, pin!(async { Ok(decided.await) })).await {
                    Ok(decision) => decision,
                    Err(e) => {
                        let late =
                            Decision::reject(503).body("the upgrade was not decided in time\n");
                        let Answer { response, .. } = request.decide(late);
                        return refused(response, e);
                    }
                }
            }
        };
        let Answer {
            response, opened, ..
        } = request.decide(decision);
        let session = opened.map(|opened| PendingSession {
            handle: self.clone(),
            admitted,
            opened,
            guard,
            deadline,
        });
        UpgradeAnswer { response, session }
    }
}

/// A server connection's protocol after `setup`'s handshake on `stream`
/// (the WebSocket upgrade, answered as the upgrade `hook` decides, if
/// any, on the request from `remote` with its TLS details; nothing for
/// TCP),
/// and any bytes the peer sent after its upgrade request. Shared by the
/// servers and
/// [`WebSocketStream::accept`](crate::websocket::WebSocketStream::accept).
pub(crate) async fn open_upgrade<S: PollRead + PollWrite>(
    setup: &ServerSetup,
    stream: &mut S,
    hook: Option<(&UpgradeHook, SocketAddr, Option<TlsInfo>)>,
) -> io::Result<Opened> {
    let mut upgrade = match setup.open()? {
        ServerOpen::Ready(protocol) => return Ok(Opened::new(protocol)),
        ServerOpen::Upgrade(upgrade) => upgrade,
    };
    let Answer {
        response, opened, ..
    } = loop {
        let step = read_step(stream, upgrade, |upgrade, input| {
            upgrade.handle_input(input)
        });
        let request = match step.await?.ok_or(io::ErrorKind::UnexpectedEof)? {
            ServerUpgradeStep::NeedMore(next) => {
                upgrade = next;
                continue;
            }
            ServerUpgradeStep::Done(answer) => break answer,
            ServerUpgradeStep::Request(request) => request,
        };
        break match hook {
            None => request.accept(),
            Some((hook, remote, tls)) => decide(hook, request, remote, tls).await,
        };
    };
    let written = write_all_flush(stream, &response).await;
    let opened = opened?;
    written?;
    Ok(opened)
}

/// The upgrade request whose whole header block is `head`, read by
/// `setup` (a WebSocket server's): a valid one to decide on, or the
/// answer that refuses a malformed request or a forbidden origin. Shared
/// by [`ServerHandle::upgrade`] and
/// [`answer_upgrade`](crate::websocket::answer_upgrade).
///
/// # Errors
///
/// [`InvalidInput`](io::ErrorKind::InvalidInput), with no response to
/// send, when `head` is not a whole header block (no blank line yet) or
/// `setup` is not a WebSocket server's.
pub(crate) fn read_head<'s>(
    setup: &'s ServerSetup,
    head: &[u8],
) -> io::Result<Result<ServerRequest<'s>, Answer>> {
    let ServerOpen::Upgrade(upgrade) = setup.open()? else {
        return Err(invalid("a TCP server has no WebSocket upgrade to answer"));
    };
    let incomplete = || invalid("the upgrade request's header block is not whole");
    if head.is_empty() {
        return Err(incomplete());
    }
    match upgrade.handle_input(head) {
        ServerUpgradeStep::NeedMore(_) => Err(incomplete()),
        ServerUpgradeStep::Done(answer) => Ok(Err(answer)),
        ServerUpgradeStep::Request(request) => Ok(Ok(request)),
    }
}

/// An [`InvalidInput`](io::ErrorKind::InvalidInput) error saying `why`.
fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why.to_owned())
}

/// What [`ServerHandle::upgrade`] answered an upgrade request with.
#[derive(Debug)]
#[non_exhaustive]
pub struct UpgradeAnswer<R> {
    /// The HTTP response to send: the `101`, or a complete refusal (with
    /// `Connection: close`). Empty only when the head was not whole (see
    /// `session`'s error).
    pub response: Bytes,
    /// The accepted connection, waiting for its stream; or why it was
    /// refused ([`PermissionDenied`](io::ErrorKind::PermissionDenied) for
    /// a rejection or a full server, [`InvalidInput`](io::ErrorKind::InvalidInput)
    /// for a malformed request or a decision with a mistake).
    pub session: io::Result<PendingSession<R>>,
}

/// An upgrade a [detached](WsServer::detached) server accepted, waiting
/// for the stream the HTTP server hands over. Dropping it gives its place
/// under `max_connections` back.
#[must_use]
pub struct PendingSession<R> {
    handle: ServerHandle<R>,
    admitted: Admitted,
    opened: Opened,
    guard: TaskGuard,
    /// The end of the handshake's time budget, which began when the
    /// request was read.
    deadline: Instant,
}

impl<R> fmt::Debug for PendingSession<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingSession")
            .field("remote", &self.admitted.remote())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> PendingSession<R> {
    /// Waits for `upgraded` (the HTTP server's upgraded connection, split
    /// into halves) for what is left of the server's `handshake_timeout`
    /// (which began with [`ServerHandle::upgrade`]), then runs the
    /// session with `handler` until it closes, as the server's own
    /// connections run: `on_connect`, the messages, one `on_disconnect`,
    /// its groups and the hub's broadcasts, heartbeat, backpressure and
    /// the slow-consumer policy. Errors (the upgrade failed or timed out,
    /// a shutdown cut it short) go to the handler's `on_error`. Spawn it
    /// as a task of its own.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice (see `ServerHandle::plain`)"
    )]
    pub fn serve<F, Rd, Wr, H>(
        self,
        upgraded: F,
        handler: Arc<H>,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = io::Result<(Rd, Wr)>> + Send + 'static,
        Rd: PollRead,
        Wr: PollWrite,
        H: Handler,
    {
        async move {
            let Self {
                handle,
                admitted,
                mut opened,
                guard,
                deadline,
            } = self;
            let remote = admitted.remote();
            let limit = deadline.saturating_duration_since(Instant::now());
            let halves = handle.within(limit, pin!(upgraded)).await;
            let registered = halves
                .map_err(|e| handshake_failed(handle.hub(), remote, e))
                .and_then(|halves| {
                    let initial = std::mem::take(&mut opened.leftover);
                    let (session, link, registered) = handle.register(admitted, opened)?;
                    Ok((halves, session, link, registered, initial))
                });
            let Some((halves, session, link, registered, initial)) =
                report(registered, &*handler).await
            else {
                return;
            };
            handle
                .drive(halves, session, link, initial, &*handler)
                .await;
            drop(registered);
            drop(guard);
        }
    }
}
