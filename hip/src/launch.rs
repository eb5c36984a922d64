//! Kernel launches: `<<<…>>>` (hipcc's `__hipPushCallConfiguration` at the call
//! site, then the host stub's `__hipPopCallConfiguration` and `hipLaunchKernel`),
//! `hipLaunchKernelGGL` (the same path), `hipModuleLaunchKernel` and
//! `hipExtModuleLaunchKernel`.
//!
//! Arguments come as `void**` with no count (or as the `extra` list's packed
//! buffer): the server's layout of the kernel's explicit parameters (from its
//! code object's metadata, reported at load) says where each goes in the
//! buffer sent; the server fills the hidden ones.

use std::cell::RefCell;
use std::ffi::{c_uint, c_void};

use serde_bytes::ByteBuf;
use xpupool_protocol::api::{FunctionInfo, LaunchDims};
use xpupool_protocol::Request;

use crate::memory::{call, device, hip_code, put};
use crate::module::{handle_function, stub_function, Function};
use crate::{HipError, HIP_ERROR_INVALID_VALUE};

pub(crate) const HIP_ERROR_INVALID_CONFIGURATION: HipError = 9;

/// `dim3`: passed by value as three `uint32_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

/// One `<<<grid, block, shared, stream>>>` pushed and not yet popped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    grid: Dim3,
    block: Dim3,
    shared: usize,
    stream: *mut c_void,
}

thread_local! {
    /// Configurations pushed on this thread (a launch's arguments can launch).
    static CONFIGS: RefCell<Vec<Config>> = const { RefCell::new(Vec::new()) };
}

#[export_name = "xph___hipPushCallConfiguration"]
pub extern "C" fn hip_push_call_configuration(
    grid: Dim3,
    block: Dim3,
    shared: usize,
    stream: *mut c_void,
) -> HipError {
    call(|| {
        let config = Config {
            grid,
            block,
            shared,
            stream,
        };
        // After the thread's locals are gone (a launch from a destructor), a
        // clear error rather than a panic.
        CONFIGS
            .try_with(|c| c.borrow_mut().push(config))
            .map_err(|_| HIP_ERROR_NOT_INITIALIZED)
    })
}

#[export_name = "xph___hipPopCallConfiguration"]
pub extern "C" fn hip_pop_call_configuration(
    grid: *mut Dim3,
    block: *mut Dim3,
    shared: *mut usize,
    stream: *mut *mut c_void,
) -> HipError {
    call(|| {
        if grid.is_null() || block.is_null() || shared.is_null() || stream.is_null() {
            return Err(HIP_ERROR_INVALID_VALUE);
        }
        let config = CONFIGS
            .try_with(|c| c.borrow_mut().pop())
            .map_err(|_| HIP_ERROR_NOT_INITIALIZED)?
            .ok_or(HIP_ERROR_INVALID_CONFIGURATION)?;
        put(grid, config.grid)?;
        put(block, config.block)?;
        put(shared, config.shared)?;
        put(stream, config.stream)
    })
}

/// `hipErrorNotInitialized`.
const HIP_ERROR_NOT_INITIALIZED: HipError = 3;

/// `HIP_LAUNCH_PARAM_*`: the keys of the `extra` list.
pub(crate) const LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
pub(crate) const LAUNCH_PARAM_BUFFER_SIZE: usize = 2;
pub(crate) const LAUNCH_PARAM_END: usize = 3;
/// Keys an `extra` list may have: beyond this many it is not one.
const MAX_EXTRA: usize = 64;

