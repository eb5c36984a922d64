//! Device-runtime functions that nvcc calls as `.extern .func`: `vprintf`
//! (device `printf`, written to the process's stdout), `__assertfail` (failed
//! device `assert`), and `malloc` / `free` (the device heap, which the caller's
//! [`crate::Memory`] keeps).

/// Recognised external functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Printf,
    AssertFail,
    Malloc,
    Free,
}

impl Builtin {
    pub(crate) fn by_name(name: &str) -> Option<Builtin> {
        match name {
            "vprintf" => Some(Builtin::Printf),
            "__assertfail" => Some(Builtin::AssertFail),
            "malloc" => Some(Builtin::Malloc),
            "free" => Some(Builtin::Free),
            _ => None,
        }
    }

    /// Whether it uses the device heap.
    pub(crate) fn uses_heap(self) -> bool {
        matches!(self, Builtin::Malloc | Builtin::Free)
    }
}

/// Source of printf arguments: reads `size` bytes of the argument buffer at
/// the given offset, and C strings at device/generic addresses.
pub(crate) trait ArgSource {
    type Err;
    fn arg(&mut self, off: u64, size: usize) -> Result<u64, Self::Err>;
    fn string(&mut self, addr: u64) -> Result<Vec<u8>, Self::Err>;
}

struct Spec {
    left: bool,
    zero: bool,
    plus: bool,
    space: bool,
    alt: bool,
    width: usize,
    prec: Option<usize>,
}

fn pad(s: String, sp: &Spec, numeric: bool) -> String {
    let len = s.chars().count();
    if len >= sp.width {
        return s;
    }
    let fill = sp.width - len;
    if sp.left {
        s + &" ".repeat(fill)
    } else if sp.zero && numeric {
        let (sign, digits) = match s.strip_prefix(['-', '+', ' ']) {
            Some(rest) => (&s[..1], rest.to_string()),
            None => ("", s.clone()),
        };
        format!("{sign}{}{digits}", "0".repeat(fill))
    } else {
        " ".repeat(fill) + &s
    }
}

fn sign(neg: bool, sp: &Spec) -> &'static str {
    if neg {
        "-"
    } else if sp.plus {
        "+"
    } else if sp.space {
        " "
    } else {
        ""
    }
}

/// C `%e` mantissa/exponent form with `p` fraction digits.
fn exp_form(v: f64, p: usize, upper: bool) -> String {
    let s = format!("{:.*e}", p, v);
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    let r = format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    if upper {
        r.to_uppercase()
    } else {
        r
    }
}

fn strip_zeros(s: String) -> String {
    if !s.contains('.') {
        return s;
    }
    let (m, e) = match s.find(['e', 'E']) {
        Some(i) => (s[..i].to_string(), s[i..].to_string()),
        None => (s, String::new()),
    };
    let m = m.trim_end_matches('0').trim_end_matches('.').to_string();
    m + &e
}

fn float(v: f64, conv: u8, sp: &Spec) -> String {
    let upper = conv.is_ascii_uppercase();
    if !v.is_finite() {
        let s = if v.is_nan() {
            "nan".to_string()
        } else {
            format!("{}inf", sign(v < 0.0, sp))
        };
        return if upper { s.to_uppercase() } else { s };
    }
    let neg = v.is_sign_negative();
    let a = v.abs();
    let p = sp.prec.unwrap_or(6);
    let body = match conv {
        b'f' | b'F' => format!("{:.*}", p, a),
        b'e' | b'E' => exp_form(a, p, upper),
        b'a' | b'A' => format!("{a:e}"),
        _ => {
            let p = p.max(1);
            let x = if a == 0.0 {
                0
            } else {
                exp_form(a, p - 1, false)
                    .split_once('e')
                    .and_then(|(_, e)| e.parse::<i32>().ok())
                    .unwrap_or(0)
            };
            let s = if x < -4 || x >= p as i32 {
                exp_form(a, p - 1, upper)
            } else {
                format!("{:.*}", (p as i32 - 1 - x).max(0) as usize, a)
            };
            if sp.alt {
                s
            } else {
                strip_zeros(s)
            }
        }
    };
    format!("{}{body}", sign(neg, sp))
}

