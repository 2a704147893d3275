//! Catalog grades, column tags and owner policies, and their evaluation for one job.
//!
//! A dataset's grade carries defaults that a policy may tighten but never loosen: **core** data
//! takes part in no job; **important** data only in jobs that declare a differential-privacy
//! charge and a k-threshold; **general** data as its policy says. Columns tagged `identifier`
//! are never aggregated, filtered on or grouped by, whatever the policy lists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scan::ColumnTag;

/// A dataset's grade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    /// Usable as its policy says.
    #[default]
    General,
    /// Only with differential privacy and a k-threshold.
    Important,
    /// Takes part in nothing.
    Core,
}

/// An owner's policy for one dataset. Every field is optional; an empty list allows anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Purposes a job may declare.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Job kinds allowed (`column-aggregates`, `train`, `synthetic`).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Columns a job may read; when empty, every column not tagged identifier.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Consumers allowed; when empty, any consumer in the roster.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Columns a private set intersection may match on; when empty, none.
    #[serde(default)]
    pub join_keys: Vec<String>,
    /// The fewest keys the other side of an intersection may bring: the size of an
    /// intersection with a small set tells whether those few keys are among this dataset's.
    pub min_join_keys: Option<u64>,
    /// Parties (by their roster name) that may learn which of their own keys this dataset
    /// holds: the group side of a private join learns it (so that it can group the matches),
    /// and this dataset exchanges with no other party; when empty, with none, and it takes no
    /// part in joins as their value side.
    #[serde(default)]
    pub reveal_membership_to: Vec<String>,
    /// Trainer programs (by the SHA-256 of their source, in hex) that training jobs may run on
    /// this dataset; when empty, none.
    #[serde(default)]
    pub trainers: Vec<String>,
    /// The fewest parties this dataset's rows may be combined with.
    pub min_cohort: Option<u32>,
    /// Released groups (histogram bins) with fewer members are suppressed; a job must declare
    /// at least this k.
    pub k_threshold: Option<u64>,
    /// Every release must declare a differential-privacy charge.
    #[serde(default)]
    pub require_dp: bool,
    /// The largest zCDP ρ one release may charge.
    pub max_rho_per_release: Option<f64>,
    /// Total ρ per consumer.
    pub budget_per_consumer: Option<f64>,
    /// Total ρ over all consumers.
    pub budget_total: Option<f64>,
    /// After this day (`YYYY-MM-DD`, UTC) the dataset takes part in nothing.
    pub expires: Option<String>,
    /// How many jobs the dataset may take part in.
    pub max_uses: Option<u64>,
}

impl Policy {
    /// Whether `party` (a roster name) may learn which of its own keys dataset `dataset`
    /// holds: a join's value side asks it of the group side it is started with.
    pub fn may_learn_membership(&self, dataset: &str, party: &str) -> Result<(), Denial> {
        if self.reveal_membership_to.iter().any(|x| x == party) {
            return Ok(());
        }
        deny(
            Rule::RevealMembership,
            format!(
                "the exchange would tell party {party:?} which of its keys {dataset:?} holds; the policy of {dataset:?} does not name it in reveal_membership_to"
            ),
        )
    }
}

/// A dataset's governance: grade, column tags, policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatasetGovernance {
    /// The dataset's name.
    pub dataset: String,
    /// Its grade.
    pub grade: Grade,
    /// Column tags; untagged columns are general.
    pub tags: BTreeMap<String, ColumnTag>,
    /// Its policy.
    pub policy: Policy,
}

/// What a job asks of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Request<'a> {
    /// The consumer.
    pub consumer: &'a str,
    /// The declared purpose (empty if none).
    pub purpose: &'a str,
    /// The job kind.
    pub kind: &'a str,
    /// Columns aggregated.
    pub aggregated: Vec<&'a str>,
    /// Columns filtered on.
    pub filtered: Vec<&'a str>,
    /// Columns grouped by.
    pub grouped: Vec<&'a str>,
    /// Columns matched with another party's (the key of a set intersection).
    pub joined: Vec<&'a str>,
    /// Whether the job tells another party which of its own keys this dataset holds (a join's
    /// value side tells its group side); which party, the exchange's start says, and
    /// [`Policy::may_learn_membership`] decides.
    pub reveals_membership: bool,
    /// The SHA-256 (hex) of the trainer program a training job runs on the rows, if any.
    pub trainer: Option<&'a str>,
    /// The declared zCDP charge, if any.
    pub rho: Option<f64>,
    /// The declared k-threshold, if any.
    pub k_threshold: Option<u64>,
    /// Today, `YYYY-MM-DD` (UTC).
    pub today: &'a str,
    /// Jobs this dataset already took part in.
    pub uses: u64,
}

