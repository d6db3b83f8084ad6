//! Fuzzes what the edge's downlink decodes from its broker: rumqttc's MQTT 5 decoder
//! (`Packet::read` with the downlink's maximum packet size, as `edge/src/downlink/upstream.rs`
//! calls it), over any bytes, every packet type, server-only ones included (CONNACK,
//! SUBACK, PINGRESP, ...). It must never panic: a broker's bytes would otherwise end the
//! downlink task.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttc::v5::mqttbytes::v5::Packet;

const MAX: u32 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut b = BytesMut::from(data);
    while let Ok(p) = Packet::read(&mut b, Some(MAX)) {
        let mut out = BytesMut::new();
        let _ = p.write(&mut out, None);
    }
});
