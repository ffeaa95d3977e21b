//! The gateway's core without I/O: sessions are real [`Peer`]s whose
//! outboxes the tests read, messages go in through the core's entry points
//! as the adapters would call them.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use storm_host::options::{ClientOptions, Framing};
use storm_host::peer::Peer;
use storm_host::setup::ClientCore;
use storm_proto::Message;
use storm_proto::route::{ClientConfig, ClientHandshake, envelope};

use super::{Core, GatewayConfig, GatewayOptions, Step};

/// A WebSocket route `ws` and a length-prefixed TCP route `tcp`.
const ROUTES: &str = "[ws]\nname = ws\nport = 1\nprotocol = ws\n\n\
                      [tcp]\nname = tcp\nport = 2\nprotocol = tcp\n";

/// A core whose two backends are up, and one client past its handshake.
struct Fixture {
    core: Core<Arc<Peer>>,
    client: Peer,
}

impl Fixture {
    fn new() -> Self {
        let config = GatewayConfig::parse(ROUTES).expect("routes parse");
        let core = Core::new(config, GatewayOptions::default()).expect("core");
        let sessions = ClientCore::new(&ClientOptions::default(), 0, Instant::now()).expect("hub");
        let peer = || {
            let framer = Framing::LengthPrefix.build().expect("framer");
            let protocol = storm_host::link::Protocol::Framed(framer);
            let remote = ([127, 0, 0, 1], 1).into();
            sessions
                .peer(protocol, remote, Instant::now())
                .expect("peer")
                .0
        };
        for route in ["ws", "tcp"] {
            core.backend_up(route, &Arc::new(peer()));
        }
        let client = peer();
        let fixture = Self { core, client };
        fixture.handshake();
        fixture
    }

    fn id(&self) -> u64 {
        self.client.id().get()
    }

    /// Runs the route handshake for both routes.
    fn handshake(&self) {
        let config = ClientConfig {
            routes: vec!["ws".to_owned(), "tcp".to_owned()],
            ..ClientConfig::default()
        };
        let mut machine = ClientHandshake::new(&config, Instant::now()).expect("client config");
        self.core.client_connected(&self.client);
        while machine.poll_event().is_none() {
            let sent: Vec<String> = std::iter::from_fn(|| machine.poll_transmit()).collect();
            assert!(!sent.is_empty(), "the client has something to send");
            for text in sent {
                let Step::Answer { out, close: None } =
                    self.core.client_message(self.id(), Message::from(text))
                else {
                    panic!("a handshake step is answered");
                };
                for reply in out {
                    machine
                        .handle_message(Instant::now(), reply.as_bytes())
                        .expect("handshake step");
                }
            }
        }
    }

    /// Sends `message` from the client: what the gateway forwards.
    fn forward(&self, message: Message) -> Message {
        match self.core.client_message(self.id(), message) {
            Step::Forward { message, .. } => message,
            Step::Answer { out, .. } => panic!("forwarded expected, answered {out:?}"),
        }
    }

    /// The messages queued to the client.
    fn received(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let drained = self.client.outbox().drain_into(&mut out, usize::MAX);
        assert!(drained.close.is_none(), "the client is not closed");
        out
    }
}

/// What a length-prefixed TCP connection delivers for `message`: its
/// bytes, which a framed link always hands over as binary.
fn over_tcp(message: Message) -> Message {
    Message::Binary(message.into_bytes())
}

/// `ROUTENAME=<route>\n<payload>` as a text or binary message.
fn routed(route: &str, payload: &[u8], text: bool) -> Message {
    let mut buf = BytesMut::new();
    envelope::encode(route, payload, &mut buf).expect("route name");
    let bytes = buf.freeze();
    if text {
        let text = String::from_utf8(bytes.to_vec()).expect("text payloads are UTF-8");
        Message::from(text)
    } else {
        Message::Binary(bytes)
    }
}

/// A client message (text, or binary with any bytes, UTF-8 or not).
fn client_message() -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        any::<String>().prop_map(|text| (text.into_bytes(), true)),
        any::<String>().prop_map(|text| (text.into_bytes(), false)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| (bytes, false)),
    ]
}

proptest! {
    /// Through a backend that echoes whole messages, of either kind, the
    /// client gets back its payload in the kind it sent: text stays text
    /// and binary stays binary, valid UTF-8 or not.
    #[test]
    fn echoed_messages_keep_their_kind((payload, text) in client_message()) {
        let fixture = Fixture::new();
        for route in ["ws", "tcp"] {
            let sent = routed(route, &payload, text);
            let forwarded = fixture.forward(sent.clone());
            let delivered = if route == "tcp" { over_tcp(forwarded) } else { forwarded };
            fixture.core.backend_message(route, delivered);
            let received = fixture.received();
            prop_assert_eq!(received.len(), 1, "{}", route);
            prop_assert_eq!(received[0].is_text(), text, "{}", route);
            prop_assert_eq!(received[0].as_bytes(), sent.as_bytes());
        }
        prop_assert_eq!(fixture.core.dropped_replies(), 0);
    }
}

#[test]
fn a_tcp_backend_sees_the_kind_in_the_header() {
    let fixture = Fixture::new();
    let id = fixture.id();
    let forwarded = fixture.forward(routed("tcp", b"{}", false));
    assert_eq!(
        forwarded.as_bytes(),
        format!("CLIENT={id};binary\n{{}}").as_bytes()
    );
    let forwarded = fixture.forward(routed("tcp", b"{}", true));
    assert_eq!(
        forwarded.as_bytes(),
        format!("CLIENT={id}\n{{}}").as_bytes()
    );
    // A WebSocket backend gets no marker: the frame type says it.
    let forwarded = fixture.forward(routed("ws", b"{}", false));
    assert!(!forwarded.is_text());
    assert_eq!(
        forwarded.as_bytes(),
        format!("CLIENT={id}\n{{}}").as_bytes()
    );
}

#[test]
fn a_tcp_reply_is_text_unless_marked_binary_or_not_utf8() {
    let fixture = Fixture::new();
    let id = fixture.id();
    let cases: [(String, &[u8], bool); 4] = [
        (format!("CLIENT={id}\n"), b"ok", true),
        (format!("CLIENT={id};binary\n"), b"ok", false),
        (format!("client={id};BINARY\r\n"), b"ok", false),
        // Not UTF-8: binary, marked or not (backends from before the mark).
        (format!("CLIENT={id}\n"), b"\xff", false),
    ];
    for (header, payload, text) in cases {
        let mut reply = header.into_bytes();
        reply.extend_from_slice(payload);
        fixture
            .core
            .backend_message("tcp", Message::Binary(Bytes::from(reply)));
        let received = fixture.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].is_text(), text, "{received:?}");
        assert_eq!(
            received[0].as_bytes(),
            routed("tcp", payload, false).as_bytes()
        );
    }
    // A WebSocket text frame marked binary is binary too.
    fixture
        .core
        .backend_message("ws", Message::from(format!("CLIENT={id};binary\nok")));
    assert!(!fixture.received()[0].is_text());
    assert_eq!(fixture.core.dropped_replies(), 0);
}
