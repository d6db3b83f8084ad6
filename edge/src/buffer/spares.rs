//! Spare batch files: files kept ready in the batch directory (`<id>.spare`), so a group
//! commit renames one into place instead of creating a file.
//!
//! Why: creating a file was the committer's largest CPU cost after the copies at 64 KB
//! payloads (a new file per 256 KiB). On ext4 without a journal (the machines measured
//! here) every inode allocation also skips the inodes freed in the last minutes
//! (`recently_deleted` in the kernel's `find_inode_bit`), so a connected edge that
//! creates and deletes files at the same rate pays more per create the faster it runs.
//! Two sources fill the pool:
//!
//! 1. the reaper *recycles* drained batch files: after the deletion's tombstone is durable
//!    (step 2 in `reap.rs`) the file is renamed to a spare instead of being unlinked,
//!    so a connected edge stops allocating and freeing inodes altogether;
//! 2. the `buffer-spares` thread creates empty files when the pool runs low, off the
//!    commit path (it runs while the committer waits for its fsyncs).
//!
//! With `sync: always` (files grow by appended segments) the thread makes its spares
//! *pre-sized*: `batch_max_bytes` (at most [`MAX_PRESIZE`]) of zeros, written and fsynced
//! before the spare is offered. A group commit that appends inside the file's length
//! changes neither its size nor its blocks, so its `fdatasync` needs no journal commit
//! (journaled ext4, the usual gateway setup) and no block allocation. Measured on the
//! development VM, `edge-bench` 100 B ingest, alternating with the previous edge:
//! journal-less ext4, `fdatasync` 0.29 -> 0.20 ms on average and 3 pairs 311/315/330k ->
//! 308/349/339k msgs/s; journaled ext4 (a loop mount), 2 pairs 239/264k -> 314/299k
//! msgs/s. 4,000 publishes at 200/s on journaled ext4 wrote 67 MB in 12,049 I/Os
//! before, 17 MB in 8,045 after (flash wear). A batch file keeps zeros
//! after its data while it grows; the committer cuts them off when it stops appending
//! (`commit::retire_tail`), and both readers and the open's recovery read only the
//! records (zeros are not a segment: `record::intact_prefix`). A file written whole in
//! one `O_DIRECT` write (large records while backlogged) takes the shortest spare, and
//! while such files are taken the thread creates empty spares: a backlog of 64 KB
//! camera frames takes a spare per 16 frames, and the zeros were written and fsynced
//! only to be overwritten (`edge-bench --skip-drain --small 0 --large 16000`, 2 pairs on
//! the development VM: 1,414 / 1,416 -> 1,203 / 1,224 MB written to the disk for
//! 1,049 MB of payload).
//!
//! A recycled file keeps its blocks the same way, not zeroed (a connected edge writes no
//! zeros): a file at least half the pre-size long (one that filled up was cut a little
//! under it) keeps up to the pre-size, old records and all, while fewer than [`TARGET`]
//! spares of the pool are that long (so at most `TARGET` pre-sizes of disk sit in
//! spares); a shorter file, and every file without pre-sizing, is truncated to empty. A
//! take picks the longest spare. Why: a connected edge starts a file per Produce
//! request (a read seals the file), and while recycled files were truncated every
//! commit into them grew the file, so each `fdatasync` committed the journal. 2,000
//! publishes at 200/s with the uplink up on journaled ext4 (after 8,000 more, so the
//! pool is in its steady state): 62.8-65.3 MB written and 2,654-2,701 journal commits
//! before, 37.8-39.7 MB and 1,060-1,121 after; after 20,000 more (sled's log has
//! stopped growing), 55.9 -> 29.0 MB and 2,048 -> 542; after a 30 MB backlog drained
//! first, 64.8 -> 38.8 MB. The old records never pass for the new batch's: readers read the
//! catalog's committed bytes only, and the open's recovery takes the run of segments
//! whose sequences rise from the file's key, while every old record's sequence is
//! below it (its file was committed, then drained or evicted, before the recycling, and
//! the records of any later commit round were appended after that file's last round
//! took its records); test `a_recycled_file_keeps_its_old_records_out_of_the_new_batch`.
//!
//! A spare holds no data the buffer needs, so none of this is made durable on its own:
//! a rename into place is covered by the commit's directory fsync like a created file,
//! and the open deletes every `*.spare` left by an earlier run (it may hold a recycled
//! file's old bytes). If a crash leaves a renamed spare under a
//! batch name before its new contents were synced, the file's records are those of the
//! old batch (or none): its first record's sequence is not the name's key, so recovery
//! removes it as an incomplete commit (`files::recover`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The thread refills the pool when it holds fewer than this many files...
const LOW: usize = 16;
/// ...up to this many.
pub(super) const TARGET: usize = 32;
/// Recycled files beyond this many are unlinked (each spare is an inode).
const MAX: usize = 64;

