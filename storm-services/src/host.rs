//! Hosting a service: starting its server on the chosen [`Runtime`],
//! running it until its [`Stop`] signal is raised, and shutting it down
//! gracefully — written once here, so that a service provides only its
//! handler logic.
//!
//! - [`serve`] hosts a service that is a handler (one type that is both
//!   storm-async's [`Handler`](storm_async::Handler), for tokio and smol,
//!   and storm-std's): echo and JSON.
//! - [`on_async::serve_until`] and [`on_std::serve_until`] host any server
//!   with a graceful shutdown ([`on_async::Shutdown`],
//!   [`on_std::Shutdown`]): the broker, the chat (which runs a tick and a
//!   page server beside its sessions), and [`serve`] itself;
//!   [`on_async::shut_down_on`] and [`on_std::shut_down_on`] stop a server
//!   that serves on its own (RPC's).
//! - [`on_async::Server`] and [`on_std::Server`] bind a [`Listen`]
//!   (WebSocket, or TCP with a framing) on either adapter;
//!   [`on_async::every`] and [`on_std::every`] run periodic work.
//! - [`AsyncRuntime`] is the way into tokio or smol from a plain thread;
//!   [`connection_error`] and [`connection_closed`] are how every server
//!   logs its connections' failures.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use storm_host::hub::Hub;
use storm_host::link::CloseReason;
use storm_host::options::{ServerOptions, WsOptions};
use storm_host::setup::client_speaks_tls;
use storm_proto::framing::{Framing, FramingError};
use tokio::sync::Notify;

pub mod on_async;
pub mod on_std;

/// The runtimes a service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    /// tokio, multi-threaded.
    #[default]
    Tokio,
    /// smol: storm-smol's own executor thread, or smol's global executor
    /// with `SMOL_THREADS` above 1.
    Smol,
    /// Blocking std::net (storm-std), two threads per connection.
    Std,
}

/// What a server listens with: WebSocket, or TCP with a framing.
#[derive(Debug, Clone)]
pub enum Listen {
    /// WebSocket with these options.
    Ws(WsOptions),
    /// TCP with this framing.
    Tcp(Framing),
}

/// A server just bound, as [`serve`] shows it to the service it starts.
#[derive(Debug)]
#[non_exhaustive]
pub struct Bound {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// Its sessions: broadcast, groups, counts.
    pub hub: Hub,
}

/// Hosts a handler service on `runtime` until `stop` is raised: binds
/// `listen` on `options`, builds the service with `start` once bound (to
/// announce the address, or to keep the hub), serves every connection
/// with it, and on `stop` shuts the server down gracefully, aborting the
/// sessions still open after `timeout`. Returns when the server has
/// stopped.
///
/// # Errors
///
/// A failed bind, unusable TLS material, (tokio) a runtime that cannot
/// start, or the accept loop's failure.
pub fn serve<S>(
    runtime: Runtime,
    options: ServerOptions,
    listen: Listen,
    stop: &Stop,
    timeout: Duration,
    start: impl FnOnce(&Bound) -> S,
) -> io::Result<()>
where
    S: storm_async::Handler + storm_std::Handler,
{
    match runtime {
        Runtime::Tokio => serve_on::<storm_tokio::Tokio, S>(options, listen, stop, timeout, start),
        Runtime::Smol => serve_on::<storm_smol::Smol, S>(options, listen, stop, timeout, start),
        Runtime::Std => {
            let server = on_std::Server::bind(options, listen)?;
            let handle = server.handle();
            let service = start(&Bound {
                local_addr: server.local_addr(),
                hub: handle.hub().clone(),
            });
            let serving = server.spawn(service)?;
            on_std::serve_until(stop, timeout, &handle, serving)
        }
    }
}

/// [`serve`] on tokio or smol.
fn serve_on<R: AsyncRuntime, S: storm_async::Handler>(
    options: ServerOptions,
    listen: Listen,
    stop: &Stop,
    timeout: Duration,
    start: impl FnOnce(&Bound) -> S,
) -> io::Result<()> {
    on_async::serve_until::<R, io::Error, _, _, _>(stop, timeout, || async {
        let server = on_async::Server::<R>::bind(options, listen).await?;
        let handle = server.handle();
        let service = start(&Bound {
            local_addr: server.local_addr(),
            hub: handle.hub().clone(),
        });
        Ok((handle, server.serve(service)))
    })
}

/// An async runtime a service can run on from a plain thread: tokio or
/// smol.
pub trait AsyncRuntime: storm_async::Runtime {
    /// Runs `future` to completion on this runtime, from a thread outside
    /// any runtime (tokio: a new runtime, multi-threaded unless
    /// [`set_tokio_threads`] says 1; smol: storm-smol's executor).
    ///
    /// # Errors
    ///
    /// `future`'s error, or (tokio) a runtime that cannot start.
    fn block_on<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T>;
}

/// Worker threads of the tokio runtimes this process starts; 0: one per
/// core (tokio's default).
static TOKIO_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many worker threads the tokio runtimes that
/// [`AsyncRuntime::block_on`] starts from now on get: `1` runs every task
/// on the calling thread (a current-thread runtime: no wake-ups across
/// threads, no work stealing), `n > 1` a multi-threaded runtime of `n`,
/// `0` (the default) one worker per core. For a process's entry point,
/// before it starts a service. smol takes its count from `SMOL_THREADS`
/// (unset or 1: storm-smol's own executor thread); std serves each
/// connection on threads of its own.
pub fn set_tokio_threads(threads: usize) {
    TOKIO_THREADS.store(threads, Ordering::Relaxed);
}

impl AsyncRuntime for storm_tokio::Tokio {
    fn block_on<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        let mut builder = match TOKIO_THREADS.load(Ordering::Relaxed) {
            1 => tokio::runtime::Builder::new_current_thread(),
            threads => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                if threads > 1 {
                    builder.worker_threads(threads);
                }
                builder
            }
        };
        builder.enable_all().build()?.block_on(future)
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
