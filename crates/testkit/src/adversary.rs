//! A malicious coordinator that drives the real party machines.
//!
//! [`Adversary::run`] plays one round against unmodified [`Party`] machines, every message
//! through the wire encoding, following a [`Strategy`]: per party it may withhold keys, shares
//! and signatures, announce a different survivor set, and send a different configuration
//! (party list, threshold, graph, collusion bound); it may replay a message from another
//! session. It colludes with chosen parties: a colluder is run as several copies with the same
//! identity, keys and randomness, one per survivor view, so it can sign every set it is shown;
//! the adversary holds its secrets and every share sent to it.
//!
//! The adversary keeps account of what it holds ([`Knowledge`]): which honest self-mask seeds
//! `b_u` and mask keys `s_u` it can reconstruct (from the shares honest parties revealed plus
//! those its colluders hold, against the owner's threshold), which pairwise masks it can
//! remove, and from that every set of honest masked inputs whose sum it can unmask.
//! [`Knowledge::check`] asserts the round's invariant: the only honest sum the adversary can
//! unmask is that of the honest members of one agreed survivor set — signed by a quorum and at
//! least the minimum cohort — and nothing at all when no set was agreed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use veil_protocol::{
    CoordinatorMessage, Party, PartyId, PartyMessage, PartyStatus, RoundConfig, RoundKeys,
    RoundParams,
};

use crate::Consortium;

/// What the malicious coordinator does in one round.
#[derive(Clone, Debug)]
pub struct Strategy {
    /// The configuration every party is told unless [`Self::configs`] says otherwise.
    pub config: RoundConfig,
    /// A different configuration for some parties (same session or not).
    pub configs: BTreeMap<PartyId, RoundConfig>,
    /// Parties that collude with the coordinator.
    pub colluders: BTreeSet<PartyId>,
    /// `(to, owner)`: `owner`'s keys are not forwarded to `to`.
    pub keys_withheld: BTreeSet<(PartyId, PartyId)>,
    /// `(to, from)`: the shares `from` encrypted for `to` are not forwarded.
    pub shares_withheld: BTreeSet<(PartyId, PartyId)>,
    /// The survivor sets announced; view 0 unless [`Self::view_of`] names another.
    pub views: Vec<Vec<PartyId>>,
    /// The view each honest party is shown.
    pub view_of: BTreeMap<PartyId, usize>,
    /// Parties never sent the signatures (they reveal nothing).
    pub signatures_withheld: BTreeSet<PartyId>,
    /// Forward each party only the signatures of its own share holders (as a coordinator of
    /// the SecAgg+ consistency check does) rather than every signature over its set.
    pub signatures_from_holders: bool,
    /// Before each honest party's survivor set, replay that party the survivor set of a round
    /// with another session (it must be refused without effect).
    pub replay_other_session: bool,
    /// Parties join with keys made ahead of the round (`RoundKeys`, as with an acceptance that
    /// names the session) rather than at the join.
    pub keys_ahead: bool,
    /// Parties expand their masks ahead after every message (`Party::precompute`).
    pub precompute: bool,
}

impl Strategy {
    /// An honest-looking strategy for `config`: every message delivered, one survivor set
    /// (everyone).
    pub fn new(config: RoundConfig) -> Self {
        let mut all = config.parties.clone();
        all.sort_unstable();
        Self {
            config,
            configs: BTreeMap::new(),
            colluders: BTreeSet::new(),
            keys_withheld: BTreeSet::new(),
            shares_withheld: BTreeSet::new(),
            views: vec![all],
            view_of: BTreeMap::new(),
            signatures_withheld: BTreeSet::new(),
            signatures_from_holders: false,
            replay_other_session: false,
            keys_ahead: false,
            precompute: false,
        }
    }

    fn config_of(&self, p: PartyId) -> &RoundConfig {
        self.configs.get(&p).unwrap_or(&self.config)
    }
}

