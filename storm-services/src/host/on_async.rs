//! Hosting on tokio and smol: one generic path over storm-async's
//! [`Runtime`], for every service.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use storm_async::{Handler, Runtime, ServerHandle, TcpServer, WsServer};
use storm_host::options::ServerOptions;

use super::{AsyncRuntime, Listen, Stop};

/// A storm-async server bound with a [`Listen`]: WebSocket or TCP.
#[derive(Debug)]
pub enum Server<R: Runtime> {
    /// A WebSocket server.
    Ws(WsServer<R>),
    /// A TCP server with a framing.
    Tcp(TcpServer<R>),
}

impl<R: Runtime> Server<R> {
    /// Binds on `options.addr` (with `options.tls`, TLS only).
    ///
    /// # Errors
    ///
    /// A bad address, a failed bind, unusable TLS material.
    pub async fn bind(options: ServerOptions, listen: Listen) -> io::Result<Self> {
        Ok(match listen {
            Listen::Ws(ws) => Self::Ws(WsServer::bind(options, ws).await?),
            Listen::Tcp(framing) => Self::Tcp(TcpServer::bind(options, framing).await?),
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
    pub fn handle(&self) -> ServerHandle<R> {
        match self {
            Self::Ws(server) => server.handle(),
            Self::Tcp(server) => server.handle(),
        }
    }

    /// Serves every connection with `handler` until its shutdown; returns
    /// when every connection task has ended.
    ///
    /// # Errors
    ///
    /// None from accepting (see storm-async's `serve`).
    pub async fn serve<H: Handler>(self, handler: H) -> io::Result<()> {
        match self {
            Self::Ws(server) => server.serve(handler).await,
            Self::Tcp(server) => server.serve(handler).await,
        }
    }
}

/// A running server on tokio or smol, as its host stops it.
pub trait Shutdown: Send + Sync {
    /// Sessions (or connections) open, for the log line.
    fn sessions(&self) -> usize;

    /// Stops accepting, closes every session gracefully, aborts the ones
    /// still open after `timeout`, and resolves once the server has
    /// stopped.
    fn shutdown(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
}

impl<R: Runtime> Shutdown for ServerHandle<R> {
    fn sessions(&self) -> usize {
        self.session_count()
    }

    async fn shutdown(&self, timeout: Duration) {
        ServerHandle::shutdown(self, timeout).await;
    }
}

/// Once `stop` is raised, shuts `server` down gracefully within `timeout`;
/// resolves when it has stopped.
pub async fn shut_down_on(stop: &Stop, timeout: Duration, server: &impl Shutdown) {
    stop.raised().await;
    tracing::info!(sessions = server.sessions(), "stop: closing sessions");
    server.shutdown(timeout).await;
}

/// Runs a server on `R` from this thread until `stop`: `start` binds it
/// (and announces it, starts its side tasks) and returns it with the
/// future that serves it; once `stop` is raised the server is shut down
/// gracefully within `timeout`. Returns when the server has stopped, or
/// with the first error of `start` or of serving.
///
/// # Errors
///
/// `start`'s or serving's error, or (tokio) a runtime that cannot start.
pub fn serve_until<R, E, S, F, Serving>(
    stop: &Stop,
    timeout: Duration,
    start: impl FnOnce() -> F,
) -> Result<(), E>
where
    R: AsyncRuntime,
    E: From<io::Error>,
    S: Shutdown,
    F: Future<Output = Result<(S, Serving), E>>,
    Serving: Future<Output = Result<(), E>>,
{
    let mut result = Ok(());
    R::block_on(async {
        result = async {
            let (server, serving) = start().await?;
            let stopping = async {
                shut_down_on(stop, timeout, &server).await;
                Ok(())
            };
            smol::future::or(serving, stopping).await
        }
        .await;
        Ok(())
    })?;
    result
}

/// Runs `tick` every `period`, for ever (spawn it on `R`); a late tick
/// delays the next ones instead of bunching them up.
pub async fn every<R: Runtime>(period: Duration, mut tick: impl FnMut()) {
    let mut next = Instant::now() + period;
    loop {
        R::sleep_until(next).await;
        tick();
        next = (next + period).max(Instant::now());
    }
}

/// `future`'s output, or `None` when `deadline` passes first (the future
/// is then dropped).
pub async fn until<R: Runtime, F: Future>(deadline: Instant, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut sleep = pin!(R::sleep_until(deadline));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}
