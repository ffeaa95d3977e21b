//! WebSocket echo server: permessage-deflate on, a 64 MiB message limit
//! (the Autobahn suite's 9.* cases send 16 MiB messages), and `wss://`
//! with `--tls`. The Autobahn server suite runs against it on every
//! runtime.
//!
//! ```text
//! cargo run --release -p storm-examples --example ws_echo -- --runtime smol 127.0.0.1:9001
//! cargo run -p storm-examples --example ws_echo -- 127.0.0.1:9443 --tls cert.pem key.pem
//! ```
//!
//! `cert.pem` holds the certificate chain (leaf first), `key.pem` its
//! private key. For a try-out, a self-signed pair:
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
//!     -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
//!     -keyout key.pem -out cert.pem
//! ```

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use storm_examples::{AUTOBAHN_PENDING_BYTES, AsyncRuntime, Echo, Runtime, autobahn_ws};
use storm_host::options::{ServerOptions, WsOptions};
use storm_smol::Smol;
use storm_tokio::Tokio;

/// WebSocket echo server.
#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(default_value = "127.0.0.1:9001")]
    addr: String,
    /// Serve `wss://` with this PEM certificate chain (leaf first) and key.
    #[arg(long, num_args = 2, value_names = ["CERT_PEM", "KEY_PEM"])]
    tls: Option<Vec<PathBuf>>,
    /// The adapter to run on.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

fn main() -> ExitCode {
    storm_examples::exit("ws_echo", run(Args::parse()))
}

fn run(args: Args) -> io::Result<()> {
    let mut options = ServerOptions::default().with_addr(args.addr);
    options.backpressure.max_pending_send_bytes = AUTOBAHN_PENDING_BYTES;
    // TLS is an option of the same server, not another server. Every
    // adapter's `tls` module loads the same PEM files into these options.
    if let Some([cert, key]) = args.tls.as_deref() {
        options.tls = Some(storm_tokio::tls::server_options_from_pem_files(cert, key)?);
    }
    let ws = autobahn_ws();
    match args.runtime {
        Runtime::Tokio => Tokio::block_on(serve::<Tokio>(options, ws)),
        Runtime::Smol => Smol::block_on(serve::<Smol>(options, ws)),
        Runtime::Std => serve_blocking(options, ws),
    }
}

/// Serves on tokio or smol until the server fails.
async fn serve<R: AsyncRuntime>(options: ServerOptions, ws: WsOptions) -> io::Result<()> {
    let scheme = scheme(&options);
    let server = storm_async::WsServer::<R>::bind(options, ws).await?;
    println!("ws_echo listening on {scheme}://{}", server.local_addr());
    server.serve(Echo).await
}

/// Serves on storm-std, on this thread, until the server fails.
fn serve_blocking(options: ServerOptions, ws: WsOptions) -> io::Result<()> {
    let scheme = scheme(&options);
    let server = storm_std::WsServer::bind(options, ws)?;
    println!("ws_echo listening on {scheme}://{}", server.local_addr());
    server.serve(Echo)
}

fn scheme(options: &ServerOptions) -> &'static str {
    if options.tls.is_some() { "wss" } else { "ws" }
}
