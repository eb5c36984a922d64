//! Fuzzing on stable Rust for every decoder that reads what a peer sends.
//!
//! Each [`Target`] takes arbitrary bytes. The runner (`tests/fuzz.rs`) starts from a
//! committed corpus (`fuzz/corpus/<target>/`, written by [`seeds`]; plus the
//! fatbin and PTX fixtures of those crates' own tests), mutates inputs with
//! [`Mutator`], and checks each run: no panic, no single allocation and no growth of
//! live memory past the target's bound for an input of that length, and no input
//! running past a time bound (a loop the input can make endless).
//!
//! No coverage feedback (that needs a sanitizer runtime, so nightly): the
//! mutations are structure-aware instead — lengths and counts are the fields
//! overwritten most, with the values that break code that trusts them.

use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;
use xpupool_protocol::api::{LaunchDims, Request};
use xpupool_protocol::{frame, Hello, PROTOCOL_VERSION};

/// One fuzz target.
pub struct Target {
    /// Its name, and its corpus folder's.
    pub name: &'static str,
    /// Runs one input.
    pub run: fn(&mut State, &[u8]),
    /// The most one input of `len` bytes may allocate at once, and hold at its peak.
    pub bound: fn(usize) -> usize,
}

/// What a target keeps between inputs (a mock session for requests).
pub struct State {
    session: Option<Box<dyn xpupool_server::backend::Session>>,
    runs: u64,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// Nothing yet.
    pub fn new() -> Self {
        Self {
            session: None,
            runs: 0,
        }
    }
}

/// The mock device requests run against: small, so that every allocation a
/// request can make is bounded by it.
const MOCK_BYTES: u64 = 64 << 20;

fn frame_target(_: &mut State, input: &[u8]) {
    // A frame as a server reads it: the length prefix, then the body it declares.
    let Some((prefix, body)) = input.split_first_chunk::<4>() else {
        return;
    };
    if let Ok(len) = frame::body_len(*prefix) {
        let body = &body[..len.min(body.len())];
        let _ = frame::decode::<Request>(body);
        let _ = frame::decode::<Result<xpupool_protocol::Reply, xpupool_protocol::CuError>>(body);
        let _ = frame::decode::<Result<xpupool_protocol::Welcome, xpupool_protocol::CuError>>(body);
    }
}

fn hello_target(_: &mut State, input: &[u8]) {
    let _ = frame::decode::<Hello>(input);
    let _ = frame::decode::<Result<xpupool_protocol::Probe, xpupool_protocol::CuError>>(input);
}

fn request_target(state: &mut State, input: &[u8]) {
    // Decoded, then run against a mock session through the tenancy layer, as the
    // server would (two devices, a memory limit): every size, count, device and
    // handle in it is the fuzzer's.
    let Ok(request) = frame::decode::<Request>(input) else {
        return;
    };
    state.runs += 1;
    if state.runs.is_multiple_of(2000) {
        state.session = None;
    }
    let session = state.session.get_or_insert_with(|| {
        let host = xpupool_server::tenancy::Host::new(std::sync::Arc::new(
            xpupool_server::MockBackend::with_devices(2, MOCK_BYTES),
        ));
        let tenant = xpupool_server::Tenant::new("fuzz", Some(MOCK_BYTES / 2));
        Box::new(
            host.open_session(&tenant, 1, |inner| inner)
                .expect("a mock session opens"),
        )
    });
    let _ = session.handle(request);
}

fn image_target(_: &mut State, input: &[u8]) {
    if let Ok(image) = xpupool_fatbin::Image::from_wire(input) {
        let _ = image.entries();
    }
    let _ = xpupool_fatbin::image_from_bytes(input);
    let _ = xpupool_fatbin::parse_fatbin(input);
    let _ = xpupool_fatbin::retain_for_device(input, 90);
    let _ = xpupool_fatbin::cubin_globals(input);
    let _ = xpupool_fatbin::cubin_param_layouts(input);
}

fn amdgpu_target(_: &mut State, input: &[u8]) {
    let _ = xpupool_amdgpu::image_len(input);
    let _ = xpupool_amdgpu::msgpack::decode(input);
    let _ = xpupool_amdgpu::read_code_object(input);
    if let Ok(entries) = xpupool_amdgpu::parse_bundle(input) {
        if let Ok(entry) = xpupool_amdgpu::code_object_for(&entries, "gfx90a:xnack-") {
            let _ = xpupool_amdgpu::read_code_object(&entry.data);
        }
    }
}

