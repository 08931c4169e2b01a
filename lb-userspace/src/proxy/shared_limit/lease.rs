//! What a node holds of one fleet-wide bucket: tokens it took from Redis and has not spent
//! yet (valid for [`LEASE_TTL`]), and, after Redis said "empty", until when to refuse
//! without asking again. Pure logic; the caller passes `now`.

use std::time::{Duration, Instant};

use super::super::limit::LimitDecision;

/// Unspent leased tokens are given up after this long, so a node that went quiet does not
/// sit on tokens (which bounds the error, see the module doc of `shared_limit`).
pub const LEASE_TTL: Duration = Duration::from_secs(1);
/// After Redis refused, refuse locally for at most this long before asking again.
pub const MAX_DENY_CACHE: Duration = Duration::from_secs(1);

/// One bucket's local share.
#[derive(Debug, Clone)]
pub struct Lease {
    tokens: u32,
    expires: Instant,
    denied_until: Instant,
    /// Whole tokens Redis had left at the last answer (for the headers).
    redis_left: u32,
}

/// What Redis answered to "take up to N".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    pub left: u32,
    /// Until one token is there again (zero if there is one).
    pub wait: Duration,
}

/// The spec a decision is reported against.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub rate: u32,
    pub burst: u32,
}

impl Lease {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: 0,
            expires: now,
            denied_until: now,
            redis_left: 0,
        }
    }

    /// Decides locally if it can: a leased token (allowed), or a recent "empty" from Redis
    /// (refused). `None`: ask Redis.
    pub fn try_local(&mut self, spec: Spec, now: Instant) -> Option<LimitDecision> {
        if now >= self.expires {
            self.tokens = 0;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            return Some(self.decision(spec, true, Duration::ZERO));
        }
        if now < self.denied_until {
            return Some(self.decision(spec, false, self.denied_until - now));
        }
        None
    }

    /// Takes Redis's answer in and decides this request with it.
    pub fn apply(&mut self, g: Grant, spec: Spec, now: Instant) -> LimitDecision {
        if now >= self.expires {
            self.tokens = 0;
        }
        self.redis_left = g.left;
        if g.granted == 0 {
            self.denied_until = now + g.wait.clamp(Duration::from_millis(1), MAX_DENY_CACHE);
            return self.decision(spec, false, g.wait.max(Duration::from_millis(1)));
        }
        self.tokens = self.tokens.saturating_add(g.granted - 1);
        self.expires = now + LEASE_TTL;
        self.denied_until = now;
        self.decision(spec, true, Duration::ZERO)
    }

    /// Tokens held and usable at `now`.
    pub fn held(&self, now: Instant) -> u32 {
        if now >= self.expires { 0 } else { self.tokens }
    }

    /// Nothing held and nothing remembered: safe to forget.
    pub fn idle(&self, now: Instant) -> bool {
        self.held(now) == 0 && now >= self.denied_until
    }

    fn decision(&self, spec: Spec, allowed: bool, retry_after: Duration) -> LimitDecision {
        let burst = spec.burst.max(1);
        let remaining = self.tokens.saturating_add(self.redis_left).min(burst);
        let rate = u64::from(spec.rate.max(1));
        let missing = u64::from(burst - remaining);
        LimitDecision {
            allowed,
            limit: burst,
            remaining,
            reset: Duration::from_nanos((missing * 1_000_000_000).div_ceil(rate)),
            retry_after,
        }
    }
}
