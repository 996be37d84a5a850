//! The `chat` command-line client's library: the pieces with logic worth
//! testing on their own: the AWS cost model, the load generator, and how a
//! gateway URL becomes a (TLS) connection.

pub mod bench;
pub mod cost;
pub mod tls;
