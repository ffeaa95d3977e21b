//! storm-std over TLS, on real loopback sockets, with certificates made at
//! test time by rcgen: a CA, a server certificate for `localhost` and
//! 127.0.0.1, and client certificates. Also std against tokio over TLS,
//! both ways. Every wait is bounded.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use storm_host::link::CloseReason;
use storm_host::options::{
    ClientOptions, ServerOptions, TlsClientCert, TlsClientOptions, TlsServerOptions, WsOptions,
};
use storm_proto::Message;
use storm_proto::framing::Framing;
use storm_std::{
    Client, ClientError, Handler, ServerHandle, Session, TcpClient, TcpServer, WsClient, WsServer,
};

/// The most any test waits for one event.
const WAIT: Duration = Duration::from_secs(10);

use storm_tests::suite::pki::Pki;

/// What a test handler saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Connect,
    Message(Message),
    Disconnect(CloseReason),
    /// `on_error`: the I/O error kind (if it is one) and the text.
    Error(Option<io::ErrorKind>, String),
}

/// Records everything; echoes when asked.
struct Recorder {
    tx: Sender<Seen>,
    echo: bool,
}

impl Handler for Recorder {
    fn on_connect(&self, _: &Session) {
        let _ = self.tx.send(Seen::Connect);
    }
    fn on_message(&self, session: &Session, message: Message) {
        let _ = self.tx.send(Seen::Message(message.clone()));
        if self.echo {
            let _ = session.send_blocking(message);
        }
    }
    fn on_disconnect(&self, _: &Session, reason: &CloseReason) {
        let _ = self.tx.send(Seen::Disconnect(reason.clone()));
    }
    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        let kind = error.downcast_ref::<io::Error>().map(io::Error::kind);
        let _ = self.tx.send(Seen::Error(kind, error.to_string()));
    }
}

fn recorder(echo: bool) -> (Recorder, Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    (Recorder { tx, echo }, rx)
}

fn next(rx: &Receiver<Seen>) -> Seen {
    rx.recv_timeout(WAIT).expect("event in time")
}

fn next_message(rx: &Receiver<Seen>) -> Message {
    loop {
        if let Seen::Message(message) = next(rx) {
            return message;
        }
    }
}

fn next_disconnect(rx: &Receiver<Seen>) -> CloseReason {
    loop {
        if let Seen::Disconnect(reason) = next(rx) {
            return reason;
        }
    }
}

fn next_error(rx: &Receiver<Seen>) -> (Option<io::ErrorKind>, String) {
    loop {
        if let Seen::Error(kind, text) = next(rx) {
            return (kind, text);
        }
    }
}

/// Waits, within [`WAIT`], until `condition` holds.
fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A running server: its handle, the accept thread, what its handler saw.
struct Running {
    handle: ServerHandle,
    thread: JoinHandle<io::Result<()>>,
    rx: Receiver<Seen>,
}

impl Running {
    fn port(&self) -> u16 {
        self.handle.local_addr().port()
    }

    fn shutdown(self) {
        self.handle.shutdown(WAIT);
        self.thread.join().expect("accept thread").expect("serve");
    }
}

fn tls_server_options(tls: TlsServerOptions) -> ServerOptions {
    ServerOptions::default().with_tls(tls)
}

fn wss_server(options: ServerOptions) -> Running {
    let server = WsServer::bind(options, WsOptions::default()).expect("bind");
    let handle = server.handle();
    let (handler, rx) = recorder(true);
    let thread = server.spawn(handler).expect("spawn");
    Running { handle, thread, rx }
}

fn tls_tcp_server(options: ServerOptions) -> Running {
    let server = TcpServer::bind(options, Framing::LengthPrefix).expect("bind");
    let handle = server.handle();
    let (handler, rx) = recorder(true);
    let thread = server.spawn(handler).expect("spawn");
    Running { handle, thread, rx }
}

