//! Versioned test vectors in `tests/vectors/secagg-v1.txt`, positive and negative: the mask
//! PRG's output, Shamir reconstruction, and the wire encoding of every message kind, including
//! inputs every decoder must refuse. They pin the wire format and the derivations, so a change
//! to either shows up here and must come with a new wire version.
//!
//! `VEIL_BLESS=1 cargo test -p veil-protocol --test vectors` rewrites the file from the current
//! implementation (only for a deliberate format change).

// Helpers here panic on a malformed vector file, which is the test failing as it should.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use curve25519_dalek::scalar::Scalar;
use veil_protocol::message::{AdvertiseKeys, EncryptedShare, RevealedShare};
use veil_protocol::prg::{Mask, Sign, apply_masks};
use veil_protocol::{CoordinatorMessage, PartyId, PartyMessage, SessionId, shamir};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/secagg-v1.txt");

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn seed(i: u8) -> [u8; 32] {
    std::array::from_fn(|j| i.wrapping_mul(31).wrapping_add(j as u8))
}

fn prg_line(s: &[u8; 32]) -> String {
    let mut v = vec![0u64; 4];
    apply_masks(&mut v, &[Mask::new(s, Sign::Add)]);
    let words: Vec<String> = v.iter().map(|w| format!("{w:016x}")).collect();
    format!("prg {} {}", hex(s), words.join(","))
}

fn scalar(i: u64) -> Scalar {
    Scalar::from(i) * Scalar::from(0x1234_5678_9abc_def1u64) + Scalar::from(i * i)
}

/// `t + 1` shares of a polynomial of degree `t − 1` with known coefficients.
fn shamir_line(t: usize) -> String {
    let coefficients: Vec<Scalar> = (0..t as u64).map(|i| scalar(i + 7)).collect();
    let shares: Vec<String> = (0..t as u32 + 1)
        .map(|p| {
            let x = Scalar::from(u64::from(p) * 3 + 1);
            let y = coefficients.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
            format!("{}:{}", p * 3, hex(y.as_bytes()))
        })
        .collect();
    format!("shamir {t} {} {}", hex(coefficients[0].as_bytes()), shares.join(","))
}

fn messages() -> Vec<(String, Vec<u8>, bool)> {
    let session = SessionId(seed(1));
    let party = [
        PartyMessage::AdvertiseKeys {
            session,
            keys: AdvertiseKeys {
                party: PartyId(3),
                encryption_key: seed(2),
                mask_key: seed(3),
                signature: [7u8; 64],
            },
        },
        PartyMessage::EncryptedShares {
            session,
            party: PartyId(3),
            shares: vec![EncryptedShare { peer: PartyId(4), ciphertext: [9u8; 88] }],
        },
        PartyMessage::MaskedInput { session, party: PartyId(3), vector: vec![1, u64::MAX, 42] },
        PartyMessage::ConsistencySignature { session, party: PartyId(3), signature: [5u8; 64] },
        PartyMessage::UnmaskShares {
            session,
            party: PartyId(3),
            self_mask: vec![RevealedShare { owner: PartyId(1), value: seed(4) }],
            mask_key: vec![RevealedShare { owner: PartyId(2), value: seed(5) }],
        },
    ];
    let coordinator = [
        CoordinatorMessage::Keys { session, keys: vec![] },
        CoordinatorMessage::Shares {
            session,
            shares: vec![EncryptedShare { peer: PartyId(1), ciphertext: [1u8; 88] }],
        },
        CoordinatorMessage::Survivors { session, survivors: vec![PartyId(0), PartyId(2)] },
        CoordinatorMessage::Signatures { session, signatures: vec![(PartyId(2), [3u8; 64])] },
    ];
    let mut out = Vec::new();
    for (i, m) in party.iter().enumerate() {
        out.push((format!("party-{i}"), m.encode(), true));
    }
    for (i, m) in coordinator.iter().enumerate() {
        out.push((format!("coordinator-{i}"), m.encode(), false));
    }
    out
}

fn generate() -> String {
    let mut s = String::from(
        "# veil secure aggregation test vectors, wire version 1.\n\
         # prg <seed> <first four mask words>\n\
         # shamir <t> <secret> <holder:share,...> (any t of the shares reconstruct the secret)\n\
         # party|coordinator <name> <encoding> ok | <decode error>\n",
    );
    for i in 0..3 {
        s += &prg_line(&seed(i));
        s.push('\n');
    }
    for t in [1, 2, 3, 5] {
        s += &shamir_line(t);
        s.push('\n');
    }
    for (name, bytes, is_party) in messages() {
        let kind = if is_party { "party" } else { "coordinator" };
        s += &format!("{kind} {name} {} ok\n", hex(&bytes));
        // Negative cases: truncated, extended, wrong version, unknown tag.
        let mut longer = bytes.clone();
        longer.push(0);
        let mut version = bytes.clone();
        version[0] = 2;
        let mut tag = bytes.clone();
        tag[1] = 0xee;
        let negatives = [
            ("truncated", bytes[..bytes.len() - 1].to_vec()),
            ("extended", longer),
            ("version", version),
            ("tag", tag),
        ];
        for (suffix, b) in negatives {
            let err = decode(kind, &b).expect_err("negative vectors must fail");
            s += &format!("{kind} {name}-{suffix} {} {err}\n", hex(&b));
        }
    }
    s
}

fn decode(kind: &str, b: &[u8]) -> Result<Vec<u8>, String> {
    let variant = |e: veil_protocol::DecodeError| {
        format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string()
    };
    if kind == "party" {
        PartyMessage::decode(b).map(|m| m.encode()).map_err(variant)
    } else {
        CoordinatorMessage::decode(b).map(|m| m.encode()).map_err(variant)
    }
}

fn canonical(hex_scalar: &str) -> Scalar {
    let bytes: [u8; 32] = unhex(hex_scalar).try_into().unwrap();
    Option::from(Scalar::from_canonical_bytes(bytes)).unwrap()
}

#[test]
fn vectors_match_the_implementation() {
    if std::env::var_os("VEIL_BLESS").is_some() {
        std::fs::write(PATH, generate()).unwrap();
    }
    let text = std::fs::read_to_string(PATH).expect("tests/vectors/secagg-v1.txt exists");
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "prg" => {
                let s: [u8; 32] = unhex(f[1]).try_into().unwrap();
                assert_eq!(prg_line(&s), line);
            }
            "shamir" => {
                let t: usize = f[1].parse().unwrap();
                let secret = canonical(f[2]);
                let shares: Vec<(PartyId, Scalar)> = f[3]
                    .split(',')
                    .map(|s| {
                        let (p, v) = s.split_once(':').unwrap();
                        (PartyId(p.parse().unwrap()), canonical(v))
                    })
                    .collect();
                assert_eq!(shamir::reconstruct(&shares, t).unwrap(), secret, "{line}");
                assert_eq!(shamir::reconstruct(&shares[1..], t).unwrap(), secret, "{line}");
                if t > 1 {
                    assert_ne!(shamir::reconstruct(&shares[..t - 1], t - 1).unwrap(), secret);
                }
            }
            kind @ ("party" | "coordinator") => {
                let bytes = unhex(f[2]);
                match (decode(kind, &bytes), f[3]) {
                    (Ok(re), "ok") => assert_eq!(re, bytes, "{line}"),
                    (Err(e), want) => assert_eq!(e, want, "{line}"),
                    (Ok(_), want) => panic!("{} decoded but should fail with {want}", f[1]),
                }
            }
            other => panic!("unknown vector kind {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} vectors");
}
