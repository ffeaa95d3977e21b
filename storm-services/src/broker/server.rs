//! What the broker server decides, once for every runtime: the core's
//! [`Router`] behind one lock, what a message becomes
//! ([`Shared::receive`]), the per-connection writer steps ([`Step`]), the
//! timer's steps ([`TimerStep`]) and the flow-control rule ([`RoomWait`]).
//! The async path ([`on_async`]) and the blocking path ([`on_std`]) only
//! wait and wake: they supply the way to wake a writer, the timer, and a
//! waiting stream ([`Signals`]), and do what the steps say.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use storm_host::options::ServerOptions;
use storm_proto::Message;
use storm_proto::backpressure::SlowConsumerPolicy;
use storm_proto::broker::{
    BrokerFramer, ConnId, Frame, FrameCodec, FrameConfig, FrameError, RequestId, Router,
    RouterConfig, RouterEvent, RouterStats,
};
use storm_proto::framing::Framing;

use super::BrokerError;

pub(super) mod on_async;
pub(super) mod on_std;

/// Everything a broker server is configured with (on every runtime).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerOptions {
    /// Address, socket options, connection limit, per-session send
    /// backpressure, TLS ([`ServerOptions::tls`]: the broker then speaks
    /// TLS only). Default: [`ServerOptions::default`] (`127.0.0.1:0`, no
    /// TLS). The slow-consumer policy is always `Wait`: the router's
    /// bounded queues (and `BUSY`) are the broker's policy, so no frame is
    /// dropped by the session.
    pub server: ServerOptions,
    /// Timeouts and queue limits of the router (see [`RouterConfig`] for
    /// each default). Its `max_frame_payload` is replaced by
    /// `frame.max_payload`.
    pub router: RouterConfig,
    /// The largest frame payload accepted or sent. Default 1 MiB.
    pub frame: FrameConfig,
    /// How long the next frame of a stream under way (a request's `Chunk`
    /// or `End`, a provider's `Response`) waits for the one connection it
    /// goes to to drain its queue before it is handed to the router anyway
    /// (which then fails the request with `BUSY` if there is still no
    /// room). Default 30 s.
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

/// How a runtime wakes the broker's waiting parts.
pub(super) trait Signals: Send + Sync + 'static {
    /// What wakes one connection's writer.
    type Writer: Send + Sync;

    /// The connection's queue (or state) changed: its writer looks again.
    fn wake_writer(writer: &Self::Writer);

    /// The router's earliest deadline moved: the timer re-arms.
    fn rearm_timer(&self);

    /// A queue shrank (or went away): waiting streams check again.
    fn drained(&self);
}

/// State every session shares, and the limits of flow control.
pub(super) struct Shared<S: Signals> {
    state: Mutex<State<S::Writer>>,
    pub(super) signals: S,
    pub(super) framer: BrokerFramer,
    /// How long a stream's frame waits for its receiver.
    flow_wait: Duration,
    half_frames: usize,
    half_bytes: usize,
    /// Streams waiting for their receiver right now.
    held: AtomicUsize,
}

/// The router and what the adapter knows about each connection.
pub(super) struct State<W> {
    pub(super) router: Router,
    conns: HashMap<ConnId, Conn<W>>,
    /// The server stopped serving: the timer (a thread on std) ends.
    pub(super) stopped: bool,
}

struct Conn<W> {
    writer: W,
    /// The router gave up on it: drain, then close.
    closing: bool,
}

/// A message [`Shared::parse`] refused.
pub(super) struct Refused {
    request_id: Option<RequestId>,
    error: FrameError,
}

/// What a connection's writer does next.
pub(super) enum Step {
    /// Write this encoded frame, then ask again.
    Send(Bytes),
    /// Nothing queued: wait to be woken.
    Idle,
    /// Everything is written and the router gave up on the connection:
    /// close it gracefully.
    Close,
    /// The connection is gone.
    Stop,
}

/// What the router's timer does next.
pub(super) enum TimerStep {
    /// A deadline is due: call [`Shared::handle_timeout`] now.
    Fire,
    /// Sleep until this deadline, or until the timer is re-armed.
    SleepUntil(Instant),
    /// No deadline: sleep until the timer is re-armed.
    Idle,
    /// The server stopped: the timer ends.
    Stop,
}

