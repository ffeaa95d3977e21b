use super::*;

const CH: ChannelId = ChannelId::from_bytes([0xc0; 16]);

fn rid(n: u8) -> RequestId {
    RequestId::from_bytes([n; 16])
}

fn router(config: RouterConfig) -> Router {
    Router::new(config).expect("valid")
}

fn small() -> RouterConfig {
    RouterConfig {
        max_frame_payload: 64,
        default_timeout: Duration::from_secs(5),
        max_timeout: Duration::from_secs(10),
        max_requests: 100,
        max_requests_per_consumer: 10,
        max_queued_frames: 4,
        max_queued_bytes: 100,
        max_queued_errors: 4,
        max_ended_requests: 4,
    }
}

fn frame(t: FrameType, id: RequestId, payload: &'static [u8]) -> Frame {
    Frame::new(t, id, Bytes::from_static(payload))
}

fn drain(r: &mut Router, conn: u64) -> Vec<Frame> {
    std::iter::from_fn(|| r.poll_transmit(ConnId(conn))).collect()
}

fn events(r: &mut Router) -> Vec<RouterEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

fn register(r: &mut Router, conn: u64, role: Role, timeout: Duration, now: Instant) {
    r.handle_connect(ConnId(conn)).expect("new");
    let reg = Registration {
        role,
        client_id: ClientId::from_bytes([conn as u8; 16]),
        channel_id: CH,
        timeout,
    };
    r.handle_frame(
        ConnId(conn),
        Frame::new(FrameType::Start, rid(0xee), reg.encode()),
        now,
    )
    .expect("known");
    let ack = drain(r, conn);
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].frame_type, FrameType::Response);
    assert_eq!(ack[0].request_id, rid(0xee));
}

/// A router with consumer 1 and providers 2, 3 registered.
fn setup(config: RouterConfig) -> (Router, Instant) {
    let now = crate::test_util::epoch();
    let mut r = router(config);
    register(&mut r, 1, Role::Consumer, Duration::ZERO, now);
    register(&mut r, 2, Role::Provider, Duration::ZERO, now);
    register(&mut r, 3, Role::Provider, Duration::ZERO, now);
    let _ = events(&mut r);
    (r, now)
}

fn error_code(f: &Frame) -> ErrorCode {
    assert_eq!(f.frame_type, FrameType::Error, "{f:?}");
    ErrorPayload::decode(&f.payload).code
}

fn send(r: &mut Router, conn: u64, f: Frame, now: Instant) {
    r.handle_frame(ConnId(conn), f, now).expect("known");
}

#[test]
fn request_is_forwarded_frame_by_frame_and_answered() {
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b"hdr"), now);
    assert_eq!(events(&mut r), [RouterEvent::Transmit(ConnId(2))]);
    let start = drain(&mut r, 2);
    assert_eq!(start.len(), 1);
    let (info, header) = RoutingInfo::split(&start[0].payload).expect("routing info");
    assert_eq!(info.client_id, ClientId::from_bytes([1; 16]));
    assert_eq!(info.channel_id, CH);
    assert_eq!(&header[..], b"hdr");
    let prid = start[0].request_id;
    assert_ne!(prid, rid(1), "ids are rewritten towards providers");
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"abc"), now);
    send(&mut r, 1, frame(FrameType::End, rid(1), b""), now);
    let rest = drain(&mut r, 2);
    assert_eq!(rest.len(), 2);
    assert_eq!(
        (rest[0].request_id, &rest[0].payload[..]),
        (prid, &b"abc"[..])
    );
    assert_eq!(rest[1].frame_type, FrameType::End);

    let mut part = frame(FrameType::Response, prid, b"pa");
    part.flags = FLAG_MORE;
    send(&mut r, 2, part, now);
    send(&mut r, 2, frame(FrameType::Response, prid, b"rt"), now);
    let back = drain(&mut r, 1);
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|f| f.request_id == rid(1)));
    assert!(back[0].has_more() && !back[1].has_more());
    assert_eq!(r.open_requests(), 0);
    assert_eq!(r.poll_timeout(), None);
    let s = r.stats();
    assert_eq!((s.requests_started, s.requests_completed), (1, 1));
    // A response after completion names a request the router no longer
    // has: the provider is told, the consumer hears nothing.
    send(&mut r, 2, frame(FrameType::Response, prid, b"again"), now);
    let told = drain(&mut r, 2);
    assert_eq!(told.len(), 1);
    assert_eq!(
        (told[0].request_id, error_code(&told[0])),
        (prid, ErrorCode::UNKNOWN_REQUEST)
    );
    assert_eq!(r.stats().unknown_requests, 1);
    assert!(drain(&mut r, 1).is_empty());
}

