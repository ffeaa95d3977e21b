//! The standard Autobahn client loop (see `autobahn_client`) on the
//! `Stream + Sink` API: each case is one
//! [`WebSocketStream`](storm_async::WebSocketStream) from `connect`, read
//! with `next()` and echoed with `send()` until the stream ends. Offers
//! permessage-deflate; takes messages up to 64 MiB.
//!
//! `cargo run --release -p storm-examples --example autobahn_client_stream -- --runtime tokio ws://127.0.0.1:9001 storm-tokio-stream`
//!
//! The agent name defaults to `storm-RUNTIME-stream`.

use std::process::ExitCode;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use storm_async::ClientError;
use storm_async::websocket::{ClientStream, StreamConfig, WebSocketStream};
use storm_examples::{AsyncRuntime, Runtime, autobahn_ws};
use storm_proto::Message;
use storm_smol::Smol;
use storm_tokio::Tokio;

/// The Autobahn client loop on `WebSocketStream`.
#[derive(Parser)]
struct Args {
    /// The fuzzing server.
    #[arg(default_value = "ws://127.0.0.1:9001")]
    url: String,
    /// The name the reports give this client (default `storm-RUNTIME-stream`).
    agent: Option<String>,
    /// The adapter to run on: tokio or smol (std has no async streams).
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let agent = args
        .agent
        .unwrap_or_else(|| format!("storm-{}-stream", args.runtime));
    let ran = match args.runtime {
        Runtime::Tokio => Tokio::block_on(run_suite::<Tokio>(&args.url, &agent)),
        Runtime::Smol => Smol::block_on(run_suite::<Smol>(&args.url, &agent)),
        Runtime::Std => Err(ClientError::Config(
            "WebSocketStream runs on tokio or smol".to_owned(),
        )),
    };
    storm_examples::exit("autobahn_client_stream", ran)
}

/// Counts the cases, runs each, asks for the reports.
async fn run_suite<R: AsyncRuntime>(base: &str, agent: &str) -> Result<(), ClientError> {
    let count = visit::<R>(&format!("{base}/getCaseCount"), false).await?;
    let count: u32 = count.and_then(|c| c.parse().ok()).unwrap_or(0);
    println!("running {count} cases as {agent}");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = visit::<R>(&url, true).await {
            eprintln!("case {case}: {e}");
        }
    }
    visit::<R>(&format!("{base}/updateReports?agent={agent}"), false).await?;
    println!("reports updated");
    Ok(())
}

/// One connection, until the stream ends (so that the server has finished
/// the case before the next one starts); echoes when `echo`. Returns the
/// first text message (the case count, on `/getCaseCount`).
async fn visit<R: AsyncRuntime>(url: &str, echo: bool) -> Result<Option<String>, ClientError> {
    let config = StreamConfig::new().with_ws(autobahn_ws());
    let mut ws: WebSocketStream<R, ClientStream<R>> =
        WebSocketStream::connect(url, &config).await?;
    let mut first_text = None;
    while let Some(Ok(message)) = ws.next().await {
        if let (None, Message::Text(text)) = (&first_text, &message) {
            first_text = Some(text.to_string());
        }
        if echo && ws.send(message).await.is_err() {
            break;
        }
    }
    Ok(first_text)
}
