//! The sidecar's metrics, served on `GET /metrics` (OpenMetrics text, which Prometheus scrapes)
//! by the `prometheus-client` crate. Every metric is documented in docs/observability.md.
//!
//! `/metrics` needs no token: like `/v1/status` it holds no secret (server names, counts,
//! durations, the catalog's version number; never a URL, header, credential or session), and a
//! Prometheus scraper should not hold the plugin token, which opens the configuration document.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

pub fn server(name: &str) -> ServerLabel {
    ServerLabel {
        server: name.to_owned(),
    }
}

fn discovery_histogram() -> Histogram {
    // 5 ms .. ~20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

pub struct Metrics {
    registry: Registry,
    /// 1 while a server is in the catalog (discovered and healthy), 0 otherwise.
    pub server_up: Family<ServerLabel, Gauge>,
    pub server_tools: Family<ServerLabel, Gauge>,
    pub discovery_seconds: Family<ServerLabel, Histogram, fn() -> Histogram>,
    pub discovery_failures: Family<ServerLabel, Counter>,
    pub catalog_version: Gauge,
    pub catalog_publishes: Counter,
    pub pollers: Gauge,
    pub notification_streams: Gauge,
    pub config_reloads: Counter,
    pub config_rejections: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("mcpgw_sidecar");
        let m = Self {
            registry: Registry::default(),
            server_up: Family::default(),
            server_tools: Family::default(),
            discovery_seconds: Family::new_with_constructor(
                discovery_histogram as fn() -> Histogram,
            ),
            discovery_failures: Family::default(),
            catalog_version: Gauge::default(),
            catalog_publishes: Counter::default(),
            pollers: Gauge::default(),
            notification_streams: Gauge::default(),
            config_reloads: Counter::default(),
            config_rejections: Counter::default(),
        };
        registry.register(
            "server_up",
            "1 while the server is in the catalog (discovered, healthy), 0 otherwise",
            m.server_up.clone(),
        );
        registry.register(
            "server_tools",
            "Tools the server contributes to the catalog",
            m.server_tools.clone(),
        );
        registry.register(
            "discovery_duration_seconds",
            "Time of one discovery pass (every list of the server), successful or not",
            m.discovery_seconds.clone(),
        );
        registry.register(
            "discovery_failures",
            "Failed connections, discovery passes and health checks that ended a server's session",
            m.discovery_failures.clone(),
        );
        registry.register(
            "catalog_version",
            "Publish counter of the configuration document in force (the tail of its version)",
            m.catalog_version.clone(),
        );
        registry.register(
            "catalog_publishes",
            "Configuration documents published since the sidecar started",
            m.catalog_publishes.clone(),
        );
        registry.register(
            "plugin_pollers",
            "Plugin long polls for the configuration waiting now (about one per Envoy poller)",
            m.pollers.clone(),
        );
        registry.register(
            "notification_streams",
            "Client notification streams (GET on the MCP path) open now",
            m.notification_streams.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration file edits applied",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_rejections",
            "Configuration file edits rejected (the previous configuration stays)",
            m.config_rejections.clone(),
        );
        Self { registry, ..m }
    }

    /// The scrape: OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        out
    }

    /// A server left the configuration: its series go.
    pub fn forget_server(&self, name: &str) {
        let label = server(name);
        self.server_up.remove(&label);
        self.server_tools.remove(&label);
        self.discovery_seconds.remove(&label);
        self.discovery_failures.remove(&label);
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts one in `gauge` while it lives.
pub struct InFlight(&'static Gauge);

impl InFlight {
    pub fn new(gauge: &'static Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