#[test]
fn round_robin_across_providers() {
    let (mut r, now) = setup(small());
    for n in 1..=4 {
        send(&mut r, 1, frame(FrameType::Start, rid(n), b""), now);
    }
    assert_eq!(drain(&mut r, 2).len(), 2);
    assert_eq!(drain(&mut r, 3).len(), 2);
}

#[test]
fn no_responders_fails_fast() {
    let now = crate::test_util::epoch();
    let mut r = router(small());
    register(&mut r, 1, Role::Consumer, Duration::ZERO, now);
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    let out = drain(&mut r, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(error_code(&out[0]), ErrorCode::NO_RESPONDERS);
    assert_eq!(out[0].request_id, rid(1));
    // The request's other frames are discarded, and counted.
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"x"), now);
    send(&mut r, 1, frame(FrameType::End, rid(1), b""), now);
    assert!(drain(&mut r, 1).is_empty());
    let s = r.stats();
    assert_eq!((s.no_responders, s.discarded_frames), (1, 2));
}

#[test]
fn provider_disconnect_fails_in_flight_requests() {
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::Start, rid(2), b""), now);
    let _ = drain(&mut r, 2);
    r.handle_disconnect(ConnId(2)).expect("known");
    let out = drain(&mut r, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_id, rid(1));
    assert_eq!(error_code(&out[0]), ErrorCode::PROVIDER_GONE);
    assert_eq!(r.open_requests(), 1);
    // New requests go to the remaining provider only.
    send(&mut r, 1, frame(FrameType::Start, rid(3), b""), now);
    assert_eq!(drain(&mut r, 3).len(), 2);
    assert_eq!(
        r.handle_disconnect(ConnId(2)),
        Err(RouterError::UnknownConn(ConnId(2)))
    );
    r.handle_disconnect(ConnId(3)).expect("known");
    send(&mut r, 1, frame(FrameType::Start, rid(4), b""), now);
    let codes: Vec<ErrorCode> = drain(&mut r, 1).iter().map(error_code).collect();
    assert_eq!(
        codes,
        [
            ErrorCode::PROVIDER_GONE,
            ErrorCode::PROVIDER_GONE,
            ErrorCode::NO_RESPONDERS
        ]
    );
}

#[test]
fn consumer_disconnect_and_cancel_tell_the_provider() {
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    let prid = drain(&mut r, 2)[0].request_id;
    send(&mut r, 1, frame(FrameType::Error, rid(1), b""), now);
    let out = drain(&mut r, 2);
    assert_eq!((out.len(), error_code(&out[0])), (1, ErrorCode::CANCELLED));
    assert_eq!(out[0].request_id, prid);
    assert_eq!(r.stats().cancelled, 1);
    // Cancelling an unknown request is answered: no such request.
    send(&mut r, 1, frame(FrameType::Error, rid(9), b""), now);
    let told = drain(&mut r, 1);
    assert_eq!(
        (told.len(), told[0].request_id, error_code(&told[0])),
        (1, rid(9), ErrorCode::UNKNOWN_REQUEST)
    );
    assert_eq!(r.stats().discarded_frames, 0);

    send(&mut r, 1, frame(FrameType::Start, rid(2), b""), now);
    let prid = drain(&mut r, 3)[0].request_id;
    r.handle_disconnect(ConnId(1)).expect("known");
    let out = drain(&mut r, 3);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (prid, ErrorCode::CANCELLED)
    );
    assert_eq!(r.stats().consumer_gone, 1);
    // The provider's late answer is counted, not delivered anywhere.
    send(&mut r, 3, frame(FrameType::Response, prid, b""), now);
    assert_eq!(r.stats().late_responses, 1);
}

