//! The `chat` command-line client's library: the pieces with logic worth
//! testing on their own: the AWS cost model and the load generator.

pub mod bench;
pub mod cost;
