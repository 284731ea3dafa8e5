//! One client request as a small state machine over [`Host`]: classify the headers, read the
//! JSON-RPC message once, then answer locally or route to an upstream (opening its session first
//! when needed), and fix up the answer on the way back.

use std::rc::Rc;

use crate::batch::{self, Batch, Progress};
use crate::budget::LogBudget;
use crate::catalog::{Catalog, ForwardHeaders, ListKind};
use crate::config::{
    OpenUpstreamSessions, ServerConfig, SidecarLink, ROUTING_ONLY_HEADERS, SIDECAR_NOTIFY_PATH,
    SIDECAR_STREAMS_PATH, SUPPORTED_PROTOCOL_VERSIONS,
};
use crate::error::GatewayError;
use crate::host::{CallResponse, Event, Field, Host, Level, Refusal, Served};
use crate::jsonrpc::{self, Message, Params};
use crate::opening::{self, Attempt, Claim, Outcome};
use crate::relay::SseRelay;
use crate::route::{required_str, Call, Destination};
use crate::session::{Claims, Session};
use crate::stateless::{self, Expect};
use crate::upstream::{self, UpstreamSession};
use serde_json::value::RawValue;

/// What the proxy does with the stream after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// What a request answers once the gateway's own calls are done.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// This status, no body (DELETE: 200; relayed notifications: 202).
    Empty(u16),
    /// A JSON-RPC result `{}` (logging/setLevel).
    Result,
}

/// What a call does once it has an upstream session: an explicit continuation, carried by every
/// stage that obtains the session.
#[derive(Debug)]
enum AfterOpening {
    /// Go on through Envoy's routes (the request is held in its body phase).
    Forward,
    /// Replay through `dispatch` and answer with the replay's result: the routed attempt found
    /// the cached upstream session `stale` gone (its answer is held back meanwhile).
    Replay { stale: String },
    /// An MCP 2026-07-28 call routed on its headers alone (installed without
    /// `allow_on_headers_stop_iteration`): set the routing headers and let the headers go on;
    /// the body, checked against `expect`, follows (see [`Stage::Stateless`]).
    Headers { expect: Box<Expect> },
    /// Nothing: the session is opened ahead of the client's first call
    /// (`gateway.open_upstream_sessions: on_initialize`), and cached for it.
    Warm,
}

impl AfterOpening {
    /// A cached upstream session this continuation can use.
    fn accepts(&self, upstream: &UpstreamSession) -> bool {
        match self {
            AfterOpening::Forward | AfterOpening::Headers { .. } | AfterOpening::Warm => true,
            AfterOpening::Replay { stale } => upstream.session_id != *stale,
        }
    }
}

/// A call waiting for its upstream session, and what it does with it.
#[derive(Debug)]
struct Pending {
    call: Call,
    then: AfterOpening,
}

/// The session is there, or the stage says what the call waits for.
// A return value, moved out at once: boxing `Ready` would cost an allocation per routed call.
#[allow(clippy::large_enum_variant)]
enum Obtained {
    Ready(Pending, UpstreamSession),
    Underway,
}

/// The relayed notifications' `x-mcp-method` (a static string for the header).
fn method_header(method: &str) -> &'static str {
    match method {
        "notifications/cancelled" => "notifications/cancelled",
        "notifications/progress" => "notifications/progress",
        _ => "notifications/roots/list_changed",
    }
}

/// RFC 5424 severities, as MCP names them.
const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Headers only the gateway may set (client copies are removed on every path): the routing
/// headers upstream routes match on, and the client session a vouched notification stream is for.
/// The policy headers among them (`x-mcp-toolname` and the rest) are what an authorization
/// filter after the plugin (Envoy `rbac`, `ext_authz`, an Istio AuthorizationPolicy) decides on
/// (docs/governance.md).
const ROUTING_HEADERS: [&str; 8] = [
    "x-mcp-servername",
    "x-mcp-toolname",
    "x-mcp-method",
    "x-mcp-promptname",
    "x-mcp-resourceuri",
    "x-mcp-annotation-hints",
    SESSION_HEADER,
    LISTEN_HEADER,
];

/// Marks an MCP 2026-07-28 `subscriptions/listen` the plugin vouched for: the route to the
/// sidecar, which serves the subscription stream, matches it.
pub const LISTEN_HEADER: &str = "x-mcpgw-listen";

/// Names the client session on a notification stream the plugin vouched for (the sidecar merges
/// that session's upstream GET streams into it).
pub const SESSION_HEADER: &str = "x-mcpgw-session";

/// Client headers that carry trace context: copied onto the gateway's own calls made for a
/// client request (upstream session openings), so a trace shows them as part of the call.
const TRACE_HEADERS: [&str; 10] = [
    "traceparent",
    "tracestate",
    "baggage",
    "x-request-id",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// MCP methods the gateway knows: a request's method label in metrics and access logs is one of
/// these, or `other` (bounded cardinality, whatever clients send).
const KNOWN_METHODS: [&str; 17] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// The bounded label of a JSON-RPC method (see [`KNOWN_METHODS`]).
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// Largest `capabilities` + `clientInfo` a client may send: they travel in its session token.
const MAX_CLIENT_CLAIMS_BYTES: usize = 4096;

const CONTENT_TYPE_JSON: &[u8] = b"application/json";

#[derive(Debug)]
enum Stage {
    /// Not an MCP request: the plugin stays out of the way.
    Bypass,
    /// A POST whose body is being buffered.
    ReadingBody,
    /// A POST refused on its headers (no verified identity; an MCP 2026-07-28 routing-header
    /// mismatch -32020 or version -32022): its body is read only for the request id the refusal
    /// carries.
    Refusing { error: GatewayError },
    /// An MCP 2026-07-28 request whose body is being buffered, to be checked against what its
    /// routing headers promised (`expect`). `routed`: the call was already routed on its
    /// headers (installed without `allow_on_headers_stop_iteration`) with the cached upstream
    /// session it used, if any; its body only needs the name spliced.
    Stateless {
        expect: Expect,
        routed: Option<(Call, Option<String>)>,
    },
    /// An upstream session to open ahead of the client's first call, not yet started (see
    /// [`Request::take_warm_ups`]).
    Ahead { pending: Pending },
    /// Another stream is opening this upstream session (see [`crate::opening`]): woken by
    /// [`Request::on_wake`] when it is cached or failed, or when the opening went stale.
    WaitingForSession {
        pending: Pending,
        since_ms: u64,
        /// The opening waited for (its tag), to match its outcome.
        opener: String,
    },
    /// Opening an upstream session: `initialize` sent. `claim`: the opening this stream holds
    /// (released once the session is cached or failed).
    Initializing {
        pending: Pending,
        token: u32,
        claim: Option<Claim>,
    },
    /// Sent `notifications/initialized`; the session is usable once it is acknowledged.
    Acknowledging {
        pending: Pending,
        upstream: UpstreamSession,
        token: u32,
        claim: Option<Claim>,
    },
    /// Woken with a cached session, on the VM's root context, where clearing this stream's
    /// route cache is not possible: a `ping` on the upstream session brings the stream back to a
    /// callback of its own, where the call is forwarded.
    Resuming {
        pending: Pending,
        upstream: UpstreamSession,
        token: u32,
    },
    /// The call went upstream, through Envoy's routes; `cached`: the upstream session id it
    /// used when it came from the cache (a 404 then means that session is gone).
    Forwarded { call: Call, cached: Option<String> },
    /// The upstream answers with an SSE stream, relayed event by event (see [`SseRelay`]).
    Relaying { relay: SseRelay },
    /// Replaying the call on a fresh upstream session, after the cached one was gone.
    Replaying {
        token: u32,
        server: usize,
        method: Option<&'static str>,
    },
    /// A JSON answer buffered to rewrite it: a `resources/read` result of a mapped server
    /// (`map_uris`: its contents' URIs mapped) and/or a result for an MCP 2026-07-28 client
    /// from a session-era upstream (`complete`: `resultType` added).
    RewritingResult {
        server: usize,
        method: Option<&'static str>,
        map_uris: bool,
        complete: bool,
    },
    /// The new upstream session is told the client's log level before the call goes on.
    Leveling {
        pending: Pending,
        upstream: UpstreamSession,
        token: u32,
    },
    /// Waiting for the gateway's own calls to upstreams (DELETE of upstream sessions, a log
    /// level, relayed notifications), then answering `then`.
    Awaiting { pending: Vec<u32>, then: Then },
    /// A JSON-RPC batch (MCP 2025-03-26), with its own sub-state (see [`Batch`]).
    Batch(Batch),
    /// A local answer was sent.
    Answered,
}

/// The state of one HTTP stream.
pub struct Request {
    catalog: Rc<Catalog>,
    log_budget: Rc<LogBudget>,
    /// The sidecar, when the plugin has its token: `authorization` on the notification streams
    /// this plugin vouches for, and where upstream sessions are registered.
    sidecar: Option<Rc<SidecarLink>>,
    stage: Stage,
    /// Raw JSON id of the client's request, for answers produced later.
    id: Option<String>,
    session_token: Option<Vec<u8>>,
    /// The client's request headers, read once in the headers phase (routing headers removed).
    headers: Vec<(String, Vec<u8>)>,
    /// The request's label for telemetry: its MCP method (see [`method_label`]), `batch`,
    /// `response` (a client's answer to an upstream's request), `GET`/`DELETE` (the session's
    /// notification stream and end), or `none` (no JSON-RPC message could be read).
    method: &'static str,
    /// `x-mcp-authorized`, taken out of `headers` (see [`crate::grant`]).
    grant_token: Option<Vec<u8>>,
    /// The client's verified subject (`sub` of the token Envoy's `jwt_authn` verified), when
    /// the document configures `oauth`.
    subject: Option<String>,
    /// The audit line of a routed call, written once its outcome is known (see [`crate::audit`]).
    audit: Option<crate::audit::Audit>,
    /// The virtual server the request is for (`x-mcp-virtualserver` or `<mcp_path>/<name>`),
    /// checked to exist when the request arrived.
    virtual_server: Option<String>,
    /// Installed without `allow_on_headers_stop_iteration` (a stock Istio `WasmPlugin`): the
    /// headers phase must never pause to wait for the body, so only 2026-07-28 requests, routed
    /// on their headers, are served.
    headers_only: bool,
    /// The client speaks MCP 2026-07-28 (stateless): its answers carry no session, and results
    /// from session-era upstreams get `resultType`.
    stateless: bool,
    /// Who hears of this request's outcome: its client, or nobody (an opening ahead of need).
    answers: Answers,
    /// Openings ahead of need this request asked for, for the edge to start (see
    /// [`Request::take_warm_ups`]).
    warm_ups: Vec<Request>,
}

/// Who a request answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answers {
    /// An HTTP client.
    Client,
    /// Nobody: an upstream session opened ahead of the client's first call; a failure is
    /// logged, and that first call opens the session itself.
    Nobody,
}

impl Request {
    /// `log_budget`: the VM's budget for logging refusals. `sidecar`: its `authorization` proves
    /// to the sidecar that this plugin checked the client's session (see
    /// [`crate::config::SidecarSource::link`]).
    pub fn new(
        catalog: Rc<Catalog>,
        log_budget: Rc<LogBudget>,
        sidecar: Option<Rc<SidecarLink>>,
    ) -> Self {
        Self {
            catalog,
            log_budget,
            sidecar,
            stage: Stage::Bypass,
            id: None,
            session_token: None,
            headers: Vec::new(),
            method: "none",
            grant_token: None,
            subject: None,
            audit: None,
            virtual_server: None,
            headers_only: false,
            stateless: false,
            answers: Answers::Client,
            warm_ups: Vec::new(),
        }
    }

