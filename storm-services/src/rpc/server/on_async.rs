//! [`RpcServer`] on tokio or smol: one generic path over storm-async, a
//! task per request.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::host::{connection_closed, connection_error};
use bytes::Bytes;
use storm_async::{Handler, Runtime, ServerHandle, Session};
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::rpc::Fault;

use super::{Call, Ended, Request, RpcServerConfig, RpcServerStats, Service, Step};
use crate::host::on_async::{Server, Shutdown};

/// A running RPC server on an async runtime: tokio by default
/// ([`RpcServer::bind`]), or smol (`RpcServer::<storm_smol::Smol>::bind_on`).
/// Every request runs in its own task, so one slow handler never holds up
/// the connection; a cancel from the client (an explicit one, a dropped
/// call, a timeout) drops that task's handler, and so do the request's
/// deadline and the end of the connection. A handler that panics is
/// answered with [`Fault::INTERNAL`].
///
/// For blocking handlers on plain threads, see
/// [`blocking::RpcServer`](crate::rpc::blocking::RpcServer).
pub struct RpcServer<R: Runtime = storm_tokio::Tokio> {
    local_addr: SocketAddr,
    endpoint: String,
    handle: ServerHandle<R>,
    service: Arc<Service>,
}

impl<R: Runtime> fmt::Debug for RpcServer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("endpoint", &self.endpoint)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RpcServer {
    /// Binds on tokio and starts serving with `handler`, which maps each
    /// request to its result bytes (use a [`Codec`](crate::rpc::Codec) to
    /// build them) or a [`Fault`]. Call from inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// An invalid option or a failed bind.
    pub async fn bind<H, F>(config: RpcServerConfig, handler: H) -> io::Result<Self>
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Bytes, Fault>> + Send + 'static,
    {
        Self::bind_on(config, handler).await
    }
}

impl<R: Runtime> RpcServer<R> {
    /// Binds on the runtime `R` (`storm_tokio::Tokio` or
    /// `storm_smol::Smol`) and starts serving with `handler`, as
    /// [`bind`](RpcServer::bind) does on tokio. The handler's futures run
    /// on `R`, so they must not need another runtime's timers.
    ///
    /// # Errors
    ///
    /// An invalid option or a failed bind.
    pub async fn bind_on<H, F>(config: RpcServerConfig, handler: H) -> io::Result<Self>
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Bytes, Fault>> + Send + 'static,
    {
        let service = Arc::new(Service::new(&config)?);
        let rpc = AsyncRpc::<R, H> {
            service: Arc::clone(&service),
            handler: Arc::new(handler),
            runtime: std::marker::PhantomData,
        };
        let server = Server::<R>::bind(config.options.clone(), config.listen()).await?;
        let (local_addr, handle) = (server.local_addr(), server.handle());
        R::spawn(serve(server.serve(rpc)));
        Ok(Self {
            local_addr,
            endpoint: config.endpoint(local_addr),
            handle,
            service,
        })
    }

    /// Where it listens.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint string a client uses: `ws://addr/` or `tcp://addr`
    /// (`wss://addr/` or `tls://addr` with TLS).
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> RpcServerStats {
        self.service.stats()
    }

    /// The server's hub: its sessions and traffic totals
    /// ([`Hub::metrics`](storm_host::hub::Hub::metrics)).
    #[must_use]
    pub fn hub(&self) -> &storm_host::hub::Hub {
        self.handle.hub()
    }

    /// Stops accepting, closes every connection (calls in flight on them
    /// fail fast on the client), aborting those still open after
    /// `timeout`, and waits until the server has stopped.
    pub async fn shutdown(self, timeout: Duration) {
        self.handle.shutdown(timeout).await;
    }
}

impl<R: Runtime> Shutdown for RpcServer<R> {
    fn sessions(&self) -> usize {
        self.handle.session_count()
    }

    async fn shutdown(&self, timeout: Duration) {
        self.handle.shutdown(timeout).await;
    }
}

/// The accept loop, its error logged.
async fn serve(serving: impl Future<Output = io::Result<()>>) {
    if let Err(error) = serving.await {
        tracing::warn!(%error, "rpc server stopped accepting");
    }
}

struct AsyncRpc<R, H> {
    service: Arc<Service>,
    handler: Arc<H>,
    runtime: std::marker::PhantomData<fn() -> R>,
}

impl<R, H, F> Handler for AsyncRpc<R, H>
where
    R: Runtime,
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Bytes, Fault>> + Send + 'static,
{
    async fn on_connect(&self, session: &Session) {
        if !self.service.connect(session) {
            session.abort();
        }
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let (refusals, step) = self.service.message(session, message.into_bytes());
        for frame in refusals {
            let _ = session.send(Message::Binary(frame)).await;
        }
        match step {
            Step::Nothing => {}
            Step::Abort => session.abort(),
            Step::Run(request, call) => {
                let handler = Arc::clone(&self.handler);
                let service = Arc::clone(&self.service);
                let session = session.clone();
                R::spawn(async move {
                    let ended = run::<R, _>(&call, || handler(request)).await;
                    if let Some(frame) = service.end(&call, ended) {
                        let _ = session.send(Message::Binary(frame)).await;
                    }
                });
            }
        }
    }

    async fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        connection_closed(session.remote_addr(), reason);
        self.service.disconnect(session);
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}

/// Runs the handler future `start()` until it ends, panics, the call's
/// deadline passes or the call is cancelled; in the last three cases the
/// future is dropped.
async fn run<R: Runtime, F>(call: &Call, start: impl FnOnce() -> F) -> Ended
where
    F: Future<Output = Result<Bytes, Fault>>,
{
    let Some(future) = super::unless_panic(start) else {
        return Ended::Panicked;
    };
    let mut future = pin!(future);
    let mut cancelled = pin!(call.cancelled());
    let mut deadline = pin!(async {
        match call.deadline() {
            Some(at) => R::sleep_until(at).await,
            None => std::future::pending().await,
        }
    });
    poll_fn(|cx| {
        match super::unless_panic(|| future.as_mut().poll(cx)) {
            None => return Poll::Ready(Ended::Panicked),
            Some(Poll::Ready(result)) => return Poll::Ready(Ended::Done(result)),
            Some(Poll::Pending) => {}
        }
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ended::Cancelled);
        }
        deadline.as_mut().poll(cx).map(|()| Ended::Deadline)
    })
    .await
}
