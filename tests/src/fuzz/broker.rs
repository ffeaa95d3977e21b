//! Fuzz drivers for the broker (`storm_proto::broker`): the frame decoder,
//! the assembler and the router. Each takes arbitrary bytes, drives the
//! machine and panics if one of its invariants breaks; the thin targets in
//! `fuzz/fuzz_targets/broker_*.rs` call them, and `tests/tests/fuzz_broker.rs`
//! replays the committed corpora.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use storm_proto::broker::{
    Assembler, AssemblerConfig, ChannelId, ClientId, ConnId, ErrorCode, ErrorPayload, FLAG_MORE,
    Frame, FrameCodec, FrameConfig, FrameError, FrameType, HEADER_LEN, Registration, RequestId,
    Role, Router, RouterConfig, RouterEvent,
};

/// Decodes arbitrary bytes as broker frames.
///
/// Input: byte 0 picks the max payload (1..=256), byte 1 seeds the chunk
/// sizes, the rest is the stream. Checks: payloads within the limit, the
/// read buffer after `Ok(None)` below one maximal frame, every frame
/// re-encodes to exactly the bytes it was decoded from, errors consume
/// nothing and are final.
pub fn broker_frame(data: &[u8]) {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*cfg) + 1;
    let mut config = FrameConfig::default();
    config.max_payload = max;
    let Ok(codec) = FrameCodec::new(config) else {
        return;
    };
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    let mut rest = stream;
    let mut state = *seed;
    while !rest.is_empty() {
        state = state.wrapping_mul(33).wrapping_add(7);
        let (chunk, tail) = rest.split_at(rest.len().min(usize::from(state % 61) + 1));
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= max);
                    let mut again = BytesMut::new();
                    codec
                        .encode(&frame, &mut again)
                        .expect("decoded frames fit");
                    let used = before - buf.len();
                    assert_eq!(again.len(), used);
                    assert_eq!(&again[..], &stream[consumed..consumed + used]);
                    consumed += used;
                }
                Ok(None) => {
                    assert!(buf.len() < HEADER_LEN + max, "buffered past one frame");
                    break;
                }
                Err(e) => {
                    assert_eq!(buf.len(), before, "an error consumed input");
                    assert_eq!(codec.decode(&mut buf), Err(e), "errors are final");
                    return;
                }
            }
        }
    }
}

/// Feeds arbitrary frame sequences to an [`Assembler`] and checks it
/// against a plain model (a map of request id to bytes so far).
///
/// Input: byte 0 sets `max_message_size` (1..=1024), byte 1
/// `max_open_requests` (1..=8); then 3-byte ops `[kind, id, len]`: kind
/// `% 6` is 0 (advance time by `len * 20` ms and handle the timeout) or a
/// frame type; `id % 8` the request; `len` the payload length.
pub fn broker_assembler(data: &[u8]) {
    let [a, b, ops @ ..] = data else {
        return;
    };
    let mut config = AssemblerConfig::default();
    config.max_message_size = usize::from(*a) * 4 + 1;
    config.max_open_requests = usize::from(*b % 8) + 1;
    config.max_buffered_bytes = config.max_message_size * 2;
    config.timeout = Duration::from_secs(1);
    let (max_message, max_open, max_buffered) = (
        config.max_message_size,
        config.max_open_requests,
        config.max_buffered_bytes,
    );
    let Ok(mut asm) = Assembler::new(config) else {
        return;
    };
    let mut now = Instant::now();
    let mut model: HashMap<RequestId, Vec<u8>> = HashMap::new();
    let mut counter = 0u8;
    for op in ops.chunks_exact(3) {
        let [kind, id, len] = [op[0], op[1], op[2]];
        let id = RequestId::from_bytes([id % 8; 16]);
        let Some(frame_type) = FrameType::from_u8(kind % 6) else {
            now += Duration::from_millis(u64::from(len) * 20);
            asm.handle_timeout(now);
            while let Some(expired) = asm.poll_expired() {
                assert!(
                    model.remove(&expired).is_some(),
                    "expired an unknown request"
                );
            }
            assert!(asm.poll_timeout().is_none_or(|t| t > now));
            continue;
        };
        let payload: Vec<u8> = (0..len)
            .map(|_| {
                counter = counter.wrapping_add(1);
                counter
            })
            .collect();
        let frame = Frame::new(frame_type, id, Bytes::from(payload.clone()));
        match asm.handle_frame(frame, now) {
            Ok(Some(message)) => {
                let expected = model.remove(&id).expect("completed an open request");
                assert_eq!(&message.payload[..], &expected[..]);
                assert!(message.payload.len() <= max_message);
            }
            Ok(None) => match frame_type {
                FrameType::Start => assert!(model.insert(id, Vec::new()).is_none()),
                _ => model
                    .get_mut(&id)
                    .expect("chunk for an open request")
                    .extend_from_slice(&payload),
            },
            Err(_) => {
                // A rejected chunk abandons its request (if it was open);
                // other errors change nothing.
                if frame_type == FrameType::Chunk {
                    model.remove(&id);
                }
            }
        }
        assert_eq!(asm.open_requests(), model.len());
        assert!(asm.open_requests() <= max_open);
        assert!(asm.buffered_bytes() <= max_buffered);
        assert_eq!(
            asm.buffered_bytes(),
            model.values().map(Vec::len).sum::<usize>()
        );
    }
}

