//! LEB128 varints (7 bits per byte, low group first) for the buffer's compact sled values
//! (`descriptor.rs`, `index.rs`): small numbers in 1-2 bytes instead of 8.

/// Appends `x`.
pub(super) fn put(v: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        v.push((x as u8 & 0x7f) | 0x80);
        x >>= 7;
    }
    v.push(x as u8);
}

/// Takes one varint off the front of `v`; `None` if it is cut short or longer than 64
/// bits.
pub(super) fn take(v: &mut &[u8]) -> Option<u64> {
    let mut x = 0u64;
    let mut shift = 0;
    loop {
        let (&b, tail) = v.split_first()?;
        *v = tail;
        if shift > 63 || (shift == 63 && b & 0x7e != 0) {
            return None;
        }
        x |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(x);
        }
        shift += 7;
    }
}

/// `x` mapped so that small magnitudes of either sign are small (0, -1, 1, -2 ... ->
/// 0, 1, 2, 3 ...).
pub(super) fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub(super) fn unzigzag(x: u64) -> i64 {
    ((x >> 1) as i64) ^ -((x & 1) as i64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_number_round_trips(x in any::<u64>(), y in any::<i64>()) {
            let mut v = Vec::new();
            put(&mut v, x);
            put(&mut v, zigzag(y));
            let mut s = &v[..];
            prop_assert_eq!(take(&mut s), Some(x));
            prop_assert_eq!(take(&mut s).map(unzigzag), Some(y));
            prop_assert!(s.is_empty());
        }
    }

    #[test]
    fn sizes_and_bad_input() {
        for (x, len) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            let mut v = Vec::new();
            put(&mut v, x);
            assert_eq!(v.len(), len, "{x}");
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        // Cut short; eleven bytes; a tenth byte carrying more than bit 63.
        assert_eq!(take(&mut &[0x80u8][..]), None);
        assert_eq!(take(&mut &[0xffu8; 11][..]), None);
        let mut over = vec![0xffu8; 9];
        over.push(0x02);
        assert_eq!(take(&mut &over[..]), None);
    }
}
