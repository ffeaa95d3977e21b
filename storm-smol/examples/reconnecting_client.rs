//! A WebSocket client that reconnects, on smol: `ClientOptions::reconnect`
//! set to an exponential backoff (250 ms doubling up to 5 s, with jitter).
//! It sends `message N` once a second, `--count` times (default 10), prints
//! every event, then closes and exits.
//!
//! ```text
//! cargo run -p storm-smol --example ws_echo -- 127.0.0.1:9001
//! cargo run -p storm-smol --example reconnecting_client -- ws://127.0.0.1:9001 --count 20
//! ```
//!
//! Stop and restart the echo server meanwhile to see `on_disconnect`,
//! `on_reconnecting(attempt, delay)` and `on_connect` again. The first
//! connection must succeed; only later ones are retried.

use std::process::ExitCode;
use std::time::Duration;

use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, WsOptions};
use storm_proto::Message;
use storm_proto::reconnect::{BackoffConfig, BackoffPolicy};
use storm_smol::{Handler, Session, WsClient};

struct Events;

impl Handler for Events {
    async fn on_connect(&self, session: &Session) {
        println!("on_connect: {}", session.remote_addr());
    }

    async fn on_message(&self, _session: &Session, message: Message) {
        println!("received: {}", String::from_utf8_lossy(message.as_bytes()));
    }

    async fn on_disconnect(&self, _session: &Session, reason: &CloseReason) {
        println!("on_disconnect: {reason}");
    }

    async fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        println!("on_error: {error}");
    }

    async fn on_reconnecting(&self, attempt: u32, delay: Duration) {
        println!("on_reconnecting: attempt {attempt} in {delay:?}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, count) = match args.as_slice() {
        [url] => (url, Ok(10)),
        [url, flag, count] if flag == "--count" => (url, count.parse::<u32>()),
        _ => return usage(),
    };
    let Ok(count) = count else { return usage() };
    let options = ClientOptions {
        reconnect: Some(BackoffConfig {
            policy: BackoffPolicy::Exponential {
                initial: Duration::from_millis(250),
                multiplier: 2.0,
                max: Duration::from_secs(5),
            },
            ..BackoffConfig::default()
        }),
        ..ClientOptions::default()
    };
    smol::block_on(async {
        let client = match WsClient::connect(url, options, WsOptions::default(), Events).await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("reconnecting_client: {e}");
                return ExitCode::FAILURE;
            }
        };
        for n in 1..=count {
            smol::Timer::after(Duration::from_secs(1)).await;
            match client.send(format!("message {n}")).await {
                Ok(()) => println!("sent: message {n}"),
                Err(e) => println!("not sent: message {n} ({e})"),
            }
        }
        client.close();
        client.closed().await;
        ExitCode::SUCCESS
    })
}

fn usage() -> ExitCode {
    eprintln!("usage: reconnecting_client URL [--count N]");
    ExitCode::from(2)
}
