//! Paillier encryption (2048-bit modulus), additively homomorphic, with the
//! Damgård–Jurik–Nielsen randomiser, for the join's per-key payloads.
//!
//! A ciphertext of `m` is `(1 + N)^m · h_s^α mod N²`, where `h_s = h^N mod N²` is part of the
//! public key (`h = −x² mod N` for a random unit `x`) and `α` is uniform below `2^⌈k/2⌉`,
//! k the modulus's bit length (Damgård, Jurik and Nielsen, "A generalization of Paillier's
//! public-key system with applications to electronic voting", IJIS 2010, §4.2). Security
//! rests on decisional composite residuosity, as for Paillier's scheme. The short randomiser
//! with a fixed base is what makes the owner's encryptions cheap: with tables of the base's
//! powers modulo p² and q² an encryption is ⌈1024/8⌉ = 128 multiplications modulo each
//! (a quarter of one modulo N² each) instead of a 2048-bit exponentiation modulo N² (see
//! `examples/join_bench.rs`).
//!
//! Adding ciphertexts multiplies them modulo N²; decryption uses the factors (CRT).
//!
//! Keys are generated fresh for each job from the caller's CSPRNG; primes are drawn uniformly
//! among 1024-bit odd numbers with the top two bits set and kept after trial division and
//! 24 Miller–Rabin rounds with random bases (an error below 2^-128 for random candidates).

use num_bigint::BigUint;
use num_traits::{One, Zero};
use rand_core::CryptoRngCore;
use rayon::prelude::*;

/// Bits of the modulus N.
pub const MODULUS_BITS: usize = 2048;
/// Bytes of an encoded ciphertext (an element below N²).
pub const CIPHERTEXT_BYTES: usize = 2 * MODULUS_BITS / 8;
/// Bytes of an encoded public key: N, then h_s.
pub const PUBLIC_KEY_BYTES: usize = MODULUS_BITS / 8 + CIPHERTEXT_BYTES;
/// Bits of the randomiser exponent α (⌈k/2⌉).
const RANDOMISER_BITS: usize = MODULUS_BITS / 2;
/// Window of the fixed-base table, in bits.
const WINDOW: usize = 8;
const MILLER_RABIN_ROUNDS: usize = 24;

/// Why bytes are not a public key or a ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaillierError {
    /// The bytes have the wrong length.
    #[error("{what} is {got} bytes, expected {expected}")]
    Length {
        /// What was being read.
        what: &'static str,
        /// The length given.
        got: usize,
        /// The length expected.
        expected: usize,
    },
    /// The value is outside its domain.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A public key: the modulus N and the randomiser base h_s.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    n: BigUint,
    n2: BigUint,
    hs: BigUint,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("bits", &self.n.bits()).finish_non_exhaustive()
    }
}

/// A ciphertext: an element below N².
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext(BigUint);

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ciphertext(…)")
    }
}

fn fixed_bytes(v: &BigUint, len: usize) -> Vec<u8> {
    let bytes = v.to_bytes_be();
    let mut out = vec![0u8; len - bytes.len().min(len)];
    out.extend_from_slice(&bytes[bytes.len().saturating_sub(len)..]);
    out
}

fn random_bits(rng: &mut impl CryptoRngCore, bits: usize) -> BigUint {
    let mut bytes = vec![0u8; bits.div_ceil(8)];
    rng.fill_bytes(&mut bytes);
    let extra = bytes.len() * 8 - bits;
    bytes[0] &= 0xff >> extra;
    BigUint::from_bytes_be(&bytes)
}

/// A uniform value below `bound` (rejection sampling).
fn random_below(rng: &mut impl CryptoRngCore, bound: &BigUint) -> BigUint {
    let bits = bound.bits() as usize;
    loop {
        let v = random_bits(rng, bits);
        if &v < bound {
            return v;
        }
    }
}

impl PublicKey {
    /// Reads a public key (N ‖ h_s, big-endian, fixed width), checking N's size and parity and
    /// that h_s is a unit below N².
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PaillierError> {
        if bytes.len() != PUBLIC_KEY_BYTES {
            return Err(PaillierError::Length {
                what: "a public key",
                got: bytes.len(),
                expected: PUBLIC_KEY_BYTES,
            });
        }
        let (n, hs) = bytes.split_at(MODULUS_BITS / 8);
        let n = BigUint::from_bytes_be(n);
        if n.bits() as usize != MODULUS_BITS || !n.bit(0) {
            return Err(PaillierError::Invalid("modulus"));
        }
        let n2 = &n * &n;
        let hs = BigUint::from_bytes_be(hs);
        if hs <= BigUint::one() || hs >= n2 || !num_integer::Integer::gcd(&hs, &n).is_one() {
            return Err(PaillierError::Invalid("randomiser base"));
        }
        Ok(Self { n, n2, hs })
    }

