//! PTX parser and CPU interpreter for the xpupool mock backend.
//!
//! On machines without a GPU the server's mock backend still has to run the
//! kernels that applications launch. This crate takes the PTX text that nvcc
//! embeds in a fatbinary, parses it ([`parse_module`]), decodes every kernel
//! (and the `.func`s it calls) once into a compact instruction form, and runs
//! launches on the CPU ([`launch`]).
//!
//! # Model
//!
//! * Global and constant memory belong to the caller and are reached through
//!   the [`Memory`] trait (one translation per access; failures become
//!   [`ExecError::IllegalAddress`]). Atomics on that memory are real atomics,
//!   because blocks run concurrently on several OS threads.
//! * Shared memory (per block), local memory and `.param` scratch space (per
//!   thread) are owned by the interpreter. Generic addresses that point into
//!   shared, local or kernel-parameter space live in fixed high windows (see
//!   [`SHARED_WINDOW`], [`LOCAL_WINDOW`], [`PARAM_WINDOW`]); every other generic
//!   address is a device address.
//! * A block runs on one OS thread. Each CUDA thread has its own register file
//!   and program counter and runs until it exits or reaches a barrier or a
//!   warp-synchronous instruction (`shfl`, `vote`, `activemask`, ...); those are
//!   released once all participating threads have arrived, so divergent
//!   control flow behaves like on hardware for race-free kernels.
//! * A kernel that uses an instruction the interpreter cannot run still parses;
//!   its [`KernelInfo::unsupported`] says why and [`launch`] refuses it.

mod access;
mod builtins;
mod decode;
mod exec;
mod insts;
mod ir;
mod lexer;
mod link;
mod mem;
mod ops;
mod parser;
mod tex;
mod warp;
mod wmma;

use std::fmt;
use std::sync::Arc;

pub use mem::{LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
pub use tex::{AddressMode, ChannelKind, Texture};

/// Errors from [`parse_module`]: the PTX text is structurally malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Syntax error at a source line.
    #[error("PTX syntax error at line {line}: {msg}")]
    Syntax { line: u32, msg: String },
    /// A symbol is defined twice at module scope.
    #[error("duplicate definition of `{name}` at line {line}")]
    Duplicate { name: String, line: u32 },
}

/// Errors from [`launch`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// Out-of-bounds or unmapped memory access.
    #[error(
        "illegal address {addr:#x} ({len} bytes, {space} space) in `{kernel}` at PTX line {line}"
    )]
    IllegalAddress {
        addr: u64,
        len: usize,
        space: &'static str,
        kernel: String,
        line: u32,
    },
    /// Access whose address is not a multiple of its size (atomics, vectors).
    #[error("misaligned address {addr:#x} ({len} bytes) in `{kernel}` at PTX line {line}")]
    MisalignedAddress {
        addr: u64,
        len: usize,
        kernel: String,
        line: u32,
    },
    /// The kernel (or a function it calls) uses something the interpreter cannot run.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Bad launch configuration or parameter buffer.
    #[error("invalid launch: {0}")]
    InvalidLaunch(String),
    /// A thread executed `trap` (e.g. `__trap()`).
    #[error("kernel executed trap")]
    Trap,
    /// A device-side `assert` failed (the message is as CUDA prints it).
    #[error("device assertion failed: {0}")]
    AssertFailed(String),
    /// No kernel of that name in the module.
    #[error("no kernel named `{0}` in module")]
    KernelNotFound(String),
    /// Threads wait on a barrier or warp operation that can never complete.
    #[error("deadlock: {0}")]
    Deadlock(String),
    /// The kernel was still running at the launch's deadline.
    #[error("{0}: still running after its time limit")]
    TimedOut(String),
}

/// Layout of one kernel parameter inside the packed parameter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamInfo {
    pub offset: usize,
    pub size: usize,
    pub align: usize,
}

/// Static information about one `.entry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// The (mangled) `.entry` name.
    pub name: String,
    /// Parameters in declaration order.
    pub params: Vec<ParamInfo>,
    /// End of the last parameter.
    pub param_bytes: usize,
    /// Static shared memory used by the kernel and the functions it calls.
    pub static_shared_bytes: usize,
    /// Per-thread local memory (kernel and called functions).
    pub local_bytes: usize,
    /// From `.maxntid` / `.reqntid` (product of the dimensions).
    pub max_threads_per_block: Option<u32>,
    /// `Some(reason)` if the interpreter cannot run this kernel.
    pub unsupported: Option<String>,
    /// Whether it (or a function it calls) uses device `malloc` or `free`: its
    /// launches need a device heap ([`Memory::heap_alloc`]).
    pub uses_heap: bool,
}

/// State space of a module-scope variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    Global,
    Const,
}