/// Drives a [`Router`] with operations decoded from bytes and checks that
/// no request ends twice and none is left hanging, that a consumer is told
/// "unknown request" only for an id it is not sending under, and that
/// [`Router::next_hop`], asked before each frame, names the connection the
/// frame is then forwarded to as stream data (`None` when it goes nowhere
/// as stream data; a named receiver without room refuses it with `BUSY`).
///
/// Input: 3-byte ops `[op, a, b]`: op `% 9` is connect (a: provider if odd,
/// channel `b % 2`), start, chunk (b ≥ 240: a chunk over the frame limit,
/// as [`Router::handle_refused`] gets it), end, cancel, respond (b: kind;
/// b ≥ 240: a response over the frame limit), drain (b: how many frames),
/// disconnect, advance time (`b * 10` ms); `a` picks the peer or request.
pub fn broker_router(data: &[u8]) {
    let mut config = RouterConfig::default();
    config.default_timeout = Duration::from_secs(1);
    config.max_timeout = Duration::from_secs(2);
    config.max_requests = 16;
    config.max_requests_per_consumer = 4;
    config.max_queued_frames = 3;
    config.max_queued_bytes = 64;
    config.max_queued_errors = 3;
    let Ok(router) = Router::new(config) else {
        return;
    };
    let mut sim = Sim {
        router,
        peers: Vec::new(),
        now: Instant::now(),
    };
    for op in data.chunks_exact(3) {
        sim.apply(op[0] % 9, op[1], op[2]);
        sim.events();
    }
    sim.now += Duration::from_secs(60);
    sim.router.handle_timeout(sim.now);
    sim.events();
    for p in 0..sim.peers.len() {
        if sim.peers[p].alive {
            sim.drain(p, usize::MAX);
        }
    }
    sim.events();
    assert_eq!(sim.router.open_requests(), 0, "a request is stuck");
    for peer in sim.peers.iter().filter(|p| p.alive && !p.provider) {
        for (id, cancelled) in &peer.started {
            if !cancelled {
                assert_eq!(peer.finals.get(id), Some(&1), "request {id:?} never ended");
            }
        }
    }
}

struct Peer {
    conn: ConnId,
    alive: bool,
    provider: bool,
    next: u8,
    sending: Vec<RequestId>,
    started: BTreeMap<RequestId, bool>,
    finals: BTreeMap<RequestId, u32>,
    working: Vec<RequestId>,
}

struct Sim {
    router: Router,
    peers: Vec<Peer>,
    now: Instant,
}

const REG_ID: RequestId = RequestId::from_bytes([0xff; 16]);

/// A chunk or response op whose `b` is at least this sends a frame over
/// the frame limit instead.
const OVERSIZED: u8 = 240;

impl Sim {
    fn pick(&self, a: u8) -> Option<usize> {
        let alive: Vec<usize> = (0..self.peers.len())
            .filter(|&p| self.peers[p].alive)
            .collect();
        (!alive.is_empty()).then(|| alive[usize::from(a) % alive.len()])
    }

