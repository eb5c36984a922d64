//! The dark-API `INTEGRITY_CHECK` answer (docs/FACTS-cuda-driver.md §3.3).
//!
//! cudart calls slot 1 of the INTEGRITY_CHECK export table with `(version, unix_seconds,
//! out)` and checks `out` against its own computation. The answer is HMAC-MD2 under a fixed
//! key over the calling process/thread, the export-table addresses and the identity of every
//! device. MD2 (RFC 1319) is implemented here because nothing else in the workspace needs it.

/// HMAC key (16 bytes = one MD2 block, so it is used as is).
const INTEGRITY_KEY: [u8; 16] = [
    0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52, 0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A, 0x9F,
];

/// Answer for `version % 10 == 0`.
const FIXED_ANSWER_0: [u64; 2] = [0x3341_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8];
/// Answer for `version % 10 == 1` (byte 7 differs).
const FIXED_ANSWER_1: [u64; 2] = [0x1841_181C_03CB_675C, 0x8ED3_83AA_1F4C_D1E8];

/// RFC 1319 `PI_SUBST`: a permutation of 0..=255 built from the digits of pi.
const PI_SUBST: [u8; 256] = [
    0x29, 0x2E, 0x43, 0xC9, 0xA2, 0xD8, 0x7C, 0x01, 0x3D, 0x36, 0x54, 0xA1, 0xEC, 0xF0, 0x06, 0x13,
    0x62, 0xA7, 0x05, 0xF3, 0xC0, 0xC7, 0x73, 0x8C, 0x98, 0x93, 0x2B, 0xD9, 0xBC, 0x4C, 0x82, 0xCA,
    0x1E, 0x9B, 0x57, 0x3C, 0xFD, 0xD4, 0xE0, 0x16, 0x67, 0x42, 0x6F, 0x18, 0x8A, 0x17, 0xE5, 0x12,
    0xBE, 0x4E, 0xC4, 0xD6, 0xDA, 0x9E, 0xDE, 0x49, 0xA0, 0xFB, 0xF5, 0x8E, 0xBB, 0x2F, 0xEE, 0x7A,
    0xA9, 0x68, 0x79, 0x91, 0x15, 0xB2, 0x07, 0x3F, 0x94, 0xC2, 0x10, 0x89, 0x0B, 0x22, 0x5F, 0x21,
    0x80, 0x7F, 0x5D, 0x9A, 0x5A, 0x90, 0x32, 0x27, 0x35, 0x3E, 0xCC, 0xE7, 0xBF, 0xF7, 0x97, 0x03,
    0xFF, 0x19, 0x30, 0xB3, 0x48, 0xA5, 0xB5, 0xD1, 0xD7, 0x5E, 0x92, 0x2A, 0xAC, 0x56, 0xAA, 0xC6,
    0x4F, 0xB8, 0x38, 0xD2, 0x96, 0xA4, 0x7D, 0xB6, 0x76, 0xFC, 0x6B, 0xE2, 0x9C, 0x74, 0x04, 0xF1,
    0x45, 0x9D, 0x70, 0x59, 0x64, 0x71, 0x87, 0x20, 0x86, 0x5B, 0xCF, 0x65, 0xE6, 0x2D, 0xA8, 0x02,
    0x1B, 0x60, 0x25, 0xAD, 0xAE, 0xB0, 0xB9, 0xF6, 0x1C, 0x46, 0x61, 0x69, 0x34, 0x40, 0x7E, 0x0F,
    0x55, 0x47, 0xA3, 0x23, 0xDD, 0x51, 0xAF, 0x3A, 0xC3, 0x5C, 0xF9, 0xCE, 0xBA, 0xC5, 0xEA, 0x26,
    0x2C, 0x53, 0x0D, 0x6E, 0x85, 0x28, 0x84, 0x09, 0xD3, 0xDF, 0xCD, 0xF4, 0x41, 0x81, 0x4D, 0x52,
    0x6A, 0xDC, 0x37, 0xC8, 0x6C, 0xC1, 0xAB, 0xFA, 0x24, 0xE1, 0x7B, 0x08, 0x0C, 0xBD, 0xB1, 0x4A,
    0x78, 0x88, 0x95, 0x8B, 0xE3, 0x63, 0xE8, 0x6D, 0xE9, 0xCB, 0xD5, 0xFE, 0x3B, 0x00, 0x1D, 0x39,
    0xF2, 0xEF, 0xB7, 0x0E, 0x66, 0x58, 0xD0, 0xE4, 0xA6, 0x77, 0x72, 0xF8, 0xEB, 0x75, 0x4B, 0x0A,
    0x31, 0x44, 0x50, 0xB4, 0x8F, 0xED, 0x1F, 0x1A, 0xDB, 0x99, 0x8D, 0x33, 0x9F, 0x11, 0x83, 0x14,
];

