//! The provider: registers on a channel and answers requests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use storm_async::Runtime;
use storm_host::options::ClientOptions;
use storm_proto::broker::{
    AssembleError, Assembler, AssemblerConfig, BrokerFramer, ChannelId, ClientId, ErrorCode,
    ErrorPayload, FLAG_MORE, Frame, FrameConfig, FrameType, Registration, RequestId,
    ResponseStreamer, Role, RoutingInfo,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

pub(super) mod on_std;

use super::BrokerError;
use super::client::{Client, Connection, Inbox, Incoming, Rt, send, send_soon};

/// How a [`Provider`] connects and what it accepts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// Connect timeout (also bounds the registration), socket options and
    /// send backpressure, TLS ([`ClientOptions::tls`]: required for a
    /// broker that serves TLS). Default: [`ClientOptions::default`].
    /// The slow-consumer policy is always `Wait` (frames are never
    /// dropped); `reconnect` must stay off (a registration does not survive
    /// a reconnect).
    pub client: ClientOptions,
    /// Largest frame payload; responses are sent in pieces of this size.
    /// Must match the broker's. Default 1 MiB.
    pub frame: FrameConfig,
    /// Limits on requests being received whole, for
    /// [`serve`](Provider::serve): largest request (default 64 MiB), open
    /// requests, bytes buffered for all of them, and how long one may take
    /// to arrive (see [`AssemblerConfig`]).
    /// [`serve_streamed`](Provider::serve_streamed) buffers nothing whole
    /// and has no such limits.
    pub assembler: AssemblerConfig,
    /// Handlers running at once. Under [`serve`](Provider::serve), when
    /// all are busy the provider stops reading (the broker then queues, and
    /// at its limit answers `BUSY`); under
    /// [`serve_streamed`](Provider::serve_streamed) a request that starts
    /// then is answered `BUSY` at once. Default 64.
    pub max_concurrent: usize,
    /// The client id to register with; `None` picks a random one.
    pub client_id: Option<ClientId>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            frame: FrameConfig::default(),
            assembler: AssemblerConfig::default(),
            max_concurrent: 64,
            client_id: None,
        }
    }
}

/// One request, as a provider's handler gets it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The id the broker gave it (not the consumer's).
    pub id: RequestId,
    /// Which consumer sent it, on which channel.
    pub from: RoutingInfo,
    /// The consumer's `Start` header (usually empty).
    pub header: Bytes,
    /// The data.
    pub payload: Bytes,
}

/// One request as a streaming handler
/// ([`Provider::serve_streamed`]) gets it: who sent it and its header at
/// once, its data piece by piece as it arrives.
#[derive(Debug)]
#[non_exhaustive]
pub struct StreamedRequest {
    /// The id the broker gave it (not the consumer's).
    pub id: RequestId,
    /// Which consumer sent it, on which channel.
    pub from: RoutingInfo,
    /// The consumer's `Start` header (usually empty).
    pub header: Bytes,
    /// The data.
    pub body: RequestBody,
}

/// The data of a [`StreamedRequest`], one `Chunk` payload at a time.
///
/// At most [`BODY_FRAMES`] pieces wait here; while the handler does not
/// take them, the provider stops reading its connection, so the broker's
/// flow control slows the consumer down to the handler's pace.
#[derive(Debug)]
pub struct RequestBody {
    rx: mpsc::Receiver<Bytes>,
}

/// Pieces of request data a [`RequestBody`] holds before the provider
/// stops reading (each at most the frame size: 4 MiB with the default
/// 1 MiB frames).
pub const BODY_FRAMES: usize = 4;

