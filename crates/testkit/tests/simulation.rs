//! The protocol in memory: correct sums, dropouts at every stage, and injected faults.

use rand::SeedableRng;
use veil_protocol::{
    CoordinatorMessage, Error, Party, PartyId, PartyMessage, PartyStatus, RoundConfig, RoundKeys,
    Stage,
};
use veil_testkit::{Consortium, Fault, Outcome, Simulation, session};

const STAGES: [Stage; 5] = Stage::ALL;

fn ids(v: &[u32]) -> Vec<PartyId> {
    v.iter().map(|&i| PartyId(i)).collect()
}

fn all_pairs(c: &Consortium, s: u64) -> RoundConfig {
    RoundConfig::all_pairs(session(s), c.parties(), 64)
}

/// The round finished and its sum is the plain sum of exactly `contributors`.
fn assert_sum_over(o: &Outcome, contributors: &[PartyId]) {
    let a = o.result.as_ref().unwrap_or_else(|e| panic!("round failed: {e}; {o:?}"));
    assert_eq!(a.contributors, contributors);
    assert_eq!(a.sum, o.plain_sum(contributors));
}

#[test]
fn honest_round_sums_exactly() {
    let c = Consortium::new(7, 1);
    let o = Simulation::new(&c, all_pairs(&c, 1), 1).unwrap().run();
    assert_sum_over(&o, &c.parties());
    assert!(o.party_errors.is_empty() && o.coordinator_errors.is_empty());
    assert!(o.status.values().all(|s| *s == PartyStatus::Finished));
}

#[test]
fn sparse_round_sums_exactly() {
    let c = Consortium::new(40, 2);
    let config = RoundConfig::sparse(session(2), c.parties(), 32);
    assert!(config.neighbours < 39);
    let o = Simulation::new(&c, config, 2).unwrap().run();
    assert_sum_over(&o, &c.parties());
}

#[test]
fn a_dropout_at_each_stage_is_tolerated() {
    let c = Consortium::new(6, 3);
    let all = c.parties();
    for stage in STAGES {
        let o = Simulation::new(&c, all_pairs(&c, 3), 3)
            .unwrap()
            .fault(Fault::Dropout { party: PartyId(2), before: stage })
            .run();
        // Dropping before the masked input removes the party from the sum; dropping later
        // leaves its input in (its self mask is rebuilt from the others' shares).
        let expected: Vec<PartyId> = if stage <= Stage::MaskedInput {
            all.iter().copied().filter(|p| *p != PartyId(2)).collect()
        } else {
            all.clone()
        };
        assert_sum_over(&o, &expected);
    }
}

/// Keys made before the round (with the offer) give the same sums as keys made at its start,
/// whoever drops and when, with parties of both kinds in one round; keys made for another
/// session are refused at the join.
#[test]
fn keys_made_before_the_round_give_the_same_sums() {
    let c = Consortium::new(6, 35);
    let all = c.parties();
    for stage in STAGES {
        let run = |ahead: &[PartyId]| {
            Simulation::new(&c, all_pairs(&c, 35), 35)
                .unwrap()
                .keys_ahead(ahead)
                .precompute(&all[..2])
                .fault(Fault::Dropout { party: PartyId(2), before: stage })
                .run()
        };
        let expected: Vec<PartyId> = if stage <= Stage::MaskedInput {
            all.iter().copied().filter(|p| *p != PartyId(2)).collect()
        } else {
            all.clone()
        };
        for o in [run(&all), run(&all[1..4])] {
            assert_sum_over(&o, &expected);
            assert!(o.party_errors.is_empty(), "{stage}: {o:?}");
        }
    }
    let o = Simulation::new(&c, all_pairs(&c, 36), 36)
        .unwrap()
        .keys_ahead(&all)
        .late_input(all[0], "expect-keys")
        .late_input(all[1], "await-input")
        .run();
    assert_sum_over(&o, &all);

    let params = std::sync::Arc::new(all_pairs(&c, 37).validate().unwrap());
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(37);
    let keys = RoundKeys::generate(session(38), all[0], &c.identity(all[0]), &mut rng);
    let e = Party::with_keys(params, c.identity(all[0]), c.roster(), None, keys).unwrap_err();
    assert!(matches!(e, Error::WrongSession { .. }), "{e}");
}

