//! The gateway's error type and its one mapping to gRPC statuses.
//!
//! Each variant is a gRPC code; the text is what the client reads, so it says
//! what was wrong and, where it helps, what to do.

use chat_core::bus::BusError;
use chat_core::limits::LimitError;
use chat_core::store::StoreError;
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GatewayError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    /// A dependency (bus, store) failed in a way a retry may fix.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub(crate) fn code(&self) -> Code {
        match self {
            GatewayError::InvalidArgument(_) => Code::InvalidArgument,
            GatewayError::ResourceExhausted(_) => Code::ResourceExhausted,
            GatewayError::Unauthenticated(_) => Code::Unauthenticated,
            GatewayError::PermissionDenied(_) => Code::PermissionDenied,
            GatewayError::FailedPrecondition(_) => Code::FailedPrecondition,
            GatewayError::AlreadyExists(_) => Code::AlreadyExists,
            GatewayError::NotFound(_) => Code::NotFound,
            GatewayError::Unavailable(_) => Code::Unavailable,
            GatewayError::Internal(_) => Code::Internal,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<LimitError> for GatewayError {
    fn from(err: LimitError) -> Self {
        match err {
            LimitError::Invalid(message) => GatewayError::InvalidArgument(message),
            LimitError::TooLarge(message) => GatewayError::ResourceExhausted(message),
        }
    }
}

impl From<StoreError> for GatewayError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::ClientMessageIdReused => GatewayError::AlreadyExists(err.to_string()),
            StoreError::Unavailable(_) => GatewayError::Unavailable(format!("storage is unavailable ({err}); retry")),
            StoreError::Corrupt(_) => GatewayError::Internal(err.to_string()),
            StoreError::NotMember => GatewayError::PermissionDenied(err.to_string()),
            StoreError::NotAdmitted => {
                GatewayError::PermissionDenied("the conversation does not exist or you are not a member of it".into())
            }
            StoreError::Banned => GatewayError::FailedPrecondition(err.to_string()),
        }
    }
}

impl From<chat_core::conversation::Refusal> for GatewayError {
    fn from(refusal: chat_core::conversation::Refusal) -> Self {
        use chat_core::conversation::Refusal;
        match refusal {
            Refusal::Rank(message) => GatewayError::PermissionDenied(message),
            Refusal::Precondition(message) => GatewayError::FailedPrecondition(message),
        }
    }
}

impl From<BusError> for GatewayError {
    fn from(err: BusError) -> Self {
        if let BusError::Store(store) = err {
            return store.into();
        }
        // A send's answer adds its own hint (`SendDeadline`): only a send
        // has a client_message_id to retry with.
        GatewayError::Unavailable(format!("publishing failed ({err}); retry"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_and_message() {
        let status = Status::from(GatewayError::PermissionDenied("not a member of room1".into()));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "not a member of room1");
    }

    #[test]
    fn dependency_failures_are_retryable_unavailable() {
        let err = GatewayError::from(BusError::Request { operation: "SNS Publish", detail: "timeout".into() });
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.to_string().contains("retry"));
        // Joins, leaves and receipts fail this way too: no send's hint here.
        assert!(!err.to_string().contains("client_message_id"), "{err}");
        let err = GatewayError::from(StoreError::Unavailable("throttled".into()));
        assert!(err.to_string().ends_with("; retry") && err.code() == Code::Unavailable, "{err}");
        let err = GatewayError::from(StoreError::ClientMessageIdReused);
        assert_eq!(err.code(), Code::AlreadyExists);
    }

    #[test]
    fn input_rules_map_to_invalid_argument_or_resource_exhausted() {
        let code = |r: Result<(), LimitError>| Status::from(GatewayError::from(r.expect_err("refused"))).code();
        assert_eq!(code(chat_core::limits::conversation_id("has space")), Code::InvalidArgument);
        assert_eq!(code(chat_core::limits::body("", 8)), Code::InvalidArgument);
        assert_eq!(code(chat_core::limits::body("123456789", 8)), Code::ResourceExhausted);
    }
}
