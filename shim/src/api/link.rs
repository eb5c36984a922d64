//! The JIT linker (`cuLinkCreate`, `cuLinkAddData`, `cuLinkAddFile`,
//! `cuLinkComplete`, `cuLinkDestroy`). PTX inputs (and the PTX of fatbin
//! inputs) are joined here into one PTX module (the first input's `.version`,
//! `.target` and `.address_size`; the others' left out; an `.extern .func`
//! another input defines becomes a plain declaration), which `cuModuleLoadData`
//! takes and the server compiles (or, on the mock, interprets). A link with
//! cubin, object or library inputs (or a fatbin without PTX) is linked by the
//! driver's own linker on the server ([`xpupool_protocol::Request::Link`]), which a GPU host has
//! and the mock has not. NVVM inputs are refused (`CUDA_ERROR_NOT_SUPPORTED`).

use std::collections::HashMap;
use std::ffi::{c_char, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

use serde_bytes::ByteBuf;
use xpupool_cuda_types::*;
use xpupool_protocol::api::LinkInput;
use xpupool_protocol::Calls;

use crate::boundary::{c_str, export, put, Res};
use crate::state::{driver, fail, lock};

/// One input of a link.
enum Input {
    Ptx(String),
    /// A cubin, fatbin, object or library (`CUjitInputType`) for the server's linker.
    Binary(CUjitInputType, Vec<u8>),
}

impl Input {
    fn len(&self) -> usize {
        match self {
            Input::Ptx(text) => text.len(),
            Input::Binary(_, bytes) => bytes.len(),
        }
    }
}

/// One link in progress: the inputs so far, and the linked image once done.
#[derive(Default)]
struct Link {
    inputs: Vec<Input>,
    output: Option<Vec<u8>>,
}

/// Inputs one link may take, and their bytes, at most.
const MAX_INPUTS: usize = xpupool_protocol::api::MAX_LINK_INPUTS;
const MAX_BYTES: usize = 1 << 30;

fn links() -> &'static Mutex<(HashMap<u64, Link>, u64)> {
    static LINKS: OnceLock<Mutex<(HashMap<u64, Link>, u64)>> = OnceLock::new();
    LINKS.get_or_init(|| Mutex::new((HashMap::new(), 0x6c00_0000)))
}

/// PTX text: a size may count its terminating NUL.
fn ptx_text(bytes: &[u8]) -> Res<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end])
        .map(str::to_owned)
        .map_err(|_| CUDA_ERROR_INVALID_PTX)
}

