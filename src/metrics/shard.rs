//! Per-worker counters: a [`Shards`] holds one cache-line-aligned slot per worker thread plus
//! one shared slot, and a [`Counter`] in a worker's own slot is written by that worker alone,
//! with a relaxed load and a relaxed store: no lock-prefixed read-modify-write and no cache
//! line bounced between workers on the request path. Readers (the admin API, the exposition,
//! the maintenance tick) sum the slots.
//!
//! Which slot a thread writes is decided by [`enter_worker`], called once by each worker thread
//! when it starts. Any other thread (the control runtime, tests, an embedder's threads) and a
//! worker beyond the slots a `Shards` was sized for write the shared slot, with an atomic add:
//! correct for any number of writers, only slower. Sums are therefore exact once the writers
//! are done, whatever the threads; while they run a reader sees each slot's value at some
//! recent moment (relaxed loads), as it did with one shared atomic.
//!
//! Must never hand a worker's slot to another thread for writing: the load-and-store would then
//! lose updates.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// This thread's worker index, or `usize::MAX` when it is not a worker.
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the calling thread as worker `index` (0-based, distinct for every worker thread of a
/// server) for the rest of its life: it then writes slot `index + 1` of every [`Shards`] it
/// touches, alone.
pub fn enter_worker(index: usize) {
    WORKER.set(index);
}

/// The calling thread's worker index, if [`enter_worker`] named one.
pub fn worker() -> Option<usize> {
    match WORKER.get() {
        usize::MAX => None,
        i => Some(i),
    }
}

/// How a slot is written: by its one owner, or by anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// A worker's own slot: a plain load and store.
    Sole,
    /// The shared slot: an atomic add.
    Shared,
}

/// A count that only goes up, written through [`Local`] and read by summing over [`Shards`].
/// Wraps at `u64::MAX` (never reached by a request counter).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// The value in this slot.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    fn add(&self, n: u64, w: Writer) {
        match w {
            Writer::Sole => self.0.store(
                self.0.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            ),
            Writer::Shared => {
                self.0.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Aligned to 128 bytes: a cache line, and the pair of lines x86 prefetches together, so two
/// workers' slots never share either.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One slot of `T` per worker thread, and one shared slot (index 0) for every other thread.
#[derive(Debug)]
pub struct Shards<T> {
    slots: Box<[Padded<T>]>,
}

impl<T: Default> Shards<T> {
    /// Slots for `workers` worker threads (indexes `0..workers`) and the shared one.
    pub fn new(workers: usize) -> Shards<T> {
        Shards {
            slots: (0..=workers).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T: Default> Default for Shards<T> {
    /// Only the shared slot: for tests and tools, where no thread is a worker.
    fn default() -> Shards<T> {
        Shards::new(0)
    }
}

impl<T> Shards<T> {
    /// The calling thread's slot, to write counters of.
    #[inline]
    pub fn local(&self) -> Local<'_, T> {
        let own = WORKER.get().wrapping_add(1);
        match self.slots.get(own) {
            Some(p) if own != 0 => Local {
                slot: &p.0,
                writer: Writer::Sole,
            },
            // Not a worker (index MAX wraps to 0), or a worker beyond the slots.
            _ => Local {
                slot: &self.slots[0].0,
                writer: Writer::Shared,
            },
        }
    }

    /// The sum over every slot of the counter `field` picks.
    pub fn sum(&self, field: impl Fn(&T) -> &Counter) -> u64 {
        self.slots
            .iter()
            .fold(0u64, |acc, p| acc.wrapping_add(field(&p.0).get()))
    }

    /// How many slots (workers plus the shared one).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never: there is always the shared slot.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The calling thread's slot of a [`Shards`], and how it may be written.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a, T> {
    slot: &'a T,
    writer: Writer,
}

impl<T> Local<'_, T> {
    /// Adds `n` to the counter `field` picks in this slot.
    #[inline]
    pub fn add(&self, field: impl FnOnce(&T) -> &Counter, n: u64) {
        field(self.slot).add(n, self.writer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Pair {
        a: Counter,
        b: Counter,
    }

    #[test]
    fn slots_are_a_cache_line_pair_apart() {
        assert_eq!(std::mem::align_of::<Padded<Counter>>(), 128);
        assert_eq!(std::mem::size_of::<Padded<Pair>>(), 128);
        let s: Shards<Counter> = Shards::new(3);
        assert_eq!(s.len(), 4);
        let at = |i: usize| std::ptr::from_ref(&s.slots[i]) as usize;
        assert_eq!(at(1) - at(0), 128);
    }

    #[test]
    fn a_thread_that_is_no_worker_writes_the_shared_slot_atomically() {
        let s: Shards<Pair> = Shards::new(2);
        let l = s.local();
        assert_eq!(l.writer, Writer::Shared);
        l.add(|p| &p.a, 3);
        l.add(|p| &p.b, 1);
        assert_eq!(
            (s.slots[0].0.a.get(), s.sum(|p| &p.a), s.sum(|p| &p.b)),
            (3, 3, 1)
        );
    }

    #[test]
    fn a_worker_writes_its_own_slot_and_one_beyond_the_slots_the_shared_one() {
        let s: Shards<Pair> = Shards::new(2);
        std::thread::scope(|t| {
            t.spawn(|| {
                enter_worker(1);
                assert_eq!(worker(), Some(1));
                let l = s.local();
                assert_eq!(l.writer, Writer::Sole);
                l.add(|p| &p.a, 5);
            });
            t.spawn(|| {
                enter_worker(2);
                let l = s.local();
                assert_eq!(l.writer, Writer::Shared, "only workers 0 and 1 have slots");
                l.add(|p| &p.a, 7);
            });
        });
        assert_eq!(worker(), None, "this thread never entered");
        assert_eq!(s.slots[2].0.a.get(), 5);
        assert_eq!(s.slots[0].0.a.get(), 7);
        assert_eq!(s.sum(|p| &p.a), 12);
    }

    #[test]
    fn sums_are_exact_after_many_writers_join() {
        // Four workers with slots of their own, two beyond the slots and two that are no
        // worker at all: the last four share slot 0.
        const N: u64 = 100_000;
        let s: Shards<Pair> = Shards::new(4);
        std::thread::scope(|t| {
            for w in 0..8usize {
                let s = &s;
                t.spawn(move || {
                    if w < 6 {
                        enter_worker(w);
                    }
                    for i in 0..N {
                        let l = s.local();
                        l.add(|p| &p.a, 1);
                        l.add(|p| &p.b, i % 3);
                    }
                });
            }
        });
        assert_eq!(s.sum(|p| &p.a), 8 * N);
        let per_thread: u64 = (0..N).map(|i| i % 3).sum();
        assert_eq!(s.sum(|p| &p.b), 8 * per_thread);
        assert_eq!(s.slots[0].0.a.get(), 4 * N, "the shared slot lost nothing");
    }
}
