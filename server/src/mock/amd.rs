//! AMD GPU code objects on the mock: a HIP client sends the code object of its
//! bundle for the device (`Image::Elf`, `EM_AMDGPU`); the mock lays it out in
//! the session's device memory (code reaches its variables PC-relative, so the
//! image keeps its shape), lists its kernels with their explicit arguments, and
//! runs them on the gfx90a interpreter (`xpupool-amdgpu`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use xpupool_amdgpu::interp::{self, ExecError, Program};
use xpupool_protocol::api::{FunctionInfo, LaunchDims, ModuleInfo};
use xpupool_protocol::{code, CuError};

use super::{memory, LoadedModule, MockSession};

/// A loaded code object: the program and where its image lies.
pub(super) struct AmdCode {
    program: Program,
    base: u64,
}

/// `CU_FUNC_ATTRIBUTE_*` indices the HIP client reads (hipFuncGetAttributes).
const MAX_THREADS: u32 = 0;
const SHARED_BYTES: u32 = 1;
const LOCAL_BYTES: u32 = 3;

/// How long one kernel may run on either of the mock's interpreters (PTX and
/// gfx90a) before its launch fails with `LAUNCH_TIMEOUT`, as a device's watchdog
/// ends a kernel that never does: `XPUPOOL_KERNEL_TIME_LIMIT` seconds, by
/// default 600.
pub(super) fn kernel_time_limit() -> Duration {
    static LIMIT: OnceLock<Duration> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let seconds = std::env::var("XPUPOOL_KERNEL_TIME_LIMIT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(600.0);
        Duration::from_secs_f64(seconds)
    })
}

/// Whether `image` is an AMD GPU code object (ELF for machine 224).
pub(super) fn is_code_object(image: &[u8]) -> bool {
    image.len() > 20 && image.starts_with(b"\x7fELF") && image[18..20] == 224u16.to_le_bytes()
}

struct View<'a>(&'a memory::View<'a>);

impl interp::Memory for View<'_> {
    fn translate(&self, addr: u64, len: usize) -> Option<*mut u8> {
        self.0.translate(addr, len as u64)
    }
}

fn exec_error(e: ExecError) -> CuError {
    let code = match &e {
        ExecError::NotFound(_) => code::NOT_FOUND,
        ExecError::Unsupported { .. } => code::NO_BINARY_FOR_GPU,
        ExecError::BadLaunch { .. } => code::INVALID_VALUE,
        ExecError::Fault { .. } => code::ILLEGAL_ADDRESS,
        ExecError::TimedOut { .. } => code::LAUNCH_TIMEOUT,
    };
    CuError::new(code, e.to_string())
}

impl MockSession {
    pub(super) fn load_amdgpu(&mut self, device: u32, image: &[u8]) -> Result<ModuleInfo, CuError> {
        let program = Program::load(image)
            .map_err(|e| CuError::new(code::INVALID_IMAGE, format!("AMD GPU code object: {e}")))?;
        let bytes = program.layout().image.len() as u64;
        let (base, charge) =
            self.place_image(device, bytes, |base| program.layout().relocated(base))?;
        let handle = self.handle(0x4d4f);
        let mut loaded = LoadedModule {
            image: Some(base),
            globals: program
                .layout()
                .variables()
                .map(|v| (v.name.clone(), (base + v.value, v.size)))
                .collect(),
            ..LoadedModule::on(device)
        };
        let mut info = ModuleInfo {
            handle,
            functions: Vec::new(),
            no_code: None,
            device_bytes: charge,
        };
        for kernel in program.kernels() {
            let f = self.add_function(&mut loaded, handle, &kernel.name);
            let params = kernel.explicit_args();
            info.functions.push(FunctionInfo {
                name: kernel.name.clone(),
                handle: f,
                param_bytes: params.iter().map(|&(o, s)| o + s).max().unwrap_or(0),
                params,
                unusable: program
                    .unsupported(&kernel.name)
                    .filter(|_| !self.skip_kernels)
                    .map(str::to_owned),
                attributes: vec![
                    (MAX_THREADS, kernel.max_flat_workgroup_size.min(1024) as i32),
                    (SHARED_BYTES, kernel.group_segment_size as i32),
                    (LOCAL_BYTES, kernel.private_segment_size as i32),
                ],
            });
        }
        tracing::debug!(
            module = handle,
            functions = info.functions.len(),
            bytes,
            "AMD GPU code object loaded"
        );
        loaded.amd = Some(Arc::new(AmdCode { program, base }));
        self.modules.insert(handle, loaded);
        Ok(info)
    }

    /// Runs `name` of a loaded code object to its end.
    pub(super) fn run_amdgpu(
        &mut self,
        code: &AmdCode,
        name: &str,
        dims: &LaunchDims,
        params: &[u8],
    ) -> Result<(), CuError> {
        let running = crate::scheduler::current();
        let checkpoint = || {
            if let Some(r) = &running {
                r.checkpoint();
            }
        };
        let launch = interp::Launch {
            grid: dims.grid,
            block: dims.block,
            dynamic_lds: dims.shared_bytes,
            args: params,
            load_base: code.base,
            workers: self.workers,
            between_blocks: Some(&checkpoint),
            deadline: Some(Instant::now() + kernel_time_limit()),
        };
        // A bug in the interpreter ends this launch, not the server.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.memory
                .with_view(|view| interp::launch(&code.program, name, &launch, &View(view)))
        }))
        .unwrap_or_else(|_| {
            Err(ExecError::Unsupported {
                kernel: name.to_string(),
                what: "the interpreter failed (a bug: see the server's log)".into(),
            })
        });
        result.map_err(|e| {
            let error = exec_error(e);
            tracing::warn!(error = %error, "kernel failed");
            if super::is_sticky(error.code) {
                self.sticky = Some(error.clone());
            }
            error
        })
    }
}