/// The packed parameter buffer of a launch of `f`: each `params[i]` copied to
/// its parameter's place, or the `extra` list's buffer (its first
/// `param_bytes`). Either one or the other; neither only for a kernel without
/// parameters.
pub(crate) fn pack(
    f: &FunctionInfo,
    params: *const *const c_void,
    extra: *const *const c_void,
) -> Result<Vec<u8>, HipError> {
    let size = f.param_bytes as usize;
    match (params.is_null(), extra.is_null()) {
        (false, false) => Err(HIP_ERROR_INVALID_VALUE),
        (false, true) => {
            let mut buffer = vec![0u8; size];
            for (i, &(offset, len)) in f.params.iter().enumerate() {
                // SAFETY: the API contract: one pointer per kernel parameter.
                let arg = unsafe { *params.add(i) };
                if arg.is_null() {
                    return Err(HIP_ERROR_INVALID_VALUE);
                }
                let (offset, len) = (offset as usize, len as usize);
                let slot = offset
                    .checked_add(len)
                    .and_then(|end| buffer.get_mut(offset..end))
                    .ok_or(HIP_ERROR_INVALID_VALUE)?;
                // SAFETY: `arg` points at a value of the parameter's size.
                slot.copy_from_slice(unsafe { std::slice::from_raw_parts(arg.cast::<u8>(), len) });
            }
            Ok(buffer)
        }
        (true, false) => {
            let (mut pointer, mut length) = (std::ptr::null::<u8>(), None);
            let mut i = 0;
            loop {
                if i >= MAX_EXTRA {
                    return Err(HIP_ERROR_INVALID_VALUE);
                }
                // SAFETY: the API contract: a key/value list ended by HIP_LAUNCH_PARAM_END.
                let key = unsafe { *extra.add(i) } as usize;
                if key == LAUNCH_PARAM_END {
                    break;
                }
                // SAFETY: every key but END is followed by its value.
                let value = unsafe { *extra.add(i + 1) };
                match key {
                    LAUNCH_PARAM_BUFFER_POINTER => pointer = value.cast(),
                    LAUNCH_PARAM_BUFFER_SIZE if !value.is_null() => {
                        // SAFETY: BUFFER_SIZE's value points at a size_t.
                        length = Some(unsafe { value.cast::<usize>().read_unaligned() });
                    }
                    _ => return Err(HIP_ERROR_INVALID_VALUE),
                }
                i += 2;
            }
            let length = length.ok_or(HIP_ERROR_INVALID_VALUE)?;
            if length < size || (pointer.is_null() && size > 0) {
                return Err(HIP_ERROR_INVALID_VALUE);
            }
            if size == 0 {
                return Ok(Vec::new());
            }
            // SAFETY: the caller's packed buffer, of at least `size` bytes.
            Ok(unsafe { std::slice::from_raw_parts(pointer, size) }.to_vec())
        }
        (true, true) if f.params.is_empty() => Ok(Vec::new()),
        (true, true) => Err(HIP_ERROR_INVALID_VALUE),
    }
}

/// A launch's shape, checked as the device limits it: no dimension 0, at most
/// 1024 threads a block, at most 2³² work-items a dimension.
pub(crate) fn dims(grid: [u32; 3], block: [u32; 3], shared: usize) -> Result<LaunchDims, HipError> {
    let threads: u64 = block.iter().map(|&b| u64::from(b)).product();
    let items_fit = grid
        .iter()
        .zip(block)
        .all(|(&g, b)| u64::from(g) * u64::from(b) <= u64::from(u32::MAX));
    if grid.contains(&0) || block.contains(&0) || threads > 1024 || !items_fit {
        return Err(HIP_ERROR_INVALID_CONFIGURATION);
    }
    Ok(LaunchDims {
        grid,
        block,
        shared_bytes: u32::try_from(shared).map_err(|_| HIP_ERROR_INVALID_VALUE)?,
    })
}

/// A launch of `f` in `stream` (its handle is the server's), checked and its
/// arguments packed, ready to send: on the stream's device, or the current one
/// for the null and per-thread streams.
fn launch_request(
    f: &Function,
    dims: LaunchDims,
    stream: *mut c_void,
    params: *const *const c_void,
    extra: *const *const c_void,
) -> Result<(&'static xpupool_client::Connection, Request), HipError> {
    let (c, current) = device()?;
    let d = crate::stream::stream_device(stream as u64).unwrap_or(current);
    let info = f.runnable(c, d)?;
    let params = pack(&info, params, extra)?;
    let request = Request::LaunchKernel {
        function: info.handle,
        dims,
        stream: stream as u64,
        params: ByteBuf::from(params),
    };
    Ok((c, request))
}

