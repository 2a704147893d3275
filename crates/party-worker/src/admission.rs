//! Admission: whether this party takes part in an offered job, decided with no I/O.
//!
//! In order, an offer must be in the canonical form its hash covers, name a well-formed
//! session, carry the coordinator's signed log head, be signed by the consumer it names (rule
//! `consumer-signature`), not reuse another consumer's job id, and then pass the per-kind
//! checks: the dataset is served and has what the job reads, the owner's policy allows the
//! request, and the budget can pay for it. What the party then has to compute (scan a dataset,
//! load training rows, draw a synthetic vector) is the [`Work`] it is handed; the worker does
//! that I/O. Every no is a typed [`Decline`].

use veil_analytics::{Job, Plan};
use veil_governance::audit::Head;
use veil_governance::budget::{Reservation, Spent};
use veil_governance::{Decline, Request, Rule};
use veil_learning::job::TrainSpec;
use veil_learning::train::Standardizer;
use veil_proto::submission;

use crate::config::{DatasetConfig, PartyConfig};
use crate::store::caps;

/// Most training jobs a party takes part in at once (each keeps its rows in memory).
pub const MAX_TRAINING_JOBS: usize = 4;

/// Most intersections a party takes part in at once (each keeps its keys in memory).
pub const MAX_INTERSECTIONS: usize = 2;

/// What admission reads of the party's records.
pub trait Records {
    /// Jobs a dataset already took part in.
    fn uses(&self, dataset: &str) -> Result<u64, String>;
    /// ρ spent on a dataset, by a consumer and in all.
    fn spent(&self, dataset: &str, consumer: &str) -> Result<Spent, String>;
    /// A training job's hash and the first step it still accepts, if it took part before.
    fn training_progress(&self, job_id: &str) -> Result<Option<(String, i64)>, String>;
    /// The consumer a job id was charged to, if it was.
    fn charged_consumer(&self, job_id: &str) -> Result<Option<String>, String>;
}

/// An offer as admission reads it.
#[derive(Clone, Copy, Debug)]
pub struct Offer<'a> {
    /// The job id.
    pub job_id: &'a str,
    /// The specification's canonical JSON.
    pub spec_json: &'a str,
    /// The consumer it names.
    pub consumer: &'a str,
    /// That consumer's signature over the job.
    pub consumer_signature: &'a [u8],
    /// The round's session, for one-round secure jobs (else empty).
    pub session: &'a [u8],
    /// The coordinator's signed log head at the offer.
    pub coordinator_head: Option<&'a Head>,
}

/// What admission needs to know of the moment.
#[derive(Clone, Copy, Debug)]
pub struct Situation<'a> {
    /// Today, `YYYY-MM-DD` (UTC).
    pub today: &'a str,
    /// Whether the party runs for benchmarks (synthetic and plain jobs).
    pub dangerous_benchmark: bool,
    /// Training jobs whose rows the party holds now.
    pub training_jobs: usize,
    /// Intersections under way (their keys in memory).
    pub intersections: usize,
    /// Why this system cannot confine trainer programs, if it cannot.
    pub no_sandbox: Option<&'a str>,
}

/// What the party computes for an admitted job.
#[derive(Debug)]
pub enum Work {
    /// Scan a dataset through the job's plan.
    Columns {
        /// The dataset.
        dataset: Box<DatasetConfig>,
        /// The plan.
        plan: Box<Plan>,
    },
    /// Load a dataset's training rows and take part in the steps from `next_step` on.
    Train {
        /// The dataset.
        dataset: Box<DatasetConfig>,
        /// The job.
        spec: Box<TrainSpec>,
        /// The standardisation its declared bounds give (DP jobs).
        declared: Option<Standardizer>,
        /// The first step it still contributes to (more than 0 when offered again).
        next_step: u64,
    },
    /// Draw a random benchmark vector.
    Synthetic {
        /// Elements.
        dim: u32,
    },
    /// Read a dataset's key column for a private set intersection in `role`.
    Psi {
        /// The dataset.
        dataset: Box<DatasetConfig>,
        /// The key column.
        column: String,
        /// Client (computes the result) or server.
        role: PsiSide,
        /// Match keys regardless of case.
        case_fold: bool,
        /// The fewest keys the other side may bring (the dataset's policy).
        min_peer_keys: Option<u64>,
        /// The variance of the noise the client adds to the size, for a private release.
        noise_variance: Option<u64>,
        /// Whether the client gets the intersection itself, not only its size.
        intersection: bool,
        /// At the server, the parties its policy lets learn which of its keys it holds.
        reveal_to: Vec<String>,
    },
    /// Read a dataset's keys with their groups, or with their per-key aggregates, for a
    /// private join.
    Join {
        /// The dataset.
        dataset: Box<DatasetConfig>,
        /// The key column.
        key: String,
        /// What this side brings.
        side: JoinSide,
        /// Match keys regardless of case.
        case_fold: bool,
        /// The fewest keys the other side may bring (the dataset's policy).
        min_peer_keys: Option<u64>,
        /// Values per key and groups: the exchange's shape.
        shape: (u32, u32),
        /// The answer's layout, for a differentially private join's noise.
        answer: Box<veil_analytics::JobSpec>,
    },
}

