//! Tests on what Debian's hipcc (clang 15) builds from tests/fixtures/kernels.hip
//! (tests/fixtures/regen.sh). The expected layouts are what `llvm-readelf-15 --notes`
//! prints for the same code objects.

use xpupool_amdgpu::{
    code_object_for, image_len, parse_bundle, read_code_object, ArgKind, CodeObject, KernelInfo,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn code_object(bundle: &str, device: &str) -> CodeObject {
    let bytes = fixture(bundle);
    let entries = parse_bundle(&bytes).unwrap();
    let chosen = code_object_for(&entries, device).unwrap();
    // A code object sizes itself as hipModuleLoadData's caller needs.
    assert_eq!(image_len(&chosen.data).unwrap(), chosen.data.len());
    read_code_object(&chosen.data).unwrap()
}

fn kernel<'a>(co: &'a CodeObject, name: &str) -> &'a KernelInfo {
    co.kernels
        .iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("no kernel {name}"))
}

/// `(offset, size, value kind)` of every argument.
fn layout(k: &KernelInfo) -> Vec<(u32, u32, String)> {
    k.args
        .iter()
        .map(|a| {
            let kind = match &a.kind {
                ArgKind::ByValue => "by_value".to_owned(),
                ArgKind::Pointer(k) | ArgKind::Hidden(k) => k.clone(),
            };
            (a.offset, a.size, kind)
        })
        .collect()
}

#[test]
fn the_bundle_has_each_target_and_the_host_entry() {
    let bytes = fixture("bundle-v4.hipfb");
    let entries = parse_bundle(&bytes).unwrap();
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "host-x86_64-unknown-linux",
            "hipv4-amdgcn-amd-amdhsa--gfx1030",
            "hipv4-amdgcn-amd-amdhsa--gfx90a:xnack+",
            "hipv4-amdgcn-amd-amdhsa--gfx90a:xnack-",
        ]
    );
    assert!(entries[0].data.is_empty());
    // The section is padded past the bundle: the bundle's own length is less.
    assert!(image_len(&bytes).unwrap() <= bytes.len());
    assert_eq!(
        code_object_for(&entries, "gfx90a:sramecc+:xnack-")
            .unwrap()
            .id,
        "hipv4-amdgcn-amd-amdhsa--gfx90a:xnack-"
    );
    assert!(code_object_for(&entries, "gfx908").is_err());
}

#[test]
fn code_object_v4_layouts_are_the_explicit_arguments_only() {
    let co = code_object("bundle-v4.hipfb", "gfx90a:xnack-");
    assert_eq!(co.version, 4);
    assert_eq!(co.target, "amdgcn-amd-amdhsa--gfx90a:xnack-");
    let vadd = kernel(&co, "vadd");
    assert_eq!(vadd.symbol, "vadd.kd");
    assert_eq!((vadd.kernarg_size, vadd.wavefront_size), (40, 64));
    assert_eq!(
        vadd.explicit_args(),
        [(0, 8), (8, 8), (16, 8), (24, 4), (32, 8)]
    );
    let mixed = kernel(&co, "mixed");
    assert_eq!(mixed.kernarg_size, 56);
    assert_eq!(mixed.explicit_args(), [(0, 2), (8, 40), (48, 8)]);
    assert_eq!(layout(mixed)[1].2, "by_value");
    assert_eq!(layout(mixed)[2].2, "global_buffer");
    // v4 reads the block size from the dispatch packet: no hidden argument.
    assert_eq!(
        layout(kernel(&co, "sizes")),
        [(0, 8, "global_buffer".to_owned())]
    );
    // gfx1030 is a wave32 device.
    let navi = code_object("bundle-v4.hipfb", "gfx1030");
    assert_eq!(kernel(&navi, "vadd").wavefront_size, 32);
}

#[test]
fn code_object_v5_hidden_arguments_follow_the_explicit_ones() {
    let co = code_object("bundle-v5.hipfb", "gfx90a");
    assert_eq!(co.version, 5);
    let sizes = kernel(&co, "sizes");
    assert_eq!(sizes.kernarg_size, 264);
    assert_eq!(sizes.explicit_args(), [(0, 8)]);
    let hidden: Vec<(u32, u32, String)> = layout(sizes).into_iter().skip(1).take(7).collect();
    let want = [
        (8, 4, "hidden_block_count_x"),
        (12, 4, "hidden_block_count_y"),
        (16, 4, "hidden_block_count_z"),
        (20, 2, "hidden_group_size_x"),
        (22, 2, "hidden_group_size_y"),
        (24, 2, "hidden_group_size_z"),
        (26, 2, "hidden_remainder_x"),
    ];
    assert_eq!(hidden, want.map(|(o, s, k)| (o, s, k.to_owned())).to_vec());
    assert!(sizes
        .args
        .iter()
        .skip(1)
        .all(|a| matches!(a.kind, ArgKind::Hidden(_))));
    let vadd = kernel(&co, "vadd");
    assert_eq!(vadd.kernarg_size, 296);
    assert_eq!(
        vadd.explicit_args(),
        [(0, 8), (8, 8), (16, 8), (24, 4), (32, 8)]
    );
    assert_eq!(layout(vadd)[5], (40, 4, "hidden_block_count_x".to_owned()));
}

#[test]
fn every_truncation_and_corruption_of_a_real_image_is_an_error_not_a_panic() {
    let bytes = fixture("bundle-v5.hipfb");
    let entries = parse_bundle(&bytes).unwrap();
    let co = code_object_for(&entries, "gfx90a").unwrap().data.clone();
    for cut in (0..co.len()).step_by(7) {
        let _ = read_code_object(&co[..cut]);
        let _ = image_len(&co[..cut]);
    }
    let mut flipped = co.clone();
    for at in (0..co.len()).step_by(13) {
        flipped[at] ^= 0xa5;
        let _ = read_code_object(&flipped);
        flipped[at] ^= 0xa5;
    }
    assert_eq!(
        read_code_object(&flipped).unwrap(),
        read_code_object(&co).unwrap()
    );
}
