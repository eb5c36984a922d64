//! The forwarded operations, each declared once.
//!
//! Handles (`module`, `function`, `stream`, `event`) are the server's opaque `u64`s;
//! device pointers are the server's device addresses. Stream handles `0`, `1`
//! (`CU_STREAM_LEGACY`) and `2` (`CU_STREAM_PER_THREAD`) name the default streams.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::aclnn::{AclnnArg, AclnnPlan};
use crate::{code, CuError};

/// What a declaration says of its operation beyond its signature, so that no list
/// of operations is kept anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    /// Nothing special.
    pub const NONE: Flags = Flags(0);
    /// A client may send it without waiting for its reply, batched with others
    /// (docs/DESIGN.md §3.3): the driver itself reports its errors later, at a
    /// synchronising call (launches, copies from host memory, memsets), or the
    /// client checks its arguments before sending (event records, stream waits,
    /// event destruction and frees, whose handles and pointers it keeps). An error
    /// the server still finds is reported at the next synchronising call.
    pub const POSTED: Flags = Flags(1);
    /// It waits for earlier work, so an error of an earlier posted operation is
    /// reported by it.
    pub const SYNCS: Flags = Flags(2);
    /// It takes device memory: the server's ledger charges it before (or, for a
    /// footprint only the backend knows, as) it is made, and refuses an allocating
    /// operation it does not know how to charge.
    pub const ALLOCATES: Flags = Flags(4);
    /// It is answered by the server's tenancy layer, never by a backend.
    pub const SERVER: Flags = Flags(8);

    /// Both sets of flags.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Whether every flag of `other` is set.
    pub const fn has(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One declared operation, as [`OPERATIONS`] lists them.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// The method name (`mem_alloc`).
    pub name: &'static str,
    /// Its number on the wire.
    pub id: u32,
    /// What its declaration says.
    pub flags: Flags,
}

