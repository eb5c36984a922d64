//! Hand-written PTX covering instructions and forms nvcc did not emit for the
//! fixtures (bit manipulation, generic addressing windows, warp reductions, ...).

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use xpupool_ptx::{parse_module, ExecError};

const HEADER: &str = ".version 9.2\n.target sm_90\n.address_size 64\n";

fn module(body: &str) -> xpupool_ptx::Module {
    let m = parse_module(&format!("{HEADER}{body}")).unwrap();
    for k in m.kernels() {
        assert_eq!(k.unsupported, None, "{}", k.name);
    }
    m
}

/// Runs a single-thread kernel `k(.param .u64 out)` and returns `n` u64 results.
fn run_single(body: &str, n: usize) -> Vec<u64> {
    let m = module(body);
    let mem = DevMem::new();
    let out = mem.alloc(8 * n);
    run(&m, "k", &cfg(1, 1), &[Arg::Ptr(out)], &mem).unwrap();
    mem.download(out, n)
}

#[test]
fn bit_manipulation_and_predicates() {
    let r = run_single(
        r#"
.visible .entry k(.param .u64 k_out)
{
    .reg .pred %p<6>;
    .reg .b16 %rs<3>;
    .reg .b32 %r<40>;
    .reg .b64 %rd<20>;
    ld.param.u64 %rd1, [k_out];
    mov.u32 %r1, 0xF0F0;
    bfe.u32 %r2, %r1, 4, 8;
    bfe.s32 %r3, %r1, 4, 4;
    bfi.b32 %r4, 5, 0xFFFF0000, 4, 3;
    prmt.b32 %r5, 0x44332211, 0x88776655, 0x5140;
    setp.lt.s32 %p1|%p2, -3, 2;
    setp.gt.and.u32 %p3, 5, 3, !%p2;
    selp.u32 %r6, 111, 222, %p3;
    set.ge.u32.s32 %r7, -1, -2;
    mov.b64 %rd2, {%r6, %r7};
    mov.b64 {%r8, %r9}, 0x0000000500000007;
    cnot.b32 %r10, %r9;
    mul.hi.u32 %r11, 0x80000000, 6;
    mad.wide.s32 %rd3, -4, 1000000000, 5;
    min.s32 %r12, -5, 3;
    max.u32 %r13, -5, 3;
    abs.s32 %r14, -17;
    popc.b64 %r15, 0xFF00FF00FF;
    clz.b64 %r16, 0x100;
    cvt.sat.u8.s32 %r17, -5;
    cvt.s8.s32 %r18, 200;
    add.cc.u32 %r19, 0xFFFFFFFF, 2;
    addc.u32 %r20, 1, 1;
    shf.r.wrap.b32 %r21, 0x1, 0x3, 4;
    neg.s32 %r22, 9;
    shr.s32 %r23, -64, 3;
    shr.u32 %r24, -64, 3;
    testp.notanumber.f32 %p4, 0f7FC00000;
    selp.b32 %r25, 1, 0, %p4;
    brev.b32 %r26, 1;
    bfind.u32 %r27, 0x1000;
    mul24.lo.s32 %r28, -3, 7;
    sad.u32 %r29, 3, 10, 100;
    rem.s32 %r30, -7, 3;
    not.b32 %r31, 0;
    cvt.u16.u32 %rs1, 0x12345;
    cvt.u32.u16 %r32, %rs1;
    xor.pred %p5, %p1, %p3;
    selp.b32 %r33, 1, 0, %p5;
    st.global.u32 [%rd1], %r2;
    st.global.u32 [%rd1+4], %r3;
    st.global.u32 [%rd1+8], %r4;
    st.global.u32 [%rd1+12], %r5;
    st.global.u64 [%rd1+16], %rd2;
    st.global.v2.u32 [%rd1+24], {%r8, %r10};
    st.global.u32 [%rd1+32], %r11;
    st.global.u32 [%rd1+36], %r12;
    st.global.u64 [%rd1+40], %rd3;
    st.global.v4.u32 [%rd1+48], {%r13, %r14, %r15, %r16};
    st.global.v4.u32 [%rd1+64], {%r17, %r18, %r19, %r20};
    st.global.v4.u32 [%rd1+80], {%r21, %r22, %r23, %r24};
    st.global.v4.u32 [%rd1+96], {%r25, %r26, %r27, %r28};
    st.global.v4.u32 [%rd1+112], {%r29, %r30, %r31, %r32};
    add.s64 %rd4, %rd1, 132;
    st.global.u32 [%rd4+-4], %r33;
    red.global.add.u32 [%rd4], 5;
    red.global.add.u32 [%rd4], 2;
    ret;
}
"#,
        17,
    );
    let w: Vec<u32> = r
        .iter()
        .flat_map(|v| [*v as u32, (*v >> 32) as u32])
        .collect();
    assert_eq!(w[0], 0x0F); // bfe.u32
    assert_eq!(w[1], 0xFFFF_FFFF); // bfe.s32 of 0xF sign bit set
    assert_eq!(w[2], 0xFFFF_0050);
    assert_eq!(w[3], 0x6622_5511);
    assert_eq!(r[2], (0xFFFF_FFFFu64 << 32) | 111); // selp (p3 = 5>3 && !p2, p2 = !(-3<2)), set
    assert_eq!((w[6], w[7]), (7, 0)); // unpack, cnot(5)
    assert_eq!(w[8], 3);
    assert_eq!(w[9], (-5i32) as u32);
    assert_eq!(r[5] as i64, -4_000_000_000 + 5);
    assert_eq!(&w[12..16], &[0xFFFF_FFFB, 17, 24, 55]);
    assert_eq!(&w[16..20], &[0, (-56i32) as u32, 1, 3]);
    assert_eq!(
        &w[20..24],
        &[0x3000_0000, (-9i32) as u32, (-8i32) as u32, 0x1FFF_FFF8]
    );
    assert_eq!(&w[24..28], &[1, 0x8000_0000, 12, (-21i32) as u32]);
    assert_eq!(&w[28..32], &[107, (-1i32) as u32, 0xFFFF_FFFF, 0x2345]);
    assert_eq!(w[32], 0); // p1 ^ p3 = true ^ true
    assert_eq!(w[33], 7); // red.global.add
}

