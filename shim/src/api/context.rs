//! Contexts: the primary context of each device and created ones, and each client
//! thread's context stack. All of them share the process's one server session, so
//! a context here is client-side bookkeeping.

use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use xpupool_cuda_types::*;
use xpupool_protocol::Calls;

use crate::boundary::{export, put, Res};
use crate::state::{self, driver, fail, lock, Context};

pub(crate) fn context_arg(ctx: CUcontext) -> Res<Arc<Context>> {
    let d = driver()?;
    if ctx.is_null() {
        d.current_context()
    } else {
        d.contexts
            .get(ctx as usize)
            .map_err(|_| CUDA_ERROR_INVALID_CONTEXT)
    }
}

fn synchronize() -> Res {
    super::graph::not_during_global_capture()?;
    xpupool_client::trace::sync_point();
    driver()?.conn.synchronize().map_err(fail)
}

fn create_context(out: *mut CUcontext, flags: c_uint, device: CUdevice) -> Res {
    let d = driver()?;
    d.device(device)?;
    let ctx = Arc::new(Context {
        device,
        primary: false,
        flags: AtomicU32::new(flags),
        retained: AtomicU32::new(0),
        id: d.fresh_id(),
    });
    let handle = d.contexts.insert(ctx);
    state::push_current(handle);
    put(out, handle as CUcontext)
}

fn primary_release(device: CUdevice) -> Res {
    let d = driver()?;
    d.device(device)?;
    let ctx = &d.primary[device as usize];
    ctx.retained
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .map(|_| ())
        .map_err(|_| CUDA_ERROR_INVALID_CONTEXT)
}

fn primary_reset(device: CUdevice) -> Res {
    let d = driver()?;
    d.device(device)?;
    let ctx = &d.primary[device as usize];
    synchronize()?;
    crate::dark::cls_destroy(Arc::as_ptr(ctx) as usize);
    ctx.retained.store(0, Ordering::Release);
    ctx.flags.store(0, Ordering::Release);
    Ok(())
}

fn primary_set_flags(device: CUdevice, flags: c_uint) -> Res {
    let d = driver()?;
    d.device(device)?;
    d.primary[device as usize]
        .flags
        .store(flags, Ordering::Release);
    Ok(())
}

