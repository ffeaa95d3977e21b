//! The consumer: sends requests on a channel, gets responses back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use storm_async::Runtime;
use storm_host::options::ClientOptions;
use storm_proto::broker::{
    BrokerFramer, ChannelId, ClientId, ErrorCode, ErrorPayload, Frame, FrameConfig, FrameType,
    Registration, RequestEvent, RequestId, Requests, RequestsConfig, RequestsError, Role, Streamer,
};
use tokio::sync::oneshot;

use super::BrokerError;
use super::client::{Client, Connection, Inbox, Incoming, Rt, concat, send, send_soon};

pub(super) mod on_std;

/// Longer timeouts are cut to this (a year), so a deadline is always a
/// valid instant.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a [`Consumer`] connects and what it accepts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// Connect timeout (also bounds the registration), socket options and
    /// send backpressure, TLS ([`ClientOptions::tls`]: required for a
    /// broker that serves TLS). Default: [`ClientOptions::default`].
    /// The slow-consumer policy is always `Wait` (frames are never
    /// dropped); `reconnect` must stay off (a registration does not survive
    /// a reconnect).
    pub client: ClientOptions,
    /// Largest frame payload; requests are sent in chunks of this size.
    /// Must match the broker's. Default 1 MiB.
    pub frame: FrameConfig,
    /// The timeout the broker applies to this consumer's requests (sent
    /// when registering); zero means the broker's default (5 s), and the
    /// broker caps it at its maximum (5 min). The per-request timeout of
    /// [`Consumer::request`] is enforced here as well. Default zero.
    pub server_timeout: Duration,
    /// Largest response accepted; a larger one fails with
    /// [`BrokerError::ResponseTooLarge`] and is cancelled. Default
    /// [`ConsumerOptions::DEFAULT_MAX_RESPONSE`] (64 MiB).
    pub max_response: usize,
    /// Requests open at once. Default 1024.
    pub requests: RequestsConfig,
    /// The client id to register with; `None` picks a random one.
    pub client_id: Option<ClientId>,
}

impl ConsumerOptions {
    /// Default of [`max_response`](Self::max_response): 64 MiB.
    pub const DEFAULT_MAX_RESPONSE: usize = 64 * 1024 * 1024;
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            frame: FrameConfig::default(),
            server_timeout: Duration::ZERO,
            max_response: Self::DEFAULT_MAX_RESPONSE,
            requests: RequestsConfig::default(),
            client_id: None,
        }
    }
}

/// A consumer connected to a broker on one channel. Cheap to clone; the
/// connection closes when the last clone is dropped (or on
/// [`close`](Self::close)). Runs on tokio ([`connect`](Self::connect))
/// or smol ([`connect_on`](Self::connect_on)`::<storm_smol::Smol>`); the
/// broker it talks to may run on any runtime.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("pending", &self.inner.lock().requests.pending())
            .finish_non_exhaustive()
    }
}

struct Inner {
    rt: Rt,
    client: Client,
    framer: BrokerFramer,
    chunk_size: usize,
    max_response: usize,
    state: Mutex<State>,
}

struct State {
    requests: Requests,
    waiters: HashMap<RequestId, Waiter>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

/// A request waiting for its response.
struct Waiter {
    parts: Vec<Bytes>,
    size: usize,
    done: oneshot::Sender<Result<Bytes, BrokerError>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.client.close();
    }
}

impl Consumer {
    /// Connects to the broker at `addr` (`host:port`) and registers as a
    /// consumer on `channel`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Connect`], [`BrokerError::Timeout`] (no
    /// acknowledgement within the connect timeout), [`BrokerError::Failed`]
    /// (the broker refused), [`BrokerError::Config`] (also for
    /// `client.reconnect` set).
    pub async fn connect(
        addr: &str,
        channel: ChannelId,
        options: ConsumerOptions,
    ) -> Result<Self, BrokerError> {
        Self::open(Rt::tokio(), addr, channel, options).await
    }

