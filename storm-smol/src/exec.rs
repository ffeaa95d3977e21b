//! storm-smol's executor: one thread that runs every task storm-smol
//! spawns and, when it has none to run, waits in storm-smol's own poller
//! ([`Edges`]).
//!
//! smol's global executor thread idles in async-io's `block_on`, which
//! waits in async-io's reactor; storm-smol's poller is one source there,
//! so every turn made two waits (async-io's, then the poller's, five
//! system calls each through `polling`) and re-armed the poller's
//! descriptor. And async-io's own thread takes the reactor whenever the
//! executor thread has been busy for 50 µs without turning it: under load
//! it turned most of them, and each handed the read edges over to the
//! executor thread with a futex wake and two context switches. Here the
//! thread that runs the tasks is the one that waits for their sockets: one
//! wait per turn, the edges counted and the tasks woken on that thread.
//!
//! Writes that would block, accepts, connects and timers still wait
//! through async-io (its own thread, or a thread in `smol::block_on`,
//! turns it); their wakes reach this thread through [`Edges::notify`].
//! This executor is used with one executor thread (`SMOL_THREADS` unset or
//! 1, smol's default); with more, tasks go to smol's global executor and
//! the poller runs under async-io as before.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use polling::Events;

use crate::readiness::Edges;

/// The executor: smol's `Executor` for the tasks, and the poller its
/// thread waits in.
#[derive(Debug)]
pub(crate) struct Executor {
    tasks: smol::Executor<'static>,
    edges: &'static Edges,
    /// The thread waits in the poller (or is about to): a wake must
    /// [`notify`](Edges::notify) it.
    sleeping: AtomicBool,
    /// A task was scheduled (or the executor yielded) since the thread last
    /// looked: it runs again before it waits.
    woken: AtomicBool,
}

/// The process's executor, started on first use; `None` with more than one
/// executor thread asked for, or without the poller.
static GLOBAL: LazyLock<Option<&'static Executor>> = LazyLock::new(|| {
    let threads = std::env::var("SMOL_THREADS")
        .ok()
        .and_then(|threads| threads.parse::<usize>().ok());
    if threads.is_some_and(|threads| threads > 1) {
        return None;
    }
    let executor = Executor::start(Edges::process()?);
    executor.ok()
});

/// The waker of the executor's own future: marks it woken and, when its
/// thread is waiting, ends the wait.
#[derive(Debug)]
struct Wakeup(&'static Executor);

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let executor = self.0;
        if !executor.woken.swap(true, Ordering::SeqCst) && executor.sleeping.load(Ordering::SeqCst)
        {
            executor.edges.notify();
        }
    }
}

