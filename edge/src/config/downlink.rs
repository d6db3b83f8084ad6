//! `downlink`: the optional cloud-to-gateway MQTT session (`crate::downlink`); its keys,
//! defaults and validation. Errors name the key.

use serde::Deserialize;

use super::CloudTls;

/// `downlink`: an MQTT broker (the cloud's MQTT listener) whose messages on `filters` the
/// edge republishes to its local MQTT subscribers (commands, configuration, model updates).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownlinkConfig {
    /// `host:port` of the MQTT broker; empty: no downlink.
    pub broker: String,
    /// MQTT filters to subscribe to there.
    pub filters: Vec<String>,
    /// Client id of the downlink's persistent session; empty: `<edge_id>-downlink`.
    pub client_id: String,
    /// How long the broker keeps the session (and what arrives for it) while the edge is
    /// away, in seconds (MQTT 5 session expiry interval).
    pub session_expiry_secs: u32,
    /// MQTT keep alive in seconds (1..=65535).
    pub keep_alive_secs: u16,
    /// A connection attempt (TCP, TLS, CONNECT to CONNACK, SUBSCRIBE to SUBACK) gets this long.
    pub connect_timeout_ms: u64,
    /// Reconnect backoff: first delay (ms).
    pub backoff_initial_ms: u64,
    /// Reconnect backoff: largest delay (ms).
    pub backoff_max_ms: u64,
    /// User name and password; `None`: anonymous.
    pub credentials: Option<DownlinkLogin>,
    /// TLS to the broker (the same keys as `cloud.tls`); `None`: plain TCP.
    pub tls: Option<CloudTls>,
}

/// `downlink.credentials`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkLogin {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for DownlinkLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownlinkLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Default for DownlinkConfig {
    fn default() -> Self {
        DownlinkConfig {
            broker: String::new(),
            filters: Vec::new(),
            client_id: String::new(),
            session_expiry_secs: 7 * 24 * 3600,
            keep_alive_secs: 30,
            connect_timeout_ms: 10_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            credentials: None,
            tls: None,
        }
    }
}

impl DownlinkConfig {
    /// Whether a downlink is configured.
    pub fn enabled(&self) -> bool {
        !self.broker.is_empty()
    }

    /// Builds the TLS client, if any; the error names the key.
    pub fn tls_connector(&self) -> Result<Option<common::tls::Connector>, (&'static str, String)> {
        let Some(t) = &self.tls else {
            return Ok(None);
        };
        t.connector([
            "downlink.tls.ca",
            "downlink.tls.cert",
            "downlink.tls.key",
            "downlink.tls.server_name",
        ])
        .map(Some)
    }

    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            if !self.filters.is_empty() {
                return Err(("downlink.broker", "required with downlink.filters".into()));
            }
            return Ok(());
        }
        match self.broker.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return Err((
                    "downlink.broker",
                    format!("{:?} is not host:port", self.broker),
                ))
            }
        }
        if self.filters.is_empty() {
            return Err(("downlink.filters", "at least one filter is required".into()));
        }
        for f in &self.filters {
            if !crate::filter::is_valid_filter(f) || f.starts_with("$share/") {
                return Err(("downlink.filters", format!("invalid MQTT filter {f:?}")));
            }
        }
        if self.keep_alive_secs == 0 {
            return Err(("downlink.keep_alive_secs", "must be positive".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("downlink.connect_timeout_ms", "must be positive".into()));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err((
                "downlink.backoff_max_ms",
                "backoff_initial_ms must be positive and at most backoff_max_ms".into(),
            ));
        }
        if self.client_id.len() > 65_535 {
            return Err(("downlink.client_id", "longer than 65535 bytes".into()));
        }
        self.tls_connector()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn downlink_errors_name_the_key() {
        let c = Config::parse("", "e.yaml").unwrap();
        assert!(!c.downlink.enabled());
        let bad = [
            ("downlink:\n  filters: [a/#]\n", "downlink.broker"),
            ("downlink:\n  broker: nowhere\n  filters: [a/#]\n", "downlink.broker"),
            ("downlink:\n  broker: h:0\n  filters: [a/#]\n", "downlink.broker"),
            ("downlink:\n  broker: h:1883\n", "downlink.filters"),
            ("downlink:\n  broker: h:1883\n  filters: [a/#/b]\n", "downlink.filters"),
            ("downlink:\n  broker: h:1883\n  filters: [$share/g/a]\n", "downlink.filters"),
            (
                "downlink:\n  broker: h:1883\n  filters: [a]\n  keep_alive_secs: 0\n",
                "downlink.keep_alive_secs",
            ),
            (
                "downlink:\n  broker: h:1883\n  filters: [a]\n  backoff_max_ms: 1\n",
                "downlink.backoff_max_ms",
            ),
            (
                "downlink:\n  broker: h:1883\n  filters: [a]\n  tls:\n    ca: /nonexistent/ca.pem\n",
                "downlink.tls.ca",
            ),
            (
                "downlink:\n  broker: h:1883\n  filters: [a]\n  tls:\n    cert: /x.pem\n",
                "downlink.tls.key",
            ),
            ("downlink:\n  brokr: h:1883\n", "downlink"),
            ("downlink:\n  broker: h:1883\n  filters: [a]\n  credentials:\n    username: u\n", "downlink.credentials"),
        ];
        for (yaml, key) in bad {
            let e = Config::parse(yaml, "e.yaml").unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
        }
        let c = Config::parse(
            "downlink:\n  broker: cloud.example:2883\n  filters: [gw/+/cmd/#]\n  credentials:\n    username: u\n    password: hunter2\n",
            "e.yaml",
        )
        .unwrap();
        assert!(c.downlink.enabled());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
