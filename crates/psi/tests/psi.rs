//! Both roles driven in memory through the wire encoding: results against a plain set
//! intersection, faults of each kind, normalisation, sessions and the reply shuffle.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_psi::{
    BlindedKey, Client, ClientMessage, ClientOutput, DecodeError, Error, KeyDigest, KeyPolicy,
    KeySet, Mode, PsiParams, Server, ServerMessage, ServerOutput, Session, Status,
};

const SESSION: Session = Session([0x5e; 32]);

fn params(mode: Mode, batch: u32) -> PsiParams {
    PsiParams::new(SESSION, mode).with_batch_size(batch).unwrap()
}

fn keys(params: &PsiParams, keys: &[String]) -> KeySet {
    KeySet::new(params.policy(), keys).unwrap()
}

/// Rewrites a message's bytes on its way; `index` counts the messages of that direction.
type Tamper<'a> = &'a mut dyn FnMut(usize, Vec<u8>) -> Vec<u8>;

/// Runs the exchange, every message through its encoding, until neither side has anything to
/// send; the first error either side reports ends it.
fn drive(
    client: &mut Client,
    server: &mut Server,
    rng: &mut ChaCha20Rng,
    to_server: Tamper<'_>,
    to_client: Tamper<'_>,
) -> Result<(), Error> {
    let (mut up, mut down) = (0, 0);
    loop {
        let mut progress = false;
        if let Some(m) = client.poll_transmit() {
            let bytes = to_server(up, m.encode());
            up += 1;
            server.handle_message(ClientMessage::decode(&bytes)?, rng)?;
            progress = true;
        }
        if let Some(m) = server.poll_transmit() {
            let bytes = to_client(down, m.encode());
            down += 1;
            client.handle_message(ServerMessage::decode(&bytes)?)?;
            progress = true;
        }
        if !progress {
            return Ok(());
        }
    }
}

fn untouched() -> impl FnMut(usize, Vec<u8>) -> Vec<u8> {
    |_, bytes| bytes
}

fn run(params: &PsiParams, a: &[String], b: &[String], seed: u64) -> (ClientOutput, ServerOutput) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut client = Client::new(params, keys(params, a), &mut rng).unwrap();
    let mut server = Server::new(params, keys(params, b), &mut rng).unwrap();
    drive(&mut client, &mut server, &mut rng, &mut untouched(), &mut untouched()).unwrap();
    assert_eq!(client.status(), Status::Finished);
    assert_eq!(server.status(), Status::Finished);
    (client.output().unwrap().clone(), *server.output().unwrap())
}

