//! `cuGetExportTable`: the undocumented tables NVIDIA's runtime asks the driver for
//! (docs/FACTS-cuda-driver.md §3). The tables are statics: their addresses are part of
//! the integrity hash.

use std::ffi::c_void;
use std::sync::atomic::AtomicU32;

use xpupool_cuda_types::*;

use crate::boundary::{enter, put, Res};
use crate::integrity::{integrity_check, DeviceIdentity, IntegrityInput};
use crate::state::{self, driver, lock};

/// A table of pointer-sized slots.
#[repr(C)]
pub(crate) struct Table<const N: usize>([*const c_void; N]);
// SAFETY: the slots are immutable function pointers and integers.
unsafe impl<const N: usize> Sync for Table<N> {}

const fn size(slots: usize) -> *const c_void {
    (slots * 8) as *const c_void
}

macro_rules! slot {
    ($f:expr) => {
        $f as *const c_void
    };
}

const NULL: *const c_void = std::ptr::null();

const INTEGRITY_CHECK_ID: [u8; 16] = [
    0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2,
];
const TOOLS_TLS_ID: [u8; 16] = [
    0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec, 0xdc,
];
const CALLBACK_HOOKS_ID: [u8; 16] = [
    0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08, 0x00, 0x20, 0x0c, 0x0a, 0x66,
];
const CUDART_INTERFACE_ID: [u8; 16] = [
    0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9,
];
const CONTEXT_CHECKS_ID: [u8; 16] = [
    0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa, 0x7e,
];
const CLS_V0301_ID: [u8; 16] = [
    0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93,
];

static INTEGRITY_CHECK: Table<3> = Table([size(3), slot!(integrity_check_slot), NULL]);

static TOOLS_TLS: Table<4> = Table([
    size(4),
    slot!(noop),
    slot!(tools_tls_current_context),
    slot!(noop),
]);

static CALLBACK_HOOKS: Table<7> = Table([
    size(7),
    slot!(noop),
    slot!(hooks_buffer1),
    slot!(noop),
    slot!(noop),
    slot!(noop),
    slot!(hooks_buffer2),
]);

static CUDART_INTERFACE: Table<13> = Table([
    size(13),
    slot!(module_from_cubin),
    slot!(primary_context),
    NULL,
    NULL,
    NULL,
    slot!(module_from_cubin_ext1),
    slot!(noop_void),
    slot!(module_from_cubin_ext2),
    NULL,
    NULL,
    NULL,
    slot!(load_compilers),
]);

static CONTEXT_CHECKS: Table<4> = Table([
    size(4),
    slot!(noop),
    slot!(context_check),
    slot!(context_check_fn3),
]);

/// The table cuBLAS and cuBLASLt ask for (known elsewhere as the tools' context
/// table). Only slot 4 is known: the context's unique id. Without it cuBLASLt
/// finds no algorithm for any matrix product (`CUBLAS_STATUS_NOT_SUPPORTED` from
/// `cublasLtMatmulAlgoGetHeuristic`, seen through the cuda backend on an H100).
/// cuBLASLt 13.0 calls no other slot in a product; each of them logs its
/// arguments once and refuses, so the next one a library needs is found.
const TOOLS_CONTEXT_ID: [u8; 16] = [
    0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2,
];

/// Slot 4 of TOOLS_CONTEXT: `(ctx, *out)` writes the context's unique id, as
/// `cuCtxGetId`; for NULL, 0 (as driver 580 answers, not the current context's).
unsafe extern "C" fn tools_context_id(ctx: CUcontext, out: *mut u64) -> CUresult {
    enter("tools_context_id", || {
        if ctx.is_null() {
            return put(out, 0);
        }
        put(out, crate::api::context::context_arg(ctx)?.id)
    })
}

/// A slot of TOOLS_CONTEXT whose meaning is unknown: logs its first call's
/// arguments (as integers: six registers, whatever it takes) and refuses.
unsafe extern "C" fn unknown_slot<const TABLE: usize, const N: usize>(
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
) -> CUresult {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SEEN: [[AtomicBool; PROBED_SLOTS]; 2] =
        [const { [const { AtomicBool::new(false) }; PROBED_SLOTS] }; 2];
    if !SEEN[TABLE][N].swap(true, Ordering::Relaxed) {
        crate::log::init();
        tracing::warn!(
            table = PROBED_TABLES[TABLE],
            slot = N,
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            "a slot of an export table that xpupool does not know was called; returning CUDA_ERROR_NOT_SUPPORTED"
        );
    }
    CUDA_ERROR_NOT_SUPPORTED
}

