//! Round parameters, their safety conditions, and the SecAgg+ neighbour graph.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::{PartyId, SessionId};
use crate::prg::SeededStream;

/// Most parties one round may have.
pub const MAX_PARTIES: usize = 10_000;
/// Most elements an input vector may have (256 MiB of `u64`).
pub const MAX_VECTOR_LEN: usize = 1 << 25;
/// The collusion bound `c` the constructors assume: one party may collude with the coordinator.
pub const DEFAULT_MAX_CORRUPT: usize = 1;
/// Most colluding parties a sparse graph tolerates. With two, honest members of the survivor
/// set that the coordinator kept from masking with some neighbours refuse to sign it but are in
/// it, and act as extra separators beside the colluders: a small arc of the survivors could be
/// unmasked (`crates/testkit/tests/adversary_review.rs`). In a complete graph, and in a sparse
/// one with one colluder, the thresholds leave no room for that; beyond one, rounds use all
/// pairs.
pub const MAX_SPARSE_CORRUPT: usize = 1;

/// A round's parameters as a caller writes them; [`RoundConfig::validate`] turns them into
/// [`RoundParams`] or says which condition they break.
#[derive(Clone, Debug)]
pub struct RoundConfig {
    /// The round's identifier, fresh for every round.
    pub session: SessionId,
    /// The parties invited to the round.
    pub parties: Vec<PartyId>,
    /// Shamir reconstruction threshold `t` within each party's share holders.
    pub threshold: usize,
    /// Neighbours per party, `k`. `parties.len() − 1` gives the original all-pairs protocol;
    /// fewer gives the SecAgg+ sparse graph.
    pub neighbours: usize,
    /// The largest number of parties that may collude with the coordinator, `c`.
    pub max_corrupt: usize,
    /// The fewest survivors whose sum a party agrees to help release.
    pub min_cohort: usize,
    /// Elements of every input vector.
    pub vector_len: usize,
    /// What the round computes (the services put the job's hash here): bound into the round's
    /// digest with every other parameter, so a round cannot be replayed for another job.
    pub context: [u8; 32],
    /// How long the coordinator waits for each stage before treating the silent as dropped.
    pub stage_timeout: Duration,
}

impl RoundConfig {
    /// The all-pairs configuration for `n` parties, tolerating [`DEFAULT_MAX_CORRUPT`]
    /// colluding parties with the smallest safe threshold `t = ⌊(n + c)/2⌋ + 1`.
    pub fn all_pairs(session: SessionId, parties: Vec<PartyId>, vector_len: usize) -> Self {
        let n = parties.len();
        Self {
            session,
            parties,
            threshold: 0,
            neighbours: n.saturating_sub(1),
            max_corrupt: 0,
            min_cohort: n.min(2),
            vector_len,
            context: [0; 32],
            stage_timeout: Duration::from_secs(30),
        }
        .tolerating(DEFAULT_MAX_CORRUPT)
    }

    /// A sparse SecAgg+ configuration with `k` = the smallest even number at least
    /// `2⌈log₂ n⌉` (or all pairs when that is not smaller), tolerating
    /// [`DEFAULT_MAX_CORRUPT`] colluding parties with the smallest safe threshold.
    pub fn sparse(session: SessionId, parties: Vec<PartyId>, vector_len: usize) -> Self {
        let n = parties.len();
        let k = min_sparse_neighbours(n);
        let mut c = Self::all_pairs(session, parties, vector_len);
        if k < n.saturating_sub(1) {
            c.neighbours = k;
        }
        c.tolerating(DEFAULT_MAX_CORRUPT)
    }

    /// The same configuration tolerating `c` colluding parties, with the smallest threshold
    /// that does: `t = ⌊(k + 1 + c)/2⌋ + 1` over the `k + 1` holders of each party's shares.
    pub fn tolerating(mut self, c: usize) -> Self {
        self.max_corrupt = c;
        self.threshold = (self.neighbours + 1 + c) / 2 + 1;
        self
    }

