//! Runs the second fixture (tests/fixtures/extra.ptx, built with -lineinfo):
//! full-precision libm, switch statements, 64-bit intrinsics, block-wide
//! predicates, f16, device printf/assert and struct-passing device calls.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use xpupool_ptx::{parse_module, ExecError, Module};

fn extra() -> &'static Module {
    static M: std::sync::OnceLock<Module> = std::sync::OnceLock::new();
    M.get_or_init(|| parse_module(include_str!("fixtures/extra.ptx")).expect("extra.ptx parses"))
}

/// Runs with the module's globals (libm tables, printf strings) allocated.
fn run_g(m: &Module, name: &str, c: &Cfg, args: &[Arg], mem: &DevMem) -> Result<(), ExecError> {
    let syms = load_globals(m, mem);
    run_with(m, name, c, args, mem, &syms)
}

fn near(got: f64, want: f64, tol: f64) -> bool {
    got == want || (got - want).abs() <= tol * (1.0 + want.abs())
}

#[test]
fn all_kernels_supported_and_a_texture_nobody_made_faults() {
    for k in extra().kernels() {
        assert_eq!(k.unsupported, None, "{}", k.name);
    }
    let mem = DevMem::new();
    let out = mem.alloc(64);
    let e = run_g(
        extra(),
        "tex_fetch",
        &cfg(1, 1),
        &[Arg::Ptr(0), Arg::Ptr(out)],
        &mem,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ExecError::IllegalAddress {
                space: "texture object",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn libm_single_precision() {
    let m = extra();
    let mem = DevMem::new();
    let mut xs: Vec<f32> = (0..200).map(|i| i as f32 * 0.731 - 73.0).collect();
    xs.extend([1e6f32, -3.3e7, 123456.7, 0.0, -0.0, 1e-3]);
    let n = xs.len();
    let (dx, dout) = (mem.upload(&xs), mem.alloc(32 * n));
    run_g(
        m,
        "libm_f32",
        &cfg(n.div_ceil(64) as u32, 64),
        &[Arg::Ptr(dx), Arg::Ptr(dout), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let g: Vec<f32> = mem.download(dout, 8 * n);
    for (i, &x) in xs.iter().enumerate() {
        let v = x as f64;
        let want = [
            v.sin(),
            v.cos(),
            (x * 0.05) as f64,
            (x.abs() + 1.0) as f64,
            (x.abs() + 0.5) as f64,
            (x * 0.1) as f64,
            v.atan2(3.0),
            (x * 0.1) as f64,
        ];
        let want = [
            want[0],
            want[1],
            want[2].exp(),
            want[3].ln(),
            want[4].powf(1.7f32 as f64),
            want[5].tanh(),
            want[6],
            erf(want[7]),
        ];
        for k in 0..8 {
            let tol = if k == 4 { 4e-7 * 4.0 } else { 4e-7 };
            assert!(
                near(g[8 * i + k] as f64, want[k], tol),
                "x={x} k={k}: {} vs {}",
                g[8 * i + k],
                want[k]
            );
        }
    }
}

/// erf via a high-precision series / continued fraction (reference only).
fn erf(x: f64) -> f64 {
    if x.abs() > 3.0 {
        return x.signum() * (1.0 - erfc_cf(x.abs()));
    }
    let mut sum = 0.0;
    let mut term = x;
    let mut k = 0.0;
    while term.abs() > 1e-17 {
        sum += term / (2.0 * k + 1.0);
        k += 1.0;
        term *= -x * x / k;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn erfc_cf(x: f64) -> f64 {
    let mut f = 0.0;
    for k in (1..60).rev() {
        f = (k as f64 / 2.0) / (x + f);
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
}

#[test]
fn libm_double_precision() {
    let m = extra();
    let mem = DevMem::new();
    let mut xs: Vec<f64> = (0..100).map(|i| i as f64 * 1.37 - 60.0).collect();
    xs.extend([1e22, -3.7e15, 1e300, 2.5e-300, 0.0]);
    let n = xs.len();
    let (dx, dout) = (mem.upload(&xs), mem.alloc(48 * n));
    run_g(
        m,
        "libm_f64",
        &cfg(n.div_ceil(32) as u32, 32),
        &[Arg::Ptr(dx), Arg::Ptr(dout), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let g: Vec<f64> = mem.download(dout, 6 * n);
    for (i, &v) in xs.iter().enumerate() {
        let want = [
            v.sin(),
            (v * 0.05).exp(),
            (v.abs() + 1.0).ln(),
            v.abs().sqrt(),
            v / 7.0,
            (v.abs() + 0.5).powf(0.3),
        ];
        for k in 0..6 {
            assert!(
                near(g[6 * i + k], want[k], 1e-15),
                "v={v} k={k}: {} vs {}",
                g[6 * i + k],
                want[k]
            );
        }
    }
}

#[test]
fn switch_statement() {
    let m = extra();
    let mem = DevMem::new();
    let input: Vec<i32> = (0..512).map(|i| i * 37 - 9000).collect();
    let (din, dout) = (mem.upload(&input), mem.alloc(4 * 512));
    run_g(
        m,
        "switchy",
        &cfg(4, 128),
        &[Arg::Ptr(din), Arg::Ptr(dout), Arg::I32(512)],
        &mem,
    )
    .unwrap();
    let g: Vec<i32> = mem.download(dout, 512);
    for (i, &v) in input.iter().enumerate() {
        let want = match v & 15 {
            0 => v * 3,
            1 => v - 7,
            2 => v ^ 0x55,
            3 => v << 2,
            4 => -v,
            5 => v / 3,
            6 => v % 5,
            7 => v | 1,
            8 => 1000,
            9 => v + v * v,
            11 => 77,
            13 => v >> 1,
            _ => 0,
        };
        assert_eq!(g[i], want, "v={v}");
    }
}

#[test]
fn sixty_four_bit_intrinsics() {
    let m = extra();
    let mem = DevMem::new();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let n = 256;
    let mut a: Vec<u64> = (0..n).map(|_| rnd()).collect();
    let b: Vec<u64> = (0..n).map(|i| rnd() >> (i % 64)).collect();
    a[0] = 0;
    let (da, db, dout) = (mem.upload(&a), mem.upload(&b), mem.alloc(64 * n));
    run_g(
        m,
        "intrinsics64",
        &cfg(2, 128),
        &[
            Arg::Ptr(da),
            Arg::Ptr(db),
            Arg::Ptr(dout),
            Arg::I32(n as i32),
        ],
        &mem,
    )
    .unwrap();
    let g: Vec<u64> = mem.download(dout, 8 * n);
    for i in 0..n {
        let (x, y) = (a[i], b[i]);
        let ffs = if x == 0 { 0 } else { x.trailing_zeros() + 1 };
        let fun = ((((y as u32 as u64) << 32 | x as u32 as u64) << ((x >> 59) & 31)) >> 32) as u32;
        let sel = (y & 0x7777) as u32;
        let bytes = ((y as u32 as u64) << 32 | x as u32 as u64).to_le_bytes();
        let perm = (0..4).fold(0u32, |r, k| {
            r | (bytes[((sel >> (4 * k)) & 7) as usize] as u32) << (8 * k)
        });
        let want = [
            ((x as u128 * y as u128) >> 64) as u64,
            ((x as i64 as i128 * y as i64 as i128) >> 64) as u64,
            x.reverse_bits(),
            (x.count_ones() + 100 * y.leading_zeros() + 10000 * ffs) as u64,
            x / (y | 1),
            x % (y | 1),
            fun as u64,
            perm as u64,
        ];
        assert_eq!(&g[8 * i..8 * i + 8], &want, "x={x:#x} y={y:#x}");
    }
}

#[test]
fn syncthreads_count_and_or() {
    let m = extra();
    let mem = DevMem::new();
    let mut input: Vec<i32> = (0..256).map(|i| i % 97).collect();
    input[200] = -1;
    let (din, dout) = (mem.upload(&input), mem.alloc(4 * 6));
    run_g(
        m,
        "block_preds",
        &cfg(2, 128),
        &[Arg::Ptr(din), Arg::Ptr(dout)],
        &mem,
    )
    .unwrap();
    let g: Vec<i32> = mem.download(dout, 6);
    for b in 0..2 {
        let v = &input[128 * b..128 * b + 128];
        let want = [
            v.iter().filter(|&&x| x > 50).count() as i32,
            v.iter().all(|&x| x >= 0) as i32,
            v.iter().any(|&x| x > 99) as i32,
        ];
        assert_eq!(&g[3 * b..3 * b + 3], &want, "block {b}");
    }
}

#[test]
fn half_precision() {
    let m = extra();
    let mem = DevMem::new();
    let xs = [1.0f32, 0.1, 65504.0, 1e-5, 70000.0, -2.5, 1.0 / 3.0, 0.0];
    let want_bits: [u16; 8] = [0x3C00, 0x2E66, 0x7BFF, 0x00A8, 0x7C00, 0xC100, 0x3555, 0];
    let n = xs.len();
    let (dx, dout, dbits) = (mem.upload(&xs), mem.alloc(4 * n), mem.alloc(2 * n));
    run_g(
        m,
        "halfconv",
        &cfg(1, 32),
        &[
            Arg::Ptr(dx),
            Arg::Ptr(dout),
            Arg::Ptr(dbits),
            Arg::I32(n as i32),
        ],
        &mem,
    )
    .unwrap();
    let bits: Vec<u16> = mem.download(dbits, n);
    assert_eq!(bits, want_bits);
    let back: Vec<f32> = mem.download(dout, n);
    assert_eq!(back[0], 1.0);
    assert_eq!(back[2], 65504.0);
    assert_eq!(back[4], f32::INFINITY);
    assert_eq!(back[5], -2.5);
    assert!((back[1] - 0.1).abs() < 1e-4);
    let a: Vec<u16> = vec![0x3C00, 0x3555, 0x7BFF, 0xC100];
    let (da, dc) = (mem.upload(&a), mem.alloc(8));
    run_g(
        m,
        "halfmath",
        &cfg(1, 4),
        &[Arg::Ptr(da), Arg::Ptr(dc)],
        &mem,
    )
    .unwrap();
    assert_eq!(mem.download::<u16>(dc, 4), [0x4000, 0x3955, 0x7C00, 0xC500]);
}

#[test]
fn device_printf_runs() {
    let m = extra();
    let mem = DevMem::new();
    run_g(m, "printer", &cfg(1, 2), &[Arg::I32(42)], &mem).unwrap();
}

#[test]
fn device_assert() {
    let m = extra();
    let mem = DevMem::new();
    let good: Vec<i32> = (0..32).collect();
    let dg = mem.upload(&good);
    run_g(m, "asserter", &cfg(1, 32), &[Arg::Ptr(dg)], &mem).unwrap();
    let mut bad = good.clone();
    bad[5] = -3;
    let db = mem.upload(&bad);
    match run_g(m, "asserter", &cfg(1, 32), &[Arg::Ptr(db)], &mem) {
        Err(ExecError::AssertFailed(msg)) => {
            assert!(
                msg.contains("p[threadIdx.x] >= 0")
                    && msg.contains("extra.cu")
                    && msg.contains("thread [5,0,0]"),
                "{msg}"
            )
        }
        r => panic!("unexpected {r:?}"),
    }
}

#[test]
fn shared_float_atomics() {
    let m = extra();
    let mem = DevMem::new();
    let n = 1000usize;
    let input: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
    let (din, dout) = (mem.upload(&input), mem.upload(&[0f32; 4]));
    run_g(
        m,
        "shared_float_atomics",
        &cfg(8, 128),
        &[Arg::Ptr(din), Arg::Ptr(dout), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let g: Vec<f32> = mem.download(dout, 4);
    for k in 0..4 {
        let want: f32 = input
            .iter()
            .enumerate()
            .filter(|(i, _)| i & 3 == k)
            .map(|(_, v)| v)
            .sum();
        assert_eq!(g[k], want);
    }
}

#[test]
fn struct_passing_device_calls() {
    let m = extra();
    let mem = DevMem::new();
    let n = 100usize;
    let dout = mem.alloc(8 * n);
    run_g(
        m,
        "struct_calls",
        &cfg(1, 128),
        &[Arg::Ptr(dout), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let g: Vec<f64> = mem.download(dout, n);
    for i in 0..n {
        assert_eq!(g[i], 4.0 * i as f64);
    }
}

#[test]
fn dp4a_and_dp2a() {
    let m = extra();
    let mem = DevMem::new();
    let a: Vec<i32> = (0..64i64)
        .map(|i| (i * 0x1357_9BDF) as i32 ^ (i << 7) as i32)
        .collect();
    let b: Vec<i32> = (0..64i64).map(|i| (i * 0x2468_ACE1 + 99) as i32).collect();
    let (da, db, dc) = (mem.upload(&a), mem.upload(&b), mem.alloc(4 * 3 * 64));
    run_g(
        m,
        "dot_products",
        &cfg(1, 64),
        &[Arg::Ptr(da), Arg::Ptr(db), Arg::Ptr(dc)],
        &mem,
    )
    .unwrap();
    let g: Vec<i32> = mem.download(dc, 3 * 64);
    let sb = |v: i32, k: u32| (v >> (8 * k)) as i8 as i32;
    let ub = |v: i32, k: u32| ((v as u32 >> (8 * k)) & 0xFF) as i32;
    let sh = |v: i32, k: u32| (v >> (16 * k)) as i16 as i32;
    for i in 0..64 {
        let (x, y) = (a[i], b[i]);
        let dp4 = (0..4).fold(7i32, |s, k| s.wrapping_add(sb(x, k) * sb(y, k)));
        let dp2lo = 1 + sh(x, 0) * sb(y, 0) + sh(x, 1) * sb(y, 1);
        let dp4u = (0..4).fold(3u32, |s, k| s.wrapping_add((ub(x, k) * ub(y, k)) as u32));
        let dp2hi = -2 + sh(x, 0) * sb(y, 2) + sh(x, 1) * sb(y, 3);
        assert_eq!(
            &g[3 * i..3 * i + 3],
            &[dp4, dp2lo, (dp4u as i32).wrapping_add(dp2hi)],
            "i={i}"
        );
    }
}

#[test]
fn simd_16bit_lanes() {
    let m = extra();
    let mem = DevMem::new();
    let a: Vec<u32> = (0..32u32).map(|i| i.wrapping_mul(0x9E37_79B9)).collect();
    let b: Vec<u32> = (0..32u32)
        .map(|i| i.wrapping_mul(0x85EB_CA6B) ^ 0x8000_7FFF)
        .collect();
    let (da, db, dc) = (mem.upload(&a), mem.upload(&b), mem.alloc(4 * 3 * 32));
    run_g(
        m,
        "simd16",
        &cfg(1, 32),
        &[Arg::Ptr(da), Arg::Ptr(db), Arg::Ptr(dc)],
        &mem,
    )
    .unwrap();
    let g: Vec<u32> = mem.download(dc, 3 * 32);
    let lanes = |x: u32, y: u32, f: &dyn Fn(u16, u16) -> u16| {
        (f(x as u16, y as u16) as u32) | (f((x >> 16) as u16, (y >> 16) as u16) as u32) << 16
    };
    for i in 0..32 {
        let (x, y) = (a[i], b[i]);
        let want = [
            lanes(x, y, &|p, q| p.wrapping_add(q)),
            lanes(x, y, &|p, q| (p as i16).max(q as i16) as u16),
            lanes(x, y, &|p, q| p.min(q)),
        ];
        assert_eq!(&g[3 * i..3 * i + 3], &want, "i={i}");
    }
}

/// f16 bits of a value exactly representable as a normal half.
fn half_bits(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let b = v.to_bits();
    let exp = ((b >> 23) & 0xFF) as i32 - 127 + 15;
    (((b >> 16) & 0x8000) | ((exp as u32) << 10) | ((b >> 13) & 0x3FF)) as u16
}

#[test]
fn packed_half_and_bfloat16() {
    let m = extra();
    let mem = DevMem::new();
    let x = [1.5f32, -2.25, 3.0, 0.5, -0.75, 4.0, 0.0, 1.0];
    let n = x.len() / 2;
    let (dx, dh, dbf, dback) = (
        mem.upload(&x),
        mem.alloc(4 * n),
        mem.alloc(2 * n),
        mem.alloc(4 * n),
    );
    let args = [
        Arg::Ptr(dx),
        Arg::Ptr(dh),
        Arg::Ptr(dbf),
        Arg::Ptr(dback),
        Arg::I32(n as i32),
    ];
    run_g(m, "half2_bf16", &cfg(1, 32), &args, &mem).unwrap();
    let h: Vec<u32> = mem.download(dh, n);
    let bf: Vec<u16> = mem.download(dbf, n);
    let back: Vec<f32> = mem.download(dback, n);
    for i in 0..n {
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        let r = |v: f32| (2.0 * v) * v + 2.0 * v;
        assert_eq!(
            h[i],
            (half_bits(r(a)) as u32) << 16 | half_bits(r(b)) as u32,
            "i={i}"
        );
        let w = a * b + a;
        assert_eq!(bf[i], (w.to_bits() >> 16) as u16, "i={i}");
        assert_eq!(back[i], w);
    }
}
