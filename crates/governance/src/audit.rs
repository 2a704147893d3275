//! The append-only, hash-chained, signed audit log.
//!
//! Each entry holds its sequence number, the previous entry's hash, the time, the writer, the
//! event, and the writer's Ed25519 signature over all of that; an entry's hash covers the
//! signature too. [`verify`] checks a log and names the first entry that fails; [`Head`]s
//! recorded elsewhere (the coordinator's head in each party's log, a party's head in a receipt)
//! anchor a log so that deleting its tail is caught as well.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const LABEL: &[u8] = b"veil/audit/v1";

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A party connected to the coordinator.
    PartyJoined {
        /// The party.
        party: u32,
    },
    /// A job was offered (recorded by the coordinator, and by each party with the coordinator's
    /// log head at that moment).
    JobOffered {
        /// The job.
        job_id: String,
        /// SHA-256 of the canonical specification.
        job_hash: String,
        /// The consumer.
        consumer: String,
        /// The coordinator's log head when it offered the job (in parties' logs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinator_head: Option<Head>,
    },
    /// A party accepted a job.
    JobAccepted {
        /// The job.
        job_id: String,
        /// The party.
        party: u32,
    },
    /// A party refused a job, with the rule.
    JobRefused {
        /// The job.
        job_id: String,
        /// The party.
        party: u32,
        /// The rule that refused.
        rule: String,
        /// The message the consumer sees.
        message: String,
    },
    /// Privacy budget was reserved for a job (never refunded).
    BudgetCharged {
        /// The job.
        job_id: String,
        /// The dataset.
        dataset: String,
        /// The consumer.
        consumer: String,
        /// zCDP ρ.
        rho: f64,
    },
    /// A party's first round message of a job reached the coordinator, with the party's log
    /// head then, which lies after the job's charge (in the coordinator's log).
    PartyCharged {
        /// The job.
        job_id: String,
        /// The party.
        party: u32,
        /// The party's log head.
        head: Head,
    },
    /// A result was released.
    ResultReleased {
        /// The receipt.
        receipt: crate::receipt::Receipt,
    },
    /// A consumer fetched a result.
    ResultFetched {
        /// The job.
        job_id: String,
        /// The consumer.
        consumer: String,
    },
    /// A configuration changed (a policy, a dataset, a roster).
    ConfigChanged {
        /// What, in words.
        what: String,
    },
}

/// A position in a log: the sequence number and hash of an entry. A head one writer hands the
/// other for a job carries the writer's signature over (job, seq, hash), so that a head
/// recorded by the other side can be told from one it made up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The entry's sequence number (0-based).
    pub seq: u64,
    /// Its hash, hex.
    pub hash: String,
    /// The log writer's Ed25519 signature (hex) over [`head_statement`], when the head was
    /// handed to the other side for a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

const LABEL_HEAD: &[u8] = b"veil/audit/v1/head";

/// What a writer signs when it hands its head to the other side for a job.
pub fn head_statement(job_id: &str, seq: u64, hash: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL_HEAD.len() + 16 + job_id.len() + hash.len());
    m.extend_from_slice(LABEL_HEAD);
    m.extend_from_slice(&(job_id.len() as u64).to_le_bytes());
    m.extend_from_slice(job_id.as_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(hash.as_bytes());
    m
}

impl Head {
    /// The head signed by its log's writer for `job_id`.
    pub fn signed(self, job_id: &str, key: &SigningKey) -> Self {
        let signature = key.sign(&head_statement(job_id, self.seq, &self.hash));
        Self { signature: Some(hex_encode(&signature.to_bytes())), ..self }
    }

