//! A JSON-RPC batch (MCP 2025-03-26 only; later revisions removed batches): an array of
//! requests, notifications and responses in one POST, served as one stage of the request
//! pipeline with its own sub-state.
//!
//! Each element is read with [`jsonrpc::parse_message`] (the one-meaning checks of a single
//! message); local requests are answered at once, exactly as single ones are; routed requests go
//! to their upstreams as the gateway's own calls ([`Host::dispatch`]), all in parallel, after
//! opening an upstream session (once per server per batch) where none is cached; the client's
//! answers to relayed server requests are forwarded; notifications are accepted. The reply is the
//! array of answers in the order of the requests, or 202 when the batch held no request.
//!
//! An upstream answers one element with JSON or SSE; only that element's JSON-RPC response is
//! kept (a batch's reply is one JSON array: requests and notifications an upstream sends while
//! answering are not relayed).

use std::rc::Rc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::catalog::{Catalog, ListKind};
use crate::config::SidecarLink;
use crate::error::GatewayError;
use crate::host::{CallResponse, Event, Host, Level};
use crate::jsonrpc::{self, Message};
use crate::pipeline::{
    acknowledged, answer_call, close_evicted, cursor_of, dispatch_level, is_event_stream,
    log_level_of, opened_session, register_stream, replay_headers, server_of, upstream_failure,
};
use crate::route::{Call, Destination};
use crate::session::Session;
use crate::upstream::{self, UpstreamSession};

/// The one protocol revision that has batches.
pub const BATCH_PROTOCOL_VERSION: &str = "2025-03-26";

/// What a stage of the pipeline lends the batch.
pub(crate) struct Context<'a> {
    pub(crate) catalog: &'a Catalog,
    /// The client's request headers (routing headers removed), for the allow-listed ones.
    pub(crate) headers: &'a [(String, Vec<u8>)],
    pub(crate) sidecar: Option<&'a SidecarLink>,
    /// The request's capability grant, while elements are read (`None` later: then nothing is
    /// allowed, fail-closed).
    pub(crate) access: Option<&'a crate::grant::Access<'a>>,
}

/// Where a batch stands after an event.
pub(crate) enum Progress {
    Waiting,
    /// Every answer is known: the JSON array to send, or `None` (202) when the batch held no
    /// request.
    Done(Option<Vec<u8>>),
}

/// The element of the answer array a call fills in.
#[derive(Debug, Clone)]
struct Slot {
    index: usize,
    /// The request's raw JSON id.
    id: String,
}

/// A call to an upstream: it fills `slot` (a request) or nothing (a client response, a log
/// level).
#[derive(Debug)]
struct Outgoing {
    call: Call,
    slot: Option<Slot>,
}

#[derive(Debug)]
struct InFlight {
    token: u32,
    server: usize,
    method: Option<&'static str>,
    slot: Option<Slot>,
}

#[derive(Debug)]
enum Phase {
    Initializing,
    Acknowledging(UpstreamSession),
    Leveling(UpstreamSession),
}

/// An upstream session being opened for this batch.
#[derive(Debug)]
struct Opening {
    server: usize,
    token: u32,
    phase: Phase,
}

#[derive(Debug)]
pub(crate) struct Batch {
    session: Rc<Session>,
    /// One per request of the batch, in order: its answer (a JSON-RPC response) once known.
    answers: Vec<Option<Vec<u8>>>,
    /// Calls waiting for their server's upstream session to open.
    waiting: Vec<Outgoing>,
    openings: Vec<Opening>,
    in_flight: Vec<InFlight>,
}

/// The client session a batch may be served on: there is one, and it negotiated 2025-03-26.
pub(crate) fn admit(session: Option<Rc<Session>>) -> Result<Rc<Session>, GatewayError> {
    let session = session.ok_or_else(|| {
        GatewayError::invalid_request(format!(
            "Invalid Request: a JSON-RPC batch needs a session negotiated at MCP \
             {BATCH_PROTOCOL_VERSION} (Mcp-Session-Id header is required; initialize must not be \
             part of a batch)"
        ))
        .because("batch")
    })?;
    if session.claims.pv != BATCH_PROTOCOL_VERSION {
        return Err(GatewayError::invalid_request(format!(
            "Invalid Request: JSON-RPC batches are not supported in MCP {} (only in {BATCH_PROTOCOL_VERSION})",
            session.claims.pv
        ))
        .because("batch"));
    }
    Ok(session)
}

