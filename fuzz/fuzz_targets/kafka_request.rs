//! Fuzzes the cloud's Kafka request decoder: frame length checks, the request preamble,
//! header and body decoding for every API and version. It must never panic or allocate
//! unboundedly, whatever the bytes. The codec is included by path: it depends only on
//! `bytes`, `kafka-protocol` and `thiserror`, so the fuzz build does not compile RocksDB.
#![no_main]

#[path = "../../cloud/src/wire/mod.rs"]
#[allow(dead_code, unreachable_pub)]
mod wire;

#[path = "../../cloud/src/alloc.rs"]
#[allow(dead_code, unreachable_pub)]
mod alloc;

// The broker's allocator: a lying array count reserves address space instead of aborting
// (see cloud/src/alloc.rs), so the fuzzer looks for real bugs rather than that one.
#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::frame_len(data, 1 << 20);
    let _ = wire::decode_request(Bytes::copy_from_slice(data), |_, _| true);
    if data.len() > 4 {
        // Also as a frame body behind a valid prefix, the way the connection sees it.
        if let Ok(Some(n)) = wire::frame_len(data, 1 << 20) {
            let _ = wire::decode_request(Bytes::copy_from_slice(&data[4..n]), |_, _| true);
        }
    }
});
