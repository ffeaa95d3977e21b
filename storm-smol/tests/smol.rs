//! storm-smol's own wiring over real loopback sockets: async-io sockets and
//! timers, smol tasks, futures-rustls. The behaviour shared with every
//! runtime is storm-async's and is tested across adapters in `tests/`.
//! Every wait is bounded.

use std::future::Future;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use smol::channel::{Receiver, Sender, unbounded};

use storm_host::link::CloseReason;
use storm_host::options::{
    ClientOptions, ServerOptions, TlsClientOptions, TlsServerOptions, WsOptions,
};
use storm_proto::Message;
use storm_proto::framing::Framing;
use storm_proto::reconnect::BackoffConfig;
use storm_smol::{
    Client, ClientError, Handler, ServerHandle, Session, TcpClient, TcpServer, WsClient, WsServer,
};

/// The most a test waits for one event.
const WAIT: Duration = Duration::from_secs(10);

/// `future`, or a panic after [`WAIT`].
async fn within<T>(future: impl Future<Output = T>) -> T {
    smol::future::or(future, async {
        smol::Timer::after(WAIT).await;
        panic!("no result within {WAIT:?}");
    })
    .await
}

/// What a test handler saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Connect,
    Message(Message),
    Disconnect(CloseReason),
    Reconnecting(u32),
    Error(String),
}

/// Records every callback; echoes messages when asked.
struct Recorder {
    tx: Sender<Seen>,
    echo: bool,
}

impl Handler for Recorder {
    async fn on_connect(&self, _: &Session) {
        let _ = self.tx.try_send(Seen::Connect);
    }
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = self.tx.try_send(Seen::Message(message.clone()));
        if self.echo {
            let _ = session.send(message).await;
        }
    }
    async fn on_disconnect(&self, _: &Session, reason: &CloseReason) {
        let _ = self.tx.try_send(Seen::Disconnect(reason.clone()));
    }
    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        let _ = self.tx.try_send(Seen::Error(error.to_string()));
    }
    async fn on_reconnecting(&self, attempt: u32, _: Duration) {
        let _ = self.tx.try_send(Seen::Reconnecting(attempt));
    }
}

fn recorder(echo: bool) -> (Recorder, Receiver<Seen>) {
    let (tx, rx) = unbounded();
    (Recorder { tx, echo }, rx)
}

async fn next(rx: &Receiver<Seen>) -> Seen {
    within(rx.recv()).await.expect("handler alive")
}

async fn next_message(rx: &Receiver<Seen>) -> Message {
    loop {
        if let Seen::Message(message) = next(rx).await {
            return message;
        }
    }
}

async fn next_disconnect(rx: &Receiver<Seen>) -> CloseReason {
    loop {
        if let Seen::Disconnect(reason) = next(rx).await {
            return reason;
        }
    }
}

/// A WebSocket echo server on its own smol task.
async fn ws_echo_server(options: ServerOptions) -> (ServerHandle, smol::Task<std::io::Result<()>>) {
    let server = WsServer::bind(options, WsOptions::default())
        .await
        .expect("bind");
    let handle = server.handle();
    let (handler, _rx) = recorder(true);
    (handle, smol::spawn(server.serve(handler)))
}

/// A TCP echo server with `framing` on its own smol task, and a client
/// connected to it that records what it sees.
async fn tcp_echo(
    server_options: ServerOptions,
    client_options: ClientOptions,
    framing: Framing,
) -> (
    ServerHandle,
    smol::Task<std::io::Result<()>>,
    Client,
    Receiver<Seen>,
) {
    let server = TcpServer::bind(server_options, framing.clone())
        .await
        .expect("bind");
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    let (handler, _server_rx) = recorder(true);
    let serving = smol::spawn(server.serve(handler));
    let (handler, rx) = recorder(false);
    let client = within(TcpClient::connect(&addr, client_options, framing, handler))
        .await
        .expect("connect");
    (handle, serving, client, rx)
}

/// Sends each message to an echo server and expects it back, then closes
/// and expects the server's close reply.
async fn echo_and_close(client: &Client, rx: &Receiver<Seen>, messages: &[Message]) {
    for message in messages {
        client.send(message.clone()).await.expect("send");
        assert_eq!(&next_message(rx).await, message);
    }
    client.close();
    assert!(matches!(next_disconnect(rx).await, CloseReason::Remote(_)));
    within(client.closed()).await;
}

