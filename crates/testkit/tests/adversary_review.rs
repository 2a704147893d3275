//! A second look at "one party's input stays hidden" (docs/THREAT_MODEL.md §1): a malicious
//! coordinator with up to `c` colluding parties must unmask no honest sum but the honest part of
//! one survivor set that a quorum signed. Each test here is an attack that once got through, or
//! an attempt that never did:
//!
//! - `a_colluder_advertising_an_equivalent_mask_key_*`: the colluder shows an honest party a
//!   mask key that is another honest party's key with the (ignored) top bit set. X25519 gives the
//!   same shared secret; while the pair-mask seed named neither party, the two pairwise masks
//!   were one PRG stream with opposite signs and cancelled inside the victim's masked input, so
//!   the adversary unmasked one party of three, or every honest survivor but one. The seed now
//!   names the pair. Checked numerically from the transcript: the adversary reconstructs the
//!   self masks from the revealed shares and subtracts them.
//! - `honest_members_that_refuse_the_set_would_cut_a_sparse_round_for_two_colluders`: honest
//!   members of the survivor set that did not mask with some listed neighbours refuse to sign,
//!   but their masked inputs are in; with `c = 2` in a sparse graph they separated a small arc.
//!   Sparse graphs now tolerate one colluder; the same layout with one unmasks nothing.
//! - `a_round_with_one_honest_party_is_refused`: `n = c + 1` used to validate.
//! - Regression coverage: the connectivity check against brute force, and a control that the
//!   adversary's arithmetic (Shamir at zero, HKDF, the PRG) recovers exactly the agreed sum.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use veil_protocol::message::{AdvertiseKeys, EncryptedShare};
use veil_protocol::prg::{Sign, apply_mask};
use veil_protocol::{
    CoordinatorMessage, Party, PartyId, PartyMessage, PartyStatus, RoundConfig, RoundParams,
};
use veil_testkit::adversary::{Adversary, Knowledge, Strategy};
use veil_testkit::{Consortium, session};

const LEN: usize = 4;

fn ids(n: usize) -> Vec<PartyId> {
    (0..n as u32).map(PartyId).collect()
}

/// What the coordinator's driver chooses: all pairs up to 16 parties, sparse above.
fn services_config(n: usize, s: u64) -> RoundConfig {
    if n <= 16 {
        RoundConfig::all_pairs(session(s), ids(n), LEN)
    } else {
        RoundConfig::sparse(session(s), ids(n), LEN)
    }
}

