//! The group committer: cuts open batches into batch files, fsyncs them and their
//! directory, then indexes them in sled (durability step 2 in the module docs). sled is
//! flushed at most every [`SLED_FLUSH_EVERY`], not per commit: a batch file is
//! self-describing, so an index entry lost in a crash is rebuilt from its file at open.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{files, record, BatchInfo, Error, Index, Inner, SyncPolicy, NEXT_SEQ};

/// How often the committer flushes sled (index entries, `next_seq`) while committing.
pub(super) const SLED_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Record capacity above which the committer does not hand an open batch's vector back
/// for reuse (bounds the memory it keeps: about 220 bytes per record).
const MAX_SPARE_RECORDS: usize = 16 << 10;

/// Staged files that force a sync before the interval ends (bounds open file handles and
/// unsynced bytes: 128 x `batch_max_bytes`).
const MAX_STAGED: usize = 128;

/// A batch file written but not yet fsynced nor indexed (`sync: interval`: a batch
/// that filled up between two ticks). Its records count as `committing`, its bytes as
/// `staged_bytes`; it is invisible to the replicator until the next sync.
pub(super) struct Staged {
    file: std::fs::File,
    key: u64,
    index: Index,
    /// Its records' gen at the cut (all records of the cut have a gen at most this).
    gen: u64,
    max_seq: u64,
}

/// Cuts the open batches into batch files and writes them; then, when `force` or with
/// `sync: always`, fsyncs every file written so far, fsyncs the directory and indexes
/// them in sled, unflushed (durability step 2). With `sync: interval` a full batch is
/// only written (memory freed, no fsync) until the next tick. Returns whether anything
/// was made durable.
pub(super) fn commit_once(inner: &Inner, force: bool) -> Result<bool, Error> {
    let mut staged = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
    let sync = force || inner.cfg.sync == SyncPolicy::Always || staged.len() >= MAX_STAGED;
    let (batches, gen, boundary) = {
        let mut s = inner.lock();
        if s.open.is_empty() && (staged.is_empty() || !sync) {
            if staged.is_empty() {
                s.committed_gen = s.committed_gen.max(s.gen);
                inner.durable_gen.store(s.committed_gen, Ordering::Release);
                drop(s);
                inner.durable.notify_all();
            }
            return Ok(false);
        }
        let full = s.open_bytes >= inner.cfg.batch_max_bytes as u64;
        if !sync && !full {
            return Ok(false);
        }
        let open = std::mem::take(&mut s.open);
        s.committing += open.values().map(|o| o.records.len() as u64).sum::<u64>();
        (open, s.gen, s.live_from)
    };
    let cut = write_batches(inner, &batches, gen, boundary);
    // Written (or failed): the records' memory is free; the largest vector is kept for
    // the next open batch (records dropped here, off the lock).
    let mut spare = batches
        .into_values()
        .map(|o| o.records)
        .max_by_key(Vec::capacity)
        .unwrap_or_default();
    spare.clear();
    {
        let mut s = inner.lock();
        if spare.capacity() <= MAX_SPARE_RECORDS && spare.capacity() > s.spare.capacity() {
            s.spare = spare;
        }
        let (bytes, n): (u64, u64) = match &cut {
            Ok((_, open_bytes)) => (*open_bytes, 0),
            Err((open_bytes, n)) => (*open_bytes, *n),
        };
        s.open_bytes -= bytes.min(s.open_bytes);
        s.committing -= n.min(s.committing);
        if let Ok((files, _)) = &cut {
            s.staged_bytes += files.iter().map(|f| f.index.bytes).sum::<u64>();
        }
    }
    inner.changed.notify_all();
    match cut {
        Ok((files, _)) => staged.extend(files),
        Err(_) => return fail(inner, "writing a buffer batch file failed".into()),
    }
    if !sync {
        return Ok(false);
    }
    let done = std::mem::take(&mut *staged);
    let max_seq = done.iter().map(|f| f.max_seq).max().unwrap_or(0);
    let result = done
        .iter()
        .try_for_each(|f| f.file.sync_data())
        .and_then(|()| files::sync_dir(&inner.files))
        .map_err(Error::from)
        .and_then(|()| {
            // Plain inserts, not a `sled::Batch`: sled writes out and syncs its log
            // buffer around every batch (two `sync_file_range` per commit), and the
            // index entries need no atomicity (each stands alone; recovery at open
            // rebuilds any lost one).
            done.iter().try_for_each(|f| {
                inner
                    .records
                    .insert(f.key.to_be_bytes(), &f.index.encode())
                    .map(drop)
                    .map_err(Error::from)
            })
        })
        .and_then(|()| {
            inner
                .meta
                .insert(NEXT_SEQ, &(max_seq + 1).to_be_bytes())
                .map(|_| ())
                .map_err(Error::from)
        });
    if let Err(e) = result {
        let msg = e.to_string();
        let _ = fail(inner, msg);
        return Err(e);
    }
    let mut s = inner.lock();
    let mut gen_done = 0;
    for f in done {
        let index = f.index;
        s.batches.insert(f.key, BatchInfo::of(&index));
        s.by_priority
            .entry(index.priority)
            .or_default()
            .insert(f.key);
        s.stored_bytes += index.bytes;
        s.staged_bytes -= index.bytes.min(s.staged_bytes);
        s.live_records += u64::from(index.count);
        s.committing -= u64::from(index.count).min(s.committing);
        gen_done = gen_done.max(f.gen);
    }
    s.committed_gen = s.committed_gen.max(gen_done).max(gen);
    inner.durable_gen.store(s.committed_gen, Ordering::Release);
    drop(s);
    inner.stats.commits.fetch_add(1, Ordering::Relaxed);
    inner.durable.notify_all();
    inner.changed.notify_all();
    inner.on_commit.notify_one();
    Ok(true)
}