    /// Checks every condition and builds the neighbour graph.
    pub fn validate(self) -> Result<RoundParams> {
        let bad = |m: String| Err(Error::InvalidParameters(m));
        let mut parties = self.parties;
        parties.sort_unstable();
        let n_given = parties.len();
        parties.dedup();
        let n = parties.len();
        if n != n_given {
            return bad("the party list names a party twice".into());
        }
        if !(2..=MAX_PARTIES).contains(&n) {
            return bad(format!(
                "a round needs between 2 and {MAX_PARTIES} parties, got {n}: with one party the \
                 sum is its input"
            ));
        }
        if self.vector_len == 0 || self.vector_len > MAX_VECTOR_LEN {
            return bad(format!(
                "vector length must be between 1 and {MAX_VECTOR_LEN}, got {}",
                self.vector_len
            ));
        }
        let k = self.neighbours;
        if k > n - 1 {
            return bad(format!("{k} neighbours requested but only {} other parties", n - 1));
        }
        if k < n - 1 {
            if k % 2 != 0 {
                return bad(format!("a sparse neighbour graph needs an even k, got {k}"));
            }
            let floor = min_sparse_neighbours(n);
            if k < floor {
                return bad(format!(
                    "k = {k} neighbours is below the floor of {floor} (2⌈log₂ n⌉) for n = {n}; \
                     sparse graphs that thin lose the SecAgg+ guarantees"
                ));
            }
        }
        // Each party's secrets are shared among itself and its k neighbours.
        let holders = k + 1;
        let t = self.threshold;
        let c = self.max_corrupt;
        if t == 0 || t > holders {
            return bad(format!(
                "threshold t = {t} must be between 1 and the {holders} share holders"
            ));
        }
        if t <= c {
            return bad(format!("threshold t = {t} must exceed the {c} parties that may collude"));
        }
        if 2 * t <= holders + c {
            return bad(format!(
                "threshold t = {t} must satisfy 2t > (k + 1) + c = {}: otherwise a coordinator \
                 announcing different survivor sets could collect both shares of one party",
                holders + c
            ));
        }
        if self.min_cohort < 2 || self.min_cohort > n {
            return bad(format!(
                "minimum cohort must be between 2 and {n}, got {}: a sum over one party is its \
                 input",
                self.min_cohort
            ));
        }
        if n < c + 2 {
            return bad(format!(
                "a round tolerating {c} colluding parties needs at least {} parties, got {n}: \
                 otherwise its sum is one honest party's input",
                c + 2
            ));
        }
        let quorum = quorum(n, c);
        if quorum > n {
            return bad(format!(
                "{c} colluding parties need a survivor-set quorum of {quorum} (2q > n + c), more \
                 than the round's {n} parties"
            ));
        }
        if k < n - 1 && c > MAX_SPARSE_CORRUPT {
            return bad(format!(
                "sparse graphs tolerate at most {MAX_SPARSE_CORRUPT} colluding party, got c = \
                 {c}; use all pairs"
            ));
        }
        if self.stage_timeout.is_zero() {
            return bad("stage timeout must be positive".into());
        }
        let graph = NeighbourGraph::harary(&self.session, &parties, k);
        let digest = round_digest(
            &self.session,
            &parties,
            [t, k, c, self.min_cohort, self.vector_len],
            &self.context,
        );
        Ok(RoundParams {
            session: self.session,
            parties,
            threshold: t,
            neighbours: k,
            max_corrupt: c,
            min_cohort: self.min_cohort,
            vector_len: self.vector_len,
            quorum,
            context: self.context,
            digest,
            stage_timeout: self.stage_timeout,
            graph,
        })
    }
}

/// The survivor-set quorum for `n` parties of which `c` may collude: the smallest `q` with
/// `2q > n + c`. Two sets signed by `q` parties each share more than `c` signers, so at least
/// one honest party signed both, which no honest party does: at most one set reaches a quorum.
pub fn quorum(n: usize, c: usize) -> usize {
    (n + c) / 2 + 1
}

/// SHA-256 over everything that defines a round but its timing: the session, the sorted
/// parties, `t`, `k`, `c`, the minimum cohort, the vector length and the context. The graph
/// follows from the session and `k`.
fn round_digest(
    session: &SessionId,
    parties: &[PartyId],
    numbers: [usize; 5],
    context: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new()
        .chain_update(b"veil/secagg/v2/round")
        .chain_update(session.0)
        .chain_update((parties.len() as u64).to_le_bytes());
    for p in parties {
        h.update(p.0.to_le_bytes());
    }
    for x in numbers {
        h.update((x as u64).to_le_bytes());
    }
    h.chain_update(context).finalize().into()
}