/// The rule behind a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Rule {
    /// The dataset is graded core.
    CoreGrade,
    /// The policy has expired.
    Expired,
    /// The dataset's use count is exhausted.
    UsesExhausted,
    /// The consumer is not on the allow-list.
    Consumer,
    /// The purpose is not allowed.
    Purpose,
    /// The job kind is not allowed.
    Kind,
    /// An identifier column is used.
    IdentifierColumn,
    /// A column outside the allowed list is used.
    Column,
    /// Important data needs a declared differential-privacy charge.
    ImportantNeedsDp,
    /// Important data needs a k-threshold.
    ImportantNeedsKThreshold,
    /// The policy requires differential privacy.
    DpRequired,
    /// The declared charge exceeds the per-release maximum.
    DpFloor,
    /// The declared k-threshold is below the policy's.
    KThreshold,
    /// The cohort is smaller than the party's minimum.
    Cohort,
    /// The round tolerates fewer colluding parties than the party requires.
    Collusion,
    /// A budget would be exceeded.
    Budget,
    /// The job is not signed by the consumer the offer names, under the roster's key.
    ConsumerSignature,
    /// The job matches on a column the policy does not name as a join key.
    JoinKey,
    /// The other side of an intersection brings fewer keys than the policy's minimum.
    JoinSize,
    /// The job would tell another dataset's owner which of its keys this dataset holds, and
    /// the policy does not name that dataset.
    RevealMembership,
    /// The job runs a trainer program the policy does not approve, or one the party cannot
    /// confine.
    Trainer,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 21] = [
        Rule::CoreGrade,
        Rule::Expired,
        Rule::UsesExhausted,
        Rule::Consumer,
        Rule::Purpose,
        Rule::Kind,
        Rule::IdentifierColumn,
        Rule::Column,
        Rule::ImportantNeedsDp,
        Rule::ImportantNeedsKThreshold,
        Rule::DpRequired,
        Rule::DpFloor,
        Rule::KThreshold,
        Rule::Cohort,
        Rule::Collusion,
        Rule::Budget,
        Rule::ConsumerSignature,
        Rule::JoinKey,
        Rule::JoinSize,
        Rule::RevealMembership,
        Rule::Trainer,
    ];

    /// The rule with this name.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The rule's name as it appears in refusals and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Rule::CoreGrade => "core-grade",
            Rule::Expired => "expired",
            Rule::UsesExhausted => "uses-exhausted",
            Rule::Consumer => "consumer",
            Rule::Purpose => "purpose",
            Rule::Kind => "kind",
            Rule::IdentifierColumn => "identifier-column",
            Rule::Column => "column",
            Rule::ImportantNeedsDp => "important-needs-dp",
            Rule::ImportantNeedsKThreshold => "important-needs-k-threshold",
            Rule::DpRequired => "dp-required",
            Rule::DpFloor => "dp-floor",
            Rule::KThreshold => "k-threshold",
            Rule::Cohort => "cohort",
            Rule::Collusion => "collusion",
            Rule::Budget => "budget",
            Rule::ConsumerSignature => "consumer-signature",
            Rule::JoinKey => "join-key",
            Rule::JoinSize => "join-size",
            Rule::RevealMembership => "reveal-membership",
            Rule::Trainer => "trainer",
        }
    }
}

/// A refusal: the rule and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused by rule {}: {message}", rule.name())]
pub struct Denial {
    /// The rule.
    pub rule: Rule,
    /// What to do about it.
    pub message: String,
}

fn deny(rule: Rule, message: String) -> Result<(), Denial> {
    Err(Denial { rule, message })
}

