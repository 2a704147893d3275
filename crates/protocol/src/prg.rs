//! Mask expansion and vector kernels over Z_2^64.
//!
//! A 32-byte seed keys AES-128 in counter mode (NIST SP 800-38A, big-endian counter): the first
//! 16 bytes of the seed are the key, the last 16 the initial counter block, and the keystream,
//! read as little-endian `u64`s, is the mask. AES-NI is detected at run time. Long vectors are cut into chunks that rayon expands in parallel, each chunk
//! seeking the keystream to its own offset, so the mask is the same however it is split.

use aes::Aes128;
use cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use rayon::prelude::*;

type Ctr = ctr::Ctr128BE<Aes128>;

/// Elements per parallel chunk (128 KiB of mask).
const CHUNK: usize = 16 * 1024;
/// Elements per keystream block generated on the stack (4 KiB).
const BLOCK: usize = 512;

/// Whether a mask is added to or subtracted from the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// `target += mask`
    Add,
    /// `target -= mask`
    Subtract,
}

fn expand_chunk(target: &mut [u64], seed: &[u8; 32], first_element: usize, sign: Sign) {
    let mut cipher = Ctr::new(seed[..16].into(), seed[16..].into());
    cipher.seek((first_element as u64) * 8);
    let mut buf = [0u8; BLOCK * 8];
    for block in target.chunks_mut(BLOCK) {
        let bytes = &mut buf[..block.len() * 8];
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        let words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        match sign {
            Sign::Add => block.iter_mut().zip(words).for_each(|(t, m)| *t = t.wrapping_add(m)),
            Sign::Subtract => block.iter_mut().zip(words).for_each(|(t, m)| *t = t.wrapping_sub(m)),
        }
    }
    buf.fill(0);
}

/// Adds (or subtracts) the mask expanded from `seed` to `target`, element-wise in Z_2^64.
pub fn apply_mask(target: &mut [u64], seed: &[u8; 32], sign: Sign) {
    if target.len() <= CHUNK {
        expand_chunk(target, seed, 0, sign);
        return;
    }
    target
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| expand_chunk(chunk, seed, i * CHUNK, sign));
}

/// One mask to apply: its seed (zeroized on drop) and direction.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Mask {
    seed: [u8; 32],
    #[zeroize(skip)]
    sign: Sign,
}

impl Mask {
    /// A mask expanded from `seed`, added or subtracted.
    pub fn new(seed: &[u8; 32], sign: Sign) -> Self {
        Self { seed: *seed, sign }
    }

    /// The same mask with the opposite sign, which undoes this one.
    pub fn inverse(self) -> Self {
        let sign = match self.sign {
            Sign::Add => Sign::Subtract,
            Sign::Subtract => Sign::Add,
        };
        Self { seed: self.seed, sign }
    }
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mask([redacted], {:?})", self.sign)
    }
}

/// Applies many masks to one vector. The vector is walked chunk by chunk (in parallel) and
/// every mask's segment is applied while the chunk is in cache.
pub fn apply_masks(target: &mut [u64], masks: &[Mask]) {
    if masks.is_empty() {
        return;
    }
    if target.len() <= CHUNK {
        for m in masks {
            expand_chunk(target, &m.seed, 0, m.sign);
        }
        return;
    }
    target.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        for m in masks {
            expand_chunk(chunk, &m.seed, i * CHUNK, m.sign);
        }
    });
}

/// `acc += v`, element-wise in Z_2^64. Panics if the lengths differ; callers check lengths
/// of anything that came from outside first.
pub fn add_assign(acc: &mut [u64], v: &[u64]) {
    assert_eq!(acc.len(), v.len(), "vector lengths are validated before summing");
    if acc.len() <= CHUNK {
        acc.iter_mut().zip(v).for_each(|(a, b)| *a = a.wrapping_add(*b));
        return;
    }
    acc.par_chunks_mut(CHUNK).zip(v.par_chunks(CHUNK)).for_each(|(a, b)| {
        a.iter_mut().zip(b).for_each(|(x, y)| *x = x.wrapping_add(*y));
    });
}

/// A stream of uniform `u64`s from a seed, for deterministic sampling (the neighbour graph).
pub(crate) struct SeededStream {
    cipher: Ctr,
}

impl SeededStream {
    pub(crate) fn new(seed: &[u8; 32]) -> Self {
        Self { cipher: Ctr::new(seed[..16].into(), seed[16..].into()) }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.cipher.apply_keystream(&mut b);
        u64::from_le_bytes(b)
    }

    /// Uniform in `0..bound` by rejection sampling; `bound > 0`.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_independent_of_chunking_and_cancels() {
        let seed = [3u8; 32];
        let n = CHUNK * 3 + 17;
        let mut whole = vec![0u64; n];
        apply_mask(&mut whole, &seed, Sign::Add);
        // The same mask computed one small piece at a time.
        let mut pieces = vec![0u64; n];
        for (i, c) in pieces.chunks_mut(1000).enumerate() {
            expand_chunk(c, &seed, i * 1000, Sign::Add);
        }
        assert_eq!(whole, pieces);
        assert!(whole.iter().filter(|&&x| x == 0).count() < 2, "mask must look random");
        apply_mask(&mut whole, &seed, Sign::Subtract);
        assert!(whole.iter().all(|&x| x == 0));
    }

    #[test]
    fn different_seeds_give_different_masks() {
        let mut a = vec![0u64; 64];
        let mut b = vec![0u64; 64];
        apply_mask(&mut a, &[1u8; 32], Sign::Add);
        apply_mask(&mut b, &[2u8; 32], Sign::Add);
        assert_ne!(a, b);
    }

    #[test]
    fn below_stays_in_range() {
        let mut s = SeededStream::new(&[9u8; 32]);
        for bound in [1u64, 2, 3, 7, 1000] {
            for _ in 0..100 {
                assert!(s.below(bound) < bound);
            }
        }
    }
}
