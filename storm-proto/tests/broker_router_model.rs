//! Model test of the broker router: under random sequences of connect,
//! register, request (streamed in chunks), response, error, cancel,
//! disconnect, partial draining and time passing, every request a consumer
//! started ends in exactly one final `Response` or `Error` delivered to that
//! consumer — unless the consumer cancelled it or itself went away — and
//! never in two.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use storm_proto::broker::{
    ChannelId, ClientId, ConnId, ErrorCode, ErrorPayload, FLAG_MORE, Frame, FrameType,
    Registration, RequestId, Role, Router, RouterConfig, RouterEvent,
};

mod common;
use common::epoch;

const REG_ID: RequestId = RequestId::from_bytes([0xff; 16]);

#[derive(Debug, Clone)]
enum Op {
    Connect { provider: bool, channel: u8 },
    Start { peer: usize },
    Chunk { peer: usize, req: usize, len: usize },
    End { peer: usize, req: usize },
    Cancel { peer: usize, req: usize },
    Respond { peer: usize, req: usize, kind: u8 },
    Garbage { peer: usize },
    Disconnect { peer: usize },
    Drain { peer: usize, max: usize },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<bool>(), 0u8..2).prop_map(|(provider, channel)| Op::Connect { provider, channel }),
        4 => (0usize..8).prop_map(|peer| Op::Start { peer }),
        4 => (0usize..8, 0usize..4, 0usize..40).prop_map(|(peer, req, len)| Op::Chunk { peer, req, len }),
        3 => (0usize..8, 0usize..4).prop_map(|(peer, req)| Op::End { peer, req }),
        1 => (0usize..8, 0usize..4).prop_map(|(peer, req)| Op::Cancel { peer, req }),
        4 => (0usize..8, 0usize..4, 0u8..4).prop_map(|(peer, req, kind)| Op::Respond { peer, req, kind }),
        1 => (0usize..8).prop_map(|peer| Op::Garbage { peer }),
        1 => (0usize..8).prop_map(|peer| Op::Disconnect { peer }),
        4 => (0usize..8, 0usize..6).prop_map(|(peer, max)| Op::Drain { peer, max }),
        2 => (0u64..1500).prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Debug, Default)]
struct Consumer {
    next: u8,
    /// Requests started and still being sent (not ended or cancelled).
    sending: Vec<RequestId>,
    /// Every request started, and whether it was cancelled.
    started: BTreeMap<RequestId, bool>,
    /// Final `Response`/`Error` frames received per request.
    finals: BTreeMap<RequestId, u32>,
}

#[derive(Debug, Default)]
struct Provider {
    /// Requests whose `Start` arrived and that were not answered or ended
    /// by an `Error` from the router.
    working: Vec<RequestId>,
}

#[derive(Debug)]
struct Peer {
    conn: ConnId,
    alive: bool,
    consumer: Option<Consumer>,
    provider: Option<Provider>,
}

struct Sim {
    router: Router,
    peers: Vec<Peer>,
    now: Instant,
    next_conn: u64,
}

impl Sim {
    fn peer(&self, i: usize) -> Option<usize> {
        let alive: Vec<usize> = (0..self.peers.len())
            .filter(|&p| self.peers[p].alive)
            .collect();
        (!alive.is_empty()).then(|| alive[i % alive.len()])
    }

