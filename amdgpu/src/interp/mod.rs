//! An interpreter for the gfx90a (CDNA2, wave64) machine code in a code object,
//! so that a server with no AMD GPU runs a HIP program's kernels.
//!
//! [`Program::load`] lays the code object out ([`crate::loader`]), decodes its
//! code ([`decode`]) and finds each kernel's descriptor; a kernel containing an
//! instruction the interpreter cannot run is named at load, and its launch
//! fails naming the instruction — never a silent success. [`launch`] runs the
//! grid: workgroups spread over worker threads; within one, its waves take
//! turns on one thread, each running until it reaches `s_barrier` or ends, and
//! the barrier opens once every live wave is there.
//!
//! What a dispatch gives a wave is set up as the AMDHSA ABI says: the user SGPRs
//! the descriptor enables (dispatch packet, queue, kernarg segment, dispatch id,
//! flat-scratch init, private segment size), then workgroup IDs; work-item IDs
//! packed in v0 (gfx90a: X in bits 9:0, Y in 19:10, Z in 29:20); hidden kernel
//! arguments (code objects v4 and v5) filled as the HIP runtime fills them.

mod decode;
mod exec;
mod opcodes;
mod two_over_pi;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::code_object::{read_code_object, ArgKind, KernelInfo};
use crate::loader::{layout, Layout};
use crate::AmdgpuError;
use decode::{decode, Extra, Instr};
use exec::{Ctx, Exec, Flow, Wave, LANES};

/// Device memory as the interpreter reaches it.
pub trait Memory: Sync {
    /// Host pointer for `[addr, addr+len)` if the whole range lies in one live
    /// allocation, else `None`.
    fn translate(&self, addr: u64, len: usize) -> Option<*mut u8>;
}

/// Most LDS a workgroup has on gfx90a.
pub const MAX_LDS_BYTES: u32 = 64 * 1024;
/// Undecodable words a code object may have before it is refused outright.
const MAX_UNDECODABLE_WORDS: usize = 1 << 16;
/// The largest kernarg segment run (HIP's are 4 KiB of arguments and 256 bytes
/// of hidden ones at most).
pub const MAX_KERNARG_BYTES: u32 = 64 * 1024;
/// Loop iterations a wave runs before the other waves of its workgroup get a turn.
const YIELD_AFTER_BACK_EDGES: u32 = 1 << 14;
/// Most private memory per work-item (a wave's 64 lanes take 64 times this).
pub const MAX_PRIVATE_BYTES: u32 = 16 * 1024;
/// Most work-items in a workgroup.
pub const MAX_WORKGROUP_SIZE: u32 = 1024;
/// Where a launch's kernarg segment and dispatch packet appear to its waves
/// (outside any device allocation and the LDS/private apertures).
const KERNARG_BASE: u64 = 0x3000_0000_0000_0000;
const PACKET_BASE: u64 = 0x3000_0001_0000_0000;

/// A kernel descriptor (64 bytes at the `<kernel>.kd` symbol).
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    rsrc1: u32,
    rsrc2: u32,
    rsrc3: u32,
    properties: u16,
}

struct Kernel {
    info: KernelInfo,
    entry: u64,
    descriptor: Descriptor,
    /// Why it cannot run here.
    unsupported: Option<String>,
}

/// A code object ready to run.
pub struct Program {
    layout: Layout,
    code: Vec<Instr>,
    runs: Vec<Option<Exec>>,
    at: HashMap<u64, usize>,
    kernels: Vec<Kernel>,
}

