//! Texture and surface access (`tex`, `suld.b`, `sust.b`) through the objects the
//! caller describes ([`crate::Memory::texture`]): texels read from device memory,
//! coordinates normalised or not, each address mode, point and linear filtering
//! (with the hardware's 8-bit fraction of the filter weights), and element types
//! read as themselves or as normalised floats.

use crate::Memory;

/// How a coordinate outside `[0, size)` is brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMode {
    /// Repeats (`wrap`).
    Wrap,
    /// The edge texel (`clamp`).
    Clamp,
    /// Repeats mirrored (`mirror`).
    Mirror,
    /// The border colour (`border`).
    Border,
}

/// What one channel of a texel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Unsigned integer.
    Unsigned,
    /// Signed integer.
    Signed,
    /// IEEE float (16 or 32 bits).
    Float,
}

/// A texture or surface object as the driver made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Texture {
    /// Device address of texel (0, 0, 0).
    pub address: u64,
    /// 1, 2 or 3.
    pub dims: u8,
    /// Texels in each dimension (unused ones 1).
    pub size: [u64; 3],
    /// Bytes from one row to the next, and from one slice to the next.
    pub pitch: u64,
    pub slice_pitch: u64,
    pub channel: ChannelKind,
    /// Bits of each channel: 8, 16 or 32.
    pub bits: u8,
    /// Channels: 1, 2 or 4.
    pub channels: u8,
    pub address_mode: [AddressMode; 3],
    /// Linear filtering (else point).
    pub linear: bool,
    /// Coordinates in `[0, 1)` (else in texels).
    pub normalized_coords: bool,
    /// Integers read as floats in `[0, 1]` (`[-1, 1]` signed).
    pub read_normalized: bool,
    pub border: [f32; 4],
    /// Layers of `dims` dimensions, `size[2]` of them (`dims` is 1 or 2).
    pub layered: bool,
    /// Cubemaps: six square faces (`size[2]` is 6, or 6 per layer when layered).
    pub cubemap: bool,
}

impl Texture {
    fn texel_bytes(&self) -> u64 {
        u64::from(self.bits / 8) * u64::from(self.channels)
    }

    /// The texel at integer coordinates already in range, as four floats (or
    /// raw integer bits when read as integers).
    fn fetch(&self, mem: &dyn Memory, at: [u64; 3]) -> Option<[Value; 4]> {
        let offset = at[0] * self.texel_bytes() + at[1] * self.pitch + at[2] * self.slice_pitch;
        let len = self.texel_bytes() as usize;
        let p = mem.translate(self.address.checked_add(offset)?, len)?;
        let mut raw = [0u8; 16];
        // SAFETY: `translate` proved `len` (at most 16) bytes readable at `p`.
        unsafe { std::ptr::copy_nonoverlapping(p, raw.as_mut_ptr(), len) };
        let mut out = [
            Value::Float(0.0),
            Value::Float(0.0),
            Value::Float(0.0),
            Value::Float(1.0),
        ];
        let width = usize::from(self.bits / 8);
        for (c, slot) in out.iter_mut().enumerate().take(usize::from(self.channels)) {
            let b = &raw[c * width..(c + 1) * width];
            let u = match width {
                1 => u64::from(b[0]),
                2 => u64::from(u16::from_le_bytes([b[0], b[1]])),
                _ => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            };
            *slot = match (self.channel, width) {
                (ChannelKind::Float, 2) => Value::Float(crate::ops::f16_to_f32(u as u16)),
                (ChannelKind::Float, _) => Value::Float(f32::from_bits(u as u32)),
                (ChannelKind::Unsigned, w) if self.read_normalized && w < 4 => {
                    Value::Float(u as f32 / ((1u64 << (8 * w)) - 1) as f32)
                }
                (ChannelKind::Signed, w) if self.read_normalized && w < 4 => {
                    let bits = 8 * w as u32;
                    let s = ((u << (64 - bits)) as i64) >> (64 - bits);
                    Value::Float((s as f32 / ((1i64 << (bits - 1)) - 1) as f32).max(-1.0))
                }
                (ChannelKind::Signed, w) => {
                    let bits = 8 * w as u32;
                    Value::Int((((u << (64 - bits)) as i64) >> (64 - bits)) as u32)
                }
                (ChannelKind::Unsigned, _) => Value::Int(u as u32),
            };
        }
        if !matches!(self.channel, ChannelKind::Float) && !self.read_normalized {
            // Integers read as themselves: the missing alpha is 1 as an integer.
            if self.channels < 4 {
                out[3] = Value::Int(1);
            }
            for slot in out.iter_mut().take(3).skip(usize::from(self.channels)) {
                *slot = Value::Int(0);
            }
        }
        Some(out)
    }

