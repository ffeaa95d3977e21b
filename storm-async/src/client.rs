//! TCP and WebSocket clients, with reconnects.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use storm_host::link::LinkDriver;
use storm_host::options::{ClientOptions, WsOptions};
pub use storm_host::session::ClientError;
use storm_host::setup::{
    ClientCore, ClientOpen, ClientTarget, ClientUpgradeStep, Opened, UpgradeResponse,
};
use storm_proto::Message;
use storm_proto::framing::Framing;

use crate::driver::drive;
use crate::io::{Either, read_step, write_all_flush};
use crate::runtime::{PollRead, PollWrite, Runtime, Stream};
use crate::sync::{self, Signal, lock, race, sleep_until, timeout};
use crate::{Handler, Session};

/// A connected client, on any runtime. Dropping it does not close the
/// connection; call [`close`](Self::close).
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    current: Mutex<Option<Session>>,
    /// Where [`Client::recv`] takes messages from, for a client made by
    /// `connect_recv`; `None` when a handler takes them.
    inbox: Option<Arc<Inbox>>,
    /// Set when the application closed the client: no more reconnects, and
    /// a reconnect delay or attempt in progress ends at once.
    closing: Signal,
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
        let target = ClientTarget::ws(url, &options, ws)?;
        start::<R, H>(target, options, handler, None).await
    }

    /// Connects like [`connect`](Self::connect), with no handler: the
    /// messages wait for [`Client::recv`] in a queue of at most
    /// `capacity` messages (at least 1). See [`Client::recv`] for what a
    /// full queue does.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_recv(
        url: &str,
        options: ClientOptions,
        ws: WsOptions,
        capacity: usize,
    ) -> Result<Client, ClientError> {
        let target = ClientTarget::ws(url, &options, ws)?;
        start_recv::<R>(target, options, capacity).await
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
        let target = ClientTarget::tcp(addr, &options, framing)?;
        start::<R, H>(target, options, handler, None).await
    }

    /// Connects like [`connect`](Self::connect), with no handler: the
    /// messages wait for [`Client::recv`] in a queue of at most
    /// `capacity` messages (at least 1).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_recv(
        addr: &str,
        options: ClientOptions,
        framing: Framing,
        capacity: usize,
    ) -> Result<Client, ClientError> {
        let target = ClientTarget::tcp(addr, &options, framing)?;
        start_recv::<R>(target, options, capacity).await
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

    /// Sends on the current connection (waiting under the `Wait` policy).
    ///
    /// Cancel safety and panics as [`Session::send`]: a dropped future
    /// drops its message unsent, never half queued; nothing here panics
    /// but the session's middleware (application code it runs).
    ///
    /// # Errors
    ///
    /// [`ClientError::NotConnected`] between reconnects; [`ClientError::Send`].
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), ClientError> {
        let session = self.session().ok_or(ClientError::NotConnected)?;
        session.send(message).await.map_err(ClientError::Send)
    }

    /// Closes gracefully and stops reconnecting: a pending reconnect delay
    /// is cut short, and a reconnect in progress (TCP connect, TLS or
    /// WebSocket handshake) is abandoned and its socket closed, unseen by
    /// the handler. A connection made just as `close` is called opens and
    /// closes at once (`on_connect`, then `on_disconnect`).
    pub fn close(&self) {
        self.shared.closing.set();
        if let Some(inbox) = &self.shared.inbox {
            inbox.close();
        }
        if let Some(session) = self.session() {
            session.close();
        }
    }

    /// The next message, in order, for a client made by `connect_recv`
    /// ([`WsClient::connect_recv`], [`TcpClient::connect_recv`]), across
    /// reconnects.
    ///
    /// The queue is bounded: while it is full, the connection waits
    /// (it reads nothing more from the socket, so TCP flow control holds
    /// the server back): backpressure, never a dropped message. After
    /// [`close`](Self::close), a message that arrives while the queue is
    /// full is not delivered (the application said it is done); the ones
    /// queued before still are.
    ///
    /// Cancel-safe: a message leaves the queue only in the poll that
    /// returns it. Never panics (also when called again after it
    /// returned `NotConnected`).
    ///
    /// # Errors
    ///
    /// [`ClientError::NotConnected`] once the client has stopped for good
    /// (closed, or out of reconnect attempts) and the queue is empty;
    /// [`ClientError::Config`] for a client made with a handler (its
    /// messages go to the handler).
    pub async fn recv(&self) -> Result<Message, ClientError> {
        let inbox = self.shared.inbox.as_ref().ok_or_else(|| {
            ClientError::Config(
                "this client's messages go to its handler; connect_recv makes a client to recv from"
                    .to_owned(),
            )
        })?;
        let next = pin!(poll_fn(|cx| inbox.poll_pop(cx)));
        match race(next, pin!(self.shared.finished.wait())).await {
            sync::Either::Left(message) => Ok(message),
            sync::Either::Right(()) => inbox.try_pop().ok_or(ClientError::NotConnected),
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
    link: Box<LinkDriver>,
    initial: Bytes,
}

/// A client's stream: plain TCP or TLS.
type ClientStream<R> = Either<<R as Runtime>::Tcp, <R as Runtime>::TlsClient>;

/// A `connect_recv` client: its handler fills an inbox.
async fn start_recv<R: Runtime>(
    target: ClientTarget,
    options: ClientOptions,
    capacity: usize,
) -> Result<Client, ClientError> {
    let inbox = Arc::new(Inbox::new(capacity));
    let handler = Fill(Arc::clone(&inbox));
    start::<R, _>(target, options, handler, Some(inbox)).await
}

async fn start<R: Runtime, H: Handler>(
    target: ClientTarget,
    options: ClientOptions,
    handler: H,
    inbox: Option<Arc<Inbox>>,
) -> Result<Client, ClientError> {
    crate::runtime::check_tls::<R>(target.tls().is_some())
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let core = ClientCore::new(&options, rand::random(), Instant::now())?;
    let first = connect_once::<R>(&target, &options, &core).await?;
    let shared = Arc::new(ClientShared {
        current: Mutex::new(Some(first.session.clone())),
        inbox,
        closing: Signal::default(),
        finished: Signal::default(),
    });
    let client = Client {
        shared: Arc::clone(&shared),
    };
    R::spawn(run::<R, H>(target, options, handler, core, shared, first));
    Ok(client)
}

async fn run<R: Runtime, H: Handler>(
    target: ClientTarget,
    options: ClientOptions,
    handler: H,
    mut core: ClientCore,
    shared: Arc<ClientShared>,
    first: Connected<ClientStream<R>>,
) {
    let mut next = Some(first);
    while let Some(connected) = next.take() {
        core.connected(Instant::now());
        let session = connected.session;
        if shared.closing.is_set() {
            // Closed just as the connection was made (`close` found no
            // session to close): it opens and closes at once.
            session.close();
        }
        let id = session.id();
        drive::<R, _, _, _>(
            connected.stream.split(),
            session,
            connected.link,
            &handler,
            connected.initial,
            options.write_batch,
            options.link.close_timeout,
        )
        .await;
        *lock(&shared.current) = None;
        core.ended(id);
        // Reconnect unless the application closed, or reconnects are off.
        while !shared.closing.is_set() {
            let Some((attempt, delay)) = core.next_attempt(Instant::now()) else {
                break;
            };
            handler.on_reconnecting(attempt, delay).await;
            // The delay, then the attempt, each raced with `close` (which
            // wins a tie): a close ends either at once, and an abandoned
            // attempt's socket is closed as its future is dropped.
            let delay = pin!(sleep_until::<R>(Instant::now().checked_add(delay)));
            if let sync::Either::Left(()) = race(pin!(shared.closing.wait()), delay).await {
                break;
            }
            let attempt = pin!(connect_once::<R>(&target, &options, &core));
            match race(pin!(shared.closing.wait()), attempt).await {
                sync::Either::Left(()) => break,
                sync::Either::Right(Ok(connected)) => {
                    *lock(&shared.current) = Some(connected.session.clone());
                    next = Some(connected);
                    break;
                }
                sync::Either::Right(Err(e)) => handler.on_error(&e).await,
            }
        }
    }
    shared.finished.set();
}

/// Connects to the first address of `authority` that answers.
pub(crate) async fn connect_tcp<R: Runtime>(authority: &str) -> io::Result<(R::Tcp, SocketAddr)> {
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
    target: &ClientTarget,
    options: &ClientOptions,
    core: &ClientCore,
) -> Result<Connected<ClientStream<R>>, ClientError> {
    let attempt = async {
        let (tcp, remote) = connect_tcp::<R>(&target.authority()).await?;
        R::socket(&tcp).set_tcp_nodelay(options.nodelay)?;
        let mut stream: ClientStream<R> = match target.tls() {
            None => Either::A(tcp),
            Some(tls) => Either::B(
                R::tls_connect(tls.clone(), tcp)
                    .await
                    .map_err(ClientError::Tls)?,
            ),
        };
        let mut opened = open(&mut stream, target, options).await?;
        let initial = std::mem::take(&mut opened.leftover);
        let (session, link) = core.session(opened, remote, Instant::now())?;
        Ok(Connected {
            stream,
            session,
            link,
            initial,
        })
    };
    timeout::<R, _>(options.connect_timeout, pin!(attempt))
        .await
        .ok_or(ClientError::Timeout)?
}

/// The protocol a new connection speaks, after the WebSocket upgrade for a
/// WebSocket client; and any bytes the server sent after its response.
pub(crate) async fn open<S: PollRead + PollWrite>(
    stream: &mut S,
    target: &ClientTarget,
    options: &ClientOptions,
) -> Result<Opened, ClientError> {
    let (request, mut upgrade) = match target.open(options, &mut rand::rng())? {
        ClientOpen::Ready(protocol) => return Ok(Opened::new(protocol)),
        ClientOpen::Upgrade { request, upgrade } => (request, upgrade),
    };
    write_all_flush(stream, &request).await?;
    loop {
        let step = read_step(stream, upgrade, |upgrade, input| {
            upgrade.handle_input(input)
        });
        let step = step.await?;
        match step.ok_or(ClientError::Io(io::ErrorKind::UnexpectedEof.into()))?? {
            ClientUpgradeStep::NeedMore(next) => upgrade = next,
            ClientUpgradeStep::Done(opened) => return Ok(opened),
        }
    }
}

/// The messages of a `connect_recv` client, waiting for [`Client::recv`]:
/// at most `capacity`.
struct Inbox {
    state: Mutex<InboxState>,
}

struct InboxState {
    queue: VecDeque<Message>,
    capacity: usize,
    /// The application closed the client: a push that waits gives up.
    closed: bool,
    /// The connection's handler, waiting for room.
    sender: Option<Waker>,
    /// Every `recv` waiting for a message.
    receivers: Vec<Waker>,
}

impl Inbox {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                capacity: capacity.max(1),
                closed: false,
                sender: None,
                receivers: Vec::new(),
            }),
        }
    }

    /// Queues `message` once there is room (or drops it once the client
    /// was closed: see [`Client::recv`]).
    async fn push(&self, message: Message) {
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut state = lock(&self.state);
            if state.closed && state.queue.len() >= state.capacity {
                return Poll::Ready(());
            }
            if state.queue.len() >= state.capacity {
                state.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            state.queue.extend(message.take());
            for waker in state.receivers.drain(..) {
                waker.wake();
            }
            Poll::Ready(())
        })
        .await;
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Message> {
        let mut state = lock(&self.state);
        match state.queue.pop_front() {
            Some(message) => {
                if let Some(sender) = state.sender.take() {
                    sender.wake();
                }
                Poll::Ready(message)
            }
            None => {
                if !state.receivers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.receivers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn try_pop(&self) -> Option<Message> {
        lock(&self.state).queue.pop_front()
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        if let Some(sender) = state.sender.take() {
            sender.wake();
        }
    }
}

/// The handler of a `connect_recv` client.
struct Fill(Arc<Inbox>);

impl Handler for Fill {
    async fn on_message(&self, _: &Session, message: Message) {
        self.0.push(message).await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn pop(inbox: &Inbox) -> Poll<Message> {
        inbox.poll_pop(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_full_inbox_holds_the_sender_until_a_message_is_taken() {
        let inbox = Inbox::new(0); // at least 1
        assert!(poll_once(pin!(inbox.push(Message::from("a")))).is_ready());
        let mut second = pin!(inbox.push(Message::from("b")));
        assert!(
            poll_once(second.as_mut()).is_pending(),
            "full: the sender waits"
        );
        assert_eq!(pop(&inbox), Poll::Ready(Message::from("a")));
        assert!(poll_once(second.as_mut()).is_ready());
        assert_eq!(pop(&inbox), Poll::Ready(Message::from("b")));
        assert!(pop(&inbox).is_pending());
    }

    #[test]
    fn closing_releases_a_waiting_sender_and_keeps_what_was_queued() {
        let inbox = Inbox::new(1);
        assert!(poll_once(pin!(inbox.push(Message::from("kept")))).is_ready());
        let mut late = pin!(inbox.push(Message::from("late")));
        assert!(poll_once(late.as_mut()).is_pending());
        inbox.close();
        assert!(
            poll_once(late.as_mut()).is_ready(),
            "close never hangs on a full inbox"
        );
        assert_eq!(inbox.try_pop(), Some(Message::from("kept")));
        assert_eq!(inbox.try_pop(), None);
    }
}
