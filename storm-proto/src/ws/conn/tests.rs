use super::*;
use crate::test_util::{any_frame, frame_bytes};
use proptest::prelude::*;
use rand::SeedableRng;

fn client() -> Connection {
    Connection::with_rng(Side::Client, Config::default(), StdRng::seed_from_u64(7))
}

fn server() -> Connection {
    Connection::new(Side::Server, Config::default())
}

fn wire(conn: &mut Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(bytes) = conn.poll_transmit() {
        out.extend_from_slice(&bytes);
    }
    out
}

fn events(conn: &mut Connection) -> Vec<Event> {
    drain(conn).unwrap()
}

fn drain(conn: &mut Connection) -> Result<Vec<Event>, ProtocolError> {
    let mut events = Vec::new();
    while let Some(event) = conn.poll_event()? {
        events.push(event);
    }
    Ok(events)
}

/// Feeds `input` and drains the events it causes.
fn feed(conn: &mut Connection, input: &[u8]) -> Result<Vec<Event>, ProtocolError> {
    conn.handle_input(input);
    drain(conn)
}

/// A client-to-server frame with a fixed mask, built independently of
/// `Connection`'s own encoder.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    frame_bytes(first, payload, Some([1, 2, 3, 4]), 0)
}

fn text(s: &str) -> Event {
    Event::Text(Utf8Bytes::from(s))
}

fn close_code_sent(wire: &[u8]) -> u16 {
    let (h, n) = FrameHeader::decode(wire).unwrap().unwrap();
    assert_eq!(h.opcode, OpCode::Close);
    let mut payload = wire[n..n + h.payload_len as usize].to_vec();
    if let Some(mask) = h.mask {
        frame::apply_mask(&mut payload, mask, 0);
    }
    u16::from_be_bytes([payload[0], payload[1]])
}

