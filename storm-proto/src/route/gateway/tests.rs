//! Unit tests of the [`Switchboard`], then a model test: random sequences
//! of clients connecting, handshaking (or not), sending, backends going up
//! and down and answering, time passing, with the invariants checked after
//! every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::route::{
    ClientConfig, ClientHandshake, DEFAULT_HANDSHAKE_TIMEOUT, Limits, RouteTable,
    UnknownRoutePolicy,
};

use crate::test_util::epoch as t0;

const WS: BackendId = BackendId(0);
const TCP: BackendId = BackendId(1);

/// Routes `ws` (a WebSocket backend) and `tcp` (a length-prefixed TCP
/// backend), both down.
fn switchboard() -> Switchboard {
    let config = ServerConfig::new(RouteTable::new(["ws", "tcp"]).expect("names"));
    Switchboard::new(
        Arc::new(config),
        vec![
            BackendConfig::new("ws", BackendProtocol::WebSocket),
            BackendConfig::new("tcp", BackendProtocol::Tcp),
        ],
    )
    .expect("valid")
}

fn actions(board: &mut Switchboard) -> Vec<Action> {
    std::iter::from_fn(|| board.poll_action()).collect()
}

fn to_client(client: ClientId, message: impl Into<Message>) -> Action {
    Action::ToClient {
        client,
        message: message.into(),
    }
}

/// Connects `client` and runs its handshake for `routes` at `now`.
fn handshake(board: &mut Switchboard, client: ClientId, routes: &[&str], now: Instant) {
    board
        .handle_client_connect(client, now)
        .expect("new client");
    let config = ClientConfig {
        routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        ..ClientConfig::default()
    };
    let mut machine = ClientHandshake::new(&config, now).expect("client config");
    while !machine.is_ready() {
        let sent: Vec<String> = std::iter::from_fn(|| machine.poll_transmit()).collect();
        assert!(!sent.is_empty(), "the client has something to send");
        for text in sent {
            board
                .handle_client_message(client, Message::from(text), now)
                .expect("known");
            for action in actions(board) {
                let Action::ToClient {
                    client: to,
                    message,
                } = action
                else {
                    panic!("a handshake step is answered: {action:?}");
                };
                assert_eq!(to, client);
                machine
                    .handle_message(now, message.as_bytes())
                    .expect("handshake step");
            }
        }
    }
    assert!(matches!(board.clients[&client], Phase::Ready { .. }));
}

/// A switchboard whose two backends are up, and client 1 past its
/// handshake for both routes.
fn ready() -> (Switchboard, ClientId) {
    let mut board = switchboard();
    board.handle_backend_up(WS).expect("known");
    board.handle_backend_up(TCP).expect("known");
    handshake(&mut board, ClientId(1), &["ws", "tcp"], t0());
    (board, ClientId(1))
}

/// `ROUTENAME=<route>\n<payload>` as a text or binary message.
fn routed(route: &str, payload: &[u8], text: bool) -> Message {
    let mut buf = BytesMut::new();
    envelope::encode(route, payload, &mut buf).expect("route name");
    let bytes = buf.freeze();
    if text {
        Message::Text(Utf8Bytes::try_from_bytes(bytes).expect("text payloads are UTF-8"))
    } else {
        Message::Binary(bytes)
    }
}

/// Sends `message` from `client`: what goes to a backend.
fn forward(board: &mut Switchboard, client: ClientId, message: Message) -> Message {
    board
        .handle_client_message(client, message, t0())
        .expect("known");
    match actions(board).as_slice() {
        [Action::ToBackend { message, .. }] => message.clone(),
        other => panic!("forwarded expected: {other:?}"),
    }
}

/// What `client` gets from `board` now, and nothing else.
fn received(board: &mut Switchboard, client: ClientId) -> Vec<Message> {
    actions(board)
        .into_iter()
        .map(|action| match action {
            Action::ToClient {
                client: to,
                message,
            } if to == client => message,
            other => panic!("only messages to {client}: {other:?}"),
        })
        .collect()
}

/// What a length-prefixed TCP connection delivers for `message`: its
/// bytes, which a framed link always hands over as binary.
fn over_tcp(message: Message) -> Message {
    Message::Binary(message.into_bytes())
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
        let (mut board, client) = ready();
        for (route, backend) in [("ws", WS), ("tcp", TCP)] {
            let sent = routed(route, &payload, text);
            let forwarded = forward(&mut board, client, sent.clone());
            let delivered = if backend == TCP { over_tcp(forwarded) } else { forwarded };
            board.handle_backend_message(backend, delivered).expect("known");
            let received = received(&mut board, client);
            prop_assert_eq!(received.len(), 1, "{}", route);
            prop_assert_eq!(received[0].is_text(), text, "{}", route);
            prop_assert_eq!(received[0].as_bytes(), sent.as_bytes());
        }
        prop_assert_eq!(board.dropped_replies(), 0);
    }
}