#[test]
fn cancelled_request_never_seen_by_provider_is_purged_silently() {
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"abc"), now);
    send(&mut r, 1, frame(FrameType::Error, rid(1), b""), now);
    assert!(
        drain(&mut r, 2).is_empty(),
        "provider never saw the request"
    );
    assert_eq!(r.stats().purged_frames, 2);
    assert_eq!(r.queued(ConnId(2)), Some((0, 0)));
}

#[test]
fn timeout_fails_the_request_at_both_ends() {
    let now = crate::test_util::epoch();
    let mut r = router(small());
    register(&mut r, 1, Role::Consumer, Duration::from_secs(2), now);
    register(&mut r, 2, Role::Provider, Duration::ZERO, now);
    register(&mut r, 3, Role::Consumer, Duration::from_secs(60), now);
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 3, frame(FrameType::Start, rid(1), b""), now);
    let prids: Vec<RequestId> = drain(&mut r, 2).iter().map(|f| f.request_id).collect();
    assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(2)));
    r.handle_timeout(now + Duration::from_millis(1999));
    assert!(drain(&mut r, 1).is_empty());
    r.handle_timeout(now + Duration::from_secs(2));
    let out = drain(&mut r, 1);
    assert_eq!(error_code(&out[0]), ErrorCode::TIMEOUT);
    let out = drain(&mut r, 2);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (prids[0], ErrorCode::TIMEOUT)
    );
    // Consumer 3's timeout is capped at max_timeout (10 s).
    assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(10)));
    send(&mut r, 2, frame(FrameType::Response, prids[0], b""), now);
    assert_eq!(r.stats().late_responses, 1);
    assert_eq!(r.stats().timed_out, 1);
}

#[test]
fn errors_overtake_data_and_remove_the_data_they_end() {
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::Start, rid(2), b""), now);
    let p2 = drain(&mut r, 2)[0].request_id;
    let p3 = drain(&mut r, 3)[0].request_id;
    let mut part = frame(FrameType::Response, p2, b"part");
    part.flags = FLAG_MORE;
    send(&mut r, 2, part, now);
    send(&mut r, 3, frame(FrameType::Response, p3, b"done"), now);
    // Provider 2 fails its request: the queued part is removed, the Error
    // leaves first, the other request's response follows.
    let err = ErrorPayload::new(ErrorCode(100), "app").encode();
    send(&mut r, 2, Frame::new(FrameType::Error, p2, err), now);
    let out = drain(&mut r, 1);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (rid(1), ErrorCode(100))
    );
    assert_eq!(
        (out[1].request_id, out[1].frame_type),
        (rid(2), FrameType::Response)
    );
    assert_eq!(r.stats().provider_errors, 1);
}

#[test]
fn full_provider_queue_gives_the_consumer_busy() {
    let mut config = small();
    config.max_queued_frames = 2;
    let now = crate::test_util::epoch();
    let mut r = router(config);
    register(&mut r, 1, Role::Consumer, Duration::ZERO, now);
    register(&mut r, 2, Role::Provider, Duration::ZERO, now);
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"a"), now);
    // Provider 2 has a full queue: a new request finds no room.
    send(&mut r, 1, frame(FrameType::Start, rid(2), b""), now);
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::BUSY);
    // The provider reads the Start; the next two chunks: one fits, one not.
    let _ = r.poll_transmit(ConnId(2));
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"b"), now);
    assert!(drain(&mut r, 1).is_empty());
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"c"), now);
    let out = drain(&mut r, 1);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (rid(1), ErrorCode::BUSY)
    );
    // The provider saw the Start, so it is told; the queued chunks are gone.
    let out = drain(&mut r, 2);
    assert_eq!(out.len(), 1);
    assert_eq!(error_code(&out[0]), ErrorCode::BUSY);
    assert_eq!(r.stats().busy, 2);
    assert_eq!(r.open_requests(), 0);
}

