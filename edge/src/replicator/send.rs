//! The wire side of a session: Produce requests per partition leader (routed from
//! Metadata), and their acknowledgements, which release the buffer's records.

use super::*;

impl Replicator {
    /// Sends the batches not yet on the wire, in order per topic: one Produce request per
    /// leader carries the oldest unsent batch of every topic it leads (Kafka takes one
    /// batch per partition per request), so one broker round trip (and one fsync there)
    /// covers every topic. At most `max_in_flight` requests are outstanding, which also
    /// bounds each partition's batches in flight (the idempotent producer's limit of 5).
    /// While requests are in flight, a new one waits until [`REQUEST_TARGET_BYTES`] are
    /// ready or the reader has caught up with the buffer (live traffic is not delayed).
    /// A batch whose cut has not finished stops its topic's sending until it has.
    pub(super) async fn send(&mut self, s: &mut Session, caught_up: bool) -> Result<(), Error> {
        let timeout_ms = i32::try_from(self.cfg.request_timeout_ms).unwrap_or(i32::MAX);
        loop {
            if s.wire.len() >= self.cfg.max_in_flight {
                return Ok(());
            }
            let mut ready = 0;
            let mut topics = Vec::new();
            for (name, t) in &self.state.topics {
                let unsent: usize = t
                    .batches
                    .iter()
                    .filter(|b| !b.sent)
                    .take_while(|b| b.ready())
                    .map(|b| b.raw_bytes)
                    .sum();
                if unsent > 0 {
                    ready += unsent;
                    topics.push(name.clone());
                }
            }
            if topics.is_empty()
                || !(s.wire.is_empty() || caught_up || ready >= REQUEST_TARGET_BYTES)
            {
                return Ok(());
            }
            // Group by leader; the first leader's request goes out this round.
            let mut by_leader: Vec<(Arc<Connection>, Vec<String>)> = Vec::new();
            for topic in topics {
                let conn = self.leader(s, &topic).await?;
                match by_leader.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &conn)) {
                    Some((_, list)) => list.push(topic),
                    None => by_leader.push((conn, vec![topic])),
                }
            }
            for (conn, topics) in by_leader {
                if s.wire.len() >= self.cfg.max_in_flight {
                    return Ok(());
                }
                let mut parts = Vec::new();
                let mut batches = Vec::new();
                let mut bytes = 0;
                for topic in topics {
                    let Some(t) = self.state.topics.get_mut(&topic) else {
                        continue;
                    };
                    let Some(b) = t.batches.iter_mut().find(|b| !b.sent) else {
                        continue;
                    };
                    if !b.ready() {
                        continue;
                    }
                    if !parts.is_empty() && bytes + b.encoded.len() > REQUEST_MAX_BYTES {
                        break;
                    }
                    bytes += b.encoded.len();
                    b.sent = true;
                    parts.push(ProducePartition {
                        topic: topic.clone(),
                        partition: 0,
                        records: b.encoded.clone(),
                    });
                    batches.push((topic, b.base));
                }
                if parts.is_empty() {
                    continue;
                }
                if let Some(p) = self.pacer.as_mut() {
                    p.take(bytes).await;
                }
                let fut = conn.produce(&parts, -1, timeout_ms).await?;
                s.wire.push_back((batches, fut, Instant::now()));
            }
        }
    }

    /// Waits for a request other than Produce at most `request_timeout_ms`: a link that
    /// goes half-open after the connection handshake must end the session, not wedge it.
    pub(super) async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, kafka::Error>>,
    ) -> Result<T, Error> {
        let limit = Duration::from_millis(self.cfg.request_timeout_ms);
        Ok(tokio::time::timeout(limit, request)
            .await
            .map_err(|_| Error::Timeout)??)
    }

    async fn leader(&mut self, s: &mut Session, topic: &str) -> Result<Arc<Connection>, Error> {
        let known = self.state.topics.get(topic).and_then(|t| t.leader.clone());
        let addr = match known {
            Some(a) => a,
            None => {
                let name = [topic.to_owned()];
                // With configs of its own, a topic must not be auto-created with the
                // brokers' defaults first.
                let auto = self.cfg.topic_configs.is_empty();
                let mut md = self.bounded(s.bootstrap.metadata(&name, auto)).await?;
                let code = md.topics.get(topic).map_or(codes::NONE, |(c, _)| *c);
                if code == codes::UNKNOWN_TOPIC_OR_PARTITION && self.cfg.create_topics {
                    self.create_topic(s, &md, topic).await?;
                    md = self.bounded(s.bootstrap.metadata(&name, false)).await?;
                }
                match md.topics.get(topic).map_or(codes::NONE, |(c, _)| *c) {
                    codes::NONE => {}
                    // A topic being created: the session retries after its backoff.
                    codes::LEADER_NOT_AVAILABLE => return Err(Error::NoLeader(topic.into())),
                    // A topic the cluster will not let this edge write (29,
                    // TOPIC_AUTHORIZATION_FAILED) is usually refused here, before any
                    // Produce is sent.
                    code => return Err(self.refused(topic, code)),
                }
                let addr = md
                    .leader_addr(topic, 0)
                    .ok_or_else(|| Error::NoLeader(topic.to_owned()))?
                    .to_owned();
                if let Some(t) = self.state.topics.get_mut(topic) {
                    t.leader = Some(addr.clone());
                }
                addr
            }
        };
        self.connection(s, &addr).await
    }

    /// The session's connection to the broker at `addr`, opened on first use.
    async fn connection(&self, s: &mut Session, addr: &str) -> Result<Arc<Connection>, Error> {
        if let Some(c) = s.conns.get(addr) {
            return Ok(c.clone());
        }
        let c = Arc::new(s.connector.connect(addr).await?);
        s.conns.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Creates `topic` (`cloud.create_topics`) on the controller Metadata named (any
    /// broker forwards it in KRaft clusters; the bootstrap broker if none was named).
    /// Another client creating it first is success too.
    async fn create_topic(&self, s: &mut Session, md: &Metadata, topic: &str) -> Result<(), Error> {
        let conn = match md.controller.and_then(|id| md.brokers.get(&id)) {
            Some(addr) => self.connection(s, addr).await?,
            None => s.bootstrap.clone(),
        };
        let timeout_ms = i32::try_from(self.cfg.request_timeout_ms).unwrap_or(i32::MAX);
        let created = conn.create_topic(topic, &self.cfg.topic_configs, timeout_ms);
        match self.bounded(created).await? {
            (codes::NONE, _) => {
                tracing::info!(topic, "created topic");
                Ok(())
            }
            (codes::TOPIC_ALREADY_EXISTS, _) => Ok(()),
            (code, message) => {
                tracing::warn!(
                    topic,
                    code,
                    message = message.as_deref().unwrap_or(""),
                    "the cloud refused to create a topic"
                );
                Err(self.refused(topic, code))
            }
        }
    }

    /// Handles the response to one Produce request: each batch in it is the oldest
    /// unacknowledged batch of its topic.
    /// The batches answered without error, in order, up to the first refused one, are
    /// acknowledged in one sled write and then released; a refusal then ends the session.
    pub(super) fn complete(
        &mut self,
        batches: &[(String, i32)],
        resp: &ProduceResponse,
    ) -> Result<(), Error> {
        let errs = kafka::client::produce_errors(resp);
        let mut acks = UplinkWrites::default();
        let mut done = Vec::with_capacity(batches.len());
        let mut refused = None;
        for (topic, base) in batches {
            let code = errs
                .iter()
                .find(|(t, p, _)| t == topic && *p == 0)
                .map_or(codes::UNKNOWN_TOPIC_OR_PARTITION, |(_, _, c)| *c);
            if code != codes::NONE && code != codes::DUPLICATE_SEQUENCE_NUMBER {
                refused = Some(self.refused(topic, code));
                break;
            }
            if let Some(b) = self.acknowledge_batch(&mut acks, topic, *base) {
                done.push(b);
            }
        }
        // The watermarks go to sled before the records are released: the reaper flushes
        // sled before it deletes a released batch file.
        self.buffer.apply_uplink(acks)?;
        for b in done {
            let held: Vec<Held> = (b.seqs.iter().zip(&b.priorities))
                .map(|(&seq, &priority)| Held { seq, priority })
                .collect();
            self.buffer.release(&held)?;
            self.metrics.uplink_records.inc_by(b.seqs.len() as u64);
            self.metrics.uplink_bytes.inc_by(b.payload_bytes);
            self.metrics
                .uplink_wire_bytes
                .inc_by(b.encoded.len() as u64);
            self.metrics.uplink_batches.inc();
        }
        refused.map_or(Ok(()), Err)
    }

    /// The error that ends the session when the cluster refuses `topic` (at Metadata or
    /// Produce), counted by code in `edge_uplink_produce_errors_total`.
    fn refused(&self, topic: &str, code: i16) -> Error {
        if code == codes::MESSAGE_TOO_LARGE {
            // Batches are cut under `cloud.max_message_bytes`: this broker's limit for the
            // topic is lower. Nothing is dropped; the uplink retries until it is raised
            // or the setting lowered.
            tracing::error!(
                topic,
                max_message_bytes = self.cfg.max_message_bytes,
                "the cloud refused a batch as too large (MESSAGE_TOO_LARGE): set \
                 cloud.max_message_bytes to the topic's max.message.bytes"
            );
        }
        self.metrics
            .produce_errors
            .get_or_create(&vec![("code".to_owned(), code.to_string())])
            .inc();
        Error::Rejected {
            topic: topic.to_owned(),
            code,
        }
    }

    /// Takes the oldest batch of `topic` (the one the broker acknowledged) out of its
    /// queue and adds its acknowledgement to `acks`.
    fn acknowledge_batch(
        &mut self,
        acks: &mut UplinkWrites,
        topic: &str,
        base: i32,
    ) -> Option<OutBatch> {
        let t = self.state.topics.get_mut(topic)?;
        let b = t.batches.pop_front()?;
        debug_assert_eq!(b.base, base);
        self.state.batched_bytes -= b.held().min(self.state.batched_bytes);
        let last = b.seqs.iter().max().copied().unwrap_or(0);
        Buffer::acknowledged_in(acks, b.backlog, topic, 0, b.base, last);
        if b.backlog {
            t.acked_backlog = Some(t.acked_backlog.map_or(last, |a| a.max(last)));
        } else {
            t.acked_through = Some(t.acked_through.map_or(last, |a| a.max(last)));
        }
        Some(b)
    }
}
