//! Batch files: the records of one committed batch, one file each, named by the batch key.
//! sled 0.34 keeps large values resident (measured: 2,000 x 64 KB values -> 140 MB RSS,
//! 6,000 -> 307 MB, whatever `cache_capacity`), so payload bytes live in these files and
//! sled holds only the index and metadata; deleting a drained batch unlinks its file, so
//! space is reclaimed at once (no sled space amplification).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::spares::Spares;

/// Steps of a batch deletion, recorded per buffer directory in tests (their order is the
/// crash-safety argument: index removal, flush, unlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Index entry removed (in sled's memory).
    Removed(u64),
    /// sled flushed.
    Flushed,
    /// Batch file unlinked.
    Unlinked(u64),
}

/// The steps recorded so far (tests only).
#[cfg(test)]
pub(super) static STEPS: std::sync::Mutex<Vec<(PathBuf, Step)>> = std::sync::Mutex::new(Vec::new());

/// Records a deletion step (a no-op outside tests).
pub(super) fn note(_dir: &Path, _step: Step) {
    #[cfg(test)]
    STEPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((_dir.to_path_buf(), _step));
}

/// Path of the file holding batch `key`.
pub(super) fn path(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("{key:020}.batch"))
}

/// Writes a batch file, into a spare file when one is ready (the caller fsyncs it and
/// the directory, see `commit`); returns it (positioned after `bytes`) and its length,
/// which a pre-sized spare makes larger than `bytes` (zeros follow).
pub(super) fn write(
    dir: &Path,
    key: u64,
    bytes: &[u8],
    spares: &Spares,
) -> io::Result<(File, u64)> {
    let (mut f, len) = spares.take(&path(dir, key))?;
    f.write_all(bytes)?;
    Ok((f, len.max(bytes.len() as u64)))
}

/// The alignment of a direct write's address, offset and length: the largest logical
/// block size in common use (4 KiB sectors), a multiple of the smaller ones.
pub(super) const DIRECT_ALIGN: usize = 4096;

/// [`write()`] with `O_DIRECT`: `block` (at a [`DIRECT_ALIGN`]-aligned address, its length
/// a multiple of it) holds the batch's `len` bytes followed by zeros, and goes from the
/// process's buffer to the disk without a copy into the page cache. Returns the file
/// (positioned after the batch), its length (the zeros included until the committer
/// trims them) and whether the write was direct: when the file system refuses
/// `O_DIRECT` (tmpfs, for one) or its alignment, the batch goes through the page cache
/// as [`write()`] writes it.
pub(super) fn write_direct(
    dir: &Path,
    key: u64,
    block: &[u8],
    len: usize,
    spares: &Spares,
) -> io::Result<(File, u64, bool)> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Seek;
    use std::os::unix::fs::FileExt;
    let p = path(dir, key);
    let (mut f, old_len) = spares.take_whole(&p)?;
    let refused = |e: &io::Error| e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error());
    let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC;
    let direct = rustix::fs::open(&p, flags, Mode::empty())
        .map(File::from)
        .map_err(io::Error::from)
        .and_then(|d| d.write_all_at(block, 0));
    match direct {
        Ok(()) => {
            f.seek(io::SeekFrom::Start(len as u64))?;
            Ok((f, old_len.max(block.len() as u64), true))
        }
        // Refused by the open or by the alignment checks that come before any I/O: the
        // batch is written whole from the file's start through the page cache (bytes a
        // partial direct write left past it are read as a pre-sized file's zeros are).
        Err(e) if refused(&e) => {
            f.write_all(&block[..len])?;
            Ok((f, old_len.max(len as u64), false))
        }
        Err(e) => Err(e),
    }
}

/// Cuts the zeros of a pre-sized batch file of length `len` after its `bytes` of
/// records (not fsynced: a file that comes back longer after a power cut is read up to
/// its records, and the open cuts it again); returns the bytes cut.
pub(super) fn trim(file: &File, bytes: u64, len: u64) -> io::Result<u64> {
    if len <= bytes {
        return Ok(0);
    }
    file.set_len(bytes)?;
    Ok(len - bytes)
}

/// Appends a segment to a batch file written earlier (its handle is positioned at the
/// end; the caller fsyncs it, see `commit`).
pub(super) fn append(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)
}

/// Makes new directory entries durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a batch file (the replicator reads through `pool::ReadPool`).
pub(super) fn read(dir: &Path, key: u64) -> io::Result<Vec<u8>> {
    fs::read(path(dir, key))
}

/// Removes a drained batch file whose deletion is durable in sled, recycling it as a
/// spare when the pool has room (already gone is fine); returns the bytes it held.
pub(super) fn retire(dir: &Path, key: u64, spares: &Spares) -> io::Result<u64> {
    note(dir, Step::Unlinked(key));
    let p = path(dir, key);
    let bytes = match p.metadata() {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if spares.recycle(&p, bytes) {
        return Ok(bytes);
    }
    unlink(&p, bytes)
}

/// Removes a batch file (already gone is fine); returns the bytes it held.
pub(super) fn remove(dir: &Path, key: u64) -> io::Result<u64> {
    note(dir, Step::Unlinked(key));
    let p = path(dir, key);
    let bytes = p.metadata().map_or(0, |m| m.len());
    unlink(&p, bytes)
}

/// Unlinks the file at `p` that held `bytes`; returns them (0 if it was already gone).
fn unlink(p: &Path, bytes: u64) -> io::Result<u64> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        Err(_) => Ok(0),
        Ok(()) => Ok(bytes),
    }
}

