//! The load generator: `--threads` OS threads, each a current_thread runtime with its own
//! connections and records (the open loop's in a `LocalSet`), running the closed-loop or the
//! open-loop model until the end of the run. Also the state the threads share with the control side: the run's clock
//! ([`Shared`]), backend liveness for the violation rule ([`Liveness`]) and progress counters.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};
use tokio::task::LocalSet;

use crate::cli::Model;
use crate::client::{Answer, Conn, Target, exchange, ready_conn};
use crate::recovery::{Recovery, Seen};
use crate::stats::{Failure, ThreadStats};
use crate::users::{RequestCount, Rng, Served, StateSeen, User, observe};

/// When each harness backend may be counted as usable, in microseconds since [`Shared::epoch`]
/// (`u64::MAX`: down, or not started yet). Indexes are those of [`Shared::names`]; a backend
/// that is not listed (a `--target` deployment's) is assumed usable.
#[derive(Debug)]
pub struct Liveness {
    usable_from: Vec<AtomicU64>,
}

impl Liveness {
    /// `up` backends usable from the start, then `later` not started yet.
    pub fn new(up: usize, later: usize) -> Liveness {
        Liveness {
            usable_from: (0..up + later)
                .map(|i| AtomicU64::new(if i < up { 0 } else { u64::MAX }))
                .collect(),
        }
    }

    /// Backend `i` goes down now.
    pub fn down(&self, i: usize) {
        if let Some(a) = self.usable_from.get(i) {
            a.store(u64::MAX, Ordering::Release);
        }
    }

    /// Backend `i` counts as usable from `from_us` on.
    pub fn up_from(&self, i: usize, from_us: u64) {
        if let Some(a) = self.usable_from.get(i) {
            a.store(from_us, Ordering::Release);
        }
    }

    /// Whether backend `i` was usable from `since_us` until now.
    pub fn usable_since(&self, i: usize, since_us: u64) -> bool {
        self.usable_from
            .get(i)
            .is_none_or(|a| a.load(Ordering::Acquire) <= since_us)
    }
}

/// Since when a user's pinned backend must have been usable for a response from another one
/// to be an affinity violation: since this request was sent; with replication, since the
/// user's previous response (`answered_us`), because stickyd moves the sessions of a process
/// that was killed after it to their backup with a takeover, even once the backend is back.
pub fn pinned_usable_since(replicate: bool, sent_us: u64, answered_us: u64) -> u64 {
    if replicate {
        answered_us.min(sent_us)
    } else {
        sent_us
    }
}

/// When one request was due, sent and done.
#[derive(Debug, Clone, Copy)]
struct Times {
    /// When it should have been sent: its second and whether it is measured go by this.
    due: Instant,
    sent: Instant,
    done: Instant,
}

impl Times {
    /// From the intended send time, or from the actual one when that was earlier (the open
    /// loop sends up to [`EARLY`] ahead rather than late by the timer's granularity).
    fn latency(&self) -> Duration {
        self.done.saturating_duration_since(self.due.min(self.sent))
    }
}

/// Counters one load thread bumps for the progress line, on their own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counters {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

/// What the load threads share with each other and the control side. Read-only but for the
/// atomics.
#[derive(Debug)]
pub struct Shared {
    pub target: Target,
    pub users: RequestCount,
    pub fresh_only: bool,
    pub seed: u64,
    pub timeout: Duration,
    /// Time base of [`Liveness`].
    pub epoch: Instant,
    /// Start of the warmup.
    pub start: Instant,
    /// Start of measurement (end of warmup).
    pub measure: Instant,
    /// End of measurement: no request is sent from then on.
    pub end: Instant,
    /// Per-second slots of the series.
    pub seconds: usize,
    /// Set by Ctrl-C: stop sending.
    pub stop: AtomicBool,
    pub counters: Vec<Counters>,
    pub liveness: Liveness,
    /// Known backend ids, in report order.
    pub names: Vec<String>,
    /// stickyd replicates sessions (`--replicate`): the violation rule's
    /// [`pinned_usable_since`].
    pub replicate: bool,
    /// Kills and the first failover after each.
    pub recovery: Arc<Recovery>,
}

impl Shared {
    fn running(&self, now: Instant) -> bool {
        now < self.end && !self.stop.load(Ordering::Relaxed)
    }

