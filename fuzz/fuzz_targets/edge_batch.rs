//! Fuzzes the edge's batch-file codec (`edge/src/buffer/record.rs`): what the edge reads
//! back from its own files, which a damaged SD card or a power cut can leave as any bytes.
//! Decoding must never panic, and what it accepts is checked against an oracle:
//!
//! - the input as a batch file: its intact prefix (`intact_prefix`, what the open keeps)
//!   is within it and decodes to exactly its records, none corrupt;
//! - the input (after a shape byte) as 1-4 record bodies with valid lengths and CRCs
//!   (the CRC would otherwise stop almost every input before the body parser), in one or
//!   two segments: the file decodes to exactly the records the bodies decode to alone,
//!   each re-encodes to itself, the intact prefix is exactly the whole segments whose
//!   records all read with rising sequences, and a torn append after it (the input
//!   again) changes nothing before it.
//!
//! The codec is included by path: it depends only on `bytes`, `crc32fast` and
//! `thiserror`, so the fuzz build compiles neither sled nor rumqttd.
#![no_main]

#[path = "../../edge/src/buffer/record.rs"]
#[allow(dead_code, unreachable_pub)]
mod record;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Decodes `file` as a batch file; checks that its intact prefix decodes to exactly its
/// records, none corrupt. Returns the prefix's length.
fn check_file(file: &[u8]) -> usize {
    let _ = record::decode_batch(file);
    let bytes = Bytes::copy_from_slice(file);
    let prefix = record::intact_prefix(bytes.clone());
    assert!(prefix.len <= file.len());
    if prefix.len > 0 {
        let intact = record::decode_batch_bytes(bytes.slice(..prefix.len))
            .expect("an intact prefix starts with a segment header");
        assert_eq!(intact.corrupt, 0);
        assert_eq!(intact.records.len(), prefix.count as usize);
        assert_eq!(intact.records.last().map(|r| r.seq), Some(prefix.last_seq));
    }
    prefix.len
}

/// `bodies` as records with their length and CRC, in segments split at `splits`.
fn frame(bodies: &[&[u8]], splits: &[usize]) -> (Vec<u8>, Vec<usize>) {
    let mut file = Vec::new();
    let mut ends = Vec::new();
    let mut start = 0;
    for &end in splits.iter().chain(std::iter::once(&bodies.len())) {
        if end <= start {
            continue;
        }
        file.push(1u8);
        file.extend_from_slice(&((end - start) as u32).to_be_bytes());
        for body in &bodies[start..end] {
            file.extend_from_slice(&(body.len() as u32).to_be_bytes());
            file.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
            file.extend_from_slice(body);
        }
        ends.push(file.len());
        start = end;
    }
    (file, ends)
}

fuzz_target!(|data: &[u8]| {
    check_file(data);
    let Some((&shape, rest)) = data.split_first().filter(|(_, rest)| !rest.is_empty()) else {
        return;
    };

    // The rest as 1-4 record bodies with valid CRCs (the CRC would otherwise stop almost
    // every input before the body parser), in one or two segments.
    let n = 1 + usize::from(shape & 3);
    let size = rest.len().div_ceil(n).max(1);
    let bodies: Vec<&[u8]> = rest.chunks(size).collect();
    let split = usize::from(shape >> 2) % (bodies.len() + 1);
    let (file, ends) = frame(&bodies, &[split]);
    // Each body alone: a record, or skipped as corrupt.
    let records: Vec<Option<record::Record>> = bodies
        .iter()
        .map(|b| {
            let one =
                record::decode_batch(&frame(&[b], &[]).0).expect("a well-framed segment header");
            assert_eq!(one.records.len() + one.corrupt as usize, 1);
            one.records.into_iter().next()
        })
        .collect();
    for r in records.iter().flatten() {
        let again = record::decode_batch(&record::encode_batch(std::slice::from_ref(r)))
            .expect("an encoded batch decodes");
        assert_eq!(again.corrupt, 0);
        assert_eq!(again.records, vec![r.clone()]);
    }
    let decoded = record::decode_batch(&file).expect("a well-framed file");
    assert_eq!(
        decoded.records,
        records.iter().flatten().cloned().collect::<Vec<_>>()
    );
    // The intact prefix: whole segments while every record reads and sequences rise.
    let mut expected = 0;
    let mut last = None;
    let mut start = 0;
    'segments: for (seg, &end) in ends.iter().enumerate() {
        let count = if seg == 0 && ends.len() == 2 {
            split
        } else {
            bodies.len() - start
        };
        for r in &records[start..start + count] {
            match r {
                Some(r) if last.is_none_or(|l| r.seq > l) => last = Some(r.seq),
                _ => break 'segments,
            }
        }
        expected = end;
        start += count;
    }
    // A torn append after it changes nothing before it.
    let mut torn = file.clone();
    torn.extend_from_slice(data);
    assert_eq!(check_file(&file), expected);
    assert!(check_file(&torn) >= expected);
});
