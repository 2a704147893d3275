//! A small, strict binary codec.
//!
//! Layout rules (documented in docs/PROTOCOL.md): integers are little-endian and fixed width,
//! sequences are a `u32` count followed by the elements, and every count is checked against both
//! a per-field limit and the bytes actually remaining before anything is allocated.

use crate::error::DecodeError;

pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self { buf: Vec::with_capacity(capacity) }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// A sequence count. Callers only encode sequences whose length was validated on the way in
    /// or produced by this crate, both far below `u32::MAX`.
    pub(crate) fn count(&mut self, n: usize) {
        let n = u32::try_from(n).expect("sequence lengths are bounded far below u32::MAX");
        self.u32(n);
    }

    pub(crate) fn u64s(&mut self, v: &[u64]) {
        self.count(v.len());
        let start = self.buf.len();
        self.buf.resize(start + v.len() * 8, 0);
        for (out, x) in self.buf[start..].chunks_exact_mut(8).zip(v) {
            out.copy_from_slice(&x.to_le_bytes());
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field, needed: n - self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Reads a count and checks it against `max` and against the remaining input, given that
    /// each element occupies at least `min_element_size` bytes.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_element_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(DecodeError::TooLong { field, len: n as u64, max: max as u64 });
        }
        let needed = n.saturating_mul(min_element_size);
        if needed > self.rest.len() {
            return Err(DecodeError::Truncated { field, needed: needed - self.rest.len() });
        }
        Ok(n)
    }

    pub(crate) fn u64s(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<u64>, DecodeError> {
        let n = self.count(field, max, 8)?;
        let bytes = self.take(n * 8, field)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact yields 8 bytes")))
            .collect())
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes(self.rest.len())) }
    }
}
