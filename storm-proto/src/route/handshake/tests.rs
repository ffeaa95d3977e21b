//! Unit tests of every handshake step and every rejection.

use super::*;
use crate::test_util::epoch;

const SYN_MSG: &str = r#"{"event":"SMHandshake","data":"SYN"}"#;
const SYN_ACK_MSG: &str = r#"{"event":"SMHandshake","data":"SYN/ACK"}"#;
const ACK_MSG: &str = r#"{"event":"SMHandshake","data":"ACK"}"#;
const END_MSG: &str = r#"{"event":"SMHandshakeEnd"}"#;
const END_ACK_MSG: &str = r#"{"event":"SMHandshakeEnd","data":"ACK"}"#;

fn route_msg(name: &str) -> String {
    format!(r#"{{"event":"SMHandshake","data":"{name}"}}"#)
}

fn server_with(policy: UnknownRoutePolicy, limits: Limits, now: Instant) -> ServerHandshake {
    let config = ServerConfig {
        routes: RouteTable::new(["chat", "prices"]).unwrap(),
        unknown_routes: policy,
        limits,
        ..ServerConfig::default()
    };
    ServerHandshake::new(Arc::new(config), now).unwrap()
}

fn server(now: Instant) -> ServerHandshake {
    server_with(UnknownRoutePolicy::Reject, Limits::default(), now)
}

/// A server past SYN and ACK, its SYN/ACK drained.
fn server_in_routes(policy: UnknownRoutePolicy, limits: Limits, now: Instant) -> ServerHandshake {
    let mut s = server_with(policy, limits, now);
    s.handle_message(now, SYN_MSG).unwrap();
    s.handle_message(now, ACK_MSG).unwrap();
    assert_eq!(drain(&mut s.common.transmit), [SYN_ACK_MSG]);
    s
}

fn drain(queue: &mut VecDeque<String>) -> Vec<String> {
    queue.drain(..).collect()
}

fn client(routes: &[&str], now: Instant) -> ClientHandshake {
    let config = ClientConfig {
        routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        ..ClientConfig::default()
    };
    ClientHandshake::new(&config, now).unwrap()
}

/// A client past SYN/ACK, its output drained.
fn client_awaiting_acks(routes: &[&str], now: Instant) -> ClientHandshake {
    let mut c = client(routes, now);
    assert_eq!(c.poll_transmit().as_deref(), Some(SYN_MSG));
    c.handle_message(now, SYN_ACK_MSG).unwrap();
    let mut want = vec![ACK_MSG.to_owned()];
    want.extend(routes.iter().map(|r| route_msg(r)));
    want.push(END_MSG.to_owned());
    assert_eq!(drain(&mut c.common.transmit), want);
    c
}

/// Checks the machine failed with `err`: sticky, `SMError` queued (unless
/// the peer sent one), no deadline left, no event.
fn assert_failed_server(s: &mut ServerHandshake, now: Instant, err: &HandshakeError) {
    assert_eq!(s.error(), Some(err));
    assert!(!s.is_ready());
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.poll_event(), None);
    let out = drain(&mut s.common.transmit);
    if matches!(err, HandshakeError::PeerError(_)) {
        assert!(out.is_empty(), "{out:?}");
    } else {
        let want = format!(
            r#"{{"event":"SMError","error":{}}}"#,
            json_str(&err.to_string())
        );
        assert_eq!(out.last(), Some(&want));
    }
    assert_eq!(s.handle_message(now, SYN_MSG).as_ref(), Err(err));
    assert_eq!(s.handle_message(now, END_MSG).as_ref(), Err(err));
    assert_eq!(s.poll_transmit(), None, "the error is sent once");
    assert_eq!(s.handle_timeout(now + Duration::from_secs(3600)), Ok(()));
}

fn json_str(s: &str) -> String {
    let mut out = String::new();
    wire::push_json_string(&mut out, s);
    out
}

