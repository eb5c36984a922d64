//! CUDA arrays, texture objects and surface objects.
//!
//! An array is the server's ([`xpupool_protocol::Request::ArrayCreate`]): a real CUDA array on the
//! cuda backend, device memory laid out row by row on the mock, charged to the
//! ledger either way. Copies to and from it (`cuMemcpy2D`, `cuMemcpy3D`,
//! `cuMemcpyHtoA`, …) name a box of it. A texture or surface object is kept by
//! the server ([`xpupool_protocol::Request::TexObjectCreate`]), which checks that every texel lies
//! in the session's memory or array; kernels pass its handle to `tex`, `tld4`,
//! `suld` and `sust`, which the mock samples as the hardware does.
//! Layered arrays are slices of layers, cubemaps slices of faces (six per
//! layer). Not offered: mipmaps, sRGB reads, resource views.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use xpupool_cuda_types::*;
use xpupool_protocol::api::{ArrayDesc, TextureDesc};
use xpupool_protocol::Calls;

use crate::boundary::{export, put, Res};
use crate::state::{driver, fail, lock};

/// An array: the server's handle and what it was made as.
#[derive(Clone, Copy)]
pub(crate) struct Array {
    pub(crate) server: u64,
    pub(crate) desc: CUDA_ARRAY3D_DESCRIPTOR,
    device: CUdevice,
}

impl Array {
    /// Its description as the protocol has it.
    pub(crate) fn wire(&self) -> Res<ArrayDesc> {
        wire_desc(&self.desc).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    fn layered(&self) -> bool {
        self.desc.Flags & CUDA_ARRAY3D_LAYERED != 0
    }

    fn cubemap(&self) -> bool {
        self.desc.Flags & CUDA_ARRAY3D_CUBEMAP != 0
    }

    /// Dimensions of one layer or face (its depth is the layers or faces).
    fn dims(&self) -> u8 {
        match (self.desc.Height, self.desc.Depth) {
            (0, _) => 1,
            (_, 0) => 2,
            _ if self.layered() || self.cubemap() => 2,
            _ => 3,
        }
    }
}

/// A description kept for the queries that give it back. Its pointers are
/// handles (arrays), never dereferenced here.
#[derive(Clone, Copy)]
struct Kept<T>(T);
// SAFETY: see above: the pointers inside are opaque handles.
unsafe impl<T> Send for Kept<T> {}

#[derive(Default)]
struct Table {
    arrays: HashMap<u64, Array>,
    /// Texture objects: what they were made from, for the queries.
    textures: HashMap<u64, Kept<(CUDA_RESOURCE_DESC, CUDA_TEXTURE_DESC)>>,
    surfaces: HashMap<u64, Kept<CUDA_RESOURCE_DESC>>,
    next: u64,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| {
        Mutex::new(Table {
            // Handles are opaque to applications; these are never dereferenced.
            next: 0x7e00_0000,
            ..Table::default()
        })
    })
}

