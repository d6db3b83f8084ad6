//! The group committer: cuts open batches into batch files, fsyncs them and their
//! directory, then indexes them in sled (durability step 2 in the module docs). sled is
//! flushed at most every [`SLED_FLUSH_EVERY`], not per commit: a batch file is
//! self-describing, so an index entry lost in a crash is rebuilt from its file at open.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{files, record, BatchInfo, Error, Index, Inner, SyncPolicy, NEXT_SEQ};

/// How often the committer flushes sled (index entries, `next_seq`) while committing.
pub(super) const SLED_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Writes the open batches as files (fsynced, directory fsynced) and indexes them in
/// sled, unflushed. Returns whether anything was written.
pub(super) fn commit_once(inner: &Inner, force: bool) -> Result<bool, Error> {
    let _serial = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
    let (batches, gen, boundary) = {
        let mut s = inner.lock();
        if s.open.is_empty() {
            s.committed_gen = s.committed_gen.max(s.gen);
            drop(s);
            inner.durable.notify_all();
            return Ok(false);
        }
        let full = s.open_bytes >= inner.cfg.batch_max_bytes as u64;
        if !force && !full && inner.cfg.sync != SyncPolicy::Always {
            return Ok(false);
        }
        let open = std::mem::take(&mut s.open);
        s.committing = open.values().map(|o| o.records.len() as u64).sum();
        (open, s.gen, s.live_from)
    };
    let mut sled_batch = sled::Batch::default();
    let mut infos = Vec::with_capacity(batches.len());
    let mut files = Vec::with_capacity(batches.len());
    let mut max_seq = 0;
    let max = inner.cfg.batch_max_bytes as u64;
    for (priority, open) in &batches {
        // Cut each class's records into files of at most `batch_max_bytes`.
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
            max_seq = max_seq.max(last_seq);
            let bytes = record::encode_batch(chunk);
            let index = Index {
                bytes: bytes.len() as u64,
                count: chunk.len() as u32,
                priority: *priority,
                first_recv_ms: first.recv_ms,
                last_seq,
            };
            infos.push((first.seq, index, chunk_bytes));
            sled_batch.insert(&first.seq.to_be_bytes(), &index.encode());
            files.push((first.seq, bytes));
        }
    }
    let written: Result<(), Error> = files
        .iter()
        .try_for_each(|(key, bytes)| files::write(&inner.files, *key, bytes))
        .and_then(|()| files::sync_dir(&inner.files))
        .map_err(Error::from);
    let result = written
        .and_then(|()| inner.records.apply_batch(sled_batch).map_err(Error::from))
        .and_then(|()| {
            inner
                .meta
                .insert(NEXT_SEQ, &(max_seq + 1).to_be_bytes())
                .map(|_| ())
                .map_err(Error::from)
        });
    let mut s = inner.lock();
    s.committing = 0;
    if let Err(e) = result {
        s.failed = Some(e.to_string());
        drop(s);
        inner.changed.notify_all();
        inner.durable.notify_all();
        return Err(e);
    }
    for (key, index, open_bytes) in infos {
        s.batches.insert(key, BatchInfo::of(&index));
        s.by_priority.entry(index.priority).or_default().insert(key);
        s.stored_bytes += index.bytes;
        s.live_records += u64::from(index.count);
        s.open_bytes -= open_bytes.min(s.open_bytes);
    }
    s.committed_gen = s.committed_gen.max(gen);
    drop(s);
    inner.stats.commits.fetch_add(1, Ordering::Relaxed);
    inner.durable.notify_all();
    inner.changed.notify_all();
    inner.on_commit.notify_one();
    Ok(true)
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