/// A party's side of a private join.
#[derive(Debug)]
pub enum JoinSide {
    /// It groups: each of its keys has a group, the slot of its value in `groups`.
    Group {
        /// The column whose values name the groups, with its declared domain.
        groups: veil_analytics::GroupBy,
    },
    /// Its rows are aggregated per key through `plan` (the job's aggregate without grouping).
    Value {
        /// The per-key plan.
        plan: Box<Plan>,
    },
}

/// A party's side of a private set intersection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsiSide {
    /// It learns the result and reports it.
    Client,
    /// It answers.
    Server,
}

/// An admitted job.
#[derive(Debug)]
pub struct Admission {
    /// The round's session, when the offer fixed it.
    pub session: Option<[u8; 32]>,
    /// The fewest parties its data may be combined with.
    pub min_parties: usize,
    /// The charge to reserve before anything derived from the data leaves (`None`: none).
    pub charge: Option<Reservation>,
    /// What to compute.
    pub work: Work,
}

/// Decides an offer. Returns the job's hash (what the signed reply is about) with the
/// admission or the decline.
pub fn admit(
    config: &PartyConfig,
    situation: &Situation<'_>,
    records: &(impl Records + ?Sized),
    offer: &Offer<'_>,
) -> (String, Result<Admission, Decline>) {
    let job = match Job::parse(offer.spec_json) {
        Ok(j) => j,
        Err(e) => {
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(offer.spec_json));
            return (hash, Err(Decline::Fault(e.to_string())));
        }
    };
    let job_hash = job.hash();
    let decision = decide(config, situation, records, offer, job, &job_hash);
    (job_hash, decision)
}

