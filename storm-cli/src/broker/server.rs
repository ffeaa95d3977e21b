//! The broker server: the core's [`Router`] behind a [`TcpServer`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use storm_proto::Message;
use storm_proto::backpressure::SlowConsumerPolicy;
use storm_proto::broker::{
    BrokerFramer, ChannelId, ConnId, ErrorCode, ErrorPayload, Frame, FrameConfig, FrameType, Role,
    Router, RouterConfig, RouterEvent, RouterStats,
};
use storm_proto::link::CloseReason;
use storm_proto::options::ServerOptions;
use storm_tokio::{Handler, ServerHandle, Session, TcpServer};
use tokio::sync::Notify;

use super::BrokerError;

/// Everything a [`BrokerServer`] is configured with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerOptions {
    /// Address, socket options, connection limit, per-session send
    /// backpressure. Default: [`ServerOptions::default`] (`127.0.0.1:0`).
    /// The slow-consumer policy is always `Wait`: the router's bounded
    /// queues (and `BUSY`) are the broker's policy, so no frame is dropped
    /// by the session.
    pub server: ServerOptions,
    /// Timeouts and queue limits of the router (see [`RouterConfig`] for
    /// each default). Its `max_frame_payload` is replaced by
    /// `frame.max_payload`.
    pub router: RouterConfig,
    /// The largest frame payload accepted or sent. Default 1 MiB.
    pub frame: FrameConfig,
    /// How long the next frame of a stream under way (a request's `Chunk`
    /// or `End`, a provider's `Response`) waits for its receivers to drain
    /// their queues before it is handed to the router anyway (which then
    /// fails the request with `BUSY` if there is still no room). Default
    /// 30 s.
    pub flow_wait: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            server: ServerOptions::default(),
            router: RouterConfig::default(),
            frame: FrameConfig::default(),
            flow_wait: Duration::from_secs(30),
        }
    }
}

