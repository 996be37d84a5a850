//! The chat gateway: a small, long-lived tonic server that holds client
//! streams, publishes what clients send to the bus, and fans events from the
//! bus out to the streams of local members.
//!
//! Map (see ARCHITECTURE.md for the whole path of a message):
//! - [`server::run`] assembles everything and owns shutdown;
//! - [`service`] is the gRPC surface, [`auth`] its interceptor;
//! - [`session`] serves one `Connect` stream, [`outbox`] is its bounded
//!   outbound buffer;
//! - [`app`] holds the operations shared by stream and unary calls;
//! - [`hub`] fans bus events out to local members, in order ([`reorder`]);
//! - [`bus`] publishes (SNS or in memory) and receives (SQS long polls);
//! - [`store`] holds seq counters, membership, presence, idempotency
//!   (DynamoDB or in memory);
//! - [`limits`] and [`error`] make bad input a precise gRPC status.

pub mod app;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod error;
pub mod history;
pub mod hub;
pub mod limits;
pub mod outbox;
pub mod receipts;
pub mod reorder;
pub mod server;
pub mod service;
pub mod session;
pub mod store;

pub use config::Config;
pub use server::run;