    /// The encoding read by [`Self::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = fixed_bytes(&self.n, MODULUS_BITS / 8);
        out.extend_from_slice(&fixed_bytes(&self.hs, CIPHERTEXT_BYTES));
        out
    }

    /// Plaintexts are integers below N.
    pub fn modulus(&self) -> &BigUint {
        &self.n
    }

    /// Encrypts `m` (reduced modulo N) with a fresh randomiser: one exponentiation modulo N².
    pub fn encrypt(&self, m: &BigUint, rng: &mut impl CryptoRngCore) -> Ciphertext {
        let alpha = random_bits(rng, RANDOMISER_BITS);
        let r = self.hs.modpow(&alpha, &self.n2);
        Ciphertext((self.message_part(m) * r) % &self.n2)
    }

    /// A plaintext drawn uniformly below N.
    pub fn random_plaintext(&self, rng: &mut impl CryptoRngCore) -> BigUint {
        random_below(rng, &self.n)
    }

    /// Encrypts many plaintexts in parallel, each with its own randomiser drawn in order from
    /// `rng`.
    pub fn encrypt_all(&self, ms: &[BigUint], rng: &mut impl CryptoRngCore) -> Vec<Ciphertext> {
        let alphas: Vec<BigUint> = ms.iter().map(|_| random_bits(rng, RANDOMISER_BITS)).collect();
        ms.par_iter()
            .zip(alphas.par_iter())
            .map(|(m, alpha)| {
                let r = self.hs.modpow(alpha, &self.n2);
                Ciphertext((self.message_part(m) * r) % &self.n2)
            })
            .collect()
    }

    /// `(1 + N)^m = 1 + m·N mod N²`.
    fn message_part(&self, m: &BigUint) -> BigUint {
        (BigUint::one() + (m % &self.n) * &self.n) % &self.n2
    }

    /// The encryption of the sum of the two plaintexts (modulo N).
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        Ciphertext((&a.0 * &b.0) % &self.n2)
    }

    /// Reads a ciphertext under this key: fixed width, a nonzero value below N². (Whether it
    /// is a unit, as every encryption is, [`SecretKey::decrypt`] checks.)
    pub fn ciphertext(&self, bytes: &[u8]) -> Result<Ciphertext, PaillierError> {
        if bytes.len() != CIPHERTEXT_BYTES {
            return Err(PaillierError::Length {
                what: "a ciphertext",
                got: bytes.len(),
                expected: CIPHERTEXT_BYTES,
            });
        }
        let c = BigUint::from_bytes_be(bytes);
        if c.is_zero() || c >= self.n2 {
            return Err(PaillierError::Invalid("ciphertext"));
        }
        Ok(Ciphertext(c))
    }

    /// The encryption of zero with randomiser exponent zero: the identity of [`Self::add`].
    pub fn zero(&self) -> Ciphertext {
        Ciphertext(BigUint::one())
    }
}

impl Ciphertext {
    /// The fixed-width encoding ([`CIPHERTEXT_BYTES`], big-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        fixed_bytes(&self.0, CIPHERTEXT_BYTES)
    }
}

/// A key pair, with the table of the randomiser base's powers that makes the owner's
/// encryptions cheap.
#[derive(Clone)]
pub struct SecretKey {
    public: PublicKey,
    p: BigUint,
    q: BigUint,
    /// p², q², (p−1)·q⁻¹-style CRT constants for decryption.
    p2: BigUint,
    q2: BigUint,
    hp: BigUint,
    hq: BigUint,
    p_inv_q: BigUint,
    /// (p²)⁻¹ mod q², to recombine a randomiser computed modulo p² and q².
    p2_inv_q2: BigUint,
    /// `table_p[i][j] = h_s^(j · 2^(WINDOW·i)) mod p²`, and the same modulo q².
    table_p: Vec<Vec<BigUint>>,
    table_q: Vec<Vec<BigUint>>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("public", &self.public).finish_non_exhaustive()
    }
}

/// Small odd primes, for trial division.
fn small_primes() -> Vec<u32> {
    let limit = 2000usize;
    let mut sieve = vec![true; limit];
    let mut primes = Vec::new();
    for i in 3..limit {
        if sieve[i] {
            if i % 2 == 1 {
                primes.push(i as u32);
            }
            let mut j = i * i;
            while j < limit {
                sieve[j] = false;
                j += i;
            }
        }
    }
    primes
}

fn is_probable_prime(n: &BigUint, rng: &mut impl CryptoRngCore) -> bool {
    let one = BigUint::one();
    let two = &one + &one;
    let n_minus_1 = n - &one;
    let s = n_minus_1.trailing_zeros().unwrap_or(0);
    let d = &n_minus_1 >> s;
    let span = n - 3u32;
    'rounds: for _ in 0..MILLER_RABIN_ROUNDS {
        let a = random_below(rng, &span) + &two;
        let mut x = a.modpow(&d, n);
        if x == one || x == n_minus_1 {
            continue;
        }
        for _ in 1..s {
            x = x.modpow(&two, n);
            if x == n_minus_1 {
                continue 'rounds;
            }
        }
        return false;
    }
    true
}

