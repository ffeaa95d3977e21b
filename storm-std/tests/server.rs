//! A std server's connection threads, seen from `serve`: it keeps no handle
//! of them (they end on their own), yet returns only once every one of them
//! is done with the handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use storm_host::options::{ServerOptions, WsOptions};
use storm_std::{Handler, Session, WsServer};
use storm_tests::suite::eventually;
use storm_tests::suite::raw::RawWs;

/// Counts connections; the test also counts the clones of its `Arc`, one
/// per handler still alive.
struct Counts(Arc<AtomicUsize>);

impl Handler for Counts {
    fn on_connect(&self, _: &Session) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Connections open when the server shuts down: once `serve` has returned,
/// no connection thread holds the handler any more.
#[test]
fn serve_returns_after_every_connection_thread_let_go_of_the_handler() {
    let connected = Arc::new(AtomicUsize::new(0));
    let options = ServerOptions::default().with_addr("127.0.0.1:0");
    let server = WsServer::bind(options, WsOptions::default()).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let serving = server.spawn(Counts(Arc::clone(&connected))).unwrap();
    let clients: Vec<RawWs> = (0..20).map(|_| RawWs::upgrade(addr)).collect();
    eventually("every connection's on_connect", || {
        connected.load(Ordering::SeqCst) == clients.len()
    });
    // No grace: every session is aborted at once, and their threads end
    // while `serve` waits for them.
    handle.shutdown(Duration::ZERO);
    serving.join().unwrap().unwrap();
    assert_eq!(
        Arc::strong_count(&connected),
        1,
        "a connection thread still held the handler after serve returned"
    );
}
