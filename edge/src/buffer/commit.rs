//! The group committer: cuts open batches into batch files (a new file, or a new segment
//! at the end of the class's *tail*, its newest file, while that is unclaimed and below
//! `batch_max_bytes`), fsyncs them (and the directory when a file was created), then
//! indexes them in sled (durability step 2 in the module docs). sled is
//! flushed at most every [`SLED_FLUSH_EVERY`], not per commit: a batch file is
//! self-describing, so an index entry lost in a crash is rebuilt from its file at open.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{files, record, BatchInfo, Error, Index, Inner, SyncPolicy, NEXT_SEQ};

/// How often the committer flushes sled (index entries, `next_seq`) while committing.
pub(super) const SLED_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Record capacity above which the committer does not hand an open batch's vector back
/// for reuse (bounds the memory it keeps: about 220 bytes per record).
const MAX_SPARE_RECORDS: usize = 16 << 10;

/// A batch file keeps taking records past `batch_max_bytes` while it holds fewer than
/// this many, up to [`LARGE_FILE_FACTOR`] x `batch_max_bytes`. With 64 KB payloads a
/// 256 KiB file held 4 records: the edge created a file per 4 publishes, and creating
/// files was most of its CPU (on ext4 without a journal every inode allocation also
/// scans the recently freed ones). 64 KB rows of `edge-bench`, 6 runs each, alternating:
/// 2,813-4,205 -> 4,432-5,709 msgs/s with `sync: always`, CPU 200-400 -> 172-238 us per
/// message, peak RSS 17.7-18.7 -> 16.4-17.7 MB. Files of small records are unchanged, so
/// a 1 KB drain pins no larger read buffers (1 MiB files for every record size: 6,400-
/// 7,100 msgs/s at 64 KB, but a 1 GB drain's peak RSS went to 32.8-34.7 MB).
const MIN_FILE_RECORDS: u32 = 16;

/// How far past `batch_max_bytes` a file of large records may grow.
const LARGE_FILE_FACTOR: u64 = 4;

/// Whether a file (or an open batch) of `bytes` in `count` records under
/// `batch_max_bytes` = `max` has room for a record of `size` more bytes.
fn fits(max: u64, bytes: u64, count: u32, size: u64) -> bool {
    let next = bytes.saturating_add(size);
    next <= max || (count < MIN_FILE_RECORDS && next <= max.saturating_mul(LARGE_FILE_FACTOR))
}

/// Whether an open batch of `bytes` in `count` records makes a full file: the
/// committer writes it under `sync: interval` without waiting for the tick.
pub(super) fn full(max: u64, bytes: u64, count: usize) -> bool {
    bytes >= max
        && (count >= MIN_FILE_RECORDS as usize || bytes >= max.saturating_mul(LARGE_FILE_FACTOR))
}

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
    /// Its length on disk: `index.bytes`, or more if it was a pre-sized spare.
    len: u64,
}

/// The committer's own state, under `Inner::commit_lock`.
pub(super) struct Committer {
    /// Files written, not yet fsynced nor indexed (`sync: interval`).
    staged: Vec<Staged>,
    /// Per priority class, its newest batch file if a sync round can still append to it.
    tails: BTreeMap<u8, Tail>,
    /// The encode buffer, reused for every file and segment (see
    /// [`record::encode_batch_into`]); about `batch_max_bytes`.
    scratch: Vec<u8>,
    /// Whether new files are still written with `O_DIRECT`.
    direct: Direct,
    /// `buffer.direct_io_backlog_bytes` ([`DIRECT_BACKLOG_BYTES`] by default).
    direct_backlog: u64,
}