    /// Connects like [`connect`](Self::connect), on runtime `R` (tokio's
    /// or smol's): its tasks and timers run there, so call it (and use the
    /// consumer) inside `R`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_on<R: Runtime>(
        addr: &str,
        channel: ChannelId,
        options: ConsumerOptions,
    ) -> Result<Self, BrokerError> {
        Self::open(Rt::of::<R>(), addr, channel, options).await
    }

    /// Connects and registers on `rt` (also storm-std's: `on_std`).
    pub(super) async fn open(
        rt: Rt,
        addr: &str,
        channel: ChannelId,
        options: ConsumerOptions,
    ) -> Result<Self, BrokerError> {
        let requests = Requests::new(options.requests)?;
        let chunk_size = options.frame.max_payload;
        let registration = Registration {
            role: Role::Consumer,
            client_id: options
                .client_id
                .unwrap_or_else(|| ClientId::random(&mut rand::rng())),
            channel_id: channel,
            timeout: options.server_timeout,
        };
        let conn = Connection::open(rt, addr, options.client, options.frame, registration).await?;
        let inner = Arc::new(Inner {
            rt,
            client: conn.client,
            framer: conn.framer,
            chunk_size,
            max_response: options.max_response,
            state: Mutex::new(State {
                requests,
                waiters: HashMap::new(),
                closed: None,
            }),
        });
        rt.spawn(dispatch(Arc::downgrade(&inner), conn.inbound));
        Ok(Self { inner })
    }

    /// Sends `payload` (any size: streamed in chunks, waiting whenever the
    /// connection is backpressured) and waits for the whole response, at
    /// most `timeout` from now (at most a year). Dropping the future
    /// cancels the request.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Failed`] (an `Error` frame: no provider, provider
    /// gone, broker timeout, busy, or the provider's own error),
    /// [`BrokerError::Timeout`], [`BrokerError::Disconnected`],
    /// [`BrokerError::ResponseTooLarge`], [`BrokerError::TooManyPending`].
    pub async fn request(&self, payload: Bytes, timeout: Duration) -> Result<Bytes, BrokerError> {
        let mut stream = self.stream(timeout).await?;
        stream.write(payload).await?;
        stream.finish().await
    }

    /// Starts a streamed request (sends its `Start` frame); write the data
    /// piece by piece with [`RequestStream::write`], then
    /// [`RequestStream::finish`]. The whole exchange must end within
    /// `timeout` from now.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn stream(&self, timeout: Duration) -> Result<RequestStream, BrokerError> {
        let timeout = timeout.min(MAX_TIMEOUT);
        let now = Instant::now();
        let (id, done) = {
            let mut state = self.inner.lock();
            if let Some(why) = &state.closed {
                return Err(BrokerError::Disconnected(why.clone()));
            }
            let id = state
                .requests
                .start(&mut rand::rng(), now, timeout)
                .map_err(|e| match e {
                    RequestsError::TooManyPending { .. } => BrokerError::TooManyPending,
                    other => BrokerError::Config(other.to_string()),
                })?;
            let (tx, rx) = oneshot::channel();
            state.waiters.insert(
                id,
                Waiter {
                    parts: Vec::new(),
                    size: 0,
                    done: tx,
                },
            );
            (id, rx)
        };
        let mut stream = RequestStream {
            inner: Arc::clone(&self.inner),
            id,
            deadline: now + timeout,
            done,
            early: None,
            finished: false,
        };
        stream
            .send(Frame::new(FrameType::Start, id, Bytes::new()))
            .await?;
        Ok(stream)
    }

    /// Requests waiting for their response.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.inner.lock().requests.pending()
    }

    /// Closes the connection; pending requests fail with
    /// [`BrokerError::Disconnected`].
    pub fn close(&self) {
        self.inner.client.close();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a frame from the broker and settles the requests it concerns.
    fn on_frame(&self, frame: Frame) {
        let mut state = self.lock();
        if let Err(e) = state.requests.handle_frame(frame) {
            drop(state);
            self.fail_all(&format!("broker protocol violation: {e}"));
            if let Some(session) = self.client.session() {
                session.abort();
            }
            return;
        }
        let cancels = self.settle(&mut state);
        drop(state);
        for frame in cancels {
            send_soon(self.rt, &self.client, &self.framer, &frame);
        }
    }

    /// Drains the core's events into the waiters; returns the frames that
    /// cancel requests at the broker.
    fn settle(&self, state: &mut State) -> Vec<Frame> {
        let mut cancels = Vec::new();
        while let Some(event) = state.requests.poll_event() {
            match event {
                RequestEvent::Response {
                    request_id,
                    payload,
                    last,
                } => {
                    let Some(waiter) = state.waiters.get_mut(&request_id) else {
                        continue;
                    };
                    let size = waiter.size.saturating_add(payload.len());
                    if size > self.max_response {
                        if let Some(w) = state.waiters.remove(&request_id) {
                            let max = self.max_response;
                            let _ = w.done.send(Err(BrokerError::ResponseTooLarge { max }));
                        }
                        cancels.extend(state.requests.cancel(request_id));
                        continue;
                    }
                    waiter.size = size;
                    waiter.parts.push(payload);
                    if last {
                        if let Some(w) = state.waiters.remove(&request_id) {
                            let _ = w.done.send(Ok(concat(w.parts, w.size)));
                        }
                    }
                }
                RequestEvent::Failed { request_id, error } => {
                    if let Some(w) = state.waiters.remove(&request_id) {
                        let _ = w.done.send(Err(BrokerError::failed(&error)));
                    }
                }
                RequestEvent::TimedOut(request_id) => {
                    if let Some(w) = state.waiters.remove(&request_id) {
                        let _ = w.done.send(Err(BrokerError::Timeout));
                    }
                    // Tell the broker, so the provider can stop.
                    let why = ErrorPayload::new(ErrorCode::CANCELLED, "timed out at the consumer");
                    cancels.push(Frame::new(FrameType::Error, request_id, why.encode()));
                }
                _ => {}
            }
        }
        cancels
    }

    /// The connection is gone: every pending request fails.
    fn fail_all(&self, why: &str) {
        let mut state = self.lock();
        state.closed.get_or_insert_with(|| why.to_owned());
        for (id, waiter) in std::mem::take(&mut state.waiters) {
            let _ = state.requests.cancel(id);
            let _ = waiter
                .done
                .send(Err(BrokerError::Disconnected(why.to_owned())));
        }
    }

    /// Forgets a request the caller gave up on and tells the broker.
    fn cancel(&self, id: RequestId) {
        let mut state = self.lock();
        state.waiters.remove(&id);
        let frame = state.requests.cancel(id);
        drop(state);
        if let Some(frame) = frame {
            send_soon(self.rt, &self.client, &self.framer, &frame);
        }
    }

    /// Runs the core's timer for requests due by now.
    fn expire(&self) {
        let mut state = self.lock();
        state.requests.handle_timeout(Instant::now());
        let cancels = self.settle(&mut state);
        drop(state);
        for frame in cancels {
            send_soon(self.rt, &self.client, &self.framer, &frame);
        }
    }
}