    /// Whether the log's writer (`key`) signed this head for `job_id`.
    pub fn signed_by(&self, job_id: &str, key: &VerifyingKey) -> bool {
        let Some(signature) = self.signature.as_deref().and_then(hex_decode_64) else {
            return false;
        };
        key.verify(
            &head_statement(job_id, self.seq, &self.hash),
            &Signature::from_bytes(&signature),
        )
        .is_ok()
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode_64(text: &str) -> Option<[u8; 64]> {
    if text.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position, from 0.
    pub seq: u64,
    /// The previous entry's hash (hex), or 64 zeros for the first.
    pub prev: String,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Who wrote it (`coordinator`, `party 2`).
    pub writer: String,
    /// What happened.
    pub event: Event,
    /// The writer's signature (hex) over everything above.
    pub signature: String,
}

/// The hash of the empty log.
pub fn genesis() -> String {
    "0".repeat(64)
}

fn signed_bytes(seq: u64, prev: &str, time_ms: i64, writer: &str, event: &Event) -> Vec<u8> {
    let event = serde_json::to_string(event).expect("events always serialise");
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(seq.to_le_bytes());
    h.update(prev.as_bytes());
    h.update(time_ms.to_le_bytes());
    h.update((writer.len() as u64).to_le_bytes());
    h.update(writer.as_bytes());
    h.update(event.as_bytes());
    h.finalize().to_vec()
}

impl Entry {
    /// Writes and signs the entry following `previous` (or the first entry).
    pub fn new(
        previous: Option<&Entry>,
        time_ms: i64,
        writer: &str,
        event: Event,
        key: &SigningKey,
    ) -> Self {
        let (seq, prev) = match previous {
            Some(p) => (p.seq + 1, p.hash()),
            None => (0, genesis()),
        };
        let signature = key.sign(&signed_bytes(seq, &prev, time_ms, writer, &event));
        Entry {
            seq,
            prev,
            time_ms,
            writer: writer.to_string(),
            event,
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// The entry's hash (hex), covering its signature.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(signed_bytes(self.seq, &self.prev, self.time_ms, &self.writer, &self.event));
        h.update(self.signature.as_bytes());
        hex::encode(h.finalize())
    }

    /// This entry as a head.
    pub fn head(&self) -> Head {
        Head { seq: self.seq, hash: self.hash(), signature: None }
    }

    fn signature_valid(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else { return false };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else { return false };
        key.verify(
            &signed_bytes(self.seq, &self.prev, self.time_ms, &self.writer, &self.event),
            &Signature::from_bytes(&bytes),
        )
        .is_ok()
    }
}

/// Why a log fails verification, naming the first entry that fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// An entry is out of sequence (a deletion, insertion or reorder).
    #[error(
        "entry {index}: sequence number {found}, expected {expected} (an entry was deleted, inserted or moved)"
    )]
    Sequence {
        /// Position in the log as given.
        index: usize,
        /// Its sequence number.
        found: u64,
        /// The expected one.
        expected: u64,
    },
    /// An entry does not chain to the previous one.
    #[error("entry {seq}: does not chain to entry {prev_seq} (an earlier entry was altered)")]
    Chain {
        /// The entry.
        seq: u64,
        /// The entry before it.
        prev_seq: i64,
    },
    /// An entry's signature does not verify.
    #[error("entry {seq}: the writer's signature does not verify (the entry was altered)")]
    Signature {
        /// The entry.
        seq: u64,
    },
    /// A head recorded elsewhere is missing or different.
    #[error(
        "entry {seq}: another log recorded hash {expected}, this log has {found} (history rewritten or truncated)"
    )]
    Anchor {
        /// The entry.
        seq: u64,
        /// The recorded hash.
        expected: String,
        /// What this log has (or "nothing").
        found: String,
    },
}

/// Checks a whole log: sequence, chain, signatures, and that every anchor (a head recorded by
/// someone else) is present with the same hash.
pub fn verify(entries: &[Entry], key: &VerifyingKey, anchors: &[Head]) -> Result<(), VerifyError> {
    let mut prev = genesis();
    for (index, e) in entries.iter().enumerate() {
        if e.seq != index as u64 {
            return Err(VerifyError::Sequence { index, found: e.seq, expected: index as u64 });
        }
        if e.prev != prev {
            return Err(VerifyError::Chain { seq: e.seq, prev_seq: e.seq as i64 - 1 });
        }
        if !e.signature_valid(key) {
            return Err(VerifyError::Signature { seq: e.seq });
        }
        prev = e.hash();
    }
    let mut sorted: Vec<&Head> = anchors.iter().collect();
    sorted.sort_by_key(|h| h.seq);
    for a in sorted {
        match entries.get(a.seq as usize) {
            Some(e) if e.hash() == a.hash => {}
            Some(e) => {
                return Err(VerifyError::Anchor {
                    seq: a.seq,
                    expected: a.hash.clone(),
                    found: e.hash(),
                });
            }
            None => {
                return Err(VerifyError::Anchor {
                    seq: a.seq,
                    expected: a.hash.clone(),
                    found: "nothing".into(),
                });
            }
        }
    }
    Ok(())
}

/// Why a log does not agree with another writer's log, naming what is missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgainstError {
    /// The log fails on its own (chain, signatures) or against a recorded head.
    #[error(transparent)]
    Log(#[from] VerifyError),
    /// The log is empty although the other log records something of it.
    #[error("the log is empty, but the other log records {0}")]
    Empty(String),
    /// Entries are written by more than one writer.
    #[error("entry {seq} is written by {found:?}, the log's first entry by {writer:?}")]
    Writer {
        /// The entry.
        seq: u64,
        /// Its writer.
        found: String,
        /// The first entry's writer.
        writer: String,
    },
    /// Something the other log records is missing from this one.
    #[error("{0}")]
    Missing(String),
}