#[test]
fn a_tcp_backend_sees_the_kind_in_the_header() {
    let (mut board, client) = ready();
    let forwarded = forward(&mut board, client, routed("tcp", b"{}", false));
    assert_eq!(forwarded.as_bytes(), b"CLIENT=1;binary\n{}");
    let forwarded = forward(&mut board, client, routed("tcp", b"{}", true));
    assert_eq!(forwarded.as_bytes(), b"CLIENT=1\n{}");
    // A WebSocket backend gets no marker: the frame type says it.
    let forwarded = forward(&mut board, client, routed("ws", b"{}", false));
    assert!(!forwarded.is_text());
    assert_eq!(forwarded.as_bytes(), b"CLIENT=1\n{}");
    let forwarded = forward(&mut board, client, routed("ws", b"{}", true));
    assert!(forwarded.is_text());
}

#[test]
fn a_tcp_reply_is_text_unless_marked_binary_or_not_utf8() {
    let (mut board, client) = ready();
    let cases: [(&[u8], &[u8], bool); 4] = [
        (b"CLIENT=1\n", b"ok", true),
        (b"CLIENT=1;binary\n", b"ok", false),
        (b"client=1;BINARY\r\n", b"ok", false),
        // Not UTF-8: binary, marked or not (backends from before the mark).
        (b"CLIENT=1\n", b"\xff", false),
    ];
    for (header, payload, text) in cases {
        let reply = [header, payload].concat();
        board
            .handle_backend_message(TCP, Message::Binary(reply.into()))
            .expect("known");
        let received = received(&mut board, client);
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].is_text(), text, "{received:?}");
        assert_eq!(
            received[0].as_bytes(),
            routed("tcp", payload, false).as_bytes()
        );
    }
    // A WebSocket text frame marked binary is binary too.
    board
        .handle_backend_message(WS, Message::from("CLIENT=1;binary\nok"))
        .expect("known");
    assert!(!received(&mut board, client)[0].is_text());
    assert_eq!(board.dropped_replies(), 0);
}

