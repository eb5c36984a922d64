//! The forwarded operations, each declared once.
//!
//! Handles (`module`, `function`, `stream`, `event`) are the server's opaque `u64`s;
//! device pointers are the server's device addresses. Stream handles `0`, `1`
//! (`CU_STREAM_LEGACY`) and `2` (`CU_STREAM_PER_THREAD`) name the default streams.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::CuError;

/// Declares the API: one line per operation, `fn name(args) -> Ret = Variant;`.
///
/// Generates [`Request`], [`Reply`], the backend trait [`Api`], the server's
/// [`dispatch`], and the client's [`Calls`] with one typed method per operation.
macro_rules! declare_api {
    ($(
        $(#[$doc:meta])*
        fn $method:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $variant:ident;
    )*) => {
        /// One request on the wire.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub enum Request {
            $( $(#[$doc])* $variant { $($arg: $ty),* }, )*
        }

        /// The successful answer to a [`Request`], same variant name.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub enum Reply {
            $( $(#[$doc])* $variant($ret), )*
        }

        impl Request {
            /// The operation's name, for logs and metrics.
            pub fn name(&self) -> &'static str {
                match self { $( Request::$variant { .. } => stringify!($method), )* }
            }
        }

        /// What a server backend implements: one method per operation.
        #[allow(clippy::too_many_arguments)]
        pub trait Api {
            $( $(#[$doc])* fn $method(&mut self, $($arg: $ty),*) -> Result<$ret, CuError>; )*
        }

        /// Runs one request against a backend.
        pub fn dispatch<A: Api + ?Sized>(api: &mut A, request: Request) -> Result<Reply, CuError> {
            #[deny(unreachable_patterns)]
            match request {
                $( Request::$variant { $($arg),* } => api.$method($($arg),*).map(Reply::$variant), )*
            }
        }

        /// The client side: implement [`Calls::call`] (one round trip) and get a typed
        /// method per operation.
        #[allow(clippy::too_many_arguments)]
        pub trait Calls {
            /// Sends one request and waits for its reply.
            fn call(&self, request: Request) -> Result<Reply, CuError>;

            $(
                $(#[$doc])*
                fn $method(&self, $($arg: $ty),*) -> Result<$ret, CuError> {
                    match self.call(Request::$variant { $($arg),* })? {
                        Reply::$variant(value) => Ok(value),
                        other => Err(mismatched(stringify!($method), &other)),
                    }
                }
            )*
        }
    };
}

impl Request {
    /// Whether a client may send this operation without waiting for its reply,
    /// batched with others (docs/DESIGN.md §3.3): the driver itself reports its errors later,
    /// at a synchronising call (launches, copies from host memory, memsets), or the
    /// client checks its arguments before sending (event records, stream waits,
    /// event destruction and frees, whose handles and pointers it keeps). An error
    /// the server still finds is reported at the next synchronising call.
    pub fn completes_later(&self) -> bool {
        matches!(
            self,
            Request::LaunchKernel { .. }
                | Request::MemcpyHtoD { .. }
                | Request::MemcpyHtoDShared { .. }
                | Request::EventRecord { .. }
                | Request::StreamWaitEvent { .. }
                | Request::EventDestroy { .. }
                | Request::MemFree { .. }
                | Request::MemcpyDtoD { .. }
                | Request::Memset { .. }
                | Request::Memset2D { .. }
        )
    }

    /// Whether this operation waits for earlier work, so that an error of an earlier
    /// operation sent without waiting is reported by it.
    pub fn synchronizes(&self) -> bool {
        matches!(
            self,
            Request::Synchronize { .. }
                | Request::StreamSynchronize { .. }
                | Request::StreamQuery { .. }
                | Request::EventSynchronize { .. }
                | Request::EventQuery { .. }
                | Request::MemcpyDtoH { .. }
                | Request::MemcpyDtoHShared { .. }
        )
    }
}

/// What a backend answers to an operation only the server's transport layer handles.
pub fn transport_only(operation: &str) -> CuError {
    CuError::new(
        crate::code::INVALID_VALUE,
        format!("{operation} needs the connection's shared-memory region, which it does not have"),
    )
}

fn mismatched(method: &str, reply: &Reply) -> CuError {
    CuError::new(
        crate::code::UNKNOWN,
        format!("protocol error: {method} answered by {reply:?}"),
    )
}

/// Launch geometry and resources of one kernel launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchDims {
    /// Blocks per grid (x, y, z).
    pub grid: [u32; 3],
    /// Threads per block (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

/// What a loaded module contains, returned once at load so the client can answer
/// function and global look-ups locally.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// The module's handle.
    pub handle: u64,
    /// Every kernel in the module.
    pub functions: Vec<FunctionInfo>,
    /// Set when the server has no code it can run for this image (e.g. SASS for
    /// another device and no PTX): every function look-up then fails with
    /// `NO_BINARY_FOR_GPU`, naming the function and this reason.
    pub no_code: Option<String>,
}

/// One kernel of a loaded module.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// Mangled name.
    pub name: String,
    /// The function handle to launch.
    pub handle: u64,
    /// `(offset, size)` of each parameter in the packed buffer, in order.
    pub params: Vec<(u32, u32)>,
    /// Size of the packed parameter buffer.
    pub param_bytes: u32,
    /// Why the server cannot run it (the client answers `NO_BINARY_FOR_GPU`).
    pub unusable: Option<String>,
    /// `(CUfunction_attribute, value)` pairs.
    pub attributes: Vec<(u32, i32)>,
}

/// One module-scope variable (`__device__`, `__constant__`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GlobalInfo {
    /// Name as in the image.
    pub name: String,
    /// Device address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

declare_api! {
    /// Allocate device memory (`cuMemAlloc`); returns the device address.
    fn mem_alloc(device: u32, bytes: u64) -> u64 = MemAlloc;
    /// Free device memory (`cuMemFree`); the pointer must be an allocation's base.
    fn mem_free(ptr: u64) -> () = MemFree;
    /// Free and total device memory as this tenant sees it (`cuMemGetInfo`).
    fn mem_get_info(device: u32) -> (u64, u64) = MemGetInfo;
    /// Copy host bytes to the device, in stream order.
    fn memcpy_htod(dst: u64, data: ByteBuf, stream: u64) -> () = MemcpyHtoD;
    /// Copy device bytes to the host, in stream order; the reply carries them.
    fn memcpy_dtoh(src: u64, len: u64, stream: u64) -> ByteBuf = MemcpyDtoH;
    /// Copy `len` bytes at `offset` of the connection's shared-memory region
    /// ([`crate::region`]) to the device, in stream order. The server answers it
    /// itself; a backend never sees it.
    fn memcpy_htod_shared(dst: u64, offset: u64, len: u64, stream: u64) -> () = MemcpyHtoDShared;
    /// Copy device bytes into the shared-memory region at `offset`, in stream order;
    /// answered by the server itself, like [`Request::MemcpyHtoDShared`].
    fn memcpy_dtoh_shared(src: u64, offset: u64, len: u64, stream: u64) -> () = MemcpyDtoHShared;
    /// Copy between device ranges, in stream order.
    fn memcpy_dtod(dst: u64, src: u64, len: u64, stream: u64) -> () = MemcpyDtoD;
    /// Fill `count` elements of `elem_size` (1, 2 or 4) bytes with `value`, in stream order.
    fn memset(dst: u64, value: u32, elem_size: u8, count: u64, stream: u64) -> () = Memset;
    /// Fill a 2-D region: `height` rows of `width` elements, rows `pitch` bytes apart.
    fn memset_2d(dst: u64, pitch: u64, value: u32, elem_size: u8, width: u64, height: u64, stream: u64) -> () = Memset2D;
    /// Load the module image with this SHA-256 (of its wire bytes) if the server has
    /// it; `None` asks the client to upload it with `module_load`.
    fn module_load_cached(hash: [u8; 32]) -> Option<ModuleInfo> = ModuleLoadCached;
    /// Load a module image (as `xpupool_fatbin::Image::to_wire` encodes it).
    fn module_load(image: ByteBuf) -> ModuleInfo = ModuleLoad;
    /// Address and size of a module-scope variable (`cuModuleGetGlobal`).
    fn module_get_global(module: u64, name: String) -> GlobalInfo = ModuleGetGlobal;
    /// Unload a module and everything in it.
    fn module_unload(module: u64) -> () = ModuleUnload;
    /// Set a kernel attribute (`cuFuncSetAttribute`), e.g. its dynamic shared memory opt-in.
    fn function_set_attribute(function: u64, attribute: u32, value: i32) -> () = FunctionSetAttribute;
    /// Launch a kernel with its packed parameter buffer, in stream order.
    fn launch_kernel(function: u64, dims: LaunchDims, stream: u64, params: ByteBuf) -> () = LaunchKernel;
    /// Create a stream (`cuStreamCreate` flags).
    fn stream_create(flags: u32, priority: i32) -> u64 = StreamCreate;
    /// Destroy a stream once its work is done.
    fn stream_destroy(stream: u64) -> () = StreamDestroy;
    /// Wait until a stream's work is done.
    fn stream_synchronize(stream: u64) -> () = StreamSynchronize;
    /// Whether a stream's work is done (`NOT_READY` otherwise).
    fn stream_query(stream: u64) -> () = StreamQuery;
    /// Make a stream's later work wait for an event.
    fn stream_wait_event(stream: u64, event: u64, flags: u32) -> () = StreamWaitEvent;
    /// Create an event (`cuEventCreate` flags).
    fn event_create(flags: u32) -> u64 = EventCreate;
    /// Destroy an event.
    fn event_destroy(event: u64) -> () = EventDestroy;
    /// Record an event in a stream.
    fn event_record(event: u64, stream: u64) -> () = EventRecord;
    /// Wait for an event.
    fn event_synchronize(event: u64) -> () = EventSynchronize;
    /// Whether an event has happened (`NOT_READY` otherwise).
    fn event_query(event: u64) -> () = EventQuery;
    /// Milliseconds between two recorded events.
    fn event_elapsed_time(start: u64, end: u64) -> f32 = EventElapsedTime;
    /// Wait for all of this session's work (`cuCtxSynchronize`).
    fn synchronize() -> () = Synchronize;
}
