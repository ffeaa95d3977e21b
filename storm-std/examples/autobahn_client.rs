//! The standard Autobahn client loop: ask the fuzzing server how many cases
//! there are, run each one echoing every message, then ask it to write the
//! reports. Offers permessage-deflate (with `client_max_window_bits`).
//!
//! `cargo run --release -p storm-std --example autobahn_client -- ws://127.0.0.1:9001 storm-std`

use storm_proto::ws::deflate::DeflateConfig;
use storm_proto::ws::{Config, Event};
use storm_std::ws::{self, ConnectOptions, Error};

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let agent = args.next().unwrap_or_else(|| "storm-std".to_owned());
    let options = ConnectOptions {
        config: Config {
            max_message_size: 64 << 20,
            max_frame_size: 64 << 20,
            ..Config::default()
        },
        deflate: Some(DeflateConfig::default()),
        ..ConnectOptions::default()
    };
    let (mut socket, _) = ws::connect(&format!("{base}/getCaseCount"), &options)?;
    let count: u32 = match socket.read()? {
        Event::Text(text) => text.parse().unwrap_or(0),
        _ => 0,
    };
    drop(socket);
    println!("running {count} cases as {agent}");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = run_case(&url, &options) {
            eprintln!("case {case}: {e}");
        }
    }
    let (mut socket, _) = ws::connect(&format!("{base}/updateReports?agent={agent}"), &options)?;
    while !matches!(socket.read(), Ok(Event::Close(_)) | Err(_)) {}
    println!("reports updated");
    Ok(())
}

fn run_case(url: &str, options: &ConnectOptions) -> Result<(), Error> {
    let (mut socket, _) = ws::connect(url, options)?;
    loop {
        match socket.read()? {
            Event::Text(text) => socket.send_text(&text)?,
            Event::Binary(data) => socket.send_binary(&data)?,
            Event::Close(_) => return Ok(()),
            _ => {}
        }
    }
}
