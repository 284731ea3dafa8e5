//! Live configuration: one poller per Envoy process fetches documents from the sidecar and
//! publishes them in shared data; every VM picks up the published document on its tick.
//!
//! Every VM's root context ticks, so the poller is elected with a lease in shared data (CAS):
//! whoever holds an unexpired lease polls, the others only watch the published ETag. A VM that
//! dies stops renewing and another takes over when the lease runs out.

use crate::catalog::Catalog;
use crate::config::{GatewayConfig, SidecarSource};
use crate::host::{CallResponse, Level};

const LEASE_KEY: &str = "mcpgw.sync.lease";
const ETAG_KEY: &str = "mcpgw.sync.etag";
const DOCUMENT_KEY: &str = "mcpgw.sync.document";
/// A lease outlives a few missed ticks before another VM may take over.
const LEASE_MS: u64 = 3_000;
/// Extra time the proxy gives a long poll beyond the sidecar's wait.
const POLL_GRACE_MS: u64 = 5_000;

/// What the configuration sync needs from the proxy (root context, no stream).
pub trait ControlHost {
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, String>;
    /// Value and CAS token of a shared-data key.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Sets a key if its CAS token is still `cas` (`None`: unconditionally); false when raced.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    fn now_millis(&self) -> u64;
    fn log(&self, level: Level, message: &str);
}

#[derive(Debug, PartialEq, Eq)]
enum SidecarState {
    Unknown,
    Reachable,
    Unreachable,
}

pub struct ConfigSync {
    source: SidecarSource,
    /// `Bearer <token>`, sent on every poll when the plugin configuration names a token.
    authorization: Option<String>,
    /// Identifies this VM's root context in the lease; `None` (no randomness for a name that
    /// no other VM shares): this VM never polls, it only adopts what others publish.
    owner: Option<String>,
    /// ETag of the document this VM serves.
    applied_etag: Option<String>,
    in_flight: Option<Poll>,
    /// No poll before this time (backoff after a failure).
    next_poll_at: u64,
    sidecar: SidecarState,
}

/// A poll on its way: its call token and the ETag it asked the sidecar to wait on.
struct Poll {
    token: u32,
    etag: String,
}

impl ConfigSync {
    pub fn new(source: SidecarSource, owner: Option<String>) -> Self {
        Self {
            authorization: source.authorization(),
            source,
            owner,
            applied_etag: None,
            in_flight: None,
            next_poll_at: 0,
            sidecar: SidecarState::Unknown,
        }
    }

    /// Called on every tick: adopts a newer published document, and polls when this VM holds
    /// the lease. Returns a catalog to install.
    pub fn on_tick(&mut self, host: &mut dyn ControlHost) -> Option<Catalog> {
        let adopted = self.adopt_published(host);
        // A long poll waits while the sidecar's document has the ETag it was sent with. If another
        // VM has meanwhile published a different one (a late answer to an older poll, on a busy
        // machine), that wait could outlast the change it should report: every VM would serve
        // the other document until the next edit. Such a poll is abandoned and sent again with
        // the published ETag, which the sidecar answers at once when its document differs.
        if self
            .in_flight
            .as_ref()
            .is_some_and(|poll| poll.etag != self.applied_etag.as_deref().unwrap_or_default())
        {
            self.in_flight = None;
        }
        if self.in_flight.is_none()
            && host.now_millis() >= self.next_poll_at
            && self.hold_lease(host)
        {
            self.poll(host);
        } else if self.in_flight.is_some() {
            self.hold_lease(host);
        }
        adopted
    }

