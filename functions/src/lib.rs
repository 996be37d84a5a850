//! The Lambda functions. Each handler is a plain async function of
//! (clients, event) that tests call directly; the binaries in `src/bin/` wrap
//! them in `lambda_runtime` (on AWS) or in [`runner`], the local stand-in for
//! Lambda's SQS event source mapping.

pub mod connector;
pub mod fallback;
pub mod persist;
pub mod runner;
pub mod webhook;
