//! What the echo and hosting tests share: the echo service hosted with
//! `host::serve` on a thread of its own, on any runtime.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use storm_host::hub::Hub;
use storm_host::options::ServerOptions;
use storm_services::echo::Echo;
use storm_services::host::{self, Listen, Runtime, Stop};

/// How long any one step may take on a loaded machine.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// [`Echo`] served by `host::serve` on a thread until [`stop`](Self::stop).
pub(crate) struct EchoServer {
    pub(crate) runtime: Runtime,
    pub(crate) addr: SocketAddr,
    pub(crate) hub: Hub,
    stop: Stop,
    ended: mpsc::Receiver<Result<(), String>>,
}

impl EchoServer {
    /// Binds `listen` with `options` on `runtime`; returns once bound.
    pub(crate) fn start(runtime: Runtime, options: ServerOptions, listen: Listen) -> Self {
        let stop = Stop::new();
        let (bound, started) = mpsc::channel::<(SocketAddr, Hub)>();
        let (done, ended) = mpsc::channel();
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let result = host::serve(runtime, options, listen, &stop, WAIT, |server| {
                    let _ = bound.send((server.local_addr, server.hub.clone()));
                    Echo
                });
                let _ = done.send(result.map_err(|e| e.to_string()));
            });
        }
        let (addr, hub) = started.recv_timeout(WAIT).expect("bound");
        Self {
            runtime,
            addr,
            hub,
            stop,
            ended,
        }
    }

    /// Raises the stop; `serve` must return `Ok` within [`WAIT`].
    pub(crate) fn stop(self) {
        let runtime = self.runtime;
        assert!(self.stop.raise());
        let result = self
            .ended
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{runtime:?}: serve did not return after the stop"));
        assert_eq!(result, Ok(()), "{runtime:?}");
    }
}
