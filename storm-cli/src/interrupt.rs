//! Ctrl-C (SIGINT, and SIGTERM) as something every runtime can wait on:
//! services stop accepting, close their sessions gracefully within a
//! timeout, and exit 0.

use std::io;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

/// Set once the first Ctrl-C arrived.
static INTERRUPTED: OnceLock<(Mutex<bool>, Condvar)> = OnceLock::new();

fn state() -> &'static (Mutex<bool>, Condvar) {
    INTERRUPTED.get_or_init(|| (Mutex::new(false), Condvar::new()))
}

/// Installs the handler. A second Ctrl-C while the first shutdown is still
/// under way exits at once (code 130), for a user who does not want to
/// wait.
///
/// # Errors
///
/// When a handler is already installed by someone else.
pub fn install() -> io::Result<()> {
    ctrlc::set_handler(|| {
        let (flag, wake) = state();
        let mut interrupted = flag.lock().unwrap_or_else(PoisonError::into_inner);
        if *interrupted {
            std::process::exit(130);
        }
        *interrupted = true;
        wake.notify_all();
    })
    .map_err(io::Error::other)
}

/// Blocks until Ctrl-C.
pub fn wait() {
    let (flag, wake) = state();
    let mut interrupted = flag.lock().unwrap_or_else(PoisonError::into_inner);
    while !*interrupted {
        interrupted = wake
            .wait(interrupted)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Installs the handler and runs `stop` on the current tokio runtime once
/// Ctrl-C arrives (a server's graceful shutdown, typically). Call from
/// inside the runtime.
///
/// # Errors
///
/// As for [`install`].
pub fn spawn_on_ctrl_c<F>(stop: F) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    install()?;
    tokio::spawn(async move {
        ctrl_c().await;
        tracing::info!("Ctrl-C: shutting down");
        stop.await;
    });
    Ok(())
}

/// Resolves on Ctrl-C (after [`install`]), on any async runtime. The
/// waiting thread is detached, so a service that stops for another reason
/// exits without waiting for it.
pub async fn ctrl_c() {
    let (done, interrupted) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        wait();
        let _ = done.send(());
    });
    let _ = interrupted.await;
}
