//! The scenarios, written once. Pair scenarios are generic over the server
//! adapter `S` and the client adapter `C`; `server_*` scenarios face a
//! server with hand-written [`raw`] peers, `client_*` ones a
//! client with a hand-written server.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use storm_host::hub::{CloseKind, Middleware, MiddlewareChain, SendOutcome, SessionId};
use storm_host::link::CloseReason;
use storm_host::options::{TlsClientOptions, TlsServerOptions, WsOptions};
use storm_host::setup::{Decision, UpgradeInfo, UpgradeResponse};
use storm_proto::Message;
use storm_proto::backpressure::SlowConsumerPolicy;
use storm_proto::framing::{DelimiterConfig, Framing, FramingError, LengthPrefixConfig, RawConfig};
use storm_proto::heartbeat::HeartbeatConfig;
use storm_proto::reconnect::BackoffConfig;
use storm_proto::ws::{self, CloseCode, ProtocolError};

use super::raw::{self, RawWs, RawWsServer, opcode};
use super::{
    Adapter, Client, ClientSpec, Event, OnMessage, Protocol, Server, ServerSpec, UpgradeSpec, WAIT,
    eventually,
};

/// A heartbeat fast enough for tests: a ping every 20 ms, dead after 2
/// unanswered; for peers that never answer.
fn fast_heartbeat() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .with_interval(Duration::from_millis(20))
        .with_max_missed(2)
}

/// A ping every 25 ms, dead only after 8 unanswered (200 ms): for peers
/// that do answer, on a loaded CI machine where a thread may not run for
/// tens of milliseconds.
fn tolerant_heartbeat() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .with_interval(Duration::from_millis(25))
        .with_max_missed(8)
}

fn ws_with(spec: &mut ClientSpec, edit: impl FnOnce(&mut WsOptions)) {
    if let Protocol::Ws(ws) = &mut spec.protocol {
        edit(ws);
    }
}

fn server_ws_with(spec: &mut ServerSpec, edit: impl FnOnce(&mut WsOptions)) {
    if let Protocol::Ws(ws) = &mut spec.protocol {
        edit(ws);
    }
}

/// A pattern that is not all one byte, so misordered chunks show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn assert_remote_close(reason: &CloseReason, code: u16, who: &str) {
    match reason {
        CloseReason::Remote(frame) => assert_eq!(frame.code.0, code, "{who}: close code"),
        other => panic!("{who}: expected a close frame with {code}, got {other:?}"),
    }
}

/// Sends each message and checks it comes back unchanged; then the client
/// closes and both sides see an ordinary end.
fn echo_round_trip<S: Adapter, C: Adapter>(spec: ServerSpec, messages: &[Message]) {
    let mut server = Server::start::<S>(spec);
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    let id = server.events.connect();
    for message in messages {
        client.send(message.clone());
        assert_eq!(&client.recv(), message, "echoed unchanged");
    }
    client.close();
    assert!(client.disconnect().is_normal());
    client.assert_closed();
    let (gone, reason) = server.events.disconnect();
    assert_eq!(gone, id);
    assert!(reason.is_normal(), "server saw {reason:?}");
    server.shutdown(WAIT);
}

/// Raw TCP: whatever each read returns is a message, so the echo comes
/// back in any chunking; the bytes and their order are what must hold.
pub fn echo_raw<S: Adapter, C: Adapter>() {
    let framing = Framing::Raw(RawConfig::default());
    let mut server = Server::start::<S>(ServerSpec::tcp(framing, OnMessage::Echo));
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    let payload = pattern(300 * 1024);
    for chunk in payload.chunks(10_000) {
        client.send(chunk.to_vec());
    }
    let mut echoed = Vec::with_capacity(payload.len());
    while echoed.len() < payload.len() {
        echoed.extend_from_slice(client.recv().as_bytes());
    }
    assert_eq!(echoed, payload, "raw bytes echoed in order");
    server.shutdown(WAIT);
    assert!(client.disconnect().is_normal());
}

/// 4-byte length prefix, messages of many sizes (empty included).
pub fn echo_length_prefix<S: Adapter, C: Adapter>() {
    let mut messages: Vec<Message> = (0..100u32)
        .map(|i| Message::from(format!("message {i}").into_bytes()))
        .collect();
    messages.push(Message::from(Vec::new()));
    messages.push(Message::from(pattern(70_000)));
    let spec = ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo);
    echo_round_trip::<S, C>(spec, &messages);
}

/// Large and small messages pipelined (all sent before any echo is
/// read), length-prefixed and WebSocket: large payloads leave the server
/// as chunks of their own between small frames, and every message comes
/// back whole and in order.
pub fn echo_large_and_small_pipelined<S: Adapter, C: Adapter>() {
    let sizes = [10, 70_000, 3, 20_000, 0, 64 * 1024, 5, 16 * 1024, 1];
    let messages: Vec<Message> = sizes
        .iter()
        .map(|&len| Message::from(pattern(len)))
        .collect();
    for spec in [
        ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo),
        ServerSpec::ws(OnMessage::Echo),
    ] {
        let mut server = Server::start::<S>(spec);
        let client = Client::connect::<C>(&ClientSpec::to(&server));
        for message in &messages {
            client.send(message.clone());
        }
        for message in &messages {
            assert!(&client.recv() == message, "echoed whole, in order");
        }
        server.shutdown(WAIT);
        assert!(client.disconnect().is_normal());
    }
}

/// Newline-delimited lines.
pub fn echo_delimiter<S: Adapter, C: Adapter>() {
    let messages: Vec<Message> = (0..100u32)
        .map(|i| Message::from(format!("line {i}").into_bytes()))
        .collect();
    let framing = Framing::Delimiter(DelimiterConfig::default());
    echo_round_trip::<S, C>(ServerSpec::tcp(framing, OnMessage::Echo), &messages);
}

fn text_and_binary() -> Vec<Message> {
    vec![
        Message::from("héllo, wörld ✓"),
        Message::from(vec![0, 1, 2, 255]),
        Message::from(""),
        Message::from(Vec::new()),
        Message::from(pattern(64 * 1024)),
        Message::from("é".repeat(40_000)),
    ]
}

/// WebSocket text and binary, the kind kept (text stays text).
pub fn ws_echo_text_and_binary<S: Adapter, C: Adapter>() {
    echo_round_trip::<S, C>(ServerSpec::ws(OnMessage::Echo), &text_and_binary());
}

/// The same with permessage-deflate negotiated by both sides.
pub fn ws_echo_deflate<S: Adapter, C: Adapter>() {
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    server_ws_with(&mut spec, |ws| ws.deflate = Some(Default::default()));
    let mut server = Server::start::<S>(spec);
    let mut client_spec = ClientSpec::to(&server);
    ws_with(&mut client_spec, |ws| ws.deflate = Some(Default::default()));
    let client = Client::connect::<C>(&client_spec);
    for message in text_and_binary() {
        client.send(message.clone());
        assert_eq!(client.recv(), message);
    }
    // Compression happened: far fewer bytes than the 40 000 "é"s alone.
    let session = client.session().expect("connected");
    assert!(
        session.metrics().bytes_received < 40_000,
        "received {} bytes: not compressed",
        session.metrics().bytes_received
    );
    client.close();
    client.assert_closed();
    server.shutdown(WAIT);
}

