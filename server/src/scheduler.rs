//! Compute shares: one scheduler per device decides whose kernel runs on it next.
//!
//! A device runs one tenant's kernel at a time (as a GPU time-slices between
//! processes). Whoever waits is served by weighted fair queueing: each tenant has a
//! virtual time that advances by the device time its kernels take divided by its
//! `compute_share`, and the waiter with the smallest virtual time goes next. Under
//! contention each tenant thus gets its share; a tenant alone never waits (the
//! scheduler is work-conserving), and a tenant coming back from idle starts at the
//! current virtual clock, so idling banks no credit.
//!
//! Priorities are classes above that: a `high` tenant that has used no more than
//! its share of the recent past goes before every `normal` and `low` waiter, and a
//! kernel of a lower class that is running pauses at its next block boundary
//! ([`Running::checkpoint`]) until the high one is done, so its latency is that of
//! the device alone plus at most one block. Over its share, a `high` tenant
//! competes as `normal`, so a priority never takes away another's guaranteed share.
//! `low` goes only when no `normal` waits.
//!
//! A tenant's next kernel reaches the scheduler a moment after its last one ends
//! (the session thread returns, takes the next request, asks again). So that a
//! tenant whose turn it still is does not lose the device to whoever was already
//! waiting in that moment, a kernel that ends under contention holds the device
//! for its tenant for [`ANTICIPATION`] when that tenant is the one to go next;
//! lower and equal classes of other tenants wait that long at most, a higher class
//! does not wait. A tenant that does not come back within it loses its turn.
//!
//! Only kernels are scheduled; a waiting launch holds up its own stream (it is the
//! next thing on it) and nothing else, and a synchronising call waits for it as for
//! any earlier work, so holding back can neither reorder a stream nor deadlock.
//!
//! That is for backends whose launches return when the kernel is done (the mock).
//! Where kernels run asynchronously (cuda, hip) the same accounts and choice hold
//! back launches instead, through a lease on the device ([`lease`]).

mod lease;

pub use lease::Presence;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How fast a tenant's record of recent use fades (for "within its share").
const RECENT_HALF_LIFE: Duration = Duration::from_secs(2);
/// How far over its share a `high` tenant may be and still count as high.
const SHARE_SLACK: f64 = 0.02;
/// How long the device is kept for a tenant whose kernel just ended and whose
/// turn it still is (see the module's notes).
pub const ANTICIPATION: Duration = Duration::from_millis(3);
/// Utilisation is measured over about this long.
const UTILIZATION_WINDOW: Duration = Duration::from_secs(1);

/// A tenant's scheduling class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Runs only when no normal work waits.
    Low,
    /// The default.
    Normal,
    /// Dispatched first, and protected, within its share.
    High,
}

/// What the scheduler needs to know of a tenant, and where it adds up the tenant's
/// time; one per tenant and device, kept by the tenant so figures outlive sessions.
#[derive(Debug, Default)]
pub struct Usage {
    /// Nanoseconds of device time its kernels took.
    pub busy_ns: std::sync::atomic::AtomicU64,
    /// Nanoseconds its launches waited while the device ran others' work.
    pub throttled_ns: std::sync::atomic::AtomicU64,
    /// Kernel launches run.
    pub launches: std::sync::atomic::AtomicU64,
}

/// Who asks for the device.
#[derive(Clone)]
pub struct Claimant {
    /// The tenant's name (its scheduling account).
    pub tenant: String,
    /// Its share under contention, in (0, 1].
    pub share: f64,
    /// Its class.
    pub priority: Priority,
    /// Where its time is added up.
    pub usage: Arc<Usage>,
}

struct Account {
    vtime: f64,
    /// Tickets waiting, running or paused.
    active: usize,
    /// Decayed busy seconds, as of `recent_at`.
    recent: f64,
    recent_at: Instant,
}

impl Account {
    fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.recent_at).as_secs_f64();
        self.recent *= 0.5f64.powf(dt / RECENT_HALF_LIFE.as_secs_f64());
        self.recent_at = now;
    }
}