    /// Whether texels come back as floats (then linear filtering may apply).
    fn returns_float(&self) -> bool {
        matches!(self.channel, ChannelKind::Float) || self.read_normalized
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Float(f32),
    Int(u32),
}

impl Value {
    fn float(self) -> f32 {
        match self {
            Value::Float(f) => f,
            Value::Int(i) => i as f32,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Value::Float(f) => f.to_bits(),
            Value::Int(i) => i,
        }
    }
}

/// A texel index brought into `[0, n)` by `mode`; `None` for the border.
fn address(i: i64, n: u64, mode: AddressMode) -> Option<u64> {
    let n = n as i64;
    if (0..n).contains(&i) {
        return Some(i as u64);
    }
    match mode {
        AddressMode::Wrap => Some(i.rem_euclid(n) as u64),
        AddressMode::Clamp => Some(i.clamp(0, n - 1) as u64),
        AddressMode::Mirror => {
            let period = 2 * n;
            let m = i.rem_euclid(period);
            Some(if m < n { m } else { period - 1 - m } as u64)
        }
        AddressMode::Border => None,
    }
}

/// Which texels an access addresses: the geometry an instruction names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Geom {
    D1,
    D2,
    D3,
    /// An array of 1-D layers (`a1d`): a layer index, then x.
    A1,
    /// An array of 2-D layers (`a2d`): a layer index, then x and y.
    A2,
    /// A cubemap (`cube`): a direction x, y, z.
    Cube,
    /// An array of cubemaps (`acube`): a layer index, then a direction.
    ACube,
}

impl Geom {
    /// The geometry a modifier names.
    pub(crate) fn parse(name: &str) -> Option<Geom> {
        Some(match name {
            "1d" => Geom::D1,
            "2d" => Geom::D2,
            "3d" => Geom::D3,
            "a1d" => Geom::A1,
            "a2d" => Geom::A2,
            "cube" => Geom::Cube,
            "acube" => Geom::ACube,
            _ => return None,
        })
    }

    /// Coordinates beside the layer index.
    pub(crate) fn coords(self) -> usize {
        match self {
            Geom::D1 | Geom::A1 => 1,
            Geom::D2 | Geom::A2 => 2,
            Geom::D3 | Geom::Cube | Geom::ACube => 3,
        }
    }

    /// Whether the first element of the coordinate vector is a layer index.
    pub(crate) fn layered(self) -> bool {
        matches!(self, Geom::A1 | Geom::A2 | Geom::ACube)
    }
}

/// The face of a cubemap a direction points at, and the point on it in `[0, 1]`
/// (the selection table of the CUDA programming guide: the major axis picks the
/// face, the other two, divided by it, the point).
pub(crate) fn cube_face(x: f32, y: f32, z: f32) -> (u64, f32, f32) {
    let (ax, ay, az) = (x.abs(), y.abs(), z.abs());
    let (face, m, s, t) = if ax >= ay && ax >= az {
        if x >= 0.0 {
            (0, ax, -z, -y)
        } else {
            (1, ax, z, -y)
        }
    } else if ay >= az {
        if y >= 0.0 {
            (2, ay, x, z)
        } else {
            (3, ay, x, -z)
        }
    } else if z >= 0.0 {
        (4, az, x, -y)
    } else {
        (5, az, -x, -y)
    };
    if m == 0.0 {
        return (0, 0.5, 0.5);
    }
    (face, (s / m + 1.0) / 2.0, (t / m + 1.0) / 2.0)
}