/// Large messages across many WebSocket frames (both sides fragment, text
/// split inside multi-byte characters) and across many TCP reads.
pub fn fragmentation<S: Adapter, C: Adapter>() {
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    server_ws_with(&mut spec, |ws| ws.config.send_fragment_size = 777);
    let mut server = Server::start::<S>(spec);
    let mut client_spec = ClientSpec::to(&server);
    ws_with(&mut client_spec, |ws| ws.config.send_fragment_size = 1000);
    let client = Client::connect::<C>(&client_spec);
    for message in [
        Message::from(pattern(300 * 1024)),
        Message::from("ü€𝄞".repeat(10_000)),
    ] {
        client.send(message.clone());
        assert_eq!(client.recv(), message);
    }
    client.close();
    client.assert_closed();
    server.shutdown(WAIT);

    let big = Message::from(pattern(2 << 20));
    echo_round_trip::<S, C>(
        ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo),
        &[big],
    );
}

/// Heartbeat pings are answered by the other side's auto-pong, both ways:
/// the pinging side receives pongs for many intervals (more than it
/// tolerates missing) and the connection stays up.
pub fn ping_pong<S: Adapter, C: Adapter>() {
    // A pong of a heartbeat ping: 2 header bytes, 4 mask bytes from a
    // client, 8 payload bytes.
    const PONGS: u64 = 10;
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.link.heartbeat = tolerant_heartbeat();
    let mut server = Server::start::<S>(spec);
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    let id = server.events.connect();
    let session = server.session(id);
    eventually("the server receives pongs", || {
        session.metrics().bytes_received >= PONGS * 14
    });
    assert!(
        server.events.try_next().is_none(),
        "no disconnect on the server"
    );
    client.send("still up");
    assert_eq!(client.recv(), Message::from("still up"));
    drop(client);
    server.shutdown(WAIT);

    // The client pings; the server answers.
    let mut server = Server::start::<S>(ServerSpec::ws(OnMessage::Echo));
    let mut spec = ClientSpec::to(&server);
    spec.options.link.heartbeat = tolerant_heartbeat();
    let client = Client::connect::<C>(&spec);
    let session = client.session().expect("connected");
    eventually("the client receives pongs", || {
        session.metrics().bytes_received >= PONGS * 10
    });
    client.send("still up");
    assert_eq!(client.recv(), Message::from("still up"));
    server.shutdown(WAIT);
}

/// A graceful close sends a close frame after what was queued; an abort
/// just drops the connection. From either side.
pub fn close_vs_abort<S: Adapter, C: Adapter>() {
    let mut server = Server::start::<S>(ServerSpec::ws(OnMessage::Echo));

    // The server closes.
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    let id = server.events.connect();
    server.send(id, "last words").expect("send");
    server.session(id).close_with(CloseCode::GOING_AWAY, "bye");
    assert_eq!(client.recv(), Message::from("last words"));
    match client.disconnect() {
        CloseReason::Remote(frame) => {
            assert_eq!(
                (frame.code, frame.reason.as_str()),
                (CloseCode::GOING_AWAY, "bye")
            );
        }
        other => panic!("client: expected the close frame, got {other:?}"),
    }
    let (_, reason) = server.events.disconnect();
    assert!(
        matches!(reason, CloseReason::Remote(_)),
        "server: {reason:?}"
    );
    client.assert_closed();

    // The server aborts.
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    let id = server.events.connect();
    let session = server.session(id);
    session.abort();
    assert_eq!(
        client.disconnect(),
        CloseReason::Eof,
        "client: no close frame on abort"
    );
    assert_eq!(
        server.events.disconnect().1,
        CloseReason::Local(CloseKind::Abort)
    );
    assert!(
        matches!(
            session.try_send(Message::from("late")),
            SendOutcome::Closed(_)
        ),
        "no sends after abort"
    );

    // The client closes.
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    let _ = server.events.connect();
    client.close();
    assert_remote_close(&server.events.disconnect().1, 1000, "server");
    assert!(matches!(client.disconnect(), CloseReason::Remote(_)));
    client.assert_closed();

    // The client aborts.
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    let _ = server.events.connect();
    client.abort();
    assert_eq!(
        server.events.disconnect().1,
        CloseReason::Eof,
        "server: no close frame"
    );
    assert_eq!(client.disconnect(), CloseReason::Local(CloseKind::Abort));
    server.shutdown(WAIT);
}

/// Every session joins "room"; a message is relayed to the room without
/// its sender; the handle's group API agrees.
pub fn groups_broadcast_with_exclude<S: Adapter, C: Adapter>() {
    let mut spec = ServerSpec::ws(OnMessage::Relay("room".to_owned()));
    spec.behaviour.join = Some("room".to_owned());
    let mut server = Server::start::<S>(spec);
    // Connect one by one, so the i-th connect is the i-th client.
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect::<C>(&ClientSpec::to(&server)));
        ids.push(server.events.connect());
    }
    assert_eq!(server.hub().member_count("room"), 3);
    assert_eq!(server.hub().group_names(), ["room"]);

    clients[0].send("hi");
    assert_eq!(clients[1].recv(), Message::from("hi"));
    assert_eq!(clients[2].recv(), Message::from("hi"));
    // The sender was excluded: its next message is the one to everyone.
    assert_eq!(server.broadcast("all", None).delivered, 3);
    for client in &clients {
        assert_eq!(client.recv(), Message::from("all"));
    }

    let leaver = server.session(ids[2]);
    assert!(leaver.leave("room"));
    assert!(!leaver.leave("room"));
    assert!(leaver.groups().is_empty());
    assert!(
        !server.session(ids[0]).join("room").expect("join"),
        "already a member"
    );
    assert_eq!(server.hub().member_count("room"), 2);
    let report = server.broadcast_group("room", "room only", Some(ids[0]));
    assert_eq!(report.delivered, 1);
    assert_eq!(server.broadcast("end", Some(ids[1])).delivered, 2);
    assert_eq!(clients[1].recv(), Message::from("room only"));
    assert_eq!(clients[0].recv(), Message::from("end"));
    assert_eq!(clients[2].recv(), Message::from("end"));
    server.shutdown(WAIT);
}

/// Over `max_connections`, a connection is closed at accept: the client's
/// upgrade fails, the others are unaffected.
pub fn max_connections<S: Adapter, C: Adapter>() {
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.max_connections = 1;
    let mut server = Server::start::<S>(spec);
    let first = Client::connect::<C>(&ClientSpec::to(&server));
    let _ = server.events.connect();
    let mut excess = ClientSpec::to(&server);
    excess.options.connect_timeout = WAIT;
    assert!(
        Client::try_connect::<C>(&excess).is_err(),
        "the excess connection is refused"
    );
    assert_eq!(server.metrics().connections_rejected, 1);
    assert_eq!(server.sessions().len(), 1);
    first.send("still served");
    assert_eq!(first.recv(), Message::from("still served"));
    server.shutdown(WAIT);
}

/// A server whose sessions write through 4 KiB socket buffers with
/// `policy`, and a peer that upgrades and then never reads.
fn stalled_server<S: Adapter>(
    policy: SlowConsumerPolicy,
    pending: usize,
) -> (Server, RawWs, SessionId) {
    let mut spec = ServerSpec::ws(OnMessage::Record);
    spec.options.backpressure.max_pending_send_bytes = pending;
    spec.options.backpressure.slow_consumer_policy = policy;
    spec.options.send_buffer_size = Some(4096);
    let server = Server::start::<S>(spec);
    let stalled = RawWs::upgrade(server.local_addr());
    let id = server.events.connect();
    (server, stalled, id)
}

