//! Host functions in stream order. `aclrtLaunchCallback` queues a callback for
//! the thread a program subscribed to the stream (`aclrtSubscribeReport`); that
//! thread runs it from `aclrtProcessReport` once the stream's work before it is
//! done (an event recorded after that work, on the server, says when). Not
//! done: a blocking callback (`ACL_CALLBACK_BLOCK`) should hold back the
//! stream's later work on the device until it has run; here later work may run
//! first (waiting on the launching thread instead could deadlock a program that
//! holds a lock its callback takes). `aclrtLaunchHostFunc` runs its function
//! when the stream's work is done, on the calling thread, before anything
//! later is sent.

use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use xpupool_protocol::{code, Calls, Request};

use crate::runtime::{connection, device};
use crate::*;

/// `ACL_ERROR_RT_REPORT_TIMEOUT`: no callback came within the timeout.
const ACL_ERROR_RT_REPORT_TIMEOUT: AclError = 507_012;
/// `aclrtCallbackBlockType`.
const NO_BLOCK: i32 = 0;
const BLOCK: i32 = 1;
/// Callbacks that may wait for one thread.
const MAX_WAITING: usize = 65_536;
/// `CU_EVENT_DISABLE_TIMING`: the events only mark a place in a stream.
const NO_TIMING: u32 = 2;

/// `aclrtCallback` and `aclrtHostFunc`.
type Callback = unsafe extern "C" fn(*mut c_void);

struct Pending {
    /// Recorded in the stream after the work the callback follows.
    event: u64,
    f: Callback,
    data: usize,
}

#[derive(Default)]
struct State {
    /// Stream → the thread that runs its callbacks.
    subscribed: HashMap<u64, u64>,
    /// Thread → its callbacks, in launch order.
    queues: HashMap<u64, VecDeque<Pending>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    })
}

fn lock() -> MutexGuard<'static, State> {
    shared().state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calling thread's `pthread_t`, as programs pass it to `aclrtSubscribeReport`.
fn this_thread() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

fn invalid(why: impl Into<String>) -> Failure {
    Failure::new(ACL_ERROR_INVALID_PARAM, why)
}

#[no_mangle]
pub extern "C" fn aclrtSubscribeReport(thread: u64, stream: *mut c_void) -> AclError {
    call(|| {
        let mut s = lock();
        match s.subscribed.get(&(stream as u64)) {
            Some(&t) if t != thread => Err(invalid("the stream already has a thread subscribed")),
            _ => {
                s.subscribed.insert(stream as u64, thread);
                Ok(())
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn aclrtUnSubscribeReport(thread: u64, stream: *mut c_void) -> AclError {
    call(|| {
        let mut s = lock();
        if s.subscribed.get(&(stream as u64)) != Some(&thread) {
            return Err(invalid("that thread is not subscribed to the stream"));
        }
        s.subscribed.remove(&(stream as u64));
        shared().changed.notify_all();
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn aclrtLaunchCallback(
    f: Option<Callback>,
    data: *mut c_void,
    block: i32,
    stream: *mut c_void,
) -> AclError {
    call(|| {
        let f = f.ok_or_else(|| invalid("a NULL callback"))?;
        if !matches!(block, NO_BLOCK | BLOCK) {
            return Err(invalid(format!("callback block type {block}")));
        }
        let thread = *lock().subscribed.get(&(stream as u64)).ok_or_else(|| {
            invalid("no thread is subscribed to the stream (aclrtSubscribeReport)")
        })?;
        let (c, d) = device()?;
        let event = c.event_create(d, NO_TIMING)?;
        c.post(Request::EventRecord {
            event,
            stream: stream as u64,
        })?;
        {
            let mut s = lock();
            let queue = s.queues.entry(thread).or_default();
            if queue.len() >= MAX_WAITING {
                drop(s);
                let _ = c.post(Request::EventDestroy { event });
                return Err(Failure::new(
                    ACL_ERROR_RT_MEMORY_ALLOCATION,
                    format!("{MAX_WAITING} callbacks wait for their thread (aclrtProcessReport)"),
                ));
            }
            queue.push_back(Pending {
                event,
                f,
                data: data as usize,
            });
        }
        shared().changed.notify_all();
        Ok(())
    })
}

/// Runs the oldest callback queued for `thread` once the work before it is
/// done, waiting until `deadline` (forever without): whether one ran. The
/// device is asked (`event_query`) every millisecond or so, so that no request
/// is held open while other threads of the program send theirs.
fn run_next(thread: u64, deadline: Option<Instant>) -> Result<bool, Failure> {
    let left = |d: Option<Instant>| match d {
        Some(d) => d
            .checked_duration_since(Instant::now())
            .filter(|l| !l.is_zero()),
        None => Some(Duration::from_secs(1)),
    };
    let next = {
        let mut s = lock();
        loop {
            if let Some(p) = s.queues.get_mut(&thread).and_then(VecDeque::pop_front) {
                break p;
            }
            let Some(wait) = left(deadline) else {
                return Ok(false);
            };
            s = shared()
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    };
    let c = connection()?;
    // The stream's work before it is done (or failed: then it does not run).
    let reached = loop {
        match c.event_query(next.event) {
            Ok(()) => break Ok(()),
            Err(e) if e.code == code::NOT_READY => {}
            Err(e) => break Err(e),
        }
        if left(deadline).is_none() {
            // Not yet: it stays first in line for the next call.
            lock().queues.entry(thread).or_default().push_front(next);
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = c.post(Request::EventDestroy { event: next.event });
    if reached.is_ok() {
        // SAFETY: the program's callback with its own argument, after the work
        // it follows, as ACL runs it.
        unsafe { (next.f)(next.data as *mut c_void) };
    }
    reached.map(|()| true).map_err(Failure::from)
}

#[no_mangle]
pub extern "C" fn aclrtProcessReport(timeout: i32) -> AclError {
    call(|| {
        let deadline = match timeout {
            -1 => None,
            t if t > 0 => Some(Instant::now() + Duration::from_millis(t as u64)),
            t => return Err(invalid(format!("a report timeout of {t} ms"))),
        };
        if run_next(this_thread(), deadline)? {
            Ok(())
        } else {
            Err(Failure::new(
                ACL_ERROR_RT_REPORT_TIMEOUT,
                "no callback came within the timeout",
            ))
        }
    })
}

/// # Safety
/// `f` may be called with `data` (ACL's contract).
#[no_mangle]
pub unsafe extern "C" fn aclrtLaunchHostFunc(
    stream: *mut c_void,
    f: Option<Callback>,
    data: *mut c_void,
) -> AclError {
    call(|| {
        let f = f.ok_or_else(|| invalid("a NULL host function"))?;
        connection()?.stream_synchronize(stream as u64)?;
        // SAFETY: the program's function with its own argument, once the work
        // before it in the stream is done and before anything later is sent.
        unsafe { f(data) };
        Ok(())
    })
}