#[test]
fn a_broken_handshake_is_answered_and_closed() {
    let now = t0();
    let mut board = switchboard();
    let client = ClientId(5);
    let deadline = board.handle_client_connect(client, now).expect("new");
    assert_eq!(deadline, Some(now + DEFAULT_HANDSHAKE_TIMEOUT));
    assert_eq!(board.poll_timeout(), deadline);
    board
        .handle_client_message(client, Message::from("hello"), now)
        .expect("known");
    let out = actions(&mut board);
    assert_eq!(out.len(), 2, "{out:?}");
    let Action::ToClient { message, .. } = &out[0] else {
        panic!("an SMError first: {out:?}");
    };
    let error = envelope::ErrorReply::parse(message.as_bytes()).expect("an SMError");
    assert!(error.route.is_none());
    assert_eq!(
        out[1],
        Action::Close {
            client,
            code: 1008,
            reason: HANDSHAKE_FAILED
        }
    );
    // Nothing more for it: no answer, no deadline.
    assert_eq!(board.poll_timeout(), None);
    board
        .handle_client_message(client, Message::from("again"), now)
        .expect("known");
    board.handle_timeout(now + DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!(actions(&mut board), []);
    assert_eq!(board.client_count(), 1);
}

#[test]
fn an_oversized_handshake_message_closes_with_1009() {
    let now = t0();
    let mut board = switchboard();
    board.handle_client_connect(ClientId(1), now).expect("new");
    let long = "x".repeat(Limits::default().max_message_len + 1);
    board
        .handle_client_message(ClientId(1), Message::from(long), now)
        .expect("known");
    let out = actions(&mut board);
    assert!(
        matches!(
            out.last(),
            Some(Action::Close {
                code: 1009,
                reason: HANDSHAKE_FAILED,
                ..
            })
        ),
        "{out:?}"
    );
}

#[test]
fn a_handshake_still_running_at_its_deadline_fails() {
    let now = t0();
    let mut board = switchboard();
    let slow = ClientId(1);
    let deadline = board
        .handle_client_connect(slow, now)
        .expect("new")
        .expect("a deadline");
    // One that finishes in time loses its deadline.
    handshake(
        &mut board,
        ClientId(2),
        &["ws"],
        now + Duration::from_secs(1),
    );
    assert_eq!(board.poll_timeout(), Some(deadline));
    board.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(actions(&mut board), []);
    board.handle_timeout(deadline);
    let out = actions(&mut board);
    assert_eq!(out.len(), 2, "{out:?}");
    let Action::ToClient { client, message } = &out[0] else {
        panic!("an SMError first: {out:?}");
    };
    assert_eq!(*client, slow);
    assert!(envelope::ErrorReply::parse(message.as_bytes()).is_some());
    assert_eq!(
        out[1],
        Action::Close {
            client: slow,
            code: 1008,
            reason: HANDSHAKE_TIMED_OUT
        }
    );
    assert_eq!(board.poll_timeout(), None);
    assert!(matches!(board.clients[&slow], Phase::Failed));
    assert!(matches!(board.clients[&ClientId(2)], Phase::Ready { .. }));
    // A message at the deadline fails the handshake too.
    let late = ClientId(3);
    let deadline = board
        .handle_client_connect(late, now)
        .expect("new")
        .expect("a deadline");
    board
        .handle_client_message(late, Message::from("{}"), deadline)
        .expect("known");
    assert!(matches!(
        actions(&mut board).last(),
        Some(Action::Close { code: 1008, .. })
    ));
    assert_eq!(board.poll_timeout(), None);
}

#[test]
fn a_handshake_without_timeout_has_no_deadline() {
    let config = ServerConfig {
        handshake_timeout: None,
        ..ServerConfig::new(RouteTable::new(["ws"]).expect("names"))
    };
    let backends = vec![BackendConfig::new("ws", BackendProtocol::WebSocket)];
    let mut board = Switchboard::new(Arc::new(config), backends).expect("valid");
    assert_eq!(board.handle_client_connect(ClientId(1), t0()), Ok(None));
    assert_eq!(board.poll_timeout(), None);
}

#[test]
fn unroutable_messages_are_answered() {
    let (mut board, client) = ready();
    let cases: [(&[u8], &str); 3] = [
        (
            b"no header",
            r#"{"event":"SMError","error":"message has no ROUTENAME= header line"}"#,
        ),
        (
            b"ROUTENAME=video\nhi",
            r#"{"event":"SMError","route":"video","error":"unknown route"}"#,
        ),
        (
            b"ROUTENAME=ACK\nhi",
            r#"{"event":"SMError","error":"bad ROUTENAME header: route name is a reserved handshake word"}"#,
        ),
    ];
    for (sent, answer) in cases {
        board
            .handle_client_message(client, Message::Binary(Bytes::from_static(sent)), t0())
            .expect("known");
        assert_eq!(actions(&mut board), [to_client(client, answer)]);
    }
}

#[test]
fn a_message_for_a_backend_that_is_down_is_answered_unavailable() {
    let (mut board, client) = ready();
    board.handle_backend_down(TCP).expect("known");
    assert!(!board.is_up(TCP) && board.is_up(WS));
    let unavailable = r#"{"event":"SMError","route":"tcp","error":"backend unavailable"}"#;
    board
        .handle_client_message(client, routed("tcp", b"x", true), t0())
        .expect("known");
    assert_eq!(actions(&mut board), [to_client(client, unavailable)]);
    // So is one its connection could not take.
    forward(&mut board, client, routed("ws", b"x", true));
    board.handle_forward_failed(WS, client).expect("known");
    assert_eq!(
        actions(&mut board),
        [to_client(
            client,
            r#"{"event":"SMError","route":"ws","error":"backend unavailable"}"#
        )]
    );
    // A configured route with no backend is never up.
    let config = ServerConfig::new(RouteTable::new(["ws", "spare"]).expect("names"));
    let backends = vec![BackendConfig::new("ws", BackendProtocol::WebSocket)];
    let mut board = Switchboard::new(Arc::new(config), backends).expect("valid");
    handshake(&mut board, client, &["spare"], t0());
    board
        .handle_client_message(client, routed("spare", b"x", true), t0())
        .expect("known");
    assert_eq!(
        actions(&mut board),
        [to_client(
            client,
            r#"{"event":"SMError","route":"spare","error":"backend unavailable"}"#
        )]
    );
}

#[test]
fn a_backend_drop_is_told_to_the_connected_clients_that_used_it() {
    let (mut board, a) = ready();
    let (b, c, d) = (ClientId(2), ClientId(3), ClientId(4));
    for client in [b, c, d] {
        handshake(&mut board, client, &["ws", "tcp"], t0());
    }
    forward(&mut board, a, routed("tcp", b"1", true));
    forward(&mut board, a, routed("tcp", b"2", true));
    forward(&mut board, b, routed("tcp", b"1", true));
    forward(&mut board, c, routed("ws", b"1", true));
    board.handle_client_disconnect(b).expect("known");
    board.handle_backend_down(TCP).expect("known");
    let disconnected = r#"{"event":"SMError","route":"tcp","error":"backend disconnected"}"#;
    assert_eq!(actions(&mut board), [to_client(a, disconnected)]);
    // A new connection starts with no users.
    board.handle_backend_up(TCP).expect("known");
    board.handle_backend_down(TCP).expect("known");
    assert_eq!(actions(&mut board), []);
    assert_eq!(board.dropped_replies(), 0);
}

#[test]
fn backend_messages_reach_the_clients_they_name() {
    let (mut board, a) = ready();
    let (only_ws, handshaking) = (ClientId(2), ClientId(3));
    handshake(&mut board, only_ws, &["ws"], t0());
    board.handle_client_connect(handshaking, t0()).expect("new");
    // A push reaches every ready client that announced the route.
    board
        .handle_backend_message(TCP, Message::Binary("CLIENT=*\ntick".into()))
        .expect("known");
    assert_eq!(actions(&mut board), [to_client(a, "ROUTENAME=tcp\ntick")]);
    board
        .handle_backend_message(WS, Message::from("CLIENT=*\ntick"))
        .expect("known");
    let mut pushed: Vec<ClientId> = actions(&mut board)
        .into_iter()
        .map(|action| match action {
            Action::ToClient { client, message } => {
                assert_eq!(message, Message::from("ROUTENAME=ws\ntick"));
                client
            }
            other => panic!("{other:?}"),
        })
        .collect();
    pushed.sort();
    assert_eq!(pushed, [a, only_ws]);
    // A reply reaches a ready client on any route of the table, announced
    // or not.
    board
        .handle_backend_message(TCP, Message::Binary("CLIENT=2\nok".into()))
        .expect("known");
    assert_eq!(
        actions(&mut board),
        [to_client(only_ws, "ROUTENAME=tcp\nok")]
    );
    // Dropped and counted: for a client still handshaking, for one never
    // connected, without a valid header.
    for dropped in ["CLIENT=3\nok", "CLIENT=99\nok", "ok", "CLIENT=x\nok"] {
        board
            .handle_backend_message(TCP, Message::Binary(dropped.into()))
            .expect("known");
    }
    assert_eq!(actions(&mut board), []);
    assert_eq!(board.dropped_replies(), 4);
}

#[test]
fn a_disconnected_client_is_never_addressed() {
    let (mut board, client) = ready();
    board
        .handle_backend_message(WS, Message::from("CLIENT=1\nqueued"))
        .expect("known");
    board.handle_client_disconnect(client).expect("known");
    assert_eq!(actions(&mut board), []);
    assert_eq!(board.client_count(), 0);
    board
        .handle_backend_message(WS, Message::from("CLIENT=1\nlate"))
        .expect("known");
    assert_eq!(actions(&mut board), []);
    assert_eq!(board.dropped_replies(), 1);
}

#[test]
fn misuse_is_an_error() {
    let (mut board, client) = ready();
    let now = t0();
    let gone = ClientId(9);
    assert_eq!(
        board.handle_client_connect(client, now),
        Err(SwitchboardError::DuplicateClient(client))
    );
    assert_eq!(
        board.handle_client_message(gone, Message::from("x"), now),
        Err(SwitchboardError::UnknownClient(gone))
    );
    assert_eq!(
        board.handle_client_disconnect(gone),
        Err(SwitchboardError::UnknownClient(gone))
    );
    assert_eq!(
        board.handle_forward_failed(WS, gone),
        Err(SwitchboardError::UnknownClient(gone))
    );
    let none = BackendId(2);
    let unknown = Err(SwitchboardError::UnknownBackend(none));
    assert_eq!(board.handle_backend_up(none), unknown);
    assert_eq!(board.handle_backend_down(none), unknown);
    assert_eq!(
        board.handle_backend_message(none, Message::from("CLIENT=1\n")),
        unknown
    );
    assert_eq!(board.handle_forward_failed(none, client), unknown);
    assert!(!board.is_up(none));
    assert_eq!(actions(&mut board), []);
    assert!(
        SwitchboardError::UnknownBackend(none)
            .to_string()
            .contains("backend#2")
    );
    assert!(
        SwitchboardError::UnknownClient(gone)
            .to_string()
            .contains("client#9")
    );
}

#[test]
fn setup_errors() {
    let table = || RouteTable::new(["a", "b"]).expect("names");
    let new = |config: ServerConfig, routes: &[&str]| {
        let backends = routes
            .iter()
            .map(|r| BackendConfig::new(*r, BackendProtocol::Tcp))
            .collect();
        Switchboard::new(Arc::new(config), backends).map(drop)
    };
    assert_eq!(new(ServerConfig::new(table()), &["a", "b"]), Ok(()));
    assert_eq!(
        new(ServerConfig::new(table()), &["a", "c"]),
        Err(SwitchboardError::UnknownRoute("c".to_owned()))
    );
    assert_eq!(
        new(ServerConfig::new(table()), &["a", "a"]),
        Err(SwitchboardError::DuplicateBackend("a".to_owned()))
    );
    let bad_limits = ServerConfig {
        limits: Limits {
            max_route_name_len: 0,
            ..Limits::default()
        },
        ..ServerConfig::new(table())
    };
    assert!(matches!(
        new(bad_limits, &["a"]),
        Err(SwitchboardError::Config(ConfigError::InvalidLimits(_)))
    ));
    // Routes accepted on the client's word have no backend to go to.
    let accept = ServerConfig {
        unknown_routes: UnknownRoutePolicy::Accept,
        ..ServerConfig::new(table())
    };
    assert_eq!(new(accept, &["a"]), Ok(()));
}

// ---- the model test ----

const ROUTES: [&str; 2] = ["ws", "tcp"];

#[derive(Debug, Clone)]
enum Op {
    /// A client connects and means to use these routes (a bit each for
    /// `ws`, `tcp` and `video`, which is not in the table).
    Connect {
        routes: u8,
    },
    /// A client still handshaking, if any, sends its next handshake
    /// message, or all it has.
    Step {
        client: usize,
        all: bool,
    },
    /// A client sends bytes that are neither a handshake message nor
    /// routed.
    Garbage {
        client: usize,
        bytes: Vec<u8>,
    },
    /// A client sends a message: to `ws`, `tcp`, `video` (unknown) or
    /// without a route line.
    Send {
        client: usize,
        /// Any client, else a ready one if there is one.
        any: bool,
        route: usize,
        text: bool,
        payload: Vec<u8>,
    },
    /// The connection of a client's last forward could not take it.
    ForwardFailed {
        client: usize,
    },
    Disconnect {
        client: usize,
    },
    Up {
        backend: usize,
    },
    Down {
        backend: usize,
    },
    /// A backend sends a message: to a client by index (`0..6` a ready one
    /// if any, `6..8` any), to all (8), to a client id never used (9), or
    /// without a valid header (10).
    Reply {
        backend: usize,
        target: usize,
        marked: bool,
        text: bool,
        payload: Vec<u8>,
    },
    Advance {
        ms: u64,
    },
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..16),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8).prop_map(|routes| Op::Connect { routes }),
        6 => (0usize..8, proptest::bool::weighted(0.7)).prop_map(|(client, all)| Op::Step { client, all }),
        1 => (0usize..8, proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(client, bytes)| Op::Garbage { client, bytes }),
        8 => (0usize..8, proptest::bool::weighted(0.1), 0usize..4, any::<bool>(), payload())
            .prop_map(|(client, any, route, text, payload)| Op::Send { client, any, route, text, payload }),
        1 => (0usize..8).prop_map(|client| Op::ForwardFailed { client }),
        1 => (0usize..8).prop_map(|client| Op::Disconnect { client }),
        2 => (0usize..2).prop_map(|backend| Op::Up { backend }),
        1 => (0usize..2).prop_map(|backend| Op::Down { backend }),
        5 => (0usize..2, 0usize..11, any::<bool>(), any::<bool>(), payload()).prop_map(
            |(backend, target, marked, text, payload)| Op::Reply { backend, target, marked, text, payload }
        ),
        2 => (0u64..2500).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A client as the model sees it.
