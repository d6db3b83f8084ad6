//! One MQTT connection: owns the socket and buffers, reads packets, feeds the session
//! state machine, performs its actions (appends, subscriptions, closes) and delivers
//! from the log when an append wakes it. Nothing here decides protocol rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, field, info, info_span, warn, Instrument};

use super::actions::{flush_appends, perform, Pending};
use super::codec::{self, CodecError, Version};
use super::cursor::{Cursors, Start};
use super::hub::{Detached, Event, Hub};
use super::inbox::EventRx;
use super::records::{self, Message};
use super::session::{Action, ClientLimits, Session};
use super::share::Memberships;
use super::{topic, Error};
use crate::acl::Op;

/// How long a refused MQTT 5 connection drains input after its DISCONNECT.
const LINGER: Duration = Duration::from_millis(500);
/// On a clean stop, how long a connection (its session already stored) may take to send
/// what it has buffered and its DISCONNECT, and to see the client close.
const GOODBYE: Duration = Duration::from_secs(1);

/// Serves one accepted stream (plain TCP or TLS) until it closes.
/// `identity`: the user a verified client certificate names (`crate::identity`), which
/// then authenticates the client instead of `mqtt.credentials`.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    hub: Arc<Hub>,
    identity: Option<String>,
) {
    let span = info_span!("mqtt", %peer, client_id = field::Empty);
    let _live = hub.live();
    let _open = crate::metrics::Open::mqtt();
    async move {
        if let Err(e) = run(stream, hub, identity).await {
            debug!(cause = %e, "connection ended");
        }
    }
    .instrument(span)
    .await
}

/// Bytes a busy connection's reads have room for (the buffer grows further when a
/// packet needs it).
const READ_CHUNK: usize = 4096;