/// Connects within [`WAIT`] (the connect timeout), or says why not.
fn wss_connect(
    url: &str,
    tls: Option<TlsClientOptions>,
) -> (Result<Client, ClientError>, Receiver<Seen>) {
    let (handler, rx) = recorder(false);
    let mut options = ClientOptions::default().with_connect_timeout(WAIT);
    options.tls = tls;
    let started = Instant::now();
    let client = WsClient::connect(url, options, WsOptions::default(), handler);
    assert!(started.elapsed() <= WAIT + Duration::from_secs(1));
    (client, rx)
}

/// Sends each message through `client` (to an echo server), checks that it
/// comes back unchanged, then closes and checks the close handshake.
fn echo_and_close(client: &Client, rx: &Receiver<Seen>, messages: &[Message]) {
    for message in messages {
        client.send(message.clone()).unwrap();
        assert_eq!(&next_message(rx), message);
    }
    client.close();
    assert!(matches!(next_disconnect(rx), CloseReason::Remote(_)));
    assert!(client.closed_timeout(WAIT));
}

#[test]
fn websocket_echo_over_wss_trusting_the_ca() {
    let pki = Pki::named("storm test CA");
    let server = wss_server(tls_server_options(pki.server()));
    // The certificate names both; the client checks the URL's host.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("wss://{host}:{}/chat", server.port());
        let (client, rx) = wss_connect(&url, Some(pki.client()));
        let client = client.expect("wss connect");
        assert_eq!(next(&rx), Seen::Connect);
        echo_and_close(
            &client,
            &rx,
            &[
                Message::from("héllo over TLS"),
                Message::from(vec![1, 2, 3]),
                // 1 MiB each way.
                Message::from(vec![9u8; 1 << 20]),
            ],
        );
        assert!(matches!(
            next_disconnect(&server.rx),
            CloseReason::Remote(_)
        ));
    }
    // Sessions leave the registry once their threads are done.
    wait_until(|| server.handle.session_count() == 0);
    server.shutdown();
}

#[test]
fn framed_tcp_echo_over_tls_with_small_socket_buffers() {
    let pki = Pki::named("storm test CA");
    // Small socket buffers make writes stop part-way, so TLS records wait
    // in the writer while the reader keeps decrypting.
    let server = tls_tcp_server(
        tls_server_options(pki.server())
            .with_send_buffer_size(4096)
            .with_recv_buffer_size(4096),
    );
    let (handler, rx) = recorder(false);
    let options = ClientOptions::default().with_tls(pki.client());
    let addr = format!("localhost:{}", server.port());
    let client =
        TcpClient::connect(&addr, options, Framing::LengthPrefix, handler).expect("TLS connect");
    assert_eq!(next(&rx), Seen::Connect);
    let big = Message::from((0..1u32 << 20).map(|i| i as u8).collect::<Vec<u8>>());
    for i in 0..100u32 {
        client
            .send(Message::from(format!("message {i}").into_bytes()))
            .unwrap();
    }
    client.send(big.clone()).unwrap();
    client.send(big.clone()).unwrap();
    for i in 0..100u32 {
        assert_eq!(
            next_message(&rx),
            Message::from(format!("message {i}").into_bytes())
        );
    }
    assert_eq!(next_message(&rx), big);
    assert_eq!(next_message(&rx), big);
    assert_eq!(server.handle.session_count(), 1);
    // A graceful shutdown reaches the client through TLS (close_notify
    // after the last record), as a clean end of stream.
    server.handle.shutdown(WAIT);
    assert!(next_disconnect(&rx).is_normal());
    assert!(client.closed_timeout(WAIT));
    server.thread.join().unwrap().unwrap();
}

/// A length-prefixed frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Sends one frame through a raw rustls client and reads the echo.
fn raw_echo(conn: &mut rustls::ClientConnection, tcp: &mut TcpStream, payload: &[u8]) {
    let mut tls = rustls::Stream::new(conn, tcp);
    tls.write_all(&frame(payload)).unwrap();
    tls.flush().unwrap();
    let mut echo = vec![0u8; payload.len() + 4];
    tls.read_exact(&mut echo).unwrap();
    assert_eq!(echo, frame(payload));
}