/// The smallest even `k ≥ 2⌈log₂ n⌉`, capped at `n − 1`.
pub fn min_sparse_neighbours(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let log = usize::BITS - (n - 1).leading_zeros();
    (2 * log as usize).min(n - 1)
}

/// Validated round parameters.
#[derive(Clone, Debug)]
pub struct RoundParams {
    session: SessionId,
    parties: Vec<PartyId>,
    threshold: usize,
    neighbours: usize,
    max_corrupt: usize,
    min_cohort: usize,
    vector_len: usize,
    quorum: usize,
    context: [u8; 32],
    digest: [u8; 32],
    stage_timeout: Duration,
    graph: NeighbourGraph,
}

impl RoundParams {
    /// The round's identifier.
    pub fn session(&self) -> SessionId {
        self.session
    }
    /// The invited parties, sorted.
    pub fn parties(&self) -> &[PartyId] {
        &self.parties
    }
    /// Shamir threshold `t`.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
    /// Neighbours per party `k`.
    pub fn neighbours(&self) -> usize {
        self.neighbours
    }
    /// Colluding parties tolerated `c`.
    pub fn max_corrupt(&self) -> usize {
        self.max_corrupt
    }
    /// Minimum number of survivors.
    pub fn min_cohort(&self) -> usize {
        self.min_cohort
    }
    /// Elements per input vector.
    pub fn vector_len(&self) -> usize {
        self.vector_len
    }
    /// Signatures over one survivor set a party needs before it reveals anything:
    /// [`quorum`] of all the round's parties.
    pub fn quorum(&self) -> usize {
        self.quorum
    }
    /// What the round computes, as configured.
    pub fn context(&self) -> [u8; 32] {
        self.context
    }
    /// The hash of the whole configuration, bound into every survivor signature and every
    /// derived key: parties given different parameters cannot complete a round together.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
    /// Whether this is the complete graph.
    pub fn is_complete(&self) -> bool {
        self.neighbours + 1 == self.parties.len()
    }
    /// Per-stage deadline at the coordinator.
    pub fn stage_timeout(&self) -> Duration {
        self.stage_timeout
    }
    /// Position of a party in the sorted list.
    pub fn index_of(&self, p: PartyId) -> Option<usize> {
        self.parties.binary_search(&p).ok()
    }
    /// The neighbours of the party at `index`, sorted.
    pub fn neighbours_of(&self, index: usize) -> &[PartyId] {
        &self.graph.adjacency[index]
    }
    /// Whether `a` and `b` are neighbours.
    pub fn are_neighbours(&self, a: usize, b: PartyId) -> bool {
        self.graph.adjacency[a].binary_search(&b).is_ok()
    }
    /// The party itself and its neighbours: the holders of its secrets' shares.
    pub fn holders_of(&self, index: usize) -> Vec<PartyId> {
        let mut h = self.graph.adjacency[index].clone();
        let me = self.parties[index];
        let at = h.binary_search(&me).unwrap_or_else(|i| i);
        h.insert(at, me);
        h
    }
    /// Whether the survivors stay one connected piece of the neighbour graph after any `c`
    /// of them are removed. The coordinator holds the colluders' secrets, so it can take the
    /// masks on their edges off; if the rest fell apart, the pairwise masks would cancel within
    /// each piece separately and it could unmask a piece's sum on its own. A complete graph
    /// always passes; sparse graphs take `|S|^(c−1)` linear passes, with `c` at most
    /// [`MAX_SPARSE_CORRUPT`].
    pub fn survivors_connected(&self, survivors: &[PartyId]) -> bool {
        if survivors.iter().any(|p| self.index_of(*p).is_none()) {
            return false;
        }
        if self.is_complete() {
            return true;
        }
        let mut alive = vec![false; self.parties.len()];
        for p in survivors {
            alive[self.index_of(*p).expect("checked above")] = true;
        }
        self.stays_connected(&mut alive, survivors.len(), self.max_corrupt)
    }

