//! Uplink state persisted in the buffer's `meta` tree (durability steps 4 and 5 in the
//! module docs): the idempotent producer identity, per-partition producer sequences and
//! acknowledged watermarks, and the in-flight descriptors of sent-but-unacknowledged
//! Produce batches.

use std::collections::HashMap;

use common::kafka::ProducerState;

use super::{descriptor, Buffer, Error};

/// A Produce batch that was sent but not acknowledged before the last shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Producer sequence of the first record.
    pub base_seq: i32,
    /// Buffer sequences of the records, in order.
    pub seqs: Vec<u64>,
}

/// Per-partition uplink state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// Next producer sequence to assign.
    pub next_seq: i32,
    /// Highest buffer sequence the cloud acknowledged on this partition (during a
    /// live-first drain: of the live records, those at or after the boundary).
    pub acked_through: Option<u64>,
    /// During a live-first drain: highest acknowledged sequence of the backlog records
    /// (below the boundary).
    pub backlog_acked: Option<u64>,
}

/// Uplink writes collected to be applied as one atomic sled batch
/// ([`Buffer::apply_uplink`]): the descriptors of a whole cut, the acknowledgements of a
/// whole Produce response. sled 0.34 writes every `apply_batch` to its log on its own (a
/// sealed log buffer: a `pwrite` and a `sync_file_range` on sled's I/O threads), so one
/// per Produce batch cost a 1 GB drain about 17,000 of them.
#[derive(Default)]
pub struct UplinkWrites {
    batch: sled::Batch,
    /// Next producer sequence per partition key, as assigned in this set.
    next: HashMap<Vec<u8>, i32>,
    ops: usize,
}

const PRODUCER: &[u8] = b"p";
/// Meta key of the live-first boundary (a sequence, big-endian).
pub(super) const LIVE_FROM: &[u8] = b"live_from";

fn pkey(kind: u8, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 7);
    k.push(kind);
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn ikey(topic: &str, partition: i32, base: i32) -> Vec<u8> {
    let mut k = pkey(b'i', topic, partition);
    k.extend_from_slice(&(base as u32).to_be_bytes());
    k
}

impl Buffer {
    /// The persisted producer identity, if any.
    pub fn producer(&self) -> Result<Option<ProducerState>, Error> {
        let Some(v) = self.inner.meta.get(PRODUCER)? else {
            return Ok(None);
        };
        if v.len() != 10 {
            return Err(Error::Corrupt("producer"));
        }
        let mut id = [0; 8];
        id.copy_from_slice(&v[..8]);
        Ok(Some(ProducerState {
            producer_id: i64::from_be_bytes(id),
            producer_epoch: i16::from_be_bytes([v[8], v[9]]),
        }))
    }

    /// Persists a new producer identity (flushed). Resets nothing else: callers get a new
    /// identity only when no descriptor is outstanding.
    pub fn set_producer(&self, p: ProducerState) -> Result<(), Error> {
        let mut v = p.producer_id.to_be_bytes().to_vec();
        v.extend_from_slice(&p.producer_epoch.to_be_bytes());
        self.inner.meta.insert(PRODUCER, v)?;
        self.inner.flush_durable()?;
        Ok(())
    }

    /// The uplink state of one partition.
    pub fn partition_state(&self, topic: &str, partition: i32) -> Result<PartitionState, Error> {
        let meta = &self.inner.meta;
        let next_seq = self.next_seq(&pkey(b's', topic, partition))?;
        let watermark = |kind: u8| -> Result<Option<u64>, Error> {
            match meta.get(pkey(kind, topic, partition))? {
                Some(v) => Ok(Some(u64::from_be_bytes(
                    v.as_ref().try_into().map_err(|_| Error::Corrupt("acked"))?,
                ))),
                None => Ok(None),
            }
        };
        let acked_through = watermark(b'a')?;
        let backlog_acked = watermark(b'b')?;
        Ok(PartitionState {
            next_seq,
            acked_through,
            backlog_acked,
        })
    }