#[test]
fn full_consumer_queue_gives_the_provider_busy() {
    let mut config = small();
    config.max_queued_bytes = 4;
    let (mut r, now) = setup(config);
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    let p = drain(&mut r, 2)[0].request_id;
    for payload in [&b"abcd"[..], b"e"] {
        let mut part = Frame::new(FrameType::Response, p, Bytes::from_static(payload));
        part.flags = FLAG_MORE;
        send(&mut r, 2, part, now);
    }
    let out = drain(&mut r, 1);
    assert_eq!(out.len(), 1, "the queued part was purged");
    assert_eq!(error_code(&out[0]), ErrorCode::BUSY);
    let out = drain(&mut r, 2);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (p, ErrorCode::BUSY)
    );
}

#[test]
fn request_limits() {
    let mut config = small();
    config.max_requests_per_consumer = 1;
    let (mut r, now) = setup(config);
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::Start, rid(2), b""), now);
    let out = drain(&mut r, 1);
    assert_eq!(error_code(&out[0]), ErrorCode::TOO_MANY_REQUESTS);
    assert_eq!(r.stats().too_many_requests, 1);

    let mut config = small();
    config.max_requests = 1;
    let (mut r, now) = setup(config);
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::Start, rid(2), b""), now);
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::BUSY);

    let (mut r, now) = setup(small());
    let long = Bytes::from(vec![0; 33]); // 32 + 33 > 64
    send(&mut r, 1, Frame::new(FrameType::Start, rid(1), long), now);
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::BAD_REQUEST);
    assert_eq!(r.stats().bad_requests, 1);
}

#[test]
fn protocol_violations_close_the_connection() {
    let now = crate::test_util::epoch();
    let mut r = router(small());
    // Unregistered: the first frame must be a registration.
    r.handle_connect(ConnId(1)).expect("new");
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b""), now);
    r.handle_connect(ConnId(2)).expect("new");
    send(&mut r, 2, frame(FrameType::Start, rid(1), b"short"), now);
    let ev = events(&mut r);
    assert!(ev.contains(&RouterEvent::Close {
        conn: ConnId(1),
        reason: CloseReason::Protocol("first frame must be a registration")
    }));
    assert!(ev.contains(&RouterEvent::Close {
        conn: ConnId(2),
        reason: CloseReason::Protocol("malformed registration")
    }));
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::PROTOCOL);
    // Frames after the close are discarded.
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    assert!(drain(&mut r, 1).is_empty());

    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Response, rid(1), b""), now);
    send(&mut r, 2, frame(FrameType::Start, rid(1), b""), now);
    assert_eq!(r.stats().protocol_violations, 2);
    // A duplicate request id closes the consumer; its request is cancelled.
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    let _ = drain(&mut r, 2);
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::PROTOCOL);
    assert_eq!(error_code(&drain(&mut r, 2)[0]), ErrorCode::CANCELLED);
    assert_eq!(r.open_requests(), 0);
    assert_eq!(r.connections(), 3);
    r.handle_disconnect(ConnId(1)).expect("known");
    assert_eq!(r.connections(), 2);
}

#[test]
fn full_error_lane_closes_the_connection() {
    let mut config = small();
    config.max_queued_errors = 2;
    let now = crate::test_util::epoch();
    let mut r = router(config);
    register(&mut r, 1, Role::Consumer, Duration::ZERO, now);
    for n in 1..=3 {
        send(&mut r, 1, frame(FrameType::Start, rid(n), b""), now);
    }
    let ev = events(&mut r);
    assert!(ev.contains(&RouterEvent::Close {
        conn: ConnId(1),
        reason: CloseReason::ErrorQueueFull
    }));
    assert_eq!(drain(&mut r, 1).len(), 2);
    assert_eq!(r.stats().slow_closes, 1);
}

