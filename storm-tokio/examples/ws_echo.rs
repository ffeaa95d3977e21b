//! WebSocket echo server on tokio: permessage-deflate enabled, 64 MiB
//! message limit (the Autobahn suite's 9.* cases send 16 MiB messages).
//!
//! `cargo run --release -p storm-tokio --example ws_echo -- 127.0.0.1:9001`

use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::Message;
use storm_proto::ws::Config;
use storm_proto::ws::deflate::DeflateConfig;
use storm_tokio::{Handler, Session, WsServer};

struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message).await;
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let mut options = ServerOptions {
        addr,
        ..ServerOptions::default()
    };
    // The echo must not apply backpressure to 16 MiB messages.
    options.backpressure.max_pending_send_bytes = 128 << 20;
    let ws = WsOptions {
        config: Config {
            max_message_size: 64 << 20,
            max_frame_size: 64 << 20,
            ..Config::default()
        },
        deflate: Some(DeflateConfig::default()),
        ..WsOptions::default()
    };
    let server = WsServer::bind(options, ws).await?;
    println!("ws_echo listening on ws://{}", server.local_addr());
    server.serve(Echo).await
}