/// The largest pre-size (a larger `batch_max_bytes` grows files past it as before).
pub(super) const MAX_PRESIZE: u64 = 1 << 20;

/// Zeros to pre-size spares from (static: no heap).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The pool of spare files of one batch directory.
pub(super) struct Spares {
    dir: PathBuf,
    /// Bytes of zeros in a spare the thread creates (0: empty spares).
    presize: u64,
    state: Mutex<State>,
    /// Wakes the filler thread: the pool ran low, or shutdown.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Ids and lengths of the spare files ready for use.
    free: Vec<(u64, u64)>,
    next_id: u64,
    /// Whether the latest take was for a file written whole ([`Spares::take_whole`]):
    /// the filler then creates empty spares.
    whole: bool,
    shutdown: bool,
}

impl State {
    /// A spare file name not used yet in this process.
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

fn spare_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.spare"))
}

impl Spares {
    /// The pool of `dir`, after deleting every spare an earlier run left there; the
    /// spares it creates hold `presize` zeros (at most [`MAX_PRESIZE`]).
    pub(super) fn open(dir: &Path, presize: u64) -> io::Result<Self> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".spare"))
            {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(Spares {
            dir: dir.to_path_buf(),
            presize: presize.min(MAX_PRESIZE),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spare files ready now.
    #[cfg(test)]
    pub(super) fn ready(&self) -> usize {
        self.lock().free.len()
    }

    /// A new file at `path`, opened for writing at offset 0, and its length: a spare
    /// renamed there (empty, or pre-sized: zeros, or a recycled file's old records), or a
    /// created file when the pool is empty or the rename fails.
    pub(super) fn take(&self, path: &Path) -> io::Result<(File, u64)> {
        self.take_as(path, false)
    }

    /// [`Spares::take`] for a file written whole in one write and never appended to (a
    /// direct write of large records): the shortest spare, and the filler creates
    /// empty spares from now on, until the next [`Spares::take`]. Why: a backlog of
    /// camera frames takes a spare per 16 records, and pre-sized ones cost the filler
    /// `batch_max_bytes` of zeros and an fsync each that the direct write then
    /// overwrites, so the filler fell behind and the committer created files itself.
    pub(super) fn take_whole(&self, path: &Path) -> io::Result<(File, u64)> {
        self.take_as(path, true)
    }

    fn take_as(&self, path: &Path, whole: bool) -> io::Result<(File, u64)> {
        let id = {
            let mut s = self.lock();
            s.whole = whole;
            // The longest first: a pre-sized spare's appends cost no journal commit. A
            // file written whole needs no length: the shortest.
            let pick = if whole {
                (0..s.free.len()).min_by_key(|i| s.free[*i].1)
            } else {
                (0..s.free.len()).max_by_key(|i| s.free[*i].1)
            };
            let id = pick.map(|i| s.free.swap_remove(i));
            if s.free.len() < LOW {
                self.wake.notify_one();
            }
            id
        };
        if let Some((id, len)) = id {
            match fs::rename(spare_path(&self.dir, id), path) {
                // Not truncated: a spare's length (zeros, or a recycled file's old
                // blocks) is what makes appends cheap.
                Ok(()) => return Ok((OpenOptions::new().write(true).open(path)?, len)),
                Err(e) => tracing::warn!(cause = %e, "using a spare buffer file failed"),
            }
        }
        Ok((File::create(path)?, 0))
    }

    /// Whether a spare of `len` bytes counts as pre-sized: at least half the pre-size
    /// (files that filled up are cut to their records when they stop growing, a little
    /// under `batch_max_bytes`).
    fn sized(&self, len: u64) -> bool {
        self.presize > 0 && len >= self.presize / 2
    }

    /// Turns the batch file at `path`, `len` bytes long (its deletion durable in sled),
    /// into a spare if the pool has room; returns whether it did (if not, the caller
    /// unlinks it). With pre-sizing on, a file at least half the pre-size long keeps up
    /// to the pre-size (its blocks, old records and all) while fewer than [`TARGET`]
    /// spares of the pool are; any other file is truncated to empty.
    pub(super) fn recycle(&self, path: &Path, len: u64) -> bool {
        let (id, keep) = {
            let mut s = self.lock();
            if s.free.len() >= MAX || s.shutdown {
                return false;
            }
            let sized = s.free.iter().filter(|(_, l)| self.sized(*l)).count();
            let keep = if self.sized(len) && sized < TARGET {
                len.min(self.presize)
            } else {
                0
            };
            (s.new_id(), keep)
        };
        let recycled = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| if keep < len { f.set_len(keep) } else { Ok(()) })
            .and_then(|()| fs::rename(path, spare_path(&self.dir, id)));
        match recycled {
            Ok(()) => {
                self.lock().free.push((id, keep));
                true
            }
            Err(e) => {
                tracing::warn!(cause = %e, "recycling a buffer file failed");
                false
            }
        }
    }

    /// The `buffer-spares` thread: whenever fewer than [`LOW`] spares are ready, creates
    /// them up to [`TARGET`], until [`Spares::stop`].
    pub(super) fn fill_loop(&self) {
        loop {
            {
                let mut s = self.lock();
                while !s.shutdown && s.free.len() >= LOW {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.shutdown {
                    return;
                }
            }
            while let Some((id, presize)) = self.next_to_fill() {
                match self.create(id, presize) {
                    Ok(len) => self.lock().free.push((id, len)),
                    Err(e) => {
                        tracing::warn!(cause = %e, "creating a spare buffer file failed");
                        // Back off a second whatever wakes us (the committer creates its own
                        // files meanwhile): one warning a second at most.
                        let s = self.lock();
                        drop(
                            self.wake
                                .wait_timeout_while(s, Duration::from_secs(1), |s| !s.shutdown),
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Creates spare `id`, pre-sized with `presize` zeros, written and fsynced, so that
    /// the commits appending to it later neither allocate blocks nor change its size;
    /// returns its length. If the zeros cannot be written (a full disk), the spare is
    /// offered empty, as before pre-sizing, instead of left behind unused.
    fn create(&self, id: u64, presize: u64) -> io::Result<u64> {
        let mut f = File::create(spare_path(&self.dir, id))?;
        if presize == 0 {
            return Ok(0);
        }
        let zeroed = (|| {
            let mut left = presize as usize;
            while left > 0 {
                let n = left.min(ZEROS.len());
                io::Write::write_all(&mut f, &ZEROS[..n])?;
                left -= n;
            }
            f.sync_all()
        })();
        match zeroed {
            Ok(()) => Ok(presize),
            Err(e) => {
                tracing::debug!(cause = %e, "pre-sizing a spare buffer file failed: offered empty");
                f.set_len(0)?;
                Ok(0)
            }
        }
    }

    /// The id and pre-size of the next spare to create while the pool is below
    /// [`TARGET`] (empty while files are taken to be written whole).
    fn next_to_fill(&self) -> Option<(u64, u64)> {
        let mut s = self.lock();
        let presize = if s.whole { 0 } else { self.presize };
        (!s.shutdown && s.free.len() < TARGET).then(|| (s.new_id(), presize))
    }

    /// Ends [`Spares::fill_loop`]; later drained files are unlinked, not recycled.
    pub(super) fn stop(&self) {
        self.lock().shutdown = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::super::files;
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Without the filler thread: an empty pool creates the file; a retired file becomes
    /// an empty spare that the next take renames into place; past [`MAX`] spares a
    /// retired file is unlinked, and after `stop` every retired file is.
    #[test]
    fn retire_recycles_up_to_the_limit_and_take_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spares = Spares::open(d, 0).unwrap();
        let a = files::path(d, 1);
        std::io::Write::write_all(&mut spares.take(&a).unwrap().0, b"records").unwrap();
        assert_eq!(files::retire(d, 1, &spares).unwrap(), 7, "bytes it held");
        assert_eq!(spares.ready(), 1);
        assert_eq!(names(d), ["1.spare"]);
        assert_eq!(fs::metadata(d.join("1.spare")).unwrap().len(), 0);
        let b = files::path(d, 2);
        drop(spares.take(&b).unwrap());
        assert_eq!(
            names(d),
            [b.file_name().unwrap().to_str().unwrap()],
            "the spare renamed into place"
        );
        assert_eq!(files::retire(d, 99, &spares).unwrap(), 0, "already gone");
        for key in 100..100 + MAX as u64 + 3 {
            drop(File::create(files::path(d, key)).unwrap());
            files::retire(d, key, &spares).unwrap();
        }
        assert_eq!(spares.ready(), MAX);
        assert_eq!(
            names(d).iter().filter(|n| n.ends_with(".spare")).count(),
            MAX
        );
        assert_eq!(names(d).iter().filter(|n| n.ends_with(".batch")).count(), 1);
        spares.stop();
        files::retire(d, 2, &spares).unwrap();
        assert!(!b.exists(), "unlinked after stop");
        drop(spares);
        Spares::open(d, 0).unwrap();
        assert!(names(d).is_empty(), "open deletes the spares");
    }

    #[test]
    fn created_spares_are_presized_with_zeros_and_recycled_ones_keep_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spares = Spares::open(d, 10_000).unwrap();
        // What the filler thread does for one spare.
        let (id, presize) = spares.next_to_fill().unwrap();
        assert_eq!(spares.create(id, presize).unwrap(), 10_000);
        spares.lock().free.push((id, 10_000));
        let a = files::path(d, 1);
        let (f, len) = spares.take(&a).unwrap();
        assert_eq!(len, 10_000);
        drop(f);
        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes.len(), 10_000);
        assert!(bytes.iter().all(|b| *b == 0));
        // A recycled file keeps its length and bytes, up to the pre-size.
        fs::write(&a, vec![7; 10_000]).unwrap();
        assert_eq!(files::retire(d, 1, &spares).unwrap(), 10_000);
        let (_, len) = spares.take(&files::path(d, 2)).unwrap();
        assert_eq!(len, 10_000);
        assert_eq!(fs::read(files::path(d, 2)).unwrap(), vec![7; 10_000]);
        fs::write(files::path(d, 2), vec![7; 30_000]).unwrap();
        assert_eq!(files::retire(d, 2, &spares).unwrap(), 30_000);
        let (_, len) = spares.take(&files::path(d, 3)).unwrap();
        assert_eq!(len, 10_000, "cut to the pre-size");
        assert_eq!(fs::metadata(files::path(d, 3)).unwrap().len(), 10_000);
        // A file that filled up and was cut to its records keeps them; a short one is
        // truncated (most of its appends would grow it).
        fs::write(files::path(d, 3), vec![7; 9_000]).unwrap();
        files::retire(d, 3, &spares).unwrap();
        assert_eq!(spares.take(&files::path(d, 4)).unwrap().1, 9_000);
        fs::write(files::path(d, 4), vec![7; 4_000]).unwrap();
        files::retire(d, 4, &spares).unwrap();
        assert_eq!(spares.lock().free[0].1, 0);
        // Once TARGET spares are pre-sized, further ones are truncated; a take picks a
        // pre-sized one over an empty one.
        for key in 100..100 + TARGET as u64 + 2 {
            fs::write(files::path(d, key), vec![7; 10_000]).unwrap();
            files::retire(d, key, &spares).unwrap();
        }
        let lens: Vec<u64> = spares.lock().free.iter().map(|(_, l)| *l).collect();
        assert_eq!(lens.iter().filter(|l| **l == 10_000).count(), TARGET);
        assert_eq!(lens.iter().filter(|l| **l == 0).count(), 3);
        for key in 200..200 + TARGET as u64 {
            assert_eq!(spares.take(&files::path(d, key)).unwrap().1, 10_000);
        }
        assert_eq!(spares.take(&files::path(d, 300)).unwrap().1, 0);
        // Without pre-sizing (`sync: interval`) a recycled file is truncated.
        let plain = tempfile::tempdir().unwrap();
        let spares = Spares::open(plain.path(), 0).unwrap();
        fs::write(files::path(plain.path(), 1), vec![7; 10_000]).unwrap();
        files::retire(plain.path(), 1, &spares).unwrap();
        let (_, len) = spares.take(&files::path(plain.path(), 2)).unwrap();
        assert_eq!(len, 0);
        assert_eq!(fs::metadata(files::path(plain.path(), 2)).unwrap().len(), 0);
        assert_eq!(Spares::open(d, u64::MAX).unwrap().presize, MAX_PRESIZE);
    }

    /// A file written whole takes the shortest spare, and the filler creates empty
    /// spares until a file to append to is taken again.
    #[test]
    fn files_written_whole_take_the_shortest_spare_and_turn_presizing_off() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spares = Spares::open(d, 10_000).unwrap();
        let fill = |spares: &Spares| {
            let (id, presize) = spares.next_to_fill().unwrap();
            let len = spares.create(id, presize).unwrap();
            spares.lock().free.push((id, len));
            len
        };
        assert_eq!(fill(&spares), 10_000);
        fs::write(files::path(d, 1), b"").unwrap();
        files::retire(d, 1, &spares).unwrap();
        let (_, len) = spares.take_whole(&files::path(d, 2)).unwrap();
        assert_eq!(len, 0, "the empty spare");
        assert_eq!(fill(&spares), 0, "no zeros for files written whole");
        assert_eq!(fill(&spares), 0);
        let (_, len) = spares.take(&files::path(d, 3)).unwrap();
        assert_eq!(len, 10_000, "the pre-sized spare");
        assert_eq!(fill(&spares), 10_000, "pre-sized again");
    }
}
