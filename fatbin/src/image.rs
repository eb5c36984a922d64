//! Owned copies of the images a module-load call hands the driver, sniffed from memory.

use crate::elf::{cubin_arch, elf_len, ELF_MAGIC};
use crate::fatbin::{fatbin_total_len, parse_fatbin};
use crate::{
    to_len, Bytes, Entry, EntryKind, FatbinError, FATBINC_MAGIC, FATBIN_MAGIC, OLD_FATBIN_MAGIC,
};

/// What a module-load call hands the driver, copied into owned bytes so it can be shipped
/// to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// One fatbin (`header_size + fat_size` bytes), from a bare header or a v1 wrapper.
    Fatbin(Vec<u8>),
    /// A v2 (`FATBINC_LINK_VERSION`) wrapper: element 0 is the fatbin its `data` points to,
    /// elements 1.. the prelinked fatbins of its NULL-terminated list, in order (the list
    /// may be empty). A server can rebuild an equivalent wrapper from this.
    Fatbins(Vec<Vec<u8>>),
    /// A cubin, cut at the end of its furthest section/segment/header table.
    Elf(Vec<u8>),
    /// NUL-terminated PTX text (without the NUL).
    Ptx(String),
    /// An Ascend kernel binary (an AI Core ELF object) and the magic number ACL
    /// loads it with (`ACL_RT_BINARY_MAGIC_ELF_*`: which cores its kernels run on).
    Ascend { magic: u32, elf: Vec<u8> },
}

/// Memory holding an image: a bounds-checked slice, or the whole address space.
pub(crate) trait Mem {
    /// Copies `len` bytes at address `addr`.
    fn read(&self, what: &'static str, addr: usize, len: usize) -> Result<Vec<u8>, FatbinError>;
    /// The bytes from `addr` up to (not including) the first NUL.
    fn read_cstr(&self, addr: usize) -> Result<Vec<u8>, FatbinError>;
    /// Whether the byte at `addr` can be read (false past the end of a slice).
    fn readable(&self, addr: usize) -> bool;
}

/// A byte slice whose first byte sits at address `base`. Addresses stored inside the image
/// (wrapper pointers) resolve only if they point into the slice itself.
struct SliceMem<'a> {
    base: usize,
    data: &'a [u8],
}

impl SliceMem<'_> {
    fn offset(&self, what: &'static str, addr: usize) -> Result<usize, FatbinError> {
        match addr.checked_sub(self.base) {
            Some(off) if off <= self.data.len() => Ok(off),
            _ => Err(FatbinError::Invalid {
                what,
                value: addr as u64,
            }),
        }
    }
}

impl Mem for SliceMem<'_> {
    fn read(&self, what: &'static str, addr: usize, len: usize) -> Result<Vec<u8>, FatbinError> {
        let off = self.offset(what, addr)?;
        Bytes { data: self.data }
            .slice(what, off, len)
            .map(<[u8]>::to_vec)
    }

    fn read_cstr(&self, addr: usize) -> Result<Vec<u8>, FatbinError> {
        let rest = &self.data[self.offset("PTX text", addr)?..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Ok(rest[..end].to_vec())
    }

    fn readable(&self, addr: usize) -> bool {
        addr.checked_sub(self.base)
            .is_some_and(|off| off < self.data.len())
    }
}

/// The process's address space. Reading is only sound when the caller of
/// [`image_from_ptr`] upheld its contract.
struct RawMem;

impl Mem for RawMem {
    fn read(&self, what: &'static str, addr: usize, len: usize) -> Result<Vec<u8>, FatbinError> {
        if addr == 0 || addr.checked_add(len).is_none() {
            return Err(FatbinError::Invalid {
                what,
                value: addr as u64,
            });
        }
        // SAFETY: image_from_ptr's contract: the pointer designates a valid image, and every
        // structure read here lies within it (lengths come from its own headers).
        Ok(unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec())
    }

