//! Lambda `fallback` on AWS: builds its clients once and runs the handler
//! under `lambda_runtime`.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use clap::Parser;
use functions::fallback::{self, FallbackArgs};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[derive(Debug, Parser)]
struct Config {
    #[command(flatten)]
    fallback: FallbackArgs,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::parse();
    let sdk = functions::lambda_setup("fallback").await;
    let fallback = config.fallback.build(&sdk);
    let fallback = &fallback;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(functions::invoked(fallback::handle(fallback, event.payload)).await)
    }))
    .await
}