    /// The upstream-session openings this request asked for (`initialize` with
    /// `gateway.open_upstream_sessions: on_initialize`): each is a request of its own, answering
    /// nobody, to be started with [`Request::start_warm_up`] from the VM's root context, so that
    /// its calls outlive this stream.
    pub fn take_warm_ups(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.warm_ups)
    }

    /// Starts an opening ahead of need: nothing to do when the session is cached already or
    /// another stream is opening it.
    pub fn start_warm_up(&mut self, host: &mut dyn Host) {
        let Stage::Ahead { pending } = std::mem::replace(&mut self.stage, Stage::Answered) else {
            return;
        };
        match self.obtain_session(host, pending, None) {
            Ok(Obtained::Ready(..)) => {}
            Ok(Obtained::Underway) => {
                if self.is_waiting() {
                    // Another stream opens it: the first call finds it cached or waits for it.
                    self.stage = Stage::Answered;
                }
            }
            Err(e) => {
                self.fail(host, e);
            }
        }
    }

    /// An upstream session opening is under way in this request (its calls are awaited).
    pub fn is_opening(&self) -> bool {
        matches!(
            self.stage,
            Stage::Initializing { .. } | Stage::Acknowledging { .. } | Stage::Leveling { .. }
        )
    }

    /// The openings ahead of need for a new session: one per server it can reach (all, or the
    /// servers of its virtual server's tools).
    fn plan_warm_ups(&mut self, session: &Rc<Session>) {
        let catalog = Rc::clone(&self.catalog);
        let mut servers: Vec<usize> = match &self.virtual_server {
            None => (0..catalog.servers.len()).collect(),
            Some(name) => catalog
                .virtual_servers
                .get(name)
                .into_iter()
                .flat_map(|vs| vs.tools())
                .filter_map(|tool| catalog.route(tool).map(|(route, _)| route.server))
                .collect(),
        };
        // Servers that speak only MCP 2026-07-28 have no sessions to open.
        servers.retain(|&index| {
            catalog
                .server(index)
                .is_some_and(|server| on_upstream_session(server, false))
        });
        servers.sort_unstable();
        servers.dedup();
        for index in servers {
            let mut warm = Request::new(
                Rc::clone(&catalog),
                Rc::clone(&self.log_budget),
                self.sidecar.clone(),
            );
            warm.answers = Answers::Nobody;
            warm.stage = Stage::Ahead {
                pending: Pending {
                    call: Call::opening(index, Rc::clone(session)),
                    then: AfterOpening::Warm,
                },
            };
            self.warm_ups.push(warm);
        }
    }

    /// Installed without `allow_on_headers_stop_iteration` (see [`crate::config::Install`]).
    pub fn headers_only(mut self, headers_only: bool) -> Self {
        self.headers_only = headers_only;
        self
    }

    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let headers = client_headers(host);
        if let Some(identity) = &self.catalog.identity {
            if identity.serves(find_header(&headers, ":path").unwrap_or_default()) {
                return self.serve_metadata(host, find_header(&headers, ":method"));
            }
        }
        let Some(path_server) = mcp_path_of(&headers, &self.catalog) else {
            return Action::Continue;
        };
        self.headers = headers;
        if let Some(identity) = &self.catalog.identity {
            match identity.subject(host) {
                Some(subject) => self.subject = Some(subject),
                None => return self.refuse(host, GatewayError::unauthenticated(), end_of_stream),
            }
        }
        if let Some(name) = repeated_header(&self.headers) {
            return self.fail(host, GatewayError::repeated_header(name));
        }
        if let Some(at) = self
            .headers
            .iter()
            .position(|(n, _)| n == crate::grant::GRANT_HEADER)
        {
            self.grant_token = Some(self.headers.swap_remove(at).1);
        }
        let by_header = self
            .headers
            .iter()
            .position(|(n, _)| n == crate::grant::VIRTUAL_SERVER_HEADER)
            .map(|at| String::from_utf8_lossy(&self.headers.swap_remove(at).1).into_owned());
        let on_path = path_server.is_some();
        let selected = match (path_server, by_header) {
            (Some(path), Some(header)) if path != header => {
                return self.fail(host, GatewayError::virtual_server_conflict(&path, &header));
            }
            (path, header) => path.or(header),
        };
        if let Some(name) = selected {
            if !self.catalog.virtual_servers.contains_key(&name) {
                return self.fail(host, GatewayError::unknown_virtual_server(&name));
            }
            self.virtual_server = Some(name);
        }
        if let Some(origin) = self.header("origin") {
            if !crate::origin::allowed(origin, &self.catalog.gateway.allowed_origins) {
                let origin = String::from_utf8_lossy(origin).into_owned();
                return self.fail(host, GatewayError::origin_not_allowed(&origin));
            }
        }
        let method = self.header(":method").unwrap_or_default().to_vec();
        if self.header("mcp-protocol-version") == Some(stateless::VERSION.as_bytes()) {
            // Stateless: POST only, sessions ignored (never minted nor echoed).
            if method != b"POST" {
                return self.fail(
                    host,
                    GatewayError::method_not_allowed(&String::from_utf8_lossy(&method)),
                );
            }
            self.stateless = true;
            return self.stateless_headers(host, end_of_stream);
        }
        self.session_token = self.header("mcp-session-id").map(<[u8]>::to_vec);
        let header = |name: &str| self.header(name);
        let checked = match method.as_slice() {
            b"POST" if self.headers_only => check_post(&self.catalog, &header, end_of_stream)
                .and_then(|()| Err(GatewayError::headers_only())),
            b"POST" => check_post(&self.catalog, &header, end_of_stream),
            b"DELETE" => {
                self.label(host, "DELETE");
                return self.close_session(host);
            }
            b"GET" if self.catalog.gateway.list_changed && !on_path => {
                self.label(host, "GET");
                // The notification stream is served behind the plugin (the sidecar).
                return match self.open_session(host) {
                    Ok(Some(session)) => {
                        self.vouch(host, &session);
                        host.observe(Event::Request {
                            method: self.method,
                            served: Served::Routed,
                        });
                        Action::Continue
                    }
                    Ok(None) => self.fail(host, GatewayError::missing_session()),
                    Err(e) => self.fail(host, e),
                };
            }
            other => Err(GatewayError::method_not_allowed(&String::from_utf8_lossy(
                other,
            ))),
        };
        match checked {
            Ok(()) => {
                self.stage = Stage::ReadingBody;
                Action::Pause
            }
            // An unsupported MCP-Protocol-Version (-32022) is answered with the request's id,
            // read from the body, when the headers may wait for it.
            Err(e)
                if e.code == stateless::UNSUPPORTED_VERSION
                    && !self.headers_only
                    && !end_of_stream
                    && method == b"POST" =>
            {
                self.stage = Stage::Refusing { error: e };
                Action::Pause
            }
            Err(e) => self.fail(host, e),
        }
    }

    pub fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        size: usize,
        end_of_stream: bool,
    ) -> Action {
        if let Stage::Refusing { .. } = self.stage {
            let limit = self.catalog.limits.max_body_bytes;
            if !end_of_stream && size <= limit {
                return Action::Pause;
            }
            let Stage::Refusing { error } = std::mem::replace(&mut self.stage, Stage::Answered)
            else {
                return Action::Continue;
            };
            if size <= limit {
                let body = host.request_body(size).unwrap_or_default();
                self.id = jsonrpc::salvage_id(&String::from_utf8_lossy(&body))
                    .map(|id| id.get().to_owned());
            }
            return self.fail(host, error);
        }
        if !matches!(self.stage, Stage::ReadingBody | Stage::Stateless { .. }) {
            return Action::Continue;
        }
        let limit = self.catalog.limits.max_body_bytes;
        if size > limit {
            return self.fail(host, GatewayError::body_too_large(limit));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = host.request_body(size).unwrap_or_default();
        match std::mem::replace(&mut self.stage, Stage::Answered) {
            Stage::Stateless { expect, routed } => {
                return match self.stateless_body(host, &body, &expect, routed) {
                    Ok(action) => action,
                    Err(e) => self.fail(host, stateless_error(e)),
                };
            }
            other => self.stage = other,
        }
        match self.handle_message(host, &body) {
            Ok(action) => action,
            Err(e) => self.fail(host, e),
        }
    }

    /// The headers of an MCP 2026-07-28 request: the usual POST checks, then what the routing
    /// headers promise. With the body to wait for, the headers pause; installed without
    /// `allow_on_headers_stop_iteration` they cannot, so a call is routed on `Mcp-Name` now and
    /// anything the gateway answers itself goes on to the default route, which holds it while
    /// the body is read (see docs/mcp2026.md).
    fn stateless_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let header = |name: &str| self.header(name);
        let expect = check_post(&self.catalog, &header, end_of_stream)
            .and_then(|()| Expect::from_headers(&header));
        let expect = match expect {
            Ok(expect) => expect,
            // A routing-header refusal waits for the body (when the headers may wait) to answer
            // with the request's id.
            Err(e)
                if !self.headers_only
                    && !end_of_stream
                    && matches!(
                        e.code,
                        stateless::HEADER_MISMATCH | stateless::UNSUPPORTED_VERSION
                    ) =>
            {
                self.stage = Stage::Refusing { error: e };
                return Action::Pause;
            }
            Err(e) => return self.fail(host, stateless_error(e)),
        };
        if !self.headers_only {
            self.stage = Stage::Stateless {
                expect,
                routed: None,
            };
            return Action::Pause;
        }
        match self.route_on_headers(host, expect) {
            Ok(action) => action,
            Err(e) => self.fail(host, stateless_error(e)),
        }
    }

    /// Installed without `allow_on_headers_stop_iteration`: a named call goes to its server on
    /// `Mcp-Name` alone; the rest continues to the default route while the body is read.
    fn route_on_headers(
        &mut self,
        host: &mut dyn Host,
        expect: Expect,
    ) -> Result<Action, GatewayError> {
        let catalog = Rc::clone(&self.catalog);
        let name = expect.name.clone().unwrap_or_default();
        let destination = match expect.method.as_str() {
            method @ ("tools/call" | "prompts/get" | "resources/read") => {
                Destination::on_headers(&catalog, method, &name)?
            }
            "completion/complete" => {
                return Err(GatewayError::headers_only().because("headers_only_completion"))
            }
            "subscriptions/listen" => {
                // The sidecar serves the stream; the body follows once checked.
                self.vouch_listen(host)?;
                self.stage = Stage::Stateless {
                    expect,
                    routed: None,
                };
                return Ok(Action::Continue);
            }
            _ => {
                // Answered by the gateway once the body is read; meanwhile the default route
                // holds the request (its body never leaves the plugin).
                self.stage = Stage::Stateless {
                    expect,
                    routed: None,
                };
                return Ok(Action::Continue);
            }
        };
        // The same grant and virtual-server check as a call routed on its body.
        destination.check(&catalog, &self.access(&catalog, host)?)?;
        let session = self.bridge_session(host, destination.server());
        let call = destination.into_headers_call(session);
        let pending = Pending {
            call,
            then: AfterOpening::Headers {
                expect: Box::new(expect),
            },
        };
        match self.obtain_session(host, pending, None)? {
            Obtained::Ready(pending, upstream) => {
                self.proceed(host, pending, &upstream, true);
                Ok(Action::Continue)
            }
            Obtained::Underway => Ok(Action::Pause),
        }
    }

    /// The body of an MCP 2026-07-28 request, checked against its headers before anything of it
    /// goes further, then answered here (`server/discover`, lists) or routed: a call already
    /// routed on its headers gets its name spliced; otherwise (the headers were held) it is
    /// routed like a session-era call, on the stateless client's bridged upstream session.
    fn stateless_body(
        &mut self,
        host: &mut dyn Host,
        body: &[u8],
        expect: &Expect,
        routed: Option<(Call, Option<String>)>,
    ) -> Result<Action, GatewayError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| GatewayError::parse("Parse error: body is not UTF-8"))?;
        if jsonrpc::is_batch(text) {
            return Err(GatewayError::invalid_request(
                "Invalid Request: MCP 2026-07-28 has no batches",
            ));
        }
        let message = jsonrpc::parse_message(text, self.catalog.limits.max_json_depth)
            .inspect_err(|_| {
                self.id = jsonrpc::salvage_id(text).map(|id| id.get().to_owned());
            })?;
        let Message::Request { id, method, params } = message else {
            return Err(GatewayError::invalid_request(
                "Invalid Request: MCP 2026-07-28 clients POST requests only",
            ));
        };
        self.id = Some(id.get().to_owned());
        expect.check(&method, &params)?;
        let catalog = Rc::clone(&self.catalog);
        if let Some((mut call, cached)) = routed {
            // Checked against the grant when routed on its headers; the body may only name the
            // same target (the expectation above), so the check holds.
            let destination = Destination::of(&catalog, text, &method, &params)?;
            let spliced = destination.into_call(text, body.len(), Rc::clone(&call.session))?;
            if spliced.server != call.server {
                return Err(GatewayError::header_mismatch(
                    "Mcp-Name and the body name different servers",
                ));
            }
            spliced.write_body(host);
            call.body = spliced.body;
            call.received_len = spliced.received_len;
            call.kept_tail = spliced.kept_tail;
            self.stage = Stage::Forwarded { call, cached };
            return Ok(Action::Continue);
        }
        match method.as_ref() {
            // Vouched for in the headers phase already (headers-only install): the body goes on.
            "subscriptions/listen" if self.headers_only => Ok(Action::Continue),
            "subscriptions/listen" => {
                self.vouch_listen(host)?;
                Ok(Action::Continue)
            }
            "server/discover" => {
                let result = stateless::discover_result(&catalog);
                Ok(self.reply_result(host, &result))
            }
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
                let kind = match method.as_ref() {
                    "tools/list" => ListKind::Tools,
                    "prompts/list" => ListKind::Prompts,
                    "resources/list" => ListKind::Resources,
                    _ => ListKind::ResourceTemplates,
                };
                let cursor = cursor_of(&params)?;
                // Narrowed by the caller's grant and virtual server, as on a session; a narrowed
                // list is this caller's alone to cache.
                let access = self.access(&catalog, host)?;
                let page = catalog.page_for(kind, cursor.as_deref(), &access)?;
                let scope = if access.is_all() {
                    stateless::CacheScope::Public
                } else {
                    stateless::CacheScope::Private
                };
                let result = stateless::with_hints(&catalog, &page, scope);
                Ok(self.reply_result(host, &result))
            }
            routed @ ("tools/call" | "prompts/get" | "resources/read" | "completion/complete") => {
                let destination = Destination::of(&catalog, text, routed, &params)?;
                self.audit = Some(crate::audit::Audit::new(
                    routed,
                    self.id.as_deref(),
                    self.subject.as_deref(),
                    None,
                ));
                if let Some(audit) = &mut self.audit {
                    let (server, name) = destination.target(&catalog);
                    audit.target(server, name);
                }
                destination.check(&catalog, &self.access(&catalog, host)?)?;
                let session = self.bridge_session(host, destination.server());
                self.route(host, destination.into_call(text, body.len(), session)?)
            }
            other => Err(GatewayError::method_not_found(other)),
        }
    }

    /// A `subscriptions/listen` goes to the sidecar, which merges the catalog's changes into one
    /// stream per listener: the client's credential is replaced by the plugin's, and the route
    /// to the sidecar matches [`LISTEN_HEADER`]. Without a sidecar there is nothing to listen to.
    fn vouch_listen(&mut self, host: &mut dyn Host) -> Result<(), GatewayError> {
        let Some(sidecar) = self.sidecar.clone() else {
            return Err(GatewayError::method_not_found("subscriptions/listen"));
        };
        for (i, (name, _)) in self.headers.iter().enumerate() {
            let keep = matches!(
                name.as_str(),
                ":method"
                    | ":path"
                    | ":scheme"
                    | ":authority"
                    | "content-type"
                    | "accept"
                    | "content-length"
                    | "mcp-protocol-version"
                    | "mcp-method"
                    | "x-forwarded-proto"
            );
            if !keep && !self.headers.iter().take(i).any(|(n, _)| n == name) {
                host.remove_request_header(name);
            }
        }
        host.set_request_header("authorization", sidecar.authorization.as_bytes());
        host.set_request_header(LISTEN_HEADER, b"1");
        host.clear_route_cache();
        Ok(())
    }

    /// The client session a stateless client's calls share on session-era upstreams: named by
    /// a keyed MAC of its credential (see [`stateless::bridge_id`]), opened at
    /// [`stateless::BRIDGE_VERSION`].
    /// For an upstream that speaks 2026-07-28 no session is opened, so none is named (no MAC).
    fn bridge_session(&self, host: &dyn Host, server: usize) -> Rc<Session> {
        let native = self
            .catalog
            .server(server)
            .is_some_and(|s| s.protocol_versions.iter().any(|v| v == stateless::VERSION));
        let id = if native {
            String::new()
        } else {
            stateless::bridge_id(self.catalog.keys.bridge_key(), self.header("authorization"))
        };
        Rc::new(Session {
            id,
            claims: Claims {
                iat: host.now_secs(),
                pv: stateless::BRIDGE_VERSION.to_owned(),
                caps: None,
                info: None,
            },
            audit_name: std::cell::OnceCell::new(),
        })
    }

    pub fn on_response_headers(&mut self, host: &mut dyn Host) -> Action {
        let Stage::Forwarded { call, cached } = &self.stage else {
            return Action::Continue;
        };
        let response = host.response_headers();
        let status = find_header(&response, ":status").map(<[u8]>::to_vec);
        let content_type = find_header(&response, "content-type");
        if status.as_deref() == Some(b"404") && cached.is_some() {
            // The upstream forgot the session (restart, expiry): open a new one and replay.
            host.log(
                Level::Info,
                &format!(
                    "upstream {} lost its session; re-initializing and retrying",
                    self.server_name(call.server)
                ),
            );
            let Stage::Forwarded {
                call,
                cached: Some(stale),
            } = std::mem::replace(&mut self.stage, Stage::Answered)
            else {
                return Action::Continue;
            };
            host.observe(Event::UpstreamReinit {
                server: self.server_name(call.server),
            });
            let pending = Pending {
                call,
                then: AfterOpening::Replay { stale },
            };
            let replayed = match self.obtain_session(host, pending, None) {
                Ok(Obtained::Ready(pending, upstream)) => {
                    self.session_ready(host, pending, upstream)
                }
                Ok(Obtained::Underway) => Ok(()),
                Err(e) => Err(e),
            };
            return match replayed {
                Ok(()) => Action::Pause,
                Err(e) => self.fail(host, e),
            };
        }
        if let Some(refusal) = policy_refusal(status.as_deref(), call, &self.catalog) {
            // An authorization filter after the plugin (Envoy's rbac, ext_authz, ...) refused
            // the call with its own local reply: the client gets a JSON-RPC error instead.
            if !speaks_mcp(content_type) {
                return self.fail(host, refusal);
            }
        }
        if !status.as_deref().is_some_and(|s| s.starts_with(b"2")) && !speaks_mcp(content_type) {
            // Envoy's own "upstream connect error" and the like: the client gets a JSON-RPC
            // error for this call, its session stays usable.
            let status = String::from_utf8_lossy(status.as_deref().unwrap_or(b"none")).into_owned();
            let server = self.catalog.server(call.server);
            let error = match server {
                Some(server) => upstream_failure(server, &format!("answered HTTP {status}")),
                None => GatewayError::upstream(format!("upstream answered HTTP {status}")),
            };
            return self.fail(host, error);
        }
        let answered = status
            .as_deref()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if let Some(audit) = self.audit.take() {
            host.set_property(
                crate::audit::AUDIT_PROPERTY,
                audit.line(answered, None).as_bytes(),
            );
        }
        match &self.session_token {
            Some(token) => host.set_response_header("mcp-session-id", token),
            None => host.remove_response_header("mcp-session-id"),
        }
        // A stateless client's result from a session-era upstream needs its `resultType`; a
        // 2026-07-28 upstream's answer passes as it is.
        let complete = self.stateless
            && !self
                .catalog
                .server(call.server)
                .is_some_and(|s| s.protocol_versions.iter().any(|v| v == stateless::VERSION));
        if is_event_stream(content_type) {
            let server = self.catalog.server(call.server);
            let relay = SseRelay::new(
                server.map_or("", |s| s.name.as_str()),
                server.is_some_and(|s| !s.prefix.is_empty()),
                call.method,
            )
            .completing_results(complete);
            // Events may change length on the way.
            host.remove_response_header("content-length");
            if self.stateless {
                // 2026-07-28: a response stream must not be buffered by intermediaries.
                host.set_response_header("x-accel-buffering", b"no");
            }
            self.stage = Stage::Relaying { relay };
        } else {
            let map_uris = call.method == Some("resources/read")
                && self
                    .catalog
                    .server(call.server)
                    .is_some_and(|s| !s.prefix.is_empty());
            if map_uris || complete {
                host.remove_response_header("content-length");
                self.stage = Stage::RewritingResult {
                    server: call.server,
                    method: call.method,
                    map_uris,
                    complete,
                };
            }
        }
        Action::Continue
    }

    /// An SSE answer is relayed event by event, rewritten for the client; while a replay is
    /// under way the upstream's own (404) answer is held back; anything else streams through.
    pub fn on_response_body(
        &mut self,
        host: &mut dyn Host,
        size: usize,
        end_of_stream: bool,
    ) -> Action {
        if self.holds_upstream_answer() {
            return Action::Pause;
        }
        match &mut self.stage {
            Stage::Relaying { relay } => {
                let chunk = host.response_body(size).unwrap_or_default();
                let out = relay.feed(&chunk);
                if out != chunk {
                    host.set_response_body(size, &out);
                }
                if end_of_stream {
                    self.stage = Stage::Answered;
                }
                Action::Continue
            }
            Stage::RewritingResult { .. } if !end_of_stream => Action::Pause,
            Stage::RewritingResult {
                server,
                method,
                map_uris,
                complete,
            } => {
                let (server, method, map_uris, complete) = (*server, *method, *map_uris, *complete);
                let body = host.response_body(size).unwrap_or_default();
                let name = self.server_name(server).to_owned();
                if let Ok(text) = std::str::from_utf8(&body) {
                    let mut out = std::borrow::Cow::Borrowed(text);
                    if map_uris {
                        if let std::borrow::Cow::Owned(mapped) =
                            crate::relay::read_result_uris(&out, &name)
                        {
                            out = std::borrow::Cow::Owned(mapped);
                        }
                    }
                    if complete {
                        let read = method == Some("resources/read");
                        if let std::borrow::Cow::Owned(done) =
                            crate::relay::complete_result(&out, read)
                        {
                            out = std::borrow::Cow::Owned(done);
                        }
                    }
                    if let std::borrow::Cow::Owned(changed) = out {
                        host.set_response_body(size, changed.as_bytes());
                    }
                }
                self.stage = Stage::Answered;
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    /// A replay is under way: the upstream's own (404) answer is held back until it is done.
    fn holds_upstream_answer(&self) -> bool {
        let replaying = |pending: &Pending| matches!(pending.then, AfterOpening::Replay { .. });
        match &self.stage {
            Stage::WaitingForSession { pending, .. }
            | Stage::Initializing { pending, .. }
            | Stage::Acknowledging { pending, .. }
            | Stage::Leveling { pending, .. } => replaying(pending),
            Stage::Replaying { .. } => true,
            _ => false,
        }
    }

    /// Whether this stream waits for another stream's opening: the edge then drives it with
    /// [`Request::on_wake`] when its VM is woken (see [`Host::wake`]) and on the VM's tick.
    pub fn is_waiting(&self) -> bool {
        matches!(self.stage, Stage::WaitingForSession { .. })
    }

    /// A waiting stream is woken: by the outcome of an opening (`message`, maybe another
    /// one's), or by the VM's tick (`None`). On the VM's root context, with this stream as the
    /// effective context.
    pub fn on_wake(&mut self, host: &mut dyn Host, message: Option<&[u8]>) {
        let Stage::WaitingForSession {
            pending, opener, ..
        } = &self.stage
        else {
            return;
        };
        let catalog = Rc::clone(&self.catalog);
        let Some(server) = catalog.server(pending.call.server) else {
            self.fail(host, server_left());
            return;
        };
        // A wake-up about another opening (of this VM's other waiters) is not for this one;
        // the tick (no message) makes every waiter look again.
        let outcome = match message {
            None => Ok(()),
            Some(message) => {
                match opening::outcome(message, &pending.call.session.id, &server.name, opener) {
                    None => return,
                    Some(outcome) => outcome,
                }
            }
        };
        let Stage::WaitingForSession {
            pending, since_ms, ..
        } = std::mem::replace(&mut self.stage, Stage::Answered)
        else {
            return;
        };
        if let Err(failed) = outcome {
            self.fail(host, GatewayError::upstream(failed));
            return;
        }
        let woken = match self.obtain_session(host, pending, Some(since_ms)) {
            Ok(Obtained::Ready(pending, upstream)) => self.resume_woken(host, pending, upstream),
            Ok(Obtained::Underway) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = woken {
            self.fail(host, e);
        }
    }

    /// The stream is going away (done, or reset by its client): an opening it holds is handed
    /// over to its waiters.
    pub fn on_done(&mut self, host: &mut dyn Host) {
        if let Stage::Initializing {
            claim: Some(claim), ..
        }
        | Stage::Acknowledging {
            claim: Some(claim), ..
        } = &self.stage
        {
            opening::release(host, claim, Outcome::Abandoned);
        }
    }

    pub fn on_call_response(&mut self, host: &mut dyn Host, token: u32, response: CallResponse) {
        match std::mem::replace(&mut self.stage, Stage::Answered) {
            Stage::Initializing {
                pending,
                token: t,
                claim,
            } if t == token => {
                let held = claim.clone();
                let server = pending.call.server;
                if let Err(e) = self.on_initialized(host, pending, claim, &response) {
                    self.opening_failed(host, server, held.as_ref(), e);
                }
            }
            Stage::Acknowledging {
                pending,
                upstream,
                token: t,
                claim,
            } if t == token => {
                let held = claim.clone();
                let server = pending.call.server;
                if let Err(e) = self.on_acknowledged(host, pending, upstream, claim, &response) {
                    self.opening_failed(host, server, held.as_ref(), e);
                }
            }
            Stage::Replaying {
                token: t,
                server,
                method,
            } if t == token => self.relay_replay(host, server, method, response),
            Stage::Leveling {
                pending,
                upstream,
                token: t,
            } if t == token => {
                if response.status.is_none_or(|s| !(200..300).contains(&s)) {
                    host.log(
                        Level::Info,
                        &format!(
                            "upstream {} did not take the log level (HTTP {:?})",
                            self.server_name(pending.call.server),
                            response.status
                        ),
                    );
                }
                if let Err(e) = self.session_ready(host, pending, upstream) {
                    self.fail(host, e);
                }
            }
            Stage::Resuming {
                pending,
                upstream,
                token: t,
            } if t == token => {
                // Whatever the ping's answer: a session gone by now gets the routed call a 404,
                // which replays it.
                self.proceed(host, pending, &upstream, true);
                host.resume_request();
            }
            Stage::Awaiting { mut pending, then } => {
                pending.retain(|t| *t != token);
                if pending.is_empty() {
                    self.answer(host, then);
                } else {
                    self.stage = Stage::Awaiting { pending, then };
                }
            }
            Stage::Batch(mut batch) => {
                let ctx = batch::Context {
                    catalog: &self.catalog,
                    headers: &self.headers,
                    sidecar: self.sidecar.as_deref(),
                    access: None,
                };
                let progress = batch.on_call_response(&ctx, host, token, &response);
                self.batch_progress(host, batch, progress);
            }
            other => {
                host.log(
                    Level::Debug,
                    &format!("ignored call answer {token}: not awaited"),
                );
                self.stage = other;
            }
        }
    }

    fn handle_message(&mut self, host: &mut dyn Host, body: &[u8]) -> Result<Action, GatewayError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| GatewayError::parse("Parse error: body is not UTF-8"))?;
        let max_depth = self.catalog.limits.max_json_depth;
        if jsonrpc::is_batch(text) {
            self.label(host, "batch");
            return self.batch(host, text);
        }
        let message = jsonrpc::parse_message(text, max_depth).inspect_err(|_| {
            self.id = jsonrpc::salvage_id(text).map(|id| id.get().to_owned());
        })?;
        let label = match &message {
            Message::Notification { method, .. } | Message::Request { method, .. } => {
                method_label(method)
            }
            Message::Response { .. } => "response",
        };
        self.label(host, label);
        match message {
            Message::Notification { method, params } => self.notify(host, text, &method, &params),
            Message::Response { id } => {
                let session = self
                    .open_session(host)?
                    .ok_or_else(GatewayError::missing_session)?;
                let call = answer_call(&self.catalog, text, body.len(), id, session)?;
                self.route(host, call)
            }
            Message::Request { id, method, params } => {
                self.id = Some(id.get().to_owned());
                match method.as_ref() {
                    "initialize" => self.initialize(host, params),
                    "ping" => {
                        self.open_session(host)?;
                        Ok(self.reply_result(host, "{}"))
                    }
                    "tools/list" if self.catalog.meta_tools_active() => {
                        self.meta_list(host, &params)
                    }
                    "tools/list" => self.list(host, ListKind::Tools, &params),
                    "logging/setLevel" => self.set_level(host, &params),
                    "prompts/list" => self.list(host, ListKind::Prompts, &params),
                    "resources/list" => self.list(host, ListKind::Resources, &params),
                    "resources/templates/list" => {
                        self.list(host, ListKind::ResourceTemplates, &params)
                    }
                    routed @ ("tools/call"
                    | "prompts/get"
                    | "resources/read"
                    | "resources/subscribe"
                    | "resources/unsubscribe"
                    | "completion/complete") => {
                        let opened = self.open_session(host);
                        // An opened token is remembered, and so is its audit name.
                        let audit_name = self.session_token.as_deref().map(|token| match &opened {
                            Ok(Some(session)) => session
                                .audit_name
                                .get_or_init(|| crate::audit::session_hash(token))
                                .clone(),
                            _ => crate::audit::session_hash(token),
                        });
                        self.audit = Some(crate::audit::Audit::new(
                            routed,
                            self.id.as_deref(),
                            self.subject.as_deref(),
                            audit_name,
                        ));
                        let session = opened?.ok_or_else(GatewayError::missing_session)?;
                        let catalog = Rc::clone(&self.catalog);
                        let meta = routed == "tools/call" && catalog.meta_tools_active();
                        let called = params.name.and_then(jsonrpc::raw_str);
                        if meta {
                            if let Some(
                                name @ (crate::catalog::DISCOVER_TOOLS
                                | crate::catalog::SELECT_TOOLS),
                            ) = called.as_deref()
                            {
                                return self.meta_call(host, text, name, &session);
                            }
                        }
                        let destination = Destination::of(&catalog, text, routed, &params)?;
                        if let Some(audit) = &mut self.audit {
                            let (server, name) = destination.target(&catalog);
                            audit.target(server, name);
                        }
                        destination.check(&catalog, &self.access(&catalog, host)?)?;
                        if meta {
                            if let (Some(scope), Some(name)) =
                                (crate::scope::get(host, &session.id), called.as_deref())
                            {
                                if !scope.iter().any(|tool| tool == name) {
                                    return Err(GatewayError::invalid_params(format!(
                                        "Invalid params: tool {} is outside this session's \
                                         selection (select_tools)",
                                        jsonrpc::json_string(name)
                                    )));
                                }
                            }
                        }
                        self.route(host, destination.into_call(text, body.len(), session)?)
                    }
                    other => {
                        self.open_session(host)?;
                        Err(GatewayError::method_not_found(other))
                    }
                }
            }
        }
    }

    /// A JSON-RPC batch: only on a session negotiated at 2025-03-26.
    fn batch(&mut self, host: &mut dyn Host, text: &str) -> Result<Action, GatewayError> {
        let catalog = Rc::clone(&self.catalog);
        let elements =
            jsonrpc::parse_batch(text, catalog.limits.max_json_depth, jsonrpc::MAX_BATCH)?;
        let session = batch::admit(self.open_session(host)?)?;
        let access = self.access(&catalog, host)?;
        let ctx = batch::Context {
            catalog: &catalog,
            headers: &self.headers,
            sidecar: self.sidecar.as_deref(),
            access: Some(&access),
        };
        let (batch, progress) = Batch::start(&ctx, host, session, &elements);
        Ok(self.batch_progress(host, batch, progress))
    }

    fn batch_progress(&mut self, host: &mut dyn Host, batch: Batch, progress: Progress) -> Action {
        match progress {
            Progress::Waiting => {
                self.stage = Stage::Batch(batch);
                Action::Pause
            }
            Progress::Done(None) => self.reply(host, 202, &[]),
            Progress::Done(Some(body)) => self.reply(host, 200, &body),
        }
    }

    fn initialize(
        &mut self,
        host: &mut dyn Host,
        params: Params<'_>,
    ) -> Result<Action, GatewayError> {
        let Some(requested) = params.protocol_version.and_then(jsonrpc::raw_str) else {
            return Err(GatewayError::invalid_params(
                "Invalid params: initialize needs params.protocolVersion (a string)",
            ));
        };
        // An unknown version is negotiated, not refused: the answer names the newest we speak.
        let version = Some(requested.as_ref())
            .and_then(|v| SUPPORTED_PROTOCOL_VERSIONS.iter().find(|s| **s == v))
            .or(SUPPORTED_PROTOCOL_VERSIONS.first())
            .copied()
            .unwrap_or_default();
        let claims_len = params.capabilities.map_or(0, |r| r.get().len())
            + params.client_info.map_or(0, |r| r.get().len());
        if claims_len > MAX_CLIENT_CLAIMS_BYTES {
            return Err(GatewayError::invalid_params(format!(
                "Invalid params: capabilities and clientInfo exceed {MAX_CLIENT_CLAIMS_BYTES} bytes"
            )));
        }
        let claims = Claims {
            iat: host.now_secs(),
            pv: version.to_owned(),
            caps: params.capabilities.map(ToOwned::to_owned),
            info: params.client_info.map(ToOwned::to_owned),
        };
        let nonce = host
            .random_nonce()
            .ok_or_else(GatewayError::no_randomness)?;
        let (token, id) = self
            .catalog
            .keys
            .seal(&claims, nonce)
            .ok_or_else(|| GatewayError::upstream("could not seal the session token"))?;
        self.session_token = Some(token.into_bytes());
        let result = self.catalog.initialize_result(version);
        let action = self.reply_result(host, &result);
        if self.catalog.gateway.open_upstream_sessions == OpenUpstreamSessions::OnInitialize {
            let session = Rc::new(Session {
                id,
                claims,
                audit_name: std::cell::OnceCell::new(),
            });
            self.plan_warm_ups(&session);
        }
        Ok(action)
    }

    /// A client notification: `notifications/cancelled` goes to the upstream that can know the
    /// request (an upstream's own request, by its gateway id) or to every upstream session of
    /// the client session (an upstream ignores an id it does not know);
    /// `notifications/progress` for an upstream's request (its token mapped like ids) goes to
    /// that upstream; `notifications/roots/list_changed` goes to every upstream session; the
    /// rest (initialized) stays here. 202 once the upstreams took them.
    fn notify(
        &mut self,
        host: &mut dyn Host,
        text: &str,
        method: &str,
        params: &Params<'_>,
    ) -> Result<Action, GatewayError> {
        let session = self.open_session(host)?;
        let mapped_field = match method {
            "notifications/cancelled" => params.request_id,
            "notifications/progress" => params.progress_token,
            _ => None,
        };
        // An upstream's own request (or progress token): its server alone, its own value restored.
        let upstream_request = mapped_field
            .and_then(|raw| Some((raw, jsonrpc::raw_str(raw)?)))
            .and_then(|(raw, id)| {
                let (server, original) = crate::relay::decode_id(&id)?;
                let span = jsonrpc::span_in(text, raw.get())?;
                Some((server.to_owned(), jsonrpc::splice(text, span, original)?))
            });
        let relayed = match method {
            "notifications/cancelled" | "notifications/roots/list_changed" => true,
            "notifications/progress" => upstream_request.is_some(),
            _ => false,
        };
        let Some(session) = session.filter(|_| relayed) else {
            host.log(Level::Debug, &format!("notification {method} accepted"));
            return Ok(self.reply(host, 202, &[]));
        };
        let catalog = Rc::clone(&self.catalog);
        let slots = catalog.limits.upstream_session_slots;
        let mut pending = Vec::new();
        for server in &catalog.servers {
            let body = match &upstream_request {
                Some((name, body)) if *name == server.name => body.as_str(),
                Some(_) => continue,
                None => text,
            };
            let Some(upstream) = upstream::lookup(host, slots, &session.id, &server.name) else {
                continue;
            };
            let mut headers = upstream::call_headers(server, "POST", Some(&upstream));
            headers.push(("x-mcp-method", method_header(method)));
            match host.dispatch(
                &server.cluster,
                &headers,
                body.as_bytes(),
                catalog.limits.upstream_timeout_ms,
            ) {
                Ok(token) => pending.push(token),
                Err(e) => host.log(
                    Level::Warn,
                    &format!("cannot relay {method} to {}: {e}", server.name),
                ),
            }
        }
        Ok(self.await_calls(host, pending, Then::Empty(202)))
    }

    /// Waits for the gateway's own calls `pending` (none: answers at once), then answers `then`.
    fn await_calls(&mut self, host: &mut dyn Host, pending: Vec<u32>, then: Then) -> Action {
        if pending.is_empty() {
            return self.answer(host, then);
        }
        self.stage = Stage::Awaiting { pending, then };
        Action::Pause
    }

    /// The answer a finished [`Stage::Awaiting`] gives.
    fn answer(&mut self, host: &mut dyn Host, then: Then) -> Action {
        match then {
            Then::Empty(status) => self.reply(host, status, &[]),
            Then::Result => self.reply_result(host, "{}"),
        }
    }

    /// `logging/setLevel`: remembered for the session (upstream sessions opened later are told
    /// on opening) and sent now to every open upstream session of a server that logs.
    fn set_level(
        &mut self,
        host: &mut dyn Host,
        params: &Params<'_>,
    ) -> Result<Action, GatewayError> {
        let session = self
            .open_session(host)?
            .ok_or_else(GatewayError::missing_session)?;
        let level = log_level_of(params)?;
        let catalog = Rc::clone(&self.catalog);
        let slots = catalog.limits.upstream_session_slots;
        upstream::store_log_level(host, slots, &session.id, &level);
        let mut pending = Vec::new();
        for (index, server) in catalog.servers.iter().enumerate() {
            if !catalog
                .server_capabilities
                .get(index)
                .is_some_and(|c| c.logging)
            {
                continue;
            }
            let Some(upstream) = upstream::lookup(host, slots, &session.id, &server.name) else {
                continue;
            };
            match dispatch_level(
                catalog.limits.upstream_timeout_ms,
                host,
                server,
                &upstream,
                &level,
            ) {
                Ok(token) => pending.push(token),
                Err(e) => host.log(Level::Warn, &e.message),
            }
        }
        Ok(self.await_calls(host, pending, Then::Result))
    }

    /// A list answered from the catalog, page by page.
    fn list(
        &mut self,
        host: &mut dyn Host,
        kind: ListKind,
        params: &Params<'_>,
    ) -> Result<Action, GatewayError> {
        self.open_session(host)?;
        let cursor = cursor_of(params)?;
        let catalog = Rc::clone(&self.catalog);
        let access = self.access(&catalog, host)?;
        let page = catalog.page_for(kind, cursor.as_deref(), &access)?;
        Ok(self.reply_result(host, &page))
    }

    /// `tools/list` while the meta-tools are active: them, and the session's selection.
    fn meta_list(
        &mut self,
        host: &mut dyn Host,
        params: &Params<'_>,
    ) -> Result<Action, GatewayError> {
        let session = self.open_session(host)?;
        if cursor_of(params)?.is_some() {
            return Err(GatewayError::invalid_params(
                "Invalid params: unknown cursor",
            ));
        }
        let catalog = Rc::clone(&self.catalog);
        let access = self.access(&catalog, host)?;
        let scope = session.and_then(|session| crate::scope::get(host, &session.id));
        let page = catalog.meta_tools_page(scope.as_deref(), &access);
        Ok(self.reply_result(host, &page))
    }

    /// A call of `discover_tools` or `select_tools`, answered by the gateway itself.
    fn meta_call(
        &mut self,
        host: &mut dyn Host,
        text: &str,
        name: &str,
        session: &Session,
    ) -> Result<Action, GatewayError> {
        use serde_json::{json, Value};
        let catalog = Rc::clone(&self.catalog);
        let access = self.access(&catalog, host)?;
        let message: Value = serde_json::from_str(text)
            .map_err(|_| GatewayError::invalid_params("Invalid params"))?;
        let argument = |name: &str| {
            message
                .get("params")
                .and_then(|params| params.get("arguments"))
                .and_then(|arguments| arguments.get(name))
        };
        let structured = if name == crate::catalog::DISCOVER_TOOLS {
            let server = match argument("server") {
                None | Some(Value::Null) => None,
                Some(Value::String(server)) => Some(server.as_str()),
                _ => {
                    return Err(GatewayError::invalid_params(
                        "Invalid params: server must be a string",
                    ))
                }
            };
            let category = match argument("category") {
                None | Some(Value::Null) => None,
                Some(Value::String(category)) => Some(category.as_str()),
                _ => {
                    return Err(GatewayError::invalid_params(
                        "Invalid params: category must be a string",
                    ))
                }
            };
            catalog.discover(server, category, &access)?
        } else {
            let tools: Vec<String> = match argument("tools") {
                Some(Value::Array(tools)) if !tools.is_empty() => tools
                    .iter()
                    .map(|tool| tool.as_str().map(String::from))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        GatewayError::invalid_params("Invalid params: tools must be strings")
                    })?,
                _ => {
                    return Err(GatewayError::invalid_params(
                        "Invalid params: tools must be a non-empty array of tool names",
                    ))
                }
            };
            if tools.len() > crate::scope::MAX_TOOLS {
                return Err(GatewayError::invalid_params(format!(
                    "Invalid params: at most {} tools may be selected",
                    crate::scope::MAX_TOOLS
                )));
            }
            let unknown = catalog.unknown_tools(&tools, &access);
            if !unknown.is_empty() {
                return Err(GatewayError::invalid_params(format!(
                    "Invalid params: unknown tools: {}",
                    unknown.join(", ")
                )));
            }
            if !crate::scope::set(host, &session.id, &tools) {
                return Err(GatewayError::upstream(
                    "Internal error: the selection could not be recorded; retry",
                ));
            }
            json!({
                "selected": tools,
                "toolsListChanged": true,
                "hint": "tools/list now shows these tools; call them directly"
            })
        };
        let result = json!({
            "content": [{"type": "text", "text": structured.to_string()}],
            "structuredContent": structured,
        });
        let action = self.reply_result(host, &result.to_string());
        if name != crate::catalog::DISCOVER_TOOLS {
            // The session's tools/list changed: its notification stream says so (after the
            // answer, fire-and-forget: the answer neither waits for it nor fails with it).
            notify_streams(
                self.sidecar.as_deref(),
                catalog.limits.upstream_timeout_ms,
                host,
                session,
                TOOLS_LIST_CHANGED,
            );
        }
        Ok(action)
    }

    /// What this request may see and call: its `x-mcp-authorized`, verified (everything when
    /// the document configures no grants), within its virtual server.
    fn access<'c>(
        &self,
        catalog: &'c Catalog,
        host: &dyn Host,
    ) -> Result<crate::grant::Access<'c>, GatewayError> {
        let grant = match &catalog.grants {
            None => crate::grant::Grant::All,
            Some(grants) => grants.evaluate(self.grant_token.as_deref(), host.now_secs())?,
        };
        let virtual_server = match &self.virtual_server {
            None => None,
            Some(name) => Some(
                catalog
                    .virtual_servers
                    .get(name)
                    .ok_or_else(|| GatewayError::unknown_virtual_server(name))?,
            ),
        };
        Ok(crate::grant::Access {
            grant,
            virtual_server,
        })
    }

    /// Forwards a call on the client session's upstream session, opening one first if needed.
    fn route(&mut self, host: &mut dyn Host, call: Call) -> Result<Action, GatewayError> {
        let pending = Pending {
            call,
            then: AfterOpening::Forward,
        };
        match self.obtain_session(host, pending, None)? {
            Obtained::Ready(pending, upstream) => {
                self.proceed(host, pending, &upstream, true);
                Ok(Action::Continue)
            }
            Obtained::Underway => Ok(Action::Pause),
        }
    }

    /// A call has its upstream session: what its continuation says (the caller resumes the
    /// request when it was held). `cached`: the session came from the cache.
    fn proceed(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        upstream: &UpstreamSession,
        cached: bool,
    ) {
        let Pending { call, then } = pending;
        match then {
            AfterOpening::Forward | AfterOpening::Replay { .. } => {
                self.forward(
                    host,
                    call,
                    upstream,
                    cached && !upstream.session_id.is_empty(),
                );
            }
            AfterOpening::Warm => self.stage = Stage::Answered,
            AfterOpening::Headers { expect } => {
                if self.set_route_headers(host, &call, upstream, None) {
                    host.clear_route_cache();
                }
                let cached = (cached && !upstream.session_id.is_empty())
                    .then(|| upstream.session_id.clone());
                self.stage = Stage::Stateless {
                    expect: *expect,
                    routed: Some((call, cached)),
                };
            }
        }
    }

    /// The upstream session of a call: the cached one, or one being opened, by this stream (the
    /// opening claimed) or by another one (waited for). `waited_since`: when this stream began
    /// to wait, if it did; past the opening's staleness it opens on its own instead.
    fn obtain_session(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        waited_since: Option<u64>,
    ) -> Result<Obtained, GatewayError> {
        let catalog = Rc::clone(&self.catalog);
        let server = server_of(&catalog, pending.call.server)?;
        if !on_upstream_session(server, self.stateless) {
            // No upstream session at all: a stateless client's call goes as it is; a session
            // client's call to an upstream that speaks only 2026-07-28 gets the `_meta` that
            // revision requires (its routing headers are set on forwarding).
            let mut pending = pending;
            if !self.stateless {
                let claims = &pending.call.session.claims;
                pending.call.body = stateless::with_meta(
                    &pending.call.body,
                    claims.caps.as_deref(),
                    claims.info.as_deref(),
                )?;
                // The whole body is rewritten.
                pending.call.kept_tail = 0;
            }
            return Ok(Obtained::Ready(pending, UpstreamSession::stateless()));
        }
        let slots = catalog.limits.upstream_session_slots;
        let client = &pending.call.session.id;
        let cached = |host: &dyn Host| {
            upstream::lookup(host, slots, client, &server.name)
                .filter(|upstream| pending.then.accepts(upstream))
        };
        if let Some(upstream) = cached(host) {
            return Ok(Obtained::Ready(pending, upstream));
        }
        let timeout = catalog.limits.upstream_timeout_ms;
        let now = host.now_millis();
        let may_wait = waited_since
            .is_none_or(|since| now.saturating_sub(since) <= opening::stale_after_ms(timeout));
        let attempt = if may_wait {
            opening::claim(host, slots, client, &server.name, timeout)
        } else {
            Attempt::OpenAlone
        };
        match attempt {
            Attempt::Wait { opener } => {
                self.stage = Stage::WaitingForSession {
                    pending,
                    since_ms: waited_since.unwrap_or(now),
                    opener,
                };
                Ok(Obtained::Underway)
            }
            Attempt::Open(claim) => {
                // Cached between the look-up and the claim: nothing to open.
                if let Some(upstream) = cached(host) {
                    opening::release(host, &claim, Outcome::Opened);
                    return Ok(Obtained::Ready(pending, upstream));
                }
                self.start_initialize(host, pending, Some(claim))?;
                Ok(Obtained::Underway)
            }
            Attempt::OpenAlone => {
                self.start_initialize(host, pending, None)?;
                Ok(Obtained::Underway)
            }
        }
    }

    /// A woken stream has its session. Running on the root context, it cannot clear its own
    /// route cache, so a call to forward first pings the upstream session (see
    /// [`Stage::Resuming`]); a replay is a dispatch anyway.
    fn resume_woken(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        upstream: UpstreamSession,
    ) -> Result<(), GatewayError> {
        if let AfterOpening::Replay { .. } = pending.then {
            return self.session_ready(host, pending, upstream);
        }
        let catalog = Rc::clone(&self.catalog);
        let server = server_of(&catalog, pending.call.server)?;
        let mut headers = upstream::call_headers(server, "POST", Some(&upstream));
        headers.push(("x-mcp-method", "ping"));
        let token = host
            .dispatch(
                &server.cluster,
                &headers,
                upstream::PING_BODY.as_bytes(),
                catalog.limits.upstream_timeout_ms,
            )
            .map_err(|e| upstream_failure(server, &format!("ping: {e}")))?;
        self.stage = Stage::Resuming {
            pending,
            upstream,
            token,
        };
        Ok(())
    }

    /// An opening failed: its waiters learn why, and so does the client.
    fn opening_failed(
        &mut self,
        host: &mut dyn Host,
        server: usize,
        claim: Option<&Claim>,
        error: GatewayError,
    ) {
        host.observe(Event::UpstreamFailed {
            server: self.server_name(server),
        });
        if let Some(claim) = claim {
            opening::release(host, claim, Outcome::Failed(&error.message));
        }
        self.fail(host, error);
    }

    /// Rewrites the held request for its upstream and lets Envoy's routes carry it.
    fn forward(
        &mut self,
        host: &mut dyn Host,
        call: Call,
        upstream: &UpstreamSession,
        cached: bool,
    ) {
        call.write_body(host);
        if !self.set_route_headers(host, &call, upstream, Some(call.body.len())) {
            return;
        }
        host.clear_route_cache();
        let cached = cached.then(|| upstream.session_id.clone());
        self.stage = Stage::Forwarded { call, cached };
    }

    /// The request headers of a routed call: the client's outside the server's allow-list
    /// removed, the route's and the upstream session's set. `content_length`: the new body's
    /// (`None`: the body is still to come and may change length, so none is sent). `false` when
    /// the server left the catalog.
    fn set_route_headers(
        &mut self,
        host: &mut dyn Host,
        call: &Call,
        upstream: &UpstreamSession,
        content_length: Option<usize>,
    ) -> bool {
        let catalog = Rc::clone(&self.catalog);
        let (Some(server), Some(allowed)) = (
            catalog.server(call.server),
            catalog.forward_headers(call.server),
        ) else {
            return false;
        };
        // Only what the server needs reaches it: every client header outside its allow-list
        // (cookies, the client's credential, API keys, x-forwarded-for, ...) is removed, one host
        // call per name actually present. Envoy still needs x-forwarded-proto to pick the route,
        // which then removes it.
        let stateless_upstream = upstream.protocol_version == stateless::VERSION;
        for (i, (name, _)) in self.headers.iter().enumerate() {
            // A stateless upstream gets the routing headers (set below to its own names).
            let routing = stateless_upstream && matches!(name.as_str(), "mcp-method" | "mcp-name");
            if routing || allowed.allows(name) || ROUTING_ONLY_HEADERS.contains(&name.as_str()) {
                continue;
            }
            // A name sent twice was removed with its first copy.
            if !self.headers.iter().take(i).any(|(n, _)| n == name) {
                host.remove_request_header(name);
            }
        }
        if content_length.is_none() && self.header("content-length").is_some() {
            host.remove_request_header("content-length");
        }
        // Each header write is a host call: write only what differs from what the client sent.
        // A header the client sent twice is removed first: Envoy's replace only overwrites the
        // first value, and the second copy (a client credential, say) must not go upstream.
        let mut set = |name: &str, value: &[u8]| {
            let mut sent = self.headers.iter().filter(|(n, _)| n == name);
            match (sent.next(), sent.next()) {
                (Some((_, v)), None) if v.as_slice() == value => {}
                (Some(_), Some(_)) => {
                    host.remove_request_header(name);
                    host.set_request_header(name, value);
                }
                _ => host.set_request_header(name, value),
            }
        };
        if let Some(len) = content_length {
            set("content-length", len.to_string().as_bytes());
        }
        set(":authority", server.authority.as_bytes());
        set(":path", server.path.as_bytes());
        set("accept", b"application/json, text/event-stream");
        set("x-mcp-servername", server.name.as_bytes());
        for (name, value) in &call.policy {
            set(name, value.as_bytes());
        }
        if let Some(method) = call.method {
            set("x-mcp-method", method.as_bytes());
        }
        set("mcp-protocol-version", upstream.protocol_version.as_bytes());
        if stateless_upstream {
            // The upstream checks the routing headers against the body: the names it knows.
            if let Some(method) = call.method {
                set("mcp-method", method.as_bytes());
            }
            if let Some(name) = &call.name {
                set("mcp-name", stateless::encode_value(name).as_bytes());
            }
        }
        if !upstream.session_id.is_empty() {
            set("mcp-session-id", upstream.session_id.as_bytes());
        }
        // The server's own credential; the client's (never in an allow-list) is gone already.
        for header in &server.headers {
            set(&header.name, header.value.as_bytes());
        }
        if upstream.session_id.is_empty() && self.header("mcp-session-id").is_some() {
            host.remove_request_header("mcp-session-id");
        }
        host.observe(Event::Request {
            method: self.method,
            served: Served::Routed,
        });
        if let (Some(tool), Some("tools/call")) = (&call.tool, call.method) {
            host.observe(Event::ToolCall {
                server: &server.name,
                tool,
            });
        }
        true
    }

    fn start_initialize(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        claim: Option<Claim>,
    ) -> Result<(), GatewayError> {
        let catalog = Rc::clone(&self.catalog);
        let server = server_of(&catalog, pending.call.server)?;
        let limit = catalog.limits.max_session_opens_per_second;
        let slots = catalog.limits.upstream_session_slots;
        let refused = if opening::admit(host, slots, &pending.call.session.id, limit) {
            None
        } else {
            Some(GatewayError::too_many_openings(limit))
        };
        let dispatched = match refused {
            Some(error) => Err(error),
            None => {
                let body = upstream::initialize_body(&pending.call.session.claims);
                let mut headers = upstream::call_headers(server, "POST", None);
                let allowed = catalog.forward_headers(pending.call.server);
                headers.extend(trace_context(&self.headers, allowed));
                host.dispatch(
                    &server.cluster,
                    &headers,
                    body.as_bytes(),
                    catalog.limits.upstream_timeout_ms,
                )
                .map_err(|e| {
                    upstream_failure(
                        server,
                        &format!("cannot call cluster {}: {e}", server.cluster),
                    )
                })
            }
        };
        match dispatched {
            Ok(token) => {
                self.stage = Stage::Initializing {
                    pending,
                    token,
                    claim,
                };
                Ok(())
            }
            Err(error) => {
                host.observe(Event::UpstreamFailed {
                    server: &server.name,
                });
                if let Some(claim) = &claim {
                    opening::release(host, claim, Outcome::Failed(&error.message));
                }
                Err(error)
            }
        }
    }

    fn on_initialized(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        claim: Option<Claim>,
        response: &CallResponse,
    ) -> Result<(), GatewayError> {
        let catalog = Rc::clone(&self.catalog);
        let server = server_of(&catalog, pending.call.server)?;
        let upstream = opened_session(server, response)?;
        let mut headers = upstream::call_headers(server, "POST", Some(&upstream));
        let allowed = catalog.forward_headers(pending.call.server);
        headers.extend(trace_context(&self.headers, allowed));
        let token = host
            .dispatch(
                &server.cluster,
                &headers,
                upstream::INITIALIZED_BODY.as_bytes(),
                catalog.limits.upstream_timeout_ms,
            )
            .map_err(|e| upstream_failure(server, &e))?;
        self.stage = Stage::Acknowledging {
            pending,
            upstream,
            token,
            claim,
        };
        Ok(())
    }

    fn on_acknowledged(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        upstream: UpstreamSession,
        claim: Option<Claim>,
        response: &CallResponse,
    ) -> Result<(), GatewayError> {
        let catalog = Rc::clone(&self.catalog);
        let server = server_of(&catalog, pending.call.server)?;
        acknowledged(server, response)?;
        host.observe(Event::UpstreamOpened {
            server: &server.name,
        });
        let slots = catalog.limits.upstream_session_slots;
        let client = &pending.call.session.id;
        if let Some(evicted) = upstream::store(host, slots, client, &server.name, &upstream) {
            close_evicted(&catalog, host, &evicted);
        }
        if let Some(claim) = &claim {
            opening::release(host, claim, Outcome::Opened);
        }
        register_stream(
            self.sidecar.as_deref(),
            catalog.limits.upstream_timeout_ms,
            host,
            &pending.call.session,
            server,
            &upstream,
        );
        host.log(
            Level::Debug,
            &format!(
                "opened upstream session on {} for session {client}",
                server.name
            ),
        );
        let logs = catalog
            .server_capabilities
            .get(pending.call.server)
            .is_some_and(|c| c.logging);
        if let Some(level) = logs
            .then(|| upstream::log_level(host, slots, client))
            .flatten()
        {
            let token = dispatch_level(
                catalog.limits.upstream_timeout_ms,
                host,
                server,
                &upstream,
                &level,
            )?;
            self.stage = Stage::Leveling {
                pending,
                upstream,
                token,
            };
            return Ok(());
        }
        self.session_ready(host, pending, upstream)
    }

    /// The upstream session is usable: forward the held call, or replay it.
    fn session_ready(
        &mut self,
        host: &mut dyn Host,
        pending: Pending,
        upstream: UpstreamSession,
    ) -> Result<(), GatewayError> {
        let Pending { call, then } = pending;
        if let AfterOpening::Warm = then {
            // Cached for the client's first call: nothing to resume.
            self.stage = Stage::Answered;
            return Ok(());
        }
        let catalog = Rc::clone(&self.catalog);
        let server = server_of(&catalog, call.server)?;
        if let AfterOpening::Replay { .. } = then {
            let allowed = catalog
                .forward_headers(call.server)
                .ok_or_else(server_left)?;
            let headers = replay_headers(server, allowed, &call, &upstream, &self.headers);
            let token = host
                .dispatch(
                    &server.cluster,
                    &headers,
                    &call.body,
                    catalog.limits.upstream_timeout_ms,
                )
                .map_err(|e| upstream_failure(server, &e))?;
            self.stage = Stage::Replaying {
                token,
                server: call.server,
                method: call.method,
            };
        } else {
            self.proceed(host, Pending { call, then }, &upstream, false);
            host.resume_request();
        }
        Ok(())
    }

    fn relay_replay(
        &mut self,
        host: &mut dyn Host,
        server: usize,
        method: Option<&'static str>,
        response: CallResponse,
    ) {
        let Some(status) = response.status else {
            self.fail(
                host,
                GatewayError::upstream("upstream gave no answer to the replayed call"),
            );
            return;
        };
        let content_type = response
            .content_type
            .as_deref()
            .unwrap_or(CONTENT_TYPE_JSON);
        let mut headers: Vec<(&str, &[u8])> = vec![("content-type", content_type)];
        if let Some(token) = &self.session_token {
            headers.push(("mcp-session-id", token));
        }
        let name = self.server_name(server).to_owned();
        let mapped = self
            .catalog
            .server(server)
            .is_some_and(|s| !s.prefix.is_empty());
        let body = if is_event_stream(Some(content_type)) {
            SseRelay::new(&name, mapped, method).feed(&response.body)
        } else {
            match std::str::from_utf8(&response.body) {
                Ok(text) if mapped && method == Some("resources/read") => {
                    crate::relay::read_result_uris(text, &name)
                        .into_owned()
                        .into_bytes()
                }
                _ => response.body.clone(),
            }
        };
        host.send_response(status, &headers, &body, "mcpgw_replayed");
        self.audit(host, status, None);
        self.stage = Stage::Answered;
    }

    /// DELETE: end the client's session and the upstream sessions known for it.
    fn close_session(&mut self, host: &mut dyn Host) -> Action {
        let session = match self.open_session(host) {
            Ok(Some(session)) => session,
            Ok(None) => return self.fail(host, GatewayError::missing_session()),
            Err(e) => return self.fail(host, e),
        };
        // Recorded first: a session whose end could not be recorded stays whole (its upstream
        // sessions too), and the client is told to retry.
        if crate::ended::record(host, crate::ended::SETS, &session.id, session.claims.iat).is_err()
        {
            return self.fail(host, GatewayError::session_not_ended());
        }
        let catalog = Rc::clone(&self.catalog);
        forget_streams(
            self.sidecar.as_deref(),
            catalog.limits.upstream_timeout_ms,
            host,
            &session,
        );
        let slots = catalog.limits.upstream_session_slots;
        let mut pending = Vec::new();
        for server in &catalog.servers {
            let Some(upstream) = upstream::forget(host, slots, &session.id, &server.name) else {
                continue;
            };
            if upstream.session_id.is_empty() {
                continue;
            }
            let headers = upstream::call_headers(server, "DELETE", Some(&upstream));
            match host.dispatch(
                &server.cluster,
                &headers,
                b"",
                catalog.limits.upstream_timeout_ms,
            ) {
                Ok(token) => pending.push(token),
                Err(e) => host.log(
                    Level::Warn,
                    &format!("cannot close session on {}: {e}", server.name),
                ),
            }
        }
        self.await_calls(host, pending, Then::Empty(200))
    }

    /// Marks a GET whose session checked out as vouched for: the sidecar serves its notification
    /// stream only with the plugin's own `authorization`. Every client copy goes first (Envoy's
    /// replace would only overwrite the first of several), so a client credential never reaches
    /// the sidecar. On every other path of the MCP endpoint the request is answered here or
    /// forwarded upstream with the client's `authorization` removed or replaced, so the sidecar's
    /// token is only ever set on this one.
    /// It also names the client session (`x-mcpgw-session`; a client's copy was removed with the
    /// routing headers), so the sidecar can merge the session's upstream GET streams into it.
    fn vouch(&mut self, host: &mut dyn Host, session: &Session) {
        if self.header("authorization").is_some() {
            host.remove_request_header("authorization");
        }
        if let Some(sidecar) = &self.sidecar {
            host.set_request_header("authorization", sidecar.authorization.as_bytes());
            host.set_request_header(SESSION_HEADER, session.id.as_bytes());
        }
    }

    /// The client's session, when it sent one: `Err` (404) when the token is not valid.
    fn open_session(&mut self, host: &mut dyn Host) -> Result<Option<Rc<Session>>, GatewayError> {
        let Some(token) = &self.session_token else {
            return Ok(None);
        };
        let session = match self.catalog.keys.open_checked(token, host.now_secs()) {
            Ok(session) => session,
            Err(reason) => {
                host.observe(Event::SessionRefused { reason });
                return Err(GatewayError::session_not_found());
            }
        };
        if crate::ended::is_ended(host, crate::ended::SETS, &session.id, session.claims.iat) {
            host.observe(Event::SessionRefused {
                reason: Refusal::Ended,
            });
            return Err(GatewayError::session_not_found().because("session_ended"));
        }
        Ok(Some(session))
    }

    fn reply_result(&mut self, host: &mut dyn Host, result: &str) -> Action {
        let body = jsonrpc::result_body(self.id.as_deref().unwrap_or("null"), result);
        self.reply(host, 200, &body)
    }

    fn reply(&mut self, host: &mut dyn Host, status: u16, body: &[u8]) -> Action {
        let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(2);
        if !body.is_empty() {
            headers.push(("content-type", CONTENT_TYPE_JSON));
        }
        if let Some(token) = &self.session_token {
            headers.push(("mcp-session-id", token));
        }
        host.send_response(status, &headers, body, "mcpgw_answered");
        host.observe(Event::Request {
            method: self.method,
            served: Served::Answered,
        });
        self.stage = Stage::Answered;
        Action::Pause
    }

    /// Writes the audit line of a routed call (once) with its outcome.
    fn audit(&mut self, host: &mut dyn Host, status: u16, code: Option<i32>) {
        if let Some(audit) = self.audit.take() {
            host.set_property(
                crate::audit::AUDIT_PROPERTY,
                audit.line(status, code).as_bytes(),
            );
        }
    }

    fn fail(&mut self, host: &mut dyn Host, error: GatewayError) -> Action {
        self.report(host, &error);
        if self.answers == Answers::Nobody {
            self.stage = Stage::Answered;
            return Action::Continue;
        }
        host.observe(Event::Request {
            method: self.method,
            served: Served::Error(error.code),
        });
        host.log_field(Field::ErrorCode, &error.code.to_string());
        self.audit(host, error.http_status, Some(error.code));
        let body = jsonrpc::error_body(self.id.as_deref(), &error);
        let mut headers: Vec<(&str, &[u8])> = vec![("content-type", CONTENT_TYPE_JSON)];
        if error.http_status == 405 {
            let allow: &[u8] = if self.catalog.gateway.list_changed {
                b"GET, POST, DELETE"
            } else {
                b"POST, DELETE"
            };
            headers.push(("allow", allow));
        }
        if error.http_status == 429 {
            headers.push(("retry-after", b"1"));
        }
        let catalog = Rc::clone(&self.catalog);
        if let (Some(identity), "unauthenticated") = (&catalog.identity, error.check) {
            headers.push(("www-authenticate", identity.challenge.as_bytes()));
        }
        let details = format!("mcpgw_{}", error.check);
        host.send_response(error.http_status, &headers, &body, &details);
        self.stage = Stage::Answered;
        Action::Pause
    }

    /// Every refusal reaches the log with the check that made it (within the VM's log budget):
    /// upstream failures at `warn`, the client's own mistakes at `info`.
    fn report(&self, host: &mut dyn Host, error: &GatewayError) {
        let Some(suppressed) = self.log_budget.admit(host.now_secs()) else {
            return;
        };
        // Upstream failures (-32603 inside HTTP 200) and the gateway's own (5xx) at warn; the
        // client's mistakes and pace (4xx) at info.
        let upstream = error.code == crate::error::INTERNAL_ERROR && error.http_status < 400;
        let level = if error.http_status >= 500 || upstream {
            Level::Warn
        } else {
            Level::Info
        };
        let also = if suppressed > 0 {
            format!(" ({suppressed} more refusals not logged)")
        } else {
            String::new()
        };
        host.log(
            level,
            &format!(
                "refused with HTTP {} / {} by check {}: {}{also}",
                error.http_status, error.code, error.check, error.message
            ),
        );
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// Names the request for telemetry (see [`Request::method`]) and the access log.
    fn label(&mut self, host: &mut dyn Host, method: &'static str) {
        self.method = method;
        host.log_field(Field::Method, method);
    }

    /// Refuses the request: at once, or (a POST with a body) once its body told the request id.
    fn refuse(&mut self, host: &mut dyn Host, error: GatewayError, end_of_stream: bool) -> Action {
        if self.header(":method") == Some(b"POST") && !end_of_stream {
            self.stage = Stage::Refusing { error };
            return Action::Pause;
        }
        self.fail(host, error)
    }

    /// RFC 9728 protected-resource metadata (GET only), open to everyone.
    fn serve_metadata(&mut self, host: &mut dyn Host, method: Option<&[u8]>) -> Action {
        let catalog = Rc::clone(&self.catalog);
        let Some(identity) = &catalog.identity else {
            return Action::Continue;
        };
        if method != Some(b"GET") {
            host.send_response(405, &[("allow", b"GET")], b"", "mcpgw_method_not_allowed");
        } else {
            host.send_response(
                200,
                &[
                    ("content-type", CONTENT_TYPE_JSON),
                    ("cache-control", b"max-age=300"),
                ],
                identity.metadata.as_bytes(),
                "mcpgw_resource_metadata",
            );
        }
        self.stage = Stage::Answered;
        Action::Pause
    }

    fn server_name(&self, index: usize) -> &str {
        self.catalog.server(index).map_or("?", |s| s.name.as_str())
    }
}

