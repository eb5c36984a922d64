//! `libdcmi` (Ascend's device management interface, what `npu-smi`, Huawei's
//! npu-exporter, HAMi's device plugin and torch_npu's CPU binding call) for the
//! pooled device: each of the server's devices is a card with one chip, named
//! as `aclrtGetSocName` names it, whose memory is the tenant's quota and whose
//! use, utilisation and processes are the server's figures for it. What the
//! pool cannot measure (temperature, power, PCIe) answers
//! `DCMI_ERR_CODE_NOT_SUPPORT`, which those tools take as "not supported"; the
//! CPU affinity is every CPU of this machine (the device is not beside any).
//! Only the first API (`dcmi_*`) is exported: torch_npu switches to the second
//! (`dcmiv2_*`) if any of it is there.

use std::ffi::{c_char, c_int, c_uint};

use xpupool_protocol::{Calls, DeviceInfo};

use crate::runtime::{connection, device_attribute, device_info, SOC_NAME};
use crate::*;

/// `DCMI_OK` and the `DCMI_ERR_CODE_*` this answers.
const DCMI_OK: c_int = 0;
const INVALID_PARAMETER: c_int = -8001;
const INNER_ERR: c_int = -8005;
const INVALID_DEVICE_ID: c_int = -8007;
const DEVICE_NOT_EXIST: c_int = -8008;
const NOT_SUPPORT: c_int = -8255;
/// `dcmi_get_device_utilization_rate`'s input types.
const UTIL_AICORE: c_int = 2;
const UTIL_HBM: c_int = 6;
const UTIL_VECTORCORE: c_int = 12;
const UTIL_NPU: c_int = 13;
const UTIL_AICUBE: c_int = 14;
const MIB: u64 = 1 << 20;
/// `MAX_PROC_NUM_IN_DEVICE`: the processes one call lists.
const MAX_PROCESSES: usize = 32;

/// `struct dcmi_chip_info_v2` (`dcmi_chip_info` is its first four fields).
#[repr(C)]
pub struct ChipInfo {
    chip_type: [u8; 32],
    chip_name: [u8; 32],
    chip_ver: [u8; 32],
    aicore_cnt: c_uint,
    npu_name: [u8; 32],
}

/// `struct dcmi_hbm_info`.
#[repr(C)]
pub struct HbmInfo {
    memory_size: u64,
    freq: c_uint,
    memory_usage: u64,
    temp: c_int,
    bandwith_util_rate: c_uint,
}

/// `struct dcmi_get_memory_info_stru`.
#[repr(C)]
pub struct MemoryInfo {
    memory_size: u64,
    memory_available: u64,
    freq: c_uint,
    hugepagesize: u64,
    hugepages_total: u64,
    hugepages_free: u64,
    utiliza: c_uint,
    reserve: [u8; 60],
}

/// `struct dcmi_proc_mem_info`.
#[repr(C)]
pub struct ProcMemInfo {
    proc_id: c_int,
    proc_mem_usage: u64,
}

/// `struct dcmi_board_info`.
#[repr(C)]
pub struct BoardInfo {
    board_id: c_uint,
    pcb_id: c_uint,
    bom_id: c_uint,
    slot_id: c_uint,
}

/// Runs `f`, a DCMI call, never unwinding into C: a failure is its code.
fn dcmi(f: impl FnOnce() -> Result<(), c_int>) -> c_int {
    guard(|| match f() {
        Ok(()) => DCMI_OK,
        Err(code) => code,
    })
    .unwrap_or(INNER_ERR)
}

fn out<T>(p: *mut T, value: T) -> Result<(), c_int> {
    put(p, value).map_err(|_| INVALID_PARAMETER)
}

/// The chip `(card, chip)` names: the server's device `card` (chip 0).
fn chip(card: c_int, chip: c_int) -> Result<(u32, &'static DeviceInfo), c_int> {
    if chip != 0 {
        return Err(INVALID_DEVICE_ID);
    }
    let (_, d, info) = device_info(card.into()).map_err(|f| match f.code {
        ACL_ERROR_RT_INVALID_DEVICEID => INVALID_DEVICE_ID,
        _ => DEVICE_NOT_EXIST,
    })?;
    Ok((d, info))
}

/// The device's model as DCMI names it ("910B3"), from its SoC name.
fn chip_name(info: &DeviceInfo) -> String {
    let soc = if info.name.starts_with("Ascend") {
        &info.name
    } else {
        SOC_NAME
    };
    soc.trim_start_matches("Ascend").to_owned()
}

fn text<const N: usize>(s: &str) -> [u8; N] {
    let mut field = [0u8; N];
    let n = s.len().min(N - 1);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    field
}

/// `(total, used)` bytes of the tenant's memory on the server's device `d`.
fn memory(d: u32) -> Result<(u64, u64), c_int> {
    let c = connection().map_err(|_| DEVICE_NOT_EXIST)?;
    let (free, total) = c.mem_get_info(d).map_err(|_| INNER_ERR)?;
    Ok((total, total.saturating_sub(free)))
}

