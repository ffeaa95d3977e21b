//! What every peer echo server shares: the `BIN ADDR` command line, the
//! loopback rule, the tokio runtime, the "listening on" line and the accept
//! loop.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::sys::loopback_addr;

/// The error a connection handler may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a peer serves before it exits by itself, so that a server left
/// behind by an interrupted run does not live on: one hour.
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// Runs a peer echo server: reads `ADDR` from the command line (refusing
/// anything but loopback), binds it on a multi-threaded tokio runtime (one
/// worker per CPU the process may run on, so one under `taskset -c 0`),
/// prints `NAME listening on SCHEME://ADDR` as its first line, and serves
/// each connection with `handler` on its own task until [`LIFETIME`] has
/// passed.
///
/// Handler errors are printed only when `STORM_E2E_VERBOSE` is set: the
/// load generator drops its connections without closing them, so resets are
/// the normal end of a run.
pub fn run<F, Fut>(name: &str, scheme: &str, handler: F) -> ExitCode
where
    F: Fn(TcpStream) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let Some(text) = std::env::args().nth(1) else {
        eprintln!("usage: {name} ADDR   (a loopback address, e.g. 127.0.0.1:0)");
        return ExitCode::from(2);
    };
    let addr = match loopback_addr(&text) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = std::env::var_os("STORM_E2E_VERBOSE").is_some();
    let result = runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("{name} listening on {scheme}://{}", listener.local_addr()?);
        let serve = async {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        // Out of descriptors, most likely: let some close.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    if let (true, Err(e)) = (verbose, handler(stream).await) {
                        eprintln!("{peer}: {e}");
                    }
                });
            }
        };
        // `serve` never ends; the lifetime bounds the process.
        let _ = tokio::time::timeout(LIFETIME, serve).await;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
