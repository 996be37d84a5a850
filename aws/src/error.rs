//! AWS SDK errors as the platform reports them: one formatting and one test
//! for a failed condition, for every SDK client (they share the error types).

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

/// What went wrong, for a log line or an error message: the service's code
/// and message when it answered, else the (shortened) transport error.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) => {
            format!("{}: {}", service.code().unwrap_or("error"), service.message().unwrap_or("no message"))
        }
        None => format!("{err:?}").chars().take(300).collect(),
    }
}

/// A DynamoDB write refused by its condition expression.
pub fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().and_then(|e| e.code()).is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// Which items of a transaction cancelled by conditions failed theirs, in
/// the transaction's order; `None` when it failed for another reason.
pub fn failed_transaction_conditions<R>(
    err: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> Option<Vec<bool>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            let failed: Vec<bool> =
                e.cancellation_reasons().iter().map(|r| r.code() == Some("ConditionalCheckFailed")).collect();
            failed.contains(&true).then_some(failed)
        }
        _ => None,
    }
}

/// A transaction cancelled because one of its conditions failed.
pub fn is_transaction_condition_failure<R>(
    err: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> bool {
    failed_transaction_conditions(err).is_some()
}
