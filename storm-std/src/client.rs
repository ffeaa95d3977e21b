//! TCP and WebSocket clients, with reconnects.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use storm_host::link::LinkDriver;
use storm_host::options::{ClientOptions, WsOptions};
pub use storm_host::session::ClientError;
use storm_host::setup::{
    ClientCore, ClientOpen, ClientTarget, ClientUpgradeStep, Opened, UpgradeResponse,
};
use storm_proto::Message;
use storm_proto::framing::Framing;

use crate::deadline::{Deadlined, remaining};
use crate::driver::{drive, lock};
#[cfg(feature = "tls")]
use crate::tls::TlsStream;
use crate::{Handler, Session};

/// A connected client. Dropping it does not close the connection; call
/// [`close`](Self::close).
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    current: Mutex<Option<Session>>,
    flags: Mutex<Flags>,
    changed: Condvar,
}

#[derive(Default)]
struct Flags {
    /// The application closed the client: no more reconnects.
    closing: bool,
    /// The client stopped for good (closed, or gave up).
    finished: bool,
    /// The socket of a reconnect in progress: `close` shuts it down, which
    /// ends the handshake's blocking read or write at once.
    attempt: Option<TcpStream>,
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
    /// Connects to a `ws://` or `wss://` URL, blocking until the upgrade is
    /// done (or the connect timeout passes), and runs `handler` for the
    /// connection on its own threads (and, with `options.reconnect`, for
    /// every reconnection).
    ///
    /// `wss://` uses `options.tls`, or the default TLS options (the web
    /// roots) when it is `None`; the certificate must name the URL's host
    /// unless `server_name` says otherwise.
    ///
    /// # Errors
    ///
    /// When the first connection cannot be made ([`ClientError::Tls`] when
    /// TLS fails); [`ClientError::Config`] for invalid TLS options, or TLS
    /// options with a `ws://` URL.
    pub fn connect<H: Handler>(
        url: &str,
        options: ClientOptions,
        ws: WsOptions,
        handler: H,
    ) -> Result<Client, ClientError> {
        let target = ClientTarget::ws(url, &options, ws)?;
        start(target, options, handler)
    }
}

impl TcpClient {
    /// Connects to `addr` (`host:port`), blocking until connected (or the
    /// connect timeout passes), and frames messages with `framing`; over
    /// TLS when `options.tls` is set, the certificate naming `host` unless
    /// `server_name` says otherwise.
    ///
    /// # Errors
    ///
    /// When the first connection cannot be made; [`ClientError::Config`]
    /// for invalid options.
    pub fn connect<H: Handler>(
        addr: &str,
        options: ClientOptions,
        framing: Framing,
        handler: H,
    ) -> Result<Client, ClientError> {
        let target = ClientTarget::tcp(addr, &options, framing)?;
        start(target, options, handler)
    }
}

impl Client {
    /// The current connection's session (`None` between reconnects).
    #[must_use]
    pub fn session(&self) -> Option<Session> {
        lock(&self.shared.current).clone()
    }

    /// What the server answered the current connection's WebSocket
    /// upgrade with: the subprotocol it chose and every response header.
    /// `None` between reconnects and for a TCP client. (The same as
    /// `session.attached::<UpgradeResponse>()`.)
    #[must_use]
    pub fn upgrade_response(&self) -> Option<UpgradeResponse> {
        self.session()?.attached::<UpgradeResponse>().cloned()
    }