#[test]
fn server_full_exchange() {
    let now = epoch();
    let mut s = server(now);
    assert_eq!(s.poll_transmit(), None, "the server speaks second");
    s.handle_message(now, SYN_MSG).unwrap();
    assert_eq!(s.poll_transmit().as_deref(), Some(SYN_ACK_MSG));
    s.handle_message(now, ACK_MSG).unwrap();
    assert_eq!(s.poll_transmit(), None);
    s.handle_message(now, route_msg("chat")).unwrap();
    assert_eq!(
        s.poll_transmit().as_deref(),
        Some(r#"{"event":"SMHandshake","data":"ACK","route":"chat"}"#)
    );
    s.handle_message(now, route_msg("video")).unwrap();
    assert_eq!(
        s.poll_transmit().as_deref(),
        Some(r#"{"event":"SMHandshake","data":"NACK","route":"video","error":"unknown route"}"#)
    );
    assert_eq!(s.poll_event(), None);
    assert!(s.poll_timeout().is_some());
    s.handle_message(now, END_MSG).unwrap();
    assert_eq!(s.poll_transmit().as_deref(), Some(END_ACK_MSG));
    let Some(Event::Ready(n)) = s.poll_event() else {
        panic!("not ready")
    };
    assert_eq!(n.routes(), ["chat"]);
    assert_eq!(
        n.rejected(),
        [RejectedRoute {
            route: "video".into(),
            reason: "unknown route".into()
        }]
    );
    assert!(n.contains("chat") && !n.contains("video"));
    assert!(s.is_ready() && s.error().is_none());
    assert_eq!(s.poll_event(), None, "Ready comes once");
    assert_eq!(s.poll_timeout(), None);
    // Misuse after Ready: an error, but nothing sent and not sticky.
    assert_eq!(
        s.handle_message(now, "ROUTENAME=chat\nhi"),
        Err(HandshakeError::AlreadyFinished)
    );
    assert!(HandshakeError::AlreadyFinished.is_local());
    assert_eq!(HandshakeError::AlreadyFinished.close_code(), None);
    assert_eq!(s.poll_transmit(), None);
    assert!(s.is_ready() && s.error().is_none());
}

#[test]
fn server_zero_routes_and_liberal_messages() {
    let now = epoch();
    let mut s = server(now);
    s.handle_message(now, br#"{"data":"SYN","event":"SMHandshake","v":[1]}"#)
        .unwrap();
    s.handle_message(
        now,
        " {\"event\" : \"SMHandshake\", \"data\" : \"\\u0041CK\"}\n",
    )
    .unwrap();
    s.handle_message(now, br#"{"event":"SMHandshakeEnd","data":"whatever"}"#)
        .unwrap();
    assert_eq!(drain(&mut s.common.transmit), [SYN_ACK_MSG, END_ACK_MSG]);
    assert_eq!(s.poll_event(), Some(Event::Ready(Negotiated::default())));
}

#[test]
fn server_rejects_out_of_order_steps() {
    let now = epoch();
    // Expecting SYN.
    for (msg, got) in [
        (ACK_MSG, "SMHandshake \"ACK\""),
        (END_MSG, "SMHandshakeEnd"),
        (
            r#"{"event":"SMHandshake","data":"chat"}"#,
            "SMHandshake \"chat\"",
        ),
        (r#"{"event":"Hello"}"#, "Hello"),
        (SYN_ACK_MSG, "SMHandshake \"SYN/ACK\""),
    ] {
        let mut s = server(now);
        let err = s.handle_message(now, msg).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnexpectedMessage {
                expected: "SYN",
                got: got.into()
            }
        );
        assert_eq!(err.close_code(), Some(1008));
        assert_failed_server(&mut s, now, &err);
    }
    // Expecting ACK.
    for msg in [SYN_MSG, END_MSG, &route_msg("chat")] {
        let mut s = server(now);
        s.handle_message(now, SYN_MSG).unwrap();
        let err = s.handle_message(now, msg).unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::UnexpectedMessage {
                    expected: "ACK",
                    ..
                }
            ),
            "{err}"
        );
        assert_failed_server(&mut s, now, &err);
    }
    // Expecting routes: a handshake message without data, or another event.
    for msg in [
        r#"{"event":"SMHandshake"}"#,
        r#"{"event":"Other","data":"chat"}"#,
    ] {
        let mut s = server_in_routes(UnknownRoutePolicy::Reject, Limits::default(), now);
        let err = s.handle_message(now, msg).unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::UnexpectedMessage {
                    expected: "a route name or SMHandshakeEnd",
                    ..
                }
            ),
            "{err}"
        );
        assert_failed_server(&mut s, now, &err);
    }
}