    /// Hands `frame` from peer `p` to the router, checking that
    /// [`Router::next_hop`] asked just before named where the frame went.
    fn send(&mut self, p: usize, frame: Frame) {
        let conn = self.peers[p].conn;
        let hop = self
            .router
            .next_hop(conn, frame.frame_type, frame.request_id);
        let before = self.queues();
        let stats = self.router.stats();
        let (frame_type, len) = (frame.frame_type, frame.payload.len());
        self.router
            .handle_frame(conn, frame, self.now)
            .expect("alive peers are connected");
        let after = self.router.stats();
        // The frame was queued as stream data at `to` when that is the only
        // queue that changed, by exactly one frame of its size, and the
        // router queued no `Error` and refused nothing.
        let changed: Vec<(ConnId, (i64, i64))> = before
            .iter()
            .filter_map(|(c, was)| {
                let now = self.router.queued(*c).unwrap_or_default();
                let delta = (now.0 as i64 - was.0 as i64, now.1 as i64 - was.1 as i64);
                (delta != (0, 0)).then_some((*c, delta))
            })
            .collect();
        let forwarded = match changed[..] {
            [(to, delta)]
                if delta == (1, len as i64)
                    && to != conn
                    && after.error_frames == stats.error_frames
                    && after.busy == stats.busy =>
            {
                Some(to)
            }
            _ => None,
        };
        let Some(hop) = hop else {
            assert_eq!(
                forwarded, None,
                "{frame_type:?} from {conn} forwarded, next_hop said None"
            );
            return;
        };
        let stream = if self.peers[p].provider {
            frame_type == FrameType::Response
        } else {
            matches!(frame_type, FrameType::Chunk | FrameType::End)
        };
        assert!(
            stream,
            "next_hop named {hop} for a {frame_type:?} from {conn}"
        );
        if forwarded != Some(hop) {
            // Not forwarded: only because the receiver had no room (the
            // adapter waits for room on `hop` before it hands the frame over).
            assert_eq!(
                after.busy,
                stats.busy + 1,
                "next_hop named {hop}, the {frame_type:?} from {conn} went to {forwarded:?}"
            );
            assert!(
                before.get(&hop).is_some_and(|q| q.0 > 0),
                "next_hop named {hop}, refused for room, but its queue was empty"
            );
        }
    }

    /// Frames and data bytes queued for every connected peer.
    fn queues(&self) -> BTreeMap<ConnId, (usize, usize)> {
        self.peers
            .iter()
            .filter(|p| p.alive)
            .filter_map(|p| Some((p.conn, self.router.queued(p.conn)?)))
            .collect()
    }

