//! Read readiness of storm-smol's TCP sockets, edge-triggered.
//!
//! async-io registers every socket in oneshot mode: each wait for input
//! re-arms the socket with an `epoll_ctl`, one system call per message in
//! ping-pong, which tokio (mio registers edge-triggered, once) does not
//! make. Here every socket is registered once, edge-triggered for reading,
//! in a poller of storm-smol's own ([`Edges`]); that poller's descriptor
//! is the one source async-io watches for all of them. When it is
//! readable, its waker (run by whichever thread turns async-io's reactor)
//! takes the poller's events without blocking, counts an edge on each
//! socket's [`Readiness`], wakes the tasks waiting for one, and re-arms the
//! poller's descriptor: one `epoll_ctl` per reactor turn, not per socket.
//!
//! That is how the poller runs under smol's global executor (`SMOL_THREADS`
//! above 1). With one executor thread, storm-smol's own executor
//! (`exec.rs`) runs the tasks instead and waits in this poller itself
//! ([`Edges::drive`]): async-io's reactor, its thread and its wait are then
//! out of the way of every read.
//!
//! Writes and accepts still wait through async-io (a socket whose send
//! buffer is full is rare, and each waits once). Where edge-triggered
//! polling is not available, sockets read through async-io as before.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use async_io::Async;
use polling::{Event, Events, PollMode, Poller};

use crate::lock;
use crate::slab::{Key, Slab};

/// One socket's edges: how many the poller reported, and the task waiting
/// for the next.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    edges: AtomicU64,
    waiter: Mutex<Option<Waker>>,
}

impl Readiness {
    /// The number of edges so far: read it before a read, and a wait with
    /// it returns when one came after.
    pub(crate) fn edges(&self) -> u64 {
        self.edges.load(Ordering::Acquire)
    }