    fn send(&mut self, p: usize, frame: Frame) {
        let conn = self.peers[p].conn;
        self.router
            .handle_frame(conn, frame, self.now)
            .expect("alive peers are connected");
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Connect { provider, channel } => {
                self.next_conn += 1;
                let conn = ConnId(self.next_conn);
                self.router.handle_connect(conn).expect("fresh id");
                self.peers.push(Peer {
                    conn,
                    alive: true,
                    consumer: (!provider).then(Consumer::default),
                    provider: provider.then(Provider::default),
                });
                let reg = Registration {
                    role: if provider {
                        Role::Provider
                    } else {
                        Role::Consumer
                    },
                    client_id: ClientId::from_bytes([self.next_conn as u8; 16]),
                    channel_id: ChannelId::from_bytes([channel; 16]),
                    timeout: Duration::ZERO,
                };
                let p = self.peers.len() - 1;
                self.send(p, Frame::new(FrameType::Start, REG_ID, reg.encode()));
            }
            Op::Start { peer } => {
                let Some(p) = self.peer(peer) else { return };
                let Some(c) = self.peers[p].consumer.as_mut() else {
                    return;
                };
                c.next += 1;
                let id = RequestId::from_bytes([c.next; 16]);
                c.sending.push(id);
                c.started.insert(id, false);
                self.send(p, Frame::new(FrameType::Start, id, Bytes::new()));
            }
            Op::Chunk { peer, req, .. } | Op::End { peer, req } | Op::Cancel { peer, req } => {
                let Some(p) = self.peer(peer) else { return };
                let Some(c) = self.peers[p].consumer.as_mut() else {
                    return;
                };
                if c.sending.is_empty() {
                    return;
                }
                let idx = req % c.sending.len();
                let id = c.sending[idx];
                let frame = match op {
                    Op::Chunk { len, .. } => {
                        Frame::new(FrameType::Chunk, id, Bytes::from(vec![7; len]))
                    }
                    Op::End { .. } => {
                        c.sending.remove(idx);
                        Frame::new(FrameType::End, id, Bytes::new())
                    }
                    _ => {
                        c.sending.remove(idx);
                        c.started.insert(id, true);
                        Frame::new(FrameType::Error, id, Bytes::new())
                    }
                };
                self.send(p, frame);
            }
            Op::Respond { peer, req, kind } => {
                let Some(p) = self.peer(peer) else { return };
                let Some(pr) = self.peers[p].provider.as_mut() else {
                    return;
                };
                if pr.working.is_empty() {
                    return;
                }
                let idx = req % pr.working.len();
                let id = pr.working[idx];
                let frame = match kind {
                    0 => {
                        let mut f =
                            Frame::new(FrameType::Response, id, Bytes::from_static(b"part"));
                        f.flags = FLAG_MORE;
                        f
                    }
                    1 | 2 => {
                        pr.working.remove(idx);
                        Frame::new(FrameType::Response, id, Bytes::from_static(b"done"))
                    }
                    _ => {
                        pr.working.remove(idx);
                        Frame::new(FrameType::Error, id, Bytes::from_static(b"\0\x64app"))
                    }
                };
                self.send(p, frame);
            }
            Op::Garbage { peer } => {
                // A response for a request the provider never had, or a
                // chunk for a request the consumer never started.
                let Some(p) = self.peer(peer) else { return };
                let id = RequestId::from_bytes([0xab; 16]);
                let t = if self.peers[p].provider.is_some() {
                    FrameType::Response
                } else {
                    FrameType::Chunk
                };
                self.send(p, Frame::new(t, id, Bytes::new()));
            }
            Op::Disconnect { peer } => {
                let Some(p) = self.peer(peer) else { return };
                self.disconnect(p);
            }
            Op::Drain { peer, max } => {
                if let Some(p) = self.peer(peer) {
                    self.drain(p, max);
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(ms);
                if self.router.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.router.handle_timeout(self.now);
                }
                assert!(
                    self.router.poll_timeout().is_none_or(|t| t > self.now),
                    "an expired deadline survived handle_timeout"
                );
            }
        }
        self.events();
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
                let p = self
                    .peers
                    .iter()
                    .position(|peer| peer.conn == conn)
                    .expect("known conn");
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
            if let Some(c) = peer.consumer.as_mut() {
                if frame.request_id == REG_ID {
                    continue;
                }
                let is_final = match frame.frame_type {
                    FrameType::Response => !frame.has_more(),
                    FrameType::Error => true,
                    t => panic!("consumer got a {t:?} frame"),
                };
                if !c.started.contains_key(&frame.request_id) {
                    // Garbage (a chunk of a request never started) is
                    // answered under its id, and nothing else may name one.
                    assert_eq!(
                        (frame.frame_type, ErrorPayload::decode(&frame.payload).code),
                        (FrameType::Error, ErrorCode::UNKNOWN_REQUEST),
                        "frame for a request the consumer never started"
                    );
                    continue;
                }
                if is_final {
                    let n = c.finals.entry(frame.request_id).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "request {:?} ended twice", frame.request_id);
                }
            } else if let Some(pr) = peer.provider.as_mut() {
                match frame.frame_type {
                    FrameType::Start => pr.working.push(frame.request_id),
                    FrameType::Error => pr.working.retain(|id| *id != frame.request_id),
                    _ => {}
                }
            }
        }
    }
}

fn run(ops: Vec<Op>) {
    let mut config = RouterConfig::default();
    config.max_frame_payload = 1024;
    config.default_timeout = Duration::from_secs(1);
    config.max_timeout = Duration::from_secs(2);
    config.max_requests = 12;
    config.max_requests_per_consumer = 4;
    config.max_queued_frames = 3;
    config.max_queued_bytes = 64;
    config.max_queued_errors = 3;
    let mut sim = Sim {
        router: Router::new(config).expect("valid"),
        peers: Vec::new(),
        now: epoch(),
        next_conn: 0,
    };
    for op in ops {
        sim.apply(op);
    }
    // Let everything settle: every deadline passes, every queue drains.
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
    assert_eq!(sim.router.poll_timeout(), None);
    for peer in sim.peers.iter().filter(|p| p.alive) {
        let Some(c) = &peer.consumer else { continue };
        let cancelled: BTreeSet<_> = c
            .started
            .iter()
            .filter(|(_, c)| **c)
            .map(|(id, _)| *id)
            .collect();
        for id in c.started.keys().filter(|id| !cancelled.contains(id)) {
            assert_eq!(
                c.finals.get(id).copied().unwrap_or(0),
                1,
                "request {id:?} of {:?} got no final frame",
                peer.conn
            );
        }
    }
    let s = sim.router.stats();
    assert!(s.frames_out <= s.frames_in + s.error_frames + s.registrations);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn router_never_loses_or_duplicates_a_request(ops in proptest::collection::vec(op(), 0..120)) {
        run(ops);
    }
}

#[test]
fn a_typical_session() {
    use Op::*;
    run(vec![
        Connect {
            provider: true,
            channel: 0,
        },
        Connect {
            provider: false,
            channel: 0,
        },
        Drain { peer: 0, max: 9 },
        Drain { peer: 1, max: 9 },
        Start { peer: 1 },
        Chunk {
            peer: 1,
            req: 0,
            len: 10,
        },
        End { peer: 1, req: 0 },
        Drain { peer: 0, max: 9 },
        Respond {
            peer: 0,
            req: 0,
            kind: 1,
        },
        Start { peer: 1 },
        Drain { peer: 0, max: 9 },
        Disconnect { peer: 0 },
        Start { peer: 0 },
        Advance { ms: 5000 },
    ]);
}