fn decide(
    config: &PartyConfig,
    situation: &Situation<'_>,
    records: &(impl Records + ?Sized),
    offer: &Offer<'_>,
    job: Job,
    job_hash: &str,
) -> Result<Admission, Decline> {
    let job_id = offer.job_id;
    // The consumer signed the hash of the canonical form; an offer in any other form (TOML,
    // reordered keys) could stand for another job under the same hash.
    if offer.spec_json != job.canonical_json() {
        return Err(Decline::Fault("the offer's specification is not in canonical form".into()));
    }
    // Only one-round secure jobs name their session in the offer; a session offered with
    // another kind is ignored.
    let one_round =
        matches!(&job, Job::Columns(_)) || matches!(&job, Job::Synthetic(s) if !s.plain);
    let session = match <[u8; 32]>::try_from(offer.session) {
        Ok(_) if !one_round => None,
        Ok(s) => Some(s),
        Err(_) if offer.session.is_empty() => None,
        Err(_) => return Err(Decline::Fault("the offer's session is not 32 bytes".into())),
    };
    // The coordinator's head goes into this party's signed log: it must be the coordinator's
    // own, signed for this job, or an audit could not tell whose record is false.
    if let (Some(head), Some(key)) = (offer.coordinator_head, &config.coordinator_key) {
        if !head.signed_by(job_id, key) {
            return Err(Decline::Fault(
                "the offer's coordinator log head is not signed by the roster's coordinator key"
                    .into(),
            ));
        }
    }
    // The consumer the offer names must have signed this very job under this id: otherwise a
    // coordinator could run it past the allow-list or charge it to another consumer's budget.
    let consumer = offer.consumer;
    let signed = config.consumer_keys.get(consumer).is_some_and(|key| {
        let signature = offer.consumer_signature;
        submission::verify_job(key, signature, job_id, job_hash, consumer, job.purpose())
    });
    if !signed {
        let message = if config.consumer_keys.contains_key(consumer) {
            format!(
                "the job is not signed by consumer {consumer:?} under the key the roster lists \
                 for it (job id {job_id}, job hash {job_hash})"
            )
        } else {
            format!(
                "the roster lists no job-signing key for consumer {consumer:?}, so no job of its \
                 can be verified"
            )
        };
        return Err(Decline::refused(Rule::ConsumerSignature, message));
    }
    // A job id is charged to one consumer: the same id signed by another (a training job
    // "resumed" under another consumer's name, say) is not that job.
    match records.charged_consumer(job_id).map_err(Decline::Fault)? {
        Some(charged) if charged != consumer => {
            return Err(Decline::Fault(format!("job id {job_id} is charged to another consumer")));
        }
        _ => {}
    }
    let min_parties = (job.min_parties() as usize).max(config.min_cohort);
    let admission = |min_parties, charge, work| Admission { session, min_parties, charge, work };
    match job {
        Job::Columns(spec) => {
            let dataset = served(config, &spec.dataset)?;
            let plan = Plan::new(&spec, &dataset.schema())
                .map_err(|e| Decline::DataUnavailable(e.to_string()))?;
            let request = Request {
                consumer,
                purpose: &spec.purpose,
                kind: "column-aggregates",
                aggregated: spec.columns.iter().map(|c| c.name.as_str()).collect(),
                // Every column a row is tested on: the simple filter and the SQL WHERE clause.
                filtered: spec
                    .filter
                    .iter()
                    .map(|f| f.column.as_str())
                    .chain(spec.predicate.iter().flat_map(|p| p.columns()))
                    .collect(),
                grouped: spec.group_by.iter().map(|g| g.column.as_str()).collect(),
                joined: Vec::new(),
                reveals_membership: false,
                trainer: None,
                rho: spec.privacy.as_ref().map(|p| p.rho),
                k_threshold: spec.k_threshold,
                today: situation.today,
                uses: records.uses(&dataset.name).map_err(Decline::Fault)?,
            };
            let (min_parties, charge) =
                govern(records, &dataset, &request, job_id, min_parties, false)?;
            let work = Work::Columns { dataset: Box::new(dataset), plan: Box::new(plan) };
            Ok(admission(min_parties, Some(charge), work))
        }
        Job::Train(spec) => {
            let dataset = served(config, &spec.dataset)?;
            if situation.training_jobs >= MAX_TRAINING_JOBS {
                return Err(Decline::Fault(format!(
                    "this party already holds the rows of {MAX_TRAINING_JOBS} training jobs in memory; submit again when one ends"
                )));
            }
            if spec.plain && !situation.dangerous_benchmark {
                return Err(Decline::Fault(
                    "plain (unmasked) training is refused unless the party runs with --dangerous-benchmark".into(),
                ));
            }
            if dataset.postgres.is_some() {
                return Err(Decline::Fault(format!(
                    "training reads CSV and Parquet files; dataset {:?} is a PostgreSQL table",
                    dataset.name
                )));
            }
            if spec.encode.clip_to_bounds {
                if let Some(f) =
                    spec.encode.numeric(&spec.features).find(|f| !dataset.bounds.contains_key(*f))
                {
                    return Err(Decline::DataUnavailable(format!(
                        "the job clips features to their declared bounds, and dataset {:?} declares none for {f:?}",
                        dataset.name
                    )));
                }
            }
            let declared = if spec.standardizes_by_bounds() {
                let bounds =
                    spec.encode.input_bounds(&spec.features, |f| dataset.bounds.get(f).copied());
                match bounds.map(|b| Standardizer::from_bounds(&b)) {
                    Some(Ok(s)) => Some(s),
                    _ => {
                        return Err(Decline::refused(
                            Rule::Column,
                            "a differentially private job standardises with declared bounds; declare bounds for every feature",
                        ));
                    }
                }
            } else {
                None
            };
            // A job this party already took part in (offered again by a restarted
            // coordinator) is bound to its specification, holds its reservation and counts
            // among the dataset's uses already.
            let (resumed, next_step) =
                match records.training_progress(job_id).map_err(Decline::Fault)? {
                    None => (false, 0),
                    Some((hash, next)) if hash == job_hash => (true, next.max(0) as u64),
                    Some(_) => {
                        return Err(Decline::Fault(format!(
                            "job id {job_id} was first used for another training specification"
                        )));
                    }
                };
            let uses = records.uses(&dataset.name).map_err(Decline::Fault)?;
            let rho = spec.rho_total().map_err(|e| Decline::Fault(e.to_string()))?;
            let trainer = spec
                .trainer
                .as_ref()
                .map(|t| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&t.source)));
            if let (Some(_), Some(why)) = (&trainer, situation.no_sandbox) {
                if !config.trainers.allow_unconfined {
                    return Err(Decline::refused(
                        Rule::Trainer,
                        format!(
                            "this party cannot confine a trainer program ({why}), and its owner has not allowed unconfined ones"
                        ),
                    ));
                }
            }
            let mut aggregated: Vec<&str> = spec.features.iter().map(String::as_str).collect();
            aggregated.push(&spec.label);
            let request = Request {
                consumer,
                purpose: &spec.purpose,
                kind: "train",
                aggregated,
                filtered: Vec::new(),
                grouped: Vec::new(),
                joined: Vec::new(),
                reveals_membership: false,
                trainer: trainer.as_deref(),
                rho: spec.privacy.as_ref().map(|_| rho),
                k_threshold: None,
                today: situation.today,
                uses: uses.saturating_sub(u64::from(resumed)),
            };
            let (min_parties, charge) =
                govern(records, &dataset, &request, job_id, min_parties, resumed)?;
            let work = Work::Train { dataset: Box::new(dataset), spec, declared, next_step };
            Ok(admission(min_parties, Some(charge), work))
        }
        Job::Synthetic(s) => {
            if !situation.dangerous_benchmark {
                return Err(Decline::Fault(
                    "synthetic benchmark jobs are refused unless the party runs with --dangerous-benchmark"
                        .into(),
                ));
            }
            Ok(admission(min_parties, None, Work::Synthetic { dim: s.dim }))
        }
        Job::Psi(spec) => {
            let sides = [(&spec.client, PsiSide::Client), (&spec.server, PsiSide::Server)];
            let mine: Vec<_> = sides
                .into_iter()
                .filter(|(side, _)| config.datasets.iter().any(|d| d.name == side.dataset))
                .collect();
            let (side, role) = match mine.as_slice() {
                [one] => *one,
                [] => {
                    return Err(served(config, &spec.client.dataset).err().unwrap_or_else(|| {
                        Decline::DataUnavailable("this party serves neither side".into())
                    }));
                }
                _ => {
                    return Err(Decline::Fault(
                        "this party serves both sides of the intersection".into(),
                    ));
                }
            };
            let dataset = key_dataset(config, &side.dataset, &side.key)?;
            // The two sides are the whole cohort: a party that combines its data with more
            // parties takes part in no intersection.
            if min_parties > 2 {
                return Err(Decline::refused(
                    Rule::Cohort,
                    format!(
                        "an intersection is between two parties; this party's data is combined with at least {min_parties}"
                    ),
                ));
            }
            if situation.intersections >= MAX_INTERSECTIONS {
                return Err(Decline::Fault(format!(
                    "this party already takes part in {MAX_INTERSECTIONS} intersections; submit again when one ends"
                )));
            }
            let request = Request {
                consumer,
                purpose: &spec.purpose,
                kind: "psi",
                aggregated: Vec::new(),
                filtered: Vec::new(),
                grouped: Vec::new(),
                joined: vec![side.key.as_str()],
                // Given its intersection, the client learns which of its keys the server holds.
                trainer: None,
                reveals_membership: role == PsiSide::Server
                    && spec.output == veil_analytics::PsiOutput::Intersection,
                rho: spec.privacy.as_ref().map(|p| p.rho),
                k_threshold: None,
                today: situation.today,
                uses: records.uses(&dataset.name).map_err(Decline::Fault)?,
            };
            let (min_parties, charge) =
                govern(records, &dataset, &request, job_id, min_parties, false)?;
            let work = Work::Psi {
                noise_variance: spec.noise_variance(),
                column: side.key.clone(),
                intersection: spec.output == veil_analytics::PsiOutput::Intersection,
                reveal_to: dataset.policy.reveal_membership_to.clone(),
                min_peer_keys: dataset.policy.min_join_keys,
                dataset: Box::new(dataset),
                role,
                case_fold: spec.case_fold,
            };
            Ok(admission(min_parties, Some(charge), work))
        }
        Job::Join(spec) => {
            let group_side = config.datasets.iter().any(|d| d.name == spec.groups.dataset);
            let value_side = config.datasets.iter().any(|d| d.name == spec.values.dataset);
            let (name, key) = match (group_side, value_side) {
                (true, false) => (&spec.groups.dataset, &spec.groups.key),
                (false, true) => (&spec.values.dataset, &spec.values.key),
                (true, true) => {
                    return Err(Decline::Fault("this party serves both sides of the join".into()));
                }
                (false, false) => {
                    return Err(Decline::DataUnavailable(
                        "this party serves neither side of the join".into(),
                    ));
                }
            };
            let dataset = key_dataset(config, name, key)?;
            if situation.intersections >= MAX_INTERSECTIONS {
                return Err(Decline::Fault(format!(
                    "this party already takes part in {MAX_INTERSECTIONS} intersections; submit again when one ends"
                )));
            }
            let layout = |s: &veil_analytics::JobSpec| {
                veil_analytics::Layout::new(s).map(|l| l.vector_len())
            };
            let invalid =
                |e: veil_analytics::AnalyticsError| Decline::DataUnavailable(e.to_string());
            let segment = layout(&spec.per_key()).map_err(invalid)?;
            let groups = layout(&spec.aggregate).map_err(invalid)? / segment.max(1);
            let shape = (segment as u32, groups as u32);
            let totals = veil_psi::join::JoinParams::totals_bytes(shape.0, shape.1);
            if totals > veil_psi::join::MAX_TOTALS_BYTES {
                return Err(Decline::Fault(format!(
                    "the join's {} groups × {} values per key make {} MB of totals, above the {} MB one message may carry; group by fewer values or aggregate fewer columns",
                    shape.1,
                    shape.0,
                    totals >> 20,
                    veil_psi::join::MAX_TOTALS_BYTES >> 20
                )));
            }
            let aggregate = &spec.aggregate;
            let (request, side) = if group_side {
                let Some(column) = aggregate.group_by.first() else {
                    return Err(Decline::Fault("a join without its group column".into()));
                };
                if dataset.columns.get(&column.column) != Some(&veil_analytics::ColumnType::String)
                {
                    return Err(Decline::DataUnavailable(format!(
                        "dataset {:?} has no text column {:?} to group by",
                        dataset.name, column.column
                    )));
                }
                let request = Request {
                    consumer,
                    purpose: &aggregate.purpose,
                    kind: "join",
                    aggregated: Vec::new(),
                    filtered: Vec::new(),
                    grouped: vec![column.column.as_str()],
                    joined: vec![key.as_str()],
                    reveals_membership: false,
                    trainer: None,
                    rho: aggregate.privacy.as_ref().map(|p| p.rho),
                    k_threshold: aggregate.k_threshold,
                    today: situation.today,
                    uses: records.uses(&dataset.name).map_err(Decline::Fault)?,
                };
                (request, JoinSide::Group { groups: column.clone() })
            } else {
                let plans =
                    veil_analytics::JoinPlans::new(&spec, &dataset.schema()).map_err(invalid)?;
                let plan = plans.per_key;
                let request = Request {
                    consumer,
                    purpose: &aggregate.purpose,
                    kind: "join",
                    aggregated: aggregate.columns.iter().map(|c| c.name.as_str()).collect(),
                    filtered: aggregate
                        .filter
                        .iter()
                        .map(|f| f.column.as_str())
                        .chain(aggregate.predicate.iter().flat_map(|p| p.columns()))
                        .collect(),
                    grouped: Vec::new(),
                    joined: vec![key.as_str()],
                    reveals_membership: true,
                    trainer: None,
                    rho: aggregate.privacy.as_ref().map(|p| p.rho),
                    k_threshold: aggregate.k_threshold,
                    today: situation.today,
                    uses: records.uses(&dataset.name).map_err(Decline::Fault)?,
                };
                (request, JoinSide::Value { plan: Box::new(plan) })
            };
            let (min_parties, charge) =
                govern(records, &dataset, &request, job_id, min_parties, false)?;
            let work = Work::Join {
                key: key.clone(),
                min_peer_keys: dataset.policy.min_join_keys,
                dataset: Box::new(dataset),
                side,
                case_fold: spec.case_fold,
                shape,
                answer: Box::new(spec.aggregate.clone()),
            };
            Ok(admission(min_parties, Some(charge), work))
        }
        Job::Sql(_) => Err(Decline::Fault(
            "a SQL query must be planned by the coordinator before it is offered".into(),
        )),
    }
}