/// The request headers, read in one host call (measured cheaper than one call per header), with
/// the routing headers removed: only the gateway sets those, on every path, because upstream
/// routes match on them and a client must not reach an upstream by sending them itself.
fn client_headers(host: &mut dyn Host) -> Vec<(String, Vec<u8>)> {
    let mut headers = host.request_headers();
    let mut consumed_removed = [false; CONSUMED_HEADERS.len()];
    headers.retain(|(name, _)| {
        let spoofed = ROUTING_HEADERS.contains(&name.as_str());
        if spoofed {
            host.remove_request_header(name);
        }
        // The capability grant and the virtual server are the gateway's to read (kept here),
        // never an upstream's.
        if let Some(i) = CONSUMED_HEADERS.iter().position(|c| c == name) {
            if let Some(removed) = consumed_removed.get_mut(i).filter(|r| !**r) {
                host.remove_request_header(name);
                *removed = true;
            }
        }
        !spoofed
    });
    headers
}

/// The client's trace context headers (see [`TRACE_HEADERS`]) that the server may receive (its
/// `forward_headers`), for the gateway's own calls made for the client's request.
pub(crate) fn trace_context<'h>(
    client: &'h [(String, Vec<u8>)],
    allowed: Option<&'h ForwardHeaders>,
) -> impl Iterator<Item = (&'h str, &'h str)> {
    client.iter().filter_map(move |(name, value)| {
        let name = TRACE_HEADERS.iter().find(|t| **t == name.as_str())?;
        if !allowed.is_some_and(|a| a.allows(name)) {
            return None;
        }
        Some((*name, std::str::from_utf8(value).ok()?))
    })
}

