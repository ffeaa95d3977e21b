//! The `tracing` feature on every adapter: a refused handshake and a
//! close each give their event, inside the connection's span, as a real
//! subscriber (tracing-subscriber's fmt, writing into memory) records
//! them. Each runtime uses its own origin and close code, so the runs,
//! which share the one global subscriber, never read each other's lines.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::ws::Event;
use storm_tests::suite::eventually;
use storm_tests::suite::on_async::Executor;
use storm_tests::suite::raw::{self, RawWs, opcode};

/// What the global subscriber wrote so far.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&captured);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        captured
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured line that contains every one of `parts`, once there is
/// one (panics after the suite's wait).
fn line_with(parts: &[&str]) -> String {
    let mut found = None;
    eventually(&format!("a line with {parts:?}"), || {
        let text = captured()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        found = String::from_utf8_lossy(&text)
            .lines()
            .find(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned);
        found.is_some()
    });
    found.unwrap_or_default()
}

/// The server's options: only `http://ok.example` pages are let in.
fn ws_options() -> WsOptions {
    WsOptions::default().with_allowed_origins(vec!["http://ok.example".to_owned()])
}

/// Against a server at `addr`: a page from `https://evil-NAME.example`
/// is refused, another client closes with `code`; both give their event.
fn refused_and_closed(addr: SocketAddr, name: &str, code: u16) {
    let mut refused = RawWs::request_with(
        addr,
        "/",
        &format!("Origin: https://evil-{name}.example\r\n"),
    );
    let response = String::from_utf8_lossy(&raw::read_all(&mut refused)).into_owned();
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let line = line_with(&["handshake failed", &format!("evil-{name}.example")]);
    assert!(line.contains("reason=\"refused\""), "{line}");
    assert!(
        line.contains("connection{"),
        "in the connection's span: {line}"
    );
    assert!(line.contains("protocol=\"ws\""), "{line}");

    let mut client = RawWs::upgrade(addr);
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(format!("bye {name}").as_bytes());
    client.send(opcode::CLOSE, &payload, true);
    assert!(matches!(client.next_event(), Some(Event::Close(_))));
    let line = line_with(&["connection closed", &format!("code={code}")]);
    assert!(line.contains("by=\"peer\""), "{line}");
    assert!(line.contains(&format!("bye {name}")), "{line}");
    assert!(
        line.contains("id="),
        "the span has the session's id: {line}"
    );
}

struct Nothing;
impl storm_async::Handler for Nothing {}
impl storm_std::Handler for Nothing {}

fn on_async<R: Executor>(name: &str, code: u16) {
    let _ = captured();
    let addr = R::block_on(async {
        let server = storm_async::WsServer::<R>::bind(ServerOptions::default(), ws_options())
            .await
            .expect("bind");
        let addr = server.local_addr();
        R::spawn(async move {
            let _ = server.serve(Nothing).await;
        });
        addr
    });
    refused_and_closed(addr, name, code);
}

#[test]
fn tokio_refusal_and_close_are_traced() {
    on_async::<storm_tokio::Tokio>("tokio", 4001);
}

#[test]
fn smol_refusal_and_close_are_traced() {
    on_async::<storm_smol::Smol>("smol", 4002);
}

#[test]
fn std_refusal_and_close_are_traced() {
    let _ = captured();
    let server = storm_std::WsServer::bind(ServerOptions::default(), ws_options()).expect("bind");
    let addr = server.local_addr();
    let _serving = server.spawn(Nothing).expect("serve");
    refused_and_closed(addr, "std", 4003);
}
