//! WebSocket echo server on storm-std's low-level blocking
//! [`WebSocket`](storm_std::ws::WebSocket): no sessions, hub or heartbeat,
//! one thread per connection running `read` and `send_*` itself. The same
//! settings as `ws_echo` (permessage-deflate, 64 MiB messages); the
//! Autobahn server suite runs against it as `storm-std-blocking`.
//!
//! `cargo run --release -p storm-examples --example ws_echo_blocking -- 127.0.0.1:9001`

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use storm_examples::{autobahn_ws, echo_until_close};
use storm_proto::ws::Config;
use storm_proto::ws::handshake::ServerConfig;
use storm_std::ws::{Error, WebSocket};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr)?;
    println!(
        "ws_echo_blocking listening on ws://{}",
        listener.local_addr()?
    );
    let ws = autobahn_ws();
    let handshake = Arc::new(ServerConfig {
        deflate: ws.deflate,
        ..ServerConfig::default()
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let (handshake, config) = (Arc::clone(&handshake), ws.config.clone());
        std::thread::spawn(move || {
            if let Err(e) = echo(stream, &handshake, config) {
                eprintln!("connection ended: {e}");
            }
        });
    }
    Ok(())
}

/// Runs the upgrade on `stream`, then echoes until the client closes.
fn echo(stream: TcpStream, handshake: &Arc<ServerConfig>, config: Config) -> Result<(), Error> {
    let (mut socket, _) = WebSocket::accept(stream, handshake, config)?;
    echo_until_close(&mut socket)
}
