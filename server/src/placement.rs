//! Where a session's things are, for a backend serving several devices through
//! a runtime with one current device per thread (HIP, ACL): each stream's and
//! event's device, each allocation's, and the devices the session has made
//! current, so each request can make the right device current first. Its
//! lookups are also where a stream or event handle is checked to be the
//! session's.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;

use crate::checks::{code, invalid_handle, CuError};

/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` (`hipStreamPerThread`): the
/// device's default stream here, as the null stream is (server threads are not
/// the client's, so a per-thread stream would differ at each request).
const STREAM_LEGACY: u64 = 1;
const STREAM_PER_THREAD: u64 = 2;

/// Streams, events and allocations by device, and the devices used.
#[derive(Default)]
pub(crate) struct Placement {
    /// Streams the session created: handle → device.
    pub(crate) streams: HashMap<u64, u32>,
    /// Events the session created: handle → device.
    pub(crate) events: HashMap<u64, u32>,
    /// Allocations (and mappings): base → device.
    pub(crate) homes: HashMap<u64, u32>,
    /// The devices made current so far, a bit each.
    used: Cell<u128>,
}

impl Placement {
    /// Notes that `device` was made current (its default stream may hold the
    /// session's work).
    pub(crate) fn note(&self, device: u32) {
        self.used
            .set(self.used.get() | 1u128.checked_shl(device).unwrap_or(0));
    }

    /// The devices made current so far (device 0 if none).
    pub(crate) fn used_devices(&self) -> Vec<u32> {
        let used: Vec<u32> = (0..128).filter(|d| self.used.get() >> d & 1 == 1).collect();
        if used.is_empty() {
            vec![0]
        } else {
            used
        }
    }

    /// The runtime's stream for a client stream handle: one of the session's,
    /// or the default stream (NULL).
    pub(crate) fn stream(&self, stream: u64) -> Result<*mut c_void, CuError> {
        match stream {
            0 | STREAM_LEGACY | STREAM_PER_THREAD => Ok(std::ptr::null_mut()),
            s if self.streams.contains_key(&s) => Ok(s as *mut c_void),
            s => Err(invalid_handle("stream", s)),
        }
    }

    /// The runtime's event for a client event handle, one of the session's.
    pub(crate) fn event(&self, event: u64) -> Result<*mut c_void, CuError> {
        self.event_device(event).map(|_| event as *mut c_void)
    }

    /// The device of one of the session's events.
    pub(crate) fn event_device(&self, event: u64) -> Result<u32, CuError> {
        self.events
            .get(&event)
            .copied()
            .ok_or_else(|| invalid_handle("event", event))
    }

    /// The devices whose work `stream` names: its own, or for a default stream
    /// every device the session used.
    pub(crate) fn stream_devices(&self, stream: u64) -> Vec<u32> {
        match self.streams.get(&stream) {
            Some(&device) => vec![device],
            None => self.used_devices(),
        }
    }

    /// The device a copy or memset in `stream` runs on: the stream's, or for a
    /// default stream `home`'s (the memory's).
    pub(crate) fn device_for(&self, stream: u64, home: impl FnOnce() -> u32) -> u32 {
        self.streams.get(&stream).copied().unwrap_or_else(home)
    }

    /// Refuses `stream` if it is another device's than `device`: what runs
    /// on a device (a kernel, an executor, an event) goes in a stream of that
    /// device or a default one. `what` says whose device it is, for the error.
    pub(crate) fn stream_on(
        &self,
        stream: u64,
        device: u32,
        what: impl FnOnce() -> String,
    ) -> Result<(), CuError> {
        match self.streams.get(&stream) {
            Some(&other) if other != device => Err(CuError::new(
                code::INVALID_HANDLE,
                format!("{}; stream {stream:#x} is device {other}'s", what()),
            )),
            _ => Ok(()),
        }
    }

    /// The device of the allocation among `ranges` (base → size) that
    /// `address` lies in, if any.
    pub(crate) fn home_in(&self, ranges: &BTreeMap<u64, u64>, address: u64) -> Option<u32> {
        ranges
            .range(..=address)
            .next_back()
            .filter(|(&base, &size)| address < base.saturating_add(size))
            .and_then(|(base, _)| self.homes.get(base))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_devices_and_homes() {
        let mut p = Placement::default();
        assert_eq!(p.used_devices(), [0], "device 0 before any");
        p.note(3);
        p.note(1);
        p.note(200); // past the bitset: ignored, never a panic
        assert_eq!(p.used_devices(), [1, 3]);
        p.streams.insert(0x5000, 2);
        p.events.insert(0x6000, 1);
        assert!(p.stream(0).unwrap().is_null() && p.stream(2).unwrap().is_null());
        assert_eq!(p.stream(0x5000).unwrap() as u64, 0x5000);
        assert!(p.stream(0x5001).is_err() && p.event(0x5000).is_err());
        assert_eq!(p.event_device(0x6000).unwrap(), 1);
        assert_eq!(p.stream_devices(0x5000), [2]);
        assert_eq!(p.stream_devices(0), [1, 3]);
        assert_eq!(p.device_for(0x5000, || 7), 2);
        assert_eq!(p.device_for(0, || 7), 7);
        assert!(
            p.stream_on(0x5000, 2, String::new).is_ok() && p.stream_on(0, 9, String::new).is_ok()
        );
        let e = p
            .stream_on(0x5000, 1, || "it is device 1's".into())
            .unwrap_err();
        assert_eq!(e.message, "it is device 1's; stream 0x5000 is device 2's");
        let ranges = BTreeMap::from([(0x1000, 0x100), (0x2000, 0x10)]);
        p.homes.insert(0x1000, 4);
        p.homes.insert(0x2000, 5);
        assert_eq!(p.home_in(&ranges, 0x10ff), Some(4));
        assert_eq!(p.home_in(&ranges, 0x1100), None);
        assert_eq!(p.home_in(&ranges, 0x2008), Some(5));
        assert_eq!(p.home_in(&ranges, 0xfff), None);
    }
}
