//! The group operations: hashing a key to Ristretto255, blinding it with a party's scalar,
//! and the digest of a double-blinded key.
//!
//! A party's blinding scalar is `k = 2h` for a uniformly random non-zero scalar `h` drawn
//! fresh per job; only `h` is kept. Blinding computes `h·P` and then `compress(2·(h·P))` with
//! curve25519-dalek's batched double-and-compress, which shares one field inversion across a
//! chunk of points; the doubling completes the multiplication by `k` for free, and the
//! compression costs a fraction of a single compression. Every per-key operation runs on
//! rayon's pool, in chunks of [`CHUNK`] keys.

use std::fmt;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::message::{BlindedKey, KeyDigest};
use crate::params::Session;

/// Keys per unit of parallel work, and per shared inversion of the batched compression.
const CHUNK: usize = 256;

/// The hash-to-group label. The session follows it, then the key's length and the key.
const HASH_LABEL: &[u8] = b"veil-psi/v1/hash-to-ristretto255\0";

/// A party's secret for one job: the scalar `h`, blinding by `k = 2h`. Zeroized on drop, never
/// printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct BlindingKey {
    half: Scalar,
}

impl fmt::Debug for BlindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindingKey([redacted])")
    }
}

impl BlindingKey {
    /// A fresh key from `rng`.
    pub(crate) fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut wide = Zeroizing::new([0u8; 64]);
        loop {
            rng.fill_bytes(wide.as_mut());
            let half = Scalar::from_bytes_mod_order_wide(&wide);
            // Zero comes with probability 2^-252; a zero scalar would map every key to one point.
            if half != Scalar::ZERO {
                return Self { half };
            }
        }
    }

    /// `compress(k·P)` for each point of a chunk: `h·P` each, then the batched doubling.
    fn blind_chunk(
        &self,
        points: impl Iterator<Item = RistrettoPoint>,
    ) -> Vec<CompressedRistretto> {
        let halves: Vec<RistrettoPoint> = points.map(|p| self.half * p).collect();
        RistrettoPoint::double_and_compress_batch(&halves)
    }
}

/// The group element of a normalised key in `session`: SHA-512 over the label, the session,
/// the key's length and the key, mapped with Ristretto255's one-way map from 64 uniform bytes.
pub(crate) fn hash_to_group(session: &Session, key: &[u8]) -> RistrettoPoint {
    let digest = Sha512::new()
        .chain_update(HASH_LABEL)
        .chain_update(session.0)
        .chain_update((key.len() as u64).to_le_bytes())
        .chain_update(key)
        .finalize();
    RistrettoPoint::from_uniform_bytes(&digest.into())
}

/// `k·H(key_at(i))` for `i` in `0..len`, compressed: one hash to the group and one scalar
/// multiplication per key, in parallel.
pub(crate) fn blind<'a, F>(
    key: &BlindingKey,
    session: &Session,
    len: usize,
    key_at: F,
) -> Vec<BlindedKey>
where
    F: Fn(usize) -> &'a [u8] + Sync,
{
    let mut out = vec![BlindedKey([0; 32]); len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, slots)| {
        let start = c * CHUNK;
        let points = (start..start + slots.len()).map(|i| hash_to_group(session, key_at(i)));
        for (slot, point) in slots.iter_mut().zip(key.blind_chunk(points)) {
            *slot = BlindedKey(point.to_bytes());
        }
    });
    out
}