export! {
    fn cuDevicePrimaryCtxRetain(out: *mut CUcontext, device: CUdevice) {
        let d = driver()?;
        d.device(device)?;
        let ctx = &d.primary[device as usize];
        ctx.retained.fetch_add(1, Ordering::AcqRel);
        put(out, Arc::as_ptr(ctx) as CUcontext)
    }

    fn cuDevicePrimaryCtxRelease(device: CUdevice) { primary_release(device) }
    fn cuDevicePrimaryCtxRelease_v2(device: CUdevice) { primary_release(device) }
    fn cuDevicePrimaryCtxReset(device: CUdevice) { primary_reset(device) }
    fn cuDevicePrimaryCtxReset_v2(device: CUdevice) { primary_reset(device) }
    fn cuDevicePrimaryCtxSetFlags(device: CUdevice, flags: c_uint) { primary_set_flags(device, flags) }
    fn cuDevicePrimaryCtxSetFlags_v2(device: CUdevice, flags: c_uint) { primary_set_flags(device, flags) }

    fn cuDevicePrimaryCtxGetState(device: CUdevice, flags: *mut c_uint, active: *mut c_int) {
        let d = driver()?;
        d.device(device)?;
        let ctx = &d.primary[device as usize];
        put(flags, ctx.flags.load(Ordering::Acquire))?;
        put(active, (ctx.retained.load(Ordering::Acquire) > 0) as c_int)
    }

    fn cuCtxCreate_v2(out: *mut CUcontext, flags: c_uint, device: CUdevice) {
        create_context(out, flags, device)
    }

    fn cuCtxCreate_v3(out: *mut CUcontext, _affinity: *mut CUexecAffinityParam, count: c_int, flags: c_uint, device: CUdevice) {
        if count != 0 {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        create_context(out, flags, device)
    }

    fn cuCtxCreate_v4(out: *mut CUcontext, params: *mut CUctxCreateParams, flags: c_uint, device: CUdevice) {
        if !params.is_null() {
            // SAFETY: non-null, caller-provided parameters.
            let p = unsafe { &*params };
            if p.numExecAffinityParams != 0 || !p.cigParams.is_null() {
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        create_context(out, flags, device)
    }

    fn cuCtxDestroy_v2(ctx: CUcontext) {
        let d = driver()?;
        let context = d.contexts.get(ctx as usize).map_err(|_| CUDA_ERROR_INVALID_CONTEXT)?;
        if context.primary {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        synchronize()?;
        crate::dark::cls_destroy(ctx as usize);
        d.contexts.remove(ctx as usize)?;
        if state::current() == Some(ctx as usize) {
            state::pop_current();
        }
        Ok(())
    }

    fn cuCtxGetCurrent(out: *mut CUcontext) {
        driver()?;
        put(out, state::current().unwrap_or(0) as CUcontext)
    }

    fn cuCtxSetCurrent(ctx: CUcontext) {
        if ctx.is_null() {
            driver()?;
            state::set_current(None);
            return Ok(());
        }
        context_arg(ctx)?;
        state::set_current(Some(ctx as usize));
        Ok(())
    }

    fn cuCtxPushCurrent_v2(ctx: CUcontext) {
        context_arg(ctx)?;
        state::push_current(ctx as usize);
        Ok(())
    }

    fn cuCtxPopCurrent_v2(out: *mut CUcontext) {
        driver()?;
        let popped = state::pop_current().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        if !out.is_null() {
            put(out, popped as CUcontext)?;
        }
        Ok(())
    }

    fn cuCtxGetDevice(device: *mut CUdevice) {
        put(device, driver()?.current_context()?.device)
    }

    fn cuCtxGetDevice_v2(device: *mut CUdevice, ctx: CUcontext) {
        put(device, context_arg(ctx)?.device)
    }

    /// Peer access between two devices of the server (which holds both devices'
    /// memory in one session, so kernels on one reach the other's allocations).
    fn cuCtxEnablePeerAccess(peer: CUcontext, flags: c_uint) {
        let d = driver()?;
        let own = d.current_context()?.device;
        let peer = context_arg(peer)?.device;
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if peer == own {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        if !lock(&d.peer_access).insert((own, peer)) {
            return Err(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED);
        }
        Ok(())
    }

    fn cuCtxDisablePeerAccess(peer: CUcontext) {
        let d = driver()?;
        let own = d.current_context()?.device;
        let peer = context_arg(peer)?.device;
        if !lock(&d.peer_access).remove(&(own, peer)) {
            return Err(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED);
        }
        Ok(())
    }

    fn cuCtxGetFlags(flags: *mut c_uint) {
        put(flags, driver()?.current_context()?.flags.load(Ordering::Acquire))
    }

    fn cuCtxSetFlags(flags: c_uint) {
        driver()?.current_context()?.flags.store(flags, Ordering::Release);
        Ok(())
    }

    fn cuCtxGetId(ctx: CUcontext, id: *mut u64) {
        put(id, context_arg(ctx)?.id)
    }

    fn cuCtxGetApiVersion(ctx: CUcontext, version: *mut c_uint) {
        context_arg(ctx)?;
        put(version, 3020)
    }

    fn cuCtxSynchronize() {
        driver()?.current_context()?;
        synchronize()
    }

    fn cuCtxSynchronize_v2(ctx: CUcontext) {
        context_arg(ctx)?;
        synchronize()
    }

    // There is no profiler behind xpupool; a trace (`XPUPOOL_TRACE`) records these
    // calls, and `xpupool bench replay` takes each span between them as one step.
    fn cuProfilerStart() {
        driver()?;
        Ok(())
    }

    fn cuProfilerStop() {
        driver()?;
        Ok(())
    }

    fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) {
        driver()?;
        if !least.is_null() { put(least, 0)?; }
        if !greatest.is_null() { put(greatest, -5)?; }
        Ok(())
    }

    fn cuCtxGetLimit(value: *mut usize, limit: CUlimit) {
        let d = driver()?;
        let default = match limit {
            CU_LIMIT_STACK_SIZE => 1024,
            CU_LIMIT_PRINTF_FIFO_SIZE => 1 << 20,
            CU_LIMIT_MALLOC_HEAP_SIZE => 8 << 20,
            CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH => 2,
            CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT => 2048,
            CU_LIMIT_MAX_L2_FETCH_GRANULARITY => 64,
            CU_LIMIT_PERSISTING_L2_CACHE_SIZE => 0,
            // Contexts are never CIG (graphics-interop) contexts: kernels get the
            // device's whole shared memory, and no fallback path exists to enable.
            CU_LIMIT_SHMEM_SIZE => d.attribute(0, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize,
            CU_LIMIT_CIG_ENABLED | CU_LIMIT_CIG_SHMEM_FALLBACK_ENABLED => 0,
            _ => return Err(CUDA_ERROR_UNSUPPORTED_LIMIT),
        };
        let answer = lock(&d.limits).get(&limit).copied().unwrap_or(default);
        tracing::debug!(limit, answer, "cuCtxGetLimit");
        put(value, answer)
    }

    fn cuCtxSetLimit(limit: CUlimit, value: usize) {
        let d = driver()?;
        if limit > CU_LIMIT_PERSISTING_L2_CACHE_SIZE {
            return Err(CUDA_ERROR_UNSUPPORTED_LIMIT);
        }
        // The interpreter has no fixed stack, heap or FIFO to resize; the value is
        // remembered so cuCtxGetLimit reports what was set, as a device would.
        lock(&d.limits).insert(limit, value);
        Ok(())
    }

    fn cuCtxGetCacheConfig(config: *mut CUfunc_cache) {
        driver()?;
        put(config, CU_FUNC_CACHE_PREFER_NONE)
    }

    fn cuCtxSetCacheConfig(_config: CUfunc_cache) {
        // A preference, which the driver may ignore; the mock has no cache split.
        driver().map(|_| ())
    }
}