/// Parties that expand their masks ahead give the same sums, whoever drops and when: a
/// neighbour that advertised keys and then vanished is taken out of the expanded mask.
#[test]
fn masks_expanded_ahead_give_the_same_sums() {
    let c = Consortium::new(6, 31);
    let all = c.parties();
    for stage in STAGES {
        let run = |ahead: &[PartyId]| {
            Simulation::new(&c, all_pairs(&c, 31), 31)
                .unwrap()
                .precompute(ahead)
                .fault(Fault::Dropout { party: PartyId(2), before: stage })
                .run()
        };
        let (none, every, some) = (run(&[]), run(&all), run(&all[..3]));
        let expected: Vec<PartyId> = if stage <= Stage::MaskedInput {
            all.iter().copied().filter(|p| *p != PartyId(2)).collect()
        } else {
            all.clone()
        };
        for o in [&none, &every, &some] {
            assert_sum_over(o, &expected);
        }
        assert!(every.party_errors.is_empty(), "{stage}: {every:?}");
    }
    let c = Consortium::new(30, 32);
    let mut sim = Simulation::new(&c, RoundConfig::sparse(session(32), c.parties(), 16), 32)
        .unwrap()
        .precompute(&c.parties()[..20]);
    for (p, before) in [(3, Stage::ShareKeys), (11, Stage::MaskedInput), (24, Stage::Unmask)] {
        sim = sim.fault(Fault::Dropout { party: PartyId(p), before });
    }
    let expected: Vec<PartyId> =
        c.parties().into_iter().filter(|p| ![3, 11].contains(&p.0)).collect();
    assert_sum_over(&sim.run(), &expected);
    // With inputs that arrive after the shares, in every state.
    let p = c.parties();
    let c = Consortium::new(6, 33);
    let o = Simulation::new(&c, all_pairs(&c, 33), 33)
        .unwrap()
        .precompute(&c.parties())
        .late_input(p[0], "expect-keys")
        .late_input(p[1], "expect-shares")
        .late_input(p[2], "await-input")
        .fault(Fault::Dropout { party: p[4], before: Stage::ShareKeys })
        .run();
    let survivors: Vec<PartyId> = c.parties().into_iter().filter(|q| *q != p[4]).collect();
    assert_sum_over(&o, &survivors);
}

#[test]
fn dropouts_down_to_the_threshold_are_tolerated_and_beyond_it_abort_cleanly() {
    let c = Consortium::new(7, 4);
    // t = q = 5 for n = 7 with one colluder tolerated: two may drop.
    let mut sim = Simulation::new(&c, all_pairs(&c, 4), 4).unwrap();
    for p in [1, 3] {
        sim = sim.fault(Fault::Dropout { party: PartyId(p), before: Stage::MaskedInput });
    }
    assert_sum_over(&sim.run(), &ids(&[0, 2, 4, 5, 6]));

    let mut sim = Simulation::new(&c, all_pairs(&c, 4), 4).unwrap();
    for p in [1, 3, 5] {
        sim = sim.fault(Fault::Dropout { party: PartyId(p), before: Stage::MaskedInput });
    }
    let o = sim.run();
    assert!(
        matches!(o.result, Err(Error::TooFewSurvivors { stage: Stage::MaskedInput, .. })),
        "{o:?}"
    );
}

#[test]
fn dropouts_in_a_sparse_graph_are_tolerated() {
    let c = Consortium::new(60, 5);
    let mut sim = Simulation::new(&c, RoundConfig::sparse(session(5), c.parties(), 16), 5).unwrap();
    let gone = [3u32, 17, 29, 44, 58];
    for (i, p) in gone.iter().enumerate() {
        let before = if i % 2 == 0 { Stage::MaskedInput } else { Stage::Unmask };
        sim = sim.fault(Fault::Dropout { party: PartyId(*p), before });
    }
    let o = sim.run();
    let expected: Vec<PartyId> =
        c.parties().into_iter().filter(|p| ![3, 29, 58].contains(&p.0)).collect();
    assert_sum_over(&o, &expected);
}

