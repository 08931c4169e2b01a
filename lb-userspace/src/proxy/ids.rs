//! Cheap random numbers for the request path: backend picks, request and trace ids.
//!
//! Per thread, xorshift64* seeded once from the OS: ids must be unique and unguessable
//! enough for tracing, not secret, and an OS call per request (three with a request id and a
//! new trace) costs more than the rest of the id work.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    getrandom::u64().unwrap_or(t ^ 0x9e37_79b9_7f4a_7c15) | 1
}

pub fn fast_random() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    for chunk in b.chunks_mut(8) {
        let r = fast_random().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ() {
        let a: [u8; 16] = random_bytes();
        let b: [u8; 16] = random_bytes();
        assert_ne!(a, b);
        let mut seen = std::collections::HashSet::new();
        assert!((0..10_000).all(|_| seen.insert(fast_random())));
    }
}