impl RequestBody {
    /// The next piece of data, in order; `None` after the request's `End`.
    /// (A request that is cancelled or times out has its handler aborted
    /// instead.) Cancel-safe.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

/// Sends the first part of a response while a streaming handler
/// ([`Provider::serve_streamed`]) runs; what the handler returns ends it.
#[derive(Debug)]
pub struct Responder {
    client: Client,
    framer: BrokerFramer,
    id: RequestId,
    chunk_size: usize,
}

impl Responder {
    /// Sends `data` as the response's next pieces (`Response` frames of at
    /// most the frame size, each flagged "more follows"), waiting while the
    /// connection is backpressured. Empty data sends nothing.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Disconnected`] if the connection is gone.
    pub async fn write(&mut self, data: Bytes) -> Result<(), BrokerError> {
        if data.is_empty() {
            return Ok(());
        }
        let pieces = ResponseStreamer::new(self.id, data, self.chunk_size)
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        for mut frame in pieces {
            frame.flags |= FLAG_MORE;
            send(&self.client, &self.framer, &frame).await?;
        }
        Ok(())
    }
}

/// A provider registered on a channel; [`serve`](Self::serve) answers its
/// requests whole, [`serve_streamed`](Self::serve_streamed) as streams.
/// Runs on tokio ([`connect`](Self::connect)) or smol
/// ([`connect_on`](Self::connect_on)`::<storm_smol::Smol>`); the broker it
/// talks to may run on any runtime.
pub struct Provider {
    conn: Connection,
    handle: ProviderHandle,
    chunk_size: usize,
    assembler: AssemblerConfig,
    max_concurrent: usize,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").finish_non_exhaustive()
    }
}

/// Closes a [`Provider`] from anywhere. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProviderHandle {
    client: Client,
    closing: Arc<AtomicBool>,
}

impl ProviderHandle {
    /// Closes the connection gracefully; [`Provider::serve`] returns
    /// `Ok(())`. Requests in flight fail at their consumers with
    /// `PROVIDER_GONE`.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.client.close();
    }

    /// Drops the connection at once, as a crashing provider would.
    pub fn abort(&self) {
        if let Some(session) = self.client.session() {
            session.abort();
        }
    }
}

impl Provider {
    /// Connects to the broker at `addr` and registers on `channel`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Connect`], [`BrokerError::Timeout`],
    /// [`BrokerError::Failed`] (refused), [`BrokerError::Config`].
    pub async fn connect(
        addr: &str,
        channel: ChannelId,
        options: ProviderOptions,
    ) -> Result<Self, BrokerError> {
        Self::open(Rt::tokio(), addr, channel, options).await
    }

