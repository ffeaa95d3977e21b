//! The route handshake between a client and a server machine: a transcript
//! of a full exchange, and properties over any route list and any input.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use storm_proto::route::*;

mod common;
use common::epoch;

/// Every message on the wire, in order, prefixed with `C>` or `S>`.
fn run_pair(
    client: &mut ClientHandshake,
    server: &mut ServerHandshake,
    now: Instant,
    one_at_a_time: bool,
) -> (Vec<String>, Option<Negotiated>, Option<Negotiated>) {
    let mut transcript = Vec::new();
    let (mut client_ready, mut server_ready) = (None, None);
    for _ in 0..10_000 {
        let mut progressed = false;
        while let Some(msg) = client.poll_transmit() {
            transcript.push(format!("C> {msg}"));
            server.handle_message(now, &msg).expect("server");
            progressed = true;
            if one_at_a_time {
                break;
            }
        }
        while let Some(msg) = server.poll_transmit() {
            transcript.push(format!("S> {msg}"));
            client.handle_message(now, &msg).expect("client");
            progressed = true;
            if one_at_a_time {
                break;
            }
        }
        if let Some(Event::Ready(n)) = client.poll_event() {
            assert!(client_ready.replace(n).is_none());
        }
        if let Some(Event::Ready(n)) = server.poll_event() {
            assert!(server_ready.replace(n).is_none());
        }
        if !progressed {
            break;
        }
    }
    (transcript, client_ready, server_ready)
}

fn gateway(routes: &[&str], policy: UnknownRoutePolicy) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        routes: RouteTable::new(routes.iter().copied()).unwrap(),
        unknown_routes: policy,
        ..ServerConfig::default()
    })
}

#[test]
fn transcript_of_a_full_handshake() {
    let now = epoch();
    let config = gateway(&["Endpoint1", "Endpoint2"], UnknownRoutePolicy::Reject);
    let mut server = ServerHandshake::new(config.clone(), now).unwrap();
    let client_config = ClientConfig {
        routes: vec!["Endpoint1".into(), "Endpoint2".into(), "Endpoint3".into()],
        ..ClientConfig::default()
    };
    let mut client = ClientHandshake::new(&client_config, now).unwrap();
    let (transcript, client_ready, server_ready) = run_pair(&mut client, &mut server, now, true);
    let want = [
        r#"C> {"event":"SMHandshake","data":"SYN"}"#,
        r#"S> {"event":"SMHandshake","data":"SYN/ACK"}"#,
        r#"C> {"event":"SMHandshake","data":"ACK"}"#,
        r#"C> {"event":"SMHandshake","data":"Endpoint1"}"#,
        r#"S> {"event":"SMHandshake","data":"ACK","route":"Endpoint1"}"#,
        r#"C> {"event":"SMHandshake","data":"Endpoint2"}"#,
        r#"S> {"event":"SMHandshake","data":"ACK","route":"Endpoint2"}"#,
        r#"C> {"event":"SMHandshake","data":"Endpoint3"}"#,
        r#"S> {"event":"SMHandshake","data":"NACK","route":"Endpoint3","error":"unknown route"}"#,
        r#"C> {"event":"SMHandshakeEnd"}"#,
        r#"S> {"event":"SMHandshakeEnd","data":"ACK"}"#,
    ];
    assert_eq!(transcript, want);
    let (client_ready, server_ready) = (client_ready.unwrap(), server_ready.unwrap());
    assert_eq!(client_ready, server_ready);
    assert_eq!(client_ready.routes(), ["Endpoint1", "Endpoint2"]);
    assert_eq!(client_ready.rejected()[0].route, "Endpoint3");
    assert_eq!(client.poll_timeout(), None);
    assert_eq!(server.poll_timeout(), None);

    // Then route-addressed traffic both ways.
    let router = Router::new(config, &server_ready);
    let to_gateway = envelope::encode_text("Endpoint2", "{\"op\":\"sub\"}").unwrap();
    let addressed = router.resolve(to_gateway.as_bytes()).unwrap();
    assert_eq!(addressed.route, "Endpoint2");
    assert_eq!(addressed.payload, b"{\"op\":\"sub\"}");
    let mut reply = bytes::BytesMut::new();
    router
        .encode_reply(addressed.route, b"ok", &mut reply)
        .unwrap();
    let at_client = envelope::decode(&reply, 128).unwrap();
    assert_eq!(
        (at_client.route, at_client.payload),
        ("Endpoint2", &b"ok"[..])
    );
    let err = router.resolve(b"ROUTENAME=Endpoint3\nx").unwrap_err();
    let reply = envelope::ErrorReply::parse(err.error_reply().as_bytes()).unwrap();
    assert_eq!(reply.route.as_deref(), Some("Endpoint3"));
    assert_eq!(reply.error, UNKNOWN_ROUTE_REASON);
}

