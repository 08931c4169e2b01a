//! Stable small-integer ids for services and backends.
//!
//! Ids index kernel arrays (tables, counters). A released id is not handed out again until
//! the allocator has gone round the whole space, so a new backend does not inherit the
//! counters of one removed a moment ago.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
#[error("all {0} ids are in use")]
pub struct Exhausted(pub u32);

#[derive(Debug)]
pub struct IdAllocator<K: Ord> {
    first: u32,
    end: u32,
    next: u32,
    by_key: BTreeMap<K, u32>,
    in_use: BTreeSet<u32>,
}

impl<K: Ord + Clone> IdAllocator<K> {
    /// Ids from `first` (inclusive) to `end` (exclusive).
    pub fn new(first: u32, end: u32) -> Self {
        Self {
            first,
            end,
            next: first,
            by_key: BTreeMap::new(),
            in_use: BTreeSet::new(),
        }
    }

    pub fn get(&self, k: &K) -> Option<u32> {
        self.by_key.get(k).copied()
    }

    pub fn get_or_alloc(&mut self, k: &K) -> Result<u32, Exhausted> {
        if let Some(id) = self.get(k) {
            return Ok(id);
        }
        let span = self.end - self.first;
        for _ in 0..span {
            let id = self.next;
            self.next = if id + 1 >= self.end {
                self.first
            } else {
                id + 1
            };
            if self.in_use.insert(id) {
                self.by_key.insert(k.clone(), id);
                return Ok(id);
            }
        }
        Err(Exhausted(span))
    }

    /// Records that `k` holds `id`, allocated by someone else (a previous agent whose maps
    /// were adopted). Returns false, changing nothing, if `id` is out of range or taken, or
    /// `k` already has one. Allocation goes on after the highest claimed id.
    pub fn claim(&mut self, k: &K, id: u32) -> bool {
        if !(self.first..self.end).contains(&id)
            || self.by_key.contains_key(k)
            || !self.in_use.insert(id)
        {
            return false;
        }
        self.by_key.insert(k.clone(), id);
        if id >= self.next {
            self.next = if id + 1 >= self.end {
                self.first
            } else {
                id + 1
            };
        }
        true
    }

    pub fn release(&mut self, k: &K) -> Option<u32> {
        let id = self.by_key.remove(k)?;
        self.in_use.remove(&id);
        Some(id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.by_key.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_not_reused_at_once() {
        let mut a = IdAllocator::new(1, 4);
        assert_eq!(a.get_or_alloc(&"x").unwrap(), 1);
        assert_eq!(a.get_or_alloc(&"y").unwrap(), 2);
        assert_eq!(a.get_or_alloc(&"x").unwrap(), 1);
        a.release(&"x");
        assert_eq!(a.get_or_alloc(&"z").unwrap(), 3, "fresh id before reuse");
        assert_eq!(a.get_or_alloc(&"w").unwrap(), 1, "wraps to the released id");
        assert!(a.get_or_alloc(&"v").is_err());
    }

    #[test]
    fn claimed_ids_are_kept_and_skipped() {
        let mut a = IdAllocator::new(1, 10);
        assert!(a.claim(&"x", 3));
        assert!(!a.claim(&"y", 3), "taken");
        assert!(!a.claim(&"x", 4), "x has one");
        assert!(!a.claim(&"z", 10), "out of range");
        assert_eq!(a.get(&"x"), Some(3));
        assert_eq!(
            a.get_or_alloc(&"y").unwrap(),
            4,
            "goes on after the claimed id"
        );
    }
}