#[test]
fn cnot_unpack() {
    // Separate check of the cnot semantics used above.
    let r = run_single(
        ".visible .entry k(.param .u64 o)\n{\n.reg .b32 %r<4>;\n.reg .b64 %rd<2>;\n\
         ld.param.u64 %rd1, [o];\ncnot.b32 %r1, 0;\ncnot.b32 %r2, 5;\n\
         st.global.v2.u32 [%rd1], {%r1, %r2};\nret;\n}\n",
        1,
    );
    assert_eq!(r[0], 1);
}

#[test]
fn floats_and_rounding() {
    let r = run_single(
        r#"
.visible .entry k(.param .u64 k_out)
{
    .reg .pred %p<3>;
    .reg .f32 %f<20>;
    .reg .f64 %fd<10>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [k_out];
    add.rn.f32 %f1, 0f3F800000, 0f40000000;
    sub.f32 %f2, %f1, 0.5;
    mul.rz.f32 %f3, %f2, -2.0;
    div.rn.f32 %f4, 1.0, 4.0;
    fma.rn.f32 %f5, %f4, 2.0, 1.0;
    sqrt.rn.f32 %f6, 16.0;
    rsqrt.approx.f32 %f7, 4.0;
    rcp.rn.f32 %f8, 8.0;
    ex2.approx.ftz.f32 %f9, 3.0;
    lg2.approx.f32 %f10, 8.0;
    max.f32 %f11, 0f7FC00000, 2.0;
    abs.f32 %f12, -3.5;
    neg.f32 %f13, %f12;
    copysign.f32 %f14, %f13, 2.0;
    add.sat.f32 %f15, 0.75, 0.5;
    cvt.rmi.f32.f32 %f16, -1.5;
    setp.nan.f32 %p1, %f11, 0f7FC00000;
    setp.gtu.f32 %p2, 0f7FC00000, 1.0;
    selp.f32 %f17, 1.0, 0.0, %p2;
    st.global.v4.f32 [%rd1], {%f1, %f2, %f3, %f4};
    st.global.v4.f32 [%rd1+16], {%f5, %f6, %f7, %f8};
    st.global.v4.f32 [%rd1+32], {%f9, %f10, %f11, %f12};
    st.global.v4.f32 [%rd1+48], {%f13, %f14, %f15, %f16};
    st.global.f32 [%rd1+64], %f17;
    mov.f64 %fd1, 0d4000000000000000;
    mul.f64 %fd2, %fd1, 1.5;
    cvt.rn.f32.f64 %f18, %fd2;
    cvt.f64.f32 %fd3, %f18;
    div.rn.f64 %fd4, %fd3, 4.0;
    st.global.f64 [%rd1+72], %fd4;
    mov.b32 %r1, %f1;
    st.global.u32 [%rd1+68], %r1;
    ret;
}
"#,
        10,
    );
    let f: Vec<f32> = r[..9]
        .iter()
        .flat_map(|v| [f32::from_bits(*v as u32), f32::from_bits((*v >> 32) as u32)])
        .collect();
    assert_eq!(
        &f[..16],
        &[3.0, 2.5, -5.0, 0.25, 1.5, 4.0, 0.5, 0.125, 8.0, 3.0, 2.0, 3.5, -3.5, -2.0, 1.0, -2.0]
    );
    assert_eq!(f[16], 1.0);
    assert_eq!(f[17], 3.0);
    assert_eq!(f64::from_bits(r[9]), 0.75);
}

