//! Module images for the driver, and what a loaded module contains: every kernel's
//! name, parameter layout and attributes, asked of the driver where it can answer
//! (`cuModuleEnumerateFunctions`, `cuFuncGetParamInfo`, CUDA 12.4) and read from the
//! image where it cannot (PTX `.entry` signatures, cubin `.nv.info` records).

use std::collections::HashMap;
use std::ffi::{c_char, c_uint, c_void, CStr, CString};

use xpupool_cuda_types::{
    CUfunction, CUmodule, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_SUPPORTED,
    CUDA_SUCCESS,
};
use xpupool_fatbin::{EntryKind, Image};
use xpupool_protocol::{code, CuError};

use super::driver::Driver;

/// A kernel as every session loading the same image sees it (its handle aside).
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    pub(crate) name: String,
    /// `(offset, size)` per parameter, or why the layout is unknown.
    pub(crate) params: Result<Vec<(u32, u32)>, String>,
    pub(crate) attributes: Vec<(u32, i32)>,
}

impl Kernel {
    pub(crate) fn param_bytes(&self) -> u32 {
        self.params
            .as_ref()
            .map_or(0, |p| p.iter().map(|&(o, s)| o + s).max().unwrap_or(0))
    }
}

/// The image bytes `cuModuleLoadData` takes, 8-byte aligned and NUL-terminated (so
/// PTX text is a C string and cubin/fatbin headers are read from aligned memory).
pub(crate) fn driver_image(image: &Image) -> Result<Vec<u64>, CuError> {
    let bytes: &[u8] = match image {
        Image::Fatbin(f) => f,
        // The wrapper's own fatbin; the prelinked ones of a v2 wrapper are not
        // passed (cudart only produces them for relocatable device code).
        Image::Fatbins(fs) => fs
            .first()
            .ok_or_else(|| CuError::new(code::INVALID_IMAGE, "empty fatbin list"))?,
        Image::Elf(e) => e,
        Image::Ptx(p) => p.as_bytes(),
        Image::Ascend { .. } => {
            return Err(CuError::new(
                code::INVALID_IMAGE,
                "an Ascend kernel binary: the cuda backend runs NVIDIA code",
            ))
        }
    };
    let mut words = vec![0u64; bytes.len() / 8 + 1];
    // SAFETY: `words` has at least `bytes.len() + 1` bytes; u64 has no invalid bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), bytes.len())
    };
    Ok(words)
}