#[test]
fn duplicated_messages_are_ignored() {
    let c = Consortium::new(5, 6);
    for stage in STAGES {
        let o = Simulation::new(&c, all_pairs(&c, 6), 6)
            .unwrap()
            .fault(Fault::DuplicateFromParty { party: PartyId(1), stage })
            .run();
        assert_sum_over(&o, &c.parties());
        assert!(
            o.coordinator_errors.iter().all(|(_, e)| !e.is_fatal()),
            "{:?}",
            o.coordinator_errors
        );
        assert_eq!(o.coordinator_errors.len(), 1);
    }
    for stage in &STAGES[1..] {
        let o = Simulation::new(&c, all_pairs(&c, 6), 6)
            .unwrap()
            .fault(Fault::DuplicateToParty { party: PartyId(3), stage: *stage })
            .run();
        assert_sum_over(&o, &c.parties());
        assert_eq!(o.party_errors.len(), 1);
        assert!(!o.party_errors[0].1.is_fatal());
    }
}

#[test]
fn reordered_deliveries_do_not_change_the_sum() {
    let c = Consortium::new(8, 7);
    let o = Simulation::new(&c, all_pairs(&c, 7), 7).unwrap().fault(Fault::ReverseDelivery).run();
    assert_sum_over(&o, &c.parties());
}

#[test]
fn a_late_message_counts_as_a_dropout() {
    let c = Consortium::new(5, 8);
    let o = Simulation::new(&c, all_pairs(&c, 8), 8)
        .unwrap()
        .fault(Fault::LateFromParty { party: PartyId(4), stage: Stage::MaskedInput })
        .run();
    assert_sum_over(&o, &ids(&[0, 1, 2, 3]));
    assert!(matches!(
        o.coordinator_errors.as_slice(),
        [(PartyId(4), Error::UnexpectedMessage { got: Stage::MaskedInput, .. })]
    ));
}

#[test]
fn truncated_messages_are_rejected_as_undecodable() {
    let c = Consortium::new(5, 9);
    for stage in STAGES {
        let o = Simulation::new(&c, all_pairs(&c, 9), 9)
            .unwrap()
            .fault(Fault::TruncateFromParty { party: PartyId(0), stage })
            .run();
        assert!(matches!(o.coordinator_errors.as_slice(), [(PartyId(0), Error::Decode(_))]));
        // The truncated sender is a dropout from that stage on.
        let expected = if stage <= Stage::MaskedInput { ids(&[1, 2, 3, 4]) } else { c.parties() };
        assert_sum_over(&o, &expected);
    }
    for stage in &STAGES[1..] {
        let o = Simulation::new(&c, all_pairs(&c, 9), 9)
            .unwrap()
            .fault(Fault::TruncateToParty { party: PartyId(2), stage: *stage })
            .run();
        assert!(matches!(o.party_errors.as_slice(), [(PartyId(2), Error::Decode(_))]));
        let expected = if *stage <= Stage::MaskedInput { ids(&[0, 1, 3, 4]) } else { c.parties() };
        assert_sum_over(&o, &expected);
    }
}

#[test]
fn forged_keys_or_shares_abort_the_recipient_and_the_round_goes_on() {
    let c = Consortium::new(5, 10);
    // A flipped byte in the keys message breaks a signature; in the shares message, a ciphertext.
    for (stage, expect) in [(Stage::ShareKeys, "signature"), (Stage::MaskedInput, "share")] {
        let o = Simulation::new(&c, all_pairs(&c, 10), 10)
            .unwrap()
            .fault(Fault::CorruptToParty { party: PartyId(1), stage })
            .run();
        let PartyStatus::Aborted(e) = &o.status[&PartyId(1)] else {
            panic!("party 1 should have aborted: {o:?}")
        };
        assert!(e.to_string().contains(expect), "{e}");
        assert_sum_over(&o, &ids(&[0, 2, 3, 4]));
    }
}

