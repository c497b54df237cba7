//! The client connection's stream with a send deadline: a write that makes no progress for
//! `client_timeout` (the client stopped reading, its window is full) fails with `TimedOut`,
//! which ends the connection. Reads pass through untouched: idle time between requests is the
//! header deadline's business, and a stalled request body is the body's (`body.rs`).
//!
//! Nothing happens on the fast path: the deadline is armed only when a write returns
//! `Pending`, and its timer is allocated once per connection, on the first stall.
//!
//! [`Stall`] is the house pattern for a deadline on the hot path: armed only while a read or
//! write is pending, cleared by progress, one timer allocation per connection at most. Use it,
//! or a [`Wait`] on a connection's one [`Deadline`] as the HTTP/1 engine does (not a
//! `tokio::time::timeout` around each call), for any new per-connection wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// One timer for a connection's waits, re-armed lazily: a wait says the instant it must end by,
/// and the timer is reset only when that instant is earlier than the one it is set to; when it
/// fires early, it is moved to the instant in force. Allocated on the first wait, so a
/// connection that never waits has none.
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub fn new() -> Deadline {
        Deadline { sleep: None }
    }

    /// `Ready` once `at` has passed (the task is woken then), `Pending` before.
    pub fn poll_at(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() > at {
            sleep.as_mut().reset(at);
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= at {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(at);
        }
    }
}

/// A wait with a timeout that starts when the wait first has to wait (its first `Pending`): no
/// clock read while the bytes are already there. Timed on a [`Deadline`].
pub struct Wait {
    timeout: Duration,
    at: Option<Instant>,
}

impl Wait {
    pub fn new(timeout: Duration) -> Wait {
        Wait { timeout, at: None }
    }

    /// Progress was made: the next wait gets a deadline of its own.
    pub fn restart(&mut self) {
        self.at = None;
    }

    /// Still waiting: `Ready` once `timeout` has passed since this wait began.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, d: &mut Deadline) -> Poll<()> {
        let at = *self
            .at
            .get_or_insert_with(|| later(Instant::now(), self.timeout));
        d.poll_at(cx, at)
    }
}

/// The deadline of a wait on the client: it starts when a wait begins (the first `Pending`
/// after progress) and is cleared by progress; a [`Wait`] on a [`Deadline`] of its own. Serves
/// both the response writes ([`SendTimeout`]) and the request body reads (`body::UpBody`).
pub struct Stall {
    wait: Wait,
    deadline: Deadline,
}

impl Stall {
    pub fn new(timeout: Duration) -> Stall {
        Stall {
            wait: Wait::new(timeout),
            deadline: Deadline::new(),
        }
    }

    /// Progress was made: the next wait gets a deadline of its own.
    pub fn progress(&mut self) {
        self.wait.restart();
    }

    /// Still waiting: `Ready` once `timeout` has passed since this wait began (the task is woken
    /// then), `Pending` before.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.wait.poll_expired(cx, &mut self.deadline)
    }
}

/// How often a worker's [`Expiry`] table is swept: a coarse timeout fires at most this long
/// after its instant.
pub const SWEEP: Duration = Duration::from_millis(50);

/// A coarse timeout for a wait that many tasks of a worker make at once and that rarely times
/// out (an HTTP/2 stream waiting for its backend's response head): no timer per wait. Its
/// first `Pending` enters its instant and waker in the worker's table (a clock read and a
/// slot, no allocation once the table has grown); one sweeper task per worker, running while
/// the table has entries, wakes every [`SWEEP`] and wakes the tasks whose instant has passed;
/// dropping the `Expiry` takes its entry out. It fires between its instant and one sweep
/// after it. Must be polled within the worker's `LocalSet` (the sweeper is a local task).
pub struct Expiry {
    timeout: Duration,
    slot: Option<usize>,
    /// Its slot is in this thread's table: never moved to another thread.
    _here: std::marker::PhantomData<*const ()>,
}

/// `timeout` after `now`; a timeout too long for the clock (a config of centuries) is about
/// thirty years, which no wait reaches.
fn later(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

struct Entry {
    at: std::time::Instant,
    waker: std::task::Waker,
    fired: bool,
}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    sweeping: bool,
}

thread_local! {
    static EXPIRIES: std::cell::RefCell<Table> = std::cell::RefCell::new(Table::default());
}

impl Expiry {
    pub fn new(timeout: Duration) -> Expiry {
        Expiry {
            timeout,
            slot: None,
            _here: std::marker::PhantomData,
        }
    }