    fn us_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Records the outcome of one request of `user`.
    fn account(
        &self,
        st: &mut ThreadStats,
        counters: &Counters,
        user: &mut User,
        at: Times,
        result: Result<Answer, Failure>,
    ) {
        let recorded = at.due >= self.measure;
        let sec = at.due.saturating_duration_since(self.measure).as_secs() as usize;
        let first_request = !user.started;
        user.started = true;
        if recorded && first_request {
            st.users_started += 1;
        }
        let ok = match result {
            Ok(a) => {
                let backend = a.backend.and_then(|v| st.tally.index(v.as_bytes()));
                let first = !user.answered;
                user.answered = true;
                let previous = user.pin;
                let since = pinned_usable_since(
                    self.replicate,
                    self.us_since_epoch(at.sent),
                    user.answered_us,
                );
                let served = observe(&mut user.pin, backend, |p| {
                    self.liveness.usable_since(usize::from(p), since)
                });
                let done_us = self.us_since_epoch(at.done);
                if backend.is_some() {
                    user.answered_us = done_us;
                }
                if let (Served::Repinned { violation: false }, Some(p)) = (served, previous) {
                    if let Some(name) = st.tally.names.get(usize::from(p)) {
                        self.recovery.seen(Some(name), done_us, Seen::Failover);
                    }
                }
                let seen = if a.status < 400 {
                    user.state.observe(a.session_count)
                } else {
                    StateSeen::Untracked
                };
                if recorded {
                    let latency = at.latency().as_micros() as u64;
                    st.response(sec, latency, a.status, backend, first, served);
                    st.state(sec, seen);
                }
                a.status < 400
            }
            Err(f) => {
                if recorded {
                    st.failure(sec, f);
                }
                false
            }
        };
        counters.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn new_user(&self, rng: &mut Rng) -> User {
        User::new(self.users.sample(rng), self.fresh_only)
    }
}

/// What a load thread hands back when the run is over.
#[derive(Debug)]
pub struct ThreadResult {
    pub stats: ThreadStats,
    /// The thread's CPU seconds (read before it exits, when /proc has it).
    pub cpu_s: Option<f64>,
}

/// Starts the load threads. Each answers on its channel when the run is over.
pub fn spawn(
    sh: &Arc<Shared>,
    model: Model,
    threads: usize,
) -> Result<Vec<oneshot::Receiver<ThreadResult>>, String> {
    let mut out = Vec::with_capacity(threads);
    for t in 0..threads {
        let (tx, rx) = oneshot::channel();
        let sh = sh.clone();
        std::thread::Builder::new()
            .name(format!("load-gen-{t}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("load: cannot start a load runtime: {e}");
                        return;
                    }
                };
                let st = match model {
                    // Plain runtime tasks: a LocalSet's extra scheduling layer cost ~5% of
                    // the closed loop's throughput.
                    Model::Closed { concurrency } => {
                        rt.block_on(closed_thread(sh, t, threads, concurrency))
                    }
                    Model::Open { rate, max_inflight } => LocalSet::new()
                        .block_on(&rt, open_thread(sh, t, threads, rate, max_inflight)),
                };
                let _ = tx.send(ThreadResult {
                    stats: st,
                    cpu_s: crate::procfs::this_thread_cpu_secs(),
                });
            })
            .map_err(|e| format!("cannot start load thread {t}: {e}"))?;
        out.push(rx);
    }
    Ok(out)
}

/// Connections of thread `t`: every `threads`-th of `concurrency`, starting at `t`.
pub fn conns_of(t: usize, threads: usize, concurrency: usize) -> impl Iterator<Item = usize> {
    (t..concurrency).step_by(threads)
}

