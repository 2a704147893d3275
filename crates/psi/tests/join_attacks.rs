//! Attacks on the join's two machines, driven in memory through the wire encoding.
//!
//! Each test plays one side as an adversary built from the crate's public parts (its own
//! Paillier key, a PSI server with crafted payloads, or tampered totals) against the other,
//! honest side, and checks what the module's documentation promises.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use num_bigint::BigUint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_psi::join::{
    GroupMessage, GroupSide, JOIN_BATCH, JoinParams, SLOTS_PER_CIPHERTEXT, ValueMessage, ValueSide,
};
use veil_psi::paillier::{CIPHERTEXT_BYTES, MODULUS_BITS, SecretKey};
use veil_psi::{Error, KeyPolicy, KeySet, Mode, Payloads, PsiParams, Server, Session, Status};

const SESSION: Session = Session([0x5a; 32]);
/// Bits of a slot in a plaintext (`SLOT_BYTES` × 8).
const SLOT_BITS: u64 = 144;

fn join_params(segment: u32, groups: u32) -> JoinParams {
    JoinParams::new(PsiParams::new(SESSION, Mode::IntersectionToClient), segment, groups).unwrap()
}

/// The intersection's terms inside a join, as `JoinParams::new` sets them.
fn psi_params() -> PsiParams {
    PsiParams::new(SESSION, Mode::IntersectionToClient)
        .with_policy(KeyPolicy::default())
        .with_batch_size(JOIN_BATCH)
        .unwrap()
}

/// A value side that deviates: its own Paillier key, and for each of its keys the plaintexts
/// it chooses (not slots of 64-bit values), encrypted and sent as the key's payload. It keeps
/// the decrypted totals.
struct HostileValue {
    secret: SecretKey,
    hello: Option<ValueMessage>,
    server: Server,
    totals: Option<Vec<BigUint>>,
}

impl HostileValue {
    fn new(
        keys: &[String],
        plaintexts: &[Vec<BigUint>],
        segment: u32,
        groups: u32,
        rng: &mut ChaCha20Rng,
    ) -> Self {
        let secret = SecretKey::generate(rng);
        let chunks = plaintexts[0].len();
        let mut bytes = Vec::new();
        for key in plaintexts {
            assert_eq!(key.len(), chunks);
            for m in key {
                bytes.extend(secret.encrypt(m, rng).to_bytes());
            }
        }
        let payloads = Payloads::new(chunks * CIPHERTEXT_BYTES, bytes).unwrap();
        let keys = KeySet::new(KeyPolicy::default(), keys).unwrap();
        let server = Server::with_payloads(&psi_params(), keys, payloads, rng).unwrap();
        let hello = ValueMessage::PublicKey {
            session: SESSION,
            key: secret.public().to_bytes(),
            segment,
            groups,
        };
        Self { secret, hello: Some(hello), server, totals: None }
    }

    fn poll_transmit(&mut self) -> Option<ValueMessage> {
        self.hello.take().or_else(|| self.server.poll_transmit().map(ValueMessage::Psi))
    }

    fn handle(&mut self, message: GroupMessage, rng: &mut ChaCha20Rng) {
        match message {
            GroupMessage::Psi(m) => self.server.handle_message(m, rng).unwrap(),
            GroupMessage::Totals { ciphertexts, .. } => {
                let public = self.secret.public();
                let plaintexts = ciphertexts
                    .chunks_exact(CIPHERTEXT_BYTES)
                    .map(|c| self.secret.decrypt(&public.ciphertext(c).unwrap()).unwrap())
                    .collect();
                self.totals = Some(plaintexts);
            }
        }
    }
}

/// Runs an honest group side against a hostile value side to the end; returns the totals the
/// value side decrypted (`groups × chunks` plaintexts, group by group).
fn against_hostile_value(
    group: &mut GroupSide,
    value: &mut HostileValue,
    rng: &mut ChaCha20Rng,
) -> Vec<BigUint> {
    for _ in 0..10_000 {
        let mut progress = false;
        if let Some(m) = group.poll_transmit() {
            value.handle(GroupMessage::decode(&m.encode()).unwrap(), rng);
            progress = true;
        }
        if let Some(m) = value.poll_transmit() {
            group.handle_message(ValueMessage::decode(&m.encode()).unwrap(), rng).unwrap();
            progress = true;
        }
        if !progress {
            break;
        }
    }
    assert_eq!(group.status(), Status::Finished);
    value.totals.take().expect("the group side sent its totals")
}

/// The group side's keys and groups: the first `shared` of the value side's keys `t{i}`, then
/// keys of its own, each in a random group.
fn group_side(
    p: &JoinParams,
    shared: usize,
    own: usize,
    groups: u32,
    rng: &mut ChaCha20Rng,
) -> (GroupSide, BTreeMap<usize, u32>) {
    let keys: Vec<String> =
        (0..shared).map(|i| format!("t{i}")).chain((0..own).map(|i| format!("r{i}"))).collect();
    let slots: Vec<u32> = keys.iter().map(|_| rng.gen_range(0..groups)).collect();
    let truth = (0..shared).map(|i| (i, slots[i])).collect();
    let side =
        GroupSide::new(p, KeySet::new(KeyPolicy::default(), &keys).unwrap(), slots, rng).unwrap();
    (side, truth)
}

