//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` and by the test that replays
//! their corpus on stable (`tests/fuzz_corpus.rs`).
//!
//! Each harness must never panic, whatever its input. The round harnesses run a real
//! three-party round in which the messages to or from party 0 are replaced by fuzzer input, so
//! a corpus seeded from an honest transcript reaches every stage of the state machines.

use std::collections::VecDeque;

use veil_protocol::{CoordinatorMessage, PartyId, PartyMessage, RoundConfig};

use crate::{Consortium, Simulation, session};

/// Parties in the round harnesses.
pub const ROUND_PARTIES: usize = 3;
/// Vector length in the round harnesses.
pub const ROUND_LEN: usize = 4;
/// Seed of the round harnesses: with it, recorded honest messages are valid inputs.
pub const ROUND_SEED: u64 = 0xf022;

/// Decodes a party message; a message that decodes must re-encode to the same bytes.
pub fn party_message(data: &[u8]) {
    if let Ok(m) = PartyMessage::decode(data) {
        assert_eq!(m.encode(), data, "decoding is canonical");
    }
}

/// Decodes a coordinator message; a message that decodes must re-encode to the same bytes.
pub fn coordinator_message(data: &[u8]) {
    if let Ok(m) = CoordinatorMessage::decode(data) {
        assert_eq!(m.encode(), data, "decoding is canonical");
    }
}

/// Splits input into length-prefixed chunks (`u16` little-endian length, then the bytes).
pub fn split_chunks(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 16 {
        let n = usize::from(u16::from_le_bytes([data[0], data[1]]));
        data = &data[2..];
        let n = n.min(data.len());
        out.push(data[..n].to_vec());
        data = &data[n..];
    }
    out
}

/// Joins chunks in the format [`split_chunks`] reads.
pub fn join_chunks(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let n = u16::try_from(c.len()).expect("harness chunks are short");
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

fn round_config(c: &Consortium) -> RoundConfig {
    RoundConfig::all_pairs(session(ROUND_SEED), c.parties(), ROUND_LEN)
}

/// A round whose coordinator messages to party 0 are, in order, the chunks of `data` (those
/// that decode; the others are dropped, as a transport would). Returns whether party 0 saw the
/// round through to its end.
pub fn party_round(data: &[u8]) -> bool {
    let mut chunks: VecDeque<Vec<u8>> = split_chunks(data).into();
    let c = Consortium::new(ROUND_PARTIES, ROUND_SEED);
    let sim = Simulation::new(&c, round_config(&c), ROUND_SEED)
        .expect("harness parameters are valid")
        .record(false)
        .intercept(Box::new(move |to, msg| {
            if to != PartyId(0) {
                return vec![(to, msg)];
            }
            match chunks.pop_front().map(|b| CoordinatorMessage::decode(&b)) {
                Some(Ok(m)) => vec![(to, m)],
                _ => vec![],
            }
        }));
    sim.run().status[&PartyId(0)] == veil_protocol::PartyStatus::Finished
}

/// A round whose messages from party 0 are, in order, the chunks of `data`. Returns whether
/// the round's sum includes party 0.
pub fn coordinator_round(data: &[u8]) -> bool {
    let mut chunks: VecDeque<Vec<u8>> = split_chunks(data).into();
    let c = Consortium::new(ROUND_PARTIES, ROUND_SEED);
    let sim = Simulation::new(&c, round_config(&c), ROUND_SEED)
        .expect("harness parameters are valid")
        .record(false)
        .intercept_parties(Box::new(move |from, msg| {
            if from != PartyId(0) {
                return vec![msg];
            }
            match chunks.pop_front().map(|b| PartyMessage::decode(&b)) {
                Some(Ok(m)) => vec![m],
                _ => vec![],
            }
        }));
    sim.run().result.is_ok_and(|a| a.contributors.contains(&PartyId(0)))
}

/// An honest round of the harness configuration, for seeding the corpus: the messages the
/// coordinator sent to party 0, and the messages party 0 sent, in order.
pub fn honest_transcript() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let c = Consortium::new(ROUND_PARTIES, ROUND_SEED);
    let o = Simulation::new(&c, round_config(&c), ROUND_SEED)
        .expect("harness parameters are valid")
        .run();
    let to_party = o
        .transcript
        .iter()
        .filter(|(from, to, _)| from.is_none() && *to == Some(PartyId(0)))
        .map(|(_, _, b)| b.clone())
        .collect();
    let from_party = o
        .transcript
        .iter()
        .filter(|(from, _, _)| *from == Some(PartyId(0)))
        .map(|(_, _, b)| b.clone())
        .collect();
    (to_party, from_party)
}
