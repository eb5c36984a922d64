//! The hip backend's kernel timing ([`crate::timing`]) on the runtime's events.

use super::runtime::{Handle, Runtime, HIP_ERROR_NOT_READY, HIP_SUCCESS};
use crate::timing::TimingEvents;

/// One session's kernel timing.
pub(crate) type KernelTimes = crate::timing::KernelTimes<Runtime>;

impl TimingEvents for Runtime {
    type Event = Handle;
    type Stream = Handle;

    fn create_event(&self) -> Option<Handle> {
        let mut event: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer; the session's device is current. Flags 0: a
        // timing event.
        (unsafe { (self.hipEventCreateWithFlags)(&mut event, 0) } == HIP_SUCCESS).then_some(event)
    }

    fn record_event(&self, event: Handle, stream: Handle) -> bool {
        // SAFETY: an event of this session and a stream it checked.
        unsafe { (self.hipEventRecord)(event, stream) == HIP_SUCCESS }
    }

    fn event_done(&self, event: Handle) -> Option<bool> {
        // SAFETY: an event of this session, recorded.
        match unsafe { (self.hipEventQuery)(event) } {
            HIP_SUCCESS => Some(true),
            HIP_ERROR_NOT_READY => Some(false),
            _ => None,
        }
    }

    fn elapsed_ms(&self, start: Handle, end: Handle) -> Option<f32> {
        let mut ms = 0f32;
        // SAFETY: two completed timing events of this session.
        (unsafe { (self.hipEventElapsedTime)(&mut ms, start, end) } == HIP_SUCCESS).then_some(ms)
    }

    fn destroy_event(&self, event: Handle) {
        // SAFETY: an event of this session, destroyed once.
        unsafe { (self.hipEventDestroy)(event) };
    }

    fn stream_key(stream: Handle) -> usize {
        stream as usize
    }
}
