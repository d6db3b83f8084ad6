//! The cloud broker: the Kafka protocol (and later MQTT) over one RocksDB store.
//!
//! Layers, arrows one way: [`wire`] (bytes <-> frames and requests) -> [`connection`]
//! (socket, frame I/O) -> `server` (accept loop, per-connection task) -> `api` (one file
//! per Kafka API) -> `log` / `groups` (partitions, offsets, idempotence, membership) ->
//! [`storage`] (RocksDB, domain verbs only). See ARCHITECTURE.md.

pub mod acl;
pub mod alloc;
mod api;
mod broker;
pub mod config;
pub mod connection;
mod groups;
mod identity;
mod log;
mod metrics;
pub mod mqtt;
mod server;
pub mod source;
pub mod storage;
pub mod tier;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;

/// Errors that stop the broker from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the store in {path}: {source}")]
    Store {
        path: String,
        source: storage::Error,
    },
    #[error("cannot listen on {addr} (kafka.listen): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({key}): {source}")]
    MqttListen {
        addr: String,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("mqtt.tls.{field}: {source}")]
    MqttTls {
        field: &'static str,
        source: mqtt::TlsError,
    },
    #[error("mqtt.websocket: {0}")]
    MqttWsTls(mqtt::TlsError),
    #[error("kafka.tls.{field}: {source}")]
    KafkaTls {
        field: &'static str,
        source: common::tls::TlsError,
    },
    #[error("cannot load the mqtt view of the store: {0}")]
    Mqtt(String),
}

/// A started broker: its bound Kafka address and a future that serves until dropped.
pub struct Running {
    pub kafka_addr: std::net::SocketAddr,
    /// The plain MQTT listener's address (`mqtt.listen`), if enabled.
    pub mqtt_addr: Option<std::net::SocketAddr>,
    /// The MQTT over TLS listener's address (`mqtt.tls.listen`), if configured.
    pub mqtts_addr: Option<std::net::SocketAddr>,
    /// The MQTT over WebSocket listener's address (`mqtt.websocket.listen`) and whether
    /// it speaks TLS (`wss`), if configured.
    pub mqtt_ws_addr: Option<(std::net::SocketAddr, bool)>,
    /// The metrics endpoint's address (`metrics.listen`), if enabled.
    pub metrics_addr: Option<std::net::SocketAddr>,
    serve: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    mqtt: Arc<mqtt::Hub>,
}

impl Running {
    pub async fn serve(self) {
        self.serve.await
    }

    /// What to do on a clean shutdown (taken before [`Running::serve`]).
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.mqtt.clone())
    }
}

/// How long a clean stop waits for the MQTT connections to store their sessions and close.
const MQTT_STOP_WAIT: Duration = Duration::from_secs(3);

/// A clean stop of the MQTT side; run it while [`Running::serve`] still runs (the MQTT
/// threads serve the connections that are closing).
pub struct Shutdown(Arc<mqtt::Hub>);

impl Shutdown {
    /// 1. The MQTT listeners close (no new session starts).
    /// 2. Every MQTT connection stores its persistent session as a disconnect does
    ///    (subscriptions, the oldest unacknowledged delivery per cursor, the disconnect
    ///    time), publishes a will due now, sends MQTT 5 clients DISCONNECT 0x8B (Server
    ///    shutting down) and closes; waited for up to `MQTT_STOP_WAIT`.
    /// 3. Sessions of connections that did not finish keep their last stored positions and
    ///    get the stop as their disconnect time.
    /// 4. Share groups with members store their positions.
    pub async fn run(self) {
        let hub = self.0;
        hub.begin_stop();
        let left = hub.connections_closed(MQTT_STOP_WAIT).await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "mqtt connections did not finish within the stop's wait"
            );
        }
        hub.stamp_online_sessions().await;
        hub.save_share_groups().await;
    }
}

