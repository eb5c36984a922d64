//! Test helpers: a simple device-memory implementation and launch helpers.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use xpupool_ptx::{launch, ExecError, Launch, Memory, Module};

struct Alloc {
    base: u64,
    len: usize,
    // u64 storage keeps every allocation 8-byte aligned on the host too.
    data: Box<[u64]>,
}

/// Device memory made of separate host allocations at fake device addresses.
pub struct DevMem {
    allocs: RwLock<Vec<Alloc>>,
    next: Mutex<u64>,
}

// SAFETY: the raw pointers handed out point into boxes owned by `allocs`,
// which are never freed or moved while the DevMem lives; concurrent access
// through them is what the interpreter's atomics are for.
unsafe impl Sync for DevMem {}

impl Memory for DevMem {
    fn translate(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let allocs = self.allocs.read().unwrap();
        let a = allocs
            .iter()
            .find(|a| addr >= a.base && addr < a.base + a.len as u64)?;
        let off = (addr - a.base) as usize;
        if off + len > a.len {
            return None;
        }
        let p = a.data.as_ptr() as *mut u8;
        // SAFETY: off + len <= a.len <= size of the boxed buffer.
        Some(unsafe { p.add(off) })
    }
}

impl DevMem {
    pub fn new() -> Self {
        DevMem {
            allocs: RwLock::new(Vec::new()),
            next: Mutex::new(0x7000_0000),
        }
    }

    pub fn alloc(&self, len: usize) -> u64 {
        let mut next = self.next.lock().unwrap();
        let base = *next;
        *next += (len as u64).div_ceil(256) * 256 + 256;
        let data = vec![0u64; len.div_ceil(8).max(1)].into_boxed_slice();
        self.allocs.write().unwrap().push(Alloc { base, len, data });
        base
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        let p = self
            .translate(addr, bytes.len())
            .expect("write out of bounds");
        // SAFETY: translate checked the range; no launch is running.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let p = self.translate(addr, len).expect("read out of bounds");
        let mut v = vec![0u8; len];
        // SAFETY: translate checked the range; no launch is running.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len) };
        v
    }

    pub fn upload<T: Pod>(&self, vals: &[T]) -> u64 {
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.bytes()).collect();
        let a = self.alloc(bytes.len());
        self.write(a, &bytes);
        a
    }

    pub fn download<T: Pod>(&self, addr: u64, n: usize) -> Vec<T> {
        let b = self.read(addr, n * T::SIZE);
        b.chunks(T::SIZE).map(T::from_bytes).collect()
    }
}

pub trait Pod: Copy {
    const SIZE: usize;
    fn bytes(&self) -> Vec<u8>;
    fn from_bytes(b: &[u8]) -> Self;
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        impl Pod for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn bytes(&self) -> Vec<u8> { self.to_le_bytes().to_vec() }
            fn from_bytes(b: &[u8]) -> Self { <$t>::from_le_bytes(b.try_into().unwrap()) }
        }
    )*};
}
pod!(i8, u8, i16, u16, i32, u32, i64, u64, f32, f64);

/// A kernel argument.
#[derive(Clone, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    U32(u32),
    F32(f32),
    F64(f64),
    U8(u8),
    Bytes(Vec<u8>),
}

impl Arg {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Arg::Ptr(v) => v.to_le_bytes().to_vec(),
            Arg::I32(v) => v.to_le_bytes().to_vec(),
            Arg::U32(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
            Arg::F64(v) => v.to_le_bytes().to_vec(),
            Arg::U8(v) => vec![*v],
            Arg::Bytes(b) => b.clone(),
        }
    }
}

pub fn fixture() -> &'static Module {
    static M: std::sync::OnceLock<Module> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let src = include_str!("../fixtures/kernels.ptx");
        xpupool_ptx::parse_module(src).expect("fixture parses")
    })
}

/// Allocates the module's globals in `mem`; returns name -> address.
pub fn load_globals(m: &Module, mem: &DevMem) -> HashMap<String, u64> {
    m.globals()
        .iter()
        .map(|g| {
            let a = mem.alloc(g.size);
            mem.write(a, &g.init);
            (g.name.clone(), a)
        })
        .collect()
}

pub struct Cfg {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dyn_smem: u32,
    pub workers: usize,
}

pub fn cfg(grid: u32, block: u32) -> Cfg {
    Cfg {
        grid: [grid, 1, 1],
        block: [block, 1, 1],
        dyn_smem: 0,
        workers: 2,
    }
}

pub fn run_with(
    m: &Module,
    name: &str,
    c: &Cfg,
    args: &[Arg],
    mem: &DevMem,
    syms: &HashMap<String, u64>,
) -> Result<(), ExecError> {
    let info = m.kernel(name).unwrap_or_else(|| panic!("no kernel {name}"));
    assert_eq!(info.params.len(), args.len(), "argument count for {name}");
    let mut buf = vec![0u8; info.param_bytes];
    for (p, a) in info.params.iter().zip(args) {
        let b = a.bytes();
        assert_eq!(b.len(), p.size, "size of argument {a:?} of {name}");
        buf[p.offset..p.offset + p.size].copy_from_slice(&b);
    }
    let symbols = |s: &str| syms.get(s).copied();
    let l = Launch {
        grid: c.grid,
        block: c.block,
        dynamic_shared_bytes: c.dyn_smem,
        params: &buf,
        symbols: &symbols,
        workers: c.workers,
        between_blocks: None,
        grid_workspace: 0,
        deadline: None,
    };
    launch(m, name, &l, mem)
}

pub fn run(m: &Module, name: &str, c: &Cfg, args: &[Arg], mem: &DevMem) -> Result<(), ExecError> {
    run_with(m, name, c, args, mem, &HashMap::new())
}
