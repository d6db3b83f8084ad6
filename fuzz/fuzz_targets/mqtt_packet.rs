//! Fuzzes the cloud's MQTT packet decoder (3.1.1 and 5 over rumqttc's `mqttbytes`):
//! first-packet CONNECT detection, the size check before buffering, and every packet type
//! of both versions. It must never panic or allocate beyond the packet-size cap, whatever
//! the bytes. The codec is included by path: it depends only on `bytes`, `rumqttc` and
//! `thiserror`, so the fuzz build does not compile RocksDB.
#![no_main]

#[path = "../../cloud/src/mqtt/codec.rs"]
#[allow(dead_code, unreachable_pub)]
mod codec;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut b = BytesMut::from(data);
    if let Ok(Some((version, _))) = codec::decode_connect(&mut b, MAX) {
        // The rest of the stream as that version's packets.
        while let Ok(Some(p)) = codec::decode(&mut b, version, MAX) {
            let mut out = BytesMut::new();
            let _ = codec::encode(&p, version, &mut out);
        }
    }
    for version in [codec::Version::V4, codec::Version::V5] {
        let mut b = BytesMut::from(data);
        while let Ok(Some(p)) = codec::decode(&mut b, version, MAX) {
            let mut out = BytesMut::new();
            let _ = codec::encode(&p, version, &mut out);
        }
    }
});
