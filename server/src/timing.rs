//! Device time of a session's kernels, as the cuda and hip backends measure it: a
//! pair of timing events around each launch they forward, read once the second
//! has completed (the vendor's event query, never waiting), so nothing is guessed
//! from the management library's coarse samples. Kernels of different streams that overlap are each
//! counted whole, as a busy time per kernel is. The first event completes when
//! the stream reaches the kernel, so time the kernel then waits for the device
//! (another process's work time-sliced in) counts as its own: under contention a
//! tenant's measured time is its kernels' span on the device, not their share.
//!
//! Bounded: at most [`MAX_PENDING`] launches of one stream, and
//! [`MAX_PENDING_ALL`] in all, wait to be read; past that a launch goes untimed (counted, and logged once) rather than queueing
//! without end. Each stream's launches complete in order, so one stream's long
//! kernel holds up the reading of that stream only. Events are pooled.

use std::collections::{HashMap, VecDeque};

use xpupool_protocol::api::SessionWork;

/// Launches of one stream whose events may wait to be read.
const MAX_PENDING: usize = 4096;
/// Launches of all the session's streams together.
const MAX_PENDING_ALL: usize = 16384;

/// What a vendor's runtime gives the timing: its event calls.
pub(crate) trait TimingEvents {
    /// An event handle, and a stream handle.
    type Event: Copy;
    type Stream: Copy;
    /// A new timing event, if one can be made.
    fn create_event(&self) -> Option<Self::Event>;
    /// Records `event` on `stream`; whether that worked.
    fn record_event(&self, event: Self::Event, stream: Self::Stream) -> bool;
    /// Whether `event` has completed: `Some(true)`, not yet: `Some(false)`, or
    /// it failed (`None`).
    fn event_done(&self, event: Self::Event) -> Option<bool>;
    /// Milliseconds between two completed events, if the runtime can say.
    fn elapsed_ms(&self, start: Self::Event, end: Self::Event) -> Option<f32>;
    fn destroy_event(&self, event: Self::Event);
    /// The key a stream's launches are queued under.
    fn stream_key(stream: Self::Stream) -> usize;
}

/// A launch's `(start, end)` events.
type Pair<T> = (<T as TimingEvents>::Event, <T as TimingEvents>::Event);

/// One session's kernel timing.
pub(crate) struct KernelTimes<T: TimingEvents> {
    /// Events ready for reuse.
    pool: Vec<T::Event>,
    /// By stream: `(start, end)` of launches not yet read, oldest first.
    pending: HashMap<usize, VecDeque<Pair<T>>>,
    /// Nanoseconds of the launches read so far.
    busy_ns: u64,
    /// Launches read so far.
    completed: u64,
    /// Launches not timed (the queue was full, or events could not be made).
    untimed: u64,
}

impl<T: TimingEvents> Default for KernelTimes<T> {
    fn default() -> Self {
        KernelTimes {
            pool: Vec::new(),
            pending: HashMap::new(),
            busy_ns: 0,
            completed: 0,
            untimed: 0,
        }
    }
}

// SAFETY: the events are the vendor runtime's handles, used only by the session's
// own thread.
unsafe impl<T: TimingEvents> Send for KernelTimes<T> {}

impl<T: TimingEvents> KernelTimes<T> {
    /// Records the start of a launch on `stream`: the pair to finish with
    /// [`KernelTimes::after`], or `None` if this launch goes untimed.
    pub(crate) fn before(&mut self, d: &T, stream: T::Stream) -> Option<(T::Event, T::Event)> {
        self.collect(d);
        let all: usize = self.pending.values().map(VecDeque::len).sum();
        if all >= MAX_PENDING_ALL
            || self
                .pending
                .get(&T::stream_key(stream))
                .is_some_and(|q| q.len() >= MAX_PENDING)
        {
            self.untimed(1);
            return None;
        }
        let start = self.event(d)?;
        let Some(end) = self.event(d) else {
            self.pool.push(start);
            return None;
        };
        if !d.record_event(start, stream) {
            self.pool.extend([start, end]);
            self.untimed(1);
            return None;
        }
        Some((start, end))
    }

    /// Ends a launch's timing: its end event recorded if it was launched.
    pub(crate) fn after(
        &mut self,
        d: &T,
        stream: T::Stream,
        pair: (T::Event, T::Event),
        launched: bool,
    ) {
        if launched && d.record_event(pair.1, stream) {
            self.pending
                .entry(T::stream_key(stream))
                .or_default()
                .push_back(pair);
        } else {
            self.pool.extend([pair.0, pair.1]);
        }
    }

    /// Reads the launches that have completed, each stream's oldest first,
    /// without waiting: the time of all launches read so far, and how many
    /// have not completed.
    pub(crate) fn collect(&mut self, d: &T) -> SessionWork {
        for queue in self.pending.values_mut() {
            while let Some(&(start, end)) = queue.front() {
                match d.event_done(end) {
                    Some(false) => break,
                    Some(true) => {
                        self.busy_ns += elapsed_ns(d, start, end);
                        self.completed += 1;
                    }
                    // A failed launch or a broken context: this one is not counted.
                    None => {}
                }
                queue.pop_front();
                self.pool.extend([start, end]);
            }
        }
        self.pending.retain(|_, queue| !queue.is_empty());
        SessionWork {
            busy_ns: self.busy_ns,
            completed: self.completed,
            pending: self.pending.values().map(|q| q.len() as u64).sum(),
        }
    }