/// Streaming MD2 (RFC 1319), fed one byte at a time.
///
/// `x[16..32]` doubles as the input buffer and `x[32..48]` is filled with `block ^ state` as
/// bytes arrive, so a full block needs no copy before the 18 rounds.
#[derive(Clone)]
struct Md2 {
    /// Working state X: hash state, current block, block xor state.
    x: [u8; 48],
    /// Running checksum C.
    c: [u8; 16],
    /// Bytes of the current block received so far (0..16).
    n: u8,
    /// Last checksum byte L.
    l: u8,
}

impl Md2 {
    fn new() -> Self {
        Md2 {
            x: [0; 48],
            c: [0; 16],
            n: 0,
            l: 0,
        }
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.push(b);
        }
    }

    fn push(&mut self, b: u8) {
        let i = usize::from(self.n);
        self.x[16 + i] = b;
        self.x[32 + i] = b ^ self.x[i];
        self.c[i] ^= PI_SUBST[usize::from(b ^ self.l)];
        self.l = self.c[i];
        self.n = (self.n + 1) & 15;
        if self.n == 0 {
            self.compress();
        }
    }

    fn compress(&mut self) {
        let mut t = 0u8;
        for round in 0..18u8 {
            for x in self.x.iter_mut() {
                *x ^= PI_SUBST[usize::from(t)];
                t = *x;
            }
            t = t.wrapping_add(round);
        }
    }

    fn finalize(mut self) -> [u8; 16] {
        let pad = 16 - self.n;
        for _ in 0..pad {
            self.push(pad);
        }
        let checksum = self.c;
        self.update(&checksum);
        let mut out = [0; 16];
        out.copy_from_slice(&self.x[..16]);
        out
    }
}

/// MD2 of `data`.
fn md2(data: &[u8]) -> [u8; 16] {
    let mut h = Md2::new();
    h.update(data);
    h.finalize()
}

/// HMAC (RFC 2104) over MD2; `parts` are concatenated to form the message.
fn hmac_md2(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut k = [0u8; 16];
    if key.len() > 16 {
        k = md2(key);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Md2::new();
    for b in k {
        inner.push(b ^ 0x36);
    }
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Md2::new();
    for b in k {
        outer.push(b ^ 0x5c);
    }
    outer.update(&inner);
    outer.finalize()
}

/// Identity of one device as the rest of the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceIdentity {
    /// `cuDeviceGetUuid` bytes.
    pub(crate) uuid: [u8; 16],
    /// `CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID`.
    pub(crate) pci_domain: i32,
    /// `CU_DEVICE_ATTRIBUTE_PCI_BUS_ID`.
    pub(crate) pci_bus: i32,
    /// `CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID`.
    pub(crate) pci_device: i32,
}

impl DeviceIdentity {
    /// The 28-byte record hashed per device.
    fn record(&self) -> [u8; 28] {
        let mut r = [0u8; 28];
        r[..16].copy_from_slice(&self.uuid);
        r[16..20].copy_from_slice(&self.pci_domain.to_le_bytes());
        r[20..24].copy_from_slice(&self.pci_bus.to_le_bytes());
        r[24..28].copy_from_slice(&self.pci_device.to_le_bytes());
        r
    }
}

/// Everything the integrity answer depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IntegrityInput<'a> {
    /// What `cuDriverGetVersion` reports.
    pub(crate) driver_version: u32,
    /// The `version` argument of the call.
    pub(crate) version: u32,
    /// `getpid()`.
    pub(crate) pid: u32,
    /// `pthread_self()` of the calling thread, truncated to 32 bits.
    pub(crate) thread: u32,
    /// Address of the table returned for CUDART_INTERFACE.
    pub(crate) cudart_interface_table: usize,
    /// Address of the table returned for INTEGRITY_CHECK.
    pub(crate) integrity_table: usize,
    /// The function pointer stored in INTEGRITY_CHECK slot 1.
    pub(crate) integrity_fn: usize,
    /// The `unix_seconds` argument of the call.
    pub(crate) unix_seconds: u64,
    /// Every device, in ordinal order, as `cuDeviceGetCount` / `cuDeviceGetUuid` report them.
    pub(crate) devices: &'a [DeviceIdentity],
}