#[test]
fn pipelined_transcript_is_two_round_trips() {
    let now = epoch();
    let mut server =
        ServerHandshake::new(gateway(&["a"], UnknownRoutePolicy::Reject), now).unwrap();
    let config = ClientConfig {
        routes: vec!["a".into(), "b".into()],
        ..ClientConfig::default()
    };
    let mut client = ClientHandshake::new(&config, now).unwrap();
    let (transcript, client_ready, server_ready) = run_pair(&mut client, &mut server, now, false);
    let senders: String = transcript
        .iter()
        .map(|m| m.chars().next().unwrap())
        .collect();
    assert_eq!(senders, "CSCCCCSSS");
    assert_eq!(client_ready, server_ready);
}

#[test]
fn unknown_route_fails_the_handshake_under_fail_policy() {
    let now = epoch();
    let mut server = ServerHandshake::new(gateway(&["a"], UnknownRoutePolicy::Fail), now).unwrap();
    let config = ClientConfig {
        routes: vec!["a".into(), "b".into()],
        ..ClientConfig::default()
    };
    let mut client = ClientHandshake::new(&config, now).unwrap();
    let mut to_server: Vec<String> = Vec::new();
    let mut server_err = None;
    let mut client_err = None;
    for _ in 0..10 {
        to_server.extend(std::iter::from_fn(|| client.poll_transmit()));
        for msg in to_server.drain(..) {
            if let Err(e) = server.handle_message(now, &msg) {
                server_err.get_or_insert(e);
            }
        }
        while let Some(msg) = server.poll_transmit() {
            if let Err(e) = client.handle_message(now, &msg) {
                client_err.get_or_insert(e);
            }
        }
    }
    assert_eq!(server_err, Some(HandshakeError::UnknownRoute("b".into())));
    assert_eq!(
        client_err,
        Some(HandshakeError::PeerError("unknown route \"b\"".into()))
    );
    assert!(!client.is_ready() && !server.is_ready());
}