    /// What [`KernelTimes::collect`] says of each device's times together,
    /// each read with its device made current by `enter`; a device that cannot
    /// be is left out (and said), not the others.
    pub(crate) fn collect_all(
        times: &mut HashMap<u32, Self>,
        d: &T,
        enter: impl Fn(u32) -> Result<(), xpupool_protocol::CuError>,
    ) -> SessionWork {
        let mut all = SessionWork::default();
        for (&device, times) in times.iter_mut() {
            if let Err(e) = enter(device) {
                tracing::warn!(device, error = %e.message, "kernel times of a device not read");
                continue;
            }
            let work = times.collect(d);
            all.busy_ns += work.busy_ns;
            all.completed += work.completed;
            all.pending += work.pending;
        }
        all
    }

    /// Destroys every event (the session is ending; its work is done or failed).
    pub(crate) fn destroy(&mut self, d: &T) {
        self.collect(d);
        let pending: Vec<T::Event> = self
            .pending
            .drain()
            .flat_map(|(_, queue)| queue.into_iter().flat_map(|(a, b)| [a, b]))
            .collect();
        for event in self.pool.drain(..).chain(pending) {
            d.destroy_event(event);
        }
    }

    fn event(&mut self, d: &T) -> Option<T::Event> {
        if let Some(event) = self.pool.pop() {
            return Some(event);
        }
        let event = d.create_event();
        if event.is_none() {
            self.untimed(1);
        }
        event
    }

    fn untimed(&mut self, n: u64) {
        if self.untimed == 0 {
            tracing::warn!("a launch went untimed (its busy time is not counted): too many launches wait to be read, or no event could be made");
        }
        self.untimed += n;
    }
}

/// Nanoseconds between two completed timing events (0 if the runtime cannot say).
fn elapsed_ns<T: TimingEvents>(d: &T, start: T::Event, end: T::Event) -> u64 {
    match d.elapsed_ms(start, end) {
        Some(ms) if ms.is_finite() && ms > 0.0 => (f64::from(ms) * 1e6) as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Events that complete when the test says; each event's time is its id in ms.
    #[derive(Default)]
    struct Fake {
        made: RefCell<usize>,
        done_upto: RefCell<usize>,
        destroyed: RefCell<usize>,
        fail_records: RefCell<bool>,
    }

    impl TimingEvents for Fake {
        type Event = usize;
        type Stream = usize;
        fn create_event(&self) -> Option<usize> {
            *self.made.borrow_mut() += 1;
            Some(*self.made.borrow())
        }
        fn record_event(&self, _: usize, _: usize) -> bool {
            !*self.fail_records.borrow()
        }
        fn event_done(&self, event: usize) -> Option<bool> {
            Some(event <= *self.done_upto.borrow())
        }
        fn elapsed_ms(&self, start: usize, end: usize) -> Option<f32> {
            Some((end - start) as f32)
        }
        fn destroy_event(&self, _: usize) {
            *self.destroyed.borrow_mut() += 1;
        }
        fn stream_key(stream: usize) -> usize {
            stream
        }
    }

    #[test]
    fn launches_count_once_their_end_event_completes_and_events_are_reused() {
        let d = Fake::default();
        let mut t = KernelTimes::<Fake>::default();
        let first = t.before(&d, 7).unwrap();
        t.after(&d, 7, first, true);
        let second = t.before(&d, 7).unwrap();
        t.after(&d, 7, second, true);
        let work = |busy_ns, completed, pending| SessionWork {
            busy_ns,
            completed,
            pending,
        };
        assert_eq!(t.collect(&d), work(0, 0, 2), "nothing has completed");
        *d.done_upto.borrow_mut() = first.1;
        assert_eq!(
            t.collect(&d),
            work(1_000_000, 1, 1),
            "the first launch: 1 ms"
        );
        *d.done_upto.borrow_mut() = usize::MAX;
        assert_eq!(t.collect(&d), work(2_000_000, 2, 0));
        // A launch that did not happen is not counted, and its events go back.
        let made = *d.made.borrow();
        let third = t.before(&d, 7).unwrap();
        t.after(&d, 7, third, false);
        assert_eq!(*d.made.borrow(), made, "pooled events are reused");
        assert_eq!(t.collect(&d), work(2_000_000, 2, 0));
        t.destroy(&d);
        assert_eq!(*d.destroyed.borrow(), made);
    }

    #[test]
    fn a_full_queue_or_a_failed_record_leaves_the_launch_untimed() {
        let d = Fake::default();
        let mut t = KernelTimes::<Fake>::default();
        for _ in 0..MAX_PENDING {
            let pair = t.before(&d, 1).unwrap();
            t.after(&d, 1, pair, true);
        }
        assert!(t.before(&d, 1).is_none(), "one stream's queue is bounded");
        assert!(t.before(&d, 2).is_some(), "another stream still has room");
        *d.fail_records.borrow_mut() = true;
        assert!(t.before(&d, 3).is_none());
        assert_eq!(t.untimed, 2);
    }
}
