//! What an RPC server does, whatever it runs on: [`RpcServerConfig`], the
//! [`Request`] a handler gets, and [`Service`], the one place requests are
//! decoded, refused, cancelled, timed out and answered (with the core's
//! [`Serving`] machine). The adapters only run handlers and move frames:
//! [`RpcServer`](super::RpcServer) on tokio or smol (`on_async`),
//! [`blocking::RpcServer`](super::blocking::RpcServer) on std threads.

mod on_async;
pub(super) mod on_std;

pub use on_async::RpcServer;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use storm_host::hub::SessionId;
use storm_host::options::{ServerOptions, WsOptions};
use storm_host::session::Session;
use storm_proto::framing::{Framing, LengthPrefixConfig};
use storm_proto::rpc::{CallsConfig, CompressionConfig, Fault, Incoming, Serving};

use super::codec::Codec;
use super::{ENVELOPE_SLACK, lock};
use crate::host::Listen;

/// How an RPC server listens and what it allows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcServerConfig {
    /// Address and socket options; `options.tls` serves `wss://` or TLS
    /// over TCP.
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
            options: ServerOptions::default().with_addr(addr.to_owned()),
            ws,
            max_in_flight: CallsConfig::DEFAULT_MAX_PENDING,
            max_payload: CallsConfig::DEFAULT_MAX_PAYLOAD,
            compression: None,
        }
    }

    /// The transport these options serve, with its message limit raised
    /// to fit the largest envelope.
    pub(super) fn listen(&self) -> Listen {
        let limit = self.max_payload.saturating_add(ENVELOPE_SLACK);
        match &self.ws {
            Some(ws) => {
                let mut ws = ws.clone();
                ws.config.max_message_size = limit;
                ws.config.max_frame_size = limit;
                Listen::Ws(ws)
            }
            None => {
                let mut framing = LengthPrefixConfig::default();
                framing.max_frame_len = limit;
                Listen::Tcp(Framing::LengthPrefixWith(framing))
            }
        }
    }

    /// The endpoint a client uses to reach a server bound at `addr` with
    /// these options: `ws://addr/`, `wss://addr/`, `tcp://addr` or
    /// `tls://addr`.
    pub(super) fn endpoint(&self, addr: SocketAddr) -> String {
        match (self.ws.is_some(), self.options.tls.is_some()) {
            (true, false) => format!("ws://{addr}/"),
            (true, true) => format!("wss://{addr}/"),
            (false, false) => format!("tcp://{addr}"),
            (false, true) => format!("tls://{addr}"),
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
    signal: Arc<Signal>,
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

    /// Whether nobody waits for the answer any more: the client cancelled
    /// the call, its deadline passed, or the connection ended. An async
    /// handler is simply dropped then; a blocking one (on
    /// [`blocking::RpcServer`](super::blocking::RpcServer)) should check
    /// this, or wait with [`wait_cancelled`](Self::wait_cancelled).
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.signal.is_cancelled(Instant::now())
    }

    /// Blocks up to `limit`, returning early with `true` when the call is
    /// cancelled (as for [`is_cancelled`](Self::is_cancelled)). Meant for
    /// blocking handlers: an interruptible sleep or poll interval.
    #[must_use]
    pub fn wait_cancelled(&self, limit: Duration) -> bool {
        self.signal.wait(limit)
    }
}

/// Tells a running call that nobody waits for it any more, both to a
/// task (through `notify`) and to a thread (through the condvar).
#[derive(Debug)]
struct Signal {
    deadline: Option<Instant>,
    cancelled: Mutex<bool>,
    wake: Condvar,
    notify: tokio::sync::Notify,
}

impl Signal {
    fn new(deadline: Option<Instant>) -> Self {
        Self {
            deadline,
            cancelled: Mutex::new(false),
            wake: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn cancel(&self) {
        *lock(&self.cancelled) = true;
        self.wake.notify_all();
        self.notify.notify_waiters();
    }

    fn is_cancelled(&self, now: Instant) -> bool {
        *lock(&self.cancelled) || self.deadline.is_some_and(|d| now >= d)
    }

    fn wait(&self, limit: Duration) -> bool {
        let now = Instant::now();
        let until = now.checked_add(limit).unwrap_or(now);
        let until = self.deadline.map_or(until, |d| d.min(until));
        let mut cancelled = lock(&self.cancelled);
        loop {
            let now = Instant::now();
            if *cancelled || self.deadline.is_some_and(|d| now >= d) {
                return true;
            }
            if now >= until {
                return false;
            }
            cancelled = self
                .wake
                .wait_timeout(cancelled, until - now)
                .map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
        }
    }

    /// Completes once [`cancel`](Self::cancel) was called (not at the
    /// deadline: the async adapter races that with its own timer).
    async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if *lock(&self.cancelled) {
                return;
            }
            notified.await;
        }
    }
}

