//! The proxy-wasm edge of the MCP gateway. Contexts here only translate proxy callbacks into
//! events of [`mcpgw_core::Request`]; all decisions live in the pure core.

mod abi;
mod host;
mod metrics;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use mcpgw_core::sync::ConfigSync;
use mcpgw_core::{Catalog, Host, LogBudget, PluginConfig};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::host::{ControlProxy, HostLogger, ProxyHost};

/// How often each VM looks for a newly published configuration (and the poller renews its lease).
const TICK: Duration = Duration::from_millis(200);

/// What a stream puts on its VM's wake-up queue to have the root start the openings ahead of
/// need it asked for (no opening's outcome looks like it).
const WARM_UP: &[u8] = b"warm-up";

/// One stream in this many has its time inside the plugin measured (`mcpgw.plugin_time_us`).
const TIMED_ONE_IN: u32 = 16;

static LOGGER: HostLogger = HostLogger;

proxy_wasm::main! {{
    // Not `proxy_wasm::set_log_level`: the SDK's logger and panic hook unwrap the host's status.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = abi::log(abi::LOG_CRITICAL, &format!("mcpgw panic: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| Box::new(Gateway::new(context_id)));
}}

/// A stream's request, as its stream and the root context hold it.
type Shared = RefCell<mcpgw_core::Request>;

/// What the root context and the streams of one VM share, to wake streams that wait for another
/// stream's upstream session opening (see `mcpgw_core::opening` and docs/architecture.md,
/// "One opening per upstream session").
///
/// Proxy-wasm has no way to call a stream back from elsewhere: only the root context hears of
/// the VM's shared queue (`on_queue_ready`) and ticks. So the root drives waiting streams
/// itself, with the stream as the effective context. Calls it dispatches then are registered by
/// the SDK under the root (its dispatcher keys a call's answer by the context that was running),
/// so their answers reach the root too, which routes them back to the stream.
#[derive(Default)]
struct Vm {
    root_context: Cell<u32>,
    wake_queue: Cell<Option<u32>>,
    /// Streams waiting for another stream's opening, by context id.
    waiting: RefCell<HashMap<u32, Weak<Shared>>>,
    /// Calls dispatched while the root drove a stream: their token, that stream.
    routed: RefCell<HashMap<u32, (u32, Weak<Shared>)>>,
    /// The plugin's `telemetry` switch (metrics, access-log fields).
    telemetry: Cell<bool>,
    /// Streams created so far, to time one in [`TIMED_ONE_IN`] (see [`Vm::timed`]).
    streams: Cell<u32>,
    /// Upstream-session openings ahead of need that streams asked for, to be started by the
    /// root context (so that their calls outlive the stream, and their answers reach the root).
    warm_ups: RefCell<Vec<mcpgw_core::Request>>,
    /// Openings ahead of need under way, by address (they have no stream to own them).
    warming: RefCell<HashMap<usize, Rc<Shared>>>,
}

impl Vm {
    fn host(&self, context: u32) -> ProxyHost {
        ProxyHost::new(
            context,
            self.root_context.get(),
            self.wake_queue.get(),
            self.telemetry.get(),
        )
    }

    /// Whether a new stream's callbacks are timed for `mcpgw.plugin_time_us`: with telemetry on,
    /// one stream in [`TIMED_ONE_IN`]. Each reading of the clock is a host call (two per
    /// callback); a sample of the streams gives the same distribution for a fraction of the cost.
    fn timed(&self) -> bool {
        let n = self.streams.get().wrapping_add(1);
        self.streams.set(n);
        self.telemetry.get() && n.is_multiple_of(TIMED_ONE_IN)
    }

    /// Keeps the waiting list in step with a stream's stage.
    fn note(&self, context: u32, request: &Rc<Shared>, waiting: bool) {
        let mut list = self.waiting.borrow_mut();
        if waiting {
            list.insert(context, Rc::downgrade(request));
        } else {
            list.remove(&context);
        }
    }
}

