use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::Utf8Bytes;
use crate::test_util::epoch;

fn compressing() -> CallsConfig {
    CallsConfig {
        compression: Some(CompressionConfig {
            threshold: 64,
            level: 6,
        }),
        ..CallsConfig::default()
    }
}

#[test]
fn request_layout_is_as_documented() {
    let mut env = Envelope::request(
        0x0102_0304_0506_0708,
        Utf8Bytes::from("add"),
        1500,
        "xy".into(),
    );
    env.flags = FLAG_IDEMPOTENT;
    let wire = env.to_bytes().unwrap();
    assert_eq!(
        &wire[..],
        b"\x01\x01\x02\x03\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x05\xdcaddxy"
    );
    assert_eq!(wire.len(), env.encoded_len());
    assert_eq!(Envelope::decode(wire, 16).unwrap(), env);
}

#[test]
fn reply_layout_and_cancel_rules() {
    let env = Envelope::reply(Kind::Error, 7, Fault::new(5, "no").encode());
    let wire = env.to_bytes().unwrap();
    assert_eq!(&wire[..], b"\x01\x03\x00\x00\0\0\0\0\0\0\0\x07\x00\x05no");
    assert_eq!(
        Envelope::reply(Kind::Cancel, 1, "x".into()).to_bytes(),
        Err(EncodeError::CancelPayload)
    );
    let mut bad = Envelope::reply(Kind::Response, 1, Bytes::new());
    bad.timeout_ms = 3;
    assert_eq!(bad.to_bytes(), Err(EncodeError::RequestFieldsOnReply));
    let long = "m".repeat(256);
    assert_eq!(
        Envelope::request(1, Utf8Bytes::from(long.as_str()), 0, Bytes::new()).to_bytes(),
        Err(EncodeError::MethodTooLong { len: 256 })
    );
}

#[test]
fn decoder_rejects_what_it_must() {
    let ok = Envelope::request(1, Utf8Bytes::from("m"), 0, "p".into())
        .to_bytes()
        .unwrap();
    let with = |i: usize, b: u8| {
        let mut v = ok.to_vec();
        v[i] = b;
        Envelope::decode(v.into(), 16)
    };
    assert_eq!(with(0, 2), Err(DecodeError::Version(2)));
    assert_eq!(with(1, 9), Err(DecodeError::UnknownKind(9)));
    assert_eq!(with(2, 0x80), Err(DecodeError::UnknownFlags(0x80)));
    assert_eq!(with(3, 200), Err(DecodeError::TooShort { len: ok.len() }));
    assert_eq!(with(16, 0xff), Err(DecodeError::MethodNotUtf8));
    assert_eq!(
        Envelope::decode(ok.slice(..5), 16),
        Err(DecodeError::TooShort { len: 5 })
    );
    assert_eq!(
        Envelope::decode(ok.clone(), 0),
        Err(DecodeError::PayloadTooLarge { len: 1, max: 0 })
    );
    let mut cancel = Envelope::reply(Kind::Cancel, 1, Bytes::new())
        .to_bytes()
        .unwrap()
        .to_vec();
    cancel.push(0);
    assert_eq!(
        Envelope::decode(cancel.into(), 16),
        Err(DecodeError::CancelPayload)
    );
}

#[test]
fn call_round_trip_with_compression_both_ways() {
    let now = epoch();
    let mut client = Calls::new(compressing()).unwrap();
    let mut server = Serving::new(compressing()).unwrap();
    let big = Bytes::from("abc".repeat(1000));
    let (id, request) = client.start(now, None, "echo", big.clone(), false).unwrap();
    assert!(
        request.len() < 200,
        "request was not compressed: {}",
        request.len()
    );
    let Some(Incoming::Request(req)) = server.handle_frame(request).unwrap() else {
        panic!("no request");
    };
    assert_eq!(
        (req.id, req.method.as_str(), &req.payload),
        (id, "echo", &big)
    );
    assert_eq!(req.timeout, None);
    let reply = server.respond(id, Ok(big.clone())).unwrap();
    assert!(reply.len() < 200);
    assert_eq!(server.respond(id, Ok(big.clone())), None, "answered twice");
    client.handle_frame(reply).unwrap();
    assert_eq!(
        client.poll_event(),
        Some(CallEvent::Response { id, payload: big })
    );
    assert_eq!(client.pending(), 0);
    assert_eq!(client.stats().compressed, 1);
}

