//! WebSocket echo server on the `Stream + Sink` API
//! ([`WebSocketStream`](storm_async::WebSocketStream)): every accepted
//! socket goes through `accept`, then `next()`/`send()` echo until the
//! stream ends. The same settings as `ws_echo` (permessage-deflate on,
//! 64 MiB messages); the Autobahn server suite runs against it as the
//! `storm-tokio-stream` and `storm-smol-stream` adapters.
//!
//! ```text
//! cargo run --release -p storm-examples --example ws_echo_stream -- --runtime tokio 127.0.0.1:9001
//! ```

use std::future::poll_fn;
use std::io;
use std::process::ExitCode;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use storm_async::runtime::{PollRead, PollWrite};
use storm_async::websocket::{StreamConfig, WebSocketStream};
use storm_examples::{AsyncRuntime, Runtime, autobahn_ws};
use storm_smol::Smol;
use storm_tokio::Tokio;

/// WebSocket echo server on `WebSocketStream`.
#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(default_value = "127.0.0.1:9001")]
    addr: String,
    /// The adapter to run on: tokio or smol (std has no async streams).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = StreamConfig::new().with_ws(autobahn_ws());
    let served = match args.runtime {
        Runtime::Tokio => Tokio::block_on(serve::<Tokio>(&args.addr, config)),
        Runtime::Smol => Smol::block_on(serve::<Smol>(&args.addr, config)),
        Runtime::Std => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "WebSocketStream runs on tokio or smol",
        )),
    };
    storm_examples::exit("ws_echo_stream", served)
}

/// Accepts until the listener fails; one task per connection.
async fn serve<R: AsyncRuntime>(addr: &str, config: StreamConfig) -> io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    println!(
        "ws_echo_stream listening on ws://{}",
        listener.local_addr()?
    );
    let listener = R::listen(listener)?;
    loop {
        let (tcp, _) = poll_fn(|cx| R::poll_accept(&listener, cx)).await?;
        let config = config.clone();
        R::spawn(async move {
            match WebSocketStream::<R, _>::accept(tcp, &config).await {
                Ok(ws) => echo(ws).await,
                Err(e) => eprintln!("handshake: {e}"),
            }
        });
    }
}

/// Sends every message back until the stream ends.
async fn echo<R, S: PollRead + PollWrite>(mut ws: WebSocketStream<R, S>) {
    while let Some(Ok(message)) = ws.next().await {
        if ws.send(message).await.is_err() {
            break;
        }
    }
}
