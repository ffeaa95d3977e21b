//! [`RpcServer`]: answers [`RpcClient`](super::RpcClient) calls.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use storm_proto::Message;
use storm_proto::framing::LengthPrefixConfig;
use storm_proto::hub::SessionId;
use storm_proto::link::CloseReason;
use storm_proto::options::{Framing, ServerOptions, WsOptions};
use storm_proto::rpc::{CallsConfig, CompressionConfig, Fault, Incoming, Serving};
use storm_tokio::{Handler, ServerHandle, Session, TcpServer, WsServer};
use tokio::task::AbortHandle;

use super::codec::Codec;
use super::{ENVELOPE_SLACK, lock};

/// How an [`RpcServer`] listens and what it allows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcServerConfig {
    /// Address and socket options.
    pub options: ServerOptions,
    /// `Some`: WebSocket with these options; `None`: 4-byte length-prefixed
    /// TCP.
    pub ws: Option<WsOptions>,
    /// Most requests in flight per connection; more are refused with
    /// [`Fault::OVERLOADED`]. Default 1024.
    pub max_in_flight: usize,
    /// Largest request or response payload. Default 16 MiB.
    pub max_payload: usize,
    /// Compress responses at or above a size. Default `None`.
    pub compression: Option<CompressionConfig>,
}

impl RpcServerConfig {
    /// A WebSocket server on `addr`, other fields at their defaults.
    #[must_use]
    pub fn ws(addr: &str) -> Self {
        Self::new(addr, Some(WsOptions::default()))
    }

    /// A length-prefixed TCP server on `addr`.
    #[must_use]
    pub fn tcp(addr: &str) -> Self {
        Self::new(addr, None)
    }

    fn new(addr: &str, ws: Option<WsOptions>) -> Self {
        Self {
            options: ServerOptions {
                addr: addr.to_owned(),
                ..ServerOptions::default()
            },
            ws,
            max_in_flight: CallsConfig::DEFAULT_MAX_PENDING,
            max_payload: CallsConfig::DEFAULT_MAX_PAYLOAD,
            compression: None,
        }
    }
}

/// One call for the handler.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The method name.
    pub method: String,
    /// The raw parameters.
    pub payload: Bytes,
    /// How long the client waits; the handler is stopped when it passes.
    pub timeout: Option<Duration>,
    /// The client marked the call safe to run twice.
    pub idempotent: bool,
    /// Who called.
    pub remote: SocketAddr,
}

impl Request {
    /// The parameters, deserialized with `codec`.
    ///
    /// # Errors
    ///
    /// A [`Fault::BAD_REQUEST`] saying why, ready to return.
    pub fn params<T: DeserializeOwned>(&self, codec: &impl Codec) -> Result<T, Fault> {
        codec
            .decode(&self.payload)
            .map_err(|e| Fault::new(Fault::BAD_REQUEST, format!("bad parameters: {e}")))
    }
}

/// Counters of an [`RpcServer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcServerStats {
    /// Requests handed to the handler.
    pub requests: u64,
    /// Replies sent (responses and faults).
    pub replies: u64,
    /// Handlers stopped by a client's cancel.
    pub cancelled: u64,
    /// Handlers stopped at the request's deadline.
    pub timed_out: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    replies: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
}

