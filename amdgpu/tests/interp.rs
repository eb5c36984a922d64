//! The gfx90a interpreter on what Debian's hipcc builds from tests/fixtures/kernels.hip
//! (tests/fixtures/regen.sh): results checked against the same arithmetic on the CPU,
//! and the hostile cases (bad arguments, wild addresses, code it cannot run) as errors.

use std::cell::UnsafeCell;

use xpupool_amdgpu::interp::{launch, ExecError, Launch, Memory, Program};
use xpupool_amdgpu::{code_object_for, parse_bundle};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn program(bundle: &str, device: &str) -> Program {
    let bytes = fixture(bundle);
    let entries = parse_bundle(&bytes).unwrap();
    Program::load(&code_object_for(&entries, device).unwrap().data).unwrap()
}

/// One flat region of "device memory" at `BASE`.
struct Region {
    bytes: UnsafeCell<Vec<u8>>,
}

// SAFETY: the interpreter's threads reach the bytes only through raw pointers,
// as they reach a device's memory.
unsafe impl Sync for Region {}

const BASE: u64 = 0x7000_0000_0000;

impl Region {
    fn new(len: usize) -> Region {
        Region {
            bytes: UnsafeCell::new(vec![0; len]),
        }
    }
    fn write(&self, addr: u64, data: &[u8]) {
        let at = (addr - BASE) as usize;
        unsafe { (&mut *self.bytes.get())[at..at + data.len()].copy_from_slice(data) };
    }
    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let at = (addr - BASE) as usize;
        unsafe { (&*self.bytes.get())[at..at + len].to_vec() }
    }
}

impl Memory for Region {
    fn translate(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let at = addr.checked_sub(BASE)? as usize;
        let v = unsafe { &mut *self.bytes.get() };
        (at.checked_add(len)? <= v.len()).then(|| unsafe { v.as_mut_ptr().add(at) })
    }
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn run(
    p: &Program,
    kernel: &str,
    grid: [u32; 3],
    block: [u32; 3],
    args: &[u8],
    mem: &Region,
) -> Result<(), ExecError> {
    launch(
        p,
        kernel,
        &Launch {
            grid,
            block,
            dynamic_lds: 0,
            args,
            load_base: BASE,
            workers: 2,
            between_blocks: None,
            deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(60)),
        },
        mem,
    )
}

fn vadd_args(a: u64, b: u64, out: u64, n: i32, scale: f64) -> Vec<u8> {
    let mut args = Vec::new();
    for p in [a, b, out] {
        args.extend_from_slice(&p.to_le_bytes());
    }
    args.extend_from_slice(&n.to_le_bytes());
    args.extend_from_slice(&[0; 4]);
    args.extend_from_slice(&scale.to_le_bytes());
    args
}