/// AMD GPU bundles may be compressed: zstd's repeated blocks expand a byte into
/// up to about 32 KiB; the entries copied out of a bundle are no longer than it.
fn bundle_bound(len: usize) -> usize {
    (4 << 20) + (64 << 10) * len
}

fn ptx_target(_: &mut State, input: &[u8]) {
    let _ = xpupool_ptx::parse_module(&String::from_utf8_lossy(input));
}

/// Decoders of what a peer sends may allocate about what it sent (bincode's
/// collections start at most 1 MiB ahead of their bytes).
fn decoder_bound(len: usize) -> usize {
    (2 << 20) + 16 * len
}

/// Module images decompress (LZ4 expands at most ~255:1); a request may also
/// allocate mock device memory, which the device's size bounds.
fn image_bound(len: usize) -> usize {
    (4 << 20) + 260 * len
}

fn request_bound(len: usize) -> usize {
    image_bound(len) + MOCK_BYTES as usize
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: frame_target,
        bound: decoder_bound,
    },
    Target {
        name: "hello",
        run: hello_target,
        bound: decoder_bound,
    },
    Target {
        name: "request",
        run: request_target,
        bound: request_bound,
    },
    Target {
        name: "image",
        run: image_target,
        bound: image_bound,
    },
    Target {
        name: "ptx",
        run: ptx_target,
        bound: image_bound,
    },
    Target {
        name: "amdgpu",
        run: amdgpu_target,
        bound: bundle_bound,
    },
];

/// A small, fast, seeded generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded; never zero.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Integers that break code which trusts a length or a count.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    80 << 20,
    1 << 40,
];

/// Mutates corpus inputs into new ones.
pub struct Mutator {
    rng: Rng,
}

impl Mutator {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
        }
    }

    /// An index below `n` (`n > 0`): which input to start from.
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }

    /// A new input from `base`, with 1 to 8 mutations, sometimes spliced with
    /// another input of `corpus`.
    pub fn mutate(&mut self, base: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut out = base.to_vec();
        let rounds = 1 + self.rng.below(8);
        for _ in 0..rounds {
            self.one(&mut out, corpus);
        }
        out.truncate(1 << 20);
        out
    }

    fn one(&mut self, out: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let r = &mut self.rng;
        if out.is_empty() {
            out.push(r.next_u64() as u8);
            return;
        }
        let at = r.below(out.len());
        match r.below(9) {
            0 => out[at] ^= 1 << r.below(8),
            1 => out[at] = r.next_u64() as u8,
            2 => {
                // A little-endian integer of 1, 2, 4 or 8 bytes overwritten with
                // an interesting value, or one near the input's own length.
                let width = 1 << r.below(4);
                let value = if r.below(4) == 0 {
                    (out.len() as u64)
                        .wrapping_add(r.below(17) as u64)
                        .wrapping_sub(8)
                } else {
                    INTERESTING[r.below(INTERESTING.len())]
                };
                let bytes = value.to_le_bytes();
                for (i, b) in bytes.iter().take(width).enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => {
                let end = (at + 1 + r.below(64)).min(out.len());
                out.drain(at..end);
            }
            4 => {
                let n = 1 + r.below(64);
                let fill = r.next_u64() as u8;
                out.splice(at..at, std::iter::repeat_n(fill, n));
            }
            5 => {
                // A block repeated: counts of things that are all alike.
                let end = (at + 1 + r.below(256)).min(out.len());
                let block = out[at..end].to_vec();
                let times = 1 + r.below(8);
                for _ in 0..times {
                    out.splice(end..end, block.iter().copied());
                }
            }
            6 => out.truncate(at),
            7 if !corpus.is_empty() => {
                // Splice: this input's head, another's tail.
                let other = &corpus[r.below(corpus.len())];
                if !other.is_empty() {
                    let from = r.below(other.len());
                    out.truncate(at);
                    out.extend_from_slice(&other[from..]);
                }
            }
            _ => {
                let i = r.below(out.len());
                let j = r.below(out.len());
                out.swap(i, j);
            }
        }
    }
}