#[test]
fn server_rejects_bad_route_names() {
    let now = epoch();
    let limits = Limits {
        max_route_name_len: 8,
        max_message_len: 256,
        ..Limits::default()
    };
    for (name, error) in [
        ("", NameError::Empty),
        ("123456789", NameError::TooLong { len: 9, max: 8 }),
        ("a\\nb", NameError::ControlCharacter),
        ("SYN", NameError::Reserved),
        ("ACK", NameError::Reserved),
        ("NACK", NameError::Reserved),
    ] {
        let mut s = server_in_routes(UnknownRoutePolicy::Reject, limits, now);
        let err = s.handle_message(now, route_msg(name)).unwrap_err();
        let HandshakeError::InvalidRouteName { error: got, .. } = &err else {
            panic!("{name}: {err}")
        };
        assert_eq!(got, &error, "{name}");
        assert_failed_server(&mut s, now, &err);
    }
    // The name quoted back is truncated.
    let limits = Limits::default();
    let mut s = server_in_routes(UnknownRoutePolicy::Reject, limits, now);
    let err = s
        .handle_message(now, route_msg(&"x".repeat(200)))
        .unwrap_err();
    let HandshakeError::InvalidRouteName { name, .. } = err else {
        panic!()
    };
    assert_eq!(name.len(), 64);
}

#[test]
fn server_limits_route_count() {
    let now = epoch();
    let limits = Limits {
        max_routes: 2,
        ..Limits::default()
    };
    let mut s = server_in_routes(UnknownRoutePolicy::Reject, limits, now);
    s.handle_message(now, route_msg("chat")).unwrap();
    s.handle_message(now, route_msg("chat")).unwrap(); // duplicates count
    let err = s.handle_message(now, route_msg("prices")).unwrap_err();
    assert_eq!(err, HandshakeError::TooManyRoutes { max: 2 });
    assert_failed_server(&mut s, now, &err);

    // Zero allowed: only the end marker.
    let limits = Limits {
        max_routes: 0,
        ..Limits::default()
    };
    let mut s = server_in_routes(UnknownRoutePolicy::Reject, limits, now);
    let err = s.handle_message(now, route_msg("chat")).unwrap_err();
    assert_eq!(err, HandshakeError::TooManyRoutes { max: 0 });
    let mut s = server_in_routes(UnknownRoutePolicy::Reject, limits, now);
    s.handle_message(now, END_MSG).unwrap();
    assert!(s.is_ready());
}

#[test]
fn server_duplicates_are_acknowledged_but_negotiated_once() {
    let now = epoch();
    let mut s = server_in_routes(UnknownRoutePolicy::Reject, Limits::default(), now);
    for name in ["chat", "video", "chat", "video"] {
        s.handle_message(now, route_msg(name)).unwrap();
    }
    s.handle_message(now, END_MSG).unwrap();
    assert_eq!(drain(&mut s.common.transmit).len(), 5);
    let Some(Event::Ready(n)) = s.poll_event() else {
        panic!()
    };
    assert_eq!(n.routes(), ["chat"]);
    assert_eq!(n.rejected().len(), 1);
}

#[test]
fn server_unknown_route_policies() {
    let now = epoch();
    let mut s = server_in_routes(UnknownRoutePolicy::Fail, Limits::default(), now);
    s.handle_message(now, route_msg("chat")).unwrap();
    let err = s.handle_message(now, route_msg("video")).unwrap_err();
    assert_eq!(err, HandshakeError::UnknownRoute("video".into()));
    assert_failed_server(&mut s, now, &err);

    let mut s = server_in_routes(UnknownRoutePolicy::Accept, Limits::default(), now);
    s.handle_message(now, route_msg("video")).unwrap();
    s.handle_message(now, route_msg("chat")).unwrap();
    s.handle_message(now, END_MSG).unwrap();
    let out = drain(&mut s.common.transmit);
    assert!(out.iter().all(|m| !m.contains("NACK")), "{out:?}");
    let Some(Event::Ready(n)) = s.poll_event() else {
        panic!()
    };
    assert_eq!(n.routes(), ["video", "chat"]);
}

