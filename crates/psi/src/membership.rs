//! A set of positions, one bit each.

/// Which positions of a set are members: one bit per position.
#[derive(Clone, PartialEq, Eq)]
pub struct Membership {
    words: Vec<u64>,
    len: usize,
    count: usize,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Membership({} of {})", self.count, self.len)
    }
}

impl Membership {
    /// No member among `len` positions.
    pub(crate) fn empty(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)], len, count: 0 }
    }

    /// Marks `position`; false if it was marked already.
    pub(crate) fn insert(&mut self, position: usize) -> bool {
        let (word, bit) = (position / 64, 1u64 << (position % 64));
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.count += usize::from(fresh);
        fresh
    }

    /// Whether `position` is a member (false past the end).
    pub fn contains(&self, position: usize) -> bool {
        position < self.len && self.words[position / 64] & (1u64 << (position % 64)) != 0
    }

    /// How many positions are members.
    pub fn count(&self) -> usize {
        self.count
    }

    /// How many positions there are, members or not.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no positions at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The members, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    w * 64 + bit
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_counts_and_lists_positions() {
        let mut m = Membership::empty(130);
        assert!(m.insert(0) && m.insert(64) && m.insert(129));
        assert!(!m.insert(64));
        assert_eq!(m.count(), 3);
        assert!(m.contains(129) && !m.contains(1) && !m.contains(500));
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert_eq!(format!("{m:?}"), "Membership(3 of 130)");
    }
}
