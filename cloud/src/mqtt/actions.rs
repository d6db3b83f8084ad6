//! Performing the session's actions for one connection: appends (batched per read),
//! subscriptions (index, cursors, retained messages), and session persistence.

use std::collections::VecDeque;
use std::sync::Arc;

use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use super::conn::Conn;
use super::cursor::{Cursors, Start};
use super::records::Message;
use super::session::{Action, Actions, Session};
use super::{topic, Error};

/// The publishes decoded from one read, waiting to be appended together. Kept by the
/// connection for its life, so a read's publishes allocate no lists.
#[derive(Default)]
pub(super) struct Pending {
    messages: Vec<Arc<Message>>,
    /// (qos, packet id) of each message, for its acknowledgement.
    acks: Vec<(QoS, u16)>,
    /// Whether each message was appended.
    ok: Vec<bool>,
}

impl Pending {
    pub(super) fn push(&mut self, message: Arc<Message>, qos: QoS, pkid: u16) {
        self.messages.push(message);
        self.acks.push((qos, pkid));
    }
}

/// Appends the publishes collected from one read, then performs their acknowledgements.
pub(super) async fn flush_appends<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    session: &mut Session,
    cursors: &mut Cursors,
    conn_id: u64,
    persisted: &mut bool,
    pending: &mut Pending,
) -> Result<Option<bool>, Error> {
    if pending.messages.is_empty() {
        return Ok(None);
    }
    let followed = c
        .hub
        .append_many(&pending.messages, &c.key, &mut pending.ok)
        .await;
    if followed {
        // The append woke the subscribers, queued on this MQTT thread: let them write
        // before this connection's acknowledgements (as a single-threaded broker does),
        // which takes one write system call off their latency. A read that carried one
        // publish is a client waiting for us: requeue at once. A read that carried many
        // is a busy publisher: yield until the runtime has polled its I/O, so that the
        // subscribers' sockets and the other clients get their turn (without it, with
        // 8 publishers and no fsync, a subscriber fell 100 ms behind).
        if pending.messages.len() == 1 {
            YieldToQueued(false).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    pending.messages.clear();
    let mut actions = Actions::new();
    for (&(qos, pkid), &ok) in pending.acks.iter().zip(&pending.ok) {
        actions.extend(session.appended(qos, pkid, ok));
    }
    pending.acks.clear();
    perform(c, session, cursors, conn_id, persisted, actions).await
}

/// Re-queues the task once, behind the tasks already queued on this thread.
///
/// Unlike `tokio::task::yield_now`, which on purpose parks the task until the runtime
/// has polled its I/O driver (one more `epoll_wait` per publish, and the acks then wait
/// for whatever that poll woke), a task that wakes itself goes straight to the back of
/// its single-threaded runtime's run queue: the woken subscribers write, then this
/// connection goes on.
struct YieldToQueued(bool);

impl std::future::Future for YieldToQueued {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Performs actions in order; returns `Some(publish_will)` when the connection must close.
pub(super) async fn perform<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    session: &mut Session,
    cursors: &mut Cursors,
    conn_id: u64,
    persisted: &mut bool,
    actions: Actions,
) -> Result<Option<bool>, Error> {
    let mut changed = false;
    // Actions in order; those an append leads to go after the given ones.
    let mut given = actions.into_iter();
    let mut more = VecDeque::new();
    while let Some(a) = given.next().or_else(|| more.pop_front()) {
        match a {
            Action::Send(r) => c.send(&r.into_packet())?,
            Action::Append { message, qos, pkid } => {
                let ok = match c.hub.append(message.clone(), &c.key).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(topic = message.topic, cause = %e, "publish not appended");
                        false
                    }
                };
                more.extend(session.appended(qos, pkid, ok));
            }
            Action::Subscribed(list) => {
                for (filter, opts, is_new) in list {
                    if let Some((_, inner)) = topic::shared(&filter) {
                        // No retained messages for shared subscriptions (MQTT 5 4.8.2).
                        let window = usize::from(session.client.receive_maximum);
                        let group = c.hub.share_join(conn_id, &filter, inner, window).await;
                        c.shares.add(group);
                        continue;
                    }
                    for (mqtt, log_name) in c.hub.subscribe(conn_id, &filter) {
                        for (p, part) in c.hub.partitions(&log_name) {
                            cursors.open(log_name.clone(), Some(mqtt.clone()), p, part, Start::End);
                        }
                    }
                    if opts.retain_handling == 0 || (opts.retain_handling == 1 && is_new) {
                        cursors.retained.extend(c.hub.retained_matching(&filter));
                    }
                }
                changed = true;
            }
            Action::Unsubscribed(list) => {
                for f in list {
                    if c.shares.remove(&f) {
                        c.hub.share_leave(conn_id, &f).await;
                    } else {
                        c.hub.unsubscribe(conn_id, &f);
                    }
                }
                changed = true;
            }
            Action::Done(t) => {
                c.shares.done(t, conn_id);
            }
            Action::Close { reason, will } => {
                if let Some(r) = reason {
                    c.refuse(r).await?;
                }
                return Ok(Some(will));
            }
        }
    }
    if changed && session.expiry > 0 {
        let saved = cursors.saved(session);
        c.hub
            .persist_session(&session.client_id, Some(saved), 0)
            .await?;
        *persisted = true;
    }
    Ok(None)
}
