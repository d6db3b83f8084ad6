//! The downlink: messages from the cloud to the gateway's own MQTT clients (commands,
//! configuration, model updates), the uplink's opposite direction (design brief,
//! section 2). Off unless `downlink.broker` is set.
//!
//! The edge keeps one MQTT 5 session at `downlink.broker` (the cloud's MQTT listener, or
//! any MQTT 5 broker, as a Mosquitto bridge would) and republishes what arrives on
//! `downlink.filters` to the embedded broker through a local link, where the gateway's
//! subscribers (MQTT 3.1.1 and 5) receive it like any local publish. Nothing republished
//! goes up again: a local link bypasses the ingest codec ([`crate::ingest`]), which is
//! where the uplink takes its records.
//!
//! # Delivery, in order
//!
//! 1. Connect (TCP, TLS with `downlink.tls`, files read again at every attempt), CONNECT
//!    with clean start off and a session expiry of `downlink.session_expiry_secs`: the
//!    broker keeps the subscription and everything that matches it while the edge is
//!    away or cut off (on the cloud that queue is a position in the log, not a copy).
//! 2. SUBSCRIBE every filter at QoS 1, retain as published, retained messages only for a
//!    subscription the session did not have yet, on every connect (so filters added to
//!    the config take effect; a removed one stays in the broker's session until it
//!    expires). Publishes the session had queued may arrive before the SUBACK.
//! 3. A PUBLISH whose user property `edge.id` is this edge's id is one the edge sent up
//!    itself (its uplink, through the cloud's one log: the cloud turns record headers
//!    into user properties): acknowledged and dropped, counted in
//!    `edge_downlink_looped_total`, because the gateway's subscribers had it already.
//! 4. Anything else is handed to the embedded broker's router (topic, payload, retain
//!    flag, MQTT 5 properties but subscription identifiers) and acknowledged only then,
//!    so what the broker sent while the edge was down, or what was in flight when the
//!    edge died or the link dropped, comes again: at least once. Local subscribers
//!    receive it at their subscription's QoS.
//! 5. Keep alive: a PINGREQ when nothing was sent for half the keep alive; a connection
//!    from which nothing arrives for one and a half keep alives is dropped. Then
//!    reconnect with exponential backoff and full jitter (`downlink.backoff_*`).
//!
//! Why no copy in the edge's own buffer: the embedded broker keeps messages in memory
//! only (design brief, section 6), so a copy on the edge's flash would not survive
//! anything the broker's session does not already cover.

pub mod upstream;

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubComp, PubRec, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttd::local::{LinkRx, LinkTx};

use crate::backoff::Backoff;
use crate::config::DownlinkConfig;
use crate::metrics::Metrics;
use upstream::{Error, Hello, Upstream};

/// Client id of the local link the downlink publishes through (rumqttd refuses ids with
/// `+ $ # /`, so it cannot be marked as internal; a device connecting with it would
/// replace the link and stop the downlink's local deliveries).
pub const LOCAL_CLIENT_ID: &str = "edge-downlink-local-link";

/// Room for the topic and properties beside the largest local payload.
const PACKET_OVERHEAD: u32 = 64 << 10;

/// The downlink task: one session at a time, backoff between them.
pub struct Downlink {
    cfg: DownlinkConfig,
    edge_id: String,
    hello: Hello,
    local: LinkTx,
    /// Kept open: the router would drop the link with it.
    _local_rx: LinkRx,
    metrics: std::sync::Arc<Metrics>,
    backoff: Backoff,
}

impl Downlink {
    /// A downlink for `cfg` publishing through the local link `local`; `max_payload` is
    /// the local listeners' `mqtt.max_payload_bytes` (larger messages are not accepted
    /// from the broker).
    pub fn new(
        cfg: DownlinkConfig,
        edge_id: &str,
        max_payload: usize,
        (local, local_rx): (LinkTx, LinkRx),
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        let client_id = if cfg.client_id.is_empty() {
            format!("{edge_id}-downlink")
        } else {
            cfg.client_id.clone()
        };
        let hello = Hello {
            client_id,
            session_expiry_secs: cfg.session_expiry_secs,
            keep_alive_secs: cfg.keep_alive_secs,
            max_packet_bytes: u32::try_from(max_payload)
                .unwrap_or(u32::MAX)
                .saturating_add(PACKET_OVERHEAD),
            login: cfg
                .credentials
                .as_ref()
                .map(|c| (c.username.clone(), c.password.clone())),
        };
        let backoff = Backoff::new(cfg.backoff_initial_ms, cfg.backoff_max_ms);
        Downlink {
            cfg,
            edge_id: edge_id.to_owned(),
            hello,
            local,
            _local_rx: local_rx,
            metrics,
            backoff,
        }
    }