    /// Ready once an edge came after `seen` (a value of [`edges`](Self::edges));
    /// otherwise the task waits for it. A task that takes another's place
    /// wakes the one it replaces (two handles waiting at once both hear).
    pub(crate) fn poll_edge(&self, cx: &mut Context<'_>, seen: u64) -> Poll<()> {
        if self.edges() != seen {
            return Poll::Ready(());
        }
        let replaced = {
            let mut waiter = lock(&self.waiter);
            match &*waiter {
                Some(waker) if waker.will_wake(cx.waker()) => None,
                _ => waiter.replace(cx.waker().clone()),
            }
        };
        if let Some(waker) = replaced {
            waker.wake();
        }
        // An edge counted before the waker was in place finds it gone or
        // not yet there: look again now that it is.
        if self.edges() != seen {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// The poller reported an edge: count it and give back the waiting
    /// task's waker.
    fn edge(&self) -> Option<Waker> {
        self.edges.fetch_add(1, Ordering::AcqRel);
        lock(&self.waiter).take()
    }
}

/// A socket's registration in [`Edges`]; dropping it deregisters the
/// socket, which must be dropped after it (the poller must not outlive
/// its descriptor's registration: `polling`'s contract).
#[derive(Debug)]
pub(crate) struct Registration {
    edges: &'static Edges,
    readiness: Arc<Readiness>,
    key: Key,
    fd: RawFd,
}

impl Registration {
    /// The socket's edges.
    pub(crate) fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.edges.deregister(self);
    }
}

/// The poller every socket's read edges arrive on, and what maps its
/// events back to sockets.
#[derive(Debug)]
pub(crate) struct Edges {
    /// The poller, as the one source async-io watches.
    poller: Async<Poller>,
    state: Mutex<State>,
    /// This poller's waker at async-io: takes and hands out the events.
    pump: OnceLock<Waker>,
    /// Waits made by [`Edges::drive`] and by the pump.
    #[cfg(test)]
    drives: AtomicU64,
    #[cfg(test)]
    pumps: AtomicU64,
}

/// Sockets by key (the poller's event key is [`Key::to_bits`]), and the
/// events buffer.
#[derive(Debug)]
struct State {
    sockets: Slab<Arc<Readiness>>,
    events: Events,
}

/// The poller's event key for a socket's slab key (lossless: [`Edges::new`]
/// refuses targets whose `usize` is under 64 bits).
fn event_key(key: Key) -> usize {
    key.to_bits() as usize
}

/// The process's poller, or `None` where edge-triggered polling is not
/// available (the sockets then read through async-io).
static GLOBAL: LazyLock<Option<Edges>> = LazyLock::new(|| Edges::new().ok());

/// The waker async-io holds for the poller's descriptor.
#[derive(Debug)]
struct Pump(&'static Edges);

impl Wake for Pump {
    fn wake(self: Arc<Self>) {
        self.0.pump();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.pump();
    }
}

impl Edges {
    /// A poller of its own (the process's is [`Edges::process`]; a test
    /// leaks one and [`arm`](Self::arm)s it).
    pub(crate) fn new() -> io::Result<Self> {
        // Event keys hold a slab key's 64 bits: 64-bit targets only.
        if usize::BITS < 64 {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let poller = Poller::new()?;
        if !poller.supports_edge() {
            return Err(io::ErrorKind::Unsupported.into());
        }
        Ok(Self {
            poller: Async::new(poller)?,
            state: Mutex::new(State {
                sockets: Slab::default(),
                events: Events::new(),
            }),
            pump: OnceLock::new(),
            #[cfg(test)]
            drives: AtomicU64::new(0),
            #[cfg(test)]
            pumps: AtomicU64::new(0),
        })
    }

    /// The process's poller, not yet driven: storm-smol's executor drives it
    /// ([`drive`](Self::drive)), or async-io does once it is
    /// [`arm`](Self::arm)ed.
    pub(crate) fn process() -> Option<&'static Self> {
        GLOBAL.as_ref()
    }

    /// Has async-io watch this poller (once; later calls do nothing).
    pub(crate) fn arm(&'static self) {
        if self.pump.get().is_some() {
            return;
        }
        let mut first = false;
        self.pump.get_or_init(|| {
            first = true;
            Waker::from(Arc::new(Pump(self)))
        });
        if first {
            self.pump();
        }
    }

    /// Registers `socket` for read edges; `None` when the poller refuses
    /// it (the socket then reads through async-io).
    pub(crate) fn register(&'static self, socket: &TcpStream) -> Option<Registration> {
        let readiness = Arc::new(Readiness::default());
        let mut state = lock(&self.state);
        let key = state.sockets.insert(Arc::clone(&readiness)).ok()?;
        // SAFETY: the registration deletes the socket from the poller when
        // it is dropped, and its owner (`runtime::Socket`) drops it before
        // the socket.
        let added = unsafe {
            self.poller.get_ref().add_with_mode(
                socket,
                Event::readable(event_key(key)),
                PollMode::Edge,
            )
        };
        if added.is_err() {
            state.sockets.remove(key);
            return None;
        }
        Some(Registration {
            edges: self,
            readiness,
            key,
            fd: socket.as_raw_fd(),
        })
    }

    fn deregister(&self, registration: &Registration) {
        // SAFETY: the descriptor is still open: its owner drops the socket
        // after the registration.
        let fd = unsafe { BorrowedFd::borrow_raw(registration.fd) };
        // Failing leaves the socket in the poller until it is closed,
        // which removes it: nothing to do about it.
        let _ = self.poller.get_ref().delete(fd);
        let removed = lock(&self.state).sockets.remove(registration.key);
        drop(removed);
    }

    /// Waits up to `timeout` (`None`: until one comes; zero: not at all)
    /// for read edges, counts each on its socket's [`Readiness`], and moves
    /// the wakers of the tasks waiting for them to `woken` (woken by the
    /// caller, outside every lock). For a poller no one
    /// [`arm`](Self::arm)ed; [`notify`](Self::notify) ends the wait early.
    ///
    /// The sockets' lock is not held while it waits: registering and
    /// deregistering go on meanwhile.
    pub(crate) fn drive(
        &self,
        events: &mut Events,
        timeout: Option<Duration>,
        woken: &mut Vec<Waker>,
    ) {
        events.clear();
        // An error (a signal: `polling` retries those itself) is a wait
        // that found nothing: the caller waits again.
        if self.poller.get_ref().wait(events, timeout).is_err() {
            return;
        }
        #[cfg(test)]
        self.drives.fetch_add(1, Ordering::Relaxed);
        let state = lock(&self.state);
        for event in events.iter() {
            // A socket deregistered since its event came has a key of an
            // older generation: nothing.
            if let Some(readiness) = state.sockets.get(Key::from_bits(event.key as u64)) {
                woken.extend(readiness.edge());
            }
        }
    }

    /// Ends a [`drive`](Self::drive) that is waiting, or the next one.
    pub(crate) fn notify(&self) {
        // Failing leaves the eventfd as it was: already notified.
        let _ = self.poller.get_ref().notify();
    }

    /// How many waits [`drive`](Self::drive) and the async-io pump made.
    #[cfg(test)]
    pub(crate) fn waits(&self) -> (u64, u64) {
        (
            self.drives.load(Ordering::Relaxed),
            self.pumps.load(Ordering::Relaxed),
        )
    }

    /// How many sockets are registered.
    #[cfg(test)]
    pub(crate) fn registered(&self) -> usize {
        lock(&self.state).sockets.len()
    }

    /// Takes the poller's events while async-io says its descriptor is
    /// readable, counts each socket's edge and wakes its task; returns
    /// with the descriptor re-armed at async-io.
    fn pump(&'static self) {
        let Some(pump) = self.pump.get() else { return };
        let mut cx = Context::from_waker(pump);
        let mut woken = Vec::new();
        let mut state = lock(&self.state);
        loop {
            match self.poller.poll_readable(&mut cx) {
                Poll::Pending => break,
                // The poller's descriptor cannot fail short of the process
                // running out of memory; retrying would spin.
                Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(())) => {}
            }
            let State { sockets, events } = &mut *state;
            events.clear();
            if self
                .poller
                .get_ref()
                .wait(events, Some(Duration::ZERO))
                .is_err()
            {
                continue;
            }
            #[cfg(test)]
            self.pumps.fetch_add(1, Ordering::Relaxed);
            for event in events.iter() {
                // A socket deregistered since its event came has a key of
                // an older generation: nothing.
                if let Some(readiness) = sockets.get(Key::from_bits(event.key as u64)) {
                    woken.extend(readiness.edge());
                }
            }
        }
        drop(state);
        woken.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;
    use crate::testing::Tell;

    /// The most a test waits for one event.
    const WAIT: Duration = Duration::from_secs(10);

    fn edges() -> &'static Edges {
        let edges: &'static Edges = Box::leak(Box::new(Edges::new().expect("a poller")));
        edges.arm();
        edges
    }

    /// A connected pair of loopback sockets, the first non-blocking.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    fn would_block(socket: &mut TcpStream) -> bool {
        let mut buf = [0; 64];
        matches!(socket.read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn input_after_a_drained_read_wakes_the_waiting_task() {
        let edges = edges();
        let (mut server, mut client) = pair();
        let registration = edges.register(&server).expect("registered");
        let readiness = registration.readiness();
        let (tx, rx) = mpsc::channel();
        let waker = Waker::from(Arc::new(Tell(tx, "reader")));
        for round in 0..3u8 {
            let seen = readiness.edges();
            assert!(would_block(&mut server));
            let mut cx = Context::from_waker(&waker);
            if readiness.poll_edge(&mut cx, seen).is_pending() {
                client.write_all(&[round; 10]).unwrap();
                // No executor: async-io's own thread turns the reactor.
                assert_eq!(rx.recv_timeout(WAIT), Ok("reader"));
            }
            assert!(readiness.poll_edge(&mut cx, seen).is_ready());
            let mut buf = [0; 64];
            assert_eq!(server.read(&mut buf).unwrap(), 10);
            assert_eq!(buf[..10], [round; 10]);
        }
    }

    #[test]
    fn an_edge_counted_before_the_wait_is_not_missed() {
        let edges = edges();
        let (mut server, mut client) = pair();
        let registration = edges.register(&server).expect("registered");
        let readiness = registration.readiness();
        let seen = readiness.edges();
        assert!(would_block(&mut server));
        client.write_all(b"meanwhile").unwrap();
        // The edge arrives with no task waiting; the wait that comes after
        // it returns at once.
        let deadline = std::time::Instant::now() + WAIT;
        while readiness.edges() == seen {
            assert!(
                std::time::Instant::now() < deadline,
                "no edge within {WAIT:?}"
            );
            std::thread::yield_now();
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(readiness.poll_edge(&mut cx, seen).is_ready());
    }

    #[test]
    fn a_task_that_takes_the_wait_over_wakes_the_one_it_replaces() {
        let edges = edges();
        let (server, _client) = pair();
        let registration = edges.register(&server).expect("registered");
        let readiness = registration.readiness();
        let (tx, rx) = mpsc::channel();
        let first = Waker::from(Arc::new(Tell(tx.clone(), "first")));
        let second = Waker::from(Arc::new(Tell(tx, "second")));
        let seen = readiness.edges();
        assert!(
            readiness
                .poll_edge(&mut Context::from_waker(&first), seen)
                .is_pending()
        );
        assert!(
            readiness
                .poll_edge(&mut Context::from_waker(&second), seen)
                .is_pending()
        );
        assert_eq!(rx.try_recv(), Ok("first"));
    }

    #[test]
    fn dropped_registrations_leave_nothing_behind() {
        let edges = edges();
        let sockets: Vec<_> = (0..50).map(|_| pair()).collect();
        let registrations: Vec<_> = sockets
            .iter()
            .map(|(server, _)| edges.register(server).expect("registered"))
            .collect();
        assert_eq!(edges.registered(), 50);
        drop(registrations);
        assert_eq!(edges.registered(), 0);
        // Slots are reused: the poller holds no more than were open at once.
        let again: Vec<_> = sockets
            .iter()
            .map(|(server, _)| edges.register(server).expect("registered"))
            .collect();
        assert_eq!(edges.registered(), 50);
        assert_eq!(lock(&edges.state).sockets.slots(), 50);
        drop(again);
    }
}