/// Opens the store and binds the listener; call [`Running::serve`] to serve.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let policy = config.sync_policy().unwrap_or(storage::SyncPolicy::Group);
    let store_dir = dir.join("store");
    let store = Arc::new(
        storage::Store::open_with(&store_dir, policy, config.storage.direct_io).map_err(
            |source| StartError::Store {
                path: store_dir.display().to_string(),
                source,
            },
        )?,
    );
    store
        .flush_unsynced_every(Duration::from_millis(config.storage.hybrid_flush_ms))
        .map_err(|source| StartError::Store {
            path: store_dir.display().to_string(),
            source,
        })?;
    let log = Arc::new(
        log::Log::open(store.clone())
            .map_err(|source| StartError::Store {
                path: store_dir.display().to_string(),
                source,
            })?
            .with_modes(
                config
                    .default_mode()
                    .unwrap_or(log::StorageMode::Persistent),
                usize::try_from(config.storage.memory_partition_bytes).unwrap_or(usize::MAX),
                usize::try_from(config.storage.memory_total_bytes).unwrap_or(usize::MAX),
            )
            .with_tiering(config.storage.tiered.target.is_some()),
    );
    let g = &config.groups;
    let groups = Arc::new(groups::Coordinator::new(
        store.clone(),
        Duration::from_millis(g.initial_rebalance_delay_ms),
        (
            Duration::from_millis(g.min_session_timeout_ms),
            Duration::from_millis(g.max_session_timeout_ms),
        ),
    ));
    let kafka_tls = match &config.kafka.tls {
        Some(t) => Some(
            common::tls::acceptor(&t.cert, &t.key, t.client_ca.as_deref())
                .map_err(|(field, source)| StartError::KafkaTls { field, source })?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(config.kafka.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.kafka.listen.to_string(),
            source,
        })?;
    let kafka_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.kafka.listen.to_string(),
        source,
    })?;
    let host = config
        .kafka
        .advertised_host
        .clone()
        .unwrap_or_else(|| kafka_addr.ip().to_string());
    let node = broker::Node {
        host,
        port: i32::from(config.kafka.advertised_port.unwrap_or(kafka_addr.port())),
    };
    let cache_dir = config.s3.cache.dir_in(&config.data_dir);
    let sources = Arc::new(
        source::Sources::new(store.clone(), config.s3.clone(), &config.data_dir).map_err(
            |source| StartError::DataDir {
                path: cache_dir.display().to_string(),
                source,
            },
        )?,
    );
    let tiers = Arc::new(tier::Tiers::new(
        config.storage.tiered.clone(),
        sources.clone(),
        store.clone(),
    ));
    let retention_every = Duration::from_millis(config.storage.retention_check_interval_ms);
    // Checked when the configuration was loaded; a config built in code is checked here.
    let acl = config
        .access()
        .map_err(|(key, why)| StartError::Mqtt(format!("{key}: {why}")))?
        .map(Arc::new);
    let mut mqtt_config = config.mqtt.clone();
    mqtt_config.acl = acl.clone();
    let mqtt_hub = mqtt::Hub::open(log.clone(), Some(tiers.clone()), mqtt_config)
        .await
        .map_err(|e| StartError::Mqtt(e.to_string()))?;
    let bind_mqtt = |addr: std::net::SocketAddr, key: &'static str| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::MqttListen {
                addr: addr.to_string(),
                key,
                source,
            })?;
        let a = l.local_addr().map_err(|source| StartError::MqttListen {
            addr: addr.to_string(),
            key,
            source,
        })?;
        Ok::<_, StartError>((l, a))
    };
    let mqtt_listener = match config.mqtt.listen {
        Some(addr) => Some(bind_mqtt(addr, "mqtt.listen").await?),
        None => None,
    };
    let mqtts_listener = match &config.mqtt.tls {
        Some(t) => {
            let acceptor = mqtt::tls_acceptor(t)
                .map_err(|(field, source)| StartError::MqttTls { field, source })?;
            Some((bind_mqtt(t.listen, "mqtt.tls.listen").await?, acceptor))
        }
        None => None,
    };
    let ws_listener = match &config.mqtt.websocket {
        Some(w) => {
            let acceptor = mqtt::ws_acceptor(w).map_err(StartError::MqttWsTls)?;
            Some((
                bind_mqtt(w.listen, "mqtt.websocket.listen").await?,
                acceptor,
            ))
        }
        None => None,
    };
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(bind_mqtt(addr, "metrics.listen").await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, a)| *a);
    let mqtt_ws_addr = ws_listener
        .as_ref()
        .map(|((_, a), acceptor)| (*a, acceptor.is_some()));
    let config_threads = config.mqtt.thread_count();
    let mqtt_addr = mqtt_listener.as_ref().map(|(_, a)| *a);
    let mqtts_addr = mqtts_listener.as_ref().map(|((_, a), _)| *a);
    let mut broker = broker::Broker::new(
        store.clone(),
        log.clone(),
        groups.clone(),
        config,
        node,
        sources,
        tiers,
    )
    .await
    .map_err(|source| StartError::Store {
        path: store_dir.display().to_string(),
        source,
    })?;
    broker.acl = acl;
    let broker = Arc::new(broker);
    let _ = broker.mqtt.set(mqtt_hub.clone());
    tracing::info!(topics = log.topic_count(), "store opened");
    tracing::info!(
        security_protocol = broker.config.kafka.security_protocol(),
        mutual_tls = broker
            .config
            .kafka
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some()),
        "kafka listener security"
    );
    let mqtt_threads = mqtt::Threads::start(
        config_threads,
        mqtt::Listeners {
            plain: mqtt_listener.map(|(l, _)| l),
            tls: mqtts_listener.map(|((l, _), acceptor)| (l, acceptor)),
            ws: ws_listener.map(|((l, _), acceptor)| (l, acceptor)),
        },
        mqtt_hub.clone(),
    )
    .map_err(|e| StartError::Mqtt(format!("mqtt threads: {e}")))?;
    let hub = mqtt_hub.clone();
    let serve = async move {
        // Dropping the serve future stops the MQTT threads and their connections.
        let _mqtt_threads = mqtt_threads;
        tokio::spawn(log::retention::run(log.clone(), retention_every));
        if let Some((l, _)) = metrics_listener {
            tokio::spawn(metrics::serve(l, log.clone()));
        }
        for t in log.all() {
            if let Err(e) = broker.sources.open(&t) {
                tracing::warn!(topic = %t.name, cause = %e, "S3-backed topic not served");
            }
            if t.mode() == log::StorageMode::Tiered {
                if let Err(e) = broker.tiers.open(&t) {
                    tracing::warn!(topic = %t.name, cause = %e, "tiered segments not loaded");
                }
            }
        }
        tokio::spawn(tier::run(broker.tiers.clone(), log.clone()));
        tokio::spawn(mqtt_hub.clone().watch_topics());
        let ticker = groups.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(100));
            loop {
                t.tick().await;
                ticker.tick();
            }
        });
        server::serve(listener, broker, kafka_tls).await;
    };
    Ok(Running {
        kafka_addr,
        mqtt_addr,
        mqtts_addr,
        mqtt_ws_addr,
        metrics_addr,
        serve: Box::pin(serve),
        mqtt: hub,
    })
}
