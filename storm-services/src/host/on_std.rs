//! Hosting on blocking threads (storm-std), for every service.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use storm_host::options::ServerOptions;
use storm_std::{Handler, ServerHandle, TcpServer, WsServer};

use super::{Listen, Stop};

/// A storm-std server bound with a [`Listen`]: WebSocket or TCP.
#[derive(Debug)]
pub enum Server {
    /// A WebSocket server.
    Ws(WsServer),
    /// A TCP server with a framing.
    Tcp(TcpServer),
}

impl Server {
    /// Binds on `options.addr` (with `options.tls`, TLS only).
    ///
    /// # Errors
    ///
    /// A bad address, a failed bind, unusable TLS material.
    pub fn bind(options: ServerOptions, listen: Listen) -> io::Result<Self> {
        Ok(match listen {
            Listen::Ws(ws) => Self::Ws(WsServer::bind(options, ws)?),
            Listen::Tcp(framing) => Self::Tcp(TcpServer::bind(options, framing)?),
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Ws(server) => server.local_addr(),
            Self::Tcp(server) => server.local_addr(),
        }
    }

    /// Its sessions, groups and shutdown.
    #[must_use]
    pub fn handle(&self) -> ServerHandle {
        match self {
            Self::Ws(server) => server.handle(),
            Self::Tcp(server) => server.handle(),
        }
    }

    /// Serves every connection with `handler` on an accept thread of its
    /// own, until its shutdown.
    ///
    /// # Errors
    ///
    /// The thread cannot start.
    pub fn spawn<H: Handler>(self, handler: H) -> io::Result<JoinHandle<io::Result<()>>> {
        match self {
            Self::Ws(server) => server.spawn(handler),
            Self::Tcp(server) => server.spawn(handler),
        }
    }
}

/// A running server on std threads, as its host stops it.
pub trait Shutdown {
    /// Sessions (or connections) open, for the log line.
    fn sessions(&self) -> usize;

    /// Stops accepting, closes every session gracefully, aborts the ones
    /// still open after `timeout`, and returns once the server has
    /// stopped serving.
    fn shutdown(&self, timeout: Duration);
}

impl Shutdown for ServerHandle {
    fn sessions(&self) -> usize {
        self.session_count()
    }

    fn shutdown(&self, timeout: Duration) {
        ServerHandle::shutdown(self, timeout);
    }
}

/// Blocks until `stop` is raised, then shuts `server` down gracefully
/// within `timeout`; returns when it has stopped.
pub fn shut_down_on(stop: &Stop, timeout: Duration, server: &impl Shutdown) {
    stop.wait();
    tracing::info!(sessions = server.sessions(), "stop: closing sessions");
    server.shutdown(timeout);
}

/// Blocks until `stop`, shuts `server` down gracefully within `timeout`,
/// and joins its serving thread `serving`.
///
/// # Errors
///
/// The serving thread's error, or a panic of it.
pub fn serve_until<E: From<io::Error>>(
    stop: &Stop,
    timeout: Duration,
    server: &impl Shutdown,
    serving: JoinHandle<Result<(), E>>,
) -> Result<(), E> {
    shut_down_on(stop, timeout, server);
    serving
        .join()
        .map_err(|_| io::Error::other("the accept thread panicked"))?
}

/// Runs `tick` every `period` on a thread of its own, until the process
/// ends; a late tick delays the next ones instead of bunching them up.
pub fn every(period: Duration, mut tick: impl FnMut() + Send + 'static) {
    std::thread::spawn(move || {
        let mut next = Instant::now() + period;
        loop {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            tick();
            next = (next + period).max(Instant::now());
        }
    });
}
