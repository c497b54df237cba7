//! The HTTP/1 engine's idle connections to HTTP/1.1 backends, per worker thread, by backend
//! index.
//!
//! An idle connection is just its stream: no task, no channel, no buffer (a connection task
//! per backend connection is what hyper's client needs; the engine drives the connection
//! inline in the client connection's task and parks the bare stream here between requests).
//! Indices are a snapshot's; every entry keeps the address it was opened to, and one taken for
//! an index whose backend now has another address (a reload) is dropped, not used. The most
//! recently parked connection is taken first (warm; the others age out), and connections idle
//! longer than `pool_idle_timeout` are closed by a sweep at most once a second.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::connect::Direct as Stream;

/// How often idle connections are swept for age.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One worker's idle backend connections.
pub(crate) struct Pool {
    /// Idle connections by backend index, most recent last.
    idle: RefCell<Vec<Vec<Idle>>>,
    /// Most idle connections kept per backend (`pool_max_idle`).
    max_idle: usize,
    /// Idle connections older than this are closed (`pool_idle_timeout`).
    idle_timeout: Duration,
    last_sweep: Cell<Instant>,
}

struct Idle {
    stream: Stream,
    /// The address it was opened to.
    addr: Authority,
    since: Instant,
}

impl Pool {
    /// A pool keeping at most `max_idle` connections per backend for at most `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: RefCell::new(Vec::new()),
            max_idle,
            idle_timeout,
            last_sweep: Cell::new(Instant::now()),
        }
    }

    /// The most recently parked connection to backend `index` at `addr`, if any that is not
    /// too old. It may still turn out closed by the backend: the caller checks or retries.
    pub fn take(&self, index: usize, addr: &Authority, now: Instant) -> Option<Stream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(index)?;
        while let Some(c) = list.pop() {
            // The address's bytes, not `Authority`'s case-insensitive comparison: the same
            // snapshot's value, or one a reload made; a miss only costs a connection.
            if c.addr.as_str() == addr.as_str()
                && now.saturating_duration_since(c.since) < self.idle_timeout
            {
                return Some(c.stream);
            }
        }
        None
    }

    /// Parks a connection to backend `index` at `addr` whose last response was read whole.
    pub fn put(&self, index: usize, addr: &Authority, stream: Stream, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() <= index {
            idle.resize_with(index + 1, Vec::new);
        }
        let list = &mut idle[index];
        if list.len() >= self.max_idle {
            // The oldest goes: the warm ones are at the end.
            list.remove(0);
        }
        list.push(Idle {
            stream,
            addr: addr.clone(),
            since: now,
        });
        if now.saturating_duration_since(self.last_sweep.get()) >= SWEEP_EVERY {
            self.last_sweep.set(now);
            let timeout = self.idle_timeout;
            for list in idle.iter_mut() {
                list.retain(|c| now.saturating_duration_since(c.since) < timeout);
            }
        }
    }

    /// Idle connections kept now, over all backends.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().iter().map(Vec::len).sum()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Pool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stream(l: &tokio::net::TcpListener) -> Stream {
        let at = l.local_addr().unwrap().to_string();
        let (s, _) = tokio::join!(
            crate::connect::open_direct(&at, None, Duration::from_secs(5)),
            l.accept()
        );
        s.unwrap()
    }

    #[tokio::test]
    async fn connections_are_taken_newest_first_and_only_for_their_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        let other: Authority = "127.0.0.2:1".parse().unwrap();
        let pool = Pool::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert!(pool.take(3, &a, now).is_none());
        for _ in 0..3 {
            let s = stream(&l).await;
            pool.put(3, &a, s, now);
        }
        assert_eq!(pool.idle_count(), 2, "at most max_idle per backend");
        assert!(
            pool.take(3, &other, now).is_none(),
            "another address: dropped"
        );
        assert_eq!(pool.idle_count(), 0);
        let s = stream(&l).await;
        pool.put(3, &a, s, now);
        assert!(pool.take(3, &a, now).is_some());
        assert!(pool.take(3, &a, now).is_none());
    }

    #[tokio::test]
    async fn old_connections_are_not_taken_and_are_swept() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(4, Duration::from_secs(10));
        let t0 = Instant::now();
        let s = stream(&l).await;
        pool.put(0, &a, s, t0);
        assert!(pool.take(0, &a, t0 + Duration::from_secs(11)).is_none());
        let s = stream(&l).await;
        pool.put(1, &a, s, t0);
        let s = stream(&l).await;
        // A put after the sweep interval closes what is too old, on every backend.
        pool.put(0, &a, s, t0 + Duration::from_secs(12));
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn nothing_is_kept_with_max_idle_zero() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(0, Duration::from_secs(10));
        let s = stream(&l).await;
        pool.put(0, &a, s, Instant::now());
        assert_eq!(pool.idle_count(), 0);
    }
}