/// A dataset a party matches on `key`: served, the key declared as text (keys are compared
/// as text, exactly as the file holds them, trimmed: a number column would lose digits past
/// 2^53 and leading zeros), and a CSV file.
fn key_dataset(config: &PartyConfig, name: &str, key: &str) -> Result<DatasetConfig, Decline> {
    let dataset = served(config, name)?;
    match dataset.columns.get(key) {
        Some(veil_analytics::ColumnType::String) => {}
        Some(other) => {
            return Err(Decline::DataUnavailable(format!(
                "dataset {:?}: key column {key:?} is declared {other}; declare it string, as keys are compared as text",
                dataset.name
            )));
        }
        None => {
            return Err(Decline::DataUnavailable(format!(
                "dataset {:?} has no column {key:?}",
                dataset.name
            )));
        }
    }
    let parquet = dataset.path.extension().is_some_and(|e| e == "parquet");
    if dataset.postgres.is_some() || parquet {
        return Err(Decline::Fault(format!(
            "intersections and joins read CSV files; dataset {:?} is not one",
            dataset.name
        )));
    }
    Ok(dataset)
}

/// The dataset the job names, if this party serves it.
fn served(config: &PartyConfig, name: &str) -> Result<DatasetConfig, Decline> {
    config.datasets.iter().find(|d| d.name == name).cloned().ok_or_else(|| {
        Decline::DataUnavailable(format!("this party does not serve dataset {name:?}"))
    })
}

