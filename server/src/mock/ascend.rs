//! Ascend kernel binaries on the stand-in device: loaded as a real device loads
//! them (the image copied into device memory and charged, its kernels listed
//! for look-ups), but never run. The device cannot execute AI Core code, so each
//! function is marked unusable and a launch that reaches it is refused, naming
//! the kernel and what the launch carried, after the same checks a device that
//! could run it makes.

use xpupool_protocol::api::{
    check_device_args, check_launch_args, FunctionInfo, ModuleInfo, Placeholder,
};
use xpupool_protocol::{code, CuError};

use super::{LoadedModule, MockSession};
use crate::ascend_elf;

/// Why the stand-in device refuses every Ascend kernel.
pub(super) const CANNOT_RUN: &str = "the stand-in device cannot run Ascend AI Core code";

impl MockSession {
    pub(super) fn load_ascend(
        &mut self,
        device: u32,
        magic: u32,
        image: &[u8],
    ) -> Result<ModuleInfo, CuError> {
        ascend_elf::check_magic(magic)?;
        let kernels = ascend_elf::kernels(image)?;
        let (base, charge) = self.place_image(device, image.len() as u64, |_| image.to_vec())?;
        let handle = self.handle(0x4d4f);
        let mut loaded = LoadedModule {
            ascend: true,
            image: Some(base),
            ..LoadedModule::on(device)
        };
        let mut info = ModuleInfo {
            handle,
            functions: Vec::new(),
            no_code: None,
            device_bytes: charge,
        };
        for name in kernels {
            let f = self.add_function(&mut loaded, handle, &name);
            info.functions.push(FunctionInfo {
                name,
                handle: f,
                params: Vec::new(),
                param_bytes: 0,
                unusable: (!self.skip_kernels).then(|| CANNOT_RUN.to_owned()),
                attributes: Vec::new(),
            });
        }
        self.modules.insert(handle, loaded);
        Ok(info)
    }

    /// [`xpupool_protocol::Api::launch_with_args`] and
    /// [`xpupool_protocol::Api::launch_with_device_args`]: checked as any
    /// launch, then refused (or, with `--kernels skip`, counted as skipped).
    pub(super) fn launch_ascend(
        &mut self,
        function: u64,
        stream: u64,
        args: AscendArgs<'_>,
    ) -> Result<(), CuError> {
        self.healthy()?;
        let f = self.function_in(function, stream)?;
        let (name, module) = (f.name.clone(), f.module);
        let (blocks, what) = match args {
            AscendArgs::Host {
                blocks,
                bytes,
                placeholders,
            } => {
                check_launch_args(bytes.len(), placeholders)?;
                if blocks == 0 {
                    return Err(CuError::new(code::INVALID_VALUE, "a launch of 0 blocks"));
                }
                let what = format!(
                    "{} bytes of arguments, {} placeholders",
                    bytes.len(),
                    placeholders.len()
                );
                (blocks, what)
            }
            AscendArgs::Device {
                blocks,
                address,
                size,
            } => {
                check_device_args(blocks, size)?;
                self.memory.check_span(address, size)?;
                (
                    blocks,
                    format!("{size} bytes of arguments in device memory"),
                )
            }
        };
        if !self.modules[&module].ascend {
            return Err(CuError::new(
                code::INVALID_VALUE,
                format!("{name} is not an Ascend kernel: launch it with its parameters"),
            ));
        }
        if self.skip_kernels {
            self.skipped += 1;
            return Ok(());
        }
        Err(CuError::new(
            code::NO_BINARY_FOR_GPU,
            format!("kernel {name} ({blocks} blocks, {what}): {CANNOT_RUN}"),
        ))
    }
}

/// An Ascend launch's arguments: a string from the host with its placeholders,
/// or a range of device memory.
pub(super) enum AscendArgs<'a> {
    Host {
        blocks: u32,
        bytes: &'a [u8],
        placeholders: &'a [Placeholder],
    },
    Device {
        blocks: u32,
        address: u64,
        size: u64,
    },
}
