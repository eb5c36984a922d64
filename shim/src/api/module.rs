//! Modules and libraries (one object here: a library *is* its module), functions
//! and kernels (one object: `cuKernelGetFunction` returns the same handle). The
//! image is copied to the server at load; the server answers with every function's
//! parameter layout and attributes and every global's address, so look-ups after
//! the load are local.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::{Arc, OnceLock};

use xpupool_cuda_types::*;
use xpupool_fatbin::Image;
use xpupool_protocol::Calls;

use crate::boundary::{c_str, export, put, Res};
use crate::state::{driver, fail, lock, Function, Module};

/// Whether the application asked for eager loading (`CUDA_MODULE_LOADING=EAGER`).
fn eager() -> bool {
    static EAGER: OnceLock<bool> = OnceLock::new();
    *EAGER.get_or_init(|| {
        std::env::var("CUDA_MODULE_LOADING").is_ok_and(|v| v.eq_ignore_ascii_case("EAGER"))
    })
}

fn register(image: Image) -> Res<usize> {
    let d = driver()?;
    let module = Arc::new(Module::new(image, d.device_count()));
    if eager() {
        module.loaded(d)?;
    }
    Ok(d.modules.insert(module))
}

/// Loads the image at `image` (wrapper, fatbin, cubin or PTX) and writes the handle.
pub(crate) fn load_module_into(out: *mut CUmodule, image: *const c_void) -> Res {
    if out.is_null() || image.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the driver API contract: a valid image in one of the accepted formats.
    let image = unsafe { xpupool_fatbin::image_from_ptr(image.cast()) }.map_err(|e| {
        tracing::warn!("module image not understood: {e}");
        CUDA_ERROR_INVALID_IMAGE
    })?;
    put(out, register(image)? as CUmodule)
}