#[test]
fn websocket_echo_with_and_without_deflate() {
    smol::block_on(async {
        for deflate in [None, Some(Default::default())] {
            let mut ws = WsOptions::default();
            ws.deflate = deflate;
            let server = WsServer::bind(ServerOptions::default(), ws.clone())
                .await
                .expect("bind");
            let handle = server.handle();
            let (handler, _server_rx) = recorder(true);
            let serving = smol::spawn(server.serve(handler));
            let (handler, rx) = recorder(false);
            let url = format!("ws://{}/", handle.local_addr());
            let client = within(WsClient::connect(
                &url,
                ClientOptions::default(),
                ws,
                handler,
            ))
            .await
            .expect("connect");
            assert_eq!(next(&rx).await, Seen::Connect);
            // 1 MiB crosses many reads and partial vectored writes.
            let messages = [
                Message::from("héllo"),
                Message::from(vec![1u8, 2, 3]),
                Message::from(vec![7u8; 1 << 20]),
                Message::from(""),
            ];
            echo_and_close(&client, &rx, &messages).await;
            within(handle.shutdown(WAIT)).await;
            within(serving).await.expect("serve returns Ok");
        }
    });
}

#[test]
fn length_prefixed_and_line_echo_over_tcp() {
    smol::block_on(async {
        for framing in [
            Framing::LengthPrefix,
            Framing::Delimiter(Default::default()),
        ] {
            let (handle, serving, client, rx) =
                tcp_echo(ServerOptions::default(), ClientOptions::default(), framing).await;
            // Pipelined: all sent before any is read back.
            for i in 0..200u32 {
                client
                    .send(Message::from(format!("message {i}").into_bytes()))
                    .await
                    .expect("send");
            }
            for i in 0..200u32 {
                assert_eq!(
                    next_message(&rx).await,
                    Message::from(format!("message {i}").into_bytes())
                );
            }
            within(handle.shutdown(WAIT)).await;
            assert!(next_disconnect(&rx).await.is_normal());
            within(serving).await.expect("serve returns Ok");
        }
    });
}

