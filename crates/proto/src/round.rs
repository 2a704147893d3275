//! A round's parameters and a training job's steps on the wire: each conversion, both ways, in
//! one place, for the coordinator that starts rounds and the parties that check them.

use std::time::Duration;

use veil_learning::job::Step;
use veil_protocol::{PartyId, RoundConfig, RoundParams, SessionId};

use crate::v1::{RoundStart, StepKind, TaskReply};

/// A round start the party cannot read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The session is not 32 bytes.
    #[error("the round start's session is {0} bytes, not 32")]
    Session(usize),
    /// The step kind is not one this version knows.
    #[error("the round start names step kind {0}, which this party does not know")]
    StepKind(i32),
}

/// The round start that announces `params` for job `job_id`.
pub fn start(job_id: &str, params: &RoundParams) -> RoundStart {
    RoundStart {
        job_id: job_id.to_string(),
        session: params.session().0.to_vec(),
        parties: params.parties().iter().map(|p| p.0).collect(),
        threshold: params.threshold() as u32,
        neighbours: params.neighbours() as u32,
        min_cohort: params.min_cohort() as u32,
        max_corrupt: params.max_corrupt() as u32,
        vector_len: params.vector_len() as u32,
        stage_timeout_ms: u64::try_from(params.stage_timeout().as_millis()).unwrap_or(u64::MAX),
        ..RoundStart::default()
    }
}

/// The start of a plain (unmasked) round over `parties`.
pub fn plain_start(job_id: &str, parties: &[PartyId], vector_len: usize) -> RoundStart {
    RoundStart {
        job_id: job_id.to_string(),
        parties: parties.iter().map(|p| p.0).collect(),
        vector_len: vector_len as u32,
        plain: true,
        ..RoundStart::default()
    }
}

/// The round configuration a start announces, bound to the job's hash (`context`): what the
/// party validates and builds its part of the round from.
pub fn config(start: &RoundStart, context: [u8; 32]) -> Result<RoundConfig, WireError> {
    let session = <[u8; 32]>::try_from(start.session.as_slice())
        .map_err(|_| WireError::Session(start.session.len()))?;
    Ok(RoundConfig {
        session: SessionId(session),
        parties: start.parties.iter().map(|p| PartyId(*p)).collect(),
        threshold: start.threshold as usize,
        neighbours: start.neighbours as usize,
        max_corrupt: start.max_corrupt as usize,
        min_cohort: start.min_cohort as usize,
        vector_len: start.vector_len as usize,
        context,
        // The party keeps no deadlines of its own; zero would not validate.
        stage_timeout: Duration::from_millis(start.stage_timeout_ms.max(1)),
    })
}

/// A step as its kind and training round.
fn to_wire(step: Step) -> (StepKind, u32) {
    match step {
        Step::Moments => (StepKind::StepMoments, 0),
        Step::Train { round } => (StepKind::StepTrain, round),
        Step::Evaluate => (StepKind::StepEvaluate, 0),
    }
}

/// The step a kind and round name; `None` for none.
fn from_wire(kind: i32, round: u32) -> Result<Option<Step>, WireError> {
    match StepKind::try_from(kind) {
        Ok(StepKind::StepUnspecified) => Ok(None),
        Ok(StepKind::StepFinished) => Err(WireError::StepKind(kind)),
        Ok(StepKind::StepMoments) => Ok(Some(Step::Moments)),
        Ok(StepKind::StepTrain) => Ok(Some(Step::Train { round })),
        Ok(StepKind::StepEvaluate) => Ok(Some(Step::Evaluate)),
        Err(_) => Err(WireError::StepKind(kind)),
    }
}

/// What a training step's round start carries besides the round's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct StepFields {
    /// The step.
    pub step: Step,
    /// The global model's parameters (empty for the moments step).
    pub parameters: Vec<f64>,
    /// The standardisation every party applies: mean per feature.
    pub mean: Vec<f64>,
    /// And scale per feature.
    pub scale: Vec<f64>,
}

