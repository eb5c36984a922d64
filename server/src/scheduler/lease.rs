//! Compute shares where kernels run asynchronously (the cuda and hip backends): a
//! launch returns once the kernel is queued, so the scheduler cannot hold the
//! device while a kernel runs, as it does for the mock. It holds back launches
//! instead, through a lease on the device.
//!
//! The tenant holding the lease launches freely; under contention, others' launches
//! wait at the gate ([`DeviceScheduler::admit`]). So that a waiter's work does not
//! run interleaved with the holder's (the device would time-slice the two, and the
//! events around each kernel would count the other's time as its own), a holder
//! that gives way first lets its launched work complete ("drains"), asking its
//! session how many of its launches are still pending. Which tenant holds the
//! lease next is chosen as for the mock (class, then virtual time from the device
//! time the backend measured, then age). A holder keeps the lease for a
//! [`QUANTUM`] before it is compared with the waiters again, or gives way at once
//! to a waiter of a higher class.
//!
//! Under contention with waiters of its class or a higher one, a holder also
//! keeps little work in flight (about [`IN_FLIGHT_TIME`] by its kernels'
//! measured time), so that what it queued before giving way drains quickly and a
//! `high` waiter is not held up behind a deep queue; alone, or ahead of every
//! waiter's class, a tenant is never held back (work-conserving).
//!
//! A holder none of whose sessions has been at the server for [`HOLDER_QUIET`]
//! while others wait (the client does host work, or the session ended), or that
//! has been in one request for [`HOLDER_STUCK`] (a synchronising call, a long
//! copy), loses the lease without draining. Holding back happens only
//! at a launch, which is the next thing on its stream, and every wait here is
//! bounded, so it neither reorders a stream nor deadlocks a synchronising call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use xpupool_protocol::api::SessionWork;

use super::{best_waiting, choose, rank, Claimant, DeviceScheduler, State};

/// How long a tenant keeps the lease when others wait before it is compared with
/// them again.
pub(super) const QUANTUM: Duration = Duration::from_millis(20);
/// A holder none of whose sessions was in a request for this long, while
/// others wait, loses the lease...
pub(super) const HOLDER_QUIET: Duration = Duration::from_millis(10);
/// ...as does one whose sessions have been in requests this long without a new
/// one beginning or ending.
pub(super) const HOLDER_STUCK: Duration = Duration::from_millis(100);
/// How long a holder giving way waits for its launches to complete before it
/// gives the device up anyway.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_millis(250);
/// Under contention, a holder keeps about this much of its work in flight...
pub(super) const IN_FLIGHT_TIME: Duration = Duration::from_millis(2);
/// ...and at least this many launches, at most [`MAX_IN_FLIGHT`].
const MIN_IN_FLIGHT: u64 = 2;
const MAX_IN_FLIGHT: u64 = 256;
/// How often a holder waiting on its own launches asks its session again.
const POLL_EVERY: Duration = Duration::from_micros(250);
/// How often a waiter looks at the lease again without being woken.
const WAITER_TICK: Duration = Duration::from_millis(1);

/// The device's lease.
pub(super) struct Lease {
    /// Whose it is.
    claimant: Claimant,
    granted: Instant,
    /// When a request of one of its sessions last began or ended.
    seen: Instant,
    /// Its sessions in a request now ([`DeviceScheduler::present`]).
    inside: usize,
    /// Tells this grant from a later one to the same tenant.
    generation: u64,
}

/// What a session at the gate does next.
enum Step {
    /// Launch.
    Go,
    /// Wait for the lease.
    Wait,
    /// Holding it under contention: launch once its work in flight is small.
    Pace,
    /// Holding it, and a waiter goes next: let its work complete, then give way.
    Drain,
}

/// Launches a holder may have in flight under contention, by what its
/// completed kernels took on average.
fn in_flight_allowed(work: &SessionWork) -> u64 {
    if work.completed == 0 || work.busy_ns == 0 {
        return MIN_IN_FLIGHT;
    }
    let mean = (work.busy_ns / work.completed).max(1);
    (IN_FLIGHT_TIME.as_nanos() as u64 / mean).clamp(MIN_IN_FLIGHT, MAX_IN_FLIGHT)
}