/// Formats a C printf format string.
pub(crate) fn format<S: ArgSource>(fmt: &[u8], src: &mut S) -> Result<String, S::Err> {
    let mut out = String::new();
    let mut off = 0u64;
    let mut next = |src: &mut S, size: usize| -> Result<u64, S::Err> {
        off = off.div_ceil(size as u64) * size as u64;
        let v = src.arg(off, size)?;
        off += size as u64;
        Ok(v)
    };
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        i += 1;
        if c != b'%' {
            let start = i - 1;
            while i < fmt.len() && fmt[i] != b'%' {
                i += 1;
            }
            out.push_str(&String::from_utf8_lossy(&fmt[start..i]));
            continue;
        }
        let mut sp = Spec {
            left: false,
            zero: false,
            plus: false,
            space: false,
            alt: false,
            width: 0,
            prec: None,
        };
        while i < fmt.len() {
            match fmt[i] {
                b'-' => sp.left = true,
                b'0' => sp.zero = true,
                b'+' => sp.plus = true,
                b' ' => sp.space = true,
                b'#' => sp.alt = true,
                _ => break,
            }
            i += 1;
        }
        if fmt.get(i) == Some(&b'*') {
            sp.width = next(src, 4)? as u32 as i32 as usize;
            i += 1;
        }
        while let Some(d) = fmt.get(i).filter(|d| d.is_ascii_digit()) {
            sp.width = sp.width * 10 + (d - b'0') as usize;
            i += 1;
        }
        if fmt.get(i) == Some(&b'.') {
            i += 1;
            let mut p = 0usize;
            if fmt.get(i) == Some(&b'*') {
                p = next(src, 4)? as u32 as usize;
                i += 1;
            }
            while let Some(d) = fmt.get(i).filter(|d| d.is_ascii_digit()) {
                p = p * 10 + (d - b'0') as usize;
                i += 1;
            }
            sp.prec = Some(p);
        }
        let mut long = 0;
        while let Some(&l) = fmt.get(i).filter(|l| b"hlzjtLq".contains(l)) {
            if matches!(l, b'l' | b'z' | b'j' | b't' | b'L' | b'q') {
                long += 1;
            }
            i += 1;
        }
        let Some(&conv) = fmt.get(i) else { break };
        i += 1;
        let isize = if long > 0 { 8 } else { 4 };
        let s = match conv {
            b'%' => "%".to_string(),
            b'd' | b'i' => {
                let raw = next(src, isize)?;
                let v = if isize == 8 {
                    raw as i64
                } else {
                    raw as u32 as i32 as i64
                };
                let mut digits = v.unsigned_abs().to_string();
                if let Some(p) = sp.prec {
                    digits = format!("{digits:0>p$}");
                }
                pad(
                    format!("{}{digits}", sign(v < 0, &sp)),
                    &sp,
                    sp.prec.is_none(),
                )
            }
            b'u' | b'x' | b'X' | b'o' => {
                let raw = next(src, isize)?;
                let v = if isize == 8 { raw } else { raw & 0xFFFF_FFFF };
                let mut digits = match conv {
                    b'u' => v.to_string(),
                    b'x' => format!("{v:x}"),
                    b'X' => format!("{v:X}"),
                    _ => format!("{v:o}"),
                };
                if let Some(p) = sp.prec {
                    digits = format!("{digits:0>p$}");
                }
                if sp.alt && v != 0 {
                    digits = match conv {
                        b'x' => format!("0x{digits}"),
                        b'X' => format!("0X{digits}"),
                        b'o' => format!("0{digits}"),
                        _ => digits,
                    };
                }
                pad(digits, &sp, sp.prec.is_none())
            }
            b'c' => pad(((next(src, 4)? as u8) as char).to_string(), &sp, false),
            b'p' => pad(format!("0x{:x}", next(src, 8)?), &sp, false),
            b's' => {
                let a = next(src, 8)?;
                let mut bytes = if a == 0 {
                    b"(null)".to_vec()
                } else {
                    src.string(a)?
                };
                if let Some(p) = sp.prec {
                    bytes.truncate(p);
                }
                pad(String::from_utf8_lossy(&bytes).into_owned(), &sp, false)
            }
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A' => {
                let v = f64::from_bits(next(src, 8)?);
                pad(float(v, conv, &sp), &sp, v.is_finite())
            }
            other => format!("%{}", other as char),
        };
        out.push_str(&s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Args(Vec<u8>);
    impl ArgSource for Args {
        type Err = ();
        fn arg(&mut self, off: u64, size: usize) -> Result<u64, ()> {
            let o = off as usize;
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(self.0.get(o..o + size).ok_or(())?);
            Ok(u64::from_le_bytes(b))
        }
        fn string(&mut self, _addr: u64) -> Result<Vec<u8>, ()> {
            Ok(b"str".to_vec())
        }
    }

    #[test]
    fn formats_like_c() {
        let mut buf = Vec::new();
        buf.extend((-42i32).to_le_bytes());
        buf.extend([0u8; 4]);
        buf.extend(3.25f64.to_le_bytes());
        buf.extend(255u32.to_le_bytes());
        buf.extend([0u8; 4]);
        buf.extend(0x1234u64.to_le_bytes());
        buf.extend(1e-7f64.to_le_bytes());
        buf.extend(0.5f64.to_le_bytes());
        let s = format(b"%d|%5.2f|%04x|%s|%g|%g|%%\n", &mut Args(buf)).unwrap();
        assert_eq!(s, "-42| 3.25|00ff|str|1e-07|0.5|%\n");
        let mut b2 = Vec::new();
        b2.extend((-5i64).to_le_bytes());
        b2.extend(100.0f64.to_le_bytes());
        let s = format(b"%lld %e", &mut Args(b2)).unwrap_or_default();
        assert!(s.starts_with("-5 1.000000e+02"), "{s}");
    }
}