#[test]
fn transmit_events_fire_once_per_wakeup() {
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"a"), now);
    assert_eq!(events(&mut r), [RouterEvent::Transmit(ConnId(2))]);
    let _ = r.poll_transmit(ConnId(2));
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"b"), now);
    assert!(events(&mut r).is_empty(), "queue never ran empty");
    let _ = drain(&mut r, 2);
    send(&mut r, 1, frame(FrameType::End, rid(1), b""), now);
    assert_eq!(events(&mut r), [RouterEvent::Transmit(ConnId(2))]);
    assert_eq!(r.poll_transmit(ConnId(99)), None);
    assert_eq!(r.queued(ConnId(99)), None);
}

#[test]
fn registration_events_and_misuse() {
    let now = crate::test_util::epoch();
    let mut r = router(small());
    register(&mut r, 1, Role::Provider, Duration::ZERO, now);
    assert!(matches!(
        events(&mut r).last(),
        Some(RouterEvent::Registered {
            role: Role::Provider,
            ..
        })
    ));
    assert_eq!(
        r.handle_connect(ConnId(1)),
        Err(RouterError::DuplicateConn(ConnId(1)))
    );
    assert_eq!(
        r.handle_frame(ConnId(7), frame(FrameType::End, rid(1), b""), now),
        Err(RouterError::UnknownConn(ConnId(7)))
    );
    assert!(
        RouterError::UnknownConn(ConnId(7))
            .to_string()
            .contains("conn#7")
    );
    assert!(CloseReason::ErrorQueueFull.to_string().contains("full"));
    assert!(CloseReason::Protocol("x").to_string().contains('x'));
    assert_eq!(r.stats().registrations, 1);
}

#[test]
fn config_is_validated() {
    assert!(Router::new(RouterConfig::default()).is_ok());
    let c = RouterConfig {
        max_queued_frames: 0,
        ..RouterConfig::default()
    };
    assert!(Router::new(c).is_err());
    let c = RouterConfig {
        default_timeout: Duration::ZERO,
        ..RouterConfig::default()
    };
    assert!(Router::new(c).is_err());
    let mut c = RouterConfig::default();
    c.default_timeout = c.max_timeout + Duration::from_secs(1);
    assert!(Router::new(c).is_err());
    let c = RouterConfig {
        max_frame_payload: 31,
        ..RouterConfig::default()
    };
    assert!(Router::new(c).is_err());
}