fn launch(
    f: &Function,
    dims: LaunchDims,
    stream: *mut c_void,
    params: *const *const c_void,
    extra: *const *const c_void,
) -> Result<(), HipError> {
    let (c, request) = launch_request(f, dims, stream, params, extra)?;
    // Sent without waiting: what the kernel does wrong is reported by the next
    // synchronising call, as on a device.
    c.post(request).map_err(|e| hip_code(&e))
}

#[export_name = "xph_hipLaunchKernel"]
pub extern "C" fn hip_launch_kernel(
    stub: *const c_void,
    grid: Dim3,
    block: Dim3,
    args: *mut *mut c_void,
    shared: usize,
    stream: *mut c_void,
) -> HipError {
    call(|| {
        let f = stub_function(stub)?;
        let dims = dims(
            [grid.x, grid.y, grid.z],
            [block.x, block.y, block.z],
            shared,
        )?;
        launch(&f, dims, stream, args.cast(), std::ptr::null())
    })
}

#[export_name = "xph_hipModuleLaunchKernel"]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn hip_module_launch_kernel(
    f: *mut c_void,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> HipError {
    call(|| {
        let f = handle_function(f)?;
        let dims = dims(
            [grid_x, grid_y, grid_z],
            [block_x, block_y, block_z],
            shared as usize,
        )?;
        launch(&f, dims, stream, params.cast(), extra.cast())
    })
}

/// `hipExtModuleLaunchKernel`'s launch: sizes in work-items (a whole number of
/// blocks here), events recorded around it.
#[allow(clippy::too_many_arguments)]
fn ext_launch(
    f: *mut c_void,
    global: [u32; 3],
    local: [u32; 3],
    shared: usize,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    start: *mut c_void,
    stop: *mut c_void,
) -> HipError {
    call(|| {
        let f = handle_function(f)?;
        if local.contains(&0) {
            return Err(HIP_ERROR_INVALID_CONFIGURATION);
        }
        if global.iter().zip(local).any(|(&g, l)| g % l != 0) {
            if crate::first_time(crate::Once::Entry("hipExtModuleLaunchKernel:partial")) {
                eprintln!("xpupool: hipExtModuleLaunchKernel with work-items not a multiple of the block size is not supported yet");
            }
            return Err(crate::HIP_ERROR_NOT_SUPPORTED);
        }
        let grid = [
            global[0] / local[0],
            global[1] / local[1],
            global[2] / local[2],
        ];
        let dims = dims(grid, local, shared)?;
        let record = |event: *mut c_void| -> Result<(), HipError> {
            if event.is_null() {
                return Ok(());
            }
            let (c, _) = device()?;
            c.post(Request::EventRecord {
                event: event as u64,
                stream: stream as u64,
            })
            .map_err(|e| hip_code(&e))
        };
        // Checked and packed first: a refused launch records neither event.
        let (c, request) = launch_request(&f, dims, stream, params.cast(), extra.cast())?;
        record(start)?;
        c.post(request).map_err(|e| hip_code(&e))?;
        record(stop)
    })
}

/// `hipExtModuleLaunchKernel`, which 5.2 exports under its C++ name only.
#[export_name = "xph__Z24hipExtModuleLaunchKernelP18ihipModuleSymbol_tjjjjjjmP12ihipStream_tPPvS4_P11ihipEvent_tS6_j"]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn hip_ext_module_launch_kernel(
    f: *mut c_void,
    global_x: u32,
    global_y: u32,
    global_z: u32,
    local_x: u32,
    local_y: u32,
    local_z: u32,
    shared: usize,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    start: *mut c_void,
    stop: *mut c_void,
    _flags: u32,
) -> HipError {
    let global = [global_x, global_y, global_z];
    let local = [local_x, local_y, local_z];
    ext_launch(f, global, local, shared, stream, params, extra, start, stop)
}