    fn read_cstr(&self, addr: usize) -> Result<Vec<u8>, FatbinError> {
        if addr == 0 {
            return Err(FatbinError::Invalid {
                what: "PTX text",
                value: 0,
            });
        }
        // SAFETY: the contract says PTX text is NUL-terminated.
        Ok(
            unsafe { std::ffi::CStr::from_ptr(addr as *const std::ffi::c_char) }
                .to_bytes()
                .to_vec(),
        )
    }

    fn readable(&self, addr: usize) -> bool {
        addr != 0
    }
}

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Wrapper,
    Fatbin,
    OldFatbin,
    Elf,
    Archive,
    Text,
}

/// Identifies the image at `addr`, reading one byte at a time and never past a NUL, so a
/// short NUL-terminated PTX string is not over-read.
fn sniff(mem: &dyn Mem, addr: usize) -> Result<Format, FatbinError> {
    let wrapper = FATBINC_MAGIC.to_le_bytes();
    let fatbin = FATBIN_MAGIC.to_le_bytes();
    let old = OLD_FATBIN_MAGIC.to_le_bytes();
    let magics: [(&[u8], Format); 5] = [
        (&wrapper, Format::Wrapper),
        (&fatbin, Format::Fatbin),
        (&old, Format::OldFatbin),
        (ELF_MAGIC, Format::Elf),
        (b"!<arch>\n", Format::Archive),
    ];
    let mut prefix = Vec::with_capacity(8);
    loop {
        let Some(addr) = addr.checked_add(prefix.len()) else {
            return Ok(Format::Text);
        };
        if !mem.readable(addr) {
            return Ok(Format::Text);
        }
        let b = mem.read("image", addr, 1)?[0];
        if b == 0 {
            return Ok(Format::Text);
        }
        prefix.push(b);
        let mut any = false;
        for (magic, format) in magics {
            if magic.starts_with(&prefix) {
                if magic.len() == prefix.len() {
                    return Ok(format);
                }
                any = true;
            }
        }
        if !any {
            return Ok(Format::Text);
        }
    }
}

fn copy_fatbin(mem: &dyn Mem, addr: usize) -> Result<Vec<u8>, FatbinError> {
    if addr == 0 {
        return Err(FatbinError::Invalid {
            what: "fatbin pointer",
            value: 0,
        });
    }
    let header = mem.read("fatbin header", addr, 16)?;
    let len = fatbin_total_len(&header)?;
    mem.read("fatbin", addr, len)
}

/// Most prelinked fatbins accepted in a v2 wrapper's list.
const MAX_LINKED_FATBINS: usize = 1 << 16;

fn read_ptr(mem: &dyn Mem, what: &'static str, addr: usize) -> Result<usize, FatbinError> {
    let b = mem.read(what, addr, 8)?;
    let v = Bytes { data: &b }.u64(what, 0)?;
    usize::try_from(v).map_err(|_| FatbinError::Invalid { what, value: v })
}

fn image_at(mem: &dyn Mem, addr: usize) -> Result<Image, FatbinError> {
    match sniff(mem, addr)? {
        Format::Wrapper => {
            let w = mem.read("fatbin wrapper", addr, 24)?;
            let version = Bytes { data: &w }.u32("fatbin wrapper", 4)?;
            let data = read_ptr(mem, "wrapper data", addr + 8)?;
            match version {
                1 => Ok(Image::Fatbin(copy_fatbin(mem, data)?)),
                2 => {
                    let mut fatbins = vec![copy_fatbin(mem, data)?];
                    let list = read_ptr(mem, "wrapper fatbin list", addr + 16)?;
                    if list != 0 {
                        for i in 0.. {
                            if i == MAX_LINKED_FATBINS {
                                return Err(FatbinError::TooLarge {
                                    what: "prelinked fatbin list",
                                    size: i as u64,
                                });
                            }
                            let slot = list.checked_add(8 * i).ok_or(FatbinError::Invalid {
                                what: "wrapper fatbin list",
                                value: list as u64,
                            })?;
                            let p = read_ptr(mem, "wrapper fatbin list", slot)?;
                            if p == 0 {
                                break;
                            }
                            fatbins.push(copy_fatbin(mem, p)?);
                        }
                    }
                    Ok(Image::Fatbins(fatbins))
                }
                v => Err(FatbinError::Invalid {
                    what: "fatbin wrapper version",
                    value: u64::from(v),
                }),
            }
        }
        Format::Fatbin => Ok(Image::Fatbin(copy_fatbin(mem, addr)?)),
        Format::Elf => {
            let len = elf_len(mem, addr)?;
            Ok(Image::Elf(mem.read("ELF image", addr, len)?))
        }
        Format::OldFatbin => Err(FatbinError::Unsupported("pre-CUDA-4 fatbin (0x1EE55A01)")),
        Format::Archive => Err(FatbinError::Unsupported("ar archive (static library)")),
        Format::Text => ptx_text(mem.read_cstr(addr)?).map(Image::Ptx),
    }
}