/// What the adversary ended up holding.
#[derive(Debug, Default)]
pub struct Knowledge {
    /// Honest parties whose self-mask seed `b_u` it reconstructed.
    pub self_masks: BTreeSet<PartyId>,
    /// Honest parties whose mask key `s_u` it reconstructed.
    pub mask_keys: BTreeSet<PartyId>,
    /// Minimal sets of honest parties whose summed inputs it can unmask.
    pub learned: Vec<BTreeSet<PartyId>>,
    /// The view each honest party revealed shares for.
    pub revealed_for: BTreeMap<PartyId, usize>,
    /// Every party's end state.
    pub status: BTreeMap<PartyId, PartyStatus>,
    /// The survivor sets announced.
    pub views: Vec<Vec<PartyId>>,
    /// The honest parties.
    pub honest: BTreeSet<PartyId>,
    /// Signatures each view collected (honest and colluding signers).
    pub signers: Vec<BTreeSet<PartyId>>,
    /// The quorum and minimum cohort honest parties were configured with.
    pub quorum: usize,
    /// The minimum cohort honest parties were configured with.
    pub min_cohort: usize,
}

impl Knowledge {
    /// Whether the adversary can unmask the input of `v` on its own.
    pub fn isolates(&self, v: PartyId) -> bool {
        self.learned.iter().any(|set| set.len() == 1 && set.contains(&v))
    }

    /// The round's invariant: every honest set the adversary can unmask is the honest part of
    /// one survivor set that a quorum signed and that is at least the minimum cohort, at most
    /// one such set exists, and it holds at least two honest parties.
    pub fn check(&self) -> Result<(), String> {
        let views: BTreeSet<usize> = self.revealed_for.values().copied().collect();
        let sets: BTreeSet<&Vec<PartyId>> = views.iter().map(|&v| &self.views[v]).collect();
        if sets.len() > 1 {
            return Err(format!(
                "honest parties revealed for {} different survivor sets",
                sets.len()
            ));
        }
        for set in &self.learned {
            let Some(&view) = views.first() else {
                return Err(format!("unmasks {set:?} although no honest party revealed"));
            };
            let agreed = &self.views[view];
            let honest: BTreeSet<PartyId> =
                agreed.iter().copied().filter(|p| self.honest.contains(p)).collect();
            if *set != honest {
                return Err(format!(
                    "unmasks the honest set {set:?}, not the honest part {honest:?} of the agreed set"
                ));
            }
            let signers: BTreeSet<PartyId> =
                views.iter().flat_map(|&v| self.signers[v].iter().copied()).collect();
            if agreed.len() < self.min_cohort || signers.len() < self.quorum {
                return Err(format!("unmasks {set:?} under a set below the cohort or the quorum"));
            }
            if set.len() < 2 {
                return Err(format!("unmasks the input of {set:?} alone"));
            }
        }
        Ok(())
    }
}

/// One copy of a party's machine.
struct Copy {
    id: PartyId,
    view: usize,
    party: Party,
    rng: ChaCha20Rng,
    params: Arc<RoundParams>,
    /// The key advertisement made ahead of the round, not yet sent.
    ahead: Option<PartyMessage>,
    /// Whether the copy expands its masks ahead after each message.
    precompute: bool,
}

/// The in-memory malicious coordinator.
pub struct Adversary;

