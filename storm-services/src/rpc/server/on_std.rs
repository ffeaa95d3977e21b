//! [`RpcServer`] on plain threads (storm-std): the same protocol and the
//! same decisions as the async [`rpc::RpcServer`](super::RpcServer), with
//! a blocking handler run on a thread per request.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::{connection_closed, connection_error};
use bytes::Bytes;
use storm_host::link::CloseReason;
use storm_proto::Message;
use storm_proto::rpc::Fault;
use storm_std::{Handler, ServerHandle, Session};

use super::{Ended, Request, RpcServerConfig, RpcServerStats, Service, Step, unless_panic};
use crate::host::on_std::{Server, Shutdown};

/// A running RPC server on blocking threads: two per connection (storm-std)
/// and one per request, so one slow handler never holds up the connection
/// (the number per connection is bounded by
/// [`RpcServerConfig::max_in_flight`]). A thread cannot be stopped from
/// outside: when the client cancels the call, its deadline passes or the
/// connection ends, the handler's answer is dropped, and a handler that
/// takes long should notice it with [`Request::is_cancelled`] or
/// [`Request::wait_cancelled`]. An answer after the deadline becomes
/// [`Fault::TIMEOUT`]; a handler that panics is answered with
/// [`Fault::INTERNAL`].
pub struct RpcServer {
    local_addr: SocketAddr,
    endpoint: String,
    handle: ServerHandle,
    service: Arc<Service>,
    accepting: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("endpoint", &self.endpoint)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RpcServer {
    /// Binds and starts serving with `handler` on a thread of its own;
    /// `handler` maps each request to its result bytes or a [`Fault`].
    ///
    /// # Errors
    ///
    /// An invalid option, a failed bind, or no thread to accept on.
    pub fn bind<H>(config: RpcServerConfig, handler: H) -> io::Result<Self>
    where
        H: Fn(Request) -> Result<Bytes, Fault> + Send + Sync + 'static,
    {
        let service = Arc::new(Service::new(&config)?);
        let rpc = StdRpc {
            service: Arc::clone(&service),
            handler: Arc::new(handler),
        };
        let server = Server::bind(config.options.clone(), config.listen())?;
        let (local_addr, handle) = (server.local_addr(), server.handle());
        let accepting = server.spawn(rpc)?;
        Ok(Self {
            local_addr,
            endpoint: config.endpoint(local_addr),
            handle,
            service,
            accepting: Some(accepting),
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
    ///
    /// # Errors
    ///
    /// The accept thread's error, or a panic of it.
    pub fn shutdown(mut self, timeout: Duration) -> io::Result<()> {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> io::Result<()> {
        self.handle.shutdown(timeout);
        match self.accepting.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("the accept thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Shutdown for RpcServer {
    fn sessions(&self) -> usize {
        self.handle.session_count()
    }

    /// Stops the server; its accept thread is joined by
    /// [`RpcServer::shutdown`] or on drop.
    fn shutdown(&self, timeout: Duration) {
        self.handle.shutdown(timeout);
    }
}

impl Drop for RpcServer {
    /// Stops the server (gracefully, for at most a second) if
    /// [`shutdown`](RpcServer::shutdown) was not called.
    fn drop(&mut self) {
        if self.accepting.is_some() {
            let _ = self.stop(Duration::from_secs(1));
        }
    }
}

struct StdRpc<H> {
    service: Arc<Service>,
    handler: Arc<H>,
}

impl<H> Handler for StdRpc<H>
where
    H: Fn(Request) -> Result<Bytes, Fault> + Send + Sync + 'static,
{
    fn on_connect(&self, session: &Session) {
        if !self.service.connect(session) {
            session.abort();
        }
    }

    fn on_message(&self, session: &Session, message: Message) {
        let (refusals, step) = self.service.message(session, message.into_bytes());
        for frame in refusals {
            let _ = session.send_blocking(Message::Binary(frame));
        }
        match step {
            Step::Nothing => {}
            Step::Abort => session.abort(),
            Step::Run(request, call) => {
                let call = Arc::new(call);
                let handler = Arc::clone(&self.handler);
                let service = Arc::clone(&self.service);
                let thread_call = Arc::clone(&call);
                let thread_session = session.clone();
                let spawned = std::thread::Builder::new()
                    .name("storm-rpc-call".into())
                    .spawn(move || {
                        let returned = unless_panic(|| handler(request));
                        let ended = thread_call.ended_at(Instant::now(), returned);
                        if let Some(frame) = service.end(&thread_call, ended) {
                            let _ = thread_session.send_blocking(Message::Binary(frame));
                        }
                    });
                if spawned.is_err() {
                    let fault = Fault::new(Fault::OVERLOADED, "no thread for the request");
                    if let Some(frame) = self.service.end(&call, Ended::Done(Err(fault))) {
                        let _ = session.send_blocking(Message::Binary(frame));
                    }
                }
            }
        }
    }

    fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        connection_closed(session.remote_addr(), reason);
        self.service.disconnect(session);
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        connection_error(error);
    }
}