/// Headers the gateway reads and removes on every path: they never reach an upstream.
const CONSUMED_HEADERS: [&str; 2] = [
    crate::grant::GRANT_HEADER,
    crate::grant::VIRTUAL_SERVER_HEADER,
];

/// The request is for the MCP endpoint: `Some(None)` on `mcp_path` itself, `Some(Some(name))` on
/// `<mcp_path>/<name>` when virtual servers are configured (the name is checked later).
fn mcp_path_of(headers: &[(String, Vec<u8>)], catalog: &Catalog) -> Option<Option<String>> {
    let path = catalog.gateway.mcp_path.as_bytes();
    let full = find_header(headers, ":path").unwrap_or_default();
    let bare = full.split(|b| *b == b'?').next().unwrap_or_default();
    if bare == path {
        return Some(None);
    }
    if catalog.virtual_servers.is_empty() {
        return None;
    }
    let name = bare.strip_prefix(path)?.strip_prefix(b"/")?;
    Some(Some(String::from_utf8_lossy(name).into_owned()))
}

/// The request's path, without its query, is `path`.
fn is_path(headers: &[(String, Vec<u8>)], path: &str) -> bool {
    let full = find_header(headers, ":path").unwrap_or_default();
    let bare = full.split(|b| *b == b'?').next().unwrap_or_default();
    bare == path.as_bytes()
}