    /// Connects like [`connect`](Self::connect), on runtime `R` (tokio's
    /// or smol's): the handlers' tasks run there, so call it, and serve,
    /// inside `R`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_on<R: Runtime>(
        addr: &str,
        channel: ChannelId,
        options: ProviderOptions,
    ) -> Result<Self, BrokerError> {
        Self::open(Rt::of::<R>(), addr, channel, options).await
    }

    /// Connects and registers on `rt` (also storm-std's: `on_std`).
    pub(super) async fn open(
        rt: Rt,
        addr: &str,
        channel: ChannelId,
        options: ProviderOptions,
    ) -> Result<Self, BrokerError> {
        if options.max_concurrent == 0 {
            return Err(BrokerError::Config(
                "max_concurrent must not be zero".into(),
            ));
        }
        // Checked before connecting.
        drop(Assembler::new(options.assembler.clone())?);
        let registration = Registration {
            role: Role::Provider,
            client_id: options
                .client_id
                .unwrap_or_else(|| ClientId::random(&mut rand::rng())),
            channel_id: channel,
            timeout: Duration::ZERO,
        };
        let chunk_size = options.frame.max_payload;
        let conn = Connection::open(rt, addr, options.client, options.frame, registration).await?;
        let handle = ProviderHandle {
            client: conn.client.clone(),
            closing: Arc::new(AtomicBool::new(false)),
        };
        Ok(Self {
            conn,
            handle,
            chunk_size,
            assembler: options.assembler,
            max_concurrent: options.max_concurrent,
        })
    }

    /// A handle that closes the provider.
    #[must_use]
    pub fn handle(&self) -> ProviderHandle {
        self.handle.clone()
    }

    /// Answers requests with `handler` until the connection ends. Each
    /// request runs in its own task (at most `max_concurrent` at once); its
    /// `Ok` becomes the response (sent in pieces with flow control), its
    /// `Err` an `Error` frame to the consumer. A request the consumer
    /// cancels, or the broker times out, has its task aborted.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Disconnected`] when the connection ends other than by
    /// [`ProviderHandle::close`].
    pub async fn serve<F, Fut>(self, handler: F) -> Result<(), BrokerError>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
    {
        self.serve_with(move |request, _| handler(request)).await
    }

    /// [`serve`](Self::serve), each handler also given its request's
    /// [`Cancelled`] (for blocking handlers, which cannot be stopped).
    pub(super) async fn serve_with<F, Fut>(self, handler: F) -> Result<(), BrokerError>
    where
        F: Fn(Request, Arc<Cancelled>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
    {
        let mut assembler = Assembler::new(self.assembler.clone())?;
        let (mut serving, mut inbound) = Serving::new(self);
        let handler = Arc::new(handler);
        let why = loop {
            let frame = match serving.next_frame(&mut inbound).await {
                Ok(frame) => frame,
                Err(why) => break why,
            };
            let id = frame.request_id;
            match frame.frame_type {
                FrameType::Error => {
                    assembler.cancel(id);
                    serving.cancel(id);
                }
                FrameType::Start | FrameType::Chunk | FrameType::End => {
                    let now = Instant::now();
                    assembler.handle_timeout(now);
                    while assembler.poll_expired().is_some() {}
                    let message = match assembler.handle_frame(frame, now) {
                        Ok(Some(message)) => message,
                        Ok(None) => continue,
                        Err(e) => {
                            refuse(&serving, id, &e);
                            continue;
                        }
                    };
                    let Some((from, header)) = serving.routing(id, &message.header) else {
                        continue;
                    };
                    // All handlers busy: stop reading until one finishes.
                    let Ok(permit) = Arc::clone(&serving.permits).acquire_owned().await else {
                        break "closed".to_owned();
                    };
                    let request = Request {
                        id,
                        from,
                        header,
                        payload: message.payload,
                    };
                    let handler = Arc::clone(&handler);
                    serving.spawn(id, permit, move |cancelled| handler(request, cancelled));
                }
                // The broker sends providers nothing else; ignore.
                _ => {}
            }
        };
        serving.end(why)
    }

    /// Answers requests as streams until the connection ends: `handler`
    /// runs as soon as a request's `Start` arrives (in its own task, at
    /// most `max_concurrent` at once) and reads the data piece by piece
    /// from [`StreamedRequest::body`], so a request of any size costs a few
    /// frames of memory. It may send the response's first part with the
    /// [`Responder`] as it goes; its `Ok` is the response's last part (sent
    /// in pieces with flow control), its `Err` an `Error` frame to the
    /// consumer. A request the consumer cancels, or the broker times out,
    /// has its task aborted.
    ///
    /// A request that starts while `max_concurrent` handlers run is
    /// answered `BUSY` at once: waiting for a handler to finish could wait
    /// for ever, since running handlers may be waiting for data that is
    /// behind the new request on the connection.
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub async fn serve_streamed<F, Fut>(self, handler: F) -> Result<(), BrokerError>
    where
        F: Fn(StreamedRequest, Responder) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
    {
        self.serve_streamed_with(move |request, responder, _| handler(request, responder))
            .await
    }

    /// [`serve_streamed`](Self::serve_streamed), each handler also given
    /// its request's [`Cancelled`].
    pub(super) async fn serve_streamed_with<F, Fut>(self, handler: F) -> Result<(), BrokerError>
    where
        F: Fn(StreamedRequest, Responder, Arc<Cancelled>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
    {
        let max_concurrent = self.max_concurrent;
        let (mut serving, mut inbound) = Serving::new(self);
        let handler = Arc::new(handler);
        // The data of the requests whose `End` has not arrived.
        let mut bodies: HashMap<RequestId, mpsc::Sender<Bytes>> = HashMap::new();
        let why = loop {
            let frame = match serving.next_frame(&mut inbound).await {
                Ok(frame) => frame,
                Err(why) => break why,
            };
            let id = frame.request_id;
            match frame.frame_type {
                FrameType::Error => {
                    bodies.remove(&id);
                    serving.cancel(id);
                }
                FrameType::Start => {
                    let Some((from, header)) = serving.routing(id, &frame.payload) else {
                        continue;
                    };
                    let Ok(permit) = Arc::clone(&serving.permits).try_acquire_owned() else {
                        let why = ErrorPayload::new(
                            ErrorCode::BUSY,
                            format!("all {max_concurrent} handlers of the provider are busy"),
                        );
                        serving.send_soon(&error_frame(id, &why));
                        continue;
                    };
                    let (tx, rx) = mpsc::channel(BODY_FRAMES);
                    bodies.insert(id, tx);
                    let request = StreamedRequest {
                        id,
                        from,
                        header,
                        body: RequestBody { rx },
                    };
                    let responder = Responder {
                        client: serving.client.clone(),
                        framer: serving.framer.clone(),
                        id,
                        chunk_size: serving.chunk_size,
                    };
                    let handler = Arc::clone(&handler);
                    serving.spawn(id, permit, move |cancelled| {
                        handler(request, responder, cancelled)
                    });
                }
                FrameType::Chunk => {
                    // None: the request was refused, answered or cancelled
                    // (the broker knows); its data goes nowhere.
                    let Some(body) = bodies.get(&id) else {
                        continue;
                    };
                    // A full body stops the reading here: flow control.
                    if body.send(frame.payload).await.is_err() {
                        // The handler returned without reading it all.
                        bodies.remove(&id);
                    }
                }
                FrameType::End => {
                    // Dropping the sender ends the body.
                    bodies.remove(&id);
                }
                // The broker sends providers nothing else; ignore.
                _ => {}
            }
        };
        serving.end(why)
    }
}

/// What both ways of serving share: the connection's sending side, and the
/// handler tasks (one per request, each holding a permit).
struct Serving {
    rt: Rt,
    client: Client,
    framer: BrokerFramer,
    handle: ProviderHandle,
    chunk_size: usize,
    permits: Arc<Semaphore>,
    /// The handlers running, each stopped (or, blocking, told) when its
    /// [`Stop`] here is dropped.
    running: HashMap<RequestId, Stop>,
}

impl Serving {
    fn new(provider: Provider) -> (Self, Inbox) {
        let Connection {
            rt,
            client,
            framer,
            inbound,
        } = provider.conn;
        let serving = Self {
            rt,
            client,
            framer,
            handle: provider.handle,
            chunk_size: provider.chunk_size,
            permits: Arc::new(Semaphore::new(provider.max_concurrent)),
            running: HashMap::new(),
        };
        (serving, inbound)
    }

    /// The next frame from the broker, forgetting the handler tasks that
    /// ended; `Err` with why once the connection has ended.
    async fn next_frame(&mut self, inbound: &mut Inbox) -> Result<Frame, String> {
        let incoming = inbound.recv().await;
        self.running.retain(|_, stop| !stop.task.is_closed());
        match incoming {
            Some(Incoming::Frame(frame)) => Ok(frame),
            Some(Incoming::Closed(why)) => Err(why),
            None => Err("connection ended".to_owned()),
        }
    }

    /// Sends a small control frame without waiting (see [`send_soon`]).
    fn send_soon(&self, frame: &Frame) {
        send_soon(self.rt, &self.client, &self.framer, frame);
    }

    /// Splits the routing info off a forwarded `Start` payload, or answers
    /// the request with `BAD_REQUEST` (`None`).
    fn routing(&self, id: RequestId, payload: &Bytes) -> Option<(RoutingInfo, Bytes)> {
        let split = RoutingInfo::split(payload).ok();
        if split.is_none() {
            let why = ErrorPayload::new(ErrorCode::BAD_REQUEST, "no routing info");
            self.send_soon(&error_frame(id, &why));
        }
        split
    }

    /// Runs request `id`'s handler (`answer`, called in the task) holding
    /// `permit`, and sends what it returns as the answer.
    fn spawn<Fut>(
        &mut self,
        id: RequestId,
        permit: OwnedSemaphorePermit,
        answer: impl FnOnce(Arc<Cancelled>) -> Fut + Send + 'static,
    ) where
        Fut: Future<Output = Result<Bytes, ErrorPayload>> + Send + 'static,
    {
        let (client, framer, chunk_size) =
            (self.client.clone(), self.framer.clone(), self.chunk_size);
        let (task, mut stopped) = oneshot::channel::<()>();
        let cancelled = Arc::new(Cancelled::default());
        let stop = Stop {
            task,
            cancelled: Arc::clone(&cancelled),
        };
        self.rt.spawn(async move {
            let _permit = permit;
            // Dropping `stop` ends each race, and with it the handler or
            // the sending of its answer.
            let told = Arc::clone(&cancelled);
            let answered = smol::future::or(async { Some(answer(told).await) }, async {
                let _ = (&mut stopped).await;
                None
            })
            .await;
            // A blocking handler (on storm-std) cannot be stopped while it
            // runs: the answer of a request cancelled meanwhile is dropped.
            let Some(result) = answered.filter(|_| !cancelled.is_cancelled()) else {
                return;
            };
            smol::future::or(respond(&client, &framer, id, result, chunk_size), async {
                let _ = stopped.await;
            })
            .await;
        });
        self.running.insert(id, stop);
    }

    /// Request `id` was cancelled, or timed out at the broker: its handler
    /// stops.
    fn cancel(&mut self, id: RequestId) {
        // Dropping its sender stops the task.
        self.running.remove(&id);
    }

    /// How serving ends once the connection has: handlers stop; `Ok` if
    /// the provider was closed on purpose.
    fn end(mut self, why: String) -> Result<(), BrokerError> {
        self.running.clear();
        if self.handle.closing.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BrokerError::Disconnected(why))
        }
    }
}

