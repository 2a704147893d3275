//! The secure aggregation benchmark: whole rounds in memory, with time, CPU and bytes per role.
//!
//! Parties run in parallel (rayon) within each stage and the coordinator runs between stages,
//! so the CPU used in each phase belongs to one role. CPU is read from the scheduler's
//! per-thread accounting (`/proc/self/task/*/schedstat`, nanoseconds); on systems without it the
//! CPU columns read zero. Dropouts are simulated: a stage deadline passes instantly, so wall
//! time excludes waiting for the silent, which a deployment spends in its stage timeout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use veil_protocol::{
    Coordinator, CoordinatorEvent, CoordinatorMessage, Party, PartyId, PartyMessage, RoundConfig,
    Stage, prg,
};

use crate::{Consortium, session};

/// One benchmark configuration.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Parties.
    pub parties: usize,
    /// Elements per vector.
    pub vector_len: usize,
    /// Neighbours per party (`parties − 1` for all pairs).
    pub neighbours: usize,
    /// Fraction of parties that drop out.
    pub dropout: f64,
    /// The first stage dropped parties do not answer.
    pub dropout_before: Stage,
}

impl BenchConfig {
    /// All pairs, no dropouts.
    pub fn all_pairs(parties: usize, vector_len: usize) -> Self {
        Self {
            parties,
            vector_len,
            neighbours: parties - 1,
            dropout: 0.0,
            dropout_before: Stage::ConsistencyCheck,
        }
    }

    /// The sparse graph with `k = 2⌈log₂ n⌉`.
    pub fn sparse(parties: usize, vector_len: usize) -> Self {
        Self {
            neighbours: veil_protocol::params::min_sparse_neighbours(parties),
            ..Self::all_pairs(parties, vector_len)
        }
    }

    /// With a fraction of parties dropping before `stage`.
    pub fn with_dropout(mut self, fraction: f64, stage: Stage) -> Self {
        self.dropout = fraction;
        self.dropout_before = stage;
        self
    }

    /// A short label.
    pub fn label(&self) -> String {
        let graph = if self.neighbours + 1 == self.parties {
            "all pairs".to_string()
        } else {
            format!("k={}", self.neighbours)
        };
        let drop = if self.dropout > 0.0 {
            format!(", {:.0}% drop before {}", self.dropout * 100.0, self.dropout_before)
        } else {
            String::new()
        };
        format!("n={} d={} {}{}", self.parties, self.vector_len, graph, drop)
    }
}

/// Measurements of one configuration.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// The configuration.
    pub config: BenchConfig,
    /// Wall time of the whole round.
    pub wall: Duration,
    /// Mean CPU time per party.
    pub party_cpu: Duration,
    /// CPU time of the coordinator.
    pub coordinator_cpu: Duration,
    /// Mean time a party spent on the survivor-set quorum: checking the q signatures over the
    /// set it signed (one Ed25519 batch) before it reveals.
    pub quorum_check: Duration,
    /// Mean bytes sent by each party that stayed to the end.
    pub bytes_sent: usize,
    /// Mean bytes each party received.
    pub bytes_received: usize,
    /// Wall time of a plain round over the same vectors: encode, decode and sum.
    pub plain_wall: Duration,
    /// Survivors whose inputs made up the sum.
    pub contributors: usize,
    /// Whether the unmasked sum equalled the plain sum of the contributors' inputs.
    pub correct: bool,
}

impl BenchReport {
    /// Secure wall time over plain wall time.
    pub fn ratio(&self) -> f64 {
        self.wall.as_secs_f64() / self.plain_wall.as_secs_f64().max(1e-9)
    }
}

/// CPU time consumed so far by all threads of this process.
pub fn process_cpu() -> Duration {
    cpu_of("self")
}