/// A stream on a VM that has no configuration yet (it has just started, and the published
/// document has not reached it): the routing headers are still stripped on every path, and a
/// request to the default MCP path gets a 503 JSON-RPC error that carries its id.
#[derive(Debug, Default)]
pub struct Unconfigured {
    reading_body: bool,
    /// Installed without `allow_on_headers_stop_iteration`: answered from the headers.
    headers_only: bool,
}

impl Unconfigured {
    pub fn new(headers_only: bool) -> Self {
        Self {
            reading_body: false,
            headers_only,
        }
    }

    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let headers = client_headers(host);
        if !is_path(&headers, crate::config::DEFAULT_MCP_PATH) {
            return Action::Continue;
        }
        if find_header(&headers, ":method") == Some(b"POST") && !end_of_stream && !self.headers_only
        {
            self.reading_body = true;
            return Action::Pause;
        }
        Self::answer(host, None)
    }

    pub fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !self.reading_body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.reading_body = false;
        let body = host.request_body(size).unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let id = jsonrpc::salvage_id(&text).map(|id| id.get().to_owned());
        Self::answer(host, id.as_deref())
    }

    fn answer(host: &mut dyn Host, id: Option<&str>) -> Action {
        let error = GatewayError::not_configured();
        host.log(Level::Warn, &error.message);
        let body = jsonrpc::error_body(id, &error);
        let details = format!("mcpgw_{}", error.check);
        host.send_response(
            error.http_status,
            &[("content-type", CONTENT_TYPE_JSON)],
            &body,
            &details,
        );
        Action::Pause
    }
}