/// Evaluates the dataset's policy for a request and takes a first look at the budget (the
/// binding check is the atomic reservation when the round starts; `reserved` skips it for a job
/// whose charge the party already holds); returns the job's minimum cohort under the policy
/// and the charge to reserve.
fn govern(
    records: &(impl Records + ?Sized),
    dataset: &DatasetConfig,
    request: &Request<'_>,
    job_id: &str,
    min_parties: usize,
    reserved: bool,
) -> Result<(usize, Reservation), Decline> {
    let governance = dataset.governance();
    veil_governance::policy::evaluate(&governance, request)?;
    let charge = Reservation {
        job_id: job_id.to_string(),
        dataset: dataset.name.clone(),
        consumer: request.consumer.to_string(),
        rho: request.rho.unwrap_or(0.0),
        caps: caps(&governance.policy),
        max_uses: governance.policy.max_uses,
    };
    if !reserved {
        let spent = records.spent(&charge.dataset, &charge.consumer).map_err(Decline::Fault)?;
        veil_governance::budget::check(spent, charge.rho, charge.caps)
            .map_err(|e| Decline::refused(Rule::Budget, e.to_string()))?;
    }
    let min_parties = min_parties.max(governance.policy.min_cohort.unwrap_or(1) as usize);
    Ok((min_parties, charge))
}

impl Records for crate::store::PartyStore {
    fn uses(&self, dataset: &str) -> Result<u64, String> {
        crate::store::PartyStore::uses(self, dataset).map_err(|e| e.to_string())
    }

    fn spent(&self, dataset: &str, consumer: &str) -> Result<Spent, String> {
        veil_governance::budget::Ledger::spent(self, dataset, consumer).map_err(|e| e.to_string())
    }

    fn training_progress(&self, job_id: &str) -> Result<Option<(String, i64)>, String> {
        crate::store::PartyStore::training_progress(self, job_id).map_err(|e| e.to_string())
    }