#[test]
fn server_rejects_malformed_and_oversized_messages() {
    let now = epoch();
    for msg in [
        &b"{event: SMHandshake, data: SYN}"[..],
        b"",
        b"SYN",
        b"{\"event\":\"SMHandshake\",\"data\":\"SYN\"",
        b"{\"event\":7}",
        b"{\"event\":\"SMHandshake\",\"data\":[\"SYN\"]}",
        b"\xff\xfe",
    ] {
        let mut s = server(now);
        let err = s.handle_message(now, msg).unwrap_err();
        assert!(matches!(err, HandshakeError::Malformed(_)), "{err}");
        assert_failed_server(&mut s, now, &err);
    }
    let limits = Limits {
        max_route_name_len: 8,
        max_message_len: 200,
        ..Limits::default()
    };
    let mut s = server_with(UnknownRoutePolicy::Reject, limits, now);
    let long = format!(
        r#"{{"event":"SMHandshake","data":"SYN","pad":"{}"}}"#,
        "x".repeat(200)
    );
    let err = s.handle_message(now, &long).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::MessageTooLong {
            len: long.len(),
            max: 200
        }
    );
    assert_eq!(err.close_code(), Some(1009));
    assert_failed_server(&mut s, now, &err);
}

#[test]
fn server_takes_peer_errors() {
    let now = epoch();
    let mut s = server(now);
    let err = s
        .handle_message(now, br#"{"event":"SMError","error":"bye"}"#)
        .unwrap_err();
    assert_eq!(err, HandshakeError::PeerError("bye".into()));
    assert_failed_server(&mut s, now, &err);
    let mut s = server(now);
    let long = format!(r#"{{"event":"SMError","error":"{}"}}"#, "é".repeat(200));
    let HandshakeError::PeerError(why) = s.handle_message(now, long).unwrap_err() else {
        panic!()
    };
    assert!(why.len() <= 256 && why.len() >= 254);
    let mut s = server(now);
    let err = s
        .handle_message(now, br#"{"event":"SMError"}"#)
        .unwrap_err();
    assert_eq!(err, HandshakeError::PeerError("no reason given".into()));
}

#[test]
fn timeouts() {
    let now = epoch();
    let ten = Duration::from_secs(10);
    let mut s = server(now);
    assert_eq!(s.poll_timeout(), Some(now + ten));
    assert_eq!(
        s.handle_timeout(now + ten - Duration::from_nanos(1)),
        Ok(())
    );
    assert_eq!(s.poll_timeout(), Some(now + ten), "not fired early");
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.handle_timeout(now + ten), Err(HandshakeError::Timeout));
    assert_failed_server(&mut s, now + ten, &HandshakeError::Timeout);

    // A message at the deadline fails too, before it is looked at.
    let mut s = server(now);
    s.handle_message(now, SYN_MSG).unwrap();
    assert_eq!(
        s.handle_message(now + ten, ACK_MSG),
        Err(HandshakeError::Timeout)
    );
    assert_eq!(drain(&mut s.common.transmit).len(), 2);

    // Ready clears the deadline.
    let mut c = client_awaiting_acks(&[], now);
    assert_eq!(c.poll_timeout(), Some(now + ten));
    c.handle_message(now, END_ACK_MSG).unwrap();
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.handle_timeout(now + ten), Ok(()));
    assert!(c.is_ready());

    // The client times out the same way.
    let mut c = client(&["chat"], now);
    assert_eq!(
        c.handle_timeout(now + 2 * ten),
        Err(HandshakeError::Timeout)
    );
    assert_eq!(c.error(), Some(&HandshakeError::Timeout));
    assert_eq!(c.poll_timeout(), None);
    let out = drain(&mut c.common.transmit);
    assert_eq!(
        out,
        [
            SYN_MSG,
            r#"{"event":"SMError","error":"route handshake timed out"}"#
        ]
    );

    // No timeout, or one too far to represent: no deadline.
    for timeout in [None, Some(Duration::MAX)] {
        let config = ServerConfig {
            handshake_timeout: timeout,
            ..ServerConfig::default()
        };
        let mut s = ServerHandshake::new(Arc::new(config), now).unwrap();
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.handle_timeout(now + ten * 1000), Ok(()));
    }
}