/// Slots of TOOLS_CONTEXT, the size word included (a CUDA 13.4 runtime's has 95).
const TOOLS_CONTEXT_SLOTS: usize = 96;
/// Slots of the tables served with slots of unknown meaning.
const PROBED_SLOTS: usize = 96;
const PROBED_TABLES: [&str; 2] = ["21318c60", "1734dc26"];

macro_rules! tools_context {
    ($($n:literal)*) => {
        Table([
            size(TOOLS_CONTEXT_SLOTS),
            slot!(unknown_slot::<0, 1>),
            slot!(unknown_slot::<0, 2>),
            slot!(unknown_slot::<0, 3>),
            slot!(tools_context_id),
            $(slot!(unknown_slot::<0, $n>)),*
        ])
    };
}

static TOOLS_CONTEXT: Table<TOOLS_CONTEXT_SLOTS> = tools_context!(
    5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36
    37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67
    68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95
);

const CUBLASLT_1734_ID: [u8; 16] = [
    0x17, 0x34, 0xdc, 0x26, 0x80, 0x0d, 0x47, 0x45, 0x87, 0x26, 0xc0, 0xf1, 0xe7, 0xdd, 0x8b, 0xca,
];

macro_rules! probe_table {
    ($($n:literal)*) => { Table([size(32), $(slot!(unknown_slot::<1, $n>)),*]) };
}
static CUBLASLT_1734: Table<32> = probe_table!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

static CLS_V0301: Table<4> = Table([slot!(cls_put), slot!(cls_delete), slot!(cls_get), NULL]);

/// The table for `id`, if it is one we serve.
pub(crate) fn table(id: &[u8; 16]) -> Option<*const c_void> {
    let table: *const c_void = match *id {
        INTEGRITY_CHECK_ID => &INTEGRITY_CHECK as *const _ as _,
        TOOLS_TLS_ID => &TOOLS_TLS as *const _ as _,
        CALLBACK_HOOKS_ID => &CALLBACK_HOOKS as *const _ as _,
        CUDART_INTERFACE_ID => &CUDART_INTERFACE as *const _ as _,
        CONTEXT_CHECKS_ID => &CONTEXT_CHECKS as *const _ as _,
        CLS_V0301_ID => &CLS_V0301 as *const _ as _,
        TOOLS_CONTEXT_ID => &TOOLS_CONTEXT as *const _ as _,
        CUBLASLT_1734_ID => &CUBLASLT_1734 as *const _ as _,
        _ => return None,
    };
    Some(table)
}

unsafe extern "C" fn noop() -> CUresult {
    CUDA_SUCCESS
}

unsafe extern "C" fn noop_void(_: usize) {}