/// Whether the committer writes files of large records with `O_DIRECT`
/// (`buffer.direct_io`): while more than `buffer.direct_io_backlog_bytes`
/// ([`DIRECT_BACKLOG_BYTES`] by default) are buffered, a new
/// file larger than `batch_max_bytes` (only records of about 16 KB and more make one: a
/// file takes records past `batch_max_bytes` until it holds [`MIN_FILE_RECORDS`]) goes
/// from the encode buffer to the disk in one write, without a copy into the page cache.
/// Why: that copy was most of the committer's CPU at 64 KB payloads (`perf`: 77% of its
/// samples in `copy_folio_from_iter_atomic`, the committer the edge's busiest thread; on
/// this VM a page the kernel has not used before costs about ten times a reused one:
/// `dd` into the page cache 531 MB/s, then 5.1 GB/s), and a gateway's page cache is
/// better spent elsewhere than on camera frames an uplink reads once, maybe hours later.
/// `edge-bench`, 3 alternating pairs (session 27): 64 KB ingest with `sync: always`
/// 4,734 / 4,439 / 3,999 -> 6,251 / 4,947 / 5,948 msgs/s, with `sync: interval` 2,966 /
/// 3,344 / 3,028 -> 6,439 / 4,992 / 5,071 (CPU per message 221-350 -> 148-221 us); 100 B
/// rows unchanged. What it costs: the replicator reads these files from the disk, so a
/// 1 GB backlog of 64 KB records drains like one evicted from the page cache (three
/// runs 215-248 MB/s; the previous edge 257-317 from the cache, 203-251 evicted with
/// `edge-bench --cold`). Reading them with `O_DIRECT` too was slower (184-192 MB/s
/// against 215-248 through the cache: the kernel's readahead overlaps the disk with the
/// replicator). Written direct too, files of small records made a 1 GB backlog of 1 KB
/// records drain at 150-172 MB/s against 197-235 from the cache, so they stay in it.
/// The first refusal (a file system without `O_DIRECT`) turns it off for the rest of
/// the run.
#[derive(Debug)]
pub(super) struct Direct(bool);

/// Buffered bytes (`State::used_bytes`) above which files of large records are written
/// direct, by default (`buffer.direct_io_backlog_bytes`). Below it the edge is
/// connected and caught up (its unacknowledged batches are a few MiB), and the
/// replicator reads a file within milliseconds of its commit: from the page cache, if it
/// went through it. Written direct at all times, the `edge-live` 64 KB row of
/// `edge-bench` (uplink up) fell from 3,225 / 3,550 to 2,614 / 2,933 msgs/s; with this
/// bound it runs 3,663 / 3,619 (against 3,169 / 3,390).
pub const DIRECT_BACKLOG_BYTES: u64 = 64 << 20;

impl Direct {
    fn refused(&mut self) {
        if self.0 {
            tracing::info!(
                "the buffer's file system refuses O_DIRECT: batch files go through the page cache"
            );
        }
        self.0 = false;
    }
}

impl Committer {
    /// A committer that writes files of large records with `O_DIRECT` (if
    /// `direct_io`) while more than `backlog` bytes are buffered.
    pub(super) fn new(direct_io: bool, backlog: u64) -> Self {
        Committer {
            staged: Vec::new(),
            tails: BTreeMap::new(),
            scratch: Vec::new(),
            direct: Direct(direct_io),
            direct_backlog: backlog,
        }
    }
}

#[cfg(test)]
impl Committer {
    /// The encode buffer's capacity (tests).
    pub(super) fn scratch_capacity(&self) -> usize {
        self.scratch.capacity()
    }
}

/// A class's newest batch file, committed and indexed, kept open for appends. A sync
/// round appends to it only while it is still indexed, unclaimed by the replicator (a
/// claimed batch never changes), not sealed by a reader and has room for the round's
/// first record of its class.
struct Tail {
    file: std::fs::File,
    key: u64,
    /// Its index entry as of its last commit.
    index: Index,
    /// Its length on disk: `index.bytes`, or more while the zeros of a pre-sized spare
    /// follow its records (`spares.rs`).
    len: u64,
}

/// Cuts the zeros after the records of a batch file of the committer's (`files::trim`)
/// and takes them off the counted file bytes.
fn trim(inner: &Inner, file: &std::fs::File, key: u64, bytes: u64, len: u64) {
    match files::trim(file, bytes, len) {
        Ok(cut) => {
            inner.file_bytes.fetch_sub(cut, Ordering::Relaxed);
        }
        // Harmless: the file is read up to its records, and the open cuts it.
        Err(e) => tracing::warn!(batch = key, cause = %e, "trimming a buffer batch file failed"),
    }
}