    fn charged_consumer(&self, job_id: &str) -> Result<Option<String>, String> {
        crate::store::PartyStore::charged_consumer(self, job_id).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ed25519_dalek::SigningKey;
    use veil_analytics::Job;
    use veil_governance::{DeclineKind, Rule};
    use veil_proto::submission::{Signer, new_job_id};
    use veil_proto::v1::PlannedJob;

    use super::*;
    use crate::testing::{CELLS, analyst, config};

    /// What the party's records say.
    #[derive(Default)]
    struct Book {
        uses: u64,
        spent: f64,
        progress: Option<(String, i64)>,
        charged: Option<String>,
    }

    impl Records for Book {
        fn uses(&self, _: &str) -> Result<u64, String> {
            Ok(self.uses)
        }
        fn spent(&self, _: &str, _: &str) -> Result<Spent, String> {
            Ok(Spent { consumer: self.spent, total: self.spent })
        }
        fn training_progress(&self, _: &str) -> Result<Option<(String, i64)>, String> {
            Ok(self.progress.clone())
        }
        fn charged_consumer(&self, _: &str) -> Result<Option<String>, String> {
            Ok(self.charged.clone())
        }
    }

    fn columns(extra: &str) -> String {
        format!(
            "dataset = \"cells\"\npurpose = \"research\"\n{extra}\n[[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n"
        )
    }

    fn training(extra: &str) -> String {
        format!(
            "kind = \"train\"\ndataset = \"cells\"\npurpose = \"research\"\nfeatures = [\"mean_radius\"]\nlabel = \"target\"\nrounds = 3\nmodel = {{ kind = \"logistic_regression\" }}\nlocal = {{ epochs = 1, batch_size = 16, learning_rate = 0.1, optimizer = {{ kind = \"sgd\" }} }}\n{extra}"
        )
    }

    /// Admits `spec` as `consumer` offers it, signed by `signer` under the offer's id.
    fn offer_as(
        config: &PartyConfig,
        book: &Book,
        spec: &str,
        consumer: &str,
        signer: Option<&Signer>,
        situation: Situation<'_>,
    ) -> Result<Admission, Decline> {
        let job = Job::parse(spec).unwrap();
        let spec_json = job.canonical_json();
        let job_id = new_job_id();
        let planned = PlannedJob {
            spec_json: spec_json.clone(),
            job_hash: job.hash(),
            purpose: job.purpose().into(),
        };
        let signature = signer.map(|s| s.sign(&job_id, &planned)).unwrap_or_default();
        let offer = Offer {
            job_id: &job_id,
            spec_json: &spec_json,
            consumer,
            consumer_signature: &signature,
            session: &[],
            coordinator_head: None,
        };
        admit(config, &situation, book, &offer).1
    }

    const TODAY: Situation<'static> = Situation {
        today: "2026-12-05",
        dangerous_benchmark: false,
        training_jobs: 0,
        intersections: 0,
        no_sandbox: None,
    };

    fn offer(config: &PartyConfig, book: &Book, spec: &str) -> Result<Admission, Decline> {
        offer_as(config, book, spec, "analyst", Some(&analyst()), TODAY)
    }

    fn refused(d: Result<Admission, Decline>) -> (DeclineKind, Option<Rule>, String) {
        let d = d.unwrap_err();
        (d.kind(), d.rule(), d.message().to_string())
    }

    #[test]
    fn an_allowed_column_job_is_admitted_with_its_charge_and_cohort() {
        let a =
            offer(&config(CELLS), &Book::default(), &columns("privacy = { rho = 0.5 }")).unwrap();
        assert_eq!(a.min_parties, 2);
        let charge = a.charge.unwrap();
        assert_eq!((charge.consumer.as_str(), charge.rho), ("analyst", 0.5));
        assert!(matches!(a.work, Work::Columns { .. }));
    }

    #[test]
    fn each_policy_rule_refuses_with_its_name() {
        let c = config(CELLS);
        let book = Book::default();
        let (kind, rule, _) = refused(offer(&c, &book, &columns("").replace("research", "ads")));
        assert_eq!((kind, rule), (DeclineKind::Refused, Some(Rule::Purpose)));
        let identifier = columns("").replace("mean_radius\"\nmin", "ssn\"\nmin");
        let (_, rule, m) = refused(offer(&c, &book, &identifier));
        assert_eq!(rule, Some(Rule::IdentifierColumn), "{m}");
        let spent = Book { spent: 0.8, ..Book::default() };
        let (kind, rule, m) = refused(offer(&c, &spent, &columns("privacy = { rho = 0.5 }")));
        assert_eq!((kind, rule), (DeclineKind::Refused, Some(Rule::Budget)), "{m}");
    }

