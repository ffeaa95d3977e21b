//! A `Waker` for code that blocks a thread instead of running a task.

use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::Thread;

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A waker that unparks `thread`, so a blocking writer or sender can use
/// the hub's `poll_*` methods: poll with this waker, and on `Pending` call
/// `std::thread::park()` and poll again (parking may wake spuriously, so
/// always re-poll).
///
/// ```
/// use std::task::{Context, Poll};
///
/// use storm_host::hub::thread_waker;
///
/// let waker = thread_waker(std::thread::current());
/// let mut cx = Context::from_waker(&waker);
/// # let ready = |_: &mut Context<'_>| Poll::Ready(());
/// loop {
///     match ready(&mut cx) {
///         Poll::Ready(()) => break,
///         Poll::Pending => std::thread::park(),
///     }
/// }
/// ```
pub fn thread_waker(thread: Thread) -> Waker {
    Waker::from(Arc::new(ThreadWaker(thread)))
}