#[test]
fn generic_addressing_windows_and_local_memory() {
    let m = module(
        r#"
.visible .entry k(.param .u64 k_out, .param .u32 k_v)
{
    .local .align 8 .b8 depot[32];
    .shared .align 4 .b8 buf[256];
    .reg .pred %p<4>;
    .reg .b32 %r<20>;
    .reg .b64 %rd<20>;
    .reg .b64 %SP;
    .reg .b64 %SPL;
    mov.u64 %SPL, depot;
    cvta.local.u64 %SP, %SPL;
    ld.param.u64 %rd1, [k_out];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    // generic store into local memory, local load back
    add.u32 %r2, %r1, 100;
    st.u32 [%SP+4], %r2;
    ld.local.u32 %r3, [%SPL+4];
    // shared via generic address
    mov.u64 %rd2, buf;
    cvta.shared.u64 %rd3, %rd2;
    mul.wide.u32 %rd4, %r1, 4;
    add.s64 %rd5, %rd3, %rd4;
    st.u32 [%rd5], %r3;
    atom.add.u32 %r4, [%rd3+128], 1;
    bar.sync 0;
    // read neighbour through shared state space
    add.u32 %r5, %r1, 1;
    and.b32 %r5, %r5, 31;
    shl.b32 %r6, %r5, 2;
    mov.u32 %r7, buf;
    add.u32 %r7, %r7, %r6;
    ld.shared.u32 %r8, [%r7];
    ld.shared.u32 %r9, [buf+128];
    isspacep.shared %p1, %rd5;
    isspacep.local %p2, %SP;
    isspacep.global %p3, %rd1;
    selp.u32 %r10, 1, 0, %p1;
    selp.u32 %r11, 2, 0, %p2;
    selp.u32 %r12, 4, 0, %p3;
    or.b32 %r10, %r10, %r11;
    or.b32 %r10, %r10, %r12;
    // kernel param through the param window
    mov.u64 %rd6, k_v;
    cvta.param.u64 %rd7, %rd6;
    ld.u32 %r13, [%rd7];
    // generic address converted back to shared
    cvta.to.shared.u64 %rd8, %rd5;
    cvt.u32.u64 %r14, %rd8;
    mul.wide.u32 %rd9, %r1, 24;
    add.s64 %rd10, %rd1, %rd9;
    st.global.v4.u32 [%rd10], {%r8, %r9, %r10, %r13};
    st.global.v2.u32 [%rd10+16], {%r14, %r4};
    ret;
}
"#,
    );
    let mem = DevMem::new();
    let out = mem.alloc(24 * 32);
    run(&m, "k", &cfg(1, 32), &[Arg::Ptr(out), Arg::U32(77)], &mem).unwrap();
    let w: Vec<u32> = mem.download(out, 6 * 32);
    let mut olds: Vec<u32> = (0..32).map(|t| w[6 * t + 5]).collect();
    olds.sort();
    assert_eq!(olds, (0..32).collect::<Vec<u32>>());
    for t in 0..32u32 {
        let r = &w[6 * t as usize..6 * t as usize + 5];
        assert_eq!(r, &[(t + 1) % 32 + 100, 32, 7, 77, 4 * t], "thread {t}");
    }
}