#[test]
fn next_hop_names_the_receiver_of_each_stream_frame() {
    let (mut r, now) = setup(small());
    register(&mut r, 4, Role::Consumer, Duration::ZERO, now);
    let hop = |r: &Router, conn: u64, t: FrameType, id: RequestId| r.next_hop(ConnId(conn), t, id);
    // Nothing under way yet: no hop for anything.
    assert_eq!(hop(&r, 1, FrameType::Chunk, rid(1)), None);
    // Consumer 1's request goes to provider 2, consumer 4's to provider 3.
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 4, frame(FrameType::Start, rid(1), b""), now);
    let p2 = drain(&mut r, 2)[0].request_id;
    let p3 = drain(&mut r, 3)[0].request_id;
    assert_eq!(hop(&r, 1, FrameType::Chunk, rid(1)), Some(ConnId(2)));
    assert_eq!(hop(&r, 1, FrameType::End, rid(1)), Some(ConnId(2)));
    assert_eq!(hop(&r, 4, FrameType::Chunk, rid(1)), Some(ConnId(3)));
    // Responses go back to their own consumer, and only from their provider.
    assert_eq!(hop(&r, 2, FrameType::Response, p2), Some(ConnId(1)));
    assert_eq!(hop(&r, 3, FrameType::Response, p3), Some(ConnId(4)));
    assert_eq!(hop(&r, 3, FrameType::Response, p2), None);
    // Frames that are not stream data have no hop.
    assert_eq!(hop(&r, 1, FrameType::Start, rid(2)), None);
    assert_eq!(hop(&r, 1, FrameType::Error, rid(1)), None);
    assert_eq!(hop(&r, 2, FrameType::Error, p2), None);
    assert_eq!(hop(&r, 1, FrameType::Chunk, rid(9)), None);
    assert_eq!(hop(&r, 9, FrameType::Chunk, rid(1)), None);
    // After the End, the request takes no more data from its consumer,
    // but its response still has a way back.
    send(&mut r, 1, frame(FrameType::End, rid(1), b""), now);
    assert_eq!(hop(&r, 1, FrameType::Chunk, rid(1)), None);
    assert_eq!(hop(&r, 2, FrameType::Response, p2), Some(ConnId(1)));
    // A finished request has no hop.
    send(&mut r, 2, frame(FrameType::Response, p2, b"ok"), now);
    assert_eq!(hop(&r, 2, FrameType::Response, p2), None);
    // A provider that leaves takes its requests' hops with it.
    r.handle_disconnect(ConnId(3)).expect("known");
    assert_eq!(hop(&r, 4, FrameType::Chunk, rid(1)), None);
}

fn message(f: &Frame) -> String {
    ErrorPayload::decode(&f.payload)
        .message_str()
        .expect("utf-8")
        .to_owned()
}

#[test]
fn frames_for_unknown_requests_are_answered_with_their_id() {
    let (mut r, now) = setup(small());
    // Chunk, End and cancel from a consumer, Response and Error from a
    // provider, each for an id the router never saw.
    send(&mut r, 1, frame(FrameType::Chunk, rid(7), b"data"), now);
    send(&mut r, 1, frame(FrameType::End, rid(8), b""), now);
    send(&mut r, 1, frame(FrameType::Error, rid(9), b""), now);
    let told = drain(&mut r, 1);
    assert_eq!(
        told.iter().map(|f| f.request_id).collect::<Vec<_>>(),
        [rid(7), rid(8), rid(9)]
    );
    for f in &told {
        assert_eq!(error_code(f), ErrorCode::UNKNOWN_REQUEST);
        assert!(
            message(f).contains(&f.request_id.to_string()),
            "{}",
            message(f)
        );
    }
    send(&mut r, 2, frame(FrameType::Response, rid(5), b""), now);
    send(&mut r, 2, frame(FrameType::Error, rid(6), b""), now);
    let told = drain(&mut r, 2);
    assert_eq!(told.len(), 2);
    assert!(
        told.iter()
            .all(|f| error_code(f) == ErrorCode::UNKNOWN_REQUEST)
    );
    let s = r.stats();
    assert_eq!((s.unknown_requests, s.discarded_frames), (5, 0));
    assert!(
        events(&mut r)
            .iter()
            .all(|e| !matches!(e, RouterEvent::Close { .. }))
    );
}

#[test]
fn frames_of_a_request_that_ended_under_way_are_discarded_until_its_last() {
    let (mut r, now) = setup(small());
    // The request times out while its consumer is still streaming and its
    // provider still working.
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    let prid = drain(&mut r, 2)[0].request_id;
    r.handle_timeout(now + Duration::from_secs(6));
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::TIMEOUT);
    assert_eq!(error_code(&drain(&mut r, 2)[0]), ErrorCode::TIMEOUT);
    // What both had on the way is discarded without an answer...
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"late"), now);
    send(&mut r, 1, frame(FrameType::End, rid(1), b""), now);
    let mut more = frame(FrameType::Response, prid, b"p");
    more.flags = FLAG_MORE;
    send(&mut r, 2, more, now);
    send(&mut r, 2, frame(FrameType::Response, prid, b""), now);
    assert!(drain(&mut r, 1).is_empty() && drain(&mut r, 2).is_empty());
    let s = r.stats();
    assert_eq!((s.discarded_frames, s.late_responses), (2, 2));
    // ... up to each side's last frame of it: after that, the id is unknown.
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"again"), now);
    send(&mut r, 2, frame(FrameType::Response, prid, b""), now);
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::UNKNOWN_REQUEST);
    assert_eq!(error_code(&drain(&mut r, 2)[0]), ErrorCode::UNKNOWN_REQUEST);
    assert_eq!(r.stats().unknown_requests, 2);
}