struct Ticket {
    claimant: Claimant,
    /// Set while it runs; the time it started (or resumed).
    since: Option<Instant>,
    /// When it began waiting (or was paused).
    waiting_since: Instant,
    paused: bool,
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, Account>,
    tickets: BTreeMap<u64, Ticket>,
    running: Option<u64>,
    next: u64,
    vclock: f64,
    /// Nanoseconds of kernels finished, all tenants.
    busy_ns: u64,
    /// `(when, busy_ns then)` samples for utilisation.
    samples: Vec<(Instant, u64)>,
    /// The device kept for a tenant until then, its class ([`ANTICIPATION`]).
    reserved: Option<(String, Priority, Instant)>,
    /// Where kernels run asynchronously: the tenant whose sessions may launch
    /// ([`lease`]).
    lease: Option<lease::Lease>,
}

/// One device's scheduler.
#[derive(Default)]
pub struct DeviceScheduler {
    state: Mutex<State>,
    changed: Condvar,
}

/// A kernel that holds the device; dropping it gives the device up and adds its
/// time to its tenant.
pub struct Running {
    scheduler: Arc<DeviceScheduler>,
    ticket: u64,
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Arc<Running>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `running` as this thread's current kernel ([`current`]), so the
/// backend that runs it can reach its checkpoints.
pub fn with_current<R>(running: Arc<Running>, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| c.borrow_mut().take());
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(running));
    let _reset = Reset;
    f()
}

/// The kernel this thread is running for the scheduler, if any.
pub fn current() -> Option<Arc<Running>> {
    CURRENT.with(|c| c.borrow().clone())
}

impl DeviceScheduler {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the device, as the policy says, and holds it until the returned
    /// [`Running`] is dropped.
    pub fn acquire(self: &Arc<Self>, claimant: &Claimant) -> Running {
        let now = Instant::now();
        let mut state = self.lock();
        let ticket = enqueue(&mut state, claimant, now, true);
        let mut state = self.wait_for_turn(state, ticket);
        start(&mut state, ticket);
        drop(state);
        Running {
            scheduler: self.clone(),
            ticket,
        }
    }

    /// Blocks until the device is free and `ticket` is the one to run next.
    fn wait_for_turn<'g>(
        &'g self,
        mut state: MutexGuard<'g, State>,
        ticket: u64,
    ) -> MutexGuard<'g, State> {
        loop {
            if state.running.is_none() && choose(&mut state) == Some(ticket) {
                return state;
            }
            state = self.wait(state);
        }
    }

    /// Waits for a change, or for a reservation to run out.
    fn wait<'g>(&'g self, state: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        match state.reserved.as_ref().map(|r| r.2) {
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                self.changed
                    .wait_timeout(state, left.max(Duration::from_micros(50)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Adds `ns` of device time a backend measured for `claimant`'s kernels
    /// after they ran (the cuda backend times the work it forwards with events;
    /// the device itself interleaves it): its busy time, the device's, and its
    /// account of recent use and virtual time.
    pub fn record(&self, claimant: &Claimant, ns: u64) {
        if ns == 0 {
            return;
        }
        let now = Instant::now();
        claimant
            .usage
            .busy_ns
            .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        state.busy_ns += ns;
        let seconds = ns as f64 * 1e-9;
        let account = account(&mut state, &claimant.tenant, now);
        account.decay(now);
        account.recent += seconds;
        account.vtime += seconds / claimant.share.max(1e-3);
        let vtime = account.vtime;
        if lease::holder(&mut state, claimant).is_some() {
            state.vclock = state.vclock.max(vtime);
        }
    }

    /// The fraction of the last second the device ran kernels.
    pub fn utilization(&self) -> f64 {
        let now = Instant::now();
        let mut state = self.lock();
        let busy = busy_now(&state, now);
        state.samples.push((now, busy));
        let cutoff = now - UTILIZATION_WINDOW;
        // Keep the newest sample at least a window old, and the ones after it.
        while state.samples.len() > 2 && state.samples[1].0 <= cutoff {
            state.samples.remove(0);
        }
        let (then, busy_then) = state.samples[0];
        let span = now.saturating_duration_since(then);
        if span < Duration::from_millis(50) {
            // Too short to say: whether something runs right now.
            return if state.running.is_some() { 1.0 } else { 0.0 };
        }
        ((busy - busy_then) as f64 / span.as_nanos() as f64).clamp(0.0, 1.0)
    }
}

/// Queues a waiting ticket for `claimant`. A tenant with no ticket before starts
/// at the current virtual time if `from_idle` (so idling banks no credit).
fn enqueue(state: &mut State, claimant: &Claimant, now: Instant, from_idle: bool) -> u64 {
    let vclock = state.vclock;
    let account = account(state, &claimant.tenant, now);
    if account.active == 0 && from_idle {
        account.vtime = account.vtime.max(vclock);
    }
    account.active += 1;
    let ticket = state.next;
    state.next += 1;
    state.tickets.insert(
        ticket,
        Ticket {
            claimant: claimant.clone(),
            since: None,
            waiting_since: now,
            paused: false,
        },
    );
    ticket
}

/// `tenant`'s account, made (at the current virtual time) if it has none.
fn account<'a>(state: &'a mut State, tenant: &str, now: Instant) -> &'a mut Account {
    let vclock = state.vclock;
    state
        .accounts
        .entry(tenant.to_owned())
        .or_insert_with(|| Account {
            vtime: vclock,
            active: 0,
            recent: 0.0,
            recent_at: now,
        })
}