/// Evaluates a job against a dataset's grade, tags and policy. Budgets are checked when the
/// charge is reserved ([`crate::budget::Ledger`]), atomically.
pub fn evaluate(g: &DatasetGovernance, r: &Request<'_>) -> Result<(), Denial> {
    let p = &g.policy;
    let d = &g.dataset;
    if g.grade == Grade::Core {
        return deny(
            Rule::CoreGrade,
            format!("dataset {d:?} is graded core and takes part in no job"),
        );
    }
    if let Some(expires) = &p.expires {
        if r.today > expires.as_str() {
            return deny(Rule::Expired, format!("the policy for {d:?} expired on {expires}"));
        }
    }
    if let Some(max) = p.max_uses {
        if r.uses >= max {
            return deny(
                Rule::UsesExhausted,
                format!("{d:?} may take part in {max} jobs and has taken part in {}", r.uses),
            );
        }
    }
    if !p.consumers.is_empty() && !p.consumers.iter().any(|c| c == r.consumer) {
        return deny(
            Rule::Consumer,
            format!("consumer {:?} is not on the allow-list of {d:?}", r.consumer),
        );
    }
    if !p.purposes.is_empty() && !p.purposes.iter().any(|x| x == r.purpose) {
        let declared = if r.purpose.is_empty() {
            "no purpose".to_string()
        } else {
            format!("purpose {:?}", r.purpose)
        };
        return deny(
            Rule::Purpose,
            format!("the job declares {declared}; {d:?} allows {}", p.purposes.join(", ")),
        );
    }
    if !p.kinds.is_empty() && !p.kinds.iter().any(|k| k == r.kind) {
        return deny(
            Rule::Kind,
            format!("{d:?} allows {} jobs, not {}", p.kinds.join(", "), r.kind),
        );
    }
    for c in &r.joined {
        if !p.join_keys.iter().any(|k| k == c) {
            let allowed = if p.join_keys.is_empty() {
                "names no join keys".to_string()
            } else {
                format!("allows joins on {} only", p.join_keys.join(", "))
            };
            return deny(
                Rule::JoinKey,
                format!("the job matches {d:?} on column {c:?}; its policy {allowed}"),
            );
        }
    }
    if let Some(hash) = r.trainer {
        if !p.trainers.iter().any(|t| t.eq_ignore_ascii_case(hash)) {
            return deny(
                Rule::Trainer,
                format!(
                    "the job runs trainer program sha256:{hash}, which the policy of {d:?} does not approve (its owner adds the hash to trainers after reading the program)"
                ),
            );
        }
    }
    if r.reveals_membership && p.reveal_membership_to.is_empty() {
        return deny(
            Rule::RevealMembership,
            format!(
                "the job tells another party which of its keys {d:?} holds; the policy of {d:?} names no party in reveal_membership_to"
            ),
        );
    }
    let used = r.aggregated.iter().chain(&r.filtered).chain(&r.grouped);
    for c in used.clone() {
        if g.tags.get(*c) == Some(&ColumnTag::Identifier) {
            return deny(
                Rule::IdentifierColumn,
                format!(
                    "column {c:?} of {d:?} is an identifier: it is never aggregated, filtered on or grouped by"
                ),
            );
        }
    }
    if !p.columns.is_empty() {
        for c in used {
            if !p.columns.iter().any(|a| a == c) {
                return deny(
                    Rule::Column,
                    format!(
                        "column {c:?} of {d:?} is not among the allowed columns ({})",
                        p.columns.join(", ")
                    ),
                );
            }
        }
    }
    if g.grade == Grade::Important {
        if r.rho.is_none() {
            return deny(
                Rule::ImportantNeedsDp,
                format!(
                    "{d:?} is graded important: jobs must declare a differential-privacy charge (privacy.rho)"
                ),
            );
        }
        if r.k_threshold.is_none() {
            return deny(
                Rule::ImportantNeedsKThreshold,
                format!("{d:?} is graded important: jobs must declare a k_threshold"),
            );
        }
    }
    if p.require_dp && r.rho.is_none() {
        return deny(
            Rule::DpRequired,
            format!("the policy of {d:?} requires a differential-privacy charge (privacy.rho)"),
        );
    }
    if let (Some(max), Some(rho)) = (p.max_rho_per_release, r.rho) {
        if rho > max {
            return deny(
                Rule::DpFloor,
                format!("the job charges ρ = {rho}; {d:?} allows at most ρ = {max} per release"),
            );
        }
    }
    if let Some(k) = p.k_threshold {
        if r.k_threshold.is_none_or(|j| j < k) {
            return deny(Rule::KThreshold, format!("{d:?} requires k_threshold ≥ {k}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gov(grade: Grade, policy: Policy) -> DatasetGovernance {
        let mut tags = BTreeMap::new();
        tags.insert("tailnum".to_string(), ColumnTag::Identifier);
        DatasetGovernance { dataset: "flights".into(), grade, tags, policy }
    }

    fn req<'a>() -> Request<'a> {
        Request {
            consumer: "analyst",
            purpose: "research",
            kind: "column-aggregates",
            aggregated: vec!["dep_delay"],
            filtered: vec!["month"],
            grouped: vec![],
            joined: vec![],
            reveals_membership: false,
            trainer: None,
            rho: None,
            k_threshold: None,
            today: "2026-11-23",
            uses: 0,
        }
    }

    fn rule(g: &DatasetGovernance, r: &Request<'_>) -> Option<Rule> {
        evaluate(g, r).err().map(|d| d.rule)
    }

    #[test]
    fn every_rule_refuses_with_its_name() {
        let general = gov(Grade::General, Policy::default());
        assert_eq!(rule(&general, &req()), None);
        assert_eq!(rule(&gov(Grade::Core, Policy::default()), &req()), Some(Rule::CoreGrade));
        let p = |f: fn(&mut Policy)| {
            let mut p = Policy::default();
            f(&mut p);
            gov(Grade::General, p)
        };
        assert_eq!(
            rule(&p(|p| p.expires = Some("2026-01-01".into())), &req()),
            Some(Rule::Expired)
        );
        assert_eq!(rule(&p(|p| p.expires = Some("2026-12-31".into())), &req()), None);
        assert_eq!(rule(&p(|p| p.max_uses = Some(0)), &req()), Some(Rule::UsesExhausted));
        assert_eq!(rule(&p(|p| p.consumers = vec!["other".into()]), &req()), Some(Rule::Consumer));
        assert_eq!(rule(&p(|p| p.purposes = vec!["billing".into()]), &req()), Some(Rule::Purpose));
        assert_eq!(rule(&p(|p| p.kinds = vec!["synthetic".into()]), &req()), Some(Rule::Kind));
        assert_eq!(rule(&p(|p| p.columns = vec!["dep_delay".into()]), &req()), Some(Rule::Column));
        assert_eq!(rule(&p(|p| p.require_dp = true), &req()), Some(Rule::DpRequired));
        assert_eq!(rule(&p(|p| p.k_threshold = Some(5)), &req()), Some(Rule::KThreshold));
        let mut with_dp = req();
        with_dp.rho = Some(0.5);
        assert_eq!(rule(&p(|p| p.max_rho_per_release = Some(0.25)), &with_dp), Some(Rule::DpFloor));
        let mut id = req();
        id.filtered = vec!["tailnum"];
        assert_eq!(rule(&general, &id), Some(Rule::IdentifierColumn));
        // An identifier may be a join key, and only one the policy names.
        let mut join = req();
        join.joined = vec!["tailnum"];
        assert_eq!(rule(&general, &join), Some(Rule::JoinKey));
        assert_eq!(rule(&p(|p| p.join_keys = vec!["carrier".into()]), &join), Some(Rule::JoinKey));
        assert_eq!(rule(&p(|p| p.join_keys = vec!["tailnum".into()]), &join), None);
        // A join's value side tells its group side which keys it holds: only to parties the
        // policy names.
        join.reveals_membership = true;
        fn keys(p: &mut Policy) {
            p.join_keys = vec!["tailnum".into()];
        }
        fn other(p: &mut Policy) {
            keys(p);
            p.reveal_membership_to = vec!["registry".into()];
        }
        fn named(p: &mut Policy) {
            keys(p);
            p.reveal_membership_to = vec!["planes".into()];
        }
        assert_eq!(rule(&p(keys), &join), Some(Rule::RevealMembership));
        assert_eq!(rule(&p(other), &join), None);
        assert_eq!(rule(&p(named), &join), None);
        let mut policy = Policy::default();
        named(&mut policy);
        assert!(policy.may_learn_membership("flights", "planes").is_ok());
        let denial = policy.may_learn_membership("flights", "broker").unwrap_err();
        assert_eq!(denial.rule, Rule::RevealMembership);
    }

    #[test]
    fn grades_set_defaults_a_policy_cannot_loosen() {
        let important = gov(Grade::Important, Policy::default());
        assert_eq!(rule(&important, &req()), Some(Rule::ImportantNeedsDp));
        let mut r = req();
        r.rho = Some(0.1);
        assert_eq!(rule(&important, &r), Some(Rule::ImportantNeedsKThreshold));
        r.k_threshold = Some(10);
        assert_eq!(rule(&important, &r), None);
        // Listing an identifier column as allowed does not make it usable.
        let p = Policy {
            columns: vec!["tailnum".into(), "dep_delay".into(), "month".into()],
            ..Policy::default()
        };
        let mut id = req();
        id.aggregated = vec!["tailnum"];
        assert_eq!(rule(&gov(Grade::General, p), &id), Some(Rule::IdentifierColumn));
    }

    #[test]
    fn refusals_read_well() {
        let g =
            gov(Grade::General, Policy { purposes: vec!["billing".into()], ..Policy::default() });
        let mut r = req();
        r.purpose = "";
        let e = evaluate(&g, &r).unwrap_err().to_string();
        assert_eq!(
            e,
            "refused by rule purpose: the job declares no purpose; \"flights\" allows billing"
        );
    }
}
