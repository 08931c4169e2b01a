//! Primality for Maglev table sizes: Maglev's permutation (`offset + j * skip mod M`) visits
//! every slot only when the size `M` is prime.

/// Whether `n` is prime. Trial division: sizes are at most ~1e6, so at most ~500 divisions.
pub(super) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    (3..)
        .step_by(2)
        .take_while(|d: &u64| d * d <= n)
        .all(|d| n % d != 0)
}

/// The smallest prime `>= n`, for "did you mean" hints.
pub(super) fn next_prime(n: u32) -> u32 {
    (n..=u32::MAX).find(|&p| is_prime(p)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(is_prime(lb_common::MAX_MAGLEV_SIZE));
        assert!(!is_prime(65535));
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(1_000_000), 1_000_003);
        assert_eq!(next_prime(7), 7);
    }
}
