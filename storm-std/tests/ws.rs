//! The blocking WebSocket over real loopback sockets: both sides, the
//! refusal paths, and what a peer sees when the other breaks the protocol.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::handshake::ServerConfig;
use storm_proto::ws::{CloseCode, Config, Event};
use storm_std::ws::{self, ConnectOptions, Error, WebSocket};

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

/// Accepts one connection and runs `serve` on it in a thread.
fn serve_one<T: Send + 'static>(
    config: ServerConfig,
    serve: impl FnOnce(Result<WebSocket<TcpStream>, Error>) -> T + Send + 'static,
) -> (String, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(TIMEOUT).unwrap();
        let config = Arc::new(config);
        serve(WebSocket::accept(stream, &config, Config::default()).map(|(socket, _)| socket))
    });
    (addr, handle)
}

fn echo(socket: Result<WebSocket<TcpStream>, Error>) -> Result<CloseCode, Error> {
    let mut socket = socket?;
    loop {
        match socket.read()? {
            Event::Text(text) => socket.send_text(&text)?,
            Event::Binary(data) => socket.send_binary(&data)?,
            Event::Close(frame) => return Ok(frame.code),
            _ => {}
        }
    }
}

fn client(addr: &str, options: &ConnectOptions) -> WebSocket<TcpStream> {
    let (mut socket, _) = ws::connect(&format!("ws://{addr}/echo"), options).unwrap();
    socket.get_mut().set_read_timeout(TIMEOUT).unwrap();
    socket
}

#[test]
fn echo_round_trip_with_and_without_deflate() {
    for deflate in [None, Some(DeflateConfig::default())] {
        let server_config = ServerConfig {
            deflate: deflate.clone(),
            ..ServerConfig::default()
        };
        let (addr, server) = serve_one(server_config, echo);
        let mut options = ConnectOptions::default();
        options.deflate = deflate.clone();
        let mut socket = client(&addr, &options);
        let big = "x".repeat(1 << 20);
        for text in ["hello", "", "ünïcödé", &big] {
            socket.send_text(text).unwrap();
            assert!(matches!(socket.read().unwrap(), Event::Text(t) if t.as_str() == text));
        }
        socket.send_ping(b"p").unwrap();
        assert!(matches!(socket.read().unwrap(), Event::Pong(p) if p[..] == *b"p"));
        socket.close(CloseCode::NORMAL, "").unwrap();
        assert!(matches!(socket.read().unwrap(), Event::Close(f) if f.code == CloseCode::NORMAL));
        assert!(matches!(socket.read(), Err(Error::Closed)));
        assert_eq!(server.join().unwrap().unwrap(), CloseCode::NORMAL);
    }
}

#[test]
fn a_plain_http_request_gets_400() {
    let (addr, server) = serve_one(ServerConfig::default(), |socket| socket.map(|_| ()));
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(TIMEOUT).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(matches!(server.join().unwrap(), Err(Error::Handshake(e)) if e.status() == 400));
}

#[test]
fn a_wrong_version_gets_426_with_the_supported_version() {
    let (addr, server) = serve_one(ServerConfig::default(), |socket| socket.map(|_| ()));
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(TIMEOUT).unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{response}"
    );
    assert!(server.join().unwrap().is_err());
}

#[test]
fn an_unmasked_client_frame_is_closed_with_1002() {
    let (addr, server) = serve_one(ServerConfig::default(), echo);
    // A hand-made client that skips masking after a proper handshake.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(TIMEOUT).unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
              \x81\x02hi",
        )
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(response.starts_with(b"HTTP/1.1 101"));
    let close = &response[head_end..];
    assert_eq!(close[0], 0x88, "a close frame follows the 101");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1002);
    assert!(matches!(server.join().unwrap(), Err(Error::Protocol(_))));
}

#[test]
fn a_server_that_vanishes_is_reported_as_abnormal() {
    let (addr, server) = serve_one(ServerConfig::default(), |socket| drop(socket.unwrap()));
    let mut socket = client(&addr, &ConnectOptions::default());
    server.join().unwrap();
    assert!(matches!(socket.read().unwrap(), Event::Close(f) if f.code == CloseCode::ABNORMAL));
}

#[test]
fn connect_refuses_what_it_cannot_do() {
    assert!(matches!(
        ws::connect("http://127.0.0.1:1/", &ConnectOptions::default()),
        Err(Error::Url(_))
    ));
    assert!(matches!(
        ws::connect("wss://127.0.0.1:1/", &ConnectOptions::default()),
        Err(Error::TlsUnsupported)
    ));
}

/// `accept_with` lets the application decide: a request without the
/// token gets its 401 (the client reads it), one with it is accepted with
/// the chosen subprotocol, a header, and a value attached to `Accepted`.
#[test]
fn accept_with_decides_on_the_request() {
    use storm_proto::ws::handshake::{Decision, Refused, UpgradeRequest};
    fn decide(request: &UpgradeRequest) -> Decision {
        match request.query_param("token").as_deref() {
            Some("t1") => Decision::accept()
                .subprotocol("v2")
                .header("X-Who", "ann")
                .attach(String::from("ann")),
            _ => Decision::reject(401).body("token?\n"),
        }
    }
    let serve = |stream: TcpStream| {
        stream.set_read_timeout(TIMEOUT).unwrap();
        let config = Arc::new(ServerConfig::default());
        WebSocket::accept_with(stream, &config, Config::default(), decide)
            .map(|(_, accepted)| accepted.attached.and_then(|a| a.get::<String>().cloned()))
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let refused = serve(listener.accept().unwrap().0);
        let accepted = serve(listener.accept().unwrap().0);
        (refused, accepted)
    });
    let refused = ws::connect(&format!("ws://{addr}/"), &ConnectOptions::default());
    assert!(matches!(refused, Err(Error::Response(_))), "{refused:?}");
    let options = ConnectOptions::default().with_subprotocols(["v1", "v2"]);
    let (_socket, upgraded) = ws::connect(&format!("ws://{addr}/?token=t1"), &options).unwrap();
    assert_eq!(upgraded.subprotocol.as_deref(), Some("v2"));
    assert_eq!(upgraded.headers.get("x-who"), Some(&b"ann"[..]));
    let (refused, accepted) = server.join().unwrap();
    assert!(matches!(
        refused,
        Err(Error::Refused(Refused::Rejected(401)))
    ));
    assert_eq!(accepted.unwrap(), Some("ann".to_owned()));
}
