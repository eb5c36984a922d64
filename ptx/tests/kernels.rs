//! Runs nvcc-generated PTX (tests/fixtures/kernels.ptx) and compares with CPU references.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use xpupool_ptx::ExecError;

/// Deterministic pseudo-random numbers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn i32(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo) as u64) as i32
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 2_000_000) as f32 / 1000.0 - 1000.0
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn all_fixture_kernels_are_supported() {
    let m = fixture();
    assert!(m.kernels().len() >= 20);
    for k in m.kernels() {
        assert_eq!(k.unsupported, None, "kernel {}", k.name);
    }
}

#[test]
fn vadd_i32() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 1003;
    let a: Vec<i32> = (0..n).map(|i| i * 3 - 500).collect();
    let b: Vec<i32> = (0..n).map(|i| i * i).collect();
    let (da, db, dc) = (mem.upload(&a), mem.upload(&b), mem.alloc(4 * n as usize));
    let c = cfg((n as u32).div_ceil(128), 128);
    run(
        m,
        "vadd_i32",
        &c,
        &[Arg::Ptr(da), Arg::Ptr(db), Arg::Ptr(dc), Arg::I32(n)],
        &mem,
    )
    .unwrap();
    let out: Vec<i32> = mem.download(dc, n as usize);
    for i in 0..n as usize {
        assert_eq!(out[i], a[i] + b[i], "index {i}");
    }
}

