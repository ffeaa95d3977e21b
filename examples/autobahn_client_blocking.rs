//! The standard Autobahn client loop (see `autobahn_client`) on storm-std's
//! low-level blocking [`WebSocket`](storm_std::ws::WebSocket) and its
//! [`connect`](storm_std::ws::connect): one socket per case, read and
//! echoed on this thread. Offers permessage-deflate (with
//! `client_max_window_bits`); takes messages up to 64 MiB.
//!
//! `cargo run --release -p storm-examples --example autobahn_client_blocking -- ws://127.0.0.1:9001 storm-std-blocking`

use storm_examples::{autobahn_ws, echo_until_close};
use storm_proto::ws::Event;
use storm_std::ws::{self, ConnectOptions, Error};

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let agent = args
        .next()
        .unwrap_or_else(|| "storm-std-blocking".to_owned());
    let ws = autobahn_ws();
    let mut options = ConnectOptions::default().with_config(ws.config);
    options.deflate = ws.deflate;
    let (mut socket, _) = ws::connect(&format!("{base}/getCaseCount"), &options)?;
    let count: u32 = match socket.read()? {
        Event::Text(text) => text.parse().unwrap_or(0),
        _ => 0,
    };
    drop(socket);
    println!("running {count} cases as {agent}");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let run =
            ws::connect(&url, &options).and_then(|(mut socket, _)| echo_until_close(&mut socket));
        if let Err(e) = run {
            eprintln!("case {case}: {e}");
        }
    }
    let (mut socket, _) = ws::connect(&format!("{base}/updateReports?agent={agent}"), &options)?;
    while !matches!(socket.read(), Ok(Event::Close(_)) | Err(_)) {}
    println!("reports updated");
    Ok(())
}
