//! The backplane's parts driven through the module's API: unit tests, and
//! property tests of the envelope codec, the subscriber's order, the
//! recovery rule and presence against simple models.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use rand::SeedableRng;

use super::*;
use crate::Message;
use crate::test_util::epoch;

fn epoch_of(value: u64) -> Epoch {
    Epoch::new(value).unwrap()
}

fn room_at(origin: NodeId, room: &str, at: Option<Position>) -> Envelope {
    let mut envelope = Envelope::room(origin, room, Message::from("m"));
    envelope.position = at;
    envelope
}

// ---- node ids and channels ----------------------------------------------

#[test]
fn node_ids_print_and_parse_as_32_hex_digits() {
    let id = NodeId::from_u128(0xabc);
    let text = id.to_string();
    assert_eq!(text, "00000000000000000000000000000abc");
    assert_eq!(text.parse::<NodeId>(), Ok(id));
    for bad in [
        "",
        "abc",
        "+0000000000000000000000000000abc",
        &"g".repeat(32),
    ] {
        assert_eq!(bad.parse::<NodeId>(), Err(NodeIdError), "{bad:?}");
    }
}

#[test]
fn session_addresses_print_and_parse_as_node_dash_number() {
    let node = NodeId::from_u128(0x1234_5678_9abc_def0_0a1b_2c3d);
    assert_eq!(node.tag(), NodeTag::from_u32(0x0a1b_2c3d));
    let addr = SessionAddr::new(node.tag(), 7);
    assert_eq!(addr.to_string(), "0a1b2c3d-7");
    assert_eq!("0A1B2C3D-7".parse::<SessionAddr>(), Ok(addr));
    for bad in [
        "",
        "7",
        "0a1b2c3d-",
        "0a1b2c3d7",
        "-7",
        "a1b2c3d-7",
        "00a1b2c3d-7",
        "0a1b2c3g-7",
        "+a1b2c3d-7",
        "0a1b2c3d-+7",
        "0a1b2c3d-07",
        "0a1b2c3d-7-1",
        "0a1b2c3d-18446744073709551616",
    ] {
        assert_eq!(bad.parse::<SessionAddr>(), Err(SessionAddrError), "{bad:?}");
    }
}

proptest! {
    /// Every address reads back as itself; parsing any text is total and
    /// gives back only what it writes.
    #[test]
    fn session_addresses_round_trip(node in any::<u32>(), session in any::<u64>(), text in ".{0,40}") {
        let addr = SessionAddr::new(NodeTag::from_u32(node), session);
        prop_assert_eq!(addr.to_string().parse::<SessionAddr>(), Ok(addr));
        if let Ok(parsed) = text.parse::<SessionAddr>() {
            prop_assert!(parsed.to_string().eq_ignore_ascii_case(&text));
        }
    }
}

proptest! {
    /// Node stats read back as written; any other text is an error, never
    /// a panic.
    #[test]
    fn node_stats_round_trip(sessions in any::<u64>(), rooms in any::<u64>(), text in ".{0,30}") {
        let stats = NodeStats { sessions, rooms };
        prop_assert_eq!(stats.to_string().parse(), Ok(stats));
        if let Ok(parsed) = text.parse::<NodeStats>() {
            // Only digits around one space (leading zeros aside).
            prop_assert_eq!(parsed.to_string().parse(), Ok(parsed));
            prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b' '));
        }
    }
}

#[test]
fn node_stats_refuse_what_is_not_two_numbers() {
    for bad in [
        "",
        "1",
        "1 ",
        " 1",
        "1  2",
        "1 2 ",
        "+1 2",
        "1 -2",
        "a b",
        "1 99999999999999999999",
    ] {
        assert_eq!(bad.parse::<NodeStats>(), Err(NodeStatsError), "{bad:?}");
    }
}

#[test]
fn random_ids_and_epochs_differ() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    assert_ne!(NodeId::random(&mut rng), NodeId::random(&mut rng));
    assert_ne!(Epoch::random(&mut rng), Epoch::random(&mut rng));
}

