//! IEEE binary16 from and to binary32, rounding to nearest, ties to even, as
//! compiler-rt's `__gnu_f2h_ieee` and `__gnu_h2f_ieee` do.

/// The half nearest `value` (overflow to infinity, NaN stays NaN).
pub(crate) fn from_f32(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        let nan = if mantissa != 0 {
            0x200 | (mantissa >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    let e = exponent - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    // Rounds `m >> shift` to nearest, ties to even.
    let round = |m: u32, shift: u32| {
        let kept = m >> shift;
        let rest = m & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        if rest > half || (rest == half && kept & 1 == 1) {
            kept + 1
        } else {
            kept
        }
    };
    if e <= 0 {
        // Subnormal (or zero): the value is (mantissa | 1<<23) * 2^(e-14-10).
        if e < -10 {
            return sign;
        }
        return sign | round(mantissa | 0x80_0000, (14 - e) as u32) as u16;
    }
    // A carry out of the mantissa goes into the exponent, as it should.
    sign | round(((e as u32) << 23) | mantissa, 13) as u16
}

/// The float a half is.
pub(crate) fn to_f32(value: u16) -> f32 {
    let sign = u32::from(value & 0x8000) << 16;
    let exponent = u32::from((value >> 10) & 0x1f);
    let mantissa = u32::from(value & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: shift the mantissa up to a leading one.
            let shift = mantissa.leading_zeros() - 21;
            let m = (mantissa << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (m << 13)
        }
        (31, _) => sign | 0x7f80_0000 | (mantissa << 13),
        _ => sign | ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        for (f, h) in [
            (1.0f32, 0x3c00u16),
            (-2.0, 0xc000),
            (0.1, 0x2e66),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00),
            (2f32.powi(-24), 0x0001),
            (2f32.powi(-25), 0x0000),
            (2f32.powi(-25) * 1.5, 0x0001),
            (2f32.powi(-14), 0x0400),
            (f32::INFINITY, 0x7c00),
            (-0.0, 0x8000),
        ] {
            assert_eq!(from_f32(f), h, "{f}");
        }
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        // 1 + 2^-11 is halfway between two halves: ties go to the even one.
        assert_eq!(from_f32(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(from_f32(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    }

    #[test]
    fn every_half_goes_to_a_float_and_back_unchanged() {
        for h in 0..=u16::MAX {
            let f = to_f32(h);
            if f.is_nan() {
                assert!(to_f32(from_f32(f)).is_nan());
            } else {
                assert_eq!(from_f32(f), h, "{h:#06x} -> {f}");
            }
        }
    }
}
