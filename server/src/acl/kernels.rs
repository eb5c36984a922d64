//! Kernel binaries outside aclnn on CANN: an Ascend binary the client loaded
//! (`aclrtBinaryLoadFromData`, `rtDevBinaryRegister`) is loaded here with the
//! same magic number, each of its kernels resolved by name, and launched with
//! its argument string and placeholders (`aclrtLaunchKernelWithHostArgs`).
//!
//! What a kernel does with the addresses in its arguments cannot be checked, as
//! on the cuda and hip backends: the session's worker process has its own
//! context, so the device's memory management keeps it to its own memory.

use std::collections::HashMap;
use std::ffi::{c_void, CString};

use xpupool_fatbin::Image;
use xpupool_protocol::api::{
    check_device_args, check_launch_args, FunctionInfo, ModuleInfo, Placeholder,
};
use xpupool_protocol::{code, CuError};

use super::runtime::{BinaryLoadOption, BinaryLoadOptions, Handle, ACL_SUCCESS, BINARY_LOAD_MAGIC};
use super::session::{unsupported, AclSession};
use crate::ascend_elf;
use crate::checks::{invalid_handle, invalid_value};

/// The session's loaded binaries (CANN's handle → its device and its
/// functions' handles) and functions (CANN's handle → its binary's).
#[derive(Default)]
pub(super) struct Binaries {
    binaries: HashMap<u64, (u32, Vec<u64>)>,
    functions: HashMap<u64, u64>,
}

impl Binaries {
    /// Every binary and its device, for the session's end.
    pub(super) fn take(&mut self) -> Vec<(u64, u32)> {
        self.functions.clear();
        self.binaries.drain().map(|(b, (d, _))| (b, d)).collect()
    }

    /// The device of one of the session's functions.
    fn device_of(&self, function: u64) -> Result<u32, CuError> {
        self.functions
            .get(&function)
            .and_then(|bin| self.binaries.get(bin))
            .map(|&(device, _)| device)
            .ok_or_else(|| invalid_handle("function", function))
    }
}

fn missing(what: &str) -> CuError {
    unsupported(&format!("{what} (the host's CANN has no such entry point)"))
}

impl AclSession {
    pub(super) fn load_binary(&mut self, device: u32, image: &[u8]) -> Result<ModuleInfo, CuError> {
        self.enter(device)?;
        let bad = |why: String| CuError::new(code::INVALID_IMAGE, why);
        let (magic, elf) = match Image::from_wire(image).map_err(|e| bad(format!("module image: {e}")))? {
            Image::Ascend { magic, elf } => (magic, elf),
            _ => {
                return Err(bad(
                    "the acl backend runs Ascend kernel binaries, not PTX, cubins, fatbins or AMD code objects"
                        .to_owned(),
                ))
            }
        };
        ascend_elf::check_magic(magic)?;
        let kernels = ascend_elf::kernels(&elf)?;
        let rt = &self.shared.cann.runtime;
        let load = rt
            .aclrtBinaryLoadFromData
            .ok_or_else(|| missing("aclrtBinaryLoadFromData"))?;
        let get = rt
            .aclrtBinaryGetFunction
            .ok_or_else(|| missing("aclrtBinaryGetFunction"))?;
        let mut option = BinaryLoadOption {
            kind: BINARY_LOAD_MAGIC,
            value: [magic, 0, 0, 0],
        };
        let options = BinaryLoadOptions {
            options: &mut option,
            count: 1,
        };
        let mut bin: Handle = std::ptr::null_mut();
        // SAFETY: a whole AI Core object (its symbols read above), alive across the
        // call, which copies what it keeps; one option; an out-pointer.
        let r = unsafe { load(elf.as_ptr().cast(), elf.len(), &options, &mut bin) };
        self.check(r, "aclrtBinaryLoadFromData")?;
        let mut info = ModuleInfo {
            handle: bin as u64,
            functions: Vec::with_capacity(kernels.len()),
            no_code: None,
            device_bytes: crate::quota::allocation_charge(elf.len().max(1) as u64)
                .unwrap_or(u64::MAX),
        };
        let mut resolved = Vec::new();
        for name in kernels {
            let mut f: Handle = std::ptr::null_mut();
            let r = match CString::new(name.as_str()) {
                // SAFETY: the binary just loaded, a C string, an out-pointer.
                Ok(c) => unsafe { get(bin, c.as_ptr(), &mut f) },
                Err(_) => -1,
            };
            let unusable = (r != ACL_SUCCESS || f.is_null()).then(|| {
                let why = self.check(r, "aclrtBinaryGetFunction").err();
                format!(
                    "CANN does not resolve it: {}",
                    why.map_or_else(|| "a NULL handle".to_owned(), |e| e.message)
                )
            });
            if unusable.is_none() {
                resolved.push(f as u64);
                self.binaries.functions.insert(f as u64, bin as u64);
            }
            info.functions.push(FunctionInfo {
                name,
                handle: if unusable.is_none() { f as u64 } else { 0 },
                params: Vec::new(),
                param_bytes: 0,
                unusable,
                attributes: Vec::new(),
            });
        }
        self.binaries
            .binaries
            .insert(bin as u64, (device, resolved));
        Ok(info)
    }