fn load_file(out: *mut CUmodule, path: *const c_char) -> Res {
    let path = c_str(path)?;
    let bytes = std::fs::read(path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    let image = xpupool_fatbin::image_from_bytes(&bytes).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
    put(out, register(image)? as CUmodule)
}

fn unload(module: usize) -> Res {
    let d = driver()?;
    let m = d.modules.get(module)?;
    // Its variables are forgotten here first: once the server has unloaded it,
    // their addresses may come back for another allocation. The module goes
    // here whatever the server says of each device's copy (one it could not
    // unload is freed with the session); the first refusal is reported.
    for g in lock(&m.globals).values() {
        d.device_ranges.remove(g.address);
    }
    let mut refused = None;
    for loaded in m.all_loaded() {
        if let Err(e) = d.conn.module_unload(loaded.server) {
            refused.get_or_insert(e);
        }
    }
    d.modules.remove(module)?;
    for &f in lock(&m.kernels).values() {
        let _ = d.functions.remove(f);
    }
    refused.map_or(Ok(()), |e| Err(fail(e)))
}

/// The handle for kernel `name` of `module`, made on first request. Nothing is sent
/// to the server: the module is uploaded, and the kernel checked, on first use.
fn kernel_handle(module: usize, name: &str) -> Res<usize> {
    let d = driver()?;
    let m = d.modules.get(module)?;
    let mut kernels = lock(&m.kernels);
    if let Some(&handle) = kernels.get(name) {
        return Ok(handle);
    }
    let handle = d.functions.insert(Arc::new(Function::new(
        name.to_owned(),
        module,
        d.device_count(),
    )?));
    kernels.insert(name.to_owned(), handle);
    Ok(handle)
}

/// `cuModuleGetFunction`: the driver API's explicit look-up; an unknown name fails
/// here with `NOT_FOUND`. A kernel the server cannot run is found, and fails when
/// launched (`NO_BINARY_FOR_GPU`, logged with its name).
fn function(module: usize, name: *const c_char) -> Res<usize> {
    let handle = kernel_handle(module, c_str(name)?)?;
    let d = driver()?;
    let f = d.functions.get(handle)?;
    if let Err(code) = f.binding(d) {
        let m = d.modules.get(module)?;
        lock(&m.kernels).remove(c_str(name)?);
        d.functions.remove(handle)?;
        return Err(code);
    }
    mark_loaded(handle)?;
    Ok(handle)
}

/// Whether `f` is loaded: always with eager loading, else once handed out by
/// name, launched or `cuFuncLoad`ed.
fn is_loaded(f: &Function) -> bool {
    eager() || f.loaded.load(std::sync::atomic::Ordering::Relaxed)
}

/// A function lazy loading counts as loaded from now on.
pub(crate) fn mark_loaded(function: usize) -> Res {
    driver()?
        .functions
        .get(function)?
        .loaded
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

fn global(out: *mut CUdeviceptr, bytes: *mut usize, module: usize, name: *const c_char) -> Res {
    let d = driver()?;
    let m = d.modules.get(module)?;
    let name = c_str(name)?;
    let key = (d.current_device(), name.to_owned());
    let cached = lock(&m.globals).get(&key).cloned();
    let g = match cached {
        Some(g) => g,
        None => {
            let server = m.loaded(d)?.server;
            let g = d
                .conn
                .module_get_global(server, name.to_owned())
                .map_err(fail)?;
            d.device_ranges.add_given(g.address, g.size.max(1), false);
            d.device_ranges.set_device(g.address, key.0 as u32);
            lock(&m.globals).insert(key, g.clone());
            g
        }
    };
    if !out.is_null() {
        put(out, g.address)?;
    }
    if !bytes.is_null() {
        put(bytes, g.size as usize)?;
    }
    Ok(())
}

fn get_attribute(out: *mut c_int, attribute: CUfunction_attribute, function: usize) -> Res {
    let d = driver()?;
    let f = d.functions.get(function)?;
    if attribute >= CU_FUNC_ATTRIBUTE_MAX {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // As driver 580 does under lazy loading (seen on an H100): a function only
    // enumerated, not yet loaded, refuses the attributes that depend on the device.
    let device_dependent = matches!(
        attribute,
        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK | CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    );
    if device_dependent && !is_loaded(&f) {
        return Err(CUDA_ERROR_FUNCTION_NOT_LOADED);
    }
    // Attributes the server did not report (cluster shape and policy) are 0: unset.
    put(out, f.attribute(d, attribute)?.unwrap_or(0))
}

fn set_attribute(function: usize, attribute: CUfunction_attribute, value: c_int) -> Res {
    let d = driver()?;
    let f = d.functions.get(function)?;
    match attribute {
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
            let optin = d.attribute(0, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
            let static_bytes = f
                .attribute(d, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?
                .unwrap_or(0);
            if value < 0 || value + static_bytes > optin {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => {
            if !(-1..=100).contains(&value) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
        CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH
        | CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT
        | CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH
        | CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED
        | CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE => {}
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    // The server's function needs it too (a device enforces the shared-memory
    // opt-in); a kernel the server cannot run keeps it locally only.
    if let Ok(info) = f.runnable(d) {
        d.conn
            .function_set_attribute(info.handle, attribute, value)
            .map_err(fail)?;
    }
    let mut overrides = lock(&f.overrides);
    overrides.retain(|&(a, _)| a != attribute);
    overrides.push((attribute, value));
    Ok(())
}

fn param_info(function: usize, index: usize, offset: *mut usize, size: *mut usize) -> Res {
    let d = driver()?;
    let f = d.functions.get(function)?;
    let &(o, s) = f
        .runnable(d)?
        .params
        .get(index)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if !offset.is_null() {
        put(offset, o as usize)?;
    }
    if !size.is_null() {
        put(size, s as usize)?;
    }
    Ok(())
}

fn param_count(function: usize, out: *mut usize) -> Res {
    let d = driver()?;
    put(out, d.functions.get(function)?.runnable(d)?.params.len())
}

fn name_of(out: *mut *const c_char, function: usize) -> Res {
    let f = driver()?.functions.get(function)?;
    put(out, f.c_name.as_ptr())
}

/// Every kernel of a module (uploading it), as handles.
fn all_kernels(module: usize) -> Res<Vec<usize>> {
    let d = driver()?;
    let names: Vec<String> = d
        .modules
        .get(module)?
        .loaded(d)?
        .functions
        .iter()
        .map(|f| f.name.clone())
        .collect();
    names
        .iter()
        .map(|name| kernel_handle(module, name))
        .collect()
}

fn count(out: *mut c_uint, module: usize) -> Res {
    put(out, all_kernels(module)?.len() as c_uint)
}

fn enumerate(out: *mut usize, capacity: c_uint, module: usize) -> Res {
    let kernels = all_kernels(module)?;
    if out.is_null() || (capacity as usize) < kernels.len() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for (i, &f) in kernels.iter().enumerate() {
        // SAFETY: the caller provides `capacity` slots.
        unsafe { *out.add(i) = f };
    }
    Ok(())
}

fn library_load(out: *mut CUlibrary, image: Res<Image>) -> Res {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    put(out, register(image?)? as CUlibrary)
}

export! {
    fn cuModuleLoadData(out: *mut CUmodule, image: *const c_void) { load_module_into(out, image) }

    fn cuModuleLoadDataEx(out: *mut CUmodule, image: *const c_void, _count: c_uint, _options: *mut CUjit_option, _values: *mut *mut c_void) {
        // JIT options tune or report on compilation, which happens on the server.
        load_module_into(out, image)
    }

    fn cuModuleLoadFatBinary(out: *mut CUmodule, image: *const c_void) { load_module_into(out, image) }
    fn cuModuleLoad(out: *mut CUmodule, path: *const c_char) { load_file(out, path) }
    fn cuModuleUnload(module: CUmodule) { unload(module as usize) }

    fn cuModuleGetFunction(out: *mut CUfunction, module: CUmodule, name: *const c_char) {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(out, function(module as usize, name)? as CUfunction)
    }

    fn cuModuleGetGlobal_v2(out: *mut CUdeviceptr, bytes: *mut usize, module: CUmodule, name: *const c_char) {
        global(out, bytes, module as usize, name)
    }

    fn cuModuleGetLoadingMode(mode: *mut CUmoduleLoadingMode) {
        put(mode, if eager() { CU_MODULE_EAGER_LOADING } else { CU_MODULE_LAZY_LOADING })
    }

    fn cuModuleGetFunctionCount(out: *mut c_uint, module: CUmodule) { count(out, module as usize) }
    fn cuModuleEnumerateFunctions(out: *mut CUfunction, capacity: c_uint, module: CUmodule) { enumerate(out.cast(), capacity, module as usize) }

    fn cuLibraryLoadData(
        out: *mut CUlibrary, code: *const c_void,
        _jit_options: *mut CUjit_option, _jit_values: *mut *mut c_void, _jit_count: c_uint,
        _lib_options: *mut CUlibraryOption, _lib_values: *mut *mut c_void, _lib_count: c_uint
    ) {
        if code.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: the API contract: a valid image. It is copied now, so the
        // BINARY_IS_PRESERVED hint needs no handling.
        let image = unsafe { xpupool_fatbin::image_from_ptr(code.cast()) }.map_err(|e| {
            tracing::warn!("library image not understood: {e}");
            CUDA_ERROR_INVALID_IMAGE
        });
        library_load(out, image)
    }

    fn cuLibraryLoadFromFile(
        out: *mut CUlibrary, path: *const c_char,
        _jit_options: *mut CUjit_option, _jit_values: *mut *mut c_void, _jit_count: c_uint,
        _lib_options: *mut CUlibraryOption, _lib_values: *mut *mut c_void, _lib_count: c_uint
    ) {
        let bytes = std::fs::read(c_str(path)?).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND);
        library_load(out, bytes.and_then(|b| xpupool_fatbin::image_from_bytes(&b).map_err(|_| CUDA_ERROR_INVALID_IMAGE)))
    }

    fn cuLibraryUnload(library: CUlibrary) { unload(library as usize) }

    fn cuLibraryGetModule(out: *mut CUmodule, library: CUlibrary) {
        driver()?.modules.get(library as usize)?;
        put(out, library as CUmodule)
    }

    fn cuLibraryGetKernel(out: *mut CUkernel, library: CUlibrary, name: *const c_char) {
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // The runtime asks for every registered kernel up front; like the driver's
        // lazy loading, the kernel is only checked when it is first used.
        let kernel = kernel_handle(library as usize, c_str(name)?)?;
        mark_loaded(kernel)?;
        put(out, kernel as CUkernel)
    }

    fn cuLibraryGetGlobal(out: *mut CUdeviceptr, bytes: *mut usize, library: CUlibrary, name: *const c_char) {
        global(out, bytes, library as usize, name)
    }

    fn cuLibraryGetKernelCount(out: *mut c_uint, library: CUlibrary) { count(out, library as usize) }
    fn cuLibraryEnumerateKernels(out: *mut CUkernel, capacity: c_uint, library: CUlibrary) { enumerate(out.cast(), capacity, library as usize) }

    fn cuKernelGetFunction(out: *mut CUfunction, kernel: CUkernel) {
        mark_loaded(kernel as usize)?;
        put(out, kernel as CUfunction)
    }

    fn cuKernelGetLibrary(out: *mut CUlibrary, kernel: CUkernel) {
        put(out, driver()?.functions.get(kernel as usize)?.module as CUlibrary)
    }

    fn cuFuncGetModule(out: *mut CUmodule, function: CUfunction) {
        put(out, driver()?.functions.get(function as usize)?.module as CUmodule)
    }

    fn cuKernelGetName(out: *mut *const c_char, kernel: CUkernel) { name_of(out, kernel as usize) }
    fn cuFuncGetName(out: *mut *const c_char, function: CUfunction) { name_of(out, function as usize) }

    fn cuFuncGetAttribute(out: *mut c_int, attribute: CUfunction_attribute, function: CUfunction) {
        get_attribute(out, attribute, function as usize)
    }

    fn cuKernelGetAttribute(out: *mut c_int, attribute: CUfunction_attribute, kernel: CUkernel, device: CUdevice) {
        driver()?.device(device)?;
        get_attribute(out, attribute, kernel as usize)
    }

    fn cuFuncSetAttribute(function: CUfunction, attribute: CUfunction_attribute, value: c_int) {
        set_attribute(function as usize, attribute, value)
    }

    fn cuKernelSetAttribute(attribute: CUfunction_attribute, value: c_int, kernel: CUkernel, device: CUdevice) {
        driver()?.device(device)?;
        set_attribute(kernel as usize, attribute, value)
    }

    fn cuFuncSetCacheConfig(function: CUfunction, _config: CUfunc_cache) {
        // A preference the driver may ignore; the interpreter has no L1/shared split.
        driver()?.functions.get(function as usize).map(|_| ())
    }

    fn cuKernelSetCacheConfig(kernel: CUkernel, _config: CUfunc_cache, device: CUdevice) {
        driver()?.device(device)?;
        driver()?.functions.get(kernel as usize).map(|_| ())
    }

    fn cuFuncGetParamInfo(function: CUfunction, index: usize, offset: *mut usize, size: *mut usize) {
        param_info(function as usize, index, offset, size)
    }

    fn cuKernelGetParamInfo(kernel: CUkernel, index: usize, offset: *mut usize, size: *mut usize) {
        param_info(kernel as usize, index, offset, size)
    }

    fn cuFuncGetParamCount(function: CUfunction, out: *mut usize) {
        param_count(function as usize, out)
    }

    fn cuKernelGetParamCount(kernel: CUkernel, out: *mut usize) {
        param_count(kernel as usize, out)
    }

    fn cuFuncIsLoaded(state: *mut CUfunctionLoadingState, function: CUfunction) {
        let f = driver()?.functions.get(function as usize)?;
        put(state, if is_loaded(&f) { CU_FUNCTION_LOADING_STATE_LOADED } else { CU_FUNCTION_LOADING_STATE_UNLOADED })
    }

    fn cuFuncLoad(function: CUfunction) {
        mark_loaded(function as usize)
    }
}