#[test]
fn channel_names_parse_back_to_what_they_name() {
    let channels = Channels::new("svc-1").unwrap();
    let node = NodeId::from_u128(42).tag();
    assert_eq!(
        channels.parse(&channels.room("a.b.c")),
        Some(Channel::Room("a.b.c"))
    );
    assert_eq!(
        channels.parse(&channels.user("bob")),
        Some(Channel::User("bob"))
    );
    assert_eq!(
        channels.parse(&channels.node(node)),
        Some(Channel::Node(node))
    );
    assert_eq!(channels.node(node), "svc-1.node.0000002a");
    assert_eq!(
        channels.parse(&channels.all_nodes()),
        Some(Channel::AllNodes)
    );
    assert_eq!(channels.all_rooms(), "svc-1.room.*");
    // Storage keys, other prefixes and malformed node channels are not channels.
    for other in [
        channels.history("a"),
        channels.meta("a"),
        channels.presence("a"),
        channels.node_stats(),
        "svc-10.room.a".to_owned(),
        "svc.room.a".to_owned(),
        "svc-1.node.xyz".to_owned(),
        "svc-1.node.0000002".to_owned(),
        "svc-1.node.0000002a0".to_owned(),
        "svc-1".to_owned(),
    ] {
        assert_eq!(channels.parse(&other), None, "{other}");
    }
}

#[test]
fn prefixes_are_checked() {
    assert_eq!(Channels::new(""), Err(PrefixError::Empty));
    assert_eq!(
        Channels::new(&"p".repeat(65)),
        Err(PrefixError::TooLong { len: 65 })
    );
    for (prefix, bad) in [("a.b", '.'), ("a*", '*'), ("a b", ' '), ("é", 'é')] {
        assert_eq!(Channels::new(prefix), Err(PrefixError::BadChar(bad)));
    }
    assert!(Channels::new(&"p".repeat(64)).is_ok());
}

// ---- envelope -----------------------------------------------------------

#[test]
fn envelope_layout_is_as_documented() {
    let envelope = Envelope::user(NodeId::from_u128(1), "ab", Message::from("hi"));
    let wire = envelope.to_bytes().unwrap();
    let mut expected = vec![VERSION, 2, 0x01, 0, 2];
    expected.extend_from_slice(&1u128.to_be_bytes());
    expected.extend_from_slice(&[0; 16]);
    expected.extend_from_slice(b"abhi");
    assert_eq!(&wire[..], &expected[..]);
    assert_eq!(HEADER_LEN, 37);
    assert_eq!(envelope.encoded_len(), wire.len());
}

#[test]
fn encoding_refuses_misuse() {
    let node = NodeId::from_u128(1);
    let empty = Envelope::room(node, "", Message::from("x"));
    assert_eq!(empty.to_bytes(), Err(EncodeError::EmptyName));
    let long = Envelope::room(node, &"r".repeat(MAX_NAME_LEN + 1), Message::from("x"));
    assert_eq!(
        long.to_bytes(),
        Err(EncodeError::NameTooLong {
            len: MAX_NAME_LEN + 1
        })
    );
    let mut whisper = Envelope::user(node, "bob", Message::from("x"));
    whisper.position = Some(Position::new(epoch_of(1), 1));
    assert_eq!(whisper.to_bytes(), Err(EncodeError::PositionOnUser));
}

#[test]
fn decoding_names_each_fault() {
    let node = NodeId::from_u128(1);
    let good = Envelope::room(node, "r", Message::from("x"))
        .to_bytes()
        .unwrap();
    let with = |index: usize, byte: u8| {
        let mut bytes = good.to_vec();
        bytes[index] = byte;
        Envelope::decode(Bytes::from(bytes), 1024)
    };
    assert_eq!(with(0, 2), Err(DecodeError::Version(2)));
    assert_eq!(with(1, 9), Err(DecodeError::UnknownKind(9)));
    assert_eq!(with(2, 0x84), Err(DecodeError::UnknownFlags(0x84)));
    assert!(with(2, 0x03).unwrap().echo);
    assert_eq!(with(4, 0), Err(DecodeError::BadNameLen(0)));
    assert_eq!(with(4, 3), Err(DecodeError::TooShort { len: good.len() }));
    assert_eq!(with(28, 1), Err(DecodeError::HalfPosition)); // epoch, no offset
    assert_eq!(with(36, 1), Err(DecodeError::HalfPosition)); // offset, no epoch
    assert_eq!(with(37, 0xff), Err(DecodeError::NameNotUtf8));
    assert_eq!(with(38, 0xff), Err(DecodeError::TextNotUtf8));
    let mut whisper = Envelope::user(node, "u", Message::from("x"))
        .to_bytes()
        .unwrap()
        .to_vec();
    Envelope::write_position(&mut whisper, Position::new(epoch_of(1), 1));
    assert_eq!(
        Envelope::decode(whisper.into(), 1024),
        Err(DecodeError::PositionOnUser)
    );
    assert_eq!(
        Envelope::decode(good.clone(), 0),
        Err(DecodeError::PayloadTooLarge { len: 1, max: 0 })
    );
    assert_eq!(
        Envelope::decode(good.slice(..36), 1024),
        Err(DecodeError::TooShort { len: 36 })
    );
    // A binary payload may be anything.
    let mut binary = good.to_vec();
    binary[2] = 0;
    binary[38] = 0xff;
    let decoded = Envelope::decode(binary.into(), 1024).unwrap();
    assert_eq!(
        decoded.message,
        Message::Binary(Bytes::from_static(&[0xff]))
    );
}