fn add(state: CUlinkState, kind: CUjitInputType, bytes: &[u8]) -> Res {
    let input = match kind {
        CU_JIT_INPUT_PTX => Input::Ptx(ptx_text(bytes)?),
        // A fatbin's PTX links here (the newest it has); one without PTX goes
        // to the server's linker whole.
        CU_JIT_INPUT_FATBINARY => {
            let entries =
                xpupool_fatbin::parse_fatbin(bytes).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
            match xpupool_fatbin::best_ptx(&entries, u32::MAX) {
                Some(ptx) => Input::Ptx(ptx_text(&ptx.data)?),
                None => Input::Binary(kind, bytes.to_vec()),
            }
        }
        // A cubin is an ELF file: anything else is refused at once, as NVIDIA's
        // driver refuses it (seen with driver 580), not when the link completes.
        CU_JIT_INPUT_CUBIN if !bytes.starts_with(b"\x7fELF") => {
            return Err(CUDA_ERROR_INVALID_IMAGE)
        }
        CU_JIT_INPUT_CUBIN | CU_JIT_INPUT_OBJECT | CU_JIT_INPUT_LIBRARY => {
            Input::Binary(kind, bytes.to_vec())
        }
        _ => {
            tracing::warn!(kind, "the JIT linker of xpupool does not take NVVM inputs");
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
    };
    let mut table = lock(links());
    let link = table
        .0
        .get_mut(&(state as u64))
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let so_far: usize = link.inputs.iter().map(Input::len).sum();
    if link.inputs.len() >= MAX_INPUTS || so_far + input.len() > MAX_BYTES {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    link.inputs.push(input);
    Ok(())
}

/// The linked image of `inputs`: joined here if all are PTX, else by the
/// server's linker for the current device.
fn complete(inputs: &[Input]) -> Res<Vec<u8>> {
    let texts: Option<Vec<String>> = inputs
        .iter()
        .map(|i| match i {
            Input::Ptx(text) => Some(text.clone()),
            Input::Binary(..) => None,
        })
        .collect();
    if let Some(texts) = texts {
        let mut bytes = join(&texts).into_bytes();
        bytes.push(0);
        return Ok(bytes);
    }
    let wire = inputs
        .iter()
        .map(|i| match i {
            Input::Ptx(text) => LinkInput {
                kind: CU_JIT_INPUT_PTX,
                data: ByteBuf::from(text.as_bytes().to_vec()),
            },
            Input::Binary(kind, bytes) => LinkInput {
                kind: *kind,
                data: ByteBuf::from(bytes.clone()),
            },
        })
        .collect();
    let d = driver()?;
    let device = d.current_device();
    let image = d.conn.link(device as u32, wire).map_err(fail)?;
    Ok(image.into_vec())
}

/// The inputs as one module: the first whole, the others without the directives
/// only a module's start may have. An `.extern .func` that another input defines
/// becomes a plain declaration of that function (`.visible`), as one module has it.
fn join(inputs: &[String]) -> String {
    let defined: Vec<String> = inputs.iter().flat_map(|i| defined_functions(i)).collect();
    let mut out = String::new();
    for (i, input) in inputs.iter().enumerate() {
        for line in input.lines() {
            let head = line.trim_start();
            let directive = [".version", ".target", ".address_size"]
                .iter()
                .any(|d| head.starts_with(d));
            if i > 0 && directive {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    let mut joined = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find(".extern") {
        joined.push_str(&rest[..at]);
        let after = &rest[at + ".extern".len()..];
        let resolved = after
            .trim_start()
            .strip_prefix(".func")
            .and_then(function_name)
            .is_some_and(|name| defined.iter().any(|d| d == name));
        joined.push_str(if resolved { ".visible" } else { ".extern" });
        rest = after;
    }
    joined.push_str(rest);
    joined
}

/// The name of the function whose declaration follows `.func` in `text`: after
/// an optional parenthesised return parameter.
fn function_name(text: &str) -> Option<&str> {
    let mut t = text.trim_start();
    if t.starts_with('(') {
        t = t[t.find(')')? + 1..].trim_start();
    }
    let end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(t.len());
    (end > 0).then(|| &t[..end])
}

/// The functions an input defines (with a body): `.func` not under `.extern`.
fn defined_functions(input: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(at) = rest.find(".func") {
        let before = rest[..at].trim_end();
        let after = &rest[at + ".func".len()..];
        if !before.ends_with(".extern") {
            if let Some(name) = function_name(after) {
                // A definition has a body before the next `;` at its top level.
                let body = after.find('{');
                let semi = after.find(';');
                if body.is_some_and(|b| semi.is_none_or(|s| b < s)) {
                    out.push(name.to_owned());
                }
            }
        }
        rest = after;
    }
    out
}

fn create(out: *mut CUlinkState) -> Res {
    let mut table = lock(links());
    table.1 += 0x10;
    let handle = table.1;
    table.0.insert(handle, Link::default());
    put(out, handle as CUlinkState)
}

fn add_data(state: CUlinkState, kind: CUjitInputType, data: *mut c_void, size: usize) -> Res {
    if data.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `size` bytes at `data`, as the caller says.
    let bytes = unsafe { std::slice::from_raw_parts(data as *const u8, size) };
    add(state, kind, bytes)
}

fn add_file(state: CUlinkState, kind: CUjitInputType, path: *const c_char) -> Res {
    let path = c_str(path)?;
    let bytes = std::fs::read(path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    add(state, kind, &bytes)
}

export! {
    fn cuLinkCreate_v2(_count: c_uint, _options: *mut CUjit_option, _values: *mut *mut c_void, out: *mut CUlinkState) { create(out) }
    fn cuLinkCreate(_count: c_uint, _options: *mut CUjit_option, _values: *mut *mut c_void, out: *mut CUlinkState) { create(out) }
    fn cuLinkAddData_v2(state: CUlinkState, kind: CUjitInputType, data: *mut c_void, size: usize, _name: *const c_char, _count: c_uint, _options: *mut CUjit_option, _values: *mut *mut c_void) { add_data(state, kind, data, size) }
    fn cuLinkAddData(state: CUlinkState, kind: CUjitInputType, data: *mut c_void, size: usize, _name: *const c_char, _count: c_uint, _options: *mut CUjit_option, _values: *mut *mut c_void) { add_data(state, kind, data, size) }
    fn cuLinkAddFile_v2(state: CUlinkState, kind: CUjitInputType, path: *const c_char, _count: c_uint, _options: *mut CUjit_option, _values: *mut *mut c_void) { add_file(state, kind, path) }
    fn cuLinkAddFile(state: CUlinkState, kind: CUjitInputType, path: *const c_char, _count: c_uint, _options: *mut CUjit_option, _values: *mut *mut c_void) { add_file(state, kind, path) }

    fn cuLinkComplete(state: CUlinkState, image: *mut *mut c_void, size: *mut usize) {
        if image.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let inputs = {
            let mut table = lock(links());
            let link = table.0.get_mut(&(state as u64)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
            if link.inputs.is_empty() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            std::mem::take(&mut link.inputs)
        };
        // Linked without the table's lock: the server's linker may take a while.
        let linked = complete(&inputs);
        let mut table = lock(links());
        let link = table.0.get_mut(&(state as u64)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        link.inputs = inputs;
        let output = link.output.insert(linked?);
        if !size.is_null() {
            put(size, output.len())?;
        }
        // Valid until cuLinkDestroy, as the driver's own output is.
        put(image, output.as_mut_ptr().cast::<c_void>())
    }

    fn cuLinkDestroy(state: CUlinkState) {
        lock(links()).0.remove(&(state as u64)).map(|_| ()).ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_inputs_and_resolves_their_externs() {
        let main = ".version 8.0\n.target sm_90\n.address_size 64\n.extern .func (.param .b32 r) add_seven\n(\n.param .b32 x\n)\n;\n.extern .func vprintf(.param .b64 a);\n.visible .entry k() { ret; }\n";
        let lib = ".version 8.0\n.target sm_90\n.address_size 64\n.visible .func (.param .b32 r) add_seven(.param .b32 x)\n{\n ret;\n}\n";
        let joined = join(&[main.to_owned(), lib.to_owned()]);
        assert_eq!(joined.matches(".version").count(), 1);
        assert!(
            joined.contains(".visible .func (.param .b32 r) add_seven\n("),
            "{joined}"
        );
        // An extern no input defines stays one.
        assert!(joined.contains(".extern .func vprintf"), "{joined}");
        assert_eq!(defined_functions(lib), ["add_seven"]);
        assert!(defined_functions(main).is_empty());
    }

    #[test]
    fn fatbin_inputs_link_by_their_ptx_and_cubins_go_to_the_servers_linker() {
        let mut state: CUlinkState = std::ptr::null_mut();
        create(&mut state).unwrap();
        let fatbin = include_bytes!("../../../fatbin/tests/fixtures/lz4.fatbin");
        let cubin = include_bytes!("../../../fatbin/tests/fixtures/kernel.cubin");
        add(state, CU_JIT_INPUT_FATBINARY, fatbin).unwrap();
        add(state, CU_JIT_INPUT_CUBIN, cubin).unwrap();
        assert_eq!(
            add(state, CU_JIT_INPUT_NVVM, b"x"),
            Err(CUDA_ERROR_NOT_SUPPORTED)
        );
        assert_eq!(
            add(state, CU_JIT_INPUT_FATBINARY, b"not a fatbin"),
            Err(CUDA_ERROR_INVALID_IMAGE)
        );
        assert_eq!(
            add(state, CU_JIT_INPUT_CUBIN, b".version 8.0\n.target sm_90\n"),
            Err(CUDA_ERROR_INVALID_IMAGE)
        );
        let table = lock(links());
        let link = &table.0[&(state as u64)];
        assert_eq!(link.inputs.len(), 2);
        assert!(matches!(&link.inputs[0], Input::Ptx(text) if text.contains(".entry")));
        assert!(
            matches!(&link.inputs[1], Input::Binary(CU_JIT_INPUT_CUBIN, bytes) if bytes.len() == cubin.len())
        );
    }
}