/// A running RPC server: every request runs in its own task, so one slow
/// handler never holds up the connection; a cancel from the client (an
/// explicit one, a dropped call, a timeout) aborts that task, and so does
/// the end of the connection.
#[derive(Debug)]
pub struct RpcServer {
    local_addr: SocketAddr,
    ws: bool,
    handle: ServerHandle,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl RpcServer {
    /// Binds and starts serving with `handler`, which maps each request to
    /// its result bytes (use a [`Codec`] to build them) or a [`Fault`].
    ///
    /// # Errors
    ///
    /// An invalid option or a failed bind.
    pub async fn bind<H, F>(config: RpcServerConfig, handler: H) -> io::Result<Self>
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Bytes, Fault>> + Send + 'static,
    {
        let mut calls = CallsConfig::default();
        calls.max_pending = config.max_in_flight;
        calls.max_payload = config.max_payload;
        calls.compression = config.compression;
        Serving::new(calls.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let counters = Arc::new(Counters::default());
        let rpc = RpcHandler {
            handler: Arc::new(handler),
            calls,
            conns: Mutex::new(HashMap::new()),
            counters: Arc::clone(&counters),
        };
        let limit = config.max_payload.saturating_add(ENVELOPE_SLACK);
        let is_ws = config.ws.is_some();
        let (local_addr, handle, task) = match config.ws {
            Some(mut ws) => {
                ws.config.max_message_size = limit;
                ws.config.max_frame_size = limit;
                let server = WsServer::bind(config.options, ws).await?;
                (
                    server.local_addr(),
                    server.handle(),
                    tokio::spawn(server.serve(rpc)),
                )
            }
            None => {
                let mut framing = LengthPrefixConfig::default();
                framing.max_frame_len = limit;
                let server =
                    TcpServer::bind(config.options, Framing::LengthPrefixWith(framing)).await?;
                (
                    server.local_addr(),
                    server.handle(),
                    tokio::spawn(server.serve(rpc)),
                )
            }
        };
        Ok(Self {
            local_addr,
            ws: is_ws,
            handle,
            counters,
            task,
        })
    }

    /// Where it listens.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint string a client uses: `ws://addr/` or `tcp://addr`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        if self.ws {
            format!("ws://{}/", self.local_addr)
        } else {
            format!("tcp://{}", self.local_addr)
        }
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> RpcServerStats {
        let c = &self.counters;
        RpcServerStats {
            requests: c.requests.load(Ordering::Relaxed),
            replies: c.replies.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, closes every connection (calls in flight on them
    /// fail fast on the client), aborting those still open after
    /// `timeout`, and waits until the server has stopped.
    pub async fn shutdown(self, timeout: Duration) {
        self.handle.shutdown(timeout).await;
        let _ = self.task.await;
    }
}

/// Answers a request whose handler task ended without answering.
struct PanicReply {
    conn: Arc<ConnServing>,
    session: Session,
    id: u64,
    armed: bool,
}

impl Drop for PanicReply {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        lock(&self.conn.tasks).remove(&self.id);
        let fault = Fault::new(Fault::INTERNAL, "the handler failed");
        let reply = lock(&self.conn.serving).respond(self.id, Err(fault));
        if let Some(frame) = reply {
            let _ = self.session.offer(Message::Binary(frame));
        }
    }
}

type DynHandler<F> = Arc<dyn Fn(Request) -> F + Send + Sync>;

/// One connection's requests.
struct ConnServing {
    serving: Mutex<Serving>,
    tasks: Mutex<HashMap<u64, AbortHandle>>,
}

struct RpcHandler<F> {
    handler: DynHandler<F>,
    calls: CallsConfig,
    conns: Mutex<HashMap<SessionId, Arc<ConnServing>>>,
    counters: Arc<Counters>,
}

impl<F> RpcHandler<F> {
    fn conn(&self, session: &Session) -> Option<Arc<ConnServing>> {
        lock(&self.conns).get(&session.id()).cloned()
    }
}

impl<F> Handler for RpcHandler<F>
where
    F: Future<Output = Result<Bytes, Fault>> + Send + 'static,
{
    async fn on_connect(&self, session: &Session) {
        let Ok(serving) = Serving::new(self.calls.clone()) else {
            session.abort();
            return;
        };
        let conn = Arc::new(ConnServing {
            serving: Mutex::new(serving),
            tasks: Mutex::new(HashMap::new()),
        });
        lock(&self.conns).insert(session.id(), conn);
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let Some(conn) = self.conn(session) else {
            return;
        };
        let (incoming, refusals) = {
            let mut serving = lock(&conn.serving);
            let incoming = serving.handle_frame(message.into_bytes());
            let refusals: Vec<Bytes> = std::iter::from_fn(|| serving.poll_transmit()).collect();
            (incoming, refusals)
        };
        for frame in refusals {
            let _ = session.send(Message::Binary(frame)).await;
        }
        match incoming {
            Err(_) => session.abort(), // the client broke the protocol
            Ok(None) => {}
            Ok(Some(Incoming::Cancel(id))) => {
                if let Some(task) = lock(&conn.tasks).remove(&id) {
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    task.abort();
                }
            }
            Ok(Some(Incoming::Request(request))) => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                let id = request.id;
                let timeout = request.timeout;
                let call = (self.handler)(Request {
                    method: request.method.as_str().to_owned(),
                    payload: request.payload,
                    timeout,
                    idempotent: request.idempotent,
                    remote: session.remote_addr(),
                });
                let session = session.clone();
                let counters = Arc::clone(&self.counters);
                let task_conn = Arc::clone(&conn);
                // Hold the task table while spawning so the task cannot
                // remove its entry before it is inserted.
                let mut tasks = lock(&conn.tasks);
                let task = tokio::spawn(async move {
                    // Answers INTERNAL if the handler panics (the task
                    // unwinds through it); after a cancel or a disconnect
                    // there is nobody to answer, and `respond` knows it.
                    let mut guard = PanicReply {
                        conn: Arc::clone(&task_conn),
                        session: session.clone(),
                        id,
                        armed: true,
                    };
                    let result = match timeout {
                        Some(limit) => match tokio::time::timeout(limit, call).await {
                            Ok(result) => result,
                            Err(_) => {
                                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                                Err(Fault::new(Fault::TIMEOUT, "deadline passed"))
                            }
                        },
                        None => call.await,
                    };
                    guard.armed = false;
                    lock(&task_conn.tasks).remove(&id);
                    let reply = lock(&task_conn.serving).respond(id, result);
                    if let Some(frame) = reply {
                        counters.replies.fetch_add(1, Ordering::Relaxed);
                        let _ = session.send(Message::Binary(frame)).await;
                    }
                });
                tasks.insert(id, task.abort_handle());
            }
            Ok(Some(_)) => {}
        }
    }

    async fn on_disconnect(&self, session: &Session, _: &CloseReason) {
        let conn = lock(&self.conns).remove(&session.id());
        if let Some(conn) = conn {
            for (_, task) in lock(&conn.tasks).drain() {
                task.abort();
            }
        }
    }
}