/// Keys of every batch file in `dir`.
pub(super) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".batch")) else {
            continue;
        };
        if let Ok(k) = stem.parse() {
            out.push(k);
        }
    }
    Ok(out)
}

/// The sled index entry of one batch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Index {
    pub(super) bytes: u64,
    pub(super) count: u32,
    pub(super) priority: u8,
    pub(super) first_recv_ms: i64,
    pub(super) last_seq: u64,
}

impl Index {
    /// Its length in the fixed format (sled values before session 20; `index.rs` writes
    /// a compact one).
    pub(super) const LEN: usize = 29;

    /// The fixed format (tests write old values with it).
    #[cfg(test)]
    pub(super) fn encode(&self) -> [u8; Self::LEN] {
        let mut v = [0; Self::LEN];
        v[..8].copy_from_slice(&self.bytes.to_be_bytes());
        v[8..12].copy_from_slice(&self.count.to_be_bytes());
        v[12] = self.priority;
        v[13..21].copy_from_slice(&self.first_recv_ms.to_be_bytes());
        v[21..29].copy_from_slice(&self.last_seq.to_be_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> Option<Index> {
        if v.len() != Self::LEN {
            return None;
        }
        Some(Index {
            bytes: u64::from_be_bytes(v[..8].try_into().ok()?),
            count: u32::from_be_bytes(v[8..12].try_into().ok()?),
            priority: v[12],
            first_recv_ms: i64::from_be_bytes(v[13..21].try_into().ok()?),
            last_seq: u64::from_be_bytes(v[21..29].try_into().ok()?),
        })
    }
}

/// The index entry of a batch file rebuilt from the file itself (its entry is missing:
/// committed after sled's last flush; or shorter than the file: appended to after it):
/// its intact prefix ([`super::record::intact_prefix`]), or `None` if the file is gone,
/// holds no record or does not start with the record `key`. What follows the prefix (a
/// torn append whose commit never completed, never acknowledged; the zeros of a
/// pre-sized file; a recycled file's old records) is cut off the file and the cut
/// fsynced, so later appends and reads never meet it (a cut that fails is logged: reads
/// stop at the prefix anyway, and the next open cuts again). An error reading the file
/// is returned, not taken for damage ([`set_aside`]).
pub(super) fn recover(dir: &Path, key: u64) -> io::Result<Option<Index>> {
    let bytes = match read(dir, key) {
        Ok(v) => bytes::Bytes::from(v),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = bytes.len() as u64;
    let prefix = super::record::intact_prefix(bytes.clone());
    let Some((first_seq, priority, first_recv_ms)) = prefix.first else {
        return Ok(None);
    };
    if first_seq != key {
        return Ok(None);
    }
    if (prefix.len as u64) < len {
        // Not damage: the unused part of a pre-sized file (zeros) or of a recycled one
        // (an older batch's records, whose sequences cannot continue this file's), or an
        // append whose fsync never returned (never acknowledged).
        tracing::debug!(
            batch = key,
            cut = len - prefix.len as u64,
            "bytes after the last whole segment of a buffer batch file cut off"
        );
        let cut = fs::OpenOptions::new()
            .write(true)
            .open(path(dir, key))
            .and_then(|f| {
                f.set_len(prefix.len as u64)?;
                f.sync_data()
            });
        if let Err(e) = cut {
            tracing::warn!(batch = key, cause = %e, "cutting a buffer batch file's tail failed");
        }
    }
    Ok(Some(Index {
        bytes: prefix.len as u64,
        count: prefix.count,
        priority,
        first_recv_ms,
        last_seq: prefix.last_seq,
    }))
}

/// Where [`set_aside`] moves batch files the open cannot read: `unreadable/` beside the
/// `batches/` directory.
pub(super) const UNREADABLE: &str = "unreadable";

/// Moves batch file `key`, which the open could not read (`cause`: an I/O error, or not
/// a regular file), out of `dir` into [`UNREADABLE`], so the edge starts without it
/// instead of deleting what may be a read error of the moment; an operator can look at
/// it there. If the move fails too, the file is removed as damage. Either way its records
/// are skipped (the caller counts them as corrupt).
pub(super) fn set_aside(dir: &Path, key: u64, cause: &io::Error) -> io::Result<()> {
    let to = dir.parent().unwrap_or(dir).join(UNREADABLE);
    let moved = fs::create_dir_all(&to)
        .and_then(|()| fs::rename(path(dir, key), to.join(format!("{key:020}.batch"))))
        .and_then(|()| sync_dir(dir));
    match moved {
        Ok(()) => {
            tracing::error!(
                batch = key,
                cause = %cause,
                moved_to = %to.display(),
                "unreadable buffer batch file set aside, its records skipped"
            );
            Ok(())
        }
        Err(e) => {
            tracing::error!(
                batch = key,
                cause = %cause,
                move_failed = %e,
                "unreadable buffer batch file removed, its records skipped"
            );
            remove(dir, key).map(|_| ())
        }
    }
}