#[test]
fn replayed_messages_from_an_old_round_are_rejected() {
    let c = Consortium::new(5, 11);
    let old = Simulation::new(&c, all_pairs(&c, 100), 11).unwrap().run();
    assert_sum_over(&old, &c.parties());
    for stage in &STAGES[1..] {
        let bytes = old.sent_to(PartyId(2), *stage).unwrap().to_vec();
        let o = Simulation::new(&c, all_pairs(&c, 101), 12)
            .unwrap()
            .fault(Fault::ReplayToParty { party: PartyId(2), stage: *stage, bytes })
            .run();
        assert!(matches!(o.party_errors.as_slice(), [(PartyId(2), Error::WrongSession { .. })]));
        assert_sum_over(&o, &c.parties());
    }
    for stage in STAGES {
        let bytes = old.sent_by(PartyId(3), stage).unwrap().to_vec();
        let o = Simulation::new(&c, all_pairs(&c, 101), 12)
            .unwrap()
            .fault(Fault::ReplayFromParty { party: PartyId(3), stage, bytes })
            .run();
        assert!(matches!(
            o.coordinator_errors.as_slice(),
            [(PartyId(3), Error::WrongSession { .. })]
        ));
        assert_sum_over(&o, &c.parties());
    }
}

#[test]
fn a_coordinator_substituting_a_key_is_caught() {
    let c = Consortium::new(4, 13);
    let o = Simulation::new(&c, all_pairs(&c, 13), 13)
        .unwrap()
        .intercept(Box::new(|to, msg| {
            let mut msg = msg;
            if let CoordinatorMessage::Keys { keys, .. } = &mut msg {
                for k in keys.iter_mut().filter(|k| k.party == PartyId(3) && to == PartyId(0)) {
                    k.mask_key = [9u8; 32];
                }
            }
            vec![(to, msg)]
        }))
        .run();
    assert_eq!(o.status[&PartyId(0)], PartyStatus::Aborted(Error::BadSignature(PartyId(3))));
    assert_sum_over(&o, &ids(&[1, 2, 3]));
}

#[test]
fn a_coordinator_cannot_isolate_one_party_with_a_small_cohort() {
    let c = Consortium::new(5, 14);
    let config = RoundConfig { min_cohort: 4, ..all_pairs(&c, 14) };
    // The coordinator tells every party that only it and two others survived.
    let o = Simulation::new(&c, config, 14)
        .unwrap()
        .intercept(Box::new(|to, msg| match msg {
            CoordinatorMessage::Survivors { session, .. } => {
                let mut survivors = vec![PartyId(0), PartyId(1), to];
                survivors.sort();
                survivors.dedup();
                vec![(to, CoordinatorMessage::Survivors { session, survivors })]
            }
            m => vec![(to, m)],
        }))
        .run();
    assert!(o.result.is_err());
    for p in c.parties() {
        assert!(
            matches!(o.status[&p], PartyStatus::Aborted(Error::CohortTooSmall { minimum: 4, .. })),
            "{p}: {:?}",
            o.status[&p]
        );
    }
    assert!(o.unmask.is_empty(), "no party revealed anything");
}

