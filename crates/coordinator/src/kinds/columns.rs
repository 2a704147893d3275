//! Column aggregates (and planned SQL queries): counts, sums, histograms and groups of a
//! dataset's columns, read off the sum by the job's layout.

use veil_analytics::{JobSpec, Layout};
use veil_protocol::Aggregate;

use super::{KindError, RoundKind};

/// A column-aggregate job and its vector layout.
pub(super) struct Columns<'a> {
    spec: &'a JobSpec,
    layout: Layout,
}

impl<'a> Columns<'a> {
    pub(super) fn new(spec: &'a JobSpec) -> Result<Self, KindError> {
        let layout = Layout::new(spec).map_err(|e| KindError(e.to_string()))?;
        Ok(Self { spec, layout })
    }
}

impl RoundKind for Columns<'_> {
    fn vector_len(&self) -> Result<usize, KindError> {
        Ok(self.layout.vector_len())
    }

    fn rho(&self) -> f64 {
        self.spec.privacy.as_ref().map_or(0.0, |p| p.rho)
    }

    fn answer(&self, aggregate: &Aggregate) -> Result<String, KindError> {
        let ids = |p: &[veil_protocol::PartyId]| p.iter().map(|p| p.0).collect();
        let answer = self
            .layout
            .answer(&aggregate.sum, ids(&aggregate.contributors), ids(&aggregate.dropped))
            .map_err(|e| KindError(e.to_string()))?;
        serde_json::to_string(&answer).map_err(|e| KindError(e.to_string()))
    }
}
