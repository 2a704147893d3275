//! Shamir secret sharing over the prime field of order ℓ = 2^252 + 27742317777372353535851937790883648493
//! (the Ed25519 group order), the field of `curve25519_dalek::Scalar`.
//!
//! A share for party `p` is the sharing polynomial evaluated at `x = p + 1`, so evaluation
//! points are distinct and never zero. Any `t` shares determine the secret; `t − 1` shares are
//! independent of it.

use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRngCore;
use zeroize::Zeroize;

use crate::crypto::random_scalar;
use crate::ids::PartyId;

/// The evaluation point of a party.
fn point(p: PartyId) -> Scalar {
    Scalar::from(u64::from(p.0) + 1)
}

/// One share per holder, wiped when dropped.
pub struct Shares(Vec<(PartyId, Scalar)>);

impl std::ops::Deref for Shares {
    type Target = [(PartyId, Scalar)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Shares {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Shares {
    fn drop(&mut self) {
        for (_, share) in &mut self.0 {
            share.zeroize();
        }
    }
}

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shares({} [redacted])", self.0.len())
    }
}

/// Splits `secret` into one share per holder with reconstruction threshold `threshold`.
///
/// `threshold` must be at least 1; holders must be distinct.
pub fn split(
    secret: &Scalar,
    holders: &[PartyId],
    threshold: usize,
    rng: &mut impl CryptoRngCore,
) -> Shares {
    assert!(threshold >= 1, "thresholds are validated to be at least 1");
    let mut coefficients = Vec::with_capacity(threshold);
    coefficients.push(*secret);
    coefficients.extend((1..threshold).map(|_| random_scalar(rng)));
    let shares = holders
        .iter()
        .map(|&h| {
            let x = point(h);
            // Horner's rule from the highest coefficient down.
            let y = coefficients.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
            (h, y)
        })
        .collect();
    coefficients.zeroize();
    Shares(shares)
}

/// Why shares do not reconstruct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconstructError {
    /// Fewer shares than the threshold.
    TooFewShares {
        /// Shares given.
        got: usize,
        /// Threshold.
        needed: usize,
    },
    /// Two shares at the same evaluation point.
    DuplicateHolder(PartyId),
}

/// Interpolates the sharing polynomial at zero from the first `threshold` shares.
pub fn reconstruct(
    shares: &[(PartyId, Scalar)],
    threshold: usize,
) -> Result<Scalar, ReconstructError> {
    if threshold == 0 || shares.len() < threshold {
        return Err(ReconstructError::TooFewShares { got: shares.len(), needed: threshold });
    }
    let used = &shares[..threshold];
    let xs: Vec<Scalar> = used.iter().map(|(p, _)| point(*p)).collect();
    // λ_i = Π_{j≠i} x_j / (x_j − x_i); the denominators are inverted in one batch.
    let mut denominators = Vec::with_capacity(threshold);
    let mut numerators = Vec::with_capacity(threshold);
    for (i, xi) in xs.iter().enumerate() {
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, xj) in xs.iter().enumerate() {
            if i != j {
                if xj == xi {
                    return Err(ReconstructError::DuplicateHolder(used[i].0));
                }
                num *= xj;
                den *= xj - xi;
            }
        }
        numerators.push(num);
        denominators.push(den);
    }
    Scalar::batch_invert(&mut denominators);
    Ok(used
        .iter()
        .zip(numerators.iter().zip(&denominators))
        .map(|((_, y), (n, d))| y * n * d)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_t_shares_reconstruct_and_fewer_do_not(
            n in 1usize..24,
            t_frac in 0.0f64..1.0,
            seed in any::<u64>(),
            pick in any::<u64>(),
        ) {
            let t = 1 + ((n - 1) as f64 * t_frac) as usize;
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let secret = random_scalar(&mut rng);
            let holders: Vec<PartyId> = (0..n as u32).map(|i| PartyId(i * 7 + 3)).collect();
            let mut shares = split(&secret, &holders, t, &mut rng);
            // A pseudo-random subset order.
            let mut order = ChaCha20Rng::seed_from_u64(pick);
            for i in (1..shares.len()).rev() {
                let j = (rand::RngCore::next_u64(&mut order) % (i as u64 + 1)) as usize;
                shares.swap(i, j);
            }
            prop_assert_eq!(reconstruct(&shares[..t], t).unwrap(), secret);
            prop_assert_eq!(reconstruct(&shares, t).unwrap(), secret);
            prop_assert!(reconstruct(&shares[..t - 1], t).is_err());
            if t >= 2 {
                // Interpolating t − 1 shares as if they were enough gives an unrelated value.
                prop_assert_ne!(reconstruct(&shares[..t - 1], t - 1).unwrap(), secret);
            }
        }
    }

    #[test]
    fn duplicate_holders_are_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let s = random_scalar(&mut rng);
        let shares = split(&s, &[PartyId(1), PartyId(2)], 2, &mut rng);
        let dup = vec![shares[0], shares[0]];
        assert_eq!(reconstruct(&dup, 2), Err(ReconstructError::DuplicateHolder(PartyId(1))));
    }
}
