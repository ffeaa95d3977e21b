//! Runtime-neutral waiting: racing two futures, a timeout on the runtime's
//! timer, and a one-shot signal. None of this is on the per-message path.

use std::future::{Future, poll_fn};
use std::mem;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::Runtime;

/// Locks, ignoring poisoning: every value guarded here stays consistent
/// across a panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which of two raced futures finished first.
pub(crate) enum Either<A, B> {
    /// The first.
    Left(A),
    /// The second.
    Right(B),
}

/// Polls both futures, the first one first, until one completes.
pub(crate) async fn race<A: Future, B: Future>(
    mut a: Pin<&mut A>,
    mut b: Pin<&mut B>,
) -> Either<A::Output, B::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        b.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// Completes at `deadline`, or never when there is none.
pub(crate) async fn sleep_until<R: Runtime>(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => R::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `future`'s output, or `None` once `limit` has passed.
///
/// The future is pinned by the caller: taking it by value would store it
/// twice in this future's state (the argument, and the pinned copy), and
/// the connection task holds a handshake's worth of state in here.
pub(crate) async fn timeout<R: Runtime, F: Future>(
    limit: Duration,
    future: Pin<&mut F>,
) -> Option<F::Output> {
    let deadline = Instant::now().checked_add(limit);
    match race(future, pin!(sleep_until::<R>(deadline))).await {
        Either::Left(out) => Some(out),
        Either::Right(()) => None,
    }
}

/// A flag set once, that any number of tasks can wait for.
///
/// A wait that is dropped before the flag is set takes its waker with it:
/// a server waits on one of these in every handshake, and wakers left
/// behind would keep every finished connection's task allocated.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The wakers of the waits in progress, each under a key of its own.
#[derive(Debug, Default)]
struct Waiters {
    next: u64,
    wakers: Vec<(u64, Waker)>,
}

impl Signal {
    /// Sets the flag and wakes every waiter.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        let waiters = mem::take(&mut lock(&self.waiters).wakers);
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Completes once the flag is set.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            key: None,
        }
    }
}

/// [`Signal::wait`]: registered while pending, unregistered when dropped.
#[derive(Debug)]
pub(crate) struct Wait<'a> {
    signal: &'a Signal,
    key: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.is_set() {
            return Poll::Ready(());
        }
        let mut waiters = lock(&signal.waiters);
        // Checked again under the lock: `set` takes it after storing.
        if signal.is_set() {
            return Poll::Ready(());
        }
        let waiters = &mut *waiters;
        let registered = self
            .key
            .and_then(|key| waiters.wakers.iter_mut().find(|(k, _)| *k == key));
        match registered {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => {
                let key = waiters.next;
                waiters.next += 1;
                waiters.wakers.push((key, cx.waker().clone()));
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut waiters = lock(&self.signal.waiters);
            if let Some(at) = waiters.wakers.iter().position(|(k, _)| *k == key) {
                waiters.wakers.swap_remove(at);
            }
        }
    }
}

/// Counts running tasks; [`wait_idle`](Self::wait_idle) waits for zero.
#[derive(Debug, Default)]
pub(crate) struct TaskCount {
    state: Mutex<(usize, Vec<Waker>)>,
}

impl TaskCount {
    /// Counts one more task until the returned guard is dropped.
    pub(crate) fn enter(self: &std::sync::Arc<Self>) -> TaskGuard {
        lock(&self.state).0 += 1;
        TaskGuard(std::sync::Arc::clone(self))
    }

    /// Waits until no task is counted.
    pub(crate) async fn wait_idle(&self) {
        poll_fn(|cx| {
            let mut state = lock(&self.state);
            if state.0 == 0 {
                return Poll::Ready(());
            }
            if !state.1.iter().any(|w| w.will_wake(cx.waker())) {
                state.1.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

/// One counted task; dropping it (even in a panic) uncounts it.
#[derive(Debug)]
pub(crate) struct TaskGuard(std::sync::Arc<TaskCount>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let waiters = {
            let mut state = lock(&self.0.state);
            state.0 -= 1;
            if state.0 > 0 {
                return;
            }
            mem::take(&mut state.1)
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll_once(wait: &mut Wait<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(wait).poll(&mut Context::from_waker(waker))
    }

    /// Waits dropped before the signal leave no waker behind (a server
    /// waits in every handshake: leftovers kept every task allocated).
    #[test]
    fn dropped_waits_leave_no_waker() {
        let signal = Signal::default();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        for _ in 0..100 {
            let mut wait = signal.wait();
            assert!(poll_once(&mut wait, &waker).is_pending());
            assert!(poll_once(&mut wait, &waker).is_pending(), "polled again");
        }
        assert!(lock(&signal.waiters).wakers.is_empty());
        assert_eq!(Arc::strong_count(&count), 2, "only `waker` and `count`");
    }

    /// A pending wait is woken once by `set`; later waits are ready at once.
    #[test]
    fn set_wakes_pending_waits() {
        let signal = Signal::default();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut first = signal.wait();
        let mut second = signal.wait();
        assert!(poll_once(&mut first, &waker).is_pending());
        assert!(poll_once(&mut second, &waker).is_pending());
        signal.set();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(poll_once(&mut first, &waker).is_ready());
        assert!(poll_once(&mut signal.wait(), &waker).is_ready());
    }
}