/// CPU time consumed so far by the live threads of process `pid` (a number, or `self`), from
/// the scheduler's per-thread accounting; zero where `/proc` does not tell.
pub fn cpu_of(pid: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// Runs one round of `config` and measures it.
pub fn run(config: &BenchConfig, seed: u64) -> Result<BenchReport, veil_protocol::Error> {
    let n = config.parties;
    let consortium = Consortium::new(n, seed);
    let ids = consortium.parties();
    let round = RoundConfig {
        neighbours: config.neighbours,
        ..if config.neighbours + 1 == n {
            RoundConfig::all_pairs(session(seed), ids.clone(), config.vector_len)
        } else {
            RoundConfig::sparse(session(seed), ids.clone(), config.vector_len)
        }
    };
    let params = Arc::new(round.validate()?);
    let dropped: BTreeSet<PartyId> = {
        let count = (config.dropout * n as f64).round() as usize;
        // Spread dropouts over the id range.
        (0..count).map(|i| ids[i * n / count.max(1)]).collect()
    };
    let mut input_rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let inputs: Vec<Vec<u64>> =
        (0..n).map(|_| (0..config.vector_len).map(|_| input_rng.next_u64()).collect()).collect();

    // The plain baseline: every party encodes its vector, the coordinator decodes and sums.
    // Fastest of three, so first-touch page faults do not count against it.
    let plain_wall = (0..3)
        .map(|_| {
            let messages: Vec<PartyMessage> = inputs
                .iter()
                .zip(&ids)
                .map(|(v, &party)| PartyMessage::MaskedInput {
                    session: params.session(),
                    party,
                    vector: v.clone(),
                })
                .collect();
            let start = Instant::now();
            let encoded: Vec<Vec<u8>> = messages.par_iter().map(PartyMessage::encode).collect();
            let mut plain = vec![0u64; config.vector_len];
            for bytes in &encoded {
                if let Ok(PartyMessage::MaskedInput { vector, .. }) = PartyMessage::decode(bytes) {
                    prg::add_assign(&mut plain, &vector);
                }
            }
            start.elapsed()
        })
        .min()
        .expect("three runs");
    // Each party's data exists before the round starts.
    let party_inputs: Vec<Vec<u64>> = inputs.clone();

    let mut party_cpu = Duration::ZERO;
    let mut coordinator_cpu = Duration::ZERO;
    let mut sent = vec![0usize; n];
    let mut received = vec![0usize; n];

    let start = Instant::now();
    let cpu0 = process_cpu();
    let roster = consortium.roster();
    let mut parties: Vec<(Party, ChaCha20Rng)> = ids
        .par_iter()
        .zip(party_inputs.into_par_iter())
        .map(|(&p, input)| {
            let mut rng = ChaCha20Rng::seed_from_u64(seed.wrapping_add(u64::from(p.0) + 1));
            let party = Party::new(
                params.clone(),
                p,
                consortium.identity(p),
                roster.clone(),
                input,
                &mut rng,
            )
            .expect("benchmark parties are configured consistently");
            (party, rng)
        })
        .collect();
    let cpu1 = process_cpu();
    party_cpu += cpu1 - cpu0;
    let mut now = Instant::now();
    let mut coordinator = Coordinator::new(params.clone(), roster.clone(), now);
    let mut inbox: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
    let mut outcome = None;
    let mut quorum_checks = (Duration::ZERO, 0u32);
    for _ in 0..64 {
        let c0 = process_cpu();
        let outgoing: Vec<(Vec<Vec<u8>>, Option<Duration>)> = parties
            .par_iter_mut()
            .zip(inbox.par_iter_mut())
            .map(|((party, rng), msgs)| {
                let mut quorum = None;
                for bytes in msgs.drain(..) {
                    if let Ok(m) = CoordinatorMessage::decode(&bytes) {
                        let signatures = matches!(m, CoordinatorMessage::Signatures { .. });
                        let at = Instant::now();
                        let _ = party.handle_message(m, rng);
                        if signatures {
                            quorum = Some(at.elapsed());
                        }
                    }
                }
                let sent = std::iter::from_fn(|| party.poll_transmit()).map(|m| m.encode());
                (sent.collect(), quorum)
            })
            .collect();
        for d in outgoing.iter().filter_map(|(_, q)| *q) {
            quorum_checks = (quorum_checks.0 + d, quorum_checks.1 + 1);
        }
        let outgoing = outgoing.into_iter().map(|(sent, _)| sent);
        let c1 = process_cpu();
        party_cpu += c1 - c0;
        let mut delivered = 0;
        for (i, msgs) in outgoing.enumerate() {
            for bytes in msgs {
                let stage = PartyMessage::decode(&bytes).map(|m| m.stage());
                if dropped.contains(&ids[i]) && stage.is_ok_and(|s| s >= config.dropout_before) {
                    continue;
                }
                sent[i] += bytes.len();
                delivered += 1;
                if let Ok(m) = PartyMessage::decode(&bytes) {
                    let _ = coordinator.handle_message(ids[i], m, now);
                }
            }
        }
        if delivered == 0 {
            if let Some(deadline) = coordinator.poll_timeout() {
                now = deadline + Duration::from_millis(1);
                coordinator.handle_timeout(now);
            }
        }
        while let Some((to, msg)) = coordinator.poll_transmit() {
            let i = params.index_of(to).expect("the coordinator only writes to parties");
            let bytes = msg.encode();
            received[i] += bytes.len();
            inbox[i].push(bytes);
        }
        coordinator_cpu += process_cpu() - c1;
        while let Some(ev) = coordinator.poll_event() {
            match ev {
                CoordinatorEvent::Finished(a) => outcome = Some(Ok(a)),
                CoordinatorEvent::Aborted(e) => outcome = Some(Err(e)),
                CoordinatorEvent::StageClosed { .. } => {}
            }
        }
        if outcome.is_some() {
            break;
        }
    }
    let wall = start.elapsed();
    let aggregate = outcome.unwrap_or(Err(veil_protocol::Error::RoundEnded))?;
    let mut expected = vec![0u64; config.vector_len];
    for p in &aggregate.contributors {
        let i = params.index_of(*p).expect("contributors are participants");
        prg::add_assign(&mut expected, &inputs[i]);
    }
    // Bytes of the parties that stayed to the end.
    let live = n - dropped.len();
    let sent_by_live: usize =
        ids.iter().zip(&sent).filter(|(p, _)| !dropped.contains(p)).map(|(_, b)| b).sum();
    Ok(BenchReport {
        config: config.clone(),
        wall,
        party_cpu: party_cpu / n as u32,
        coordinator_cpu,
        quorum_check: quorum_checks.0 / quorum_checks.1.max(1),
        bytes_sent: sent_by_live / live.max(1),
        bytes_received: received.iter().sum::<usize>() / n,
        plain_wall,
        contributors: aggregate.contributors.len(),
        correct: aggregate.sum == expected,
    })
}

/// The configurations the benchmark reports by default.
pub fn default_configs() -> Vec<BenchConfig> {
    vec![
        BenchConfig::all_pairs(10, 100_000),
        BenchConfig::sparse(100, 100_000),
        BenchConfig::sparse(1_000, 100_000).with_dropout(0.10, Stage::ConsistencyCheck),
        BenchConfig::sparse(1_000, 100_000).with_dropout(0.10, Stage::MaskedInput),
    ]
}
