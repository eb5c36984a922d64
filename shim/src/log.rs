//! Logging of the shim, to stderr, filtered by `XPUPOOL_LOG` (default: warnings).
//! Warnings and errors also go to the callbacks an application registers with
//! `cuLogsRegisterCallback`, as the driver's own log messages do.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use xpupool_cuda_types::*;

use crate::boundary::{export, put};
use crate::state::lock;

struct Callback {
    id: usize,
    function: unsafe extern "C" fn(*mut c_void, CUlogLevel, *mut std::ffi::c_char, usize),
    data: usize,
}

static CALLBACKS: Mutex<Vec<Callback>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Forwards warnings and errors to the registered callbacks.
struct Callbacks;

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for Callbacks {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => CU_LOG_LEVEL_ERROR,
            Level::WARN => CU_LOG_LEVEL_WARNING,
            _ => return,
        };
        let callbacks: Vec<(usize, usize)> = lock(&CALLBACKS)
            .iter()
            .map(|c| (c.function as usize, c.data))
            .collect();
        if callbacks.is_empty() {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let mut text = format!("xpupool: {}\0", message.0).into_bytes();
        for (function, data) in callbacks {
            // SAFETY: registered by the application with this signature.
            let function: unsafe extern "C" fn(
                *mut c_void,
                CUlogLevel,
                *mut std::ffi::c_char,
                usize,
            ) = unsafe { std::mem::transmute(function) };
            // SAFETY: the message is NUL-terminated and lives across the call.
            unsafe {
                function(
                    data as *mut c_void,
                    level,
                    text.as_mut_ptr().cast(),
                    text.len() - 1,
                )
            };
        }
    }
}

pub(crate) fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("XPUPOOL_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(filter);
        let _ = tracing_subscriber::registry()
            .with(stderr)
            .with(Callbacks.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
            .try_init();
    });
}

export! {
    fn cuLogsRegisterCallback(function: CUlogsCallback, data: *mut c_void, out: *mut CUlogsCallbackHandle) {
        let function = function.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        init();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock(&CALLBACKS).push(Callback { id, function, data: data as usize });
        if !out.is_null() {
            put(out, id as CUlogsCallbackHandle)?;
        }
        Ok(())
    }

    fn cuLogsUnregisterCallback(handle: CUlogsCallbackHandle) {
        let mut callbacks = lock(&CALLBACKS);
        let before = callbacks.len();
        callbacks.retain(|c| c.id != handle as usize);
        if callbacks.len() == before {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    }
}