#[derive(Debug)]
struct Client {
    id: ClientId,
    connected: bool,
    phase: Expect,
    /// The backend of its last forward.
    last_forward: Option<BackendId>,
}

#[derive(Debug)]
enum Expect {
    /// Handshaking with this client-side machine; messages it has still to
    /// send; the server's deadline.
    Handshake {
        machine: Box<ClientHandshake>,
        outbox: Vec<String>,
        deadline: Instant,
    },
    /// Ready, with the routes negotiated.
    Ready(Vec<String>),
    /// Closed by the switchboard.
    Closed,
}

struct Model {
    board: Switchboard,
    clients: Vec<Client>,
    up: [bool; 2],
    /// Per backend, the clients that sent it a message while it was up.
    users: [BTreeSet<ClientId>; 2],
    dropped: u64,
    now: Instant,
}

impl Model {
    fn new() -> Self {
        Self {
            board: {
                let mut board = switchboard();
                board.handle_backend_up(WS).expect("known");
                board.handle_backend_up(TCP).expect("known");
                board
            },
            clients: Vec::new(),
            up: [true; 2],
            users: [BTreeSet::new(), BTreeSet::new()],
            dropped: 0,
            now: t0(),
        }
    }

    /// Client `i` (modulo their number), connected or not.
    fn client(&self, i: usize) -> Option<usize> {
        (!self.clients.is_empty()).then(|| i % self.clients.len())
    }