    /// The next producer sequence stored under `key` (`pkey(b's', ..)`), 0 if none.
    fn next_seq(&self, key: &[u8]) -> Result<i32, Error> {
        Ok(match self.inner.meta.get(key)? {
            Some(v) => i32::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("sequence"))?,
            ),
            None => 0,
        })
    }

    /// Starts a live-first drain (or returns the one in progress): records with sequences
    /// from the returned boundary on are live, the rest backlog. Open batches are cut at
    /// the boundary, and every partition's acknowledged watermark is copied to its backlog
    /// watermark, atomically and flushed: from now on a backlog batch's acknowledgement
    /// raises only the backlog watermark, a live batch's only the other, so a restart
    /// skips exactly the acknowledged records of each stream.
    pub fn start_live(&self) -> Result<u64, Error> {
        let mut s = self.inner.lock();
        if let Some(l) = s.live_from {
            return Ok(l);
        }
        let l = s.next_seq;
        let mut b = sled::Batch::default();
        for item in self.inner.meta.scan_prefix([b'a', 0]) {
            let (k, v) = item?;
            let mut bk = k.to_vec();
            bk[0] = b'b';
            b.insert(bk, v);
        }
        b.insert(LIVE_FROM, &l.to_be_bytes());
        self.inner.meta.apply_batch(b)?;
        s.live_from = Some(l);
        drop(s);
        self.inner.flush_durable()?;
        Ok(l)
    }

    /// The boundary of the live-first drain in progress, if any.
    pub fn live_from(&self) -> Option<u64> {
        self.inner.lock().live_from
    }

    /// Ends the live-first drain once every backlog record is acknowledged: the live
    /// watermarks cover everything from here on. Not flushed: if lost, the next start
    /// finds no backlog below the boundary and ends it again.
    pub fn end_live(&self) -> Result<(), Error> {
        let mut b = sled::Batch::default();
        for item in self.inner.meta.scan_prefix([b'b', 0]) {
            let (k, _) = item?;
            b.remove(k);
        }
        b.remove(LIVE_FROM);
        self.inner.meta.apply_batch(b)?;
        self.inner.lock().live_from = None;
        Ok(())
    }

    /// Persists a descriptor for a batch about to be sent and advances the partition's
    /// producer sequence, atomically. Call [`Buffer::sync_uplink`] before sending it.
    /// Returns the batch's base sequence.
    pub fn assign(&self, topic: &str, partition: i32, seqs: &[u64]) -> Result<i32, Error> {
        let mut w = UplinkWrites::default();
        let base = self.assign_in(&mut w, topic, partition, seqs)?;
        self.apply_uplink(w)?;
        Ok(base)
    }

    /// [`Buffer::assign`] into `w`: takes effect with the rest of `w` at
    /// [`Buffer::apply_uplink`] (later assignments in `w` follow this one's sequences).
    pub fn assign_in(
        &self,
        w: &mut UplinkWrites,
        topic: &str,
        partition: i32,
        seqs: &[u64],
    ) -> Result<i32, Error> {
        let key = pkey(b's', topic, partition);
        let base = match w.next.get(&key) {
            Some(n) => *n,
            None => self.next_seq(&key)?,
        };
        let v = descriptor::encode(seqs);
        let next = base.wrapping_add(seqs.len() as i32) & i32::MAX;
        w.batch.insert(ikey(topic, partition, base), v);
        w.batch.insert(key.clone(), &next.to_be_bytes());
        w.next.insert(key, next);
        w.ops += 1;
        Ok(base)
    }

    /// Applies everything collected in `w` as one atomic sled batch (not flushed).
    pub fn apply_uplink(&self, w: UplinkWrites) -> Result<(), Error> {
        if w.ops > 0 {
            self.inner.meta.apply_batch(w.batch)?;
        }
        Ok(())
    }

    /// Makes every descriptor assigned so far durable (one fsync for many batches). sled's
    /// own flush is only `sync_file_range`, which survives a kill but not a power cut;
    /// `flush_durable` also fsyncs sled's log file (see the buffer's module docs).
    pub fn sync_uplink(&self) -> Result<(), Error> {
        self.inner.flush_durable()?;
        Ok(())
    }

    /// Records that the batch `base` of a partition was acknowledged: removes its
    /// descriptor and raises the acknowledged watermark (one atomic write, not flushed:
    /// a lost write only replays a batch the broker deduplicates).
    pub fn acknowledged(
        &self,
        topic: &str,
        partition: i32,
        base: i32,
        last: u64,
    ) -> Result<(), Error> {
        let mut w = UplinkWrites::default();
        Self::acknowledged_in(&mut w, false, topic, partition, base, last);
        self.apply_uplink(w)
    }

    /// [`Buffer::acknowledged`] into `w` (with `backlog`: a backlog batch of a
    /// live-first drain, which raises the backlog watermark instead): takes effect with the rest of `w` at [`Buffer::apply_uplink`], which must
    /// come before the batch's records are released.
    pub fn acknowledged_in(
        w: &mut UplinkWrites,
        backlog: bool,
        topic: &str,
        partition: i32,
        base: i32,
        last: u64,
    ) {
        let kind = if backlog { b'b' } else { b'a' };
        w.batch.remove(ikey(topic, partition, base));
        w.batch
            .insert(pkey(kind, topic, partition), &last.to_be_bytes());
        w.ops += 1;
    }

    /// Forgets a partition's descriptors and restarts its producer sequence at 0 (after
    /// a new producer identity). Flushed by the next [`Buffer::assign`].
    pub fn reset_partition(&self, topic: &str, partition: i32) -> Result<(), Error> {
        let mut b = sled::Batch::default();
        for item in self.inner.meta.scan_prefix(pkey(b'i', topic, partition)) {
            let (k, _) = item?;
            b.remove(k);
        }
        b.insert(pkey(b's', topic, partition), &0i32.to_be_bytes());
        self.inner.meta.apply_batch(b)?;
        Ok(())
    }

    /// All outstanding descriptors, ordered by topic, partition and base sequence.
    pub fn inflight(&self) -> Result<Vec<Inflight>, Error> {
        let mut out = Vec::new();
        for item in self.inner.meta.scan_prefix([b'i', 0]) {
            let (k, v) = item?;
            let body = &k[2..];
            let nul = body
                .iter()
                .position(|b| *b == 0)
                .ok_or(Error::Corrupt("descriptor key"))?;
            let topic = String::from_utf8(body[..nul].to_vec())
                .map_err(|_| Error::Corrupt("descriptor topic"))?;
            let rest = &body[nul + 1..];
            if rest.len() != 8 {
                return Err(Error::Corrupt("descriptor"));
            }
            let partition = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let base_seq = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as i32;
            let seqs = descriptor::decode(&v)?;
            out.push(Inflight {
                topic,
                partition,
                base_seq,
                seqs,
            });
        }
        Ok(out)
    }
}
