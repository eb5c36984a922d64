//! The cuda backend's kernel timing ([`crate::timing`]) on the driver's events.

use xpupool_cuda_types::{CUevent, CUstream, CUDA_ERROR_NOT_READY, CUDA_SUCCESS};

use super::driver::Driver;
use crate::timing::TimingEvents;

/// One session's kernel timing.
pub(crate) type KernelTimes = crate::timing::KernelTimes<Driver>;

impl TimingEvents for Driver {
    type Event = CUevent;
    type Stream = CUstream;

    fn create_event(&self) -> Option<CUevent> {
        let mut event: CUevent = std::ptr::null_mut();
        // SAFETY: an out-pointer; the session's context is current. Flags 0: a
        // timing event.
        (unsafe { (self.cuEventCreate)(&mut event, 0) } == CUDA_SUCCESS).then_some(event)
    }

    fn record_event(&self, event: CUevent, stream: CUstream) -> bool {
        // SAFETY: an event of this session and a stream it checked.
        unsafe { (self.cuEventRecord)(event, stream) == CUDA_SUCCESS }
    }

    fn event_done(&self, event: CUevent) -> Option<bool> {
        // SAFETY: an event of this session, recorded.
        match unsafe { (self.cuEventQuery)(event) } {
            CUDA_SUCCESS => Some(true),
            CUDA_ERROR_NOT_READY => Some(false),
            _ => None,
        }
    }

    fn elapsed_ms(&self, start: CUevent, end: CUevent) -> Option<f32> {
        // Driver::load made sure one of the two exists.
        let elapsed = self.cuEventElapsedTime_v2.or(self.cuEventElapsedTime)?;
        let mut ms = 0f32;
        // SAFETY: two completed timing events of this session.
        (unsafe { elapsed(&mut ms, start, end) } == CUDA_SUCCESS).then_some(ms)
    }

    fn destroy_event(&self, event: CUevent) {
        // SAFETY: an event of this session, destroyed once.
        unsafe { (self.cuEventDestroy_v2)(event) };
    }

    fn stream_key(stream: CUstream) -> usize {
        stream as usize
    }
}