impl Adversary {
    /// Plays `strategy` against the consortium's parties (inputs are small and arbitrary; the
    /// adversary's account is symbolic, from the messages it saw). Parties whose configuration
    /// does not validate take no part.
    pub fn run(consortium: &Consortium, strategy: &Strategy, seed: u64) -> Knowledge {
        let parties = strategy.config.parties.clone();
        let honest: BTreeSet<PartyId> =
            parties.iter().copied().filter(|p| !strategy.colluders.contains(p)).collect();
        let mut copies = Vec::new();
        for &p in &parties {
            let Ok(params) = strategy.config_of(p).clone().validate() else { continue };
            let params = Arc::new(params);
            let views: Vec<usize> = if honest.contains(&p) {
                vec![strategy.view_of.get(&p).copied().unwrap_or(0)]
            } else {
                (0..strategy.views.len()).collect()
            };
            for view in views {
                // Every copy of one party draws the same randomness: same keys, same shares.
                let mut rng = ChaCha20Rng::seed_from_u64(seed ^ (u64::from(p.0) << 20));
                let input = vec![u64::from(p.0) + 1; params.vector_len()];
                let joined = if strategy.keys_ahead {
                    let identity = consortium.identity(p);
                    let keys = RoundKeys::generate(params.session(), p, &identity, &mut rng);
                    let advert = keys.advertisement();
                    Party::with_keys(
                        params.clone(),
                        identity,
                        consortium.roster(),
                        Some(input),
                        keys,
                    )
                    .map(|party| (party, Some(advert)))
                } else {
                    Party::new(
                        params.clone(),
                        p,
                        consortium.identity(p),
                        consortium.roster(),
                        input,
                        &mut rng,
                    )
                    .map(|party| (party, None))
                };
                if let Ok((party, advert)) = joined {
                    copies.push(Copy {
                        id: p,
                        view,
                        party,
                        rng,
                        params: params.clone(),
                        ahead: advert,
                        precompute: strategy.precompute,
                    });
                }
            }
        }

        // Advertise keys.
        let mut adverts = BTreeMap::new();
        for c in &mut copies {
            let sent = c.ahead.take().into_iter().chain(drain(&mut c.party));
            for m in sent.collect::<Vec<_>>() {
                if let PartyMessage::AdvertiseKeys { keys, .. } = m {
                    adverts.insert(c.id, keys);
                }
            }
            if c.precompute {
                c.party.precompute();
            }
        }
        // Keys, each party's holders from its own configuration.
        let mut share_msgs: BTreeMap<PartyId, Vec<veil_protocol::message::EncryptedShare>> =
            BTreeMap::new();
        for c in &mut copies {
            let index = c.params.index_of(c.id).expect("a party is in its own round");
            let keys = c
                .params
                .holders_of(index)
                .into_iter()
                .filter(|h| !strategy.keys_withheld.contains(&(c.id, *h)))
                .filter_map(|h| adverts.get(&h).cloned())
                .collect();
            let session = c.params.session();
            for m in deliver(c, CoordinatorMessage::Keys { session, keys }) {
                if let PartyMessage::EncryptedShares { shares, .. } = m {
                    share_msgs.insert(c.id, shares);
                }
            }
        }
        // Who holds a share of whom, and what each party masked with.
        let mut colluder_holds: BTreeMap<PartyId, usize> = BTreeMap::new();
        for (&from, shares) in &share_msgs {
            let to_colluders =
                shares.iter().filter(|s| strategy.colluders.contains(&s.peer)).count();
            *colluder_holds.entry(from).or_default() += to_colluders;
        }
        let mut masked_with: BTreeMap<PartyId, BTreeSet<PartyId>> = BTreeMap::new();
        let mut sent_input = BTreeSet::new();
        for c in &mut copies {
            let shares: Vec<_> = share_msgs
                .iter()
                .filter(|(from, _)| !strategy.shares_withheld.contains(&(c.id, **from)))
                .filter_map(|(&from, list)| {
                    list.iter().find(|s| s.peer == c.id).map(|s| {
                        veil_protocol::message::EncryptedShare {
                            peer: from,
                            ciphertext: s.ciphertext,
                        }
                    })
                })
                .collect();
            let senders: BTreeSet<PartyId> = shares.iter().map(|s| s.peer).collect();
            let session = c.params.session();
            for m in deliver(c, CoordinatorMessage::Shares { session, shares }) {
                if let PartyMessage::MaskedInput { .. } = m {
                    sent_input.insert(c.id);
                    masked_with.insert(c.id, senders.clone());
                }
            }
        }
        // Survivor sets, each copy its view; then signatures, each view its own pool.
        let mut signers: Vec<BTreeMap<PartyId, [u8; 64]>> =
            vec![BTreeMap::new(); strategy.views.len()];
        for c in &mut copies {
            let session = c.params.session();
            if strategy.replay_other_session && honest.contains(&c.id) {
                let mut other = session;
                other.0[31] ^= 1;
                let replay = CoordinatorMessage::Survivors {
                    session: other,
                    survivors: strategy.views[c.view].clone(),
                };
                let _ = deliver(c, replay);
            }
            let survivors = strategy.views[c.view].clone();
            for m in deliver(c, CoordinatorMessage::Survivors { session, survivors }) {
                if let PartyMessage::ConsistencySignature { signature, .. } = m {
                    signers[c.view].insert(c.id, signature);
                }
            }
        }
        let mut revealed: BTreeMap<(PartyId, bool), BTreeSet<PartyId>> = BTreeMap::new();
        let mut revealed_for = BTreeMap::new();
        for c in &mut copies {
            if strategy.signatures_withheld.contains(&c.id) {
                continue;
            }
            let session = c.params.session();
            let index = c.params.index_of(c.id).expect("a party is in its own round");
            let holders = c.params.holders_of(index);
            let signatures = signers[c.view]
                .iter()
                .filter(|(p, _)| !strategy.signatures_from_holders || holders.contains(p))
                .map(|(&p, s)| (p, *s))
                .collect();
            for m in deliver(c, CoordinatorMessage::Signatures { session, signatures }) {
                if let PartyMessage::UnmaskShares { self_mask, mask_key, .. } = m {
                    if honest.contains(&c.id) {
                        revealed_for.insert(c.id, c.view);
                        for r in self_mask {
                            revealed.entry((r.owner, true)).or_default().insert(c.id);
                        }
                        for r in mask_key {
                            revealed.entry((r.owner, false)).or_default().insert(c.id);
                        }
                    }
                }
            }
        }

        // The adversary's account. A secret of an honest party u is reconstructed when the
        // honest holders that revealed it plus the colluders u shared with reach u's threshold.
        let threshold_of = |u: PartyId| {
            copies.iter().find(|c| c.id == u).map_or(usize::MAX, |c| c.params.threshold())
        };
        let known = |u: PartyId, self_mask: bool| {
            if strategy.colluders.contains(&u) {
                return true;
            }
            let from_honest = revealed.get(&(u, self_mask)).map_or(0, BTreeSet::len);
            let from_colluders = colluder_holds.get(&u).copied().unwrap_or(0);
            from_honest + from_colluders >= threshold_of(u)
        };
        let self_masks: BTreeSet<PartyId> =
            honest.iter().copied().filter(|&u| known(u, true)).collect();
        let mask_keys: BTreeSet<PartyId> =
            honest.iter().copied().filter(|&u| known(u, false)).collect();
        let edge_known = |u: PartyId, w: PartyId| known(u, false) || known(w, false);
        // An honest masked input can join an unmasked sum when its self mask is known and each
        // pairwise mask it applied is either known or cancelled by its partner's, which must
        // then join as well. Prune to a fixed point, then take the pieces.
        let mut candidates: BTreeSet<PartyId> = honest
            .iter()
            .copied()
            .filter(|u| sent_input.contains(u) && self_masks.contains(u))
            .collect();
        loop {
            let before = candidates.len();
            let keep: BTreeSet<PartyId> = candidates
                .iter()
                .copied()
                .filter(|&u| {
                    masked_with[&u].iter().all(|&w| {
                        edge_known(u, w)
                            || (candidates.contains(&w)
                                && masked_with.get(&w).is_some_and(|m| m.contains(&u)))
                    })
                })
                .collect();
            candidates = keep;
            if candidates.len() == before {
                break;
            }
        }
        let mut learned = Vec::new();
        let mut left = candidates.clone();
        while let Some(&start) = left.iter().next() {
            let mut piece = BTreeSet::from([start]);
            let mut stack = vec![start];
            left.remove(&start);
            while let Some(u) = stack.pop() {
                for &w in &masked_with[&u] {
                    if !edge_known(u, w) && left.remove(&w) {
                        piece.insert(w);
                        stack.push(w);
                    }
                }
            }
            learned.push(piece);
        }
        let status = copies.iter().map(|c| (c.id, c.party.status())).collect();
        let base = strategy.config.clone().validate().ok();
        Knowledge {
            self_masks,
            mask_keys,
            learned,
            revealed_for,
            status,
            views: strategy.views.clone(),
            honest,
            signers: signers.iter().map(|s| s.keys().copied().collect()).collect(),
            quorum: base.as_ref().map_or(usize::MAX, |p| p.quorum()),
            min_cohort: base.as_ref().map_or(usize::MAX, |p| p.min_cohort()),
        }
    }
}

fn drain(party: &mut Party) -> Vec<PartyMessage> {
    std::iter::from_fn(|| party.poll_transmit())
        .map(|m| PartyMessage::decode(&m.encode()).expect("party messages decode"))
        .collect()
}

/// Delivers a message through the wire encoding and returns what the copy sent in answer.
fn deliver(c: &mut Copy, msg: CoordinatorMessage) -> Vec<PartyMessage> {
    let msg = CoordinatorMessage::decode(&msg.encode()).expect("coordinator messages decode");
    let _ = c.party.handle_message(msg, &mut c.rng);
    let sent = drain(&mut c.party);
    if c.precompute {
        c.party.precompute();
    }
    sent
}