/// One per plugin per VM: holds the catalog built from the current configuration, and keeps it
/// in step with the sidecar when one is configured.
/// Interior mutability because streams are created through `&self`: a VM that has no catalog
/// yet adopts the published one when its first stream arrives.
struct Gateway {
    catalog: RefCell<Option<Rc<Catalog>>>,
    sync: RefCell<Option<ConfigSync>>,
    log_budget: Rc<LogBudget>,
    /// The sidecar (with `Bearer <sidecar.token>`): what the streams it lets through to the
    /// sidecar carry, and where upstream sessions are registered.
    sidecar: Option<Rc<mcpgw_core::config::SidecarLink>>,
    /// Installed without `allow_on_headers_stop_iteration` (`"install": "wasm_plugin"`).
    headers_only: bool,
    vm: Rc<Vm>,
    /// This VM's random name (poller lease, wake-up queue): drawn once, `None` without
    /// randomness.
    identity: Option<Option<String>>,
    /// When the configuration in force was installed (ms, proxy clock), and the age last
    /// reported (s), for the `mcpgw.config_age_seconds` gauge.
    installed_ms: Cell<u64>,
    reported_age: Cell<Option<u64>>,
}

impl Gateway {
    fn new(context_id: u32) -> Self {
        let vm = Vm::default();
        vm.root_context.set(context_id);
        Self {
            catalog: RefCell::default(),
            sync: RefCell::default(),
            log_budget: Rc::default(),
            sidecar: None,
            headers_only: false,
            vm: Rc::new(vm),
            identity: None,
            installed_ms: Cell::new(0),
            reported_age: Cell::new(None),
        }
    }

    /// This VM's name, and its wake-up queue registered under it, once.
    fn identity(&mut self) -> Option<String> {
        if let Some(identity) = &self.identity {
            return identity.clone();
        }
        let identity = host::owner_id();
        if let Some(id) = &identity {
            match abi::register_shared_queue(&format!("mcpgw.wake.{id}")) {
                Ok(queue) => self.vm.wake_queue.set(Some(queue)),
                Err(status) => log::warn!(
                    "cannot register the wake-up queue (status {status}): streams waiting for an \
                     upstream session look again on every tick instead"
                ),
            }
        }
        self.identity = Some(identity.clone());
        identity
    }

    /// Drives a stream from the root context, the stream being the effective context; calls it
    /// dispatches meanwhile are routed back to it when answered.
    fn drive(
        &self,
        context: u32,
        request: &Weak<Shared>,
        f: impl FnOnce(&mut mcpgw_core::Request, &mut ProxyHost),
    ) {
        let Some(rc) = request.upgrade() else {
            self.vm.waiting.borrow_mut().remove(&context);
            return;
        };
        if abi::set_effective_context(context) != abi::OK {
            // The stream is gone.
            self.vm.waiting.borrow_mut().remove(&context);
            return;
        }
        if let Ok(mut stream) = rc.try_borrow_mut() {
            let mut host = self.vm.host(context);
            f(&mut stream, &mut host);
            let mut routed = self.vm.routed.borrow_mut();
            for token in host.dispatched.drain(..) {
                routed.insert(token, (context, Weak::clone(request)));
            }
            drop(routed);
            self.vm.note(context, &rc, stream.is_waiting());
        }
        let status = abi::set_effective_context(self.vm.root_context.get());
        if status != abi::OK {
            log::warn!("cannot return to the root context (status {status})");
        }
    }

    /// Starts the openings ahead of need streams asked for, on the root context: their calls
    /// are the root's, so they outlive the streams and their answers come back here.
    fn start_warm_ups(&self) {
        let requests = std::mem::take(&mut *self.vm.warm_ups.borrow_mut());
        let root = self.vm.root_context.get();
        for request in requests {
            let request = Rc::new(RefCell::new(request));
            self.drive(root, &Rc::downgrade(&request), |warm, host| {
                warm.start_warm_up(host)
            });
            if request.try_borrow().is_ok_and(|warm| warm.is_opening()) {
                let at = Rc::as_ptr(&request) as usize;
                self.vm.warming.borrow_mut().insert(at, request);
            }
        }
    }

    /// Lets go of an opening ahead of need once it is over.
    fn forget_if_warm(&self, request: &Weak<Shared>) {
        if let Some(request) = request.upgrade() {
            if request.try_borrow().is_ok_and(|warm| !warm.is_opening()) {
                let at = Rc::as_ptr(&request) as usize;
                self.vm.warming.borrow_mut().remove(&at);
            }
        }
    }

