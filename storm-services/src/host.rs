//! Hosting a service: the [`Runtime`] it runs on, and what every service
//! needs from it beyond storm-async's [`Runtime`](storm_async::Runtime) —
//! a way in from a plain thread ([`AsyncRuntime::block_on`]), a [`Stop`]
//! signal that ends it, and how its servers log their connections'
//! failures ([`connection_error`], [`connection_closed`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use storm_host::link::CloseReason;
use storm_host::setup::client_speaks_tls;
use storm_proto::framing::FramingError;
use tokio::sync::Notify;

/// The runtimes a service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    /// tokio, multi-threaded.
    #[default]
    Tokio,
    /// smol's global executor.
    Smol,
    /// Blocking std::net (storm-std), two threads per connection.
    Std,
}

/// An async runtime a service can run on from a plain thread: tokio or
/// smol.
pub trait AsyncRuntime: storm_async::Runtime {
    /// Runs `future` to completion on this runtime, from a thread outside
    /// any runtime (tokio: a new multi-threaded runtime; smol: its global
    /// executor).
    ///
    /// # Errors
    ///
    /// `future`'s error, or (tokio) a runtime that cannot start.
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

/// The signal that stops a service: raised once, from anywhere (a Ctrl-C
/// handler, an admin console, a test), and waited on by blocking threads
/// ([`Stop::wait`]) and by tasks of any async runtime ([`Stop::raised`]).
/// Clones share the one signal; it is never lowered again.
#[derive(Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Default)]
struct StopState {
    raised: Mutex<bool>,
    /// Wakes [`Stop::wait`].
    threads: Condvar,
    /// Wakes [`Stop::raised`] (`tokio::sync`, which runs on any executor).
    tasks: Notify,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stop")
            .field("raised", &self.is_raised())
            .finish()
    }
}

impl Stop {
    /// A signal not raised yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal, waking every waiter. Returns `true` the first
    /// time, `false` when it was already raised.
    pub fn raise(&self) -> bool {
        let mut raised = self.lock();
        if *raised {
            return false;
        }
        *raised = true;
        drop(raised);
        self.0.threads.notify_all();
        self.0.tasks.notify_waiters();
        true
    }

    /// Whether the signal was raised.
    #[must_use]
    pub fn is_raised(&self) -> bool {
        *self.lock()
    }

    /// Blocks this thread until the signal is raised.
    pub fn wait(&self) {
        let mut raised = self.lock();
        while !*raised {
            raised = self
                .0
                .threads
                .wait(raised)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Resolves once the signal is raised, on any async runtime.
    pub async fn raised(&self) {
        loop {
            let mut woken = pin!(self.0.tasks.notified());
            // Registered before the check, so a raise in between wakes it.
            woken.as_mut().enable();
            if self.is_raised() {
                return;
            }
            woken.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.0.raised.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stop_wakes_threads_and_tasks_once() {
        let stop = Stop::new();
        assert!(!stop.is_raised());
        let (done, woken) = std::sync::mpsc::channel();
        {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                stop.wait();
                let _ = done.send("thread");
            });
        }
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                smol::block_on(stop.raised());
                let _ = done.send("task");
            });
        }
        assert!(stop.raise());
        assert!(!stop.raise(), "a second raise reports the first");
        let mut waiters: Vec<&str> = (0..2)
            .map(|_| {
                woken
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a waiter missed the stop")
            })
            .collect();
        waiters.sort_unstable();
        assert_eq!(waiters, ["task", "thread"]);
        // Raised already: both return at once.
        stop.wait();
        smol::block_on(stop.raised());
    }
}