    /// The sidecar's answer to this VM's poll. Returns a catalog to install.
    pub fn on_response(
        &mut self,
        host: &mut dyn ControlHost,
        token: u32,
        response: &CallResponse,
    ) -> Option<Catalog> {
        if self.in_flight.as_ref().map(|poll| poll.token) != Some(token) {
            return None;
        }
        self.in_flight = None;
        match response.status {
            Some(304) => {
                self.mark_reachable(host);
                None
            }
            Some(200) => {
                self.mark_reachable(host);
                let etag = response
                    .etag
                    .as_deref()
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .unwrap_or_default();
                self.accept_document(host, &response.body, etag)
            }
            other => {
                let why = match other {
                    Some(401) => {
                        "answered HTTP 401: it refused the plugin's token (`sidecar.token` \
                                  of the plugin configuration must be the sidecar's `plugin_token`)"
                            .into()
                    }
                    Some(status) => format!("answered HTTP {status}"),
                    None => "is unreachable".into(),
                };
                self.mark_unreachable(host, &why);
                self.next_poll_at = host.now_millis() + self.source.retry_ms;
                None
            }
        }
    }

    /// The ETag of the document this VM serves.
    pub fn applied_etag(&self) -> Option<&str> {
        self.applied_etag.as_deref()
    }

    /// Records that this VM serves the document with this ETag (the inline one at start-up).
    pub fn set_applied(&mut self, etag: String) {
        self.applied_etag = Some(etag);
    }

    /// The published document, if it is newer than the one this VM serves: a VM that has just
    /// started calls this on its first stream rather than waiting for its first tick.
    pub fn adopt_published(&mut self, host: &mut dyn ControlHost) -> Option<Catalog> {
        let (etag, _) = host.shared_get(ETAG_KEY);
        let etag = String::from_utf8(etag?).ok()?;
        if Some(etag.as_str()) == self.applied_etag.as_deref() {
            return None;
        }
        let (document, _) = host.shared_get(DOCUMENT_KEY);
        let catalog = build(&document?)
            .map_err(|e| {
                host.log(
                    Level::Error,
                    &format!("published configuration rejected: {e}"),
                )
            })
            .ok();
        // Remember the ETag even when rejected, so a bad document is reported once.
        self.applied_etag = Some(etag);
        catalog
    }

    fn hold_lease(&mut self, host: &mut dyn ControlHost) -> bool {
        let Some(owner) = self.owner.as_deref() else {
            return false;
        };
        let now = host.now_millis();
        let (lease, cas) = host.shared_get(LEASE_KEY);
        let lease = lease
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        let (holder, expiry) = lease.split_once('|').unwrap_or(("", "0"));
        let expiry: u64 = expiry.parse().unwrap_or(0);
        if holder != owner && expiry > now {
            return false;
        }
        let renewed = format!("{owner}|{}", now + LEASE_MS);
        host.shared_set(LEASE_KEY, renewed.as_bytes(), cas)
    }

    fn poll(&mut self, host: &mut dyn ControlHost) {
        let path = format!("{}?wait_ms={}", self.source.path, self.source.long_poll_ms);
        let etag = self.applied_etag.clone().unwrap_or_default();
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.source.authority.as_str()),
        ];
        if !etag.is_empty() {
            headers.push(("if-none-match", etag.as_str()));
        }
        if let Some(authorization) = &self.authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        match host.dispatch(
            &self.source.cluster,
            &headers,
            self.source.long_poll_ms + POLL_GRACE_MS,
        ) {
            Ok(token) => self.in_flight = Some(Poll { token, etag }),
            Err(e) => {
                self.mark_unreachable(host, &format!("cannot be called ({e})"));
                self.next_poll_at = host.now_millis() + self.source.retry_ms;
            }
        }
    }

    fn accept_document(
        &mut self,
        host: &mut dyn ControlHost,
        body: &[u8],
        etag: String,
    ) -> Option<Catalog> {
        match build(body) {
            Ok(catalog) => {
                // Publish the document before its ETag, so an ETag always finds its document.
                host.shared_set(DOCUMENT_KEY, body, None);
                host.shared_set(ETAG_KEY, etag.as_bytes(), None);
                self.applied_etag = Some(etag);
                Some(catalog)
            }
            Err(e) => {
                host.log(
                    Level::Error,
                    &format!("sidecar sent an invalid configuration, keeping the current one: {e}"),
                );
                self.next_poll_at = host.now_millis() + self.source.retry_ms;
                None
            }
        }
    }

    fn mark_reachable(&mut self, host: &mut dyn ControlHost) {
        if self.sidecar == SidecarState::Unreachable {
            host.log(Level::Info, "sidecar reachable again");
        }
        self.sidecar = SidecarState::Reachable;
    }

    fn mark_unreachable(&mut self, host: &mut dyn ControlHost, why: &str) {
        if self.sidecar != SidecarState::Unreachable {
            let serving = self.applied_etag.as_deref().unwrap_or("none");
            host.log(
                Level::Warn,
                &format!(
                    "sidecar {} {why}; serving the last good configuration ({serving})",
                    self.source.cluster
                ),
            );
        }
        self.sidecar = SidecarState::Unreachable;
    }
}