/// The coordinator tells some parties that party 4 survived and others that it dropped, hoping
/// to collect party 4's self-mask shares from the first group and its mask-key shares from the
/// second, which together would unmask party 4's input alone.
#[test]
fn inconsistent_survivor_sets_never_yield_both_shares_of_a_party() {
    let c = Consortium::new(5, 15);
    let victim = PartyId(4);
    let split = move |to: PartyId, msg: CoordinatorMessage| match msg {
        CoordinatorMessage::Survivors { session, survivors } if to.0 >= 2 && to != victim => {
            let lie = survivors.into_iter().filter(|p| *p != victim).collect();
            vec![(to, CoordinatorMessage::Survivors { session, survivors: lie })]
        }
        m => vec![(to, m)],
    };
    let o = Simulation::new(&c, all_pairs(&c, 15), 15).unwrap().intercept(Box::new(split)).run();
    let t = 3;
    let mut self_mask = 0;
    let mut mask_key = 0;
    for m in o.unmask.values() {
        if let PartyMessage::UnmaskShares { self_mask: s, mask_key: k, .. } = m {
            self_mask += s.iter().filter(|r| r.owner == victim).count();
            mask_key += k.iter().filter(|r| r.owner == victim).count();
        }
    }
    assert!(mask_key == 0, "no party may reveal the victim's mask key: {mask_key}");
    assert!(self_mask < t || mask_key < t);
    // The parties told the lie signed a set the others did not sign; the coordinator cannot
    // assemble t signatures over it, so they never reach the unmask stage.
    for p in [PartyId(2), PartyId(3)] {
        assert!(!o.unmask.contains_key(&p), "{p} revealed shares");
        assert!(matches!(o.status[&p], PartyStatus::InProgress(_)), "{p}: {:?}", o.status[&p]);
    }
}

/// The same attack with the coordinator forwarding every signature to everyone: parties that
/// see a neighbour's signature over a different set refuse to unmask.
#[test]
fn a_signature_over_a_different_survivor_set_stops_the_party() {
    let c = Consortium::new(5, 16);
    let victim = PartyId(4);
    let o = Simulation::new(&c, all_pairs(&c, 16), 16)
        .unwrap()
        .intercept(Box::new(move |to, msg| match msg {
            CoordinatorMessage::Survivors { session, survivors } if to == PartyId(0) => {
                let lie = survivors.into_iter().filter(|p| *p != victim).collect();
                vec![(to, CoordinatorMessage::Survivors { session, survivors: lie })]
            }
            // Party 0's own signature was discarded, so it would get no signatures at all:
            // forward it the ones party 1 gets, all over the true set.
            m @ CoordinatorMessage::Signatures { .. } if to == PartyId(1) => {
                vec![(to, m.clone()), (PartyId(0), m)]
            }
            m => vec![(to, m)],
        }))
        .run();
    // Party 0's signature is over the lie, so the coordinator rejected it, and party 0 itself
    // receives signatures over the true set, which do not verify for its view.
    assert!(
        matches!(o.status[&PartyId(0)], PartyStatus::Aborted(Error::InconsistentSurvivors(_))),
        "{:?}",
        o.status[&PartyId(0)]
    );
    assert!(matches!(o.coordinator_errors.as_slice(), [(PartyId(0), Error::BadSignature(_))]));
    // The others complete over the true set.
    assert_sum_over(&o, &c.parties());
    let revealed_key = o.unmask.values().any(|m| {
        matches!(m, PartyMessage::UnmaskShares { mask_key, .. } if mask_key.iter().any(|r| r.owner == victim))
    });
    assert!(!revealed_key);
}

#[test]
fn a_finished_party_reveals_nothing_more() {
    let c = Consortium::new(4, 17);
    let o = Simulation::new(&c, all_pairs(&c, 17), 17)
        .unwrap()
        .intercept(Box::new(|to, msg| match msg {
            // After the genuine signatures, ask again with a set that drops party 3.
            CoordinatorMessage::Signatures { session, signatures } => vec![
                (to, CoordinatorMessage::Signatures { session, signatures }),
                (
                    to,
                    CoordinatorMessage::Survivors {
                        session,
                        survivors: vec![PartyId(0), PartyId(1), PartyId(2)],
                    },
                ),
            ],
            m => vec![(to, m)],
        }))
        .run();
    assert_sum_over(&o, &c.parties());
    assert_eq!(o.party_errors.len(), 4);
    assert!(o.party_errors.iter().all(|(_, e)| *e == Error::RoundEnded));
    assert_eq!(o.unmask.len(), 4);
}