/// Accepts text that could be PTX: non-empty UTF-8 without control characters other than
/// whitespace.
fn ptx_text(bytes: Vec<u8>) -> Result<String, FatbinError> {
    let text = String::from_utf8(bytes).map_err(|_| FatbinError::InvalidUtf8)?;
    let plausible = !text.trim().is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\x0c'));
    if plausible {
        Ok(text)
    } else {
        Err(FatbinError::UnknownFormat)
    }
}

/// Copies the image at `ptr` into an owned [`Image`]: a `__fatBinC_Wrapper_t` (v1 or v2), a
/// bare fatbin header, an ELF cubin or NUL-terminated PTX text. `ar` archives and pre-CUDA-4
/// fatbins are reported as [`FatbinError::Unsupported`].
///
/// # Safety
/// `ptr` must point to a valid image as the CUDA driver API accepts it (wrapper, bare fatbin
/// header, ELF cubin, or NUL-terminated PTX text); pointers inside a wrapper must be valid
/// too. Lengths are taken from the image's own headers.
pub unsafe fn image_from_ptr(ptr: *const u8) -> Result<Image, FatbinError> {
    if ptr.is_null() {
        return Err(FatbinError::Invalid {
            what: "image pointer",
            value: 0,
        });
    }
    image_at(&RawMem, ptr as usize)
}

/// [`image_from_ptr`] on a slice, bounds-checked. Pointers inside a wrapper are resolved
/// only when they point into `bytes` itself (so a wrapper and its fatbins built in one
/// buffer work); anything else is an error. PTX text may end at a NUL or at the slice end.
pub fn image_from_bytes(bytes: &[u8]) -> Result<Image, FatbinError> {
    let mem = SliceMem {
        base: bytes.as_ptr() as usize,
        data: bytes,
    };
    image_at(&mem, mem.base)
}

const WIRE_FATBIN: u8 = 1;
const WIRE_FATBINS: u8 = 2;
const WIRE_ELF: u8 = 3;
const WIRE_PTX: u8 = 4;
const WIRE_ASCEND: u8 = 5;

fn put_blob(out: &mut Vec<u8>, blob: &[u8]) {
    out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
    out.extend_from_slice(blob);
}

/// Cursor over wire bytes.
struct Reader<'a> {
    b: Bytes<'a>,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn blob(&mut self) -> Result<&'a [u8], FatbinError> {
        let len = to_len("wire blob", self.b.u64("wire blob length", self.pos)?)?;
        let blob = self.b.slice("wire blob", self.pos + 8, len)?;
        self.pos += 8 + len;
        Ok(blob)
    }
}

impl Image {
    /// The PTX and cubin entries, decompressed. A bare cubin or PTX image yields one entry
    /// (arch from `e_flags` / `.target`, version `(0, 0)` for a cubin, `.version` for PTX);
    /// an Ascend binary none.
    pub fn entries(&self) -> Result<Vec<Entry>, FatbinError> {
        match self {
            Image::Fatbin(f) => parse_fatbin(f),
            Image::Fatbins(fs) => {
                let mut all = Vec::new();
                for f in fs {
                    all.extend(parse_fatbin(f)?);
                }
                Ok(all)
            }
            Image::Elf(e) => Ok(vec![Entry {
                kind: EntryKind::Elf,
                arch: cubin_arch(e),
                version: (0, 0),
                data: e.clone(),
            }]),
            // Nothing an NVIDIA device runs.
            Image::Ascend { .. } => Ok(Vec::new()),
            Image::Ptx(p) => Ok(vec![Entry {
                kind: EntryKind::Ptx,
                arch: ptx_target(p).unwrap_or(0),
                version: ptx_version(p).unwrap_or((0, 0)),
                data: p.as_bytes().to_vec(),
            }]),
        }
    }

