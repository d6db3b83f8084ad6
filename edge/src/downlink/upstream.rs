//! The downlink's MQTT 5 connection to its broker: CONNECT with a persistent session,
//! SUBSCRIBE, the packets that arrive and the acknowledgements that go back, keep alive.
//! Framing is rumqttc's v5 codec; no local broker and no retry policy in here.

use std::time::Duration;

use bytes::BytesMut;
use common::net::Stream;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Filter, Login,
    Packet, PingReq, RetainForwardRule, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a downlink connection ended (or never started).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP or TLS failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The broker refused the CONNECT.
    #[error("broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// The broker refused every filter.
    #[error("broker refused every subscription: {0:?}")]
    Unsubscribed(Vec<SubscribeReasonCode>),
    /// Bytes that are not the MQTT 5 the downlink expects.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker closed the connection.
    #[error("broker closed the connection")]
    Closed,
    /// The broker sent DISCONNECT.
    #[error("broker disconnected: {0:?}")]
    Disconnected(DisconnectReasonCode),
    /// Nothing came back within the keep alive (half-open connection).
    #[error("no answer from the broker within {0:?} (keep alive)")]
    Silent(Duration),
    /// A connection attempt took longer than `downlink.connect_timeout_ms`.
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
    /// The local broker took no more messages.
    #[error("local broker: {0}")]
    Local(String),
    /// `downlink.tls` files could not be loaded.
    #[error("{key}: {reason}")]
    Config {
        /// The config key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// What the downlink asks of its broker in CONNECT (no `Debug`: it holds the password).
#[derive(Clone)]
pub struct Hello {
    /// Client id of the persistent session.
    pub client_id: String,
    /// Session expiry interval (seconds).
    pub session_expiry_secs: u32,
    /// Keep alive (seconds).
    pub keep_alive_secs: u16,
    /// Largest packet the broker may send (larger ones it must drop, MQTT 5 3.1.2.11.4).
    pub max_packet_bytes: u32,
    /// User name and password.
    pub login: Option<(String, String)>,
}

/// Publishes the broker may send before it has acknowledged ours (flow control): the
/// downlink acknowledges each as soon as the local broker has it.
const RECEIVE_MAXIMUM: u16 = 100;

/// One connection to the downlink broker.
pub struct Upstream {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_packet_bytes: u32,
}

impl Upstream {
    /// Sends CONNECT over `stream` and waits for the CONNACK; returns the connection and
    /// the CONNACK (whether the broker still had the session, its keep alive).
    pub async fn connect(stream: Box<dyn Stream>, hello: &Hello) -> Result<(Self, ConnAck), Error> {
        let mut up = Upstream {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::new(),
            max_packet_bytes: hello.max_packet_bytes,
        };
        let props = ConnectProperties {
            session_expiry_interval: Some(hello.session_expiry_secs),
            receive_maximum: Some(RECEIVE_MAXIMUM),
            max_packet_size: Some(hello.max_packet_bytes),
            ..ConnectProperties::new()
        };
        let connect = Connect {
            keep_alive: hello.keep_alive_secs,
            client_id: hello.client_id.clone(),
            clean_start: false,
            properties: Some(props),
        };
        let login = hello.login.as_ref().map(|(u, p)| Login::new(u, p));
        up.send(Packet::Connect(connect, None, login)).await?;
        match up.next().await? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok((up, ack)),
            Packet::ConnAck(ack) => Err(Error::Refused(ack.code)),
            p => Err(Error::Protocol(format!("expected CONNACK, got {p:?}"))),
        }
    }

    /// Sends one SUBSCRIBE (packet id 1) for every filter at QoS 1, retain as published,
    /// retained messages only for a new subscription. The SUBACK comes through
    /// [`Upstream::next`], maybe after publishes the session had queued.
    pub async fn subscribe(&mut self, filters: &[String]) -> Result<(), Error> {
        let filters = filters.iter().map(|f| Filter {
            path: f.clone(),
            qos: QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: true,
            retain_forward_rule: RetainForwardRule::OnNewSubscribe,
        });
        let mut s = Subscribe::new_many(filters, None);
        s.pkid = 1;
        self.send(Packet::Subscribe(s)).await
    }

    /// Writes a packet.
    pub async fn send(&mut self, p: Packet) -> Result<(), Error> {
        p.write(&mut self.wbuf, None)
            .map_err(|e| Error::Protocol(format!("encoding {e:?}")))?;
        self.stream.write_all_buf(&mut self.wbuf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends PINGREQ.
    pub async fn ping(&mut self) -> Result<(), Error> {
        self.send(Packet::PingReq(PingReq)).await
    }

    /// The next packet from the broker. Cancel safe: bytes read stay buffered.
    pub async fn next(&mut self) -> Result<Packet, Error> {
        loop {
            // The broker's bytes are input: a decoder panic (rumqttd's v5 decoder had
            // one, `crate::client_packets`) ends this connection, not the downlink.
            let (rbuf, max) = (&mut self.rbuf, Some(self.max_packet_bytes));
            let read =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Packet::read(rbuf, max)))
                    .map_err(|_| Error::Protocol("the MQTT decoder panicked".into()))?;
            match read {
                Ok(p) => return Ok(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(Error::Protocol(format!("{e:?}"))),
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(Error::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::v5::{ConnAck, Publish};
    use tokio::io::duplex;

    use super::*;

    fn hello() -> Hello {
        Hello {
            client_id: "gw-downlink".into(),
            session_expiry_secs: 3600,
            keep_alive_secs: 30,
            max_packet_bytes: 1 << 16,
            login: Some(("gw".into(), "pw".into())),
        }
    }

    /// Reads one packet the downlink sent.
    async fn read_packet(s: &mut tokio::io::DuplexStream, buf: &mut BytesMut) -> Packet {
        loop {
            if let Ok(p) = Packet::read(buf, None) {
                return p;
            }
            assert!(s.read_buf(buf).await.unwrap() > 0, "downlink closed");
        }
    }

    async fn write_packet(s: &mut tokio::io::DuplexStream, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, None).unwrap();
        s.write_all(&out).await.unwrap();
    }

    fn connack(code: ConnectReturnCode) -> Packet {
        Packet::ConnAck(ConnAck {
            session_present: true,
            code,
            properties: None,
        })
    }

    #[tokio::test]
    async fn connect_asks_for_a_persistent_session_and_reads_publishes() {
        let (ours, mut broker) = duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let Packet::Connect(c, None, Some(login)) = read_packet(&mut broker, &mut buf).await
            else {
                panic!("no CONNECT with a login");
            };
            assert!(!c.clean_start);
            let props = c.properties.unwrap();
            assert_eq!(props.session_expiry_interval, Some(3600));
            assert_eq!(props.max_packet_size, Some(1 << 16));
            assert_eq!(
                (login.username.as_str(), login.password.as_str()),
                ("gw", "pw")
            );
            write_packet(&mut broker, connack(ConnectReturnCode::Success)).await;
            let Packet::Subscribe(s) = read_packet(&mut broker, &mut buf).await else {
                panic!("no SUBSCRIBE");
            };
            assert_eq!(s.filters.len(), 2);
            assert!(s
                .filters
                .iter()
                .all(|f| f.qos == QoS::AtLeastOnce && f.preserve_retain));
            let mut p = Publish::new("cmd/a", QoS::AtLeastOnce, "go", None);
            p.pkid = 9;
            write_packet(&mut broker, Packet::Publish(p)).await;
            // Then a packet of the reserved type 0.
            broker.write_all(&[0x00, 0x00]).await.unwrap();
            broker
        });
        let (mut up, ack) = Upstream::connect(Box::new(ours), &hello()).await.unwrap();
        assert!(ack.session_present);
        up.subscribe(&["cmd/#".into(), "cfg/#".into()])
            .await
            .unwrap();
        match up.next().await.unwrap() {
            Packet::Publish(p) => assert_eq!((&p.topic[..], p.pkid), (&b"cmd/a"[..], 9)),
            p => panic!("{p:?}"),
        }
        let _broker = server.await.unwrap();
        assert!(matches!(up.next().await, Err(Error::Protocol(_))));
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        let (ours, mut broker) = duplex(1 << 16);
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            read_packet(&mut broker, &mut buf).await;
            write_packet(&mut broker, connack(ConnectReturnCode::BadUserNamePassword)).await;
            broker
        });
        match Upstream::connect(Box::new(ours), &hello()).await {
            Err(Error::Refused(ConnectReturnCode::BadUserNamePassword)) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
