//! The rise/fall state machine of one health-checked backend. Pure: no I/O, no clock.
//!
//! A backend starts **up** (optimistic): an agent restart or a newly registered backend
//! must not empty the tables before the first checks have run. An up backend goes down
//! after `fall` failures in a row; a down backend comes back after `rise` successes in a
//! row.

/// A change of a backend's up/down view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentDown,
    WentUp,
}

/// Health of one backend as its checks so far have shown it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    up: bool,
    consecutive_successes: u32,
    consecutive_failures: u32,
    transitions: u64,
    checks: u64,
    last_error: Option<String>,
}

impl HealthState {
    /// A backend that is up and has not been checked. A `rise` or `fall` of 0 acts as 1
    /// (one result is the least that can change the view).
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            consecutive_successes: 0,
            consecutive_failures: 0,
            transitions: 0,
            checks: 0,
            last_error: None,
        }
    }

    /// A backend already known down (its check changed while it was down): it needs
    /// `rise` successes to come up, like any down backend.
    pub fn new_down(rise: u32, fall: u32) -> Self {
        Self {
            up: false,
            ..Self::new(rise, fall)
        }
    }

    /// Records one check's result (`Err` carries what failed) and returns the transition
    /// it caused, if any.
    pub fn record(&mut self, result: Result<(), String>) -> Option<Transition> {
        self.checks += 1;
        match result {
            Ok(()) => {
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
                if !self.up && self.consecutive_successes >= self.rise {
                    self.up = true;
                    self.transitions += 1;
                    return Some(Transition::WentUp);
                }
            }
            Err(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
                self.last_error = Some(error);
                if self.up && self.consecutive_failures >= self.fall {
                    self.up = false;
                    self.transitions += 1;
                    return Some(Transition::WentDown);
                }
            }
        }
        None
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Successes in a row up to now (0 after a failure).
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    /// Failures in a row up to now (0 after a success).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Up->down and down->up changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Checks recorded so far.
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// What the most recent failed check said (kept after later successes, for status).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), String> {
        Err("connection refused".to_owned())
    }

    /// Feeds `results` (true = success) and returns the transitions, one per result.
    fn run(state: &mut HealthState, results: &[bool]) -> Vec<Option<Transition>> {
        results
            .iter()
            .map(|&ok| state.record(if ok { Ok(()) } else { fail() }))
            .collect()
    }

    #[test]
    fn starts_up_and_unchecked() {
        let s = HealthState::new(2, 3);
        assert!(s.is_up());
        assert_eq!((s.checks(), s.transitions(), s.last_error()), (0, 0, None));
    }

    #[test]
    fn goes_down_exactly_at_fall_consecutive_failures() {
        for fall in 1..=5u32 {
            let mut s = HealthState::new(2, fall);
            for i in 1..fall {
                assert_eq!(s.record(fail()), None, "fall={fall} failure {i}");
                assert!(s.is_up());
            }
            assert_eq!(s.record(fail()), Some(Transition::WentDown), "fall={fall}");
            assert!(!s.is_up());
            assert_eq!(s.consecutive_failures(), fall);
            // Further failures keep it down without another transition.
            assert_eq!(s.record(fail()), None);
            assert_eq!(s.transitions(), 1);
        }
    }

    #[test]
    fn comes_up_exactly_at_rise_consecutive_successes() {
        for rise in 1..=5u32 {
            let mut s = HealthState::new(rise, 1);
            assert_eq!(s.record(fail()), Some(Transition::WentDown));
            for i in 1..rise {
                assert_eq!(s.record(Ok(())), None, "rise={rise} success {i}");
                assert!(!s.is_up());
            }
            assert_eq!(s.record(Ok(())), Some(Transition::WentUp), "rise={rise}");
            assert!(s.is_up());
            assert_eq!(s.consecutive_successes(), rise);
            assert_eq!(s.record(Ok(())), None);
            assert_eq!(s.transitions(), 2);
        }
    }

    #[test]
    fn a_success_resets_the_failure_run_and_vice_versa() {
        let mut s = HealthState::new(3, 3);
        // Up: two failures, a success, two failures: never three in a row.
        let t = run(&mut s, &[false, false, true, false, false]);
        assert!(t.iter().all(Option::is_none), "{t:?}");
        assert!(s.is_up());
        assert_eq!(s.consecutive_failures(), 2);
        assert_eq!(s.record(fail()), Some(Transition::WentDown));
        // Down: two successes, a failure, two successes: never three in a row.
        let t = run(&mut s, &[true, true, false, true, true]);
        assert!(t.iter().all(Option::is_none), "{t:?}");
        assert!(!s.is_up());
        assert_eq!(s.consecutive_successes(), 2);
        assert_eq!(s.record(Ok(())), Some(Transition::WentUp));
    }

    #[test]
    fn successes_while_up_and_failures_while_down_change_nothing() {
        let mut s = HealthState::new(1, 1);
        assert!(run(&mut s, &[true; 10]).iter().all(Option::is_none));
        assert_eq!(s.record(fail()), Some(Transition::WentDown));
        assert!(run(&mut s, &[false; 10]).iter().all(Option::is_none));
        assert_eq!((s.transitions(), s.checks()), (1, 21));
    }

    #[test]
    fn new_down_needs_rise_successes() {
        let mut s = HealthState::new_down(2, 3);
        assert!(!s.is_up());
        assert_eq!(s.record(Ok(())), None);
        assert_eq!(s.record(Ok(())), Some(Transition::WentUp));
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut s = HealthState::new(0, 0);
        assert_eq!(s.record(fail()), Some(Transition::WentDown));
        assert_eq!(s.record(Ok(())), Some(Transition::WentUp));
    }

    #[test]
    fn remembers_the_last_error_across_successes() {
        let mut s = HealthState::new(1, 2);
        s.record(Err("timed out".to_owned()));
        s.record(Err("status 503, expected 200".to_owned()));
        s.record(Ok(()));
        assert_eq!(s.last_error(), Some("status 503, expected 200"));
    }

    /// Every sequence of up to 10 results, against a model that re-derives the view from
    /// the whole history: the state machine and the model agree after each step.
    #[test]
    fn agrees_with_a_history_model_on_every_short_sequence() {
        fn model(history: &[bool], rise: u32, fall: u32) -> (bool, u64) {
            let (mut up, mut run_ok, mut run_fail, mut transitions) = (true, 0u32, 0u32, 0u64);
            for &ok in history {
                if ok {
                    run_ok += 1;
                    run_fail = 0;
                } else {
                    run_fail += 1;
                    run_ok = 0;
                }
                let next = if up { run_fail < fall } else { run_ok >= rise };
                transitions += u64::from(next != up);
                up = next;
            }
            (up, transitions)
        }
        for (rise, fall) in [(1, 1), (2, 3), (3, 2), (4, 4)] {
            for len in 0..=10usize {
                for bits in 0u32..(1 << len) {
                    let history: Vec<bool> = (0..len).map(|i| bits & (1 << i) != 0).collect();
                    let mut s = HealthState::new(rise, fall);
                    for step in 1..=len {
                        let before = s.is_up();
                        let t = s.record(if history[step - 1] { Ok(()) } else { fail() });
                        let (up, transitions) = model(&history[..step], rise, fall);
                        assert_eq!((s.is_up(), s.transitions()), (up, transitions));
                        let expect = match (before, up) {
                            (true, false) => Some(Transition::WentDown),
                            (false, true) => Some(Transition::WentUp),
                            _ => None,
                        };
                        assert_eq!(t, expect, "rise={rise} fall={fall} {history:?}");
                    }
                }
            }
        }
    }
}