#[test]
fn vadd_runs_as_the_cpu_computes_it_with_a_partial_last_block() {
    let p = program("bundle-v4.hipfb", "gfx90a:sramecc+:xnack-");
    assert_eq!(p.unsupported("vadd"), None);
    let n = 1000usize;
    let mem = Region::new(1 << 20);
    let (a, b, out) = (BASE + 0x1000, BASE + 0x10000, BASE + 0x20000);
    let av: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let bv: Vec<f32> = (0..n).map(|i| 3.0 - i as f32).collect();
    mem.write(a, &floats(&av));
    mem.write(b, &floats(&bv));
    // Past the end: must stay untouched.
    mem.write(out + 4 * n as u64, &floats(&[-7.0; 24]));
    run(
        &p,
        "vadd",
        [4, 1, 1],
        [256, 1, 1],
        &vadd_args(a, b, out, n as i32, 0.5),
        &mem,
    )
    .unwrap();
    let got = mem.read(out, 4 * (n + 24));
    for i in 0..n {
        let want = (av[i] + bv[i]) * 0.5f64 as f32;
        let have = f32::from_le_bytes(got[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(have, want, "element {i}");
    }
    for i in n..n + 24 {
        assert_eq!(
            f32::from_le_bytes(got[4 * i..4 * i + 4].try_into().unwrap()),
            -7.0
        );
    }
}

#[test]
fn struct_and_short_arguments_arrive_at_their_offsets() {
    let p = program("bundle-v4.hipfb", "gfx90a:sramecc+:xnack-");
    let mem = Region::new(1 << 16);
    let out = BASE + 0x100;
    // mixed(short s, Big{char c[3]; long long l; float f[5]}, int* out): 0:2, 8:40, 48:8.
    let mut args = vec![0u8; 56];
    args[0..2].copy_from_slice(&(-3i16).to_le_bytes());
    args[8..11].copy_from_slice(&[1, 20, 3]);
    args[16..24].copy_from_slice(&400i64.to_le_bytes());
    args[40..44].copy_from_slice(&5.75f32.to_le_bytes());
    args[48..56].copy_from_slice(&out.to_le_bytes());
    run(&p, "mixed", [1, 1, 1], [70, 1, 1], &args, &mem).unwrap();
    let got = mem.read(out, 4 * 71);
    for t in 0..70 {
        assert_eq!(
            i32::from_le_bytes(got[4 * t..4 * t + 4].try_into().unwrap()),
            -3 + 20 + 400 + 5,
            "thread {t}"
        );
    }
    assert_eq!(&got[280..284], &[0; 4]);
}

#[test]
fn code_object_v5_hidden_arguments_give_block_and_grid_sizes() {
    let p = program("bundle-v5.hipfb", "gfx90a");
    let mem = Region::new(1 << 12);
    let out = BASE + 0x40;
    run(&p, "sizes", [3, 1, 1], [64, 2, 1], &out.to_le_bytes(), &mem).unwrap();
    // out[0] = gridDim.x * blockDim.x + blockDim.y
    assert_eq!(
        i32::from_le_bytes(mem.read(out, 4).try_into().unwrap()),
        3 * 64 + 2
    );
}

#[test]
fn hostile_launches_are_errors_not_crashes() {
    let p = program("bundle-v4.hipfb", "gfx90a:sramecc+:xnack-");
    let mem = Region::new(1 << 16);
    let good = vadd_args(BASE, BASE + 0x1000, BASE + 0x2000, 64, 1.0);
    // Arguments of the wrong size.
    let short = run(&p, "vadd", [1, 1, 1], [64, 1, 1], &good[..20], &mem);
    assert!(
        matches!(short, Err(ExecError::BadLaunch { .. })),
        "{short:?}"
    );
    // More work-items than a workgroup holds, and an empty grid.
    let big = run(&p, "vadd", [1, 1, 1], [2048, 1, 1], &good, &mem);
    assert!(matches!(big, Err(ExecError::BadLaunch { .. })), "{big:?}");
    let empty = run(&p, "vadd", [0, 1, 1], [64, 1, 1], &good, &mem);
    assert!(
        matches!(empty, Err(ExecError::BadLaunch { .. })),
        "{empty:?}"
    );
    // Pointers to memory the session does not have: a fault naming the access.
    let wild = vadd_args(0xdead_0000, BASE, BASE, 64, 1.0);
    match run(&p, "vadd", [1, 1, 1], [64, 1, 1], &wild, &mem) {
        Err(ExecError::Fault { kernel, what, .. }) => {
            assert_eq!(kernel, "vadd");
            assert!(
                what.contains("global_load_dword") && what.contains("0xdead0000"),
                "{what}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run(&p, "nope", [1, 1, 1], [1, 1, 1], &[], &mem),
        Err(ExecError::NotFound(_))
    ));
}

#[test]
fn a_wave32_code_object_is_refused_at_launch_naming_why() {
    let p = program("bundle-v4.hipfb", "gfx1030");
    let why = p.unsupported("vadd").expect("gfx1030 code is not gfx90a's");
    assert!(why.contains("wave32"), "{why}");
    let mem = Region::new(1 << 12);
    let r = run(
        &p,
        "vadd",
        [1, 1, 1],
        [32, 1, 1],
        &vadd_args(BASE, BASE, BASE, 1, 1.0),
        &mem,
    );
    assert!(matches!(r, Err(ExecError::Unsupported { .. })), "{r:?}");
}

#[test]
fn every_truncation_and_corruption_of_a_code_object_loads_or_is_an_error_never_a_panic() {
    let bytes = fixture("bundle-v4.hipfb");
    let entries = parse_bundle(&bytes).unwrap();
    let co = code_object_for(&entries, "gfx90a:sramecc+:xnack-")
        .unwrap()
        .data
        .clone();
    for cut in (0..co.len()).step_by(5) {
        let _ = Program::load(&co[..cut]);
    }
    let mut flipped = co.clone();
    let mem = Region::new(1 << 16);
    for at in (0..co.len()).step_by(3) {
        flipped[at] ^= 0x5a;
        // Corrupted code may decode to other instructions: loading and running
        // them is an error or a result, never a panic or a hang.
        if let Ok(p) = Program::load(&flipped) {
            let _ = run(
                &p,
                "vadd",
                [1, 1, 1],
                [64, 1, 1],
                &vadd_args(BASE, BASE + 0x1000, BASE + 0x2000, 64, 1.0),
                &mem,
            );
        }
        flipped[at] ^= 0x5a;
    }
    assert!(Program::load(&flipped).is_ok());
}

#[test]
fn the_instruction_list_says_what_runs() {
    let all = xpupool_amdgpu::interp::instructions();
    let runs = |name: &str| {
        all.iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not a gfx90a mnemonic"))
            .1
    };
    for name in [
        "v_add_f32",
        "v_fma_f64",
        "s_and_saveexec_b64",
        "ds_bpermute_b32",
        "global_atomic_cmpswap_x2",
        "buffer_store_dword",
        "v_trig_preop_f64",
        "v_pk_fma_f32",
    ] {
        assert!(runs(name), "{name} should run");
    }
    // Matrix cores and buffer atomics are not interpreted: such kernels are refused.
    for name in ["v_mfma_f32_32x32x8f16", "buffer_atomic_add"] {
        assert!(!runs(name), "{name} should be refused");
    }
    assert!(all.len() > 900, "{} mnemonics", all.len());
}
