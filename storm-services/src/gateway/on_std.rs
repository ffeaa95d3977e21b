//! The gateway on plain threads (storm-std), without an async runtime: the
//! same state and decisions as [`super::Gateway`] on tokio and smol, driven
//! by storm-std's blocking servers and clients.
//!
//! ```
//! use std::time::Duration;
//! use storm_services::gateway::blocking::Gateway;
//! use storm_services::gateway::{GatewayConfig, GatewayOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GatewayConfig::parse("[orders]\nname = orders\nport = 1\nprotocol = tcp\n")?;
//! let gateway = Gateway::bind(config, GatewayOptions::default())?;
//! let handle = gateway.handle();
//! let serving = gateway.spawn()?;
//! // Nothing listens on port 1: the backend is down and being reconnected.
//! assert!(!handle.backends()[0].connected);
//! handle.shutdown(Duration::from_secs(1));
//! serving.join().expect("accept thread")?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::host::connection_error;
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::route::gateway::BackendId;
use storm_std::{Handler, ServerHandle, Session, TcpClient, WsClient, WsServer};

use super::{BackendStatus, Core, Dial, GatewayConfig, GatewayOptions, LoopGuard, Protocol, lock};

/// A bound gateway on threads; [`serve`](Self::serve) or
/// [`spawn`](Self::spawn) runs it.
#[derive(Debug)]
pub struct Gateway {
    server: WsServer,
    handle: GatewayHandle,
}

/// Controls a running gateway: backend status, shutdown. Cheap to clone.
#[derive(Clone)]
pub struct GatewayHandle {
    server: ServerHandle,
    core: Arc<Core>,
    timers: Arc<Timers>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Binds the WebSocket endpoint (`wss://` with
    /// [`GatewayOptions::tls`]) and starts connecting every backend, a
    /// thread per backend.
    ///
    /// # Errors
    ///
    /// A failed bind, invalid options ([`io::ErrorKind::InvalidInput`]),
    /// or a thread that could not be started.
    pub fn bind(config: GatewayConfig, options: GatewayOptions) -> io::Result<Self> {
        let server_options = options.server_options();
        let ws = options.ws_options();
        let core = Arc::new(Core::new(config, options)?);
        let server = WsServer::bind(server_options, ws)?;
        let timers = Arc::new(Timers::default());
        {
            let (core, timers) = (Arc::clone(&core), Arc::clone(&timers));
            thread::Builder::new()
                .name("storm-gateway-timers".to_owned())
                .spawn(move || timers.run(&core))?;
        }
        for (mut dial, guard) in core.dials() {
            let core = Arc::clone(&core);
            thread::Builder::new()
                .name(format!("storm-gateway-{}", dial.endpoint.name))
                .spawn(move || keep_connected(&core, &mut dial, guard))?;
        }
        let handle = GatewayHandle {
            server: server.handle(),
            core,
            timers,
        };
        Ok(Self { server, handle })
    }

    /// The address clients connect to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A handle for status and shutdown.
    #[must_use]
    pub fn handle(&self) -> GatewayHandle {
        self.handle.clone()
    }

    /// Serves clients on this thread (two more per client) until
    /// [`GatewayHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// Only a failing listener.
    pub fn serve(self) -> io::Result<()> {
        let handler = ClientHandler {
            core: Arc::clone(&self.handle.core),
            timers: Arc::clone(&self.handle.timers),
        };
        self.server.serve(handler)
    }

    /// [`serve`](Self::serve) on a new thread.
    ///
    /// # Errors
    ///
    /// The thread could not be spawned.
    pub fn spawn(self) -> io::Result<JoinHandle<io::Result<()>>> {
        thread::Builder::new()
            .name("storm-gateway".to_owned())
            .spawn(move || self.serve())
    }
}

impl GatewayHandle {
    /// The address clients connect to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The configuration the gateway runs with.
    #[must_use]
    pub fn config(&self) -> &GatewayConfig {
        &self.core.config
    }

    /// Every backend, in file order.
    #[must_use]
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.core.backends()
    }

    /// The hub of the client endpoint: the clients' connections, messages
    /// and bytes each way, drops and handshake failures
    /// ([`Hub::metrics`](storm_host::hub::Hub::metrics)). Backend
    /// connections are not in it (see [`backends`](Self::backends)).
    #[must_use]
    pub fn hub(&self) -> &storm_host::hub::Hub {
        self.server.hub()
    }

    /// Blocks until `route`'s backend is connected (`connected = true`) or
    /// down, for at most `timeout`; whether it is. `false` at once for a
    /// route not in the file.
    #[must_use]
    pub fn wait_backend(&self, route: &str, connected: bool, timeout: Duration) -> bool {
        self.core
            .connected(route)
            .is_some_and(|watched| watched.wait_timeout(connected, timeout))
    }