#[test]
fn warp_collectives() {
    let m = module(
        r#"
.visible .entry k(.param .u64 k_out)
{
    .reg .pred %p<4>;
    .reg .b32 %r<20>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [k_out];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %laneid;
    redux.sync.add.u32 %r3, %r1, -1;
    redux.sync.max.s32 %r4, %r1, -1;
    and.b32 %r5, %r1, 3;
    match.any.sync.b32 %r6, %r5, -1;
    setp.lt.u32 %p1, %r2, 5;
    bar.red.popc.u32 %r7, 0, %p1;
    vote.sync.uni.pred %p2, %p1, -1;
    selp.u32 %r8, 1, 0, %p2;
    mov.u32 %r9, %lanemask_lt;
    mov.u32 %r10, %warpid;
    mov.u32 %r11, %nwarpid;
    bar.red.and.pred %p3, 0, %p1;
    selp.u32 %r12, 1, 0, %p3;
    mul.wide.u32 %rd2, %r1, 32;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v4.u32 [%rd3], {%r3, %r4, %r6, %r7};
    st.global.v4.u32 [%rd3+16], {%r8, %r9, %r10, %r11};
    ret;
}
"#,
    );
    let mem = DevMem::new();
    let out = mem.alloc(32 * 64);
    run(&m, "k", &cfg(1, 64), &[Arg::Ptr(out)], &mem).unwrap();
    let w: Vec<u32> = mem.download(out, 8 * 64);
    for t in 0..64u32 {
        let r = &w[8 * t as usize..8 * t as usize + 8];
        let base = t - t % 32;
        let sum: u32 = (base..base + 32).sum();
        let same = (0..32)
            .filter(|l| l % 4 == t % 4)
            .fold(0u32, |a, l| a | (1 << l));
        assert_eq!(
            r,
            &[
                sum,
                base + 31,
                same,
                10,
                0,
                (1u32 << (t % 32)) - 1,
                t / 32,
                2
            ],
            "t={t}"
        );
    }
}