    /// Runs forever: sessions, with backoff after each.
    pub async fn run(mut self) {
        loop {
            let (err, subscribed) = self.session().await;
            self.metrics.downlink_up.set(0);
            if subscribed {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            tracing::warn!(broker = %self.cfg.broker, cause = %err, retry_ms = delay.as_millis() as u64, "downlink session ended");
            self.metrics.downlink_reconnects.inc();
            tokio::time::sleep(delay).await;
        }
    }

    /// One session; returns why it ended and whether it got as far as its SUBACK.
    async fn session(&mut self) -> (Error, bool) {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let up = match tokio::time::timeout(timeout, self.connect()).await {
            Ok(Ok(up)) => up,
            Ok(Err(e)) => return (e, false),
            Err(_) => return (Error::Timeout(timeout), false),
        };
        let (mut up, keep_alive, session_present) = up;
        if let Err(e) = up.subscribe(&self.cfg.filters).await {
            return (e, false);
        }
        let mut subscribed = false;
        let suback_due = tokio::time::Instant::now() + timeout;
        let mut last_sent = Instant::now();
        let mut last_heard = Instant::now();
        let mut tick = tokio::time::interval((keep_alive / 2).max(Duration::from_millis(500)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let packet = tokio::select! {
                p = up.next() => p,
                _ = tick.tick() => {
                    if last_heard.elapsed() > keep_alive + keep_alive / 2 {
                        return (Error::Silent(last_heard.elapsed()), subscribed);
                    }
                    if !subscribed && tokio::time::Instant::now() > suback_due {
                        return (Error::Timeout(timeout), false);
                    }
                    if last_sent.elapsed() >= keep_alive / 2 {
                        if let Err(e) = up.ping().await {
                            return (e, subscribed);
                        }
                        last_sent = Instant::now();
                    }
                    continue;
                }
            };
            let packet = match packet {
                Ok(p) => p,
                Err(e) => return (e, subscribed),
            };
            last_heard = Instant::now();
            let reply = match packet {
                Packet::Publish(p) => match self.deliver(p) {
                    Ok(reply) => reply,
                    Err(e) => return (e, subscribed),
                },
                Packet::PubRel(r) => Some(Packet::PubComp(PubComp::new(r.pkid, None))),
                Packet::SubAck(ack) if !subscribed => {
                    let refused: Vec<_> = self
                        .cfg
                        .filters
                        .iter()
                        .zip(&ack.return_codes)
                        .filter(|(_, c)| !matches!(c, SubscribeReasonCode::Success(_)))
                        .collect();
                    for (filter, code) in &refused {
                        tracing::error!(filter, reason = ?code, "downlink subscription refused");
                    }
                    if refused.len() == self.cfg.filters.len() {
                        return (Error::Unsubscribed(ack.return_codes), false);
                    }
                    subscribed = true;
                    self.metrics.downlink_up.set(1);
                    tracing::info!(
                        broker = %self.cfg.broker,
                        client_id = %self.hello.client_id,
                        session_present,
                        filters = ?self.cfg.filters,
                        "downlink subscribed"
                    );
                    None
                }
                Packet::PingResp(_) | Packet::SubAck(_) => None,
                Packet::Disconnect(d) => return (Error::Disconnected(d.reason_code), subscribed),
                p => {
                    return (
                        Error::Protocol(format!("unexpected packet {p:?}")),
                        subscribed,
                    )
                }
            };
            if let Some(reply) = reply {
                if let Err(e) = up.send(reply).await {
                    return (e, subscribed);
                }
                last_sent = Instant::now();
            }
        }
    }

    /// TCP (and TLS), CONNECT, CONNACK: the connection, the keep alive to keep (the
    /// broker's if it set one) and whether the broker still had the session.
    async fn connect(&mut self) -> Result<(Upstream, Duration, bool), Error> {
        let tls = self
            .cfg
            .tls_connector()
            .map_err(|(key, reason)| Error::Config { key, reason })?;
        let tcp = tokio::net::TcpStream::connect(&self.cfg.broker).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn common::net::Stream> = match tls {
            None => Box::new(tcp),
            Some(tls) => {
                let host = common::net::host_of(&self.cfg.broker);
                Box::new(tls.connect(host, tcp).await?)
            }
        };
        let (up, ack) = Upstream::connect(stream, &self.hello).await?;
        let secs = ack
            .properties
            .as_ref()
            .and_then(|p| p.server_keep_alive)
            .unwrap_or(self.hello.keep_alive_secs)
            .max(1);
        Ok((
            up,
            Duration::from_secs(u64::from(secs)),
            ack.session_present,
        ))
    }

    /// Steps 3 and 4 for one PUBLISH: the acknowledgement to send back, if its QoS has one.
    fn deliver(&mut self, p: Publish) -> Result<Option<Packet>, Error> {
        let looped = p.properties.as_ref().is_some_and(|props| {
            props
                .user_properties
                .iter()
                .any(|(k, v)| k == common::headers::EDGE_ID && *v == self.edge_id)
        });
        if looped {
            self.metrics.downlink_looped.inc();
        } else {
            self.publish_local(&p)?;
            self.metrics.downlink_messages.inc();
        }
        Ok(match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid, None))),
            QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(p.pkid, None))),
        })
    }

    /// Hands a publish to the embedded broker's router.
    fn publish_local(&mut self, p: &Publish) -> Result<(), Error> {
        let publish = rumqttd::protocol::Publish::new(p.topic.clone(), p.payload.clone(), p.retain);
        let props = p
            .properties
            .as_ref()
            .map(|q| rumqttd::protocol::PublishProperties {
                payload_format_indicator: q.payload_format_indicator,
                message_expiry_interval: q.message_expiry_interval,
                topic_alias: None,
                response_topic: q.response_topic.clone(),
                correlation_data: q.correlation_data.clone(),
                user_properties: q.user_properties.clone(),
                subscription_identifiers: Vec::new(),
                content_type: q.content_type.clone(),
            });
        let packet = rumqttd::protocol::Packet::Publish(publish, props);
        // `LinkTx::send` waits (without yielding) while the router's queue is full.
        let local = &mut self.local;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(local.send(packet))
                .map(|_| ())
                .map_err(|e| Error::Local(e.to_string()))
        })
    }
}