    /// Wakes this VM's waiting streams: with an opening's outcome, or (`None`) on the tick.
    fn wake_waiting(&self, message: Option<&[u8]>) {
        let waiting: Vec<(u32, Weak<Shared>)> = self
            .vm
            .waiting
            .borrow()
            .iter()
            .map(|(context, request)| (*context, Weak::clone(request)))
            .collect();
        for (context, request) in waiting {
            self.drive(context, &request, |stream, host| {
                stream.on_wake(host, message)
            });
        }
    }
}

impl Context for Gateway {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let routed = self.vm.routed.borrow_mut().remove(&token);
        if let Some((context, request)) = routed {
            self.drive(context, &request, |stream, host| {
                let response = ProxyHost::call_response(body_size);
                stream.on_call_response(host, token, response);
            });
            self.forget_if_warm(&request);
            return;
        }
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
            Ok(Configured {
                catalog,
                sidecar,
                install,
                telemetry,
            }) => {
                self.headers_only = install == mcpgw_core::config::Install::WasmPlugin;
                self.vm.telemetry.set(telemetry);
                if let Some(catalog) = catalog {
                    self.install(catalog);
                }
                self.sidecar = sidecar
                    .as_ref()
                    .and_then(|source| source.link())
                    .map(Rc::new);
                let identity = self.identity();
                *self.sync.get_mut() = sidecar.map(|source| ConfigSync::new(source, identity));
                // Polling starts on the first tick: during configuration the cluster manager may
                // not be ready for calls yet. The tick also looks after waiting streams.
                set_tick_period(TICK);
                true
            }
            Err(e) => {
                log::error!("rejected plugin configuration: {e}");
                // Keep serving the last good configuration when there is one.
                self.catalog.get_mut().is_some()
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.catalog.borrow().is_none() {
            self.adopt_published();
        }
        Some(match self.catalog.borrow().as_ref() {
            Some(catalog) => Box::new(McpStream {
                request: Rc::new(RefCell::new(
                    mcpgw_core::Request::new(
                        Rc::clone(catalog),
                        Rc::clone(&self.log_budget),
                        self.sidecar.clone(),
                    )
                    .headers_only(self.headers_only),
                )),
                host: self.vm.host(context_id),
                context: context_id,
                vm: Rc::clone(&self.vm),
                timed: self.vm.timed(),
                busy_nanos: 0,
            }),
            None => Box::new(Unconfigured {
                stream: mcpgw_core::Unconfigured::new(self.headers_only),
                ..Unconfigured::default()
            }),
        })
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.start_warm_ups();
        loop {
            match abi::dequeue_shared_queue(queue_id) {
                Ok(Some(message)) if message == WARM_UP => {}
                Ok(Some(message)) => self.wake_waiting(Some(&message)),
                Ok(None) => break,
                Err(status) => {
                    log::debug!("wake-up queue {queue_id}: status {status}");
                    break;
                }
            }
        }
    }

    fn on_tick(&mut self) {
        self.report_config_age();
        self.start_warm_ups();
        if !self.vm.waiting.borrow().is_empty() {
            self.wake_waiting(None);
        }
        // Calls of streams that went away are never answered.
        self.vm
            .routed
            .borrow_mut()
            .retain(|_, (_, request)| request.strong_count() > 0);
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
        if self.vm.telemetry.get() {
            metrics::config_version(&catalog.version);
            self.installed_ms.set(now_millis());
            self.reported_age.set(None);
            self.report_config_age();
        }
        *self.catalog.borrow_mut() = Some(Rc::new(catalog));
    }

    /// Sets `mcpgw.config_age_seconds` when it changed (once a second at most).
    fn report_config_age(&self) {
        if !self.vm.telemetry.get() || self.installed_ms.get() == 0 {
            return;
        }
        let age = now_millis().saturating_sub(self.installed_ms.get()) / 1000;
        if self.reported_age.get() != Some(age) {
            self.reported_age.set(Some(age));
            metrics::config_age(age);
        }
    }
}

fn now_nanos() -> u64 {
    abi::current_time_nanos().unwrap_or(0)
}

fn now_millis() -> u64 {
    abi::current_time_nanos().unwrap_or(0) / 1_000_000
}

fn set_tick_period(period: Duration) {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    let status = abi::set_tick_period(millis);
    if status != abi::OK {
        log::error!("cannot set the tick period: status {status}");
    }
}