#[test]
fn calls_with_params_and_registers() {
    let m = module(
        r#"
.func (.param .b32 r0, .param .b64 r1) two(.param .b32 a, .param .align 8 .b8 s[16])
{
    .reg .b32 %r<5>;
    .reg .b64 %rd<4>;
    ld.param.u32 %r1, [a];
    ld.param.u32 %r2, [s+4];
    ld.param.u64 %rd1, [s+8];
    add.u32 %r3, %r1, %r2;
    st.param.b32 [r0], %r3;
    add.u64 %rd2, %rd1, 1;
    st.param.b64 [r1], %rd2;
    ret;
}
.func (.reg .b32 out) inc(.reg .b32 x)
{
    add.u32 out, x, 1;
}
.visible .entry k(.param .u64 k_out)
{
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [k_out];
    mov.u32 %r1, %tid.x;
    {
    .param .b32 p0;
    st.param.b32 [p0], %r1;
    .param .align 8 .b8 p1[16];
    st.param.v2.b32 [p1], {%r1, 10};
    st.param.b64 [p1+8], 41;
    .param .b32 q0;
    .param .b64 q1;
    call.uni (q0, q1), two, (p0, p1);
    ld.param.b32 %r2, [q0];
    ld.param.b64 %rd2, [q1];
    }
    call (%r3), inc, (%r2);
    mul.wide.u32 %rd3, %r1, 16;
    add.s64 %rd4, %rd1, %rd3;
    st.global.u32 [%rd4], %r3;
    st.global.u64 [%rd4+8], %rd2;
    ret;
}
"#,
    );
    let mem = DevMem::new();
    let out = mem.alloc(16 * 8);
    run(&m, "k", &cfg(1, 8), &[Arg::Ptr(out)], &mem).unwrap();
    let w: Vec<u64> = mem.download(out, 16);
    for t in 0..8u64 {
        assert_eq!(
            (w[2 * t as usize] as u32, w[2 * t as usize + 1]),
            (t as u32 + 11, 42),
            "t={t}"
        );
    }
}

#[test]
fn predicated_exit_and_barrier_with_exited_threads() {
    let m = module(
        r#"
.visible .entry k(.param .u64 k_out)
{
    .shared .align 4 .u32 cnt;
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [k_out];
    mov.u32 %r1, %tid.x;
    setp.ge.u32 %p1, %r1, 40;
    @%p1 exit;
    atom.shared.add.u32 %r2, [cnt], 1;
    bar.sync 0;
    ld.shared.u32 %r3, [cnt];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r3;
    ret;
}
"#,
    );
    let mem = DevMem::new();
    let out = mem.alloc(4 * 100);
    run(&m, "k", &cfg(2, 100), &[Arg::Ptr(out)], &mem).unwrap();
    let w: Vec<u32> = mem.download(out, 100);
    assert!(w[..40].iter().all(|&v| v == 40), "{w:?}");
    assert!(w[40..].iter().all(|&v| v == 0));
}

#[test]
fn vadd_one_million_elements() {
    let m = fixture();
    let mem = DevMem::new();
    let n = 1 << 20;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 3) as f32).collect();
    let (da, db, dc) = (mem.upload(&a), mem.upload(&b), mem.alloc(4 * n));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut c = cfg((n as u32).div_ceil(256), 256);
    c.workers = workers;
    let t = std::time::Instant::now();
    run(
        m,
        "vadd_f32",
        &c,
        &[Arg::Ptr(da), Arg::Ptr(db), Arg::Ptr(dc), Arg::I32(n as i32)],
        &mem,
    )
    .unwrap();
    let dt = t.elapsed();
    println!("vadd_f32 over {n} elements with {workers} workers: {dt:?}");
    let got: Vec<f32> = mem.download(dc, n);
    assert!(got.iter().enumerate().all(|(i, &v)| v == a[i] + b[i]));
}

#[test]
fn spin_wait_on_flag_set_by_another_warp() {
    let m = module(
        r#"
.visible .entry k(.param .u64 k_out)
{
    .shared .align 4 .u32 flag;
    .reg .pred %p<3>;
    .reg .b32 %r<4>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [k_out];
    mov.u32 %r1, %tid.x;
    setp.eq.u32 %p1, %r1, 0;
    @!%p1 bra $NOT0;
$WAIT:
    ld.volatile.shared.u32 %r2, [flag];
    setp.eq.u32 %p2, %r2, 0;
    @%p2 bra $WAIT;
    st.global.u32 [%rd1], %r2;
    ret;
$NOT0:
    setp.ne.u32 %p1, %r1, 32;
    @%p1 bra $DONE;
    st.volatile.shared.u32 [flag], 99;
$DONE:
    ret;
}
"#,
    );
    let mem = DevMem::new();
    let out = mem.alloc(4);
    run(&m, "k", &cfg(1, 64), &[Arg::Ptr(out)], &mem).unwrap();
    assert_eq!(mem.download::<u32>(out, 1), [99]);
}