#[test]
fn client_full_exchange() {
    let now = epoch();
    let mut c = client_awaiting_acks(&["chat", "video", "prices"], now);
    c.handle_message(
        now,
        r#"{"event":"SMHandshake","data":"ACK","route":"chat"}"#,
    )
    .unwrap();
    c.handle_message(
        now,
        r#"{"event":"SMHandshake","data":"NACK","route":"video","error":"unknown route"}"#,
    )
    .unwrap();
    assert_eq!(c.poll_event(), None);
    // Without the route field, and as a bare word: also an acknowledgement.
    c.handle_message(now, "ACK").unwrap();
    assert!(!c.is_ready());
    c.handle_message(now, END_ACK_MSG).unwrap();
    assert_eq!(c.poll_transmit(), None);
    let Some(Event::Ready(n)) = c.poll_event() else {
        panic!("not ready")
    };
    assert_eq!(n.routes(), ["chat", "prices"]);
    assert_eq!(
        n.rejected(),
        [RejectedRoute {
            route: "video".into(),
            reason: "unknown route".into()
        }]
    );
    assert_eq!(
        c.handle_message(now, END_ACK_MSG),
        Err(HandshakeError::AlreadyFinished)
    );
}

#[test]
fn client_accepts_final_ack_forms() {
    let now = epoch();
    for last in [END_ACK_MSG, END_MSG, ACK_MSG, "ACK", " ACK\n"] {
        let mut c = client_awaiting_acks(&["a"], now);
        c.handle_message(now, ACK_MSG).unwrap();
        c.handle_message(now, last).unwrap();
        assert!(c.is_ready(), "{last}");
    }
    // A NACK without a reason.
    let mut c = client_awaiting_acks(&["a"], now);
    c.handle_message(now, r#"{"event":"SMHandshake","data":"NACK"}"#)
        .unwrap();
    c.handle_message(now, END_ACK_MSG).unwrap();
    let Some(Event::Ready(n)) = c.poll_event() else {
        panic!()
    };
    assert_eq!(n.rejected()[0].reason, "rejected");
}

/// Checks a failed client like [`assert_failed_server`].
fn assert_failed_client(c: &mut ClientHandshake, now: Instant, err: &HandshakeError) {
    assert_eq!(c.error(), Some(err));
    assert!(!c.is_ready());
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.poll_event(), None);
    let out = drain(&mut c.common.transmit);
    if !matches!(err, HandshakeError::PeerError(_)) {
        let want = format!(
            r#"{{"event":"SMError","error":{}}}"#,
            json_str(&err.to_string())
        );
        assert_eq!(out.last(), Some(&want));
    }
    assert_eq!(c.handle_message(now, SYN_ACK_MSG).as_ref(), Err(err));
    assert_eq!(c.poll_transmit(), None);
}