impl DeviceScheduler {
    /// Waits until `claimant` may launch its next kernel on the device. `work`
    /// asks the calling session how its launches stand (recording any device
    /// time it measured with [`DeviceScheduler::record`]); `None` if its backend
    /// cannot tell, in which case nothing is waited for on its account. The
    /// launch is forwarded while the returned [`Presence`] lives.
    pub fn admit(
        self: &Arc<Self>,
        claimant: &Claimant,
        work: &mut dyn FnMut() -> Option<SessionWork>,
    ) -> Presence {
        self.gate(claimant, work);
        self.present(claimant)
    }

    /// Marks a session of `claimant` as in a request until the returned guard
    /// is dropped: if its tenant holds the lease, it is not quiet meanwhile.
    pub fn present(self: &Arc<Self>, claimant: &Claimant) -> Presence {
        let generation = enter(&mut self.lock(), claimant);
        Presence {
            scheduler: self.clone(),
            claimant: claimant.clone(),
            generation,
        }
    }

    fn gate(&self, claimant: &Claimant, work: &mut dyn FnMut() -> Option<SessionWork>) {
        let mut ticket: Option<u64> = None;
        let mut draining: Option<Instant> = None;
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            match step(&mut state, claimant, &mut ticket, now) {
                Step::Go => {
                    return;
                }
                Step::Wait => {
                    draining = None;
                    state = self
                        .changed
                        .wait_timeout(state, WAITER_TICK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                Step::Pace => {
                    let Some(work) = self.ask(state, claimant, work) else {
                        return;
                    };
                    if work.pending < in_flight_allowed(&work) {
                        return;
                    }
                    std::thread::sleep(POLL_EVERY);
                    state = self.lock();
                }
                Step::Drain => {
                    let since = *draining.get_or_insert(now);
                    let drained = self
                        .ask(state, claimant, work)
                        .is_none_or(|work| work.pending == 0);
                    if !drained && since.elapsed() < DRAIN_LIMIT {
                        std::thread::sleep(POLL_EVERY);
                        state = self.lock();
                        continue;
                    }
                    if !drained {
                        tracing::debug!(tenant = %claimant.tenant, "gave the device up before its launches completed ({DRAIN_LIMIT:?})");
                    }
                    draining = None;
                    state = self.lock();
                    if holder(&mut state, claimant).is_some() {
                        state.lease = None;
                        self.changed.notify_all();
                    }
                }
            }
        }
    }

    /// Asks the calling session how its launches stand, outside the lock, marked
    /// as at the gate meanwhile.
    fn ask(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        claimant: &Claimant,
        work: &mut dyn FnMut() -> Option<SessionWork>,
    ) -> Option<SessionWork> {
        let generation = enter(&mut state, claimant);
        drop(state);
        let answer = work();
        leave(&mut self.lock(), claimant, generation);
        answer
    }
}

/// A session in a request ([`DeviceScheduler::present`]).
pub struct Presence {
    scheduler: Arc<DeviceScheduler>,
    claimant: Claimant,
    /// The grant it counted itself in, if its tenant held the lease.
    generation: Option<u64>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        leave(&mut self.scheduler.lock(), &self.claimant, self.generation);
    }
}

/// Counts a session of `claimant` in, if its tenant holds the lease: the grant.
fn enter(state: &mut State, claimant: &Claimant) -> Option<u64> {
    holder(state, claimant).map(|lease| {
        lease.inside += 1;
        lease.seen = Instant::now();
        lease.generation
    })
}

/// Counts it out of the grant it was counted in.
fn leave(state: &mut State, claimant: &Claimant, generation: Option<u64>) {
    if let Some(lease) = holder(state, claimant) {
        lease.seen = Instant::now();
        if Some(lease.generation) == generation {
            lease.inside = lease.inside.saturating_sub(1);
        }
    }
}

/// The lease, if `claimant`'s tenant holds it.
pub(super) fn holder<'s>(state: &'s mut State, claimant: &Claimant) -> Option<&'s mut Lease> {
    state
        .lease
        .as_mut()
        .filter(|l| l.claimant.tenant == claimant.tenant)
}