/// Counters of an RPC server.
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

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    replies: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
}

/// One connection's requests.
#[derive(Debug)]
struct Conn {
    serving: Mutex<Serving>,
    running: Mutex<HashMap<u64, Arc<Signal>>>,
}

/// What the adapter does after a message.
pub(super) enum Step {
    /// Nothing more.
    Nothing,
    /// The client broke the protocol: drop the connection.
    Abort,
    /// Run the handler on `request`, then answer through `call`.
    Run(Request, Call),
}

/// How a handler's run ended, as the adapter saw it.
pub(super) enum Ended {
    /// It returned this.
    Done(Result<Bytes, Fault>),
    /// It panicked.
    Panicked,
    /// The call's deadline passed first (an async handler is stopped then;
    /// a blocking one answered too late).
    Deadline,
    /// The call was cancelled first (an async handler is stopped then).
    Cancelled,
}

/// A request being handled: hand it back to [`Service::end`].
#[derive(Debug)]
pub(super) struct Call {
    conn: Arc<Conn>,
    id: u64,
    signal: Arc<Signal>,
}

impl Call {
    /// When the client stops waiting.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.signal.deadline
    }

    /// How a blocking handler's run ended at `now`, given what it
    /// returned (`None`: it panicked): an answer after the deadline is
    /// [`Ended::Deadline`].
    pub(super) fn ended_at(&self, now: Instant, returned: Option<Result<Bytes, Fault>>) -> Ended {
        match returned {
            None => Ended::Panicked,
            Some(_) if self.deadline().is_some_and(|d| now >= d) => Ended::Deadline,
            Some(result) => Ended::Done(result),
        }
    }

    /// Completes when the call is cancelled (by the client or the end of
    /// the connection).
    pub(super) async fn cancelled(&self) {
        self.signal.cancelled().await;
    }
}

/// The server's decisions, the same on every runtime: sessions' serving
/// machines, the calls running on each, and the counters.
#[derive(Debug)]
pub(super) struct Service {
    calls: CallsConfig,
    conns: Mutex<HashMap<SessionId, Arc<Conn>>>,
    counters: Counters,
}