    #[test]
    fn only_a_job_its_named_consumer_signed_is_considered() {
        let c = config(CELLS);
        let book = Book::default();
        let spec = columns("");
        let partner = Signer::new("partner", SigningKey::from_bytes(&[4; 32]), Job::plan_check);
        for (consumer, signer) in
            [("analyst", None), ("analyst", Some(&partner)), ("partner", Some(&partner))]
        {
            let (kind, rule, _) = refused(offer_as(&c, &book, &spec, consumer, signer, TODAY));
            assert_eq!((kind, rule), (DeclineKind::Refused, Some(Rule::ConsumerSignature)));
        }
        let charged = Book { charged: Some("partner".into()), ..Book::default() };
        let (kind, _, m) = refused(offer(&c, &charged, &spec));
        assert_eq!(kind, DeclineKind::Fault);
        assert!(m.contains("charged to another consumer"), "{m}");
    }

    #[test]
    fn data_the_party_cannot_provide_is_unavailable_not_refused() {
        let c = config(CELLS);
        let book = Book::default();
        let other = columns("").replace("\"cells\"", "\"flights\"");
        let (kind, _, m) = refused(offer(&c, &book, &other));
        assert_eq!(kind, DeclineKind::DataUnavailable);
        assert!(m.contains("does not serve dataset \"flights\""), "{m}");
        let missing = columns("").replace("mean_radius", "mean_area");
        let (kind, _, m) = refused(offer(&c, &book, &missing));
        assert_eq!(kind, DeclineKind::DataUnavailable, "{m}");
    }

    #[test]
    fn an_intersection_needs_a_text_key_a_join_key_and_a_cohort_of_two() {
        let datasets = "[[datasets]]\nname = \"left\"\npath = \"left.csv\"\ncolumns = { id = \"string\", n = \"int\" }\n\
                        [datasets.policy]\njoin_keys = [\"id\", \"n\"]\n";
        let spec = |key: &str| {
            format!(
                "kind = \"psi\"\nclient = {{ dataset = \"left\", key = \"{key}\" }}\nserver = {{ dataset = \"right\", key = \"id\" }}\n"
            )
        };
        let book = Book::default();
        let a = offer(&config(datasets), &book, &spec("id")).unwrap();
        assert!(matches!(a.work, Work::Psi { role: PsiSide::Client, .. }));
        // A number column would lose digits and leading zeros.
        let (kind, _, m) = refused(offer(&config(datasets), &book, &spec("n")));
        assert_eq!(kind, DeclineKind::DataUnavailable, "{m}");
        assert!(m.contains("declare it string"), "{m}");
        // A party whose data is combined with at least three takes part in no intersection.
        let strict = PartyConfig { min_cohort: 3, ..config(datasets) };
        let (_, rule, _) = refused(offer(&strict, &book, &spec("id")));
        assert_eq!(rule, Some(Rule::Cohort));
        // Nor in more intersections at once than it holds keys for.
        let busy = Situation { intersections: MAX_INTERSECTIONS, ..TODAY };
        let (kind, _, _) = refused(offer_as(
            &config(datasets),
            &book,
            &spec("id"),
            "analyst",
            Some(&analyst()),
            busy,
        ));
        assert_eq!(kind, DeclineKind::Fault);
    }

    #[test]
    fn a_join_needs_a_join_key_a_party_to_reveal_membership_to_and_totals_that_fit() {
        let flights = |policy: &str| {
            format!(
                "[[datasets]]\nname = \"flights\"\npath = \"f.csv\"\n\
                 columns = {{ tailnum = \"string\", dep_delay = \"float\" }}\n\
                 [datasets.policy]\njoin_keys = [\"tailnum\"]\n{policy}"
            )
        };
        // `bins` histogram bins make each key's vector longer.
        let spec = |values: usize, bins: usize| {
            let domain: Vec<String> = (0..values).map(|i| format!("\"m{i}\"")).collect();
            let edges: Vec<String> =
                (0..=bins).map(|i| (i as f64 * 600.0 / bins as f64).to_string()).collect();
            format!(
                "kind = \"join\"\ngroups = {{ dataset = \"planes\", key = \"tailnum\", column = \"maker\" }}\n\
                 values = {{ dataset = \"flights\", key = \"tailnum\" }}\n[aggregate]\ndataset = \"flights\"\n\
                 columns = [{{ name = \"dep_delay\", min = -60, max = 600, histogram = [{}] }}]\n\
                 group_by = [{{ column = \"maker\", values = [{}] }}]\n",
                edges.join(", "),
                domain.join(", ")
            )
        };
        let book = Book::default();
        let open = flights("reveal_membership_to = [\"registry\"]\n");
        let a = offer(&config(&open), &book, &spec(3, 2)).unwrap();
        let Work::Join { side: JoinSide::Value { .. }, shape, .. } = a.work else {
            panic!("the value side of a join")
        };
        assert_eq!(shape.1, 5, "three makers, (other) and (null)");
        // A dataset whose policy names no party to learn which of its keys it holds.
        let (_, rule, m) = refused(offer(&config(&flights("")), &book, &spec(3, 2)));
        assert_eq!(rule, Some(Rule::RevealMembership), "{m}");
        // Totals too large for one message are refused at the offer, before any charge.
        let (kind, _, m) = refused(offer(&config(&open), &book, &spec(3_000, 200)));
        assert_eq!(kind, DeclineKind::Fault);
        assert!(m.contains("MB of totals"), "{m}");
    }