#[test]
fn rfc_examples_reach_the_application() {
    let mut s = server();
    s.handle_input(&[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ]);
    assert_eq!(events(&mut s), vec![text("Hello")]);

    let mut c = client();
    // Fragmented "Hel" + "lo" with an unmasked ping between the fragments.
    c.handle_input(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
    c.handle_input(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    c.handle_input(&[0x80, 0x02, 0x6c, 0x6f]);
    assert_eq!(
        events(&mut c),
        vec![Event::Ping(Bytes::from_static(b"Hello")), text("Hello")]
    );
    // The auto-pong is masked and carries the ping's payload.
    let pong = wire(&mut c);
    let (h, n) = FrameHeader::decode(&pong).unwrap().unwrap();
    assert_eq!(
        (h.opcode, h.payload_len, h.mask.is_some()),
        (OpCode::Pong, 5, true)
    );
    let mut payload = pong[n..].to_vec();
    frame::apply_mask(&mut payload, h.mask.unwrap(), 0);
    assert_eq!(payload, b"Hello");
}

#[test]
fn byte_by_byte_equals_whole() {
    let mut input = masked(0x01, b"caf\xc3");
    input.extend(masked(0x89, b"p"));
    input.extend(masked(0x80, b"\xa9!"));
    input.extend(masked(0x82, &[0u8; 300]));
    let mut whole = server();
    whole.handle_input(&input);
    let mut split = server();
    for b in &input {
        split.handle_input(std::slice::from_ref(b));
    }
    let expected = vec![
        Event::Ping(Bytes::from_static(b"p")),
        text("café!"),
        Event::Binary(Bytes::from(vec![0u8; 300])),
    ];
    assert_eq!(events(&mut whole), expected);
    assert_eq!(events(&mut split), expected);
    assert_eq!(wire(&mut whole), wire(&mut split));
}

#[test]
fn auto_pong_can_be_turned_off() {
    let config = Config {
        auto_pong: false,
        ..Config::default()
    };
    let mut s = Connection::new(Side::Server, config);
    s.handle_input(&masked(0x89, b"x"));
    assert_eq!(events(&mut s), vec![Event::Ping(Bytes::from_static(b"x"))]);
    assert!(wire(&mut s).is_empty());
}

fn assert_fails(input: &[u8], expected: ProtocolError, code: u16) {
    let mut s = server();
    assert_eq!(feed(&mut s, input), Err(expected.clone()));
    assert_eq!(expected.close_code().0, code);
    assert!(s.is_closed() && !s.is_open());
    assert_eq!(close_code_sent(&wire(&mut s)), code);
    // Errors are final, and nothing else is queued.
    assert_eq!(feed(&mut s, &masked(0x81, b"x")), Err(expected));
    assert!(wire(&mut s).is_empty());
    assert_eq!(s.send_text("late"), Err(SendError::Closed));
}

#[test]
fn protocol_violations_close_with_1002() {
    assert_fails(&[0x81, 0x00], ProtocolError::UnmaskedFrame, 1002);
    assert_fails(&masked(0xC1, b"x"), ProtocolError::ReservedBits, 1002);
    assert_fails(&masked(0xA1, b"x"), ProtocolError::ReservedBits, 1002);
    assert_fails(
        &masked(0x83, b""),
        ProtocolError::Frame(FrameError::ReservedOpcode(3)),
        1002,
    );
    assert_fails(
        &masked(0x80, b"x"),
        ProtocolError::UnexpectedContinuation,
        1002,
    );
    assert_fails(
        &masked(0x09, b""),
        ProtocolError::Frame(FrameError::FragmentedControl),
        1002,
    );
    let mut two_starts = masked(0x01, b"a");
    two_starts.extend(masked(0x81, b"b"));
    assert_fails(&two_starts, ProtocolError::ExpectedContinuation, 1002);
    assert_fails(&masked(0x88, &[3]), ProtocolError::InvalidCloseFrame, 1002);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let payload = code.to_be_bytes();
        assert_fails(
            &masked(0x88, &payload),
            ProtocolError::InvalidCloseCode(code),
            1002,
        );
    }
}

#[test]
fn a_client_rejects_masked_frames() {
    let mut c = client();
    assert_eq!(
        feed(&mut c, &masked(0x81, b"x")),
        Err(ProtocolError::MaskedFrame)
    );
    assert_eq!(close_code_sent(&wire(&mut c)), 1002);
}

#[test]
fn invalid_utf8_closes_with_1007_at_the_first_bad_byte() {
    assert_fails(&masked(0x81, b"ok\xff"), ProtocolError::InvalidUtf8, 1007);
    assert_fails(
        &masked(0x88, b"\x03\xe8\xff"),
        ProtocolError::InvalidUtf8,
        1007,
    );
    // Split across fragments, and ending mid code point.
    let mut input = masked(0x01, b"\xce");
    input.extend(masked(0x80, b"\xba\xe1"));
    assert_fails(&input, ProtocolError::InvalidUtf8, 1007);
    // Fail fast: the frame declares 100 bytes but the error is found in the
    // first 10, before the rest arrives.
    let mut payload = vec![b'a'; 100];
    payload[5] = 0xf4;
    payload[6] = 0x90;
    let frame = masked(0x81, &payload);
    let mut s = server();
    assert_eq!(feed(&mut s, &frame[..16]), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn limits_close_with_1009_before_buffering() {
    let config = Config {
        max_frame_size: 10,
        max_message_size: 16,
        max_fragments: 3,
        ..Config::default()
    };
    let fail = |input: &[u8], expected: ProtocolError| {
        let mut s = Connection::new(Side::Server, config.clone());
        assert_eq!(feed(&mut s, input), Err(expected));
        assert_eq!(close_code_sent(&wire(&mut s)), 1009);
    };
    // Only the header of an oversized frame is needed to refuse it.
    fail(
        &masked(0x82, &[0; 11])[..6],
        ProtocolError::FrameTooLarge { len: 11, max: 10 },
    );
    let mut frags = masked(0x02, &[0; 10]);
    frags.extend(&masked(0x00, &[0; 7])[..6]);
    fail(&frags, ProtocolError::MessageTooLarge { max: 16 });
    let mut frags = masked(0x02, b"");
    frags.extend(masked(0x00, b""));
    frags.extend(masked(0x00, b""));
    frags.extend(masked(0x00, b""));
    fail(&frags, ProtocolError::TooManyFragments { max: 3 });
    // Exactly at the limits is fine.
    let mut s = Connection::new(Side::Server, config.clone());
    let mut ok = masked(0x02, &[1; 10]);
    ok.extend(masked(0x00, b""));
    ok.extend(masked(0x80, &[2; 6]));
    s.handle_input(&ok);
    let mut expected = vec![1u8; 10];
    expected.extend([2; 6]);
    assert_eq!(events(&mut s), vec![Event::Binary(expected.into())]);
}

#[test]
fn peer_initiated_close_is_echoed() {
    let mut s = server();
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    s.handle_input(&masked(0x88, &payload));
    assert_eq!(
        events(&mut s),
        vec![Event::Close(CloseFrame {
            code: CloseCode::NORMAL,
            reason: "bye".into()
        })]
    );
    assert!(s.is_closed());
    assert_eq!(wire(&mut s), [0x88, 0x02, 0x03, 0xe8]);
    assert_eq!(s.send_binary(b"x"), Err(SendError::Closed));
    // Anything after the close frame is ignored.
    s.handle_input(&masked(0x81, b"after"));
    assert!(events(&mut s).is_empty());
    s.handle_eof();
    assert!(events(&mut s).is_empty());
}

#[test]
fn answers_queued_before_the_close_reply_is_taken_go_out_ahead_of_it() {
    // The peer sends a message and its close frame in one read; the
    // application answers the message only after the close was parsed.
    let mut s = server();
    let mut input = masked(0x81, b"hi");
    input.extend(masked(0x88, &1000u16.to_be_bytes()));
    s.handle_input(&input);
    assert_eq!(
        events(&mut s),
        vec![
            text("hi"),
            Event::Close(CloseFrame {
                code: CloseCode::NORMAL,
                reason: String::new()
            })
        ]
    );
    assert!(s.has_transmit() && s.transmit_len() == 4);
    s.send_text("hi").unwrap();
    assert_eq!(
        wire(&mut s),
        [0x81, 0x02, b'h', b'i', 0x88, 0x02, 0x03, 0xe8]
    );
    // The reply went out: nothing more may follow it.
    assert_eq!(s.send_text("late"), Err(SendError::Closed));
    assert!(wire(&mut s).is_empty());
}

#[test]
fn answers_before_a_protocol_errors_close_frame_go_out_ahead_of_it() {
    let mut s = server();
    let mut input = masked(0x82, b"ok");
    input.extend(masked(0x81, &[0xff]));
    s.handle_input(&input);
    assert_eq!(
        s.poll_event(),
        Ok(Some(Event::Binary(Bytes::from_static(b"ok"))))
    );
    assert!(s.poll_event().is_err());
    s.send_binary(b"ok").unwrap();
    let out = wire(&mut s);
    assert_eq!(out[..4], [0x82, 0x02, b'o', b'k']);
    assert_eq!(close_code_sent(&out[4..]), 1007);
    assert_eq!(s.send_binary(b"late"), Err(SendError::Closed));
}

#[test]
fn empty_close_is_echoed_empty() {
    let mut s = server();
    s.handle_input(&masked(0x88, b""));
    assert_eq!(
        events(&mut s),
        vec![Event::Close(CloseFrame {
            code: CloseCode::NO_STATUS,
            reason: String::new()
        })]
    );
    assert_eq!(wire(&mut s), [0x88, 0x00]);
}

#[test]
fn local_close_waits_for_the_reply() {
    let mut c = client();
    c.close(CloseCode::GOING_AWAY, "later").unwrap();
    assert_eq!(close_code_sent(&wire(&mut c)), 1001);
    assert!(!c.is_open() && !c.is_closed());
    assert_eq!(c.send_text("x"), Err(SendError::Closed));
    assert_eq!(c.close(CloseCode::NORMAL, ""), Err(SendError::Closed));
    // Data still in flight from the peer is delivered; no pong goes out.
    c.handle_input(&[0x81, 0x01, b'a', 0x89, 0x00]);
    c.handle_input(&[0x88, 0x02, 0x03, 0xe9]);
    assert_eq!(
        events(&mut c),
        vec![
            text("a"),
            Event::Ping(Bytes::new()),
            Event::Close(CloseFrame {
                code: CloseCode::GOING_AWAY,
                reason: String::new()
            })
        ]
    );
    assert!(c.is_closed());
    assert!(wire(&mut c).is_empty());
}

#[test]
fn local_close_arguments_are_checked() {
    let mut c = client();
    assert_eq!(
        c.close(CloseCode::ABNORMAL, ""),
        Err(SendError::InvalidCloseCode(CloseCode::ABNORMAL))
    );
    assert_eq!(
        c.close(CloseCode::NORMAL, &"x".repeat(124)),
        Err(SendError::ReasonTooLong(124))
    );
    assert_eq!(c.send_ping(&[0; 126]), Err(SendError::ControlTooLong(126)));
    assert!(c.is_open());
    assert!(wire(&mut c).is_empty());
}

#[test]
fn eof_without_close_is_abnormal() {
    let mut s = server();
    s.handle_input(&masked(0x01, b"unfinished"));
    s.handle_eof();
    assert_eq!(
        events(&mut s),
        vec![Event::Close(CloseFrame {
            code: CloseCode::ABNORMAL,
            reason: String::new()
        })]
    );
    assert!(s.is_closed());
    assert!(wire(&mut s).is_empty());
}

#[test]
fn the_failure_reason_is_truncated_on_a_char_boundary() {
    assert_eq!(truncate_utf8("ééé", 3), "é");
    assert_eq!(truncate_utf8("abc", 3), "abc");
}

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
}

fn any_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        "\\PC{0,300}".prop_map(Msg::Text),
        prop::collection::vec(any::<u8>(), 0..2000).prop_map(Msg::Binary),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
    ]
}

