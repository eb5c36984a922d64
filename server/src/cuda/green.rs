//! SM ceilings (`sm_limit`) through green contexts (CUDA 12.4 and newer): a
//! session of a tenant with a ceiling gets, on each device, a green context made
//! of that fraction of the device's SMs (`cuDevSmResourceSplitByCount`, rounded
//! up to the device's partition granularity), and works in the context
//! `cuCtxFromGreenCtx` gives: its streams, its default stream and its kernels
//! run on those SMs only. Memory is the device's, shared with its primary context.
//!
//! Where the host runs an MPS daemon, the server starts each session's worker with
//! `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` instead (`worker.rs`), and no green
//! context is made. Where neither works, the session says why in a warning and
//! the tenant's time share still applies.

use std::ffi::c_uint;

use xpupool_cuda_types::{
    CUcontext, CUdevResource, CUdevResourceDesc, CUgreenCtx, CU_DEV_RESOURCE_TYPE_SM,
    CU_GREEN_CTX_DEFAULT_STREAM,
};

use super::Shared;

/// One device's green context, and the context it is used through.
pub(crate) struct Green {
    green: usize,
    pub(crate) context: usize,
    /// The SMs it has, of the device's.
    pub(crate) sms: u32,
    pub(crate) of: u32,
}

/// SMs for `fraction` of `total`: at least one, at most all.
pub(crate) fn sms_for(fraction: f64, total: u32) -> u32 {
    ((f64::from(total) * fraction).ceil() as u32).clamp(1, total.max(1))
}

/// Makes a green context of `fraction` of each device's SMs, or says why not.
pub(crate) fn create(shared: &Shared, fraction: f64) -> Result<Vec<Green>, String> {
    let d = &shared.driver;
    let missing =
        |name: &str| format!("the host's driver has no {name} (green contexts need CUDA 12.4)");
    let get = d
        .cuDeviceGetDevResource
        .ok_or_else(|| missing("cuDeviceGetDevResource"))?;
    let split = d
        .cuDevSmResourceSplitByCount
        .ok_or_else(|| missing("cuDevSmResourceSplitByCount"))?;
    let describe = d
        .cuDevResourceGenerateDesc
        .ok_or_else(|| missing("cuDevResourceGenerateDesc"))?;
    let create = d
        .cuGreenCtxCreate
        .ok_or_else(|| missing("cuGreenCtxCreate"))?;
    let convert = d
        .cuCtxFromGreenCtx
        .ok_or_else(|| missing("cuCtxFromGreenCtx"))?;
    let mut made: Vec<Green> = Vec::new();
    let fail = |made: Vec<Green>, what: &str, r: u32| {
        for g in made {
            g.destroy(shared);
        }
        format!("{what}: {}", d.error_name(r))
    };
    for device in &shared.devices {
        // SAFETY: plain C structures for which all zeroes is a valid (empty) value;
        // every call gets out-pointers to them and handles the driver gave.
        unsafe {
            let mut whole: CUdevResource = std::mem::zeroed();
            let r = get(device.device, &mut whole, CU_DEV_RESOURCE_TYPE_SM);
            if r != 0 {
                return Err(fail(made, "cuDeviceGetDevResource", r));
            }
            let of = whole.__bindgen_anon_1.sm.smCount;
            let want = sms_for(fraction, of);
            let mut part: CUdevResource = std::mem::zeroed();
            let mut rest: CUdevResource = std::mem::zeroed();
            let mut groups: c_uint = 1;
            let r = split(&mut part, &mut groups, &whole, &mut rest, 0, want);
            if r != 0 || groups != 1 {
                return Err(fail(made, "cuDevSmResourceSplitByCount", r));
            }
            let sms = part.__bindgen_anon_1.sm.smCount;
            let mut desc: CUdevResourceDesc = std::ptr::null_mut();
            let r = describe(&mut desc, &mut part, 1);
            if r != 0 {
                return Err(fail(made, "cuDevResourceGenerateDesc", r));
            }
            let mut green: CUgreenCtx = std::ptr::null_mut();
            let r = create(&mut green, desc, device.device, CU_GREEN_CTX_DEFAULT_STREAM);
            if r != 0 {
                return Err(fail(made, "cuGreenCtxCreate", r));
            }
            let mut context: CUcontext = std::ptr::null_mut();
            let g = Green {
                green: green as usize,
                context: 0,
                sms,
                of,
            };
            let r = convert(&mut context, green);
            if r != 0 {
                made.push(g);
                return Err(fail(made, "cuCtxFromGreenCtx", r));
            }
            made.push(Green {
                context: context as usize,
                ..g
            });
        }
    }
    Ok(made)
}

impl Green {
    /// Destroys the green context (its work is done or failed).
    pub(crate) fn destroy(self, shared: &Shared) {
        if let Some(destroy) = shared.driver.cuGreenCtxDestroy {
            // SAFETY: a green context made by `create`, destroyed once.
            unsafe { destroy(self.green as CUgreenCtx) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sms_for;

    #[test]
    fn a_fraction_of_the_sms_is_rounded_up_and_kept_within_the_device() {
        assert_eq!(sms_for(0.5, 132), 66);
        assert_eq!(sms_for(0.3, 132), 40);
        assert_eq!(sms_for(0.001, 132), 1);
        assert_eq!(sms_for(1.0, 132), 132);
    }
}
