//! The worker thread's runtime glue. Each worker runs a current-thread tokio runtime with a
//! `LocalSet` (thread-per-core, see `server`), so the tasks hyper spawns for HTTP/2 (server
//! streams, client connections) can stay on the thread and need not be `Send`.
//!
//! Also the worker-local pieces of the HTTP/1 engine: a cheap [`Signal`] many connections wait
//! on (draining), and [`spare`] buffers an idle connection gives back.
//!
//! This module sits below its users (the server, the proxy, the upstream pool), so none of
//! them imports another for it.

use std::future::Future;

/// Spawns hyper's tasks on the current worker's `LocalSet`. Only valid inside one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// A worker-local one-shot signal that many connections wait on (draining has started),
/// cheaper than a `watch` channel on the request path: a waiting connection keeps one slot
/// with its task's waker, updated only when the waker changes, and no lock or atomic is taken
/// per wait. Firing wakes every slot.
#[derive(Default)]
pub(crate) struct Signal {
    fired: std::cell::Cell<bool>,
    slots: std::cell::RefCell<Slots>,
}

#[derive(Default)]
struct Slots {
    wakers: Vec<Option<std::task::Waker>>,
    free: Vec<usize>,
}

/// A connection's slot in a [`Signal`]; the slot is freed when this is dropped.
pub(crate) struct Waiting {
    signal: std::rc::Rc<Signal>,
    slot: Option<usize>,
}

impl Signal {
    /// Fires the signal: every waiter is woken, and every wait from now on is over at once.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<_> = self
            .slots
            .borrow_mut()
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether it has fired.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// A waiter on `signal`, holding no slot until it first waits.
    pub fn waiter(signal: &std::rc::Rc<Signal>) -> Waiting {
        Waiting {
            signal: signal.clone(),
            slot: None,
        }
    }
}

impl Waiting {
    /// `Ready` once the signal has fired; else the task is woken when it fires.
    pub fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.signal.fired.get() {
            return std::task::Poll::Ready(());
        }
        let mut slots = self.signal.slots.borrow_mut();
        let slot = match self.slot {
            Some(s) => s,
            None => {
                let s = match slots.free.pop() {
                    Some(s) => s,
                    None => {
                        slots.wakers.push(None);
                        slots.wakers.len() - 1
                    }
                };
                self.slot = Some(s);
                s
            }
        };
        match &mut slots.wakers[slot] {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        std::task::Poll::Pending
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(s) = self.slot
            && let Ok(mut slots) = self.signal.slots.try_borrow_mut()
        {
            slots.wakers[s] = None;
            slots.free.push(s);
        }
    }
}

/// Buffers kept by a worker for its connections' next requests: a connection that goes idle
/// gives its buffers back here (an idle connection holds none) and takes them again when its
/// next request arrives, so a busy worker reuses a few buffers instead of allocating per
/// request. At most [`SPARE_MAX`] are kept.
pub(crate) mod spare {
    use std::cell::RefCell;

    /// Most buffers kept per worker.
    pub const SPARE_MAX: usize = 256;
    /// Buffers larger than this are not kept (a head or body that grew one).
    const KEEP_AT_MOST: usize = 64 * 1024;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(capacity: usize) -> Vec<u8> {
        let got = SPARE.with_borrow_mut(|s| s.pop());
        match got {
            Some(mut b) => {
                b.reserve(capacity);
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Gives a buffer back (emptied); it is dropped when the worker keeps enough.
    pub fn give(mut b: Vec<u8>) {
        if b.capacity() == 0 || b.capacity() > KEEP_AT_MOST {
            return;
        }
        b.clear();
        SPARE.with_borrow_mut(|s| {
            if s.len() < SPARE_MAX {
                s.push(b);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_signal_wakes_every_waiter_once_and_frees_slots_of_dropped_ones() {
        let s = Rc::new(Signal::default());
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let mut waiters: Vec<Waiting> = (0..3).map(|_| Signal::waiter(&s)).collect();
        for (w, c) in waiters.iter_mut().zip(&counts) {
            let waker = Waker::from(c.clone());
            assert!(w.poll(&mut Context::from_waker(&waker)).is_pending());
            // Polled again with the same waker: nothing changes.
            assert!(w.poll(&mut Context::from_waker(&waker)).is_pending());
        }
        drop(waiters.pop());
        assert_eq!(s.slots.borrow().free, vec![2]);
        s.fire();
        assert!(s.fired());
        let woken: Vec<usize> = counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect();
        assert_eq!(woken, [1, 1, 0], "the dropped waiter is not woken");
        let waker = Waker::from(counts[0].clone());
        assert_eq!(
            waiters[0].poll(&mut Context::from_waker(&waker)),
            Poll::Ready(())
        );
        // A waiter that starts after the signal fired is ready at once.
        assert!(
            Signal::waiter(&s)
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
        );
    }

    #[test]
    fn spare_buffers_are_reused_empty_and_bounded() {
        let mut b = spare::take(100);
        b.extend_from_slice(b"abc");
        let cap = b.capacity();
        spare::give(b);
        let again = spare::take(10);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap, "the same buffer");
        for _ in 0..spare::SPARE_MAX + 10 {
            spare::give(Vec::with_capacity(8));
        }
        let kept = (0..spare::SPARE_MAX + 10)
            .map(|_| spare::take(1))
            .filter(|b| b.capacity() == 8)
            .count();
        assert_eq!(kept, spare::SPARE_MAX);
    }
}