fn neighbours(params: &RoundParams, p: PartyId) -> BTreeSet<PartyId> {
    let i = params.index_of(p).expect("a party of the round");
    params.neighbours_of(i).iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// The adversary's arithmetic, from public definitions only (docs/PROTOCOL.md, "Cryptography").
// ---------------------------------------------------------------------------------------------

/// Arithmetic modulo ℓ = 2^252 + 27742317777372353535851937790883648493, the field Shamir
/// shares live in, on little-endian 64-bit limbs. Slow and simple: enough to interpolate a few
/// dozen secrets.
mod field {
    pub(super) type Elem = [u64; 4];

    const ELL: Elem = [0x5812_631a_5cf5_d3ed, 0x14de_f9de_a2f7_9cd6, 0, 0x1000_0000_0000_0000];

    fn ge(a: &Elem, b: &Elem) -> bool {
        for i in (0..4).rev() {
            if a[i] != b[i] {
                return a[i] > b[i];
            }
        }
        true
    }

    /// a + b without reduction; both below 2^254 here, so nothing carries out.
    fn add(a: &Elem, b: &Elem) -> Elem {
        let mut r = [0u64; 4];
        let mut carry = 0u128;
        for i in 0..4 {
            let s = u128::from(a[i]) + u128::from(b[i]) + carry;
            r[i] = s as u64;
            carry = s >> 64;
        }
        r
    }

    /// a − b for a ≥ b.
    fn sub(a: &Elem, b: &Elem) -> Elem {
        let mut r = [0u64; 4];
        let mut borrow = false;
        for i in 0..4 {
            let (d, b1) = a[i].overflowing_sub(b[i]);
            let (d, b2) = d.overflowing_sub(u64::from(borrow));
            r[i] = d;
            borrow = b1 || b2;
        }
        r
    }

    fn add_mod(a: &Elem, b: &Elem) -> Elem {
        let s = add(a, b);
        if ge(&s, &ELL) { sub(&s, &ELL) } else { s }
    }

    fn sub_mod(a: &Elem, b: &Elem) -> Elem {
        if ge(a, b) { sub(a, b) } else { sub(&add(a, &ELL), b) }
    }

    fn mul_mod(a: &Elem, b: &Elem) -> Elem {
        let mut r = [0u64; 4];
        for i in (0..256).rev() {
            r = add_mod(&r, &r);
            if (b[i / 64] >> (i % 64)) & 1 == 1 {
                r = add_mod(&r, a);
            }
        }
        r
    }

    fn inverse(a: &Elem) -> Elem {
        let e = sub(&ELL, &[2, 0, 0, 0]);
        let mut r = [1, 0, 0, 0];
        for i in (0..256).rev() {
            r = mul_mod(&r, &r);
            if (e[i / 64] >> (i % 64)) & 1 == 1 {
                r = mul_mod(&r, a);
            }
        }
        r
    }

    pub(super) fn from_bytes(b: &[u8; 32]) -> Elem {
        let mut r = [0u64; 4];
        for (i, limb) in r.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8 * i..8 * i + 8]);
            *limb = u64::from_le_bytes(w);
        }
        r
    }

    pub(super) fn to_bytes(a: &Elem) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, limb) in a.iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&limb.to_le_bytes());
        }
        b
    }

    /// The sharing polynomial at zero from shares `(holder, value)`, holder p evaluated at p + 1:
    /// Σ y_i · num_i / den_i over one common denominator, so one inversion per secret.
    pub(super) fn interpolate_at_zero(shares: &[(u32, Elem)]) -> Elem {
        let xs: Vec<Elem> = shares.iter().map(|(p, _)| [u64::from(*p) + 1, 0, 0, 0]).collect();
        let mut nums = Vec::with_capacity(xs.len());
        let mut dens = Vec::with_capacity(xs.len());
        for i in 0..xs.len() {
            let mut num = [1, 0, 0, 0];
            let mut den = [1, 0, 0, 0];
            for (j, xj) in xs.iter().enumerate() {
                if i != j {
                    num = mul_mod(&num, xj);
                    den = mul_mod(&den, &sub_mod(xj, &xs[i]));
                }
            }
            nums.push(num);
            dens.push(den);
        }
        let mut numerator = [0u64; 4];
        let mut denominator = [1, 0, 0, 0];
        for (i, (_, y)) in shares.iter().enumerate() {
            let mut term = mul_mod(y, &nums[i]);
            for (j, den) in dens.iter().enumerate() {
                if i != j {
                    term = mul_mod(&term, den);
                }
            }
            numerator = add_mod(&numerator, &term);
            denominator = mul_mod(&denominator, &dens[i]);
        }
        mul_mod(&numerator, &inverse(&denominator))
    }
}

fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for m in message {
        inner.update(m);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// HKDF-SHA-256(salt = session, ikm = b, info = `veil/secagg/v2/self-mask` ‖ digest), 32 bytes.
fn self_mask_seed(b: &[u8; 32], params: &RoundParams) -> [u8; 32] {
    let prk = hmac_sha256(&params.session().0, &[b]);
    hmac_sha256(&prk, &[b"veil/secagg/v2/self-mask", &params.digest(), &[1]])
}

// ---------------------------------------------------------------------------------------------
// A round driven message by message, with one forged key advertisement per victim.
// ---------------------------------------------------------------------------------------------

/// Everything the coordinator and its colluder saw in one round, and the true inputs to compare.
struct Transcript {
    params: Arc<RoundParams>,
    inputs: BTreeMap<PartyId, Vec<u64>>,
    masked: BTreeMap<PartyId, Vec<u64>>,
    /// Owner → every self-mask share revealed of it, `(holder, value)`, colluder's included.
    self_mask_shares: BTreeMap<PartyId, Vec<(PartyId, [u8; 32])>>,
    status: BTreeMap<PartyId, PartyStatus>,
    survivors: Vec<PartyId>,
    /// The honest survivors but the excluded one.
    rest: BTreeSet<PartyId>,
}

impl Transcript {
    /// What the adversary computes for `set`: Σ (y_u − PRG(b_u)), with every b_u interpolated
    /// from the first t self-mask shares revealed of it. `None` if it lacks a masked input or
    /// t shares.
    fn unmask(&self, set: &BTreeSet<PartyId>) -> Option<Vec<u64>> {
        let t = self.params.threshold();
        let mut acc = vec![0u64; self.params.vector_len()];
        for p in set {
            let y = self.masked.get(p)?;
            let shares = self.self_mask_shares.get(p)?;
            if shares.len() < t {
                return None;
            }
            let points: Vec<(u32, field::Elem)> =
                shares[..t].iter().map(|(h, v)| (h.0, field::from_bytes(v))).collect();
            let b = field::to_bytes(&field::interpolate_at_zero(&points));
            let mut v = y.clone();
            apply_mask(&mut v, &self_mask_seed(&b, &self.params), Sign::Subtract);
            acc.iter_mut().zip(&v).for_each(|(a, x)| *a = a.wrapping_add(*x));
        }
        Some(acc)
    }

    fn true_sum(&self, set: &BTreeSet<PartyId>) -> Vec<u64> {
        let mut acc = vec![0u64; self.params.vector_len()];
        for p in set {
            acc.iter_mut().zip(&self.inputs[p]).for_each(|(a, x)| *a = a.wrapping_add(*x));
        }
        acc
    }
}

fn drain(party: &mut Party) -> Vec<PartyMessage> {
    std::iter::from_fn(|| party.poll_transmit())
        .map(|m| PartyMessage::decode(&m.encode()).expect("party messages decode"))
        .collect()
}

fn deliver(party: &mut Party, rng: &mut ChaCha20Rng, msg: CoordinatorMessage) -> Vec<PartyMessage> {
    let msg = CoordinatorMessage::decode(&msg.encode()).expect("coordinator messages decode");
    let _ = party.handle_message(msg, rng);
    drain(party)
}

/// A round of `config` with one colluder `colluder`, aimed at taking `excluded` out of the sum.
///
/// The parties adjacent to exactly one of the two are left out (their keys are never sent), so
/// every honest neighbour of `excluded` is also a neighbour of the colluder. With `forge`, each
/// of those is shown the colluder's advertisement with the colluder's own encryption key and,
/// as mask key, `excluded`'s mask key with bit 255 set (signed by the colluder, byte-distinct
/// from every key the victim holds). Every other message is delivered faithfully, and the
/// survivor set is everyone still in.
fn clone_round(
    config: RoundConfig,
    excluded: PartyId,
    colluder: PartyId,
    forge: bool,
) -> Transcript {
    let params = Arc::new(config.validate().expect("the parameters validate"));
    let n = params.parties().len();
    let consortium = Consortium::new(n, 77);
    let mut inputs = BTreeMap::new();
    let mut machines = BTreeMap::new();
    let mut adverts = BTreeMap::new();
    for &p in params.parties() {
        let mut rng = ChaCha20Rng::seed_from_u64(0xc10e ^ (u64::from(p.0) << 20));
        let input: Vec<u64> = (0..LEN).map(|_| rng.gen_range(0..1u64 << 40)).collect();
        let mut party = Party::new(
            params.clone(),
            p,
            consortium.identity(p),
            consortium.roster(),
            input.clone(),
            &mut rng,
        )
        .expect("a party joins its round");
        for m in drain(&mut party) {
            if let PartyMessage::AdvertiseKeys { keys, .. } = m {
                adverts.insert(p, keys);
            }
        }
        inputs.insert(p, input);
        machines.insert(p, (party, rng));
    }

    let near_excluded = neighbours(&params, excluded);
    let near_colluder = neighbours(&params, colluder);
    let left_out: BTreeSet<PartyId> = near_excluded
        .symmetric_difference(&near_colluder)
        .copied()
        .filter(|p| *p != excluded && *p != colluder)
        .collect();
    let victims: BTreeSet<PartyId> = near_excluded.intersection(&near_colluder).copied().collect();
    let survivors: Vec<PartyId> =
        params.parties().iter().copied().filter(|p| !left_out.contains(p)).collect();
    let rest: BTreeSet<PartyId> =
        survivors.iter().copied().filter(|p| *p != excluded && *p != colluder).collect();

    let forged = {
        let real = &adverts[&colluder];
        let mut mask_key = adverts[&excluded].mask_key;
        mask_key[31] ^= 0x80;
        let statement = [
            b"veil/secagg/v2/advertise".as_slice(),
            &params.session().0,
            &colluder.0.to_le_bytes(),
            &real.encryption_key,
            &mask_key,
        ]
        .concat();
        let signer = SigningKey::from_bytes(&consortium.identity(colluder).to_seed());
        AdvertiseKeys {
            party: colluder,
            encryption_key: real.encryption_key,
            mask_key,
            signature: signer.sign(&statement).to_bytes(),
        }
    };

    let session = params.session();
    let mut sent_shares: BTreeMap<PartyId, Vec<EncryptedShare>> = BTreeMap::new();
    for &p in &survivors {
        let (party, rng) = machines.get_mut(&p).expect("every party has a machine");
        let index = params.index_of(p).expect("a party of the round");
        let keys = params
            .holders_of(index)
            .into_iter()
            .filter(|h| !left_out.contains(h))
            .map(|h| {
                if forge && h == colluder && victims.contains(&p) {
                    forged.clone()
                } else {
                    adverts[&h].clone()
                }
            })
            .collect();
        for m in deliver(party, rng, CoordinatorMessage::Keys { session, keys }) {
            if let PartyMessage::EncryptedShares { shares, .. } = m {
                sent_shares.insert(p, shares);
            }
        }
    }
    let mut masked = BTreeMap::new();
    for &p in &survivors {
        let shares = sent_shares
            .iter()
            .filter_map(|(&from, list)| {
                list.iter()
                    .find(|s| s.peer == p)
                    .map(|s| EncryptedShare { peer: from, ciphertext: s.ciphertext })
            })
            .collect();
        let (party, rng) = machines.get_mut(&p).expect("every party has a machine");
        for m in deliver(party, rng, CoordinatorMessage::Shares { session, shares }) {
            if let PartyMessage::MaskedInput { vector, .. } = m {
                masked.insert(p, vector);
            }
        }
    }
    let mut signatures = Vec::new();
    for &p in &survivors {
        let (party, rng) = machines.get_mut(&p).expect("every party has a machine");
        let msg = CoordinatorMessage::Survivors { session, survivors: survivors.clone() };
        for m in deliver(party, rng, msg) {
            if let PartyMessage::ConsistencySignature { party, signature, .. } = m {
                signatures.push((party, signature));
            }
        }
    }
    let mut self_mask_shares: BTreeMap<PartyId, Vec<(PartyId, [u8; 32])>> = BTreeMap::new();
    for &p in &survivors {
        let (party, rng) = machines.get_mut(&p).expect("every party has a machine");
        let msg = CoordinatorMessage::Signatures { session, signatures: signatures.clone() };
        for m in deliver(party, rng, msg) {
            if let PartyMessage::UnmaskShares { self_mask, .. } = m {
                for r in self_mask {
                    self_mask_shares.entry(r.owner).or_default().push((p, r.value));
                }
            }
        }
    }
    let status = machines.iter().map(|(&p, (party, _))| (p, party.status())).collect();
    Transcript { params, inputs, masked, self_mask_shares, status, survivors, rest }
}

/// The adversary cannot unmask the honest survivors but the excluded one.
fn assert_rest_stays_masked(t: &Transcript) {
    assert_ne!(
        t.unmask(&t.rest),
        Some(t.true_sum(&t.rest)),
        "unmasked the honest set {:?}, not the honest part of the agreed set {:?}",
        t.rest,
        t.survivors
    );
}

fn assert_all_finished(t: &Transcript) {
    for p in &t.survivors {
        assert_eq!(t.status[p], PartyStatus::Finished, "{p:?} did not finish: the setup is off");
    }
}

/// The adversary's arithmetic is right: in the same rounds without the forged key it recovers
/// the sum over the whole agreed set (honest and colluding inputs), and nothing for the set
/// the attack below goes for.
#[test]
fn control_the_adversary_recovers_exactly_the_agreed_sum_without_the_forgery() {
    for (config, colluder) in [
        (services_config(3, 1), PartyId(2)),
        (services_config(8, 2), PartyId(7)),
        (sparse_case().0, sparse_case().1),
    ] {
        let t = clone_round(config, PartyId(0), colluder, false);
        assert_all_finished(&t);
        let all: BTreeSet<PartyId> = t.survivors.iter().copied().collect();
        assert_eq!(t.unmask(&all), Some(t.true_sum(&all)), "the agreed sum");
        assert_ne!(t.unmask(&t.rest), Some(t.true_sum(&t.rest)), "a subset stays masked");
    }
}

/// Three parties, the default all-pairs parameters (t = q = 3, c = 1), party 2 colluding. The
/// coordinator forwards party 1 the colluder's advertisement with party 0's mask key (top bit
/// set). Party 1 masks with 0 (subtracted, 1 > 0) and with "2" (added, 1 < 2) under one seed,
/// so its masked input is x_1 + PRG(b_1). Every party signs {0, 1, 2}, so every party reveals
/// b_1's share, and the adversary reads x_1.
#[test]
fn a_colluder_advertising_an_equivalent_mask_key_isolates_one_party_of_three() {
    let t = clone_round(services_config(3, 1), PartyId(0), PartyId(2), true);
    assert_all_finished(&t);
    assert_eq!(t.rest, BTreeSet::from([PartyId(1)]));
    let learned = t.unmask(&t.rest);
    assert_ne!(
        learned,
        Some(t.inputs[&PartyId(1)].clone()),
        "the coordinator and party 2 recovered party 1's input alone, in a round every party \
         completed"
    );
}

/// The same in an all-pairs round of eight: each honest party between the excluded party 0
/// and the colluder 7 in id order is shown the colluder with 0's mask key, which cancels its
/// mask with 0. The adversary unmasks the sum of parties 1–6, not the honest part {0, …, 6} of
/// the agreed set.
#[test]
fn a_colluder_advertising_an_equivalent_mask_key_drops_an_honest_party_from_the_sum() {
    let t = clone_round(services_config(8, 2), PartyId(0), PartyId(7), true);
    assert_all_finished(&t);
    assert_rest_stays_masked(&t);
}

/// A sparse round with the services' parameters (n = 20, k = 10, t = 7, c = 1) where the
/// excluded party 0 and the colluder 19 are neighbours (found by trying sessions).
fn sparse_case() -> (RoundConfig, PartyId) {
    let n = 20;
    let colluder = PartyId(n as u32 - 1);
    for s in 0..200 {
        let config = services_config(n, 9000 + s);
        let params = config.clone().validate().expect("the services' parameters validate");
        let a = neighbours(&params, PartyId(0));
        let b = neighbours(&params, colluder);
        let only_one = a.symmetric_difference(&b).count();
        // Adjacent, at ring distance 1 or 2: two or four parties are left out.
        if a.contains(&colluder) && only_one <= 2 + 4 {
            return (config, colluder);
        }
    }
    panic!("no session in 200 puts the two at ring distance at most 2");
}

#[test]
fn a_colluder_advertising_an_equivalent_mask_key_drops_an_honest_party_from_a_sparse_sum() {
    let (config, colluder) = sparse_case();
    let t = clone_round(config, PartyId(0), colluder, true);
    assert_all_finished(&t);
    assert_rest_stays_masked(&t);
}

// ---------------------------------------------------------------------------------------------
// Honest members that refuse the set as separators.
// ---------------------------------------------------------------------------------------------

/// The Harary cycle the graph is built on, recovered from the adjacency: consecutive parties
/// share the most neighbours. Checked against the graph before it is returned.
fn cycle(params: &RoundParams) -> Vec<PartyId> {
    let n = params.parties().len();
    let r = params.neighbours() / 2;
    let start = params.parties()[0];
    let mut order = vec![start];
    let mut seen = BTreeSet::from([start]);
    while order.len() < n {
        let here = neighbours(params, *order.last().expect("not empty"));
        let next = here
            .iter()
            .copied()
            .filter(|p| !seen.contains(p))
            .max_by_key(|p| (neighbours(params, *p).intersection(&here).count(), u32::MAX - p.0))
            .expect("an unvisited neighbour");
        seen.insert(next);
        order.push(next);
    }
    for i in 0..n {
        let near = neighbours(params, order[i]);
        let expected: BTreeSet<PartyId> =
            (1..=r).flat_map(|d| [order[(i + d) % n], order[(i + n - d) % n]]).collect();
        assert_eq!(near, expected, "the recovered cycle matches the graph");
    }
    order
}

/// A sparse round of 32 (k = 10, r = 5, t = 7) laid out on the cycle as
///
/// ```text
///   Q: 0..15 | C2: 15 | D: 16 17 | B: 18 19 | P: 20..=26 | B: 27 28 | D: 29 30 | C1: 31
/// ```
///
/// S is everyone but D. The B parties never get Q's shares (they do not mask with Q, Q masks
/// with them), so when shown S they refuse it, after their masked inputs are in. Everyone else
/// signs. Without C1, C2 and B the survivors fall into P ∪ B and Q; the parties check only that
/// no `c` removals cut S. With `two_colluders`, C1 and C2 collude (c = 2); otherwise only C1
/// does and the round tolerates one.
fn separator() -> (Strategy, BTreeSet<PartyId>, BTreeSet<PartyId>) {
    let n = 32;
    let c = 1;
    let base = RoundConfig::sparse(session(31_337), ids(n), LEN).tolerating(c);
    let config = RoundConfig { min_cohort: n - 4, ..base };
    let params = config.clone().validate().expect("the configuration validates");
    assert_eq!((params.neighbours(), params.threshold()), (10, 7));
    let ring = cycle(&params);
    let at = |i: isize| ring[i.rem_euclid(n as isize) as usize];
    let set = |range: std::ops::RangeInclusive<isize>| range.map(at).collect::<BTreeSet<_>>();
    let l = 15;
    let q = set(0..=l - 1);
    let (c1, c2) = (at(-1), at(l));
    let d: BTreeSet<PartyId> = set(l + 1..=l + 2).union(&set(-3..=-2)).copied().collect();
    let b: BTreeSet<PartyId> = set(l + 3..=l + 4).union(&set(-5..=-4)).copied().collect();
    let core = set(l + 5..=n as isize - 6);
    assert_eq!(q.len() + 2 + d.len() + b.len() + core.len(), n);

    let mut strategy = Strategy::new(config);
    strategy.colluders.insert(c1);
    let _ = c2;
    strategy.views = vec![params.parties().iter().copied().filter(|p| !d.contains(p)).collect()];
    for &x in &b {
        for &y in &q {
            strategy.shares_withheld.insert((x, y));
        }
    }
    for &x in params.parties() {
        for &y in &d {
            strategy.shares_withheld.insert((x, y));
        }
    }
    let piece: BTreeSet<PartyId> = core.union(&b).copied().collect();
    (strategy, piece, q)
}

/// With c = 2 in a sparse graph the coordinator could unmask the eleven honest parties of P ∪ B
/// alone, out of 26 honest survivors in a survivor set of 28 = the minimum cohort: the
/// parameters are refused. (Run with the check lifted, the layout below gives
/// `learned == [P ∪ B]`.)
#[test]
fn honest_members_that_refuse_the_set_would_cut_a_sparse_round_for_two_colluders() {
    let n = 32;
    let base = RoundConfig::sparse(session(31_337), ids(n), LEN).tolerating(2);
    let refused = RoundConfig { min_cohort: n - 4, ..base }.validate().unwrap_err().to_string();
    assert!(refused.contains("at most 1 colluding party"), "{refused}");
}

/// The same layout with one colluder: C2 is honest and signs, which ties P to Q (it masks with
/// both), and nothing at all is unmasked.
#[test]
fn the_separator_fails_with_one_colluder() {
    let (strategy, _, _) = separator();
    let k = Adversary::run(&Consortium::new(32, 5), &strategy, 5);
    k.check().unwrap_or_else(|e| panic!("c = 1, sparse: {e}"));
    assert!(k.learned.is_empty(), "{:?}", k.learned);
}

// ---------------------------------------------------------------------------------------------
// A round with one honest party.
// ---------------------------------------------------------------------------------------------

/// `n = c + 1` would leave the colluders one honest party whose input is the whole honest sum:
/// `validate` refuses it (`n ≥ c + 2`), so the agreed set holds at least two honest parties.
#[test]
fn a_round_with_one_honest_party_is_refused() {
    let cases = [
        (RoundConfig::all_pairs(session(70), ids(2), LEN), vec![PartyId(1)]),
        (
            RoundConfig::all_pairs(session(71), ids(3), LEN).tolerating(2),
            vec![PartyId(1), PartyId(2)],
        ),
    ];
    for (config, colluders) in cases {
        let n = config.parties.len();
        let refused = config.clone().validate().unwrap_err().to_string();
        assert!(refused.contains("needs at least"), "{refused}");
        // Every party refuses to join it, so the adversary gets nothing.
        let mut strategy = Strategy::new(config);
        strategy.colluders.extend(colluders);
        let k: Knowledge = Adversary::run(&Consortium::new(n, 3), &strategy, 3);
        assert!(k.learned.is_empty() && k.revealed_for.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// The connectivity check against brute force.
// ---------------------------------------------------------------------------------------------

fn connected_without(params: &RoundParams, set: &[PartyId], removed: &BTreeSet<PartyId>) -> bool {
    let alive: BTreeSet<PartyId> = set.iter().copied().filter(|p| !removed.contains(p)).collect();
    let Some(&start) = alive.iter().next() else { return true };
    let mut reached = BTreeSet::from([start]);
    let mut stack = vec![start];
    while let Some(p) = stack.pop() {
        for q in neighbours(params, p) {
            if alive.contains(&q) && reached.insert(q) {
                stack.push(q);
            }
        }
    }
    reached.len() == alive.len()
}

/// `survivors_connected` (a connectivity pass for c = 0, articulation points for c = 1, the
/// largest a sparse graph allows) agrees with trying every removal of up to c members, on
/// random survivor sets of small sparse rounds, from sets of a few parties to sets full enough to sit on the boundary. A set of at
/// most c + 1 members only has to be connected: removing all but one leaves nothing to cut.
#[test]
fn the_connectivity_check_agrees_with_brute_force() {
    let mut rng = ChaCha20Rng::seed_from_u64(0xb1c0);
    let mut disagreements = Vec::new();
    let mut both = [0usize; 2];
    for (n, c) in [(12, 1), (13, 1), (17, 1), (20, 1), (12, 0), (17, 0)] {
        for round in 0..60u64 {
            let config = RoundConfig::sparse(session(5000 + round), ids(n), LEN).tolerating(c);
            let params = config.validate().expect("a sparse configuration");
            assert!(!params.is_complete());
            let keep = [0.15, 0.55, 0.7, 0.85][round as usize % 4];
            let set: Vec<PartyId> =
                params.parties().iter().copied().filter(|_| rng.gen_bool(keep)).collect();
            if set.is_empty() {
                continue;
            }
            let mut removals = vec![BTreeSet::new()];
            if c == 1 {
                removals.extend(set.iter().map(|&a| BTreeSet::from([a])));
            }
            let brute = if set.len() <= c + 1 {
                connected_without(&params, &set, &BTreeSet::new())
            } else {
                removals.iter().all(|r| connected_without(&params, &set, r))
            };
            let fast = params.survivors_connected(&set);
            both[usize::from(brute)] += 1;
            if brute != fast {
                disagreements.push((n, c, set));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:?}");
    assert!(both[0] > 20 && both[1] > 20, "both outcomes are exercised: {both:?}");
}