fn build(document: &[u8]) -> Result<Catalog, String> {
    let config: GatewayConfig =
        crate::jsonrpc::from_json_bytes(document).map_err(|e| format!("document: {e}"))?;
    Catalog::build(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    /// Shared data of one process, seen by several fake VMs.
    #[derive(Default)]
    struct Process {
        data: HashMap<String, (Vec<u8>, u32)>,
        now: u64,
    }

    struct Vm {
        process: Rc<RefCell<Process>>,
        calls: Vec<Vec<(String, String)>>,
        logs: RefCell<Vec<String>>,
    }

    impl ControlHost for Vm {
        fn dispatch(
            &mut self,
            _cluster: &str,
            headers: &[(&str, &str)],
            _timeout: u64,
        ) -> Result<u32, String> {
            self.calls.push(
                headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            );
            Ok(self.calls.len() as u32)
        }
        fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.process.borrow().data.get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            }
        }
        fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut process = self.process.borrow_mut();
            let current = process.data.get(key).map(|(_, c)| *c);
            if cas.is_some() && cas != current {
                return false;
            }
            let next = current.unwrap_or(0) + 1;
            process.data.insert(key.into(), (value.to_vec(), next));
            true
        }
        fn now_millis(&self) -> u64 {
            self.process.borrow().now
        }
        fn log(&self, _level: Level, message: &str) {
            self.logs.borrow_mut().push(message.into());
        }
    }

    fn source() -> SidecarSource {
        serde_json::from_str(r#"{"cluster":"sidecar","long_poll_ms":100,"retry_ms":500}"#).unwrap()
    }

    fn header<'c>(call: &'c [(String, String)], name: &str) -> Option<&'c str> {
        call.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn vm(process: &Rc<RefCell<Process>>) -> Vm {
        Vm {
            process: Rc::clone(process),
            calls: Vec::new(),
            logs: RefCell::new(Vec::new()),
        }
    }

    fn document(version: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "version": version,
            "session": {"keys": [{"id": "k", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]},
            "servers": []
        }))
        .unwrap()
    }

    fn ok(body: Vec<u8>, etag: &str) -> CallResponse {
        CallResponse {
            status: Some(200),
            etag: Some(etag.as_bytes().to_vec()),
            body,
            ..Default::default()
        }
    }

    #[test]
    fn one_vm_polls_and_every_vm_adopts_the_document() {
        let process = Rc::new(RefCell::new(Process::default()));
        let (mut a, mut b) = (vm(&process), vm(&process));
        let mut sync_a = ConfigSync::new(source(), Some("a".into()));
        let mut sync_b = ConfigSync::new(source(), Some("b".into()));
        assert!(sync_a.on_tick(&mut a).is_none());
        assert!(sync_b.on_tick(&mut b).is_none());
        assert_eq!(a.calls.len(), 1, "the lease holder polls");
        assert!(b.calls.is_empty(), "the other VM does not");
        assert!(a.calls[0].contains(&(":path".into(), "/v1/config?wait_ms=100".into())));

        let installed = sync_a.on_response(&mut a, 1, &ok(document("v1"), "\"e1\""));
        assert_eq!(installed.unwrap().version, "v1");
        let adopted = sync_b
            .on_tick(&mut b)
            .expect("b adopts the published document");
        assert_eq!(adopted.version, "v1");
        assert!(sync_b.on_tick(&mut b).is_none(), "only once");

        sync_a.on_tick(&mut a);
        assert!(a.calls[1].contains(&("if-none-match".into(), "\"e1\"".into())));
        assert!(sync_a
            .on_response(
                &mut a,
                2,
                &CallResponse {
                    status: Some(304),
                    ..Default::default()
                }
            )
            .is_none());
    }

    #[test]
    fn a_vm_without_a_name_never_polls_but_adopts() {
        let process = Rc::new(RefCell::new(Process::default()));
        let (mut a, mut b) = (vm(&process), vm(&process));
        let mut nameless = ConfigSync::new(source(), None);
        for _ in 0..3 {
            assert!(nameless.on_tick(&mut b).is_none());
        }
        assert!(b.calls.is_empty(), "no lease, no poll");
        let mut sync_a = ConfigSync::new(source(), Some("a".into()));
        sync_a.on_tick(&mut a);
        sync_a.on_response(&mut a, 1, &ok(document("v1"), "\"e1\""));
        assert_eq!(nameless.on_tick(&mut b).unwrap().version, "v1");
        assert!(b.calls.is_empty());
    }

    #[test]
    fn a_late_answer_to_an_older_poll_does_not_freeze_the_pollers_wait() {
        // The CI failure this fixes: on a busy machine two VMs polled (the lease moved while an
        // answer was on its way). B published the current document ("beta") and long-polled on
        // it; then A's late answer, carrying the older document ("bravo"), was published over it.
        // B's wait on "beta" would have lasted until the next edit, with every VM serving "bravo".
        let process = Rc::new(RefCell::new(Process::default()));
        let (mut a, mut b) = (vm(&process), vm(&process));
        let mut sync_a = ConfigSync::new(source(), Some("a".into()));
        let mut sync_b = ConfigSync::new(source(), Some("b".into()));
        sync_a.on_tick(&mut a); // a polls
        process.borrow_mut().now = LEASE_MS + 1; // a's ticks stall; the lease moves to b
        sync_b.on_tick(&mut b);
        sync_b.on_response(&mut b, 1, &ok(document("beta"), "\"beta\""));
        sync_b.on_tick(&mut b);
        assert_eq!(header(&b.calls[1], "if-none-match"), Some("\"beta\""));
        assert!(sync_a
            .on_response(&mut a, 1, &ok(document("bravo"), "\"bravo\""))
            .is_some());

        assert_eq!(sync_b.on_tick(&mut b).unwrap().version, "bravo");
        assert_eq!(
            b.calls.len(),
            3,
            "b polls again at once, on what is published now"
        );
        assert_eq!(header(&b.calls[2], "if-none-match"), Some("\"bravo\""));
        // The sidecar answers the differing ETag with its current document; the old wait's
        // answer, when it comes, is ignored.
        let fixed = sync_b.on_response(&mut b, 3, &ok(document("beta"), "\"beta\""));
        assert_eq!(fixed.unwrap().version, "beta");
        assert!(sync_b
            .on_response(&mut b, 2, &ok(document("old"), "\"old\""))
            .is_none());
        assert_eq!(sync_a.on_tick(&mut a).unwrap().version, "beta");
    }

    #[test]
    fn an_expired_lease_moves_to_another_vm() {
        let process = Rc::new(RefCell::new(Process::default()));
        let (mut a, mut b) = (vm(&process), vm(&process));
        let mut sync_a = ConfigSync::new(source(), Some("a".into()));
        let mut sync_b = ConfigSync::new(source(), Some("b".into()));
        sync_a.on_tick(&mut a);
        process.borrow_mut().now = LEASE_MS + 1; // a stopped renewing (its VM died)
        sync_b.on_tick(&mut b);
        assert_eq!(b.calls.len(), 1);
    }

    #[test]
    fn a_down_sidecar_keeps_the_configuration_and_backs_off() {
        let process = Rc::new(RefCell::new(Process::default()));
        let mut a = vm(&process);
        let mut sync = ConfigSync::new(source(), Some("a".into()));
        sync.set_applied("\"e0\"".into());
        sync.on_tick(&mut a);
        assert!(sync
            .on_response(
                &mut a,
                1,
                &CallResponse {
                    status: Some(503),
                    ..Default::default()
                }
            )
            .is_none());
        assert!(a.logs.borrow()[0].contains("serving the last good configuration (\"e0\")"));
        sync.on_tick(&mut a);
        assert_eq!(a.calls.len(), 1, "backs off");
        process.borrow_mut().now = 600;
        sync.on_tick(&mut a);
        assert_eq!(a.calls.len(), 2, "retries after retry_ms");
    }

    #[test]
    fn an_invalid_document_is_rejected_and_not_published() {
        let process = Rc::new(RefCell::new(Process::default()));
        let mut a = vm(&process);
        let mut sync = ConfigSync::new(source(), Some("a".into()));
        sync.on_tick(&mut a);
        let bad = br#"{"version":"x","session":{"keys":[]}}"#.to_vec();
        assert!(sync.on_response(&mut a, 1, &ok(bad, "\"bad\"")).is_none());
        assert!(a.logs.borrow()[0].contains("session.keys"));
        assert!(!process.borrow().data.contains_key(ETAG_KEY));
    }

    #[test]
    fn polls_carry_the_token_as_a_bearer_credential() {
        let process = Rc::new(RefCell::new(Process::default()));
        let mut a = vm(&process);
        let mut with_token = source();
        with_token.token = Some("tok-123".into());
        assert!(with_token.validate().is_ok());
        let mut sync = ConfigSync::new(with_token, Some("a".into()));
        sync.on_tick(&mut a);
        assert_eq!(header(&a.calls[0], "authorization"), Some("Bearer tok-123"));
        // The next poll (with an ETag) carries it too.
        sync.on_response(&mut a, 1, &ok(document("v1"), "\"e1\""));
        sync.on_tick(&mut a);
        assert_eq!(header(&a.calls[1], "if-none-match"), Some("\"e1\""));
        assert_eq!(header(&a.calls[1], "authorization"), Some("Bearer tok-123"));

        // Without a token, no authorization header at all.
        let mut b = vm(&Rc::new(RefCell::new(Process::default())));
        let mut plain = ConfigSync::new(source(), Some("b".into()));
        plain.on_tick(&mut b);
        assert_eq!(header(&b.calls[0], "authorization"), None);
    }

    #[test]
    fn a_refused_token_is_reported_as_such() {
        let process = Rc::new(RefCell::new(Process::default()));
        let mut a = vm(&process);
        let mut sync = ConfigSync::new(source(), Some("a".into()));
        sync.on_tick(&mut a);
        let refused = CallResponse {
            status: Some(401),
            ..Default::default()
        };
        assert!(sync.on_response(&mut a, 1, &refused).is_none());
        let logs = a.logs.borrow();
        assert!(
            logs[0].contains("refused the plugin's token"),
            "{}",
            logs[0]
        );
    }

    #[test]
    fn tokens_that_do_not_fit_a_header_are_rejected() {
        for bad in ["", "has space", "line\nbreak", "caf\u{e9}"] {
            let mut s = source();
            s.token = Some(bad.into());
            assert!(
                s.validate().unwrap_err().contains("sidecar.token"),
                "{bad:?}"
            );
        }
    }
}
