//! The gateway on tokio and smol: one generic path over storm-async's
//! [`Runtime`]. The handlers feed [`Core`] and carry out what its
//! switchboard decides.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::connection_error;
use smol::future::or;
use storm_async::{Handler, Runtime, ServerHandle, Session, TcpClient, WsClient, WsServer};
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::route::gateway::BackendId;

use super::{BackendStatus, Core, Dial, GatewayConfig, GatewayOptions, LoopGuard, Protocol};

/// A bound gateway on the async runtime `R` (tokio by default, or
/// [`storm_smol::Smol`]); [`serve`](Self::serve) runs it. For threads
/// without a runtime, see [`blocking::Gateway`](super::blocking::Gateway).
#[derive(Debug)]
pub struct Gateway<R: Runtime = storm_tokio::Tokio> {
    server: WsServer<R>,
    handle: GatewayHandle<R>,
}

/// Controls a running gateway: backend status, shutdown. Cheap to clone.
pub struct GatewayHandle<R: Runtime = storm_tokio::Tokio> {
    server: ServerHandle<R>,
    core: Arc<Core>,
}

impl<R: Runtime> Clone for GatewayHandle<R> {
    fn clone(&self) -> Self {
        Self {
            server: self.server.clone(),
            core: Arc::clone(&self.core),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for GatewayHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Gateway<R> {
    /// Binds the WebSocket endpoint (`wss://` with
    /// [`GatewayOptions::tls`]) and starts connecting every backend, in
    /// tasks of `R`.
    ///
    /// # Errors
    ///
    /// A failed bind, or invalid options ([`io::ErrorKind::InvalidInput`]).
    pub async fn bind(config: GatewayConfig, options: GatewayOptions) -> io::Result<Self> {
        let server_options = options.server_options();
        let ws = options.ws_options();
        let core = Arc::new(Core::new(config, options)?);
        let server = WsServer::<R>::bind(server_options, ws).await?;
        for (dial, guard) in core.dials() {
            R::spawn(keep_connected::<R>(Arc::clone(&core), dial, guard));
        }
        let handle = GatewayHandle {
            server: server.handle(),
            core,
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
    pub fn handle(&self) -> GatewayHandle<R> {
        self.handle.clone()
    }

    /// Serves clients until [`GatewayHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// Only a failing listener.
    pub async fn serve(self) -> io::Result<()> {
        let handler = ClientHandler::<R> {
            core: Arc::clone(&self.handle.core),
            runtime: std::marker::PhantomData,
        };
        self.server.serve(handler).await
    }
}

impl<R: Runtime> GatewayHandle<R> {
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

    /// Waits until `route`'s backend is connected (`connected = true`) or
    /// down. Returns `false` at once for a route not in the file.
    pub async fn wait_backend(&self, route: &str, connected: bool) -> bool {
        let Some(watched) = self.core.connected(route) else {
            return false;
        };
        watched.wait_for(connected).await;
        true
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
    /// returns once [`Gateway::serve`] has returned and every backend task
    /// has ended.
    ///
    /// A backend waiting to reconnect stops waiting at once and makes no
    /// further attempt; an attempt in progress is abandoned; a live backend
    /// connection closes gracefully (within its close timeout, 5 s).
    pub async fn shutdown(&self, timeout: Duration) {
        self.core.stop();
        self.server.shutdown(timeout).await;
        self.core.loops.ended.wait_for(true).await;
    }
}

/// `future`'s output, or `None` once the gateway stops.
async fn unless_stopped<T>(core: &Core, future: impl Future<Output = T>) -> Option<T> {
    or(async { Some(future.await) }, async {
        core.stopped.wait_for(true).await;
        None
    })
    .await
}

/// Connects one backend, and again with backoff whenever its connection
/// drops or an attempt fails, until the gateway stops; `_running` counts
/// this task for shutdown until it ends.
async fn keep_connected<R: Runtime>(core: Arc<Core>, mut dial: Dial, _running: LoopGuard) {
    loop {
        let handler = BackendHandler {
            core: Arc::clone(&core),
            backend: dial.id,
        };
        let connect = async {
            match dial.endpoint.protocol {
                Protocol::Ws => {
                    let url = dial.endpoint.url();
                    WsClient::<R>::connect(&url, dial.options.clone(), dial.ws.clone(), handler)
                        .await
                }
                Protocol::Tcp => {
                    let addr = dial.endpoint.authority();
                    let framing = dial.framing.clone();
                    TcpClient::<R>::connect(&addr, dial.options.clone(), framing, handler).await
                }
            }
        };
        let Some(connected) = unless_stopped(&core, connect).await else {
            return;
        };
        if let Ok(client) = connected {
            let closer = client.clone();
            if !core.attach_client(&mut dial, Box::new(move || closer.close())) {
                // Connected as the gateway stopped.
                client.close();
                client.closed().await;
                return;
            }
            client.closed().await;
            core.detach_client(dial.id);
        }
        let Some(delay) = dial.retry_delay() else {
            return;
        };
        let sleep = R::sleep_until(Instant::now() + delay);
        if unless_stopped(&core, sleep).await.is_none() {
            return;
        }
    }
}

/// Events of one backend connection.
struct BackendHandler {
    core: Arc<Core>,
    backend: BackendId,
}

impl Handler for BackendHandler {
    async fn on_connect(&self, session: &Session) {
        self.core.backend_up(self.backend, session);
    }

    async fn on_message(&self, _: &Session, message: Message) {
        self.core.backend_message(self.backend, message);
    }

    async fn on_disconnect(&self, _: &Session, _: &CloseReason) {
        self.core.backend_down(self.backend);
    }
}

/// Events of the gateway's client connections.
struct ClientHandler<R> {
    core: Arc<Core>,
    runtime: std::marker::PhantomData<fn() -> R>,
}

impl<R: Runtime> Handler for ClientHandler<R> {
    async fn on_connect(&self, session: &Session) {
        if let Some(deadline) = self.core.client_connected(session) {
            let core = Arc::clone(&self.core);
            R::spawn(async move {
                R::sleep_until(deadline).await;
                core.timeout(Instant::now());
            });
        }
    }

    /// Carries out what the message decided, in order, waiting while the
    /// client or the backend is backpressured.
    async fn on_message(&self, session: &Session, message: Message) {
        let mut sends = self.core.client_message(session.id().get(), message);
        while let Some((to, message)) = sends.poll_send() {
            if to.send(message).await.is_err() {
                sends.handle_send_failed();
            }
        }
    }

    async fn on_disconnect(&self, session: &Session, _: &CloseReason) {
        self.core.client_disconnected(session.id().get());
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}
