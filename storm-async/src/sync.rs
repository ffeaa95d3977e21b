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
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl Signal {
    /// Sets the flag and wakes every waiter.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        let waiters = mem::take(&mut *lock(&self.waiters));
        for waker in waiters {
            waker.wake();
        }
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Ready once the flag is set.
    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_set() {
            return Poll::Ready(());
        }
        let mut waiters = lock(&self.waiters);
        // Checked again under the lock: `set` takes it after storing.
        if self.is_set() {
            return Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until the flag is set.
    pub(crate) async fn wait(&self) {
        poll_fn(|cx| self.poll_wait(cx)).await;
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