/// `Drop`: a stalled reader loses messages (counted); the readers get every
/// broadcast, each before the next is sent, so the stalled one delays
/// nobody.
pub fn slow_consumer_drop<S: Adapter, C: Adapter>() {
    let (mut server, stalled, stalled_id) =
        stalled_server::<S>(SlowConsumerPolicy::Drop, 64 * 1024);
    let readers: Vec<Client> = (0..4)
        .map(|_| {
            let client = Client::connect::<C>(&ClientSpec::to(&server));
            let _ = server.events.connect();
            client
        })
        .collect();
    let payload = Message::from(vec![7u8; 16 * 1024]);
    let started = Instant::now();
    for _ in 0..200 {
        let report = server.broadcast(payload.clone(), None);
        assert!(report.delivered >= readers.len());
        for reader in &readers {
            assert_eq!(reader.recv().len(), payload.len());
        }
    }
    assert!(started.elapsed() < WAIT);
    for session in server.sessions() {
        let dropped = session.metrics().messages_dropped;
        if session.id() == stalled_id {
            assert!(dropped > 0, "the stalled session dropped messages");
        } else {
            assert_eq!(dropped, 0, "readers lose nothing");
        }
    }
    drop(stalled);
    server.shutdown(WAIT);
}

/// `Disconnect`: a stalled reader is aborted once its queue is full; the
/// readers carry on.
pub fn slow_consumer_disconnect<S: Adapter, C: Adapter>() {
    let (mut server, stalled, stalled_id) =
        stalled_server::<S>(SlowConsumerPolicy::Disconnect, 16 * 1024);
    let reader = Client::connect::<C>(&ClientSpec::to(&server));
    let _ = server.events.connect();
    let payload = Message::from(vec![7u8; 8 * 1024]);
    let refused = (0..10_000).any(|_| server.send(stalled_id, payload.clone()).is_err());
    assert!(refused, "a consumer that never reads is disconnected");
    assert_eq!(
        server.events.disconnect(),
        (stalled_id, CloseReason::Local(CloseKind::Abort))
    );
    assert_eq!(server.broadcast("carry on", None).delivered, 1);
    assert_eq!(reader.recv(), Message::from("carry on"));
    drop(stalled);
    server.shutdown(WAIT);
}

/// A client with reconnects finds its server again after a restart on the
/// same address.
pub fn reconnect_after_server_restart<S: Adapter, C: Adapter>() {
    let mut server = Server::start::<S>(ServerSpec::ws(OnMessage::Echo));
    let addr = server.local_addr();
    let mut spec = ClientSpec::to(&server);
    spec.options.reconnect = Some(BackoffConfig::fixed(Duration::from_millis(20)));
    let client = Client::connect::<C>(&spec);
    // Registered on the server too, so that shutdown closes it gracefully.
    let _ = server.events.connect();
    server.shutdown(WAIT);
    assert_remote_close(&client.disconnect(), 1000, "client");
    assert_eq!(client.events.next(), Event::Reconnecting(1));

    let mut restarted = ServerSpec::ws(OnMessage::Echo);
    restarted.options.addr = addr.to_string();
    let mut server = Server::start::<S>(restarted);
    loop {
        match client.events.next() {
            Event::Connect(_) => break,
            Event::Reconnecting(_) | Event::Error(_) => {}
            other => panic!("unexpected while reconnecting: {other:?}"),
        }
    }
    client.send("again");
    assert_eq!(client.recv(), Message::from("again"));
    client.close();
    client.assert_closed();
    assert!(client.session().is_none());
    assert!(client.try_send("late").is_err(), "no sends after close");
    server.shutdown(WAIT);
}

/// TLS with certificates made now: WebSocket (`wss://`) and framed TCP.
/// Skipped (and said so) when either adapter has no TLS.
pub fn tls<S: Adapter, C: Adapter>() {
    if !both_do_tls::<S, C>("tls") {
        return;
    }
    let pki = super::pki::Pki::new();
    let mut ws = ServerSpec::ws(OnMessage::Echo);
    ws.options.tls = Some(pki.server());
    let mut tcp = ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo);
    tcp.options.tls = Some(pki.server());
    for spec in [ws, tcp] {
        let mut server = Server::start::<S>(spec);
        let mut client_spec = ClientSpec::to(&server);
        assert!(
            matches!(client_spec.protocol, Protocol::Tcp(_))
                || client_spec.target.starts_with("wss://")
        );
        client_spec.options.tls = Some(pki.client());
        let client = Client::connect::<C>(&client_spec);
        for message in [
            Message::from(pattern(100_000)),
            Message::from(b"secret".to_vec()),
        ] {
            client.send(message.clone());
            assert_eq!(client.recv(), message);
        }
        client.close();
        assert!(client.disconnect().is_normal());
        client.assert_closed();
        server.shutdown(WAIT);
    }
}

/// Whether both adapters do TLS; says so when a scenario is skipped.
fn both_do_tls<S: Adapter, C: Adapter>(scenario: &str) -> bool {
    let both = S::TLS && C::TLS;
    if !both {
        eprintln!(
            "SKIPPED: {scenario} needs TLS in both adapters (server {}: {}, client {}: {})",
            S::NAME,
            S::TLS,
            C::NAME,
            C::TLS
        );
    }
    both
}

/// A plain client of a TLS server and a TLS client of a plain server, over
/// WebSocket and framed TCP: the plain end says that its peer speaks TLS
/// and what to do, and the TLS client says that the server does not.
pub fn plain_meets_tls<S: Adapter, C: Adapter>() {
    if !both_do_tls::<S, C>("plain_meets_tls") {
        return;
    }
    let pki = super::pki::Pki::new();

    // ws:// to a wss:// server: the TLS server's alert is the answer.
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.tls = Some(pki.server());
    let mut server = Server::start::<S>(spec);
    let mut plain = ClientSpec::to(&server);
    plain.target = plain.target.replacen("wss://", "ws://", 1);
    let Err(error) = Client::try_connect::<C>(&plain) else {
        panic!("a ws:// client of a wss:// server connected");
    };
    assert!(
        error.contains("the server speaks TLS") && error.contains("use a wss:// URL"),
        "{error}"
    );
    server.shutdown(WAIT);

    // Plain TCP to a TLS server: the alert arrives instead of a frame.
    let mut spec = ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo);
    spec.options.tls = Some(pki.server());
    let mut server = Server::start::<S>(spec);
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    client.send("anyone there?");
    let reason = client.disconnect();
    assert_eq!(
        reason,
        CloseReason::Framing(FramingError::ServerSpeaksTls),
        "{reason}"
    );
    assert!(reason.to_string().contains("--tls-ca"), "{reason}");
    client.assert_closed();
    server.shutdown(WAIT);

    // TLS clients of plain servers: the server hears a ClientHello.
    let ws = ServerSpec::ws(OnMessage::Echo);
    let tcp = ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo);
    for spec in [ws, tcp] {
        let websocket = matches!(spec.protocol, Protocol::Ws(_));
        let mut server = Server::start::<S>(spec);
        let mut secure = ClientSpec::to(&server);
        secure.target = secure.target.replacen("ws://", "wss://", 1);
        secure.options.tls = Some(pki.client());
        let Err(error) = Client::try_connect::<C>(&secure) else {
            panic!("a TLS client of a plain server connected");
        };
        let said = if websocket {
            // The 400 the WebSocket server answers with is not TLS.
            "the server's reply is not TLS"
        } else {
            "closed the connection during the TLS handshake"
        };
        assert!(error.contains(said), "{error}");
        let heard = loop {
            match server.events.next() {
                Event::Error(text) => break text,
                Event::Disconnect(_, reason) => break reason.to_string(),
                _ => {}
            }
        };
        assert!(
            heard.contains("TLS ClientHello on a plain port")
                && heard.contains("not running with TLS"),
            "{heard}"
        );
        server.shutdown(WAIT);
    }
}