    /// Serialises for shipping: a tag byte, then u64-LE-length-prefixed blobs (for
    /// `Fatbins`, a u32 LE count first).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Image::Fatbin(f) => {
                out.push(WIRE_FATBIN);
                put_blob(&mut out, f);
            }
            Image::Fatbins(fs) => {
                out.push(WIRE_FATBINS);
                out.extend_from_slice(&(fs.len() as u32).to_le_bytes());
                for f in fs {
                    put_blob(&mut out, f);
                }
            }
            Image::Elf(e) => {
                out.push(WIRE_ELF);
                put_blob(&mut out, e);
            }
            Image::Ptx(p) => {
                out.push(WIRE_PTX);
                put_blob(&mut out, p.as_bytes());
            }
            Image::Ascend { magic, elf } => {
                out.push(WIRE_ASCEND);
                out.extend_from_slice(&magic.to_le_bytes());
                put_blob(&mut out, elf);
            }
        }
        out
    }

    /// Inverse of [`Image::to_wire`]; rejects trailing bytes.
    pub fn from_wire(b: &[u8]) -> Result<Image, FatbinError> {
        let mut r = Reader {
            b: Bytes { data: b },
            pos: 1,
        };
        let tag = r.b.slice("wire tag", 0, 1)?[0];
        let image = match tag {
            WIRE_FATBIN => Image::Fatbin(r.blob()?.to_vec()),
            WIRE_FATBINS => {
                let n = r.b.u32("wire fatbin count", 1)?;
                r.pos = 5;
                // Each blob needs at least its 8-byte length, so bound `n` by the input.
                if u64::from(n) * 8 > b.len() as u64 {
                    return Err(FatbinError::Truncated {
                        what: "wire fatbin list",
                        offset: 5,
                        need: n as usize * 8,
                        have: b.len() - 5,
                    });
                }
                let mut fs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    fs.push(r.blob()?.to_vec());
                }
                Image::Fatbins(fs)
            }
            WIRE_ELF => Image::Elf(r.blob()?.to_vec()),
            WIRE_ASCEND => {
                let magic = r.b.u32("wire Ascend magic", 1)?;
                r.pos = 5;
                Image::Ascend {
                    magic,
                    elf: r.blob()?.to_vec(),
                }
            }
            WIRE_PTX => Image::Ptx(
                String::from_utf8(r.blob()?.to_vec()).map_err(|_| FatbinError::InvalidUtf8)?,
            ),
            t => {
                return Err(FatbinError::Invalid {
                    what: "wire image tag",
                    value: u64::from(t),
                })
            }
        };
        if r.pos != b.len() {
            return Err(FatbinError::Invalid {
                what: "wire trailing bytes",
                value: (b.len() - r.pos) as u64,
            });
        }
        Ok(image)
    }
}

/// Words of PTX source after the first occurrence of `directive`, comments not excluded
/// (good enough for the header directives nvcc writes).
fn directive_arg<'a>(ptx: &'a str, directive: &str) -> Option<&'a str> {
    ptx.lines().find_map(|l| {
        let l = l.trim_start();
        l.strip_prefix(directive)
            .filter(|rest| rest.starts_with([' ', '\t']))
            .and_then(|rest| rest.split([' ', '\t', ',']).find(|w| !w.is_empty()))
    })
}

/// SM number of `.target sm_XX[a|f]`.
fn ptx_target(ptx: &str) -> Option<u32> {
    let t = directive_arg(ptx, ".target")?.strip_prefix("sm_")?;
    let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `(major, minor)` of `.version X.Y`.
fn ptx_version(ptx: &str) -> Option<(u16, u16)> {
    let (major, minor) = directive_arg(ptx, ".version")?.split_once('.')?;
    Some((major.parse().ok()?, minor.trim().parse().ok()?))
}