impl Batch {
    /// Reads every element, answers the local ones and sends the routed ones on their way.
    pub(crate) fn start(
        ctx: &Context<'_>,
        host: &mut dyn Host,
        session: Rc<Session>,
        elements: &[&RawValue],
    ) -> (Self, Progress) {
        let mut batch = Self {
            session,
            answers: Vec::with_capacity(elements.len()),
            waiting: Vec::new(),
            openings: Vec::new(),
            in_flight: Vec::new(),
        };
        for element in elements {
            batch.element(ctx, host, element.get());
        }
        let progress = batch.progress(host);
        (batch, progress)
    }

    fn element(&mut self, ctx: &Context<'_>, host: &mut dyn Host, text: &str) {
        let message = match jsonrpc::parse_message(text, ctx.catalog.limits.max_json_depth) {
            Ok(message) => message,
            Err(e) => {
                let id = jsonrpc::salvage_id(text).map(|id| id.get().to_owned());
                self.answers
                    .push(Some(jsonrpc::error_body(id.as_deref(), &e)));
                return;
            }
        };
        match message {
            Message::Notification { method, .. } => {
                host.log(
                    Level::Debug,
                    &format!("notification {method} accepted (batch)"),
                );
            }
            Message::Response { id } => {
                match answer_call(ctx.catalog, text, 0, id, Rc::clone(&self.session)) {
                    Ok(call) => self.send(ctx, host, Outgoing { call, slot: None }),
                    Err(e) => host.log(Level::Info, &format!("batch element refused: {e}")),
                }
            }
            Message::Request { id, method, params } => {
                let slot = Slot {
                    index: self.answers.len(),
                    id: id.get().to_owned(),
                };
                let local = |result: Result<&str, GatewayError>| match result {
                    Ok(result) => jsonrpc::result_body(&slot.id, result),
                    Err(e) => jsonrpc::error_body(Some(&slot.id), &e),
                };
                let list = |kind: ListKind| match (cursor_of(&params), ctx.access) {
                    (Ok(cursor), Some(access)) => {
                        match ctx.catalog.page_for(kind, cursor.as_deref(), access) {
                            Ok(page) => local(Ok(&page)),
                            Err(e) => local(Err(e)),
                        }
                    }
                    (Err(e), _) => local(Err(e)),
                    (Ok(_), None) => local(Err(GatewayError::upstream("no grant evaluated"))),
                };
                let answer = match method.as_ref() {
                    "initialize" => local(Err(GatewayError::invalid_request(
                        "Invalid Request: initialize must not be part of a batch",
                    ))),
                    "ping" => local(Ok("{}")),
                    "tools/list" if ctx.catalog.meta_tools_active() => {
                        match (cursor_of(&params), ctx.access) {
                            (Ok(None), Some(access)) => {
                                let scope = crate::scope::get(host, &self.session.id);
                                local(Ok(&ctx.catalog.meta_tools_page(scope.as_deref(), access)))
                            }
                            (Ok(Some(_)), _) => local(Err(GatewayError::invalid_params(
                                "Invalid params: unknown cursor",
                            ))),
                            (Err(e), _) => local(Err(e)),
                            (Ok(None), None) => {
                                local(Err(GatewayError::upstream("no grant evaluated")))
                            }
                        }
                    }
                    "tools/list" => list(ListKind::Tools),
                    "prompts/list" => list(ListKind::Prompts),
                    "resources/list" => list(ListKind::Resources),
                    "resources/templates/list" => list(ListKind::ResourceTemplates),
                    "logging/setLevel" => match log_level_of(&params) {
                        Ok(level) => {
                            self.set_level(ctx, host, &level);
                            local(Ok("{}"))
                        }
                        Err(e) => local(Err(e)),
                    },
                    routed @ ("tools/call"
                    | "prompts/get"
                    | "resources/read"
                    | "resources/subscribe"
                    | "resources/unsubscribe"
                    | "completion/complete") => {
                        if ctx.catalog.authorization_after_plugin {
                            // Batched calls go upstream through the plugin's own calls, past
                            // the authorization filter that decides on single requests.
                            self.answers
                                .push(Some(local(Err(GatewayError::invalid_request(format!(
                                    "Invalid Request: {routed} must be sent alone, not in a batch \
                                     (the gateway's authorization decides on single requests)"
                                ))
                                .because("batched_call_refused")))));
                            return;
                        }
                        if routed == "tools/call" && ctx.catalog.meta_tools_active() {
                            // Tool discovery: the meta-tools are answered alone, and a session's
                            // selection holds in a batch too.
                            let called = params.name.and_then(jsonrpc::raw_str);
                            let refusal = match called.as_deref() {
                                Some(
                                    crate::catalog::DISCOVER_TOOLS | crate::catalog::SELECT_TOOLS,
                                ) => Some(GatewayError::invalid_request(
                                    "Invalid Request: discover_tools and select_tools must be \
                                     sent alone, not in a batch",
                                )),
                                Some(name) => crate::scope::get(host, &self.session.id)
                                    .filter(|scope| !scope.iter().any(|tool| tool == name))
                                    .map(|_| {
                                        GatewayError::invalid_params(format!(
                                            "Invalid params: tool {} is outside this session's \
                                             selection (select_tools)",
                                            jsonrpc::json_string(name)
                                        ))
                                    }),
                                None => None,
                            };
                            if let Some(refusal) = refusal {
                                self.answers.push(Some(local(Err(refusal))));
                                return;
                            }
                        }
                        let granted = |destination: &Destination| match ctx.access {
                            Some(access) => destination.check(ctx.catalog, access),
                            None => Err(GatewayError::upstream("no grant evaluated")),
                        };
                        match Destination::of(ctx.catalog, text, routed, &params).and_then(
                            |destination| {
                                granted(&destination)?;
                                destination.into_call(text, 0, Rc::clone(&self.session))
                            },
                        ) {
                            Ok(call) => {
                                self.answers.push(None);
                                let slot = Some(slot);
                                self.send(ctx, host, Outgoing { call, slot });
                                return;
                            }
                            Err(e) => local(Err(e)),
                        }
                    }
                    other => local(Err(GatewayError::method_not_found(other))),
                };
                self.answers.push(Some(answer));
            }
        }
    }