impl Executor {
    /// The process's executor.
    pub(crate) fn global() -> Option<&'static Self> {
        *GLOBAL
    }

    /// An executor on `edges`, with its thread running (the process's is
    /// [`Executor::global`]). It lives as long as the process.
    fn start(edges: &'static Edges) -> std::io::Result<&'static Self> {
        let executor: &'static Self = Box::leak(Box::new(Self {
            tasks: smol::Executor::new(),
            edges,
            sleeping: AtomicBool::new(false),
            woken: AtomicBool::new(false),
        }));
        std::thread::Builder::new()
            .name("storm-smol".into())
            .spawn(move || {
                // A task's panic stays in its task (smol's executor catches
                // it); anything else restarts the loop, as smol's global
                // executor threads do.
                loop {
                    let _ = catch_unwind(AssertUnwindSafe(|| executor.run()));
                }
            })?;
        Ok(executor)
    }

    /// The poller this executor's thread waits in.
    pub(crate) fn edges(&self) -> &'static Edges {
        self.edges
    }

    /// Runs `future` on this executor's thread.
    pub(crate) fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(future).detach();
    }

    /// The thread's loop: runs tasks while there are any, takes the edges
    /// that came meanwhile without waiting, and waits in the poller once
    /// nothing is left to run.
    fn run(&'static self) {
        let waker = Waker::from(Arc::new(Wakeup(self)));
        let mut cx = Context::from_waker(&waker);
        let mut tasks = pin!(self.tasks.run(std::future::pending::<()>()));
        let mut events = Events::new();
        let mut woken = Vec::new();
        loop {
            self.woken.store(false, Ordering::SeqCst);
            // Runs until no task is left, or yields after a batch (its
            // waker then says so).
            let _ = tasks.as_mut().poll(&mut cx);
            let timeout = if self.woken.load(Ordering::SeqCst) {
                // More to run: take the edges that came, without waiting.
                Some(Duration::ZERO)
            } else {
                self.sleeping.store(true, Ordering::SeqCst);
                // A wake between the run and `sleeping` saw it false and
                // did not notify: look once more before waiting.
                if self.woken.load(Ordering::SeqCst) {
                    Some(Duration::ZERO)
                } else {
                    None
                }
            };
            self.edges.drive(&mut events, timeout, &mut woken);
            self.sleeping.store(false, Ordering::SeqCst);
            // Woken on this thread, after `sleeping` is down: no notify.
            woken.drain(..).for_each(Waker::wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::proto::Message;
    use crate::{Handler, Session, TcpServer};

    /// The most a test waits for one event.
    const WAIT: Duration = Duration::from_secs(10);

    struct Echo(mpsc::Sender<Option<String>>);

    impl Handler for Echo {
        async fn on_message(&self, session: &Session, message: Message) {
            let _ = self.0.send(std::thread::current().name().map(String::from));
            let _ = session.send(message).await;
        }
    }

    /// Round trips through a real loopback server: every read edge is
    /// counted by the executor thread's own wait in the poller, none by
    /// async-io's reactor, and the handler runs on that thread.
    #[test]
    fn read_edges_reach_tasks_through_the_executor_threads_own_wait() {
        let Some(executor) = Executor::global() else {
            // SMOL_THREADS above 1: smol's global executor runs the tasks.
            return;
        };
        let (tx, rx) = mpsc::channel();
        let (ran, on) = mpsc::channel();
        std::thread::spawn(move || {
            smol::block_on(async {
                let options =
                    storm_host::options::ServerOptions::default().with_addr("127.0.0.1:0");
                let server = TcpServer::bind(options, Default::default())
                    .await
                    .expect("bound");
                let _ = tx.send(server.local_addr());
                let _ = server.serve(Echo(ran)).await;
            });
        });
        let addr = rx.recv_timeout(WAIT).expect("the server is up");
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let (drives, pumps) = executor.edges().waits();
        const ROUNDS: u64 = 100;
        let mut threads = Vec::new();
        for round in 0..ROUNDS as u32 {
            // One length-prefixed message, echoed back.
            let mut frame = 4u32.to_be_bytes().to_vec();
            frame.extend(round.to_be_bytes());
            client.write_all(&frame).unwrap();
            let mut echoed = [0; 8];
            client.read_exact(&mut echoed).unwrap();
            assert_eq!(echoed[..], frame[..]);
            threads.push(on.recv_timeout(WAIT).expect("the handler ran"));
        }
        let (drives, pumps) = {
            let (now_drives, now_pumps) = executor.edges().waits();
            (now_drives - drives, now_pumps - pumps)
        };
        assert_eq!(pumps, 0, "async-io's reactor took edges");
        // Most round trips wait in the poller for the client's next
        // frame, but not every one has to: a frame that arrives while the
        // executor thread is still busy with the last reply is read
        // without a wait. So: waits happened, and all of them here.
        assert!(
            drives > 0,
            "no wait of the executor thread's own for {ROUNDS} round trips"
        );
        assert!(
            threads
                .iter()
                .all(|name| name.as_deref() == Some("storm-smol")),
            "the handler ran on {threads:?}"
        );
    }
}
