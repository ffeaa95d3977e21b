//! TCP and WebSocket servers.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use socket2::{Domain, Socket, Type};

use storm_host::hub::CloseKind;
use storm_host::options::{ServerOptions, WsOptions};
use storm_host::session::Registry;
use storm_host::setup::{
    AcceptErrors, Admitted, Answer, Decision, Opened, ServerOpen, ServerSetup, ServerUpgradeStep,
    TlsInfo, UpgradeInfo, handshake_failed, server_hub,
};
use storm_proto::framing::Framing;

use crate::Handler;
use crate::deadline::Deadlined;
use crate::driver::{Transport, drive, lock};
#[cfg(feature = "tls")]
use crate::tls::TlsStream;

/// Where `serve` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    NotStarted,
    Running,
    Done,
}

/// State every connection thread and every [`ServerHandle`] shares.
struct Shared {
    registry: Registry,
    options: ServerOptions,
    /// Framing or WebSocket, and TLS: built once at bind.
    setup: ServerSetup,
    local_addr: SocketAddr,
    stop: AtomicBool,
    serving: Mutex<Serving>,
    serving_changed: Condvar,
    /// Connections in their handshake, so that a shutdown that stopped
    /// waiting can end them at once instead of at their handshake timeout.
    handshaking: Mutex<Handshaking>,
    /// Connection threads still running: `serve` returns once none is.
    running: Mutex<usize>,
    running_changed: Condvar,
    /// The application's upgrade hook, set when a [`WsServer`] starts to
    /// serve.
    upgrade: OnceLock<UpgradeHook>,
}

/// An upgrade hook, boxed (see [`WsServer::on_upgrade`]).
type UpgradeHook = Arc<dyn Fn(&UpgradeInfo) -> Decision + Send + Sync>;

/// See [`Shared::handshaking`].
#[derive(Default)]
struct Handshaking {
    /// A clone of each handshaking connection's socket, by a number of
    /// its own.
    streams: Vec<(u64, TcpStream)>,
    next: u64,
    /// Set by a shutdown that stopped waiting: handshakes end at once.
    aborted: bool,
}

/// A connection in its handshake; dropping it takes it off the list.
struct InHandshake<'a> {
    shared: &'a Shared,
    id: Option<u64>,
}

impl<'a> InHandshake<'a> {
    /// Lists `stream` as handshaking (or ends it at once, when a shutdown
    /// already aborted handshakes).
    fn enter(shared: &'a Shared, stream: &TcpStream) -> Self {
        let mut list = lock(&shared.handshaking);
        if list.aborted {
            let _ = stream.shutdown(Shutdown::Both);
            return Self { shared, id: None };
        }
        // Without a clone (out of descriptors) the handshake timeout still
        // bounds it.
        let Ok(clone) = stream.try_clone() else {
            return Self { shared, id: None };
        };
        let id = list.next;
        list.next += 1;
        list.streams.push((id, clone));
        Self {
            shared,
            id: Some(id),
        }
    }
}

impl Drop for InHandshake<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.shared.handshaking)
                .streams
                .retain(|(other, _)| *other != id);
        }
    }
}

/// A connection thread, counted in [`Shared::running`] from before it is
/// spawned until it drops this, the last thing it owns: so `serve` can
/// wait for its connection threads without keeping a `JoinHandle` of each.
/// (glibc keeps the stack of a thread that ended, 16 KiB of it resident,
/// until the thread is joined or detached: handles kept until the next
/// accept kept every closed connection's stack for as long as no new
/// connection came.)
struct Running(ServerHandle);

impl Running {
    fn enter(handle: &ServerHandle) -> Self {
        *lock(&handle.shared.running) += 1;
        Self(handle.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let shared = &self.0.shared;
        *lock(&shared.running) -= 1;
        shared.running_changed.notify_all();
    }
}

/// Controls a running server from any thread: its sessions, groups,
/// broadcast, and shutdown. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

/// Sessions, groups and broadcast: everything but `local_addr` and
/// `shutdown` comes from the core's [`Registry`].
impl std::ops::Deref for ServerHandle {
    type Target = Registry;
    fn deref(&self) -> &Registry {
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
    upgrade: Option<UpgradeHook>,
}

impl fmt::Debug for WsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsServer")
            .field("listener", &self.listener)
            .field("handle", &self.handle)
            .field("upgrade_hook", &self.upgrade.is_some())
            .finish()
    }
}