    /// `logging/setLevel`, as for a single request: remembered for the session, and sent to
    /// the open upstream sessions of servers that log (the batch waits for them).
    fn set_level(&mut self, ctx: &Context<'_>, host: &mut dyn Host, level: &str) {
        let slots = ctx.catalog.limits.upstream_session_slots;
        upstream::store_log_level(host, slots, &self.session.id, level);
        for (index, server) in ctx.catalog.servers.iter().enumerate() {
            let logs = ctx
                .catalog
                .server_capabilities
                .get(index)
                .is_some_and(|c| c.logging);
            if !logs {
                continue;
            }
            let Some(upstream) = upstream::lookup(host, slots, &self.session.id, &server.name)
            else {
                continue;
            };
            let timeout_ms = ctx.catalog.limits.upstream_timeout_ms;
            match dispatch_level(timeout_ms, host, server, &upstream, level) {
                Ok(token) => self.in_flight.push(InFlight {
                    token,
                    server: index,
                    method: None,
                    slot: None,
                }),
                Err(e) => host.log(Level::Warn, &e.message),
            }
        }
    }

    /// Sends a call on the cached upstream session, or queues it behind the opening of one.
    fn send(&mut self, ctx: &Context<'_>, host: &mut dyn Host, outgoing: Outgoing) {
        let index = outgoing.call.server;
        let server = match server_of(ctx.catalog, index) {
            Ok(server) => server,
            Err(e) => return self.fail(host, outgoing.slot, &e),
        };
        let slots = ctx.catalog.limits.upstream_session_slots;
        if let Some(upstream) = upstream::lookup(host, slots, &self.session.id, &server.name) {
            return self.dispatch(ctx, host, outgoing, &upstream);
        }
        if !self.openings.iter().any(|o| o.server == index) {
            let body = upstream::initialize_body(&self.session.claims);
            let mut headers = upstream::call_headers(server, "POST", None);
            let allowed = ctx.catalog.forward_headers(index);
            headers.extend(crate::pipeline::trace_context(ctx.headers, allowed));
            let timeout_ms = ctx.catalog.limits.upstream_timeout_ms;
            match host.dispatch(&server.cluster, &headers, body.as_bytes(), timeout_ms) {
                Ok(token) => self.openings.push(Opening {
                    server: index,
                    token,
                    phase: Phase::Initializing,
                }),
                Err(e) => {
                    host.observe(Event::UpstreamFailed {
                        server: &server.name,
                    });
                    let detail = format!("cannot call cluster {}: {e}", server.cluster);
                    return self.fail(host, outgoing.slot, &upstream_failure(server, &detail));
                }
            }
        }
        self.waiting.push(outgoing);
    }

