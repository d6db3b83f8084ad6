//! The replicator's side of the buffer: read committed batches in order, release records
//! once the cloud acknowledged them.

use std::ops::Bound::{Excluded, Unbounded};
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
        // The state lock is held from each lookup to its claim, so an eviction cannot
        // race the claim.
        let mut s = inner.lock();
        // The next key is looked up each turn (not every key to `before` collected up
        // front: with a 1 GB backlog that was thousands of keys per read, 2% of a drain).
        let mut from = start;
        while let Some(key) = s.catalog.first_key(from..before)? {
            from = key.saturating_add(1);
            while s.appending.contains(&key) {
                // Its next segment is being written: read it once that commit is done
                // (a read returns every batch committed in its range, as callers rely
                // on), and ask the committer to start a new file next time, so a steady
                // ingest never keeps the reader waiting twice.
                s.seal = true;
                s = inner.durable.wait(s).unwrap_or_else(|p| p.into_inner());
                if let Some(why) = &s.failed {
                    // The commit appending to it failed: its last segment may be torn.
                    return Err(Error::Failed(why.clone()));
                }
            }
            // Waiting released the lock: the file may have been paged out meanwhile.
            if !s.catalog.contains(key)? {
                continue;
            }
            let committed = s.catalog.bytes_of(key).unwrap_or(u64::MAX);
            // Claimed, the file can no longer be evicted, grown (commits stop appending
            // to a claimed tail) or paged out of the catalog: read it without the lock,
            // so appends and the committer never wait for a drain's reads.
            s.claimed = Some(s.claimed.map_or(key, |c| c.max(key)));
            drop(s);
            #[cfg(test)]
            while inner.test_hold_reads.load(Ordering::Acquire) {
                inner.test_reading.store(true, Ordering::Release);
                std::thread::yield_now();
            }
            let decoded = inner
                .read_pool
                .read(&files::path(&inner.files, key), committed)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let len = v.len();
                    record::decode_batch_bytes(v)
                        .map(|b| (b, len))
                        .map_err(|e| e.to_string())
                });
            s = inner.lock();
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
                    inner.delete_batch(&mut s, key)?;
                }
            }
            if bytes >= max_bytes {
                // More to read, probably (a backlog): read the next files ahead.
                inner.prefetch.read_through(key);
                break;
            }
        }
        Ok(out)
    }

    /// Protects every batch up to the one holding `seq` from eviction (records the
    /// replicator must re-send after a restart).
    pub fn protect_through(&self, seq: u64) {
        let mut s = self.inner.lock();
        match s.catalog.last_key_through(seq) {
            Ok(Some(key)) => s.claimed = Some(s.claimed.map_or(key, |c| c.max(key))),
            Ok(None) => {}
            // Nothing below `seq` can be evicted unprotected: protect through `seq`.
            Err(e) => {
                tracing::error!(cause = %e, "reading the buffer index to protect in-flight batches");
                s.claimed = Some(s.claimed.map_or(seq, |c| c.max(seq)));
            }
        }
    }

    /// Releases records the cloud will never take (too large for its
    /// `max.message.bytes`), counting each as dropped `too_large_for_cloud`.
    pub fn discard_too_large(&self, held: &[Held]) -> Result<(), Error> {
        self.inner.stats.dropped[super::DROPPED_TOO_LARGE_FOR_CLOUD]
            .fetch_add(held.len() as u64, Ordering::Relaxed);
        self.release(held)
    }

    /// Releases records the cloud acknowledged (or that were already acknowledged before
    /// a restart). A batch is deleted once all its records are released.
    ///
    /// A record is found by its class and sequence: each file holds one priority class,
    /// and the files of one class never overlap in sequence, but the files of two classes
    /// written by the same group commit do (their records interleave in arrival order),
    /// so the sequence alone could credit a release to the other class's file and delete
    /// it before its own records were acknowledged.
    pub fn release(&self, held: &[Held]) -> Result<(), Error> {
        let inner = &self.inner;
        let mut s = inner.lock();
        // One lookup per batch file, not per record: runs of ascending sequences of one
        // class below the class's next batch key belong to the same batch.
        let mut i = 0;
        while i < held.len() {
            let Held { seq, priority } = held[i];
            let Some(class) = s.catalog.class(priority) else {
                i += 1;
                continue;
            };
            let Some(key) = class.last(..=seq) else {
                i += 1;
                continue;
            };
            let next = class.first((Excluded(seq), Unbounded)).unwrap_or(u64::MAX);
            let mut n = 1;
            let mut last = seq;
            while let Some(h) = held.get(i + n as usize) {
                if h.priority != priority || h.seq <= last || h.seq >= next {
                    break;
                }
                last = h.seq;
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

/// A record read and not yet released: what [`Buffer::release`] needs to find its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The record's sequence.
    pub seq: u64,
    /// The record's priority class (its batch file's class).
    pub priority: u8,
}

impl Held {
    /// What releasing `r` needs.
    pub fn of(r: &Record) -> Held {
        Held {
            seq: r.seq,
            priority: r.priority,
        }
    }
}

fn release_in(s: &mut super::State, inner: &super::Inner, key: u64, n: u32) -> Result<(), Error> {
    if s.catalog.release(key, n) == Some(0) {
        remove_batch(s, key);
        inner.reap(s, key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::{Appended, BufferConfig, FullPolicy, SyncPolicy};
    use super::*;

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
            direct_io: true,
            direct_io_backlog_bytes: crate::buffer::DIRECT_BACKLOG_BYTES,
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
        let seqs: Vec<Vec<Held>> = batches
            .iter()
            .map(|b| b.records.iter().map(Held::of).collect())
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

    /// A batch file is read without the state lock: an append (and the committer) goes
    /// on while a drain's read waits for the disk.
    #[test]
    fn appends_do_not_wait_for_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let buf = std::sync::Arc::new(
            Buffer::open(BufferConfig {
                dir: dir.path().to_path_buf(),
                quota_bytes: u64::MAX,
                full_policy: FullPolicy::Block,
                sync: SyncPolicy::Always,
                batch_max_bytes: 1 << 20,
                cache_bytes: 1 << 20,
                direct_io: true,
                direct_io_backlog_bytes: crate::buffer::DIRECT_BACKLOG_BYTES,
            })
            .unwrap(),
        );
        let rec = || Record {
            topic: "t".into(),
            payload: Bytes::from_static(b"p"),
            ..Record::default()
        };
        buf.append(rec()).unwrap();
        buf.commit().unwrap();
        // The disk stalls: the reader stops just before reading the file.
        buf.inner.test_hold_reads.store(true, Ordering::Release);
        let reader = {
            let buf = buf.clone();
            std::thread::spawn(move || buf.read(None, usize::MAX).unwrap())
        };
        while !buf.inner.test_reading.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        // Were the read to hold the lock, the append below would wait for this.
        let (done, watch) = std::sync::mpsc::channel::<()>();
        let watchdog = {
            let buf = buf.clone();
            std::thread::spawn(move || {
                let _ = watch.recv_timeout(Duration::from_secs(5));
                buf.inner.test_hold_reads.store(false, Ordering::Release);
            })
        };
        // Appended and made durable (the committer takes the state lock too) while the
        // read is still stalled.
        let Appended::Stored(gen) = buf.append(rec()).unwrap() else {
            panic!("append dropped");
        };
        buf.wait_durable(gen).unwrap();
        assert!(
            !reader.is_finished(),
            "the read ended before the stall was lifted"
        );
        drop(done);
        let read = reader.join().unwrap();
        watchdog.join().unwrap();
        // The claimed file did not grow (the second record went to a new file, which
        // the read found after it).
        let counts: Vec<usize> = read.iter().map(|b| b.records.len()).collect();
        assert_eq!(counts, vec![1, 1]);
    }
}