/// Certificates a client refuses, each with a sentence that names the
/// cause and the fix: a self-signed CA certificate used as the server's
/// own (what `openssl req -x509` makes by default), and a certificate for
/// another name.
pub fn tls_certificate_refused<S: Adapter, C: Adapter>() {
    if !both_do_tls::<S, C>("tls_certificate_refused") {
        return;
    }
    let (ca_as_leaf, key) = super::pki::self_signed_ca_for_localhost();
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.tls = Some(TlsServerOptions::new(ca_as_leaf.clone(), key));
    let mut server = Server::start::<S>(spec);
    let mut client = ClientSpec::to(&server);
    client.options.tls = Some(TlsClientOptions::with_ca(ca_as_leaf));
    let Err(error) = Client::try_connect::<C>(&client) else {
        panic!("a CA certificate was accepted as the server's own");
    };
    assert!(
        error.contains("the server's certificate is a CA certificate")
            && error.contains("leaf certificate")
            && error.contains("subjectAltName")
            && error.contains("CaUsedAsEndEntity"),
        "{error}"
    );
    server.shutdown(WAIT);

    let pki = super::pki::Pki::new();
    let mut spec = ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo);
    spec.options.tls = Some(pki.server());
    let mut server = Server::start::<S>(spec);
    let mut client = ClientSpec::to(&server);
    client.options.tls = Some(pki.client().with_server_name("wrong.example"));
    let Err(error) = Client::try_connect::<C>(&client) else {
        panic!("a certificate for another name was accepted");
    };
    assert!(
        error.contains("not valid for \"wrong.example\"")
            && error.contains("it carries localhost, 127.0.0.1")
            && error.contains("server_name"),
        "{error}"
    );
    server.shutdown(WAIT);
}

/// A server with a rustls configuration of the application's own, offering
/// ALPN: a client that offers the protocols gets the server's first choice
/// among them (which a configuration built from PEM, with no ALPN, never
/// agrees on), the WebSocket upgrade and echo run over the agreed
/// connection, and a client that offers none of them is refused.
pub fn server_tls_own_config_alpn<A: Adapter>() {
    if !A::TLS {
        eprintln!(
            "SKIPPED: server_tls_own_config_alpn needs TLS in {}",
            A::NAME
        );
        return;
    }
    let pki = super::pki::Pki::new();
    let config = pki.server_config(&[b"storm-test", b"http/1.1"], false);
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.tls = Some(TlsServerOptions::from_config(config));
    let mut server = Server::start::<A>(spec);

    let client = pki.client_config(false, &[b"http/1.1", b"storm-test"]);
    let mut tls = raw::tls_connect(server.local_addr(), client).expect("TLS handshake");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"storm-test"[..]));
    tls.write_all(raw::UPGRADE).expect("upgrade request");
    let (head, mut rest) = raw::read_head(&mut tls).expect("upgrade response");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(&raw::frame(opcode::TEXT, b"over ALPN", true))
        .expect("a frame");
    let echo = raw::frame(opcode::TEXT, b"over ALPN", false);
    let mut chunk = [0u8; 1024];
    while rest.len() < echo.len() {
        let n = tls.read(&mut chunk).expect("the echo");
        assert!(n > 0, "the server closed before its echo");
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(rest, echo);
    drop(tls);

    // Refused with the no_application_protocol alert (which the std
    // server's close may overtake with a reset).
    let other = pki.client_config(false, &[b"h2"]);
    assert!(raw::tls_connect(server.local_addr(), other).is_err());
    server.shutdown(WAIT);
}