    #[test]
    fn malformed_and_benchmark_offers_are_faults() {
        let c = config(CELLS);
        let book = Book::default();
        let synthetic = "kind = \"synthetic\"\ndim = 4\n";
        let (kind, _, m) = refused(offer(&c, &book, synthetic));
        assert_eq!(kind, DeclineKind::Fault);
        assert!(m.contains("--dangerous-benchmark"), "{m}");
        let benchmark = Situation { dangerous_benchmark: true, ..TODAY };
        let a = offer_as(&c, &book, synthetic, "analyst", Some(&analyst()), benchmark).unwrap();
        assert!(matches!(a.work, Work::Synthetic { dim: 4 }) && a.charge.is_none());
        // Not the canonical form the consumer's hash covers.
        let job = Job::parse(&columns("")).unwrap();
        let (id, toml) = (new_job_id(), columns(""));
        let offer = Offer {
            job_id: &id,
            spec_json: &toml,
            consumer: "analyst",
            consumer_signature: &[],
            session: &[],
            coordinator_head: None,
        };
        let (hash, decision) = admit(&c, &TODAY, &book, &offer);
        assert_eq!(hash, job.hash());
        assert!(refused(decision).2.contains("canonical form"));
    }

    #[test]
    fn a_training_job_is_bound_to_its_hash_and_resumes_where_it_left() {
        let c = config(CELLS);
        let spec = training("");
        let hash = Job::parse(&spec).unwrap().hash();
        let fresh = offer(&c, &Book::default(), &spec).unwrap();
        assert!(matches!(fresh.work, Work::Train { next_step: 0, .. }));
        let resumed = Book {
            progress: Some((hash, 5)),
            charged: Some("analyst".into()),
            spent: 1.0,
            uses: 1,
        };
        let again = offer(&c, &resumed, &spec).unwrap();
        assert!(
            matches!(again.work, Work::Train { next_step: 5, .. }),
            "resumed past its budget check"
        );
        let other = Book { progress: Some(("another".into(), 5)), ..Book::default() };
        assert!(refused(offer(&c, &other, &spec)).2.contains("another training specification"));
        let busy = Situation { training_jobs: MAX_TRAINING_JOBS, ..TODAY };
        let (kind, _, _) =
            refused(offer_as(&c, &Book::default(), &spec, "analyst", Some(&analyst()), busy));
        assert_eq!(kind, DeclineKind::Fault);
        // Under DP, standardisation needs declared bounds for every feature.
        let dp = training("privacy = { clip = 1.0, noise_multiplier = 1.0, rho = 5.0 }\n");
        let no_bounds = config(&CELLS.replace("bounds = { mean_radius = [0.0, 50.0] }\n", ""));
        let (kind, rule, m) = refused(offer(&no_bounds, &Book::default(), &dp));
        assert_eq!((kind, rule), (DeclineKind::Refused, Some(Rule::Column)), "{m}");
    }

    /// A trainer program runs only if the dataset's policy approves its exact source, and only
    /// confined unless the owner allowed otherwise.
    #[test]
    fn trainer_programs_need_their_hash_approved_and_a_sandbox() {
        let source = "print('{\\\"update\\\": [0, 0]}')";
        let job = format!(
            "kind = \"train\"\ndataset = \"cells\"\npurpose = \"research\"\nfeatures = [\"mean_radius\"]\nlabel = \"target\"\nrounds = 3\n\
             model = {{ kind = \"program\", parameters = 2 }}\nevaluation = {{ holdout = 0.0 }}\n\
             local = {{ epochs = 1, batch_size = 16, learning_rate = 0.1, optimizer = {{ kind = \"sgd\" }} }}\n\
             trainer = {{ source = {source:?}, clip = 1.0 }}\n"
        );
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(source.as_bytes()));
        let (kind, rule, m) = refused(offer(&config(CELLS), &Book::default(), &job));
        assert_eq!((kind, rule), (DeclineKind::Refused, Some(Rule::Trainer)), "{m}");
        assert!(m.contains(&hash), "{m}");
        let approving = CELLS.replace(
            "purposes = [\"research\"]",
            &format!("purposes = [\"research\"]\ntrainers = [\"{hash}\"]"),
        );
        offer(&config(&approving), &Book::default(), &job).unwrap();
        // A system that cannot confine it: refused, unless the owner allowed unconfined ones.
        let bare = Situation { no_sandbox: Some("no Landlock"), ..TODAY };
        let c = config(&approving);
        let (kind, rule, m) =
            refused(offer_as(&c, &Book::default(), &job, "analyst", Some(&analyst()), bare));
        assert_eq!((kind, rule), (DeclineKind::Refused, Some(Rule::Trainer)), "{m}");
        assert!(m.contains("no Landlock"), "{m}");
        let mut allowing = c.clone();
        allowing.trainers.allow_unconfined = true;
        offer_as(&allowing, &Book::default(), &job, "analyst", Some(&analyst()), bare).unwrap();
    }
}