#[test]
fn write_position_needs_a_header_and_an_offset() {
    let mut short = [0u8; 36];
    assert!(!Envelope::write_position(
        &mut short,
        Position::new(epoch_of(1), 1)
    ));
    let mut wire = [0u8; HEADER_LEN];
    assert!(!Envelope::write_position(
        &mut wire,
        Position::new(epoch_of(1), 0)
    ));
    assert_eq!(wire, [0; HEADER_LEN]);
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        ".{0,40}".prop_map(Message::from),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Message::from),
    ]
}

fn arb_position() -> impl Strategy<Value = Position> {
    (1..u64::MAX, 1..u64::MAX).prop_map(|(epoch, offset)| Position::new(epoch_of(epoch), offset))
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        0..3_u8,
        any::<u128>(),
        prop_oneof![
            ".{1,20}",
            proptest::string::string_regex(".{1,300}").unwrap()
        ]
        .prop_filter("name within the limit", |name| name.len() <= MAX_NAME_LEN),
        proptest::option::of(arb_position()),
        any::<bool>(),
        arb_message(),
    )
        .prop_map(|(kind, origin, name, position, echo, message)| {
            let origin = NodeId::from_u128(origin);
            let mut envelope = match kind {
                0 => {
                    let mut envelope = Envelope::room(origin, &name, message);
                    envelope.position = position;
                    envelope
                }
                1 => Envelope::user(origin, &name, message),
                _ => Envelope::node(origin, &name, message),
            };
            envelope.echo = echo;
            envelope
        })
}

