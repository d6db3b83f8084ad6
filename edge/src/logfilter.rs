//! Drops two ERROR events rumqttd 0.20 logs for a normal client disconnect.
//!
//! A client that sends DISCONNECT and then closes (mosquitto_pub, paho, most devices) is
//! seen twice by rumqttd's router: once for the packet, once when the link ends. The
//! second one logs `no-connection id N is already gone`, and the link logs `router-drop
//! error=Recv(Disconnected)`, both at ERROR, on every such disconnect. They are not faults
//! (the session ended as the client asked), so this filter drops exactly those two events;
//! every other rumqttd event passes.
//!
//! rumqttd's spans are dropped by a separate, global filter ([`subscriber`]): rumqttd
//! opens an ERROR-level span per publish (`publish{topic=.. pkid=..}`), which the default
//! level lets through, so every publish paid for a registry slot and a Debug formatting
//! of its topic only to prefix rumqttd's rare log lines. A per-layer filter cannot drop
//! them: nested behind the `EnvFilter` (`.with_filter(env).with_filter(this)`), it left
//! the inner filter's bit unset, so the registry still allocated, entered and closed
//! every span (about 7% of the edge's CPU in a QoS 1 ingest profile). The global filter
//! marks those callsites `Interest::never` once, so the span is never built.
//!
//! The `EnvFilter` stays a per-layer filter: made global (so rumqttd's debug events
//! would cost nothing either), tracing-subscriber 0.3.23 left its per-layer filter state
//! dirty after this filter dropped a benign event, and its debug assertion panicked
//! rumqttd's router thread on the next event (a client's disconnect).

use std::fmt::Debug;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

/// The edge's log subscriber: lines on stderr filtered by `env`, rumqttd's spans never
/// built, the two benign disconnect errors dropped.
pub fn subscriber(env: EnvFilter, ansi: bool) -> impl Subscriber + Send + Sync + 'static {
    let no_rumqttd_spans = tracing_subscriber::filter::filter_fn(|meta: &Metadata<'_>| {
        !(meta.is_span() && meta.target().starts_with("rumqttd"))
    });
    tracing_subscriber::registry().with(no_rumqttd_spans).with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(env)
            .with_filter(QuietDisconnects),
    )
}

/// The per-layer filter (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietDisconnects;

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

/// Whether an event of `target` with these fields is one of the two benign ones.
fn benign(target: &str, message: &str, error: &str) -> bool {
    let message = message.trim_matches('"');
    (target == "rumqttd::server::broker"
        && message == "router-drop"
        && error.contains("Disconnected"))
        || (target == "rumqttd::router::routing"
            && message.starts_with("no-connection id ")
            && message.ends_with(" is already gone"))
}

impl<S> Filter<S> for QuietDisconnects {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let target = event.metadata().target();
        // Both benign events are at ERROR.
        if !target.starts_with("rumqttd") || *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        !benign(target, &f.message, &f.error)
    }
}

#[cfg(test)]
mod tests {
    use super::{benign, subscriber};

    /// rumqttd's per-publish span is never built (not merely left unprinted); other
    /// spans still are.
    #[test]
    fn rumqttd_spans_are_never_built() {
        let sub = subscriber("info,rumqttd=warn".parse().unwrap(), false);
        tracing::subscriber::with_default(sub, || {
            let rumqttd = tracing::error_span!(target: "rumqttd::server::broker", "publish");
            assert!(rumqttd.is_disabled(), "rumqttd span built");
            let ours = tracing::info_span!(target: "edge::ingest", "ours");
            assert!(!ours.is_disabled(), "edge span dropped");
        });
    }

    #[test]
    fn only_the_two_disconnect_events() {
        assert!(benign(
            "rumqttd::server::broker",
            "router-drop",
            "Recv(Disconnected)"
        ));
        assert!(benign(
            "rumqttd::router::routing",
            "no-connection id 3 is already gone",
            ""
        ));
        assert!(!benign(
            "rumqttd::server::broker",
            "router-drop",
            "Send(Full)"
        ));
        assert!(!benign(
            "rumqttd::server::broker",
            "disconnected",
            "Recv(Disconnected)"
        ));
        assert!(!benign(
            "rumqttd::router::routing",
            "Failed to append to commitlog",
            ""
        ));
    }
}