/// Why the driver found nothing to run: what the image holds, for the client's log.
pub(crate) fn no_code_reason(image: &Image, sm: u32) -> String {
    let held = image.entries().map(|entries| {
        entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::Ptx => format!("compute_{}", e.arch),
                EntryKind::Elf => format!("sm_{}", e.arch),
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    format!(
        "the driver has no code for this device (sm_{sm}) in the image (it holds: {})",
        held.unwrap_or_else(|e| format!("unreadable: {e}"))
    )
}

/// Kernel layouts readable from the image itself: cubins' `.nv.info` sections first,
/// then PTX `.entry` signatures for kernels no cubin describes.
pub(crate) fn image_layouts(image: &Image) -> HashMap<String, Vec<(u32, u32)>> {
    let mut layouts = HashMap::new();
    let Ok(entries) = image.entries() else {
        return layouts;
    };
    for entry in entries.iter().filter(|e| e.kind == EntryKind::Elf) {
        match xpupool_fatbin::cubin_param_layouts(&entry.data) {
            Ok(found) => {
                for (name, params) in found {
                    layouts.entry(name).or_insert(params);
                }
            }
            Err(e) => tracing::debug!(arch = entry.arch, error = %e, "cubin .nv.info unreadable"),
        }
    }
    for entry in entries.iter().filter(|e| e.kind == EntryKind::Ptx) {
        let text = String::from_utf8_lossy(&entry.data);
        match xpupool_ptx::parse_module(&text) {
            Ok(module) => {
                for kernel in module.kernels() {
                    layouts.entry(kernel.name.clone()).or_insert_with(|| {
                        kernel
                            .params
                            .iter()
                            .map(|p| (p.offset as u32, p.size as u32))
                            .collect()
                    });
                }
            }
            Err(e) => tracing::debug!(arch = entry.arch, error = %e, "PTX does not parse"),
        }
    }
    layouts
}

/// The kernels of a loaded module, each with its handle.
pub(crate) fn introspect(
    driver: &Driver,
    module: CUmodule,
    image: &Image,
) -> Result<Vec<(CUfunction, Kernel)>, CuError> {
    // Read from the image only if the driver cannot answer.
    let mut from_image = None;
    let functions = match enumerate(driver, module)? {
        Some(functions) => functions,
        None => {
            // Older driver (or one that does not enumerate): the image names them.
            let mut names: Vec<String> = layouts(&mut from_image, image).keys().cloned().collect();
            names.sort();
            let mut found = Vec::new();
            for name in names {
                if let Some(f) = get_function(driver, module, &name)? {
                    found.push((f, name));
                }
            }
            found
        }
    };
    let mut kernels = Vec::with_capacity(functions.len());
    for (f, name) in functions {
        // A kernel the driver cannot describe is unusable, not the whole module (a
        // driver may refuse one kernel of a module: xpupool's own, standing in,
        // for a kernel its interpreter cannot run).
        let params = match param_info(driver, f) {
            Ok(Some(params)) => Ok(params),
            Ok(None) => layouts(&mut from_image, image).get(&name).cloned().ok_or_else(|| {
                format!("the parameter layout of {name} is unknown: the driver has no cuFuncGetParamInfo and the image does not describe it")
            }),
            Err(e) => Err(format!("the driver cannot describe {name}: {}", e.message)),
        };
        kernels.push((
            f,
            Kernel {
                attributes: attributes(driver, f),
                name,
                params,
            },
        ));
    }
    Ok(kernels)
}

fn layouts<'a>(
    slot: &'a mut Option<HashMap<String, Vec<(u32, u32)>>>,
    image: &Image,
) -> &'a HashMap<String, Vec<(u32, u32)>> {
    slot.get_or_insert_with(|| image_layouts(image))
}

/// The module's functions with their names, or `None` when the driver cannot list them.
fn enumerate(
    driver: &Driver,
    module: CUmodule,
) -> Result<Option<Vec<(CUfunction, String)>>, CuError> {
    let (Some(count_fn), Some(enumerate_fn), Some(name_fn)) = (
        driver.cuModuleGetFunctionCount,
        driver.cuModuleEnumerateFunctions,
        driver.cuFuncGetName,
    ) else {
        return Ok(None);
    };
    let mut count: c_uint = 0;
    // SAFETY: a live module and a valid out-pointer.
    let r = unsafe { count_fn(&mut count, module) };
    if r == CUDA_ERROR_NOT_SUPPORTED {
        return Ok(None);
    }
    driver.check(r, "cuModuleGetFunctionCount")?;
    let mut functions: Vec<CUfunction> = vec![std::ptr::null_mut(); count as usize];
    if count > 0 {
        // SAFETY: `functions` has room for `count` handles.
        let r = unsafe { enumerate_fn(functions.as_mut_ptr(), count, module) };
        if r == CUDA_ERROR_NOT_SUPPORTED {
            return Ok(None);
        }
        driver.check(r, "cuModuleEnumerateFunctions")?;
    }
    let mut named = Vec::with_capacity(functions.len());
    for f in functions {
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: a function handle the driver just listed.
        let r = unsafe { name_fn(&mut name, f) };
        if r == CUDA_ERROR_NOT_SUPPORTED {
            return Ok(None);
        }
        driver.check(r, "cuFuncGetName")?;
        if name.is_null() {
            return Err(CuError::new(code::UNKNOWN, "cuFuncGetName gave no name"));
        }
        // SAFETY: a NUL-terminated string owned by the module.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        named.push((f, name));
    }
    Ok(Some(named))
}

