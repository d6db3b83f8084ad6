//! The replicator's side of the buffer: read committed batches in order, release records
//! once the cloud acknowledged them.

use std::sync::atomic::Ordering;

use super::{files, record, remove_batch, Buffer, Error, Record};

/// One committed batch as read by the replicator.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    /// The batch key (its first record's sequence).
    pub key: u64,
    /// Readable records in arrival order (corrupt ones already skipped and counted).
    pub records: Vec<Record>,
}

impl Buffer {
    /// Reads committed batches with keys above `after`, up to about `max_bytes`.
    /// Batches returned are never evicted by the quota policy afterwards.
    pub fn read(&self, after: Option<u64>, max_bytes: usize) -> Result<Vec<ReadBatch>, Error> {
        self.read_range(after, u64::MAX, max_bytes)
    }

    /// [`Buffer::read`] limited to batches with keys below `before`.
    pub fn read_range(
        &self,
        after: Option<u64>,
        before: u64,
        max_bytes: usize,
    ) -> Result<Vec<ReadBatch>, Error> {
        let inner = &self.inner;
        let start = after.map_or(0, |a| a.saturating_add(1));
        if after == Some(u64::MAX) || start >= before {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        // Hold the state lock so an eviction cannot race the claim.
        let mut s = inner.lock();
        let keys: Vec<u64> = s.batches.range(start..before).map(|(k, _)| *k).collect();
        for key in keys {
            let decoded = files::read(&inner.files, key)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let len = v.len();
                    record::decode_batch_bytes(v.into())
                        .map(|b| (b, len))
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok((batch, len)) => {
                    if batch.corrupt > 0 {
                        tracing::error!(
                            batch = key,
                            skipped = batch.corrupt,
                            "corrupt buffer records skipped"
                        );
                        inner
                            .stats
                            .corrupt
                            .fetch_add(batch.corrupt, Ordering::Relaxed);
                        release_in(&mut s, inner, key, batch.corrupt as u32)?;
                    }
                    bytes += len;
                    s.claimed = Some(s.claimed.map_or(key, |c| c.max(key)));
                    if !batch.records.is_empty() {
                        out.push(ReadBatch {
                            key,
                            records: batch.records,
                        });
                    }
                }
                Err(cause) => {
                    tracing::error!(batch = key, %cause, "unreadable buffer batch skipped and removed");
                    inner.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    remove_batch(&mut s, key);
                    inner.delete_batch(key)?;
                    s.claimed = Some(s.claimed.map_or(key, |c| c.max(key)));
                }
            }
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Protects every batch up to the one holding `seq` from eviction (records the
    /// replicator must re-send after a restart).
    pub fn protect_through(&self, seq: u64) {
        let mut s = self.inner.lock();
        let key = s.batches.range(..=seq).next_back().map(|(k, _)| *k);
        if let Some(key) = key {
            s.claimed = Some(s.claimed.map_or(key, |c| c.max(key)));
        }
    }

    /// Releases records the cloud acknowledged (or that were already acknowledged before
    /// a restart). A batch is deleted once all its records are released.
    pub fn release(&self, seqs: &[u64]) -> Result<(), Error> {
        let inner = &self.inner;
        let mut s = inner.lock();
        for &seq in seqs {
            let Some(key) = s.batches.range(..=seq).next_back().map(|(k, _)| *k) else {
                continue;
            };
            release_in(&mut s, inner, key, 1)?;
        }
        drop(s);
        inner.changed.notify_all();
        Ok(())
    }
}

fn release_in(s: &mut super::State, inner: &super::Inner, key: u64, n: u32) -> Result<(), Error> {
    let Some(info) = s.batches.get_mut(&key) else {
        return Ok(());
    };
    let n = n.min(info.live);
    info.live -= n;
    s.live_records -= u64::from(n).min(s.live_records);
    if info.live == 0 {
        remove_batch(s, key);
        inner.reap(key)?;
    }
    Ok(())
}
