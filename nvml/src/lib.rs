//! `libnvidia-ml.so.1` for xpupool: a stand-in for NVIDIA's management library (NVML)
//! that answers about the devices an xpupool pool server presents, so that PyTorch's
//! NVML queries and `nvidia-smi`-style tools (pynvml) see the pooled device, with
//! memory figures clamped to the tenant's limit.
//!
//! `xpupool run` preloads it beside the CUDA shim. `nvmlInit` connects once to the
//! server named by `XPUPOOL_SERVER` (with `XPUPOOL_SERVER_CERT` or
//! `XPUPOOL_SERVER_FINGERPRINT`, and `XPUPOOL_TOKEN`); device facts come from the
//! server's welcome, memory figures from the server's per-tenant ledger. The
//! implemented entry points are in [`api`]; every other name pynvml or PyTorch looks up
//! (src/symbols.txt) is exported and answers `NVML_ERROR_NOT_SUPPORTED`, logging its
//! name once. Logs go to stderr, filtered by `XPUPOOL_LOG`.

// The exported functions mirror C names and take raw pointers by design.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod api;
mod boundary;
mod format;
mod state;
mod types;

mod unsupported {
    include!(concat!(env!("OUT_DIR"), "/unsupported.rs"));
}

mod symtab {
    include!(concat!(env!("OUT_DIR"), "/symtab.rs"));
}