/// An argument of a request that names something of the session's, or carries
/// its bytes, as the declarations mark it ([`Request::for_each_arg`]).
#[derive(Debug)]
pub enum Arg<'a> {
    /// A device, as the client numbers them.
    Device(&'a mut u32),
    /// A device address.
    Address(&'a mut u64),
    /// A stream (0, 1 and 2 the default streams).
    Stream(&'a mut u64),
    /// A function.
    Function(&'a mut u64),
    /// Another handle: what it is a handle of, and it.
    Handle(&'static str, &'a mut u64),
    /// Bytes the request carries to the server.
    Data(&'a mut ByteBuf),
}

/// Whether no two operations have one wire id (checked as the API compiles).
const fn ids_are_unique(operations: &[Operation]) -> bool {
    let mut i = 0;
    while i < operations.len() {
        let mut j = i + 1;
        while j < operations.len() {
            if operations[i].id == operations[j].id {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

/// An operation's tag as it arrives: its wire id (binary encodings) or its
/// variant name (a trace's JSON).
struct WireId(u32);

impl<'de> Deserialize<'de> for WireId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Tag;
        impl serde::de::Visitor<'_> for Tag {
            type Value = WireId;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an operation's wire id or name")
            }

            fn visit_u64<E: serde::de::Error>(self, id: u64) -> Result<WireId, E> {
                u32::try_from(id)
                    .map(WireId)
                    .map_err(|_| E::custom(format_args!("no operation has wire id {id}")))
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<WireId, E> {
                WIRE_NAMES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|&(_, id)| WireId(id))
                    .ok_or_else(|| E::unknown_variant(name, VARIANTS))
            }
        }
        deserializer.deserialize_identifier(Tag)
    }
}

/// Declares the API: one line per operation, `fn name(args) -> Ret = Variant @ id;`,
/// optionally followed by its [`Flags`] in brackets: `= Variant @ 7 [POSTED];`.
/// `id` is the operation's number on the wire, for its request and its reply:
/// given once and never changed, so that adding an operation (anywhere in the
/// list) leaves every other one's encoding as it was. Two operations with one id
/// do not compile.
///
/// Generates [`Request`], [`Reply`] (and their encodings), the backend trait
/// [`Api`], the server's [`dispatch`], the client's [`Calls`] with one typed
/// method per operation, and [`OPERATIONS`].
macro_rules! declare_api {
    ($(
        $(#[$doc:meta])*
        fn $method:ident($($arg:ident: $ty:ty $(as $kind:ident $(($what:literal))?)?),* $(,)?) -> $ret:ty = $variant:ident @ $id:literal $([$($flag:ident),*])?;
    )*) => {
        /// One request on the wire.
        #[derive(Debug, Clone)]
        pub enum Request {
            $( $(#[$doc])* $variant { $($arg: $ty),* }, )*
        }

        /// The successful answer to a [`Request`], same variant name.
        #[derive(Debug, Clone)]
        pub enum Reply {
            $( $(#[$doc])* $variant($ret), )*
        }

        /// Every declared operation, in declaration order.
        pub const OPERATIONS: &[Operation] = &[
            $( Operation { name: stringify!($method), id: $id, flags: Flags::NONE $($(.with(Flags::$flag))*)? }, )*
        ];

        const _: () = assert!(ids_are_unique(OPERATIONS), "two operations share a wire id");

        /// Each operation's variant name and wire id, for decoding either.
        const WIRE_NAMES: &[(&str, u32)] = &[ $( (stringify!($variant), $id), )* ];

        /// The variant names, as serde wants them.
        const VARIANTS: &[&str] = &[ $( stringify!($variant), )* ];

        impl Serialize for Request {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStructVariant;
                match self {
                    $( Request::$variant { $($arg),* } => {
                        #[allow(unused_mut)]
                        let mut fields = serializer.serialize_struct_variant(
                            "Request",
                            $id,
                            stringify!($variant),
                            <[&str]>::len(&[$(stringify!($arg)),*]),
                        )?;
                        $( fields.serialize_field(stringify!($arg), $arg)?; )*
                        fields.end()
                    } )*
                }
            }
        }

        impl<'de> Deserialize<'de> for Request {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Requests;
                impl<'de> serde::de::Visitor<'de> for Requests {
                    type Value = Request;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a request")
                    }

                    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Request, A::Error> {
                        use serde::de::VariantAccess;
                        let (WireId(id), variant) = data.variant()?;
                        match id {
                            $( $id => {
                                struct Fields;
                                impl<'de> serde::de::Visitor<'de> for Fields {
                                    type Value = Request;

                                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                                        f.write_str(concat!("the fields of ", stringify!($variant)))
                                    }

                                    #[allow(unused_mut, unused_variables, unused_assignments)]
                                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Request, A::Error> {
                                        let mut index = 0;
                                        $(
                                            let $arg: $ty = seq
                                                .next_element()?
                                                .ok_or_else(|| serde::de::Error::invalid_length(index, &self))?;
                                            index += 1;
                                        )*
                                        Ok(Request::$variant { $($arg),* })
                                    }

                                    #[allow(unused_variables)]
                                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Request, A::Error> {
                                        $( let mut $arg: Option<$ty> = None; )*
                                        while let Some(key) = map.next_key::<String>()? {
                                            $(
                                                if key == stringify!($arg) {
                                                    if $arg.is_some() {
                                                        return Err(serde::de::Error::duplicate_field(stringify!($arg)));
                                                    }
                                                    $arg = Some(map.next_value()?);
                                                    continue;
                                                }
                                            )*
                                            map.next_value::<serde::de::IgnoredAny>()?;
                                        }
                                        Ok(Request::$variant {
                                            $( $arg: $arg.ok_or_else(|| serde::de::Error::missing_field(stringify!($arg)))?, )*
                                        })
                                    }
                                }
                                variant.struct_variant(&[$(stringify!($arg)),*], Fields)
                            } )*
                            other => Err(serde::de::Error::custom(format_args!("no operation has wire id {other}"))),
                        }
                    }
                }
                deserializer.deserialize_enum("Request", VARIANTS, Requests)
            }
        }

        impl Serialize for Reply {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( Reply::$variant(value) => {
                        serializer.serialize_newtype_variant("Reply", $id, stringify!($variant), value)
                    } )*
                }
            }
        }

        impl<'de> Deserialize<'de> for Reply {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Replies;
                impl<'de> serde::de::Visitor<'de> for Replies {
                    type Value = Reply;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a reply")
                    }

                    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Reply, A::Error> {
                        use serde::de::VariantAccess;
                        let (WireId(id), variant) = data.variant()?;
                        match id {
                            $( $id => variant.newtype_variant::<$ret>().map(Reply::$variant), )*
                            other => Err(serde::de::Error::custom(format_args!("no operation has wire id {other}"))),
                        }
                    }
                }
                deserializer.deserialize_enum("Reply", VARIANTS, Replies)
            }
        }

        impl Request {
            /// The operation's name, for logs and metrics.
            pub fn name(&self) -> &'static str {
                match self { $( Request::$variant { .. } => stringify!($method), )* }
            }

            /// The operation's number on the wire.
            pub fn wire_id(&self) -> u32 {
                match self { $( Request::$variant { .. } => $id, )* }
            }

            /// Calls `f` on each argument its declaration marks (`as Address`,
            /// `as Stream`, …), in order, to read or change it; stops at its
            /// first error. What lies inside other arguments (a texture's
            /// address, a graph's nodes) is not visited.
            #[allow(unused_variables)]
            pub fn for_each_arg<E>(&mut self, mut f: impl FnMut(Arg<'_>) -> Result<(), E>) -> Result<(), E> {
                match self {
                    $( Request::$variant { $($arg),* } => {
                        $($( f(Arg::$kind($($what,)? $arg))?; )?)*
                    } )*
                }
                Ok(())
            }

            /// What the operation's declaration says of it.
            pub fn flags(&self) -> Flags {
                match self { $( Request::$variant { .. } => Flags::NONE $($(.with(Flags::$flag))*)?, )* }
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
    /// Whether a client may send this operation without waiting for its reply
    /// ([`Flags::POSTED`]).
    pub fn completes_later(&self) -> bool {
        self.flags().has(Flags::POSTED)
    }

    /// Whether this operation waits for earlier work ([`Flags::SYNCS`]).
    pub fn synchronizes(&self) -> bool {
        self.flags().has(Flags::SYNCS)
    }

    /// Whether this operation takes device memory ([`Flags::ALLOCATES`]).
    pub fn allocates(&self) -> bool {
        self.flags().has(Flags::ALLOCATES)
    }
}

/// What a backend answers to an operation only the server's tenancy layer handles
/// ([`Flags::SERVER`]).
pub fn server_only(operation: &str) -> CuError {
    CuError::new(
        code::NOT_SUPPORTED,
        format!("{operation} is answered by the server, not a backend"),
    )
}

/// What a backend answers to an operation only the server's transport layer handles.
pub fn transport_only(operation: &str) -> CuError {
    CuError::new(
        code::INVALID_VALUE,
        format!("{operation} needs the connection's shared-memory region, which it does not have"),
    )
}

fn mismatched(method: &str, reply: &Reply) -> CuError {
    CuError::new(
        code::UNKNOWN,
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

/// Declares [`GraphNode`] from the stream operations a graph may hold, with the
/// conversions both ways: each node is its request's fields less the stream.
macro_rules! graph_nodes {
    ($(
        $(#[$doc:meta])*
        $node:ident = $request:ident { $( $(#[$fdoc:meta])* $field:ident: $ty:ty ),* $(,)? }
    ),* $(,)?) => {
        /// One node of a graph the server keeps ([`Request::GraphCreate`]): a
        /// stream's operation without its stream, which the graph's launch gives.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum GraphNode {
            $( $(#[$doc])* $node { $( $(#[$fdoc])* $field: $ty ),* }, )*
        }

        impl GraphNode {
            /// The node a request of a stream is, with its stream (`None` for a
            /// request no graph node can be).
            pub fn from_request(request: &Request) -> Option<(GraphNode, u64)> {
                match request.clone() {
                    $( Request::$request { stream, $($field),* } => {
                        Some((GraphNode::$node { $($field),* }, stream))
                    } )*
                    _ => None,
                }
            }

            /// The request that runs the node in `stream`.
            pub fn in_stream(&self, stream: u64) -> Request {
                match self.clone() {
                    $( GraphNode::$node { $($field),* } => Request::$request { stream, $($field),* }, )*
                }
            }
        }
    };
}

graph_nodes! {
    /// [`Request::LaunchKernel`].
    Kernel = LaunchKernel {
        /// The function.
        function: u64,
        /// Its geometry.
        dims: LaunchDims,
        /// Its packed parameters, as captured.
        params: ByteBuf,
    },
    /// [`Request::Memset`].
    Memset = Memset {
        /// Where.
        dst: u64,
        /// The element value.
        value: u32,
        /// 1, 2 or 4.
        elem_size: u8,
        /// Elements.
        count: u64,
    },
    /// [`Request::Memset2D`].
    Memset2D = Memset2D {
        /// Where.
        dst: u64,
        /// Bytes between rows.
        pitch: u64,
        /// The element value.
        value: u32,
        /// 1, 2 or 4.
        elem_size: u8,
        /// Elements per row.
        width: u64,
        /// Rows.
        height: u64,
    },
    /// [`Request::MemcpyDtoD`].
    CopyDtoD = MemcpyDtoD {
        /// To.
        dst: u64,
        /// From.
        src: u64,
        /// Bytes.
        len: u64,
    },
    /// [`Request::EventRecord`].
    EventRecord = EventRecord {
        /// The event.
        event: u64,
    },
    /// [`Request::StreamWaitEvent`].
    WaitEvent = StreamWaitEvent {
        /// The event.
        event: u64,
        /// Its flags.
        flags: u32,
    },
    /// [`Request::MemcpyArrayDevice`].
    CopyArrayDevice = MemcpyArrayDevice {
        /// The array.
        array: u64,
        /// Its box.
        region: ArrayBox,
        /// The device memory.
        ptr: u64,
        /// Its row pitch.
        pitch: u64,
        /// Its slice pitch.
        slice_pitch: u64,
        /// Into the array (else out of it).
        to_array: bool,
    },
    /// [`Request::MemcpyArrayArray`].
    CopyArrayArray = MemcpyArrayArray {
        /// The array copied into.
        dst: u64,
        /// Where in it.
        dst_at: [u64; 3],
        /// The array copied from.
        src: u64,
        /// Its box.
        region: ArrayBox,
    },
    /// [`Request::LaunchClustered`].
    ClusteredKernel = LaunchClustered {
        /// The function.
        function: u64,
        /// Its geometry.
        dims: LaunchDims,
        /// Blocks per cluster (x, y, z).
        cluster: [u32; 3],
        /// Its packed parameters, as captured.
        params: ByteBuf,
    },
}

/// Nodes of one graph the server keeps, at most ([`Request::GraphCreate`]).
pub const MAX_GRAPH_NODES: usize = 1 << 16;

/// The [`Api`] methods of the operations only the server answers
/// ([`Flags::SERVER`]), for a backend's implementation: each refuses with
/// [`server_only`].
#[macro_export]
macro_rules! server_only_operations {
    () => {
        fn device_usage(
            &mut self,
            _device: u32,
        ) -> Result<$crate::api::DeviceUsage, $crate::CuError> {
            Err($crate::api::server_only("device_usage"))
        }

        fn server_status(&mut self) -> Result<$crate::api::ServerStatus, $crate::CuError> {
            Err($crate::api::server_only("server_status"))
        }

        fn graph_create(
            &mut self,
            _nodes: Vec<$crate::api::GraphNode>,
        ) -> Result<u64, $crate::CuError> {
            Err($crate::api::server_only("graph_create"))
        }

        fn graph_launch(&mut self, _graph: u64, _stream: u64) -> Result<(), $crate::CuError> {
            Err($crate::api::server_only("graph_launch"))
        }

        fn graph_destroy(&mut self, _graph: u64) -> Result<(), $crate::CuError> {
            Err($crate::api::server_only("graph_destroy"))
        }
    };
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
    /// Device memory the loaded module takes (its code and variables) as the
    /// backend reports it: what the tenant's ledger is charged for it.
    #[serde(default)]
    pub device_bytes: u64,
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

/// A session's kernels as its backend measured them ([`Request::SessionBusy`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWork {
    /// Nanoseconds of device time of the launches that completed.
    pub busy_ns: u64,
    /// Launches that completed and were timed.
    pub completed: u64,
    /// Launches forwarded that have not completed (timed ones: a launch that
    /// went untimed is not counted anywhere).
    pub pending: u64,
}

/// How busy one device is and what one tenant holds on it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceUsage {
    /// Percent of the last second the device was running kernels (any tenant's).
    pub utilization_percent: u32,
    /// Device memory in use on it, all tenants together.
    pub memory_used: u64,
    /// This tenant's sessions on the device: client process id and bytes held.
    pub sessions: Vec<(u32, u64)>,
}

/// One tenant's figures on one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantFigures {
    /// The tenant.
    pub tenant: String,
    /// The device, as the server numbers it.
    pub device: u32,
    /// Device memory held now, and the limit (`None`: the device's).
    pub memory_used: u64,
    /// The tenant's limit on this device.
    pub memory_limit: Option<u64>,
    /// Seconds of device time its kernels took.
    pub busy_seconds: f64,
    /// Seconds its launches were held back for other tenants.
    pub throttled_seconds: f64,
    /// Kernel launches run.
    pub kernel_launches: u64,
    /// Allocations refused for its limit.
    pub oom: u64,
    /// Its share under contention.
    pub compute_share: f64,
}

/// One device as `xpupool status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceFigures {
    /// The device, as the server numbers it.
    pub device: u32,
    /// Its name and UUID.
    pub name: String,
    /// UUID as `GPU-…`.
    pub uuid: String,
    /// Memory in use, all tenants, and the device's total.
    pub memory_used: u64,
    /// The device's memory.
    pub memory_total: u64,
    /// Fraction of the last second it ran kernels.
    pub utilization: f64,
}

/// What `server_status` answers: the devices this tenant may use and its own
/// figures on them (other tenants' are the operator's, on the metrics endpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The backend.
    pub backend: String,
    /// Sessions open, this tenant's.
    pub sessions: u64,
    /// The devices.
    pub devices: Vec<DeviceFigures>,
    /// This tenant on each of them.
    pub tenants: Vec<TenantFigures>,
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
    fn mem_alloc(device: u32 as Device, bytes: u64) -> u64 = MemAlloc @ 0 [ALLOCATES];
    /// Free device memory (`cuMemFree`); the pointer must be an allocation's base.
    fn mem_free(ptr: u64 as Address) -> () = MemFree @ 1 [POSTED];
    /// Free and total device memory as this tenant sees it (`cuMemGetInfo`).
    fn mem_get_info(device: u32 as Device) -> (u64, u64) = MemGetInfo @ 2;
    /// Copy host bytes to the device, in stream order.
    fn memcpy_htod(dst: u64 as Address, data: ByteBuf as Data, stream: u64 as Stream) -> () = MemcpyHtoD @ 3 [POSTED];
    /// Copy device bytes to the host, in stream order; the reply carries them.
    fn memcpy_dtoh(src: u64 as Address, len: u64, stream: u64 as Stream) -> ByteBuf = MemcpyDtoH @ 4 [SYNCS];
    /// Copy `len` bytes at `offset` of the connection's shared-memory region
    /// ([`crate::region`]) to the device, in stream order. The server answers it
    /// itself; a backend never sees it.
    fn memcpy_htod_shared(dst: u64 as Address, offset: u64, len: u64, stream: u64 as Stream) -> () = MemcpyHtoDShared @ 5 [POSTED];
    /// Copy device bytes into the shared-memory region at `offset`, in stream order;
    /// answered by the server itself, like [`Request::MemcpyHtoDShared`].
    fn memcpy_dtoh_shared(src: u64 as Address, offset: u64, len: u64, stream: u64 as Stream) -> () = MemcpyDtoHShared @ 6 [SYNCS];
    /// Copy between device ranges, in stream order.
    fn memcpy_dtod(dst: u64 as Address, src: u64 as Address, len: u64, stream: u64 as Stream) -> () = MemcpyDtoD @ 7 [POSTED];
    /// Fill `count` elements of `elem_size` (1, 2 or 4) bytes with `value`, in stream order.
    fn memset(dst: u64 as Address, value: u32, elem_size: u8, count: u64, stream: u64 as Stream) -> () = Memset @ 8 [POSTED];
    /// Fill a 2-D region: `height` rows of `width` elements, rows `pitch` bytes apart.
    fn memset_2d(dst: u64 as Address, pitch: u64, value: u32, elem_size: u8, width: u64, height: u64, stream: u64 as Stream) -> () = Memset2D @ 9 [POSTED];
    /// Load the module image with this SHA-256 (of its wire bytes) onto `device` if
    /// the server has it; `None` asks the client to upload it with `module_load`.
    fn module_load_cached(device: u32 as Device, hash: [u8; 32]) -> Option<ModuleInfo> = ModuleLoadCached @ 10 [ALLOCATES];
    /// Load a module image (as `xpupool_fatbin::Image::to_wire` encodes it) onto `device`.
    fn module_load(device: u32 as Device, image: ByteBuf as Data) -> ModuleInfo = ModuleLoad @ 11 [ALLOCATES];
    /// Address and size of a module-scope variable (`cuModuleGetGlobal`).
    fn module_get_global(module: u64 as Handle("module"), name: String) -> GlobalInfo = ModuleGetGlobal @ 12;
    /// Unload a module and everything in it.
    fn module_unload(module: u64 as Handle("module")) -> () = ModuleUnload @ 13;
    /// Set a kernel attribute (`cuFuncSetAttribute`), e.g. its dynamic shared memory opt-in.
    fn function_set_attribute(function: u64 as Function, attribute: u32, value: i32) -> () = FunctionSetAttribute @ 14;
    /// Launch a kernel with its packed parameter buffer, in stream order.
    fn launch_kernel(function: u64 as Function, dims: LaunchDims, stream: u64 as Stream, params: ByteBuf as Data) -> () = LaunchKernel @ 15 [POSTED];
    /// Create a stream on `device` (`cuStreamCreate` flags).
    fn stream_create(device: u32 as Device, flags: u32, priority: i32) -> u64 = StreamCreate @ 16;
    /// Destroy a stream once its work is done.
    fn stream_destroy(stream: u64 as Stream) -> () = StreamDestroy @ 17;
    /// Wait until a stream's work is done.
    fn stream_synchronize(stream: u64 as Stream) -> () = StreamSynchronize @ 18 [SYNCS];
    /// Whether a stream's work is done (`NOT_READY` otherwise).
    fn stream_query(stream: u64 as Stream) -> () = StreamQuery @ 19 [SYNCS];
    /// Make a stream's later work wait for an event.
    fn stream_wait_event(stream: u64 as Stream, event: u64 as Handle("event"), flags: u32) -> () = StreamWaitEvent @ 20 [POSTED];
    /// Create an event on `device` (`cuEventCreate` flags).
    fn event_create(device: u32 as Device, flags: u32) -> u64 = EventCreate @ 21;
    /// Destroy an event.
    fn event_destroy(event: u64 as Handle("event")) -> () = EventDestroy @ 22 [POSTED];
    /// Record an event in a stream.
    fn event_record(event: u64 as Handle("event"), stream: u64 as Stream) -> () = EventRecord @ 23 [POSTED];
    /// Wait for an event.
    fn event_synchronize(event: u64 as Handle("event")) -> () = EventSynchronize @ 24 [SYNCS];
    /// Whether an event has happened (`NOT_READY` otherwise).
    fn event_query(event: u64 as Handle("event")) -> () = EventQuery @ 25 [SYNCS];
    /// Milliseconds between two recorded events.
    fn event_elapsed_time(start: u64 as Handle("event"), end: u64 as Handle("event")) -> f32 = EventElapsedTime @ 26;
    /// Wait for all of this session's work (`cuCtxSynchronize`).
    fn synchronize() -> () = Synchronize @ 27 [SYNCS];
    /// How busy `device` is and what this tenant's sessions hold on it, for NVML's
    /// utilisation and running-process queries.
    fn device_usage(device: u32 as Device) -> DeviceUsage = DeviceUsage @ 28 [SERVER];
    /// The server's figures this tenant may see (`xpupool status`).
    fn server_status() -> ServerStatus = ServerStatus @ 29 [SERVER];
    /// Keep a graph (captured or built by the client) on the server: its nodes
    /// run in order, in the launching stream, at each [`Request::GraphLaunch`].
    fn graph_create(nodes: Vec<GraphNode>) -> u64 = GraphCreate @ 30 [SERVER];
    /// Run a kept graph in `stream`: one request however many nodes it has.
    fn graph_launch(graph: u64 as Handle("graph"), stream: u64 as Stream) -> () = GraphLaunch @ 31 [POSTED, SERVER];
    /// Forget a kept graph.
    fn graph_destroy(graph: u64 as Handle("graph")) -> () = GraphDestroy @ 32 [POSTED, SERVER];
    /// Reserve `size` bytes of device addresses on `device` (`cuMemAddressReserve`),
    /// aligned to `alignment` (0: the granularity); returns the start. Nothing is
    /// allocated.
    fn mem_address_reserve(device: u32 as Device, size: u64, alignment: u64) -> u64 = MemAddressReserve @ 33;
    /// Give back a reservation with nothing mapped in it (`cuMemAddressFree`).
    fn mem_address_free(ptr: u64 as Address, size: u64) -> () = MemAddressFree @ 34;
    /// Allocate `size` bytes of physical memory on `device`, mapped nowhere yet
    /// (`cuMemCreate`); returns its handle.
    fn mem_create(device: u32 as Device, size: u64) -> u64 = MemCreate @ 35 [ALLOCATES];
    /// Release a physical allocation's handle (`cuMemRelease`): its memory goes
    /// once nothing maps it.
    fn mem_release(handle: u64 as Handle("physical allocation")) -> () = MemRelease @ 36;
    /// Map `[offset, offset+size)` of a physical allocation at `ptr`, inside a
    /// reservation (`cuMemMap`).
    fn mem_map(ptr: u64 as Address, size: u64, offset: u64, handle: u64 as Handle("physical allocation")) -> () = MemMap @ 37;
    /// Unmap the whole mappings in `[ptr, ptr+size)` (`cuMemUnmap`).
    fn mem_unmap(ptr: u64 as Address, size: u64) -> () = MemUnmap @ 38;
    /// Let `device` touch `[ptr, ptr+size)` (`flags`: 0 none, 1 read, 3 read and
    /// write; `cuMemSetAccess`).
    fn mem_set_access(ptr: u64 as Address, size: u64, device: u32 as Device, flags: u32) -> () = MemSetAccess @ 39;
    /// A handle another process of the same tenant on this server can open the
    /// allocation at `ptr` with (`cuIpcGetMemHandle`; [`IPC_HANDLE_BYTES`] bytes).
    fn ipc_get_mem_handle(ptr: u64 as Address) -> ByteBuf = IpcGetMemHandle @ 40;
    /// Open another process's allocation (`cuIpcOpenMemHandle`); returns its
    /// address here and its size.
    fn ipc_open_mem_handle(device: u32 as Device, handle: ByteBuf) -> (u64, u64) = IpcOpenMemHandle @ 41;
    /// Close an allocation opened with [`Request::IpcOpenMemHandle`].
    fn ipc_close_mem_handle(ptr: u64 as Address) -> () = IpcCloseMemHandle @ 42;
    /// A handle another process of the same tenant can open an interprocess
    /// event with (`cuIpcGetEventHandle`).
    fn ipc_get_event_handle(event: u64 as Handle("event")) -> ByteBuf = IpcGetEventHandle @ 43;
    /// Open another process's interprocess event (`cuIpcOpenEventHandle`).
    fn ipc_open_event_handle(device: u32 as Device, handle: ByteBuf) -> u64 = IpcOpenEventHandle @ 44;
    /// Launch a kernel whose blocks all run at once and may synchronise across
    /// the grid (`cuLaunchCooperativeKernel`); refused when the grid is larger
    /// than the device can hold at once.
    fn launch_cooperative(function: u64 as Function, dims: LaunchDims, stream: u64 as Stream, params: ByteBuf as Data) -> () = LaunchCooperative @ 45 [POSTED];
    /// Make a texture object over device memory (`cuTexObjectCreate`): its handle,
    /// which kernels pass to `tex`.
    fn tex_object_create(device: u32 as Device, desc: TextureDesc) -> u64 = TexObjectCreate @ 46;
    /// Destroy a texture object.
    fn tex_object_destroy(handle: u64 as Handle("texture object")) -> () = TexObjectDestroy @ 47;
    /// Make a surface object over device memory (`cuSurfObjectCreate`; the
    /// sampling fields of `desc` are unused).
    fn surf_object_create(device: u32 as Device, desc: TextureDesc) -> u64 = SurfObjectCreate @ 48;
    /// Destroy a surface object.
    fn surf_object_destroy(handle: u64 as Handle("surface object")) -> () = SurfObjectDestroy @ 49;
    /// Make a CUDA array on `device` (`cuArray3DCreate`): its handle. Texels are
    /// reached only through copies and texture and surface objects.
    fn array_create(device: u32 as Device, desc: ArrayDesc) -> u64 = ArrayCreate @ 50 [ALLOCATES];
    /// Destroy an array once the work sent before it is done.
    fn array_destroy(array: u64 as Handle("array")) -> () = ArrayDestroy @ 51;
    /// Copy host bytes (the box's rows one after another) into a box of an array,
    /// in stream order.
    fn memcpy_to_array(array: u64 as Handle("array"), region: ArrayBox, data: ByteBuf as Data, stream: u64 as Stream) -> () = MemcpyToArray @ 52 [POSTED];
    /// Copy a box of an array to the host, in stream order: its rows one after
    /// another.
    fn memcpy_from_array(array: u64 as Handle("array"), region: ArrayBox, stream: u64 as Stream) -> ByteBuf = MemcpyFromArray @ 53 [SYNCS];
    /// Copy between a box of an array and pitched device memory at `ptr` (rows
    /// `pitch` bytes apart, slices `slice_pitch`), into the array if `to_array`,
    /// in stream order.
    fn memcpy_array_device(array: u64 as Handle("array"), region: ArrayBox, ptr: u64 as Address, pitch: u64, slice_pitch: u64, to_array: bool, stream: u64 as Stream) -> () = MemcpyArrayDevice @ 54 [POSTED];
    /// Copy a box of array `src` to `dst_at` in array `dst`, in stream order.
    fn memcpy_array_array(dst: u64 as Handle("array"), dst_at: [u64; 3], src: u64 as Handle("array"), region: ArrayBox, stream: u64 as Stream) -> () = MemcpyArrayArray @ 55 [POSTED];
    /// Link inputs (`cuLinkAddData`: PTX, cubins, objects, libraries) for
    /// `device` with the driver's own linker (`cuLinkComplete`): the linked
    /// image, which a module load takes. At most [`MAX_LINK_INPUTS`] inputs.
    fn link(device: u32 as Device, inputs: Vec<LinkInput>) -> ByteBuf = Link @ 56;
    /// Launch a kernel in thread-block clusters of `cluster` blocks (x, y, z)
    /// (`cuLaunchKernelEx` with a cluster dimension; a device of compute
    /// capability 9.0 or newer). The grid is a whole number of clusters.
    fn launch_clustered(function: u64 as Function, dims: LaunchDims, cluster: [u32; 3], stream: u64 as Stream, params: ByteBuf as Data) -> () = LaunchClustered @ 57 [POSTED];
    /// The device time the session's kernels took so far, as far as the backend
    /// has measured (the cuda backend: events around each launch, read once they
    /// complete), and how many of its launches have not completed. The tenancy
    /// layer reads it for busy time and utilisation, and to pace launches under
    /// contention, where kernels run asynchronously; a backend whose kernels the
    /// server's scheduler times itself (the mock) refuses it.
    fn session_busy() -> SessionWork = SessionBusy @ 58;
    /// One of a function's attributes (`CU_FUNC_ATTRIBUTE_*` 0..=9) that its
    /// module's load did not report: with lazy loading, the device-dependent ones
    /// of a function not loaded yet, which the backend loads to answer.
    fn function_get_attribute(function: u64 as Function, attribute: u32) -> i32 = FunctionGetAttribute @ 59;

    // Ascend's own: what CANN has and CUDA and HIP have no counterpart for.
    // HIP's API maps onto the operations above; CUDA's and HIP's backends refuse
    // these (`checks::no_aclnn_methods!`).

    /// An aclnn operator's first phase (`aclnnXxxGetWorkspaceSize`): the server
    /// checks the operator and its parameters, and keeps an executor for the
    /// second phase; a backend without the operator refuses it (NOT_SUPPORTED,
    /// naming it).
    fn aclnn_prepare(device: u32 as Device, operator: String, args: Vec<AclnnArg>) -> AclnnPlan = AclnnPrepare @ 60;
    /// An aclnn operator's second phase (`aclnnXxx`): runs the executor, once, in
    /// a stream, with its workspace (device memory of the size the first phase
    /// asked).
    fn aclnn_run(executor: u64 as Handle("aclnn executor"), workspace: u64, workspace_size: u64, stream: u64 as Stream) -> () = AclnnRun @ 61 [POSTED];
    /// Drops an executor its second phase will not run (`aclDestroyAclOpExecutor`).
    fn aclnn_destroy(executor: u64 as Handle("aclnn executor")) -> () = AclnnDestroy @ 62 [POSTED];
    /// Launch `blocks` blocks of a kernel whose arguments are one byte string
    /// (ACL's `aclrtLaunchKernelWithHostArgs`, `rtKernelLaunch`), in stream
    /// order: the device takes a copy of `args` and, for each placeholder, writes
    /// at its `at` the device address of the copy's byte `data`
    /// ([`check_launch_args`] bounds both).
    fn launch_with_args(function: u64 as Function, blocks: u32, stream: u64 as Stream, args: ByteBuf as Data, placeholders: Vec<Placeholder>) -> () = LaunchWithArgs @ 63 [POSTED];
    /// Launch `blocks` blocks of a kernel whose arguments are already in device
    /// memory, `size` bytes at `args` (ACL's `aclrtLaunchKernel`), in stream
    /// order; at most [`MAX_LAUNCH_ARGS`] bytes, inside the session's memory.
    fn launch_with_device_args(function: u64 as Function, blocks: u32, stream: u64 as Stream, args: u64 as Address, size: u64) -> () = LaunchWithDeviceArgs @ 64 [POSTED];
}

/// Where a launch's argument string holds an address into itself
/// ([`Request::LaunchWithArgs`]), laid out as ACL's `aclrtPlaceHolderInfo`
/// (`addrOffset`, `dataOffset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct Placeholder {
    /// Byte of the arguments where the 8-byte address goes.
    pub at: u32,
    /// Byte of the arguments whose device address it is.
    pub data: u32,
}

/// Bytes of one [`Request::LaunchWithArgs`]'s or
/// [`Request::LaunchWithDeviceArgs`]'s arguments (tiling data included).
pub const MAX_LAUNCH_ARGS: usize = 1 << 20;
/// Placeholders one [`Request::LaunchWithArgs`] may have.
pub const MAX_PLACEHOLDERS: usize = 4096;

/// Refuses arguments or placeholders past the bounds above, and a placeholder
/// whose address would not fit in the arguments or that points past their end:
/// what the client checks before sending and every backend before launching
/// (CANN refuses the same with `ACL_ERROR_RT_PARAM_INVALID`).
pub fn check_launch_args(args: usize, placeholders: &[Placeholder]) -> Result<(), CuError> {
    let invalid = |what: String| Err(CuError::new(code::INVALID_VALUE, what));
    if args > MAX_LAUNCH_ARGS {
        return invalid(format!(
            "{args} bytes of kernel arguments (at most {MAX_LAUNCH_ARGS})"
        ));
    }
    if placeholders.len() > MAX_PLACEHOLDERS {
        return invalid(format!(
            "{} placeholders (at most {MAX_PLACEHOLDERS})",
            placeholders.len()
        ));
    }
    for p in placeholders {
        if p.at as usize + 8 > args || p.data as usize >= args {
            return invalid(format!(
                "placeholder at byte {} for byte {} of {args} bytes of arguments",
                p.at, p.data
            ));
        }
    }
    Ok(())
}

/// Refuses a [`Request::LaunchWithDeviceArgs`] of no blocks, or whose arguments
/// are empty or over [`MAX_LAUNCH_ARGS`] (their memory is the backend's to check).
pub fn check_device_args(blocks: u32, size: u64) -> Result<(), CuError> {
    if blocks == 0 || size == 0 || size > MAX_LAUNCH_ARGS as u64 {
        return Err(CuError::new(
            code::INVALID_VALUE,
            format!(
                "a launch of {blocks} blocks with {size} bytes of arguments (1 to {MAX_LAUNCH_ARGS})"
            ),
        ));
    }
    Ok(())
}

/// One input of [`Request::Link`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInput {
    /// `CUjitInputType`: 0 cubin, 1 PTX, 2 fatbin, 3 object, 4 library.
    pub kind: u32,
    pub data: ByteBuf,
}

/// Inputs one [`Request::Link`] may have.
pub const MAX_LINK_INPUTS: usize = 1024;

/// A CUDA array's shape and texels (`CUDA_ARRAY3D_DESCRIPTOR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayDesc {
    /// Texels in a row.
    pub width: u64,
    /// Rows (0 for a 1-D array).
    pub height: u64,
    /// Slices: depth, layers or faces (0 for neither).
    pub depth: u64,
    /// 0 unsigned integer, 1 signed integer, 2 float.
    pub channel: u8,
    /// Bits of each channel: 8, 16 or 32.
    pub bits: u8,
    /// Channels: 1, 2 or 4.
    pub channels: u8,
    /// `CUDA_ARRAY3D_*` flags (layered, surface load/store, cubemap, gather).
    pub flags: u32,
}

/// `CUDA_ARRAY3D_LAYERED`.
pub const ARRAY_LAYERED: u32 = 1;
/// `CUDA_ARRAY3D_SURFACE_LDST`.
pub const ARRAY_SURFACE_LDST: u32 = 2;
/// `CUDA_ARRAY3D_CUBEMAP`.
pub const ARRAY_CUBEMAP: u32 = 4;
/// `CUDA_ARRAY3D_TEXTURE_GATHER`.
pub const ARRAY_TEXTURE_GATHER: u32 = 8;
/// Rows of an array start this many bytes apart (at least), as pitched textures
/// over linear memory need on NVIDIA's devices.
pub const ARRAY_ROW_ALIGN: u64 = 128;
/// Texels along any one dimension of an array: the largest 1-D texture
/// NVIDIA's devices take (their 2-D and 3-D limits are smaller).
pub const MAX_ARRAY_EXTENT: u64 = 1 << 17;

impl ArrayDesc {
    /// Bytes of one texel.
    pub fn texel_bytes(&self) -> u64 {
        u64::from(self.bits / 8) * u64::from(self.channels)
    }

    /// Row bytes, rows and slices: the array's whole box (saturating, for a
    /// description not [`check`](Self::check)ed yet).
    pub fn extent(&self) -> [u64; 3] {
        [
            self.width.saturating_mul(self.texel_bytes()),
            self.height.max(1),
            self.depth.max(1),
        ]
    }

    /// Why the description cannot be, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let layered = self.flags & ARRAY_LAYERED != 0;
        let cubemap = self.flags & ARRAY_CUBEMAP != 0;
        let shape = if cubemap {
            self.width == self.height
                && self.depth != 0
                && self.depth.is_multiple_of(6)
                && (layered || self.depth == 6)
        } else if layered {
            self.depth != 0
        } else {
            self.height != 0 || self.depth == 0
        };
        if !matches!(self.bits, 8 | 16 | 32)
            || !matches!(self.channels, 1 | 2 | 4)
            || self.channel > 2
            || (self.channel == 2 && self.bits == 8)
            || self.flags
                & !(ARRAY_LAYERED | ARRAY_SURFACE_LDST | ARRAY_CUBEMAP | ARRAY_TEXTURE_GATHER)
                != 0
            || self.width == 0
            || !shape
            || [self.width, self.height, self.depth]
                .iter()
                .any(|&n| n > MAX_ARRAY_EXTENT)
        {
            return Err(format!("an array of {self:?}"));
        }
        Ok(())
    }

    /// Device memory the array takes: rows [`ARRAY_ROW_ALIGN`] bytes apart at
    /// least, slices one after another (what the mock lays out, and what the
    /// ledger charges on every backend).
    pub fn footprint(&self) -> Option<u64> {
        let [row, rows, slices] = self.extent();
        row.checked_next_multiple_of(ARRAY_ROW_ALIGN)?
            .checked_mul(rows)?
            .checked_mul(slices)
    }

    /// Whether `region` lies inside the array (`at` plus `extent` in each
    /// dimension, x in bytes, no dimension empty).
    pub fn holds(&self, region: &ArrayBox) -> bool {
        let whole = self.extent();
        region.extent.iter().all(|&n| n > 0)
            && (0..3).all(|k| {
                region.at[k]
                    .checked_add(region.extent[k])
                    .is_some_and(|end| end <= whole[k])
            })
    }
}

/// A box of an array: where it starts (x in bytes, row, slice) and how far it
/// reaches (bytes, rows, slices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayBox {
    pub at: [u64; 3],
    pub extent: [u64; 3],
}

impl ArrayBox {
    /// Bytes that the box spans in pitched memory (rows `pitch` bytes apart,
    /// slices `slice_pitch`), from its first byte to its last; `None` past the
    /// address space or for an empty box.
    pub fn linear_span(&self, pitch: u64, slice_pitch: u64) -> Option<u64> {
        let [width, rows, slices] = self.extent;
        (slices.checked_sub(1)?)
            .checked_mul(slice_pitch)?
            .checked_add(rows.checked_sub(1)?.checked_mul(pitch)?)?
            .checked_add(width)
    }

    /// Bytes in the box, if they can be counted.
    pub fn bytes(&self) -> Option<u64> {
        self.extent[0]
            .checked_mul(self.extent[1])?
            .checked_mul(self.extent[2])
    }
}

/// A texture or surface over device memory, as the client's arrays and linear
/// resources lay it out: texel (x, y, z) at `address + x * texel + y * pitch + z
/// * slice_pitch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextureDesc {
    /// Device address of texel (0, 0, 0).
    pub address: u64,
    /// 1, 2 or 3.
    pub dims: u8,
    /// Texels in each dimension (unused ones 1).
    pub size: [u64; 3],
    /// Bytes from one row to the next, and from one slice to the next.
    pub pitch: u64,
    pub slice_pitch: u64,
    /// 0 unsigned integer, 1 signed integer, 2 float.
    pub channel: u8,
    /// Bits of each channel: 8, 16 or 32.
    pub bits: u8,
    /// Channels: 1, 2 or 4.
    pub channels: u8,
    /// Per dimension: 0 wrap, 1 clamp, 2 mirror, 3 border (`CUaddress_mode`).
    pub address_mode: [u8; 3],
    /// Linear filtering (else point).
    pub linear: bool,
    /// Coordinates in `[0, 1)`.
    pub normalized_coords: bool,
    /// Integers read as normalised floats.
    pub read_normalized: bool,
    pub border: [f32; 4],
    /// `size[2]` layers of `dims` (1 or 2) dimensions, one slice each.
    pub layered: bool,
    /// Cubemaps: six square faces, one slice each (6 per layer when layered).
    pub cubemap: bool,
    /// The array ([`Request::ArrayCreate`]) whose texels these are, or 0 for
    /// linear memory at `address`. Over an array the server takes `address`,
    /// the pitches and the shape from the array itself.
    pub array: u64,
}

impl TextureDesc {
    /// Bytes of one texel.
    pub fn texel_bytes(&self) -> u64 {
        u64::from(self.bits / 8) * u64::from(self.channels)
    }

    /// Why the description cannot be, if it cannot; else the bytes it spans.
    pub fn span(&self) -> Result<u64, String> {
        if !(1..=3).contains(&self.dims)
            || !matches!(self.bits, 8 | 16 | 32)
            || !matches!(self.channels, 1 | 2 | 4)
            || self.channel > 2
            || (self.channel == 2 && self.bits == 8)
            || self.address_mode.iter().any(|&m| m > 3)
            || (self.layered && self.dims > 2)
            || (self.cubemap
                && (self.dims != 2
                    || self.size[0] != self.size[1]
                    || !self.size[2].is_multiple_of(6)
                    || (!self.layered && self.size[2] != 6)))
        {
            return Err(format!(
                "a texture of {} dimensions{}{} ({:?} texels), {} channels of {} bits (kind {})",
                self.dims,
                if self.layered { ", layered" } else { "" },
                if self.cubemap { ", cubemap" } else { "" },
                self.size,
                self.channels,
                self.bits,
                self.channel
            ));
        }
        let [w, h, d] = self.size;
        let row = w.checked_mul(self.texel_bytes()).ok_or("too wide")?;
        if w == 0
            || h == 0
            || d == 0
            || (h > 1 && row > self.pitch)
            || (d > 1
                && self
                    .pitch
                    .checked_mul(h)
                    .is_none_or(|p| p > self.slice_pitch))
        {
            return Err(format!(
                "a texture of {w}x{h}x{d} texels with pitches {} and {}",
                self.pitch, self.slice_pitch
            ));
        }
        (d - 1)
            .checked_mul(self.slice_pitch)
            .and_then(|s| {
                (h - 1)
                    .checked_mul(self.pitch)
                    .and_then(|p| p.checked_add(s))
            })
            .and_then(|o| o.checked_add(row))
            .ok_or_else(|| "a texture past the address space".to_owned())
    }
}

/// Bytes of an IPC handle (`CUipcMemHandle`, `CUipcEventHandle`).
pub const IPC_HANDLE_BYTES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn a_request_and_its_reply_carry_the_declared_wire_id() {
        let bytes = frame::encode(&Request::MemFree { ptr: 0x1234 }).unwrap();
        assert_eq!(bytes.len(), 4 + 4 + 8, "length, id, the pointer");
        assert_eq!(bytes[4..8], 1u32.to_le_bytes(), "mem_free is @ 1");
        assert_eq!(bytes[8..16], 0x1234u64.to_le_bytes());
        match frame::decode::<Request>(&bytes[4..]).unwrap() {
            Request::MemFree { ptr } => assert_eq!(ptr, 0x1234),
            other => panic!("decoded as {other:?}"),
        }
        let reply = frame::encode(&Reply::Link(ByteBuf::from(vec![7u8]))).unwrap();
        assert_eq!(reply[4..8], 56u32.to_le_bytes(), "link is @ 56");
        match frame::decode::<Reply>(&reply[4..]).unwrap() {
            Reply::Link(bytes) => assert_eq!(bytes.to_vec(), [7]),
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn the_marked_arguments_are_visited_by_kind_and_can_be_changed() {
        let mut request = Request::MemcpyArrayDevice {
            array: 10,
            region: ArrayBox {
                at: [0; 3],
                extent: [4, 1, 1],
            },
            ptr: 0x1000,
            pitch: 4,
            slice_pitch: 4,
            to_array: true,
            stream: 7,
        };
        let mut seen = Vec::new();
        request
            .for_each_arg(|arg| {
                seen.push(format!("{arg:?}"));
                match arg {
                    Arg::Address(a) => *a += 0x100,
                    Arg::Handle(_, h) => *h += 1,
                    Arg::Stream(s) => *s = 2,
                    _ => {}
                }
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(
            seen,
            ["Handle(\"array\", 10)", "Address(4096)", "Stream(7)"],
            "the pitches and the box are no handles"
        );
        assert!(matches!(
            request,
            Request::MemcpyArrayDevice {
                array: 11,
                ptr: 0x1100,
                stream: 2,
                pitch: 4,
                ..
            }
        ));
        // The first error stops the walk.
        let mut launch = Request::LaunchKernel {
            function: 1,
            dims: LaunchDims {
                grid: [1; 3],
                block: [1; 3],
                shared_bytes: 0,
            },
            stream: 0,
            params: ByteBuf::from(vec![1, 2]),
        };
        let mut visited = 0;
        let stopped = launch.for_each_arg(|arg| {
            visited += 1;
            match arg {
                Arg::Stream(_) => Err("no such stream"),
                _ => Ok(()),
            }
        });
        assert_eq!((stopped, visited), (Err("no such stream"), 2));
    }

    #[test]
    fn wire_ids_are_unique_and_a_repeated_one_is_caught() {
        assert!(ids_are_unique(OPERATIONS));
        let twice = [
            Operation {
                name: "a",
                id: 3,
                flags: Flags::NONE,
            },
            Operation {
                name: "b",
                id: 3,
                flags: Flags::POSTED,
            },
        ];
        assert!(!ids_are_unique(&twice));
        for op in OPERATIONS {
            assert!(WIRE_NAMES.iter().any(|&(_, id)| id == op.id), "{}", op.name);
        }
    }

    #[test]
    fn an_unknown_wire_id_or_a_short_body_is_refused() {
        let mut body = 999u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        let e = frame::decode::<Request>(&body).unwrap_err().to_string();
        assert!(e.contains("wire id 999"), "{e}");
        assert!(frame::decode::<Reply>(&body).is_err());
        // MemcpyDtoH (@ 4) wants three u64s.
        let mut short = 4u32.to_le_bytes().to_vec();
        short.extend_from_slice(&[0; 16]);
        assert!(frame::decode::<Request>(&short).is_err());
    }

    #[test]
    fn requests_and_replies_read_back_from_json_by_name() {
        let request = Request::MemcpyDtoH {
            src: 1,
            len: 2,
            stream: 3,
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(json, r#"{"MemcpyDtoH":{"src":1,"len":2,"stream":3}}"#);
        let reordered: Request =
            serde_json::from_str(r#"{"MemcpyDtoH":{"stream":3,"src":1,"len":2,"extra":0}}"#)
                .unwrap();
        assert!(matches!(
            reordered,
            Request::MemcpyDtoH {
                src: 1,
                len: 2,
                stream: 3
            }
        ));
        let missing = serde_json::from_str::<Request>(r#"{"MemcpyDtoH":{"src":1,"len":2}}"#)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("stream"), "{missing}");
        assert!(serde_json::from_str::<Request>(r#"{"NoSuchThing":{}}"#).is_err());
        let twice = serde_json::from_str::<Request>(r#"{"MemFree":{"ptr":1,"ptr":2}}"#)
            .unwrap_err()
            .to_string();
        assert!(twice.contains("duplicate field"), "{twice}");
        let none: Request = serde_json::from_str(r#"{"Synchronize":{}}"#).unwrap();
        assert!(matches!(none, Request::Synchronize {}));
        let reply: Reply =
            serde_json::from_str(&serde_json::to_string(&Reply::MemGetInfo((5, 6))).unwrap())
                .unwrap();
        assert!(matches!(reply, Reply::MemGetInfo((5, 6))));
    }
}
