//! The provider: registers on a channel and answers requests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use storm_proto::broker::{
    AssembleError, Assembler, AssemblerConfig, BrokerFramer, ChannelId, ClientId, ErrorCode,
    ErrorPayload, Frame, FrameConfig, FrameType, Registration, RequestId, ResponseStreamer, Role,
    RoutingInfo,
};
use storm_proto::options::ClientOptions;
use storm_tokio::Client;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

use super::BrokerError;
use super::client::{Connection, Incoming, send, send_soon};

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
    /// Limits on requests being received: largest request (default
    /// 64 MiB), open requests, bytes buffered for all of them, and how long
    /// one may take to arrive (see [`AssemblerConfig`]).
    pub assembler: AssemblerConfig,
    /// Handlers running at once; when all are busy the provider stops
    /// reading (the broker then queues, and at its limit answers `BUSY`).
    /// Default 64.
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

/// A provider registered on a channel; [`serve`](Self::serve) answers its
/// requests. Runs on tokio only (the broker it talks to may run on any
/// runtime).
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
            timeout: std::time::Duration::ZERO,
        };
        let chunk_size = options.frame.max_payload;
        let conn = Connection::open(addr, options.client, options.frame, registration).await?;
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
        let Self {
            conn,
            handle,
            chunk_size,
            assembler,
            max_concurrent,
        } = self;
        let Connection {
            client,
            framer,
            mut inbound,
        } = conn;
        let mut assembler = Assembler::new(assembler)?;
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(max_concurrent));
        let mut running: HashMap<RequestId, AbortHandle> = HashMap::new();
        let mut tasks = JoinSet::new();
        let why = loop {
            let incoming = tokio::select! {
                incoming = inbound.recv() => incoming,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let frame = match incoming {
                Some(Incoming::Frame(frame)) => frame,
                Some(Incoming::Closed(why)) => break why,
                None => break "connection ended".to_owned(),
            };
            running.retain(|_, task| !task.is_finished());
            let id = frame.request_id;
            match frame.frame_type {
                FrameType::Error => {
                    // Cancelled, or timed out at the broker: stop working.
                    assembler.cancel(id);
                    if let Some(task) = running.remove(&id) {
                        task.abort();
                    }
                }
                FrameType::Start | FrameType::Chunk | FrameType::End => {
                    let now = Instant::now();
                    assembler.handle_timeout(now);
                    while assembler.poll_expired().is_some() {}
                    let message = match assembler.handle_frame(frame, now) {
                        Ok(Some(message)) => message,
                        Ok(None) => continue,
                        Err(e) => {
                            refuse(&client, &framer, id, &e);
                            continue;
                        }
                    };
                    let Ok((from, header)) = RoutingInfo::split(&message.header) else {
                        let why = ErrorPayload::new(ErrorCode::BAD_REQUEST, "no routing info");
                        send_soon(&client, &framer, &error_frame(id, &why));
                        continue;
                    };
                    // All handlers busy: stop reading until one finishes.
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        break "closed".to_owned();
                    };
                    let request = Request {
                        id,
                        from,
                        header,
                        payload: message.payload,
                    };
                    let (handler, client, framer) =
                        (Arc::clone(&handler), client.clone(), framer.clone());
                    let task = tasks.spawn(async move {
                        let _permit = permit;
                        let result = handler(request).await;
                        respond(&client, &framer, id, result, chunk_size).await;
                    });
                    running.insert(id, task);
                }
                // The broker sends providers nothing else; ignore.
                _ => {}
            }
        };
        tasks.abort_all();
        if handle.closing.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BrokerError::Disconnected(why))
        }
    }
}

fn error_frame(id: RequestId, error: &ErrorPayload) -> Frame {
    Frame::new(FrameType::Error, id, error.encode())
}

/// Answers a request the assembler refused, when it says which one.
fn refuse(client: &Client, framer: &BrokerFramer, id: RequestId, error: &AssembleError) {
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
    send_soon(client, framer, &error_frame(id, &why));
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