/// A plain TCP server with a framer (length-prefixed by default).
#[derive(Debug)]
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

            /// Accepts connections on the calling thread and runs `handler`
            /// for each (two threads per connection) until
            /// [`ServerHandle::shutdown`]; returns when every connection
            /// thread has ended.
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
            pub fn serve<H: Handler>(self, handler: H) -> io::Result<()> {
                let (listener, handle) = self.start();
                serve(listener, handle, handler)
            }

            /// [`serve`](Self::serve) on a new thread.
            ///
            /// # Errors
            ///
            /// The thread could not be spawned.
            pub fn spawn<H: Handler>(self, handler: H) -> io::Result<JoinHandle<io::Result<()>>> {
                thread::Builder::new()
                    .name("storm-accept".to_owned())
                    .spawn(move || self.serve(handler))
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
    /// An invalid address or option (a TLS certificate or key that does
    /// not parse or fit: [`InvalidInput`](io::ErrorKind::InvalidInput),
    /// naming the field), or a failed bind.
    pub fn bind(options: ServerOptions, ws: WsOptions) -> io::Result<Self> {
        // Before the socket: a bad certificate must not leave a port taken.
        let setup = ServerSetup::ws(&options, ws)?;
        let (listener, handle) = bind(options, setup)?;
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
    /// [`Session::attached`](crate::Session::attached)) or reject
    /// (a status, headers and a body, then the connection is closed). Route
    /// by path by attaching the route. Without a hook every valid request
    /// from an allowed origin
    /// ([`WsOptions::allowed_origins`](storm_host::options::WsOptions::allowed_origins),
    /// checked before the hook) is accepted.
    ///
    /// The hook runs on the connection's thread after the request has
    /// been read and before anything else is committed to the connection
    /// (no session, no link; only its place under `max_connections`). It
    /// blocks that thread, so keep it short; it counts against the
    /// server's `handshake_timeout`: when it returns after the deadline,
    /// its decision is discarded, the connection is closed without a
    /// response and the handler's `on_error` hears
    /// [`TimedOut`](io::ErrorKind::TimedOut). A rejection reaches
    /// `on_error` as [`PermissionDenied`](io::ErrorKind::PermissionDenied),
    /// a decision with a mistake (a header with CR or LF, an unoffered
    /// subprotocol) as [`InvalidInput`](io::ErrorKind::InvalidInput) after
    /// a `500`. A panic in the hook ends that connection's thread, as a
    /// panic in the handler does.
    #[must_use]
    pub fn on_upgrade(
        mut self,
        hook: impl Fn(&UpgradeInfo) -> Decision + Send + Sync + 'static,
    ) -> Self {
        self.upgrade = Some(Arc::new(hook));
        self
    }

    fn start(self) -> (TcpListener, ServerHandle) {
        if let Some(hook) = self.upgrade {
            // `serve` takes the server by value: this runs once.
            let _ = self.handle.shared.upgrade.set(hook);
        }
        (self.listener, self.handle)
    }
}

impl TcpServer {
    /// Binds a TCP server that frames messages with `framing`.
    ///
    /// # Errors
    ///
    /// As for [`WsServer::bind`].
    pub fn bind(options: ServerOptions, framing: Framing) -> io::Result<Self> {
        let setup = ServerSetup::tcp(&options, framing)?;
        let (listener, handle) = bind(options, setup)?;
        Ok(Self { listener, handle })
    }

    fn start(self) -> (TcpListener, ServerHandle) {
        (self.listener, self.handle)
    }
}

fn bind(options: ServerOptions, setup: ServerSetup) -> io::Result<(TcpListener, ServerHandle)> {
    crate::check_tls(setup.tls().is_some())?;
    let addr = options.addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
    })?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if let Some(size) = options.recv_buffer_size {
        socket.set_recv_buffer_size(size as usize)?;
    }
    if let Some(size) = options.send_buffer_size {
        socket.set_send_buffer_size(size as usize)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    let listener: TcpListener = socket.into();
    let hub = server_hub(&options, Instant::now())?;
    let shared = Shared {
        registry: Registry::new(hub),
        local_addr: listener.local_addr()?,
        options,
        setup,
        stop: AtomicBool::new(false),
        serving: Mutex::new(Serving::NotStarted),
        serving_changed: Condvar::new(),
        handshaking: Mutex::default(),
        running: Mutex::new(0),
        running_changed: Condvar::new(),
        upgrade: OnceLock::new(),
    };
    Ok((
        listener,
        ServerHandle {
            shared: Arc::new(shared),
        },
    ))
}

