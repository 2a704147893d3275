//! A party's keys, normalised and checked.

use std::borrow::Cow;
use std::fmt;

use rayon::slice::ParallelSliceMut;
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::params::{KeyPolicy, MAX_SET_SIZE};

impl KeyPolicy {
    /// `key` as this policy normalises it.
    pub fn normalise<'a>(&self, key: &'a str) -> Cow<'a, str> {
        let key = if self.trim { key.trim() } else { key };
        if self.case_fold && key.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
            Cow::Owned(key.to_lowercase())
        } else {
            Cow::Borrowed(key)
        }
    }
}

/// A party's keys, normalised under a [`KeyPolicy`], none empty and all distinct, in the
/// order they were given: position `i` is the `i`-th key of the input, which is what
/// [`crate::Membership`] refers to.
///
/// The keys are stored end to end in one buffer, zeroized on drop; `Debug` prints the count
/// only.
#[derive(Clone)]
pub struct KeySet {
    policy: KeyPolicy,
    bytes: Vec<u8>,
    /// `ends[i]` is where key `i` ends in `bytes`.
    ends: Vec<usize>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySet({} keys, [redacted])", self.len())
    }
}

impl Drop for KeySet {
    fn drop(&mut self) {
        self.bytes.zeroize();
        self.ends.zeroize();
    }
}

impl KeySet {
    /// Normalises `keys` under `policy` and checks them: an empty key (after normalisation)
    /// gives [`Error::EmptyKeys`], a key that repeats an earlier one [`Error::DuplicateKeys`],
    /// each naming how many, never which.
    pub fn new<I, K>(policy: KeyPolicy, keys: I) -> Result<Self>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let keys = keys.into_iter();
        let mut set =
            KeySet { policy, bytes: Vec::new(), ends: Vec::with_capacity(keys.size_hint().0) };
        let mut empty = 0u64;
        for key in keys {
            let key = policy.normalise(key.as_ref());
            if key.is_empty() {
                empty += 1;
            }
            set.bytes.extend_from_slice(key.as_bytes());
            if let Cow::Owned(mut folded) = key {
                folded.zeroize();
            }
            set.ends.push(set.bytes.len());
        }
        let count = set.ends.len() as u64;
        if count > MAX_SET_SIZE {
            return Err(Error::TooManyKeys { count, max: MAX_SET_SIZE });
        }
        if empty > 0 {
            return Err(Error::EmptyKeys { count: empty });
        }
        let duplicates = set.count_duplicates();
        if duplicates > 0 {
            return Err(Error::DuplicateKeys { count: duplicates });
        }
        Ok(set)
    }

    /// How many keys repeat an earlier one: sorts the positions by key and counts equal
    /// neighbours, in 4 bytes per key.
    fn count_duplicates(&self) -> u64 {
        let len = u32::try_from(self.len()).expect("the set size was checked against u32::MAX");
        let mut order: Vec<u32> = (0..len).collect();
        order.par_sort_unstable_by(|&i, &j| self.key(i as usize).cmp(self.key(j as usize)));
        order.windows(2).filter(|w| self.key(w[0] as usize) == self.key(w[1] as usize)).count()
            as u64
    }

    /// The policy the keys were normalised under.
    pub fn policy(&self) -> KeyPolicy {
        self.policy
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The normalised key at `position`.
    /// The key at `position`, as normalised (keys are UTF-8 text).
    pub fn get(&self, position: usize) -> Option<&str> {
        (position < self.len()).then(|| std::str::from_utf8(self.key(position)).ok()).flatten()
    }

    pub(crate) fn key(&self, position: usize) -> &[u8] {
        let start = if position == 0 { 0 } else { self.ends[position - 1] };
        &self.bytes[start..self.ends[position]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trim: bool, case_fold: bool) -> KeyPolicy {
        KeyPolicy { trim, case_fold }
    }

    #[test]
    fn normalisation_trims_and_folds_as_the_policy_says() {
        assert_eq!(policy(true, true).normalise(" A1 "), "a1");
        assert_eq!(policy(true, true).normalise("\tÉcole\n"), "école");
        assert_eq!(policy(true, false).normalise(" A1 "), "A1");
        assert_eq!(policy(false, true).normalise(" A1 "), " a1 ");
        assert_eq!(policy(false, false).normalise(" A1 "), " A1 ");
        assert!(matches!(policy(true, true).normalise("a1"), Cow::Borrowed(_)));
    }

    #[test]
    fn keys_keep_their_input_order() {
        let set = KeySet::new(policy(true, true), [" B ", "a", "Cc"]).expect("distinct keys");
        assert_eq!(set.len(), 3);
        assert_eq!(set.key(0), b"b");
        assert_eq!(set.key(1), b"a");
        assert_eq!(set.key(2), b"cc");
    }

    #[test]
    fn empty_keys_are_refused_and_counted() {
        let err = KeySet::new(KeyPolicy::default(), ["a", "  ", "", "b"]).unwrap_err();
        assert_eq!(err, Error::EmptyKeys { count: 2 });
        // Without trimming, whitespace is a key.
        assert!(KeySet::new(policy(false, false), ["a", " "]).is_ok());
    }

    #[test]
    fn duplicates_are_refused_and_counted_without_naming_them() {
        let err = KeySet::new(policy(true, true), ["secret-1", "x", " SECRET-1", "x", "x", "y"])
            .unwrap_err();
        assert_eq!(err, Error::DuplicateKeys { count: 3 });
        let text = err.to_string();
        assert!(!text.contains("secret") && !text.contains('x'), "{text}");
        // Case matters without folding.
        assert!(KeySet::new(KeyPolicy::default(), ["A1", "a1"]).is_ok());
    }

    #[test]
    fn an_empty_set_is_a_set() {
        let set = KeySet::new(KeyPolicy::default(), Vec::<String>::new()).expect("no keys");
        assert!(set.is_empty());
        assert_eq!(format!("{set:?}"), "KeySet(0 keys, [redacted])");
    }
}
