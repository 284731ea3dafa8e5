//! The plugin's metrics, through the proxy-wasm metrics ABI: they show on Envoy's `/stats`
//! (`wasmcustom.mcpgw.…`) and `/stats/prometheus` (`mcpgw_…`) beside Envoy's own, summed over
//! the VMs of the process. Labels travel in the stat name, Istio/Envoy style
//! (`mcpgw.method.<m>.outcome.<o>.code.<c>.requests_total`), and the bootstrap's `stats_tags`
//! (sidecar/src/xds.rs, `STATS_TAGS`) turn them into Prometheus labels:
//! `mcpgw_requests_total{mcp_method="tools/call",mcp_outcome="routed",mcp_error_code="none"}`.
//! Every metric is documented in docs/observability.md.
//!
//! A metric is defined once per VM (the same name gives the same stat in every VM) and its id
//! cached; a host call that fails is logged once at debug and otherwise ignored: telemetry never
//! fails a request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use mcpgw_core::{Event, Served};

use crate::abi;

/// Most distinct (server, tool) series; calls beyond fall in the `other` tool bucket.
const MAX_TOOL_SERIES: usize = 1000;

/// FNV-1a: the hot-path look-ups hash a few short strings, where SipHash's setup dominates.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// Metric ids of this VM, defined on first use. The per-request ones are found without
/// formatting their names.
#[derive(Default)]
struct Ids {
    by_name: HashMap<String, u32>,
    requests: FastMap<(&'static str, Served), u32>,
    tools: FastMap<String, FastMap<String, u32>>,
    tool_series: usize,
    plugin_time: Option<u32>,
}

thread_local! {
    // One VM is one thread: this is the VM's cache.
    static IDS: RefCell<Ids> = RefCell::default();
}

/// A label value as it travels in a stat name: dots would split it, so they become `_`.
fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('.') {
        std::borrow::Cow::Owned(value.replace('.', "_"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

fn define(kind: u32, name: &str) -> Option<u32> {
    abi::define_metric(kind, name)
        .inspect_err(|status| log::debug!("cannot define metric {name}: status {status}"))
        .ok()
}

/// The id of metric `name`, defined on first use.
fn id(kind: u32, name: &str) -> Option<u32> {
    IDS.with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.by_name.get(name) {
            return Some(*id);
        }
        let id = define(kind, name)?;
        ids.by_name.insert(name.to_owned(), id);
        Some(id)
    })
}

fn count(name: &str) {
    if let Some(id) = id(abi::METRIC_COUNTER, name) {
        let _ = abi::increment_metric(id, 1);
    }
}

fn increment(id: Option<u32>) {
    if let Some(id) = id {
        let _ = abi::increment_metric(id, 1);
    }
}

fn gauge(name: &str, value: u64) {
    if let Some(id) = id(abi::METRIC_GAUGE, name) {
        let _ = abi::record_metric(id, value);
    }
}

/// `mcpgw_requests_total{mcp_method, mcp_outcome, mcp_error_code}`.
fn request_id(method: &'static str, served: Served) -> Option<u32> {
    IDS.with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.requests.get(&(method, served)) {
            return Some(*id);
        }
        let (outcome, code) = match served {
            Served::Answered => ("answered", None),
            Served::Routed => ("routed", None),
            Served::Error(code) => ("error", Some(code)),
        };
        let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        let name = format!(
            "mcpgw.method.{}.outcome.{outcome}.code.{code}.requests_total",
            label(method)
        );
        let id = define(abi::METRIC_COUNTER, &name)?;
        ids.requests.insert((method, served), id);
        Some(id)
    })
}

/// `mcpgw_tool_calls_total{mcp_server, mcp_tool}`: the catalog's names, or `other` past
/// [`MAX_TOOL_SERIES`].
fn tool_id(server: &str, tool: &str) -> Option<u32> {
    IDS.with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.tools.get(server).and_then(|tools| tools.get(tool)) {
            return Some(*id);
        }
        let counted = ids.tool_series < MAX_TOOL_SERIES;
        let name = format!(
            "mcpgw.server.{}.tool.{}.tool_calls_total",
            label(server),
            if counted { label(tool) } else { "other".into() }
        );
        let id = define(abi::METRIC_COUNTER, &name)?;
        if counted {
            ids.tool_series += 1;
        }
        ids.tools
            .entry(server.to_owned())
            .or_default()
            .insert(tool.to_owned(), id);
        Some(id)
    })
}

/// Counts an event of the request path.
pub fn observe(event: Event<'_>) {
    match event {
        Event::Request { method, served } => increment(request_id(method, served)),
        Event::ToolCall { server, tool } => increment(tool_id(server, tool)),
        Event::UpstreamOpened { server } => count(&format!(
            "mcpgw.server.{}.upstream_sessions_opened_total",
            label(server)
        )),
        Event::UpstreamReinit { server } => count(&format!(
            "mcpgw.server.{}.upstream_sessions_reinitialized_total",
            label(server)
        )),
        Event::UpstreamFailed { server } => count(&format!(
            "mcpgw.server.{}.upstream_session_failures_total",
            label(server)
        )),
        Event::SessionRefused { reason } => count(&format!(
            "mcpgw.reason.{}.session_refusals_total",
            reason.as_str()
        )),
    }
}

/// Time the plugin spent on one request, in microseconds (all its callbacks together).
pub fn plugin_time(micros: u64) {
    let id = IDS.with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if ids.plugin_time.is_none() {
            ids.plugin_time = define(abi::METRIC_HISTOGRAM, "mcpgw.plugin_time_us");
        }
        ids.plugin_time
    });
    if let Some(id) = id {
        let _ = abi::record_metric(id, micros);
    }
}

/// The configuration in force: the numeric tail of its version label (the sidecar's publish
/// counter; 0 when the label has none).
pub fn config_version(version: &str) {
    let tail = version.rsplit('.').next().unwrap_or_default();
    gauge("mcpgw.config_version", tail.parse().unwrap_or(0));
}

/// Seconds since this VM installed the configuration in force.
pub fn config_age(seconds: u64) {
    gauge("mcpgw.config_age_seconds", seconds);
}