/// A uniform prime of `bits` bits with its top two bits set.
fn random_prime(rng: &mut impl CryptoRngCore, bits: usize, small: &[u32]) -> BigUint {
    loop {
        let mut c = random_bits(rng, bits);
        c.set_bit(bits as u64 - 1, true);
        c.set_bit(bits as u64 - 2, true);
        c.set_bit(0, true);
        if small.iter().any(|&p| (&c % p).is_zero()) {
            continue;
        }
        if is_probable_prime(&c, rng) {
            return c;
        }
    }
}

impl SecretKey {
    /// A fresh key pair from `rng` (about a second on one core: two prime searches, the
    /// randomiser base and its table).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let small = small_primes();
        let half = MODULUS_BITS / 2;
        let p = random_prime(rng, half, &small);
        let q = loop {
            let q = random_prime(rng, half, &small);
            if q != p {
                break q;
            }
        };
        let n = &p * &q;
        let n2 = &n * &n;
        // h = −x² mod N for a random unit x; h_s = h^N mod N².
        let x = loop {
            let x = random_below(rng, &n);
            if x > BigUint::one() && num_integer::Integer::gcd(&x, &n).is_one() {
                break x;
            }
        };
        let h = &n - (&x * &x) % &n;
        let hs = h.modpow(&n, &n2);
        let public = PublicKey { n, n2, hs };
        let one = BigUint::one();
        // With g = 1 + N: L_p(g^(p−1) mod p²) = (p−1)·q mod p, and likewise for q.
        let hp = ((&p - &one) * &q % &p).modinv(&p).expect("p is prime and does not divide (p−1)q");
        let hq = ((&q - &one) * &p % &q).modinv(&q).expect("q is prime and does not divide (q−1)p");
        let p_inv_q = p.modinv(&q).expect("distinct primes are coprime");
        let (p2, q2) = (&p * &p, &q * &q);
        let p2_inv_q2 = p2.modinv(&q2).expect("distinct primes' squares are coprime");
        let table_p = fixed_base_table(&(&public.hs % &p2), &p2);
        let table_q = fixed_base_table(&(&public.hs % &q2), &q2);
        Self { p2, q2, hp, hq, p_inv_q, p2_inv_q2, p, q, public, table_p, table_q }
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Encrypts `m` with a fresh randomiser from the owner's tables: 128 multiplications
    /// modulo p² and as many modulo q².
    pub fn encrypt(&self, m: &BigUint, rng: &mut impl CryptoRngCore) -> Ciphertext {
        let alpha = random_bits(rng, RANDOMISER_BITS);
        let r = self.fixed_base_pow(&alpha);
        Ciphertext((self.public.message_part(m) * r) % &self.public.n2)
    }

    /// Encrypts many plaintexts in parallel, each with its own randomiser (drawn in order from
    /// `rng`, so the result depends on `rng` alone).
    pub fn encrypt_all(&self, ms: &[BigUint], rng: &mut impl CryptoRngCore) -> Vec<Ciphertext> {
        let alphas: Vec<BigUint> = ms.iter().map(|_| random_bits(rng, RANDOMISER_BITS)).collect();
        ms.par_iter()
            .zip(alphas.par_iter())
            .map(|(m, alpha)| {
                let r = self.fixed_base_pow(alpha);
                Ciphertext((self.public.message_part(m) * r) % &self.public.n2)
            })
            .collect()
    }

    /// `h_s^α mod N²`, from the tables modulo p² and q² (each multiplication a quarter of one
    /// modulo N²), recombined by the CRT.
    fn fixed_base_pow(&self, alpha: &BigUint) -> BigUint {
        let digits = alpha.to_bytes_le();
        let pow = |table: &[Vec<BigUint>], modulus: &BigUint| {
            let mut acc = BigUint::one();
            for (i, &digit) in digits.iter().enumerate() {
                if digit != 0 {
                    acc = (acc * &table[i][digit as usize]) % modulus;
                }
            }
            acc
        };
        let (rp, rq) = (pow(&self.table_p, &self.p2), pow(&self.table_q, &self.q2));
        // r = r_p + p² · ((r_q − r_p) · (p²)⁻¹ mod q²)
        let diff = (&rq + &self.q2 - (&rp % &self.q2)) % &self.q2;
        rp + &self.p2 * ((diff * &self.p2_inv_q2) % &self.q2)
    }

