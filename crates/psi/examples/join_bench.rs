//! The private join's exchange in one process, and the additive schemes it could use.
//!
//! ```text
//! cargo run --release -p veil-psi --example join_bench -- [value keys] [group keys] [shared] [values per key] [groups]
//! cargo run --release -p veil-psi --example join_bench -- 100000 100000 50000 8 40
//! ```
//!
//! First the primitives, single-threaded: Paillier (2048-bit N) key generation, an owner's
//! encryption with the fixed-base table, anyone's encryption, a homomorphic addition and a
//! decryption; and, for the choice of scheme, exponential ElGamal over Ristretto255 (an
//! encryption is two scalar multiplications, one of them by the base point) with the discrete
//! logarithm its decryption needs. Then one whole exchange between a group side and a value
//! side (every message through its encoding), checked against a hash join, with the wall time,
//! each side's share of it and the bytes each side sends.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::scalar::Scalar;
use num_bigint::BigUint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_psi::join::{GroupMessage, GroupSide, JoinParams, ValueMessage, ValueSide};
use veil_psi::paillier::SecretKey;
use veil_psi::{KeyPolicy, KeySet, Mode, PsiParams, Session};

fn per_op(total: Duration, n: u32) -> String {
    let us = total.as_secs_f64() * 1e6 / f64::from(n);
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.1} µs") }
}

