//! WebSocket echo server on blocking std sockets, one thread per connection,
//! permessage-deflate enabled and a 64 MiB message limit (the Autobahn
//! suite's 9.* cases send 16 MiB messages).
//!
//! `cargo run --release -p storm-std --example ws_echo -- 127.0.0.1:9001`

use std::net::TcpListener;
use std::sync::Arc;

use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::handshake::ServerConfig;
use storm_proto::ws::{Config, Event};
use storm_std::ws::{Error, WebSocket};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr)?;
    println!("ws_echo listening on ws://{}", listener.local_addr()?);
    let handshake = Arc::new(ServerConfig {
        deflate: Some(DeflateConfig::default()),
        ..ServerConfig::default()
    });
    let config = Config {
        max_message_size: 64 << 20,
        max_frame_size: 64 << 20,
        ..Config::default()
    };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let (handshake, config) = (Arc::clone(&handshake), config.clone());
        std::thread::spawn(move || {
            if let Err(e) = echo(stream, &handshake, config) {
                eprintln!("connection ended: {e}");
            }
        });
    }
    Ok(())
}

fn echo(
    stream: std::net::TcpStream,
    handshake: &Arc<ServerConfig>,
    config: Config,
) -> Result<(), Error> {
    let (mut socket, _) = WebSocket::accept(stream, handshake, config)?;
    loop {
        match socket.read()? {
            Event::Text(text) => socket.send_text(&text)?,
            Event::Binary(data) => socket.send_binary(&data)?,
            Event::Close(_) => return Ok(()),
            _ => {}
        }
    }
}