/// `n_a` and `n_b` distinct random keys of which `overlap` are common.
fn sets(n_a: usize, n_b: usize, overlap: usize, seed: u64) -> (Vec<String>, Vec<String>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut all = BTreeSet::new();
    while all.len() < n_a + n_b - overlap {
        all.insert(rng.r#gen::<u64>());
    }
    let mut all: Vec<String> = all.into_iter().map(|k| format!("key-{k}")).collect();
    // Mix the sorted keys so neither side's order follows the other's.
    for i in (1..all.len()).rev() {
        all.swap(i, rng.gen_range(0..=i));
    }
    let a = all[..n_a].to_vec();
    let b = all[n_a - overlap..].to_vec();
    (a, b)
}

fn check_against_hash_sets(mode: Mode, batch: u32, a: &[String], b: &[String], seed: u64) {
    let params = params(mode, batch);
    let (client, server) = run(&params, a, b, seed);
    let b_set: HashSet<&String> = b.iter().collect();
    let expected: Vec<usize> = (0..a.len()).filter(|&i| b_set.contains(&a[i])).collect();
    assert_eq!(client.intersection_size(), expected.len() as u64);
    assert_eq!(client.server_count(), b.len() as u64);
    assert_eq!(server.client_count(), a.len() as u64);
    match mode {
        Mode::SizeOnly => assert!(client.members().is_none()),
        Mode::IntersectionToClient => {
            let members = client.members().unwrap();
            assert_eq!(members.len(), a.len());
            assert_eq!(members.iter().collect::<Vec<_>>(), expected);
        }
    }
}

#[test]
fn size_and_members_equal_a_hash_set_intersection() {
    // (|A|, |B|, overlap, batch size): empty sides, full overlap, none, several batches.
    let cases = [
        (0, 0, 0, 4),
        (0, 7, 0, 4),
        (7, 0, 0, 4),
        (1, 1, 1, 4),
        (40, 40, 40, 16),
        (40, 40, 0, 16),
        (300, 200, 100, 64),
        (1000, 1000, 500, 1 << 16),
    ];
    for (i, &(n_a, n_b, overlap, batch)) in cases.iter().enumerate() {
        let (a, b) = sets(n_a, n_b, overlap, i as u64);
        for mode in [Mode::SizeOnly, Mode::IntersectionToClient] {
            check_against_hash_sets(mode, batch, &a, &b, 100 + i as u64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_two_sets_give_their_intersection(
        a in proptest::collection::btree_set(0u16..60, 0..30),
        b in proptest::collection::btree_set(0u16..60, 0..30),
        batch in 1u32..9,
        members in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let a: Vec<String> = a.iter().map(u16::to_string).collect();
        let b: Vec<String> = b.iter().rev().map(u16::to_string).collect();
        let mode = if members { Mode::IntersectionToClient } else { Mode::SizeOnly };
        check_against_hash_sets(mode, batch, &a, &b, seed);
    }
}

#[test]
fn batches_are_bounded_and_numbered() {
    let params = params(Mode::IntersectionToClient, 4);
    let (a, _) = sets(10, 0, 0, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut client = Client::new(&params, keys(&params, &a), &mut rng).unwrap();
    assert!(matches!(client.poll_transmit(), Some(ClientMessage::Hello { count: 10, .. })));
    let mut sizes = Vec::new();
    while let Some(ClientMessage::BlindedKeys { batch, keys, .. }) = client.poll_transmit() {
        assert_eq!(batch as usize, sizes.len());
        sizes.push(keys.len());
    }
    assert_eq!(sizes, [4, 4, 2]);
}

#[test]
fn duplicates_and_empty_keys_are_refused_without_naming_them() {
    let policy = KeyPolicy { trim: true, case_fold: true };
    let err = KeySet::new(policy, ["alice@example.org", " ALICE@example.org", "bob"]).unwrap_err();
    assert_eq!(err, Error::DuplicateKeys { count: 1 });
    assert!(!err.to_string().contains("alice"), "{err}");
    let err = KeySet::new(policy, ["alice", " \t", "bob", ""]).unwrap_err();
    assert_eq!(err, Error::EmptyKeys { count: 2 });
    // A key set normalised under another policy than the job's is refused.
    let params = params(Mode::SizeOnly, 4);
    let set = KeySet::new(policy, ["a"]).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    assert!(matches!(Client::new(&params, set, &mut rng), Err(Error::KeySetPolicy { .. })));
}

#[test]
fn normalisation_matches_keys_that_differ_by_space_and_case() {
    let a: Vec<String> = [" A1 ", "b2", "c3"].map(String::from).to_vec();
    let b: Vec<String> = ["a1", "B2\t", "d4"].map(String::from).to_vec();
    let folding = params(Mode::IntersectionToClient, 4)
        .with_policy(KeyPolicy { trim: true, case_fold: true });
    let (client, _) = run(&folding, &a, &b, 3);
    assert_eq!(client.members().unwrap().iter().collect::<Vec<_>>(), [0, 1]);
    // Trimming alone: " A1 " is "A1", not "a1"; "b2" and "B2" differ.
    let (client, _) = run(&params(Mode::IntersectionToClient, 4), &a, &b, 3);
    assert_eq!(client.intersection_size(), 0);
}

#[test]
fn keys_blinded_in_another_session_never_match() {
    let (a, b) = sets(20, 20, 20, 9);
    let other = Session([0x07; 32]);
    let here = params(Mode::SizeOnly, 8);
    let there = PsiParams::new(other, Mode::SizeOnly).with_batch_size(8).unwrap();
    // The same seeds in both jobs, so the same scalars and orders: only the session differs.
    let (server_seed, client_seed) = (50, 60);

    // The other job, whose server's blinded keys are kept.
    let mut foreign_keys = Vec::new();
    {
        let mut rng = ChaCha20Rng::seed_from_u64(server_seed);
        let mut server = Server::new(&there, keys(&there, &b), &mut rng).unwrap();
        let mut client_rng = ChaCha20Rng::seed_from_u64(client_seed);
        let mut client = Client::new(&there, keys(&there, &a), &mut client_rng).unwrap();
        let mut keep = |_: usize, bytes: Vec<u8>| {
            if let Ok(ServerMessage::BlindedKeys { batch, keys, .. }) =
                ServerMessage::decode(&bytes)
            {
                foreign_keys.push((batch, keys));
            }
            bytes
        };
        drive(&mut client, &mut server, &mut rng, &mut untouched(), &mut keep).unwrap();
        assert_eq!(client.output().unwrap().intersection_size(), 20);
    }

    // This job, with the server's blinded keys swapped for the other job's (relabelled).
    let exchange = |swap: bool| {
        let mut rng = ChaCha20Rng::seed_from_u64(server_seed);
        let mut server = Server::new(&here, keys(&here, &b), &mut rng).unwrap();
        let mut client_rng = ChaCha20Rng::seed_from_u64(client_seed);
        let mut client = Client::new(&here, keys(&here, &a), &mut client_rng).unwrap();
        let mut relabel = |_: usize, bytes: Vec<u8>| match ServerMessage::decode(&bytes) {
            Ok(ServerMessage::BlindedKeys { batch, .. }) if swap => {
                let keys = foreign_keys.iter().find(|(b, _)| *b == batch).unwrap().1.clone();
                ServerMessage::BlindedKeys { session: SESSION, batch, keys }.encode()
            }
            _ => bytes,
        };
        drive(&mut client, &mut server, &mut rng, &mut untouched(), &mut relabel).unwrap();
        client.output().unwrap().intersection_size()
    };
    assert_eq!(exchange(false), 20);
    assert_eq!(exchange(true), 0);

    // Not relabelled, the other job's message is refused, and the exchange goes on.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut client = Client::new(&here, keys(&here, &a), &mut rng).unwrap();
    let (batch, keys) = foreign_keys[0].clone();
    let err = client
        .handle_message(ServerMessage::BlindedKeys { session: other, batch, keys })
        .unwrap_err();
    assert!(matches!(err, Error::WrongSession { .. }) && !err.is_fatal() && err.is_peer_fault());
    assert!(matches!(client.status(), Status::InProgress(_)));
}

/// Runs an exchange with `tamper` applied to the server's messages (or the client's with
/// `upstream`) and returns the error and both statuses.
fn tampered(
    mode: Mode,
    upstream: bool,
    mut tamper: impl FnMut(usize, Vec<u8>) -> Vec<u8>,
) -> (Error, Status, Status) {
    // Full overlap: every server key matches one of the client's.
    let (a, b) = sets(12, 12, 12, 4);
    let params = params(mode, 4);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut client = Client::new(&params, keys(&params, &a), &mut rng).unwrap();
    let mut server = Server::new(&params, keys(&params, &b), &mut rng).unwrap();
    let result = if upstream {
        drive(&mut client, &mut server, &mut rng, &mut tamper, &mut untouched())
    } else {
        drive(&mut client, &mut server, &mut rng, &mut untouched(), &mut tamper)
    };
    (result.unwrap_err(), client.status(), server.status())
}

#[test]
fn truncated_or_tampered_messages_give_typed_errors() {
    // Truncated: the decoder says which field ran short.
    let (err, _, _) = tampered(Mode::SizeOnly, true, |i, mut b| {
        if i == 1 {
            b.truncate(b.len() - 5);
        }
        b
    });
    assert_eq!(err, Error::Decode(DecodeError::Truncated { field: "batch length", needed: 5 }));

    // A point that is not a canonical encoding: the server aborts and sends nothing more.
    let (err, client, server) = tampered(Mode::SizeOnly, true, |i, mut b| {
        if i == 2 {
            b[42 + 32..42 + 64].fill(0xff); // the second point of batch 1
        }
        b
    });
    assert_eq!(err, Error::InvalidPoint { stream: "client blinded keys", batch: 1, index: 1 });
    assert!(matches!(client, Status::InProgress(_)));
    assert_eq!(server, Status::Aborted(err));

    // The same in a server's blinded key, at the client.
    let (err, client, _) = tampered(Mode::SizeOnly, false, |_, mut b| {
        if b[1] == 5 {
            b[42..74].fill(0);
        }
        b
    });
    assert_eq!(err, Error::InvalidPoint { stream: "server blinded keys", batch: 0, index: 0 });
    assert_eq!(client, Status::Aborted(err));

    // A batch out of order.
    let (err, _, _) = tampered(Mode::IntersectionToClient, true, |i, mut b| {
        if i == 2 {
            b[34..38].copy_from_slice(&5u32.to_le_bytes());
        }
        b
    });
    assert_eq!(err, Error::OutOfOrder { stream: "client blinded keys", expected: 1, got: 5 });

    // A hello announcing fewer keys than come.
    let (err, _, _) = tampered(Mode::SizeOnly, true, |i, mut b| {
        if i == 0 {
            b[36..44].copy_from_slice(&5u64.to_le_bytes());
        }
        b
    });
    assert_eq!(err, Error::TooManyItems { stream: "client blinded keys", announced: 5 });

    // A client asking for another mode, or normalising otherwise, than the server agreed to.
    let (err, _, _) = tampered(Mode::SizeOnly, true, |i, mut b| {
        if i == 0 {
            b[34] = 1;
        }
        b
    });
    assert_eq!(
        err,
        Error::ModeMismatch { ours: Mode::SizeOnly, theirs: Mode::IntersectionToClient }
    );
    let (err, _, _) = tampered(Mode::SizeOnly, true, |i, mut b| {
        if i == 0 {
            b[35] = 3;
        }
        b
    });
    assert!(matches!(err, Error::PolicyMismatch { .. }));

    // Replies that repeat a value, and a server key sent twice.
    let (err, _, _) = tampered(Mode::SizeOnly, false, |i, mut b| {
        if i == 1 {
            let first: [u8; 16] = b[42..58].try_into().unwrap();
            b[58..74].copy_from_slice(&first);
        }
        b
    });
    assert_eq!(err, Error::DuplicateReplies { count: 1 });
    let (err, _, _) = tampered(Mode::SizeOnly, false, |_, b| match ServerMessage::decode(&b) {
        Ok(ServerMessage::BlindedKeys { session, batch, mut keys }) => {
            keys[1] = keys[0];
            ServerMessage::BlindedKeys { session, batch, keys }.encode()
        }
        _ => b,
    });
    assert_eq!(err, Error::DuplicatePeerKey { batch: 0 });
}

#[test]
fn out_of_stage_messages_end_the_exchange() {
    let params = params(Mode::SizeOnly, 4);
    let (a, b) = sets(3, 3, 1, 5);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut client = Client::new(&params, keys(&params, &a), &mut rng).unwrap();
    let err = client
        .handle_message(ServerMessage::Replies {
            session: SESSION,
            batch: 0,
            digests: vec![KeyDigest([1; 16])],
        })
        .unwrap_err();
    assert_eq!(
        err,
        Error::UnexpectedMessage {
            expected: "expecting the server's hello",
            got: "server replies"
        }
    );
    assert_eq!(client.poll_transmit(), None, "an aborted client sends nothing");
    assert_eq!(
        client.handle_message(ServerMessage::Hello { session: SESSION, count: 0 }),
        Err(Error::Ended)
    );

    let mut server = Server::new(&params, keys(&params, &b), &mut rng).unwrap();
    let keys = vec![BlindedKey([0; 32])];
    let err = server
        .handle_message(ClientMessage::BlindedKeys { session: SESSION, batch: 0, keys }, &mut rng)
        .unwrap_err();
    assert!(matches!(err, Error::UnexpectedMessage { .. }) && err.is_fatal());
    assert_eq!(server.poll_transmit(), None, "an aborted server sends nothing");
}

/// The digests of the replies a server with `seed` sends to `blinded` in `mode`.
fn replies(mode: Mode, blinded: &[ClientMessage], seed: u64) -> Vec<KeyDigest> {
    let params = params(mode, 4);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = Server::new(&params, keys(&params, &[]), &mut rng).unwrap();
    for m in blinded {
        server.handle_message(m.clone(), &mut rng).unwrap();
    }
    // With no keys of its own, the server is done once its replies are out, not before.
    assert!(matches!(server.status(), Status::InProgress(_)));
    let mut out = Vec::new();
    while let Some(m) = server.poll_transmit() {
        if let ServerMessage::Replies { digests, .. } = m {
            out.extend(digests);
        }
    }
    assert_eq!(server.status(), Status::Finished);
    out
}

#[test]
fn size_only_replies_come_in_a_uniform_order() {
    // The client's hello and blinded keys, once; then many servers (fresh scalars).
    let a: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
    let blinded = |mode| {
        let params = params(mode, 4);
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut client = Client::new(&params, keys(&params, &a), &mut rng).unwrap();
        std::iter::from_fn(|| client.poll_transmit()).collect::<Vec<_>>()
    };
    let (ordered, shuffled) = (blinded(Mode::IntersectionToClient), blinded(Mode::SizeOnly));
    let runs = 1200;
    let mut counts = std::collections::HashMap::new();
    for seed in 0..runs {
        // Same server seed, so the same scalar: the ordered replies name each key's digest.
        let by_key = replies(Mode::IntersectionToClient, &ordered, seed);
        let got = replies(Mode::SizeOnly, &shuffled, seed);
        let permutation: Vec<usize> =
            got.iter().map(|d| by_key.iter().position(|k| k == d).unwrap()).collect();
        *counts.entry(permutation).or_insert(0u32) += 1;
    }
    // Six orders, each Binomial(1200, 1/6): mean 200, sd ≈ 12.9; 5 sd either side.
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert!(counts.values().all(|&c| (135..=265).contains(&c)), "{counts:?}");
}

#[allow(dead_code)] // the benchmark's `main` and its primitives' timing
#[path = "../examples/psi_bench.rs"]
mod psi_bench;

#[test]
fn the_benchmark_runs_and_sends_80_bytes_per_key_pair() {
    let n = 2000;
    let report = psi_bench::run(n, 1000, Mode::IntersectionToClient, 7);
    // One batch each way: a hello (44 bytes) and A's keys; B's hello (42), replies and keys.
    let batch = 42;
    assert_eq!(report.sent, (44 + batch + 32 * n, 42 + 2 * batch + 48 * n));
}