    /// Ready client `i` (modulo their number), or any if none is ready.
    fn ready(&self, i: usize) -> Option<usize> {
        self.pick(i, |phase| matches!(phase, Expect::Ready(_)))
    }

    /// Connected client `i` (modulo their number) whose phase is `such`,
    /// or any if there is none.
    fn pick(&self, i: usize, such: impl Fn(&Expect) -> bool) -> Option<usize> {
        let such: Vec<usize> = (0..self.clients.len())
            .filter(|&c| self.clients[c].connected && such(&self.clients[c].phase))
            .collect();
        match such.len() {
            0 => self.client(i),
            n => Some(such[i % n]),
        }
    }

    /// Drains the actions, checking that each addresses a connected client
    /// that was not closed before it, or an up backend with a ready client.
    fn drain(&mut self) -> Vec<Action> {
        let out = actions(&mut self.board);
        let mut closed = BTreeSet::new();
        for action in &out {
            match action {
                Action::ToClient { client, .. } | Action::Close { client, .. } => {
                    let model = self.clients.iter().find(|c| c.id == *client);
                    let model = model.expect("an action for a client never connected");
                    assert!(model.connected, "an action for {client}, disconnected");
                    assert!(
                        !matches!(model.phase, Expect::Closed) && !closed.contains(client),
                        "an action for {client} after its close: {action:?}"
                    );
                    if let Action::Close { .. } = action {
                        closed.insert(*client);
                    }
                }
                Action::ToBackend {
                    backend, client, ..
                } => {
                    assert!(self.up[backend.0], "a forward to {backend}, down");
                    let model = self.clients.iter().find(|c| c.id == *client);
                    assert!(
                        matches!(model, Some(c) if c.connected && matches!(c.phase, Expect::Ready(_))),
                        "a forward from {client}, not ready"
                    );
                }
            }
        }
        for client in &mut self.clients {
            if closed.contains(&client.id) {
                client.phase = Expect::Closed;
            }
        }
        out
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Connect { routes } => self.connect(routes),
            Op::Step { client, all } => {
                let handshaking = |phase: &Expect| matches!(phase, Expect::Handshake { .. });
                if let Some(i) = self.pick(client, handshaking) {
                    while self.step(i) && all {}
                }
            }
            Op::Garbage { client, bytes } => {
                if let Some(i) = self.client(client) {
                    self.garbage(i, bytes);
                }
            }
            Op::Send {
                client,
                any,
                route,
                text,
                payload,
            } => {
                let pick = if any {
                    self.client(client)
                } else {
                    self.ready(client)
                };
                if let Some(i) = pick {
                    self.send(i, route, text, &payload);
                }
            }
            Op::ForwardFailed { client } => {
                if let Some(i) = self.client(client) {
                    self.forward_failed(i);
                }
            }
            Op::Disconnect { client } => {
                if let Some(i) = self.client(client) {
                    let c = &mut self.clients[i];
                    let result = self.board.handle_client_disconnect(c.id);
                    if c.connected {
                        assert_eq!(result, Ok(()));
                        c.connected = false;
                        for users in &mut self.users {
                            users.remove(&c.id);
                        }
                    } else {
                        assert_eq!(result, Err(SwitchboardError::UnknownClient(c.id)));
                    }
                    assert_eq!(self.drain(), []);
                }
            }
            Op::Up { backend } => {
                self.board
                    .handle_backend_up(BackendId(backend))
                    .expect("known");
                self.up[backend] = true;
                assert_eq!(self.drain(), []);
            }
            Op::Down { backend } => self.down(backend),
            Op::Reply {
                backend,
                target,
                marked,
                text,
                payload,
            } => self.reply(backend, target, marked, text, &payload),
            Op::Advance { ms } => self.advance(ms),
        }
        self.check();
    }

    fn connect(&mut self, routes: u8) {
        let id = ClientId(self.clients.len() as u64 + 1);
        let deadline = self
            .board
            .handle_client_connect(id, self.now)
            .expect("a new id");
        assert_eq!(deadline, Some(self.now + DEFAULT_HANDSHAKE_TIMEOUT));
        assert_eq!(self.drain(), []);
        let config = ClientConfig {
            routes: ["ws", "tcp", "video"]
                .iter()
                .enumerate()
                .filter(|(bit, _)| routes & (1 << bit) != 0)
                .map(|(_, r)| (*r).to_owned())
                .collect(),
            ..ClientConfig::default()
        };
        let mut machine = ClientHandshake::new(&config, self.now).expect("valid");
        let outbox = std::iter::from_fn(|| machine.poll_transmit()).collect();
        self.clients.push(Client {
            id,
            connected: true,
            phase: Expect::Handshake {
                machine: Box::new(machine),
                outbox,
                deadline: self.now + DEFAULT_HANDSHAKE_TIMEOUT,
            },
            last_forward: None,
        });
    }

    /// The client's next handshake message: answered with handshake texts,
    /// ready once the end is acknowledged, closed only past its deadline.
    /// Whether it had one to send.
    fn step(&mut self, i: usize) -> bool {
        let now = self.now;
        let id = self.clients[i].id;
        if !self.clients[i].connected {
            return false;
        }
        let Expect::Handshake {
            outbox, deadline, ..
        } = &mut self.clients[i].phase
        else {
            return false;
        };
        if outbox.is_empty() {
            return false;
        }
        let late = now >= *deadline;
        let text = outbox.remove(0);
        self.board
            .handle_client_message(id, Message::from(text), now)
            .expect("connected");
        let out = self.drain();
        let Expect::Handshake {
            machine, outbox, ..
        } = &mut self.clients[i].phase
        else {
            // Closed in `drain`: only a message past its deadline fails.
            assert!(late, "{id} closed in time: {out:?}");
            assert!(matches!(
                out.last(),
                Some(Action::Close {
                    code: 1008,
                    reason: HANDSHAKE_FAILED,
                    ..
                })
            ));
            return true;
        };
        assert!(!late, "{id} answered past its deadline: {out:?}");
        for action in out {
            let Action::ToClient { client, message } = action else {
                panic!("a handshake message is only answered: {action:?}");
            };
            assert_eq!(client, id);
            assert!(message.is_text(), "handshake answers are text");
            machine
                .handle_message(now, message.as_bytes())
                .expect("a valid answer");
        }
        outbox.extend(std::iter::from_fn(|| machine.poll_transmit()));
        if let Some(Event::Ready(negotiated)) = machine.poll_event() {
            self.clients[i].phase = Expect::Ready(negotiated.routes().to_vec());
        }
        true
    }

    fn garbage(&mut self, i: usize, bytes: Vec<u8>) {
        let id = self.clients[i].id;
        // Never a handshake message, never a route line.
        let message = Message::Binary([b"\x00".as_slice(), &bytes].concat().into());
        let result = self.board.handle_client_message(id, message, self.now);
        if !self.clients[i].connected {
            assert_eq!(result, Err(SwitchboardError::UnknownClient(id)));
            return;
        }
        let phase = &self.clients[i].phase;
        let (handshaking, ready) = (
            matches!(phase, Expect::Handshake { .. }),
            matches!(phase, Expect::Ready(_)),
        );
        let out = self.drain();
        if handshaking {
            assert_eq!(out.len(), 2, "{out:?}");
            assert!(matches!(
                out[1],
                Action::Close {
                    code: 1008,
                    reason: HANDSHAKE_FAILED,
                    ..
                }
            ));
        } else if ready {
            assert_eq!(
                out,
                [to_client(
                    id,
                    r#"{"event":"SMError","error":"message has no ROUTENAME= header line"}"#
                )]
            );
        } else {
            assert_eq!(out, []);
        }
    }

    fn send(&mut self, i: usize, route: usize, text: bool, payload: &[u8]) {
        let id = self.clients[i].id;
        let payload = if text {
            String::from_utf8_lossy(payload).into_owned().into_bytes()
        } else {
            payload.to_vec()
        };
        let message = match route {
            0 | 1 => routed(ROUTES[route], &payload, text),
            2 => routed("video", &payload, text),
            _ => Message::Binary([b"x".as_slice(), &payload].concat().into()),
        };
        let result = self.board.handle_client_message(id, message, self.now);
        if !self.clients[i].connected {
            assert_eq!(result, Err(SwitchboardError::UnknownClient(id)));
            return;
        }
        let ready = matches!(self.clients[i].phase, Expect::Ready(_));
        let handshaking = matches!(self.clients[i].phase, Expect::Handshake { .. });
        let out = self.drain();
        if handshaking {
            // Route traffic during the handshake breaks it.
            assert!(matches!(out.last(), Some(Action::Close { .. })), "{out:?}");
            return;
        }
        if !ready {
            assert_eq!(out, []);
            return;
        }
        let expected = match route {
            0 | 1 if self.up[route] => {
                self.users[route].insert(id);
                self.clients[i].last_forward = Some(BackendId(route));
                let tcp = route == 1;
                let marker = if tcp && !text { ";binary" } else { "" };
                let mut bytes = format!("CLIENT={}{marker}\n", id.0).into_bytes();
                bytes.extend_from_slice(&payload);
                let [
                    Action::ToBackend {
                        backend,
                        client,
                        message,
                    },
                ] = out.as_slice()
                else {
                    panic!("a forward expected: {out:?}");
                };
                assert_eq!((*backend, *client), (BackendId(route), id));
                assert_eq!(message.as_bytes(), bytes.as_slice());
                // Text stays text on a WebSocket; TCP has only bytes.
                assert_eq!(message.is_text(), text && !tcp);
                return;
            }
            0 | 1 => backend::error_reply(ROUTES[route], BACKEND_UNAVAILABLE),
            2 => r#"{"event":"SMError","route":"video","error":"unknown route"}"#.to_owned(),
            _ => {
                r#"{"event":"SMError","error":"message has no ROUTENAME= header line"}"#.to_owned()
            }
        };
        assert_eq!(out, [to_client(id, expected)]);
    }

    fn forward_failed(&mut self, i: usize) {
        let (id, connected) = (self.clients[i].id, self.clients[i].connected);
        let Some(backend) = self.clients[i].last_forward else {
            return;
        };
        let result = self.board.handle_forward_failed(backend, id);
        let out = self.drain();
        if !connected {
            assert_eq!(result, Err(SwitchboardError::UnknownClient(id)));
            return;
        }
        if matches!(self.clients[i].phase, Expect::Closed) {
            return;
        }
        assert_eq!(
            out,
            [to_client(
                id,
                backend::error_reply(ROUTES[backend.0], BACKEND_UNAVAILABLE)
            )]
        );
    }

    fn down(&mut self, b: usize) {
        self.board.handle_backend_down(BackendId(b)).expect("known");
        self.up[b] = false;
        let users = std::mem::take(&mut self.users[b]);
        let notice = Message::from(backend::error_reply(ROUTES[b], BACKEND_DISCONNECTED));
        let told: BTreeSet<ClientId> = self
            .drain()
            .into_iter()
            .map(|action| match action {
                Action::ToClient { client, message } if message == notice => client,
                other => panic!("only disconnect notices: {other:?}"),
            })
            .collect();
        // Exactly the connected clients that used it (every user is
        // connected: disconnecting removes it).
        assert_eq!(told, users);
    }

    fn reply(&mut self, b: usize, target: usize, marked: bool, text: bool, payload: &[u8]) {
        let marker = if marked { ";binary" } else { "" };
        let (header, to) = match target {
            0..8 => match if target < 6 {
                self.ready(target)
            } else {
                self.client(target)
            } {
                Some(i) => {
                    let id = self.clients[i].id;
                    (format!("CLIENT={}{marker}\n", id.0), Some(Some(i)))
                }
                None => ("CLIENT=999\n".to_owned(), Some(None)),
            },
            8 => (format!("CLIENT=*{marker}\n"), None),
            9 => ("CLIENT=999\n".to_owned(), Some(None)),
            _ => ("CLIENT=?\n".to_owned(), Some(None)),
        };
        let bytes = [header.as_bytes(), payload].concat();
        let utf8 = std::str::from_utf8(payload).is_ok();
        let ws = b == 0;
        let message = match String::from_utf8(bytes) {
            Ok(s) if ws && text => Message::from(s),
            Ok(s) => Message::Binary(s.into_bytes().into()),
            Err(e) => Message::Binary(e.into_bytes().into()),
        };
        let sent_text = message.is_text();
        self.board
            .handle_backend_message(BackendId(b), message)
            .expect("known");
        let routed_bytes = routed(ROUTES[b], payload, false).into_bytes();
        // Unmarked, the kind is the frame's on a WebSocket and text on TCP.
        let expect_text = (!ws || sent_text) && !marked && utf8;
        let out = self.drain();
        let recipients: BTreeSet<ClientId> = out
            .iter()
            .map(|action| match action {
                Action::ToClient { client, message } => {
                    assert_eq!(message.as_bytes(), &routed_bytes[..]);
                    assert_eq!(message.is_text(), expect_text, "text stays text");
                    *client
                }
                other => panic!("only replies: {other:?}"),
            })
            .collect();
        assert_eq!(recipients.len(), out.len(), "one copy per client");
        let expected: BTreeSet<ClientId> = match to {
            // A push: every ready client that negotiated the route.
            None => self
                .clients
                .iter()
                .filter(|c| c.connected)
                .filter(
                    |c| matches!(&c.phase, Expect::Ready(r) if r.iter().any(|r| r == ROUTES[b])),
                )
                .map(|c| c.id)
                .collect(),
            Some(Some(i)) => {
                let c = &self.clients[i];
                if c.connected && matches!(c.phase, Expect::Ready(_)) {
                    BTreeSet::from([c.id])
                } else {
                    BTreeSet::new()
                }
            }
            Some(None) => BTreeSet::new(),
        };
        if to.is_some() && expected.is_empty() {
            self.dropped += 1;
        }
        assert_eq!(recipients, expected);
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        let now = self.now;
        let due = self.board.poll_timeout().is_some_and(|t| t <= now);
        self.board.handle_timeout(now);
        let out = self.drain();
        let closed: BTreeSet<ClientId> = out
            .iter()
            .filter_map(|action| match action {
                Action::Close {
                    client,
                    code: 1008,
                    reason: HANDSHAKE_TIMED_OUT,
                } => Some(*client),
                Action::ToClient { .. } => None,
                other => panic!("only handshake timeouts: {other:?}"),
            })
            .collect();
        assert_eq!(out.len(), 2 * closed.len(), "an SMError before each close");
        assert_eq!(due, !closed.is_empty());
        assert!(
            self.board.poll_timeout().is_none_or(|t| t > now),
            "an expired deadline survived handle_timeout"
        );
        // Exactly the handshakes past their deadline. (`drain` marked them
        // closed.)
        for client in &self.clients {
            if closed.contains(&client.id) {
                continue;
            }
            if let Expect::Handshake { deadline, .. } = &client.phase {
                assert!(
                    !client.connected || *deadline > now,
                    "{} not timed out",
                    client.id
                );
            }
        }
    }

    /// The switchboard's state agrees with the model's.
    fn check(&self) {
        let connected: BTreeMap<ClientId, &Expect> = self
            .clients
            .iter()
            .filter(|c| c.connected)
            .map(|c| (c.id, &c.phase))
            .collect();
        assert_eq!(self.board.client_count(), connected.len());
        let mut deadlines = BTreeSet::new();
        for (id, expect) in &connected {
            match (&self.board.clients[id], expect) {
                (Phase::Handshake { deadline, .. }, Expect::Handshake { deadline: d, .. }) => {
                    assert_eq!(*deadline, Some(*d));
                    deadlines.insert((*d, *id));
                }
                (Phase::Ready { negotiated, .. }, Expect::Ready(routes)) => {
                    assert_eq!(negotiated.routes(), routes.as_slice());
                }
                (Phase::Failed, Expect::Closed) => {}
                (phase, expect) => panic!("{id} is {phase:?}, expected {expect:?}"),
            }
        }
        assert_eq!(
            self.board.deadlines, deadlines,
            "one deadline per handshake"
        );
        for b in 0..2 {
            assert_eq!(self.board.is_up(BackendId(b)), self.up[b]);
            let users: BTreeSet<ClientId> = self.board.backends[b].users.iter().copied().collect();
            assert_eq!(users, self.users[b], "users of {b}");
        }
        assert_eq!(self.board.dropped_replies(), self.dropped);
        assert!(self.board.actions.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Under any sequence of inputs every action addresses a connected
    /// client not yet closed (or an up backend, from a ready client); each
    /// client's phase is what its handshake says; a backend drop is told to
    /// exactly the connected clients that used the connection; replies and
    /// pushes reach exactly the clients they name, in the kind they were
    /// sent; every message that goes nowhere is counted.
    #[test]
    fn the_switchboard_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..100)) {
        let mut model = Model::new();
        for op in ops {
            model.apply(op);
        }
    }
}