/// The seeds written into `fuzz/corpus/<target>/`: real encodings of what peers
/// send, so mutations start from inputs that get deep into the decoders.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let bytes = |v: Vec<u8>| ByteBuf::from(v);
    let dims = LaunchDims {
        grid: [4, 2, 1],
        block: [128, 1, 1],
        shared_bytes: 64,
    };
    let ptx = xpupool_fatbin::Image::Ptx(
        ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k(.param .u64 p)\n{\n ret;\n}\n"
            .to_owned(),
    )
    .to_wire();
    let requests = vec![
        Request::MemAlloc {
            device: 0,
            bytes: 4096,
        },
        Request::MemFree {
            ptr: 0x2000_0000_0000,
        },
        Request::MemGetInfo { device: 0 },
        Request::MemcpyHtoD {
            dst: 0x2000_0000_0000,
            data: bytes(vec![1, 2, 3, 4, 5, 6, 7, 8]),
            stream: 0,
        },
        Request::MemcpyDtoH {
            src: 0x2000_0000_0000,
            len: 64,
            stream: 0,
        },
        Request::MemcpyHtoDShared {
            dst: 0x2000_0000_0000,
            offset: 0,
            len: 4096,
            stream: 0,
        },
        Request::MemcpyDtoD {
            dst: 0x2000_0000_0000,
            src: 0x2000_0001_0000,
            len: 64,
            stream: 0,
        },
        Request::Memset {
            dst: 0x2000_0000_0000,
            value: 7,
            elem_size: 4,
            count: 16,
            stream: 0,
        },
        Request::Memset2D {
            dst: 0x2000_0000_0000,
            pitch: 512,
            value: 1,
            elem_size: 1,
            width: 100,
            height: 4,
            stream: 0,
        },
        Request::ModuleLoadCached {
            device: 0,
            hash: [7; 32],
        },
        Request::ModuleLoad {
            device: 1,
            image: bytes(ptx),
        },
        Request::ModuleGetGlobal {
            module: 1,
            name: "counter".into(),
        },
        Request::LaunchKernel {
            function: 2,
            dims,
            stream: 0,
            params: bytes(vec![0; 8]),
        },
        Request::StreamCreate {
            device: 1,
            flags: 1,
            priority: 0,
        },
        Request::EventCreate {
            device: 0,
            flags: 2,
        },
        Request::DeviceUsage { device: 1 },
        Request::ServerStatus {},
        Request::EventRecord {
            event: 3,
            stream: 0,
        },
        Request::EventElapsedTime { start: 3, end: 4 },
        Request::StreamWaitEvent {
            stream: 0,
            event: 3,
            flags: 0,
        },
        Request::Synchronize {},
    ];
    let encode = |r: &Request| frame::encode(r).expect("a seed encodes");
    match target {
        "frame" => requests
            .iter()
            .map(|r| (r.name().to_owned(), encode(r)))
            .collect(),
        "request" => requests
            .iter()
            .map(|r| (r.name().to_owned(), encode(r)[4..].to_vec()))
            .collect(),
        "hello" => [false, true]
            .iter()
            .map(|&probe| {
                let hello = Hello {
                    protocol_version: PROTOCOL_VERSION,
                    token: "0123456789abcdef0123456789abcdef".into(),
                    pid: 4242,
                    program: "/usr/bin/python3".into(),
                    probe,
                };
                (
                    format!("hello-probe-{probe}"),
                    frame::encode(&hello).expect("encodes")[4..].to_vec(),
                )
            })
            .collect(),
        "ptx" => SMALL_PTX
            .iter()
            .enumerate()
            .map(|(i, text)| (format!("small-{i}"), text.as_bytes().to_vec()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Small modules beside the large fixtures: mutations of these run fast.
const SMALL_PTX: &[&str] = &[
    ".version 8.0\n.target sm_90\n.address_size 64\n.visible .global .align 4 .u32 counter = 7;\n.visible .global .align 8 .b8 table[64];\n.const .align 4 .f32 coef[3] = {1.0, 2.5, -1.0};\n.visible .entry scale(.param .u64 out, .param .u32 n, .param .u32 k)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<8>;\n.reg .b64 %rd<5>;\nld.param.u64 %rd1, [out];\nld.param.u32 %r1, [n];\nld.param.u32 %r2, [k];\nmov.u32 %r3, %ctaid.x;\nmov.u32 %r4, %ntid.x;\nmov.u32 %r5, %tid.x;\nmad.lo.s32 %r6, %r3, %r4, %r5;\nsetp.ge.u32 %p1, %r6, %r1;\n@%p1 bra DONE;\nmul.lo.s32 %r7, %r6, %r2;\ncvta.to.global.u64 %rd2, %rd1;\nmul.wide.u32 %rd3, %r6, 4;\nadd.s64 %rd4, %rd2, %rd3;\nst.global.u32 [%rd4], %r7;\nDONE:\nret;\n}\n",
    ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry spin(.param .u64 out, .param .u32 count)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\n.reg .b64 %rd<3>;\n.shared .align 4 .b8 smem[1024];\nld.param.u64 %rd1, [out];\nld.param.u32 %r1, [count];\nmov.u32 %r2, 0;\nLOOP:\nadd.u32 %r2, %r2, 1;\nbar.sync 0;\nsetp.lt.u32 %p1, %r2, %r1;\n@%p1 bra LOOP;\ncvta.to.global.u64 %rd2, %rd1;\nst.global.u32 [%rd2], %r2;\nret;\n}\n",
    ".version 8.0\n.target sm_90\n.address_size 64\n.func (.param .b32 r) twice(.param .b32 x)\n{\n.reg .b32 %r<3>;\nld.param.b32 %r1, [x];\nadd.s32 %r2, %r1, %r1;\nst.param.b32 [r], %r2;\nret;\n}\n.visible .entry k(.param .u64 p)\n{\n.reg .b32 %r<3>;\n.reg .b64 %rd<2>;\n.local .align 8 .b8 stack[16];\nmov.u32 %r1, 21;\n{\n.param .b32 a;\n.param .b32 b;\nst.param.b32 [a], %r1;\ncall (b), twice, (a);\nld.param.b32 %r2, [b];\n}\nld.param.u64 %rd1, [p];\nst.global.u32 [%rd1], %r2;\nret;\n}\n",
];

/// Where a target's corpus is: its own folder, and for images and PTX the test
/// fixtures of those crates.
pub fn corpus_dirs(root: &Path, target: &str) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("fuzz/corpus").join(target)];
    match target {
        "image" => dirs.push(root.join("fatbin/tests/fixtures")),
        "ptx" => dirs.push(root.join("ptx/tests/fixtures")),
        "amdgpu" => dirs.push(root.join("amdgpu/tests/fixtures")),
        _ => {}
    }
    dirs
}