#[test]
fn small_payloads_are_not_compressed() {
    let mut client = Calls::new(compressing()).unwrap();
    let (_, request) = client
        .start(epoch(), None, "m", "short".into(), false)
        .unwrap();
    let env = Envelope::decode(request, 1024).unwrap();
    assert!(!env.is_compressed());
}

#[test]
fn timeouts_fire_in_order_and_queue_cancels() {
    let t0 = epoch();
    let mut client = Calls::new(CallsConfig::default()).unwrap();
    let (a, req_a) = client
        .start(
            t0,
            Some(Duration::from_millis(300)),
            "m",
            Bytes::new(),
            false,
        )
        .unwrap();
    let (b, _) = client
        .start(
            t0,
            Some(Duration::from_millis(100)),
            "m",
            Bytes::new(),
            false,
        )
        .unwrap();
    let (c, _) = client.start(t0, None, "m", Bytes::new(), false).unwrap();
    assert_eq!(Envelope::decode(req_a, 0).unwrap().timeout_ms, 300);
    assert_eq!(client.poll_timeout(), Some(t0 + Duration::from_millis(100)));
    client.handle_timeout(t0 + Duration::from_millis(99));
    assert_eq!(client.poll_event(), None);
    client.handle_timeout(t0 + Duration::from_millis(300));
    assert_eq!(client.poll_event(), Some(CallEvent::TimedOut(b)));
    assert_eq!(client.poll_event(), Some(CallEvent::TimedOut(a)));
    let cancel = Envelope::decode(client.poll_transmit().unwrap(), 0).unwrap();
    assert_eq!((cancel.kind, cancel.id), (Kind::Cancel, b));
    assert!(client.poll_transmit().is_some());
    assert_eq!(client.poll_timeout(), None);
    // A late reply is counted and ignored.
    let late = Envelope::reply(Kind::Response, a, Bytes::new())
        .to_bytes()
        .unwrap();
    client.handle_frame(late).unwrap();
    assert_eq!(client.poll_event(), None);
    assert_eq!(client.stats().late, 1);
    assert!(client.is_pending(c));
}

#[test]
fn cancel_reaches_the_server_and_drops_the_reply() {
    let now = epoch();
    let mut client = Calls::new(CallsConfig::default()).unwrap();
    let mut server = Serving::new(CallsConfig::default()).unwrap();
    let (id, request) = client
        .start(now, None, "slow", Bytes::new(), false)
        .unwrap();
    assert!(server.handle_frame(request).unwrap().is_some());
    let cancel = client.cancel(id).unwrap();
    assert_eq!(client.cancel(id), None);
    assert_eq!(
        server.handle_frame(cancel.clone()).unwrap(),
        Some(Incoming::Cancel(id))
    );
    assert_eq!(server.handle_frame(cancel).unwrap(), None);
    assert_eq!(server.respond(id, Ok(Bytes::new())), None);
    assert_eq!(server.stats().cancelled, 1);
}

#[test]
fn disconnect_fails_every_pending_call() {
    let now = epoch();
    let mut client = Calls::new(CallsConfig::default()).unwrap();
    let (a, _) = client
        .start(now, Some(Duration::from_secs(1)), "m", Bytes::new(), true)
        .unwrap();
    let (b, _) = client.start(now, None, "m", Bytes::new(), false).unwrap();
    client.handle_disconnect();
    assert_eq!(
        client.poll_event(),
        Some(CallEvent::Disconnected {
            id: a,
            idempotent: true
        })
    );
    assert_eq!(
        client.poll_event(),
        Some(CallEvent::Disconnected {
            id: b,
            idempotent: false
        })
    );
    assert_eq!(client.poll_timeout(), None);
    assert_eq!(client.pending(), 0);
}

