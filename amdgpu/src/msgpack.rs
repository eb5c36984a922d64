//! A MessagePack reader for code-object metadata: every format but extensions,
//! into a tree of [`Value`]s, with nesting and counts bounded by the input.

use crate::AmdgpuError;

/// Nesting deeper than this is refused (the metadata nests four deep).
pub const MAX_DEPTH: usize = 32;

/// One decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    /// Any integer that fits (negative ones as well).
    Int(i128),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    /// Keys and values in the order they came.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The value under string key `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

fn malformed(why: &str) -> AmdgpuError {
    AmdgpuError::Metadata(format!("msgpack: {why}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], AmdgpuError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| malformed("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Result<u64, AmdgpuError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    }

    fn int(&mut self, n: usize) -> Result<i128, AmdgpuError> {
        let raw = self.uint(n)?;
        let bits = 8 * n as u32;
        // Sign-extend from `bits`.
        let shift = 128 - bits;
        Ok(((i128::from(raw)) << shift) >> shift)
    }

    /// A count of items still to come: each takes a byte at least, so a count
    /// over the bytes left cannot be right.
    fn count(&mut self, n: usize) -> Result<usize, AmdgpuError> {
        let count = self.uint(n)? as usize;
        if count > self.bytes.len() - self.at {
            return Err(malformed("a count over the bytes left"));
        }
        Ok(count)
    }

    fn string(&mut self, len: usize) -> Result<Value, AmdgpuError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(|s| Value::Str(s.to_owned()))
            .map_err(|_| malformed("a string that is not UTF-8"))
    }

    fn items(&mut self, n: usize, depth: usize) -> Result<Value, AmdgpuError> {
        // A count is bounded by the bytes left, not by what a value takes in
        // memory: the vector grows as items come.
        let mut items = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn pairs(&mut self, n: usize, depth: usize) -> Result<Value, AmdgpuError> {
        let mut pairs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            pairs.push((k, v));
        }
        Ok(Value::Map(pairs))
    }

    fn value(&mut self, depth: usize) -> Result<Value, AmdgpuError> {
        if depth > MAX_DEPTH {
            return Err(malformed("nested too deep"));
        }
        let tag = self.take(1)?[0];
        Ok(match tag {
            0x00..=0x7f => Value::Int(i128::from(tag)),
            0x80..=0x8f => self.pairs(usize::from(tag & 0x0f), depth)?,
            0x90..=0x9f => self.items(usize::from(tag & 0x0f), depth)?,
            0xa0..=0xbf => self.string(usize::from(tag & 0x1f))?,
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.count(1 << (tag - 0xc4))?;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xca => Value::Float(f64::from(f32::from_bits(self.uint(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.uint(8)?)),
            0xcc..=0xcf => Value::Int(i128::from(self.uint(1 << (tag - 0xcc))?)),
            0xd0..=0xd3 => Value::Int(self.int(1 << (tag - 0xd0))?),
            0xd9..=0xdb => {
                let n = self.count(1 << (tag - 0xd9))?;
                self.string(n)?
            }
            0xdc | 0xdd => {
                let n = self.count(if tag == 0xdc { 2 } else { 4 })?;
                self.items(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.count(if tag == 0xde { 2 } else { 4 })?;
                self.pairs(n, depth)?
            }
            0xe0..=0xff => Value::Int(i128::from(tag as i8)),
            _ => return Err(malformed(&format!("format 0x{tag:02x} (an extension)"))),
        })
    }
}

/// Decodes the one value at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Value, AmdgpuError> {
    Reader { bytes, at: 0 }.value(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_decodes() {
        // {"a": [1, -1, 300, -300, 1.5, "xyz", nil, true, bin "\x01"], "b": 2^40}
        let mut m = vec![
            0x82, 0xa1, b'a', 0x99, 0x01, 0xff, 0xcd, 0x01, 0x2c, 0xd1, 0xfe, 0xd4,
        ];
        m.extend_from_slice(&[0xcb]);
        m.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        m.extend_from_slice(&[0xd9, 3, b'x', b'y', b'z', 0xc0, 0xc3, 0xc4, 1, 1]);
        m.extend_from_slice(&[0xa1, b'b', 0xcf]);
        m.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let v = decode(&m).unwrap();
        let a = v.get("a").unwrap().as_array().unwrap();
        assert_eq!(
            a,
            [
                Value::Int(1),
                Value::Int(-1),
                Value::Int(300),
                Value::Int(-300),
                Value::Float(1.5),
                Value::Str("xyz".into()),
                Value::Nil,
                Value::Bool(true),
                Value::Bin(vec![1]),
            ]
        );
        assert_eq!(v.get("b").unwrap().as_u64(), Some(1 << 40));
        assert_eq!(v.get("c"), None);
    }

    #[test]
    fn hostile_input_is_an_error() {
        // An array of 2^32-1 items in 5 bytes; a string past the end; nesting
        // beyond the limit; an extension; every truncation of a good value.
        assert!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0xdb, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode(&[0x91; 100]).is_err());
        assert!(decode(&[0xd4, 0, 0]).is_err());
        let good = [0x82, 0xa1, b'a', 0x92, 1, 2, 0xa1, b'b', 0xc3];
        assert!(decode(&good).is_ok());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "{cut}");
        }
    }
}