fn expected_event(msg: &Msg) -> Event {
    match msg {
        Msg::Text(t) => text(t),
        Msg::Binary(b) => Event::Binary(Bytes::from(b.clone())),
        Msg::Ping(p) => Event::Ping(Bytes::from(p.clone())),
    }
}

/// Sends `msgs` from `from` and feeds the bytes to `to` in chunks of the
/// given sizes; returns what `to` saw.
fn transfer(
    from: &mut Connection,
    to: &mut Connection,
    msgs: &[Msg],
    chunks: &[usize],
) -> Vec<Event> {
    for msg in msgs {
        match msg {
            Msg::Text(t) => from.send_text(t).unwrap(),
            Msg::Binary(b) => from.send_binary(b).unwrap(),
            Msg::Ping(p) => from.send_ping(p).unwrap(),
        }
    }
    let bytes = wire(from);
    let mut rest = &bytes[..];
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(size.min(rest.len()));
        to.handle_input(now);
        rest = later;
    }
    events(to)
}

proptest! {
    #[test]
    fn messages_survive_any_fragmentation_and_chunking(
        msgs in prop::collection::vec(any_msg(), 0..12),
        fragment in prop_oneof![Just(0usize), 1usize..64],
        chunks in prop::collection::vec(1usize..700, 1..10),
        client_sends in any::<bool>(),
    ) {
        let config = Config { send_fragment_size: fragment, ..Config::default() };
        let (mut from, mut to) = if client_sends {
            (Connection::with_rng(Side::Client, config, StdRng::seed_from_u64(1)), server())
        } else {
            (Connection::new(Side::Server, config), client())
        };
        let seen = transfer(&mut from, &mut to, &msgs, &chunks);
        let expected: Vec<Event> = msgs.iter().map(expected_event).collect();
        prop_assert_eq!(seen, expected);
        // Nothing was transmitted in between: the last ping is answered
        // with an identical pong, the others not at all.
        let pongs = transfer(&mut to, &mut from, &[], &[usize::MAX]);
        let expected_pongs: Vec<Event> = msgs
            .iter()
            .rev()
            .find_map(|m| match m { Msg::Ping(p) => Some(Event::Pong(Bytes::from(p.clone()))), _ => None })
            .into_iter()
            .collect();
        prop_assert_eq!(pongs, expected_pongs);
    }

    #[test]
    fn arbitrary_input_never_panics_or_overbuffers(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        chunks in prop::collection::vec(1usize..300, 1..8),
        side in prop_oneof![Just(Side::Client), Just(Side::Server)],
    ) {
        let config = Config { max_frame_size: 256, max_message_size: 512, max_fragments: 8, ..Config::default() };
        let mut conn = Connection::with_rng(side, config, StdRng::seed_from_u64(3));
        let mut rest = &data[..];
        for &size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(size.min(rest.len()));
            let result = feed(&mut conn, now);
            // One partial frame at most is kept beyond what was processed,
            // plus the rest of the chunk just given.
            prop_assert!(conn.input.len() <= 256 + 300 + frame::MAX_HEADER_LEN);
            prop_assert!(conn.message.as_ref().is_none_or(|m| m.data.len() <= 512));
            if result.is_err() {
                prop_assert!(conn.is_closed());
                break;
            }
            rest = later;
        }
        while let Ok(Some(_)) = conn.poll_event() {}
        while conn.poll_transmit().is_some() {}
    }
}