/// The digests of `k·P` for each point `P` the peer sent: one decompression, one scalar
/// multiplication and a share of a batched compression per point, in parallel. A point that
/// is not a canonical encoding, or is the identity, gives its position.
pub(crate) fn reblind(key: &BlindingKey, points: &[BlindedKey]) -> Result<Vec<KeyDigest>, usize> {
    let mut out = vec![KeyDigest([0; 16]); points.len()];
    out.par_chunks_mut(CHUNK).zip(points.par_chunks(CHUNK)).enumerate().try_for_each(
        |(c, (slots, points))| {
            let mut decoded = Vec::with_capacity(points.len());
            for (j, point) in points.iter().enumerate() {
                match decode_point(point) {
                    Some(p) => decoded.push(p),
                    None => return Err(c * CHUNK + j),
                }
            }
            for (slot, point) in slots.iter_mut().zip(key.blind_chunk(decoded.into_iter())) {
                *slot = KeyDigest::of(&point);
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// A point the peer sent: a canonical encoding of an element other than the identity.
fn decode_point(point: &BlindedKey) -> Option<RistrettoPoint> {
    if point.0 == [0; 32] {
        return None; // the identity's encoding
    }
    CompressedRistretto(point.0).decompress()
}

impl KeyDigest {
    /// The first 16 bytes of a double-blinded key's encoding.
    ///
    /// At most 2^127 encodings share 16 leading bytes (the top bit of an encoding is zero),
    /// one element each, out of about 2^252 elements; so two independent uniform elements
    /// share a digest with probability at most 2^-125, and a false match between sets of
    /// sizes n and m has probability at most n·m·2^-125 (below 2^-78 for 10^7 × 10^7).
    fn of(point: &CompressedRistretto) -> Self {
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&point.as_bytes()[..16]);
        KeyDigest(digest)
    }
}

/// A uniform integer in `0..bound` (`bound > 0`), by rejection so that it is unbiased.
pub(crate) fn uniform_below(rng: &mut impl CryptoRngCore, bound: u64) -> u64 {
    debug_assert!(bound > 0);
    // The largest multiple of `bound` that fits is `2^64 - (2^64 mod bound)`.
    let zone = u64::MAX - (u64::MAX - bound + 1) % bound;
    loop {
        let v = rng.next_u64();
        if v <= zone {
            return v % bound;
        }
    }
}

/// Shuffles `items` uniformly (Fisher–Yates) with `rng`.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut impl CryptoRngCore) {
    for i in (1..items.len()).rev() {
        let j = uniform_below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn blinding_twice_commutes_and_matches_a_plain_multiplication() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let session = Session([7; 32]);
        let (a, b) = (BlindingKey::generate(&mut rng), BlindingKey::generate(&mut rng));
        let keys: Vec<Vec<u8>> = (0..600u32).map(|i| i.to_string().into_bytes()).collect();
        let once = blind(&a, &session, keys.len(), |i| &keys[i]);
        // k·H(x) computed plainly.
        let k = a.half + a.half;
        for i in [0, 255, 256, 599] {
            assert_eq!(once[i].0, (k * hash_to_group(&session, &keys[i])).compress().to_bytes());
        }
        let ab = reblind(&b, &once).expect("valid points");
        let other = blind(&b, &session, keys.len(), |i| &keys[i]);
        let ba = reblind(&a, &other).expect("valid points");
        assert_eq!(ab, ba);
    }

    #[test]
    fn invalid_points_name_their_position() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let key = BlindingKey::generate(&mut rng);
        let session = Session([0; 32]);
        let mut points = blind(&key, &session, 300, |_| b"k");
        points[260] = BlindedKey([0xff; 32]);
        assert_eq!(reblind(&key, &points), Err(260));
        points[260] = BlindedKey([0; 32]);
        assert_eq!(reblind(&key, &points), Err(260));
    }

    #[test]
    fn the_session_separates_the_hash() {
        assert_ne!(
            hash_to_group(&Session([1; 32]), b"key"),
            hash_to_group(&Session([2; 32]), b"key")
        );
        assert_ne!(hash_to_group(&Session([1; 32]), b"a"), hash_to_group(&Session([1; 32]), b"b"));
    }

    #[test]
    fn uniform_below_covers_its_range_without_bias() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[uniform_below(&mut rng, 6) as usize] += 1;
        }
        // Each count is Binomial(60000, 1/6): mean 10000, sd ≈ 91; 6 sd either side.
        assert!(counts.iter().all(|&c| (9_450..=10_550).contains(&c)), "{counts:?}");
        assert_eq!(uniform_below(&mut rng, 1), 0);
    }

    #[test]
    fn the_key_never_prints() {
        let key = BlindingKey::generate(&mut ChaCha20Rng::seed_from_u64(4));
        assert_eq!(format!("{key:?}"), "BlindingKey([redacted])");
    }
}