fn serve<H: Handler>(listener: TcpListener, handle: ServerHandle, handler: H) -> io::Result<()> {
    let handler = Arc::new(handler);
    let shared = &handle.shared;
    handle.set_serving(Serving::Running);
    let mut errors = AcceptErrors::default();
    while !shared.stop.load(Ordering::Acquire) {
        let (stream, remote) = match listener.accept() {
            Ok(pair) => pair,
            // One connection's failure: the next at once. Out of
            // descriptors: a pause, while the connection threads run on
            // and free them (storm-proto's `AcceptErrors`).
            Err(e) => {
                let step = errors.failed(e, Instant::now());
                if let Some(report) = step.report {
                    handler.on_error(&report);
                }
                if let Some(wait) = step.wait {
                    thread::sleep(wait);
                }
                continue;
            }
        };
        if shared.stop.load(Ordering::Acquire) {
            // Most likely the shutdown's own wake-up connection.
            break;
        }
        // Over the limit: closed at accept, before any handshake.
        let Some(admitted) = Admitted::new(shared.registry.hub(), remote) else {
            drop(stream);
            continue;
        };
        let connection = {
            let running = Running::enter(&handle);
            let handler = Arc::clone(&handler);
            move || {
                // Declared first, so dropped last, after the handler's
                // `Arc`, even when the handler panics.
                let running = running;
                let handler = handler;
                let remote = admitted.remote();
                #[cfg(feature = "tracing")]
                let _span = storm_host::setup::connection_span(
                    remote,
                    running.0.shared.setup.protocol_name(),
                )
                .entered();
                if let Err(e) = running.0.run_connection(stream, admitted, &*handler) {
                    handler.on_error(&handshake_failed(running.0.hub(), remote, e));
                }
            }
        };
        // Detached: the thread's stack goes as soon as it ends.
        if let Err(e) = thread::Builder::new()
            .name("storm-conn".to_owned())
            .spawn(connection)
        {
            // The connection (its permit, its count) went with the closure.
            handler.on_error(&e);
        }
    }
    drop(listener);
    // Until every connection thread is done with the handler.
    let running = shared
        .running_changed
        .wait_while(lock(&shared.running), |running| *running > 0);
    drop(running.unwrap_or_else(PoisonError::into_inner));
    handle.set_serving(Serving::Done);
    Ok(())
}

impl ServerHandle {
    fn set_serving(&self, serving: Serving) {
        *lock(&self.shared.serving) = serving;
        self.shared.serving_changed.notify_all();
    }

    fn run_connection<H: Handler>(
        &self,
        stream: TcpStream,
        admitted: Admitted,
        handler: &H,
    ) -> io::Result<()> {
        let shared = &self.shared;
        let options = &shared.options;
        stream.set_nodelay(options.nodelay)?;
        if options.keepalive {
            socket2::SockRef::from(&stream).set_keepalive(true)?;
        }
        // One time budget for the whole handshake: TLS, then the upgrade.
        let deadline = Instant::now() + options.handshake_timeout;
        let what = shared.setup.handshake_name();
        let handshaking = InHandshake::enter(shared, &stream);
        match shared.setup.tls() {
            None => self.run_plain(stream, handshaking, deadline, what, admitted, handler),
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(crate::no_tls()),
            #[cfg(feature = "tls")]
            Some(config) => {
                let config = Arc::clone(config.rustls());
                self.run_tls(
                    stream,
                    config,
                    handshaking,
                    deadline,
                    what,
                    admitted,
                    handler,
                )
            }
        }
    }

    /// A plain connection's upgrade, then its session.
    ///
    /// Never inlined, as [`run_tls`](Self::run_tls): inlined, the TLS
    /// branch's locals (the rustls connection) would sit in the connection
    /// thread's first frame, above every plain session's frames too, and
    /// cost a stack page per idle connection (BENCHMARKS.md, "Session 9:
    /// std idle memory").
    #[inline(never)]
    fn run_plain<H: Handler>(
        &self,
        stream: TcpStream,
        handshaking: InHandshake<'_>,
        deadline: Instant,
        what: &'static str,
        admitted: Admitted,
        handler: &H,
    ) -> io::Result<()> {
        let mut io = Deadlined::new(&stream, deadline, what);
        let mut opened = self.open(&mut io, admitted.remote(), None, deadline, what)?;
        drop(handshaking);
        let initial = std::mem::take(&mut opened.leftover);
        self.run_session(stream, opened, initial, admitted, handler)
    }