/// Stops appending to `t` (under the state lock `s`): cuts its zeros while it is still
/// the committer's alone, resident and unclaimed. A tail the replicator claimed or a
/// quota eviction removed keeps them: whoever deletes it counts its whole length, and
/// the reaper may already have recycled its inode as a spare. (A tail a reader sealed
/// is not retired through here: it keeps its length for recycling, `spares.rs`.)
fn retire_tail(inner: &Inner, s: &super::State, t: Tail) {
    if s.catalog.is_resident(t.key) && s.claimed.is_none_or(|claimed| t.key > claimed) {
        trim(inner, &t.file, t.key, t.index.bytes, t.len);
    }
}

/// A segment appended to a tail in this round.
struct Grown {
    key: u64,
    bytes: u64,
    count: u32,
    max_seq: u64,
}

/// Whether commits append to tails: with `sync: always` only, where a commit per
/// arrival burst would otherwise create a file each (file creation cost more CPU than
/// the fsyncs); `sync: interval` writes full batches and one file per class per tick.
fn grows(inner: &Inner) -> bool {
    inner.cfg.sync == SyncPolicy::Always
}

/// Drops the tails a round may no longer append to (see [`Tail`]).
fn prune_tails(c: &mut Committer, s: &super::State) {
    c.tails.retain(|_, t| {
        // A tail is its class's newest file, which the catalog keeps resident.
        s.catalog.is_resident(t.key) && s.claimed.is_none_or(|claimed| t.key > claimed)
    });
}

