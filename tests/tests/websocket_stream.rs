//! `WebSocketStream` (storm-async's `Stream + Sink` WebSocket) over real
//! loopback sockets, on tokio and on smol: echo (with permessage-deflate),
//! split halves in two tasks, the close handshake's code and reason on
//! both sides, a too-large message closing with 1009, automatic pongs,
//! `accept_hdr`'s upgrade hook (refusing, choosing a subprotocol,
//! attaching a value, bounded by the handshake timeout); and the adapters'
//! own entry points over tokio's and smol's streams.
//!
//! Every wait is bounded by [`WAIT`] on the runtime's timer.

use std::future::{Future, poll_fn};
use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use storm_async::runtime::{PollRead, PollWrite};
use storm_async::websocket::{StreamConfig, WebSocketStream, WsStreamError};
use storm_host::setup::{Decision, UpgradeInfo, UpgradeResponse};
use storm_proto::Message;
use storm_proto::link::CloseReason;
use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::{CloseCode, CloseFrame, Event};
use storm_tests::suite::WAIT;
use storm_tests::suite::on_async::{Executor, bounded};
use storm_tests::suite::pki::Pki;
use storm_tests::suite::raw::{self, RawWs, frame, opcode};

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
    serve_tcp::<R, _, _, _>(|tcp| async move {
        let ws = WebSocketStream::<R, _>::accept(open(tcp).await, &config)
            .await
            .expect("server handshake");
        serve(ws).await
    })
}

/// A one-connection server on `R`: hands the accepted socket to `serve`,
/// whose result comes back on the channel.
fn serve_tcp<R, T, F, Fut>(serve: F) -> (SocketAddr, mpsc::Receiver<T>)
where
    R: Executor,
    T: Send + 'static,
    F: FnOnce(R::Tcp) -> Fut + Send + 'static,
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
            let _ = tx.send(serve(tcp).await);
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

/// What the server side of an `accept_hdr` came to: the stream's
/// subprotocol and attached [`Room`], or the handshake's error.
type Accepted = Result<(Option<String>, Option<Room>), io::Error>;

/// The value the tests' hooks attach.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Room(String);

