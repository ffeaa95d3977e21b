//! What consumers and providers share: connecting, registering, handing
//! decoded frames to their owner, and the runtime they run on ([`Rt`]):
//! tokio or smol (storm-async's clients, tasks and timers), or storm-std
//! (its blocking client, a thread per task, smol's timer; the blocking
//! flavours in `consumer/on_std.rs` and `provider/on_std.rs` wait on the
//! caller's thread). Every decision is written once, over [`Rt`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use storm_async::{Runtime, TcpClient};
use storm_host::hub::SendOutcome;
use storm_host::link::CloseReason;
use storm_host::options::ClientOptions;
use storm_host::session::{ClientError, Session};
use storm_proto::Message;
use storm_proto::backpressure::SlowConsumerPolicy;
use storm_proto::broker::{
    BrokerFramer, ErrorPayload, Frame, FrameConfig, FrameType, Registration, RequestId,
};
use storm_proto::framing::Framing;
use tokio::sync::{Semaphore, mpsc};

use super::BrokerError;

/// Frames decoded but not yet taken by the owner; more wait in the socket
/// (the connection stops reading while this is full).
const INBOUND_CAPACITY: usize = 64;
/// Payload bytes of the frames decoded but not yet taken by the owner: the
/// connection also stops reading at this many (a larger frame waits until
/// the owner has taken everything before it), so an owner that takes its
/// frames slowly holds a few MiB, not 64 frames of up to `max_frame` each.
const INBOUND_BYTES: usize = 4 * 1024 * 1024;

/// The bytes a frame counts against [`INBOUND_BYTES`].
fn inbound_cost(frame: &Frame) -> u32 {
    // At most INBOUND_BYTES, which fits a u32.
    u32::try_from(frame.payload.len().min(INBOUND_BYTES)).unwrap_or(u32::MAX)
}

/// What the connection hands its owner.
pub(super) enum Incoming {
    /// A frame from the broker.
    Frame(Frame),
    /// The connection ended (the last item).
    Closed(String),
}

/// A task or a timer of the runtime a consumer or provider runs on.
pub(super) type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A connection being made on the runtime a consumer or provider runs on.
type Connecting = Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send + 'static>>;

/// The client of a consumer's or provider's connection: storm-async's
/// (tokio, smol) or storm-std's. Both hand out the same [`Session`], which
/// sends by waiting asynchronously on any executor.
#[derive(Clone)]
pub(super) enum Client {
    Async(storm_async::Client),
    Std(storm_std::Client),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Async(client) => client.fmt(f),
            Self::Std(_) => f.write_str("Client(storm-std)"),
        }
    }
}

impl Client {
    /// The connection's session, while it is up.
    pub(super) fn session(&self) -> Option<Session> {
        match self {
            Self::Async(client) => client.session(),
            Self::Std(client) => client.session(),
        }
    }

    /// Closes the connection gracefully.
    pub(super) fn close(&self) {
        match self {
            Self::Async(client) => client.close(),
            Self::Std(client) => client.close(),
        }
    }

    /// Sends `message`, waiting (asynchronously) while the connection is
    /// backpressured.
    async fn send(&self, message: impl Into<Message>) -> Result<(), ClientError> {
        let session = self.session().ok_or(ClientError::NotConnected)?;
        session.send(message).await.map_err(ClientError::Send)
    }
}

/// The runtime a consumer or provider runs on, as what they use of it:
/// connecting, spawning a task and the timer. Function pointers, so that
/// [`Consumer`](super::Consumer) and [`Provider`](super::Provider) are one
/// type on every runtime, storm-std's included.
#[derive(Clone, Copy)]
pub(super) struct Rt {
    spawn: fn(Task),
    sleep_until: fn(Instant) -> Task,
    connect: fn(String, ClientOptions, Framing, Inbound) -> Connecting,
}

impl Rt {
    /// Runtime `R`'s: spawning works only inside it.
    pub(super) fn of<R: Runtime>() -> Self {
        Self {
            spawn: |task| R::spawn(task),
            sleep_until: |deadline| Box::pin(R::sleep_until(deadline)),
            connect: |addr, options, framing, inbound| {
                Box::pin(async move {
                    TcpClient::<R>::connect(&addr, options, framing, inbound)
                        .await
                        .map(Client::Async)
                })
            },
        }
    }

