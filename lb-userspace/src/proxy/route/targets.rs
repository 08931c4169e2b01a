//! Weighted choice among a route's services, deterministic in the caller's random value.

/// A route's targets with cumulative weights.
#[derive(Debug, Clone)]
pub struct Targets {
    services: Vec<(String, u32)>,
    /// `cumulative[i]` = sum of weights `0..=i`.
    cumulative: Vec<u64>,
}

impl Targets {
    /// `None` when there is no target with a weight above 0.
    pub(super) fn new(services: Vec<(String, u32)>) -> Option<Self> {
        let mut sum = 0u64;
        let cumulative: Vec<u64> = services
            .iter()
            .map(|(_, w)| {
                sum += u64::from(*w);
                sum
            })
            .collect();
        (sum > 0).then_some(Self {
            services,
            cumulative,
        })
    }

    /// The service for `r` (a random or hashed value): slot `r % total weight`, so a service
    /// with weight `w` gets `w / total` of uniformly spread `r`s; weight 0 is never picked.
    pub fn pick(&self, r: u64) -> &str {
        let total = *self.cumulative.last().expect("non-empty by construction");
        let slot = r % total;
        let i = self.cumulative.partition_point(|&c| c <= slot);
        &self.services[i].0
    }

    /// `(service, weight)` as configured.
    pub fn services(&self) -> &[(String, u32)] {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(w: &[(&str, u32)]) -> Targets {
        Targets::new(w.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect()).unwrap()
    }

    #[test]
    fn canary_split_is_exact_over_a_full_cycle() {
        let t = t(&[("stable", 95), ("canary", 5)]);
        let canary = (0..1000u64).filter(|r| t.pick(*r) == "canary").count();
        assert_eq!(canary, 50);
        assert_eq!(t.pick(0), "stable");
        assert_eq!(t.pick(94), "stable");
        assert_eq!(t.pick(95), "canary");
        assert_eq!(t.pick(99), "canary");
        assert_eq!(t.pick(100), "stable");
        assert_eq!(t.pick(u64::MAX), t.pick(u64::MAX % 100));
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let t = t(&[("off", 0), ("a", 1), ("off2", 0), ("b", 2), ("off3", 0)]);
        let picked: Vec<&str> = (0..6).map(|r| t.pick(r)).collect();
        assert_eq!(picked, ["a", "b", "b", "a", "b", "b"]);
    }

    #[test]
    fn all_zero_or_empty_is_refused() {
        assert!(Targets::new(vec![("a".into(), 0)]).is_none());
        assert!(Targets::new(Vec::new()).is_none());
    }

    #[test]
    fn large_weights_do_not_overflow() {
        let t = t(&[("a", u32::MAX), ("b", u32::MAX)]);
        assert_eq!(t.pick(u64::from(u32::MAX) - 1), "a");
        assert_eq!(t.pick(u64::from(u32::MAX)), "b");
    }
}