pub(super) struct Conn<S> {
    pub(super) stream: S,
    pub(super) hub: Arc<Hub>,
    pub(super) version: Version,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    pub(super) write_timeout: Duration,
    /// Share groups this connection is a member of.
    pub(super) shares: Memberships,
    /// The client id as the key of the records its publishes append.
    pub(super) key: Bytes,
    /// Raised on a clean stop: ends a wait for CONNECT, and a write the client does not
    /// take (the loop itself hears of the stop as [`Event::Stop`]).
    pub(super) stop: watch::Receiver<bool>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Gives the read and write buffers' memory back while they hold nothing: called
    /// when the connection goes idle (after the CONNACK, and when the keep-alive timer
    /// finds the client alive). The next read starts with a small buffer (tokio reserves
    /// 64 bytes) that grows with the traffic. An idle connection kept the 4 KiB it read
    /// its CONNECT into, and whatever a burst or a large delivery had grown the buffers to.
    /// (A drained `BytesMut` can report no capacity while it still holds its whole
    /// allocation, so an empty buffer is replaced whatever its capacity.)
    fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
    }

    /// Before a read: room for [`READ_CHUNK`] bytes, unless the read buffer was released
    /// (idle): then tokio reads into a 64-byte buffer, and the read after it gets the
    /// room. Without this, reads fill only the spare bytes at the buffer's end, which a
    /// leftover partial packet can shrink to a few bytes (and a released buffer never
    /// grows past 64: tokio reserves only once the buffer is full).
    fn make_read_room(&mut self) {
        let cap = self.rbuf.capacity();
        if cap > 0 && cap - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), Error> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        // `write_all_buf` consumes what it writes: if the stop interrupts it, `wbuf` holds
        // exactly what is left, which `goodbye` may still send.
        // The flush matters to streams that buffer (a WebSocket frame the socket did not
        // take at once); on a TCP stream it is a no-op.
        let (stream, wbuf) = (&mut self.stream, &mut self.wbuf);
        let write = tokio::time::timeout(self.write_timeout, async move {
            stream.write_all_buf(wbuf).await?;
            stream.flush().await
        });
        let written = tokio::select! {
            biased;
            w = write => w,
            _ = self.stop.wait_for(|s| *s) => return Err(Error::Stopping),
        };
        match written {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write stalled",
                )))
            }
        }
        self.wbuf.clear();
        Ok(())
    }

    /// On a clean stop, once the session is stored: sends what is still buffered and
    /// (MQTT 5) a DISCONNECT with Server shutting down, shuts the write side, and drains
    /// input until the client closes (so no unread bytes turn the close into a reset),
    /// all within [`GOODBYE`]. A client that does not read is simply dropped.
    async fn goodbye(&mut self) {
        if self.version == Version::V5 {
            let _ = self.send(&Packet::Disconnect(Disconnect {
                reason_code: DisconnectReasonCode::ServerShuttingDown,
                properties: None,
            }));
        }
        let bye = async {
            self.stream.write_all_buf(&mut self.wbuf).await?;
            self.stream.shutdown().await?;
            let mut sink = vec![0u8; 4096];
            while self.stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        if tokio::time::timeout(GOODBYE, bye).await.is_err() {
            debug!("client did not take the goodbye in time; closing");
        }
    }

    pub(super) fn send(&mut self, p: &Packet) -> Result<(), Error> {
        codec::encode(p, self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// Sends a DISCONNECT (MQTT 5 only) and flushes. Except on a takeover (the new
    /// connection waits for this one), the write side is then shut and unread input
    /// drained for a moment: closing with unread bytes makes the kernel send a reset,
    /// which can destroy the DISCONNECT before the client reads it.
    pub(super) async fn refuse(&mut self, reason: DisconnectReasonCode) -> Result<(), Error> {
        if self.version != Version::V5 {
            return self.flush().await;
        }
        self.send(&Packet::Disconnect(Disconnect {
            reason_code: reason,
            properties: None,
        }))?;
        self.flush().await?;
        if reason != DisconnectReasonCode::SessionTakenOver {
            let _ = self.stream.shutdown().await;
            let drain = async {
                // On the heap: an array here would add 4 KiB to the state of every
                // future that may refuse (the whole packet loop).
                let mut sink = vec![0u8; 4096];
                while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
        Ok(())
    }
}

fn assign_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "auto-{:x}-{:x}",
        records::now_ms(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    hub: Arc<Hub>,
    identity: Option<String>,
) -> Result<(), Error> {
    let mut c = Conn {
        stream,
        hub: hub.clone(),
        version: Version::V4,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        wbuf: BytesMut::new(),
        write_timeout: Duration::from_millis(hub.config.write_timeout_ms),
        shares: Memberships::default(),
        key: Bytes::new(),
        stop: hub.stop_signal(),
    };
    // 1-2. In a future of its own (boxed): the decoded CONNECT and the handshake's
    // temporaries are freed once it is done, instead of taking room in this future,
    // which lives as long as the connection (most of what an idle connection costs).
    let Some(opened) = Box::pin(handshake(&mut c, &hub, identity)).await? else {
        return Ok(());
    };
    let Opened {
        client_id,
        will,
        armed,
        mut session,
        mut cursors,
        mut events,
        conn_id,
        ka,
        mut persisted,
        greeted,
    } = opened;
    // 3. Serve until closed.
    let outcome = match greeted {
        Ok(()) => {
            serve_loop(
                &mut c,
                &mut session,
                &mut cursors,
                &mut events,
                conn_id,
                ka,
                &mut persisted,
            )
            .await
        }
        Err(e) => Err(e),
    };
    // A clean stop is not a client's DISCONNECT: the will is due (MQTT 5 3.1.2.5).
    let stopping = matches!(outcome, Err(Error::Stopping));
    let (publish_will, result) = match outcome {
        Ok(will) => (will, Ok(())),
        Err(Error::Stopping) => (true, Ok(())),
        Err(e) => (true, Err(e)),
    };
    // 4. Leave: will, persistence, registry. A will due now is published (on a stop,
    // durably before the stop goes on); a delayed one is stored with the session.
    let delayed = match will.filter(|_| publish_will) {
        Some((m, delay)) => {
            let wait = will_wait(delay, session.expiry);
            will_now_or_later(&hub, &client_id, m, wait, stopping, armed).await
        }
        None => {
            // Discarded by a DISCONNECT (or none): no longer due after a crash either.
            if let Some(conn) = armed {
                hub.disarm_will(&client_id, conn).await;
            }
            None
        }
    };
    // Unfinished shared deliveries go back to their groups (other members get them).
    session.drop_shared();
    for g in std::mem::take(&mut c.shares.groups) {
        hub.share_leave(conn_id, &g.key).await;
    }
    if session.expiry > 0 {
        let saved = cursors.saved(&session);
        let now = records::now_ms().max(1) as u64;
        if let Err(e) = hub
            .persist_leave(&client_id, Some(saved), now, delayed)
            .await
        {
            warn!(cause = %e, "cannot persist session");
        }
    } else if persisted {
        if let Err(e) = hub.persist_session(&client_id, None, 0).await {
            warn!(cause = %e, "cannot delete session");
        }
    }
    let positions = cursors
        .list
        .iter()
        .map(|c| (c.log_name.clone(), c.partition, c.next))
        .collect();
    hub.detach(
        conn_id,
        &client_id,
        Detached {
            session,
            cursors: positions,
            sent: Vec::new(),
        },
    );
    if stopping {
        c.goodbye().await;
    }
    result
}

/// What the handshake settled, for serving and leaving.
struct Opened {
    client_id: String,
    /// The will and its delay.
    will: Option<(Message, u32)>,
    /// The connection whose will is stored (this one), if it is.
    armed: Option<u64>,
    session: Session,
    cursors: Cursors,
    events: EventRx,
    conn_id: u64,
    /// The keep-alive deadline after the last packet.
    ka: Option<Duration>,
    persisted: bool,
    /// Whether the CONNACK (and resent deliveries) went out.
    greeted: Result<(), Error>,
}

/// Steps 1 and 2: reads the CONNECT, takes the session and sends the CONNACK. `None`:
/// the connection ended here (closed, timed out or refused).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    hub: &Arc<Hub>,
    identity: Option<String>,
) -> Result<Option<Opened>, Error> {
    let cfg = &hub.config;
    let max = cfg.max_packet_bytes as usize;
    // 1. CONNECT, within the connect timeout.
    let deadline = Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
    let (version, packet) = loop {
        match codec::decode_connect(&mut c.rbuf, max) {
            Ok(Some(v)) => break v,
            Ok(None) => {}
            Err(CodecError::UnsupportedProtocol { name, level }) => {
                debug!(name, level, "unsupported protocol level");
                c.wbuf.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
                c.flush().await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let read = tokio::time::timeout_at(deadline, c.stream.read_buf(&mut c.rbuf));
        let read = tokio::select! {
            biased;
            _ = c.stop.wait_for(|s| *s) => return Ok(None),
            r = read => r,
        };
        match read {
            Ok(Ok(0)) => return Ok(None),
            Ok(r) => r?,
            Err(_) => {
                debug!("no CONNECT within connect_timeout_ms");
                return Ok(None);
            }
        };
    };
    c.version = version;
    let Packet::Connect(connect, will, login) = packet else {
        return Err(CodecError::NotConnect.into());
    };
    let props = connect.properties.clone().unwrap_or_default();
    let connack = |code: ConnectReturnCode, props: Option<ConnAckProperties>| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: props,
        })
    };
    let login = login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    // Who the client is for `acl`: a verified client certificate's name, which
    // authenticates it by itself; else the user name `mqtt.credentials` checked (none
    // when the listener checks no credentials).
    let user = match &identity {
        Some(id) => Some(id.as_str()),
        None if !cfg.authenticate(login) => {
            debug!(username = login.map(|l| l.0), "bad user name or password");
            c.send(&connack(ConnectReturnCode::BadUserNamePassword, None))?;
            return c.flush().await.map(|()| None);
        }
        None if cfg.credentials.is_empty() => None,
        None => login.map(|l| l.0).filter(|u| !u.is_empty()),
    };
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        if version == Version::V4 && !connect.clean_start {
            c.send(&connack(ConnectReturnCode::BadClientId, None))?;
            return c.flush().await.map(|()| None);
        }
        client_id = assign_id();
        assigned = Some(client_id.clone());
    }
    tracing::Span::current().record("client_id", client_id.as_str());
    c.key = Bytes::copy_from_slice(client_id.as_bytes());
    let grants = Arc::new(cfg.grants(user, &client_id));
    let will = match will {
        Some(w) => {
            let name = String::from_utf8(w.topic.to_vec()).unwrap_or_default();
            if topic::validate_name(&name).is_err() {
                c.send(&connack(ConnectReturnCode::TopicNameInvalid, None))?;
                return c.flush().await.map(|()| None);
            }
            if !grants.may(Op::Write, &name) {
                debug!(topic = name, "will refused by acl");
                c.send(&connack(ConnectReturnCode::NotAuthorized, None))?;
                return c.flush().await.map(|()| None);
            }
            let delay = w
                .properties
                .as_ref()
                .and_then(|p| p.delay_interval)
                .unwrap_or(0);
            let props = w
                .properties
                .map(|p| rumqttc::v5::mqttbytes::v5::PublishProperties {
                    payload_format_indicator: p.payload_format_indicator,
                    message_expiry_interval: p.message_expiry_interval,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    user_properties: p.user_properties,
                    ..Default::default()
                })
                .filter(|p| *p != Default::default());
            let m = Message {
                topic: name,
                payload: w.message,
                qos: w.qos,
                retain: w.retain,
                props,
                timestamp_ms: 0,
            };
            Some((m, delay))
        }
        None => None,
    };
    let expiry = match version {
        Version::V4 if connect.clean_start => 0,
        Version::V4 => u32::MAX,
        Version::V5 => props.session_expiry_interval.unwrap_or(0),
    };
    let expiry_granted = expiry.min(cfg.max_session_expiry_secs);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if version == Version::V5
        && cfg.max_keep_alive_secs > 0
        && (keep_alive == 0 || keep_alive > cfg.max_keep_alive_secs)
    {
        keep_alive = cfg.max_keep_alive_secs;
        server_keep_alive = Some(keep_alive);
    }
    let client_limits = ClientLimits {
        receive_maximum: props
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(cfg.max_inflight)
            .max(1),
        max_packet_size: props.max_packet_size,
        topic_alias_max: props.topic_alias_max.unwrap_or(0),
    };
    // 2. Take the session (waiting for a connection that holds it to let go).
    let attached = tokio::select! {
        biased;
        a = hub.attach(&client_id, connect.clean_start) => a,
        _ = c.stop.wait_for(|s| *s) => return Ok(None),
    };
    let conn_id = attached.conn;
    let events = attached.events;
    let session_present = attached.resumed.is_some();
    let discarded = attached.discarded;
    let mut cursors = Cursors::default();
    let mut resend = Vec::new();
    let session = match attached.resumed {
        Some(d) => {
            let mut s = d.session;
            s.expiry = expiry_granted;
            resend = s.resume(version, client_limits, hub.limits());
            s.grants = grants.clone();
            for f in s.drop_refused_subscriptions() {
                info!(
                    filter = f,
                    "stored subscription no longer allowed by acl, dropped"
                );
                hub.unsubscribe(conn_id, &f);
            }
            // Loaded from the store: what was sent and not acknowledged goes with DUP.
            let sent: HashMap<(Arc<str>, u32), u64> =
                d.sent.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
            for (t, p, o) in d.cursors {
                if let Some((_, log)) = hub.partitions(&t).into_iter().find(|(i, _)| *i == p) {
                    let mark = sent.get(&(t.clone(), p)).copied();
                    cursors.resume(t.clone(), hub.name_of(&t), p, log, (o, mark));
                }
            }
            for f in s.subscriptions.keys() {
                for (mqtt, log_name) in hub.topics_matching(f) {
                    for (p, log) in hub.partitions(&log_name) {
                        cursors.open(
                            log_name.clone(),
                            Some(mqtt.clone()),
                            p,
                            log,
                            Start::Beginning,
                        );
                    }
                }
            }
            s
        }
        None => {
            let mut s = Session::new(client_id.clone(), version, expiry_granted, hub.limits());
            s.client = client_limits;
            s.grants = grants.clone();
            s
        }
    };
    for key in session.subscriptions.keys() {
        if let Some((_, filter)) = topic::shared(key) {
            let window = usize::from(session.client.receive_maximum);
            c.shares
                .add(hub.share_join(conn_id, key, filter, window).await);
        }
    }
    // A delayed will of this client id waiting for its time is cancelled (published
    // first on a clean start, which ends its session), durably before the CONNACK.
    hub.cancel_will(&client_id, connect.clean_start).await;
    if discarded {
        // A clean start discards the stored session of this client id.
        if let Err(e) = hub.persist_session(&client_id, None, 0).await {
            warn!(cause = %e, "cannot delete the previous session");
        }
    }
    // This connection's will is stored while it is open (armed), durably before the
    // CONNACK, so a crash of the cloud, which loses the connection without a DISCONNECT,
    // does not lose the will: the next start publishes it after its wait. A will to a
    // memory topic is not: like that topic's records, it does not outlive the process.
    // `armed`: the connection whose will is stored (this one), if it is.
    let armed = match &will {
        Some((m, delay)) if !hub.will_in_memory(&m.topic) => {
            let wait = will_wait(*delay, session.expiry);
            match hub.arm_will(&client_id, conn_id, m, wait).await {
                Ok(()) => Some(conn_id),
                Err(e) => {
                    warn!(cause = %e, "cannot store the will");
                    None
                }
            }
        }
        _ => None,
    };
    let ack_props = (version == Version::V5).then(|| ConnAckProperties {
        session_expiry_interval: (expiry_granted != expiry).then_some(expiry_granted),
        receive_max: Some(cfg.receive_maximum),
        max_qos: None,
        retain_available: Some(1),
        max_packet_size: Some(cfg.max_packet_bytes),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(cfg.topic_alias_maximum),
        reason_string: None,
        user_properties: vec![],
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    });
    c.send(&Packet::ConnAck(ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
        properties: ack_props,
    }))?;
    for p in &resend {
        c.send(p)?;
    }
    // From here on the session is registered: every way out goes through step 4.
    let greeted = c.flush().await;
    let persisted = session_present && session.expiry > 0;
    let ka = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    Ok(Some(Opened {
        client_id,
        will,
        armed,
        session,
        cursors,
        events,
        conn_id,
        ka,
        persisted,
        greeted,
    }))
}