#[test]
fn a_tls_key_update_from_the_peer_keeps_both_directions_working() {
    let pki = Pki::named("storm test CA");
    let server = tls_tcp_server(tls_server_options(pki.server()));
    let config = storm_host::tls::client_config(&pki.client()).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = TcpStream::connect(server.handle.local_addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    // The handshake, the session tickets, and one echo.
    raw_echo(&mut conn, &mut tcp, b"before");
    // A TLS 1.3 key update that asks the server to update its keys too:
    // the server's reader decrypts with the new keys from then on, and its
    // writer sends its own key update (rustls queues it) before the echo.
    for round in 0..3 {
        conn.refresh_traffic_keys().unwrap();
        raw_echo(
            &mut conn,
            &mut tcp,
            format!("after key update {round}").as_bytes(),
        );
    }
    drop(tcp);
    assert!(next_disconnect(&server.rx).is_normal());
    server.shutdown();
}

#[test]
fn a_client_that_does_not_trust_the_server_fails_without_hanging() {
    let pki = Pki::named("storm test CA");
    let stranger = Pki::named("another CA");
    let server = wss_server(tls_server_options(pki.server()));
    let url = format!("wss://localhost:{}/", server.port());
    // The public web roots (no CA configured), another CA, and the right CA
    // with a name the certificate does not carry.
    let wrong_name = pki.client().with_server_name("example.com");
    for tls in [None, Some(stranger.client()), Some(wrong_name)] {
        let (client, _rx) = wss_connect(&url, tls);
        match client {
            Err(ClientError::Tls(e)) => {
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            other => panic!("expected a TLS error, got {other:?}"),
        }
        // The server saw the handshake fail; no session was made.
        let (_, text) = next_error(&server.rx);
        assert!(text.contains("TLS handshake failed"), "{text}");
    }
    assert_eq!(server.handle.session_count(), 0);
    server.shutdown();
}

#[test]
fn plain_and_tls_do_not_mix() {
    let pki = Pki::named("storm test CA");
    let server = wss_server(tls_server_options(pki.server()));
    // A plain client at a TLS server fails at once: the server answers its
    // request with an alert and closes.
    let (client, _rx) = wss_connect(&format!("ws://127.0.0.1:{}/", server.port()), None);
    assert!(
        matches!(client, Err(ClientError::Io(_) | ClientError::Handshake(_))),
        "{client:?}"
    );
    // TLS options with a ws:// URL are refused before connecting.
    let (client, _rx) = wss_connect(
        &format!("ws://127.0.0.1:{}/", server.port()),
        Some(pki.client()),
    );
    assert!(
        matches!(client, Err(ClientError::Config(ref e)) if e.contains("wss://")),
        "{client:?}"
    );
    // A TLS client at a plain server fails too, once the server gives up
    // waiting for an HTTP request in the ClientHello.
    let plain =
        wss_server(ServerOptions::default().with_handshake_timeout(Duration::from_millis(200)));
    let url = format!("wss://127.0.0.1:{}/", plain.port());
    let (client, _rx) = wss_connect(&url, Some(pki.client()));
    assert!(matches!(client, Err(ClientError::Tls(_))), "{client:?}");
    server.shutdown();
    plain.shutdown();
}

#[test]
fn client_certificates_from_the_ca_are_required() {
    let pki = Pki::named("storm test CA");
    let stranger = Pki::named("another CA");
    let server = wss_server(tls_server_options(
        pki.server().with_client_ca(pki.ca_pem.clone()),
    ));
    let url = format!("wss://localhost:{}/", server.port());

    // Accepted with a certificate the CA signed.
    let with_cert = pki.client().with_client_cert(pki.client_cert());
    let (client, rx) = wss_connect(&url, Some(with_cert));
    let client = client.expect("a client with a certificate connects");
    client.send("authenticated").unwrap();
    assert_eq!(next_message(&rx), Message::from("authenticated"));
    assert_eq!(next(&server.rx), Seen::Connect);
    client.close();
    assert!(client.closed_timeout(WAIT));
    assert!(matches!(
        next_disconnect(&server.rx),
        CloseReason::Remote(_)
    ));

    // Refused without a certificate, and with one from another CA.
    let foreign_cert = pki.client().with_client_cert(stranger.client_cert());
    for tls in [pki.client(), foreign_cert] {
        let (client, _rx) = wss_connect(&url, Some(tls));
        assert!(matches!(client, Err(ClientError::Tls(_))), "{client:?}");
        let (_, text) = next_error(&server.rx);
        assert!(text.contains("TLS handshake failed"), "{text}");
    }
    wait_until(|| server.handle.session_count() == 0);
    server.shutdown();
}

#[test]
fn a_client_that_never_starts_tls_times_out() {
    let pki = Pki::named("storm test CA");
    let options =
        tls_server_options(pki.server()).with_handshake_timeout(Duration::from_millis(200));
    for server in [wss_server(options.clone()), tls_tcp_server(options)] {
        let mut raw = TcpStream::connect(server.handle.local_addr()).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        let n = raw.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without a byte");
        let (kind, text) = next_error(&server.rx);
        assert_eq!(kind, Some(io::ErrorKind::TimedOut), "{text}");
        assert!(text.contains("TLS") && text.contains("timed out"), "{text}");
        assert_eq!(server.handle.session_count(), 0);
        server.shutdown();
    }
}

#[test]
fn bad_certificates_and_keys_fail_at_bind() {
    let pki = Pki::named("storm test CA");
    let other = Pki::named("another CA");
    let cases = [
        (
            TlsServerOptions::new("", pki.server_key_pem.clone()),
            "cert_chain_pem",
        ),
        (
            TlsServerOptions::new(pki.server_cert_pem.clone(), ""),
            "key_pem",
        ),
        (
            // The key of another certificate.
            TlsServerOptions::new(pki.server_cert_pem.clone(), other.server_key_pem.clone()),
            "key_pem",
        ),
        (pki.server().with_client_ca("no CA here"), "client_ca_pem"),
    ];
    for (tls, field) in cases {
        let err = WsServer::bind(tls_server_options(tls), WsOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    // A client's bad CA or certificate fails before connecting.
    let bad_ca = TlsClientOptions::with_ca("no CA here");
    let bad_cert = pki
        .client()
        .with_client_cert(TlsClientCert::new(pki.client_cert_pem.clone(), ""));
    for tls in [bad_ca, bad_cert] {
        let (client, _rx) = wss_connect("wss://127.0.0.1:1/", Some(tls));
        assert!(matches!(client, Err(ClientError::Config(_))), "{client:?}");
    }
}

#[test]
fn pem_files_load_into_the_options() {
    let pki = Pki::named("storm test CA");
    let dir = std::env::temp_dir().join(format!("storm-std-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ca = dir.join("ca.pem");
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let tls = storm_std::tls::server_options_from_pem_files(&cert, &key).unwrap();
    assert_eq!(tls, pki.server());
    let client_tls = TlsClientOptions::with_ca(storm_std::tls::read_pem_file(&ca).unwrap());
    let client_cert = storm_std::tls::client_cert_from_pem_files(&cert, &key).unwrap();
    assert_eq!(client_cert.key_pem, pki.server_key_pem.as_bytes());
    std::fs::remove_dir_all(&dir).unwrap();

    let server = wss_server(tls_server_options(tls));
    let url = format!("wss://localhost:{}/", server.port());
    let (client, rx) = wss_connect(&url, Some(client_tls));
    let client = client.expect("connect");
    echo_and_close(&client, &rx, &[Message::from("from files")]);
    server.shutdown();
}

/// Mixed pairs: the two adapters speak the same TLS.
mod with_tokio {
    use super::*;

    /// Records; echoes when asked.
    struct TokioRecorder {
        tx: Sender<Seen>,
        echo: bool,
    }

    impl storm_tokio::Handler for TokioRecorder {
        async fn on_connect(&self, _: &storm_tokio::Session) {
            let _ = self.tx.send(Seen::Connect);
        }
        async fn on_message(&self, session: &storm_tokio::Session, message: Message) {
            let _ = self.tx.send(Seen::Message(message.clone()));
            if self.echo {
                let _ = session.send(message).await;
            }
        }
        async fn on_disconnect(&self, _: &storm_tokio::Session, reason: &CloseReason) {
            let _ = self.tx.send(Seen::Disconnect(reason.clone()));
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn std_wss_client_against_a_tokio_wss_server_with_a_client_certificate() {
        let pki = Pki::named("storm test CA");
        let rt = runtime();
        let (tx, server_rx) = mpsc::channel();
        let options = tls_server_options(pki.server().with_client_ca(pki.ca_pem.clone()));
        let server = rt
            .block_on(storm_tokio::WsServer::bind(options, WsOptions::default()))
            .unwrap();
        let handle = server.handle();
        rt.spawn(server.serve(TokioRecorder { tx, echo: true }));
        let url = format!("wss://localhost:{}/", handle.local_addr().port());
        let tls = pki.client().with_client_cert(pki.client_cert());
        let (client, rx) = wss_connect(&url, Some(tls));
        let client = client.expect("std client connects to the tokio server");
        assert_eq!(next(&rx), Seen::Connect);
        for message in [Message::from("from std"), Message::from(vec![7u8; 1 << 20])] {
            client.send(message.clone()).unwrap();
            assert_eq!(next_message(&rx), message);
            assert_eq!(next_message(&server_rx), message);
        }
        client.close();
        assert!(matches!(next_disconnect(&rx), CloseReason::Remote(_)));
        assert!(matches!(
            next_disconnect(&server_rx),
            CloseReason::Remote(_)
        ));
        assert!(client.closed_timeout(WAIT));
        // Without its certificate, the tokio server refuses the std client.
        let (client, _rx) = wss_connect(&url, Some(pki.client()));
        assert!(matches!(client, Err(ClientError::Tls(_))), "{client:?}");
        rt.block_on(async {
            tokio::time::timeout(WAIT, handle.shutdown(WAIT))
                .await
                .expect("tokio shutdown in time");
        });
    }

    #[test]
    fn tokio_tls_client_against_a_std_tls_server() {
        let pki = Pki::named("storm test CA");
        let rt = runtime();
        let server = tls_tcp_server(tls_server_options(pki.server()));
        let (tx, rx) = mpsc::channel();
        let options = ClientOptions::default().with_tls(pki.client());
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    WAIT,
                    storm_tokio::TcpClient::connect(
                        &format!("localhost:{}", server.port()),
                        options,
                        Framing::LengthPrefix,
                        TokioRecorder { tx, echo: false },
                    ),
                )
                .await
            })
            .expect("connect in time")
            .expect("tokio client connects to the std server");
        assert_eq!(next(&rx), Seen::Connect);
        assert_eq!(next(&server.rx), Seen::Connect);
        let big = Message::from(vec![3u8; 1 << 20]);
        for message in [Message::from(b"from tokio".to_vec()), big] {
            rt.block_on(client.send(message.clone())).unwrap();
            assert_eq!(next_message(&server.rx), message);
            assert_eq!(next_message(&rx), message);
        }
        client.close();
        assert!(next_disconnect(&rx).is_normal());
        assert!(next_disconnect(&server.rx).is_normal());
        rt.block_on(async {
            tokio::time::timeout(WAIT, client.closed())
                .await
                .expect("tokio client closed in time");
        });
        server.shutdown();
    }
}
