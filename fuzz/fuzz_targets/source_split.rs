//! Fuzzes how the cloud splits an S3 object into records (`source.format` line and tar):
//! object bytes come from whoever can write to the bucket. Splitting must never panic,
//! and every record's bytes must lie inside the object.
#![no_main]

#[path = "../../cloud/src/source/split.rs"]
#[allow(dead_code, unreachable_pub)]
mod split;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [
        split::Format::Line,
        split::Format::Tar,
        split::Format::Object,
        split::Format::Segment,
    ] {
        if let Ok(spans) = split::spans(format, data) {
            for s in spans {
                assert!(s.value.start <= s.value.end && s.value.end as usize <= data.len());
            }
        }
    }
});