/// A client with a rustls configuration of the application's own whose
/// verifier trusts exactly one certificate, pinned: it accepts a server
/// certificate the web PKI rules refuse (a self-signed CA certificate as the
/// server's own), over WebSocket and framed TCP, and a client pinning
/// another certificate is refused.
pub fn tls_own_client_config_custom_verifier<S: Adapter, C: Adapter>() {
    if !both_do_tls::<S, C>("tls_own_client_config_custom_verifier") {
        return;
    }
    let (cert, key) = super::pki::self_signed_ca_for_localhost();
    let (other, _) = super::pki::self_signed_ca_for_localhost();
    let ws = ServerSpec::ws(OnMessage::Echo);
    let tcp = ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo);
    for mut spec in [ws, tcp] {
        spec.options.tls = Some(TlsServerOptions::new(cert.clone(), key.clone()));
        let mut server = Server::start::<S>(spec);
        let pinned = Pinned::new(&cert);
        let mut client_spec = ClientSpec::to(&server);
        client_spec.options.tls = Some(TlsClientOptions::from_config(pinned.config()));
        let client = Client::connect::<C>(&client_spec);
        client.send(b"pinned".to_vec());
        assert_eq!(client.recv(), Message::from(b"pinned".to_vec()));
        assert!(pinned.seen.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        client.close();
        client.assert_closed();

        let stranger = Pinned::new(&other);
        client_spec.options.tls = Some(TlsClientOptions::from_config(stranger.config()));
        let Err(error) = Client::try_connect::<C>(&client_spec) else {
            panic!("a client pinning another certificate connected");
        };
        assert!(error.contains("ApplicationVerificationFailure"), "{error}");
        assert!(stranger.seen.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        server.shutdown(WAIT);
    }
}

/// A server certificate verifier as an application writes one: it trusts
/// exactly the certificate it pins, and counts the certificates it sees.
#[derive(Debug)]
struct Pinned {
    der: Vec<u8>,
    seen: std::sync::atomic::AtomicUsize,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Pinned {
    fn new(cert_pem: &str) -> Arc<Self> {
        let leaf = super::pki::certs(cert_pem).remove(0);
        Arc::new(Self {
            der: leaf.as_ref().to_vec(),
            seen: std::sync::atomic::AtomicUsize::new(0),
            provider: super::pki::provider(),
        })
    }

    fn config(self: &Arc<Self>) -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(self) as _)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match end_entity.as_ref() == self.der.as_slice() {
            true => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Mutual TLS with rustls configurations of the application's own on both
/// ends: the server requires a client certificate its CA signed; a client
/// without one is refused, one with it is served (and ALPN agreed on by
/// both configurations does not get in the way).
pub fn tls_own_configs_mutual<S: Adapter, C: Adapter>() {
    if !both_do_tls::<S, C>("tls_own_configs_mutual") {
        return;
    }
    let pki = super::pki::Pki::new();
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    let config = pki.server_config(&[b"storm-test"], true);
    spec.options.tls = Some(TlsServerOptions::from_config(config));
    let mut server = Server::start::<S>(spec);
    let mut client_spec = ClientSpec::to(&server);

    let without = pki.client_config(false, &[b"storm-test"]);
    client_spec.options.tls = Some(TlsClientOptions::from_config(without));
    let Err(error) = Client::try_connect::<C>(&client_spec) else {
        panic!("a client without a certificate was served");
    };
    assert!(error.contains("requires a client certificate"), "{error}");

    let with = pki.client_config(true, &[b"storm-test"]);
    client_spec.options.tls = Some(TlsClientOptions::from_config(with));
    let client = Client::connect::<C>(&client_spec);
    client.send("mutual");
    assert_eq!(client.recv(), Message::from("mutual"));
    client.close();
    client.assert_closed();
    server.shutdown(WAIT);
}

/// Appends `name` and a direction mark to every message, and logs its
/// connect and disconnect hooks.
struct Tag {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tag {
    fn append(&self, message: Message, mark: &str) -> Option<Message> {
        let mut bytes = message.as_bytes().to_vec();
        bytes.extend_from_slice(self.name.as_bytes());
        bytes.extend_from_slice(mark.as_bytes());
        Some(match message {
            Message::Text(_) => Message::from(String::from_utf8(bytes).ok()?),
            _ => Message::from(bytes),
        })
    }

    fn log(&self, what: &str) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{} {what}", self.name));
    }
}

impl Middleware for Tag {
    fn on_connect(&self, _: SessionId) {
        self.log("connect");
    }
    fn on_received(&self, _: SessionId, message: Message) -> Option<Message> {
        self.append(message, "<")
    }
    fn on_sending(&self, _: SessionId, message: Message) -> Option<Message> {
        self.append(message, ">")
    }
    fn on_disconnect(&self, _: SessionId) {
        self.log("disconnect");
    }
}

fn chain(names: [&'static str; 2], log: &Arc<Mutex<Vec<String>>>) -> Arc<MiddlewareChain> {
    let [first, second] = names.map(|name| Tag {
        name,
        log: Arc::clone(log),
    });
    Arc::new(MiddlewareChain::new().with(first).with(second))
}

/// Middleware runs in registration order on receive and on send (on both
/// sides), and disconnect hooks unwind in reverse.
pub fn middleware_order<S: Adapter, C: Adapter>() {
    let server_log = Arc::new(Mutex::new(Vec::new()));
    let client_log = Arc::new(Mutex::new(Vec::new()));
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    spec.options.link.middleware = Some(chain(["a", "b"], &server_log));
    let mut server = Server::start::<S>(spec);
    let mut client_spec = ClientSpec::to(&server);
    client_spec.options.link.middleware = Some(chain(["c", "d"], &client_log));
    let client = Client::connect::<C>(&client_spec);
    client.send("x");
    // Client sends through c, d; the server receives through a, b; its
    // echo is sent through a, b; the client receives through c, d.
    assert_eq!(client.recv(), Message::from("xc>d>a<b<a>b>c<d<"));
    assert_eq!(server.events.message().1, Message::from("xc>d>a<b<"));
    client.close();
    let _ = server.events.disconnect();
    let _ = client.disconnect();
    client.assert_closed();
    let expected = |x: &str, y: &str| {
        vec![
            format!("{x} connect"),
            format!("{y} connect"),
            format!("{y} disconnect"),
            format!("{x} disconnect"),
        ]
    };
    let log =
        |log: &Arc<Mutex<Vec<String>>>| log.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(log(&server_log), expected("a", "b"));
    assert_eq!(log(&client_log), expected("c", "d"));
    server.shutdown(WAIT);
}

/// Shutdown closes every session with a normal close frame, returns, and
/// stops listening.
pub fn graceful_shutdown<S: Adapter, C: Adapter>() {
    let mut server = Server::start::<S>(ServerSpec::ws(OnMessage::Echo));
    let clients: Vec<Client> = (0..4)
        .map(|_| Client::connect::<C>(&ClientSpec::to(&server)))
        .collect();
    let _ = server.connects(clients.len());
    let addr = server.local_addr();
    let hub = server.hub();
    server.shutdown(WAIT);
    for client in &clients {
        assert_remote_close(&client.disconnect(), 1000, "client");
        client.assert_closed();
    }
    assert_eq!(hub.session_count(), 0);
    assert!(server.sessions().is_empty());
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}

/// A message over the server's limit closes the connection: 1009 for
/// WebSocket, a framing error for length-prefixed and delimited TCP.
pub fn oversize<S: Adapter, C: Adapter>() {
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    server_ws_with(&mut spec, |ws| {
        ws.config.max_frame_size = 1024;
        ws.config.max_message_size = 1024;
    });
    let mut server = Server::start::<S>(spec);
    let client = Client::connect::<C>(&ClientSpec::to(&server));
    client.send(pattern(1024));
    assert_eq!(client.recv().len(), 1024, "at the limit is fine");
    client.send(pattern(1025));
    assert_remote_close(&client.disconnect(), 1009, "client");
    match server.events.disconnect().1 {
        CloseReason::Protocol(e) => assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG),
        other => panic!("server: expected a protocol error, got {other:?}"),
    }
    server.shutdown(WAIT);

    let mut limit = LengthPrefixConfig::default();
    limit.max_frame_len = 1024;
    let mut lines = DelimiterConfig::default();
    lines.max_message_len = 64;
    for (server_framing, client_framing, too_big) in [
        (
            Framing::LengthPrefixWith(limit),
            Framing::LengthPrefix,
            pattern(2048),
        ),
        (
            Framing::Delimiter(lines),
            Framing::Delimiter(DelimiterConfig::default()),
            vec![b'x'; 200],
        ),
    ] {
        let mut server = Server::start::<S>(ServerSpec::tcp(server_framing, OnMessage::Echo));
        let mut spec = ClientSpec::to(&server);
        spec.protocol = Protocol::Tcp(client_framing);
        let client = Client::connect::<C>(&spec);
        client.send(too_big);
        assert!(matches!(
            server.events.disconnect().1,
            CloseReason::Framing(_)
        ));
        let _ = client.disconnect();
        client.assert_closed();
        server.shutdown(WAIT);
    }
}

/// A WebSocket server started for a raw peer.
fn ws_server_for_raw<S: Adapter>(edit: impl FnOnce(&mut ServerSpec)) -> Server {
    let mut spec = ServerSpec::ws(OnMessage::Echo);
    edit(&mut spec);
    Server::start::<S>(spec)
}

/// A peer that upgrades and never answers a ping is declared dead, and
/// its socket closed.
pub fn server_heartbeat_timeout<S: Adapter>() {
    let mut server = ws_server_for_raw::<S>(|spec| spec.options.link.heartbeat = fast_heartbeat());
    let mut raw = RawWs::upgrade(server.local_addr());
    let _ = server.events.connect();
    assert_eq!(server.events.disconnect().1, CloseReason::PeerDead);
    // The pings, then the end.
    assert!(raw::read_to_close(&mut raw.stream) > 0);
    server.shutdown(WAIT);
}

/// Traffic keeps an idle timeout from firing, however long it goes on
/// (past the deadline the connection had when it opened, and past many
/// more); once the peer falls silent, the timeout closes the connection.
/// The timeout is generous and the messages frequent, for a loaded
/// machine; the messages go on for twice the timeout.
pub fn server_idle_timeout_after_traffic<S: Adapter>() {
    const IDLE: Duration = Duration::from_millis(600);
    let mut spec = ServerSpec::tcp(Framing::LengthPrefix, OnMessage::Echo);
    spec.options.link.heartbeat = HeartbeatConfig::default().with_idle_timeout(IDLE);
    let mut server = Server::start::<S>(spec);
    let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let _ = server.events.connect();
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < IDLE * 2 {
        let payload = sent.to_be_bytes();
        stream.write_all(&[0, 0, 0, 4]).expect("write prefix");
        stream.write_all(&payload).expect("write message");
        let mut echo = [0u8; 8];
        stream
            .read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("echo {sent} after {:?}: {e}", started.elapsed()));
        assert_eq!(echo[4..], payload, "echo {sent}");
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    while let Some(event) = server.events.try_next() {
        assert!(
            !matches!(event, Event::Disconnect(..)),
            "closed during its traffic, after {sent} messages: {event:?}"
        );
    }
    assert_eq!(server.events.disconnect().1, CloseReason::IdleTimeout);
    assert_eq!(
        raw::read_to_close(&mut stream),
        0,
        "nothing more, then the end"
    );
    server.shutdown(WAIT);
}

/// A raw ping is answered by a pong with the same payload.
pub fn server_answers_ping<S: Adapter>() {
    let mut server = ws_server_for_raw::<S>(|_| {});
    let mut raw = RawWs::upgrade(server.local_addr());
    raw.send(opcode::PING, b"are you there", true);
    raw.send(opcode::TEXT, b"and this", true);
    assert_eq!(
        raw.next_event(),
        Some(ws::Event::Pong(Bytes::from_static(b"are you there")))
    );
    assert_eq!(raw.next_event(), Some(ws::Event::Text("and this".into())));
    // It would not answer the shutdown's close frame.
    drop(raw);
    server.shutdown(WAIT);
}

/// A peer that pings as fast as it can and never reads: its pongs count
/// against the send limit, and once they fill it the server stops reading
/// it (the peer's writes stall) instead of queueing a pong per ping. So
/// what the server read, and all it can hold for the peer, stays within
/// the limit, the writer's batch and the socket buffers. The flood is
/// bounded: 300,000 pings of 125 bytes, for at most [`WAIT`].
pub fn server_ping_flood<S: Adapter>() {
    const LIMIT: usize = 64 * 1024;
    /// A ping from a client: header, mask and payload.
    const PING: usize = 2 + 4 + 125;
    let mut server = ws_server_for_raw::<S>(|spec| {
        spec.options.backpressure.max_pending_send_bytes = LIMIT;
        spec.options.send_buffer_size = Some(4096);
        spec.options.recv_buffer_size = Some(4096);
        // No timer: only the peer's leaving may wake the held-back reader.
        spec.options.link.heartbeat.interval = Duration::ZERO;
        spec.options.link.release_after = Duration::from_secs(3600);
    });
    let mut raw = RawWs::upgrade(server.local_addr());
    let id = server.events.connect();
    let session = server.session(id);
    let batch = raw::frame(opcode::PING, &[b'p'; 125], true).repeat(100);
    raw.stream
        .set_write_timeout(Some(Duration::from_millis(50)))
        .expect("write timeout");
    let deadline = Instant::now() + WAIT;
    let (mut written, mut stalled) = (0, false);
    while written < 300_000 * PING && Instant::now() < deadline {
        match raw.stream.write(&batch[written % batch.len()..]) {
            Ok(n) => written += n,
            // No progress: the server is not reading, held back by the
            // limit its pongs filled (else it was only slow).
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if session.is_backpressured() {
                    stalled = true;
                    break;
                }
            }
            Err(e) => panic!("ping flood: {e}"),
        }
    }
    let metrics = session.metrics();
    assert!(
        stalled,
        "the server kept reading pings it could not answer: {written} bytes taken"
    );
    assert!(metrics.pending_send_bytes <= LIMIT);
    // What it read: the pongs within the limit (those the writer holds
    // included), those the socket buffers took (the peers receive buffer
    // is 128 KiB by default on Linux), and one read of pings whose pongs
    // the next ones replaced. 39 MB without the limit.
    assert!(
        metrics.bytes_received <= 1 << 20,
        "the server read {} bytes of pings",
        metrics.bytes_received
    );
    // The peer leaves; the server, held back from reading it, notices.
    drop(raw);
    assert_eq!(server.events.disconnect().0, id);
    server.shutdown(WAIT);
}

/// Malformed frames get the right close code, and the server reports why.
pub fn server_malformed_frames<S: Adapter>() {
    let mut server = ws_server_for_raw::<S>(|_| {});
    for (opcode, payload, masked, code) in [
        (
            opcode::TEXT,
            &b"\xff\xfe not utf-8"[..],
            true,
            CloseCode::INVALID_PAYLOAD,
        ),
        (
            opcode::TEXT,
            &b"unmasked"[..],
            false,
            CloseCode::PROTOCOL_ERROR,
        ),
        (opcode::RESERVED, &b"?"[..], true, CloseCode::PROTOCOL_ERROR),
        (opcode::CLOSE, &b"\x03"[..], true, CloseCode::PROTOCOL_ERROR),
    ] {
        let mut raw = RawWs::upgrade(server.local_addr());
        let _ = server.events.connect();
        raw.send(opcode, payload, masked);
        let frame = raw.close_frame().expect("a close frame");
        assert_eq!(frame.code, code, "opcode {opcode:#x}, payload {payload:?}");
        match server.events.disconnect().1 {
            CloseReason::Protocol(e) => assert_eq!(e.close_code(), code),
            other => panic!("server: expected a protocol error, got {other:?}"),
        }
        let _ = raw::read_to_close(&mut raw.stream);
    }
    server.shutdown(WAIT);
}

/// A request that is not an upgrade gets an HTTP error and the socket is
/// closed; a half-sent one times out. Neither becomes a session.
pub fn server_bad_handshakes<S: Adapter>() {
    let mut server = ws_server_for_raw::<S>(|spec| {
        spec.options.handshake_timeout = Duration::from_millis(200);
    });
    let mut raw = TcpStream::connect(server.local_addr()).expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    raw.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut response = Vec::new();
    let _ = raw.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 4"), "got {response:?}");

    let started = Instant::now();
    let mut raw = TcpStream::connect(server.local_addr()).expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    assert_eq!(raw::read_to_close(&mut raw), 0, "closed without a response");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(server.sessions().is_empty());
    eventually("the handshake's permit is released", || {
        server.metrics().connections == 0
    });
    server.shutdown(WAIT);
}

/// Shutdown aborts what does not answer its close frame within the
/// timeout, and still returns.
pub fn server_shutdown_aborts_a_silent_peer<S: Adapter>() {
    let mut server = ws_server_for_raw::<S>(|_| {});
    let _silent = RawWs::upgrade(server.local_addr());
    let _ = server.events.connect();
    let started = Instant::now();
    server.shutdown(Duration::from_millis(100));
    assert!(started.elapsed() < WAIT);
    assert!(matches!(
        server.events.disconnect().1,
        CloseReason::Local(_)
    ));
}

/// A peer that never finishes its upgrade request does not hold a shutdown
/// for its handshake timeout: once the shutdown's own timeout has passed,
/// the handshake is cut short and the socket closed.
pub fn server_shutdown_cuts_a_stalled_handshake_short<S: Adapter>() {
    let mut server = ws_server_for_raw::<S>(|spec| {
        spec.options.handshake_timeout = Duration::from_secs(600);
    });
    let mut stalled = TcpStream::connect(server.local_addr()).expect("connect");
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    eventually("the server accepted the connection", || {
        server.metrics().connections == 1
    });
    let started = Instant::now();
    server.shutdown(Duration::from_millis(100));
    // Without the cut, shutdown would wait for the 600 s handshake
    // timeout; WAIT (10 s) is far below it and far above a cut's time.
    assert!(
        started.elapsed() < WAIT,
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(
        raw::read_to_close(&mut stalled),
        0,
        "closed without a response"
    );
}

/// A shutdown that starts while connections are mid-handshake leaves none
/// of them behind: every connection the server upgraded gets a close frame
/// (1000), none is left open for the shutdown timeout to abort. Rounds of
/// a burst of upgrade requests followed at once by a shutdown, bounded in
/// count; connections the server had not accepted yet may be refused.
pub fn server_shutdown_closes_connections_mid_handshake<S: Adapter>() {
    const ROUNDS: usize = 20;
    const BURST: usize = 8;
    let mut upgraded = 0;
    for round in 0..ROUNDS {
        let mut server = ws_server_for_raw::<S>(|_| {});
        let addr = server.local_addr();
        let requests: Vec<TcpStream> = (0..BURST).map(|_| RawWs::request(addr)).collect();
        let shutting = std::thread::spawn(move || server.shutdown(WAIT));
        for (i, request) in requests.into_iter().enumerate() {
            let Some(mut raw) = RawWs::upgraded(request) else {
                continue;
            };
            upgraded += 1;
            let close = raw.close_frame().unwrap_or_else(|| {
                panic!("round {round}, connection {i}: upgraded, then ended without a close frame")
            });
            assert_eq!(
                close.code,
                CloseCode::NORMAL,
                "round {round}, connection {i}"
            );
            raw.send(opcode::CLOSE, &CloseCode::NORMAL.0.to_be_bytes(), true);
        }
        shutting.join().expect("shutdown thread");
    }
    assert!(
        upgraded > 0,
        "no connection was upgraded in {ROUNDS} rounds"
    );
}

/// A client declares a server that never answers pings dead.
pub fn client_heartbeat_timeout<C: Adapter>() {
    let raw = RawWsServer::bind();
    let mut spec = ClientSpec {
        target: raw.url(),
        protocol: Protocol::Ws(WsOptions::default()),
        options: Default::default(),
    };
    spec.options.link.heartbeat = fast_heartbeat();
    let accepting = std::thread::spawn(move || raw.accept());
    let client = Client::connect::<C>(&spec);
    let _socket = accepting.join().expect("accept thread");
    assert_eq!(client.disconnect(), CloseReason::PeerDead);
    client.assert_closed();
}

/// A client refuses a masked frame from a server with 1002.
pub fn client_rejects_masked_server_frames<C: Adapter>() {
    let raw = RawWsServer::bind();
    let spec = ClientSpec {
        target: raw.url(),
        protocol: Protocol::Ws(WsOptions::default()),
        options: Default::default(),
    };
    let accepting = std::thread::spawn(move || raw.accept());
    let client = Client::connect::<C>(&spec);
    let mut socket = accepting.join().expect("accept thread");
    socket
        .write_all(&raw::frame(opcode::TEXT, b"masked", true))
        .expect("write");
    match client.disconnect() {
        CloseReason::Protocol(e) => assert_eq!(e, ProtocolError::MaskedFrame),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    client.assert_closed();
    assert!(
        raw::read_to_close(&mut socket) > 0,
        "the client sent its close frame"
    );
}

/// Connecting where nothing listens fails, in time.
pub fn client_connect_refused<C: Adapter>() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let started = Instant::now();
    for protocol in [
        Protocol::Ws(WsOptions::default()),
        Protocol::Tcp(Framing::LengthPrefix),
    ] {
        let target = match protocol {
            Protocol::Ws(_) => format!("ws://{addr}/"),
            Protocol::Tcp(_) => addr.to_string(),
        };
        let mut spec = ClientSpec {
            target,
            protocol,
            options: Default::default(),
        };
        spec.options.connect_timeout = Duration::from_secs(2);
        assert!(Client::try_connect::<C>(&spec).is_err());
    }
    assert!(started.elapsed() < WAIT);
}

/// Runs `work` on a thread of its own; [`finish`] takes its result.
fn background<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx
}

/// The result of a [`background`] job, within [`WAIT`].
///
/// # Panics
///
/// When it does not come in time, or the job panicked.
fn finish<T>(job: Receiver<T>, what: &str) -> T {
    job.recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A WebSocket client of a raw server with reconnects every `delay`,
/// connected, whose server then drops the connection: returns once the
/// client is waiting for its first reconnect, with the server's listener
/// (still listening).
fn client_in_reconnect<C: Adapter>(
    delay: Duration,
    edit: impl FnOnce(&mut ClientSpec),
) -> (Client, RawWsServer) {
    let raw = RawWsServer::bind();
    let mut spec = ClientSpec {
        target: raw.url(),
        protocol: Protocol::Ws(WsOptions::default()),
        options: Default::default(),
    };
    spec.options.reconnect = Some(BackoffConfig::fixed(delay));
    edit(&mut spec);
    let accepting = background(move || {
        let socket = raw.accept();
        (raw, socket)
    });
    let client = Client::connect::<C>(&spec);
    let (raw, socket) = finish(accepting, "the raw server upgrades the client");
    drop(socket);
    let _ = client.disconnect();
    assert_eq!(client.events.next(), Event::Reconnecting(1));
    (client, raw)
}

/// `close` ends a pending reconnect delay at once: the client stops for
/// good long before its backoff would have ended, and makes no further
/// connection attempt.
pub fn client_close_ends_a_reconnect_delay<C: Adapter>() {
    // A delay far above WAIT: only a cut ends the wait in time. (WAIT, not
    // less, bounds the close: under a loaded machine, at nice 19, this
    // suite has seen threads stall for seconds.)
    let (client, raw) = client_in_reconnect::<C>(Duration::from_secs(600), |_| {});
    // The server is gone for good.
    let addr = raw.local_addr();
    drop(raw);
    client.close();
    client.assert_closed();
    // No attempt follows the close. A test of absence, so its window is
    // short: a listener on the server's address again, then 300 ms (far
    // above a loopback connect's time) in which the kernel would queue a
    // connection for it, then one non-blocking accept. An attempt made
    // while nothing listened would have been refused and reported as an
    // error, which the event check catches.
    let listener = std::net::TcpListener::bind(addr).expect("bind the server's address again");
    std::thread::sleep(Duration::from_millis(300));
    listener.set_nonblocking(true).expect("non-blocking");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the client connected again after close, from {from}"),
        Err(e) => panic!("accept: {e}"),
    }
    assert_eq!(client.events.try_next(), None, "no event after close");
}

/// `close` during a reconnect's WebSocket handshake abandons it at once:
/// the client stops for good without waiting for its connect timeout, the
/// half-made connection is closed, and the handler never hears of it.
pub fn client_close_cuts_a_reconnect_handshake_short<C: Adapter>() {
    let (client, raw) = client_in_reconnect::<C>(Duration::from_millis(20), |spec| {
        // Far above WAIT: only a cut ends the handshake in time.
        spec.options.connect_timeout = Duration::from_secs(600);
    });
    // The reconnect's upgrade request arrives, and is never answered.
    let (mut stalled, _answer) = finish(
        background(move || raw.accept_request()),
        "the reconnect's upgrade request",
    );
    let started = Instant::now();
    client.close();
    client.assert_closed();
    assert_eq!(
        raw::read_to_close(&mut stalled),
        0,
        "the half-made connection is closed, without a byte"
    );
    assert!(
        started.elapsed() < WAIT,
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(client.events.try_next(), None, "no event after close");
}

/// A server whose upgrade hook decides with `decide`, its handler doing
/// [`OnMessage::EchoTagged`].
fn hooked_server<S: Adapter>(
    decide: impl Fn(&UpgradeInfo) -> Decision + Send + Sync + 'static,
    edit: impl FnOnce(&mut ServerSpec),
) -> Server {
    ws_server_for_raw::<S>(|spec| {
        spec.behaviour.on_message = OnMessage::EchoTagged;
        spec.upgrade = Some(UpgradeSpec::Decide(Arc::new(decide)));
        edit(spec);
    })
}

/// The next error the server's handler heard, skipping other events.
fn next_error(server: &Server) -> String {
    loop {
        if let Event::Error(error) = server.events.next() {
            return error;
        }
    }
}

/// A hook that rejects a request without the right `Authorization` with
/// 401, a header and a body: a raw client reads exactly that response and
/// the end of the connection; the handler's `on_error` hears the status;
/// no session was made.
pub fn upgrade_hook_rejects_with_status_and_body<S: Adapter>() {
    let mut server = hooked_server::<S>(
        |info| match info.headers().get("authorization") {
            Some(b"Bearer sesame") => Decision::accept(),
            _ => Decision::reject(401)
                .header("WWW-Authenticate", "Bearer")
                .body("no token\n"),
        },
        |_| {},
    );
    let mut stream = RawWs::request_with(server.local_addr(), "/", "");
    let response = raw::read_all(&mut stream);
    assert_eq!(
        String::from_utf8_lossy(&response),
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\n\
         Connection: close\r\n\r\nno token\n"
    );
    let error = next_error(&server);
    assert!(error.contains("rejected with 401"), "{error}");
    let stream = RawWs::request_with(server.local_addr(), "/", "Authorization: Bearer sesame\r\n");
    let raw = RawWs::upgraded(stream);
    assert!(raw.is_some());
    let _ = server.events.connect();
    assert_eq!(server.metrics().sessions, 1);
    drop(raw);
    server.shutdown(WAIT);
}

/// A hook that accepts choosing the client's second subprotocol, adding
/// a response header and attaching the room its path names: the response
/// carries both, and the handler reads the room from its session.
pub fn upgrade_hook_accepts_with_subprotocol_header_and_state<S: Adapter>() {
    let mut server = hooked_server::<S>(
        |info| {
            let room = info.path().trim_start_matches("/room/").to_owned();
            let by = info.query_param("by").unwrap_or_default();
            Decision::accept()
                .subprotocol("chat.v2")
                .header("X-Room", &room)
                .attach(format!("{room}/{by}/{}", info.remote_addr().ip()))
        },
        |_| {},
    );
    let stream = RawWs::request_with(
        server.local_addr(),
        "/room/7?by=ann%20b",
        "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n",
    );
    let Some((head, mut raw)) = RawWs::upgraded_with_head(stream) else {
        panic!("not upgraded")
    };
    assert!(
        head.contains("\r\nSec-WebSocket-Protocol: chat.v2\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nX-Room: 7\r\n"), "{head}");
    let _ = server.events.connect();
    raw.send(opcode::TEXT, b"hi", true);
    assert_eq!(
        raw.next_event(),
        Some(ws::Event::Text("7/ann b/127.0.0.1:hi".into()))
    );
    drop(raw);
    server.shutdown(WAIT);
}

/// `allowed_origins`: a page from another origin is refused with 403
/// before the hook runs; the allowed origin and a client without `Origin`
/// (not a browser) are let in.
pub fn allowed_origins_refuse_a_foreign_page<S: Adapter>() {
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&hooked);
    let mut server = hooked_server::<S>(
        move |info| {
            let origin = info.origin().unwrap_or("none").to_owned();
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(origin);
            Decision::accept()
        },
        |spec| {
            server_ws_with(spec, |ws| {
                ws.allowed_origins = vec!["http://chat.example:8080".to_owned()];
            });
        },
    );
    let addr = server.local_addr();
    let mut stream = RawWs::request_with(addr, "/", "Origin: https://evil.example\r\n");
    let response = String::from_utf8_lossy(&raw::read_all(&mut stream)).into_owned();
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
    let error = next_error(&server);
    assert!(error.contains("https://evil.example"), "{error}");
    for origin in ["Origin: http://chat.example:8080\r\n", ""] {
        let stream = RawWs::request_with(addr, "/", origin);
        assert!(RawWs::upgraded(stream).is_some(), "{origin}");
        let _ = server.events.connect();
    }
    let hooked = hooked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(hooked, ["http://chat.example:8080", "none"]);
    server.shutdown(WAIT);
}

/// A hook that does not decide within the handshake timeout: the
/// connection is closed without a response, the handler hears the
/// timeout, and its place under `max_connections` comes back.
pub fn slow_upgrade_hook_is_cut_off_by_the_handshake_timeout<S: Adapter>() {
    let mut server = ws_server_for_raw::<S>(|spec| {
        spec.options.handshake_timeout = Duration::from_millis(200);
        spec.options.max_connections = 1;
        spec.upgrade = Some(UpgradeSpec::Stall(Duration::from_millis(600)));
    });
    let mut stream = RawWs::request_with(server.local_addr(), "/", "");
    assert_eq!(raw::read_all(&mut stream), b"");
    let error = next_error(&server);
    assert!(error.contains("timed out"), "{error}");
    eventually("the handshake's permit is released", || {
        server.metrics().connections == 0
    });
    assert_eq!(server.metrics().sessions, 0);
    server.shutdown(WAIT);
}

/// Routing by path through the hook, with each client's own request
/// header: `/a` and `/b` reach handlers that know their route (and each
/// client reads the subprotocol and the header the hook answered with),
/// an unknown path gets 404 and a request without the header 401, which
/// the client reports.
pub fn upgrade_hook_routes_by_path<S: Adapter, C: Adapter>() {
    let mut server = hooked_server::<S>(
        |info| {
            if info.headers().get("X-Key") != Some(b"k1") {
                return Decision::reject(401);
            }
            match info.path() {
                "/a" | "/b" => Decision::accept()
                    .subprotocol("v2")
                    .header("X-Route", info.path())
                    .attach(info.path()[1..].to_owned()),
                _ => Decision::reject(404).body("no such route\n"),
            }
        },
        |_| {},
    );
    let spec = |path: &str, key: Option<&str>| {
        let mut spec = ClientSpec::to(&server);
        spec.target = format!("ws://{}{path}", server.local_addr());
        ws_with(&mut spec, |ws| {
            ws.subprotocols = vec!["v1".into(), "v2".into()]
        });
        if let Some(key) = key {
            spec.options.headers = vec![("X-Key".to_owned(), key.to_owned())];
        }
        spec
    };
    for route in ["a", "b"] {
        let client = Client::connect::<C>(&spec(&format!("/{route}"), Some("k1")));
        let _ = server.events.connect();
        // The client reads the server's answer from its session.
        let session = client.session().unwrap_or_else(|| panic!("connected"));
        let response = session.attached::<UpgradeResponse>().cloned();
        let response = response.unwrap_or_else(|| panic!("a WebSocket client keeps the response"));
        assert_eq!(response.subprotocol.as_deref(), Some("v2"));
        let route = format!("/{route}");
        assert_eq!(response.headers.get("x-route"), Some(route.as_bytes()));
        let route = &route[1..];
        client.send(Message::from("x"));
        assert_eq!(client.recv(), Message::from(format!("{route}:x").as_str()));
        client.close();
        let _ = server.events.disconnect();
    }
    let refused = Client::try_connect::<C>(&spec("/c", Some("k1")));
    let error = refused.err().unwrap_or_default();
    assert!(error.contains("404"), "{error}");
    let refused = Client::try_connect::<C>(&spec("/a", None));
    let error = refused.err().unwrap_or_default();
    assert!(error.contains("401"), "{error}");
    server.shutdown(WAIT);
}

/// Under TLS the hook sees the server name the client asked for (SNI)
/// and that no ALPN protocol was agreed (the server offers none); on
/// plain TCP it sees no TLS at all.
pub fn upgrade_hook_sees_tls_sni<S: Adapter, C: Adapter>() {
    if !both_do_tls::<S, C>("upgrade_hook_sees_tls_sni") {
        return;
    }
    let pki = super::pki::Pki::new();
    for secure in [true, false] {
        let mut server = hooked_server::<S>(
            |info| {
                let tag = match info.tls() {
                    Some(tls) => format!("{:?}/{:?}", tls.sni, tls.alpn),
                    None => "plain".to_owned(),
                };
                Decision::accept().attach(tag)
            },
            |spec| {
                if secure {
                    spec.options.tls = Some(pki.server());
                }
            },
        );
        let mut spec = ClientSpec::to(&server);
        if secure {
            let mut tls = pki.client();
            tls.server_name = Some("localhost".to_owned());
            spec.options.tls = Some(tls);
        }
        let client = Client::connect::<C>(&spec);
        let _ = server.events.connect();
        client.send(Message::from("x"));
        let expected = match secure {
            true => r#"Some("localhost")/None:x"#,
            false => "plain:x",
        };
        assert_eq!(client.recv(), Message::from(expected));
        client.close();
        server.shutdown(WAIT);
    }
}