/// Hands the connection's frames to the consumer until it closes.
async fn dispatch(inner: Weak<Inner>, mut inbound: Inbox) {
    let why = loop {
        let Some(incoming) = inbound.recv().await else {
            break "connection ended".to_owned();
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match incoming {
            Incoming::Frame(frame) => inner.on_frame(frame),
            Incoming::Closed(why) => break why,
        }
    };
    if let Some(inner) = inner.upgrade() {
        inner.fail_all(&why);
    }
}

/// A request under way: write its data, then wait for the response.
/// Dropping it before the response arrived cancels the request at the
/// broker (and the provider is told).
#[must_use = "dropping a RequestStream cancels its request"]
pub struct RequestStream {
    inner: Arc<Inner>,
    id: RequestId,
    deadline: Instant,
    done: oneshot::Receiver<Result<Bytes, BrokerError>>,
    /// A successful response that arrived before the request was sent.
    early: Option<Bytes>,
    finished: bool,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RequestStream {
    /// The request's id.
    #[must_use]
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Sends `data` as `Chunk` frames of at most the frame size, waiting
    /// whenever the connection is backpressured. Stops early with the
    /// request's error when the broker has already failed it (no provider,
    /// busy, …): error frames overtake the data.
    ///
    /// # Errors
    ///
    /// As [`Consumer::request`].
    pub async fn write(&mut self, data: Bytes) -> Result<(), BrokerError> {
        let streamer = Streamer::new(self.id, Bytes::new(), data, self.inner.chunk_size)
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        for frame in streamer.filter(|f| f.frame_type == FrameType::Chunk) {
            self.send(frame).await?;
        }
        Ok(())
    }

    /// Ends the request (sends `End`) and waits for the response.
    ///
    /// # Errors
    ///
    /// As [`Consumer::request`].
    pub async fn finish(mut self) -> Result<Bytes, BrokerError> {
        self.send(Frame::new(FrameType::End, self.id, Bytes::new()))
            .await?;
        if let Some(early) = self.early.take() {
            self.finished = true;
            return Ok(early);
        }
        loop {
            match self.inner.rt.until(self.deadline, &mut self.done).await {
                Some(outcome) => {
                    self.finished = true;
                    return outcome.unwrap_or_else(|_| {
                        Err(BrokerError::Disconnected("consumer closed".to_owned()))
                    });
                }
                None => {
                    // Due: the core times it out (and any other due request).
                    self.inner.expire();
                    if self.inner.lock().requests.is_pending(self.id) {
                        self.inner.cancel(self.id);
                        self.finished = true;
                        return Err(BrokerError::Timeout);
                    }
                }
            }
        }
    }

    /// Cancels the request: the broker and the provider are told.
    pub fn cancel(mut self) {
        self.finished = true;
        self.inner.cancel(self.id);
    }

    /// Sends one frame of this request, unless it is already settled.
    async fn send(&mut self, frame: Frame) -> Result<(), BrokerError> {
        match self.done.try_recv() {
            Ok(Ok(response)) => self.early = Some(response),
            Ok(Err(e)) => {
                self.finished = true;
                return Err(e);
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
            Err(oneshot::error::TryRecvError::Closed) => {
                self.finished = true;
                return Err(BrokerError::Disconnected("consumer closed".to_owned()));
            }
        }
        if self.early.is_some() {
            return Ok(());
        }
        let sent = send(&self.inner.client, &self.inner.framer, &frame);
        match self.inner.rt.until(self.deadline, sent).await {
            Some(result) => result,
            None => {
                self.finished = true;
                self.inner.cancel(self.id);
                Err(BrokerError::Timeout)
            }
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.cancel(self.id);
        }
    }
}
