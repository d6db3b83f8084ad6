//! Fuzzes how the cloud reads a consumer group member's subscription (JoinGroup metadata,
//! client-supplied bytes) for shared groups: `subscribed_topics` must never panic or
//! allocate unboundedly. The module is included by path (it depends only on `bytes` and
//! `kafka-protocol`).
#![no_main]

#[path = "../../cloud/src/groups/consumer_protocol.rs"]
#[allow(dead_code, unreachable_pub)]
mod consumer_protocol;

#[path = "../../cloud/src/alloc.rs"]
#[allow(dead_code, unreachable_pub)]
mod alloc;

// The broker's allocator (see kafka_request.rs).
#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let topics = consumer_protocol::subscribed_topics(data);
    // What a shared group then assigns from it.
    let parts: Vec<(String, u32)> = topics.into_iter().map(|t| (t, 4)).collect();
    let _ = consumer_protocol::assignment(&parts);
});