#[test]
fn shares_revealed_follow_the_survivor_set() {
    let c = Consortium::new(5, 18);
    let o = Simulation::new(&c, all_pairs(&c, 18), 18)
        .unwrap()
        .fault(Fault::Dropout { party: PartyId(1), before: Stage::MaskedInput })
        .run();
    assert_sum_over(&o, &ids(&[0, 2, 3, 4]));
    for m in o.unmask.values() {
        let PartyMessage::UnmaskShares { self_mask, mask_key, .. } = m else { unreachable!() };
        assert!(self_mask.iter().all(|r| r.owner != PartyId(1)));
        assert_eq!(mask_key.iter().map(|r| r.owner).collect::<Vec<_>>(), vec![PartyId(1)]);
    }
}

/// A distinctive value planted in one party's input never appears in any byte the coordinator
/// receives, neither while the round runs nor when a dropout's masks are removed.
#[test]
fn a_planted_canary_never_reaches_the_coordinator() {
    let canary: u64 = 0xC0FF_EE15_DEAD_BEEF;
    let c = Consortium::new(5, 19);
    let mut inputs = std::collections::BTreeMap::new();
    for p in c.parties() {
        let v =
            if p == PartyId(2) { vec![canary; 64] } else { (0..64).map(|i| i * 3 + 1).collect() };
        inputs.insert(p, v);
    }
    let o = Simulation::new(&c, all_pairs(&c, 19), 19)
        .unwrap()
        .inputs(inputs)
        .fault(Fault::Dropout { party: PartyId(4), before: Stage::MaskedInput })
        .run();
    assert_sum_over(&o, &ids(&[0, 1, 2, 3]));
    let needle = canary.to_le_bytes();
    let received: Vec<&Vec<u8>> =
        o.transcript.iter().filter(|(from, _, _)| from.is_some()).map(|(_, _, b)| b).collect();
    assert!(received.len() >= 5 * 4);
    for bytes in received {
        assert!(!bytes.windows(8).any(|w| w == needle), "the canary reached the coordinator");
    }
}

/// Once the minimum cohort is reached, a party vanishing after its masked input arrived does
/// not stop the round: past that stage only the threshold matters.
#[test]
fn min_cohort_binds_the_survivors_not_later_stages() {
    let c = Consortium::new(6, 21);
    let config = RoundConfig { min_cohort: 6, ..all_pairs(&c, 21) };
    let o = Simulation::new(&c, config, 21)
        .unwrap()
        .fault(Fault::Dropout { party: PartyId(5), before: Stage::ConsistencyCheck })
        .run();
    assert_sum_over(&o, &c.parties());
}

/// A party whose own minimum cohort is above the round's refuses, in a complete graph, to mask
/// its input into a cohort that shrank below its minimum before its masked input: it leaves,
/// and the others' sum goes on without it.
#[test]
fn a_party_keeps_its_own_minimum_cohort_when_others_drop_before_its_input() {
    // The parties' round names a minimum cohort of 6; the coordinator applies a lower one of
    // its own and carries on after a dropout. No party masks its input for five.
    let c = Consortium::new(6, 34);
    let base = all_pairs(&c, 34);
    let strict = RoundConfig { min_cohort: 6, ..base.clone() };
    for before in [Stage::AdvertiseKeys, Stage::ShareKeys] {
        let mut sim = Simulation::new(&c, base.clone(), 34).unwrap();
        for p in c.parties() {
            sim = sim.party_config(p, strict.clone()).unwrap();
        }
        let o = sim.fault(Fault::Dropout { party: PartyId(5), before }).run();
        assert!(o.result.is_err(), "{before}");
        for p in 0..5 {
            assert!(o.sent_by(PartyId(p), Stage::MaskedInput).is_none(), "{before}");
            assert_eq!(
                o.status[&PartyId(p)],
                PartyStatus::Aborted(Error::CohortTooSmall { size: 5, minimum: 6 }),
                "{before}"
            );
        }
    }
    // With everyone in, they take part.
    let o = Simulation::new(&c, strict, 34).unwrap().run();
    assert_sum_over(&o, &c.parties());
}