/// Flow control for one frame of a stream under way: whether it must wait
/// for the connection it goes to to drain its queue, and until when.
/// Counts the stream as held back (see [`Shared::held_streams`]) from its
/// first wait until it is dropped.
pub(super) struct RoomWait<'a, S: Signals> {
    shared: &'a Shared<S>,
    conn: ConnId,
    frame: &'a Frame,
    /// When the frame goes to the router, room or not.
    deadline: Instant,
    held: Option<Held<'a>>,
}

impl<S: Signals> RoomWait<'_, S> {
    /// `None`: the frame may go to the router now (its receiver has room,
    /// or it has waited `flow_wait`); `Some(deadline)`: wait until a queue
    /// drains ([`Signals::drained`]) or `deadline` passes, then ask again.
    pub(super) fn poll_wait(&mut self, state: &State<S::Writer>, now: Instant) -> Option<Instant> {
        if now >= self.deadline || self.shared.has_room(state, self.conn, self.frame) {
            return None;
        }
        self.held.get_or_insert_with(|| self.shared.hold());
        Some(self.deadline)
    }
}

/// Marks a stream as held back while it lives.
pub(super) struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Signals> Shared<S> {
    /// Checks `options` and builds the shared state, with the server
    /// options and framing to bind with.
    pub(super) fn new(
        options: BrokerOptions,
        signals: S,
    ) -> Result<(Self, ServerOptions, Framing), BrokerError> {
        let mut router_config = options.router;
        router_config.max_frame_payload = options.frame.max_payload;
        let half_frames = router_config.max_queued_frames / 2;
        let half_bytes = router_config.max_queued_bytes / 2;
        let router = Router::new(router_config)?;
        let framer = BrokerFramer::new(options.frame.clone())?;
        let framing = BrokerFramer::framing(options.frame)?;
        let mut server = options.server;
        // The router's bounded queues (and BUSY) are the broker's policy:
        // no frame is dropped by a session.
        server.backpressure.slow_consumer_policy = SlowConsumerPolicy::Wait;
        let shared = Self {
            state: Mutex::new(State {
                router,
                conns: HashMap::new(),
                stopped: false,
            }),
            signals,
            framer,
            flow_wait: options.flow_wait,
            half_frames,
            half_bytes,
            held: AtomicUsize::new(0),
        };
        Ok((shared, server, framing))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State<S::Writer>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one router input, then acts on every event it raised, wakes
    /// waiting streams, and re-arms the timer if the deadline moved.
    pub(super) fn with<T>(&self, input: impl FnOnce(&mut State<S::Writer>) -> T) -> T {
        let mut state = self.lock();
        let before = state.router.poll_timeout();
        let result = input(&mut state);
        state.drain_events::<S>();
        let moved = state.router.poll_timeout() != before;
        drop(state);
        if moved {
            self.signals.rearm_timer();
        }
        self.signals.drained();
        result
    }

    /// The router's counters.
    pub(super) fn stats(&self) -> RouterStats {
        self.lock().router.stats()
    }

    /// Requests in flight.
    pub(super) fn open_requests(&self) -> usize {
        self.lock().router.open_requests()
    }

    /// Streams held back by flow control right now.
    pub(super) fn held_streams(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Counts a stream as held back until the guard drops.
    fn hold(&self) -> Held<'_> {
        self.held.fetch_add(1, Ordering::Relaxed);
        Held(&self.held)
    }

    /// A new connection, woken through `writer`; false if the router
    /// refuses it (then abort the session).
    #[must_use]
    pub(super) fn connect(&self, conn: ConnId, writer: S::Writer) -> bool {
        self.with(|s| {
            if s.router.handle_connect(conn).is_err() {
                return false;
            }
            s.conns.insert(
                conn,
                Conn {
                    writer,
                    closing: false,
                },
            );
            true
        })
    }

    /// The connection is gone.
    pub(super) fn disconnect(&self, conn: ConnId) {
        self.with(|s| {
            let _ = s.router.handle_disconnect(conn);
            if let Some(c) = s.conns.remove(&conn) {
                S::wake_writer(&c.writer);
            }
        });
    }

    /// A message from `conn`: the frame it carries, for the caller to hand
    /// to [`deliver`](Self::deliver) once [`room_wait`](Self::room_wait)
    /// lets it; or `None` when it was not a valid frame and the router has
    /// answered it (see [`refuse`](Self::refuse)).
    pub(super) fn receive(&self, conn: ConnId, message: Message) -> Option<Frame> {
        match self.parse(message) {
            Ok(frame) => Some(frame),
            Err(refused) => {
                self.refuse(conn, &refused);
                None
            }
        }
    }

    /// Decodes a message (for a frame over the limit, the framer cut its
    /// header alone). The `Err` is what [`refuse`](Self::refuse) answers:
    /// the request id the header names, if any, and why.
    fn parse(&self, message: Message) -> Result<Frame, Refused> {
        let bytes = message.into_bytes();
        self.framer.parse(bytes.clone()).map_err(|error| Refused {
            request_id: FrameCodec::peek_request_id(&bytes),
            error,
        })
    }

    /// Hands a frame from `conn` to the router.
    pub(super) fn deliver(&self, conn: ConnId, frame: Frame) {
        self.with(|s| s.router.handle_frame(conn, frame, Instant::now()))
            .ok();
    }

    /// Hands a message from `conn` that is not a valid frame to the router,
    /// which answers it with an `Error` (and closes the connection after
    /// it when the stream cannot be trusted).
    fn refuse(&self, conn: ConnId, refused: &Refused) {
        self.with(|s| {
            s.router
                .handle_refused(conn, refused.request_id, &refused.error)
        })
        .ok();
    }

    /// Fails the requests due now; the next deadline, if any.
    pub(super) fn handle_timeout(&self) -> Option<Instant> {
        self.with(|s| {
            s.router.handle_timeout(Instant::now());
            s.router.poll_timeout()
        })
    }

    /// The writer's next step for `conn` (see [`State::step`]), waking
    /// waiting streams when the queue shrank.
    pub(super) fn step(&self, conn: ConnId) -> Step {
        let step = self.lock().step(&self.framer, conn);
        if matches!(step, Step::Send(_)) {
            self.signals.drained();
        }
        step
    }

    /// Flow control for `frame` from `conn`, from now for at most
    /// `flow_wait`.
    pub(super) fn room_wait<'a>(&'a self, conn: ConnId, frame: &'a Frame) -> RoomWait<'a, S> {
        RoomWait {
            shared: self,
            conn,
            frame,
            deadline: Instant::now() + self.flow_wait,
            held: None,
        }
    }

    /// True when `frame` from `conn` may go to the router now: it does not
    /// continue a stream, or the one connection it goes to has drained its
    /// queue to half (or the frame is the first in it).
    fn has_room(&self, state: &State<S::Writer>, conn: ConnId, frame: &Frame) -> bool {
        let router = &state.router;
        let Some(to) = router.next_hop(conn, frame.frame_type, frame.request_id) else {
            return true;
        };
        let len = frame.payload.len();
        router.queued(to).is_none_or(|(frames, bytes)| {
            frames == 0
                || (frames < self.half_frames && bytes.saturating_add(len) <= self.half_bytes)
        })
    }
}

impl<W> State<W> {
    /// What the router's timer does at `now`.
    pub(super) fn timer_step(&self, now: Instant) -> TimerStep {
        if self.stopped {
            return TimerStep::Stop;
        }
        match self.router.poll_timeout() {
            Some(at) if at <= now => TimerStep::Fire,
            Some(at) => TimerStep::SleepUntil(at),
            None => TimerStep::Idle,
        }
    }

    fn drain_events<S: Signals<Writer = W>>(&mut self) {
        while let Some(event) = self.router.poll_event() {
            match event {
                RouterEvent::Transmit(conn) => {
                    if let Some(c) = self.conns.get(&conn) {
                        S::wake_writer(&c.writer);
                    }
                }
                RouterEvent::Close { conn, .. } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.closing = true;
                        S::wake_writer(&c.writer);
                    }
                }
                _ => {}
            }
        }
    }

    /// The next frame queued for `conn` as a message, or what to do when
    /// there is none.
    pub(super) fn step(&mut self, framer: &BrokerFramer, conn: ConnId) -> Step {
        loop {
            match self.router.poll_transmit(conn) {
                // Every queued frame fits: the router checks payloads
                // against the same limit the codec decodes with.
                Some(frame) => match framer.to_message(&frame) {
                    Ok(message) => return Step::Send(message),
                    Err(_) => continue,
                },
                None => {
                    return match self.conns.get(&conn) {
                        None => Step::Stop,
                        Some(c) if c.closing => Step::Close,
                        Some(_) => Step::Idle,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use storm_proto::broker::{ChannelId, ClientId, FrameType, Registration, Role};

    use super::*;

    /// Signals that wake nothing: these tests ask the steps directly.
    struct Quiet;

    impl Signals for Quiet {
        type Writer = ();
        fn wake_writer(_: &()) {}
        fn rearm_timer(&self) {}
        fn drained(&self) {}
    }

    fn id(n: u8) -> RequestId {
        RequestId::from_bytes([n; 16])
    }

    /// A broker whose queues hold 4 frames (so a stream waits from 2 on),
    /// with consumer 1 (requests time out after `timeout`) and provider 2
    /// registered.
    fn broker(timeout: Duration) -> Shared<Quiet> {
        let mut options = BrokerOptions::default();
        options.router.max_queued_frames = 4;
        let (shared, _, _) = Shared::new(options, Quiet).expect("valid options");
        for (conn, role, timeout) in [
            (1, Role::Consumer, timeout),
            (2, Role::Provider, Duration::ZERO),
        ] {
            assert!(shared.connect(ConnId(conn), ()));
            let registration = Registration {
                role,
                client_id: ClientId::from_bytes([conn as u8; 16]),
                channel_id: ChannelId::from_bytes([7; 16]),
                timeout,
            };
            let start = Frame::new(FrameType::Start, id(0xee), registration.encode());
            shared.deliver(ConnId(conn), start);
            assert!(matches!(shared.step(ConnId(conn)), Step::Send(_)), "ack");
        }
        shared
    }

    fn chunk(request: u8) -> Frame {
        Frame::new(FrameType::Chunk, id(request), Bytes::from_static(b"x"))
    }

    #[test]
    fn the_timer_sleeps_until_the_next_deadline_and_fires_at_it() {
        let shared = broker(Duration::from_secs(2));
        let now = Instant::now();
        assert!(matches!(shared.lock().timer_step(now), TimerStep::Idle));
        shared.deliver(ConnId(1), Frame::new(FrameType::Start, id(1), Bytes::new()));
        let deadline = shared.lock().router.poll_timeout().expect("a request");
        let step = shared.lock().timer_step(now);
        assert!(matches!(step, TimerStep::SleepUntil(at) if at == deadline));
        assert!(matches!(
            shared.lock().timer_step(deadline),
            TimerStep::Fire
        ));
        assert_eq!(shared.handle_timeout(), Some(deadline), "not yet due");
        shared.lock().stopped = true;
        assert!(matches!(
            shared.lock().timer_step(deadline),
            TimerStep::Stop
        ));
    }

    #[test]
    fn a_stream_waits_for_its_receiver_until_flow_wait_and_counts_as_held() {
        let shared = broker(Duration::from_secs(60));
        let now = Instant::now();
        shared.deliver(ConnId(1), Frame::new(FrameType::Start, id(1), Bytes::new()));
        // A frame that starts no stream, and the stream's first frames
        // while the provider's queue is under half, go at once.
        let first = chunk(1);
        assert_eq!(
            shared
                .room_wait(ConnId(1), &first)
                .poll_wait(&shared.lock(), now),
            None
        );
        shared.deliver(ConnId(1), first);
        // The provider reads nothing: from half its queue on, the next
        // frame waits, held, until the queue drains or flow_wait passes.
        let next = chunk(1);
        let mut wait = shared.room_wait(ConnId(1), &next);
        let deadline = wait.poll_wait(&shared.lock(), now).expect("waits");
        assert_eq!(shared.held_streams(), 1);
        assert!(deadline >= now + shared.flow_wait);
        assert_eq!(
            wait.poll_wait(&shared.lock(), deadline),
            None,
            "flow_wait passed"
        );
        drop(wait);
        assert_eq!(shared.held_streams(), 0);
        // Once the provider's writer has taken its queue, it goes at once.
        while matches!(shared.step(ConnId(2)), Step::Send(_)) {}
        let mut wait = shared.room_wait(ConnId(1), &next);
        assert_eq!(wait.poll_wait(&shared.lock(), now), None);
        assert_eq!(shared.held_streams(), 0);
    }
}
