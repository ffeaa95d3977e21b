//! Route-addressed messages: round trips and totality of the decoder.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use storm_proto::route::envelope::{self, EnvelopeError};
use storm_proto::route::{
    MAX_ROUTE_NAME_LEN_LIMIT, NameError, Negotiated, RouteError, RouteTable, Router, ServerConfig,
    validate_route_name,
};

fn route_name() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_.-]{1,40}", "[^\\p{Cc}]{1,40}"].prop_filter("valid", |n| {
        validate_route_name(n, MAX_ROUTE_NAME_LEN_LIMIT).is_ok()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// encode → decode gives back the name and the payload, for binary and
    /// text messages, and the payload is a zero-copy slice.
    #[test]
    fn round_trip(name in route_name(), payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut out = BytesMut::new();
        envelope::encode(&name, &payload, &mut out).unwrap();
        let msg = out.freeze();
        let decoded = envelope::decode(&msg, name.len()).unwrap();
        prop_assert_eq!(decoded.route, name.as_str());
        prop_assert_eq!(decoded.payload, &payload[..]);
        let sliced = decoded.payload_bytes(&msg);
        prop_assert_eq!(&sliced[..], &payload[..]);
        // One byte less of name limit: refused as too long.
        let too_long = envelope::decode(&msg, name.len() - 1);
        prop_assert!(
            matches!(too_long, Err(EnvelopeError::InvalidRouteName(NameError::TooLong { .. }))),
            "{:?}",
            too_long
        );
    }

    #[test]
    fn text_round_trip(name in route_name(), payload in "\\PC{0,100}") {
        let msg = envelope::encode_text(&name, &payload).unwrap();
        let decoded = envelope::decode_text(&msg, 128).unwrap();
        prop_assert_eq!(decoded.route, name.as_str());
        prop_assert_eq!(decoded.payload, payload.as_str());
    }

    /// Any bytes decode to a valid name and a suffix of the input, or a
    /// typed error; never a panic.
    #[test]
    fn decode_is_total(
        prefix in prop_oneof![Just(b"ROUTENAME=".to_vec()), Just(b"routename=".to_vec()), Just(Vec::new())],
        rest in prop::collection::vec(any::<u8>(), 0..200),
        max in 1usize..64,
    ) {
        let msg = [prefix, rest].concat();
        match envelope::decode(&msg, max) {
            Ok(a) => {
                prop_assert!(validate_route_name(a.route, max).is_ok());
                prop_assert!(msg.ends_with(a.payload));
                prop_assert_eq!(a.header_len + a.payload.len(), msg.len());
            }
            Err(EnvelopeError::MissingHeader | EnvelopeError::InvalidRouteName(_)) => {}
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// The router routes exactly the table plus the negotiated routes.
    #[test]
    fn router_resolves_exactly_known_routes(
        table in prop::collection::vec(route_name(), 0..6),
        name in route_name(),
        payload in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let config = Arc::new(ServerConfig {
            routes: RouteTable::new(table.iter().cloned()).unwrap(),
            ..ServerConfig::default()
        });
        let router = Router::new(config, &Negotiated::default());
        let mut msg = BytesMut::new();
        envelope::encode(&name, &payload, &mut msg).unwrap();
        match router.resolve(&msg) {
            Ok(a) => {
                prop_assert!(table.contains(&name));
                prop_assert_eq!(a.payload, &payload[..]);
            }
            Err(RouteError::UnknownRoute(route)) => {
                prop_assert!(!table.contains(&name));
                prop_assert_eq!(route, name);
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

#[test]
fn payload_bytes_shares_the_buffer() {
    let msg = Bytes::from(envelope::encode_text("r", "payload").unwrap());
    let decoded = envelope::decode(&msg, 8).unwrap();
    let payload = decoded.payload_bytes(&msg);
    assert_eq!(payload.as_ptr(), msg[decoded.header_len..].as_ptr());
}