/// `hipHccModuleLaunchKernel` (deprecated): `hipExtModuleLaunchKernel` without flags.
#[export_name = "xph__Z24hipHccModuleLaunchKernelP18ihipModuleSymbol_tjjjjjjmP12ihipStream_tPPvS4_P11ihipEvent_tS6_"]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn hip_hcc_module_launch_kernel(
    f: *mut c_void,
    global_x: u32,
    global_y: u32,
    global_z: u32,
    local_x: u32,
    local_y: u32,
    local_z: u32,
    shared: usize,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    start: *mut c_void,
    stop: *mut c_void,
) -> HipError {
    let global = [global_x, global_y, global_z];
    let local = [local_x, local_y, local_z];
    ext_launch(f, global, local, shared, stream, params, extra, start, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of `vadd(const float*, const float*, float*, int, double)`
    /// (FACTS-hip.md §3) and of `tk(short, Big, int*)`.
    fn kernel(params: Vec<(u32, u32)>, param_bytes: u32) -> FunctionInfo {
        FunctionInfo {
            name: "k".into(),
            handle: 1,
            params,
            param_bytes,
            unusable: None,
            attributes: Vec::new(),
        }
    }

    #[test]
    fn arguments_go_where_the_layout_says() {
        let vadd = kernel(vec![(0, 8), (8, 8), (16, 8), (24, 4), (32, 8)], 40);
        let (a, b, c) = (0x1000u64, 0x2000u64, 0x3000u64);
        let n = 7i32;
        let x = 2.5f64;
        let args: [*const c_void; 5] = [
            (&a as *const u64).cast(),
            (&b as *const u64).cast(),
            (&c as *const u64).cast(),
            (&n as *const i32).cast(),
            (&x as *const f64).cast(),
        ];
        let packed = pack(&vadd, args.as_ptr(), std::ptr::null()).unwrap();
        let mut want = Vec::new();
        want.extend(a.to_le_bytes());
        want.extend(b.to_le_bytes());
        want.extend(c.to_le_bytes());
        want.extend(n.to_le_bytes());
        want.extend([0; 4]); // padding before the double
        want.extend(x.to_le_bytes());
        assert_eq!(packed, want);

        // A struct by value: 40 bytes at 8, after a short.
        #[repr(C)]
        struct Big {
            a: [u8; 3],
            b: i64,
            c: [f32; 5],
        }
        let tk = kernel(vec![(0, 2), (8, 40), (48, 8)], 56);
        let s = -3i16;
        let big = Big {
            a: [1, 2, 3],
            b: -1,
            c: [1.0; 5],
        };
        let p = 0xdead_beefu64;
        let args: [*const c_void; 3] = [
            (&s as *const i16).cast(),
            (&big as *const Big).cast(),
            (&p as *const u64).cast(),
        ];
        let packed = pack(&tk, args.as_ptr(), std::ptr::null()).unwrap();
        assert_eq!(packed.len(), 56);
        assert_eq!(&packed[..2], &s.to_le_bytes());
        assert_eq!(&packed[8..11], &[1, 2, 3]);
        assert_eq!(&packed[16..24], &(-1i64).to_le_bytes());
        assert_eq!(&packed[48..], &p.to_le_bytes());

        // A NULL argument, or a layout past the buffer, is refused.
        let args: [*const c_void; 3] = [args[0], std::ptr::null(), args[2]];
        assert_eq!(
            pack(&tk, args.as_ptr(), std::ptr::null()),
            Err(HIP_ERROR_INVALID_VALUE)
        );
        let broken = kernel(vec![(0, 8)], 4);
        let one: [*const c_void; 1] = [(&p as *const u64).cast()];
        assert_eq!(
            pack(&broken, one.as_ptr(), std::ptr::null()),
            Err(HIP_ERROR_INVALID_VALUE)
        );
        // No arguments for a kernel that has none is fine; for one that has, not.
        assert_eq!(
            pack(&kernel(vec![], 0), std::ptr::null(), std::ptr::null()),
            Ok(vec![])
        );
        assert_eq!(
            pack(&vadd, std::ptr::null(), std::ptr::null()),
            Err(HIP_ERROR_INVALID_VALUE)
        );
    }

    #[test]
    fn the_extra_buffer_is_forwarded() {
        let f = kernel(vec![(0, 8), (8, 4)], 12);
        let buffer: [u8; 16] = std::array::from_fn(|i| i as u8);
        let size = buffer.len();
        let key = |k: usize| k as *const c_void;
        let extra = [
            key(LAUNCH_PARAM_BUFFER_POINTER),
            buffer.as_ptr().cast(),
            key(LAUNCH_PARAM_BUFFER_SIZE),
            (&size as *const usize).cast(),
            key(LAUNCH_PARAM_END),
        ];
        assert_eq!(
            pack(&f, std::ptr::null(), extra.as_ptr()).unwrap(),
            buffer[..12].to_vec()
        );
        // Too small a buffer, a missing size, an unknown key, or both forms: refused.
        let small = 8usize;
        let mut short = extra;
        short[3] = (&small as *const usize).cast();
        assert_eq!(
            pack(&f, std::ptr::null(), short.as_ptr()),
            Err(HIP_ERROR_INVALID_VALUE)
        );
        let no_size = [extra[0], extra[1], key(LAUNCH_PARAM_END)];
        assert_eq!(
            pack(&f, std::ptr::null(), no_size.as_ptr()),
            Err(HIP_ERROR_INVALID_VALUE)
        );
        let unknown = [key(9), extra[1], key(LAUNCH_PARAM_END)];
        assert_eq!(
            pack(&f, std::ptr::null(), unknown.as_ptr()),
            Err(HIP_ERROR_INVALID_VALUE)
        );
        let args: [*const c_void; 2] = [buffer.as_ptr().cast(), buffer.as_ptr().cast()];
        assert_eq!(
            pack(&f, args.as_ptr(), extra.as_ptr()),
            Err(HIP_ERROR_INVALID_VALUE)
        );
    }

    #[test]
    fn configurations_pop_in_reverse_and_an_empty_stack_is_an_error() {
        let d = |x, y, z| Dim3 { x, y, z };
        assert_eq!(
            hip_push_call_configuration(d(1, 2, 3), d(4, 5, 6), 7, 8 as _),
            0
        );
        assert_eq!(
            hip_push_call_configuration(d(9, 1, 1), d(64, 1, 1), 0, std::ptr::null_mut()),
            0
        );
        let (mut g, mut b, mut s, mut st) = (d(0, 0, 0), d(0, 0, 0), 0usize, std::ptr::null_mut());
        assert_eq!(
            hip_pop_call_configuration(&mut g, &mut b, &mut s, &mut st),
            0
        );
        assert_eq!(
            (g, b, s, st),
            (d(9, 1, 1), d(64, 1, 1), 0, std::ptr::null_mut())
        );
        assert_eq!(
            hip_pop_call_configuration(&mut g, &mut b, &mut s, &mut st),
            0
        );
        assert_eq!((g, b, s, st as usize), (d(1, 2, 3), d(4, 5, 6), 7, 8));
        assert_eq!(
            hip_pop_call_configuration(&mut g, &mut b, &mut s, &mut st),
            HIP_ERROR_INVALID_CONFIGURATION
        );
        assert_eq!(
            hip_pop_call_configuration(std::ptr::null_mut(), &mut b, &mut s, &mut st),
            HIP_ERROR_INVALID_VALUE
        );
    }

    #[test]
    fn shapes_are_checked_before_anything_is_sent() {
        assert!(dims([1, 1, 1], [256, 1, 1], 0).is_ok());
        assert_eq!(
            dims([1, 1, 1], [0, 1, 1], 0),
            Err(HIP_ERROR_INVALID_CONFIGURATION)
        );
        assert_eq!(
            dims([0, 1, 1], [1, 1, 1], 0),
            Err(HIP_ERROR_INVALID_CONFIGURATION)
        );
        assert_eq!(
            dims([1, 1, 1], [32, 32, 2], 0),
            Err(HIP_ERROR_INVALID_CONFIGURATION)
        );
        assert_eq!(
            dims([u32::MAX, 1, 1], [2, 1, 1], 0),
            Err(HIP_ERROR_INVALID_CONFIGURATION)
        );
        // An unregistered stub is an invalid device function, before any server.
        let stub = 0x1234 as *const c_void;
        let one = Dim3 { x: 1, y: 1, z: 1 };
        let none = std::ptr::null_mut();
        assert_eq!(
            hip_launch_kernel(stub, one, one, none, 0, std::ptr::null_mut()),
            crate::module::HIP_ERROR_INVALID_DEVICE_FUNCTION
        );
        assert_eq!(
            crate::hip_get_last_error(),
            crate::module::HIP_ERROR_INVALID_DEVICE_FUNCTION
        );
    }
}
