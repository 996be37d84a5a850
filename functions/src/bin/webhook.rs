//! Lambda `webhook` on AWS, behind a function URL: builds its clients once
//! and answers each call with the handler.

use aws_lambda_events::event::lambda_function_urls::{LambdaFunctionUrlRequest, LambdaFunctionUrlResponse};
use clap::Parser;
use functions::webhook::{self, WebhookArgs};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[derive(Debug, Parser)]
struct Config {
    #[command(flatten)]
    webhook: WebhookArgs,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    webhook::WebhookSecrets::require_from_environment()?;
    let config = Config::parse();
    let sdk = functions::lambda_setup("webhook").await;
    let webhook = config.webhook.build(&sdk)?;
    let webhook = &webhook;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<LambdaFunctionUrlRequest>| async move {
        let answer = functions::invoked(webhook::handle(webhook, webhook::from_function_url(event.payload))).await;
        let mut response = LambdaFunctionUrlResponse::default();
        response.status_code = i64::from(answer.status);
        response.body = Some(answer.body);
        Ok::<_, Error>(response)
    }))
    .await
}
