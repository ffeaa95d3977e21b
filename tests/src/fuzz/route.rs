//! Fuzz driver for the route handshake (`fuzz/fuzz_targets/route_handshake.rs`).
//!
//! Input: the first byte picks the server's unknown-route policy (bits 0–1)
//! and how far virtual time moves per message (bits 2–7, 0..=63 × 50 ms, so
//! the 10 s handshake timeout is reachable); the rest is split into
//! messages at every `0xFF` byte (never valid UTF-8, so the messages
//! themselves can be any text). Each message goes to a server machine and
//! to a client machine; once a side is ready, later messages go to the
//! route-addressed layer instead ([`Router::resolve`] on the server,
//! [`envelope::decode`] and [`ErrorReply::parse`] on the client).
//!
//! Checked on every step: no panic; a failed machine stays failed with the
//! same error and has no deadline; a running machine never reports a
//! deadline at or before `now` after `handle_timeout(now)`; ready and failed
//! never at once; `Ready` comes at most once; every message to send is a
//! bounded JSON object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use storm_proto::route::envelope::{self, ErrorReply};
use storm_proto::route::{
    ClientConfig, ClientHandshake, Event, HandshakeError, Limits, RouteTable, Router, ServerConfig,
    ServerHandshake, UnknownRoutePolicy,
};

/// The separator between messages in a fuzz input.
pub const SEPARATOR: u8 = 0xFF;

const LIMITS: Limits = Limits::DEFAULT
    .with_max_routes(4)
    .with_max_route_name_len(16)
    .with_max_message_len(256);

/// How far one input got (lets the corpus replay check that its seeds reach
/// the states they were written for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The server machine completed the handshake.
    pub server_ready: bool,
    /// The client machine completed the handshake.
    pub client_ready: bool,
    /// The server machine failed.
    pub server_failed: bool,
    /// The client machine failed.
    pub client_failed: bool,
}

/// Runs one fuzz input; panics if an invariant breaks.
pub fn route_handshake(data: &[u8]) {
    let _ = route_handshake_outcome(data);
}

/// [`route_handshake`], reporting how far the input got.
pub fn route_handshake_outcome(data: &[u8]) -> Outcome {
    let Some((&selector, rest)) = data.split_first() else {
        return Outcome::default();
    };
    let policy = match selector & 3 {
        0 => UnknownRoutePolicy::Reject,
        1 => UnknownRoutePolicy::Fail,
        _ => UnknownRoutePolicy::Accept,
    };
    let step = Duration::from_millis(u64::from(selector >> 2) * 50);
    let start = Instant::now();
    let table = RouteTable::new(["a", "b", "chat"]).expect("valid route names");
    let client_routes = vec!["a".to_owned(), "x".to_owned(), "chat".to_owned()];
    let server_config = Arc::new(ServerConfig {
        routes: table,
        unknown_routes: policy,
        limits: LIMITS,
        handshake_timeout: Some(Duration::from_secs(10)),
    });
    let client_config = ClientConfig {
        routes: client_routes,
        limits: LIMITS,
        handshake_timeout: Some(Duration::from_secs(10)),
    };
    let mut server = ServerHandshake::new(server_config.clone(), start).expect("valid config");
    let mut client = ClientHandshake::new(&client_config, start).expect("valid config");
    let mut router: Option<Router> = None;
    let mut client_ready = false;
    drain_server(&mut server, &mut router, &server_config);
    drain_client(&mut client, &mut client_ready);

    let mut now = start;
    for msg in rest.split(|&b| b == SEPARATOR) {
        now += step;

        // Server side.
        if let Some(router) = &router {
            if let Err(err) = router.resolve(msg) {
                let reply = err.error_reply();
                assert!(ErrorReply::parse(reply.as_bytes()).is_some(), "{reply}");
            }
        } else {
            let before = server.error().cloned();
            let result = server.handle_message(now, msg);
            check_result(before, &result, server.is_ready());
            check_timer(server.handle_timeout(now), server.poll_timeout(), now);
            check_state(server.is_ready(), server.error(), server.poll_timeout());
            drain_server(&mut server, &mut router, &server_config);
        }

        // Client side.
        if client_ready {
            if let Ok(addressed) = envelope::decode(msg, LIMITS.max_route_name_len) {
                assert!(addressed.header_len <= msg.len());
            } else {
                let _ = ErrorReply::parse(msg);
            }
        } else {
            let before = client.error().cloned();
            let result = client.handle_message(now, msg);
            check_result(before, &result, client.is_ready());
            check_timer(client.handle_timeout(now), client.poll_timeout(), now);
            check_state(client.is_ready(), client.error(), client.poll_timeout());
            drain_client(&mut client, &mut client_ready);
        }
    }
    Outcome {
        server_ready: router.is_some(),
        client_ready,
        server_failed: server.error().is_some(),
        client_failed: client.error().is_some(),
    }
}

fn drain_server(
    server: &mut ServerHandshake,
    router: &mut Option<Router>,
    config: &Arc<ServerConfig>,
) {
    while let Some(out) = server.poll_transmit() {
        check_output(&out);
    }
    while let Some(event) = server.poll_event() {
        match event {
            Event::Ready(negotiated) => {
                assert!(router.is_none(), "Ready twice");
                for route in negotiated.routes() {
                    assert!(
                        config.routes.contains(route)
                            || config.unknown_routes == UnknownRoutePolicy::Accept
                    );
                }
                *router = Some(Router::new(config.clone(), &negotiated));
            }
            _ => unreachable!("the handshake has one event"),
        }
    }
}

fn drain_client(client: &mut ClientHandshake, ready: &mut bool) {
    while let Some(out) = client.poll_transmit() {
        check_output(&out);
    }
    while let Some(event) = client.poll_event() {
        assert!(!*ready, "Ready twice");
        assert!(matches!(event, Event::Ready(_)));
        *ready = true;
    }
}

/// Outgoing messages are JSON objects of bounded size (the longest is an
/// `SMError` quoting a truncated route name or peer text).
fn check_output(out: &str) {
    assert!(out.starts_with('{') && out.ends_with('}'), "{out}");
    assert!(out.len() <= 1024, "{} bytes", out.len());
}

fn check_result(before: Option<HandshakeError>, result: &Result<(), HandshakeError>, ready: bool) {
    if let Some(err) = before {
        assert_eq!(result.as_ref(), Err(&err), "a failure is final");
    }
    if let Err(err) = result {
        assert!(!err.is_local() || ready, "local misuse only after Ready");
        assert!(err.close_code().is_some() || err.is_local());
    }
}

fn check_timer(fired: Result<(), HandshakeError>, deadline: Option<Instant>, now: Instant) {
    if fired.is_err() {
        assert_eq!(deadline, None);
    }
    if let Some(deadline) = deadline {
        assert!(deadline > now, "expired deadline after handle_timeout");
    }
}

fn check_state(ready: bool, error: Option<&HandshakeError>, deadline: Option<Instant>) {
    assert!(!(ready && error.is_some()));
    if ready || error.is_some() {
        assert_eq!(deadline, None);
    }
}