    /// `Ready` once the timeout has passed since the first `Pending` (the task is woken then).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        EXPIRIES.with_borrow_mut(|t| {
            if let Some(i) = self.slot {
                let Some(e) = t.slots.get_mut(i).and_then(Option::as_mut) else {
                    return Poll::Ready(());
                };
                if e.fired {
                    return Poll::Ready(());
                }
                if !e.waker.will_wake(cx.waker()) {
                    e.waker = cx.waker().clone();
                }
                return Poll::Pending;
            }
            let entry = Entry {
                at: later(Instant::now(), self.timeout).into_std(),
                waker: cx.waker().clone(),
                fired: false,
            };
            let i = match t.free.pop() {
                Some(i) => {
                    t.slots[i] = Some(entry);
                    i
                }
                None => {
                    t.slots.push(Some(entry));
                    t.slots.len() - 1
                }
            };
            self.slot = Some(i);
            t.live += 1;
            if !t.sweeping {
                t.sweeping = true;
                tokio::task::spawn_local(sweep());
            }
            Poll::Pending
        })
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            // The table may be gone already when the thread itself is ending.
            let _ = EXPIRIES.try_with(|t| {
                let mut t = t.borrow_mut();
                if let Some(slot) = t.slots.get_mut(i)
                    && slot.take().is_some()
                {
                    t.free.push(i);
                    t.live -= 1;
                }
            });
        }
    }
}

/// The worker's sweeper: while the table has entries, every [`SWEEP`], marks the entries
/// whose instant has passed and wakes their tasks. Ends when the table is empty (the next
/// entry starts another); dropped with the runtime, it lets the next one start.
async fn sweep() {
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = EXPIRIES.try_with(|t| t.borrow_mut().sweeping = false);
        }
    }
    let _running = Running;
    let mut due = Vec::new();
    loop {
        tokio::time::sleep(SWEEP).await;
        let empty = EXPIRIES.with_borrow_mut(|t| {
            let now = std::time::Instant::now();
            for e in t.slots.iter_mut().flatten() {
                if !e.fired && e.at <= now {
                    e.fired = true;
                    due.push(e.waker.clone());
                }
            }
            t.live == 0
        });
        // Woken outside the table's borrow: a wake may drop a task, and with it an Expiry.
        for w in due.drain(..) {
            w.wake();
        }
        if empty {
            return;
        }
    }
}

/// A stream whose writes fail after `timeout` without progress.
pub struct SendTimeout<S> {
    inner: S,
    stall: Stall,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            stall: Stall::new(timeout),
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Called with the outcome of a write-side poll: progress clears the deadline; `Pending`
    /// starts it (once per stall) and fails the write when it has passed.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall.progress();
            return polled;
        }
        ready!(self.stall.poll_expired(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the response in time",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_flush(cx);
        me.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_shutdown(cx);
        me.watch(cx, polled)
    }
}

/// A stream whose first reads return bytes already read from it: a connection the HTTP/1
/// engine hands to hyper (an h2c preface, a pipelined request) with what it had buffered.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, read after `prefix`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.prefix.len() {
            let n = buf.remaining().min(me.prefix.len() - me.at);
            buf.put_slice(&me.prefix[me.at..me.at + n]);
            me.at += n;
            if me.at == me.prefix.len() {
                me.prefix = Vec::new();
                me.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn table() -> (usize, usize, bool) {
        EXPIRIES.with_borrow(|t| (t.live, t.slots.len(), t.sweeping))
    }

    #[tokio::test]
    async fn an_expiry_fires_and_its_slot_and_sweeper_go() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut e = Expiry::new(Duration::from_millis(5));
                std::future::poll_fn(|cx| e.poll_expired(cx)).await;
                assert_eq!(table().0, 1, "fired, still held");
                drop(e);
                assert_eq!(table().0, 0);
                // The sweeper ends once the table is empty.
                while table().2 {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(SWEEP).await;
                }
            })
            .await;
    }

    #[tokio::test]
    async fn a_wait_that_ends_first_takes_its_entry_out_and_the_slot_is_reused() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut e = Expiry::new(Duration::from_secs(3600));
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                assert!(e.poll_expired(&mut cx).is_pending());
                assert!(e.poll_expired(&mut cx).is_pending(), "not before its time");
                let (live, slots, _) = table();
                assert_eq!(live, 1);
                drop(e);
                assert_eq!(table().0, 0);
                let mut again = Expiry::new(Duration::from_secs(3600));
                assert!(again.poll_expired(&mut cx).is_pending());
                assert_eq!(table(), (1, slots, true), "the freed slot is taken again");
            })
            .await;
    }

    #[test]
    fn a_timeout_too_long_for_the_clock_is_far_away_not_a_panic() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
        let mut w = Wait::new(Duration::MAX);
        let mut d = Deadline::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(w.poll_expired(&mut cx, &mut d).is_pending());
        });
    }

    #[tokio::test]
    async fn a_prefixed_stream_reads_its_prefix_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(b"hello ".to_vec(), a);
        b.write_all(b"world").await.unwrap();
        drop(b);
        let mut got = String::new();
        p.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_read_fails_at_the_deadline() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut a = SendTimeout::new(a, Duration::from_secs(60));
        // Fills the pipe, then stalls: the peer reads nothing.
        let big = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let err = a.write_all(&big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        // A reader that keeps up is never cut, however long the transfer takes in all.
        let (a, mut b2) = tokio::io::duplex(1024);
        let mut a = SendTimeout::new(a, Duration::from_secs(60));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 512];
            while got < 64 * 1024 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                got += b2.read(&mut buf).await.unwrap();
            }
            got
        });
        a.write_all(&big).await.unwrap();
        assert_eq!(reader.await.unwrap(), 64 * 1024);
        assert!(started.elapsed() > Duration::from_secs(600));
    }
}
