//! The standard Autobahn client loop: ask the fuzzing server how many cases
//! there are (`/getCaseCount`), run each one echoing every message, then
//! ask it to write the reports (`/updateReports`). Offers
//! permessage-deflate; takes messages up to 64 MiB.
//!
//! `cargo run --release -p storm-examples --example autobahn_client -- --runtime std ws://127.0.0.1:9001 storm-std`
//!
//! The agent name defaults to `storm-RUNTIME`.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use clap::Parser;
use storm_async::ClientError;
use storm_examples::{AUTOBAHN_PENDING_BYTES, AsyncRuntime, Runtime, autobahn_ws};
use storm_host::options::ClientOptions;
use storm_proto::Message;
use storm_smol::Smol;
use storm_tokio::Tokio;

/// Echoes every message, or none, and keeps the first text message (the
/// case count, on `/getCaseCount`).
struct Autobahn {
    echo: bool,
    first_text: Arc<OnceLock<String>>,
}

impl Autobahn {
    /// Notes `message`; whether to send it back.
    fn received(&self, message: &Message) -> bool {
        if let Message::Text(text) = message {
            let _ = self.first_text.set(text.to_string());
        }
        self.echo
    }
}

impl storm_async::Handler for Autobahn {
    async fn on_message(&self, session: &storm_async::Session, message: Message) {
        if self.received(&message) {
            let _ = session.send(message).await;
        }
    }
}

impl storm_std::Handler for Autobahn {
    fn on_message(&self, session: &storm_std::Session, message: Message) {
        if self.received(&message) {
            let _ = session.send_blocking(message);
        }
    }
}

/// The Autobahn client loop.
#[derive(Parser)]
struct Args {
    /// The fuzzing server.
    #[arg(default_value = "ws://127.0.0.1:9001")]
    url: String,
    /// The name the reports give this client (default `storm-RUNTIME`).
    agent: Option<String>,
    /// The adapter to run on.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let base = args.url.as_str();
    let agent = args
        .agent
        .unwrap_or_else(|| format!("storm-{}", args.runtime));
    let ran = match args.runtime {
        Runtime::Tokio => run_suite(base, &agent, |url, echo| {
            Tokio::block_on(visit::<Tokio>(url, echo))
        }),
        Runtime::Smol => run_suite(base, &agent, |url, echo| {
            Smol::block_on(visit::<Smol>(url, echo))
        }),
        Runtime::Std => run_suite(base, &agent, visit_blocking),
    };
    storm_examples::exit("autobahn_client", ran)
}

/// The loop, on any runtime: `visit(url, echo)` runs one connection to its
/// end and returns its first text message.
fn run_suite(
    base: &str,
    agent: &str,
    mut visit: impl FnMut(&str, bool) -> Result<Option<String>, ClientError>,
) -> Result<(), ClientError> {
    let count = visit(&format!("{base}/getCaseCount"), false)?;
    let count: u32 = count.and_then(|c| c.parse().ok()).unwrap_or(0);
    println!("running {count} cases as {agent}");
    for case in 1..=count {
        if let Err(e) = visit(&format!("{base}/runCase?case={case}&agent={agent}"), true) {
            eprintln!("case {case}: {e}");
        }
    }
    visit(&format!("{base}/updateReports?agent={agent}"), false)?;
    println!("reports updated");
    Ok(())
}

fn options() -> ClientOptions {
    let mut options = ClientOptions::default();
    options.backpressure.max_pending_send_bytes = AUTOBAHN_PENDING_BYTES;
    options
}

fn handler(echo: bool) -> (Autobahn, Arc<OnceLock<String>>) {
    let first_text = Arc::default();
    let handler = Autobahn {
        echo,
        first_text: Arc::clone(&first_text),
    };
    (handler, first_text)
}

/// One connection on tokio or smol, until the server has closed it (so
/// that it has finished the case before the next one starts).
async fn visit<R: AsyncRuntime>(url: &str, echo: bool) -> Result<Option<String>, ClientError> {
    let (handler, first_text) = handler(echo);
    let client =
        storm_async::WsClient::<R>::connect(url, options(), autobahn_ws(), handler).await?;
    client.closed().await;
    Ok(first_text.get().cloned())
}

/// One connection on storm-std: the same calls, blocking.
fn visit_blocking(url: &str, echo: bool) -> Result<Option<String>, ClientError> {
    let (handler, first_text) = handler(echo);
    let client = storm_std::WsClient::connect(url, options(), autobahn_ws(), handler)?;
    client.closed();
    Ok(first_text.get().cloned())
}
