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
/// `RUST_LOG`, metrics as CloudWatch Embedded Metric Format lines (namespace
/// `ChatPlatform`, written after each invocation by [`invoked`]), and the
/// AWS configuration from the standard environment.
pub async fn lambda_setup() -> aws_config::SdkConfig {
    service::init_logging(true);
    match metrics_cloudwatch_embedded::Builder::new().cloudwatch_namespace(METRICS_NAMESPACE).init() {
        Ok(collector) => {
            let _ = EMF.set(collector);
        }
        Err(error) => tracing::error!(%error, "metrics off: the EMF recorder could not be installed"),
    }
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// The CloudWatch namespace of the functions' metrics (the template's alarms
/// and dashboard read it).
pub const METRICS_NAMESPACE: &str = "ChatPlatform";

static EMF: std::sync::OnceLock<&'static metrics_cloudwatch_embedded::Collector> = std::sync::OnceLock::new();

/// Runs one invocation's work, then writes what it counted as EMF lines on
/// stdout (Lambda ships them to CloudWatch Logs, which extracts the
/// metrics); nothing when the recorder is not installed.
pub async fn invoked<T>(work: impl std::future::Future<Output = T>) -> T {
    let out = work.await;
    if let Some(collector) = EMF.get()
        && let Err(error) = collector.flush(std::io::stdout().lock())
    {
        tracing::warn!(%error, "writing EMF metrics failed");
    }
    out
}

/// SDK clients for the functions, each request metered
/// (`chat_aws::metered`).
pub fn dynamodb(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(chat_aws::metered::dynamodb(sdk).build())
}

pub fn sqs(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(chat_aws::metered::sqs(sdk).build())
}

pub fn sns(sdk: &aws_config::SdkConfig) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::from_conf(chat_aws::metered::sns(sdk).build())
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