#[test]
fn vadd_f32_and_f64_many_workers() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 5000usize;
    let mut r = Rng(7);
    let a: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let b: Vec<f32> = (0..n).map(|_| r.f32()).collect();
    let (da, db, dc) = (mem.upload(&a), mem.upload(&b), mem.alloc(4 * n));
    let mut c = cfg((n as u32).div_ceil(256), 256);
    c.workers = 4;
    run(
        m,
        "vadd_f32",
        &c,
        &[Arg::Ptr(da), Arg::Ptr(db), Arg::Ptr(dc), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let out: Vec<f32> = mem.download(dc, n);
    for i in 0..n {
        assert_eq!(out[i], a[i] + b[i]);
    }
    let a: Vec<f64> = (0..n).map(|i| i as f64 * 0.37).collect();
    let b: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let (da, db, dc) = (mem.upload(&a), mem.upload(&b), mem.alloc(8 * n));
    run(
        m,
        "vadd_f64",
        &c,
        &[Arg::Ptr(da), Arg::Ptr(db), Arg::Ptr(dc), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let out: Vec<f64> = mem.download(dc, n);
    for i in 0..n {
        assert_eq!(out[i], a[i].mul_add(2.0, b[i]));
    }
}

#[test]
fn scalar_and_struct_params() {
    let m = fixture();
    let info = m.kernel("scalar_struct").unwrap();
    let offs: Vec<usize> = info.params.iter().map(|p| p.offset).collect();
    assert_eq!(offs, vec![0, 8, 16, 72, 80, 88]);
    assert_eq!(info.param_bytes, 92);
    let mem = DevMem::new();
    let n = 100usize;
    let out = mem.alloc(4 * n);
    // struct Params { float scale; int offset; double bias; short s; char c; long long big; float arr[5]; }
    let mut s = vec![0u8; 56];
    s[0..4].copy_from_slice(&1.5f32.to_le_bytes());
    s[4..8].copy_from_slice(&(-7i32).to_le_bytes());
    s[8..16].copy_from_slice(&0.25f64.to_le_bytes());
    s[16..18].copy_from_slice(&(-300i16).to_le_bytes());
    s[18] = 5;
    s[24..32].copy_from_slice(&(3i64 << 32).to_le_bytes());
    let arr = [10.0f32, 20.0, 30.0, 40.0, 50.0];
    for (k, v) in arr.iter().enumerate() {
        s[32 + 4 * k..36 + 4 * k].copy_from_slice(&v.to_le_bytes());
    }
    for flag in [0u8, 1] {
        let args = [
            Arg::Ptr(out),
            Arg::F32(2.0),
            Arg::Bytes(s.clone()),
            Arg::U8(flag),
            Arg::F64(0.5),
            Arg::I32(n as i32),
        ];
        run(m, "scalar_struct", &cfg(2, 64), &args, &mem).unwrap();
        let got: Vec<f32> = mem.download(out, n);
        for i in 0..n {
            let mut v = 2.0 * i as f32 * 1.5 - 7.0 + 0.25 - 300.0 + 5.0 + 3.0 + arr[i % 5];
            if flag != 0 {
                v = -v;
            }
            v += 0.5;
            assert!(
                close(got[i] as f64, v as f64, 1e-6),
                "i={i} got {} want {v}",
                got[i]
            );
        }
    }
}

#[test]
fn shared_tree_reduction_with_atomic_add() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 10_000usize;
    let input: Vec<i32> = (0..n as i32).map(|i| (i * 37) % 1001 - 500).collect();
    let din = mem.upload(&input);
    let total = mem.upload(&[0u64]);
    run(
        m,
        "_Z10reduce_sumPKiPyi",
        &cfg((n as u32).div_ceil(256), 256),
        &[Arg::Ptr(din), Arg::Ptr(total), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let want: i64 = input.iter().map(|&v| v as i64).sum();
    assert_eq!(mem.download::<u64>(total, 1)[0] as i64, want);
}

#[test]
fn warp_shuffle_reduction() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 3000usize;
    let input: Vec<f32> = (0..n).map(|i| (i % 17) as f32).collect();
    let din = mem.upload(&input);
    let out = mem.upload(&[0f32]);
    run(
        m,
        "warp_reduce",
        &cfg((n as u32).div_ceil(128), 128),
        &[Arg::Ptr(din), Arg::Ptr(out), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let want: f32 = input.iter().sum();
    assert_eq!(mem.download::<f32>(out, 1)[0], want);
}

#[test]
fn shuffle_variants() {
    let m = fixture();
    let mem = DevMem::new();
    let nt = 64usize;
    let input: Vec<i32> = (0..nt as i32).map(|i| i * 10 + 1).collect();
    let din = mem.upload(&input);
    let out = mem.alloc(4 * 4 * nt);
    run(
        m,
        "shfl_variants",
        &cfg(1, nt as u32),
        &[Arg::Ptr(din), Arg::Ptr(out)],
        &mem,
    )
    .unwrap();
    let got: Vec<i32> = mem.download(out, 4 * nt);
    for t in 0..nt {
        let lane = t % 32;
        let base = t - lane;
        let up = if lane >= 3 { input[t - 3] } else { input[t] };
        let x = input[base + (lane ^ 5)];
        let idx = input[base + ((t * 7) & 31)];
        let down = if lane % 8 + 2 < 8 {
            input[t + 2]
        } else {
            input[t]
        };
        assert_eq!(&got[4 * t..4 * t + 4], &[up, x, idx, down], "thread {t}");
    }
}

#[test]
fn ballot_any_all() {
    let m = fixture();
    let mem = DevMem::new();
    let nt = 128usize;
    let input: Vec<i32> = (0..nt as i32)
        .map(|i| if i < 64 { i % 20 } else { i * 3 - 200 })
        .collect();
    let din = mem.upload(&input);
    let (bal, anys, alls) = (mem.alloc(16), mem.alloc(16), mem.alloc(16));
    run(
        m,
        "vote",
        &cfg(2, 64),
        &[Arg::Ptr(din), Arg::Ptr(bal), Arg::Ptr(anys), Arg::Ptr(alls)],
        &mem,
    )
    .unwrap();
    let (b, an, al): (Vec<u32>, Vec<i32>, Vec<i32>) = (
        mem.download(bal, 4),
        mem.download(anys, 4),
        mem.download(alls, 4),
    );
    for w in 0..4 {
        let vals = &input[w * 32..w * 32 + 32];
        let ballot = vals
            .iter()
            .enumerate()
            .fold(0u32, |acc, (l, &v)| acc | (u32::from(v > 10) << l));
        assert_eq!(b[w], ballot, "warp {w}");
        assert_eq!(an[w] != 0, vals.iter().any(|&v| v > 100));
        assert_eq!(al[w] != 0, vals.iter().all(|&v| v >= 0));
    }
}

#[test]
fn tiled_matmul_2d_grid() {
    let m = fixture();
    let mem = DevMem::new();
    let (mm, nn, kk) = (37usize, 45usize, 29usize);
    let a: Vec<f32> = (0..mm * kk).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..kk * nn).map(|i| ((i * 5) % 11) as f32 * 0.5).collect();
    let (da, db, dc) = (mem.upload(&a), mem.upload(&b), mem.alloc(4 * mm * nn));
    let c = Cfg {
        grid: [nn.div_ceil(16) as u32, mm.div_ceil(16) as u32, 1],
        block: [16, 16, 1],
        dyn_smem: 0,
        workers: 3,
    };
    let args = [
        Arg::Ptr(da),
        Arg::Ptr(db),
        Arg::Ptr(dc),
        Arg::I32(mm as i32),
        Arg::I32(nn as i32),
        Arg::I32(kk as i32),
    ];
    run(m, "matmul_tiled", &c, &args, &mem).unwrap();
    let got: Vec<f32> = mem.download(dc, mm * nn);
    for r in 0..mm {
        for col in 0..nn {
            let want: f32 = (0..kk).map(|k| a[r * kk + k] * b[k * nn + col]).sum();
            assert_eq!(got[r * nn + col], want, "({r},{col})");
        }
    }
}

#[test]
fn transpose_with_shared_tile() {
    let m = fixture();
    let mem = DevMem::new();
    let (w, h) = (70usize, 45usize);
    let input: Vec<f32> = (0..w * h).map(|i| i as f32).collect();
    let (din, dout) = (mem.upload(&input), mem.alloc(4 * w * h));
    let c = Cfg {
        grid: [w.div_ceil(32) as u32, h.div_ceil(32) as u32, 1],
        block: [32, 32, 1],
        dyn_smem: 0,
        workers: 2,
    };
    run(
        m,
        "transpose",
        &c,
        &[
            Arg::Ptr(din),
            Arg::Ptr(dout),
            Arg::I32(w as i32),
            Arg::I32(h as i32),
        ],
        &mem,
    )
    .unwrap();
    let got: Vec<f32> = mem.download(dout, w * h);
    for y in 0..h {
        for x in 0..w {
            assert_eq!(got[x * h + y], input[y * w + x]);
        }
    }
}

#[test]
fn dynamic_shared_memory() {
    let m = fixture();
    let mem = DevMem::new();
    let (blocks, nt) = (3usize, 128usize);
    let input: Vec<i32> = (0..(blocks * nt) as i32).collect();
    let (din, dout) = (mem.upload(&input), mem.alloc(4 * blocks * nt));
    let mut c = cfg(blocks as u32, nt as u32);
    c.dyn_smem = 4 * nt as u32;
    run(
        m,
        "dyn_shared_reverse",
        &c,
        &[Arg::Ptr(din), Arg::Ptr(dout), Arg::I32(0)],
        &mem,
    )
    .unwrap();
    let got: Vec<i32> = mem.download(dout, blocks * nt);
    for b in 0..blocks {
        for t in 0..nt {
            assert_eq!(got[b * nt + t], input[b * nt + nt - 1 - t]);
        }
    }
    // Without the dynamic allocation the access is out of bounds.
    c.dyn_smem = 0;
    let e = run(
        m,
        "dyn_shared_reverse",
        &c,
        &[Arg::Ptr(din), Arg::Ptr(dout), Arg::I32(0)],
        &mem,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ExecError::IllegalAddress {
                space: "shared",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn constant_and_global_variables() {
    let m = fixture();
    let names: Vec<&str> = m.globals().iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["coeffs", "cshift", "gcounter", "gtable"]);
    let mem = DevMem::new();
    let syms = load_globals(m, &mem);
    let n = 50usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 2.0).collect();
    let (dx, dy) = (mem.upload(&x), mem.alloc(4 * n));
    run_with(
        m,
        "const_poly",
        &cfg(2, 32),
        &[Arg::Ptr(dx), Arg::Ptr(dy), Arg::I32(n as i32)],
        &mem,
        &syms,
    )
    .unwrap();
    let coeffs = [1.0f32, 0.5, 0.25, -2.0, 3.5, 0.0, 10.0, -0.125];
    let gtable = [1.5f64, 2.5, 3.5, 4.5];
    let got: Vec<f32> = mem.download(dy, n);
    for i in 0..n {
        let mut acc = 0f32;
        for k in (0..8).rev() {
            acc = acc.mul_add(x[i], coeffs[k]);
        }
        let want = acc + (3.0 + gtable[i & 3]) as f32;
        assert!(
            close(got[i] as f64, want as f64, 1e-5),
            "i={i}: {} vs {want}",
            got[i]
        );
    }
    assert_eq!(mem.download::<i32>(syms["gcounter"], 1)[0], 8);
    // Missing symbol addresses are a launch error.
    let e = run(
        m,
        "const_poly",
        &cfg(1, 32),
        &[Arg::Ptr(dx), Arg::Ptr(dy), Arg::I32(1)],
        &mem,
    )
    .unwrap_err();
    assert!(matches!(e, ExecError::InvalidLaunch(_)), "{e}");
}

#[test]
fn local_array_with_runtime_index() {
    let m = fixture();
    assert!(m.kernel("local_array").unwrap().local_bytes >= 64);
    let mem = DevMem::new();
    let n = 300usize;
    let idx: Vec<i32> = (0..n as i32).map(|i| (i * 7 + 3) % 50).collect();
    let (di, dout) = (mem.upload(&idx), mem.alloc(4 * n));
    run(
        m,
        "local_array",
        &cfg(3, 128),
        &[Arg::Ptr(di), Arg::Ptr(dout), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let got: Vec<i32> = mem.download(dout, n);
    for i in 0..n {
        let j = (idx[i] & 15) as usize;
        let k = (j + 3) & 15;
        let want = (j * j) as i32 + i as i32 + (k * k) as i32 + i as i32 + 1000;
        assert_eq!(got[i], want, "i={i}");
    }
}

#[test]
fn atomics_cas_max_exch_and_friends() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 1000usize;
    let vals = mem.upload(&[0i32, 10000, 0, 0, 0, 0, 0, 0]);
    let uvals = mem.upload(&[0u32, 0xFFFF_FFFF, 0, 0]);
    let l = mem.upload(&[0u64, 0, 0, 0]);
    let f = mem.upload(&[0f32]);
    let mut c = cfg((n as u32).div_ceil(128), 128);
    c.workers = 4;
    run(
        m,
        "atomics",
        &c,
        &[
            Arg::Ptr(vals),
            Arg::Ptr(uvals),
            Arg::Ptr(l),
            Arg::Ptr(f),
            Arg::I32(n as i32),
        ],
        &mem,
    )
    .unwrap();
    let v: Vec<i32> = mem.download(vals, 8);
    let u: Vec<u32> = mem.download(uvals, 4);
    let ll: Vec<u64> = mem.download(l, 4);
    let ff: Vec<f32> = mem.download(f, 1);
    let ni = n as i32;
    assert_eq!(v[0], (0..ni).map(|i| i * 3 % 1001).max().unwrap());
    assert_eq!(v[1], 5000 - (ni - 1));
    assert_eq!(v[2], 2 * ni);
    assert_eq!(v[3], -ni);
    assert_eq!(v[4], 42);
    assert_eq!(v[5], ni);
    assert_eq!(v[6], ni);
    assert_eq!(u[0], 0xFFFF_FFFF);
    assert_eq!(u[1], 0xFFFF_0000);
    assert_eq!(u[2], (0..n as u32).fold(0, |a, i| a ^ i));
    assert_eq!(u[3], (n % 17) as u32);
    assert_eq!(ll[0], (0..n as u64).sum::<u64>());
    assert_eq!(ll[1], (n as u64 - 1) * 1_000_000_007);
    assert!((1..=n as u64).contains(&ll[2]));
    assert_eq!(ff[0], 0.5 * n as f32);
    assert_eq!(f64::from_bits(ll[3]), 0.25 * n as f64);
}

#[test]
fn float_int_conversions_with_rounding() {
    let m = fixture();
    let mem = DevMem::new();
    let xs: Vec<f32> = vec![
        0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.7, -3.7, 123.456, 0.0, -0.0, 7.0, -127.9, 200.2,
        65535.5, 16777.25,
    ];
    let n = xs.len();
    let ds: Vec<f64> = xs.iter().map(|&x| x as f64 * 1.000001 + 0.5).collect();
    let (dx, dd) = (mem.upload(&xs), mem.upload(&ds));
    let (oi, ou, oll, of) = (
        mem.alloc(4 * 8 * n),
        mem.alloc(4 * 2 * n),
        mem.alloc(8 * 2 * n),
        mem.alloc(4 * 4 * n),
    );
    let args = [
        Arg::Ptr(dx),
        Arg::Ptr(dd),
        Arg::Ptr(oi),
        Arg::Ptr(ou),
        Arg::Ptr(oll),
        Arg::Ptr(of),
        Arg::I32(n as i32),
    ];
    run(m, "conversions", &cfg(1, 32), &args, &mem).unwrap();
    let gi: Vec<i32> = mem.download(oi, 8 * n);
    let gu: Vec<u32> = mem.download(ou, 2 * n);
    let gl: Vec<i64> = mem.download(oll, 2 * n);
    let gf: Vec<f32> = mem.download(of, 4 * n);
    for i in 0..n {
        let (x, d) = (xs[i], ds[i]);
        let want_i = [
            x.round_ties_even() as i32,
            x.trunc() as i32,
            x.floor() as i32,
            x.ceil() as i32,
            x as i32,
            d.round_ties_even() as i32,
            (x as i32) as i8 as i32,
            x.round_ties_even() as i32 + x.floor() as i32 * 100 + x.ceil() as i32 * 10000,
        ];
        assert_eq!(&gi[8 * i..8 * i + 8], &want_i, "x={x}");
        assert_eq!(
            &gu[2 * i..2 * i + 2],
            &[x.round_ties_even() as u32, (x as i32) as u16 as u32],
            "x={x}"
        );
        assert_eq!(
            &gl[2 * i..2 * i + 2],
            &[d.trunc() as i64, d.round_ties_even() as i64],
            "d={d}"
        );
        let u = 0xFFFF_FFFFu32 - i as u32;
        let mut rz = u as f32;
        if rz as f64 > u as f64 {
            rz = f32::from_bits(rz.to_bits() - 1);
        }
        assert_eq!(gf[4 * i], (i as i32).wrapping_mul(16_777_217) as f32);
        assert_eq!(gf[4 * i + 1], d as f32);
        assert_eq!(gf[4 * i + 2], rz);
        let want = x.trunc() + x.round() * 0.001;
        assert!(
            close(gf[4 * i + 3] as f64, want as f64, 1e-6),
            "x={x}: {} vs {want}",
            gf[4 * i + 3]
        );
    }
}

#[test]
fn integer_division_and_modulo() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 500usize;
    let mut r = Rng(99);
    let a: Vec<i32> = (0..n).map(|_| r.i32(-1_000_000, 1_000_000)).collect();
    let b: Vec<i32> = (0..n)
        .map(|_| {
            let v = r.i32(-1000, 1000);
            if v == 0 {
                7
            } else {
                v
            }
        })
        .collect();
    let ua: Vec<u32> = (0..n).map(|_| r.next() as u32).collect();
    let ub: Vec<u32> = (0..n).map(|_| (r.next() as u32 % 100_000).max(1)).collect();
    let la: Vec<i64> = (0..n).map(|_| r.next() as i64).collect();
    let lb: Vec<i64> = (0..n)
        .map(|_| {
            let v = (r.next() % 2_000_000_000) as i64 - 1_000_000_000;
            if v == 0 {
                3
            } else {
                v
            }
        })
        .collect();
    let bufs: Vec<u64> = vec![
        mem.upload(&a),
        mem.upload(&b),
        mem.upload(&ua),
        mem.upload(&ub),
        mem.upload(&la),
        mem.upload(&lb),
    ];
    let (out, lout) = (mem.alloc(16 * n), mem.alloc(16 * n));
    let mut args: Vec<Arg> = bufs.iter().map(|&p| Arg::Ptr(p)).collect();
    args.extend([Arg::Ptr(out), Arg::Ptr(lout), Arg::I32(n as i32)]);
    run(m, "intdiv", &cfg(4, 128), &args, &mem).unwrap();
    let o: Vec<i32> = mem.download(out, 4 * n);
    let lo: Vec<i64> = mem.download(lout, 2 * n);
    for i in 0..n {
        assert_eq!(
            &o[4 * i..4 * i + 4],
            &[
                a[i] / b[i],
                a[i] % b[i],
                (ua[i] / ub[i]) as i32,
                (ua[i] % ub[i]) as i32
            ]
        );
        assert_eq!(&lo[2 * i..2 * i + 2], &[la[i] / lb[i], la[i] % lb[i]]);
    }
}

#[test]
fn grid_stride_loop() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 100_000usize;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let (dx, dy) = (mem.upload(&x), mem.upload(&y));
    run(
        m,
        "grid_stride",
        &cfg(8, 128),
        &[
            Arg::Ptr(dx),
            Arg::Ptr(dy),
            Arg::F32(2.0),
            Arg::I32(n as i32),
        ],
        &mem,
    )
    .unwrap();
    let got: Vec<f32> = mem.download(dy, n);
    for i in 0..n {
        assert_eq!(got[i], 2.0f32.mul_add(x[i], y[i]));
    }
}

#[test]
fn math_functions() {
    let m = fixture();
    let mem = DevMem::new();
    let xs: Vec<f32> = (0..64).map(|i| i as f32 * 0.37 - 11.0).collect();
    let n = xs.len();
    let (dx, dout) = (mem.upload(&xs), mem.alloc(4 * 8 * n));
    run(
        m,
        "math_funcs",
        &cfg(2, 32),
        &[Arg::Ptr(dx), Arg::Ptr(dout), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let g: Vec<f32> = mem.download(dout, 8 * n);
    for (i, &v) in xs.iter().enumerate() {
        let o = &g[8 * i..8 * i + 8];
        assert!(close(o[0] as f64, v.abs().sqrt() as f64, 1e-6));
        assert!(
            close(o[1] as f64, (v as f64 * 0.1).exp(), 1e-5),
            "{} {}",
            o[1],
            (v * 0.1).exp()
        );
        assert!((o[2] as f64 - (v as f64).sin()).abs() < 1e-4);
        assert_eq!(o[3], v.min(1.5) + v.max(-1.5));
        assert!(close(o[4] as f64, 1.0 / (1.0 + v.abs() as f64), 1e-6));
        assert_eq!(o[5], v / 3.0);
        assert!(
            close(o[6] as f64, (v as f64 * 0.1).exp(), 1e-6),
            "{} {}",
            o[6],
            (v * 0.1).exp()
        );
        let want7 =
            v.to_bits().count_ones() + (v as i32).leading_zeros() + (i as u32).reverse_bits() % 7;
        assert_eq!(o[7], want7 as f32);
    }
}

#[test]
fn device_function_call() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 200usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let (dx, dy) = (mem.upload(&x), mem.alloc(4 * n));
    run(
        m,
        "call_func",
        &cfg(2, 128),
        &[Arg::Ptr(dx), Arg::Ptr(dy), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let got: Vec<f32> = mem.download(dy, n);
    for i in 0..n {
        assert_eq!(got[i], (i as f32).mul_add(x[i], 1.0));
    }
}

#[test]
fn divergent_warp_sync() {
    let m = fixture();
    let mem = DevMem::new();
    let input: Vec<i32> = (0..64).map(|i| i * 100).collect();
    let (din, dout) = (mem.upload(&input), mem.alloc(4 * 64));
    run(
        m,
        "divergent_sync",
        &cfg(1, 64),
        &[Arg::Ptr(din), Arg::Ptr(dout)],
        &mem,
    )
    .unwrap();
    let got: Vec<i32> = mem.download(dout, 64);
    for t in 0..64 {
        let want = if t & 1 == 1 {
            input[t] + 16 + input[t ^ 2] + 16
        } else {
            input[t] - 1
        };
        assert_eq!(got[t], want, "t={t}");
    }
}

#[test]
fn out_of_bounds_is_illegal_address() {
    let m = fixture();
    let mem = DevMem::new();
    let p = mem.alloc(4 * 32);
    let e = run(m, "oob_write", &cfg(1, 32), &[Arg::Ptr(p)], &mem).unwrap_err();
    match e {
        ExecError::IllegalAddress { addr, .. } => assert_eq!(addr, p + 4_000_000),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn trap_is_reported() {
    let m = fixture();
    let mem = DevMem::new();
    let p = mem.alloc(4 * 32);
    let e = run(m, "trap_kernel", &cfg(1, 32), &[Arg::Ptr(p)], &mem).unwrap_err();
    assert_eq!(e, ExecError::Trap);
}

#[test]
fn invalid_launches() {
    let m = fixture();
    let mem = DevMem::new();
    let p = mem.alloc(4096);
    let args = [Arg::Ptr(p), Arg::Ptr(p), Arg::Ptr(p), Arg::I32(0)];
    let bad = |c: Cfg| {
        let e = run(m, "vadd_i32", &c, &args, &mem).unwrap_err();
        assert!(matches!(e, ExecError::InvalidLaunch(_)), "{e}");
    };
    bad(cfg(1, 1025));
    bad(Cfg {
        grid: [1, 1, 1],
        block: [32, 32, 2],
        dyn_smem: 0,
        workers: 1,
    });
    bad(Cfg {
        grid: [1, 1, 1],
        block: [1, 1, 65],
        dyn_smem: 0,
        workers: 1,
    });
    bad(Cfg {
        grid: [0, 1, 1],
        block: [1, 1, 1],
        dyn_smem: 0,
        workers: 1,
    });
    bad(Cfg {
        grid: [1, 65536, 1],
        block: [1, 1, 1],
        dyn_smem: 0,
        workers: 1,
    });
    bad(Cfg {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dyn_smem: 228 * 1024,
        workers: 1,
    });
    // Parameter buffer too short.
    let symbols = |_: &str| None;
    let l = xpupool_ptx::Launch {
        grid: [1; 3],
        block: [1; 3],
        dynamic_shared_bytes: 0,
        params: &[0u8; 8],
        symbols: &symbols,
        workers: 1,
        between_blocks: None,
        grid_workspace: 0,
        deadline: None,
    };
    let e = xpupool_ptx::launch(m, "vadd_i32", &l, &mem).unwrap_err();
    assert!(matches!(e, ExecError::InvalidLaunch(_)), "{e}");
    let e = xpupool_ptx::launch(m, "nope", &l, &mem).unwrap_err();
    assert!(matches!(e, ExecError::KernelNotFound(_)), "{e}");
}

#[test]
fn a_kernel_that_never_ends_fails_at_its_deadline() {
    let src = r#"
.version 7.0
.target sm_70
.address_size 64
.visible .entry spin(.param .u64 flag)
{
    .reg .pred %p;
    .reg .u32 %r;
    .reg .u64 %a;
    ld.param.u64 %a, [flag];
LOOP:
    ld.volatile.global.u32 %r, [%a];
    setp.eq.u32 %p, %r, 0;
    @%p bra LOOP;
    ret;
}
"#;
    let m = xpupool_ptx::parse_module(src).unwrap();
    let mem = DevMem::new();
    let flag = mem.alloc(4);
    let symbols = |_: &str| None;
    let started = std::time::Instant::now();
    let l = xpupool_ptx::Launch {
        grid: [2, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
        params: &flag.to_le_bytes(),
        symbols: &symbols,
        workers: 2,
        between_blocks: None,
        grid_workspace: 0,
        deadline: Some(started + std::time::Duration::from_millis(300)),
    };
    let e = xpupool_ptx::launch(&m, "spin", &l, &mem).unwrap_err();
    assert!(
        matches!(e, ExecError::TimedOut(ref k) if k == "spin"),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