/// A texture read: `tex` (or, with `gather` naming a component, `tld4`) of
/// geometry `geom` at coordinates `coords` (floats' bits, or integers when
/// `int_coords`) and, for layered geometries, layer `layer`; four results as
/// 32-bit values. `None` when the handle names no texture.
pub(crate) fn sample(
    mem: &dyn Memory,
    handle: u64,
    geom: Geom,
    coords: [u64; 3],
    layer: u32,
    int_coords: bool,
    gather: Option<u8>,
) -> Option<[u32; 4]> {
    let t = mem.texture(handle)?;
    let coord = |k: usize| {
        if int_coords {
            coords[k] as u32 as i32 as f32
        } else {
            f32::from_bits(coords[k] as u32)
        }
    };
    let layers = t.size[2].max(1);
    let pick_layer = |n: u64| u64::from(layer).min(n.max(1) - 1);
    // Coordinates along the sampled dimensions, in texels; the slice they are in
    // where it is fixed (a layer, a face).
    let mut u = [0f32; 3];
    let (dims, slice, normalized) = match geom {
        Geom::Cube | Geom::ACube => {
            let (face, s, v) = cube_face(coord(0), coord(1), coord(2));
            u[0] = s * t.size[0] as f32;
            u[1] = v * t.size[1] as f32;
            let cube = if geom == Geom::ACube {
                pick_layer(layers / 6)
            } else {
                0
            };
            (2, Some(face + 6 * cube), true)
        }
        Geom::A1 | Geom::A2 => (geom.coords(), Some(pick_layer(layers)), t.normalized_coords),
        // A plain read of a layered texture reads its first layer.
        _ if t.layered || t.cubemap => (
            usize::from(t.dims.clamp(1, 2)),
            Some(0),
            t.normalized_coords,
        ),
        _ => (usize::from(t.dims.clamp(1, 3)), None, t.normalized_coords),
    };
    if slice.is_none() || !matches!(geom, Geom::Cube | Geom::ACube) {
        for (k, uk) in u.iter_mut().enumerate().take(dims) {
            let c = coord(k);
            // Normalised coordinates address the whole texture by [0, 1).
            *uk = if normalized { c * t.size[k] as f32 } else { c };
        }
    }
    let border = t.border.map(Value::Float);
    // Wrap and mirror apply to normalised coordinates only; with texel
    // coordinates the hardware clamps. A cubemap face clamps at its edges.
    let modes = t.address_mode.map(|m| match m {
        _ if matches!(geom, Geom::Cube | Geom::ACube) => AddressMode::Clamp,
        AddressMode::Wrap | AddressMode::Mirror if !normalized => AddressMode::Clamp,
        m => m,
    });
    let texel = |at: [i64; 3]| -> [Value; 4] {
        let mut idx = [0u64; 3];
        for k in 0..dims {
            match address(at[k], t.size[k], modes[k]) {
                Some(i) => idx[k] = i,
                None => return border,
            }
        }
        if let Some(z) = slice {
            idx[2] = z;
        }
        t.fetch(mem, idx).unwrap_or(border)
    };
    let as_bits = |v: Value| match (v, t.returns_float()) {
        (Value::Int(i), true) => Value::Float(i as f32).bits(),
        (v, _) => v.bits(),
    };
    // The texels around a point, and how far along (8 bits of fraction) it is.
    let footprint = || {
        let mut base = [0i64; 3];
        let mut frac = [0f32; 3];
        for k in 0..dims {
            let x = u[k] - 0.5;
            let f = x.floor();
            base[k] = f as i64;
            frac[k] = ((x - f) * 256.0).round() / 256.0;
        }
        (base, frac)
    };
    if let Some(component) = gather {
        // The bilinear footprint's four texels, counter-clockwise from the lower
        // left: (i0, j1), (i1, j1), (i1, j0), (i0, j0).
        let (base, _) = footprint();
        let mut out = [0u32; 4];
        for (slot, (di, dj)) in out.iter_mut().zip([(0, 1), (1, 1), (1, 0), (0, 0)]) {
            let v = texel([base[0] + di, base[1] + dj, 0]);
            *slot = as_bits(v[usize::from(component & 3)]);
        }
        return Some(out);
    }
    let out: [Value; 4] = if t.linear && t.returns_float() && !int_coords {
        let (base, frac) = footprint();
        let mut acc = [0f32; 4];
        for corner in 0..(1usize << dims) {
            let mut at = [0i64; 3];
            let mut w = 1f32;
            for k in 0..dims {
                let hi = (corner >> k) & 1 == 1;
                at[k] = base[k] + i64::from(hi);
                w *= if hi { frac[k] } else { 1.0 - frac[k] };
            }
            let v = texel(at);
            for c in 0..4 {
                acc[c] += w * v[c].float();
            }
        }
        acc.map(Value::Float)
    } else {
        let mut at = [0i64; 3];
        for k in 0..dims {
            at[k] = u[k].floor() as i64;
        }
        texel(at)
    };
    Some(out.map(as_bits))
}

