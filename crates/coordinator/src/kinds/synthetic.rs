//! Synthetic vector sums, for benchmarks: every party contributes random elements, and the
//! answer is the sum's fingerprint. The worked example of a kind in docs/JOBS.md.

use sha2::{Digest, Sha256};
use veil_analytics::SyntheticSpec;
use veil_protocol::Aggregate;

use super::{KindError, RoundKind};

pub(super) struct Synthetic<'a>(pub(super) &'a SyntheticSpec);

impl RoundKind for Synthetic<'_> {
    fn plain(&self) -> bool {
        self.0.plain
    }

    fn vector_len(&self) -> Result<usize, KindError> {
        Ok(self.0.dim as usize)
    }

    fn answer(&self, aggregate: &Aggregate) -> Result<String, KindError> {
        let mut h = Sha256::new();
        for x in &aggregate.sum {
            h.update(x.to_le_bytes());
        }
        Ok(serde_json::json!({
            "dim": self.0.dim,
            "plain": self.0.plain,
            "sum_sha256": hex::encode(h.finalize()),
            "contributors": aggregate.contributors.iter().map(|p| p.0).collect::<Vec<_>>(),
        })
        .to_string())
    }
}
