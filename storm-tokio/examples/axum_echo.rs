//! One axum router on one port: a Storm WebSocket echo at `/`
//! (permessage-deflate on, text and binary messages up to 16 MiB) and
//! plain HTTP routes beside it (`GET /health` answers `200 ok`).
//!
//! ```text
//! cargo run -p storm-tokio --features axum --example axum_echo -- 127.0.0.1:3000
//! ```
//!
//! It prints `axum_echo listening on ws://ADDR` once it listens.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use storm_tokio::axum::StormUpgrade;
use storm_tokio::host::options::{ServerOptions, WsOptions};
use storm_tokio::proto::Message;
use storm_tokio::proto::ws::Config;
use storm_tokio::proto::ws::deflate::DeflateConfig;
use storm_tokio::{Handler, ServerHandle, Session, WsServer};

/// The largest message echoed: 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

/// Sends every message back to its sender.
struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message).await;
    }
}

/// What the routes share: the Storm hub and the handler of its sessions.
#[derive(Clone)]
struct App {
    hub: ServerHandle,
    echo: Arc<Echo>,
}

/// `/`: the upgrade, answered by Storm and run as a session on the hub.
async fn echo(State(app): State<App>, upgrade: StormUpgrade) -> Response {
    upgrade.serve(&app.hub, app.echo).await
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let mut options = ServerOptions::default();
    // A whole 16 MiB reply may wait for the socket.
    options.backpressure.max_pending_send_bytes = 2 * MAX_MESSAGE;
    let ws = WsOptions::default()
        .with_config(
            Config::default()
                .with_max_message_size(MAX_MESSAGE)
                .with_max_frame_size(MAX_MESSAGE),
        )
        .with_deflate(DeflateConfig::default());
    let app = App {
        hub: WsServer::detached(options, ws)?,
        echo: Arc::new(Echo),
    };
    let router = Router::new()
        .route("/", get(echo))
        .route("/health", get(|| async { "ok" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("axum_echo listening on ws://{}", listener.local_addr()?);
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await
}
