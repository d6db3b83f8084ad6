//! Read-ahead for drains: the `buffer-prefetch` thread brings the batch files after the
//! replicator's latest full read into the page cache, so the replicator's next reads
//! copy from memory instead of waiting for the disk.
//!
//! A gateway's backlog outgrows its memory, and files written with `O_DIRECT` are never
//! in the page cache: a drain reads them from the disk. The replicator reads on its own
//! task, one file after another, while the encoder thread waits for its records. Here,
//! after every read that filled its byte budget (a backlog, not the live tail), the
//! reader sends the key of the last file it read; this thread asks the kernel
//! (`POSIX_FADV_WILLNEED`) to read the files after it, up to [`AHEAD_BYTES`], and tops
//! that window up once the reader has consumed half of it. The advice allocates the
//! pages and starts the reads on this thread; the replicator's `read` then finds them.
//! Only the page cache is used (no process memory), and a file deleted or missing is
//! skipped: read-ahead is advice, never needed for correctness.
//!
//! Measured (session 28, `edge-bench --skip-ingest --backlog-mb 1024 --cap-mb 0 --cold`,
//! 1 KB records, one binary with the hint switched off and on, runs interleaved): off
//! 146-172 MB/s (median 161, 7 runs), on 152-217 (median 182, 9 runs); the replicator
//! task's CPU fell from 1.7-2.1 s to 1.4-1.9 s, the thread itself used about 0.3 s. From
//! the page cache (no `--cold`) 229 / 234 off against 215 / 254 on; 1 GB of 64 KB
//! records, whose direct-written files are never cached, 245 / 265 against 268 / 270.
//! A 2 MiB or 32 MiB window did no better than 8 MiB (2 runs each).

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{files, Inner};

/// How far past the replicator's latest read the files are read ahead.
pub(super) const AHEAD_BYTES: u64 = 8 << 20;

/// Hints queued for the thread (more are dropped: a later hint supersedes them).
const QUEUED: usize = 4;

/// The reader's side: where its latest full read ended.
#[derive(Debug, Default)]
pub(super) struct Hints(Mutex<Option<SyncSender<u64>>>);

impl Hints {
    /// The replicator read every batch up to `key` and has more to read.
    pub(super) fn read_through(&self, key: u64) {
        if let Some(tx) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            // Full: the thread is behind; it catches up with a later hint.
            let _ = tx.try_send(key);
        }
    }

    /// Ends the thread (once it has finished its current advice).
    pub(super) fn close(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Starts the `buffer-prefetch` thread; its hints go through `inner`'s [`Hints`].
pub(super) fn spawn(inner: Arc<Inner>) -> std::io::Result<JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED);
    *inner.prefetch.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    std::thread::Builder::new()
        .name("buffer-prefetch".into())
        .spawn(move || prefetch_loop(&inner, &rx))
}

fn prefetch_loop(inner: &Inner, rx: &Receiver<u64>) {
    // Files advised and not yet read, oldest first, with their bytes.
    let mut ahead: VecDeque<(u64, u64)> = VecDeque::new();
    while let Ok(first) = rx.recv() {
        let read = rx.try_iter().fold(first, u64::max);
        while ahead.front().is_some_and(|(k, _)| *k <= read) {
            ahead.pop_front();
        }
        let advised: u64 = ahead.iter().map(|(_, b)| b).sum();
        if advised >= AHEAD_BYTES / 2 {
            continue;
        }
        let from = ahead.back().map_or(read, |(k, _)| *k);
        let next = next_files(inner, from, AHEAD_BYTES - advised);
        for &(key, bytes) in &next {
            advise(inner, key, bytes);
        }
        ahead.extend(next);
    }
}

/// The files after `from`, in key order, up to about `budget` bytes.
fn next_files(inner: &Inner, from: u64, budget: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut s = inner.lock();
    let mut at = from;
    while bytes < budget {
        let Some(key) = at
            .checked_add(1)
            .and_then(|a| s.catalog.first_key(a..).ok().flatten())
        else {
            break;
        };
        // The newest files are being written: nothing to read ahead from the disk.
        if s.appending.contains(&key) {
            break;
        }
        let b = s.catalog.bytes_of(key).unwrap_or(0);
        out.push((key, b));
        bytes += b;
        at = key;
    }
    out
}

fn advise(inner: &Inner, key: u64, bytes: u64) {
    let Ok(file) = std::fs::File::open(files::path(&inner.files, key)) else {
        return; // drained and deleted meanwhile
    };
    if let Err(e) = rustix::fs::fadvise(
        &file,
        0,
        NonZeroU64::new(bytes),
        rustix::fs::Advice::WillNeed,
    ) {
        tracing::debug!(batch = key, cause = %e, "read-ahead advice refused");
    }
}