#[test]
fn ended_requests_are_remembered_up_to_the_limit() {
    let (mut r, now) = setup(small()); // max_ended_requests: 4
    r.handle_disconnect(ConnId(2)).expect("known");
    r.handle_disconnect(ConnId(3)).expect("known");
    for n in 1..=5 {
        send(&mut r, 1, frame(FrameType::Start, rid(n), b""), now);
        let told = drain(&mut r, 1);
        assert_eq!(error_code(&told[0]), ErrorCode::NO_RESPONDERS);
    }
    // The oldest was forgotten: its data is answered, the rest discarded.
    for n in 1..=5 {
        send(&mut r, 1, frame(FrameType::Chunk, rid(n), b"x"), now);
    }
    let told = drain(&mut r, 1);
    assert_eq!(told.len(), 1);
    assert_eq!(
        (told[0].request_id, error_code(&told[0])),
        (rid(1), ErrorCode::UNKNOWN_REQUEST)
    );
    assert_eq!(r.stats().discarded_frames, 4);
    // A new request under an ended id is a new request.
    send(&mut r, 1, frame(FrameType::Start, rid(5), b""), now);
    send(&mut r, 1, frame(FrameType::Chunk, rid(5), b"x"), now);
    let told = drain(&mut r, 1);
    assert_eq!(
        told.iter().map(error_code).collect::<Vec<_>>(),
        [ErrorCode::NO_RESPONDERS]
    );
}

#[test]
fn request_data_after_its_end_fails_the_request() {
    let (mut r, now) = setup(small());
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    send(&mut r, 1, frame(FrameType::End, rid(1), b""), now);
    let prid = drain(&mut r, 2)[0].request_id;
    send(&mut r, 1, frame(FrameType::Chunk, rid(1), b"late"), now);
    let told = drain(&mut r, 1);
    assert_eq!(
        (told.len(), told[0].request_id, error_code(&told[0])),
        (1, rid(1), ErrorCode::BAD_REQUEST)
    );
    let out = drain(&mut r, 2);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (prid, ErrorCode::CANCELLED)
    );
    assert_eq!(r.open_requests(), 0);
    assert_eq!(r.stats().bad_requests, 1);
}