    fn apply(&mut self, op: u8, a: u8, b: u8) {
        if op == 0 {
            if self.peers.len() >= 12 {
                return;
            }
            let conn = ConnId(self.peers.len() as u64);
            self.router.handle_connect(conn).expect("fresh id");
            let provider = a % 2 == 1;
            self.peers.push(Peer {
                conn,
                alive: true,
                provider,
                next: 0,
                sending: Vec::new(),
                started: BTreeMap::new(),
                finals: BTreeMap::new(),
                working: Vec::new(),
            });
            let reg = Registration {
                role: if provider {
                    Role::Provider
                } else {
                    Role::Consumer
                },
                client_id: ClientId::from_bytes([a; 16]),
                channel_id: ChannelId::from_bytes([b % 2; 16]),
                timeout: Duration::ZERO,
            };
            let p = self.peers.len() - 1;
            self.send(p, Frame::new(FrameType::Start, REG_ID, reg.encode()));
            return;
        }
        if op == 8 {
            self.now += Duration::from_millis(u64::from(b) * 10);
            if self.router.poll_timeout().is_some_and(|t| t <= self.now) {
                self.router.handle_timeout(self.now);
            }
            assert!(self.router.poll_timeout().is_none_or(|t| t > self.now));
            return;
        }
        let Some(p) = self.pick(a) else { return };
        let peer = &mut self.peers[p];
        let frame = match (op, peer.provider) {
            (1, false) => {
                peer.next = peer.next.wrapping_add(1);
                let id = RequestId::from_bytes([peer.next; 16]);
                if peer.started.contains_key(&id) {
                    return;
                }
                peer.sending.push(id);
                peer.started.insert(id, false);
                Frame::new(FrameType::Start, id, Bytes::new())
            }
            (2..=4, false) if !peer.sending.is_empty() => {
                let idx = usize::from(b) % peer.sending.len();
                let id = peer.sending[idx];
                if op == 2 && b >= OVERSIZED {
                    return self.oversized(p, id);
                }
                match op {
                    2 => Frame::new(
                        FrameType::Chunk,
                        id,
                        Bytes::from(vec![1; usize::from(b % 40)]),
                    ),
                    3 => {
                        peer.sending.remove(idx);
                        Frame::new(FrameType::End, id, Bytes::new())
                    }
                    _ => {
                        peer.sending.remove(idx);
                        peer.started.insert(id, true);
                        Frame::new(FrameType::Error, id, Bytes::new())
                    }
                }
            }
            (5, true) if !peer.working.is_empty() => {
                let idx = usize::from(a) % peer.working.len();
                let id = peer.working[idx];
                if b >= OVERSIZED {
                    return self.oversized(p, id);
                }
                match b % 3 {
                    0 => {
                        let mut f = Frame::new(FrameType::Response, id, Bytes::from_static(b"p"));
                        f.flags = FLAG_MORE;
                        f
                    }
                    1 => {
                        peer.working.remove(idx);
                        Frame::new(FrameType::Response, id, Bytes::from_static(b"done"))
                    }
                    _ => {
                        peer.working.remove(idx);
                        Frame::new(FrameType::Error, id, Bytes::from_static(b"\0\x64"))
                    }
                }
            }
            (6, _) => return self.drain(p, usize::from(b % 8)),
            (7, _) => return self.disconnect(p),
            // Anything else: a frame the peer's role does not send, or for
            // a request that is not the peer's to use.
            (_, provider) => {
                let frame_type = match FrameType::from_u8(b % 5 + 1) {
                    // A consumer's Start would be a real request.
                    Some(FrameType::Start) if !provider => FrameType::Chunk,
                    Some(t) => t,
                    None => FrameType::End,
                };
                let id = self.stray_id(p, b, frame_type);
                if frame_type == FrameType::Error && !provider {
                    // Cancels the request if it is still in flight.
                    if let Some(cancelled) = self.peers[p].started.get_mut(&id) {
                        *cancelled = true;
                    }
                }
                Frame::new(frame_type, id, Bytes::new())
            }
        };
        self.send(p, frame);
    }

    /// The request a stray `frame_type` from peer `p` names. For a frame
    /// its role sends, when `b / 5` is odd, a real request that is not (or
    /// no longer) the peer's to use, picked by `b / 10`: for a provider,
    /// one another provider works on; for a consumer, one of its own it has
    /// already ended or cancelled. Otherwise, or when there is none, an id
    /// no request has (a frame its role does not send is a protocol
    /// violation, answered with an `Error` for that id).
    fn stray_id(&self, p: usize, b: u8, frame_type: FrameType) -> RequestId {
        let peer = &self.peers[p];
        let its_role_sends = match frame_type {
            FrameType::Chunk | FrameType::End => !peer.provider,
            FrameType::Response => peer.provider,
            FrameType::Error => true,
            _ => false,
        };
        let real: Vec<RequestId> = if !its_role_sends || b / 5 % 2 == 0 {
            Vec::new()
        } else if peer.provider {
            self.peers
                .iter()
                .filter(|q| q.alive && q.conn != peer.conn)
                .flat_map(|q| q.working.iter().copied())
                .collect()
        } else {
            peer.started
                .keys()
                .filter(|id| !peer.sending.contains(id))
                .copied()
                .collect()
        };
        match real.get(usize::from(b / 10) % real.len().max(1)) {
            Some(id) => *id,
            None => RequestId::from_bytes([if peer.provider { 0xaa } else { 0xab }; 16]),
        }
    }

    /// Peer `p` sends a frame over the frame limit under `id`: the framer
    /// skips its payload and the router gets the refusal.
    fn oversized(&mut self, p: usize, id: RequestId) {
        let error = FrameError::TooLarge {
            len: 1 << 20,
            max: FrameConfig::DEFAULT_MAX_PAYLOAD,
        };
        self.router
            .handle_refused(self.peers[p].conn, Some(id), &error)
            .expect("alive peers are connected");
    }

    fn disconnect(&mut self, p: usize) {
        self.peers[p].alive = false;
        self.router
            .handle_disconnect(self.peers[p].conn)
            .expect("connected");
    }

