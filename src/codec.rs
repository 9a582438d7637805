//! A tiny little-endian binary codec for state partition files.
//!
//! Framing and checksums are the state module's business; this only lays out records.

/// Appends fixed-width little-endian fields and length-prefixed byte strings.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// LEB128: 7 bits per byte, low groups first, high bit set on all but the last byte.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    /// A signed value as a [`varint`](Self::varint), zigzag-mapped so small magnitudes of
    /// either sign stay short.
    pub fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    /// A varint length then the bytes.
    pub fn short_bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    /// A `u32` length then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        // State records hold IDs of at most 102,400 bytes, far below u32::MAX.
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
}

/// Reads what [`Writer`] wrote. Every read is bounds-checked: a short buffer is an error, never
/// a panic, because state files come from disk.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The buffer ended before a field did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub offset: usize,
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record truncated at byte {}", self.offset)
    }
}

impl std::error::Error for Truncated {}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    /// Bytes read so far: where the next field starts.
    pub fn offset(&self) -> usize {
        self.pos
    }
    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    /// The bytes read since offset `start` (an earlier [`offset`](Self::offset)).
    pub fn consumed_since(&self, start: usize) -> &'a [u8] {
        &self.buf[start.min(self.pos)..self.pos]
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Truncated { offset: self.pos }),
        }
    }
    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, Truncated> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// Reads a [`Writer::varint`]. Bits beyond 64 and overlong forms (a last byte of 0 after
    /// others) are errors, so every value has exactly one encoding.
    pub fn varint(&mut self) -> Result<u64, Truncated> {
        // Most stored values are one byte (small deltas, counts, trait data sources).
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_long()
    }
    /// [`varint`](Self::varint) of two bytes or more.
    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, Truncated> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if (shift == 63 && bits > 1) || (shift > 0 && b == 0) {
                return Err(Truncated { offset: start });
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Truncated { offset: start })
    }
    /// Reads a [`Writer::zigzag`].
    pub fn zigzag(&mut self) -> Result<i64, Truncated> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }
    /// Reads a [`Writer::short_bytes`].
    pub fn short_bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let n = usize::try_from(self.varint()?).map_err(|_| Truncated { offset: self.pos })?;
        self.take(n)
    }
    /// A varint that must fit in `u32`.
    pub fn varint_u32(&mut self) -> Result<u32, Truncated> {
        let start = self.pos;
        u32::try_from(self.varint()?).map_err(|_| Truncated { offset: start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::default();
        w.u8(7);
        w.u32(42);
        w.i64(-5);
        w.bytes(b"abc");
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u32(), Ok(42));
        assert_eq!(r.i64(), Ok(-5));
        assert_eq!(r.bytes(), Ok(&b"abc"[..]));
        assert!(r.is_empty());
        let mut short = Reader::new(&w.buf[..w.buf.len() - 1]);
        short.u8().unwrap();
        short.u32().unwrap();
        short.i64().unwrap();
        assert_eq!(short.bytes(), Err(Truncated { offset: 17 }));
    }

    /// The byte-at-a-time definition of a varint, without the one-byte fast path.
    fn reference_varint(buf: &[u8]) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for (i, &b) in buf.iter().enumerate().take(10) {
            let bits = u64::from(b & 0x7f);
            if (i == 9 && bits > 1) || (i > 0 && b == 0) {
                return None;
            }
            v |= bits << (7 * i);
            if b < 0x80 {
                return Some((v, i + 1));
            }
        }
        None
    }

    #[test]
    fn overlong_and_oversized_varints_are_errors() {
        for bad in [&[0x80, 0x00][..], &[0x81, 0x80, 0x00], &[0xff; 11], &[0x80]] {
            assert!(Reader::new(bad).varint().is_err(), "{bad:?}");
        }
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).varint(), Ok(u64::MAX));
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over).varint().is_err());
    }

    proptest! {
        #[test]
        fn varint_agrees_with_its_definition(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut r = Reader::new(&bytes);
            let got = r.varint().ok().map(|v| (v, r.offset()));
            prop_assert_eq!(got, reference_varint(&bytes));
        }
    }
}