/// Headers that carry one value each: sent twice, the gateway and an upstream could each read
/// another one.
const SINGLE_HEADERS: [&str; 7] = [
    crate::grant::GRANT_HEADER,
    crate::grant::VIRTUAL_SERVER_HEADER,
    "mcp-session-id",
    "mcp-protocol-version",
    "content-type",
    "origin",
    "last-event-id",
];

fn repeated_header(headers: &[(String, Vec<u8>)]) -> Option<&'static str> {
    SINGLE_HEADERS
        .into_iter()
        .find(|name| headers.iter().filter(|(n, _)| n == name).nth(1).is_some())
}

fn find_header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// Header checks of a POST to the MCP endpoint.
fn check_post<'h>(
    catalog: &Catalog,
    header: &dyn Fn(&str) -> Option<&'h [u8]>,
    end_of_stream: bool,
) -> Result<(), GatewayError> {
    let content_type = header("content-type").unwrap_or_default();
    if !media_type_is(content_type, b"application/json") {
        return Err(GatewayError::unsupported_media_type());
    }
    // One meaning per body: the gateway reads UTF-8 JSON as sent, so a body declared in another
    // charset or content coding (which an upstream might decode) is refused.
    if charset(content_type).is_some_and(|c| !c.eq_ignore_ascii_case(b"utf-8")) {
        return Err(GatewayError::unsupported_encoding(
            "the body must be UTF-8 (charset=utf-8 or none)",
        ));
    }
    if header("content-encoding").is_some_and(|c| !c.trim_ascii().eq_ignore_ascii_case(b"identity"))
    {
        return Err(GatewayError::unsupported_encoding(
            "Content-Encoding is not accepted; send the body uncompressed",
        ));
    }
    if let Some(accept) = header("accept") {
        // Clients that send no Accept (plain curl) are served; one that sends it must allow both
        // answers an MCP server may give (an upstream chooses JSON or SSE).
        let allows = |kind: &[u8], family: &[u8]| {
            accept.split(|b| *b == b',').any(|item| {
                [kind, family, b"*/*"]
                    .iter()
                    .any(|a| media_type_is(item, a))
            })
        };
        if !allows(b"application/json", b"application/*")
            || !allows(b"text/event-stream", b"text/*")
        {
            return Err(GatewayError::not_acceptable());
        }
    }
    if let Some(version) = header("mcp-protocol-version") {
        if !stateless::supported_versions().any(|v| v.as_bytes() == version) {
            return Err(stateless::unsupported_version(version));
        }
    }
    let limit = catalog.limits.max_body_bytes;
    let declared = header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(GatewayError::body_too_large(limit));
    }
    if end_of_stream {
        return Err(GatewayError::parse("Parse error: empty body"));
    }
    Ok(())
}

