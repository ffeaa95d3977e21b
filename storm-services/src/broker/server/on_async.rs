//! The broker server on tokio and smol: the shared broker state
//! ([`super`]) behind a [`storm_async::TcpServer`], one generic path
//! over [`storm_async::Runtime`].

use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::host::{connection_closed, connection_error};
use storm_async::{Handler, Runtime, ServerHandle, Session, TcpServer};
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::broker::{ConnId, Frame, RouterStats};
use tokio::sync::Notify;

use super::{BrokerOptions, Shared, Signals, Step, TimerStep};
use crate::broker::BrokerError;
use crate::host::on_async::until;

/// How the async path wakes things: [`Notify`] (`tokio::sync`, which runs
/// on any executor).
pub(super) struct AsyncSignals {
    timer: Notify,
    drained: Notify,
}

impl Signals for AsyncSignals {
    type Writer = Arc<Notify>;

    fn wake_writer(writer: &Arc<Notify>) {
        writer.notify_one();
    }

    fn rearm_timer(&self) {
        self.timer.notify_one();
    }

    fn drained(&self) {
        self.drained.notify_waiters();
    }
}

/// A running broker's controls: counters and shutdown. Cheap to clone.
pub struct BrokerHandle<R: Runtime = storm_tokio::Tokio> {
    server: ServerHandle<R>,
    shared: Arc<Shared<AsyncSignals>>,
}