    fn dispatch(
        &mut self,
        ctx: &Context<'_>,
        host: &mut dyn Host,
        outgoing: Outgoing,
        upstream: &UpstreamSession,
    ) {
        let Outgoing { call, slot } = outgoing;
        let (Some(server), Some(allowed)) = (
            ctx.catalog.server(call.server),
            ctx.catalog.forward_headers(call.server),
        ) else {
            return self.fail(
                host,
                slot,
                &GatewayError::upstream("server left the configuration"),
            );
        };
        let headers = replay_headers(server, allowed, &call, upstream, ctx.headers);
        let timeout_ms = ctx.catalog.limits.upstream_timeout_ms;
        match host.dispatch(&server.cluster, &headers, &call.body, timeout_ms) {
            Ok(token) => self.in_flight.push(InFlight {
                token,
                server: call.server,
                method: call.method,
                slot,
            }),
            Err(e) => self.fail(host, slot, &upstream_failure(server, &e)),
        }
    }

    /// An element that cannot be served: its error answer (or, for an element that takes no
    /// answer, a log line).
    fn fail(&mut self, host: &mut dyn Host, slot: Option<Slot>, error: &GatewayError) {
        match slot {
            Some(slot) => {
                if let Some(answer) = self.answers.get_mut(slot.index) {
                    *answer = Some(jsonrpc::error_body(Some(&slot.id), error));
                }
            }
            None => host.log(Level::Warn, &format!("batch: {}", error.message)),
        }
    }

    pub(crate) fn on_call_response(
        &mut self,
        ctx: &Context<'_>,
        host: &mut dyn Host,
        token: u32,
        response: &CallResponse,
    ) -> Progress {
        if let Some(at) = self.in_flight.iter().position(|f| f.token == token) {
            let flight = self.in_flight.swap_remove(at);
            self.answered(ctx, host, flight, response);
        } else if let Some(at) = self.openings.iter().position(|o| o.token == token) {
            let opening = self.openings.swap_remove(at);
            let server = opening.server;
            if let Err(e) = self.advance(ctx, host, opening, response) {
                if let Some(server) = ctx.catalog.server(server) {
                    host.observe(Event::UpstreamFailed {
                        server: &server.name,
                    });
                }
                let (failed, rest) = std::mem::take(&mut self.waiting)
                    .into_iter()
                    .partition(|o| o.call.server == server);
                self.waiting = rest;
                for outgoing in failed {
                    self.fail(host, outgoing.slot, &e);
                }
            }
        } else {
            host.log(
                Level::Debug,
                &format!("ignored call answer {token}: not awaited by the batch"),
            );
        }
        self.progress(host)
    }