fn primitives(rng: &mut ChaCha20Rng) {
    println!("primitives (one thread):");
    let t = Instant::now();
    let key = SecretKey::generate(rng);
    println!("  Paillier key generation (two 1024-bit primes, h_s, table): {:?}", t.elapsed());
    let public = key.public().clone();
    let n = 200u32;
    let m = BigUint::from(123_456_789u64);
    let t = Instant::now();
    let owned: Vec<_> = (0..n).map(|_| key.encrypt(&m, rng)).collect();
    println!("  owner's encryption (fixed-base table): {}", per_op(t.elapsed(), n));
    let t = Instant::now();
    let anyone: Vec<_> = (0..n / 10).map(|_| public.encrypt(&m, rng)).collect();
    println!("  anyone's encryption (h_s^α, 1024-bit α): {}", per_op(t.elapsed(), n / 10));
    let t = Instant::now();
    let mut sum = public.zero();
    for c in &owned {
        sum = public.add(&sum, c);
    }
    println!("  homomorphic addition: {}", per_op(t.elapsed(), n));
    let t = Instant::now();
    for c in &anyone {
        assert_eq!(key.decrypt(c), Some(m.clone()));
    }
    println!("  decryption (CRT): {}", per_op(t.elapsed(), n / 10));
    assert_eq!(key.decrypt(&sum), Some(&m * n));

    // Exponential ElGamal over Ristretto255: Enc(m) = (r·G, m·G + r·Y).
    let y = RISTRETTO_BASEPOINT_POINT * Scalar::from(rng.r#gen::<u64>());
    let t = Instant::now();
    for i in 0..n {
        let r = Scalar::from(rng.r#gen::<u64>()) * Scalar::from(u64::from(i) + 3);
        let c1 = RISTRETTO_BASEPOINT_POINT * r;
        let c2 = RISTRETTO_BASEPOINT_POINT * Scalar::from(u64::from(i)) + y * r;
        std::hint::black_box((c1, c2));
    }
    println!("  exponential ElGamal encryption (Ristretto255): {}", per_op(t.elapsed(), n));
    // Its decryption is a discrete logarithm: baby-step giant-step over a range of 2^b takes
    // about 2^(b/2) additions and a table of 2^(b/2) points.
    let t = Instant::now();
    let mut p = RISTRETTO_BASEPOINT_POINT;
    for _ in 0..(1u32 << 16) {
        p += RISTRETTO_BASEPOINT_POINT;
    }
    std::hint::black_box(p.compress());
    let step = t.elapsed() / (1 << 16);
    println!("  a point addition (a baby or giant step): {step:?}");
    println!(
        "  a masked sum (96-bit sum, 40-bit statistical mask: 2^136) would need 2^68 steps, \
         about {:.0e} years; a 32-bit count alone 2^16 steps, {:?}",
        step.as_secs_f64() * 2f64.powi(68) / 3.15e7,
        step * (1 << 16)
    );
}

fn exchange(value_keys: usize, group_keys: usize, shared: usize, segment: u32, groups: u32) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let group_names: Vec<String> =
        (0..group_keys).map(|i| format!("{:016x}", i as u64 * 7919)).collect();
    let group_of: Vec<u32> = (0..group_keys).map(|_| rng.gen_range(0..groups)).collect();
    let value_names: Vec<String> = (0..value_keys)
        .map(|i| if i < shared { group_names[i].clone() } else { format!("v{i:015x}") })
        .collect();
    let vectors: Vec<Vec<u64>> = (0..value_keys)
        .map(|_| (0..segment).map(|_| rng.gen_range(0..1u64 << 40)).collect())
        .collect();
    let mut expected = vec![0u64; (groups * segment) as usize];
    let index: HashMap<&str, u32> =
        group_names.iter().map(String::as_str).zip(group_of.iter().copied()).collect();
    for (k, v) in value_names.iter().zip(&vectors) {
        if let Some(&g) = index.get(k.as_str()) {
            for (j, x) in v.iter().enumerate() {
                let at = (g * segment) as usize + j;
                expected[at] = expected[at].wrapping_add(*x);
            }
        }
    }
    let params =
        JoinParams::new(PsiParams::new(Session([3; 32]), Mode::SizeOnly), segment, groups).unwrap();
    let policy = KeyPolicy::default();
    let start = Instant::now();
    let (mut group_time, mut value_time) = (Duration::ZERO, Duration::ZERO);
    let t = Instant::now();
    let mut group =
        GroupSide::new(&params, KeySet::new(policy, &group_names).unwrap(), group_of, &mut rng)
            .unwrap();
    group_time += t.elapsed();
    let t = Instant::now();
    let mut value =
        ValueSide::new(&params, KeySet::new(policy, &value_names).unwrap(), &vectors, &mut rng)
            .unwrap();
    let prepared = t.elapsed();
    value_time += prepared;
    let (mut group_bytes, mut value_bytes) = (0usize, 0usize);
    loop {
        let mut progress = false;
        let t = Instant::now();
        let out = group.poll_transmit().map(|m| m.encode());
        group_time += t.elapsed();
        if let Some(bytes) = out {
            group_bytes += bytes.len();
            let t = Instant::now();
            value.handle_message(GroupMessage::decode(&bytes).unwrap(), &mut rng).unwrap();
            value_time += t.elapsed();
            progress = true;
        }
        let t = Instant::now();
        let out = value.poll_transmit().map(|m| m.encode());
        value_time += t.elapsed();
        if let Some(bytes) = out {
            value_bytes += bytes.len();
            let t = Instant::now();
            group.handle_message(ValueMessage::decode(&bytes).unwrap(), &mut rng).unwrap();
            group_time += t.elapsed();
            progress = true;
        }
        if !progress {
            break;
        }
    }
    let wall = start.elapsed();
    let (g, v) = (group.output().unwrap(), value.output().unwrap());
    let sum: Vec<u64> = g.share.iter().zip(&v.share).map(|(a, b)| a.wrapping_add(*b)).collect();
    assert_eq!(sum, expected, "the shares add up to the hash join");
    println!(
        "exchange: {value_keys} value keys × {group_keys} group keys, {shared} shared, \
         {segment} values per key, {groups} groups"
    );
    println!(
        "  wall {wall:.2?}: group side {group_time:.2?}, value side {value_time:.2?} (of it {prepared:.2?} key generation and encryption)"
    );
    println!(
        "  sent: group side {:.2} MB, value side {:.2} MB; shares equal the hash join",
        group_bytes as f64 / 1e6,
        value_bytes as f64 / 1e6
    );
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (value_keys, group_keys) = (arg(0, 10_000), arg(1, 10_000));
    let shared = arg(2, value_keys.min(group_keys) / 2);
    let (segment, groups) = (arg(3, 8) as u32, arg(4, 40) as u32);
    println!("rayon threads: {}", rayon::current_num_threads());
    primitives(&mut ChaCha20Rng::seed_from_u64(1));
    exchange(value_keys, group_keys, shared, segment, groups);
}
