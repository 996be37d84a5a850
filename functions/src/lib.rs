//! The Lambda functions. Each handler is a plain async function of
//! (clients, event) that tests call directly; the binaries in `src/bin/` wrap
//! them in `lambda_runtime` (on AWS) or in [`runner`], the local stand-in for
//! Lambda's SQS event source mapping.

use chat_core::bus::BusError;
use chat_core::store::StoreError;

pub mod connector;
pub mod fallback;
pub mod janitor;
pub mod persist;
pub mod runner;
pub mod webhook;

/// What every Lambda binary does first: JSON logs (CloudWatch) filtered by
/// `RUST_LOG`, and the AWS configuration from the standard environment.
pub async fn lambda_setup() -> aws_config::SdkConfig {
    service::init_logging(true);
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Why a function's work on one record (or one webhook notice) failed; the
/// record is retried, and the notice's channel retries.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}