/// One kernel launch.
pub struct Launch<'a> {
    /// Workgroups in each dimension, and work-items in each workgroup.
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic LDS bytes, beyond the kernel's own.
    pub dynamic_lds: u32,
    /// The explicit arguments, packed at their kernarg offsets.
    pub args: &'a [u8],
    /// Device address the program's image was copied to.
    pub load_base: u64,
    /// OS threads to spread workgroups over (at least 1).
    pub workers: usize,
    /// Called before each workgroup: where a scheduler may pause the kernel.
    pub between_blocks: Option<&'a (dyn Fn() + Sync)>,
    /// When the launch gives up (a kernel that never ends fails then, as a
    /// device's watchdog would end it); checked between workgroups and as
    /// waves take turns.
    pub deadline: Option<Instant>,
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    #[error("no kernel {0} in the code object")]
    NotFound(String),
    #[error("{kernel} cannot run on the AMD GPU interpreter: {what}")]
    Unsupported { kernel: String, what: String },
    #[error("{kernel}: {why}")]
    BadLaunch { kernel: String, why: String },
    #[error("{kernel}: still running after its time limit")]
    TimedOut { kernel: String },
    #[error("{kernel}: workgroup {group:?}, wave {wave}: {what}")]
    Fault {
        kernel: String,
        group: [u32; 3],
        wave: usize,
        what: String,
    },
}

impl Program {
    /// Lays out and decodes a code object (a raw ELF).
    pub fn load(bytes: &[u8]) -> Result<Program, AmdgpuError> {
        let object = read_code_object(bytes)?;
        let layout = layout(bytes)?;
        let mut code = Vec::new();
        // Words that do not decode: their addresses, and why for the first few.
        let mut bad: Vec<u64> = Vec::new();
        let mut why: HashMap<u64, String> = HashMap::new();
        for &(start, len) in &layout.code {
            let bytes = &layout.image[start as usize..(start + len) as usize];
            let mut at = 0usize;
            while at + 4 <= bytes.len() {
                match decode(bytes, start, at) {
                    Ok(i) => {
                        at += usize::from(i.len);
                        code.push(i);
                    }
                    Err(e) => {
                        if bad.len() >= MAX_UNDECODABLE_WORDS {
                            return Err(AmdgpuError::NotAnImage(format!(
                                "more than {MAX_UNDECODABLE_WORDS} words of its code are not gfx90a instructions"
                            )));
                        }
                        if why.len() < 64 {
                            why.insert(e.at, e.what);
                        }
                        bad.push(e.at);
                        at += 4;
                    }
                }
            }
        }
        // Segments come in address order in a well-formed object; make sure.
        code.sort_by_key(|i: &Instr| i.at);
        bad.sort_unstable();
        let runs: Vec<Option<Exec>> = code.iter().map(exec::semantics).collect();
        let at = code.iter().enumerate().map(|(n, i)| (i.at, n)).collect();
        let mut kernels = Vec::new();
        let version = object.version;
        for info in object.kernels {
            let kd = layout.symbol(&info.symbol).ok_or_else(|| {
                AmdgpuError::Metadata(format!(
                    "{}: no descriptor symbol {}",
                    info.name, info.symbol
                ))
            })?;
            let d = layout
                .image
                .get(kd.value as usize..kd.value as usize + 64)
                .ok_or(AmdgpuError::Truncated("kernel descriptor"))?;
            let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().expect("4 bytes"));
            let entry_offset = i64::from_le_bytes(d[16..24].try_into().expect("8 bytes"));
            let descriptor = Descriptor {
                rsrc3: u32_at(44),
                rsrc1: u32_at(48),
                rsrc2: u32_at(52),
                properties: u16::from_le_bytes([d[56], d[57]]),
            };
            let entry = kd.value.wrapping_add(entry_offset as u64);
            let end = layout
                .symbol(&info.name)
                .filter(|s| s.function && s.value == entry && s.size > 0)
                .map(|s| entry + s.size)
                .or_else(|| {
                    layout
                        .code
                        .iter()
                        .find(|&&(s, l)| (s..s + l).contains(&entry))
                        .map(|&(s, l)| s + l)
                })
                .unwrap_or(entry);
            let mut problems: Vec<String> = Vec::new();
            if info.kernarg_size > MAX_KERNARG_BYTES {
                problems.push(format!(
                    "a kernarg segment of {} bytes (at most {MAX_KERNARG_BYTES})",
                    info.kernarg_size
                ));
            }
            // printf and malloc in a kernel call the runtime's host-side service
            // through a buffer it passes: nothing here answers them. Code objects
            // v4 list that argument only for kernels that use it; v5's fixed
            // block of hidden arguments lists it for every kernel, so there a
            // kernel that calls the service faults on its null buffer instead.
            let hostcall = |a: &crate::KernelArg| matches!(&a.kind, ArgKind::Hidden(k) if k == "hidden_hostcall_buffer");
            if version == 4 && info.args.iter().any(hostcall) {
                problems.push(
                    "device printf or malloc (the runtime's host call service) is not supported"
                        .into(),
                );
            }
            if info.wavefront_size != 64 {
                problems.push(format!("wave{} (only wave64 is run)", info.wavefront_size));
            }
            if descriptor.properties >> 10 & 1 == 1 {
                problems.push("wave32".into());
            }
            if !layout
                .code
                .iter()
                .any(|&(s, l)| (s..s + l).contains(&entry))
            {
                problems.push(format!("its entry {entry:#x} is not in the code"));
            }
            // Code and bad words are in address order: the kernel's are a range.
            let first = code.partition_point(|i| i.at < entry);
            let last = code.partition_point(|i| i.at < end);
            for (i, run) in code[first..last].iter().zip(&runs[first..last]) {
                if run.is_none() && problems.len() < 8 {
                    let form = i
                        .unsupported_form
                        .map(|f| format!(" ({f})"))
                        .unwrap_or_default();
                    problems.push(format!("instruction {}{form} at {:#x}", i.name, i.at));
                }
            }
            let (first, last) = (
                bad.partition_point(|&a| a < entry),
                bad.partition_point(|&a| a < end),
            );
            for addr in bad[first..last].iter().take(8) {
                let what = why
                    .get(addr)
                    .map_or("not a gfx90a instruction", String::as_str);
                problems.push(format!("at {addr:#x}: {what}"));
            }
            if last - first > 8 {
                problems.push(format!("{} words that do not decode", last - first));
            }
            problems.dedup();
            let unsupported = (!problems.is_empty()).then(|| {
                let more = problems.len().saturating_sub(4);
                let mut text = problems.into_iter().take(4).collect::<Vec<_>>().join("; ");
                if more > 0 {
                    text.push_str(&format!("; and {more} more"));
                }
                text
            });
            kernels.push(Kernel {
                info,
                entry,
                descriptor,
                unsupported,
            });
        }
        Ok(Program {
            layout,
            code,
            runs,
            at,
            kernels,
        })
    }

    /// The kernels, as the metadata describes them.
    pub fn kernels(&self) -> impl Iterator<Item = &KernelInfo> {
        self.kernels.iter().map(|k| &k.info)
    }

    /// Why `kernel` cannot run here, if it cannot.
    pub fn unsupported(&self, kernel: &str) -> Option<&str> {
        self.kernel(kernel).and_then(|k| k.unsupported.as_deref())
    }

    /// The loaded image, its symbols and relocations.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.info.name == name)
    }
}