/// Marks the buffer failed (appends and waiters give up) and reports `why`.
fn fail(inner: &Inner, why: String) -> Result<bool, Error> {
    let mut s = inner.lock();
    s.failed = Some(why.clone());
    drop(s);
    inner.changed.notify_all();
    inner.durable.notify_all();
    Err(Error::Io(std::io::Error::other(why)))
}

/// Cuts each class's records into files of at most `batch_max_bytes` and writes them
/// (no fsync). Returns the files and the open bytes they held; on error the open bytes
/// and the record count taken (lost, like a crash would lose them).
#[allow(clippy::type_complexity)]
fn write_batches(
    inner: &Inner,
    batches: &std::collections::BTreeMap<u8, super::Open>,
    gen: u64,
    boundary: Option<u64>,
) -> Result<(Vec<Staged>, u64), (u64, u64)> {
    let max = inner.cfg.batch_max_bytes as u64;
    let total_bytes: u64 = batches.values().map(|o| o.bytes).sum();
    let total_n: u64 = batches.values().map(|o| o.records.len() as u64).sum();
    let mut out = Vec::new();
    for (priority, open) in batches {
        let mut start = 0;
        while start < open.records.len() {
            let mut end = start;
            let mut chunk_bytes = 0;
            while end < open.records.len() {
                let sz = open.records[end].encoded_len() as u64 + 8;
                // A live-first boundary never falls inside a file.
                let crosses = boundary
                    .is_some_and(|l| open.records[start].seq < l && open.records[end].seq >= l);
                if end > start && (chunk_bytes + sz > max || crosses) {
                    break;
                }
                chunk_bytes += sz;
                end += 1;
            }
            let chunk = &open.records[start..end];
            start = end;
            let first = &chunk[0];
            let last_seq = chunk.iter().map(|r| r.seq).max().unwrap_or(first.seq);
            let bytes = record::encode_batch(chunk);
            let index = Index {
                bytes: bytes.len() as u64,
                count: chunk.len() as u32,
                priority: *priority,
                first_recv_ms: first.recv_ms,
                last_seq,
            };
            match files::write(&inner.files, first.seq, &bytes) {
                Ok(file) => {
                    inner
                        .file_bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    out.push(Staged {
                        file,
                        key: first.seq,
                        index,
                        gen,
                        max_seq: last_seq,
                    });
                }
                Err(e) => {
                    tracing::error!(cause = %e, "writing a buffer batch file failed");
                    return Err((total_bytes, total_n));
                }
            }
        }
    }
    Ok((out, total_bytes))
}

pub(super) fn commit_loop(inner: &Inner) {
    let interval = match inner.cfg.sync {
        SyncPolicy::Always => Duration::from_millis(200),
        SyncPolicy::Interval(d) => d,
    };
    let mut next_tick = Instant::now() + interval;
    let mut last_flush = Instant::now();
    let mut unflushed = false;
    loop {
        {
            let mut s = inner.lock();
            loop {
                if s.shutdown {
                    return;
                }
                let due = Instant::now() >= next_tick;
                let urgent = !s.open.is_empty()
                    && (inner.cfg.sync == SyncPolicy::Always
                        || s.open_bytes >= inner.cfg.batch_max_bytes as u64);
                if due || urgent {
                    break;
                }
                let wait = next_tick.saturating_duration_since(Instant::now());
                s.committer_idle = true;
                s = inner
                    .work
                    .wait_timeout(s, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                s.committer_idle = false;
            }
        }
        let force = Instant::now() >= next_tick;
        if force {
            next_tick = Instant::now() + interval;
        }
        match commit_once(inner, force) {
            Ok(wrote) => unflushed |= wrote,
            Err(e) => {
                tracing::error!(cause = %e, "buffer group commit failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if unflushed && last_flush.elapsed() >= SLED_FLUSH_EVERY {
            // Bounds what an open after a crash rebuilds from files.
            if let Err(e) = inner.db.flush() {
                tracing::error!(cause = %e, "buffer index flush failed");
            }
            last_flush = Instant::now();
            unflushed = false;
        }
    }
}