/// Decides what a session of `claimant` at the gate does now.
fn step(state: &mut State, claimant: &Claimant, ticket: &mut Option<u64>, now: Instant) -> Step {
    // A holder gone quiet while others wait loses the lease.
    if state.lease.as_ref().is_some_and(|l| {
        let quiet = now.saturating_duration_since(l.seen);
        l.claimant.tenant != claimant.tenant
            && (quiet >= HOLDER_STUCK || (l.inside == 0 && quiet >= HOLDER_QUIET))
    }) {
        state.lease = None;
    }
    if state.lease.is_none() {
        let mine = *ticket.get_or_insert_with(|| enqueue(state, claimant, now));
        if choose(state) != Some(mine) {
            return Step::Wait;
        }
        tracing::trace!(tenant = %claimant.tenant, "lease granted");
        state.lease = Some(Lease {
            claimant: claimant.clone(),
            granted: now,
            seen: now,
            inside: 0,
            generation: state.next,
        });
        state.next += 1;
        if let Some(account) = state.accounts.get(&claimant.tenant) {
            state.vclock = state.vclock.max(account.vtime);
        }
    }
    let Some(lease) = holder(state, claimant) else {
        ticket.get_or_insert_with(|| enqueue(state, claimant, now));
        return Step::Wait;
    };
    lease.seen = now;
    let (granted, holding) = (lease.granted, lease.claimant.clone());
    if let Some(t) = ticket.take() {
        dequeue(state, t, now);
    }
    // Under contention: give way, or pace.
    let Some(best) = best_waiting(state, &claimant.tenant, now) else {
        return Step::Go;
    };
    let mine = rank(state, &holding, now);
    if best.0 < mine.0 {
        // Waiters of a lower class never go before it: nothing to pace for.
        return Step::Go;
    }
    let outranked = best.0 > mine.0;
    let turn_over = now.saturating_duration_since(granted) >= QUANTUM && best > mine;
    if outranked || turn_over {
        tracing::trace!(tenant = %claimant.tenant, outranked, "lease: giving way");
        Step::Drain
    } else {
        Step::Pace
    }
}

/// Queues a waiting ticket for `claimant`; a tenant coming back from idle starts
/// at the current virtual time (one that holds the lease is not idle).
fn enqueue(state: &mut State, claimant: &Claimant, now: Instant) -> u64 {
    let holds = holder(state, claimant).is_some();
    super::enqueue(state, claimant, now, !holds)
}

