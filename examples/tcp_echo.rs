//! TCP echo server with a framer: every message goes back to its sender,
//! framed the same way.
//!
//! `cargo run -p storm-examples --example tcp_echo -- 127.0.0.1:9000 --framing line --runtime std`
//!
//! `--framing` picks how the byte stream is cut into messages:
//!
//! - `lp` (the default): a 4-byte big-endian length, then the message;
//! - `line`: lines ending in `\n` (try it with `nc 127.0.0.1 9000`);
//! - `raw`: whatever one read returns.

use std::io;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use storm_examples::{AsyncRuntime, Echo, Runtime};
use storm_host::options::ServerOptions;
use storm_proto::framing::{DelimiterConfig, Framing, RawConfig};
use storm_smol::Smol;
use storm_tokio::Tokio;

/// TCP echo server with a framer.
#[derive(Parser)]
struct Args {
    /// Where to listen.
    addr: String,
    /// How the byte stream is cut into messages.
    #[arg(long, value_enum, default_value_t = FramingArg::Lp)]
    framing: FramingArg,
    /// The adapter to run on.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

#[derive(Clone, Copy, ValueEnum)]
enum FramingArg {
    /// A 4-byte big-endian length, then the message.
    Lp,
    /// Lines ending in `\n`.
    Line,
    /// Whatever one read returns.
    Raw,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let framing = match args.framing {
        FramingArg::Lp => Framing::LengthPrefix,
        FramingArg::Line => Framing::Delimiter(DelimiterConfig::default()),
        FramingArg::Raw => Framing::Raw(RawConfig::default()),
    };
    let options = ServerOptions::default().with_addr(args.addr);
    let served = match args.runtime {
        Runtime::Tokio => Tokio::block_on(serve::<Tokio>(options, framing)),
        Runtime::Smol => Smol::block_on(serve::<Smol>(options, framing)),
        Runtime::Std => serve_blocking(options, framing),
    };
    storm_examples::exit("tcp_echo", served)
}

/// Serves on tokio or smol until the server fails.
async fn serve<R: AsyncRuntime>(options: ServerOptions, framing: Framing) -> io::Result<()> {
    let server = storm_async::TcpServer::<R>::bind(options, framing).await?;
    println!("tcp_echo listening on tcp://{}", server.local_addr());
    server.serve(Echo).await
}

/// Serves on storm-std, on this thread, until the server fails.
fn serve_blocking(options: ServerOptions, framing: Framing) -> io::Result<()> {
    let server = storm_std::TcpServer::bind(options, framing)?;
    println!("tcp_echo listening on tcp://{}", server.local_addr());
    server.serve(Echo)
}
