//! A raw MQTT 3.1.1 client on rumqttc's codec, for the benchmarks (no client library
//! overhead between the load generator and the broker).

use anyhow::{bail, Result};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw MQTT 3.1.1 connection.
pub struct Conn {
    pub s: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
}

impl Conn {
    pub async fn connect(addr: &str, id: &str) -> Result<Conn> {
        Self::connect_with(addr, Self::connect_packet(id)).await
    }

    /// The CONNECT that [`Conn::connect`] sends: clean session, keep alive 60 s.
    pub fn connect_packet(id: &str) -> Connect {
        let mut connect = Connect::new(id);
        // rumqttd refuses keep alive 0 (the spec allows it).
        connect.keep_alive = 60;
        connect.clean_session = true;
        connect
    }

    /// Connects with `connect`; returns once the CONNACK arrived.
    pub async fn connect_with(addr: &str, connect: Connect) -> Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut c = Conn {
            s,
            rbuf: BytesMut::with_capacity(64 << 10),
            wbuf: BytesMut::new(),
        };
        Packet::Connect(connect).write(&mut c.wbuf, usize::MAX)?;
        c.flush().await?;
        match c.next().await? {
            Packet::ConnAck(_) => Ok(c),
            p => bail!("expected CONNACK, got {p:?}"),
        }
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.s.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    pub async fn next(&mut self) -> Result<Packet> {
        loop {
            match Packet::read(&mut self.rbuf, usize::MAX) {
                Ok(p) => return Ok(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => bail!("decode: {e}"),
            }
            if self.s.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed");
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        let mut s = Subscribe::new(filter, qos);
        s.pkid = 1;
        Packet::Subscribe(s).write(&mut self.wbuf, usize::MAX)?;
        self.flush().await?;
        loop {
            if let Packet::SubAck(_) = self.next().await? {
                return Ok(());
            }
        }
    }

    pub fn publish(&mut self, topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Result<()> {
        self.publish_retain(topic, qos, pkid, payload, false)
    }

    /// [`Conn::publish`] with the RETAIN flag as given.
    pub fn publish_retain(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
        retain: bool,
    ) -> Result<()> {
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
        p.retain = retain;
        Packet::Publish(p).write(&mut self.wbuf, usize::MAX)?;
        Ok(())
    }
}
