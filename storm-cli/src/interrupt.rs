//! Ctrl-C (SIGINT, and SIGTERM) as a [`Stop`] signal every runtime can
//! wait on: services stop accepting, close their sessions gracefully
//! within a timeout, and exit 0.

use std::io;
use std::sync::OnceLock;

use storm_services::host::Stop;

/// Raised by the first Ctrl-C.
static CTRL_C: OnceLock<Stop> = OnceLock::new();

/// The signal Ctrl-C raises (after [`install`]).
pub fn signal() -> Stop {
    CTRL_C.get_or_init(Stop::new).clone()
}

/// Installs the handler. A second Ctrl-C while the first shutdown is still
/// under way exits at once (code 130), for a user who does not want to
/// wait.
///
/// # Errors
///
/// When a handler is already installed by someone else.
pub fn install() -> io::Result<()> {
    let stop = signal();
    ctrlc::set_handler(move || {
        if !stop.raise() {
            std::process::exit(130);
        }
    })
    .map_err(io::Error::other)
}

/// Blocks until Ctrl-C.
pub fn wait() {
    signal().wait();
}

/// Resolves on Ctrl-C (after [`install`]), on any async runtime.
pub async fn ctrl_c() {
    signal().raised().await;
}