/// A hostile value side puts a one-hot tag per key above the plaintext's only slot (segment 1:
/// bits 144 to 2,047) to read, from each group's decrypted total, which of its keys the group
/// side holds and in which group. Each total is masked by a plaintext uniform below N, so what
/// it decrypts is uniform whatever it encrypted, and the tags read back as noise.
#[test]
fn a_value_side_cannot_read_the_grouping_from_the_plaintexts_unmasked_bits() {
    let mut rng = ChaCha20Rng::seed_from_u64(101);
    let (segment, groups, keys) = (1u32, 4u32, 96usize);
    let p = join_params(segment, groups);
    let (mut group, truth) = group_side(&p, 60, 20, groups, &mut rng);
    let value_keys: Vec<String> = (0..keys).map(|i| format!("t{i}")).collect();
    // Key i: an honest-looking 1 in its slot, and bit 144 + i set above it.
    let plaintexts: Vec<Vec<BigUint>> =
        (0..keys).map(|i| vec![(BigUint::from(1u32) << (SLOT_BITS + i as u64)) + 1u32]).collect();
    let mut value = HostileValue::new(&value_keys, &plaintexts, segment, groups, &mut rng);
    let totals = against_hostile_value(&mut group, &mut value, &mut rng);
    let mut read = BTreeMap::new();
    for (g, total) in totals.iter().enumerate() {
        for i in 0..keys {
            if total.bit(SLOT_BITS + i as u64) {
                read.insert(i, g as u32);
            }
        }
    }
    assert_ne!(
        read, truth,
        "the value side read which of its keys the group side holds, and each one's group"
    );
}

/// The same through the slots themselves (segment 14: every slot in use), a tag per key at one
/// of a slot's top bits: the whole-plaintext mask covers those too.
#[test]
fn a_value_side_cannot_read_the_grouping_from_a_slots_top_bits() {
    let mut rng = ChaCha20Rng::seed_from_u64(102);
    let (segment, groups) = (SLOTS_PER_CIPHERTEXT as u32, 3u32);
    let per_slot = 7usize;
    let keys = per_slot * SLOTS_PER_CIPHERTEXT;
    let p = join_params(segment, groups);
    let (mut group, truth) = group_side(&p, keys, 10, groups, &mut rng);
    let value_keys: Vec<String> = (0..keys).map(|i| format!("t{i}")).collect();
    let bit_of = |i: usize| (i / per_slot) as u64 * SLOT_BITS + 137 + (i % per_slot) as u64;
    let plaintexts: Vec<Vec<BigUint>> =
        (0..keys).map(|i| vec![BigUint::from(1u32) << bit_of(i)]).collect();
    let mut value = HostileValue::new(&value_keys, &plaintexts, segment, groups, &mut rng);
    let totals = against_hostile_value(&mut group, &mut value, &mut rng);
    let mut read = BTreeMap::new();
    for (g, total) in totals.iter().enumerate() {
        for i in 0..keys {
            if total.bit(bit_of(i)) {
                read.insert(i, g as u32);
            }
        }
    }
    assert_ne!(
        read, truth,
        "the value side read every shared key's group from the slots' top bits"
    );
}

/// A group side that deviates sends, as one of its totals, the value side's modulus N itself
/// (nonzero and below N², so `PublicKey::ciphertext` takes it). Decryption refuses an element
/// that is not a unit, and the value side ends the exchange with a typed error instead of a
/// panic in the party worker's loop.
#[test]
fn totals_that_are_not_units_mod_n_are_a_typed_error_not_a_panic() {
    let mut rng = ChaCha20Rng::seed_from_u64(103);
    let (segment, groups) = (2u32, 3u32);
    let p = join_params(segment, groups);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let slots: Vec<u32> = keys.iter().map(|_| rng.gen_range(0..groups)).collect();
    let vectors: Vec<Vec<u64>> = keys.iter().map(|_| vec![1, 2]).collect();
    let policy = KeyPolicy::default();
    let mut group = GroupSide::new(
        &p,
        KeySet::new(policy, &keys[..30]).unwrap(),
        slots[..30].to_vec(),
        &mut rng,
    )
    .unwrap();
    let mut value =
        ValueSide::new(&p, KeySet::new(policy, &keys[10..]).unwrap(), &vectors[10..], &mut rng)
            .unwrap();
    let mut modulus = None;
    let mut outcome = None;
    for _ in 0..10_000 {
        let mut progress = false;
        if let Some(m) = value.poll_transmit() {
            if let ValueMessage::PublicKey { key, .. } = &m {
                modulus = Some(key[..MODULUS_BITS / 8].to_vec());
            }
            group.handle_message(ValueMessage::decode(&m.encode()).unwrap(), &mut rng).unwrap();
            progress = true;
        }
        if let Some(m) = group.poll_transmit() {
            let m = match m {
                GroupMessage::Totals { session, mut ciphertexts } => {
                    // The first total becomes N, big-endian on 512 bytes.
                    let n = modulus.as_ref().unwrap();
                    ciphertexts[..CIPHERTEXT_BYTES].fill(0);
                    ciphertexts[CIPHERTEXT_BYTES - n.len()..CIPHERTEXT_BYTES].copy_from_slice(n);
                    GroupMessage::Totals { session, ciphertexts }
                }
                other => other,
            };
            let m = GroupMessage::decode(&m.encode()).unwrap();
            let is_totals = matches!(m, GroupMessage::Totals { .. });
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                value.handle_message(m, &mut ChaCha20Rng::seed_from_u64(7))
            }));
            if is_totals {
                outcome = Some(handled);
                break;
            }
            handled.unwrap().unwrap();
            progress = true;
        }
        if !progress {
            break;
        }
    }
    let outcome = outcome.expect("the totals reached the value side");
    let Ok(result) = outcome else {
        panic!("a peer's totals panicked the value side (a crash of the party worker)");
    };
    let e: Error = result.unwrap_err();
    assert!(e.is_peer_fault(), "{e:?}");
    assert!(matches!(value.status(), Status::Aborted(_)));
}
