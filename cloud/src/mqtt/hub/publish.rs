//! The publish path into the log: an MQTT publish becomes a record batch appended to
//! its topic (created on first use in the mode `mqtt.topic_modes` picks), and retained
//! messages follow publishes from either protocol.

use super::*;

impl Hub {
    /// Appends one message to its topic's log (creating the topic), then updates the
    /// retained message if it has the retain flag.
    /// `key` is the publishing client's id (the records' key; it also picks the
    /// partition of a topic that has several).
    pub(crate) async fn append(&self, m: Arc<Message>, key: &Bytes) -> Result<(), Error> {
        self.append_topic(std::slice::from_ref(&m), key)
            .await
            .map(drop)
    }

    /// Appends messages received together from one client: one RecordBatch (one log
    /// write, one wake-up of the subscribers) per topic, topics concurrently. Sets `ok` to
    /// one result per message, in order; returns whether an MQTT cursor follows any of
    /// the partitions written.
    pub(crate) async fn append_many(
        &self,
        msgs: &[Arc<Message>],
        key: &Bytes,
        ok: &mut Vec<bool>,
    ) -> bool {
        ok.clear();
        let Some(first) = msgs.first() else {
            return false;
        };
        if msgs.iter().all(|m| m.topic == first.topic) {
            // One topic (always so for a client waiting on each publish): no grouping.
            let r = self.append_topic(msgs, key).await;
            if let Err(e) = &r {
                warn!(topic = first.topic, cause = %e, "publish not appended");
            } else {
                crate::metrics::get()
                    .mqtt_received
                    .inc_by(msgs.len() as u64);
            }
            ok.resize(msgs.len(), r.is_ok());
            return matches!(r, Ok(true));
        }
        // (topic, its messages, their indexes in `msgs`)
        let mut groups: Vec<TopicGroup<'_>> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            match groups.iter_mut().find(|g| g.0 == m.topic) {
                Some(g) => {
                    g.1.push(m.clone());
                    g.2.push(i);
                }
                None => groups.push((&m.topic, vec![m.clone()], vec![i])),
            }
        }
        let results =
            futures_util::future::join_all(groups.iter().map(|g| self.append_topic(&g.1, key)))
                .await;
        ok.resize(msgs.len(), false);
        let mut followed = false;
        for (g, r) in groups.iter().zip(results) {
            if let Err(e) = &r {
                warn!(topic = g.0, cause = %e, "publish not appended");
            }
            followed |= matches!(r, Ok(true));
            for &i in &g.2 {
                ok[i] = r.is_ok();
            }
        }
        let appended = ok.iter().filter(|o| **o).count();
        crate::metrics::get().mqtt_received.inc_by(appended as u64);
        followed
    }

    /// Appends messages of one topic as one batch, and keeps them for the partition's
    /// MQTT cursors ([`Recent`]): with `deliver_before_sync` as soon as the append holds
    /// its offsets (before the fsync this waits for), else once it returns. Returns
    /// whether a cursor follows the partition.
    async fn append_topic(&self, msgs: &[Arc<Message>], key: &Bytes) -> Result<bool, Error> {
        let Some(first) = msgs.first() else {
            return Ok(false);
        };
        let log_name = common::topic::mqtt_to_kafka(&first.topic)?;
        let topic = match self.log.get(&log_name) {
            Some(t) => t,
            None => self.create_topic(&log_name, &first.topic).await?,
        };
        if topic.read_only() {
            return Err(TopicError::ReadOnly.into());
        }
        let count = topic.partition_count().max(1);
        let index = if count == 1 {
            0
        } else {
            (fnv(key) % count) as i32
        };
        let part = self.log.partition(&topic, index)?;
        let batch = records::encode_messages(msgs, Some(key))?;
        let recent = Recent::existing(&part);
        let early = self.config.deliver_before_sync;
        // (base offset, followed) once kept before the fsync (`recent`).
        let mut kept = None;
        let appended = part
            .append_with(
                &self.log.store,
                vec![batch],
                self.config.durable_publish,
                |base| {
                    let followed =
                        early && recent.as_ref().is_some_and(|r| r.push(base, key, msgs));
                    kept = early.then_some((base, followed));
                    followed
                },
            )
            .await;
        let followed = match (appended, kept) {
            (Ok(_), Some((_, followed))) => followed,
            (Ok(a), None) => recent.is_some_and(|r| r.push(a.base_offset, key, msgs)),
            (Err(e), kept) => {
                if let (Some((base, _)), Some(r)) = (kept, &recent) {
                    r.forget_from(base);
                }
                return Err(e.into());
            }
        };
        let retained: Vec<&Message> = msgs.iter().filter(|m| m.retain).map(|m| &**m).collect();
        if !retained.is_empty() {
            self.set_retained(&retained).await?;
        }
        Ok(followed)
    }

    async fn create_topic(
        &self,
        log_name: &str,
        mqtt: &str,
    ) -> Result<Arc<crate::log::Topic>, Error> {
        if !matches!(
            common::topic::kafka_to_mqtt(log_name),
            Ok(common::topic::Decoded::Topic(_))
        ) {
            let mut set = WriteSet::default();
            set.put_topic_alias(log_name, mqtt);
            self.log.store.write(set, true).await?;
        }
        let mut configs = std::collections::BTreeMap::new();
        if let Some(mode) = self.config.mode_of(mqtt) {
            configs.insert("storage.mode".to_string(), mode.to_string());
        }
        let new = NewTopic {
            name: log_name.to_string(),
            partitions: 1,
            configs,
        };
        match self.log.create(vec![new], false).await.pop() {
            Some(Ok(())) | Some(Err(TopicError::Exists)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(TopicError::Unknown.into()),
        }
        self.log
            .get(log_name)
            .ok_or_else(|| TopicError::Unknown.into())
    }

    /// The batches of a Kafka Produce that may set a retained message
    /// ([`records::sets_retained`]); `None` when none does.
    pub(crate) fn retaining(batches: Vec<bytes::Bytes>) -> Option<Vec<bytes::Bytes>> {
        let r: Vec<_> = batches.into_iter().filter(records::sets_retained).collect();
        (!r.is_empty()).then_some(r)
    }

    /// Records produced over Kafka to `log_name` (already appended), in `batches` that
    /// [`Hub::retaining`] picked: those with the `mqtt.retain` header set update
    /// the retained message of their MQTT topic, as a retained MQTT publish does (an
    /// empty value clears it).
    pub(crate) async fn kafka_produced(&self, log_name: &str, batches: &[bytes::Bytes]) {
        let mut mqtt_name: Option<Option<Arc<str>>> = None;
        let mut retained = Vec::new();
        for b in batches {
            let name = mqtt_name.get_or_insert_with(|| self.name_of(log_name));
            // A topic the hub has no MQTT name for yet (a hashed name first written over
            // Kafka) takes a record's `mqtt.topic` header only if it maps to this topic.
            let own = |m: &Message| {
                name.is_some()
                    || common::topic::mqtt_to_kafka(&m.topic).is_ok_and(|k| k == log_name)
            };
            match records::decode(b, 0, name.as_deref()) {
                Ok(stored) => retained.extend(
                    stored
                        .into_iter()
                        .map(|s| s.message)
                        .filter(|m| m.retain && topic::validate_name(&m.topic).is_ok() && own(m)),
                ),
                Err(e) => debug!(topic = log_name, cause = %e, "produced batch not decoded"),
            }
        }
        if retained.is_empty() {
            return;
        }
        let retained: Vec<&Message> = retained.iter().collect();
        if let Err(e) = self.set_retained(&retained).await {
            warn!(topic = log_name, cause = %e, "retained messages not stored");
        }
    }

    /// Makes the retained messages in `msgs` (in publish order; an empty payload clears)
    /// the retained messages of their topics, with one durable write: per topic, the
    /// last one is the state afterwards, as if each had been set in turn. (One write per
    /// message cost one fsync each per batch: in the power-cut VM a client publishing
    /// retained updates, 100 in flight, got 479 PUBACKs while one without retain got
    /// 17,116.)
    async fn set_retained(&self, msgs: &[&Message]) -> Result<(), Error> {
        let last: HashMap<&str, &Message> = msgs.iter().map(|m| (m.topic.as_str(), *m)).collect();
        let mut set = WriteSet::default();
        for m in last.values() {
            if m.payload.is_empty() {
                set.delete_retained(&m.topic);
            } else {
                set.put_retained(&m.topic, persist::encode_retained(m)?);
            }
        }
        self.log.store.write(set, true).await?;
        let mut g = self.lock();
        for m in last.into_values() {
            if m.payload.is_empty() {
                g.retained.remove(&m.topic);
            } else {
                g.retained.insert(&m.topic, Arc::new(m.clone()));
            }
        }
        Ok(())
    }
}