#[test]
fn cp_async_copies_synchronously() {
    let m = module(
        r#"
.visible .entry k(.param .u64 k_in, .param .u64 k_out)
{
    .shared .align 16 .b8 buf[512];
    .reg .b32 %r<12>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [k_in];
    ld.param.u64 %rd2, [k_out];
    mov.u32 %r1, %tid.x;
    shl.b32 %r2, %r1, 4;
    mov.u32 %r3, buf;
    add.u32 %r4, %r3, %r2;
    cvt.u64.u32 %rd3, %r2;
    add.s64 %rd4, %rd1, %rd3;
    mov.u32 %r5, 5;
    cp.async.cg.shared.global [%r4], [%rd4], 16;
    cp.async.ca.shared.global [%r4+256], [%rd4], 16, %r5;
    cp.async.commit_group;
    cp.async.wait_group 0;
    bar.sync 0;
    xor.b32 %r6, %r1, 1;
    shl.b32 %r6, %r6, 4;
    add.u32 %r7, %r3, %r6;
    ld.shared.v4.u32 {%r8, %r9, %r10, %r11}, [%r7];
    mul.wide.u32 %rd5, %r1, 32;
    add.s64 %rd6, %rd2, %rd5;
    st.global.v4.u32 [%rd6], {%r8, %r9, %r10, %r11};
    ld.shared.v4.u32 {%r8, %r9, %r10, %r11}, [%r4+256];
    st.global.v4.u32 [%rd6+16], {%r8, %r9, %r10, %r11};
    ret;
}
"#,
    );
    let mem = DevMem::new();
    let input: Vec<u8> = (0..=255).collect();
    let (din, dout) = (mem.upload(&input), mem.alloc(512));
    run(&m, "k", &cfg(1, 16), &[Arg::Ptr(din), Arg::Ptr(dout)], &mem).unwrap();
    let g: Vec<u8> = mem.download(dout, 512);
    for t in 0..16usize {
        let other = t ^ 1;
        assert_eq!(&g[32 * t..32 * t + 16], &input[16 * other..16 * other + 16]);
        let mut want = [0u8; 16];
        want[..5].copy_from_slice(&input[16 * t..16 * t + 5]);
        assert_eq!(&g[32 * t + 16..32 * t + 32], &want);
    }
}

#[test]
fn a_kernel_that_only_returns_is_still_checked() {
    // Such a kernel ends at once without running threads (trace replays launch
    // thousands over large grids), but the launch itself is validated first.
    let m = module(
        ".visible .entry nothing(.param .align 8 .b8 nothing_p[24])\n{\n\tret;\n}\n\
         .visible .entry guarded(.param .u64 out)\n{\n.reg .pred %p<2>;\n.reg .b64 %rd<3>;\n\
         \tsetp.eq.u32 %p1, 1, 1;\n\t@%p1 ret;\n\tld.param.u64 %rd1, [out];\n\
         \tst.global.u64 [%rd1], 7;\n\tret;\n}\n",
    );
    let mem = DevMem::new();
    assert_eq!(m.kernel("nothing").unwrap().param_bytes, 24);
    run(
        &m,
        "nothing",
        &cfg(100_000, 1024),
        &[Arg::Bytes(vec![0; 24])],
        &mem,
    )
    .unwrap();
    let e = run(
        &m,
        "nothing",
        &cfg(1, 4096),
        &[Arg::Bytes(vec![0; 24])],
        &mem,
    )
    .unwrap_err();
    assert!(matches!(e, ExecError::InvalidLaunch(_)), "{e}");
    // A guarded return is not the same: this one runs (and returns on every thread).
    let out = mem.alloc(8);
    run(&m, "guarded", &cfg(1, 32), &[Arg::Ptr(out)], &mem).unwrap();
    assert_eq!(mem.download::<u64>(out, 1)[0], 0);
}