/// In a sparse graph, a coordinator that declares the neighbours on both sides of a short arc
/// of the cycle dropped would leave the arc's parties connected only to each other, so their
/// masks would cancel within the arc and its sum could be unmasked alone. Parties refuse to
/// sign a disconnected survivor set, and the round stops before anyone reveals a share.
#[test]
fn a_survivor_set_cut_into_pieces_is_refused() {
    use std::collections::BTreeSet;
    let n = 50;
    let c = Consortium::new(n, 77);
    let config =
        RoundConfig { min_cohort: 30, ..RoundConfig::sparse(session(77), c.parties(), 16) };
    let (k, t) = (config.neighbours, config.threshold);
    let params = config.clone().validate().unwrap();
    let neighbours = |p: PartyId| -> BTreeSet<PartyId> {
        params.neighbours_of(params.index_of(p).unwrap()).iter().copied().collect()
    };
    // Walk the cycle: from each party, the next is the unvisited neighbour sharing the most
    // neighbours with it (the adjacent position on the cycle).
    let mut order = vec![PartyId(0)];
    let mut seen: BTreeSet<PartyId> = order.iter().copied().collect();
    while order.len() < n {
        let here = neighbours(*order.last().unwrap());
        let next = *here
            .iter()
            .filter(|p| !seen.contains(p))
            .max_by_key(|p| neighbours(**p).intersection(&here).count())
            .unwrap();
        order.push(next);
        seen.insert(next);
    }
    // An arc of t parties, cut off by dropping k/2 parties on each side.
    let arc: BTreeSet<PartyId> = order[..t].iter().copied().collect();
    let cut: Vec<PartyId> =
        order[t..t + k / 2].iter().chain(&order[n - k / 2..]).copied().collect();
    for p in &arc {
        assert!(neighbours(*p).iter().all(|q| arc.contains(q) || cut.contains(q)));
    }
    let mut sim = Simulation::new(&c, config, 77).unwrap();
    for p in &cut {
        sim = sim.fault(Fault::Dropout { party: *p, before: Stage::MaskedInput });
    }
    let o = sim.run();
    assert_eq!(o.result, Err(Error::SurvivorsDisconnected));
    assert!(o.unmask.is_empty(), "no share may be revealed");
    // A party shown the same set by a deviating coordinator refuses it itself.
    let survivors: Vec<PartyId> = c.parties().into_iter().filter(|p| !cut.contains(p)).collect();
    assert!(!params.survivors_connected(&survivors));
}

/// Parties that join before their input exists, given it before the keys, before the shares,
/// or after the mask is expanded, contribute exactly as the others; one of them drops out
/// before its input comes and the round finishes without it.
#[test]
fn inputs_that_arrive_late_are_masked_exactly() {
    let c = Consortium::new(6, 21);
    let p = c.parties();
    let o = Simulation::new(&c, all_pairs(&c, 21), 21)
        .unwrap()
        .late_input(p[0], "expect-keys")
        .late_input(p[1], "expect-shares")
        .late_input(p[2], "await-input")
        .run();
    assert_sum_over(&o, &p);
    assert!(o.party_errors.is_empty() && o.coordinator_errors.is_empty(), "{o:?}");
    let o = Simulation::new(&c, all_pairs(&c, 22), 22)
        .unwrap()
        .late_input(p[2], "await-input")
        .late_input(p[3], "never")
        .run();
    let survivors: Vec<PartyId> = p.iter().copied().filter(|q| *q != p[3]).collect();
    assert_sum_over(&o, &survivors);
}

/// A late input of the wrong length, or a second one, is refused and changes nothing.
#[test]
fn a_late_input_is_checked() {
    let c = Consortium::new(3, 23);
    let params = std::sync::Arc::new(all_pairs(&c, 23).validate().unwrap());
    let p = c.parties()[0];
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut party =
        veil_protocol::Party::awaiting_input(params, p, c.identity(p), c.roster(), &mut rng)
            .unwrap();
    assert!(matches!(party.provide_input(vec![0; 3]), Err(Error::WrongLength { .. })));
    party.provide_input(vec![0; 64]).unwrap();
    assert_eq!(party.provide_input(vec![0; 64]), Err(Error::InputAlreadyProvided));
    assert_eq!(party.status(), PartyStatus::InProgress("expect-keys"));
}
