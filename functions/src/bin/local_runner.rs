//! `local-runner`: runs a function's handler locally the way Lambda would
//! invoke it, for `make run` and tests: queue-triggered functions behind the
//! SQS event source mapping stand-in (`functions::runner`), the webhook
//! behind a local HTTP server shaped like a Lambda function URL.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use chat_aws::dynamo::Tables;
use clap::{Parser, Subcommand};
use functions::connector::{self, ConnectorArgs};
use functions::fallback::FallbackArgs;
use functions::janitor::JanitorArgs;
use functions::persist::{self, Clients};
use functions::runner::{self, RunnerConfig};
use functions::webhook::{self, Webhook, WebhookArgs, WebhookRequest};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "local-runner", about = "Run a chat function locally with Lambda's invocation semantics.")]
struct Config {
    #[command(subcommand)]
    function: Function,
    /// The queue a queue-triggered function's event source mapping reads.
    #[arg(long, env = "CHAT_QUEUE_URL", global = true)]
    queue_url: Option<String>,
    /// Records per invocation (Lambda's BatchSize).
    #[arg(long, env = "CHAT_BATCH_SIZE", default_value_t = 100, global = true, value_parser = clap::value_parser!(u16).range(1..=10000))]
    batch_size: u16,
    /// How long to gather a batch once its first record arrived
    /// (MaximumBatchingWindowInSeconds, in milliseconds).
    #[arg(long, env = "CHAT_BATCHING_WINDOW_MS", default_value_t = 500, global = true)]
    batching_window_ms: u64,
    /// Batches in flight at once (pollers).
    #[arg(long, env = "CHAT_RUNNER_CONCURRENCY", default_value_t = 4, global = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// An invocation's time limit (the function's Timeout), in seconds.
    #[arg(long, env = "CHAT_FUNCTION_TIMEOUT_SECS", default_value_t = 30, global = true)]
    timeout_secs: u64,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1", global = true)]
    region: String,
    /// Address of the admin listener serving Prometheus metrics at
    /// `/metrics` (what Lambda would write as EMF). Off when absent.
    #[arg(long, env = "CHAT_METRICS_LISTEN", global = true)]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Subcommand)]
enum Function {
    /// Messages and receipts to DynamoDB.
    Persist {
        #[command(flatten)]
        tables: Tables,
    },
    /// Messages to one external channel.
    Connector {
        #[command(flatten)]
        connector: ConnectorArgs,
    },
    /// The offline-delivery deadline: members who did not acknowledge.
    Fallback {
        #[command(flatten)]
        fallback: FallbackArgs,
    },
    /// Reaps orphaned gateway queues, on a timer standing in for the schedule.
    Janitor {
        #[command(flatten)]
        janitor: JanitorArgs,
        /// Seconds between sweeps.
        #[arg(long, env = "CHAT_JANITOR_EVERY_SECS", default_value_t = 60)]
        every_secs: u64,
    },
    /// The channels' callbacks, on a local HTTP server standing in for the
    /// function URL.
    Webhook {
        #[command(flatten)]
        webhook: WebhookArgs,
        /// Address to serve on.
        #[arg(long, env = "CHAT_WEBHOOK_LISTEN", default_value = "127.0.0.1:8091")]
        listen: std::net::SocketAddr,
    },
}

impl Function {
    /// The function's name, as the template names it.
    fn name(&self) -> &'static str {
        match self {
            Function::Persist { .. } => "persist",
            Function::Connector { .. } => "connector",
            Function::Fallback { .. } => "fallback",
            Function::Janitor { .. } => "janitor",
            Function::Webhook { .. } => "webhook",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Named as on Lambda: traces and metrics say which function.
    let function = config.function.name();
    let _telemetry = service::init_logging(false, function);
    let metrics = service::metrics::bind_configured(config.metrics_listen).await?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let stop = service::stop_on_signals();
    service::metrics::start(metrics, &[("function", function)], std::sync::Arc::new(|| {}), stop.clone())?;
    let runner_config = || -> anyhow::Result<RunnerConfig> {
        let queue_url = config
            .queue_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--queue-url (CHAT_QUEUE_URL) names the queue this function reads"))?;
        Ok(RunnerConfig {
            queue_url,
            batch_size: usize::from(config.batch_size),
            batching_window: Duration::from_millis(config.batching_window_ms),
            region: config.region.clone(),
            concurrency: usize::from(config.concurrency),
        })
    };
    let sqs = functions::sqs(&sdk);
    let timeout = Duration::from_secs(config.timeout_secs);
    match config.function.clone() {
        Function::Webhook { webhook, listen } => serve_webhook(webhook.build(&sdk)?, listen, stop).await,
        Function::Janitor { janitor, every_secs } => {
            let janitor = janitor.build(&sdk);
            let mut tick = tokio::time::interval(Duration::from_secs(every_secs.max(1)));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {
                        functions::janitor::sweep(&janitor, chat_core::clock::now_ms() / 1000).await;
                    }
                }
            }
        }
        Function::Persist { tables } => {
            let clients = Clients::new(functions::dynamodb(&sdk), tables);
            let clients = &clients;
            runner::run(
                sqs,
                runner_config()?,
                |event| async move { Ok::<_, Infallible>(persist::handle(clients, event).await) },
                stop,
            )
            .await
        }
        Function::Connector { connector } => {
            let connector = connector.build(&sdk)?;
            let connector = &connector;
            runner::run(
                sqs,
                runner_config()?,
                |event| async move {
                    Ok::<_, Infallible>(connector::handle(connector, event, Instant::now() + timeout).await)
                },
                stop,
            )
            .await
        }
        Function::Fallback { fallback } => {
            let fallback = fallback.build(&sdk);
            let fallback = &fallback;
            runner::run(
                sqs,
                runner_config()?,
                |event| async move { Ok::<_, Infallible>(functions::fallback::handle(fallback, event).await) },
                stop,
            )
            .await
        }
    }
}

/// Serves the webhook handler over HTTP: each request becomes the
/// `WebhookRequest` a function URL would have produced.
async fn serve_webhook(webhook: Webhook, listen: std::net::SocketAddr, stop: CancellationToken) -> anyhow::Result<()> {
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    let webhook = std::sync::Arc::new(webhook);
    let route = |State(webhook): State<std::sync::Arc<Webhook>>,
                 method: Method,
                 uri: Uri,
                 Query(query): Query<std::collections::HashMap<String, String>>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
        let request = WebhookRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query,
            headers: headers
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_owned())))
                .collect(),
            body: body.to_vec(),
        };
        let answer = webhook::handle(&webhook, request).await;
        (StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), answer.body)
    };
    let app = axum::Router::new().fallback(route).with_state(webhook);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "webhook listening (local function URL)");
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    Ok(())
}
