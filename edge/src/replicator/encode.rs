//! Turns the records of cut batches into compressed Kafka RecordBatches, on two cores.
//!
//! zstd is most of the drain's CPU (level 1 measured about 40% of the edge's samples
//! draining 1 KB hex records), and the replicator task is one thread. So a cut with
//! several batches is split in two halves by bytes: a helper thread (`replicator-zstd`,
//! started on first use when the machine has more than one core) encodes the second half
//! while the replicator encodes the first, each with its own record block and zstd context
//! kept across batches (no per-batch allocation of either). The batches come back in
//! order; their bytes do not depend on which thread wrote them.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::kafka::record_batch::{Codec, Compressor, Error, Writer};
use common::kafka::ProducerState;

use super::state;
use crate::buffer::Record;

/// One batch to encode: its base sequence and records.
pub(super) type Work = (i32, Vec<Record>);

/// What every batch of a cut shares.
#[derive(Clone)]
struct Common {
    edge_id: Arc<str>,
    producer: ProducerState,
    codec: Codec,
}

/// A record block and a zstd context, reused batch after batch.
#[derive(Default)]
struct Lane {
    writer: Writer,
    zstd: Compressor,
}

impl Lane {
    fn encode(&mut self, work: &[Work], c: &Common) -> Result<Vec<Bytes>, Error> {
        let mut out = Vec::with_capacity(work.len());
        for (base, records) in work {
            self.writer.clear();
            for r in records {
                state::push_record(&mut self.writer, r, &c.edge_id);
            }
            out.push(
                self.writer
                    .finish(c.producer, *base, c.codec, &mut self.zstd)?,
            );
        }
        Ok(out)
    }
}

type Reply = Result<Vec<Bytes>, Error>;

struct Helper {
    tx: mpsc::Sender<(Vec<Work>, Common)>,
    rx: mpsc::Receiver<Reply>,
}

impl Helper {
    fn start() -> Option<Helper> {
        let (tx, work_rx) = mpsc::channel::<(Vec<Work>, Common)>();
        let (reply_tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("replicator-zstd".into())
            .spawn(move || {
                let mut lane = Lane::default();
                while let Ok((work, c)) = work_rx.recv() {
                    let reply = lane.encode(&work, &c);
                    // Records are dropped here, off the replicator's thread.
                    drop(work);
                    if reply_tx.send(reply).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| tracing::warn!(cause = %e, "no zstd helper thread; encoding on one"))
            .ok()?;
        Some(Helper { tx, rx })
    }
}

/// The batch encoder of one replicator.
pub(super) struct Encoder {
    edge_id: Arc<str>,
    local: Lane,
    /// Behind a mutex only so the replicator stays `Sync` (never contended).
    helper: Option<Mutex<Helper>>,
    /// Whether a helper may be started (more than one core, and it did not fail).
    parallel: bool,
}

impl Encoder {
    /// An encoder stamping `edge_id` on every record.
    pub(super) fn new(edge_id: &str) -> Encoder {
        Encoder {
            edge_id: edge_id.into(),
            local: Lane::default(),
            helper: None,
            parallel: std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
        }
    }

    /// Encodes every batch of `work`, in order.
    pub(super) fn encode_all(
        &mut self,
        mut work: Vec<Work>,
        producer: ProducerState,
        codec: Codec,
    ) -> Result<Vec<Bytes>, Error> {
        let c = Common {
            edge_id: self.edge_id.clone(),
            producer,
            codec,
        };
        if work.len() < 2 || !self.parallel {
            return self.local.encode(&work, &c);
        }
        if self.helper.is_none() {
            self.helper = Helper::start().map(Mutex::new);
        }
        let Some(helper) = self.helper.as_mut().and_then(|h| h.get_mut().ok()) else {
            self.helper = None;
            self.parallel = false;
            return self.local.encode(&work, &c);
        };
        // Split by bytes: the helper takes the tail.
        let size = |w: &Work| w.1.iter().map(Record::encoded_len).sum::<usize>();
        let total: usize = work.iter().map(size).sum();
        let mut head = 0;
        let mut at = 0;
        while at < work.len() - 1 && (head + size(&work[at])) * 2 <= total {
            head += size(&work[at]);
            at += 1;
        }
        let at = at.max(1);
        let tail = work.split_off(at);
        if let Err(mpsc::SendError((tail, _))) = helper.tx.send((tail, c.clone())) {
            self.helper = None;
            self.parallel = false;
            work.extend(tail);
            return self.local.encode(&work, &c);
        }
        // Always take the helper's reply, even after a local error, so the next cut
        // does not read a stale one.
        let mine = self.local.encode(&work, &c);
        let theirs = helper.rx.recv().unwrap_or_else(|_| {
            self.helper = None;
            self.parallel = false;
            Err(Error::Zstd("encoder thread ended".into()))
        });
        let mut mine = mine?;
        mine.extend(theirs?);
        Ok(mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::kafka::record_batch;

    fn rec(seq: u64, topic: &str) -> Record {
        Record {
            seq,
            topic: topic.into(),
            recv_ms: 1_000 + seq as i64,
            payload: Bytes::from(format!("payload {seq} ").repeat(1 + seq as usize % 7)),
            ..Record::default()
        }
    }

    /// Two threads write exactly the bytes one thread writes, in order.
    #[test]
    fn split_cut_equals_one_thread() {
        let p = ProducerState {
            producer_id: 4,
            producer_epoch: 1,
        };
        let work = || -> Vec<Work> {
            (0..7u64)
                .map(|b| {
                    let n = 1 + b * 3;
                    (
                        b as i32 * 100,
                        (0..n).map(|i| rec(b * 100 + i, "t")).collect(),
                    )
                })
                .collect()
        };
        let mut two = Encoder::new("e1");
        two.parallel = true;
        let mut one = Encoder::new("e1");
        one.parallel = false;
        for codec in [Codec::Zstd, Codec::None] {
            let a = two.encode_all(work(), p, codec).unwrap();
            let b = one.encode_all(work(), p, codec).unwrap();
            assert_eq!(a.len(), 7);
            assert_eq!(a, b);
            for (i, batch) in a.iter().enumerate() {
                let recs: Vec<_> = record_batch::read(batch)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(recs.len(), 1 + i * 3);
                assert_eq!(recs[0].timestamp, 1_000 + i as i64 * 100);
            }
        }
        assert!(two.helper.is_some(), "the helper thread was used");
    }
}