/// What the plugin configuration asks for.
struct Configured {
    /// The inline document's catalog, if any.
    catalog: Option<Catalog>,
    /// The sidecar to follow, if any.
    sidecar: Option<mcpgw_core::config::SidecarSource>,
    install: mcpgw_core::config::Install,
    /// Metrics and access-log fields on or off.
    telemetry: bool,
}

fn parse_plugin_config(raw: &[u8]) -> Result<Configured, String> {
    let config: PluginConfig = mcpgw_core::jsonrpc::from_json_bytes(raw)
        .map_err(|e| format!("plugin configuration: {e}"))?;
    if config.document.is_none() && config.sidecar.is_none() {
        return Err("plugin configuration: needs `document` or `sidecar`".into());
    }
    if let Some(sidecar) = &config.sidecar {
        sidecar.validate()?;
    }
    let catalog = config.document.map(Catalog::build).transpose()?;
    Ok(Configured {
        catalog,
        sidecar: config.sidecar,
        install: config.install,
        telemetry: config.telemetry,
    })
}

/// A stream of an MCP request. The request is shared (weakly) with the root context, which
/// drives it while it waits for another stream's upstream session opening.
struct McpStream {
    request: Rc<Shared>,
    host: ProxyHost,
    context: u32,
    vm: Rc<Vm>,
    /// This stream's callbacks are timed (see [`Vm::timed`]).
    timed: bool,
    /// Time spent in this stream's callbacks so far (when timed).
    busy_nanos: u64,
}

impl McpStream {
    fn drive<T>(
        &mut self,
        f: impl FnOnce(&mut mcpgw_core::Request, &mut ProxyHost) -> T,
    ) -> Option<T> {
        let Ok(mut request) = self.request.try_borrow_mut() else {
            log::error!("stream {} is already being driven", self.context);
            return None;
        };
        let start = if self.timed { now_nanos() } else { 0 };
        let out = f(&mut request, &mut self.host);
        if self.timed {
            self.busy_nanos += now_nanos().saturating_sub(start);
        }
        // The SDK routes the answers of this stream's own calls to it.
        self.host.dispatched.clear();
        self.vm
            .note(self.context, &self.request, request.is_waiting());
        let warm_ups = request.take_warm_ups();
        drop(request);
        if !warm_ups.is_empty() {
            self.vm.warm_ups.borrow_mut().extend(warm_ups);
            // The root starts them on its next callback: at once through the wake-up queue,
            // else on the tick.
            if let Some(queue) = self.host.wake_address() {
                self.host.wake(queue, WARM_UP);
            }
        }
        Some(out)
    }

    fn act(
        &mut self,
        f: impl FnOnce(&mut mcpgw_core::Request, &mut ProxyHost) -> mcpgw_core::Action,
    ) -> Action {
        self.drive(f).map_or(Action::Continue, action)
    }
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
        self.drive(|request, host| request.on_call_response(host, token, response));
    }

    fn on_done(&mut self) -> bool {
        self.drive(|request, host| request.on_done(host));
        self.vm.waiting.borrow_mut().remove(&self.context);
        if self.timed && self.busy_nanos > 0 {
            metrics::plugin_time(self.busy_nanos / 1000);
        }
        true
    }
}

impl HttpContext for McpStream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        fault_injection::trap_if_asked();
        self.act(|request, host| request.on_request_headers(host, end_of_stream))
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.act(|request, host| request.on_request_body(host, size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.act(|request, host| request.on_response_headers(host))
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.act(|request, host| request.on_response_body(host, size, end_of_stream))
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

/// Test builds only (`--features fault-injection`, never in a released plugin): a request carrying
/// `x-mcpgw-test-trap: 1` traps the VM, so the end-to-end tests can measure what Envoy's
/// `FAIL_RELOAD` costs under load (tests/e2e/test_faults.py).
#[cfg(feature = "fault-injection")]
mod fault_injection {
    pub fn trap_if_asked() {
        let asked = proxy_wasm::hostcalls::get_map_value(
            proxy_wasm::types::MapType::HttpRequestHeaders,
            "x-mcpgw-test-trap",
        );
        if matches!(asked, Ok(Some(v)) if v == "1") {
            std::process::abort();
        }
    }
}