/// How long after its connection is lost a will is due: the will delay, cut to the
/// session expiry; none for a session that ends with the connection.
fn will_wait(delay: u32, session_expiry: u32) -> Duration {
    let wait = if session_expiry == 0 {
        0
    } else {
        delay.min(session_expiry)
    };
    Duration::from_secs(u64::from(wait))
}

/// A leaving connection's will: published now if its `wait` is zero (then the copy
/// connection `armed` stored is deleted; kept if the publish failed, for a restart to
/// publish), else returned to be stored with the session (replacing the armed copy) and
/// published by the hub when due.
async fn will_now_or_later(
    hub: &Arc<Hub>,
    client: &str,
    m: Message,
    wait: Duration,
    stopping: bool,
    armed: Option<u64>,
) -> Option<(Message, Duration)> {
    if !wait.is_zero() {
        return Some((m, wait));
    }
    let publish = {
        let (hub, client) = (hub.clone(), client.to_string());
        async move {
            if hub.publish_will(&client, m).await {
                if let Some(conn) = armed {
                    hub.disarm_will(&client, conn).await;
                }
            }
        }
    };
    if stopping {
        publish.await;
    } else {
        tokio::spawn(publish);
    }
    None
}

/// Returns whether the will must be published.
async fn serve_loop<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    session: &mut Session,
    cursors: &mut Cursors,
    events: &mut EventRx,
    conn_id: u64,
    keep_alive: Option<Duration>,
    persisted: &mut bool,
) -> Result<bool, Error> {
    let max = c.hub.config.max_packet_bytes as usize;
    let mut last_packet = Instant::now();
    // One timer for the connection's life, pushed back lazily when it fires: re-arming
    // it on every packet costs a timer-wheel insert and removal per loop.
    let keep_alive_timer = tokio::time::sleep_until(last_packet + keep_alive.unwrap_or_default());
    tokio::pin!(keep_alive_timer);
    // Most clients wait for the CONNACK before they send more: nothing is buffered yet.
    c.release_idle_buffers();
    let mut pending = Pending::default();
    // Woken by an append to any partition a cursor follows; one for the connection's
    // life (a partition holds it at most once). A wake-up that arrives while the loop is
    // busy is kept as a permit, so the next wait may return at once: harmless.
    let notify = Arc::new(Notify::new());
    // One waiter kept across the loop's turns, replaced only when it fires: creating and
    // dropping one per turn registered and unregistered it in the `Notify` each time.
    let notified = notify.notified();
    tokio::pin!(notified);
    loop {
        // Every complete packet buffered (also those sent right behind CONNECT). Publishes
        // decoded together are appended together (one batch per topic), and acknowledged
        // in the order received; any other packet first waits for those appends.
        loop {
            let p = match codec::decode(&mut c.rbuf, c.version, max) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    let reason = match e {
                        CodecError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
                        _ => DisconnectReasonCode::MalformedPacket,
                    };
                    debug!(cause = %e, "bad packet");
                    flush_appends(c, session, cursors, conn_id, persisted, &mut pending).await?;
                    c.refuse(reason).await?;
                    return Ok(true);
                }
            };
            let mut actions = session.incoming(p);
            if let [Action::Append { .. }] = actions.as_slice() {
                if let Some(Action::Append { message, qos, pkid }) = actions.pop() {
                    pending.push(message, qos, pkid);
                }
                continue;
            }
            if let Some(will) =
                flush_appends(c, session, cursors, conn_id, persisted, &mut pending).await?
            {
                c.flush().await?;
                return Ok(will);
            }
            if let Some(will) = perform(c, session, cursors, conn_id, persisted, actions).await? {
                c.flush().await?;
                return Ok(will);
            }
        }
        if let Some(will) =
            flush_appends(c, session, cursors, conn_id, persisted, &mut pending).await?
        {
            c.flush().await?;
            return Ok(will);
        }
        c.shares.pump(session, conn_id, c.version, &mut c.wbuf)?;
        let more = cursors.pump(c.hub.stored(conn_id), session, c.version, &mut c.wbuf)?;
        c.flush().await?;
        let ready = more || cursors.ready(session) || c.shares.ready(session);
        // Registered on the partitions only when the loop is about to wait.
        if !ready {
            cursors.register(&notify);
        }
        let ready = ready || cursors.ready(session);
        c.make_read_room();
        tokio::select! {
            biased;
            r = c.stream.read_buf(&mut c.rbuf) => {
                if r? == 0 {
                    return Ok(true);
                }
                last_packet = Instant::now();
            }
            ev = events.recv() => match ev {
                Some(Event::NewTopic { mqtt, log }) => {
                    if session.wants(&mqtt) {
                        for (p, part) in c.hub.partitions(&log) {
                            cursors.open(log.clone(), Some(mqtt.clone()), p, part, Start::Beginning);
                        }
                    }
                }
                Some(Event::Shared(g, d)) => c.shares.push(g, d),
                Some(Event::Stop) => return Err(Error::Stopping),
                Some(Event::TakenOver) | None => {
                    c.refuse(DisconnectReasonCode::SessionTakenOver).await?;
                    return Ok(true);
                }
            },
            _ = notified.as_mut(), if !ready => notified.set(notify.notified()),
            _ = std::future::ready(()), if ready => {}
            _ = &mut keep_alive_timer, if keep_alive.is_some() => {
                let due = last_packet + keep_alive.unwrap_or_default();
                if due > Instant::now() {
                    keep_alive_timer.as_mut().reset(due);
                    c.release_idle_buffers();
                    continue;
                }
                debug!("keep alive expired");
                c.refuse(DisconnectReasonCode::KeepAliveTimeout).await?;
                return Ok(true);
            }
        }
    }
}
