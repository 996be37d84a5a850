//! Lambda `persist` on AWS: builds the DynamoDB client once and runs the
//! handler under `lambda_runtime`.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chat_aws::dynamo::Tables;
use clap::Parser;
use functions::persist::{self, Clients};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[derive(Debug, Parser)]
struct Config {
    #[command(flatten)]
    tables: Tables,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::parse();
    let sdk = functions::lambda_setup("persist").await;
    let clients = Clients::new(functions::dynamodb(&sdk), config.tables);
    let clients = &clients;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(functions::invoked(persist::handle(clients, event.payload)).await)
    }))
    .await
}
