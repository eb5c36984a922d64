//! Parser tests: parameter layout, module variables, unsupported marking.

use xpupool_ptx::{parse_module, ParamInfo, ParseError, Space};

const HEADER: &str = ".version 9.2\n.target sm_90\n.address_size 64\n";

fn ptx(body: &str) -> String {
    format!("{HEADER}{body}")
}

#[test]
fn param_layout() {
    let src = ptx(".visible .entry k(\n\
         .param .u64 .ptr .align 1 k_x,\n\
         .param .u32 k_n,\n\
         .param .align 4 .b8 k_s[48],\n\
         .param .u8 k_c,\n\
         .param .f64 k_d,\n\
         .param .u16 k_h,\n\
         .param .u64 .ptr .global .align 16 k_y\n\
         )\n.maxntid 128, 2, 1\n{\nret;\n}\n");
    let m = parse_module(&src).unwrap();
    let k = m.kernel("k").unwrap();
    let p = |offset, size, align| ParamInfo {
        offset,
        size,
        align,
    };
    assert_eq!(
        k.params,
        vec![
            p(0, 8, 8),
            p(8, 4, 4),
            p(12, 48, 4),
            p(60, 1, 1),
            p(64, 8, 8),
            p(72, 2, 2),
            p(80, 8, 8)
        ]
    );
    assert_eq!(k.param_bytes, 88);
    assert_eq!(k.max_threads_per_block, Some(256));
    assert_eq!(k.unsupported, None);
    assert_eq!(k.static_shared_bytes, 0);
    assert_eq!(k.local_bytes, 0);
}

#[test]
fn empty_params_and_reqntid() {
    let m = parse_module(&ptx(".entry e()\n.reqntid 64\n{\nexit;\n}\n")).unwrap();
    let k = m.kernel("e").unwrap();
    assert_eq!(k.param_bytes, 0);
    assert!(k.params.is_empty());
    assert_eq!(k.max_threads_per_block, Some(64));
}

#[test]
fn globals_with_initializers() {
    let src = ptx(".global .align 4 .u32 a = 7;\n\
         .const .align 4 .f32 f[3] = {0f3F800000, 2.5, -1};\n\
         .global .align 8 .b8 raw[6] = {1, 2, 0xFF};\n\
         .global .align 8 .u64 big[2] = {-1, 0x10};\n\
         .const .align 2 .s16 arr[] = {-2, 3};\n\
         .global .align 4 .b32 nested[2][2] = {{1, 2}, {3, 4}};\n\
         .global .align 4 .u32 zero[4];\n\
         .shared .align 4 .b8 sh[16];\n\
         .extern .global .align 4 .u32 ext;\n\
         .global .align 8 .u64 ptr = generic(a);\n\
         .global .texref tex0;\n\
         .global .samplerref smp = { addr_mode_0 = clamp_to_edge, filter_mode = linear };\n");
    let m = parse_module(&src).unwrap();
    let g = m.globals();
    let names: Vec<&str> = g.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["a", "f", "raw", "big", "arr", "nested", "zero", "ptr"]
    );
    assert_eq!(g[0].init, 7u32.to_le_bytes());
    assert_eq!(g[0].space, Space::Global);
    assert_eq!(g[1].space, Space::Const);
    let f: Vec<f32> = g[1]
        .init
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(f, [1.0, 2.5, -1.0]);
    assert_eq!((g[2].size, g[2].align), (6, 8));
    assert_eq!(g[2].init, [1, 2, 255], "the rest of its 6 bytes is zero");
    assert_eq!(&g[3].init[..8], &u64::MAX.to_le_bytes());
    assert_eq!(&g[3].init[8..], &16u64.to_le_bytes());
    assert_eq!(g[4].size, 4);
    assert_eq!(g[4].init, [0xFE, 0xFF, 3, 0]);
    let nested: Vec<u32> = g[5]
        .init
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(nested, [1, 2, 3, 4]);
    // No initializer: the size alone, no bytes to copy.
    assert_eq!((g[6].size, g[6].init.len()), (16, 0));
    assert_eq!(
        g[7].init,
        vec![0; 8],
        "an address initializer is left as zero"
    );
}

