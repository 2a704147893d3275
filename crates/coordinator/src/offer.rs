//! A job's offer and who its answer covers, with no I/O.
//!
//! [`Offering`] takes the parties' signed replies and departures and decides who takes part;
//! [`Coverage`] records, for every party that serves the job's dataset, what became of it:
//! contributed, refused (with the rule), offline, data unavailable, dropped, no answer or a
//! fault. The driver feeds both and shows the coverage to the consumer with the answer.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use veil_governance::Decline;
use veil_governance::audit::Head;
use veil_governance::decision::decision_statement;
use veil_governance::receipt::Contribution;
use veil_protocol::{PartyId, Roster};

/// What became of one party that serves a job's dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Its data is in the answer.
    Contributed,
    /// It accepted; the job is under way.
    Accepted,
    /// Its policy refused the job.
    Refused {
        /// The rule's name.
        rule: String,
        /// The party's message.
        reason: String,
    },
    /// Not connected when the job was offered, or gone before it answered.
    Offline {
        /// When or how.
        reason: String,
    },
    /// It cannot read the data the job needs.
    DataUnavailable {
        /// The party's message (it names no path).
        reason: String,
    },
    /// It accepted and left the round before the sum.
    Dropped {
        /// Why, when known.
        reason: String,
    },
    /// It did not answer the offer in time.
    NoAnswer {
        /// How long it had.
        reason: String,
    },
    /// Another failure.
    Fault {
        /// The party's or the coordinator's message.
        reason: String,
    },
}

impl Outcome {
    /// The outcome a party's decline gives.
    pub fn of_decline(decline: &Decline) -> Self {
        let reason = decline.message().to_string();
        match decline {
            Decline::Refused(d) => Outcome::Refused { rule: d.rule.name().to_string(), reason },
            Decline::DataUnavailable(_) => Outcome::DataUnavailable { reason },
            Decline::Fault(_) => Outcome::Fault { reason },
        }
    }

    /// One phrase for a person: "refused by rule budget: …".
    pub fn describe(&self) -> String {
        match self {
            Outcome::Contributed => "contributed".into(),
            Outcome::Accepted => "accepted".into(),
            // Worded as governance words every refusal (`Denial`).
            Outcome::Refused { rule, reason } => format!("refused by rule {rule}: {reason}"),
            Outcome::Offline { reason } => format!("offline: {reason}"),
            Outcome::DataUnavailable { reason } => format!("data unavailable: {reason}"),
            Outcome::Dropped { reason } => format!("dropped out: {reason}"),
            Outcome::NoAnswer { reason } => format!("no answer: {reason}"),
            Outcome::Fault { reason } => format!("failed: {reason}"),
        }
    }
}

/// One party's line in a [`Coverage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyOutcome {
    /// The party.
    pub party: u32,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Every party that serves a job's dataset, and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage(BTreeMap<PartyId, Outcome>);

impl Coverage {
    /// The parties serving the dataset: those offered the job start taking part until they
    /// answer; the others are offline.
    pub fn new(serving: &BTreeSet<PartyId>, offered: &[PartyId]) -> Self {
        let offered: BTreeSet<PartyId> = offered.iter().copied().collect();
        let offline =
            || Outcome::Offline { reason: "not connected when the job was offered".into() };
        Coverage(
            serving
                .union(&offered)
                .map(|p| (*p, if offered.contains(p) { Outcome::Accepted } else { offline() }))
                .collect(),
        )
    }

    /// Sets one party's outcome.
    pub fn set(&mut self, party: PartyId, outcome: Outcome) {
        self.0.insert(party, outcome);
    }

    /// After the sum: the contributors contributed; everyone else still taking part dropped
    /// out, for the reason `left` gives (a signed message) or as a plain dropout.
    pub fn settle(&mut self, contributors: &[PartyId], left: &BTreeMap<PartyId, String>) {
        for (p, outcome) in &mut self.0 {
            if contributors.contains(p) {
                *outcome = Outcome::Contributed;
            } else if *outcome == Outcome::Accepted {
                let reason = left.get(p).cloned().unwrap_or_else(|| {
                    "left the round before the sum (disconnected or timed out)".into()
                });
                *outcome = Outcome::Dropped { reason };
            }
        }
    }