#[test]
fn server_refuses_overload_duplicates_and_bombs() {
    let config = CallsConfig {
        max_pending: 1,
        max_payload: 1000,
        ..CallsConfig::default()
    };
    let mut server = Serving::new(config).unwrap();
    let req = |id: u64| {
        Envelope::request(id, Utf8Bytes::from("m"), 0, Bytes::new())
            .to_bytes()
            .unwrap()
    };
    assert!(server.handle_frame(req(1)).unwrap().is_some());
    assert_eq!(server.handle_frame(req(1)).unwrap(), None);
    assert_eq!(server.handle_frame(req(2)).unwrap(), None);
    let fault = |frame: Bytes| Fault::decode(&Envelope::decode(frame, 1000).unwrap().payload).code;
    assert_eq!(fault(server.poll_transmit().unwrap()), Fault::DUPLICATE_ID);
    assert_eq!(fault(server.poll_transmit().unwrap()), Fault::OVERLOADED);
    // A compressed payload inflating past the limit.
    let mut deflate = Deflate::new(Some(CompressionConfig {
        threshold: 0,
        level: 9,
    }))
    .unwrap();
    let (bomb, compressed) = deflate.compress(Bytes::from(vec![0u8; 100_000]));
    assert!(compressed && bomb.len() < 1000);
    let mut env = Envelope::request(3, Utf8Bytes::from("m"), 0, bomb);
    env.flags = FLAG_COMPRESSED;
    assert!(server.respond(1, Ok(Bytes::new())).is_some());
    assert_eq!(server.handle_frame(env.to_bytes().unwrap()).unwrap(), None);
    assert_eq!(fault(server.poll_transmit().unwrap()), Fault::TOO_LARGE);
    // Clients never send responses.
    let resp = Envelope::reply(Kind::Response, 1, Bytes::new())
        .to_bytes()
        .unwrap();
    assert!(server.handle_frame(resp).is_err());
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Request),
        Just(Kind::Response),
        Just(Kind::Error),
        Just(Kind::Cancel)
    ]
}

proptest! {
    #[test]
    fn envelopes_round_trip(
        kind in kind(),
        id in any::<u64>(),
        flags in 0u8..4,
        timeout_ms in any::<u32>(),
        method in "[a-z.]{0,40}",
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let env = match kind {
            Kind::Request => {
                let mut env = Envelope::request(id, Utf8Bytes::from(method.as_str()), timeout_ms, payload.into());
                env.flags = flags;
                env
            }
            Kind::Cancel => Envelope::reply(kind, id, Bytes::new()),
            _ => {
                let mut env = Envelope::reply(kind, id, payload.into());
                env.flags = flags;
                env
            }
        };
        let wire = env.to_bytes().unwrap();
        prop_assert_eq!(wire.len(), env.encoded_len());
        prop_assert_eq!(Envelope::decode(wire, 300).unwrap(), env);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
        if let Ok(env) = Envelope::decode(data.clone().into(), max) {
            prop_assert!(env.payload.len() <= max);
            // What decodes re-encodes to the same bytes.
            prop_assert_eq!(&env.to_bytes().unwrap()[..], &data[..]);
        }
        let mut client = Calls::new(CallsConfig::default()).unwrap();
        let _ = client.handle_frame(data.clone().into());
        let mut server = Serving::new(CallsConfig::default()).unwrap();
        let _ = server.handle_frame(data.into());
    }

    #[test]
    fn compression_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2000), zeros in 0usize..4000) {
        let mut data = payload;
        data.extend(std::iter::repeat_n(0u8, zeros));
        let mut deflate = Deflate::new(Some(CompressionConfig { threshold: 0, level: 6 })).unwrap();
        let (wire, compressed) = deflate.compress(Bytes::from(data.clone()));
        if compressed {
            prop_assert!(wire.len() < data.len());
            prop_assert_eq!(&deflate.decompress(&wire, data.len()).unwrap()[..], &data[..]);
            if !data.is_empty() {
                prop_assert!(deflate.decompress(&wire, data.len() - 1).is_err());
                // The codec still works after an error.
                prop_assert_eq!(&deflate.decompress(&wire, data.len()).unwrap()[..], &data[..]);
            }
        } else {
            prop_assert_eq!(&wire[..], &data[..]);
        }
    }
}
