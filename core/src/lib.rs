//! Pure core of the MCP gateway: no proxy-wasm, no I/O. The plugin edge (`src/`) translates
//! proxy callbacks into [`pipeline::Request`] events and implements [`host::Host`].

pub mod audit;
mod batch;
pub mod budget;
pub mod catalog;
pub mod config;
pub mod curation;
pub mod ended;
pub mod error;
pub mod grant;
pub mod host;
pub mod identity;
pub mod jsonrpc;
pub mod opening;
pub mod origin;
pub mod pipeline;
pub mod relay;
mod route;
pub mod schema;
pub mod scope;
pub mod session;
pub mod sse;
pub mod stateless;
pub mod sync;
pub mod upstream;

pub use budget::LogBudget;
pub use catalog::Catalog;
pub use config::{GatewayConfig, PluginConfig};
pub use host::{CallResponse, Event, Field, Host, Level, Refusal, Served};
pub use pipeline::{Action, Request, Unconfigured};