unsafe extern "C" fn integrity_check_slot(
    version: u32,
    unix_seconds: u64,
    out: *mut [u64; 2],
) -> CUresult {
    enter("integrity_check", || {
        let devices: Vec<DeviceIdentity> = match driver() {
            Ok(d) => d
                .conn
                .welcome
                .devices
                .iter()
                .enumerate()
                .map(|(i, info)| DeviceIdentity {
                    uuid: info.uuid,
                    pci_domain: d
                        .attribute(i as CUdevice, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)
                        .unwrap_or(0),
                    pci_bus: d
                        .attribute(i as CUdevice, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)
                        .unwrap_or(0),
                    pci_device: d
                        .attribute(i as CUdevice, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)
                        .unwrap_or(0),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let input = IntegrityInput {
            driver_version: crate::api::device::DRIVER_VERSION as u32,
            version,
            // SAFETY: plain libc queries.
            pid: unsafe { libc::getpid() } as u32,
            thread: unsafe { libc::pthread_self() } as u32,
            cudart_interface_table: &CUDART_INTERFACE as *const _ as usize,
            integrity_table: &INTEGRITY_CHECK as *const _ as usize,
            integrity_fn: integrity_check_slot as *const () as usize,
            unix_seconds,
            devices: &devices,
        };
        put(out, integrity_check(&input))
    })
}

unsafe extern "C" fn tools_tls_current_context(out: *mut CUcontext) -> CUresult {
    if !out.is_null() {
        // SAFETY: the caller passes a place for a context handle.
        unsafe { *out = state::current().unwrap_or(0) as CUcontext };
    }
    CUDA_SUCCESS
}

/// Zeroed scratch buffers the runtime's callback hooks ask for.
static BUFFER1: [AtomicU32; 1024] = [const { AtomicU32::new(0) }; 1024];
static BUFFER2: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];

unsafe extern "C" fn hooks_buffer1(ptr: *mut *mut c_void, size: *mut usize) -> CUresult {
    let _ = put(ptr, BUFFER1.as_ptr() as *mut c_void);
    let _ = put(size, 1024);
    CUDA_SUCCESS
}

unsafe extern "C" fn hooks_buffer2(ptr: *mut *mut c_void, size: *mut usize) -> CUresult {
    let _ = put(ptr, BUFFER2.as_ptr() as *mut c_void);
    let _ = put(size, 14);
    CUDA_SUCCESS
}

unsafe extern "C" fn module_from_cubin(module: *mut CUmodule, image: *const c_void) -> CUresult {
    enter("cudart module_from_cubin", || {
        crate::api::module::load_module_into(module, image)
    })
}

/// The extended loaders take extra arguments tied to host-variable registration;
/// only their empty form is understood.
fn load_ext(
    module: *mut CUmodule,
    image: *const c_void,
    arg3: *mut c_void,
    arg4: *mut c_void,
    arg5: u32,
) -> Res {
    if !arg3.is_null() || !arg4.is_null() || arg5 != 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    crate::api::module::load_module_into(module, image)
}

unsafe extern "C" fn module_from_cubin_ext1(
    module: *mut CUmodule,
    image: *const c_void,
    arg3: *mut c_void,
    arg4: *mut c_void,
    arg5: u32,
) -> CUresult {
    enter("cudart module_from_cubin_ext1", || {
        load_ext(module, image, arg3, arg4, arg5)
    })
}

/// Same as ext1 with the first two arguments swapped, taking a bare fatbin header.
unsafe extern "C" fn module_from_cubin_ext2(
    image: *const c_void,
    module: *mut CUmodule,
    arg3: *mut c_void,
    arg4: *mut c_void,
    arg5: u32,
) -> CUresult {
    enter("cudart module_from_cubin_ext2", || {
        load_ext(module, image, arg3, arg4, arg5)
    })
}

/// The device's primary context, neither retained nor activated.
unsafe extern "C" fn primary_context(out: *mut CUcontext, device: CUdevice) -> CUresult {
    enter("cudart primary_context", || {
        let d = driver()?;
        d.device(device)?;
        put(
            out,
            std::sync::Arc::as_ptr(&d.primary[device as usize]) as CUcontext,
        )
    })
}

unsafe extern "C" fn load_compilers() -> CUresult {
    CUDA_SUCCESS
}

unsafe extern "C" fn context_check(
    _ctx: CUcontext,
    out1: *mut u32,
    out2: *mut *const c_void,
) -> CUresult {
    let _ = put(out1, 0);
    if !out2.is_null() {
        // SAFETY: a place for a pointer, per the table's contract.
        unsafe { *out2 = std::ptr::null() };
    }
    CUDA_SUCCESS
}

unsafe extern "C" fn context_check_fn3() -> u32 {
    0
}

/// Resolves the CLS context argument: NULL means the current context.
fn cls_context(ctx: CUcontext) -> Res<usize> {
    if ctx.is_null() {
        state::current().ok_or(CUDA_ERROR_INVALID_CONTEXT)
    } else {
        Ok(ctx as usize)
    }
}

unsafe extern "C" fn cls_put(
    ctx: CUcontext,
    key: *mut c_void,
    value: *mut c_void,
    dtor: state::ClsDtor,
) -> CUresult {
    enter("cls_put", || {
        let d = driver()?;
        let ctx = cls_context(ctx)?;
        lock(&d.cls).insert((ctx, key as usize), (value as usize, dtor));
        Ok(())
    })
}

unsafe extern "C" fn cls_delete(ctx: CUcontext, key: *mut c_void) -> CUresult {
    enter("cls_delete", || {
        let d = driver()?;
        let ctx = cls_context(ctx)?;
        lock(&d.cls)
            .remove(&(ctx, key as usize))
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    })
}

unsafe extern "C" fn cls_get(
    value: *mut *mut c_void,
    ctx: CUcontext,
    key: *mut c_void,
) -> CUresult {
    enter("cls_get", || {
        let d = driver()?;
        let ctx = cls_context(ctx)?;
        let found = lock(&d.cls)
            .get(&(ctx, key as usize))
            .map(|&(v, _)| v)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        put(value, found as *mut c_void)
    })
}

/// Runs and drops the CLS entries of a context (primary-context reset, context destroy).
pub(crate) fn cls_destroy(ctx: usize) {
    let Ok(d) = driver() else { return };
    let entries: Vec<((usize, usize), (usize, state::ClsDtor))> = {
        let mut cls = lock(&d.cls);
        let keys: Vec<_> = cls.keys().filter(|(c, _)| *c == ctx).copied().collect();
        keys.into_iter()
            .filter_map(|k| cls.remove(&k).map(|v| (k, v)))
            .collect()
    };
    for ((ctx, key), (value, dtor)) in entries {
        if let Some(dtor) = dtor {
            // SAFETY: the runtime registered this destructor for exactly these arguments.
            unsafe { dtor(ctx as CUcontext, key as *mut c_void, value as *mut c_void) };
        }
    }
}