    /// Whether the `count` parties marked alive stay connected after any `removals` of them go.
    fn stays_connected(&self, alive: &mut [bool], count: usize, removals: usize) -> bool {
        if self.component_size(alive) != count {
            return false;
        }
        // Removing all but one leaves nothing to fall apart.
        if removals == 0 || count <= removals + 1 {
            return true;
        }
        match removals {
            1 => self.biconnected(alive, count),
            _ => (0..alive.len()).all(|i| {
                if !alive[i] {
                    return true;
                }
                alive[i] = false;
                let ok = self.stays_connected(alive, count - 1, removals - 1);
                alive[i] = true;
                ok
            }),
        }
    }

    /// The size of the piece holding the first alive party.
    fn component_size(&self, alive: &[bool]) -> usize {
        let Some(start) = alive.iter().position(|a| *a) else {
            return 0;
        };
        let mut seen = vec![false; alive.len()];
        seen[start] = true;
        let mut stack = vec![start];
        let mut reached = 1;
        while let Some(i) = stack.pop() {
            for q in &self.graph.adjacency[i] {
                let j = self.index_of(*q).expect("neighbours are participants");
                if alive[j] && !seen[j] {
                    seen[j] = true;
                    reached += 1;
                    stack.push(j);
                }
            }
        }
        reached
    }

    /// Whether the alive parties are connected and no single one of them disconnects the
    /// rest (no articulation point): Hopcroft–Tarjan low-links with an explicit stack, so the
    /// depth is bounded by the heap, not the thread's stack.
    fn biconnected(&self, alive: &[bool], count: usize) -> bool {
        let Some(root) = alive.iter().position(|a| *a) else {
            return true;
        };
        let n = alive.len();
        let mut order = vec![usize::MAX; n];
        let mut low = vec![0usize; n];
        let mut next = 0;
        let mut root_children = 0;
        // (vertex, parent, next neighbour to look at)
        let mut stack: Vec<(usize, usize, usize)> = vec![(root, usize::MAX, 0)];
        order[root] = next;
        low[root] = next;
        next += 1;
        while let Some(top) = stack.last_mut() {
            let (v, parent, at) = *top;
            let adjacency = &self.graph.adjacency[v];
            if at < adjacency.len() {
                top.2 += 1;
                let w = self.index_of(adjacency[at]).expect("neighbours are participants");
                if !alive[w] || w == parent {
                    continue;
                }
                if order[w] == usize::MAX {
                    order[w] = next;
                    low[w] = next;
                    next += 1;
                    if v == root {
                        root_children += 1;
                    }
                    stack.push((w, v, 0));
                } else {
                    low[v] = low[v].min(order[w]);
                }
            } else {
                stack.pop();
                if parent != usize::MAX {
                    low[parent] = low[parent].min(low[v]);
                    if parent != root && low[v] >= order[parent] {
                        return false;
                    }
                }
            }
        }
        next == count && root_children <= 1
    }

    /// Whether `holder` holds shares of the party at `index`.
    pub fn is_holder(&self, index: usize, holder: PartyId) -> bool {
        self.parties[index] == holder || self.are_neighbours(index, holder)
    }
}

/// A k-regular Harary graph over the parties, laid on a cycle in an order derived from the
/// session id (Bell et al., CCS 2020): each party is joined to the k/2 parties on either side.
/// With k = n − 1 it is the complete graph.
#[derive(Clone, Debug)]
struct NeighbourGraph {
    adjacency: Vec<Vec<PartyId>>,
}