/// A running handler's stop: dropping it ends the race its task runs (an
/// async handler is dropped) and tells a blocking one ([`Cancelled`]).
struct Stop {
    /// Closed once the task has ended.
    task: oneshot::Sender<()>,
    cancelled: Arc<Cancelled>,
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.cancelled.cancel();
    }
}

/// Tells a blocking handler (on storm-std) that nobody waits for its
/// answer any more: the request was cancelled (by its consumer, or at the
/// broker's timeout) or the connection ended.
#[derive(Debug, Default)]
pub(super) struct Cancelled {
    cancelled: Mutex<bool>,
    wake: Condvar,
}

impl Cancelled {
    fn cancel(&self) {
        *self.lock() = true;
        self.wake.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.cancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the request was cancelled.
    pub(super) fn is_cancelled(&self) -> bool {
        *self.lock()
    }

    /// Blocks up to `limit`, returning early with `true` once cancelled.
    pub(super) fn wait(&self, limit: Duration) -> bool {
        let start = Instant::now();
        let mut cancelled = self.lock();
        while !*cancelled {
            let Some(left) = limit.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) else {
                return false;
            };
            cancelled = self
                .wake
                .wait_timeout(cancelled, left)
                .map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
        }
        true
    }
}

fn error_frame(id: RequestId, error: &ErrorPayload) -> Frame {
    Frame::new(FrameType::Error, id, error.encode())
}

/// Answers a request the assembler refused, when it says which one.
fn refuse(serving: &Serving, id: RequestId, error: &AssembleError) {
    let code = match error {
        AssembleError::MessageTooLarge { .. } => ErrorCode::BAD_REQUEST,
        AssembleError::BufferFull { .. } | AssembleError::TooManyOpen { .. } => ErrorCode::BUSY,
        // A chunk of a request already cancelled or refused: nothing to say.
        _ => return,
    };
    let why = ErrorPayload {
        code,
        message: error.to_string().into(),
    };
    serving.send_soon(&error_frame(id, &why));
}

/// Sends the handler's answer: the response in pieces, or an error.
async fn respond(
    client: &Client,
    framer: &BrokerFramer,
    id: RequestId,
    result: Result<Bytes, ErrorPayload>,
    chunk_size: usize,
) {
    match result {
        Ok(response) => {
            let Ok(pieces) = ResponseStreamer::new(id, response, chunk_size) else {
                return;
            };
            for frame in pieces {
                if send(client, framer, &frame).await.is_err() {
                    return;
                }
            }
        }
        Err(error) => {
            let _ = send(client, framer, &error_frame(id, &error)).await;
        }
    }
}
