//! Lambda `connector` on AWS (one function per channel, `CHAT_CHANNEL`):
//! builds its clients once and runs the handler under `lambda_runtime`, with
//! the invocation's own deadline as the retry budget.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use clap::Parser;
use functions::connector::{self, ConnectorArgs};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[derive(Debug, Parser)]
struct Config {
    #[command(flatten)]
    connector: ConnectorArgs,
}

/// Left for reporting the batch after the last attempt.
const MARGIN: Duration = Duration::from_millis(500);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::parse();
    let sdk = functions::lambda_setup("connector").await;
    let connector = config.connector.build(&sdk)?;
    let connector = &connector;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let left_ms = event.context.deadline.saturating_sub(chat_core::clock::now_ms().max(0) as u64);
        let deadline = Instant::now() + Duration::from_millis(left_ms).saturating_sub(MARGIN);
        Ok::<SqsBatchResponse, Error>(functions::invoked(connector::handle(connector, event.payload, deadline)).await)
    }))
    .await
}
