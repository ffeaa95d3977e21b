//! A WebSocket client that reconnects: `ClientOptions::reconnect` set to an
//! exponential backoff (250 ms doubling up to 5 s, with jitter). It sends
//! `message N` once a second, `--count` times (default 10), prints every
//! event, then closes and exits.
//!
//! ```text
//! cargo run -p storm-examples --example ws_echo -- 127.0.0.1:9001
//! cargo run -p storm-examples --example reconnecting_client -- ws://127.0.0.1:9001 --count 20 --runtime smol
//! ```
//!
//! Stop and restart the echo server meanwhile to see `on_disconnect`,
//! `on_reconnecting(attempt, delay)` and `on_connect` again. The first
//! connection must succeed; only later ones are retried.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use storm_async::ClientError;
use storm_examples::{AsyncRuntime, Runtime};
use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, WsOptions};
use storm_proto::Message;
use storm_proto::reconnect::BackoffConfig;
use storm_smol::Smol;
use storm_tokio::Tokio;

/// Prints every event: storm-async's `Handler` on tokio and smol,
/// storm-std's (the same methods, blocking) on std.
struct Events;

impl storm_async::Handler for Events {
    async fn on_connect(&self, session: &storm_async::Session) {
        println!("on_connect: {}", session.remote_addr());
    }

    async fn on_message(&self, _session: &storm_async::Session, message: Message) {
        println!("received: {}", String::from_utf8_lossy(message.as_bytes()));
    }

    async fn on_disconnect(&self, _session: &storm_async::Session, reason: &CloseReason) {
        println!("on_disconnect: {reason}");
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        println!("on_error: {error}");
    }

    async fn on_reconnecting(&self, attempt: u32, delay: Duration) {
        println!("on_reconnecting: attempt {attempt} in {delay:?}");
    }
}

impl storm_std::Handler for Events {
    fn on_connect(&self, session: &storm_std::Session) {
        println!("on_connect: {}", session.remote_addr());
    }

    fn on_message(&self, _session: &storm_std::Session, message: Message) {
        println!("received: {}", String::from_utf8_lossy(message.as_bytes()));
    }

    fn on_disconnect(&self, _session: &storm_std::Session, reason: &CloseReason) {
        println!("on_disconnect: {reason}");
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        println!("on_error: {error}");
    }

    fn on_reconnecting(&self, attempt: u32, delay: Duration) {
        println!("on_reconnecting: attempt {attempt} in {delay:?}");
    }
}

/// A WebSocket client that reconnects.
#[derive(Parser)]
struct Args {
    /// The server's `ws://` or `wss://` URL.
    url: String,
    /// How many messages to send, one a second.
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// The adapter to run on.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (url, count) = (args.url.as_str(), args.count);
    let ran = match args.runtime {
        Runtime::Tokio => Tokio::block_on(run::<Tokio>(url, count)),
        Runtime::Smol => Smol::block_on(run::<Smol>(url, count)),
        Runtime::Std => run_blocking(url, count),
    };
    storm_examples::exit("reconnecting_client", ran)
}

/// Reconnects after an unexpected disconnect: 250 ms, doubling up to 5 s.
fn options() -> ClientOptions {
    ClientOptions::default().with_reconnect(BackoffConfig::exponential(
        Duration::from_millis(250),
        2.0,
        Duration::from_secs(5),
    ))
}

/// Prints what became of `message N`.
fn report(n: u32, sent: Result<(), ClientError>) {
    match sent {
        Ok(()) => println!("sent: message {n}"),
        Err(e) => println!("not sent: message {n} ({e})"),
    }
}

/// Runs the client on tokio or smol.
async fn run<R: AsyncRuntime>(url: &str, count: u32) -> Result<(), ClientError> {
    let client =
        storm_async::WsClient::<R>::connect(url, options(), WsOptions::default(), Events).await?;
    for n in 1..=count {
        R::sleep_until(Instant::now() + Duration::from_secs(1)).await;
        report(n, client.send(format!("message {n}")).await);
    }
    client.close();
    client.closed().await;
    Ok(())
}

/// Runs the client on storm-std: the same calls, blocking.
fn run_blocking(url: &str, count: u32) -> Result<(), ClientError> {
    let client = storm_std::WsClient::connect(url, options(), WsOptions::default(), Events)?;
    for n in 1..=count {
        std::thread::sleep(Duration::from_secs(1));
        report(n, client.send(format!("message {n}")));
    }
    client.close();
    client.closed();
    Ok(())
}
