//! Fixed-point encoding of real vectors into Z_2^64.
//!
//! A value is clipped to the declared range `[min, max]`, multiplied by `2^fractional_bits`,
//! rounded stochastically (up with probability equal to the fractional part, so the encoding is
//! unbiased) and stored as a two's-complement `i64`. The constructor checks that the sum of
//! `max_parties` clipped inputs stays inside `i64`, so the ring sum never wraps and decodes
//! exactly to the sum of the encoded values.

use rand_core::RngCore;

use crate::error::{Error, Result};

/// A checked fixed-point encoding for vectors of reals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedPoint {
    min: f64,
    max: f64,
    scale: f64,
    max_parties: usize,
}

/// Largest magnitude an encoded sum may reach: 2^62, keeping a factor of two of headroom below
/// `i64::MAX` for rounding.
const SUM_LIMIT: f64 = 4_611_686_018_427_387_904.0;

impl FixedPoint {
    /// An encoding for values in `[min, max]` with `fractional_bits` bits after the point, whose
    /// sums over up to `max_parties` parties are decoded.
    pub fn new(min: f64, max: f64, fractional_bits: u32, max_parties: usize) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidEncoding(m));
        if !(min.is_finite() && max.is_finite()) || min >= max {
            return bad(format!("clipping range [{min}, {max}] must be finite and non-empty"));
        }
        if fractional_bits > 52 {
            return bad(format!("{fractional_bits} fractional bits exceed f64 precision (52)"));
        }
        if max_parties == 0 {
            return bad("max_parties must be at least 1".into());
        }
        let scale = (1u64 << fractional_bits) as f64;
        let magnitude = min.abs().max(max.abs());
        // Each encoded value is at most ⌈magnitude · scale⌉ in absolute value.
        let worst = max_parties as f64 * ((magnitude * scale).ceil() + 1.0);
        if worst >= SUM_LIMIT {
            return bad(format!(
                "{max_parties} parties × |{magnitude}| × 2^{fractional_bits} could wrap the ring; \
                 narrow the range, use fewer fractional bits or fewer parties"
            ));
        }
        Ok(Self { min, max, scale, max_parties })
    }

    /// The largest number of parties whose sum this encoding decodes.
    pub fn max_parties(&self) -> usize {
        self.max_parties
    }

    /// The resolution, `2^-fractional_bits`.
    pub fn resolution(&self) -> f64 {
        1.0 / self.scale
    }

    /// Largest absolute error of a decoded sum over `contributors` parties of one element, per
    /// contributor's row count `rows` (stochastic rounding moves each value by less than one
    /// step). Clipping error is not included: values outside the range are the caller's choice.
    pub fn error_bound(&self, contributors: usize, rows: usize) -> f64 {
        (contributors * rows.max(1)) as f64 / self.scale
    }

    /// Encodes one value.
    pub fn encode_one(&self, value: f64, rng: &mut impl RngCore) -> u64 {
        // NaN clips to the lower bound rather than poisoning the sum.
        let v = if value.is_nan() { self.min } else { value.clamp(self.min, self.max) };
        let x = v * self.scale;
        let floor = x.floor();
        let frac = x - floor;
        // 53 random bits give a uniform double in [0, 1).
        let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let rounded = if u < frac { floor + 1.0 } else { floor };
        (rounded as i64) as u64
    }

    /// Encodes a vector of `f64`.
    pub fn encode(&self, values: &[f64], rng: &mut impl RngCore) -> Vec<u64> {
        values.iter().map(|&v| self.encode_one(v, rng)).collect()
    }

    /// Encodes a vector of `f32`.
    pub fn encode_f32(&self, values: &[f32], rng: &mut impl RngCore) -> Vec<u64> {
        values.iter().map(|&v| self.encode_one(f64::from(v), rng)).collect()
    }

    /// Decodes a sum over `contributors` parties, each of whom encoded one value per element.
    pub fn decode_sum(&self, sum: &[u64], contributors: usize) -> Result<Vec<f64>> {
        if contributors > self.max_parties {
            return Err(Error::InvalidEncoding(format!(
                "sum over {contributors} parties, encoding is checked for {}",
                self.max_parties
            )));
        }
        Ok(sum.iter().map(|&s| (s as i64) as f64 / self.scale).collect())
    }
}

/// Integer vectors (counts, histograms, integer sums) pass through unscaled, as two's-complement
/// `i64`; [`IntegerRange`] checks that `max_parties` inputs of at most `max_abs` each cannot wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegerRange {
    max_abs: u64,
    max_parties: usize,
}

impl IntegerRange {
    /// A range of `|x| ≤ max_abs` per party and element, summed over up to `max_parties`.
    pub fn new(max_abs: u64, max_parties: usize) -> Result<Self> {
        let total = u128::from(max_abs) * max_parties as u128;
        if max_parties == 0 || total > i64::MAX as u128 {
            return Err(Error::InvalidEncoding(format!(
                "{max_parties} parties × {max_abs} does not fit a signed 64-bit sum"
            )));
        }
        Ok(Self { max_abs, max_parties })
    }