/// Every gfx90a mnemonic of the formats decoded, and whether the interpreter
/// runs it (in its plain form: SDWA, DPP and AccVGPR forms aside).
pub fn instructions() -> Vec<(&'static str, bool)> {
    use decode::Format as F;
    let tables: [(F, &[(u16, &'static str)]); 15] = [
        (F::Sop2, opcodes::SOP2),
        (F::Sopk, opcodes::SOPK),
        (F::Sop1, opcodes::SOP1),
        (F::Sopc, opcodes::SOPC),
        (F::Sopp, opcodes::SOPP),
        (F::Smem, opcodes::SMEM),
        (F::Vop2, opcodes::VOP2),
        (F::Vop1, opcodes::VOP1),
        (F::Vopc, opcodes::VOPC),
        (F::Vop3, opcodes::VOP3),
        (F::Vop3p, opcodes::VOP3P),
        (F::Ds, opcodes::DS),
        (F::Flat, opcodes::FLAT),
        (F::Global, opcodes::GLOBAL),
        (F::Mubuf, opcodes::MUBUF),
    ];
    let mut all: Vec<(&'static str, bool)> = Vec::new();
    for (format, table) in tables {
        for &(_, name) in table {
            let runs = exec::semantics(&Instr::new(format, name, 0)).is_some();
            match all.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 |= runs,
                None => all.push((name, runs)),
            }
        }
    }
    all.sort_unstable();
    all
}

/// What every wave of a launch reads: memory, the kernarg segment and the
/// dispatch packet.
pub(crate) struct Env<'a> {
    mem: &'a dyn Memory,
    kernarg: Vec<u8>,
    packet: [u8; 64],
    /// Device address of the code object's address 0.
    pub(crate) code_base: u64,
    pub(crate) started: Instant,
}

impl Env<'_> {
    fn overlay(&self, addr: u64, len: usize) -> Option<&[u8]> {
        for (base, bytes) in [
            (KERNARG_BASE, &self.kernarg[..]),
            (PACKET_BASE, &self.packet[..]),
        ] {
            if let Some(off) = addr.checked_sub(base) {
                if off < 0x1_0000_0000 {
                    return bytes.get(off as usize..off as usize + len).or(Some(&[]));
                }
            }
        }
        None
    }

    pub(crate) fn translate(&self, addr: u64, len: usize) -> Result<*mut u8, String> {
        self.mem.translate(addr, len).ok_or_else(|| {
            format!("an access of {len} bytes at {addr:#x}, outside the session's device memory")
        })
    }

    pub(crate) fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), String> {
        if let Some(bytes) = self.overlay(addr, out.len()) {
            if bytes.len() != out.len() {
                return Err(format!(
                    "a read of {} bytes at {addr:#x}, past the kernarg segment or dispatch packet",
                    out.len()
                ));
            }
            out.copy_from_slice(bytes);
            return Ok(());
        }
        let p = self.translate(addr, out.len())?;
        // SAFETY: translate gave a live range of `out.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    pub(crate) fn write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        if self.overlay(addr, data.len()).is_some() {
            return Err(format!(
                "a write at {addr:#x}, into the read-only kernarg segment or dispatch packet"
            ));
        }
        let p = self.translate(addr, data.len())?;
        // SAFETY: as in read.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }
}