/// The array `handle` names.
pub(crate) fn array(handle: CUarray) -> Res<Array> {
    lock(table())
        .arrays
        .get(&(handle as u64))
        .copied()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

/// The description the protocol carries; `None` for a format it has not.
fn wire_desc(desc: &CUDA_ARRAY3D_DESCRIPTOR) -> Option<ArrayDesc> {
    let (channel, bits) = array_format_parts(desc.Format)?;
    Some(ArrayDesc {
        width: desc.Width as u64,
        height: desc.Height as u64,
        depth: desc.Depth as u64,
        channel,
        bits,
        channels: u8::try_from(desc.NumChannels).unwrap_or(0),
        flags: desc.Flags,
    })
}

/// `cuArray3DCreate`. Layers are the depth: of 1-D layers (no height) or 2-D
/// ones; a cubemap's six square faces too, six per layer when layered
/// ([`ArrayDesc::check`], which the server applies as well).
fn create(out: *mut CUarray, desc: CUDA_ARRAY3D_DESCRIPTOR) -> Res {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let wire = wire_desc(&desc).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    wire.check().map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let d = driver()?;
    let device = d.current_context()?.device;
    let server = d.conn.array_create(device as u32, wire).map_err(fail)?;
    let array = Array {
        server,
        desc,
        device,
    };
    let mut t = lock(table());
    t.next += 0x10;
    let handle = t.next;
    t.arrays.insert(handle, array);
    put(out, handle as CUarray)
}

/// What a resource description makes: the texture or surface over it.
fn resource(res: &CUDA_RESOURCE_DESC, surface: bool) -> Res<(TextureDesc, CUdevice)> {
    let mut desc = TextureDesc {
        dims: 1,
        size: [1; 3],
        address_mode: [1; 3],
        ..TextureDesc::default()
    };
    let d = driver()?;
    let mut device = d.current_context()?.device;
    let format = |format: CUarray_format, channels: u32, desc: &mut TextureDesc| -> Res {
        let (kind, bits) = array_format_parts(format).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if !matches!(channels, 1 | 2 | 4) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        (desc.channel, desc.bits, desc.channels) = (kind, bits, channels as u8);
        Ok(())
    };
    match res.resType {
        CU_RESOURCE_TYPE_ARRAY => {
            // SAFETY: the union member `resType` names.
            let a = array(unsafe { res.res.array.hArray })?;
            if surface && a.desc.Flags & CUDA_ARRAY3D_SURFACE_LDST == 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            format(a.desc.Format, a.desc.NumChannels, &mut desc)?;
            // The server takes the texels' place and layout from the array.
            desc.array = a.server;
            desc.dims = a.dims();
            desc.size = [
                a.desc.Width as u64,
                a.desc.Height.max(1) as u64,
                a.desc.Depth.max(1) as u64,
            ];
            desc.layered = a.layered();
            desc.cubemap = a.cubemap();
            device = a.device;
        }
        CU_RESOURCE_TYPE_LINEAR if !surface => {
            // SAFETY: the union member `resType` names.
            let l = unsafe { res.res.linear };
            format(l.format, l.numChannels, &mut desc)?;
            desc.address = l.devPtr;
            let texel = u64::from(desc.bits / 8) * u64::from(desc.channels);
            desc.size[0] = l.sizeInBytes as u64 / texel;
            desc.pitch = l.sizeInBytes as u64;
            desc.slice_pitch = desc.pitch;
        }
        CU_RESOURCE_TYPE_PITCH2D if !surface => {
            // SAFETY: the union member `resType` names.
            let p = unsafe { res.res.pitch2D };
            format(p.format, p.numChannels, &mut desc)?;
            desc.address = p.devPtr;
            desc.dims = 2;
            desc.size = [p.width as u64, p.height as u64, 1];
            desc.pitch = p.pitchInBytes as u64;
            desc.slice_pitch = desc.pitch * desc.size[1];
        }
        CU_RESOURCE_TYPE_MIPMAPPED_ARRAY => return Err(CUDA_ERROR_NOT_SUPPORTED),
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    Ok((desc, device))
}

fn tex_create(
    out: *mut CUtexObject,
    res: *const CUDA_RESOURCE_DESC,
    tex: *const CUDA_TEXTURE_DESC,
    view: *const CUDA_RESOURCE_VIEW_DESC,
) -> Res {
    if out.is_null() || res.is_null() || tex.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if !view.is_null() {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    // SAFETY: checked non-null; the caller passes the descriptions.
    let (res, tex) = unsafe { (*res, *tex) };
    let (mut desc, device) = resource(&res, false)?;
    if tex.flags & CU_TRSF_SRGB != 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    if tex
        .addressMode
        .iter()
        .any(|&m| m > CU_TR_ADDRESS_MODE_BORDER)
        || tex.filterMode > CU_TR_FILTER_MODE_LINEAR
    {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    desc.address_mode = tex.addressMode.map(|m| m as u8);
    desc.linear = tex.filterMode == CU_TR_FILTER_MODE_LINEAR;
    desc.normalized_coords = tex.flags & CU_TRSF_NORMALIZED_COORDINATES != 0;
    // Integers of 8 and 16 bits read as normalised floats unless asked not to.
    desc.read_normalized =
        tex.flags & CU_TRSF_READ_AS_INTEGER == 0 && desc.channel != 2 && desc.bits < 32;
    desc.border = tex.borderColor;
    let handle = driver()?
        .conn
        .tex_object_create(device as u32, desc)
        .map_err(fail)?;
    lock(table()).textures.insert(handle, Kept((res, tex)));
    put(out, handle)
}

fn surf_create(out: *mut CUsurfObject, res: *const CUDA_RESOURCE_DESC) -> Res {
    if out.is_null() || res.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: checked non-null; the caller passes the description.
    let res = unsafe { *res };
    let (desc, device) = resource(&res, true)?;
    let handle = driver()?
        .conn
        .surf_object_create(device as u32, desc)
        .map_err(fail)?;
    lock(table()).surfaces.insert(handle, Kept(res));
    put(out, handle)
}

fn array_descriptor(handle: CUarray) -> Res<CUDA_ARRAY3D_DESCRIPTOR> {
    Ok(array(handle)?.desc)
}

export! {
    fn cuArrayCreate_v2(out: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) {
        if desc.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes the description.
        let d = unsafe { *desc };
        create(out, CUDA_ARRAY3D_DESCRIPTOR { Width: d.Width, Height: d.Height, Depth: 0, Format: d.Format, NumChannels: d.NumChannels, Flags: 0 })
    }

    fn cuArray3DCreate_v2(out: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) {
        if desc.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked non-null; the caller passes the description.
        create(out, unsafe { *desc })
    }

    fn cuArrayDestroy(handle: CUarray) {
        let a = lock(table()).arrays.remove(&(handle as u64)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        // The server destroys it after the work already sent, which may still read it.
        driver()?.conn.array_destroy(a.server).map_err(fail)
    }

    fn cuArrayGetDescriptor_v2(out: *mut CUDA_ARRAY_DESCRIPTOR, handle: CUarray) {
        let d = array_descriptor(handle)?;
        put(out, CUDA_ARRAY_DESCRIPTOR { Width: d.Width, Height: d.Height, Format: d.Format, NumChannels: d.NumChannels })
    }

    fn cuArray3DGetDescriptor_v2(out: *mut CUDA_ARRAY3D_DESCRIPTOR, handle: CUarray) {
        put(out, array_descriptor(handle)?)
    }

    fn cuTexObjectCreate(out: *mut CUtexObject, res: *const CUDA_RESOURCE_DESC, tex: *const CUDA_TEXTURE_DESC, view: *const CUDA_RESOURCE_VIEW_DESC) {
        tex_create(out, res, tex, view)
    }

    fn cuTexObjectDestroy(handle: CUtexObject) {
        lock(table()).textures.remove(&handle).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        driver()?.conn.tex_object_destroy(handle).map_err(fail)
    }

    fn cuTexObjectGetResourceDesc(out: *mut CUDA_RESOURCE_DESC, handle: CUtexObject) {
        let res = lock(table()).textures.get(&handle).map(|t| t.0 .0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(out, res)
    }

    fn cuTexObjectGetTextureDesc(out: *mut CUDA_TEXTURE_DESC, handle: CUtexObject) {
        let tex = lock(table()).textures.get(&handle).map(|t| t.0 .1).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(out, tex)
    }

    fn cuSurfObjectCreate(out: *mut CUsurfObject, res: *const CUDA_RESOURCE_DESC) {
        surf_create(out, res)
    }

    fn cuSurfObjectDestroy(handle: CUsurfObject) {
        lock(table()).surfaces.remove(&handle).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        driver()?.conn.surf_object_destroy(handle).map_err(fail)
    }

    fn cuSurfObjectGetResourceDesc(out: *mut CUDA_RESOURCE_DESC, handle: CUsurfObject) {
        let res = lock(table()).surfaces.get(&handle).map(|k| k.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        put(out, res)
    }
}