    /// Encodes integers, refusing any outside the declared range.
    pub fn encode(&self, values: &[i64]) -> Result<Vec<u64>> {
        values
            .iter()
            .map(|&v| {
                if v.unsigned_abs() > self.max_abs {
                    Err(Error::InvalidEncoding(format!("{v} is outside ±{}", self.max_abs)))
                } else {
                    Ok(v as u64)
                }
            })
            .collect()
    }

    /// Decodes a sum.
    pub fn decode_sum(&self, sum: &[u64]) -> Vec<i64> {
        sum.iter().map(|&s| s as i64).collect()
    }
}

/// Wide signed integers (up to ±2^125) split into three limbs of Z_2^64, so that sums of large
/// exact totals (a party's sum of fixed-point values over millions of rows, or of their
/// squares) survive the ring. Limbs are 42 bits: the two low limbs are unsigned, the top limb
/// signed, and each limb's sum over up to [`WIDE_MAX_PARTIES`] parties fits in 64 bits, so the
/// decoded sum is exact.
pub const WIDE_LIMBS: usize = 3;

/// Most parties whose wide integers may be summed.
pub const WIDE_MAX_PARTIES: usize = 1 << 20;

const LIMB_BITS: u32 = 42;
const LIMB_MASK: i128 = (1 << LIMB_BITS) - 1;

/// Largest magnitude of one wide integer.
pub const WIDE_MAX_ABS: i128 = 1 << 125;

/// Splits `v` (|v| < 2^125) into limbs. Values beyond the range are a caller bug: callers bound
/// their inputs (rows × value range) before encoding.
pub fn encode_wide(v: i128) -> [u64; WIDE_LIMBS] {
    debug_assert!(v.abs() < WIDE_MAX_ABS, "wide integer out of range");
    let lo = v & LIMB_MASK;
    let mid = (v >> LIMB_BITS) & LIMB_MASK;
    let hi = v >> (2 * LIMB_BITS);
    [lo as u64, mid as u64, (hi as i64) as u64]
}

/// Recombines summed limbs into the exact sum.
pub fn decode_wide(limbs: &[u64; WIDE_LIMBS]) -> i128 {
    let lo = i128::from(limbs[0]);
    let mid = i128::from(limbs[1]);
    let hi = i128::from(limbs[2] as i64);
    (hi << (2 * LIMB_BITS)) + (mid << LIMB_BITS) + lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn refuses_ranges_that_could_wrap() {
        assert!(FixedPoint::new(-1.0, 1.0, 40, 1000).is_ok());
        assert!(FixedPoint::new(-1e6, 1e6, 40, 1000).is_err());
        assert!(FixedPoint::new(1.0, 1.0, 10, 10).is_err());
        assert!(FixedPoint::new(0.0, f64::INFINITY, 10, 10).is_err());
        assert!(IntegerRange::new(u64::MAX / 2, 3).is_err());
        assert!(IntegerRange::new(1 << 40, 1 << 20).is_ok());
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let fp = FixedPoint::new(-1.0, 1.0, 2, 1).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        // 0.1 lies between steps 0 and 0.25: the mean of many encodings must approach 0.1.
        let n = 20_000;
        let total: i64 = (0..n).map(|_| fp.encode_one(0.1, &mut rng) as i64).sum();
        let mean = total as f64 * fp.resolution() / n as f64;
        assert!((mean - 0.1).abs() < 0.01, "mean {mean}");
    }

    proptest! {
        #[test]
        fn sums_decode_within_the_bound(
            values in proptest::collection::vec(proptest::collection::vec(-200.0f64..200.0, 8), 1..20),
            bits in 0u32..30,
            seed in any::<u64>(),
        ) {
            let parties = values.len();
            let fp = FixedPoint::new(-100.0, 100.0, bits, parties).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut sum = vec![0u64; 8];
            for v in &values {
                for (s, e) in sum.iter_mut().zip(fp.encode(v, &mut rng)) {
                    *s = s.wrapping_add(e);
                }
            }
            let decoded = fp.decode_sum(&sum, parties).unwrap();
            for (j, d) in decoded.iter().enumerate() {
                let exact: f64 = values.iter().map(|v| v[j].clamp(-100.0, 100.0)).sum();
                prop_assert!((d - exact).abs() <= fp.error_bound(parties, 1) + 1e-9,
                    "element {} decoded {} exact {}", j, d, exact);
            }
        }

        #[test]
        fn wide_sums_are_exact(values in proptest::collection::vec(-(1i128 << 110)..(1i128 << 110), 1..40)) {
            let mut sum = [0u64; WIDE_LIMBS];
            for v in &values {
                for (s, l) in sum.iter_mut().zip(encode_wide(*v)) {
                    *s = s.wrapping_add(l);
                }
            }
            prop_assert_eq!(decode_wide(&sum), values.iter().sum::<i128>());
        }

        #[test]
        fn integers_round_trip(values in proptest::collection::vec(-1000i64..1000, 0..50)) {
            let r = IntegerRange::new(1000, 4).unwrap();
            let enc = r.encode(&values).unwrap();
            prop_assert_eq!(r.decode_sum(&enc), values);
        }
    }
}