/// A running broker's controls: counters and shutdown. Cheap to clone.
#[derive(Clone)]
pub struct BrokerHandle {
    server: ServerHandle,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("local_addr", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl BrokerHandle {
    /// The router's counters: every frame that did not reach its
    /// destination is counted in one of them.
    #[must_use]
    pub fn stats(&self) -> RouterStats {
        self.shared.lock().router.stats()
    }

    /// Requests in flight.
    #[must_use]
    pub fn open_requests(&self) -> usize {
        self.shared.lock().router.open_requests()
    }

    /// Connections open.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.server.session_count()
    }

    /// Stops accepting, closes every connection (aborting those still open
    /// after `timeout`) and returns when [`BrokerServer::serve`] has.
    pub async fn shutdown(&self, timeout: Duration) {
        self.server.shutdown(timeout).await;
    }
}

/// The broker server.
pub struct BrokerServer {
    server: TcpServer,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BrokerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerServer")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl BrokerServer {
    /// Checks the options and binds.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Config`] for invalid router or frame limits,
    /// [`BrokerError::Io`] for a bad address or a failed bind.
    pub async fn bind(options: BrokerOptions) -> Result<Self, BrokerError> {
        let mut router_config = options.router;
        router_config.max_frame_payload = options.frame.max_payload;
        let half_frames = router_config.max_queued_frames / 2;
        let half_bytes = router_config.max_queued_bytes / 2;
        let router = Router::new(router_config)?;
        let framer = BrokerFramer::new(options.frame.clone())?;
        let framing = BrokerFramer::framing(options.frame)?;
        let mut server_options = options.server;
        server_options.backpressure.slow_consumer_policy = SlowConsumerPolicy::Wait;
        let server = TcpServer::bind(server_options, framing)
            .await
            .map_err(BrokerError::Io)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                router,
                conns: HashMap::new(),
                channels: HashMap::new(),
            }),
            framer,
            timer: Notify::new(),
            drained: Notify::new(),
            flow_wait: options.flow_wait,
            half_frames,
            half_bytes,
        });
        Ok(Self { server, shared })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Counters and shutdown.
    #[must_use]
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            server: self.server.handle(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until [`BrokerHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// Only a failing listener.
    pub async fn serve(self) -> Result<(), BrokerError> {
        let handler = BrokerSessions {
            shared: Arc::clone(&self.shared),
        };
        tokio::select! {
            result = self.server.serve(handler) => result.map_err(BrokerError::Io),
            never = run_timer(&self.shared) => match never {},
        }
    }
}

/// State every session shares.
struct Shared {
    state: Mutex<State>,
    framer: BrokerFramer,
    /// The earliest deadline changed: re-arm the timer.
    timer: Notify,
    /// A queue shrank (or went away): re-check waiting streams.
    drained: Notify,
    flow_wait: Duration,
    half_frames: usize,
    half_bytes: usize,
}

struct State {
    router: Router,
    conns: HashMap<ConnId, Conn>,
    channels: HashMap<ChannelId, Members>,
}

struct Conn {
    /// Wakes the connection's writer task.
    wake: Arc<Notify>,
    registered: Option<(Role, ChannelId)>,
    /// The router gave up on it: drain, then close.
    closing: bool,
}

#[derive(Default)]
struct Members {
    consumers: Vec<ConnId>,
    providers: Vec<ConnId>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one router input, then acts on every event it raised, wakes
    /// waiting streams, and re-arms the timer if the deadline moved.
    fn with<R>(&self, input: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.lock();
        let before = state.router.poll_timeout();
        let result = input(&mut state);
        state.drain_events();
        let moved = state.router.poll_timeout() != before;
        drop(state);
        if moved {
            self.timer.notify_one();
        }
        self.drained.notify_waiters();
        result
    }

    /// Waits until the receivers of `frame` have room, when it continues a
    /// stream; bounded by `flow_wait`.
    async fn wait_for_room(&self, conn: ConnId, frame: &Frame) {
        let deadline = tokio::time::Instant::now() + self.flow_wait;
        loop {
            let mut drained = pin!(self.drained.notified());
            drained.as_mut().enable();
            if self.lock().has_room(self, conn, frame) {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return;
            }
        }
    }
}

impl State {
    fn drain_events(&mut self) {
        while let Some(event) = self.router.poll_event() {
            match event {
                RouterEvent::Transmit(conn) => {
                    if let Some(c) = self.conns.get(&conn) {
                        c.wake.notify_one();
                    }
                }
                RouterEvent::Registered {
                    conn,
                    role,
                    channel_id,
                    ..
                } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.registered = Some((role, channel_id));
                        let members = self.channels.entry(channel_id).or_default();
                        match role {
                            Role::Provider => members.providers.push(conn),
                            _ => members.consumers.push(conn),
                        }
                    }
                }
                RouterEvent::Close { conn, .. } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.closing = true;
                        c.wake.notify_one();
                    }
                }
                _ => {}
            }
        }
    }

    /// True unless `frame` continues a stream and one of the connections
    /// on the other side of its channel has its queue above half.
    fn has_room(&self, shared: &Shared, conn: ConnId, frame: &Frame) -> bool {
        let Some((role, channel)) = self.conns.get(&conn).and_then(|c| c.registered) else {
            return true;
        };
        let peers = match (role, frame.frame_type) {
            (Role::Provider, FrameType::Response) => {
                self.channels.get(&channel).map(|m| &m.consumers)
            }
            (Role::Consumer, FrameType::Chunk | FrameType::End) => {
                self.channels.get(&channel).map(|m| &m.providers)
            }
            _ => None,
        };
        let len = frame.payload.len();
        peers.is_none_or(|peers| {
            peers.iter().all(|p| {
                self.router.queued(*p).is_none_or(|(frames, bytes)| {
                    frames == 0
                        || (frames < shared.half_frames
                            && bytes.saturating_add(len) <= shared.half_bytes)
                })
            })
        })
    }

    fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        c.wake.notify_one();
        if let Some((_, channel)) = c.registered {
            if let Some(members) = self.channels.get_mut(&channel) {
                members.consumers.retain(|m| *m != conn);
                members.providers.retain(|m| *m != conn);
                if members.consumers.is_empty() && members.providers.is_empty() {
                    self.channels.remove(&channel);
                }
            }
        }
    }
}

/// Runs the router's timer for ever.
async fn run_timer(shared: &Shared) -> std::convert::Infallible {
    loop {
        let mut rearm = pin!(shared.timer.notified());
        rearm.as_mut().enable();
        let deadline = shared.lock().router.poll_timeout();
        match deadline {
            Some(at) if at <= Instant::now() => {
                shared.with(|s| s.router.handle_timeout(Instant::now()));
            }
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {
                        shared.with(|s| s.router.handle_timeout(Instant::now()));
                    }
                    () = rearm => {}
                }
            }
            None => rearm.await,
        }
    }
}

/// The server's handler: one per server, called by every session.
struct BrokerSessions {
    shared: Arc<Shared>,
}

fn conn_of(session: &Session) -> ConnId {
    ConnId(session.id().get())
}

impl Handler for BrokerSessions {
    async fn on_connect(&self, session: &Session) {
        let conn = conn_of(session);
        let wake = Arc::new(Notify::new());
        let known = self.shared.with(|s| {
            if s.router.handle_connect(conn).is_err() {
                return false;
            }
            s.conns.insert(
                conn,
                Conn {
                    wake: Arc::clone(&wake),
                    registered: None,
                    closing: false,
                },
            );
            true
        });
        if known {
            tokio::spawn(write_frames(
                Arc::clone(&self.shared),
                conn,
                session.clone(),
                wake,
            ));
        } else {
            session.abort();
        }
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let conn = conn_of(session);
        let frame = match self.shared.framer.parse(message.into_bytes()) {
            Ok(frame) => frame,
            Err(e) => {
                // The stream cannot be re-synchronised: say why, then close.
                let why = ErrorPayload {
                    code: ErrorCode::PROTOCOL,
                    message: e.to_string().into(),
                };
                let error = Frame::new(FrameType::Error, Default::default(), why.encode());
                if let Ok(m) = self.shared.framer.to_message(&error) {
                    let _ = session.try_send(m);
                }
                session.close();
                return;
            }
        };
        self.shared.wait_for_room(conn, &frame).await;
        self.shared
            .with(|s| s.router.handle_frame(conn, frame, Instant::now()))
            .ok();
    }

    async fn on_disconnect(&self, session: &Session, _reason: &CloseReason) {
        let conn = conn_of(session);
        self.shared.with(|s| {
            let _ = s.router.handle_disconnect(conn);
            s.forget(conn);
        });
    }
}

/// What the writer does next.
enum Step {
    Send(Frame),
    Idle,
    Close,
    Stop,
}

/// Moves a connection's router queue to its socket, as fast as the
/// session's backpressure lets it.
async fn write_frames(shared: Arc<Shared>, conn: ConnId, session: Session, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let step = shared.with(|s| match s.router.poll_transmit(conn) {
                Some(frame) => Step::Send(frame),
                None => match s.conns.get(&conn) {
                    None => Step::Stop,
                    Some(c) if c.closing => Step::Close,
                    Some(_) => Step::Idle,
                },
            });
            match step {
                Step::Send(frame) => {
                    // Every queued frame fits: the router checks payloads
                    // against the same limit the codec decodes with.
                    let Ok(message) = shared.framer.to_message(&frame) else {
                        continue;
                    };
                    if session.send(message).await.is_err() {
                        return;
                    }
                }
                Step::Idle => break,
                Step::Close => {
                    session.close();
                    return;
                }
                Step::Stop => return,
            }
        }
    }
}