    /// Decrypts `c`, modulo each prime's square, and recombines. `None` for an element that is
    /// not a unit modulo N² (no encryption is one; [`PublicKey::ciphertext`] refuses them).
    pub fn decrypt(&self, c: &Ciphertext) -> Option<BigUint> {
        let one = BigUint::one();
        let half = |prime: &BigUint, square: &BigUint, h: &BigUint| {
            let u = c.0.modpow(&(prime - &one), square);
            // A unit's u is 1 mod p; anything else is not a ciphertext.
            if (&u % prime) != one {
                return None;
            }
            let l = (u - &one) / prime;
            Some((l * h) % prime)
        };
        let mp = half(&self.p, &self.p2, &self.hp)?;
        let mq = half(&self.q, &self.q2, &self.hq)?;
        // m = m_p + p · ((m_q − m_p) · p⁻¹ mod q)
        let diff = (&mq + &self.q - (&mp % &self.q)) % &self.q;
        Some(mp + &self.p * ((diff * &self.p_inv_q) % &self.q))
    }
}

fn fixed_base_table(base: &BigUint, modulus: &BigUint) -> Vec<Vec<BigUint>> {
    let windows = RANDOMISER_BITS.div_ceil(WINDOW);
    // The base of each window: base^(2^(WINDOW·i)).
    let mut bases = Vec::with_capacity(windows);
    let mut b = base.clone();
    for _ in 0..windows {
        bases.push(b.clone());
        for _ in 0..WINDOW {
            b = (&b * &b) % modulus;
        }
    }
    bases
        .par_iter()
        .map(|b| {
            let mut row = Vec::with_capacity(1 << WINDOW);
            row.push(BigUint::one());
            for j in 1..(1usize << WINDOW) {
                let next = (&row[j - 1] * b) % modulus;
                row.push(next);
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn sums_of_ciphertexts_decrypt_to_sums_of_plaintexts() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let key = SecretKey::generate(&mut rng);
        let public = PublicKey::from_bytes(&key.public().to_bytes()).unwrap();
        assert_eq!(&public, key.public());
        assert_eq!(key.public().modulus().bits() as usize, MODULUS_BITS);
        let values: Vec<BigUint> =
            [0u64, 1, 41, u64::MAX].iter().map(|&v| BigUint::from(v)).collect();
        let owner = key.encrypt_all(&values, &mut rng);
        let mut sum = public.zero();
        for (c, v) in owner.iter().zip(&values) {
            assert_eq!(key.decrypt(c).as_ref(), Some(v));
            let c = public.ciphertext(&c.to_bytes()).unwrap();
            sum = public.add(&sum, &c);
        }
        let by_anyone = public.encrypt(&BigUint::from(1000u32), &mut rng);
        sum = public.add(&sum, &by_anyone);
        let expected: BigUint = values.iter().sum::<BigUint>() + 1000u32;
        assert_eq!(key.decrypt(&sum), Some(expected));
        // Plaintexts live modulo N.
        let n_minus_1 = public.modulus() - 1u32;
        let wrapped =
            public.add(&key.encrypt(&n_minus_1, &mut rng), &key.encrypt(&2u32.into(), &mut rng));
        assert_eq!(key.decrypt(&wrapped), Some(BigUint::one()));
        // The same plaintext encrypts differently each time.
        assert_ne!(key.encrypt(&values[1], &mut rng), key.encrypt(&values[1], &mut rng));
    }

    #[test]
    fn malformed_keys_and_ciphertexts_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let key = SecretKey::generate(&mut rng);
        let bytes = key.public().to_bytes();
        assert!(PublicKey::from_bytes(&bytes[1..]).is_err());
        let mut even = bytes.clone();
        even[MODULUS_BITS / 8 - 1] &= 0xfe;
        assert_eq!(PublicKey::from_bytes(&even), Err(PaillierError::Invalid("modulus")));
        let mut small = bytes.clone();
        small[0] = 0;
        assert_eq!(PublicKey::from_bytes(&small), Err(PaillierError::Invalid("modulus")));
        let mut one = bytes.clone();
        one[MODULUS_BITS / 8..].fill(0);
        *one.last_mut().unwrap() = 1;
        assert_eq!(PublicKey::from_bytes(&one), Err(PaillierError::Invalid("randomiser base")));
        let public = key.public();
        assert!(public.ciphertext(&[0u8; CIPHERTEXT_BYTES]).is_err());
        assert!(public.ciphertext(&[0xffu8; CIPHERTEXT_BYTES]).is_err());
        assert!(public.ciphertext(&[1u8; 10]).is_err());
        // A multiple of a factor of N is no ciphertext: not decrypted (it would make the
        // decryption's arithmetic underflow).
        assert_eq!(key.decrypt(&Ciphertext(key.p.clone())), None);
        assert_eq!(key.decrypt(&Ciphertext(&key.q * 7u32)), None);
    }
}