    /// How many parties serve the dataset, and how many contributed.
    pub fn counts(&self) -> (usize, usize) {
        (self.0.len(), self.0.values().filter(|o| **o == Outcome::Contributed).count())
    }

    /// The parties not taking part or contributing, with what became of them.
    pub fn missing(&self) -> impl Iterator<Item = (PartyId, &Outcome)> {
        self.0
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Contributed | Outcome::Accepted))
            .map(|(p, o)| (*p, o))
    }

    /// Each party's line, in id order.
    pub fn entries(&self) -> Vec<PartyOutcome> {
        self.0.iter().map(|(p, o)| PartyOutcome { party: p.0, outcome: o.clone() }).collect()
    }

    /// From stored lines.
    pub fn from_entries(entries: Vec<PartyOutcome>) -> Self {
        Coverage(entries.into_iter().map(|e| (PartyId(e.party), e.outcome)).collect())
    }

    /// The stored form (JSON; empty for no parties).
    pub fn to_json(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        serde_json::to_string(&self.entries()).expect("coverage always serialises")
    }

    /// From the stored form.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        if text.is_empty() {
            return Ok(Coverage::default());
        }
        Ok(Coverage::from_entries(serde_json::from_str(text)?))
    }
}

/// What a party decided about an offer, as the gateway read it off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It takes part.
    Accept,
    /// It declines.
    Decline(Decline),
    /// Its kind and rule do not fit together (an unknown rule, say).
    Malformed(String),
}

/// A party's reply to an offer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Who sent it.
    pub from: PartyId,
    /// Its decision.
    pub decision: Decision,
    /// The job hash it decided about.
    pub job_hash: String,
    /// Its signature over the decision.
    pub signature: Vec<u8>,
    /// Its keyed fingerprint of the data it read.
    pub dataset_sha256: String,
    /// Training jobs: the first step it still contributes to.
    pub next_step: u64,
    /// Its round keys for the offered session, if the offer named one.
    pub advertise: Vec<u8>,
    /// The fewest parties its data may be combined with.
    pub min_cohort: u32,
    /// Its audit log head once its decision was recorded.
    pub head: Option<Head>,
}

impl Reply {
    /// Whether the reply is signed by its sender's roster key, for this job.
    pub fn signed(&self, roster: &Roster, job_id: &str) -> bool {
        let Some(key) = roster.key(self.from) else { return false };
        let Ok(bytes) = <[u8; 64]>::try_from(self.signature.as_slice()) else { return false };
        let decline = match &self.decision {
            Decision::Accept => None,
            Decision::Decline(d) => Some(d),
            Decision::Malformed(_) => return false,
        };
        let statement = decision_statement(job_id, &self.job_hash, decline);
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        ed25519_dalek::Verifier::verify(key, &statement, &signature).is_ok()
    }
}

/// What the job goes on with once its offer is settled.
#[derive(Debug)]
pub struct Accepted {
    /// The parties that accepted, in id order.
    pub parties: Vec<PartyId>,
    /// The round's minimum cohort: the job's, raised to the largest a party asked for.
    pub min: usize,
    /// Round keys advertised with the acceptances.
    pub adverts: BTreeMap<PartyId, Vec<u8>>,
    /// The furthest training step a party already contributed to.
    pub next_step: u64,
    /// What goes into the release receipt for each accepting party.
    pub contributions: Vec<Contribution>,
}