#[test]
fn warp_operations_keep_to_their_member_masks() {
    // Even lanes reduce over the even lanes (mask 0x55555555), odd lanes over the
    // odd ones (0xaaaaaaaa), at the same instruction; and `WARP_SZ` is 32.
    let m = module(
        r#"
.visible .entry k(.param .u64 k_out)
{
    .reg .pred %p<2>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [k_out];
    mov.u32 %r1, %laneid;
    and.b32 %r2, %r1, 1;
    setp.eq.u32 %p1, %r2, 0;
    selp.u32 %r3, 0x55555555, 0xaaaaaaaa, %p1;
    redux.sync.max.u32 %r4, %r1, %r3;
    redux.sync.add.u32 %r5, 1, %r3;
    mov.u32 %r6, WARP_SZ;
    mul.wide.u32 %rd2, %r1, 16;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v4.u32 [%rd3], {%r4, %r5, %r6, %r3};
    ret;
}
"#,
    );
    let mem = DevMem::new();
    let out = mem.alloc(16 * 32);
    run(&m, "k", &cfg(1, 32), &[Arg::Ptr(out)], &mem).unwrap();
    let w: Vec<u32> = mem.download(out, 4 * 32);
    for lane in 0..32usize {
        let r = &w[4 * lane..4 * lane + 4];
        let max = if lane % 2 == 0 { 30 } else { 31 };
        assert_eq!(r[..3], [max, 16, 32], "lane {lane}");
    }
}

#[test]
fn qualified_opcodes_make_only_their_kernel_unsupported() {
    // `::` qualifiers parse; a kernel using one the interpreter lacks is
    // unsupported (with the reason), and its neighbour still runs; `.shared::cta`
    // is shared memory.
    let m = parse_module(&format!(
        "{HEADER}{}",
        r#"
.visible .entry bulk(.param .u64 p)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<3>;
    .shared .align 8 .b64 bar;
    ld.param.u64 %rd1, [p];
    mov.u32 %r1, bar;
    cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd1], 16, [%r1];
    ret;
}
.visible .entry k(.param .u64 k_out)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<2>;
    .shared .align 4 .b32 s;
    ld.param.u64 %rd1, [k_out];
    st.shared::cta.u32 [s], 7;
    ld.shared::cta.u32 %r1, [s];
    st.global.u32 [%rd1], %r1;
    ret;
}
"#
    ))
    .unwrap();
    let bulk = m.kernels().iter().find(|k| k.name == "bulk").unwrap();
    let why = bulk.unsupported.as_deref().unwrap_or("");
    assert!(why.contains("cp.async.bulk"), "{why:?}");
    let k = m.kernels().iter().find(|k| k.name == "k").unwrap();
    assert_eq!(k.unsupported, None);
    let mem = DevMem::new();
    let out = mem.alloc(4);
    run(&m, "k", &cfg(1, 1), &[Arg::Ptr(out)], &mem).unwrap();
    assert_eq!(mem.download::<u32>(out, 1), [7]);
}

#[test]
fn an_empty_vector_operand_is_unsupported_not_a_crash() {
    // Found by the fuzzer: `mov` with `{}` divided by zero.
    let m = parse_module(&format!(
        "{HEADER}{}",
        r#"
.visible .entry k(.param .u64 p)
{
    .reg .b64 %rd<2>;
    mov.b64 {}, %rd1;
    ret;
}
"#
    ))
    .unwrap();
    let why = m.kernels()[0].unsupported.clone().unwrap_or_default();
    assert!(why.contains("empty vector"), "{why:?}");
}