/// Cuts the open batches into batch files (or segments appended to tails) and writes
/// them; then, when `force` or with `sync: always`, fsyncs every file written so far,
/// fsyncs the directory if a file was created, and indexes them in sled, unflushed
/// (durability step 2). With `sync: interval` a full batch is
/// only written (memory freed, no fsync) until the next tick. Returns whether anything
/// was made durable. A round that makes something durable records its time since
/// `started` ([`super::Buffer::last_commit_time`]) before it wakes the waiters, so an
/// acknowledgement that follows the one it releases sees it.
pub(super) fn commit_once(inner: &Inner, force: bool, started: Instant) -> Result<bool, Error> {
    let mut guard = inner.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
    let c = &mut *guard;
    let sync = force || inner.cfg.sync == SyncPolicy::Always || c.staged.len() >= MAX_STAGED;
    let (batches, gen, boundary, marked, backlogged) = {
        let mut s = inner.lock();
        if s.open.is_empty() && (c.staged.is_empty() || !sync) {
            // Idle: close the handles of tails claimed or deleted meanwhile (an unlinked
            // file's space returns only when its last handle closes).
            prune_tails(c, &s);
            if c.staged.is_empty() {
                s.committed_gen = s.committed_gen.max(s.gen);
                inner.durable_gen.store(s.committed_gen, Ordering::Release);
                drop(s);
                inner.durable.notify_all();
            }
            return Ok(false);
        }
        let max = inner.cfg.batch_max_bytes as u64;
        let full = s.open.values().any(|o| full(max, o.bytes, o.records.len()));
        if !sync && !full {
            return Ok(false);
        }
        let open = std::mem::take(&mut s.open);
        s.committing += open.values().map(|o| o.records.len() as u64).sum::<u64>();
        // A reader met a tail mid-append and asked for it to stop growing; a round
        // without a sync writes files that are not indexed yet, so no tail is the
        // newest file of its class any more; only `sync: always` grows files.
        if std::mem::take(&mut s.seal) {
            // A sealed tail is being read: claimed, it keeps its length, so the file is
            // recycled pre-sized once drained (`spares.rs`).
            c.tails.clear();
        } else if !sync || !grows(inner) {
            for (_, t) in std::mem::take(&mut c.tails) {
                retire_tail(inner, &s, t);
            }
        }
        prune_tails(c, &s);
        // Invisible to reads and evictions until this round registers its records.
        // Only tails this round appends to (its first record of the class fits): the
        // others are no longer the newest file of their class after this round.
        let full: Vec<u8> = c
            .tails
            .iter()
            .filter(|(class, t)| {
                open.get(class)
                    .and_then(|o| o.records.first())
                    .is_some_and(|r| {
                        cut(
                            std::slice::from_ref(r),
                            0,
                            (max, t.index.bytes, t.index.count),
                            s.live_from,
                            Some(t.key),
                        ) == 0
                    })
            })
            .map(|(class, _)| *class)
            .collect();
        for class in full {
            if let Some(t) = c.tails.remove(&class) {
                retire_tail(inner, &s, t);
            }
        }
        let marked: Vec<u64> = c
            .tails
            .iter()
            .filter(|(class, _)| open.contains_key(class))
            .map(|(_, t)| t.key)
            .collect();
        s.appending.extend(&marked);
        let backlogged = s.used_bytes() > c.direct_backlog;
        (open, s.gen, s.live_from, marked, backlogged)
    };
    let cut = write_batches(
        inner,
        &batches,
        gen,
        boundary,
        &mut c.tails,
        &mut c.scratch,
        backlogged.then_some(&mut c.direct),
    );
    // Keep at most twice the largest file [`fits`] allows (LARGE_FILE_FACTOR x
    // `batch_max_bytes`), so files of large records reuse it too; only a record larger
    // than that frees it. Keeping two batches' worth (before session 14) freed the
    // buffer of every 64 KB-record file (16 records, about 1 MiB): a fresh mapping
    // faulted in per file, a fifth of the committer's samples.
    let keep = inner
        .cfg
        .batch_max_bytes
        .saturating_mul(2 * LARGE_FILE_FACTOR as usize);
    if c.scratch.capacity() > keep {
        c.scratch = Vec::new();
    }
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
            Ok((_, _, open_bytes)) => (*open_bytes, 0),
            Err((open_bytes, n, _)) => (*open_bytes, *n),
        };
        s.open_bytes -= bytes.min(s.open_bytes);
        s.committing -= n.min(s.committing);
        if let Ok((files, grown, _)) = &cut {
            s.staged_bytes += files.iter().map(|f| f.index.bytes).sum::<u64>()
                + grown.iter().map(|g| g.bytes).sum::<u64>();
        }
    }
    inner.changed.notify_all();
    let grown = match cut {
        Ok((files, grown, _)) => {
            c.staged.extend(files);
            grown
        }
        Err((_, _, e)) => {
            // A tail may end in a partial segment now: never append after it.
            c.tails.clear();
            return fail(inner, format!("writing a buffer batch file failed: {e}"));
        }
    };
    if !sync {
        return Ok(false);
    }
    let done = std::mem::take(&mut c.staged);
    let max_seq = done
        .iter()
        .map(|f| f.max_seq)
        .chain(grown.iter().map(|g| g.max_seq))
        .max()
        .unwrap_or(0);
    let tail = |key: u64| c.tails.values().find(|t| t.key == key);
    let result = done
        .iter()
        .map(|f| &f.file)
        .chain(grown.iter().filter_map(|g| tail(g.key).map(|t| &t.file)))
        .try_for_each(std::fs::File::sync_data)
        // Appending creates no directory entry: only new files need the directory fsync.
        .and_then(|()| {
            if done.is_empty() {
                Ok(())
            } else {
                files::sync_dir(&inner.files)
            }
        })
        .map_err(Error::from)
        .and_then(|()| {
            // Plain inserts, not a `sled::Batch`: sled writes out and syncs its log
            // buffer around every batch (two `sync_file_range` per commit), and the
            // index entries need no atomicity (each stands alone; recovery at open
            // rebuilds any lost one).
            let entries = done.iter().map(|f| (f.key, f.index)).chain(
                grown
                    .iter()
                    .filter_map(|g| tail(g.key).map(|t| (t.key, t.index))),
            );
            inner.index().put(entries)
        })
        .and_then(|()| {
            inner
                .meta
                .insert(NEXT_SEQ, &(max_seq + 1).to_be_bytes())
                .map(|_| ())
                .map_err(Error::from)
        });
    if let Err(e) = result {
        c.tails.clear();
        let msg = e.to_string();
        let _ = fail(inner, msg);
        return Err(e);
    }
    let max = inner.cfg.batch_max_bytes as u64;
    // A new file that will not be a tail: cut its zeros now, while nobody else sees it
    // (off the state lock).
    let tail_room = |index: &Index| index.bytes < max && grows(inner);
    for f in done.iter().filter(|f| !tail_room(&f.index)) {
        trim(inner, &f.file, f.key, f.index.bytes, f.len);
    }
    let mut s = inner.lock();
    let mut gen_done = 0;
    for key in &marked {
        s.appending.remove(key);
    }
    for g in &grown {
        s.catalog.grow(g.key, g.bytes, g.count);
        s.staged_bytes -= g.bytes.min(s.staged_bytes);
        s.committing -= u64::from(g.count).min(s.committing);
    }
    for f in done {
        let index = f.index;
        s.catalog.insert(f.key, BatchInfo::of(&index));
        s.staged_bytes -= index.bytes.min(s.staged_bytes);
        s.committing -= u64::from(index.count).min(s.committing);
        gen_done = gen_done.max(f.gen);
        // The newest file of its class (files come in key order) is its tail while it
        // has room.
        let before = if tail_room(&index) {
            c.tails.insert(
                index.priority,
                Tail {
                    file: f.file,
                    key: f.key,
                    index,
                    len: f.len,
                },
            )
        } else {
            c.tails.remove(&index.priority)
        };
        if let Some(t) = before {
            retire_tail(inner, &s, t);
        }
    }
    let claimed = s.claimed;
    let super::State {
        catalog, appending, ..
    } = &mut *s;
    catalog.trim(claimed, appending);
    s.committed_gen = s.committed_gen.max(gen_done).max(gen);
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    inner.last_round_us.store(us, Ordering::Relaxed);
    inner.durable_gen.store(s.committed_gen, Ordering::Release);
    drop(s);
    inner.stats.commits.fetch_add(1, Ordering::Relaxed);
    inner.durable.notify_all();
    inner.changed.notify_all();
    inner.on_commit.notify_one();
    Ok(true)
}