#[test]
fn client_rejects_out_of_order_and_mismatched_replies() {
    let now = epoch();
    for msg in [SYN_MSG, ACK_MSG, "ACK", END_ACK_MSG, "{\"event\":\"x\"}"] {
        let mut c = client(&["a"], now);
        let err = c.handle_message(now, msg).unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::UnexpectedMessage {
                    expected: "SYN/ACK",
                    ..
                }
            ),
            "{msg}: {err}"
        );
        assert_failed_client(&mut c, now, &err);
    }
    // Awaiting a route's answer.
    for msg in [END_ACK_MSG, SYN_ACK_MSG, &route_msg("a")] {
        let mut c = client_awaiting_acks(&["a"], now);
        let err = c.handle_message(now, msg).unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::UnexpectedMessage {
                    expected: "ACK or NACK for a route",
                    ..
                }
            ),
            "{msg}: {err}"
        );
        assert_failed_client(&mut c, now, &err);
    }
    // An answer for another route.
    let mut c = client_awaiting_acks(&["a", "b"], now);
    let err = c
        .handle_message(now, r#"{"event":"SMHandshake","data":"ACK","route":"b"}"#)
        .unwrap_err();
    assert_eq!(
        err,
        HandshakeError::RouteMismatch {
            expected: "a".into(),
            got: "b".into()
        }
    );
    assert_failed_client(&mut c, now, &err);
    // Awaiting the final acknowledgement.
    for msg in [
        r#"{"event":"SMHandshake","data":"ACK","route":"a"}"#,
        r#"{"event":"SMHandshakeEnd","data":"NACK"}"#,
        r#"{"event":"SMHandshake","data":"NACK"}"#,
    ] {
        let mut c = client_awaiting_acks(&[], now);
        let err = c.handle_message(now, msg).unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::UnexpectedMessage {
                    expected: "SMHandshakeEnd ACK",
                    ..
                }
            ),
            "{msg}: {err}"
        );
        assert_failed_client(&mut c, now, &err);
    }
    // Malformed, oversized, peer error.
    let mut c = client(&[], now);
    let err = c.handle_message(now, "nope").unwrap_err();
    assert!(matches!(err, HandshakeError::Malformed(_)));
    assert_failed_client(&mut c, now, &err);
    let mut c = client(&[], now);
    let err = c.handle_message(now, vec![b' '; 4097]).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::MessageTooLong {
            len: 4097,
            max: 4096
        }
    );
    let mut c = client_awaiting_acks(&["a"], now);
    let err = c
        .handle_message(now, r#"{"event":"SMError","error":"unknown route \"a\""}"#)
        .unwrap_err();
    assert_eq!(err, HandshakeError::PeerError("unknown route \"a\"".into()));
    assert_failed_client(&mut c, now, &err);
}

#[test]
fn client_config_validation() {
    let now = epoch();
    let config = |routes: &[&str], limits| ClientConfig {
        routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        limits,
        ..ClientConfig::default()
    };
    let ok = config(&["a", "b", "a"], Limits::default());
    assert_eq!(ok.validate(), Ok(()));
    let mut c = ClientHandshake::new(&ok, now).unwrap();
    c.handle_message(now, SYN_ACK_MSG).unwrap();
    // SYN, ACK, a, b, end: the duplicate is sent once.
    assert_eq!(drain(&mut c.common.transmit).len(), 5);

    let two = Limits {
        max_routes: 2,
        ..Limits::default()
    };
    assert_eq!(
        ClientHandshake::new(&config(&["a", "b", "c"], two), now).err(),
        Some(ConfigError::TooManyRoutes { count: 3, max: 2 })
    );
    assert!(ClientHandshake::new(&config(&["a", "b", "a"], two), now).is_ok());
    assert!(matches!(
        ClientHandshake::new(&config(&["ok", "SYN/ACK"], two), now).err(),
        Some(ConfigError::InvalidRouteName {
            error: NameError::Reserved,
            ..
        })
    ));
    let bad_limits = Limits {
        max_route_name_len: 0,
        ..Limits::default()
    };
    assert!(matches!(
        ClientHandshake::new(&config(&[], bad_limits), now).err(),
        Some(ConfigError::InvalidLimits(_))
    ));
}

#[test]
fn server_config_validation() {
    let now = epoch();
    let config = ServerConfig {
        routes: RouteTable::new(["x".repeat(200)]).unwrap(),
        ..ServerConfig::default()
    };
    assert!(matches!(
        ServerHandshake::new(Arc::new(config), now).err(),
        Some(ConfigError::InvalidRouteName {
            error: NameError::TooLong { len: 200, max: 128 },
            ..
        })
    ));
    let config = ServerConfig {
        limits: Limits {
            max_message_len: 10,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    assert!(matches!(
        config.validate(),
        Err(ConfigError::InvalidLimits(_))
    ));
    assert_eq!(
        ServerConfig::default().handshake_timeout,
        Some(DEFAULT_HANDSHAKE_TIMEOUT)
    );
    assert_eq!(
        ClientConfig::default().handshake_timeout,
        Some(DEFAULT_HANDSHAKE_TIMEOUT)
    );
}
