//! The replicator's side of the buffer: read committed batches in order, release records
//! once the cloud acknowledged them.

use std::io::{self, Read};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{files, record, remove_batch, Buffer, Error, Record};

/// Read buffers of batch files, handed back once every record read from one is dropped
/// (after the replicator encoded them), and reused for the next files.
///
/// A batch file is 256 KB by default, above glibc's mmap threshold (which the edge fixes
/// at 128 KB, see `main.rs`): a fresh buffer per file costs an `mmap`, a page fault and a
/// zeroed page per 4 KB, and a `munmap`. Measured on a drain (perf, session 5) those were
/// about 9% of the edge's CPU. The pool never holds more than the most buffers that were
/// in use at once (a new one is allocated only when the pool is empty), capped at
/// [`BufPool::MAX`], so it does not raise the drain's peak RSS.
#[derive(Default)]
pub(super) struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// Most idle buffers kept.
    const MAX: usize = 8;
    /// Larger buffers (an unusually large batch file) are not kept.
    const MAX_CAPACITY: usize = 1 << 20;

    fn take(&self) -> Vec<u8> {
        lock(&self.free).pop().unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > Self::MAX_CAPACITY {
            return;
        }
        buf.clear();
        let mut free = lock(&self.free);
        if free.len() < Self::MAX {
            free.push(buf);
        }
    }

    /// Idle buffers (tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        lock(&self.free).len()
    }
}

fn lock(m: &Mutex<Vec<Vec<u8>>>) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pooled buffer owned by the `Bytes` of one file; back to the pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// Reads batch file `key` into a pooled buffer.
fn read_file(inner: &super::Inner, key: u64) -> io::Result<Bytes> {
    let mut f = std::fs::File::open(files::path(&inner.files, key))?;
    let len = f.metadata().map_or(0, |m| m.len() as usize);
    let mut buf = inner.read_pool.take();
    buf.reserve(len);
    f.read_to_end(&mut buf)?;
    Ok(Bytes::from_owner(Pooled {
        buf,
        pool: inner.read_pool.clone(),
    }))
}

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
            let decoded = read_file(inner, key)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let len = v.len();
                    record::decode_batch_bytes(v)
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
        // One lookup per batch file, not per record: runs of ascending sequences below
        // the next batch's key belong to the same batch.
        let mut i = 0;
        while i < seqs.len() {
            let seq = seqs[i];
            let Some(key) = s.batches.range(..=seq).next_back().map(|(k, _)| *k) else {
                i += 1;
                continue;
            };
            let next = s
                .batches
                .range((Excluded(seq), Unbounded))
                .next()
                .map_or(u64::MAX, |(k, _)| *k);
            let mut n = 1;
            let mut last = seq;
            while let Some(&q) = seqs.get(i + n as usize) {
                if q <= last || q >= next {
                    break;
                }
                last = q;
                n += 1;
            }
            release_in(&mut s, inner, key, n)?;
            i += n as usize;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::{BufferConfig, FullPolicy, SyncPolicy};
    use super::*;

    /// Batch file buffers go back to the pool once every record read from them is
    /// dropped, and the next read reuses them: the records read back are the same.
    #[test]
    fn read_buffers_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(BufferConfig {
            dir: dir.path().to_path_buf(),
            quota_bytes: u64::MAX,
            full_policy: FullPolicy::Block,
            sync: SyncPolicy::Interval(Duration::from_secs(3600)),
            batch_max_bytes: usize::MAX,
            cache_bytes: 1 << 20,
        })
        .unwrap();
        for b in 0..2u8 {
            for i in 0..3u8 {
                buf.append(Record {
                    topic: format!("t{b}"),
                    payload: Bytes::from(vec![b * 10 + i; 300]),
                    ..Record::default()
                })
                .unwrap();
            }
            buf.commit().unwrap();
        }
        let pool = buf.inner.read_pool.clone();
        let check = |batches: &[ReadBatch]| {
            assert_eq!(batches.len(), 2);
            for (b, batch) in batches.iter().enumerate() {
                assert_eq!(batch.records.len(), 3);
                for (i, r) in batch.records.iter().enumerate() {
                    assert_eq!(r.topic, format!("t{b}"));
                    assert_eq!(r.payload, Bytes::from(vec![b as u8 * 10 + i as u8; 300]));
                }
            }
        };
        assert_eq!(pool.idle(), 0);
        let first = buf.read(None, usize::MAX).unwrap();
        check(&first);
        assert_eq!(pool.idle(), 0, "buffers in use are not in the pool");
        // A record outliving its batch keeps that file's buffer out of the pool.
        let kept = first[1].records[2].clone();
        drop(first);
        assert_eq!(pool.idle(), 1);
        assert_eq!(kept.payload, Bytes::from(vec![12u8; 300]));
        drop(kept);
        assert_eq!(pool.idle(), 2);
        // The next read takes them back out and reads the same records.
        let again = buf.read(None, usize::MAX).unwrap();
        assert_eq!(pool.idle(), 0);
        check(&again);
        drop(again);
        assert_eq!(pool.idle(), 2);
    }

    /// One release call whose sequences span several batch files, out of order and
    /// interleaved (as a Kafka batch of one topic is): each batch loses exactly its own
    /// records, and only fully released batches are deleted.
    #[test]
    fn release_spanning_batches() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(BufferConfig {
            dir: dir.path().to_path_buf(),
            quota_bytes: u64::MAX,
            full_policy: FullPolicy::Block,
            sync: SyncPolicy::Interval(Duration::from_secs(3600)),
            batch_max_bytes: usize::MAX,
            cache_bytes: 1 << 20,
        })
        .unwrap();
        for _ in 0..3 {
            for _ in 0..4 {
                buf.append(Record {
                    topic: "t".into(),
                    payload: Bytes::from_static(b"p"),
                    ..Record::default()
                })
                .unwrap();
            }
            buf.commit().unwrap();
        }
        let batches = buf.read(None, usize::MAX).unwrap();
        let seqs: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.records.iter().map(|r| r.seq).collect())
            .collect();
        assert_eq!(seqs.len(), 3);
        // All of batch 0, half of batch 1, one of batch 2, then the rest of batch 1
        // after a step back.
        let mut first = seqs[0].clone();
        first.extend(&seqs[1][..2]);
        first.push(seqs[2][0]);
        first.push(seqs[1][2]);
        buf.release(&first).unwrap();
        assert_eq!(buf.snapshot().records, 12 - 8);
        buf.reaped();
        assert_eq!(files::list(&buf.inner.files).unwrap().len(), 2);
        let mut rest = vec![seqs[1][3]];
        rest.extend(&seqs[2][1..]);
        buf.release(&rest).unwrap();
        assert_eq!(buf.snapshot().records, 0);
        buf.reaped();
        assert!(files::list(&buf.inner.files).unwrap().is_empty());
    }
}