/// Takes a waiting ticket off the queue: its tenant has the lease. The time it
/// waited counts as throttled.
fn dequeue(state: &mut State, ticket: u64, now: Instant) {
    if let Some(t) = state.tickets.remove(&ticket) {
        t.claimant.usage.throttled_ns.fetch_add(
            now.saturating_duration_since(t.waiting_since).as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Some(account) = state.accounts.get_mut(&t.claimant.tenant) {
            account.active -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Condvar, Mutex};

    use super::super::tests::claimant;
    use super::super::Priority;
    use super::*;

    /// A device that runs queued kernels one after another, as a GPU runs one
    /// process's work at a time, and what each tenant's session would measure.
    #[derive(Default)]
    struct Device {
        queue: Mutex<VecDeque<(usize, Duration)>>,
        more: Condvar,
        /// Per tenant: launches queued, launches completed, nanoseconds run.
        queued: [AtomicU64; 4],
        completed: [AtomicU64; 4],
        ran_ns: [AtomicU64; 4],
    }

    impl Device {
        fn run(&self, stop: &AtomicBool) {
            while !stop.load(Ordering::Relaxed) {
                let next = {
                    let queue = self.queue.lock().unwrap();
                    let (mut queue, _) = self
                        .more
                        .wait_timeout_while(queue, Duration::from_millis(5), |q| q.is_empty())
                        .unwrap();
                    queue.pop_front()
                };
                if let Some((tenant, kernel)) = next {
                    std::thread::sleep(kernel);
                    self.ran_ns[tenant].fetch_add(kernel.as_nanos() as u64, Ordering::Relaxed);
                    self.completed[tenant].fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        fn launch(&self, tenant: usize, kernel: Duration) {
            self.queued[tenant].fetch_add(1, Ordering::Relaxed);
            self.queue.lock().unwrap().push_back((tenant, kernel));
            self.more.notify_one();
        }
    }

    /// A session's view: what its backend measured, recorded as the tenancy
    /// layer records it.
    fn work(
        device: &Device,
        scheduler: &DeviceScheduler,
        c: &Claimant,
        i: usize,
        seen: &mut u64,
    ) -> Option<SessionWork> {
        let busy_ns = device.ran_ns[i].load(Ordering::Relaxed);
        let completed = device.completed[i].load(Ordering::Relaxed);
        scheduler.record(c, busy_ns - *seen);
        *seen = busy_ns;
        Some(SessionWork {
            busy_ns,
            completed,
            pending: device.queued[i].load(Ordering::Relaxed) - completed,
        })
    }

    /// Each claimant launches `kernel`s through the gate as fast as it is let
    /// for `for_`; each one's fraction of the device time, and the median time
    /// from a launch's admission request to its kernel's end for `timed`.
    fn contend(claimants: &[Claimant], kernel: Duration, for_: Duration) -> Vec<f64> {
        // One at a time: the shares are of wall time on a small machine.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let scheduler = Arc::new(DeviceScheduler::default());
        let device = Device::default();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| device.run(&stop));
            for (i, c) in claimants.iter().enumerate() {
                let (scheduler, device, stop) = (&scheduler, &device, &stop);
                s.spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Ordering::Relaxed) {
                        drop(scheduler.admit(c, &mut || work(device, scheduler, c, i, &mut seen)));
                        device.launch(i, kernel);
                        // The client's own bound on what it has queued.
                        while device.queued[i].load(Ordering::Relaxed)
                            - device.completed[i].load(Ordering::Relaxed)
                            > 64
                            && !stop.load(Ordering::Relaxed)
                        {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                });
            }
            std::thread::sleep(for_);
            stop.store(true, Ordering::Relaxed);
        });
        let ran: Vec<f64> = (0..claimants.len())
            .map(|i| device.ran_ns[i].load(Ordering::Relaxed) as f64)
            .collect();
        let total: f64 = ran.iter().sum();
        ran.iter().map(|r| r / total).collect()
    }

    #[test]
    fn asynchronous_tenants_get_their_shares() {
        // Without the gate the device's queue interleaves them 50/50.
        for (a, b) in [(0.7, 0.3), (0.1, 0.9)] {
            let shares = contend(
                &[
                    claimant("a", a, Priority::Normal),
                    claimant("b", b, Priority::Normal),
                ],
                Duration::from_millis(1),
                Duration::from_millis(2000),
            );
            println!("asked {a}/{b}: {shares:?}");
            assert!((shares[0] - a).abs() < 0.05, "asked {a}/{b}: {shares:?}");
        }
    }

    #[test]
    fn an_asynchronous_tenant_alone_is_never_held_back() {
        let c = claimant("alone", 0.1, Priority::Low);
        let scheduler = Arc::new(DeviceScheduler::default());
        let mut asked = 0;
        for _ in 0..1000 {
            let _launching = scheduler.admit(&c, &mut || {
                asked += 1;
                Some(SessionWork {
                    pending: 1000,
                    ..SessionWork::default()
                })
            });
        }
        assert_eq!(
            asked, 0,
            "nothing to pace against: the session is not asked"
        );
        assert_eq!(c.usage.throttled_ns.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_high_waiter_takes_the_device_once_the_holders_work_drains() {
        let scheduler = Arc::new(DeviceScheduler::default());
        let normal = claimant("n", 0.5, Priority::Normal);
        let high = claimant("h", 0.5, Priority::High);
        drop(scheduler.admit(&normal, &mut || None));
        // The holder stays at work (never quiet) for this test.
        scheduler.lock().lease.as_mut().unwrap().seen = Instant::now() + Duration::from_secs(3600);
        let pending = AtomicU64::new(3);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| drop(scheduler.admit(&high, &mut || None)));
            while scheduler.lock().tickets.is_empty() {
                std::thread::yield_now();
            }
            // The holder comes back to launch: it drains, then waits its turn.
            let holder = s.spawn(|| {
                let _launching = scheduler.admit(&normal, &mut || {
                    // Its kernels complete one per question.
                    let left = pending.load(Ordering::Relaxed).saturating_sub(1);
                    pending.store(left, Ordering::Relaxed);
                    Some(SessionWork {
                        pending: left,
                        ..SessionWork::default()
                    })
                });
            });
            waiter.join().unwrap();
            assert_eq!(
                pending.load(Ordering::Relaxed),
                0,
                "the high one went before the holder drained"
            );
            holder.join().unwrap();
        });
    }

    #[test]
    fn a_quiet_holder_loses_the_lease() {
        let scheduler = Arc::new(DeviceScheduler::default());
        let gone = claimant("gone", 0.5, Priority::Normal);
        let other = claimant("other", 0.5, Priority::Normal);
        drop(scheduler.admit(&gone, &mut || None));
        let started = Instant::now();
        drop(scheduler.admit(&other, &mut || None));
        let waited = started.elapsed();
        assert!(waited >= HOLDER_QUIET, "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
