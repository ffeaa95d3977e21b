//! The broker server on plain threads (storm-std): the same shared broker
//! state as the async server, a reader thread per connection (storm-std's),
//! a writer thread per connection and one timer thread, all waiting on
//! condition variables of the one state lock.
//!
//! ```
//! use std::time::Duration;
//!
//! use storm_services::broker::BrokerOptions;
//! use storm_services::broker::blocking::BrokerServer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = BrokerServer::bind(BrokerOptions::default())?; // 127.0.0.1, a free port
//! let handle = server.handle();
//! let serving = server.spawn()?;
//! // … consumers and providers connect to handle.local_addr() …
//! handle.shutdown(Duration::from_secs(1));
//! serving.join().expect("the broker thread")?;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host::{connection_closed, connection_error};
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::broker::{ConnId, Frame, RouterStats};
use storm_std::{Handler, ServerHandle, Session, TcpServer};

use super::{BrokerOptions, Shared, Signals, Step, TimerStep};
use crate::broker::BrokerError;

/// How the blocking path wakes things: condition variables paired with
/// the state lock, so a check and a wait never miss a wake-up.
struct StdSignals {
    timer: Condvar,
    drained: Condvar,
}

impl Signals for StdSignals {
    type Writer = Arc<Condvar>;

    fn wake_writer(writer: &Arc<Condvar>) {
        writer.notify_one();
    }

    fn rearm_timer(&self) {
        self.timer.notify_one();
    }

    fn drained(&self) {
        self.drained.notify_all();
    }
}

/// A running blocking broker's controls: counters and shutdown. Cheap to
/// clone.
#[derive(Clone)]
pub struct BrokerHandle {
    server: ServerHandle,
    shared: Arc<Shared<StdSignals>>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("local_addr", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl BrokerHandle {
    /// The address the broker listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The router's counters.
    #[must_use]
    pub fn stats(&self) -> RouterStats {
        self.shared.stats()
    }

    /// Requests in flight.
    #[must_use]
    pub fn open_requests(&self) -> usize {
        self.shared.open_requests()
    }

    /// Streams held back by flow control right now.
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
    pub fn shutdown(&self, timeout: Duration) {
        self.server.shutdown(timeout);
    }
}

impl crate::host::on_std::Shutdown for BrokerHandle {
    fn sessions(&self) -> usize {
        self.connections()
    }

    fn shutdown(&self, timeout: Duration) {
        BrokerHandle::shutdown(self, timeout);
    }
}

/// The broker server on blocking threads.
pub struct BrokerServer {
    server: TcpServer,
    shared: Arc<Shared<StdSignals>>,
}

impl std::fmt::Debug for BrokerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerServer")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl BrokerServer {
    /// Checks the options and binds.
    ///
    /// # Errors
    ///
    /// As for the async [`BrokerServer::bind`](crate::broker::BrokerServer::bind).
    pub fn bind(options: BrokerOptions) -> Result<Self, BrokerError> {
        let signals = StdSignals {
            timer: Condvar::new(),
            drained: Condvar::new(),
        };
        let (shared, server_options, framing) = Shared::new(options, signals)?;
        let server = TcpServer::bind(server_options, framing).map_err(BrokerError::Io)?;
        Ok(Self {
            server,
            shared: Arc::new(shared),
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Counters and shutdown.
    #[must_use]
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            server: self.server.handle(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves on this thread until [`BrokerHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// Only a failing listener, or a timer thread that cannot start.
    pub fn serve(self) -> Result<(), BrokerError> {
        let timer = {
            let shared = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name("storm-broker-timer".to_owned())
                .spawn(move || run_timer(&shared))
                .map_err(BrokerError::Io)?
        };
        let handler = BrokerSessions {
            shared: Arc::clone(&self.shared),
        };
        let result = self.server.serve(handler).map_err(BrokerError::Io);
        self.shared.lock().stopped = true;
        self.shared.signals.rearm_timer();
        let _ = timer.join();
        result
    }

    /// Serves on a thread of its own; join it after
    /// [`BrokerHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// The thread cannot start.
    pub fn spawn(self) -> Result<JoinHandle<Result<(), BrokerError>>, BrokerError> {
        std::thread::Builder::new()
            .name("storm-broker".to_owned())
            .spawn(move || self.serve())
            .map_err(BrokerError::Io)
    }
}

/// Runs the router's timer until the server stops.
fn run_timer(shared: &Shared<StdSignals>) {
    let mut state = shared.lock();
    loop {
        let now = Instant::now();
        state = match state.timer_step(now) {
            TimerStep::Stop => return,
            TimerStep::Fire => {
                drop(state);
                let _ = shared.handle_timeout();
                shared.lock()
            }
            TimerStep::SleepUntil(at) => {
                shared
                    .signals
                    .timer
                    .wait_timeout(state, at - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            TimerStep::Idle => shared
                .signals
                .timer
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// Waits until `frame` from `conn` may go to the router (see
/// [`RoomWait`](super::RoomWait)); the connection reads nothing more
/// meanwhile.
fn wait_for_room(shared: &Shared<StdSignals>, conn: ConnId, frame: &Frame) {
    let mut wait = shared.room_wait(conn, frame);
    let mut state = shared.lock();
    while let Some(deadline) = wait.poll_wait(&state, Instant::now()) {
        let left = deadline.saturating_duration_since(Instant::now());
        state = shared
            .signals
            .drained
            .wait_timeout(state, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

struct BrokerSessions {
    shared: Arc<Shared<StdSignals>>,
}

fn conn_of(session: &Session) -> ConnId {
    ConnId(session.id().get())
}

impl Handler for BrokerSessions {
    fn on_connect(&self, session: &Session) {
        let conn = conn_of(session);
        let wake = Arc::new(Condvar::new());
        if !self.shared.connect(conn, Arc::clone(&wake)) {
            session.abort();
            return;
        }
        let shared = Arc::clone(&self.shared);
        let session_ = session.clone();
        let started = std::thread::Builder::new()
            .name("storm-broker-writer".to_owned())
            .spawn(move || write_frames(&shared, conn, &session_, &wake));
        if started.is_err() {
            session.abort();
        }
    }

    fn on_message(&self, session: &Session, message: Message) {
        let conn = conn_of(session);
        if let Some(frame) = self.shared.receive(conn, message) {
            wait_for_room(&self.shared, conn, &frame);
            self.shared.deliver(conn, frame);
        }
    }

    fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        connection_closed(session.remote_addr(), reason);
        self.shared.disconnect(conn_of(session));
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// Moves a connection's router queue to its socket, blocking while the
/// session is backpressured.
fn write_frames(shared: &Shared<StdSignals>, conn: ConnId, session: &Session, wake: &Condvar) {
    let mut state = shared.lock();
    loop {
        match state.step(&shared.framer, conn) {
            Step::Send(message) => {
                drop(state);
                shared.signals.drained();
                if session.send_blocking(message).is_err() {
                    return;
                }
                state = shared.lock();
            }
            Step::Idle => {
                state = wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            Step::Close => {
                drop(state);
                session.close();
                return;
            }
            Step::Stop => return,
        }
    }
}