impl Service {
    /// Checks the limits of `config`.
    pub(super) fn new(config: &RpcServerConfig) -> io::Result<Self> {
        let mut calls = CallsConfig::default();
        calls.max_pending = config.max_in_flight;
        calls.max_payload = config.max_payload;
        calls.compression = config.compression;
        Serving::new(calls.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Self {
            calls,
            conns: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    /// A connection opened; `false`: abort it.
    pub(super) fn connect(&self, session: &Session) -> bool {
        let Ok(serving) = Serving::new(self.calls.clone()) else {
            return false;
        };
        let conn = Arc::new(Conn {
            serving: Mutex::new(serving),
            running: Mutex::new(HashMap::new()),
        });
        lock(&self.conns).insert(session.id(), conn);
        true
    }

    /// Takes one message from `session`: returns the refusals to send first
    /// (overload, duplicate id, bad compression), then what to do.
    pub(super) fn message(&self, session: &Session, frame: Bytes) -> (Vec<Bytes>, Step) {
        let Some(conn) = lock(&self.conns).get(&session.id()).cloned() else {
            return (Vec::new(), Step::Nothing);
        };
        let (incoming, refusals) = {
            let mut serving = lock(&conn.serving);
            let incoming = serving.handle_frame(frame);
            let refusals: Vec<Bytes> = std::iter::from_fn(|| serving.poll_transmit()).collect();
            (incoming, refusals)
        };
        let step = match incoming {
            Err(_) => Step::Abort,
            Ok(Some(Incoming::Cancel(id))) => {
                if let Some(signal) = lock(&conn.running).remove(&id) {
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    signal.cancel();
                }
                Step::Nothing
            }
            Ok(Some(Incoming::Request(request))) => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                let deadline = request
                    .timeout
                    .and_then(|limit| Instant::now().checked_add(limit));
                let signal = Arc::new(Signal::new(deadline));
                lock(&conn.running).insert(request.id, Arc::clone(&signal));
                let call = Call {
                    conn,
                    id: request.id,
                    signal: Arc::clone(&signal),
                };
                let request = Request {
                    method: request.method.as_str().to_owned(),
                    payload: request.payload,
                    timeout: request.timeout,
                    idempotent: request.idempotent,
                    remote: session.remote_addr(),
                    signal,
                };
                Step::Run(request, call)
            }
            Ok(_) => Step::Nothing,
        };
        (refusals, step)
    }

    /// The handler of `call` ended: the reply to send, if anyone still
    /// waits for it (a [`Fault::TIMEOUT`] after the deadline, a
    /// [`Fault::INTERNAL`] for a panic).
    pub(super) fn end(&self, call: &Call, ended: Ended) -> Option<Bytes> {
        match ended {
            Ended::Done(result) => self.finish(call, result),
            Ended::Panicked => {
                self.finish(call, Err(Fault::new(Fault::INTERNAL, "the handler failed")))
            }
            Ended::Deadline => self.deadline_passed(call),
            Ended::Cancelled => {
                self.forget(call);
                None
            }
        }
    }

    /// The handler of `call` ended with `result`: the reply to send, if
    /// anyone still waits for it.
    fn finish(&self, call: &Call, result: Result<Bytes, Fault>) -> Option<Bytes> {
        lock(&call.conn.running).remove(&call.id);
        if *lock(&call.signal.cancelled) {
            return None;
        }
        let reply = lock(&call.conn.serving).respond(call.id, result);
        if reply.is_some() {
            self.counters.replies.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    /// The deadline of `call` passed with the handler still running (an
    /// async handler is stopped; a blocking one answered too late): the
    /// [`Fault::TIMEOUT`] to send, if anyone still waits.
    fn deadline_passed(&self, call: &Call) -> Option<Bytes> {
        if *lock(&call.signal.cancelled) {
            self.forget(call);
            return None;
        }
        self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
        self.finish(call, Err(Fault::new(Fault::TIMEOUT, "deadline passed")))
    }

    /// The call was cancelled while its handler ran: forget it.
    fn forget(&self, call: &Call) {
        lock(&call.conn.running).remove(&call.id);
    }

    /// The connection of `session` ended: every call still running on it is
    /// cancelled.
    pub(super) fn disconnect(&self, session: &Session) {
        let conn = lock(&self.conns).remove(&session.id());
        if let Some(conn) = conn {
            for (_, signal) in lock(&conn.running).drain() {
                signal.cancel();
            }
        }
    }

    /// The counters so far.
    pub(super) fn stats(&self) -> RpcServerStats {
        let c = &self.counters;
        RpcServerStats {
            requests: c.requests.load(Ordering::Relaxed),
            replies: c.replies.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// `f()`, or `None` if it panicked.
pub(super) fn unless_panic<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(deadline: Option<Instant>) -> Call {
        let serving = Serving::new(CallsConfig::default()).expect("valid");
        Call {
            conn: Arc::new(Conn {
                serving: Mutex::new(serving),
                running: Mutex::new(HashMap::new()),
            }),
            id: 1,
            signal: Arc::new(Signal::new(deadline)),
        }
    }

    #[test]
    fn a_blocking_answer_after_the_deadline_is_a_timeout_and_a_panic_is_a_panic() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let ok = || Some(Ok(Bytes::from_static(b"done")));
        let bounded = call(Some(later));
        assert!(matches!(bounded.ended_at(now, ok()), Ended::Done(Ok(b)) if b == "done"));
        assert!(matches!(bounded.ended_at(later, ok()), Ended::Deadline));
        assert!(matches!(bounded.ended_at(now, None), Ended::Panicked));
        assert!(matches!(bounded.ended_at(later, None), Ended::Panicked));
        let unbounded = call(None);
        assert!(matches!(
            unbounded.ended_at(later, ok()),
            Ended::Done(Ok(_))
        ));
    }
}
