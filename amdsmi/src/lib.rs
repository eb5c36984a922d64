//! `libamd_smi.so` and `librocm_smi64.so` for xpupool: a stand-in for AMD's
//! monitoring libraries (AMD SMI, and the older ROCm SMI) that answers about the
//! devices an xpupool pool server presents, so that PyTorch's ROCm queries
//! (`torch.cuda.device_count`, `utilization`, `memory_usage`,
//! `device_memory_used`, `list_gpu_processes`, through the Python `amdsmi` package)
//! and `rocm-smi`-style tools see the pooled devices, with memory figures as the
//! tenant sees them (total is its limit, used what its sessions hold).
//!
//! One shared object exports both APIs; `xpupool run` puts it on LD_LIBRARY_PATH
//! under the names callers load (`libamd_smi.so`, `librocm_smi64.so.N`, …). The
//! first `amdsmi_init` or `rsmi_init` connects once to the server named by
//! `XPUPOOL_SERVER` (with `XPUPOOL_SERVER_CERT` or `XPUPOOL_SERVER_FINGERPRINT`, and
//! `XPUPOOL_TOKEN`); device facts come from the server's welcome, memory and
//! utilisation from its per-tenant ledger. The implemented entry points are in
//! [`amdsmi`] and [`rsmi`]; every other name listed in src/amdsmi-symbols.txt and
//! src/rsmi-symbols.txt is exported and answers NOT_SUPPORTED (NOT_INIT /
//! INIT_ERROR before init), logging its name once. Logs go to stderr, filtered by
//! `XPUPOOL_LOG`.

// The exported functions mirror C names and take raw pointers by design.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod amdsmi;
mod boundary;
mod format;
mod rsmi;
mod state;
mod types;

mod unsupported {
    include!(concat!(env!("OUT_DIR"), "/unsupported.rs"));
}

mod symtab {
    include!(concat!(env!("OUT_DIR"), "/symtab.rs"));
}

