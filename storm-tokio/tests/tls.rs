//! TLS over real loopback sockets, with certificates made at test time by
//! rcgen: a CA, a server certificate for `localhost` and 127.0.0.1, and
//! client certificates. Every wait is bounded.

use std::io;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;

use common::{Seen, WAIT, echo_and_close, next, next_disconnect, next_message, recorder};
use storm_host::link::CloseReason;
use storm_host::options::{
    ClientOptions, ServerOptions, TlsClientCert, TlsClientOptions, TlsServerOptions, WsOptions,
};
use storm_proto::Message;
use storm_proto::framing::Framing;
use storm_tokio::{Client, ClientError, ServerHandle, TcpClient, TcpServer, WsClient, WsServer};

use storm_tests::suite::pki::Pki;

/// The next `on_error`: its kind and text.
async fn next_error(rx: &mut mpsc::UnboundedReceiver<Seen>) -> (Option<io::ErrorKind>, String) {
    loop {
        if let Seen::Error(kind, text) = next(rx).await {
            return (kind, text);
        }
    }
}

fn tls_server_options(tls: TlsServerOptions) -> ServerOptions {
    ServerOptions::default().with_tls(tls)
}

async fn wss_server(options: ServerOptions) -> (ServerHandle, mpsc::UnboundedReceiver<Seen>) {
    let server = WsServer::bind(options, WsOptions::default())
        .await
        .expect("bind");
    let handle = server.handle();
    let (handler, rx) = recorder(true);
    tokio::spawn(server.serve(handler));
    (handle, rx)
}

async fn wss_connect(
    url: &str,
    tls: Option<TlsClientOptions>,
) -> (Result<Client, ClientError>, mpsc::UnboundedReceiver<Seen>) {
    let (handler, rx) = recorder(false);
    let mut options = ClientOptions::default();
    options.tls = tls;
    let client = timeout(
        WAIT,
        WsClient::connect(url, options, WsOptions::default(), handler),
    )
    .await
    .expect("connect finishes in time");
    (client, rx)
}

