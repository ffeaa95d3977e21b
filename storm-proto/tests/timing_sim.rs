//! Deterministic simulation on virtual time: several clients, each with an
//! [`EndpointSet`] over the same servers and a [`Heartbeat`] per connection.
//! Servers crash silently (half-open connections: no FIN, pongs just stop)
//! and come back; every message has a random latency (FIFO per connection,
//! so independent connections interleave in any order).
//!
//! Checked: no false dead-peer verdicts, dead peers detected in bounded
//! time, every RTT sample is the true round trip, no busy loops, and clients
//! find a live server again.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storm_proto::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
use storm_proto::reconnect::{BackoffConfig, BackoffStep, EndpointSet};

mod common;
use common::epoch;

const SERVERS: usize = 3;
const CLIENTS: usize = 4;
const INTERVAL: u64 = 1_000;
const MAX_MISSED: u32 = 3;
/// One-way latency is below half the interval: a live server always answers
/// a ping before the next tick.
const MAX_ONE_WAY: u64 = INTERVAL / 2 - 1;
const BACKOFF_CAP: u64 = 4_000;
const END: u64 = 600_000;

struct Server {
    up: bool,
    /// Bumped by every crash: a connection lives in one incarnation.
    incarnation: usize,
    /// When each incarnation crashed.
    crash_times: Vec<u64>,
    /// Upcoming (time, up) toggles, soonest last.
    toggles: Vec<(u64, bool)>,
}

struct Conn {
    server: usize,
    incarnation: usize,
    heartbeat: Heartbeat,
    /// Pings in flight: (payload, sent, pong arrival or None if lost).
    pings: Vec<([u8; 8], u64, Option<u64>)>,
    /// Arrival time of the last pong, to keep the connection FIFO.
    last_arrival: u64,
}

struct Client {
    endpoints: EndpointSet<usize>,
    conn: Option<Conn>,
    connected_ms: u64,
    attempts: u64,
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = epoch();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // Rounded up, so waking at `at(ms_of(d))` is never before `d`.
    let ms_of = |t: Instant| t.duration_since(t0).as_nanos().div_ceil(1_000_000) as u64;