/// A 401 or 403 answer to a routed call that is not an MCP answer: an authorization filter after
/// the plugin (or the upstream's own front door) refused it. Told apart from other failures: the
/// client learns it was refused, and for what.
fn policy_refusal(status: Option<&[u8]>, call: &Call, catalog: &Catalog) -> Option<GatewayError> {
    let status: u16 = match status? {
        b"401" => 401,
        b"403" => 403,
        _ => return None,
    };
    let server = catalog.server(call.server).map_or("?", |s| s.name.as_str());
    let what = call
        .policy
        .first()
        .map_or_else(String::new, |(_, name)| format!(" {name}"));
    let method = call.method.unwrap_or("the answer");
    Some(GatewayError::denied(
        status,
        format!("Access denied: {method}{what} on server {server} is not allowed"),
    ))
}

/// MCP 2026-07-28 answers a client's mistakes with HTTP 400 (unknown method: 404), where the
/// session era answered HTTP 200.
fn stateless_error(mut error: GatewayError) -> GatewayError {
    if error.http_status == 200 && error.code != crate::error::INTERNAL_ERROR {
        error.http_status = if error.code == crate::error::METHOD_NOT_FOUND {
            404
        } else {
            400
        };
    }
    error
}

/// The response carries an MCP answer (JSON or SSE), not a proxy's error page.
fn speaks_mcp(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        media_type_is(ct, b"application/json") || media_type_is(ct, b"text/event-stream")
    })
}