/// Route names: any non-control characters, as the handshake allows.
fn route_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-e]{1,2}",
        "[^\\p{Cc}]{1,24}",
        Just("\"quoted\\back/slash\"".to_owned()),
    ]
    .prop_filter("valid", |n| validate_route_name(n, 128).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any route list within the limits completes, and both sides agree on
    /// the accepted and rejected routes, which are what the policy says.
    #[test]
    fn any_route_list_completes_and_both_sides_agree(
        client_routes in prop::collection::vec(route_name(), 0..20),
        table in prop::collection::vec(route_name(), 0..20),
        accept_unknown in any::<bool>(),
        one_at_a_time in any::<bool>(),
    ) {
        let now = epoch();
        let policy =
            if accept_unknown { UnknownRoutePolicy::Accept } else { UnknownRoutePolicy::Reject };
        let table_refs: Vec<&str> = table.iter().map(String::as_str).collect();
        let mut server = ServerHandshake::new(gateway(&table_refs, policy), now).unwrap();
        let config = ClientConfig { routes: client_routes.clone(), ..ClientConfig::default() };
        let mut client = ClientHandshake::new(&config, now).unwrap();
        let (_, client_ready, server_ready) = run_pair(&mut client, &mut server, now, one_at_a_time);
        let client_ready = client_ready.expect("client ready");
        let server_ready = server_ready.expect("server ready");
        prop_assert_eq!(&client_ready, &server_ready);

        let mut seen = BTreeSet::new();
        let distinct: Vec<&String> = client_routes.iter().filter(|r| seen.insert(*r)).collect();
        let want: Vec<&String> = distinct
            .iter()
            .copied()
            .filter(|r| accept_unknown || table.contains(r))
            .collect();
        prop_assert_eq!(client_ready.routes().iter().collect::<Vec<_>>(), want);
        prop_assert_eq!(
            client_ready.routes().len() + client_ready.rejected().len(),
            distinct.len()
        );
        prop_assert!(client.poll_timeout().is_none() && server.poll_timeout().is_none());
    }

    /// Arbitrary messages, in any state of the exchange, never panic: each
    /// gives Ok or a typed error; failures are final; output stays JSON.
    #[test]
    fn arbitrary_messages_in_any_state(
        routes in prop::collection::vec(route_name(), 0..4),
        honest_steps in 0usize..12,
        junk in prop::collection::vec(junk_message(), 1..8),
        late_ms in prop::collection::vec(0u64..15_000, 8),
    ) {
        let start = epoch();
        let mut server =
            ServerHandshake::new(gateway(&["a", "b"], UnknownRoutePolicy::Reject), start).unwrap();
        let config = ClientConfig { routes, ..ClientConfig::default() };
        let mut client = ClientHandshake::new(&config, start).unwrap();
        // Some honest steps first, to reach any state.
        for _ in 0..honest_steps {
            if let Some(m) = client.poll_transmit() {
                let _ = server.handle_message(start, &m);
            }
            if let Some(m) = server.poll_transmit() {
                let _ = client.handle_message(start, &m);
            }
        }
        for (msg, ms) in junk.iter().zip(late_ms.iter().cycle()) {
            let now = start + Duration::from_millis(*ms);
            let s_was_failed = server.error().cloned();
            let c_was_failed = client.error().cloned();
            let s_res = server.handle_message(now, msg);
            let c_res = client.handle_message(now, msg);
            if let Some(err) = s_was_failed {
                prop_assert_eq!(s_res, Err(err));
            }
            if let Some(err) = c_was_failed {
                prop_assert_eq!(c_res, Err(err));
            }
            let _ = server.handle_timeout(now);
            let _ = client.handle_timeout(now);
            check_invariants(server.is_ready(), server.error(), server.poll_timeout(), now)?;
            check_invariants(client.is_ready(), client.error(), client.poll_timeout(), now)?;
            while let Some(out) = server.poll_transmit() {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{}", out);
            }
            while let Some(out) = client.poll_transmit() {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{}", out);
            }
        }
    }
}

fn check_invariants(
    ready: bool,
    error: Option<&HandshakeError>,
    deadline: Option<Instant>,
    now: Instant,
) -> Result<(), TestCaseError> {
    prop_assert!(!(ready && error.is_some()));
    if ready || error.is_some() {
        prop_assert_eq!(deadline, None);
    } else if let Some(deadline) = deadline {
        prop_assert!(deadline > now, "expired deadline left after handle_timeout");
    }
    Ok(())
}

/// Junk that often looks like the protocol: valid handshake messages,
/// near-misses, and random bytes.
fn junk_message() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        Just("SYN".to_owned()),
        Just("SYN/ACK".to_owned()),
        Just("ACK".to_owned()),
        Just("NACK".to_owned()),
        Just("a".to_owned()),
        Just(String::new()),
        "[a-z\\n\"]{0,6}",
    ];
    let event = prop_oneof![
        Just("SMHandshake"),
        Just("SMHandshakeEnd"),
        Just("SMError"),
        Just("x")
    ];
    prop_oneof![
        (event, word, any::<bool>()).prop_map(|(e, w, with_route)| {
            let mut v = serde_json::json!({ "event": e, "data": w });
            if with_route {
                v["route"] = serde_json::json!("a");
            }
            v.to_string().into_bytes()
        }),
        Just(b"ACK".to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
        "\\PC{0,40}".prop_map(String::into_bytes),
    ]
}