    /// Clients connected now (handshake done or not).
    #[must_use]
    pub fn client_count(&self) -> usize {
        self.core.client_count()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun: from then on no
    /// backend is reconnected, and a backend that goes down is one the
    /// shutdown closed.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.core.stopped.get()
    }

    /// Backend messages dropped: no valid `CLIENT=` header, or for a client
    /// that has gone.
    #[must_use]
    pub fn dropped_replies(&self) -> u64 {
        self.core.dropped_replies()
    }

    /// Stops reconnecting, closes every backend connection, closes every
    /// client gracefully (aborting those still open after `timeout`), and
    /// returns once [`Gateway::serve`] has returned and every backend
    /// thread has ended.
    ///
    /// A backend waiting to reconnect stops waiting at once and makes no
    /// further attempt; a live backend connection closes gracefully (within
    /// its close timeout, 5 s). A blocking connect in progress cannot be
    /// interrupted: it finishes (within
    /// [`GatewayOptions::connect_timeout`]) and is closed at once.
    pub fn shutdown(&self, timeout: Duration) {
        self.core.stop();
        self.timers.stop();
        self.server.shutdown(timeout);
        self.core.loops.ended.wait(true);
    }
}

/// Connects one backend, and again with backoff whenever its connection
/// drops or an attempt fails, until the gateway stops; `_running` counts
/// this thread for shutdown until it ends.
fn keep_connected(core: &Arc<Core>, dial: &mut Dial, _running: LoopGuard) {
    while !core.stopped.get() {
        let handler = BackendHandler {
            core: Arc::clone(core),
            backend: dial.id,
        };
        let connected = match dial.endpoint.protocol {
            Protocol::Ws => WsClient::connect(
                &dial.endpoint.url(),
                dial.options.clone(),
                dial.ws.clone(),
                handler,
            ),
            Protocol::Tcp => TcpClient::connect(
                &dial.endpoint.authority(),
                dial.options.clone(),
                dial.framing.clone(),
                handler,
            ),
        };
        if let Ok(client) = connected {
            let closer = client.clone();
            if !core.attach_client(dial, Box::new(move || closer.close())) {
                // Connected as the gateway stopped.
                client.close();
                client.closed();
                return;
            }
            client.closed();
            core.detach_client(dial.id);
        }
        let Some(delay) = dial.retry_delay() else {
            return;
        };
        if core.stopped.wait_timeout(true, delay) {
            return;
        }
    }
}

/// Handshake deadlines: one thread for every client, sleeping until the
/// switchboard's next deadline.
#[derive(Default)]
struct Timers {
    state: Mutex<TimerState>,
    changed: Condvar,
}

#[derive(Default)]
struct TimerState {
    /// A client connected since the thread last read the next deadline.
    woken: bool,
    stopped: bool,
}

impl Timers {
    /// A client connected: its deadline may be the next one.
    fn wake(&self) {
        lock(&self.state).woken = true;
        self.changed.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stopped = true;
        self.changed.notify_one();
    }

    /// Fails each handshake at its deadline, until [`stop`](Self::stop).
    fn run(&self, core: &Core) {
        loop {
            let next = core.timeout(Instant::now());
            let mut state = lock(&self.state);
            if state.stopped {
                return;
            }
            if std::mem::take(&mut state.woken) {
                continue;
            }
            // Woken, timed out or spurious: the loop reads the next
            // deadline again.
            match next {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    drop(self.changed.wait_timeout(state, wait));
                }
                None => drop(self.changed.wait(state)),
            }
        }
    }
}

/// Events of one backend connection.
struct BackendHandler {
    core: Arc<Core>,
    backend: BackendId,
}

impl Handler for BackendHandler {
    fn on_connect(&self, session: &Session) {
        self.core.backend_up(self.backend, session);
    }

    fn on_message(&self, _: &Session, message: Message) {
        self.core.backend_message(self.backend, message);
    }

    fn on_disconnect(&self, _: &Session, _: &CloseReason) {
        self.core.backend_down(self.backend);
    }
}

/// Events of the gateway's client connections.
struct ClientHandler {
    core: Arc<Core>,
    timers: Arc<Timers>,
}

impl Handler for ClientHandler {
    fn on_connect(&self, session: &Session) {
        if self.core.client_connected(session).is_some() {
            self.timers.wake();
        }
    }

    /// Carries out what the message decided, in order, blocking while the
    /// client or the backend is backpressured.
    fn on_message(&self, session: &Session, message: Message) {
        let mut sends = self.core.client_message(session.id().get(), message);
        while let Some((to, message)) = sends.poll_send() {
            if to.send_blocking(message).is_err() {
                sends.handle_send_failed();
            }
        }
    }

    fn on_disconnect(&self, session: &Session, _: &CloseReason) {
        self.core.client_disconnected(session.id().get());
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}