fn busy_now(state: &State, now: Instant) -> u64 {
    let running = state
        .running
        .and_then(|t| state.tickets.get(&t))
        .and_then(|t| t.since)
        .map_or(0, |since| {
            now.saturating_duration_since(since).as_nanos() as u64
        });
    state.busy_ns + running
}

/// The effective class of a claimant now: `high` counts as high only within its share.
fn class(state: &mut State, claimant: &Claimant, now: Instant) -> Priority {
    if claimant.priority != Priority::High {
        return claimant.priority;
    }
    let mut total = 0.0;
    let mut mine = 0.0;
    for (name, account) in state.accounts.iter_mut() {
        account.decay(now);
        total += account.recent;
        if *name == claimant.tenant {
            mine = account.recent;
        }
    }
    if total <= 0.0 || mine / total <= claimant.share + SHARE_SLACK {
        Priority::High
    } else {
        Priority::Normal
    }
}

/// The ticket that should hold the device next: the highest class, then the
/// smallest virtual time, then the oldest; while the device is kept for a tenant,
/// other tenants' tickets of its class or lower are passed over.
fn choose(state: &mut State) -> Option<u64> {
    let now = Instant::now();
    if state.reserved.as_ref().is_some_and(|r| r.2 <= now) {
        state.reserved = None;
    }
    let reserved = &state.reserved;
    let candidates: Vec<(u64, Claimant)> = state
        .tickets
        .iter()
        .filter(|(_, t)| t.since.is_none())
        .filter(|(_, t)| match reserved {
            Some((tenant, class, _)) => {
                t.claimant.tenant == *tenant || t.claimant.priority > *class
            }
            None => true,
        })
        .map(|(&id, t)| (id, t.claimant.clone()))
        .collect();
    let mut best: Option<((Priority, f64), std::cmp::Reverse<u64>)> = None;
    for (id, claimant) in candidates {
        let this = (rank(state, &claimant, now), std::cmp::Reverse(id));
        if best.is_none_or(|b| this > b) {
            best = Some(this);
        }
    }
    best.map(|(_, std::cmp::Reverse(id))| id)
}

/// Where `claimant` stands for the device: its class, then its virtual time
/// negated (greater goes first).
fn rank(state: &mut State, claimant: &Claimant, now: Instant) -> (Priority, f64) {
    let vtime = state
        .accounts
        .get(&claimant.tenant)
        .map_or(0.0, |a| a.vtime);
    (class(state, claimant, now), -vtime)
}