impl IntegrityInput<'_> {
    /// The 48-byte leading record (`repr(C)` layout of a 64-bit little-endian process).
    fn record(&self) -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0..4].copy_from_slice(&self.driver_version.to_le_bytes());
        r[4..8].copy_from_slice(&self.version.to_le_bytes());
        r[8..12].copy_from_slice(&self.pid.to_le_bytes());
        r[12..16].copy_from_slice(&self.thread.to_le_bytes());
        r[16..24].copy_from_slice(&(self.cudart_interface_table as u64).to_le_bytes());
        r[24..32].copy_from_slice(&(self.integrity_table as u64).to_le_bytes());
        r[32..40].copy_from_slice(&(self.integrity_fn as u64).to_le_bytes());
        r[40..48].copy_from_slice(&self.unix_seconds.to_le_bytes());
        r
    }
}

/// The two words cudart expects in `out` from INTEGRITY_CHECK slot 1.
pub(crate) fn integrity_check(input: &IntegrityInput<'_>) -> [u64; 2] {
    match input.version % 10 {
        0 => return FIXED_ANSWER_0,
        1 => return FIXED_ANSWER_1,
        _ => {}
    }
    let record = input.record();
    let devices: Vec<[u8; 28]> = input.devices.iter().map(DeviceIdentity::record).collect();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + devices.len());
    parts.push(&record);
    parts.extend(devices.iter().map(|d| &d[..]));
    let digest = hmac_md2(&INTEGRITY_KEY, &parts);
    let (lo, hi) = digest.split_at(8);
    [
        u64::from_le_bytes(lo.try_into().expect("8 bytes")),
        u64::from_le_bytes(hi.try_into().expect("8 bytes")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The 66-byte state layout used by ZLUDA's published vectors:
    /// X (48) || C (16) || n || L.
    fn raw_state(h: &Md2) -> [u8; 66] {
        let mut s = [0u8; 66];
        s[..48].copy_from_slice(&h.x);
        s[48..64].copy_from_slice(&h.c);
        s[64] = h.n;
        s[65] = h.l;
        s
    }

    fn from_raw_state(s: &[u8; 66]) -> Md2 {
        let mut h = Md2::new();
        h.x.copy_from_slice(&s[..48]);
        h.c.copy_from_slice(&s[48..64]);
        h.n = s[64];
        h.l = s[65];
        h
    }

    #[test]
    fn md2_rfc1319_vectors() {
        let cases: [(&str, &str); 7] = [
            ("", "8350e5a3e24c153df2275c9f80692773"),
            ("a", "32ec01ec4a6dac72c0ab96fb34c0b5d1"),
            ("abc", "da853b0d3f88d99b30283a69e6ded6bb"),
            ("message digest", "ab4f496bfb2a530b219ff33031fe06b0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "4e8ddff3650292ab5a4108c3aa47940b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "da33def2a42df13975352846c30338cd",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "d5976f79d83d3a0dc9806c3c66f3efd8",
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(hex(&md2(msg.as_bytes())), want, "MD2({msg:?})");
        }
    }

    #[test]
    fn md2_streaming_split_is_irrelevant() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = md2(&data);
        for split in [0, 1, 15, 16, 17, 150, 300] {
            let mut h = Md2::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            assert_eq!(h.finalize(), whole, "split at {split}");
        }
    }

    #[test]
    fn pi_subst_is_a_permutation() {
        let mut seen = [false; 256];
        for &b in &PI_SUBST {
            assert!(!seen[usize::from(b)]);
            seen[usize::from(b)] = true;
        }
    }

    /// Bouncy Castle's HMAC-MD2 vector (RFC 2202 case 1 inputs: 20-byte key, longer than the
    /// MD2 block, so it is hashed first).
    #[test]
    fn hmac_md2_known_vector() {
        let key = [0x0bu8; 20];
        assert_eq!(
            hex(&hmac_md2(&key, &[b"Hi There"])),
            "dc1923ef5f161d35bef839ca8c807808"
        );
    }

    #[test]
    fn fixed_answers() {
        let mut input = IntegrityInput {
            driver_version: 13020,
            version: 12080,
            pid: 1,
            thread: 2,
            cudart_interface_table: 3,
            integrity_table: 4,
            integrity_fn: 5,
            unix_seconds: 6,
            devices: &[],
        };
        let bytes = |w: [u64; 2]| {
            let mut v = w[0].to_le_bytes().to_vec();
            v.extend_from_slice(&w[1].to_le_bytes());
            hex(&v)
        };
        assert_eq!(
            bytes(integrity_check(&input)),
            "5c67cb031c184133e8d14c1faa83d38e"
        );
        input.version = 13000;
        assert_eq!(integrity_check(&input), FIXED_ANSWER_0);
        input.version = 12081;
        assert_eq!(
            bytes(integrity_check(&input)),
            "5c67cb031c184118e8d14c1faa83d38e"
        );
        input.version = 12082;
        assert_ne!(integrity_check(&input), FIXED_ANSWER_0);
        assert_ne!(integrity_check(&input), FIXED_ANSWER_1);
    }

    // ZLUDA (vosen/ZLUDA dark_api/src/lib.rs, unit tests `integrity_check_pass2..5`) publishes
    // the 66-byte state of its byte-wise implementation after each stage. The state layout is
    // exactly MD2's X || C || n || L, so the same vectors check this implementation.

    const ZLUDA_PASS2_STATE: [u8; 66] = [
        0x8b, 0x21, 0x9a, 0x49, 0xe8, 0x6d, 0x1a, 0xee, 0xf2, 0x37, 0xf9, 0xb5, 0x4a, 0x8c, 0x3c,
        0x75, 0xc7, 0x1e, 0xee, 0x21, 0xcf, 0x29, 0x8a, 0xe5, 0x13, 0x83, 0xf4, 0xec, 0x33, 0x04,
        0xe2, 0xfd, 0xb0, 0x2f, 0x09, 0x01, 0x4f, 0xf7, 0x68, 0x6d, 0x69, 0x46, 0x43, 0x7e, 0xb6,
        0x2b, 0x21, 0xed, 0x57, 0xa1, 0x10, 0x86, 0x0e, 0x60, 0x44, 0x1e, 0x70, 0x5f, 0x67, 0xd1,
        0xeb, 0x67, 0xa1, 0x3d, 0x00, 0x3d,
    ];

    /// Stage 2: the inner pad (K xor 0x36) fed into a fresh MD2.
    #[test]
    fn zluda_pass2_vector() {
        let mut h = Md2::new();
        for b in INTEGRITY_KEY {
            h.push(b ^ 0x36);
        }
        assert_eq!(raw_state(&h), ZLUDA_PASS2_STATE);
    }

    /// Stage 3: the 48-byte record of a real call (driver 12080, version 12082).
    #[test]
    fn zluda_pass3_vector() {
        let input = IntegrityInput {
            driver_version: 0x2f30,
            version: 12082,
            pid: 0x002f_a423,
            thread: 0xf79c_1000,
            cudart_interface_table: 0x7fff_f695_8240,
            integrity_table: 0x7fff_f695_8220,
            integrity_fn: 0x7fff_f2aa_f4a0,
            unix_seconds: 0x682b_9cee,
            devices: &[],
        };
        let mut h = from_raw_state(&ZLUDA_PASS2_STATE);
        h.update(&input.record());
        let expected: [u8; 66] = [
            0x0a, 0xfd, 0xab, 0xc9, 0xff, 0x9b, 0xa0, 0xbe, 0x4d, 0x30, 0x32, 0x82, 0x74, 0x4f,
            0xa7, 0x48, 0x9d, 0x23, 0x82, 0xa3, 0x87, 0xfa, 0x6c, 0xdb, 0x92, 0x49, 0xd9, 0xb5,
            0x4b, 0x2b, 0x5e, 0x51, 0x6e, 0xf7, 0xf9, 0x4d, 0x28, 0x8a, 0x64, 0x06, 0x19, 0xb3,
            0xe6, 0xbe, 0xa4, 0xec, 0x7e, 0x54, 0x64, 0x28, 0xd9, 0xe1, 0xd4, 0x34, 0xc0, 0xa9,
            0x49, 0x88, 0xc9, 0x61, 0x58, 0xdd, 0x66, 0x74, 0x00, 0x74,
        ];
        assert_eq!(raw_state(&h), expected);
    }

    /// Stage 4: one device record (PCI 0:2:0) fed into a captured state.
    #[test]
    fn zluda_pass4_vector() {
        let start: [u8; 66] = [
            0x84, 0xfd, 0x93, 0x10, 0xc6, 0xdb, 0xb3, 0xbc, 0x49, 0xc2, 0x25, 0xe7, 0xda, 0x6e,
            0x22, 0x6f, 0x9b, 0xbd, 0x81, 0x59, 0xc3, 0x01, 0x9a, 0x7a, 0x26, 0x34, 0x39, 0x0f,
            0x2a, 0x56, 0x13, 0xb1, 0xf6, 0xbc, 0x7f, 0xa1, 0x8f, 0x04, 0xa5, 0x4d, 0x0d, 0x78,
            0xab, 0x20, 0xf8, 0x23, 0x20, 0xa5, 0x3f, 0x67, 0x36, 0xe2, 0xde, 0x8a, 0xe5, 0xdf,
            0xe1, 0xf2, 0x03, 0x94, 0xad, 0xdc, 0x9a, 0xda, 0x00, 0xda,
        ];
        let mut uuid = [0u8; 16];
        for (i, w) in [0x8a2b_fe9au32, 0x382d_25ac, 0xc5ae_37ea, 0x5f32_716d]
            .iter()
            .enumerate()
        {
            uuid[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let dev = DeviceIdentity {
            uuid,
            pci_domain: 0,
            pci_bus: 2,
            pci_device: 0,
        };
        let mut h = from_raw_state(&start);
        h.update(&dev.record());
        let expected: [u8; 66] = [
            0x1f, 0xd8, 0x25, 0xd2, 0xdf, 0xfa, 0x64, 0xc7, 0xb6, 0x1a, 0xaf, 0x22, 0xb8, 0x79,
            0xfb, 0x96, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x7c, 0x9d, 0x46, 0xd2, 0x1f, 0xd8, 0x25, 0xd2, 0xdd, 0xfa, 0x64, 0xc7, 0xb6, 0x1a,
            0xaf, 0x22, 0xe6, 0x17, 0xbd, 0x3a, 0xd7, 0xdd, 0x5f, 0x82, 0x8c, 0x87, 0xce, 0x86,
            0x66, 0xaf, 0xa0, 0x50, 0x7a, 0x7d, 0xbb, 0xbc, 0x0c, 0x50,
        ];
        assert_eq!(raw_state(&h), expected);
    }

    /// Stage 5: MD2 finalization (padding + checksum block) of a captured state.
    #[test]
    fn zluda_pass5_vector() {
        let start: [u8; 66] = [
            0x3e, 0x4b, 0xf2, 0x95, 0x71, 0xf5, 0x6b, 0x51, 0x07, 0xbf, 0x4b, 0xf1, 0x04, 0x0e,
            0x8e, 0x0b, 0x5f, 0x4d, 0x30, 0x0c, 0x0f, 0x0c, 0xae, 0xfb, 0x48, 0xaf, 0x23, 0xb5,
            0xea, 0x4c, 0xc2, 0xdb, 0xd7, 0xdf, 0x88, 0x74, 0x39, 0x58, 0x16, 0x3a, 0x1f, 0x7c,
            0x9b, 0x20, 0x7e, 0x7e, 0x94, 0xc8, 0x8b, 0xc6, 0xb2, 0x38, 0x0d, 0x07, 0x7d, 0xbd,
            0x90, 0xd5, 0x39, 0x63, 0xeb, 0x1d, 0x4f, 0x40, 0x00, 0x40,
        ];
        let digest = from_raw_state(&start).finalize();
        assert_eq!(hex(&digest), "002353065e96f69c61aa962d2ecda858");
    }

    /// The whole answer equals HMAC-MD2(K, record || devices); continuing from ZLUDA's
    /// published stage-2 state gives the same digest (final value: regression vector).
    #[test]
    fn full_integrity_vector() {
        let devices = [DeviceIdentity {
            uuid: *b"0123456789abcdef",
            pci_domain: 0,
            pci_bus: 2,
            pci_device: 0,
        }];
        let input = IntegrityInput {
            driver_version: 0x2f30,
            version: 12082,
            pid: 0x002f_a423,
            thread: 0xf79c_1000,
            cudart_interface_table: 0x7fff_f695_8240,
            integrity_table: 0x7fff_f695_8220,
            integrity_fn: 0x7fff_f2aa_f4a0,
            unix_seconds: 0x682b_9cee,
            devices: &devices,
        };
        let out = integrity_check(&input);
        let mut msg = input.record().to_vec();
        msg.extend_from_slice(&devices[0].record());
        let digest = hmac_md2(&INTEGRITY_KEY, &[&msg]);
        assert_eq!(out[0].to_le_bytes(), digest[..8]);
        assert_eq!(out[1].to_le_bytes(), digest[8..]);

        // Chained: ZLUDA's stage-2 state plus the record reproduces the inner hash's prefix.
        let mut inner = from_raw_state(&ZLUDA_PASS2_STATE);
        inner.update(&msg);
        let inner = inner.finalize();
        let mut outer = Md2::new();
        for b in INTEGRITY_KEY {
            outer.push(b ^ 0x5c);
        }
        outer.update(&inner);
        assert_eq!(outer.finalize(), digest);
        assert_eq!(hex(&digest), FULL_VECTOR_HEX);
    }

    /// Recorded from this implementation once the stage vectors above passed, and
    /// cross-checked with an independent block-wise MD2/HMAC written in Python.
    const FULL_VECTOR_HEX: &str = "39f0fc20823456c7e08c806deacf7786";
}