/// A one-connection server on `R` that accepts through `accept_hdr` with
/// `hook`, reports what the handshake came to, and then echoes.
fn serve_hdr<R, F, Fut>(config: StreamConfig, hook: F) -> (SocketAddr, mpsc::Receiver<Accepted>)
where
    R: Executor,
    F: Fn(UpgradeInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Decision> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let (addr, _ended) = serve_tcp::<R, _, _, _>(move |tcp| async move {
        match WebSocketStream::<R, _>::accept_hdr(tcp, &config, hook).await {
            Ok(ws) => {
                let seen = (
                    ws.subprotocol().map(str::to_owned),
                    ws.attached::<Room>().cloned(),
                );
                let _ = tx.send(Ok(seen));
                echo(ws).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    (addr, rx)
}

/// A hook that refuses `/private` with 403 and a body: a raw client reads
/// exactly that response and the end of the connection, and `accept_hdr`
/// returns an error that says the application refused.
fn accept_hdr_refuses_by_path_with_403<R: Executor>() {
    let hook = |info: UpgradeInfo| async move {
        match info.path() {
            "/private" => Decision::reject(403).body("not here\n"),
            _ => Decision::accept(),
        }
    };
    let (addr, server) = serve_hdr::<R, _, _>(StreamConfig::new(), hook);
    let mut stream = RawWs::request_with(addr, "/private", "");
    let response = raw::read_all(&mut stream);
    assert_eq!(
        String::from_utf8_lossy(&response),
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 9\r\nConnection: close\r\n\r\nnot here\n"
    );
    let refused = server.recv_timeout(WAIT).expect("the server ended");
    let error = refused.expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{error}");
    assert!(error.to_string().contains("rejected with 403"), "{error}");
}

/// A hook that accepts choosing the client's second subprotocol (the
/// server has none of its own), adding a header and attaching a value:
/// Storm's client reads the subprotocol and the header from its stream,
/// the server's stream has the subprotocol and the value.
fn accept_hdr_picks_a_subprotocol_seen_by_the_client<R: Executor>() {
    let hook = |_: UpgradeInfo| async {
        Decision::accept()
            .subprotocol("chat.v2")
            .header("X-Hook", "yes")
            .attach(Room("lobby".to_owned()))
    };
    let (addr, server) = serve_hdr::<R, _, _>(StreamConfig::new(), hook);
    let mut config = StreamConfig::new();
    config.ws.subprotocols = vec!["chat.v1".to_owned(), "chat.v2".to_owned()];
    R::block_on(bounded::<R, _>("subprotocol", async {
        let mut ws = WebSocketStream::<R, _>::connect(&url(addr), &config)
            .await
            .expect("connect");
        assert_eq!(ws.subprotocol(), Some("chat.v2"));
        let response = ws.attached::<UpgradeResponse>().expect("the 101's view");
        assert_eq!(response.subprotocol.as_deref(), Some("chat.v2"));
        assert_eq!(response.headers.get("x-hook"), Some(&b"yes"[..]));
        echo_once(&mut ws, "chosen").await;
    }));
    let accepted = server.recv_timeout(WAIT).expect("the server accepted");
    assert_eq!(
        accepted.expect("accepted"),
        (Some("chat.v2".to_owned()), Some(Room("lobby".to_owned())))
    );
}

/// The hook sees the request's path, query and headers (the client's
/// extra ones), and what it attaches comes from them.
fn accept_hdr_hook_sees_path_query_and_headers<R: Executor>() {
    let (seen_tx, seen) = mpsc::channel();
    let seen_tx = std::sync::Mutex::new(seen_tx);
    let hook = move |info: UpgradeInfo| {
        let room = info.query_param("room").unwrap_or_default();
        let header = |name| info.headers().get(name).map(<[u8]>::to_vec);
        let request = (
            info.path().to_owned(),
            room.clone(),
            header("Authorization"),
            header("Cookie"),
        );
        let _ = seen_tx.lock().expect("sender").send(request);
        std::future::ready(Decision::accept().attach(Room(room)))
    };
    let (addr, server) = serve_hdr::<R, _, _>(StreamConfig::new(), hook);
    let mut config = StreamConfig::new();
    config.headers = vec![
        ("Authorization".to_owned(), "Bearer sesame".to_owned()),
        ("Cookie".to_owned(), "id=7".to_owned()),
    ];
    R::block_on(bounded::<R, _>("request", async {
        let url = format!("ws://{addr}/chat?room=a%20b&x=1");
        let mut ws = WebSocketStream::<R, _>::connect(&url, &config)
            .await
            .expect("connect");
        echo_once(&mut ws, "seen").await;
    }));
    assert_eq!(
        seen.recv_timeout(WAIT).expect("the hook ran"),
        (
            "/chat".to_owned(),
            "a b".to_owned(),
            Some(b"Bearer sesame".to_vec()),
            Some(b"id=7".to_vec()),
        )
    );
    let accepted = server.recv_timeout(WAIT).expect("the server accepted");
    assert_eq!(accepted.expect("accepted").1, Some(Room("a b".to_owned())));
}

/// A hook that never decides is cut off by the handshake timeout: the
/// client's connection is closed without a response, and `accept_hdr`
/// returns `TimedOut`.
fn accept_hdr_slow_hook_is_cut_off_by_the_handshake_timeout<R: Executor>() {
    let mut config = StreamConfig::new();
    config.handshake_timeout = Duration::from_millis(200);
    let (addr, server) = serve_hdr::<R, _, _>(config, |_| std::future::pending());
    let mut stream = RawWs::request_with(addr, "/", "");
    assert_eq!(raw::read_to_close(&mut stream), 0, "no response");
    let error = server
        .recv_timeout(WAIT)
        .expect("the server ended")
        .expect_err("timed out");
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
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
    accept_hdr_refuses_by_path_with_403,
    accept_hdr_picks_a_subprotocol_seen_by_the_client,
    accept_hdr_hook_sees_path_query_and_headers,
    accept_hdr_slow_hook_is_cut_off_by_the_handshake_timeout,
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

/// A client offering two subprotocols, for the adapters' `accept_hdr`.
fn offering_two() -> StreamConfig {
    let mut config = StreamConfig::new();
    config.ws.subprotocols = vec!["one".to_owned(), "two".to_owned()];
    config
}

/// The hook the adapters' `accept_hdr` tests choose with.
fn choose_two(_: UpgradeInfo) -> std::future::Ready<Decision> {
    std::future::ready(Decision::accept().subprotocol("two"))
}

/// storm-tokio's `accept_hdr` over tokio's own `TcpStream`: the hook's
/// subprotocol on both ends.
#[test]
fn tokio_accept_hdr_over_tokio_streams() {
    <storm_tokio::Tokio as Executor>::block_on(bounded::<storm_tokio::Tokio, _>("tokio", async {
        let listener = ::tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = ::tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let ws = storm_tokio::websocket::accept_hdr(tcp, &StreamConfig::new(), choose_two)
                .await
                .expect("server handshake");
            assert_eq!(ws.subprotocol(), Some("two"));
            echo(ws).await
        });
        let tcp = ::tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let mut ws = storm_tokio::websocket::client_async(&url(addr), tcp, &offering_two())
            .await
            .expect("client handshake");
        assert_eq!(ws.subprotocol(), Some("two"));
        echo_once(&mut ws, "over tokio").await;
        server.await.expect("server task");
    }));
}

/// storm-smol's `accept_hdr` over smol's own `TcpStream`.
#[test]
fn smol_accept_hdr_over_smol_streams() {
    ::smol::block_on(bounded::<storm_smol::Smol, _>("smol", async {
        let listener = ::smol::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = ::smol::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let ws = storm_smol::websocket::accept_hdr(tcp, &StreamConfig::new(), choose_two)
                .await
                .expect("server handshake");
            assert_eq!(ws.subprotocol(), Some("two"));
            echo(ws).await
        });
        let tcp = ::smol::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let mut ws = storm_smol::websocket::client_async(&url(addr), tcp, &offering_two())
            .await
            .expect("client handshake");
        assert_eq!(ws.subprotocol(), Some("two"));
        echo_once(&mut ws, "over smol").await;
        server.await;
    }));
}