    pub(super) fn unload_binary(&mut self, module: u64) -> Result<(), CuError> {
        let unload = self
            .shared
            .cann
            .runtime
            .aclrtBinaryUnLoad
            .ok_or_else(|| missing("aclrtBinaryUnLoad"))?;
        let &(device, _) = self
            .binaries
            .binaries
            .get(&module)
            .ok_or_else(|| invalid_handle("module", module))?;
        // Its device first: a binary left in the table is unloaded at the end.
        self.enter(device)?;
        if let Some((_, functions)) = self.binaries.binaries.remove(&module) {
            for f in functions {
                self.binaries.functions.remove(&f);
            }
        }
        // SAFETY: a binary this session loaded, unloaded once (removed above).
        let r = unsafe { unload(module as Handle) };
        self.check(r, "aclrtBinaryUnLoad")
    }

    /// Unloads what the session still has loaded, at its end; the failures.
    pub(super) fn unload_all_binaries(&mut self) -> Vec<i32> {
        let Some(unload) = self.shared.cann.runtime.aclrtBinaryUnLoad else {
            return Vec::new();
        };
        let mut failures = Vec::new();
        for (bin, device) in self.binaries.take() {
            if self.shared.enter(device).is_err() {
                failures.push(-1);
            }
            // SAFETY: a binary of this session, unloaded once.
            failures.push(unsafe { unload(bin as Handle) });
        }
        failures
    }

    /// The device a launch of `function` in `stream` runs on: its binary's,
    /// whose stream it must be (or a default stream).
    fn launch_device(&self, function: u64, stream: u64) -> Result<u32, CuError> {
        let device = self.binaries.device_of(function)?;
        self.place.stream_on(stream, device, || {
            format!("the kernel is loaded on device {device}")
        })?;
        Ok(device)
    }

    /// Runs `launch` (CANN's launch call, in `stream`) on `device`, timed as
    /// executions are.
    fn timed_launch(
        &mut self,
        device: u32,
        stream: Handle,
        what: &str,
        launch: impl FnOnce() -> i32,
    ) -> Result<(), CuError> {
        self.enter(device)?;
        let times = self.times.entry(device).or_default();
        let timed = times.before(&self.shared.cann, stream);
        let r = launch();
        if let (Some(pair), Some(times)) = (timed, self.times.get_mut(&device)) {
            times.after(&self.shared.cann, stream, pair, r == ACL_SUCCESS);
        }
        self.check(r, what)
    }

    pub(super) fn launch_args(
        &mut self,
        function: u64,
        blocks: u32,
        stream: u64,
        mut args: Vec<u8>,
        mut placeholders: Vec<Placeholder>,
    ) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        let device = self.launch_device(function, stream)?;
        check_launch_args(args.len(), &placeholders)?;
        if blocks == 0 {
            return Err(invalid_value("a launch of 0 blocks"));
        }
        let launch = self
            .shared
            .cann
            .runtime
            .aclrtLaunchKernelWithHostArgs
            .ok_or_else(|| missing("aclrtLaunchKernelWithHostArgs"))?;
        let holders = if placeholders.is_empty() {
            std::ptr::null_mut()
        } else {
            placeholders.as_mut_ptr()
        };
        let count = placeholders.len();
        // SAFETY: a function this session resolved, a stream of this session;
        // the argument string and placeholders (checked against each other
        // above, `Placeholder` laid out as `aclrtPlaceHolderInfo`) are alive
        // across the call, which copies them.
        self.timed_launch(device, s, "aclrtLaunchKernelWithHostArgs", || unsafe {
            launch(
                function as Handle,
                blocks,
                s,
                std::ptr::null_mut(),
                args.as_mut_ptr().cast::<c_void>(),
                args.len(),
                holders,
                count,
            )
        })
    }

    pub(super) fn launch_device_args(
        &mut self,
        function: u64,
        blocks: u32,
        stream: u64,
        address: u64,
        size: u64,
    ) -> Result<(), CuError> {
        let s = self.stream(stream)?;
        let device = self.launch_device(function, stream)?;
        check_device_args(blocks, size)?;
        // The arguments are read by the device: they must be this session's.
        self.range(address, size)?;
        let launch = self
            .shared
            .cann
            .runtime
            .aclrtLaunchKernel
            .ok_or_else(|| missing("aclrtLaunchKernel"))?;
        // SAFETY: a function this session resolved, a stream of this session,
        // and `size` bytes of this session's device memory.
        self.timed_launch(device, s, "aclrtLaunchKernel", || unsafe {
            launch(
                function as Handle,
                blocks,
                address as *const c_void,
                size as usize,
                s,
            )
        })
    }
}
