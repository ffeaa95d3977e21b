//! [`RpcClient`]: calls over several endpoints.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use storm_async::{ClientError, Runtime, Session, TcpClient, WsClient};
use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, TlsClientOptions, WsOptions};
use storm_proto::Message;
use storm_proto::framing::{Framing, LengthPrefixConfig};
use storm_proto::reconnect::{BackoffConfig, EndpointSet};
use storm_proto::rpc::{CallEvent, Calls, CallsConfig, CompressionConfig, Fault, StartError};
use storm_tokio::Tokio;
// Runtime-independent primitives: they work on smol too.
use tokio::sync::{oneshot, watch};

use super::codec::{Codec, Json};
use super::{ENVELOPE_SLACK, Endpoint, RpcError, lock};

pub(super) mod on_std;

/// How calls are spread over the endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Each call goes to the next usable endpoint in turn.
    #[default]
    RoundRobin,
    /// Every call goes to the first usable endpoint in list order; the
    /// others take over while it is down.
    Failover,
}

/// A hook that sees raw envelope bytes, with the endpoint they go to or
/// come from.
pub type BytesHook = Arc<dyn Fn(&Endpoint, &[u8]) + Send + Sync>;

/// How an [`RpcClient`] behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcClientConfig {
    /// Round-robin (default) or failover.
    pub strategy: Strategy,
    /// How long a failed endpoint is skipped before it is tried again.
    /// Default [`RpcClientConfig::DEFAULT_BACKOFF`]: exponential from
    /// 50 ms, ×2, capped at 1 s, with full jitter, unlimited attempts, so a
    /// server that comes back is found within a second by the calls
    /// waiting for it. Calls never fail because an endpoint is backing off:
    /// they wait (up to their own timeout) for its retry time. With
    /// `max_attempts` set, once every endpoint has used them up calls fail
    /// at once with [`RpcError::NoEndpoint`].
    pub backoff: BackoffConfig,
    /// Time to open one connection. Default 5 s (and never past a call's
    /// deadline).
    pub connect_timeout: Duration,
    /// Most calls in flight per connection. Default 1024.
    pub max_pending: usize,
    /// Largest request or response payload (after inflating). Default
    /// 16 MiB; the transport limits are set just above it.
    pub max_payload: usize,
    /// Compress request payloads at or above a size. Default `None`.
    pub compression: Option<CompressionConfig>,
    /// Most times one call is sent: an idempotent call whose connection
    /// died is sent again, and a call whose send failed before it left is
    /// too. Default 3.
    pub max_sends: u32,
    /// Transport options (headers, heartbeat, and `tls`: how `wss://` and
    /// `tls://` endpoints verify the server, the web roots when `None`);
    /// `reconnect` and `connect_timeout` are ignored (see the fields
    /// above), and `ws://` and `tcp://` endpoints never use TLS.
    pub client: ClientOptions,
    /// WebSocket options (deflate, limits) for `ws://` endpoints.
    pub ws: WsOptions,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            backoff: Self::DEFAULT_BACKOFF,
            connect_timeout: Duration::from_secs(5),
            max_pending: CallsConfig::DEFAULT_MAX_PENDING,
            max_payload: CallsConfig::DEFAULT_MAX_PAYLOAD,
            compression: None,
            max_sends: 3,
            client: ClientOptions::default(),
            ws: WsOptions::default(),
        }
    }
}

impl RpcClientConfig {
    /// The default [`backoff`](Self::backoff): exponential from 50 ms, ×2,
    /// capped at 1 s, full jitter, unlimited attempts, reset once a
    /// connection stayed up 10 s.
    pub const DEFAULT_BACKOFF: BackoffConfig =
        BackoffConfig::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(1));
}

/// Per-call options.
///
/// `#[non_exhaustive]`: build it with [`new`](Self::new) and the chainable
/// methods; the fields stay public to read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallOptions {
    /// How long the call may take, connecting included.
    pub timeout: Duration,
    /// Safe to run twice: sent again elsewhere if its connection dies.
    /// Default `false`.
    pub idempotent: bool,
    /// Cancels the call when cancelled. Default none.
    pub cancel: Option<CancelToken>,
}