fn put(buf: &mut [u8], at: u32, bytes: &[u8]) {
    let at = at as usize;
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// The kernarg segment: explicit arguments as given, hidden ones as the
/// runtime fills them.
fn kernarg(info: &KernelInfo, launch: &Launch<'_>, lds_dynamic: u32) -> Result<Vec<u8>, String> {
    let explicit_end = info
        .explicit_args()
        .iter()
        .map(|&(o, s)| o + s)
        .max()
        .unwrap_or(0);
    if launch.args.len() != explicit_end as usize {
        return Err(format!(
            "{} bytes of arguments given; its explicit arguments take {explicit_end}",
            launch.args.len()
        ));
    }
    // Code may load whole dwordx4/x8 at the end of the segment (a device's
    // kernarg allocations are padded): zeros follow it.
    let mut seg =
        vec![0u8; info.kernarg_size.max(explicit_end).next_multiple_of(64) as usize + 256];
    seg[..launch.args.len()].copy_from_slice(launch.args);
    for arg in &info.args {
        let ArgKind::Hidden(kind) = &arg.kind else {
            continue;
        };
        let dim = |d: usize| -> u32 { launch.grid[d] };
        match kind.as_str() {
            "hidden_block_count_x" => put(&mut seg, arg.offset, &dim(0).to_le_bytes()),
            "hidden_block_count_y" => put(&mut seg, arg.offset, &dim(1).to_le_bytes()),
            "hidden_block_count_z" => put(&mut seg, arg.offset, &dim(2).to_le_bytes()),
            "hidden_group_size_x" => put(
                &mut seg,
                arg.offset,
                &(launch.block[0] as u16).to_le_bytes(),
            ),
            "hidden_group_size_y" => put(
                &mut seg,
                arg.offset,
                &(launch.block[1] as u16).to_le_bytes(),
            ),
            "hidden_group_size_z" => put(
                &mut seg,
                arg.offset,
                &(launch.block[2] as u16).to_le_bytes(),
            ),
            // Grids are whole workgroups here: no partial one.
            "hidden_remainder_x" | "hidden_remainder_y" | "hidden_remainder_z" => {
                put(&mut seg, arg.offset, &0u16.to_le_bytes())
            }
            "hidden_grid_dims" => {
                let dims: u16 = if launch.grid[2] > 1 || launch.block[2] > 1 {
                    3
                } else if launch.grid[1] > 1 || launch.block[1] > 1 {
                    2
                } else {
                    1
                };
                put(&mut seg, arg.offset, &dims.to_le_bytes())
            }
            "hidden_dynamic_lds_size" => put(&mut seg, arg.offset, &lds_dynamic.to_le_bytes()),
            "hidden_shared_base" => put(&mut seg, arg.offset, &exec::SHARED_HI.to_le_bytes()),
            "hidden_private_base" => put(&mut seg, arg.offset, &exec::PRIVATE_HI.to_le_bytes()),
            // Global offsets are 0; the rest (printf/hostcall buffers, queues,
            // completion actions, multigrid sync, heap) have nothing behind them
            // here: a kernel that uses one reaches address 0 and faults.
            _ => {}
        }
    }
    Ok(seg)
}

fn packet(launch: &Launch<'_>, group_segment: u32) -> [u8; 64] {
    let mut p = [0u8; 64];
    let dims: u16 = if launch.grid[2] > 1 || launch.block[2] > 1 {
        3
    } else if launch.grid[1] > 1 || launch.block[1] > 1 {
        2
    } else {
        1
    };
    put(&mut p, 2, &dims.to_le_bytes());
    for d in 0..3 {
        put(
            &mut p,
            4 + 2 * d as u32,
            &(launch.block[d] as u16).to_le_bytes(),
        );
        let items = launch.grid[d].saturating_mul(launch.block[d]);
        put(&mut p, 12 + 4 * d as u32, &items.to_le_bytes());
    }
    put(&mut p, 28, &group_segment.to_le_bytes());
    put(&mut p, 40, &KERNARG_BASE.to_le_bytes());
    p
}

/// Runs `kernel` of `program` over the grid.
pub fn launch(
    program: &Program,
    kernel: &str,
    launch: &Launch<'_>,
    mem: &dyn Memory,
) -> Result<(), ExecError> {
    let k = program
        .kernel(kernel)
        .ok_or_else(|| ExecError::NotFound(kernel.to_string()))?;
    let bad = |why: String| ExecError::BadLaunch {
        kernel: kernel.to_string(),
        why,
    };
    if let Some(what) = &k.unsupported {
        return Err(ExecError::Unsupported {
            kernel: kernel.to_string(),
            what: what.clone(),
        });
    }
    let threads: u64 = launch.block.iter().map(|&b| u64::from(b)).product();
    let groups: u64 = launch.grid.iter().map(|&g| u64::from(g)).product();
    if threads == 0 || groups == 0 {
        return Err(bad(format!(
            "an empty launch: grid {:?}, block {:?}",
            launch.grid, launch.block
        )));
    }
    let most = u64::from(k.info.max_flat_workgroup_size.clamp(1, MAX_WORKGROUP_SIZE));
    if threads > most {
        return Err(bad(format!(
            "{threads} work-items in a workgroup; the kernel allows {most}"
        )));
    }
    if k.info.private_segment_size > MAX_PRIVATE_BYTES {
        return Err(bad(format!(
            "{} bytes of private memory per work-item; the interpreter gives at most {MAX_PRIVATE_BYTES}",
            k.info.private_segment_size
        )));
    }
    let lds = k.info.group_segment_size.saturating_add(launch.dynamic_lds);
    if lds > MAX_LDS_BYTES {
        return Err(bad(format!(
            "{lds} bytes of LDS; a workgroup has {MAX_LDS_BYTES}"
        )));
    }
    let env = Env {
        mem,
        kernarg: kernarg(&k.info, launch, launch.dynamic_lds).map_err(bad)?,
        packet: packet(launch, lds),
        code_base: launch.load_base,
        started: Instant::now(),
    };
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<ExecError>> = Mutex::new(None);
    let workers = launch.workers.clamp(1, 64).min(groups as usize);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let n = next.fetch_add(1, Ordering::Relaxed) as u64;
                if n >= groups {
                    return;
                }
                if let Some(pause) = launch.between_blocks {
                    pause();
                }
                if launch.deadline.is_some_and(|d| Instant::now() >= d) {
                    stop.store(true, Ordering::Relaxed);
                    let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                    f.get_or_insert(ExecError::TimedOut {
                        kernel: kernel.to_string(),
                    });
                    return;
                }
                let group = [
                    (n % u64::from(launch.grid[0])) as u32,
                    (n / u64::from(launch.grid[0]) % u64::from(launch.grid[1])) as u32,
                    (n / (u64::from(launch.grid[0]) * u64::from(launch.grid[1]))) as u32,
                ];
                if let Err(e) = run_group(program, k, &env, launch, group, lds as usize) {
                    stop.store(true, Ordering::Relaxed);
                    let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                    if f.is_none() {
                        *f = Some(e);
                    }
                    return;
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The SGPRs and VGPRs a wave starts with.
fn initial_wave(
    k: &Kernel,
    launch: &Launch<'_>,
    group: [u32; 3],
    wave: usize,
    threads: usize,
) -> Wave {
    let d = k.descriptor;
    // gfx90a: VGPRs (and AccVGPRs) are allocated in granules of 8.
    let vgprs = (((d.rsrc1 & 0x3f) as usize + 1) * 8).min(512);
    let mut w = Wave::new(vgprs);
    let mut s = 0usize;
    let put64 = |w: &mut Wave, s: &mut usize, v: u64| {
        w.s[*s] = v as u32;
        w.s[*s + 1] = (v >> 32) as u32;
        *s += 2;
    };
    if d.properties & 1 != 0 {
        // The private segment buffer resource: its base is the marker buffer
        // instructions reach the wave's private memory by.
        w.s[0] = exec::PRIVATE_RESOURCE as u32;
        w.s[1] = (exec::PRIVATE_RESOURCE >> 32) as u32;
        w.s[2] = u32::MAX;
        s += 4;
    }
    if d.properties & 2 != 0 {
        put64(&mut w, &mut s, PACKET_BASE);
    }
    if d.properties & 4 != 0 {
        put64(&mut w, &mut s, 0);
    }
    if d.properties & 8 != 0 {
        put64(&mut w, &mut s, KERNARG_BASE);
    }
    if d.properties & 16 != 0 {
        put64(&mut w, &mut s, 0);
    }
    if d.properties & 32 != 0 {
        put64(&mut w, &mut s, 0);
    }
    // (The private segment size, bit 6, would come last: nothing reads it here.)
    let _ = s;
    // System SGPRs follow the user SGPRs the descriptor counts.
    let mut s = ((d.rsrc2 >> 1) & 0x1f) as usize;
    for (bit, value) in [(7, group[0]), (8, group[1]), (9, group[2])] {
        if d.rsrc2 >> bit & 1 == 1 {
            w.s[s] = value;
            s += 1;
        }
    }
    if d.rsrc2 >> 10 & 1 == 1 {
        // Workgroup info: the number of waves in the group, minus one.
        w.s[s] = (threads.div_ceil(LANES) - 1) as u32;
        s += 1;
    }
    if d.rsrc2 & 1 == 1 {
        w.s[s] = 0;
    }
    let first = wave * LANES;
    let live = (threads - first).min(LANES);
    let [bx, by, _] = launch.block.map(|b| b as usize);
    let ids = (d.rsrc2 >> 11) & 3;
    for lane in 0..live {
        let t = first + lane;
        let (x, y, z) = (t % bx, (t / bx) % by, t / (bx * by));
        let mut v0 = x as u32;
        if ids >= 1 {
            v0 |= (y as u32) << 10;
        }
        if ids >= 2 {
            v0 |= (z as u32) << 20;
        }
        w.v[lane] = v0;
    }
    w.set_exec(if live == LANES {
        u64::MAX
    } else {
        (1u64 << live) - 1
    });
    w.pc = k.entry;
    w.private = vec![0; k.info.private_segment_size as usize * LANES];
    let _ = d.rsrc3;
    w
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Barrier,
    Done,
}

fn run_group(
    program: &Program,
    k: &Kernel,
    env: &Env<'_>,
    launch: &Launch<'_>,
    group: [u32; 3],
    lds_bytes: usize,
) -> Result<(), ExecError> {
    let threads = launch.block.iter().map(|&b| b as usize).product::<usize>();
    let count = threads.div_ceil(LANES);
    let mut waves: Vec<Wave> = (0..count)
        .map(|n| initial_wave(k, launch, group, n, threads))
        .collect();
    let mut states = vec![State::Running; count];
    let mut lds = vec![0u8; lds_bytes];
    let fault = |wave: usize, what: String| ExecError::Fault {
        kernel: k.info.name.clone(),
        group,
        wave,
        what,
    };
    loop {
        for n in 0..count {
            if states[n] != State::Running {
                continue;
            }
            states[n] = run_wave(program, &mut waves[n], &mut lds, env).map_err(|e| fault(n, e))?;
        }
        if states.iter().all(|&s| s == State::Done) {
            return Ok(());
        }
        if launch.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ExecError::TimedOut {
                kernel: k.info.name.clone(),
            });
        }
        // Once every wave still alive is at the barrier, it opens (a wave that
        // yielded in a loop runs on first).
        if !states.contains(&State::Running) {
            for s in states.iter_mut() {
                if *s == State::Barrier {
                    *s = State::Running;
                }
            }
        }
    }
}

/// Runs a wave until it reaches a barrier or ends.
fn run_wave(
    program: &Program,
    w: &mut Wave,
    lds: &mut [u8],
    env: &Env<'_>,
) -> Result<State, String> {
    let mut index = *program
        .at
        .get(&w.pc)
        .ok_or_else(|| format!("no instruction at {:#x}", w.pc))?;
    let mut back_edges = 0u32;
    let mut ctx = Ctx {
        w,
        lds,
        env,
        dpp_source: [0; 2 * LANES],
        dpp_exec: 0,
    };
    loop {
        let i = &program.code[index];
        let run = program.runs[index]
            .ok_or_else(|| format!("{} at {:#x} cannot be run", i.name, i.at))?;
        let flow = match &i.extra {
            Extra::None => run(&mut ctx, i),
            Extra::Dpp(d) => {
                // Lanes DPP does not write are out of EXEC while it runs.
                let exec = ctx.w.exec();
                ctx.snapshot_dpp_source(i)
                    .map_err(|e| format!("{} at {:#x}: {e}", i.name, i.at))?;
                ctx.w.set_exec(exec & exec::dpp_write_mask(d, exec));
                let flow = run(&mut ctx, i);
                if !i.name.starts_with("v_cmpx") {
                    ctx.w.set_exec(exec);
                }
                flow
            }
            Extra::Sdwa(s) => {
                let dst = usize::from(i.dst);
                let old: Vec<u32> = if i.format == decode::Format::Vopc || dst >= ctx.w.vgprs {
                    Vec::new()
                } else {
                    ctx.w.v[dst * LANES..(dst + 1) * LANES].to_vec()
                };
                let flow = run(&mut ctx, i);
                if !old.is_empty() {
                    let exec = ctx.w.exec();
                    for (lane, &was) in old.iter().enumerate() {
                        if exec >> lane & 1 == 1 {
                            let at = dst * LANES + lane;
                            ctx.w.v[at] = exec::sdwa_place(s, was, ctx.w.v[at]);
                        }
                    }
                }
                flow
            }
        }
        .map_err(|e| format!("{} at {:#x}: {e}", i.name, i.at))?;
        let next = match flow {
            Flow::Next => i.at + u64::from(i.len),
            Flow::Jump(target) => {
                if target <= i.at {
                    // A loop's back edge: now and then let the workgroup's other
                    // waves run, so one spinning on a flag another sets cannot hang.
                    back_edges += 1;
                    if back_edges == YIELD_AFTER_BACK_EDGES {
                        ctx.w.pc = target;
                        return Ok(State::Running);
                    }
                }
                target
            }
            Flow::End => return Ok(State::Done),
            Flow::Barrier => {
                ctx.w.pc = i.at + u64::from(i.len);
                return Ok(State::Barrier);
            }
        };
        index = match program.code.get(index + 1) {
            Some(n) if flow == Flow::Next && n.at == next => index + 1,
            _ => *program.at.get(&next).ok_or_else(|| {
                format!(
                    "{} at {:#x} goes to {next:#x}, where no instruction is",
                    i.name, i.at
                )
            })?,
        };
    }
}
