//! The runtimes every `storm` service runs on (`--runtime tokio|smol|std`)
//! and the `--tls` option every server takes ([`TlsArgs`]). How a service
//! runs on them is storm-services' [`host`](storm_services::host).

use std::io;

use clap::ValueEnum;

/// The runtimes `storm` services run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// tokio, multi-threaded.
    Tokio,
    /// smol's global executor.
    Smol,
    /// Blocking std::net, two threads per connection.
    Std,
}

impl From<Runtime> for storm_services::host::Runtime {
    fn from(runtime: Runtime) -> Self {
        match runtime {
            Runtime::Tokio => Self::Tokio,
            Runtime::Smol => Self::Smol,
            Runtime::Std => Self::Std,
        }
    }
}

/// `--tls CERT_PEM KEY_PEM`, the same option on every server a `storm`
/// service runs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Serve TLS (wss:// for WebSocket, TLS over TCP otherwise) with this
    /// PEM certificate chain (leaf first) and PEM private key.
    #[arg(long, num_args = 2, value_names = ["CERT_PEM", "KEY_PEM"])]
    tls: Option<Vec<std::path::PathBuf>>,
}

impl TlsArgs {
    /// Whether `--tls` was given.
    pub fn enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the PEM files of `--tls` into `options.tls` (nothing without
    /// `--tls`).
    ///
    /// # Errors
    ///
    /// A file cannot be read or does not hold what it should; the error
    /// starts with the option's usage, which gives the order of the files.
    pub fn apply(&self, options: &mut storm_host::options::ServerOptions) -> io::Result<()> {
        if let Some([cert, key]) = self.tls.as_deref() {
            let tls = storm_host::tls::server_options_from_pem_files(cert, key)
                .map_err(|e| io::Error::new(e.kind(), format!("--tls CERT_PEM KEY_PEM: {e}")))?;
            options.tls = Some(tls);
        }
        Ok(())
    }

    /// The URL scheme of a server with these options: `ws`/`wss` for
    /// WebSocket, `tcp`/`tls` otherwise.
    pub fn scheme(&self, websocket: bool) -> &'static str {
        match (websocket, self.enabled()) {
            (true, false) => "ws",
            (true, true) => "wss",
            (false, false) => "tcp",
            (false, true) => "tls",
        }
    }
}
