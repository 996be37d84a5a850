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
/// `RUST_LOG`, traces when `OTEL_*` configures an exporter, metrics as
/// CloudWatch Embedded Metric Format lines (namespace `ChatPlatform`), both
/// flushed after each invocation by [`invoked`], and the AWS configuration
/// from the standard environment.
pub async fn lambda_setup(function: &str) -> aws_config::SdkConfig {
    // Kept for the life of the process: Lambda ends it without running
    // destructors, so traces are flushed per invocation instead.
    std::mem::forget(service::init_logging(true, function));
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

/// Runs one invocation's work, then exports its spans and writes what it
/// counted as EMF lines on stdout (Lambda ships them to CloudWatch Logs,
/// which extracts the metrics): a frozen process exports nothing.
pub async fn invoked<T>(work: impl std::future::Future<Output = T>) -> T {
    let out = work.await;
    service::telemetry::flush();
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

/// A batch handler's trace spans: the batch's own, linked to every
/// record's trace (span links), and one per traced record, a child of the
/// span that published it, so each message's trace shows this function's
/// work on it. All disabled when traces are off.
#[derive(Debug)]
pub struct BatchSpans {
    pub batch: tracing::Span,
    records: std::collections::HashMap<String, tracing::Span>,
}

impl BatchSpans {
    /// `batch` and `record` make the spans (declare a `trace_id` field,
    /// and `outcome` on the record's); made only when traces are on.
    pub fn new(
        records: &[chat_aws::lambda::Record],
        batch: impl FnOnce() -> tracing::Span,
        record: impl Fn(&chat_aws::lambda::Record) -> tracing::Span,
    ) -> Self {
        if !service::telemetry::enabled() {
            return Self { batch: tracing::Span::none(), records: Default::default() };
        }
        let batch = batch();
        service::telemetry::record_trace_id(&batch);
        let mut spans = std::collections::HashMap::new();
        for r in records {
            let Some(parent) = r.envelope.trace.as_deref() else { continue };
            service::telemetry::add_link(&batch, parent);
            let span = record(r);
            service::telemetry::set_parent(&span, Some(parent));
            spans.insert(r.id.clone(), span);
        }
        Self { batch, records: spans }
    }

    /// Record `id`'s span (disabled when it has none).
    pub fn record(&self, id: &str) -> tracing::Span {
        self.records.get(id).cloned().unwrap_or_else(tracing::Span::none)
    }

    /// Ends the records' spans with their outcome: `failed` (left for a
    /// retry) or `ok`.
    pub fn finish(self, failed: &[String]) {
        for (id, span) in self.records {
            span.record("outcome", if failed.contains(&id) { "failed" } else { "ok" });
        }
    }
}