/// Marks the buffer failed (acknowledgement waiters and reads give up, watchers of
/// [`super::Buffer::failure`] learn why) and reports `why`.
fn fail(inner: &Inner, why: String) -> Result<bool, Error> {
    let mut s = inner.lock();
    let first = s.failed.is_none();
    if first {
        s.failed = Some(why.clone());
    }
    s.appending.clear();
    drop(s);
    if first {
        inner.fatal.send_replace(Some(why.clone()));
    }
    inner.changed.notify_all();
    inner.durable.notify_all();
    Err(Error::Failed(why))
}

/// Cuts each class's records into segments of at most `batch_max_bytes` per file and
/// writes them (no fsync): first at the end of the class's tail in `tails` (if any, as
/// far as it has room), the rest into new files. Returns the new files, the segments
/// appended to tails and the open bytes they held; on error the open bytes and the
/// record count taken (lost, like a crash would lose them).
#[allow(clippy::type_complexity)]
fn write_batches(
    inner: &Inner,
    batches: &BTreeMap<u8, super::Open>,
    gen: u64,
    boundary: Option<u64>,
    tails: &mut BTreeMap<u8, Tail>,
    scratch: &mut Vec<u8>,
    mut direct: Option<&mut Direct>,
) -> Result<(Vec<Staged>, Vec<Grown>, u64), (u64, u64, std::io::Error)> {
    let max = inner.cfg.batch_max_bytes as u64;
    let total_bytes: u64 = batches.values().map(|o| o.bytes).sum();
    let total_n: u64 = batches.values().map(|o| o.records.len() as u64).sum();
    let failed = |e: std::io::Error| (total_bytes, total_n, e);
    let mut out = Vec::new();
    let mut grown = Vec::new();
    for (priority, open) in batches {
        let mut start = 0;
        if let Some(tail) = tails.get_mut(priority) {
            let file = (max, tail.index.bytes, tail.index.count);
            let end = cut(&open.records, 0, file, boundary, Some(tail.key));
            if end > 0 {
                let chunk = &open.records[..end];
                record::encode_batch_into(chunk, scratch);
                let bytes = &scratch[..];
                files::append(&mut tail.file, bytes).map_err(failed)?;
                // Inside a pre-sized file the length does not change.
                let len = tail.len.max(tail.index.bytes + bytes.len() as u64);
                inner
                    .file_bytes
                    .fetch_add(len - tail.len, Ordering::Relaxed);
                tail.len = len;
                let max_seq = chunk.iter().map(|r| r.seq).max().unwrap_or(tail.key);
                tail.index.bytes += bytes.len() as u64;
                tail.index.count += chunk.len() as u32;
                tail.index.last_seq = tail.index.last_seq.max(max_seq);
                grown.push(Grown {
                    key: tail.key,
                    bytes: bytes.len() as u64,
                    count: chunk.len() as u32,
                    max_seq,
                });
                start = end;
            }
        }
        while start < open.records.len() {
            let end = cut(&open.records, start, (max, 0, 0), boundary, None).max(start + 1);
            let chunk = &open.records[start..end];
            start = end;
            let first = &chunk[0];
            let last_seq = chunk.iter().map(|r| r.seq).max().unwrap_or(first.seq);
            // The bound is an upper bound: a file it puts at `max` or below is one of small
            // records. (A file a later round may append to, a tail, is below `max`: it
            // stays in the page cache, where an append finds its last page.)
            let aligned = (direct.as_ref().is_some_and(|d| d.0)
                && record::batch_len_bound(chunk) as u64 > max)
                .then(|| record::encode_batch_aligned(chunk, scratch, files::DIRECT_ALIGN))
                .flatten();
            let (file, len, size) = match aligned {
                Some((at, size)) => {
                    let (file, len, was_direct) = files::write_direct(
                        &inner.files,
                        first.seq,
                        &scratch[at..],
                        size,
                        &inner.spares,
                    )
                    .map_err(failed)?;
                    if was_direct {
                        inner.stats.direct_files.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(d) = direct.as_mut() {
                        d.refused();
                    }
                    (file, len, size)
                }
                None => {
                    record::encode_batch_into(chunk, scratch);
                    let (file, len) = files::write(&inner.files, first.seq, scratch, &inner.spares)
                        .map_err(failed)?;
                    (file, len, scratch.len())
                }
            };
            let index = Index {
                bytes: size as u64,
                count: chunk.len() as u32,
                priority: *priority,
                first_recv_ms: first.recv_ms,
                last_seq,
            };
            inner.file_bytes.fetch_add(len, Ordering::Relaxed);
            out.push(Staged {
                file,
                key: first.seq,
                index,
                gen,
                max_seq: last_seq,
                len,
            });
        }
    }
    Ok((out, grown, total_bytes))
}

/// The end of the records from `start` that [`fits`] a file whose first record is
/// `records[start]` (or, with `tail`, an existing file with that key), given
/// `(batch_max_bytes, bytes, records)` already in it: a live-first boundary never falls
/// inside a file.
fn cut(
    records: &[super::Record],
    start: usize,
    (max, used, count): (u64, u64, u32),
    boundary: Option<u64>,
    tail: Option<u64>,
) -> usize {
    let first = tail.or_else(|| records.get(start).map(|r| r.seq));
    let mut end = start;
    // A new segment's header; a new file's (the cut before segments) is not counted.
    let mut bytes = used + if tail.is_some() { 5 } else { 0 };
    let mut count = count;
    while let Some(r) = records.get(end) {
        let sz = r.encoded_len() as u64 + 8;
        let crosses = boundary.is_some_and(|l| first.is_some_and(|f| f < l) && r.seq >= l);
        if crosses || !fits(max, bytes, count, sz) {
            break;
        }
        bytes += sz;
        count = count.saturating_add(1);
        end += 1;
    }
    end
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
        let started = Instant::now();
        let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            #[cfg(test)]
            if inner.test_panic.load(Ordering::Relaxed) {
                panic!("test: a group commit panics");
            }
            #[cfg(test)]
            std::thread::sleep(Duration::from_millis(
                inner.test_commit_delay_ms.load(Ordering::Relaxed),
            ));
            commit_once(inner, force, started)
        }));
        let Ok(round) = round else {
            // The round may have left its records half-registered: stop committing, and
            // wake everyone who waits for this thread (the process is expected to exit).
            let _ = fail(inner, "the buffer's commit thread panicked".into());
            return;
        };
        match round {
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
