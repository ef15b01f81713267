//! Loopback stand-in for OpenAI's OAuth token endpoint as the Codex CLI sees it, for
//! codex-auth-agent's integration tests (in-process, via [`MockServer`]) and for
//! benchmarks and container tests (the `mock-openai` binary and its `/__admin` API).
//!
//! It rotates single-use refresh tokens per login family, detects reuse and revokes the
//! family like the real service, mints JWTs with the claims Codex reads, and can inject
//! HTTP- and transport-level faults ahead of that logic. It also serves what the Codex CLI
//! calls on its ChatGPT backend (`/backend-api/codex/responses`, `/backend-api/wham/...`),
//! so the real `codex` binary can run against it, and Codex's device-code login
//! (`codex login --device-auth --experimental_issuer <mock url>`). HTTP is hand-written over
//! `std::net` precisely so those faults can break the protocol.

mod admin;
/// Bodies of Codex's backend endpoints (`/backend-api/...`).
pub mod backend;
pub mod client;
mod device;
mod fault;
mod http;
mod jwt;
mod routes;
mod server;
mod state;

pub use fault::{Fault, FaultRepr};
pub use jwt::{decode_jwt_payload, make_jwt};
pub use server::{MockConfig, MockServer};
pub use state::{CLIENT_ID, Credentials, RequestLogEntry, Stats, TokenRequestShape};

/// Request bodies above this many bytes are refused with 413.
pub const MAX_REQUEST_BODY: usize = http::MAX_BODY;
