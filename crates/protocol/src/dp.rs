//! Exact samplers for differential-privacy noise, with integer arithmetic only.
//!
//! The discrete Gaussian and discrete Laplace samplers follow Canonne, Kamath and Steinke,
//! "The Discrete Gaussian for Differential Privacy" (NeurIPS 2020), Algorithms 1–3: Bernoulli
//! trials with rational probabilities built from uniform integers, so no floating-point value
//! ever decides an output. Randomness comes in as an argument; [`NoiseRng`] is a fast buffered
//! AES-128-CTR generator for it, seeded from the operating system by the caller.

use aes::Aes128;
use cipher::{KeyIvInit, StreamCipher};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroize;

type Ctr = ctr::Ctr128BE<Aes128>;

/// Words generated per refill (4 KiB of keystream).
const BUFFER: usize = 512;

/// A cryptographically secure generator: the AES-128-CTR keystream of a 32-byte seed, drawn in
/// 4 KiB blocks.
pub struct NoiseRng {
    cipher: Ctr,
    buffer: [u64; BUFFER],
    next: usize,
}

impl std::fmt::Debug for NoiseRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseRng([redacted])")
    }
}

impl Drop for NoiseRng {
    fn drop(&mut self) {
        self.buffer.zeroize();
    }
}

impl NoiseRng {
    /// A generator from a uniformly random seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let cipher = Ctr::new(seed[..16].into(), seed[16..].into());
        Self { cipher, buffer: [0; BUFFER], next: BUFFER }
    }

    fn refill(&mut self) {
        let mut bytes = [0u8; BUFFER * 8];
        self.cipher.apply_keystream(&mut bytes);
        for (w, c) in self.buffer.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().expect("chunks of 8 bytes"));
        }
        bytes.zeroize();
        self.next = 0;
    }
}

impl RngCore for NoiseRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        if self.next == BUFFER {
            self.refill();
        }
        let w = self.buffer[self.next];
        self.next += 1;
        w
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for NoiseRng {}

/// Uniform in `0..n` (n ≥ 1), by rejection: exact.
fn uniform_below(rng: &mut impl RngCore, n: u128) -> u128 {
    debug_assert!(n > 0);
    if n <= u128::from(u64::MAX) {
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX - n + 1) % n;
        loop {
            let x = rng.next_u64();
            if x <= zone {
                return u128::from(x % n);
            }
        }
    }
    let zone = u128::MAX - (u128::MAX - n + 1) % n;
    loop {
        let x = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        if x <= zone {
            return x % n;
        }
    }
}

/// Bernoulli(num / den), with num ≤ den, den ≥ 1.
fn bernoulli(rng: &mut impl RngCore, num: u128, den: u128) -> bool {
    uniform_below(rng, den) < num
}