    /// A TLS connection's handshake and upgrade, then its session.
    #[cfg(feature = "tls")]
    #[inline(never)]
    #[expect(
        clippy::too_many_arguments,
        reason = "run_connection's state, handed down once"
    )]
    fn run_tls<H: Handler>(
        &self,
        stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
        handshaking: InHandshake<'_>,
        deadline: Instant,
        what: &'static str,
        admitted: Admitted,
        handler: &H,
    ) -> io::Result<()> {
        let mut io = Deadlined::new(&stream, deadline, what);
        let mut conn = rustls::ServerConnection::new(config)
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        crate::tls::handshake(&mut conn, &mut io)
            .map_err(storm_host::setup::tls_handshake_failed)?;
        let tls = TlsInfo::of(&conn);
        let remote = admitted.remote();
        let mut opened = self.open(
            &mut rustls::Stream::new(&mut conn, &mut io),
            remote,
            Some(tls),
            deadline,
            what,
        )?;
        let leftover = std::mem::take(&mut opened.leftover);
        let initial = crate::tls::initial_input(&mut conn, leftover)?;
        drop(handshaking);
        let stream = TlsStream::new(stream, conn);
        self.run_session(stream, opened, initial, admitted, handler)
    }

    /// The protocol a new connection speaks, after the WebSocket upgrade
    /// (decided by the upgrade hook, if any, by `deadline`) when the server
    /// is a WebSocket server; and any bytes the peer sent after its
    /// upgrade request.
    fn open<S: Read + Write>(
        &self,
        stream: &mut S,
        remote: SocketAddr,
        tls: Option<TlsInfo>,
        deadline: Instant,
        what: &str,
    ) -> io::Result<Opened> {
        let mut upgrade = match self.shared.setup.open()? {
            ServerOpen::Ready(protocol) => return Ok(Opened::new(protocol)),
            ServerOpen::Upgrade(upgrade) => upgrade,
        };
        let mut buf = vec![0u8; 4096];
        let Answer {
            response, opened, ..
        } = loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match upgrade.handle_input(buf.get(..n).unwrap_or_default()) {
                ServerUpgradeStep::NeedMore(next) => upgrade = next,
                ServerUpgradeStep::Done(answer) => break answer,
                ServerUpgradeStep::Request(request) => match self.shared.upgrade.get() {
                    None => break request.accept(),
                    Some(hook) => {
                        let decision = hook(&request.info(remote, tls));
                        // A decision that came too late is not sent.
                        crate::deadline::remaining(deadline, what)?;
                        break request.decide(decision);
                    }
                },
            }
        };
        // A TLS stream may hold the response until flushed.
        let written = stream.write_all(&response).and_then(|()| stream.flush());
        // A refusal is sent on a best-effort basis.
        let opened = opened?;
        written?;
        Ok(opened)
    }

    /// Registers the session and drives it until it closes.
    ///
    /// Never inlined: its frame holds the reader's 16 KiB read buffer
    /// (`driver::read_loop`), and inlined into the connection thread's
    /// first frame it would sit above the handshake, which would then run
    /// below it and leave one more stack page resident for the
    /// connection's whole life (4 KiB per idle connection; BENCHMARKS.md,
    /// "Session 9: std idle memory"). Apart, the handshake runs first on a
    /// shallow stack and returns; the session's frames reuse those pages.
    #[inline(never)]
    fn run_session<T: Transport, H: Handler>(
        &self,
        stream: T,
        opened: Opened,
        initial: Bytes,
        admitted: Admitted,
        handler: &H,
    ) -> io::Result<()> {
        // Closed at once if registered after the shutdown's `close_all`.
        let stopping = || self.shared.stop.load(Ordering::Acquire);
        let (setup, registry) = (&self.shared.setup, &self.shared.registry);
        let now = Instant::now();
        let (session, link) = setup.admit(registry, admitted, opened, now, stopping)?;
        let id = session.id();
        drive(
            stream,
            &session,
            link,
            handler,
            initial,
            self.shared.options.write_batch,
            self.shared.options.link.close_timeout,
        );
        registry.remove(id);
        Ok(())
    }

    /// The server's address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Stops accepting, closes every session gracefully, aborts the ones
    /// still open after `timeout`, and returns once every connection thread
    /// has ended (and [`serve`](WsServer::serve) has returned). A
    /// connection still in its handshake after `timeout` is shut down then
    /// (the handler's `on_error` hears its handshake end early, as
    /// [`io::ErrorKind::UnexpectedEof`]). Returns at once if `serve` never
    /// started.
    pub fn shutdown(&self, timeout: Duration) {
        let shared = &self.shared;
        shared.stop.store(true, Ordering::Release);
        // `accept` blocks: one connection of our own wakes it up to see
        // the flag. It fails harmlessly if the listener is gone.
        let _ = TcpStream::connect_timeout(&wake_addr(shared.local_addr), Duration::from_secs(1));
        shared.registry.hub().close_all(CloseKind::Graceful);
        let deadline = Instant::now() + timeout;
        let mut serving = lock(&shared.serving);
        while *serving == Serving::Running {
            let now = Instant::now();
            if now >= deadline {
                shared.abort_handshakes();
                shared.registry.hub().close_all(CloseKind::Abort);
                while *serving == Serving::Running {
                    serving = shared
                        .serving_changed
                        .wait(serving)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                break;
            }
            serving = shared
                .serving_changed
                .wait_timeout(serving, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Shared {
    /// Ends every handshake in progress, and those still to start.
    fn abort_handshakes(&self) {
        let streams = {
            let mut list = lock(&self.handshaking);
            list.aborted = true;
            std::mem::take(&mut list.streams)
        };
        for (_, stream) in streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Where to connect to reach a listener bound to `local`: the loopback
/// address of its family when it listens on every address.
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}