    /// storm-std's: its blocking client (connecting blocks the thread that
    /// waits for it), a thread of its own for every task (a provider's
    /// handlers, a consumer's dispatcher), and smol's timer. A task whose
    /// thread cannot be started is dropped (a handler's request then times
    /// out at the broker).
    pub(super) fn std() -> Self {
        Self {
            spawn: |task| {
                let _ = std::thread::Builder::new()
                    .name("storm-broker-client".to_owned())
                    .spawn(move || smol::future::block_on(task));
            },
            sleep_until: |deadline| {
                Box::pin(async move {
                    smol::Timer::at(deadline).await;
                })
            },
            connect: |addr, options, framing, inbound| {
                Box::pin(async move {
                    storm_std::TcpClient::connect(&addr, options, framing, inbound).map(Client::Std)
                })
            },
        }
    }

    /// tokio's, as `Consumer::connect` and `Provider::connect` always ran:
    /// spawning outside a tokio runtime (a cancel sent from `Drop` there)
    /// does nothing.
    pub(super) fn tokio() -> Self {
        Self {
            spawn: |task| {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(task);
                }
            },
            ..Self::of::<storm_tokio::Tokio>()
        }
    }

    /// Runs `task` on its own.
    pub(super) fn spawn(self, task: impl Future<Output = ()> + Send + 'static) {
        (self.spawn)(Box::pin(task));
    }

    /// `future`'s output, or `None` once `deadline` has passed first.
    pub(super) async fn until<T>(
        self,
        deadline: Instant,
        future: impl Future<Output = T>,
    ) -> Option<T> {
        let timer = (self.sleep_until)(deadline);
        smol::future::or(async { Some(future.await) }, async {
            timer.await;
            None
        })
        .await
    }
}

/// The handler of a consumer's or provider's connection.
pub(super) struct Inbound {
    tx: mpsc::Sender<Incoming>,
    framer: BrokerFramer,
    /// Permits for [`INBOUND_BYTES`], returned by [`Inbox::recv`].
    room: Arc<Semaphore>,
}

impl storm_async::Handler for Inbound {
    async fn on_message(&self, session: &Session, message: Message) {
        self.message(session, message).await;
    }

    async fn on_disconnect(&self, _session: &Session, reason: &CloseReason) {
        self.disconnected(reason).await;
    }
}

/// On storm-std's reader thread: waiting there holds the reading back.
impl storm_std::Handler for Inbound {
    fn on_message(&self, session: &Session, message: Message) {
        smol::future::block_on(self.message(session, message));
    }

    fn on_disconnect(&self, _session: &Session, reason: &CloseReason) {
        smol::future::block_on(self.disconnected(reason));
    }
}

impl Inbound {
    /// Hands a frame to the owner, waiting while it is [`INBOUND_BYTES`]
    /// or [`INBOUND_CAPACITY`] behind.
    async fn message(&self, session: &Session, message: Message) {
        match self.framer.parse(message.into_bytes()) {
            Ok(frame) => {
                // Waiting here stops the connection's reading.
                match self.room.acquire_many(inbound_cost(&frame)).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                let _ = self.tx.send(Incoming::Frame(frame)).await;
            }
            Err(e) => {
                let why = format!("broker sent a malformed frame: {e}");
                let _ = self.tx.send(Incoming::Closed(why)).await;
                session.abort();
            }
        }
    }

    async fn disconnected(&self, reason: &CloseReason) {
        let _ = self.tx.send(Incoming::Closed(reason.to_string())).await;
    }
}

/// What a connection hands its owner, bounded in frames and in bytes.
pub(super) struct Inbox {
    rx: mpsc::Receiver<Incoming>,
    room: Arc<Semaphore>,
}

impl Inbox {
    /// The next item; `None` once the connection's handler is gone.
    /// Cancel-safe.
    pub(super) async fn recv(&mut self) -> Option<Incoming> {
        let incoming = self.rx.recv().await;
        if let Some(Incoming::Frame(frame)) = &incoming {
            self.room.add_permits(inbound_cost(frame) as usize);
        }
        incoming
    }
}

