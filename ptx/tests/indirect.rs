//! Calls through function pointers: the address of a function taken in code
//! and called, and a call through a value that names no function, which faults
//! as an illegal address instead of running anything.

mod common;

use common::*;
use xpupool_ptx::{parse_module, ExecError};

const PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64

.func (.param .b32 r) twice(.param .b32 x)
{
    .reg .b32 %r<3>;
    ld.param.u32 %r1, [x];
    add.s32 %r2, %r1, %r1;
    st.param.b32 [r], %r2;
    ret;
}

.visible .entry through(.param .u64 out, .param .u64 bogus)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<5>;
    .reg .pred %p<2>;
    ld.param.u64 %rd1, [out];
    ld.param.u64 %rd4, [bogus];
    mov.u64 %rd2, twice;
    setp.ne.u64 %p1, %rd4, 0;
    @%p1 mov.u64 %rd2, %rd4;
    mov.u32 %r1, 21;
    {
    .param .b32 param0;
    st.param.b32 [param0], %r1;
    .param .b32 retval0;
    prototype_0 : .callprototype (.param .b32 _) _ (.param .b32 _);
    call (retval0), %rd2, (param0), prototype_0;
    ld.param.b32 %r2, [retval0];
    }
    cvta.to.global.u64 %rd3, %rd1;
    st.global.u32 [%rd3], %r2;
    ret;
}
"#;

#[test]
fn a_function_pointer_calls_its_function_and_a_bogus_one_faults() {
    let m = parse_module(PTX).expect("parses");
    assert_eq!(
        m.kernel("through").and_then(|k| k.unsupported.clone()),
        None
    );
    let mem = DevMem::new();
    let out = mem.alloc(4);
    run(
        &m,
        "through",
        &cfg(1, 1),
        &[Arg::Ptr(out), Arg::Ptr(0)],
        &mem,
    )
    .unwrap();
    assert_eq!(mem.download::<u32>(out, 1), [42]);
    let e = run(
        &m,
        "through",
        &cfg(1, 1),
        &[Arg::Ptr(out), Arg::Ptr(0x1234)],
        &mem,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ExecError::IllegalAddress {
                space: "function pointer",
                ..
            }
        ),
        "{e}"
    );
}
