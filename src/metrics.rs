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

use mcpgw_core::{Event, Served};

use crate::abi;

/// Most distinct (server, tool) series; calls beyond fall in the `other` tool bucket.
const MAX_TOOL_SERIES: usize = 1000;

#[derive(Default)]
struct Ids {
    by_name: HashMap<String, u32>,
    tool_series: usize,
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

/// The id of metric `name`, defined on first use.
fn id(kind: u32, name: &str) -> Option<u32> {
    IDS.with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.by_name.get(name) {
            return Some(*id);
        }
        match abi::define_metric(kind, name) {
            Ok(id) => {
                ids.by_name.insert(name.to_owned(), id);
                Some(id)
            }
            Err(status) => {
                log::debug!("cannot define metric {name}: status {status}");
                None
            }
        }
    })
}

fn count(name: &str) {
    if let Some(id) = id(abi::METRIC_COUNTER, name) {
        let _ = abi::increment_metric(id, 1);
    }
}

fn gauge(name: &str, value: u64) {
    if let Some(id) = id(abi::METRIC_GAUGE, name) {
        let _ = abi::record_metric(id, value);
    }
}

/// The tool label of a call: its catalog name, or `other` past [`MAX_TOOL_SERIES`].
fn tool_series(server: &str, tool: &str) -> String {
    let name = format!(
        "mcpgw.server.{}.tool.{}.tool_calls_total",
        label(server),
        label(tool)
    );
    let known = IDS.with(|ids| {
        let Ok(mut ids) = ids.try_borrow_mut() else {
            return false;
        };
        if ids.by_name.contains_key(&name) {
            return true;
        }
        if ids.tool_series < MAX_TOOL_SERIES {
            ids.tool_series += 1;
            return true;
        }
        false
    });
    if known {
        name
    } else {
        format!("mcpgw.server.{}.tool.other.tool_calls_total", label(server))
    }
}

/// Counts an event of the request path.
pub fn observe(event: Event<'_>) {
    match event {
        Event::Request { method, served } => {
            let (outcome, code) = match served {
                Served::Answered => ("answered", None),
                Served::Routed => ("routed", None),
                Served::Error(code) => ("error", Some(code)),
            };
            let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
            count(&format!(
                "mcpgw.method.{}.outcome.{outcome}.code.{code}.requests_total",
                label(method)
            ));
        }
        Event::ToolCall { server, tool } => count(&tool_series(server, tool)),
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
    if let Some(id) = id(abi::METRIC_HISTOGRAM, "mcpgw.plugin_time_us") {
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