/// A registered connection to a broker.
pub(super) struct Connection {
    pub(super) rt: Rt,
    pub(super) client: Client,
    pub(super) framer: BrokerFramer,
    pub(super) inbound: Inbox,
}

impl Connection {
    /// Connects on `rt`, registers, and waits (at most
    /// `options.connect_timeout`) for the broker's acknowledgement.
    pub(super) async fn open(
        rt: Rt,
        addr: &str,
        options: ClientOptions,
        frame: FrameConfig,
        registration: Registration,
    ) -> Result<Self, BrokerError> {
        if options.reconnect.is_some() {
            return Err(BrokerError::Config(
                "reconnect is not supported: a registration does not survive it".to_owned(),
            ));
        }
        let framer = BrokerFramer::new(frame.clone())?;
        let framing = BrokerFramer::framing(frame)?;
        let wait = options.connect_timeout;
        // Frames are never dropped for a slow connection: senders wait.
        let mut options = options;
        options.backpressure.slow_consumer_policy = SlowConsumerPolicy::Wait;
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let room = Arc::new(Semaphore::new(INBOUND_BYTES));
        let mut inbound = Inbox {
            rx,
            room: Arc::clone(&room),
        };
        let handler = Inbound {
            tx,
            framer: framer.clone(),
            room,
        };
        let client = (rt.connect)(addr.to_owned(), options, framing, handler)
            .await
            .map_err(BrokerError::Connect)?;
        let id = RequestId::random(&mut rand::rng());
        let start = Frame::new(FrameType::Start, id, registration.encode());
        let acked = async {
            send(&client, &framer, &start).await?;
            match inbound.recv().await {
                Some(Incoming::Frame(f)) if f.request_id == id => match f.frame_type {
                    FrameType::Response => Ok(()),
                    FrameType::Error => Err(BrokerError::failed(&ErrorPayload::decode(&f.payload))),
                    other => Err(BrokerError::Protocol(format!(
                        "registration answered with {other:?}"
                    ))),
                },
                Some(Incoming::Frame(f)) => Err(BrokerError::Protocol(format!(
                    "expected the registration acknowledgement, got {:?}",
                    f.frame_type
                ))),
                Some(Incoming::Closed(why)) => Err(BrokerError::Disconnected(why)),
                None => Err(BrokerError::Disconnected("connection ended".to_owned())),
            }
        };
        let result = match Instant::now().checked_add(wait) {
            Some(deadline) => rt.until(deadline, acked).await,
            None => Some(acked.await),
        };
        match result.unwrap_or(Err(BrokerError::Timeout)) {
            Ok(()) => Ok(Self {
                rt,
                client,
                framer,
                inbound,
            }),
            Err(e) => {
                client.close();
                Err(e)
            }
        }
    }
}

/// Sends one frame, waiting while the connection is backpressured.
pub(super) async fn send(
    client: &Client,
    framer: &BrokerFramer,
    frame: &Frame,
) -> Result<(), BrokerError> {
    let message = framer
        .to_message(frame)
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    client
        .send(message)
        .await
        .map_err(|e| BrokerError::Disconnected(e.to_string()))
}

/// Sends a small control frame (a cancellation) without waiting: queued at
/// once, or by a task on `rt` when the connection is backpressured. Works
/// from `Drop` (on tokio, outside a runtime too: then only the immediate
/// attempt).
pub(super) fn send_soon(rt: Rt, client: &Client, framer: &BrokerFramer, frame: &Frame) {
    let (Some(session), Ok(message)) = (client.session(), framer.to_message(frame)) else {
        return;
    };
    if let SendOutcome::Wait(message) = session.try_send(message) {
        rt.spawn(async move {
            let _ = session.send(message).await;
        });
    }
}

/// Bytes of `parts`, concatenated once (no copy for a single part).
pub(super) fn concat(parts: Vec<Bytes>, size: usize) -> Bytes {
    match parts.as_slice() {
        [] => Bytes::new(),
        [one] => one.clone(),
        _ => {
            let mut out = bytes::BytesMut::with_capacity(size);
            parts.iter().for_each(|p| out.extend_from_slice(p));
            out.freeze()
        }
    }
}