    let mut servers: Vec<Server> = (0..SERVERS)
        .map(|_| {
            let mut toggles = Vec::new();
            let mut t = 0;
            let mut up = true;
            while t < END {
                t += rng.random_range(1_000..60_000);
                up = !up;
                toggles.push((t, up));
            }
            toggles.reverse();
            Server {
                up: true,
                incarnation: 0,
                crash_times: Vec::new(),
                toggles,
            }
        })
        .collect();
    let backoff = BackoffConfig::exponential(
        Duration::from_millis(100),
        2.0,
        Duration::from_millis(BACKOFF_CAP),
    )
    .with_stable_after(Duration::from_secs(5));
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|c| Client {
            endpoints: EndpointSet::new(0..SERVERS, backoff.clone(), seed ^ c as u64).unwrap(),
            conn: None,
            connected_ms: 0,
            attempts: 0,
        })
        .collect();
    let hb_config = HeartbeatConfig::default()
        .with_interval(Duration::from_millis(INTERVAL))
        .with_max_missed(MAX_MISSED);

    let mut now = 0u64;
    let mut steps_at_now = 0;
    loop {
        // Connect every client that has no connection and may try.
        for client in &mut clients {
            while client.conn.is_none() {
                let Some((i, &server)) = client.endpoints.next(at(now)) else {
                    break;
                };
                client.attempts += 1;
                if servers[server].up {
                    client.endpoints.mark_up(i, at(now)).unwrap();
                    client.conn = Some(Conn {
                        server,
                        incarnation: servers[server].incarnation,
                        heartbeat: Heartbeat::new(hb_config.clone(), at(now)).unwrap(),
                        pings: Vec::new(),
                        last_arrival: now,
                    });
                } else {
                    let step = client.endpoints.mark_down(i, at(now)).unwrap();
                    assert!(matches!(step, BackoffStep::Retry { delay, .. }
                        if delay <= Duration::from_millis(BACKOFF_CAP)));
                }
            }
        }

        // The next thing that happens, anywhere.
        let mut next = END;
        for server in &servers {
            if let Some(&(t, _)) = server.toggles.last() {
                next = next.min(t);
            }
        }
        for client in &clients {
            let deadline = match &client.conn {
                Some(conn) => conn.heartbeat.poll_timeout(),
                None => client.endpoints.poll_timeout(),
            };
            if let Some(d) = deadline {
                next = next.min(ms_of(d));
            }
            for (_, _, arrival) in client.conn.iter().flat_map(|c| &c.pings) {
                if let Some(a) = arrival {
                    next = next.min(*a);
                }
            }
        }
        assert!(next >= now, "time went backwards");
        if next == now {
            steps_at_now += 1;
            assert!(steps_at_now < 100, "busy loop at {now} ms");
        } else {
            for client in &mut clients {
                if client.conn.is_some() {
                    client.connected_ms += next - now;
                }
            }
            steps_at_now = 0;
        }
        now = next;
        if now >= END {
            break;
        }

        for server in &mut servers {
            while server.toggles.last().is_some_and(|&(t, _)| t <= now) {
                let (_, up) = server.toggles.pop().unwrap();
                if server.up && !up {
                    server.crash_times.push(now);
                    server.incarnation += 1;
                }
                server.up = up;
            }
        }

        for client in &mut clients {
            let Some(conn) = &mut client.conn else {
                continue;
            };
            // Deliver pongs due now, in order.
            while let Some(pos) = conn.pings.iter().position(|p| p.2 == Some(now)) {
                let (payload, sent, _) = conn.pings.remove(pos);
                conn.heartbeat.handle_pong(at(now), &payload);
                while let Some(event) = conn.heartbeat.poll_event() {
                    assert_eq!(
                        event,
                        HeartbeatEvent::Rtt(Duration::from_millis(now - sent)),
                        "RTT must be the true round trip"
                    );
                }
            }
            conn.heartbeat.handle_timeout(at(now));
            let mut dead = false;
            while let Some(event) = conn.heartbeat.poll_event() {
                match event {
                    HeartbeatEvent::SendPing(payload) => {
                        let one_way = rng.random_range(1..=MAX_ONE_WAY);
                        let server = &servers[conn.server];
                        // The server answers when the ping reaches it, if up.
                        let reach = now + one_way;
                        let answered = server.up
                            && server.incarnation == conn.incarnation
                            && server.toggles.last().is_none_or(|&(t, _)| t > reach);
                        let arrival = answered.then(|| {
                            let a =
                                (reach + rng.random_range(1..=MAX_ONE_WAY)).max(conn.last_arrival);
                            conn.last_arrival = a;
                            a
                        });
                        conn.pings.push((payload, now, arrival));
                    }
                    HeartbeatEvent::PeerDead { missed } => {
                        assert_eq!(missed, MAX_MISSED);
                        let server = &servers[conn.server];
                        // Never a false verdict: the server has been down
                        // since before the first unanswered ping reached it (its
                        // one-way latency is at most MAX_ONE_WAY).
                        let Some(&crash) = server.crash_times.get(conn.incarnation) else {
                            panic!("live connection declared dead at {now} ms");
                        };
                        let unanswered = u64::from(MAX_MISSED) * INTERVAL;
                        assert!(crash + unanswered < now + MAX_ONE_WAY, "early at {now}");
                        // Detected within max_missed + 1 intervals.
                        let bound = (u64::from(MAX_MISSED) + 1) * INTERVAL;
                        assert!(now < crash + bound, "late detection at {now}");
                        dead = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if dead {
                let server = conn.server;
                client.conn = None;
                let _ = client.endpoints.mark_down(server, at(now)).unwrap();
            }
        }
    }

    // Liveness: with three servers flapping independently, every client is
    // connected most of the time.
    for client in &clients {
        assert!(
            client.connected_ms > END / 2,
            "client connected only {} of {END} ms",
            client.connected_ms
        );
        assert!(client.attempts > 1);
    }
}

#[test]
fn clients_survive_flapping_servers() {
    for seed in 0..8 {
        run(seed);
    }
}