/// Why an offer ends the job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferFailure {
    /// Too few parties accepted.
    #[error("{accepted} of {offered} parties accepted; the job needs {needed}. {why}")]
    TooFew {
        /// How many accepted.
        accepted: usize,
        /// How many were offered the job.
        offered: usize,
        /// How many it needs.
        needed: usize,
        /// What became of the others.
        why: String,
    },
    /// The consumer asked for every serving party, and some are missing.
    #[error(
        "the job requires every party that serves the dataset, and {missing} of {serving} will not take part: {why}"
    )]
    NotAll {
        /// Parties serving the dataset.
        serving: usize,
        /// Parties not taking part.
        missing: usize,
        /// What became of them.
        why: String,
    },
}

/// A job's offer, from the moment it is sent until every party answered, left or ran out of
/// time.
#[derive(Debug)]
pub struct Offering {
    job_id: String,
    job_hash: String,
    min: usize,
    offered: usize,
    pending: BTreeSet<PartyId>,
    accepted: BTreeSet<PartyId>,
    adverts: BTreeMap<PartyId, Vec<u8>>,
    contributions: Vec<Contribution>,
    next_step: u64,
    required: usize,
    coverage: Coverage,
}

impl Offering {
    /// An offer of job `job_id` (hash `job_hash`, needing `min` parties) sent to `offered`,
    /// of the parties `serving` its dataset.
    pub fn new(
        job_id: &str,
        job_hash: &str,
        min: usize,
        serving: &BTreeSet<PartyId>,
        offered: &[PartyId],
    ) -> Self {
        Offering {
            job_id: job_id.to_string(),
            job_hash: job_hash.to_string(),
            min,
            offered: offered.len(),
            pending: offered.iter().copied().collect(),
            accepted: BTreeSet::new(),
            adverts: BTreeMap::new(),
            contributions: Vec::new(),
            next_step: 0,
            required: 0,
            coverage: Coverage::new(serving, offered),
        }
    }

    /// Whether every party offered the job has answered or left.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// A reply. One from a party not waited for (a second reply, or an unoffered party) is
    /// ignored; an unsigned or mismatched one, or an acceptance without the party's log head,
    /// counts as a fault.
    pub fn reply(&mut self, roster: &Roster, reply: Reply) {
        let from = reply.from;
        if !self.pending.remove(&from) {
            return;
        }
        let fault = |reason: &str| Outcome::Fault { reason: reason.to_string() };
        if !reply.signed(roster, &self.job_id) || reply.job_hash != self.job_hash {
            self.coverage.set(from, fault("sent an unsigned or mismatched decision"));
            return;
        }
        match reply.decision {
            // The receipt anchors the party's log at its acceptance; without the head, a
            // party could later rewrite its log unseen.
            Decision::Accept if reply.head.is_none() => {
                self.coverage.set(from, fault("accepted without its audit log head"));
            }
            Decision::Accept => {
                self.accepted.insert(from);
                if !reply.advertise.is_empty() {
                    self.adverts.insert(from, reply.advertise);
                }
                self.next_step = self.next_step.max(reply.next_step);
                self.required = self.required.max(reply.min_cohort as usize);
                self.contributions.push(Contribution {
                    party: from.0,
                    dataset_sha256: reply.dataset_sha256,
                    head: reply.head,
                });
            }
            Decision::Decline(d) => self.coverage.set(from, Outcome::of_decline(&d)),
            Decision::Malformed(m) => self.coverage.set(from, fault(&m)),
        }
    }

    /// A party's connection closed: if it had not answered, it is offline; keys it
    /// advertised are not its own any more (a reconnected party has forgotten them).
    pub fn departed(&mut self, party: PartyId) {
        if self.pending.remove(&party) {
            self.coverage.set(
                party,
                Outcome::Offline { reason: "disconnected before it answered the offer".into() },
            );
        }
        self.adverts.remove(&party);
    }