impl<R: Runtime> Clone for BrokerHandle<R> {
    fn clone(&self) -> Self {
        Self {
            server: self.server.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for BrokerHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("local_addr", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> BrokerHandle<R> {
    /// The router's counters: every frame that did not reach its
    /// destination is counted in one of them.
    #[must_use]
    pub fn stats(&self) -> RouterStats {
        self.shared.stats()
    }

    /// Requests in flight.
    #[must_use]
    pub fn open_requests(&self) -> usize {
        self.shared.open_requests()
    }

    /// Streams held back by flow control right now: a frame of each waits
    /// for the connection it goes to to drain its queue.
    #[must_use]
    pub fn held_streams(&self) -> usize {
        self.shared.held_streams()
    }

    /// Connections open.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.server.session_count()
    }

    /// The server's hub: its sessions and traffic totals
    /// ([`Hub::metrics`](storm_host::hub::Hub::metrics)).
    #[must_use]
    pub fn hub(&self) -> &storm_host::hub::Hub {
        self.server.hub()
    }

    /// Stops accepting, closes every connection (aborting those still open
    /// after `timeout`) and returns when [`BrokerServer::serve`] has.
    pub async fn shutdown(&self, timeout: Duration) {
        self.server.shutdown(timeout).await;
    }
}

impl<R: Runtime> crate::host::on_async::Shutdown for BrokerHandle<R> {
    fn sessions(&self) -> usize {
        self.connections()
    }

    async fn shutdown(&self, timeout: Duration) {
        BrokerHandle::shutdown(self, timeout).await;
    }
}

/// The broker server on an async runtime: tokio (the default,
/// `BrokerServer` is `BrokerServer<storm_tokio::Tokio>`) or smol
/// (`BrokerServer<storm_smol::Smol>`). For plain threads see
/// [`blocking::BrokerServer`](crate::broker::blocking::BrokerServer).
pub struct BrokerServer<R: Runtime = storm_tokio::Tokio> {
    server: TcpServer<R>,
    shared: Arc<Shared<AsyncSignals>>,
    runtime: PhantomData<fn() -> R>,
}

impl<R: Runtime> std::fmt::Debug for BrokerServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerServer")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl BrokerServer {
    /// Checks the options and binds, on tokio. (On another runtime:
    /// [`BrokerServer::bind_on`].)
    ///
    /// # Errors
    ///
    /// [`BrokerError::Config`] for invalid router or frame limits,
    /// [`BrokerError::Io`] for a bad address, a failed bind or unreadable
    /// TLS material.
    pub async fn bind(options: BrokerOptions) -> Result<Self, BrokerError> {
        Self::bind_on(options).await
    }
}

impl<R: Runtime> BrokerServer<R> {
    /// Checks the options and binds, on the runtime `R`
    /// (`BrokerServer::<storm_smol::Smol>::bind_on(options)`).
    ///
    /// # Errors
    ///
    /// As for [`BrokerServer::bind`].
    pub async fn bind_on(options: BrokerOptions) -> Result<Self, BrokerError> {
        let signals = AsyncSignals {
            timer: Notify::new(),
            drained: Notify::new(),
        };
        let (shared, server_options, framing) = Shared::new(options, signals)?;
        let server = TcpServer::<R>::bind(server_options, framing)
            .await
            .map_err(BrokerError::Io)?;
        Ok(Self {
            server,
            shared: Arc::new(shared),
            runtime: PhantomData,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Counters and shutdown.
    #[must_use]
    pub fn handle(&self) -> BrokerHandle<R> {
        BrokerHandle {
            server: self.server.handle(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until [`BrokerHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// Only a failing listener.
    pub async fn serve(self) -> Result<(), BrokerError> {
        let handler = BrokerSessions::<R> {
            shared: Arc::clone(&self.shared),
            runtime: PhantomData,
        };
        let mut serving = pin!(self.server.serve(handler));
        let mut timer = pin!(run_timer::<R>(&self.shared));
        poll_fn(|cx| {
            if let Poll::Ready(result) = serving.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(BrokerError::Io));
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(never) => match never {},
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Runs the router's timer for ever (the async server never sets
/// `stopped`: the timer ends with [`BrokerServer::serve`]).
async fn run_timer<R: Runtime>(shared: &Shared<AsyncSignals>) -> std::convert::Infallible {
    loop {
        let mut rearm = pin!(shared.signals.timer.notified());
        rearm.as_mut().enable();
        let step = shared.lock().timer_step(Instant::now());
        match step {
            TimerStep::Fire => {
                let _ = shared.handle_timeout();
            }
            TimerStep::SleepUntil(at) => {
                let _ = until::<R, _>(at, rearm).await;
            }
            TimerStep::Idle | TimerStep::Stop => rearm.await,
        }
    }
}

/// Waits until `frame` from `conn` may go to the router (see
/// [`RoomWait`](super::RoomWait)).
async fn wait_for_room<R: Runtime>(shared: &Shared<AsyncSignals>, conn: ConnId, frame: &Frame) {
    let mut wait = shared.room_wait(conn, frame);
    loop {
        let mut drained = pin!(shared.signals.drained.notified());
        drained.as_mut().enable();
        let Some(deadline) = wait.poll_wait(&shared.lock(), Instant::now()) else {
            return;
        };
        let _ = until::<R, _>(deadline, drained).await;
    }
}

/// The server's handler: one per server, called by every session.
struct BrokerSessions<R> {
    shared: Arc<Shared<AsyncSignals>>,
    runtime: PhantomData<fn() -> R>,
}

fn conn_of(session: &Session) -> ConnId {
    ConnId(session.id().get())
}

impl<R: Runtime> Handler for BrokerSessions<R> {
    async fn on_connect(&self, session: &Session) {
        let conn = conn_of(session);
        let wake = Arc::new(Notify::new());
        if self.shared.connect(conn, Arc::clone(&wake)) {
            R::spawn(write_frames(
                Arc::clone(&self.shared),
                conn,
                session.clone(),
                wake,
            ));
        } else {
            session.abort();
        }
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let conn = conn_of(session);
        if let Some(frame) = self.shared.receive(conn, message) {
            wait_for_room::<R>(&self.shared, conn, &frame).await;
            self.shared.deliver(conn, frame);
        }
    }

    async fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        connection_closed(session.remote_addr(), reason);
        self.shared.disconnect(conn_of(session));
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// Moves a connection's router queue to its socket, as fast as the
/// session's backpressure lets it.
async fn write_frames(
    shared: Arc<Shared<AsyncSignals>>,
    conn: ConnId,
    session: Session,
    wake: Arc<Notify>,
) {
    loop {
        wake.notified().await;
        loop {
            match shared.step(conn) {
                Step::Send(message) => {
                    if session.send(message).await.is_err() {
                        return;
                    }
                }
                Step::Idle => break,
                Step::Close => {
                    session.close();
                    return;
                }
                Step::Stop => return,
            }
        }
    }
}
