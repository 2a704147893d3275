//! Consumer quotas: how many jobs a consumer may submit, and how many results it may fetch, in
//! a sliding 24-hour window. The roster sets the limits; the coordinator counts.

/// The window a quota counts over, in milliseconds.
pub const WINDOW_MS: i64 = 86_400_000;

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// Job submissions.
    Jobs,
    /// Result fetches.
    Fetches,
}

/// A consumer at its quota.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("quota: {consumer} may {} {limit} {} per 24 hours and has {} {used}", verb(*.quota), noun(*.quota), past(*.quota))]
pub struct QuotaExceeded {
    /// Which quota.
    pub quota: Quota,
    /// The consumer.
    pub consumer: String,
    /// Its limit.
    pub limit: u32,
    /// What it used in the window.
    pub used: u64,
}

fn verb(q: Quota) -> &'static str {
    match q {
        Quota::Jobs => "submit",
        Quota::Fetches => "fetch",
    }
}

fn noun(q: Quota) -> &'static str {
    match q {
        Quota::Jobs => "jobs",
        Quota::Fetches => "results",
    }
}

fn past(q: Quota) -> &'static str {
    match q {
        Quota::Jobs => "submitted",
        Quota::Fetches => "fetched",
    }
}

/// Whether one more use fits: `limit` `None` is no quota; `used` counts the uses in the window.
pub fn check(
    quota: Quota,
    consumer: &str,
    limit: Option<u32>,
    used: u64,
) -> Result<(), QuotaExceeded> {
    match limit {
        Some(limit) if used >= u64::from(limit) => {
            Err(QuotaExceeded { quota, consumer: consumer.to_string(), limit, used })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_allows_its_limit_and_names_itself_beyond() {
        assert_eq!(check(Quota::Jobs, "a", None, 1_000), Ok(()));
        assert_eq!(check(Quota::Jobs, "a", Some(2), 1), Ok(()));
        let e = check(Quota::Jobs, "a", Some(2), 2).unwrap_err();
        assert_eq!(e.to_string(), "quota: a may submit 2 jobs per 24 hours and has submitted 2");
        let e = check(Quota::Fetches, "a", Some(1), 1).unwrap_err();
        assert_eq!(e.to_string(), "quota: a may fetch 1 results per 24 hours and has fetched 1");
    }
}
