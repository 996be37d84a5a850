//! Lambda `janitor` on AWS, run by a schedule: one sweep per invocation.
//! Failures are logged and retried by the next sweep, so the invocation
//! itself only fails when nothing could be listed.

use clap::Parser;
use functions::janitor::{self, JanitorArgs};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[derive(Debug, Parser)]
struct Config {
    #[command(flatten)]
    janitor: JanitorArgs,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::parse();
    let sdk = functions::lambda_setup("janitor").await;
    let janitor = config.janitor.build(&sdk);
    let janitor = &janitor;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        let report = functions::invoked(janitor::sweep(janitor, chat_core::clock::now_ms() / 1000)).await;
        let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        if report.listing_failed {
            return Err(Error::from(errors.join("; ")));
        }
        Ok::<_, Error>(serde_json::json!({
            "reaped_queues": report.reaped_queues,
            "reaped_subscriptions": report.reaped_subscriptions,
            "live": report.live,
            "errors": errors,
        }))
    }))
    .await
}