proptest! {
    #[test]
    fn envelopes_round_trip(envelope in arb_envelope()) {
        let wire = envelope.to_bytes().unwrap();
        prop_assert_eq!(wire.len(), envelope.encoded_len());
        prop_assert_eq!(Envelope::decode(wire, usize::MAX), Ok(envelope));
    }

    #[test]
    fn the_store_positions_an_encoded_room_message(
        envelope in arb_envelope(),
        position in arb_position(),
    ) {
        prop_assume!(envelope.kind == Kind::Room);
        let mut wire = envelope.to_bytes().unwrap().to_vec();
        prop_assert!(Envelope::write_position(&mut wire, position));
        let decoded = Envelope::decode(wire.into(), usize::MAX).unwrap();
        prop_assert_eq!(decoded.position, Some(position));
        prop_assert_eq!(decoded.message, envelope.message);
    }

    /// Any bytes decode to an envelope or an error; what decodes encodes
    /// back to the same bytes (one wire form per envelope).
    #[test]
    fn decoding_is_total_and_canonical(
        bytes in proptest::collection::vec(any::<u8>(), 0..128),
        max in 0usize..64,
    ) {
        if let Ok(envelope) = Envelope::decode(Bytes::from(bytes.clone()), max) {
            prop_assert!(envelope.message.len() <= max);
            prop_assert_eq!(&envelope.to_bytes().unwrap()[..], &bytes[..]);
        }
    }

    /// Valid envelopes with one byte changed: still total and canonical.
    #[test]
    fn decoding_mutated_envelopes_is_total(
        envelope in arb_envelope(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = envelope.to_bytes().unwrap().to_vec();
        let at = index.index(bytes.len());
        bytes[at] = byte;
        if let Ok(decoded) = Envelope::decode(Bytes::from(bytes.clone()), usize::MAX) {
            prop_assert_eq!(&decoded.to_bytes().unwrap()[..], &bytes[..]);
        }
    }
}

// ---- subscriber: de-duplication and gaps --------------------------------

#[test]
fn a_node_skips_its_own_publications_but_counts_their_offsets() {
    let (me, other) = (NodeId::from_u128(1), NodeId::from_u128(2));
    let mut subscriber = Subscriber::new(me);
    let at = |offset| Some(Position::new(epoch_of(5), offset));
    let first = subscriber.handle(&room_at(other, "r", at(1)));
    assert!(first.deliver());
    let own = subscriber.handle(&room_at(me, "r", at(2)));
    assert_eq!(
        own,
        Inbound {
            order: Order::Next,
            own: true,
            echo: false
        }
    );
    assert!(!own.deliver());
    // Offset 3 follows the node's own 2: no gap.
    assert_eq!(
        subscriber.handle(&room_at(other, "r", at(3))).order,
        Order::Next
    );
    // Unpositioned messages are delivered unless they are the node's own.
    assert!(subscriber.handle(&room_at(other, "r", None)).deliver());
    assert!(!subscriber.handle(&room_at(me, "r", None)).deliver());
    // An echo comes back to its origin to be delivered there too, once.
    let mut echo = room_at(me, "r", at(4));
    echo.echo = true;
    assert!(subscriber.handle(&echo).deliver());
    assert!(!subscriber.handle(&echo).deliver()); // now a duplicate
}

#[test]
fn a_new_epoch_is_reported_and_followed() {
    let mut subscriber = Subscriber::new(NodeId::from_u128(1));
    let old = Position::new(epoch_of(1), 10);
    let new = Position::new(epoch_of(2), 1);
    assert_eq!(subscriber.observe("r", old), Order::First);
    assert_eq!(
        subscriber.observe("r", new),
        Order::EpochChanged { was: old }
    );
    assert_eq!(
        subscriber.observe("r", Position::new(epoch_of(2), 2)),
        Order::Next
    );
    // Rooms are independent, and forgotten on request.
    assert_eq!(subscriber.observe("s", old), Order::First);
    assert_eq!(subscriber.len(), 2);
    subscriber.forget("r");
    assert_eq!(subscriber.last("r"), None);
    assert_eq!(subscriber.observe("r", new), Order::First);
}

proptest! {
    /// A room publishes offsets 1..=n; the subscriber sees any subsequence
    /// with repeats and late copies. Model: what it delivers is strictly
    /// increasing, each offset at most once; every offset up to the highest
    /// seen is either delivered or reported in exactly one gap.
    #[test]
    fn gaps_and_duplicates_match_the_model(
        seen in proptest::collection::vec(1u64..40, 0..80),
    ) {
        let mut subscriber = Subscriber::new(NodeId::from_u128(1));
        let other = NodeId::from_u128(2);
        let mut delivered = Vec::new();
        let mut missed = BTreeSet::new();
        let mut last = 0;
        for offset in seen {
            let envelope = room_at(other, "r", Some(Position::new(epoch_of(1), offset)));
            let inbound = subscriber.handle(&envelope);
            let expected = match offset {
                _ if last == 0 => Order::First,
                o if o <= last => Order::Duplicate,
                o if o == last + 1 => Order::Next,
                o => Order::Gap { first: last + 1, last: o - 1 },
            };
            prop_assert_eq!(inbound.order, expected);
            if let Order::Gap { first, last } = inbound.order {
                for gap in first..=last {
                    prop_assert!(missed.insert(gap));
                }
            }
            if inbound.deliver() {
                delivered.push(offset);
                last = offset;
            }
        }
        prop_assert!(delivered.windows(2).all(|w| w[0] < w[1]));
        if let (Some(&first), Some(&top)) = (delivered.first(), delivered.last()) {
            let covered: BTreeSet<u64> = delivered.iter().copied().chain(missed.iter().copied()).collect();
            prop_assert_eq!(covered, (first..=top).collect::<BTreeSet<u64>>());
            prop_assert_eq!(delivered.len() + missed.len(), usize::try_from(top - first + 1).unwrap());
        }
    }
}

// ---- recovery -----------------------------------------------------------

#[test]
fn recovery_rules() {
    let (one, two) = (epoch_of(1), epoch_of(2));
    let at = |offset| Position::new(one, offset);
    let window = |range: std::ops::RangeInclusive<u64>| range.map(|o| (o, o)).collect::<Vec<_>>();
    assert_eq!(recover(at(5), at(5), 10, window(1..=5)), Ok(vec![]));
    assert_eq!(recover(at(2), at(5), 10, window(1..=7)), Ok(vec![3, 4, 5]));
    assert_eq!(
        recover(at(2), Position::new(two, 5), 10, window(1..=5)),
        Err(Unrecoverable::EpochChanged { was: one, now: two })
    );
    assert_eq!(
        recover(at(6), at(5), 10, window(1..=5)),
        Err(Unrecoverable::Ahead { since: 6, top: 5 })
    );
    assert_eq!(
        recover(at(0), at(20), 10, window(1..=20)),
        Err(Unrecoverable::TooMany {
            missed: 20,
            max: 10
        })
    );
    assert_eq!(
        recover(at(2), at(5), 10, window(4..=5)),
        Err(Unrecoverable::Trimmed {
            wanted: 3,
            oldest: Some(4)
        })
    );
    assert_eq!(
        recover(at(2), at(5), 10, Vec::<(u64, u64)>::new()),
        Err(Unrecoverable::Trimmed {
            wanted: 3,
            oldest: None
        })
    );
    let holed = vec![(3, 3), (5, 5)];
    assert_eq!(
        recover(at(2), at(5), 10, holed),
        Err(Unrecoverable::Incomplete { missing: 4 })
    );
    assert_eq!(recovery_range(at(2), at(5), 10), Ok(Some(3..=5)));
    assert_eq!(recovery_range(at(5), at(5), 10), Ok(None));
    for error in [
        Unrecoverable::EpochChanged { was: one, now: two },
        Unrecoverable::Trimmed {
            wanted: 3,
            oldest: None,
        },
    ] {
        assert!(!error.to_string().is_empty());
    }
}

proptest! {
    /// The room published 1..=top in one epoch; the history kept
    /// oldest..=top (older ones trimmed). A client at `since` gets exactly
    /// since+1..=top in order, or an error that says why not, never a
    /// partial or reordered answer.
    #[test]
    fn recovery_is_exact(
        top in 0u64..60,
        oldest in 1u64..62,
        since in 0u64..62,
        same_epoch in any::<bool>(),
        max in 0u64..70,
    ) {
        let oldest = oldest.min(top + 1);
        let window: Vec<(u64, u64)> = (oldest..=top).map(|o| (o, o * 10)).collect();
        let client = Position::new(epoch_of(if same_epoch { 1 } else { 2 }), since);
        let room = Position::new(epoch_of(1), top);
        let got = recover(client, room, max, window);
        let expected = if !same_epoch {
            Err(Unrecoverable::EpochChanged { was: epoch_of(2), now: epoch_of(1) })
        } else if since > top {
            Err(Unrecoverable::Ahead { since, top })
        } else if top - since > max {
            Err(Unrecoverable::TooMany { missed: top - since, max })
        } else if since == top {
            Ok(Vec::new())
        } else if since + 1 < oldest {
            Err(Unrecoverable::Trimmed {
                wanted: since + 1,
                oldest: (oldest <= top).then_some(oldest),
            })
        } else {
            Ok((since + 1..=top).map(|o| o * 10).collect())
        };
        prop_assert_eq!(got, expected);
    }
}

// ---- presence -----------------------------------------------------------

#[test]
fn presence_is_bounded_and_refreshable() {
    let t0 = epoch();
    let ttl = Duration::from_secs(30);
    let mut presence = Presence::new(ttl, 2);
    assert_eq!(presence.refresh_interval(), Duration::from_secs(10));
    assert_eq!(presence.touch("r", "a", t0), Ok(true));
    assert_eq!(presence.touch("r", "b", t0), Ok(true));
    assert_eq!(
        presence.touch("s", "c", t0),
        Err(PresenceFull { max_entries: 2 })
    );
    // A refresh of a present entry succeeds when full, and moves its deadline.
    assert_eq!(
        presence.touch("r", "a", t0 + Duration::from_secs(20)),
        Ok(false)
    );
    assert_eq!(presence.poll_timeout(), Some(t0 + ttl));
    assert_eq!(
        presence.pop_expired(t0 + ttl),
        Some(("r".into(), "b".into()))
    );
    assert_eq!(presence.pop_expired(t0 + ttl), None);
    assert!(presence.leave("r", "a"));
    assert!(!presence.leave("r", "a"));
    assert!(presence.is_empty());
    assert_eq!(presence.rooms().count(), 0);
    assert_eq!(presence.poll_timeout(), None);
}

#[derive(Debug, Clone)]
enum PresenceOp {
    Touch(u8, u8),
    Leave(u8, u8),
    Advance(u8),
}

fn arb_presence_op() -> impl Strategy<Value = PresenceOp> {
    prop_oneof![
        (0u8..3, 0u8..4).prop_map(|(r, m)| PresenceOp::Touch(r, m)),
        (0u8..3, 0u8..4).prop_map(|(r, m)| PresenceOp::Leave(r, m)),
        (0u8..20).prop_map(PresenceOp::Advance),
    ]
}

proptest! {
    /// Against a model of (room, member) → deadline: the same members after
    /// every step, expiries exactly those past their deadline, and
    /// `poll_timeout` the earliest deadline.
    #[test]
    fn presence_matches_the_model(ops in proptest::collection::vec(arb_presence_op(), 0..60)) {
        let ttl = Duration::from_secs(10);
        let mut presence = Presence::new(ttl, 8);
        let mut model: BTreeMap<(String, String), Duration> = BTreeMap::new();
        let mut now = Duration::ZERO;
        let t0 = epoch();
        for op in ops {
            match op {
                PresenceOp::Touch(r, m) => {
                    let key = (format!("r{r}"), format!("m{m}"));
                    let fresh = !model.contains_key(&key);
                    let result = presence.touch(&key.0, &key.1, t0 + now);
                    if fresh && model.len() >= 8 {
                        prop_assert_eq!(result, Err(PresenceFull { max_entries: 8 }));
                    } else {
                        prop_assert_eq!(result, Ok(fresh));
                        model.insert(key, now + ttl);
                    }
                }
                PresenceOp::Leave(r, m) => {
                    let key = (format!("r{r}"), format!("m{m}"));
                    prop_assert_eq!(presence.leave(&key.0, &key.1), model.remove(&key).is_some());
                }
                PresenceOp::Advance(secs) => {
                    now += Duration::from_secs(u64::from(secs));
                    let mut expired = BTreeSet::new();
                    while let Some(key) = presence.pop_expired(t0 + now) {
                        expired.insert(key);
                    }
                    let due: BTreeSet<_> = model
                        .iter()
                        .filter(|(_, deadline)| **deadline <= now)
                        .map(|(key, _)| key.clone())
                        .collect();
                    model.retain(|_, deadline| *deadline > now);
                    prop_assert_eq!(expired, due);
                }
            }
            prop_assert_eq!(presence.len(), model.len());
            prop_assert_eq!(presence.poll_timeout(), model.values().min().map(|d| t0 + *d));
            for room in ["r0", "r1", "r2"] {
                let members: Vec<&str> = presence.members(room).collect();
                let expected: Vec<&str> = model
                    .keys()
                    .filter(|(r, _)| r == room)
                    .map(|(_, m)| m.as_str())
                    .collect();
                prop_assert_eq!(members, expected);
            }
        }
    }
}

// ---- room subscriptions ---------------------------------------------------

/// Takes every command and runs it at once, the way a transport would;
/// the channels subscribed afterwards.
fn run_all<W>(subs: &mut Subscriptions<W>, server: &mut BTreeSet<String>) {
    while let Some(command) = subs.poll_command() {
        match command {
            SubscriptionCommand::Subscribe { room, id } => {
                server.insert(room.clone());
                subs.confirmed(&room, id);
            }
            SubscriptionCommand::Unsubscribe { room } => {
                server.remove(&room);
            }
        }
    }
}

fn released<W>(subs: &mut Subscriptions<W>) -> Vec<(W, Ready)> {
    std::iter::from_fn(|| subs.poll_released()).collect()
}

#[test]
fn the_first_holder_subscribes_and_the_last_unsubscribes() {
    let mut subs: Subscriptions<()> = Subscriptions::new();
    subs.connected();
    assert!(subs.hold("r"));
    assert!(!subs.hold("r"));
    let Some(SubscriptionCommand::Subscribe { room, id }) = subs.poll_command() else {
        panic!("one subscribe");
    };
    assert_eq!(subs.poll_command(), None, "one per room, not per holder");
    assert!(subs.is_held("r") && !subs.is_subscribed("r"));
    subs.confirmed(&room, id);
    assert!(subs.is_subscribed("r"));
    assert!(!subs.release("r"));
    assert_eq!(subs.poll_command(), None);
    assert!(subs.release("r"));
    assert_eq!(
        subs.poll_command(),
        Some(SubscriptionCommand::Unsubscribe { room: "r".into() })
    );
    assert!(!subs.is_held("r"));
    assert!(!subs.release("r"), "releasing a room not held does nothing");
    assert_eq!(subs.poll_command(), None);
}

#[test]
fn a_join_waits_for_the_confirmation_of_its_own_subscription() {
    let mut subs = Subscriptions::new();
    subs.connected();
    subs.hold("r");
    let Some(SubscriptionCommand::Subscribe { id: first, .. }) = subs.poll_command() else {
        panic!("subscribe");
    };
    // Released and held again before the first subscribe was confirmed:
    // the room is unsubscribed, then subscribed anew.
    subs.release("r");
    subs.hold("r");
    subs.wait("r", "join");
    assert_eq!(
        subs.poll_command(),
        Some(SubscriptionCommand::Unsubscribe { room: "r".into() })
    );
    let Some(SubscriptionCommand::Subscribe { id: second, .. }) = subs.poll_command() else {
        panic!("subscribe again");
    };
    assert_ne!(first, second);
    // The first confirmation says nothing of the subscription that counts
    // now: the unsubscribe that follows it ends it.
    subs.confirmed("r", first);
    assert!(released(&mut subs).is_empty());
    subs.confirmed("r", second);
    assert_eq!(released(&mut subs), [("join", Ready::Subscribed)]);
    // Subscribed: a later join goes at once.
    subs.wait("r", "later");
    assert_eq!(released(&mut subs), [("later", Ready::Subscribed)]);
}

#[test]
fn a_subscribe_not_taken_yet_is_withdrawn_rather_than_undone() {
    let mut subs: Subscriptions<()> = Subscriptions::new();
    subs.connected();
    subs.hold("r");
    subs.release("r");
    assert_eq!(subs.poll_command(), None);
}

#[test]
fn waits_end_when_the_connection_breaks_or_the_room_is_left() {
    let mut subs = Subscriptions::new();
    subs.hold("r");
    subs.wait("r", 1);
    assert_eq!(released(&mut subs), [(1, Ready::Down)], "not connected");
    assert_eq!(subs.poll_command(), None, "nothing asked while down");
    subs.connected();
    subs.wait("r", 2);
    subs.disconnected();
    assert_eq!(released(&mut subs), [(2, Ready::Down)]);
    assert_eq!(
        subs.poll_command(),
        None,
        "commands of the old connection dropped"
    );
    subs.connected();
    let mut server = BTreeSet::new();
    subs.wait("r", 3);
    subs.release("r");
    assert_eq!(released(&mut subs), [(3, Ready::Unheld)]);
    subs.wait("r", 4);
    assert_eq!(released(&mut subs), [(4, Ready::Unheld)]);
    run_all(&mut subs, &mut server);
    assert!(server.is_empty());
    // Every held room is subscribed again on a new connection.
    subs.hold("a");
    subs.hold("b");
    run_all(&mut subs, &mut server);
    subs.disconnected();
    server.clear();
    subs.wait("a", 5);
    subs.connected();
    subs.wait("b", 6);
    run_all(&mut subs, &mut server);
    assert_eq!(server, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    assert_eq!(
        released(&mut subs),
        [(5, Ready::Down), (6, Ready::Subscribed)]
    );
}

#[derive(Debug, Clone)]
enum SubsOp {
    Hold(u8),
    Release(u8),
    Wait(u8),
    /// The transport takes the next command (runs it later).
    Take,
    /// The transport runs the oldest command it took.
    Run,
    Disconnect,
    Connect,
}

fn arb_subs_op() -> impl Strategy<Value = SubsOp> {
    prop_oneof![
        3 => (0u8..3).prop_map(SubsOp::Hold),
        3 => (0u8..3).prop_map(SubsOp::Release),
        2 => (0u8..3).prop_map(SubsOp::Wait),
        3 => Just(SubsOp::Take),
        3 => Just(SubsOp::Run),
        1 => Just(SubsOp::Disconnect),
        1 => Just(SubsOp::Connect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Against a transport that takes commands and runs them later, in
    /// order, on one connection: a waiter is released as subscribed only
    /// when the room is held and the server has its channel subscribed;
    /// every waiter is released once; and once the transport caught up,
    /// the server's subscriptions are exactly the rooms with a holder.
    #[test]
    fn subscriptions_follow_the_rooms_held(ops in proptest::collection::vec(arb_subs_op(), 0..80)) {
        let mut subs = Subscriptions::new();
        let mut holders: BTreeMap<String, usize> = BTreeMap::new();
        let mut server: BTreeSet<String> = BTreeSet::new();
        let mut taken: VecDeque<SubscriptionCommand> = VecDeque::new();
        let mut up = false;
        let mut next_waiter = 0u32;
        let mut issued = BTreeSet::new();
        let mut ended: BTreeMap<u32, Ready> = BTreeMap::new();
        // Rooms a waiter was released from as subscribed: their channel
        // must stay subscribed until they are released or the connection
        // breaks.
        let mut promised: BTreeSet<String> = BTreeSet::new();
        let check = |subs: &mut Subscriptions<u32>,
                         holders: &BTreeMap<String, usize>,
                         server: &BTreeSet<String>,
                         ended: &mut BTreeMap<u32, Ready>,
                         promised: &mut BTreeSet<String>|
         -> Result<(), TestCaseError> {
            while let Some((waiter, ready)) = subs.poll_released() {
                prop_assert!(ended.insert(waiter, ready).is_none(), "released twice");
                if ready == Ready::Subscribed {
                    // Released from a room the server delivers: no gap.
                    let room = format!("r{}", waiter % 3);
                    prop_assert!(holders.contains_key(&room));
                    prop_assert!(server.contains(&room), "{} released before its subscription", room);
                    promised.insert(room);
                }
            }
            Ok(())
        };
        for op in ops {
            match op {
                SubsOp::Hold(r) => {
                    let room = format!("r{r}");
                    let count = holders.entry(room.clone()).or_default();
                    *count += 1;
                    prop_assert_eq!(subs.hold(&room), *count == 1);
                }
                SubsOp::Release(r) => {
                    let room = format!("r{r}");
                    let last = match holders.get_mut(&room) {
                        Some(count) if *count == 1 => {
                            holders.remove(&room);
                            promised.remove(&room);
                            true
                        }
                        Some(count) => {
                            *count -= 1;
                            false
                        }
                        None => false,
                    };
                    prop_assert_eq!(subs.release(&room), last);
                }
                SubsOp::Wait(r) => {
                    // Waiter n waits on room n % 3.
                    let waiter = next_waiter * 3 + u32::from(r);
                    next_waiter += 1;
                    issued.insert(waiter);
                    subs.wait(&format!("r{r}"), waiter);
                }
                SubsOp::Take => {
                    if let Some(command) = subs.poll_command() {
                        prop_assert!(up, "no command while down");
                        taken.push_back(command);
                    }
                }
                SubsOp::Run => match taken.pop_front() {
                    Some(SubscriptionCommand::Subscribe { room, id }) => {
                        server.insert(room.clone());
                        subs.confirmed(&room, id);
                    }
                    Some(SubscriptionCommand::Unsubscribe { room }) => {
                        prop_assert!(!promised.contains(&room), "{} unsubscribed under a released join", room);
                        server.remove(&room);
                    }
                    None => {}
                },
                SubsOp::Disconnect => {
                    up = false;
                    server.clear();
                    promised.clear();
                    taken.clear();
                    subs.disconnected();
                }
                SubsOp::Connect => {
                    if !up {
                        up = true;
                        subs.connected();
                    }
                }
            }
            check(&mut subs, &holders, &server, &mut ended, &mut promised)?;
            for room in ["r0", "r1", "r2"] {
                prop_assert_eq!(subs.is_held(room), holders.contains_key(room));
            }
        }
        // The transport catches up.
        if !up {
            subs.connected();
        }
        while let Some(command) = taken.pop_front() {
            match command {
                SubscriptionCommand::Subscribe { room, id } => {
                    server.insert(room.clone());
                    subs.confirmed(&room, id);
                }
                SubscriptionCommand::Unsubscribe { room } => {
                    prop_assert!(!promised.contains(&room), "{} unsubscribed under a released join", room);
                    server.remove(&room);
                }
            }
            check(&mut subs, &holders, &server, &mut ended, &mut promised)?;
        }
        run_all(&mut subs, &mut server);
        check(&mut subs, &holders, &server, &mut ended, &mut promised)?;
        let held: BTreeSet<String> = holders.keys().cloned().collect();
        prop_assert_eq!(&server, &held);
        prop_assert_eq!(subs.rooms().map(str::to_owned).collect::<BTreeSet<_>>(), held);
        for room in subs.rooms().map(str::to_owned).collect::<Vec<_>>() {
            prop_assert!(subs.is_subscribed(&room));
        }
        prop_assert_eq!(ended.keys().copied().collect::<BTreeSet<_>>(), issued);
    }
}