async fn closed_thread(
    sh: Arc<Shared>,
    t: usize,
    threads: usize,
    concurrency: usize,
) -> ThreadStats {
    // One thread runs all these tasks, so the lock is never contended.
    let stats = Arc::new(Mutex::new(ThreadStats::new(sh.seconds, &sh.names)));
    let tasks: Vec<_> = conns_of(t, threads, concurrency)
        .map(|c| tokio::spawn(closed_conn(sh.clone(), t, c as u64, stats.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    std::mem::replace(&mut *lock(&stats), ThreadStats::new(1, &[]))
}

/// The records behind `m`, even if a task panicked while holding them.
fn lock(m: &Mutex<ThreadStats>) -> std::sync::MutexGuard<'_, ThreadStats> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One closed-loop connection: users one after another, each request on the previous one's
/// keep-alive connection; a new connection after any failure.
async fn closed_conn(sh: Arc<Shared>, t: usize, index: u64, stats: Arc<Mutex<ThreadStats>>) {
    let counters = &sh.counters[t];
    let mut rng = Rng::new(sh.seed, index);
    let mut slot: Option<Conn> = None;
    let mut backoff = Backoff::default();
    'run: loop {
        let mut user = sh.new_user(&mut rng);
        while user.remaining > 0 {
            let sent = Instant::now();
            if !sh.running(sent) {
                break 'run;
            }
            let result = timed_exchange(&sh, &mut slot, &mut user, sent).await;
            let done = Instant::now();
            user.remaining -= 1;
            let failed = result.as_ref().err().copied();
            let at = Times {
                due: sent,
                sent,
                done,
            };
            sh.account(&mut lock(&stats), counters, &mut user, at, result);
            match failed {
                None => backoff.reset(),
                Some(f) => {
                    slot = None;
                    if f == Failure::Connect {
                        // Nothing listens: do not spin. Bounded by the end of the run.
                        let wake = (done + backoff.next()).min(sh.end);
                        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
                    }
                }
            }
        }
    }
}

/// Delay between reconnect attempts after connect failures: 1 ms doubling to 100 ms.
#[derive(Debug, Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = Duration::from_millis(1 << self.0.min(7)).min(Duration::from_millis(100));
        self.0 += 1;
        d
    }
    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// How many ticks `offset + k * interval` (k = 0, 1, ...) fall before `end` (all in ns).
pub fn ticks_before(end: f64, offset: f64, interval: f64) -> u64 {
    if end <= offset || interval <= 0.0 {
        0
    } else {
        ((end - offset) / interval).ceil() as u64
    }
}

/// How early the open loop may send a request. Tokio's timers fire on whole milliseconds, so
/// waking for the exact intended time would add up to 1 ms of the harness's own delay to every
/// latency; waking up to 1 ms ahead and counting from the earlier of intended and actual send
/// does not, and keeps the average rate exact.
pub const EARLY: Duration = Duration::from_millis(1);

/// Open-loop state of one thread, shared by its request tasks.
struct OpenState {
    stats: RefCell<ThreadStats>,
    /// Users between requests, oldest first; a user with a request in flight is not here.
    idle: RefCell<VecDeque<User>>,
    /// Idle keep-alive connections.
    pool: RefCell<Vec<Conn>>,
}

/// The open loop of thread `t`: its share of `rate` at fixed intervals (threads interleaved),
/// each request sent by its own task when an in-flight slot is free. Latency counts from the
/// intended send time, so a slow server cannot hide its queueing (coordinated omission).
async fn open_thread(
    sh: Arc<Shared>,
    t: usize,
    threads: usize,
    rate: f64,
    max_inflight: usize,
) -> ThreadStats {
    let interval = 1e9 * threads as f64 / rate;
    let offset = interval * t as f64 / threads as f64;
    let slots = conns_of(t, threads, max_inflight).count();
    let permits = Arc::new(Semaphore::new(slots));
    let state = Rc::new(OpenState {
        stats: RefCell::new(ThreadStats::new(sh.seconds, &sh.names)),
        idle: RefCell::new(VecDeque::new()),
        pool: RefCell::new(Vec::new()),
    });
    // Streams above 2^32 so they never meet a closed-loop connection's.
    let mut rng = Rng::new(sh.seed, (1 << 32) + t as u64);
    let end_ns = sh.end.saturating_duration_since(sh.start).as_nanos() as f64;
    let mut k: u64 = 0;
    loop {
        let at_ns = offset + k as f64 * interval;
        if at_ns >= end_ns || sh.stop.load(Ordering::Relaxed) {
            break;
        }
        let due = sh.start + Duration::from_nanos(at_ns as u64);
        let wake = due.checked_sub(EARLY).unwrap_or(due);
        if wake > Instant::now() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(sh.end)) => {
                state.stats.borrow_mut().unsent +=
                    ticks_before(end_ns, offset, interval).saturating_sub(k);
                break;
            }
        };
        let user = state
            .idle
            .borrow_mut()
            .pop_front()
            .unwrap_or_else(|| sh.new_user(&mut rng));
        tokio::task::spawn_local(open_request(
            sh.clone(),
            t,
            state.clone(),
            user,
            due,
            permit,
        ));
        k += 1;
    }
    // Wait for the requests in flight; each is bounded by the timeout.
    let all = u32::try_from(slots).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        sh.timeout + Duration::from_secs(1),
        permits.acquire_many(all),
    )
    .await;
    state.stats.replace(ThreadStats::new(1, &[]))
}