#[test]
fn unsupported_instruction_marks_only_that_kernel() {
    let src = ptx(
        ".visible .entry good(.param .u64 p)\n{\n.reg .b64 %rd<2>;\nld.param.u64 %rd1, [p];\nret;\n}\n\
         .visible .entry bad(.param .u64 p)\n{\n.reg .b32 %r<3>;\n\
         mov.u32 %r1, 1;\n\
         tex.1d.v4.s32.s32 {%r1, %r2, %r1, %r2}, [tex0, {%r1}];\nret;\n}\n\
         .func helper()\n{\n.reg .b32 %r<2>;\nsuq.width.b32 %r1, [surf];\nret;\n}\n\
         .visible .entry calls_bad()\n{\ncall.uni helper, ();\nret;\n}\n\
         .extern .func (.param .b32 r) mystery(.param .b64 a, .param .b64 b);\n\
         .visible .entry calls_extern()\n{\n.reg .b64 %rd<2>;\n\
         { .param .b64 p0; .param .b64 p1; .param .b32 r0;\n\
         call.uni (r0), mystery, (p0, p1);\n}\nret;\n}\n",
    );
    let m = parse_module(&src).unwrap();
    assert_eq!(m.kernel("good").unwrap().unsupported, None);
    let why = m.kernel("bad").unwrap().unsupported.clone().unwrap();
    assert!(
        why.contains("tex.1d.v4.s32.s32") && why.contains("line 14"),
        "{why}"
    );
    let why = m.kernel("calls_bad").unwrap().unsupported.clone().unwrap();
    assert!(
        why.contains("suq.width.b32") && why.contains("helper"),
        "{why}"
    );
    let why = m
        .kernel("calls_extern")
        .unwrap()
        .unsupported
        .clone()
        .unwrap();
    assert!(why.contains("mystery"), "{why}");
}

#[test]
fn recursion_is_unsupported() {
    let src = ptx(".func f(.param .b32 x)\n{\ncall.uni f, (x);\nret;\n}\n\
         .visible .entry k()\n{\n{ .param .b32 a;\ncall.uni f, (a);\n}\nret;\n}\n");
    let m = parse_module(&src).unwrap();
    assert!(m
        .kernel("k")
        .unwrap()
        .unsupported
        .clone()
        .unwrap()
        .contains("recursive"));
}

#[test]
fn ignores_debug_sections_and_directives() {
    let src = ptx(".file 1 \"/tmp/x.cu\"\n\
         .visible .entry k()\n{\n.loc 1 5 3\n.pragma \"nounroll\";\nret;\n}\n\
         .section .debug_abbrev\n{\n.b8 1\n.b8 17\n}\n\
         .section .debug_info { .b32 5 }\n");
    let m = parse_module(&src).unwrap();
    assert_eq!(m.kernels().len(), 1);
}

#[test]
fn syntax_errors_are_reported() {
    let e = parse_module(&ptx(".visible .entry k(\n.param .u64 a\n{\nret;\n}\n")).unwrap_err();
    assert!(matches!(e, ParseError::Syntax { .. }), "{e}");
    let e = parse_module(&ptx(".entry k()\n{\nret;\n")).unwrap_err();
    assert!(matches!(e, ParseError::Syntax { .. }), "{e}");
    let e = parse_module(&ptx(".global .u32 a;\n.global .u32 a;\n")).unwrap_err();
    assert!(matches!(e, ParseError::Duplicate { .. }), "{e}");
}

#[test]
fn fixture_static_shared_sizes() {
    let m = parse_module(include_str!("fixtures/kernels.ptx")).unwrap();
    assert_eq!(
        m.kernel("_Z10reduce_sumPKiPyi")
            .unwrap()
            .static_shared_bytes,
        1024
    );
    assert_eq!(m.kernel("matmul_tiled").unwrap().static_shared_bytes, 2048);
    assert_eq!(
        m.kernel("transpose").unwrap().static_shared_bytes,
        32 * 33 * 4
    );
    assert_eq!(
        m.kernel("dyn_shared_reverse").unwrap().static_shared_bytes,
        0
    );
    assert_eq!(m.kernel("vadd_i32").unwrap().static_shared_bytes, 0);
}

#[test]
fn module_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<xpupool_ptx::Module>();
    assert_send_sync::<xpupool_ptx::KernelInfo>();
    assert_send_sync::<xpupool_ptx::ExecError>();
}