/// How many listed functions have a real implementation (the rest answer NOT_SUPPORTED).
pub const IMPLEMENTED_FUNCTIONS: &str = env!("XPUPOOL_AMDSMI_IMPLEMENTED_COUNT");

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, CStr};
    use std::mem::offset_of;

    use crate::boundary::*;
    use crate::format::{self, Bdf};
    use crate::types::*;

    #[test]
    fn amdsmi_struct_layouts_match_rocm_7() {
        assert_eq!(size_of::<EngineUsage>(), 64);
        assert_eq!(size_of::<VramUsage>(), 16);
        assert_eq!(size_of::<ClkInfo>(), 32);
        assert_eq!(offset_of!(ClkInfo, reserved), 16);
        assert_eq!(size_of::<AsicInfo>(), 896);
        assert_eq!(offset_of!(AsicInfo, vendor_id), 256);
        assert_eq!(offset_of!(AsicInfo, subvendor_id), 516);
        assert_eq!(offset_of!(AsicInfo, device_id), 520);
        assert_eq!(offset_of!(AsicInfo, asic_serial), 532);
        assert_eq!(offset_of!(AsicInfo, num_of_compute_units), 792);
        assert_eq!(offset_of!(AsicInfo, target_graphics_version), 800);
        assert_eq!(offset_of!(AsicInfo, subsystem_id), 808);
        assert_eq!(size_of::<ProcInfo>(), 704);
        assert_eq!(offset_of!(ProcInfo, pid), 256);
        assert_eq!(offset_of!(ProcInfo, mem), 264);
        assert_eq!(offset_of!(ProcInfo, engine_usage), 272);
        assert_eq!(offset_of!(ProcInfo, memory_usage), 336);
        assert_eq!(offset_of!(ProcMemoryUsage, vram_mem), 16);
        assert_eq!(offset_of!(ProcInfo, container_name), 400);
        assert_eq!(offset_of!(ProcInfo, cu_occupancy), 656);
        assert_eq!(size_of::<AmdsmiVersion>(), 24);
        assert_eq!(offset_of!(AmdsmiVersion, build), 16);
    }

    #[test]
    fn rsmi_struct_layouts_match_rocm_smi_h() {
        assert_eq!(size_of::<RsmiVersion>(), 24);
        assert_eq!(size_of::<RsmiProcessInfo>(), 32);
        assert_eq!(offset_of!(RsmiProcessInfo, vram_usage), 8);
        assert_eq!(offset_of!(RsmiProcessInfo, cu_occupancy), 24);
    }

    #[test]
    fn bdf_packings() {
        let bdf = Bdf {
            domain: 0x12,
            bus: 0x1b,
            device: 0x03,
            function: 1,
        };
        assert_eq!(bdf.amdsmi(), 1 | (3 << 3) | (0x1b << 8) | (0x12 << 16));
        assert_eq!(bdf.rsmi(), (0x12 << 32) | (0x1b << 8) | (3 << 3) | 1);
        assert_eq!(bdf.text(), "0012:1b:03.1");
        let zero = Bdf {
            domain: 0,
            bus: 0,
            device: 0,
            function: 0,
        };
        assert_eq!((zero.amdsmi(), zero.rsmi()), (0, 0));
        assert_eq!(zero.text(), "0000:00:00.0");
    }

    #[test]
    fn uuid_and_serial_text() {
        let bytes: [u8; 16] = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(
            format::uuid_text(&bytes),
            "12345678-9abc-def0-0123-456789abcdef"
        );
        assert!(
            format::uuid_text(&bytes).len() < 38,
            "AMDSMI_GPU_UUID_SIZE fits"
        );
        assert_eq!(format::unique_id(&bytes), 0x1234_5678_9abc_def0);
        assert_eq!(format::asic_serial(&bytes), "0x123456789ABCDEF0");
        // PyTorch: asic_serial[2:].lower() is a prefix of the UUID text, dashes aside.
        let serial = format::asic_serial(&bytes)[2..].to_lowercase();
        assert!(format::uuid_text(&bytes)
            .replace('-', "")
            .starts_with(&serial));
    }

    #[test]
    fn figures() {
        assert_eq!(format::mib(0), 0);
        assert_eq!(format::mib((1 << 20) - 1), 0);
        assert_eq!(format::mib(80 << 30), 80 * 1024);
        assert_eq!(format::mib(u64::MAX), u32::MAX);
        assert_eq!(format::percent(1, 0), 0);
        assert_eq!(format::percent(50, 200), 25);
        assert_eq!(format::percent(500, 200), 100);
        assert_eq!(format::percent(u64::MAX, u64::MAX), 100);
    }

    #[test]
    fn status_texts() {
        for code in (0..=60).chain([0xFFFF_FFFE, 0xFFFF_FFFF]) {
            let text = amdsmi_status_text(code).to_str().unwrap();
            assert!(text.starts_with("AMDSMI_"), "{code}: {text}");
        }
        assert!(amdsmi_status_text(AMDSMI_STATUS_NOT_SUPPORTED)
            .to_str()
            .unwrap()
            .starts_with("AMDSMI_STATUS_NOT_SUPPORTED"));
        for code in (0..=17).chain([0xFFFF_FFFF]) {
            assert!(rsmi_status_text(code).is_some(), "{code}");
        }
        assert!(rsmi_status_text(18).is_none());
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: valid out-pointer; the answer is a static C string.
        unsafe {
            assert_eq!(
                crate::rsmi::rsmi_status_string(2, &mut text),
                RSMI_STATUS_SUCCESS
            );
            assert!(CStr::from_ptr(text)
                .to_str()
                .unwrap()
                .starts_with("RSMI_STATUS_NOT_SUPPORTED"));
            assert_eq!(
                crate::rsmi::rsmi_status_string(99, &mut text),
                RSMI_STATUS_INVALID_ARGS
            );
            assert_eq!(
                crate::rsmi::rsmi_status_string(0, std::ptr::null_mut()),
                RSMI_STATUS_INVALID_ARGS
            );
            assert_eq!(
                crate::amdsmi::amdsmi_status_code_to_string(32, &mut text),
                AMDSMI_STATUS_SUCCESS
            );
            assert!(CStr::from_ptr(text)
                .to_str()
                .unwrap()
                .starts_with("AMDSMI_STATUS_NOT_INIT"));
        }
    }

    #[test]
    fn strings_into_c_buffers() {
        let mut buf = [0x55 as c_char; 8];
        assert_eq!(put_str(buf.as_mut_ptr(), 8, "1234567"), Ok(()));
        assert_eq!(buf[7], 0);
        assert_eq!(
            put_str(buf.as_mut_ptr(), 8, "12345678"),
            Err(Fail::InsufficientSize)
        );
        assert_eq!(buf[7], 0, "truncated and terminated");
        assert_eq!(put_str(buf.as_mut_ptr(), 0, ""), Err(Fail::Invalid));
        assert_eq!(put_str(std::ptr::null_mut(), 8, "x"), Err(Fail::Invalid));
        assert_eq!(put(std::ptr::null_mut::<u32>(), 1), Err(Fail::Invalid));
        assert_eq!(read(std::ptr::null::<u32>()), Err(Fail::Invalid));
        let field: [c_char; 4] = c_chars("abcdef");
        assert_eq!(field, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
    }

    #[test]
    fn failures_map_to_each_api() {
        assert_eq!(Fail::NotInit.amdsmi(), AMDSMI_STATUS_NOT_INIT);
        assert_eq!(Fail::NoDriver.amdsmi(), AMDSMI_STATUS_DRIVER_NOT_LOADED);
        assert_eq!(Fail::NotSupported.amdsmi(), AMDSMI_STATUS_NOT_SUPPORTED);
        assert_eq!(Fail::NotInit.rsmi(), RSMI_STATUS_INIT_ERROR);
        assert_eq!(Fail::NotSupported.rsmi(), RSMI_STATUS_NOT_SUPPORTED);
        assert_eq!(Fail::InsufficientSize.rsmi(), RSMI_STATUS_INSUFFICIENT_SIZE);
        assert_eq!(
            Fail::OutOfResources.amdsmi(),
            AMDSMI_STATUS_OUT_OF_RESOURCES
        );
        assert_eq!(Fail::NotFound.rsmi(), RSMI_STATUS_NOT_FOUND);
        assert_eq!(Fail::Server.rsmi(), RSMI_STATUS_UNKNOWN_ERROR);
        assert_eq!(Fail::Server.amdsmi(), AMDSMI_STATUS_API_FAILED);
        assert_eq!(
            Fail::InsufficientSize.amdsmi(),
            AMDSMI_STATUS_INSUFFICIENT_SIZE
        );
        assert_eq!(Fail::Invalid.amdsmi(), AMDSMI_STATUS_INVAL);
        assert_eq!(Fail::NotFound.amdsmi(), AMDSMI_STATUS_NOT_FOUND);
    }

    #[test]
    fn every_listed_symbol_is_exported() {
        let names: Vec<&str> = crate::symtab::SYMTAB.iter().map(|(n, _)| *n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        for list in [
            include_str!("amdsmi-symbols.txt"),
            include_str!("rsmi-symbols.txt"),
        ] {
            for name in list
                .lines()
                .map(|line| line.split('#').next().unwrap_or("").trim())
                .filter(|name| !name.is_empty())
            {
                assert!(names.binary_search(&name).is_ok(), "{name} is not exported");
            }
        }
        for name in [
            "amdsmi_init",
            "amdsmi_get_processor_handles",
            "amdsmi_get_gpu_activity",
            "amdsmi_get_gpu_vram_usage",
            "amdsmi_get_power_info",
            "amdsmi_get_temp_metric",
            "rsmi_init",
            "rsmi_dev_memory_total_get",
            "rsmi_dev_busy_percent_get",
            "rsmi_dev_power_ave_get",
        ] {
            assert!(names.binary_search(&name).is_ok(), "{name} is not exported");
        }
        assert!(crate::IMPLEMENTED_FUNCTIONS.parse::<usize>().unwrap() >= 35);
    }

    /// Everything about an uninitialised library, in one test (the state is global).
    #[test]
    fn before_init_everything_is_uninitialised() {
        let mut count: u32 = 7;
        // SAFETY: valid out-pointers; no handle is dereferenced.
        unsafe {
            assert_eq!(
                crate::rsmi::rsmi_num_monitor_devices(&mut count),
                RSMI_STATUS_INIT_ERROR
            );
            assert_eq!(crate::rsmi::rsmi_shut_down(), RSMI_STATUS_INIT_ERROR);
            assert_eq!(crate::amdsmi::amdsmi_shut_down(), AMDSMI_STATUS_NOT_INIT);
            assert_eq!(
                crate::amdsmi::amdsmi_get_socket_handles(&mut count, std::ptr::null_mut()),
                AMDSMI_STATUS_NOT_INIT
            );
            assert_eq!(
                crate::amdsmi::amdsmi_get_gpu_vram_usage(
                    std::ptr::null_mut(),
                    std::ptr::null_mut()
                ),
                AMDSMI_STATUS_NOT_INIT
            );
            let mut version: RsmiVersion = std::mem::zeroed();
            assert_eq!(
                crate::rsmi::rsmi_version_get(&mut version),
                RSMI_STATUS_SUCCESS
            );
            assert_eq!((version.major, version.minor), (5, 2));
            let mut version: AmdsmiVersion = std::mem::zeroed();
            assert_eq!(
                crate::amdsmi::amdsmi_get_lib_version(&mut version),
                AMDSMI_STATUS_SUCCESS
            );
            assert_eq!(CStr::from_ptr(version.build).to_str().unwrap(), "xpupool");
        }
        assert_eq!(
            crate::unsupported::amdsmi_get_power_info(),
            AMDSMI_STATUS_NOT_INIT
        );
        assert_eq!(
            crate::unsupported::rsmi_dev_power_ave_get(),
            RSMI_STATUS_INIT_ERROR
        );
        if std::env::var_os("XPUPOOL_SERVER").is_none() {
            // SAFETY: plain integer arguments.
            unsafe {
                assert_eq!(
                    crate::amdsmi::amdsmi_init(2),
                    AMDSMI_STATUS_DRIVER_NOT_LOADED
                );
                assert_eq!(crate::rsmi::rsmi_init(0), RSMI_STATUS_INIT_ERROR);
                assert_eq!(
                    crate::rsmi::rsmi_num_monitor_devices(&mut count),
                    RSMI_STATUS_INIT_ERROR
                );
            }
        }
        assert_eq!(count, 7, "nothing written");
    }
}
