//! The proxy-wasm edge of the MCP gateway. Contexts here only translate proxy callbacks into
//! events of [`mcpgw_core::Request`]; all decisions live in the pure core.

mod abi;
mod host;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use mcpgw_core::sync::ConfigSync;
use mcpgw_core::{Catalog, LogBudget, PluginConfig};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::host::{ControlProxy, HostLogger, ProxyHost};

/// How often each VM looks for a newly published configuration (and the poller renews its lease).
const TICK: Duration = Duration::from_millis(200);

static LOGGER: HostLogger = HostLogger;

proxy_wasm::main! {{
    // Not `proxy_wasm::set_log_level`: the SDK's logger and panic hook unwrap the host's status.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = abi::log(abi::LOG_CRITICAL, &format!("mcpgw panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(Gateway::default()));
}}

/// One per plugin per VM: holds the catalog built from the current configuration, and keeps it
/// in step with the sidecar when one is configured.
/// Interior mutability because streams are created through `&self`: a VM that has no catalog
/// yet adopts the published one when its first stream arrives.
#[derive(Default)]
struct Gateway {
    catalog: RefCell<Option<Rc<Catalog>>>,
    sync: RefCell<Option<ConfigSync>>,
    log_budget: Rc<LogBudget>,
    /// The sidecar (with `Bearer <sidecar.token>`): what the streams it lets through to the
    /// sidecar carry, and where upstream sessions are registered.
    sidecar: Option<Rc<mcpgw_core::config::SidecarLink>>,
}

impl Context for Gateway {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let response = ProxyHost::call_response(body_size);
        let catalog = self
            .sync
            .get_mut()
            .as_mut()
            .and_then(|sync| sync.on_response(&mut ControlProxy, token, &response));
        if let Some(catalog) = catalog {
            self.install(catalog);
        }
    }
}

impl RootContext for Gateway {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = abi::buffer(abi::PLUGIN_CONFIGURATION, 0, usize::MAX)
            .inspect_err(|status| log::error!("cannot read the plugin configuration: {status}"))
            .ok()
            .flatten()
            .unwrap_or_default();
        match parse_plugin_config(&raw) {
            Ok((catalog, sidecar)) => {
                if let Some(catalog) = catalog {
                    self.install(catalog);
                }
                self.sidecar = sidecar
                    .as_ref()
                    .and_then(|source| source.link())
                    .map(Rc::new);
                let sync = sidecar.map(|source| ConfigSync::new(source, host::owner_id()));
                let polls = sync.is_some();
                *self.sync.get_mut() = sync;
                if polls {
                    // Polling starts on the first tick: during configuration the cluster
                    // manager may not be ready for calls yet.
                    set_tick_period(TICK);
                }
                true
            }
            Err(e) => {
                log::error!("rejected plugin configuration: {e}");
                // Keep serving the last good configuration when there is one.
                self.catalog.get_mut().is_some()
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.catalog.borrow().is_none() {
            self.adopt_published();
        }
        Some(match self.catalog.borrow().as_ref() {
            Some(catalog) => Box::new(McpStream {
                request: mcpgw_core::Request::new(
                    Rc::clone(catalog),
                    Rc::clone(&self.log_budget),
                    self.sidecar.clone(),
                ),
                host: ProxyHost,
            }),
            None => Box::new(Unconfigured::default()),
        })
    }

    fn on_tick(&mut self) {
        let catalog = self
            .sync
            .get_mut()
            .as_mut()
            .and_then(|sync| sync.on_tick(&mut ControlProxy));
        if let Some(catalog) = catalog {
            self.install(catalog);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Gateway {
    /// Takes the document another VM of this process published, if there is one.
    fn adopt_published(&self) {
        let catalog = self
            .sync
            .borrow_mut()
            .as_mut()
            .and_then(|sync| sync.adopt_published(&mut ControlProxy));
        if let Some(catalog) = catalog {
            self.install(catalog);
        }
    }

    fn install(&self, catalog: Catalog) {
        for warning in &catalog.warnings {
            log::warn!("configuration {}: {warning}", catalog.version);
        }
        log::info!(
            "configuration {} active: {} servers, {} tools",
            catalog.version,
            catalog.servers.len(),
            catalog.tool_count()
        );
        *self.catalog.borrow_mut() = Some(Rc::new(catalog));
    }
}

fn set_tick_period(period: Duration) {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    let status = abi::set_tick_period(millis);
    if status != abi::OK {
        log::error!("cannot set the tick period: status {status}");
    }
}

/// The catalog of the inline document, if any, and the sidecar to follow, if any.
fn parse_plugin_config(
    raw: &[u8],
) -> Result<(Option<Catalog>, Option<mcpgw_core::config::SidecarSource>), String> {
    let config: PluginConfig =
        serde_json::from_slice(raw).map_err(|e| format!("plugin configuration: {e}"))?;
    if config.document.is_none() && config.sidecar.is_none() {
        return Err("plugin configuration: needs `document` or `sidecar`".into());
    }
    if let Some(sidecar) = &config.sidecar {
        sidecar.validate()?;
    }
    let catalog = config.document.map(Catalog::build).transpose()?;
    Ok((catalog, config.sidecar))
}

/// A stream of an MCP request.
struct McpStream {
    request: mcpgw_core::Request,
    host: ProxyHost,
}

impl Context for McpStream {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let response = ProxyHost::call_response(body_size);
        self.request
            .on_call_response(&mut self.host, token, response);
    }
}

impl HttpContext for McpStream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        action(
            self.request
                .on_request_headers(&mut self.host, end_of_stream),
        )
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(
            self.request
                .on_request_body(&mut self.host, size, end_of_stream),
        )
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        action(self.request.on_response_headers(&mut self.host))
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(
            self.request
                .on_response_body(&mut self.host, size, end_of_stream),
        )
    }
}

/// A stream on a VM without a configuration yet (see [`mcpgw_core::Unconfigured`]).
#[derive(Default)]
struct Unconfigured {
    stream: mcpgw_core::Unconfigured,
    host: ProxyHost,
}

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_request_headers(&mut self.host, end_of_stream),
        )
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_request_body(&mut self.host, size, end_of_stream),
        )
    }
}

fn action(action: mcpgw_core::Action) -> Action {
    match action {
        mcpgw_core::Action::Continue => Action::Continue,
        mcpgw_core::Action::Pause => Action::Pause,
    }
}