    /// The next step of opening an upstream session.
    fn advance(
        &mut self,
        ctx: &Context<'_>,
        host: &mut dyn Host,
        opening: Opening,
        response: &CallResponse,
    ) -> Result<(), GatewayError> {
        let catalog = ctx.catalog;
        let index = opening.server;
        let server = server_of(catalog, index)?;
        let timeout_ms = catalog.limits.upstream_timeout_ms;
        let slots = catalog.limits.upstream_session_slots;
        let upstream = match opening.phase {
            Phase::Initializing => {
                let upstream = opened_session(server, response)?;
                let mut headers = upstream::call_headers(server, "POST", Some(&upstream));
                let allowed = catalog.forward_headers(index);
                headers.extend(crate::pipeline::trace_context(ctx.headers, allowed));
                let body = upstream::INITIALIZED_BODY.as_bytes();
                let token = host
                    .dispatch(&server.cluster, &headers, body, timeout_ms)
                    .map_err(|e| upstream_failure(server, &e))?;
                self.openings.push(Opening {
                    server: index,
                    token,
                    phase: Phase::Acknowledging(upstream),
                });
                return Ok(());
            }
            Phase::Acknowledging(upstream) => {
                acknowledged(server, response)?;
                host.observe(Event::UpstreamOpened {
                    server: &server.name,
                });
                if let Some(evicted) =
                    upstream::store(host, slots, &self.session.id, &server.name, &upstream)
                {
                    close_evicted(catalog, host, &evicted);
                }
                register_stream(
                    ctx.sidecar,
                    timeout_ms,
                    host,
                    &self.session,
                    server,
                    &upstream,
                );
                let logs = catalog
                    .server_capabilities
                    .get(index)
                    .is_some_and(|c| c.logging);
                if let Some(level) = logs
                    .then(|| upstream::log_level(host, slots, &self.session.id))
                    .flatten()
                {
                    let token = dispatch_level(timeout_ms, host, server, &upstream, &level)?;
                    self.openings.push(Opening {
                        server: index,
                        token,
                        phase: Phase::Leveling(upstream),
                    });
                    return Ok(());
                }
                upstream
            }
            Phase::Leveling(upstream) => {
                if response.status.is_none_or(|s| !(200..300).contains(&s)) {
                    host.log(
                        Level::Info,
                        &format!(
                            "upstream {} did not take the log level (HTTP {:?})",
                            server.name, response.status
                        ),
                    );
                }
                upstream
            }
        };
        let (ready, rest) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|o| o.call.server == index);
        self.waiting = rest;
        for outgoing in ready {
            self.dispatch(ctx, host, outgoing, &upstream);
        }
        Ok(())
    }

    /// An upstream's answer to one element: the JSON-RPC response with that element's id,
    /// rewritten for the client as a relayed answer is; anything else is that element's -32603.
    fn answered(
        &mut self,
        ctx: &Context<'_>,
        host: &mut dyn Host,
        flight: InFlight,
        response: &CallResponse,
    ) {
        let Ok(server) = server_of(ctx.catalog, flight.server) else {
            return self.fail(
                host,
                flight.slot,
                &GatewayError::upstream("server left the configuration"),
            );
        };
        let Some(slot) = flight.slot else {
            if response.status.is_none_or(|s| !(200..300).contains(&s)) {
                host.log(
                    Level::Info,
                    &format!(
                        "upstream {} did not take a batch message (HTTP {:?})",
                        server.name, response.status
                    ),
                );
            }
            return;
        };
        let Some(status) = response.status else {
            let error = upstream_failure(server, "no answer (reset or timeout)");
            return self.fail(host, Some(slot), &error);
        };
        let sse = is_event_stream(response.content_type.as_deref());
        let Some(message) = response_with_id(sse, &response.body, &slot.id) else {
            if status == 404 {
                // The cached upstream session is gone: the next request opens a new one.
                let slots = ctx.catalog.limits.upstream_session_slots;
                upstream::forget(host, slots, &self.session.id, &server.name);
            }
            let detail = format!("answered HTTP {status} without a JSON-RPC response");
            return self.fail(host, Some(slot), &upstream_failure(server, &detail));
        };
        let mapped = !server.prefix.is_empty();
        let message = crate::relay::rewrite(&message, &server.name, mapped);
        let message = if mapped && flight.method == Some("resources/read") {
            crate::relay::read_result_uris(&message, &server.name).into_owned()
        } else {
            message.into_owned()
        };
        if let Some(answer) = self.answers.get_mut(slot.index) {
            *answer = Some(message.into_bytes());
        }
    }

    fn progress(&mut self, host: &mut dyn Host) -> Progress {
        if self.openings.is_empty() {
            // Nothing can open their session any more (defensive: never expected).
            for outgoing in std::mem::take(&mut self.waiting) {
                let error = GatewayError::upstream("no upstream session could be opened");
                self.fail(host, outgoing.slot, &error);
            }
        }
        if !self.openings.is_empty() || !self.in_flight.is_empty() {
            return Progress::Waiting;
        }
        if self.answers.is_empty() {
            return Progress::Done(None);
        }
        let mut body =
            Vec::with_capacity(self.answers.iter().flatten().map(Vec::len).sum::<usize>() + 2);
        body.push(b'[');
        for (i, answer) in self.answers.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            match answer {
                Some(answer) => body.extend_from_slice(answer),
                None => body.extend_from_slice(&jsonrpc::error_body(
                    None,
                    &GatewayError::upstream("no answer"),
                )),
            }
        }
        body.push(b']');
        Progress::Done(Some(body))
    }
}

/// The JSON-RPC response to the request with id `id` (raw JSON) in an upstream answer: the body
/// itself (JSON), or the SSE event that carries it.
fn response_with_id(sse: bool, body: &[u8], id: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(default, borrow)]
        id: Option<&'a RawValue>,
        #[serde(default, borrow)]
        result: Option<&'a RawValue>,
        #[serde(default, borrow)]
        error: Option<&'a RawValue>,
    }
    let answers = |data: &str| {
        serde_json::from_str::<Probe>(data).is_ok_and(|p| {
            (p.result.is_some() || p.error.is_some()) && p.id.is_some_and(|i| i.get() == id)
        })
    };
    if sse {
        crate::sse::parse_all(body)
            .into_iter()
            .map(|event| event.data)
            .find(|data| answers(data))
    } else {
        let text = std::str::from_utf8(body).ok()?;
        answers(text).then(|| text.trim().to_owned())
    }
}
