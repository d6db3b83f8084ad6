//! Splitting an object's bytes into records (bytes only, no I/O).
//!
//! - `object`: the whole object is one record.
//! - `line`: one record per line, without its `\n` (and one `\r` before it). A last line
//!   without a newline is a record; nothing follows a final `\n`. Empty lines inside are
//!   records with an empty value.
//! - `tar`: one record per regular file of an uncompressed tar archive (ustar, GNU long
//!   names, pax paths), keyed by the member's path. Directories, links and other members
//!   are skipped.
//! - segment (not a topic config: a tiered topic's uploaded segments, `crate::tier`): the
//!   stored record batches one after another, each a record of the split (its bytes
//!   whole, framed by its own `batchLength`).

use std::io::Cursor;
use std::ops::Range;

/// How an object becomes records (topic config `source.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Object,
    Line,
    Tar,
    Segment,
}

impl Format {
    pub fn parse(v: &str) -> Result<Format, &'static str> {
        match v {
            "object" => Ok(Format::Object),
            "line" => Ok(Format::Line),
            "tar" => Ok(Format::Tar),
            // `segment` is internal (tiered topics), not a `source.format`.
            _ => Err("one of object, line, tar"),
        }
    }
}

/// One record inside an object: its key (a tar member's path) and its value's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub key: Option<Box<[u8]>>,
    pub value: Range<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("object of {0} bytes is larger than 4 GiB")]
    TooLarge(usize),
    #[error("not a tar archive: {0}")]
    Tar(String),
    #[error("not a segment of record batches: {0}")]
    Segment(&'static str),
}

/// The records of `bytes` in order.
pub fn spans(format: Format, bytes: &[u8]) -> Result<Vec<Span>, Error> {
    if u32::try_from(bytes.len()).is_err() {
        return Err(Error::TooLarge(bytes.len()));
    }
    let len = bytes.len() as u32;
    match format {
        Format::Object => Ok(vec![Span {
            key: None,
            value: 0..len,
        }]),
        Format::Line => Ok(lines(bytes)),
        Format::Tar => tar_members(bytes),
        Format::Segment => batches(bytes),
    }
}

/// Offset of `batchLength` and `magic` in a v2 record batch, and its fixed header size.
const LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const BATCH_HEADER: usize = 61;

fn batches(bytes: &[u8]) -> Result<Vec<Span>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let len = bytes
            .get(at + LENGTH_AT..at + LENGTH_AT + 4)
            .ok_or(Error::Segment("truncated batch header"))?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(LENGTH_AT + 4))
            .filter(|t| *t >= BATCH_HEADER)
            .ok_or(Error::Segment("invalid batch length"))?;
        let end = at
            .checked_add(total)
            .filter(|e| *e <= bytes.len())
            .ok_or(Error::Segment("batch runs past the end"))?;
        if bytes[at + MAGIC_AT] != 2 {
            return Err(Error::Segment("not a v2 record batch"));
        }
        out.push(Span {
            key: None,
            value: at as u32..end as u32,
        });
        at = end;
    }
    Ok(out)
}

fn lines(bytes: &[u8]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for nl in memchr::memchr_iter(b'\n', bytes) {
        let end = if nl > start && bytes[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        out.push(Span {
            key: None,
            value: start as u32..end as u32,
        });
        start = nl + 1;
    }
    if start < bytes.len() {
        out.push(Span {
            key: None,
            value: start as u32..bytes.len() as u32,
        });
    }
    out
}

fn tar_members(bytes: &[u8]) -> Result<Vec<Span>, Error> {
    let bad = |e: std::io::Error| Error::Tar(e.to_string());
    let mut archive = tar::Archive::new(Cursor::new(bytes));
    let mut out = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let at = entry.raw_file_position();
        let size = entry.size();
        let end = at
            .checked_add(size)
            .filter(|e| *e <= bytes.len() as u64)
            .ok_or_else(|| Error::Tar("member data runs past the end".into()))?;
        out.push(Span {
            key: Some(entry.path_bytes().into_owned().into_boxed_slice()),
            value: at as u32..end as u32,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(bytes: &'a [u8], v: &[Span]) -> Vec<&'a [u8]> {
        v.iter()
            .map(|s| &bytes[s.value.start as usize..s.value.end as usize])
            .collect()
    }

    #[test]
    fn lines_follow_the_contract() {
        let b = b"a\n\nb\r\nlast";
        assert_eq!(
            values(b, &spans(Format::Line, b).unwrap()),
            vec![&b"a"[..], b"", b"b", b"last"]
        );
        let b = b"x\ny\n";
        assert_eq!(
            values(b, &spans(Format::Line, b).unwrap()),
            vec![b"x", b"y"]
        );
        assert!(spans(Format::Line, b"").unwrap().is_empty());
        let b = b"\r\n";
        assert_eq!(values(b, &spans(Format::Line, b).unwrap()), vec![b""]);
    }

    #[test]
    fn an_object_is_one_record() {
        let b = b"\x00\x01 whole";
        assert_eq!(values(b, &spans(Format::Object, b).unwrap()), vec![&b[..]]);
        assert_eq!(spans(Format::Object, b"").unwrap().len(), 1);
    }

    fn tar_of(files: &[(&str, &[u8])], with_dir: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        if with_dir {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, "imgs/", &[][..]).unwrap();
        }
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_files_become_records_keyed_by_path() {
        let long = format!("{}/deep.bin", "d".repeat(150));
        let files: Vec<(&str, &[u8])> = vec![
            ("imgs/001.jpg", b"one"),
            ("imgs/sub/002.jpg", b""),
            (long.as_str(), b"long name"),
            ("z", &[7u8; 1000]),
        ];
        let t = tar_of(&files, true);
        let s = spans(Format::Tar, &t).unwrap();
        assert_eq!(s.len(), 4, "the directory is skipped");
        for (span, (name, data)) in s.iter().zip(&files) {
            assert_eq!(span.key.as_deref(), Some(name.as_bytes()));
            assert_eq!(
                &t[span.value.start as usize..span.value.end as usize],
                *data
            );
        }
    }

    #[test]
    fn segments_split_into_their_batches() {
        let mut seg = Vec::new();
        let mut want = Vec::new();
        for n in [61usize, 100, 70] {
            let mut b = vec![0u8; n];
            b[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&((n - 12) as i32).to_be_bytes());
            b[MAGIC_AT] = 2;
            want.push(seg.len() as u32..(seg.len() + n) as u32);
            seg.extend_from_slice(&b);
        }
        let got: Vec<_> = spans(Format::Segment, &seg)
            .unwrap()
            .into_iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(got, want);
        assert!(spans(Format::Segment, &seg[..seg.len() - 1]).is_err());
        let mut bad = seg.clone();
        bad[MAGIC_AT] = 1;
        assert!(spans(Format::Segment, &bad).is_err());
        assert!(spans(Format::Segment, &[]).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_not_a_tar() {
        assert!(spans(Format::Tar, &[1u8; 1024]).is_err());
        // A truncated archive: the member's data is cut.
        let t = tar_of(&[("a", &[1u8; 2000])], false);
        assert!(spans(Format::Tar, &t[..1024]).is_err());
    }
}
