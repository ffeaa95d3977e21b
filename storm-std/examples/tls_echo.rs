//! WebSocket echo server over TLS (`wss://`) on blocking std sockets, two
//! threads per connection: the same interface as storm-tokio's `tls_echo`.
//!
//! `cargo run -p storm-std --example tls_echo -- 127.0.0.1:9443 cert.pem key.pem`
//!
//! `cert.pem` holds the certificate chain (leaf first), `key.pem` its
//! private key. For a try-out, a self-signed pair:
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
//!     -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
//!     -keyout key.pem -out cert.pem
//! ```

use std::process::ExitCode;

use storm_host::options::{ServerOptions, WsOptions};
use storm_proto::Message;
use storm_std::{Handler, Session, WsServer};

struct Echo;

impl Handler for Echo {
    fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message);
    }

    fn on_error(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        // Failed TLS handshakes (untrusted clients, port scanners) land here.
        eprintln!("tls_echo: {error}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, cert, key] = args.as_slice() else {
        eprintln!("usage: tls_echo ADDR CERT.pem KEY.pem");
        return ExitCode::from(2);
    };
    match run(addr, cert, key) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &str, cert: &str, key: &str) -> std::io::Result<()> {
    let options = ServerOptions {
        addr: addr.to_owned(),
        tls: Some(storm_std::tls::server_options_from_pem_files(cert, key)?),
        ..ServerOptions::default()
    };
    let server = WsServer::bind(options, WsOptions::default())?;
    println!("tls_echo listening on wss://{}", server.local_addr());
    server.serve(Echo)
}
