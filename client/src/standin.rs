//! The one connection of a stand-in library loaded into a program (the HIP and
//! CANN stand-ins): opened at the first call that needs it, closed politely at
//! exit, and the device ranges it holds, kept out of the program's own memory.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::ranges::{self, DeviceRanges};
use crate::Connection;

/// A library's connection; one `static` per library.
pub struct Standin {
    /// `None`: it could not be opened (said once, on stderr).
    connection: OnceLock<Option<Connection>>,
    /// Set once the process is exiting: clean-up then talks to no server.
    exiting: AtomicBool,
    ranges: OnceLock<DeviceRanges>,
}

impl Standin {
    pub const fn new() -> Self {
        Standin {
            connection: OnceLock::new(),
            exiting: AtomicBool::new(false),
            ranges: OnceLock::new(),
        }
    }

    /// The connection, opened at the first call; once it is open, `at_exit`
    /// (which calls [`Standin::begin_exit`] and closes what it gives) is
    /// registered with `atexit`. `None`: no server could be reached.
    pub fn connection(&self, at_exit: extern "C" fn()) -> Option<&Connection> {
        self.connection
            .get_or_init(|| match Connection::open_from_env() {
                Ok(c) => {
                    // SAFETY: a plain extern "C" function with no captured state.
                    unsafe { libc::atexit(at_exit) };
                    Some(c)
                }
                Err(e) => {
                    // Not eprintln!: a closed stderr is no reason to panic.
                    let _ = writeln!(std::io::stderr(), "xpupool: no device: {e:#}");
                    None
                }
            })
            .as_ref()
    }

    /// The process is exiting: from now on clean-up talks to no server. The
    /// connection, if one was opened, for the caller to close.
    pub fn begin_exit(&self) -> Option<&Connection> {
        self.exiting.store(true, Ordering::Release);
        self.connection.get().and_then(Option::as_ref)
    }

    /// Whether the process is exiting.
    pub fn exiting(&self) -> bool {
        self.exiting.load(Ordering::Acquire)
    }

    /// The connection if a call has opened it and the process is not exiting:
    /// what clean-up uses, which must not open one.
    pub fn opened(&self) -> Option<&Connection> {
        if self.exiting() {
            return None;
        }
        self.connection.get().and_then(Option::as_ref)
    }

    /// The device ranges this process holds on `c`'s server (how a pointer is
    /// told to be the device's, and which frees are of allocations).
    pub fn ranges(&self, c: &Connection) -> &DeviceRanges {
        self.ranges
            .get_or_init(|| ranges::for_server(c.welcome.device_address_range))
    }
}

impl Default for Standin {
    fn default() -> Self {
        Self::new()
    }
}