    fn events(&mut self) {
        while let Some(ev) = self.router.poll_event() {
            if let RouterEvent::Close { conn, .. } = ev {
                let Some(p) = self.peers.iter().position(|peer| peer.conn == conn) else {
                    panic!("close for an unknown connection");
                };
                self.drain(p, usize::MAX);
                self.disconnect(p);
            }
        }
    }

    fn drain(&mut self, p: usize, max: usize) {
        let conn = self.peers[p].conn;
        for _ in 0..max {
            let Some(frame) = self.router.poll_transmit(conn) else {
                return;
            };
            let peer = &mut self.peers[p];
            if frame.request_id == REG_ID {
                continue;
            }
            if peer.provider {
                match frame.frame_type {
                    FrameType::Start => peer.working.push(frame.request_id),
                    FrameType::Error => peer.working.retain(|id| *id != frame.request_id),
                    _ => {}
                }
                continue;
            }
            let is_final = match frame.frame_type {
                FrameType::Response => !frame.has_more(),
                FrameType::Error => true,
                t => panic!("consumer got a {t:?} frame"),
            };
            let unknown = frame.frame_type == FrameType::Error
                && ErrorPayload::decode(&frame.payload).code == ErrorCode::UNKNOWN_REQUEST;
            if unknown {
                // The answer to a stray frame: it ends nothing, and never
                // comes for a request the consumer is still sending.
                assert!(
                    !peer.sending.contains(&frame.request_id),
                    "unknown request {:?} while it was being sent",
                    frame.request_id
                );
                continue;
            }
            if !peer.started.contains_key(&frame.request_id) {
                // Only a protocol error for garbage may name an unknown id.
                assert_eq!(frame.frame_type, FrameType::Error);
                continue;
            }
            if is_final {
                let n = peer.finals.entry(frame.request_id).or_default();
                *n += 1;
                assert_eq!(*n, 1, "request {:?} ended twice", frame.request_id);
            }
        }
    }
}

/// Fuzzes [`BrokerFramer`](storm_proto::broker::BrokerFramer), the framer
/// that carries broker frames over the adapters' framed TCP: arbitrary
/// bytes in arbitrary chunks never panic, never fail to decode, never
/// leave a maximal frame's worth of bytes buffered, and cut the same
/// whole, byte by byte or chunked; every cut is the stream's next bytes,
/// either a whole frame within the limit, which
/// [`parse`](storm_proto::broker::BrokerFramer::parse) gives back as a
/// frame encoding to exactly those bytes (or a typed error), or the header
/// alone of a frame over the limit, whose declared payload is then
/// skipped.
///
/// Input: byte 0 picks the max payload (1..=256), byte 1 seeds the chunk
/// sizes, the rest is the stream.
pub fn broker_framer(data: &[u8]) {
    use storm_proto::framing::Framer;
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let mut config = FrameConfig::default();
    config.max_payload = usize::from(*cfg) + 1;
    let Ok(framer) = storm_proto::broker::BrokerFramer::new(config) else {
        return;
    };
    // Header-only cuts do not re-encode: checked below instead.
    super::check_framer(framer.clone(), stream, *seed, false);
    let max = framer.codec().max_payload();
    let mut buf = BytesMut::from(stream);
    let mut cutter = framer.clone();
    let mut at = 0;
    while let Some(cut) = cutter.decode(&mut buf).expect("never a decode error") {
        assert_eq!(
            Some(&cut[..]),
            stream.get(at..at + cut.len()),
            "not the next bytes"
        );
        let declared = usize::try_from(u32::from_be_bytes(
            cut[20..HEADER_LEN].try_into().expect("4 bytes"),
        ))
        .expect("fits");
        if declared > max {
            assert_eq!(cut.len(), HEADER_LEN, "an oversized frame cut whole");
            if cut[0] == storm_proto::broker::VERSION && FrameType::from_u8(cut[1]).is_some() {
                assert_eq!(
                    framer.parse(cut.clone()),
                    Err(FrameError::TooLarge { len: declared, max })
                );
            }
            assert!(framer.parse(cut.clone()).is_err());
            at += HEADER_LEN + declared;
            continue;
        }
        assert_eq!(cut.len(), HEADER_LEN + declared);
        at += cut.len();
        if let Ok(frame) = framer.parse(cut.clone()) {
            let message = framer.to_message(&frame).expect("a parsed frame encodes");
            assert_eq!(message, cut, "parse/to_message changed the frame");
        }
    }
}