fn deflate_pair(params: DeflateParams, fragment: usize) -> (Connection, Connection) {
    let config = DeflateConfig::default();
    let conn_config = Config {
        send_fragment_size: fragment,
        ..Config::default()
    };
    let client = Connection::with_rng(Side::Client, conn_config.clone(), StdRng::seed_from_u64(5))
        .with_deflate(params, &config)
        .unwrap();
    let server = Connection::new(Side::Server, conn_config)
        .with_deflate(params, &config)
        .unwrap();
    (client, server)
}

fn any_params() -> impl Strategy<Value = DeflateParams> {
    (any::<bool>(), any::<bool>(), 9u8..=15, 9u8..=15).prop_map(|(s, c, sb, cb)| DeflateParams {
        server_no_context_takeover: s,
        client_no_context_takeover: c,
        server_max_window_bits: sb,
        client_max_window_bits: cb,
    })
}

#[test]
fn deflated_messages_set_rsv1_and_round_trip() {
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let (mut c, mut s) = deflate_pair(params, 0);
    let big = "storm ".repeat(1000);
    c.send_text(&big).unwrap();
    let bytes = wire(&mut c);
    let (h, _) = FrameHeader::decode(&bytes).unwrap().unwrap();
    assert!(h.rsv1);
    assert!(
        bytes.len() < 200,
        "6000 repetitive bytes compressed to {}",
        bytes.len()
    );
    s.handle_input(&bytes);
    assert_eq!(events(&mut s), vec![text(&big)]);
    // An uncompressed frame is still accepted on a deflate connection.
    s.handle_input(&masked(0x81, b"plain"));
    assert_eq!(events(&mut s), vec![text("plain")]);
}

#[test]
fn a_decompression_bomb_hits_the_message_limit() {
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let (mut c, _) = deflate_pair(params, 0);
    c.send_binary(&vec![0u8; 4 << 20]).unwrap();
    let bomb = wire(&mut c);
    assert!(bomb.len() < 8 << 10);
    let config = Config {
        max_message_size: 1 << 20,
        ..Config::default()
    };
    let mut s = Connection::new(Side::Server, config)
        .with_deflate(params, &DeflateConfig::default())
        .unwrap();
    let err = feed(&mut s, &bomb).unwrap_err();
    assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
    assert_eq!(close_code_sent(&wire(&mut s)), 1009);
}

#[test]
fn rsv1_without_deflate_is_a_protocol_error() {
    assert_fails(&masked(0xC1, b"x"), ProtocolError::ReservedBits, 1002);
    // And with deflate, RSV1 on a continuation or control frame still is.
    let params = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    for input in [
        masked(0xC9, b""),
        [masked(0x01, b"a"), masked(0xC0, b"b")].concat(),
    ] {
        let (_, mut s) = deflate_pair(params, 0);
        assert_eq!(feed(&mut s, &input), Err(ProtocolError::ReservedBits));
    }
}

#[test]
fn invalid_utf8_inside_compressed_text_is_1007() {
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let (mut c, mut s) = deflate_pair(params, 0);
    // Compress invalid UTF-8 as a binary message, then relabel it as text.
    c.send_binary(b"abc\xff\xfe").unwrap();
    let mut bytes = wire(&mut c);
    bytes[0] = (bytes[0] & 0xF0) | 0x1;
    assert_eq!(feed(&mut s, &bytes), Err(ProtocolError::InvalidUtf8));
}