/// A self-signed certificate for `localhost` and 127.0.0.1.
fn self_signed() -> (String, String) {
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("names");
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

#[test]
fn wss_echo_with_a_trusted_certificate_and_refusal_of_an_untrusted_one() {
    smol::block_on(async {
        let (cert, key) = self_signed();
        let options = ServerOptions::default().with_tls(TlsServerOptions::new(cert.clone(), key));
        let (handle, serving) = ws_echo_server(options).await;
        let port = handle.local_addr().port();
        for host in ["localhost", "127.0.0.1"] {
            let (handler, rx) = recorder(false);
            let options =
                ClientOptions::default().with_tls(TlsClientOptions::with_ca(cert.clone()));
            let url = format!("wss://{host}:{port}/");
            let client = within(WsClient::connect(
                &url,
                options,
                WsOptions::default(),
                handler,
            ))
            .await
            .expect("wss connect");
            assert_eq!(next(&rx).await, Seen::Connect);
            echo_and_close(
                &client,
                &rx,
                &[Message::from("secret"), Message::from(vec![9u8; 100_000])],
            )
            .await;
        }
        // The web roots do not trust a self-signed certificate.
        let (handler, _rx) = recorder(false);
        let url = format!("wss://localhost:{port}/");
        let refused = within(WsClient::connect(
            &url,
            ClientOptions::default(),
            WsOptions::default(),
            handler,
        ))
        .await;
        assert!(matches!(refused, Err(ClientError::Tls(_))), "{refused:?}");
        within(handle.shutdown(WAIT)).await;
        within(serving).await.expect("serve returns Ok");
    });
}

#[test]
fn a_client_reconnects_after_the_server_restarts() {
    smol::block_on(async {
        let (handle, serving) = ws_echo_server(ServerOptions::default()).await;
        let addr = handle.local_addr();
        let options = ClientOptions::default()
            .with_reconnect(BackoffConfig::fixed(Duration::from_millis(20)));
        let (handler, rx) = recorder(false);
        let url = format!("ws://{addr}/");
        let client = within(WsClient::connect(
            &url,
            options,
            WsOptions::default(),
            handler,
        ))
        .await
        .expect("connect");
        assert_eq!(next(&rx).await, Seen::Connect);
        within(handle.shutdown(WAIT)).await;
        within(serving).await.expect("serve returns Ok");
        next_disconnect(&rx).await;
        assert_eq!(next(&rx).await, Seen::Reconnecting(1));
        assert!(!client.is_connected());
        // Restart on the same address; the client finds it.
        let options = ServerOptions::default().with_addr(addr.to_string());
        let (handle, serving) = ws_echo_server(options).await;
        loop {
            match next(&rx).await {
                Seen::Connect => break,
                Seen::Reconnecting(_) | Seen::Disconnect(_) | Seen::Error(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        client.send("again").await.expect("send");
        assert_eq!(next_message(&rx).await, Message::from("again"));
        client.close();
        within(client.closed()).await;
        within(handle.shutdown(WAIT)).await;
        within(serving).await.expect("serve returns Ok");
    });
}

#[test]
fn shutdown_closes_every_session_and_serve_returns() {
    smol::block_on(async {
        let (handle, serving) = ws_echo_server(ServerOptions::default()).await;
        let url = format!("ws://{}/", handle.local_addr());
        let mut clients = Vec::new();
        for _ in 0..5 {
            let (handler, rx) = recorder(false);
            let client = within(WsClient::connect(
                &url,
                ClientOptions::default(),
                WsOptions::default(),
                handler,
            ))
            .await
            .expect("connect");
            assert_eq!(next(&rx).await, Seen::Connect);
            clients.push((client, rx));
        }
        within(async {
            while handle.session_count() < 5 {
                smol::Timer::after(Duration::from_millis(5)).await;
            }
        })
        .await;
        within(handle.shutdown(WAIT)).await;
        within(serving).await.expect("serve returns Ok");
        for (client, rx) in &clients {
            let reason = next_disconnect(rx).await;
            assert!(
                matches!(&reason, CloseReason::Remote(frame) if frame.code.0 == 1000),
                "a normal close frame, got {reason:?}"
            );
            within(client.closed()).await;
        }
        assert_eq!(handle.session_count(), 0);
    });
}

/// A read that comes back short has emptied the socket: the next one is
/// pending (it waits for readiness), and readiness then comes: what the
/// peer sends afterwards wakes the reader and is read, whole.
///
/// The peer writes only after the pending read. Written before it, the
/// bytes may be seen ready by the poller's thread (storm-smol's executor
/// thread, or async-io's) before the read is polled, and then a read that
/// returns them at once is right: whether a read *asks the socket* again
/// needlessly cannot be told race-free from outside. That cost is counted
/// in system calls per message in BENCHMARKS.md (session 14, smol).
#[test]
fn a_read_after_a_short_one_is_pending_and_readiness_brings_what_comes_later() {
    use std::io::Write;
    use std::task::{Context, Waker};
    use storm_async::runtime::{PollRead, Runtime};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    smol::block_on(async {
        let mut stream = within(storm_smol::Smol::connect(addr))
            .await
            .expect("connect");
        // The connection is established: accept returns at once.
        let (mut peer, _) = listener.accept().expect("accept");
        peer.write_all(&[1; 100]).expect("write");
        assert_eq!(read_exactly(&mut stream, 100).await, [1; 100]);
        // The last read was short, and nothing more has been sent.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            stream.poll_read(&mut cx, &mut [0; 4096]).is_pending(),
            "a read of an emptied socket is pending"
        );
        // Sent now: readiness comes, and the read gets it whole.
        peer.write_all(&[2; 50]).expect("write");
        assert_eq!(read_exactly(&mut stream, 50).await, [2; 50]);
    });
}

/// Reads `stream` until `len` bytes came, each read waited for within
/// [`WAIT`].
async fn read_exactly(stream: &mut impl storm_async::runtime::PollRead, len: usize) -> Vec<u8> {
    let mut buf = [0; 4096];
    let mut got = Vec::new();
    while got.len() < len {
        let n = within(std::future::poll_fn(|cx| stream.poll_read(cx, &mut buf)))
            .await
            .expect("read");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Message `i` of [`a_pipelined_batch_arrives_whole_and_in_order_over_tcp_and_tls`]:
/// its number, then a filler of a length that varies, so that reads end
/// anywhere in a message.
fn numbered(i: u32) -> Message {
    let mut bytes = i.to_be_bytes().to_vec();
    bytes.resize(4 + (i as usize * 37) % 1500, i as u8);
    Message::from(bytes)
}

/// Thousands of messages sent without waiting for their echoes cross
/// the server's and the client's sockets in many reads of every size, some
/// short, some full: every echo comes back, whole and in order, over plain
/// TCP and over TLS (which reads the socket through futures-io).
#[test]
fn a_pipelined_batch_arrives_whole_and_in_order_over_tcp_and_tls() {
    const COUNT: u32 = 4000;
    smol::block_on(async {
        let (cert, key) = self_signed();
        for tls in [false, true] {
            let mut options = ServerOptions::default();
            let mut client_options = ClientOptions::default();
            if tls {
                options = options.with_tls(TlsServerOptions::new(cert.clone(), key.clone()));
                client_options = client_options.with_tls(TlsClientOptions::with_ca(cert.clone()));
            }
            let (handle, serving, client, rx) =
                tcp_echo(options, client_options, Framing::LengthPrefix).await;
            assert_eq!(next(&rx).await, Seen::Connect);
            for i in 0..COUNT {
                within(client.send(numbered(i))).await.expect("send");
            }
            for i in 0..COUNT {
                assert_eq!(
                    next_message(&rx).await,
                    numbered(i),
                    "echo {i} (tls: {tls})"
                );
            }
            within(handle.shutdown(WAIT)).await;
            assert!(next_disconnect(&rx).await.is_normal());
            within(serving).await.expect("serve returns Ok");
        }
    });
}
