//! `local-runner`: runs a function's handler locally behind the SQS event
//! source mapping stand-in (`functions::runner`), for `make run` and tests.

use std::convert::Infallible;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use functions::persist::{self, Clients, Tables};
use functions::runner::{self, RunnerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Function {
    Persist,
}

#[derive(Debug, Parser)]
#[command(name = "local-runner", about = "Run a chat function locally behind an SQS poller with Lambda's semantics.")]
struct Config {
    /// Which function to run.
    #[arg(long, value_enum)]
    function: Function,
    /// The queue its event source mapping reads.
    #[arg(long, env = "CHAT_QUEUE_URL")]
    queue_url: String,
    /// Records per invocation (Lambda's BatchSize).
    #[arg(long, env = "CHAT_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=10000))]
    batch_size: u16,
    /// How long to gather a batch once its first record arrived
    /// (MaximumBatchingWindowInSeconds, in milliseconds).
    #[arg(long, env = "CHAT_BATCHING_WINDOW_MS", default_value_t = 500)]
    batching_window_ms: u64,
    /// Batches in flight at once (pollers).
    #[arg(long, env = "CHAT_RUNNER_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    #[arg(long, env = "CHAT_MESSAGES_TABLE", default_value = "chat-messages")]
    messages_table: String,
    #[arg(long, env = "CHAT_CONVERSATIONS_TABLE", default_value = "chat-conversations")]
    conversations_table: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    #[cfg(unix)]
    {
        let signal = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            signal.cancel();
        });
    }
    let runner_config = RunnerConfig {
        queue_url: config.queue_url.clone(),
        batch_size: usize::from(config.batch_size),
        batching_window: Duration::from_millis(config.batching_window_ms),
        region: config.region.clone(),
        concurrency: usize::from(config.concurrency),
    };
    match config.function {
        Function::Persist => {
            let clients = Clients {
                dynamo: aws_sdk_dynamodb::Client::new(&sdk),
                tables: Tables { messages: config.messages_table, conversations: config.conversations_table },
            };
            let clients = &clients;
            runner::run(
                sqs,
                runner_config,
                |event| async move { Ok::<_, Infallible>(persist::handle(clients, event).await) },
                stop,
            )
            .await
        }
    }
}