proptest! {
    #[test]
    fn deflated_messages_survive_any_parameters_fragmentation_and_chunking(
        msgs in prop::collection::vec(any_msg(), 0..8),
        params in any_params(),
        fragment in prop_oneof![Just(0usize), 1usize..64],
        chunks in prop::collection::vec(1usize..700, 1..10),
        client_sends in any::<bool>(),
    ) {
        let (mut c, mut s) = deflate_pair(params, fragment);
        let (from, to) = if client_sends { (&mut c, &mut s) } else { (&mut s, &mut c) };
        let seen = transfer(from, to, &msgs, &chunks);
        let expected: Vec<Event> = msgs.iter().map(expected_event).collect();
        prop_assert_eq!(seen, expected);
        // Send the same list again: context carried over (or reset) must
        // still decode identically.
        let seen = transfer(from, to, &msgs, &chunks);
        let expected: Vec<Event> = msgs.iter().map(expected_event).collect();
        prop_assert_eq!(seen, expected);
    }
}

#[test]
fn a_reply_goes_out_before_the_close_of_a_later_violation() {
    let mut s = server();
    let mut input = masked(0x81, b"Hello");
    input.extend(masked(0xA1, b"bad"));
    s.handle_input(&input);
    let Ok(Some(Event::Text(hello))) = s.poll_event() else {
        panic!("the message before the violation is delivered first");
    };
    s.send_text(&hello).unwrap();
    assert_eq!(s.poll_event(), Err(ProtocolError::ReservedBits));
    assert_eq!(s.poll_event(), Err(ProtocolError::ReservedBits));
    let out = wire(&mut s);
    assert_eq!(&out[..7], b"\x81\x05Hello");
    assert_eq!(close_code_sent(&out[7..]), 1002);
}

#[test]
fn eof_delivers_buffered_messages_first() {
    let mut s = server();
    s.handle_input(&masked(0x82, b"last"));
    s.handle_eof();
    assert_eq!(
        events(&mut s),
        vec![
            Event::Binary(Bytes::from_static(b"last")),
            Event::Close(CloseFrame {
                code: CloseCode::ABNORMAL,
                reason: String::new()
            })
        ]
    );
    assert_eq!(s.poll_event(), Ok(None));
}

#[test]
fn a_server_never_masks_even_with_an_rng() {
    let mut s = Connection::with_rng(Side::Server, Config::default(), StdRng::seed_from_u64(9));
    s.send_binary(b"x").unwrap();
    assert_eq!(wire(&mut s), [0x82, 0x01, b'x']);
}

#[test]
fn a_large_frame_arriving_in_pieces_is_buffered_in_one_allocation() {
    let mut s = server();
    let payload = vec![5u8; 64 * 1024];
    let wire = masked(0x82, &payload);
    s.handle_input(&wire[..1000]);
    assert!(events(&mut s).is_empty());
    let reserved = s.input.capacity();
    assert!(
        reserved >= wire.len() - 14,
        "room for the whole frame: {reserved}"
    );
    for chunk in wire[1000..].chunks(4096) {
        s.handle_input(chunk);
    }
    assert_eq!(events(&mut s), vec![Event::Binary(Bytes::from(payload))]);
}

#[test]
fn an_announced_frame_reserves_at_most_reserve_ahead() {
    let config = Config {
        max_frame_size: 64 << 20,
        max_message_size: 64 << 20,
        ..Config::default()
    };
    let mut s = Connection::new(Side::Server, config);
    // A 32 MiB binary frame announced, 10 bytes of it sent.
    let mut wire = vec![0x82, 0x80 | 127];
    wire.extend_from_slice(&(32u64 << 20).to_be_bytes());
    wire.extend_from_slice(&[1, 2, 3, 4]);
    wire.extend_from_slice(&[0u8; 10]);
    s.handle_input(&wire);
    assert!(events(&mut s).is_empty());
    assert!(
        s.input.capacity() <= RESERVE_AHEAD + wire.len(),
        "{} reserved for 10 bytes",
        s.input.capacity()
    );
}

/// Feeds `bytes` to `to` in chunks as a driver would: straight into the
/// input buffer when [`Connection::fill_input`] offers it (at most the room
/// it gives), through `handle_input` otherwise, draining events after each
/// read. Returns the events and how many reads went in place.
fn feed_in_place(to: &mut Connection, bytes: &[u8], chunks: &[usize]) -> (Vec<Event>, usize) {
    let mut seen = Vec::new();
    let mut in_place = 0;
    let mut rest = bytes;
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let want = size.min(rest.len());
        let direct = to.fill_input(|room| {
            // The room was reserved already: reading into it never grows
            // (or moves) the buffer.
            let capacity = room.get_ref().capacity();
            let n = want.min(room.remaining_mut());
            room.put_slice(&rest[..n]);
            assert_eq!(room.get_ref().capacity(), capacity);
            n
        });
        let used = match direct {
            Some((n, appended)) => {
                assert_eq!(n, appended);
                in_place += 1;
                n
            }
            None => {
                to.handle_input(&rest[..want]);
                want
            }
        };
        rest = &rest[used..];
        seen.extend(events(to));
    }
    (seen, in_place)
}