#[test]
fn oversized_frames_fail_their_request_and_the_connection_stays() {
    let (mut r, _) = setup(small()); // max_frame_payload: 64
    let now = crate::test_util::epoch();
    let too_large = FrameError::TooLarge { len: 100, max: 64 };
    let refuse = |r: &mut Router, conn: u64, id: RequestId| {
        r.handle_refused(ConnId(conn), Some(id), &too_large)
            .expect("known");
    };
    // A consumer's chunk of a request under way: the request fails at
    // both ends, and the consumer is told the size and the limit.
    send(&mut r, 1, frame(FrameType::Start, rid(1), b""), now);
    let prid = drain(&mut r, 2)[0].request_id;
    refuse(&mut r, 1, rid(1));
    let told = drain(&mut r, 1);
    assert_eq!(
        (told.len(), told[0].request_id, error_code(&told[0])),
        (1, rid(1), ErrorCode::FRAME_TOO_LARGE)
    );
    let text = message(&told[0]);
    assert!(text.contains("100") && text.contains("64"), "{text}");
    let out = drain(&mut r, 2);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (prid, ErrorCode::CANCELLED)
    );
    // Its next oversized chunk was on its way: discarded.
    refuse(&mut r, 1, rid(1));
    assert!(drain(&mut r, 1).is_empty());
    // An oversized frame of no request: answered under its id, and the
    // rest of that stream is discarded.
    refuse(&mut r, 1, rid(2));
    let told = drain(&mut r, 1);
    assert_eq!(
        (told[0].request_id, error_code(&told[0])),
        (rid(2), ErrorCode::FRAME_TOO_LARGE)
    );
    send(&mut r, 1, frame(FrameType::End, rid(2), b""), now);
    assert!(drain(&mut r, 1).is_empty());
    // A provider's oversized response: both ends are told.
    send(&mut r, 1, frame(FrameType::Start, rid(3), b""), now);
    let (provider, prid) = match (drain(&mut r, 2).pop(), drain(&mut r, 3).pop()) {
        (Some(f), None) => (2, f.request_id),
        (None, Some(f)) => (3, f.request_id),
        other => panic!("one provider gets the request: {other:?}"),
    };
    refuse(&mut r, provider, prid);
    assert_eq!(error_code(&drain(&mut r, 1)[0]), ErrorCode::FRAME_TOO_LARGE);
    let out = drain(&mut r, provider);
    assert_eq!(
        (out[0].request_id, error_code(&out[0])),
        (prid, ErrorCode::FRAME_TOO_LARGE)
    );
    assert_eq!(r.stats().oversized_frames, 4);
    assert_eq!(r.open_requests(), 0);
    // Nobody was closed, and the consumer goes on.
    assert!(
        events(&mut r)
            .iter()
            .all(|e| !matches!(e, RouterEvent::Close { .. }))
    );
    send(&mut r, 1, frame(FrameType::Start, rid(4), b""), now);
    assert_eq!(r.open_requests(), 1);
}

#[test]
fn malformed_frames_are_answered_before_the_close() {
    let (mut r, now) = setup(small());
    // A known layout with an unknown type: the Error names the id.
    r.handle_refused(ConnId(1), Some(rid(1)), &FrameError::UnknownType(9))
        .expect("known");
    let ev = events(&mut r);
    assert!(ev.contains(&RouterEvent::Close {
        conn: ConnId(1),
        reason: CloseReason::Malformed(FrameError::UnknownType(9))
    }));
    let told = drain(&mut r, 1);
    assert_eq!(
        (told.len(), told[0].request_id, error_code(&told[0])),
        (1, rid(1), ErrorCode::PROTOCOL)
    );
    assert!(
        message(&told[0]).contains("type 9"),
        "{}",
        message(&told[0])
    );
    // Another version: no id to name.
    r.handle_refused(ConnId(2), None, &FrameError::UnsupportedVersion(2))
        .expect("known");
    let told = drain(&mut r, 2);
    assert_eq!(told[0].request_id, RequestId::default());
    assert_eq!(error_code(&told[0]), ErrorCode::PROTOCOL);
    // An oversized registration: refused, then closed.
    r.handle_connect(ConnId(9)).expect("new");
    r.handle_refused(
        ConnId(9),
        Some(rid(4)),
        &FrameError::TooLarge { len: 100, max: 64 },
    )
    .expect("known");
    let told = drain(&mut r, 9);
    assert_eq!(
        (told[0].request_id, error_code(&told[0])),
        (rid(4), ErrorCode::PROTOCOL)
    );
    assert!(message(&told[0]).contains("64"), "{}", message(&told[0]));
    assert!(events(&mut r).iter().any(|e| matches!(
        e,
        RouterEvent::Close {
            conn: ConnId(9),
            ..
        }
    )));
    // A closing connection is not answered again.
    r.handle_refused(ConnId(9), None, &FrameError::UnknownType(0))
        .expect("known");
    assert!(drain(&mut r, 9).is_empty());
    assert_eq!(r.stats().protocol_violations, 3);
    assert!(
        CloseReason::Malformed(FrameError::UnknownType(9))
            .to_string()
            .contains('9')
    );
    let _ = now;
}
