//! Idempotent-producer state of one partition: the producer epoch and the sequence ranges
//! of its last five batches, as Kafka keeps them (`max.in.flight.requests.per.connection`
//! is at most 5 for idempotent producers, so five batches are enough to spot any retry).

use std::collections::VecDeque;

pub(crate) const KEPT_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeqEntry {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) base_offset: u64,
    pub(crate) end_offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerState {
    pub(crate) epoch: i16,
    pub(crate) batches: VecDeque<SeqEntry>,
}

/// What to do with an incoming batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    /// Append it.
    Accept,
    /// A retry of a batch already stored at these offsets: answer it, do not store it.
    Duplicate(SeqEntry),
    /// A sequence gap or reordering: OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder,
    /// A fenced (older) epoch: INVALID_PRODUCER_EPOCH.
    StaleEpoch,
}

fn next_seq(s: i32) -> i32 {
    if s == i32::MAX {
        0
    } else {
        s + 1
    }
}

impl ProducerState {
    pub(crate) fn check(state: Option<&ProducerState>, epoch: i16, first_seq: i32) -> SeqCheck {
        let Some(s) = state else {
            return if first_seq == 0 {
                SeqCheck::Accept
            } else {
                SeqCheck::OutOfOrder
            };
        };
        if epoch < s.epoch {
            return SeqCheck::StaleEpoch;
        }
        if epoch > s.epoch {
            return if first_seq == 0 {
                SeqCheck::Accept
            } else {
                SeqCheck::OutOfOrder
            };
        }
        if let Some(dup) = s.batches.iter().find(|b| b.first_seq == first_seq) {
            return SeqCheck::Duplicate(*dup);
        }
        match s.batches.back() {
            Some(last) if next_seq(last.last_seq) == first_seq => SeqCheck::Accept,
            None => SeqCheck::Accept,
            Some(_) => SeqCheck::OutOfOrder,
        }
    }

    pub(crate) fn record(&mut self, epoch: i16, e: SeqEntry) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
        self.batches.push_back(e);
        while self.batches.len() > KEPT_BATCHES {
            self.batches.pop_front();
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(3 + self.batches.len() * 24);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.push(self.batches.len() as u8);
        for b in &self.batches {
            v.extend_from_slice(&b.first_seq.to_be_bytes());
            v.extend_from_slice(&b.last_seq.to_be_bytes());
            v.extend_from_slice(&b.base_offset.to_be_bytes());
            v.extend_from_slice(&b.end_offset.to_be_bytes());
        }
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<ProducerState> {
        let epoch = i16::from_be_bytes(v.get(0..2)?.try_into().ok()?);
        let n = *v.get(2)? as usize;
        let mut batches = VecDeque::with_capacity(n);
        for i in 0..n {
            let at = 3 + i * 24;
            let b = v.get(at..at + 24)?;
            batches.push_back(SeqEntry {
                first_seq: i32::from_be_bytes(b[0..4].try_into().ok()?),
                last_seq: i32::from_be_bytes(b[4..8].try_into().ok()?),
                base_offset: u64::from_be_bytes(b[8..16].try_into().ok()?),
                end_offset: u64::from_be_bytes(b[16..24].try_into().ok()?),
            });
        }
        Some(ProducerState { epoch, batches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(first: i32, last: i32, base: u64) -> SeqEntry {
        SeqEntry {
            first_seq: first,
            last_seq: last,
            base_offset: base,
            end_offset: base + (last - first) as u64 + 1,
        }
    }

    #[test]
    fn sequence_rules() {
        assert_eq!(ProducerState::check(None, 0, 0), SeqCheck::Accept);
        assert_eq!(ProducerState::check(None, 0, 5), SeqCheck::OutOfOrder);
        let mut s = ProducerState::default();
        s.record(0, entry(0, 9, 100));
        assert_eq!(ProducerState::check(Some(&s), 0, 10), SeqCheck::Accept);
        assert_eq!(
            ProducerState::check(Some(&s), 0, 0),
            SeqCheck::Duplicate(entry(0, 9, 100))
        );
        assert_eq!(ProducerState::check(Some(&s), 0, 11), SeqCheck::OutOfOrder);
        assert_eq!(ProducerState::check(Some(&s), 1, 0), SeqCheck::Accept);
        assert_eq!(ProducerState::check(Some(&s), 1, 10), SeqCheck::OutOfOrder);
        s.record(1, entry(0, 0, 200));
        assert_eq!(ProducerState::check(Some(&s), 0, 10), SeqCheck::StaleEpoch);
        assert_eq!(s.batches.len(), 1, "a new epoch forgets old sequences");
    }

    #[test]
    fn only_five_batches_are_kept() {
        let mut s = ProducerState::default();
        for i in 0..8 {
            s.record(0, entry(i, i, i as u64));
        }
        assert_eq!(s.batches.len(), KEPT_BATCHES);
        assert_eq!(ProducerState::check(Some(&s), 0, 2), SeqCheck::OutOfOrder);
        assert!(matches!(
            ProducerState::check(Some(&s), 0, 3),
            SeqCheck::Duplicate(_)
        ));
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        let mut s = ProducerState::default();
        s.record(0, entry(i32::MAX - 1, i32::MAX, 0));
        assert_eq!(ProducerState::check(Some(&s), 0, 0), SeqCheck::Accept);
    }

    proptest! {
        #[test]
        fn encoding_round_trips(epoch in any::<i16>(), seqs in proptest::collection::vec((0i32..1000, 0u64..1<<40), 0..8)) {
            let mut s = ProducerState::default();
            for (q, o) in seqs {
                s.record(epoch, entry(q, q + 3, o));
            }
            prop_assert_eq!(ProducerState::decode(&s.encode()), Some(s));
        }
    }
}
