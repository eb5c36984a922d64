//! The acl backend's timing of aclnn executions ([`crate::timing`]) on ACL's
//! time-line events.

use super::runtime::{Cann, Handle, ACL_SUCCESS, EVENT_COMPLETE, EVENT_TIME_LINE};
use crate::timing::TimingEvents;

/// One session's execution timing.
pub(crate) type KernelTimes = crate::timing::KernelTimes<Cann>;

impl TimingEvents for Cann {
    type Event = Handle;
    type Stream = Handle;

    fn create_event(&self) -> Option<Handle> {
        let mut event: Handle = std::ptr::null_mut();
        // SAFETY: an out-pointer; the session's context is current.
        let r = unsafe { (self.runtime.aclrtCreateEventWithFlag)(&mut event, EVENT_TIME_LINE) };
        (r == ACL_SUCCESS).then_some(event)
    }

    fn record_event(&self, event: Handle, stream: Handle) -> bool {
        // SAFETY: an event of this session and a stream it checked.
        unsafe { (self.runtime.aclrtRecordEvent)(event, stream) == ACL_SUCCESS }
    }

    fn event_done(&self, event: Handle) -> Option<bool> {
        let mut status = 0;
        // SAFETY: an event of this session, recorded; an out-pointer.
        let r = unsafe { (self.runtime.aclrtQueryEventStatus)(event, &mut status) };
        (r == ACL_SUCCESS).then_some(status == EVENT_COMPLETE)
    }

    fn elapsed_ms(&self, start: Handle, end: Handle) -> Option<f32> {
        let mut ms = 0f32;
        // SAFETY: two completed time-line events of this session.
        let r = unsafe { (self.runtime.aclrtEventElapsedTime)(&mut ms, start, end) };
        (r == ACL_SUCCESS).then_some(ms)
    }

    fn destroy_event(&self, event: Handle) {
        // SAFETY: an event of this session, destroyed once.
        unsafe { (self.runtime.aclrtDestroyEvent)(event) };
    }

    fn stream_key(stream: Handle) -> usize {
        stream as usize
    }
}
