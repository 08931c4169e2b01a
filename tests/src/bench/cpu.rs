//! Whole-machine CPU time from `/proc/stat`, and a gate that waits for the machine to be idle.
//!
//! `/proc/stat` is not namespaced: it counts every CPU's time, whatever runs where, which is
//! what "whole-machine CPU per request" means (load generator, proxies, kernel, all of it).

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Cumulative CPU times of all CPUs, in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
}

impl CpuTimes {
    /// Reads the `cpu` line of `/proc/stat`.
    pub fn now() -> Result<CpuTimes> {
        let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        parse_stat(&text).context("no `cpu` line in /proc/stat")
    }

    /// Busy ticks and total ticks since `earlier`.
    pub fn since(&self, earlier: &CpuTimes) -> (u64, u64) {
        (
            self.busy.saturating_sub(earlier.busy),
            self.total.saturating_sub(earlier.total),
        )
    }
}

/// Parses the aggregate `cpu ...` line. Guest time is already inside user/nice, so it is not
/// added again.
pub fn parse_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    let (user, nice, system, idle, iowait, irq, softirq, steal) =
        (at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7));
    let busy = user + nice + system + irq + softirq + steal;
    Some(CpuTimes {
        busy,
        total: busy + idle + iowait,
    })
}

/// Microseconds per clock tick (10 000 at the usual USER_HZ of 100).
pub fn tick_us() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Share of the whole machine (0..=1) busy over `window`.
pub fn busy_share(window: Duration) -> Result<f64> {
    let a = CpuTimes::now()?;
    std::thread::sleep(window);
    let (busy, total) = CpuTimes::now()?.since(&a);
    Ok(if total == 0 {
        0.0
    } else {
        busy as f64 / total as f64
    })
}

/// When a run may start: the machine's busy share over `sample` at most `threshold`, tried
/// up to `tries` times with `pause` between, and never more than `budget` of waiting over the
/// whole bench (past it, one sample is taken and recorded, so a machine that is never idle
/// cannot stretch the bench without bound).
#[derive(Debug, Clone)]
pub struct IdleGate {
    /// Busy share (0..=1) at or under which the machine counts as idle.
    pub threshold: f64,
    /// Length of one sample.
    pub sample: Duration,
    /// Samples before giving up and running anyway.
    pub tries: u32,
    /// Wait between samples.
    pub pause: Duration,
    /// Total waiting allowed over all runs.
    pub budget: Duration,
    spent: Cell<Duration>,
}

impl Default for IdleGate {
    fn default() -> Self {
        IdleGate {
            threshold: 0.10,
            sample: Duration::from_secs(1),
            tries: 4,
            pause: Duration::from_secs(2),
            budget: Duration::from_secs(240),
            spent: Cell::new(Duration::ZERO),
        }
    }
}

/// What the gate saw before one run (recorded with the run's results).
#[derive(Debug, Clone, Copy)]
pub struct IdleCheck {
    /// Busy share of the last sample (the one the run started after).
    pub busy_share: f64,
    /// Samples taken.
    pub tries: u32,
    /// Whether the last sample was under the threshold.
    pub idle: bool,
    /// Time spent waiting.
    pub waited: Duration,
}

impl IdleGate {
    /// A gate with one-second samples 2 s apart.
    pub fn new(threshold: f64, tries: u32, budget: Duration) -> IdleGate {
        IdleGate {
            threshold,
            tries,
            budget,
            ..IdleGate::default()
        }
    }

    /// Samples until the machine is idle or the tries (or the budget) run out; never fails
    /// the run.
    pub fn wait(&self) -> Result<IdleCheck> {
        let start = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let busy = busy_share(self.sample)?;
            let idle = busy <= self.threshold;
            let over_budget = self.spent.get() + start.elapsed() >= self.budget;
            if idle || tries >= self.tries.max(1) || over_budget {
                self.spent.set(self.spent.get() + start.elapsed());
                return Ok(IdleCheck {
                    busy_share: busy,
                    tries,
                    idle,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(self.pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_means_one_sample() {
        let gate = IdleGate {
            threshold: -1.0, // never idle
            sample: Duration::from_millis(10),
            tries: 100,
            pause: Duration::from_millis(1),
            budget: Duration::ZERO,
            ..IdleGate::default()
        };
        let c = gate.wait().unwrap();
        assert_eq!(c.tries, 1);
        assert!(!c.idle);
    }

    #[test]
    fn parses_the_cpu_line() {
        let text = "cpu  100 5 50 1000 7 3 2 1 9 0\ncpu0 50 2 25 500 3 1 1 0 0 0\n";
        let t = parse_stat(text).unwrap();
        assert_eq!(t.busy, 100 + 5 + 50 + 3 + 2 + 1);
        assert_eq!(t.total, t.busy + 1000 + 7);
        assert!(parse_stat("intr 1 2 3\n").is_none());
    }

    #[test]
    fn reads_this_machine() {
        let a = CpuTimes::now().unwrap();
        assert!(a.total >= a.busy && a.total > 0);
    }
}
