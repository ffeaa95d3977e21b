//! TCP echo server with a framer, on smol: every message goes back to its
//! sender, framed the same way.
//!
//! `cargo run -p storm-smol --example tcp_echo -- 127.0.0.1:9000 --framing line`
//!
//! `--framing` picks how the byte stream is cut into messages:
//!
//! - `lp` (the default): a 4-byte big-endian length, then the message;
//! - `line`: lines ending in `\n` (try it with `nc 127.0.0.1 9000`);
//! - `raw`: whatever one read returns.

use std::process::ExitCode;

use storm_host::options::{Framing, ServerOptions};
use storm_proto::Message;
use storm_proto::framing::{DelimiterConfig, RawConfig};
use storm_smol::{Handler, Session, TcpServer};

struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message).await;
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, framing) = match args.as_slice() {
        [addr] => (addr, "lp"),
        [addr, flag, framing] if flag == "--framing" => (addr, framing.as_str()),
        _ => return usage(),
    };
    let framing = match framing {
        "lp" => Framing::LengthPrefix,
        "line" => Framing::Delimiter(DelimiterConfig::default()),
        "raw" => Framing::Raw(RawConfig::default()),
        _ => return usage(),
    };
    let options = ServerOptions {
        addr: addr.clone(),
        ..ServerOptions::default()
    };
    let served = async {
        let server = TcpServer::bind(options, framing).await?;
        println!("tcp_echo listening on tcp://{}", server.local_addr());
        server.serve(Echo).await
    };
    match smol::block_on(served) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: tcp_echo ADDR [--framing lp|line|raw]");
    ExitCode::from(2)
}
