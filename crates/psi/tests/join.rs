//! The join's two sides driven in memory through the wire encoding: the shares add up to a
//! plain hash join's per-group sums, the value side's share alone looks uniform, and faults
//! end the exchange with a typed error.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_psi::join::{GroupMessage, GroupSide, JoinParams, ValueMessage, ValueSide};
use veil_psi::{Error, KeyPolicy, KeySet, Mode, PsiParams, Session, Status};

const SESSION: Session = Session([0x10; 32]);

/// The two sides' inputs: group keys with a group each, value keys with a vector each.
struct Inputs {
    group_keys: Vec<String>,
    groups: Vec<u32>,
    value_keys: Vec<String>,
    vectors: Vec<Vec<u64>>,
}

fn inputs(
    rng: &mut ChaCha20Rng,
    shared: usize,
    only_group: usize,
    only_value: usize,
    segment: usize,
    groups: u32,
) -> Inputs {
    let group_keys: Vec<String> = (0..shared + only_group).map(|i| format!("k{i}")).collect();
    let groups = group_keys.iter().map(|_| rng.gen_range(0..groups)).collect();
    let value_keys: Vec<String> = (0..shared)
        .chain(shared + only_group..shared + only_group + only_value)
        .map(|i| format!("k{i}"))
        .collect();
    let vectors = value_keys
        .iter()
        .map(|_| {
            (0..segment)
                .map(|j| if j == 0 { rng.gen_range(1..50) } else { rng.r#gen::<u64>() })
                .collect()
        })
        .collect();
    Inputs { group_keys, groups, value_keys, vectors }
}

/// The per-group sums of a plain hash join, modulo 2^64.
fn hash_join(i: &Inputs, segment: usize, groups: u32) -> Vec<u64> {
    let group_of: HashMap<&str, u32> =
        i.group_keys.iter().map(String::as_str).zip(i.groups.iter().copied()).collect();
    let mut sums = vec![0u64; groups as usize * segment];
    for (key, vector) in i.value_keys.iter().zip(&i.vectors) {
        if let Some(&g) = group_of.get(key.as_str()) {
            for (j, v) in vector.iter().enumerate() {
                let at = g as usize * segment + j;
                sums[at] = sums[at].wrapping_add(*v);
            }
        }
    }
    sums
}

fn params(segment: u32, groups: u32) -> JoinParams {
    JoinParams::new(PsiParams::new(SESSION, Mode::SizeOnly), segment, groups).unwrap()
}

fn drive(
    group: &mut GroupSide,
    value: &mut ValueSide,
    rng: &mut ChaCha20Rng,
    tamper: &mut dyn FnMut(Vec<u8>) -> Vec<u8>,
) -> Result<(), Error> {
    for _ in 0..100_000 {
        let mut progress = false;
        if let Some(m) = group.poll_transmit() {
            value.handle_message(GroupMessage::decode(&tamper(m.encode()))?, rng)?;
            progress = true;
        }
        if let Some(m) = value.poll_transmit() {
            group.handle_message(ValueMessage::decode(&m.encode())?, rng)?;
            progress = true;
        }
        if !progress {
            return Ok(());
        }
    }
    panic!("the exchange did not end");
}

fn sides(i: &Inputs, p: &JoinParams, rng: &mut ChaCha20Rng) -> (GroupSide, ValueSide) {
    let policy = KeyPolicy::default();
    let group =
        GroupSide::new(p, KeySet::new(policy, &i.group_keys).unwrap(), i.groups.clone(), rng)
            .unwrap();
    let value =
        ValueSide::new(p, KeySet::new(policy, &i.value_keys).unwrap(), &i.vectors, rng).unwrap();
    (group, value)
}

#[test]
fn the_shares_add_up_to_the_hash_join_per_group() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // 16 values per key take two plaintexts; 2,100 value keys take two batches.
    let (segment, groups) = (16u32, 5u32);
    let i = inputs(&mut rng, 1_500, 400, 600, segment as usize, groups);
    let p = params(segment, groups);
    let (mut group, mut value) = sides(&i, &p, &mut rng);
    drive(&mut group, &mut value, &mut rng, &mut |b| b).unwrap();
    assert_eq!((group.status(), value.status()), (Status::Finished, Status::Finished));
    let (g, v) = (group.output().unwrap(), value.output().unwrap());
    let sum: Vec<u64> = g.share.iter().zip(&v.share).map(|(a, b)| a.wrapping_add(*b)).collect();
    assert_eq!(sum, hash_join(&i, segment as usize, groups));
    assert_eq!((g.intersection_size, g.peer_count, v.peer_count), (1_500, 2_100, 1_900));
    // Each share alone is masked: no slot of the value side's equals the true sum.
    let truth = hash_join(&i, segment as usize, groups);
    assert!(v.share.iter().zip(&truth).all(|(a, b)| a != b));
}

#[test]
fn an_empty_intersection_gives_shares_of_zero() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let i = inputs(&mut rng, 0, 30, 20, 3, 4);
    let p = params(3, 4);
    let (mut group, mut value) = sides(&i, &p, &mut rng);
    drive(&mut group, &mut value, &mut rng, &mut |b| b).unwrap();
    let (g, v) = (group.output().unwrap(), value.output().unwrap());
    assert!(g.share.iter().zip(&v.share).all(|(a, b)| a.wrapping_add(*b) == 0));
    assert_eq!(g.intersection_size, 0);
}

#[test]
fn sides_that_disagree_on_the_shape_or_tampered_totals_fail_with_a_typed_error() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let i = inputs(&mut rng, 10, 5, 5, 2, 3);
    let policy = KeyPolicy::default();
    let mut group = GroupSide::new(
        &params(2, 4),
        KeySet::new(policy, &i.group_keys).unwrap(),
        i.groups.clone(),
        &mut rng,
    )
    .unwrap();
    let mut value = ValueSide::new(
        &params(2, 3),
        KeySet::new(policy, &i.value_keys).unwrap(),
        &i.vectors,
        &mut rng,
    )
    .unwrap();
    let e = drive(&mut group, &mut value, &mut rng, &mut |b| b).unwrap_err();
    assert_eq!(e, Error::JoinShape { ours: (2, 4), theirs: (2, 3) });
    assert!(e.is_peer_fault());
    assert!(matches!(group.status(), Status::Aborted(_)));

    // Totals cut short are refused, and the value side ends.
    let p = params(2, 3);
    let (mut group, mut value) = sides(&i, &p, &mut rng);
    let mut cut = |mut b: Vec<u8>| {
        if b[0] == 0x21 {
            b.truncate(b.len() - 512);
            let n = u32::from_le_bytes(b[33..37].try_into().unwrap()) - 1;
            b[33..37].copy_from_slice(&n.to_le_bytes());
        }
        b
    };
    let e = drive(&mut group, &mut value, &mut rng, &mut cut).unwrap_err();
    assert!(matches!(e, Error::TooManyItems { stream: "totals", .. }), "{e:?}");
    assert!(matches!(value.status(), Status::Aborted(_)));
    assert!(value.output().is_none());
}

#[test]
fn malformed_messages_are_decode_errors_not_panics() {
    for bytes in [&[][..], &[0x10], &[0x21, 1, 2], &[0x11, 1], &[0x20, 9, 9], &[0x99]] {
        assert!(ValueMessage::decode(bytes).is_err());
        assert!(GroupMessage::decode(bytes).is_err());
    }
}
