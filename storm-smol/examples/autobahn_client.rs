//! The standard Autobahn client loop on smol: `/getCaseCount`, then each
//! case echoing every message, then `/updateReports`.
//!
//! `cargo run --release -p storm-smol --example autobahn_client -- ws://127.0.0.1:9001 storm-smol`

use std::sync::Mutex;

use smol::channel::{self, Sender};
use storm_host::link::CloseReason;
use storm_host::options::{ClientOptions, WsOptions};
use storm_proto::Message;
use storm_proto::ws::Config;
use storm_proto::ws::deflate::DeflateConfig;
use storm_smol::{Client, ClientError, Handler, Session, WsClient};

/// Echoes every message; reports the first text message and the end.
struct Echo {
    first_text: Mutex<Option<Sender<String>>>,
    done: Sender<()>,
    echo: bool,
}

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        if let (Message::Text(text), Some(tx)) = (&message, self.first_text.lock().unwrap().take())
        {
            let _ = tx.try_send(text.to_string());
        }
        if self.echo {
            let _ = session.send(message).await;
        }
    }

    async fn on_disconnect(&self, _session: &Session, _reason: &CloseReason) {
        let _ = self.done.try_send(());
    }
}

async fn run(url: &str, echo: bool) -> Result<(Client, Option<String>), ClientError> {
    let (text_tx, text_rx) = channel::unbounded();
    let (done_tx, done_rx) = channel::unbounded();
    let handler = Echo {
        first_text: Mutex::new(Some(text_tx)),
        done: done_tx,
        echo,
    };
    let mut options = ClientOptions::default();
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
    let client = WsClient::connect(url, options, ws, handler).await?;
    let _ = done_rx.recv().await;
    // Wait until the socket is closed, so the server has finished the case
    // before the next connection starts.
    client.closed().await;
    Ok((client, text_rx.try_recv().ok()))
}

fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let agent = args.next().unwrap_or_else(|| "storm-smol".to_owned());
    smol::block_on(async {
        let (_, count) = run(&format!("{base}/getCaseCount"), false).await?;
        let count: u32 = count.and_then(|c| c.parse().ok()).unwrap_or(0);
        println!("running {count} cases as {agent}");
        for case in 1..=count {
            if let Err(e) = run(&format!("{base}/runCase?case={case}&agent={agent}"), true).await {
                eprintln!("case {case}: {e}");
            }
        }
        run(&format!("{base}/updateReports?agent={agent}"), false).await?;
        println!("reports updated");
        Ok(())
    })
}
