//! `WebSocketStream` (storm-async's `Stream + Sink` WebSocket) over real
//! loopback sockets, on tokio and on smol: echo (with permessage-deflate),
//! split halves in two tasks, the close handshake's code and reason on
//! both sides, a too-large message closing with 1009, automatic pongs;
//! and the adapters' own entry points over tokio's and smol's streams.
//!
//! Every wait is bounded by [`WAIT`] on the runtime's timer.

use std::future::{Future, poll_fn};
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use storm_async::runtime::{PollRead, PollWrite};
use storm_async::websocket::{StreamConfig, WebSocketStream, WsStreamError};
use storm_proto::Message;
use storm_proto::link::CloseReason;
use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::{CloseCode, CloseFrame, Event};
use storm_tests::suite::WAIT;
use storm_tests::suite::on_async::{Executor, bounded};
use storm_tests::suite::pki::Pki;
use storm_tests::suite::raw::{RawWs, frame, opcode};

/// A one-connection server on `R`: accepts with `config` and hands the
/// stream to `serve`, whose result comes back on the channel.
fn serve<R, T, F, Fut>(config: StreamConfig, serve: F) -> (SocketAddr, mpsc::Receiver<T>)
where
    R: Executor,
    T: Send + 'static,
    F: FnOnce(WebSocketStream<R, R::Tcp>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
{
    serve_over::<R, _, _, _, _, _, _>(config, |tcp| async { tcp }, serve)
}

/// [`serve`] over what `open` makes of the accepted socket (a TLS
/// stream, say).
fn serve_over<R, S, T, O, OFut, F, Fut>(
    config: StreamConfig,
    open: O,
    serve: F,
) -> (SocketAddr, mpsc::Receiver<T>)
where
    R: Executor,
    S: PollRead + PollWrite,
    T: Send + 'static,
    O: FnOnce(R::Tcp) -> OFut + Send + 'static,
    OFut: Future<Output = S> + Send,
    F: FnOnce(WebSocketStream<R, S>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
{
    let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std.set_nonblocking(true).expect("non-blocking");
    let addr = std.local_addr().expect("local address");
    let (tx, rx) = mpsc::channel();
    R::block_on(async move {
        let listener = R::listen(std).expect("listen");
        R::spawn(async move {
            let (tcp, _) = poll_fn(|cx| R::poll_accept(&listener, cx))
                .await
                .expect("accept");
            let ws = WebSocketStream::<R, _>::accept(open(tcp).await, &config)
                .await
                .expect("server handshake");
            let _ = tx.send(serve(ws).await);
        });
    });
    (addr, rx)
}

/// Echoes until the stream ends; returns why it ended.
async fn echo<R, S: PollRead + PollWrite>(mut ws: WebSocketStream<R, S>) -> Option<CloseReason> {
    while let Some(Ok(message)) = ws.next().await {
        if ws.send(message).await.is_err() {
            break;
        }
    }
    ws.close_reason().cloned()
}

/// Sends `text`, expects it back, closes and reads to the end.
async fn echo_once<R, S: PollRead + PollWrite>(ws: &mut WebSocketStream<R, S>, text: &str) {
    ws.send(Message::from(text)).await.expect("send");
    assert_eq!(
        ws.next().await.expect("echo").expect("ok"),
        Message::from(text)
    );
    ws.close(CloseCode::NORMAL, "").await.expect("close");
    assert!(ws.next().await.is_none());
}

fn deflate() -> StreamConfig {
    let mut config = StreamConfig::new();
    config.ws.deflate = Some(DeflateConfig::default());
    config
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

/// Text and binary echoed, compressed both ways; the client's close
/// (1000) ends both sides normally.
fn echo_text_and_binary<R: Executor>() {
    let (addr, server) = serve::<R, _, _, _>(deflate(), echo);
    let client = R::block_on(bounded::<R, _>("echo", async {
        let mut ws = WebSocketStream::<R, _>::connect(&url(addr), &deflate())
            .await
            .expect("connect");
        let big = "storm ".repeat(10_000);
        for message in [
            Message::from("hello"),
            Message::from(vec![0u8, 1, 2, 255]),
            Message::from(big.as_str()),
        ] {
            ws.send(message.clone()).await.expect("send");
            let back = ws.next().await.expect("an echo").expect("no error");
            assert_eq!(back, message);
        }
        ws.close(CloseCode::NORMAL, "done").await.expect("close");
        assert!(ws.next().await.is_none(), "the stream ends after the close");
        ws.close_reason().cloned()
    }));
    assert!(
        matches!(&client, Some(CloseReason::Remote(frame)) if frame.code == CloseCode::NORMAL),
        "{client:?}"
    );
    let server = server.recv_timeout(WAIT).expect("the server ended");
    assert!(
        matches!(&server, Some(CloseReason::Remote(frame)) if frame.code == CloseCode::NORMAL && frame.reason == "done"),
        "{server:?}"
    );
}

/// How many messages the split tests send.
const COUNT: usize = 200;

/// Sends [`COUNT`] numbered messages through `writer` in a task of its
/// own, then closes (1000); reads through `reader` until the stream ends.
/// Returns what was read.
async fn through_halves<R, Rd, Wr>(mut reader: Rd, mut writer: Wr) -> Vec<Message>
where
    R: Executor,
    Rd: Stream<Item = Result<Message, WsStreamError>> + Unpin,
    Wr: Sink<Message, Error = WsStreamError> + Unpin + Send + 'static,
{
    R::spawn(async move {
        for i in 0..COUNT {
            writer
                .send(Message::from(format!("m{i}")))
                .await
                .expect("send");
        }
        writer.close().await.expect("close");
    });
    let mut received = Vec::new();
    while let Some(message) = reader.next().await {
        received.push(message.expect("no error"));
    }
    received
}

fn numbered() -> Vec<Message> {
    (0..COUNT).map(|i| Message::from(format!("m{i}"))).collect()
}

/// `WebSocketStream::split`: the writer in a task of its own, the reader
/// here; every echo arrives, in order, and the writer's close ends the
/// reader with the server's answer.
fn split_halves_in_two_tasks<R: Executor>() {
    let (addr, _server) = serve::<R, _, _, _>(StreamConfig::new(), echo);
    let (received, reason) = R::block_on(bounded::<R, _>("split", async {
        let ws = WebSocketStream::<R, _>::connect(&url(addr), &StreamConfig::new())
            .await
            .expect("connect");
        let (mut reader, writer) = ws.split();
        let received = through_halves::<R, _, _>(&mut reader, writer).await;
        (received, reader.close_reason())
    }));
    assert_eq!(received, numbered());
    assert!(
        matches!(&reason, Some(CloseReason::Remote(frame)) if frame.code == CloseCode::NORMAL),
        "{reason:?}"
    );
}

/// The same through futures-util's `StreamExt::split` (a `BiLock`).
fn futures_split_halves_in_two_tasks<R: Executor>() {
    let (addr, _server) = serve::<R, _, _, _>(StreamConfig::new(), echo);
    let received = R::block_on(bounded::<R, _>("futures split", async {
        let ws = WebSocketStream::<R, _>::connect(&url(addr), &StreamConfig::new())
            .await
            .expect("connect");
        let (writer, reader) = StreamExt::split(ws);
        through_halves::<R, _, _>(reader, writer).await
    }));
    assert_eq!(received, numbered());
}

/// The server closes with 4000 "bye": the client's stream ends with that
/// frame, and the server's with the client's answer.
fn close_code_and_reason_seen_by_both<R: Executor>() {
    let (addr, server) = serve::<R, _, _, _>(StreamConfig::new(), |mut ws| async move {
        ws.close(CloseCode::from(4000), "bye").await.expect("close");
        assert!(ws.next().await.is_none());
        ws.close_reason().cloned()
    });
    let client = R::block_on(bounded::<R, _>("close", async {
        let mut ws = WebSocketStream::<R, _>::connect(&url(addr), &StreamConfig::new())
            .await
            .expect("connect");
        assert!(ws.next().await.is_none());
        let refused = ws.send(Message::from("late")).await;
        assert!(
            matches!(refused, Err(WsStreamError::AlreadyClosed)),
            "{refused:?}"
        );
        ws.close_reason().cloned()
    }));
    let bye = CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".to_owned(),
    };
    assert_eq!(client, Some(CloseReason::Remote(bye)));
    let server = server.recv_timeout(WAIT).expect("the server ended");
    assert!(
        matches!(&server, Some(CloseReason::Remote(frame)) if frame.code == CloseCode::from(4000)),
        "{server:?}"
    );
}

/// A message over the server's limit: the server's stream reports the
/// fault, and the client sees the 1009 close.
fn too_large_message_closes_with_1009<R: Executor>() {
    let mut small = StreamConfig::new();
    small.ws.config.max_message_size = 1024;
    let (addr, server) = serve::<R, _, _, _>(small, |mut ws| async move {
        match ws.next().await {
            Some(Err(WsStreamError::Closed(reason))) => Some(reason),
            other => panic!("expected the limit's close, got {other:?}"),
        }
    });
    let client = R::block_on(bounded::<R, _>("too large", async {
        let mut ws = WebSocketStream::<R, _>::connect(&url(addr), &StreamConfig::new())
            .await
            .expect("connect");
        ws.send(Message::from(vec![7u8; 2048])).await.expect("send");
        assert!(ws.next().await.is_none());
        ws.close_reason().cloned()
    }));
    assert!(
        matches!(&client, Some(CloseReason::Remote(frame)) if frame.code == CloseCode::MESSAGE_TOO_BIG),
        "{client:?}"
    );
    let server = server.recv_timeout(WAIT).expect("the server ended");
    assert!(
        matches!(server, Some(CloseReason::Protocol(_))),
        "{server:?}"
    );
}

/// A ping from a raw client is answered with a pong carrying its payload,
/// with no application code.
fn ping_answered_automatically<R: Executor>() {
    let (addr, _server) = serve::<R, _, _, _>(StreamConfig::new(), echo);
    let mut raw = RawWs::upgrade(addr);
    raw.send(opcode::PING, b"are you there", true);
    assert_eq!(
        raw.next_event(),
        Some(Event::Pong(bytes::Bytes::from_static(b"are you there")))
    );
    raw.send(opcode::TEXT, b"after", true);
    assert!(matches!(raw.next_event(), Some(Event::Text(text)) if &*text == "after"));
}

/// `connect` to a `wss://` URL with the test CA in `StreamConfig::tls`;
/// the server runs `accept` over the runtime's TLS stream.
fn echo_over_tls<R: Executor>() {
    let pki = Pki::new();
    let server_tls = storm_host::tls::server_config(&pki.server()).expect("server TLS");
    let tls_accept = move |tcp| async move {
        R::tls_accept(server_tls.into(), tcp)
            .await
            .expect("TLS handshake")
    };
    let (addr, _server) = serve_over::<R, _, _, _, _, _, _>(StreamConfig::new(), tls_accept, echo);
    let mut config = StreamConfig::new();
    config.tls = Some(pki.client());
    R::block_on(bounded::<R, _>("wss", async {
        let url = format!("wss://localhost:{}/", addr.port());
        let mut ws = WebSocketStream::<R, _>::connect(&url, &config)
            .await
            .expect("connect over TLS");
        echo_once(&mut ws, "secret").await;
    }));
}

/// A peer that pings as fast as it can and never reads: the stream
/// stops reading once the pongs it owes fill its write limit, so the
/// peer's writes stall after about the limit plus the socket buffers,
/// instead of the stream queueing a pong per ping. The flood is bounded:
/// 300,000 pings of 125 bytes (39 MB), for at most [`WAIT`].
fn ping_flood_from_a_peer_that_never_reads<R: Executor>() {
    /// A ping from a client: header, mask and payload.
    const PING: usize = 2 + 4 + 125;
    let mut config = StreamConfig::new();
    config.write_limit = 64 * 1024;
    config.link.heartbeat.interval = Duration::ZERO;
    let small_send_buffer = |tcp: R::Tcp| async move {
        let socket = R::socket(&tcp);
        socket.set_send_buffer_size(4096).expect("send buffer");
        tcp
    };
    let (addr, _server) = serve_over::<R, _, _, _, _, _, _>(config, small_send_buffer, echo);
    let mut raw = RawWs::upgrade(addr);
    let batch = frame(opcode::PING, &[b'p'; 125], true).repeat(100);
    raw.stream
        .set_write_timeout(Some(Duration::from_millis(50)))
        .expect("write timeout");
    let deadline = Instant::now() + WAIT;
    // Stalled: 20 writes in a row (1 s) took nothing. Small socket
    // buffers make a reading peer pause too, but not for that long.
    let (mut written, mut idle, mut stalled) = (0, 0, false);
    while written < 300_000 * PING && Instant::now() < deadline {
        match raw.stream.write(&batch[written % batch.len()..]) {
            Ok(n) => {
                written += n;
                idle = 0;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                idle += 1;
                if idle == 20 {
                    stalled = true;
                    break;
                }
            }
            Err(e) => panic!("ping flood: {e}"),
        }
    }
    // What the peer got rid of: what the stream read (pongs within its
    // limit), the server's receive buffer and the peer's send buffer
    // (autotuned up to 4 MiB on Linux).
    assert!(
        stalled && written <= 8 << 20,
        "the stream kept reading pings it could not answer: {written} bytes taken"
    );
}

storm_tests::on_async_runtimes!(
    echo_text_and_binary,
    echo_over_tls,
    split_halves_in_two_tasks,
    futures_split_halves_in_two_tasks,
    close_code_and_reason_seen_by_both,
    too_large_message_closes_with_1009,
    ping_answered_automatically,
    ping_flood_from_a_peer_that_never_reads,
);

/// storm-tokio's entry points over tokio's own `TcpStream`.
#[test]
fn tokio_adapter_over_tokio_streams() {
    <storm_tokio::Tokio as Executor>::block_on(bounded::<storm_tokio::Tokio, _>("tokio", async {
        let listener = ::tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = ::tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let ws = storm_tokio::websocket::accept(tcp, &StreamConfig::new())
                .await
                .expect("server handshake");
            echo(ws).await
        });
        let tcp = ::tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let mut ws = storm_tokio::websocket::client_async(&url(addr), tcp, &StreamConfig::new())
            .await
            .expect("client handshake");
        echo_once(&mut ws, "over tokio").await;
        let reason = server.await.expect("server task");
        assert!(matches!(reason, Some(CloseReason::Remote(_))), "{reason:?}");
    }));
}

/// storm-smol's entry points over smol's own `TcpStream`.
#[test]
fn smol_adapter_over_smol_streams() {
    ::smol::block_on(bounded::<storm_smol::Smol, _>("smol", async {
        let listener = ::smol::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = ::smol::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let ws = storm_smol::websocket::accept(tcp, &StreamConfig::new())
                .await
                .expect("server handshake");
            echo(ws).await
        });
        let tcp = ::smol::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let mut ws = storm_smol::websocket::client_async(&url(addr), tcp, &StreamConfig::new())
            .await
            .expect("client handshake");
        echo_once(&mut ws, "over smol").await;
        let reason = server.await;
        assert!(matches!(reason, Some(CloseReason::Remote(_))), "{reason:?}");
    }));
}