    /// Whether a connection is up.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.session().is_some()
    }

    /// Sends on the current connection (blocking under the `Wait` policy).
    ///
    /// # Errors
    ///
    /// [`ClientError::NotConnected`] between reconnects; [`ClientError::Send`].
    pub fn send(&self, message: impl Into<Message>) -> Result<(), ClientError> {
        let session = self.session().ok_or(ClientError::NotConnected)?;
        session.send_blocking(message).map_err(ClientError::Send)
    }

    /// Closes gracefully and stops reconnecting: a pending reconnect delay
    /// is cut short, and a reconnect's TLS or WebSocket handshake in
    /// progress is abandoned and its socket closed, unseen by the handler
    /// (a TCP connect in progress runs to its end, within the connect
    /// timeout, and is then abandoned). A connection made just as `close`
    /// is called opens and closes at once (`on_connect`, then
    /// `on_disconnect`).
    pub fn close(&self) {
        let attempt = {
            let mut flags = lock(&self.shared.flags);
            flags.closing = true;
            flags.attempt.take()
        };
        self.shared.changed.notify_all();
        if let Some(socket) = attempt {
            let _ = socket.shutdown(Shutdown::Both);
        }
        if let Some(session) = self.session() {
            session.close();
        }
    }

    /// Blocks until the client has stopped for good: closed, or out of
    /// reconnect attempts.
    pub fn closed(&self) {
        let mut flags = lock(&self.shared.flags);
        while !flags.finished {
            flags = self
                .shared
                .changed
                .wait(flags)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// [`closed`](Self::closed), for at most `timeout`; `true` if the
    /// client stopped.
    #[must_use]
    pub fn closed_timeout(&self, timeout: Duration) -> bool {
        let flags = lock(&self.shared.flags);
        let (flags, _) = self
            .shared
            .changed
            .wait_timeout_while(flags, timeout, |flags| !flags.finished)
            .unwrap_or_else(PoisonError::into_inner);
        flags.finished
    }
}

impl ClientShared {
    /// Lets [`Client::close`] cut a reconnect's handshake on `socket` short.
    ///
    /// # Errors
    ///
    /// When the client is closing already: the attempt is abandoned.
    fn watch(&self, socket: &TcpStream) -> io::Result<()> {
        let mut flags = lock(&self.flags);
        if flags.closing {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client was closed",
            ));
        }
        flags.attempt = Some(socket.try_clone()?);
        Ok(())
    }
}

/// One established connection, ready for the driver.
struct Connected {
    stream: Stream,
    session: Session,
    link: Box<LinkDriver>,
    initial: Bytes,
}

/// A connection's byte stream: chosen once per connection, so the driver
/// runs monomorphic for each.
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

fn start<H: Handler>(
    target: ClientTarget,
    options: ClientOptions,
    handler: H,
) -> Result<Client, ClientError> {
    crate::check_tls(target.tls().is_some()).map_err(|e| ClientError::Config(e.to_string()))?;
    let mut core = ClientCore::new(&options, rand::random(), Instant::now())?;
    let first = connect_once(&target, &options, &core, |_| Ok(()))?;
    let shared = Arc::new(ClientShared {
        current: Mutex::new(Some(first.session.clone())),
        flags: Mutex::new(Flags::default()),
        changed: Condvar::new(),
    });
    let client = Client {
        shared: Arc::clone(&shared),
    };
    thread::Builder::new()
        .name("storm-client".to_owned())
        .spawn(move || run(&target, &options, &handler, &mut core, &shared, first))
        .map_err(ClientError::Io)?;
    Ok(client)
}

/// The client's thread: drives each connection, reconnecting between them.
fn run<H: Handler>(
    target: &ClientTarget,
    options: &ClientOptions,
    handler: &H,
    core: &mut ClientCore,
    shared: &ClientShared,
    first: Connected,
) {
    let mut next = Some(first);
    while let Some(connected) = next.take() {
        core.connected(Instant::now());
        let session = connected.session;
        if lock(&shared.flags).closing {
            // Closed while the connection was being made.
            session.close();
        }
        let (batch, close_timeout) = (options.write_batch, options.link.close_timeout);
        match connected.stream {
            Stream::Plain(stream) => drive(
                stream,
                &session,
                connected.link,
                handler,
                connected.initial,
                batch,
                close_timeout,
            ),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => drive(
                *stream,
                &session,
                connected.link,
                handler,
                connected.initial,
                batch,
                close_timeout,
            ),
        }
        *lock(&shared.current) = None;
        core.ended(session.id());
        // Reconnect unless the application closed, or reconnects are off.
        while let Some((attempt, delay)) = core.next_attempt(Instant::now()) {
            if lock(&shared.flags).closing {
                break;
            }
            handler.on_reconnecting(attempt, delay);
            // Sleep the delay, unless the application closes meanwhile.
            let flags = lock(&shared.flags);
            let (flags, _) = shared
                .changed
                .wait_timeout_while(flags, delay, |flags| !flags.closing)
                .unwrap_or_else(PoisonError::into_inner);
            if flags.closing {
                break;
            }
            drop(flags);
            let made = connect_once(target, options, core, |socket| shared.watch(socket));
            let closing = {
                let mut flags = lock(&shared.flags);
                flags.attempt = None;
                flags.closing
            };
            match made {
                Ok(connected) => {
                    *lock(&shared.current) = Some(connected.session.clone());
                    next = Some(connected);
                    break;
                }
                // Abandoned by `close`: not the application's error.
                Err(_) if closing => break,
                Err(e) => handler.on_error(&e),
            }
        }
    }
    lock(&shared.flags).finished = true;
    shared.changed.notify_all();
}

