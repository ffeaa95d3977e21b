//! The runtimes every `storm` service runs on (`--runtime tokio|smol|std`),
//! what the services' async paths need from tokio and smol beyond
//! storm-async's [`Runtime`](storm_async::Runtime) (a way in,
//! [`AsyncRuntime::block_on`], and a Ctrl-C stopper), the `--tls`
//! option every server takes ([`TlsArgs`]), and how every server logs its
//! connections' failures ([`connection_error`], [`connection_closed`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use storm_host::link::CloseReason;
use storm_host::setup::client_speaks_tls;
use storm_proto::framing::FramingError;

use crate::interrupt;
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

/// An async runtime a service can run on from `main`: tokio or smol.
pub trait AsyncRuntime: storm_async::Runtime {
    /// Runs `future` to completion on this runtime, from a thread outside
    /// any runtime.
    fn block_on<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T>;
}

impl AsyncRuntime for storm_tokio::Tokio {
    fn block_on<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(future)
    }
}

impl AsyncRuntime for storm_smol::Smol {
    fn block_on<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        smol::block_on(future)
    }
}

/// On Ctrl-C (after [`interrupt::install`]), shuts `server` down
/// gracefully within `timeout`, in a task of its own.
pub fn shutdown_on_ctrl_c<R: AsyncRuntime>(
    server: storm_async::ServerHandle<R>,
    timeout: Duration,
) {
    R::spawn(async move {
        interrupt::ctrl_c().await;
        tracing::info!(
            sessions = server.session_count(),
            "Ctrl-C: closing sessions"
        );
        server.shutdown(timeout).await;
    });
}

/// On std: blocks until Ctrl-C (after [`interrupt::install`]), shuts
/// `server` down gracefully within `timeout`, and waits for its accept
/// thread `serving`.
///
/// # Errors
///
/// The accept thread's error, or a panic of it.
pub fn std_until_ctrl_c(
    server: &storm_std::ServerHandle,
    serving: std::thread::JoinHandle<io::Result<()>>,
    timeout: Duration,
) -> io::Result<()> {
    interrupt::wait();
    tracing::info!(
        sessions = server.session_count(),
        "Ctrl-C: closing sessions"
    );
    server.shutdown(timeout);
    serving
        .join()
        .map_err(|_| io::Error::other("the accept thread panicked"))?
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

/// Logs a server connection's failure before it became a session (a
/// handler's `on_error`; the adapters name the peer in it). A TLS client
/// on a plain port is a configuration mistake the operator must see, so it
/// is a warning; the everyday failures (a peer that left mid-handshake, a
/// handshake timeout, a refused upgrade) are debug lines.
pub fn connection_error(error: &(dyn std::error::Error + Send + Sync + 'static)) {
    if client_speaks_tls(error) {
        tracing::warn!("{error}");
    } else {
        tracing::debug!(%error, "connection error");
    }
}

/// Logs a session that ended on a fault (a handler's `on_disconnect`), with
/// the peer's address: a TLS ClientHello on a plain framed port as a
/// warning (see [`connection_error`]), other faults as debug lines, and
/// normal closes not at all.
pub fn connection_closed(remote: SocketAddr, reason: &CloseReason) {
    if matches!(reason, CloseReason::Framing(FramingError::ClientSpeaksTls)) {
        tracing::warn!("from {remote}: {reason}");
    } else if !reason.is_normal() {
        tracing::debug!(%remote, %reason, "connection closed");
    }
}