/// Bernoulli(exp(−num/den)) for num/den ∈ [0, 1] (Canonne, Kamath, Steinke 2020, Algorithm 1).
fn bernoulli_exp_unit(rng: &mut impl RngCore, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    loop {
        // Bernoulli(γ / k) = Bernoulli(num / (den · k)); den · k cannot overflow in practice
        // (k grows by one with probability γ/k, so it stays tiny).
        let Some(d) = den.checked_mul(k) else { return k % 2 == 1 };
        if !bernoulli(rng, num, d) {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// Bernoulli(exp(−num/den)) for any num/den ≥ 0.
pub fn bernoulli_exp(rng: &mut impl RngCore, num: u128, den: u128) -> bool {
    let mut rest = num;
    while rest > den {
        if !bernoulli_exp_unit(rng, 1, 1) {
            return false;
        }
        rest -= den;
    }
    bernoulli_exp_unit(rng, rest, den)
}

/// A sample of the discrete Laplace distribution with scale `t` ≥ 1:
/// P(x) ∝ exp(−|x|/t) over the integers (Canonne, Kamath, Steinke 2020, Algorithm 2).
pub fn discrete_laplace(rng: &mut impl RngCore, t: u64) -> i64 {
    let t128 = u128::from(t.max(1));
    loop {
        let u = uniform_below(rng, t128);
        if !bernoulli_exp(rng, u, t128) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_unit(rng, 1, 1) {
            v += 1;
        }
        let x = u + t128 * v;
        let negative = bernoulli(rng, 1, 2);
        if negative && x == 0 {
            continue;
        }
        // |x| beyond i64 has probability below exp(−2^62 / t): treat as a rejection.
        let Ok(x) = i64::try_from(x) else { continue };
        return if negative { -x } else { x };
    }
}

/// ε of ρ-zero-concentrated DP at δ: ε = ρ + 2·√(ρ·ln(1/δ)) (Bun and Steinke, "Concentrated
/// Differential Privacy", TCC 2016, Proposition 1.3).
pub fn zcdp_epsilon(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

/// The largest variance [`discrete_gaussian`] accepts (2^50).
pub const MAX_VARIANCE: u64 = 1 << 50;

/// A sample of the discrete Gaussian distribution with variance parameter `sigma2` (an integer,
/// 1 ≤ σ² ≤ 2^50): P(x) ∝ exp(−x²/(2σ²)) over the integers (Canonne, Kamath, Steinke 2020,
/// Algorithm 3).
pub fn discrete_gaussian(rng: &mut impl RngCore, sigma2: u64) -> i64 {
    let sigma2 = sigma2.clamp(1, MAX_VARIANCE);
    let t = sigma2.isqrt() + 1;
    let (s, t128) = (u128::from(sigma2), u128::from(t));
    let den = 2 * s * t128 * t128;
    loop {
        let y = discrete_laplace(rng, t);
        // γ = (|y| − σ²/t)² / (2σ²) = (|y|·t − σ²)² / (2σ²t²).
        let diff = (u128::from(y.unsigned_abs()) * t128).abs_diff(s);
        let Some(num) = diff.checked_mul(diff) else {
            // |y| beyond ~2^64/t: γ is astronomically large, acceptance probability ~0.
            continue;
        };
        if bernoulli_exp(rng, num, den) {
            return y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pearson's χ² of `n` samples against the exact pmf ∝ weight(x), with the tails pooled
    /// into the outermost cells.
    fn chi_square(samples: &[i64], weight: impl Fn(i64) -> f64, range: i64) -> (f64, usize) {
        let cells = (2 * range + 1) as usize;
        let mut observed = vec![0f64; cells];
        for &x in samples {
            observed[(x.clamp(-range, range) + range) as usize] += 1.0;
        }
        let total: f64 = (-10 * range..=10 * range).map(&weight).sum();
        let mut expected = vec![0f64; cells];
        for x in -10 * range..=10 * range {
            expected[(x.clamp(-range, range) + range) as usize] +=
                weight(x) / total * samples.len() as f64;
        }
        let stat = observed.iter().zip(&expected).map(|(o, e)| (o - e) * (o - e) / e).sum();
        (stat, cells - 1)
    }

    /// Critical value of χ² at p = 0.001 (Wilson–Hilferty approximation).
    fn critical(df: usize) -> f64 {
        let k = df as f64;
        let z = 3.090_232; // the standard normal's 0.999 quantile
        k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
    }

    #[test]
    fn discrete_gaussian_matches_its_distribution() {
        let mut rng = NoiseRng::from_seed([7; 32]);
        for sigma2 in [1u64, 4, 30, 1000] {
            let samples: Vec<i64> =
                (0..100_000).map(|_| discrete_gaussian(&mut rng, sigma2)).collect();
            let s2 = sigma2 as f64;
            let range = (3.0 * s2.sqrt()).ceil() as i64;
            let (stat, df) = chi_square(&samples, |x| (-(x * x) as f64 / (2.0 * s2)).exp(), range);
            assert!(
                stat < critical(df),
                "σ² = {sigma2}: χ² = {stat:.1} with {df} degrees of freedom"
            );
            let mean = samples.iter().sum::<i64>() as f64 / samples.len() as f64;
            assert!(
                mean.abs() < 5.0 * (s2 / samples.len() as f64).sqrt(),
                "σ² = {sigma2}: mean {mean}"
            );
        }
    }

    #[test]
    fn discrete_laplace_matches_its_distribution() {
        let mut rng = NoiseRng::from_seed([8; 32]);
        for t in [1u64, 3, 20] {
            let samples: Vec<i64> = (0..100_000).map(|_| discrete_laplace(&mut rng, t)).collect();
            let range = 4 * t as i64;
            let (stat, df) = chi_square(&samples, |x| (-(x.abs() as f64) / t as f64).exp(), range);
            assert!(stat < critical(df), "t = {t}: χ² = {stat:.1} with {df} degrees of freedom");
        }
    }

    #[test]
    fn bernoulli_exp_has_the_right_rate() {
        let mut rng = NoiseRng::from_seed([9; 32]);
        for (num, den) in [(0u128, 1u128), (1, 2), (1, 1), (5, 2), (7, 3)] {
            let n = 200_000;
            let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, num, den)).count() as f64;
            let p = (-(num as f64) / den as f64).exp();
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((hits / n as f64 - p).abs() <= 5.0 * sd + 1e-12, "exp(-{num}/{den})");
        }
    }

    #[test]
    fn huge_variances_stay_exact_and_centred() {
        let mut rng = NoiseRng::from_seed([10; 32]);
        let sigma2 = 1u64 << 44;
        let samples: Vec<i64> = (0..20_000).map(|_| discrete_gaussian(&mut rng, sigma2)).collect();
        let var =
            samples.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / samples.len() as f64;
        assert!((var / sigma2 as f64 - 1.0).abs() < 0.05, "variance ratio {}", var / sigma2 as f64);
    }
}