impl NeighbourGraph {
    fn harary(session: &SessionId, parties: &[PartyId], k: usize) -> Self {
        let n = parties.len();
        if k == n - 1 {
            let adjacency = (0..n)
                .map(|i| {
                    parties.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &p)| p).collect()
                })
                .collect();
            return Self { adjacency };
        }
        // Every party computes the same permutation from the session id alone.
        let seed: [u8; 32] = Sha256::new()
            .chain_update(b"veil/secagg/v1/neighbour-graph")
            .chain_update(session.0)
            .finalize()
            .into();
        let mut stream = SeededStream::new(&seed);
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = stream.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut adjacency = vec![Vec::with_capacity(k); n];
        for (pos, &i) in order.iter().enumerate() {
            for d in 1..=k / 2 {
                adjacency[i].push(parties[order[(pos + d) % n]]);
                adjacency[i].push(parties[order[(pos + n - d) % n]]);
            }
            adjacency[i].sort_unstable();
        }
        Self { adjacency }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<PartyId> {
        (0..n).map(PartyId).collect()
    }

    #[test]
    fn harary_graph_is_regular_symmetric_and_session_dependent() {
        let n = 50;
        let k = min_sparse_neighbours(n);
        assert_eq!(k, 12);
        let a = RoundConfig::sparse(SessionId([1; 32]), ids(n as u32), 4).validate().unwrap();
        let b = RoundConfig::sparse(SessionId([2; 32]), ids(n as u32), 4).validate().unwrap();
        for i in 0..n {
            let nb = a.neighbours_of(i);
            assert_eq!(nb.len(), k);
            assert!(!nb.contains(&PartyId(i as u32)));
            for p in nb {
                assert!(a.are_neighbours(a.index_of(*p).unwrap(), PartyId(i as u32)));
            }
        }
        assert!((0..n).any(|i| a.neighbours_of(i) != b.neighbours_of(i)));
    }

    /// A survivor set must stay connected after any c of its members are removed: a party
    /// hanging on one neighbour is refused once one colluder is tolerated, a party with no
    /// neighbour in the set always.
    #[test]
    fn survivors_must_stay_connected_without_any_c_of_them() {
        let n = 20u32;
        let config = |c: usize| RoundConfig::sparse(SessionId([5; 32]), ids(n), 4).tolerating(c);
        let all = ids(n);
        let v = PartyId(0);
        assert!(config(2).validate().unwrap_err().to_string().contains("at most 1"));
        for c in 0..=1 {
            let p = config(c).validate().unwrap();
            assert!(p.survivors_connected(&all), "c = {c}: the whole graph");
            // v keeps a single neighbour: that neighbour is an articulation point.
            let keep = p.neighbours_of(0)[0];
            let hanging: Vec<PartyId> = all
                .iter()
                .copied()
                .filter(|q| *q == keep || *q == v || !p.are_neighbours(0, *q))
                .collect();
            assert_eq!(p.survivors_connected(&hanging), c == 0, "c = {c}: v on one neighbour");
            // v with no neighbour at all.
            let cut: Vec<PartyId> = hanging.iter().copied().filter(|q| *q != keep).collect();
            assert!(!p.survivors_connected(&cut), "c = {c}: v cut off");
            // A stranger is never part of a connected set.
            assert!(!p.survivors_connected(&[v, PartyId(99)]));
        }
    }

    #[test]
    fn unsafe_parameters_are_refused_with_the_reason() {
        let base = RoundConfig::all_pairs(SessionId([0; 32]), ids(10), 8);
        assert!(base.clone().validate().is_ok());
        let low_t = RoundConfig { threshold: 5, ..base.clone() };
        let err = low_t.validate().unwrap_err().to_string();
        assert!(err.contains("2t > (k + 1) + c"), "{err}");
        let corrupt = RoundConfig { threshold: 6, max_corrupt: 3, ..base.clone() };
        assert!(corrupt.validate().is_err());
        let corrupt_ok = RoundConfig { threshold: 7, max_corrupt: 3, ..base.clone() };
        assert!(corrupt_ok.validate().is_ok());
        let odd_k = RoundConfig { neighbours: 7, threshold: 5, ..base.clone() };
        assert!(odd_k.validate().is_err());
        let thin = RoundConfig { parties: ids(100), neighbours: 4, threshold: 3, ..base.clone() };
        assert!(thin.validate().unwrap_err().to_string().contains("floor"));
        let dup = RoundConfig { parties: vec![PartyId(1), PartyId(1)], ..base.clone() };
        assert!(dup.validate().is_err());
        let cohort = RoundConfig { min_cohort: 11, ..base.clone() };
        assert!(cohort.validate().is_err());
        let empty = RoundConfig { vector_len: 0, ..base };
        assert!(empty.validate().is_err());
    }
}