/// One request of `user` on the slot's connection (opened if needed), bounded by the run's
/// timeout counted from `sent`.
async fn timed_exchange(
    sh: &Shared,
    slot: &mut Option<Conn>,
    user: &mut User,
    sent: Instant,
) -> Result<Answer, Failure> {
    let deadline = tokio::time::Instant::from_std(sent + sh.timeout);
    tokio::time::timeout_at(deadline, async {
        let conn = ready_conn(slot, sh.target.addr).await?;
        exchange(conn, &sh.target, user).await
    })
    .await
    .unwrap_or(Err(Failure::Timeout))
}

async fn open_request(
    sh: Arc<Shared>,
    t: usize,
    state: Rc<OpenState>,
    mut user: User,
    due: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut slot = {
        let mut pool = state.pool.borrow_mut();
        let mut found = None;
        while let Some(mut c) = pool.pop() {
            if !c.is_closed() {
                found = Some(c);
                break;
            }
        }
        found
    };
    let sent = Instant::now();
    let result = timed_exchange(&sh, &mut slot, &mut user, sent).await;
    let done = Instant::now();
    let ok = result.is_ok();
    {
        let mut st = state.stats.borrow_mut();
        if due >= sh.measure {
            if ok {
                st.service.saturating_record(
                    done.saturating_duration_since(sent).as_micros().max(1) as u64,
                );
            }
            st.lag
                .saturating_record(sent.saturating_duration_since(due).as_micros().max(1) as u64);
        }
        let at = Times { due, sent, done };
        sh.account(&mut st, &sh.counters[t], &mut user, at, result);
    }
    if ok {
        if let Some(c) = slot {
            state.pool.borrow_mut().push(c);
        }
    }
    user.remaining -= 1;
    if user.remaining > 0 {
        state.idle.borrow_mut().push_back(user);
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_split_over_threads() {
        let a: Vec<usize> = conns_of(0, 3, 8).collect();
        let b: Vec<usize> = conns_of(1, 3, 8).collect();
        let c: Vec<usize> = conns_of(2, 3, 8).collect();
        assert_eq!((a, b, c), (vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]));
    }

    #[test]
    fn ticks_before_counts_the_schedule() {
        assert_eq!(ticks_before(10.0, 0.0, 1.0), 10);
        assert_eq!(ticks_before(10.0, 0.5, 1.0), 10);
        assert_eq!(ticks_before(10.0, 0.0, 3.0), 4);
        assert_eq!(ticks_before(1.0, 2.0, 1.0), 0);
        assert_eq!(ticks_before(1.0, 0.0, 0.0), 0);
    }

    #[test]
    fn liveness_follows_kills_and_restarts() {
        let l = Liveness::new(2, 1);
        assert!(l.usable_since(0, 0));
        assert!(
            !l.usable_since(2, 1_000),
            "an added backend does not exist yet"
        );
        assert!(l.usable_since(9, 0), "unknown backends are assumed usable");
        l.down(1);
        assert!(!l.usable_since(1, 5_000));
        l.up_from(1, 7_000);
        assert!(
            !l.usable_since(1, 6_999),
            "a request sent before it was usable again"
        );
        assert!(l.usable_since(1, 7_000));
        l.up_from(2, 3_000);
        assert!(l.usable_since(2, 3_000));
    }

    #[test]
    fn with_replication_a_pinned_backend_killed_since_the_previous_response_was_not_usable() {
        let l = Liveness::new(2, 0);
        // Previous response from b2 at 1 s; b2 killed at 3 s, back at 6 s, usable from 8 s.
        l.down(1);
        l.up_from(1, 8_000_000);
        let (answered, sent) = (1_000_000, 9_000_000);
        assert!(
            l.usable_since(1, pinned_usable_since(false, sent, answered)),
            "without replication only the time of the request counts"
        );
        assert!(
            !l.usable_since(1, pinned_usable_since(true, sent, answered)),
            "with replication the session's process was gone: a takeover, not a violation"
        );
        // A session that got its previous response from the new process is held to it.
        assert!(l.usable_since(1, pinned_usable_since(true, sent, 8_500_000)));
        assert_eq!(
            pinned_usable_since(true, 5, 9),
            5,
            "never later than the send"
        );
    }

    #[test]
    fn latency_counts_from_the_earlier_of_intended_and_actual_send() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let late = Times {
            due: t0,
            sent: t0 + ms(5),
            done: t0 + ms(7),
        };
        assert_eq!(late.latency(), ms(7), "queueing before the send counts");
        let early = Times {
            due: t0 + ms(1),
            sent: t0,
            done: t0 + ms(2),
        };
        assert_eq!(early.latency(), ms(2));
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 100, 100]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(1));
    }
}