/// What a surface access outside the surface does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boundary {
    Trap,
    Clamp,
    Zero,
}

/// The device address of a surface access of `len` bytes at `coords` (x in
/// bytes, then rows and slices; for a layered geometry, layer `layer`), or
/// `Ok(None)` where it falls outside and reads zero / writes nothing, or
/// `Err(())` where it traps (or the handle names no surface).
pub(crate) fn surface_address(
    mem: &dyn Memory,
    handle: u64,
    coords: [u64; 3],
    layer: u32,
    len: u64,
    geom: Geom,
    mode: Boundary,
) -> Result<Option<u64>, ()> {
    let t = mem.surface(handle).ok_or(())?;
    let row_bytes = t.size[0] * t.texel_bytes();
    let limits = [row_bytes, t.size[1], t.size[2]];
    // (dimension, coordinate): x in bytes, then rows, then slices, where a
    // layered geometry's layer is the slice.
    let mut checks: Vec<(usize, i64)> = (0..geom.coords())
        .map(|k| (k, coords[k] as u32 as i32 as i64))
        .collect();
    if geom.layered() {
        checks.push((2, i64::from(layer)));
    }
    let mut at = [0u64; 3];
    for (k, c) in checks {
        let n = limits[k] as i64;
        let last = if k == 0 { n - len as i64 } else { n - 1 };
        if c < 0 || c > last {
            match mode {
                Boundary::Trap => return Err(()),
                Boundary::Zero => return Ok(None),
                Boundary::Clamp => at[k] = c.clamp(0, last.max(0)) as u64,
            }
        } else {
            at[k] = c as u64;
        }
    }
    if at[0] % len != 0 {
        return Err(());
    }
    Ok(Some(
        t.address + at[0] + at[1] * t.pitch + at[2] * t.slice_pitch,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneTexture {
        t: Texture,
        data: Vec<u8>,
    }

    impl Memory for OneTexture {
        fn translate(&self, addr: u64, len: usize) -> Option<*mut u8> {
            let off = addr.checked_sub(self.t.address)? as usize;
            (off + len <= self.data.len()).then(|| self.data.as_ptr().wrapping_add(off) as *mut u8)
        }

        fn texture(&self, handle: u64) -> Option<Texture> {
            (handle == 1).then(|| self.t.clone())
        }

        fn surface(&self, handle: u64) -> Option<Texture> {
            (handle == 1).then(|| self.t.clone())
        }
    }

    fn one_d(values: &[f32], mode: AddressMode, linear: bool, normalized: bool) -> OneTexture {
        OneTexture {
            t: Texture {
                address: 0x1000,
                dims: 1,
                size: [values.len() as u64, 1, 1],
                pitch: 0,
                slice_pitch: 0,
                channel: ChannelKind::Float,
                bits: 32,
                channels: 1,
                address_mode: [mode; 3],
                linear,
                normalized_coords: normalized,
                read_normalized: false,
                border: [9.0, 0.0, 0.0, 0.0],
                layered: false,
                cubemap: false,
            },
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn read(m: &OneTexture, x: f32) -> f32 {
        f32::from_bits(
            sample(m, 1, Geom::D1, [x.to_bits() as u64, 0, 0], 0, false, None).unwrap()[0],
        )
    }

    #[test]
    fn address_modes_point_and_linear() {
        let v = [10.0, 20.0, 30.0, 40.0];
        let clamp = one_d(&v, AddressMode::Clamp, false, false);
        assert_eq!(read(&clamp, 1.7), 20.0);
        assert_eq!(read(&clamp, -3.0), 10.0);
        assert_eq!(read(&clamp, 99.0), 40.0);
        let border = one_d(&v, AddressMode::Border, false, false);
        assert_eq!(read(&border, -0.5), 9.0);
        let wrap = one_d(&v, AddressMode::Wrap, false, true);
        assert_eq!(
            read(&wrap, 1.125),
            10.0,
            "normalised 1.125 is texel 4.5, wrapped to texel 0"
        );
        assert_eq!(
            read(&wrap, 1.375),
            20.0,
            "and 1.375 texel 5.5, wrapped to texel 1"
        );
        let mirror = one_d(&v, AddressMode::Mirror, false, true);
        assert_eq!(read(&mirror, 4.5 / 4.0), 40.0);
        assert_eq!(read(&mirror, 5.5 / 4.0), 30.0);
        let unnormalised = one_d(&v, AddressMode::Mirror, false, false);
        assert_eq!(
            read(&unnormalised, 5.5),
            40.0,
            "mirror needs normalised coordinates"
        );
        let linear = one_d(&v, AddressMode::Clamp, true, false);
        assert_eq!(read(&linear, 1.5), 20.0, "a texel's centre is the texel");
        assert_eq!(read(&linear, 2.0), 25.0, "half way between two centres");
        assert_eq!(read(&linear, 0.25), 10.0, "clamped below the first centre");
        // The weight keeps 8 bits of fraction: 1/3 of the way is 85/256.
        let third = read(&linear, 1.5 + 1.0 / 3.0);
        assert_eq!(third, 20.0 + 10.0 * (85.0 / 256.0));
        assert!(
            sample(&linear, 2, Geom::D1, [0; 3], 0, false, None).is_none(),
            "no such texture"
        );
    }

    #[test]
    fn integer_texels_read_as_integers_or_normalised() {
        let mut m = one_d(&[0.0], AddressMode::Clamp, false, false);
        m.t.channel = ChannelKind::Unsigned;
        m.t.bits = 8;
        m.t.channels = 4;
        m.data = vec![255, 0, 51, 7];
        let raw = sample(&m, 1, Geom::D1, [0; 3], 0, false, None).unwrap();
        assert_eq!(raw, [255, 0, 51, 7]);
        m.t.read_normalized = true;
        let f = sample(&m, 1, Geom::D1, [0; 3], 0, false, None)
            .unwrap()
            .map(f32::from_bits);
        assert_eq!(f, [1.0, 0.0, 0.2, 7.0 / 255.0]);
        m.t.channel = ChannelKind::Signed;
        m.data = vec![0x81, 0x7f, 0, 0];
        let f = sample(&m, 1, Geom::D1, [0; 3], 0, false, None)
            .unwrap()
            .map(f32::from_bits);
        assert_eq!(f[..2], [-1.0, 1.0]);
    }

    #[test]
    fn surfaces_bound_each_access() {
        let mut m = one_d(&[1.0, 2.0, 3.0, 4.0], AddressMode::Clamp, false, false);
        m.t.dims = 1;
        let at =
            |x: i32, mode| surface_address(&m, 1, [x as u32 as u64, 0, 0], 0, 4, Geom::D1, mode);
        assert_eq!(at(8, Boundary::Trap), Ok(Some(0x1008)));
        assert_eq!(at(16, Boundary::Trap), Err(()));
        assert_eq!(at(16, Boundary::Zero), Ok(None));
        assert_eq!(at(-4, Boundary::Clamp), Ok(Some(0x1000)));
        assert_eq!(at(99, Boundary::Clamp), Ok(Some(0x100c)));
        assert_eq!(at(2, Boundary::Trap), Err(()), "misaligned");
    }

    #[test]
    fn cube_faces_follow_the_major_axis() {
        assert_eq!(cube_face(1.0, 0.0, 0.0), (0, 0.5, 0.5));
        assert_eq!(cube_face(-1.0, 0.0, 0.0).0, 1);
        assert_eq!(cube_face(0.0, 2.0, 0.0).0, 2);
        assert_eq!(cube_face(0.0, -2.0, 0.0).0, 3);
        assert_eq!(cube_face(0.0, 0.0, 3.0).0, 4);
        assert_eq!(cube_face(0.0, 0.0, -3.0).0, 5);
        // Face 0: s = -z / |x|, t = -y / |x|.
        assert_eq!(cube_face(1.0, 0.5, -0.5), (0, 0.75, 0.25));
        // Face 5: s = -x / |z|, t = -y / |z|.
        assert_eq!(cube_face(0.5, 0.0, -1.0), (5, 0.25, 0.5));
    }

    /// A 2-D float texture of `w` x `h` texels, `layers` of them.
    fn two_d(w: u64, h: u64, layers: u64, values: &[f32]) -> OneTexture {
        let mut m = one_d(values, AddressMode::Clamp, false, false);
        m.t.dims = 2;
        m.t.size = [w, h, layers];
        m.t.pitch = w * 4;
        m.t.slice_pitch = w * h * 4;
        m.t.layered = layers > 1;
        m
    }

    #[test]
    fn gather_returns_the_footprint_counter_clockwise_from_lower_left() {
        // Texel (x, y) holds 10 * y + x.
        let m = two_d(
            3,
            3,
            1,
            &[0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0, 21.0, 22.0],
        );
        let at = |x: f32, y: f32| {
            sample(
                &m,
                1,
                Geom::D2,
                [x.to_bits() as u64, y.to_bits() as u64, 0],
                0,
                false,
                Some(0),
            )
            .unwrap()
            .map(f32::from_bits)
        };
        // Between the centres of (0, 0), (1, 0), (0, 1) and (1, 1).
        assert_eq!(at(1.2, 1.3), [10.0, 11.0, 1.0, 0.0]);
        assert_eq!(at(2.0, 2.0), [21.0, 22.0, 12.0, 11.0]);
    }

    #[test]
    fn layers_are_chosen_by_index_and_clamped() {
        // Two 2x1 layers: layer k holds 100 * k + x.
        let m = two_d(2, 1, 2, &[0.0, 1.0, 100.0, 101.0]);
        let at = |x: f32, layer: u32| {
            f32::from_bits(
                sample(
                    &m,
                    1,
                    Geom::A2,
                    [x.to_bits() as u64, 0.5f32.to_bits() as u64, 0],
                    layer,
                    false,
                    None,
                )
                .unwrap()[0],
            )
        };
        assert_eq!(at(1.5, 0), 1.0);
        assert_eq!(at(1.5, 1), 101.0);
        assert_eq!(at(0.5, 7), 100.0, "past the last layer: the last");
        let surf = |layer: u32, mode| surface_address(&m, 1, [4, 0, 0], layer, 4, Geom::A2, mode);
        assert_eq!(surf(1, Boundary::Trap), Ok(Some(0x1000 + 8 + 4)));
        assert_eq!(surf(2, Boundary::Trap), Err(()));
        assert_eq!(surf(2, Boundary::Zero), Ok(None));
    }
}
