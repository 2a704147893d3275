//! A party's answer to a job offer: taking part, or one of three kinds of no, signed.
//!
//! A policy refusal names its rule ([`Denial`]); a party that cannot read the data says so
//! without naming its files; anything else is a fault. The consumer is shown which of the three
//! kept each party out of an answer, so the kinds travel and are signed apart from the text.

use sha2::{Digest, Sha256};

use crate::policy::{Denial, Rule};

/// Why a party does not take part in a job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Decline {
    /// Its policy refuses the job.
    #[error(transparent)]
    Refused(#[from] Denial),
    /// It cannot read the data the job needs. The message names the dataset, never a path.
    #[error("data unavailable: {0}")]
    DataUnavailable(String),
    /// Anything else: an unsupported or malformed offer, a busy party, a store error.
    #[error("{0}")]
    Fault(String),
}

/// The kind of a [`Decline`], as it travels and is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclineKind {
    /// A policy refusal.
    Refused,
    /// The data cannot be read.
    DataUnavailable,
    /// Any other failure.
    Fault,
}

impl DeclineKind {
    /// The name signed in the decision statement.
    pub fn name(self) -> &'static str {
        match self {
            DeclineKind::Refused => "refused",
            DeclineKind::DataUnavailable => "data-unavailable",
            DeclineKind::Fault => "fault",
        }
    }
}

impl Decline {
    /// A policy refusal under `rule`.
    pub fn refused(rule: Rule, message: impl Into<String>) -> Self {
        Decline::Refused(Denial { rule, message: message.into() })
    }

    /// Its kind.
    pub fn kind(&self) -> DeclineKind {
        match self {
            Decline::Refused(_) => DeclineKind::Refused,
            Decline::DataUnavailable(_) => DeclineKind::DataUnavailable,
            Decline::Fault(_) => DeclineKind::Fault,
        }
    }

    /// The rule, for a policy refusal.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Decline::Refused(d) => Some(d.rule),
            _ => None,
        }
    }

    /// The message alone, without the kind or rule.
    pub fn message(&self) -> &str {
        match self {
            Decline::Refused(d) => &d.message,
            Decline::DataUnavailable(m) | Decline::Fault(m) => m,
        }
    }

    /// Rebuilds a decline from its wire parts; `None` if the kind and rule do not fit together
    /// (a refusal must name a known rule, the others none).
    pub fn from_parts(kind: DeclineKind, rule: &str, message: String) -> Option<Self> {
        match (kind, rule) {
            (DeclineKind::Refused, rule) => {
                Some(Decline::Refused(Denial { rule: Rule::from_name(rule)?, message }))
            }
            (DeclineKind::DataUnavailable, "") => Some(Decline::DataUnavailable(message)),
            (DeclineKind::Fault, "") => Some(Decline::Fault(message)),
            _ => None,
        }
    }
}

/// The statement a party signs when it answers an offer (`None`: it takes part): SHA-256 over a
/// label and the length-prefixed job id, job hash, kind, rule and message.
pub fn decision_statement(job_id: &str, job_hash: &str, decline: Option<&Decline>) -> Vec<u8> {
    let (kind, rule, message) = match decline {
        None => ("accept", "", ""),
        Some(d) => (d.kind().name(), d.rule().map_or("", Rule::name), d.message()),
    };
    let mut h = Sha256::new();
    h.update(b"veil/task-decision/v2");
    for part in [job_id, job_hash, kind, rule, message] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_vec()
}

/// The statement a side of a private set intersection signs over each message it sends: the
/// job, the exchange's session, the sender and the message.
pub fn psi_message_statement(
    job_id: &str,
    session: &[u8; 32],
    sender: u32,
    message: &[u8],
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"veil/psi-message/v1");
    h.update((job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(session);
    h.update(sender.to_le_bytes());
    h.update(message);
    h.finalize().to_vec()
}

/// What one side of a private set intersection signs when its part is done: the job, the
/// exchange's session, both sides' parties and the counts it saw. The client signs the
/// intersection's size with them; the server signs zero there. The coordinator releases the
/// size only with both signatures over the same counts, so neither side, nor the coordinator
/// relaying them, can make up the other's part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PsiOutcome<'a> {
    /// The job.
    pub job_id: &'a str,
    /// Its hash.
    pub job_hash: &'a str,
    /// The exchange's session.
    pub session: &'a [u8; 32],
    /// The client's party.
    pub client: u32,
    /// The server's party.
    pub server: u32,
    /// The intersection's size (the client's part; zero from the server).
    pub intersection: u64,
    /// Distinct keys the client brought.
    pub client_keys: u64,
    /// Distinct keys the server brought.
    pub server_keys: u64,
}

impl PsiOutcome<'_> {
    /// The statement the side `signer` (the client's or the server's party) signs.
    pub fn statement(&self, signer: u32) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"veil/psi-outcome/v1");
        for part in [self.job_id, self.job_hash] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(self.session);
        for n in [self.client, self.server, signer] {
            h.update(n.to_le_bytes());
        }
        for n in [self.intersection, self.client_keys, self.server_keys] {
            h.update(n.to_le_bytes());
        }
        h.finalize().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intersection_outcome_binds_its_session_parties_signer_and_counts() {
        let base = PsiOutcome {
            job_id: "j",
            job_hash: "h",
            session: &[1; 32],
            client: 0,
            server: 1,
            intersection: 5,
            client_keys: 10,
            server_keys: 20,
        };
        let other_session = [2; 32];
        let variants = [
            PsiOutcome { session: &other_session, ..base },
            PsiOutcome { server: 2, ..base },
            PsiOutcome { intersection: 6, ..base },
            PsiOutcome { client_keys: 11, ..base },
            PsiOutcome { job_id: "k", ..base },
        ];
        for v in variants {
            assert_ne!(v.statement(0), base.statement(0));
        }
        assert_ne!(base.statement(0), base.statement(1), "the signer is bound");
    }

    #[test]
    fn every_rule_round_trips_by_name() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_name(rule.name()), Some(rule));
        }
        assert_eq!(Rule::from_name("no-such-rule"), None);
    }

    #[test]
    fn a_decline_round_trips_through_its_parts_and_misfits_are_refused() {
        let cases = [
            Decline::refused(Rule::Budget, "spent"),
            Decline::DataUnavailable("dataset \"d\" cannot be read".into()),
            Decline::Fault("busy".into()),
        ];
        for d in cases {
            let rule = d.rule().map_or("", Rule::name);
            assert_eq!(Decline::from_parts(d.kind(), rule, d.message().into()), Some(d.clone()));
        }
        assert_eq!(Decline::from_parts(DeclineKind::Refused, "", "x".into()), None);
        assert_eq!(Decline::from_parts(DeclineKind::Fault, "budget", "x".into()), None);
    }

    #[test]
    fn the_statement_binds_the_kind_the_rule_and_the_message() {
        let statement = |d: Option<&Decline>| decision_statement("j", "h", d);
        let statements = [
            statement(None),
            statement(Some(&Decline::refused(Rule::Budget, "m"))),
            statement(Some(&Decline::refused(Rule::Purpose, "m"))),
            statement(Some(&Decline::DataUnavailable("m".into()))),
            statement(Some(&Decline::Fault("m".into()))),
            statement(Some(&Decline::Fault("n".into()))),
        ];
        for (i, a) in statements.iter().enumerate() {
            for b in &statements[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_ne!(decision_statement("j", "h", None), decision_statement("j", "g", None));
    }
}
