//! storm-tokio over real loopback sockets: servers, clients, sessions,
//! groups, policies, heartbeats, reconnects, shutdown. Every wait is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;

use common::{Seen, WAIT, echo_and_close, next, next_disconnect, next_message, recorder};
use storm_proto::Message;
use storm_proto::backpressure::SlowConsumerPolicy;
use storm_proto::heartbeat::HeartbeatConfig;
use storm_proto::link::CloseReason;
use storm_proto::options::{ClientOptions, Framing, ServerOptions, WsOptions};
use storm_proto::reconnect::BackoffConfig;
use storm_tokio::{Client, ServerHandle, TcpClient, TcpServer, WsClient, WsServer};

async fn ws_server(
    options: ServerOptions,
    ws: WsOptions,
    echo: bool,
) -> (ServerHandle, mpsc::UnboundedReceiver<Seen>) {
    let server = WsServer::bind(options, ws).await.expect("bind");
    let handle = server.handle();
    let (handler, rx) = recorder(echo);
    tokio::spawn(server.serve(handler));
    (handle, rx)
}

async fn ws_client(
    handle: &ServerHandle,
    options: ClientOptions,
    ws: WsOptions,
) -> (Client, mpsc::UnboundedReceiver<Seen>) {
    let (handler, rx) = recorder(false);
    let url = format!("ws://{}/", handle.local_addr());
    let client = timeout(WAIT, WsClient::connect(&url, options, ws, handler))
        .await
        .expect("in time")
        .expect("connect");
    (client, rx)
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition in time");
}

#[tokio::test]
async fn websocket_echo_text_binary_and_deflate() {
    for deflate in [None, Some(Default::default())] {
        let ws = WsOptions {
            deflate,
            ..WsOptions::default()
        };
        let (handle, _server_rx) = ws_server(ServerOptions::default(), ws.clone(), true).await;
        let (client, mut rx) = ws_client(&handle, ClientOptions::default(), ws).await;
        assert_eq!(next(&mut rx).await, Seen::Connect);
        let big = vec![7u8; 1 << 20];
        echo_and_close(
            &client,
            &mut rx,
            [
                Message::from("héllo"),
                Message::from(vec![1, 2, 3]),
                Message::from(big),
                Message::from(""),
            ],
        )
        .await;
        handle.shutdown(WAIT).await;
    }
}

#[tokio::test]
async fn length_prefixed_and_line_echo() {
    for framing in [
        Framing::LengthPrefix,
        Framing::Delimiter(Default::default()),
    ] {
        let server = TcpServer::bind(ServerOptions::default(), framing.clone())
            .await
            .unwrap();
        let addr = server.local_addr().to_string();
        let handle = server.handle();
        let (handler, _server_rx) = recorder(true);
        tokio::spawn(server.serve(handler));
        let (handler, mut rx) = recorder(false);
        let client = TcpClient::connect(&addr, ClientOptions::default(), framing, handler)
            .await
            .unwrap();
        for i in 0..100u32 {
            client
                .send(Message::from(format!("message {i}").into_bytes()))
                .await
                .unwrap();
        }
        for i in 0..100u32 {
            assert_eq!(
                next_message(&mut rx).await,
                Message::from(format!("message {i}").into_bytes())
            );
        }
        handle.shutdown(WAIT).await;
        assert!(next_disconnect(&mut rx).await.is_normal());
    }
}