/// Checks `log` (by `key`'s writer) against the other side's log, in whichever direction the
/// two writers give:
///
/// - a coordinator's log must hold every head a party's log recorded of it, and every release
///   the party's log records;
/// - a party's log must hold every job it records as offered in the coordinator's log, and for
///   every release receipt that names it: the release, the charge of the receipt's ρ, and the
///   head the receipt recorded, which must be the entry where it accepted that job.
///
/// A log shorter than a recorded head, or empty where the other log records something, fails.
pub fn verify_against(
    log: &[Entry],
    key: &VerifyingKey,
    other: &[Entry],
) -> Result<(), AgainstError> {
    let other_is_coordinator = other.first().is_some_and(|e| e.writer == "coordinator");
    let Some(first) = log.first() else {
        if other.is_empty() {
            return Ok(());
        }
        let what = if other_is_coordinator { "releases and offers" } else { "coordinator heads" };
        return Err(AgainstError::Empty(what.into()));
    };
    let writer = first.writer.clone();
    if let Some(e) = log.iter().find(|e| e.writer != writer) {
        return Err(AgainstError::Writer { seq: e.seq, found: e.writer.clone(), writer });
    }
    let missing = |m: String| Err(AgainstError::Missing(m));
    let mut anchors = Vec::new();
    if writer == "coordinator" {
        // Each head a party recorded must carry this coordinator's signature for its job: one
        // that does not was made up by the party, not rolled back by the coordinator.
        for e in other {
            if let Event::JobOffered { job_id, coordinator_head: Some(h), .. } = &e.event {
                if !h.signed_by(job_id, key) {
                    return missing(format!(
                        "the party's entry {} records a coordinator head for job {job_id} that \
                         the coordinator did not sign: the party's record is false",
                        e.seq
                    ));
                }
                anchors.push(h.clone());
            }
        }
        for e in other {
            if let Event::ResultReleased { receipt } = &e.event {
                let here = log.iter().any(|c| {
                    matches!(&c.event, Event::ResultReleased { receipt: r } if r.job_id == receipt.job_id)
                });
                if !here {
                    return missing(format!(
                        "the party's entry {} records the release of job {}, which this log \
                         does not (entries were deleted)",
                        e.seq, receipt.job_id
                    ));
                }
            }
        }
    } else if other_is_coordinator {
        let party = writer.strip_prefix("party ").and_then(|id| id.parse::<u32>().ok());
        let Some(party) = party else {
            return missing(format!("{writer:?} names no party"));
        };
        for e in log {
            if let Event::JobOffered { job_id, .. } = &e.event {
                let offered = other.iter().any(
                    |c| matches!(&c.event, Event::JobOffered { job_id: j, .. } if j == job_id),
                );
                if !offered {
                    return missing(format!(
                        "entry {}: job {job_id} is not in the coordinator's log",
                        e.seq
                    ));
                }
            }
        }
        // Every head recorded after a party's charge anchors its log, released or not; each
        // must carry the party's own signature for its job, or the coordinator made it up.
        let signed = |seq: u64, job: &str, head: &Head| {
            if head.signed_by(job, key) {
                Ok(())
            } else {
                Err(AgainstError::Missing(format!(
                    "the coordinator's entry {seq} records a head of this party for job {job} \
                     that the party did not sign: the coordinator's record is false"
                )))
            }
        };
        for e in other {
            if let Event::PartyCharged { job_id, party: p, head } = &e.event {
                if *p == party {
                    signed(e.seq, job_id, head)?;
                    anchors.push(head.clone());
                }
            }
        }
        for (seq, job, head) in recorded_contributions(other, party) {
            let rho = other
                .iter()
                .find_map(|e| match &e.event {
                    Event::ResultReleased { receipt } if receipt.job_id == job => Some(receipt.rho),
                    _ => None,
                })
                .unwrap_or(0.0);
            let released = log.iter().any(
                |e| matches!(&e.event, Event::ResultReleased { receipt } if receipt.job_id == job),
            );
            if !released {
                return missing(format!(
                    "the coordinator's entry {seq} releases job {job} with this party's data, \
                     and this log records no such release (entries were deleted, or the party \
                     stopped before the release reached it)"
                ));
            }
            let same = |a: f64| (a - rho).abs() <= 1e-9 * a.abs().max(rho.abs()).max(1.0);
            let charged = log.iter().any(|e| {
                matches!(&e.event, Event::BudgetCharged { job_id, rho: r, .. } if *job_id == job && same(*r))
            });
            if rho > 0.0 && !charged {
                return missing(format!(
                    "the coordinator's entry {seq} releases job {job} at ρ = {rho}, and this \
                     log records no charge of it (a charge was cut and the release logged again)"
                ));
            }
            let Some(head) = head else {
                return missing(format!(
                    "the coordinator's entry {seq} records no head of this party for job {job}"
                ));
            };
            signed(seq, &job, &head)?;
            let accepted = log.get(head.seq as usize).is_some_and(
                |e| matches!(&e.event, Event::JobAccepted { job_id, .. } if *job_id == job),
            );
            if log.get(head.seq as usize).is_some() && !accepted {
                return missing(format!(
                    "entry {}: the head the coordinator recorded for job {job} is not this \
                     party's acceptance of it (the log was rewritten)",
                    head.seq
                ));
            }
            anchors.push(head);
        }
    }
    verify(log, key, &anchors)?;
    Ok(())
}

