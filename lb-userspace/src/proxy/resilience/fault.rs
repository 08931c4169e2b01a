//! Fault injection (for testing clients): a fixed delay and an abort with a status, each
//! for a share of requests or, when the route allows it, when a request header asks.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

use crate::config::FaultPolicy;

pub const FAULT_DELAY_HEADER: HeaderName = HeaderName::from_static("x-lb-fault-delay-ms");
pub const FAULT_ABORT_HEADER: HeaderName = HeaderName::from_static("x-lb-fault-abort");
/// The longest delay a header may ask for.
pub const MAX_HEADER_DELAY: Duration = Duration::from_secs(60);

/// True for `percent` % of random values `r` (uniform).
pub fn sampled(percent: u32, r: u64) -> bool {
    percent > 0 && (r % 10_000) < u64::from(percent) * 100
}

/// What to inject into one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    pub delay: Option<Duration>,
    pub abort: Option<StatusCode>,
}

/// The faults for a request with `headers` and random values `r1`, `r2`.
pub fn choose(p: &FaultPolicy, headers: &HeaderMap, r1: u64, r2: u64) -> Faults {
    let mut f = Faults::default();
    if sampled(p.delay_percent, r1) {
        f.delay = Some(p.delay);
    }
    if sampled(p.abort_percent, r2) {
        f.abort = StatusCode::from_u16(p.abort_status).ok();
    }
    if p.header_faults {
        let num = |h: &HeaderName| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        if let Some(ms) = num(&FAULT_DELAY_HEADER) {
            f.delay = Some(Duration::from_millis(ms).min(MAX_HEADER_DELAY));
        }
        if let Some(code) = num(&FAULT_ABORT_HEADER)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (200..=599).contains(c))
        {
            f.abort = StatusCode::from_u16(code).ok();
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_hits_its_percentage() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for percent in [0u32, 1, 10, 50, 100] {
            let n = 100_000;
            let hits = (0..n).filter(|_| sampled(percent, next())).count();
            let want = n * percent as usize / 100;
            assert!(hits.abs_diff(want) <= n / 200, "{percent}%: {hits} of {n}");
        }
    }

    #[test]
    fn headers_only_when_allowed() {
        let mut h = HeaderMap::new();
        h.insert(FAULT_DELAY_HEADER, "150".parse().unwrap());
        h.insert(FAULT_ABORT_HEADER, "418".parse().unwrap());
        let mut p = FaultPolicy::default();
        assert_eq!(choose(&p, &h, 0, 0), Faults::default());
        p.header_faults = true;
        let f = choose(&p, &h, 0, 0);
        assert_eq!(f.delay, Some(Duration::from_millis(150)));
        assert_eq!(f.abort, Some(StatusCode::IM_A_TEAPOT));
        h.insert(FAULT_ABORT_HEADER, "99".parse().unwrap());
        assert_eq!(choose(&p, &h, 0, 0).abort, None);
    }
}