/// Every file in `dirs` (not recursing), at most 1 MiB each; images also as the
/// wire form the server receives.
pub fn load_corpus(dirs: &[PathBuf], target: &str) -> Vec<Vec<u8>> {
    let mut corpus = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let keep = match target {
                "image" => {
                    file.extension()
                        .is_some_and(|e| e == "fatbin" || e == "cubin" || e == "bin")
                        || file.file_name().is_some_and(|n| n == "app")
                }
                "ptx" => file.extension().is_some_and(|e| e == "ptx" || e == "bin"),
                _ => true,
            };
            if !keep {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&file) {
                if bytes.len() <= 1 << 20 {
                    if target == "image" {
                        if let Ok(image) = xpupool_fatbin::image_from_bytes(&bytes) {
                            corpus.push(image.to_wire());
                        }
                    }
                    corpus.push(bytes);
                }
            }
        }
    }
    corpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_valid_inputs_and_the_committed_corpus_is_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned();
        for (name, text) in seeds("ptx") {
            let text = String::from_utf8(text).unwrap();
            xpupool_ptx::parse_module(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for (name, body) in seeds("request") {
            frame::decode::<Request>(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for (name, body) in seeds("hello") {
            frame::decode::<Hello>(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for target in TARGETS {
            for (name, bytes) in seeds(target.name) {
                let path = root
                    .join("fuzz/corpus")
                    .join(target.name)
                    .join(format!("{name}.bin"));
                assert_eq!(
                    std::fs::read(&path).ok().as_deref(),
                    Some(bytes.as_slice()),
                    "{} is stale: rerun with XPUPOOL_FUZZ_WRITE_CORPUS=1",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn mutations_stay_within_a_mebibyte_and_change_the_input() {
        let mut m = Mutator::new(7);
        let base = vec![0u8; 64];
        let changed = (0..200)
            .filter(|_| m.mutate(&base, std::slice::from_ref(&base)) != base)
            .count();
        assert!(
            changed > 150,
            "{changed} of 200 mutations changed the input"
        );
        let big = vec![1u8; 1 << 20];
        assert!(m.mutate(&big, &[]).len() <= 1 << 20);
    }
}