#[test]
fn fill_input_is_offered_only_while_a_large_frame_arrives() {
    let mut s = server();
    let offer = |s: &mut Connection| s.fill_input(|room| room.remaining_mut()).map(|(n, _)| n);
    // Nothing in progress.
    assert_eq!(offer(&mut s), None);
    let big = masked(0x82, &vec![7u8; 64 * 1024]);
    // The header alone: the frame is known, its room reserved.
    s.handle_input(&big[..14]);
    assert!(events(&mut s).is_empty());
    let room = offer(&mut s).expect("a 64 KiB frame in progress is read in place");
    assert!(room >= 64 * 1024);
    // Until less than DIRECT_READ_MIN of it is still to come.
    s.handle_input(&big[14..big.len() - DIRECT_READ_MIN + 1]);
    assert!(events(&mut s).is_empty());
    assert_eq!(offer(&mut s), None);
    s.handle_input(&big[big.len() - DIRECT_READ_MIN + 1..]);
    assert_eq!(
        events(&mut s),
        vec![Event::Binary(Bytes::from(vec![7u8; 64 * 1024]))]
    );
    // A small frame in progress is not worth it.
    let small = masked(0x82, &[1u8; 1000]);
    s.handle_input(&small[..10]);
    assert!(events(&mut s).is_empty());
    assert_eq!(offer(&mut s), None);
    // Nor is a closed connection.
    s.handle_input(&small[10..]);
    s.handle_input(&masked(0x88, &[0x03, 0xe8]));
    s.handle_input(&big[..14]);
    let _ = events(&mut s);
    assert_eq!(offer(&mut s), None);
}

#[test]
fn the_rest_of_a_large_frame_then_the_next_are_read_in_place() {
    let mut s = server();
    let mut bytes = masked(0x82, &vec![3u8; 40_000]);
    bytes.extend(masked(0x81, b"after"));
    let (seen, in_place) = feed_in_place(&mut s, &bytes, &[14, usize::MAX]);
    // The rest of the frame exactly, then the next frame at the boundary
    // (large frames flow): both in place.
    assert_eq!(in_place, 2, "the rest of the frame, then the next");
    assert_eq!(
        seen,
        vec![Event::Binary(Bytes::from(vec![3u8; 40_000])), text("after")]
    );
}

fn any_large_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        any_msg(),
        (1usize..70_000, any::<u8>()).prop_map(|(n, b)| Msg::Binary(vec![b; n])),
        (9000usize..40_000).prop_map(|n| Msg::Text("é".repeat(n / 2))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn reads_in_place_give_the_same_events_as_any_chunking(
        msgs in prop::collection::vec(any_large_msg(), 0..6),
        fragment in prop_oneof![Just(0usize), 4096usize..20_000],
        chunks in prop::collection::vec(1usize..40_000, 1..10),
    ) {
        let config = Config { send_fragment_size: fragment, ..Config::default() };
        let mut from = Connection::with_rng(Side::Client, config, StdRng::seed_from_u64(1));
        for msg in &msgs {
            match msg {
                Msg::Text(t) => from.send_text(t).unwrap(),
                Msg::Binary(b) => from.send_binary(b).unwrap(),
                Msg::Ping(p) => from.send_ping(p).unwrap(),
            }
        }
        let bytes = wire(&mut from);
        let (seen, _) = feed_in_place(&mut server(), &bytes, &chunks);
        let expected: Vec<Event> = msgs.iter().map(expected_event).collect();
        prop_assert_eq!(seen, expected);
    }
}

/// What `wire` decodes to, as a peer of `side` sees it.
fn decoded(side: Side, wire: &[u8]) -> Vec<Event> {
    let mut peer = match side {
        Side::Server => client(),
        Side::Client => server(),
    };
    feed(&mut peer, wire).unwrap()
}

#[test]
fn a_ping_replaces_the_pong_of_an_earlier_one_while_it_waits() {
    let mut s = server();
    let mut input = masked(0x89, b"first");
    input.extend(masked(0x89, b"second"));
    input.extend(masked(0x89, b"third"));
    s.handle_input(&input);
    assert_eq!(events(&mut s).len(), 3);
    assert_eq!(s.waiting_pong(), Some(2 + 5));
    assert_eq!(
        decoded(Side::Server, &wire(&mut s)),
        [Event::Pong(Bytes::from_static(b"third"))]
    );
    // Once transmitted, the next ping gets its own pong.
    assert_eq!(s.waiting_pong(), None);
    assert_eq!(feed(&mut s, &masked(0x89, b"")).unwrap().len(), 1);
    assert_eq!(wire(&mut s), [0x8a, 0x00]);
}

