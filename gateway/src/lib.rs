//! The chat gateway: a small, long-lived tonic server that holds client
//! streams, publishes what clients send to the bus, and fans events from the
//! bus out to the streams of local members.
//!
//! Map (see ARCHITECTURE.md for the whole path of a message):
//! - `server::run` assembles everything and owns shutdown;
//! - `service` is the gRPC surface, `auth` authenticates its calls (with
//!   `jwks`, the identity provider's keys, when configured);
//! - `conn` wraps each connection (admission by address, closing it);
//!   `session` serves one `Connect` stream (or `OpenSession` one, whose
//!   frames `sessions` routes from `SendFrames`), `outbox` is its bounded
//!   outbound buffer;
//! - `app` holds every operation a client can ask for, where each is checked
//!   and authorised;
//! - `hub` fans bus events out to local members, in order (`reorder`);
//! - `bus` publishes (batched to SNS, or in memory) and receives (SQS long
//!   polls) into the hub;
//! - `wire` is the only place protobuf is built or read;
//! - `limits` and `error` make bad input a precise gRPC status.
//!
//! The domain (envelope, store traits, input rules) is `chat-core`; every
//! AWS schema and client is `chat-aws`. Only [`run`] and [`Config`] are
//! public: what the binary and the tests need.

mod app;
mod auth;
mod bus;
mod closing;
mod coalesce;
pub mod config;
mod conn;
mod error;
mod history;
mod hub;
mod jwks;
mod limits;
mod metrics;
mod outbox;
mod receipts;
mod reorder;
mod server;
mod service;
mod session;
mod sessions;
mod wire;

pub use config::Config;
pub use server::{RunError, instance_id, run};

#[doc(hidden)]
pub mod bench;
