//! The "wasm floor" of the benchmarks: the least a body-routing proxy-wasm filter can do.
//!
//! It pauses in the request headers (as a gateway that routes on the JSON-RPC body must), lets Envoy
//! buffer the body, copies it into the VM once at end of stream (as any parser must), and continues.
//! No parsing, no rewriting, no re-routing: what is left is the cost of the Wasm host boundary, the
//! context objects and the body copy, which every proxy-wasm MCP gateway pays.
//!
//! For calibration only (`bench/calibrate.py`), the plugin configuration may add host calls, as
//! `key=value` pairs separated by `;` (an empty configuration or `{}` is the floor itself):
//! `get_headers=1` reads the whole request header map once, `set_headers=N` replaces N request
//! headers at end of stream, `set_map=N` writes the whole request header map once instead (the
//! headers read plus N), `set_body=1` writes the body back, `clear_route_cache=1` calls the
//! foreign function, `resp_headers=N` replaces N response headers; the telemetry host calls of the
//! mcpgw plugin (docs/observability.md): `properties=N` sets N filter-state properties,
//! `counters=N` increments N counters, `shared=N` reads a 100-byte shared-data value N times (the
//! plugin's session checks), `histogram=1` records one histogram sample, `clock=N` reads
//! the clock N times.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot::default()) });
}}

/// Extra host calls per request (all zero for the floor proper).
#[derive(Clone, Copy, Default)]
struct Extra {
    get_headers: bool,
    set_headers: usize,
    set_map: usize,
    set_body: bool,
    clear_route_cache: bool,
    resp_headers: usize,
    properties: usize,
    counters: usize,
    histogram: bool,
    clock: usize,
    shared: usize,
}

impl Extra {
    fn parse(text: &str) -> Extra {
        let mut extra = Extra::default();
        for pair in text.split(';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let n: usize = value.trim().parse().unwrap_or(0);
            match key.trim() {
                "get_headers" => extra.get_headers = n > 0,
                "set_headers" => extra.set_headers = n,
                "set_map" => extra.set_map = n,
                "set_body" => extra.set_body = n > 0,
                "clear_route_cache" => extra.clear_route_cache = n > 0,
                "resp_headers" => extra.resp_headers = n,
                "properties" => extra.properties = n,
                "counters" => extra.counters = n,
                "histogram" => extra.histogram = n > 0,
                "clock" => extra.clock = n,
                "shared" => extra.shared = n,
                _ => {}
            }
        }
        extra
    }
}

#[derive(Default)]
struct FloorRoot {
    extra: Extra,
    /// Metric ids, defined once per VM: counters, then the histogram.
    metrics: Vec<u32>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.extra = Extra::parse(&String::from_utf8_lossy(&config));
        self.metrics = (0..self.extra.counters)
            .filter_map(|i| {
                hostcalls::define_metric(MetricType::Counter, &format!("floor.counter{i}")).ok()
            })
            .collect();
        if self.extra.histogram {
            if let Ok(id) = hostcalls::define_metric(MetricType::Histogram, "floor.histogram") {
                self.metrics.push(id);
            }
        }
        if self.extra.shared > 0 {
            let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&[b'x'; 100]), None);
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            body_len: 0,
            headers: Vec::new(),
            extra: self.extra,
            metrics: self.metrics.clone(),
        }))
    }
}

struct Floor {
    /// Bytes read at end of stream; kept so the read cannot be optimised away.
    body_len: usize,
    /// The request headers, when read (`get_headers`).
    headers: Vec<(String, Vec<u8>)>,
    extra: Extra,
    metrics: Vec<u32>,
}

const SHARED_KEY: &str = "floor.shared";

const PROPERTY_NAMES: [&str; 4] = ["floor_p0", "floor_p1", "floor_p2", "floor_p3"];

const HEADER_NAMES: [&str; 8] = [
    "x-floor-0",
    "x-floor-1",
    "x-floor-2",
    "x-floor-3",
    "x-floor-4",
    "x-floor-5",
    "x-floor-6",
    "x-floor-7",
];

fn set_headers(map: MapType, n: usize) {
    for name in HEADER_NAMES.iter().cycle().take(n) {
        let _ = hostcalls::set_map_value_bytes(map, name, Some(b"value"));
    }
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.extra.get_headers {
            self.headers =
                hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
            self.body_len = self.headers.len();
        }
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            self.body_len = body.len();
            if self.extra.set_body {
                self.set_http_request_body(0, body_size, &body);
            }
        }
        set_headers(MapType::HttpRequestHeaders, self.extra.set_headers);
        if self.extra.set_map > 0 {
            let mut map: Vec<(&str, &[u8])> = self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            map.extend(
                HEADER_NAMES
                    .iter()
                    .cycle()
                    .take(self.extra.set_map)
                    .map(|n| (*n, b"value".as_slice())),
            );
            let _ = hostcalls::set_map_bytes(MapType::HttpRequestHeaders, map);
        }
        if self.extra.clear_route_cache {
            let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        }
        for name in PROPERTY_NAMES.iter().take(self.extra.properties) {
            let _ = hostcalls::set_property(vec![*name], Some(b"tools/call"));
        }
        let counters = self.extra.counters.min(self.metrics.len());
        for id in self.metrics.iter().take(counters) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
        for _ in 0..self.extra.shared {
            if let Ok((Some(value), _)) = hostcalls::get_shared_data(SHARED_KEY) {
                self.body_len ^= value.len();
            }
        }
        for _ in 0..self.extra.clock {
            if let Ok(now) = hostcalls::get_current_time() {
                let nanos = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                self.body_len ^= (nanos & 1) as usize;
            }
        }
        if self.extra.histogram {
            if let Some(id) = self.metrics.last() {
                let _ = hostcalls::record_metric(*id, self.body_len as u64);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        set_headers(MapType::HttpResponseHeaders, self.extra.resp_headers);
        Action::Continue
    }
}
