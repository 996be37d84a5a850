//! Every AWS request counted and timed, whatever client made it: an SDK
//! interceptor added to each client's configuration. Series:
//! - `chat_aws_requests_total{service, operation, outcome}`;
//! - `chat_aws_request_seconds{service, operation}` (the whole operation,
//!   retries included).
//!
//! - `chat_dynamodb_requests_total{table, operation, outcome}`: DynamoDB
//!   requests by the table they name (tables joined by `+` for a batch or
//!   transaction over several), what a cost model prices per table: a
//!   message's write is not a receipt's.
//!
//! `outcome` is `ok`, `rejected` (a 4xx answer: a failed condition, a
//! throttle, a bad request), `server_error` (5xx), `timeout`, or
//! `unreachable` (no answer: connection refused, DNS, TLS).

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// The interceptor; add it with `config::Builder::interceptor(Metered)`, or
/// build clients with [`dynamodb`], [`sns`] and [`sqs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Metered;

#[derive(Debug, Clone)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

/// The DynamoDB table(s) a request names.
#[derive(Debug, Clone)]
struct Table(String);

impl Storable for Table {
    type Storer = StoreReplace<Self>;
}

/// The table(s) a DynamoDB operation's input names; `None` for other
/// services' inputs.
fn dynamodb_table(input: &aws_smithy_runtime_api::client::interceptors::context::Input) -> Option<String> {
    use aws_sdk_dynamodb::operation as op;
    fn joined<'a>(tables: impl Iterator<Item = &'a String>) -> String {
        let mut names: Vec<&str> = tables.map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names.join("+")
    }
    macro_rules! single {
        ($($module:ident :: $input:ident),*) => {
            $(if let Some(input) = input.downcast_ref::<op::$module::$input>() {
                return input.table_name().map(str::to_owned);
            })*
        };
    }
    single!(
        put_item::PutItemInput,
        update_item::UpdateItemInput,
        get_item::GetItemInput,
        delete_item::DeleteItemInput,
        query::QueryInput,
        scan::ScanInput
    );
    if let Some(input) = input.downcast_ref::<op::batch_get_item::BatchGetItemInput>() {
        return input.request_items().map(|items| joined(items.keys()));
    }
    if let Some(input) = input.downcast_ref::<op::batch_write_item::BatchWriteItemInput>() {
        return input.request_items().map(|items| joined(items.keys()));
    }
    if let Some(input) = input.downcast_ref::<op::transact_write_items::TransactWriteItemsInput>() {
        let tables = input.transact_items().iter().filter_map(|item| {
            item.put()
                .map(|p| &p.table_name)
                .or_else(|| item.update().map(|u| &u.table_name))
                .or_else(|| item.delete().map(|d| &d.table_name))
                .or_else(|| item.condition_check().map(|c| &c.table_name))
        });
        return Some(joined(tables));
    }
    None
}

/// How a request ended, from what the SDK saw (pure, for tests).
pub fn outcome(status: Option<u16>, timed_out: bool) -> &'static str {
    match status {
        Some(200..=399) => "ok",
        Some(400..=499) => "rejected",
        Some(_) => "server_error",
        None if timed_out => "timeout",
        None => "unreachable",
    }
}

impl Intercept for Metered {
    fn name(&self) -> &'static str {
        "Metered"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        if let Some(table) = dynamodb_table(context.input()) {
            cfg.interceptor_state().store_put(Table(table));
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = match cfg.load::<Metadata>() {
            Some(m) => (m.service().to_owned(), m.name().to_owned()),
            None => ("unknown".to_owned(), "unknown".to_owned()),
        };
        let status = context.response().map(|r| r.status().as_u16());
        let timed_out = matches!(context.output_or_error(), Some(Err(e)) if e.is_timeout_error());
        let outcome = outcome(status, timed_out);
        metrics::counter!("chat_aws_requests_total", "service" => service.clone(), "operation" => operation.clone(), "outcome" => outcome)
            .increment(1);
        if let Some(Table(table)) = cfg.load::<Table>() {
            metrics::counter!("chat_dynamodb_requests_total", "table" => table.clone(), "operation" => operation.clone(), "outcome" => outcome)
                .increment(1);
        }
        if let Some(Started(at)) = cfg.load::<Started>() {
            metrics::histogram!("chat_aws_request_seconds", "service" => service, "operation" => operation)
                .record(at.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// Client configurations from the shared SDK configuration, metered.
pub fn dynamodb(sdk: &aws_types::SdkConfig) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(Metered)
}

pub fn sns(sdk: &aws_types::SdkConfig) -> aws_sdk_sns::config::Builder {
    aws_sdk_sns::config::Builder::from(sdk).interceptor(Metered)
}

pub fn sqs(sdk: &aws_types::SdkConfig) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Builder::from(sdk).interceptor(Metered)
}

#[cfg(test)]
mod tests {
    use super::outcome;

    #[test]
    fn outcomes_by_status() {
        assert_eq!(outcome(Some(200), false), "ok");
        assert_eq!(outcome(Some(400), false), "rejected");
        assert_eq!(outcome(Some(503), false), "server_error");
        assert_eq!(outcome(None, true), "timeout");
        assert_eq!(outcome(None, false), "unreachable");
    }
}
