//! Fuzzes the MQTT decoders the edge serves devices with: rumqttd's v4 (3.1.1) and v5
//! codecs (`rumqttd::protocol`), which `edge::ingest::Ingest` wraps and calls on every
//! byte a device sends. Whatever the bytes, decoding must return a packet, ask for more
//! bytes or refuse, never panic or allocate past the frame limit the edge configures
//! (`mqtt.max_payload_bytes`, 1 MiB by default); a refused or half frame must not be
//! consumed past its end. Decoding runs to the end of the input, as a connection does
//! with several frames in one read.
//!
//! Each frame first passes the edge's own check (`edge/src/client_packets.rs`, included
//! by path), as in `Ingest::read_mut`: rumqttd 0.20 panics on some packet types only a
//! server sends, which this target found and the edge now refuses before decoding.
#![no_main]

#[path = "../../edge/src/client_packets.rs"]
mod client_packets;

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::{v4::V4, v5::V5, Protocol};

const MAX: usize = 1 << 20;

fn decode_all(codec: &mut impl Protocol, data: &[u8]) {
    let mut stream = BytesMut::from(data);
    // Every decoded packet consumes at least its 2-byte fixed header.
    for _ in 0..=data.len() / 2 {
        if stream
            .first()
            .is_some_and(|&b| !client_packets::from_client(b))
        {
            return; // refused by the edge: the connection closes
        }
        let before = stream.remaining();
        match codec.read_mut(&mut stream, MAX) {
            Ok(_) => assert!(stream.remaining() < before, "a packet consumed nothing"),
            Err(_) => return,
        }
    }
    panic!("more packets than the input holds");
}

fuzz_target!(|data: &[u8]| {
    decode_all(&mut V4, data);
    decode_all(&mut V5, data);
});