/// A module-scope `.global` or `.const` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalVar {
    pub name: String,
    pub space: Space,
    pub size: usize,
    pub align: usize,
    /// Initial contents, at most `size` bytes: what the initializer gives; the
    /// bytes past them (all of them without one) are zero.
    pub init: Vec<u8>,
    /// 8-byte addresses to write once the module's variables are placed:
    /// (byte offset, symbol), the symbol a variable of the module or a
    /// function ([`Module::function_address`]), as a vtable holds them.
    pub relocs: Vec<(usize, String)>,
}

/// What a function's address is, to the interpreter: this tag and the
/// function's number in its module. Calls through such a value (function
/// pointers, virtual functions) go to that function.
pub const FUNCTION_ADDRESS_TAG: u64 = 0xF0F0_0000_0000_0000;

/// A parsed PTX module.
#[derive(Clone)]
pub struct Module {
    kernels: Vec<KernelInfo>,
    globals: Vec<GlobalVar>,
    progs: Vec<Arc<ir::Prog>>,
    /// Kernel name → index (libraries' modules hold thousands of kernels).
    by_name: std::collections::HashMap<String, usize>,
    /// Functions whose address the module takes, by name: their addresses.
    function_addresses: std::collections::HashMap<String, u64>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("kernels", &self.kernels)
            .field("globals", &self.globals)
            .finish_non_exhaustive()
    }
}

impl Module {
    /// Looks up a kernel by its `.entry` name.
    pub fn kernel(&self, name: &str) -> Option<&KernelInfo> {
        self.by_name.get(name).map(|&i| &self.kernels[i])
    }

    /// All kernels, in source order.
    pub fn kernels(&self) -> &[KernelInfo] {
        &self.kernels
    }

    /// Module-scope `.global` and `.const` variables, in source order.
    /// The address of function `name` as the module's code and vtables hold
    /// it, if the module takes its address.
    pub fn function_address(&self, name: &str) -> Option<u64> {
        self.function_addresses.get(name).copied()
    }

    pub fn globals(&self) -> &[GlobalVar] {
        &self.globals
    }

    fn prog(&self, name: &str) -> Option<(&KernelInfo, &ir::Prog)> {
        let &i = self.by_name.get(name)?;
        Some((&self.kernels[i], &self.progs[i]))
    }
}

/// Device (global/const) memory of the caller. Addresses are 64-bit device addresses.
pub trait Memory: Sync {
    /// Host pointer for `[addr, addr+len)` if the whole range lies in one live
    /// allocation, else `None`.
    fn translate(&self, addr: u64, len: usize) -> Option<*mut u8>;

    /// Device `malloc`: the address of `size` bytes of the device heap, or 0
    /// when it has no room (as on a device). Without a heap, always 0.
    fn heap_alloc(&self, _size: u64) -> u64 {
        0
    }

    /// Device `free` of what [`Memory::heap_alloc`] gave; `false` for an address
    /// it did not give (or gave and took back already).
    fn heap_free(&self, _address: u64) -> bool {
        false
    }

    /// The texture object `handle` names (`tex`), if any.
    fn texture(&self, _handle: u64) -> Option<Texture> {
        None
    }

    /// The surface object `handle` names (`suld`, `sust`), if any.
    fn surface(&self, _handle: u64) -> Option<Texture> {
        None
    }
}

/// Launch configuration.
pub struct Launch<'a> {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
    /// Packed parameter buffer, laid out as [`KernelInfo::params`].
    pub params: &'a [u8],
    /// Device address of a module-scope `.global`/`.const` variable.
    pub symbols: &'a (dyn Fn(&str) -> Option<u64> + Sync),
    /// OS threads to spread blocks over (at least 1).
    pub workers: usize,
    /// Called by a worker before each block it runs: where a scheduler may pause
    /// the kernel for another (it returns when the kernel may go on).
    pub between_blocks: Option<&'a (dyn Fn() + Sync)>,
    /// For a cooperative launch, the device address of its grid-sync workspace
    /// (8 zeroed bytes, read through `%envreg1`/`%envreg2`): every block then runs
    /// at once, each on a thread of its own, so blocks waiting for each other at
    /// a grid-wide barrier all get there. 0 for an ordinary launch (a grid sync
    /// in it traps, as on a device).
    pub grid_workspace: u64,
    /// When the launch gives up: a kernel still running then fails with
    /// [`ExecError::TimedOut`], as a device's watchdog would end it (checked
    /// between blocks and as a block's threads take turns). `None`: never.
    pub deadline: Option<std::time::Instant>,
}

/// Parses PTX text. Kernels using unsupported features are still listed (with
/// [`KernelInfo::unsupported`] set); only malformed text is an error.
pub fn parse_module(src: &str) -> Result<Module, ParseError> {
    let pm = parser::parse(src)?;
    link::build_module(&pm)
}

/// Runs `kernel` to completion on the CPU.
pub fn launch(
    module: &Module,
    kernel: &str,
    launch: &Launch<'_>,
    mem: &dyn Memory,
) -> Result<(), ExecError> {
    let (info, prog) = module
        .prog(kernel)
        .ok_or_else(|| ExecError::KernelNotFound(kernel.to_string()))?;
    exec::run(info, prog, launch, mem)
}