#[test]
fn a_waiting_pong_goes_out_after_earlier_output_and_before_the_close_reply() {
    let mut s = server();
    s.send_text("before").unwrap();
    s.handle_input(&masked(0x89, b"p"));
    assert_eq!(events(&mut s), [Event::Ping(Bytes::from_static(b"p"))]);
    // Queued now: it keeps its place, and a later ping has its own pong.
    s.queue_pong();
    s.send_text("after").unwrap();
    s.handle_input(&masked(0x89, b"q"));
    s.handle_input(&masked(0x88, &1000u16.to_be_bytes()));
    assert_eq!(events(&mut s).len(), 2);
    assert_eq!(
        decoded(Side::Server, &wire(&mut s)),
        [
            text("before"),
            Event::Pong(Bytes::from_static(b"p")),
            text("after"),
            Event::Pong(Bytes::from_static(b"q")),
            Event::Close(CloseFrame {
                code: CloseCode::NORMAL,
                reason: String::new()
            }),
        ]
    );
}

proptest! {
    /// However many pings arrive, in whatever chunks, while nothing is
    /// transmitted: one pong waits, for the last of them, and each ping's
    /// event is handed over before the next frame is parsed (the event
    /// queue never grows).
    #[test]
    fn pings_without_a_transmit_leave_one_pong_for_the_last(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=125), 1..200),
        chunks in prop::collection::vec(1usize..700, 1..10),
        side in prop_oneof![Just(Side::Client), Just(Side::Server)],
    ) {
        let mut from = match side {
            Side::Server => client(),
            Side::Client => server(),
        };
        let mut conn = match side {
            Side::Server => server(),
            Side::Client => client(),
        };
        for payload in &payloads {
            from.send_ping(payload).unwrap();
        }
        let bytes = wire(&mut from);
        let mut rest = &bytes[..];
        let mut pings = 0;
        for &size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(size.min(rest.len()));
            conn.handle_input(now);
            while let Some(event) = conn.poll_event().unwrap() {
                prop_assert!(matches!(event, Event::Ping(_)));
                pings += 1;
            }
            rest = later;
        }
        prop_assert_eq!(pings, payloads.len());
        let last = payloads.last().unwrap();
        let mask = if side == Side::Client { 4 } else { 0 };
        prop_assert_eq!(conn.waiting_pong(), Some(2 + mask + last.len()));
        prop_assert_eq!(
            decoded(side, &wire(&mut conn)),
            [Event::Pong(Bytes::from(last.clone()))]
        );
    }
}

/// Appends one 32-byte read per message to `buf`, cutting each out and
/// keeping it in `held`: how many reads found no room, and the largest
/// capacity the buffer had.
fn grow(
    growth: &mut InputGrowth,
    buf: &mut BytesMut,
    reads: usize,
    held: &mut Vec<Bytes>,
) -> (usize, usize) {
    let mut no_room = 0;
    let mut largest = 0;
    for i in 0..reads {
        if buf.capacity() - buf.len() < 32 {
            no_room += 1;
        }
        growth.append(buf, &[i as u8; 32]);
        largest = largest.max(buf.capacity());
        held.push(buf.split_to(32).freeze());
    }
    (no_room, largest)
}

#[test]
fn input_growth_doubles_while_messages_are_held_and_reuses_otherwise() {
    let mut growth = InputGrowth::default();
    let mut buf = BytesMut::new();
    let mut held = Vec::new();
    // Held: buffers of 32, 64, 128, 256 and 512 bytes, not 20 of 32.
    assert_eq!(grow(&mut growth, &mut buf, 20, &mut held), (5, 512));
    for (i, message) in (0u8..).zip(&held) {
        assert_eq!(message[..], [i; 32]);
    }
    // Then 1, 2, 4, 8 KiB, and 16 KiB at most.
    assert_eq!(grow(&mut growth, &mut buf, 2000, &mut held), (7, 16 * 1024));
    for (i, message) in held[20..].iter().enumerate() {
        assert_eq!(message[..], [i as u8; 32]);
    }
    // Nothing held: the same buffer again, however many reads.
    held.clear();
    let mut places = Vec::new();
    for i in 0..2000 {
        growth.append(&mut buf, &[i as u8; 32]);
        let message = buf.split_to(32).freeze();
        assert_eq!(message[..], [i as u8; 32]);
        places.push(message.as_ptr() as usize);
    }
    let (first, last) = (places.iter().min(), places.iter().max());
    assert!(last.zip(first).is_some_and(|(l, f)| l - f < 16 * 1024));
    // Released: the next buffer is the first read's size.
    buf.clear();
    growth.release(&mut buf);
    assert_eq!(buf.capacity(), 0);
    growth.append(&mut buf, &[2; 32]);
    assert_eq!(buf.capacity(), 32);
}

