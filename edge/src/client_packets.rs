//! Which MQTT control packets a client may send to a server (no I/O; the edge's ingest
//! checks each frame with it before rumqttd's codec sees the frame).
//!
//! rumqttd 0.20's codecs panic (`unreachable!`) on some packet types only a server
//! sends: the v5 codec on CONNACK, UNSUBACK and AUTH, the v4 codec on AUTH (found by the
//! `edge_mqtt` fuzz target; a v5 client that sent `28 01 00 e3` made the connection's
//! task panic). MQTT makes any server-to-client packet from a client a protocol error
//! that closes the connection (3.1.1 section 4.8, 5.0 section 4.13), so the edge refuses
//! them all before decoding: CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH (rumqttd has no
//! enhanced authentication) and the reserved type 0.

/// Whether a frame starting with `first` (its fixed header's first byte) carries a
/// packet type a client may send.
pub fn from_client(first: u8) -> bool {
    matches!(first >> 4, 1 | 3..=8 | 10 | 12 | 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_to_server_types_pass() {
        let passed: Vec<u8> = (0u8..16).filter(|t| from_client(t << 4)).collect();
        // CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE,
        // PINGREQ, DISCONNECT.
        assert_eq!(passed, [1, 3, 4, 5, 6, 7, 8, 10, 12, 14]);
        // The flags (low nibble) do not matter here; rumqttd checks them.
        assert!(from_client(0x3d));
        assert!(!from_client(0x28));
    }
}