pub(crate) fn is_event_stream(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| media_type_is(ct, b"text/event-stream"))
}

/// The `charset` parameter of a media type, unquoted.
fn charset(value: &[u8]) -> Option<&[u8]> {
    value.split(|b| *b == b';').skip(1).find_map(|param| {
        let (name, v) = param.split_at(param.iter().position(|b| *b == b'=')?);
        let v = v.get(1..)?.trim_ascii();
        name.trim_ascii().eq_ignore_ascii_case(b"charset").then(|| {
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v)
        })
    })
}

/// `value` (a header value, maybe with parameters) names the media type `expected`.
fn media_type_is(value: &[u8], expected: &[u8]) -> bool {
    let essence = value.split(|b| *b == b';').next().unwrap_or_default();
    essence.trim_ascii().eq_ignore_ascii_case(expected)
}

/// Whether a client's calls to `server` go on an upstream session: not when the server speaks
/// MCP 2026-07-28 and the client (`stateless_client`) does too, nor when the server speaks no
/// older revision.
fn on_upstream_session(server: &ServerConfig, stateless_client: bool) -> bool {
    let speaks = |wanted: &dyn Fn(&str) -> bool| server.protocol_versions.iter().any(|v| wanted(v));
    let speaks_2026 = speaks(&|v| v == stateless::VERSION);
    let speaks_2025 = speaks(&|v| SUPPORTED_PROTOCOL_VERSIONS.contains(&v));
    !(speaks_2026 && (stateless_client || !speaks_2025))
}

fn server_left() -> GatewayError {
    GatewayError::upstream("server left the configuration")
}

/// The server a call is for, in the catalog the request started with.
pub(crate) fn server_of(catalog: &Catalog, index: usize) -> Result<&ServerConfig, GatewayError> {
    catalog.server(index).ok_or_else(server_left)
}

/// Closes an upstream session the cache pushed out: nobody will use it again.
pub(crate) fn close_evicted(catalog: &Catalog, host: &mut dyn Host, evicted: &upstream::Evicted) {
    let Some(server) = catalog.servers.iter().find(|s| s.name == evicted.server) else {
        return;
    };
    if evicted.session.session_id.is_empty() {
        return;
    }
    let headers = upstream::call_headers(server, "DELETE", Some(&evicted.session));
    if let Err(e) = host.dispatch_detached(
        &server.cluster,
        &headers,
        b"",
        catalog.limits.upstream_timeout_ms,
    ) {
        host.log(
            Level::Warn,
            &format!("cannot close evicted session on {}: {e}", server.name),
        );
    }
}

pub(crate) fn upstream_failure(server: &ServerConfig, detail: &str) -> GatewayError {
    GatewayError::upstream(format!("upstream {} failed: {detail}", server.name))
}

/// Headers the gateway itself sets on a replayed call (with the server's `headers`); a client's
/// copy never rides along.
const REPLAY_SETS: [&str; 5] = [
    "content-length",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
];

/// Headers of a replayed call, mirroring what [`Request::forward`] lets through for the routed
/// one: the gateway's own, then the client's headers the server's allow-list admits (trace
/// context, `forward_headers`), nothing else.
pub(crate) fn replay_headers<'a>(
    server: &'a ServerConfig,
    allowed: &ForwardHeaders,
    call: &'a Call,
    upstream: &'a UpstreamSession,
    client: &'a [(String, Vec<u8>)],
) -> Vec<(&'a str, &'a str)> {
    let mut headers = upstream::call_headers(server, "POST", Some(upstream));
    for (name, value) in &call.policy {
        headers.push((name, value.as_str()));
    }
    if let Some(method) = call.method {
        headers.push(("x-mcp-method", method));
    }
    let own = headers.len();
    for (name, value) in client {
        let gateways = name.starts_with(':')
            || REPLAY_SETS.contains(&name.as_str())
            || headers
                .iter()
                .take(own)
                .any(|(n, _)| n.eq_ignore_ascii_case(name));
        if gateways || !allowed.allows(name) {
            continue;
        }
        if let Ok(value) = std::str::from_utf8(value) {
            headers.push((name.as_str(), value));
        }
    }
    headers
}

/// Tells the sidecar, fire-and-forget, about an upstream session opened for a client
/// session, so it can follow the upstream's GET stream on the client's notification stream.
/// Nothing waits for the answer: it arrives as a call answer no stage awaits, logged at debug
/// and ignored. No sidecar (a static setup), or an upstream without sessions: nothing to do.
pub(crate) fn register_stream(
    sidecar: Option<&SidecarLink>,
    timeout_ms: u64,
    host: &mut dyn Host,
    session: &Session,
    server: &ServerConfig,
    upstream: &UpstreamSession,
) {
    let Some(sidecar) = sidecar else {
        return;
    };
    if upstream.session_id.is_empty() {
        return;
    }
    let body = format!(
        "{{\"session\":{},\"server\":{},\"upstream_session\":{},\"protocol_version\":{}}}",
        jsonrpc::json_string(&session.id),
        jsonrpc::json_string(&server.name),
        jsonrpc::json_string(&upstream.session_id),
        jsonrpc::json_string(&upstream.protocol_version),
    );
    let headers = [
        (":method", "POST"),
        (":path", SIDECAR_STREAMS_PATH),
        (":authority", sidecar.authority.as_str()),
        ("authorization", sidecar.authorization.as_str()),
        ("content-type", "application/json"),
    ];
    if let Err(e) = host.dispatch(&sidecar.cluster, &headers, body.as_bytes(), timeout_ms) {
        host.log(
            Level::Warn,
            &format!(
                "cannot register the upstream session of {} with the sidecar: {e}",
                server.name
            ),
        );
    }
}

/// Tells the sidecar, fire-and-forget, that a client session ended, so it drops what it keeps
/// for the session's notification stream (as [`register_stream`], nothing waits for the answer).
pub(crate) fn forget_streams(
    sidecar: Option<&SidecarLink>,
    timeout_ms: u64,
    host: &mut dyn Host,
    session: &Session,
) {
    let Some(sidecar) = sidecar else {
        return;
    };
    let body = format!("{{\"session\":{}}}", jsonrpc::json_string(&session.id));
    let headers = [
        (":method", "DELETE"),
        (":path", SIDECAR_STREAMS_PATH),
        (":authority", sidecar.authority.as_str()),
        ("authorization", sidecar.authorization.as_str()),
        ("content-type", "application/json"),
    ];
    if let Err(e) = host.dispatch(&sidecar.cluster, &headers, body.as_bytes(), timeout_ms) {
        host.log(
            Level::Warn,
            &format!("cannot tell the sidecar that a session ended: {e}"),
        );
    }
}

/// The notification a `select_tools` sends on the session's notification stream.
pub(crate) const TOOLS_LIST_CHANGED: &str = "notifications/tools/list_changed";

/// Asks the sidecar, fire-and-forget, to send `method` (a `list_changed` notification) on the
/// notification stream of this one client session, if one is open. Nothing waits for the
/// answer; the call is made so that it outlives the stream (whose answer is already sent).
/// No sidecar: nothing to do (and no stream to notify).
pub(crate) fn notify_streams(
    sidecar: Option<&SidecarLink>,
    timeout_ms: u64,
    host: &mut dyn Host,
    session: &Session,
    method: &str,
) {
    let Some(sidecar) = sidecar else {
        return;
    };
    let body = format!(
        "{{\"session\":{},\"method\":{}}}",
        jsonrpc::json_string(&session.id),
        jsonrpc::json_string(method),
    );
    let headers = [
        (":method", "POST"),
        (":path", SIDECAR_NOTIFY_PATH),
        (":authority", sidecar.authority.as_str()),
        ("authorization", sidecar.authorization.as_str()),
        ("content-type", "application/json"),
    ];
    // Detached: the answer was just sent, and the stream (with its calls) ends with it.
    if let Err(e) = host.dispatch_detached(&sidecar.cluster, &headers, body.as_bytes(), timeout_ms)
    {
        host.log(
            Level::Warn,
            &format!("cannot ask the sidecar to notify a session's stream: {e}"),
        );
    }
}

/// The client's answer to an upstream's request (sampling, elicitation, roots): its id says
/// which upstream asked and with which id (see [`crate::relay`]).
pub(crate) fn answer_call(
    catalog: &Catalog,
    text: &str,
    received_len: usize,
    id: &RawValue,
    session: Rc<Session>,
) -> Result<Call, GatewayError> {
    let unknown = || {
        GatewayError::invalid_request(format!(
            "Invalid Request: no request with id {} is awaiting an answer",
            id.get()
        ))
        .because("unknown_response")
    };
    let gateway_id = jsonrpc::raw_str(id).ok_or_else(unknown)?;
    let (server_name, original) = crate::relay::decode_id(&gateway_id).ok_or_else(unknown)?;
    let server = catalog
        .servers
        .iter()
        .position(|s| s.name == server_name)
        .ok_or_else(unknown)?;
    let span = jsonrpc::span_in(text, id.get()).ok_or_else(unknown)?;
    let kept_tail = text.len().saturating_sub(span.end);
    let body = jsonrpc::splice(text, span, original)
        .ok_or_else(unknown)?
        .into_bytes();
    Ok(Call {
        server,
        method: None,
        tool: None,
        policy: Vec::new(),
        name: None,
        body,
        received_len,
        kept_tail,
        session,
    })
}

pub(crate) fn dispatch_level(
    timeout_ms: u64,
    host: &mut dyn Host,
    server: &ServerConfig,
    upstream: &UpstreamSession,
    level: &str,
) -> Result<u32, GatewayError> {
    let mut headers = upstream::call_headers(server, "POST", Some(upstream));
    headers.push(("x-mcp-method", "logging/setLevel"));
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"logging/setLevel\",\"params\":{{\"level\":{}}}}}",
        jsonrpc::json_string(level)
    );
    host.dispatch(&server.cluster, &headers, body.as_bytes(), timeout_ms)
        .map_err(|e| upstream_failure(server, &format!("logging/setLevel: {e}")))
}

/// `params.level` of `logging/setLevel`, checked.
pub(crate) fn log_level_of<'a>(
    params: &Params<'a>,
) -> Result<std::borrow::Cow<'a, str>, GatewayError> {
    let (_, level) = required_str(params.level, "params.level")?;
    if !LOG_LEVELS.contains(&level.as_ref()) {
        return Err(GatewayError::invalid_params(format!(
            "Invalid params: level must be one of {}",
            LOG_LEVELS.join(", ")
        )));
    }
    Ok(level)
}

/// The `cursor` of a list request (`null` counts as none).
pub(crate) fn cursor_of<'a>(
    params: &Params<'a>,
) -> Result<Option<std::borrow::Cow<'a, str>>, GatewayError> {
    match params.cursor {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => jsonrpc::raw_str(raw)
            .map(Some)
            .ok_or_else(|| GatewayError::invalid_params("Invalid params: cursor must be a string")),
    }
}

/// The upstream session an `initialize` answer opened (its session id, if any, and the version
/// it negotiated), or the upstream's failure.
pub(crate) fn opened_session(
    server: &ServerConfig,
    response: &CallResponse,
) -> Result<UpstreamSession, GatewayError> {
    let message = match response.status {
        Some(200) => upstream::response_message(response.content_type.as_deref(), &response.body),
        Some(status) => {
            return Err(upstream_failure(
                server,
                &format!("initialize answered HTTP {status}"),
            ))
        }
        None => {
            return Err(upstream_failure(
                server,
                "initialize got no answer (reset or timeout)",
            ))
        }
    }
    .ok_or_else(|| upstream_failure(server, "initialize answer has no JSON-RPC response"))?;
    let protocol_version =
        upstream::initialize_outcome(&message).map_err(|e| upstream_failure(server, &e))?;
    let session_id = response
        .session_id
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default()
        .into_owned();
    Ok(UpstreamSession {
        session_id,
        protocol_version,
    })
}

/// The upstream took `notifications/initialized`.
pub(crate) fn acknowledged(
    server: &ServerConfig,
    response: &CallResponse,
) -> Result<(), GatewayError> {
    match response.status {
        Some(200..=299) => {}
        Some(status) => {
            return Err(upstream_failure(
                server,
                &format!("notifications/initialized answered HTTP {status}"),
            ))
        }
        None => {
            return Err(upstream_failure(
                server,
                "notifications/initialized got no answer",
            ))
        }
    }
    Ok(())
}