#[tokio::test]
async fn websocket_echo_over_wss_trusting_the_ca() {
    let pki = Pki::named("storm test CA");
    let (handle, _server_rx) = wss_server(tls_server_options(pki.server())).await;
    let port = handle.local_addr().port();
    // The certificate names both; the client checks the URL's host.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("wss://{host}:{port}/chat");
        let (client, mut rx) = wss_connect(&url, Some(pki.client())).await;
        let client = client.expect("wss connect");
        assert_eq!(next(&mut rx).await, Seen::Connect);
        echo_and_close(
            &client,
            &mut rx,
            [
                Message::from("héllo over TLS"),
                Message::from(vec![1, 2, 3]),
                Message::from(vec![9u8; 1 << 20]),
            ],
        )
        .await;
    }
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn framed_tcp_echo_over_tls() {
    let pki = Pki::named("storm test CA");
    // A small socket buffer makes writes stop part-way, so TLS records
    // stay queued in rustls unless the driver flushes after each batch.
    let options = tls_server_options(pki.server()).with_send_buffer_size(4096);
    let server = TcpServer::bind(options, Framing::LengthPrefix)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    let (handler, _server_rx) = recorder(true);
    tokio::spawn(server.serve(handler));
    let (handler, mut rx) = recorder(false);
    let options = ClientOptions::default().with_tls(pki.client());
    let client = timeout(
        WAIT,
        TcpClient::connect(&addr, options, Framing::LengthPrefix, handler),
    )
    .await
    .unwrap()
    .expect("TLS connect");
    for i in 0..100u32 {
        client
            .send(Message::from(format!("message {i}").into_bytes()))
            .await
            .unwrap();
    }
    let big = Message::from(vec![5u8; 1 << 20]);
    client.send(big.clone()).await.unwrap();
    for i in 0..100u32 {
        assert_eq!(
            next_message(&mut rx).await,
            Message::from(format!("message {i}").into_bytes())
        );
    }
    assert_eq!(next_message(&mut rx).await, big);
    assert_eq!(handle.session_count(), 1);
    handle.shutdown(WAIT).await;
    assert!(next_disconnect(&mut rx).await.is_normal());
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_fails_without_hanging() {
    let pki = Pki::named("storm test CA");
    let stranger = Pki::named("another CA");
    let (handle, mut server_rx) = wss_server(tls_server_options(pki.server())).await;
    let port = handle.local_addr().port();
    let url = format!("wss://localhost:{port}/");
    // The public web roots (no CA configured), another CA, and the right CA
    // with a name the certificate does not carry.
    let wrong_name = pki.client().with_server_name("example.com");
    for tls in [None, Some(stranger.client()), Some(wrong_name)] {
        let (client, _rx) = wss_connect(&url, tls).await;
        match client {
            Err(ClientError::Tls(e)) => {
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            other => panic!("expected a TLS error, got {other:?}"),
        }
        // The server saw the handshake fail; no session was made.
        let (_, text) = next_error(&mut server_rx).await;
        assert!(text.contains("TLS handshake failed"), "{text}");
    }
    assert_eq!(handle.session_count(), 0);
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn plain_and_tls_do_not_mix() {
    let pki = Pki::named("storm test CA");
    let (handle, _server_rx) = wss_server(tls_server_options(pki.server())).await;
    let port = handle.local_addr().port();
    // A plain client at a TLS server fails at once: the server answers its
    // request with an alert and closes.
    let (client, _rx) = wss_connect(&format!("ws://127.0.0.1:{port}/"), None).await;
    assert!(
        matches!(client, Err(ClientError::Io(_) | ClientError::Handshake(_))),
        "{client:?}"
    );
    // TLS options with a ws:// URL are refused before connecting.
    let (client, _rx) = wss_connect(&format!("ws://127.0.0.1:{port}/"), Some(pki.client())).await;
    assert!(
        matches!(client, Err(ClientError::Config(ref e)) if e.contains("wss://")),
        "{client:?}"
    );
    // A TLS client at a plain server fails too, once the server gives up
    // waiting for an HTTP request in the ClientHello.
    let (plain, _plain_rx) =
        wss_server(ServerOptions::default().with_handshake_timeout(Duration::from_millis(200)))
            .await;
    let url = format!("wss://127.0.0.1:{}/", plain.local_addr().port());
    let (client, _rx) = wss_connect(&url, Some(pki.client())).await;
    assert!(matches!(client, Err(ClientError::Tls(_))), "{client:?}");
    handle.shutdown(WAIT).await;
    plain.shutdown(WAIT).await;
}

#[tokio::test]
async fn client_certificates_from_the_ca_are_required() {
    let pki = Pki::named("storm test CA");
    let stranger = Pki::named("another CA");
    let options = tls_server_options(pki.server().with_client_ca(pki.ca_pem.clone()));
    let (handle, mut server_rx) = wss_server(options).await;
    let url = format!("wss://localhost:{}/", handle.local_addr().port());

    // Accepted with a certificate the CA signed.
    let with_cert = pki.client().with_client_cert(pki.client_cert());
    let (client, mut rx) = wss_connect(&url, Some(with_cert)).await;
    let client = client.expect("a client with a certificate connects");
    client.send("authenticated").await.unwrap();
    assert_eq!(next_message(&mut rx).await, Message::from("authenticated"));
    assert_eq!(next(&mut server_rx).await, Seen::Connect);
    client.close();
    timeout(WAIT, client.closed()).await.unwrap();
    assert!(matches!(
        next_disconnect(&mut server_rx).await,
        CloseReason::Remote(_)
    ));

    // Refused without a certificate, and with one from another CA.
    let foreign_cert = pki.client().with_client_cert(stranger.client_cert());
    for tls in [pki.client(), foreign_cert] {
        let (client, _rx) = wss_connect(&url, Some(tls)).await;
        assert!(matches!(client, Err(ClientError::Tls(_))), "{client:?}");
        let (_, text) = next_error(&mut server_rx).await;
        assert!(text.contains("TLS handshake failed"), "{text}");
    }
    assert_eq!(handle.session_count(), 0);
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_client_that_never_starts_tls_times_out() {
    let pki = Pki::named("storm test CA");
    let options =
        tls_server_options(pki.server()).with_handshake_timeout(Duration::from_millis(200));
    let ws = WsServer::bind(options.clone(), WsOptions::default())
        .await
        .unwrap();
    let tcp = TcpServer::bind(options, Framing::LengthPrefix)
        .await
        .unwrap();
    let servers = [
        (ws.local_addr(), ws.handle()),
        (tcp.local_addr(), tcp.handle()),
    ];
    tokio::spawn(ws.serve(recorder(true).0));
    tokio::spawn(tcp.serve(recorder(true).0));
    for (addr, handle) in servers {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = timeout(WAIT, raw.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a byte");
        assert_eq!(handle.session_count(), 0);
        handle.shutdown(WAIT).await;
    }
}

#[tokio::test]
async fn the_handshake_timeout_is_reported() {
    let pki = Pki::named("storm test CA");
    let options =
        tls_server_options(pki.server()).with_handshake_timeout(Duration::from_millis(100));
    let (handle, mut rx) = wss_server(options).await;
    let _raw = TcpStream::connect(handle.local_addr()).await.unwrap();
    let (kind, text) = next_error(&mut rx).await;
    assert_eq!(kind, Some(io::ErrorKind::TimedOut), "{text}");
    assert!(text.contains("timed out"), "{text}");
    handle.shutdown(WAIT).await;
}

#[tokio::test]
async fn bad_certificates_and_keys_fail_at_bind() {
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
        let err = WsServer::bind(tls_server_options(tls), WsOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    // A client's bad CA or certificate fails before connecting.
    let bad_ca = TlsClientOptions::with_ca("no CA here");
    let bad_cert = pki
        .client()
        .with_client_cert(TlsClientCert::new(pki.client_cert_pem.clone(), ""));
    for tls in [bad_ca, bad_cert] {
        let (client, _rx) = wss_connect("wss://127.0.0.1:1/", Some(tls)).await;
        assert!(matches!(client, Err(ClientError::Config(_))), "{client:?}");
    }
}

#[tokio::test]
async fn pem_files_load_into_the_options() {
    let pki = Pki::named("storm test CA");
    let dir = std::env::temp_dir().join(format!("storm-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ca = dir.join("ca.pem");
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let tls = storm_tokio::tls::server_options_from_pem_files(&cert, &key).unwrap();
    assert_eq!(tls, pki.server());
    let client_tls = TlsClientOptions::with_ca(storm_tokio::tls::read_pem_file(&ca).unwrap());
    let client_cert = storm_tokio::tls::client_cert_from_pem_files(&cert, &key).unwrap();
    assert_eq!(client_cert.key_pem, pki.server_key_pem.as_bytes());
    std::fs::remove_dir_all(&dir).unwrap();

    let (handle, _server_rx) = wss_server(tls_server_options(tls)).await;
    let url = format!("wss://localhost:{}/", handle.local_addr().port());
    let (client, mut rx) = wss_connect(&url, Some(client_tls)).await;
    let client = client.expect("connect");
    client.send("from files").await.unwrap();
    assert_eq!(next_message(&mut rx).await, Message::from("from files"));
    handle.shutdown(WAIT).await;
}