/// `cuModuleGetFunction`, with `None` for a name the module does not have.
pub(crate) fn get_function(
    driver: &Driver,
    module: CUmodule,
    name: &str,
) -> Result<Option<CUfunction>, CuError> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    let mut f: CUfunction = std::ptr::null_mut();
    // SAFETY: a live module, a C string and an out-pointer.
    let r = unsafe { (driver.cuModuleGetFunction)(&mut f, module, c_name.as_ptr()) };
    if r == CUDA_ERROR_NOT_FOUND {
        return Ok(None);
    }
    driver.check(r, &format!("cuModuleGetFunction({name})"))?;
    Ok(Some(f))
}

/// The parameter layout from `cuFuncGetParamInfo`, or `None` when the driver lacks it.
fn param_info(driver: &Driver, f: CUfunction) -> Result<Option<Vec<(u32, u32)>>, CuError> {
    let Some(info_fn) = driver.cuFuncGetParamInfo else {
        return Ok(None);
    };
    let mut params = Vec::new();
    for index in 0.. {
        let (mut offset, mut size) = (0usize, 0usize);
        // SAFETY: a live function and two out-pointers.
        let r = unsafe { info_fn(f, index, &mut offset, &mut size) };
        match r {
            CUDA_SUCCESS => params.push((
                u32::try_from(offset).map_err(|_| too_large(offset))?,
                u32::try_from(size).map_err(|_| too_large(size))?,
            )),
            // Past the last parameter (FACTS §6).
            CUDA_ERROR_INVALID_VALUE => break,
            CUDA_ERROR_NOT_SUPPORTED if index == 0 => return Ok(None),
            other => {
                driver.check(other, "cuFuncGetParamInfo")?;
            }
        }
        if index > 1 << 14 {
            return Err(CuError::new(code::UNKNOWN, "cuFuncGetParamInfo never ends"));
        }
    }
    Ok(Some(params))
}

fn too_large(v: usize) -> CuError {
    CuError::new(
        code::UNKNOWN,
        format!("parameter offset or size {v} out of range"),
    )
}

/// `CU_FUNC_ATTRIBUTE_*` 0..=9 (what `cuFuncGetAttribute` answers on every driver);
/// an attribute the driver refuses is left out. Under lazy loading (the default
/// since CUDA 12.2) a function not yet loaded answers only what its image says
/// (registers, static shared memory) and refuses the device-dependent ones
/// (`MAX_THREADS_PER_BLOCK`, `MAX_DYNAMIC_SHARED_SIZE_BYTES`; seen on an H100
/// with driver 580): the client asks for those when it needs them
/// ([`function_attribute`]), so only the kernels a program uses are loaded.
fn attributes(driver: &Driver, f: CUfunction) -> Vec<(u32, i32)> {
    (0..=9)
        .filter_map(|attribute| {
            let mut value = 0;
            // SAFETY: a live function and an out-pointer.
            let r = unsafe { (driver.cuFuncGetAttribute)(&mut value, attribute, f) };
            (r == CUDA_SUCCESS).then_some((attribute, value))
        })
        .collect()
}

/// One attribute of `f`, loading it first (`cuFuncLoad`) if the driver refuses
/// it for a function lazy loading has not loaded.
pub(crate) fn function_attribute(
    driver: &Driver,
    f: CUfunction,
    attribute: u32,
) -> Result<i32, CuError> {
    let query = || {
        let mut value = 0;
        // SAFETY: a live function and an out-pointer.
        let r = unsafe { (driver.cuFuncGetAttribute)(&mut value, attribute, f) };
        (r, value)
    };
    let (mut r, mut value) = query();
    if r != CUDA_SUCCESS {
        if let Some(load) = driver.cuFuncLoad {
            // SAFETY: a live function of a loaded module.
            if unsafe { load(f) } == CUDA_SUCCESS {
                (r, value) = query();
            }
        }
    }
    driver.check(r, "cuFuncGetAttribute")?;
    Ok(value)
}

/// A pointer to the image words, as `cuModuleLoadData` takes it.
pub(crate) fn image_ptr(words: &[u64]) -> *const c_void {
    words.as_ptr().cast()
}
