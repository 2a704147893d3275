//! Property: for random n, t, k, vector length and dropout sets, the unmasked sum equals the
//! plain sum of the survivors' inputs, or the round aborts because too few remain.

use proptest::prelude::*;
use veil_protocol::params::min_sparse_neighbours;
use veil_protocol::{Error, PartyId, RoundConfig, Stage};
use veil_testkit::{Consortium, Fault, Simulation, session};

const STAGES: [Stage; 5] = Stage::ALL;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn unmasked_sum_is_the_survivors_plain_sum(
        n in 3usize..28,
        sparse in any::<bool>(),
        extra_t in 0usize..4,
        len in 1usize..40,
        drops in proptest::collection::vec((0u32..28, 0usize..5), 0..6),
        seed in any::<u64>(),
    ) {
        let c = Consortium::new(n, seed);
        let mut config = if sparse {
            RoundConfig::sparse(session(seed), c.parties(), len)
        } else {
            RoundConfig::all_pairs(session(seed), c.parties(), len)
        };
        prop_assume!(config.neighbours == n - 1 || config.neighbours >= min_sparse_neighbours(n));
        config.threshold = (config.threshold + extra_t).min(config.neighbours + 1);
        config.min_cohort = 2;
        let t = config.threshold;
        let complete = config.neighbours + 1 == n;
        let mut sim = Simulation::new(&c, config, seed).unwrap();
        let mut dropped_before_input = Vec::new();
        let mut dropped = std::collections::BTreeSet::new();
        for (p, s) in drops {
            let p = PartyId(p % n as u32);
            if dropped.insert(p) {
                sim = sim.fault(Fault::Dropout { party: p, before: STAGES[s] });
                if STAGES[s] <= Stage::MaskedInput {
                    dropped_before_input.push(p);
                }
            }
        }
        let o = sim.run();
        if complete {
            // All pairs: the round finishes exactly when at least t parties (never fewer than
            // the survivor quorum) stay to the end.
            prop_assert_eq!(o.result.is_ok(), n - dropped.len() >= t, "{:?}", o.result);
        }
        match &o.result {
            Ok(a) => {
                let expected: Vec<PartyId> =
                    c.parties().into_iter().filter(|p| !dropped_before_input.contains(p)).collect();
                prop_assert_eq!(&a.contributors, &expected);
                prop_assert_eq!(&a.sum, &o.plain_sum(&expected));
            }
            Err(Error::TooFewSurvivors { alive, needed, .. }) => {
                // Aborting is only allowed when dropouts really left too few.
                prop_assert!(alive < needed);
                prop_assert!(!dropped.is_empty());
            }
            Err(Error::SurvivorsDisconnected) => {
                // Only a sparse graph can fall apart, and only through dropouts.
                prop_assert!(!complete && !dropped.is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected failure: {}", e),
        }
        // No party ever revealed both shares of one owner.
        for m in o.unmask.values() {
            if let veil_protocol::PartyMessage::UnmaskShares { self_mask, mask_key, .. } = m {
                for r in self_mask {
                    prop_assert!(mask_key.iter().all(|k| k.owner != r.owner));
                }
            }
        }
    }
}

#[test]
fn without_dropouts_every_configuration_finishes() {
    for n in [3usize, 4, 9, 33] {
        let c = Consortium::new(n, n as u64);
        for config in [
            RoundConfig::all_pairs(session(n as u64), c.parties(), 5),
            RoundConfig::sparse(session(n as u64), c.parties(), 5),
        ] {
            let o = Simulation::new(&c, config, 1).unwrap().run();
            let a = o.result.as_ref().unwrap();
            assert_eq!(a.sum, o.plain_sum(&c.parties()), "n = {n}");
        }
    }
}