/// The releases in the coordinator's log that name `party` as a contributor: the entry's
/// sequence number, the job, and the party's log head the receipt recorded (if any), to anchor
/// the party's log.
pub fn recorded_contributions(
    coordinator_log: &[Entry],
    party: u32,
) -> Vec<(u64, String, Option<Head>)> {
    coordinator_log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ResultReleased { receipt } => receipt
                .parties
                .iter()
                .find(|c| c.party == party)
                .map(|c| (e.seq, receipt.job_id.clone(), c.head.clone())),
            _ => None,
        })
        .collect()
}

/// The coordinator heads a party's log recorded, to anchor the coordinator's log.
pub fn recorded_coordinator_heads(party_log: &[Entry]) -> Vec<Head> {
    party_log
        .iter()
        .filter_map(|e| match &e.event {
            Event::JobOffered { coordinator_head: Some(h), .. } => Some(h.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(9))
    }

    fn log(n: usize) -> Vec<Entry> {
        let k = key();
        let mut out: Vec<Entry> = Vec::new();
        for i in 0..n {
            let event = if i % 2 == 0 {
                Event::JobAccepted { job_id: format!("job{i}"), party: 1 }
            } else {
                Event::BudgetCharged {
                    job_id: format!("job{i}"),
                    dataset: "d".into(),
                    consumer: "c".into(),
                    rho: 0.25,
                }
            };
            let e = Entry::new(out.last(), 1_000 + i as i64, "party 1", event, &k);
            out.push(e);
        }
        out
    }

    #[test]
    fn an_intact_log_verifies_against_its_own_head() {
        let l = log(6);
        let head = l.last().unwrap().head();
        assert_eq!(verify(&l, &key().verifying_key(), &[head]), Ok(()));
        assert_eq!(verify(&[], &key().verifying_key(), &[]), Ok(()));
    }

    #[test]
    fn another_writers_key_fails_at_the_first_entry() {
        let other = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(10));
        assert_eq!(
            verify(&log(3), &other.verifying_key(), &[]),
            Err(VerifyError::Signature { seq: 0 })
        );
    }

    proptest! {
        /// Any single-byte change of any entry's serialised form is caught (or leaves an
        /// entry that no longer parses), and so is any deletion, reorder or truncation when the
        /// log's head was recorded elsewhere.
        #[test]
        fn any_edit_is_detected(n in 2usize..8, which in any::<prop::sample::Index>(), byte in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let l = log(n);
            let head = l.last().unwrap().head();
            let k = key().verifying_key();
            let i = which.index(n);
            let mut json = serde_json::to_vec(&l[i]).unwrap();
            let b = byte.index(json.len());
            json[b] ^= flip;
            if let Ok(edited) = serde_json::from_slice::<Entry>(&json) {
                if edited != l[i] {
                    let mut t = l.clone();
                    t[i] = edited;
                    prop_assert!(verify(&t, &k, std::slice::from_ref(&head)).is_err());
                }
            }
            // Deletion of one entry.
            let mut d = l.clone();
            d.remove(i);
            prop_assert!(verify(&d, &k, std::slice::from_ref(&head)).is_err());
            // Swapping two neighbours.
            let mut r = l.clone();
            r.swap(i, (i + 1) % n);
            prop_assert!(verify(&r, &k, std::slice::from_ref(&head)).is_err());
            // Truncation, caught by the recorded head.
            let cut = &l[..i.min(n - 1)];
            prop_assert!(verify(cut, &k, std::slice::from_ref(&head)).is_err());
        }
    }
}