#[no_mangle]
pub extern "C" fn dcmi_init() -> c_int {
    dcmi(|| connection().map(|_| ()).map_err(|_| DEVICE_NOT_EXIST))
}

/// The cards: one per device of the server.
fn card_list(count: *mut c_int, list: *mut c_int, len: c_int) -> c_int {
    dcmi(|| {
        let c = connection().map_err(|_| DEVICE_NOT_EXIST)?;
        let n = c.welcome.devices.len().min(len.max(0) as usize);
        if list.is_null() && n > 0 {
            return Err(INVALID_PARAMETER);
        }
        for i in 0..n {
            // SAFETY: the caller's list of `len` ints; `i < len`.
            unsafe { list.add(i).write(i as c_int) };
        }
        out(count, n as c_int)
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_card_list(count: *mut c_int, list: *mut c_int, len: c_int) -> c_int {
    card_list(count, list, len)
}

#[no_mangle]
pub extern "C" fn dcmi_get_card_num_list(count: *mut c_int, list: *mut c_int, len: c_int) -> c_int {
    card_list(count, list, len)
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_num_in_card(card: c_int, count: *mut c_int) -> c_int {
    dcmi(|| {
        chip(card, 0)?;
        out(count, 1)
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_id_in_card(
    card: c_int,
    device_id_max: *mut c_int,
    mcu_id: *mut c_int,
    cpu_id: *mut c_int,
) -> c_int {
    dcmi(|| {
        chip(card, 0)?;
        out(device_id_max, 1)?;
        out(mcu_id, -1)?;
        out(cpu_id, -1)
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_logic_id(
    logic: *mut c_int,
    card: c_int,
    chip_id: c_int,
) -> c_int {
    dcmi(|| {
        chip(card, chip_id)?;
        out(logic, card)
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_card_id_device_id_from_logicid(
    card: *mut c_int,
    chip_id: *mut c_int,
    logic: c_uint,
) -> c_int {
    dcmi(|| {
        let logic = c_int::try_from(logic).map_err(|_| INVALID_DEVICE_ID)?;
        chip(logic, 0)?;
        out(card, logic)?;
        out(chip_id, 0)
    })
}

/// Logical and physical ids are one here.
fn same_id(from: c_uint, to: *mut c_uint) -> c_int {
    dcmi(|| {
        chip(c_int::try_from(from).map_err(|_| INVALID_DEVICE_ID)?, 0)?;
        out(to, from)
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_phyid_from_logicid(logic: c_uint, phy: *mut c_uint) -> c_int {
    same_id(logic, phy)
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_logicid_from_phyid(phy: c_uint, logic: *mut c_uint) -> c_int {
    same_id(phy, logic)
}

fn chip_info(card: c_int, chip_id: c_int) -> Result<ChipInfo, c_int> {
    let (d, info) = chip(card, chip_id)?;
    let name = chip_name(info);
    let cores = device_attribute(info, d, 101).unwrap_or(0);
    Ok(ChipInfo {
        chip_type: text("Ascend"),
        chip_name: text(&name),
        chip_ver: text("V1"),
        aicore_cnt: cores as c_uint,
        npu_name: text(&name),
    })
}

/// # Safety
/// `info`, if not NULL, points at a `struct dcmi_chip_info` (DCMI's contract).
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_device_chip_info(
    card: c_int,
    chip_id: c_int,
    info: *mut u8,
) -> c_int {
    dcmi(|| {
        let c = chip_info(card, chip_id)?;
        if info.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: the caller's `struct dcmi_chip_info`, the leading fields of ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&c as *const ChipInfo).cast::<u8>(),
                info,
                std::mem::offset_of!(ChipInfo, npu_name),
            )
        };
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_chip_info_v2(
    card: c_int,
    chip_id: c_int,
    info: *mut ChipInfo,
) -> c_int {
    dcmi(|| out(info, chip_info(card, chip_id)?))
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_hbm_info(
    card: c_int,
    chip_id: c_int,
    info: *mut HbmInfo,
) -> c_int {
    dcmi(|| {
        let (d, _) = chip(card, chip_id)?;
        let (total, used) = memory(d)?;
        out(
            info,
            HbmInfo {
                memory_size: total / MIB,
                freq: 0,
                memory_usage: used.div_ceil(MIB),
                temp: 0,
                bandwith_util_rate: 0,
            },
        )
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_memory_info_v3(
    card: c_int,
    chip_id: c_int,
    info: *mut MemoryInfo,
) -> c_int {
    dcmi(|| {
        let (d, _) = chip(card, chip_id)?;
        let (total, used) = memory(d)?;
        out(
            info,
            MemoryInfo {
                memory_size: total / MIB,
                memory_available: total.saturating_sub(used) / MIB,
                freq: 0,
                hugepagesize: 2048,
                hugepages_total: 0,
                hugepages_free: 0,
                utiliza: (used.saturating_mul(100) / total.max(1)) as c_uint,
                reserve: [0; 60],
            },
        )
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_utilization_rate(
    card: c_int,
    chip_id: c_int,
    kind: c_int,
    rate: *mut c_uint,
) -> c_int {
    dcmi(|| {
        let (d, _) = chip(card, chip_id)?;
        let value = match kind {
            UTIL_AICORE | UTIL_VECTORCORE | UTIL_NPU | UTIL_AICUBE => {
                let c = connection().map_err(|_| DEVICE_NOT_EXIST)?;
                c.device_usage(d)
                    .map_err(|_| INNER_ERR)?
                    .utilization_percent
                    .min(100)
            }
            UTIL_HBM => {
                let (total, used) = memory(d)?;
                (used.saturating_mul(100) / total.max(1)) as u32
            }
            _ => return Err(NOT_SUPPORT),
        };
        out(rate, value)
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_health(
    card: c_int,
    chip_id: c_int,
    health: *mut c_uint,
) -> c_int {
    dcmi(|| {
        chip(card, chip_id)?;
        out(health, 0)
    })
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_type(card: c_int, chip_id: c_int, kind: *mut c_int) -> c_int {
    dcmi(|| {
        chip(card, chip_id)?;
        out(kind, 0) // NPU_TYPE
    })
}

/// What the pool does not measure.
macro_rules! not_measured {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name(card: c_int, chip_id: c_int, $($arg: $ty),*) -> c_int {
            $(let _ = $arg;)*
            dcmi(|| {
                chip(card, chip_id)?;
                Err(NOT_SUPPORT)
            })
        }
    )*};
}

not_measured! {
    dcmi_get_device_temperature(temperature: *mut c_int);
    dcmi_get_device_power_info(power: *mut c_int);
    dcmi_get_device_pcie_info_v2(info: *mut u8);
    dcmi_get_device_frequency(kind: c_int, frequency: *mut c_uint);
}

#[no_mangle]
pub extern "C" fn dcmi_get_device_board_info(
    card: c_int,
    chip_id: c_int,
    info: *mut BoardInfo,
) -> c_int {
    dcmi(|| {
        chip(card, chip_id)?;
        out(
            info,
            BoardInfo {
                board_id: 0,
                pcb_id: 0,
                bom_id: 0,
                slot_id: card as c_uint,
            },
        )
    })
}

/// The die id: the pooled device's UUID, in four words (and a zero).
#[no_mangle]
pub extern "C" fn dcmi_get_device_die_v2(
    card: c_int,
    chip_id: c_int,
    _kind: c_int,
    die: *mut [c_uint; 5],
) -> c_int {
    dcmi(|| {
        let (_, info) = chip(card, chip_id)?;
        let mut words = [0 as c_uint; 5];
        for (w, b) in words.iter_mut().zip(info.uuid.chunks_exact(4)) {
            *w = c_uint::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        out(die, words)
    })
}

/// The tenant's processes on the device and the bytes each holds: at most 32,
/// DCMI's own limit (`*count` is only an output, as DCMI documents it).
///
/// # Safety
/// `list` has room for 32 entries (DCMI's contract).
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_device_resource_info(
    card: c_int,
    chip_id: c_int,
    list: *mut ProcMemInfo,
    count: *mut c_int,
) -> c_int {
    dcmi(|| {
        let (d, _) = chip(card, chip_id)?;
        if count.is_null() || list.is_null() {
            return Err(INVALID_PARAMETER);
        }
        let c = connection().map_err(|_| DEVICE_NOT_EXIST)?;
        let usage = c.device_usage(d).map_err(|_| INNER_ERR)?;
        let n = usage.sessions.len().min(MAX_PROCESSES);
        for (i, &(pid, bytes)) in usage.sessions.iter().take(n).enumerate() {
            // SAFETY: the caller's list of 32 entries; `i < 32`.
            unsafe {
                list.add(i).write(ProcMemInfo {
                    proc_id: pid as c_int,
                    proc_mem_usage: bytes,
                })
            };
        }
        out(count, n as c_int)
    })
}

/// Every CPU of this machine, as "0-N": the device is beside none of them.
///
/// # Safety
/// `buffer` has room for 32 bytes (DCMI's documented size).
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_affinity_cpu_info_by_device_id(
    card: c_int,
    chip_id: c_int,
    buffer: *mut c_char,
    length: *mut c_int,
) -> c_int {
    dcmi(|| {
        chip(card, chip_id)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let list = format!("0-{}", cpus - 1);
        if buffer.is_null() || length.is_null() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: DCMI's callers pass a buffer of at least 32 bytes (its
        // documented size), which "0-N" with N < 10^28 fits with its NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(list.as_ptr().cast(), buffer, list.len());
            buffer.add(list.len()).write(0);
        }
        out(length, list.len() as c_int)
    })
}

/// # Safety
/// `buffer` has room for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_dcmi_version(buffer: *mut c_char, len: c_uint) -> c_int {
    dcmi(|| {
        let version = concat!("xpupool-", env!("CARGO_PKG_VERSION"));
        if buffer.is_null() || (len as usize) <= version.len() {
            return Err(INVALID_PARAMETER);
        }
        // SAFETY: the caller's buffer of `len` bytes, enough for the text and its NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(version.as_ptr().cast(), buffer, version.len());
            buffer.add(version.len()).write(0);
        }
        Ok(())
    })
}