/// The rank of the best-placed waiting claimant of a tenant other than `tenant`.
fn best_waiting(state: &mut State, tenant: &str, now: Instant) -> Option<(Priority, f64)> {
    let waiting: Vec<Claimant> = state
        .tickets
        .values()
        .filter(|t| t.since.is_none() && t.claimant.tenant != tenant)
        .map(|t| t.claimant.clone())
        .collect();
    let mut best: Option<(Priority, f64)> = None;
    for c in waiting {
        let this = rank(state, &c, now);
        if best.is_none_or(|b| this > b) {
            best = Some(this);
        }
    }
    best
}

/// Gives the device to `ticket`, counting the time it waited as throttled if the
/// device ran someone else's work meanwhile.
fn start(state: &mut State, ticket: u64) {
    let now = Instant::now();
    let t = state.tickets.get_mut(&ticket).expect("a live ticket");
    let waited = now.saturating_duration_since(t.waiting_since);
    t.since = Some(now);
    t.paused = false;
    t.claimant.usage.throttled_ns.fetch_add(
        waited.as_nanos() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let tenant = t.claimant.tenant.clone();
    state.running = Some(ticket);
    state.reserved = None;
    if let Some(account) = state.accounts.get(&tenant) {
        state.vclock = state.vclock.max(account.vtime);
    }
}

/// After a kernel of `claimant` ended: keeps the device for its tenant for
/// [`ANTICIPATION`] if others wait and it is still the one to go next.
fn anticipate(state: &mut State, claimant: &Claimant, now: Instant) {
    let Some(best) = best_waiting(state, &claimant.tenant, now) else {
        return;
    };
    let mine = rank(state, claimant, now);
    if best > mine {
        return;
    }
    state.reserved = Some((claimant.tenant.clone(), mine.0, now + ANTICIPATION));
}

/// Takes `ticket` off the device, charging the time it ran since it started.
fn stop(state: &mut State, ticket: u64, now: Instant) {
    let Some(t) = state.tickets.get_mut(&ticket) else {
        return;
    };
    let Some(since) = t.since.take() else {
        return;
    };
    let ran = now.saturating_duration_since(since);
    let ns = ran.as_nanos() as u64;
    t.claimant
        .usage
        .busy_ns
        .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    let (tenant, share) = (t.claimant.tenant.clone(), t.claimant.share);
    state.busy_ns += ns;
    if let Some(account) = state.accounts.get_mut(&tenant) {
        account.decay(now);
        account.recent += ran.as_secs_f64();
        account.vtime += ran.as_secs_f64() / share.max(1e-3);
    }
    if state.running == Some(ticket) {
        state.running = None;
    }
}

impl Running {
    /// Called by the kernel between its blocks: if a higher class waits, the kernel
    /// pauses here (every worker of it that reaches a checkpoint) until it is its
    /// turn again.
    pub fn checkpoint(&self) {
        let s = &self.scheduler;
        let mut state = s.lock();
        if state.running == Some(self.ticket) {
            let now = Instant::now();
            let mine = state.tickets[&self.ticket].claimant.clone();
            let my_class = class(&mut state, &mine, now);
            let outranked = state
                .tickets
                .iter()
                .filter(|(_, t)| t.since.is_none() && !t.paused)
                .map(|(_, t)| t.claimant.clone())
                .collect::<Vec<_>>()
                .into_iter()
                .any(|other| class(&mut state, &other, now) > my_class);
            if !outranked {
                return;
            }
            stop(&mut state, self.ticket, now);
            let t = state.tickets.get_mut(&self.ticket).expect("a live ticket");
            t.paused = true;
            t.waiting_since = now;
            s.changed.notify_all();
        }
        // Paused, by this worker or another of the same kernel.
        loop {
            if state.running == Some(self.ticket) {
                return;
            }
            if state.running.is_none() && choose(&mut state) == Some(self.ticket) {
                start(&mut state, self.ticket);
                s.changed.notify_all();
                return;
            }
            state = s.wait(state);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let s = &self.scheduler;
        let mut state = s.lock();
        let now = Instant::now();
        stop(&mut state, self.ticket, now);
        if let Some(t) = state.tickets.remove(&self.ticket) {
            t.claimant
                .usage
                .launches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(account) = state.accounts.get_mut(&t.claimant.tenant) {
                account.active -= 1;
            }
            anticipate(&mut state, &t.claimant, now);
        }
        s.changed.notify_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    pub(super) fn claimant(name: &str, share: f64, priority: Priority) -> Claimant {
        Claimant {
            tenant: name.to_owned(),
            share,
            priority,
            usage: Arc::default(),
        }
    }

    /// Runs `kernel`-long busy kernels for each claimant on its own thread for `for_`.
    fn contend(claimants: &[Claimant], kernel: Duration, for_: Duration) -> Vec<f64> {
        contend_with_gaps(claimants, kernel, Duration::ZERO, for_)
    }

    /// Like [`contend`], each claimant pausing `gap` between its kernels (a client's
    /// round trip).
    fn contend_with_gaps(
        claimants: &[Claimant],
        kernel: Duration,
        gap: Duration,
        for_: Duration,
    ) -> Vec<f64> {
        // One at a time: their spinning threads measure shares of wall time.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let scheduler = Arc::new(DeviceScheduler::default());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for c in claimants {
                let (scheduler, stop) = (&scheduler, &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let running = scheduler.acquire(c);
                        let until = Instant::now() + kernel;
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        drop(running);
                        if !gap.is_zero() {
                            std::thread::sleep(gap);
                        }
                    }
                });
            }
            std::thread::sleep(for_);
            stop.store(true, Ordering::Relaxed);
        });
        let busy: Vec<f64> = claimants
            .iter()
            .map(|c| c.usage.busy_ns.load(Ordering::Relaxed) as f64)
            .collect();
        let total: f64 = busy.iter().sum();
        busy.iter().map(|b| b / total).collect()
    }

    #[test]
    fn contending_tenants_get_their_shares() {
        let shares = contend(
            &[
                claimant("a", 0.7, Priority::Normal),
                claimant("b", 0.3, Priority::Normal),
            ],
            Duration::from_millis(2),
            Duration::from_millis(1500),
        );
        assert!((shares[0] - 0.7).abs() < 0.05, "{shares:?}");
    }

    #[test]
    fn a_tenant_whose_next_kernel_comes_a_moment_later_keeps_its_share() {
        // Without the anticipation window the waiting tenant takes every gap and
        // the two alternate, 50/50, whatever their shares.
        let shares = contend_with_gaps(
            &[
                claimant("a", 0.9, Priority::Normal),
                claimant("b", 0.1, Priority::Normal),
            ],
            Duration::from_millis(2),
            Duration::from_micros(300),
            Duration::from_millis(1500),
        );
        assert!((shares[0] - 0.9).abs() < 0.05, "{shares:?}");
    }

    #[test]
    fn a_tenant_alone_is_never_held_back() {
        let c = claimant("alone", 0.1, Priority::Low);
        let scheduler = Arc::new(DeviceScheduler::default());
        for _ in 0..100 {
            drop(scheduler.acquire(&c));
        }
        assert_eq!(c.usage.launches.load(Ordering::Relaxed), 100);
        assert!(c.usage.throttled_ns.load(Ordering::Relaxed) < 50_000_000);
    }

    #[test]
    fn a_high_tenant_preempts_at_a_checkpoint() {
        let scheduler = Arc::new(DeviceScheduler::default());
        let normal = claimant("n", 0.5, Priority::Normal);
        let high = claimant("h", 0.5, Priority::High);
        let running = scheduler.acquire(&normal);
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                let r = scheduler.acquire(&high);
                drop(r);
            });
            // The normal kernel keeps hitting checkpoints; the high one gets in.
            while !handle.is_finished() {
                running.checkpoint();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        drop(running);
        assert_eq!(high.usage.launches.load(Ordering::Relaxed), 1);
        assert_eq!(normal.usage.launches.load(Ordering::Relaxed), 1);
    }
}