impl StepFields {
    /// Adds the step's fields to a round start.
    pub fn apply(&self, start: &mut RoundStart) {
        set_step(start, self.step);
        start.parameters = self.parameters.clone();
        start.mean = self.mean.clone();
        start.scale = self.scale.clone();
    }
}

/// Names the training step a round start is for.
pub fn set_step(start: &mut RoundStart, step: Step) {
    let (kind, round) = to_wire(step);
    start.step_kind = kind as i32;
    start.train_round = round;
}

/// The training step a round start is for (`None` for a one-round job's round).
pub fn step(start: &RoundStart) -> Result<Option<Step>, WireError> {
    from_wire(start.step_kind, start.train_round)
}

/// Where a party stands in a training job, in the order the job's steps run (`Step::code`):
/// 0 before the first step, a step's code when that step is next, and one past the evaluation's
/// code when it has contributed to every step. Written into its reply.
pub fn set_next_position(reply: &mut TaskReply, position: u64) {
    match u32::try_from(position) {
        Ok(0) => {}
        Ok(code) => set_next_step(reply, Step::from_code(code)),
        Err(_) => reply.next_step_kind = StepKind::StepFinished as i32,
    }
}

/// Where a party's reply says it stands in a training job ([`set_next_position`]).
pub fn next_position(reply: &TaskReply) -> Result<u64, WireError> {
    if reply.next_step_kind == StepKind::StepFinished as i32 {
        return Ok(u64::from(u32::MAX) + 1);
    }
    Ok(next_step(reply)?.map_or(0, |s| u64::from(s.code())))
}

/// Names the first training step a party still contributes to in its reply.
pub fn set_next_step(reply: &mut TaskReply, step: Step) {
    let (kind, round) = to_wire(step);
    reply.next_step_kind = kind as i32;
    reply.next_train_round = round;
}

/// The first training step a party's reply says it still contributes to (`None`: from the
/// start).
pub fn next_step(reply: &TaskReply) -> Result<Option<Step>, WireError> {
    from_wire(reply.next_step_kind, reply.next_train_round)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_start_carries_the_configuration_it_was_made_from() {
        let parties: Vec<PartyId> = (0..5).map(PartyId).collect();
        let mut config = RoundConfig::all_pairs(SessionId([9; 32]), parties, 100).tolerating(1);
        config.context = [3; 32];
        let params = config.clone().validate().expect("safe parameters");
        let start = start("job", &params);
        let back = super::config(&start, [3; 32]).expect("a readable start");
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
        let again = back.validate().expect("the same safe parameters");
        assert_eq!(again.digest(), params.digest());
        let short = RoundStart { session: vec![1; 31], ..start };
        assert!(matches!(super::config(&short, [3; 32]), Err(WireError::Session(31))));
    }

    #[test]
    fn every_step_survives_the_wire_and_unknown_kinds_are_refused() {
        for s in
            [Step::Moments, Step::Train { round: 0 }, Step::Train { round: 41 }, Step::Evaluate]
        {
            let mut start = RoundStart::default();
            set_step(&mut start, s);
            assert_eq!(step(&start), Ok(Some(s)));
            let mut reply = TaskReply::default();
            set_next_step(&mut reply, s);
            assert_eq!(next_step(&reply), Ok(Some(s)));
        }
        assert_eq!(step(&RoundStart::default()), Ok(None));
        // Positions in a reply, including past the last step.
        for position in [0, 1, 5, u64::from(u32::MAX), u64::from(u32::MAX) + 1] {
            let mut reply = TaskReply::default();
            set_next_position(&mut reply, position);
            assert_eq!(next_position(&reply), Ok(position), "{position}");
        }
        let odd = RoundStart { step_kind: 99, ..RoundStart::default() };
        assert_eq!(step(&odd), Err(WireError::StepKind(99)));
    }
}