/// What a connection made of its input, step by step: after each piece,
/// every `poll_event` result up to `Ok(None)` or the error (asked twice:
/// errors are final), then after the end of input the same, and the bytes
/// it would transmit. `general` parses with the frame-by-frame path
/// alone, never the whole-message fast path.
fn transcript(
    side: Side,
    config: &Config,
    input: &[u8],
    pieces: &[usize],
    general: bool,
) -> (Vec<Result<Option<Event>, ProtocolError>>, Vec<u8>) {
    let mut conn = Connection::with_rng(side, config.clone(), StdRng::seed_from_u64(5));
    let mut seen = Vec::new();
    let drain = |conn: &mut Connection, seen: &mut Vec<_>| {
        for _ in 0..input.len() + 2 {
            let result = if general {
                conn.poll_frames()
            } else {
                conn.poll_event()
            };
            let done = matches!(result, Ok(None) | Err(_));
            seen.push(result);
            if done {
                break;
            }
        }
    };
    let mut rest = input;
    for &size in pieces.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(size.min(rest.len()));
        conn.handle_input(now);
        drain(&mut conn, &mut seen);
        rest = later;
    }
    conn.handle_eof();
    drain(&mut conn, &mut seen);
    drain(&mut conn, &mut seen);
    (seen, wire(&mut conn))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The whole-message fast path changes nothing anyone can see: on any
    /// input, in any pieces, on either side, under tight or default
    /// limits, `poll_event` gives the very events and errors, in the same
    /// order, and leaves the same bytes to transmit, as parsing frame by
    /// frame alone.
    #[test]
    fn the_fast_path_and_the_general_path_agree(
        frames in prop::collection::vec(any_frame(), 0..8),
        cut in any::<prop::sample::Index>(),
        pieces in prop::collection::vec(1usize..200, 1..6),
        server in any::<bool>(),
        max_frame_size in prop_oneof![Just(16usize << 20), 0usize..150],
        max_message_size in prop_oneof![Just(16usize << 20), 0usize..150],
    ) {
        let side = if server { Side::Server } else { Side::Client };
        let config = Config::default()
            .with_max_frame_size(max_frame_size)
            .with_max_message_size(max_message_size);
        let mut input = frames.concat();
        // Sometimes end the input mid-frame.
        if cut.index(4) == 0 {
            input.truncate(cut.index(input.len() + 1));
        }
        let fast = transcript(side, &config, &input, &pieces, false);
        let general = transcript(side, &config, &input, &pieces, true);
        prop_assert_eq!(fast, general);
    }
}

#[test]
fn whole_frames_of_every_length_and_alignment_match_the_general_path() {
    // Every payload length up to 64 (and either side of the 16-bit
    // length), behind 0..8 bytes of an earlier frame, so the payload
    // starts at every alignment; ASCII, non-ASCII and invalid text.
    let mut lengths: Vec<usize> = (0..=64).collect();
    lengths.extend([125, 126, 127, 65535]);
    for len in lengths {
        for lead in 0..8usize {
            let ascii: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut non_ascii = ascii.clone();
            let mut invalid = ascii.clone();
            if len >= 2 {
                non_ascii[len - 2..].copy_from_slice("é".as_bytes());
                invalid[len - 1] = 0xC3; // a truncated sequence at the end
            }
            for payload in [&ascii, &non_ascii, &invalid] {
                let mut input = masked(0x82, &vec![7; lead]);
                input.extend(masked(0x81, payload));
                input.extend(masked(0x82, payload));
                let [fast, general] = [false, true].map(|general| {
                    transcript(
                        Side::Server,
                        &Config::default(),
                        &input,
                        &[input.len()],
                        general,
                    )
                });
                assert_eq!(fast, general, "len {len} lead {lead}");
                let valid = std::str::from_utf8(payload).is_ok();
                let text_event = &fast.0[1];
                if valid {
                    let text = std::str::from_utf8(payload).unwrap();
                    assert_eq!(text_event, &Ok(Some(Event::Text(Utf8Bytes::from(text)))));
                } else {
                    assert_eq!(text_event, &Err(ProtocolError::InvalidUtf8));
                }
            }
        }
    }
}

#[test]
fn a_code_point_split_across_fragments_then_whole_frames() {
    // "é€" in fragments cut inside each code point, then a whole frame
    // (the fast path's), then a fragmented message whose last fragment
    // ends mid code point (1007), in any pieces: both paths agree, and
    // the validator's state of a fragmented message never leaks into the
    // whole frame after it.
    let utf8 = "é€".as_bytes(); // C3 A9 E2 82 AC
    let mut input = frame_bytes(0x01, &utf8[..1], Some([9, 8, 7, 6]), 0);
    input.extend(frame_bytes(0x00, &utf8[1..3], Some([1, 1, 1, 1]), 0));
    input.extend(frame_bytes(0x80, &utf8[3..], Some([5, 0, 5, 0]), 0));
    input.extend(masked(0x81, "ok".as_bytes()));
    input.extend(masked(0x01, b"a"));
    input.extend(masked(0x80, &utf8[..4]));
    for piece in 1..=input.len() {
        let [fast, general] = [false, true]
            .map(|general| transcript(Side::Server, &Config::default(), &input, &[piece], general));
        assert_eq!(fast, general, "pieces of {piece}");
        let events: Vec<_> = fast.0.iter().filter(|r| !matches!(r, Ok(None))).collect();
        assert_eq!(events[0], &Ok(Some(text("é€"))), "pieces of {piece}");
        assert_eq!(events[1], &Ok(Some(text("ok"))), "pieces of {piece}");
        assert_eq!(
            events[2],
            &Err(ProtocolError::InvalidUtf8),
            "pieces of {piece}"
        );
        assert_eq!(close_code_sent(&fast.1), 1007);
    }
}
