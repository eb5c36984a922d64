//! Device time of a session's kernels, as the cuda backend measures it
//! (`cuda/timing.rs`): a pair of timing events around each launch, read once the
//! second has completed (`hipEventQuery`, never waiting). Bounded the same way;
//! events are pooled.

use std::collections::{HashMap, VecDeque};

use super::runtime::{Handle, Runtime, HIP_ERROR_NOT_READY, HIP_SUCCESS};

/// Launches of one stream whose events may wait to be read.
const MAX_PENDING: usize = 4096;
/// Launches of all the session's streams together.
const MAX_PENDING_ALL: usize = 16384;

/// One session's kernel timing.
#[derive(Default)]
pub(crate) struct KernelTimes {
    /// Events ready for reuse.
    pool: Vec<Handle>,
    /// By stream: `(start, end)` of launches not yet read, oldest first.
    pending: HashMap<usize, VecDeque<(Handle, Handle)>>,
    /// Nanoseconds of the launches read so far.
    busy_ns: u64,
    /// Launches not timed (the queue was full, or events could not be made).
    untimed: u64,
}

// SAFETY: the events are runtime handles used only by the session's own thread.
unsafe impl Send for KernelTimes {}

impl KernelTimes {
    /// Records the start of a launch on `stream`: the pair to finish with
    /// [`KernelTimes::after`], or `None` if this launch goes untimed.
    pub(crate) fn before(&mut self, d: &Runtime, stream: Handle) -> Option<(Handle, Handle)> {
        self.collect(d);
        let all: usize = self.pending.values().map(VecDeque::len).sum();
        if all >= MAX_PENDING_ALL
            || self
                .pending
                .get(&(stream as usize))
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
        // SAFETY: an event of this session and a stream it checked.
        if unsafe { (d.hipEventRecord)(start, stream) } != HIP_SUCCESS {
            self.pool.extend([start, end]);
            self.untimed(1);
            return None;
        }
        Some((start, end))
    }

    /// Ends a launch's timing: its end event recorded if it was launched.
    pub(crate) fn after(
        &mut self,
        d: &Runtime,
        stream: Handle,
        pair: (Handle, Handle),
        launched: bool,
    ) {
        // SAFETY: as in `before`.
        if launched && unsafe { (d.hipEventRecord)(pair.1, stream) } == HIP_SUCCESS {
            self.pending
                .entry(stream as usize)
                .or_default()
                .push_back(pair);
        } else {
            self.pool.extend([pair.0, pair.1]);
        }
    }

    /// Reads the launches that have completed, each stream's oldest first,
    /// without waiting: the nanoseconds of all launches read so far.
    pub(crate) fn collect(&mut self, d: &Runtime) -> u64 {
        for queue in self.pending.values_mut() {
            while let Some(&(start, end)) = queue.front() {
                // SAFETY: an event of this session, recorded.
                match unsafe { (d.hipEventQuery)(end) } {
                    HIP_ERROR_NOT_READY => break,
                    HIP_SUCCESS => self.busy_ns += elapsed_ns(d, start, end),
                    // A failed launch or a broken device: this one is not counted.
                    _ => {}
                }
                queue.pop_front();
                self.pool.extend([start, end]);
            }
        }
        self.pending.retain(|_, queue| !queue.is_empty());
        self.busy_ns
    }

    /// Destroys every event (the session is ending; its work is done or failed).
    pub(crate) fn destroy(&mut self, d: &Runtime) {
        self.collect(d);
        let pending: Vec<Handle> = self
            .pending
            .drain()
            .flat_map(|(_, queue)| queue.into_iter().flat_map(|(a, b)| [a, b]))
            .collect();
        for event in self.pool.drain(..).chain(pending) {
            // SAFETY: an event of this session, destroyed once.
            unsafe { (d.hipEventDestroy)(event) };
        }
    }

    fn event(&mut self, d: &Runtime) -> Option<Handle> {
        if let Some(event) = self.pool.pop() {
            return Some(event);
        }
        let mut event: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer; the session's device is current. Flags 0: a
        // timing event.
        if unsafe { (d.hipEventCreateWithFlags)(&mut event, 0) } == HIP_SUCCESS {
            Some(event)
        } else {
            self.untimed(1);
            None
        }
    }

    fn untimed(&mut self, n: u64) {
        if self.untimed == 0 {
            tracing::warn!("a launch went untimed (its busy time is not counted): too many launches wait to be read, or no event could be made");
        }
        self.untimed += n;
    }
}

/// Nanoseconds between two completed timing events (0 if the runtime cannot say).
fn elapsed_ns(d: &Runtime, start: Handle, end: Handle) -> u64 {
    let mut ms = 0f32;
    // SAFETY: two completed timing events of this session.
    let r = unsafe { (d.hipEventElapsedTime)(&mut ms, start, end) };
    if r == HIP_SUCCESS && ms.is_finite() && ms > 0.0 {
        (f64::from(ms) * 1e6) as u64
    } else {
        0
    }
}