impl CallOptions {
    /// Options with a timeout, not idempotent, no cancel token.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            idempotent: false,
            cancel: None,
        }
    }

    /// Marks the call idempotent (or not).
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Cancels the call when `token` is cancelled.
    #[must_use]
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }
}

/// Cancels the calls it was given to, from anywhere. Cheap to clone; a
/// cancelled token stays cancelled.
#[derive(Debug, Clone)]
pub struct CancelToken(Arc<watch::Sender<bool>>);

impl Default for CancelToken {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl CancelToken {
    /// A token not cancelled yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every call using this token.
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the token is cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|cancelled| *cancelled).await;
    }
}

async fn cancelled(token: Option<&CancelToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Builds an [`RpcClient`] with codec `C` on runtime `R`.
pub struct RpcClientBuilder<C = Json, R = Tokio> {
    endpoints: Vec<Endpoint>,
    config: RpcClientConfig,
    codec: C,
    sent: Option<BytesHook>,
    received: Option<BytesHook>,
    runtime: PhantomData<fn() -> R>,
}

impl<C, R> fmt::Debug for RpcClientBuilder<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C: Codec, R: Runtime> RpcClientBuilder<C, R> {
    /// Replaces the whole configuration.
    #[must_use]
    pub fn config(mut self, config: RpcClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the strategy.
    #[must_use]
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.config.strategy = strategy;
        self
    }

    /// Sets the backoff for failed endpoints.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Compresses request payloads (`None`: never).
    #[must_use]
    pub fn compression(mut self, compression: Option<CompressionConfig>) -> Self {
        self.config.compression = compression;
        self
    }

    /// How `wss://` and `tls://` endpoints verify the server (trust the
    /// CA of a test or private PKI with [`TlsClientOptions::with_ca`]);
    /// without it they trust the public web roots.
    #[must_use]
    pub fn tls(mut self, tls: TlsClientOptions) -> Self {
        self.config.client.tls = Some(tls);
        self
    }

    /// Uses another codec.
    #[must_use]
    pub fn codec<D: Codec>(self, codec: D) -> RpcClientBuilder<D, R> {
        RpcClientBuilder {
            endpoints: self.endpoints,
            config: self.config,
            codec,
            sent: self.sent,
            received: self.received,
            runtime: PhantomData,
        }
    }

    /// Runs the client's connections and timers on another runtime than
    /// tokio: `.runtime::<storm_smol::Smol>()`. Its calls must then be
    /// awaited where that runtime's I/O and timers work.
    #[must_use]
    pub fn runtime<S: Runtime>(self) -> RpcClientBuilder<C, S> {
        RpcClientBuilder {
            endpoints: self.endpoints,
            config: self.config,
            codec: self.codec,
            sent: self.sent,
            received: self.received,
            runtime: PhantomData,
        }
    }

    /// Calls `hook` with every envelope just before it is sent.
    #[must_use]
    pub fn on_bytes_sent(
        mut self,
        hook: impl Fn(&Endpoint, &[u8]) + Send + Sync + 'static,
    ) -> Self {
        self.sent = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` with every envelope as it arrives.
    #[must_use]
    pub fn on_bytes_received(
        mut self,
        hook: impl Fn(&Endpoint, &[u8]) + Send + Sync + 'static,
    ) -> Self {
        self.received = Some(Arc::new(hook));
        self
    }

    /// Builds the client; nothing connects until the first call.
    ///
    /// # Errors
    ///
    /// [`RpcError::Config`] for an invalid backoff, limit or compression
    /// level.
    pub fn build(self) -> Result<RpcClient<C, R>, RpcError> {
        self.build_on()
    }

    /// Builds the client on plain threads instead
    /// ([`blocking::RpcClient`](super::blocking::RpcClient): storm-std's
    /// connections, every call blocking its caller); the builder's runtime
    /// is not used.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_blocking(self) -> Result<on_std::RpcClient<C>, RpcError> {
        self.build_on().map(on_std::RpcClient)
    }

    /// Builds the client on runtime `S` (any of [`OnRuntime`]).
    fn build_on<S>(self) -> Result<RpcClient<C, S>, RpcError> {
        let config = self.config;
        let mut calls = CallsConfig::default();
        calls.max_pending = config.max_pending;
        calls.max_payload = config.max_payload;
        calls.compression = config.compression;
        Calls::new(calls.clone()).map_err(|e| RpcError::Config(e.to_string()))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let set = EndpointSet::new(self.endpoints.clone(), config.backoff.clone(), seed)
            .map_err(|e| RpcError::Config(e.to_string()))?;
        let slots = self
            .endpoints
            .iter()
            .map(|_| tokio::sync::Mutex::new(None))
            .collect();
        Ok(RpcClient {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    set: Mutex::new(set),
                    last_error: Mutex::new(None),
                    sent: self.sent,
                    received: self.received,
                }),
                endpoints: self.endpoints,
                codec: self.codec,
                calls,
                config,
                slots,
                closed: AtomicBool::new(false),
            }),
            runtime: PhantomData,
        })
    }
}

/// A request/response client over one or more endpoints, with codec `C`,
/// on runtime `R` (tokio unless [`RpcClientBuilder::runtime`] says
/// otherwise). Cheap to clone; every clone shares the connections.
/// Dropping the last clone closes them.
pub struct RpcClient<C = Json, R = Tokio> {
    inner: Arc<Inner<C>>,
    runtime: PhantomData<fn() -> R>,
}

impl<C, R> Clone for RpcClient<C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            runtime: PhantomData,
        }
    }
}

impl<C, R> fmt::Debug for RpcClient<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

/// What connection handlers share with the client.
struct Shared {
    set: Mutex<EndpointSet<Endpoint>>,
    /// The last failed connection attempt, naming its endpoint.
    last_error: Mutex<Option<String>>,
    sent: Option<BytesHook>,
    received: Option<BytesHook>,
}

struct Inner<C> {
    shared: Arc<Shared>,
    endpoints: Vec<Endpoint>,
    codec: C,
    calls: CallsConfig,
    config: RpcClientConfig,
    /// One connection per endpoint, opened on demand; the async lock makes
    /// concurrent calls share one connection attempt.
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    closed: AtomicBool,
}

impl<C> Drop for Inner<C> {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(conn) = slot.get_mut() {
                conn.client.close();
            }
        }
    }
}

impl RpcClient<Json> {
    /// A builder for a client of `endpoints` (see [`Endpoint::parse`]),
    /// with the JSON codec and the default configuration.
    ///
    /// # Errors
    ///
    /// [`RpcError::Config`] for an endpoint that does not parse, or none.
    pub fn builder<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
    ) -> Result<RpcClientBuilder<Json>, RpcError> {
        let endpoints = endpoints
            .into_iter()
            .map(|e| Endpoint::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(RpcError::Config("no endpoints".to_owned()));
        }
        Ok(RpcClientBuilder {
            endpoints,
            config: RpcClientConfig::default(),
            codec: Json,
            sent: None,
            received: None,
            runtime: PhantomData,
        })
    }
}

impl<C: Codec, R: Runtime> RpcClient<C, R> {
    /// Calls `method` with `params`, serialized by the codec, and
    /// deserializes the result; `timeout` covers everything, connecting
    /// included.
    ///
    /// # Errors
    ///
    /// [`RpcError`]: timeout, a lost connection, no reachable endpoint, a
    /// server fault, a codec failure.
    pub async fn call<Req, Resp>(
        &self,
        method: &str,
        params: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_with(method, params, CallOptions::new(timeout))
            .await
    }

    /// [`call`](Self::call) with [`CallOptions`] (idempotent, cancel
    /// token).
    ///
    /// # Errors
    ///
    /// As for `call`, and [`RpcError::Cancelled`].
    pub async fn call_with<Req, Resp>(
        &self,
        method: &str,
        params: &Req,
        options: CallOptions,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload = self.inner.codec.encode(params).map_err(RpcError::Encode)?;
        let bytes = self.call_raw(method, payload, options).await?;
        self.inner.codec.decode(&bytes).map_err(RpcError::Decode)
    }

    /// Calls `method` with raw bytes and returns the raw result.
    ///
    /// Dropping the future before it completes cancels the call: the
    /// server is sent a cancel envelope.
    ///
    /// # Errors
    ///
    /// As for [`call_with`](Self::call_with), without the codec errors.
    pub async fn call_raw(
        &self,
        method: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, RpcError> {
        self.call_on(method, payload, options).await
    }

    /// Closes every connection gracefully and returns once they have
    /// closed, so what was queued on them (the cancels of calls just
    /// dropped) has gone out; later calls fail with [`RpcError::Closed`].
    pub async fn close(&self) {
        self.close_on().await;
    }

    /// The endpoints, in list order.
    #[must_use]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.inner.endpoints
    }

    /// Whether the endpoint at `index` is in rotation now (up, or down
    /// with its retry time reached).
    #[must_use]
    pub fn is_available(&self, index: usize) -> bool {
        lock(&self.inner.shared.set).is_available(index, Instant::now())
    }

    /// Whether a connection to the endpoint at `index` is open now
    /// (`false` before the first call to it, and once it dropped).
    #[must_use]
    pub fn is_connected(&self, index: usize) -> bool {
        self.inner
            .slots
            .get(index)
            .and_then(|slot| slot.try_lock().ok())
            .is_some_and(|slot| slot.as_ref().is_some_and(|conn| conn.state.is_alive()))
    }
}

/// The client's workings, on any runtime it runs on (storm-async's, or
/// storm-std's: [`OnRuntime`]); the public methods of [`RpcClient`] and of
/// [`blocking::RpcClient`](super::blocking::RpcClient) call these.
impl<C: Codec, R> RpcClient<C, R> {
    /// [`RpcClient::call_raw`]'s workings.
    async fn call_on(
        &self,
        method: &str,
        payload: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, RpcError>
    where
        R: OnRuntime,
    {
        let token = options.cancel.as_ref();
        let deadline = Instant::now()
            .checked_add(options.timeout)
            .ok_or_else(|| RpcError::Config("timeout too large".to_owned()))?;
        let mut sends = 0;
        loop {
            if token.is_some_and(CancelToken::is_cancelled) {
                return Err(RpcError::Cancelled);
            }
            let conn = tokio::select! {
                conn = self.connection(deadline) => conn?,
                () = cancelled(token) => return Err(RpcError::Cancelled),
            };
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(RpcError::Timeout);
            }
            sends += 1;
            let started =
                conn.state
                    .start(now, remaining, method, payload.clone(), options.idempotent);
            let (id, frame, rx) = match started {
                Ok(started) => started,
                Err(StartFail::Start(e)) => return Err(RpcError::Start(e)),
                // It died between being picked and now: nothing was sent.
                Err(StartFail::Dead) if sends < self.inner.config.max_sends => continue,
                Err(StartFail::Dead) => return Err(conn.lost()),
            };
            let mut in_flight = InFlight {
                conn: &conn,
                id,
                armed: true,
            };
            // A backpressured connection may hold the send: the deadline
            // and the token still apply.
            let sent = tokio::select! {
                sent = conn.send(frame) => sent,
                () = R::sleep_until(deadline) => return Err(RpcError::Timeout),
                () = cancelled(token) => return Err(RpcError::Cancelled),
            };
            if sent.is_err() {
                // Not queued, so not sent: safe to send again.
                in_flight.armed = false;
                let _ = conn.state.cancel(id);
                if sends < self.inner.config.max_sends {
                    continue;
                }
                return Err(conn.lost());
            }
            let event = tokio::select! {
                event = rx => event.ok(),
                () = R::sleep_until(deadline) => {
                    // Drive the machine's clock: this and every other call
                    // due ends, and their cancels go to the server. If this
                    // call was not due yet by the machine's reckoning,
                    // dropping `in_flight` cancels it.
                    for frame in conn.state.handle_timeout(Instant::now()) {
                        conn.offer(frame);
                    }
                    return Err(RpcError::Timeout);
                }
                () = cancelled(token) => return Err(RpcError::Cancelled),
            };
            in_flight.armed = false;
            match event {
                Some(CallEvent::Response { payload, .. }) => return Ok(payload),
                // The server gave up at the deadline it was told, which is
                // this call's: the same outcome as our own timer.
                Some(CallEvent::Failed { fault, .. }) if fault.code == Fault::TIMEOUT => {
                    return Err(RpcError::Timeout);
                }
                Some(CallEvent::Failed { fault, .. }) => return Err(RpcError::Remote(fault)),
                Some(CallEvent::TimedOut(_)) => return Err(RpcError::Timeout),
                Some(CallEvent::Disconnected { idempotent, .. })
                    if idempotent
                        && sends < self.inner.config.max_sends
                        && Instant::now() < deadline =>
                {
                    continue;
                }
                _ => return Err(conn.lost()),
            }
        }
    }

    /// [`RpcClient::close`]'s workings.
    async fn close_on(&self)
    where
        R: OnRuntime,
    {
        self.inner.closed.store(true, Ordering::Release);
        let mut closing = Vec::new();
        for slot in &self.inner.slots {
            if let Some(conn) = slot.lock().await.take() {
                conn.client.close();
                closing.push(conn);
            }
        }
        for conn in closing {
            conn.client.closed().await;
        }
    }

    /// The index of the endpoint the next call would use, or, when all are
    /// down, when the first will be retried.
    fn pick(&self) -> Result<usize, Option<Instant>> {
        let mut set = lock(&self.inner.shared.set);
        let now = Instant::now();
        let choice = match self.inner.config.strategy {
            Strategy::RoundRobin => set.next(now).map(|(index, _)| index),
            Strategy::Failover => {
                set.handle_timeout(now);
                (0..set.len()).find(|&index| set.is_available(index, now))
            }
        };
        choice.ok_or_else(|| set.poll_timeout())
    }

    /// A live connection for the next call, connecting (and waiting for
    /// retry times) as needed, until `deadline`; [`RpcError::NoEndpoint`]
    /// once it passes without one.
    async fn connection(&self, deadline: Instant) -> Result<Arc<Conn>, RpcError>
    where
        R: OnRuntime,
    {
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(RpcError::Closed);
            }
            match next_step(self.pick(), Instant::now(), deadline) {
                Next::Connect(index) => {
                    let connected = tokio::select! {
                        connected = self.connect(index) => connected,
                        () = R::sleep_until(deadline) => {
                            // The attempt cut short says less than the one
                            // that failed before it (a refused certificate,
                            // say): name both.
                            let endpoint = self.inner.endpoints.get(index);
                            let before = lock(&self.inner.shared.last_error).clone();
                            let still = endpoint.map(|e| match before {
                                Some(before) => format!("{e}: still connecting; before that, {before}"),
                                None => format!("{e}: still connecting"),
                            });
                            return Err(self.no_endpoint(still));
                        }
                    };
                    let now = Instant::now();
                    let mut set = lock(&self.inner.shared.set);
                    match connected {
                        Ok(conn) => {
                            let _ = set.mark_up(index, now);
                            return Ok(conn);
                        }
                        Err(error) => {
                            let _ = set.mark_down(index, now);
                            let endpoint = set.get(index).map(ToString::to_string);
                            *lock(&self.inner.shared.last_error) =
                                Some(format!("{}: {error}", endpoint.unwrap_or_default()));
                        }
                    }
                }
                Next::Wait(until) => R::sleep_until(until).await,
                Next::Fail => return Err(self.no_endpoint(None)),
            }
        }
    }

    /// [`RpcError::NoEndpoint`] naming every endpoint, with `last_error`,
    /// or else the last connection error any call met.
    fn no_endpoint(&self, last_error: Option<String>) -> RpcError {
        RpcError::NoEndpoint {
            endpoints: self.inner.endpoints.clone(),
            last_error: last_error.or_else(|| lock(&self.inner.shared.last_error).clone()),
        }
    }

    /// The connection to endpoint `index`, opened if there is none alive.
    async fn connect(&self, index: usize) -> Result<Arc<Conn>, String>
    where
        R: OnRuntime,
    {
        let (Some(slot), Some(endpoint)) =
            (self.inner.slots.get(index), self.inner.endpoints.get(index))
        else {
            return Err(format!("no endpoint {index}"));
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.state.is_alive() {
                return Ok(Arc::clone(conn));
            }
        }
        let config = &self.inner.config;
        let state = Arc::new(ConnState {
            machine: Mutex::new(Machine {
                calls: Calls::new(self.inner.calls.clone()).map_err(|e| e.to_string())?,
                waiters: HashMap::new(),
                alive: true,
            }),
            index,
            endpoint: endpoint.clone(),
            shared: Arc::clone(&self.inner.shared),
        });
        let handler = ConnHandler {
            state: Arc::clone(&state),
        };
        let mut options = config
            .client
            .clone()
            .with_connect_timeout(config.connect_timeout);
        options.reconnect = None;
        if !endpoint.is_tls() {
            options.tls = None;
        }
        let limit = config.max_payload.saturating_add(ENVELOPE_SLACK);
        let target = match endpoint {
            Endpoint::Ws(url) => {
                let mut ws = config.ws.clone();
                ws.config.max_message_size = limit;
                ws.config.max_frame_size = limit;
                Target::Ws(url, ws)
            }
            Endpoint::Tls(addr) | Endpoint::Tcp(addr) => {
                if endpoint.is_tls() {
                    options.tls.get_or_insert_with(TlsClientOptions::default);
                }
                let mut framing = LengthPrefixConfig::default();
                framing.max_frame_len = limit;
                Target::Tcp(addr, Framing::LengthPrefixWith(framing))
            }
        };
        let client = R::connect(target, options, handler)
            .await
            .map_err(|e| e.to_string())?;
        let conn = Arc::new(Conn { client, state });
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }
}

/// Where [`OnRuntime::connect`] connects.
pub(super) enum Target<'a> {
    /// A WebSocket URL.
    Ws(&'a str, WsOptions),
    /// `host:port`, length-prefixed.
    Tcp(&'a str, Framing),
}

/// What the client needs of the runtime it runs on: connecting and the
/// timer. Every storm-async [`Runtime`] (tokio, smol) is one, and so is
/// [`OnStd`] (storm-std's blocking connections, smol's timer, waited on
/// by the caller's thread).
pub(super) trait OnRuntime: Send + Sync + 'static {
    /// Completes at `deadline`.
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> + Send;

    /// Opens a connection to `target`, handled by `handler`.
    fn connect(
        target: Target<'_>,
        options: ClientOptions,
        handler: ConnHandler,
    ) -> impl Future<Output = Result<ConnClient, ClientError>> + Send;
}

impl<R: Runtime> OnRuntime for R {
    fn sleep_until(deadline: Instant) -> impl Future<Output = ()> + Send {
        R::sleep_until(deadline)
    }

    async fn connect(
        target: Target<'_>,
        options: ClientOptions,
        handler: ConnHandler,
    ) -> Result<ConnClient, ClientError> {
        match target {
            Target::Ws(url, ws) => WsClient::<R>::connect(url, options, ws, handler).await,
            Target::Tcp(addr, framing) => {
                TcpClient::<R>::connect(addr, options, framing, handler).await
            }
        }
        .map(ConnClient::Async)
    }
}

/// The client on storm-std (see [`OnRuntime`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct OnStd;

impl OnRuntime for OnStd {
    async fn sleep_until(deadline: Instant) {
        smol::Timer::at(deadline).await;
    }

    /// Blocks the thread that waits for it until connected.
    async fn connect(
        target: Target<'_>,
        options: ClientOptions,
        handler: ConnHandler,
    ) -> Result<ConnClient, ClientError> {
        match target {
            Target::Ws(url, ws) => storm_std::WsClient::connect(url, options, ws, handler),
            Target::Tcp(addr, framing) => {
                storm_std::TcpClient::connect(addr, options, framing, handler)
            }
        }
        .map(ConnClient::Std)
    }
}

/// A connection's client: storm-async's or storm-std's; both hand out the
/// same [`Session`], which sends by waiting asynchronously on any executor.
pub(super) enum ConnClient {
    Async(storm_async::Client),
    Std(storm_std::Client),
}

impl ConnClient {
    fn session(&self) -> Option<Session> {
        match self {
            Self::Async(client) => client.session(),
            Self::Std(client) => client.session(),
        }
    }

    fn close(&self) {
        match self {
            Self::Async(client) => client.close(),
            Self::Std(client) => client.close(),
        }
    }

    /// Sends, waiting while the connection is backpressured.
    async fn send(&self, message: Message) -> Result<(), ClientError> {
        let session = self.session().ok_or(ClientError::NotConnected)?;
        session.send(message).await.map_err(ClientError::Send)
    }

    /// Returns once the connection has closed (storm-std's: blocking the
    /// thread that waits).
    async fn closed(&self) {
        match self {
            Self::Async(client) => client.closed().await,
            Self::Std(client) => client.closed(),
        }
    }
}

/// What a call that needs a connection does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Use the connection to this endpoint, opening it if needed.
    Connect(usize),
    /// Every endpoint is backing off: sleep until then (the first retry
    /// time, or the call's deadline if that comes first) and ask again.
    Wait(Instant),
    /// Fail with [`RpcError::NoEndpoint`]: the deadline has passed, or
    /// every endpoint gave up (ran out of backoff attempts).
    Fail,
}

/// The decision of [`RpcClient::connection`], given `pick` (an endpoint
/// to use, or when the first one will be retried: see
/// [`RpcClient::pick`]). A call never fails because endpoints are
/// backing off; it waits for their retry time until its own deadline.
fn next_step(pick: Result<usize, Option<Instant>>, now: Instant, deadline: Instant) -> Next {
    if now >= deadline {
        return Next::Fail;
    }
    match pick {
        Ok(index) => Next::Connect(index),
        Err(Some(retry_at)) => Next::Wait(retry_at.min(deadline)),
        Err(None) => Next::Fail,
    }
}

/// A call whose future may be dropped: cancels it then.
struct InFlight<'a> {
    conn: &'a Conn,
    id: u64,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(frame) = self.conn.state.cancel(self.id) {
                self.conn.offer(frame);
            }
        }
    }
}

/// One connection to one endpoint.
struct Conn {
    client: ConnClient,
    state: Arc<ConnState>,
}

impl Conn {
    /// Sends an envelope, waiting if the connection is backpressured.
    async fn send(&self, frame: Bytes) -> Result<(), ClientError> {
        self.state.hook_sent(&frame);
        self.client.send(Message::Binary(frame)).await
    }

    /// Queues an envelope without waiting (cancels, from `Drop`); dropped
    /// if the connection is gone or full.
    fn offer(&self, frame: Bytes) {
        if let Some(session) = self.client.session() {
            self.state.hook_sent(&frame);
            let _ = session.try_send(Message::Binary(frame));
        }
    }

    fn lost(&self) -> RpcError {
        RpcError::ConnectionLost {
            endpoint: self.state.endpoint.clone(),
        }
    }
}

/// Why [`ConnState::start`] failed.
enum StartFail {
    Dead,
    Start(StartError),
}

struct Machine {
    calls: Calls,
    waiters: HashMap<u64, oneshot::Sender<CallEvent>>,
    alive: bool,
}

impl Machine {
    /// Hands every ended call to its waiter.
    fn dispatch(&mut self) {
        while let Some(event) = self.calls.poll_event() {
            let id = match &event {
                CallEvent::Response { id, .. }
                | CallEvent::Failed { id, .. }
                | CallEvent::Disconnected { id, .. } => *id,
                CallEvent::TimedOut(id) => *id,
                _ => continue,
            };
            if let Some(waiter) = self.waiters.remove(&id) {
                let _ = waiter.send(event);
            }
        }
    }
}

/// A connection's call machine and the waiters of its calls.
struct ConnState {
    machine: Mutex<Machine>,
    index: usize,
    endpoint: Endpoint,
    shared: Arc<Shared>,
}

impl ConnState {
    fn is_alive(&self) -> bool {
        lock(&self.machine).alive
    }

    fn hook_sent(&self, bytes: &[u8]) {
        if let Some(hook) = &self.shared.sent {
            hook(&self.endpoint, bytes);
        }
    }

    fn start(
        &self,
        now: Instant,
        timeout: Duration,
        method: &str,
        payload: Bytes,
        idempotent: bool,
    ) -> Result<(u64, Bytes, oneshot::Receiver<CallEvent>), StartFail> {
        let mut machine = lock(&self.machine);
        if !machine.alive {
            return Err(StartFail::Dead);
        }
        let (id, frame) = machine
            .calls
            .start(now, Some(timeout), method, payload, idempotent)
            .map_err(StartFail::Start)?;
        let (tx, rx) = oneshot::channel();
        machine.waiters.insert(id, tx);
        Ok((id, frame, rx))
    }

    /// Ends a call early; the cancel envelope to send, if it was pending.
    fn cancel(&self, id: u64) -> Option<Bytes> {
        let mut machine = lock(&self.machine);
        machine.waiters.remove(&id);
        machine.calls.cancel(id)
    }

    /// Times out the calls due at `now`; the cancels to send.
    fn handle_timeout(&self, now: Instant) -> Vec<Bytes> {
        let mut machine = lock(&self.machine);
        machine.calls.handle_timeout(now);
        machine.dispatch();
        std::iter::from_fn(|| machine.calls.poll_transmit()).collect()
    }
}

/// The handler of one RPC connection, on every runtime.
pub(super) struct ConnHandler {
    state: Arc<ConnState>,
}

impl storm_async::Handler for ConnHandler {
    async fn on_message(&self, session: &Session, message: Message) {
        self.message(session, message);
    }

    async fn on_disconnect(&self, _: &Session, _: &CloseReason) {
        self.disconnected();
    }
}

impl storm_std::Handler for ConnHandler {
    fn on_message(&self, session: &Session, message: Message) {
        self.message(session, message);
    }

    fn on_disconnect(&self, _: &Session, _: &CloseReason) {
        self.disconnected();
    }
}

impl ConnHandler {
    fn message(&self, session: &Session, message: Message) {
        let bytes = message.into_bytes();
        if let Some(hook) = &self.state.shared.received {
            hook(&self.state.endpoint, &bytes);
        }
        let result = {
            let mut machine = lock(&self.state.machine);
            let result = machine.calls.handle_frame(bytes);
            machine.dispatch();
            result
        };
        if result.is_err() {
            // The server broke the protocol: drop the connection, which
            // fails the other calls in flight on it.
            session.abort();
        }
    }

    fn disconnected(&self) {
        {
            let mut machine = lock(&self.state.machine);
            machine.alive = false;
            machine.calls.handle_disconnect();
            machine.dispatch();
        }
        let _ = lock(&self.state.shared.set).mark_down(self.state.index, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_for_a_retry_time_up_to_its_deadline() {
        // Virtual time: which instant is the origin does not matter.
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let deadline = t0 + ms(500);
        assert_eq!(next_step(Ok(1), t0, deadline), Next::Connect(1));
        // A retry before the deadline: wait for it.
        let soon = t0 + ms(100);
        assert_eq!(next_step(Err(Some(soon)), t0, deadline), Next::Wait(soon));
        // A retry after the deadline: wait until the deadline, not fail now.
        let late = t0 + ms(30_000);
        assert_eq!(
            next_step(Err(Some(late)), t0, deadline),
            Next::Wait(deadline)
        );
        // Then the deadline has passed: fail, whatever the endpoints say.
        for pick in [Ok(0), Err(Some(late)), Err(None)] {
            assert_eq!(next_step(pick, deadline, deadline), Next::Fail);
        }
        // Every endpoint gave up: nothing will ever be retried.
        assert_eq!(next_step(Err(None), t0, deadline), Next::Fail);
    }
}