/// Connects and runs the handshakes; `watch` sees the TCP socket before
/// they start (a reconnect hands it to [`Client::close`] through
/// [`ClientShared::watch`]).
fn connect_once(
    target: &ClientTarget,
    options: &ClientOptions,
    core: &ClientCore,
    watch: impl FnOnce(&TcpStream) -> io::Result<()>,
) -> Result<Connected, ClientError> {
    let deadline = Instant::now() + options.connect_timeout;
    let authority = target.authority();
    // Name resolution blocks without a timeout of its own.
    let mut stream = None;
    let mut last = ClientError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        "address resolves to nothing",
    ));
    for addr in authority.as_str().to_socket_addrs()? {
        let left = remaining(deadline, "connect").map_err(|_| ClientError::Timeout)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(e) => last = e.into(),
        }
    }
    let stream = stream.ok_or(last)?;
    watch(&stream)?;
    stream.set_nodelay(options.nodelay)?;
    let remote = stream.peer_addr()?;
    let (stream, opened, initial) = match target.tls() {
        None => {
            let mut io = Deadlined::new(&stream, deadline, target.handshake_name());
            let mut opened = open(target, options, &mut io)?;
            let initial = std::mem::take(&mut opened.leftover);
            (Stream::Plain(stream), opened, initial)
        }
        #[cfg(not(feature = "tls"))]
        Some(_) => return Err(ClientError::Tls(crate::no_tls())),
        #[cfg(feature = "tls")]
        Some(tls) => {
            let mut io = Deadlined::new(&stream, deadline, target.handshake_name());
            let mut conn = rustls::ClientConnection::new(
                Arc::clone(tls.config().rustls()),
                tls.name().clone(),
            )
            .map_err(|e| ClientError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            crate::tls::handshake(&mut conn, &mut io).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => ClientError::Timeout,
                _ => ClientError::Tls(e),
            })?;
            let mut opened = open(
                target,
                options,
                &mut rustls::Stream::new(&mut conn, &mut io),
            )?;
            let leftover = std::mem::take(&mut opened.leftover);
            let initial = crate::tls::initial_input(&mut conn, leftover)?;
            (
                Stream::Tls(Box::new(TlsStream::new(stream, conn))),
                opened,
                initial,
            )
        }
    };
    let (session, link) = core.session(opened, remote, Instant::now())?;
    Ok(Connected {
        stream,
        session,
        link,
        initial,
    })
}

/// The protocol a new connection speaks, after the WebSocket upgrade for a
/// WebSocket client; and any bytes the server sent after its response.
/// `stream` bounds the time.
fn open<S: Read + Write>(
    target: &ClientTarget,
    options: &ClientOptions,
    stream: &mut S,
) -> Result<Opened, ClientError> {
    let (request, mut upgrade) = match target.open(options, &mut rand::rng())? {
        ClientOpen::Ready(protocol) => return Ok(Opened::new(protocol)),
        ClientOpen::Upgrade { request, upgrade } => (request, upgrade),
    };
    stream.write_all(&request)?;
    // A TLS stream may hold the request until flushed.
    stream.flush()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        match upgrade.handle_input(buf.get(..n).unwrap_or_default())? {
            ClientUpgradeStep::NeedMore(next) => upgrade = next,
            ClientUpgradeStep::Done(opened) => return Ok(opened),
        }
    }
}
