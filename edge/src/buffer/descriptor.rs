//! The value of an in-flight descriptor: the buffer sequences of a sent Produce batch's
//! records (bytes only, no I/O; the key and its meaning are in `uplink.rs`).
//!
//! Written as a tag byte, the first sequence (`u64`, big endian), then each following
//! sequence as the varint of its difference from the previous one (wrapping, so any
//! list round-trips; a batch's records are in arrival order, so the differences are
//! small: about 1-2 bytes per record instead of 8). A descriptor is written and flushed
//! for every batch before it is sent, so their size is sled log traffic during a drain:
//! with 8 bytes per record (before session 17) a 3 GB drain's RSS peaked 2.7-2.9 MB higher
//! (`edge-bench --skip-ingest --backlog-mb 3072`, 2 alternating pairs: 30.6 / 30.9 ->
//! 27.9 / 28.0 MB). Values written before are plain lists of `u64`s (a multiple of 8
//! bytes whose first byte is a sequence's top byte, never the tag: that would take a
//! sequence of at least 0xD1 << 56) and are still read.

use super::{varint, Error};

/// First byte of a delta-encoded descriptor.
const TAG: u8 = 0xD1;

/// Encodes `seqs` (at least one).
pub(super) fn encode(seqs: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + seqs.len() * 2);
    v.push(TAG);
    let Some((first, rest)) = seqs.split_first() else {
        return v;
    };
    v.extend_from_slice(&first.to_be_bytes());
    let mut prev = *first;
    for s in rest {
        varint::put(&mut v, s.wrapping_sub(prev));
        prev = *s;
    }
    v
}

/// Decodes a descriptor value of either format.
pub(super) fn decode(v: &[u8]) -> Result<Vec<u64>, Error> {
    let bad = || Error::Corrupt("descriptor");
    match v.split_first() {
        Some((&TAG, rest)) => {
            if rest.is_empty() {
                return Ok(Vec::new());
            }
            let (first, mut deltas) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
            let mut prev = u64::from_be_bytes(*first);
            let mut out = vec![prev];
            while !deltas.is_empty() {
                let d = varint::take(&mut deltas).ok_or_else(bad)?;
                prev = prev.wrapping_add(d);
                out.push(prev);
            }
            Ok(out)
        }
        _ if v.len().is_multiple_of(8) => Ok(v
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_list_round_trips(seqs in proptest::collection::vec(any::<u64>(), 0..200)) {
            prop_assert_eq!(decode(&encode(&seqs)).unwrap(), seqs);
        }

        #[test]
        fn increasing_lists_round_trip_small(start in 0u64..1 << 40, gaps in proptest::collection::vec(1u64..300, 0..200)) {
            let mut seqs = vec![start];
            for g in gaps {
                let next = seqs[seqs.len() - 1] + g;
                seqs.push(next);
            }
            let v = encode(&seqs);
            prop_assert!(v.len() <= 9 + 2 * (seqs.len() - 1));
            prop_assert_eq!(decode(&v).unwrap(), seqs);
        }

        #[test]
        fn old_values_are_read(seqs in proptest::collection::vec(0u64..1 << 56, 1..100)) {
            let old: Vec<u8> = seqs.iter().flat_map(|s| s.to_be_bytes()).collect();
            prop_assert_eq!(decode(&old).unwrap(), seqs);
        }

        #[test]
        fn decoding_garbage_never_panics(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&v);
        }
    }

    #[test]
    fn damaged_values_are_errors() {
        let v = encode(&[5, 6, 1000]);
        // Cuts after the tag, the first sequence or a whole delta leave a shorter list.
        for cut in 2..v.len() {
            if cut == 9 || cut == 10 {
                continue;
            }
            assert!(decode(&v[..cut]).is_err(), "cut at {cut}: {:?}", &v[..cut]);
        }
        assert_eq!(decode(&v[..9]).unwrap(), vec![5]);
        assert_eq!(decode(&v[..10]).unwrap(), vec![5, 6]);
        // A varint longer than 64 bits, a first sequence cut short, an old value cut short.
        let mut long = encode(&[1]);
        long.extend_from_slice(&[0xff; 10]);
        long.push(0x01);
        assert!(decode(&long).is_err());
        assert!(decode(&[TAG, 0, 0, 0]).is_err());
        assert!(decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0]).is_err());
        assert_eq!(decode(&[TAG]).unwrap(), Vec::<u64>::new());
    }
}