/// How many NVML functions have a real implementation (the rest answer NOT_SUPPORTED).
pub const IMPLEMENTED_FUNCTIONS: &str = env!("XPUPOOL_NVML_IMPLEMENTED_COUNT");

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_uint, CStr};

    use crate::boundary::*;
    use crate::format::{self, PciAddress};
    use crate::types::*;

    #[test]
    fn struct_sizes_match_nvml_h() {
        assert_eq!(size_of::<Memory>(), 24);
        assert_eq!(size_of::<MemoryV2>(), 40);
        assert_eq!(MEMORY_V2_VERSION, 0x0200_0028, "pynvml's nvmlMemory_v2");
        assert_eq!(size_of::<PciInfo>(), 68);
        assert_eq!(size_of::<PciInfoLegacy>(), 52);
        assert_eq!(std::mem::offset_of!(PciInfo, bus_id), 36);
        assert_eq!(std::mem::offset_of!(PciInfo, domain), 16);
        assert_eq!(size_of::<Utilization>(), 8);
        assert_eq!(size_of::<ProcessInfoV1>(), 16);
        assert_eq!(size_of::<ProcessInfo>(), 24);
        assert_eq!(std::mem::offset_of!(ProcessInfo, used_gpu_memory), 8);
        assert_eq!(std::mem::offset_of!(ProcessInfo, gpu_instance_id), 16);
    }

    #[test]
    fn uuid_text() {
        let bytes: [u8; 16] = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(
            xpupool_protocol::gpu_uuid_text(&bytes),
            "GPU-12345678-9abc-def0-0123-456789abcdef"
        );
        assert_eq!(
            xpupool_protocol::gpu_uuid_text(&[0; 16]),
            "GPU-00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            xpupool_protocol::gpu_uuid_text(&bytes).len() + 1,
            41,
            "NVML_DEVICE_UUID_BUFFER_SIZE fits"
        );
    }

    #[test]
    fn pci_bus_ids() {
        let pci = PciAddress {
            domain: 0,
            bus: 0x1b,
            device: 0,
        };
        assert_eq!(pci.bus_id(), "00000000:1B:00.0");
        assert_eq!(pci.bus_id_legacy(), "0000:1B:00.0");
        for text in [
            "00000000:1B:00.0",
            "0000:1b:00.0",
            "1B:00.0",
            "0000:1B:00",
            " 00000000:1b:00.0 ",
        ] {
            assert_eq!(PciAddress::parse(text), Some(pci), "{text}");
        }
        for text in ["", "1B", "0000:1B:00.1", "zz:00.0", "0:1:2:3"] {
            assert_eq!(PciAddress::parse(text), None, "{text}");
        }
        let info: [c_char; 32] = c_chars(&pci.bus_id());
        // SAFETY: c_chars NUL-terminates.
        let back = unsafe { CStr::from_ptr(info.as_ptr()) };
        assert_eq!(back.to_str().unwrap(), "00000000:1B:00.0");
    }

    #[test]
    fn version_strings() {
        assert_eq!(format::driver_version(13020), "xpupool-13.2");
        assert_eq!(format::driver_version(12080), "xpupool-12.8");
        assert_eq!(format::nvml_version(13020), "13.2-xpupool");
    }

    #[test]
    fn error_strings_for_every_code() {
        for code in (0..=30).chain([999, 12345]) {
            let text = crate::api::error_text(code);
            assert!(!text.is_empty(), "code {code}");
            assert!(
                text.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "code {code}"
            );
        }
        assert_eq!(crate::api::error_text(NVML_SUCCESS), "Success");
        assert_eq!(
            crate::api::error_text(NVML_ERROR_NOT_SUPPORTED),
            "Not Supported"
        );
        assert_eq!(
            crate::api::error_text(NVML_ERROR_UNINITIALIZED),
            "Uninitialized"
        );
        assert_eq!(
            crate::api::error_text(NVML_ERROR_GPU_IS_LOST),
            "GPU is lost"
        );
    }

    #[test]
    fn strings_into_c_buffers() {
        let mut buf = [0x55 as c_char; 8];
        assert_eq!(put_str(buf.as_mut_ptr(), 8, "1234567"), Ok(()));
        assert_eq!(buf[7], 0);
        assert_eq!(
            put_str(buf.as_mut_ptr(), 8, "12345678"),
            Err(NVML_ERROR_INSUFFICIENT_SIZE)
        );
        assert_eq!(
            put_str(std::ptr::null_mut(), 8, "x"),
            Err(NVML_ERROR_INVALID_ARGUMENT)
        );
        assert_eq!(
            put(std::ptr::null_mut::<u32>(), 1),
            Err(NVML_ERROR_INVALID_ARGUMENT)
        );
    }

    #[test]
    fn every_listed_symbol_is_exported() {
        let names: Vec<&str> = crate::symtab::SYMTAB.iter().map(|(n, _)| *n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        let listed = include_str!("symbols.txt")
            .lines()
            .map(|line| line.split('#').next().unwrap_or("").trim())
            .filter(|name| !name.is_empty());
        for name in listed {
            assert!(names.binary_search(&name).is_ok(), "{name} is not exported");
        }
        for name in [
            "nvmlInit",
            "nvmlInit_v2",
            "nvmlInitWithFlags",
            "nvmlShutdown",
            "nvmlErrorString",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetPciInfo",
        ] {
            assert!(names.binary_search(&name).is_ok(), "{name} is not exported");
        }
        assert!(crate::IMPLEMENTED_FUNCTIONS.parse::<usize>().unwrap() >= 50);
    }

    /// Everything about an uninitialised library, in one test (the state is global).
    #[test]
    fn before_init_everything_is_uninitialized() {
        let mut count: c_uint = 7;
        // SAFETY: valid out-pointers; no handle is dereferenced.
        unsafe {
            assert_eq!(
                crate::api::nvmlDeviceGetCount_v2(&mut count),
                NVML_ERROR_UNINITIALIZED
            );
            assert_eq!(crate::api::nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
            let mut handle: NvmlDevice = std::ptr::null_mut();
            assert_eq!(
                crate::api::nvmlDeviceGetHandleByIndex_v2(0, &mut handle),
                NVML_ERROR_UNINITIALIZED
            );
            assert_eq!(
                crate::api::nvmlDeviceGetMemoryInfo(handle, std::ptr::null_mut()),
                NVML_ERROR_UNINITIALIZED
            );
        }
        assert_eq!(
            crate::unsupported::nvmlDeviceGetSerial(),
            NVML_ERROR_UNINITIALIZED
        );
        if std::env::var_os("XPUPOOL_SERVER").is_none() {
            // SAFETY: no arguments.
            assert_eq!(
                unsafe { crate::api::nvmlInit_v2() },
                NVML_ERROR_DRIVER_NOT_LOADED
            );
            // SAFETY: as above.
            assert_eq!(
                unsafe { crate::api::nvmlInit() },
                NVML_ERROR_DRIVER_NOT_LOADED
            );
            // SAFETY: valid out-pointer.
            assert_eq!(
                unsafe { crate::api::nvmlDeviceGetCount_v2(&mut count) },
                NVML_ERROR_UNINITIALIZED
            );
        }
        assert_eq!(count, 7, "nothing written");
    }
}
