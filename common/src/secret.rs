//! Comparing secrets (passwords, SCRAM keys) without revealing, by timing, how much of
//! them matched.

/// Whether `a` and `b` are equal, compared without an early exit on the first differing
/// byte or on a length mismatch.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        for other in [&b"s3cre"[..], b"s3cretX", b"S3cret", b"", b"s3crfu"] {
            assert!(!constant_time_eq(b"s3cret", other), "{other:?}");
        }
    }
}