    /// Closes the offer after `waited` seconds: parties still pending did not answer. With
    /// `require_all`, any serving party that will not take part fails the job.
    pub fn close(
        mut self,
        waited_secs: u64,
        require_all: bool,
    ) -> Result<(Accepted, Coverage), (OfferFailure, Coverage)> {
        for p in std::mem::take(&mut self.pending) {
            let reason = format!("did not answer within {waited_secs}s");
            self.coverage.set(p, Outcome::NoAnswer { reason });
        }
        let why = |coverage: &Coverage| {
            coverage
                .missing()
                .map(|(p, o)| format!("{p} {}", o.describe()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let (serving, _) = self.coverage.counts();
        let missing = self.coverage.missing().count();
        if require_all && missing > 0 {
            let why = why(&self.coverage);
            return Err((OfferFailure::NotAll { serving, missing, why }, self.coverage));
        }
        let min = self.min.max(self.required);
        if self.accepted.len() < min {
            let mut why = why(&self.coverage);
            if self.required > self.min && self.accepted.len() >= self.min {
                why += &format!(
                    "{}a party that accepted combines its data with at least {}",
                    if why.is_empty() { "" } else { "; " },
                    self.required
                );
            }
            let failure = OfferFailure::TooFew {
                accepted: self.accepted.len(),
                offered: self.offered,
                needed: min,
                why,
            };
            return Err((failure, self.coverage));
        }
        let accepted = Accepted {
            parties: self.accepted.into_iter().collect(),
            min,
            adverts: self.adverts,
            next_step: self.next_step,
            contributions: self.contributions,
        };
        Ok((accepted, self.coverage))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer as _;

    use super::*;
    use veil_governance::Rule;

    struct Parties {
        roster: Roster,
        keys: Vec<ed25519_dalek::SigningKey>,
    }

    fn parties(n: u8) -> Parties {
        let mut roster = Roster::new();
        let keys: Vec<_> =
            (0..n).map(|i| ed25519_dalek::SigningKey::from_bytes(&[i + 1; 32])).collect();
        for (i, k) in keys.iter().enumerate() {
            roster.insert(PartyId(i as u32), k.verifying_key());
        }
        Parties { roster, keys }
    }

    fn head() -> Option<Head> {
        Some(Head { seq: 1, hash: "ab".repeat(32), signature: None })
    }

    impl Parties {
        fn reply(&self, from: u32, decision: Decision) -> Reply {
            let decline = match &decision {
                Decision::Decline(d) => Some(d.clone()),
                _ => None,
            };
            let statement = decision_statement("job", "hash", decline.as_ref());
            Reply {
                from: PartyId(from),
                signature: self.keys[from as usize].sign(&statement).to_bytes().to_vec(),
                decision,
                job_hash: "hash".into(),
                dataset_sha256: String::new(),
                next_step: 0,
                advertise: Vec::new(),
                min_cohort: 2,
                head: head(),
            }
        }
    }

    fn ids(v: &[u32]) -> Vec<PartyId> {
        v.iter().copied().map(PartyId).collect()
    }

    #[test]
    fn every_serving_party_is_accounted_for_with_why_it_is_missing() {
        let p = parties(6);
        let serving: BTreeSet<PartyId> = ids(&[0, 1, 2, 3, 4, 5]).into_iter().collect();
        let mut offer = Offering::new("job", "hash", 2, &serving, &ids(&[0, 1, 2, 3, 4]));
        offer.reply(&p.roster, p.reply(0, Decision::Accept));
        offer.reply(&p.roster, p.reply(1, Decision::Accept));
        let budget = Decline::refused(Rule::Budget, "spent");
        offer.reply(&p.roster, p.reply(2, Decision::Decline(budget)));
        let unreadable = Decline::DataUnavailable("dataset \"d\" cannot be read".into());
        offer.reply(&p.roster, p.reply(3, Decision::Decline(unreadable)));
        assert!(!offer.is_settled());
        offer.departed(PartyId(4));
        assert!(offer.is_settled());
        let (accepted, mut coverage) = offer.close(30, false).unwrap();
        assert_eq!(accepted.parties, ids(&[0, 1]));
        coverage.settle(&ids(&[0]), &BTreeMap::new());
        let outcomes: Vec<String> =
            coverage.entries().iter().map(|e| e.outcome.describe()).collect();
        assert_eq!(outcomes[0], "contributed");
        assert!(outcomes[1].starts_with("dropped out: left the round"), "{}", outcomes[1]);
        assert_eq!(outcomes[2], "refused by rule budget: spent");
        assert!(outcomes[3].starts_with("data unavailable"), "{}", outcomes[3]);
        assert_eq!(outcomes[4], "offline: disconnected before it answered the offer");
        assert_eq!(outcomes[5], "offline: not connected when the job was offered");
        assert_eq!(coverage.counts(), (6, 1));
        assert_eq!(Coverage::from_json(&coverage.to_json()).unwrap(), coverage);
    }

    #[test]
    fn forged_late_and_repeated_replies_do_not_count() {
        let p = parties(3);
        let serving: BTreeSet<PartyId> = ids(&[0, 1, 2]).into_iter().collect();
        let mut offer = Offering::new("job", "hash", 2, &serving, &ids(&[0, 1, 2]));
        // Party 1's acceptance signed by party 0's key.
        let mut forged = p.reply(1, Decision::Accept);
        forged.signature = p.reply(0, Decision::Accept).signature;
        offer.reply(&p.roster, forged);
        // A second reply from party 1, genuine this time, is not waited for any more.
        offer.reply(&p.roster, p.reply(1, Decision::Accept));
        // An acceptance without the party's log head.
        let mut headless = p.reply(2, Decision::Accept);
        headless.head = None;
        offer.reply(&p.roster, headless);
        // A decline whose signature covers another kind of no.
        offer.reply(&p.roster, p.reply(0, Decision::Malformed("rule \"x\" unknown".into())));
        let (failure, coverage) = offer.close(30, false).unwrap_err();
        assert!(matches!(failure, OfferFailure::TooFew { accepted: 0, offered: 3, needed: 2, .. }));
        let text = failure.to_string();
        assert!(text.contains("party 1 failed: sent an unsigned or mismatched decision"), "{text}");
        assert!(text.contains("party 2 failed: accepted without its audit log head"), "{text}");
        assert_eq!(coverage.counts(), (3, 0));
    }

    #[test]
    fn a_consumer_that_requires_all_gets_a_failure_not_a_partial_answer() {
        let p = parties(3);
        let serving: BTreeSet<PartyId> = ids(&[0, 1, 2]).into_iter().collect();
        let run = |require_all| {
            let mut offer = Offering::new("job", "hash", 2, &serving, &ids(&[0, 1]));
            offer.reply(&p.roster, p.reply(0, Decision::Accept));
            offer.reply(&p.roster, p.reply(1, Decision::Accept));
            offer.close(30, require_all)
        };
        assert_eq!(run(false).unwrap().0.parties, ids(&[0, 1]));
        let (failure, _) = run(true).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "the job requires every party that serves the dataset, and 1 of 3 will not take part: \
             party 2 offline: not connected when the job was offered"
        );
    }

    #[test]
    fn the_largest_minimum_a_party_asks_for_binds_the_round() {
        let p = parties(3);
        let serving: BTreeSet<PartyId> = ids(&[0, 1, 2]).into_iter().collect();
        let mut offer = Offering::new("job", "hash", 2, &serving, &ids(&[0, 1, 2]));
        offer.reply(&p.roster, p.reply(0, Decision::Accept));
        let mut strict = p.reply(1, Decision::Accept);
        strict.min_cohort = 3;
        offer.reply(&p.roster, strict);
        let (failure, _) = offer.close(5, false).unwrap_err();
        let text = failure.to_string();
        assert!(text.contains("2 of 3 parties accepted; the job needs 3"), "{text}");
        assert!(text.contains("party 2 no answer: did not answer within 5s"), "{text}");
        assert!(text.contains("combines its data with at least 3"), "{text}");
    }
}
