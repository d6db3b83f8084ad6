//! sled's files damaged beyond what sled recovers: set aside, the index rebuilt.
//!
//! sled 0.34 writes a snapshot (`snap.<lsn>`) when it opens and trusts it at the next
//! open: if bytes of its log (`db`) that the snapshot points at were overwritten, cut or
//! lost (a damaged SD card, a copy gone wrong), `sled::Config::open` returns
//! `Corruption` at every attempt (measured: up to 512 random bytes written into `db`,
//! half the time within its first 64 bytes, failed 153 of 300 opens of a 20-record
//! buffer). A garbled snapshot, or `db` deleted with the snapshot left, does the same.
//! An edge that exits on that
//! would crash-loop on its own buffer. The batch files hold every record and are
//! self-describing, so [`set_aside`] moves sled's files into `<dir>/damaged-index/`
//! (replacing an older copy: one is kept for a post-mortem) and the open starts a fresh
//! sled, which re-indexes every batch file as it does for files committed after sled's
//! last flush (`recover.rs`).
//!
//! What sled's files also held is lost: the uplink state (producer id and sequences,
//! acknowledgement marks, in-flight descriptors, a live-first boundary). So records the
//! cloud had acknowledged that the edge had not deleted yet, and records in flight, are
//! sent again under a new producer id: the cloud may receive those twice.
//!
//! A damaged `conf` file alone (sled then refuses the database as `Unsupported`: not
//! UTF-8, or another version or segment size) costs nothing: it is set aside and sled
//! writes a new one from the edge's fixed settings; only if the open still fails are
//! the other files set aside.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{files, Error};

/// Where sled's damaged files go, inside the buffer's directory.
pub(super) const DIR: &str = "damaged-index";

/// Whether `e`, met while opening, says sled's stored data is damaged (not a failing
/// disk, a full one or a lock held by another edge: those are reported, not repaired).
pub(super) fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::Backend(
            sled::Error::Corruption { .. }
                | sled::Error::ReportableBug(_)
                | sled::Error::Unsupported(_)
        ) | Error::Corrupt(_)
    )
}

/// Whether `e` is sled refusing its `conf` file (not UTF-8, or another version or
/// segment size than the edge's fixed settings: only damage makes it differ). sled
/// writes a new one from the edge's settings when it is missing, so the log and the
/// index survive: [`set_aside_conf`] and open again.
pub(super) fn is_bad_conf(e: &Error) -> bool {
    matches!(e, Error::Backend(sled::Error::Unsupported(_)))
}

/// Moves sled's `conf` file of `dir` into `dir/`[`DIR`]; fsyncs `dir`.
pub(super) fn set_aside_conf(dir: &Path) -> io::Result<PathBuf> {
    let to = dir.join(DIR);
    fs::create_dir_all(&to)?;
    fs::rename(dir.join("conf"), to.join("conf"))?;
    files::sync_dir(&to)?;
    files::sync_dir(dir)?;
    Ok(to)
}

/// Moves everything in `dir` except the batch directory `keep` (and [`DIR`]) into
/// `dir/`[`DIR`], after deleting what an earlier call left there; fsyncs `dir`.
pub(super) fn set_aside(dir: &Path, keep: &str) -> io::Result<PathBuf> {
    let to = dir.join(DIR);
    match fs::remove_dir_all(&to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::create_dir(&to)?;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name != keep && name != DIR {
            fs::rename(dir.join(&name), to.join(&name))?;
        }
    }
    files::sync_dir(&to)?;
    files::sync_dir(dir)?;
    Ok(to)
}
