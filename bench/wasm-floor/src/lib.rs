//! The "wasm floor" of the benchmarks: the least a body-routing proxy-wasm filter can do.
//!
//! It pauses in the request headers (as a gateway that routes on the JSON-RPC body must), lets Envoy
//! buffer the body, copies it into the VM once at end of stream (as any parser must), and continues.
//! No parsing, no rewriting, no re-routing: what is left is the cost of the Wasm host boundary, the
//! context objects and the body copy, which every proxy-wasm MCP gateway pays.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
}}

struct FloorRoot;

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor { body_len: 0 }))
    }
}

struct Floor {
    /// Bytes read at end of stream; kept so the read cannot be optimised away.
    body_len: usize,
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
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
        }
        Action::Continue
    }
}