#[tokio::test]
async fn groups_broadcast_with_exclude() {
    let (handle, mut server_rx) =
        ws_server(ServerOptions::default(), WsOptions::default(), false).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(ws_client(&handle, ClientOptions::default(), WsOptions::default()).await);
    }
    wait_until(|| handle.sessions().len() == 3).await;
    let sessions = handle.sessions();
    for session in &sessions[..2] {
        assert!(session.join("room").unwrap());
    }
    assert_eq!(handle.member_count("room"), 2);
    assert_eq!(handle.group_names(), ["room"]);
    let report = handle.broadcast_group("room", "to the room", Some(sessions[0].id()));
    assert_eq!(report.delivered, 1);
    let report = handle.broadcast("to all", None);
    assert_eq!(report.delivered, 3);
    // Which client owns which session is not known (accept tasks race), so
    // check by counts: everyone gets "to all", and exactly one client — the
    // room member that was not excluded — gets "to the room" first.
    let mut room_receivers = 0;
    for (_, rx) in &mut clients {
        let first = next_message(rx).await;
        if first == Message::from("to the room") {
            room_receivers += 1;
            assert_eq!(next_message(rx).await, Message::from("to all"));
        } else {
            assert_eq!(first, Message::from("to all"));
        }
    }
    assert_eq!(room_receivers, 1);
    assert!(sessions[1].leave("room"));
    assert_eq!(sessions[1].groups(), Vec::<String>::new());
    drop(server_rx.try_recv());
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn max_connections_closes_the_excess_at_accept() {
    let options = ServerOptions {
        max_connections: 1,
        ..ServerOptions::default()
    };
    let (handle, _rx) = ws_server(options, WsOptions::default(), true).await;
    let (_first, _first_rx) =
        ws_client(&handle, ClientOptions::default(), WsOptions::default()).await;
    wait_until(|| handle.session_count() == 1).await;
    // A second connection is closed before any handshake byte is answered.
    let mut raw = TcpStream::connect(handle.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = timeout(WAIT, raw.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the excess connection is closed without a response");
    assert_eq!(
        handle
            .hub()
            .metrics(std::time::Instant::now())
            .connections_rejected,
        1
    );
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_half_sent_handshake_times_out() {
    let options = ServerOptions {
        handshake_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let (handle, _rx) = ws_server(options, WsOptions::default(), true).await;
    let mut raw = TcpStream::connect(handle.local_addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = timeout(WAIT, raw.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(handle.session_count(), 0);
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_peer_that_never_pongs_is_declared_dead() {
    let mut options = ServerOptions::default();
    options.link.heartbeat = HeartbeatConfig {
        interval: Duration::from_millis(50),
        max_missed: 2,
        ..HeartbeatConfig::default()
    };
    let (handle, mut rx) = ws_server(options, WsOptions::default(), true).await;
    // A raw client that completes the handshake and then never reads.
    let mut raw = TcpStream::connect(handle.local_addr()).await.unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(next_disconnect(&mut rx).await, CloseReason::PeerDead);
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn client_heartbeat_keeps_a_live_connection() {
    let mut options = ServerOptions::default();
    options.link.heartbeat = HeartbeatConfig {
        interval: Duration::from_millis(20),
        max_missed: 2,
        ..HeartbeatConfig::default()
    };
    let (handle, mut rx) = ws_server(options, WsOptions::default(), true).await;
    let (client, _client_rx) =
        ws_client(&handle, ClientOptions::default(), WsOptions::default()).await;
    // Many intervals pass; the client's auto-pongs keep it alive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client.is_connected());
    assert_eq!(handle.session_count(), 1);
    assert!(rx.try_recv().is_ok_and(|seen| seen == Seen::Connect));
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn close_is_graceful_and_abort_is_not() {
    let (handle, mut server_rx) =
        ws_server(ServerOptions::default(), WsOptions::default(), false).await;
    let (_client, mut rx) =
        ws_client(&handle, ClientOptions::default(), WsOptions::default()).await;
    wait_until(|| handle.session_count() == 1).await;
    let session = handle.sessions().remove(0);
    session.send("last words").await.unwrap();
    session.close_with(storm_proto::ws::CloseCode::GOING_AWAY, "bye");
    assert_eq!(next_message(&mut rx).await, Message::from("last words"));
    match next_disconnect(&mut rx).await {
        CloseReason::Remote(frame) => {
            assert_eq!((frame.code.0, frame.reason.as_str()), (1001, "bye"))
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(matches!(
        next_disconnect(&mut server_rx).await,
        CloseReason::Remote(_)
    ));
    // The first session leaves the registry after its handler ran.
    wait_until(|| handle.session_count() == 0).await;

    let (_client, mut rx) =
        ws_client(&handle, ClientOptions::default(), WsOptions::default()).await;
    wait_until(|| handle.session_count() == 1).await;
    let session = handle.sessions().remove(0);
    session.abort();
    assert_eq!(
        next_disconnect(&mut rx).await,
        CloseReason::Eof,
        "no close frame on abort"
    );
    assert_eq!(
        next_disconnect(&mut server_rx).await,
        CloseReason::Local(storm_proto::hub::CloseKind::Abort)
    );
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn drop_policy_counts_drops_and_a_stalled_reader_does_not_slow_the_others() {
    let mut options = ServerOptions::default();
    options.backpressure.max_pending_send_bytes = 64 * 1024;
    options.backpressure.slow_consumer_policy = SlowConsumerPolicy::Drop;
    options.send_buffer_size = Some(4096);
    let (handle, _rx) = ws_server(options, WsOptions::default(), false).await;
    // One raw client that upgrades and then never reads.
    let mut stalled = TcpStream::connect(handle.local_addr()).await.unwrap();
    stalled
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(ws_client(&handle, ClientOptions::default(), WsOptions::default()).await);
    }
    wait_until(|| handle.session_count() == 21).await;
    let payload = Message::from(vec![0u8; 16 * 1024]);
    const ROUNDS: usize = 200;
    for _ in 0..ROUNDS {
        let _ = handle.broadcast(payload.clone(), None);
        tokio::task::yield_now().await;
    }
    // Every reading client gets every message, though one peer never reads.
    for (_, rx) in &mut readers {
        for _ in 0..ROUNDS {
            next_message(rx).await;
        }
    }
    let dropped: u64 = handle
        .sessions()
        .iter()
        .map(|s| s.metrics().messages_dropped)
        .sum();
    assert!(dropped > 0, "the stalled session dropped messages");
    drop(stalled);
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn disconnect_policy_aborts_a_slow_consumer() {
    let mut options = ServerOptions::default();
    options.backpressure.max_pending_send_bytes = 16 * 1024;
    options.backpressure.slow_consumer_policy = SlowConsumerPolicy::Disconnect;
    options.send_buffer_size = Some(4096);
    let (handle, mut rx) = ws_server(options, WsOptions::default(), false).await;
    let mut stalled = TcpStream::connect(handle.local_addr()).await.unwrap();
    stalled
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    wait_until(|| handle.session_count() == 1).await;
    let session = handle.sessions().remove(0);
    let payload = Message::from(vec![0u8; 8 * 1024]);
    let mut refused = false;
    for _ in 0..10_000 {
        if session.send(payload.clone()).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "a consumer that never reads is disconnected");
    assert_eq!(
        next_disconnect(&mut rx).await,
        CloseReason::Local(storm_proto::hub::CloseKind::Abort)
    );
    drop(stalled);
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_client_reconnects_after_the_server_restarts() {
    let server = WsServer::bind(ServerOptions::default(), WsOptions::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let (handler, _srx) = recorder(true);
    tokio::spawn(server.serve(handler));
    let client_options = ClientOptions {
        reconnect: Some(BackoffConfig::fixed(Duration::from_millis(20))),
        ..ClientOptions::default()
    };
    let (handler, mut rx) = recorder(false);
    let client = WsClient::connect(
        &format!("ws://{addr}/"),
        client_options,
        WsOptions::default(),
        handler,
    )
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, Seen::Connect);
    handle.shutdown(WAIT).await;
    next_disconnect(&mut rx).await;
    assert_eq!(next(&mut rx).await, Seen::Reconnecting(1));
    // Restart on the same address; the client finds it.
    let options = ServerOptions {
        addr: addr.to_string(),
        ..ServerOptions::default()
    };
    let server = WsServer::bind(options, WsOptions::default()).await.unwrap();
    let handle = server.handle();
    let (handler, _srx) = recorder(true);
    tokio::spawn(server.serve(handler));
    loop {
        match next(&mut rx).await {
            Seen::Connect => break,
            Seen::Reconnecting(_) | Seen::Disconnect(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    client.send("again").await.unwrap();
    assert_eq!(next_message(&mut rx).await, Message::from("again"));
    client.close();
    timeout(WAIT, client.closed()).await.unwrap();
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn shutdown_closes_every_session_and_returns() {
    let (handle, _rx) = ws_server(ServerOptions::default(), WsOptions::default(), true).await;
    let counter = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(ws_client(&handle, ClientOptions::default(), WsOptions::default()).await);
    }
    wait_until(|| handle.session_count() == 5).await;
    timeout(WAIT, handle.shutdown(WAIT))
        .await
        .expect("shutdown returns");
    for (_, rx) in &mut clients {
        if matches!(next_disconnect(rx).await, CloseReason::Remote(f) if f.code.0 == 1000) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(
        counter.load(Ordering::Relaxed),
        5,
        "every client got a normal close frame"
    );
    assert_eq!(handle.session_count(), 0);
}
