//! Tests on images produced by the CUDA 13.2 nvcc (tests/fixtures/regen.sh) and on
//! hand-built wrapper structures.

use xpupool_fatbin::{
    best_ptx, cubin_for, fatbin_total_len, image_from_bytes, image_from_ptr, parse_fatbin, Entry,
    EntryKind, FatbinError, Image,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(kind, flags)` of every entry, read straight from the bytes (to prove which
/// compression a fixture exercises).
fn raw_entry_flags(f: &[u8]) -> Vec<(u16, u64)> {
    let u16_at = |o: usize| u16::from_le_bytes(f[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
    let end = fatbin_total_len(f).unwrap();
    let mut off = usize::from(u16_at(6));
    let mut out = Vec::new();
    while off < end {
        out.push((u16_at(off), u64_at(off + 40)));
        off += u32_at(off + 4) as usize + u64_at(off + 8) as usize;
    }
    out
}

fn summary(entries: &[Entry]) -> Vec<(EntryKind, u32, (u16, u16))> {
    entries
        .iter()
        .map(|e| (e.kind, e.arch, e.version))
        .collect()
}

fn check_sm90_pair(entries: &[Entry]) {
    assert_eq!(
        summary(entries),
        [(EntryKind::Elf, 90, (1, 8)), (EntryKind::Ptx, 90, (9, 2))]
    );
    let elf = &entries[0].data;
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[7], 0x41, "EI_OSABI of a cubin");
    let ptx = std::str::from_utf8(&entries[1].data).unwrap();
    assert!(ptx.contains(".version 9.2") && ptx.contains(".target sm_90"));
    assert!(ptx.contains(".entry axpy") && ptx.contains(".entry fill"));
    assert!(!ptx.ends_with('\0'));
}

#[test]
fn uncompressed_fixture() {
    let f = fixture("nocompress.fatbin");
    assert_eq!(raw_entry_flags(&f), [(2, 0x11), (1, 0x11)]);
    check_sm90_pair(&parse_fatbin(&f).unwrap());
}

#[test]
fn compressed_fixtures_decode_to_the_uncompressed_images() {
    let reference = parse_fatbin(&fixture("nocompress.fatbin")).unwrap();
    let cases: [(&str, [(u16, u64); 2]); 3] = [
        // nvcc 13.2 default: cubin raw, PTX ZSTD.
        ("plain.fatbin", [(2, 0x11), (1, 0x8011)]),
        // --compress-mode=size: both ZSTD.
        ("zstd-all.fatbin", [(2, 0x8011), (1, 0x8011)]),
        // --compress-mode=speed: PTX LZ4 block.
        ("lz4.fatbin", [(2, 0x11), (1, 0x2011)]),
    ];
    for (name, flags) in cases {
        let f = fixture(name);
        assert_eq!(raw_entry_flags(&f), flags, "{name}");
        let entries = parse_fatbin(&f).unwrap();
        check_sm90_pair(&entries);
        assert_eq!(entries, reference, "{name}");
    }
}

#[test]
fn multi_arch_fixture() {
    let entries = parse_fatbin(&fixture("multi.fatbin")).unwrap();
    assert_eq!(
        summary(&entries),
        [
            (EntryKind::Elf, 75, (1, 8)),
            (EntryKind::Ptx, 75, (9, 2)),
            (EntryKind::Elf, 80, (1, 8)),
            (EntryKind::Elf, 90, (1, 8)),
            (EntryKind::Ptx, 90, (9, 2)),
        ]
    );
    assert_eq!(best_ptx(&entries, 86).unwrap().arch, 75);
    assert_eq!(best_ptx(&entries, 100).unwrap().arch, 90);
    assert!(best_ptx(&entries, 70).is_none());
    assert_eq!(cubin_for(&entries, 80).unwrap().arch, 80);
    assert!(cubin_for(&entries, 86).is_none());
    assert!(std::str::from_utf8(&best_ptx(&entries, 75).unwrap().data)
        .unwrap()
        .contains(".target sm_75"));
}

#[test]
fn bare_fatbin_image() {
    let f = fixture("plain.fatbin");
    let mut with_junk = f.clone();
    with_junk.extend_from_slice(b"junk after the fatbin");
    let image = image_from_bytes(&with_junk).unwrap();
    assert_eq!(image, Image::Fatbin(f.clone()));
    // SAFETY: a complete fatbin.
    let image2 = unsafe { image_from_ptr(with_junk.as_ptr()) }.unwrap();
    assert_eq!(image2, image);
    check_sm90_pair(&image.entries().unwrap());
}

#[test]
fn cubin_image_length_from_headers() {
    let cubin = fixture("kernel.cubin");
    let mut padded = cubin.clone();
    padded.extend(std::iter::repeat_n(0xa5, 4096));
    let image = image_from_bytes(&padded).unwrap();
    assert_eq!(image, Image::Elf(cubin.clone()));
    // SAFETY: a complete cubin.
    assert_eq!(unsafe { image_from_ptr(padded.as_ptr()) }.unwrap(), image);
    let entries = image.entries().unwrap();
    assert_eq!(summary(&entries), [(EntryKind::Elf, 90, (0, 0))]);
    // The cubin nvcc -cubin writes equals the one nvcc embeds.
    let fat = parse_fatbin(&fixture("nocompress.fatbin")).unwrap();
    assert_eq!(fat[0].data, cubin);
    // Cut anywhere: an error, never a panic or over-read.
    for len in (0..cubin.len()).step_by(97) {
        assert!(image_from_bytes(&cubin[..len]).is_err(), "len {len}");
    }
}

#[test]
fn ptx_image() {
    let mut ptx = fixture("kernel.ptx");
    let text = String::from_utf8(ptx.clone()).unwrap();
    ptx.push(0);
    ptx.extend_from_slice(b"\xff\xfe after the NUL");
    let image = image_from_bytes(&ptx).unwrap();
    assert_eq!(image, Image::Ptx(text.clone()));
    // SAFETY: NUL-terminated text.
    assert_eq!(unsafe { image_from_ptr(ptx.as_ptr()) }.unwrap(), image);
    let entries = image.entries().unwrap();
    assert_eq!(summary(&entries), [(EntryKind::Ptx, 90, (9, 2))]);
    assert_eq!(entries[0].data, text.as_bytes());
    // A short string is read only up to its NUL.
    // SAFETY: NUL-terminated text.
    let short = unsafe { image_from_ptr(c"P".as_ptr().cast()) }.unwrap();
    assert_eq!(short, Image::Ptx("P".into()));
}

#[test]
fn unsupported_and_unknown_images() {
    assert!(matches!(
        image_from_bytes(b"!<arch>\nmember.o/      0 ..."),
        Err(FatbinError::Unsupported(_))
    ));
    let mut old = 0x1EE5_5A01u32.to_le_bytes().to_vec();
    old.extend_from_slice(&[1; 32]);
    assert!(matches!(
        image_from_bytes(&old),
        Err(FatbinError::Unsupported(_))
    ));
    assert!(matches!(
        image_from_bytes(b"\x01\x02binary"),
        Err(FatbinError::UnknownFormat)
    ));
    assert!(image_from_bytes(b"").is_err());
    assert!(image_from_bytes(b"\0").is_err());
    assert!(matches!(
        image_from_bytes(b"\xc3\x28 bad utf8"),
        Err(FatbinError::InvalidUtf8)
    ));
    // SAFETY: null is rejected before any read.
    assert!(unsafe { image_from_ptr(std::ptr::null()) }.is_err());
}

/// A buffer with a wrapper at offset 0 and fatbins/list elsewhere, pointers absolute.
struct WrapperBuf {
    buf: Vec<u8>,
}

impl WrapperBuf {
    /// `version`, the data fatbin, the list fatbins (None = NULL list pointer).
    fn new(version: u32, data: &[u8], list: Option<&[&[u8]]>) -> Self {
        let list = list.map(<[&[u8]]>::to_vec);
        let n = list.as_ref().map_or(0, Vec::len);
        let list_off = 24;
        let data_off = (list_off + 8 * (n + 1)).div_ceil(8) * 8;
        let mut offs = vec![data_off + data.len().div_ceil(8) * 8];
        for f in list.iter().flatten() {
            offs.push(offs.last().unwrap() + f.len().div_ceil(8) * 8);
        }
        let total = *offs.last().unwrap();
        let mut buf = vec![0u8; total];
        let base = buf.as_ptr() as u64;
        buf[0..4].copy_from_slice(&0x4662_43B1u32.to_le_bytes());
        buf[4..8].copy_from_slice(&version.to_le_bytes());
        buf[8..16].copy_from_slice(&(base + data_off as u64).to_le_bytes());
        let list_ptr = if list.is_some() {
            base + list_off as u64
        } else {
            0
        };
        buf[16..24].copy_from_slice(&list_ptr.to_le_bytes());
        buf[data_off..data_off + data.len()].copy_from_slice(data);
        for (i, f) in list.iter().flatten().enumerate() {
            let at = offs[i];
            buf[at..at + f.len()].copy_from_slice(f);
            let slot = list_off + 8 * i;
            buf[slot..slot + 8].copy_from_slice(&(base + at as u64).to_le_bytes());
        }
        WrapperBuf { buf }
    }

    fn both(&self) -> Result<Image, FatbinError> {
        let a = image_from_bytes(&self.buf);
        if a.is_ok() {
            // SAFETY: the buffer holds a valid wrapper whose pointers point into it.
            let b = unsafe { image_from_ptr(self.buf.as_ptr()) };
            assert_eq!(a, b);
        }
        a
    }
}

#[test]
fn wrapper_v1() {
    let f = fixture("plain.fatbin");
    let w = WrapperBuf::new(1, &f, None);
    assert_eq!(w.both().unwrap(), Image::Fatbin(f));
}

#[test]
fn wrapper_v2_with_prelinked_list() {
    let a = fixture("plain.fatbin");
    let b = fixture("lz4.fatbin");
    let c = fixture("multi.fatbin");
    let w = WrapperBuf::new(2, &a, Some(&[&b, &c]));
    let image = w.both().unwrap();
    assert_eq!(image, Image::Fatbins(vec![a.clone(), b, c]));
    assert_eq!(image.entries().unwrap().len(), 2 + 2 + 5);

    let empty = WrapperBuf::new(2, &a, Some(&[]));
    assert_eq!(empty.both().unwrap(), Image::Fatbins(vec![a.clone()]));
    let null = WrapperBuf::new(2, &a, None);
    assert_eq!(null.both().unwrap(), Image::Fatbins(vec![a.clone()]));
}

#[test]
fn wrapper_errors() {
    let f = fixture("plain.fatbin");
    let bad_version = WrapperBuf::new(3, &f, None);
    assert!(matches!(
        image_from_bytes(&bad_version.buf),
        Err(FatbinError::Invalid { .. })
    ));
    // Pointers outside the slice are refused by image_from_bytes.
    let w = WrapperBuf::new(1, &f, None);
    let copy = w.buf.clone();
    assert!(image_from_bytes(&copy).is_err());
    // Truncated wrapper buffers.
    let w = WrapperBuf::new(2, &f, Some(&[&f]));
    for len in (0..w.buf.len()).step_by(61) {
        assert!(image_from_bytes(&w.buf[..len]).is_err(), "len {len}");
    }
}

/// Section `(vaddr, file offset, size)` by name, from a 64-bit ELF (test-only reader).
fn section(elf: &[u8], want: &str) -> Option<(u64, usize, usize)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(0x28) as usize,
        u16_at(0x3a),
        u16_at(0x3c),
        u16_at(0x3e),
    );
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(sh(shstrndx) + 0x18) as usize;
    (0..shnum).find_map(|i| {
        let name_off = strtab + u32_at(sh(i));
        let name_end = name_off + elf[name_off..].iter().position(|&b| b == 0)?;
        (&elf[name_off..name_end] == want.as_bytes()).then(|| {
            (
                u64_at(sh(i) + 0x10),
                u64_at(sh(i) + 0x18) as usize,
                u64_at(sh(i) + 0x20) as usize,
            )
        })
    })
}

#[test]
fn fatbins_embedded_in_an_executable() {
    let app = fixture("app");
    let (fat_vaddr, fat_off, fat_size) = section(&app, ".nv_fatbin").unwrap();
    let nv_fatbin = &app[fat_off..fat_off + fat_size];

    // .nv_fatbin is a run of 8-aligned fatbins, one per module.
    let mut starts = Vec::new();
    let mut all = Vec::new();
    let mut off = 0;
    while off < nv_fatbin.len() {
        let len = fatbin_total_len(&nv_fatbin[off..]).unwrap();
        starts.push(fat_vaddr + off as u64);
        all.push(parse_fatbin(&nv_fatbin[off..]).unwrap());
        off = (off + len).div_ceil(8) * 8;
    }
    assert!(all.len() >= 2, "{} fatbins", all.len());
    let kernel = all
        .iter()
        .find(|es| {
            es.iter().any(|e| {
                e.kind == EntryKind::Ptx && e.data.windows(11).any(|w| w == b".entry axpy")
            })
        })
        .expect("the kernel's fatbin");
    assert_eq!(cubin_for(kernel, 90).unwrap().data, fixture("kernel.cubin"));

    // Every wrapper in .nvFatBinSegment points at one of those fatbins (link-time address;
    // in a PIE the loader relocates it).
    let (_, seg_off, seg_size) = section(&app, ".nvFatBinSegment").unwrap();
    assert_eq!(seg_size % 24, 0);
    let mut versions = Vec::new();
    for w in app[seg_off..seg_off + seg_size].chunks(24) {
        assert_eq!(u32::from_le_bytes(w[0..4].try_into().unwrap()), 0x4662_43B1);
        versions.push(u32::from_le_bytes(w[4..8].try_into().unwrap()));
        let data = u64::from_le_bytes(w[8..16].try_into().unwrap());
        assert!(starts.contains(&data), "wrapper data {data:#x}");
    }
    assert!(versions.iter().all(|v| *v == 1 || *v == 2), "{versions:?}");
}

#[test]
fn wire_round_trip() {
    let images = [
        Image::Fatbin(fixture("plain.fatbin")),
        Image::Fatbins(vec![fixture("plain.fatbin"), fixture("multi.fatbin")]),
        Image::Fatbins(vec![]),
        Image::Elf(fixture("kernel.cubin")),
        Image::Ptx(String::from_utf8(fixture("kernel.ptx")).unwrap()),
        Image::Ascend {
            magic: 0x4355_4245,
            elf: fixture("kernel.cubin"),
        },
    ];
    for image in images {
        let wire = image.to_wire();
        assert_eq!(Image::from_wire(&wire).unwrap(), image);
        for len in (0..wire.len()).step_by(37) {
            assert!(Image::from_wire(&wire[..len]).is_err());
        }
        let mut longer = wire.clone();
        longer.push(0);
        assert!(Image::from_wire(&longer).is_err());
    }
    assert!(Image::from_wire(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(Image::from_wire(&[2, 0xff, 0xff, 0xff, 0xff]).is_err());
}

/// xorshift64*: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Everything a parser may be handed; results are ignored, only panics matter.
fn poke(bytes: &[u8]) {
    let _ = parse_fatbin(bytes);
    let _ = fatbin_total_len(bytes);
    if let Ok(image) = image_from_bytes(bytes) {
        let _ = image.entries();
        assert_eq!(Image::from_wire(&image.to_wire()).as_ref(), Ok(&image));
    }
    let _ = Image::from_wire(bytes);
}

#[test]
fn malformed_inputs_never_panic() {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut w2 = WrapperBuf::new(2, &fixture("plain.fatbin"), Some(&[&fixture("lz4.fatbin")]));
    let seeds = [
        fixture("plain.fatbin"),
        fixture("zstd-all.fatbin"),
        fixture("lz4.fatbin"),
        fixture("multi.fatbin"),
        fixture("kernel.cubin"),
        Image::Fatbin(fixture("plain.fatbin")).to_wire(),
    ];
    for seed in &seeds {
        // Every truncation of a fatbin is an error; of anything, never a panic.
        for len in 0..seed.len().min(2048) {
            poke(&seed[..len]);
        }
        for len in (0..seed.len()).step_by(13) {
            if fatbin_total_len(seed).is_ok() {
                assert!(parse_fatbin(&seed[..len]).is_err(), "len {len}");
            }
        }
        // Random corruption: flip bytes, mostly in the headers.
        for _ in 0..400 {
            let mut m = seed.clone();
            for _ in 0..1 + noise.next() % 4 {
                let r = noise.next() as usize;
                let at = if r & 1 == 0 { r % 128 } else { r } % m.len();
                m[at] = noise.next() as u8;
            }
            poke(&m);
        }
    }
    for _ in 0..300 {
        let at = noise.next() as usize % w2.buf.len();
        let saved = w2.buf[at];
        w2.buf[at] = noise.next() as u8;
        let _ = image_from_bytes(&w2.buf);
        w2.buf[at] = saved;
    }
    for _ in 0..2000 {
        let len = (noise.next() % 200) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
        if len >= 4 && noise.next() & 1 == 0 {
            let magic: [u32; 3] = [0xBA55_ED50, 0x4662_43B1, 0x464C_457F];
            v[..4].copy_from_slice(&magic[noise.next() as usize % 3].to_le_bytes());
        }
        poke(&v);
    }
}

#[test]
fn a_fatbin_keeps_only_what_the_device_can_use() {
    use xpupool_fatbin::retain_for_device;
    let multi = fixture("multi.fatbin"); // sm_75 ELF+PTX, sm_80 ELF, sm_90 ELF+PTX
    let kept = retain_for_device(&multi, 90).unwrap().expect("smaller");
    assert!(kept.len() < multi.len());
    let entries = parse_fatbin(&kept).unwrap();
    let mut kinds: Vec<(EntryKind, u32)> = entries.iter().map(|e| (e.kind, e.arch)).collect();
    kinds.sort_by_key(|&(k, a)| (a, k == EntryKind::Ptx));
    assert_eq!(kinds, vec![(EntryKind::Elf, 90), (EntryKind::Ptx, 90)]);
    // The kept entries are the same bytes, decompressing to the same code.
    let all = parse_fatbin(&multi).unwrap();
    for e in &entries {
        assert!(all
            .iter()
            .any(|a| a.kind == e.kind && a.arch == e.arch && a.data == e.data));
    }
    // An sm_86 device: no matching ELF, the newest PTX not newer than it.
    let kept = retain_for_device(&multi, 86).unwrap().expect("smaller");
    let entries = parse_fatbin(&kept).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].kind, entries[0].arch), (EntryKind::Ptx, 75));
    // Nothing usable (sm_70): left to the server to say so.
    assert!(retain_for_device(&multi, 70).unwrap().is_none());
    // Everything already needed: unchanged.
    assert!(retain_for_device(&fixture("plain.fatbin"), 90)
        .unwrap()
        .is_none());
    // Truncated input is an error, not a panic.
    for cut in [20, 100, multi.len() - 1] {
        let _ = retain_for_device(&multi[..cut], 90);
    }
}
